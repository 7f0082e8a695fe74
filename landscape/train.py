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
from landscape.models import create_model, init_variables


class TrainState(struct.PyTreeNode):
    """Everything that changes during training, as one pytree passed through ``jit``."""

    step: jax.Array  # int32 scalar: number of updates taken
    params: Any
    batch_stats: Any  # BatchNorm running averages; {} for networks without BN
    opt_state: Any
    rng: jax.Array  # uint32 key data; the step's noise key is fold_in(rng, step)


class StepOutput(NamedTuple):
    """What one training step returns besides the new state (all on device)."""

    loss: jax.Array  # training loss on the step's batch before the update, nats
    accuracy: jax.Array  # fraction of the batch classified correctly before the update
    grads: Any  # the training gradient g_t; the inline probe reuses it


def make_optimizer(config: OptimizerConfig) -> optax.GradientTransformation:
    """Returns the optax optimiser: plain SGD by default, as in the paper."""
    if config.name == "sgd":
        opt = optax.sgd(config.learning_rate)
    elif config.name == "momentum":
        opt = optax.sgd(config.learning_rate, momentum=config.momentum)
    elif config.name == "adam":
        opt = optax.adam(config.learning_rate)
    else:
        raise ValueError(f"unknown optimizer {config.name!r}; choose sgd, momentum or adam")
    if config.weight_decay:
        opt = optax.chain(optax.add_decayed_weights(config.weight_decay), opt)
    return opt


def build_model(config: ModelConfig, num_classes: int = 10) -> nn.Module:
    """Returns the Flax module a ``ModelConfig`` describes."""
    return create_model(
        config.arch,
        width=config.width,
        norm=config.norm,
        placement=config.placement,
        num_classes=num_classes,
        conv_impl=config.conv_impl,
    )


def create_train_state(
    model: nn.Module,
    optimizer: optax.GradientTransformation,
    seed: int,
    image_shape: tuple[int, ...] = (32, 32, 3),
) -> TrainState:
    """Returns the initial state: Glorot-initialised parameters from ``seed``, step 0."""
    root = jax.random.key(seed)
    init_key, noise_key = jax.random.split(root)
    variables = init_variables(model, init_key, image_shape)
    return TrainState(
        step=jnp.zeros((), jnp.int32),
        params=variables["params"],
        batch_stats=variables["batch_stats"],
        opt_state=optimizer.init(variables["params"]),
        rng=jax.random.key_data(noise_key),
    )


def make_loss_fn(model: nn.Module) -> Callable:
    """Returns the training loss ``loss_fn(params, batch_stats, batch)``.

    It evaluates the network in training mode (BatchNorm uses the batch's statistics, as the
    optimiser sees the loss) and returns ``(mean cross-entropy in nats, (new_batch_stats,
    logits))``. The trainer and the probe both use it. ``batch`` is a dict with ``image``
    (normalised float32 NHWC), ``label`` (int32) and optionally ``rng`` (key data for noise).
    """

    def loss_fn(params, batch_stats, batch):
        rngs = {"noise": jax.random.wrap_key_data(batch["rng"])} if "rng" in batch else None
        logits, updates = model.apply(
            {"params": params, "batch_stats": batch_stats},
            batch["image"],
            train=True,
            mutable=["batch_stats"],
            rngs=rngs,
        )
        loss = optax.softmax_cross_entropy_with_integer_labels(logits, batch["label"]).mean()
        return loss, (updates.get("batch_stats", {}), logits)

    return loss_fn


def step_batch(state: TrainState, batch: dict) -> dict:
    """Returns ``batch`` with the step's noise key added (noisy normalisation layers use it)."""
    key = jax.random.fold_in(jax.random.wrap_key_data(state.rng), state.step)
    return {**batch, "rng": jax.random.key_data(key)}


def make_train_step(loss_fn: Callable, optimizer: optax.GradientTransformation) -> Callable:
    """Returns the jitted ``train_step(state, batch) -> (new_state, StepOutput)``.

    The step's gradient is returned as well, so an inline probe reuses it instead of computing
    it again; the update itself never depends on whether anybody probes.
    """

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
        accuracy = jnp.mean(jnp.argmax(logits, -1) == batch["label"])
        return new_state, StepOutput(loss, accuracy, grads)

    return train_step


def make_eval_step(model: nn.Module) -> Callable:
    """Returns jitted ``eval_step(params, batch_stats, batch) -> (summed loss, correct count)``.

    Evaluation of test accuracy uses inference mode (BatchNorm's running averages).
    """

    @jax.jit
    def eval_step(params, batch_stats, batch):
        logits = model.apply(
            {"params": params, "batch_stats": batch_stats}, batch["image"], train=False
        )
        losses = optax.softmax_cross_entropy_with_integer_labels(logits, batch["label"])
        return losses.sum(), jnp.sum(jnp.argmax(logits, -1) == batch["label"])

    return eval_step


class BatchSource:
    """Builds batches on the device from a dataset held there as uint8.

    With a ``mesh`` (``landscape.sharding``) the data set is copied to every device and each
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
        labels = labels.astype(np.int32)
        if mesh is None:
            self.images, self.labels = jax.device_put(images), jax.device_put(labels)
        else:
            from landscape.sharding import place, replicated

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
        from landscape.sharding import place, replicated, split_batch

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
    """Returns test ``loss`` (mean cross-entropy, nats) and ``accuracy`` (fraction), on device."""
    total_loss, correct, count = 0.0, 0, 0
    for batch in source.chunks(chunk_size, limit):
        loss, hits = eval_step(state.params, state.batch_stats, batch)
        total_loss, correct = total_loss + loss, correct + hits
        count += batch["label"].shape[0]
    return {"test_loss": total_loss / count, "test_accuracy": correct / count}
