"""A run killed with SIGKILL mid-way resumes to the same records and parameters."""

import os
import signal
import subprocess
import sys
import time

from helpers import REPO

from landscape.results import read_rows

ARGS = ["--preset", "smoke", "--steps", "30", "--probe-every", "1", "--no-progress",
        "--no-figures", "--variants", "standard"]  # fmt: skip


def landscape(*args, **kwargs):
    return subprocess.Popen([sys.executable, str(REPO / "cli.py"), "probe", *map(str, args)],
                            cwd=REPO, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, **kwargs)  # fmt: skip


def test_sigkill_then_resume_matches_uninterrupted_run(tmp_path):
    killed, full = tmp_path / "killed", tmp_path / "full"
    proc = landscape(*ARGS, "--out", killed, start_new_session=True)
    probe_file = killed / "standard" / "probe.jsonl"
    deadline = time.time() + 300
    while time.time() < deadline and len(read_rows(probe_file)) < 8:
        time.sleep(0.2)
    os.killpg(proc.pid, signal.SIGKILL)
    proc.wait()
    assert 8 <= len(read_rows(probe_file)) < 30, "the run should have been killed mid-way"

    resumed = landscape("--resume", killed, "--no-progress", "--no-figures")
    assert resumed.wait() == 0, resumed.stdout.read().decode()
    uninterrupted = landscape(*ARGS, "--out", full)
    assert uninterrupted.wait() == 0, uninterrupted.stdout.read().decode()

    for name in ("probe.jsonl", "metrics.jsonl"):
        got = read_rows(killed / "standard" / name)
        want = read_rows(full / "standard" / name)
        assert got == want, name  # same rows, same order, no duplicates, bit-identical numbers
