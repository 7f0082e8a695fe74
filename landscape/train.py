"""Training: the state, the one loss function shared with the probe, the jitted step, the loop.

The loop is a few lines; periodic work (checkpoints, probing, evaluation, writing records) lives
in small hooks around it. The batch at step t is a pure function of (seed, t), so any saved step
can be re-probed later on exactly the batch it was trained on.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any, NamedTuple

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
import optax
from flax import struct
from jax.sharding import Mesh

from landscape.config import ModelConfig, OptimizerConfig
from landscape.data import batch_indices, normalize
from landscape.mesh import place, replicated, split_batch
from landscape.models import create_model, loss_for_arch
from landscape.network import Network, NetworkError, check_network, example_inputs, from_linen
from landscape.norms import NoiseConfig
from landscape.plugins import (
    MODEL_GROUP,
    OPTIMIZER_GROUP,
    PluginError,
    accepts,
    call_factory,
    is_import_path,
    load_object,
)


class TrainState(struct.PyTreeNode):
    """Everything that changes during training, as one pytree passed through ``jit``."""

    step: jax.Array  # int32 scalar: number of updates taken
    params: Any
    batch_stats: Any  # BatchNorm running averages; {} for networks without BN
    opt_state: Any
    rng: jax.Array  # uint32 key data; the step's noise key is fold_in(rng, step)


class StepOutput(NamedTuple):
    """What one training step returns besides the new state (all on device)."""

    loss: jax.Array  # training loss on the step's batch before the update (nats for cross-entropy)
    accuracy: jax.Array  # fraction of the batch classified correctly before the update (NaN: none)
    grads: Any  # the training gradient g_t; the inline probe reuses it


# --- losses, chosen by name ---------------------------------------------------------------------
#
# A loss is a per-example function ``(outputs, targets) -> (batch,)``, how it is reduced over the
# batch (mean or sum) and an optional per-example "correct" indicator for accuracy. The model
# decides which one it is trained with (``landscape.models.loss_for_arch``); the trainer, the
# probe and the evaluation share it.


def cross_entropy(logits: jax.Array, labels: jax.Array) -> jax.Array:
    """Returns the per-example softmax cross-entropy in nats, shape (batch,)."""
    return optax.softmax_cross_entropy_with_integer_labels(logits, labels)


def squared_error(outputs: jax.Array, targets: jax.Array) -> jax.Array:
    """Returns the per-example squared error ``||f(x) - y||^2``, summed over outputs, (batch,).

    Summed over the batch it is the deep linear network's loss of App. A.1,
    ``||W_25 ... W_1 X - A X||_F^2`` (``sum_squared_error``); averaged, ``squared_error``.
    """
    return jnp.sum(jnp.square(outputs - targets), axis=-1)


def argmax_correct(logits: jax.Array, labels: jax.Array) -> jax.Array:
    """Returns 1.0 where the largest logit is the label's, else 0.0, shape (batch,)."""
    return (jnp.argmax(logits, -1) == labels).astype(jnp.float32)


class Loss(NamedTuple):
    """A training loss by parts: the per-example value, its reduction over the batch and, for
    classification, correctness."""

    per_example: Callable[[jax.Array, jax.Array], jax.Array]
    correct: Callable[[jax.Array, jax.Array], jax.Array] | None  # None: no accuracy (NaN)
    reduction: str = "mean"  # "mean" or "sum" over the examples of the batch


LOSSES: dict[str, Loss] = {
    "cross_entropy": Loss(cross_entropy, argmax_correct),
    # Sum over outputs, mean over samples.
    "squared_error": Loss(squared_error, None),
    # Sum over outputs and samples: ||F(X) - Y||_F^2 over the batch, the DLN's (App. A.1).
    "sum_squared_error": Loss(squared_error, None, "sum"),
}


def get_loss(name: str) -> Loss:
    """Returns the loss called ``name``: cross_entropy, squared_error, sum_squared_error, or
    ``package.module:function``, a user's per-example loss ``(outputs, targets) -> (batch,)``
    averaged over the batch (no accuracy)."""
    if is_import_path(name):
        try:
            return Loss(load_object(name), None)
        except PluginError as err:
            raise ValueError(f"loss {err}") from None
    try:
        return LOSSES[name]
    except KeyError:
        raise ValueError(f"unknown loss {name!r}; choose one of {', '.join(LOSSES)}") from None


