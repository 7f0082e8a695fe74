"""Loss-landscape pictures of a run: 1D/2D surfaces around a checkpoint and interpolation between
checkpoints, chunked, sharded and resumable (docs/curvature.md).
"""

from __future__ import annotations

import dataclasses
import functools
import os
import statistics
import time
from collections.abc import Callable, Iterator, Sequence
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np
import optax

from landscape.checkpoints import Checkpointer, DamagedCheckpointError
from landscape.config import ModelConfig, RunConfig
from landscape.data import Dataset, load_dataset
from landscape.rundir import RunError, check_same_data, load_config, locks_run_dir
from landscape.runs import Trainer, check_variant
from landscape.surface_records import SurfaceError, grid_coords, record_path
from landscape.surfaces import (
    DIRECTIONS,
    GRID_STRATEGIES,
    IGNORE_CHOICES,
    MODE_TEXT,
    MODES,
    _batch_mean,
    _move,
    default_chunk,
    evaluate_grid,
    evaluate_resumable,
    gradient_direction,
    make_gradient_fn,
    make_grid_fn,
    make_metric_fn,
    orthogonalize_to,
    point_mesh,
    random_direction,
    random_directions,
)
from landscape.train import build_network


@dataclasses.dataclass(frozen=True)
class GridOptions:
    """How a grid is evaluated; none of it changes the numbers beyond float rounding."""

    chunk: int | None = None  # points per compiled call; None: default_chunk()
    strategy: str | None = None  # "map" or "vmap"; None: by backend
    map_batch_size: int = 1


@functools.lru_cache(maxsize=16)
def compiled_picture_functions(
    model_config: ModelConfig,
    num_outputs: int,
    loss: str,
    mode: str,
    accuracy: bool,
    strategy: str | None,
    map_batch_size: int,
) -> tuple[Callable, Callable]:
    """Returns ``(grid_fn, gradient_fn)`` for a model, cached: the variants' pictures and a
    surface and an interpolation with the same shapes reuse one compilation in a process."""
    metric_fn = make_metric_fn(
        build_network(model_config, num_outputs),
        mode,
        accuracy=accuracy,
        loss=loss,
    )
    grid_fn = make_grid_fn(
        metric_fn, strategy=strategy, map_batch_size=map_batch_size, mesh=point_mesh()
    )
    return grid_fn, make_gradient_fn(metric_fn)


def _variant_checkpoints(run_dir: Path, config: RunConfig, variant: str) -> Checkpointer:
    ckpt_dir = run_dir / variant / "checkpoints"
    if variant not in config.variants or not ckpt_dir.is_dir():
        raise SurfaceError(
            f"variant {variant!r} has no checkpoints in {run_dir}; the run has "
            f"{', '.join(config.variants)}"
        )
    # Reading only: keep_all, so opening the manager never applies a retention policy.
    return Checkpointer(ckpt_dir, dataclasses.replace(config.checkpoint, keep_all=True))


def _restore(checkpointer: Checkpointer, trainer: Any, step: int | str, variant: str):
    """Returns ``(step, TrainState)`` for an integer step, "init" or "final"."""
    available = checkpointer.steps()
    template = trainer.initial_state()
    if step == "final":
        if not available:
            raise SurfaceError(f"variant {variant!r} has no checkpoints")
        step = available[-1]
    if step == "init":
        # The initial state is a pure function of the seed: rebuilt when step 0 was not kept.
        if 0 not in available:
            return 0, template
        step = 0
    if int(step) not in available:
        shown = ", ".join(str(s) for s in available[:12])
        more = f" ... {available[-1]} ({len(available)} in all)" if len(available) > 12 else ""
        raise SurfaceError(
            f"no checkpoint at step {step} for {variant}; available: {shown}{more}, init, final"
        )
    try:
        return int(step), checkpointer.restore(int(step), template)
    except DamagedCheckpointError as err:
        raise SurfaceError(f"{err}; choose another step") from None


