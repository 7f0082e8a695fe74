"""Data: CIFAR-10 from the official binary archive, MNIST and Fashion-MNIST from the official IDX
files, image folders, a synthetic set, and the regression task of the paper's deep linear network
(App. A.1).

Everything arrives as uint8 NHWC arrays in a ``Dataset``; normalisation happens on the device
inside the compiled step. The batch at step t is ``batch_indices(seed, t, ...)``: a pure function,
so a saved step can be re-probed on exactly the batch it was trained on. No pickle anywhere: the
official *binary* format is parsed directly, archives are read member by member in memory (never
extracted), and caches are ``.npz`` read with ``allow_pickle=False``.
"""

from __future__ import annotations

import functools
import gzip
import hashlib
import http.client
import io
import math
import os
import tarfile
import tempfile
import urllib.request
import zipfile
import zlib
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from pathlib import Path, PurePosixPath

import numpy as np

from landscape.plugins import DATA_GROUP, is_import_path, registered
from landscape.progress import transient_bar
from landscape.user_data import Arrays, UserDataError, from_factory, read_npz

CIFAR10_URL = "https://www.cs.toronto.edu/~kriz/cifar-10-binary.tar.gz"
# The CIFAR-10 page publishes only an MD5. The SHA-256 below is the one other loaders pin for the
# same 170,052,171-byte file (JuliaML/MLDatasets.jl, ankane/torchvision-ruby); we verify SHA-256
# by default and keep the published MD5 for reference and for callers that want it.
CIFAR10_SHA256 = "c4a38c50a1bc5f3a1c5537f2155ab9d68f9f25eb1ed8d9ddda3db29a59bca1dd"
CIFAR10_MD5 = "c32a1d4ab5d03f1284b67883e8d87530"
CIFAR10_ARCHIVE = "cifar-10-binary.tar.gz"
CIFAR10_FOLDER = "cifar-10-batches-bin"
CIFAR10_CLASSES = (
    "airplane", "automobile", "bird", "cat", "deer", "dog", "frog", "horse", "ship", "truck",
)  # fmt: skip
RECORD_BYTES = 1 + 32 * 32 * 3  # label byte, then 1024 R, 1024 G, 1024 B bytes (row-major)
TRAIN_FILES = tuple(f"data_batch_{i}.bin" for i in range(1, 6))
TEST_FILE = "test_batch.bin"
META_FILE = "batches.meta.txt"
# CIFAR-100's binary version (Krizhevsky 2009): train.bin and test.bin, each record a coarse
# label byte, a fine label byte, then the image as CIFAR-10 stores it; the 100 fine labels are
# the classes here, named in fine_label_names.txt.
CIFAR100_TRAIN, CIFAR100_TEST = "train.bin", "test.bin"
CIFAR100_NAMES = "fine_label_names.txt"
CIFAR100_RECORD_BYTES = 2 + 32 * 32 * 3
CIFAR100_ARCHIVE = "cifar-100-binary.tar.gz"
# Naming the decoder up front skips PIL's trial of every plugin: about a third of decode time.
IMAGE_FORMATS = {
    ".png": "PNG", ".jpg": "JPEG", ".jpeg": "JPEG", ".bmp": "BMP", ".gif": "GIF", ".webp": "WEBP",
}  # fmt: skip
# 3: caches made before archives were checked whole may hold a partial read; never trusted.
CACHE_VERSION = 3
# CIFAR-10's split sizes. An image set in its ten classes with fewer images is a partial copy or
# extraction: refused, never trained on. (More is another set: CINIC-10 uses the same classes.)
CIFAR10_SIZES = {"train": 50_000, "test": 10_000}
# How the first bytes of a file name its compression; anything else is read as a plain tar.
COMPRESSION_MAGIC = {b"\x1f\x8b": "gz", b"BZh": "bz2", b"\xfd7zXZ\x00": "xz"}

# A file of a folder (read when needed) or the bytes of an archive member (already read).
Source = Path | bytes


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


# --- small helpers ------------------------------------------------------------------------------


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


def _make_dataset(name, train, test, classes, source, checksum=None, stats=None) -> Dataset:
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


# --- batches ------------------------------------------------------------------------------------


@functools.lru_cache(maxsize=4)
def _epoch_permutation(seed: int, epoch: int, num_examples: int) -> np.ndarray:
    perm = np.random.default_rng([seed, epoch]).permutation(num_examples).astype(np.int32)
    perm.flags.writeable = False  # shared by every call of the epoch: nobody may edit it
    return perm


def batch_indices(seed: int, step: int, num_examples: int, batch_size: int) -> np.ndarray:
    """Returns the example indices (int32, (batch_size,)) of the minibatch at ``step``.

    A pure function of its arguments: each epoch is a fresh permutation drawn from
    ``(seed, epoch)``, cut into ``num_examples // batch_size`` batches (the remainder is
    dropped). Any step's batch can be rebuilt without replaying the run. A batch as large as the
    set is the whole set in its stored order at every step (full-batch gradient descent, as the
    deep linear network of App. A.1 is trained: the same matrix, summed in the same order).
    """
    if batch_size < 1 or batch_size > num_examples:
        raise ValueError(f"batch size {batch_size} must be between 1 and {num_examples}")
    if step < 0 or seed < 0:
        raise ValueError(f"seed ({seed}) and step ({step}) must be non-negative")
    if batch_size == num_examples:
        return np.arange(num_examples, dtype=np.int32)
    per_epoch = num_examples // batch_size
    epoch, position = divmod(int(step), per_epoch)
    perm = _epoch_permutation(int(seed), epoch, int(num_examples))
    return perm[position * batch_size : (position + 1) * batch_size].copy()


# --- synthetic ----------------------------------------------------------------------------------


