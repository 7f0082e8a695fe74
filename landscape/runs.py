"""A run: train each variant with the same seed and data order, checkpoint, probe, record.

``run`` is what ``landscape train`` and ``landscape probe`` call; ``reprobe`` probes the saved
checkpoints of an existing run again, on exactly the batch each step was trained on. The run
directory itself (creating, reopening, provenance, reuse) is ``landscape.rundir``'s.
"""

from __future__ import annotations

import dataclasses
import functools
import json
import os
import time
from collections.abc import Callable, Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import jax
import jax.numpy as jnp
from jax.sharding import Mesh

from landscape import sharding
from landscape.checkpoints import Checkpointer
from landscape.config import ModelConfig, OptimizerConfig, RunConfig, validate
from landscape.data import Dataset, load_dataset
from landscape.mesh import is_primary, make_mesh, place, replicated, resolve_device_count, sync
from landscape.network import NetworkError, first_line
from landscape.plugins import is_import_path
from landscape.probe import default_strategy, probe
from landscape.progress import progress_bar
from landscape.results import (
    DIVERGED_FILE,
    METRICS_FILE,
    PROBE_FILE,
    RecordWriter,
    divergence_line,
    truncate_rows,
)
from landscape.rundir import (
    NETWORK_FILE,
    RunError,
    check_model_fits_data,
    check_network_record,
    check_run_dir_path,
    check_same_data,
    copy_variant,
    load_config,
    locks_run_dir,
    plan_reuse,
    prepare_run_dir,
    provenance,
    run_dir_lock,
    write_network_record,
)
from landscape.step_records import ProbeTiming, Recorder, VariantReport, probe_record, probe_row
from landscape.train import (
    BatchSource,
    TrainState,
    build_network,
    create_train_state,
    evaluate,
    get_loss,
    make_eval_step,
    make_loss_fn,
    make_optimizer,
    make_train_step,
    model_loss,
    step_batch,
)

# --- the loop -----------------------------------------------------------------------------------


def make_probe_step(loss_fn: Callable, strategy: str, map_batch_size: int = 1) -> Callable:
    """Returns jitted ``probe_step(state, batch, grads, loss0, etas) -> ProbeResult``.

    It probes at the state's parameters, on the step's batch (with the same noise key as the
    training step), reusing the training gradient; ``etas`` is traced, so a new grid of the
    same length does not recompile.
    """

    @jax.jit
    def probe_step(state: TrainState, batch: dict, grads, loss0, etas):
        return probe(
            loss_fn,
            state.params,
            step_batch(state, batch),
            etas,
            model_state=state.batch_stats,
            grad=grads,
            loss0=loss0,
            strategy=strategy,
            map_batch_size=map_batch_size,
        )

    return probe_step


def make_train_probe_step(
    train_step: Callable, loss_fn: Callable, strategy: str, map_batch_size: int = 1
) -> Callable:
    """Returns jitted ``train_probe_step(state, batch, etas) -> (new_state, StepOutput, result)``.

    The training step and the probe of its starting point in one compiled program (``--fuse``):
    the gradient is computed once, stays on the device, and there is no dispatch or host
    round trip between the two. The training part is the same traced function as
    ``train_step``; the returned ``StepOutput`` has ``grads=None`` (not materialised).
    """

    @jax.jit
    def train_probe_step(state: TrainState, batch: dict, etas):
        new_state, out = train_step(state, batch)
        result = probe(
            loss_fn,
            state.params,
            step_batch(state, batch),
            etas,
            model_state=state.batch_stats,
            grad=out.grads,
            loss0=out.loss,
            strategy=strategy,
            map_batch_size=map_batch_size,
        )
        return new_state, out._replace(grads=None), result

    return train_probe_step


