"""The HTML report of a run: one self-contained page with the summary, figures and configuration.

The page has no external resources (figures are inline base64 PNGs, the CSS is inline, no
scripts), so it can be mailed, archived or opened offline. Everything read from the run
directory (variant names, config, provenance) is HTML-escaped.
"""

from __future__ import annotations

import base64
import html
import io
import json
import os
from pathlib import Path
from typing import Any

import numpy as np

from landscape import __version__, plots
from landscape.files import atomic_write_text

try:  # the interactive extra (plotly): rotatable surfaces in the report; static ones otherwise
    from landscape.plots import interactive
except ImportError:
    interactive = None
from landscape.results import (
    divergence_line,
    load,
    load_divergence,
    load_hessian,
    load_ics,
    load_metrics,
)
from landscape.summary import QUANTITIES, ratios, summarize_run
from landscape.surface_records import load_surfaces

REPORT_FILE = "report.html"
_FIGURE_DPI = 110

_CSS = """
body { font-family: system-ui, -apple-system, "Segoe UI", Roboto, sans-serif; color: #222;
       max-width: 1200px; margin: 2em auto; padding: 0 1em; line-height: 1.45; }
h1 { font-size: 1.6em; margin-bottom: 0.2em; }
h2 { font-size: 1.25em; margin-top: 1.8em; border-bottom: 1px solid #ddd; padding-bottom: 0.2em; }
.sub { color: #666; margin-top: 0; }
table { border-collapse: collapse; margin: 0.6em 0; font-size: 0.92em; }
th, td { border: 1px solid #ddd; padding: 0.3em 0.7em; }
th { background: #f4f4f4; text-align: left; }
td.num { text-align: right; font-variant-numeric: tabular-nums; }
tr.ratio td { background: #fafafa; font-style: italic; }
td.diverged { color: #b00; }
figure { margin: 1.2em 0; }
figure img { max-width: 100%; height: auto; border: 1px solid #eee; }
figcaption { color: #555; font-size: 0.92em; margin-top: 0.3em; }
pre { background: #f7f7f7; border: 1px solid #e5e5e5; padding: 0.8em; overflow-x: auto;
      font-size: 0.85em; }
.swatch { display: inline-block; width: 0.8em; height: 0.8em; margin-right: 0.4em;
          vertical-align: baseline; border-radius: 2px; }
.note { color: #555; font-size: 0.92em; }
.warn { color: #a40000; border-left: 3px solid #c00; padding-left: 0.6em; }
"""

_EXPLANATION = (
    "At each probed training step <i>t</i> the probe moves the parameters <i>x<sub>t</sub></i> "
    "along the negative minibatch gradient <i>g<sub>t</sub></i> by every step size η of a grid "
    "and evaluates, on the same minibatch, the loss <i>L</i>(<i>x<sub>t</sub></i> − η"
    "<i>g<sub>t</sub></i>) and its gradient. The spread of that loss over η (<b>loss "
    "landscape</b>), the ℓ2 distance ‖∇<i>L</i>(<i>x<sub>t</sub></i> − η<i>g<sub>t</sub></i>) − "
    "<i>g<sub>t</sub></i>‖ (<b>gradient predictiveness</b>) and the largest ratio of that distance "
    "to ‖η<i>g<sub>t</sub></i>‖ (<b>effective β-smoothness</b>) measure how well the gradient at "
    "<i>x<sub>t</sub></i> predicts the loss and gradient one step away: smaller is smoother. "
    "Santurkar, Tsipras, Ilyas and Madry, “How Does Batch Normalization Help Optimization?”, "
    "NeurIPS 2018 (arXiv:1805.11604), Figure 4 and Appendix A.2.2, find all three markedly smaller "
    "with BatchNorm."
)

