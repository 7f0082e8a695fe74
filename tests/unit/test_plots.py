"""Figures from fake run directories: structure, log scales, colours, divergence, files written."""

import io
import json
import math
from pathlib import Path

import numpy as np
import pytest
from matplotlib.colors import to_rgb
from matplotlib.figure import Figure

from landscape import plots
from landscape.results import load, load_metrics

STEPS, EVERY = 400, 10  # 40 probed steps
ETAS = np.linspace(0.05, 0.4, 8)
DIVERGED_AT = (200, 250, 330)  # steps where the standard net's largest eta overflows


def write_fake_run(run, variants=("standard", "batchnorm"), *, probe=True, test=True):
    """A run directory as landscape.results writes it: config, probe.jsonl, metrics.jsonl."""
    run = Path(run)
    run.mkdir(parents=True, exist_ok=True)
    config = {
        "preset": "test",
        "data": "synthetic",
        "seed": 0,
        "steps": STEPS,
        "batch_size": 32,
        "variants": list(variants),
        "model": {"arch": "vgg11", "width": 0.125, "norm": "none"},
        "optimizer": {"name": "sgd", "learning_rate": 0.1},
        "probe": {"every": EVERY},
    }
    (run / "config.json").write_text(json.dumps(config))
    (run / "provenance.json").write_text(json.dumps({"jax": "0.0", "device": "cpu"}))
    rng = np.random.default_rng(0)
    for variant in variants:
        (run / variant).mkdir(exist_ok=True)
        rows = []
        for step in range(0, STEPS, EVERY):
            plateau = variant == "standard" and step < 0.1 * STEPS
            width = 1e-3 if plateau else (0.5 if variant == "standard" else 0.2)
            loss = 2.3 + width * (ETAS / ETAS[-1]) ** 2 * math.exp(-step / STEPS)
            dist = (0.1 if plateau else 2.0) * ETAS / ETAS[-1] * rng.uniform(0.8, 1.2)
            norm = ETAS * 0.5
            if variant == "standard" and step in DIVERGED_AT:
                loss[-1], dist[-1] = math.inf, math.nan
            lw, dw = (np.where(np.isnan(a), np.inf, a) for a in (loss, dist))
            rows.append(
                {
                    "step": step,
                    "etas": ETAS.tolist(),
                    "loss": loss.tolist(),
                    "grad_dist": dist.tolist(),
                    "step_norm": norm.tolist(),
                    "loss0": 2.3,
                    "grad_norm": 0.5,
                    "loss_min": lw.min(),
                    "loss_max": lw.max(),
                    "loss_band": lw.max() - lw.min(),
                    "grad_dist_min": dw.min(),
                    "grad_dist_max": dw.max(),
                    "beta": (dw / norm).max(),
                    "diverged": int((~np.isfinite(loss)).sum()),
                }
            )
        if probe:
            (run / variant / "probe.jsonl").write_text("".join(json.dumps(r) + "\n" for r in rows))
        metrics = [
            {"step": s, "loss": 2.3 * math.exp(-s / STEPS), "accuracy": s / STEPS}
            for s in range(STEPS)
        ]
        if test:
            metrics += [
                {"step": s, "test_loss": 1.0, "test_accuracy": 0.5 + s / 1000} for s in (199, 399)
            ]
        (run / variant / "metrics.jsonl").write_text("".join(json.dumps(r) + "\n" for r in metrics))
    return run


@pytest.fixture(scope="module")
def run_dir(tmp_path_factory):
    return write_fake_run(tmp_path_factory.mktemp("run"))


@pytest.fixture(scope="module")
def records(run_dir):
    return load(run_dir)


def legend_texts(fig):
    return [t.get_text() for legend in fig.legends for t in legend.get_texts()]


def rgb_colors(ax):
    """The RGB colours of an axes' lines and filled areas."""
    colors = [to_rgb(line.get_color()) for line in ax.lines]
    for coll in ax.collections:
        colors += [tuple(c[:3]) for c in coll.get_facecolor()]
    return {tuple(round(x, 4) for x in c) for c in colors}


def rounded_rgb(color):
    return tuple(round(x, 4) for x in to_rgb(color))


