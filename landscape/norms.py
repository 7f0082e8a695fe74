"""Normalisation layers beside BatchNorm: the paper's "noisy" BatchNorm (Algorithm 1) and l_p
normalisation, and the per-example normalisers LayerNorm, GroupNorm, RMSNorm and weight
normalisation.

All are small Flax modules (or, for weight normalisation, a reparametrisation of a kernel)
registered in ``landscape.models.NORMALIZERS``, so every model, the trainer, the probe and the CLI
select them by name (``noisy_batchnorm``, ``noisy_none``, ``l1``, ``l2``, ``linf``,
``layernorm``, ``groupnorm``/``groupnorm<G>``, ``rmsnorm``, ``weightnorm``). The paper's layers
act per unit (the last axis) like BatchNorm; a convolution's H and W count as batch, so "per
sample" below means per (n, h, w) position (docs/definitions.md#noisy-batchnorm-algorithm-1).
The per-example normalisers never mix examples (docs/definitions.md#per-example-normalisers):
they behave the same in training and eval mode and keep no running statistics.

Noisy BatchNorm (Santurkar et al. 2018, Sec. 2.1, Algorithm 1). After BatchNorm (its output,
scale and shift included), at every training step and for every unit j draw
``mu_j ~ U(-n_mu, n_mu)`` and ``sigma_j ~ U(1, n_sigma)``; then for every sample i
``m_ij ~ U(mu_j - r_mu, mu_j + r_mu)`` and ``s_ij ~ N(sigma_j, r_sigma)`` (r_sigma is a standard
deviation), and ``a_ij <- s_ij a_ij + m_ij``. The noise is drawn from the ``"noise"`` rng stream,
which the trainer derives from ``fold_in(state.rng, step)``: the training step and the inline probe
of that step see the same noise, and a run is reproducible. Only in training mode; in eval mode
the layer is plain BatchNorm with its running averages.

l_p normalisation (Sec. 3.3; docs/definitions.md#l_p-normalisation). Per unit j, with the
activations ``a_ij`` of the batch (and H, W), ``mean_j = mean_i a_ij`` and the l_p statistic of
the activations *before* mean shifting

    ``norm_j = (mean_i |a_ij|^p)^(1/p)``  for p = 1, 2;   ``norm_j = max_i |a_ij|`` for p = inf,

the output is ``gamma_j (a_ij - mean_j) / (norm_j + eps) + beta_j``. ``norm_j`` is the l_p norm of
unit j's vector of batch activations, "averaged over the batch" as a power mean: the l_p norm
divided by ``count^(1/p)`` (for p = 1 exactly the batch average of ``|a_ij|``; for p = inf the
maximum). That choice makes the statistic independent of the batch size, as BN's standard
deviation is, so the output has BN's scale for every p and every batch size; the plain l_p norm
divided by the count would shrink the denominator like ``count^(1/p - 1)`` and inflate the output
~count-fold for p = inf. Training mode uses the batch's ``mean_j`` and ``norm_j`` and updates
running averages of both with BatchNorm's momentum (0.9, i.e. PyTorch's 0.1), stored in
``batch_stats`` as ``mean`` and ``norm``; eval mode normalises with the running averages.

LayerNorm (Ba, Kiros and Hinton 2016), GroupNorm (Wu and He 2018) and RMSNorm (Zhang and
Sennrich 2019) normalise each example on its own, over a group of the layer's values: LayerNorm
over all of them (H, W and C), GroupNorm over each of G groups of C/G consecutive channels (and
H, W), RMSNorm over all of them without subtracting the mean::

    LayerNorm, GroupNorm:  y = gamma_c (x - mean_g) / sqrt(var_g + eps) + beta_c
    RMSNorm:               y = gamma_c x / sqrt(mean_g(x^2) + eps)

with the biased variance, eps = 1e-5 (BatchNorm's) inside the root, and a gain gamma (and for
the first two a shift beta) per channel c. GroupNorm's G is an upper bound: a layer with C
channels uses the largest divisor of C that is at most G and leaves a group at least two values
(``group_count``), so every width works and a dense layer's groups hold two units or more.
Weight normalisation (Salimans and Kingma 2016) does not touch activations: the kernel of the
convolution or dense layer is ``w = g v / ||v||`` per output unit, with ``v`` and ``g`` the
trained parameters (``weight_normalize``).

A unit with a single value per batch (a dense layer on a batch of one) has ``a - mean = 0``:
every normalised output would be ``beta`` whatever the input, so these layers refuse it in
training mode with a ValueError at trace time instead of training on nothing. VGG at CIFAR size
never meets it: its deepest convolutions are 2x2, so a batch of one gives four values per unit.
"""

