"""Data loaders: the binary format, image folders, resolution, download, batches, synthetic
(real CIFAR-10: integration/test_data_real.py)."""

import gzip
import hashlib
import io
import tarfile

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from PIL import Image

from landscape import archives, cifar, data, dataset, image_folders, mnist
from landscape.data import (
    DataError,
    batch_indices,
    download_cifar10,
    load_dataset,
    normalize,
    read_cifar10_binary,
    read_image_folder,
    resolve_cache_dir,
    synthetic_dataset,
)

# --- fixtures: tiny archives with known pixels ---------------------------------------------------


def binary_records(labels, seed):
    """Returns CIFAR binary records with random pixels, and the images they encode (NHWC)."""
    rng = np.random.default_rng(seed)
    images = rng.integers(0, 256, size=(len(labels), 32, 32, 3), dtype=np.uint8)
    planar = images.transpose(0, 3, 1, 2).reshape(len(labels), -1)  # R plane, G plane, B plane
    records = np.concatenate([np.asarray(labels, np.uint8)[:, None], planar], axis=1)
    return records.tobytes(), images


def handmade_record(label):
    """One record written byte by byte from the format's description, independent of numpy."""
    red = bytes((row * 32 + col) % 256 for row in range(32) for col in range(32))
    green = bytes(255 - b for b in red)
    blue = bytes([7] * 1024)
    return bytes([label]) + red + green + blue


@pytest.fixture
def binary_folder(tmp_path):
    folder = tmp_path / "src" / "cifar-10-batches-bin"
    folder.mkdir(parents=True)
    expected = {}
    for i in range(1, 6):
        labels = [(i + j) % 10 for j in range(20)]
        raw, images = binary_records(labels, i)
        (folder / f"data_batch_{i}.bin").write_bytes(raw)
        expected[i] = (images, labels)
    raw, images = binary_records([j % 10 for j in range(9)], 99)
    (folder / "test_batch.bin").write_bytes(raw + handmade_record(3))
    expected["test"] = (images, [*(j % 10 for j in range(9)), 3])
    (folder / "batches.meta.txt").write_text("\n".join(data.CIFAR10_CLASSES) + "\n\n")
    (folder / "readme.html").write_text("<p>not data</p>")
    return folder, expected


def make_tar(tmp_path, folder, name="archive.tar.gz"):
    path = tmp_path / name
    with tarfile.open(path, "w:gz" if name.endswith("gz") else "w") as tar:
        tar.add(folder, arcname=folder.name)
    return path


def check_binary(ds, expected):
    assert ds.train_images.shape == (100, 32, 32, 3) and ds.train_images.dtype == np.uint8
    assert ds.test_images.shape == (10, 32, 32, 3)
    np.testing.assert_array_equal(ds.train_images[:20], expected[1][0])
    np.testing.assert_array_equal(ds.train_images[80:], expected[5][0])
    np.testing.assert_array_equal(ds.train_labels[:20], expected[1][1])
    np.testing.assert_array_equal(ds.train_labels[80:], expected[5][1])
    np.testing.assert_array_equal(ds.test_images[:9], expected["test"][0])
    np.testing.assert_array_equal(ds.test_labels, expected["test"][1])
    assert ds.train_labels.dtype == np.int32 and ds.test_labels.dtype == np.int32
    assert ds.classes == data.CIFAR10_CLASSES and ds.num_classes == 10
    # The hand-made record: channel order R, G, B and row-major rows of 32.
    last = ds.test_images[9]
    assert last[0, 1].tolist() == [1, 254, 7]
    assert last[1, 0].tolist() == [32, 223, 7]
    assert last[7, 31].tolist() == [(7 * 32 + 31) % 256, 255 - (7 * 32 + 31) % 256, 7]
    assert ds.mean.dtype == np.float32 and ds.mean.shape == (3,) and ds.std.shape == (3,)
    pixels = ds.train_images.reshape(-1, 3) / 255.0
    np.testing.assert_allclose(ds.mean, pixels.mean(0), rtol=1e-6)
    np.testing.assert_allclose(ds.std, pixels.std(0), rtol=1e-5)


