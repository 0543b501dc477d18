"""What one monitoring run computed: :class:`MonitorSummary`, and the no-calibration baseline estimate
(:func:`confidence_estimate`). Imports nothing of :mod:`relmon.jobs`."""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from typing import Any

import numpy as np

BASELINE_ESTIMATOR = "average_confidence"
_Z90 = 1.6448536269514722  # two-sided 90 % normal quantile, the estimators' default interval


@dataclass
class MonitorSummary:
    """What one run computed (also kept when an output fails)."""

    model: str
    model_version: str
    stream: str
    window_ids: list[str]
    seen: int
    scored: int
    input_errors: dict[str, int]
    methods: dict[str, dict[str, float]]
    confidence: float
    estimates: dict[str, tuple[float, float, float]]
    drift_p_values: dict[str, float] | None
    drift_alarm: bool | None
    duration_seconds: float
    finished_at: float
    accuracy: float | None = None
    calibration: str | None = None
    calibration_timestamp: float | None = None
    calibration_version_mismatch: bool = False
    default_estimator: str | None = None  # the estimator of the headline estimate (chosen by calibration)
    estimate_errors: dict[str, str] = field(default_factory=dict)  # estimator -> why it gave no estimate
    outputs: dict[str, Any] = field(default_factory=dict)
    # issue 18 (relmon.analysis.robust): the headline after the disagreement check, |default − median of
    # all estimates|, the default's members (a median's estimators), the window's shift score (KS of its
    # confidences against the clean calibration) and the shift types the calibration cannot cover
    headline: dict[str, Any] = field(default_factory=dict)
    estimator_disagreement: float | None = None
    default_members: list[str] = field(default_factory=list)
    shift_score: float | None = None
    unreliable_under: list[str] = field(default_factory=list)
    calibration_accuracy: float | None = None  # the clean reference the alert threshold hangs on ...
    calibration_n: int | None = None  # ... and its number of images
    input_root: str | None = None  # the folder (or URL) the records' sample ids are relative to
    alert_threshold: float | None = None  # relmon.analysis.alerts.accuracy_threshold of the two
    alerts: list[dict[str, str]] = field(default_factory=list)  # relmon.analysis.alerts.accuracy_alerts
    # issue 19 (relmon.analysis.location.location_summary): window means of the location columns
    # (suspect_share, occlusion_flip rate, ...) when suspect_regions is set, else None
    location: dict[str, Any] | None = None
    # issue 19 (relmon.analysis.unexplained): {fired, checked, outside, fallback, reason}; None without a gate
    unexplained_shift: dict[str, Any] | None = None

    def table(self) -> str:
        """A plain-text summary table."""
        lines = [
            f"relmon monitor: model {self.model} (version {self.model_version}), stream {self.stream}, "
            f"{self.scored} of {self.seen} inputs scored, {sum(self.input_errors.values())} bad, "
            f"{self.duration_seconds:.1f} s"
        ]
        lines.append(f"\n{'method':<26} {'AOPC':>8} {'-random':>8} {'AOPC rel':>9} {'entropy':>8} {'n':>6}")
        for method, s in self.methods.items():
            lines.append(
                f"{method:<26} {s.get('aopc', math.nan):8.3f} {s.get('aopc_minus_random', math.nan):8.3f} "
                f"{s.get('aopc_rel', math.nan):9.3f} {s.get('entropy_bits', math.nan):8.3f} "
                f"{int(s.get('n', 0)):6d}"
            )
        lines.append(f"\n{'estimator':<34} {'accuracy':>8} {'interval':>17}")
        for name, (est, lo, hi) in self.estimates.items():
            mark = "  <- headline (default)" if name == self.default_estimator else ""
            lines.append(f"{name:<34} {est:8.3f} [{lo:6.3f}, {hi:6.3f}]{mark}")
        for name, why in self.estimate_errors.items():
            mark = "  <- headline (default)" if name == self.default_estimator else ""
            lines.append(f"{name:<34} {'none':>8} (cannot score this window: {why}){mark}")
        if self.headline.get("fallback"):
            lines.append(f"{'headline: median of all (estimators disagree)':<34} {self.headline['estimate']:8.3f} "
                         f"[{self.headline['lower']:6.3f}, {self.headline['upper']:6.3f}]")
        if self.unexplained_shift and self.unexplained_shift.get("fired"):
            lines.append(f"UNEXPLAINED SHIFT: {self.unexplained_shift['reason']}; headline: "
                         f"{self.headline.get('estimator')} {self.headline.get('estimate', math.nan):.3f}")
        if self.estimator_disagreement is not None and math.isfinite(self.estimator_disagreement):
            lines.append(f"estimator disagreement |default - median| {self.estimator_disagreement:.3f}"
                         + (f"; shift score (KS vs clean calibration) {self.shift_score:.3f}"
                            if self.shift_score is not None and math.isfinite(self.shift_score) else ""))
        if self.default_members and len(self.default_members) > 1:
            lines.append(f"default = median of {', '.join(self.default_members)}")
        if self.unreliable_under:
            lines.append(f"estimates unreliable under: {', '.join(self.unreliable_under)} "
                         "(calibration's held-out interval coverage below 0.5)")
        if self.accuracy is not None:
            lines.append(f"{'(true accuracy, labels known)':<34} {self.accuracy:8.3f}")
        lines.append(f"mean confidence {self.confidence:.3f}")
        if self.location:
            loc = self.location
            lines.append(f"where the model looks ({loc.get('method')}): suspect-region relevance share "
                         f"{loc['suspect_share']:.3f}, occlusion flip rate {loc['occlusion_flip']:.3f}, "
                         f"confidence drop {loc['occlusion_drop']:.3f}")
        if self.drift_p_values is not None:
            ps = ", ".join(f"{k} {v:.2g}" for k, v in self.drift_p_values.items())
            lines.append(f"drift: {'ALARM' if self.drift_alarm else 'no alarm'} (KS p-values: {ps})")
        elif self.calibration and self.scored == 0:
            lines.append("drift: not tested (empty window: nothing scored)")
        else:
            lines.append("drift: not tested (no calibration)")
        if self.calibration:
            flag = " — MADE FOR ANOTHER MODEL VERSION" if self.calibration_version_mismatch else ""
            lines.append(f"calibration: {self.calibration}{flag}")
        for a in self.alerts:
            lines.append(f"ALERT {a['name']} ({a['severity']}): {a['reason']}")
        for k, v in self.outputs.items():
            lines.append(f"{k}: {v}")
        return "\n".join(lines)

    def to_dict(self) -> dict[str, Any]:
        """The summary as plain data (``--json``): each estimate as ``{"estimate", "lower", "upper"}``."""
        from dataclasses import asdict

        d = asdict(self)
        d["estimates"] = {name: dict(zip(("estimate", "lower", "upper"), map(float, v), strict=True))
                          for name, v in self.estimates.items()}
        return d


def confidence_estimate(confidence: np.ndarray) -> tuple[float, float, float]:
    """The baseline without calibration: mean max-softmax with a 90 % Poisson-binomial interval."""
    c = confidence[np.isfinite(confidence)]
    if c.size == 0:
        return math.nan, math.nan, math.nan
    est = float(c.mean())
    half = _Z90 * math.sqrt(float((c * (1 - c)).sum())) / c.size
    return est, max(0.0, est - half), min(1.0, est + half)


__all__ = ["BASELINE_ESTIMATOR", "MonitorSummary", "confidence_estimate"]
