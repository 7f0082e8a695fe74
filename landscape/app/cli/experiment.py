"""``landscape experiment``: one paper figure group end to end through the command (resumable),
then a combined report.
"""

from __future__ import annotations

from pathlib import Path
from typing import Annotated

import typer

from landscape.app.cli.common import app, console, fail
from landscape.app.cli.options import DataOpt


@app.command()
def experiment(
    file: Annotated[
        Path,
        typer.Argument(
            help="An experiment file (TOML), e.g. experiments/figure1_4_smoothness.toml; see experiments/README.md."
        ),
    ],
    preset_name: Annotated[
        str,
        typer.Option(
            "--preset",
            help="Which of the file's presets to run (smoke, quick, paper, ...). Default: quick.",
        ),
    ] = "quick",
    data: DataOpt = None,
    out: Annotated[
        Path | None,
        typer.Option(
            "--out",
            help="Folder for the experiment's runs and combined report. Default: runs/<file name>-<preset>.",
        ),
    ] = None,
    set_values: Annotated[
        list[str] | None,
        typer.Option(
            "--set",
            help="Override a placeholder of the file, e.g. --set data=synthetic (repeatable); a name the file does not use is refused.",
        ),
    ] = None,
    dry_run: Annotated[
        bool, typer.Option("--dry-run", help="Print the commands without running them.")
    ] = False,
) -> None:
    """Run one paper figure group end to end through the CLI (resumable), then write a combined report."""
    from landscape.experiments import (
        ExperimentError,
        load_experiment,
        resolve,
        run_experiment,
        variables_for,
        write_combined_report,
    )

    try:
        overrides = {}
        for item in set_values or []:
            key, sep, value = item.partition("=")
            if not sep or not key.strip():
                raise ExperimentError(f"--set {item!r}: use NAME=VALUE")
            overrides[key.strip()] = value
        exp = load_experiment(file)
        out_dir = out or Path("runs") / f"{file.stem}-{preset_name}"
        values = variables_for(exp, preset_name, out_dir, data, overrides)
        if dry_run:
            for step in resolve(exp, values):
                console.print(f"{step.name}: landscape {' '.join(step.run)}", highlight=False)
            return
        run_experiment(exp, values, say=lambda m: console.print(m, highlight=False))
    except ExperimentError as err:
        fail(str(err))
    path = write_combined_report(out_dir, exp.title, exp.description)
    console.print(f"combined report: {path}", highlight=False)
