"""Internal covariate shift as Santurkar et al. 2018 define it (Definition 2.1, Figure 3).

For layer i at step t, on the step's minibatch B_t (and the step's noise key),

    G_{t,i}  = grad_{W_i} L(W_1^t, ..., W_k^t; B_t)
    G'_{t,i} = grad_{W_i} L(W_1^{t+1}, ..., W_{i-1}^{t+1}, W_i^t, ..., W_k^t; B_t)

where W^{t+1} is the update the optimiser actually takes at step t (the run's optax optimiser
from the step's ``opt_state``, so SGD, momentum and Adam are all exact). The shift is reported as
``||G - G'||_2`` and ``cos(G, G')``: G' is the gradient layer i would see if the layers before it
had already moved, so a large distance means the layer's update target moves under it.

"Layer" is a block of parameters in forward order. For Flax models ``model_layers`` finds the
blocks by running the model once and watching which submodules are called: every module that
owns a ``kernel`` (a conv or dense layer) starts a layer, and every other parameter-owning module
(BatchNorm's or an l_p normalisation's scale and shift) belongs to the layer it follows in the
forward pass. VGG-11 thus has layers 1-8 (conv #1..#8, each with its normalisation) and layer 9
(the classifier). Layer numbers are 1-based, as the paper's "layer #5".

All G'_i come from one jitted function: ``lax.map`` over the chosen layer numbers builds the
mixed parameters by a masked select per leaf (updated if the leaf's layer precedes i, else old),
so only one extra parameter copy is alive at a time; one gradient per layer is inherent.

``record_ics`` computes this offline from a run's checkpoints, on the batch each step was trained
on, and appends ``RUN_DIR/<variant>/ics.jsonl``.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any, NamedTuple

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
import optax
from jax.extend.core import Var

from landscape.network import linen_rngs
from landscape.probe import _scalar_loss
from landscape.train import step_batch


class ICSResult(NamedTuple):
    """Definition 2.1 at one step, for the layers asked for; every field has shape (L,)."""

    layer: jax.Array  # the 1-based layer numbers measured
    dist: jax.Array  # ||G - G'||_2, in gradient units (loss per parameter unit)
    cosine: jax.Array  # cos(G, G'), 1 when the preceding layers' update changes nothing
    grad_norm: jax.Array  # ||G||_2
    shifted_grad_norm: jax.Array  # ||G'||_2


@dataclass(frozen=True)
class Layer:
    """One layer of Definition 2.1: a name and the parameter modules (paths) it owns."""

    name: str  # e.g. "conv5", "classifier"
    modules: tuple[tuple[str, ...], ...]  # module paths into the params tree, e.g. ("Conv3x3_4",)


# --- layers of a model ------------------------------------------------------------------------


def _module_paths(params: Any) -> list[tuple[str, ...]]:
    """Returns the paths of the modules that own parameters directly, in the tree's order."""
    paths: list[tuple[str, ...]] = []
    for path, _ in jax.tree_util.tree_leaves_with_path(params):
        module = tuple(_key(k) for k in path[:-1])
        if module not in paths:
            paths.append(module)
    return paths


def _owns_kernel(params: Any, module: tuple[str, ...]) -> bool:
    node = params
    for key in module:
        node = node[key]
    return "kernel" in node


def model_layers(model: nn.Module, variables: dict, example: jax.Array, **kwargs) -> list[Layer]:
    """Returns the layers of a Flax model in forward order (see the module docstring).

    The model is traced once (``jax.eval_shape``, nothing is computed) with
    ``model.apply(variables, example, train=True, **kwargs)``; the order in which submodules are
    first called is the forward order. A module owning a ``kernel`` starts a layer named
    ``conv<n>`` (a 4-d kernel) or ``dense<n>``, the last dense layer being ``classifier``; every
    other parameter module joins the layer it follows (parameters before the first kernel join the
    first layer).
    """
    params = variables["params"]
    owners = _module_paths(params)
    called: list[tuple[str, ...]] = []

    def interceptor(next_fun, args, kwargs_, context):
        path = tuple(context.module.path)
        if path not in called:
            called.append(path)
        return next_fun(*args, **kwargs_)

    def trace(v, x):
        with nn.intercept_methods(interceptor):
            return model.apply(v, x, train=True, mutable=True, rngs=linen_rngs(jax.random.key(0)))

    jax.eval_shape(trace, variables, example)
    rank = {path: i for i, path in enumerate(called)}
    ordered = sorted(owners, key=lambda p: rank.get(p, len(rank)))

    def kernel_ndim(module: tuple[str, ...]) -> int | None:
        if not _owns_kernel(params, module):
            return None
        node = params
        for key in module:
            node = node[key]
        return int(np.ndim(node["kernel"]))

    return _grouped_layers(
        ordered, kernel_ndim, "the model has no conv or dense layer (no parameter called 'kernel')"
    )