from __future__ import annotations

import functools
import math
from collections.abc import Callable
from typing import Any, NamedTuple

import flax.linen as nn
import jax
import jax.numpy as jnp

from landscape.config import DEFAULT_GROUPS  # Wu and He's 32

# BatchNorm's constants (PyTorch's momentum 0.1 == 0.9 here, eps 1e-5), shared by the l_p layers
# so "running averages update as BN's" holds literally.
MOMENTUM = 0.9
EPSILON = 1e-5


class NoiseConfig(NamedTuple):
    """Algorithm 1's constants; the defaults are the paper's."""

    n_mu: float = 0.5  # per-unit mean shift mu_j ~ U(-n_mu, n_mu)
    n_sigma: float = 1.25  # per-unit scale sigma_j ~ U(1, n_sigma)
    r_mu: float = 0.1  # per-sample shift m_ij ~ U(mu_j - r_mu, mu_j + r_mu)
    r_sigma: float = 0.1  # per-sample scale s_ij ~ N(sigma_j, r_sigma), a standard deviation


class Algorithm1Noise(NamedTuple):
    """One draw of Algorithm 1's noise for activations of some shape (..., C)."""

    mu: jax.Array  # (C,) per-unit mean of the shift
    sigma: jax.Array  # (C,) per-unit mean of the scale
    shift: jax.Array  # (..., C) m_ij
    scale: jax.Array  # (..., C) s_ij


PAPER_NOISE = NoiseConfig()


def check_noise(noise: NoiseConfig) -> None:
    """Raises ValueError unless Algorithm 1 can draw with ``noise``: every constant finite,
    n_mu, r_mu, r_sigma >= 0 (half-widths and a standard deviation) and n_sigma >= 1 (the upper
    end of sigma_j ~ U(1, n_sigma))."""
    finite = all(math.isfinite(v) for v in noise)
    if not finite or min(noise.n_mu, noise.r_mu, noise.r_sigma) < 0 or noise.n_sigma < 1:
        raise ValueError(
            "Algorithm 1's noise needs finite n_mu, r_mu, r_sigma >= 0 and n_sigma >= 1, got "
            f"n_mu={noise.n_mu}, n_sigma={noise.n_sigma}, r_mu={noise.r_mu}, r_sigma={noise.r_sigma}"
        )


def draw_noise(
    key: jax.Array, shape: tuple[int, ...], config: NoiseConfig = PAPER_NOISE, dtype=jnp.float32
) -> Algorithm1Noise:
    """Returns Algorithm 1's noise for activations of ``shape`` (last axis = units).

    ``mu``, ``sigma`` have shape ``(shape[-1],)``; ``shift`` (m) and ``scale`` (s) have ``shape``:
    every leading position (sample, and H, W for convolutions) gets its own m and s.
    """
    k_mu, k_sigma, k_shift, k_scale = jax.random.split(key, 4)
    units = shape[-1:]
    mu = jax.random.uniform(k_mu, units, dtype, -config.n_mu, config.n_mu)
    sigma = jax.random.uniform(k_sigma, units, dtype, 1.0, config.n_sigma)
    shift = mu + jax.random.uniform(k_shift, shape, dtype, -config.r_mu, config.r_mu)
    scale = sigma + config.r_sigma * jax.random.normal(k_scale, shape, dtype)
    return Algorithm1Noise(mu, sigma, shift, scale)


