"""Noisy BatchNorm (Algorithm 1) and l_p normalisation (Sec. 3.3): formulas, statistics, training.

Forward passes are compared with the formulas written out in numpy, in float64; the noise with
the closed-form moments of Algorithm 1's uniform and normal distributions over many draws.
"""

import math

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
import pytest

from landscape.models import NORMALIZERS, create_model, init_variables
from landscape.norms import EPSILON, LpNorm, NoiseConfig, NoisyNorm, draw_noise, lp_statistic

NEW_VARIANTS = ("noisy_batchnorm", "noisy_none", "l1", "l2", "linf")
SHAPES = [(6, 3), (4, 3, 2, 3)]  # (N, C) and (N, H, W, C): H and W count as batch


def _inputs(shape, seed=0):
    rng = np.random.default_rng(seed)
    # Shifted and scaled per unit, with a negative unit, so mean and norm both matter.
    return rng.normal(size=shape) * np.array([0.5, 2.0, 1.0]) + np.array([1.0, -3.0, 0.0])


def _affine(units, seed=1):
    rng = np.random.default_rng(seed)
    return rng.normal(size=units) + 1.0, rng.normal(size=units)


def numpy_lp(x, p, gamma, beta, mean=None, norm=None):
    axes = tuple(range(x.ndim - 1))
    if mean is None:
        mean = x.mean(axes)
        norm = np.abs(x).max(axes) if p == math.inf else (np.abs(x) ** p).mean(axes) ** (1 / p)
    return gamma * (x - mean) / (norm + EPSILON) + beta


def numpy_bn(x, gamma, beta):
    axes = tuple(range(x.ndim - 1))
    return gamma * (x - x.mean(axes)) / np.sqrt(x.var(axes) + EPSILON) + beta


def _with_affine(variables, gamma, beta, key="LpNorm"):
    params = dict(variables["params"])
    if key == "BatchNorm_0":
        params = {"BatchNorm_0": {"scale": jnp.asarray(gamma), "bias": jnp.asarray(beta)}}
    else:
        params = {"scale": jnp.asarray(gamma), "bias": jnp.asarray(beta)}
    return {"params": params, "batch_stats": variables["batch_stats"]}


@pytest.mark.parametrize("shape", SHAPES)
@pytest.mark.parametrize("p", [1, 2, math.inf])
def test_lp_norm_train_and_eval_match_the_formula(shape, p):
    with jax.enable_x64(True):
        x = _inputs(shape)
        gamma, beta = _affine(shape[-1])
        layer = LpNorm(p=p, train=True)
        variables = _with_affine(layer.init(jax.random.key(0), jnp.asarray(x)), gamma, beta)
        y, updates = layer.apply(variables, jnp.asarray(x), mutable=["batch_stats"])
        assert y.dtype == jnp.float64
        np.testing.assert_allclose(y, numpy_lp(x, p, gamma, beta), rtol=1e-12, atol=1e-12)
        # Running averages move as BatchNorm's: new = 0.9 old + 0.1 batch (from mean 0, norm 1).
        axes = tuple(range(x.ndim - 1))
        norm = np.abs(x).max(axes) if p == math.inf else (np.abs(x) ** p).mean(axes) ** (1 / p)
        stats = updates["batch_stats"]
        np.testing.assert_allclose(stats["mean"], 0.1 * x.mean(axes), rtol=1e-6)
        np.testing.assert_allclose(stats["norm"], 0.9 + 0.1 * norm, rtol=1e-6)
        # Eval mode normalises with the running averages, whatever the batch.
        ra_mean, ra_norm = np.array([0.3, -1.0, 0.1]), np.array([1.5, 2.5, 0.7])
        eval_vars = {
            "params": variables["params"],
            "batch_stats": {"mean": ra_mean, "norm": ra_norm},
        }
        y_eval = LpNorm(p=p, train=False).apply(eval_vars, jnp.asarray(x))
        np.testing.assert_allclose(
            y_eval, numpy_lp(x, p, gamma, beta, ra_mean, ra_norm), rtol=1e-12, atol=1e-12
        )


