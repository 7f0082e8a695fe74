"""Loss-landscape pictures: 1D/2D slices with filter-normalised directions, and interpolation.

* Random directions with filter normalisation (Li, Xu, Taylor, Studer, Goldstein, "Visualizing
  the Loss Landscape of Neural Nets", NeurIPS 2018, Sec. 4): a Gaussian direction per parameter
  array, each of whose filters is rescaled to the norm of the model's filter at that position,
  so that the picture does not depend on the scale invariance that BatchNorm (or ReLU) gives
  the weights. Biases and BatchNorm parameters are set to zero in the direction by default, as
  in Li et al.'s experiments.
* Slices ``L(x + a d1 + b d2)`` on a grid of ``(a, b)`` around any checkpoint, along random or
  gradient directions; linear interpolation ``L((1 - t) x_A + t x_B)`` between two checkpoints
  (Goodfellow, Vinyals, Saxe, "Qualitatively characterizing neural network optimization
  problems", ICLR 2015).
* The loss is the probe's (``landscape.train.make_loss_fn``): BatchNorm in training mode on the
  batches (as the optimiser sees it) unless eval mode (running averages) is asked for. The grid
  is evaluated a chunk of points at a time by one compiled function, split across all visible
  devices, and every chunk is appended to the record at once (``landscape.surface_records``).
"""

from __future__ import annotations

import dataclasses
import functools
import os
from collections.abc import Callable, Sequence
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
import optax
from jax.sharding import Mesh, NamedSharding
from jax.sharding import PartitionSpec as P

from landscape.checkpoints import Checkpointer
from landscape.config import ModelConfig, RunConfig
from landscape.data import Dataset, load_dataset
from landscape.probe import default_strategy
from landscape.results import RecordWriter
from landscape.surface_records import (
    SurfaceError,
    grid_coords,
    open_record,
    record_path,
)

IGNORE_CHOICES = ("biases-and-bn", "none")
MODES = ("train", "eval")
DIRECTIONS = ("random", "gradient")
GRID_STRATEGIES = ("map", "vmap")
POINT_AXIS = "points"  # the mesh axis the grid points are split over

MODE_TEXT = {
    "train": "train mode: BatchNorm normalises with each batch's statistics, as the optimiser sees the loss",
    "eval": "eval mode: BatchNorm normalises with the checkpoint's running averages",
}


# --- directions (Li et al. 2018, Sec. 4) -------------------------------------------------------


def _is_filtered(leaf: jax.Array) -> bool:
    # A conv kernel (H, W, I, O) or a Dense kernel (I, O): the filters are its output slices.
    # Vectors (biases, BatchNorm's scale and offset) have no filters.
    return leaf.ndim >= 2


def filter_normalize(direction: Any, params: Any, *, ignore: str = "biases-and-bn") -> Any:
    """Returns ``direction`` rescaled filter by filter to the norms of ``params``' filters.

    For a kernel of shape (..., O) filter j is the slice ``[..., j]`` (the output channel of an
    HWIO conv kernel, the output column of a Dense kernel); it is rescaled to
    ``||params[..., j]|| / ||direction[..., j]||`` times itself, so each direction filter has
    exactly the model filter's norm (Li et al. 2018, Sec. 4, eq. (1)). A filter whose direction
    is zero stays zero. Vectors (biases, BN scale/offset) are set to zero with
    ``ignore="biases-and-bn"`` (Li et al.'s default), or with ``ignore="none"`` rescaled as one
    filter to the parameter vector's norm.
    """
    if ignore not in IGNORE_CHOICES:
        raise ValueError(f"unknown ignore {ignore!r}; choose one of {', '.join(IGNORE_CHOICES)}")

    def one(d: jax.Array, w: jax.Array) -> jax.Array:
        if not _is_filtered(w):
            if ignore == "biases-and-bn":
                return jnp.zeros_like(w)
            axes: tuple[int, ...] = tuple(range(w.ndim))
        else:
            axes = tuple(range(w.ndim - 1))
        w_norm = jnp.sqrt(jnp.sum(jnp.square(w), axis=axes, keepdims=True))
        d_norm = jnp.sqrt(jnp.sum(jnp.square(d), axis=axes, keepdims=True))
        scale = jnp.where(d_norm > 0, w_norm / jnp.where(d_norm > 0, d_norm, 1), 0)
        return (d * scale).astype(w.dtype)

    return jax.tree.map(one, direction, params)


