"""Whole runs of a user's own network, data and loss: a Linen network with BatchNorm and
dropout and an NNX network (tests/own_models.py, reached by import path only), trained, probed,
re-probed and recorded from a hand-written loop."""

from __future__ import annotations

import json

import jax.numpy as jnp
import numpy as np
import pytest
from helpers import OWN_DATA, read_jsonl, user_config

from landscape.config import (
    ModelConfig,
)
from landscape.data import load_dataset
from landscape.probe import probe
from landscape.recorder import LoopRecorder
from landscape.rundir import RunError, load_config
from landscape.runs import Trainer, reprobe, run
from landscape.train import build_network, make_loss_fn, model_loss, step_batch


@pytest.fixture(scope="module")
def dataset():
    return load_dataset(OWN_DATA)


@pytest.fixture(scope="module")
def linen_run(tmp_path_factory, dataset):
    run_dir = tmp_path_factory.mktemp("linen") / "run"
    run(user_config(), run_dir, progress=False, dataset=dataset)
    return run_dir


def test_inline_probe_equals_direct_probe_calls(linen_run, dataset):
    """Each record equals probe() on the checkpoint's parameters and the step's batch."""
    config = user_config()
    for variant in config.variants:
        model_config = config.model_for(variant)
        loss_fn = make_loss_fn(build_network(model_config, 3), model_loss(model_config))
        trainer = Trainer(config, variant, dataset)
        template = trainer.initial_state()
        from landscape.checkpoints import Checkpointer

        checkpointer = Checkpointer(linen_run / variant / "checkpoints", config.checkpoint)
        for record in read_jsonl(linen_run / variant / "probe.jsonl"):
            state = checkpointer.restore(record["step"], template)
            batch = step_batch(state, trainer.train_source(record["step"]))
            direct = probe(
                loss_fn, state.params, batch, jnp.asarray(record["etas"]),
                model_state=state.batch_stats, strategy="map",
            )  # fmt: skip
            np.testing.assert_allclose(record["loss"], direct.loss, rtol=2e-5)
            np.testing.assert_allclose(record["grad_dist"], direct.grad_dist, rtol=2e-4, atol=1e-6)
        checkpointer.close()


def test_offline_reprobe_is_bit_identical_to_inline(linen_run, dataset):
    reprobe(linen_run, progress=False, dataset=dataset)
    for variant in ("none", "batchnorm"):
        inline = read_jsonl(linen_run / variant / "probe.jsonl")
        again = {r["step"]: r for r in read_jsonl(linen_run / variant / "reprobe.jsonl")}
        assert {r["step"] for r in inline} <= set(again)  # the final checkpoint is re-probed too
        for r in inline:
            assert r["loss"] == again[r["step"]]["loss"]
            assert r["grad_dist"] == again[r["step"]]["grad_dist"]


def test_the_run_records_how_to_rebuild_its_network(linen_run, dataset):
    record = json.loads((linen_run / "batchnorm" / "network.json").read_text())
    assert record["factory"] == "own_models:linen_mlp"
    assert record["model_args"] == [["norm", "batchnorm"]]
    assert record["parameter_shapes"]["['BatchNorm_0']['scale']"] == [16]
    # A factory that now builds other shapes is refused when the run is used again.
    changed = user_config(model=ModelConfig(factory="own_models:linen_mlp", variant_arg="norm",
                                            model_args=(("hidden", 8),)))  # fmt: skip
    (linen_run / "config.json").write_text(json.dumps(changed.to_dict()))
    try:
        with pytest.raises(RunError, match="builds other shapes"):
            run(changed, linen_run, resume=True, progress=False, dataset=dataset)
    finally:
        (linen_run / "config.json").write_text(json.dumps(user_config().to_dict()))


def test_nnx_network_trains_probes_and_reprobes_identically(tmp_path, dataset):
    config = user_config("own_models:nnx_net", variants=None, steps=4)
    assert config.variants == ("nnx_net",)
    run(config, tmp_path / "run", progress=False, dataset=dataset)
    reprobe(tmp_path / "run", progress=False, dataset=dataset)
    inline = read_jsonl(tmp_path / "run" / "nnx_net" / "probe.jsonl")
    again = {r["step"]: r for r in read_jsonl(tmp_path / "run" / "nnx_net" / "reprobe.jsonl")}
    assert len(inline) == 4 and all(r["loss"] == again[r["step"]]["loss"] for r in inline)
    assert np.all(np.isfinite([r["loss"] for r in inline]))


def test_recorder_in_a_hand_written_loop_matches_landscape_probe(linen_run, dataset, tmp_path):
    config = user_config()
    trainer = Trainer(config, "batchnorm", dataset)
    state = trainer.initial_state()
    etas = trainer.etas
    with LoopRecorder(tmp_path / "loop", trainer.loss_fn, etas=etas, variant="batchnorm") as rec:
        for step in range(config.steps):
            batch = trainer.train_source(step)
            new_state, out = trainer.train_step(state, batch)
            rec(step, state.params, state.batch_stats, step_batch(state, batch),
                grad=out.grads, loss=out.loss)  # fmt: skip
            rec.log(step, loss=out.loss, accuracy=out.accuracy)
            state = new_state
    ours = read_jsonl(tmp_path / "loop" / "batchnorm" / "probe.jsonl")
    theirs = read_jsonl(linen_run / "batchnorm" / "probe.jsonl")
    # The run's length is the loop's, for the summary's phases and the figures' axes.
    assert load_config(tmp_path / "loop").steps == config.steps
    assert [r["step"] for r in ours] == [r["step"] for r in theirs]
    for a, b in zip(ours, theirs, strict=True):
        np.testing.assert_allclose(a["loss"], b["loss"], rtol=1e-5)
        np.testing.assert_allclose(a["grad_dist"], b["grad_dist"], rtol=1e-4, atol=1e-6)
    # Without the loop's gradient the recorder computes it: the same numbers.
    with LoopRecorder(tmp_path / "loop2", trainer.loss_fn, etas=etas) as rec:
        state = trainer.initial_state()
        result = rec(0, state.params, state.batch_stats, step_batch(state, trainer.train_source(0)))
    np.testing.assert_allclose(result.loss, ours[0]["loss"], rtol=1e-6)


def test_a_custom_per_example_loss_trains(tmp_path, dataset):
    model = ModelConfig(factory="own_models:linen_mlp", loss="own_models:l1_loss")
    config = user_config(variants="plain").replace(model=model, steps=3)
    run(config, tmp_path / "run", progress=False, dataset=dataset)
    losses = [
        r["loss"] for r in read_jsonl(tmp_path / "run" / "plain" / "metrics.jsonl") if "loss" in r
    ]
    assert len(losses) == 3 and all(np.isfinite(losses))


def test_a_module_without_a_train_keyword_and_regression_data(tmp_path):
    config = user_config("own_models:no_train_flag", variants=None, steps=3)
    run(config, tmp_path / "a", progress=False, dataset=load_dataset(OWN_DATA))
    regression = user_config("own_models:no_train_flag", variants=None, steps=3).replace(
        data="own_models:regression_data"
    )
    run(regression, tmp_path / "b", progress=False)  # the mean squared error by default
    losses = [
        r["loss"]
        for r in read_jsonl(tmp_path / "b" / "no_train_flag" / "metrics.jsonl")
        if "loss" in r
    ]
    assert len(losses) == 3 and np.isfinite(losses).all()
