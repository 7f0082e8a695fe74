"""Checkpoints the toolkit did not write: a series of Orbax checkpoints saved by someone else's
training, made into a run directory every analysis reads (docs/own-models.md).

Each checkpoint's parameters (and BatchNorm statistics) are checked against the network the
configuration builds, saved as the run's checkpoint of that step, and probed. The batches the
original training used are unknown, so every step is analysed on its own deterministic analysis
batch, the one ``landscape probe`` would have trained on at that step with the run's seed; the
run's ``provenance.json`` (and so its report) says so. The optimiser state is not adopted: an
analysis that reads it (internal covariate shift under momentum or Adam) sees a fresh one.
"""

from __future__ import annotations

import dataclasses
import json
import os
from collections.abc import Callable
from pathlib import Path
from typing import Any

import jax
import orbax.checkpoint as ocp

from landscape.checkpoints import Checkpointer
from landscape.config import RunConfig, validate
from landscape.data import Dataset, load_dataset
from landscape.network import parameter_shapes
from landscape.results import METRICS_FILE, PROBE_FILE, RecordWriter
from landscape.rundir import (
    RunError,
    check_run_dir_path,
    prepare_run_dir,
    provenance,
    run_dir_lock,
)
from landscape.runs import Trainer
from landscape.step_records import probe_record, probe_row

ANALYSIS_BATCHES = (
    "analysis batches: step t is probed on the batch drawn from (seed, t); the batches the "
    "original training used are unknown"
)


def orbax_steps(source: Path) -> list[int]:
    """Returns the steps of the Orbax checkpoints in ``source`` (a CheckpointManager's folder)."""
    if not source.is_dir():
        raise RunError(f"{source} is not a folder of Orbax checkpoints")
    with ocp.CheckpointManager(source.resolve()) as manager:
        steps = sorted(manager.all_steps())
    if not steps:
        raise RunError(f"{source} holds no Orbax checkpoints (no <step>/ folders)")
    return steps


def _restore(manager: ocp.CheckpointManager, source: Path, step: int, item: str | None) -> Any:
    try:
        if item is None:
            return manager.restore(step)
        restored = manager.restore(
            step, args=ocp.args.Composite(**{item: ocp.args.StandardRestore()})
        )
        return restored[item]
    except Exception as err:  # orbax says what it could not read; one line of it
        raise RunError(f"{source}/{step}: cannot restore ({type(err).__name__}: {err})") from None


def _pick(tree: Any, key: str | None, default: str, source: str) -> Any:
    """Returns ``tree[key]`` (a dotted path), or ``tree[default]`` when present, or None."""
    path = key if key is not None else default
    value = tree
    for part in path.split("."):
        if not isinstance(value, dict) or part not in value:
            if key is None:
                return None
            found = ", ".join(sorted(tree)) if isinstance(tree, dict) else type(tree).__name__
            raise RunError(f"{source} has no {key!r} (top level: {found})")
        value = value[part]
    return value


