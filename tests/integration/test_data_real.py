"""Real CIFAR-10 ($LANDSCAPE_CIFAR_JPEG): the JPEG archive loads whole, with the known
statistics, and the second load comes from the cache."""

import time

import numpy as np
from helpers import require_real_cifar_jpeg

from landscape import data
from landscape.data import load_dataset


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
