"""The ``landscape`` command: parse options, build a config, call the library.

No JAX work happens at import time, so ``landscape --help`` is instant.
"""

from __future__ import annotations

import dataclasses
import json
import math
import sys
from datetime import datetime
from pathlib import Path
from typing import Annotated

import typer
from rich.console import Console
from rich.table import Table

from landscape.config import NOISE_MINIMUM, PRESETS, RunConfig, is_dln, preset

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


def parse_number(text: str | float, option: str) -> float:
    """Parses a number given as text (the --noise-* options), or raises CliError in one line."""
    try:
        return float(text)
    except ValueError:
        raise CliError(f"{option} {text!r} is not a number") from None


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
    checkpoint_format: str | None = None,
    etas: str | None = None,
    probe_every: int | None = None,
    probe_strategy: str | None = None,
    placement: str | None = None,
    fuse: bool | None = None,
    noise_mu: str | None = None,
    noise_sigma: str | None = None,
    noise_r_mu: str | None = None,
    noise_r_sigma: str | None = None,
) -> RunConfig:
    """Returns the preset with every option given on the command line applied to it.

    The ``noise_*`` options (Algorithm 1's constants) are text, parsed here so that a
    non-number is a one-line CliError; ``validate`` checks their range.
    """
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
    for name, text in (
        ("noise_mu", noise_mu),
        ("noise_sigma", noise_sigma),
        ("noise_r_mu", noise_r_mu),
        ("noise_r_sigma", noise_r_sigma),
    ):
        if text is not None:
            model[name] = parse_number(text, "--" + name.replace("_", "-"))
    opt = {k: v for k, v in {"learning_rate": lr, "name": optimizer}.items() if v is not None}
    ckpt = {
        k: v
        for k, v in {
            "every": checkpoint_every,
            "max_to_keep": max_to_keep,
            "keep_period": keep_period,
            "format": checkpoint_format,
        }.items()
        if v is not None
    }
    if keep_all:
        ckpt["keep_all"] = True
    probe = {
        k: v
        for k, v in {"every": probe_every, "strategy": probe_strategy, "fuse": fuse}.items()
        if v is not None
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
    from landscape.models import CONV_IMPLS, NORMALIZERS, PLACEMENTS, VGG_CONFIGS
    from landscape.probe import STRATEGIES

    if config.model.arch not in VGG_CONFIGS and not is_dln(config.model.arch):
        raise CliError(
            f"unknown --arch {config.model.arch!r}; choose one of {', '.join(VGG_CONFIGS)}, "
            "dln or dlnN"
        )
    dln_data = config.data == "dln" or config.data.startswith("dln:")
    if is_dln(config.model.arch) != dln_data:
        raise CliError(
            f"--arch {config.model.arch} with --data {config.data}: the deep linear network "
            "trains on --data dln (or dln:SEED), a VGG on image data; try --preset dln-quick"
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
    if config.model.conv_impl not in CONV_IMPLS:
        raise CliError(
            f"unknown --conv-impl {config.model.conv_impl!r}; choose {', '.join(CONV_IMPLS)}"
        )
    for name, least in NOISE_MINIMUM.items():  # Algorithm 1's constants (Sec. 2.1)
        value = getattr(config.model, name)
        if not (math.isfinite(value) and value >= least):
            option = "--" + name.replace("_", "-")
            raise CliError(
                f"{option} must be a finite number >= {least:g} (Algorithm 1), got {value:g}"
            )
    if config.optimizer.name not in ("sgd", "momentum", "adam"):
        raise CliError(
            f"unknown --optimizer {config.optimizer.name!r}; choose sgd, momentum or adam"
        )
    if config.probe.strategy not in (*STRATEGIES, "auto"):
        raise CliError(
            f"unknown --probe-strategy {config.probe.strategy!r}; choose auto, {', '.join(STRATEGIES)}"
        )
    if config.checkpoint.format not in ("npz", "orbax"):
        raise CliError(
            f"unknown --checkpoint-format {config.checkpoint.format!r}; choose npz or orbax"
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


def prepare_process() -> None:
    """Readies the process for training and probing: the compilation cache and glibc malloc
    settings that spare XLA's per-call scratch memory its page faults (``malloc_tuning``)."""
    from landscape.malloc_tuning import tune_malloc

    enable_compilation_cache()
    tune_malloc()


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
    devices: int | str = "all",
    reuse: list[Path] | None = None,
) -> None:
    from landscape.data import DataError
    from landscape.runs import RunError, run
    from landscape.sharding import is_primary

    if resume is not None and out is not None and resume != out:
        raise CliError("give either --resume RUN_DIR or --out RUN_DIR, not both")
    run_dir = resume or out or default_run_dir(config)
    validate(config)
    prepare_process()
    console.print(f"run directory: [bold]{run_dir}[/]", highlight=False)
    try:
        reports = run(
            config,
            run_dir,
            resume=resume is not None,
            overwrite=overwrite,
            probe_enabled=probe_enabled,
            progress=progress,
            devices=devices,
            reuse=reuse or (),
            say=lambda line: console.print(line, highlight=False),
        )
    except (DataError, RunError) as err:
        fail(str(err))
    except KeyboardInterrupt:
        fail(
            f"interrupted; everything up to the last checkpoint is kept. "
            f"Continue with: --resume {run_dir}",
            code=130,
        )
    if not is_primary():
        return  # the other processes of a multi-host run compute; process 0 reports
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
        help="Starting configuration: smoke (synthetic data, tiny VGG, under a minute on CPU), quick (real CIFAR-10, VGG-11 width 1/4, 1,500 steps), paper (the full protocol, for a GPU), dln-paper (the paper's deep linear network, App. A.1: 25 linear 10x10 layers, full-batch GD at lr 1e-6, 10,000 steps, probe grid [1/100, 30] x lr) or dln-quick (its first 1,000 steps, every 5th probed: minutes on a CPU). Options below override it.",
    ),
]
DataOpt = Annotated[
    str | None,
    typer.Option(
        "--data",
        help="Data: 'synthetic', a path to cifar-10-binary.tar.gz or its folder, or an image folder/tar with train/<class>/ and test/<class>/; 'dln' or 'dln:SEED' is the deep linear network's regression task (y = A x, 1,000 Gaussian inputs). Default: the preset's; for real CIFAR-10 $LANDSCAPE_DATA, then the cache (~/.cache/landscape), then download.",
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
        help="Training steps per variant. Default: the preset's (smoke 60, quick 1500, paper 15000, dln-quick 1000, dln-paper 10000).",
    ),
]
BatchOpt = Annotated[
    int | None,
    typer.Option("--batch-size", help="Minibatch size. Default: the preset's (128; smoke 32)."),
]
LrOpt = Annotated[
    float | None,
    typer.Option("--lr", help="Learning rate. Default: the paper's (0.1; DLN presets 1e-6)."),
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
    str | None,
    typer.Option(
        "--arch",
        help="Model: vgg11 (default), vgg13, vgg16, vgg19, or dln: the paper's deep linear network (25 bias-free 10x10 linear layers, squared-error loss, needs --data dln; dlnN for N layers). Default: the preset's.",
    ),
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
        help="Convolution implementation: auto (default: on CPU canonical for maps of 4x4 and more and shifted-matmul below, XLA's elsewhere), xla (JAX's gradient), canonical (XLA's convolution with a gradient that stays fast inside loops) or shifted. Same numbers to float32 rounding, different speed.",
    ),
]
# Algorithm 1's constants (Sec. 2.1). Text, parsed by build_config: a non-number is one line.
NoiseMuOpt = Annotated[
    str | None,
    typer.Option(
        "--noise-mu",
        metavar="FLOAT",
        help="Algorithm 1's n_mu (Sec. 2.1): every step each unit's mean shift is drawn as mu_j ~ U(-n_mu, n_mu); >= 0. Used by noisy_batchnorm and noisy_none only. Default 0.5, the paper's.",
    ),
]
NoiseSigmaOpt = Annotated[
    str | None,
    typer.Option(
        "--noise-sigma",
        metavar="FLOAT",
        help="Algorithm 1's n_sigma: each unit's mean scale sigma_j ~ U(1, n_sigma); >= 1 (1: every sigma_j is 1). Noisy variants only. Default 1.25, the paper's.",
    ),
]
NoiseRMuOpt = Annotated[
    str | None,
    typer.Option(
        "--noise-r-mu",
        metavar="FLOAT",
        help="Algorithm 1's r_mu: each sample's shift m_ij ~ U(mu_j - r_mu, mu_j + r_mu); >= 0. Noisy variants only. Default 0.1, the paper's.",
    ),
]
NoiseRSigmaOpt = Annotated[
    str | None,
    typer.Option(
        "--noise-r-sigma",
        metavar="FLOAT",
        help="Algorithm 1's r_sigma: each sample's scale s_ij ~ N(sigma_j, r_sigma), a standard deviation; >= 0. Noisy variants only. Default 0.1, the paper's.",
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
CkptFormatOpt = Annotated[
    str | None,
    typer.Option(
        "--checkpoint-format",
        help="npz (default: one file per step, written in the background, a few per cent of a step) or orbax (orbax's CheckpointManager, slower per save). Either is read back.",
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
ReuseOpt = Annotated[
    list[Path] | None,
    typer.Option(
        "--reuse",
        help="A finished run to take variants from instead of training them again (repeatable): a variant is copied when that run trained it with the same settings (all but --variants, the data's path and the preset's name; the probe's too for train) on the same data (sha256), JAX version and kind of device, to the last step. Runs are deterministic, so the copy equals a rerun. Other variants train as usual; each is reported.",
    ),
]
OverwriteOpt = Annotated[
    bool, typer.Option("--overwrite", help="Replace an existing run directory.")
]
ProgressOpt = Annotated[bool, typer.Option("--progress/--no-progress", help="Show a progress bar.")]
DevicesOpt = Annotated[
    str,
    typer.Option(
        "--devices",
        help="Devices each step is spread over: all (default: every visible device, or the most that divide the batch size) or a number. The batch is split across them (data parallel, BatchNorm statistics over the whole batch) and the probe's step sizes too; the numbers do not depend on the count. 1 = the single-device code.",
    ),
]
DistributedOpt = Annotated[
    bool,
    typer.Option(
        "--distributed",
        help="Join a multi-host run (jax.distributed.initialize) using $JAX_COORDINATOR_ADDRESS (host:port of process 0), $JAX_NUM_PROCESSES and $JAX_PROCESS_ID, or SLURM/Open MPI/TPU auto-detection. Run the same command on every host; only process 0 writes.",
    ),
]


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
    noise_mu: NoiseMuOpt = None,
    noise_sigma: NoiseSigmaOpt = None,
    noise_r_mu: NoiseRMuOpt = None,
    noise_r_sigma: NoiseRSigmaOpt = None,
    checkpoint_every: CkptOpt = None,
    max_to_keep: KeepOpt = None,
    keep_period: PeriodOpt = None,
    keep_all: KeepAllOpt = False,
    checkpoint_format: CkptFormatOpt = None,
    eval_every: EvalOpt = None,
    resume: ResumeOpt = None,
    overwrite: OverwriteOpt = False,
    reuse: ReuseOpt = None,
    devices: DevicesOpt = "all",
    distributed: DistributedOpt = False,
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
    noise_mu: NoiseMuOpt = None,
    noise_sigma: NoiseSigmaOpt = None,
    noise_r_mu: NoiseRMuOpt = None,
    noise_r_sigma: NoiseRSigmaOpt = None,
    etas: Annotated[
        str | None,
        typer.Option(
            "--etas",
            help="Step sizes of the probe: LO:HI:N or a list. Default: 8 values spanning [1/2, 4] x lr, the paper's grid (0.05:0.4:8 at lr 0.1); for the DLN presets its [1/100, 30] x lr.",
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
    fuse: Annotated[
        bool | None,
        typer.Option(
            "--fuse/--no-fuse",
            help="Compile the training step and the probe of probed steps as one program (the gradient stays on the device, no dispatch between them). On the quick network's CPU benchmark a probed step took 0.96-1.01x the two separate calls under the command's malloc settings (0.87-0.94x without them: the saving was the second program's page faults), at the cost of compiling a second program (about 5 s, cached). The same training; a recorded loss can differ in its last digit (XLA sums it differently in the larger program). Default: off.",
        ),
    ] = None,
    checkpoint_every: CkptOpt = None,
    max_to_keep: KeepOpt = None,
    keep_period: PeriodOpt = None,
    keep_all: KeepAllOpt = False,
    checkpoint_format: CkptFormatOpt = None,
    eval_every: EvalOpt = None,
    resume: ResumeOpt = None,
    overwrite: OverwriteOpt = False,
    reuse: ReuseOpt = None,
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
    devices: DevicesOpt = "all",
    distributed: DistributedOpt = False,
    progress: ProgressOpt = True,
) -> None:
    """Train standard and BatchNorm VGG side by side and probe the loss landscape at every checkpoint (the paper's Figure 4)."""
    _start(locals(), probe_enabled=True)


def _start(options: dict, *, probe_enabled: bool) -> None:
    """Runs ``train`` or ``probe`` from the command's options (a copy of its ``locals()``)."""
    options = dict(options)
    out, resume, overwrite = options.pop("out"), options.pop("resume"), options.pop("overwrite")
    reuse = options.pop("reuse") or []
    progress, figures = options.pop("progress"), options.pop("figures", False)
    from_run = options.pop("from_run", None)
    devices, distributed = options.pop("devices"), options.pop("distributed")
    try:
        devices = parse_devices(devices)
        if distributed:
            if not (out or resume or from_run):
                raise CliError(
                    "--distributed needs --out RUN_DIR: the same directory on every host"
                )
            start_distributed()
        if from_run is not None:
            _reprobe(from_run, options.get("etas"), options["data"], progress, devices)
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
            devices=devices,
            reuse=reuse,
        )
    except CliError as err:
        fail(str(err))


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
    from landscape.sharding import initialize_distributed

    try:
        process, count = initialize_distributed()
    except (ValueError, RuntimeError) as err:
        raise CliError(f"--distributed: {err}") from None
    if process == 0:
        console.print(f"distributed: {count} processes", highlight=False)


def _reprobe(
    run_dir: Path, etas: str | None, data: str | None, progress: bool, devices: int | str = 1
) -> None:
    from landscape.data import DataError, load_dataset
    from landscape.runs import RunError, reprobe

    config = load_saved_config(run_dir)
    grid = parse_etas(etas) if etas else None
    prepare_process()
    try:
        dataset = load_dataset(data or config.data, progress=progress)
        written = reprobe(run_dir, etas=grid, progress=progress, dataset=dataset, devices=devices)
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
    from landscape.malloc_tuning import tune_malloc
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
            noise_mu=noise_mu,
            noise_sigma=noise_sigma,
            noise_r_mu=noise_r_mu,
            noise_r_sigma=noise_r_sigma,
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
        _positive("--run-steps", run_steps, allow_zero=True)
        dataset = load_dataset(config.data, progress=True)
    except CliError as err:
        fail(str(err))
    except DataError as err:
        fail(str(err))
    # As the other commands (prepare_process), without the compilation cache: compiling is timed.
    tune_malloc()
    with console.status("benchmarking") as status:
        result = run_bench(
            config,
            dataset,
            variant=variant,
            strategies=chosen,
            repeats=repeats,
            run_steps=run_steps,
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


@app.command()
def experiment(
    file: Annotated[
        Path,
        typer.Argument(
            help="An experiment file (TOML), e.g. experiments/figure4_smoothness.toml; see experiments/README.md."
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
            "--set", help="Override a placeholder of the file: --set steps=300 (repeatable)."
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


# --- loss-landscape pictures: landscape surface / landscape interpolate ---------------------------


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


RunDirArg = Annotated[
    Path, typer.Argument(help="A run directory made by landscape probe/train (with checkpoints).")
]
PictureVariantsOpt = Annotated[
    str | None,
    typer.Option(
        "--variants", help="Comma-separated variants to picture. Default: all of the run's."
    ),
]
BatchesOpt = Annotated[
    int,
    typer.Option(
        "--batches",
        help="Training batches the loss is averaged over: those of steps N, N+1, ... (1, the default: the checkpoint step's own batch).",
    ),
]
ModeOpt = Annotated[
    str,
    typer.Option(
        "--mode",
        help="train (default): BatchNorm normalises with each batch's statistics, as the optimiser sees the loss; eval: with the checkpoint's running averages.",
    ),
]
ChunkOpt = Annotated[
    int | None,
    typer.Option(
        "--chunk",
        help="Grid points per compiled call, each appended to the record when done. Default: 4 per device on CPU, 32 per device on accelerators.",
    ),
]
GridStrategyOpt = Annotated[
    str | None,
    typer.Option(
        "--strategy",
        help="How a chunk's points are mapped: map (lax.map, the CPU default) or vmap (the accelerator default). Same numbers.",
    ),
]
AccuracyOpt = Annotated[
    bool, typer.Option("--accuracy/--no-accuracy", help="Also record the accuracy on the batches.")
]
NameOpt = Annotated[
    str | None,
    typer.Option(
        "--name",
        help="Record name: RUN_DIR/<variant>/surfaces/<name>.jsonl. Default: step<N>_<dims>d_<direction> or interp_<A>_<B>.",
    ),
]
PictureDataOpt = Annotated[
    str | None,
    typer.Option(
        "--data", help="The run's data, if it moved. Default: the data in its config.json."
    ),
]
PictureOverwriteOpt = Annotated[
    bool,
    typer.Option(
        "--overwrite",
        help="Replace a record made with other settings. Without it a rerun with the same settings evaluates only the missing points.",
    ),
]
PictureFiguresOpt = Annotated[
    bool,
    typer.Option(
        "--figures/--no-figures", help="Draw the picture into RUN_DIR/figures/ at the end."
    ),
]


def _picture_options(mode: str, batches: int, chunk: int | None, strategy: str | None) -> None:
    from landscape.surfaces import GRID_STRATEGIES, MODES

    if mode not in MODES:
        raise CliError(f"unknown --mode {mode!r}; choose train or eval")
    _positive("--batches", batches)
    _positive("--chunk", chunk)
    if strategy is not None and strategy not in GRID_STRATEGIES:
        raise CliError(f"unknown --strategy {strategy!r}; choose map or vmap")


def _picture(run_dir: Path, data: str | None, progress: bool, figures: bool, call):
    """Loads the run's data, runs ``call(dataset, on_progress)`` with a progress bar, draws."""
    from landscape.data import DataError, load_dataset
    from landscape.surface_records import SurfaceError
    from landscape.surfaces import MODE_TEXT

    config = load_saved_config(run_dir)
    prepare_process()
    try:
        dataset = load_dataset(data or config.data, progress=progress)
        if progress:
            from landscape.progress import progress_bar

            with progress_bar("points", console=err_console) as bar:
                tasks: dict[str, int] = {}

                def on_progress(variant: str, done: int, total: int) -> None:
                    if variant not in tasks:
                        tasks[variant] = bar.add_task(variant, total=total)
                    bar.update(tasks[variant], completed=done)

                written = call(dataset, on_progress)
        else:
            written = call(dataset, None)
    except (DataError, SurfaceError) as err:
        fail(str(err))
    from landscape.surface_records import load_record

    for variant, path in written.items():
        header = load_record(path)["header"]
        mode = header["settings"]["mode"]
        console.print(f"{variant}: {path} ({MODE_TEXT[mode]})", highlight=False)
    if figures:
        from landscape.plots import save_figure, surface_figures

        names = {path.stem for path in written.values()}
        for name, fig in surface_figures(run_dir, names=names).items():
            console.print(str(save_figure(fig, run_dir / "figures" / name)[0]), highlight=False)


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
    batches: BatchesOpt = 1,
    mode: ModeOpt = "train",
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
    accuracy: AccuracyOpt = True,
    chunk: ChunkOpt = None,
    strategy: GridStrategyOpt = None,
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
        _picture_options(mode, batches, chunk, strategy)
        chosen = parse_list(variants, "--variants") if variants else None
    except CliError as err:
        fail(str(err))

    def call(dataset, on_progress):
        from landscape.surfaces import GridOptions
        from landscape.surfaces import surface as run_surface

        return run_surface(
            run_dir,
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
            options=GridOptions(chunk=chunk, strategy=strategy),
            dataset=dataset,
            on_progress=on_progress,
        )

    _picture(run_dir, data, progress, figures, call)


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
    batches: BatchesOpt = 1,
    mode: ModeOpt = "train",
    accuracy: AccuracyOpt = True,
    chunk: ChunkOpt = None,
    strategy: GridStrategyOpt = None,
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
        _picture_options(mode, batches, chunk, strategy)
        chosen = parse_list(variants, "--variants") if variants else None
    except CliError as err:
        fail(str(err))

    def call(dataset, on_progress):
        from landscape.surfaces import GridOptions
        from landscape.surfaces import interpolate as run_interpolate

        return run_interpolate(
            run_dir,
            start=step_a,
            end=step_b,
            variants=chosen,
            grid=axis,
            batches=batches,
            mode=mode,
            accuracy=accuracy,
            name=name,
            overwrite=overwrite,
            options=GridOptions(chunk=chunk, strategy=strategy),
            dataset=dataset,
            on_progress=on_progress,
        )

    _picture(run_dir, data, progress, figures, call)


# --- internal covariate shift and distributional stability (issue 4) ---------------------------

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
    from landscape.runs import RunError

    config = load_saved_config(run_dir)
    unknown = [v for v in options.get("variants") or [] if v not in config.variants]
    if unknown:
        fail(f"--variants: {', '.join(unknown)} not in the run ({', '.join(config.variants)})")
    prepare_process()
    try:
        dataset = load_dataset(data or config.data, progress=progress)
        written = record(run_dir, progress=progress, dataset=dataset, **options)
    except (DataError, RunError) as err:
        fail(str(err))
    for variant, path in written.items():
        console.print(f"{variant}: {path}", highlight=False)


@app.command("ics")
def ics_command(
    run_dir: Annotated[Path, typer.Argument(help="A run directory with checkpoints.")],
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
    progress: ProgressOpt = True,
) -> None:
    """Internal covariate shift (Definition 2.1, Figure 3): per layer, ||G - G'|| and cos(G, G') at each checkpoint. Writes <variant>/ics.jsonl."""
    from landscape.ics import record_ics

    if every < 1:
        fail(f"--every must be positive, got {every}")
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


@app.command("activations")
def activations_command(
    run_dir: Annotated[Path, typer.Argument(help="A run directory with checkpoints.")],
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
    variants: ShiftVariantsOpt = None,
    data: ShiftDataOpt = None,
    progress: ProgressOpt = True,
) -> None:
    """Distributional stability (Ioffe & Szegedy): 15/50/85th percentiles, mean and variance of each layer's input to the ReLU on a fixed held-out batch. Writes <variant>/activations.jsonl."""
    from landscape.activations import record_activations

    if every < 1 or examples < 2 or unit < 0:
        fail("--every must be positive, --examples at least 2 and --unit non-negative")
    if bn_mode not in ("train", "eval"):
        fail(f"--bn-mode must be train or eval, got {bn_mode!r}")
    chosen, names = _shift_options(steps, variants)
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
    )


# --- landscape hessian: curvature at the checkpoints of a run ---------------------------------


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
    progress: ProgressOpt = True,
) -> None:
    """Top Hessian eigenvalues, trace and spectral density at the checkpoints of a run, next to the probe's effective beta (writes <variant>/hessian.jsonl)."""
    from landscape.data import DataError, load_dataset
    from landscape.runs import RunError

    config = load_saved_config(run_dir)
    try:
        for name, value in (("--every", every), ("--top-k", top_k), ("--iterations", iterations)):
            _positive(name, value)
        _positive("--batches", batches)
        _positive("--density-probes", density_probes)
        _positive("--trace-probes", trace_probes, allow_zero=True)
        _positive("--power-iterations", power_iterations, allow_zero=True)
        if not small_eta > 0:
            raise CliError(f"--small-eta must be positive, got {small_eta}")
        if mode not in ("train", "eval"):
            raise CliError(f"unknown --mode {mode!r}; choose train or eval")
        chosen_steps = parse_steps(steps) if steps is not None else None
        chosen_variants = parse_list(variants, "--variants") if variants is not None else None
    except CliError as err:
        fail(str(err))
    prepare_process()
    from landscape.curvature import sharpness_over_training

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
            help="KEY=V1,V2,... one axis of the grid; repeat for more axes (every combination runs). Keys: seed, lr, batch_size, width, variant, optimizer, arch, weight_decay, steps, and Algorithm 1's noise_mu, noise_sigma, noise_r_mu, noise_r_sigma.",
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
                preset_name=preset_name,
                data=data,
                steps=steps,
                batch_size=batch_size,
                lr=lr,
                optimizer=optimizer,
                seed=seed,
                arch=arch,
                width=width,
                variants=variants,
                conv_impl=None,
                checkpoint_every=checkpoint_every,
                max_to_keep=None,
                keep_period=None,
                keep_all=False,
                eval_every=eval_every,
                etas=etas,
                probe_every=probe_every,
            )
            from landscape.sweep import configurations

            for _, _, config in configurations(base, axes):
                validate(config)
            stamp = datetime.now().strftime("%Y%m%d-%H%M%S")
            where = out or Path("runs") / f"sweep-{base.preset}-{stamp}"
    except (CliError, SweepError) as err:
        fail(str(err))
    if parallel > 1:
        _run_parallel_sweep(
            where, base, axes, probe_enabled, progress, devices_value, parallel, oversubscribe
        )
    else:
        _run_sweep(where, base, axes, probe_enabled, progress, devices_value)


def _run_sweep(where: Path, base, axes, probe_enabled: bool, progress: bool, devices) -> None:
    from landscape.data import DataError
    from landscape.runs import RunError
    from landscape.sweep import SweepError, run_sweep

    prepare_process()
    console.print(f"sweep directory: [bold]{where}[/]", highlight=False)

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
    from contextlib import nullcontext

    from landscape.data import DataError
    from landscape.parallel import run_parallel
    from landscape.progress import progress_bar
    from landscape.sweep import SweepError

    console.print(f"sweep directory: [bold]{where}[/], {parallel} workers", highlight=False)
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
                        f"[bold red]{event.name}: FAILED[/] after {event.seconds:.1f} s "
                        f"(exit code {event.returncode}): {event.message}; log: {event.log}",
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
    table = Table(
        title="Sweep: medians over probed steps, last test evaluation",
        caption="loss band = max-min of L(x - eta g) over eta; grad dist max = max over eta of "
        "||grad L(x - eta g) - g||; beta = effective beta-smoothness; BatchNorm in training "
        f"mode during the probe. Also in {sweep_dir / 'summary.csv'}.",
    )
    for title in ("run", "variant", "status"):
        table.add_column(title, no_wrap=True)
    for title in ("steps", "probed"):
        table.add_column(title, justify="right")
    for title in ("loss band", "grad dist max", "beta", "test acc."):
        table.add_column(title, justify="right")
    for row in rows:
        numbers = [row["loss_band"], row["grad_dist_max"], row["beta"], row["test_accuracy"]]
        table.add_row(
            row["run"],
            row["variant"],
            row["status"],
            str(row["steps"]),
            str(row["probed"]),
            *("-" if v is None else _fmt(v) for v in numbers),
        )
    console.print(table)


def main() -> None:  # pragma: no cover - console entry for `python -m landscape`
    app()


if __name__ == "__main__":  # pragma: no cover
    sys.exit(app())