def random_direction(key: jax.Array, params: Any, *, ignore: str = "biases-and-bn") -> Any:
    """Returns a filter-normalised Gaussian direction with the structure of ``params``.

    Each leaf draws from its own key, ``fold_in(key, leaf index)``, so a direction depends only
    on the key and the parameter shapes.
    """
    leaves, treedef = jax.tree.flatten(params)
    noise = [
        jax.random.normal(jax.random.fold_in(key, i), leaf.shape, leaf.dtype)
        for i, leaf in enumerate(leaves)
    ]
    return filter_normalize(jax.tree.unflatten(treedef, noise), params, ignore=ignore)


def random_directions(
    key: jax.Array,
    params: Any,
    dims: int,
    *,
    ignore: str = "biases-and-bn",
    orthogonalize: bool = False,
) -> tuple[Any, ...]:
    """Returns ``dims`` filter-normalised random directions; direction k uses ``fold_in(key, k)``.

    The first direction of a 2D picture is the direction of the 1D picture with the same key.
    With ``orthogonalize`` the second is made orthogonal to the first (Gram-Schmidt, then
    rescaled to its own norm); random directions in many dimensions are nearly orthogonal
    already, which is why Li et al. do not.
    """
    dirs = [
        random_direction(jax.random.fold_in(key, k), params, ignore=ignore) for k in range(dims)
    ]
    if orthogonalize and dims == 2:
        dirs[1] = orthogonalize_to(dirs[1], dirs[0])
    return tuple(dirs)


def orthogonalize_to(direction: Any, reference: Any) -> Any:
    """Returns ``direction`` minus its projection on ``reference``, rescaled to its own norm."""
    coef = optax.tree.vdot(direction, reference) / optax.tree.vdot(reference, reference)
    ortho = optax.tree.add_scale(direction, -coef, reference)
    return optax.tree.scale(optax.tree.norm(direction) / optax.tree.norm(ortho), ortho)


def _active_mask(params: Any, ignore: str) -> Any:
    return jax.tree.map(lambda w: _is_filtered(w) or ignore == "none", params)


def gradient_direction(grad: Any, params: Any, *, ignore: str = "biases-and-bn") -> Any:
    """Returns the descent direction ``-g``, scaled to the norm a filter-normalised one has.

    Ignored leaves (biases and BN parameters with ``ignore="biases-and-bn"``) are zero; the rest
    is ``-g * ||x|| / ||g||`` with both norms over the kept leaves. A filter-normalised random
    direction has exactly that norm (each of its filters has the model filter's norm), so the
    two axes of a gradient x random picture are in the same units, and ``a = 1`` moves as far
    as the weights' own norm. Positive ``a`` goes downhill, as the probe's ``x - eta g``.
    """
    mask = _active_mask(params, ignore)
    g = jax.tree.map(lambda m, v: v if m else jnp.zeros_like(v), mask, grad)
    x = jax.tree.map(lambda m, v: v if m else jnp.zeros_like(v), mask, params)
    g_norm = optax.tree.norm(g)
    scale = jnp.where(g_norm > 0, optax.tree.norm(x) / jnp.where(g_norm > 0, g_norm, 1), 0)
    return optax.tree.scale(-scale, g)


# --- the evaluation ----------------------------------------------------------------------------


def make_metric_fn(
    model: nn.Module, mode: str = "train", *, accuracy: bool = True, loss: str = "cross_entropy"
) -> Callable:
    """Returns ``metric_fn(point, batch) -> array [loss(, accuracy)]`` for a Flax model.

    ``point`` is ``{"params", "batch_stats"}``. ``mode="train"`` is exactly the probe's loss
    (``make_loss_fn``: BatchNorm with the batch's statistics; the new statistics are dropped);
    ``mode="eval"`` uses the running averages in ``batch_stats``. ``loss`` names the model's
    training loss (``landscape.train.LOSSES``: mean cross-entropy in nats for VGG, the summed
    squared error for the deep linear network); accuracy is the fraction of the batch classified
    correctly, NaN for a loss without one.
    """
    from landscape.train import _accuracy, get_loss, make_loss_fn

    if mode not in MODES:
        raise ValueError(f"unknown mode {mode!r}; choose train or eval")
    spec = get_loss(loss)
    loss_fn = make_loss_fn(model, loss)

    def metric_fn(point: dict, batch: dict) -> jax.Array:
        if mode == "train":
            value, (_, logits) = loss_fn(point["params"], point["batch_stats"], batch)
        else:
            logits = model.apply(
                {"params": point["params"], "batch_stats": point["batch_stats"]},
                batch["image"],
                train=False,
            )
            losses = spec.per_example(logits, batch["label"])
            value = losses.sum() if spec.reduction == "sum" else losses.mean()
        if not accuracy:
            return value[None]
        return jnp.stack([value, _accuracy(spec, logits, batch["label"]).astype(value.dtype)])

    return metric_fn


