"""Curvature estimates against closed forms and ``jax.hessian`` in float64 (the ``hessian``
command: integration/test_curvature_cli.py)."""

from __future__ import annotations

import re

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
import pytest
from jax.flatten_util import ravel_pytree

from landscape import curvature
from landscape.curvature import (
    hessian_operator,
    hutchinson,
    lanczos,
    make_eval_loss_fn,
    make_hessian_estimator,
    ritz_values,
    slq,
    spectral_density,
    stack_batches,
)
from landscape.train import make_loss_fn


@pytest.fixture
def x64():
    """Every numerical test here runs in float64; the previous setting is restored after."""
    with jax.enable_x64(True):
        yield


def dense_matrix(op) -> np.ndarray:
    """The operator applied to every unit vector: its full matrix."""
    return np.asarray(jax.vmap(op.matvec)(jnp.eye(op.dim, dtype=op.dtype))).T


def full_hessian(loss, params, batch) -> np.ndarray:
    flat, unravel = ravel_pytree(params)
    return np.asarray(jax.hessian(lambda x: loss(unravel(x), batch))(flat))


# --- tiny networks ----------------------------------------------------------------------------


def mlp_params(seed=0):
    rng = np.random.default_rng(seed)
    return {
        "Dense_0": {
            "kernel": jnp.asarray(rng.normal(size=(3, 4))),
            "bias": jnp.asarray(rng.normal(size=4)),
        },
        "Dense_1": {
            "kernel": jnp.asarray(rng.normal(size=(4, 2))),
            "bias": jnp.asarray(rng.normal(size=2)),
        },
    }


def mlp_loss(params, batch):
    x, y = batch
    h = jnp.tanh(x @ params["Dense_0"]["kernel"] + params["Dense_0"]["bias"])
    logits = h @ params["Dense_1"]["kernel"] + params["Dense_1"]["bias"]
    return -jnp.mean(jax.nn.log_softmax(logits)[jnp.arange(y.shape[0]), y])


def mlp_batch(seed=1, n=10):
    rng = np.random.default_rng(seed)
    return jnp.asarray(rng.normal(size=(n, 3))), jnp.asarray(rng.integers(0, 2, n))


class TinyBN(nn.Module):
    @nn.compact
    def __call__(self, x, train: bool = True):
        x = nn.Dense(4)(x.reshape(x.shape[0], -1))
        x = nn.BatchNorm(use_running_average=not train, momentum=0.9, epsilon=1e-5)(x)
        return nn.Dense(3)(jnp.tanh(x))


def bn_setup():
    model = TinyBN()
    rng = np.random.default_rng(2)
    images = jnp.asarray(rng.normal(size=(12, 2, 2, 1)))
    variables = model.init(jax.random.key(0), images, train=False)
    params = jax.tree.map(lambda p: p.astype(jnp.float64), variables["params"])
    # Running averages away from the batch's statistics, so eval mode differs from train mode.
    stats = jax.tree.map(lambda s: s.astype(jnp.float64) + 0.3, variables["batch_stats"])
    batch = {"image": images, "label": jnp.asarray(rng.integers(0, 3, 12))}
    return model, params, stats, batch


# --- Hessian-vector products ------------------------------------------------------------------


def test_hvp_is_exact_on_a_tiny_mlp(x64):
    params, batch = mlp_params(), mlp_batch()
    op = hessian_operator(mlp_loss, params, stack_batches([batch]))
    np.testing.assert_allclose(dense_matrix(op), full_hessian(mlp_loss, params, batch), atol=1e-12)
    # The probe's helper is the same HVP and stays importable from both modules.
    v = jax.tree.map(jnp.ones_like, params)
    hv = curvature.hessian_vector_product(mlp_loss, params, batch, v)
    expected = full_hessian(mlp_loss, params, batch) @ ravel_pytree(v)[0]
    np.testing.assert_allclose(ravel_pytree(hv)[0], expected, atol=1e-12)


