"""An experiment killed in each of its steps, run again until it finishes, gives the same records
and checkpoints, byte for byte, as one that ran uninterrupted."""

import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

from landscape.experiments import load_experiment, run_experiment, variables_for

EXPERIMENT = """
title = "killed and continued"
[[steps]]
name = "train"
run = ["probe", "--preset", "smoke", "--steps", "20", "--variants", "batchnorm", "--out", "{out}/vgg", "--no-progress", "--no-figures"]
[[steps]]
name = "reprobe"
run = ["probe", "--from", "{out}/vgg", "--etas", "0.1:0.4:4", "--no-progress"]
[[steps]]
name = "ics"
run = ["ics", "{out}/vgg", "--layers", "2,5", "--no-progress"]
[[steps]]
name = "report"
run = ["report", "{out}/vgg"]
"""


def _lines(path: Path) -> int:
    return len(path.read_bytes().splitlines()) if path.exists() else 0


def _cli(args) -> subprocess.Popen:
    return subprocess.Popen([sys.executable, "-m", "landscape", *args], stdout=subprocess.DEVNULL)


def killing_runner(out: Path, step_name: str, when):
    """Returns a runner that runs each step to its end, but kills step ``step_name`` as soon as
    ``when(out)`` holds, and then dies itself as the experiment's own process would."""

    def runner(args):
        proc = _cli(args)
        name = "reprobe" if "--from" in args else {"probe": "train"}.get(args[0], args[0])
        if name != step_name:
            return proc.wait()
        deadline = time.monotonic() + 300
        while proc.poll() is None and not when(out) and time.monotonic() < deadline:
            time.sleep(0.05)
        assert proc.poll() is None, f"{step_name} finished before it could be killed"
        os.kill(proc.pid, signal.SIGKILL)
        proc.wait()
        raise KeyboardInterrupt

    return runner


def _records(out: Path) -> dict[str, bytes]:
    root = out / "vgg"
    files = sorted(root.rglob("*.jsonl")) + sorted(root.rglob("state.npz"))
    return {str(p.relative_to(root)): p.read_bytes() for p in files}


def test_an_experiment_killed_in_each_step_finishes_identical(tmp_path):
    path = tmp_path / "exp.toml"
    path.write_text(EXPERIMENT)
    exp = load_experiment(path)
    quiet = lambda message: None  # noqa: E731

    reference = tmp_path / "reference"
    run_experiment(exp, variables_for(exp, "smoke", reference, "synthetic"), say=quiet)

    out = tmp_path / "killed"
    values = variables_for(exp, "smoke", out, "synthetic")
    bn = out / "vgg" / "batchnorm"
    kills = [
        ("train", lambda o: (bn / "checkpoints" / "6").exists()),
        ("reprobe", lambda o: _lines(bn / "reprobe.jsonl") >= 1),
        ("ics", lambda o: _lines(bn / "ics.jsonl") >= 1),
        ("report", lambda o: (o / "vgg" / "report.html").exists() or time.sleep(1.5) is None),
    ]
    for step_name, when in kills:
        with pytest.raises(KeyboardInterrupt):
            run_experiment(exp, values, runner=killing_runner(out, step_name, when), say=quiet)
    rows = run_experiment(exp, values, say=quiet)
    assert [r["status"] for r in rows] == ["skipped", "skipped", "skipped", "ok"]
    assert (out / "vgg" / "report.html").exists()

    expected, got = _records(reference), _records(out)
    assert sorted(got) == sorted(expected) and "batchnorm/ics.jsonl" in got
    assert [name for name in expected if got[name] != expected[name]] == []