def write_image_folder(root, size=32, classes=("cat", "dog")):
    rng = np.random.default_rng(0)
    expected = {}
    for split, count in (("train", 3), ("test", 2)):
        for cls in classes:
            (root / split / cls).mkdir(parents=True)
            for k in range(count):
                pixels = rng.integers(0, 256, size=(size, size, 3), dtype=np.uint8)
                Image.fromarray(pixels).save(root / split / cls / f"{k:04d}.png")
                expected[(split, cls, k)] = pixels
    return expected


def png_bytes(size=32):
    payload = io.BytesIO()
    Image.fromarray(np.zeros((size, size, 3), np.uint8)).save(payload, format="PNG")
    return payload.getvalue()


# --- the official binary format -------------------------------------------------------------------


def test_binary_folder_and_archives(tmp_path, binary_folder):
    folder, expected = binary_folder
    check_binary(read_cifar10_binary(folder), expected)
    check_binary(load_dataset(str(folder.parent)), expected)  # found one level down
    for name in ("cifar-10-binary.tar.gz", "plain.tar"):
        archive = make_tar(tmp_path, folder, name)
        ds = load_dataset(str(archive))
        check_binary(ds, expected)
        assert ds.checksum == hashlib.sha256(archive.read_bytes()).hexdigest()
        assert ds.source == str(archive) and ds.name == "cifar10" and not ds.is_synthetic
    # A folder has no file to hash: its checksum identifies the arrays, so a copy matches.
    assert read_cifar10_binary(folder).checksum == load_dataset(str(folder.parent)).checksum


def test_binary_class_names_from_meta_or_standard(binary_folder):
    folder, _ = binary_folder
    names = [f"kind{i}" for i in range(10)]
    (folder / "batches.meta.txt").write_text("\n".join(names) + "\n")
    assert read_cifar10_binary(folder).classes == tuple(names)
    (folder / "batches.meta.txt").unlink()
    assert read_cifar10_binary(folder).classes == data.CIFAR10_CLASSES


def test_binary_malformed_inputs_raise_one_line_errors(tmp_path, binary_folder):
    folder, _ = binary_folder
    raw = (folder / "data_batch_2.bin").read_bytes()
    (folder / "data_batch_2.bin").write_bytes(raw[:-5])
    with pytest.raises(DataError, match=r"data_batch_2\.bin.*not a whole number") as err:
        read_cifar10_binary(folder)
    assert "\n" not in str(err.value)
    (folder / "data_batch_2.bin").write_bytes(bytes([11]) + raw[1:])
    with pytest.raises(DataError, match=r"data_batch_2\.bin: label 11"):
        read_cifar10_binary(folder)
    (folder / "data_batch_2.bin").write_bytes(raw)
    (folder / "test_batch.bin").unlink()
    with pytest.raises(DataError, match=r"missing test_batch\.bin"):
        read_cifar10_binary(folder)
    with pytest.raises(DataError, match=r"missing test_batch\.bin"):
        load_dataset(str(make_tar(tmp_path, folder)))
    with pytest.raises(DataError, match="no CIFAR-10 binary files"):
        read_cifar10_binary(make_empty(tmp_path))
    not_tar = tmp_path / "noise.tar.gz"
    not_tar.write_bytes(b"\x1f\x8b garbage")
    with pytest.raises(DataError, match="not a folder or a readable tar archive"):
        load_dataset(str(not_tar))


def make_empty(tmp_path):
    empty = tmp_path / "empty"
    empty.mkdir()
    return empty


# --- image folders -------------------------------------------------------------------------------