def render(fig):
    """Draws the figure to PNG bytes: errors in the artists show up only here."""
    buffer = io.BytesIO()
    fig.savefig(buffer, format="png", dpi=40)
    return buffer.getvalue()


# --- helpers ------------------------------------------------------------------------------------


def test_moving_average_ignores_non_finite_values():
    values = np.array([1.0, np.inf, 3.0, np.nan, 5.0])
    # Centred window of 3, cut at the ends; each output averages the finite values it sees.
    np.testing.assert_allclose(plots.moving_average(values, 3), [1.0, 2.0, 3.0, 4.0, 5.0])
    # Even windows lean right: 2 looks at (i, i+1), 4 at (i-1 .. i+2).
    np.testing.assert_allclose(plots.moving_average(values, 2), [1.0, 3.0, 3.0, 5.0, 5.0])
    np.testing.assert_allclose(plots.moving_average([2.0, 4.0, 6.0, 8.0], 4), [4.0, 5.0, 6.0, 7.0])
    out = plots.moving_average([np.inf, np.nan, 1.0], 1)  # window <= 1: unchanged
    assert np.isposinf(out[0]) and np.isnan(out[1]) and out[2] == 1.0
    assert np.isnan(plots.moving_average([np.inf, np.nan], 2)).all()  # nothing finite: NaN


def test_variant_colors_are_fixed_and_distinct():
    assert plots.variant_color("standard") != plots.variant_color("batchnorm")
    assert plots.variant_label("standard") == "Standard"
    assert plots.variant_label("batchnorm") == "Standard + BatchNorm"
    assert plots.variant_label("mystery") == "mystery"
    # An unknown variant's colour is a function of its name only.
    assert plots.variant_color("mystery") == plots.variant_color("mystery")
    assert plots.variant_color("mystery") not in plots.PALETTE.values()
    # Every normaliser has its own colour; a GroupNorm's group count changes only the label.
    norms = ("standard", "batchnorm", "layernorm", "groupnorm", "rmsnorm", "weightnorm")
    assert len({plots.variant_color(v) for v in norms}) == len(norms)
    assert plots.variant_color("groupnorm8") == plots.variant_color("groupnorm")
    assert plots.variant_label("groupnorm8") == "Standard + GroupNorm (8 groups at most)"
    assert plots.variant_label("groupnormx") == "groupnormx"


def test_nearest_steps():
    assert plots.nearest_steps(np.array([0, 10, 20, 30]), [2, 9, 11, 29]) == [0, 10, 30]


# --- Figure 4 -------------------------------------------------------------------------------


def test_loss_landscape_figure_structure(records):
    fig = plots.loss_landscape_figure(records, early_steps=40)
    assert isinstance(fig, Figure)
    axes = fig.get_axes()
    assert len(axes) == 3
    assert [ax.get_title()[:3] for ax in axes] == ["(a)", "(b)", "(c)"]
    assert all(ax.get_yscale() == "log" for ax in axes)
    assert "nats" in axes[0].get_ylabel() and "ℓ2" in axes[1].get_ylabel()
    assert "β" in axes[2].get_ylabel()
    texts = legend_texts(fig)
    assert "Standard" in texts and "Standard + BatchNorm" in texts
    assert any("diverged" in t for t in texts)
    assert any("early phase" in t for t in texts)
    render(fig)


def test_loss_landscape_colors_are_consistent_across_panels(records):
    fig = plots.loss_landscape_figure(records)
    for variant in records:
        expected = rounded_rgb(plots.variant_color(variant))
        for ax in fig.get_axes():
            assert expected in rgb_colors(ax), (variant, ax.get_title())
    standard, batchnorm = (rounded_rgb(plots.variant_color(v)) for v in ("standard", "batchnorm"))
    assert standard != batchnorm


def test_loss_landscape_marks_diverged_steps_and_early_phase(records):
    fig = plots.loss_landscape_figure(records, early_steps=40)
    standard = rounded_rgb(plots.variant_color("standard"))
    for ax in fig.get_axes():
        markers = [c for c in ax.collections if c.get_offsets().shape[0] == len(DIVERGED_AT)]
        assert len(markers) == 1, ax.get_title()
        np.testing.assert_array_equal(np.asarray(markers[0].get_offsets())[:, 0], DIVERGED_AT)
        assert tuple(round(x, 4) for x in markers[0].get_facecolor()[0][:3]) == standard
        vertical = [line for line in ax.lines if list(line.get_xdata()) == [40, 40]]
        assert vertical and vertical[0].get_linestyle() == "--"
        assert any("early phase" in t.get_text() for t in ax.texts)


