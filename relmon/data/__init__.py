"""Input data: Fashion-MNIST (Debian package or the shipped sample) and scikit-learn's digits."""

from relmon.data.digits import load_digits
from relmon.data.fashion_mnist import (
    CLASSES as FASHION_MNIST_CLASSES,
)
from relmon.data.fashion_mnist import (
    DatasetNotFoundError,
    load_fashion_mnist,
    load_sample,
    read_idx,
    to_tensor,
)

__all__ = [
    "FASHION_MNIST_CLASSES",
    "DatasetNotFoundError",
    "load_digits",
    "load_fashion_mnist",
    "load_sample",
    "read_idx",
    "to_tensor",
]
