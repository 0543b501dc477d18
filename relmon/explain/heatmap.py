"""Reduction of relevance ``(B, C, H, W)`` to heatmaps ``(B, H, W)``."""

from __future__ import annotations

import torch

_NORM_METHODS = ("sensitivity", "deconvnet")


def to_heatmap(relevance: torch.Tensor, method: str = "lrp", norm: str = "l2") -> torch.Tensor:
    """Sum over channels for ``lrp:*``, ``gradient_x_input``, ``random`` and user attributions;
    the channel norm (``norm='l2'`` or ``'linf'``) for ``sensitivity`` and ``deconvnet``,
    whose signed channel values carry no relevance of their own (the gradient's sign says which way
    a pixel moves the score, not how much of it the pixel holds).
    A ``(B, H, W)`` input is returned unchanged.
    """
    if not isinstance(relevance, torch.Tensor):
        raise TypeError(f"relevance must be a torch.Tensor, got {type(relevance).__name__}")
    if relevance.dim() == 3:
        return relevance
    if relevance.dim() != 4:
        raise ValueError(
            f"heatmap must be (B, H, W) or (B, C, H, W), got shape {tuple(relevance.shape)}; "
            "add the batch dimension with .unsqueeze(0) for a single image"
        )
    if method in _NORM_METHODS:
        if norm == "l2":
            return relevance.norm(p=2, dim=1)
        if norm == "linf":
            return relevance.abs().amax(dim=1)
        raise ValueError(f"unknown norm {norm!r}; choose 'l2' or 'linf'")
    return relevance.sum(dim=1)
