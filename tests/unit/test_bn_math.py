"""BatchNorm by hand: the closed-form backward pass against autodiff, the forward pass against
Flax, and Ioffe & Szegedy's bias example (Sec. 2)."""

from __future__ import annotations

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
import pytest

from landscape.bn_math import (
    BIAS_MODES,
    BatchNormGrads,
    batchnorm_backward,
    batchnorm_forward,
    bias_example,
    bias_example_figure,
    bias_example_modes,
)

SHAPES = [(16, 5), (4, 3, 5, 6)]  # dense (N, C) and conv (N, H, W, C)
TIGHT = {"rtol": 1e-10, "atol": 1e-10}


def _random_problem(shape, seed=0, dtype=jnp.float64):
    kx, kg, kb, kd = jax.random.split(jax.random.key(seed), 4)
    channels = shape[-1]
    # An offset and a scale away from (0, 1), so normalising does something.
    x = 3.0 * jax.random.normal(kx, shape, dtype) + 1.5
    gamma = jax.random.normal(kg, (channels,), dtype) + 1.0
    beta = jax.random.normal(kb, (channels,), dtype)
    dy = jax.random.normal(kd, shape, dtype)
    return x, gamma, beta, dy


@pytest.mark.parametrize("shape", SHAPES)
def test_backward_matches_vjp_in_float64(shape):
    with jax.enable_x64(True):
        x, gamma, beta, dy = _random_problem(shape)
        y, vjp = jax.vjp(lambda *a: batchnorm_forward(*a)[0], x, gamma, beta)
        assert y.dtype == jnp.float64 and y.shape == shape
        dx_ad, dgamma_ad, dbeta_ad = vjp(dy)
        _, cache = batchnorm_forward(x, gamma, beta)
        grads = batchnorm_backward(dy, cache)
        assert isinstance(grads, BatchNormGrads)
        assert grads.dx.shape == shape
        for g in (grads.dgamma, grads.dbeta, grads.dvar, grads.dmu):
            assert g.shape == (shape[-1],)
        np.testing.assert_allclose(grads.dx, dx_ad, **TIGHT)
        np.testing.assert_allclose(grads.dgamma, dgamma_ad, **TIGHT)
        np.testing.assert_allclose(grads.dbeta, dbeta_ad, **TIGHT)


@pytest.mark.parametrize("shape", SHAPES)
def test_dvar_and_dmu_match_autodiff_through_the_statistics(shape):
    """dvar = ∂ℓ/∂σ² with μ fixed; dmu = dℓ/dμ with σ² = mean((x - μ)²) following μ."""
    eps = 1e-5
    with jax.enable_x64(True):
        x, gamma, beta, dy = _random_problem(shape, seed=1)
        axes = tuple(range(x.ndim - 1))
        _, cache = batchnorm_forward(x, gamma, beta, eps)

        def loss_given(mu, var):  # ℓ = <dy, y>, so dℓ/dy = dy
            return jnp.sum(dy * (gamma * (x - mu) / jnp.sqrt(var + eps) + beta))

        def loss_of_mu(mu):
            return loss_given(mu, jnp.mean(jnp.square(x - mu), axis=axes))

        grads = batchnorm_backward(dy, cache)
        dvar_ad = jax.grad(loss_given, argnums=1)(cache.mu, cache.var)
        dmu_ad = jax.grad(loss_of_mu)(cache.mu)
        np.testing.assert_allclose(grads.dvar, dvar_ad, **TIGHT)
        np.testing.assert_allclose(grads.dmu, dmu_ad, **TIGHT)
        assert np.all(np.abs(grads.dvar) > 1e-6)  # the comparison is not between zeros


@pytest.mark.parametrize("shape", SHAPES)
def test_dx_is_orthogonal_to_ones_and_x_hat(shape):
    """Known answer: y does not change when x is shifted or scaled per channel, so dx ⟂ 1, x_hat."""
    with jax.enable_x64(True):
        x, gamma, beta, dy = _random_problem(shape, seed=2)
        axes = tuple(range(x.ndim - 1))
        _, cache = batchnorm_forward(x, gamma, beta, eps=0.0)
        dx = batchnorm_backward(dy, cache).dx
        np.testing.assert_allclose(jnp.sum(dx, axis=axes), 0.0, atol=1e-10)
        np.testing.assert_allclose(jnp.sum(dx * cache.x_hat, axis=axes), 0.0, atol=1e-10)
        assert np.abs(dx).max() > 1e-3


