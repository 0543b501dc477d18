"""Conformal interval parts of the accuracy estimators: the split-conformal quantile, the between-shift
variance, and the **shift-conditioned scale** (issue 18).

A window's interval is ``estimate ± q · s_w``. Unconditioned (the method up to issue 18, and the
fallback): ``s_w = sqrt(v_w + τ²)`` with ``v_w`` the window's binomial sampling variance and ``τ²`` the
between-shift bias variance of the held-out residuals (:func:`between_shift_variance`).
Shift-conditioned: ``s_w = sqrt(v_w + m(d_w)²)`` where ``d_w`` is a label-free **shift score** of the
window — the two-sample Kolmogorov–Smirnov statistic (scipy) between the window's max-softmax
confidences and the calibration's clean reference confidences (:func:`shift_scores`) — and
``m(d) = max(a + b·d, 0)`` the mean absolute held-out residual as a line in ``d`` (least squares on the
leave-one-shift-type-out residuals, slope at least 0; :func:`fit_scale`). The conformal quantile ``q``
of the scores ``|r_j| / s_j`` keeps the split-conformal guarantee for any scale; the scale only moves
width from windows near the calibration's clean data (where the estimators are right) to windows far
from it (where they are wrong).
"""

from __future__ import annotations

import math

import numpy as np
import pandas as pd

#: confidences kept of the clean reference (evenly spaced order statistics) for the shift score
REFERENCE_SIZE = 512


def conformal_rank(m: int, level: float) -> int:
    """The split-conformal rank ``⌈(m + 1) · level⌉`` (1-based) of ``m`` calibration scores at ``level``."""
    # the small tolerance keeps e.g. (9 + 1) * 0.9 = 9.000000000000002 at rank 9, not 10
    return math.ceil((m + 1) * float(level) - 1e-9)


def conformal_quantile(scores, level: float) -> float:
    """Split-conformal quantile of ``scores`` at ``level``: the ``⌈(m + 1) · level⌉``-th smallest of the
    ``m`` scores, ``+inf`` when that rank exceeds ``m`` (too few scores for the level: the interval is
    unbounded, i.e. ``[0, 1]`` for an accuracy). Coverage ≥ ``level`` for an exchangeable new score."""
    scores = np.sort(np.asarray(scores, dtype=float))
    k = conformal_rank(len(scores), level)
    return float(scores[k - 1]) if 1 <= k <= len(scores) else math.inf


def between_shift_variance(residuals, variances) -> float:
    """``τ²`` = mean squared held-out residual minus the mean sampling variance of those windows, at
    least 0: the part of the residuals that window sampling does not explain (bias between shifts)."""
    r, v = np.asarray(residuals, dtype=float), np.asarray(variances, dtype=float)
    return max(0.0, float(np.mean(r ** 2) - np.mean(v)))


def shift_reference(confidence: np.ndarray, size: int = REFERENCE_SIZE) -> list[float]:
    """At most ``size`` evenly spaced order statistics of the reference confidences (sorted)."""
    c = np.sort(np.asarray(confidence, dtype=float)[np.isfinite(confidence)])
    if c.size == 0:
        raise ValueError("the shift score needs reference confidences; got none")
    if c.size > size:
        c = c[np.round(np.linspace(0, c.size - 1, size)).astype(int)]
    return c.tolist()


def shift_scores(samples: pd.DataFrame, reference) -> pd.Series:
    """Per window (Series indexed by window_id, sorted): the two-sample KS statistic between the
    window's ``confidence`` values and ``reference`` (scipy.stats.ks_2samp), in ``[0, 1]``."""
    from scipy.stats import ks_2samp

    ref = np.asarray(reference, dtype=float)
    conf = samples["confidence"].to_numpy(dtype=float)
    out = {}
    for wid, idx in samples.groupby("window_id").indices.items():
        c = conf[idx]
        c = c[np.isfinite(c)]
        out[wid] = float(ks_2samp(c, ref).statistic) if c.size else math.nan
    return pd.Series(out, dtype=float).sort_index()


def fit_scale(abs_residuals, shift) -> tuple[float, float]:
    """``(a, b)`` of the line ``m(d) = a + b·d`` through the absolute held-out residuals against the
    shift scores (least squares); a negative slope (residuals that do not grow with the shift) gives the
    flat line at the mean absolute residual."""
    r, d = np.asarray(abs_residuals, dtype=float), np.asarray(shift, dtype=float)
    ok = np.isfinite(r) & np.isfinite(d)
    r, d = r[ok], d[ok]
    if r.size < 2 or float(np.ptp(d)) == 0.0:
        return float(np.mean(r)) if r.size else 0.0, 0.0
    b, a = np.polyfit(d, r, 1)
    if b <= 0.0:
        return float(np.mean(r)), 0.0
    return float(a), float(b)


def scale_of(shift, a: float, b: float) -> np.ndarray:
    """``m(d) = max(a + b·d, 0)`` (a missing shift score counts as the largest shift seen: 1)."""
    d = np.asarray(shift, dtype=float)
    d = np.where(np.isfinite(d), d, 1.0)
    return np.maximum(a + b * d, 0.0)


def conditioned_quantile(residuals, variances, shift, level: float) -> tuple[float, float, float]:
    """``(q, a, b)``: the scale line fitted on these residuals and the conformal quantile of
    ``|r| / sqrt(v + m(d)²)``."""
    r = np.asarray(residuals, dtype=float)
    a, b = fit_scale(np.abs(r), shift)
    s = np.sqrt(np.asarray(variances, dtype=float) + scale_of(shift, a, b) ** 2)
    return conformal_quantile(np.abs(r) / s, level), a, b


__all__ = [
    "REFERENCE_SIZE",
    "between_shift_variance",
    "conditioned_quantile",
    "conformal_quantile",
    "conformal_rank",
    "fit_scale",
    "scale_of",
    "shift_reference",
    "shift_scores",
]
