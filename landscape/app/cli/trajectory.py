"""``landscape trajectory``: the optimisation path of a finished run on its PCA directions."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated, Any

import typer

from landscape.app.cli.common import CliError, app, check_positive, fail, parse_range
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
from landscape.app.cli.pictures import check_picture_options, run_picture


def parse_grid(text: str) -> tuple[tuple[float, float, int] | None, int]:
    """Parses ``auto``, ``auto:N`` or ``LO:HI:N``; returns ``(grid or None for auto, N)``."""
    if text == "auto" or text.startswith("auto:"):
        count = text.removeprefix("auto").removeprefix(":") or "21"
        try:
            points = int(count)
        except ValueError:
            raise CliError(f"--range {text!r}: use auto, auto:N or LO:HI:N") from None
        check_positive("--range N", points)
        return None, points
    grid = parse_range(text, "--range")
    return grid, grid[2]


def _describe_path(variant: str, path: Path, header: dict[str, Any]) -> str:
    """Returns the line printed for a trajectory's record: its checkpoints, the two directions'
    shares of the path's variance, the record's path."""
    info = header["info"]
    steps = info["path"]["steps"]
    shares = " and ".join(f"{100 * r:.1f}%" for r in info["explained_variance_ratio"])
    return (
        f"{variant}: {len(steps)} checkpoints (steps {steps[0]}-{steps[-1]}); the two "
        f"PCA directions explain {shares} of the path's variance; {path}"
    )


@app.command()
def trajectory(
    run_dir: RunDirArg,
    variants: PictureVariantsOpt = None,
    grid: Annotated[
        str,
        typer.Option(
            "--range",
            "--grid",
            help="Grid of a and b: auto (the default, 21 x 21 values fitted to the path), auto:N, or LO:HI:N for both axes, in the directions' units (unit PCA directions: parameter distance).",
        ),
    ] = "auto",
    every: Annotated[
        int,
        typer.Option(
            "--every",
            help="Use every k-th kept checkpoint (default 1: all of them); the final one always ends the path.",
        ),
    ] = 1,
    filter_normalize: Annotated[
        bool,
        typer.Option(
            "--filter-normalize/--no-filter-normalize",
            help="Rescale each filter of the two PCA directions to the final model's filter norm (Li et al.'s Sec. 4) and project the path on them by least squares. Default off: unit PCA directions, as in Li et al.'s Sec. 7.",
        ),
    ] = False,
    ignore: Annotated[
        str,
        typer.Option(
            "--ignore",
            help="biases-and-bn (default): leave biases and BatchNorm parameters out of the PCA and the directions; none: keep every parameter.",
        ),
    ] = "biases-and-bn",
    batches: PictureBatchesOpt = 1,
    mode: PictureModeOpt = "train",
    accuracy: PictureAccuracyOpt = True,
    oversampling: Annotated[
        int,
        typer.Option(
            "--oversampling",
            help="Extra columns of the randomised PCA's sketch (default 10); memory grows with 2 + this.",
        ),
    ] = 10,
    power_iterations: Annotated[
        int,
        typer.Option(
            "--power-iterations",
            help="Power iterations of the randomised PCA, one more pass over the checkpoints each (default 0: two passes). Exact anyway with at most 12 checkpoints.",
        ),
    ] = 0,
    seed: Annotated[int, typer.Option("--seed", help="Seed of the PCA's random sketch.")] = 0,
    chunk: PictureChunkOpt = None,
    strategy: PictureStrategyOpt = None,
    name: Annotated[
        str | None,
        typer.Option(
            "--name",
            help="Record name: RUN_DIR/<variant>/surfaces/<name>.jsonl. Default: trajectory.",
        ),
    ] = None,
    data: PictureDataOpt = None,
    overwrite: PictureOverwriteOpt = False,
    figures: PictureFiguresOpt = True,
    progress: ProgressOpt = True,
) -> None:
    """The optimisation path on its two PCA directions, over the loss of their plane, for each variant side by side (Li et al. 2018, Sec. 7)."""
    from landscape.surfaces import IGNORE_CHOICES

    try:
        axis, points = parse_grid(grid)
        check_positive("--every", every)
        if ignore not in IGNORE_CHOICES:
            raise CliError(f"unknown --ignore {ignore!r}; choose biases-and-bn or none")
        check_positive("--oversampling", oversampling, allow_zero=True)
        check_positive("--power-iterations", power_iterations, allow_zero=True)
        chosen = check_picture_options(mode, batches, chunk, strategy, variants)
    except CliError as err:
        fail(str(err))
    from landscape.analyses.trajectory import PathOptions
    from landscape.analyses.trajectory import trajectory as run_trajectory

    run_picture(
        run_dir,
        run_trajectory,
        data=data,
        progress=progress,
        figures=figures,
        chunk=chunk,
        strategy=strategy,
        describe=_describe_path,
        progress_columns=(),
        name_width=26,
        variants=chosen,
        every=every,
        grid=axis,
        points=points,
        filter_normalize=filter_normalize,
        ignore=ignore,
        batches=batches,
        mode=mode,
        accuracy=accuracy,
        name=name,
        overwrite=overwrite,
        path_options=PathOptions(
            oversampling=oversampling, power_iterations=power_iterations, seed=seed
        ),
    )