@pytest.mark.parametrize("p, expected", [(1, 3.5), (2, math.sqrt(12.5)), (math.inf, 4.0)])
def test_lp_statistic_is_the_power_mean_with_finite_gradients_on_dead_units(p, expected):
    with jax.enable_x64(True):
        x = jnp.array([[3.0, 0.0], [-4.0, 0.0]])  # unit 1 is dead (all zero, e.g. after ReLU)
        np.testing.assert_allclose(lp_statistic(x, p, (0,)), [expected, 0.0], rtol=1e-15)
        layer = LpNorm(p=p, train=True)
        variables = layer.init(jax.random.key(0), x)
        weights = jnp.array([[1.0, 2.0], [-3.0, 0.5]])

        def loss(v, x):
            return (layer.apply(v, x, mutable=["batch_stats"])[0] * weights).sum()

        grads = jax.grad(loss, argnums=(0, 1))(variables, x)
        leaves = jax.tree.leaves(grads)
        assert all(bool(jnp.isfinite(g).all()) for g in leaves)
        assert float(jnp.abs(grads[1][:, 0]).sum()) > 0  # the live unit does get a gradient


@pytest.mark.parametrize("shape", SHAPES)
def test_noisy_batchnorm_is_batchnorm_then_algorithm_1(shape):
    with jax.enable_x64(True):
        x = _inputs(shape)
        gamma, beta = _affine(shape[-1])
        layer = NoisyNorm(train=True)
        variables = layer.init(jax.random.key(0), jnp.asarray(x))
        variables = _with_affine(variables, gamma, beta, key="BatchNorm_0")
        y, state = layer.apply(
            variables,
            jnp.asarray(x),
            rngs={"noise": jax.random.key(7)},
            mutable=["batch_stats", "intermediates"],
        )
        (noise,) = state["intermediates"]["noise"]
        assert noise.scale.shape == noise.shift.shape == x.shape and noise.mu.shape == (3,)
        expected = np.asarray(noise.scale) * numpy_bn(x, gamma, beta) + np.asarray(noise.shift)
        np.testing.assert_allclose(y, expected, rtol=1e-12, atol=1e-12)
        if len(shape) == 4:  # every (n, h, w) position draws its own m and s
            assert len(np.unique(np.asarray(noise.shift)[..., 0])) == math.prod(shape[:-1])
        # The running averages are BatchNorm's (the noise comes after them).
        axes = tuple(range(x.ndim - 1))
        stats = state["batch_stats"]["BatchNorm_0"]
        np.testing.assert_allclose(stats["mean"], 0.1 * x.mean(axes), rtol=1e-6)
        np.testing.assert_allclose(stats["var"], 0.9 + 0.1 * x.var(axes), rtol=1e-6)
        # Eval mode: plain BN with running averages, no noise, no rng needed.
        y_eval = NoisyNorm(train=False).apply(variables, jnp.asarray(x))
        bn_eval = gamma * x / np.sqrt(1.0 + EPSILON) + beta  # running mean 0, var 1 at init
        # (Flax keeps the running averages in float32, so eval mode is float32-exact only.)
        np.testing.assert_allclose(y_eval, bn_eval, rtol=1e-6, atol=1e-7)


def test_noisy_none_adds_the_noise_to_the_raw_activations():
    x = jnp.asarray(_inputs((5, 3)), jnp.float32)
    layer = NoisyNorm(train=True, batchnorm=False)
    variables = layer.init(jax.random.key(0), x)
    assert variables == {}  # no parameters, no running statistics
    y, state = layer.apply(
        variables, x, rngs={"noise": jax.random.key(1)}, mutable=["intermediates"]
    )
    (noise,) = state["intermediates"]["noise"]
    np.testing.assert_allclose(y, noise.scale * x + noise.shift, rtol=1e-6)
    np.testing.assert_array_equal(NoisyNorm(train=False, batchnorm=False).apply({}, x), x)


def _moments_close(samples, mean, var, mu4, name):
    """Sample mean and variance within 5 standard errors of the closed forms."""
    samples = np.asarray(samples, np.float64).ravel()
    n = samples.size
    assert abs(samples.mean() - mean) < 5 * math.sqrt(var / n), name
    assert abs(samples.var() - var) < 5 * math.sqrt((mu4 - var**2) / n), name


