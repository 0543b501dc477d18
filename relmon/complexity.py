"""Heatmap complexity: Shannon entropy, compressed size (PNG, JPEG) and Gini sparseness.

Samek et al. (2015) measure how cluttered a heatmap is by its entropy and by the size of its
compressed image. Every function takes heatmaps ``(B, H, W)`` or ``(B, C, H, W)`` (summed over
channels first, the same rule as the perturbation engine) and returns one value per sample.

Degenerate cases, by definition:

- all-zero heatmap: entropy 0.0 bits, Gini 0.0, rendered as an all-black image;
- one hot pixel: entropy 0.0 bits, Gini ``1 - 1/n`` (``n = H*W``);
- constant nonzero heatmap: entropy ``log2(n)`` bits (the maximum), Gini 0.0.
"""

from __future__ import annotations

import io

import numpy as np
import torch
from PIL import Image

from relmon.explain.heatmap import to_heatmap

JPEG_QUALITY = 90


def _abs_heatmap(heatmap: torch.Tensor) -> torch.Tensor:
    """``(B, H*W)`` float64 absolute values of the channel-summed heatmap."""
    if not isinstance(heatmap, torch.Tensor):
        heatmap = torch.as_tensor(np.asarray(heatmap))
    heatmap = to_heatmap(heatmap)  # channel sum, the perturbation engine's rule
    if heatmap.numel() == 0 or heatmap.shape[1] * heatmap.shape[2] == 0:
        raise ValueError(f"heatmap is empty (shape {tuple(heatmap.shape)})")
    a = heatmap.detach().to(torch.float64).abs()
    if not bool(torch.isfinite(a).all()):
        raise ValueError("heatmap holds non-finite values (NaN or inf)")
    return a.reshape(a.shape[0], -1)


def entropy_bits(heatmap: torch.Tensor) -> torch.Tensor:
    """``(B,)`` float32 Shannon entropy, in bits, of ``p = |h| / sum |h|`` (0 for an all-zero heatmap)."""
    a = _abs_heatmap(heatmap)
    total = a.sum(dim=1, keepdim=True)
    p = a / torch.where(total > 0, total, torch.ones_like(total))
    h = -torch.special.xlogy(p, p).sum(dim=1) / np.log(2.0)
    # -sum p log p is >= 0; map the rounding error and the -0.0 of a one-hot heatmap to 0.0.
    return torch.where(h > 0, h, torch.zeros_like(h)).to(torch.float32)


def gini(heatmap: torch.Tensor) -> torch.Tensor:
    """``(B,)`` float32 Gini index of ``|h|`` (Hurley & Rickard 2009): 0 = even, ``1 - 1/n`` = one pixel.

    ``G = 1 - 2 * sum_k (c_(k) / ||c||_1) * (n - k + 1/2) / n`` with ``c`` sorted ascending, ``k = 1..n``.
    All-zero heatmaps get 0.
    """
    a = _abs_heatmap(heatmap)
    n = a.shape[1]
    c = torch.sort(a, dim=1).values
    total = c.sum(dim=1)
    weights = (n - torch.arange(1, n + 1, dtype=torch.float64, device=a.device) + 0.5) / n
    g = 1.0 - 2.0 * (c * weights).sum(dim=1) / torch.where(total > 0, total, torch.ones_like(total))
    return torch.where(total > 0, g, torch.zeros_like(g)).to(torch.float32)


def render_uint8(heatmap: torch.Tensor) -> np.ndarray:
    """``(B, H, W)`` uint8 grayscale rendering: ``round(255 * |h| / max |h|)`` per sample.

    An all-zero heatmap renders all black. This is the image whose PNG/JPEG sizes are reported.
    """
    b = heatmap.shape[0]
    shape = heatmap.shape[-2:]
    a = _abs_heatmap(heatmap)
    peak = a.amax(dim=1, keepdim=True)
    scaled = a / torch.where(peak > 0, peak, torch.ones_like(peak)) * 255.0
    return scaled.round().clamp(0, 255).to(torch.uint8).reshape(b, *shape).cpu().numpy()


def _encoded_sizes(images: np.ndarray, fmt: str, **options) -> torch.Tensor:
    """Encoded sizes of :func:`render_uint8`'s images."""
    sizes = []
    for img in images:  # the encoders take one image at a time
        buf = io.BytesIO()
        Image.fromarray(img).save(buf, format=fmt, **options)
        sizes.append(buf.tell())
    return torch.tensor(sizes, dtype=torch.int64)


def png_bytes(heatmap: torch.Tensor) -> torch.Tensor:
    """``(B,)`` int64 size in bytes of the PNG (zlib level 9) of :func:`render_uint8`'s image."""
    return _png_sizes(render_uint8(heatmap))


def _png_sizes(images: np.ndarray) -> torch.Tensor:
    return _encoded_sizes(images, "PNG", optimize=False, compress_level=9)


def jpeg_bytes(heatmap: torch.Tensor, quality: int = JPEG_QUALITY) -> torch.Tensor:
    """``(B,)`` int64 size in bytes of the baseline JPEG (``quality``, default 90) of the rendering."""
    return _jpeg_sizes(render_uint8(heatmap), quality)


def _jpeg_sizes(images: np.ndarray, quality: int) -> torch.Tensor:
    if not 1 <= int(quality) <= 95:
        raise ValueError(f"JPEG quality must be in 1..95, got {quality}")
    return _encoded_sizes(images, "JPEG", quality=int(quality), optimize=False)


def heatmap_complexity(heatmap: torch.Tensor, jpeg_quality: int = JPEG_QUALITY) -> dict[str, torch.Tensor]:
    """All complexity measures of a batch: ``entropy_bits``, ``png_bytes``, ``jpeg_bytes``, ``gini``."""
    images = render_uint8(heatmap)  # one rendering for both encoders
    return {
        "entropy_bits": entropy_bits(heatmap),
        "png_bytes": _png_sizes(images),
        "jpeg_bytes": _jpeg_sizes(images, jpeg_quality),
        "gini": gini(heatmap),
    }


__all__ = [
    "JPEG_QUALITY",
    "entropy_bits",
    "gini",
    "heatmap_complexity",
    "jpeg_bytes",
    "png_bytes",
    "render_uint8",
]
