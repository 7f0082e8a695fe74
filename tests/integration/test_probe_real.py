"""The probe on real CIFAR-10 ($LANDSCAPE_CIFAR_JPEG): complete records, and first-order
agreement at small eta."""

import jax.numpy as jnp
import numpy as np
import optax
import pytest
from helpers import require_real_cifar_jpeg, with_

from landscape.checkpoints import Checkpointer
from landscape.data import load_dataset
from landscape.probe import hessian_vector_product, probe
from landscape.results import load
from landscape.runs import Trainer, run
from landscape.train import step_batch


@pytest.fixture(scope="module")
def real_dataset(tmp_path_factory):
    path = require_real_cifar_jpeg()
    return load_dataset(str(path), cache_dir=tmp_path_factory.mktemp("cache"), progress=False)


def test_short_real_run_records_and_first_order_agreement(tmp_path, tiny_config, real_dataset):
    cfg = with_(
        tiny_config,
        data="cifar10",
        steps=12,
        batch_size=64,
        eval_batches=1,
        model={"width": 0.125},
        probe={"num_etas": 8, "every": 2},
    )
    run(cfg, tmp_path / "r", progress=False, dataset=real_dataset)
    records = load(tmp_path / "r")
    assert set(records) == {"standard", "batchnorm"}
    for rec in records.values():
        assert list(rec["step"]) == list(range(0, 12, 2))
        assert rec["loss"].shape == (6, 8)
        clean = rec["diverged"] == 0
        for key in ("loss", "grad_dist", "step_norm"):
            assert np.isfinite(rec[key][clean]).all()
        np.testing.assert_allclose(rec["etas"][0], np.linspace(0.05, 0.4, 8), rtol=1e-6)
        # ||eta g|| is eta times the gradient norm at every step.
        np.testing.assert_allclose(
            rec["step_norm"], rec["etas"] * rec["grad_norm"][:, None], rtol=1e-5
        )

    # At a small eta, L(x - eta g) - L(x) = -eta ||g||^2 + (eta^2 / 2) g^T H g + O(eta^3):
    # the first-order prediction is off by no more than the second-order term's bound.
    for variant in ("standard", "batchnorm"):
        trainer = Trainer(cfg, variant, real_dataset)
        with Checkpointer(tmp_path / "r" / variant / "checkpoints") as ckpt:
            state = ckpt.restore(10, trainer.initial_state())
        batch = step_batch(state, trainer.train_source(10))
        eta = 1e-3
        result = probe(
            trainer.loss_fn,
            state.params,
            batch,
            jnp.asarray([eta]),
            model_state=state.batch_stats,
            strategy="map",
        )
        g_norm = float(result.grad_norm)
        change = float(result.loss[0] - result.loss0)
        first = -eta * g_norm**2
        _, out = trainer.train_step(state, trainer.train_source(10))  # the training gradient
        hg = hessian_vector_product(
            trainer.loss_fn, state.params, batch, out.grads, model_state=state.batch_stats
        )
        second_bound = 0.5 * eta**2 * g_norm * float(optax.tree.norm(hg))
        assert change < 0  # a small step along -g decreases the loss
        assert abs(change - first) <= 1.5 * second_bound + 2e-6, (variant, change, first)
