"""Shared pieces of the command: the Typer app, consoles, one-line errors, small parsers, and
the summary table and figures printed after a run.
"""

from __future__ import annotations

import importlib.util
from datetime import datetime
from pathlib import Path

import typer
from rich.console import Console
from rich.table import Table
from rich.text import Text

from landscape.config import RunConfig

app = typer.Typer(
    help=(
        "Measure why an optimiser finds a network easy or hard to train: train VGG networks with "
        "and without BatchNorm, or your own (--model package.module:factory), checkpoint every "
        "step, and probe the loss landscape along the gradient (Santurkar et al. 2018, 'How "
        "Does Batch Normalization Help Optimization?'); then curvature, internal covariate "
        "shift, surfaces, sweeps, figures, reports and TensorBoard logs from the run directory."
    ),
    no_args_is_help=True,
    add_completion=False,
    pretty_exceptions_enable=False,
)


# What the command prints holds user text (paths, names, messages from files and libraries): it
# prints literally, never read as markup or emoji codes ("run[final]/x.tar" stays whole). Styles
# are given as rich Text.
console = Console(soft_wrap=True, markup=False, emoji=False)


err_console = Console(stderr=True, markup=False, emoji=False)


class CliError(Exception):
    """A bad argument: printed as one line, exit code 2."""


def error_line(message: str) -> Text:
    """Returns ``error: MESSAGE`` with the message as it is (no markup read in it)."""
    return Text.assemble(("error:", "bold red"), " ", message)


def fail(message: str, code: int = 2) -> None:
    """Prints ``error: MESSAGE`` on stderr, literally, and exits with ``code``."""
    err_console.print(error_line(message), highlight=False, soft_wrap=True)
    raise typer.Exit(code)


def parse_list(text: str, option: str) -> tuple[str, ...]:
    items = tuple(v.strip() for v in text.split(",") if v.strip())
    if not items:
        raise CliError(f"{option} needs at least one name")
    return items


def parse_number(text: str | float, option: str) -> float:
    """Parses a number given as text (the --noise-* options), or raises CliError in one line."""
    try:
        return float(text)
    except ValueError:
        raise CliError(f"{option} {text!r} is not a number") from None


def check_positive(name: str, value: int | float | None, allow_zero: bool = False) -> None:
    if value is not None and (value < 0 or (value == 0 and not allow_zero)):
        raise CliError(
            f"{name} must be {'non-negative' if allow_zero else 'positive'}, got {value}"
        )


def default_run_dir(config: RunConfig) -> Path:
    stamp = datetime.now().strftime("%Y%m%d-%H%M%S")
    return Path("runs") / f"{config.preset}-{stamp}"


def print_summary(run_dir: Path, config: RunConfig) -> None:
    """Prints the table of medians over steps, early phase and overall, with ratios."""
    from landscape.results import divergence_line, load, load_divergence
    from landscape.summary import QUANTITIES, ratios, summarize_run

    for variant, record in load_divergence(run_dir).items():
        console.print(divergence_line(variant, record), markup=False, highlight=False)
    records = load(run_dir)
    if not records:
        console.print("no probe records to summarise")
        return
    rows = summarize_run(records, config.steps)
    variants = list(records)
    if "standard" in records and "batchnorm" in records:
        rows += ratios(rows, "standard", "batchnorm")
    elif len(variants) == 2:
        rows += ratios(rows, variants[0], variants[1])
    early = max(1, round(0.1 * config.steps))
    table = Table(
        title=f"Landscape probe: medians over probed steps (early = steps < {early})",
        caption="loss band = max-min of L(x - eta g) over eta; grad dist max = max over eta of "
        "||grad L(x - eta g) - g||; beta = effective beta-smoothness; div. = steps with a "
        "non-finite value (inf: diverged); a ratio above 1 means the first variant is rougher.",
    )
    table.add_column("variant", no_wrap=True)
    table.add_column("phase")
    table.add_column("steps", justify="right")
    for title in ("loss band", "grad dist max", "beta"):
        table.add_column(title, justify="right")
    table.add_column("div.", justify="right")
    for row in rows:
        table.add_row(
            row["variant"],
            row["phase"],
            str(row.get("steps", "")),
            *(format_number(row[key]) for key, _ in QUANTITIES),
            str(row.get("diverged", "")),
        )
    console.print(table)


def format_number(value: float) -> str:
    if value != value:
        return "n/a"
    if value == float("inf"):
        return "inf"
    return f"{value:.3g}"


