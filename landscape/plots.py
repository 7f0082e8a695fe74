"""Figures of a run: pure functions from records to ``matplotlib.figure.Figure``.

Every function takes the plain arrays of ``landscape.results.load`` / ``load_metrics`` and
returns a new ``Figure``; nothing here imports JAX, calls ``plt.show()`` or switches the global
backend, so the same functions work in a notebook, a headless CI job or ``landscape.report``.

A variant has one colour and one label in every figure (``variant_color``, ``variant_label``):
standard blue and BatchNorm red, as in the paper's figures.

Divergence is data (a step size that overflows gives +inf/NaN): non-finite values are never
plotted as numbers, and the steps where any step size diverged are marked with triangles along
the top of the axes.
"""

from __future__ import annotations

import json
import os
import zlib
from collections.abc import Iterable, Sequence
from pathlib import Path
from typing import Any

import numpy as np
from matplotlib.colors import LinearSegmentedColormap, to_rgb
from matplotlib.figure import Figure
from matplotlib.lines import Line2D
from matplotlib.patches import Patch
from matplotlib.ticker import LogFormatter

Records = dict[str, dict[str, np.ndarray]]

# The paper draws the standard network in blue and the BatchNorm network in red.
PALETTE = {
    "standard": "#1f5fa8",
    "batchnorm": "#d62728",
    "noisy_batchnorm": "#ff7f0e",
    "noisy_none": "#b8860b",
    "l1": "#2ca02c",
    "l2": "#9467bd",
    "linf": "#8c564b",
}
# Variants not in PALETTE get one of these, chosen by a stable hash of the name, so a variant's
# colour does not depend on which other variants a run has.
_FALLBACK_COLORS = ("#17becf", "#e377c2", "#bcbd22", "#7f7f7f", "#393b79", "#637939", "#843c39")
LABELS = {
    "standard": "Standard",
    "batchnorm": "Standard + BatchNorm",
    "noisy_batchnorm": 'Standard + "Noisy" BatchNorm',
    "noisy_none": "Standard + noise (no BatchNorm)",
    "l1": "Standard + ℓ1 norm",
    "l2": "Standard + ℓ2 norm",
    "linf": "Standard + ℓ∞ norm",
}
EARLY_FRACTION = 0.1  # the summary's early phase (landscape.summary.phase_masks)
DIVERGED_LABEL = "step where an η diverged (non-finite, counted as +∞)"

_PANEL_SIZE = (4.2, 3.4)  # inches per panel


def variant_color(variant: str) -> str:
    """Returns the fixed colour of a variant (hex string)."""
    if variant in PALETTE:
        return PALETTE[variant]
    return _FALLBACK_COLORS[zlib.crc32(variant.encode()) % len(_FALLBACK_COLORS)]


def variant_label(variant: str) -> str:
    """Returns the legend label of a variant: the paper's wording where it has one."""
    return LABELS.get(variant, variant)


# --- numerical helpers -------------------------------------------------------------------------


def moving_average(values: np.ndarray, window: int) -> np.ndarray:
    """Returns the centred moving average of ``values`` over ``window`` points, ignoring non-finite.

    Each output is the mean of the finite values in its window (the window is cut at the ends);
    it is NaN where the window holds no finite value. ``window <= 1`` returns a float copy.
    """
    values = np.asarray(values, dtype=np.float64)
    if window <= 1 or values.size == 0:
        return values.copy()
    finite = np.isfinite(values)
    sums = np.concatenate([[0.0], np.cumsum(np.where(finite, values, 0.0))])
    counts = np.concatenate([[0], np.cumsum(finite)])
    left = (window - 1) // 2
    idx = np.arange(values.size)
    lo = np.clip(idx - left, 0, values.size)
    hi = np.clip(idx - left + window, 0, values.size)
    n = counts[hi] - counts[lo]
    with np.errstate(invalid="ignore", divide="ignore"):
        return np.where(n > 0, (sums[hi] - sums[lo]) / np.maximum(n, 1), np.nan)