def _grouped_layers(
    ordered: Sequence[tuple[str, ...]],
    kernel_ndim: Callable[[tuple[str, ...]], int | None],
    none_found: str,
) -> list[Layer]:
    """Returns the layers of parameter modules given in forward order: a module whose kernel
    has ``kernel_ndim`` dimensions (None: it has no kernel) starts a layer, named ``conv<n>``
    for a 4-d kernel or ``dense<n>`` (the last dense layer ``classifier``); every other module
    joins the layer it follows (those before the first kernel join the first layer; with no
    kernel after them, the last)."""
    groups: list[list[tuple[str, ...]]] = []
    leading: list[tuple[str, ...]] = []
    for module in ordered:
        if kernel_ndim(module) is not None:
            groups.append([*leading, module])
            leading = []
        elif groups:
            groups[-1].append(module)
        else:
            leading.append(module)
    if not groups:
        raise ValueError(none_found)
    if leading:
        groups[-1].extend(leading)
    layers, convs, denses = [], 0, 0
    for group in groups:
        if max(kernel_ndim(m) or 0 for m in group) >= 4:
            convs += 1
            name = f"conv{convs}"
        else:
            denses += 1
            name = f"dense{denses}"
        layers.append(Layer(name, tuple(group)))
    if layers[-1].name.startswith("dense"):
        layers[-1] = Layer("classifier", layers[-1].modules)
    return layers


def _key(entry: Any) -> str:
    """One step of a key path as text: a dict key, an attribute name or a sequence index."""
    return str(getattr(entry, "key", getattr(entry, "name", getattr(entry, "idx", entry))))


def traced_layers(network: Any, params: Any, state: Any, example: jax.Array) -> list[Layer]:
    """Returns the layers of any ``landscape.network.Network`` (NNX, Equinox, hand-written) in
    forward order, read from the traced forward pass.

    ``network.apply`` in training mode is traced once to a jaxpr (nothing is computed); the
    forward order of a parameter is the first equation that reads it. A module (the path of a
    parameter less its last key) that owns a parameter of two or more dimensions (a kernel or
    weight matrix) starts a layer, named as in ``model_layers``; every other parameter module
    (biases, normalisation scales and shifts) joins the layer it follows.
    """
    flat, treedef = jax.tree_util.tree_flatten_with_path(params)
    leaves = [leaf for _, leaf in flat]

    def forward(*values):
        rebuilt = jax.tree_util.tree_unflatten(treedef, values)
        return network.apply(rebuilt, state, example, train=True, rng=jax.random.key(0))[0]

    jaxpr = jax.make_jaxpr(forward)(*leaves).jaxpr
    first_use = {}
    for position, eqn in enumerate(jaxpr.eqns):
        for var in eqn.invars:
            if isinstance(var, Var) and var not in first_use:
                first_use[var] = position
    never = len(jaxpr.eqns)
    used: dict[tuple[str, ...], int] = {}  # module path -> its first use
    for (path, _), var in zip(flat, jaxpr.invars, strict=True):
        module = tuple(_key(k) for k in path[:-1])
        used[module] = min(used.get(module, never), first_use.get(var, never))
    ordered = sorted(used, key=used.get)
    ndims: dict[tuple[str, ...], int] = {}
    for path, leaf in flat:
        module = tuple(_key(k) for k in path[:-1])
        ndims[module] = max(ndims.get(module, 0), int(np.ndim(leaf)))
    return _grouped_layers(
        ordered,
        lambda m: ndims[m] if ndims[m] >= 2 else None,
        "the network has no parameter of two or more dimensions (no layer)",
    )


def top_level_layers(params: Any) -> list[Layer]:
    """Returns one layer per top-level key of ``params``, in the dict's order (for plain pytrees)."""
    return [Layer(str(key), ((str(key),),)) for key in params]