def load_saved_config(run_dir: Path) -> RunConfig:
    from landscape.rundir import RunError, load_config
    from landscape.sweep import SWEEP_FILE

    try:
        return load_config(run_dir)
    except RunError as err:
        if (Path(run_dir) / SWEEP_FILE).exists() and not (Path(run_dir) / "config.json").exists():
            fail(
                f"{run_dir} is a sweep, not a run: each of its runs is a folder inside it; "
                f"landscape sweep {run_dir} prints its summary"
            )
        fail(str(err))
        raise  # unreachable: fail exits


def make_figures(run_dir: Path, formats: tuple[str, ...] = ("png", "pdf"), smooth: int = 0) -> None:
    from landscape.plots import plot_run
    from landscape.report import write_report

    paths = plot_run(run_dir, formats=formats, smooth=smooth)
    report = write_report(run_dir)
    if paths:
        console.print(f"figures: {Path(paths[0]).parent}", highlight=False)
    console.print(f"report: {report}", highlight=False)


def parse_devices(text: str) -> int | str:
    """Parses ``--devices``: ``all`` or a positive number of devices."""
    if text == "all":
        return text
    try:
        count = int(text)
    except ValueError:
        count = 0
    if count < 1:
        raise CliError(f"--devices {text!r}: use all or a positive number of devices")
    return count


def start_distributed() -> None:
    """Joins a multi-host run; a missing coordinator becomes a one-line error."""
    from landscape.mesh import initialize_distributed

    try:
        process, count = initialize_distributed()
    except (ValueError, RuntimeError) as err:
        raise CliError(f"--distributed: {err}") from None
    if process == 0:
        console.print(f"distributed: {count} processes", highlight=False)


def positive_or_fail(name: str, value: int) -> None:
    if value < 0:
        fail(f"{name} must be non-negative, got {value}")


def parse_range(text: str, option: str) -> tuple[float, float, int]:
    """Parses ``LO:HI:N`` (N evenly spaced values from LO to HI) for a picture's grid."""
    try:
        lo, hi, n = text.split(":")
        grid = (float(lo), float(hi), int(n))
    except ValueError:
        raise CliError(f"{option} {text!r}: use LO:HI:N, e.g. -1:1:21") from None
    if grid[2] < 1 or not all(abs(v) < float("inf") for v in grid[:2]):
        raise CliError(f"{option} {text!r}: need finite LO, HI and N >= 1")
    return grid


def parse_step(text: str, option: str) -> int | str:
    """Parses a checkpoint step: a non-negative integer, ``init`` or ``final``."""
    if text in ("init", "final"):
        return text
    try:
        step = int(text)
    except ValueError:
        raise CliError(f"{option} {text!r}: give a checkpoint step, init or final") from None
    if step < 0:
        raise CliError(f"{option} must be non-negative, got {step}")
    return step


def parse_steps(text: str) -> tuple[int, ...]:
    """Parses ``--steps``: a comma-separated list of training steps, or ranges ``A:B`` (inclusive)."""
    steps: list[int] = []
    try:
        for item in (v.strip() for v in text.split(",") if v.strip()):
            if ":" in item:
                lo, hi = (int(x) for x in item.split(":"))
                steps.extend(range(lo, hi + 1))
            else:
                steps.append(int(item))
    except ValueError:
        raise CliError(
            f"--steps {text!r}: use a list of steps (0,50,100) or ranges (0:100)"
        ) from None
    if not steps or any(s < 0 for s in steps):
        raise CliError(f"--steps {text!r}: give non-negative training steps")
    return tuple(steps)


def parse_log(text: str | None, run_dir: Path) -> Path | None:
    """Parses ``--log``: ``tensorboard`` or ``tensorboard:DIR``; returns the log directory
    (None without ``--log``). Raises CliError for another writer or a missing extra."""
    if text is None:
        return None
    kind, _, where = text.partition(":")
    if kind != "tensorboard":
        raise CliError(f"unknown --log {text!r}; use tensorboard or tensorboard:DIR")
    if importlib.util.find_spec("tensorboardX") is None:
        raise CliError(
            '--log tensorboard needs the tensorboard extra: pip install -e ".[tensorboard]" in your '
            "landscape checkout"
        )
    return Path(where) if where else run_dir / "tensorboard"


def export_records(run_dir: Path, log_dir: Path | None, kinds: tuple[str, ...]) -> None:
    """Writes the run's records of ``kinds`` to TensorBoard in ``log_dir`` (if given)."""
    if log_dir is None:
        return
    from landscape.tensorboard import export_run

    export_run(run_dir, log_dir, kinds=kinds, figures=False)
    console.print(f"tensorboard: {log_dir}", highlight=False)
