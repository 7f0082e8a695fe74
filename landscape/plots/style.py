"""What every figure shares: one colour and one label per variant, the axes helpers, the
marking of diverged steps, and saving.
"""

from __future__ import annotations

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

from landscape.files import atomic_open

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
    "layernorm": "#e377c2",
    "groupnorm": "#17becf",
    "rmsnorm": "#bcbd22",
    "weightnorm": "#393b79",
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
    "layernorm": "Standard + LayerNorm",
    "groupnorm": "Standard + GroupNorm",
    "rmsnorm": "Standard + RMSNorm",
    "weightnorm": "Standard + weight norm.",
}


EARLY_FRACTION = 0.1  # the summary's early phase (landscape.summary.phase_masks)


DIVERGED_LABEL = "step where an η diverged (non-finite, counted as +∞)"


PANEL_SIZE = (4.2, 3.4)  # inches per panel


def _group_count(variant: str) -> str | None:
    """Returns G of a ``groupnorm<G>`` variant, else None."""
    rest = variant.removeprefix("groupnorm")
    return rest if rest != variant and rest.isdigit() else None


def variant_color(variant: str) -> str:
    """Returns the fixed colour of a variant (hex string)."""
    if variant in PALETTE:
        return PALETTE[variant]
    if _group_count(variant):
        return PALETTE["groupnorm"]
    return _FALLBACK_COLORS[zlib.crc32(variant.encode()) % len(_FALLBACK_COLORS)]


def variant_label(variant: str) -> str:
    """Returns the legend label of a variant: the paper's wording where it has one."""
    groups = _group_count(variant)
    if groups:
        return f"Standard + GroupNorm ({groups} groups at most)"
    return LABELS.get(variant, variant)


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


def for_log(values: np.ndarray) -> np.ndarray:
    """Values a log axis can draw: non-finite and non-positive entries become NaN (gaps)."""
    values = np.asarray(values, dtype=np.float64)
    with np.errstate(invalid="ignore"):
        return np.where(np.isfinite(values) & (values > 0), values, np.nan)


def finite_max(per_eta: np.ndarray | None, reduced: np.ndarray) -> np.ndarray:
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


def diverged_steps(rec: dict[str, np.ndarray]) -> np.ndarray:
    steps = np.asarray(rec["step"])
    if "diverged" in rec:
        return steps[np.asarray(rec["diverged"]) > 0]
    return steps[~np.isfinite(np.asarray(rec.get("beta", np.zeros(steps.shape)), float))]


def mark_diverged(ax, steps: np.ndarray, color: str, row: int) -> bool:
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


def mark_early(ax, early_steps: float, x_start: float) -> None:
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


def log_axis(ax, axis: str = "y") -> None:
    """Puts ``axis`` of ``ax`` on a log scale with plain-number tick labels."""
    getattr(ax, f"set_{axis}scale")("log")
    target = getattr(ax, f"{axis}axis")
    target.set_major_formatter(_PlainLogFormatter())
    target.set_minor_formatter(_PlainLogFormatter(labelOnlyBase=False))


def headroom(ax, fraction: float = 0.12) -> None:
    """Raises the top of a log y axis by ``fraction`` of its decades (room for the markers)."""
    lo, hi = ax.get_ylim()
    if lo > 0 and hi > lo:
        ax.set_ylim(lo, hi * (hi / lo) ** fraction)


def legend_handles(
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


def new_figure(ncols: int, nrows: int = 1, **subplot_kw) -> tuple[Figure, np.ndarray]:
    fig = Figure(figsize=(PANEL_SIZE[0] * ncols, PANEL_SIZE[1] * nrows + 0.6), layout="constrained")
    axes = fig.subplots(nrows, ncols, squeeze=False, **subplot_kw)
    return fig, axes


def figure_legend(fig: Figure, handles: list) -> None:
    fig.legend(
        handles=handles,
        loc="outside lower center",
        ncol=min(len(handles), 4),
        frameon=False,
        fontsize=9,
    )


def say_empty(ax, text: str) -> None:
    """Writes ``text`` in the middle of an axis that has nothing to draw."""
    ax.text(0.5, 0.5, text, transform=ax.transAxes, ha="center", va="center", color="0.4")


def nearest_steps(available: np.ndarray, wanted: Iterable[float]) -> list[int]:
    """Returns, for each wanted step, the nearest step in ``available`` (duplicates removed)."""
    available = np.asarray(available)
    out: list[int] = []
    for w in wanted:
        s = int(available[np.argmin(np.abs(available - w))])
        if s not in out:
            out.append(s)
    return out


def shades(color: str, n: int) -> list[tuple[float, float, float]]:
    """``n`` shades of ``color`` from light (early) to dark (late): the hue stays the variant's."""
    rgb = np.asarray(to_rgb(color))
    if n <= 1:
        return [tuple(rgb)]
    cmap = LinearSegmentedColormap.from_list("variant", [0.55 * rgb + 0.45, rgb, 0.6 * rgb])
    return [tuple(cmap(x)[:3]) for x in np.linspace(0.0, 1.0, n)]


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
        with atomic_open(path, "wb") as f:
            fig.savefig(f, format=fmt, dpi=150, metadata=metadata)
        paths.append(path)
    return paths
