"""Per-step records of a run: append-only JSON Lines, and loaders for notebooks.

Layout of a run directory::

    RUN_DIR/config.json           the full RunConfig
    RUN_DIR/provenance.json       versions, device, dataset and its checksum
    RUN_DIR/<variant>/metrics.jsonl   one row per training step (+ rows with test metrics)
    RUN_DIR/<variant>/probe.jsonl     one row per probed step: per-eta arrays and reductions
    RUN_DIR/<variant>/checkpoints/    checkpoints, <step>/state.npz

Rows are appended as they are produced, flushed before each checkpoint, so a killed run keeps
every row up to its last checkpoint. Non-finite numbers are written as ``NaN``/``Infinity``
(Python's JSON dialect, which pandas and ``json.loads`` read back).

Damage is never silent (docs/robustness.md): a torn last line, left by a crash mid-append, is
cut off before the next append so no row is glued onto it; a damaged line elsewhere is reported
with its file and line number whenever it is read, and kept in the file.
"""

from __future__ import annotations

import json
import os
import warnings
from collections.abc import Callable, Iterable
from pathlib import Path
from typing import Any

import numpy as np

from landscape.files import atomic_open


class DamagedRecordWarning(UserWarning):
    """A record file had a damaged line (kept, left out of what is read) or a torn last line
    (cut off before the next append)."""


LOCK_FILE = ".lock"  # a run directory's advisory lock (landscape.rundir.run_dir_lock)
DIVERGED_FILE = "diverged.json"  # a variant whose training loss became non-finite
METRICS_FILE = "metrics.jsonl"
PROBE_FILE = "probe.jsonl"
PER_ETA_FIELDS = ("etas", "loss", "grad_dist", "step_norm")


class RecordWriter:
    """Appends JSON rows to a file; each ``write`` reaches the OS before it returns."""

    def __init__(self, path: str | os.PathLike):
        self.path = Path(path)
        self.path.parent.mkdir(parents=True, exist_ok=True)
        repair_tail(self.path)
        self._file = open(self.path, "a", encoding="utf-8")  # noqa: SIM115 (closed in close())

    def write(self, rows: Iterable[dict[str, Any]]) -> None:
        lines = "".join(json.dumps(_plain(row)) + "\n" for row in rows)
        if lines:
            self._file.write(lines)
            self._file.flush()

    def close(self) -> None:
        self._file.close()

    def __enter__(self) -> RecordWriter:
        return self

    def __exit__(self, *exc) -> None:
        self.close()


def _plain(value: Any) -> Any:
    """Converts numpy/jax scalars and arrays to JSON-serialisable Python values."""
    if isinstance(value, dict):
        return {k: _plain(v) for k, v in value.items()}
    if isinstance(value, list | tuple):
        return [_plain(v) for v in value]
    if hasattr(value, "tolist"):
        return value.tolist()
    return value


def _parse(line: bytes) -> dict[str, Any] | None:
    """Returns the row a line holds, or None when it is not a JSON object."""
    try:
        row = json.loads(line.decode("utf-8"))
    except (json.JSONDecodeError, UnicodeDecodeError):
        return None
    return row if isinstance(row, dict) else None


def _scan(path: Path) -> tuple[list[tuple[int, bytes, dict[str, Any] | None]], bytes]:
    """Returns a JSON Lines file's complete lines as (line number from 1, bytes, row or None
    when damaged), blank lines left out, and its unterminated last line (b"" if none)."""
    body, _, tail = path.read_bytes().rpartition(b"\n")
    lines = [
        (number, line, _parse(line))
        for number, line in enumerate(body.split(b"\n"), 1)
        if line and not line.isspace()
    ]
    return lines, tail


# A command reads a file several times (summary, figures, report): each damaged line is reported
# once per process, by file, line number and content.
_reported: set[tuple[str, int, bytes]] = set()


def _report_damaged(path: Path, lines: list[tuple[int, bytes, dict[str, Any] | None]]) -> None:
    for number, line, _ in (entry for entry in lines if entry[2] is None):
        key = (str(path.absolute()), number, line)
        if key in _reported:
            continue
        _reported.add(key)
        warnings.warn(
            f"{path} line {number} is damaged (not a JSON record); it is left out here and kept "
            "in the file: repair or delete that line",
            DamagedRecordWarning,
            stacklevel=3,
        )


