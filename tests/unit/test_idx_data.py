"""MNIST and Fashion-MNIST's IDX format on tiny synthetic files: the header, gzipped and raw
files, the split of a test-only folder, checksums, and one-line errors for wrong, cut or
mislabelled files (the real files: integration/test_mnist_real.py)."""

import gzip
import hashlib
import re
import struct

import numpy as np
import pytest

from landscape import data, mnist
from landscape.data import DataError, load_dataset, parse_idx, read_idx_file, read_idx_folder


def idx_bytes(array: np.ndarray, type_code: int = 0x08) -> bytes:
    """Returns ``array`` (uint8) in the IDX format: 0, 0, type, ndim, big-endian dims, values."""
    header = bytes([0, 0, type_code, array.ndim]) + struct.pack(f">{array.ndim}I", *array.shape)
    return header + np.ascontiguousarray(array, np.uint8).tobytes()


def tiny_set(count: int, seed: int = 0) -> tuple[np.ndarray, np.ndarray]:
    rng = np.random.default_rng(seed)
    images = rng.integers(0, 256, size=(count, 28, 28), dtype=np.uint8)
    return images, (np.arange(count) % 10).astype(np.uint8)


def write_set(folder, split, images, labels, gz=True, dotted=False):
    """Writes one split's image and label files under MNIST's names; returns their md5s
    (uncompressed contents) by role."""
    prefix = "train" if split == "train" else "t10k"
    md5s = {}
    for kind, array, ndim in (("images", images, 3), ("labels", labels, 1)):
        raw = idx_bytes(array)
        name = f"{prefix}-{kind}{'.' if dotted else '-'}idx{ndim}-ubyte"
        (folder / (name + (".gz" if gz else ""))).write_bytes(gzip.compress(raw) if gz else raw)
        md5s[f"{split}_{kind}"] = hashlib.md5(raw).hexdigest()
    return md5s


@pytest.mark.parametrize("gz", [True, False])
def test_header_and_values_round_trip_gzipped_or_not(tmp_path, gz):
    images, labels = tiny_set(7)
    write_set(tmp_path, "test", images, labels, gz=gz)
    raw = read_idx_file(tmp_path / f"t10k-images-idx3-ubyte{'.gz' if gz else ''}")
    assert raw[:4] == b"\x00\x00\x08\x03" and struct.unpack(">3I", raw[4:16]) == (7, 28, 28)
    parsed = parse_idx(raw, "images", 3)
    assert parsed.shape == (7, 28, 28) and parsed.dtype == np.uint8
    np.testing.assert_array_equal(parsed, images)
    np.testing.assert_array_equal(parse_idx(idx_bytes(labels), "labels", 1), labels)


@pytest.mark.parametrize(
    "content, message",
    [
        (b"\x89PNG\r\n\x1a\n" + bytes(40), "not an IDX file (magic number 89504e47, expected 00000803)"),
        (b"", "not an IDX file (magic number missing"),
        (bytes([0, 0, 0x0D, 3]) + bytes(12), "type 0x0d with 3 dimensions, expected unsigned bytes"),
        (bytes([0, 0, 0x08, 1]) + bytes(12), "with 1 dimensions, expected unsigned bytes (0x08) with 3"),
        (bytes([0, 0, 0x08, 3, 0, 0]), "truncated inside its header"),
    ],
)  # fmt: skip
def test_a_wrong_file_is_one_line(content, message):
    with pytest.raises(DataError, match=re.escape(message)) as err:
        parse_idx(content, "images", 3)
    assert "\n" not in str(err.value)


def test_truncated_and_overlong_files_are_refused(tmp_path):
    images, _ = tiny_set(3)
    raw = idx_bytes(images)
    with pytest.raises(DataError, match=r"truncated: a 3 x 28 x 28 IDX array takes 2,368 bytes"):
        parse_idx(raw[:-1], "images", 3)
    with pytest.raises(DataError, match="longer than its header says"):
        parse_idx(raw + b"\x00", "images", 3)
    # A gzip stream cut short (a partial download) is refused before anything is parsed.
    cut = tmp_path / "t10k-images-idx3-ubyte.gz"
    cut.write_bytes(gzip.compress(raw)[:-20])
    with pytest.raises(DataError, match="a damaged or incomplete gzip file") as err:
        read_idx_file(cut)
    assert "\n" not in str(err.value)


