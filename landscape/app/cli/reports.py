"""Reading a finished run: ``plot``, ``report``, ``summary``, and ``bias-example``."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Annotated

import typer

from landscape.app.cli.common import (
    CliError,
    app,
    console,
    fail,
    load_saved_config,
    parse_list,
    parse_log,
    positive_or_fail,
    print_summary,
)
from landscape.app.cli.options import SeedOpt
from landscape.files import atomic_write_text


@app.command()
def plot(
    run_dir: Annotated[Path, typer.Argument(help="A run directory made by landscape probe/train.")],
    out: Annotated[
        Path | None, typer.Option("--out", help="Folder for the figures. Default: RUN_DIR/figures.")
    ] = None,
    formats: Annotated[
        str, typer.Option("--formats", help="Comma-separated file formats.")
    ] = "png,pdf",
    smooth: Annotated[
        int, typer.Option("--smooth", help="Moving-average window over probed steps (0 = none).")
    ] = 0,
) -> None:
    """Draw the paper's figures (Figure 4 bands, training curves, gradient distance vs eta) from a run."""
    from landscape.plots import plot_run

    load_saved_config(run_dir)
    try:
        fmts = parse_list(formats, "--formats")
    except CliError as err:
        fail(str(err))
    bad = [f for f in fmts if f not in ("png", "pdf", "svg")]
    if bad:
        fail(f"--formats: unsupported {', '.join(bad)}; use png, pdf or svg")
    positive_or_fail("--smooth", smooth)
    for path in plot_run(run_dir, out, formats=fmts, smooth=smooth):
        console.print(str(path), highlight=False)


@app.command()
def report(
    run_dir: Annotated[Path, typer.Argument(help="A run directory made by landscape probe/train.")],
    out: Annotated[
        Path | None, typer.Option("--out", help="HTML file to write. Default: RUN_DIR/report.html.")
    ] = None,
) -> None:
    """Write one self-contained HTML page: figures, summary table, config and provenance."""
    from landscape.report import write_report

    load_saved_config(run_dir)
    console.print(str(write_report(run_dir, out)), highlight=False)


@app.command()
def summary(
    run_dir: Annotated[Path, typer.Argument(help="A run directory made by landscape probe.")],
) -> None:
    """Print the summary table of a run: medians of the probe's measurements, early and overall."""
    print_summary(run_dir, load_saved_config(run_dir))


@app.command("bias-example")
def bias_example_command(
    out: Annotated[
        Path, typer.Option("--out", help="Folder for bias_example.png/.pdf and bias_example.json.")
    ] = Path("runs/bias-example"),
    steps: Annotated[int, typer.Option("--steps", help="Gradient-descent steps.")] = 100,
    lr: Annotated[float, typer.Option("--lr", help="Learning rate.")] = 0.1,
    seed: SeedOpt = None,
) -> None:
    """Ioffe & Szegedy's bias example: mean subtraction outside the gradient lets a bias grow forever."""
    if steps < 1 or not lr > 0:
        fail("--steps and --lr must be positive")
    from landscape.bn_math import bias_example_figure, bias_example_modes
    from landscape.plots import save_figure

    results = bias_example_modes(steps=steps, lr=lr, seed=seed or 0)
    out.mkdir(parents=True, exist_ok=True)
    paths = save_figure(bias_example_figure(results), out / "bias_example")
    summary = {mode: {k: v.tolist() for k, v in r.items()} for mode, r in results.items()}
    atomic_write_text(out / "bias_example.json", json.dumps(summary) + "\n")
    for mode, r in results.items():
        console.print(
            f"{mode}: ||b|| {r['b_norm'][0]:.3g} -> {r['b_norm'][-1]:.3g}, loss "
            f"{r['loss'][0]:.6g} -> {r['loss'][-1]:.6g}, max output change {r['output_change'].max():.2g}",
            highlight=False,
        )
    console.print(f"figure: {paths[0]}", highlight=False)


@app.command()
def export(
    run_dir: Annotated[Path, typer.Argument(help="A run directory made by landscape probe/train.")],
    to: Annotated[
        str,
        typer.Option("--to", help="The format: tensorboard (event files, one run per variant)."),
    ] = "tensorboard",
    out: Annotated[
        Path | None,
        typer.Option("--out", help="The log directory. Default: RUN_DIR/tensorboard."),
    ] = None,
) -> None:
    """Convert a run's records (training and test metrics, probe, ICS, curvature) and figures to TensorBoard event files; view with tensorboard --logdir RUN_DIR/tensorboard."""
    load_saved_config(run_dir)
    try:
        log_dir = parse_log(f"{to}:{out}" if out is not None else to, run_dir)
    except CliError as err:
        fail(str(err).replace("--log", "--to"))
    from landscape.tensorboard import export_run  # the optional tensorboard extra

    path = export_run(run_dir, log_dir)
    console.print(f"tensorboard: {path} (view with: tensorboard --logdir {path})", highlight=False)