def read_rows(path: str | os.PathLike) -> list[dict[str, Any]]:
    """Returns the rows of a JSON Lines file ([] when it does not exist).

    A damaged line is left out with a warning naming the file and line number; it stays in the
    file. An unterminated last line is a write in progress or one a crash cut short: it is not a
    row yet (unless only its newline is missing), and the next ``RecordWriter`` repairs it.
    """
    path = Path(path)
    if not path.exists():
        return []
    lines, tail = _scan(path)
    _report_damaged(path, lines)
    rows = [row for _, _, row in lines if row is not None]
    last = _parse(tail) if tail.strip() else None
    return rows if last is None else [*rows, last]


def _warn_torn(path: Path, size: int) -> None:
    warnings.warn(
        f"{path}: cut off a torn last line ({size} bytes that an interrupted write left)",
        DamagedRecordWarning,
        stacklevel=3,
    )


def repair_tail(path: str | os.PathLike) -> None:
    """Makes a JSON Lines file end with a complete line, so an append starts a line of its own.

    A torn last line (an append cut short by a crash) is cut off, with a warning naming the file;
    a last row that lacks only its newline gets it. A missing or empty file is left alone.
    """
    path = Path(path)
    try:
        f = open(path, "r+b")  # noqa: SIM115 (closed by the with below)
    except FileNotFoundError:
        return
    with f:
        end = f.seek(0, os.SEEK_END)
        if end == 0:
            return
        f.seek(end - 1)
        if f.read(1) == b"\n":
            return
        start = end  # of the last line: search backwards, a block at a time, for its newline
        while start > 0:
            block = max(0, start - (1 << 16))
            f.seek(block)
            found = f.read(start - block).rfind(b"\n")
            start = block if found < 0 else block + found + 1
            if found >= 0:
                break
        f.seek(start)
        if _parse(f.read()) is not None:
            f.write(b"\n")
            return
        f.truncate(start)
    _warn_torn(path, end - start)


def truncate_rows(path: str | os.PathLike, keep: Callable[[dict[str, Any]], bool]) -> int:
    """Rewrites a JSON Lines file atomically with only the rows ``keep`` accepts.

    Used on resume: rows past the checkpoint a run restarts from are dropped, so the rerun
    steps are not recorded twice. Kept rows are written back byte for byte. A damaged line is
    never deleted: it is reported and written back where it was, since its step is unknown. A
    torn last line is cut off as ``repair_tail`` does. Returns the number of rows kept.
    """
    path = Path(path)
    if not path.exists():
        return 0
    lines, tail = _scan(path)
    _report_damaged(path, lines)
    last = _parse(tail) if tail.strip() else None
    if last is not None:
        lines.append((len(lines) + 1, tail, last))
    elif tail.strip():
        _warn_torn(path, len(tail))
    kept = [(line, row) for _, line, row in lines if row is None or keep(row)]
    with atomic_open(path, "wb") as f:
        f.writelines(line + b"\n" for line, _ in kept)
    return sum(row is not None for _, row in kept)


def variants(run_dir: str | os.PathLike) -> list[str]:
    """Returns the variants recorded in a run directory, in the order of its config."""
    run_dir = Path(run_dir)
    config_path = run_dir / "config.json"
    if config_path.exists():
        listed = json.loads(config_path.read_text()).get("variants", [])
        found = [v for v in listed if (run_dir / v).is_dir()]
        if found:
            return found
    return sorted(p.name for p in run_dir.iterdir() if (p / METRICS_FILE).exists())


def _dedupe_by_step(rows: list[dict[str, Any]]) -> list[dict[str, Any]]:
    # The last row for a step wins; a resumed run rewrites none, but stay safe for old files.
    by_step = {row["step"]: row for row in rows}
    return [by_step[s] for s in sorted(by_step)]


def _stack(rows: list[dict[str, Any]]) -> dict[str, np.ndarray]:
    if not rows:
        return {}
    keys = list(dict.fromkeys(k for row in rows for k in row))
    out = {}
    for key in keys:
        values = [row.get(key) for row in rows]
        if key in PER_ETA_FIELDS:
            out[key] = np.asarray(values, dtype=np.float64)
        elif all(isinstance(v, int | float) or v is None for v in values):
            out[key] = np.asarray([np.nan if v is None else v for v in values], dtype=np.float64)
            if key in ("step", "diverged"):
                out[key] = out[key].astype(np.int64)
        else:
            out[key] = np.asarray(values, dtype=object)
    return out


