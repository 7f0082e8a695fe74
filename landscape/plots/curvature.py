"""Curvature over training: sharpness and its link to the probe's effective beta
(``landscape hessian``).
"""

from __future__ import annotations

import numpy as np
from matplotlib.figure import Figure
from matplotlib.lines import Line2D

from landscape.plots.style import (
    PANEL_SIZE,
    Records,
    figure_legend,
    for_log,
    legend_handles,
    log_axis,
    new_figure,
    variant_color,
)


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
    fig, axes = new_figure(2)
    ax_top, ax_trace = axes[0]
    eos = set()
    trace_positive = True
    for variant, rec in hessian.items():
        color = variant_color(variant)
        steps = np.asarray(rec["step"])
        ax_top.plot(steps, for_log(rec["lambda_max"]), color=color, marker="o", ms=3, lw=1.4)
        trace = np.asarray(rec.get("trace", np.full(steps.shape, np.nan)), np.float64)
        err = 2 * np.nan_to_num(np.asarray(rec.get("trace_stderr", 0 * trace), np.float64))
        if np.isfinite(trace).any():
            trace_positive &= bool(np.all(trace[np.isfinite(trace)] - err[np.isfinite(trace)] > 0))
            ax_trace.fill_between(steps, trace - err, trace + err, color=color, alpha=0.25, lw=0)
            ax_trace.plot(steps, trace, color=color, marker="o", ms=3, lw=1.4)
        if "eos" in rec:
            eos.update(float(e) for e in np.asarray(rec["eos"]) if np.isfinite(e))
    handles = legend_handles(hessian)
    for value in sorted(eos):
        ax_top.axhline(value, color="0.3", ls="--", lw=1.0)
    if eos:
        label = "edge of stability 2/lr = " + ", ".join(f"{v:g}" for v in sorted(eos))
        handles.append(Line2D([], [], color="0.3", ls="--", lw=1.0, label=label))
    log_axis(ax_top)
    if trace_positive and any(
        np.isfinite(np.asarray(r.get("trace", []), float)).any() for r in hessian.values()
    ):
        log_axis(ax_trace)
    ax_top.set_title("(a) top Hessian eigenvalue λ_max")
    ax_top.set_ylabel("λ_max (Lanczos)")
    ax_trace.set_title("(b) Hessian trace (± 2 s.e.)")
    ax_trace.set_ylabel("tr H (Hutchinson)")
    for ax in (ax_top, ax_trace):
        ax.set_xlabel("training step")
        ax.grid(True, which="major", alpha=0.3)
    fig.suptitle(f"Sharpness over training — {_mode_note(hessian)}", fontsize=10)
    figure_legend(fig, handles)
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
    fig, axes = new_figure(1)
    ax = axes[0, 0]
    fig.set_size_inches(PANEL_SIZE[0] * 1.8, PANEL_SIZE[1] + 1.2)
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
                    rec["step"], for_log(rec[key]), color=color, ls=ls, marker=marker, ms=3, lw=1.3
                )
    log_axis(ax)
    ax.set_xlabel("training step")
    ax.set_ylabel("curvature (loss / parameter²)")
    ax.grid(True, which="major", alpha=0.3)
    ax.set_title(f"Probe and Hessian along g — {_mode_note(hessian)}", fontsize=10)
    handles = legend_handles(hessian)
    handles += [
        Line2D([], [], color="0.3", ls=ls, marker=marker, ms=3, lw=1.3, label=label)
        for _, ls, marker, label in styles
    ]
    # Three columns: variants and line styles would overflow the single panel's width at four.
    fig.legend(handles=handles, loc="outside lower center", ncol=3, frameon=False, fontsize=9)
    return fig
