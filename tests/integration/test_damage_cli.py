"""Damage, contention and full disks from the command: one line and a consistent run directory,
never a traceback (a full or read-only disk is a small tmpfs, where the test may mount one)."""

import contextlib
import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
from helpers import REPO

from landscape.checkpoints import Checkpointer, complete_steps
from landscape.results import read_rows

SMOKE = ["--preset", "smoke", "--steps", "12", "--variants", "batchnorm", "--no-progress"]


def landscape(*args, **kwargs) -> subprocess.CompletedProcess:
    return subprocess.run(
        [sys.executable, str(REPO / "cli.py"), *map(str, args)],
        cwd=REPO, capture_output=True, text=True, **kwargs,
    )  # fmt: skip


def start(*args) -> subprocess.Popen:
    return subprocess.Popen(
        [sys.executable, str(REPO / "cli.py"), *map(str, args)],
        cwd=REPO, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
    )  # fmt: skip


def one_line_error(result, code: int = 2) -> str:
    assert result.returncode == code, result.stderr
    assert "Traceback" not in result.stderr, result.stderr
    lines = [line for line in result.stderr.splitlines() if line.strip()]
    assert len(lines) == 1, result.stderr
    return lines[0]


def wait_for(condition, seconds: float = 300) -> None:
    deadline = time.monotonic() + seconds
    while not condition():
        assert time.monotonic() < deadline, "timed out"
        time.sleep(0.1)


@contextlib.contextmanager
def tmpfs(path: Path, size: str):
    path.mkdir()
    mounted = subprocess.run(
        ["mount", "-t", "tmpfs", "-o", f"size={size}", "tmpfs", str(path)], capture_output=True
    )
    if mounted.returncode != 0:
        pytest.skip("this machine does not let the test mount a tmpfs (needs root)")
    try:
        yield path
    finally:
        subprocess.run(["umount", "-l", str(path)], check=False)


def test_damaged_config_and_provenance_get_one_line(tmp_path):
    run_dir = tmp_path / "run"
    assert landscape("train", *SMOKE, "--steps", "2", "--out", run_dir).returncode == 0
    (run_dir / "provenance.json").write_text("[1, 2")
    line = one_line_error(landscape("probe", "--from", run_dir, "--no-progress"))
    assert "this run's provenance.json is damaged" in line
    (run_dir / "config.json").write_text('{"steps": [3]}')
    for args in (("summary", run_dir), ("probe", "--resume", run_dir), ("ics", run_dir)):
        assert "this run's config.json is damaged" in one_line_error(landscape(*args))


def test_a_second_writer_is_refused_and_a_dead_ones_lock_taken_over(tmp_path):
    run_dir = tmp_path / "run"
    first = start("probe", "--no-figures", *SMOKE, "--steps", "400", "--out", run_dir)
    try:
        wait_for(lambda: len(read_rows(run_dir / "batchnorm" / "metrics.jsonl")) >= 10)
        line = one_line_error(landscape("probe", "--resume", run_dir, "--no-progress"))
        assert f"is in use by process {first.pid}" in line and "probe" in line
        assert "in use by" in one_line_error(landscape("ics", run_dir, "--no-progress"))
    finally:
        first.kill()
        first.wait()
    # The killed writer's lock is taken over; a --steps that would shorten the run is refused.
    shorter = landscape("train", "--resume", run_dir, "--steps", "12", "--no-progress")
    assert "was started for 400 steps" in one_line_error(shorter)
    resumed = landscape("train", "--resume", run_dir, "--no-progress")
    assert resumed.returncode == 0, resumed.stderr


