"""experiments/ioffe_szegedy_fig1.toml end to end at its smoke preset (synthetic data, shortened):
the MLP with and without BatchNorm trains, is probed, and its last hidden layer's sigmoid input
is recorded at the kept checkpoints, with the figures and the combined report."""

import subprocess
import sys

import numpy as np
from helpers import REPO

from landscape.results import load_activations, load_metrics


def test_the_smoke_preset_runs_end_to_end(tmp_path):
    out = tmp_path / "fig1"
    command = [
        *(sys.executable, "-m", "landscape", "experiment"),
        str(REPO / "experiments" / "ioffe_szegedy_fig1.toml"),
        *("--preset", "smoke", "--out", str(out)),
        *("--set", "steps=20", "--set", "checkpoint_every=5", "--set", "eval_every=10"),
    ]
    done = subprocess.run(command, capture_output=True, text=True, cwd=REPO)
    assert done.returncode == 0, done.stdout[-2000:] + done.stderr[-2000:]
    run_dir = out / "mlp"
    metrics = load_metrics(run_dir)
    assert set(metrics) == {"standard", "batchnorm"}
    records = load_activations(run_dir)
    for variant, layers in records.items():
        (layer,) = layers  # the last hidden layer only
        rec = layers[layer]
        assert layer == 3 and rec["name"] == "dense3", variant
        assert list(rec["step"]) == [0, 5, 10, 15, 20], variant  # every kept checkpoint
        p = np.asarray(rec["unit_percentiles"])
        assert p.shape == (5, 3) and np.all(np.diff(p, axis=1) >= 0), variant  # 15 <= 50 <= 85
    # Without BatchNorm the sigmoid's input sits where the weights put it; with BatchNorm, on the
    # fixed batch in train mode, its median is near 0 (the batch is standardised, then gamma=1).
    assert abs(np.median(records["batchnorm"][3]["percentiles"][0][1])) < 0.2
    figures = {p.name for p in (run_dir / "figures").glob("*.png")}
    assert {"activations.png", "training_curves.png"} <= figures
    assert (out / "report.html").is_file()
