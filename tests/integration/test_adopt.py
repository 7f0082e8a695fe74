"""Orbax checkpoints saved by someone else's training loop, adopted into a run directory."""

from __future__ import annotations

import json

import jax.numpy as jnp
import numpy as np
import orbax.checkpoint as ocp
import pytest
from own_models import train_elsewhere

from landscape.adopt import ANALYSIS_BATCHES, adopt_checkpoints
from landscape.config import CheckpointConfig, ProbeConfig, RunConfig, apply_model_options
from landscape.data import load_dataset
from landscape.probe import probe
from landscape.rundir import RunError
from landscape.runs import Trainer, reprobe
from landscape.train import step_batch

DATA = "own_models:tiny_images"


def config(factory: str = "own_models:linen_mlp", args=("norm=batchnorm",)) -> RunConfig:
    base = RunConfig(preset="adopted", data=DATA, seed=2, batch_size=16, eval_every=0,
                     checkpoint=CheckpointConfig(every=1, keep_all=True),
                     probe=ProbeConfig(num_etas=3, strategy="map"))  # fmt: skip
    return apply_model_options(base, [factory], list(args), "theirs")


@pytest.fixture(scope="module")
def their_checkpoints(tmp_path_factory):
    return train_elsewhere(tmp_path_factory.mktemp("theirs") / "ckpt")


def test_adopted_steps_are_probed_on_their_analysis_batch(their_checkpoints, tmp_path):
    run_dir = tmp_path / "run"
    cfg = config()
    assert adopt_checkpoints(their_checkpoints, cfg, run_dir) == [0, 3, 6]
    facts = json.loads((run_dir / "provenance.json").read_text())
    assert facts["batches"] == ANALYSIS_BATCHES and facts["adopted_from"].endswith("ckpt")
    rows = [
        json.loads(line) for line in (run_dir / "theirs" / "probe.jsonl").read_text().splitlines()
    ]
    assert [r["step"] for r in rows] == [0, 3, 6]
    dataset = load_dataset(DATA)
    saved = json.loads((run_dir / "config.json").read_text())
    trainer = Trainer(RunConfig.from_dict(saved), "theirs", dataset)
    with ocp.CheckpointManager(their_checkpoints) as manager:
        theirs = manager.restore(6)
    state = trainer.initial_state().replace(
        step=jnp.asarray(6, jnp.int32), params=theirs["params"], batch_stats=theirs["batch_stats"]
    )
    batch = step_batch(state, trainer.train_source(6))
    direct = probe(trainer.loss_fn, state.params, batch, jnp.asarray(rows[-1]["etas"]),
                   model_state=state.batch_stats, strategy="map")  # fmt: skip
    np.testing.assert_allclose(rows[-1]["loss"], direct.loss, rtol=2e-5)
    # The adopted run is an ordinary one: re-probing it gives the same numbers.
    reprobe(run_dir, progress=False, dataset=dataset)
    again = [
        json.loads(line) for line in (run_dir / "theirs" / "reprobe.jsonl").read_text().splitlines()
    ]
    assert [r["loss"] for r in again] == [r["loss"] for r in rows]


def test_checkpoints_of_another_network_are_refused_before_anything_is_written(
    their_checkpoints, tmp_path
):
    with pytest.raises(RunError, match="does not fit the network"):
        adopt_checkpoints(their_checkpoints, config(args=("norm=batchnorm", "hidden=8")),
                          tmp_path / "run")  # fmt: skip
    assert not (tmp_path / "run").exists()
    with pytest.raises(RunError, match="no Orbax checkpoints"):
        (tmp_path / "empty").mkdir()
        adopt_checkpoints(tmp_path / "empty", config(), tmp_path / "run")


def test_a_batchnorm_network_needs_the_running_statistics(their_checkpoints, tmp_path):
    with ocp.CheckpointManager(their_checkpoints) as theirs:
        params = theirs.restore(0)["params"]
    with ocp.CheckpointManager(tmp_path / "params_only") as manager:
        manager.save(0, args=ocp.args.StandardSave({"params": params}))
        manager.wait_until_finished()
    with pytest.raises(RunError, match="holds no running statistics"):
        adopt_checkpoints(tmp_path / "params_only", config(), tmp_path / "run")
    assert not (tmp_path / "run").exists()
