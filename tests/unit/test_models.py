"""Models: parameter counts, shapes, and BatchNorm's train/eval behaviour (SPEC, seed notes)."""

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
import pytest

from landscape.models import (
    auto_conv_impl,
    conv3x3_canonical,
    count_params,
    create_model,
    init_variables,
    resolved_conv_impls,
)


def vgg_param_count(widths, num_classes=10, batchnorm=False):
    """Counts parameters from the layer list by hand: 3x3 kernels + biases (+ BN scale/shift)."""
    total, cin = 0, 3
    for w in widths:
        total += 9 * cin * w + w + (2 * w if batchnorm else 0)
        cin = w
    return total + cin * num_classes + num_classes


VGG11 = (64, 128, 256, 256, 512, 512, 512, 512)


@pytest.mark.parametrize("norm", ["none", "batchnorm"])
def test_vgg11_full_width_parameter_count(norm):
    model = create_model("vgg11", norm=norm)
    variables = jax.eval_shape(lambda k: init_variables(model, k), jax.random.key(0))
    expected = vgg_param_count(VGG11, batchnorm=norm == "batchnorm")
    assert count_params(variables["params"]) == expected
    # The widely quoted CIFAR VGG-11 counts (one linear classifier on the 512-d feature).
    assert expected == {"none": 9_225_610, "batchnorm": 9_231_114}[norm]


@pytest.mark.parametrize("arch", ["vgg11", "vgg13", "vgg16", "vgg19"])
@pytest.mark.parametrize("norm", ["none", "batchnorm"])
def test_forward_shapes_and_empty_batch_stats(arch, norm):
    model = create_model(arch, width=0.0625, norm=norm)
    variables = init_variables(model, jax.random.key(0))
    x = jnp.ones((2, 32, 32, 3))
    logits, updates = model.apply(variables, x, train=True, mutable=["batch_stats"])
    assert logits.shape == (2, 10)
    if norm == "none":
        assert variables["batch_stats"] == {}
        assert updates.get("batch_stats", {}) == {}
    else:
        assert len(jax.tree.leaves(variables["batch_stats"])) > 0


def test_width_multiplier_scales_channels():
    model = create_model("vgg11", width=0.25)
    params = init_variables(model, jax.random.key(0))["params"]
    assert params["Conv3x3_0"]["kernel"].shape == (3, 3, 3, 16)
    assert params["Dense_0"]["kernel"].shape == (128, 10)


def test_shifted_convolution_matches_xla():
    x = jax.random.normal(jax.random.key(1), (4, 32, 32, 5))
    outs = {}
    for impl in ("xla", "shifted"):
        model = create_model("vgg11", width=0.0625, conv_impl=impl)
        variables = init_variables(model, jax.random.key(0), image_shape=(32, 32, 5))
        outs[impl] = model.apply(variables, x, train=True, mutable=["batch_stats"])[0]
    np.testing.assert_allclose(outs["shifted"], outs["xla"], rtol=2e-5, atol=2e-6)


def _xla_conv(x, kernel):
    return jax.lax.conv_general_dilated(
        x, kernel, (1, 1), "SAME", dimension_numbers=("NHWC", "HWIO", "NHWC")
    )


@pytest.mark.parametrize("size", [1, 2, 5, 8])
def test_canonical_convolution_gradient_equals_jax_rule_in_float64(size):
    """The hand-written gradient against JAX's own rule, with a nonlinear loss, odd map sizes."""
    with jax.enable_x64(True):
        x = jax.random.normal(jax.random.key(0), (3, size, size + 1, 4), jnp.float64)
        kernel = jax.random.normal(jax.random.key(1), (3, 3, 4, 6), jnp.float64)
        weight = jax.random.normal(jax.random.key(2), (3, size, size + 1, 6), jnp.float64)

        def loss(conv):
            return lambda x, k: jnp.sum(weight * jnp.tanh(conv(x, k)))

        want = jax.grad(loss(_xla_conv), argnums=(0, 1))(x, kernel)
        got = jax.grad(loss(conv3x3_canonical), argnums=(0, 1))(x, kernel)
        np.testing.assert_allclose(conv3x3_canonical(x, kernel), _xla_conv(x, kernel), rtol=1e-12)
        for g, w in zip(got, want, strict=True):
            np.testing.assert_allclose(g, w, rtol=1e-10, atol=1e-12)
        # Hessian-vector products (jvp of grad), as landscape.curvature computes them.
        v = jax.random.normal(jax.random.key(3), kernel.shape, jnp.float64)

        def hvp(conv):
            return jax.jvp(lambda k: jax.grad(loss(conv), argnums=1)(x, k), (kernel,), (v,))[1]

        np.testing.assert_allclose(hvp(conv3x3_canonical), hvp(_xla_conv), rtol=1e-10, atol=1e-12)


