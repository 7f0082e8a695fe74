"""`landscape trajectory` end to end on a smoke run: records, the figure, a rerun that has
nothing left to do, the report, and one-line errors."""

from __future__ import annotations

import json

import pytest
from typer.testing import CliRunner

from landscape.app.cli import app


def invoke(*args):
    return CliRunner().invoke(app, [str(a) for a in args])


@pytest.fixture(scope="module")
def smoke_run(tmp_path_factory):
    """``landscape probe --preset smoke --steps 20``: both variants, checkpoints 0, 10 and
    16-20 kept (the smoke preset keeps the newest 5 and every 10th)."""
    run_dir = tmp_path_factory.mktemp("trajectory") / "smoke"
    result = invoke(
        *("probe", "--preset", "smoke", "--steps", "20", "--out", run_dir),
        *("--no-figures", "--no-progress"),
    )
    assert result.exit_code == 0, result.output
    return run_dir


def test_cli_writes_records_and_the_figure_and_a_rerun_has_nothing_to_do(smoke_run):
    args = ("trajectory", smoke_run, "--grid", "auto:5", "--no-progress")
    result = invoke(*args)
    assert result.exit_code == 0, result.output
    figure = smoke_run / "figures" / "trajectory_trajectory.png"
    assert figure.stat().st_size > 0 and str(figure) in result.output
    records = {}
    for variant in ("standard", "batchnorm"):
        assert f"{variant}: 7 checkpoints (steps 0-20)" in result.output
        path = smoke_run / variant / "surfaces" / "trajectory.jsonl"
        rows = [json.loads(line) for line in path.read_text().splitlines()]
        info = rows[0]["info"]
        assert info["path"]["steps"] == [0, 10, 16, 17, 18, 19, 20]
        assert info["path"]["a"][-1] == 0.0 and info["path"]["b"][-1] == 0.0
        first, second = info["explained_variance_ratio"]
        assert 1.0 >= first >= second > 0.0 and first + second <= 1.0 + 1e-6
        assert sum(len(row["points"]) for row in rows[1:]) == 25
        records[variant] = path.read_text()
    # The same command again: the directions are kept and every point is done.
    result = invoke(*args)
    assert result.exit_code == 0, result.output
    assert all(
        (smoke_run / v / "surfaces" / "trajectory.jsonl").read_text() == text
        for v, text in records.items()
    )
    assert invoke("report", smoke_run).exit_code == 0
    html = (smoke_run / "report.html").read_text()
    assert "trajectory_trajectory" in html and "Share of the path&#x27;s variance" in html


@pytest.mark.parametrize(
    ("extra", "message"),
    [
        (["--every", "0"], "--every must be positive"),
        (["--grid", "auto:many"], "use auto, auto:N or LO:HI:N"),
        (["--range", "1:2"], "use LO:HI:N"),
        (["--ignore", "weights"], "unknown --ignore"),
        (["--variants", "groupnorm"], "unknown variant groupnorm"),
        (["--every", "30"], "the PCA needs at least 3"),
    ],
)
def test_cli_bad_input_is_one_line_and_exit_2(smoke_run, extra, message):
    result = invoke("trajectory", smoke_run, "--no-progress", "--name", "bad", *extra)
    assert result.exit_code == 2, result.output
    assert message in result.output
    assert "Traceback" not in result.output
    assert len(result.output.strip().splitlines()) == 1
