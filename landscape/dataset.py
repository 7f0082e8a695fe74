"""The ``Dataset`` every loader returns, ``DataError``, and what the loaders share: checksums,
per-channel statistics, normalisation and the cache folder.

Everything arrives as uint8 NHWC arrays in a ``Dataset``; normalisation happens on the device
inside the compiled step (``normalize``). ``landscape.data`` chooses the loader for a ``--data``
spec; the loaders (``cifar``, ``image_folders``, ``mnist``) build on this module alone, so none of
them imports the dispatch.
"""

from __future__ import annotations

import hashlib
import os
from dataclasses import dataclass
from pathlib import Path

import numpy as np


class DataError(Exception):
    """Raised with a one-line, user-facing message (the CLI prints it and exits 2)."""


@dataclass(frozen=True, eq=False)
class Dataset:
    """A labelled image classification set held in memory as uint8 arrays.

    A regression set (``task == "regression"``, the deep linear network's) holds float32 inputs
    (N, d) in ``*_images`` and float32 targets (N, k) in ``*_labels``, with no classes.
    """

    name: str  # human name; says "synthetic" for generated data
    train_images: np.ndarray  # uint8 (N, H, W, C), NHWC: (N, 32, 32, 3) CIFAR, (N, 28, 28, 1) MNIST
    train_labels: np.ndarray  # int32 (N,)
    test_images: np.ndarray  # uint8 (M, H, W, C)
    test_labels: np.ndarray  # int32 (M,)
    classes: tuple[str, ...]
    source: str  # resolved path, or "synthetic"
    checksum: str  # sha256 hex of the source file (or of the arrays for folders and synthetic)
    mean: np.ndarray  # float32 (C,): per-channel mean of the train images scaled to [0, 1]
    std: np.ndarray  # float32 (3,): per-channel standard deviation, same scale
    task: str = "classification"  # or "regression": float targets, no classes, no accuracy

    @property
    def is_synthetic(self) -> bool:
        """Returns True for generated data (never a stand-in for real CIFAR-10)."""
        return self.source == "synthetic"

    @property
    def num_classes(self) -> int:
        """Returns the number of classes (10 for CIFAR-10)."""
        return len(self.classes)

    @property
    def num_outputs(self) -> int:
        """Returns the network's output size: the classes, or a regression target's length."""
        if self.task == "regression":
            return int(self.train_labels.shape[-1])
        return self.num_classes


# --- shared helpers -----------------------------------------------------------------------------


def resolve_cache_dir(cache_dir: str | os.PathLike | None = None) -> Path:
    """Returns the cache folder: ``cache_dir``, else ``$LANDSCAPE_CACHE``, else ~/.cache/landscape."""
    if cache_dir is not None:
        return Path(cache_dir).expanduser()
    env = os.environ.get("LANDSCAPE_CACHE")
    return Path(env).expanduser() if env else Path.home() / ".cache" / "landscape"


def channel_stats(images: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Returns the per-channel mean and std of uint8 NHWC images scaled to [0, 1] (float32,
    (C,): 3 for colour images, 1 for MNIST's grey ones)."""
    # A histogram of each channel's 256 values gives exact sums (no float accumulation error)
    # and is faster than summing int64 copies; chunks bound the temporary.
    channels = images.shape[-1]
    counts = np.zeros((channels, 256), np.int64)
    offsets = (256 * np.arange(channels)).astype(np.uint16)
    for start in range(0, len(images), 8192):
        codes = images[start : start + 8192].reshape(-1, channels) + offsets
        counts += np.bincount(codes.ravel(), minlength=256 * channels).reshape(channels, 256)
    values = np.arange(256, dtype=np.float64) / 255.0
    n = np.maximum(counts.sum(1), 1)
    mean = counts @ values / n
    var = np.maximum(counts @ (values * values) / n - mean**2, 0.0)
    return mean.astype(np.float32), np.sqrt(var).astype(np.float32)


def normalize(images, mean, std):
    """Returns uint8 NHWC images as float32 ``(x / 255 - mean) / std``, per channel.

    Float inputs (a regression set's) are already on their scale: ``(x - mean) / std`` only.
    Works on numpy and JAX arrays alike (only arithmetic), so it runs inside ``jax.jit``.
    """
    scale = 255.0 if images.dtype == np.uint8 else 1.0
    return (images.astype("float32") / scale - mean) / std


def file_sha256(path: str | os.PathLike) -> str:
    """Returns the sha256 hex digest of a file, read in 1 MiB blocks."""
    digest = hashlib.sha256()
    with open(path, "rb") as f:
        for block in iter(lambda: f.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()


def arrays_sha256(*arrays: np.ndarray) -> str:
    """Returns a sha256 hex digest over the bytes of the given arrays (identifies in-memory data)."""
    digest = hashlib.sha256()
    for a in arrays:
        digest.update(np.ascontiguousarray(a).tobytes())
    return digest.hexdigest()


def make_dataset(name, train, test, classes, source, checksum=None, stats=None) -> Dataset:
    """Returns the classification ``Dataset`` of ``train`` and ``test`` (each a pair: uint8 NHWC
    images, integer labels, stored as int32).

    ``checksum`` defaults to the sha256 of the arrays, ``stats`` (mean, std) to the training
    images' per-channel statistics (``channel_stats``).
    """
    (train_x, train_y), (test_x, test_y) = train, test
    train_y, test_y = train_y.astype(np.int32), test_y.astype(np.int32)
    if checksum is None:
        checksum = arrays_sha256(train_x, train_y, test_x, test_y)
    mean, std = stats if stats is not None else channel_stats(train_x)
    return Dataset(
        name=name,
        train_images=train_x,
        train_labels=train_y,
        test_images=test_x,
        test_labels=test_y,
        classes=tuple(classes),
        source=str(source),
        checksum=checksum,
        mean=mean,
        std=std,
    )
