"""The run's own figures: Figure 4 (loss landscape, gradient predictiveness, effective beta),
Figure 1 (training curves), gradient distance against the step size, the deep linear network's
curves, and ``plot_run``, which draws every figure a run directory has records for.
"""

from __future__ import annotations

import json
import os
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np
from matplotlib.figure import Figure

from landscape.config import dln_depth, is_dln
from landscape.plots.curvature import curvature_link_figure, sharpness_figure
from landscape.plots.pictures import surface_figures
from landscape.plots.shift import shift_figures
from landscape.plots.style import (
    EARLY_FRACTION,
    Records,
    diverged_steps,
    figure_legend,
    finite_max,
    for_log,
    headroom,
    legend_handles,
    log_axis,
    mark_diverged,
    mark_early,
    moving_average,
    nearest_steps,
    new_figure,
    save_figure,
    say_empty,
    shades,
    variant_color,
    variant_label,
)
from landscape.results import load, load_divergence, load_hessian, load_metrics

# --- Figure 4: loss landscape, gradient predictiveness, effective beta-smoothness ----------------


def loss_landscape_figure(
    records: Records, *, smooth: int = 0, early_steps: float | None = None
) -> Figure:
    """The paper's Figure 4: (a) loss landscape, (b) gradient predictiveness, (c) effective β.

    ``records`` is ``landscape.results.load(run_dir)``. For each variant: (a) the band between
    the smallest and largest loss over the step sizes η at each training step; (b) the band of
    the ℓ2 distance between the gradient at x - η g and g; (c) the effective β-smoothness
    (max over η of that distance divided by ||η g||). ``smooth`` is a moving-average window in
    probed steps (0 = none) that ignores non-finite values. ``early_steps`` (a step count, e.g.
    10% of the run) shades and annotates the early phase. Steps where any η diverged are marked.
    """
    fig, axes = new_figure(3)
    ax_loss, ax_dist, ax_beta = axes[0]
    any_diverged = False
    for row, (variant, rec) in enumerate(records.items()):
        if not rec or len(rec["step"]) == 0:
            continue
        color = variant_color(variant)
        steps = np.asarray(rec["step"])
        bands = (
            (ax_loss, "loss_min", "loss_max", "loss"),
            (ax_dist, "grad_dist_min", "grad_dist_max", "grad_dist"),
        )
        for ax, lo_key, hi_key, per_eta_key in bands:
            lo = moving_average(rec[lo_key], smooth)
            hi = moving_average(finite_max(rec.get(per_eta_key), rec[hi_key]), smooth)
            lo, hi = for_log(lo), for_log(hi)
            ax.fill_between(steps, lo, hi, color=color, alpha=0.35, lw=0)
            # Thin edges keep a band visible where it is narrower than a pixel (the plateau).
            ax.plot(steps, lo, color=color, lw=0.7)
            ax.plot(steps, hi, color=color, lw=0.7)
        ax_beta.plot(steps, for_log(moving_average(rec["beta"], smooth)), color=color, lw=1.3)
        diverged_at = diverged_steps(rec)
        for ax in (ax_loss, ax_dist, ax_beta):
            any_diverged |= mark_diverged(ax, diverged_at, color, row)

    titles = ("(a) loss landscape", "(b) gradient predictiveness", "(c) effective β-smoothness")
    ylabels = ("loss over η range (nats)", "ℓ2 distance ‖∇L(x−ηg) − g‖", "β (max over η)")
    x_start = min(
        (float(np.min(r["step"])) for r in records.values() if r and len(r["step"])), default=0.0
    )
    for ax, title, ylabel in zip(axes[0], titles, ylabels, strict=True):
        log_axis(ax)
        if any_diverged:
            headroom(ax)
        # The raised title leaves a line for the "early phase" label above the axes.
        ax.set_title(title, pad=16 if early_steps is not None else 6)
        ax.set_ylabel(ylabel)
        ax.set_xlabel("training step")
        ax.grid(True, which="major", alpha=0.3)
        if early_steps is not None:
            mark_early(ax, early_steps, x_start)
    if smooth > 1:
        fig.suptitle(f"moving average over {smooth} probed steps", fontsize=9, color="0.3")
    figure_legend(
        fig,
        legend_handles(records, diverged=any_diverged, early=early_steps is not None, band=True),
    )
    return fig


