"""The `landscape` command end to end: help, errors as one line with exit 2, a smoke run."""

import subprocess
import sys

import pytest
from landscape.cli import app, parse_etas
from typer.testing import CliRunner

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
    code = "import sys; from landscape.cli import app; print('jax' in sys.modules)"
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert out.stdout.strip() == "False"


def test_parse_etas():
    assert parse_etas("0.05:0.4:8") == pytest.approx([0.05 + 0.05 * i for i in range(8)])
    assert parse_etas("0.1,0.2") == (0.1, 0.2)


@pytest.mark.parametrize(
    ("args", "message"),
    [
        (["probe", "--etas", "0.1:x:3"], "--etas"),
        (["probe", "--etas", "-1,2"], "positive"),
        (["probe", "--preset", "huge"], "unknown preset"),
        (["probe", "--variants", "standard,groupnorm", "--data", "synthetic"], "unknown variant"),
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