@functools.lru_cache(maxsize=16)
def compiled_functions(
    model_config: ModelConfig,
    optimizer_config: OptimizerConfig,
    strategy: str,
    map_batch_size: int,
    num_classes: int,
    loss: str,
) -> tuple:
    """Returns (network, optimizer, loss_fn, train_step, eval_step, probe_step, train_probe_step).

    Cached, so the variants of a sweep, a resumed run or a re-probe in the same process reuse
    the compiled programs instead of compiling them again. Raises NetworkError for a user's
    network that cannot be built.
    """
    network = build_network(model_config, num_classes)
    optimizer = make_optimizer(optimizer_config)
    loss_fn = make_loss_fn(network, loss)
    train_step = make_train_step(loss_fn, optimizer, loss)
    return (
        network,
        optimizer,
        loss_fn,
        train_step,
        make_eval_step(network, loss),
        make_probe_step(loss_fn, strategy, map_batch_size),
        make_train_probe_step(train_step, loss_fn, strategy, map_batch_size),
    )


@functools.lru_cache(maxsize=16)
def sharded_functions(
    loss_fn: Callable,
    train_step: Callable,
    eval_step: Callable,
    strategy: str,
    map_batch_size: int,
    mesh: Mesh,
) -> tuple[Callable, Callable, Callable]:
    """Returns (train_step, eval_step, probe_step) spread over ``mesh``; cached like the above."""
    return (
        sharding.shard_train_step(train_step, mesh),
        sharding.shard_eval_step(eval_step, mesh),
        sharding.make_sharded_probe_step(loss_fn, mesh, strategy, map_batch_size),
    )


@dataclass
class Trainer:
    """The compiled functions and data of one variant; shared by ``run`` and ``reprobe``."""

    config: RunConfig
    variant: str
    dataset: Dataset
    mesh: Mesh | None = None  # several devices: data-parallel steps, etas split (sharding.py)

    def __post_init__(self) -> None:
        cfg = self.config
        strategy = cfg.probe.strategy
        if strategy == "auto":
            strategy = default_strategy(builtin=not cfg.has_user_model)
        self.probe_strategy = strategy
        model_config = cfg.model_for(self.variant)
        self.loss = model_loss(model_config, self.dataset.task)  # the name of loss_fn's loss
        try:
            fns = compiled_functions(
                model_config,
                cfg.optimizer,
                strategy,
                cfg.probe.map_batch_size,
                self.dataset.num_outputs,
                self.loss,
            )
        except (NetworkError, ValueError) as err:
            raise RunError(f"{self.variant}: {first_line(err)}") from None
        self.network, self.optimizer, self.loss_fn, self.train_step, self.eval_step = fns[:5]
        # The Linen module behind the network, for analyses that need its layers (None: NNX or
        # a hand-written Network).
        self.model = self.network.module
        self.probe_step = fns[5]
        # The fused train+probe program (--fuse); the sharded path keeps the two separate.
        self.train_probe_step = fns[6] if cfg.probe.fuse and self.mesh is None else None
        if self.mesh is not None:
            self.train_step, self.eval_step, self.probe_step = sharded_functions(
                self.loss_fn,
                self.train_step,
                self.eval_step,
                strategy,
                cfg.probe.map_batch_size,
                self.mesh,
            )
        self.etas = jnp.asarray(cfg.probe.grid(cfg.optimizer.learning_rate), jnp.float32)
        ds = self.dataset
        self.train_source = BatchSource(
            ds.train_images, ds.train_labels, ds.mean, ds.std, cfg.batch_size, cfg.seed, self.mesh
        )
        self.test_source = BatchSource(
            ds.test_images, ds.test_labels, ds.mean, ds.std, cfg.batch_size, cfg.seed, self.mesh
        )

    def require_linen(self, what: str) -> None:
        """Raises RunError unless the network is a Flax Linen module called the built-in way
        (``train=``, the ``batch_stats`` collection): ``what`` says which analysis needs it."""
        network = self.network
        if network.module is None:
            raise RunError(
                f"{self.variant}: {what}, which landscape reads from a Flax Linen module; this "
                f"variant's network is {network.kind} (docs/own-models.md)"
            )
        if (network.train_arg, network.state_collection) != ("train", "batch_stats"):
            raise RunError(
                f"{self.variant}: {what}; this analysis calls the Linen module with train= and "
                "the batch_stats collection, and the network was adapted with other names"
            )

    def initial_state(self) -> TrainState:
        """Returns the state at step 0 (on the mesh's devices when there is one)."""
        input_shape = tuple(self.dataset.train_images.shape[1:])
        try:
            state = create_train_state(self.network, self.optimizer, self.config.seed, input_shape)
        except Exception as err:  # the user's init failed: one line of why
            raise RunError(f"{self.variant}: the network's init fails: {first_line(err)}") from None
        if self.mesh is not None:  # replicated; a restored checkpoint keeps this layout
            state = place(state, replicated(self.mesh))
        return state

    def probe_at(self, state: TrainState, step: int, etas: jax.Array | None = None):
        """Returns ``(StepOutput, ProbeResult)`` for the state of ``step`` on its own batch."""
        batch = self.train_source(step)
        _, out = self.train_step(state, batch)
        result = self.probe_step(
            state, batch, out.grads, out.loss, self.etas if etas is None else etas
        )
        return out, result


