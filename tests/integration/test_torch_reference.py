"""The eager PyTorch reference agrees with our JAX probe and leaves its model unchanged.

Torch is only in the ``bench`` extra, so these tests skip where it is not installed (CI).
"""

import sys

import pytest

torch = pytest.importorskip("torch")

import jax  # noqa: E402
import numpy as np  # noqa: E402
from helpers import REPO, with_  # noqa: E402

from landscape.config import norm_for_variant  # noqa: E402
from landscape.models import create_model, init_variables  # noqa: E402
from landscape.runs import Trainer  # noqa: E402

sys.path.insert(0, str(REPO / "benchmarks"))
from torch_reference import (  # noqa: E402
    TorchVGG,
    load_flax_params,
    nhwc_to_nchw,
    torch_probe,
)

FIELDS = ("loss", "grad_dist", "step_norm", "loss0", "grad_norm")


def _setup(config, dataset, variant):
    """Returns (trainer, state, batch, torch model on the same weights, torch images, labels)."""
    trainer = Trainer(config, variant, dataset)
    state = trainer.initial_state()
    batch = trainer.train_source(0)
    model = TorchVGG(config.model.arch, config.model.width, norm_for_variant(variant))
    load_flax_params(model, jax.device_get(state.params), jax.device_get(state.batch_stats))
    images = nhwc_to_nchw(jax.device_get(batch["image"]))
    labels = torch.from_numpy(np.asarray(batch["label"]).astype(np.int64))
    return trainer, state, batch, model, images, labels


@pytest.fixture
def small_config(tiny_config):
    return with_(tiny_config, batch_size=8)  # width 1/16, 3 etas (tiny_config)


@pytest.mark.parametrize("variant", ["standard", "batchnorm"])
def test_torch_probe_matches_jax_probe(small_config, tiny_dataset, variant):
    trainer, state, batch, model, images, labels = _setup(small_config, tiny_dataset, variant)
    _, out = trainer.train_step(state, batch)
    ours = jax.device_get(trainer.probe_step(state, batch, out.grads, out.loss, trainer.etas))
    reference = torch_probe(model, images, labels, np.asarray(trainer.etas))
    assert reference["loss"].shape == (3,)
    # Same float32 network on both sides; measured differences are ~1e-6 relative or less.
    for field in FIELDS:
        np.testing.assert_allclose(getattr(ours, field), reference[field], rtol=1e-4, err_msg=field)
    # The grid moves the loss: the agreement is not that of two constant outputs.
    assert np.ptp(reference["loss"]) > 1e-3


def test_torch_probe_leaves_weights_and_running_stats_unchanged(small_config, tiny_dataset):
    *_, model, images, labels = _setup(small_config, tiny_dataset, "batchnorm")
    model.eval()
    before = {k: v.clone() for k, v in model.state_dict().items()}
    torch_probe(model, images, labels, [0.05, 0.2, 0.4])
    after = model.state_dict()
    assert not model.training  # the mode is restored too
    for key, value in before.items():
        assert torch.equal(after[key], value), key
    # Not vacuous: a train-mode forward alone would have moved the running statistics.
    model.train()
    model(images)
    assert not torch.equal(
        model.state_dict()["norms.0.running_mean"], before["norms.0.running_mean"]
    )


def test_loaded_weights_give_flax_logits_in_eval_mode(small_config, tiny_dataset):
    trainer, state, batch, model, images, _ = _setup(small_config, tiny_dataset, "batchnorm")
    # Non-trivial running statistics, so their conversion is exercised too.
    stats = jax.tree.map(lambda a: a + 0.3, state.batch_stats)
    load_flax_params(model, jax.device_get(state.params), jax.device_get(stats))
    ours = trainer.model.apply(
        {"params": state.params, "batch_stats": stats}, batch["image"], train=False
    )
    with torch.no_grad():
        reference = model.eval()(images).numpy()
    np.testing.assert_allclose(np.asarray(ours), reference, rtol=1e-4, atol=1e-5)


def test_load_refuses_a_final_map_larger_than_1x1():
    # At 64x64 five pools leave a 2x2 map: NHWC and NCHW flatten orders differ.
    flax_model = create_model("vgg11", width=0.0625, conv_impl="xla")
    variables = init_variables(flax_model, jax.random.key(0), image_shape=(64, 64, 3))
    with pytest.raises(ValueError, match="not 1x1"):
        load_flax_params(TorchVGG("vgg11", 0.0625), jax.device_get(variables["params"]))
