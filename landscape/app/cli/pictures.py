"""Loss-landscape pictures of a finished run: ``landscape surface`` and ``landscape interpolate``."""

from __future__ import annotations

import functools
from collections.abc import Callable
from pathlib import Path
from typing import Annotated, Any

import typer

from landscape.app import runtime
from landscape.app.cli.common import (
    CliError,
    app,
    check_positive,
    console,
    err_console,
    fail,
    load_saved_config,
    parse_list,
    parse_range,
    parse_step,
)
from landscape.app.cli.options import (
    PictureAccuracyOpt,
    PictureBatchesOpt,
    PictureChunkOpt,
    PictureDataOpt,
    PictureFiguresOpt,
    PictureModeOpt,
    PictureOverwriteOpt,
    PictureStrategyOpt,
    PictureVariantsOpt,
    ProgressOpt,
    RunDirArg,
)

NameOpt = Annotated[
    str | None,
    typer.Option(
        "--name",
        help="Record name: RUN_DIR/<variant>/surfaces/<name>.jsonl. Default: step<N>_<dims>d_<direction> or interp_<A>_<B>.",
    ),
]


def check_picture_options(
    mode: str, batches: int, chunk: int | None, strategy: str | None, variants: str | None
) -> tuple[str, ...] | None:
    """Checks the options every picture command shares; returns the chosen variants (None: all
    the run's). Raises CliError, one line."""
    from landscape.surfaces import GRID_STRATEGIES, MODES

    if mode not in MODES:
        raise CliError(f"unknown --mode {mode!r}; choose train or eval")
    check_positive("--batches", batches)
    check_positive("--chunk", chunk)
    if strategy is not None and strategy not in GRID_STRATEGIES:
        raise CliError(f"unknown --strategy {strategy!r}; choose map or vmap")
    return parse_list(variants, "--variants") if variants else None


def _describe_picture(variant: str, path: Path, header: dict[str, Any]) -> str:
    """Returns the line printed for a surface's or an interpolation's record."""
    from landscape.surfaces import MODE_TEXT

    return f"{variant}: {path} ({MODE_TEXT[header['settings']['mode']]})"


def run_picture(
    run_dir: Path,
    analysis: Callable[..., dict[str, Path]],
    *,
    data: str | None,
    progress: bool,
    figures: bool,
    chunk: int | None,
    strategy: str | None,
    describe: Callable[[str, Path, dict[str, Any]], str] = _describe_picture,
    progress_columns: tuple[str, ...] = ("points",),
    name_width: int = 12,
    **arguments: Any,
) -> None:
    """Runs a picture command's analysis on a finished run and prints what it wrote.

    Loads the run's data (``data``: where it moved; None: its config's), calls
    ``analysis(run_dir, **arguments, options=GridOptions(chunk, strategy), dataset=...,
    on_progress=...)`` under a progress bar (a task per name it reports, ``progress_columns``
    beside the bar, names padded to ``name_width``), prints ``describe(variant, path, header)``
    for each record written and, with ``figures``, draws them into RUN_DIR/figures/. Bad data
    or a refused record exit 2 in one line.
    """
    from landscape.analyses.pictures import GridOptions
    from landscape.data import DataError, load_dataset
    from landscape.surface_records import SurfaceError, load_record

    config = load_saved_config(run_dir)
    runtime.prepare_compute()
    try:
        dataset = load_dataset(data or config.data, progress=progress)
        call = functools.partial(
            analysis,
            run_dir,
            **arguments,
            options=GridOptions(chunk=chunk, strategy=strategy),
            dataset=dataset,
        )
        if progress:
            from landscape.progress import progress_bar

            name = f"{{task.description:<{name_width}}}"
            with progress_bar(*progress_columns, console=err_console, name=name) as bar:
                tasks: dict[str, int] = {}

                def on_progress(task: str, done: int, total: int) -> None:
                    if task not in tasks:
                        tasks[task] = bar.add_task(task, total=total)
                    bar.update(tasks[task], completed=done)

                written = call(on_progress=on_progress)
        else:
            written = call(on_progress=None)
    except (DataError, SurfaceError) as err:
        fail(str(err))
    for variant, path in written.items():
        line = describe(variant, path, load_record(path)["header"])
        console.print(line, highlight=False, soft_wrap=True)
    if figures:
        from landscape.plots import save_figure, surface_figures

        names = {Path(path).stem for path in written.values()}
        for fig_name, fig in surface_figures(run_dir, names=names).items():
            out = save_figure(fig, run_dir / "figures" / fig_name)[0]
            console.print(str(out), highlight=False, soft_wrap=True)