def _batches(trainer: Any, state: Any, first_step: int, count: int) -> tuple[Any, list[int]]:
    """Returns the training batches of steps ``first_step ... + count - 1``, stacked, with the
    noise key each step's training used (for noisy normalisation layers), and their steps."""
    steps = [first_step + i for i in range(count)]
    key = jax.random.wrap_key_data(state.rng)
    batches = [
        {
            **trainer.train_source(s),
            "rng": jax.random.key_data(jax.random.fold_in(key, s)),
        }
        for s in steps
    ]
    return jax.tree.map(lambda *xs: jnp.stack(xs), *batches), steps


def _variables(state: Any) -> dict:
    return {"params": state.params, "batch_stats": state.batch_stats}


def _describe(directions: Sequence[Any]) -> dict[str, Any]:
    return {
        "direction_norms": [float(optax.tree.norm(d["params"])) for d in directions],
    }


def _open_run(run_dir: Path, dataset: Dataset | None):

    try:
        config = load_config(run_dir)
        if dataset is None:
            dataset = load_dataset(config.data, progress=False)
        check_same_data(run_dir, dataset)
    except RunError as err:
        raise SurfaceError(str(err)) from None
    return config, dataset


def _check_common(mode: str, batches: int, variants: Sequence[str] | None, config) -> list[str]:
    if mode not in MODES:
        raise SurfaceError(f"unknown mode {mode!r}; choose train or eval")
    if batches < 1:
        raise SurfaceError(f"batches must be positive, got {batches}")
    chosen = list(variants) if variants else list(config.variants)
    unknown = [v for v in chosen if v not in config.variants]
    if unknown:
        raise SurfaceError(
            f"unknown variant {', '.join(unknown)}; the run has {', '.join(config.variants)}"
        )
    return chosen


def _variant_trainers(
    run_dir: Path,
    dataset: Dataset | None,
    mode: str,
    batches: int,
    variants: Sequence[str] | None,
) -> Iterator[Trainer]:
    """Opens the run (``dataset``: its data, loaded from its config when None) and yields a
    ``Trainer`` for each chosen variant (None: all the run's), each checked first to still build
    the run's network. Raises SurfaceError for a bad mode, batch count or variant name."""
    config, dataset = _open_run(run_dir, dataset)
    for variant in _check_common(mode, batches, variants, config):
        check_variant(config, variant, dataset, run_dir)  # still the run's network
        yield Trainer(config, variant, dataset)


def _picture_functions(
    trainer: Trainer, mode: str, accuracy: bool, options: GridOptions
) -> tuple[Callable, Callable]:
    """Returns ``(grid_fn, gradient_fn)`` of ``trainer``'s variant (``compiled_picture_functions``,
    so every picture of the same network shares one compilation)."""
    return compiled_picture_functions(
        trainer.config.model_for(trainer.variant),
        trainer.dataset.num_outputs,
        trainer.loss,
        mode,
        accuracy,
        options.strategy,
        options.map_batch_size,
    )


def _check_axis(axis: tuple[float, float, int], option: str) -> tuple[float, float, int]:
    lo, hi, n = float(axis[0]), float(axis[1]), int(axis[2])
    if n < 1 or not (np.isfinite(lo) and np.isfinite(hi)):
        raise SurfaceError(f"{option}: need finite LO, HI and N >= 1, got {axis}")
    return (lo, hi, n)


