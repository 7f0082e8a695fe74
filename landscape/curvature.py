"""Curvature of the training loss: Hessian-vector products, top eigenvalues, trace, spectrum.

Everything here acts on the Hessian H of the loss the optimiser and the probe see
(``landscape.train.make_loss_fn``: BatchNorm in training mode on the step's batch), or, when
asked explicitly, of the inference-mode loss (``make_eval_loss_fn``: BatchNorm's running
averages). H is never formed: it is applied to vectors by forward-over-reverse autodiff
(``jax.jvp`` of ``jax.grad``), on the parameters flattened by ``jax.flatten_util.ravel_pytree``.

* ``lanczos``: the top eigenvalues, by Lanczos with full reorthogonalisation, a fixed number of
  iterations in one ``lax.fori_loop``; ``power_iteration`` (subspace iteration) cross-checks it.
* ``hutchinson``: the trace, tr H = E[z^T H z] over Rademacher z, with its standard error.
* ``slq`` / ``spectral_density``: the spectral density by stochastic Lanczos quadrature
  (Ubaru, Chen & Saad 2017; Ghorbani, Krishnan & Xiao 2019), Gaussian-broadened on a grid.
* ``hessian_operator``: H restricted to a block of parameters selected by a regular expression
  on their '/'-joined Flax path (``"Conv3x3_3/"``, ``"kernel$"``), over one batch or averaged over
  several (the mean of the batches' HVPs is the HVP of the mean loss).
* ``sharpness_over_training``: the top eigenvalue, trace and optionally the density at the saved
  checkpoints of a run, each on its own step's batch, next to the paper's effective
  beta-smoothness at a small step size and to ||H g|| / ||g||, its limit as eta -> 0 (SPEC, "The
  landscape probe"). Records go to ``RUN_DIR/<variant>/hessian.jsonl``.

Cost, measured with ``measure_cost`` (the quick preset's VGG-11 at width 1/4, batch 128,
synthetic data, all candidates timed side by side in one process, medians of 3 and of 5 repeats
in two sessions, on a 2-core CPU shared with a dozen other processes, so only ratios carry over):
one top-eigenvalue estimate with 20 Lanczos iterations costs 19-26 gradient evaluations
(BatchNorm 21.9x and 25.7x, standard 19.4x and 25.8x), a standalone HVP 1.4-2.3 gradients; the
Lanczos program compiles in 0.5-2 minutes there. A record of ``landscape hessian`` with the
defaults (20 iterations, 10 trace probes, the probe at 9 step sizes) is about 50 gradients.
"""

from __future__ import annotations

import re
import statistics
import time
from collections.abc import Callable, Iterable, Sequence
from pathlib import Path
from typing import Any, NamedTuple

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
import optax
from jax.flatten_util import ravel_pytree

from landscape.probe import (
    _scalar_loss,
    default_strategy,
    effective_beta,
    gradient_curvature,  # noqa: F401  (re-exported: one home for the HVP helpers)
    hessian_vector_product,
    probe,
)

HESSIAN_FILE = "hessian.jsonl"
MODES = ("train", "eval")
ALL_PARAMETERS = "all"


# --- the loss ---------------------------------------------------------------------------------


def make_eval_loss_fn(model: nn.Module, loss: str = "cross_entropy") -> Callable:
    """Returns the inference-mode loss ``loss_fn(params, batch_stats, batch)``.

    Same signature and return value as ``landscape.train.make_loss_fn`` (``(mean cross-entropy
    in nats, (batch_stats, logits))``), but the network runs with ``train=False``: BatchNorm
    normalises with its running averages, which are returned unchanged. Use it only when the
    inference-mode landscape is wanted; the optimiser sees the training-mode loss. ``loss``
    names the model's training loss (``landscape.train.LOSSES``).
    """
    from landscape.train import get_loss

    spec = get_loss(loss)

    def loss_fn(params, batch_stats, batch):
        logits = model.apply(
            {"params": params, "batch_stats": batch_stats}, batch["image"], train=False
        )
        losses = spec.per_example(logits, batch["label"])
        value = losses.sum() if spec.reduction == "sum" else losses.mean()
        return value, (batch_stats, logits)

    return loss_fn


# --- parameter blocks -------------------------------------------------------------------------


