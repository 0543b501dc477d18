"""The accuracy alert: one pure function from a window summary to the alerts it fires.

relmon's Prometheus rules (``deploy/prometheus/alerts.yml``, ``RelmonEstimatedAccuracyLow``) mirror
:func:`accuracy_alerts`, and a test runs both on the same real windows (promtool) and asserts that they
fire the same alerts; ``relmon monitor --json`` reports the function's result as ``"alerts"``.

The threshold hangs on the calibration's clean labelled window, whose accuracy is itself a sample of
``n`` images: with 80 images at 0.925 the standard error is 0.03, as large as the drops worth an alert.
So the threshold starts from a **one-sided lower confidence bound** of the clean accuracy
(Clopper-Pearson, :data:`REFERENCE_CONFIDENCE`) rather than from the point value, and subtracts
:data:`ALERT_MARGIN`::

    threshold = lower_bound(clean accuracy, n clean, 95 %) - ALERT_MARGIN

Two severities, on the DEFAULT estimator only (the one the calibration chose):

- ``warning``: the point estimate is below the threshold **and** the drift test alarms (the inputs
  moved: an estimate below the threshold on inputs like the calibration's is more likely the
  estimator's noise than a drop);
- ``critical``: the estimate's upper bound is below the threshold (the interval excludes an accuracy
  at the threshold, drift or not).

``ALERT_MARGIN`` was chosen on validation windows (the calibration pool, leave-one-shift-type-out)
and evaluated on independent windows by ``scripts/evaluate_alerts.py``: ``docs/alerts.md``.
"""

from __future__ import annotations

import math
from collections.abc import Mapping
from typing import Any

#: Accuracy points below the clean reference's lower bound at which the alert threshold sits. Chosen on
#: the validation windows of scripts/evaluate_alerts.py (docs/alerts.md, "Choice on validation").
ALERT_MARGIN = 0.05
#: One-sided confidence of the lower bound of the calibration's clean accuracy.
REFERENCE_CONFIDENCE = 0.95
#: A clean reference whose one-sided sampling error (accuracy - lower bound) exceeds this many accuracy
#: points gets a warning at calibration time: the threshold then sits that far below the clean
#: accuracy from the reference's own noise alone.
REFERENCE_MAX_ERROR = 0.03

ALERT_NAME = "RelmonEstimatedAccuracyLow"
SEVERITIES = ("warning", "critical")


def reference_lower_bound(accuracy: float, n: int, confidence: float = REFERENCE_CONFIDENCE) -> float:
    """One-sided Clopper-Pearson lower bound of a clean accuracy measured on ``n`` labelled images.

    ``accuracy`` in [0, 1], ``n`` >= 1; the number of correct images is ``round(accuracy * n)``.
    """
    from scipy.stats import binomtest

    if not (isinstance(n, (int, float)) and n >= 1 and float(n) == int(n)):
        raise ValueError(f"the calibration's clean window size n must be a positive integer, got {n!r}")
    if not (math.isfinite(float(accuracy)) and 0.0 <= float(accuracy) <= 1.0):
        raise ValueError(f"the calibration's clean accuracy must be a ratio in [0, 1], got {accuracy!r}")
    if not 0.0 < confidence < 1.0:
        raise ValueError(f"confidence must be in (0, 1), got {confidence!r}")
    n = int(n)
    k = int(round(float(accuracy) * n))
    return float(binomtest(k, n, alternative="greater").proportion_ci(confidence_level=confidence,
                                                                       method="exact").low)


def accuracy_threshold(accuracy: float | None, n: int | None, margin: float = ALERT_MARGIN,
                       confidence: float = REFERENCE_CONFIDENCE) -> float | None:
    """The alert threshold: the clean accuracy's one-sided lower bound minus ``margin``; ``None`` without
    a clean reference (no calibration, or an old one without its clean window's size)."""
    if accuracy is None or n is None:
        return None
    if not (math.isfinite(float(margin)) and 0.0 <= float(margin) < 1.0):
        raise ValueError(f"margin must be in [0, 1), got {margin!r}")
    return max(0.0, reference_lower_bound(accuracy, n, confidence) - float(margin))