def synthetic_dataset(seed: int = 0, num_train: int = 5000, num_test: int = 1000) -> Dataset:
    """Returns a CIFAR-shaped, learnable synthetic set generated from ``seed``.

    Each of the 10 classes has a smooth random template (an upsampled 4x4 colour pattern, pulled
    halfway to its own mean colour); an image is its class template, shifted cyclically by up to
    2 pixels and scaled in contrast, plus Gaussian pixel noise (std 0.25 of the range). Labels are
    balanced (``i % 10``, shuffled). A small conv net fits it well above chance in a few hundred
    steps, but not instantly. It is NOT real data and says so in its name.
    """
    rng = np.random.default_rng(seed)
    coarse = rng.uniform(0.0, 1.0, size=(10, 4, 4, 3)).astype(np.float32)
    templates = np.repeat(np.repeat(coarse, 8, axis=1), 8, axis=2)  # (10, 32, 32, 3) in [0, 1]
    templates = 0.5 * templates + 0.5 * templates.mean(axis=(1, 2), keepdims=True)
    pixels = np.arange(32)

    def make(count: int) -> tuple[np.ndarray, np.ndarray]:
        labels = np.arange(count) % 10
        rng.shuffle(labels)
        shifts = rng.integers(-2, 3, size=(count, 2))
        contrast = rng.uniform(0.6, 1.4, size=(count, 1, 1, 1)).astype(np.float32)
        images = np.empty((count, 32, 32, 3), np.uint8)
        for start in range(0, count, 2048):  # chunks bound the float32 temporaries
            part = slice(start, start + 2048)
            rows = (pixels[None, :] - shifts[part, :1]) % 32  # np.roll's convention, batched
            cols = (pixels[None, :] - shifts[part, 1:]) % 32
            shifted = templates[labels[part, None, None], rows[:, :, None], cols[:, None, :]]
            noise = rng.standard_normal(size=shifted.shape, dtype=np.float32)
            x = 0.5 + contrast[part] * (shifted - 0.5) + 0.25 * noise
            images[part] = np.rint(np.clip(x, 0.0, 1.0) * 255)
        return images, labels.astype(np.int32)

    train, test = make(num_train), make(num_test)
    return _make_dataset(
        f"synthetic (seed {seed}, NOT real CIFAR-10)",
        train,
        test,
        [f"class_{i}" for i in range(10)],
        "synthetic",
    )


# --- the deep linear network's regression task (App. A.1) ------------------------------------


def dln_dataset(
    seed: int = 0, dim: int = 10, num_train: int = 1000, num_test: int = 1000
) -> Dataset:
    """Returns the deep linear network's task: targets ``A x`` for Gaussian inputs ``x``.

    As in the paper's App. A.1: ``A`` is a ``dim x dim`` matrix of i.i.d. standard normal
    entries and the inputs are i.i.d. standard normal vectors, ``num_train`` of them for
    (full-batch) training and ``num_test`` held out for evaluation. Everything is drawn from
    ``seed`` alone (the data has its own seed, apart from the run's initialisation seed); the
    targets are computed in float64 and stored, with the inputs, as float32 (N, dim) arrays.
    The checksum covers inputs and targets of both splits.
    """
    if min(dim, num_train, num_test) < 1:
        raise ValueError("dim, num_train and num_test must be positive")
    rng = np.random.default_rng([seed, dim])
    matrix = rng.standard_normal((dim, dim))
    train_x, test_x = rng.standard_normal((num_train, dim)), rng.standard_normal((num_test, dim))
    train = (train_x.astype(np.float32), (train_x @ matrix.T).astype(np.float32))
    test = (test_x.astype(np.float32), (test_x @ matrix.T).astype(np.float32))
    return Dataset(
        name=f"dln (seed {seed}: y = A x, A {dim}x{dim} Gaussian, synthetic)",
        train_images=train[0],
        train_labels=train[1],
        test_images=test[0],
        test_labels=test[1],
        classes=(),
        source="synthetic",
        checksum=arrays_sha256(*train, *test),
        mean=np.zeros(dim, np.float32),  # inputs are used as drawn: normalize() is the identity
        std=np.ones(dim, np.float32),
        task="regression",
    )


# --- the user's arrays (landscape.user_data) ---------------------------------------------------


def arrays_dataset(arrays: Arrays, name: str, source: str, checksum: str | None = None) -> Dataset:
    """Returns the ``Dataset`` of a user's checked arrays.

    uint8 inputs are scaled to [0, 1] and standardised with the training set's per-channel
    statistics (the last axis of NHWC images; one mean and standard deviation otherwise); float
    inputs are used as they are.
    """
    x = arrays.x_train
    if x.dtype != np.uint8:
        mean, std = np.zeros((), np.float32), np.ones((), np.float32)
    elif x.ndim == 4 and x.shape[-1] == 3:
        mean, std = channel_stats(x)
    else:
        axes = tuple(range(x.ndim - 1)) if x.ndim == 4 else None
        scaled = x.astype(np.float64) / 255.0
        mean = scaled.mean(axis=axes).astype(np.float32)
        std = np.maximum(scaled.std(axis=axes), 1e-12).astype(np.float32)
    return Dataset(
        name=name,
        train_images=x,
        train_labels=arrays.y_train,
        test_images=arrays.x_test,
        test_labels=arrays.y_test,
        classes=arrays.classes,
        source=source,
        checksum=checksum or arrays_sha256(x, arrays.y_train, arrays.x_test, arrays.y_test),
        mean=mean,
        std=std,
        task=arrays.task,
    )


def load_user_data(spec: str) -> Dataset:
    """Returns the data of an ``.npz`` file or of a data factory (``package.module:function`` or
    a registered name); raises DataError in one line."""
    try:
        if spec.endswith(".npz"):
            path = Path(spec).expanduser()
            if not path.exists():
                raise DataError(f"--data {spec}: no such file")
            return arrays_dataset(read_npz(path), path.name, str(path.resolve()), file_sha256(path))
        return arrays_dataset(from_factory(spec), spec, spec)
    except UserDataError as err:
        raise DataError(str(err)) from None


def is_user_data(spec: str) -> bool:
    """Returns True for data a user brings: an .npz path, an import path or a registered name."""
    return spec.endswith(".npz") or is_import_path(spec) or spec in registered(DATA_GROUP)


# --- reading folders and archives ---------------------------------------------------------------


def _split_of(name: str) -> tuple[str, str] | None:
    """Returns (split, class) for .../train/<class>/<image> or .../test/<class>/<image>."""
    parts = name.split("/")
    base = parts[-1]
    # macOS archives carry "._name" resource forks beside each image: they are not images.
    if len(parts) < 3 or parts[-3] not in ("train", "test") or base.startswith("."):
        return None
    if PurePosixPath(base).suffix.lower() not in IMAGE_FORMATS:
        return None
    return parts[-3], parts[-2]