def parameter_paths(params: Any) -> list[str]:
    """Returns the '/'-joined paths of the leaves of ``params`` (``"Conv3x3_0/kernel"``), in
    the order ``ravel_pytree`` flattens them."""
    leaves = jax.tree_util.tree_flatten_with_path(params)[0]
    return [jax.tree_util.keystr(path, simple=True, separator="/") for path, _ in leaves]


def select_paths(params: Any, pattern: str | None) -> list[int]:
    """Returns the indices of the leaves whose path matches ``pattern`` (``re.search``).

    ``None`` or ``"all"`` selects every leaf. Raises ``ValueError`` when nothing matches, with
    the paths there are.
    """
    paths = parameter_paths(params)
    if pattern is None or pattern == ALL_PARAMETERS:
        return list(range(len(paths)))
    try:
        regex = re.compile(pattern)
    except re.error as err:
        raise ValueError(f"bad parameter pattern {pattern!r}: {err}") from None
    chosen = [i for i, path in enumerate(paths) if regex.search(path)]
    if not chosen:
        raise ValueError(
            f"parameter pattern {pattern!r} matches no parameter; paths are: {', '.join(paths)}"
        )
    return chosen


class FlatOperator(NamedTuple):
    """A symmetric linear operator on flat vectors: ``matvec(v) -> H v``, both of shape (dim,)."""

    matvec: Callable[[jax.Array], jax.Array]
    dim: int
    dtype: Any
    unravel: Callable[[jax.Array], Any]  # flat vector -> list of the selected leaves


def stack_batches(batches: Sequence[Any]) -> Any:
    """Returns the batches stacked on a new leading axis (the form ``hessian_operator`` takes)."""
    return jax.tree.map(lambda *xs: jnp.stack(xs), *batches)


def hessian_operator(
    loss_fn: Callable,
    params: Any,
    batches: Any,
    *,
    model_state: Any = None,
    block: str | None = None,
) -> FlatOperator:
    """Returns the Hessian of the loss at ``params`` as an operator on flat vectors.

    Args:
      loss_fn: ``loss_fn(params, batch)`` or ``loss_fn(params, model_state, batch)``, as the
        probe takes it; a tuple output's auxiliary part (new BatchNorm statistics) is dropped.
      batches: one or more batches stacked on a leading axis (``stack_batches``); H is the mean
        of their Hessians, applied one batch at a time in a ``lax.scan``.
      block: a regular expression on the parameters' '/'-joined paths; H is restricted to the
        matching block (H_BB, the other parameters held fixed), the vectors then have the
        block's size. None: all parameters.

    Works on traced arrays: build it inside ``jax.jit``. Forward-over-reverse: one HVP costs
    about one forward and two backward passes.
    """
    f = _scalar_loss(loss_fn, model_state)
    leaves, treedef = jax.tree.flatten(params)
    chosen = select_paths(params, block)
    flat, unravel = ravel_pytree([leaves[i] for i in chosen])
    num_batches = jax.tree.leaves(batches)[0].shape[0]

    def block_loss(selected, batch):
        merged = list(leaves)
        for i, leaf in zip(chosen, selected, strict=True):
            merged[i] = leaf
        return f(jax.tree.unflatten(treedef, merged), batch)

    selected0 = [leaves[i] for i in chosen]

    def hvp_on(batch, vector):
        return jax.jvp(lambda p: jax.grad(block_loss)(p, batch), (selected0,), (vector,))[1]

    def matvec(v: jax.Array) -> jax.Array:
        vector = unravel(v)

        def add(total, batch):
            return total + ravel_pytree(hvp_on(batch, vector))[0], None

        total, _ = jax.lax.scan(add, jnp.zeros_like(v), batches)
        return total / num_batches

    return FlatOperator(matvec, int(flat.size), flat.dtype, unravel)


# --- Lanczos, power iteration, Hutchinson, stochastic Lanczos quadrature ----------------------


class Tridiagonal(NamedTuple):
    """The Lanczos matrix T = V^T H V: ``alphas`` (m,) on the diagonal, ``betas`` (m-1,) beside."""

    alphas: jax.Array
    betas: jax.Array

    def matrix(self) -> jax.Array:
        return jnp.diag(self.alphas) + jnp.diag(self.betas, 1) + jnp.diag(self.betas, -1)


def _orthogonalise(w: jax.Array, basis: jax.Array) -> jax.Array:
    # Classical Gram-Schmidt against every basis vector, twice ("twice is enough", Parlett):
    # without it the Lanczos vectors lose orthogonality and copies of the top eigenvalue appear.
    w = w - basis.T @ (basis @ w)
    return w - basis.T @ (basis @ w)


