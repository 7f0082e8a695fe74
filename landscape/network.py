"""The model contract: what the toolkit needs of a network, and adapters for the ways JAX users
write one (docs/own-models.md).

A ``Network`` is a pure pair of functions:

- ``init(key, example_inputs) -> (params, state)``: the trainable parameters and the rest of
  the model's variables (BatchNorm's running averages; ``{}`` when there are none);
- ``apply(params, state, inputs, *, train, rng) -> (outputs, new_state)``: the forward pass in
  training mode (batch statistics, dropout and noise on; ``new_state`` the updated running
  averages) or inference mode (``train=False``: running averages, no randomness; ``new_state``
  is ``state``). ``rng`` is a typed key or None; it is derived from (seed, step), so a step
  re-run later draws the same dropout masks and noise.

Everything the toolkit computes (the train step, the probe, the evaluation, curvature, pictures)
goes through these two functions, for the built-in VGG and deep linear network as for a user's
network. Analyses that need more of the model's structure (the order of its layers for internal
covariate shift, the inputs of its nonlinearities for activation statistics) look at
``Network.module``, the Flax Linen module behind an adapter, and say what is missing otherwise.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from typing import Any, NamedTuple

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
from flax import nnx


class Network(NamedTuple):
    """A network as two pure functions (see the module's docstring)."""

    init: Callable[[jax.Array, jax.Array], tuple[Any, Any]]
    apply: Callable[..., tuple[jax.Array, Any]]
    module: nn.Module | None = None  # the Linen module, for analyses that need its structure
    kind: str = "custom"  # "linen", "nnx" or "custom"


LINEN_RNG_NAMES = ("noise", "dropout")


def linen_rngs(key: jax.Array, names: Sequence[str] = LINEN_RNG_NAMES) -> dict[str, jax.Array]:
    """Returns the random streams of a Linen ``apply`` from one key: the first name gets the key
    itself (the built-in noisy layers' draws stay what they were), the others ``fold_in(key,
    i)``."""
    return {name: key if i == 0 else jax.random.fold_in(key, i) for i, name in enumerate(names)}


class NetworkError(ValueError):
    """A network that does not keep the contract, said in one line."""


def from_linen(
    module: nn.Module,
    *,
    train_arg: str | None = "train",
    state_collection: str = "batch_stats",
    rng_names: Sequence[str] = LINEN_RNG_NAMES,
) -> Network:
    """Returns the ``Network`` of a Flax Linen module.

    ``train_arg`` is the keyword of ``__call__`` that switches training mode (None: the module
    has none). ``state_collection`` is the mutable collection holding running statistics.
    ``rng_names`` are the random streams the module may draw from in training mode: the first
    gets the step's key itself, the others ``fold_in(key, i)``.
    """
    if not isinstance(module, nn.Module):
        raise NetworkError(f"from_linen needs a flax.linen.Module, got {type(module).__name__}")
    mode = (lambda train: {train_arg: train}) if train_arg else (lambda train: {})

    def init(key: jax.Array, inputs: jax.Array) -> tuple[Any, Any]:
        variables = module.init(key, inputs, **mode(False))
        return variables["params"], variables.get(state_collection, {})

    def apply(params, state, inputs, *, train: bool, rng: jax.Array | None = None):
        variables = {"params": params, state_collection: state}
        if not train:
            return module.apply(variables, inputs, **mode(False)), state
        rngs = None
        if rng is not None:
            rngs = {
                n: rng if i == 0 else jax.random.fold_in(rng, i) for i, n in enumerate(rng_names)
            }
        outputs, updates = module.apply(
            variables, inputs, **mode(True), mutable=[state_collection], rngs=rngs
        )
        return outputs, updates.get(state_collection, {})

    return Network(init, apply, module, "linen")


def from_nnx(build: Callable[[nnx.Rngs], nnx.Module]) -> Network:
    """Returns the ``Network`` of a Flax NNX module, built by ``build(rngs)``.

    ``init`` builds the module with ``nnx.Rngs(key)``; its ``nnx.Param`` variables are the
    parameters and its other variables (``nnx.BatchStat``...) the state, random streams aside:
    ``apply`` reseeds every stream from the step's key, so a step draws the same dropout masks
    whenever it is computed. Training and inference mode are the module's ``train()`` and
    ``eval()``.
    """
    held: dict[str, Any] = {}

    def split(module: nnx.Module):
        return nnx.split(module, nnx.Param, nnx.RngState, ...)

    def init(key: jax.Array, inputs: jax.Array) -> tuple[Any, Any]:
        module = build(nnx.Rngs(key))
        if not isinstance(module, nnx.Module):
            raise NetworkError(
                f"the NNX builder returned {type(module).__name__}, not an nnx.Module"
            )
        graphdef, params, rng_state, state = split(module)
        streams = {v.tag for v in jax.tree.leaves(rng_state, is_leaf=_is_var)}
        held.update(graphdef=graphdef, params=params, rng_state=rng_state, state=state)
        held["streams"] = sorted(streams)
        return nnx.to_pure_dict(params), nnx.to_pure_dict(state)

    def apply(params, state, inputs, *, train: bool, rng: jax.Array | None = None):
        if "graphdef" not in held:
            raise NetworkError("call init before apply: the NNX module is built there")
        module = nnx.merge(
            held["graphdef"],
            _filled(held["params"], params),
            held["rng_state"],
            _filled(held["state"], state),
            copy=True,
        )
        if train:
            module.train()
            if rng is not None and held["streams"]:
                nnx.reseed(module, **{name: rng for name in held["streams"]})
        else:
            module.eval()
        outputs = module(inputs)
        _, _, _, new_state = split(module)
        return outputs, (nnx.to_pure_dict(new_state) if train else state)

    return Network(init, apply, None, "nnx")


def _is_var(x: Any) -> bool:
    return isinstance(x, nnx.Variable)


def _filled(template: nnx.State, values: dict) -> nnx.State:
    """Returns a copy of the State ``template`` holding ``values`` (nested dicts of arrays, the
    form checkpoints and optax handle)."""
    state = jax.tree.map(lambda leaf: leaf, template)
    nnx.replace_by_pure_dict(state, values)
    return state


def parameter_shapes(params: Any) -> dict[str, list[int]]:
    """Returns ``{path: shape}`` of a parameter tree: the fingerprint a run records."""
    flat, _ = jax.tree_util.tree_flatten_with_path(params)
    return {jax.tree_util.keystr(path): list(np.shape(leaf)) for path, leaf in flat}


def check_network(network: Any) -> Network:
    """Returns ``network`` if it keeps the contract's shape; raises NetworkError otherwise."""
    if isinstance(network, nn.Module):
        return from_linen(network)
    if not isinstance(network, Network):
        raise NetworkError(
            f"expected a landscape Network or a flax.linen.Module, got {type(network).__name__}; "
            "wrap an NNX module with landscape.network.from_nnx"
        )
    return network


def example_inputs(shape: Sequence[int], dtype=jnp.float32) -> jax.Array:
    """Returns a batch of one zero input of ``shape`` (without the batch axis), for ``init``."""
    return jnp.zeros((1, *shape), dtype)