def reference_warning(accuracy: float, n: int, confidence: float = REFERENCE_CONFIDENCE,
                      max_error: float = REFERENCE_MAX_ERROR) -> str | None:
    """A warning (text) when the clean reference of ``n`` images is too small for the alert threshold
    to mean much (its one-sided sampling error exceeds ``max_error``), else ``None``."""
    error = float(accuracy) - reference_lower_bound(accuracy, n, confidence)
    if error <= max_error:
        return None
    need = int(n)
    while need < 100_000 and float(accuracy) - reference_lower_bound(accuracy, need, confidence) > max_error:
        need = math.ceil(need * 1.25)
    return (
        f"the clean calibration window has only {int(n)} images (accuracy {float(accuracy):.3f}): its "
        f"{confidence:.0%} one-sided lower bound is {error:.3f} below it, more than {max_error:.2f}, so the "
        f"accuracy alert's threshold sits that much lower from the reference's sampling noise alone; fix: "
        f"calibrate with calibration_n of about {need} or more"
    )


def _get(summary: Any, key: str, default=None):
    if isinstance(summary, Mapping):
        return summary.get(key, default)
    return getattr(summary, key, default)


def accuracy_alerts(summary: Any, margin: float = ALERT_MARGIN,
                    confidence: float = REFERENCE_CONFIDENCE) -> list[dict[str, str]]:
    """The accuracy alerts a window fires: a list of ``{"name", "severity", "reason"}`` (empty: none).

    ``summary`` is a :class:`relmon.jobs.monitor.MonitorSummary` or a mapping with the same keys:
    ``estimates`` (estimator → ``(estimate, lower, upper)`` or ``--json``'s ``{"estimate", "lower", "upper"}``),
    ``default_estimator``, ``drift_alarm``
    (bool or None), ``calibration_accuracy`` and ``calibration_n`` (the clean reference: accuracy and
    number of images; None without calibration). No reference or no default estimate → no alert.
    ``margin`` and ``confidence``: see :func:`accuracy_threshold` (the shipped rules use the defaults).
    """
    threshold = accuracy_threshold(_get(summary, "calibration_accuracy"), _get(summary, "calibration_n"),
                                   margin, confidence)
    default = _get(summary, "default_estimator")
    estimate = (_get(summary, "estimates") or {}).get(default)
    if threshold is None or estimate is None:
        return []
    if isinstance(estimate, Mapping):  # the --json / summary-file form {"estimate", "lower", "upper"}
        estimate = (estimate["estimate"], estimate["lower"], estimate["upper"])
    est, _, upper = (float(v) for v in estimate)
    where = f"default estimator {default}"
    ref = (f"threshold {threshold:.3f} = {confidence:.0%} lower bound of the clean calibration accuracy "
           f"{float(_get(summary, 'calibration_accuracy')):.3f} (n={int(_get(summary, 'calibration_n'))}) "
           f"- {margin:.2f}")
    alerts = []
    if math.isfinite(est) and est < threshold and bool(_get(summary, "drift_alarm") or False):
        alerts.append({"name": ALERT_NAME, "severity": "warning",
                       "reason": f"{where}: estimate {est:.3f} below the {ref}, and the drift test alarms"})
    if math.isfinite(upper) and upper < threshold:
        alerts.append({"name": ALERT_NAME, "severity": "critical",
                       "reason": f"{where}: upper bound {upper:.3f} of the estimate below the {ref}"})
    return alerts


__all__ = [
    "ALERT_MARGIN",
    "ALERT_NAME",
    "REFERENCE_CONFIDENCE",
    "REFERENCE_MAX_ERROR",
    "SEVERITIES",
    "accuracy_alerts",
    "accuracy_threshold",
    "reference_lower_bound",
    "reference_warning",
]