def test_loss_landscape_never_plots_non_finite_values(records):
    fig = plots.loss_landscape_figure(records)
    for ax in fig.get_axes():
        for line in ax.lines:
            y = np.asarray(line.get_ydata(), float)
            assert not np.isinf(y).any()
            assert np.isfinite(y).sum() > 0
    # The band stops at the largest finite loss of a diverged step instead of vanishing.
    upper = fig.get_axes()[0].lines[1].get_ydata()  # standard, loss_max edge
    i = list(records["standard"]["step"]).index(DIVERGED_AT[0])
    assert upper[i] == pytest.approx(np.nanmax(records["standard"]["loss"][i][:-1]))


def test_loss_landscape_survives_all_non_finite_variant(records):
    broken = {k: v.copy() for k, v in records["standard"].items()}
    for key in ("loss_min", "loss_max", "grad_dist_min", "grad_dist_max", "beta"):
        broken[key][:] = np.inf
    broken["loss"][:] = np.nan
    broken["diverged"][:] = 8
    render(
        plots.loss_landscape_figure(
            {"standard": broken, "batchnorm": records["batchnorm"]}, smooth=3
        )
    )


def test_loss_landscape_smoothing_uses_finite_values(records):
    fig = plots.loss_landscape_figure(records, smooth=5)
    beta_line = fig.get_axes()[2].lines[0]  # standard
    expected = plots.moving_average(records["standard"]["beta"], 5)
    np.testing.assert_allclose(beta_line.get_ydata(), expected)
    assert np.isfinite(expected).all()  # the inf at diverged steps is skipped, not averaged in


# --- Figure 1 and Figure 11 ------------------------------------------------------------------


def test_training_curves_figure(run_dir):
    fig = plots.training_curves_figure(load_metrics(run_dir))
    axes = fig.get_axes()
    assert len(axes) == 3
    assert axes[0].get_yscale() == "log"
    texts = legend_texts(fig)
    assert "Standard" in texts and "Standard + BatchNorm" in texts
    test_lines = axes[2].lines
    assert len(test_lines) == 2 and list(test_lines[0].get_xdata()) == [199, 399]
    np.testing.assert_allclose(test_lines[0].get_ydata(), [69.9, 89.9])  # percent
    for variant in ("standard", "batchnorm"):
        expected = rounded_rgb(plots.variant_color(variant))
        assert all(expected in rgb_colors(ax) for ax in axes)
    render(fig)


def test_training_curves_without_evaluation(tmp_path):
    fig = plots.training_curves_figure(load_metrics(write_fake_run(tmp_path, test=False)))
    assert any("no evaluation" in t.get_text() for t in fig.get_axes()[2].texts)
    render(fig)


def test_training_curves_of_a_regression_show_losses_not_accuracy(tmp_path):
    # Float targets: the accuracy is NaN, and the loss is the mean squared error (or --loss).
    run = write_fake_run(tmp_path / "run", probe=False)
    for variant in ("standard", "batchnorm"):
        path = run / variant / "metrics.jsonl"
        rows = [json.loads(line) for line in path.read_text().splitlines()]
        for row in rows:
            for key in ("accuracy", "test_accuracy"):
                if key in row:
                    row[key] = math.nan
        path.write_text("".join(json.dumps(r) + "\n" for r in rows))
    fig = plots.run_figures(run)["training_curves"]
    axes = fig.get_axes()
    assert [ax.get_title() for ax in axes] == ["(a) training loss", "(b) test loss"]
    assert axes[0].get_ylabel() == "mean squared error on the batch"
    assert list(axes[1].lines[0].get_xdata()) == [199, 399]
    config = json.loads((run / "config.json").read_text())
    config["model"]["loss"] = "mynets:huber"
    (run / "config.json").write_text(json.dumps(config))
    assert plots.run_figures(run)["training_curves"].get_axes()[0].get_ylabel() == (
        "mynets:huber on the batch"
    )
    render(fig)