_CAPTIONS = {
    "loss_landscape": (
        "The paper's Figure 4. (a) Band between the smallest and largest loss over the step sizes "
        "η at each training step; (b) band of the gradient distance over η; (c) effective "
        "β-smoothness. Shaded grey: the early phase (first 10% of the run). Triangles along the top "
        "mark steps where some η diverged (a non-finite value, counted as +∞ in the summary; the "
        "band is drawn up to the largest finite value)."
    ),
    "training_curves": (
        "Figure 1 style: training loss and accuracy on each step's minibatch (faint: per step; "
        "solid: moving average) and test accuracy at each evaluation."
    ),
    "grad_dist_vs_eta": (
        "Figure 11 style: gradient distance against the step size η at a few training steps "
        "(light: early, dark: late), one panel per variant, sharing the y axis."
    ),
    "sharpness": (
        "Sharpness over training (landscape hessian): (a) the top eigenvalue of the loss's "
        "Hessian on each recorded step's batch (Lanczos), with the edge of stability 2/lr of "
        "gradient descent dashed; (b) its trace (Hutchinson) with ±2 standard errors."
    ),
    "curvature_link": (
        "The probe against the Hessian: effective β-smoothness at a small step size (solid), "
        "‖H g‖/‖g‖, its limit as η → 0 on a smooth loss (dashed), λ_max (dotted) and β over the "
        "probe's grid as in Figure 4c (dash-dotted). ReLU and max-pool kinks make the gradient "
        "jump, so on these networks β at a small η can exceed ‖H g‖/‖g‖."
    ),
}


def _esc(value: Any) -> str:
    return html.escape(str(value), quote=True)


def format_value(value: Any) -> str:
    """Formats a summary number: 4 significant digits, "∞ (diverged)" for +inf, "n/a" for NaN."""
    if isinstance(value, int | np.integer):
        return str(int(value))
    try:
        x = float(value)
    except (TypeError, ValueError):
        return str(value)
    if np.isnan(x):
        return "n/a"
    if np.isposinf(x):
        return "∞ (diverged)"
    if np.isneginf(x):
        return "−∞"
    return f"{x:.4g}"


def _read_json(path: Path) -> dict[str, Any]:
    try:
        data = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return {}
    return data if isinstance(data, dict) else {}


def summary_rows(records: dict, total_steps: int | None) -> list[dict[str, Any]]:
    """Returns the summary rows of a run plus the ratio rows (standard/batchnorm when both exist,
    else first/second when the run has exactly two variants) -- the table ``landscape`` prints."""
    rows = summarize_run(records, total_steps)
    names = list(records)
    if "standard" in records and "batchnorm" in records:
        rows += ratios(rows, "standard", "batchnorm")
    elif len(names) == 2:
        rows += ratios(rows, names[0], names[1])
    return rows


def _summary_table(rows: list[dict[str, Any]]) -> str:
    head = [
        "variant",
        "phase",
        "probed steps",
        *(title for _, title in QUANTITIES),
        "diverged steps",
    ]
    out = ["<table>", "<tr>" + "".join(f"<th>{_esc(h)}</th>" for h in head) + "</tr>"]
    for row in rows:
        is_ratio = "steps" not in row
        variant = row["variant"]
        if is_ratio:
            name = f"ratio {_esc(variant)}"
        else:
            swatch = (
                f'<span class="swatch" style="background:{plots.variant_color(variant)}"></span>'
            )
            name = f"{swatch}{_esc(plots.variant_label(variant))} <code>{_esc(variant)}</code>"
        cells = [
            f"<td>{name}</td>",
            f"<td>{_esc(row['phase'])}</td>",
            f'<td class="num">{_esc(row.get("steps", ""))}</td>',
        ]
        for key, _ in QUANTITIES:
            text = format_value(row[key])
            cls = "num diverged" if text.startswith("∞") else "num"
            cells.append(f'<td class="{cls}">{_esc(text)}</td>')
        cells.append(f'<td class="num">{_esc(row.get("diverged", ""))}</td>')
        tr_class = ' class="ratio"' if is_ratio else ""
        out.append(f"<tr{tr_class}>" + "".join(cells) + "</tr>")
    out.append("</table>")
    return "\n".join(out)


