"""Records of loss-landscape pictures: resumable JSON Lines, and loaders (numpy only, no JAX).

A picture of one variant is one file, ``RUN_DIR/<variant>/surfaces/<name>.jsonl``:

* the first row is the header: ``{"header": true, "kind": "surface" | "interpolation",
  "settings": {...}, "axes": [[lo, hi, n], ...], "num_points": P, "info": {...}}``. ``settings``
  is everything that decides the numbers (step, directions and their seed, mode, batches...);
  ``info`` holds what was derived from them (direction norms, the gradient norm, the loss mode
  in words);
* every further row is one evaluated chunk of grid points: ``{"points": [flat indices],
  "loss": [...], "accuracy": [...]}`` (accuracy only when asked for), appended as soon as the
  chunk is done, so an interrupted evaluation keeps every finished chunk.

A grid of axes ``[[lo_a, hi_a, n_a], [lo_b, hi_b, n_b]]`` has ``n_a * n_b`` points; point ``p``
sits at ``(a[p // n_b], b[p % n_b])`` (row-major, ``indexing="ij"``). This module is imported by
``landscape.plots`` and must not import JAX.
"""

from __future__ import annotations

import json
import os
from pathlib import Path
from typing import Any

import numpy as np

from landscape.results import RecordWriter, read_rows
from landscape.results import variants as run_variants

SURFACES_DIR = "surfaces"


class SurfaceError(Exception):
    """A user-facing problem with a picture (the CLI prints the one-line message, exits 2)."""


def axis_values(axis: tuple[float, float, int] | list) -> np.ndarray:
    """Returns the ``n`` evenly spaced values from ``lo`` to ``hi`` of an axis ``(lo, hi, n)``."""
    lo, hi, n = float(axis[0]), float(axis[1]), int(axis[2])
    return np.linspace(lo, hi, n) if n > 1 else np.asarray([lo])


def grid_coords(axes: list) -> np.ndarray:
    """Returns the (P, D) coordinates of every grid point, row-major over the D axes (float64)."""
    values = [axis_values(axis) for axis in axes]
    mesh = np.meshgrid(*values, indexing="ij")
    return np.stack([m.reshape(-1) for m in mesh], axis=-1)


def record_path(run_dir: str | os.PathLike, variant: str, name: str) -> Path:
    """Returns ``RUN_DIR/<variant>/surfaces/<name>.jsonl``."""
    return Path(run_dir) / variant / SURFACES_DIR / f"{name}.jsonl"


def _canonical(value: Any) -> Any:
    # A JSON round trip makes tuples lists and numpy scalars plain, so settings compare equal
    # whether they come from the caller or from the file.
    return json.loads(json.dumps(value))


def open_record(path: Path, header: dict[str, Any], *, overwrite: bool = False) -> set[int]:
    """Prepares the record at ``path`` for ``header`` and returns the points already evaluated.

    A new file gets the header. An existing one with the same ``kind``, ``settings`` and ``axes``
    is resumed: the indices of the points it holds are returned and only the others need work.
    One made with other settings is refused (SurfaceError) unless ``overwrite``, which starts it
    again.
    """
    header = _canonical({"header": True, **header})
    rows = read_rows(path)
    if rows and not overwrite:
        old = rows[0]
        if not old.get("header"):
            raise SurfaceError(f"{path} is not a landscape surface record; pass --overwrite")
        keys = ("kind", "settings", "axes")
        if any(old.get(k) != header.get(k) for k in keys):
            diff = _differences(old, header)
            raise SurfaceError(
                f"{path} was made with other settings ({diff}); pass --overwrite to replace it "
                "or --name to keep both"
            )
        done: set[int] = set()
        for row in rows[1:]:
            done.update(int(p) for p in row.get("points", ()))
        return done
    path.parent.mkdir(parents=True, exist_ok=True)
    path.unlink(missing_ok=True)
    with RecordWriter(path) as writer:
        writer.write([header])
    return set()


def _differences(old: dict[str, Any], new: dict[str, Any]) -> str:
    flat_old = {"kind": old.get("kind"), "axes": old.get("axes"), **(old.get("settings") or {})}
    flat_new = {"kind": new.get("kind"), "axes": new.get("axes"), **(new.get("settings") or {})}
    keys = [k for k in dict.fromkeys([*flat_old, *flat_new]) if flat_old.get(k) != flat_new.get(k)]
    return ", ".join(f"{k} {flat_old.get(k)!r} -> {flat_new.get(k)!r}" for k in keys[:3])


def load_record(path: str | os.PathLike) -> dict[str, Any]:
    """Loads one picture record.

    Returns ``{"header", "axes": [values per axis], "loss", "accuracy"}`` where ``loss`` (and
    ``accuracy`` if recorded) have the grid's shape, ``(n_a,)`` or ``(n_a, n_b)``, with NaN at
    points not evaluated yet; ``done`` counts the evaluated points. Loss in nats, accuracy as a
    fraction. Raises SurfaceError for a file without a header.
    """
    rows = read_rows(path)
    if not rows or not rows[0].get("header"):
        raise SurfaceError(f"{path} is not a landscape surface record")
    header = rows[0]
    shape = tuple(int(axis[2]) for axis in header["axes"])
    size = int(np.prod(shape))
    loss = np.full(size, np.nan)
    accuracy = np.full(size, np.nan)
    done = np.zeros(size, bool)
    for row in rows[1:]:
        points = np.asarray(row.get("points", ()), dtype=np.int64)
        loss[points] = np.asarray(row["loss"], dtype=np.float64)
        if "accuracy" in row:
            accuracy[points] = np.asarray(row["accuracy"], dtype=np.float64)
        done[points] = True
    out = {
        "header": header,
        "axes": [axis_values(axis) for axis in header["axes"]],
        "loss": loss.reshape(shape),
        "done": int(done.sum()),
    }
    if header.get("settings", {}).get("accuracy"):
        out["accuracy"] = accuracy.reshape(shape)
    return out


def load_surfaces(run_dir: str | os.PathLike) -> dict[str, dict[str, dict[str, Any]]]:
    """Loads every picture record of a run: ``{name: {variant: record}}`` (see ``load_record``).

    Variants come in the order of the run's config; files that are not records are skipped.
    """
    run_dir = Path(run_dir)
    if not run_dir.is_dir():
        return {}
    out: dict[str, dict[str, dict[str, Any]]] = {}
    for variant in run_variants(run_dir):
        folder = run_dir / variant / SURFACES_DIR
        for path in sorted(folder.glob("*.jsonl")) if folder.is_dir() else ():
            try:
                record = load_record(path)
            except SurfaceError:
                continue
            out.setdefault(path.stem, {})[variant] = record
    return out
