"""Experiments end to end: the combined report of a real run, and `landscape experiment` as a
subprocess (a dry run, a real step, a bad --set)."""

import subprocess
import sys

from helpers import REPO

from landscape.experiments import (
    write_combined_report,
)
from landscape.runs import run


def test_combined_report_gathers_every_run(tmp_path, tiny_config, tiny_dataset):
    out = tmp_path / "o"
    run(tiny_config, out / "vgg", progress=False, dataset=tiny_dataset)
    from landscape.plots import plot_run

    plot_run(out / "vgg", formats=("png",))
    path = write_combined_report(out, "Combined <test>")
    page = path.read_text()
    assert "Combined &lt;test&gt;" in page and "<h2>vgg</h2>" in page
    assert page.count("data:image/png;base64,") == len(
        list((out / "vgg" / "figures").glob("*.png"))
    )
    assert "batchnorm" in page  # the summary table of the run


def test_cli_dry_run_and_real_step(tmp_path, tiny_config, tiny_dataset):
    run(tiny_config, tmp_path / "o" / "vgg", progress=False, dataset=tiny_dataset)
    exp = tmp_path / "exp.toml"
    exp.write_text('title = "t"\n[[steps]]\nname = "sum"\nrun = ["summary", "{out}/vgg"]\n')
    cmd = [sys.executable, "-m", "landscape", "experiment", str(exp), "--out", str(tmp_path / "o")]
    dry = subprocess.run([*cmd, "--dry-run"], capture_output=True, text=True, cwd=REPO)
    assert dry.returncode == 0 and f"sum: landscape summary {tmp_path}/o/vgg" in dry.stdout
    real = subprocess.run(cmd, capture_output=True, text=True, cwd=REPO)
    assert real.returncode == 0, real.stderr
    assert (tmp_path / "o" / "report.html").exists()
    bad = subprocess.run([*cmd, "--set", "novalue"], capture_output=True, text=True, cwd=REPO)
    assert bad.returncode == 2 and "use NAME=VALUE" in bad.stderr
    assert "Traceback" not in bad.stderr and len(bad.stderr.strip().splitlines()) == 1