def lanczos(
    matvec: Callable[[jax.Array], jax.Array],
    start: jax.Array,
    num_iters: int,
    key: jax.Array | None = None,
) -> Tridiagonal:
    """Runs ``num_iters`` Lanczos iterations with full reorthogonalisation from ``start``.

    Returns the tridiagonal matrix T, whose eigenvalues (Ritz values, ``ritz_values``) approximate
    H's extreme eigenvalues, and whose eigenvectors' first components give the quadrature
    weights of SLQ. ``num_iters`` is a Python int (at most ``start.size``): one ``fori_loop``,
    compiled once. On breakdown (an invariant subspace found: the new vector vanishes) it
    continues from a random vector orthogonal to the basis, drawn from ``key``; the zero
    off-diagonal then decouples T, so every Ritz value stays an eigenvalue of H restricted to
    the Krylov spaces.
    """
    dim = start.shape[0]
    if not 1 <= num_iters <= dim:
        raise ValueError(f"num_iters must be in [1, {dim}] (the dimension), got {num_iters}")
    dtype = start.dtype
    key = jax.random.key(0) if key is None else key
    tiny = jnp.finfo(dtype).tiny
    tol = 100 * jnp.finfo(dtype).eps
    basis = jnp.zeros((num_iters + 1, dim), dtype).at[0].set(start / jnp.linalg.norm(start))

    def body(i, carry):
        basis, alphas, betas = carry
        v = basis[i]
        w = matvec(v)
        alpha = jnp.vdot(v, w)
        scale = jnp.linalg.norm(w)
        # The basis holds v and its predecessors, so this also subtracts alpha v and
        # beta_{i-1} v_{i-1}, the three-term recurrence.
        w = _orthogonalise(w, basis)
        beta = jnp.linalg.norm(w)

        def restart(_):
            r = jax.random.normal(jax.random.fold_in(key, i), (dim,), dtype)
            r = _orthogonalise(r, basis)
            return r / jnp.maximum(jnp.linalg.norm(r), tiny), jnp.zeros((), dtype)

        def proceed(_):
            return w / beta, beta

        nxt, beta = jax.lax.cond(beta > tol * scale, proceed, restart, None)
        return basis.at[i + 1].set(nxt), alphas.at[i].set(alpha), betas.at[i].set(beta)

    init = (basis, jnp.zeros(num_iters, dtype), jnp.zeros(num_iters, dtype))
    _, alphas, betas = jax.lax.fori_loop(0, num_iters, body, init)
    return Tridiagonal(alphas, betas[:-1])


def ritz_values(tri: Tridiagonal) -> jax.Array:
    """Returns the eigenvalues of the Lanczos matrix, largest first (shape (m,))."""
    return jnp.linalg.eigvalsh(tri.matrix())[::-1]


class PowerResult(NamedTuple):
    eigenvalues: jax.Array  # (k,), largest magnitude first
    residuals: jax.Array  # (k,), ||H u - lambda u|| / |lambda| for the Ritz vectors u


def power_iteration(
    matvec: Callable[[jax.Array], jax.Array], start: jax.Array, num_iters: int
) -> PowerResult:
    """Subspace (block power) iteration: the k eigenvalues of largest magnitude.

    ``start`` has shape (k, dim). Each of the ``num_iters`` iterations applies H to the k
    vectors and re-orthonormalises them (QR); a final Rayleigh-Ritz step gives the eigenvalues
    and their relative residuals. Converges to the largest *magnitude*, so it agrees with
    Lanczos' largest eigenvalue when that one dominates the most negative (as it does for the
    networks here); slower than Lanczos, hence a cross-check.
    """

    def apply(vectors):
        return jax.lax.map(matvec, vectors)

    def body(_, vectors):
        q, _ = jnp.linalg.qr(apply(vectors).T)
        return q.T

    q0, _ = jnp.linalg.qr(start.T)
    vectors = jax.lax.fori_loop(0, num_iters, body, q0.T)
    applied = apply(vectors)
    small = vectors @ applied.T
    values, coords = jnp.linalg.eigh(0.5 * (small + small.T))
    order = jnp.argsort(-jnp.abs(values))
    values, coords = values[order], coords[:, order]
    ritz, hritz = coords.T @ vectors, coords.T @ applied
    residuals = jnp.linalg.norm(hritz - values[:, None] * ritz, axis=1) / jnp.abs(values)
    return PowerResult(values, residuals)