@pytest.mark.parametrize("mode", ["train", "eval"])
def test_hvp_is_exact_on_a_batchnorm_network(mode, x64):
    model, params, stats, batch = bn_setup()
    loss_fn = make_loss_fn(model) if mode == "train" else make_eval_loss_fn(model)
    op = hessian_operator(loss_fn, params, stack_batches([batch]), model_state=stats)
    expected = full_hessian(lambda p, b: loss_fn(p, stats, b)[0], params, batch)
    np.testing.assert_allclose(dense_matrix(op), expected, atol=1e-11)
    # Train mode normalises with the batch's statistics, eval mode with the running ones: the
    # two landscapes differ, which is why every output names its mode.
    other = make_eval_loss_fn(model) if mode == "train" else make_loss_fn(model)
    assert not np.allclose(
        expected, full_hessian(lambda p, b: other(p, stats, b)[0], params, batch)
    )


def test_hessian_over_several_batches_is_their_mean(x64):
    params = mlp_params()
    batches = [mlp_batch(seed) for seed in (1, 2, 3)]
    op = hessian_operator(mlp_loss, params, stack_batches(batches))
    expected = np.mean([full_hessian(mlp_loss, params, b) for b in batches], axis=0)
    np.testing.assert_allclose(dense_matrix(op), expected, atol=1e-12)


@pytest.mark.parametrize("pattern", ["Dense_1/", "kernel$"])
def test_block_restriction_is_the_sub_block_of_the_hessian(pattern, x64):
    params, batch = mlp_params(), mlp_batch()
    full = full_hessian(mlp_loss, params, batch)
    # Indices of each leaf in ravel_pytree's flat vector.
    sizes = [leaf.size for leaf in jax.tree.leaves(params)]
    offsets = np.cumsum([0, *sizes])
    paths = curvature.parameter_paths(params)
    idx = np.concatenate(
        [
            np.arange(offsets[i], offsets[i + 1])
            for i, path in enumerate(paths)
            if re.search(pattern, path)
        ]
    )
    op = hessian_operator(mlp_loss, params, stack_batches([batch]), block=pattern)
    assert op.dim == idx.size < full.shape[0]
    np.testing.assert_allclose(dense_matrix(op), full[np.ix_(idx, idx)], atol=1e-12)


def test_a_pattern_matching_nothing_names_the_paths(x64):
    with pytest.raises(ValueError, match="Dense_0/kernel"):
        curvature.select_paths(mlp_params(), "Conv")


# --- eigenvalues ------------------------------------------------------------------------------


def known_matrix(eigenvalues, seed=0) -> np.ndarray:
    q, _ = np.linalg.qr(np.random.default_rng(seed).normal(size=(len(eigenvalues),) * 2))
    return q @ np.diag(eigenvalues) @ q.T


def quadratic_loss(a):
    return lambda params, batch: 0.5 * params["x"] @ a @ params["x"]


def test_lanczos_and_power_iteration_recover_a_known_spectrum(x64):
    spectrum = np.concatenate([[100.0, 50.0, 25.0], np.linspace(-1.0, 1.0, 37)])
    a = jnp.asarray(known_matrix(spectrum))
    params = {"x": jnp.asarray(np.random.default_rng(1).normal(size=40))}
    estimate = make_hessian_estimator(quadratic_loss(a), top_k=3, num_iters=20, power_iters=60)
    est = estimate(params, None, stack_batches([jnp.zeros(1)]), jax.random.key(0))
    np.testing.assert_allclose(est.top_eigenvalues, [100.0, 50.0, 25.0], rtol=1e-10)
    np.testing.assert_allclose(est.power_eigenvalues, [100.0, 50.0, 25.0], rtol=1e-8)
    assert np.all(np.asarray(est.power_residuals) < 1e-6)
    # With as many iterations as dimensions, every Ritz value is an eigenvalue (with negatives).
    tri = lanczos(lambda v: a @ v, jnp.ones(40), 40, jax.random.key(1))
    np.testing.assert_allclose(ritz_values(tri), np.sort(spectrum)[::-1], atol=1e-9)