@app.command()
def surface(
    run_dir: RunDirArg,
    step: Annotated[
        str,
        typer.Option(
            "--step", help="The checkpoint to picture around: a saved step, init or final."
        ),
    ],
    variants: PictureVariantsOpt = None,
    dims: Annotated[
        int,
        typer.Option("--dims", help="1: the curve L(x + a d); 2: the surface L(x + a d1 + b d2)."),
    ] = 1,
    grid: Annotated[
        str,
        typer.Option(
            "--range",
            help="Grid of a (and b) as LO:HI:N. Default -1:1:21. In units of the directions, whose filters have the model's filter norms: a = 1 moves each filter by its own norm.",
        ),
    ] = "-1:1:21",
    direction: Annotated[
        str,
        typer.Option(
            "--direction",
            help="random (default): filter-normalised Gaussian directions (Li et al. 2018); gradient: d1 is the descent direction -g scaled to the weights' norm (in 2D, d2 random).",
        ),
    ] = "random",
    seed: Annotated[int, typer.Option("--seed", help="Seed of the random directions.")] = 0,
    batches: PictureBatchesOpt = 1,
    mode: PictureModeOpt = "train",
    ignore: Annotated[
        str,
        typer.Option(
            "--ignore",
            help="biases-and-bn (default, Li et al.'s): zero direction for biases and BatchNorm parameters; none: filter-normalise them too (each vector as one filter).",
        ),
    ] = "biases-and-bn",
    orthogonalize: Annotated[
        bool,
        typer.Option(
            "--orthogonalize/--no-orthogonalize",
            help="Make d2 orthogonal to d1 (2D). Default off: random directions are nearly orthogonal.",
        ),
    ] = False,
    accuracy: PictureAccuracyOpt = True,
    chunk: PictureChunkOpt = None,
    strategy: PictureStrategyOpt = None,
    name: NameOpt = None,
    data: PictureDataOpt = None,
    overwrite: PictureOverwriteOpt = False,
    figures: PictureFiguresOpt = True,
    progress: ProgressOpt = True,
) -> None:
    """Picture the loss around a checkpoint: a 1D or 2D slice along filter-normalised random or gradient directions (Li et al. 2018)."""
    try:
        at = parse_step(step, "--step")
        axis = parse_range(grid, "--range")
        if dims not in (1, 2):
            raise CliError(f"--dims must be 1 or 2, got {dims}")
        if direction not in ("random", "gradient"):
            raise CliError(f"unknown --direction {direction!r}; choose random or gradient")
        if ignore not in ("biases-and-bn", "none"):
            raise CliError(f"unknown --ignore {ignore!r}; choose biases-and-bn or none")
        chosen = check_picture_options(mode, batches, chunk, strategy, variants)
    except CliError as err:
        fail(str(err))
    from landscape.analyses.pictures import surface as run_surface

    run_picture(
        run_dir,
        run_surface,
        data=data,
        progress=progress,
        figures=figures,
        chunk=chunk,
        strategy=strategy,
        step=at,
        variants=chosen,
        dims=dims,
        grid=axis,
        direction=direction,
        seed=seed,
        batches=batches,
        mode=mode,
        ignore=ignore,
        orthogonalize=orthogonalize,
        accuracy=accuracy,
        name=name,
        overwrite=overwrite,
    )


@app.command()
def interpolate(
    run_dir: RunDirArg,
    start: Annotated[
        str, typer.Option("--from", help="Checkpoint A: a saved step or init (the default).")
    ] = "init",
    end: Annotated[
        str, typer.Option("--to", help="Checkpoint B: a saved step or final (the default).")
    ] = "final",
    variants: PictureVariantsOpt = None,
    grid: Annotated[
        str,
        typer.Option(
            "--range", help="Grid of t as LO:HI:N; t = 0 is A, t = 1 is B. Default -0.5:1.5:41."
        ),
    ] = "-0.5:1.5:41",
    batches: PictureBatchesOpt = 1,
    mode: PictureModeOpt = "train",
    accuracy: PictureAccuracyOpt = True,
    chunk: PictureChunkOpt = None,
    strategy: PictureStrategyOpt = None,
    name: NameOpt = None,
    data: PictureDataOpt = None,
    overwrite: PictureOverwriteOpt = False,
    figures: PictureFiguresOpt = True,
    progress: ProgressOpt = True,
) -> None:
    """Loss along the straight line (1 - t) x_A + t x_B between two checkpoints, e.g. from init to final (Goodfellow et al. 2015)."""
    try:
        step_a, step_b = parse_step(start, "--from"), parse_step(end, "--to")
        axis = parse_range(grid, "--range")
        chosen = check_picture_options(mode, batches, chunk, strategy, variants)
    except CliError as err:
        fail(str(err))
    from landscape.analyses.pictures import interpolate as run_interpolate

    run_picture(
        run_dir,
        run_interpolate,
        data=data,
        progress=progress,
        figures=figures,
        chunk=chunk,
        strategy=strategy,
        start=step_a,
        end=step_b,
        variants=chosen,
        grid=axis,
        batches=batches,
        mode=mode,
        accuracy=accuracy,
        name=name,
        overwrite=overwrite,
    )