class TraceEstimate(NamedTuple):
    trace: jax.Array  # mean of the samples
    stderr: jax.Array  # standard error of the mean: std (ddof 1) / sqrt(probes); NaN for 1 probe
    samples: jax.Array  # (probes,): z^T H z for each Rademacher z


def hutchinson(
    matvec: Callable[[jax.Array], jax.Array], key: jax.Array, dim: int, num_probes: int, dtype=None
) -> TraceEstimate:
    """Hutchinson's estimate of tr H: the mean of z^T H z over ``num_probes`` Rademacher z.

    Unbiased; its variance is 2 * (||H||_F^2 - sum_i H_ii^2) / probes, estimated here from the
    samples as the standard error.
    """
    dtype = dtype or jnp.float32
    keys = jax.random.split(key, num_probes)

    def sample(k):
        z = jax.random.rademacher(k, (dim,), dtype)
        return jnp.vdot(z, matvec(z))

    samples = jax.lax.map(sample, keys)
    spread = jnp.std(samples, ddof=1) if num_probes > 1 else jnp.asarray(jnp.nan, dtype)
    return TraceEstimate(samples.mean(), spread / jnp.sqrt(num_probes), samples)


class Quadrature(NamedTuple):
    """Stochastic Lanczos quadrature: per probe, nodes (Ritz values) and weights summing to 1."""

    nodes: jax.Array  # (probes, m)
    weights: jax.Array  # (probes, m)


def slq(
    matvec: Callable[[jax.Array], jax.Array],
    key: jax.Array,
    dim: int,
    num_probes: int,
    num_iters: int,
    dtype=None,
) -> Quadrature:
    """The spectral density's quadrature: Lanczos from ``num_probes`` random unit vectors v.

    For each v, the Gauss quadrature of the measure sum_i (q_i . v)^2 delta(x - lambda_i) has
    nodes at the Ritz values theta_j and weights tau_j^2, the squared first components of T's
    eigenvectors; its average over v estimates the spectral density (1/n) sum_i delta(x -
    lambda_i), since E[(q_i . v)^2] = 1/n. Exact when ``num_iters`` equals the dimension.
    """
    dtype = dtype or jnp.float32
    keys = jax.random.split(key, num_probes)

    def one(k):
        start_key, restart_key = jax.random.split(k)
        start = jax.random.normal(start_key, (dim,), dtype)
        tri = lanczos(matvec, start, num_iters, restart_key)
        values, vectors = jnp.linalg.eigh(tri.matrix())
        return values, vectors[0] ** 2

    nodes, weights = jax.lax.map(one, keys)
    return Quadrature(nodes, weights)


def spectral_density(
    nodes: np.ndarray,
    weights: np.ndarray,
    grid: np.ndarray | None = None,
    *,
    sigma: float | None = None,
    num_points: int = 512,
) -> tuple[np.ndarray, np.ndarray]:
    """Returns ``(grid, density)``: the SLQ density broadened by Gaussians of width ``sigma``.

    density(x) = mean over probes of sum_j w_j N(x; theta_j, sigma^2); it integrates to 1 over
    a grid that covers the nodes by a few sigma (the default grid spans [min - 5 sigma,
    max + 5 sigma]). ``sigma`` defaults to 1% of the spectrum's width. Numpy, outside jit.
    """
    nodes = np.asarray(nodes, np.float64).reshape(-1, np.shape(nodes)[-1])
    weights = np.asarray(weights, np.float64).reshape(nodes.shape)
    lo, hi = float(nodes.min()), float(nodes.max())
    if sigma is None:
        sigma = 0.01 * max(hi - lo, abs(hi), 1e-12)
    if grid is None:
        grid = np.linspace(lo - 5 * sigma, hi + 5 * sigma, num_points)
    grid = np.asarray(grid, np.float64)
    gauss = np.exp(-0.5 * ((grid[:, None] - nodes.ravel()[None, :]) / sigma) ** 2)
    gauss /= sigma * np.sqrt(2 * np.pi)
    density = gauss @ weights.ravel() / nodes.shape[0]
    return grid, density


# --- one jitted estimate ----------------------------------------------------------------------