def make_gradient_fn(metric_fn: Callable) -> Callable:
    """Returns jitted ``gradient(point, batches)``: the gradient of the loss (the first value of
    ``metric_fn``, averaged over the batches) with respect to ``point["params"]``."""

    @jax.jit
    def gradient(point: dict, batches: Any) -> Any:
        def loss(params):
            return _batch_mean(metric_fn, {**point, "params": params}, batches)[0]

        return jax.grad(loss)(point["params"])

    return gradient


def _move(origin: Any, directions: Sequence[Any], coord: jax.Array) -> Any:
    """Returns ``origin + sum_k coord[k] * directions[k]`` (leafwise, in each leaf's dtype)."""

    def one(o, *ds):
        out = o
        for k, d in enumerate(ds):
            out = out + coord[k].astype(o.dtype) * d
        return out

    return jax.tree.map(one, origin, *directions)


def _batch_mean(metric_fn: Callable, point: Any, batches: Any) -> jax.Array:
    # ``batches`` has a leading axis of N batches; the loss over N batches is the mean of the
    # per-batch losses (each batch normalised by its own statistics in train mode).
    return jax.lax.map(lambda b: metric_fn(point, b), batches).mean(axis=0)


def default_grid_strategy(backend: str | None = None) -> str:
    """Returns how a chunk of grid points is mapped on ``backend``: "map" on CPU, else "vmap".

    As for the probe (``landscape.probe.default_strategy``): XLA's CPU backend runs batched
    convolutions slowly, so ``lax.map`` one point at a time is faster there; an accelerator is
    kept busy by evaluating the chunk's points together.
    """
    return default_strategy(backend)


def default_chunk(backend: str | None = None, devices: int | None = None) -> int:
    """Returns the default number of grid points per compiled call (a multiple of the devices).

    Small on CPU, where a point of a quick-preset VGG costs ~0.1 s and a small chunk means an
    interruption loses little; larger on accelerators, where it fills the device.
    """
    backend = backend or jax.default_backend()
    devices = devices or jax.device_count()
    return (4 if backend == "cpu" else 32) * devices


def point_mesh(devices: Sequence[jax.Device] | None = None) -> Mesh | None:
    """Returns a 1D mesh over ``devices`` (default: all) on the grid-point axis; None for one."""
    devices = list(devices if devices is not None else jax.devices())
    if len(devices) <= 1:
        return None
    return Mesh(np.asarray(devices), (POINT_AXIS,))


def make_grid_fn(
    metric_fn: Callable,
    *,
    strategy: str | None = None,
    map_batch_size: int = 1,
    mesh: Mesh | None = None,
) -> Callable:
    """Returns jitted ``grid_fn(origin, directions, coords, batches) -> (P, K) array``.

    Row p is ``metric_fn(origin + sum_k coords[p, k] directions[k], batch)`` averaged over the
    leading axis of ``batches``. ``coords`` (P, D) is traced: one compilation serves every chunk
    of the same size. ``strategy`` maps the chunk's points with ``lax.map`` (``map_batch_size``
    at a time) or ``vmap``; None picks by backend. With a ``mesh`` the points are split over its
    devices (``shard_map``, ``P`` must be a multiple of the device count) and the origin,
    directions and batches are replicated.
    """
    strategy = strategy or default_grid_strategy()
    if strategy not in GRID_STRATEGIES:
        raise ValueError(f"unknown strategy {strategy!r}; choose map or vmap")

    def chunk_fn(origin, directions, coords, batches):
        def at(coord):
            return _batch_mean(metric_fn, _move(origin, directions, coord), batches)

        if strategy == "vmap":
            return jax.vmap(at)(coords)
        return jax.lax.map(at, coords, batch_size=map_batch_size)

    if mesh is None:
        return jax.jit(chunk_fn)
    replicated = NamedSharding(mesh, P())
    split = NamedSharding(mesh, P(POINT_AXIS))
    sharded = jax.shard_map(
        chunk_fn,
        mesh=mesh,
        in_specs=(P(), P(), P(POINT_AXIS), P()),
        out_specs=P(POINT_AXIS),
    )
    return jax.jit(
        sharded,
        in_shardings=(replicated, replicated, split, replicated),
        out_shardings=split,
    )


