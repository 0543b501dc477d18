"""Calibration windows in which the shortcut is broken (issue 19, ``shortcut_variants``).

For each variant of ``shortcut_variants`` (``remove``: the suspect regions blanked; ``shuffle``: their
contents swapped between the window's images, :func:`relmon.location.shortcut_variant`) and each share
``s`` of ``shortcut_shares`` (default 0.25, 0.5, 1.0), ``relmon calibrate`` adds one window named
``shortcut_<variant>/<s>`` in which a seeded share ``s`` of the images has the variant applied and the
rest are left intact. Several shares make the calibration span partial breakage (a deployment where only
some cues mislead) and not only the two ends, so a window-level regression on the location features
(:class:`relmon.analysis.estimators.LocationRegression`) interpolates instead of extrapolating.
"""

from __future__ import annotations

import numpy as np
import torch

#: Prefix of the shortcut windows' ids and shift names (``shortcut_shuffle/0.5``).
PREFIX = "shortcut_"


def shortcut_window_plan(variants, shares) -> list[tuple[str, str, float]]:
    """``[(window name, variant, share), ...]`` for every variant x share."""
    return [(f"{PREFIX}{v}/{float(s):g}", v, float(s)) for v in variants for s in shares]


def break_shortcut(raw: torch.Tensor, mask: torch.Tensor, variant: str, share: float, seed: int,
                   low: float = 0.0) -> torch.Tensor:
    """A copy of raw images ``(N, C, H, W)`` in which ``round(share x N)`` images, drawn with ``seed``,
    get ``variant`` applied to the ``mask`` pixels (``shuffle`` swaps among those images only); the
    others are unchanged."""
    if not 0.0 < share <= 1.0:
        raise ValueError(f"share must lie in (0, 1], got {share!r}")
    from relmon.location import shortcut_variant

    out = raw.clone()
    k = int(round(share * len(raw)))
    if k == 0:
        return out
    rng = np.random.default_rng(seed)
    idx = torch.as_tensor(np.sort(rng.permutation(len(raw))[:k]))
    out[idx] = shortcut_variant(raw[idx], mask, variant, low=low, seed=seed)
    return out


def shortcut_mask(cfg, height: int, width: int) -> torch.Tensor:
    """The ``(H, W)`` mask of the config's ``suspect_regions`` (a clear error when they do not fit)."""
    from relmon.config import ConfigError
    from relmon.location import suspect_mask

    rects = getattr(cfg, "suspect_regions", None)
    if not rects:
        raise ConfigError("shortcut_variants need suspect_regions; fix: set suspect_regions (from 'relmon audit')")
    try:
        return suspect_mask(rects, height, width)
    except ValueError as err:
        raise ConfigError(f"config field 'suspect_regions' does not fit the {height}x{width} calibration images: "
                          f"{err}") from None


__all__ = ["PREFIX", "break_shortcut", "shortcut_mask", "shortcut_window_plan"]
