"""TensorBoard event files: every record a run has, at its step, written once however often it
is exported or logged again, and readable back."""

import json
import math

import numpy as np
import pytest
from test_report import write_run

from landscape.results import read_rows
from landscape.runs import run

tensorboard = pytest.importorskip("landscape.tensorboard")  # the tensorboard extra (in dev)


def test_export_writes_every_record_at_its_step_and_again_replaces(tmp_path):
    run_dir = write_run(tmp_path / "run", diverge_late=True)
    ics = [
        {"step": s, "layer": [2, 9], "dist": [0.5 * s, 1.0], "cosine": [0.9, 0.1]} for s in (0, 5)
    ]
    (run_dir / "standard" / "ics.jsonl").write_text("".join(json.dumps(r) + "\n" for r in ics))
    (run_dir / "figures").mkdir()
    import matplotlib.pyplot as plt

    fig = plt.figure(figsize=(2, 1))
    fig.savefig(run_dir / "figures" / "training_curves.png")
    plt.close(fig)

    for _ in range(2):  # a second export replaces the first: no doubled curves
        log_dir = tensorboard.export_run(run_dir)
    got = tensorboard.read_scalars(log_dir / "standard")
    probes = read_rows(run_dir / "standard" / "probe.jsonl")
    assert [s for s, _ in got["probe/beta"]] == [r["step"] for r in probes]
    for (_, value), row in zip(got["probe/grad_predictiveness"], probes, strict=True):
        expected = row["grad_dist_max"]
        assert value == pytest.approx(expected, rel=1e-6) or (
            math.isinf(value) and math.isinf(expected)
        )
    metrics = [r for r in read_rows(run_dir / "standard" / "metrics.jsonl") if "loss" in r]
    assert got["train/loss"] == [(r["step"], pytest.approx(r["loss"])) for r in metrics]
    assert got["test/accuracy"] == [(199, pytest.approx(0.8))]
    assert got["ics/09/cosine"] == [(0, pytest.approx(0.1)), (5, pytest.approx(0.1))]
    assert "ics/02/dist" not in tensorboard.read_scalars(log_dir / "batchnorm")
    assert len(list((log_dir / "figures").glob("events.out.tfevents.*"))) == 1


def test_a_resumed_log_replaces_the_earlier_rows_of_that_kind(tmp_path):
    rows = [{"step": s, "loss": 2.0 - 0.1 * s, "accuracy": 0.1} for s in range(6)]
    with tensorboard.TensorBoardWriter(tmp_path) as writer:
        writer.rows("standard", "metrics", rows[:5])
    with tensorboard.TensorBoardWriter(tmp_path) as writer:  # the resumed run, from step 3
        writer.rows("standard", "metrics", rows[3:])
    got = tensorboard.read_scalars(tmp_path / "standard")["train/loss"]
    assert [s for s, _ in got] == [3, 4, 5]
    with pytest.raises(ValueError, match="unknown kind of record 'nope'"):
        tensorboard.export_run(tmp_path, kinds=("nope",))


def test_a_run_logs_the_rows_it_writes(tmp_path, tiny_config, tiny_dataset):
    cfg = tiny_config.replace(variants=("batchnorm",))
    with tensorboard.TensorBoardWriter(tmp_path / "tb") as writer:
        run(cfg, tmp_path / "r", progress=False, dataset=tiny_dataset, on_rows=writer.rows)
    got = tensorboard.read_scalars(tmp_path / "tb" / "batchnorm")
    probes = read_rows(tmp_path / "r" / "batchnorm" / "probe.jsonl")
    np.testing.assert_allclose(
        [v for _, v in got["probe/beta"]], [r["beta"] for r in probes], rtol=1e-6
    )
    assert [s for s, _ in got["train/loss"]] == list(range(cfg.steps))