def layer_owner(params: Any, layers: Sequence[Layer]) -> Any:
    """Returns a pytree like ``params`` whose leaves are the 1-based number of their layer.

    Raises ValueError if a parameter belongs to no layer.
    """
    number = {module: i + 1 for i, layer in enumerate(layers) for module in layer.modules}

    def owner(path, _):
        keys = tuple(_key(k) for k in path)
        for cut in range(len(keys), -1, -1):
            if keys[:cut] in number:
                return number[keys[:cut]]
        raise ValueError(f"parameter {'/'.join(keys)} belongs to no layer")

    return jax.tree_util.tree_map_with_path(owner, params)


# --- Definition 2.1 ----------------------------------------------------------------------------


def internal_covariate_shift(
    loss_fn: Callable,
    params: Any,
    opt_state: Any,
    optimizer: optax.GradientTransformation,
    batch: Any,
    *,
    layers: Sequence[Layer] | None = None,
    select: Sequence[int] | jax.Array | None = None,
    model_state: Any = None,
    grad: Any = None,
) -> ICSResult:
    """Returns Definition 2.1's ``||G - G'||`` and ``cos(G, G')`` per layer at one step.

    Args:
      loss_fn: the training loss, ``loss_fn(params, batch)`` or ``loss_fn(params, model_state,
        batch)``; it may return ``(loss, aux)`` (aux is discarded). BatchNorm networks should use
        training mode, as the optimiser sees the loss (``landscape.train.make_loss_fn`` does).
      params, opt_state: the parameters W^t and the optimiser state before step t's update.
      optimizer: the optax optimiser that takes the step; W^{t+1} = W^t + update(G, opt_state, W^t).
      batch: the step's minibatch B_t (with its noise key, if the model uses one).
      layers: the partition of ``params`` into layers, in forward order (``model_layers`` for
        Flax models); default ``top_level_layers(params)``.
      select: 1-based numbers of the layers to measure (default: all); traced, so one
        compilation serves any choice of the same length.
      grad: the gradient G at ``params`` if already computed.

    Returns:
      An ``ICSResult`` with one entry per selected layer. The first layer's G' equals G (nothing
      precedes it): distance 0, cosine 1.
    """
    f = _scalar_loss(loss_fn, model_state)
    layers = list(layers) if layers is not None else top_level_layers(params)
    owner = layer_owner(params, layers)
    if grad is None:
        grad = jax.grad(f)(params, batch)
    updates, _ = optimizer.update(grad, opt_state, params)
    new_params = optax.apply_updates(params, updates)
    if select is None:
        select = jnp.arange(1, len(layers) + 1)
    select = jnp.asarray(select, jnp.int32)

    def only(i, tree):
        return jax.tree.map(lambda o, x: jnp.where(o == i, x, jnp.zeros_like(x)), owner, tree)

    def at_layer(i):
        # Layers before i have taken their update; i and later are still at W^t.
        mixed = jax.tree.map(
            lambda o, new, old: jnp.where(o < i, new, old), owner, new_params, params
        )
        # Nothing precedes layer 1, so its G' is G by definition: skip the gradient (which would
        # differ from G only by the rounding of a separately compiled evaluation).
        shifted = jax.lax.cond(i > 1, lambda: jax.grad(f)(mixed, batch), lambda: grad)
        g, g_shift = only(i, grad), only(i, shifted)
        g_norm, gs_norm = optax.tree.norm(g), optax.tree.norm(g_shift)
        dist = optax.tree.norm(optax.tree.sub(g, g_shift))
        return dist, optax.tree.vdot(g, g_shift) / (g_norm * gs_norm), g_norm, gs_norm

    dist, cosine, g_norm, gs_norm = jax.lax.map(at_layer, select)
    return ICSResult(select, dist, cosine, g_norm, gs_norm)


def make_ics_step(
    loss_fn: Callable, optimizer: optax.GradientTransformation, layers: Sequence[Layer]
) -> Callable:
    """Returns jitted ``ics_step(state, batch, select) -> ICSResult`` for a ``TrainState``.

    The loss is evaluated as the training step sees it: BatchNorm in training mode on the step's
    batch, with the step's noise key (``landscape.train.step_batch``).
    """
    layers = tuple(layers)

    @jax.jit
    def ics_step(state, batch, select):
        return internal_covariate_shift(
            loss_fn,
            state.params,
            state.opt_state,
            optimizer,
            step_batch(state, batch),
            layers=layers,
            select=select,
            model_state=state.batch_stats,
        )

    return ics_step


# --- offline, from a run's checkpoints ----------------------------------------------------------
