"""benchmarks/gpu_check.sh --cpu-dry-run: every stage of the GPU check runs on the CPU at tiny
sizes, writes its results as it goes, and the summary carries the records' verdict."""

import importlib.util
import json
import os
import subprocess
import sys

from helpers import REPO

SCRIPT = REPO / "benchmarks" / "gpu_check.sh"
STAGES = (
    "install",
    "devices",
    "smoke_compare",
    "paper_short",
    "paper_long",
    "extrapolate",
    "bench",
    "shared_short",
    "shared_long",
    "shared_extrapolate",
    "torch",
    "peers",
)


def test_the_dry_run_passes_every_stage_and_summarises(tmp_path):
    out = tmp_path / "out"
    env = {**os.environ, "PYTHON": sys.executable}
    proc = subprocess.run(
        ["bash", str(SCRIPT), str(out), "--cpu-dry-run"],
        cwd=REPO,
        env=env,
        capture_output=True,
        text=True,
        timeout=900,
    )
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-2000:]
    summary = json.loads((out / "summary.json").read_text())
    assert summary["ok"] and summary["mode"] == "cpu-dry-run"
    assert list(summary["stages"]) == list(STAGES)
    assert all(s["status"] == "ok" for s in summary["stages"].values())
    assert summary["devices"]["backend"] == "cpu"

    # The accelerator's code paths on the CPU against the CPU's own: equal to rounding, not
    # bit for bit (a comparison that saw identical numbers would prove nothing).
    compare = json.loads((out / "compare.json").read_text())
    assert compare["ok"] and summary["records_agree"]
    assert 0 <= summary["records_at_first_step_of_tolerance"] < 1
    assert 0 < compare["max_abs_diff"] < 1e-2
    assert set(compare["records"]) == {"batchnorm/probe.jsonl", "batchnorm/metrics.jsonl"}
    assert compare["records"]["batchnorm/probe.jsonl"]["values"] > 0

    # Both timed runs, both variants read from what `landscape probe` printed.
    runs = [json.loads(line) for line in (out / "paper_runs.jsonl").read_text().splitlines()]
    assert [(r["name"], r["steps"], r["rc"]) for r in runs] == [
        ("short", 2, 0),
        ("long", 6, 0),
        ("shared_short", 2, 0),
        ("shared_long", 4, 0),
    ]
    assert all(set(r["variants"]) == {"standard", "batchnorm"} for r in runs)
    assert not any((out / "paper_long").glob("*/checkpoints"))  # deleted, records kept
    assert (out / "paper_long" / "batchnorm" / "probe.jsonl").exists()
    protocol = summary["paper_protocol"]
    assert protocol["preset"] == "smoke" and protocol["protocol_steps"] == 60
    assert protocol["protocol_s"] > protocol["long_run_s"] > 0
    # Both variants at once in two worker processes: their records, no checkpoint left, and
    # each variant's timing read from its worker's log.
    shared = summary["paper_protocol_shared"]
    assert shared["runs"] == ["shared_short", "shared_long"] and shared["protocol_s"] > 0
    assert shared["concurrent"] and not protocol["concurrent"]
    assert all(set(r["variants"]) == {"standard", "batchnorm"} for r in runs[2:])  # worker logs
    assert len(list((out / "paper_shared_long").glob("*/*/probe.jsonl"))) == 2
    assert not list((out / "paper_shared_long").glob("**/checkpoints"))
    assert "checkpoint_overhead" in summary["bench"]

    assert summary["bench"]["train_step_s"] > 0
    tasks = {(r["task"], r["tool"]) for r in summary["peers_jax"]}
    assert {("lambda_max", "ours"), ("trace", "ours"), ("surface_3", "ours")} <= tasks
    assert all(r["tool"] == "ours" for r in summary["peers_jax"])

    # Eager PyTorch on the same weights and batch, when torch is installed (CI installs it).
    if importlib.util.find_spec("torch") is None:
        assert summary["eager_torch"] == []
    else:
        (row,) = summary["eager_torch"]
        assert row["variant"] == "batchnorm" and row["torch_device"] == "cpu"
        assert row["agreement_max_rel_diff"]["loss"] < 1e-4
        assert row["probed_step_ratio_torch_over_jax"] > 0


def test_bad_arguments_are_one_line_and_exit_2(tmp_path):
    proc = subprocess.run(
        ["bash", str(SCRIPT)], capture_output=True, text=True, env={**os.environ, "OUT": ""}
    )
    assert proc.returncode == 2 and proc.stderr.count("\n") == 1
    assert "give the output folder" in proc.stderr
    proc = subprocess.run(
        ["bash", str(SCRIPT), str(tmp_path), "--gpu"], capture_output=True, text=True
    )
    assert proc.returncode == 2 and "unknown option --gpu" in proc.stderr
