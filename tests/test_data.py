"""Data readers: IDX files, the Debian Fashion-MNIST package, the shipped sample, sklearn digits."""

import gzip
import struct

import numpy as np
import pytest

from relmon.data import (
    DatasetNotFoundError,
    load_digits,
    load_fashion_mnist,
    load_sample,
    read_idx,
    to_tensor,
)
from relmon.data.fashion_mnist import DEFAULT_ROOT, MEAN, STD


def write_idx(path, array: np.ndarray, compress: bool):
    header = bytes([0, 0, 0x08, array.ndim]) + struct.pack(f">{array.ndim}I", *array.shape)
    data = header + array.astype(np.uint8).tobytes()
    opener = gzip.open if compress else open
    with opener(path, "wb") as f:
        f.write(data)


@pytest.mark.parametrize("compress", [True, False])
def test_idx_round_trip(tmp_path, compress):
    arr = np.random.default_rng(0).integers(0, 256, size=(5, 4, 3), dtype=np.uint8)
    path = tmp_path / ("a.idx.gz" if compress else "a.idx")
    write_idx(path, arr, compress)
    assert np.array_equal(read_idx(path), arr)


def test_idx_rejects_garbage(tmp_path):
    (tmp_path / "bad").write_bytes(b"\x01\x02\x03\x04rest")
    with pytest.raises(ValueError, match="not an IDX file"):
        read_idx(tmp_path / "bad")
    truncated = bytes([0, 0, 8, 2]) + struct.pack(">2I", 3, 3) + b"\x00" * 4
    (tmp_path / "short").write_bytes(truncated)
    with pytest.raises(ValueError, match="announces shape"):
        read_idx(tmp_path / "short")


def test_reader_with_explicit_root(tmp_path):
    images = np.arange(2 * 28 * 28, dtype=np.uint8).reshape(2, 28, 28) % 251
    write_idx(tmp_path / "t10k-images-idx3-ubyte.gz", images, True)
    write_idx(tmp_path / "t10k-labels-idx1-ubyte", np.array([3, 7], dtype=np.uint8), False)
    x, y = load_fashion_mnist("test", root=tmp_path)
    assert np.array_equal(x, images) and y.tolist() == [3, 7] and y.dtype == np.int64


def test_missing_files_say_how_to_get_them(tmp_path):
    with pytest.raises(DatasetNotFoundError, match="apt-get install dataset-fashion-mnist"):
        load_fashion_mnist("train", root=tmp_path)
    with pytest.raises(ValueError, match="unknown split"):
        load_fashion_mnist("validation", root=tmp_path)


@pytest.mark.skipif(not DEFAULT_ROOT.exists(), reason="Debian package dataset-fashion-mnist not installed")
def test_debian_package_and_shipped_sample_agree():
    images, labels = load_fashion_mnist("test")
    assert images.shape == (10000, 28, 28) and labels.shape == (10000,)
    assert set(np.unique(labels)) == set(range(10))
    sample_images, sample_labels = load_sample()
    assert np.array_equal(sample_images, images[:2000]) and np.array_equal(sample_labels, labels[:2000])
    train_images, _ = load_fashion_mnist("train")
    x = train_images.astype(np.float64) / 255
    assert abs(x.mean() - MEAN) < 1e-3 and abs(x.std() - STD) < 1e-3


def test_shipped_sample_and_tensor_conversion():
    images, labels = load_sample()
    assert images.shape == (2000, 28, 28) and images.dtype == np.uint8 and labels.shape == (2000,)
    x = to_tensor(images[:3], normalize=False)
    assert x.shape == (3, 1, 28, 28) and float(x.min()) >= 0 and float(x.max()) <= 1
    xn = to_tensor(images[:3])
    assert np.allclose(xn.numpy(), (x.numpy() - MEAN) / STD, atol=1e-6)


def test_digits():
    images, labels = load_digits()
    assert images.shape == (1797, 1, 8, 8) and images.dtype == np.float32
    assert images.min() == 0 and images.max() == 1 and set(labels.tolist()) == set(range(10))
