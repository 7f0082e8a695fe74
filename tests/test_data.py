"""Data loaders: the binary format, image folders, resolution, download, batches, synthetic."""

import hashlib
import io
import tarfile
import time

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from conftest import real_cifar_jpeg
from PIL import Image

from landscape import data
from landscape.data import (
    DataError,
    batch_indices,
    download_cifar10,
    load_dataset,
    normalize,
    read_cifar10_binary,
    synthetic_dataset,
)


def binary_records(labels, seed):
    """Returns CIFAR binary records with known pixels, and the images they encode (NHWC)."""
    rng = np.random.default_rng(seed)
    images = rng.integers(0, 256, size=(len(labels), 32, 32, 3), dtype=np.uint8)
    planar = images.transpose(0, 3, 1, 2).reshape(len(labels), -1)  # R plane, G plane, B plane
    records = np.concatenate([np.asarray(labels, np.uint8)[:, None], planar], axis=1)
    return records.tobytes(), images


@pytest.fixture
def binary_folder(tmp_path):
    folder = tmp_path / "cifar-10-batches-bin"
    folder.mkdir()
    expected = {}
    for i in range(1, 6):
        labels = [(i + j) % 10 for j in range(20)]
        raw, images = binary_records(labels, i)
        (folder / f"data_batch_{i}.bin").write_bytes(raw)
        expected[i] = (images, labels)
    raw, images = binary_records([j % 10 for j in range(10)], 99)
    (folder / "test_batch.bin").write_bytes(raw)
    expected["test"] = (images, [j % 10 for j in range(10)])
    (folder / "batches.meta.txt").write_text("\n".join(data.CIFAR10_CLASSES) + "\n\n")
    return folder, expected


def make_tar(tmp_path, folder, name="archive.tar.gz"):
    path = tmp_path / name
    with tarfile.open(path, "w:gz") as tar:
        tar.add(folder, arcname=folder.name)
    return path


def check_binary(ds, expected):
    assert ds.train_images.shape == (100, 32, 32, 3) and ds.train_images.dtype == np.uint8
    np.testing.assert_array_equal(ds.train_images[:20], expected[1][0])  # R, G, B placement
    np.testing.assert_array_equal(ds.train_images[80:], expected[5][0])
    np.testing.assert_array_equal(ds.train_labels[:20], expected[1][1])
    np.testing.assert_array_equal(ds.test_images, expected["test"][0])
    assert ds.test_labels.dtype == np.int32
    assert ds.classes == data.CIFAR10_CLASSES


def test_binary_folder_and_archive(tmp_path, binary_folder):
    folder, expected = binary_folder
    check_binary(read_cifar10_binary(folder), expected)
    archive = make_tar(tmp_path, folder, "cifar-10-binary.tar.gz")
    ds = load_dataset(str(archive))
    check_binary(ds, expected)
    assert ds.checksum == hashlib.sha256(archive.read_bytes()).hexdigest()
    assert not ds.is_synthetic


def test_binary_malformed_inputs_raise_one_line_errors(tmp_path, binary_folder):
    folder, _ = binary_folder
    raw = (folder / "data_batch_2.bin").read_bytes()
    (folder / "data_batch_2.bin").write_bytes(raw[:-5])
    with pytest.raises(DataError, match=r"data_batch_2\.bin") as err:
        read_cifar10_binary(folder)
    assert "\n" not in str(err.value)
    (folder / "data_batch_2.bin").write_bytes(bytes([11]) + raw[1:])
    with pytest.raises(DataError, match="label 11"):
        read_cifar10_binary(folder)
    (folder / "data_batch_2.bin").write_bytes(raw)
    (folder / "test_batch.bin").unlink()
    with pytest.raises(DataError, match=r"missing test_batch\.bin"):
        read_cifar10_binary(folder)


def write_image_folder(root, size=32):
    rng = np.random.default_rng(0)
    expected = {}
    for split, count in (("train", 3), ("test", 2)):
        for cls in ("cat", "dog"):
            (root / split / cls).mkdir(parents=True)
            for k in range(count):
                pixels = rng.integers(0, 256, size=(size, size, 3), dtype=np.uint8)
                Image.fromarray(pixels).save(root / split / cls / f"{k:04d}.png")
                expected[(split, cls, k)] = pixels
    return expected