def _is_binary_name(name: str) -> bool:
    base = name.rsplit("/", 1)[-1]
    return base in (
        *TRAIN_FILES,
        TEST_FILE,
        META_FILE,
        CIFAR100_TRAIN,
        CIFAR100_TEST,
        CIFAR100_NAMES,
    )


def _wanted(name: str) -> bool:
    return _is_binary_name(name) or _split_of(name) is not None


def _has_binary(files: Mapping[str, Source]) -> bool:
    return any(n.rsplit("/", 1)[-1] in (*TRAIN_FILES, TEST_FILE) for n in files)


def _has_cifar100(files: Mapping[str, Source]) -> bool:
    return any(n.rsplit("/", 1)[-1] in (CIFAR100_TRAIN, CIFAR100_TEST) for n in files)


def _read(source: Source) -> bytes:
    return source if isinstance(source, bytes) else source.read_bytes()


def _folder_files(path: Path) -> dict[str, Source]:
    """Returns the CIFAR-relevant files under a folder, by relative POSIX name (read lazily)."""
    files = {}
    for file in path.rglob("*"):
        name = file.relative_to(path).as_posix()
        if _wanted(name) and file.is_file():
            files[name] = file
    return files


def _check_member(member: tarfile.TarInfo, archive: Path) -> None:
    """Raises DataError for a member that could write or read outside the archive if extracted.

    We never extract (members are read in memory), so this is defence in depth; it also
    rejects archives that were built to attack a less careful tool.
    """
    name = member.name
    if name.startswith(("/", "\\")) or ".." in PurePosixPath(name.replace("\\", "/")).parts:
        raise DataError(f"{archive}: unsafe path {name!r} in the archive; refusing to read it")
    if member.issym() or member.islnk() or member.isdev():
        raise DataError(f"{archive}: {name!r} is a link or device; refusing to read the archive")


class _ArchiveCut(tarfile.TarError):
    """The archive stops before its end-of-archive marker, or a header in it is damaged."""


class _StrictHeader(tarfile.TarInfo):
    """Reads headers as tarfile does, but only the end-of-archive marker (a zero block) ends the
    archive: tarfile takes a missing, cut or damaged header for the end and stops silently."""

    @classmethod
    def frombuf(cls, buf, encoding, errors):
        try:
            return super().frombuf(buf, encoding, errors)
        except tarfile.EmptyHeaderError:
            raise _ArchiveCut(
                "it ends where a member or the end-of-archive marker should be"
            ) from None
        except (tarfile.TruncatedHeaderError, tarfile.InvalidHeaderError) as err:
            raise _ArchiveCut(f"damaged header: {err}") from None


def _read_end(tar: tarfile.TarFile) -> None:
    """Raises _ArchiveCut unless the archive ends as a whole one does: after the first zero block
    (the last one read), a second, then the rest of the compressed stream, whose trailer (CRC and
    length) gzip, bz2 and xz check when read to its end."""
    stream = tar.fileobj
    if stream.tell() != tar.offset + tarfile.BLOCKSIZE:
        raise _ArchiveCut("it does not end with an end-of-archive marker")
    if stream.read(tarfile.BLOCKSIZE) != tarfile.NUL * tarfile.BLOCKSIZE:
        raise _ArchiveCut("its end-of-archive marker is cut short")
    while stream.read(1 << 20):
        pass


def _tar_mode(path: Path) -> str:
    """Returns the ``tarfile.open`` mode for the file's compression (from its first bytes)."""
    with open(path, "rb") as f:
        head = f.read(6)
    return "r:" + next((c for magic, c in COMPRESSION_MAGIC.items() if head.startswith(magic)), "")


def _tar_files(path: Path, progress: bool = False) -> dict[str, Source]:
    """Returns the CIFAR-relevant regular files of a .tar / .tar.gz, read into memory.

    The archive is read to its end-of-archive marker and, compressed, to the end of the stream
    with its checksum verified, or refused: a cut or damaged archive never passes for a smaller
    data set.
    """
    files: dict[str, Source] = {}
    members = 0
    try:
        with (
            transient_bar(progress, None, f"reading {path.name}"),
            tarfile.open(path, _tar_mode(path), tarinfo=_StrictHeader) as tar,
        ):
            for member in tar:  # one sequential pass: a .tar.gz cannot seek cheaply
                members += 1
                _check_member(member, path)
                name = member.name.removeprefix("./")
                if member.isfile() and _wanted(name):
                    handle = tar.extractfile(member)
                    files.setdefault(name, handle.read() if handle else b"")
            _read_end(tar)
    except (tarfile.TarError, OSError, EOFError, zlib.error) as err:
        reason = " ".join(str(err).split())  # one line, whatever the library said
        if members == 0:
            raise DataError(f"{path}: not a folder or a readable tar archive ({reason})") from None
        raise DataError(
            f"{path}: the archive is incomplete or damaged after {members:,} "
            f"member{'s' * (members != 1)} ({reason}); nothing from it was used or cached: "
            "download or copy it again"
        ) from None
    return files


def _source_files(path: Path, progress: bool = False) -> dict[str, Source]:
    if path.is_dir():
        return _folder_files(path)
    if not path.exists():
        raise DataError(f"data path {path} does not exist")
    return _tar_files(path, progress)


# --- the official binary format -----------------------------------------------------------------


def parse_binary_records(data: bytes, name: str) -> tuple[np.ndarray, np.ndarray]:
    """Returns (images uint8 (n, 32, 32, 3) NHWC, labels int32 (n,)) from one ``*.bin`` file."""
    if len(data) == 0 or len(data) % RECORD_BYTES:
        raise DataError(
            f"{name}: {len(data)} bytes is not a whole number of {RECORD_BYTES}-byte CIFAR-10 "
            "records (truncated, or not the binary version)"
        )
    records = np.frombuffer(data, np.uint8).reshape(-1, RECORD_BYTES)
    labels = records[:, 0].astype(np.int32)
    if labels.max() > 9:
        raise DataError(f"{name}: label {labels.max()} out of range 0-9 (not CIFAR-10 binary data)")
    # A record stores three 32x32 planes (R, G, B), each row-major: CHW per image.
    images = records[:, 1:].reshape(-1, 3, 32, 32).transpose(0, 2, 3, 1)
    return np.ascontiguousarray(images), labels