def check_variant(
    config: RunConfig, variant: str, dataset: Dataset, run_dir: Path | None = None
) -> None:
    """Builds ``variant``'s network and traces one training step and one evaluation on abstract
    inputs of the data's shapes: nothing is computed and no data moves to a device. Raises
    RunError (one line) unless the network initialises, returns ``(outputs, state)`` with the
    state's structure unchanged, gives one row of class scores (or targets) per example for a
    built-in loss, and the loss gives one value per example."""
    model_config = config.model_for(variant)
    loss = model_loss(model_config, dataset.task)
    try:
        network, optimizer, loss_fn, _, eval_step = compiled_functions(
            model_config, config.optimizer, "map", 1, dataset.num_outputs, loss
        )[:5]
    except (NetworkError, ValueError) as err:
        raise RunError(f"{variant}: {first_line(err)}") from None
    shape = tuple(dataset.train_images.shape[1:])
    n = min(config.batch_size, 2)
    labels = dataset.train_labels
    batch = {
        "image": jax.ShapeDtypeStruct((n, *shape), jnp.float32),
        "label": jax.ShapeDtypeStruct((n, *labels.shape[1:]), labels.dtype),
        "rng": jax.ShapeDtypeStruct((2,), jnp.uint32),
    }
    try:
        state = jax.eval_shape(lambda: create_train_state(network, optimizer, config.seed, shape))
    except Exception as err:  # the user's init failed: one line of why
        raise RunError(f"{variant}: the network's init fails: {first_line(err)}") from None
    if run_dir is not None:  # reopening a run: the network must still build its shapes
        check_network_record(run_dir / variant, model_config, state.params)
    try:
        _, (new_state, outputs) = jax.eval_shape(loss_fn, state.params, state.batch_stats, batch)
        jax.eval_shape(eval_step, state.params, state.batch_stats, batch)
    except Exception as err:  # the user's network or loss failed on a batch: say where
        raise RunError(
            f"{variant}: the network or loss fails on a batch: {first_line(err)}"
        ) from None
    if jax.tree.structure(new_state) != jax.tree.structure(state.batch_stats) or any(
        (a.shape, a.dtype) != (b.shape, b.dtype)
        for a, b in zip(jax.tree.leaves(new_state), jax.tree.leaves(state.batch_stats), strict=True)
    ):
        raise RunError(
            f"{variant}: the network's apply returns a state of another structure than its init"
        )
    want = (n, dataset.num_outputs)
    user_loss = model_config.loss is not None and is_import_path(model_config.loss)
    if not user_loss and getattr(outputs, "shape", None) != want:
        what = f"{dataset.num_classes} classes" if dataset.task == "classification" else "targets"
        raise RunError(
            f"{variant}: the network outputs shape {getattr(outputs, 'shape', outputs)} for "
            f"{n} examples, but the data has {what}: it must output {want}"
        )
    per_example = jax.eval_shape(get_loss(loss).per_example, outputs, batch["label"])
    if per_example.shape != (n,):
        raise RunError(
            f"{variant}: the loss {loss!r} gives shape {per_example.shape} for {n} examples; a "
            "per-example loss returns one value per example, shape (batch,)"
        )