def evaluate_loop(
    metric_fn: Callable, origin: Any, directions: Sequence[Any], coords: np.ndarray, batches: Any
) -> np.ndarray:
    """Returns the (P, K) values point by point: one jitted point function called in a Python
    loop. The reference the chunked evaluation is tested and timed against."""

    @jax.jit
    def at(origin, directions, coord, batches):
        return _batch_mean(metric_fn, _move(origin, directions, coord), batches)

    return np.stack(
        [np.asarray(at(origin, tuple(directions), jnp.asarray(c), batches)) for c in coords]
    )


def evaluate_grid(
    grid_fn: Callable,
    origin: Any,
    directions: Sequence[Any],
    coords: np.ndarray,
    batches: Any,
    *,
    chunk: int,
    points: Sequence[int] | None = None,
    on_chunk: Callable[[list[int], np.ndarray], None] | None = None,
) -> np.ndarray:
    """Evaluates ``points`` (default: all) of ``coords`` a chunk at a time; returns (P, K).

    Every call of ``grid_fn`` gets exactly ``chunk`` points (the last chunk is padded by
    repeating its last point), so it compiles once. The next chunk is dispatched before the
    previous one is fetched, so the device never waits for the host writing a record.
    ``on_chunk(indices, values)`` is called with each finished chunk (for records and progress
    bars). Rows of points not evaluated are NaN.
    """
    coords = np.asarray(coords)
    todo = list(range(len(coords))) if points is None else list(points)
    directions = tuple(directions)
    out: np.ndarray | None = None
    pending: tuple[list[int], jax.Array] | None = None

    def finish(item: tuple[list[int], jax.Array]) -> None:
        nonlocal out
        idx, values = item
        values = np.asarray(jax.device_get(values))[: len(idx)]
        if out is None:
            out = np.full((len(coords), values.shape[1]), np.nan)
        out[idx] = values
        if on_chunk is not None:
            on_chunk(idx, values)

    for start in range(0, len(todo), chunk):
        idx = todo[start : start + chunk]
        padded = idx + [idx[-1]] * (chunk - len(idx))
        values = grid_fn(origin, directions, jnp.asarray(coords[padded]), batches)
        if pending is not None:
            finish(pending)
        pending = (idx, values)
    if pending is not None:
        finish(pending)
    if out is None:
        out = np.full((len(coords), 1), np.nan)
    return out


def evaluate_resumable(
    grid_fn: Callable,
    origin: Any,
    directions: Sequence[Any],
    coords: np.ndarray,
    batches: Any,
    *,
    path: Path,
    header: dict[str, Any],
    chunk: int,
    overwrite: bool = False,
    fields: Sequence[str] = ("loss",),
    on_progress: Callable[[int, int], None] | None = None,
) -> int:
    """Evaluates the grid points missing from the record at ``path``; returns how many it did.

    The record is opened with ``header`` (``surface_records.open_record``: a rerun with the
    same settings resumes, other settings are refused unless ``overwrite``). Each chunk is
    appended as ``{"points", <fields>}`` as soon as it is fetched. ``on_progress(done, total)``
    is called at the start and after each chunk.
    """
    done = open_record(path, header, overwrite=overwrite)
    missing = [p for p in range(len(coords)) if p not in done]
    total, count = len(coords), len(done)
    if on_progress is not None:
        on_progress(count, total)
    with RecordWriter(path) as writer:

        def write(idx: list[int], values: np.ndarray) -> None:
            nonlocal count
            row: dict[str, Any] = {"points": idx}
            for k, name in enumerate(fields):
                row[name] = values[:, k].tolist()
            writer.write([row])
            count += len(idx)
            if on_progress is not None:
                on_progress(count, total)

        evaluate_grid(
            grid_fn,
            origin,
            directions,
            coords,
            batches,
            chunk=chunk,
            points=missing,
            on_chunk=write,
        )
    return len(missing)


# --- checkpoints of a run ----------------------------------------------------------------------


@dataclasses.dataclass(frozen=True)
class GridOptions:
    """How a grid is evaluated; none of it changes the numbers beyond float rounding."""

    chunk: int | None = None  # points per compiled call; None: default_chunk()
    strategy: str | None = None  # "map" or "vmap"; None: by backend
    map_batch_size: int = 1


