"""Networks: the VGG family at CIFAR size, Ioffe and Szegedy's MNIST MLP and the paper's deep
linear network (App. A.1), with the normalisation layer chosen by name.

Every model here is a Flax module called as ``model.apply(variables, images, train=...)``.
Models without normalisation still share the BatchNorm code path: their ``batch_stats``
collection is simply empty, so the trainer and the probe never branch on the variant.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Sequence
from typing import Any

import flax.linen as nn
import jax
import jax.numpy as jnp

from landscape.config import (
    CONV_IMPLS,
    DLN_DEPTH,
    MLP_ARCHS,
    PLACEMENTS,
    RESNET_ARCHS,
    dln_depth,
    group_norm_groups,
    is_dln,
    is_mlp,
    is_resnet,
    is_vit,
    mlp_activation,
    register_norm_name,
    resnet_blocks,
    vit_depth,
)
from landscape.norms import (
    PAPER_NOISE,
    NoiseConfig,
    WeightNormDense,
    check_noise,
    group_norm_factory,
    layer_norm_factory,
    lp_norm_factory,
    noisy_norm_factory,
    rms_norm_factory,
    weight_norm_params,
)

# Conv widths of the VGG family (Simonyan & Zisserman 2015, table 1); "M" is a 2x2 max-pool.
VGG_CONFIGS: dict[str, tuple[int | str, ...]] = {
    "vgg11": (64, "M", 128, "M", 256, 256, "M", 512, 512, "M", 512, 512, "M"),
    "vgg13": (64, 64, "M", 128, 128, "M", 256, 256, "M", 512, 512, "M", 512, 512, "M"),
    "vgg16": (
        *(64, 64, "M", 128, 128, "M"),
        *(256, 256, 256, "M", 512, 512, 512, "M", 512, 512, 512, "M"),
    ),
    "vgg19": (
        *(64, 64, "M", 128, 128, "M", 256, 256, 256, 256, "M"),
        *(512, 512, 512, 512, "M", 512, 512, 512, 512, "M"),
    ),
}

# The paper initialises both variants with Glorot (docs/definitions.md#the-papers-protocol).
glorot = nn.initializers.glorot_uniform()


def scaled_width(channels: int, width: float) -> int:
    """Returns the number of channels after applying the width multiplier (at least 1)."""
    return max(1, round(channels * width))


_NHWC = ("NHWC", "HWIO", "NHWC")


def _same_conv(x: jax.Array, kernel: jax.Array) -> jax.Array:
    # Stride 1, one pixel of zero padding on each side: for a 3x3 kernel the 'same' convolution.
    return jax.lax.conv_general_dilated(
        x, kernel, (1, 1), ((1, 1), (1, 1)), dimension_numbers=_NHWC
    )


@jax.custom_vjp
def conv3x3_canonical(x: jax.Array, kernel: jax.Array) -> jax.Array:
    """Returns the 'same' 3x3 convolution of ``x`` (NHWC) with ``kernel`` (HWIO), no bias.

    The value is ``lax.conv_general_dilated``'s; the gradient is written by hand so that all three
    convolutions (forward, input gradient, kernel gradient) have XLA's canonical dimension
    numbers (NHWC input, HWIO kernel, NHWC output), with the transposes as separate operations.
    JAX's own transposition rule emits the two backward convolutions in other dimension orders.
    XLA's CPU backend rewrites those into the canonical form, which it runs through its fast
    library path, at the top level of a program but not inside a loop body (``lax.map``,
    ``fori_loop``): there they fall back to a naive loop, many times slower (docs/performance.md
    has the measurement). The values are identical to JAX's rule. Second derivatives by ``jax.jvp`` of ``jax.grad`` (Hessian-vector products)
    work; forward mode through the function alone (``jax.jvp`` of the loss) does not, as for any
    ``jax.custom_vjp``.
    """
    return _same_conv(x, kernel)


def _canonical_fwd(x, kernel):
    return _same_conv(x, kernel), (x, kernel)


def _canonical_bwd(residuals, dy):
    x, kernel = residuals
    # Input gradient: the 'same' convolution of dy with the kernel flipped in space and with its
    # input and output channels swapped.
    dx = _same_conv(dy, jnp.flip(kernel, (0, 1)).transpose(0, 1, 3, 2))
    # Kernel gradient: a convolution of x with dy as the kernel, with x's channels as the batch
    # and the batch as the channels: (Cin, H, W, B) * (H, W, B, Cout) -> (Cin, 3, 3, Cout).
    dk = _same_conv(x.transpose(3, 1, 2, 0), dy.transpose(1, 2, 0, 3))
    return dx, dk.transpose(1, 2, 0, 3)


conv3x3_canonical.defvjp(_canonical_fwd, _canonical_bwd)


# On CPU the smallest feature map (height x width) that goes to XLA's convolution under "auto";
# smaller maps use the shifted form.
CPU_CONV_MIN_PIXELS = 16


def auto_conv_impl(height: int, width: int, backend: str | None = None) -> str:
    """Returns the convolution form ``impl="auto"`` uses for a ``height`` x ``width`` input.

    Off the CPU: ``"xla"`` (cuDNN and its TPU counterpart handle every shape). On the CPU:
    ``"canonical"`` for maps of at least 4x4 pixels and ``"shifted"`` below. On the larger maps
    XLA's convolution (Eigen's, as ``landscape.app.runtime`` selects) beats the shifted slices;
    on the 2x2 maps it costs several times the shifted form. The canonical
    gradient keeps XLA's convolutions fast inside the probe's loop (see ``conv3x3_canonical``).
    docs/performance.md has the measurements.
    """
    if (backend or jax.default_backend()) != "cpu":
        return "xla"
    return "canonical" if height * width >= CPU_CONV_MIN_PIXELS else "shifted"


def resolved_conv_impls(
    arch: str, conv_impl: str = "auto", image_size: int = 32, backend: str | None = None
) -> list[str]:
    """Returns the convolution form each conv layer of VGG ``arch`` uses, first layer first."""
    size, impls = image_size, []
    for v in VGG_CONFIGS[arch]:
        if v == "M":
            size //= 2
        else:
            impls.append(auto_conv_impl(size, size, backend) if conv_impl == "auto" else conv_impl)
    return impls


class Conv3x3(nn.Module):
    """A 3x3, stride 1, 'same'-padded convolution with a choice of implementation.

    ``impl="xla"`` is ``lax.conv_general_dilated`` with JAX's gradient. ``"canonical"`` is the
    same convolution with a gradient whose convolutions XLA's CPU backend runs fast inside loops
    (``conv3x3_canonical``). ``"shifted"`` writes it as nine shifted slices concatenated on
    channels followed by one matrix product, which XLA's CPU backend runs much faster than its
    convolution for small maps with many channels. ``"auto"`` picks by backend and map size
    (``auto_conv_impl``). All give the same numbers to float32 rounding, and the parameters are
    the same (kernel HWIO, bias), so checkpoints are shared.
    """

    features: int
    impl: str = "xla"
    # Salimans and Kingma's reparametrisation: the kernel used is g v / ||v|| per output channel,
    # ``kernel`` holding v and ``scale`` g (landscape.norms.weight_norm_params).
    weight_norm: bool = False
    stride: int = 1  # 2: every other output row and column (the ResNets' downsampling)
    kernel_init: Callable = glorot

    @nn.compact
    def __call__(self, x: jax.Array) -> jax.Array:
        in_features = x.shape[-1]
        shape = (3, 3, in_features, self.features)
        kernel = self.param("kernel", self.kernel_init, shape, jnp.float32)
        if self.weight_norm:
            kernel = weight_norm_params(self, kernel)
        bias = self.param("bias", nn.initializers.zeros, (self.features,), jnp.float32)
        impl = auto_conv_impl(x.shape[1], x.shape[2]) if self.impl == "auto" else self.impl
        if impl == "xla" and self.stride != 1:
            strides = (self.stride, self.stride)
            y = jax.lax.conv_general_dilated(
                x, kernel, strides, ((1, 1), (1, 1)), dimension_numbers=_NHWC
            )
            return y + bias
        if impl == "xla":
            y = _same_conv(x, kernel)
        elif impl == "canonical":
            y = conv3x3_canonical(x, kernel)
        elif impl == "shifted":
            height, width = x.shape[1], x.shape[2]
            padded = jnp.pad(x, ((0, 0), (1, 1), (1, 1), (0, 0)))
            patches = jnp.concatenate(
                [padded[:, i : i + height, j : j + width, :] for i in range(3) for j in range(3)],
                axis=-1,
            )
            y = patches @ kernel.reshape(9 * in_features, self.features)
        else:
            raise ValueError(f"unknown convolution implementation {self.impl!r}")
        # A strided 'same' convolution is the stride-1 one at every stride-th pixel.
        return y[:, :: self.stride, :: self.stride, :] + bias


# --- normalisation layers, chosen by name -----------------------------------------------------
#
# A normaliser is a factory ``(train: bool) -> Module | None``. Every name registered here is
# picked up by every model, the trainer, the probe and the CLI's ``--variants``.

NormFactory = Callable[[bool], nn.Module | None]


def _no_norm(train: bool) -> None:
    return None


def _batchnorm(train: bool) -> nn.Module:
    # PyTorch-compatible constants (momentum 0.1 there == 0.9 here, eps 1e-5). In train mode the
    # batch statistics normalise and the running averages are updated; in eval mode the running
    # averages normalise (docs/definitions.md#notation, train mode / eval mode).
    return nn.BatchNorm(use_running_average=not train, momentum=0.9, epsilon=1e-5)


NORMALIZERS: dict[str, NormFactory] = {
    "none": _no_norm,
    "batchnorm": _batchnorm,
    # The paper's other layers (landscape/norms.py): Algorithm 1's noise after BN (Sec. 2.1) or on
    # the network without BN, and l_p normalisation (Sec. 3.3).
    "noisy_batchnorm": noisy_norm_factory(batchnorm=True),
    "noisy_none": noisy_norm_factory(batchnorm=False),
    "l1": lp_norm_factory(1),
    "l2": lp_norm_factory(2),
    "linf": lp_norm_factory(math.inf),
    # Per-example normalisers (landscape/norms.py; docs/definitions.md#per-example-normalisers).
    # "groupnorm<G>" is built on demand by make_norm.
    "layernorm": layer_norm_factory(),
    "groupnorm": group_norm_factory(),
    "rmsnorm": rms_norm_factory(),
    # Weight normalisation reparametrises the kernels instead (KERNEL_NORMALIZERS): no layer.
    "weightnorm": _no_norm,
}
# The names whose factory also takes ``noise=NoiseConfig(...)``: the model's Algorithm 1 constants
# (ModelConfig.noise_*, the CLI's --noise-*) reach these two layers; every other layer ignores
# them, including one registered under another name with its own constants (noisy_norm_factory).
NOISY_NORMALIZERS = ("noisy_batchnorm", "noisy_none")
# The names that normalise the weights of every layer a normaliser would follow (its conv or
# hidden dense kernel) rather than that layer's output.
KERNEL_NORMALIZERS = ("weightnorm",)


def uses_weight_norm(norm: str) -> bool:
    """Returns True when the normalisation ``norm`` reparametrises the kernels (weightnorm)."""
    return norm in KERNEL_NORMALIZERS


def register_normalizer(name: str, factory: NormFactory) -> None:
    """Registers a normalisation layer so every model can select it by ``name``."""
    NORMALIZERS[name] = factory
    register_norm_name(name)


def make_norm(name: str, train: bool, noise: NoiseConfig = PAPER_NOISE) -> nn.Module | None:
    """Returns the normalisation module called ``name`` (None for no normalisation).

    ``noise`` (Algorithm 1's constants) is used by ``NOISY_NORMALIZERS`` only.
    """
    groups = group_norm_groups(name)
    try:
        factory = NORMALIZERS[name] if groups is None else group_norm_factory(groups)
    except KeyError:
        raise ValueError(
            f"unknown normalisation {name!r}; choose one of {', '.join(NORMALIZERS)} "
            "or groupnorm<G>"
        ) from None
    if name in NOISY_NORMALIZERS:
        return factory(train, noise=noise)
    return factory(train)


def _first_max(a: jax.Array, b: jax.Array) -> jax.Array:
    # ``a`` wins ties (and a NaN in either propagates), so the gradient goes to the first maximum.
    return jnp.where((a >= b) | jnp.isnan(a), a, b)


def max_pool_2x2(x: jax.Array) -> jax.Array:
    """Returns the 2x2 max-pool of ``x`` (batch, H, W, C) with stride 2: (batch, H//2, W//2, C).

    The same values and the same gradient as ``nn.max_pool(x, (2, 2), strides=(2, 2))``: a tie
    sends the gradient to the first maximum in row-major order, as XLA's select-and-scatter and
    PyTorch do. Written as three element-wise comparisons of the window's four slices, because
    the gradient of ``reduce_window`` (select-and-scatter) is slow on XLA's CPU backend
    (docs/performance.md has the measurement).
    An odd row or column is dropped, as VALID pooling does.
    """
    b, h, w, c = x.shape
    h2, w2 = h // 2, w // 2
    window = x[:, : 2 * h2, : 2 * w2].reshape(b, h2, 2, w2, 2, c)
    top = _first_max(window[:, :, 0, :, 0], window[:, :, 0, :, 1])
    bottom = _first_max(window[:, :, 1, :, 0], window[:, :, 1, :, 1])
    return _first_max(top, bottom)


class VGG(nn.Module):
    """VGG at CIFAR size: conv blocks from ``VGG_CONFIGS``, then one linear classifier.

    Each conv is followed by the normalisation (``norm``) and ReLU; ``placement`` says whether
    the normalisation comes before the ReLU (the paper's BN variant) or after it; ``noise`` holds
    Algorithm 1's constants for the noisy layers. ``weightnorm`` reparametrises every conv kernel
    instead (the classifier stays plain, as it has no normalisation in the other variants).
    Returns logits of shape (batch, num_classes).
    """

    depth: str = "vgg11"
    width: float = 1.0
    norm: str = "none"
    placement: str = "before"
    num_classes: int = 10
    conv_impl: str | Sequence[str] = "xla"
    noise: NoiseConfig = PAPER_NOISE

    @nn.compact
    def __call__(self, x: jax.Array, train: bool = True) -> jax.Array:
        layers = VGG_CONFIGS[self.depth]
        num_convs = sum(1 for v in layers if v != "M")
        impls = [self.conv_impl] * num_convs if isinstance(self.conv_impl, str) else self.conv_impl
        conv_index = 0
        image_size = x.shape[1:3]
        for v in layers:
            if v == "M":
                if min(x.shape[1:3]) < 2:
                    raise ValueError(
                        f"{self.depth} halves its input 5 times and needs images of at least "
                        f"32x32 pixels, got {image_size[0]}x{image_size[1]}; for small images "
                        "(MNIST's 28x28) use --arch mlp"
                    )
                x = max_pool_2x2(x)
                continue
            x = Conv3x3(
                scaled_width(int(v), self.width),
                impl=impls[conv_index],
                weight_norm=uses_weight_norm(self.norm),
            )(x)
            conv_index += 1
            x = normalise_and_activate(self, x, conv_index, train=train)
        x = x.reshape(x.shape[0], -1)
        return nn.Dense(self.num_classes, kernel_init=glorot, bias_init=nn.initializers.zeros)(x)


def create_model(
    arch: str = "vgg11",
    *,
    width: float = 1.0,
    norm: str = "none",
    placement: str = "before",
    num_classes: int = 10,
    conv_impl: str | Sequence[str] = "xla",
    noise: NoiseConfig = PAPER_NOISE,
) -> nn.Module:
    """Returns the Flax module named ``arch`` with the given normalisation and width.

    ``arch`` is a VGG (``vgg11`` ...), Ioffe and Szegedy's MLP (``mlp``, ``mlp_relu``,
    ``mlp_tanh``; ``conv_impl`` does not apply) or a deep linear network (``dln``,
    ``dln<depth>``), for which ``num_classes`` is the output size and ``placement`` and
    ``conv_impl`` do not apply. ``noise`` (Algorithm 1's constants, the paper's by default)
    applies to ``noisy_batchnorm`` and ``noisy_none`` only.
    """
    if is_dln(arch):
        return create_dln(arch, width=width, norm=norm, num_outputs=num_classes, noise=noise)
    if is_vit(arch):
        return create_vit(
            arch, width=width, norm=norm, placement=placement, num_classes=num_classes
        )
    if arch not in VGG_CONFIGS and not is_mlp(arch) and not is_resnet(arch):
        choices = ", ".join((*VGG_CONFIGS, *MLP_ARCHS, *RESNET_ARCHS))
        raise ValueError(f"unknown architecture {arch!r}; choose one of {choices}, dln or dlnN")
    make_norm(norm, True)  # validates the name early, with the list of choices
    if placement not in PLACEMENTS:
        raise ValueError(f"unknown placement {placement!r}; choose 'before' or 'after'")
    if width <= 0:
        raise ValueError(f"width must be positive, got {width}")
    check_noise(noise)
    if is_mlp(arch):
        return MLP(
            hidden=tuple(scaled_width(units, width) for units in MLP_HIDDEN),
            activation=mlp_activation(arch),
            norm=norm,
            placement=placement,
            num_classes=num_classes,
            noise=noise,
        )
    for impl in (conv_impl,) if isinstance(conv_impl, str) else conv_impl:
        if impl not in CONV_IMPLS:
            raise ValueError(
                f"unknown convolution implementation {impl!r}; choose one of {', '.join(CONV_IMPLS)}"
            )
    if not isinstance(conv_impl, str):
        conv_impl = tuple(conv_impl)
    if is_resnet(arch):
        if not isinstance(conv_impl, str):
            raise ValueError("a ResNet takes one convolution implementation for all its layers")
        blocks, shortcuts = resnet_blocks(arch)
        return ResNet(
            blocks=blocks,
            shortcuts=shortcuts,
            width=width,
            norm=norm,
            placement=placement,
            num_classes=num_classes,
            conv_impl=conv_impl,
            noise=noise,
        )
    return VGG(
        depth=arch,
        width=width,
        norm=norm,
        placement=placement,
        num_classes=num_classes,
        conv_impl=conv_impl,
        noise=noise,
    )


def normalise_and_activate(
    module: nn.Module,
    x: jax.Array,
    index: int,
    activation: Callable[[jax.Array], jax.Array] = nn.relu,
    *,
    train: bool,
    shortcut: jax.Array | None = None,
) -> jax.Array:
    """The variant's normalisation and the nonlinearity, in ``module.placement``'s order, inside
    ``module``'s compact method (which then owns the normalisation layer). ``shortcut`` (a
    residual block's) is added after a normalisation placed before the nonlinearity. The input
    of the nonlinearity, the distribution Ioffe & Szegedy track (their Figure 1), is sown as
    ``preact<index>``: kept only when "intermediates" is mutable, e.g. for
    ``landscape.activations``."""
    norm = make_norm(module.norm, train, module.noise)
    if module.placement == "before" and norm is not None:
        x = norm(x)
    if shortcut is not None:
        x = x + shortcut
    module.sow("intermediates", f"preact{index}", x)
    x = activation(x)
    if module.placement == "after" and norm is not None:
        x = norm(x)
    return x


# --- He et al.'s CIFAR ResNets, with and without shortcuts -------------------------------------

RESNET_STAGES = (16, 32, 64)  # channels of the three stages (He et al. 2016, Sec. 4.2)
he_normal = nn.initializers.variance_scaling(2.0, "fan_in", "normal")  # He et al. 2015


class ResNet(nn.Module):
    """He et al. 2016's ResNet for CIFAR (Sec. 4.2): a 3x3 convolution of 16 channels, three
    stages of ``blocks`` residual blocks with 16, 32 and 64 channels (times ``width``), the first
    block of the second and third stage halving the map with stride 2, then global average
    pooling and one linear classifier: 6 ``blocks`` + 2 layers.

    A block is conv, normalisation, nonlinearity, conv, normalisation, plus its input, then the
    nonlinearity. The shortcut is the identity, or where the width doubles the input subsampled
    with its new channels zero (option A, no parameters). ``shortcuts=False`` drops them, Li et
    al. 2018's "noshort" networks. ``placement="after"`` moves each normalisation after its
    nonlinearity (after the sum for the block's second one). Convolutions start from He
    initialisation, as in the paper.
    """

    blocks: int = 3
    shortcuts: bool = True
    width: float = 1.0
    norm: str = "none"
    placement: str = "before"
    num_classes: int = 10
    conv_impl: str = "xla"
    noise: NoiseConfig = PAPER_NOISE

    def _conv(self, features: int, stride: int = 1) -> Conv3x3:
        return Conv3x3(
            features,
            impl=self.conv_impl,
            weight_norm=uses_weight_norm(self.norm),
            stride=stride,
            kernel_init=he_normal,
        )

    @nn.compact
    def __call__(self, x: jax.Array, train: bool = True) -> jax.Array:
        count = 1
        stem = self._conv(scaled_width(RESNET_STAGES[0], self.width))(x)
        x = normalise_and_activate(self, stem, count, train=train)
        for stage, channels in enumerate(RESNET_STAGES):
            features = scaled_width(channels, self.width)
            for block in range(self.blocks):
                stride = 2 if stage > 0 and block == 0 else 1
                count += 1
                y = normalise_and_activate(
                    self, self._conv(features, stride)(x), count, train=train
                )
                y = self._conv(features)(y)
                shortcut = _option_a(x, features, stride) if self.shortcuts else None
                count += 1
                x = normalise_and_activate(self, y, count, train=train, shortcut=shortcut)
        x = jnp.mean(x, axis=(1, 2))
        return nn.Dense(self.num_classes, kernel_init=glorot, bias_init=nn.initializers.zeros)(x)


def _option_a(x: jax.Array, features: int, stride: int) -> jax.Array:
    """He et al.'s option A shortcut: the input at every ``stride``-th pixel, its channels padded
    with zeros up to ``features`` (split between both sides, as the usual CIFAR code does)."""
    x = x[:, ::stride, ::stride, :]
    extra = features - x.shape[-1]
    if extra <= 0:
        return x
    return jnp.pad(x, ((0, 0), (0, 0), (0, 0), (extra // 2, extra - extra // 2)))


# --- a small Vision Transformer -----------------------------------------------------------------

VIT_DIM, VIT_HEADS, VIT_PATCH = 64, 4, 4  # at --width 1: 64 tokens of 64 values, 4 heads


def token_norm(norm: str, x: jax.Array) -> jax.Array:
    """Normalises each token of ``x`` (batch, tokens, dim) over its values: LayerNorm (Ba et al.
    2016) or RMSNorm (Zhang and Sennrich 2019), epsilon 1e-5; ``none`` returns ``x``. Called
    inside a compact method, whose module then owns the layer."""
    if norm == "layernorm":
        return nn.LayerNorm(epsilon=1e-5)(x)
    if norm == "rmsnorm":
        return nn.RMSNorm(epsilon=1e-5)(x)
    return x


class TransformerBlock(nn.Module):
    """Self-attention then a two-layer GELU MLP, each added to its input. ``norm`` (none,
    layernorm, rmsnorm) normalises each token: before each sub-layer (``placement="before"``,
    pre-LN) or after each residual sum (``"after"``, the original Transformer's post-LN)."""

    dim: int
    heads: int
    norm: str = "layernorm"
    placement: str = "before"

    def _norm(self, x: jax.Array) -> jax.Array:
        return token_norm(self.norm, x)

    @nn.compact
    def __call__(self, x: jax.Array) -> tuple[jax.Array, jax.Array]:
        """Returns the block's output and the input of its MLP's nonlinearity."""
        pre = self.placement == "before"
        y = self._norm(x) if pre else x
        y = nn.MultiHeadDotProductAttention(num_heads=self.heads, kernel_init=glorot)(y, y)
        x = x + y
        x = x if pre else self._norm(x)
        y = self._norm(x) if pre else x
        preact = nn.Dense(2 * self.dim, kernel_init=glorot)(y)
        y = nn.Dense(self.dim, kernel_init=glorot)(nn.gelu(preact))
        x = x + y
        return (x if pre else self._norm(x)), preact


class ViT(nn.Module):
    """A Vision Transformer at CIFAR size (Dosovitskiy et al. 2021): 4x4 patches embedded by one
    dense layer, learned position embeddings, ``depth`` Transformer blocks, a final
    normalisation (pre-LN) and a linear classifier on the mean of the tokens."""

    depth: int = 4
    dim: int = VIT_DIM
    heads: int = VIT_HEADS
    norm: str = "layernorm"
    placement: str = "before"
    num_classes: int = 10

    @nn.compact
    def __call__(self, x: jax.Array, train: bool = True) -> jax.Array:
        b, h, w, c = x.shape
        p = VIT_PATCH
        patches = x.reshape(b, h // p, p, w // p, p, c).transpose(0, 1, 3, 2, 4, 5)
        tokens = nn.Dense(self.dim, kernel_init=glorot)(patches.reshape(b, -1, p * p * c))
        position = self.param(
            "position", nn.initializers.normal(0.02), (1, tokens.shape[1], self.dim)
        )
        x = tokens + position
        for index in range(1, self.depth + 1):
            x, preact = TransformerBlock(self.dim, self.heads, self.norm, self.placement)(x)
            # The input to block n's GELU, as ``landscape activations`` reads it.
            self.sow("intermediates", f"preact{index}", preact)
        if self.placement == "before":
            x = token_norm(self.norm, x)  # pre-LN leaves the last residual sum unnormalised
        return nn.Dense(self.num_classes, kernel_init=glorot)(x.mean(axis=1))


def create_vit(
    arch: str = "vit",
    *,
    width: float = 1.0,
    norm: str = "layernorm",
    placement: str = "before",
    num_classes: int = 10,
) -> ViT:
    """Returns the ViT named ``arch`` (``vit``: 4 blocks, ``vit<depth>``); ``width`` scales the
    token size (64 at 1, kept a multiple of the 4 heads)."""
    if norm not in ("none", "layernorm", "rmsnorm"):
        raise ValueError(
            f"a Vision Transformer normalises tokens with none, layernorm or rmsnorm, not {norm!r}"
        )
    if placement not in PLACEMENTS:
        raise ValueError(f"unknown placement {placement!r}; choose 'before' or 'after'")
    dim = max(VIT_HEADS, VIT_HEADS * round(VIT_DIM * width / VIT_HEADS))
    return ViT(vit_depth(arch), dim, VIT_HEADS, norm, placement, num_classes)


# --- Ioffe and Szegedy's MLP (their Figure 1) --------------------------------------------------

# Three hidden layers of 100 units (Ioffe and Szegedy 2015, Sec. 4.1); the width multiplier
# scales them.
MLP_HIDDEN = (100, 100, 100)
ACTIVATIONS: dict[str, Callable[[jax.Array], jax.Array]] = {
    "sigmoid": nn.sigmoid,
    "relu": nn.relu,
    "tanh": jnp.tanh,
}


class MLP(nn.Module):
    """Ioffe and Szegedy's MNIST network: the image flattened (784 values for MNIST), hidden dense
    layers of ``hidden`` units each followed by the normalisation (``norm``) and ``activation``,
    then a linear read-out.

    ``placement`` puts the normalisation before the nonlinearity (theirs: BatchNorm on the
    sigmoid's input) or after it; ``weightnorm`` reparametrises the hidden kernels instead. The
    read-out has no normalisation, as VGG's classifier. Every kernel is Glorot uniform (they give
    only "small random Gaussian values"), biases zero. Each hidden layer sows the input to its
    nonlinearity as ``preact<n>`` (n = 1, 2, 3), the values their Figure 1 tracks
    (``landscape activations``). Returns logits of shape (batch, num_classes).
    """

    hidden: tuple[int, ...] = MLP_HIDDEN
    activation: str = "sigmoid"
    norm: str = "none"
    placement: str = "before"
    num_classes: int = 10
    noise: NoiseConfig = PAPER_NOISE

    @nn.compact
    def __call__(self, x: jax.Array, train: bool = True) -> jax.Array:
        x = x.reshape(x.shape[0], -1)
        nonlinearity = ACTIVATIONS[self.activation]
        for n, features in enumerate(self.hidden, start=1):
            # Named as Flax names the plain layers, so that weightnorm draws the same initial
            # kernels (v) from the same seed and keeps the parameter paths.
            if uses_weight_norm(self.norm):
                x = WeightNormDense(features, kernel_init=glorot, name=f"Dense_{n - 1}")(x)
            else:
                x = nn.Dense(
                    features,
                    kernel_init=glorot,
                    bias_init=nn.initializers.zeros,
                    name=f"Dense_{n - 1}",
                )(x)
            x = normalise_and_activate(self, x, n, nonlinearity, train=train)
        return nn.Dense(
            self.num_classes,
            kernel_init=glorot,
            bias_init=nn.initializers.zeros,
            name=f"Dense_{len(self.hidden)}",
        )(x)


def init_variables(model: nn.Module, key: jax.Array, image_shape=(32, 32, 3)) -> dict:
    """Returns ``{"params": ..., "batch_stats": ...}``; ``batch_stats`` is ``{}`` without BN."""
    variables = model.init(key, jnp.zeros((1, *image_shape), jnp.float32), train=False)
    return {"params": variables["params"], "batch_stats": variables.get("batch_stats", {})}


def count_params(params) -> int:
    """Returns the number of scalar parameters in a pytree."""
    return sum(int(p.size) for p in jax.tree.leaves(params))


# --- the deep linear network (App. A.1) ----------------------------------------------------------


def loss_for_arch(arch: str) -> str:
    """Returns the name of the loss a model is trained with (``landscape.train.LOSSES``).

    The VGG family classifies with mean cross-entropy. The deep linear network regresses
    ``A x`` with ``||W_25 ... W_1 X - A X||_F^2`` summed over outputs *and* the samples of the
    full batch (App. A.1). The paper gives no reduction; the sum is the one its learning rate
    1e-6 is on the scale of (PyTorch's tutorial idiom ``(y_pred - y).pow(2).sum()`` at lr 1e-6).
    With the mean over the 1,000 samples, lr 1e-6 barely moves the standard network
    (docs/definitions.md#the-deep-linear-network); the sum at lr 1e-6 is exactly the mean at
    lr 1e-3: the same trajectory, the probe's loss, gradient distance and beta 1,000 times larger.
    """
    return "sum_squared_error" if is_dln(arch) else "cross_entropy"


class DeepLinearNetwork(nn.Module):
    """``depth`` bias-free linear layers: the network computes ``W_depth ... W_1 x`` (App. A.1).

    The paper's loss ``||W_25 ... W_1 x - A x||^2`` has no biases, so the layers have none. With a
    normalisation (``norm``), it follows every layer but the last, which stays the plain linear
    read-out (as VGG's classifier). BatchNorm then normalises each hidden unit over the batch (the
    full batch of 1,000 in the paper's protocol) and brings its own scale and shift. There is no
    activation, so "before/after the activation" placement does not arise. Hidden layers have
    ``features`` units; the last has ``num_outputs``. Weights are Glorot uniform, the paper's VGG
    initialisation; for a square 10x10 layer its variance is 2/(10+10) = 1/fan_in, so
    E||W x||^2 = ||x||^2 and the product of 25 layers neither explodes nor vanishes on average.
    Returns the outputs, shape (batch, num_outputs), in ``param_dtype``.
    """

    depth: int = DLN_DEPTH
    features: int = 10
    num_outputs: int = 10
    norm: str = "none"
    param_dtype: Any = jnp.float32
    noise: NoiseConfig = PAPER_NOISE  # Algorithm 1's constants, for the noisy layers

    @nn.compact
    def __call__(self, x: jax.Array, train: bool = True) -> jax.Array:
        x = x.astype(self.param_dtype)
        for i in range(self.depth):
            last = i == self.depth - 1
            if uses_weight_norm(self.norm) and not last:
                # Flax's name for the plain layer: the same draws of v, the same paths.
                x = WeightNormDense(
                    self.features,
                    use_bias=False,
                    kernel_init=glorot,
                    param_dtype=self.param_dtype,
                    name=f"Dense_{i}",
                )(x)
            else:
                x = nn.Dense(
                    self.num_outputs if last else self.features,
                    use_bias=False,
                    kernel_init=glorot,
                    param_dtype=self.param_dtype,
                    dtype=self.param_dtype,
                    name=f"Dense_{i}",
                )(x)
            norm = None if last else make_norm(self.norm, train, self.noise)
            if norm is not None:
                x = norm(x)
        return x


def create_dln(
    arch: str = "dln",
    *,
    width: float = 1.0,
    norm: str = "none",
    num_outputs: int = 10,
    input_dim: int = 10,
    param_dtype: Any = jnp.float32,
    noise: NoiseConfig = PAPER_NOISE,
) -> DeepLinearNetwork:
    """Returns the deep linear network ``arch`` (``dln``: 25 layers) with its normalisation.

    Hidden layers have ``width x input_dim`` units (the paper's 10 at width 1); ``noise`` holds
    Algorithm 1's constants for ``noisy_batchnorm`` and ``noisy_none``.
    """
    make_norm(norm, True)  # validates the name early, with the list of choices
    if width <= 0:
        raise ValueError(f"width must be positive, got {width}")
    check_noise(noise)
    return DeepLinearNetwork(
        depth=dln_depth(arch),
        features=scaled_width(input_dim, width),
        num_outputs=num_outputs,
        norm=norm,
        param_dtype=param_dtype,
        noise=noise,
    )