def _metrics_table(metrics: dict) -> str:
    head = [
        "variant",
        "training steps",
        "train loss (nats, last 1%)",
        "train accuracy (last 1%)",
        "last evaluation step",
        "test loss (nats)",
        "test accuracy",
    ]
    out = ["<table>", "<tr>" + "".join(f"<th>{_esc(h)}</th>" for h in head) + "</tr>"]
    any_row = False
    for variant, m in metrics.items():
        train, test = m.get("train") or {}, m.get("test") or {}
        if not train and not test:
            continue
        any_row = True
        cells = [_esc(plots.variant_label(variant))]
        if train and len(train.get("step", ())):
            tail = max(1, len(train["step"]) // 100)
            loss = np.asarray(train.get("loss", [np.nan]), float)[-tail:]
            acc = np.asarray(train.get("accuracy", [np.nan]), float)[-tail:]
            # A diverged run's last losses are NaN: averaging them is "n/a", not a warning.
            cells += [
                str(int(train["step"][-1]) + 1),
                format_value(np.nanmean(loss)) if np.isfinite(loss).any() else "n/a",
                _percent(np.nanmean(acc)) if np.isfinite(acc).any() else "n/a",  # DLN: none
            ]
        else:
            cells += ["", "", ""]
        if test and len(test.get("step", ())):
            cells += [
                str(int(test["step"][-1])),
                format_value(test.get("test_loss", [np.nan])[-1]),
                _percent(test.get("test_accuracy", [np.nan])[-1]),
            ]
        else:
            cells += ["", "", "no evaluation"]
        out.append(
            "<tr>"
            + "".join(
                f'<td class="num">{c}</td>' if i else f"<td>{c}</td>" for i, c in enumerate(cells)
            )
            + "</tr>"
        )
    out.append("</table>")
    return "\n".join(out) if any_row else '<p class="note">No training metrics recorded.</p>'


def _percent(value: Any) -> str:
    x = float(value)
    return "n/a" if not np.isfinite(x) else f"{100 * x:.1f}%"


def _key_value_table(data: dict[str, Any]) -> str:
    if not data:
        return '<p class="note">None recorded.</p>'
    rows = []
    for key, value in data.items():
        text = value if isinstance(value, str) else json.dumps(value)
        rows.append(f"<tr><th>{_esc(key)}</th><td><code>{_esc(text)}</code></td></tr>")
    return "<table>\n" + "\n".join(rows) + "\n</table>"


def _png_base64(fig) -> str:
    buffer = io.BytesIO()
    fig.savefig(buffer, format="png", dpi=_FIGURE_DPI)
    return base64.b64encode(buffer.getvalue()).decode("ascii")


def _divergence_notes(run_dir: Path) -> list[str]:
    """Returns one warning paragraph per variant whose training diverged."""
    return [
        f'<p class="warn">{_esc(divergence_line(plots.variant_label(v), record))}. Its probe '
        "records past that step measure a network that is no longer finite; the figures mark "
        "the step with a dashed red line.</p>"
        for v, record in load_divergence(run_dir).items()
    ]


def render_report(run_dir: str | os.PathLike) -> str:
    """Returns the report of a run as one HTML string (see ``write_report``)."""
    run_dir = Path(run_dir)
    config = _read_json(run_dir / "config.json")
    provenance = _read_json(run_dir / "provenance.json")
    records = {v: r for v, r in load(run_dir).items() if r and len(r.get("step", ()))}
    metrics = load_metrics(run_dir)

    total = config.get("steps") if isinstance(config.get("steps"), int) else None
    parts = [
        "<!DOCTYPE html>",
        '<html lang="en"><head><meta charset="utf-8">',
        '<meta name="viewport" content="width=device-width, initial-scale=1">',
        f"<title>landscape report: {_esc(run_dir.name)}</title>",
        f"<style>{_CSS}</style></head><body>",
        "<h1>Loss-landscape report</h1>",
        f'<p class="sub">run <code>{_esc(run_dir.name)}</code>'
        + (f" &middot; preset <code>{_esc(config['preset'])}</code>" if "preset" in config else "")
        + (f" &middot; data <code>{_esc(config['data'])}</code>" if "data" in config else "")
        + (f" &middot; {_esc(config['steps'])} steps" if "steps" in config else "")
        + f" &middot; landscape {_esc(_version())}</p>",
        "<h2>What the probe measures</h2>",
        f"<p>{_EXPLANATION}</p>",
        "<h2>Summary</h2>",
    ]
    if records:
        early_end = plots.early_phase_end(run_dir, records)
        rows = summary_rows(records, total)
        has_ratios = any("steps" not in row for row in rows)
        parts += [
            f'<p class="note">Medians over the probed steps. Early phase: steps &lt; '
            f"{_esc(format_value(early_end))} (the first 10% of the run, where the standard "
            "network sits on its initial plateau and can look smoother than its BatchNorm twin); "
            "late: the rest. A step where any η diverged counts as +∞."
            + (
                " Ratio rows divide the first variant's median by the second's: above 1, the "
                "first is rougher."
                if has_ratios
                else ""
            )
            + "</p>",
            _summary_table(rows),
        ]
    else:
        parts.append('<p class="note">No probe records in this run.</p>')
    parts += _curvature_section(run_dir)
    parts += ["<h2>Training</h2>", *_divergence_notes(run_dir), _metrics_table(metrics)]
    parts.append("<h2>Figures</h2>")
    figures = plots.run_figures(run_dir)
    shift = {name: figures.pop(name) for name in SHIFT_FIGURES if name in figures}
    if not figures:
        parts.append('<p class="note">Nothing to plot yet.</p>')
    for name, fig in figures.items():
        parts.append(
            f'<figure><img alt="{_esc(name)}" src="data:image/png;base64,{_png_base64(fig)}">'
            f"<figcaption>{_esc(_CAPTIONS.get(name, name))}</figcaption></figure>"
        )
    parts += surface_section(run_dir)
    parts += shift_section(run_dir, shift)
    parts += [
        "<h2>Configuration</h2>",
        f"<pre>{_esc(json.dumps(config, indent=2, sort_keys=False))}</pre>"
        if config
        else '<p class="note">No config.json.</p>',
        "<h2>Provenance</h2>",
        _key_value_table(provenance),
        "</body></html>",
    ]
    page = "\n".join(parts) + "\n"
    if interactive is not None and 'class="interactive"' in page:
        # Embedded, not fetched: the report opens offline as one file.
        page = page.replace("</head>", interactive.plotly_script() + "</head>", 1)
    return page


def _version() -> str:

    return __version__


def write_report(run_dir: str | os.PathLike, path: str | os.PathLike | None = None) -> Path:
    """Writes the self-contained HTML report of a run; returns its path.

    Default path ``RUN_DIR/report.html``. The page holds: what the probe measures, the summary
    table (medians per variant and phase, with standard/BatchNorm ratios), the training metrics,
    the figures as inline PNGs (drawn here; ``plot_run`` need not have run), the configuration and
    the provenance. Works for runs with metrics only or a single variant.
    """
    out = Path(path) if path is not None else Path(run_dir) / REPORT_FILE
    out.parent.mkdir(parents=True, exist_ok=True)
    return atomic_write_text(out, render_report(run_dir))


def surface_section(run_dir: str | os.PathLike) -> list[str]:
    """Returns the HTML of the loss-landscape pictures section ([] when none was recorded).

    One figure per picture (``landscape surface``, ``interpolate`` or ``trajectory``), each
    captioned with what it shows, the directions' seed and the loss mode, and a table of the
    settings; a trajectory's caption adds the share of the path's variance its axes explain.
    """
    pictures = load_surfaces(run_dir)
    if not pictures:
        return []
    parts = [
        "<h2>Loss-landscape pictures</h2>",
        '<p class="note">Slices of the loss around a checkpoint along filter-normalised random '
        "directions or the gradient (Li et al., “Visualizing the Loss Landscape of Neural Nets”, "
        "NeurIPS 2018), linear interpolation between two checkpoints (Goodfellow et al., "
        "ICLR 2015), and the optimisation path on its two PCA directions, each labelled with "
        "the share of the path's variance it explains (Li et al., Sec. 7). Each figure says "
        "whether BatchNorm ran in train mode (batch statistics, as the optimiser sees the "
        "loss) or eval mode (running averages).</p>",
    ]
    figures = plots.surface_figures(run_dir)
    shown: set[str] = set()  # pictures whose interactive version is on the page
    for name, fig in figures.items():
        kind, _, picture = name.partition("_")  # surface_, interpolation_ or trajectory_
        if kind == "surface":
            picture = picture.removesuffix("_contour").removesuffix("_3d")
        header = next(iter(pictures.get(picture, {}).values()), {}).get("header", {})
        settings = header.get("settings", {})
        info = header.get("info", {})
        caption = f"{name}: " + ", ".join(
            f"{k} {v}" for k, v in settings.items() if k not in ("variant", "accuracy")
        )
        if info.get("mode_text"):
            caption += f". {info['mode_text']}."
        if kind == "trajectory":
            shares = "; ".join(
                f"{variant} "
                + " and ".join(
                    f"{100 * r:.1f}%"
                    for r in rec["header"]["info"].get("explained_variance_ratio", [])
                )
                for variant, rec in pictures.get(picture, {}).items()
            )
            caption += f" Share of the path's variance along the two PCA directions: {shares}."
        parts.append(
            f'<figure><img alt="{_esc(name)}" src="data:image/png;base64,{_png_base64(fig)}">'
            f"<figcaption>{_esc(caption)}</figcaption></figure>"
        )
        if interactive is not None and picture in pictures and picture not in shown:
            shown.add(picture)
            div = interactive.picture_html(picture, pictures[picture], f"interactive-{picture}")
            if div is not None:
                parts.append(
                    f'<figure class="interactive">{div}<figcaption>{_esc(picture)}, '
                    "interactive: drag to rotate, scroll to zoom, hover for values"
                    "</figcaption></figure>"
                )
    return parts


# --- internal covariate shift and distributional stability -------------------------------------

SHIFT_FIGURES = ("internal_covariate_shift", "activations")
_SHIFT_CAPTIONS = {
    "internal_covariate_shift": (
        "The paper's Figure 3 (Definition 2.1). For layer i at step t, G is the gradient of the "
        "loss with respect to the layer's parameters and G′ the same gradient, on the same batch, "
        "after every preceding layer took the update the optimiser actually made at step t. Left: "
        "‖G − G′‖ (ideally 0); middle: ‖G − G′‖/‖G‖, which compares networks whose gradients "
        "differ in scale; right: cos(G, G′) (ideally 1). The paper's #5 and #10 are drawn as "
        "our layer 5 and the nearest recorded layer to 10 (VGG-11 has 9: conv 1-8 and the "
        "classifier); BatchNorm in training mode on the step's batch."
    ),
    "activations": (
        "Distributional stability (Ioffe & Szegedy's Figure 1; the paper's Figure 8). The input "
        "to the ReLU of a few conv layers, on a fixed held-out batch of test images: the band "
        "between the 15th and 85th percentiles of one unit with its median, and the change of "
        "that unit's mean and variance from step t to t + 1 (t + 1 recomputed with the run's "
        "own training step)."
    ),
}


def _row(cells: list[str]) -> str:
    """Returns a table row: the first two cells as text (names), the rest right-aligned numbers."""
    return (
        "<tr>"
        + "".join(
            f'<td class="num">{c}</td>' if i > 1 else f"<td>{c}</td>" for i, c in enumerate(cells)
        )
        + "</tr>"
    )


def _median(values) -> float:
    """Returns the median of the finite values, NaN (without a warning) when there are none."""
    values = np.asarray(values, dtype=float)
    finite = values[np.isfinite(values)]
    return float(np.median(finite)) if finite.size else float("nan")


def _ics_table(records: dict) -> str:
    head = [
        *("variant", "layer", "steps", "median ‖G − G′‖", "median cos(G, G′)", "median ‖G‖"),
        "median ‖G − G′‖/‖G‖",
    ]
    out = ["<table>", "<tr>" + "".join(f"<th>{_esc(h)}</th>" for h in head) + "</tr>"]
    for variant, layers in records.items():
        for layer, r in layers.items():
            cells = [
                f"{_esc(plots.variant_label(variant))}",
                f"{layer} ({_esc(r.get('name', ''))})",
                str(len(r["step"])),
                *(format_value(_median(r[k])) for k in ("dist", "cosine", "grad_norm", "relative")),
            ]
            out.append(_row(cells))
    out.append("</table>")
    return "\n".join(out)


def shift_section(run_dir: str | os.PathLike, figures: dict) -> list[str]:
    """Returns the HTML of the ICS / activation section (empty when the run has no such records).

    ``figures`` are the ``SHIFT_FIGURES`` of ``plots.run_figures``; the ICS medians per variant
    and layer come from ``ics.jsonl``.
    """
    if not figures:
        return []
    parts = ["<h2>Internal covariate shift and distributional stability</h2>"]
    ics = load_ics(run_dir)
    if ics:
        parts += [
            '<p class="note">Medians over the measured steps (<code>landscape ics</code>).</p>',
            _ics_table(ics),
        ]
    for name, fig in figures.items():
        parts.append(
            f'<figure><img alt="{_esc(name)}" src="data:image/png;base64,{_png_base64(fig)}">'
            f"<figcaption>{_esc(_SHIFT_CAPTIONS.get(name, name))}</figcaption></figure>"
        )
    return parts


_CURVATURE_COLUMNS = (
    ("lambda_max", "λ_max"),
    ("trace", "trace"),
    ("hg_ratio", "‖H g‖/‖g‖"),
    ("beta_small", "β at small η"),
    ("beta", "β over the grid"),
)


def _curvature_section(run_dir: Path) -> list[str]:
    """The section on ``landscape hessian``'s records: medians per variant, and their ratio."""
    hessian = load_hessian(run_dir)
    if not hessian:
        return []
    modes = sorted({str(m) for rec in hessian.values() for m in rec.get("mode", [])})
    head = ["variant", "mode", "steps", *(title for _, title in _CURVATURE_COLUMNS)]
    out = ["<table>", "<tr>" + "".join(f"<th>{_esc(h)}</th>" for h in head) + "</tr>"]
    medians = {}
    for variant, rec in hessian.items():
        medians[variant] = {
            key: float(np.nanmedian(np.asarray(rec[key], float))) if key in rec else np.nan
            for key, _ in _CURVATURE_COLUMNS
        }
        cells = [
            _esc(plots.variant_label(variant)),
            _esc(", ".join(sorted({str(m) for m in rec.get("mode", [])}))),
            str(len(rec["step"])),
            *(_esc(format_value(medians[variant][key])) for key, _ in _CURVATURE_COLUMNS),
        ]
        out.append(_row(cells))
    if "standard" in medians and "batchnorm" in medians:
        with np.errstate(divide="ignore", invalid="ignore"):
            ratio = [
                medians["standard"][k] / medians["batchnorm"][k] for k, _ in _CURVATURE_COLUMNS
            ]
        out.append(
            '<tr class="ratio"><td>ratio standard/batchnorm</td><td></td><td></td>'
            + "".join(f'<td class="num">{_esc(format_value(r))}</td>' for r in ratio)
            + "</tr>"
        )
    out.append("</table>")
    note = (
        "Medians over the recorded checkpoints of the Hessian of the training loss on each step's "
        "own batch (all parameters), from <code>landscape hessian</code>; mode "
        f"{_esc(', '.join(modes))} (train: BatchNorm normalises with the batch's statistics, as "
        "the optimiser sees the loss; eval: with its running averages). λ_max: top eigenvalue "
        "(Lanczos); trace: Hutchinson's estimate; ‖H g‖/‖g‖ is the limit of the effective "
        "β-smoothness as η → 0, β at small η the probe at a tiny step (default η = 10⁻³ lr). A ratio above 1: the "
        "standard network is sharper."
    )
    return ["<h2>Curvature</h2>", f'<p class="note">{note}</p>', "\n".join(out)]