class HessianEstimate(NamedTuple):
    """What ``make_hessian_estimator``'s function returns (arrays; empty where not asked for)."""

    top_eigenvalues: jax.Array  # (k,) largest Ritz values, largest first (loss / parameter^2)
    ritz_values: jax.Array  # (m,) all Ritz values of the top-eigenvalue Lanczos run
    power_eigenvalues: jax.Array  # (k,) subspace iteration's, largest magnitude first, or (0,)
    power_residuals: jax.Array  # (k,) their relative residuals, or (0,)
    trace: jax.Array  # Hutchinson's estimate (NaN without probes)
    trace_stderr: jax.Array  # its standard error
    density: Quadrature  # (probes, m) nodes and weights, probes may be 0


def make_hessian_estimator(
    loss_fn: Callable,
    *,
    top_k: int = 1,
    num_iters: int = 20,
    power_iters: int = 0,
    trace_probes: int = 0,
    density_probes: int = 0,
    block: str | None = None,
) -> Callable[..., HessianEstimate]:
    """Returns jitted ``estimate(params, model_state, batches, key) -> HessianEstimate``.

    ``loss_fn(params, model_state, batch)`` is the loss (``make_loss_fn`` or
    ``make_eval_loss_fn``); ``batches`` are stacked on a leading axis (``stack_batches``), the
    Hessian is their average; ``block`` restricts it (see ``hessian_operator``). The settings
    are Python ints fixed at build time; the parameters, state, batches and key are traced, so
    one compilation serves every checkpoint of a run. Each quantity uses its own key, split
    from ``key``. Costs, in Hessian-vector products: ``num_iters`` (top eigenvalues) +
    ``power_iters * top_k`` + ``trace_probes`` + ``density_probes * num_iters``.
    """
    if top_k < 1 or num_iters < 1:
        raise ValueError("top_k and num_iters must be positive")

    @jax.jit
    def estimate(params, model_state, batches, key) -> HessianEstimate:
        op = hessian_operator(loss_fn, params, batches, model_state=model_state, block=block)
        iters = min(num_iters, op.dim)
        k_lanczos, k_restart, k_power, k_trace, k_density = jax.random.split(key, 5)
        start = jax.random.normal(k_lanczos, (op.dim,), op.dtype)
        ritz = ritz_values(lanczos(op.matvec, start, iters, k_restart))
        k = min(top_k, iters)
        if power_iters:
            power = power_iteration(
                op.matvec, jax.random.normal(k_power, (k, op.dim), op.dtype), power_iters
            )
        else:
            power = PowerResult(jnp.zeros(0, op.dtype), jnp.zeros(0, op.dtype))
        if trace_probes:
            trace = hutchinson(op.matvec, k_trace, op.dim, trace_probes, op.dtype)
        else:
            nan = jnp.asarray(jnp.nan, op.dtype)
            trace = TraceEstimate(nan, nan, jnp.zeros(0, op.dtype))
        if density_probes:
            density = slq(op.matvec, k_density, op.dim, density_probes, iters, op.dtype)
        else:
            density = Quadrature(jnp.zeros((0, iters), op.dtype), jnp.zeros((0, iters), op.dtype))
        return HessianEstimate(
            ritz[:k], ritz, power.eigenvalues, power.residuals, trace.trace, trace.stderr, density
        )

    return estimate


class GradientLink(NamedTuple):
    """The paper's probe at small and usual step sizes next to ||H g|| / ||g|| (one batch)."""

    loss: jax.Array  # L(x) on the step's batch, nats
    grad_norm: jax.Array  # ||g||
    hg_norm: jax.Array  # ||H g||
    grad_dist: jax.Array  # (K,) ||grad L(x - eta g) - g|| per eta
    step_norm: jax.Array  # (K,) ||eta g||


def make_link_fn(loss_fn: Callable, strategy: str | None = None) -> Callable[..., GradientLink]:
    """Returns jitted ``link(params, model_state, batch, etas) -> GradientLink``.

    One gradient g serves the HVP H g and the probe along g (Santurkar et al., App. A.2.2) at
    every eta; as eta -> 0 the effective beta ||grad L(x - eta g) - g|| / ||eta g|| tends to
    ||H g|| / ||g|| (SPEC, "Useful identities"). ``etas`` is traced.
    """
    strategy = strategy or default_strategy()

    @jax.jit
    def link(params, model_state, batch, etas) -> GradientLink:
        f = _scalar_loss(loss_fn, model_state)
        loss0, grad = jax.value_and_grad(f)(params, batch)
        hg = hessian_vector_product(loss_fn, params, batch, grad, model_state=model_state)
        result = probe(
            loss_fn,
            params,
            batch,
            etas,
            model_state=model_state,
            grad=grad,
            loss0=loss0,
            strategy=strategy,
        )
        return GradientLink(
            loss0, result.grad_norm, optax.tree.norm(hg), result.grad_dist, result.step_norm
        )

    return link


