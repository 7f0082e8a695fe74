"""A user's Equinox network, written the Equinox way: one example at a time, BatchNorm state
beside the module, dropout's key as a keyword (``--model own_equinox:eqx_net``)."""

import equinox as eqx
import jax

from landscape.equinox_network import from_equinox


class EqxNet(eqx.Module):
    hidden: eqx.nn.Linear
    norm: eqx.nn.BatchNorm
    drop: eqx.nn.Dropout
    out: eqx.nn.Linear

    def __init__(self, key, inputs: int, num_outputs: int):
        k1, k2 = jax.random.split(key)
        self.hidden = eqx.nn.Linear(inputs, 16, key=k1)
        self.norm = eqx.nn.BatchNorm(16, axis_name="batch", mode="batch")
        self.drop = eqx.nn.Dropout(0.3)
        self.out = eqx.nn.Linear(16, num_outputs, key=k2)

    def __call__(self, x, state, *, key=None):
        x, state = self.norm(self.hidden(x.reshape(-1)), state)
        return self.out(self.drop(jax.nn.relu(x), key=key)), state


def eqx_net(num_outputs: int = 10):
    return from_equinox(lambda key: eqx.nn.make_with_state(EqxNet)(key, 6 * 6 * 3, num_outputs))


class EqxPlain(eqx.Module):
    layer: eqx.nn.Linear

    def __init__(self, key, num_outputs: int):
        self.layer = eqx.nn.Linear(6 * 6 * 3, num_outputs, key=key)

    def __call__(self, x):
        return self.layer(x.reshape(-1))


def eqx_plain(num_outputs: int = 10):
    return from_equinox(lambda key: EqxPlain(key, num_outputs))
