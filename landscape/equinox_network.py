"""The Equinox adapter of the model contract (the ``equinox`` extra; docs/own-models.md).

Equinox networks are usually written for one example and vmapped by their caller, keep their
BatchNorm running averages in an ``eqx.nn.State`` beside the module, and take dropout's key as
a ``key`` keyword. ``from_equinox`` turns such a network into a ``landscape.network.Network``:
the parameters are the module's floating-point arrays (``eqx.partition``), the state is the
``eqx.nn.State`` (``{}`` without one), and training or inference mode is
``eqx.nn.inference_mode``.
"""

from __future__ import annotations

import inspect
from collections.abc import Callable
from typing import Any

import equinox as eqx
import jax
import jax.numpy as jnp

from landscape.network import Network, NetworkError, first_line


def _is_parameter(leaf: Any) -> bool:
    """Floating-point arrays, concrete or abstract (``filter_eval_shape``'s), are parameters."""
    if isinstance(leaf, jax.ShapeDtypeStruct):
        return jnp.issubdtype(leaf.dtype, jnp.inexact)
    return eqx.is_inexact_array(leaf)


def _takes_key(module: eqx.Module) -> bool:
    try:
        parameters = inspect.signature(module.__call__).parameters
    except (TypeError, ValueError):
        return False
    return "key" in parameters or any(p.kind is p.VAR_KEYWORD for p in parameters.values())


def from_equinox(
    build: Callable[[jax.Array], Any], *, per_example: bool = True, axis_name: str = "batch"
) -> Network:
    """Returns the ``Network`` of an Equinox module built by ``build(key)``.

    ``build`` returns the module, or ``(module, state)`` as ``eqx.nn.make_with_state`` does; a
    stateful module is called ``module(x, state, key=...) -> (y, state)``, a stateless one
    ``module(x, key=...) -> y`` (``key`` only if ``__call__`` takes it). With ``per_example``
    (Equinox's habit) the module sees one example and is vmapped over the batch with
    ``axis_name``, the name its ``eqx.nn.BatchNorm`` layers reduce over; each example gets its
    own key, split from the step's, so a step re-run draws the same dropout masks. Integer
    arrays in the module are taken as constants, not trained.
    """
    try:
        abstract = eqx.filter_eval_shape(build, jax.random.key(0))
    except Exception as err:  # the user's builder failed: one line of why
        raise NetworkError(
            f"the Equinox builder fails: {type(err).__name__}: {first_line(err)}"
        ) from None
    stateful = isinstance(abstract, tuple)
    module = abstract[0] if stateful else abstract
    if not isinstance(module, eqx.Module):
        raise NetworkError(
            f"the Equinox builder returned {type(module).__name__}, not an eqx.Module "
            "(or a (module, state) pair)"
        )
    _, static = eqx.partition(module, _is_parameter)
    takes_key = _takes_key(module)

    def init(key: jax.Array, inputs: jax.Array) -> tuple[Any, Any]:
        built = build(key)
        model, state = built if stateful else (built, {})
        params, _ = eqx.partition(model, eqx.is_inexact_array)
        return params, state

    def apply(params, state, inputs, *, train: bool, rng: jax.Array | None = None):
        model = eqx.nn.inference_mode(eqx.combine(params, static), value=not train)
        # An eqx.nn.State refuses a second use; the contract's apply is a pure function of its
        # arguments (the probe calls it many times from one state), so each call gets a copy.
        leaves, treedef = jax.tree_util.tree_flatten(state)
        given = state
        state = jax.tree_util.tree_unflatten(treedef, leaves)
        keys = None
        if train and takes_key and rng is not None:
            keys = jax.random.split(rng, inputs.shape[0]) if per_example else rng

        def call(x, key):
            extra = {"key": key} if key is not None else {}
            if stateful:
                return model(x, state, **extra)
            return model(x, **extra), state

        if per_example:
            key_axis = None if keys is None else 0
            mapped = jax.vmap(
                lambda x, k: call(x, k), in_axes=(0, key_axis), out_axes=(0, None),
                axis_name=axis_name,
            )  # fmt: skip
            outputs, new_state = mapped(inputs, keys)
        else:
            outputs, new_state = call(inputs, keys)
        return outputs, (new_state if train else given)

    return Network(init, apply, None, "equinox")