def test_image_folder_tar_and_cache(tmp_path, monkeypatch):
    root = tmp_path / "imgs"
    expected = write_image_folder(root)
    archive = make_tar(tmp_path, root)  # train/ and test/ under one top-level folder
    cache = tmp_path / "cache"
    ds = load_dataset(str(archive), cache_dir=cache, progress=False)
    assert ds.classes == ("cat", "dog") and ds.name == "images (image folder: archive.tar.gz)"
    assert ds.train_images.shape == (6, 32, 32, 3) and ds.test_images.shape == (4, 32, 32, 3)
    assert ds.train_images.dtype == np.uint8 and ds.train_labels.dtype == np.int32
    np.testing.assert_array_equal(ds.train_images[0], expected[("train", "cat", 0)])
    np.testing.assert_array_equal(ds.train_images[5], expected[("train", "dog", 2)])
    np.testing.assert_array_equal(ds.test_images[2], expected[("test", "dog", 0)])
    np.testing.assert_array_equal(ds.train_labels, [0, 0, 0, 1, 1, 1])
    np.testing.assert_array_equal(ds.test_labels, [0, 0, 1, 1])
    assert ds.checksum == hashlib.sha256(archive.read_bytes()).hexdigest()
    assert len(list(cache.glob("*.npz"))) == 1
    assert not list(cache.glob(".*"))  # no temporary file left behind

    def refuse(*args, **kwargs):
        raise AssertionError("the second load must come from the cache")

    monkeypatch.setattr(Image, "open", refuse)
    for again in (
        load_dataset(str(archive), cache_dir=cache, progress=False),
        read_image_folder(archive, cache_dir=cache, progress=False),
    ):
        np.testing.assert_array_equal(again.train_images, ds.train_images)
        np.testing.assert_array_equal(again.test_labels, ds.test_labels)
        np.testing.assert_array_equal(again.mean, ds.mean)
        assert again.checksum == ds.checksum and again.classes == ds.classes
    monkeypatch.undo()
    # The folder itself: same arrays, its own cache entry, checksum of the arrays.
    folder_ds = load_dataset(str(root), cache_dir=cache, progress=False)
    np.testing.assert_array_equal(folder_ds.test_images, ds.test_images)
    assert len(list(cache.glob("*.npz"))) == 2
    assert folder_ds.checksum == data.arrays_sha256(
        ds.train_images, ds.train_labels, ds.test_images, ds.test_labels
    )


@pytest.mark.parametrize("damage", ["garbage", "truncated", "wrong dtype"])
def test_corrupt_cache_is_rebuilt(tmp_path, damage):
    root = tmp_path / "imgs"
    write_image_folder(root)
    cache = tmp_path / "cache"
    first = load_dataset(str(root), cache_dir=cache, progress=False)
    (cache_file,) = cache.glob("*.npz")
    if damage == "garbage":
        cache_file.write_bytes(b"not an npz")
    elif damage == "truncated":  # what a killed writer would leave without the atomic rename
        cache_file.write_bytes(cache_file.read_bytes()[:5000])
    else:
        with np.load(cache_file) as z:
            arrays = dict(z)
        np.savez(cache_file, **{**arrays, "train_images": arrays["train_images"].astype(float)})
    second = load_dataset(str(root), cache_dir=cache, progress=False)
    np.testing.assert_array_equal(first.train_images, second.train_images)
    assert second.train_images.dtype == np.uint8
    with np.load(cache_file, allow_pickle=False) as z:  # rebuilt and good again
        np.testing.assert_array_equal(z["train_images"], first.train_images)


def test_image_folder_errors(tmp_path):
    root = tmp_path / "big"
    write_image_folder(root, size=28)
    with pytest.raises(DataError, match="expected 32x32"):
        load_dataset(str(root), cache_dir=tmp_path / "c", progress=False)
    mismatched = tmp_path / "mismatched"
    write_image_folder(mismatched)
    (mismatched / "test" / "dog" / "0000.png").rename(mismatched / "test" / "cat" / "extra.png")
    for f in (mismatched / "test" / "dog").iterdir():
        f.unlink()
    with pytest.raises(DataError, match="same class folders"):
        load_dataset(str(mismatched), cache_dir=tmp_path / "c", progress=False)
    with pytest.raises(DataError, match="no images"):
        read_image_folder(make_empty(tmp_path), cache_dir=tmp_path / "c", progress=False)
    with pytest.raises(DataError, match="does not exist"):
        load_dataset(str(tmp_path / "nope"))


