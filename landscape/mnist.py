"""MNIST and Fashion-MNIST from the official IDX files.

Both sets are four files in LeCun's IDX format (a magic number giving the element type and the
number of dimensions, each dimension as a big-endian uint32, then the values), published gzipped.
The loader reads them gzipped or not, verifies each file's uncompressed bytes against the
published checksums, and never writes them anywhere (docs/experiments.md#mnist-and-fashion-mnist).
"""

from __future__ import annotations

import gzip
import hashlib
import math
import os
import zlib
from collections.abc import Mapping
from pathlib import Path

import numpy as np

from landscape.dataset import DataError, Dataset, make_dataset, resolve_cache_dir

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
    return make_dataset(title, copy(train), copy(test), IDX_CLASSES[kind], folder)


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
