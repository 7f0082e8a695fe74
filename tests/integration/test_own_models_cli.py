"""A user's own networks and data through every command (tests/own_models.py, by import path)."""

from __future__ import annotations

import json

import numpy as np
import pytest
from own_models import train_elsewhere
from typer.testing import CliRunner

from landscape.app.cli import app

runner = CliRunner()
COMMON = ("--preset", "smoke", "--data", "own_models:tiny_images", "--batch-size", "16",
          "--eval-every", "0", "--no-progress")  # fmt: skip


def invoke(*args):
    return runner.invoke(app, [str(a) for a in args])


def rows(path):
    return [json.loads(line) for line in path.read_text().splitlines()]


@pytest.fixture(scope="module")
def linen_run(tmp_path_factory):
    run_dir = tmp_path_factory.mktemp("cli") / "run"
    result = invoke("probe", *COMMON, "--model", "own_models:linen_mlp", "--variants",
                    "norm=none,batchnorm", "--steps", "6", "--keep-all", "--probe-every", "1",
                    "--out", run_dir, "--no-figures")  # fmt: skip
    assert result.exit_code == 0, result.output
    return run_dir


def test_probe_resume_and_reprobe_on_a_users_linen_network(linen_run):
    assert json.loads((linen_run / "config.json").read_text())["variants"] == ["none", "batchnorm"]
    result = invoke("probe", "--from", linen_run, "--no-progress")
    assert result.exit_code == 0, result.output
    for variant in ("none", "batchnorm"):
        inline = {r["step"]: r["loss"] for r in rows(linen_run / variant / "probe.jsonl")}
        again = {r["step"]: r["loss"] for r in rows(linen_run / variant / "reprobe.jsonl")}
        assert inline and all(again[step] == loss for step, loss in inline.items())
    result = invoke("probe", "--resume", linen_run, "--steps", "8", "--no-progress",
                    "--no-figures")  # fmt: skip
    assert result.exit_code == 0, result.output
    assert max(r["step"] for r in rows(linen_run / "batchnorm" / "probe.jsonl")) == 7


@pytest.mark.parametrize(
    "command",
    [
        ("hessian", "--no-progress"),
        ("surface", "--step", "final", "--range", "-1:1:3", "--dims", "1", "--no-progress",
         "--no-figures"),
        ("interpolate", "--no-progress", "--no-figures"),
        ("ics", "--no-progress"),
        ("plot",),
        ("report",),
        ("summary",),
    ],
)  # fmt: skip
def test_every_analysis_rebuilds_the_network_from_the_record(linen_run, command):
    result = invoke(command[0], linen_run, *command[1:])
    assert result.exit_code == 0, result.output


def test_activations_of_a_network_that_sows_nothing_through_capture(linen_run):
    result = invoke("activations", linen_run, "--no-progress")
    assert result.exit_code == 2
    assert "sows no pre-activations" in result.output and "--capture" in result.output
    result = invoke("activations", linen_run, "--capture", "Conv", "--no-progress")
    assert result.exit_code == 2 and "no layer of the network is a Conv" in result.output
    result = invoke("activations", linen_run, "--capture", "Dense", "--no-progress",
                    "--examples", "8")  # fmt: skip
    assert result.exit_code == 0, result.output
    records = rows(linen_run / "batchnorm" / "activations.jsonl")
    assert records and records[0]["layer"] == [1, 2]  # both Dense layers, in call order


