"""``landscape sweep``: a grid of runs, one after another or in parallel worker processes."""

from __future__ import annotations

import os
from contextlib import nullcontext
from datetime import datetime
from pathlib import Path
from typing import Annotated

import typer
from rich.table import Table
from rich.text import Text

from landscape.app import runtime
from landscape.app.cli.common import CliError, app, console, fail, format_number, parse_devices
from landscape.app.cli.options import (
    ArchOpt,
    BatchOpt,
    CkptOpt,
    DataOpt,
    DevicesOpt,
    EvalOpt,
    LossOpt,
    LrOpt,
    ModelArgOpt,
    ModelOpt,
    OptimOpt,
    PresetOpt,
    ProgressOpt,
    SeedOpt,
    StepsOpt,
    VariantsOpt,
    WidthOpt,
)
from landscape.app.cli.run import build_config, validate


@app.command()
def sweep(
    sweep_dir: Annotated[
        Path | None,
        typer.Argument(
            help="Only summarise this sweep directory: print the table and write SWEEP_DIR/summary.csv (no training)."
        ),
    ] = None,
    grid: Annotated[
        list[str] | None,
        typer.Option(
            "--grid",
            help="KEY=V1,V2,... one axis of the grid; repeat for more axes (every combination runs). Keys: variant, and any setting by its short name (seed, lr, batch_size, width, optimizer, momentum, weight_decay, arch, steps, Algorithm 1's noise_mu, noise_sigma, noise_r_mu, noise_r_sigma, ...) or dotted path (optimizer.learning_rate); an unknown key lists them all.",
        ),
    ] = None,
    preset_name: PresetOpt = "smoke",
    data: DataOpt = None,
    out: Annotated[
        Path | None,
        typer.Option(
            "--out",
            help="Sweep directory: sweep.json, one run directory per configuration, summary.csv. Default: runs/sweep-<preset>-<date>-<time>. Running the same sweep into it again skips finished runs.",
        ),
    ] = None,
    resume: Annotated[
        Path | None,
        typer.Option(
            "--resume",
            help="Continue the sweep in this directory as saved in its sweep.json: finished runs are skipped, an interrupted one resumes from its newest checkpoint.",
        ),
    ] = None,
    steps: StepsOpt = None,
    batch_size: BatchOpt = None,
    lr: LrOpt = None,
    optimizer: OptimOpt = None,
    seed: SeedOpt = None,
    arch: ArchOpt = None,
    width: WidthOpt = None,
    variants: VariantsOpt = None,
    model: ModelOpt = None,
    model_arg: ModelArgOpt = None,
    loss: LossOpt = None,
    etas: Annotated[
        str | None,
        typer.Option(
            "--etas", help="Probe step sizes, LO:HI:N or a list. Default: [1/2, 4] x lr, 8 values."
        ),
    ] = None,
    probe_every: Annotated[
        int | None,
        typer.Option("--probe-every", help="Probe every k-th checkpoint. Default: the preset's."),
    ] = None,
    eval_every: EvalOpt = None,
    checkpoint_every: CkptOpt = None,
    probe_enabled: Annotated[
        bool,
        typer.Option("--probe/--no-probe", help="Probe the landscape (default) or only train."),
    ] = True,
    devices: DevicesOpt = "all",
    parallel: Annotated[
        int,
        typer.Option(
            "--parallel",
            help="Configurations run at once, each in its own worker process with its own devices: GPUs/TPU chips split evenly between the workers, on a CPU the cores (each worker pinned to its share). At most one worker per device or core unless --oversubscribe. Worker output goes to SWEEP_DIR/logs/<name>.log. Default 1: one after another in this process.",
        ),
    ] = 1,
    oversubscribe: Annotated[
        bool,
        typer.Option(
            "--oversubscribe",
            help="Allow --parallel above the device (or core) count: workers then share devices round-robin (on GPUs each preallocates its share of memory). Default: refused.",
        ),
    ] = False,
    list_only: Annotated[
        bool,
        typer.Option(
            "--list",
            help="Print the grid's configurations with their index (0-based) and run nothing: the indices --index takes.",
        ),
    ] = False,
    index: Annotated[
        int | None,
        typer.Option(
            "--index",
            help="Run only configuration I of the grid into the sweep directory (--list shows them), for a scheduler's job array: every task gives the same --grid and --out and its own index; tasks may run at once.",
        ),
    ] = None,
    index_from_env: Annotated[
        str | None,
        typer.Option(
            "--index-from-env",
            help="Take --index from this environment variable, e.g. SLURM_ARRAY_TASK_ID.",
        ),
    ] = None,
    progress: ProgressOpt = True,
) -> None:
    """Run a grid of independent runs (seeds, variants, learning rates, ...), one after another or --parallel N at once, resumable, with one summary table.

    Each configuration is an ordinary run directory (summary, plot, report work on it) spread over --devices (with --parallel: over its worker's devices). A failing configuration does not stop the others under --parallel; the sweep then exits with code 1 at the end.
    """
    from landscape.sweep import SweepError, parse_grid, summarize_sweep

    try:
        if sweep_dir is not None:
            if grid or resume or out:
                raise CliError("SWEEP_DIR only summarises; give --grid/--out or --resume to run")
            if not (sweep_dir / "sweep.json").exists():
                raise CliError(f"{sweep_dir} is not a landscape sweep (no sweep.json)")
            _print_sweep(summarize_sweep(sweep_dir), sweep_dir)
            return
        devices_value = parse_devices(devices)
        if parallel < 1:
            raise CliError(f"--parallel {parallel}: use a positive number of workers")
        if resume is not None:
            if grid or out:
                raise CliError("--resume continues the saved grid; do not give --grid or --out")
            base = axes = None
            where = resume
        else:
            if not grid:
                raise CliError("give at least one --grid KEY=V1,V2 (or --resume SWEEP_DIR)")
            axes = parse_grid(grid)
            base = build_config(
                preset_name,
                data=data,
                steps=steps,
                batch_size=batch_size,
                lr=lr,
                optimizer=optimizer,
                seed=seed,
                arch=arch,
                width=width,
                variants=variants,
                model=model,
                model_arg=model_arg,
                loss=loss,
                checkpoint_every=checkpoint_every,
                eval_every=eval_every,
                etas=etas,
                probe_every=probe_every,
            )
            from landscape.sweep import configurations

            for _, _, config in configurations(base, axes):
                validate(config)
            stamp = datetime.now().strftime("%Y%m%d-%H%M%S")
            where = out or Path("runs") / f"sweep-{base.preset}-{stamp}"
        chosen = _chosen_index(index, index_from_env, parallel)
        if list_only:
            _print_grid(where, base, axes)
            return
    except (CliError, SweepError) as err:
        fail(str(err))
    if chosen is not None:
        _run_index(where, base, axes, chosen, probe_enabled, progress, devices_value)
        return
    if parallel > 1:
        _run_parallel_sweep(
            where, base, axes, probe_enabled, progress, devices_value, parallel, oversubscribe
        )
    else:
        _run_sweep(where, base, axes, probe_enabled, progress, devices_value)