def test_noise_follows_algorithm_1_distributions():
    cfg = NoiseConfig(n_mu=0.5, n_sigma=1.25, r_mu=0.1, r_sigma=0.1)
    x = jnp.zeros((16, 20_000), jnp.float32)  # 20,000 units, 16 samples each
    _, state = NoisyNorm(train=True, noise=cfg).apply(
        NoisyNorm(train=False, noise=cfg).init(jax.random.key(0), x),
        x,
        rngs={"noise": jax.random.key(3)},
        mutable=["batch_stats", "intermediates"],
    )
    (noise,) = state["intermediates"]["noise"]
    mu, sigma = np.asarray(noise.mu, np.float64), np.asarray(noise.sigma, np.float64)
    m_dev = np.asarray(noise.shift, np.float64) - mu  # m_ij - mu_j ~ U(-r_mu, r_mu)
    s_dev = np.asarray(noise.scale, np.float64) - sigma  # s_ij - sigma_j ~ N(0, r_sigma^2)

    def uniform(lo, hi):  # mean, variance, fourth central moment of U(lo, hi)
        return (lo + hi) / 2, (hi - lo) ** 2 / 12, (hi - lo) ** 4 / 80

    assert mu.min() >= -cfg.n_mu and mu.max() <= cfg.n_mu
    assert sigma.min() >= 1.0 and sigma.max() <= cfg.n_sigma
    assert np.abs(m_dev).max() <= cfg.r_mu + 1e-6
    _moments_close(mu, *uniform(-cfg.n_mu, cfg.n_mu), "mu_j")
    _moments_close(sigma, *uniform(1.0, cfg.n_sigma), "sigma_j")
    _moments_close(m_dev, *uniform(-cfg.r_mu, cfg.r_mu), "m_ij - mu_j")
    _moments_close(s_dev, 0.0, cfg.r_sigma**2, 3 * cfg.r_sigma**4, "s_ij - sigma_j")
    # mu_j and sigma_j are shared by the unit's samples: the per-sample parts average out.
    assert np.abs(m_dev.mean(0)).max() < 6 * cfg.r_mu / math.sqrt(3 * 16)
    # The marginal of m_ij: mu_j's and the per-sample spread add up (within 5 standard errors,
    # which mu_j's 20,000 draws dominate).
    m = np.asarray(noise.shift, np.float64)
    var_m = cfg.n_mu**2 / 3 + cfg.r_mu**2 / 3
    assert abs(m.var() - var_m) < 5 * math.sqrt(0.8 * (cfg.n_mu**2 / 3) ** 2 / 20_000)


def test_constants_are_configurable():
    noise = draw_noise(jax.random.key(0), (4, 50_000), NoiseConfig(n_mu=2.0, n_sigma=3.0))
    assert 1.9 < float(noise.mu.max()) <= 2.0 and 2.9 < float(noise.sigma.max()) <= 3.0


def test_same_step_same_noise_other_step_other_noise():
    from landscape.config import OptimizerConfig
    from landscape.train import create_train_state, make_loss_fn, make_optimizer, step_batch

    model = create_model("vgg11", width=0.0625, norm="noisy_batchnorm", conv_impl="xla")
    state = create_train_state(model, make_optimizer(OptimizerConfig()), seed=0)
    loss_fn = jax.jit(make_loss_fn(model))
    x = jax.random.normal(jax.random.key(1), (4, 32, 32, 3))
    batch = {"image": x, "label": jnp.arange(4)}

    def logits_at(step):
        # The trainer's own derivation of the step's key: fold_in(state.rng, step).
        b = step_batch(state.replace(step=jnp.asarray(step, jnp.int32)), batch)
        return np.asarray(loss_fn(state.params, state.batch_stats, b)[1][1])

    np.testing.assert_array_equal(logits_at(3), logits_at(3))
    assert np.abs(logits_at(3) - logits_at(4)).max() > 1e-3
    # Training mode without a key is an error, not silently noise-free.
    variables = {"params": state.params, "batch_stats": state.batch_stats}
    with pytest.raises(ValueError, match="needs a 'noise' rng"):
        jax.eval_shape(lambda: model.apply(variables, x, train=True, mutable=["batch_stats"]))