def test_a_test_only_folder_is_split_every_fifth_image_held_out(tmp_path):
    images, labels = tiny_set(20)
    md5s = write_set(tmp_path, "test", images, labels)
    ds = read_idx_folder(tmp_path, "mnist", md5s={"mnist": md5s})
    held = [4, 9, 14, 19]
    kept = [i for i in range(20) if i not in held]
    assert ds.train_images.shape == (16, 28, 28, 1) and ds.test_images.shape == (4, 28, 28, 1)
    np.testing.assert_array_equal(ds.test_images[..., 0], images[held])
    np.testing.assert_array_equal(ds.train_images[..., 0], images[kept])
    np.testing.assert_array_equal(ds.test_labels, labels[held])
    assert ds.train_labels.dtype == np.int32 and ds.classes == tuple("0123456789")
    assert "official test set only" in ds.name and "16 train / 4 held out" in ds.name
    assert ds.source == str(tmp_path) and not ds.is_synthetic
    np.testing.assert_allclose(ds.mean, [images[kept].mean() / 255], rtol=1e-5)
    np.testing.assert_allclose(ds.std, [(images[kept] / 255).std()], rtol=1e-4)


def test_with_the_training_pair_the_official_split_is_used_unchanged(tmp_path):
    train, test = tiny_set(12, seed=1), tiny_set(5, seed=2)
    md5s = write_set(tmp_path, "train", *train, gz=False, dotted=True)
    md5s |= write_set(tmp_path, "test", *test)
    ds = read_idx_folder(tmp_path, md5s={"fashion-mnist": md5s})  # told by the checksums
    assert ds.name == "fashion-mnist" and ds.classes[0] == "T-shirt/top"
    np.testing.assert_array_equal(ds.train_images[..., 0], train[0])
    np.testing.assert_array_equal(ds.test_labels, test[1])


def test_checksums_refuse_a_changed_file_and_name_it(tmp_path):
    images, labels = tiny_set(10)
    md5s = write_set(tmp_path, "test", images, labels)
    images[3, 5, 5] ^= 1  # one bit of one pixel: the structure is still whole
    write_set(tmp_path, "test", images, labels)
    with pytest.raises(DataError, match=r"t10k-images-idx3-ubyte\.gz: not the official mnist") as e:
        read_idx_folder(tmp_path, "mnist", md5s={"mnist": md5s})
    assert md5s["test_images"] in str(e.value) and "\n" not in str(e.value)
    with pytest.raises(DataError, match="not an official MNIST or Fashion-MNIST"):
        read_idx_folder(tmp_path, md5s={"mnist": md5s})


def test_missing_and_mismatched_files_are_one_line(tmp_path):
    images, labels = tiny_set(10)
    md5s = write_set(tmp_path, "test", images, labels)
    (tmp_path / "t10k-labels-idx1-ubyte.gz").unlink()
    with pytest.raises(DataError, match="missing t10k-labels-idx1-ubyte"):
        read_idx_folder(tmp_path, "mnist", md5s={"mnist": md5s})
    # Labels for fewer images than there are: refused, whatever their checksums.
    md5s = write_set(tmp_path, "test", images, labels[:9])
    with pytest.raises(DataError, match="10 images of 28 x 28 and 9 labels"):
        read_idx_folder(tmp_path, "mnist", md5s={"mnist": md5s})
    bad = labels.copy()
    bad[0] = 12
    md5s = write_set(tmp_path, "test", images, bad)
    with pytest.raises(DataError, match="label 12 out of range 0-9"):
        read_idx_folder(tmp_path, "mnist", md5s={"mnist": md5s})


def test_data_specs_reach_the_idx_loader(tmp_path, monkeypatch):
    images, labels = tiny_set(10)
    folder = tmp_path / "cache" / "mnist"
    folder.mkdir(parents=True)
    monkeypatch.setitem(mnist.IDX_MD5, "mnist", write_set(folder, "test", images, labels))
    by_name = load_dataset(f"mnist:{folder}")
    assert by_name.train_images.shape == (8, 28, 28, 1)
    assert load_dataset(str(folder)).checksum == by_name.checksum  # a plain path: identified
    monkeypatch.setenv("LANDSCAPE_CACHE", str(tmp_path / "cache"))
    assert load_dataset("mnist").checksum == by_name.checksum  # the cache folder's copy
    with pytest.raises(DataError, match=r"no fashion-mnist found in .*fashion-mnist: pass --data"):
        load_dataset("fashion-mnist")
    with pytest.raises(DataError, match="not the official fashion-mnist"):
        load_dataset(f"fashion-mnist:{folder}")


def test_channel_stats_handle_one_and_three_channels():
    rng = np.random.default_rng(0)
    for channels in (1, 3):
        images = rng.integers(0, 256, size=(9, 4, 4, channels), dtype=np.uint8)
        mean, std = data.channel_stats(images)
        scaled = images.reshape(-1, channels) / 255.0
        np.testing.assert_allclose(mean, scaled.mean(0), rtol=1e-6)
        np.testing.assert_allclose(std, scaled.std(0), rtol=1e-5)
