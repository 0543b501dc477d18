"""Where relevance sits: shares of positive relevance per candidate region, and the suspect rule.

Candidate regions of an ``H × W`` image (three families):

- the cells of the regular ``region × region`` grid (the perturbation grid: the last row and column
  of cells are smaller when the size is not a multiple), named ``cell r,c``;
- the border rings of every width ``1..border`` pixels (default ``border = region // 2``), named
  ``border Npx``: where a global cue such as a frame lies that no single cell holds. A 1-pixel frame
  holds 14 % of a 28×28 image's pixels, a 2-pixel one 27 %: a cue drawn in the outermost pixel only
  drowns in the wider ring, so each width is its own candidate;
- the four corner blocks of ``corner × corner`` pixels (default ``2 · region``: 2×2 grid cells),
  named ``corner top-left`` etc.: where overlays (watermarks, source tags, time stamps) sit, and
  where a cue that straddles cell boundaries is whole.

A sample's **share** in a region is the region's sum of positive relevance ``max(h, 0)`` divided
by the image's; a class's share is the mean over the samples explained for that class (samples
with no positive relevance are left out and counted). A region's **pixel share** is its area over
``H·W``: what a heatmap spread evenly would give it.

**Suspect rule.** A region is suspect for a class when its share is at least ``min_excess`` above
its pixel share *and* at least ``min_lift`` times it (defaults 0.15 and 2: a region that holds 15
points more of a class's relevance than its area, and twice its area). The excess keeps small
cells from being flagged for what any object in them draws (for a 4×4 cell of a 28×28 image the
excess is the binding condition: 17 % of the relevance in 2 % of the pixels); the lift keeps large
regions from being flagged for a few points above their area (it binds from a pixel share of 15 %
on, e.g. the 2-pixel ring needs 53 %). The defaults and the families were chosen on planted
``marker`` and ``border`` shortcuts and their controls (``docs/shortcuts.md``: the first rule,
lift 3 and one 2-pixel ring, missed the 1-pixel border frame); the ``watermark`` kind was held out
of that choice (the corner family comes from where overlays sit in practice, Lapuschkin et al.
2019's horse source tag, not from the watermark's measurements).
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import torch

MIN_EXCESS = 0.15
MIN_LIFT = 2.0


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
    return Region(f"border {b}px", ((0, 0, b, width), (height - b, 0, b, width), (b, 0, height - 2 * b, b),
                                    (b, width - b, height - 2 * b, b)))


def corner_blocks(height: int, width: int, corner: int) -> list[Region]:
    c = corner
    return [Region("corner top-left", ((0, 0, c, c),)), Region("corner top-right", ((0, width - c, c, c),)),
            Region("corner bottom-left", ((height - c, 0, c, c),)),
            Region("corner bottom-right", ((height - c, width - c, c, c),))]


def candidate_regions(height: int, width: int, region: int = 4, border: int | None = None,
                      corner: int | None = None) -> list[Region]:
    """The grid cells, the border rings of widths ``1..border`` (default ``region // 2``, at least 1;
    0 omits them), then the four corner blocks of side ``corner`` (default ``2 · region``, capped at
    half the shorter side; 0 omits them)."""
    side = min(height, width)
    if region < 1 or region > side:
        raise ValueError(f"region must be between 1 and the image side {side}, got {region}")
    border = max(1, region // 2) if border is None else int(border)
    if border < 0 or 2 * border >= side:
        raise ValueError(f"border must be between 0 and {(side - 1) // 2}, got {border}")
    corner = min(2 * region, side // 2) if corner is None else int(corner)
    if corner < 0 or 2 * corner > side:
        raise ValueError(f"corner must be between 0 and {side // 2}, got {corner}")
    regions = grid_cells(height, width, region)
    regions += [border_ring(height, width, b) for b in range(1, border + 1)]
    if corner:
        regions += corner_blocks(height, width, corner)
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
    "corner_blocks",
    "grid_cells",
    "pixel_shares",
    "rects_mask",
    "region_masks",
    "relevance_shares",
    "suspect",
]
