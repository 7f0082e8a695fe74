"""``landscape train`` and ``landscape probe``: build the configuration, run it, print the summary;
``probe --from`` re-probes a finished run.
"""

from __future__ import annotations

import functools
import inspect
from collections.abc import Callable
from pathlib import Path
from typing import Annotated, Any

import typer
from rich.text import Text

from landscape.app import runtime
from landscape.app.cli.common import (
    CliError,
    app,
    check_positive,
    console,
    default_run_dir,
    fail,
    load_saved_config,
    make_figures,
    parse_devices,
    parse_log,
    print_summary,
    start_distributed,
)
from landscape.app.cli.options import (
    ArchOpt,
    BatchOpt,
    CkptFormatOpt,
    CkptOpt,
    ConvOpt,
    DataOpt,
    DevicesOpt,
    DistributedOpt,
    EvalOpt,
    KeepAllOpt,
    KeepOpt,
    LogOpt,
    LossOpt,
    LrOpt,
    ModelArgOpt,
    ModelOpt,
    NoiseMuOpt,
    NoiseRMuOpt,
    NoiseRSigmaOpt,
    NoiseSigmaOpt,
    OptimOpt,
    OutOpt,
    OverwriteOpt,
    PeriodOpt,
    PlacementOpt,
    PresetOpt,
    ProgressOpt,
    ResumeOpt,
    ReuseOpt,
    SeedOpt,
    StepsOpt,
    VariantsOpt,
    WidthOpt,
)
from landscape.config import (
    PRESETS,
    ConfigError,
    RunConfig,
    apply_model_options,
    get_setting,
    override,
    parse_etas,
    preset,
)
from landscape.config import validate as check_config

# --preset's default: given with --resume it cannot be told from an option left off.
DEFAULT_PRESET = "quick"


def build_config(
    preset_name: str,
    *,
    model: list[str] | None = None,
    model_arg: list[str] | None = None,
    **options: Any,
) -> RunConfig:
    """Returns the preset ``preset_name`` with the command line's options applied and validated.

    ``options`` are named after their settings (``landscape.config.SETTINGS``: ``lr``,
    ``width``, ``etas``...); one left at None keeps the preset's value. Text values (``etas``,
    ``variants``, the ``noise_*`` constants) are parsed by ``config.override``. ``model`` and
    ``model_arg`` name a user's network (``config.apply_model_options``), which also reads
    ``variants``. Raises CliError naming the option, before anything is written.
    """
    if preset_name not in PRESETS:
        raise CliError(f"unknown preset {preset_name!r}; choose one of {', '.join(PRESETS)}")
    changes = {key: value for key, value in options.items() if value is not None}
    try:
        config = preset(preset_name)
        if model or model_arg:
            config = apply_model_options(
                config, model or (), model_arg or (), changes.pop("variants", None)
            )
        return validate(override(config, changes))
    except ConfigError as err:
        raise CliError(err.as_option()) from None


def validate(config: RunConfig) -> RunConfig:
    """Returns ``config`` after ``landscape.config.validate``; its error as CliError naming the
    command's option."""
    try:
        return check_config(config)
    except ConfigError as err:
        raise CliError(err.as_option()) from None


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
    keep_going: bool = False,
    log: str | None = None,
) -> None:
    if resume is not None and out is not None and resume != out:
        raise CliError("give either --resume RUN_DIR or --out RUN_DIR, not both")
    run_dir = resume or out or default_run_dir(config)
    log_dir = parse_log(log, run_dir)
    validate(config)
    runtime.prepare_compute()
    console.print(Text.assemble("run directory: ", (str(run_dir), "bold")), highlight=False)
    writer = None
    if log_dir is not None:
        from landscape.tensorboard import TensorBoardWriter  # the optional tensorboard extra

        writer = TensorBoardWriter(log_dir)
    try:
        _run_and_report(
            config, run_dir, resume=resume is not None, overwrite=overwrite,
            probe_enabled=probe_enabled, progress=progress, figures=figures, devices=devices,
            reuse=reuse, keep_going=keep_going, writer=writer, log=log,
        )  # fmt: skip
    finally:
        if writer is not None:
            writer.close()
            console.print(f"tensorboard: {log_dir}", highlight=False)


