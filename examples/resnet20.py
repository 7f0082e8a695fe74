"""A ResNet-20 for CIFAR-10 (He et al. 2016, Sec. 4.2) as a user writes it in a file of their own,
with and without BatchNorm. Run it through the whole pipeline with:

    landscape probe --model examples.resnet20:resnet20 --variants norm=none,batchnorm \
        --data cifar10 --steps 300

Three stages of 2n = 6 layers of 3x3 convolutions (16, 32, 64 channels), each pair with an
identity shortcut; where the width doubles, the shortcut subsamples and pads the new channels
with zeros (the paper's option A, which adds no parameters). n = 3 gives 6n + 2 = 20 layers.
"""

from __future__ import annotations

import flax.linen as nn
import jax.numpy as jnp


class Block(nn.Module):
    features: int
    stride: int
    norm: str

    def normalise(self, x, train: bool):
        if self.norm == "batchnorm":
            return nn.BatchNorm(use_running_average=not train, momentum=0.9, epsilon=1e-5)(x)
        return x

    @nn.compact
    def __call__(self, x, train: bool):
        conv = lambda stride: nn.Conv(  # noqa: E731
            self.features, (3, 3), (stride, stride), padding=1, use_bias=self.norm == "none",
            kernel_init=nn.initializers.he_normal(),
        )  # fmt: skip
        y = nn.relu(self.normalise(conv(self.stride)(x), train))
        y = self.normalise(conv(1)(y), train)
        shortcut = x
        if self.stride != 1 or x.shape[-1] != self.features:
            shortcut = x[:, :: self.stride, :: self.stride, :]
            extra = self.features - x.shape[-1]
            shortcut = jnp.pad(shortcut, ((0, 0), (0, 0), (0, 0), (extra // 2, extra - extra // 2)))
        return nn.relu(y + shortcut)


class ResNet(nn.Module):
    depth: int = 20
    norm: str = "batchnorm"
    num_outputs: int = 10

    @nn.compact
    def __call__(self, x, train: bool):
        n = (self.depth - 2) // 6
        x = nn.Conv(16, (3, 3), padding=1, use_bias=self.norm == "none",
                    kernel_init=nn.initializers.he_normal())(x)  # fmt: skip
        if self.norm == "batchnorm":
            x = nn.BatchNorm(use_running_average=not train, momentum=0.9, epsilon=1e-5)(x)
        x = nn.relu(x)
        for stage, features in enumerate((16, 32, 64)):
            for block in range(n):
                stride = 2 if stage > 0 and block == 0 else 1
                x = Block(features, stride, self.norm)(x, train)
        return nn.Dense(self.num_outputs)(jnp.mean(x, axis=(1, 2)))


def resnet20(norm: str = "batchnorm", num_outputs: int = 10) -> nn.Module:
    """Returns ResNet-20; ``norm`` is "batchnorm" or "none"."""
    if norm not in ("batchnorm", "none"):
        raise ValueError(f"norm must be batchnorm or none, not {norm!r}")
    return ResNet(depth=20, norm=norm, num_outputs=num_outputs)
