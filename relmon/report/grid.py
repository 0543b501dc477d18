"""A grid of input images and their heatmaps, one column per method."""

from __future__ import annotations

import os
from collections.abc import Mapping, Sequence

import numpy as np
import torch

# Signed relevance (LRP, gradient x input) is shown on a diverging map centred at zero; pooled
# gradient norms and the random baseline are non-negative and get a sequential map.
_SEQUENTIAL = ("sensitivity", "deconvnet", "random")


def heatmap_grid(
    images: torch.Tensor,
    heatmaps: Mapping[str, torch.Tensor],
    path: str | os.PathLike,
    titles: Sequence[str] | None = None,
    dpi: int = 100,
) -> str:
    """Save a PNG with one row per image: the input, then each method's heatmap ``(B, H, W)``.

    ``images`` are ``(B, C, H, W)`` in ``[0, 1]`` (grey or RGB). Each heatmap is scaled per image
    to its own largest absolute value, so colours compare within a cell, not across cells.
    """
    from relmon.extras import require

    Figure = require("matplotlib.figure", "heatmap grids (figures)").Figure  # no pyplot: headless, user's backend untouched
    n = images.shape[0]
    cols = 1 + len(heatmaps)
    fig = Figure(figsize=(1.6 * cols, 1.6 * n))
    axes = fig.subplots(n, cols, squeeze=False)
    for i in range(n):
        img = images[i].detach().cpu().float()
        ax = axes[i, 0]
        if img.shape[0] == 1:
            ax.imshow(img[0].numpy(), cmap="gray", vmin=0, vmax=1)
        else:
            ax.imshow(img.permute(1, 2, 0).clamp(0, 1).numpy())
        if titles is not None:
            ax.set_ylabel(titles[i], fontsize=7)
        for j, (method, hm) in enumerate(heatmaps.items(), start=1):
            h = hm[i].detach().cpu().float().numpy()
            scale = float(np.abs(h).max()) or 1.0
            ax = axes[i, j]
            if method in _SEQUENTIAL:
                ax.imshow(h / scale, cmap="hot", vmin=0, vmax=1)
            else:
                ax.imshow(h / scale, cmap="bwr", vmin=-1, vmax=1)
            if i == 0:
                ax.set_title(method.replace("lrp:", "lrp:\n"), fontsize=7)
        axes[i, 0].set_title("input" if i == 0 else "", fontsize=7)
    for ax in axes.flat:
        ax.set_xticks([])
        ax.set_yticks([])
    fig.tight_layout()
    os.makedirs(os.path.dirname(os.fspath(path)) or ".", exist_ok=True)
    fig.savefig(path, dpi=dpi)
    return os.fspath(path)