@pytest.mark.parametrize("refine", ["when_needed", "always"])
def test_lanczos_second_pass_changes_nothing_but_rounding(refine, monkeypatch, x64):
    # The second Gram-Schmidt pass runs only when the first cancelled much of the vector;
    # forcing it on every iteration must give the same tridiagonal matrix to rounding.
    if refine == "always":
        monkeypatch.setattr(curvature, "_REFINE_BELOW", 2.0)
    spectrum = np.concatenate([[100.0, 50.0, 25.0], np.linspace(-1.0, 1.0, 37)])
    a = jnp.asarray(known_matrix(spectrum))
    tri = lanczos(lambda v: a @ v, jnp.ones(40), 20, jax.random.key(1))
    np.testing.assert_allclose(ritz_values(tri)[:3], [100.0, 50.0, 25.0], rtol=1e-10)
    reference = known_lanczos(np.asarray(a), np.ones(40), 20)
    np.testing.assert_allclose(tri.alphas, reference[0], atol=1e-9)
    np.testing.assert_allclose(tri.betas, reference[1], atol=1e-9)


def known_lanczos(a: np.ndarray, start: np.ndarray, m: int) -> tuple[np.ndarray, np.ndarray]:
    """Lanczos in numpy with two full Gram-Schmidt passes every iteration (the textbook form)."""
    basis = [start / np.linalg.norm(start)]
    alphas, betas = [], []
    for _ in range(m):
        w = a @ basis[-1]
        alphas.append(basis[-1] @ w)
        q = np.array(basis)
        for _ in range(2):
            w = w - q.T @ (q @ w)
        betas.append(np.linalg.norm(w))
        basis.append(w / betas[-1])
    return np.array(alphas), np.array(betas[:-1])


def test_lanczos_in_float32_finds_no_ghost_copies(monkeypatch):
    # Without reorthogonalisation the converged top eigenvalue reappears among the Ritz values
    # after a few dozen float32 iterations; with it the second Ritz value is the second
    # eigenvalue. The check fails when the Gram-Schmidt pass is switched off.
    spectrum = np.concatenate([[100.0, 30.0], np.linspace(-1.0, 1.0, 298)])
    a = jnp.asarray(known_matrix(spectrum, seed=6), jnp.float32)
    start = jnp.asarray(np.random.default_rng(7).normal(size=300), jnp.float32)
    ritz = np.asarray(ritz_values(lanczos(lambda v: a @ v, start, 60, jax.random.key(0))))
    np.testing.assert_allclose(ritz[:2], [100.0, 30.0], rtol=1e-5)
    assert np.all(ritz[2:] < 1.0 + 1e-4)


def test_project_out_reads_only_the_blocks_that_hold_filled_rows(x64):
    # The rows after the first `rows` are an earlier run's vectors (masked out) in the last
    # block read, and NaN in the blocks after it, which must never be read.
    block = curvature._BLOCK_ROWS
    rng = np.random.default_rng(8)
    q, _ = np.linalg.qr(rng.normal(size=(50, block + 3)))
    basis = np.full((3 * block, 50), np.nan)
    basis[: 2 * block] = rng.normal(size=(2 * block, 50))
    basis[: block + 3] = q.T
    w = rng.normal(size=50)
    out = curvature._project_out(jnp.asarray(w), jnp.asarray(basis), jnp.asarray(block + 3))
    np.testing.assert_allclose(out, w - q @ (q.T @ w), atol=1e-12)


def test_lanczos_survives_breakdown_on_a_repeated_spectrum(x64):
    # Three distinct eigenvalues: the Krylov space is exhausted after 3 steps and Lanczos must
    # restart instead of dividing by zero; the Ritz values stay eigenvalues.
    spectrum = np.array([5.0, 5.0, 5.0, 2.0, 2.0, -1.0])
    a = jnp.asarray(known_matrix(spectrum, seed=3))
    tri = lanczos(lambda v: a @ v, jnp.ones(6), 6, jax.random.key(2))
    np.testing.assert_allclose(ritz_values(tri), np.sort(spectrum)[::-1], atol=1e-9)