def _classes_from_meta(text: str | None) -> tuple[str, ...]:
    if text:
        names = tuple(line.strip() for line in text.splitlines() if line.strip())
        if len(names) == 10:
            return names
    return CIFAR10_CLASSES


def _binary_dataset(files: Mapping[str, Source], path: Path, checksum: str | None) -> Dataset:
    by_base: dict[str, str] = {}
    for name in sorted(files):
        by_base.setdefault(name.rsplit("/", 1)[-1], name)

    def read(base: str) -> tuple[np.ndarray, np.ndarray]:
        if base not in by_base:
            raise DataError(
                f"{path}: missing {base} (expected data_batch_1..5.bin, test_batch.bin)"
            )
        return parse_binary_records(_read(files[by_base[base]]), f"{path}: {by_base[base]}")

    parts = [read(base) for base in TRAIN_FILES]
    train = (np.concatenate([p[0] for p in parts]), np.concatenate([p[1] for p in parts]))
    test = read(TEST_FILE)
    meta = (
        _read(files[by_base[META_FILE]]).decode("utf-8", "replace")
        if META_FILE in by_base
        else None
    )
    return _make_dataset("cifar10", train, test, _classes_from_meta(meta), path, checksum)


def parse_cifar100_records(data: bytes, name: str) -> tuple[np.ndarray, np.ndarray]:
    """Returns (images uint8 (n, 32, 32, 3) NHWC, fine labels int32 (n,)) from CIFAR-100's
    ``train.bin`` or ``test.bin``."""
    if len(data) == 0 or len(data) % CIFAR100_RECORD_BYTES:
        raise DataError(
            f"{name}: {len(data)} bytes is not a whole number of {CIFAR100_RECORD_BYTES}-byte "
            "CIFAR-100 records (truncated, or not the binary version)"
        )
    records = np.frombuffer(data, np.uint8).reshape(-1, CIFAR100_RECORD_BYTES)
    coarse, fine = records[:, 0], records[:, 1].astype(np.int32)
    if coarse.max() > 19 or fine.max() > 99:
        raise DataError(f"{name}: labels out of range (not CIFAR-100 binary data)")
    images = records[:, 2:].reshape(-1, 3, 32, 32).transpose(0, 2, 3, 1)
    return np.ascontiguousarray(images), fine


def _cifar100_dataset(files: Mapping[str, Source], path: Path, checksum: str | None) -> Dataset:
    by_base: dict[str, str] = {}
    for name in sorted(files):
        by_base.setdefault(name.rsplit("/", 1)[-1], name)
    splits = []
    for base in (CIFAR100_TRAIN, CIFAR100_TEST):
        if base not in by_base:
            raise DataError(
                f"{path}: missing {base} (CIFAR-100's binary version has train.bin and test.bin)"
            )
        splits.append(
            parse_cifar100_records(_read(files[by_base[base]]), f"{path}: {by_base[base]}")
        )
    names = ()
    if CIFAR100_NAMES in by_base:
        text = _read(files[by_base[CIFAR100_NAMES]]).decode("utf-8", "replace")
        names = tuple(line.strip() for line in text.splitlines() if line.strip())
    classes = names if len(names) == 100 else tuple(f"class{i}" for i in range(100))
    return _make_dataset("cifar100", splits[0], splits[1], classes, path, checksum)


def read_cifar10_binary(path: str | os.PathLike) -> Dataset:
    """Returns CIFAR-10 read from the official binary archive (``.tar.gz``/``.tar``) or its folder.

    The checksum is the archive file's sha256, or for a folder the sha256 of the arrays.
    """
    path = Path(path).expanduser().absolute()
    files = _source_files(path)
    if not _has_binary(files):
        raise DataError(f"{path}: no CIFAR-10 binary files (data_batch_1.bin ...) found")
    return _binary_dataset(files, path, None if path.is_dir() else file_sha256(path))


# --- image folders ------------------------------------------------------------------------------


def _decode(data: bytes, name: str) -> np.ndarray:
    """Returns one image as uint8 (32, 32, 3) RGB, or raises DataError naming the file."""
    from PIL import Image, UnidentifiedImageError

    formats = (IMAGE_FORMATS[PurePosixPath(name).suffix.lower()],)
    try:
        try:
            img = Image.open(io.BytesIO(data), formats=formats)
        except UnidentifiedImageError:  # a suffix that lies about the format
            img = Image.open(io.BytesIO(data))
        with img:
            array = np.asarray(img if img.mode == "RGB" else img.convert("RGB"))
    except (UnidentifiedImageError, OSError, ValueError) as err:
        raise DataError(f"{name}: not a readable image ({err})") from None
    if array.shape != (32, 32, 3):
        raise DataError(f"{name}: image is {array.shape[1]}x{array.shape[0]}, expected 32x32")
    return array


def _decode_images(files: Mapping[str, Source], path: Path, progress: bool):
    """Returns (train, test, classes) decoded from ``train/<class>/*`` and ``test/<class>/*``."""
    entries = sorted((*where, name) for name in files if (where := _split_of(name)))
    classes = sorted({c for split, c, _ in entries if split == "train"})
    test_classes = sorted({c for split, c, _ in entries if split == "test"})
    if not classes:
        raise DataError(f"{path}: no images under train/<class>/ (and test/<class>/)")
    if test_classes != classes:
        raise DataError(
            f"{path}: train/ and test/ must hold the same class folders "
            f"(train: {', '.join(classes)}; test: {', '.join(test_classes) or 'none'})"
        )
    index = {c: i for i, c in enumerate(classes)}
    splits = {}
    with transient_bar(progress, len(entries), f"decoding {path.name}") as advance:
        for split in ("test", "train"):
            chosen = [(c, n) for s, c, n in entries if s == split]
            images = np.empty((len(chosen), 32, 32, 3), np.uint8)
            for i, (_, name) in enumerate(chosen):
                images[i] = _decode(_read(files[name]), name)
                advance()
            splits[split] = (images, np.array([index[c] for c, _ in chosen], np.int32))
    return splits["train"], splits["test"], classes


