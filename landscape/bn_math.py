"""BatchNorm written out by hand: the forward pass, its closed-form backward pass, and the bias example.

Everything here follows Ioffe & Szegedy 2015 ("Batch Normalization: Accelerating Deep Network
Training by Reducing Internal Covariate Shift"):

- ``batchnorm_forward`` / ``batchnorm_backward``: Algorithm 1 and the chain rule of Sec. 3, with
  the statistics taken over every axis but the last (Sec. 3.2: a convolutional layer normalises
  each channel over the batch *and* the spatial positions, so H and W count as batch).
  The tests check the closed forms against ``jax.vjp`` in float64 and the forward pass against
  ``flax.linen.BatchNorm`` in train mode.
- ``bias_example``: Sec. 2's argument for putting the normalisation inside the gradient. A layer
  x = u + b centred by x_hat = x - E[x]; if gradient descent treats E[x] as a constant, every
  update of b is cancelled by the centring, so b grows without bound while the output and the
  loss stay exactly the same.

The figure function imports matplotlib lazily so that importing this module does not.
"""

from __future__ import annotations

import math
from typing import TYPE_CHECKING, NamedTuple

import jax
import jax.numpy as jnp
import numpy as np

if TYPE_CHECKING:
    from matplotlib.figure import Figure

BN_EPSILON = 1e-5  # Flax's and the paper's reference implementations' default


class BatchNormCache(NamedTuple):
    """What the backward pass needs from the forward pass (shapes for x of shape (..., C)).

    x, x_hat: the input and its normalised value, shape of x. mu, var: the batch mean and the
    biased batch variance, shape (C,). gamma: the scale, shape (C,). eps: the variance epsilon.
    """

    x: jax.Array
    x_hat: jax.Array
    mu: jax.Array
    var: jax.Array
    gamma: jax.Array
    eps: float


class BatchNormGrads(NamedTuple):
    """Gradients of a scalar loss ℓ through BatchNorm, given dy = dℓ/dy.

    dx: dℓ/dx, shape of x. dgamma, dbeta: dℓ/dγ and dℓ/dβ, shape (C,). dvar: dℓ/dσ² with μ held
    fixed (σ² reaches ℓ only through x_hat), shape (C,). dmu: dℓ/dμ with σ² = mean((x - μ)²)
    seen as a function of μ, as in the paper's computation graph, shape (C,).
    """

    dx: jax.Array
    dgamma: jax.Array
    dbeta: jax.Array
    dvar: jax.Array
    dmu: jax.Array


def _batch_axes(x: jax.Array) -> tuple[int, ...]:
    """Every axis but the last (channels): (N,) for dense inputs, (N, H, W) for conv inputs."""
    if x.ndim < 2:
        raise ValueError(f"BatchNorm needs an input of shape (N, ..., C), got shape {x.shape}")
    return tuple(range(x.ndim - 1))


def batchnorm_forward(
    x: jax.Array, gamma: jax.Array, beta: jax.Array, eps: float = BN_EPSILON
) -> tuple[jax.Array, BatchNormCache]:
    """BatchNorm in train mode (Ioffe & Szegedy 2015, Algorithm 1).

    ``x`` has shape (N, C) or (N, H, W, C); ``gamma`` and ``beta`` have shape (C,). The mean μ
    and the biased variance σ² are taken per channel over all other axes. Returns
    ``(y, cache)``: y = γ (x - μ)/sqrt(σ² + eps) + β with the shape of x, and the
    ``BatchNormCache`` that ``batchnorm_backward`` takes.
    """
    axes = _batch_axes(x)
    mu = jnp.mean(x, axis=axes)
    var = jnp.mean(jnp.square(x - mu), axis=axes)  # biased (1/m), as in Algorithm 1
    x_hat = (x - mu) / jnp.sqrt(var + eps)
    y = gamma * x_hat + beta
    return y, BatchNormCache(x=x, x_hat=x_hat, mu=mu, var=var, gamma=gamma, eps=eps)


