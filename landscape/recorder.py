"""The probe inside the user's own training loop: a recorder that probes the loss landscape at the
steps it is given and writes the same records as ``landscape probe`` (docs/own-models.md).

    recorder = LoopRecorder("runs/mine", loss_fn, etas=jnp.linspace(0.05, 0.4, 8))
    for step in range(steps):
        (loss, (state, _)), grads = jax.value_and_grad(loss_fn, has_aux=True)(params, state, batch)
        recorder(step, params, model_state, batch, grad=grads, loss=loss)  # before the update
        recorder.log(step, loss=loss)
        ...
    recorder.close()

``loss_fn(params, model_state, batch) -> (loss, (new_model_state, outputs))`` is the loss the
loop trains on (``landscape.train.make_loss_fn`` builds it from a network). A network with
dropout or noise draws from ``batch["rng"]`` (key data, e.g. ``jax.random.key_data(
jax.random.fold_in(key, step))``): give the recorder the batch the step trained on, key included. The probe is
compiled once; given the loop's gradient and loss it does not compute them again. Records are
written in batches as the loop goes (every ``flush_every`` steps) and at ``close``; ``landscape plot``, ``report`` and ``summary`` read the directory
like any run's.
"""

from __future__ import annotations

import json
import os
from collections.abc import Callable
from pathlib import Path
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np

from landscape.config import CheckpointConfig, ModelConfig, ProbeConfig, RunConfig
from landscape.files import atomic_write_text
from landscape.probe import default_strategy, probe
from landscape.results import METRICS_FILE, PROBE_FILE, RecordWriter
from landscape.rundir import prepare_run_dir
from landscape.step_records import probe_record


class LoopRecorder:
    """Probes and records from a hand-written training loop into a run directory.

    ``etas`` are the absolute step sizes of the probe grid (the paper's: [1/2, 4] x the
    learning rate). ``every`` probes every k-th step it is called with. ``variant`` names the
    records' folder. ``config`` is saved as the run's ``config.json``; by default one that says
    the steps came from a user's loop (``preset="loop"``), whose number of steps is kept up to
    date with the rows written (the summary's phases and the figures' axes follow it).
    ``overwrite`` replaces an existing run directory; otherwise an existing one is refused
    (``rundir.RunError``). Rows stay on the device and reach the files every ``flush_every``
    calls and at ``flush``/``close``, so the loop never waits for the host on a step.
    """

    def __init__(
        self,
        run_dir: str | os.PathLike,
        loss_fn: Callable,
        *,
        etas: Any,
        every: int = 1,
        variant: str = "model",
        config: RunConfig | None = None,
        strategy: str = "auto",
        overwrite: bool = False,
        flush_every: int = 50,
    ) -> None:
        self.run_dir = Path(run_dir)
        self.flush_every = flush_every
        self.etas = jnp.asarray(etas, jnp.float32)
        self.every = every
        self.variant = variant
        strategy = default_strategy(builtin=False) if strategy == "auto" else strategy
        self._counts_steps = config is None
        if config is None:
            config = RunConfig(
                steps=1,  # the least a config holds; the rows written raise it
                preset="loop",
                data="the user's loop",
                variants=(variant,),
                model=ModelConfig(factory="the user's loop"),
                checkpoint=CheckpointConfig(every=0),
                probe=ProbeConfig(etas=tuple(float(e) for e in np.asarray(self.etas)), every=every),
            )
        self.config = prepare_run_dir(self.run_dir, config, resume=False, overwrite=overwrite)
        folder = self.run_dir / variant
        self._probes = RecordWriter(folder / PROBE_FILE)
        self._metrics = RecordWriter(folder / METRICS_FILE)

        def probe_step(params, model_state, batch, grad, loss, etas):
            return probe(
                loss_fn,
                params,
                batch,
                etas,
                model_state=model_state,
                grad=grad,
                loss0=loss,
                strategy=strategy,
            )

        self._probe = jax.jit(probe_step)
        self._gradient = jax.jit(jax.value_and_grad(loss_fn, has_aux=True))
        self._calls = 0
        self._pending_probes: list[dict] = []
        self._pending_metrics: list[dict] = []

    def __call__(
        self,
        step: int,
        params: Any,
        model_state: Any,
        batch: Any,
        *,
        grad: Any = None,
        loss: Any = None,
    ):
        """Probes at ``params`` on ``batch`` (the step's, before its update) for one row of
        ``probe.jsonl``; returns the ``ProbeResult`` (on the device), or None on a step it skips. ``grad`` and
        ``loss`` are the loop's gradient and loss at ``params`` on ``batch`` (computed here when
        not given)."""
        self._calls += 1
        if (self._calls - 1) % self.every:
            return None
        if grad is None or loss is None:
            (loss, _), grad = self._gradient(params, model_state, batch)
        result = self._probe(params, model_state, batch, grad, loss, self.etas)
        self._pending_probes.append({"step": int(step), "etas": self.etas, **result._asdict()})
        if len(self._pending_probes) >= self.flush_every:
            self.flush()
        return result

    def log(self, step: int, **metrics: Any) -> None:
        """Adds one row of ``metrics.jsonl``: ``loss`` and ``accuracy`` (the training batch's,
        before the update), ``test_loss``, ``test_accuracy`` (the names the figures read), or
        any others; values may stay on the device."""
        self._pending_metrics.append({"step": int(step), **metrics})
        if len(self._pending_metrics) >= self.flush_every:
            self.flush()

    def flush(self) -> None:
        """Writes the rows gathered so far, in one transfer from the device."""
        probes, metrics = jax.device_get((self._pending_probes, self._pending_metrics))
        self._pending_probes, self._pending_metrics = [], []
        # A training row or a probe at step n means n + 1 steps; an evaluation at step n (the
        # paper's: after n steps) means n.
        trained = [row["step"] + 1 for row in probes] + [
            row["step"] + (1 if "loss" in row else 0) for row in metrics
        ]
        if self._counts_steps and max(trained, default=0) > self.config.steps:
            self.config = self.config.replace(steps=max(trained))
            atomic_write_text(
                self.run_dir / "config.json", json.dumps(self.config.to_dict(), indent=2) + "\n"
            )
        self._probes.write([probe_record(row) for row in probes])
        self._metrics.write(
            [
                {k: v if k == "step" else float(np.asarray(v)) for k, v in row.items()}
                for row in metrics
            ]
        )

    def close(self) -> None:
        """Writes what is left and closes the record files; the directory is then a run any
        reading command takes."""
        self.flush()
        self._probes.close()
        self._metrics.close()

    def __enter__(self) -> LoopRecorder:
        return self

    def __exit__(self, *exc: Any) -> None:
        self.close()
