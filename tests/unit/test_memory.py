"""Memory over steps: the run loop keeps nothing per step, and the bench measures growth per step
from the training steps only (not the one-off buffers of the run's final evaluation)."""

import jax
import pytest
from helpers import with_

import landscape.bench as bench
import landscape.runs as runs
from landscape.runs import Trainer, train_variant


def test_whole_run_slope_leaves_out_the_final_evaluation(monkeypatch, tiny_config, tiny_dataset):
    # A fake resident size: flat while training, 50 MiB more after each evaluation (as the
    # final one over the whole test set allocates its buffers). The slope must read 0.
    rss = {"mib": 100.0}
    real_evaluate = runs.evaluate

    def evaluate(*args, **kwargs):
        rss["mib"] += 50.0
        return real_evaluate(*args, **kwargs)

    monkeypatch.setattr(runs, "evaluate", evaluate)
    monkeypatch.setattr(bench, "_rss_mib", lambda: rss["mib"])
    result = bench.whole_run(tiny_config, "batchnorm", tiny_dataset, steps=6)
    assert result["rss_slope_kib"] == pytest.approx(0.0, abs=1e-9)
    # The warm-up run's own final evaluation came first: training ran at 150 MiB throughout.
    assert result["rss_mib"] == {"first": 150.0, "last": 150.0, "max": 200.0,
                                 "after_final_eval": 200.0}  # fmt: skip
    assert result["steps"] == 6


def test_run_loop_keeps_no_device_arrays_per_step(tmp_path, tiny_config, tiny_dataset):
    # Recorder rows, probe results and step outputs live on the device until a flush: one step
    # after each flush (step n flushes the rows before it, every log_every steps) the number of
    # live arrays must be the same, or the loop holds on to something per step. Checkpoints are off: their writer thread holds
    # states for a while, which would make the count depend on its timing.
    config = with_(tiny_config, steps=12, eval_every=0, log_every=3, checkpoint={"every": 0})
    trainer = Trainer(config, "batchnorm", tiny_dataset)
    counts = {}

    def on_step(step: int, last: dict) -> None:
        # The last step's count would include the final evaluation's arrays.
        if step % config.log_every == 1 and 1 < step < config.steps:
            counts[step] = len(jax.live_arrays())

    report = train_variant(trainer, tmp_path / "batchnorm", probe_enabled=True, on_step=on_step)
    assert report.probes_run == 12
    assert list(counts) == [4, 7, 10]
    assert counts[4] == counts[7] == counts[10], counts