def batchnorm_backward(dy: jax.Array, cache: BatchNormCache) -> BatchNormGrads:
    """The closed-form backward pass of ``batchnorm_forward`` (Ioffe & Szegedy 2015, Sec. 3).

    ``dy`` = dℓ/dy has the shape of x. Returns ``BatchNormGrads(dx, dgamma, dbeta, dvar, dmu)``:
    dx with the shape of x, the others of shape (C,). Sums and means run over the batch axes
    (and H, W), m is the number of elements per channel. The chain is the paper's, term by term:

        dx_hat = dy γ
        dvar   = Σ dx_hat (x - μ) · (-1/2) (σ² + eps)^(-3/2)
        dmu    = Σ dx_hat · (-1/sqrt(σ² + eps)) + dvar · Σ -2 (x - μ) / m
        dx     = dx_hat / sqrt(σ² + eps) + dvar · 2 (x - μ)/m + dmu / m
        dgamma = Σ dy x_hat,   dbeta = Σ dy
    """
    x, x_hat, mu, var, gamma, eps = cache
    axes = _batch_axes(x)
    m = math.prod(x.shape[a] for a in axes)
    centred = x - mu
    inv_std = jax.lax.rsqrt(var + eps)
    dx_hat = dy * gamma
    dvar = jnp.sum(dx_hat * centred, axis=axes) * -0.5 * inv_std**3
    # The second term is zero in exact arithmetic (Σ (x - μ) = 0) but is part of the paper's chain.
    dmu = jnp.sum(-dx_hat * inv_std, axis=axes) + dvar * jnp.mean(-2.0 * centred, axis=axes)
    dx = dx_hat * inv_std + dvar * 2.0 * centred / m + dmu / m
    dgamma = jnp.sum(dy * x_hat, axis=axes)
    dbeta = jnp.sum(dy, axis=axes)
    return BatchNormGrads(dx=dx, dgamma=dgamma, dbeta=dbeta, dvar=dvar, dmu=dmu)


# --- Ioffe & Szegedy's bias example (Sec. 2) ---------------------------------------------------

BIAS_MODES = {
    "stop_gradient": "mean treated as constant (stop-gradient)",
    "full_gradient": "normalisation inside the gradient",
}
_MODE_STYLES = {
    # Red drifts, blue stays: the colours the toolkit's figures use for BN and standard networks.
    "stop_gradient": {"color": "#d62728", "linestyle": "-", "linewidth": 3.0},
    "full_gradient": {"color": "#1f5fa8", "linestyle": "--", "linewidth": 2.0},
}


def _bias_problem(seed: int, batch: int = 64, channels: int = 4, outputs: int = 2):
    """The fixed pieces of the example: inputs u, a linear read-out w and targets t."""
    key_u, key_w, key_t = jax.random.split(jax.random.key(seed), 3)
    u = jax.random.normal(key_u, (batch, channels), jnp.float64)
    w = jax.random.normal(key_w, (channels, outputs), jnp.float64)
    # Targets with a nonzero batch mean: since x_hat has zero mean, Σ_n dℓ/dx_hat_n =
    # -(2/(N k)) Σ_n t_n wᵀ, so the offset is what makes the stop-gradient update nonzero.
    t = jax.random.normal(key_t, (batch, outputs), jnp.float64) + 1.0
    return u, w, t


