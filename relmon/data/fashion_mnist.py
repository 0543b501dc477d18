"""Fashion-MNIST from the IDX files of Debian's ``dataset-fashion-mnist`` package, and the small
labelled sample shipped inside relmon (so the demo runs with no dataset installed)."""

from __future__ import annotations

import gzip
import os
import struct
from importlib import resources
from pathlib import Path

import numpy as np

DEFAULT_ROOT = Path("/usr/share/datasets/fashion-mnist")
ENV_ROOT = "RELMON_FASHION_MNIST"
CLASSES = (
    "T-shirt/top", "Trouser", "Pullover", "Dress", "Coat",
    "Sandal", "Shirt", "Sneaker", "Bag", "Ankle boot",
)
# Statistics of the 60k training images scaled to [0, 1]; the embedded models consume
# (x - MEAN) / STD.
MEAN = 0.2860
STD = 0.3530
_FILES = {
    "train": ("train-images-idx3-ubyte", "train-labels-idx1-ubyte"),
    "test": ("t10k-images-idx3-ubyte", "t10k-labels-idx1-ubyte"),
}
_DTYPES = {0x08: np.uint8, 0x09: np.int8, 0x0B: ">i2", 0x0C: ">i4", 0x0D: ">f4", 0x0E: ">f8"}


class DatasetNotFoundError(FileNotFoundError):
    """The Fashion-MNIST files are not where relmon looked."""


def read_idx(path: str | os.PathLike) -> np.ndarray:
    """Read one IDX file (optionally gzip-compressed) into a NumPy array."""
    path = Path(path)
    opener = gzip.open if path.suffix == ".gz" else open
    with opener(path, "rb") as f:
        data = f.read()
    if len(data) < 4 or data[0] != 0 or data[1] != 0:
        raise ValueError(f"{path} is not an IDX file (bad magic number)")
    dtype_code, ndim = data[2], data[3]
    if dtype_code not in _DTYPES:
        raise ValueError(f"{path}: unknown IDX element type 0x{dtype_code:02x}")
    shape = struct.unpack(f">{ndim}I", data[4 : 4 + 4 * ndim])
    arr = np.frombuffer(data, dtype=_DTYPES[dtype_code], offset=4 + 4 * ndim)
    if arr.size != int(np.prod(shape)):
        raise ValueError(f"{path}: header announces shape {shape} but the file holds {arr.size} values")
    return arr.reshape(shape).astype(np.dtype(_DTYPES[dtype_code]).newbyteorder("="), copy=False)


def _find(root: Path, stem: str) -> Path | None:
    for name in (stem + ".gz", stem):
        if (root / name).is_file():
            return root / name
    return None


def load_fashion_mnist(split: str = "test", root: str | os.PathLike | None = None) -> tuple[np.ndarray, np.ndarray]:
    """Images ``(N, 28, 28)`` uint8 and labels ``(N,)`` int64 of one split (``train`` or ``test``).

    ``root`` defaults to ``$RELMON_FASHION_MNIST`` or ``/usr/share/datasets/fashion-mnist``.
    """
    if split not in _FILES:
        raise ValueError(f"unknown split {split!r}; choose 'train' or 'test'")
    root = Path(root or os.environ.get(ENV_ROOT) or DEFAULT_ROOT)
    paths = [_find(root, stem) for stem in _FILES[split]]
    if None in paths:
        missing = [stem for stem, p in zip(_FILES[split], paths, strict=True) if p is None]
        raise DatasetNotFoundError(
            f"Fashion-MNIST {split} files {missing} not found in {root}. Install them with "
            "'apt-get install dataset-fashion-mnist' (Debian), or point root= / $RELMON_FASHION_MNIST at a "
            "folder holding the IDX files (torchvision.datasets.FashionMNIST(download=True) writes them "
            "where internet is available). The shipped sample needs nothing: relmon.data.load_sample()."
        )
    images, labels = (read_idx(p) for p in paths)
    if images.shape[0] != labels.shape[0]:
        raise ValueError(f"{paths[0]} holds {images.shape[0]} images but {paths[1]} {labels.shape[0]} labels")
    return images, labels.astype(np.int64)


def load_sample() -> tuple[np.ndarray, np.ndarray]:
    """The labelled sample shipped with relmon: the first 2,000 Fashion-MNIST test images."""
    ref = resources.files("relmon.data").joinpath("sample/fashion_mnist_test_2000.npz")
    with resources.as_file(ref) as path, np.load(path) as npz:
        return npz["images"].copy(), npz["labels"].astype(np.int64)


def to_tensor(images: np.ndarray, normalize: bool = True):
    """uint8 ``(N, 28, 28)`` to float ``(N, 1, 28, 28)``: in ``[0, 1]``, then normalised if asked."""
    import torch

    x = torch.from_numpy(np.array(images, copy=True)).float().div_(255.0).unsqueeze(1)
    if normalize:
        x = (x - MEAN) / STD
    return x
