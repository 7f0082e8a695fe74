"""Figures: pure functions from records to ``matplotlib.figure.Figure``, one module per topic.

Every function takes the plain arrays of ``landscape.results`` and returns a new ``Figure``;
nothing here imports JAX, calls ``plt.show()`` or switches the global backend, so the same
functions work in a notebook, a headless CI job or ``landscape.report``.

A variant has one colour and one label in every figure (``variant_color``, ``variant_label``):
standard blue and BatchNorm red, as in the paper's figures. Divergence is data (a step size
that overflows gives +inf/NaN): non-finite values are never plotted as numbers, and the steps
where any step size diverged are marked with triangles along the top of the axes.

- ``style``: colours, labels, axes helpers, saving;
- ``training``: Figure 4, Figure 1, gradient distance against eta, the DLN, ``plot_run``;
- ``pictures``: surfaces and interpolation;
- ``trajectory``: the optimisation path on its PCA directions;
- ``shift``: internal covariate shift and pre-activation statistics;
- ``curvature``: sharpness over training and its link to the probe.
"""

from landscape.plots.curvature import curvature_link_figure, sharpness_figure
from landscape.plots.pictures import (
    interpolation_figure,
    surface_3d_figure,
    surface_contour_figure,
    surface_figures,
    surface_line_figure,
)
from landscape.plots.shift import activations_figure, ics_figure, nearest_layers, shift_figures
from landscape.plots.style import (
    LABELS,
    PALETTE,
    moving_average,
    nearest_steps,
    save_figure,
    variant_color,
    variant_label,
)
from landscape.plots.training import (
    dln_training_curves_figure,
    early_phase_end,
    figures_for_model,
    grad_dist_vs_eta_figure,
    loss_landscape_figure,
    plot_run,
    read_config,
    run_figures,
    training_curves_figure,
)
from landscape.plots.trajectory import trajectory_figure

__all__ = [
    "LABELS",
    "PALETTE",
    "activations_figure",
    "curvature_link_figure",
    "dln_training_curves_figure",
    "early_phase_end",
    "figures_for_model",
    "grad_dist_vs_eta_figure",
    "ics_figure",
    "interpolation_figure",
    "loss_landscape_figure",
    "moving_average",
    "nearest_layers",
    "nearest_steps",
    "plot_run",
    "read_config",
    "run_figures",
    "save_figure",
    "sharpness_figure",
    "shift_figures",
    "surface_3d_figure",
    "surface_contour_figure",
    "surface_figures",
    "surface_line_figure",
    "training_curves_figure",
    "trajectory_figure",
    "variant_color",
    "variant_label",
]