def adopt_checkpoints(
    source: str | os.PathLike,
    config: RunConfig,
    run_dir: str | os.PathLike,
    *,
    item: str | None = None,
    params_key: str | None = None,
    state_key: str | None = None,
    overwrite: bool = False,
    dataset: Dataset | None = None,
    progress: bool = False,
    say: Callable[[str], None] | None = None,
) -> list[int]:
    """Makes ``run_dir`` a run of ``config``'s first variant from the Orbax checkpoints in
    ``source``; returns the steps adopted.

    ``item`` names the checkpoint item when the manager saved several (default: its only one).
    ``params_key`` and ``state_key`` are dotted paths of the parameters and the BatchNorm
    statistics in the restored tree (default: ``params``, else the whole tree, and
    ``batch_stats``, else none). Raises RunError (one line) before anything is written when the
    first checkpoint does not fit the network.
    """
    source, run_dir = Path(source), Path(run_dir)
    validate(config)
    steps = orbax_steps(source)
    if dataset is None:
        dataset = load_dataset(config.data, progress=progress)
    variant = config.variants[0]
    config = config.replace(
        variants=(variant,),
        steps=steps[-1],
        checkpoint=dataclasses.replace(config.checkpoint, every=1, keep_all=True),
        probe=dataclasses.replace(config.probe, every=1, enabled=True),
    )
    trainer = Trainer(config, variant, dataset)
    template = trainer.initial_state()
    wanted = parameter_shapes(template.params)

    manager = ocp.CheckpointManager(source.resolve())

    def state_at(step: int):
        raw = _restore(manager, source, step, item)
        where = f"{source}/{step}"
        params = _pick(raw, params_key, "params", where)
        params = raw if params is None else params
        stats = _pick(raw, state_key, "batch_stats", where)
        shapes = parameter_shapes(params)
        if shapes != wanted:
            first = next(
                k for k in sorted(set(shapes) | set(wanted)) if shapes.get(k) != wanted.get(k)
            )
            raise RunError(
                f"{where} does not fit the network: {first} is {shapes.get(first)} there, "
                f"{wanted.get(first)} in the network (set --params-key if the parameters are nested)"
            )
        like = jax.tree.map(lambda t, a: jax.numpy.asarray(a, t.dtype), template.params, params)
        stats_like = template.batch_stats
        if jax.tree.leaves(stats_like):  # the network keeps running statistics: they must fit
            if stats is None or jax.tree.structure(stats) != jax.tree.structure(stats_like):
                raise RunError(
                    f"{where} holds no running statistics of the network's shape under "
                    f"{state_key or 'batch_stats'!r}; set --state-key to where they are"
                )
            stats_like = jax.tree.map(lambda t, a: jax.numpy.asarray(a, t.dtype), stats_like, stats)
        return template.replace(
            step=jax.numpy.asarray(step, jax.numpy.int32), params=like, batch_stats=stats_like
        )

    try:
        first = state_at(steps[0])  # checked before the run directory is touched
    except RunError:
        manager.close()
        raise
    check_run_dir_path(run_dir)
    run_dir.mkdir(parents=True, exist_ok=True)
    try:
        with run_dir_lock(run_dir):
            _adopt_into(run_dir, config, source, dataset, trainer, steps, first, state_at,
                        overwrite, say)  # fmt: skip
    finally:
        manager.close()
    return steps


def _adopt_into(
    run_dir: Path,
    config: RunConfig,
    source: Path,
    dataset: Dataset,
    trainer: Trainer,
    steps: list[int],
    first: Any,
    state_at: Callable[[int], Any],
    overwrite: bool,
    say: Callable[[str], None] | None,
) -> None:
    """The part of ``adopt_checkpoints`` that writes, holding the run directory's lock."""
    variant = config.variants[0]
    prepare_run_dir(run_dir, config, resume=False, overwrite=overwrite)
    facts = {
        **provenance(dataset, config),
        "adopted_from": str(source.resolve()),
        "batches": ANALYSIS_BATCHES,
    }
    (run_dir / "provenance.json").write_text(json.dumps(facts, indent=2) + "\n")
    folder = run_dir / variant
    checkpointer = Checkpointer(folder / "checkpoints", config.checkpoint)
    try:
        with (
            RecordWriter(folder / PROBE_FILE) as probes,
            RecordWriter(folder / METRICS_FILE) as metrics,
        ):
            for step in steps:
                state = first if step == steps[0] else state_at(step)
                checkpointer.save(step, state)
                out, result = trainer.probe_at(state, step)
                row = jax.device_get(probe_row(step, trainer.etas, result))
                probes.write([probe_record(row)])
                loss, accuracy = jax.device_get((out.loss, out.accuracy))
                metrics.write([{"step": step, "loss": float(loss), "accuracy": float(accuracy)}])
                if say is not None:
                    say(f"{variant}: step {step} adopted and probed")
    finally:
        checkpointer.close()
