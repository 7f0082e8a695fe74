"""Figure 3 (internal covariate shift) and the distributional-stability figure (pre-activation
percentiles) of ``landscape ics`` and ``landscape activations``.
"""

from __future__ import annotations

import os
from collections.abc import Iterable, Sequence
from typing import Any

import numpy as np
from matplotlib.figure import Figure

from landscape.plots.style import (
    figure_legend,
    for_log,
    legend_handles,
    log_axis,
    nearest_steps,
    new_figure,
    variant_color,
)
from landscape.results import load_activations, load_ics

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
    fig, axes = new_figure(3, max(len(chosen), 1))
    for row, layer in enumerate(chosen):
        ax_dist, ax_rel, ax_cos = axes[row]
        for variant, rec in records.items():
            if layer not in rec:
                continue
            r, color = rec[layer], variant_color(variant)
            with np.errstate(divide="ignore", invalid="ignore"):
                relative = np.asarray(r["dist"], float) / np.asarray(r["grad_norm"], float)
            style = {"color": color, "lw": 1.3, "marker": ".", "ms": 3}
            ax_dist.plot(r["step"], for_log(r["dist"]), **style)
            ax_rel.plot(r["step"], for_log(relative), **style)
            ax_cos.plot(r["step"], r["cosine"], **style)
        title = _layer_title(records, layer)
        ax_dist.set_title(f"{title}: ℓ2 difference")
        ax_rel.set_title(f"{title}: relative to ‖G‖")
        ax_cos.set_title(f"{title}: cosine angle")
        ax_dist.set_ylabel("‖G − G′‖₂")
        ax_rel.set_ylabel("‖G − G′‖₂ / ‖G‖₂")
        ax_cos.set_ylabel("cos(G, G′)")
        if np.any([np.any(for_log(r[layer]["dist"]) > 0) for r in records.values() if layer in r]):
            log_axis(ax_dist)
            log_axis(ax_rel)
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
    figure_legend(fig, legend_handles(records))
    return fig


def activations_figure(
    records: LayerRecords, layers: Sequence[int] | None = None, *, unit: bool = True
) -> Figure:
    """Distributional stability: a layer's input to its nonlinearity (VGG's ReLU, the MLP's
    sigmoid) over training, per variant.

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
    fig, axes = new_figure(3, max(len(chosen), 1))
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
                    ax.plot(steps, for_log(np.abs(r[f"d_{prefix}{key}"])), color=color, lw=1.2)
                else:
                    ax.plot(steps, r[f"{prefix}{key}"], color=color, lw=1.2)
        title = _layer_title(records, layer)
        units = {r[layer].get("unit") for r in records.values() if layer in r}
        which = f"unit {next(iter(units))}" if unit and len(units) == 1 else "all units"
        q = next(r[layer].get("q") for r in records.values() if layer in r)
        levels = "/".join(f"{v:g}" for v in q) if q else "15/50/85"
        ax_p.set_title(f"{title}, {which}: {levels}th percentiles", fontsize=9)
        ax_p.set_ylabel("input to the nonlinearity")
        if has_change:
            ax_m.set_title(f"{title}: |Δ mean| between steps t, t+1", fontsize=9)
            ax_v.set_title(f"{title}: |Δ variance| between steps t, t+1", fontsize=9)
            log_axis(ax_m)
            log_axis(ax_v)
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
        "Distribution of each layer's input to its nonlinearity on a fixed held-out batch"
        + (f" (BatchNorm in {' and '.join(modes)} mode)" if modes else ""),
        fontsize=10,
    )
    figure_legend(fig, legend_handles(records, band=True))
    return fig


def shift_figures(run_dir: str | os.PathLike) -> dict[str, Figure]:
    """Returns the ICS and activation figures of a run that has their records (else none)."""
    figures: dict[str, Figure] = {}
    ics = load_ics(run_dir)
    if ics:
        figures["internal_covariate_shift"] = ics_figure(ics)
    activations = load_activations(run_dir)
    if activations:
        figures["activations"] = activations_figure(activations)
    return figures
