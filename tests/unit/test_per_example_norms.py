"""LayerNorm, GroupNorm, RMSNorm and weight normalisation: their closed forms in float64, Flax's
own layers as a second reference, weight normalisation's invariances, and gradients that flow
through every network that can use them (docs/definitions.md#per-example-normalisers)."""

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
import pytest

from landscape.config import (
    MLP_ACTIVATIONS,
    NORMS,
    ConfigError,
    group_norm_groups,
    is_norm,
    validate,
)
from landscape.models import (
    ACTIVATIONS,
    NORMALIZERS,
    create_dln,
    create_model,
    init_variables,
    make_norm,
)
from landscape.norms import (
    EPSILON,
    GroupNorm,
    LayerNorm,
    RMSNorm,
    WeightNormDense,
    group_count,
    kernel_norm,
    weight_normalize,
)

PER_EXAMPLE = ("layernorm", "groupnorm", "groupnorm2", "rmsnorm", "weightnorm")
SHAPES = [(3, 6), (2, 3, 2, 6)]  # (N, C) and (N, H, W, C)


def _inputs(shape, seed=0, spread=1.0):
    rng = np.random.default_rng(seed)
    # Each channel shifted and scaled differently, so centring and scaling both matter.
    channel_scale = np.linspace(0.5, 2.0, shape[-1])
    channel_shift = np.linspace(-3.0, 1.0, shape[-1])
    return spread * (rng.normal(size=shape) * channel_scale + channel_shift)


def _affine(units, seed=1):
    rng = np.random.default_rng(seed)
    return rng.normal(size=units) + 1.0, rng.normal(size=units)


