"""The `landscape` command end to end: help, errors as one line with exit 2, a smoke run."""

import io
import subprocess
import sys
import tarfile

import numpy as np
import pytest
from PIL import Image
from typer.testing import CliRunner

from landscape.app.cli import app

runner = CliRunner()


def invoke(*args):
    return runner.invoke(app, [str(a) for a in args])


def test_help_lists_commands_and_explains_options():
    result = invoke("--help")
    assert result.exit_code == 0
    for command in ("probe", "train", "plot", "report", "summary"):
        assert command in result.output
    result = invoke("probe", "--help")
    assert result.exit_code == 0
    for option in ("--preset", "--etas", "--probe-every", "--variants", "--resume", "--from"):
        assert option in result.output


def test_help_does_not_import_jax():
    code = "import sys; from landscape.app.cli import app; print('jax' in sys.modules)"
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert out.stdout.strip() == "False"


@pytest.mark.parametrize(
    ("args", "message"),
    [
        (["probe", "--etas", "0.1:x:3"], "--etas"),
        (["probe", "--etas", "-1,2"], "positive"),
        (["probe", "--preset", "huge"], "unknown preset"),
        (
            ["probe", "--variants", "standard,instancenorm", "--data", "synthetic"],
            "unknown variant",
        ),
        (["probe", "--steps", "0"], "--steps must be positive"),
        (["train", "--arch", "vgg7", "--data", "synthetic"], "unknown --arch"),
        (["probe", "--data", "/no/such/file.tar.gz", "--preset", "smoke"], "/no/such/file"),
        (["plot", "/no/such/run"], "not a landscape run"),
        (["summary", "/no/such/run"], "not a landscape run"),
    ],
)
def test_bad_input_is_one_line_and_exit_2(args, message, tmp_path):
    result = invoke(*args, *(["--out", tmp_path / "r"] if args[0] in ("probe", "train") else []))
    assert result.exit_code == 2, result.output
    assert message in result.output
    assert "Traceback" not in result.output
    assert len(result.output.strip().splitlines()) <= 2  # "run directory: ..." then the error


def test_smoke_probe_end_to_end(tmp_path):
    run_dir = tmp_path / "smoke"
    args = [
        "probe",
        "--preset",
        "smoke",
        "--steps",
        "4",
        "--out",
        run_dir,
        "--no-progress",
        "--probe-every",
        "1",
        "--eval-every",
        "2",
    ]
    result = invoke(*args)
    assert result.exit_code == 0, result.output
    assert "standard/batchnorm" in result.output  # the ratio rows of the summary table
    assert (run_dir / "report.html").exists()
    assert list((run_dir / "figures").glob("*.png"))
    # An existing run directory is refused without --resume/--overwrite.
    again = invoke(*args)
    assert again.exit_code == 2 and "already exists" in again.output
    # Resuming a finished run does no work and keeps the records.
    resumed = invoke("probe", "--resume", run_dir, "--no-progress", "--no-figures")
    assert resumed.exit_code == 0, resumed.output
    # The command repeated with --resume (what an experiment does) is accepted; an option that
    # would change the saved run is refused in one line, and the run is left as it was.
    records = (run_dir / "batchnorm" / "metrics.jsonl").read_bytes()
    repeated = invoke(*args, "--resume", run_dir, "--no-figures")
    assert repeated.exit_code == 0, repeated.output
    for change, message in [
        (("--lr", "0.5"), "--lr 0.5: " + str(run_dir) + " was started with 0.1; --resume keeps"),
        (("--preset", "paper"), "--preset paper: "),
        (("--probe-every", "2"), "--probe-every 2: "),
        (("--steps", "3"), "--steps 3: " + str(run_dir) + " was started for 4 steps"),
        (("--model", "mynets:mlp"), "--model: "),
    ]:
        refused = invoke("probe", "--resume", run_dir, *change, "--no-progress")
        assert refused.exit_code == 2, refused.output
        assert message in " ".join(refused.output.split()), refused.output
        assert "Traceback" not in refused.output
    assert (run_dir / "batchnorm" / "metrics.jsonl").read_bytes() == records
    for command in ("summary", "plot", "report"):
        result = invoke(command, run_dir)
        assert result.exit_code == 0, result.output
    result = invoke("probe", "--from", run_dir, "--etas", "0.01,0.02", "--no-progress")
    assert result.exit_code == 0, result.output
    assert (run_dir / "standard" / "reprobe.jsonl").exists()


def test_bias_example_command(tmp_path):
    result = invoke("bias-example", "--out", tmp_path, "--steps", "20")
    assert result.exit_code == 0, result.output
    assert (tmp_path / "bias_example.png").stat().st_size > 0
    assert "stop_gradient" in result.output and "full_gradient" in result.output
    assert invoke("bias-example", "--steps", "0").exit_code == 2


def test_a_cut_archive_in_a_bracketed_folder_is_one_literal_line(tmp_path, monkeypatch):
    """Rich markup used to eat "[final]" from the path; tarfile used to stop quietly at the cut
    and the message then blamed the class folders."""
    folder = tmp_path / "run[final]"
    for split, count in (("train", 3), ("test", 2)):
        for name in ("cat", "dog"):
            (folder / "imgs" / split / name).mkdir(parents=True)
            for k in range(count):
                image = Image.fromarray(np.full((32, 32, 3), 10 * k, np.uint8))
                image.save(folder / "imgs" / split / name / f"{k}.png")
    whole = io.BytesIO()
    with tarfile.open(fileobj=whole, mode="w") as tar:
        tar.add(folder / "imgs", arcname="imgs")
    with tarfile.open(fileobj=io.BytesIO(whole.getvalue())) as tar:
        last = tar.getmembers()[-1].offset
    (folder / "x.tar").write_bytes(whole.getvalue()[:last])  # cut at the last member
    cache = tmp_path / "cache"
    monkeypatch.setenv("LANDSCAPE_CACHE", str(cache))
    result = invoke(
        "probe", "--data", folder / "x.tar", "--preset", "smoke", "--out", tmp_path / "r"
    )
    assert result.exit_code == 2, result.output
    error = result.output.strip().splitlines()[-1]
    assert error.startswith(f"error: {folder}/x.tar: the archive is incomplete or damaged after")
    assert "Traceback" not in result.output and not list(cache.glob("images-*"))
    result = invoke("summary", folder)
    assert result.exit_code == 2 and f"{folder}" in result.output, result.output
