"""Distributional stability, the Ioffe & Szegedy view of BatchNorm.

Ioffe & Szegedy (2015, Figure 1) track the input to a typical sigmoid over training as its 15th,
50th and 85th percentiles, and find it steadier with BatchNorm; Santurkar et al. (2018,
Figure 8) compare the change of the first two moments of a layer's activations between two
consecutive training steps. Both are measured here, offline from a run's checkpoints
(docs/definitions.md#the-percentile-experiment).

What is measured: the **input to the nonlinearity** of conv layer n (``preact<n>``, sown by
``landscape.models.VGG``): the conv output for the standard network, the normalised output for
a network with the normalisation before the ReLU (as BN-Inception's figure shows the input to a
sigmoid), the conv output for a network whose normalisation follows the ReLU. Layer numbers are
the same 1-based conv numbers as in ``landscape.ics`` (conv #n is layer n).

On which data: a fixed held-out batch, the first ``examples`` test images, the same at every
step, so only the parameters change between steps. BatchNorm runs in training mode on that
batch by default (its statistics are those of the batch, as during training); ``bn_mode="eval"``
uses the running averages instead. Statistics are taken over every example and position of the
layer ("layer": all units pooled) and over one unit (channel ``unit``, Ioffe & Szegedy's "typical
unit"); the consecutive-step change compares step t with step t + 1, where t + 1 is the state
the training step actually reaches from checkpoint t (recomputed with the run's own train step
on t's own batch), so it needs no consecutive checkpoints.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np

from landscape.network import linen_rngs

PERCENTILES = (15.0, 50.0, 85.0)  # BN-Inception's MNIST figure (Ioffe & Szegedy 2015, Fig. 1)
STATS = ("percentiles", "mean", "var", "unit_percentiles", "unit_mean", "unit_var")


def sown_preactivations(
    model: nn.Module,
    variables: dict,
    images: jax.Array,
    *,
    train: bool = True,
    rng: jax.Array | None = None,
    capture: Sequence[str] = (),
) -> dict[int, jax.Array]:
    """Returns ``{n: input to the nonlinearity of layer n}`` (arrays), n = 1, 2, ...

    Without ``capture``: the values the model sows as ``preact<n>`` (``landscape.models.VGG``
    does). With ``capture`` (Flax module class names, e.g. ``("BatchNorm",)``): the outputs of
    every submodule of those classes, numbered in the order they are called, through Flax's
    ``capture_intermediates``, so a user's Linen model needs no ``sow`` calls. ``train=True``
    evaluates BatchNorm with the statistics of ``images`` (the running averages are not changed:
    the updated ones are discarded); ``rng`` is the key of dropout and noise layers.
    """
    rngs = linen_rngs(rng if rng is not None else jax.random.key(0))
    mutable = ["intermediates", "batch_stats"] if train else ["intermediates"]
    if capture:
        names = frozenset(capture)
        chosen = lambda module, method: method == "__call__" and type(module).__name__ in names  # noqa: E731
        _, state = model.apply(
            variables, images, train=train, mutable=mutable, rngs=rngs, capture_intermediates=chosen
        )
        outputs = list(_call_outputs(state.get("intermediates", {})))
        return {n: value for n, value in enumerate(outputs, start=1)}
    _, state = model.apply(variables, images, train=train, mutable=mutable, rngs=rngs)
    sown = state.get("intermediates", {})
    return {int(k[len("preact") :]): v[0] for k, v in sown.items() if k.startswith("preact")}


def _call_outputs(tree: dict):
    """Yields the captured ``__call__`` outputs of an intermediates tree in call order (dicts
    keep the order modules were created in, which for compact modules is the call order)."""
    for key, value in tree.items():
        if key == "__call__":
            yield value[0]
        elif isinstance(value, dict):
            yield from _call_outputs(value)


def distribution_stats(
    values: np.ndarray | jax.Array, unit: int = 0, percentiles: Sequence[float] = PERCENTILES
) -> dict[str, np.ndarray]:
    """Returns the distribution summary of one layer's activations (units on the last axis).

    ``percentiles`` (P,), ``mean`` and ``var`` (biased) over every entry; ``unit_percentiles``,
    ``unit_mean``, ``unit_var`` over the entries of channel ``unit`` (all examples and positions;
    clipped to the layer's width). Units: those of the activations; computed in float64.

    This runs on the host with numpy: ``np.percentile`` selects in linear time, where a
    percentile on the device sorts the whole layer, which is far slower for layers this large.
    """
    values = np.asarray(values, dtype=np.float64)
    flat = values.reshape(-1)
    one = values[..., min(unit, values.shape[-1] - 1)].reshape(-1)
    q = np.asarray(percentiles, dtype=np.float64)
    return {
        "percentiles": np.percentile(flat, q),
        "mean": flat.mean(),
        "var": flat.var(),
        "unit_percentiles": np.percentile(one, q),
        "unit_mean": one.mean(),
        "unit_var": one.var(),
    }


def make_preactivation_fn(
    model: nn.Module, layers: Sequence[int], *, train: bool = True, capture: Sequence[str] = ()
) -> Callable:
    """Returns jitted ``f(params, batch_stats, images, rng) -> tuple of arrays``, one per layer.

    Each array is the input to the ReLU of conv layer n (for n in ``layers``, in that order);
    ``rng`` is key data (``landscape.train.step_batch``'s noise key).
    """
    layers = tuple(layers)

    @jax.jit
    def preactivation_fn(params, batch_stats, images, rng):
        sown = sown_preactivations(
            model,
            {"params": params, "batch_stats": batch_stats},
            images,
            train=train,
            rng=jax.random.wrap_key_data(rng),
            capture=capture,
        )
        return tuple(sown[n] for n in layers)

    return preactivation_fn


def layer_stats(
    arrays: Sequence[np.ndarray | jax.Array],
    unit: int = 0,
    percentiles: Sequence[float] = PERCENTILES,
) -> dict[str, np.ndarray]:
    """Returns ``distribution_stats`` of each array, stacked over the layers (first axis)."""
    per_layer = [distribution_stats(a, unit, percentiles) for a in jax.device_get(arrays)]
    return {k: np.stack([s[k] for s in per_layer]) for k in STATS}


def count_preactivations(
    model: nn.Module, variables: dict, image_shape: Sequence[int], capture: Sequence[str] = ()
) -> int:
    """Returns how many layers give their pre-activation, sown or captured (traced, nothing
    computed)."""
    shapes = jax.eval_shape(
        lambda v: sown_preactivations(
            model, v, jnp.zeros((2, *image_shape), jnp.float32), capture=capture
        ),
        variables,
    )
    return len(shapes)
