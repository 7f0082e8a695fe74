"""A Flax NNX network through the command: an MLP with BatchNorm and dropout.

landscape probe --model examples.nnx_mlp:mlp --data cifar10 --steps 200
"""

from flax import nnx

from landscape.network import Network, from_nnx


class MLP(nnx.Module):
    def __init__(self, rngs: nnx.Rngs, inputs: int, hidden: int, outputs: int):
        self.hidden = nnx.Linear(inputs, hidden, rngs=rngs)
        self.norm = nnx.BatchNorm(hidden, rngs=rngs)
        self.drop = nnx.Dropout(0.1, rngs=rngs)
        self.out = nnx.Linear(hidden, outputs, rngs=rngs)

    def __call__(self, x):
        x = x.reshape(x.shape[0], -1)
        return self.out(self.drop(nnx.relu(self.norm(self.hidden(x)))))


def mlp(hidden: int = 256, num_outputs: int = 10) -> Network:
    """Returns the MLP for 32x32 RGB images; NNX modules are built inside ``from_nnx`` from the
    run's seed."""
    return from_nnx(lambda rngs: MLP(rngs, 32 * 32 * 3, hidden, num_outputs))
