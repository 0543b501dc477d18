"""Heatmap images for experiment loggers: a strip of heatmaps as one RGB image, sent to every logger
that takes images (``log_image`` as W&B, Neptune or MLflow loggers have, or TensorBoard's
``experiment.add_image``)."""

from __future__ import annotations

from typing import Any

import numpy as np
import torch


def heatmap_strip(heatmaps: torch.Tensor, gap: int = 1) -> np.ndarray:
    """``(B, H, W)`` heatmaps side by side as one ``(H, B*W + (B-1)*gap, 3)`` uint8 RGB image.

    Each heatmap is scaled by its own largest ``|value|`` and drawn with matplotlib's diverging ``bwr``
    colormap (positive relevance red, negative blue, zero white), as in the HTML report's grids.
    """
    from matplotlib import colormaps

    h = heatmaps.detach().to(torch.float64).cpu()
    if h.dim() != 3 or h.shape[0] == 0:
        raise ValueError(f"heatmaps must be a non-empty (B, H, W) tensor, got shape {tuple(h.shape)}")
    scale = h.abs().flatten(1).amax(dim=1).clamp_min(1e-12)[:, None, None]
    rgb = colormaps["bwr"]((h / scale).numpy() * 0.5 + 0.5)[..., :3]  # (B, H, W, 3) in [0, 1]
    b, height, width = h.shape
    out = np.full((height, b * width + (b - 1) * gap, 3), 255, dtype=np.uint8)
    for i in range(b):
        out[:, i * (width + gap): i * (width + gap) + width] = np.round(rgb[i] * 255).astype(np.uint8)
    return out


def send_image(loggers: Any, key: str, image: np.ndarray, step: int) -> list[str]:
    """Send ``image`` (HWC uint8) to each logger that takes images; the names of those that did."""
    sent = []
    for logger in loggers or []:
        if callable(getattr(logger, "log_image", None)):
            logger.log_image(key=key, images=[image], step=step)
        else:
            experiment = getattr(logger, "experiment", None)
            if not callable(getattr(experiment, "add_image", None)):
                continue
            experiment.add_image(key, image, global_step=step, dataformats="HWC")
        sent.append(type(logger).__name__)
    return sent


__all__ = ["heatmap_strip", "send_image"]
