"""Networks, data and a loss written as a user would, outside the package: the tests reach them
only through import paths (``own_models:linen_mlp``), as the command does."""

from __future__ import annotations

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
import optax
import orbax.checkpoint as ocp
from flax import nnx

from landscape.network import from_linen, from_nnx
from landscape.train import make_loss_fn


class LinenMLP(nn.Module):
    """Two dense layers with optional BatchNorm and dropout, on flattened inputs."""

    hidden: int = 16
    num_outputs: int = 10
    norm: str = "none"

    @nn.compact
    def __call__(self, x, train: bool):
        x = nn.Dense(self.hidden)(x.reshape(x.shape[0], -1))
        if self.norm == "batchnorm":
            x = nn.BatchNorm(use_running_average=not train, momentum=0.9)(x)
        x = nn.relu(x)
        x = nn.Dropout(0.2, deterministic=not train)(x)
        return nn.Dense(self.num_outputs)(x)


def linen_mlp(hidden: int = 16, norm: str = "none", num_outputs: int = 10) -> nn.Module:
    return LinenMLP(hidden=hidden, num_outputs=num_outputs, norm=norm)


class NNXNet(nnx.Module):
    def __init__(self, rngs: nnx.Rngs, inputs: int, num_outputs: int):
        self.dense = nnx.Linear(inputs, 16, rngs=rngs)
        self.norm = nnx.BatchNorm(16, rngs=rngs)
        self.drop = nnx.Dropout(0.2, rngs=rngs)
        self.out = nnx.Linear(16, num_outputs, rngs=rngs)

    def __call__(self, x):
        x = self.norm(self.dense(x.reshape(x.shape[0], -1)))
        return self.out(self.drop(nnx.relu(x)))


def nnx_net(num_outputs: int = 10):
    return from_nnx(lambda rngs: NNXNet(rngs, 6 * 6 * 3, num_outputs))


def tiny_images(seed: int = 0) -> dict[str, np.ndarray]:
    """A data factory: 6x6 RGB images whose class is the brightest channel (3 classes)."""
    rng = np.random.default_rng(seed)
    out = {}
    for split, n in (("train", 96), ("test", 30)):
        x = rng.integers(0, 256, (n, 6, 6, 3), dtype=np.uint8)
        out[f"x_{split}"] = x
        out[f"y_{split}"] = x.reshape(n, -1, 3).mean(1).argmax(1)
    return out


def wrong_width(num_outputs: int = 10) -> nn.Module:
    return LinenMLP(num_outputs=num_outputs + 1)


def not_a_network() -> int:
    return 3


def l1_loss(outputs, targets):
    """A per-example loss of the user's: L1 distance to a one-hot target."""
    onehot = jnp.eye(outputs.shape[-1])[targets]
    return jnp.abs(outputs - onehot).sum(-1)


def summed_loss(outputs, targets):
    return (outputs**2).sum()


def train_elsewhere(folder, steps: int = 7, every: int = 3):
    """A training loop that is not the toolkit's (its own init, batches and momentum optimizer)
    saving Orbax checkpoints of ``{"params", "batch_stats"}`` every ``every`` steps; returns
    ``folder``."""
    data = tiny_images()
    network = from_linen(linen_mlp(norm="batchnorm", num_outputs=3))
    loss_fn = jax.jit(make_loss_fn(network))
    params, stats = network.init(jax.random.key(42), jnp.zeros((1, 6, 6, 3)))
    optimizer = optax.sgd(0.05, momentum=0.9)
    opt_state = optimizer.init(params)
    x = data["x_train"].astype(np.float32) / 255 - 0.5
    with ocp.CheckpointManager(folder) as manager:
        for step in range(steps):
            idx = np.arange(step * 8, step * 8 + 16) % len(x)
            batch = {"image": x[idx], "label": data["y_train"][idx],
                     "rng": jax.random.key_data(jax.random.key(step))}  # fmt: skip
            if step % every == 0:
                state = {"params": params, "batch_stats": stats}
                manager.save(step, args=ocp.args.StandardSave(state))
            (_, (stats, _)), grads = jax.value_and_grad(loss_fn, has_aux=True)(params, stats, batch)
            updates, opt_state = optimizer.update(grads, opt_state, params)
            params = optax.apply_updates(params, updates)
        manager.wait_until_finished()
    return folder


class NoTrainFlag(nn.Module):
    """A module whose ``__call__`` has no ``train`` keyword (no BatchNorm, no dropout)."""

    num_outputs: int = 10

    @nn.compact
    def __call__(self, x):
        return nn.Dense(self.num_outputs)(x.reshape(x.shape[0], -1))


def no_train_flag(num_outputs: int = 10) -> nn.Module:
    return NoTrainFlag(num_outputs)


def raises(num_outputs: int = 10):
    raise RuntimeError("the user's factory broke\nwith a second line")


def regression_data() -> dict[str, np.ndarray]:
    rng = np.random.default_rng(0)
    x = rng.standard_normal((80, 5)).astype(np.float32)
    y = x @ rng.standard_normal((5, 2)).astype(np.float32)
    return {"x_train": x[:64], "y_train": y[:64], "x_test": x[64:], "y_test": y[64:]}


def adamw(learning_rate: float, weight_decay: float = 0.0):
    """A user's optimiser factory (``--optimizer own_models:adamw``)."""
    return optax.adamw(learning_rate, b1=0.8, weight_decay=weight_decay)


def no_learning_rate():
    return optax.sgd(0.1)


def not_an_optimizer(learning_rate: float):
    return {"lr": learning_rate}
