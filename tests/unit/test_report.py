"""The HTML report: self-contained, complete, and safe against hostile strings in the run files."""

import base64
import json
import math
import re
import warnings
from pathlib import Path

import numpy as np
import pytest

from landscape import plots, report
from landscape.results import load
from landscape.summary import QUANTITIES, summarize_run

STEPS, EVERY = 200, 10
ETAS = [0.05, 0.1, 0.2, 0.4]
MALICIOUS = "<script>alert(1)</script>"


def write_run(run, variants=("standard", "batchnorm"), *, probe=True, diverge_late=False):
    """A small run directory; with ``diverge_late`` the standard net diverges at every late step."""
    run = Path(run)
    run.mkdir(parents=True, exist_ok=True)
    config = {
        "preset": "test",
        "data": MALICIOUS,
        "seed": 0,
        "steps": STEPS,
        "variants": list(variants),
        "model": {"arch": "vgg11", "norm": "none"},
        "optimizer": {"name": "sgd", "learning_rate": 0.1},
    }
    (run / "config.json").write_text(json.dumps(config))
    (run / "provenance.json").write_text(json.dumps({"jax": "0.0", "note": MALICIOUS, "n": 3}))
    for k, variant in enumerate(variants):
        (run / variant).mkdir(exist_ok=True)
        rows = []
        for step in range(0, STEPS, EVERY):
            scale = 1.0 + k + step / STEPS  # distinct, known numbers per variant
            loss = [2.0 + scale * e for e in ETAS]
            dist = [scale * e for e in ETAS]
            late = step >= 0.1 * STEPS
            if diverge_late and variant == "standard" and late:
                loss[-1], dist[-1] = math.inf, math.nan
            finite = [x for x in loss if math.isfinite(x)]
            diverged = len(loss) - len(finite)
            rows.append(
                {
                    "step": step,
                    "etas": ETAS,
                    "loss": loss,
                    "grad_dist": dist,
                    "step_norm": ETAS,
                    "loss0": 2.0,
                    "grad_norm": 1.0,
                    "loss_min": min(loss),
                    "loss_max": math.inf if diverged else max(loss),
                    "loss_band": math.inf if diverged else max(loss) - min(loss),
                    "grad_dist_min": min(dist),
                    "grad_dist_max": math.inf if diverged else max(dist),
                    "beta": math.inf if diverged else scale,
                    "diverged": diverged,
                }
            )
        if probe:
            (run / variant / "probe.jsonl").write_text("".join(json.dumps(r) + "\n" for r in rows))
        metrics = [
            {"step": s, "loss": 2.0 - s / STEPS, "accuracy": s / STEPS} for s in range(STEPS)
        ]
        metrics.append({"step": STEPS - 1, "test_loss": 0.9, "test_accuracy": 0.8 + 0.03 * k})
        (run / variant / "metrics.jsonl").write_text("".join(json.dumps(r) + "\n" for r in metrics))
    return run


@pytest.fixture(scope="module")
def run_dir(tmp_path_factory):
    return write_run(tmp_path_factory.mktemp("run"), diverge_late=True)


@pytest.fixture(scope="module")
def page(run_dir):
    path = report.write_report(run_dir)
    assert path == run_dir / "report.html"
    return path.read_text(encoding="utf-8")


def test_report_is_self_contained(page):
    assert page.startswith("<!DOCTYPE html>")
    refs = re.findall(r"""(?:src|href)\s*=\s*["']?([^"'\s>]+)""", page, flags=re.I)
    assert refs, "the figures should be <img src=...>"
    assert all(ref.startswith("data:") for ref in refs), refs
    assert "http://" not in page and "https://" not in page
    assert "<script" not in page.lower()
    assert "<link" not in page.lower() and "@import" not in page