def _folder_signature(path: Path) -> str:
    """Returns a sha256 over a folder's relevant file names, sizes and modification times."""
    digest = hashlib.sha256()
    for name, file in sorted(_folder_files(path).items()):
        stat = file.stat()
        digest.update(f"{name}\0{stat.st_size}\0{stat.st_mtime_ns}\n".encode())
    return digest.hexdigest()


def _cache_file(cache_dir: str | os.PathLike | None, key: str) -> Path:
    return resolve_cache_dir(cache_dir) / f"images-v{CACHE_VERSION}-{key[:40]}.npz"


def _image_folder_name(path: Path, classes) -> str:
    kind = "cifar10" if sorted(classes) == sorted(CIFAR10_CLASSES) else "images"
    return f"{kind} (image folder: {path.name})"


def _check_known_size(path: Path, classes, train: np.ndarray, test: np.ndarray) -> None:
    """Raises DataError for an image set in CIFAR-10's classes with fewer images than CIFAR-10."""
    if sorted(classes) != sorted(CIFAR10_CLASSES):
        return
    found = {"train": len(train), "test": len(test)}
    if any(found[split] < size for split, size in CIFAR10_SIZES.items()):
        raise DataError(
            f"{path}: {found['train']:,} training and {found['test']:,} test images in "
            f"CIFAR-10's classes, where CIFAR-10 has {CIFAR10_SIZES['train']:,} and "
            f"{CIFAR10_SIZES['test']:,}: a partial copy? Copy or extract it again (for part of "
            "CIFAR-10 on purpose, give it as an .npz: docs/own-models.md)"
        )


def _cached_dataset(path: Path, cached) -> Dataset:
    train, test, classes, checksum, stats = cached
    _check_known_size(path, classes, train[0], test[0])
    name = _image_folder_name(path, classes)
    return _make_dataset(name, train, test, classes, path, checksum, stats)


def _image_dataset(
    path: Path,
    key: str,
    files: Callable[[], Mapping[str, Source]],
    cache_dir: str | os.PathLike | None,
    progress: bool,
) -> Dataset:
    """Returns the image set at ``path`` from its cache, or decodes ``files()`` and caches it."""
    cache = _cache_file(cache_dir, key)
    cached = _load_cache(cache)
    if cached is not None:
        return _cached_dataset(path, cached)
    train, test, classes = _decode_images(files(), path, progress)
    _check_known_size(path, classes, train[0], test[0])  # before anything is cached
    checksum = None if path.is_dir() else key  # a folder is identified by its arrays
    dataset = _make_dataset(_image_folder_name(path, classes), train, test, classes, path, checksum)
    _save_cache(cache, dataset)
    return dataset


def read_image_folder(
    path: str | os.PathLike,
    *,
    cache_dir: str | os.PathLike | None = None,
    progress: bool = True,
) -> Dataset:
    """Returns the images of ``train/<class>/*`` and ``test/<class>/*`` in a folder or tar.

    Classes are the sorted class folder names of train/ (test/ must have the same). Images must
    be 32x32; they are decoded once and cached as an uncompressed ``.npz`` in the cache folder,
    keyed by the archive's sha256 (a folder: its file names, sizes and times) and written
    atomically. The checksum is the archive's sha256, or for a folder the sha256 of the arrays.
    """
    path = Path(path).expanduser().absolute()
    if not path.exists():
        raise DataError(f"data path {path} does not exist")
    key = _folder_signature(path) if path.is_dir() else file_sha256(path)
    return _image_dataset(path, key, lambda: _source_files(path, progress), cache_dir, progress)


_CACHE_KEYS = ("train_images", "train_labels", "test_images", "test_labels", "classes")


def _load_cache(cache: Path):
    """Returns (train, test, classes, checksum, stats) from a cache file, or None if unusable."""
    if not cache.is_file():
        return None
    try:
        with np.load(cache, allow_pickle=False) as z:
            a = {k: z[k] for k in (*_CACHE_KEYS, "checksum", "mean", "std")}
    except (OSError, ValueError, KeyError, EOFError, zipfile.BadZipFile, zlib.error):
        return None  # a corrupt cache is rebuilt, never trusted
    classes = [str(c) for c in a["classes"]]
    for split in ("train", "test"):
        images, labels = a[f"{split}_images"], a[f"{split}_labels"]
        if (
            images.dtype != np.uint8
            or images.ndim != 4
            or images.shape[1:] != (32, 32, 3)
            or labels.dtype != np.int32
            or labels.shape != images.shape[:1]
            or (labels.size and not 0 <= labels.min() <= labels.max() < len(classes))
        ):
            return None
    stats = (a["mean"].astype(np.float32), a["std"].astype(np.float32))
    train = (a["train_images"], a["train_labels"])
    test = (a["test_images"], a["test_labels"])
    return train, test, classes, str(a["checksum"]), stats


def _save_cache(cache: Path, ds: Dataset) -> None:
    """Writes the cache under a temporary name, then renames it: a killed run leaves no cache."""
    tmp = None
    try:
        cache.parent.mkdir(parents=True, exist_ok=True)
        fd, tmp = tempfile.mkstemp(dir=cache.parent, prefix=f".{cache.stem}.", suffix=".tmp")
        with os.fdopen(fd, "wb") as f:
            np.savez(
                f,
                train_images=ds.train_images,
                train_labels=ds.train_labels,
                test_images=ds.test_images,
                test_labels=ds.test_labels,
                classes=np.asarray(ds.classes, dtype=str),
                checksum=np.asarray(ds.checksum),
                mean=ds.mean,
                std=ds.std,
            )
        os.replace(tmp, cache)
        tmp = None
    except OSError:
        pass  # a cache we cannot write only costs time next run
    finally:
        if tmp is not None:
            Path(tmp).unlink(missing_ok=True)


# --- MNIST and Fashion-MNIST: the official IDX files -------------------------------------------
#
# Both sets are four files in LeCun's IDX format (a magic number giving the element type and the
# number of dimensions, each dimension as a big-endian uint32, then the values), published gzipped.
# The loader reads them gzipped or not, verifies each file's uncompressed bytes against the
# published checksums, and never writes them anywhere (docs/experiments.md#mnist-and-fashion-mnist).