def test_top_eigenvalues_of_a_tiny_network_match_eigvalsh(x64):
    params, batch = mlp_params(), mlp_batch()
    exact = np.linalg.eigvalsh(full_hessian(mlp_loss, params, batch))[::-1]
    estimate = make_hessian_estimator(mlp_loss, top_k=2, num_iters=22, power_iters=300)
    est = estimate(params, None, stack_batches([batch]), jax.random.key(3))
    np.testing.assert_allclose(est.top_eigenvalues, exact[:2], rtol=1e-8)
    # Power iteration converges to the eigenvalue of largest magnitude: here a negative one
    # (-0.75 against the top 0.67), which is why Lanczos gives the sharpness.
    largest_magnitude = exact[np.argmax(np.abs(exact))]
    assert largest_magnitude < 0
    np.testing.assert_allclose(est.power_eigenvalues[0], largest_magnitude, rtol=1e-6)


def test_top_eigenvalue_of_a_batchnorm_network_in_train_mode(x64):
    model, params, stats, batch = bn_setup()
    loss_fn = make_loss_fn(model)
    exact = np.linalg.eigvalsh(full_hessian(lambda p, b: loss_fn(p, stats, b)[0], params, batch))
    estimate = make_hessian_estimator(loss_fn, top_k=1, num_iters=len(exact))
    est = estimate(params, stats, stack_batches([batch]), jax.random.key(4))
    np.testing.assert_allclose(est.top_eigenvalues[0], exact[-1], rtol=1e-8)


def test_the_estimators_trace_and_density_are_hutchinsons_and_slqs(x64):
    # The estimator runs the trace's and the density's probes in its Lanczos loop; they must
    # be the standalone functions' numbers, from the same keys.
    spectrum = np.concatenate([[30.0, 12.0], np.linspace(-2.0, 5.0, 28)])
    a = jnp.asarray(known_matrix(spectrum, seed=5))
    params = {"x": jnp.zeros(30)}
    key = jax.random.key(11)
    estimate = make_hessian_estimator(
        quadratic_loss(a), top_k=2, num_iters=12, trace_probes=7, density_probes=3
    )
    est = estimate(params, None, stack_batches([jnp.zeros(1)]), key)
    _, k_restart, _, k_trace, k_density = jax.random.split(key, 5)
    matvec = lambda v: a @ v  # noqa: E731
    trace = hutchinson(matvec, k_trace, 30, 7, jnp.float64)
    np.testing.assert_allclose(est.trace, trace.trace, rtol=1e-12)
    np.testing.assert_allclose(est.trace_stderr, trace.stderr, rtol=1e-10)
    density = slq(matvec, k_density, 30, 3, 12, jnp.float64)
    np.testing.assert_allclose(est.density.nodes, density.nodes, atol=1e-10)
    np.testing.assert_allclose(est.density.weights, density.weights, atol=1e-10)
    start = jax.random.normal(jax.random.split(key, 5)[0], (30,), jnp.float64)
    top = ritz_values(lanczos(matvec, start, 12, k_restart))
    np.testing.assert_allclose(est.ritz_values, top, atol=1e-10)
    np.testing.assert_allclose(est.top_eigenvalues, [30.0, 12.0], rtol=1e-8)


def test_the_trace_and_density_add_no_copy_of_the_hessian_to_the_program(x64):
    # The loss is traced once per place the program applies H; the trace's and the density's
    # probes share the top eigenvalues' loop, so they add none (power iteration, a cross-check
    # with a loop of its own, adds one).
    params, batch = mlp_params(), stack_batches([mlp_batch()])
    traced = []

    def counting_loss(params, batch):
        traced.append(1)
        return mlp_loss(params, batch)

    def places(**settings):
        traced.clear()
        make_hessian_estimator(counting_loss, num_iters=4, **settings).lower(
            params, None, batch, jax.random.key(0)
        )
        return len(traced)

    alone = places()
    assert places(trace_probes=5, density_probes=2) == alone
    assert places(power_iters=2) > alone


# --- trace ------------------------------------------------------------------------------------


