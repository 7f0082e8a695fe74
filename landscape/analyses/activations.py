"""Pre-activation statistics over a run: the distributions of the normalisation layers' inputs at
the saved checkpoints (docs/definitions.md#the-percentile-experiment).
"""

from __future__ import annotations

import os
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import jax.numpy as jnp
import numpy as np

from landscape.activations import (
    PERCENTILES,
    STATS,
    count_preactivations,
    layer_stats,
    make_preactivation_fn,
)
from landscape.analyses.ics import chosen_steps, parse_layers, variant_bars
from landscape.checkpoints import Checkpointer
from landscape.data import load_dataset, normalize
from landscape.models import MLP
from landscape.results import ACTIVATIONS_FILE, RecordWriter, read_rows
from landscape.rundir import RunError, check_same_data, load_config, locks_run_dir
from landscape.runs import Trainer, check_variant
from landscape.train import step_batch


@locks_run_dir
def record_activations(
    run_dir: str | os.PathLike,
    *,
    every: int = 1,
    steps: Sequence[int] | None = None,
    layers: str | Sequence[int] | None = None,
    variants: Sequence[str] | None = None,
    examples: int = 1000,
    unit: int = 0,
    bn_mode: str = "train",
    consecutive: bool = True,
    capture: Sequence[str] = (),
    progress: bool = True,
    dataset: Any = None,
) -> dict[str, Path]:
    """Records the activation distributions at a run's checkpoints; returns the files by variant.

    For each variant and chosen checkpointed step (``steps``, else every ``every``-th), appends a
    row to ``RUN_DIR/<variant>/activations.jsonl``: ``step``, ``layer`` (conv numbers),
    ``layer_name``, ``q`` (the percentiles' levels), the stats of ``distribution_stats`` per
    layer, ``unit``, ``examples``, ``bn_mode``, and with ``consecutive`` the changes from step t to
    t + 1 of the mean and variance: ``d_mean``, ``d_var``, ``d_unit_mean``, ``d_unit_var``
    (value at t + 1 minus value at t). Steps already recorded for these layers are skipped.
    ``capture`` (module class names, e.g. ``("BatchNorm",)``) takes the outputs of those layers
    instead of sown ``preact<n>`` values, for a network that sows none.
    Raises ``RunError`` for a bad run directory, variant, layer numbers or options.
    """
    run_dir = Path(run_dir)
    config = load_config(run_dir)
    names = list(variants or config.variants)
    for variant in names:
        if not (run_dir / variant / "checkpoints").is_dir():
            raise RunError(f"variant {variant!r} has no checkpoints in {run_dir}")
    if every < 1 or examples < 2 or unit < 0:
        raise RunError("--every must be positive, --examples at least 2, --unit non-negative")
    if bn_mode not in ("train", "eval"):
        raise RunError(f"--bn-mode must be train or eval, got {bn_mode!r}")
    if dataset is None:
        dataset = load_dataset(config.data, progress=progress)
    check_same_data(run_dir, dataset)
    images = normalize(
        jnp.asarray(dataset.test_images[:examples]),
        jnp.asarray(dataset.mean, jnp.float32),
        jnp.asarray(dataset.std, jnp.float32),
    )
    written: dict[str, Path] = {}
    jobs = []
    for variant in names:
        check_variant(config, variant, dataset, run_dir)  # still the run's network
        trainer = Trainer(config, variant, dataset)
        trainer.require_linen(
            "activation statistics need the inputs of the network's nonlinearities"
        )
        template = trainer.initial_state()
        variables = {"params": template.params, "batch_stats": template.batch_stats}
        count = count_preactivations(
            trainer.model, variables, dataset.test_images.shape[1:], capture
        )
        if count == 0:
            raise RunError(
                f"{variant}: "
                + (
                    f"no layer of the network is a {' or '.join(capture)}"
                    if capture
                    else "the network sows no pre-activations; name the layers whose outputs "
                    "feed its nonlinearities with --capture (e.g. --capture BatchNorm), or sow "
                    "them as preact<n> (docs/own-models.md)"
                )
            )
        text = layers if layers is None or isinstance(layers, str) else ",".join(map(str, layers))
        try:
            numbers = parse_layers(text, count, "conv layers with a ReLU input")
        except ValueError as err:
            raise RunError(str(err)) from None
        checkpointer = Checkpointer(run_dir / variant / "checkpoints", config.checkpoint)
        path = run_dir / variant / ACTIVATIONS_FILE
        need = set(numbers)
        done = {r["step"] for r in read_rows(path) if need <= set(r.get("layer", ()))}
        todo = [s for s in chosen_steps(checkpointer.steps(), every, steps) if s not in done]
        jobs.append((variant, trainer, template, numbers, checkpointer, todo))
        written[variant] = path
    with variant_bars(progress, [(j[0], len(j[-1])) for j in jobs]) as advance:
        for variant, trainer, template, numbers, checkpointer, todo in jobs:
            preact_fn = make_preactivation_fn(
                trainer.model, numbers, train=bn_mode == "train", capture=capture
            )
            mode = bn_mode if template.batch_stats else "none"
            kind = "dense" if isinstance(trainer.model, MLP) else "conv"
            with RecordWriter(written[variant]) as writer:
                for step in todo:
                    state = checkpointer.restore_or_skip(step, template)
                    if state is None:
                        advance(variant)
                        continue
                    # The step's own noise key, so a noisy layer draws what training drew.
                    rng = step_batch(state, {})["rng"]
                    arrays = preact_fn(state.params, state.batch_stats, images, rng)
                    stats, after = layer_stats(arrays, unit), None
                    if consecutive:
                        nxt, _ = trainer.train_step(state, trainer.train_source(step))
                        # Step t + 1 with its own noise, as its training step draws it: for the
                        # noisy variants the change includes the injected shift (the paper's
                        # Fig. 2 point), and d_x(t) = x(t + 1) - x(t) of the saved records.
                        rng_next = step_batch(nxt, {})["rng"]
                        arrays = preact_fn(nxt.params, nxt.batch_stats, images, rng_next)
                        after = layer_stats(arrays, unit)
                    row = activation_record(
                        step, numbers, stats, after, unit, examples, mode, layer_kind=kind
                    )
                    writer.write([row])
                    advance(variant)
            checkpointer.close()
    return written


def activation_record(
    step: int,
    layers: Sequence[int],
    stats: dict,
    after: dict | None,
    unit: int,
    examples: int,
    bn_mode: str,
    percentiles: Sequence[float] = PERCENTILES,
    layer_kind: str = "conv",
) -> dict[str, Any]:
    """Returns one ``activations.jsonl`` row (plain Python values) from fetched stats; the layers
    are named ``<layer_kind><n>`` (``conv3``; ``dense3`` for the MLP's hidden layers)."""
    row: dict[str, Any] = {
        "step": int(step),
        "layer": [int(n) for n in layers],
        "layer_name": [f"{layer_kind}{n}" for n in layers],
        "q": [float(p) for p in percentiles],
        **{k: np.asarray(stats[k], np.float64).tolist() for k in STATS},
        "unit": int(unit),
        "examples": int(examples),
        "bn_mode": bn_mode,
    }
    if after is not None:
        for key in ("mean", "var", "unit_mean", "unit_var"):
            change = np.asarray(after[key], np.float64) - np.asarray(stats[key], np.float64)
            row[f"d_{key}"] = change.tolist()
    return row