@pytest.mark.parametrize(
    "member",
    [
        tarfile.TarInfo("../evil/train/cat/0.png"),
        tarfile.TarInfo("/tmp/evil/train/cat/0.png"),
        "symlink",
        "hardlink",
        "device",
    ],
)
def test_unsafe_archives_are_refused(tmp_path, member):
    evil = tmp_path / "evil.tar.gz"
    payload = png_bytes()
    with tarfile.open(evil, "w:gz") as tar:
        good = tarfile.TarInfo("x/train/cat/0.png")
        good.size = len(payload)
        tar.addfile(good, io.BytesIO(payload))
        if isinstance(member, str):
            info = tarfile.TarInfo("x/test/cat/0.png")
            info.type = {"symlink": tarfile.SYMTYPE, "hardlink": tarfile.LNKTYPE}.get(
                member, tarfile.CHRTYPE
            )
            info.linkname = "/etc/passwd" if member == "symlink" else "x/train/cat/0.png"
            tar.addfile(info)
        else:
            member.size = len(payload)
            tar.addfile(member, io.BytesIO(payload))
    with pytest.raises(DataError, match=r"unsafe path|link or device") as err:
        load_dataset(str(evil), cache_dir=tmp_path / "c", progress=False)
    assert "\n" not in str(err.value)
    assert not (tmp_path / "evil").exists() and not list(tmp_path.glob("c/*"))


# --- archives are read whole or refused --------------------------------------------------------