@pytest.mark.parametrize("shape", SHAPES)
def test_forward_matches_flax_batchnorm_in_train_mode(shape):
    x, gamma, beta, _ = _random_problem(shape, seed=3, dtype=jnp.float32)
    layer = nn.BatchNorm(use_running_average=False, momentum=0.9, epsilon=1e-5)
    variables = layer.init(jax.random.key(0), x)
    variables = {**variables, "params": {"scale": gamma, "bias": beta}}
    y_flax, _ = layer.apply(variables, x, mutable=["batch_stats"])
    y, cache = batchnorm_forward(x, gamma, beta, eps=1e-5)
    assert y.dtype == jnp.float32
    np.testing.assert_allclose(y, y_flax, rtol=1e-5, atol=1e-5)
    axes = tuple(range(x.ndim - 1))
    np.testing.assert_allclose(cache.x_hat.mean(axis=axes), 0.0, atol=1e-5)
    np.testing.assert_allclose(cache.x_hat.std(axis=axes), 1.0, atol=1e-4)


def test_forward_rejects_a_vector():
    with pytest.raises(ValueError, match="shape"):
        batchnorm_forward(jnp.ones(3), jnp.ones(3), jnp.zeros(3))


@pytest.fixture(scope="module")
def bias_results():
    return bias_example_modes(steps=60, lr=0.1, seed=0)


def test_bias_drifts_when_the_mean_is_treated_as_constant(bias_results):
    rec = bias_results["stop_gradient"]
    assert len(rec["step"]) == 61 and rec["b"].shape == (61, 4)
    b_norm = rec["b_norm"]
    assert np.all(np.diff(b_norm) > 0)  # strictly increasing from step 0 on
    assert b_norm[0] == 0.0 and b_norm[-1] > 10.0
    # Each step moves b by the same vector, so ||b|| grows linearly.
    np.testing.assert_allclose(b_norm, b_norm[1] * rec["step"], rtol=1e-9)
    # The centring cancels every update: output and loss never change.
    assert rec["output_change"].max() < 1e-12
    np.testing.assert_allclose(rec["loss"], rec["loss"][0], rtol=1e-6)
    assert rec["loss"][0] > 0.1


def test_bias_stays_put_when_the_normalisation_is_in_the_gradient(bias_results):
    rec = bias_results["full_gradient"]
    np.testing.assert_allclose(rec["b"] - rec["b"][0], 0.0, atol=1e-7)
    assert rec["b_norm"].max() < 1e-7
    assert np.all(np.isfinite(rec["loss"])) and rec["loss"][0] > 0.1
    # Same x_hat in both modes, so the same (unchanging) loss.
    np.testing.assert_allclose(rec["loss"], bias_results["stop_gradient"]["loss"], rtol=1e-12)


def test_bias_example_single_mode_and_seed():
    a = bias_example(steps=3, lr=0.5, seed=1, stop_gradient=True)
    b = bias_example(steps=3, lr=0.5, seed=1, stop_gradient=True)
    np.testing.assert_array_equal(a["b"], b["b"])
    assert set(a) == {"step", "b_norm", "loss", "output_change", "b"}
    np.testing.assert_array_equal(a["step"], np.arange(4))
    # A larger learning rate drifts proportionally faster: b_t = -t lr Σ_n dℓ/dx_hat_n.
    c = bias_example(steps=3, lr=0.25, seed=1, stop_gradient=True)
    np.testing.assert_allclose(a["b_norm"], 2 * c["b_norm"], rtol=1e-12)


def test_bias_example_figure(bias_results, tmp_path):
    from matplotlib.figure import Figure

    fig = bias_example_figure(bias_results)
    assert isinstance(fig, Figure)
    axes = fig.get_axes()
    assert len(axes) == 2
    for ax in axes:
        legend = ax.get_legend()
        assert legend is not None
        assert [t.get_text() for t in legend.get_texts()] == list(BIAS_MODES.values())
        assert ax.get_xlabel() and ax.get_ylabel()
    assert "Ioffe & Szegedy 2015" in fig.get_suptitle()
    fig.savefig(tmp_path / "bias.png")
    assert (tmp_path / "bias.png").stat().st_size > 0
