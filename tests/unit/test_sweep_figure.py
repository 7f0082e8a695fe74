"""The sweep's figure and its final training loss: what is drawn where, from rows whose values
are known."""

from __future__ import annotations

import math

import numpy as np
import pytest

from landscape.plots.sweep import sweep_figure, write_sweep_figure
from landscape.sweep import FINAL_LOSS_STEPS, final_loss


def row(lr, variant, *, loss=1.0, acc=0.5, beta=10.0, band=0.5, diverged=None, status="done"):
    return {
        "run": f"lr={lr}", "lr": lr, "variant": variant, "status": status, "steps": 100,
        "probed": 10, "loss_band": band, "grad_dist_max": 1.0, "beta": beta,
        "test_accuracy": acc, "test_loss": loss, "train_loss": loss, "diverged_at": diverged,
    }  # fmt: skip


def lines_with_data(ax):
    return [line for line in ax.get_lines() if len(line.get_xdata())]


def test_final_loss_is_the_mean_of_the_last_finite_losses():
    losses = np.r_[np.full(100, 9.0), np.arange(FINAL_LOSS_STEPS, dtype=float)]
    assert final_loss(losses) == pytest.approx((FINAL_LOSS_STEPS - 1) / 2)
    assert final_loss([1.0, math.nan, 3.0]) == pytest.approx(2.0)
    assert final_loss([math.nan, math.inf]) is None
    assert final_loss([]) is None


def test_learning_rates_on_a_log_axis_with_diverged_runs_crossed_at_the_top():
    rows = [
        row(0.01, "standard", loss=2.0),
        row(0.1, "standard", loss=1.5),
        row(1.0, "standard", loss=math.nan, diverged=12),
        row(0.01, "batchnorm", loss=1.2, acc=0.6),
        row(0.1, "batchnorm", loss=1.0, acc=0.7),
        row(1.0, "batchnorm", loss=1.4, acc=0.4),
        row(2.0, "batchnorm", status="partial"),  # still running: not drawn
    ]
    fig = sweep_figure(rows, ["lr"])
    loss_ax, acc_ax, beta_ax, band_ax = fig.axes[:4]
    assert [ax.get_title() for ax in (loss_ax, acc_ax, beta_ax, band_ax)] == [
        "final training loss (nats)",
        "test accuracy",
        "effective β-smoothness (median)",
        "loss band (median)",
    ]
    assert loss_ax.get_xscale() == "log" and loss_ax.get_yscale() == "log"
    assert acc_ax.get_yscale() == "linear"
    drawn = lines_with_data(loss_ax)
    curves = [line for line in drawn if line.get_marker() == "o"]
    assert {c.get_linestyle() for c in curves} == {"-"}  # a numeric axis: joined
    crosses = [line for line in drawn if line.get_marker() == "x"]
    # The standard curve stops before its diverged learning rate; nothing reaches lr 2.
    assert [list(c.get_xdata()) for c in curves] == [[0.01, 0.1], [0.01, 0.1, 1.0]]
    assert [list(c.get_ydata()) for c in curves] == [[2.0, 1.5], [1.2, 1.0, 1.4]]
    assert [list(c.get_xdata()) for c in crosses] == [[1.0]]
    assert list(crosses[0].get_ydata()) == [0.96]  # in axis coordinates: the panel's top
    assert "diverged" in [t.get_text() for t in fig.legends[0].get_texts()]


def test_a_categorical_axis_and_a_second_axis_as_line_styles():
    rows = [
        {**row(0.1, v), "arch": a, "seed": s}
        for a in ("resnet20", "resnet20_noshort")
        for s in (0, 1)
        for v in ("standard", "batchnorm")
    ]
    fig = sweep_figure(rows, ["arch", "seed"])
    ax = fig.axes[0]
    assert [t.get_text() for t in ax.get_xticklabels()] == ["resnet20", "resnet20_noshort"]
    curves = lines_with_data(ax)
    # Categories are not joined; the second axis's values differ by marker.
    assert len(curves) == 4 and {c.get_linestyle() for c in curves} == {"None"}
    assert {c.get_marker() for c in curves} == {"o", "s"}
    labels = [t.get_text() for t in fig.legends[0].get_texts()]
    assert "Standard (seed=0)" in labels and "Standard (seed=1)" in labels


def test_nothing_finished_draws_nothing(tmp_path):
    assert sweep_figure([row(0.1, "standard", status="new")], ["lr"]) is None
    assert write_sweep_figure([], ["lr"], tmp_path / "sweep") == []
    written = write_sweep_figure([row(0.1, "standard")], ["lr"], tmp_path / "sweep")
    assert [p.name for p in written] == ["sweep.png", "sweep.pdf"]