def _chosen_index(index: int | None, variable: str | None, parallel: int) -> int | None:
    """Returns the configuration ``--index``/``--index-from-env`` chooses, or None."""
    if index is not None and variable is not None:
        raise CliError("give either --index or --index-from-env, not both")
    if variable is not None:
        text = os.environ.get(variable)
        if text is None:
            raise CliError(f"--index-from-env {variable}: that variable is not set")
        try:
            index = int(text)
        except ValueError:
            raise CliError(f"--index-from-env {variable}: {text!r} is not an index") from None
    if index is not None and parallel > 1:
        raise CliError("--index runs one configuration: drop --parallel")
    if index is not None and index < 0:
        raise CliError(f"--index {index}: indices start at 0")
    return index


def _print_grid(where: Path, base, axes) -> None:
    """Prints ``INDEX NAME`` per configuration (the saved grid's when ``base`` is None)."""
    from landscape.sweep import configurations, open_sweep

    if base is None:
        base, axes = open_sweep(where)
    for i, (name, _, _) in enumerate(configurations(base, axes)):
        console.print(f"{i}\t{name}", highlight=False)


def _run_index(where: Path, base, axes, index: int, probe_enabled, progress, devices) -> None:
    from landscape.data import DataError
    from landscape.rundir import RunError
    from landscape.sweep import SweepError, run_index

    runtime.prepare_compute()
    try:
        name, status = run_index(
            where, index, base, axes, probe_enabled=probe_enabled, progress=progress,
            devices=devices,
        )  # fmt: skip
    except (DataError, RunError, SweepError) as err:
        fail(str(err))
    except KeyboardInterrupt:
        fail(f"interrupted; run the same command again to continue --index {index}", code=130)
    what = {"done": "was done already", "partial": "resumed and finished", "new": "finished"}
    console.print(f"[{index}] {name}: {what[status]}; summary: {where / 'summary.csv'}")