def _for_log(values: np.ndarray) -> np.ndarray:
    """Values a log axis can draw: non-finite and non-positive entries become NaN (gaps)."""
    values = np.asarray(values, dtype=np.float64)
    with np.errstate(invalid="ignore"):
        return np.where(np.isfinite(values) & (values > 0), values, np.nan)


def _finite_max(per_eta: np.ndarray | None, reduced: np.ndarray) -> np.ndarray:
    """Returns ``reduced`` where finite, else the largest finite per-eta value of that step.

    At a diverged step the band's maximum is +inf; the band is drawn up to the largest value that
    was measured, and the step is marked as diverged separately.
    """
    reduced = np.asarray(reduced, dtype=np.float64)
    if per_eta is None or np.ndim(per_eta) != 2:
        return reduced
    per_eta = np.asarray(per_eta, dtype=np.float64)
    finite = np.isfinite(per_eta)
    fallback = np.where(finite, per_eta, -np.inf).max(axis=1)
    fallback = np.where(finite.any(axis=1), fallback, np.nan)
    return np.where(np.isfinite(reduced), reduced, fallback)


def _diverged_steps(rec: dict[str, np.ndarray]) -> np.ndarray:
    steps = np.asarray(rec["step"])
    if "diverged" in rec:
        return steps[np.asarray(rec["diverged"]) > 0]
    return steps[~np.isfinite(np.asarray(rec.get("beta", np.zeros(steps.shape)), float))]


def _mark_diverged(ax, steps: np.ndarray, color: str, row: int) -> bool:
    """Draws triangles along the top of ``ax`` at ``steps`` (x in data, y in axes units)."""
    if len(steps) == 0:
        return False
    y = np.full(len(steps), 0.97 - 0.045 * row)
    ax.scatter(
        steps,
        y,
        transform=ax.get_xaxis_transform(),
        marker="^",
        s=22,
        color=color,
        edgecolors="black",
        linewidths=0.4,
        zorder=5,
        clip_on=False,
    )
    return True


def _mark_early(ax, early_steps: float, x_start: float) -> None:
    ax.axvspan(x_start, early_steps, color="0.88", zorder=0, lw=0)
    ax.axvline(early_steps, color="0.35", ls="--", lw=1.0, zorder=1)
    # Above the axes, so it never hides data; it starts at the shaded region's left edge.
    ax.text(
        x_start,
        1.01,
        "early phase ⇥",
        transform=ax.get_xaxis_transform(),
        ha="left",
        va="bottom",
        fontsize=8,
        color="0.25",
    )


class _PlainLogFormatter(LogFormatter):
    """Log-axis tick labels as plain numbers ("0.3", "2", "50") instead of 3×10⁻¹."""

    def _num_to_string(self, x, vmin, vmax):
        return f"{x:g}"


def _log_axis(ax, axis: str = "y") -> None:
    """Puts ``axis`` of ``ax`` on a log scale with plain-number tick labels."""
    getattr(ax, f"set_{axis}scale")("log")
    target = getattr(ax, f"{axis}axis")
    target.set_major_formatter(_PlainLogFormatter())
    target.set_minor_formatter(_PlainLogFormatter(labelOnlyBase=False))


def _headroom(ax, fraction: float = 0.12) -> None:
    """Raises the top of a log y axis by ``fraction`` of its decades (room for the markers)."""
    lo, hi = ax.get_ylim()
    if lo > 0 and hi > lo:
        ax.set_ylim(lo, hi * (hi / lo) ** fraction)


def _legend_handles(
    variants: Iterable[str], *, diverged: bool = False, early: bool = False, band: bool = False
) -> list:
    handles: list = []
    for v in variants:
        c = variant_color(v)
        if band:
            handles.append(Patch(facecolor=c, edgecolor=c, alpha=0.35, label=variant_label(v)))
        else:
            handles.append(Line2D([], [], color=c, lw=2, label=variant_label(v)))
    if early:
        handles.append(
            Patch(
                facecolor="0.88",
                edgecolor="0.35",
                ls="--",
                label="early phase (first 10% of steps)",
            )
        )
    if diverged:
        handles.append(
            Line2D(
                [],
                [],
                ls="",
                marker="^",
                markersize=6,
                color="0.5",
                markeredgecolor="black",
                markeredgewidth=0.4,
                label=DIVERGED_LABEL,
            )
        )
    return handles