def test_training_curves_name_a_loss_other_than_cross_entropy(tmp_path):
    run_dir = write_fake_run(tmp_path / "run", probe=False)
    assert plots.run_figures(run_dir)["training_curves"].get_axes()[0].get_ylabel() == (
        "cross-entropy (nats)"
    )
    config = json.loads((run_dir / "config.json").read_text())
    config["model"]["loss"] = "sum_squared_error"
    (run_dir / "config.json").write_text(json.dumps(config))
    assert plots.run_figures(run_dir)["training_curves"].get_axes()[0].get_ylabel() == (
        "sum squared error"
    )


def test_grad_dist_vs_eta_figure(records):
    fig = plots.grad_dist_vs_eta_figure(records)
    axes = fig.get_axes()
    assert len(axes) == 2
    assert all(ax.get_xscale() == "log" and ax.get_yscale() == "log" for ax in axes)
    assert [ax.get_title() for ax in axes] == ["Standard", "Standard + BatchNorm"]
    labels = [t.get_text() for t in axes[0].get_legend().get_texts()]
    assert labels == ["0", "130", "260", "390"]  # 4 steps spread over the run, nearest probed
    texts = legend_texts(fig)
    assert "Standard" in texts and "Standard + BatchNorm" in texts
    render(fig)


def test_grad_dist_vs_eta_marks_diverged_eta(records):
    fig = plots.grad_dist_vs_eta_figure(records, steps=[DIVERGED_AT[0]])
    standard, batchnorm = fig.get_axes()
    (marker,) = standard.collections
    np.testing.assert_allclose(marker.get_offsets()[:, 0], [ETAS[-1]])
    assert not batchnorm.collections
    assert any("diverged" in t for t in legend_texts(fig))


# --- files ---------------------------------------------------------------------------------


def test_save_figure_writes_each_format(tmp_path):
    fig = Figure(figsize=(2, 2))
    fig.subplots().plot([1, 2], [3, 4])
    paths = plots.save_figure(fig, tmp_path / "sub" / "fig11", ("png", "pdf", "svg"))
    assert [p.name for p in paths] == ["fig11.png", "fig11.pdf", "fig11.svg"]
    assert paths[0].read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    assert paths[1].read_bytes()[:5] == b"%PDF-"
    assert b"<svg" in paths[2].read_bytes()


def test_plot_run_writes_all_figures(run_dir):
    paths = plots.plot_run(run_dir)
    names = sorted(p.name for p in paths)
    assert names == sorted(
        f"{n}.{f}"
        for n in ("loss_landscape", "training_curves", "grad_dist_vs_eta")
        for f in ("png", "pdf")
    )
    assert all(p.parent == run_dir / "figures" and p.stat().st_size > 1000 for p in paths)


def test_plot_run_with_metrics_only(tmp_path):
    paths = plots.plot_run(write_fake_run(tmp_path, probe=False))
    assert sorted(p.name for p in paths) == ["training_curves.pdf", "training_curves.png"]
    assert all(p.stat().st_size > 1000 for p in paths)


def test_plot_run_with_one_variant_into_out_dir(tmp_path):
    run = write_fake_run(tmp_path / "run", variants=("batchnorm",))
    paths = plots.plot_run(run, tmp_path / "out", formats=("png",))
    assert len(paths) == 3
    assert all(p.parent == tmp_path / "out" and p.stat().st_size > 1000 for p in paths)


def test_early_phase_end_follows_config(run_dir):
    assert plots.early_phase_end(run_dir) == pytest.approx(0.1 * STEPS)


def test_grad_dist_vs_eta_wraps_many_variants(records):
    many = {name: records["batchnorm"] for name in ("standard", "batchnorm", "l1", "l2", "linf")}
    fig = plots.grad_dist_vs_eta_figure(many)
    axes = fig.get_axes()
    assert len(axes) == 5  # 3 + 2 panels; the sixth slot of the grid is removed
    assert len({ax.get_position().y0 for ax in axes}) == 2
    titles = [ax.get_title() for ax in axes]
    assert titles == [plots.variant_label(v) for v in many]
