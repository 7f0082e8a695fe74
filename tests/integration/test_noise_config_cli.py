"""Algorithm 1's noise constants through the command: help, one-line errors, config.json and
resume."""

import json

import pytest
from typer.testing import CliRunner

from landscape.app.cli import app
from landscape.app.cli.run import resumed_config

runner = CliRunner()


def invoke(*args):
    return runner.invoke(app, [str(a) for a in args])


@pytest.mark.parametrize("command", ["train", "probe", "bench"])
def test_help_gives_the_options(command):
    result = invoke(command, "--help")
    assert result.exit_code == 0
    for option in ("--noise-mu", "--noise-sigma", "--noise-r-mu", "--noise-r-sigma"):
        assert option in result.output


@pytest.mark.parametrize(
    ("option", "value", "message"),
    [
        ("--noise-mu", "abc", "--noise-mu 'abc' is not a number"),
        ("--noise-mu", "-0.5", "--noise-mu must be a finite number >= 0"),
        ("--noise-sigma", "0.5", "--noise-sigma must be a finite number >= 1"),
        ("--noise-r-mu", "inf", "--noise-r-mu must be a finite number >= 0"),
        ("--noise-r-sigma", "-1", "--noise-r-sigma must be a finite number >= 0"),
    ],
)
def test_bad_value_is_one_line_and_exit_2(option, value, message, tmp_path):
    result = invoke("train", "--preset", "smoke", option, value, "--out", tmp_path / "r")
    assert result.exit_code == 2, result.output
    assert message in result.output
    assert "Traceback" not in result.output
    assert len(result.output.strip().splitlines()) == 1
    assert not (tmp_path / "r").exists()


def test_train_writes_the_constants_to_config_json_and_resume_keeps_them(tmp_path):
    run_dir = tmp_path / "run"
    # The deep linear network on its synthetic regression data: the quickest run there is.
    result = invoke(
        *("train", "--preset", "dln-quick", "--arch", "dln3", "--steps", "1"),
        *("--variants", "noisy_batchnorm", "--noise-mu", "0.25", "--noise-r-sigma", "0.2"),
        *("--checkpoint-every", "0", "--eval-every", "0", "--no-progress", "--out", run_dir),
    )
    assert result.exit_code == 0, result.output
    model = json.loads((run_dir / "config.json").read_text())["model"]
    assert model["noise_mu"] == 0.25 and model["noise_r_sigma"] == 0.2
    assert model["noise_sigma"] == 1.25 and model["noise_r_mu"] == 0.1  # the paper's
    # --resume continues with the saved constants.
    assert resumed_config(run_dir, {"steps": 2}).model.noise_mu == 0.25