def train_variant(
    trainer: Trainer,
    variant_dir: Path,
    *,
    resume: bool = False,
    probe_enabled: bool = True,
    on_step: Callable[[int, dict[str, float]], None] | None = None,
    keep_going: bool = False,
    on_rows: Callable[[str, list[dict]], None] | None = None,
) -> VariantReport:
    """Trains one variant to ``config.steps``, checkpointing, probing and recording as it goes.

    Returns the timings of the work done in this call. ``on_step(step, last_metrics)`` is
    called after every step (for progress bars) with the newest metrics fetched, which lag the
    step by up to ``log_every`` steps. When the training loss becomes non-finite, training stops
    at the next flush of the records (every ``log_every`` steps and before each checkpoint, one
    step after the rows it fetches, so no check costs a sync of its own) and
    ``<variant>/diverged.json`` says where; ``keep_going`` trains on to the end and records the
    divergence all the same. A resumed variant that diverged stays stopped unless
    ``keep_going``.
    """
    cfg = trainer.config
    report = VariantReport(trainer.variant)
    ckpt_cfg = cfg.checkpoint
    ckpt_every = ckpt_cfg.every if ckpt_cfg.enabled else 0
    probe_every = cfg.probe.every * max(ckpt_every, 1)
    probing = probe_enabled and cfg.probe.enabled

    diverged_path = variant_dir / DIVERGED_FILE
    if resume and diverged_path.exists():
        if not keep_going:
            report.diverged = json.loads(diverged_path.read_text())
            return report
        diverged_path.unlink()
    state = trainer.initial_state()
    start, restored = 0, False
    checkpointer = Checkpointer(variant_dir / "checkpoints", ckpt_cfg) if ckpt_every else None
    if resume and checkpointer is not None:
        # A damaged newest checkpoint costs the steps since the previous one, not the run: the
        # rerun steps rewrite it, bit-identical to an uninterrupted run.
        newest = checkpointer.restore_newest_intact(state)
        if newest is not None:
            (start, state), restored = newest, True
    primary = is_primary()  # only process 0 of a multi-host run writes records
    if primary and not (variant_dir / NETWORK_FILE).exists():
        variant_dir.mkdir(parents=True, exist_ok=True)
        write_network_record(variant_dir, cfg.model_for(trainer.variant), state.params)
    # Rows past the restart point were produced after the newest checkpoint: drop them so the
    # rerun steps are recorded once.
    if primary:
        truncate_rows(
            variant_dir / METRICS_FILE,
            lambda r: r["step"] < start or ("test_accuracy" in r and r["step"] <= start),
        )
        truncate_rows(variant_dir / PROBE_FILE, lambda r: r["step"] < start)
    recorder = Recorder(
        variant_dir, write=primary, learning_rate=cfg.optimizer.learning_rate, on_rows=on_rows
    )
    timing = ProbeTiming()
    t_begin = time.perf_counter()
    try:
        for step in range(start, cfg.steps):
            # This step's work is queued on the device first; the host's work for the steps
            # before it (fetching their rows, starting the checkpoint's copy) then runs while
            # the device computes. No step waits for its own results, except the first (to
            # time compilation) and the probed steps sampled to time the probe.
            batch = trainer.train_source(step)
            probe_now = probing and step % probe_every == 0
            fused = probe_now and trainer.train_probe_step is not None
            timed = probe_now and timing.samples(report.probes_run)
            save_now = ckpt_every and step % ckpt_every == 0 and not (restored and step == start)
            if fused and timed:
                jax.block_until_ready(state)
            t0 = time.perf_counter()
            if fused:
                new_state, out, result = trainer.train_probe_step(state, batch, trainer.etas)
            else:
                new_state, out = trainer.train_step(state, batch)
            if step == start:
                # The first call compiles, inside the call itself: timed from before it.
                jax.block_until_ready(out.loss)
                report.compile_s += time.perf_counter() - t0
            if probe_now and not fused:
                if timed:
                    jax.block_until_ready(out.loss)
                    t0 = time.perf_counter()
                result = trainer.probe_step(state, batch, out.grads, out.loss, trainer.etas)
            probe_time = None
            if timed:
                # With --fuse, the whole fused step counts as probing (VariantReport.probe_s).
                jax.block_until_ready(result)
                probe_time = time.perf_counter() - t0
            if save_now or (step > start and step % max(cfg.log_every, 1) == 0):
                # The rows of the steps before this one: flushed before the checkpoint of this
                # step's starting state, so the records on disk always reach at least the newest
                # checkpoint and a resumed run never misses or repeats a row.
                recorder.flush()
                if recorder.diverged is not None and not keep_going:
                    break  # before a state that is no longer finite is saved
                if save_now:
                    t1 = time.perf_counter()
                    checkpointer.save(step, state)
                    report.checkpoint_s += time.perf_counter() - t1
            recorder.add_metrics({"step": step, "loss": out.loss, "accuracy": out.accuracy})
            if probe_now:
                timing.add(report.probes_run, probe_time)
                report.probes_run += 1
                recorder.add_probe(probe_row(step, trainer.etas, result))
            state = new_state
            report.steps_run += 1
            done = step + 1
            if (cfg.eval_every and done % cfg.eval_every == 0) or done == cfg.steps:
                # The final evaluation always covers the whole test set.
                limit = None if done == cfg.steps else cfg.eval_batches
                metrics = evaluate(trainer.eval_step, state, trainer.test_source, limit)
                recorder.add_metrics({"step": done, **metrics})
            if on_step is not None:
                on_step(done, recorder.last)
        recorder.flush()
        stopped = recorder.diverged is not None and not keep_going
        if recorder.diverged is not None:
            report.diverged = {**recorder.diverged, "stopped": stopped}
            if primary:
                diverged_path.write_text(json.dumps(report.diverged, indent=2) + "\n")
        if checkpointer is not None and cfg.steps > start and not stopped:
            t0 = time.perf_counter()
            checkpointer.save(cfg.steps, state, force=True)
            report.checkpoint_s += time.perf_counter() - t0
    finally:
        report.probe_s = timing.estimate(report.probes_run)
        recorder.close()
        if checkpointer is not None:
            t0 = time.perf_counter()
            checkpointer.close()
            report.checkpoint_s += time.perf_counter() - t0
    report.wall_s = time.perf_counter() - t_begin
    return report