def test_an_nnx_network_probes_and_every_analysis_runs_activations_says_what_is_missing(
    tmp_path,
):
    result = invoke("probe", *COMMON, "--model", "own_models:nnx_net", "--steps", "4",
                    "--out", tmp_path / "nnx", "--no-figures")  # fmt: skip
    assert result.exit_code == 0, result.output
    assert np.isfinite(
        [r["loss"] for r in rows(tmp_path / "nnx" / "nnx_net" / "probe.jsonl")]
    ).all()
    for command in (("hessian", "--no-progress"), ("interpolate", "--no-progress", "--no-figures"),
                    ("surface", "--step", "final", "--range", "-1:1:3", "--dims", "1",
                     "--no-progress", "--no-figures")):  # fmt: skip
        result = invoke(command[0], tmp_path / "nnx", *command[1:])
        assert result.exit_code == 0, result.output
    # ICS reads the layer order from the traced forward pass: dense (with its norm), then out.
    result = invoke("ics", tmp_path / "nnx", "--no-progress")
    assert result.exit_code == 0, result.output
    ics = rows(tmp_path / "nnx" / "nnx_net" / "ics.jsonl")
    assert ics and all(r["layer_name"] == ["dense1", "classifier"] for r in ics)
    result = invoke("activations", tmp_path / "nnx", "--no-progress")
    assert (
        result.exit_code == 2 and "need the inputs of the network's nonlinearities" in result.output
    )


def test_named_factories_and_an_npz_file(tmp_path):
    rng = np.random.default_rng(0)
    np.savez(tmp_path / "data.npz", x_train=rng.random((64, 6, 6, 3), np.float32),
             y_train=rng.integers(0, 3, 64), x_test=rng.random((16, 6, 6, 3), np.float32),
             y_test=rng.integers(0, 3, 16))  # fmt: skip
    result = invoke("train", "--preset", "smoke", "--data", tmp_path / "data.npz",
                    "--batch-size", "16", "--steps", "3", "--no-progress", "--out", tmp_path / "r",
                    "--model", "mlp=own_models:linen_mlp", "--model", "nnx=own_models:nnx_net")  # fmt: skip
    assert result.exit_code == 0, result.output
    assert {p.name for p in (tmp_path / "r").iterdir()} >= {"mlp", "nnx", "config.json"}


def test_a_sweep_over_a_users_network(tmp_path):
    result = invoke("sweep", *COMMON, "--model", "own_models:linen_mlp", "--grid", "lr=0.05,0.1",
                    "--steps", "2", "--out", tmp_path / "sweep")  # fmt: skip
    assert result.exit_code == 0, result.output
    assert (tmp_path / "sweep" / "summary.csv").read_text().count("linen_mlp") == 2


@pytest.mark.parametrize(
    ("args", "message"),
    [
        (("--model", "nowhere:net"), "does not import"),
        (("--model", "own_models:not_a_network"), "returned a int"),
        (("--model", "own_models:wrong_width"), "must output"),
        (("--model", "own_models:linen_mlp", "--loss", "own_models:summed_loss"), "per example"),
        (("--model", "own_models:linen_mlp", "--model-arg", "hidden"), "KEY=VALUE"),
        (("--model", "own_models:linen_mlp", "--model-arg", "depth=3"), "cannot be called"),
    ],
)
def test_bad_input_is_one_line_with_exit_2_and_no_run_directory(tmp_path, args, message):
    result = invoke("probe", *COMMON, "--steps", "2", "--out", tmp_path / "run", *args)
    assert result.exit_code == 2, result.output
    assert message in result.output and "Traceback" not in result.output
    assert not (tmp_path / "run").exists()


def test_adopt_checkpoints_another_loop_saved_then_analyse_them(tmp_path):
    folder = train_elsewhere(tmp_path / "theirs")
    result = invoke("adopt", folder, "--out", tmp_path / "run", "--model", "own_models:linen_mlp",
                    "--model-arg", "norm=batchnorm", "--data", "own_models:tiny_images",
                    "--batch-size", "16")  # fmt: skip
    assert result.exit_code == 0, result.output
    assert "3 checkpoints adopted" in result.output
    for command in (("hessian", "--no-progress"), ("report",)):
        result = invoke(command[0], tmp_path / "run", *command[1:])
        assert result.exit_code == 0, result.output
    assert "analysis batches" in (tmp_path / "run" / "report.html").read_text()
    result = invoke("adopt", folder, "--out", tmp_path / "other", "--model", "own_models:nnx_net",
                    "--data", "own_models:tiny_images")  # fmt: skip
    assert result.exit_code == 2 and "does not fit the network" in result.output
    assert not (tmp_path / "other").exists()
