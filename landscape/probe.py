"""The landscape probe of Santurkar et al. 2018 (Fig. 4, App. A.2.2), and its reductions.

At a training step with parameters x, minibatch B and gradient g = grad L(x; B), the probe moves
to x - eta g for every eta of a grid and evaluates, on the same minibatch B,

* the loss ``L(x - eta g)``,
* the gradient distance ``||grad L(x - eta g) - g||`` (gradient predictiveness),
* the step length ``||eta g||``.

``probe`` returns these raw per-eta arrays (a ``ProbeResult``); the bands and the effective
beta-smoothness are small numpy functions beside it, applied outside compiled code. The probe is
an evaluation: it returns numbers and changes nothing (a stateful loss's new state is discarded).
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any, NamedTuple

import jax
import jax.numpy as jnp
import numpy as np
import optax

STRATEGIES = ("unroll", "vmap", "map")


class ProbeResult(NamedTuple):
    """Raw probe measurements at one step; per-eta fields have shape (K,) for K step sizes."""

    loss: jax.Array  # L(x - eta g), in the loss's units (nats for cross-entropy)
    grad_dist: jax.Array  # ||grad L(x - eta g) - g||_2
    step_norm: jax.Array  # ||eta g||_2, in parameter units
    loss0: jax.Array  # L(x), scalar
    grad_norm: jax.Array  # ||g||_2, scalar


def _scalar_loss(loss_fn: Callable, model_state: Any) -> Callable:
    """Adapts ``loss_fn`` to ``f(params, batch) -> scalar``, discarding any auxiliary output.

    Accepts ``loss_fn(params, batch)`` (when ``model_state`` is None) or
    ``loss_fn(params, model_state, batch)``; either may return a scalar or ``(loss, aux)``. The
    aux (new BatchNorm statistics, logits) is dropped: the probe must not change model state.
    """

    def f(params, batch):
        out = loss_fn(params, batch) if model_state is None else loss_fn(params, model_state, batch)
        return out[0] if isinstance(out, tuple) else out

    return f


def default_strategy(backend: str | None = None, *, builtin: bool = True) -> str:
    """Returns the fastest way to map over step sizes on ``backend`` (docs/performance.md).

    On CPU, for the built-in networks, ``lax.map`` one eta at a time: its loop body is one
    gradient evaluation, where the unrolled loop compiles K of them, and XLA's CPU backend runs
    ``vmap``'s batched convolutions slowly. A user's network (``builtin=False``) is unrolled on
    CPU instead: XLA's own convolution gradients run many times slower inside a loop body, and
    the built-in networks avoid them with hand-written ones (``models.conv3x3_canonical``). On
    accelerators the batched version keeps the device busy.
    """
    backend = backend or jax.default_backend()
    if backend != "cpu":
        return "vmap"
    return "map" if builtin else "unroll"


def probe(
    loss_fn: Callable,
    params: Any,
    batch: Any,
    etas: jax.Array | np.ndarray | list[float],
    *,
    model_state: Any = None,
    grad: Any = None,
    loss0: jax.Array | None = None,
    strategy: str | None = None,
    map_batch_size: int = 1,
) -> ProbeResult:
    """Probes the loss landscape along the gradient at ``params`` on ``batch``.

    Args:
      loss_fn: the training loss, ``loss_fn(params, batch)`` or, for stateful models,
        ``loss_fn(params, model_state, batch)``; it may return ``(loss, aux)``.
      params: the point x_t (any pytree of float arrays).
      batch: the step's minibatch, passed to ``loss_fn`` unchanged.
      etas: the step sizes, an array of shape (K,). It is traced, not baked into the program:
        one compilation serves every grid of the same length.
      model_state: e.g. BatchNorm statistics; the loss is evaluated in training mode and the
        new state it returns is discarded.
      grad, loss0: the training gradient and loss at ``params`` if already computed (inline
        probing shares them with the training update); computed here otherwise.
      strategy: how to map over etas: ``"unroll"`` (one after another in one program),
        ``"vmap"`` or ``"map"`` (``lax.map`` with ``map_batch_size``); None picks the fastest
        for the backend (``default_strategy``).

    Returns:
      A ``ProbeResult`` of per-eta arrays of shape (K,) and the scalars ``loss0``, ``grad_norm``.
      Divergence is data: a step size that overflows yields inf/NaN entries, not an error.
    """
    f = _scalar_loss(loss_fn, model_state)
    if grad is None:
        loss0, grad = jax.value_and_grad(f)(params, batch)
    elif loss0 is None:
        loss0 = f(params, batch)
    etas = jnp.asarray(etas)
    strategy = strategy or default_strategy()
    grad_norm = optax.tree.norm(grad)

    def at_eta(eta):
        moved = jax.tree.map(lambda p, g: p - eta.astype(p.dtype) * g, params, grad)
        loss, moved_grad = jax.value_and_grad(f)(moved, batch)
        return loss, optax.tree.norm(optax.tree.sub(moved_grad, grad))

    if strategy == "unroll":
        pairs = [at_eta(etas[i]) for i in range(etas.shape[0])]
        losses = jnp.stack([p[0] for p in pairs])
        dists = jnp.stack([p[1] for p in pairs])
    elif strategy == "vmap":
        losses, dists = jax.vmap(at_eta)(etas)
    elif strategy == "map":
        losses, dists = jax.lax.map(at_eta, etas, batch_size=map_batch_size)
    else:
        raise ValueError(f"unknown probe strategy {strategy!r}; choose one of {STRATEGIES}")
    step_norm = jnp.abs(etas).astype(grad_norm.dtype) * grad_norm
    return ProbeResult(losses, dists, step_norm, jnp.asarray(loss0), grad_norm)


def hessian_vector_product(
    loss_fn: Callable, params: Any, batch: Any, vector: Any, *, model_state: Any = None
) -> Any:
    """Returns H v, the Hessian of the loss at ``params`` times ``vector`` (forward-over-reverse)."""
    f = _scalar_loss(loss_fn, model_state)
    return jax.jvp(lambda p: jax.grad(f)(p, batch), (params,), (vector,))[1]


def gradient_curvature(
    loss_fn: Callable, params: Any, batch: Any, *, model_state: Any = None
) -> jax.Array:
    """Returns ||H g|| / ||g||: the limit of the effective beta-smoothness as eta -> 0."""
    f = _scalar_loss(loss_fn, model_state)
    grad = jax.grad(f)(params, batch)
    hg = hessian_vector_product(loss_fn, params, batch, grad, model_state=model_state)
    return optax.tree.norm(hg) / optax.tree.norm(grad)


# --- reductions (numpy, outside compiled code) -------------------------------------------------
#
# Every reduction takes arrays whose last axis is the eta grid, so it works on one step or on a
# stack of steps. A non-finite value means the step diverged; it counts as +inf (infinitely bad),
# so a band's maximum shows the divergence instead of hiding it.


def _worst_case(values: np.ndarray) -> np.ndarray:
    values = np.asarray(values, dtype=np.float64)
    return np.where(np.isnan(values), np.inf, values)


def band(values: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Returns (min, max) over the eta axis; NaN counts as +inf."""
    clean = _worst_case(values)
    return clean.min(axis=-1), clean.max(axis=-1)


