"""The optimisation path on its PCA directions over the loss of their plane (``landscape
trajectory``; Li et al. 2018, Sec. 7 and Fig. 9)."""

from __future__ import annotations

from typing import Any

import numpy as np
from matplotlib.colors import LogNorm, Normalize
from matplotlib.figure import Figure

from landscape.plots.style import PANEL_SIZE, say_empty, variant_color, variant_label


def _ordinal(i: int) -> str:
    return {1: "1st", 2: "2nd"}.get(i, f"{i}th")


def _levels(loss: np.ndarray, count: int = 16) -> tuple[Normalize, np.ndarray] | None:
    """Returns the colour scale and contour levels of one panel, or None with nothing finite.

    Log-spaced when every loss is positive: the floor of the valley and its walls both get
    lines. Each panel has its own: the variants' losses can differ by orders of magnitude, and
    the lines are labelled with their values."""
    finite = loss[np.isfinite(loss)]
    if finite.size == 0:
        return None
    lo, hi = float(finite.min()), float(finite.max())
    if hi <= lo:
        hi = lo + (abs(lo) * 1e-3 or 1e-3)
    if lo > 0:
        return LogNorm(lo, hi), np.geomspace(lo, hi, count)
    return Normalize(lo, hi), np.linspace(lo, hi, count)


def _label_format(levels: np.ndarray) -> str:
    """Returns a format with enough decimals that neighbouring labelled levels differ."""
    gaps = np.diff(levels[::2])
    gap = float(gaps.min()) if gaps.size else float(abs(levels[0]) or 1.0)
    decimals = int(np.clip(1 - np.floor(np.log10(gap)), 0, 8)) if gap > 0 else 3
    return f"%.{decimals}f"


def _subtitle(record: dict[str, Any]) -> str:
    s = record["header"].get("settings", {})
    info = record["header"].get("info", {})
    steps = info.get("path", {}).get("steps", [])
    span = f"{len(steps)} checkpoints, steps {steps[0]}–{steps[-1]}" if steps else ""
    kind = (
        "filter-normalised PCA directions (path projected by least squares)"
        if s.get("filter_normalize")
        else "unit PCA directions of x_t − x_final"
    )
    mode = (
        "eval mode (BatchNorm: running averages)"
        if s.get("mode") == "eval"
        else "train mode (BatchNorm: batch statistics)"
    )
    batches = s.get("batches", 1)
    on = "the final step's batch" if batches == 1 else f"{batches} training batches"
    return f"{kind}; {span}\n{mode}, loss on {on}"


def _new_figure(records: dict[str, dict[str, Any]]) -> tuple[Figure, list]:
    """Returns a figure with one panel per variant, sized to the panels' aspect (equal units on
    both axes), so a wide, flat plane does not leave the figure mostly blank."""
    ratios = [
        (rec["axes"][1][-1] - rec["axes"][1][0]) / (rec["axes"][0][-1] - rec["axes"][0][0])
        for rec in records.values()
        if rec["axes"][0][-1] > rec["axes"][0][0]
    ]
    ratio = float(np.clip(max(ratios, default=0.8), 0.35, 1.0))
    n = max(len(records), 1)
    width = PANEL_SIZE[0] * n
    fig = Figure(figsize=(width, 0.8 * PANEL_SIZE[0] * ratio + 1.3), layout="constrained")
    axes = fig.subplots(1, n, squeeze=False)
    return fig, list(axes[0])


def _mark(ax, x: np.ndarray, y: np.ndarray, i: int, j: int, text: str, **style) -> None:
    """Marks point i of the path and writes ``text`` beside it, on the side away from its
    neighbour j so that the label does not sit on the path."""
    ax.plot(x[i], y[i], ls="", zorder=4, **style)
    dx, dy = np.sign(x[j] - x[i]), np.sign(y[j] - y[i])
    ax.annotate(
        text,
        (x[i], y[i]),
        textcoords="offset points",
        xytext=(-8 * dx if dx else 8, -10 * dy if dy else 8),
        ha="right" if dx > 0 else "left",
        va="top" if dy > 0 else "bottom",
        fontsize=8,
    )


def trajectory_figure(records: dict[str, dict[str, Any]]) -> Figure:
    """The optimisation path on its first two PCA directions over contours of the loss in
    their plane, one panel per variant side by side (Li et al. 2018, Fig. 9 style).

    ``records`` is ``{variant: landscape.surface_records.load_record(...)}`` of one trajectory
    record. Each axis is labelled with the share of the path's variance its component explains;
    the start of the path is a circle, x_final (the origin) a star. Contour lines are labelled
    with the loss in nats, over a light fill of the same scale; points not evaluated yet are
    left blank.
    """
    fig, axes = _new_figure(records)
    for ax, (variant, rec) in zip(axes, records.items(), strict=False):
        info = rec["header"].get("info", {})
        a, b = rec["axes"]
        loss = np.asarray(rec["loss"], float)
        scale = _levels(loss)
        if scale is None:
            say_empty(ax, "no grid point evaluated yet")
        else:
            norm, levels = scale
            z = np.ma.masked_invalid(loss.T)  # rows of the record are a; contour wants Z[b, a]
            ax.contourf(a, b, z, levels=levels, norm=norm, cmap="viridis", alpha=0.35)
            lines = ax.contour(a, b, z, levels=levels, norm=norm, cmap="viridis", linewidths=0.9)
            ax.clabel(lines, levels[::2], inline=True, fontsize=6, fmt=_label_format(levels))
        path = info.get("path", {})
        xs, ys = np.asarray(path.get("a", [])), np.asarray(path.get("b", []))
        steps = path.get("steps", [])
        if xs.size:
            ax.plot(xs, ys, color="black", lw=1.2, marker=".", ms=4, zorder=3)
            if len(xs) > 1:
                start = f"step {steps[0]}" + (" (init)" if steps[0] == 0 else "")
                _mark(ax, xs, ys, 0, 1, start, marker="o", ms=8, color="white", mec="black")
                end = f"step {steps[-1]} (final)"
                _mark(ax, xs, ys, -1, -2, end, marker="*", ms=13, color="gold", mec="black")
        ratios = info.get("explained_variance_ratio", [])
        for i, setter in enumerate((ax.set_xlabel, ax.set_ylabel), start=1):
            share = f": {100 * ratios[i - 1]:.2f} %" if len(ratios) >= i else ""
            setter(f"{_ordinal(i)} PC{share}")
        ax.set_xlim(a[0], a[-1])
        ax.set_ylim(b[0], b[-1])
        ax.set_aspect("equal", adjustable="box")
        ax.set_title(variant_label(variant), color=variant_color(variant))
    first = next(iter(records.values()), None)
    if first is not None:
        fig.suptitle(
            "The optimisation path on its principal directions, over the loss of their plane "
            f"(Li et al. 2018, Sec. 7)\n{_subtitle(first)}",
            fontsize=9,
        )
    return fig
