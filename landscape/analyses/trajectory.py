"""The optimisation path of a run on its PCA directions, with the loss on their plane (Li et al.
2018, Sec. 7; docs/curvature.md, "Trajectories on PCA directions").

For each variant: the kept checkpoints are read one at a time, in two passes (a third with
filter normalisation), into the streaming PCA of ``landscape.trajectory``; the path is projected
on the first two components; the loss is evaluated on a grid of their plane around the final
checkpoint by the surfaces' chunked, sharded, resumable evaluation. The record is
``RUN_DIR/<variant>/surfaces/<name>.jsonl`` (kind "trajectory"), the directions and the
projected path are kept beside it in ``<name>.pca.npz`` so that a rerun resumes the grid without
reading the checkpoints again.
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
import os
from collections.abc import Callable, Iterator, Sequence
from pathlib import Path
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np
import optax

from landscape.analyses.pictures import (
    GridOptions,
    _batches,
    _check_axis,
    _describe,
    _evaluate_record,
    _variables,
    _variant_checkpoints,
    _variant_trainers,
)
from landscape.checkpoints import Checkpointer
from landscape.data import Dataset
from landscape.files import atomic_open
from landscape.results import read_rows
from landscape.rundir import locks_run_dir
from landscape.surface_records import SurfaceError, grid_coords, record_path
from landscape.surfaces import IGNORE_CHOICES, MODE_TEXT
from landscape.trajectory import (
    Flattener,
    normalize_directions,
    path_axes,
    path_pca,
    project,
)

KIND = "trajectory"
DEFAULT_NAME = "trajectory"
CACHE_SUFFIX = ".pca.npz"
# The sketch's numbers: float32 halves the memory of the (p, l) arrays; the rounding it adds
# (about 1e-7 relative) is far below what a picture shows.
PCA_DTYPE = np.float32
DEFAULT_GRID_OPTIONS = GridOptions()


@dataclasses.dataclass(frozen=True)
class PathOptions:
    """How the path's PCA is computed (``landscape.trajectory.path_pca``): the sketch's extra
    columns, power iterations (one more pass over the checkpoints each) and the sketch's seed,
    and how many checkpoints are stacked per matrix product."""

    oversampling: int = 10
    power_iterations: int = 0
    seed: int = 0
    block: int = 8


def _canonical(value: Any) -> Any:
    return json.loads(json.dumps(value))


def _final_checkpoint(checkpointer: Checkpointer, template: Any, variant: str) -> tuple[int, Any]:
    """Returns the newest checkpoint that reads back intact (the path's end, x_final); each
    damaged newer one is left out with a DamagedCheckpointWarning."""
    for step in reversed(checkpointer.steps()):
        state = checkpointer.restore_or_skip(step, template)
        if state is not None:
            return step, state
    raise SurfaceError(f"variant {variant!r} has no checkpoint that reads back intact")


def plan_steps(saved: Sequence[int], final: int, every: int) -> list[int]:
    """Returns the path's steps: every ``every``-th saved checkpoint before ``final``, then
    ``final``; step 0 (the initialisation, a pure function of the seed) always comes first."""
    steps = [s for s in sorted(saved)[:: max(every, 1)] if s < final]
    if 0 not in steps:
        steps.insert(0, 0)
    return [*steps, final]


def _check_existing(path: Path, settings: dict[str, Any], overwrite: bool) -> None:
    """Refuses, before any work, a record of the same name made with other settings."""
    if overwrite or not path.exists():
        return
    rows = read_rows(path)
    if not rows:
        return
    old = rows[0]
    if not old.get("header") or old.get("kind") != KIND:
        raise SurfaceError(f"{path} is not a trajectory record; pass --overwrite or --name")
    new = _canonical(settings)
    before = old.get("settings") or {}
    changed = [k for k in dict.fromkeys([*before, *new]) if before.get(k) != new.get(k)]
    if changed:
        diff = ", ".join(f"{k} {before.get(k)!r} -> {new.get(k)!r}" for k in changed[:3])
        raise SurfaceError(
            f"{path} was made with other settings ({diff}); pass --overwrite to replace it "
            "or --name to keep both"
        )


def _load_cache(path: Path, settings: dict[str, Any]) -> dict[str, Any] | None:
    """Returns the saved directions and path when ``path`` holds them for ``settings``."""
    if not path.exists():
        return None
    try:
        with np.load(path, allow_pickle=False) as saved:
            cache = {name: saved[name] for name in saved.files}
        if json.loads(str(cache["settings"])) != _canonical(settings):
            return None
    except (OSError, ValueError, KeyError, EOFError):
        return None  # a damaged or foreign file: computed again and replaced
    return cache


def _save_cache(path: Path, settings: dict[str, Any], **arrays: Any) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    with atomic_open(path, "wb") as f:
        np.savez(f, settings=np.asarray(json.dumps(_canonical(settings))), **arrays)


def _path_pca(
    checkpointer: Checkpointer,
    template: Any,
    final: tuple[int, Any],
    planned: list[int],
    flattener: Flattener,
    *,
    filter_normalize: bool,
    options: PathOptions,
    report: Callable[[str, int, int], None],
) -> dict[str, Any]:
    """Reads the planned checkpoints in passes and returns the directions, the projected path
    and the PCA's numbers (the arrays saved in the cache)."""
    final_step, final_state = final
    saved = set(checkpointer.steps())
    final_flat = flattener.flatten(final_state.params, PCA_DTYPE)
    used: list[int] = []
    skipped: list[int] = []
    passes = 2 + options.power_iterations + int(filter_normalize)
    done_passes = 0

    def restore(step: int, first: bool) -> Any | None:
        if step == final_step:
            return final_state
        if step == 0 and 0 not in saved:
            return template  # the initialisation, rebuilt from the seed
        if first:
            return checkpointer.restore_or_skip(step, template)
        state = checkpointer.restore_or_skip(step, template)
        if state is None:
            raise SurfaceError(f"checkpoint {step} was damaged while it was being read; run again")
        return state

    def rows() -> Iterator[np.ndarray]:
        nonlocal done_passes
        first = done_passes == 0
        steps = planned if first else list(used)
        label = f"PCA pass {done_passes + 1}/{passes}"
        report(label, 0, len(steps))
        for i, step in enumerate(steps):
            state = restore(step, first)
            if state is None:
                skipped.append(step)
                continue
            if first:
                used.append(step)
            yield flattener.flatten(state.params, PCA_DTYPE) - final_flat
            report(label, i + 1, len(steps))
        done_passes += 1

    try:
        pca = path_pca(
            rows,
            components=2,
            oversampling=options.oversampling,
            power_iterations=options.power_iterations,
            center=True,
            seed=options.seed,
            block=options.block,
            dtype=PCA_DTYPE,
        )
    except ValueError as err:  # no rows, or parameters that never moved
        raise SurfaceError(f"no PCA of the path: {err}") from None
    if len(used) < 3:
        raise SurfaceError(
            f"only {len(used)} checkpoints read back intact; the path needs at least 3"
        )
    directions = pca.components
    coordinates = pca.coordinates
    if filter_normalize:
        directions = normalize_directions(directions, final_state.params, flattener)
        coordinates = project(rows(), directions)
    return {
        "directions": np.asarray(directions, PCA_DTYPE),
        "coordinates": np.asarray(coordinates, np.float64),
        "steps": np.asarray(used, np.int64),
        "skipped": np.asarray(skipped, np.int64),
        "explained_variance_ratio": pca.explained_variance_ratio,
        "explained_variance": pca.explained_variance,
        "singular_values": pca.singular_values,
        "total_variance": np.asarray(pca.total_variance),
        "passes": np.asarray(done_passes),
    }


@locks_run_dir
def trajectory(
    run_dir: str | os.PathLike,
    *,
    variants: Sequence[str] | None = None,
    every: int = 1,
    grid: tuple[float, float, int] | None = None,
    points: int = 21,
    filter_normalize: bool = False,
    ignore: str = "biases-and-bn",
    batches: int = 1,
    mode: str = "train",
    accuracy: bool = True,
    name: str | None = None,
    overwrite: bool = False,
    path_options: PathOptions = PathOptions(),
    options: GridOptions = DEFAULT_GRID_OPTIONS,
    dataset: Dataset | None = None,
    on_progress: Callable[[str, int, int], None] | None = None,
) -> dict[str, Path]:
    """Pictures the optimisation path of each variant on its two PCA directions (Li et al. 2018,
    Sec. 7); returns the record paths by variant.

    The path is every ``every``-th kept checkpoint, the initialisation first (rebuilt from the
    seed when step 0 was not kept) and the newest intact checkpoint x_final last; a damaged
    checkpoint is left out with a warning. The rows ``x_t - x_final`` of the parameters (biases
    and BatchNorm parameters zero with ``ignore="biases-and-bn"``) go through the streaming PCA
    (``landscape.trajectory.path_pca``, ``path_options``); the directions are its first two
    components, unit vectors (Li et al.'s), or with ``filter_normalize`` those rescaled filter
    by filter to x_final's filters, the path then projected by least squares. The loss
    ``L(x_final + a d1 + b d2)`` is evaluated on ``grid`` = (lo, hi, n) for both a and b, or by
    default on ``points`` x ``points`` values fitted to the path (``path_axes``), on the
    training batches of steps ``final ... final + batches - 1`` in ``mode``, chunk by chunk
    into ``RUN_DIR/<variant>/surfaces/<name>.jsonl`` (default name "trajectory"); a rerun with
    the same settings resumes, others are refused unless ``overwrite``. The header's ``info``
    holds ``explained_variance_ratio`` (the two components' shares of the path's variance),
    ``explained_variance`` (parameter units squared), ``total_variance`` and ``path``
    (``steps`` and their coordinates ``a``, ``b``; x_final at the origin).

    ``on_progress(task, done, total)``: task ``"<variant>: PCA pass i/n"`` counts checkpoints,
    task ``"<variant>"`` grid points.
    """
    run_dir = Path(run_dir)
    if every < 1:
        raise SurfaceError(f"every must be positive, got {every}")
    if ignore not in IGNORE_CHOICES:
        raise SurfaceError(f"unknown ignore {ignore!r}; choose biases-and-bn or none")
    if grid is not None:
        grid = _check_axis(grid, "range")
    elif points < 1:
        raise SurfaceError(f"points must be positive, got {points}")
    if min(path_options.oversampling, path_options.power_iterations) < 0 or path_options.block < 1:
        raise SurfaceError("oversampling and power iterations must be non-negative")
    written: dict[str, Path] = {}
    for trainer in _variant_trainers(run_dir, dataset, mode, batches, variants):
        variant = trainer.variant
        template = trainer.initial_state()
        label = name or DEFAULT_NAME
        path = record_path(run_dir, variant, label)
        cache_path = path.with_name(f"{label}{CACHE_SUFFIX}")

        def report(task: str, done: int, total: int, variant: str = variant) -> None:
            if on_progress is not None:
                on_progress(f"{variant}: {task}", done, total)

        with _variant_checkpoints(run_dir, trainer.config, variant) as checkpointer:
            final_step, final_state = _final_checkpoint(checkpointer, template, variant)
            init_rebuilt = 0 not in checkpointer.steps()
            planned = plan_steps(checkpointer.steps(), final_step, every)
            if len(planned) < 3:
                raise SurfaceError(
                    f"{variant} has {len(planned)} checkpoints on its path (steps "
                    f"{', '.join(map(str, planned))}); the PCA needs at least 3: keep more "
                    "checkpoints or choose a smaller --every"
                )
            stacked, batch_steps = _batches(trainer, final_state, final_step, batches)
            pca_settings = {
                "variant": variant,
                "final_step": final_step,
                "checkpoints": len(planned),
                "every": every,
                "steps_sha1": hashlib.sha1(json.dumps(planned).encode()).hexdigest()[:12],
                "ignore": ignore,
                "filter_normalize": filter_normalize,
                "oversampling": path_options.oversampling,
                "power_iterations": path_options.power_iterations,
                "seed": path_options.seed,
            }
            settings = {
                **pca_settings,
                "range": list(grid) if grid is not None else f"auto:{points}",
                "mode": mode,
                "batches": batches,
                "batch_steps": batch_steps,
                "accuracy": accuracy,
            }
            _check_existing(path, settings, overwrite)
            cache = None if overwrite else _load_cache(cache_path, pca_settings)
            if cache is None:
                cache = _path_pca(
                    checkpointer,
                    template,
                    (final_step, final_state),
                    planned,
                    Flattener(template.params, ignore=ignore),
                    filter_normalize=filter_normalize,
                    options=path_options,
                    report=report,
                )
                _save_cache(cache_path, pca_settings, **cache)
        flattener = Flattener(template.params, ignore=ignore)
        coords_path = np.asarray(cache["coordinates"])
        axes = [grid, grid] if grid is not None else path_axes(coords_path, points)
        origin = _variables(final_state)
        zeros = jax.tree.map(jnp.zeros_like, origin["batch_stats"])
        directions = tuple(
            {"params": flattener.unflatten(d), "batch_stats": zeros} for d in cache["directions"]
        )
        norms = _describe(directions)["direction_norms"]
        cosine = float(optax.tree.vdot(directions[0]["params"], directions[1]["params"])) / (
            norms[0] * norms[1] or 1.0
        )
        info = {
            "mode_text": MODE_TEXT[mode],
            "explained_variance_ratio": np.asarray(cache["explained_variance_ratio"]).tolist(),
            "explained_variance": np.asarray(cache["explained_variance"]).tolist(),
            "singular_values": np.asarray(cache["singular_values"]).tolist(),
            "total_variance": float(cache["total_variance"]),
            "pca_passes": int(cache["passes"]),
            "direction_norms": norms,
            "direction_cosine": cosine,
            "init_rebuilt": init_rebuilt,
            "skipped_steps": np.asarray(cache["skipped"]).tolist(),
            "path": {
                "steps": np.asarray(cache["steps"]).tolist(),
                "a": coords_path[:, 0].tolist(),
                "b": coords_path[:, 1].tolist(),
            },
        }
        _evaluate_record(
            trainer,
            origin,
            directions,
            stacked,
            axes=[list(a) for a in axes],
            coords=grid_coords(axes),
            path=path,
            header={"kind": KIND, "name": label, "settings": settings, "info": info},
            mode=mode,
            accuracy=accuracy,
            overwrite=overwrite,
            options=options,
            on_progress=on_progress,
        )
        written[variant] = path
    return written