def _check_batch(x: jax.Array, layer: str) -> None:
    count = math.prod(x.shape[:-1])
    if count < 2:
        raise ValueError(
            f"{layer} in training mode needs at least 2 values per unit (batch x H x W), got "
            f"{count}: with one value, x - batch mean is 0 and the output ignores the input; "
            "use a batch of 2 or more"
        )


class NoisyNorm(nn.Module):
    """Algorithm 1: BatchNorm (or nothing, ``batchnorm=False``) followed by random scale and shift.

    Returns ``s * BN(x) + m`` in training mode (noise from the ``"noise"`` rng stream), ``BN(x)``
    with running averages in eval mode.
    """

    train: bool
    batchnorm: bool = True
    noise: NoiseConfig = PAPER_NOISE

    @nn.compact
    def __call__(self, x: jax.Array) -> jax.Array:
        if self.batchnorm:
            if self.train:
                _check_batch(x, "noisy BatchNorm")
            x = nn.BatchNorm(
                use_running_average=not self.train, momentum=MOMENTUM, epsilon=EPSILON
            )(x)
        if not self.train or self.is_initializing():
            return x
        if not self.has_rng("noise"):
            raise ValueError(
                "noisy normalisation in training mode needs a 'noise' rng: "
                "model.apply(..., rngs={'noise': key}) (the trainer passes fold_in(rng, step))"
            )
        noise = draw_noise(self.make_rng("noise"), x.shape, self.noise, x.dtype)
        # Kept only when the caller asks for "intermediates" (the tests check its distribution).
        self.sow("intermediates", "noise", noise)
        return noise.scale * x + noise.shift


def lp_statistic(x: jax.Array, p: float, axes: tuple[int, ...]) -> jax.Array:
    """Returns the power-mean l_p statistic over ``axes``: (mean |x|^p)^(1/p), or max |x| for inf.

    Its gradient is finite where every value is 0 (a dead unit after ReLU): the root is only
    taken where the mean is positive.
    """
    magnitude = jnp.abs(x)
    if p == math.inf:
        return magnitude.max(axes)
    if p == 1:
        return magnitude.mean(axes)
    moment = (magnitude**p).mean(axes)
    positive = moment > 0
    return jnp.where(positive, jnp.where(positive, moment, 1.0) ** (1.0 / p), 0.0)


class LpNorm(nn.Module):
    """l_p normalisation (Sec. 3.3): ``gamma (x - mean) / (norm_p + eps) + beta`` per unit.

    ``mean`` and ``norm_p`` (``lp_statistic`` of x before mean shifting) come from the batch in
    training mode, which also updates their running averages (``batch_stats``: ``mean``,
    ``norm``); eval mode uses the running averages. Returns an array of x's shape.
    """

    p: float
    train: bool
    momentum: float = MOMENTUM
    epsilon: float = EPSILON

    @nn.compact
    def __call__(self, x: jax.Array) -> jax.Array:
        units = x.shape[-1]
        axes = tuple(range(x.ndim - 1))
        ra_mean = self.variable("batch_stats", "mean", lambda: jnp.zeros(units, jnp.float32))
        ra_norm = self.variable("batch_stats", "norm", lambda: jnp.ones(units, jnp.float32))
        scale = self.param("scale", nn.initializers.ones, (units,), jnp.float32)
        bias = self.param("bias", nn.initializers.zeros, (units,), jnp.float32)
        if self.train:
            _check_batch(x, f"l_{self.p} normalisation")
            mean, norm = x.mean(axes), lp_statistic(x, self.p, axes)
            if not self.is_initializing():
                m = self.momentum
                ra_mean.value = m * ra_mean.value + (1 - m) * mean
                ra_norm.value = m * ra_norm.value + (1 - m) * norm
        else:
            mean, norm = ra_mean.value, ra_norm.value
        return (x - mean) / (norm + self.epsilon) * scale + bias


# --- per-example normalisers (docs/definitions.md#per-example-normalisers) -------------------


