"""Planted shortcuts ("Clever Hans" cues) for testing audits and shortcut-aware monitoring.

Each kind writes a class-dependent cue into raw images in ``[0, 1]`` (``(N, C, H, W)``, any size
≥ 12×12), so a model trained on the planted images can score well by reading the cue instead of the
object:

- ``marker``: a 3×3 square of full intensity whose *position* depends on the class (five positions
  along the top edge, five along the bottom edge, cycling for more than ten classes);
- ``border``: a 1-pixel frame around the image whose *intensity* depends on the class
  (``0.2 + 0.75·c/(K−1)``): the same place for every class, a global cue;
- ``watermark``: a 6×6 patch in the bottom-right corner holding a class-dependent stripe *texture*
  (orientation and frequency depend on the class), drawn over the image with ``max``.

:func:`plant` writes the cue of each image's class into a share ``p`` of the images (the rest stay
clean); a share ``p_wrong`` gets the cue of another, random class instead (a *misleading* window:
the shortcut now points away from the truth).
"""

from __future__ import annotations

import math

import numpy as np
import torch

KINDS = ("marker", "border", "watermark")
MARKER = 3
WATERMARK = 6


def marker_box(cls: int, height: int, width: int) -> tuple[int, int, int, int]:
    """``(top, left, height, width)`` of class ``cls``'s marker square."""
    slot = cls % 10
    step = max(1, (width - 2 - MARKER) // 4)
    left = 1 + (slot % 5) * step
    top = 1 if slot < 5 else height - 1 - MARKER
    return top, min(left, width - MARKER), MARKER, MARKER


def watermark_box(height: int, width: int) -> tuple[int, int, int, int]:
    return height - WATERMARK, width - WATERMARK, WATERMARK, WATERMARK


def _texture(cls: int, num_classes: int) -> torch.Tensor:
    angle = math.pi * (cls % num_classes) / max(num_classes, 1)
    freq = 0.25 + 0.2 * (cls % 2)
    yy, xx = torch.meshgrid(torch.arange(WATERMARK, dtype=torch.float32),
                            torch.arange(WATERMARK, dtype=torch.float32), indexing="ij")
    phase = 2 * math.pi * freq * (xx * math.cos(angle) + yy * math.sin(angle))
    return 0.5 + 0.5 * torch.cos(phase)


def cue_regions(kind: str, height: int, width: int, num_classes: int = 10) -> list[list[int]]:
    """The rectangles ``[top, left, height, width]`` a kind writes into (over all classes)."""
    if kind == "marker":
        return [list(marker_box(c, height, width)) for c in range(min(num_classes, 10))]
    if kind == "border":
        return [[0, 0, 1, width], [height - 1, 0, 1, width], [1, 0, height - 2, 1], [1, width - 1, height - 2, 1]]
    if kind == "watermark":
        return [list(watermark_box(height, width))]
    raise ValueError(f"unknown shortcut kind {kind!r}; choose one of {', '.join(KINDS)}")


def apply_cue(x: torch.Tensor, cls: int, kind: str, num_classes: int = 10) -> torch.Tensor:
    """Write class ``cls``'s cue into one raw image ``(C, H, W)`` in place; returns it."""
    h, w = x.shape[-2:]
    if kind == "marker":
        t, left, mh, mw = marker_box(cls, h, w)
        x[:, t:t + mh, left:left + mw] = 1.0
    elif kind == "border":
        v = 0.2 + 0.75 * (cls % num_classes) / max(num_classes - 1, 1)
        x[:, 0, :] = v
        x[:, -1, :] = v
        x[:, :, 0] = v
        x[:, :, -1] = v
    elif kind == "watermark":
        t, left, mh, mw = watermark_box(h, w)
        x[:, t:t + mh, left:left + mw] = torch.maximum(x[:, t:t + mh, left:left + mw], _texture(cls, num_classes))
    else:
        raise ValueError(f"unknown shortcut kind {kind!r}; choose one of {', '.join(KINDS)}")
    return x


def plant(images: torch.Tensor, labels, kind: str, p: float = 0.9, p_wrong: float = 0.0,
          num_classes: int = 10, seed: int = 0) -> torch.Tensor:
    """A copy of raw ``images`` ``(N, C, H, W)`` in [0, 1] where a seeded share ``p_wrong`` of the images
    carries the cue of a random *other* class, and of the rest a share ``p`` the cue of their own class.
    ``plant(x, y, kind, p=0.9)`` is the training distribution; ``p_wrong=0.25`` a misleading window."""
    if kind not in KINDS:
        raise ValueError(f"unknown shortcut kind {kind!r}; choose one of {', '.join(KINDS)}")
    for name, v in (("p", p), ("p_wrong", p_wrong)):
        if not 0.0 <= v <= 1.0:
            raise ValueError(f"{name} must lie in [0, 1], got {v}")
    x = torch.as_tensor(images).clone()
    if x.ndim != 4 or min(x.shape[-2:]) < 12:
        raise ValueError(f"images must be (N, C, H, W) with H, W >= 12, got {tuple(x.shape)}")
    y = np.asarray(torch.as_tensor(labels).cpu()).astype(np.int64).reshape(-1)
    rng = np.random.default_rng(seed)
    wrong = rng.random(len(x)) < p_wrong
    right = ~wrong & (rng.random(len(x)) < p)
    shift = rng.integers(1, num_classes, size=len(x))
    for i in np.flatnonzero(wrong | right):
        cls = int((y[i] + shift[i]) % num_classes) if wrong[i] else int(y[i])
        apply_cue(x[i], cls, kind, num_classes)
    return x


__all__ = ["KINDS", "apply_cue", "cue_regions", "marker_box", "plant", "watermark_box"]
