"""LayerNorm, GroupNorm, RMSNorm and weight normalisation through whole runs of the VGG and of
Ioffe and Szegedy's MLP: every variant trains with finite probe records, and the recorded
parameters are the layer's own (a weight-normalised kernel's gain, no running statistics)."""

import numpy as np
import pytest
from helpers import params_of, with_

NEW_VARIANTS = ("layernorm", "groupnorm", "rmsnorm", "weightnorm")


@pytest.fixture(scope="module")
def vgg_run(tmp_path_factory, tiny_dataset):
    """The four normalisers as variants of VGG-11 at width 1/16, 3 steps, every step probed."""
    from landscape.config import CheckpointConfig, ModelConfig, ProbeConfig, RunConfig
    from landscape.runs import run

    config = RunConfig(
        preset="test",
        data="synthetic",
        seed=2,
        steps=3,
        batch_size=4,
        eval_every=0,
        eval_batches=1,
        log_every=1,
        variants=NEW_VARIANTS,
        model=ModelConfig(width=0.0625, conv_impl="xla"),
        checkpoint=CheckpointConfig(every=1, max_to_keep=None, keep_period=None),
        probe=ProbeConfig(every=1, num_etas=2, strategy="map"),
    )
    run_dir = tmp_path_factory.mktemp("per_example") / "vgg"
    run(config, run_dir, progress=False, dataset=tiny_dataset)
    return config, run_dir


def _check_records(run_dir, variants, steps):
    from landscape.results import load, load_metrics

    records, metrics = load(run_dir), load_metrics(run_dir)
    assert set(records) == set(variants)
    for variant, rec in records.items():
        assert list(rec["step"]) == list(range(steps)), variant
        for key in ("loss", "grad_dist", "step_norm", "beta"):
            assert np.isfinite(rec[key]).all(), (variant, key)
            assert (np.asarray(rec[key]) > 0).any(), (variant, key)  # the probe saw a gradient
        assert np.isfinite(metrics[variant]["train"]["loss"]).all()
        assert np.isfinite(metrics[variant]["test"]["test_accuracy"]).all()


def test_every_normaliser_trains_the_vgg_with_finite_probe_records(vgg_run, tiny_dataset):
    config, run_dir = vgg_run
    _check_records(run_dir, NEW_VARIANTS, config.steps)
    # Per-example normalisers keep no running statistics; weight normalisation's gains moved.
    for variant in NEW_VARIANTS:
        state = params_of(run_dir, variant, config, tiny_dataset)
        assert not state.batch_stats, variant
    first = params_of(run_dir, "weightnorm", config, tiny_dataset, step=0)
    last = params_of(run_dir, "weightnorm", config, tiny_dataset)
    g0, g = first.params["Conv3x3_0"]["scale"], last.params["Conv3x3_0"]["scale"]
    assert g.shape == (4,) and not np.allclose(np.asarray(g0), np.asarray(g))


def test_the_mlp_trains_with_batchnorm_and_groupnorm(tmp_path, tiny_dataset, tiny_config):
    from landscape.runs import run

    config = with_(
        tiny_config,
        steps=3,
        eval_every=0,
        variants=("standard", "batchnorm", "groupnorm8"),
        model={"arch": "mlp", "width": 0.16},  # 16 hidden units: 8 groups of two
        probe={"num_etas": 2},
    )
    run(config, tmp_path / "mlp", progress=False, dataset=tiny_dataset)
    _check_records(tmp_path / "mlp", config.variants, config.steps)
