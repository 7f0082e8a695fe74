"""The official MNIST test files ($LANDSCAPE_MNIST_DIR): they load with their published checksums
and known statistics, split 8,000 / 2,000 when the training pair is absent; cut, renamed and
mislabelled copies are refused in one line, from Python and from the command line."""

import gzip
import shutil

import numpy as np
import pytest
from helpers import require_real_mnist

from landscape.data import DataError, load_dataset

# Digit counts of the official MNIST test set (LeCun et al.), 0 to 9.
TEST_COUNTS = [980, 1135, 1032, 1010, 982, 892, 958, 1028, 974, 1009]


def test_the_official_test_set_loads_split_and_verified():
    folder = require_real_mnist()
    ds = load_dataset(f"mnist:{folder}")
    assert ds.train_images.shape == (8000, 28, 28, 1) and ds.test_images.shape == (2000, 28, 28, 1)
    assert ds.train_images.dtype == np.uint8 and ds.classes == tuple("0123456789")
    counts = np.bincount(ds.train_labels, minlength=10) + np.bincount(ds.test_labels, minlength=10)
    assert counts.tolist() == TEST_COUNTS
    assert "official test set only" in ds.name and "8,000 train / 2,000 held out" in ds.name
    # MNIST's pixels: mostly black, mean intensity about 0.13 (std about 0.31) of the range.
    np.testing.assert_allclose(ds.mean, [0.133], atol=0.003)
    np.testing.assert_allclose(ds.std, [0.310], atol=0.003)
    assert load_dataset(str(folder)).checksum == ds.checksum  # a plain path: told by checksums


def test_cut_and_mislabelled_copies_are_refused(tmp_path):
    folder = require_real_mnist()
    for path in folder.glob("t10k-*"):
        shutil.copy(path, tmp_path / path.name)
    images = next(tmp_path.glob("t10k-images*"))
    raw = gzip.decompress(images.read_bytes()) if images.suffix == ".gz" else images.read_bytes()
    (tmp_path / images.name).unlink()
    cut = tmp_path / "t10k-images-idx3-ubyte"
    cut.write_bytes(raw[:-784])  # the last image missing
    with pytest.raises(DataError, match="truncated: a 10000 x 28 x 28 IDX array takes 7,840,016"):
        load_dataset(f"mnist:{tmp_path}")
    # Whole files, but one label changed: the checksum catches what the structure cannot.
    cut.write_bytes(raw)
    labels = next(tmp_path.glob("t10k-labels*"))
    content = bytearray(gzip.decompress(labels.read_bytes()))
    content[8] = (content[8] + 1) % 10
    labels.write_bytes(gzip.compress(bytes(content)))
    with pytest.raises(DataError, match="not the official mnist t10k-labels-idx1-ubyte"):
        load_dataset(f"mnist:{tmp_path}")
    with pytest.raises(DataError, match="not the official fashion-mnist t10k-images"):
        load_dataset(f"fashion-mnist:{folder}")


def test_the_command_line_says_what_is_wrong_in_one_line(tmp_path):
    from typer.testing import CliRunner

    from landscape.app.cli import app

    folder = require_real_mnist()
    data = tmp_path / "mnist"
    data.mkdir()
    shutil.copy(next(folder.glob("t10k-images*")), data)
    args = ["train", "--preset", "smoke", "--arch", "mlp", "--data", f"mnist:{data}"]
    result = CliRunner().invoke(app, [*args, "--out", str(tmp_path / "run")])
    assert result.exit_code == 2, result.output
    assert "Traceback" not in result.output
    (error,) = [line for line in result.output.splitlines() if not line.startswith("run dir")]
    assert error.startswith("error: ") and "missing t10k-labels-idx1-ubyte" in error
