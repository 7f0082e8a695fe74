"""Data the user brings: arrays in an ``.npz`` file, or a Python factory
(``package.module:function`` or a registered name) returning arrays (docs/own-models.md).

Both give the four arrays ``x_train, y_train, x_test, y_test``. Inputs are uint8 images (scaled
to [0, 1] on the device) or floats (used as they are); integer targets are classes, float targets
make a regression task. Everything is checked before a run starts, and each problem is one line:
a missing array, lengths that differ, labels out of range, an empty split.
"""

from __future__ import annotations

from collections.abc import Mapping
from pathlib import Path
from typing import Any, NamedTuple

import numpy as np

from landscape.plugins import DATA_GROUP, PluginError, call_factory, load_object

ARRAY_NAMES = ("x_train", "y_train", "x_test", "y_test")


class UserDataError(ValueError):
    """Data that cannot be used as it is, said in one line."""


class Arrays(NamedTuple):
    """A user's data set, checked: inputs, targets and (classification) the class names."""

    x_train: np.ndarray
    y_train: np.ndarray
    x_test: np.ndarray
    y_test: np.ndarray
    classes: tuple[str, ...]  # () for a regression task
    task: str  # "classification" or "regression"


def read_npz(path: str | Path) -> Arrays:
    """Returns the checked arrays of an ``.npz`` file holding ``x_train, y_train, x_test,
    y_test`` (and optionally ``classes``, the class names)."""
    path = Path(path)
    try:
        with np.load(path, allow_pickle=False) as archive:
            found = {name: archive[name] for name in archive.files}
    except (OSError, ValueError) as err:
        raise UserDataError(f"{path} is not a readable .npz file ({err})") from None
    return check_arrays(found, str(path))


def from_factory(spec: str, arguments: Mapping[str, Any] | None = None) -> Arrays:
    """Returns the checked arrays a data factory returns: a mapping with the four arrays (and
    optionally ``classes``), or an object with them as attributes."""
    try:
        factory = load_object(spec, DATA_GROUP)
        value = call_factory(factory, spec, dict(arguments or {}))
    except PluginError as err:
        raise UserDataError(f"data factory {err}") from None
    if not isinstance(value, Mapping):
        value = {n: getattr(value, n) for n in (*ARRAY_NAMES, "classes") if hasattr(value, n)}
    return check_arrays(value, spec)


def check_arrays(found: Mapping[str, Any], where: str) -> Arrays:
    """Returns ``found`` as checked ``Arrays``; raises UserDataError naming what is wrong."""
    missing = [n for n in ARRAY_NAMES if n not in found]
    if missing:
        raise UserDataError(f"{where} lacks {', '.join(missing)} (needs {', '.join(ARRAY_NAMES)})")
    try:
        x_train, y_train, x_test, y_test = (np.asarray(found[n]) for n in ARRAY_NAMES)
    except (ValueError, TypeError) as err:
        raise UserDataError(f"{where}: the arrays cannot be read as arrays ({err})") from None
    for split, x, y in (("train", x_train, y_train), ("test", x_test, y_test)):
        if x.ndim < 2 or x.shape[0] == 0:
            raise UserDataError(
                f"{where}: x_{split} must hold at least one example, shape (N, ...)"
            )
        if y.shape[:1] != x.shape[:1]:
            raise UserDataError(
                f"{where}: x_{split} has {x.shape[0]} examples but y_{split} {y.shape[0] if y.ndim else 0}"
            )
        if not (x.dtype == np.uint8 or np.issubdtype(x.dtype, np.floating)):
            raise UserDataError(f"{where}: x_{split} must be uint8 or float, not {x.dtype}")
        if np.issubdtype(x.dtype, np.floating) and not np.isfinite(x).all():
            raise UserDataError(f"{where}: x_{split} holds NaN or inf")
    if x_train.shape[1:] != x_test.shape[1:]:
        raise UserDataError(
            f"{where}: x_train examples have shape {x_train.shape[1:]}, x_test {x_test.shape[1:]}"
        )
    if np.issubdtype(y_train.dtype, np.integer) != np.issubdtype(y_test.dtype, np.integer):
        raise UserDataError(f"{where}: y_train and y_test must both be class labels or both floats")
    if np.issubdtype(y_train.dtype, np.integer):
        return _classification(found, where, x_train, y_train, x_test, y_test)
    if not np.issubdtype(y_train.dtype, np.floating):
        raise UserDataError(
            f"{where}: y must be integer classes or float targets, not {y_train.dtype}"
        )
    y_train, y_test = (y.reshape(y.shape[0], -1).astype(np.float32) for y in (y_train, y_test))
    if not (np.isfinite(y_train).all() and np.isfinite(y_test).all()):
        raise UserDataError(f"{where}: the float targets hold NaN or inf")
    return Arrays(x_train, y_train, x_test, y_test, (), "regression")


def _classification(found, where, x_train, y_train, x_test, y_test) -> Arrays:
    if y_train.ndim != 1 or y_test.ndim != 1:
        raise UserDataError(f"{where}: class labels must be one integer per example, shape (N,)")
    if "classes" in found:
        names = np.asarray(found["classes"])
        if names.ndim != 1:
            raise UserDataError(f"{where}: classes must be a list of names, shape (num_classes,)")
        classes = tuple(str(c) for c in names.tolist())
    else:
        classes = tuple(str(c) for c in range(int(max(y_train.max(), y_test.max())) + 1))
    for split, y in (("train", y_train), ("test", y_test)):
        low, high = int(y.min()), int(y.max())
        if low < 0 or high >= len(classes):
            raise UserDataError(
                f"{where}: y_{split} holds label {low if low < 0 else high}, outside 0..{len(classes) - 1}"
            )
    return Arrays(
        x_train,
        y_train.astype(np.int32),
        x_test,
        y_test.astype(np.int32),
        classes,
        "classification",
    )
