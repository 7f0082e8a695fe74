"""Networks, data and a loss written as a user would, outside the package: the tests reach them
only through import paths (``own_models:linen_mlp``), as the command does."""

from __future__ import annotations

import flax.linen as nn
import jax.numpy as jnp
import numpy as np
from flax import nnx

from landscape.network import from_nnx


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