# --- over the checkpoints of a run ------------------------------------------------------------


def _record_key(row: dict[str, Any]) -> tuple:
    return (row.get("step"), row.get("mode"), row.get("block", ALL_PARAMETERS), row.get("batches"))


def choose_steps(
    saved: Sequence[int], every: int = 1, steps: Iterable[int] | None = None
) -> list[int]:
    """Returns every ``every``-th saved checkpoint step, or the requested ``steps`` among them.

    Raises ``ValueError`` for a requested step without a checkpoint (naming the nearest ones).
    """
    saved = sorted(saved)
    if steps is None:
        return saved[:: max(every, 1)]
    wanted = sorted(set(int(s) for s in steps))
    missing = [s for s in wanted if s not in set(saved)]
    if missing:
        near = sorted(saved, key=lambda s: abs(s - missing[0]))[:4]
        raise ValueError(
            f"no checkpoint at step {missing[0]}; the nearest saved are {sorted(near)} "
            f"({len(saved)} checkpoints from {saved[0] if saved else '-'} to "
            f"{saved[-1] if saved else '-'})"
        )
    return wanted


def sharpness_over_training(
    run_dir: str | Path,
    *,
    every: int = 1,
    steps: Iterable[int] | None = None,
    variants: Sequence[str] | None = None,
    top_k: int = 1,
    num_iters: int = 20,
    trace_probes: int = 10,
    density_probes: int = 0,
    power_iters: int = 0,
    mode: str = "train",
    num_batches: int = 1,
    blocks: Sequence[str | None] = (None,),
    small_eta_factor: float = 1e-3,
    dataset: Any = None,
    on_plan: Callable[[dict[str, int]], None] | None = None,
    on_record: Callable[[str, dict[str, Any]], None] | None = None,
) -> dict[str, Path]:
    """Measures the curvature at the saved checkpoints of a run, appending to hessian.jsonl.

    For each variant and each chosen checkpoint (every ``every``-th saved one, or ``steps``),
    the state is restored and the batch it was trained on rebuilt (as ``runs.reprobe`` does);
    with ``num_batches`` > 1 the batches of the next steps are added and the Hessian averaged
    over them. Per step and per block (``blocks``: patterns on parameter paths, None = all) one
    record is appended to ``RUN_DIR/<variant>/hessian.jsonl`` as soon as it is computed:

    ``step``, ``mode`` ("train": BatchNorm on the batch's statistics, as the optimiser sees the
    loss; "eval": running averages), ``block``, ``batches``; ``top_eigenvalues`` (largest first;
    ``lambda_max`` the first) and ``ritz_values`` from ``num_iters`` Lanczos iterations;
    ``trace`` and ``trace_stderr`` (Hutchinson, ``trace_probes`` Rademacher probes);
    ``power_eigenvalues``/``power_residuals`` when ``power_iters``; ``density_nodes``/
    ``density_weights`` (SLQ) when ``density_probes``; on the step's own batch and all
    parameters: ``loss``, ``grad_norm``, ``hg_ratio`` = ||H g|| / ||g||, ``beta_small`` = the
    effective beta at ``eta_small`` = ``small_eta_factor`` x lr and ``beta`` over the run's
    grid (Santurkar et al., App. A.2.2); ``lr``, ``eos`` = 2 / lr (the edge of stability of
    gradient descent), ``iterations``, ``seconds`` (wall time of the record, compilation
    excluded). A record whose (step, mode, block, batches) is already in the file is skipped.

    Returns the files written, by variant. ``on_plan({variant: records to do})`` is called once
    before any work, ``on_record(variant, row)`` after each record (progress bars).
    """
    from landscape.checkpoints import Checkpointer
    from landscape.data import load_dataset
    from landscape.results import RecordWriter, read_rows
    from landscape.runs import RunError, Trainer, check_same_data, load_config
    from landscape.train import step_batch

    if mode not in MODES:
        raise RunError(f"unknown mode {mode!r}; choose train or eval")
    for name, value in (("top_k", top_k), ("num_iters", num_iters), ("num_batches", num_batches)):
        if value < 1:
            raise RunError(f"{name} must be positive, got {value}")
    if min(trace_probes, density_probes, power_iters) < 0 or every < 1:
        raise RunError("probe and iteration counts must be non-negative, every positive")
    run_dir = Path(run_dir)
    config = load_config(run_dir)
    variants = list(variants or config.variants)
    unknown = [v for v in variants if v not in config.variants]
    if unknown:
        raise RunError(f"variant {unknown[0]!r} is not in this run ({', '.join(config.variants)})")
    block_names = [ALL_PARAMETERS if b is None else b for b in blocks] or [ALL_PARAMETERS]

    # Plan first (cheap, no data): a bad step or pattern fails before any work.
    plans: dict[str, list[int]] = {}
    for variant in variants:
        ckpt_dir = run_dir / variant / "checkpoints"
        if not ckpt_dir.exists():
            raise RunError(f"variant {variant!r} has no checkpoints in {run_dir}")
        with Checkpointer(ckpt_dir, config.checkpoint) as checkpointer:
            saved = checkpointer.steps()
        try:
            chosen = choose_steps(saved, every, steps)
        except ValueError as err:
            raise RunError(f"{variant}: {err}") from None
        done = {_record_key(r) for r in read_rows(run_dir / variant / HESSIAN_FILE)}
        plans[variant] = [
            s for s in chosen if any((s, mode, b, num_batches) not in done for b in block_names)
        ]
    if on_plan is not None:
        on_plan({v: len(s) for v, s in plans.items()})
    if not any(plans.values()):
        return {v: run_dir / v / HESSIAN_FILE for v in variants}

    if dataset is None:
        dataset = load_dataset(config.data, progress=False)
    check_same_data(run_dir, dataset)
    lr = float(config.optimizer.learning_rate)
    grid = config.probe.grid(lr)
    eta_small = small_eta_factor * lr
    written = {}
    for variant in variants:
        path = run_dir / variant / HESSIAN_FILE
        written[variant] = path
        if not plans[variant]:
            continue
        trainer = Trainer(config, variant, dataset)
        loss_fn = (
            trainer.loss_fn if mode == "train" else make_eval_loss_fn(trainer.model, trainer.loss)
        )
        template = trainer.initial_state()
        for b in block_names:
            try:
                select_paths(template.params, b)
            except ValueError as err:
                raise RunError(str(err)) from None
        estimators = {
            b: make_hessian_estimator(
                loss_fn,
                top_k=top_k,
                num_iters=num_iters,
                power_iters=power_iters,
                trace_probes=trace_probes,
                density_probes=density_probes,
                block=None if b == ALL_PARAMETERS else b,
            )
            for b in block_names
        }
        link = make_link_fn(loss_fn, trainer.probe_strategy)
        etas = jnp.asarray([eta_small, *grid], jnp.float32)
        done = {_record_key(r) for r in read_rows(path)}
        root = jax.random.fold_in(jax.random.key(config.seed), 0x4E55)  # apart from training's
        with (
            Checkpointer(run_dir / variant / "checkpoints", config.checkpoint) as checkpointer,
            RecordWriter(path) as writer,
        ):
            for step in plans[variant]:
                state = checkpointer.restore(step, template)
                batches = [
                    step_batch(state, trainer.train_source(step + i)) for i in range(num_batches)
                ]
                stacked = stack_batches(batches)
                key = jax.random.fold_in(root, step)
                t0 = time.perf_counter()
                g = jax.device_get(link(state.params, state.batch_stats, batches[0], etas))
                link_s = time.perf_counter() - t0
                common = _link_fields(g, eta_small, grid, lr)
                for b in block_names:
                    if (step, mode, b, num_batches) in done:
                        continue
                    t0 = time.perf_counter()
                    est = jax.device_get(
                        estimators[b](state.params, state.batch_stats, stacked, key)
                    )
                    row = {
                        "step": step,
                        "mode": mode,
                        "block": b,
                        "batches": num_batches,
                        **_estimate_fields(est, num_iters, trace_probes, power_iters),
                        **common,
                        "seconds": time.perf_counter() - t0 + link_s,
                    }
                    writer.write([row])
                    if on_record is not None:
                        on_record(variant, row)
    return written


