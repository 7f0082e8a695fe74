"""Shared fixtures: tiny configurations and data so the trainer and probe tests run in seconds.

Fixtures only; helpers that tests import are in helpers.py."""

from __future__ import annotations

import pytest
from helpers import with_

from landscape.config import CheckpointConfig, ModelConfig, ProbeConfig, RunConfig, preset


@pytest.fixture(scope="session")
def tiny_dataset():
    from landscape.data import synthetic_dataset

    return synthetic_dataset(seed=0, num_train=512, num_test=200)


@pytest.fixture
def tiny_config() -> RunConfig:
    """A VGG-11 at width 1/16 on synthetic data, batch 16, a few steps."""
    return RunConfig(
        preset="test",
        data="synthetic",
        seed=3,
        steps=6,
        batch_size=16,
        eval_every=3,
        eval_batches=1,
        log_every=2,
        model=ModelConfig(width=0.0625, conv_impl="xla"),
        checkpoint=CheckpointConfig(every=1, max_to_keep=None, keep_period=None),
        probe=ProbeConfig(every=1, num_etas=3, strategy="map"),
    )


@pytest.fixture
def tiny_dln_config() -> RunConfig:
    """The dln-quick preset shortened: a 5-layer deep linear network, 4 steps, every step
    checkpointed and probed."""
    return with_(
        preset("dln-quick"),
        steps=4,
        eval_every=2,
        log_every=2,
        model={"arch": "dln5"},  # the paper's 25 layers compile slower; the code is the same
        checkpoint={"every": 1, "max_to_keep": None, "keep_period": None},
        probe={"every": 1, "strategy": "map"},
    )


@pytest.fixture(scope="session")
def keep_all_run(tmp_path_factory):
    """A 6-step BatchNorm VGG-11 run at width 1/8 with every checkpoint kept (ICS, activations),
    on the default synthetic data, so the CLI's ``--data synthetic`` finds the same data."""
    from landscape.data import synthetic_dataset
    from landscape.runs import run

    config = RunConfig(
        preset="test",
        data="synthetic",
        seed=5,
        steps=6,
        batch_size=8,
        eval_every=0,
        eval_batches=1,
        log_every=2,
        variants=("batchnorm",),
        model=ModelConfig(width=0.125, conv_impl="xla"),
        checkpoint=CheckpointConfig(every=1, keep_all=True),
        probe=ProbeConfig(enabled=False),
    )
    run_dir = tmp_path_factory.mktemp("keep_all") / "run"
    run(config, run_dir, probe_enabled=False, progress=False, dataset=synthetic_dataset())
    return run_dir
