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
from matplotlib import colormaps
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


def _say_empty(ax, text: str) -> None:
    """Writes ``text`` in the middle of an axis that has nothing to draw."""
    ax.text(0.5, 0.5, text, transform=ax.transAxes, ha="center", va="center", color="0.4")


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
        _say_empty(ax_test, "no evaluation recorded")
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
    figures.update(shift_figures(run_dir))
    from landscape.results import load_hessian

    hessian = load_hessian(run_dir)
    if hessian:
        figures["sharpness"] = sharpness_figure(hessian)
        figures["curvature_link"] = curvature_link_figure(hessian)
    return figures_for_model(figures, read_config(run_dir), metrics, smooth=smooth)


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


def _picture_subtitle(record: dict[str, Any]) -> str:
    s = record["header"].get("settings", {})
    batches = s.get("batches", 1)
    on = "the step's batch" if batches == 1 else f"{batches} training batches"
    if s.get("mode") == "eval":
        mode = "eval mode (BatchNorm: running averages)"
    else:
        mode = "train mode (BatchNorm: batch statistics)"
    return f"{mode}, loss on {on}"


def _first(records: dict[str, dict[str, Any]]) -> dict[str, Any]:
    return next(iter(records.values()))


def surface_line_figure(records: dict[str, dict[str, Any]]) -> Figure:
    """A 1D slice ``L(x + a d)`` against ``a``, variants overlaid (Li et al. 2018, Fig. 2 style).

    ``records`` is ``{variant: landscape.surface_records.load_record(...)}`` of one picture. The
    checkpoint (a = 0) is marked with a dashed line; a second panel shows the accuracy when it
    was recorded. The loss axis is logarithmic when every value is positive.
    """
    first = _first(records)
    has_acc = any("accuracy" in r for r in records.values())
    fig, axes = _new_figure(2 if has_acc else 1)
    ax_loss = axes[0, 0]
    positive = True
    for variant, rec in records.items():
        a = rec["axes"][0]
        loss = np.asarray(rec["loss"], float)
        positive &= bool(np.all(loss[np.isfinite(loss)] > 0))
        ax_loss.plot(a, loss, color=variant_color(variant), marker="o", ms=2.5, lw=1.4)
        if has_acc and "accuracy" in rec:
            axes[0, 1].plot(a, 100 * rec["accuracy"], color=variant_color(variant), lw=1.4)
    if positive:
        _log_axis(ax_loss)
    s = first["header"].get("settings", {})
    xlabel = "a (gradient direction, descent > 0)" if s.get("direction") == "gradient" else "a"
    for ax, ylabel in zip(axes[0], ("loss (nats)", "accuracy on the batch (%)"), strict=False):
        ax.axvline(0.0, color="0.35", ls="--", lw=1.0)
        ax.set_xlabel(xlabel)
        ax.set_ylabel(ylabel)
        ax.grid(True, which="major", alpha=0.3)
    ax_loss.set_title(f"L(x + a d) around step {s.get('step')}")
    what = (
        "d = −g scaled to ‖x‖"
        if s.get("direction") == "gradient"
        else f"random filter-normalised d, seed {s.get('seed')}"
    )
    fig.suptitle(
        f"{what}; {_picture_subtitle(first)}",
        fontsize=9,
        color="0.3",
    )
    _figure_legend(fig, _legend_handles(records))
    return fig


def _shared_log_norm(records: dict[str, dict[str, Any]]):
    from matplotlib.colors import LogNorm, Normalize

    values = np.concatenate([np.ravel(r["loss"]) for r in records.values()])
    values = values[np.isfinite(values)]
    if values.size == 0:
        return Normalize(0, 1), np.linspace(0, 1, 3)
    lo, hi = float(values.min()), float(values.max())
    if lo > 0 and hi > lo:
        # Log-spaced levels: the basin around the checkpoint and the walls both get contours.
        return LogNorm(lo, hi), np.geomspace(lo, hi, 25)
    hi = hi if hi > lo else lo + 1.0
    return Normalize(lo, hi), np.linspace(lo, hi, 25)


