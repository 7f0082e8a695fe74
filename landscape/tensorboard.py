"""A run's records as TensorBoard event files (the ``tensorboard`` extra: ``tensorboardX``).

TensorBoard shows each sub-folder of its log directory as one run, so each variant gets its own
(``LOG_DIR/standard``, ``LOG_DIR/batchnorm``) and the figures theirs (``LOG_DIR/figures``):
the variants' curves overlay in every chart. The tags:

- ``train/loss``, ``train/accuracy`` per training step; ``test/loss``, ``test/accuracy`` at each
  evaluation;
- ``probe/loss_band``, ``probe/grad_predictiveness`` (the largest gradient distance over the
  step sizes), ``probe/beta`` (effective beta-smoothness) and ``probe/diverged_etas`` at each
  probed step (docs/definitions.md#the-landscape-probe);
- ``curvature/lambda_max``, ``curvature/trace`` (``landscape hessian``);
- ``ics/<layer>/dist``, ``ics/<layer>/cosine`` (``landscape ics``);
- the figures as images.

Values are written as recorded: a diverged step is NaN or inf there too. Each kind of record goes
to its own event file (suffix ``.metrics``, ``.probe``, ``.ics``...), and writing a kind again
replaces that file, so exporting twice, or logging a resumed run, never doubles a curve.
"""

from __future__ import annotations

import logging
import os
import struct
from collections.abc import Iterable, Sequence
from pathlib import Path
from typing import Any

import matplotlib.image
import numpy as np
from tensorboardX import SummaryWriter
from tensorboardX.proto.event_pb2 import Event

from landscape.results import (
    HESSIAN_FILE,
    ICS_FILE,
    METRICS_FILE,
    PROBE_FILE,
    read_rows,
    variants,
)

LOG_DIR = "tensorboard"  # default: RUN_DIR/tensorboard
# tensorboardX warns for every non-finite scalar; a diverged step is recorded as such on purpose.
_QUIET_NAN = logging.getLogger("tensorboardX.x2num")
KINDS = ("metrics", "probe", "ics", "hessian")
FIGURES_RUN = "figures"
_TRAIN = {"loss": "train/loss", "accuracy": "train/accuracy"}
_TEST = {"test_loss": "test/loss", "test_accuracy": "test/accuracy"}
_PROBE = {
    "loss_band": "probe/loss_band",
    "grad_dist_max": "probe/grad_predictiveness",
    "beta": "probe/beta",
    "diverged": "probe/diverged_etas",
}
_HESSIAN = {"lambda_max": "curvature/lambda_max", "trace": "curvature/trace"}
_FILES = {"metrics": METRICS_FILE, "probe": PROBE_FILE, "ics": ICS_FILE, "hessian": HESSIAN_FILE}


def default_log_dir(run_dir: str | os.PathLike) -> Path:
    """Returns ``RUN_DIR/tensorboard``."""
    return Path(run_dir) / LOG_DIR


def _number(value: Any) -> float | None:
    if isinstance(value, bool) or not isinstance(value, int | float):
        return None
    return float(value)


def scalars(kind: str, row: dict[str, Any]) -> list[tuple[str, float]]:
    """Returns the ``(tag, value)`` pairs of one record row of ``kind`` (see the module)."""
    out: list[tuple[str, float]] = []
    if kind == "metrics":
        tags = {**_TRAIN, **_TEST}
    elif kind == "probe":
        tags = _PROBE
    elif kind == "hessian":
        tags = _HESSIAN if row.get("block", "all") == "all" else {}
    elif kind == "ics":
        for j, layer in enumerate(row.get("layer", ())):
            for field in ("dist", "cosine"):
                if field in row and _number(row[field][j]) is not None:
                    out.append((f"ics/{layer:02d}/{field}", float(row[field][j])))
        return out
    else:
        raise ValueError(f"unknown kind of record {kind!r}; choose one of {', '.join(KINDS)}")
    for key, tag in tags.items():
        value = _number(row.get(key))
        if value is not None:
            out.append((tag, value))
    return out


def _clear(folder: Path, kind: str) -> None:
    """Removes the event files this module wrote for ``kind`` in ``folder``."""
    for path in folder.glob(f"events.out.tfevents.*.{kind}"):
        path.unlink()