def test_report_embeds_all_figures_as_png(page):
    images = re.findall(r'src="data:image/png;base64,([A-Za-z0-9+/=]+)"', page)
    assert len(images) == 3  # loss landscape, training curves, grad. dist. vs eta
    for data in images:
        assert base64.b64decode(data)[:8] == b"\x89PNG\r\n\x1a\n"


def test_report_has_variants_and_summary_numbers(run_dir, page):
    for text in (
        "standard",
        "batchnorm",
        "Standard + BatchNorm",
        "early",
        "late",
        "overall",
        "ratio standard/batchnorm",
        "arXiv:1805.11604",
    ):
        assert text in page, text
    rows = summarize_run(load(run_dir), STEPS)
    for row in rows:
        for key, _ in QUANTITIES:
            assert report.format_value(row[key]) in page, (row["variant"], row["phase"], key)
    batchnorm_late = next(r for r in rows if r["variant"] == "batchnorm" and r["phase"] == "late")
    assert batchnorm_late["beta"] == pytest.approx(np.median(2.0 + np.arange(2, 20) * 10 / STEPS))
    # The standard net diverged at every late step: its late medians are +inf, shown as such.
    assert "∞ (diverged)" in page
    assert "83.0%" in page and "80.0%" in page  # test accuracies of the two variants


def test_report_escapes_strings_from_files(page):
    assert MALICIOUS not in page
    assert "&lt;script&gt;alert(1)&lt;/script&gt;" in page  # config and provenance, escaped


def test_report_escapes_variant_names(tmp_path):
    variant = "<u>v&w"  # a directory name may hold any character but "/"
    path = report.write_report(write_run(tmp_path, variants=("standard", variant)))
    page = path.read_text(encoding="utf-8")
    assert "<u>" not in page and "&lt;u&gt;v&amp;w" in page
    assert "ratio standard/&lt;u&gt;v&amp;w" in page  # two variants: first over second


def test_report_with_metrics_only_and_custom_path(tmp_path):
    out = tmp_path / "elsewhere" / "r.html"
    path = report.write_report(write_run(tmp_path / "run", probe=False), out)
    assert path == out
    page = out.read_text(encoding="utf-8")
    assert "No probe records" in page
    assert page.count("data:image/png;base64,") == 1  # training curves only


def test_report_with_one_variant(tmp_path):
    page = report.write_report(write_run(tmp_path, variants=("batchnorm",))).read_text()
    assert "Standard + BatchNorm" in page and 'class="ratio"' not in page


def test_format_value():
    assert report.format_value(math.inf) == "∞ (diverged)"
    assert report.format_value(math.nan) == "n/a"
    assert report.format_value(0.000123456) == "0.0001235"
    assert report.format_value(3) == "3"


def test_a_diverged_training_is_said_in_words_and_marked_without_numpy_warnings(tmp_path):
    run = write_run(tmp_path / "run")
    rows = [{"step": s, "loss": 2.0 if s < 50 else math.nan, "accuracy": 0.1} for s in range(60)]
    (run / "standard" / "metrics.jsonl").write_text("".join(json.dumps(r) + "\n" for r in rows))
    record = {"step": 50, "loss": "nan", "last_finite_step": 49, "last_finite_loss": 2.0,
              "learning_rate": 5.0, "stopped": True}  # fmt: skip
    (run / "standard" / "diverged.json").write_text(json.dumps(record))
    with warnings.catch_warnings():
        warnings.simplefilter("error")  # a numpy RuntimeWarning would fail here
        page = report.render_report(run)
        figures = plots.run_figures(run)
    assert "Standard diverged at step 50: training loss nan (last finite loss 2 at step 49, " \
        "learning rate 5.0); training stopped there" in page  # fmt: skip
    for name in ("training_curves", "loss_landscape"):
        lines = [
            line for ax in figures[name].axes for line in ax.get_lines()
            if line.get_linestyle() == "--" and list(line.get_xdata()) == [50, 50]
        ]  # fmt: skip
        assert len(lines) == len(figures[name].axes), name