def test_hutchinson_is_within_its_stated_error_and_the_error_shrinks(x64):
    rng = np.random.default_rng(5)
    m = rng.normal(size=(50, 50))
    a = jnp.asarray(m @ m.T / 50 + np.diag(rng.uniform(0, 3, 50)))
    exact = float(np.trace(a))
    small = hutchinson(lambda v: a @ v, jax.random.key(0), 50, 50, jnp.float64)
    large = hutchinson(lambda v: a @ v, jax.random.key(1), 50, 800, jnp.float64)
    for est in (small, large):
        assert abs(float(est.trace) - exact) < 4 * float(est.stderr)
    # The error shrinks as 1/sqrt(probes), and the stated error matches the closed form
    # Var[z^T A z] = 2 (||A||_F^2 - sum_i A_ii^2) for Rademacher z.
    np.testing.assert_allclose(float(small.stderr) / float(large.stderr), 4.0, rtol=0.25)
    theory = np.sqrt(2 * (np.sum(np.asarray(a) ** 2) - np.sum(np.diag(a) ** 2)) / 800)
    np.testing.assert_allclose(float(large.stderr), theory, rtol=0.15)


def test_hutchinson_is_exact_for_a_diagonal_operator(x64):
    d = jnp.arange(1.0, 11.0)
    est = hutchinson(lambda v: d * v, jax.random.key(0), 10, 5, jnp.float64)
    np.testing.assert_allclose(est.trace, 55.0, rtol=1e-12)
    assert float(est.stderr) == 0.0


# --- spectral density -------------------------------------------------------------------------


def test_slq_density_integrates_to_one_with_mass_at_the_eigenvalues(x64):
    spectrum = np.array([-2.0, 0.5, 1.0, 3.0, 4.0, 9.0, 12.0, 20.0])
    a = jnp.asarray(known_matrix(spectrum, seed=4))
    quad = slq(lambda v: a @ v, jax.random.key(0), 8, 400, 8, jnp.float64)
    nodes, weights = np.asarray(quad.nodes), np.asarray(quad.weights)
    np.testing.assert_allclose(weights.sum(axis=1), 1.0, atol=1e-12)
    np.testing.assert_allclose(np.sort(nodes, axis=1), np.tile(spectrum, (400, 1)), atol=1e-8)
    # Each eigenvalue carries 1/n of the mass on average over probes.
    per_eigenvalue = np.array([weights[np.abs(nodes - lam) < 1e-6].sum() / 400 for lam in spectrum])
    np.testing.assert_allclose(per_eigenvalue, 1 / 8, atol=0.02)
    sigma = 0.05  # windows of 5 sigma around eigenvalues 0.5 apart do not overlap
    grid, density = spectral_density(nodes, weights, sigma=sigma, num_points=4000)
    np.testing.assert_allclose(np.trapezoid(density, grid), 1.0, atol=1e-6)
    for lam, mass in zip(spectrum, per_eigenvalue, strict=True):
        window = np.abs(grid - lam) < 5 * sigma
        np.testing.assert_allclose(np.trapezoid(density[window], grid[window]), mass, atol=2e-3)


# --- the link to the probe --------------------------------------------------------------------


def test_probe_at_a_small_step_tends_to_the_hessian_along_the_gradient(x64):
    params, batch = mlp_params(), mlp_batch()
    link = curvature.make_link_fn(mlp_loss, "map")(params, None, batch, jnp.asarray([1e-6, 0.1]))
    flat, unravel = ravel_pytree(params)
    g = jax.grad(lambda x: mlp_loss(unravel(x), batch))(flat)
    hg = full_hessian(mlp_loss, params, batch) @ g
    np.testing.assert_allclose(
        link.hg_norm / link.grad_norm, np.linalg.norm(hg) / np.linalg.norm(g)
    )
    beta = np.asarray(link.grad_dist) / np.asarray(link.step_norm)
    np.testing.assert_allclose(beta[0], link.hg_norm / link.grad_norm, rtol=1e-4)
    assert abs(beta[1] - beta[0]) > 1e-3 * beta[0]  # a large step sees more than H g
