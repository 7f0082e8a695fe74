"""The probe against closed forms (SPEC, "Useful identities for tests") and its invariants."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from landscape.probe import (
    ProbeResult,
    band,
    band_width,
    effective_beta,
    gradient_curvature,
    probe,
    summarize,
)


@pytest.fixture
def quadratic():
    """L(x) = 1/2 x^T A x with A symmetric positive definite, in float64."""
    with jax.enable_x64(True):
        rng = np.random.default_rng(0)
        m = rng.normal(size=(6, 6))
        a = m @ m.T + 0.5 * np.eye(6)
        x = rng.normal(size=6)
        yield jnp.asarray(a), jnp.asarray(x)


def quad_loss(a):
    return lambda params, batch: 0.5 * params["x"] @ a @ params["x"]


@pytest.mark.parametrize("strategy", ["unroll", "vmap", "map"])
def test_probe_matches_closed_form_on_quadratic(quadratic, strategy):
    a, x = quadratic
    with jax.enable_x64(True):
        etas = jnp.asarray([0.01, 0.05, 0.1, 0.2])
        result = probe(quad_loss(a), {"x": x}, None, etas, strategy=strategy)
        g = a @ x
        for i, eta in enumerate(np.asarray(etas)):
            moved = x - eta * g
            np.testing.assert_allclose(result.loss[i], 0.5 * moved @ a @ moved, rtol=1e-10)
            # grad(x - eta g) - g = -eta A g
            np.testing.assert_allclose(
                result.grad_dist[i], eta * jnp.linalg.norm(a @ g), rtol=1e-10
            )
            np.testing.assert_allclose(result.step_norm[i], eta * jnp.linalg.norm(g), rtol=1e-10)
        np.testing.assert_allclose(result.loss0, 0.5 * x @ a @ x, rtol=1e-10)
        np.testing.assert_allclose(result.grad_norm, jnp.linalg.norm(g), rtol=1e-10)
        beta = effective_beta(np.asarray(result.grad_dist), np.asarray(result.step_norm))
        np.testing.assert_allclose(beta, jnp.linalg.norm(a @ g) / jnp.linalg.norm(g), rtol=1e-10)


def test_beta_tends_to_hessian_gradient_ratio_as_eta_shrinks():
    """On a non-quadratic loss, beta(eta) -> ||H g|| / ||g|| as eta -> 0."""
    with jax.enable_x64(True):
        rng = np.random.default_rng(1)
        w = jnp.asarray(rng.normal(size=(5, 3)))
        data = jnp.asarray(rng.normal(size=(20, 5)))

        def loss(params, batch):
            return jnp.mean(jnp.log1p(jnp.exp(batch @ params["w"])) ** 2)

        limit = gradient_curvature(loss, {"w": w}, data)
        errors = []
        for eta in (1e-2, 1e-3, 1e-4):
            r = probe(loss, {"w": w}, data, jnp.asarray([eta]))
            errors.append(abs(float(effective_beta(r.grad_dist, r.step_norm)) - float(limit)))
        assert errors[2] < errors[1] < errors[0]
        assert errors[2] / float(limit) < 1e-3


def test_stateful_loss_state_is_discarded_and_gradient_reused():
    calls = []

    def loss(params, state, batch):
        calls.append(1)
        return jnp.sum(params["x"] ** 2) * state["scale"], {"scale": state["scale"] + 1}

    params, state = {"x": jnp.ones(3)}, {"scale": jnp.asarray(2.0)}
    grad = {"x": 4.0 * jnp.ones(3)}
    r = probe(
        loss, params, None, jnp.asarray([0.1]), model_state=state, grad=grad, loss0=jnp.asarray(6.0)
    )
    # x - 0.1 * 4 = 0.6 per coordinate; L = 2 * 3 * 0.36
    np.testing.assert_allclose(r.loss, [2.16], rtol=1e-6)
    assert float(state["scale"]) == 2.0


def test_strategies_agree_and_new_grid_does_not_recompile():
    traces = []
    rng = np.random.default_rng(2)
    w = jnp.asarray(rng.normal(size=(4, 4)), jnp.float32)

    def loss(params, batch):
        traces.append(1)
        return jnp.mean(jnp.tanh(batch @ params) ** 2)

    batch = jnp.asarray(rng.normal(size=(8, 4)), jnp.float32)
    results = {
        s: jax.jit(lambda p, b, e, s=s: probe(loss, p, b, e, strategy=s))(
            w, batch, jnp.linspace(0.1, 1.0, 5)
        )
        for s in ("unroll", "vmap", "map")
    }
    for s in ("vmap", "map"):
        for field in ProbeResult._fields:
            np.testing.assert_allclose(
                getattr(results[s], field), getattr(results["unroll"], field), rtol=1e-4, atol=1e-7
            )
    compiled = jax.jit(lambda p, b, e: probe(loss, p, b, e))
    compiled(w, batch, jnp.linspace(0.1, 1.0, 5))
    before = len(traces)
    compiled(w, batch, jnp.linspace(0.2, 3.0, 5))
    assert len(traces) == before, "a new grid of the same length must not retrace"


def test_divergence_is_data_not_an_exception():
    def loss(params, batch):
        return jnp.sum(jnp.exp(params**2))  # overflows float32 far from the origin

    r = probe(loss, jnp.ones(2, jnp.float32), None, jnp.asarray([1e-6, 1e3], jnp.float32))
    assert np.isfinite(np.asarray(r.loss)[0])
    assert not np.isfinite(np.asarray(r.loss)[1])
    summary = summarize(r)
    assert summary["diverged"] >= 1
    assert summary["loss_max"] == np.inf or summary["grad_dist_max"] == np.inf


def test_reductions_treat_nan_as_worst_case():
    values = np.array([[1.0, 3.0, 2.0], [1.0, np.nan, 2.0]])
    lo, hi = band(values)
    np.testing.assert_array_equal(lo, [1.0, 1.0])
    np.testing.assert_array_equal(hi, [3.0, np.inf])
    np.testing.assert_array_equal(band_width(values), [2.0, np.inf])
    beta = effective_beta(np.array([[2.0, 6.0]]), np.array([[1.0, 2.0]]))
    np.testing.assert_array_equal(beta, [3.0])