def load(run_dir: str | os.PathLike) -> dict[str, dict[str, np.ndarray]]:
    """Loads the probe records of a run.

    Returns ``{variant: {field: array}}``, rows sorted by step: ``step`` (S,), per-eta fields
    ``etas``, ``loss``, ``grad_dist``, ``step_norm`` of shape (S, K), and the per-step reductions
    ``loss0``, ``grad_norm``, ``loss_min``, ``loss_max``, ``loss_band``, ``grad_dist_min``,
    ``grad_dist_max``, ``beta``, ``diverged`` of shape (S,). For a pandas table use ``table``.
    """
    out = {}
    for variant in variants(run_dir):
        rows = _dedupe_by_step(read_rows(Path(run_dir) / variant / PROBE_FILE))
        if rows:
            out[variant] = _stack(rows)
    return out


def load_metrics(run_dir: str | os.PathLike) -> dict[str, dict[str, dict[str, np.ndarray]]]:
    """Loads the training metrics of a run.

    Returns ``{variant: {"train": {...}, "test": {...}}}``: ``train`` has ``step``, ``loss``
    (cross-entropy, nats) and ``accuracy`` (fraction) per step; ``test`` has ``step``,
    ``test_loss`` and ``test_accuracy`` at each evaluation.
    """
    out = {}
    for variant in variants(run_dir):
        rows = read_rows(Path(run_dir) / variant / METRICS_FILE)
        train = _dedupe_by_step([r for r in rows if "loss" in r])
        test = _dedupe_by_step([r for r in rows if "test_accuracy" in r])
        out[variant] = {"train": _stack(train), "test": _stack(test)}
    return out


def table(run_dir: str | os.PathLike) -> list[dict[str, Any]]:
    """Returns the probe records as flat rows (one per variant, step and eta).

    ``pandas.DataFrame(landscape.results.table(run_dir))`` gives a long-format table with
    columns variant, step, eta, loss, grad_dist, step_norm and the per-step reductions.
    """
    flat = []
    for variant in variants(run_dir):
        for row in _dedupe_by_step(read_rows(Path(run_dir) / variant / PROBE_FILE)):
            scalars = {k: v for k, v in row.items() if k not in PER_ETA_FIELDS}
            for i, eta in enumerate(row["etas"]):
                flat.append(
                    {
                        "variant": variant,
                        **scalars,
                        "eta": eta,
                        "loss": row["loss"][i],
                        "grad_dist": row["grad_dist"][i],
                        "step_norm": row["step_norm"][i],
                    }
                )
    return flat


# --- per-layer records: internal covariate shift, activation distributions -------------------

ICS_FILE = "ics.jsonl"
ACTIVATIONS_FILE = "activations.jsonl"
# The per-layer fields of each file: lists with one entry per measured layer.
ICS_FIELDS = ("dist", "cosine", "grad_norm", "shifted_grad_norm")
ACTIVATION_FIELDS = (
    *("percentiles", "mean", "var", "unit_percentiles", "unit_mean", "unit_var"),
    *("d_mean", "d_var", "d_unit_mean", "d_unit_var"),
)


def load_layer_records(
    run_dir: str | os.PathLike, name: str, fields: Iterable[str]
) -> dict[str, dict[int, dict[str, Any]]]:
    """Loads a per-layer record file of every variant: ``{variant: {layer: {field: array}}}``.

    Rows hold ``step``, ``layer`` (1-based layer numbers), ``layer_name`` and, for each of
    ``fields``, one value per layer. Per layer: ``step`` (S,) sorted, each field as a float array
    (S,) or (S, P) (NaN where a row lacks it), ``name``, and the other keys of the newest row
    (e.g. ``bn_mode``). The last row for a step wins, so a rerun that adds layers only adds.
    """
    fields = tuple(fields)
    out: dict[str, dict[int, dict[str, Any]]] = {}
    for variant in variants(run_dir):
        per_layer: dict[int, dict[int, dict[str, Any]]] = {}
        meta: dict[int, dict[str, Any]] = {}
        for row in read_rows(Path(run_dir) / variant / name):
            other = {k: v for k, v in row.items() if k not in (*fields, "step", "layer")}
            for j, layer in enumerate(row.get("layer", ())):
                values = {k: row[k][j] if k in row else np.nan for k in fields}
                per_layer.setdefault(layer, {})[row["step"]] = values
                meta[layer] = {**other, "name": row.get("layer_name", [str(layer)] * (j + 1))[j]}
                meta[layer].pop("layer_name", None)
        if not per_layer:
            continue
        out[variant] = {}
        for layer in sorted(per_layer):
            by_step = per_layer[layer]
            steps = sorted(by_step)
            data = {}
            for key in fields:
                values = [by_step[s][key] for s in steps]
                width = max((len(v) for v in values if isinstance(v, list)), default=0)
                if width:
                    values = [v if isinstance(v, list) else [np.nan] * width for v in values]
                data[key] = np.asarray(values, dtype=np.float64)
            out[variant][layer] = {"step": np.asarray(steps, dtype=np.int64), **meta[layer], **data}
    return out


