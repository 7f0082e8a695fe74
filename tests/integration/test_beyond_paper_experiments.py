"""The experiments beyond the paper's own figures, end to end at their smoke presets (synthetic
data, shortened further with --set): each step runs, and each leaves the records its page in
docs/experiments.md reads."""

from __future__ import annotations

import csv
import subprocess
import sys

import pytest
from helpers import REPO

from landscape.results import load_hessian, load_metrics
from landscape.surface_records import load_surfaces


def run_experiment(name: str, out, *settings: str) -> None:
    command = [
        *(sys.executable, "-m", "landscape", "experiment"),
        str(REPO / "experiments" / f"{name}.toml"),
        *("--preset", "smoke", "--out", str(out)),
        *(arg for setting in settings for arg in ("--set", setting)),
    ]
    done = subprocess.run(command, capture_output=True, text=True, cwd=REPO)
    assert done.returncode == 0, done.stdout[-3000:] + done.stderr[-3000:]
    assert (out / "report.html").is_file()


def sweep_table(sweep_dir) -> list[dict[str, str]]:
    with open(sweep_dir / "summary.csv") as f:
        return list(csv.DictReader(f))


def test_learning_rate_sensitivity(tmp_path):
    out = tmp_path / "lr"
    run_experiment("lr_sensitivity", out, "steps=6", "probe_every=3", "eval_every=3")
    table = sweep_table(out / "sweep")
    assert [(r["lr"], r["variant"]) for r in table] == [
        (lr, v) for lr in ("0.02", "0.5") for v in ("standard", "batchnorm", "layernorm")
    ]
    assert all(r["status"] == "done" and float(r["train_loss"]) > 0 for r in table)
    assert (out / "sweep" / "sweep.png").stat().st_size > 0


def test_skip_connections_against_normalisation(tmp_path):
    out = tmp_path / "skip"
    run_experiment(
        "skip_connections",
        out,
        # ResNet-8 (one block a stage) for the experiment's ResNet-20: the same code, a
        # fraction of the compilation.
        *("short=resnet8", "steps=4", "probe_every=2", "eval_every=4", "hessian_steps=0,4"),
        "grid=3",
    )
    table = sweep_table(out / "sweep")
    assert {(r["arch"], r["variant"]) for r in table} == {
        (a, v) for a in ("resnet8", "resnet8_noshort") for v in ("standard", "batchnorm")
    }
    low = sweep_table(out / "sweep_low_lr")
    assert {(r["arch"], r["variant"]) for r in low} == {
        ("resnet8", "standard"),
        ("resnet8_noshort", "standard"),
    }
    for run in ("sweep/arch=resnet8", "sweep/arch=resnet8_noshort"):
        hessian = load_hessian(out / run)
        assert set(hessian) == {"standard", "batchnorm"}, run
        for rec in hessian.values():
            assert list(rec["step"]) == [0, 4] and (rec["lambda_max"] > 0).all(), run
        (surface,) = load_surfaces(out / run).values()  # the one 2D surface, per variant
        assert set(surface) == {"standard", "batchnorm"}, run
    assert load_hessian(out / "sweep_low_lr/arch=resnet8")


@pytest.mark.parametrize(
    ("name", "variants"),
    [
        (
            "normalisers",
            {"standard", "batchnorm", "layernorm", "groupnorm8", "weightnorm", "rmsnorm"},
        ),
        ("figure1_lr05", {"standard", "batchnorm"}),
    ],
)
def test_variants_side_by_side(tmp_path, name, variants):
    out = tmp_path / name
    settings = ("steps=6", "probe_every=3", "eval_every=3") if name == "normalisers" else ()
    run_experiment(name, out, *settings)
    metrics = load_metrics(out / "vgg")
    assert set(metrics) == variants
    for variant, m in metrics.items():
        assert len(m["test"]["test_accuracy"]), variant
