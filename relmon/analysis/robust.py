"""The headline estimate of a window, robust to one estimator breaking (issue 18).

The calibration's default estimator gives the headline. On a real shift an estimator can extrapolate
badly while the others agree (seen: a relevance regression at −0.30 where ATC, DoC, CBPE and the median
of three stayed within 0.025). :func:`headline` therefore compares the default with the **median of
all the window's estimates** (the robust ensemble): when that median lies outside the default's own
interval, the estimators disagree beyond what the default's interval allows, and the headline falls
back to the median, with an interval that spans both (``[min(lower, median), max(upper, median)]``).
The disagreement itself, ``|default − median|``, is published as a signal of its own
(``relmon_estimator_disagreement_ratio``, ``estimator_disagreement`` in the summary).
"""

from __future__ import annotations

import math
from collections.abc import Mapping

import numpy as np


def headline(estimates: Mapping[str, tuple[float, float, float]], default: str | None) -> dict:
    """``{"estimator", "estimate", "lower", "upper", "fallback", "disagreement", "ensemble"}`` for one
    window from ``estimates`` (name → ``(estimate, lower, upper)``) and the default's name.

    ``ensemble`` is the median of the finite estimates; ``disagreement`` = ``|default − ensemble|``
    (NaN without a default estimate); ``fallback`` is True when the ensemble lies outside the default's
    interval, and then ``estimator`` is ``"median_of_all"`` and the interval spans both."""
    values = [v[0] for v in estimates.values() if v is not None and math.isfinite(v[0])]
    ensemble = float(np.median(values)) if values else math.nan
    if default not in estimates or not math.isfinite(estimates[default][0]):
        return {"estimator": default, "estimate": math.nan, "lower": math.nan, "upper": math.nan,
                "fallback": False, "disagreement": math.nan, "ensemble": ensemble}
    est, lo, hi = (float(x) for x in estimates[default])
    disagreement = abs(est - ensemble) if math.isfinite(ensemble) else math.nan
    if math.isfinite(ensemble) and not (lo <= ensemble <= hi):
        return {"estimator": "median_of_all", "estimate": ensemble, "lower": min(lo, ensemble),
                "upper": max(hi, ensemble), "fallback": True, "disagreement": disagreement, "ensemble": ensemble}
    return {"estimator": default, "estimate": est, "lower": lo, "upper": hi, "fallback": False,
            "disagreement": disagreement, "ensemble": ensemble}


def window_robustness(calibration, estimates, default, records) -> dict:
    """The issue-18 fields of a monitored window's summary: ``headline`` (:func:`headline`),
    ``estimator_disagreement``, ``default_members`` and ``unreliable_under`` (from the calibration's
    validation) and ``shift_score`` (the default estimator's KS shift score of ``records``, one window).
    ``calibration``: anything with ``meta`` and ``estimators`` (a relmon calibration), or None."""
    head = headline(estimates, default)
    validation = (calibration.meta.get("validation") or {}) if calibration is not None else {}
    shift = None
    est = calibration.estimators.get(default) if calibration is not None else None
    if est is not None and records is not None and len(records) and hasattr(est, "shift_score"):
        value = est.shift_score(records.assign(window_id=records["window_id"].iloc[0]))
        shift = float(value.iloc[-1]) if len(value) else None
    return {"headline": head, "estimator_disagreement": head["disagreement"],
            "default_members": list(validation.get("default_members") or ([default] if default else [])),
            "shift_score": shift, "unreliable_under": list(validation.get("unreliable_under") or [])}


__all__ = ["headline", "window_robustness"]