def test_canonical_convolution_has_only_canonical_convolutions_inside_a_loop():
    """The point of the form: inside lax.map every convolution XLA compiles is NHWC/HWIO, which
    XLA's CPU backend runs through its library; JAX's own rule leaves the backward ones in other
    dimension orders there (the slow path). Also the same gradients inside and outside the loop."""
    x = jax.random.normal(jax.random.key(0), (2, 8, 8, 3))
    kernel = jax.random.normal(jax.random.key(1), (3, 3, 3, 4))

    def grads(conv, k):
        return jax.grad(lambda x, k: jnp.sum(conv(x, k) ** 2), argnums=(0, 1))(x, k)

    scales = jnp.array([0.5, 1.0, 2.0])

    def looped(conv):
        return jax.jit(lambda k: jax.lax.map(lambda s: grads(conv, k * s), scales))

    def dim_labels(conv):
        hlo = looped(conv).lower(kernel).compile().as_text()
        return {
            line.split("dim_labels=")[1].split(",")[0]
            for line in hlo.splitlines()
            if " convolution(" in line
        }

    assert dim_labels(conv3x3_canonical) == {"b01f_01io->b01f"}
    assert dim_labels(_xla_conv) != {"b01f_01io->b01f"}  # what the custom gradient avoids
    in_loop = looped(conv3x3_canonical)(kernel)
    for i, s in enumerate(scales):
        for g, w in zip((a[i] for a in in_loop), grads(_xla_conv, kernel * s), strict=True):
            np.testing.assert_allclose(g, w, rtol=1e-5, atol=1e-5)


def test_auto_convolution_form_by_backend_and_map_size():
    assert auto_conv_impl(32, 32, "cpu") == "canonical"
    assert auto_conv_impl(4, 4, "cpu") == "canonical"
    assert auto_conv_impl(2, 2, "cpu") == "shifted"
    assert auto_conv_impl(2, 2, "gpu") == "xla"
    assert auto_conv_impl(32, 32, "tpu") == "xla"
    # VGG-11's maps are 32, 16, 8, 8, 4, 4, 2, 2 pixels wide.
    assert (
        resolved_conv_impls("vgg11", "auto", backend="cpu") == ["canonical"] * 6 + ["shifted"] * 2
    )
    assert resolved_conv_impls("vgg11", "auto", backend="gpu") == ["xla"] * 8
    assert resolved_conv_impls("vgg13", "shifted") == ["shifted"] * 10


def test_unknown_convolution_form_is_refused():
    with pytest.raises(ValueError, match="unknown convolution implementation 'fft'"):
        create_model("vgg11", conv_impl="fft")
    with pytest.raises(ValueError, match="unknown convolution implementation 'fft'"):
        create_model("vgg11", conv_impl=("xla", "fft"))


def test_batchnorm_train_mode_normalises_with_batch_statistics_eval_with_running():
    model = create_model("vgg11", width=0.0625, norm="batchnorm")
    variables = init_variables(model, jax.random.key(0))
    x = jax.random.normal(jax.random.key(2), (16, 32, 32, 3)) * 3.0 + 1.0
    # Capture the first BN layer's input and output in train mode.
    _, state = model.apply(
        variables,
        x,
        train=True,
        mutable=["batch_stats", "intermediates"],
        capture_intermediates=True,
    )
    inter = state["intermediates"]
    conv_out = inter["Conv3x3_0"]["__call__"][0]
    bn_out = inter["BatchNorm_0"]["__call__"][0]
    mu = conv_out.mean(axis=(0, 1, 2))
    var = conv_out.var(axis=(0, 1, 2))  # biased, as BN uses
    expected = (conv_out - mu) / jnp.sqrt(var + 1e-5)  # gamma = 1, beta = 0 at init
    np.testing.assert_allclose(bn_out, expected, rtol=1e-4, atol=1e-4)
    # Running averages move towards the batch statistics by (1 - momentum) = 0.1 ...
    running = state["batch_stats"]["BatchNorm_0"]
    np.testing.assert_allclose(running["mean"], 0.1 * mu, rtol=1e-4, atol=1e-6)
    np.testing.assert_allclose(running["var"], 0.9 + 0.1 * var, rtol=1e-4)
    # ... and in eval mode the running averages (not the batch) normalise, and nothing is updated.
    _, eval_state = model.apply(
        variables, x, train=False, mutable=["intermediates"], capture_intermediates=True
    )
    eval_bn = eval_state["intermediates"]["BatchNorm_0"]["__call__"][0]
    init_stats = variables["batch_stats"]["BatchNorm_0"]
    np.testing.assert_allclose(
        eval_bn,
        (conv_out - init_stats["mean"]) / jnp.sqrt(init_stats["var"] + 1e-5),
        rtol=1e-4,
        atol=1e-4,
    )
    assert "batch_stats" not in eval_state