def _grid_panels(n: int, **subplot_kw) -> tuple[Figure, list]:
    ncols = min(max(n, 1), 3)
    nrows = max(1, -(-n // ncols))
    fig, grid = _new_figure(ncols, nrows, **subplot_kw)
    for ax in grid.flat[max(n, 1) :]:
        fig.delaxes(ax)
    return fig, list(grid.flat[:n])


def surface_contour_figure(records: dict[str, dict[str, Any]]) -> Figure:
    """A 2D slice ``L(x + a d1 + b d2)`` as filled contours, one panel per variant.

    The panels share one colour scale and its levels are log-spaced (when every loss is
    positive), so the variants compare at a glance; the checkpoint (0, 0) is marked with a star.
    Points not evaluated yet (an interrupted run) are left blank.
    """
    norm, levels = _shared_log_norm(records)
    fig, axes = _grid_panels(len(records))
    mappable = None
    for ax, (variant, rec) in zip(axes, records.items(), strict=True):
        a, b = rec["axes"]
        loss = np.ma.masked_invalid(np.asarray(rec["loss"], float))
        # Rows of the record are a, columns b; contourf wants Z[y, x], so b is the y axis.
        mappable = ax.contourf(a, b, loss.T, levels=levels, norm=norm, cmap="viridis")
        ax.contour(a, b, loss.T, levels=levels[::3], norm=norm, colors="white", linewidths=0.4)
        ax.plot([0], [0], marker="*", color="white", mec="black", ms=10)
        ax.set_title(variant_label(variant), color=variant_color(variant))
        s = rec["header"].get("settings", {})
        ax.set_xlabel("a (gradient)" if s.get("direction") == "gradient" else "a (d1)")
        ax.set_ylabel("b (d2)")
        ax.set_aspect("equal", adjustable="box")
    if mappable is not None:
        fig.colorbar(mappable, ax=axes, label="loss (nats)", format="%.3g")
    first = _first(records)
    s = first["header"].get("settings", {})
    fig.suptitle(
        f"L(x + a d1 + b d2) around step {s.get('step')}\n{s.get('direction')} directions, "
        f"filter-normalised, seed {s.get('seed')}; {_picture_subtitle(first)}",
        fontsize=10,
    )
    return fig


def surface_3d_figure(records: dict[str, dict[str, Any]]) -> Figure:
    """A 2D slice as a 3D surface, one panel per variant, sharing the z range and colour scale."""
    norm, _ = _shared_log_norm(records)
    fig, axes = _grid_panels(len(records), subplot_kw={"projection": "3d"})
    finite = np.concatenate([np.ravel(r["loss"]) for r in records.values()])
    finite = finite[np.isfinite(finite)]
    for ax, (variant, rec) in zip(axes, records.items(), strict=True):
        a, b = rec["axes"]
        grid_a, grid_b = np.meshgrid(a, b, indexing="ij")
        loss = np.asarray(rec["loss"], float)
        colors = colormaps["viridis"](norm(np.where(np.isfinite(loss), loss, np.nan)))
        ax.plot_surface(
            grid_a, grid_b, np.ma.masked_invalid(loss), facecolors=colors, linewidth=0, shade=False
        )
        if finite.size:
            ax.set_zlim(float(finite.min()), float(finite.max()))
        ax.set_title(variant_label(variant), color=variant_color(variant))
        ax.set_xlabel("a")
        ax.set_ylabel("b")
        ax.set_zlabel("loss (nats)")
    first = _first(records)
    s = first["header"].get("settings", {})
    fig.suptitle(
        f"L(x + a d1 + b d2) around step {s.get('step')}\n{_picture_subtitle(first)}",
        fontsize=10,
    )
    return fig


def interpolation_figure(records: dict[str, dict[str, Any]]) -> Figure:
    """``L((1 - t) x_A + t x_B)`` against t, variants overlaid (Goodfellow et al. 2015).

    The two checkpoints (t = 0 and t = 1) are marked with dots and dotted lines; a second panel
    shows the accuracy when it was recorded. The loss axis is logarithmic when positive.
    """
    first = _first(records)
    s = first["header"].get("settings", {})
    has_acc = any("accuracy" in r for r in records.values())
    fig, axes = _new_figure(2 if has_acc else 1)
    positive = True
    for variant, rec in records.items():
        t = rec["axes"][0]
        color = variant_color(variant)
        panels = [(axes[0, 0], np.asarray(rec["loss"], float))]
        if has_acc and "accuracy" in rec:
            panels.append((axes[0, 1], 100 * np.asarray(rec["accuracy"], float)))
        for ax, values in panels:
            ax.plot(t, values, color=color, lw=1.4)
            ends = [int(np.argmin(np.abs(t - e))) for e in (0.0, 1.0)]
            ax.plot(t[ends], values[ends], ls="", marker="o", ms=6, color=color, mec="black")
        loss = panels[0][1]
        positive &= bool(np.all(loss[np.isfinite(loss)] > 0))
    if positive:
        _log_axis(axes[0, 0])
    for ax, ylabel in zip(axes[0], ("loss (nats)", "accuracy on the batch (%)"), strict=False):
        for end, text in ((0.0, f"step {s.get('from')}"), (1.0, f"step {s.get('to')}")):
            ax.axvline(end, color="0.4", ls=":", lw=1.0)
            ax.text(end, 1.01, text, transform=ax.get_xaxis_transform(), ha="center", fontsize=8)
        ax.set_xlabel("t")
        ax.set_ylabel(ylabel)
        ax.grid(True, which="major", alpha=0.3)
    axes[0, 0].set_title("L((1 − t) x_A + t x_B)", pad=14)
    fig.suptitle(_picture_subtitle(first), fontsize=9, color="0.3")
    _figure_legend(fig, _legend_handles(records))
    return fig


def surface_figures(
    run_dir: str | os.PathLike, names: Iterable[str] | None = None
) -> dict[str, Figure]:
    """Returns ``{name: Figure}`` for every picture recorded under ``RUN_DIR/<variant>/surfaces``
    (only the records called ``names`` when given).

    A 1D slice gives ``surface_<name>``, a 2D slice ``surface_<name>_contour`` and
    ``surface_<name>_3d``, an interpolation ``interpolation_<name>``.
    """
    from landscape.surface_records import load_surfaces

    figures: dict[str, Figure] = {}
    wanted = None if names is None else set(names)
    for name, records in load_surfaces(run_dir).items():
        if wanted is not None and name not in wanted:
            continue
        header = _first(records)["header"]
        if header.get("kind") == "interpolation":
            figures[f"interpolation_{name}"] = interpolation_figure(records)
        elif len(header.get("axes", ())) == 2:
            figures[f"surface_{name}_contour"] = surface_contour_figure(records)
            figures[f"surface_{name}_3d"] = surface_3d_figure(records)
        else:
            figures[f"surface_{name}"] = surface_line_figure(records)
    return figures


# --- Figure 3: internal covariate shift; distributional stability (Figure 8) ------------------

LayerRecords = dict[str, dict[int, dict[str, Any]]]
# The paper's Figure 3 shows VGG layers #5 and #10. Our layers are numbered 1..k in forward order
# (VGG-11: conv 1-8, the classifier 9), so #10 does not exist and maps to the nearest recorded
# layer, the last one (the classifier).
FIGURE3_LAYERS = (5, 10)


def nearest_layers(available: Iterable[int], wanted: Iterable[int]) -> list[int]:
    """Returns, for each wanted layer number, the nearest available one (duplicates removed)."""
    return nearest_steps(np.asarray(sorted(available)), wanted) if available else []


def _recorded_layers(records: LayerRecords) -> list[int]:
    return sorted({n for layers in records.values() for n in layers})


def _layer_title(records: LayerRecords, layer: int) -> str:
    names = {r[layer].get("name") for r in records.values() if layer in r}
    name = next(iter(names - {None}), None)
    return f"layer #{layer}" + (f" ({name})" if name else "")


def ics_figure(records: LayerRecords, layers: Sequence[int] | None = None) -> Figure:
    """The paper's Figure 3: internal covariate shift (Definition 2.1) over training.

    ``records`` is ``landscape.results.load_ics(run_dir)``. One row per layer (default: the
    recorded layers nearest to the paper's #5 and #10, see ``FIGURE3_LAYERS``): (a) the ℓ2
    difference ‖G − G'‖ of the layer's gradient before and after the preceding layers' update
    (ideally 0; log scale), (b) the same relative to ‖G‖, which compares networks whose
    gradients differ in scale, (c) the cosine of the angle between G and G' (ideally 1),
    variants overlaid.
    """
    available = _recorded_layers(records)
    chosen = nearest_layers(available, FIGURE3_LAYERS if layers is None else layers)
    fig, axes = _new_figure(3, max(len(chosen), 1))
    for row, layer in enumerate(chosen):
        ax_dist, ax_rel, ax_cos = axes[row]
        for variant, rec in records.items():
            if layer not in rec:
                continue
            r, color = rec[layer], variant_color(variant)
            with np.errstate(divide="ignore", invalid="ignore"):
                relative = np.asarray(r["dist"], float) / np.asarray(r["grad_norm"], float)
            style = {"color": color, "lw": 1.3, "marker": ".", "ms": 3}
            ax_dist.plot(r["step"], _for_log(r["dist"]), **style)
            ax_rel.plot(r["step"], _for_log(relative), **style)
            ax_cos.plot(r["step"], r["cosine"], **style)
        title = _layer_title(records, layer)
        ax_dist.set_title(f"{title}: ℓ2 difference")
        ax_rel.set_title(f"{title}: relative to ‖G‖")
        ax_cos.set_title(f"{title}: cosine angle")
        ax_dist.set_ylabel("‖G − G′‖₂")
        ax_rel.set_ylabel("‖G − G′‖₂ / ‖G‖₂")
        ax_cos.set_ylabel("cos(G, G′)")
        if np.any([np.any(_for_log(r[layer]["dist"]) > 0) for r in records.values() if layer in r]):
            _log_axis(ax_dist)
            _log_axis(ax_rel)
        for ax in (ax_dist, ax_rel, ax_cos):
            ax.set_xlabel("training step")
            ax.grid(True, alpha=0.3)
    if not chosen:
        axes[0, 0].text(0.5, 0.5, "no ICS records", transform=axes[0, 0].transAxes, ha="center")
    fig.suptitle(
        "Internal covariate shift (Definition 2.1): the layer's gradient before (G) and after "
        "(G′) the preceding layers' update",
        fontsize=10,
    )
    _figure_legend(fig, _legend_handles(records))
    return fig


def activations_figure(
    records: LayerRecords, layers: Sequence[int] | None = None, *, unit: bool = True
) -> Figure:
    """Distributional stability: a layer's input to the ReLU over training, per variant.

    ``records`` is ``landscape.results.load_activations(run_dir)``. One row per layer (default:
    up to three spread over the recorded ones): (a) the band between the 15th and 85th
    percentiles with the median as a line (Ioffe & Szegedy's Figure 1; of one unit, the
    recorded ``unit`` channel, or of all units pooled with ``unit=False``); (b) and (c) the
    change of the mean and of the variance from step t to t + 1 (the paper's Figure 8; absolute
    values, log scale) when recorded, else the mean and the variance themselves.
    """
    available = _recorded_layers(records)
    if layers is None:
        picks = np.linspace(0, len(available) - 1, min(3, len(available))) if available else []
        chosen = list(dict.fromkeys(available[int(i + 0.5)] for i in picks))
    else:
        chosen = nearest_layers(available, layers)
    prefix = "unit_" if unit else ""
    has_change = any(
        np.isfinite(r[n][f"d_{prefix}mean"]).any() for r in records.values() for n in r
    )
    fig, axes = _new_figure(3, max(len(chosen), 1))
    for row, layer in enumerate(chosen):
        ax_p, ax_m, ax_v = axes[row]
        for variant, rec in records.items():
            if layer not in rec:
                continue
            r, color = rec[layer], variant_color(variant)
            steps, p = r["step"], np.asarray(r[f"{prefix}percentiles"], float)
            ax_p.fill_between(steps, p[:, 0], p[:, -1], color=color, alpha=0.3, lw=0)
            ax_p.plot(steps, p[:, 0], color=color, lw=0.6)
            ax_p.plot(steps, p[:, -1], color=color, lw=0.6)
            ax_p.plot(steps, p[:, p.shape[1] // 2], color=color, lw=1.3)
            for ax, key in ((ax_m, "mean"), (ax_v, "var")):
                if has_change:
                    ax.plot(steps, _for_log(np.abs(r[f"d_{prefix}{key}"])), color=color, lw=1.2)
                else:
                    ax.plot(steps, r[f"{prefix}{key}"], color=color, lw=1.2)
        title = _layer_title(records, layer)
        units = {r[layer].get("unit") for r in records.values() if layer in r}
        which = f"unit {next(iter(units))}" if unit and len(units) == 1 else "all units"
        q = next(r[layer].get("q") for r in records.values() if layer in r)
        levels = "/".join(f"{v:g}" for v in q) if q else "15/50/85"
        ax_p.set_title(f"{title}, {which}: {levels}th percentiles", fontsize=9)
        ax_p.set_ylabel("input to the ReLU")
        if has_change:
            ax_m.set_title(f"{title}: |Δ mean| between steps t, t+1", fontsize=9)
            ax_v.set_title(f"{title}: |Δ variance| between steps t, t+1", fontsize=9)
            _log_axis(ax_m)
            _log_axis(ax_v)
        else:
            ax_m.set_title(f"{title}: mean", fontsize=9)
            ax_v.set_title(f"{title}: variance", fontsize=9)
        for ax in (ax_p, ax_m, ax_v):
            ax.set_xlabel("training step")
            ax.grid(True, alpha=0.3)
    if not chosen:
        axes[0, 0].text(
            0.5, 0.5, "no activation records", transform=axes[0, 0].transAxes, ha="center"
        )
    modes = sorted({r[n].get("bn_mode", "none") for r in records.values() for n in r} - {"none"})
    fig.suptitle(
        "Distribution of each layer's input to the ReLU on a fixed held-out batch"
        + (f" (BatchNorm in {' and '.join(modes)} mode)" if modes else ""),
        fontsize=10,
    )
    _figure_legend(fig, _legend_handles(records, band=True))
    return fig


def shift_figures(run_dir: str | os.PathLike) -> dict[str, Figure]:
    """Returns the ICS and activation figures of a run that has their records (else none)."""
    from landscape.results import load_activations, load_ics

    figures: dict[str, Figure] = {}
    ics = load_ics(run_dir)
    if ics:
        figures["internal_covariate_shift"] = ics_figure(ics)
    activations = load_activations(run_dir)
    if activations:
        figures["activations"] = activations_figure(activations)
    return figures


# --- curvature: sharpness over training and its link to the probe ------------------------------


def _mode_note(hessian: Records) -> str:
    modes = sorted({str(m) for rec in hessian.values() for m in np.asarray(rec.get("mode", []))})
    names = {"train": "BatchNorm in train mode (batch statistics)", "eval": "eval mode"}
    return ", ".join(names.get(m, m) for m in modes)


def sharpness_figure(hessian: Records) -> Figure:
    """Sharpness over training: (a) the top Hessian eigenvalue, (b) the trace, per variant.

    ``hessian`` is ``landscape.results.load_hessian(run_dir)``. (a) λ_max (Lanczos) at each
    recorded step on a log axis, with the edge of stability 2/lr of gradient descent (Cohen et
    al. 2021) as a dashed line; (b) Hutchinson's trace with a band of ±2 standard errors (log
    axis when every value is positive). The Hessian's mode is in the title.
    """
    fig, axes = _new_figure(2)
    ax_top, ax_trace = axes[0]
    eos = set()
    trace_positive = True
    for variant, rec in hessian.items():
        color = variant_color(variant)
        steps = np.asarray(rec["step"])
        ax_top.plot(steps, _for_log(rec["lambda_max"]), color=color, marker="o", ms=3, lw=1.4)
        trace = np.asarray(rec.get("trace", np.full(steps.shape, np.nan)), np.float64)
        err = 2 * np.nan_to_num(np.asarray(rec.get("trace_stderr", 0 * trace), np.float64))
        if np.isfinite(trace).any():
            trace_positive &= bool(np.all(trace[np.isfinite(trace)] - err[np.isfinite(trace)] > 0))
            ax_trace.fill_between(steps, trace - err, trace + err, color=color, alpha=0.25, lw=0)
            ax_trace.plot(steps, trace, color=color, marker="o", ms=3, lw=1.4)
        if "eos" in rec:
            eos.update(float(e) for e in np.asarray(rec["eos"]) if np.isfinite(e))
    handles = _legend_handles(hessian)
    for value in sorted(eos):
        ax_top.axhline(value, color="0.3", ls="--", lw=1.0)
    if eos:
        label = "edge of stability 2/lr = " + ", ".join(f"{v:g}" for v in sorted(eos))
        handles.append(Line2D([], [], color="0.3", ls="--", lw=1.0, label=label))
    _log_axis(ax_top)
    if trace_positive and any(
        np.isfinite(np.asarray(r.get("trace", []), float)).any() for r in hessian.values()
    ):
        _log_axis(ax_trace)
    ax_top.set_title("(a) top Hessian eigenvalue λ_max")
    ax_top.set_ylabel("λ_max (Lanczos)")
    ax_trace.set_title("(b) Hessian trace (± 2 s.e.)")
    ax_trace.set_ylabel("tr H (Hutchinson)")
    for ax in (ax_top, ax_trace):
        ax.set_xlabel("training step")
        ax.grid(True, which="major", alpha=0.3)
    fig.suptitle(f"Sharpness over training — {_mode_note(hessian)}", fontsize=10)
    _figure_legend(fig, handles)
    return fig


def curvature_link_figure(hessian: Records) -> Figure:
    """The probe against the Hessian, per recorded step and variant, in one panel (log y).

    Solid: the paper's effective β-smoothness at a small step size η (App. A.2.2); dashed:
    ‖H g‖/‖g‖, its limit as η → 0; dotted: λ_max, an upper bound of ‖H g‖/‖g‖. Where solid
    and dashed agree the probe measures curvature along g; the gap to λ_max shows how far g is
    from the sharpest direction. Dash-dotted: β over the run's grid of step sizes, as in Fig. 4c.
    On ReLU networks a step of any size may cross kinks (ReLU, max-pool), where the gradient
    jumps: β at small η then exceeds ‖H g‖/‖g‖ instead of tending to it.
    """
    fig, axes = _new_figure(1)
    ax = axes[0, 0]
    fig.set_size_inches(_PANEL_SIZE[0] * 1.8, _PANEL_SIZE[1] + 1.2)
    styles = (
        ("beta_small", "-", "o", "effective β at small η (probe)"),
        ("hg_ratio", "--", "", "‖H g‖ / ‖g‖"),
        ("lambda_max", ":", "", "λ_max"),
        ("beta", "-.", "", "β over the probe's grid (Fig. 4c)"),
    )
    for variant, rec in hessian.items():
        color = variant_color(variant)
        for key, ls, marker, _ in styles:
            if key in rec:
                ax.plot(
                    rec["step"], _for_log(rec[key]), color=color, ls=ls, marker=marker, ms=3, lw=1.3
                )
    _log_axis(ax)
    ax.set_xlabel("training step")
    ax.set_ylabel("curvature (loss / parameter²)")
    ax.grid(True, which="major", alpha=0.3)
    ax.set_title(f"Probe and Hessian along g — {_mode_note(hessian)}", fontsize=10)
    handles = _legend_handles(hessian)
    handles += [
        Line2D([], [], color="0.3", ls=ls, marker=marker, ms=3, lw=1.3, label=label)
        for _, ls, marker, label in styles
    ]
    # Three columns: variants and line styles would overflow the single panel's width at four.
    fig.legend(handles=handles, loc="outside lower center", ncol=3, frameon=False, fontsize=9)
    return fig


# --- the deep linear network (App. A.1; the paper's Figures 10 and 13) ----------------------------

DLN_LOSS_LABEL = r"$\Vert F(X) - AX\Vert_F^2$"  # the training objective over the full batch X


def dln_title(config: dict[str, Any]) -> str | None:
    """Returns a title naming the deep linear network of a run's config, or None for others."""
    from landscape.config import dln_depth, is_dln

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
    """A regression run's curves: (a) training loss per step, (b) test loss at each evaluation.

    ``metrics`` is ``landscape.results.load_metrics(run_dir)`` of a deep linear network run,
    on log axes: (a) the training objective ``||F(X) - A X||_F^2`` summed over the full batch,
    (b) the test squared error per held-out sample ``||f(x) - A x||^2`` (mean over samples).
    There is no accuracy to draw. ``smooth`` as in ``training_curves_figure``.
    """
    fig, axes = _new_figure(2)
    ax_train, ax_test = axes[0]
    any_test = False
    for variant, m in metrics.items():
        color = variant_color(variant)
        train = m.get("train") or {}
        if train and len(train.get("step", ())) and "loss" in train:
            steps = np.asarray(train["step"])
            values = _for_log(train["loss"])
            window = max(1, len(steps) // 50) if smooth is None else smooth
            if window > 1:
                ax_train.plot(steps, values, color=color, lw=0.5, alpha=0.25)
                values = moving_average(values, window)
            ax_train.plot(steps, values, color=color, lw=1.5)
        test = m.get("test") or {}
        if test and len(test.get("step", ())) and "test_loss" in test:
            any_test = True
            ax_test.plot(
                test["step"], _for_log(test["test_loss"]), color=color, marker="o", ms=4, lw=1.3
            )
    labels = (
        ("(a) training loss (full batch)", DLN_LOSS_LABEL + ", summed over samples"),
        ("(b) test loss (held-out inputs)", r"$\Vert f(x) - Ax\Vert^2$, mean over samples"),
    )
    for ax, (title, ylabel) in zip(axes[0], labels, strict=True):
        _log_axis(ax)
        ax.set_title(title)
        ax.set_ylabel(ylabel)
        ax.set_xlabel("training step")
        ax.grid(True, which="major", alpha=0.3)
    if not any_test:
        _say_empty(ax_test, "no evaluation recorded")
    _figure_legend(fig, _legend_handles(metrics))
    return fig


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
    if title is None:
        return figures
    out = dict(figures)
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
