"""Data: CIFAR-10 from the official binary archive, image folders, and a synthetic set.

Everything arrives as uint8 NHWC arrays in a ``Dataset``; normalisation happens on the device
inside the compiled step. The batch at step t is ``batch_indices(seed, t, ...)``: a pure function,
so a saved step can be re-probed on exactly the batch it was trained on. No pickle anywhere: the
official *binary* format is parsed directly and caches are ``.npz`` read with
``allow_pickle=False``.
"""

from __future__ import annotations

import functools
import hashlib
import io
import os
import tarfile
import tempfile
import urllib.request
from collections.abc import Iterable
from dataclasses import dataclass
from pathlib import Path, PurePosixPath

import numpy as np

CIFAR10_URL = "https://www.cs.toronto.edu/~kriz/cifar-10-binary.tar.gz"
# The checksum the CIFAR-10 page publishes for the binary version (MD5; no SHA-256 is published).
CIFAR10_MD5 = "c32a1d4ab5d03f1284b67883e8d87530"
CIFAR10_ARCHIVE = "cifar-10-binary.tar.gz"
CIFAR10_CLASSES = (
    "airplane", "automobile", "bird", "cat", "deer", "dog", "frog", "horse", "ship", "truck",
)  # fmt: skip
RECORD_BYTES = 1 + 32 * 32 * 3  # label byte, then 1024 R, 1024 G, 1024 B bytes (row-major)
TRAIN_FILES = tuple(f"data_batch_{i}.bin" for i in range(1, 6))
TEST_FILE = "test_batch.bin"
IMAGE_SUFFIXES = (".png", ".jpg", ".jpeg", ".bmp", ".gif", ".webp")
CACHE_VERSION = 1


class DataError(Exception):
    """Raised with a one-line, user-facing message (the CLI prints it and exits 2)."""


@dataclass(frozen=True, eq=False)
class Dataset:
    """A labelled image classification set held in memory as uint8 arrays."""

    name: str  # human name; says "synthetic" for generated data
    train_images: np.ndarray  # uint8 (N, 32, 32, 3), NHWC
    train_labels: np.ndarray  # int32 (N,)
    test_images: np.ndarray  # uint8 (M, 32, 32, 3)
    test_labels: np.ndarray  # int32 (M,)
    classes: tuple[str, ...]
    source: str  # resolved path, or "synthetic"
    checksum: str  # sha256 hex of the source file (or of the arrays for folders and synthetic)
    mean: np.ndarray  # float32 (3,): per-channel mean of the train images scaled to [0, 1]
    std: np.ndarray  # float32 (3,): per-channel standard deviation, same scale

    @property
    def is_synthetic(self) -> bool:
        return self.source == "synthetic"

    @property
    def num_classes(self) -> int:
        return len(self.classes)


# --- small helpers ------------------------------------------------------------------------------


def resolve_cache_dir(cache_dir: str | os.PathLike | None = None) -> Path:
    """Returns the cache folder: ``cache_dir``, else ``$LANDSCAPE_CACHE``, else ~/.cache/landscape."""
    if cache_dir is not None:
        return Path(cache_dir)
    env = os.environ.get("LANDSCAPE_CACHE")
    return Path(env) if env else Path.home() / ".cache" / "landscape"


