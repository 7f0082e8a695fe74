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

import inspect
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
    kind: str = "custom"  # "linen", "nnx", "equinox" or "custom"
    # How the Linen module is called (``from_linen``'s options), for the analyses that call it.
    train_arg: str | None = "train"
    state_collection: str = "batch_stats"


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

    ``train_arg`` is the keyword of ``__call__`` that switches training mode; it is left out
    when ``__call__`` takes no such keyword (None: never passed). ``state_collection`` is the
    mutable collection holding running statistics. ``rng_names`` are the random streams the
    module may draw from in training mode: the first gets the step's key itself, the others
    ``fold_in(key, i)``.
    """
    if not isinstance(module, nn.Module):
        raise NetworkError(f"from_linen needs a flax.linen.Module, got {type(module).__name__}")
    if train_arg is not None and not _takes_keyword(module, train_arg):
        train_arg = None
    mode = (lambda train: {train_arg: train}) if train_arg else (lambda train: {})

    def init(key: jax.Array, inputs: jax.Array) -> tuple[Any, Any]:
        variables = module.init(key, inputs, **mode(False))
        return variables["params"], variables.get(state_collection, {})

    def apply(params, state, inputs, *, train: bool, rng: jax.Array | None = None):
        variables = {"params": params, state_collection: state}
        if not train:
            return module.apply(variables, inputs, **mode(False)), state
        rngs = None if rng is None else linen_rngs(rng, rng_names)
        outputs, updates = module.apply(
            variables, inputs, **mode(True), mutable=[state_collection], rngs=rngs
        )
        return outputs, updates.get(state_collection, {})

    return Network(init, apply, module, "linen", train_arg, state_collection)


def _takes_keyword(module: nn.Module, name: str) -> bool:
    try:
        parameters = inspect.signature(type(module).__call__).parameters
    except (TypeError, ValueError):
        return True
    return name in parameters or any(p.kind is p.VAR_KEYWORD for p in parameters.values())


def from_nnx(build: Callable[[nnx.Rngs], nnx.Module]) -> Network:
    """Returns the ``Network`` of a Flax NNX module, built by ``build(rngs)``.

    ``init`` builds the module with ``nnx.Rngs(key)``; its ``nnx.Param`` variables are the
    parameters and its other variables (``nnx.BatchStat``...) the state, random streams aside.
    ``apply`` reseeds every stream from the step's key (stream i with ``fold_in(key, i)``), so a
    step draws the same dropout masks whenever it is computed. Training and inference mode are
    the module's ``train()`` and ``eval()``. The module's structure is read once, here, without
    computing anything (``nnx.eval_shape``).
    """
    try:
        abstract = nnx.eval_shape(lambda: build(nnx.Rngs(0)))
    except Exception as err:  # the user's builder failed: one line of why
        raise NetworkError(
            f"the NNX builder fails: {type(err).__name__}: {first_line(err)}"
        ) from None
    if not isinstance(abstract, nnx.Module):
        raise NetworkError(f"the NNX builder returned {type(abstract).__name__}, not an nnx.Module")
    graphdef, params_template, rng_template, state_template = _split(abstract)
    streams = sorted({v.tag for v in jax.tree.leaves(rng_template, is_leaf=_is_var)})

    def init(key: jax.Array, inputs: jax.Array) -> tuple[Any, Any]:
        _, params, _, state = _split(build(nnx.Rngs(key)))
        return nnx.to_pure_dict(params), nnx.to_pure_dict(state)

    def apply(params, state, inputs, *, train: bool, rng: jax.Array | None = None):
        module = nnx.merge(
            graphdef,
            _filled(params_template, params),
            jax.tree.map(_placeholder, rng_template),
            _filled(state_template, state),
            copy=True,
        )
        if train:
            module.train()
            key = jax.random.key(0) if rng is None else rng
            if streams:
                nnx.reseed(module, **{n: jax.random.fold_in(key, i) for i, n in enumerate(streams)})
        else:
            module.eval()
        outputs = module(inputs)
        if not train:
            return outputs, state
        return outputs, nnx.to_pure_dict(_split(module)[3])

    return Network(init, apply, None, "nnx")


def _split(module: nnx.Module):
    return nnx.split(module, nnx.Param, nnx.RngState, ...)


def _placeholder(leaf: Any) -> Any:
    """A concrete value for an abstract random-state leaf; ``apply`` reseeds the streams."""
    if jax.dtypes.issubdtype(leaf.dtype, jax.dtypes.prng_key):
        return jax.random.key(0)
    return jnp.zeros(leaf.shape, leaf.dtype)


def first_line(err: BaseException) -> str:
    """Returns the first line of an exception's message (JAX's can run to many lines)."""
    text = str(err).strip()
    return text.splitlines()[0] if text else type(err).__name__


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
