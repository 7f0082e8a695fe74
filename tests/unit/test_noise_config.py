"""Algorithm 1's noise constants as run settings: config.json, the model factory, sweeps (the
command: integration/test_noise_config_cli.py).

The noise a model built from a ``ModelConfig`` draws is checked against the closed-form moments
of Algorithm 1's distributions for *non-default* constants, with tolerances the paper's defaults
would fail.
"""

import json
import math

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from helpers import NOISE_CONSTANTS, noise_draws

from landscape.config import ModelConfig, RunConfig
from landscape.models import NORMALIZERS, create_model, init_variables
from landscape.norms import PAPER_NOISE, NoiseConfig, noisy_norm_factory
from landscape.sweep import SweepError, configurations, parse_grid
from landscape.train import build_model


def test_defaults_are_the_papers_and_the_same_as_norms():
    model = ModelConfig()
    assert (model.noise_mu, model.noise_sigma, model.noise_r_mu, model.noise_r_sigma) == (
        0.5,
        1.25,
        0.1,
        0.1,
    )
    assert tuple(PAPER_NOISE) == (0.5, 1.25, 0.1, 0.1)


def test_config_round_trip_with_and_without_the_fields():
    config = RunConfig(model=ModelConfig(**NOISE_CONSTANTS))
    again = RunConfig.from_dict(json.loads(json.dumps(config.to_dict())))
    assert again == config and again.model.noise_r_sigma == 0.5
    # A config.json written before the fields existed loads with the paper's constants.
    old = config.to_dict()
    for name in NOISE_CONSTANTS:
        del old["model"][name]
    assert RunConfig.from_dict(old).model == ModelConfig()


def _moments_close(samples, mean, var, mu4, name):
    """Sample mean and variance within 5 standard errors of the closed forms."""
    samples = np.asarray(samples, np.float64).ravel()
    n = samples.size
    assert abs(samples.mean() - mean) < 5 * math.sqrt(var / n), name
    assert abs(samples.var() - var) < 5 * math.sqrt((mu4 - var**2) / n), name


def _uniform(lo, hi):  # mean, variance, fourth central moment of U(lo, hi)
    return (lo + hi) / 2, (hi - lo) ** 2 / 12, (hi - lo) ** 4 / 80


def test_model_from_config_draws_noise_with_the_configured_moments():
    # A 3-layer deep linear network 1,000 units wide: its two hidden layers give 2,000 draws of
    # (mu_j, sigma_j) and 2 x 32 x 1,000 of the per-sample (m_ij, s_ij).
    config = ModelConfig(arch="dln3", width=100.0, norm="noisy_none", **NOISE_CONSTANTS)
    x = jax.random.normal(jax.random.key(1), (32, 10))
    draws = noise_draws(build_model(config), x, jax.random.key(2))
    assert len(draws) == 2
    mu = np.concatenate([np.asarray(d.mu, np.float64) for d in draws])
    sigma = np.concatenate([np.asarray(d.sigma, np.float64) for d in draws])
    m_dev = np.concatenate([np.asarray(d.shift - d.mu, np.float64).ravel() for d in draws])
    s_dev = np.concatenate([np.asarray(d.scale - d.sigma, np.float64).ravel() for d in draws])
    n_mu, n_sigma, r_mu, r_sigma = (NOISE_CONSTANTS[k] for k in NOISE_CONSTANTS)
    # Supports: within the configured bounds and reaching them (the defaults would not).
    assert -n_mu <= mu.min() < -0.95 * n_mu and 0.95 * n_mu < mu.max() <= n_mu
    assert sigma.min() >= 1.0 and 0.95 * n_sigma < sigma.max() <= n_sigma
    assert 0.95 * r_mu < np.abs(m_dev).max() <= r_mu + 1e-6
    _moments_close(mu, *_uniform(-n_mu, n_mu), "mu_j ~ U(-n_mu, n_mu)")
    _moments_close(sigma, *_uniform(1.0, n_sigma), "sigma_j ~ U(1, n_sigma)")
    _moments_close(m_dev, *_uniform(-r_mu, r_mu), "m_ij - mu_j ~ U(-r_mu, r_mu)")
    _moments_close(s_dev, 0.0, r_sigma**2, 3 * r_sigma**4, "s_ij - sigma_j ~ N(0, r_sigma^2)")


def test_other_layers_ignore_the_constants(monkeypatch):
    x = jax.random.normal(jax.random.key(1), (8, 10))
    paper = build_model(ModelConfig(arch="dln3", norm="batchnorm"))
    other = build_model(ModelConfig(arch="dln3", norm="batchnorm", **NOISE_CONSTANTS))
    variables = init_variables(paper, jax.random.key(0), (10,))
    np.testing.assert_array_equal(
        paper.apply(variables, x, train=True, mutable=["batch_stats"])[0],
        other.apply(variables, x, train=True, mutable=["batch_stats"])[0],
    )
    # A noisy layer registered under its own name keeps its own constants.
    monkeypatch.setitem(NORMALIZERS, "noisy_fixed", noisy_norm_factory(noise=NoiseConfig(0.01)))
    fixed = build_model(ModelConfig(arch="dln3", width=10.0, norm="noisy_fixed", **NOISE_CONSTANTS))
    draws = noise_draws(fixed, x, jax.random.key(3))
    assert max(float(jnp.abs(d.mu).max()) for d in draws) <= 0.01


@pytest.mark.parametrize(
    "noise",
    [NoiseConfig(n_mu=-0.1), NoiseConfig(n_sigma=0.9), NoiseConfig(r_sigma=math.nan)],
)
def test_create_model_refuses_constants_algorithm_1_cannot_draw_with(noise):
    with pytest.raises(ValueError, match="Algorithm 1"):
        create_model("vgg11", width=0.0625, norm="noisy_batchnorm", noise=noise)
    with pytest.raises(ValueError, match="Algorithm 1"):
        create_model("dln3", norm="noisy_none", noise=noise)


def test_sweep_grid_varies_the_constants():
    grid = parse_grid(["noise_mu=0.25,0.5", "noise-r-sigma=0.2"])
    points = configurations(RunConfig(), grid)
    assert [p[0] for p in points] == [
        "noise_mu=0.25_noise_r_sigma=0.2",
        "noise_mu=0.5_noise_r_sigma=0.2",
    ]
    assert [p[2].model.noise_mu for p in points] == [0.25, 0.5]
    assert {p[2].model.noise_r_sigma for p in points} == {0.2}
    with pytest.raises(SweepError, match=">= 1"):
        parse_grid(["noise_sigma=0.5"])
    with pytest.raises(SweepError, match=">= 0"):
        parse_grid(["noise_mu=nan"])
    with pytest.raises(SweepError, match="not a number"):
        parse_grid(["noise_r_mu=x"])
