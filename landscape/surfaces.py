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

from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
import optax
from jax.sharding import Mesh, NamedSharding
from jax.sharding import PartitionSpec as P

from landscape.network import Network, check_network
from landscape.probe import default_strategy
from landscape.results import RecordWriter
from landscape.surface_records import (
    open_record,
)
from landscape.train import _accuracy, get_loss, make_loss_fn, reduce_loss

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
    model: Network | nn.Module,
    mode: str = "train",
    *,
    accuracy: bool = True,
    loss: str = "cross_entropy",
) -> Callable:
    """Returns ``metric_fn(point, batch) -> array [loss(, accuracy)]`` for a network.

    ``point`` is ``{"params", "batch_stats"}``. ``mode="train"`` is exactly the probe's loss
    (``make_loss_fn``: BatchNorm with the batch's statistics; the new statistics are dropped);
    ``mode="eval"`` uses the running averages in ``batch_stats``. ``loss`` names the model's
    training loss (``landscape.train.LOSSES``: mean cross-entropy in nats for VGG, the summed
    squared error for the deep linear network); accuracy is the fraction of the batch classified
    correctly, NaN for a loss without one.
    """
    if mode not in MODES:
        raise ValueError(f"unknown mode {mode!r}; choose train or eval")
    network = check_network(model)
    spec = get_loss(loss)
    loss_fn = make_loss_fn(network, loss)

    def metric_fn(point: dict, batch: dict) -> jax.Array:
        if mode == "train":
            value, (_, logits) = loss_fn(point["params"], point["batch_stats"], batch)
        else:
            logits, _ = network.apply(
                point["params"], point["batch_stats"], batch["image"], train=False
            )
            value = reduce_loss(spec, logits, batch["label"])
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

    Small on CPU, where every point is a full loss evaluation and a small chunk means an
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


# --- speed --------------------------------------------------------------------------------------