def channel_stats(images: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Returns the per-channel mean and std of uint8 images scaled to [0, 1] (float32, (3,))."""
    total = np.zeros(3, np.float64)
    total_sq = np.zeros(3, np.float64)
    count = 0
    for start in range(0, len(images), 5000):  # chunks keep the float copy small
        chunk = images[start : start + 5000].reshape(-1, 3).astype(np.float64) / 255.0
        total += chunk.sum(0)
        total_sq += (chunk**2).sum(0)
        count += chunk.shape[0]
    mean = total / max(count, 1)
    std = np.sqrt(np.maximum(total_sq / max(count, 1) - mean**2, 0.0))
    return mean.astype(np.float32), std.astype(np.float32)


def normalize(images, mean, std):
    """Returns uint8 NHWC images as float32 ``(x / 255 - mean) / std``, per channel.

    Works on numpy and JAX arrays alike (only arithmetic), so it runs inside ``jax.jit``.
    """
    return (images.astype("float32") / 255.0 - mean) / std


def file_sha256(path: str | os.PathLike) -> str:
    """Returns the sha256 hex digest of a file, read in 1 MiB blocks."""
    digest = hashlib.sha256()
    with open(path, "rb") as f:
        for block in iter(lambda: f.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()


def arrays_sha256(*arrays: np.ndarray) -> str:
    """Returns a sha256 over the bytes of the given arrays (identifies in-memory data)."""
    digest = hashlib.sha256()
    for a in arrays:
        digest.update(np.ascontiguousarray(a).tobytes())
    return digest.hexdigest()


def _make_dataset(name, train, test, classes, source, checksum, stats=None) -> Dataset:
    (train_x, train_y), (test_x, test_y) = train, test
    mean, std = stats if stats is not None else channel_stats(train_x)
    return Dataset(
        name=name,
        train_images=train_x,
        train_labels=train_y.astype(np.int32),
        test_images=test_x,
        test_labels=test_y.astype(np.int32),
        classes=tuple(classes),
        source=source,
        checksum=checksum,
        mean=mean,
        std=std,
    )


# --- batches ------------------------------------------------------------------------------------


@functools.lru_cache(maxsize=4)
def _epoch_permutation(seed: int, epoch: int, num_examples: int) -> np.ndarray:
    perm = np.random.default_rng([seed, epoch]).permutation(num_examples).astype(np.int32)
    perm.flags.writeable = False
    return perm


def batch_indices(seed: int, step: int, num_examples: int, batch_size: int) -> np.ndarray:
    """Returns the example indices (int32, (batch_size,)) of the minibatch at ``step``.

    A pure function of its arguments: each epoch is a fresh permutation drawn from
    ``(seed, epoch)``, cut into ``num_examples // batch_size`` batches (the remainder is
    dropped). Any step's batch can be rebuilt without replaying the run.
    """
    if batch_size < 1 or batch_size > num_examples:
        raise ValueError(f"batch size {batch_size} must be between 1 and {num_examples}")
    per_epoch = num_examples // batch_size
    epoch, position = divmod(int(step), per_epoch)
    perm = _epoch_permutation(int(seed), epoch, int(num_examples))
    return perm[position * batch_size : (position + 1) * batch_size].copy()


# --- synthetic ----------------------------------------------------------------------------------


def synthetic_dataset(seed: int = 0, num_train: int = 5000, num_test: int = 1000) -> Dataset:
    """Returns a CIFAR-shaped, learnable synthetic set generated from ``seed``.

    Each of the 10 classes has a smooth random template (an upsampled 4x4 colour pattern);
    an image is its class template, randomly shifted by up to 2 pixels and scaled in contrast,
    plus pixel noise. A small VGG fits it well above chance in a few hundred steps, but not
    instantly. It is NOT real data and says so in its name.
    """
    rng = np.random.default_rng(seed)
    coarse = rng.uniform(0.0, 1.0, size=(10, 4, 4, 3))
    templates = np.repeat(np.repeat(coarse, 8, axis=1), 8, axis=2)  # (10, 32, 32, 3) in [0, 1]
    templates = 0.5 * templates + 0.5 * templates.mean(axis=(1, 2), keepdims=True)

    def make(count: int) -> tuple[np.ndarray, np.ndarray]:
        labels = np.arange(count) % 10
        rng.shuffle(labels)
        shifts = rng.integers(-2, 3, size=(count, 2))
        contrast = rng.uniform(0.6, 1.4, size=(count, 1, 1, 1))
        base = templates[labels]
        shifted = np.empty_like(base)
        for i, (dy, dx) in enumerate(shifts):
            shifted[i] = np.roll(base[i], (dy, dx), axis=(0, 1))
        images = 0.5 + contrast * (shifted - 0.5) + rng.normal(0.0, 0.25, size=base.shape)
        return (np.clip(images, 0.0, 1.0) * 255).round().astype(np.uint8), labels.astype(np.int32)

    train, test = make(num_train), make(num_test)
    return _make_dataset(
        f"synthetic (seed {seed}, NOT real CIFAR-10)",
        train,
        test,
        [f"class_{i}" for i in range(10)],
        "synthetic",
        arrays_sha256(train[0], train[1], test[0], test[1]),
    )


# --- the official binary format -----------------------------------------------------------------


def parse_binary_records(data: bytes, name: str) -> tuple[np.ndarray, np.ndarray]:
    """Returns (images uint8 NHWC, labels int32) from the bytes of one ``*.bin`` file."""
    if len(data) == 0 or len(data) % RECORD_BYTES:
        raise DataError(
            f"{name}: {len(data)} bytes is not a whole number of {RECORD_BYTES}-byte CIFAR-10 "
            "records (truncated or not the binary version)"
        )
    records = np.frombuffer(data, np.uint8).reshape(-1, RECORD_BYTES)
    labels = records[:, 0].astype(np.int32)
    if labels.max() > 9:
        raise DataError(f"{name}: label {labels.max()} out of range 0-9 (not CIFAR-10 binary data)")
    images = records[:, 1:].reshape(-1, 3, 32, 32).transpose(0, 2, 3, 1)
    return np.ascontiguousarray(images), labels


def _find_binary_members(names: Iterable[str]) -> dict[str, str] | None:
    """Maps each expected ``*.bin`` file to its member path, or None if the set is incomplete."""
    by_base: dict[str, str] = {}
    for name in names:
        base = PurePosixPath(name).name
        if base in (*TRAIN_FILES, TEST_FILE, "batches.meta.txt"):
            by_base.setdefault(base, name)
    if not any(b in by_base for b in (*TRAIN_FILES, TEST_FILE)):
        return None
    return by_base


def _classes_from_meta(text: str | None) -> tuple[str, ...]:
    if text:
        names = tuple(line.strip() for line in text.splitlines() if line.strip())
        if len(names) == 10:
            return names
    return CIFAR10_CLASSES


def read_cifar10_binary(path: str | os.PathLike) -> Dataset:
    """Returns CIFAR-10 read from the official binary archive (``.tar.gz``) or its folder."""
    path = Path(path)
    if path.is_dir():
        members = _find_binary_members(str(p.relative_to(path)) for p in path.rglob("*.bin*"))
        if members is None:
            raise DataError(f"{path}: no CIFAR-10 binary files (data_batch_1.bin ...) found")

        def read(base: str) -> bytes:
            if base not in members:
                raise DataError(f"{path}: missing {base}")
            return (path / members[base]).read_bytes()

        checksum = arrays_sha256(
            *(np.frombuffer(read(b), np.uint8) for b in (*TRAIN_FILES, TEST_FILE))
        )
        return _assemble_binary(read, path, checksum)
    try:
        with tarfile.open(path, "r:*") as tar:
            members = _find_binary_members(m.name for m in tar.getmembers() if m.isfile())
            if members is None:
                raise DataError(f"{path}: no CIFAR-10 binary files (data_batch_1.bin ...) inside")

            def read(base: str) -> bytes:
                if base not in members:
                    raise DataError(f"{path}: missing {base} inside the archive")
                handle = tar.extractfile(members[base])
                if handle is None:
                    raise DataError(f"{path}: {members[base]} is not a regular file")
                return handle.read()

            return _assemble_binary(read, path, file_sha256(path))
    except (tarfile.TarError, OSError, EOFError) as err:
        raise DataError(f"{path}: cannot read the archive ({err})") from None


def _assemble_binary(read, path: Path, checksum: str) -> Dataset:
    parts = [parse_binary_records(read(b), b) for b in TRAIN_FILES]
    train = (np.concatenate([p[0] for p in parts]), np.concatenate([p[1] for p in parts]))
    test = parse_binary_records(read(TEST_FILE), TEST_FILE)
    try:
        meta = read("batches.meta.txt").decode("utf-8", "replace")
    except DataError:
        meta = None
    return _make_dataset("cifar10", train, test, _classes_from_meta(meta), str(path), checksum)


# --- image folders ------------------------------------------------------------------------------


def _check_member(name: str, archive: Path) -> None:
    parts = PurePosixPath(name).parts
    if name.startswith("/") or ".." in parts:
        raise DataError(f"{archive}: unsafe path {name!r} in the archive; refusing to read it")


def _split_of(parts: tuple[str, ...]) -> tuple[str, str] | None:
    """Returns (split, class) for .../train/<class>/<file> or .../test/<class>/<file>."""
    if len(parts) < 3 or parts[-3] not in ("train", "test"):
        return None
    return parts[-3], parts[-2]


def _decode(data: bytes, name: str) -> np.ndarray:
    from PIL import Image, UnidentifiedImageError

    try:
        with Image.open(io.BytesIO(data)) as img:
            array = np.asarray(img.convert("RGB"), dtype=np.uint8)
    except (UnidentifiedImageError, OSError) as err:
        raise DataError(f"{name}: not a readable image ({err})") from None
    if array.shape != (32, 32, 3):
        raise DataError(f"{name}: image is {array.shape[1]}x{array.shape[0]}, expected 32x32")
    return array


def _image_entries(path: Path):
    """Yields (split, class, name, read) for every image file of a folder or tar archive."""
    if path.is_dir():
        for file in sorted(path.rglob("*")):
            if file.suffix.lower() in IMAGE_SUFFIXES and file.is_file():
                where = _split_of(file.relative_to(path).parts)
                if where:
                    yield (*where, str(file), file.read_bytes)
        return
    with tarfile.open(path, "r:*") as tar:
        for member in tar:
            _check_member(member.name, path)
            if (
                not member.isfile()
                or PurePosixPath(member.name).suffix.lower() not in IMAGE_SUFFIXES
            ):
                continue
            where = _split_of(PurePosixPath(member.name).parts)
            if where:
                data = tar.extractfile(member).read()
                yield (*where, member.name, lambda data=data: data)


def _folder_key(path: Path) -> str:
    if path.is_file():
        return file_sha256(path)
    digest = hashlib.sha256()
    for file in sorted(path.rglob("*")):
        if file.is_file():
            stat = file.stat()
            digest.update(f"{file.relative_to(path)}:{stat.st_size}:{stat.st_mtime_ns}\n".encode())
    return digest.hexdigest()


def read_image_folder(
    path: str | os.PathLike,
    *,
    cache_dir: str | os.PathLike | None = None,
    progress: bool = True,
) -> Dataset:
    """Returns the images of ``train/<class>/*`` and ``test/<class>/*`` in a folder or tar.

    Decoding happens once: the arrays are cached as an ``.npz`` in the cache folder, keyed by the
    source's sha256 (a folder: its file names, sizes and times), and written atomically.
    """
    path = Path(path)
    key = _folder_key(path)
    cache = resolve_cache_dir(cache_dir) / f"imagefolder-v{CACHE_VERSION}-{key[:32]}.npz"
    name = f"cifar10 (image folder: {path.name})"
    cached = _load_cache(cache)
    if cached is not None:
        train, test, classes, stats = cached
        return _make_dataset(name, train, test, classes, str(path), key, stats)
    try:
        train, test, classes = _decode_folder(path, progress)
    except (tarfile.TarError, OSError, EOFError) as err:
        raise DataError(f"{path}: cannot read ({err})") from None
    dataset = _make_dataset(name, train, test, classes, str(path), key)
    _save_cache(cache, dataset)
    return dataset


def _decode_folder(path: Path, progress: bool):
    images: dict[str, list] = {"train": [], "test": []}
    labels: dict[str, list] = {"train": [], "test": []}
    entries = list(_image_entries(path))
    if not entries:
        raise DataError(f"{path}: no images under train/<class>/ and test/<class>/")
    classes = sorted({c for split, c, _, _ in entries if split == "train"})
    test_classes = sorted({c for split, c, _, _ in entries if split == "test"})
    if not classes or test_classes != classes:
        raise DataError(
            f"{path}: train/ and test/ must hold the same class folders "
            f"(train: {len(classes)}, test: {len(test_classes)})"
        )
    index = {c: i for i, c in enumerate(classes)}
    bar = _progress_bar(progress, len(entries), f"decoding {path.name}")
    with bar as advance:
        for split, cls, name, read in entries:
            images[split].append(_decode(read(), name))
            labels[split].append(index[cls])
            advance()
    train = (np.stack(images["train"]), np.asarray(labels["train"], np.int32))
    test = (np.stack(images["test"]), np.asarray(labels["test"], np.int32))
    return train, test, classes


def _load_cache(cache: Path):
    if not cache.exists():
        return None
    try:
        with np.load(cache, allow_pickle=False) as z:
            train = (z["train_images"], z["train_labels"])
            test = (z["test_images"], z["test_labels"])
            classes = [str(c) for c in z["classes"]]
            stats = (z["mean"].astype(np.float32), z["std"].astype(np.float32))
        return train, test, classes, stats
    except (OSError, ValueError, KeyError):
        return None  # a corrupt cache is rebuilt, never trusted


def _save_cache(cache: Path, ds: Dataset) -> None:
    try:
        cache.parent.mkdir(parents=True, exist_ok=True)
        fd, tmp = tempfile.mkstemp(dir=cache.parent, suffix=".npz.tmp")
        with os.fdopen(fd, "wb") as f:
            np.savez(
                f,
                train_images=ds.train_images,
                train_labels=ds.train_labels,
                test_images=ds.test_images,
                test_labels=ds.test_labels,
                classes=np.asarray(ds.classes, dtype=str),
                mean=ds.mean,
                std=ds.std,
            )
        os.replace(tmp, cache)
    except OSError:
        pass  # a cache we cannot write only costs time next run


class _NoBar:
    def __enter__(self):
        return lambda n=1: None

    def __exit__(self, *exc):
        return False


class _Bar:
    def __init__(self, total: int, description: str):
        from rich.progress import Progress

        self._progress = Progress(transient=True)
        self._task = self._progress.add_task(description, total=total)

    def __enter__(self):
        self._progress.start()
        return lambda n=1: self._progress.advance(self._task, n)

    def __exit__(self, *exc):
        self._progress.stop()
        return False


def _progress_bar(enabled: bool, total: int, description: str):
    return _Bar(total, description) if enabled else _NoBar()


# --- download -----------------------------------------------------------------------------------


def download_cifar10(
    cache_dir: str | os.PathLike | None = None,
    *,
    url: str = CIFAR10_URL,
    md5: str = CIFAR10_MD5,
    progress: bool = True,
) -> Path:
    """Downloads the official binary archive into the cache folder and returns its path.

    The file is written under a temporary name and renamed only after its checksum matched, so
    a failed or interrupted download leaves nothing that would be taken for the archive.
    """
    folder = resolve_cache_dir(cache_dir)
    folder.mkdir(parents=True, exist_ok=True)
    target = folder / CIFAR10_ARCHIVE
    fd, tmp_name = tempfile.mkstemp(dir=folder, suffix=".part")
    tmp = Path(tmp_name)
    digest = hashlib.md5()
    try:
        with os.fdopen(fd, "wb") as out, urllib.request.urlopen(url, timeout=60) as response:
            total = int(response.headers.get("Content-Length") or 0)
            with _progress_bar(progress and total > 0, total, "downloading CIFAR-10") as advance:
                for block in iter(lambda: response.read(1 << 20), b""):
                    out.write(block)
                    digest.update(block)
                    advance(len(block))
        if digest.hexdigest() != md5:
            raise DataError(
                f"download of {url} failed its checksum (md5 {digest.hexdigest()}, expected {md5})"
            )
        os.replace(tmp, target)
        return target
    except (OSError, ValueError) as err:
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
    """Returns the data at ``path``, detecting the binary format or an image folder."""
    path = Path(path).expanduser().absolute()  # provenance names the file unambiguously
    if not path.exists():
        raise DataError(f"data path {path} does not exist")
    if path.is_dir():
        if any(path.rglob("data_batch_1.bin")):
            return read_cifar10_binary(path)
        return read_image_folder(path, cache_dir=cache_dir, progress=progress)
    try:
        with tarfile.open(path, "r:*") as tar:
            names = tar.getnames()
    except (tarfile.TarError, OSError, EOFError) as err:
        raise DataError(f"{path}: not a folder or a readable tar archive ({err})") from None
    for name in names:
        _check_member(name, path)
    if _find_binary_members(names) is not None:
        return read_cifar10_binary(path)
    return read_image_folder(path, cache_dir=cache_dir, progress=progress)


def load_dataset(
    spec: str | None = None,
    *,
    cache_dir: str | os.PathLike | None = None,
    download: bool = True,
    progress: bool = True,
) -> Dataset:
    """Returns the data named by ``spec``.

    ``spec`` is ``"synthetic"`` (or ``"synthetic:SEED"``), a path (binary archive or folder,
    image folder or tar), or ``"cifar10"``/None for real CIFAR-10 found in this order:
    ``$LANDSCAPE_DATA``, the cache folder, a download. Never falls back to other data: when
    nothing works it raises ``DataError`` listing the options.
    """
    if spec is not None and spec.startswith("synthetic"):
        _, _, seed = spec.partition(":")
        try:
            return synthetic_dataset(int(seed) if seed else 0)
        except ValueError:
            raise DataError(f"--data {spec!r}: use 'synthetic' or 'synthetic:SEED'") from None
    if spec not in (None, "", "cifar10"):
        return load_path(spec, cache_dir=cache_dir, progress=progress)
    env = os.environ.get("LANDSCAPE_DATA")
    if env:
        return load_path(env, cache_dir=cache_dir, progress=progress)
    folder = resolve_cache_dir(cache_dir)
    for candidate in (folder / CIFAR10_ARCHIVE, folder / "cifar-10-batches-bin"):
        if candidate.exists():
            return read_cifar10_binary(candidate)
    reason = "downloading is off"
    if download:
        try:
            return read_cifar10_binary(download_cifar10(folder, progress=progress))
        except DataError as err:
            reason = str(err)
    raise DataError(
        "no CIFAR-10 found: pass --data PATH (cifar-10-binary.tar.gz, its folder, or an image "
        f"folder/tar), set LANDSCAPE_DATA, put {CIFAR10_ARCHIVE} in {folder}, or use --data "
        f"synthetic ({reason})"
    )
