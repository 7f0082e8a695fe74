"""Internal covariate shift over a run: Definition 2.1 at the saved checkpoints
(docs/definitions.md#internal-covariate-shift).
"""

from __future__ import annotations

import os
from collections.abc import Callable, Iterator, Sequence
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np

from landscape.checkpoints import Checkpointer
from landscape.data import load_dataset
from landscape.ics import ICSResult, Layer, make_ics_step, model_layers, traced_layers
from landscape.progress import progress_bar
from landscape.results import ICS_FILE, RecordWriter, read_rows
from landscape.rundir import RunError, check_same_data, load_config, locks_run_dir
from landscape.runs import Trainer, check_variant


def parse_layers(text: str | None, count: int, what: str = "layers") -> list[int]:
    """Returns the layer numbers of ``--layers`` ("5,9"; None = all ``count``), validated."""
    if text is None or not text.strip():
        return list(range(1, count + 1))
    try:
        numbers = [int(v) for v in text.split(",") if v.strip()]
    except ValueError:
        raise ValueError(f"--layers {text!r}: use layer numbers like 5,9") from None
    bad = [n for n in numbers if not 1 <= n <= count]
    if not numbers or bad:
        raise ValueError(f"--layers {text!r}: the model has {count} {what}, numbered 1..{count}")
    return list(dict.fromkeys(numbers))


def chosen_steps(available: Sequence[int], every: int, steps: Sequence[int] | None) -> list[int]:
    """Returns the checkpointed steps to measure: those listed, else every ``every``-th."""
    if steps is not None:
        wanted = set(steps)
        return [s for s in available if s in wanted]
    return [s for s in available if s % every == 0]


def _done_steps(path: Path, layers: Sequence[int]) -> set[int]:

    need = set(layers)
    return {row["step"] for row in read_rows(path) if need <= set(row.get("layer", ()))}


@locks_run_dir
def record_ics(
    run_dir: str | os.PathLike,
    *,
    every: int = 1,
    steps: Sequence[int] | None = None,
    layers: str | Sequence[int] | None = None,
    variants: Sequence[str] | None = None,
    progress: bool = True,
    dataset: Any = None,
) -> dict[str, Path]:
    """Measures Definition 2.1 at a run's saved checkpoints; returns the files written by variant.

    For each variant and each checkpointed step chosen (``steps``, else every ``every``-th), the
    state is restored and the ICS of the chosen ``layers`` (1-based numbers; default all) is
    computed on the batch that step was trained on, BatchNorm in training mode. One row per step
    is appended to ``RUN_DIR/<variant>/ics.jsonl`` as it is produced: ``step``, ``layer``,
    ``layer_name``, ``dist``, ``cosine``, ``grad_norm``, ``shifted_grad_norm``, ``bn_mode``.
    Steps already recorded for these layers are skipped, so an interrupted call resumes.
    Raises ``RunError`` for a directory that is not a run, a variant without checkpoints or bad
    layer numbers.
    """
    run_dir = Path(run_dir)
    config = load_config(run_dir)
    names = list(variants or config.variants)
    for variant in names:
        if not (run_dir / variant / "checkpoints").is_dir():
            raise RunError(f"variant {variant!r} has no checkpoints in {run_dir}")
    if every < 1:
        raise RunError(f"--every must be positive, got {every}")
    if dataset is None:
        dataset = load_dataset(config.data, progress=progress)
    check_same_data(run_dir, dataset)
    written: dict[str, Path] = {}
    jobs = []
    for variant in names:
        check_variant(config, variant, dataset, run_dir)  # still the run's network
        trainer = Trainer(config, variant, dataset)
        template = trainer.initial_state()
        example = jnp.zeros((2, *dataset.train_images.shape[1:]), jnp.float32)
        network = trainer.network
        try:
            called_as_builtin = (network.train_arg, network.state_collection) == (
                "train",
                "batch_stats",
            )
            if network.kind == "linen" and called_as_builtin:
                model_layer_list = model_layers(
                    trainer.model,
                    {"params": template.params, "batch_stats": template.batch_stats},
                    example[:1],
                )
            else:  # NNX, Equinox, hand-written: the order in which the forward pass reads them
                model_layer_list = traced_layers(
                    network, template.params, template.batch_stats, example
                )
        except ValueError as err:
            raise RunError(f"{variant}: {err}") from None
        text = layers if layers is None or isinstance(layers, str) else ",".join(map(str, layers))
        try:
            numbers = parse_layers(text, len(model_layer_list))
        except ValueError as err:
            raise RunError(str(err)) from None
        checkpointer = Checkpointer(run_dir / variant / "checkpoints", config.checkpoint)
        path = run_dir / variant / ICS_FILE
        done = _done_steps(path, numbers)
        todo = [s for s in chosen_steps(checkpointer.steps(), every, steps) if s not in done]
        jobs.append((variant, trainer, template, model_layer_list, numbers, checkpointer, todo))
        written[variant] = path
    with variant_bars(progress, [(j[0], len(j[-1])) for j in jobs]) as advance:
        for variant, trainer, template, layer_list, numbers, checkpointer, todo in jobs:
            ics_step = make_ics_step(trainer.loss_fn, trainer.optimizer, layer_list)
            select = jnp.asarray(numbers, jnp.int32)
            bn_mode = "train" if template.batch_stats else "none"
            with RecordWriter(run_dir / variant / ICS_FILE) as writer:
                for step in todo:
                    state = checkpointer.restore_or_skip(step, template)
                    if state is None:
                        advance(variant)
                        continue
                    result = jax.device_get(ics_step(state, trainer.train_source(step), select))
                    writer.write([ics_record(step, result, layer_list, bn_mode)])
                    advance(variant)
            checkpointer.close()
    return written


def ics_record(step: int, result: ICSResult, layers: Sequence[Layer], bn_mode: str) -> dict:
    """Returns one ``ics.jsonl`` row (plain Python values) from a fetched ``ICSResult``."""
    numbers = [int(n) for n in np.asarray(result.layer)]
    return {
        "step": int(step),
        "layer": numbers,
        "layer_name": [layers[n - 1].name for n in numbers],
        "dist": np.asarray(result.dist, np.float64).tolist(),
        "cosine": np.asarray(result.cosine, np.float64).tolist(),
        "grad_norm": np.asarray(result.grad_norm, np.float64).tolist(),
        "shifted_grad_norm": np.asarray(result.shifted_grad_norm, np.float64).tolist(),
        "bn_mode": bn_mode,
    }


@contextmanager
def variant_bars(enabled: bool, totals: Sequence[tuple[str, int]]) -> Iterator[Callable]:
    """Yields ``advance(variant)``: one rich progress bar per (variant, total) when ``enabled``."""
    if not enabled:
        yield lambda variant: None
        return

    with progress_bar() as bar:
        tasks = {v: bar.add_task(v, total=n) for v, n in totals}
        yield lambda variant: bar.advance(tasks[variant])
