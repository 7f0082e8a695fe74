"""The new variants (noisy BatchNorm, l_p normalisation) through whole runs: every variant trains
with finite probe records, probing does not change training, and an offline re-probe sees the
inline probe's noise."""

import jax
import numpy as np
import pytest
from helpers import with_

NEW_VARIANTS = ("noisy_batchnorm", "noisy_none", "l1", "l2", "linf")


@pytest.fixture(scope="module")
def smoke_run(tmp_path_factory, tiny_dataset):
    """All new variants, probed at every step, VGG-11 at width 1/8, batch 2, synthetic data."""
    from landscape.config import CheckpointConfig, ModelConfig, ProbeConfig, RunConfig
    from landscape.runs import run

    config = RunConfig(
        preset="test",
        data="synthetic",
        seed=1,
        steps=3,
        batch_size=2,
        eval_every=0,
        eval_batches=1,
        log_every=1,
        variants=NEW_VARIANTS,
        model=ModelConfig(width=0.125, conv_impl="xla"),
        checkpoint=CheckpointConfig(every=1, max_to_keep=None, keep_period=None),
        probe=ProbeConfig(every=1, num_etas=2, strategy="map"),
    )
    run_dir = tmp_path_factory.mktemp("norms") / "on"
    run(config, run_dir, progress=False, dataset=tiny_dataset)
    return config, run_dir


def test_smoke_run_trains_every_new_variant_with_finite_probe_records(smoke_run):
    from landscape.results import load, load_metrics
    from landscape.summary import ratios, summarize_run

    config, run_dir = smoke_run
    records, metrics = load(run_dir), load_metrics(run_dir)
    assert set(records) == set(NEW_VARIANTS)
    for variant, rec in records.items():
        assert list(rec["step"]) == [0, 1, 2], variant
        for key in ("loss", "grad_dist", "step_norm", "beta"):
            assert np.isfinite(rec[key]).all(), (variant, key)
        assert np.isfinite(metrics[variant]["train"]["loss"]).all()
        assert np.isfinite(metrics[variant]["test"]["test_accuracy"]).all()
    rows = summarize_run(records, config.steps)
    assert len(rows) == 3 * len(NEW_VARIANTS)
    assert ratios(rows, "standard", "batchnorm") == []  # neither here: no ratio, no error
    assert len(ratios(rows, "noisy_batchnorm", "l2")) == 3


def test_probe_on_and_off_give_bit_identical_training(smoke_run, tiny_dataset):
    from landscape.checkpoints import Checkpointer
    from landscape.runs import Trainer, run

    config, on = smoke_run
    config = with_(config, variants=("noisy_batchnorm", "noisy_none", "linf"))
    off = on.parent / "off"
    run(config, off, progress=False, probe_enabled=False, dataset=tiny_dataset)
    for variant in config.variants:
        trainer = Trainer(config, variant, tiny_dataset)
        states = []
        for run_dir in (on, off):
            with Checkpointer(run_dir / variant / "checkpoints", config.checkpoint) as ckpt:
                states.append(ckpt.restore(None, trainer.initial_state()))
        for a, b in zip(jax.tree.leaves(states[0]), jax.tree.leaves(states[1]), strict=True):
            np.testing.assert_array_equal(np.asarray(a), np.asarray(b))


def test_offline_reprobe_sees_the_same_noise_as_the_inline_probe(smoke_run, tiny_dataset):
    # The step's noise key is fold_in(state.rng, step), both saved in the checkpoint: a re-probe
    # from checkpoints reproduces the inline probe's records exactly.
    from landscape.results import read_rows
    from landscape.runs import reprobe

    _, run_dir = smoke_run
    written = reprobe(
        run_dir,
        steps=[1, 2],
        variants=["noisy_batchnorm", "noisy_none"],
        progress=False,
        dataset=tiny_dataset,
        out_name="again.jsonl",
    )
    assert set(written) == {"noisy_batchnorm", "noisy_none"}
    for variant, path in written.items():
        inline = {r["step"]: r for r in read_rows(run_dir / variant / "probe.jsonl")}
        offline = read_rows(path)
        assert [r["step"] for r in offline] == [1, 2]
        for row in offline:
            assert row == inline[row["step"]], variant
