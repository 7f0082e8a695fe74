"""`--log tensorboard` and `landscape export` from the command."""

import subprocess
import sys

import pytest
from helpers import REPO

tensorboard = pytest.importorskip("landscape.tensorboard")


def landscape(*args):
    return subprocess.run(
        [sys.executable, str(REPO / "cli.py"), *map(str, args)],
        cwd=REPO, capture_output=True, text=True,
    )  # fmt: skip


def test_a_logged_probe_and_an_export_show_the_same_curves(tmp_path):
    run_dir = tmp_path / "run"
    args = ["probe", "--preset", "smoke", "--steps", "6", "--no-progress", "--out", run_dir]
    logged = landscape(*args, "--log", f"tensorboard:{tmp_path / 'live'}")
    assert logged.returncode == 0, logged.stderr
    assert f"tensorboard: {tmp_path / 'live'}" in logged.stdout
    exported = landscape("export", run_dir)
    assert exported.returncode == 0, exported.stderr
    for variant in ("standard", "batchnorm"):
        live = tensorboard.read_scalars(tmp_path / "live" / variant)
        assert live == tensorboard.read_scalars(run_dir / "tensorboard" / variant)
        assert [s for s, _ in live["train/loss"]] == list(range(6))
    assert list((tmp_path / "live" / "figures").glob("events.out.tfevents.*.figures"))
    bad = landscape(*args[:-1], tmp_path / "other", "--log", "wandb")
    assert bad.returncode == 2 and "unknown --log 'wandb'" in bad.stderr
    assert "Traceback" not in bad.stderr and not (tmp_path / "other").exists()