def _run_and_report(
    config: RunConfig, run_dir: Path, *, resume: bool, overwrite: bool, probe_enabled: bool,
    progress: bool, figures: bool, devices: int | str, reuse: list[Path] | None,
    keep_going: bool, writer: Any, log: str | None = None,
) -> None:  # fmt: skip
    from landscape.data import DataError
    from landscape.mesh import is_primary
    from landscape.rundir import RunError
    from landscape.runs import run

    try:
        reports = run(
            config,
            run_dir,
            resume=resume,
            overwrite=overwrite,
            probe_enabled=probe_enabled,
            progress=progress,
            devices=devices,
            reuse=reuse or (),
            say=lambda line: console.print(line, highlight=False, markup=False),
            keep_going=keep_going,
            on_rows=writer.rows if writer is not None else None,
        )
    except (DataError, RunError) as err:
        fail(str(err))
    except KeyboardInterrupt:
        # --log is not a setting of the run: the command that continues it must repeat it.
        again = f"--resume {run_dir}" + (f" --log {log}" if log else "")
        fail(
            f"interrupted; everything up to the last checkpoint is kept. Continue with: {again}",
            code=130,
        )
    if not is_primary():
        return  # the other processes of a multi-host run compute; process 0 reports
    for r in reports:
        if r.steps_run:
            console.print(r.timing_line(), highlight=False)
    if probe_enabled:
        print_summary(run_dir, load_saved_config(run_dir))
    if figures:
        make_figures(run_dir)
        if writer is not None:
            writer.figures(sorted((run_dir / "figures").glob("*.png")))


def resumed_config(run_dir: Path, options: dict[str, Any]) -> RunConfig:
    """Returns the saved config of a run to resume, with ``--steps`` and ``--data`` applied.

    ``options`` are the command's configuration options (``build_config``'s). Any other option
    given must agree with the saved run: a resumed run keeps its settings, so one that would
    change them is refused with one line (an experiment resumes a step by repeating its command
    with ``--resume``, so repeating a setting is fine).
    """
    config = load_saved_config(run_dir)
    options = dict(options)
    steps, data = options.pop("steps", None), options.pop("data", None)
    check_positive("--steps", steps)
    keeps = "--resume keeps a run's settings; only --steps (to extend it) and --data may change"
    if steps is not None and steps < config.steps:
        raise CliError(
            f"--steps {steps}: {run_dir} was started for {config.steps} steps and {keeps}"
        )
    preset_name = options.pop("preset_name", None)
    if preset_name not in (None, DEFAULT_PRESET, config.preset):
        raise CliError(
            f"--preset {preset_name}: {run_dir} was started from {config.preset}; {keeps}"
        )
    model, model_arg = options.pop("model", None), options.pop("model_arg", None)
    given = {
        key: value for key, value in options.items() if value is not None and value is not False
    }
    try:
        if model or model_arg:
            variants = given.pop("variants", None)
            if apply_model_options(config, model or (), model_arg or (), variants) != config:
                raise CliError(f"--model: {run_dir} was started with another network; {keeps}")
        for key, value in given.items():
            saved = get_setting(config, key)
            if get_setting(override(config, {key: value}), key) != saved:
                flag = "--" + key.replace("_", "-")
                raise CliError(f"{flag} {value}: {run_dir} was started with {saved}; {keeps}")
    except ConfigError as err:
        raise CliError(err.as_option()) from None
    if steps is not None:
        config = config.replace(steps=steps)
    if data is not None:
        config = config.replace(data=data)
    return config


def _shared_run_options(
    preset_name: PresetOpt = DEFAULT_PRESET,
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
    model: ModelOpt = None,
    model_arg: ModelArgOpt = None,
    loss: LossOpt = None,
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
    keep_going: Annotated[
        bool,
        typer.Option(
            "--keep-going",
            help="Train on after the training loss becomes NaN or inf (for divergence studies). By default that variant stops there with one line saying the step, the last finite loss and the learning rate, and its <variant>/diverged.json records it.",
        ),
    ] = False,
    log: LogOpt = None,
    progress: ProgressOpt = True,
) -> None:
    """The options ``train`` and ``probe`` share, declared once (``with_run_options``)."""


