"""Shared fixtures: tiny configurations and data so the trainer and probe tests run in seconds."""

from __future__ import annotations

import dataclasses
import os
from pathlib import Path

import pytest

from landscape.config import CheckpointConfig, ModelConfig, ProbeConfig, RunConfig

REPO = Path(__file__).resolve().parents[1]

# Commands invoked in-process (CliRunner) would apply the landscape command's glibc malloc
# settings to the whole test process (landscape/malloc_tuning.py); tests that check them start
# fresh interpreters without this.
os.environ.setdefault("LANDSCAPE_MALLOC_TUNING", "0")


def real_cifar_jpeg() -> Path | None:
    """Returns the real CIFAR-10 JPEG archive (../shared/data or $LANDSCAPE_CIFAR_JPEG) or None."""
    env = os.environ.get("LANDSCAPE_CIFAR_JPEG")
    path = Path(env) if env else REPO.parent / "shared" / "data" / "cifar10-jpeg.tar.gz"
    return path if path.exists() else None


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


def with_(config: RunConfig, **changes) -> RunConfig:
    """Returns ``config`` with nested fields replaced: with_(c, probe={"every": 2})."""
    out = {}
    for key, value in changes.items():
        if isinstance(value, dict):
            out[key] = dataclasses.replace(getattr(config, key), **value)
        else:
            out[key] = value
    return config.replace(**out)


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
