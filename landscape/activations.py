"""Distributional stability, the Ioffe & Szegedy view of BatchNorm (SPEC, "From the seed notes").

Ioffe & Szegedy (2015, Figure 1) track the input to a typical sigmoid over training as its 15th,
50th and 85th percentiles, and find it steadier with BatchNorm; Santurkar et al. (2018,
Figure 8) compare the change of the first two moments of a layer's activations between two
consecutive training steps. Both are measured here, offline from a run's checkpoints.

What is measured: the **input to the nonlinearity** of conv layer n (``preact<n>``, sown by
``landscape.models.VGG``): the conv output for the standard network, the normalised output for
a network with the normalisation before the ReLU (as BN-Inception's figure shows the input to a
sigmoid), the conv output for a network whose normalisation follows the ReLU. Layer numbers are
the same 1-based conv numbers as in ``landscape.ics`` (conv #n is layer n).

On which data: a fixed held-out batch, the first ``examples`` test images, the same at every
step, so only the parameters change between steps. BatchNorm runs in training mode on that
batch by default (its statistics are those of the batch, as during training); ``bn_mode="eval"``
uses the running averages instead. Statistics are taken over every example and position of the
layer ("layer": all units pooled) and over one unit (channel ``unit``, Ioffe & Szegedy's "typical
unit"); the consecutive-step change compares step t with step t + 1, where t + 1 is the state
the training step actually reaches from checkpoint t (recomputed with the run's own train step
on t's own batch), so it needs no consecutive checkpoints.
"""

from __future__ import annotations

import os
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np

from landscape.results import ACTIVATIONS_FILE

PERCENTILES = (15.0, 50.0, 85.0)  # BN-Inception's MNIST figure (Ioffe & Szegedy 2015, Fig. 1)
STATS = ("percentiles", "mean", "var", "unit_percentiles", "unit_mean", "unit_var")


def sown_preactivations(
    model: nn.Module,
    variables: dict,
    images: jax.Array,
    *,
    train: bool = True,
    rng: jax.Array | None = None,
) -> dict[int, jax.Array]:
    """Returns ``{n: input to the nonlinearity of conv layer n}`` (NHWC arrays), n = 1, 2, ...

    ``train=True`` evaluates BatchNorm with the statistics of ``images`` (the running averages
    are not changed: the updated ones are discarded); ``rng`` is the noise key of noisy layers.
    """
    rngs = {"noise": rng if rng is not None else jax.random.key(0)}
    mutable = ["intermediates", "batch_stats"] if train else ["intermediates"]
    _, state = model.apply(variables, images, train=train, mutable=mutable, rngs=rngs)
    sown = state["intermediates"]
    return {int(k[len("preact") :]): v[0] for k, v in sown.items() if k.startswith("preact")}


def distribution_stats(
    values: np.ndarray | jax.Array, unit: int = 0, percentiles: Sequence[float] = PERCENTILES
) -> dict[str, np.ndarray]:
    """Returns the distribution summary of one layer's activations (units on the last axis).

    ``percentiles`` (P,), ``mean`` and ``var`` (biased) over every entry; ``unit_percentiles``,
    ``unit_mean``, ``unit_var`` over the entries of channel ``unit`` (all examples and positions;
    clipped to the layer's width). Units: those of the activations; computed in float64.

    This runs on the host with numpy: ``np.percentile`` selects in linear time, where a
    percentile on the device sorts the whole layer (measured on 2 CPU cores: 40 s against about
    1 s for the 8 layers of VGG-11 at width 1/4 on 1,000 images).
    """
    values = np.asarray(values, dtype=np.float64)
    flat = values.reshape(-1)
    one = values[..., min(unit, values.shape[-1] - 1)].reshape(-1)
    q = np.asarray(percentiles, dtype=np.float64)
    return {
        "percentiles": np.percentile(flat, q),
        "mean": flat.mean(),
        "var": flat.var(),
        "unit_percentiles": np.percentile(one, q),
        "unit_mean": one.mean(),
        "unit_var": one.var(),
    }


def make_preactivation_fn(
    model: nn.Module, layers: Sequence[int], *, train: bool = True
) -> Callable:
    """Returns jitted ``f(params, batch_stats, images, rng) -> tuple of arrays``, one per layer.

    Each array is the input to the ReLU of conv layer n (for n in ``layers``, in that order);
    ``rng`` is key data (``landscape.train.step_batch``'s noise key).
    """
    layers = tuple(layers)

    @jax.jit
    def preactivation_fn(params, batch_stats, images, rng):
        sown = sown_preactivations(
            model,
            {"params": params, "batch_stats": batch_stats},
            images,
            train=train,
            rng=jax.random.wrap_key_data(rng),
        )
        return tuple(sown[n] for n in layers)

    return preactivation_fn


def layer_stats(
    arrays: Sequence[np.ndarray | jax.Array],
    unit: int = 0,
    percentiles: Sequence[float] = PERCENTILES,
) -> dict[str, np.ndarray]:
    """Returns ``distribution_stats`` of each array, stacked over the layers (first axis)."""
    per_layer = [distribution_stats(a, unit, percentiles) for a in jax.device_get(arrays)]
    return {k: np.stack([s[k] for s in per_layer]) for k in STATS}


def count_preactivations(model: nn.Module, variables: dict, image_shape: Sequence[int]) -> int:
    """Returns how many layers sow their pre-activation (traced, nothing computed)."""
    shapes = jax.eval_shape(
        lambda v: sown_preactivations(model, v, jnp.zeros((2, *image_shape), jnp.float32)),
        variables,
    )
    return len(shapes)


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
    Raises ``RunError`` for a bad run directory, variant, layer numbers or options.
    """
    from landscape.checkpoints import Checkpointer
    from landscape.data import load_dataset, normalize
    from landscape.ics import chosen_steps, parse_layers, progress_bar
    from landscape.results import RecordWriter, read_rows
    from landscape.runs import RunError, Trainer, check_same_data, load_config
    from landscape.train import step_batch

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
        trainer = Trainer(config, variant, dataset)
        template = trainer.initial_state()
        variables = {"params": template.params, "batch_stats": template.batch_stats}
        count = count_preactivations(trainer.model, variables, dataset.test_images.shape[1:])
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
    with progress_bar(progress, [(j[0], len(j[-1])) for j in jobs]) as advance:
        for variant, trainer, template, numbers, checkpointer, todo in jobs:
            preact_fn = make_preactivation_fn(trainer.model, numbers, train=bn_mode == "train")
            mode = bn_mode if template.batch_stats else "none"
            with RecordWriter(written[variant]) as writer:
                for step in todo:
                    state = checkpointer.restore(step, template)
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
                    writer.write(
                        [activation_record(step, numbers, stats, after, unit, examples, mode)]
                    )
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
) -> dict[str, Any]:
    """Returns one ``activations.jsonl`` row (plain Python values) from fetched stats."""
    row: dict[str, Any] = {
        "step": int(step),
        "layer": [int(n) for n in layers],
        "layer_name": [f"conv{n}" for n in layers],
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
