"""Sweeps end to end: a sweep of whole runs that is interrupted, resumed and run again (skipping
what is done), and `landscape sweep` (one-line errors, a sweep, its resumption and its summary)."""

from __future__ import annotations

import csv
import json

import pytest
from helpers import with_
from typer.testing import CliRunner

from landscape.app.cli import app
from landscape.results import read_rows
from landscape.sweep import (
    SweepError,
    configurations,
    open_sweep,
    run_status,
    run_sweep,
    summarize_sweep,
)


def count_steps(run_dir, variant="standard"):
    return sorted(
        {r["step"] for r in read_rows(run_dir / variant / "metrics.jsonl") if "loss" in r}
    )


def test_sweep_runs_skips_and_resumes(tmp_path, tiny_config, tiny_dataset):
    base = with_(tiny_config, steps=3, variants=("standard",), probe={"num_etas": 2})
    grid = {"seed": [0, 1]}
    sweep_dir = tmp_path / "sweep"
    seen = []

    def on_run(index, total, name, status):
        seen.append((name, status))

    # An interrupted sweep: only its first configuration ran, and it stopped after 2 steps.
    open_sweep(sweep_dir, base, grid)
    (first, _, first_config), (second, _, second_config) = configurations(base, grid)
    from landscape.runs import run

    run(first_config.replace(steps=2), sweep_dir / first, progress=False, dataset=tiny_dataset)
    assert run_status(sweep_dir / first, first_config) == "partial"
    assert run_status(sweep_dir / second, second_config) == "new"

    rows = run_sweep(sweep_dir, progress=False, dataset=tiny_dataset, on_run=on_run)
    assert seen == [(first, "partial"), (second, "new")]
    assert count_steps(sweep_dir / first) == [0, 1, 2]  # resumed: each step recorded once
    assert count_steps(sweep_dir / second) == [0, 1, 2]
    assert [r["status"] for r in rows] == ["done", "done"]
    assert [r["seed"] for r in rows] == [0, 1]
    assert all(r["probed"] == 3 and r["steps"] == 3 for r in rows)
    assert all(r["beta"] > 0 and 0 <= r["test_accuracy"] <= 1 for r in rows)
    assert rows[0]["beta"] != rows[1]["beta"]  # different seeds, different runs

    # The resumed run equals one trained without interruption (same seed, same batches); the
    # shortened first attempt also left a test evaluation at step 2, which is kept.
    straight = tmp_path / "straight"
    run(first_config, straight, progress=False, dataset=tiny_dataset)
    for name in ("metrics.jsonl", "probe.jsonl"):
        resumed, uninterrupted = (
            [r for r in read_rows(d / "standard" / name) if r["step"] != 2 or "loss" in r]
            for d in (sweep_dir / first, straight)
        )
        assert resumed == uninterrupted, name

    # Running it again does nothing: both are done.
    seen.clear()
    mtime = (sweep_dir / first / "standard" / "probe.jsonl").stat().st_mtime_ns
    run_sweep(sweep_dir, base, grid, progress=False, dataset=tiny_dataset, on_run=on_run)
    assert seen == [(first, "done"), (second, "done")]
    assert (sweep_dir / first / "standard" / "probe.jsonl").stat().st_mtime_ns == mtime

    # One table in one place.
    with open(sweep_dir / "summary.csv") as f:
        table = list(csv.DictReader(f))
    assert [(r["run"], r["variant"], r["status"]) for r in table] == [
        (first, "standard", "done"),
        (second, "standard", "done"),
    ]
    assert float(table[0]["beta"]) == pytest.approx(rows[0]["beta"])
    assert float(table[0]["train_loss"]) == pytest.approx(rows[0]["train_loss"])
    assert rows[0]["train_loss"] > 0
    assert table[0]["diverged_at"] == ""  # a column, empty for a run that did not diverge
    assert summarize_sweep(sweep_dir) == rows

    # A different grid into the same directory is refused.
    with pytest.raises(SweepError, match="different sweep"):
        open_sweep(sweep_dir, base, {"seed": [0, 2]})


runner = CliRunner()


