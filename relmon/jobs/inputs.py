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


def build_stream(cfg: MonitorConfig, model, listing: dict | None = None, calibration=None):
    """The input stream of one window: the (shifted) shipped sample or a folder of images (``listing``:
    the caller's ``fs.find(detail=True)`` of the folder, so it is not listed again).

    A folder's images are brought to ``image_size``, else to :func:`target_size` (the calibration's or
    the model's input size) by ``size_policy`` — never to the size of one of the input files. Files are
    read within ``max_file_bytes`` and the run deadline (``run_timeout_seconds``)."""
    from relmon.jobs.signals import STOP

    prep = get_preprocessing(model, "reading inputs")
    if cfg.input == "sample":
        x, labels = sample_images(cfg.n, cfg.shift, cfg.severity, cfg.seed)
        return TensorStream(x, labels, preprocessing=prep, stream=cfg.stream)
    target = None if cfg.image_size is not None else target_size(cfg, model, calibration)
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
        target_size=target,
        max_file_bytes=cfg.max_file_bytes,
        deadline=STOP.deadline,
    )


#: Input size (H, W) of the embedded Fashion-MNIST models.
EMBEDDED_INPUT_SIZE = (28, 28)


def target_size(cfg: MonitorConfig, model, calibration=None) -> tuple[int, int]:
    """``(H, W)`` a folder's images are brought to when ``image_size`` is not set: the calibration's
    ``input_size``, else the model's declared size (``relmon_input_size`` attribute; 28x28 for the
    embedded models). A ``ConfigError`` when none is known: the size never comes from an input file."""
    from relmon.config import ConfigError
    from relmon.models.loading import declared_input_size

    size = (calibration.meta.get("input_size") if calibration is not None else None) or declared_input_size(model)
    if size:
        return int(size[0]), int(size[1])
    if cfg.is_embedded:
        return EMBEDDED_INPUT_SIZE
    raise ConfigError(
        "image_size is not set and neither the calibration (input_size) nor the model (a relmon_input_size "
        "attribute) declares the model's input size; relmon does not take it from an input file (one odd "
        "file would set every image's size); fix: set image_size (flag --image-size) to the model's input size"
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


__all__ = ["EMBEDDED_INPUT_SIZE", "build_stream", "input_size", "latest_window", "sample_images", "target_size"]