@locks_run_dir
def surface(
    run_dir: str | os.PathLike,
    *,
    step: int | str,
    variants: Sequence[str] | None = None,
    dims: int = 1,
    grid: tuple[float, float, int] = (-1.0, 1.0, 21),
    direction: str = "random",
    seed: int = 0,
    batches: int = 1,
    mode: str = "train",
    ignore: str = "biases-and-bn",
    orthogonalize: bool = False,
    accuracy: bool = True,
    name: str | None = None,
    overwrite: bool = False,
    options: GridOptions = GridOptions(),
    dataset: Dataset | None = None,
    on_progress: Callable[[str, int, int], None] | None = None,
) -> dict[str, Path]:
    """Evaluates a 1D or 2D slice of the loss around checkpoint ``step`` for each variant.

    The picture is ``L(x + a d1 (+ b d2))`` for ``a`` (and ``b``) on ``grid`` = (lo, hi, n).
    ``direction="random"``: d1, d2 filter-normalised Gaussian directions from ``seed``
    (``random_directions``); ``"gradient"``: d1 the normalised descent direction
    (``gradient_direction``) and, in 2D, d2 the random direction. The loss is on the training
    batches of steps ``step ... step + batches - 1`` (the step's own batch by default), in
    ``mode`` ("train": BatchNorm with batch statistics, "eval": running averages); with
    ``accuracy`` the fraction correct is recorded too. Records go to
    ``RUN_DIR/<variant>/surfaces/<name>.jsonl`` (default name
    ``step<N>_<dims>d_<direction>``), chunk by chunk; a rerun resumes. Returns the paths by
    variant. ``on_progress(variant, done, total)`` reports points evaluated.
    """
    run_dir = Path(run_dir)
    if dims not in (1, 2):
        raise SurfaceError(f"dims must be 1 or 2, got {dims}")
    if direction not in DIRECTIONS:
        raise SurfaceError(f"unknown direction {direction!r}; choose random or gradient")
    if ignore not in IGNORE_CHOICES:
        raise SurfaceError(f"unknown ignore {ignore!r}; choose biases-and-bn or none")
    grid = _check_axis(grid, "range")
    written = {}
    for trainer in _variant_trainers(run_dir, dataset, mode, batches, variants):
        variant = trainer.variant
        with _variant_checkpoints(run_dir, trainer.config, variant) as checkpointer:
            at_step, state = _restore(checkpointer, trainer, step, variant)
        origin = _variables(state)
        stacked, batch_steps = _batches(trainer, state, at_step, batches)
        key = jax.random.key(seed)
        zeros = jax.tree.map(jnp.zeros_like, origin["batch_stats"])
        info: dict[str, Any] = {"mode_text": MODE_TEXT[mode]}
        if direction == "random":
            param_dirs = random_directions(
                key, origin["params"], dims, ignore=ignore, orthogonalize=orthogonalize
            )
        else:
            _, gradient_fn = _picture_functions(trainer, mode, accuracy, options)
            grad = gradient_fn(origin, stacked)
            info["grad_norm"] = float(optax.tree.norm(grad))
            param_dirs = (gradient_direction(grad, origin["params"], ignore=ignore),)
            if dims == 2:
                other = random_direction(
                    jax.random.fold_in(key, 1), origin["params"], ignore=ignore
                )
                if orthogonalize:
                    other = orthogonalize_to(other, param_dirs[0])
                param_dirs += (other,)
        directions = tuple({"params": d, "batch_stats": zeros} for d in param_dirs)
        info.update(_describe(directions))
        settings = {
            "variant": variant,
            "step": at_step,
            "dims": dims,
            "direction": direction,
            "seed": seed,
            "ignore": ignore,
            "orthogonalize": orthogonalize,
            "mode": mode,
            "batches": batches,
            "batch_steps": batch_steps,
            "accuracy": accuracy,
        }
        label = name or f"step{at_step}_{dims}d_{direction}"
        path = record_path(run_dir, variant, label)
        _evaluate_record(
            trainer,
            origin,
            directions,
            stacked,
            axes=[grid] * dims,
            coords=grid_coords([grid] * dims),
            path=path,
            header={"kind": "surface", "name": label, "settings": settings, "info": info},
            mode=mode,
            accuracy=accuracy,
            overwrite=overwrite,
            options=options,
            on_progress=on_progress,
        )
        written[variant] = path
    return written