class TensorBoardWriter:
    """Writes record rows to ``log_dir/<variant>`` as a run produces them.

    One event file per (variant, kind), opened on the first rows: an earlier file of that kind
    (a previous export, or the run before a resume) is replaced by the rows written now, and
    ``purge_step`` tells TensorBoard to drop what an interrupted earlier session logged past the
    first step written now. ``close`` flushes everything to disk.
    """

    def __init__(self, log_dir: str | os.PathLike):
        self.log_dir = Path(log_dir)
        self._writers: dict[tuple[str, str], SummaryWriter] = {}

    def _writer(self, run: str, kind: str, first_step: int | None) -> SummaryWriter:
        key = (run, kind)
        if key not in self._writers:
            folder = self.log_dir / run
            folder.mkdir(parents=True, exist_ok=True)
            _clear(folder, kind)
            self._writers[key] = SummaryWriter(
                str(folder), filename_suffix=f".{kind}", purge_step=first_step, flush_secs=30
            )
        return self._writers[key]

    def rows(self, variant: str, kind: str, rows: Sequence[dict[str, Any]]) -> None:
        """Writes ``rows`` of record ``kind`` (``KINDS``) for ``variant`` at their steps."""
        pairs = [(int(row["step"]), scalars(kind, row)) for row in rows if "step" in row]
        pairs = [(step, values) for step, values in pairs if values]
        if not pairs:
            return
        writer = self._writer(variant, kind, pairs[0][0])
        level = _QUIET_NAN.level
        _QUIET_NAN.setLevel(logging.ERROR)
        try:
            for step, values in pairs:
                for tag, value in values:
                    writer.add_scalar(tag, value, global_step=step)
        finally:
            _QUIET_NAN.setLevel(level)

    def figures(self, paths: Iterable[str | os.PathLike], step: int = 0) -> int:
        """Writes the PNG figures at ``paths`` as images (tag: the file's stem); returns how
        many."""
        pngs = [Path(p) for p in paths if Path(p).suffix == ".png"]
        if not pngs:
            return 0
        writer = self._writer(FIGURES_RUN, "figures", None)
        for path in pngs:
            image = np.asarray(matplotlib.image.imread(path))[..., :3]  # RGB: drop alpha
            writer.add_image(path.stem, image, global_step=step, dataformats="HWC")
        return len(pngs)

    def close(self) -> None:
        for writer in self._writers.values():
            writer.close()
        self._writers.clear()

    def __enter__(self) -> TensorBoardWriter:
        return self

    def __exit__(self, *exc) -> None:
        self.close()


def export_run(
    run_dir: str | os.PathLike,
    log_dir: str | os.PathLike | None = None,
    *,
    kinds: Sequence[str] = KINDS,
    figures: bool = True,
) -> Path:
    """Writes the records of ``run_dir`` (every variant, each of ``kinds``) and, with
    ``figures``, its ``figures/*.png`` as TensorBoard event files; returns the log directory
    (default ``RUN_DIR/tensorboard``). Running it again replaces what it wrote."""
    run_dir = Path(run_dir)
    log_dir = Path(log_dir) if log_dir is not None else default_log_dir(run_dir)
    unknown = [k for k in kinds if k not in KINDS]
    if unknown:
        raise ValueError(f"unknown kind of record {unknown[0]!r}; choose from {', '.join(KINDS)}")
    with TensorBoardWriter(log_dir) as writer:
        for variant in variants(run_dir):
            for kind in kinds:
                rows = read_rows(run_dir / variant / _FILES[kind])
                if rows:
                    writer.rows(variant, kind, rows)
        if figures:
            writer.figures(sorted((run_dir / "figures").glob("*.png")))
    return log_dir


def read_scalars(folder: str | os.PathLike) -> dict[str, list[tuple[int, float]]]:
    """Returns ``{tag: [(step, value), ...]}`` of the scalars in the event files of ``folder``
    (one TensorBoard run), in the order written: a check of what TensorBoard will show, and a way
    to load the curves in a notebook without TensorBoard."""
    out: dict[str, list[tuple[int, float]]] = {}
    for path in sorted(Path(folder).glob("events.out.tfevents.*")):
        data = path.read_bytes()
        at = 0
        while at + 12 <= len(data):  # TFRecord: length, its CRC, the record, the record's CRC
            (length,) = struct.unpack_from("<Q", data, at)
            event = Event.FromString(data[at + 12 : at + 12 + length])
            at += 12 + length + 4
            for value in event.summary.value:
                if value.HasField("simple_value"):
                    out.setdefault(value.tag, []).append((int(event.step), value.simple_value))
    return out
