"""``landscape bench``: time the train step, the probe strategies, compilation, checkpointing and a
whole run, side by side in one process.
"""

from __future__ import annotations

from pathlib import Path
from typing import Annotated

import typer
from rich.table import Table

from landscape.app import runtime
from landscape.app.cli.common import CliError, app, check_positive, console, fail, parse_list
from landscape.app.cli.options import (
    ArchOpt,
    BatchOpt,
    ConvOpt,
    LossOpt,
    ModelArgOpt,
    ModelOpt,
    NoiseMuOpt,
    NoiseRMuOpt,
    NoiseRSigmaOpt,
    NoiseSigmaOpt,
    PresetOpt,
    WidthOpt,
)
from landscape.app.cli.run import build_config


@app.command()
def bench(
    preset_name: PresetOpt = "quick",
    data: Annotated[
        str,
        typer.Option(
            "--data",
            help="Data to time on. Speed does not depend on the pixels, so synthetic data of the same shape is the default.",
        ),
    ] = "synthetic",
    variant: Annotated[
        str | None,
        typer.Option(
            "--variant",
            help="The variant to time: any name --variants takes (standard, batchnorm (default), layernorm, groupnorm, weightnorm, l2, ...); with --model, one value of the factory's keyword (norm=batchnorm) or nothing (the factory as it is).",
        ),
    ] = None,
    model: ModelOpt = None,
    model_arg: ModelArgOpt = None,
    loss: LossOpt = None,
    width: WidthOpt = None,
    batch_size: BatchOpt = None,
    arch: ArchOpt = None,
    conv_impl: ConvOpt = None,
    noise_mu: NoiseMuOpt = None,
    noise_sigma: NoiseSigmaOpt = None,
    noise_r_mu: NoiseRMuOpt = None,
    noise_r_sigma: NoiseRSigmaOpt = None,
    etas: Annotated[
        str | None,
        typer.Option(
            "--etas", help="Probe grid (its length is what matters). Default: the paper's 8 values."
        ),
    ] = None,
    strategies: Annotated[
        str, typer.Option("--strategies", help="Probe strategies to compare.")
    ] = "map,unroll,vmap",
    repeats: Annotated[
        int, typer.Option("--repeats", help="Alternating timing rounds; medians are reported.")
    ] = 5,
    run_steps: Annotated[
        int,
        typer.Option(
            "--run-steps",
            help="Also time a whole run of this many steps, probed and checkpointed every step, and track its memory (0 = skip).",
        ),
    ] = 20,
    out: Annotated[
        Path,
        typer.Option(
            "--out", help="Folder for the results file (bench.jsonl, one JSON line per run)."
        ),
    ] = Path("bench-results"),
) -> None:
    """Time the train step, each probe strategy, compilation, checkpointing, a whole run and its memory, side by side in one process."""
    from landscape.bench import result_rows, run_bench, write_results
    from landscape.data import DataError, load_dataset
    from landscape.probe import STRATEGIES
    from landscape.rundir import RunError
    from landscape.runs import check_variant

    try:
        config = build_config(
            preset_name,
            data=data,
            batch_size=batch_size,
            arch=arch,
            width=width,
            variants=variant if variant is not None or model else "batchnorm",
            model=model,
            model_arg=model_arg,
            loss=loss,
            conv_impl=conv_impl,
            etas=etas,
            noise_mu=noise_mu,
            noise_sigma=noise_sigma,
            noise_r_mu=noise_r_mu,
            noise_r_sigma=noise_r_sigma,
        )
        chosen = parse_list(strategies, "--strategies")
        bad = [s for s in chosen if s not in STRATEGIES]
        if bad:
            raise CliError(
                f"unknown --strategies {', '.join(bad)}; choose from {', '.join(STRATEGIES)}"
            )
        if repeats < 1:
            raise CliError("--repeats must be positive")
        check_positive("--run-steps", run_steps, allow_zero=True)
        dataset = load_dataset(config.data, progress=True)
        variant = config.variants[0]
        check_variant(config, variant, dataset)  # a user's network: checked before any timing
    except CliError as err:
        fail(str(err))
    except (DataError, RunError) as err:
        fail(str(err))
    # As the other commands, without the compilation cache: compiling is timed.
    runtime.tune_malloc()
    with console.status("benchmarking") as status:
        result = run_bench(
            config,
            dataset,
            variant=variant,
            strategies=chosen,
            repeats=repeats,
            run_steps=run_steps,
            progress=lambda message: status.update(message),
            process=runtime.describe(),
        )
    path = write_results(result, out)
    m = result["machine"]
    what = config.model_for(variant).factory or f"width {config.model.width}"
    table = Table(
        title=f"{config.preset} preset, {variant}, {what}, "
        f"batch {config.batch_size} on {m['backend']} ({m['device']}, {m['cpu_count']} CPUs)"
    )
    table.add_column("quantity")
    table.add_column("median", justify="right")
    for name, value in result_rows(result):
        table.add_row(name, value)
    console.print(table)
    console.print(f"results appended to {path}", highlight=False)
