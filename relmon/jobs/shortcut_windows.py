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


def fit_shortcut_estimators(records, estimators: dict, default: str, validation: dict):
    """The calibration's estimators, default and validation after the shortcut-aware ones were added.

    **Rule** (chosen on the tuning shortcuts of ``scripts/shortcut_estimator_study.py``): the
    :data:`~relmon.analysis.estimators.LOCATION_ESTIMATORS` are fitted with the default the
    leave-one-shift-type-out selection chose among the other candidates as their fallback, and
    ``location_regression`` becomes the default. Outside the shortcut windows' envelope it *is* that
    default; inside it is the family regression. Leave-one-shift-type-out cannot judge it fairly: held
    out, the ``shortcut_shuffle`` type takes every window of mixed wrong cues with it, so the selection
    would judge a regression that never saw what it is for. When the location estimator cannot be
    fitted (records without location columns) the selection's default stays, with the reason in
    ``validation["errors"]``."""
    import logging

    from relmon.analysis.estimators import LOCATION_ESTIMATORS, make_estimator

    chosen = validation.get("chosen", default)  # "median:a+b+c" for a median default
    fitted, errors = dict(estimators), dict(validation.get("errors") or {})
    for name in LOCATION_ESTIMATORS:
        try:
            fitted[name] = make_estimator(name).set_params(fallback=chosen).fit(records)
        except ValueError as err:
            errors[name] = str(err)
            logging.getLogger("relmon.jobs").warning("shortcut-aware estimator %s not fitted: %s", name, err)
    validation = {**validation, "errors": errors}
    if LOCATION_ESTIMATORS[0] not in fitted:
        return fitted, default, validation
    first = LOCATION_ESTIMATORS[0]
    validation.update({
        "chosen_by": f"shortcut_variants: {first} with the selection's default {chosen!r} as its fallback "
                     f"(relmon.jobs.shortcut_windows.fit_shortcut_estimators); before: {validation.get('chosen_by')}",
        "default_before_shortcut": default,
        "default_members": [first],
        "unreliable_under": list(getattr(fitted[first], "uncovered_shift_types_", [])),
    })
    return fitted, first, validation


__all__ = ["PREFIX", "break_shortcut", "fit_shortcut_estimators", "shortcut_mask", "shortcut_window_plan"]
