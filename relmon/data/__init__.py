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

# Input streams (relmon.data.streams) are exported lazily: that module imports torch (and its
# StreamDataModule, made on first use, pytorch_lightning), which `import relmon.data` does not need.
_STREAM_EXPORTS = (
    "BadInputWarning",
    "BadSample",
    "ImageFolderStream",
    "StreamDataModule",
    "TensorStream",
    "collate_skip_bad",
    "fashion_mnist_stream",
    "is_empty_batch",
    "iter_windows",
    "window_indices",
)
__all__ += list(_STREAM_EXPORTS)


def __getattr__(name):
    if name in _STREAM_EXPORTS:
        from relmon.data import streams

        return getattr(streams, name)
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