def _link_fields(
    g: GradientLink, eta_small: float, grid: Sequence[float], lr: float
) -> dict[str, Any]:
    dist, norm = np.asarray(g.grad_dist, np.float64), np.asarray(g.step_norm, np.float64)
    grad_norm = float(g.grad_norm)
    return {
        "loss": float(g.loss),
        "grad_norm": grad_norm,
        "hg_ratio": float(g.hg_norm) / grad_norm if grad_norm > 0 else float("nan"),
        "eta_small": eta_small,
        "beta_small": float(effective_beta(dist[:1], norm[:1])),
        "etas": [float(e) for e in grid],
        "beta": float(effective_beta(dist[1:], norm[1:])),
        "lr": lr,
        "eos": 2.0 / lr,
    }


def _estimate_fields(
    est: HessianEstimate, num_iters: int, trace_probes: int, power_iters: int
) -> dict[str, Any]:
    top = np.asarray(est.top_eigenvalues, np.float64)
    row: dict[str, Any] = {
        "lambda_max": float(top[0]),
        "top_eigenvalues": top.tolist(),
        "ritz_values": np.asarray(est.ritz_values, np.float64).tolist(),
        "iterations": int(np.size(est.ritz_values)),
        "trace": float(est.trace),
        "trace_stderr": float(est.trace_stderr),
        "trace_probes": trace_probes,
    }
    if power_iters:
        row["power_iterations"] = power_iters
        row["power_eigenvalues"] = np.asarray(est.power_eigenvalues, np.float64).tolist()
        row["power_residuals"] = np.asarray(est.power_residuals, np.float64).tolist()
    if np.size(est.density.nodes):
        row["density_nodes"] = np.asarray(est.density.nodes, np.float64).tolist()
        row["density_weights"] = np.asarray(est.density.weights, np.float64).tolist()
    return row