@locks_run_dir
def interpolate(
    run_dir: str | os.PathLike,
    *,
    start: int | str = "init",
    end: int | str = "final",
    variants: Sequence[str] | None = None,
    grid: tuple[float, float, int] = (-0.5, 1.5, 41),
    batches: int = 1,
    mode: str = "train",
    accuracy: bool = True,
    name: str | None = None,
    overwrite: bool = False,
    options: GridOptions = GridOptions(),
    dataset: Dataset | None = None,
    on_progress: Callable[[str, int, int], None] | None = None,
) -> dict[str, Path]:
    """Evaluates ``L((1 - t) x_A + t x_B)`` for ``t`` on ``grid`` between two checkpoints.

    ``start``/``end`` are checkpoint steps, "init" (step 0, rebuilt from the seed if its
    checkpoint was not kept) or "final" (the newest checkpoint). The grid may extend past
    [0, 1] (Goodfellow et al. 2015). The point is formed as ``(1 - t) x_A + t x_B``, so t = 0
    and t = 1 are exactly the two checkpoints. BatchNorm's running averages are interpolated the
    same way (they matter in eval mode only). The loss is on the training batches of steps
    ``A ... A + batches - 1``. Records go to ``RUN_DIR/<variant>/surfaces/<name>.jsonl``
    (default ``interp_<A>_<B>``). Returns the paths by variant.
    """
    run_dir = Path(run_dir)
    grid = _check_axis(grid, "range")
    written = {}
    for trainer in _variant_trainers(run_dir, dataset, mode, batches, variants):
        variant = trainer.variant
        with _variant_checkpoints(run_dir, trainer.config, variant) as checkpointer:
            step_a, state_a = _restore(checkpointer, trainer, start, variant)
            step_b, state_b = _restore(checkpointer, trainer, end, variant)
        x_a, x_b = _variables(state_a), _variables(state_b)
        stacked, batch_steps = _batches(trainer, state_a, step_a, batches)
        t = grid_coords([grid])[:, 0]
        coords = np.stack([1.0 - t, t], axis=-1)
        origin = jax.tree.map(jnp.zeros_like, x_a)
        settings = {
            "variant": variant,
            "from": step_a,
            "to": step_b,
            "mode": mode,
            "batches": batches,
            "batch_steps": batch_steps,
            "accuracy": accuracy,
        }
        info = {
            "mode_text": MODE_TEXT[mode],
            "distance": float(optax.tree.norm(optax.tree.sub(x_b["params"], x_a["params"]))),
            "from_norm": float(optax.tree.norm(x_a["params"])),
            "to_norm": float(optax.tree.norm(x_b["params"])),
        }
        label = name or f"interp_{step_a}_{step_b}"
        path = record_path(run_dir, variant, label)
        _evaluate_record(
            trainer,
            origin,
            (x_a, x_b),
            stacked,
            axes=[grid],
            coords=coords,
            path=path,
            header={"kind": "interpolation", "name": label, "settings": settings, "info": info},
            mode=mode,
            accuracy=accuracy,
            overwrite=overwrite,
            options=options,
            on_progress=on_progress,
        )
        written[variant] = path
    return written