def group_count(channels: int, groups: int = DEFAULT_GROUPS, positions: int = 1) -> int:
    """Returns the number of groups GroupNorm uses for ``channels`` channels of ``positions``
    values each (H x W; 1 for a dense layer): the largest divisor of ``channels`` that is at most
    ``groups`` and leaves at least 2 values in a group (1 when none does).

    Any width multiplier then gives equal groups, and a dense layer's groups hold at least two
    units: a group of one value normalises to a constant.
    """
    if channels < 1 or groups < 1 or positions < 1:
        raise ValueError(
            f"GroupNorm needs positive channels, groups and positions, got {channels}, {groups}, "
            f"{positions}"
        )
    fits = [
        g
        for g in range(1, min(groups, channels) + 1)
        if channels % g == 0 and channels // g * positions >= 2
    ]
    return max(fits, default=1)


def _check_group(values: int, layer: str) -> None:
    if values < 2:
        raise ValueError(
            f"{layer} normalises groups of {values} value per example: x - mean would be 0 "
            "(or x / rms its sign) whatever the input; use a wider layer, fewer groups "
            "(groupnorm<G>) or another normalisation"
        )


def _gain(module: nn.Module, units: int) -> jax.Array:
    return module.param("scale", nn.initializers.ones, (units,), jnp.float32)


def _shift(module: nn.Module, units: int) -> jax.Array:
    return module.param("bias", nn.initializers.zeros, (units,), jnp.float32)


def _standardize(x: jax.Array, axes: tuple[int, ...], epsilon: float) -> jax.Array:
    # The biased variance of the centred values (not E[x^2] - E[x]^2, which cancels badly in
    # float32 when the mean is large against the spread).
    mean = x.mean(axes, keepdims=True)
    centred = x - mean
    var = (centred * centred).mean(axes, keepdims=True)
    return centred * jax.lax.rsqrt(var + epsilon)


class LayerNorm(nn.Module):
    """LayerNorm (Ba et al. 2016): each example standardised over all of the layer's values
    (H, W and C of a convolution, the units of a dense layer), then a gain and shift per channel.

    Returns an array of x's shape; the same in training and eval mode.
    """

    epsilon: float = EPSILON

    @nn.compact
    def __call__(self, x: jax.Array) -> jax.Array:
        units = x.shape[-1]
        scale, bias = _gain(self, units), _shift(self, units)
        _check_group(math.prod(x.shape[1:]), "LayerNorm")
        return _standardize(x, tuple(range(1, x.ndim)), self.epsilon) * scale + bias