# --- Figure 1: training curves -----------------------------------------------------------------


def training_curves_figure(
    metrics: dict[str, dict[str, dict[str, np.ndarray]]], *, smooth: int | None = None
) -> Figure:
    """Figure 1 style: (a) training loss, (b) training accuracy, (c) test accuracy per variant.

    ``metrics`` is ``landscape.results.load_metrics(run_dir)``. Per-step training values are
    drawn faintly with a moving average over ``smooth`` steps on top (``None``: about 2% of the
    run; 0: no smoothing). Test accuracy is drawn as points joined by lines.
    """
    fig, axes = new_figure(3)
    ax_loss, ax_acc, ax_test = axes[0]
    any_test = False
    for variant, m in metrics.items():
        color = variant_color(variant)
        train = m.get("train") or {}
        if train and len(train.get("step", ())):
            steps = np.asarray(train["step"])
            window = max(1, len(steps) // 50) if smooth is None else smooth
            for ax, key, scale in ((ax_loss, "loss", 1.0), (ax_acc, "accuracy", 100.0)):
                if key not in train:
                    continue
                values = np.asarray(train[key], dtype=np.float64) * scale
                if key == "loss":
                    values = for_log(values)
                if window > 1:
                    ax.plot(steps, values, color=color, lw=0.5, alpha=0.25)
                    ax.plot(steps, moving_average(values, window), color=color, lw=1.5)
                else:
                    ax.plot(steps, values, color=color, lw=1.0)
        test = m.get("test") or {}
        if test and len(test.get("step", ())) and "test_accuracy" in test:
            any_test = True
            ax_test.plot(
                test["step"],
                100.0 * np.asarray(test["test_accuracy"], float),
                color=color,
                marker="o",
                ms=4,
                lw=1.3,
            )
    log_axis(ax_loss)
    labels = (
        ("(a) training loss", "cross-entropy (nats)"),
        ("(b) training accuracy", "accuracy on the batch (%)"),
        ("(c) test accuracy", "accuracy (%)"),
    )
    for ax, (title, ylabel) in zip(axes[0], labels, strict=True):
        ax.set_title(title)
        ax.set_ylabel(ylabel)
        ax.set_xlabel("training step")
        ax.grid(True, alpha=0.3)
    if not any_test:
        say_empty(ax_test, "no evaluation recorded")
    figure_legend(fig, legend_handles(metrics))
    return fig


# --- Figure 11: gradient distance against the step size --------------------------------------


def _default_steps(records: Records, count: int = 4) -> list[float]:
    all_steps = np.concatenate([np.asarray(r["step"]) for r in records.values() if r])
    if all_steps.size == 0:
        return []
    return list(np.linspace(all_steps.min(), all_steps.max(), count))


def grad_dist_vs_eta_figure(records: Records, steps: Sequence[float] | None = None) -> Figure:
    """Figure 11 style: ‖∇L(x−ηg) − g‖ against η at a few training steps, one panel per variant.

    ``steps`` are the training steps wanted (default: four spread over the run); each panel uses
    the nearest probed step of its variant. Lines go from light (early) to dark (late) in the
    variant's colour; η values whose measurement diverged are marked with triangles at the top.
    Axes are log-log when all step sizes are positive; panels share the y axis.
    """
    variants = [v for v, r in records.items() if r and len(r["step"])]
    # At most three panels a row, so six variants (Figs. 5 and 12 of the paper) stay legible.
    ncols = min(max(len(variants), 1), 3)
    nrows = max(1, -(-len(variants) // ncols))
    fig, grid = new_figure(ncols, nrows, sharey=True)
    for ax in grid.flat[max(len(variants), 1) :]:
        fig.delaxes(ax)
    wanted = _default_steps(records) if steps is None else list(steps)
    any_diverged = False
    for ax, variant in zip(grid.flat, variants, strict=False):
        rec = records[variant]
        chosen = nearest_steps(rec["step"], wanted)
        row_of = {int(s): i for i, s in enumerate(np.asarray(rec["step"]))}
        log_x = bool(np.all(np.asarray(rec["etas"], float) > 0))
        for shade, step in zip(shades(variant_color(variant), len(chosen)), chosen, strict=True):
            i = row_of[step]
            etas = np.asarray(rec["etas"][i], float)
            dist = np.asarray(rec["grad_dist"][i], float)
            ax.plot(etas, for_log(dist), color=shade, marker="o", ms=3, lw=1.4, label=str(step))
            bad = ~np.isfinite(dist)
            if mark_diverged(ax, etas[bad], shade, row=0):
                any_diverged = True
        if log_x:
            log_axis(ax, "x")
        log_axis(ax)
        ax.set_title(variant_label(variant), color=variant_color(variant))
        ax.set_xlabel("step size η")
        ax.grid(True, which="major", alpha=0.3)
        ax.legend(fontsize=8, title="training step", title_fontsize=8, loc="lower right")
    for ax in grid[:, 0]:
        ax.set_ylabel("ℓ2 distance ‖∇L(x−ηg) − g‖")
    if any_diverged:
        headroom(grid[0, 0])  # once: the panels share the y axis
    if not variants:
        grid[0, 0].text(
            0.5,
            0.5,
            "no probe records",
            transform=grid[0, 0].transAxes,
            ha="center",
            va="center",
            color="0.4",
        )
    fig.suptitle("Gradient predictiveness against step size", fontsize=11)
    handles = legend_handles(variants, diverged=any_diverged)
    if any_diverged:
        handles[-1].set_label("η whose gradient diverged (non-finite)")
    figure_legend(fig, handles)
    return fig


# --- saving ---------------------------------------------------------------------------------


def early_phase_end(run_dir: str | os.PathLike, records: Records | None = None) -> float:
    """Returns the first step after the early phase: 10% of the run's configured steps.

    Falls back to 10% of (last recorded step + 1) when the run has no ``config.json``; the same
    cut as ``landscape.summary.summarize_run``.
    """
    config = read_config(run_dir)
    total = config.get("steps")
    if not isinstance(total, int | float) or total <= 0:
        last = max(
            (int(np.max(r["step"])) for r in (records or {}).values() if r and len(r["step"])),
            default=0,
        )
        total = last + 1
    return EARLY_FRACTION * float(total)


def read_config(run_dir: str | os.PathLike) -> dict[str, Any]:
    """Returns the run's ``config.json`` as a dict ({} when absent or unreadable)."""
    path = Path(run_dir) / "config.json"
    try:
        config = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return {}
    return config if isinstance(config, dict) else {}


def run_figures(run_dir: str | os.PathLike, *, smooth: int = 0) -> dict[str, Figure]:
    """Returns ``{name: Figure}`` for every figure the run has data for (no files written)."""
    records = {v: r for v, r in load(run_dir).items() if r and len(r.get("step", ()))}
    metrics = load_metrics(run_dir)
    figures: dict[str, Figure] = {}
    if records:
        figures["loss_landscape"] = loss_landscape_figure(
            records, smooth=smooth, early_steps=early_phase_end(run_dir, records)
        )
    if any((m.get("train") or {}).get("step") is not None for m in metrics.values()):
        figures["training_curves"] = training_curves_figure(metrics, smooth=smooth or None)
    if records:
        figures["grad_dist_vs_eta"] = grad_dist_vs_eta_figure(records)
    figures.update(shift_figures(run_dir))

    hessian = load_hessian(run_dir)
    if hessian:
        figures["sharpness"] = sharpness_figure(hessian)
        figures["curvature_link"] = curvature_link_figure(hessian)
    figures = figures_for_model(figures, read_config(run_dir), metrics, smooth=smooth)
    divergence = load_divergence(run_dir)
    for name in ("loss_landscape", "training_curves"):
        if name in figures:
            mark_divergence(figures[name], divergence)
    return figures


def mark_divergence(fig: Figure, divergence: dict[str, dict[str, Any]]) -> None:
    """Draws a dashed line in the variant's colour at the step where its training loss became
    non-finite (``results.load_divergence``) on every panel of ``fig``, labelled once."""
    for variant, record in divergence.items():
        step = record.get("step")
        if not isinstance(step, int):
            continue
        for i, ax in enumerate(fig.axes):
            ax.axvline(step, color=variant_color(variant), ls="--", lw=1.2)
            if i == 0:  # along the line, inside the panel whatever the step's position
                ax.annotate(
                    "diverged",
                    (step, 0.98),
                    xycoords=("data", "axes fraction"),
                    xytext=(-2, 0),
                    textcoords="offset points",
                    rotation=90,
                    ha="right",
                    va="top",
                    fontsize=7,
                    color=variant_color(variant),
                )


def plot_run(
    run_dir: str | os.PathLike,
    out_dir: str | os.PathLike | None = None,
    *,
    formats: Sequence[str] = ("png", "pdf"),
    smooth: int = 0,
) -> list[Path]:
    """Draws every figure a run has data for into ``out_dir`` (default ``RUN_DIR/figures``).

    Returns the paths written: ``loss_landscape``, ``grad_dist_vs_eta`` (when the run has probe
    records) and ``training_curves`` (when it has metrics), one file per format, and the
    loss-landscape pictures recorded by ``landscape surface``/``interpolate`` (``surface_figures``).
    """
    out = Path(out_dir) if out_dir is not None else Path(run_dir) / "figures"
    paths: list[Path] = []
    for name, fig in {**run_figures(run_dir, smooth=smooth), **surface_figures(run_dir)}.items():
        paths += save_figure(fig, out / name, formats)
    return paths


# --- loss-landscape pictures (landscape.surfaces) -------------------------------------------------


# --- Figure 3: internal covariate shift; distributional stability (Figure 8) ------------------


# --- curvature: sharpness over training and its link to the probe ------------------------------


# --- the deep linear network (App. A.1; the paper's Figures 10 and 13) ----------------------------

DLN_LOSS_LABEL = r"$\Vert F(X) - AX\Vert_F^2$"  # the training objective over the full batch X


def dln_title(config: dict[str, Any]) -> str | None:
    """Returns a title naming the deep linear network of a run's config, or None for others."""
    model = config.get("model") if isinstance(config.get("model"), dict) else {}
    arch = str(model.get("arch", ""))
    if not is_dln(arch):
        return None
    lr = (config.get("optimizer") or {}).get("learning_rate")
    lr_text = f", full-batch GD at lr {lr:g}" if isinstance(lr, int | float) else ""
    return f"Deep linear network: {dln_depth(arch)} linear layers, y = A x (App. A.1){lr_text}"


def dln_training_curves_figure(
    metrics: dict[str, dict[str, dict[str, np.ndarray]]], *, smooth: int | None = None
) -> Figure:
    """A deep linear network run's curves: (a) training loss per step, (b) test loss.

    ``metrics`` is ``landscape.results.load_metrics(run_dir)``, on log axes: (a) the training
    objective ``||F(X) - A X||_F^2`` summed over the full batch, (b) the test squared error per
    held-out sample ``||f(x) - A x||^2`` (mean over samples). ``smooth`` as in
    ``training_curves_figure``.
    """
    return regression_curves_figure(
        metrics,
        smooth=smooth,
        train=("(a) training loss (full batch)", DLN_LOSS_LABEL + ", summed over samples"),
        test=("(b) test loss (held-out inputs)", r"$\Vert f(x) - Ax\Vert^2$, mean over samples"),
    )


def regression_curves_figure(
    metrics: dict[str, dict[str, dict[str, np.ndarray]]],
    *,
    smooth: int | None = None,
    train: tuple[str, str] = ("(a) training loss", "loss on the batch"),
    test: tuple[str, str] = ("(b) test loss", "loss, mean over the test set"),
) -> Figure:
    """A run without accuracy (a regression): (a) training loss per step, (b) test loss at each
    evaluation, on log axes; ``train`` and ``test`` are each panel's (title, y label).

    ``metrics`` is ``landscape.results.load_metrics(run_dir)``; ``smooth`` as in
    ``training_curves_figure``.
    """
    fig, axes = new_figure(2)
    ax_train, ax_test = axes[0]
    any_test = False
    for variant, m in metrics.items():
        color = variant_color(variant)
        rows = m.get("train") or {}
        if rows and len(rows.get("step", ())) and "loss" in rows:
            steps = np.asarray(rows["step"])
            values = for_log(rows["loss"])
            window = max(1, len(steps) // 50) if smooth is None else smooth
            if window > 1:
                ax_train.plot(steps, values, color=color, lw=0.5, alpha=0.25)
                values = moving_average(values, window)
            ax_train.plot(steps, values, color=color, lw=1.5)
        evaluated = m.get("test") or {}
        if evaluated and len(evaluated.get("step", ())) and "test_loss" in evaluated:
            any_test = True
            ax_test.plot(
                evaluated["step"],
                for_log(evaluated["test_loss"]),
                color=color,
                marker="o",
                ms=4,
                lw=1.3,
            )
    for ax, (title, ylabel) in zip(axes[0], (train, test), strict=True):
        log_axis(ax)
        ax.set_title(title)
        ax.set_ylabel(ylabel)
        ax.set_xlabel("training step")
        ax.grid(True, which="major", alpha=0.3)
    if not any_test:
        say_empty(ax_test, "no evaluation recorded")
    figure_legend(fig, legend_handles(metrics))
    return fig


def _has_accuracy(metrics: dict[str, dict[str, dict[str, np.ndarray]]]) -> bool:
    """Returns whether any variant recorded a finite training accuracy (a classification)."""
    for m in metrics.values():
        accuracy = (m.get("train") or {}).get("accuracy")
        if accuracy is not None and np.isfinite(np.asarray(accuracy, dtype=np.float64)).any():
            return True
    return False


def _loss_name(config: dict[str, Any]) -> str | None:
    """Returns the loss a run's config names with ``--loss``, in words, or None for the
    built-in default (cross-entropy for classes, the mean squared error otherwise)."""
    model = config.get("model") if isinstance(config.get("model"), dict) else {}
    loss = model.get("loss")
    if isinstance(loss, str) and loss and loss != "cross_entropy":
        return loss.replace("_", " ")
    return None


def figures_for_model(
    figures: dict[str, Figure],
    config: dict[str, Any],
    metrics: dict[str, dict[str, dict[str, np.ndarray]]],
    *,
    smooth: int = 0,
) -> dict[str, Figure]:
    """Returns ``figures`` labelled for the run's model: unchanged for VGG.

    For a deep linear network the landscape figure (the paper's Figure 10, or 13 with the l_p
    variants) gets the network in its title and the squared error as its loss unit, and the
    training curves are the regression's (training and test loss; no accuracy).
    """
    title = dln_title(config)
    out = dict(figures)
    if title is None:
        if "training_curves" in out and not _has_accuracy(metrics):
            # No accuracy: a regression, trained with the mean squared error unless --loss.
            loss = _loss_name(config) or "mean squared error"
            out["training_curves"] = regression_curves_figure(
                metrics,
                smooth=smooth or None,
                train=("(a) training loss", f"{loss} on the batch"),
                test=("(b) test loss", f"{loss}, mean over the test set"),
            )
        elif "training_curves" in out and _loss_name(config):
            out["training_curves"].axes[0].set_ylabel(_loss_name(config))
        return out
    if "loss_landscape" in out:
        fig = out["loss_landscape"]
        fig.axes[0].set_ylabel(DLN_LOSS_LABEL + " over η range")
        smoothing = f"; moving average over {smooth} probed steps" if smooth > 1 else ""
        fig.suptitle(title + smoothing, fontsize=11)
    if "grad_dist_vs_eta" in out:
        out["grad_dist_vs_eta"].suptitle(
            f"Gradient predictiveness against step size\n{title}", fontsize=11
        )
    if "training_curves" in out:
        out["training_curves"] = dln_training_curves_figure(metrics, smooth=smooth or None)
        out["training_curves"].suptitle(title, fontsize=11)
    return out