def model_loss(config: ModelConfig, task: str = "classification") -> str:
    """Returns the name of the loss a model trains with: its configured ``loss``, else the
    built-in network's own (``models.loss_for_arch``), else cross-entropy for classes and the
    mean squared error for a regression ``task``."""
    if config.loss is not None:
        return config.loss
    if config.is_builtin:
        return loss_for_arch(config.arch)
    return "squared_error" if task == "regression" else "cross_entropy"


def _accuracy(loss: Loss, outputs: jax.Array, targets: jax.Array) -> jax.Array:
    """Returns the fraction of correct examples, or NaN for a loss without accuracy."""
    if loss.correct is None:
        return jnp.full((), jnp.nan, jnp.float32)
    return jnp.mean(loss.correct(outputs, targets))


def make_optimizer(config: OptimizerConfig) -> optax.GradientTransformation:
    """Returns the optax optimiser: plain SGD by default, as in the paper.

    ``config.name`` may also be a user's factory, ``package.module:function`` or a name
    registered in the ``landscape.optimizers`` entry-point group: it is called with
    ``learning_rate`` (required: the probe's step sizes are multiples of it) and, where it
    accepts them, ``momentum`` and ``weight_decay``, and must return an optax
    ``GradientTransformation``. Weight decay it does not take is chained before it, as for the
    built-in ones. Raises PluginError (one line) for a factory that does not fit.
    """
    if config.name == "sgd":
        opt = optax.sgd(config.learning_rate)
    elif config.name == "momentum":
        opt = optax.sgd(config.learning_rate, momentum=config.momentum)
    elif config.name == "adam":
        opt = optax.adam(config.learning_rate)
    else:
        return _user_optimizer(config)
    if config.weight_decay:
        opt = optax.chain(optax.add_decayed_weights(config.weight_decay), opt)
    return opt


def _user_optimizer(config: OptimizerConfig) -> optax.GradientTransformation:
    factory = load_object(config.name, OPTIMIZER_GROUP)
    if callable(factory) and not accepts(factory, "learning_rate"):
        raise PluginError(
            f"{config.name!r} must take a learning_rate argument: --lr sets it, and the probe's "
            "step sizes are multiples of it"
        )
    offered = {"momentum": config.momentum, "weight_decay": config.weight_decay}
    opt = call_factory(factory, config.name, {"learning_rate": config.learning_rate}, **offered)
    if not (callable(getattr(opt, "init", None)) and callable(getattr(opt, "update", None))):
        raise PluginError(
            f"{config.name!r} returned a {type(opt).__name__}, not an optax GradientTransformation"
        )
    if config.weight_decay and not accepts(factory, "weight_decay"):
        opt = optax.chain(optax.add_decayed_weights(config.weight_decay), opt)
    return opt


def build_model(config: ModelConfig, num_classes: int = 10) -> nn.Module:
    """Returns the Flax module a ``ModelConfig`` describes (Algorithm 1's constants included)."""
    return create_model(
        config.arch,
        width=config.width,
        norm=config.norm,
        placement=config.placement,
        num_classes=num_classes,
        conv_impl=config.conv_impl,
        noise=NoiseConfig(
            n_mu=config.noise_mu,
            n_sigma=config.noise_sigma,
            r_mu=config.noise_r_mu,
            r_sigma=config.noise_r_sigma,
        ),
    )


def build_network(config: ModelConfig, num_outputs: int = 10) -> Network:
    """Returns the ``Network`` a ``ModelConfig`` describes: a built-in network through the Linen
    adapter, or the user's factory called with its arguments (and ``num_outputs`` if it takes
    it). Raises NetworkError (one line) for a factory that does not import or returns neither
    a Linen module nor a ``Network``."""
    if config.is_builtin:
        return from_linen(build_model(config, num_outputs))
    try:
        factory = load_object(config.factory, MODEL_GROUP)
        value = call_factory(
            factory, config.factory, dict(config.model_args), num_outputs=num_outputs
        )
    except PluginError as err:
        raise NetworkError(f"model {err}") from None
    if isinstance(value, nn.Module):
        return from_linen(value)
    if isinstance(value, Network):
        return value
    raise NetworkError(
        f"model {config.factory!r} returned a {type(value).__name__}; return a flax.linen.Module "
        "or a landscape.network.Network (landscape.network.from_nnx for an NNX module, "
        "landscape.equinox_network.from_equinox for an Equinox one)"
    )


