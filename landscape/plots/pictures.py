"""Loss-landscape pictures: 1D and 2D surfaces and interpolation (``landscape surface``,
``landscape interpolate``); ``surface_figures`` also draws the trajectories of ``landscape
trajectory`` (``landscape.plots.trajectory``).
"""

from __future__ import annotations

import os
from collections.abc import Iterable
from typing import Any

import numpy as np
from matplotlib import colormaps
from matplotlib.figure import Figure

from landscape.plots.style import (
    figure_legend,
    legend_handles,
    log_axis,
    new_figure,
    variant_color,
    variant_label,
)
from landscape.plots.trajectory import trajectory_figure
from landscape.surface_records import load_surfaces


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
    fig, axes = new_figure(2 if has_acc else 1)
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
        log_axis(ax_loss)
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
    figure_legend(fig, legend_handles(records))
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
    fig, grid = new_figure(ncols, nrows, **subplot_kw)
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
    fig, axes = new_figure(2 if has_acc else 1)
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
        log_axis(axes[0, 0])
    for ax, ylabel in zip(axes[0], ("loss (nats)", "accuracy on the batch (%)"), strict=False):
        for end, text in ((0.0, f"step {s.get('from')}"), (1.0, f"step {s.get('to')}")):
            ax.axvline(end, color="0.4", ls=":", lw=1.0)
            ax.text(end, 1.01, text, transform=ax.get_xaxis_transform(), ha="center", fontsize=8)
        ax.set_xlabel("t")
        ax.set_ylabel(ylabel)
        ax.grid(True, which="major", alpha=0.3)
    axes[0, 0].set_title("L((1 − t) x_A + t x_B)", pad=14)
    fig.suptitle(_picture_subtitle(first), fontsize=9, color="0.3")
    figure_legend(fig, legend_handles(records))
    return fig


def surface_figures(
    run_dir: str | os.PathLike, names: Iterable[str] | None = None
) -> dict[str, Figure]:
    """Returns ``{name: Figure}`` for every picture recorded under ``RUN_DIR/<variant>/surfaces``
    (only the records called ``names`` when given).

    A 1D slice gives ``surface_<name>``, a 2D slice ``surface_<name>_contour`` and
    ``surface_<name>_3d``, an interpolation ``interpolation_<name>``, a trajectory
    ``trajectory_<name>`` (the default name makes it ``trajectory_trajectory``).
    """
    figures: dict[str, Figure] = {}
    wanted = None if names is None else set(names)
    for name, records in load_surfaces(run_dir).items():
        if wanted is not None and name not in wanted:
            continue
        header = _first(records)["header"]
        if header.get("kind") == "interpolation":
            figures[f"interpolation_{name}"] = interpolation_figure(records)
        elif header.get("kind") == "trajectory":
            figures[f"trajectory_{name}"] = trajectory_figure(records)
        elif len(header.get("axes", ())) == 2:
            figures[f"surface_{name}_contour"] = surface_contour_figure(records)
            figures[f"surface_{name}_3d"] = surface_3d_figure(records)
        else:
            figures[f"surface_{name}"] = surface_line_figure(records)
    return figures
