"""benchmarks/peers.py's accuracy bookkeeping: the iteration count it times is the one the
estimator needs, found from one long Lanczos run (the JAX side only; torch is not needed)."""

import sys
from types import SimpleNamespace

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
import pytest
from helpers import REPO

from landscape.network import check_network
from landscape.train import make_loss_fn

sys.path.insert(0, str(REPO / "benchmarks"))
from peers import Ours, errors_at, needed_iterations


class _TinyBN(nn.Module):
    @nn.compact
    def __call__(self, x, train: bool):
        x = nn.Dense(6)(x.reshape(x.shape[0], -1))
        x = nn.BatchNorm(use_running_average=not train, momentum=0.9)(x)
        return nn.Dense(3)(nn.relu(x))


def test_needed_iterations_is_where_the_estimates_stay_within_the_tolerance():
    reference = 10.0
    sequence = np.array([5.0, 9.0, 9.995, 10.5, 9.9995, 10.0])
    # 9.995 is within 1e-3 but the 4th estimate leaves it again: it counts from the 5th on.
    assert needed_iterations(sequence, reference, 1e-3) == 5
    assert needed_iterations(sequence, reference, 0.1) == 2
    assert needed_iterations(np.full(3, 10.0), reference, 1e-3) == 1
    assert needed_iterations(np.array([5.0, 9.0]), reference, 1e-3) is None


def test_errors_at_reports_the_budgets_the_sequence_has():
    sequence = np.linspace(1.0, 2.0, 12)
    errors = errors_at(sequence, 2.0)
    assert list(errors) == ["2", "5", "10"]
    assert errors["10"] == pytest.approx(abs(sequence[9] - 2.0) / 2.0)


@pytest.mark.parametrize("mode", ["train", "eval"])
def test_the_prefix_of_one_long_run_is_what_the_estimator_returns(mode):
    model = _TinyBN()
    x = jax.random.normal(jax.random.key(1), (16, 5))
    variables = model.init(jax.random.key(0), x, train=False)
    batch = {"image": x, "label": jnp.arange(16) % 3}
    trainer = SimpleNamespace(
        loss_fn=make_loss_fn(model), network=check_network(model), loss="cross_entropy"
    )
    state = SimpleNamespace(params=variables["params"], batch_stats=variables["batch_stats"])
    ours = Ours(trainer, state, batch, mode, jax.random.key(3))
    sequence = ours.lanczos_sequence(12)
    timed = float(ours.lambda_max_fn(4)()["value"])
    assert timed == pytest.approx(sequence[3], rel=1e-4)
    assert abs(sequence[3] - sequence[-1]) > 1e-3 * abs(sequence[-1])  # 4 is not yet converged
    # Lanczos' largest Ritz value only grows with the iterations (interlacing).
    assert np.all(np.diff(sequence) >= -1e-5 * abs(sequence[-1]))
