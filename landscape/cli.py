"""The ``landscape`` command: parse options, build a config, call the library.

No JAX work happens at import time, so ``landscape --help`` is instant.
"""

from __future__ import annotations

import dataclasses
import json
import sys
from datetime import datetime
from pathlib import Path
from typing import Annotated

import typer
from rich.console import Console
from rich.table import Table

from landscape.config import PRESETS, RunConfig, preset

app = typer.Typer(
    help=(
        "Measure why an optimiser finds a network easy or hard to train: train VGG networks with "
        "and without BatchNorm, checkpoint every step, and probe the loss landscape along the "
        "gradient (Santurkar et al. 2018, 'How Does Batch Normalization Help Optimization?')."
    ),
    no_args_is_help=True,
    add_completion=False,
    pretty_exceptions_enable=False,
)
console = Console(soft_wrap=True)
err_console = Console(stderr=True)


class CliError(Exception):
    """A bad argument: printed as one line, exit code 2."""


def fail(message: str, code: int = 2) -> None:
    err_console.print(f"[bold red]error:[/] {message}", highlight=False, soft_wrap=True)
    raise typer.Exit(code)


def parse_etas(text: str) -> tuple[float, ...]:
    """Parses ``LO:HI:N`` (N evenly spaced values) or a comma-separated list of step sizes."""
    try:
        if ":" in text:
            lo, hi, n = text.split(":")
            count = int(n)
            if count < 1:
                raise ValueError
            lo_f, hi_f = float(lo), float(hi)
            if count == 1:
                values = (lo_f,)
            else:
                values = tuple(lo_f + (hi_f - lo_f) * i / (count - 1) for i in range(count))
        else:
            values = tuple(float(v) for v in text.split(",") if v.strip())
    except ValueError:
        raise CliError(
            f"--etas {text!r}: use LO:HI:N (e.g. 0.05:0.4:8) or a list (0.05,0.1,0.2)"
        ) from None
    if not values or any(not v > 0 for v in values):
        raise CliError(f"--etas {text!r}: step sizes must be positive numbers")
    return values


def parse_list(text: str, option: str) -> tuple[str, ...]:
    items = tuple(v.strip() for v in text.split(",") if v.strip())
    if not items:
        raise CliError(f"{option} needs at least one name")
    return items


def _positive(name: str, value: int | float | None, allow_zero: bool = False) -> None:
    if value is not None and (value < 0 or (value == 0 and not allow_zero)):
        raise CliError(
            f"{name} must be {'non-negative' if allow_zero else 'positive'}, got {value}"
        )


def build_config(
    *,
    preset_name: str,
    data: str | None,
    steps: int | None,
    batch_size: int | None,
    lr: float | None,
    optimizer: str | None,
    seed: int | None,
    arch: str | None,
    width: float | None,
    variants: str | None,
    conv_impl: str | None,
    checkpoint_every: int | None,
    max_to_keep: int | None,
    keep_period: int | None,
    keep_all: bool,
    eval_every: int | None,
    etas: str | None = None,
    probe_every: int | None = None,
    probe_strategy: str | None = None,
    placement: str | None = None,
) -> RunConfig:
    """Returns the preset with every option given on the command line applied to it."""
    if preset_name not in PRESETS:
        raise CliError(f"unknown preset {preset_name!r}; choose one of {', '.join(PRESETS)}")
    for name, value in (
        ("--steps", steps),
        ("--batch-size", batch_size),
        ("--lr", lr),
        ("--width", width),
        ("--probe-every", probe_every),
        ("--max-to-keep", max_to_keep),
        ("--keep-period", keep_period),
    ):
        _positive(name, value)
    _positive("--checkpoint-every", checkpoint_every, allow_zero=True)
    _positive("--eval-every", eval_every, allow_zero=True)
    cfg = preset(preset_name)
    top = {
        k: v
        for k, v in {
            "data": data,
            "steps": steps,
            "batch_size": batch_size,
            "seed": seed,
            "eval_every": eval_every,
        }.items()
        if v is not None
    }
    if variants is not None:
        top["variants"] = parse_list(variants, "--variants")
    model = {
        k: v
        for k, v in {
            "arch": arch,
            "width": width,
            "conv_impl": conv_impl,
            "placement": placement,
        }.items()
        if v is not None
    }
    opt = {k: v for k, v in {"learning_rate": lr, "name": optimizer}.items() if v is not None}
    ckpt = {
        k: v
        for k, v in {
            "every": checkpoint_every,
            "max_to_keep": max_to_keep,
            "keep_period": keep_period,
        }.items()
        if v is not None
    }
    if keep_all:
        ckpt["keep_all"] = True
    probe = {
        k: v for k, v in {"every": probe_every, "strategy": probe_strategy}.items() if v is not None
    }
    if etas is not None:
        probe["etas"] = parse_etas(etas)
    return cfg.replace(
        **top,
        model=dataclasses.replace(cfg.model, **model),
        optimizer=dataclasses.replace(cfg.optimizer, **opt),
        checkpoint=dataclasses.replace(cfg.checkpoint, **ckpt),
        probe=dataclasses.replace(cfg.probe, **probe),
    )