def create_train_state(
    model: Network | nn.Module,
    optimizer: optax.GradientTransformation,
    seed: int,
    image_shape: tuple[int, ...] = (32, 32, 3),
) -> TrainState:
    """Returns the initial state: the network's parameters and state from ``seed``, step 0.

    ``model`` is a ``Network`` (``landscape.network``) or a Flax Linen module; the built-in
    networks initialise with Glorot, as the paper does.
    """
    network = check_network(model)
    root = jax.random.key(seed)
    init_key, noise_key = jax.random.split(root)
    params, model_state = network.init(init_key, example_inputs(image_shape))
    return TrainState(
        step=jnp.zeros((), jnp.int32),
        params=params,
        batch_stats=model_state,
        opt_state=optimizer.init(params),
        rng=jax.random.key_data(noise_key),
    )


def make_loss_fn(model: Network | nn.Module, loss: str = "cross_entropy") -> Callable:
    """Returns the training loss ``loss_fn(params, model_state, batch)``.

    It evaluates the network in training mode (BatchNorm uses the batch's statistics, as the
    optimiser sees the loss) and returns ``(the per-example loss reduced over the batch,
    (new_model_state, outputs))``: mean cross-entropy in nats, or the squared error summed over
    outputs, averaged (``"squared_error"``) or summed (``"sum_squared_error"``, the deep linear
    network's) over the batch. The trainer and the probe both use it. ``batch`` is a dict with
    ``image`` (normalised float32 inputs), ``label`` (int32 classes, or float targets) and
    optionally ``rng`` (key data for dropout and noise). ``model`` is a ``Network`` or a Linen
    module.
    """
    network = check_network(model)
    spec = get_loss(loss)

    def loss_fn(params, model_state, batch):
        rng = jax.random.wrap_key_data(batch["rng"]) if "rng" in batch else None
        outputs, new_state = network.apply(params, model_state, batch["image"], train=True, rng=rng)
        return reduce_loss(spec, outputs, batch["label"]), (new_state, outputs)

    return loss_fn


def reduce_loss(spec: Loss, outputs: jax.Array, targets: jax.Array) -> jax.Array:
    """Returns the per-example loss of ``spec`` reduced over the batch (mean or sum), a scalar."""
    losses = spec.per_example(outputs, targets)
    return losses.sum() if spec.reduction == "sum" else losses.mean()


def step_batch(state: TrainState, batch: dict) -> dict:
    """Returns ``batch`` with the step's noise key added (noisy normalisation layers use it)."""
    key = jax.random.fold_in(jax.random.wrap_key_data(state.rng), state.step)
    return {**batch, "rng": jax.random.key_data(key)}


def make_train_step(
    loss_fn: Callable, optimizer: optax.GradientTransformation, loss: str = "cross_entropy"
) -> Callable:
    """Returns the jitted ``train_step(state, batch) -> (new_state, StepOutput)``.

    The step's gradient is returned as well, so an inline probe reuses it instead of computing
    it again; the update itself never depends on whether anybody probes. ``loss`` names the
    loss of ``loss_fn``, for the accuracy (NaN for a loss without one).
    """
    spec = get_loss(loss)

    @jax.jit
    def train_step(state: TrainState, batch: dict) -> tuple[TrainState, StepOutput]:
        batch = step_batch(state, batch)
        (loss, (new_stats, logits)), grads = jax.value_and_grad(loss_fn, has_aux=True)(
            state.params, state.batch_stats, batch
        )
        updates, opt_state = optimizer.update(grads, state.opt_state, state.params)
        new_state = state.replace(
            step=state.step + 1,
            params=optax.apply_updates(state.params, updates),
            batch_stats=new_stats,
            opt_state=opt_state,
        )
        return new_state, StepOutput(loss, _accuracy(spec, logits, batch["label"]), grads)

    return train_step


