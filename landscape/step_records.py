"""What the run loop keeps for each step: the rows it records, the probe's timing and each
variant's timings (``landscape.runs.train_variant`` uses them; ``adopt`` writes the same rows)."""

from __future__ import annotations

import math
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import jax
import numpy as np

from landscape.probe import summarize
from landscape.results import METRICS_FILE, PROBE_FILE, RecordWriter


@dataclass
class VariantReport:
    """Timings of one variant's training in this process, in seconds of wall time."""

    variant: str
    steps_run: int = 0
    probes_run: int = 0
    wall_s: float = 0.0
    # Estimated from a sample of timed probed steps (ProbeTiming); with --fuse, of the whole
    # fused train+probe steps.
    probe_s: float = 0.0
    checkpoint_s: float = 0.0
    compile_s: float = 0.0  # the first step's training call, compilation included
    reused_from: str | None = None  # the run directory this variant was copied from (--reuse)
    diverged: dict[str, Any] | None = None  # results.load_divergence's record, if it diverged

    def timing_line(self) -> str:
        """Returns the one line the command prints for this variant: steps, wall seconds, steps
        per second, the probe's share and the checkpoints' seconds."""
        rate = self.steps_run / self.wall_s if self.wall_s else float("nan")
        share = 100 * self.probe_s / self.wall_s if self.wall_s else 0.0
        return (
            f"{self.variant}: {self.steps_run} steps in {self.wall_s:.1f} s ({rate:.2f} steps/s), "
            f"probe {share:.0f}% of it ({self.probes_run} probed steps), "
            f"checkpoints {self.checkpoint_s:.1f} s"
        )


class ProbeTiming:
    """The probe's time in a run, estimated from a sample of the probed steps.

    Timing a probe means waiting for the device before and after it, and a wait on every step
    would leave the device idle while the host does the step's bookkeeping. So only the first
    probed steps of a call (the very first includes compilation) and then one in ``every`` are
    timed; the others are counted at the mean of the timed ones after the first.
    """

    def __init__(self, first: int = 3, every: int = 25):
        self.first, self.every = first, every
        self.first_s: float | None = None
        self.sampled_s, self.sampled = 0.0, 0

    def samples(self, index: int) -> bool:
        """Returns whether the probed step with this index (0, 1, ... in this call) is timed."""
        return index < self.first or index % self.every == 0

    def add(self, index: int, seconds: float | None) -> None:
        if seconds is None:
            return
        if index == 0:
            self.first_s = seconds
        else:
            self.sampled_s, self.sampled = self.sampled_s + seconds, self.sampled + 1

    def estimate(self, probes: int) -> float:
        """Returns the estimated seconds of ``probes`` probed steps, compilation included."""
        if self.first_s is None:
            return 0.0
        mean = self.sampled_s / self.sampled if self.sampled else 0.0
        return self.first_s + mean * max(probes - 1, 0)


class Recorder:
    """Keeps per-step results on the device and writes them to disk in one transfer at a time.

    ``flush`` is called before each checkpoint, so the records on disk always reach at least
    the newest checkpoint and a resumed run never misses or repeats a row. With
    ``write=False`` (the other processes of a multi-host run) rows are fetched, to watch the
    loss as process 0 does, but not written. ``diverged`` is set by the first flush that finds
    a non-finite training loss. ``on_rows(kind, rows)`` gets each batch of rows written
    ("metrics" or "probe"), for a metric writer such as TensorBoard's.
    """

    def __init__(
        self,
        variant_dir: Path,
        write: bool = True,
        learning_rate: float = 0.0,
        on_rows: Callable[[str, list[dict]], None] | None = None,
    ):
        self.write = write
        self.on_rows = on_rows if write else None
        if write:
            self.metrics = RecordWriter(variant_dir / METRICS_FILE)
            self.probes = RecordWriter(variant_dir / PROBE_FILE)
        self._metrics: list[dict] = []
        self._probes: list[dict] = []
        self.last: dict[str, float] = {}
        self.learning_rate = learning_rate
        self.last_finite: tuple[int, float] | None = None
        self.diverged: dict[str, Any] | None = None

    def add_metrics(self, row: dict) -> None:
        self._metrics.append(row)

    def add_probe(self, row: dict) -> None:
        self._probes.append(row)

    def flush(self) -> None:
        if not (self._metrics or self._probes):
            return
        metrics, probes = jax.device_get((self._metrics, self._probes))
        self._metrics, self._probes = [], []
        rows = [{k: _number(v) for k, v in row.items()} for row in metrics]
        for row in rows:
            self.last.update(row)
            self._watch(row)
        if self.write:
            records = [probe_record(row) for row in probes]
            self.metrics.write(rows)
            self.probes.write(records)
            if self.on_rows is not None:
                self.on_rows("metrics", rows)
                self.on_rows("probe", records)

    def _watch(self, row: dict) -> None:
        if "loss" not in row or self.diverged is not None:
            return
        if math.isfinite(row["loss"]):
            self.last_finite = (row["step"], row["loss"])
            return
        step, loss = self.last_finite or (None, None)
        self.diverged = {
            "step": row["step"],
            "loss": str(row["loss"]),
            "last_finite_step": step,
            "last_finite_loss": loss,
            "learning_rate": self.learning_rate,
        }

    def close(self) -> None:
        self.flush()
        if self.write:
            self.metrics.close()
            self.probes.close()


def _number(value: Any) -> int | float:
    value = np.asarray(value)
    return int(value) if np.issubdtype(value.dtype, np.integer) else float(value)


def probe_row(step: int, etas: jax.Array, result) -> dict:
    return {"step": step, "etas": etas, **result._asdict()}


def probe_record(row: dict) -> dict:
    """Returns a fetched probe row as plain Python values, with its reductions added."""
    plain = {k: (np.asarray(v).tolist() if np.ndim(v) else _number(v)) for k, v in row.items()}
    return {**plain, **summarize(plain)}