def member_blocks(raw):
    """Returns the header offsets of a plain tar's members, and where its end marker starts."""
    with tarfile.open(fileobj=io.BytesIO(raw)) as tar:
        members = tar.getmembers()
    last = members[-1]
    return [m.offset for m in members], last.offset_data + -(-last.size // 512) * 512


def cuts(raw):
    """Returns ways to cut a plain tar short: where a crash, a full disk or a partial download
    could stop it, named for the test ids."""
    offsets, end = member_blocks(raw)
    return {
        "member boundary": raw[: offsets[-3]],
        "mid member": raw[: offsets[-3] + 512 + 100],
        "mid header": raw[: offsets[-3] + 100],
        "no end marker": raw[:end],
        "half an end marker": raw[: end + 512],
    }


def image_tar(tmp_path):
    root = tmp_path / "imgs"
    write_image_folder(root)
    return make_tar(tmp_path, root, "images.tar").read_bytes()


@pytest.mark.parametrize(
    "cut", ["member boundary", "mid member", "mid header", "no end marker", "half an end marker"]
)
def test_a_cut_plain_tar_is_refused_and_never_cached(tmp_path, cut):
    """tarfile alone stops quietly at a missing or cut header: the images before it used to be
    taken (and cached) as the whole set, or the message blamed the class folders."""
    archive = tmp_path / "cut.tar"
    archive.write_bytes(cuts(image_tar(tmp_path))[cut])
    with pytest.raises(DataError, match=r"cut\.tar: the archive is incomplete or damaged") as err:
        load_dataset(str(archive), cache_dir=tmp_path / "cache", progress=False)
    assert "\n" not in str(err.value) and "class folders" not in str(err.value)
    assert not (tmp_path / "cache").exists()


def test_a_damaged_tar_or_tar_gz_is_refused(tmp_path, binary_folder):
    folder, _ = binary_folder
    raw = make_tar(tmp_path, folder, "whole.tar").read_bytes()
    offsets, _ = member_blocks(raw)
    damaged = bytearray(raw)
    damaged[offsets[-2] + 10] ^= 0xFF  # a byte of a header's name: its checksum fails
    packed = gzip.compress(raw, mtime=0)
    crc = len(packed) - 8  # gzip ends with the CRC-32 of the data, then its length
    archives = {
        "header.tar": bytes(damaged),
        "header.tar.gz": gzip.compress(bytes(damaged), mtime=0),
        "cut.tar.gz": packed[: len(packed) // 2],
        "no-trailer.tar.gz": packed[:-8],
        "bad-crc.tar.gz": packed[:crc] + bytes([packed[crc] ^ 1]) + packed[crc + 1 :],
        "boundary.tar": raw[: offsets[-2]],  # test_batch.bin was "missing"
    }
    for name, blob in archives.items():
        (tmp_path / name).write_bytes(blob)
        with pytest.raises(DataError, match="incomplete or damaged") as err:
            load_dataset(str(tmp_path / name), cache_dir=tmp_path / "cache", progress=False)
        assert name in str(err.value) and "\n" not in str(err.value)
    (tmp_path / "whole.tar.gz").write_bytes(packed)
    assert load_dataset(str(tmp_path / "whole.tar.gz")).train_images.shape[0] == 100


def test_cifar10_classes_with_fewer_images_than_cifar10_are_refused(tmp_path, monkeypatch):
    root = tmp_path / "partial"
    write_image_folder(root, classes=data.CIFAR10_CLASSES)  # 3 train, 2 test images per class
    cache = tmp_path / "cache"
    with pytest.raises(DataError, match=r"30 training and 20 test images in CIFAR-10's classes"):
        load_dataset(str(root), cache_dir=cache, progress=False)
    assert not cache.exists()
    monkeypatch.setattr(image_folders, "CIFAR10_SIZES", {"train": 30, "test": 20})
    ds = load_dataset(str(root), cache_dir=cache, progress=False)
    assert ds.name == "cifar10 (image folder: partial)" and len(list(cache.glob("*.npz"))) == 1
    monkeypatch.setattr(image_folders, "CIFAR10_SIZES", {"train": 31, "test": 20})
    with pytest.raises(DataError, match="a partial copy"):  # a cached partial set is no better
        load_dataset(str(root), cache_dir=cache, progress=False)


# --- resolution ----------------------------------------------------------------------------------


def test_resolution_order_and_no_silent_fallback(tmp_path, binary_folder, monkeypatch):
    folder, expected = binary_folder
    monkeypatch.setenv("LANDSCAPE_DATA", str(folder))
    assert load_dataset(None).source == str(folder)
    assert load_dataset("cifar10").source == str(folder)
    assert load_dataset("synthetic").is_synthetic  # explicit argument wins over the variable
    assert load_dataset("synthetic:3").name == "synthetic (seed 3, NOT real CIFAR-10)"
    other = make_tar(tmp_path, folder, "other.tar.gz")
    assert load_dataset(str(other)).source == str(other)
    monkeypatch.setenv("LANDSCAPE_DATA", str(tmp_path / "gone"))
    with pytest.raises(DataError, match=r"LANDSCAPE_DATA=.*does not exist"):
        load_dataset(None)
    monkeypatch.delenv("LANDSCAPE_DATA")
    with pytest.raises(DataError, match="synthetic:SEED"):
        load_dataset("synthetic:x")
    cache = tmp_path / "cache"
    with pytest.raises(DataError) as err:
        load_dataset(None, cache_dir=cache, download=False)
    message = str(err.value)
    assert "\n" not in message and message.startswith("no CIFAR-10 found")
    assert "--data" in message and "LANDSCAPE_DATA" in message and "downloading is off" in message
    # The cache is the third place looked at: the archive, or its extracted folder.
    cache.mkdir()
    make_tar(cache, folder, data.CIFAR10_ARCHIVE)
    check_binary(load_dataset("cifar10", cache_dir=cache, download=False), expected)
    (cache / data.CIFAR10_ARCHIVE).unlink()
    folder.rename(cache / data.CIFAR10_FOLDER)
    check_binary(load_dataset(None, cache_dir=cache, download=False), expected)


def test_failed_download_is_reported_never_replaced_by_synthetic(tmp_path, monkeypatch):
    calls = []

    def offline(folder, **kwargs):
        calls.append(folder)
        raise DataError("cannot download https://example/x: [Errno -3]\nTemporary failure")

    monkeypatch.setattr(data, "download_cifar10", offline)
    monkeypatch.delenv("LANDSCAPE_DATA", raising=False)
    with pytest.raises(DataError) as err:
        load_dataset(None, cache_dir=tmp_path / "cache", progress=False)
    assert calls == [tmp_path / "cache"]
    assert "\n" not in str(err.value) and "Temporary failure" in str(err.value)
    assert "use --data synthetic" in str(err.value)


def test_cache_dir_resolution(tmp_path, monkeypatch):
    monkeypatch.setenv("LANDSCAPE_CACHE", str(tmp_path / "env"))
    assert resolve_cache_dir() == tmp_path / "env"
    assert resolve_cache_dir(tmp_path / "given") == tmp_path / "given"
    monkeypatch.delenv("LANDSCAPE_CACHE")
    assert resolve_cache_dir().parts[-2:] == (".cache", "landscape")


def test_the_loaders_public_names_are_still_offered_by_data():
    """Each loader lives in its own module; ``landscape.data`` re-exports their public names as
    the very objects (a tuple or table copied into it would not be the one the loader reads)."""
    offered = set(data.__all__)
    assert {"load_dataset", "read_cifar10_binary", "read_image_folder", "load_idx"} <= offered
    for module in (archives, cifar, dataset, image_folders, mnist):
        for name in offered & set(vars(module)):
            assert getattr(data, name) is getattr(module, name), f"{module.__name__}.{name}"


# --- download --------------------------------------------------------------------------------------


def test_download_verifies_checksum(tmp_path, binary_folder):
    folder, expected = binary_folder
    archive = make_tar(tmp_path, folder, "upstream.tar.gz")
    raw = archive.read_bytes()
    sha, md5 = hashlib.sha256(raw).hexdigest(), hashlib.md5(raw).hexdigest()
    for i, sums in enumerate(({"sha256": sha}, {"sha256": None, "md5": md5}, {"md5": md5})):
        cache = tmp_path / f"cache{i}"
        path = download_cifar10(
            cache, url=archive.as_uri(), progress=False, **{"sha256": sha, **sums}
        )
        assert path == cache / data.CIFAR10_ARCHIVE and path.read_bytes() == raw
        assert [p.name for p in cache.iterdir()] == [data.CIFAR10_ARCHIVE]
        check_binary(read_cifar10_binary(path), expected)
    bad = tmp_path / "bad"
    for sums in ({"sha256": "0" * 64}, {"sha256": sha, "md5": "0" * 32}):
        with pytest.raises(DataError, match="failed its checksum"):
            download_cifar10(bad, url=archive.as_uri(), progress=False, **sums)
        assert list(bad.iterdir()) == []  # nothing half-downloaded is left behind
    with pytest.raises(DataError, match="cannot download"):
        download_cifar10(bad, url=(tmp_path / "missing").as_uri(), progress=False)
    assert list(bad.iterdir()) == []
    with pytest.raises(ValueError, match="sha256 or md5"):
        download_cifar10(bad, url=archive.as_uri(), sha256=None, md5=None)


def test_official_checksums_are_well_formed():
    assert data.CIFAR10_URL.endswith("/cifar-10-binary.tar.gz")
    assert len(data.CIFAR10_SHA256) == 64 and int(data.CIFAR10_SHA256, 16) >= 0
    assert data.CIFAR10_MD5 == "c32a1d4ab5d03f1284b67883e8d87530"  # as published on the page


# --- batches, synthetic data, normalisation --------------------------------------------------------


def test_batch_indices_are_a_pure_function_of_seed_and_step():
    n, b = 103, 10
    first = batch_indices(7, 12, n, b)
    for step in (0, 25, 3, 40, 70):  # fill and evict the epoch cache
        batch_indices(7, step, n, b)
    np.testing.assert_array_equal(batch_indices(7, 12, n, b), first)
    first[:] = -1  # the caller owns its copy; the cached permutation is untouched
    assert (batch_indices(7, 12, n, b) >= 0).all()
    epoch = [batch_indices(7, s, n, b) for s in range(10)]
    assert all(e.dtype == np.int32 and e.shape == (b,) for e in epoch)
    flat = np.concatenate(epoch)
    assert len(set(flat.tolist())) == 100 and flat.min() >= 0 and flat.max() < n
    # The formula itself: epoch 1 is the permutation of (seed, 1), batch 2 is its third slice.
    perm = np.random.default_rng([7, 1]).permutation(n)
    np.testing.assert_array_equal(batch_indices(7, 12, n, b), perm[20:30])
    assert not np.array_equal(batch_indices(7, 0, n, b), batch_indices(8, 0, n, b))
    assert not np.array_equal(
        np.sort(batch_indices(7, 0, n, b)), np.sort(batch_indices(7, 10, n, b))
    )
    np.testing.assert_array_equal(np.sort(batch_indices(1, 0, 5, 5)), np.arange(5))
    for bad in ((0, 0, 5, 6), (0, 0, 5, 0), (0, -1, 5, 2)):
        with pytest.raises(ValueError):
            batch_indices(*bad)


def test_synthetic_is_deterministic_balanced_and_learnable():
    a, b = synthetic_dataset(1, 500, 200), synthetic_dataset(1, 500, 200)
    np.testing.assert_array_equal(a.train_images, b.train_images)
    np.testing.assert_array_equal(a.test_labels, b.test_labels)
    assert a.checksum == b.checksum and a.is_synthetic and a.source == "synthetic"
    assert "synthetic" in a.name and "NOT real" in a.name
    assert synthetic_dataset(2, 500, 200).checksum != a.checksum
    assert np.bincount(a.train_labels).tolist() == [50] * 10
    assert np.bincount(a.test_labels).tolist() == [20] * 10
    assert a.train_images.dtype == np.uint8 and a.train_images.shape == (500, 32, 32, 3)
    assert a.test_images.shape == (200, 32, 32, 3) and a.num_classes == 10
    assert a.train_images.std() > 30  # noisy, not a set of flat colours
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
    out = normalize(images, mean, std)
    assert out.dtype == np.float32
    np.testing.assert_allclose(out, expected, rtol=1e-5, atol=1e-6)
    jitted = jax.jit(normalize)(jnp.asarray(images), jnp.asarray(mean), jnp.asarray(std))
    assert jitted.dtype == jnp.float32
    np.testing.assert_allclose(jitted, expected, rtol=1e-5, atol=1e-6)


def _cifar100_archive(path, train=20, test=10, names=True, cut=0):
    """A CIFAR-100 binary archive of ``train``/``test`` records with known pixels and labels."""
    import io
    import tarfile

    rng = np.random.default_rng(0)

    def records(n):
        coarse = rng.integers(0, 20, n, dtype=np.uint8)
        fine = rng.integers(0, 100, n, dtype=np.uint8)
        pixels = rng.integers(0, 256, (n, 3072), dtype=np.uint8)
        return np.concatenate([coarse[:, None], fine[:, None], pixels], 1), fine, pixels

    members = {}
    train_rec, train_fine, train_px = records(train)
    test_rec, _, _ = records(test)
    members["cifar-100-binary/train.bin"] = train_rec.tobytes()[: len(train_rec.tobytes()) - cut]
    members["cifar-100-binary/test.bin"] = test_rec.tobytes()
    if names:
        members["cifar-100-binary/fine_label_names.txt"] = "\n".join(
            f"name{i}" for i in range(100)
        ).encode()
    with tarfile.open(path, "w:gz") as tar:
        for name, data in members.items():
            info = tarfile.TarInfo(name)
            info.size = len(data)
            tar.addfile(info, io.BytesIO(data))
    return train_fine, train_px


def test_cifar100_binary_reads_fine_labels_and_refuses_damage(tmp_path):
    from landscape.data import DataError, load_dataset, load_path

    fine, pixels = _cifar100_archive(tmp_path / "c100.tar.gz")
    ds = load_path(tmp_path / "c100.tar.gz")
    assert ds.name == "cifar100" and ds.num_classes == 100 and ds.classes[7] == "name7"
    np.testing.assert_array_equal(ds.train_labels, fine)
    # Pixels: three planes (R, G, B) per record, stored row-major, read as NHWC.
    np.testing.assert_array_equal(ds.train_images[3, 1, 2], pixels[3].reshape(3, 32, 32)[:, 1, 2])
    assert ds.train_images.shape == (20, 32, 32, 3) and ds.test_images.shape == (10, 32, 32, 3)
    _cifar100_archive(tmp_path / "cut.tar.gz", cut=100)
    with pytest.raises(DataError, match="not a whole number of 3074-byte CIFAR-100 records"):
        load_path(tmp_path / "cut.tar.gz")
    with pytest.raises(DataError, match="no CIFAR-100 found"):
        load_dataset("cifar100", cache_dir=tmp_path / "empty")