IDX_SETS = ("mnist", "fashion-mnist")
# The four files by role; the 60,000-image training pair is optional (see read_idx_folder).
IDX_FILES = {
    "train_images": "train-images-idx3-ubyte",
    "train_labels": "train-labels-idx1-ubyte",
    "test_images": "t10k-images-idx3-ubyte",
    "test_labels": "t10k-labels-idx1-ubyte",
}
# MD5s of the *uncompressed* files, which also hold for a file someone re-gzipped. They are the
# values that loaders publishing the official sets pin (e.g. torchvision, MLDatasets.jl); for the
# MNIST test pair they were checked here against LeCun's gzipped files and their published MD5s.
IDX_MD5: dict[str, dict[str, str]] = {
    "mnist": {
        "train_images": "6bbc9ace898e44ae57da46a324031adb",
        "train_labels": "a25bea736e30d166cdddb491f175f624",
        "test_images": "2646ac647ad5339dbf082846283269ea",
        "test_labels": "27ae3e4e09519cfbb04c329615203637",
    },
    "fashion-mnist": {
        "train_images": "f4a8712d7a061bf5bd6d2ca38dc4d50a",
        "train_labels": "9018921c3c673c538a1fc5bad174d6f9",
        "test_images": "8181f5470baa50b63fa0f6fddb340f0a",
        "test_labels": "15d484375f8d13e6eb1aabb0c3f46965",
    },
}
# The published MD5s of the gzipped files, for reference (the check above covers them).
IDX_GZ_MD5: dict[str, dict[str, str]] = {
    "mnist": {
        "train_images": "f68b3c2dcbeaaa9fbdd348bbdeb94873",
        "train_labels": "d53e105ee54ea40749a09fcbcd1e9432",
        "test_images": "9fb629c4189551a2d022fa330f9573f3",
        "test_labels": "ec29112dd5afa0611ce80d1b7f02629c",
    },
    "fashion-mnist": {
        "train_images": "8d4fb7e6c68d591d4c3dfef9ec88bf0d",
        "train_labels": "25c81989df183df01b3e8a0aad5dffbe",
        "test_images": "bef4ecab320f06d8554ea6380940ec79",
        "test_labels": "bb300cfdad3c16e7a12a480ee83cd310",
    },
}
IDX_CLASSES = {
    "mnist": tuple(str(d) for d in range(10)),
    "fashion-mnist": (
        "T-shirt/top", "Trouser", "Pullover", "Dress", "Coat",
        "Sandal", "Shirt", "Sneaker", "Bag", "Ankle boot",
    ),
}  # fmt: skip
IDX_SIZES = {"train": 60_000, "test": 10_000}
IDX_UBYTE = 0x08  # the element type code of unsigned bytes, the only one these sets use
# With the test pair only, every HELD_OUT_EVERY-th test image (indices 4, 9, 14, ...) is held out
# and the others train: 8,000 / 2,000 for the 10,000, both halves of the set (LeCun's first
# 5,000 are the cleaner ones) spread evenly over the two parts.
HELD_OUT_EVERY = 5


def parse_idx(data: bytes, name: str, ndim: int) -> np.ndarray:
    """Returns the uint8 array of one IDX file's bytes (uncompressed), of ``ndim`` dimensions.

    Raises DataError in one line for a wrong magic number, another element type or number of
    dimensions, and a file shorter (truncated) or longer than its header says.
    """
    if len(data) < 4 or data[:2] != b"\x00\x00":
        raise DataError(
            f"{name}: not an IDX file (magic number {data[:4].hex() or 'missing'}, expected "
            f"0000080{ndim})"
        )
    if data[2] != IDX_UBYTE or data[3] != ndim:
        raise DataError(
            f"{name}: an IDX file of type 0x{data[2]:02x} with {data[3]} dimensions, expected "
            f"unsigned bytes (0x08) with {ndim} (magic number 0000080{ndim})"
        )
    header = 4 + 4 * ndim
    if len(data) < header:
        raise DataError(f"{name}: truncated inside its header ({len(data)} bytes)")
    shape = tuple(int(d) for d in np.frombuffer(data, ">u4", ndim, 4))
    expected = header + math.prod(shape)
    if len(data) != expected:
        what = "truncated" if len(data) < expected else "longer than its header says"
        raise DataError(
            f"{name}: {what}: a {' x '.join(map(str, shape))} IDX array takes {expected:,} bytes, "
            f"the file has {len(data):,}"
        )
    return np.frombuffer(data, np.uint8, offset=header).reshape(shape)


def _idx_candidates(folder: Path, base: str) -> list[Path]:
    # The published names, gzipped or not, and the dotted spelling some archives unpack to
    # (train-images.idx3-ubyte).
    dotted = base.replace("-idx", ".idx")
    return [folder / f"{n}{gz}" for n in (base, dotted) for gz in (".gz", "")]


def _find_idx(folder: Path, base: str) -> Path | None:
    return next((p for p in _idx_candidates(folder, base) if p.is_file()), None)


def has_idx_files(folder: Path) -> bool:
    """Returns True when ``folder`` holds the IDX test images of MNIST's naming (a candidate
    for ``read_idx_folder``)."""
    return folder.is_dir() and _find_idx(folder, IDX_FILES["test_images"]) is not None


def read_idx_file(path: Path) -> bytes:
    """Returns the uncompressed bytes of an IDX file, gzipped (by its first bytes) or not.

    Raises DataError for a file that cannot be read or a damaged or cut gzip stream.
    """
    try:
        raw = path.read_bytes()
    except OSError as err:
        raise DataError(f"{path}: cannot read it ({err.strerror or err})") from None
    if not raw.startswith(b"\x1f\x8b"):
        return raw
    try:
        return gzip.decompress(raw)
    except (OSError, EOFError, zlib.error) as err:
        reason = " ".join(str(err).split())
        raise DataError(f"{path}: a damaged or incomplete gzip file ({reason})") from None


def _identify(role: str, digest: str, expected: str | None, path: Path, md5s) -> str:
    """Returns the set (``mnist``, ``fashion-mnist``) whose official ``role`` file has ``digest``."""
    known = [name for name, table in md5s.items() if table.get(role) == digest]
    if expected is not None and expected not in known:
        raise DataError(
            f"{path}: not the official {expected} {IDX_FILES[role]} (md5 of its contents "
            f"{digest}, expected {md5s[expected][role]}): damaged, cut short or another data set"
        )
    if not known:
        raise DataError(
            f"{path}: not an official MNIST or Fashion-MNIST {IDX_FILES[role]} (md5 of its "
            f"contents {digest}); other image sets load as .npz (docs/own-models.md)"
        )
    return expected or known[0]