def validate(config: RunConfig) -> None:
    """Raises CliError for settings the library would reject later, before any work starts."""
    from landscape.models import NORMALIZERS, PLACEMENTS, VGG_CONFIGS
    from landscape.probe import STRATEGIES

    if config.model.arch not in VGG_CONFIGS:
        raise CliError(
            f"unknown --arch {config.model.arch!r}; choose one of {', '.join(VGG_CONFIGS)}"
        )
    for variant in config.variants:
        norm = config.model_for(variant).norm
        if norm not in NORMALIZERS:
            raise CliError(
                f"unknown variant {variant!r}; choose from standard, {', '.join(n for n in NORMALIZERS if n != 'none')}"
            )
    if config.model.placement not in PLACEMENTS:
        raise CliError(
            f"unknown --placement {config.model.placement!r}; choose {' or '.join(PLACEMENTS)}"
        )
    if config.model.conv_impl not in ("auto", "xla", "shifted"):
        raise CliError(
            f"unknown --conv-impl {config.model.conv_impl!r}; choose auto, xla or shifted"
        )
    if config.optimizer.name not in ("sgd", "momentum", "adam"):
        raise CliError(
            f"unknown --optimizer {config.optimizer.name!r}; choose sgd, momentum or adam"
        )
    if config.probe.strategy not in (*STRATEGIES, "auto"):
        raise CliError(
            f"unknown --probe-strategy {config.probe.strategy!r}; choose auto, {', '.join(STRATEGIES)}"
        )
    if len(set(config.variants)) != len(config.variants):
        raise CliError("--variants lists a variant twice")


def default_run_dir(config: RunConfig) -> Path:
    stamp = datetime.now().strftime("%Y%m%d-%H%M%S")
    return Path("runs") / f"{config.preset}-{stamp}"


def print_summary(run_dir: Path, config: RunConfig) -> None:
    """Prints the table of medians over steps, early phase and overall, with ratios."""
    from landscape.results import load
    from landscape.summary import QUANTITIES, ratios, summarize_run

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
            *(_fmt(row[key]) for key, _ in QUANTITIES),
            str(row.get("diverged", "")),
        )
    console.print(table)


def _fmt(value: float) -> str:
    if value != value:
        return "n/a"
    if value == float("inf"):
        return "inf"
    return f"{value:.3g}"


def enable_compilation_cache() -> None:
    """Keeps compiled programs on disk so a second run of the same model skips compilation.

    ``$LANDSCAPE_JAX_CACHE`` names the folder (default: ~/.cache/landscape/jax); ``0`` turns
    the cache off.
    """
    import os

    import jax

    folder = os.environ.get("LANDSCAPE_JAX_CACHE")
    if folder == "0":
        return
    if not folder:
        from landscape.data import resolve_cache_dir

        folder = str(resolve_cache_dir() / "jax")
    jax.config.update("jax_compilation_cache_dir", folder)


def _run_command(
    config: RunConfig,
    out: Path | None,
    *,
    resume: Path | None,
    overwrite: bool,
    probe_enabled: bool,
    progress: bool,
    figures: bool,
) -> None:
    from landscape.data import DataError
    from landscape.runs import RunError, run

    if resume is not None and out is not None and resume != out:
        raise CliError("give either --resume RUN_DIR or --out RUN_DIR, not both")
    run_dir = resume or out or default_run_dir(config)
    validate(config)
    enable_compilation_cache()
    console.print(f"run directory: [bold]{run_dir}[/]", highlight=False)
    try:
        reports = run(
            config,
            run_dir,
            resume=resume is not None,
            overwrite=overwrite,
            probe_enabled=probe_enabled,
            progress=progress,
        )
    except (DataError, RunError) as err:
        fail(str(err))
    except KeyboardInterrupt:
        fail(
            f"interrupted; everything up to the last checkpoint is kept. "
            f"Continue with: --resume {run_dir}",
            code=130,
        )
    for r in reports:
        if r.steps_run:
            rate = r.steps_run / r.wall_s if r.wall_s else float("nan")
            share = 100 * r.probe_s / r.wall_s if r.wall_s else 0.0
            console.print(
                f"{r.variant}: {r.steps_run} steps in {r.wall_s:.1f} s ({rate:.2f} steps/s), "
                f"probe {share:.0f}% of it ({r.probes_run} probed steps), "
                f"checkpoints {r.checkpoint_s:.1f} s",
                highlight=False,
            )
    if probe_enabled:
        print_summary(run_dir, load_saved_config(run_dir))
    if figures:
        _make_figures(run_dir)


