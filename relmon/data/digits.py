"""scikit-learn's bundled handwritten digits (1,797 images of 8x8 pixels), a second tiny real data set."""

from __future__ import annotations

import numpy as np


def load_digits() -> tuple[np.ndarray, np.ndarray]:
    """Images ``(N, 1, 8, 8)`` float32 in ``[0, 1]`` and labels ``(N,)`` int64."""
    from sklearn.datasets import load_digits as _load

    bunch = _load()
    images = (bunch.images / 16.0).astype(np.float32)[:, None]
    return images, bunch.target.astype(np.int64)
