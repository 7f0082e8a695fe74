"""Image folders: ``train/<class>/<image>`` and ``test/<class>/<image>`` in a folder or tar
archive (CIFAR-10's JPEG archive is one), decoded once and cached as ``.npz``.

Images must be 32x32; they are decoded with PIL and the arrays cached in the cache folder, read
back with ``allow_pickle=False`` and checked before use (a damaged cache is rebuilt, never
trusted). A set in CIFAR-10's classes with fewer images than CIFAR-10 is refused as a partial copy.
"""

from __future__ import annotations

import hashlib
import io
import os
import tempfile
import zipfile
import zlib
from collections.abc import Callable, Mapping
from pathlib import Path, PurePosixPath

import numpy as np

from landscape.archives import Source, folder_files, read_source, source_files
from landscape.cifar import CIFAR10_CLASSES, is_binary_name
from landscape.dataset import DataError, Dataset, file_sha256, make_dataset, resolve_cache_dir
from landscape.progress import transient_bar

# Naming the decoder up front skips PIL's trial of every plugin: about a third of decode time.
IMAGE_FORMATS = {
    ".png": "PNG", ".jpg": "JPEG", ".jpeg": "JPEG", ".bmp": "BMP", ".gif": "GIF", ".webp": "WEBP",
}  # fmt: skip
# 3: caches made before archives were checked whole may hold a partial read; never trusted.
CACHE_VERSION = 3
# CIFAR-10's split sizes. An image set in its ten classes with fewer images is a partial copy or
# extraction: refused, never trained on. (More is another set: CINIC-10 uses the same classes.)
CIFAR10_SIZES = {"train": 50_000, "test": 10_000}


def image_split(name: str) -> tuple[str, str] | None:
    """Returns (split, class) for .../train/<class>/<image> or .../test/<class>/<image>."""
    parts = name.split("/")
    base = parts[-1]
    # macOS archives carry "._name" resource forks beside each image: they are not images.
    if len(parts) < 3 or parts[-3] not in ("train", "test") or base.startswith("."):
        return None
    if PurePosixPath(base).suffix.lower() not in IMAGE_FORMATS:
        return None
    return parts[-3], parts[-2]


def is_data_file(name: str) -> bool:
    """Returns True for the files ``landscape.data.load_path`` keeps from a folder or archive:
    CIFAR's binary files and images under train/ and test/ (the folder signature covers both)."""
    return is_binary_name(name) or image_split(name) is not None


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
    entries = sorted((*where, name) for name in files if (where := image_split(name)))
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
                images[i] = _decode(read_source(files[name]), name)
                advance()
            splits[split] = (images, np.array([index[c] for c, _ in chosen], np.int32))
    return splits["train"], splits["test"], classes


def folder_signature(path: Path) -> str:
    """Returns a sha256 over a folder's relevant file names, sizes and modification times."""
    digest = hashlib.sha256()
    for name, file in sorted(folder_files(path, is_data_file).items()):
        stat = file.stat()
        digest.update(f"{name}\0{stat.st_size}\0{stat.st_mtime_ns}\n".encode())
    return digest.hexdigest()


def cache_file(cache_dir: str | os.PathLike | None, key: str) -> Path:
    """Returns the cache file of the image set identified by ``key`` (a sha256 hex digest)."""
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


def cached_dataset(path: Path, cached) -> Dataset:
    """Returns the dataset of a cache ``load_cache`` read (refused as a partial CIFAR-10 copy as
    a decoded one would be)."""
    train, test, classes, checksum, stats = cached
    _check_known_size(path, classes, train[0], test[0])
    name = _image_folder_name(path, classes)
    return make_dataset(name, train, test, classes, path, checksum, stats)


def image_dataset(
    path: Path,
    key: str,
    files: Callable[[], Mapping[str, Source]],
    cache_dir: str | os.PathLike | None,
    progress: bool,
) -> Dataset:
    """Returns the image set at ``path`` from its cache, or decodes ``files()`` and caches it."""
    cache = cache_file(cache_dir, key)
    cached = load_cache(cache)
    if cached is not None:
        return cached_dataset(path, cached)
    train, test, classes = _decode_images(files(), path, progress)
    _check_known_size(path, classes, train[0], test[0])  # before anything is cached
    checksum = None if path.is_dir() else key  # a folder is identified by its arrays
    dataset = make_dataset(_image_folder_name(path, classes), train, test, classes, path, checksum)
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
    key = folder_signature(path) if path.is_dir() else file_sha256(path)
    return image_dataset(
        path, key, lambda: source_files(path, is_data_file, progress), cache_dir, progress
    )


_CACHE_KEYS = ("train_images", "train_labels", "test_images", "test_labels", "classes")


def load_cache(cache: Path):
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