@functools.lru_cache(maxsize=16)
def compiled_picture_functions(
    model_config: ModelConfig,
    num_classes: int,
    mode: str,
    accuracy: bool,
    strategy: str | None,
    map_batch_size: int,
) -> tuple[Callable, Callable]:
    """Returns ``(grid_fn, gradient_fn)`` for a model, cached: the variants' pictures and a
    surface and an interpolation with the same shapes reuse one compilation in a process."""
    from landscape.models import loss_for_arch
    from landscape.train import build_model

    metric_fn = make_metric_fn(
        build_model(model_config, num_classes),
        mode,
        accuracy=accuracy,
        loss=loss_for_arch(model_config.arch),
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
    return int(step), checkpointer.restore(int(step), template)


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
    from landscape.runs import RunError, check_same_data, load_config

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


def _check_axis(axis: tuple[float, float, int], option: str) -> tuple[float, float, int]:
    lo, hi, n = float(axis[0]), float(axis[1]), int(axis[2])
    if n < 1 or not (np.isfinite(lo) and np.isfinite(hi)):
        raise SurfaceError(f"{option}: need finite LO, HI and N >= 1, got {axis}")
    return (lo, hi, n)


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
    from landscape.runs import Trainer

    run_dir = Path(run_dir)
    if dims not in (1, 2):
        raise SurfaceError(f"dims must be 1 or 2, got {dims}")
    if direction not in DIRECTIONS:
        raise SurfaceError(f"unknown direction {direction!r}; choose random or gradient")
    if ignore not in IGNORE_CHOICES:
        raise SurfaceError(f"unknown ignore {ignore!r}; choose biases-and-bn or none")
    grid = _check_axis(grid, "range")
    config, dataset = _open_run(run_dir, dataset)
    chosen = _check_common(mode, batches, variants, config)
    written = {}
    for variant in chosen:
        trainer = Trainer(config, variant, dataset)
        with _variant_checkpoints(run_dir, config, variant) as checkpointer:
            at_step, state = _restore(checkpointer, trainer, step, variant)
        origin = _variables(state)
        grid_fn, gradient_fn = compiled_picture_functions(
            config.model_for(variant),
            dataset.num_classes,
            mode,
            accuracy,
            options.strategy,
            options.map_batch_size,
        )
        stacked, batch_steps = _batches(trainer, state, at_step, batches)
        key = jax.random.key(seed)
        zeros = jax.tree.map(jnp.zeros_like, origin["batch_stats"])
        info: dict[str, Any] = {"mode_text": MODE_TEXT[mode]}
        if direction == "random":
            param_dirs = random_directions(
                key, origin["params"], dims, ignore=ignore, orthogonalize=orthogonalize
            )
        else:
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
            grid_fn,
            origin,
            directions,
            stacked,
            axes=[grid] * dims,
            coords=grid_coords([grid] * dims),
            path=path,
            header={"kind": "surface", "name": label, "settings": settings, "info": info},
            accuracy=accuracy,
            overwrite=overwrite,
            options=options,
            on_progress=(lambda d, t, v=variant: on_progress(v, d, t)) if on_progress else None,
        )
        written[variant] = path
    return written


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
    from landscape.runs import Trainer

    run_dir = Path(run_dir)
    grid = _check_axis(grid, "range")
    config, dataset = _open_run(run_dir, dataset)
    chosen = _check_common(mode, batches, variants, config)
    written = {}
    for variant in chosen:
        trainer = Trainer(config, variant, dataset)
        with _variant_checkpoints(run_dir, config, variant) as checkpointer:
            step_a, state_a = _restore(checkpointer, trainer, start, variant)
            step_b, state_b = _restore(checkpointer, trainer, end, variant)
        x_a, x_b = _variables(state_a), _variables(state_b)
        grid_fn, _ = compiled_picture_functions(
            config.model_for(variant),
            dataset.num_classes,
            mode,
            accuracy,
            options.strategy,
            options.map_batch_size,
        )
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
            grid_fn,
            origin,
            (x_a, x_b),
            stacked,
            axes=[grid],
            coords=coords,
            path=path,
            header={"kind": "interpolation", "name": label, "settings": settings, "info": info},
            accuracy=accuracy,
            overwrite=overwrite,
            options=options,
            on_progress=(lambda d, t, v=variant: on_progress(v, d, t)) if on_progress else None,
        )
        written[variant] = path
    return written


def _evaluate_record(
    grid_fn: Callable,
    origin: Any,
    directions: Sequence[Any],
    batches: Any,
    *,
    axes: list,
    coords: np.ndarray,
    path: Path,
    header: dict[str, Any],
    accuracy: bool,
    overwrite: bool,
    options: GridOptions,
    on_progress: Callable[[int, int], None] | None,
) -> int:
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
        on_progress=on_progress,
    )


# --- speed --------------------------------------------------------------------------------------


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
    import statistics
    import time

    from landscape.runs import Trainer

    say = say or (lambda message: None)
    trainer = Trainer(config, variant, dataset)
    state = trainer.initial_state()
    origin = _variables(state)
    batches, _ = _batches(trainer, state, 0, 1)
    metric_fn = make_metric_fn(trainer.model, "train", accuracy=True, loss=trainer.loss)
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