def make_eval_step(model: Network | nn.Module, loss: str = "cross_entropy") -> Callable:
    """Returns jitted ``eval_step(params, model_state, batch) -> (summed loss, correct count)``.

    Evaluation of test accuracy uses inference mode (BatchNorm's running averages). The loss is
    the per-example training loss ``loss`` summed over the examples (``evaluate`` divides by
    their number: the test loss is per example whatever the training reduction); the count is
    NaN without an accuracy.
    """
    network = check_network(model)
    spec = get_loss(loss)

    @jax.jit
    def eval_step(params, model_state, batch):
        outputs, _ = network.apply(params, model_state, batch["image"], train=False)
        losses = spec.per_example(outputs, batch["label"])
        if spec.correct is None:
            return losses.sum(), jnp.full((), jnp.nan, jnp.float32)
        return losses.sum(), jnp.sum(spec.correct(outputs, batch["label"]))

    return eval_step


class BatchSource:
    """Builds batches on the device from a dataset held there as uint8.

    With a ``mesh`` (``landscape.mesh``) the data set is copied to every device and each
    batch comes back split along its first axis across them: each device gathers its own rows.
    """

    def __init__(
        self,
        images: np.ndarray,
        labels: np.ndarray,
        mean,
        std,
        batch_size: int,
        seed: int,
        mesh: Mesh | None = None,
    ):
        self.mesh = mesh
        # Class labels as int32; a regression set's float targets as they are.
        if np.issubdtype(labels.dtype, np.integer):
            labels = labels.astype(np.int32)
        if mesh is None:
            self.images, self.labels = jax.device_put(images), jax.device_put(labels)
        else:
            self.images, self.labels = place((images, labels), replicated(mesh))
        self.mean = jnp.asarray(mean, jnp.float32)
        self.std = jnp.asarray(std, jnp.float32)
        self.batch_size = batch_size
        self.seed = seed
        self.num_examples = int(images.shape[0])
        self._gather = jax.jit(
            lambda images, labels, idx, mean, std: {
                "image": normalize(images[idx], mean, std),
                "label": labels[idx],
            }
        )

    def _indices_on_device(self, idx: np.ndarray) -> jax.Array:
        if self.mesh is None:
            return jnp.asarray(idx)
        # A chunk that does not split evenly (the end of a test set) is kept whole everywhere.
        even = idx.shape[0] % self.mesh.devices.size == 0
        return place(idx, split_batch(self.mesh) if even else replicated(self.mesh))

    def indices(self, step: int) -> np.ndarray:
        """Returns the example indices of the batch at ``step`` (a pure function of seed, step)."""
        return batch_indices(self.seed, step, self.num_examples, self.batch_size)

    def __call__(self, step: int) -> dict:
        """Returns the normalised batch of ``step`` as device arrays."""
        idx = self._indices_on_device(self.indices(step))
        return self._gather(self.images, self.labels, idx, self.mean, self.std)

    def chunks(self, chunk_size: int, limit: int | None = None):
        """Yields batches covering the set, e.g. for evaluation; ``limit`` caps their number.

        The examples come in a fixed random order, so a limited evaluation sees a random
        subset of every class (image folders list their files class by class).
        """
        order = np.random.default_rng(0).permutation(self.num_examples).astype(np.int32)
        starts = range(0, self.num_examples, chunk_size)
        if limit is not None:
            starts = starts[:limit]
        for start in starts:
            idx = self._indices_on_device(order[start : start + chunk_size])
            yield self._gather(self.images, self.labels, idx, self.mean, self.std)


def evaluate(
    eval_step: Callable,
    state: TrainState,
    source: BatchSource,
    limit: int | None = None,
    chunk_size: int = 1000,
) -> dict[str, jax.Array]:
    """Returns test ``loss`` (mean per-example loss) and ``accuracy`` (fraction or NaN), on device."""
    total_loss, correct, count = 0.0, 0, 0
    for batch in source.chunks(chunk_size, limit):
        loss, hits = eval_step(state.params, state.batch_stats, batch)
        total_loss, correct = total_loss + loss, correct + hits
        count += batch["label"].shape[0]
    return {"test_loss": total_loss / count, "test_accuracy": correct / count}