def _new_figure(ncols: int, nrows: int = 1, **subplot_kw) -> tuple[Figure, np.ndarray]:
    fig = Figure(
        figsize=(_PANEL_SIZE[0] * ncols, _PANEL_SIZE[1] * nrows + 0.6), layout="constrained"
    )
    axes = fig.subplots(nrows, ncols, squeeze=False, **subplot_kw)
    return fig, axes


def _figure_legend(fig: Figure, handles: list) -> None:
    fig.legend(
        handles=handles,
        loc="outside lower center",
        ncol=min(len(handles), 4),
        frameon=False,
        fontsize=9,
    )


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
    fig, axes = _new_figure(3)
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
            hi = moving_average(_finite_max(rec.get(per_eta_key), rec[hi_key]), smooth)
            lo, hi = _for_log(lo), _for_log(hi)
            ax.fill_between(steps, lo, hi, color=color, alpha=0.35, lw=0)
            # Thin edges keep a band visible where it is narrower than a pixel (the plateau).
            ax.plot(steps, lo, color=color, lw=0.7)
            ax.plot(steps, hi, color=color, lw=0.7)
        ax_beta.plot(steps, _for_log(moving_average(rec["beta"], smooth)), color=color, lw=1.3)
        diverged_at = _diverged_steps(rec)
        for ax in (ax_loss, ax_dist, ax_beta):
            any_diverged |= _mark_diverged(ax, diverged_at, color, row)

    titles = ("(a) loss landscape", "(b) gradient predictiveness", "(c) effective β-smoothness")
    ylabels = ("loss over η range (nats)", "ℓ2 distance ‖∇L(x−ηg) − g‖", "β (max over η)")
    x_start = min(
        (float(np.min(r["step"])) for r in records.values() if r and len(r["step"])), default=0.0
    )
    for ax, title, ylabel in zip(axes[0], titles, ylabels, strict=True):
        _log_axis(ax)
        if any_diverged:
            _headroom(ax)
        # The raised title leaves a line for the "early phase" label above the axes.
        ax.set_title(title, pad=16 if early_steps is not None else 6)
        ax.set_ylabel(ylabel)
        ax.set_xlabel("training step")
        ax.grid(True, which="major", alpha=0.3)
        if early_steps is not None:
            _mark_early(ax, early_steps, x_start)
    if smooth > 1:
        fig.suptitle(f"moving average over {smooth} probed steps", fontsize=9, color="0.3")
    _figure_legend(
        fig,
        _legend_handles(records, diverged=any_diverged, early=early_steps is not None, band=True),
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
    fig, axes = _new_figure(3)
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
                    values = _for_log(values)
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
    _log_axis(ax_loss)
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
        ax_test.text(
            0.5,
            0.5,
            "no evaluation recorded",
            transform=ax_test.transAxes,
            ha="center",
            va="center",
            color="0.4",
        )
    _figure_legend(fig, _legend_handles(metrics))
    return fig


# --- Figure 11: gradient distance against the step size --------------------------------------


def nearest_steps(available: np.ndarray, wanted: Iterable[float]) -> list[int]:
    """Returns, for each wanted step, the nearest step in ``available`` (duplicates removed)."""
    available = np.asarray(available)
    out: list[int] = []
    for w in wanted:
        s = int(available[np.argmin(np.abs(available - w))])
        if s not in out:
            out.append(s)
    return out


def _default_steps(records: Records, count: int = 4) -> list[float]:
    all_steps = np.concatenate([np.asarray(r["step"]) for r in records.values() if r])
    if all_steps.size == 0:
        return []
    return list(np.linspace(all_steps.min(), all_steps.max(), count))


def _shades(color: str, n: int) -> list[tuple[float, float, float]]:
    """``n`` shades of ``color`` from light (early) to dark (late): the hue stays the variant's."""
    rgb = np.asarray(to_rgb(color))
    if n <= 1:
        return [tuple(rgb)]
    cmap = LinearSegmentedColormap.from_list("variant", [0.55 * rgb + 0.45, rgb, 0.6 * rgb])
    return [tuple(cmap(x)[:3]) for x in np.linspace(0.0, 1.0, n)]


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
    fig, grid = _new_figure(ncols, nrows, sharey=True)
    for ax in grid.flat[max(len(variants), 1) :]:
        fig.delaxes(ax)
    wanted = _default_steps(records) if steps is None else list(steps)
    any_diverged = False
    for ax, variant in zip(grid.flat, variants, strict=False):
        rec = records[variant]
        chosen = nearest_steps(rec["step"], wanted)
        row_of = {int(s): i for i, s in enumerate(np.asarray(rec["step"]))}
        log_x = bool(np.all(np.asarray(rec["etas"], float) > 0))
        for shade, step in zip(_shades(variant_color(variant), len(chosen)), chosen, strict=True):
            i = row_of[step]
            etas = np.asarray(rec["etas"][i], float)
            dist = np.asarray(rec["grad_dist"][i], float)
            ax.plot(etas, _for_log(dist), color=shade, marker="o", ms=3, lw=1.4, label=str(step))
            bad = ~np.isfinite(dist)
            if _mark_diverged(ax, etas[bad], shade, row=0):
                any_diverged = True
        if log_x:
            _log_axis(ax, "x")
        _log_axis(ax)
        ax.set_title(variant_label(variant), color=variant_color(variant))
        ax.set_xlabel("step size η")
        ax.grid(True, which="major", alpha=0.3)
        ax.legend(fontsize=8, title="training step", title_fontsize=8, loc="lower right")
    for ax in grid[:, 0]:
        ax.set_ylabel("ℓ2 distance ‖∇L(x−ηg) − g‖")
    if any_diverged:
        _headroom(grid[0, 0])  # once: the panels share the y axis
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
    handles = _legend_handles(variants, diverged=any_diverged)
    if any_diverged:
        handles[-1].set_label("η whose gradient diverged (non-finite)")
    _figure_legend(fig, handles)
    return fig


# --- saving ---------------------------------------------------------------------------------


def save_figure(
    fig: Figure, path_stem: str | os.PathLike, formats: Sequence[str] = ("png", "pdf")
) -> list[Path]:
    """Writes ``fig`` as ``path_stem.<fmt>`` for each format; returns the paths written.

    Raster formats at 150 dpi. PDF/SVG carry no creation date, so reruns give identical files.
    """
    stem = Path(path_stem)
    stem.parent.mkdir(parents=True, exist_ok=True)
    paths = []
    for fmt in formats:
        fmt = fmt.lower().lstrip(".")
        path = stem.parent / f"{stem.name}.{fmt}"
        metadata: dict[str, Any] | None = None
        if fmt == "pdf":
            metadata = {"CreationDate": None, "ModDate": None}
        elif fmt == "svg":
            metadata = {"Date": None}
        fig.savefig(path, format=fmt, dpi=150, metadata=metadata)
        paths.append(path)
    return paths


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
    from landscape.results import load, load_metrics

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
    return figures


def plot_run(
    run_dir: str | os.PathLike,
    out_dir: str | os.PathLike | None = None,
    *,
    formats: Sequence[str] = ("png", "pdf"),
    smooth: int = 0,
) -> list[Path]:
    """Draws every figure a run has data for into ``out_dir`` (default ``RUN_DIR/figures``).

    Returns the paths written: ``loss_landscape``, ``grad_dist_vs_eta`` (when the run has probe
    records) and ``training_curves`` (when it has metrics), one file per format.
    """
    out = Path(out_dir) if out_dir is not None else Path(run_dir) / "figures"
    paths: list[Path] = []
    for name, fig in run_figures(run_dir, smooth=smooth).items():
        paths += save_figure(fig, out / name, formats)
    return paths
