"""The `hessian` command on a smoke run: records, skipped steps, figures, one-line errors."""

from __future__ import annotations

import json

import numpy as np
import pytest

from landscape.app.cli import app


@pytest.fixture(scope="module")
def smoke_run(tmp_path_factory):
    """A 4-step smoke run of the BatchNorm VGG-11 at width 1/8, every checkpoint kept.

    One variant keeps the test short (the loop over variants is the same code); BatchNorm is
    the one whose mode matters.
    """
    from landscape.config import CheckpointConfig, preset
    from landscape.runs import run

    config = preset("smoke").replace(
        steps=4,
        batch_size=8,
        variants=("batchnorm",),
        eval_every=0,
        checkpoint=CheckpointConfig(every=1, max_to_keep=None, keep_period=None, keep_all=True),
    )
    assert config.model.width == 0.125
    run_dir = tmp_path_factory.mktemp("hessian") / "smoke"
    run(config, run_dir, probe_enabled=False, progress=False)
    return run_dir


def invoke(*args):
    from typer.testing import CliRunner

    return CliRunner().invoke(app, [str(a) for a in args])


def rows_of(path):
    return [json.loads(line) for line in path.read_text().splitlines()]


def test_cli_records_skips_done_steps_and_draws_figures(smoke_run):
    args = ["hessian", smoke_run, "--every", "2", "--iterations", "3", "--top-k", "2"]
    result = invoke(*args, "--trace-probes", "2", "--no-progress")
    assert result.exit_code == 0, result.output
    assert "mode: train" in result.output
    for variant in ("batchnorm",):
        rows = rows_of(smoke_run / variant / "hessian.jsonl")
        assert [r["step"] for r in rows] == [0, 2, 4]  # checkpoints 0..4, every second
        for r in rows:
            assert (r["mode"], r["block"], r["batches"], r["iterations"]) == ("train", "all", 1, 3)
            assert len(r["top_eigenvalues"]) == 2 and r["lambda_max"] == r["top_eigenvalues"][0]
            assert r["top_eigenvalues"][0] >= r["top_eigenvalues"][1]
            assert np.isfinite(r["trace"]) and r["trace_stderr"] >= 0
            assert r["eos"] == pytest.approx(2 / r["lr"])
            assert r["eta_small"] == pytest.approx(1e-3 * r["lr"])
            # Not equal to ||H g|| / ||g||: a ReLU network's gradient also jumps where a step
            # crosses a kink, O(eta) like H g; the float64 test above checks a smooth network.
            assert r["beta_small"] > 0 and r["hg_ratio"] > 0
    before = (smoke_run / "batchnorm" / "hessian.jsonl").read_text()
    again = invoke(*args, "--trace-probes", "2", "--no-progress")
    assert again.exit_code == 0, again.output
    assert "nothing to do" in again.output
    assert (smoke_run / "batchnorm" / "hessian.jsonl").read_text() == before

    # A block and two batches make other records of the same step (eval mode: a unit test).
    extra = invoke(
        "hessian", smoke_run, "--steps", "2", "--variants", "batchnorm", "--layers", "Dense_0/",
        "--batches", "2", "--iterations", "2", "--trace-probes", "0", "--no-progress",
    )  # fmt: skip
    assert extra.exit_code == 0, extra.output
    new = rows_of(smoke_run / "batchnorm" / "hessian.jsonl")[3:]
    assert [(r["step"], r["mode"], r["block"], r["batches"]) for r in new] == [
        (2, "train", "Dense_0/", 2)
    ]
    assert np.isnan(new[0]["trace"])

    from landscape.plots import plot_run
    from landscape.report import render_report

    names = {p.name for p in plot_run(smoke_run, formats=("png",))}
    assert {"sharpness.png", "curvature_link.png"} <= names
    assert "<h2>Curvature</h2>" in render_report(smoke_run)


@pytest.mark.parametrize(
    ("extra", "message"),
    [
        (["--layers", "NoSuchLayer"], "matches no parameter"),
        (["--steps", "999"], "no checkpoint at step 999"),
        (["--mode", "inference"], "unknown --mode"),
        (["--variants", "groupnorm"], "not in this run"),
    ],
)
def test_cli_bad_input_is_one_line_and_exit_2(smoke_run, extra, message):
    result = invoke("hessian", smoke_run, "--no-progress", *extra)
    assert result.exit_code == 2, result.output
    assert message in result.output
    assert "Traceback" not in result.output
    assert len(result.output.strip().splitlines()) == 1


def test_cli_on_a_bad_run_dir_exits_2(tmp_path):
    result = invoke("hessian", tmp_path / "nothing")
    assert result.exit_code == 2
    assert "not a landscape run" in result.output
    assert len(result.output.strip().splitlines()) == 1