def test_two_quick_interrupts_stop_without_a_traceback(tmp_path):
    run_dir = tmp_path / "run"
    proc = start("probe", "--no-figures", *SMOKE, "--steps", "400", "--out", run_dir)
    wait_for(lambda: len(read_rows(run_dir / "batchnorm" / "metrics.jsonl")) >= 10)
    proc.send_signal(signal.SIGINT)
    time.sleep(0.05)
    proc.send_signal(signal.SIGINT)
    _, err = proc.communicate(timeout=120)
    assert proc.returncode == 130 and "Traceback" not in err, err
    # What was written is whole: every checkpoint loads, every record line parses.
    Checkpointer(run_dir / "batchnorm" / "checkpoints").latest_step()
    rows = read_rows(run_dir / "batchnorm" / "metrics.jsonl")
    assert rows and all("step" in r for r in rows)


def test_dangling_symlink_out_and_damaged_newest_checkpoint(tmp_path):
    link = tmp_path / "link"
    link.symlink_to(tmp_path / "gone")
    line = one_line_error(landscape("train", *SMOKE, "--out", link))
    assert "symbolic link to" in line and "does not exist" in line
    assert not (tmp_path / "gone").exists()

    run_dir = tmp_path / "run"
    assert landscape("train", *SMOKE, "--steps", "4", "--out", run_dir).returncode == 0
    newest = run_dir / "batchnorm" / "checkpoints" / "4" / "state.npz"
    newest.write_bytes(newest.read_bytes()[:500])
    resumed = landscape("train", "--resume", run_dir, "--steps", "6", "--no-progress")
    assert resumed.returncode == 0 and "Traceback" not in resumed.stderr, resumed.stderr
    assert "warning: checkpoint" in resumed.stderr and "4/state.npz is damaged" in resumed.stderr
    assert complete_steps(run_dir / "batchnorm" / "checkpoints")[-1] == 6


def test_a_full_disk_is_one_line_and_resume_finishes_after_space_is_freed(tmp_path):
    with tmpfs(tmp_path / "disk", "2m") as disk:
        run_dir = disk / "run"
        full = landscape("probe", "--no-figures", *SMOKE, "--steps", "60", "--out", run_dir)
        line = one_line_error(full, code=1)
        assert line.startswith("error: the disk is full: writing checkpoint") and "MB)" in line
        # Consistent: every checkpoint on disk loads, and the records parse.
        steps = complete_steps(run_dir / "batchnorm" / "checkpoints")
        assert steps and not list((run_dir / "batchnorm" / "checkpoints").glob(".tmp-*"))
        subprocess.run(["mount", "-o", "remount,size=64m", str(disk)], check=True)
        resumed = landscape("probe", "--resume", run_dir, "--no-progress", "--no-figures")
        assert resumed.returncode == 0, resumed.stderr
        rows = read_rows(run_dir / "batchnorm" / "metrics.jsonl")
        assert [r["step"] for r in rows if "loss" in r] == list(range(60))


def test_a_read_only_run_directory_is_one_line(tmp_path):
    with tmpfs(tmp_path / "disk", "64m") as disk:
        run_dir = disk / "run"
        assert landscape("train", *SMOKE, "--steps", "2", "--out", run_dir).returncode == 0
        subprocess.run(["mount", "-o", "remount,ro", str(disk)], check=True)
        line = one_line_error(landscape("ics", run_dir, "--no-progress"), code=1)
        assert line.startswith("error: cannot write") and "Read-only file system" in line
        assert json.loads((run_dir / "config.json").read_text())["steps"] == 2
        os.sync()


def test_train_at_a_huge_learning_rate_stops_with_one_line_and_a_record(tmp_path):
    run_dir = tmp_path / "run"
    result = landscape("train", *SMOKE, "--lr", "1000", "--out", run_dir)
    assert result.returncode == 0 and "Traceback" not in result.stderr, result.stderr
    said = [line for line in result.stdout.splitlines() if "diverged" in line]
    assert len(said) == 1 and said[0].startswith("batchnorm diverged at step "), result.stdout
    assert "learning rate 1000.0); training stopped there" in said[0]
    record = json.loads((run_dir / "batchnorm" / "diverged.json").read_text())
    assert record["stopped"] and record["loss"] in ("nan", "inf", "-inf")
    summary = landscape("summary", run_dir)
    assert said[0] in summary.stdout.splitlines()
