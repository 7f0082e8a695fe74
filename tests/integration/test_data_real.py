"""Real CIFAR-10 ($LANDSCAPE_CIFAR_JPEG): the JPEG archive loads whole, with the known
statistics, and the second load comes from the cache; a cut copy is refused."""

import gzip
import io
import tarfile
import time

import numpy as np
import pytest
from helpers import require_real_cifar_jpeg

from landscape import data
from landscape.data import DataError, load_dataset


def test_real_cifar10_jpeg(tmp_path_factory):
    path = require_real_cifar_jpeg()
    cache = tmp_path_factory.mktemp("cache")
    start = time.perf_counter()
    ds = load_dataset(str(path), cache_dir=cache, progress=False)
    first = time.perf_counter() - start
    assert ds.train_images.shape == (50000, 32, 32, 3) and ds.train_images.dtype == np.uint8
    assert ds.test_images.shape == (10000, 32, 32, 3)
    assert np.bincount(ds.train_labels).tolist() == [5000] * 10
    assert np.bincount(ds.test_labels).tolist() == [1000] * 10
    assert ds.classes == tuple(sorted(data.CIFAR10_CLASSES))
    assert ds.name == f"cifar10 (image folder: {path.name})" and not ds.is_synthetic
    np.testing.assert_allclose(ds.mean, (0.491, 0.482, 0.447), atol=0.005)
    test = ds.test_images.reshape(-1, 3) / 255.0
    np.testing.assert_allclose(test.mean(0), (0.494, 0.485, 0.450), atol=0.005)
    np.testing.assert_allclose(test.std(0), (0.245, 0.242, 0.261), atol=0.005)
    assert len(list(cache.glob("*.npz"))) == 1
    start = time.perf_counter()
    again = load_dataset(str(path), cache_dir=cache, progress=False)
    print(
        f"real CIFAR-10 JPEG: first load {first:.1f} s, cached {time.perf_counter() - start:.2f} s"
    )
    np.testing.assert_array_equal(again.train_images, ds.train_images)
    np.testing.assert_array_equal(again.test_labels, ds.test_labels)
    assert again.checksum == ds.checksum


def test_real_archive_cut_at_a_member_boundary_is_refused(tmp_path):
    """The archive decompressed to a plain .tar and cut after its 59,000th member: tarfile stops
    there quietly, and the images before it used to be trained on and cached as the data set."""
    raw = gzip.decompress(require_real_cifar_jpeg().read_bytes())
    with tarfile.open(fileobj=io.BytesIO(raw)) as tar:
        offsets = [m.offset for m in tar]
    cut = tmp_path / "cifar10-cut.tar"
    cut.write_bytes(raw[: offsets[59_000]])
    with pytest.raises(DataError, match="incomplete or damaged after 59,000 members") as err:
        load_dataset(str(cut), cache_dir=tmp_path / "cache", progress=False)
    assert "\n" not in str(err.value) and not (tmp_path / "cache").exists()
