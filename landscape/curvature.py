"""Curvature of the training loss: Hessian-vector products, top eigenvalues, trace, spectrum.

Everything here acts on the Hessian H of the loss the optimiser and the probe see
(``landscape.train.make_loss_fn``: BatchNorm in training mode on the step's batch), or, when
asked explicitly, of the inference-mode loss (``make_eval_loss_fn``: BatchNorm's running
averages). H is never formed: it is applied to vectors by forward-over-reverse autodiff
(``jax.jvp`` of ``jax.grad``), on the parameters flattened by ``jax.flatten_util.ravel_pytree``.

* ``lanczos``: the top eigenvalues, by Lanczos with full reorthogonalisation, a fixed number of
  iterations in one ``lax.fori_loop``; ``power_iteration`` (subspace iteration) cross-checks it.
  ``make_hessian_estimator`` runs the top eigenvalues', the density's and the trace's probes as
  Lanczos runs in one loop, so its program holds one Hessian-vector product, not one per
  quantity.
* ``hutchinson``: the trace, tr H = E[z^T H z] over Rademacher z, with its standard error.
* ``slq`` / ``spectral_density``: the spectral density by stochastic Lanczos quadrature
  (Ubaru, Chen & Saad 2017; Ghorbani, Krishnan & Xiao 2019), Gaussian-broadened on a grid.
* ``hessian_operator``: H restricted to a block of parameters selected by a regular expression
  on their '/'-joined Flax path (``"Conv3x3_3/"``, ``"kernel$"``), over one batch or averaged over
  several (the mean of the batches' HVPs is the HVP of the mean loss).
* ``sharpness_over_training``: the top eigenvalue, trace and optionally the density at the saved
  checkpoints of a run, each on its own step's batch, next to the paper's effective
  beta-smoothness at a small step size and to ||H g|| / ||g||, its limit as eta -> 0
  (docs/definitions.md#closed-form-identities). Records go to ``RUN_DIR/<variant>/hessian.jsonl``.

What these estimates cost, in gradient evaluations (``landscape.analyses.hessian.measure_cost``
times them), is in docs/curvature.md and docs/performance.md.
"""

from __future__ import annotations

import re
from collections.abc import Callable, Sequence
from typing import Any, NamedTuple

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
import optax
from jax.flatten_util import ravel_pytree

from landscape.network import Network, check_network
from landscape.probe import (
    _scalar_loss,
    default_strategy,
    gradient_curvature,  # noqa: F401  (re-exported: one home for the HVP helpers)
    hessian_vector_product,
    probe,
)
from landscape.train import get_loss, reduce_loss

MODES = ("train", "eval")
ALL_PARAMETERS = "all"


# --- the loss ---------------------------------------------------------------------------------


def make_eval_loss_fn(model: Network | nn.Module, loss: str = "cross_entropy") -> Callable:
    """Returns the inference-mode loss ``loss_fn(params, batch_stats, batch)``.

    Same signature and return value as ``landscape.train.make_loss_fn`` (``(mean cross-entropy
    in nats, (batch_stats, logits))``), but the network runs with ``train=False``: BatchNorm
    normalises with its running averages, which are returned unchanged. Use it only when the
    inference-mode landscape is wanted; the optimiser sees the training-mode loss. ``loss``
    names the model's training loss (``landscape.train.LOSSES``).
    """
    network = check_network(model)
    spec = get_loss(loss)

    def loss_fn(params, batch_stats, batch):
        logits, _ = network.apply(params, batch_stats, batch["image"], train=False)
        return reduce_loss(spec, logits, batch["label"]), (batch_stats, logits)

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


# Rows of the Lanczos basis per block of a Gram-Schmidt pass. A pass reads only the blocks that
# hold filled rows, so iteration i reads about i rows of the basis instead of all of them: with
# static shapes a pass cannot slice exactly the filled rows, but it can loop over whole blocks.
_BLOCK_ROWS = 8
# The Daniel-Gragg-Kaufman-Stewart test: a second Gram-Schmidt pass only when the first removed
# more than 1 - 1/sqrt(2) of the vector's norm ("twice is enough", Parlett, The Symmetric
# Eigenvalue Problem, section 6.9); otherwise one pass already leaves it orthogonal to rounding.
_REFINE_BELOW = 2**-0.5