def resumed_config(run_dir: Path, steps: int | None, data: str | None) -> RunConfig:
    """Returns the saved config of a run to resume; only --steps and --data may change."""
    config = load_saved_config(run_dir)
    _positive("--steps", steps)
    if steps is not None:
        config = config.replace(steps=steps)
    if data is not None:
        config = config.replace(data=data)
    return config


def load_saved_config(run_dir: Path) -> RunConfig:
    from landscape.runs import RunError, load_config

    try:
        return load_config(run_dir)
    except RunError as err:
        fail(str(err))
        raise  # unreachable: fail exits


def _make_figures(
    run_dir: Path, formats: tuple[str, ...] = ("png", "pdf"), smooth: int = 0
) -> None:
    from landscape.plots import plot_run
    from landscape.report import write_report

    paths = plot_run(run_dir, formats=formats, smooth=smooth)
    report = write_report(run_dir)
    if paths:
        console.print(f"figures: {Path(paths[0]).parent}", highlight=False)
    console.print(f"report: {report}", highlight=False)


# --- shared options ---------------------------------------------------------------------------

PresetOpt = Annotated[
    str,
    typer.Option(
        "--preset",
        help="Starting configuration: smoke (synthetic data, tiny VGG, under a minute on CPU), quick (real CIFAR-10, VGG-11 width 1/4, 1,500 steps) or paper (the full protocol, for a GPU). Options below override it.",
    ),
]
DataOpt = Annotated[
    str | None,
    typer.Option(
        "--data",
        help="Data: 'synthetic', a path to cifar-10-binary.tar.gz or its folder, or an image folder/tar with train/<class>/ and test/<class>/. Default: $LANDSCAPE_DATA, then the cache (~/.cache/landscape), then download.",
    ),
]
OutOpt = Annotated[
    Path | None,
    typer.Option("--out", help="Run directory to create. Default: runs/<preset>-<date>-<time>."),
]
StepsOpt = Annotated[
    int | None,
    typer.Option(
        "--steps",
        help="Training steps per variant. Default: the preset's (smoke 60, quick 1500, paper 15000).",
    ),
]
BatchOpt = Annotated[
    int | None,
    typer.Option("--batch-size", help="Minibatch size. Default: the preset's (128; smoke 32)."),
]
LrOpt = Annotated[
    float | None, typer.Option("--lr", help="Learning rate. Default: 0.1, as the paper.")
]
OptimOpt = Annotated[
    str | None,
    typer.Option("--optimizer", help="sgd (default, the paper's), momentum (0.9) or adam."),
]
SeedOpt = Annotated[
    int | None,
    typer.Option(
        "--seed",
        help="Seed of the initialisation and of the data order (shared by all variants). Default 0.",
    ),
]
ArchOpt = Annotated[
    str | None, typer.Option("--arch", help="vgg11 (default), vgg13, vgg16 or vgg19.")
]
WidthOpt = Annotated[
    float | None,
    typer.Option(
        "--width",
        help="Width multiplier of every layer. Default: the preset's (smoke 0.125, quick 0.25, paper 1).",
    ),
]
VariantsOpt = Annotated[
    str | None,
    typer.Option(
        "--variants",
        help="Comma-separated variants trained side by side with the same seed and data order: standard, batchnorm, noisy_batchnorm (BN + Algorithm 1's noise), noisy_none (the noise without BN), l1, l2, linf (l_p normalisation, Sec. 3.3). Default: standard,batchnorm.",
    ),
]
PlacementOpt = Annotated[
    str | None,
    typer.Option(
        "--placement",
        help="Where each normalisation layer sits: before (default, the paper's: conv, norm, ReLU) or after the ReLU (conv, ReLU, norm).",
    ),
]
ConvOpt = Annotated[
    str | None,
    typer.Option(
        "--conv-impl",
        help="Convolution implementation: auto (default: shifted-matmul on CPU, XLA's elsewhere), xla or shifted. Same numbers, different speed.",
    ),
]
CkptOpt = Annotated[
    int | None,
    typer.Option(
        "--checkpoint-every",
        help="Save a checkpoint every k steps (0 = never). Default 1: every step, as the analysis needs.",
    ),
]
KeepOpt = Annotated[
    int | None, typer.Option("--max-to-keep", help="Keep the newest k checkpoints. Default: 5.")
]
PeriodOpt = Annotated[
    int | None,
    typer.Option(
        "--keep-period",
        help="Also keep every k-th step's checkpoint forever. Default: the preset's (smoke 10, quick 50, paper 500).",
    ),
]
KeepAllOpt = Annotated[
    bool,
    typer.Option(
        "--keep-all", help="Keep every checkpoint (needs disk: about 4 bytes x parameters each)."
    ),
]
EvalOpt = Annotated[
    int | None,
    typer.Option(
        "--eval-every",
        help="Test accuracy every k steps (0 = only at the end). Default: the preset's.",
    ),
]
ResumeOpt = Annotated[
    Path | None,
    typer.Option(
        "--resume",
        help="Continue the run in this directory from its newest checkpoint with its saved settings (bit-identical to an uninterrupted run); only --steps (to extend it) and --data (the same data, moved) may change.",
    ),
]
OverwriteOpt = Annotated[
    bool, typer.Option("--overwrite", help="Replace an existing run directory.")
]
ProgressOpt = Annotated[bool, typer.Option("--progress/--no-progress", help="Show a progress bar.")]