def bias_example(
    steps: int = 100, lr: float = 0.1, seed: int = 0, stop_gradient: bool = True
) -> dict[str, np.ndarray]:
    """Gradient descent on the bias b of x = u + b, x_hat = x - E[x] (Ioffe & Szegedy 2015, Sec. 2).

    u is a fixed random batch of shape (64, 4); b starts at zero, as a freshly initialised bias
    does. The loss is ℓ(b) = mean((x_hat @ w - t)²) with a fixed random read-out w and targets t.
    With ``stop_gradient=True`` the mean E[x] is treated as a constant (``jax.lax.stop_gradient``),
    so dℓ/db = Σ_n dℓ/dx_hat_n ≠ 0 while the centring cancels every update of b: b drifts
    linearly, x_hat and ℓ never change. With ``stop_gradient=False`` the gradient sees that
    E[x] moves with b, dℓ/db = 0 and b stays where it started.

    The example runs in float64 (inside ``jax.enable_x64``), so "unchanged" is checked to
    rounding rather than to float32 noise. Returns numpy arrays of length ``steps + 1``, entry i
    after i updates: ``step``, ``b_norm`` (||b||), ``loss``, ``output_change``
    (max |x_hat_i - x_hat_0|), and ``b`` of shape (steps + 1, 4).
    """
    with jax.enable_x64(True):
        u, w, t = _bias_problem(seed)

        def centre(b):
            x = u + b
            mean = jnp.mean(x, axis=0)
            return x - (jax.lax.stop_gradient(mean) if stop_gradient else mean)

        def loss_fn(b):
            return jnp.mean(jnp.square(centre(b) @ w - t))

        def descend(b, _):
            b = b - lr * jax.grad(loss_fn)(b)
            return b, b

        @jax.jit
        def trajectory(b0):
            _, bs = jax.lax.scan(descend, b0, length=steps)
            bs = jnp.concatenate([b0[None], bs])
            x_hats = jax.vmap(centre)(bs)
            return {
                "step": jnp.arange(steps + 1),
                "b_norm": jnp.linalg.norm(bs, axis=-1),
                "loss": jax.vmap(loss_fn)(bs),
                "output_change": jnp.max(jnp.abs(x_hats - x_hats[0]), axis=(1, 2)),
                "b": bs,
            }

        out = trajectory(jnp.zeros(u.shape[-1], jnp.float64))
        return {name: np.asarray(value) for name, value in out.items()}


def bias_example_modes(steps: int = 100, lr: float = 0.1, seed: int = 0) -> dict[str, dict]:
    """Runs ``bias_example`` both ways; keys are those of ``BIAS_MODES``, ready for the figure."""
    return {
        mode: bias_example(steps=steps, lr=lr, seed=seed, stop_gradient=mode == "stop_gradient")
        for mode in BIAS_MODES
    }


def bias_example_figure(results_by_mode: dict[str, dict]) -> Figure:
    """Two panels of the bias example: ||b|| and the loss over gradient-descent steps.

    ``results_by_mode`` maps a mode ("stop_gradient", "full_gradient"; other names are used as
    their own labels) to the dict ``bias_example`` returns. The loss panel starts at zero, so a
    loss that does not move is drawn as the flat line it is; the two modes' loss curves coincide,
    which is the point of the example, and are told apart by line style.
    """
    from matplotlib.figure import Figure  # lazily: importing bn_math should not load matplotlib

    fig = Figure(figsize=(9.0, 3.8), layout="constrained")
    ax_b, ax_loss = fig.subplots(1, 2)
    loss_max = 0.0
    for mode, rec in results_by_mode.items():
        style = _MODE_STYLES.get(mode, {})
        label = BIAS_MODES.get(mode, mode)
        steps = np.asarray(rec["step"])
        loss = np.asarray(rec["loss"], dtype=np.float64)
        ax_b.plot(steps, rec["b_norm"], label=label, **style)
        ax_loss.plot(steps, loss, label=label, **style)
        if np.isfinite(loss).any():
            loss_max = max(loss_max, float(np.nanmax(np.where(np.isfinite(loss), loss, np.nan))))
    ax_b.set(xlabel="gradient-descent step", ylabel="||b||", title="bias b")
    ax_loss.set(xlabel="gradient-descent step", ylabel="loss ℓ", title="loss")
    ax_loss.set_ylim(0.0, 1.25 * loss_max if loss_max > 0 else 1.0)
    for ax in (ax_b, ax_loss):
        ax.grid(alpha=0.3)
        ax.legend(fontsize=8, loc="upper left" if ax is ax_b else "lower right")
    fig.suptitle(
        "Centring x = u + b by x − E[x]: b drifts, output and loss do not "
        "(Ioffe & Szegedy 2015, Sec. 2)",
        fontsize=10,
    )
    return fig
