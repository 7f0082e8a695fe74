"""Interactive loss pictures for the HTML report (the ``interactive`` extra: plotly).

A 2D surface becomes a 3D surface the reader rotates and zooms and a contour map whose hover
gives the loss at each grid point; a trajectory becomes its contour map with the optimisation
path on top, each checkpoint's step in its hover. One figure per picture, the variants side by
side. The report embeds plotly's script once (``plotly_script``), so the page stays one file that
opens offline. Like the other plots: records in, HTML out, no JAX.
"""

from __future__ import annotations

from typing import Any

import numpy as np
import plotly.graph_objects as go
from plotly.offline import get_plotlyjs
from plotly.subplots import make_subplots

from landscape.plots.style import variant_label


def plotly_script() -> str:
    """Returns a ``<script>`` element holding plotly's whole library (a few MB), for the page's
    head: the figures then render with no network access."""
    return f'<script type="text/javascript">{get_plotlyjs()}</script>'


def _finite_or_none(values: np.ndarray) -> list:
    """Returns ``values`` as nested lists with None where not finite (a gap in the plot)."""
    array = np.asarray(values, dtype=np.float64)
    return np.where(np.isfinite(array), array, np.nan).tolist()


def _hover(a_label: str, b_label: str) -> str:
    return f"{a_label} %{{x:.3g}}<br>{b_label} %{{y:.3g}}<br>loss %{{z:.5g}}<extra></extra>"


def surface_figure(name: str, records: dict[str, dict[str, Any]]) -> go.Figure:
    """Returns the interactive figure of a 2D surface record: per variant, a 3D surface above
    a contour map with hover values. ``records`` is ``{variant: load_record(...)}``."""
    variants = list(records)
    fig = make_subplots(
        rows=2,
        cols=len(variants),
        specs=[[{"type": "surface"}] * len(variants), [{"type": "contour"}] * len(variants)],
        subplot_titles=[variant_label(v) for v in variants] + [""] * len(variants),
        vertical_spacing=0.06,
    )
    for col, variant in enumerate(variants, 1):
        rec = records[variant]
        a, b = (np.asarray(axis, dtype=np.float64).tolist() for axis in rec["axes"])
        z = _finite_or_none(np.asarray(rec["loss"]).T)  # rows b, columns a
        hover = _hover("a", "b")
        fig.add_trace(
            go.Surface(x=a, y=b, z=z, colorscale="Viridis", showscale=False, hovertemplate=hover),
            row=1,
            col=col,
        )
        fig.add_trace(
            go.Contour(
                x=a, y=b, z=z, colorscale="Viridis", showscale=col == 1, hovertemplate=hover
            ),
            row=2,
            col=col,
        )
    fig.update_layout(
        title=f"{name}: L(x + a d1 + b d2) (drag to rotate, scroll to zoom, hover for values)",
        height=900,
        margin={"l": 40, "r": 20, "t": 70, "b": 40},
    )
    return fig


def trajectory_figure(name: str, records: dict[str, dict[str, Any]]) -> go.Figure:
    """Returns the interactive figure of a trajectory record: per variant, the loss contours
    on the two PCA directions with the path on top (hover: the checkpoint's step)."""
    variants = list(records)
    fig = make_subplots(
        rows=1, cols=len(variants), subplot_titles=[variant_label(v) for v in variants]
    )
    for col, variant in enumerate(variants, 1):
        rec = records[variant]
        info = rec["header"].get("info", {})
        ratios = info.get("explained_variance_ratio", [np.nan, np.nan])
        a, b = (np.asarray(axis, dtype=np.float64).tolist() for axis in rec["axes"])
        fig.add_trace(
            go.Contour(
                x=a,
                y=b,
                z=_finite_or_none(np.asarray(rec["loss"]).T),
                colorscale="Viridis",
                showscale=col == 1,
                hovertemplate=_hover("1st PC", "2nd PC"),
            ),
            row=1,
            col=col,
        )
        path = info.get("path", {})
        fig.add_trace(
            go.Scatter(
                x=path.get("a", []),
                y=path.get("b", []),
                mode="lines+markers",
                line={"color": "black"},
                marker={"size": 5, "color": "black"},
                customdata=path.get("steps", []),
                hovertemplate="step %{customdata}<extra></extra>",
                showlegend=False,
            ),
            row=1,
            col=col,
        )
        fig.update_xaxes(title_text=f"1st PC: {100 * ratios[0]:.1f} %", row=1, col=col)
        fig.update_yaxes(title_text=f"2nd PC: {100 * ratios[1]:.1f} %", row=1, col=col)
    fig.update_layout(
        title=f"{name}: the optimisation path on its PCA directions (hover for steps and losses)",
        height=520,
        margin={"l": 50, "r": 20, "t": 70, "b": 50},
    )
    return fig


def picture_html(name: str, records: dict[str, dict[str, Any]], div_id: str) -> str | None:
    """Returns the HTML ``<div>`` of the interactive version of picture ``name`` (a 2D surface or
    a trajectory), without plotly's script; None for the other kinds (1D slices,
    interpolations), which the static figures show fully."""
    header = next(iter(records.values()))["header"]
    if header.get("kind") == "trajectory":
        fig = trajectory_figure(name, records)
    elif header.get("kind", "surface") == "surface" and len(header.get("axes", ())) == 2:
        fig = surface_figure(name, records)
    else:
        return None
    return fig.to_html(full_html=False, include_plotlyjs=False, div_id=div_id)