# --- whole runs ---------------------------------------------------------------------------------


@contextmanager
def _progress(enabled: bool, total: int, variants: list[str]) -> Iterator[Callable]:
    """Yields ``make_callback(variant) -> on_step``; a rich progress bar when ``enabled``."""
    if not enabled:
        yield lambda variant: None
        return

    bar_columns = ("{task.fields[rate]}", "loss {task.fields[loss]} acc {task.fields[acc]}")
    with progress_bar(*bar_columns) as bar:
        tasks = {
            v: bar.add_task(v, total=total, start=False, rate="", loss="-", acc="-")
            for v in variants
        }

        def make(variant: str) -> Callable:
            task = tasks[variant]
            bar.start_task(task)
            first = True

            def on_step(step: int, last: dict[str, float]) -> None:
                nonlocal first
                if first:
                    # A resumed run starts at its checkpoint: the speed counts from there, not
                    # from step 0 in the time of one step.
                    bar.reset(task, completed=step - 1)
                    first = False
                speed = bar.tasks[task].speed
                accuracy = last.get("accuracy", float("nan"))  # NaN: a regression (DLN) run
                bar.update(
                    task,
                    completed=step,
                    rate=f"{speed:.2f} steps/s" if speed else "",
                    loss=f"{last['loss']:.3f}" if "loss" in last else "-",
                    acc=f"{accuracy:.2f}" if accuracy == accuracy else "-",
                )

            return on_step

        yield make