def with_run_options(command: Callable[..., None]) -> Callable[..., None]:
    """Returns ``command`` taking the options of ``_shared_run_options`` as well: Typer sees one
    signature, the shared options then the command's own, and the command gets them all as
    keywords."""
    parameters = [
        *inspect.signature(_shared_run_options, eval_str=True).parameters.values(),
        *(
            p
            for p in inspect.signature(command, eval_str=True).parameters.values()
            if p.kind is not p.VAR_KEYWORD
        ),
    ]

    @functools.wraps(command)
    def with_options(**options: Any) -> None:
        command(**options)

    with_options.__signature__ = inspect.Signature(parameters)
    with_options.__annotations__ = {p.name: p.annotation for p in parameters}
    return with_options


@app.command()
@with_run_options
def train(**options: Any) -> None:
    """Train the variants (default: standard and BatchNorm VGG) and checkpoint every step, without probing."""
    _start(options, probe_enabled=False)


@app.command()
@with_run_options
def probe(
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
            help="How the step sizes are evaluated: auto (default: the fastest for the backend: on a CPU map for the built-in networks and unroll for yours, vmap elsewhere; docs/performance.md), unroll, vmap or map.",
        ),
    ] = None,
    fuse: Annotated[
        bool | None,
        typer.Option(
            "--fuse/--no-fuse",
            help="Compile the training step and the probe of probed steps as one program (the gradient stays on the device, no dispatch between them). On the CPU it gains next to nothing: what it saved was the second program's page faults, which the command's malloc settings already avoid (docs/performance.md). It costs the compilation of a second program (cached). The same training; a recorded loss can differ in its last digit (XLA sums it differently in the larger program). Default: off.",
        ),
    ] = None,
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
    **options: Any,
) -> None:
    """Train standard and BatchNorm VGG side by side and probe the loss landscape at every checkpoint (the paper's Figure 4)."""
    own = {"etas": etas, "probe_every": probe_every, "probe_strategy": probe_strategy}
    _start(
        {**options, **own, "fuse": fuse, "from_run": from_run, "figures": figures},
        probe_enabled=True,
    )


def _start(options: dict, *, probe_enabled: bool) -> None:
    """Runs ``train`` or ``probe`` from the command's options (a copy of its ``locals()``)."""
    options = dict(options)
    out, resume, overwrite = options.pop("out"), options.pop("resume"), options.pop("overwrite")
    reuse = options.pop("reuse") or []
    progress, figures = options.pop("progress"), options.pop("figures", False)
    from_run = options.pop("from_run", None)
    devices, distributed = options.pop("devices"), options.pop("distributed")
    keep_going, log = options.pop("keep_going"), options.pop("log")
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
            config = resumed_config(resume, options)
        else:
            keep_all = options.pop("keep_all") or None  # a flag left off keeps the preset's
            config = build_config(**options, keep_all=keep_all)
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
            keep_going=keep_going,
            log=log,
        )
    except CliError as err:
        fail(str(err))


def _reprobe(
    run_dir: Path, etas: str | None, data: str | None, progress: bool, devices: int | str = 1
) -> None:
    from landscape.data import DataError, load_dataset
    from landscape.rundir import RunError
    from landscape.runs import reprobe

    config = load_saved_config(run_dir)
    try:
        grid = parse_etas(etas) if etas else None
    except ConfigError as err:
        raise CliError(err.as_option()) from None
    runtime.prepare_compute()
    try:
        dataset = load_dataset(data or config.data, progress=progress)
        written = reprobe(run_dir, etas=grid, progress=progress, dataset=dataset, devices=devices)
    except (DataError, RunError) as err:
        fail(str(err))
    for variant, path in written.items():
        console.print(f"{variant}: {path}", highlight=False)
