"""Where relevance sits: shares of positive relevance per candidate region, and the suspect rule.

Candidate regions of an ``H × W`` image:

- the cells of the regular ``region × region`` grid (the perturbation grid: the last row and column
  of cells are smaller when the size is not a multiple), named ``cell r,c``;
- the border ring, the outermost ``border`` pixels on every side (named ``border``), where a
  global cue such as a frame lies that no single cell holds.

A sample's **share** in a region is the region's sum of positive relevance ``max(h, 0)`` divided
by the image's; a class's share is the mean over the samples explained for that class (samples
with no positive relevance are left out and counted). A region's **pixel share** is its area over
``H·W``: what a heatmap spread evenly would give it.

**Suspect rule.** A region is suspect for a class when its share is at least ``min_excess`` above
its pixel share *and* at least ``min_lift`` times it (defaults 0.15 and 3: a region that holds 15
points more of a class's relevance than its area, and three times its area). The excess keeps
large regions (the ring) from being flagged for a few points of lift, the lift keeps small cells
from being flagged for what any object in them would draw. The defaults were chosen on planted
``marker`` and ``border`` shortcuts and their controls (``docs/shortcuts.md``); the ``watermark``
kind was held out of that choice.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import torch

MIN_EXCESS = 0.15
MIN_LIFT = 3.0


@dataclass(frozen=True)
class Region:
    """A named candidate region: one or more rectangles ``(top, left, height, width)``."""

    name: str
    rects: tuple[tuple[int, int, int, int], ...]


def grid_cells(height: int, width: int, region: int) -> list[Region]:
    out = []
    for i, top in enumerate(range(0, height, region)):
        for j, left in enumerate(range(0, width, region)):
            out.append(Region(f"cell {i},{j}", ((top, left, min(region, height - top), min(region, width - left)),)))
    return out


def border_ring(height: int, width: int, border: int) -> Region:
    b = border
    return Region("border", ((0, 0, b, width), (height - b, 0, b, width), (b, 0, height - 2 * b, b),
                             (b, width - b, height - 2 * b, b)))


def candidate_regions(height: int, width: int, region: int = 4, border: int | None = None) -> list[Region]:
    """The grid cells, then the border ring (``border`` pixels wide, default ``region // 2``; 0 omits it)."""
    if region < 1 or region > min(height, width):
        raise ValueError(f"region must be between 1 and the image side {min(height, width)}, got {region}")
    border = max(1, region // 2) if border is None else int(border)
    if border < 0 or 2 * border >= min(height, width):
        raise ValueError(f"border must be between 0 and {(min(height, width) - 1) // 2}, got {border}")
    regions = grid_cells(height, width, region)
    if border:
        regions.append(border_ring(height, width, border))
    return regions


def region_masks(regions: list[Region], height: int, width: int) -> torch.Tensor:
    """Boolean masks ``(R, H, W)``."""
    masks = torch.zeros(len(regions), height, width, dtype=torch.bool)
    for k, reg in enumerate(regions):
        for t, left, h, w in reg.rects:
            masks[k, t:t + h, left:left + w] = True
    return masks


def rects_mask(rects, height: int, width: int) -> torch.Tensor:
    """Boolean ``(H, W)`` mask of the union of rectangles ``[top, left, height, width]``."""
    mask = torch.zeros(height, width, dtype=torch.bool)
    for r in rects:
        if len(r) != 4:
            raise ValueError(f"a region is [top, left, height, width], got {list(r)}")
        t, left, h, w = (int(v) for v in r)
        if h < 1 or w < 1 or t < 0 or left < 0 or t + h > height or left + w > width:
            raise ValueError(
                f"region [top, left, height, width] = {[t, left, h, w]} does not fit in a {height}x{width} image"
            )
        mask[t:t + h, left:left + w] = True
    return mask


def relevance_shares(heatmaps: torch.Tensor, masks: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """Per-sample share of positive relevance in each region: ``(N, R)``, and a ``(N,)`` bool of the
    samples that have positive relevance at all (their rows are NaN otherwise)."""
    pos = heatmaps.detach().float().clamp(min=0).flatten(1)  # (N, HW)
    total = pos.sum(1)
    sums = pos @ masks.flatten(1).float().T  # (N, R)
    ok = total > 0
    shares = torch.full_like(sums, float("nan"))
    shares[ok] = sums[ok] / total[ok, None]
    return shares, ok


def pixel_shares(masks: torch.Tensor) -> torch.Tensor:
    return masks.flatten(1).float().mean(1)


def suspect(share: np.ndarray, pixel_share: np.ndarray, min_excess: float = MIN_EXCESS,
            min_lift: float = MIN_LIFT) -> np.ndarray:
    """The suspect rule (module doc), element-wise; NaN shares are never suspect."""
    share = np.asarray(share, dtype=float)
    pixel_share = np.asarray(pixel_share, dtype=float)
    with np.errstate(invalid="ignore"):
        return (share - pixel_share >= min_excess) & (share >= min_lift * pixel_share)


__all__ = [
    "MIN_EXCESS",
    "MIN_LIFT",
    "Region",
    "border_ring",
    "candidate_regions",
    "grid_cells",
    "pixel_shares",
    "rects_mask",
    "region_masks",
    "relevance_shares",
    "suspect",
]
