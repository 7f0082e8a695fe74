"""The deep linear network end to end: a short run's checkpoints, records and figures, and the
command (help, one-line errors)."""

import json
import re

import numpy as np
import pytest
from typer.testing import CliRunner

from landscape import results
from landscape.app.cli import app
from landscape.data import dln_dataset


def test_short_dln_run_writes_checkpoints_records_and_figures(tiny_dln_config, tmp_path):
    from landscape.plots import plot_run, run_figures
    from landscape.report import write_report
    from landscape.runs import reprobe, run

    run_dir = tmp_path / "dln"
    reports = run(tiny_dln_config, run_dir, progress=False)
    assert [r.steps_run for r in reports] == [4, 4] and [r.probes_run for r in reports] == [4, 4]
    provenance = json.loads((run_dir / "provenance.json").read_text())
    assert provenance["dataset_sha256"] == dln_dataset(0).checksum
    assert json.loads((run_dir / "config.json").read_text())["model"]["arch"] == "dln5"
    records = results.load(run_dir)
    metrics = results.load_metrics(run_dir)
    lr = tiny_dln_config.optimizer.learning_rate
    for variant in ("standard", "batchnorm"):
        steps = sorted(int(p.name) for p in (run_dir / variant / "checkpoints").iterdir())
        assert steps == [0, 1, 2, 3, 4]
        rec = records[variant]
        assert rec["step"].tolist() == [0, 1, 2, 3]
        np.testing.assert_allclose(rec["etas"][0], np.linspace(0.01, 30, 8) * lr, rtol=1e-6)
        for key in ("loss", "grad_dist", "step_norm", "loss0", "beta", "loss_band"):
            assert np.all(np.isfinite(rec[key])), key
        assert np.all(rec["diverged"] == 0)
        train, test = metrics[variant]["train"], metrics[variant]["test"]
        assert train["step"].tolist() == [0, 1, 2, 3] and np.all(np.isnan(train["accuracy"]))
        assert np.all(np.diff(train["loss"]) < 0)  # full-batch gradient descent descends
        assert test["step"].tolist() == [2, 4] and np.all(np.isfinite(test["test_loss"]))
    # Re-probing a saved step on its (full) batch gives the inline probe's numbers.
    again = results.read_rows(reprobe(run_dir, steps=[2], progress=False)["batchnorm"])
    np.testing.assert_allclose(again[0]["loss"], records["batchnorm"]["loss"][2], rtol=1e-6)

    figures = run_figures(run_dir)
    assert "Deep linear network: 5 linear layers" in figures["loss_landscape"]._suptitle.get_text()
    assert (
        figures["loss_landscape"].axes[0].get_ylabel() == r"$\Vert F(X) - AX\Vert_F^2$ over η range"
    )
    assert figures["loss_landscape"].axes[0].get_yscale() == "log"
    assert [ax.get_title() for ax in figures["training_curves"].axes[:2]] == [
        "(a) training loss (full batch)",
        "(b) test loss (held-out inputs)",
    ]
    assert len(plot_run(run_dir, formats=("png",))) == 3
    assert "dln" in write_report(run_dir).read_text()


runner = CliRunner()


def test_cli_help_shows_the_dln():
    result = runner.invoke(app, ["probe", "--help"], terminal_width=200)
    assert result.exit_code == 0
    # Rich wraps help text inside its box at the terminal's width: join the wrapped lines.
    text = re.sub(r"[\s│]+", " ", result.output)
    for wanted in ("--arch", "dln-quick", "dln-paper", "deep linear network"):
        assert wanted in text


@pytest.mark.parametrize(
    ("args", "message"),
    [
        (["--arch", "dlnx", "--data", "dln"], "unknown --arch"),
        (["--arch", "dln", "--data", "synthetic"], "trains on data dln"),
        (["--preset", "dln-quick", "--arch", "vgg11"], "trains on data dln"),
        (["--preset", "dln-quick", "--data", "dln:x"], "dln:SEED"),
    ],
)
def test_cli_bad_model_is_one_line_and_exit_2(args, message, tmp_path):
    result = runner.invoke(app, ["probe", *args, "--out", str(tmp_path / "r"), "--no-progress"])
    assert result.exit_code == 2, result.output
    assert message in result.output and "Traceback" not in result.output
    assert len(result.output.strip().splitlines()) <= 2  # "run directory: ..." then the error
    assert not (tmp_path / "r").exists()
