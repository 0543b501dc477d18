"""Drift tests against a reference window: a two-sample KS test per per-sample feature and one
multiple-testing corrected alarm.
"""

from __future__ import annotations

from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field

import numpy as np
import pandas as pd
from scipy.stats import ks_2samp

from relmon.analysis.features import CONFIDENCE_FEATURES, heatmap_methods, sample_features
from relmon.records import LOCATION_COLUMNS

DRIFT_FEATURES: tuple[str, ...] = (
    "aopc", "aopc_rel", "aopc_minus_random", "entropy_bits", "confidence", "softmax_entropy", "margin",
)
#: tested too (by default) when both the reference and the window carry them (``suspect_regions``)
LOCATION_DRIFT_FEATURES: tuple[str, ...] = LOCATION_COLUMNS


@dataclass(frozen=True)
class DriftResult:
    """KS statistics, raw and corrected p-values per feature, and the combined alarm."""

    statistics: dict[str, float]
    p_values: dict[str, float]
    adjusted_p_values: dict[str, float]
    alarm: bool
    alpha: float
    correction: str
    n_reference: int
    n_window: int
    features: tuple[str, ...] = field(default=())


def adjust_p_values(p: Sequence[float], correction: str = "holm") -> np.ndarray:
    """Family-wise corrected p-values: ``holm`` (step-down) or ``bonferroni``."""
    p = np.asarray(p, dtype=float)
    m = p.size
    if correction == "bonferroni":
        return np.minimum(1.0, p * m)
    if correction != "holm":
        raise ValueError(f"correction must be 'holm' or 'bonferroni', got {correction!r}")
    order = np.argsort(p, kind="stable")
    stepped = np.maximum.accumulate(np.minimum(1.0, (m - np.arange(m)) * p[order]))
    out = np.empty(m)
    out[order] = stepped
    return out


def _as_samples(frame: pd.DataFrame) -> pd.DataFrame:
    """Records → :func:`sample_features`; a frame that already is one (no ``method`` column) passes."""
    return sample_features(frame) if "method" in frame.columns else frame


def _columns(records: pd.DataFrame, features: Sequence[str], method: str | None) -> dict[str, str]:
    if method is None:
        if "method" in records.columns:
            method = (heatmap_methods(records) or [None])[0]
        else:  # sample features: methods are the column suffixes
            found = sorted({c.partition("@")[2] for c in records.columns if "@" in c} - {"random"})
            method = found[0] if found else None
    cols = {}
    for f in features:
        if f in CONFIDENCE_FEATURES or f in LOCATION_DRIFT_FEATURES:  # per sample, not per method
            cols[f] = f
        elif method is None:
            raise ValueError(f"feature {f!r} needs heatmap rows, the records hold none")
        else:
            cols[f] = f"{f}@{method}"
    return cols


def ks_drift(
    reference: pd.DataFrame,
    window: pd.DataFrame,
    features: Sequence[str] | None = None,
    method: str | None = None,
    alpha: float = 0.01,
    correction: str = "holm",
) -> DriftResult:
    """Two-sample KS test (``scipy.stats.ks_2samp``) of each per-sample feature, window vs reference.

    ``reference`` and ``window`` are records frames (any window ids: each is taken as one sample), or
    already :func:`~relmon.analysis.features.sample_features` of records (to reuse a reference).
    Features (``DRIFT_FEATURES``): ``aopc``, ``aopc_rel``, ``aopc_minus_random``, ``entropy_bits`` of the
    heatmap ``method`` (default: the first heatmap method) and ``confidence``, ``softmax_entropy``, ``margin``;
    by default (``features=None``) also the location features (:data:`LOCATION_DRIFT_FEATURES`:
    ``suspect_share``, ``rest_relevance``, ``occlusion_flip``, ``occlusion_drop``) when both frames
    carry them (scored with ``suspect_regions``), so the family (and the Holm correction) grows to 11.
    The alarm is raised when any corrected p-value is below ``alpha`` (family-wise error <= alpha).
    """
    if not 0.0 < alpha < 1.0:
        raise ValueError(f"alpha must be in (0, 1), got {alpha!r}")
    ref, win = _as_samples(reference), _as_samples(window)
    if features is None:
        both = all(c in ref.columns and c in win.columns for c in LOCATION_DRIFT_FEATURES)
        features = DRIFT_FEATURES + (LOCATION_DRIFT_FEATURES if both else ())
    cols = _columns(reference, features, method)
    stats, pvals = {}, {}
    for f, c in cols.items():
        if c not in ref.columns or c not in win.columns:
            raise ValueError(f"feature {f!r} (column {c!r}) is missing from the reference or the window")
        a = ref[c].to_numpy(dtype=float)
        b = win[c].to_numpy(dtype=float)
        a, b = a[np.isfinite(a)], b[np.isfinite(b)]
        if a.size == 0 or b.size == 0:
            stats[f], pvals[f] = float("nan"), 1.0
            continue
        res = ks_2samp(a, b)
        stats[f], pvals[f] = float(res.statistic), float(res.pvalue)
    adjusted = adjust_p_values(list(pvals.values()), correction)
    adj = dict(zip(pvals, adjusted.tolist(), strict=True))
    return DriftResult(statistics=stats, p_values=pvals, adjusted_p_values=adj,
                       alarm=bool((adjusted < alpha).any()), alpha=alpha, correction=correction,
                       n_reference=len(ref), n_window=len(win), features=tuple(cols))


def false_alarm_rate(
    reference: pd.DataFrame,
    clean_windows: pd.DataFrame | Iterable[pd.DataFrame],
    **options,
) -> float:
    """Share of ``clean_windows`` (a records frame split by ``window_id``, or an iterable of frames) on
    which :func:`ks_drift` against ``reference`` raises the alarm; ``options`` go to :func:`ks_drift`."""
    if isinstance(clean_windows, pd.DataFrame):
        samples = _as_samples(clean_windows)
        windows = [g for _, g in samples.groupby("window_id", sort=True)]
    else:
        windows = [_as_samples(w) for w in clean_windows]
    if not windows:
        raise ValueError("false_alarm_rate needs at least one clean window")
    if "method" in reference.columns and options.get("method") is None:
        options["method"] = (heatmap_methods(reference) or [None])[0]
    ref = _as_samples(reference)
    return float(np.mean([ks_drift(ref, w, **options).alarm for w in windows]))


__all__ = ["DRIFT_FEATURES", "LOCATION_DRIFT_FEATURES", "DriftResult", "adjust_p_values", "false_alarm_rate", "ks_drift"]