@app.command()
def train(
    preset_name: PresetOpt = "quick",
    data: DataOpt = None,
    out: OutOpt = None,
    steps: StepsOpt = None,
    batch_size: BatchOpt = None,
    lr: LrOpt = None,
    optimizer: OptimOpt = None,
    seed: SeedOpt = None,
    arch: ArchOpt = None,
    width: WidthOpt = None,
    variants: VariantsOpt = None,
    placement: PlacementOpt = None,
    conv_impl: ConvOpt = None,
    checkpoint_every: CkptOpt = None,
    max_to_keep: KeepOpt = None,
    keep_period: PeriodOpt = None,
    keep_all: KeepAllOpt = False,
    eval_every: EvalOpt = None,
    resume: ResumeOpt = None,
    overwrite: OverwriteOpt = False,
    progress: ProgressOpt = True,
) -> None:
    """Train the variants (default: standard and BatchNorm VGG) and checkpoint every step, without probing."""
    _start(locals(), probe_enabled=False)


@app.command()
def probe(
    preset_name: PresetOpt = "quick",
    data: DataOpt = None,
    out: OutOpt = None,
    steps: StepsOpt = None,
    batch_size: BatchOpt = None,
    lr: LrOpt = None,
    optimizer: OptimOpt = None,
    seed: SeedOpt = None,
    arch: ArchOpt = None,
    width: WidthOpt = None,
    variants: VariantsOpt = None,
    placement: PlacementOpt = None,
    conv_impl: ConvOpt = None,
    etas: Annotated[
        str | None,
        typer.Option(
            "--etas",
            help="Step sizes of the probe: LO:HI:N or a list. Default: 8 values spanning [1/2, 4] x lr, the paper's grid (0.05:0.4:8 at lr 0.1).",
        ),
    ] = None,
    probe_every: Annotated[
        int | None,
        typer.Option(
            "--probe-every",
            help="Probe every k-th checkpoint. Default: the preset's (paper 1, quick 5, smoke 2).",
        ),
    ] = None,
    probe_strategy: Annotated[
        str | None,
        typer.Option(
            "--probe-strategy",
            help="How the step sizes are evaluated: auto (default: fastest measured for the backend), unroll, vmap or map.",
        ),
    ] = None,
    checkpoint_every: CkptOpt = None,
    max_to_keep: KeepOpt = None,
    keep_period: PeriodOpt = None,
    keep_all: KeepAllOpt = False,
    eval_every: EvalOpt = None,
    resume: ResumeOpt = None,
    overwrite: OverwriteOpt = False,
    from_run: Annotated[
        Path | None,
        typer.Option(
            "--from",
            help="Do not train: probe the saved checkpoints of this run again (any --etas), on the batch each was trained on. Writes <variant>/reprobe.jsonl.",
        ),
    ] = None,
    figures: Annotated[
        bool,
        typer.Option(
            "--figures/--no-figures", help="Draw the figures and the HTML report at the end."
        ),
    ] = True,
    progress: ProgressOpt = True,
) -> None:
    """Train standard and BatchNorm VGG side by side and probe the loss landscape at every checkpoint (the paper's Figure 4)."""
    _start(locals(), probe_enabled=True)