def band_width(values: np.ndarray) -> np.ndarray:
    """Returns max - min over the eta axis (the height of the paper's shaded band)."""
    lo, hi = band(values)
    with np.errstate(invalid="ignore"):
        return hi - lo


def effective_beta(grad_dist: np.ndarray, step_norm: np.ndarray) -> np.ndarray:
    """Returns max over eta of ||grad L(x - eta g) - g|| / ||eta g||: effective beta-smoothness.

    Units: inverse parameter-distance squared times loss, i.e. a Lipschitz constant of the
    gradient along g. A diverged step size makes it +inf.
    """
    with np.errstate(divide="ignore", invalid="ignore"):
        ratio = _worst_case(grad_dist) / np.asarray(step_norm, dtype=np.float64)
    return _worst_case(ratio).max(axis=-1)


def diverged(values: np.ndarray) -> np.ndarray:
    """Returns the number of step sizes whose measurement is not finite."""
    return (~np.isfinite(np.asarray(values))).sum(axis=-1)


def summarize(result: ProbeResult | dict) -> dict[str, Any]:
    """Returns the per-step reductions of one probe result as plain Python numbers."""
    get = result._asdict() if isinstance(result, ProbeResult) else result
    loss = np.asarray(get["loss"], dtype=np.float64)
    dist = np.asarray(get["grad_dist"], dtype=np.float64)
    lo, hi = band(loss)
    dlo, dhi = band(dist)
    return {
        "loss_min": float(lo),
        "loss_max": float(hi),
        "loss_band": float(band_width(loss)),
        "grad_dist_min": float(dlo),
        "grad_dist_max": float(dhi),
        "beta": float(effective_beta(dist, get["step_norm"])),
        "diverged": int(max(diverged(loss), diverged(dist))),
    }
