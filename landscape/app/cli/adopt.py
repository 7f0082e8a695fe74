"""``landscape adopt``: Orbax checkpoints saved by someone else's training made into a run
directory, each step probed on its own analysis batch."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated

import typer

from landscape.app import runtime
from landscape.app.cli.common import CliError, app, console, fail
from landscape.app.cli.options import (
    BatchOpt,
    DataOpt,
    LossOpt,
    LrOpt,
    ModelArgOpt,
    ModelOpt,
    OverwriteOpt,
    SeedOpt,
    VariantsOpt,
)
from landscape.app.cli.run import build_config
from landscape.config import ConfigError
from landscape.data import DataError


@app.command()
def adopt(
    source: Annotated[
        Path, typer.Argument(help="A folder of Orbax checkpoints (an orbax CheckpointManager's).")
    ],
    out: Annotated[Path, typer.Option("--out", help="The run directory to create.")],
    model: ModelOpt = None,
    model_arg: ModelArgOpt = None,
    variants: VariantsOpt = None,
    loss: LossOpt = None,
    data: DataOpt = None,
    batch_size: BatchOpt = None,
    lr: LrOpt = None,
    seed: SeedOpt = None,
    etas: Annotated[
        str | None,
        typer.Option("--etas", help="Probe step sizes, LO:HI:N or a list. Default: [1/2, 4] x lr."),
    ] = None,
    item: Annotated[
        str | None,
        typer.Option("--item", help="The checkpoint item to read when the manager saved several."),
    ] = None,
    params_key: Annotated[
        str | None,
        typer.Option(
            "--params-key",
            help="Dotted path of the parameters in a checkpoint. Default: params, else the whole tree.",
        ),
    ] = None,
    state_key: Annotated[
        str | None,
        typer.Option(
            "--state-key",
            help="Dotted path of BatchNorm's statistics. Default: batch_stats, else none.",
        ),
    ] = None,
    overwrite: OverwriteOpt = False,
) -> None:
    """Analyse checkpoints another training saved: check each against the network, save it as the run's checkpoint, and probe it on its own deterministic analysis batch (the original batches are unknown; the run's provenance and report say so). Every analysis command then works on --out."""
    from landscape.adopt import adopt_checkpoints  # JAX and orbax: not for --help
    from landscape.rundir import RunError

    try:
        if not model:
            raise CliError("give --model: the network the checkpoints hold")
        config = build_config(
            "smoke",
            model=model,
            model_arg=model_arg,
            variants=variants,
            loss=loss,
            data=data,
            batch_size=batch_size,
            lr=lr,
            seed=seed,
            etas=etas,
        ).replace(preset="adopted")
    except CliError as err:
        fail(str(err))
    runtime.prepare_compute()
    try:
        steps = adopt_checkpoints(
            source,
            config,
            out,
            item=item,
            params_key=params_key,
            state_key=state_key,
            overwrite=overwrite,
            say=lambda line: console.print(line, highlight=False),
        )
    except (RunError, DataError, ConfigError) as err:
        fail(str(err))
    console.print(f"{len(steps)} checkpoints adopted into {out}", highlight=False)