def test_unknown_names_give_clear_errors():
    with pytest.raises(ValueError, match="unknown normalisation"):
        create_model("vgg11", norm="instancenorm")
    with pytest.raises(ValueError, match="unknown architecture"):
        create_model("vgg7")


@pytest.mark.parametrize("shape", [(3, 8, 8, 4), (2, 7, 5, 3), (1, 2, 2, 1)])
def test_max_pool_equals_flax_in_value_and_gradient_even_with_ties(shape):
    """max_pool_2x2 is nn.max_pool(2x2, stride 2) exactly: values, and gradients that go to the
    first maximum of a tied window (rounded inputs tie often), odd sizes cropped as VALID does."""
    from landscape.models import max_pool_2x2

    x = jax.random.normal(jax.random.key(1), shape)
    ties = jnp.round(x)
    weights = jax.random.normal(
        jax.random.key(2), (shape[0], shape[1] // 2, shape[2] // 2, shape[3])
    )

    def flax_pool(v):
        return nn.max_pool(v, (2, 2), strides=(2, 2))

    for v in (x, ties, jnp.zeros(shape)):
        np.testing.assert_array_equal(max_pool_2x2(v), flax_pool(v))
        ours = jax.grad(lambda u: jnp.sum(weights * max_pool_2x2(u)))(v)
        theirs = jax.grad(lambda u: jnp.sum(weights * flax_pool(u)))(v)
        np.testing.assert_array_equal(ours, theirs)
    assert int(jnp.sum(jax.grad(lambda u: jnp.sum(max_pool_2x2(u)))(ties) != 0)) <= weights.size
    for i, j in ((0, 0), (0, 1), (1, 1)):  # a NaN anywhere in a window propagates, as in flax
        assert bool(jnp.isnan(max_pool_2x2(x.at[0, i, j, 0].set(jnp.nan))[0, 0, 0, 0]))


def _resnet_params(blocks: int, norm_params: int = 2) -> int:
    """He et al.'s CIFAR ResNet counted by hand: 3x3 convs with biases, two BatchNorm
    parameters per channel after each conv, option A shortcuts (none), a 64-to-10 classifier."""
    conv = lambda cin, cout: 9 * cin * cout + cout + norm_params * cout  # noqa: E731
    total, cin = conv(3, 16), 16
    for cout in (16, 32, 64):
        for _ in range(blocks):
            total += conv(cin, cout) + conv(cout, cout)
            cin = cout
    return total + 64 * 10 + 10


@pytest.mark.parametrize("depth", [20, 32, 56, 110])
def test_resnets_have_he_et_al_s_parameters(depth):
    from landscape.models import count_params, create_model

    model = create_model(f"resnet{depth}", norm="batchnorm")
    variables = model.init(jax.random.key(0), jnp.zeros((1, 32, 32, 3)), train=False)
    assert count_params(variables["params"]) == _resnet_params((depth - 2) // 6)
    assert count_params(variables["params"]) == count_params(
        create_model(f"resnet{depth}_noshort", norm="batchnorm").init(
            jax.random.key(0), jnp.zeros((1, 32, 32, 3)), train=False
        )["params"]
    )  # the shortcuts add no parameters (option A)


@pytest.mark.parametrize(("arch", "depth"), [("resnet8", 8), ("resnet20_noshort", 20)])
def test_a_cifar_resnet_has_6n_plus_2_weight_layers(arch, depth):
    from landscape.models import create_model

    x = jnp.zeros((1, 32, 32, 3))
    params = create_model(arch, width=0.25).init(jax.random.key(0), x, train=False)["params"]
    convs = [n for n in params if n.startswith("Conv3x3")]
    dense = [n for n in params if n.startswith("Dense")]
    assert len(convs) + len(dense) == depth and len(dense) == 1


def test_option_a_shortcuts_carry_the_input_past_silent_blocks():
    """With every block's convolutions zero, a block outputs ReLU(its shortcut): the stem's
    features reach the classifier through the zero-padded, subsampled shortcuts, and without
    shortcuts nothing does."""
    from landscape.models import create_model

    x = jax.random.normal(jax.random.key(1), (2, 32, 32, 3))
    outs = {}
    for arch in ("resnet20", "resnet20_noshort"):
        model = create_model(arch, width=0.5)
        params = model.init(jax.random.key(0), x, train=False)["params"]
        stem = "Conv3x3_0"
        silent = {
            name: (jax.tree.map(jnp.zeros_like, p) if name.startswith("Conv3x3") and name != stem else p)
            for name, p in params.items()
        }  # fmt: skip
        outs[arch] = model.apply({"params": silent}, x, train=False)
    stem_out = jax.nn.relu(
        jax.lax.conv_general_dilated(
            x, params["Conv3x3_0"]["kernel"], (1, 1), ((1, 1), (1, 1)),
            dimension_numbers=("NHWC", "HWIO", "NHWC"),
        ) + params["Conv3x3_0"]["bias"]
    )  # fmt: skip
    # Two subsamplings (stride 2), channels 8 -> 16 -> 32 padded with zeros on both sides.
    pooled = stem_out[:, ::4, ::4, :].mean(axis=(1, 2))
    padded = jnp.pad(pooled, ((0, 0), (12, 12)))
    dense = params["Dense_0"]
    np.testing.assert_allclose(
        outs["resnet20"], padded @ dense["kernel"] + dense["bias"], rtol=1e-5
    )
    np.testing.assert_allclose(outs["resnet20_noshort"], jnp.broadcast_to(dense["bias"], (2, 10)))


@pytest.mark.parametrize("impl", ["canonical", "shifted"])
def test_strided_convolutions_agree_across_implementations(impl):
    from landscape.models import Conv3x3

    x = jax.random.normal(jax.random.key(1), (2, 8, 8, 4))
    reference = Conv3x3(6, impl="xla", stride=2)
    params = reference.init(jax.random.key(2), x)
    np.testing.assert_allclose(
        Conv3x3(6, impl=impl, stride=2).apply(params, x), reference.apply(params, x), atol=1e-5
    )


def test_vit_places_its_token_normalisation_before_or_after_each_sub_layer():
    """Pre-LN normalises each sub-layer's input and the final tokens; post-LN each residual
    sum: with LayerNorm's scale and shift at their initial 1 and 0, every token of a post-LN
    block's output has mean 0 and variance 1 (epsilon aside), and a pre-LN one does not."""
    from landscape.models import TransformerBlock, create_vit

    x = 3.0 + 2.0 * jax.random.normal(jax.random.key(0), (2, 5, 16))
    for placement, normalised in (("after", True), ("before", False)):
        block = TransformerBlock(16, 4, "layernorm", placement)
        params = block.init(jax.random.key(1), x)
        y, preact = block.apply(params, x)
        assert preact.shape == (2, 5, 32)
        mean_zero = np.allclose(y.mean(-1), 0, atol=1e-5)
        unit_variance = np.allclose(y.var(-1), 1, atol=1e-3)
        assert (mean_zero and unit_variance) is normalised, placement
    none = TransformerBlock(16, 4, "none", "before")
    assert "LayerNorm_0" not in none.init(jax.random.key(1), x)["params"]
    vit = create_vit("vit2", width=0.5, norm="rmsnorm")
    variables = vit.init(jax.random.key(0), jnp.zeros((2, 32, 32, 3)))
    assert vit.dim == 32 and [k for k in variables["params"] if "Block" in k] == [
        "TransformerBlock_0", "TransformerBlock_1"
    ]  # fmt: skip
    _, sown = vit.apply(variables, jnp.ones((2, 32, 32, 3)), mutable=["intermediates"])
    assert sorted(sown["intermediates"]) == ["preact1", "preact2"]
    with pytest.raises(ValueError, match="normalises tokens with none, layernorm or rmsnorm"):
        create_vit(norm="batchnorm")