def read_idx_folder(
    folder: str | os.PathLike,
    name: str | None = None,
    *,
    md5s: Mapping[str, Mapping[str, str]] = IDX_MD5,
) -> Dataset:
    """Returns MNIST or Fashion-MNIST read from the official IDX files in ``folder``.

    ``name`` (``mnist``, ``fashion-mnist``) is the set the files must be; None identifies it by
    the checksums. Every file's uncompressed contents must have the official MD5 (``md5s``:
    the table per set and file role). With the training pair present the official split is used
    unchanged; with the test pair alone its images are split into training and held-out parts
    (every ``HELD_OUT_EVERY``-th image held out), which the dataset's name says. Images are uint8
    (N, 28, 28, 1), labels int32. Raises DataError in one line.
    """
    folder = Path(folder).expanduser().absolute()
    if not folder.is_dir():
        raise DataError(f"{folder}: not a folder (give the folder holding the IDX files)")
    found = {role: _find_idx(folder, base) for role, base in IDX_FILES.items()}
    for split in ("train", "test"):
        images, labels = found[f"{split}_images"], found[f"{split}_labels"]
        if (images is None) != (labels is None) or (split == "test" and images is None):
            missing = IDX_FILES[f"{split}_{'labels' if labels is None else 'images'}"]
            raise DataError(
                f"{folder}: missing {missing}(.gz) beside the other IDX files (MNIST's naming: "
                f"{', '.join(IDX_FILES.values())}, gzipped or not)"
            )
    arrays, sets = {}, set()
    for role, path in found.items():
        if path is None:
            continue
        data = read_idx_file(path)
        arrays[role] = parse_idx(data, str(path), 3 if role.endswith("images") else 1)
        sets.add(_identify(role, hashlib.md5(data).hexdigest(), name, path, md5s))
    if len(sets) > 1:
        raise DataError(f"{folder}: the IDX files mix {' and '.join(sorted(sets))}")
    (kind,) = sets
    for split in ("train", "test"):
        if f"{split}_images" in arrays:
            _check_idx_pair(folder, split, arrays[f"{split}_images"], arrays[f"{split}_labels"])
    test = (arrays["test_images"][..., None], arrays["test_labels"])
    if "train_images" in arrays:
        train = (arrays["train_images"][..., None], arrays["train_labels"])
        title = kind
    else:
        held_out = np.arange(len(test[1])) % HELD_OUT_EVERY == HELD_OUT_EVERY - 1
        train = (test[0][~held_out], test[1][~held_out])
        test = (test[0][held_out], test[1][held_out])
        title = (
            f"{kind} (official test set only: its {len(held_out):,} images split "
            f"{len(train[1]):,} train / {len(test[1]):,} held out, every {HELD_OUT_EVERY}th held "
            "out; not the official training set)"
        )
    copy = lambda pair: (np.ascontiguousarray(pair[0]), pair[1].astype(np.int32))  # noqa: E731
    return _make_dataset(title, copy(train), copy(test), IDX_CLASSES[kind], folder)


def _check_idx_pair(folder: Path, split: str, images: np.ndarray, labels: np.ndarray) -> None:
    if images.shape[1:] != (28, 28) or len(images) != len(labels):
        raise DataError(
            f"{folder}: the {split} files hold {len(images):,} images of "
            f"{' x '.join(map(str, images.shape[1:]))} and {len(labels):,} labels, expected one "
            "28 x 28 image per label"
        )
    if labels.size and labels.max() > 9:
        raise DataError(f"{folder}: {split} label {labels.max()} out of range 0-9")


def idx_default_folder(name: str, cache_dir: str | os.PathLike | None = None) -> Path:
    """Returns where ``--data mnist`` (or ``fashion-mnist``) looks: ``<cache folder>/<name>``."""
    return resolve_cache_dir(cache_dir) / name


def load_idx(spec: str, cache_dir: str | os.PathLike | None = None) -> Dataset:
    """Returns the set ``spec`` names: ``mnist`` or ``fashion-mnist`` (the files in the cache
    folder's ``mnist/`` or ``fashion-mnist/``), or ``mnist:DIR`` / ``fashion-mnist:DIR``."""
    name, _, folder = spec.partition(":")
    if folder.strip():
        return read_idx_folder(Path(folder.strip()), name)
    default = idx_default_folder(name, cache_dir)
    if not has_idx_files(default):
        raise DataError(
            f"no {name} found in {default}: pass --data {name}:DIR (a folder with the official "
            f"IDX files, gzipped or not: {', '.join(IDX_FILES.values())}) or put them there"
        )
    return read_idx_folder(default, name)


def is_idx_spec(spec: str) -> bool:
    """Returns True for ``mnist``, ``fashion-mnist`` and their ``NAME:DIR`` forms."""
    return spec.partition(":")[0] in IDX_SETS


# --- download -----------------------------------------------------------------------------------


def download_cifar10(
    cache_dir: str | os.PathLike | None = None,
    *,
    url: str = CIFAR10_URL,
    sha256: str | None = CIFAR10_SHA256,
    md5: str | None = None,
    progress: bool = True,
) -> Path:
    """Downloads the binary archive into the cache folder and returns its path.

    Every checksum given (``sha256``, ``md5``; at least one) must match. The file is written under
    a temporary name and renamed only after that, so a failed or interrupted download leaves
    nothing that would be taken for the archive. Failures raise DataError.
    """
    expected = {k: v.lower() for k, v in (("sha256", sha256), ("md5", md5)) if v}
    if not expected:
        raise ValueError("download_cifar10 needs a sha256 or md5 to verify the download")
    folder = resolve_cache_dir(cache_dir)
    try:
        folder.mkdir(parents=True, exist_ok=True)
        fd, tmp_name = tempfile.mkstemp(dir=folder, prefix=f".{CIFAR10_ARCHIVE}.", suffix=".part")
    except OSError as err:
        raise DataError(f"cannot download {url}: cannot write to {folder} ({err})") from None
    tmp = Path(tmp_name)
    digests = {k: hashlib.new(k) for k in expected}
    try:
        with os.fdopen(fd, "wb") as out, urllib.request.urlopen(url, timeout=60) as response:
            total = int(response.headers.get("Content-Length") or 0)
            with transient_bar(progress, total or None, "downloading CIFAR-10") as advance:
                for block in iter(lambda: response.read(1 << 20), b""):
                    out.write(block)
                    for digest in digests.values():
                        digest.update(block)
                    advance(len(block))
        for kind, want in expected.items():
            got = digests[kind].hexdigest()
            if got != want:
                raise DataError(
                    f"download of {url} failed its checksum ({kind} {got}, expected {want})"
                )
        target = folder / CIFAR10_ARCHIVE
        os.replace(tmp, target)
        return target
    except (OSError, ValueError, http.client.HTTPException) as err:
        reason = getattr(err, "reason", None) or err
        raise DataError(f"cannot download {url}: {reason}") from None
    finally:
        tmp.unlink(missing_ok=True)