def _start(options: dict, *, probe_enabled: bool) -> None:
    """Runs ``train`` or ``probe`` from the command's options (a copy of its ``locals()``)."""
    options = dict(options)
    out, resume, overwrite = options.pop("out"), options.pop("resume"), options.pop("overwrite")
    progress, figures = options.pop("progress"), options.pop("figures", False)
    from_run = options.pop("from_run", None)
    try:
        if from_run is not None:
            _reprobe(from_run, options.get("etas"), options["data"], progress)
            return
        if resume:
            config = resumed_config(resume, options["steps"], options["data"])
        else:
            config = build_config(**options)
        _run_command(
            config,
            out,
            resume=resume,
            overwrite=overwrite,
            probe_enabled=probe_enabled,
            progress=progress,
            figures=figures,
        )
    except CliError as err:
        fail(str(err))


def _reprobe(run_dir: Path, etas: str | None, data: str | None, progress: bool) -> None:
    from landscape.data import DataError, load_dataset
    from landscape.runs import RunError, reprobe

    config = load_saved_config(run_dir)
    grid = parse_etas(etas) if etas else None
    try:
        dataset = load_dataset(data or config.data, progress=progress)
        written = reprobe(run_dir, etas=grid, progress=progress, dataset=dataset)
    except (DataError, RunError) as err:
        fail(str(err))
    for variant, path in written.items():
        console.print(f"{variant}: {path}", highlight=False)


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
    _positive_or_fail("--smooth", smooth)
    for path in plot_run(run_dir, out, formats=fmts, smooth=smooth):
        console.print(str(path), highlight=False)


def _positive_or_fail(name: str, value: int) -> None:
    if value < 0:
        fail(f"{name} must be non-negative, got {value}")


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
    (out / "bias_example.json").write_text(json.dumps(summary) + "\n")
    for mode, r in results.items():
        console.print(
            f"{mode}: ||b|| {r['b_norm'][0]:.3g} -> {r['b_norm'][-1]:.3g}, loss "
            f"{r['loss'][0]:.6g} -> {r['loss'][-1]:.6g}, max output change {r['output_change'].max():.2g}",
            highlight=False,
        )
    console.print(f"figure: {paths[0]}", highlight=False)


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
        str,
        typer.Option(
            "--variant",
            help="The variant to time: standard, batchnorm, noisy_batchnorm, noisy_none, l1, l2 or linf.",
        ),
    ] = "batchnorm",
    width: WidthOpt = None,
    batch_size: BatchOpt = None,
    arch: ArchOpt = None,
    conv_impl: ConvOpt = None,
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
    out: Annotated[
        Path,
        typer.Option(
            "--out", help="Folder for the results file (bench.jsonl, one JSON line per run)."
        ),
    ] = Path("bench-results"),
) -> None:
    """Time the train step, each probe strategy, compilation and checkpointing, side by side in one process."""
    from landscape.bench import result_rows, run_bench, write_results
    from landscape.data import DataError, load_dataset
    from landscape.probe import STRATEGIES

    try:
        config = build_config(
            preset_name=preset_name,
            data=data,
            steps=None,
            batch_size=batch_size,
            lr=None,
            optimizer=None,
            seed=None,
            arch=arch,
            width=width,
            variants=variant,
            conv_impl=conv_impl,
            checkpoint_every=None,
            max_to_keep=None,
            keep_period=None,
            keep_all=False,
            eval_every=None,
            etas=etas,
        )
        validate(config)
        chosen = parse_list(strategies, "--strategies")
        bad = [s for s in chosen if s not in STRATEGIES]
        if bad:
            raise CliError(
                f"unknown --strategies {', '.join(bad)}; choose from {', '.join(STRATEGIES)}"
            )
        if repeats < 1:
            raise CliError("--repeats must be positive")
        dataset = load_dataset(config.data, progress=True)
    except CliError as err:
        fail(str(err))
    except DataError as err:
        fail(str(err))
    with console.status("benchmarking") as status:
        result = run_bench(
            config,
            dataset,
            variant=variant,
            strategies=chosen,
            repeats=repeats,
            progress=lambda message: status.update(message),
        )
    path = write_results(result, out)
    m = result["machine"]
    table = Table(
        title=f"{config.preset} preset, {variant}, width {config.model.width}, "
        f"batch {config.batch_size} on {m['backend']} ({m['device']}, {m['cpu_count']} CPUs)"
    )
    table.add_column("quantity")
    table.add_column("median", justify="right")
    for name, value in result_rows(result):
        table.add_row(name, value)
    console.print(table)
    console.print(f"results appended to {path}", highlight=False)


def main() -> None:  # pragma: no cover - console entry for `python -m landscape`
    app()


if __name__ == "__main__":  # pragma: no cover
    sys.exit(app())
