"""Heatmap complexity: entropy, Gini, compressed sizes, including the degenerate cases."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch

from relmon.complexity import entropy_bits, gini, heatmap_complexity, jpeg_bytes, png_bytes, render_uint8


def degenerate(h: int = 8, w: int = 8) -> torch.Tensor:
    """Batch of: all-zero, one hot pixel (negative, to check |h|), constant nonzero."""
    out = torch.zeros(3, h, w)
    out[1, 2, 5] = -4.0
    out[2] = 0.3
    return out


def test_entropy_degenerate_cases():
    e = entropy_bits(degenerate())
    assert e[0].item() == 0.0  # all-zero: defined as 0 bits
    assert e[1].item() == 0.0 and not math.copysign(1.0, e[1].item()) < 0  # one hot pixel: 0, not -0
    assert e[2].item() == pytest.approx(math.log2(64), abs=1e-6)  # uniform: the maximum


def test_entropy_of_known_distribution_and_channel_sum():
    h = torch.zeros(1, 2, 2)
    h[0] = torch.tensor([[0.5, -0.25], [0.125, 0.125]])  # p = 1/2, 1/4, 1/8, 1/8 -> 1.75 bits
    assert entropy_bits(h).item() == pytest.approx(1.75, abs=1e-6)
    chw = torch.stack([h[0] * 0.5, h[0] * 0.5], dim=0)[None]  # (1, 2, 2, 2) summed over channels
    assert entropy_bits(chw).item() == pytest.approx(1.75, abs=1e-6)
    assert entropy_bits(h * 1000).item() == pytest.approx(1.75, abs=1e-6)  # scale-free


def test_gini_degenerate_cases_and_order():
    g = gini(degenerate())
    assert g[0].item() == 0.0
    assert g[1].item() == pytest.approx(1 - 1 / 64, abs=1e-6)
    assert g[2].item() == pytest.approx(0.0, abs=1e-6)
    torch.manual_seed(0)
    spread, peaked = torch.rand(1, 16, 16), torch.rand(1, 16, 16) ** 8
    assert gini(peaked).item() > gini(spread).item()
    # Hurley & Rickard closed form for c = (0, 1, 2, 3): 1 - 2/6 * (1*2.5 + 2*1.5 + 3*0.5)/4 = 5/12
    assert gini(torch.tensor([[[0.0, 1.0], [2.0, 3.0]]])).item() == pytest.approx(5 / 12, abs=1e-6)


def test_rendering_normalisation():
    img = render_uint8(degenerate())
    assert img.dtype == np.uint8 and img.shape == (3, 8, 8)
    assert img[0].max() == 0  # all-zero -> all black
    assert img[1, 2, 5] == 255 and img[1].sum() == 255  # |h| / max
    assert (img[2] == 255).all()


def test_compressed_sizes():
    torch.manual_seed(1)
    constant = torch.ones(1, 28, 28)
    noise = torch.rand(1, 28, 28)
    assert png_bytes(constant).item() < png_bytes(noise).item()
    assert jpeg_bytes(constant).item() < jpeg_bytes(noise).item()
    sizes = png_bytes(torch.cat([constant, noise]))
    assert sizes.dtype == torch.int64 and sizes.shape == (2,)
    assert png_bytes(constant * 7).item() == png_bytes(constant).item()  # rendering is scale-free
    with pytest.raises(ValueError, match="quality"):
        jpeg_bytes(noise, quality=0)


def test_heatmap_complexity_and_errors():
    out = heatmap_complexity(degenerate())
    assert set(out) == {"entropy_bits", "png_bytes", "jpeg_bytes", "gini"}
    assert all(v.shape == (3,) for v in out.values())
    with pytest.raises(ValueError, match=r"\(B, H, W\)"):
        entropy_bits(torch.zeros(8, 8))
    with pytest.raises(ValueError, match="non-finite"):
        gini(torch.full((1, 2, 2), float("nan")))