# --- resolution ---------------------------------------------------------------------------------


def load_path(
    path: str | os.PathLike,
    *,
    cache_dir: str | os.PathLike | None = None,
    progress: bool = True,
) -> Dataset:
    """Returns the data at ``path``, detecting the binary format or an image folder.

    ``path`` is a folder, ``.tar`` or ``.tar.gz``/``.tgz``; the layout may sit under one
    top-level folder (``cifar-10-batches-bin/``, ``cifar10/``). A folder holding MNIST's or
    Fashion-MNIST's IDX files is read by ``read_idx_folder``, the set told by its checksums.
    """
    path = Path(path).expanduser().absolute()  # provenance names the file unambiguously
    if not path.exists():
        raise DataError(f"data path {path} does not exist")
    if has_idx_files(path):
        return read_idx_folder(path)
    if path.is_dir():
        files = _folder_files(path)
        if _has_cifar100(files):
            return _cifar100_dataset(files, path, None)
        if _has_binary(files):
            return _binary_dataset(files, path, None)
        return _image_dataset(path, _folder_signature(path), lambda: files, cache_dir, progress)
    key = file_sha256(path)
    # Only image archives are cached, so a cache hit needs no look inside the archive; this
    # keeps the second load of 60,000 JPEGs well under a second.
    cached = _load_cache(_cache_file(cache_dir, key))
    if cached is not None:
        return _cached_dataset(path, cached)
    files = _tar_files(path, progress)
    if _has_cifar100(files):
        return _cifar100_dataset(files, path, key)
    if _has_binary(files):
        return _binary_dataset(files, path, key)
    return _image_dataset(path, key, lambda: files, cache_dir, progress)


def _no_cifar_message(folder: Path, reason: str) -> str:
    message = (
        "no CIFAR-10 found: pass --data PATH (cifar-10-binary.tar.gz, an extracted folder, or an "
        f"image folder/tar), set LANDSCAPE_DATA, put {CIFAR10_ARCHIVE} in {folder}, or use "
        f"--data synthetic ({reason})"
    )
    return " ".join(message.split())  # one line, whatever the reason said


def load_dataset(
    spec: str | None = None,
    *,
    cache_dir: str | os.PathLike | None = None,
    download: bool = True,
    progress: bool = True,
) -> Dataset:
    """Returns the data named by ``spec``.

    ``spec`` is ``"synthetic"`` (or ``"synthetic:SEED"``), ``"dln"`` (or ``"dln:SEED"``: the deep
    linear network's regression task, ``dln_dataset``), ``"mnist"``, ``"fashion-mnist"`` (or
    ``NAME:DIR``: the official IDX files, ``load_idx``), a user's ``.npz`` file or data factory
    (``landscape.user_data``), a path (CIFAR-10's or CIFAR-100's binary archive or folder, image
    folder or tar), ``"cifar100"`` (``cifar-100-binary.tar.gz`` in the cache folder), or
    ``"cifar10"``/None for real CIFAR-10 found in this order:
    ``$LANDSCAPE_DATA`` (a path), the cache folder (``cifar-10-binary.tar.gz`` or
    ``cifar-10-batches-bin/``), a download (when ``download``). Never falls back to other data:
    when nothing works it raises ``DataError`` with one line listing the options.
    """
    spec = os.fspath(spec).strip() if spec is not None else None
    if spec is not None and (spec == "synthetic" or spec.startswith("synthetic:")):
        seed = spec.partition(":")[2]
        try:
            return synthetic_dataset(int(seed) if seed else 0)
        except ValueError:
            raise DataError(f"--data {spec!r}: use 'synthetic' or 'synthetic:SEED'") from None
    if spec is not None and (spec == "dln" or spec.startswith("dln:")):
        seed = spec.partition(":")[2]
        try:
            return dln_dataset(int(seed) if seed else 0)
        except ValueError:
            raise DataError(f"--data {spec!r}: use 'dln' or 'dln:SEED'") from None
    if spec is not None and is_idx_spec(spec):  # before user data: "mnist:x" looks like one
        return load_idx(spec, cache_dir)
    if spec is not None and is_user_data(spec):
        return load_user_data(spec)
    if spec == "cifar100":
        archive = resolve_cache_dir(cache_dir) / CIFAR100_ARCHIVE
        if not archive.exists():
            raise DataError(
                f"no CIFAR-100 found: pass --data PATH to {CIFAR100_ARCHIVE} (the official binary "
                f"version) or its extracted folder, or put the archive in {archive.parent}"
            )
        return load_path(archive, cache_dir=cache_dir, progress=progress)
    if spec not in (None, "", "cifar10"):
        return load_path(spec, cache_dir=cache_dir, progress=progress)
    env = os.environ.get("LANDSCAPE_DATA", "").strip()
    if env:
        if not Path(env).expanduser().exists():
            raise DataError(f"LANDSCAPE_DATA={env} does not exist; fix or unset it")
        return load_path(env, cache_dir=cache_dir, progress=progress)
    folder = resolve_cache_dir(cache_dir)
    for candidate in (folder / CIFAR10_ARCHIVE, folder / CIFAR10_FOLDER):
        if candidate.exists():
            return read_cifar10_binary(candidate)
    reason = "downloading is off"
    if download:
        try:
            return read_cifar10_binary(download_cifar10(folder, progress=progress))
        except DataError as err:
            reason = str(err)
    raise DataError(_no_cifar_message(folder, reason))