def _run_sweep(where: Path, base, axes, probe_enabled: bool, progress: bool, devices) -> None:
    from landscape.data import DataError
    from landscape.rundir import RunError
    from landscape.sweep import SweepError, run_sweep

    runtime.prepare_compute()
    console.print(Text.assemble("sweep directory: ", (str(where), "bold")), highlight=False)

    def announce(index: int, total: int, name: str, status: str) -> None:
        what = {"done": "done, skipped", "partial": "resuming", "new": "running"}[status]
        console.print(f"[{index + 1}/{total}] {name}: {what}", highlight=False)

    try:
        rows = run_sweep(
            where,
            base,
            axes,
            probe_enabled=probe_enabled,
            progress=progress,
            devices=devices,
            on_run=announce,
        )
    except (DataError, RunError, SweepError) as err:
        fail(str(err))
    except KeyboardInterrupt:
        fail(f"interrupted; continue with: landscape sweep --resume {where}", code=130)
    _print_sweep(rows, where)


def _run_parallel_sweep(
    where: Path,
    base,
    axes,
    probe_enabled: bool,
    progress: bool,
    devices,
    parallel: int,
    oversubscribe: bool,
) -> None:

    from landscape.data import DataError
    from landscape.parallel import run_parallel
    from landscape.progress import progress_bar
    from landscape.sweep import SweepError

    console.print(
        Text.assemble("sweep directory: ", (str(where), "bold"), f", {parallel} workers"),
        highlight=False,
    )
    bar = progress_bar("{task.fields[info]}", console=console) if progress else nullcontext()
    with bar:
        overall = bar.add_task("sweep", total=None, info="configurations") if progress else None
        steps = {}

        def announce(event) -> None:
            head = f"[{event.finished}/{event.total}] {event.name}"
            if event.kind == "skipped":
                console.print(f"{head}: done, skipped", highlight=False)
            elif event.kind == "started":
                what = "resuming" if event.status == "partial" else "running"
                console.print(f"{event.name}: {what} on {event.slot}", highlight=False)
                if progress:
                    steps[event.name] = bar.add_task(event.name, total=None, info="steps")
            else:
                if progress and event.name in steps:
                    bar.remove_task(steps.pop(event.name))
                if event.kind == "finished":
                    console.print(f"{head}: finished in {event.seconds:.1f} s", highlight=False)
                else:
                    console.print(
                        Text.assemble(
                            (f"{event.name}: FAILED", "bold red"),
                            f" after {event.seconds:.1f} s (exit code {event.returncode}): "
                            f"{event.message}; log: {event.log}",
                        ),
                        highlight=False,
                    )
            if progress:
                bar.update(overall, total=event.total, completed=event.finished)

        def poll(counts: dict) -> None:
            for name, (done, total) in counts.items():
                if name in steps:
                    bar.update(steps[name], completed=done, total=total)

        try:
            rows, failures = run_parallel(
                where,
                base,
                axes,
                parallel=parallel,
                probe_enabled=probe_enabled,
                devices=devices,
                oversubscribe=oversubscribe,
                on_event=announce,
                on_poll=poll if progress else None,
            )
        except (DataError, SweepError) as err:
            fail(str(err))
        except KeyboardInterrupt:
            fail(f"interrupted; continue with: landscape sweep --resume {where}", code=130)
    _print_sweep(rows, where)
    if failures:
        names = ", ".join(f.name for f in failures)
        fail(
            f"{len(failures)} of {failures[0].total} configurations failed "
            f"({names}); their logs are in {where / 'logs'}. Fix and rerun: "
            f"landscape sweep --resume {where} --parallel {parallel}",
            code=1,
        )


def _print_sweep(rows: list[dict], sweep_dir: Path) -> None:
    figure = sweep_dir / "sweep.png"
    table = Table(
        title="Sweep: medians over probed steps, final training loss, last test evaluation",
        caption="loss band = max-min of L(x - eta g) over eta; grad dist max = max over eta of "
        "||grad L(x - eta g) - g||; beta = effective beta-smoothness; BatchNorm in training "
        "mode during the probe; train loss = mean of the last 50 steps' training losses; "
        f"diverged = first step with a non-finite training loss. Also in "
        f"{sweep_dir / 'summary.csv'}" + (f", drawn in {figure}." if figure.exists() else "."),
    )
    for title in ("run", "variant", "status"):
        table.add_column(title, no_wrap=True)
    for title in ("steps", "probed"):
        table.add_column(title, justify="right", min_width=5)
    # Numbers are never cut short: on a narrow terminal their titles wrap instead.
    for title in ("loss band", "grad dist max", "beta", "train loss", "test acc.", "diverged"):
        table.add_column(title, justify="right", min_width=6, no_wrap=False, overflow="fold")
    for row in rows:
        numbers = [
            row["loss_band"],
            row["grad_dist_max"],
            row["beta"],
            row["train_loss"],
            row["test_accuracy"],
        ]
        diverged = row["diverged_at"]
        table.add_row(
            row["run"],
            row["variant"],
            row["status"],
            str(row["steps"]),
            str(row["probed"]),
            *("-" if v is None else format_number(v) for v in numbers),
            "-" if diverged is None else f"step {diverged}",
        )
    console.print(table)
