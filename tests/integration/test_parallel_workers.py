"""Parallel sweeps in worker processes: the same numbers as a sequential sweep, failures,
interruption and resumption, the command's errors."""

from __future__ import annotations

import csv
import json
import os
import pickle
import signal
import subprocess
import sys
import time

import pytest
from helpers import REPO, parallel_config
from typer.testing import CliRunner

from landscape.app.cli import app
from landscape.app.runtime import XLA_OPT_OUT, enable_compilation_cache
from landscape.config import RunConfig
from landscape.parallel import Backend, detect_backend, log_path, plan_slots, run_parallel
from landscape.results import read_rows
from landscape.sweep import configurations, open_sweep, run_status, run_sweep

GRID = {"seed": [0, 1]}


@pytest.fixture(scope="module")
def base() -> RunConfig:
    """conftest's tiny VGG-11 (width 1/16, batch 16, synthetic data), one variant, 20 steps, every
    step checkpointed and probed; module-scoped, so one sequential reference serves every test."""
    return parallel_config()


# Runs a sweep one configuration after another in a process pinned to the given cores before JAX
# starts: argv = cores (comma-separated), the pickled base config, the grid as JSON, the sweep dir.
SEQUENTIAL_PINNED = """
import json, os, pickle, sys
os.sched_setaffinity(0, [int(c) for c in sys.argv[1].split(",")])
from landscape.app.runtime import enable_compilation_cache
from landscape.sweep import run_sweep
enable_compilation_cache()
with open(sys.argv[2], "rb") as f:
    base = pickle.load(f)
run_sweep(sys.argv[4], base, json.loads(sys.argv[3]), progress=False)
"""


@pytest.fixture(scope="module")
def sequential(base, tmp_path_factory):
    """The sweep run today's way (--parallel 1): the reference numbers, bit for bit.

    It runs in a process pinned to as many cores as each --parallel 2 worker gets, because XLA's
    CPU backend splits its sums by thread count: Eigen's convolutions, which
    ``landscape.xla_tuning`` selects, round differently on 1 and 2 threads, and over 20 training
    steps a max-pool or ReLU switching on that rounding moved an unpinned run's records by up to
    60% (seed 1, step 11). The compilation cache is on, as in the CLI, so the workers of the
    other tests load the programs compiled here instead of compiling them again.
    """
    enable_compilation_cache()
    tmp = tmp_path_factory.mktemp("sequential")
    cores = plan_slots(2, Backend("cpu", 1, "test"))[0].env["LANDSCAPE_WORKER_CPUS"]
    with open(tmp / "base.pkl", "wb") as f:
        pickle.dump(base, f)
    subprocess.run(
        [sys.executable, "-c", SEQUENTIAL_PINNED, cores, str(tmp / "base.pkl"), json.dumps(GRID),
         str(tmp / "sweep")],
        cwd=REPO, check=True, capture_output=True,
    )  # fmt: skip
    return tmp / "sweep"


@pytest.fixture(scope="module")
def parallel(base, sequential, tmp_path_factory):
    """The same sweep with --parallel 2: (sweep_dir, summary rows, failures, events)."""
    sweep_dir = tmp_path_factory.mktemp("parallel") / "sweep"
    events = []
    summary, failures = run_parallel(sweep_dir, base, GRID, parallel=2, on_event=events.append)
    return sweep_dir, summary, failures, events


def rows(run_dir, name):
    return read_rows(run_dir / "standard" / name)


def assert_same_numbers(got_dir, want_dir):
    """The same records, bit for bit (runs on the same number of cores: see ``sequential``)."""
    for name in ("metrics.jsonl", "probe.jsonl"):
        got, want = rows(got_dir, name), rows(want_dir, name)
        assert [r["step"] for r in got] == [r["step"] for r in want], name
        assert got == want, name


runner = CliRunner()


def test_detect_backend_without_jax_in_this_process():
    found = detect_backend({"JAX_PLATFORMS": "cpu"})
    assert (found.platform, found.device_count) == ("cpu", len(os.sched_getaffinity(0)))
    forced = detect_backend({"JAX_PLATFORMS": "", "PATH": os.environ.get("PATH", "")})
    assert forced.platform in ("cpu", "cuda", "rocm", "tpu") and forced.device_count >= 1


def test_parallel_sweep_gives_the_sequential_numbers(base, sequential, parallel):
    sweep_dir, summary, failures, events = parallel
    assert failures == []
    assert sorted(e.kind for e in events) == ["finished", "finished", "started", "started"]
    assert sorted(e.finished for e in events if e.kind == "finished") == [1, 2]
    assert all(e.seconds > 0 for e in events if e.kind == "finished")
    for name, _, _ in configurations(base, GRID):
        assert_same_numbers(sweep_dir / name, sequential / name)
    assert [r["status"] for r in summary] == ["done", "done"]
    reference = run_sweep(sequential, progress=False)  # all done: only summarises
    for got, want in zip(summary, reference, strict=True):
        assert got["beta"] == want["beta"]
        assert got["test_accuracy"] == want["test_accuracy"]
    # Each worker was pinned to its own cores before JAX started (the log says which).
    cores = [log_path(sweep_dir, n).read_text().split("cores ")[-1].split("]")[0]
    for n, _, _ in configurations(base, GRID)]  # fmt: skip
    if len(os.sched_getaffinity(0)) >= 2:
        sets = [set(c.strip("[").split(", ")) for c in cores]
        assert sets[0].isdisjoint(sets[1]), cores
    # And each log has its variants' timing lines, as `landscape probe` prints them.
    for n, _, config in configurations(base, GRID):
        log = log_path(sweep_dir, n).read_text()
        for variant in config.variants:
            assert f"{variant}: {config.steps} steps in " in log, log