# --- cost -------------------------------------------------------------------------------------


def measure_cost(
    config: Any, dataset: Any, *, variant: str = "batchnorm", num_iters: int = 20, repeats: int = 3
) -> dict[str, float]:
    """Times one top-eigenvalue estimate against one gradient evaluation, side by side.

    On ``config``'s network for ``variant`` at initialisation, on the batch of step 0: the
    candidates (a jitted gradient, one HVP, ``num_iters`` Lanczos iterations with top_k=1) run in
    alternating rounds and the medians are compared, so a shared machine slows them alike.
    Returns seconds (``gradient_s``, ``hvp_s``, ``top_eigenvalue_s``, compile times) and the
    ratios ``hvp_per_gradient`` and ``top_eigenvalue_per_gradient``.
    """
    from landscape.runs import Trainer
    from landscape.train import step_batch

    trainer = Trainer(config, variant, dataset)
    state = trainer.initial_state()
    batch = step_batch(state, trainer.train_source(0))
    stacked = stack_batches([batch])
    key = jax.random.key(0)
    loss_fn = trainer.loss_fn
    grad = jax.jit(jax.grad(lambda p, s, b: loss_fn(p, s, b)[0]))
    hvp = jax.jit(lambda p, s, b, v: hessian_vector_product(loss_fn, p, b, v, model_state=s))
    estimate = make_hessian_estimator(loss_fn, top_k=1, num_iters=num_iters)
    args = (state.params, state.batch_stats)
    candidates = {
        "gradient": lambda: grad(*args, batch),
        "hvp": lambda: hvp(*args, batch, state.params),
        "top_eigenvalue": lambda: estimate(*args, stacked, key).top_eigenvalues,
    }
    compile_s = {}
    for name, fn in candidates.items():
        t0 = time.perf_counter()
        jax.block_until_ready(fn())
        compile_s[name] = time.perf_counter() - t0
    times: dict[str, list[float]] = {name: [] for name in candidates}
    for _ in range(repeats):
        for name, fn in candidates.items():
            t0 = time.perf_counter()
            jax.block_until_ready(fn())
            times[name].append(time.perf_counter() - t0)
    med = {name: statistics.median(ts) for name, ts in times.items()}
    return {
        "variant": variant,
        "num_iters": num_iters,
        "gradient_s": med["gradient"],
        "hvp_s": med["hvp"],
        "top_eigenvalue_s": med["top_eigenvalue"],
        "hvp_per_gradient": med["hvp"] / med["gradient"],
        "top_eigenvalue_per_gradient": med["top_eigenvalue"] / med["gradient"],
        **{f"first_call_{name}_s": s for name, s in compile_s.items()},
    }