def run(
    config: RunConfig,
    run_dir: str | os.PathLike,
    *,
    resume: bool = False,
    overwrite: bool = False,
    probe_enabled: bool = True,
    progress: bool = True,
    dataset: Dataset | None = None,
    devices: int | str | None = None,
    reuse: Sequence[str | os.PathLike] = (),
    say: Callable[[str], None] | None = None,
    keep_going: bool = False,
    on_rows: Callable[[str, str, list[dict]], None] | None = None,
) -> list[VariantReport]:
    """Trains (and probes) every variant of ``config`` into ``run_dir``.

    Returns one ``VariantReport`` per variant. Records, checkpoints, ``config.json`` and
    ``provenance.json`` are written as the run goes, so an interrupted run can be resumed.
    A variant that one of the ``reuse`` runs already finished with the same settings and data
    (``reuse_mismatch``) is copied from it instead of trained again; ``say`` gets one line
    for each variant reused or not. Raises ``config.ConfigError`` for a configuration the
    command would refuse, before anything is written.
    ``devices`` (a number or ``"all"``, the default) spreads each step over that many devices
    (``landscape.sharding``); one device runs the single-device code. In a multi-host run only
    process 0 writes records and progress. A variant whose training loss becomes non-finite
    stops there (``train_variant``; ``keep_going`` trains on) and ``say`` gets one line.
    ``on_rows(variant, kind, rows)`` gets the rows as they are written (a metric writer:
    ``landscape.tensorboard.TensorBoardWriter.rows``).
    """
    run_dir = Path(run_dir)
    if resume:
        saved = load_config(run_dir)
        config = saved.replace(steps=max(saved.steps, config.steps), data=config.data)
    validate(config)  # the same checks as the command's, before anything is loaded or written
    # The data is loaded before the run directory is touched: a bad --data never costs a run.
    if dataset is None:
        dataset = load_dataset(config.data, progress=progress)
    check_model_fits_data(config, dataset)
    if resume:
        check_same_data(run_dir, dataset)
    try:
        device_count = resolve_device_count(devices, config.batch_size)
    except ValueError as err:
        raise RunError(str(err)) from None
    mesh = make_mesh(device_count)  # built once, shared by every variant
    # Every variant's network is built and checked against the data and the loss before the
    # run directory is touched: a factory that fails never leaves a half-made run behind.
    if config.batch_size > dataset.train_images.shape[0]:
        raise RunError(
            f"--batch-size {config.batch_size} is larger than the {dataset.train_images.shape[0]} "
            "training examples"
        )
    for variant in config.variants:
        check_variant(config, variant, dataset, run_dir if resume else None)
    primary = is_primary()
    progress = progress and primary
    if not probe_enabled and config.probe.enabled and not resume:
        config = config.replace(probe=dataclasses.replace(config.probe, enabled=False))
    if primary:
        check_run_dir_path(run_dir)
        run_dir.mkdir(parents=True, exist_ok=True)
    with run_dir_lock(run_dir):
        return _run_in(
            run_dir, config, dataset, mesh, device_count, resume, overwrite, probe_enabled,
            progress, reuse, say, keep_going, on_rows,
        )  # fmt: skip


