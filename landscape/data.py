"""Data: ``load_dataset`` turns a ``--data`` spec into a ``Dataset``; also the synthetic set, the
regression task of the paper's deep linear network (App. A.1), a user's arrays, and the batch
at each step.

The loaders live in their own modules and this one dispatches to them: ``cifar`` (CIFAR-10 and
CIFAR-100 from the official binary archives, CIFAR-10's download), ``image_folders`` (folders or
tars of ``train/<class>/<image>``, cached), ``mnist`` (MNIST and Fashion-MNIST from the official
IDX files), ``user_data`` (a user's ``.npz`` or data factory); ``archives`` reads folders and tar
archives for them and ``dataset`` holds the ``Dataset`` they all return. Their public names are
importable from here too.

The batch at step t is ``batch_indices(seed, t, ...)``: a pure function, so a saved step can be
re-probed on exactly the batch it was trained on. No pickle anywhere: the official *binary*
format is parsed directly, archives are read member by member in memory (never extracted), and
caches are ``.npz`` read with ``allow_pickle=False``.
"""

from __future__ import annotations

import functools
import os
from pathlib import Path

import numpy as np

from landscape.archives import COMPRESSION_MAGIC, Source, folder_files, tar_files
from landscape.cifar import (
    CIFAR10_ARCHIVE,
    CIFAR10_CLASSES,
    CIFAR10_FOLDER,
    CIFAR10_MD5,
    CIFAR10_SHA256,
    CIFAR10_URL,
    CIFAR100_ARCHIVE,
    CIFAR100_NAMES,
    CIFAR100_RECORD_BYTES,
    CIFAR100_TEST,
    CIFAR100_TRAIN,
    META_FILE,
    RECORD_BYTES,
    TEST_FILE,
    TRAIN_FILES,
    binary_dataset,
    cifar100_dataset,
    download_cifar10,
    has_binary,
    has_cifar100,
    parse_binary_records,
    parse_cifar100_records,
    read_cifar10_binary,
)
from landscape.dataset import (
    DataError,
    Dataset,
    arrays_sha256,
    channel_stats,
    file_sha256,
    make_dataset,
    normalize,
    resolve_cache_dir,
)
from landscape.image_folders import (
    CACHE_VERSION,
    CIFAR10_SIZES,
    IMAGE_FORMATS,
    cache_file,
    cached_dataset,
    folder_signature,
    image_dataset,
    is_data_file,
    load_cache,
    read_image_folder,
)
from landscape.mnist import (
    HELD_OUT_EVERY,
    IDX_CLASSES,
    IDX_FILES,
    IDX_GZ_MD5,
    IDX_MD5,
    IDX_SETS,
    IDX_SIZES,
    IDX_UBYTE,
    has_idx_files,
    idx_default_folder,
    is_idx_spec,
    load_idx,
    parse_idx,
    read_idx_file,
    read_idx_folder,
)
from landscape.plugins import DATA_GROUP, is_import_path, registered
from landscape.user_data import Arrays, UserDataError, from_factory, read_npz

# The public names: this module's own and, re-exported so a caller need not know which module
# holds each loader, the loaders'. Rebinding a re-exported name here changes nothing in its loader
# (a test patches the loader's module).
__all__ = [
    "CACHE_VERSION", "CIFAR10_ARCHIVE", "CIFAR10_CLASSES", "CIFAR10_FOLDER", "CIFAR10_MD5",
    "CIFAR10_SHA256", "CIFAR10_SIZES", "CIFAR10_URL", "CIFAR100_ARCHIVE", "CIFAR100_NAMES",
    "CIFAR100_RECORD_BYTES", "CIFAR100_TEST", "CIFAR100_TRAIN", "COMPRESSION_MAGIC",
    "HELD_OUT_EVERY", "IDX_CLASSES", "IDX_FILES", "IDX_GZ_MD5", "IDX_MD5", "IDX_SETS", "IDX_SIZES",
    "IDX_UBYTE", "IMAGE_FORMATS", "META_FILE", "RECORD_BYTES", "TEST_FILE", "TRAIN_FILES",
    "DataError", "Dataset", "Source", "arrays_dataset", "arrays_sha256", "batch_indices",
    "channel_stats", "dln_dataset", "download_cifar10", "file_sha256", "has_idx_files",
    "idx_default_folder", "is_idx_spec", "is_user_data", "load_dataset", "load_idx", "load_path",
    "load_user_data", "normalize", "parse_binary_records", "parse_cifar100_records", "parse_idx",
    "read_cifar10_binary", "read_idx_file", "read_idx_folder", "read_image_folder",
    "resolve_cache_dir", "synthetic_dataset",
]  # fmt: skip


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
    return make_dataset(
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
        files = folder_files(path, is_data_file)
        if has_cifar100(files):
            return cifar100_dataset(files, path, None)
        if has_binary(files):
            return binary_dataset(files, path, None)
        return image_dataset(path, folder_signature(path), lambda: files, cache_dir, progress)
    key = file_sha256(path)
    # Only image archives are cached, so a cache hit needs no look inside the archive; this
    # keeps the second load of 60,000 JPEGs well under a second.
    cached = load_cache(cache_file(cache_dir, key))
    if cached is not None:
        return cached_dataset(path, cached)
    files = tar_files(path, is_data_file, progress)
    if has_cifar100(files):
        return cifar100_dataset(files, path, key)
    if has_binary(files):
        return binary_dataset(files, path, key)
    return image_dataset(path, key, lambda: files, cache_dir, progress)


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