class GroupNorm(nn.Module):
    """GroupNorm (Wu and He 2018): each example standardised within groups of consecutive
    channels (with H and W), then a gain and shift per channel.

    ``groups`` is the most groups to use; a layer of C channels uses ``group_count(C, groups)``.
    Returns an array of x's shape; the same in training and eval mode.
    """

    groups: int = DEFAULT_GROUPS
    epsilon: float = EPSILON

    @nn.compact
    def __call__(self, x: jax.Array) -> jax.Array:
        units = x.shape[-1]
        scale, bias = _gain(self, units), _shift(self, units)
        count = group_count(units, self.groups, math.prod(x.shape[1:-1]))
        _check_group(math.prod(x.shape[1:]) // count, f"GroupNorm ({count} groups)")
        grouped = x.reshape(*x.shape[:-1], count, units // count)
        axes = (*range(1, x.ndim - 1), x.ndim)  # H, W and the channels within a group
        return _standardize(grouped, axes, self.epsilon).reshape(x.shape) * scale + bias


class RMSNorm(nn.Module):
    """RMSNorm (Zhang and Sennrich 2019): each example divided by the root mean square of all of
    the layer's values, then a gain per channel; no centring and no shift.

    Returns an array of x's shape; the same in training and eval mode.
    """

    epsilon: float = EPSILON

    @nn.compact
    def __call__(self, x: jax.Array) -> jax.Array:
        scale = _gain(self, x.shape[-1])
        _check_group(math.prod(x.shape[1:]), "RMSNorm")
        mean_square = (x * x).mean(tuple(range(1, x.ndim)), keepdims=True)
        return x * jax.lax.rsqrt(mean_square + self.epsilon) * scale


def kernel_norm(v: jax.Array) -> jax.Array:
    """Returns ||v|| per output unit (the last axis) of a kernel: shape (units,)."""
    return jnp.sqrt((v * v).sum(tuple(range(v.ndim - 1))))


def weight_normalize(v: jax.Array, g: jax.Array) -> jax.Array:
    """Returns Salimans and Kingma's kernel ``w = g v / ||v||``: every output unit's weights (the
    last axis) have norm ``g`` and the direction of ``v``, whatever ``v``'s scale."""
    return v * (g / kernel_norm(v))


def weight_norm_params(module: nn.Module, kernel: jax.Array) -> jax.Array:
    """Declares the gain ``scale`` of a weight-normalised ``kernel`` on ``module`` and returns the
    effective kernel.

    The gain starts at ``||v||`` of the initial kernel, so at step 0 the layer computes exactly
    what the plain layer computes from the same draw (Salimans and Kingma's data-dependent
    initialisation is not used: the variants then start from one function).
    """
    scale = module.param("scale", lambda _key: kernel_norm(kernel))
    return weight_normalize(kernel, scale)


class WeightNormDense(nn.Module):
    """A dense layer with a weight-normalised kernel (Salimans and Kingma 2016):
    ``x @ (g v / ||v||) + b``, ``v`` Glorot-initialised. Returns (..., features)."""

    features: int
    use_bias: bool = True
    kernel_init: Callable = nn.initializers.glorot_uniform()
    param_dtype: Any = jnp.float32

    @nn.compact
    def __call__(self, x: jax.Array) -> jax.Array:
        v = self.param("kernel", self.kernel_init, (x.shape[-1], self.features), self.param_dtype)
        y = x @ weight_norm_params(self, v)
        if self.use_bias:
            y = y + self.param("bias", nn.initializers.zeros, (self.features,), self.param_dtype)
        return y


# --- factories for the registry in landscape.models ------------------------------------------


def noisy_norm_factory(
    batchnorm: bool = True, noise: NoiseConfig = PAPER_NOISE
) -> Callable[[bool], nn.Module]:
    """Returns a normaliser factory ``(train, noise=...) -> NoisyNorm``.

    A run's constants are settings (``ModelConfig.noise_*``, the CLI's ``--noise-mu`` ...), which
    ``noisy_batchnorm`` and ``noisy_none`` take. To train several sets of constants side by side,
    register more names with their own, e.g. ``register_normalizer("noisy_bn_x2",
    noisy_norm_factory(noise=NoiseConfig(n_mu=1.0)))``, then ``--variants noisy_bn_x2``."""
    return functools.partial(_noisy, batchnorm=batchnorm, noise=noise)


def _noisy(train: bool, *, batchnorm: bool, noise: NoiseConfig) -> nn.Module:
    return NoisyNorm(train=train, batchnorm=batchnorm, noise=noise)


def lp_norm_factory(p: float) -> Callable[[bool], nn.Module]:
    """Returns a normaliser factory ``(train) -> LpNorm(p)``."""
    return functools.partial(_lp, p=p)


def _lp(train: bool, *, p: float) -> nn.Module:
    return LpNorm(p=p, train=train)


def layer_norm_factory() -> Callable[[bool], nn.Module]:
    """Returns a normaliser factory ``(train) -> LayerNorm()`` (the same in both modes)."""
    return _layer_norm


def _layer_norm(train: bool) -> nn.Module:
    return LayerNorm()


def group_norm_factory(groups: int = DEFAULT_GROUPS) -> Callable[[bool], nn.Module]:
    """Returns a normaliser factory ``(train) -> GroupNorm(groups)``."""
    if groups < 1:
        raise ValueError(f"GroupNorm needs at least one group, got {groups}")
    return functools.partial(_group_norm, groups=groups)


def _group_norm(train: bool, *, groups: int) -> nn.Module:
    return GroupNorm(groups=groups)


def rms_norm_factory() -> Callable[[bool], nn.Module]:
    """Returns a normaliser factory ``(train) -> RMSNorm()``."""
    return _rms_norm


def _rms_norm(train: bool) -> nn.Module:
    return RMSNorm()