def _run_in(
    run_dir: Path,
    config: RunConfig,
    dataset: Dataset,
    mesh: Any,
    device_count: int,
    resume: bool,
    overwrite: bool,
    probe_enabled: bool,
    progress: bool,
    reuse: Sequence[str | os.PathLike],
    say: Callable[[str], None] | None,
    keep_going: bool,
    on_rows: Callable[[str, str, list[dict]], None] | None,
) -> list[VariantReport]:
    """The part of ``run`` that writes: holds the run directory's lock."""
    primary = is_primary()
    if primary:
        config = prepare_run_dir(run_dir, config, resume=resume, overwrite=overwrite)
        if not resume or not (run_dir / "provenance.json").exists():
            facts = {**provenance(dataset, config), "devices_used": device_count}
            (run_dir / "provenance.json").write_text(json.dumps(facts, indent=2) + "\n")
    sync("run directory ready")  # other hosts wait for process 0 to prepare it
    # Every process decides what to reuse (reading only) before process 0 copies anything, so
    # all hosts train the same variants.
    reused = plan_reuse(run_dir, config, dataset, reuse, say if primary else None) if reuse else {}
    sync("reuse planned")
    if primary:
        for variant, source in reused.items():
            copy_variant(source / variant, run_dir / variant, probes=config.probe.enabled)
    sync("reused variants copied")
    reports = []
    to_train = [v for v in config.variants if v not in reused]
    with _progress(progress, config.steps, to_train) as make_callback:
        for variant in config.variants:
            if variant in reused:
                reports.append(VariantReport(variant, reused_from=str(reused[variant])))
                continue
            trainer = Trainer(config, variant, dataset, mesh)
            report = train_variant(
                trainer,
                run_dir / variant,
                resume=resume,
                probe_enabled=probe_enabled and config.probe.enabled,
                on_step=make_callback(variant),
                keep_going=keep_going,
                on_rows=None if on_rows is None else functools.partial(on_rows, variant),
            )
            reports.append(report)
            if report.diverged is not None and say is not None and primary:
                say(divergence_line(variant, report.diverged))
    return reports


@locks_run_dir
def reprobe(
    run_dir: str | os.PathLike,
    *,
    etas: tuple[float, ...] | None = None,
    steps: list[int] | None = None,
    variants: list[str] | None = None,
    out_name: str = "reprobe.jsonl",
    progress: bool = True,
    dataset: Dataset | None = None,
    devices: int | str | None = 1,
) -> dict[str, Path]:
    """Probes the saved checkpoints of a run again, on the batch each step was trained on.

    ``etas`` replaces the run's grid (any length); ``steps`` limits the checkpoints probed.
    Records are written to ``RUN_DIR/<variant>/<out_name>`` in the probe's format, one row per
    checkpoint, appended as they are produced. Returns the paths written, by variant.
    ``devices`` > 1 (or ``"all"``) spreads each re-probe over devices as ``run`` does.
    """
    run_dir = Path(run_dir)
    config = load_config(run_dir)
    if etas is not None:
        config = config.replace(probe=dataclasses.replace(config.probe, etas=tuple(etas)))
    if dataset is None:
        dataset = load_dataset(config.data, progress=progress)
    check_same_data(run_dir, dataset)
    try:
        mesh = make_mesh(resolve_device_count(devices, config.batch_size))
    except ValueError as err:
        raise RunError(str(err)) from None
    written = {}
    for variant in variants or list(config.variants):
        ckpt_dir = run_dir / variant / "checkpoints"
        if not ckpt_dir.exists():
            raise RunError(f"variant {variant!r} has no checkpoints in {run_dir}")
        check_variant(config, variant, dataset, run_dir)
        trainer = Trainer(config, variant, dataset, mesh)
        checkpointer = Checkpointer(ckpt_dir, config.checkpoint)
        chosen = [s for s in checkpointer.steps() if steps is None or s in set(steps)]
        path = run_dir / variant / out_name
        path.unlink(missing_ok=True)
        template = trainer.initial_state()
        with RecordWriter(path) as writer:
            for step in chosen:
                state = checkpointer.restore_or_skip(step, template)
                if state is None:
                    continue
                _, result = trainer.probe_at(state, step)
                writer.write([probe_record(jax.device_get(probe_row(step, trainer.etas, result)))])
        checkpointer.close()
        written[variant] = path
    return written