def test_image_folder_tar_and_cache(tmp_path, monkeypatch):
    root = tmp_path / "imgs"
    expected = write_image_folder(root)
    archive = make_tar(tmp_path, root)
    cache = tmp_path / "cache"
    ds = load_dataset(str(archive), cache_dir=cache, progress=False)
    assert ds.classes == ("cat", "dog")
    assert ds.train_images.shape == (6, 32, 32, 3) and ds.test_images.shape == (4, 32, 32, 3)
    np.testing.assert_array_equal(ds.train_images[0], expected[("train", "cat", 0)])
    np.testing.assert_array_equal(ds.train_labels, [0, 0, 0, 1, 1, 1])
    assert list(cache.glob("*.npz"))

    def refuse(*args, **kwargs):
        raise AssertionError("the second load must come from the cache")

    monkeypatch.setattr(data, "_decode", refuse)
    again = load_dataset(str(archive), cache_dir=cache, progress=False)
    np.testing.assert_array_equal(again.train_images, ds.train_images)
    np.testing.assert_array_equal(again.mean, ds.mean)
    # A folder works too (and is decoded: it has its own cache key).
    monkeypatch.undo()
    folder_ds = load_dataset(str(root), cache_dir=cache, progress=False)
    np.testing.assert_array_equal(folder_ds.test_images, ds.test_images)


def test_corrupt_cache_is_rebuilt(tmp_path):
    root = tmp_path / "imgs"
    write_image_folder(root)
    cache = tmp_path / "cache"
    first = load_dataset(str(root), cache_dir=cache, progress=False)
    for f in cache.glob("*.npz"):
        f.write_bytes(b"not an npz")
    second = load_dataset(str(root), cache_dir=cache, progress=False)
    np.testing.assert_array_equal(first.train_images, second.train_images)


def test_image_folder_errors(tmp_path):
    root = tmp_path / "big"
    write_image_folder(root, size=28)
    with pytest.raises(DataError, match="expected 32x32"):
        load_dataset(str(root), cache_dir=tmp_path / "c", progress=False)
    evil = tmp_path / "evil.tar.gz"
    with tarfile.open(evil, "w:gz") as tar:
        info = tarfile.TarInfo("../evil/train/cat/0.png")
        payload = io.BytesIO()
        Image.fromarray(np.zeros((32, 32, 3), np.uint8)).save(payload, format="PNG")
        info.size = len(payload.getvalue())
        tar.addfile(info, io.BytesIO(payload.getvalue()))
    with pytest.raises(DataError, match="unsafe path"):
        load_dataset(str(evil), cache_dir=tmp_path / "c", progress=False)
    assert not (tmp_path / "evil").exists()
    with pytest.raises(DataError, match="does not exist"):
        load_dataset(str(tmp_path / "nope"))


def test_resolution_order_and_no_silent_fallback(tmp_path, binary_folder, monkeypatch):
    folder, expected = binary_folder
    monkeypatch.setenv("LANDSCAPE_DATA", str(folder))
    assert load_dataset(None).source == str(folder)
    assert load_dataset("synthetic").is_synthetic  # explicit argument wins over the variable
    monkeypatch.delenv("LANDSCAPE_DATA")
    cache = tmp_path / "cache"
    with pytest.raises(DataError) as err:
        load_dataset(None, cache_dir=cache, download=False)
    message = str(err.value)
    assert "\n" not in message and "--data" in message and "LANDSCAPE_DATA" in message
    # The cache is the third place looked at.
    cache.mkdir()
    make_tar(cache, folder, data.CIFAR10_ARCHIVE)
    check_binary(load_dataset("cifar10", cache_dir=cache, download=False), expected)


def test_download_verifies_checksum(tmp_path, binary_folder):
    folder, expected = binary_folder
    archive = make_tar(tmp_path, folder, "upstream.tar.gz")
    md5 = hashlib.md5(archive.read_bytes()).hexdigest()
    cache = tmp_path / "cache"
    path = download_cifar10(cache, url=archive.as_uri(), md5=md5, progress=False)
    assert path == cache / data.CIFAR10_ARCHIVE
    check_binary(read_cifar10_binary(path), expected)
    bad = tmp_path / "bad"
    with pytest.raises(DataError, match="checksum"):
        download_cifar10(bad, url=archive.as_uri(), md5="0" * 32, progress=False)
    assert list(bad.iterdir()) == []  # nothing half-downloaded is left behind
    with pytest.raises(DataError, match="cannot download"):
        download_cifar10(bad, url=(tmp_path / "missing").as_uri(), progress=False)


