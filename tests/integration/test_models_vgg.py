"""Whole VGG networks, slow to compile: every convolution form gives the same network, l_inf
and noisy BatchNorm have finite gradients on a batch of one, and noisy BatchNorm draws with the
configured constants (the layers themselves: unit/test_models.py, unit/test_norms.py,
unit/test_noise_config.py)."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from helpers import NOISE_CONSTANTS, noise_draws

from landscape.config import ModelConfig
from landscape.models import create_model, init_variables
from landscape.train import build_model


@pytest.mark.parametrize("impl", ["canonical", "auto"])
def test_every_convolution_form_gives_the_same_network(impl):
    x = jax.random.normal(jax.random.key(1), (4, 32, 32, 3))
    y = jax.random.randint(jax.random.key(2), (4,), 0, 10)

    def value_and_grad(conv_impl):
        model = create_model("vgg11", width=0.0625, norm="batchnorm", conv_impl=conv_impl)
        variables = init_variables(model, jax.random.key(0))

        def loss(params):
            logits, _ = model.apply(
                {**variables, "params": params}, x, train=True, mutable=["batch_stats"]
            )
            return -jnp.mean(jnp.take_along_axis(jax.nn.log_softmax(logits), y[:, None], 1))

        return jax.value_and_grad(loss)(variables["params"])

    (v, g), (v_ref, g_ref) = value_and_grad(impl), value_and_grad("xla")
    np.testing.assert_allclose(v, v_ref, rtol=1e-5)
    for a, b in zip(jax.tree.leaves(g), jax.tree.leaves(g_ref), strict=True):
        np.testing.assert_allclose(a, b, rtol=2e-3, atol=2e-5)


@pytest.mark.parametrize("norm", ["linf", "noisy_batchnorm"])
def test_vgg_has_finite_gradients_on_a_batch_of_one(norm):
    # VGG's deepest convolutions are 2x2: even a batch of one has four values per unit. (Batches
    # of 2 go through the trainer in the smoke run of test_norms_runs.py.)
    model = create_model("vgg11", width=0.0625, norm=norm, conv_impl="xla")
    variables = init_variables(model, jax.random.key(0))
    x = jax.random.normal(jax.random.key(1), (1, 32, 32, 3))

    @jax.jit
    def grads(params):
        def loss(params):
            out, _ = model.apply(
                {"params": params, "batch_stats": variables["batch_stats"]},
                x,
                train=True,
                mutable=["batch_stats"],
                rngs={"noise": jax.random.key(0)},
            )
            return (out**2).mean()

        return jax.grad(loss)(params)

    assert all(bool(jnp.isfinite(g).all()) for g in jax.tree.leaves(grads(variables["params"])))


def test_vgg_noisy_batchnorm_gets_the_constants():
    x = jax.random.normal(jax.random.key(1), (2, 32, 32, 3))
    config = ModelConfig(width=0.0625, norm="noisy_batchnorm", **NOISE_CONSTANTS)
    draws = noise_draws(build_model(config), x, jax.random.key(3))
    assert len(draws) == 8  # one per convolution
    mu = np.concatenate([np.asarray(d.mu) for d in draws])  # 172 units
    # With the paper's n_mu = 0.5 every |mu_j| <= 0.5; with n_mu = 2, P(all <= 0.5) = 0.25^172.
    assert 0.5 < np.abs(mu).max() <= NOISE_CONSTANTS["noise_mu"]