def _evaluate_record(
    trainer: Trainer,
    origin: Any,
    directions: Sequence[Any],
    batches: Any,
    *,
    axes: list,
    coords: np.ndarray,
    path: Path,
    header: dict[str, Any],
    mode: str,
    accuracy: bool,
    overwrite: bool,
    options: GridOptions,
    on_progress: Callable[[str, int, int], None] | None,
) -> int:
    """Evaluates the loss (and with ``accuracy`` the accuracy) of ``trainer``'s variant in
    ``mode`` on ``batches`` at the points ``origin + sum_i coords[:, i] * directions[i]``, chunk
    by chunk, into the record ``path`` (``header`` completed with the grid, the devices and the
    time); a rerun with the same header evaluates only the missing points. ``on_progress(variant,
    done, total)`` counts points. Returns how many points it evaluated."""
    grid_fn, _ = _picture_functions(trainer, mode, accuracy, options)
    variant = trainer.variant
    mesh = point_mesh()
    devices = jax.device_count() if mesh is not None else 1
    chunk = options.chunk or default_chunk(devices=devices)
    chunk = -(-chunk // devices) * devices  # the points split evenly over the devices
    header = {
        **header,
        "axes": [list(a) for a in axes],
        "num_points": len(coords),
        "info": {
            **header.get("info", {}),
            "created": datetime.now(UTC).isoformat(timespec="seconds"),
            "devices": devices,
            "backend": jax.default_backend(),
        },
    }
    return evaluate_resumable(
        grid_fn,
        origin,
        directions,
        coords,
        batches,
        path=path,
        header=header,
        chunk=chunk,
        overwrite=overwrite,
        fields=("loss", "accuracy") if accuracy else ("loss",),
        on_progress=(lambda d, t: on_progress(variant, d, t)) if on_progress else None,
    )


def time_grid(
    config: RunConfig,
    dataset: Dataset,
    *,
    variant: str = "batchnorm",
    points: int = 8,
    chunk: int | None = None,
    strategies: Sequence[str] = GRID_STRATEGIES,
    repeats: int = 3,
    say: Callable[[str], None] | None = None,
) -> dict[str, Any]:
    """Times a picture's grid against one loss evaluation, side by side in one process.

    On the initial state of ``variant`` with the batch of step 0, a 2D grid of ``points``
    points is evaluated by a plain Python loop over one jitted point function (fetching each
    value, as a naive implementation does) and by ``evaluate_grid`` with each strategy in
    chunks of ``chunk``; one jitted loss evaluation at x (the mean of ``points`` calls) is the
    unit. Rounds alternate between
    the candidates and medians are reported, so a shared machine slows them alike. Returns
    seconds per point, the ratio to one loss evaluation, and compile seconds.
    """

    say = say or (lambda message: None)
    trainer = Trainer(config, variant, dataset)
    state = trainer.initial_state()
    origin = _variables(state)
    batches, _ = _batches(trainer, state, 0, 1)
    metric_fn = make_metric_fn(trainer.network, "train", accuracy=True, loss=trainer.loss)
    directions = tuple(
        {"params": d, "batch_stats": jax.tree.map(jnp.zeros_like, origin["batch_stats"])}
        for d in random_directions(jax.random.key(0), origin["params"], 2)
    )
    side = int(np.ceil(np.sqrt(points)))
    coords = grid_coords([(-1.0, 1.0, side), (-1.0, 1.0, side)])[:points]
    chunk = chunk or default_chunk()

    def timed(fn: Callable[[], Any]) -> float:
        start = time.perf_counter()
        jax.block_until_ready(fn())
        return time.perf_counter() - start

    loss_at = jax.jit(lambda point, batch: metric_fn(point, batch))
    one_batch = jax.tree.map(lambda x: x[0], batches)
    # The unit: ``points`` loss evaluations at x one after another, each waited for.
    candidates: dict[str, Callable[[], Any]] = {
        "loss": lambda: [jax.block_until_ready(loss_at(origin, one_batch)) for _ in coords],
    }
    compile_s: dict[str, float] = {}
    point_fn = jax.jit(lambda o, d, c, b: _batch_mean(metric_fn, _move(o, d, c), b))
    candidates["loop"] = lambda: [
        np.asarray(point_fn(origin, directions, jnp.asarray(c), batches)) for c in coords
    ]
    for strategy in strategies:
        fn = make_grid_fn(metric_fn, strategy=strategy, mesh=point_mesh())
        candidates[strategy] = lambda fn=fn: evaluate_grid(
            fn, origin, directions, coords, batches, chunk=chunk
        )
    for name, fn in candidates.items():
        say(f"compiling {name}")
        compile_s[name] = timed(fn)
    times: dict[str, list[float]] = {name: [] for name in candidates}
    for round_ in range(repeats):
        say(f"timing round {round_ + 1}/{repeats}")
        for name, fn in candidates.items():
            times[name].append(timed(fn))
    median = {name: statistics.median(ts) for name, ts in times.items()}
    loss_s = median["loss"] / points
    per_point = {name: median[name] / points for name in candidates if name != "loss"}
    return {
        "settings": {
            "variant": variant,
            "model": dataclasses.asdict(config.model_for(variant)),
            "batch_size": config.batch_size,
            "points": points,
            "chunk": chunk,
            "repeats": repeats,
            "devices": jax.device_count(),
            "backend": jax.default_backend(),
            "data": dataset.name,
        },
        "loss_s": loss_s,
        "per_point_s": per_point,
        "per_point_over_loss": {name: s / loss_s for name, s in per_point.items()},
        "first_call_s": compile_s,
    }