def test_batch_indices_are_a_pure_function_of_seed_and_step():
    n, b = 103, 10
    first = batch_indices(7, 12, n, b)
    for step in (0, 25, 3):
        batch_indices(7, step, n, b)
    np.testing.assert_array_equal(batch_indices(7, 12, n, b), first)
    epoch = np.concatenate([batch_indices(7, s, n, b) for s in range(10)])
    assert len(set(epoch.tolist())) == 100 and epoch.dtype == np.int32
    assert not np.array_equal(batch_indices(7, 0, n, b), batch_indices(8, 0, n, b))
    assert not np.array_equal(batch_indices(7, 0, n, b), batch_indices(7, 10, n, b))
    with pytest.raises(ValueError):
        batch_indices(0, 0, 5, 6)


def test_synthetic_is_deterministic_balanced_and_learnable():
    a, b = synthetic_dataset(1, 500, 200), synthetic_dataset(1, 500, 200)
    np.testing.assert_array_equal(a.train_images, b.train_images)
    assert a.checksum == b.checksum and "synthetic" in a.name and a.is_synthetic
    assert synthetic_dataset(2, 500, 200).checksum != a.checksum
    assert np.bincount(a.train_labels).tolist() == [50] * 10
    assert a.train_images.dtype == np.uint8 and a.train_images.shape == (500, 32, 32, 3)
    # A nearest-class-mean classifier is far above chance (10%): there is structure to learn.
    x = a.train_images.reshape(500, -1).astype(np.float32)
    means = np.stack([x[a.train_labels == c].mean(0) for c in range(10)])
    t = a.test_images.reshape(200, -1).astype(np.float32)
    pred = np.argmin(((t[:, None, :] - means[None]) ** 2).sum(-1), axis=1)
    assert (pred == a.test_labels).mean() > 0.5


def test_normalize_on_numpy_and_under_jit():
    images = np.arange(2 * 2 * 2 * 3, dtype=np.uint8).reshape(2, 2, 2, 3) * 10
    mean, std = np.array([0.1, 0.2, 0.3], np.float32), np.array([0.5, 0.25, 2.0], np.float32)
    expected = (images / 255.0 - mean) / std
    np.testing.assert_allclose(normalize(images, mean, std), expected, rtol=1e-5, atol=1e-6)
    jitted = jax.jit(normalize)(jnp.asarray(images), jnp.asarray(mean), jnp.asarray(std))
    np.testing.assert_allclose(jitted, expected, rtol=1e-5, atol=1e-6)


@pytest.mark.slow
def test_real_cifar10_jpeg(tmp_path_factory):
    path = real_cifar_jpeg()
    if path is None:
        pytest.skip("real CIFAR-10 (../shared/data/cifar10-jpeg.tar.gz) is not available")
    cache = tmp_path_factory.mktemp("cache")
    ds = load_dataset(str(path), cache_dir=cache, progress=False)
    assert ds.train_images.shape == (50000, 32, 32, 3)
    assert ds.test_images.shape == (10000, 32, 32, 3)
    assert np.bincount(ds.train_labels).tolist() == [5000] * 10
    assert np.bincount(ds.test_labels).tolist() == [1000] * 10
    assert ds.classes == tuple(sorted(ds.classes)) and "airplane" in ds.classes
    test = ds.test_images.reshape(-1, 3) / 255.0
    np.testing.assert_allclose(test.mean(0), (0.494, 0.485, 0.450), atol=0.005)
    np.testing.assert_allclose(test.std(0), (0.245, 0.242, 0.261), atol=0.005)
    start = time.perf_counter()
    again = load_dataset(str(path), cache_dir=cache, progress=False)
    print(f"cached load: {time.perf_counter() - start:.2f} s")
    np.testing.assert_array_equal(again.test_images, ds.test_images)
