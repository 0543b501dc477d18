"""Where the relevance sits, per sample: relevance-location features for monitoring, and the
shortcut-broken variants that teach the calibration what a broken shortcut does.

Given suspect regions (rectangles ``[top, left, height, width]`` from ``relmon audit`` or drawn by
the user), per sample:

- ``suspect_share``: the share of the positive relevance that falls in the suspect regions;
- ``rest_relevance``: the signed relevance outside them over the signed total (1 when the suspect
  regions carry nothing; below 1 when they carry the evidence; NaN when the total is 0);
- ``occlusion_flip``: 1 when blanking the suspect regions (raw value ``low``, the background of
  images scaled to [0, 1]) changes the prediction, else 0 — one extra forward, no heatmap;
- ``occlusion_drop``: the predicted class's softmax probability minus the same class's after the
  blanking.

:func:`shortcut_variant` makes the calibration windows ``remove`` (suspect regions blanked) and
``shuffle`` (their contents swapped between the window's images by a seeded permutation).
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np
import torch

from relmon.records import LOCATION_COLUMNS  # the records' optional columns: one declaration

VARIANTS = ("remove", "shuffle")


def suspect_mask(rects: Sequence[Sequence[int]], height: int, width: int) -> torch.Tensor:
    """``(H, W)`` bool mask of the suspect regions; a clear error for a rectangle outside the image."""
    from relmon.audit.regions import rects_mask

    if not rects:
        raise ValueError("suspect_regions is empty; fix: give at least one [top, left, height, width] rectangle")
    return rects_mask(rects, height, width)


def blank(raw: torch.Tensor, mask: torch.Tensor, low: float = 0.0) -> torch.Tensor:
    """A copy of raw images ``(B, C, H, W)`` with the masked pixels set to ``low``."""
    out = raw.clone()
    out[..., mask.to(raw.device)] = low
    return out


def shortcut_variant(raw: torch.Tensor, mask: torch.Tensor, variant: str, low: float = 0.0,
                     seed: int = 0) -> torch.Tensor:
    """``remove``: the suspect regions blanked; ``shuffle``: each image gets the suspect-region pixels of
    another image of the batch (a seeded derangement, so no image keeps its own)."""
    if variant == "remove":
        return blank(raw, mask, low)
    if variant != "shuffle":
        raise ValueError(f"unknown shortcut variant {variant!r}; choose one of {', '.join(VARIANTS)}")
    n = len(raw)
    if n < 2:
        return raw.clone()
    gen = np.random.default_rng(seed)
    order = gen.permutation(n)
    perm = np.empty(n, dtype=np.int64)
    perm[order] = np.roll(order, -1)  # one cycle through a random order: no image keeps its own
    out = raw.clone()
    m = mask.to(raw.device)
    out[..., m] = raw[torch.as_tensor(perm)][..., m]
    return out


def location_features(
    model,
    x: torch.Tensor,
    relevance: torch.Tensor,
    pred: torch.Tensor,
    mask: torch.Tensor,
    raw: torch.Tensor | None = None,
    low: float = 0.0,
    logits: torch.Tensor | None = None,
) -> dict[str, torch.Tensor]:
    """Per-sample location features (module doc), each ``(B,)`` float.

    ``x`` is the batch in the model's input space, ``relevance`` its heatmaps ``(B, H, W)`` (or
    ``(B, C, H, W)``, summed over channels) for the predicted classes ``pred``; the occlusion blanks
    the raw images (``raw``, or ``x`` mapped back with the model's preprocessing) and normalises again.
    ``logits``: the clean logits of ``x`` when already computed (saves a forward: the occlusion is then
    the one extra forward).
    """
    from relmon.preprocessing import get_preprocessing

    h = relevance.sum(1) if relevance.dim() == 4 else relevance
    h = h.detach().float()
    m = mask.to(h.device)
    pos = h.clamp(min=0)
    pos_total = pos.flatten(1).sum(1)
    share = torch.where(pos_total > 0, pos[:, m].sum(1) / pos_total.clamp(min=1e-12),
                        torch.full_like(pos_total, float("nan")))
    total = h.flatten(1).sum(1)
    rest = torch.where(total != 0, h[:, ~m].sum(1) / torch.where(total != 0, total, torch.ones_like(total)),
                       torch.full_like(total, float("nan")))
    prep = get_preprocessing(model, "the occlusion of suspect regions")
    if raw is None:
        raw = prep.denormalize(x.detach())
    with torch.no_grad():
        p0 = (model(x) if logits is None else logits.detach()).float().softmax(1)
        p1 = model(prep.normalize(blank(raw, mask, low))).float().softmax(1)
    pred = pred.to(p0.device).long()
    flip = (p1.argmax(1) != pred).float()
    drop = p0.gather(1, pred[:, None])[:, 0] - p1.gather(1, pred[:, None])[:, 0]
    return {"suspect_share": share.cpu(), "rest_relevance": rest.cpu(), "occlusion_flip": flip.cpu(),
            "occlusion_drop": drop.cpu()}


__all__ = ["LOCATION_COLUMNS", "VARIANTS", "blank", "location_features", "shortcut_variant", "suspect_mask"]
