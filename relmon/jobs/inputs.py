"""The job's inputs: one window of the shipped sample (optionally shifted) or of a folder of images, and
what the job reads off a stream (its image size, its newest window)."""

from __future__ import annotations

from typing import Any

import numpy as np
import torch
from torch.utils.data import Subset

from relmon.config import MonitorConfig
from relmon.data.streams import ImageFolderStream, TensorStream
from relmon.data.windows import window_indices
from relmon.preprocessing import get_preprocessing


def sample_images(
    n: int | None, shift: str | None = None, severity: int = 3, seed: int = 0, offset: int = 0
) -> tuple[Any, np.ndarray]:
    """``n`` shipped Fashion-MNIST images from ``offset`` (wrapping), float ``(n, 1, 28, 28)`` in [0, 1],
    optionally shifted, and their labels."""
    from relmon.data import load_sample

    images, labels = load_sample()
    total = len(images)
    n = total if n is None else int(n)
    index = (np.arange(n) + offset) % total
    x = torch.from_numpy(images[index]).float().div_(255.0).unsqueeze(1)
    if shift is not None:
        from relmon.data.shifts import apply_shift

        x = apply_shift(x, shift, severity, seed=seed)
    return x, labels[index]


def build_stream(cfg: MonitorConfig, model, listing: dict | None = None):
    """The input stream of one window: the (shifted) shipped sample or a folder of images (``listing``:
    the caller's ``fs.find(detail=True)`` of the folder, so it is not listed again)."""
    prep = get_preprocessing(model, "reading inputs")
    if cfg.input == "sample":
        x, labels = sample_images(cfg.n, cfg.shift, cfg.severity, cfg.seed)
        return TensorStream(x, labels, preprocessing=prep, stream=cfg.stream)
    return ImageFolderStream(
        cfg.input,
        preprocessing=prep,
        channels=cfg.channels,
        image_size=cfg.image_size,
        stream=cfg.stream,
        window=cfg.window,
        window_seconds=cfg.window_seconds,
        size_policy=cfg.size_policy,
        max_pixels=cfg.max_pixels,
        listing=listing,
    )


def input_size(stream) -> tuple[int, int] | None:
    """``(H, W)`` of the images a relmon stream yields (a folder's reference size, a tensor stream's
    shape; through only-new selections and Subsets); None when no image is readable."""
    while isinstance(stream, Subset) or hasattr(stream, "base"):
        stream = stream.dataset if isinstance(stream, Subset) else stream.base
    if hasattr(stream, "reference_size"):
        return stream.reference_size()
    x = getattr(stream, "x", None)
    return tuple(int(v) for v in x.shape[-2:]) if x is not None else None


def latest_window(stream) -> str | None:
    """The id of the newest window of an mtime-windowed stream (None: the stream is one window)."""
    if getattr(getattr(stream, "_windows", None), "window", None) != "mtime":
        return None
    return list(window_indices(stream))[-1]


__all__ = ["build_stream", "input_size", "latest_window", "sample_images"]