def load_ics(run_dir: str | os.PathLike) -> dict[str, dict[int, dict[str, Any]]]:
    """Loads ``ics.jsonl`` (``landscape ics``): per variant and layer number, over steps,
    ``dist`` = ||G - G'||, ``cosine`` = cos(G, G'), ``grad_norm``, ``shifted_grad_norm``, and
    ``relative`` = ||G - G'|| / ||G||: the shift in units of the gradient's own size, which
    compares networks whose gradients differ in scale (BatchNorm's and the standard one's)."""
    records = load_layer_records(run_dir, ICS_FILE, ICS_FIELDS)
    for layers in records.values():
        for r in layers.values():
            with np.errstate(divide="ignore", invalid="ignore"):
                r["relative"] = np.asarray(r["dist"], float) / np.asarray(r["grad_norm"], float)
    return records


def load_activations(run_dir: str | os.PathLike) -> dict[str, dict[int, dict[str, Any]]]:
    """Loads ``activations.jsonl`` (``landscape activations``): per variant and conv number, over
    steps, ``percentiles`` (S, P) at levels ``q``, ``mean``, ``var``, the same for one ``unit``,
    and the consecutive-step changes ``d_mean``, ``d_var``, ``d_unit_mean``, ``d_unit_var``."""
    return load_layer_records(run_dir, ACTIVATIONS_FILE, ACTIVATION_FIELDS)


HESSIAN_FILE = "hessian.jsonl"  # written by landscape.analyses.hessian.sharpness_over_training


def load_hessian(
    run_dir: str | os.PathLike, *, mode: str | None = None, block: str = "all"
) -> dict[str, dict[str, np.ndarray]]:
    """Loads the curvature records of a run (``RUN_DIR/<variant>/hessian.jsonl``).

    Keeps one ``block`` (default: all parameters) and one ``mode``: the given one, else "train"
    where the variant has it. With several batch counts for a step, the last record wins.
    Returns ``{variant: {field: array}}`` sorted by step: numbers as float arrays (``step``
    int) of shape (S,): ``lambda_max``, ``trace``, ``trace_stderr``, ``hg_ratio``,
    ``beta_small``, ``beta``, ``eos`` (2 / lr), ``seconds``...; ``top_eigenvalues`` (S, k);
    strings and lists (``mode``, ``ritz_values``, density) as object arrays.
    """
    out = {}
    for variant in variants(run_dir):
        rows = [
            r
            for r in read_rows(Path(run_dir) / variant / HESSIAN_FILE)
            if r.get("block", "all") == block
        ]
        modes = [r.get("mode") for r in rows]
        chosen = mode or ("train" if "train" in modes else (modes[0] if modes else None))
        rows = _dedupe_by_step([r for r in rows if r.get("mode") == chosen])
        if not rows:
            continue
        stacked = _stack(rows)
        tops = [r.get("top_eigenvalues") or [] for r in rows]
        width = max(len(t) for t in tops)
        stacked["top_eigenvalues"] = np.asarray(
            [list(t) + [np.nan] * (width - len(t)) for t in tops], dtype=np.float64
        )
        out[variant] = stacked
    return out


def load_divergence(run_dir: str | os.PathLike) -> dict[str, dict[str, Any]]:
    """Returns ``{variant: record}`` for the variants whose training diverged.

    A record has ``step`` (the first step with a non-finite training loss), ``loss`` (its
    value as text: "nan", "inf"), ``last_finite_step`` and ``last_finite_loss`` (None when no
    step was finite), ``learning_rate`` and ``stopped`` (False when training went on,
    ``--keep-going``).
    """
    out = {}
    for variant in variants(run_dir):
        path = Path(run_dir) / variant / DIVERGED_FILE
        if path.exists():
            try:
                out[variant] = json.loads(path.read_text())
            except ValueError:
                out[variant] = {"step": None, "damaged": str(path)}
    return out


def divergence_line(variant: str, record: dict[str, Any]) -> str:
    """Returns the one line that says where and how ``variant`` diverged."""
    last = record.get("last_finite_loss")
    before = (
        f"last finite loss {last:.4g} at step {record['last_finite_step']}"
        if last is not None
        else "no finite loss before it"
    )
    then = "training stopped there" if record.get("stopped", True) else "training went on"
    return (
        f"{variant} diverged at step {record.get('step')}: training loss {record.get('loss')} "
        f"({before}, learning rate {record.get('learning_rate')}); {then}"
    )