def test_a_failing_configuration_is_reported_and_the_others_finish(base, parallel, tmp_path):
    sweep_dir = tmp_path / "sweep"
    open_sweep(sweep_dir, base, GRID)
    (good, _, _), (bad, _, bad_config) = configurations(base, GRID)
    # A directory in the way that is not a landscape run: the worker refuses to overwrite it,
    # which only shows when that configuration starts.
    (sweep_dir / bad).mkdir()
    (sweep_dir / bad / "notes.txt").write_text("mine")
    result = runner.invoke(
        app, ["sweep", "--resume", str(sweep_dir), "--parallel", "2", "--no-progress"]
    )
    assert result.exit_code == 1, result.output
    out = " ".join(result.output.split())  # rich may wrap long lines
    assert f"{bad}: FAILED" in out and "does not look like a landscape run" in out
    assert str(log_path(sweep_dir, bad)) in out
    assert f"1 of 2 configurations failed ({bad})" in out
    assert f"[1/2] {good}: finished in" in out
    assert "does not look like a landscape run" in log_path(sweep_dir, bad).read_text()
    assert_same_numbers(sweep_dir / good, parallel[0] / good)
    assert run_status(sweep_dir / bad, bad_config) == "new"
    with open(sweep_dir / "summary.csv") as f:
        assert [(r["run"], r["status"]) for r in csv.DictReader(f)] == [
            (good, "done"),
            (bad, "new"),
        ]


def test_an_interrupted_parallel_sweep_resumes(base, parallel, tmp_path):
    sweep_dir = tmp_path / "sweep"
    open_sweep(sweep_dir, base, GRID)
    names = [name for name, _, _ in configurations(base, GRID)]
    # As from a terminal, whatever the test runner inherited: started in the background
    # (`cmd &`), it ignores SIGINT, and the sweep would never see the Ctrl-C this test sends.
    as_from_a_terminal = (
        "import runpy, signal, sys; signal.signal(signal.SIGINT, signal.default_int_handler); "
        "sys.argv = sys.argv[1:]; runpy.run_path(sys.argv[0], run_name='__main__')"
    )
    command = [sys.executable, "-c", as_from_a_terminal, str(REPO / "cli.py"), "sweep",
               "--resume", str(sweep_dir), "--parallel", "2", "--no-progress"]  # fmt: skip
    # The command's main() adds XLA's CPU flags, which its workers inherit and which change the
    # rounding of the convolutions; the reference sweep and the resumption below run from this
    # (untuned) process, so the interrupted part must run untuned too to match bit for bit.
    proc = subprocess.Popen(
        command,
        cwd=REPO,
        env={**os.environ, XLA_OPT_OUT: "0"},
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        start_new_session=True,
    )
    deadline = time.time() + 120
    while time.time() < deadline and not all(
        rows(sweep_dir / n, "metrics.jsonl") for n in names
    ):  # both workers have recorded steps: interrupt them mid-run, as Ctrl-C would
        time.sleep(0.05)
    os.killpg(proc.pid, signal.SIGINT)
    output = proc.communicate(timeout=120)[0].decode()
    assert proc.returncode == 130, output
    assert f"continue with: landscape sweep --resume {sweep_dir}" in " ".join(output.split())
    status = [run_status(sweep_dir / n, c) for n, _, c in configurations(base, GRID)]
    assert "partial" in status, status

    result = runner.invoke(
        app, ["sweep", "--resume", str(sweep_dir), "--parallel", "2", "--no-progress"]
    )
    assert result.exit_code == 0, result.output
    for name, before in zip(names, status, strict=True):
        if before == "partial":  # resumed from its checkpoint, and its log shows both attempts
            assert f"{name}: resuming on" in result.output
            log = log_path(sweep_dir, name).read_text()
            assert "interrupted" in log and log.count("=== ") == 2, log
        # Each step recorded once, bit-identical to the uninterrupted workers' records.
        assert_same_numbers(sweep_dir / name, parallel[0] / name)


@pytest.mark.parametrize(
    ("args", "message"),
    [
        (["--parallel", "0"], "--parallel 0: use a positive number of workers"),
        (["--parallel", "4096"], "only"),  # more workers than cores, without --oversubscribe
    ],
)
def test_cli_bad_parallel_is_one_line_and_exit_2(args, message, tmp_path):
    result = runner.invoke(
        app, ["sweep", "--grid", "seed=0", "--out", str(tmp_path / "s"), "--no-progress", *args]
    )
    assert result.exit_code == 2, result.output
    assert message in result.output and "Traceback" not in result.output
    assert len(result.output.strip().splitlines()) <= 3
    assert not (tmp_path / "s").exists()  # refused before the sweep directory is written