@pytest.mark.parametrize("make_layer", [NoisyNorm, lambda train: LpNorm(p=2, train=train)])
def test_a_single_value_per_unit_is_refused(make_layer):
    # A dense layer on a batch of one: x - mean would be 0 whatever x is.
    x = jnp.ones((1, 4))
    variables = make_layer(train=False).init(jax.random.key(0), x)
    with pytest.raises(ValueError, match="at least 2 values per unit"):
        make_layer(train=True).apply(
            variables, x, rngs={"noise": jax.random.key(0)}, mutable=["batch_stats"]
        )
    # Two values are enough, and eval mode (running averages) takes a single example.
    x2 = jnp.array([[1.0, 2.0, 3.0, 4.0], [2.0, 2.0, 0.0, -4.0]])
    y, _ = make_layer(train=True).apply(
        variables, x2, rngs={"noise": jax.random.key(0)}, mutable=["batch_stats"]
    )
    assert bool(jnp.isfinite(y).all())
    assert bool(jnp.isfinite(make_layer(train=False).apply(variables, x)).all())


@pytest.mark.parametrize("placement", ["before", "after"])
def test_every_variant_is_registered_and_placement_works(placement):
    assert set(NEW_VARIANTS) <= set(NORMALIZERS)
    assert isinstance(NORMALIZERS["noisy_none"](True), nn.Module)
    x = jax.random.normal(jax.random.key(0), (2, 32, 32, 3))
    model = create_model("vgg11", width=0.0625, norm="l2", placement=placement, conv_impl="xla")
    _, state = model.apply(
        init_variables(model, jax.random.key(0)),
        x,
        train=True,
        mutable=["batch_stats", "intermediates"],
        capture_intermediates=True,
    )
    inter = state["intermediates"]
    conv = np.asarray(inter["Conv3x3_0"]["__call__"][0], np.float64)
    normed = np.asarray(inter["LpNorm_0"]["__call__"][0])
    # Before: conv -> l2 -> ReLU (the layer sees the conv output); after: conv -> ReLU -> l2.
    seen = conv if placement == "before" else np.maximum(conv, 0.0)
    np.testing.assert_allclose(normed, numpy_lp(seen, 2, 1.0, 0.0), rtol=1e-4, atol=1e-5)


def test_cli_accepts_the_variants_and_placement():
    from landscape.app.cli.common import CliError
    from landscape.app.cli.run import build_config

    cfg = build_config(
        "smoke",
        batch_size=2,
        variants="standard,batchnorm,noisy_batchnorm,noisy_none,l1,l2,linf",
        placement="after",
    )
    assert cfg.model.placement == "after" and cfg.batch_size == 2
    assert cfg.model_for("noisy_none").norm == "noisy_none" and cfg.model_for("l1").norm == "l1"
    with pytest.raises(CliError, match="choose from standard, batchnorm, noisy_batchnorm"):
        build_config("smoke", variants="l3")
    with pytest.raises(CliError, match="--placement"):
        build_config("smoke", placement="middle")


# --- summaries and figures (whole runs: integration/test_norms_runs.py) ----------------------


def test_summary_and_figures_handle_more_variants():
    from landscape.plots import variant_color, variant_label
    from landscape.report import summary_rows

    names = ("standard", "batchnorm", *NEW_VARIANTS)
    steps = np.arange(10)
    records = {
        v: {
            "step": steps,
            "diverged": np.zeros(10),
            "loss_band": np.full(10, 1.0 + i),
            "grad_dist_max": np.full(10, 2.0),
            "beta": np.full(10, 3.0),
        }
        for i, v in enumerate(names)
    }
    rows = summary_rows(records, 10)
    ratio_rows = [r for r in rows if "/" in r["variant"]]
    assert len(rows) == 3 * len(names) + 3
    assert {r["variant"] for r in ratio_rows} == {"standard/batchnorm"}
    assert all(r["loss_band"] == 0.5 for r in ratio_rows)  # 1.0 / 2.0
    colors = [variant_color(v) for v in names]
    assert len(set(colors)) == len(names)  # every variant distinguishable
    assert (
        variant_label("noisy_none") != "noisy_none"
        and variant_label("linf") == "Standard + ℓ∞ norm"
    )
