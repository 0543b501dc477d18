"""Synthetic distribution shifts (corruptions) at 5 severities, seeded, and mixed clean/shifted windows.

Every shift takes raw images ``x`` shaped ``(B, C, H, W)``, float in ``[0, 1]`` (apply them **before**
normalisation), and returns a new tensor of the same shape, dtype and range. ``severity`` is 1 (mild)
to 5 (strong); a larger severity moves the images further from the clean ones (pixel MSE grows).
Random shifts (noise, rotation sign, occlusion position) draw from a CPU generator seeded by ``seed``,
so a call is reproducible whatever the device.

Parameters are chosen for small images (Fashion-MNIST, 28 x 28); sizes scale with ``H``/``W``.
"""

from __future__ import annotations

import io
import math
from collections.abc import Callable

import numpy as np
import torch
import torch.nn.functional as F

SEVERITIES: tuple[int, ...] = (1, 2, 3, 4, 5)

# One parameter per severity 1..5.
_NOISE_SIGMA = (0.04, 0.08, 0.12, 0.18, 0.26)
_BLUR_SIGMA = (0.5, 0.75, 1.0, 1.5, 2.0)
_CONTRAST = (0.75, 0.55, 0.4, 0.25, 0.12)
_BRIGHTNESS = (0.1, 0.2, 0.3, 0.4, 0.55)
_ROTATION_DEG = (10.0, 20.0, 30.0, 45.0, 60.0)
_OCCLUSION_FRACTION = (0.2, 0.3, 0.4, 0.5, 0.6)  # side of the square patch / image side
_PIXELATION_FRACTION = (0.75, 0.55, 0.45, 0.35, 0.25)  # downsampled side / image side
_JPEG_QUALITY = (60, 30, 15, 8, 3)


def _check(x: torch.Tensor, severity: int) -> None:
    if not isinstance(x, torch.Tensor) or x.dim() != 4:
        raise ValueError(f"shifts expect raw images (B, C, H, W), got {getattr(x, 'shape', type(x))}")
    if not x.is_floating_point():
        raise ValueError(f"shifts expect float images in [0, 1], got dtype {x.dtype}")
    if severity not in SEVERITIES:
        raise ValueError(f"severity must be one of {SEVERITIES}, got {severity!r}")


def _generator(seed: int) -> torch.Generator:
    return torch.Generator(device="cpu").manual_seed(int(seed))


def gaussian_noise(x: torch.Tensor, severity: int = 1, seed: int = 0) -> torch.Tensor:
    """Additive Gaussian noise, sigma 0.04 .. 0.26 (pixel units), clipped to [0, 1]."""
    _check(x, severity)
    noise = torch.randn(x.shape, generator=_generator(seed), dtype=torch.float32).to(x.device, x.dtype)
    return (x + _NOISE_SIGMA[severity - 1] * noise).clamp_(0.0, 1.0)


def blur(x: torch.Tensor, severity: int = 1, seed: int = 0) -> torch.Tensor:
    """Gaussian blur, sigma 0.5 .. 2 pixels (separable, reflect padding)."""
    _check(x, severity)
    sigma = _BLUR_SIGMA[severity - 1]
    radius = max(1, math.ceil(3 * sigma))
    t = torch.arange(-radius, radius + 1, dtype=x.dtype, device=x.device)
    k = torch.exp(-0.5 * (t / sigma) ** 2)
    k = k / k.sum()
    c = x.shape[1]
    pad = min(radius, x.shape[-1] - 1, x.shape[-2] - 1)
    out = F.pad(x, (pad, pad, pad, pad), mode="reflect")
    if pad < radius:  # tiny images: reflect cannot pad further, replicate the rest
        out = F.pad(out, (radius - pad,) * 4, mode="replicate")
    out = F.conv2d(out, k.view(1, 1, 1, -1).expand(c, 1, 1, -1), groups=c)
    out = F.conv2d(out, k.view(1, 1, -1, 1).expand(c, 1, -1, 1), groups=c)
    return out.clamp_(0.0, 1.0)


def contrast(x: torch.Tensor, severity: int = 1, seed: int = 0) -> torch.Tensor:
    """Contrast reduction towards each image's mean: factor 0.75 .. 0.12."""
    _check(x, severity)
    mean = x.mean(dim=(1, 2, 3), keepdim=True)
    return ((x - mean) * _CONTRAST[severity - 1] + mean).clamp_(0.0, 1.0)


def brightness(x: torch.Tensor, severity: int = 1, seed: int = 0) -> torch.Tensor:
    """Brightness increase: + 0.1 .. 0.55, clipped to [0, 1]."""
    _check(x, severity)
    return (x + _BRIGHTNESS[severity - 1]).clamp_(0.0, 1.0)


def rotation(x: torch.Tensor, severity: int = 1, seed: int = 0) -> torch.Tensor:
    """Rotation about the centre by +-10 .. 60 degrees (sign drawn per image), zero fill, bilinear."""
    _check(x, severity)
    sign = torch.randint(0, 2, (x.shape[0],), generator=_generator(seed)).to(x.dtype) * 2 - 1
    theta = sign * math.radians(_ROTATION_DEG[severity - 1])
    cos, sin = torch.cos(theta), torch.sin(theta)
    zero = torch.zeros_like(cos)
    mat = torch.stack([torch.stack([cos, -sin, zero], 1), torch.stack([sin, cos, zero], 1)], 1).to(x.device)
    grid = F.affine_grid(mat, list(x.shape), align_corners=False)
    return F.grid_sample(x, grid, mode="bilinear", padding_mode="zeros", align_corners=False).clamp_(0.0, 1.0)