def numpy_group_norm(x, groups, gamma, beta, eps=EPSILON):
    """The closed form: per example and group of consecutive channels (with H and W),
    (x - mean) / sqrt(biased var + eps), then gamma and beta per channel."""
    n, c = x.shape[0], x.shape[-1]
    grouped = x.reshape(n, -1, groups, c // groups)
    mean = grouped.mean(axis=(1, 3), keepdims=True)
    var = ((grouped - mean) ** 2).mean(axis=(1, 3), keepdims=True)
    return ((grouped - mean) / np.sqrt(var + eps)).reshape(x.shape) * gamma + beta


def numpy_layer_norm(x, gamma, beta, eps=EPSILON):
    return numpy_group_norm(x, 1, gamma, beta, eps)


def numpy_rms_norm(x, gamma, eps=EPSILON):
    axes = tuple(range(1, x.ndim))
    return x / np.sqrt((x**2).mean(axis=axes, keepdims=True) + eps) * gamma


def _apply(layer, x, gamma, beta=None):
    params = {"scale": jnp.asarray(gamma)}
    if beta is not None:
        params["bias"] = jnp.asarray(beta)
    return np.asarray(layer.apply({"params": params}, jnp.asarray(x)))


@pytest.mark.parametrize("shape", SHAPES)
def test_layer_norm_matches_its_closed_form_and_flax(shape):
    with jax.enable_x64(True):
        x, (gamma, beta) = _inputs(shape), _affine(shape[-1])
        y = _apply(LayerNorm(), x, gamma, beta)
        assert y.dtype == np.float64
        np.testing.assert_allclose(y, numpy_layer_norm(x, gamma, beta), rtol=1e-12, atol=1e-12)
        # Flax's LayerNorm over all of an example's values, a gain and shift per channel.
        axes = tuple(range(1, len(shape)))
        reference = nn.LayerNorm(
            epsilon=EPSILON, reduction_axes=axes, feature_axes=-1, use_fast_variance=False
        )
        np.testing.assert_allclose(y, _apply(reference, x, gamma, beta), rtol=1e-12, atol=1e-12)
        # Every example on its own: changing one leaves the others' outputs unchanged.
        x2 = x.copy()
        x2[0] = 10 * x2[0] + 5
        np.testing.assert_array_equal(_apply(LayerNorm(), x2, gamma, beta)[1:], y[1:])


@pytest.mark.parametrize("shape", SHAPES)
@pytest.mark.parametrize("groups", [2, 3, 4, 32])
def test_group_norm_matches_its_closed_form_and_flax(shape, groups):
    # ``groups`` is the most groups: 6 channels take the largest divisor of 6 that fits, and a
    # dense layer's groups keep two units at least (32 -> 6 groups of 2x2 positions, 3 of 2 units).
    used = {2: 2, 3: 3, 4: 3, 32: 6 if len(shape) == 4 else 3}[groups]
    assert group_count(shape[-1], groups, int(np.prod(shape[1:-1]))) == used
    with jax.enable_x64(True):
        x, (gamma, beta) = _inputs(shape), _affine(shape[-1])
        y = _apply(GroupNorm(groups=groups), x, gamma, beta)
        np.testing.assert_allclose(
            y, numpy_group_norm(x, used, gamma, beta), rtol=1e-12, atol=1e-12
        )
        reference = nn.GroupNorm(num_groups=used, epsilon=EPSILON, use_fast_variance=False)
        np.testing.assert_allclose(y, _apply(reference, x, gamma, beta), rtol=1e-12, atol=1e-12)
        if used > 1:  # a group other than the first is normalised on its own statistics
            assert not np.allclose(y, numpy_layer_norm(x, gamma, beta), atol=1e-3)


@pytest.mark.parametrize("shape", SHAPES)
def test_rms_norm_matches_its_closed_form_and_flax(shape):
    with jax.enable_x64(True):
        x, (gamma, _) = _inputs(shape), _affine(shape[-1])
        y = _apply(RMSNorm(), x, gamma)
        np.testing.assert_allclose(y, numpy_rms_norm(x, gamma), rtol=1e-12, atol=1e-12)
        axes = tuple(range(1, len(shape)))
        reference = nn.RMSNorm(
            epsilon=EPSILON, reduction_axes=axes, feature_axes=-1, use_fast_variance=False
        )
        np.testing.assert_allclose(y, _apply(reference, x, gamma), rtol=1e-12, atol=1e-12)
        # No centring: a constant shift of the input changes the output (LayerNorm's would not).
        assert not np.allclose(_apply(RMSNorm(), x + 1.0, gamma), y, atol=1e-3)


@pytest.mark.parametrize(
    "layer, reference",
    [
        (LayerNorm(), lambda x, g, b, eps: numpy_layer_norm(x, g, b, eps)),
        (GroupNorm(groups=2), lambda x, g, b, eps: numpy_group_norm(x, 2, g, b, eps)),
        (RMSNorm(), lambda x, g, b, eps: numpy_rms_norm(x, g, eps)),
    ],
)
def test_epsilon_is_inside_the_root_and_is_batchnorms(layer, reference):
    # Values so small that their variance (~1e-8) is far below eps: the output is ~x / sqrt(eps),
    # far from the unit scale a formula without eps would give.
    with jax.enable_x64(True):
        x = _inputs((2, 2, 2, 6), spread=1e-4)
        gamma, beta = _affine(6)
        beta = beta if not isinstance(layer, RMSNorm) else None
        y = _apply(layer, x, gamma, beta)
        b = beta if beta is not None else 0.0
        np.testing.assert_allclose(y, reference(x, gamma, b, 1e-5), rtol=1e-10, atol=1e-12)
        assert not np.allclose(y, reference(x, gamma, b, 0.0), rtol=1e-2)
        assert not np.allclose(y, reference(x, gamma, b, 1e-6), rtol=1e-2)


def test_group_count_is_the_largest_divisor_not_above_the_bound():
    # Convolutions (H x W = 16 positions): Wu and He's 32 groups where the channels allow.
    assert [group_count(c, 32, 16) for c in (1, 8, 16, 32, 48, 64, 100, 512)] == [
        1, 8, 16, 32, 24, 32, 25, 32,
    ]  # fmt: skip
    assert group_count(38, 32, 4) == 19 and group_count(7, 32, 4) == 7
    assert group_count(6, 1) == 1 and group_count(1, 32) == 1
    # Dense layers: groups of at least two units (100 -> 25 groups of 4, 12 -> 6 of 2, 7 -> 1).
    assert [group_count(c, 32) for c in (100, 64, 12, 10, 7, 2)] == [25, 32, 6, 5, 1, 1]
    with pytest.raises(ValueError, match="positive"):
        group_count(8, 0)


def test_a_group_of_one_value_is_refused():
    # A dense layer of one unit: x - mean is 0 whatever x is, x / rms its sign.
    for layer, name in ((LayerNorm(), "LayerNorm"), (GroupNorm(), "GroupNorm"), (RMSNorm(), "RMS")):
        with pytest.raises(ValueError, match=f"{name}.* groups of 1 value per example"):
            layer.init(jax.random.key(0), jnp.ones((4, 1)))
    # The deep linear network's 10 units: 5 groups of two.
    model = create_dln("dln3", norm="groupnorm")
    _, state = model.apply(
        init_variables(model, jax.random.key(0), (10,)),
        jnp.ones((2, 10)),
        mutable=["intermediates"],
        capture_intermediates=True,
    )
    assert state["intermediates"]["GroupNorm_0"]["__call__"][0].shape == (2, 10)


# --- weight normalisation -----------------------------------------------------------------------


def test_weight_normalised_kernel_has_norm_g_per_unit_and_ignores_vs_scale():
    with jax.enable_x64(True):
        rng = np.random.default_rng(0)
        v = rng.normal(size=(3, 3, 4, 5))
        g = rng.uniform(0.5, 2.0, size=5)
        w = np.asarray(weight_normalize(jnp.asarray(v), jnp.asarray(g)))
        norms = np.sqrt((w**2).sum(axis=(0, 1, 2)))
        np.testing.assert_allclose(norms, g, rtol=1e-13)
        np.testing.assert_allclose(w, g * v / np.sqrt((v**2).sum(axis=(0, 1, 2))), rtol=1e-13)
        scaled = weight_normalize(jnp.asarray(v * np.array([3.7, 0.01, 1.0, 50.0, 2.0])), g)
        np.testing.assert_allclose(scaled, w, rtol=1e-12)
        np.testing.assert_allclose(
            kernel_norm(jnp.asarray(v)), np.linalg.norm(v.reshape(-1, 5), axis=0)
        )


def _with_kernels_scaled(params, factor):
    """Returns ``params`` with every weight-normalised ``kernel`` (v) multiplied by ``factor``."""

    def scale(path, leaf):
        names = [getattr(p, "key", None) for p in path]
        return (
            leaf * factor if names[-1] == "kernel" and "scale" in _siblings(params, names) else leaf
        )

    return jax.tree_util.tree_map_with_path(scale, params)


def _siblings(params, names):
    node = params
    for name in names[:-1]:
        node = node[name]
    return node


@pytest.mark.parametrize("arch, shape", [("vgg11", (32, 32, 3)), ("mlp", (28, 28, 1))])
def test_weightnorm_starts_as_the_plain_network_and_ignores_the_scale_of_v(arch, shape):
    x = jax.random.normal(jax.random.key(1), (2, *shape))
    plain = create_model(arch, width=0.0625, conv_impl="xla")
    normed = create_model(arch, width=0.0625, norm="weightnorm", conv_impl="xla")
    v_plain = init_variables(plain, jax.random.key(0), shape)
    v_normed = init_variables(normed, jax.random.key(0), shape)
    # g starts at ||v||: the same draw computes the same function at step 0.
    y_plain = plain.apply(v_plain, x, train=True)
    y_normed = normed.apply(v_normed, x, train=True)
    np.testing.assert_allclose(y_normed, y_plain, rtol=1e-4, atol=1e-5)
    assert v_normed["batch_stats"] == {}
    layers = [k for k, v in v_normed["params"].items() if "scale" in v]
    assert len(layers) == (8 if arch == "vgg11" else 3)  # every conv / hidden layer, no read-out
    # Scaling every v changes no output.
    scaled = {**v_normed, "params": _with_kernels_scaled(v_normed["params"], 7.5)}
    np.testing.assert_allclose(normed.apply(scaled, x, train=True), y_normed, rtol=1e-4, atol=1e-5)


def test_weightnorm_gradient_of_v_is_orthogonal_to_v():
    # Salimans and Kingma's eq. (4): grad_v L = (g / ||v||) (I - w w^T / ||w||^2) grad_w L, so
    # v . grad_v L = 0 for every output unit, and grad_g L = grad_w L . v / ||v||.
    with jax.enable_x64(True):
        layer = WeightNormDense(3, param_dtype=jnp.float64)
        x = jax.random.normal(jax.random.key(0), (5, 4), jnp.float64)
        target = jax.random.normal(jax.random.key(1), (5, 3), jnp.float64)
        params = layer.init(jax.random.key(2), x)["params"]
        params = {**params, "scale": jnp.array([0.5, 1.5, 3.0])}

        def loss(p):
            return ((layer.apply({"params": p}, x) - target) ** 2).sum()

        grads = jax.grad(loss)(params)
        v = params["kernel"]
        np.testing.assert_allclose((v * grads["kernel"]).sum(0), 0.0, atol=1e-12)
        w = weight_normalize(v, params["scale"])
        grad_w = jax.grad(lambda w: ((x @ w + params["bias"] - target) ** 2).sum())(w)
        np.testing.assert_allclose(
            grads["scale"], (grad_w * v).sum(0) / np.linalg.norm(v, axis=0), rtol=1e-12
        )


# --- in the networks ---------------------------------------------------------------------------


@pytest.mark.parametrize(
    "arch, norm",
    [("mlp", norm) for norm in PER_EXAMPLE]
    + [("vgg11", norm) for norm in PER_EXAMPLE if norm != "groupnorm"],
)
def test_gradients_flow_through_every_normaliser(arch, norm):
    shape = (32, 32, 3) if arch == "vgg11" else (28, 28, 1)
    model = create_model(arch, width=0.0625, norm=norm, conv_impl="xla")
    variables = init_variables(model, jax.random.key(0), shape)
    x = jax.random.normal(jax.random.key(1), (2, *shape))
    labels = jnp.arange(2)

    def loss(params):
        logits, _ = model.apply(
            {"params": params, "batch_stats": variables["batch_stats"]},
            x,
            train=True,
            mutable=["batch_stats"],
        )
        return -jnp.take_along_axis(jax.nn.log_softmax(logits), labels[:, None], 1).mean()

    grads = jax.grad(loss)(variables["params"])
    leaves = jax.tree.leaves(grads)
    assert all(bool(jnp.isfinite(g).all()) for g in leaves)
    # Every layer learns: each kernel's gradient is nonzero.
    kernels = [
        g for path, g in jax.tree_util.tree_leaves_with_path(grads) if "kernel" in str(path[-1])
    ]
    assert kernels and all(float(jnp.abs(g).max()) > 0 for g in kernels)
    # The per-example normalisers keep no statistics: train and eval mode agree.
    assert variables["batch_stats"] == {}
    np.testing.assert_allclose(
        model.apply(variables, x, train=False),
        model.apply(variables, x, train=True),
        rtol=1e-6,
    )


@pytest.mark.parametrize("placement", ["before", "after"])
def test_layernorm_sits_where_the_placement_says(placement):
    model = create_model("mlp", norm="layernorm", placement=placement)
    variables = init_variables(model, jax.random.key(0), (28, 28, 1))
    x = jax.random.normal(jax.random.key(1), (3, 28, 28, 1))
    _, state = model.apply(
        variables, x, train=True, mutable=["intermediates"], capture_intermediates=True
    )
    inter = state["intermediates"]
    dense = np.asarray(inter["Dense_0"]["__call__"][0], np.float64)
    normed = np.asarray(inter["LayerNorm_0"]["__call__"][0], np.float64)
    seen = dense if placement == "before" else 1 / (1 + np.exp(-dense))
    np.testing.assert_allclose(normed, numpy_layer_norm(seen, 1.0, 0.0), rtol=1e-4, atol=1e-5)
    # The sown input to the sigmoid is the normalised output before it, the raw one after.
    preact = np.asarray(inter["preact1"][0])
    np.testing.assert_allclose(preact, normed if placement == "before" else dense, rtol=1e-6)


# --- names -------------------------------------------------------------------------------------


def test_names_are_registered_where_config_and_models_look():
    assert set(NORMALIZERS) <= set(NORMS) and set(ACTIVATIONS) == set(MLP_ACTIVATIONS)
    assert [group_norm_groups(n) for n in ("groupnorm", "groupnorm8", "groupnorm1")] == [32, 8, 1]
    for bad in ("groupnorm0", "groupnorm08", "groupnorm-2", "groupnormx", "group"):
        assert group_norm_groups(bad) is None and not is_norm(bad)
    assert isinstance(make_norm("groupnorm8", True), GroupNorm)
    assert make_norm("groupnorm8", True).groups == 8 and make_norm("weightnorm", True) is None
    with pytest.raises(ValueError, match="or groupnorm<G>"):
        make_norm("groupnorm0", True)


def test_the_command_line_accepts_the_variants_and_the_mlp(tiny_config):
    from landscape.app.cli.common import CliError
    from landscape.app.cli.run import build_config

    cfg = build_config("smoke", variants=",".join(PER_EXAMPLE), arch="mlp_tanh")
    assert cfg.model_for("groupnorm2").norm == "groupnorm2" and cfg.model.arch == "mlp_tanh"
    with pytest.raises(CliError, match="groupnorm<G>"):
        build_config("smoke", variants="groupnorm0")
    with pytest.raises(CliError, match="mlp, mlp_relu, mlp_tanh"):
        build_config("smoke", arch="mlp_gelu")
    with pytest.raises(ConfigError, match="dln"):
        validate(tiny_config.replace(data="dln", model=tiny_config.model.__class__(arch="mlp")))


def test_vgg_refuses_images_too_small_for_its_five_pools():
    # MNIST's 28 x 28 pools to 1 x 1 before the fifth pool: one line pointing at the MLP.
    model = create_model("vgg11", width=0.0625, conv_impl="xla")
    with pytest.raises(ValueError, match=r"at least 32x32 pixels, got 28x28.*--arch mlp"):
        jax.eval_shape(lambda: init_variables(model, jax.random.key(0), (28, 28, 1)))
