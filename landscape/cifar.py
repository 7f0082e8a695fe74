"""CIFAR-10 and CIFAR-100 from their official *binary* versions (Krizhevsky 2009), and CIFAR-10's
download.

The records are parsed directly (no pickle): a label byte (CIFAR-100: a coarse and a fine one),
then the image as three row-major 32x32 planes. ``read_cifar10_binary`` takes the archive or its
extracted folder; ``landscape.data.load_path`` finds either set by its file names.
"""

from __future__ import annotations

import hashlib
import http.client
import os
import tempfile
import urllib.request
from collections.abc import Mapping
from pathlib import Path

import numpy as np

from landscape.archives import Source, read_source, source_files
from landscape.dataset import DataError, Dataset, file_sha256, make_dataset, resolve_cache_dir
from landscape.progress import transient_bar

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


def is_binary_name(name: str) -> bool:
    """Returns True for a file of either binary version (data, test or class-name file)."""
    base = name.rsplit("/", 1)[-1]
    return base in (
        *TRAIN_FILES,
        TEST_FILE,
        META_FILE,
        CIFAR100_TRAIN,
        CIFAR100_TEST,
        CIFAR100_NAMES,
    )


def has_binary(files: Mapping[str, Source]) -> bool:
    """Returns True when ``files`` hold a CIFAR-10 data or test batch."""
    return any(n.rsplit("/", 1)[-1] in (*TRAIN_FILES, TEST_FILE) for n in files)


def has_cifar100(files: Mapping[str, Source]) -> bool:
    """Returns True when ``files`` hold CIFAR-100's train.bin or test.bin."""
    return any(n.rsplit("/", 1)[-1] in (CIFAR100_TRAIN, CIFAR100_TEST) for n in files)


# --- the records --------------------------------------------------------------------------------


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


def binary_dataset(files: Mapping[str, Source], path: Path, checksum: str | None) -> Dataset:
    """Returns CIFAR-10 from its binary files in ``files`` (found by base name; ``path`` and
    ``checksum`` are the dataset's source and checksum, None: the arrays' sha256)."""
    by_base: dict[str, str] = {}
    for name in sorted(files):
        by_base.setdefault(name.rsplit("/", 1)[-1], name)

    def read(base: str) -> tuple[np.ndarray, np.ndarray]:
        if base not in by_base:
            raise DataError(
                f"{path}: missing {base} (expected data_batch_1..5.bin, test_batch.bin)"
            )
        return parse_binary_records(read_source(files[by_base[base]]), f"{path}: {by_base[base]}")

    parts = [read(base) for base in TRAIN_FILES]
    train = (np.concatenate([p[0] for p in parts]), np.concatenate([p[1] for p in parts]))
    test = read(TEST_FILE)
    meta = (
        read_source(files[by_base[META_FILE]]).decode("utf-8", "replace")
        if META_FILE in by_base
        else None
    )
    return make_dataset("cifar10", train, test, _classes_from_meta(meta), path, checksum)


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


def cifar100_dataset(files: Mapping[str, Source], path: Path, checksum: str | None) -> Dataset:
    """Returns CIFAR-100 (fine labels) from its binary files in ``files``, as ``binary_dataset``."""
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
            parse_cifar100_records(read_source(files[by_base[base]]), f"{path}: {by_base[base]}")
        )
    names = ()
    if CIFAR100_NAMES in by_base:
        text = read_source(files[by_base[CIFAR100_NAMES]]).decode("utf-8", "replace")
        names = tuple(line.strip() for line in text.splitlines() if line.strip())
    classes = names if len(names) == 100 else tuple(f"class{i}" for i in range(100))
    return make_dataset("cifar100", splits[0], splits[1], classes, path, checksum)


def read_cifar10_binary(path: str | os.PathLike) -> Dataset:
    """Returns CIFAR-10 read from the official binary archive (``.tar.gz``/``.tar``) or its folder.

    The checksum is the archive file's sha256, or for a folder the sha256 of the arrays.
    """
    path = Path(path).expanduser().absolute()
    files = source_files(path, is_binary_name)
    if not has_binary(files):
        raise DataError(f"{path}: no CIFAR-10 binary files (data_batch_1.bin ...) found")
    return binary_dataset(files, path, None if path.is_dir() else file_sha256(path))


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
