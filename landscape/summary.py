"""The end-of-run summary: medians over steps of the probe's reductions, early phase and overall.

The early phase matters: for its first ~150 steps a standard VGG sits on a plateau with tiny
gradients and looks *smoother* than its BatchNorm twin, so a single overall number can hide the
regime the paper describes (docs/definitions.md#the-landscape-probe, "The summary"). Both are
reported side by side.
"""

from __future__ import annotations

from typing import Any

import numpy as np

# (record field, column title) of the quantities summarised.
QUANTITIES = (
    ("loss_band", "loss band (max-min)"),
    ("grad_dist_max", "grad. predictiveness (max dist.)"),
    ("beta", "effective beta"),
)
PHASES = ("early", "late", "overall")


def phase_masks(steps: np.ndarray, total_steps: int, early_fraction: float = 0.1) -> dict:
    """Returns boolean masks over ``steps``: early (first ``early_fraction`` of the run), late, all."""
    cut = early_fraction * total_steps
    steps = np.asarray(steps)
    return {"early": steps < cut, "late": steps >= cut, "overall": np.ones(steps.shape, bool)}


def median_finite(values: np.ndarray) -> float:
    """Returns the median of ``values`` where +inf (divergence) counts as larger than any number.

    NaN is treated as +inf too. Returns NaN for an empty selection.
    """
    values = np.asarray(values, dtype=np.float64)
    if values.size == 0:
        return float("nan")
    return float(np.median(np.where(np.isnan(values), np.inf, values)))


def summarize_run(
    records: dict[str, dict[str, np.ndarray]],
    total_steps: int | None = None,
    early_fraction: float = 0.1,
) -> list[dict[str, Any]]:
    """Returns one row per (variant, phase) with medians over steps of each quantity.

    ``records`` is ``landscape.results.load(run_dir)``. Each row: ``variant``, ``phase``,
    ``steps`` (number of probed steps in the phase), ``diverged`` (steps with at least one
    non-finite eta) and the medians of ``loss_band``, ``grad_dist_max`` and ``beta``.
    """
    if total_steps is None:
        total_steps = 1 + max((int(r["step"].max()) for r in records.values() if len(r)), default=0)
    rows = []
    for variant, rec in records.items():
        masks = phase_masks(rec["step"], total_steps, early_fraction)
        for phase in PHASES:
            mask = masks[phase]
            row: dict[str, Any] = {
                "variant": variant,
                "phase": phase,
                "steps": int(mask.sum()),
                "diverged": int((rec["diverged"][mask] > 0).sum()),
            }
            for key, _ in QUANTITIES:
                row[key] = median_finite(rec[key][mask])
            rows.append(row)
    return rows


def ratios(rows: list[dict[str, Any]], numerator: str, denominator: str) -> list[dict[str, Any]]:
    """Returns per phase the ratio numerator/denominator of each quantity's median.

    E.g. ``ratios(rows, "standard", "batchnorm")``: values above 1 mean the standard network's
    landscape is rougher than the BatchNorm network's in that phase.
    """
    by_key = {(r["variant"], r["phase"]): r for r in rows}
    out = []
    for phase in PHASES:
        num, den = by_key.get((numerator, phase)), by_key.get((denominator, phase))
        if num is None or den is None:
            continue
        row: dict[str, Any] = {"variant": f"{numerator}/{denominator}", "phase": phase}
        for key, _ in QUANTITIES:
            with np.errstate(divide="ignore", invalid="ignore"):
                row[key] = float(np.float64(num[key]) / np.float64(den[key]))
        out.append(row)
    return out