def occlusion(x: torch.Tensor, severity: int = 1, seed: int = 0) -> torch.Tensor:
    """A grey (0.5) square patch, side 20 % .. 60 % of the image, at a seeded position per image."""
    _check(x, severity)
    b, _, h, w = x.shape
    frac = _OCCLUSION_FRACTION[severity - 1]
    ph, pw = max(1, round(frac * h)), max(1, round(frac * w))
    u = torch.rand((b, 2), generator=_generator(seed))
    # Centre positions drawn as fractions, so a larger patch at the same seed covers the smaller one.
    cy = (u[:, 0] * (h - ph) + ph / 2).to(x.device)
    cx = (u[:, 1] * (w - pw) + pw / 2).to(x.device)
    ys = torch.arange(h, device=x.device).view(1, h, 1) + 0.5
    xs = torch.arange(w, device=x.device).view(1, 1, w) + 0.5
    inside = ((ys - cy.view(b, 1, 1)).abs() <= ph / 2) & ((xs - cx.view(b, 1, 1)).abs() <= pw / 2)
    return torch.where(inside.unsqueeze(1), torch.full_like(x, 0.5), x)


def pixelation(x: torch.Tensor, severity: int = 1, seed: int = 0) -> torch.Tensor:
    """Area downsampling to 75 % .. 25 % of the side, then nearest upsampling back."""
    _check(x, severity)
    h, w = x.shape[-2:]
    frac = _PIXELATION_FRACTION[severity - 1]
    small = F.interpolate(x, size=(max(1, round(h * frac)), max(1, round(w * frac))), mode="area")
    return F.interpolate(small, size=(h, w), mode="nearest").clamp_(0.0, 1.0)


def jpeg(x: torch.Tensor, severity: int = 1, seed: int = 0) -> torch.Tensor:
    """JPEG compression (PIL) at quality 60 .. 3, per image (grayscale for 1 channel, RGB for 3)."""
    from PIL import Image

    _check(x, severity)
    if x.shape[1] not in (1, 3):
        raise ValueError(f"jpeg needs 1 or 3 channels, got {x.shape[1]}")
    quality = _JPEG_QUALITY[severity - 1]
    arr = (x.detach().cpu().clamp(0, 1) * 255.0).round().to(torch.uint8).permute(0, 2, 3, 1).numpy()
    out = np.empty_like(arr)
    for i, img in enumerate(arr):
        pil = Image.fromarray(img[..., 0] if img.shape[-1] == 1 else img)
        buf = io.BytesIO()
        pil.save(buf, format="JPEG", quality=quality)
        buf.seek(0)
        dec = np.asarray(Image.open(buf).convert("L" if img.shape[-1] == 1 else "RGB"))
        out[i] = dec.reshape(img.shape)
    res = torch.from_numpy(out).permute(0, 3, 1, 2).to(device=x.device, dtype=x.dtype) / 255.0
    return res.contiguous()


SHIFTS: dict[str, Callable[..., torch.Tensor]] = {
    "gaussian_noise": gaussian_noise,
    "blur": blur,
    "contrast": contrast,
    "brightness": brightness,
    "rotation": rotation,
    "occlusion": occlusion,
    "pixelation": pixelation,
    "jpeg": jpeg,
}


def apply_shift(x: torch.Tensor, name: str, severity: int, seed: int = 0) -> torch.Tensor:
    """Apply the shift ``name`` (a key of :data:`SHIFTS`) at ``severity`` 1..5 to raw images in [0, 1]."""
    if name not in SHIFTS:
        raise ValueError(f"unknown shift {name!r}; known: {', '.join(SHIFTS)}")
    return SHIFTS[name](x, severity=severity, seed=seed)


def mixed_window(
    clean: torch.Tensor, shifted: torch.Tensor, proportion: float, seed: int = 0
) -> tuple[torch.Tensor, torch.Tensor]:
    """A window of ``B`` images of which ``round(proportion * B)`` (a seeded choice) come from ``shifted``.

    ``clean`` and ``shifted`` are ``(B, C, H, W)`` (typically ``shifted = apply_shift(clean, ...)``).
    Returns ``(images, is_shifted)``: the mixed ``(B, C, H, W)`` tensor and a ``(B,)`` bool mask.
    """
    if clean.shape != shifted.shape:
        raise ValueError(f"clean and shifted must have the same shape, got {tuple(clean.shape)} and "
                         f"{tuple(shifted.shape)}")
    if not 0.0 <= float(proportion) <= 1.0:
        raise ValueError(f"proportion must be in [0, 1], got {proportion!r}")
    b = clean.shape[0]
    k = round(float(proportion) * b)
    mask = torch.zeros(b, dtype=torch.bool)
    mask[torch.randperm(b, generator=_generator(seed))[:k]] = True
    mask = mask.to(clean.device)
    return torch.where(mask.view(b, 1, 1, 1), shifted, clean), mask


__all__ = [
    "SEVERITIES",
    "SHIFTS",
    "apply_shift",
    "blur",
    "brightness",
    "contrast",
    "gaussian_noise",
    "jpeg",
    "mixed_window",
    "occlusion",
    "pixelation",
    "rotation",
]