def _project_out(w: jax.Array, basis: jax.Array, rows: jax.Array) -> jax.Array:
    """Returns ``w`` minus its projections on the first ``rows`` rows of ``basis``.

    The first ``rows`` rows must be orthonormal; the rows after them are never used: block
    modified Gram-Schmidt over only the blocks of ``_BLOCK_ROWS`` rows that hold the first
    ``rows`` (``basis`` has a whole number of blocks), in a loop whose length is traced, with the
    later rows of the last block masked out.
    """
    block = min(_BLOCK_ROWS, basis.shape[0])
    index = jnp.arange(block)

    def one(j, w):
        rows_j = jax.lax.dynamic_slice_in_dim(basis, j * block, block)
        coefficients = jnp.where(j * block + index < rows, rows_j @ w, 0)
        # coefficients @ rows, not rows.T @ coefficients: no transposed copy of the block.
        return w - coefficients @ rows_j

    return jax.lax.fori_loop(0, (rows + block - 1) // block, one, w)


def _lanczos_runs(
    matvec: Callable[[jax.Array], jax.Array],
    start_of: Callable[[jax.Array], jax.Array],
    lengths: Sequence[int],
    restart_keys: jax.Array,
    dim: int,
    dtype: Any,
) -> tuple[jax.Array, jax.Array]:
    """Runs Lanczos once per entry of ``lengths``, one run after the other, in one loop.

    Run r starts from ``start_of(r)`` (r traced; the vector need not be normalised), takes
    ``lengths[r]`` iterations and restarts on breakdown from vectors drawn from
    ``restart_keys[r]``. One loop for all runs puts one copy of ``matvec`` in the program, so
    the top-eigenvalue run, the spectral density's and the trace's probes compile together for
    the price of one. Returns ``(alphas, betas)``, both (runs, max(lengths)): row r holds run
    r's diagonal and, in its first ``lengths[r] - 1`` entries, its off-diagonal; the rest is 0.
    """
    lengths = [int(n) for n in lengths]
    longest = max(lengths)
    block = min(_BLOCK_ROWS, longest)
    rows = -(-longest // block) * block  # whole blocks
    run_of = jnp.asarray(np.repeat(np.arange(len(lengths)), lengths), jnp.int32)
    step_of = jnp.asarray(np.concatenate([np.arange(n) for n in lengths]), jnp.int32)
    tiny = jnp.finfo(dtype).tiny
    tol = 100 * jnp.finfo(dtype).eps
    zero = jnp.zeros((), dtype)

    def body(i, carry):
        basis, v, v_prev, beta_prev, alphas, betas = carry
        run, step = run_of[i], step_of[i]
        fresh = step == 0

        def begin(_):
            start = start_of(run).astype(dtype)
            return start / jnp.linalg.norm(start)

        v = jax.lax.cond(fresh, begin, lambda _: v, None)
        v_prev, beta_prev = jnp.where(fresh, 0, v_prev), jnp.where(fresh, zero, beta_prev)
        # Row `step` holds v: a run's rows before it are its earlier vectors; the rows after it
        # may still hold an earlier run's and are masked out by _project_out.
        basis = jax.lax.dynamic_update_index_in_dim(basis, v, step, 0)
        w = matvec(v)
        alpha = jnp.vdot(v, w)
        scale = jnp.linalg.norm(w)
        w = w - alpha * v - beta_prev * v_prev
        before = jnp.linalg.norm(w)
        # Rounding in the recurrence leaves w slightly along earlier vectors; left there, the
        # error grows as eigenvalues converge and copies of them appear among the Ritz values.
        w = _project_out(w, basis, step + 1)
        beta = jnp.linalg.norm(w)

        def refine(w):
            # Rare: the pass cancelled much of w, so orthogonalise once more; if w vanished (an
            # invariant subspace), restart from a random vector, orthogonalised twice. Off the
            # common path, so only this branch pays for it.
            broke = beta <= tol * scale
            r = jax.random.normal(jax.random.fold_in(restart_keys[run], step), (dim,), dtype)
            x = jax.lax.fori_loop(
                0,
                jnp.where(broke, 2, 1),
                lambda _, x: _project_out(x, basis, step + 1),
                jnp.where(broke, r, w),
            )
            norm = jnp.linalg.norm(x)
            return x / jnp.maximum(norm, tiny), jnp.where(broke, zero, norm)

        common = (beta > _REFINE_BELOW * before) & (beta > tol * scale)
        nxt, beta = jax.lax.cond(common, lambda w: (w / beta, beta), refine, w)
        return basis, nxt, v, beta, alphas.at[run, step].set(alpha), betas.at[run, step].set(beta)

    out = jnp.zeros((len(lengths), longest), dtype)
    vector = jnp.zeros(dim, dtype)
    init = (jnp.zeros((rows, dim), dtype), vector, vector, zero, out, out)
    *_, alphas, betas = jax.lax.fori_loop(0, sum(lengths), body, init)
    # A run's last beta is not part of its T: masked, so each off-diagonal ends with zeros.
    ends = jnp.asarray(lengths)[:, None] - 1
    return alphas, jnp.where(jnp.arange(longest)[None, :] < ends, betas, zero)


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
    compiled once. Each iteration applies ``matvec`` once, takes the three-term recurrence, and
    then orthogonalises the new vector against every earlier one (Gram-Schmidt, once, or twice
    when the first pass cancelled much of it; docs/curvature.md#how-the-top-eigenvalues-are-found).
    On breakdown (an invariant subspace found: the new vector vanishes) it continues from a
    random vector orthogonal to the basis, drawn from ``key``; the zero off-diagonal then
    decouples T, so every Ritz value stays an eigenvalue of H restricted to the Krylov spaces.
    """
    dim = start.shape[0]
    if not 1 <= num_iters <= dim:
        raise ValueError(f"num_iters must be in [1, {dim}] (the dimension), got {num_iters}")
    key = jax.random.key(0) if key is None else key
    alphas, betas = _lanczos_runs(matvec, lambda _: start, [num_iters], key[None], dim, start.dtype)
    return Tridiagonal(alphas[0], betas[0, : num_iters - 1])


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

    return _trace_estimate(jax.lax.map(sample, keys))


def _trace_estimate(samples: jax.Array) -> TraceEstimate:
    num_probes = samples.shape[0]
    spread = jnp.std(samples, ddof=1) if num_probes > 1 else jnp.asarray(jnp.nan, samples.dtype)
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
    if not 1 <= num_iters <= dim:
        raise ValueError(f"num_iters must be in [1, {dim}] (the dimension), got {num_iters}")
    start_keys, restart_keys = _density_keys(key, num_probes)
    alphas, betas = _lanczos_runs(
        matvec,
        lambda r: jax.random.normal(start_keys[r], (dim,), dtype),
        [num_iters] * num_probes,
        restart_keys,
        dim,
        dtype,
    )
    return _quadrature(alphas, betas)


def _density_keys(key: jax.Array, num_probes: int) -> tuple[jax.Array, jax.Array]:
    """Returns the start and restart keys of each SLQ probe, both (probes,)."""
    pairs = jax.vmap(jax.random.split)(jax.random.split(key, num_probes))
    return pairs[:, 0], pairs[:, 1]


def _quadrature(alphas: jax.Array, betas: jax.Array) -> Quadrature:
    """Returns the Gauss quadrature of each run's T (rows of ``alphas``/``betas`` as returned by
    ``_lanczos_runs``, all runs of the same length)."""
    m = alphas.shape[1]
    eye = jnp.eye(m, dtype=alphas.dtype)
    upper = jnp.eye(m, k=1, dtype=alphas.dtype)
    t = alphas[:, :, None] * eye + betas[:, :, None] * upper + betas[:, None, :] * upper.T
    values, vectors = jnp.linalg.eigh(t)
    return Quadrature(values, vectors[:, 0, :] ** 2)


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
    ``power_iters * top_k`` + ``trace_probes`` + ``density_probes * num_iters``. The top
    eigenvalues, the trace and the density share one loop, so one copy of the Hessian-vector
    product is compiled for all three (power iteration, a cross-check, adds one).
    """
    if top_k < 1 or num_iters < 1:
        raise ValueError("top_k and num_iters must be positive")

    @jax.jit
    def estimate(params, model_state, batches, key) -> HessianEstimate:
        op = hessian_operator(loss_fn, params, batches, model_state=model_state, block=block)
        iters = min(num_iters, op.dim)
        k_lanczos, k_restart, k_power, k_trace, k_density = jax.random.split(key, 5)
        # One loop of Lanczos runs: the top eigenvalues', the density's probes, then the
        # trace's probes as runs of one iteration (z^T H z = |z|^2 alpha_0 of the run from z).
        density_starts, density_restarts = _density_keys(k_density, density_probes)
        trace_keys = jax.random.split(k_trace, trace_probes)
        start_keys = jnp.concatenate([k_lanczos[None], density_starts, trace_keys])
        restart_keys = jnp.concatenate([k_restart[None], density_restarts, trace_keys])
        first_trace = 1 + density_probes

        def start_of(r):
            gaussian = lambda k: jax.random.normal(k, (op.dim,), op.dtype)  # noqa: E731
            if not trace_probes:
                return gaussian(start_keys[r])
            rademacher = lambda k: jax.random.rademacher(k, (op.dim,), op.dtype)  # noqa: E731
            return jax.lax.cond(r >= first_trace, rademacher, gaussian, start_keys[r])

        lengths = [iters] * first_trace + [1] * trace_probes
        alphas, betas = _lanczos_runs(op.matvec, start_of, lengths, restart_keys, op.dim, op.dtype)
        ritz = ritz_values(Tridiagonal(alphas[0], betas[0, : iters - 1]))
        k = min(top_k, iters)
        if power_iters:
            power = power_iteration(
                op.matvec, jax.random.normal(k_power, (k, op.dim), op.dtype), power_iters
            )
        else:
            power = PowerResult(jnp.zeros(0, op.dtype), jnp.zeros(0, op.dtype))
        if trace_probes:
            # A Rademacher vector's squared norm is the dimension, exactly.
            trace = _trace_estimate(alphas[first_trace:, 0] * op.dim)
        else:
            nan = jnp.asarray(jnp.nan, op.dtype)
            trace = TraceEstimate(nan, nan, jnp.zeros(0, op.dtype))
        if density_probes:
            density = _quadrature(alphas[1:first_trace, :iters], betas[1:first_trace, :iters])
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
    ||H g|| / ||g|| (docs/definitions.md#closed-form-identities). ``etas`` is traced.
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


# --- cost -------------------------------------------------------------------------------------
