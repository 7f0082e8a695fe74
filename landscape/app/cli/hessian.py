"""``landscape hessian``: curvature (Hessian spectra, sharpness) at a run's checkpoints."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated

import typer

from landscape.app import runtime
from landscape.app.cli.common import (
    CliError,
    app,
    check_positive,
    console,
    export_records,
    fail,
    load_saved_config,
    parse_list,
    parse_log,
    parse_steps,
)
from landscape.app.cli.options import LogOpt, ProgressOpt


@app.command()
def hessian(
    run_dir: Annotated[Path, typer.Argument(help="A run directory made by landscape probe/train.")],
    every: Annotated[
        int,
        typer.Option("--every", help="Use every k-th saved checkpoint (default 1: all of them)."),
    ] = 1,
    steps: Annotated[
        str | None,
        typer.Option(
            "--steps",
            help="Only these training steps (saved checkpoints): a list 0,50,100 or ranges 0:100. Default: all (see --every).",
        ),
    ] = None,
    variants: Annotated[
        str | None,
        typer.Option(
            "--variants", help="Comma-separated variants. Default: every variant of the run."
        ),
    ] = None,
    top_k: Annotated[
        int,
        typer.Option("--top-k", help="How many of the largest eigenvalues to record. Default 1."),
    ] = 1,
    iterations: Annotated[
        int,
        typer.Option(
            "--iterations",
            help="Lanczos iterations (Hessian-vector products) per estimate, also per density probe. Default 20.",
        ),
    ] = 20,
    trace_probes: Annotated[
        int,
        typer.Option(
            "--trace-probes",
            help="Rademacher probes of Hutchinson's trace estimate (0 = no trace). Default 10.",
        ),
    ] = 10,
    density: Annotated[
        bool,
        typer.Option(
            "--density/--no-density",
            help="Also record the spectral density (stochastic Lanczos quadrature). Default: off.",
        ),
    ] = False,
    density_probes: Annotated[
        int,
        typer.Option("--density-probes", help="Random start vectors of the density. Default 4."),
    ] = 4,
    power_iterations: Annotated[
        int,
        typer.Option(
            "--power-iterations",
            help="Also run this many (block) power iterations as a cross-check of the top eigenvalues (0 = none). Default 0.",
        ),
    ] = 0,
    mode: Annotated[
        str,
        typer.Option(
            "--mode",
            help="train (default): BatchNorm normalises with the batch's statistics, as the optimiser sees the loss; eval: with its running averages.",
        ),
    ] = "train",
    batches: Annotated[
        int,
        typer.Option(
            "--batches",
            help="Average the Hessian over this many batches: the step's own and those of the next steps. Default 1.",
        ),
    ] = 1,
    layers: Annotated[
        list[str] | None,
        typer.Option(
            "--layers",
            help="Restrict the Hessian to the parameters whose '/'-joined path matches this regular expression (e.g. 'Conv3x3_0/', 'kernel$'); repeat for several blocks, 'all' for every parameter. Default: all.",
        ),
    ] = None,
    small_eta: Annotated[
        float,
        typer.Option(
            "--small-eta",
            help="The small step size of the probe's effective beta, as a multiple of the learning rate (compared with ||Hg||/||g||, its limit as eta -> 0). Default 1e-3.",
        ),
    ] = 1e-3,
    data: Annotated[
        str | None,
        typer.Option(
            "--data", help="The data the run was trained on, if moved. Default: the run's."
        ),
    ] = None,
    log: LogOpt = None,
    progress: ProgressOpt = True,
) -> None:
    """Top Hessian eigenvalues, trace and spectral density at the checkpoints of a run, next to the probe's effective beta (writes <variant>/hessian.jsonl)."""
    from landscape.data import DataError, load_dataset
    from landscape.rundir import RunError

    config = load_saved_config(run_dir)
    try:
        for name, value in (("--every", every), ("--top-k", top_k), ("--iterations", iterations)):
            check_positive(name, value)
        check_positive("--batches", batches)
        check_positive("--density-probes", density_probes)
        check_positive("--trace-probes", trace_probes, allow_zero=True)
        check_positive("--power-iterations", power_iterations, allow_zero=True)
        if not small_eta > 0:
            raise CliError(f"--small-eta must be positive, got {small_eta}")
        if mode not in ("train", "eval"):
            raise CliError(f"unknown --mode {mode!r}; choose train or eval")
        chosen_steps = parse_steps(steps) if steps is not None else None
        chosen_variants = parse_list(variants, "--variants") if variants is not None else None
        log_dir = parse_log(log, run_dir)
    except CliError as err:
        fail(str(err))
    runtime.prepare_compute()
    from landscape.analyses.hessian import sharpness_over_training

    bar = _HessianProgress(progress)
    try:
        with bar as (on_plan, on_record):
            written = sharpness_over_training(
                run_dir,
                every=every,
                steps=chosen_steps,
                variants=chosen_variants,
                top_k=top_k,
                num_iters=iterations,
                trace_probes=trace_probes,
                density_probes=density_probes if density else 0,
                power_iters=power_iterations,
                mode=mode,
                num_batches=batches,
                blocks=tuple(layers) if layers else (None,),
                small_eta_factor=small_eta,
                dataset=load_dataset(data or config.data, progress=progress) if data else None,
                on_plan=on_plan,
                on_record=on_record,
            )
    except (DataError, RunError) as err:
        fail(str(err))
    except KeyboardInterrupt:
        fail("interrupted; the records written so far are kept, a rerun continues", code=130)
    console.print(
        f"Hessian mode: {mode} ({'BatchNorm on the batch statistics' if mode == 'train' else 'running averages'})",
        highlight=False,
    )
    for variant, path in written.items():
        console.print(f"{variant}: {path}", highlight=False)
    export_records(run_dir, log_dir, ("hessian",))


class _HessianProgress:
    """``with _HessianProgress(enabled) as (on_plan, on_record)``: a rich bar over records."""

    def __init__(self, enabled: bool):
        self.enabled = enabled
        self.bar = None
        self.task = None

    def __enter__(self):
        if self.enabled:
            from landscape.progress import progress_bar

            self.bar = progress_bar("{task.fields[last]}", name="hessian")
            self.bar.__enter__()
        return self.on_plan, self.on_record

    def on_plan(self, todo: dict[str, int]) -> None:
        total = sum(todo.values())
        if total == 0:
            console.print("every requested step is already recorded; nothing to do")
        if self.bar is not None:
            self.task = self.bar.add_task("hessian", total=total, last="")

    def on_record(self, variant: str, row: dict) -> None:
        line = (
            f"{variant} step {row['step']} ({row['block']}): lambda_max {row['lambda_max']:.4g}, "
            f"trace {row['trace']:.4g}, |Hg|/|g| {row['hg_ratio']:.4g}, "
            f"beta(small eta) {row['beta_small']:.4g}, {row['seconds']:.1f} s"
        )
        if self.bar is not None:
            self.bar.update(self.task, advance=1, last=line)
        else:
            console.print(line, highlight=False)

    def __exit__(self, *exc) -> None:
        if self.bar is not None:
            self.bar.__exit__(*exc)
