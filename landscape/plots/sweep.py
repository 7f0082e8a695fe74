"""The figure of a sweep: what each configuration ended with, against the grid's first axis.

Four panels: the final training loss, the last test accuracy, and the probe's medians of the
effective β-smoothness and of the loss band, one line per variant (and per value of the grid's
other axes). Only finished configurations are drawn. One whose training diverged has no values to draw; it
is marked with a cross at the top of every panel, so "up to which learning rate does it train" is read off the
crosses. Numeric axes spanning a factor of ten or more are drawn on a log scale; other axes
(architectures, optimisers) as categories.
"""

from __future__ import annotations

import os
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np
from matplotlib.figure import Figure
from matplotlib.lines import Line2D

from landscape.plots.style import (
    figure_legend,
    log_axis,
    new_figure,
    save_figure,
    variant_color,
    variant_label,
)

# (summary column, panel title, log scale)
PANELS = (
    ("train_loss", "final training loss (nats)", True),
    ("test_accuracy", "test accuracy", False),
    ("beta", "effective β-smoothness (median)", True),
    ("loss_band", "loss band (median)", True),
)
# Series of one variant (the other axes' values) differ by line style on a numeric axis; on a
# categorical one the points are not joined (no order between categories), so by marker.
_LINESTYLES = ("-", "--", ":", "-.")
_MARKERS = ("o", "s", "^", "D")


def _look(position: int, numeric: bool) -> dict[str, Any]:
    if numeric:
        return {"ls": _LINESTYLES[position % 4], "marker": "o", "markersize": 4}
    return {"ls": "none", "marker": _MARKERS[position % 4], "markersize": 6}


def _is_number(value: Any) -> bool:
    return isinstance(value, int | float) and not isinstance(value, bool)


def _x_axis(axes: Sequence[str]) -> str:
    """The grid axis drawn along x: the first one that is not the variant, else the variant."""
    return next((a for a in axes if a != "variant"), "variant")


def sweep_figure(rows: Sequence[dict[str, Any]], axes: Sequence[str]) -> Figure | None:
    """Returns the figure of a sweep's ``rows`` (``sweep.summarize_sweep``'s) over its grid
    ``axes`` (their names in grid order), or None when there is nothing to draw."""
    rows = [row for row in rows if row.get("status", "done") == "done"]  # finished ones only
    if not rows or not axes:
        return None
    x_key = _x_axis(axes)
    others = [a for a in axes if a not in (x_key, "variant")]
    xs = list(dict.fromkeys(row[x_key] for row in rows))
    numeric = all(_is_number(x) for x in xs)
    position = {x: (float(x) if numeric else i) for i, x in enumerate(xs)}
    spread = numeric and min(xs) > 0 and max(xs) / min(xs) >= 10

    def series_of(row: dict[str, Any]) -> tuple:
        variant = () if x_key == "variant" else (row["variant"],)
        return (*variant, *(row[o] for o in others))

    series = list(dict.fromkeys(series_of(row) for row in rows))
    fig, panels = new_figure(2, 2)
    any_diverged = False
    for ax, (key, title, log_y) in zip(panels.flat, PANELS, strict=True):
        for index, name in enumerate(series):
            mine = sorted(
                (row for row in rows if series_of(row) == name), key=lambda r: position[r[x_key]]
            )
            color = variant_color(mine[0]["variant"]) if x_key != "variant" else "0.25"
            look = _look(index if x_key == "variant" else others_index(series, name), numeric)
            kept = [r for r in mine if r.get("diverged_at") is None and r.get(key) is not None]
            ax.plot(
                [position[r[x_key]] for r in kept],
                [r[key] for r in kept],
                color=color,
                **look,
            )
            diverged = [position[r[x_key]] for r in mine if r.get("diverged_at") is not None]
            if diverged:
                any_diverged = True
                ax.plot(
                    diverged,
                    [0.96] * len(diverged),
                    ls="",
                    marker="x",
                    markersize=8,
                    markeredgewidth=2,
                    color=color,
                    transform=ax.get_xaxis_transform(),
                    clip_on=False,
                )
        ax.set_title(title, fontsize=10)
        ax.set_xlabel(x_key)
        if spread:
            ax.set_xscale("log")
        if not numeric:
            ax.set_xticks(range(len(xs)), [str(x) for x in xs], rotation=20)
            ax.set_xlim(-0.5, len(xs) - 0.5)
        if log_y and _positive(rows, key):
            log_axis(ax)
        ax.grid(alpha=0.3)
    handles = [_series_handle(name, x_key, others, series, numeric) for name in series]
    if any_diverged:
        handles.append(
            Line2D([], [], ls="", marker="x", markeredgewidth=2, color="0.3", label="diverged")
        )
    figure_legend(fig, handles)
    return fig


def others_index(series: list[tuple], name: tuple) -> int:
    """Returns the position of ``name``'s values of the other axes among those of its variant's
    series: the line style that tells them apart."""
    same_variant = [s for s in series if s[0] == name[0]]
    return same_variant.index(name)


def _positive(rows: Sequence[dict[str, Any]], key: str) -> bool:
    values = np.asarray([r[key] for r in rows if r.get(key) is not None], dtype=np.float64)
    return bool(values.size) and bool(np.all(values[np.isfinite(values)] > 0))


def _series_handle(
    name: tuple, x_key: str, others: list[str], series: list[tuple], numeric: bool
) -> Line2D:
    if x_key == "variant":
        label = ", ".join(f"{o}={v}" for o, v in zip(others, name, strict=True)) or "runs"
        look = _look(series.index(name), numeric)
        return Line2D([], [], color="0.25", label=label, **look)
    variant, *values = name
    extra = ", ".join(f"{o}={v}" for o, v in zip(others, values, strict=True))
    label = variant_label(variant) + (f" ({extra})" if extra else "")
    look = _look(others_index(series, name), numeric)
    return Line2D([], [], color=variant_color(variant), label=label, **look)


def write_sweep_figure(
    rows: Sequence[dict[str, Any]], axes: Sequence[str], path_stem: str | os.PathLike
) -> list[Path]:
    """Draws ``sweep_figure`` and writes it as ``path_stem.png`` and ``.pdf``; returns the paths
    written (none when there is nothing to draw)."""
    fig = sweep_figure(rows, axes)
    return [] if fig is None else save_figure(fig, path_stem)