@pytest.mark.parametrize(
    ("args", "message"),
    [
        (["--grid", "colour=red"], "unknown key 'colour'"),
        (["--grid", "lr=fast"], "'fast' is not a number"),
        (["--grid", "variant=instancenorm", "--data", "synthetic"], "unknown variant"),
        (["--grid", "seed=0", "--devices", "two"], "--devices"),
        ([], "at least one --grid"),
        (["/no/such/sweep"], "not a landscape sweep"),
        (["--resume", "/no/such/sweep"], "not a landscape sweep"),
    ],
)
def test_cli_bad_input_is_one_line_and_exit_2(args, message, tmp_path):
    extra = ["--out", str(tmp_path / "s")] if "--grid" in args else []
    result = runner.invoke(app, ["sweep", *args, *extra])
    assert result.exit_code == 2, result.output
    assert message in result.output
    assert "Traceback" not in result.output
    assert len(result.output.strip().splitlines()) <= 2


def test_cli_sweep_and_summary(tmp_path):
    sweep_dir = tmp_path / "s"
    args = ["sweep", "--preset", "smoke", "--steps", "2", "--variants", "batchnorm",
            "--probe-every", "1", "--width", "0.0625", "--grid", "lr=0.05,0.1",
            "--out", str(sweep_dir), "--no-progress"]  # fmt: skip
    result = runner.invoke(app, args)
    assert result.exit_code == 0, result.output
    assert "[1/2] lr=0.05: running" in result.output and "[2/2] lr=0.1: running" in result.output
    saved = json.loads((sweep_dir / "sweep.json").read_text())
    assert saved["grid"] == {"lr": [0.05, 0.1]}
    assert [r["name"] for r in saved["runs"]] == ["lr=0.05", "lr=0.1"]
    again = runner.invoke(app, ["sweep", "--resume", str(sweep_dir), "--no-progress"])
    assert again.exit_code == 0, again.output
    assert "[2/2] lr=0.1: done, skipped" in again.output
    summary = runner.invoke(app, ["sweep", str(sweep_dir)])
    assert summary.exit_code == 0, summary.output
    assert "lr=0.1" in summary.output and "batchnorm" in summary.output
    assert (sweep_dir / "summary.csv").exists()
    assert (sweep_dir / "sweep.png").stat().st_size > 0  # the figure over the learning rate
    # A run's commands given the sweep's directory point to the sweep's own.
    for command in ("summary", "plot"):
        mistaken = runner.invoke(app, [command, str(sweep_dir)])
        assert mistaken.exit_code == 2
        assert "is a sweep, not a run" in mistaken.output
        assert f"landscape sweep {sweep_dir} prints" in " ".join(mistaken.output.split())


def test_a_job_array_runs_one_configuration_per_task_at_once(tmp_path):
    """As SLURM runs an array: every task the same grid and folder, its own index, together."""
    import os
    import subprocess
    import sys

    from helpers import REPO

    sweep_dir = tmp_path / "s"
    args = [sys.executable, str(REPO / "cli.py"), "sweep", "--preset", "smoke", "--steps", "3",
            "--variants", "standard", "--width", "0.0625", "--grid", "seed=0,1",
            "--grid", "lr=0.05,0.1", "--out", str(sweep_dir), "--no-progress"]  # fmt: skip
    listed = subprocess.run([*args, "--list"], capture_output=True, text=True, cwd=REPO)
    assert listed.stdout.split() == [
        "0", "seed=0_lr=0.05", "1", "seed=0_lr=0.1", "2", "seed=1_lr=0.05", "3", "seed=1_lr=0.1",
    ]  # fmt: skip
    assert not sweep_dir.exists()  # listing writes nothing
    tasks = [
        subprocess.Popen(
            [*args, "--index-from-env", "SLURM_ARRAY_TASK_ID"],
            env={**os.environ, "SLURM_ARRAY_TASK_ID": str(i)},
            cwd=REPO,
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            text=True,
        )
        for i in (3, 0, 2)
    ]
    for task in tasks:
        out, err = task.communicate(timeout=600)
        assert task.returncode == 0, err
        assert "finished; summary:" in out
    with open(sweep_dir / "summary.csv") as f:
        status = {row["run"]: row["status"] for row in csv.DictReader(f)}
    assert status == {"seed=0_lr=0.05": "done", "seed=0_lr=0.1": "new",
                      "seed=1_lr=0.05": "done", "seed=1_lr=0.1": "done"}  # fmt: skip
    bad = subprocess.run([*args, "--index", "4"], capture_output=True, text=True, cwd=REPO)
    assert bad.returncode == 2 and "the grid has 4 configurations, 0 to 3" in bad.stderr
    unset = subprocess.run(
        [*args, "--index-from-env", "NO_SUCH_TASK_ID"], capture_output=True, text=True, cwd=REPO
    )
    assert unset.returncode == 2 and "that variable is not set" in unset.stderr
