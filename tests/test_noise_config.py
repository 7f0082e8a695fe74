"""Algorithm 1's noise constants as run settings: config.json, the model factory, sweeps, the CLI.

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
from landscape.cli import app, resumed_config
from typer.testing import CliRunner

from landscape.config import ModelConfig, RunConfig
from landscape.models import NORMALIZERS, create_model, init_variables
from landscape.norms import PAPER_NOISE, NoiseConfig, noisy_norm_factory
from landscape.sweep import SweepError, configurations, parse_grid
from landscape.train import build_model

# Far from the paper's (0.5, 1.25, 0.1, 0.1) in every constant.
OTHER = {"noise_mu": 2.0, "noise_sigma": 3.0, "noise_r_mu": 0.4, "noise_r_sigma": 0.5}
runner = CliRunner()


def invoke(*args):
    return runner.invoke(app, [str(a) for a in args])


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
    config = RunConfig(model=ModelConfig(**OTHER))
    again = RunConfig.from_dict(json.loads(json.dumps(config.to_dict())))
    assert again == config and again.model.noise_r_sigma == 0.5
    # A config.json written before the fields existed loads with the paper's constants.
    old = config.to_dict()
    for name in OTHER:
        del old["model"][name]
    assert RunConfig.from_dict(old).model == ModelConfig()


def _noise_draws(model, x, key):
    """Returns every NoisyNorm's noise (Algorithm1Noise) of one training-mode forward pass of a
    freshly initialised ``model`` on ``x``."""

    @jax.jit  # init and forward as one program: op by op, VGG takes tens of seconds on a CPU
    def forward(key):
        init_key, noise_key = jax.random.split(key)
        variables = init_variables(model, init_key, x.shape[1:])
        mutable = ["batch_stats", "intermediates"]
        return model.apply(variables, x, train=True, mutable=mutable, rngs={"noise": noise_key})

    inter = forward(key)[1]["intermediates"]
    return [v["noise"][0] for k, v in inter.items() if k.startswith("NoisyNorm")]


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
    config = ModelConfig(arch="dln3", width=100.0, norm="noisy_none", **OTHER)
    x = jax.random.normal(jax.random.key(1), (32, 10))
    draws = _noise_draws(build_model(config), x, jax.random.key(2))
    assert len(draws) == 2
    mu = np.concatenate([np.asarray(d.mu, np.float64) for d in draws])
    sigma = np.concatenate([np.asarray(d.sigma, np.float64) for d in draws])
    m_dev = np.concatenate([np.asarray(d.shift - d.mu, np.float64).ravel() for d in draws])
    s_dev = np.concatenate([np.asarray(d.scale - d.sigma, np.float64).ravel() for d in draws])
    n_mu, n_sigma, r_mu, r_sigma = (OTHER[k] for k in OTHER)
    # Supports: within the configured bounds and reaching them (the defaults would not).
    assert -n_mu <= mu.min() < -0.95 * n_mu and 0.95 * n_mu < mu.max() <= n_mu
    assert sigma.min() >= 1.0 and 0.95 * n_sigma < sigma.max() <= n_sigma
    assert 0.95 * r_mu < np.abs(m_dev).max() <= r_mu + 1e-6
    _moments_close(mu, *_uniform(-n_mu, n_mu), "mu_j ~ U(-n_mu, n_mu)")
    _moments_close(sigma, *_uniform(1.0, n_sigma), "sigma_j ~ U(1, n_sigma)")
    _moments_close(m_dev, *_uniform(-r_mu, r_mu), "m_ij - mu_j ~ U(-r_mu, r_mu)")
    _moments_close(s_dev, 0.0, r_sigma**2, 3 * r_sigma**4, "s_ij - sigma_j ~ N(0, r_sigma^2)")


def test_vgg_noisy_batchnorm_gets_the_constants():
    x = jax.random.normal(jax.random.key(1), (2, 32, 32, 3))
    config = ModelConfig(width=0.0625, norm="noisy_batchnorm", **OTHER)
    draws = _noise_draws(build_model(config), x, jax.random.key(3))
    assert len(draws) == 8  # one per convolution
    mu = np.concatenate([np.asarray(d.mu) for d in draws])  # 172 units
    # With the paper's n_mu = 0.5 every |mu_j| <= 0.5; with n_mu = 2, P(all <= 0.5) = 0.25^172.
    assert 0.5 < np.abs(mu).max() <= OTHER["noise_mu"]


def test_other_layers_ignore_the_constants(monkeypatch):
    x = jax.random.normal(jax.random.key(1), (8, 10))
    paper = build_model(ModelConfig(arch="dln3", norm="batchnorm"))
    other = build_model(ModelConfig(arch="dln3", norm="batchnorm", **OTHER))
    variables = init_variables(paper, jax.random.key(0), (10,))
    np.testing.assert_array_equal(
        paper.apply(variables, x, train=True, mutable=["batch_stats"])[0],
        other.apply(variables, x, train=True, mutable=["batch_stats"])[0],
    )
    # A noisy layer registered under its own name keeps its own constants.
    monkeypatch.setitem(NORMALIZERS, "noisy_fixed", noisy_norm_factory(noise=NoiseConfig(0.01)))
    fixed = build_model(ModelConfig(arch="dln3", width=10.0, norm="noisy_fixed", **OTHER))
    draws = _noise_draws(fixed, x, jax.random.key(3))
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


@pytest.mark.parametrize("command", ["train", "probe", "bench"])
def test_help_gives_the_options(command):
    result = invoke(command, "--help")
    assert result.exit_code == 0
    for option in ("--noise-mu", "--noise-sigma", "--noise-r-mu", "--noise-r-sigma"):
        assert option in result.output


@pytest.mark.parametrize(
    ("option", "value", "message"),
    [
        ("--noise-mu", "abc", "--noise-mu 'abc' is not a number"),
        ("--noise-mu", "-0.5", "--noise-mu must be a finite number >= 0"),
        ("--noise-sigma", "0.5", "--noise-sigma must be a finite number >= 1"),
        ("--noise-r-mu", "inf", "--noise-r-mu must be a finite number >= 0"),
        ("--noise-r-sigma", "-1", "--noise-r-sigma must be a finite number >= 0"),
    ],
)
def test_bad_value_is_one_line_and_exit_2(option, value, message, tmp_path):
    result = invoke("train", "--preset", "smoke", option, value, "--out", tmp_path / "r")
    assert result.exit_code == 2, result.output
    assert message in result.output
    assert "Traceback" not in result.output
    assert len(result.output.strip().splitlines()) == 1
    assert not (tmp_path / "r").exists()


def test_train_writes_the_constants_to_config_json_and_resume_keeps_them(tmp_path):
    run_dir = tmp_path / "run"
    # The deep linear network on its synthetic regression data: the quickest run there is.
    result = invoke(
        *("train", "--preset", "dln-quick", "--arch", "dln3", "--steps", "1"),
        *("--variants", "noisy_batchnorm", "--noise-mu", "0.25", "--noise-r-sigma", "0.2"),
        *("--checkpoint-every", "0", "--eval-every", "0", "--no-progress", "--out", run_dir),
    )
    assert result.exit_code == 0, result.output
    model = json.loads((run_dir / "config.json").read_text())["model"]
    assert model["noise_mu"] == 0.25 and model["noise_r_sigma"] == 0.2
    assert model["noise_sigma"] == 1.25 and model["noise_r_mu"] == 0.1  # the paper's
    # --resume continues with the saved constants.
    assert resumed_config(run_dir, steps=2, data=None).model.noise_mu == 0.25
