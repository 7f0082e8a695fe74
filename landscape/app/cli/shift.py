"""Analyses between consecutive checkpoints: ``landscape ics`` (internal covariate shift) and
``landscape activations`` (pre-activation statistics).
"""

from __future__ import annotations

from pathlib import Path
from typing import Annotated

import typer

from landscape.app import runtime
from landscape.app.cli.common import (
    CliError,
    app,
    console,
    export_records,
    fail,
    load_saved_config,
    parse_list,
    parse_log,
)
from landscape.app.cli.options import LogOpt, ProgressOpt

ShiftRunDirArg = Annotated[Path, typer.Argument(help="A run directory with checkpoints.")]


ShiftEveryOpt = Annotated[
    int,
    typer.Option(
        "--every",
        help="Measure every k-th step among the saved checkpoints (k divides the step). Default 1: every checkpoint the run kept.",
    ),
]


ShiftStepsOpt = Annotated[
    str | None,
    typer.Option(
        "--steps",
        help="Comma-separated steps to measure instead of --every (those without a checkpoint are skipped). Default: none.",
    ),
]


ShiftVariantsOpt = Annotated[
    str | None,
    typer.Option(
        "--variants", help="Comma-separated variants to measure. Default: all of the run's."
    ),
]


ShiftDataOpt = Annotated[
    str | None,
    typer.Option(
        "--data",
        help="The data the run was trained on, if it moved (checked against the run's sha256). Default: the run's.",
    ),
]


def _shift_options(steps: str | None, variants: str | None) -> tuple:
    try:
        chosen = [int(v) for v in steps.split(",") if v.strip()] if steps else None
    except ValueError:
        fail(f"--steps {steps!r}: use step numbers like 0,50,100")
    if steps is not None and not chosen:
        fail("--steps needs at least one step")
    try:
        names = list(parse_list(variants, "--variants")) if variants else None
    except CliError as err:
        fail(str(err))
    return chosen, names


def _shift_command(run_dir: Path, data: str | None, progress: bool, record, **options) -> None:
    """Loads the run's data and calls ``record(run_dir, ...)``; bad input exits 2 in one line."""
    from landscape.data import DataError, load_dataset
    from landscape.rundir import RunError

    config = load_saved_config(run_dir)
    unknown = [v for v in options.get("variants") or [] if v not in config.variants]
    if unknown:
        fail(f"--variants: {', '.join(unknown)} not in the run ({', '.join(config.variants)})")
    runtime.prepare_compute()
    try:
        dataset = load_dataset(data or config.data, progress=progress)
        written = record(run_dir, progress=progress, dataset=dataset, **options)
    except (DataError, RunError) as err:
        fail(str(err))
    for variant, path in written.items():
        console.print(f"{variant}: {path}", highlight=False)


@app.command("ics")
def ics_command(
    run_dir: ShiftRunDirArg,
    every: ShiftEveryOpt = 1,
    steps: ShiftStepsOpt = None,
    layers: Annotated[
        str | None,
        typer.Option(
            "--layers",
            help="Comma-separated layer numbers in forward order, from 1 (VGG-11: conv 1-8, classifier 9; the paper's Figure 3 shows #5 and #10). Default: all.",
        ),
    ] = None,
    variants: ShiftVariantsOpt = None,
    data: ShiftDataOpt = None,
    log: LogOpt = None,
    progress: ProgressOpt = True,
) -> None:
    """Internal covariate shift (Definition 2.1, Figure 3): per layer, ||G - G'|| and cos(G, G') at each checkpoint. Writes <variant>/ics.jsonl."""
    from landscape.analyses.ics import record_ics

    if every < 1:
        fail(f"--every must be positive, got {every}")
    try:
        log_dir = parse_log(log, run_dir)
    except CliError as err:
        fail(str(err))
    chosen, names = _shift_options(steps, variants)
    _shift_command(
        run_dir,
        data,
        progress,
        record_ics,
        every=every,
        steps=chosen,
        layers=layers,
        variants=names,
    )
    export_records(run_dir, log_dir, ("ics",))


@app.command("activations")
def activations_command(
    run_dir: ShiftRunDirArg,
    every: ShiftEveryOpt = 1,
    steps: ShiftStepsOpt = None,
    layers: Annotated[
        str | None,
        typer.Option(
            "--layers",
            help="Comma-separated conv layer numbers, from 1 (VGG-11: 1-8). Default: all.",
        ),
    ] = None,
    examples: Annotated[
        int,
        typer.Option(
            "--examples",
            help="The fixed held-out batch: the first N test images, the same at every step. Default 1000.",
        ),
    ] = 1000,
    unit: Annotated[
        int,
        typer.Option(
            "--unit", help="The channel whose own distribution is tracked as well. Default 0."
        ),
    ] = 0,
    bn_mode: Annotated[
        str,
        typer.Option(
            "--bn-mode",
            help="BatchNorm on the held-out batch: train (default: that batch's statistics, as in training) or eval (running averages).",
        ),
    ] = "train",
    consecutive: Annotated[
        bool,
        typer.Option(
            "--consecutive/--no-consecutive",
            help="Also record the change of mean and variance from step t to t+1 (the paper's Figure 8), t+1 recomputed by the run's own train step. Default: on.",
        ),
    ] = True,
    capture: Annotated[
        str | None,
        typer.Option(
            "--capture",
            help="Comma-separated Flax module class names (e.g. BatchNorm or Dense) whose outputs are the inputs of your network's nonlinearities, numbered in call order; for a network that does not sow preact<n> values (the built-in VGG does).",
        ),
    ] = None,
    variants: ShiftVariantsOpt = None,
    data: ShiftDataOpt = None,
    progress: ProgressOpt = True,
) -> None:
    """Distributional stability (Ioffe & Szegedy): 15/50/85th percentiles, mean and variance of each layer's input to the ReLU on a fixed held-out batch. Writes <variant>/activations.jsonl."""
    from landscape.analyses.activations import record_activations

    if every < 1 or examples < 2 or unit < 0:
        fail("--every must be positive, --examples at least 2 and --unit non-negative")
    if bn_mode not in ("train", "eval"):
        fail(f"--bn-mode must be train or eval, got {bn_mode!r}")
    chosen, names = _shift_options(steps, variants)
    try:
        captured = tuple(parse_list(capture, "--capture")) if capture else ()
    except CliError as err:
        fail(str(err))
    _shift_command(
        run_dir,
        data,
        progress,
        record_activations,
        every=every,
        steps=chosen,
        layers=layers,
        variants=names,
        examples=examples,
        unit=unit,
        bn_mode=bn_mode,
        consecutive=consecutive,
        capture=captured,
    )
