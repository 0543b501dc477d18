"""The "unexplained shift" gate (issue 19): is a monitored window inside what the calibration covered?

The shortcut-aware estimators (:class:`~relmon.analysis.estimators.LocationRegression`) learn what the
calibration showed them: intact cues, cues blanked or swapped in a share of the images
(``shortcut_variants``), and the corruption windows. A window whose location features lie outside the
range of every calibration window is a shift none of them was fitted on, and a regression
extrapolates there without warning. The gate says so and the headline falls back to the default the
calibration selected among the other estimators (``relmon calibrate`` passes it as ``fallback``: the
headline a calibration without ``shortcut_variants`` would give).

**Rule.** For each of :data:`GATE_FEATURES` (window means: confidence and the location features of
:mod:`relmon.location`), the calibration windows' range ``[low, high]`` is widened on both sides by
``margin`` of its span plus 3 standard errors of a calibration window's mean (sampling noise,
:func:`relmon.analysis.estimators.sampling_se`); the gate fires when a window's value lies outside the widened range for at least
one feature. ``margin`` (:data:`GATE_MARGIN`) was chosen on the tuning shortcuts of
``scripts/shortcut_estimator_study.py``. The fallback was first ATC (:data:`GATE_FALLBACK`, still the
default of :meth:`UnexplainedShiftGate.fit` called directly), a choice by reasoning: no tuning window
fired. The product evaluation (``scripts/evaluate_shortcuts.py --product``, docs/shortcuts.md) then
showed the gate firing on ``contrast/4`` windows, where ATC erred 0.51-0.56 against 0.08-0.09 for the
selection's default, so the calibration now falls back to that default.
Without location features in the calibration there is no gate, and everything behaves as before.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Any

import numpy as np
import pandas as pd

#: Window features the gate checks (those present in the calibration).
GATE_FEATURES: tuple[str, ...] = ("confidence_mean", "suspect_share_mean", "occlusion_flip_mean",
                                  "occlusion_drop_mean")
#: The share of each feature's calibration span added on both sides of its range.
GATE_MARGIN = 0.25
#: The confidence estimator the headline falls back to when the gate fires (``average_confidence``,
#: which the monitor always computes, when the calibration did not fit it).
GATE_FALLBACK = "atc"
#: Location features: without at least one of them in the calibration there is no gate.
_LOCATION = GATE_FEATURES[1:]


@dataclass
class UnexplainedShiftGate:
    """The calibration windows' range of :data:`GATE_FEATURES` and the rule's ``margin`` (module doc)."""

    features: list[str]
    low: list[float]
    high: list[float]
    margin: float = GATE_MARGIN
    fallback: str = GATE_FALLBACK
    #: per feature: ENVELOPE_SE standard errors of a calibration window's mean (sampling noise)
    noise: list[float] | None = None

    @classmethod
    def fit(cls, records: pd.DataFrame, margin: float = GATE_MARGIN, fallback: str = GATE_FALLBACK):
        """The gate of labelled or unlabelled calibration ``records`` (one row per sample and method,
        :mod:`relmon.records`), or None when they carry no location features."""
        feats = _window_features(records)
        cols = [c for c in GATE_FEATURES if c in feats.columns and feats[c].notna().any()]
        if not any(c in _LOCATION for c in cols):
            return None
        if not (margin >= 0 and math.isfinite(margin)):
            raise ValueError(f"margin must be a finite number >= 0, got {margin!r}")
        x = feats[cols].to_numpy(dtype=float)
        from relmon.analysis.estimators import ENVELOPE_SE, sampling_se
        from relmon.analysis.features import sample_features

        se = np.nan_to_num(sampling_se(sample_features(records), cols))
        return cls(cols, np.nanmin(x, axis=0).tolist(), np.nanmax(x, axis=0).tolist(), float(margin), fallback,
                   (ENVELOPE_SE * se).tolist())

    def bounds(self) -> tuple[np.ndarray, np.ndarray]:
        """The widened range ``(low - pad, high + pad)`` per feature, ``pad = margin x span + noise``."""
        lo, hi = np.asarray(self.low, dtype=float), np.asarray(self.high, dtype=float)
        pad = self.margin * (hi - lo) + np.asarray(self.noise or [0.0] * len(lo), dtype=float)
        return lo - pad, hi + pad

    def check(self, records: pd.DataFrame) -> dict[str, Any]:
        """The gate on a monitored window's records (taken as one window):
        ``{"fired", "checked", "outside", "fallback", "reason"}``; ``outside`` maps each feature outside
        its widened range to ``{"value", "low", "high"}`` (the widened bounds)."""
        if records is None or not len(records):
            return self._result(False, False, {}, "empty window: not checked")
        one = records.assign(window_id=str(records["window_id"].iloc[0]))
        feats = _window_features(one).iloc[0]
        missing = [c for c in self.features if c not in feats.index or not np.isfinite(float(feats[c]))]
        if missing:
            return self._result(False, False, {}, f"the window lacks {missing} (scored without suspect_regions?): "
                                                 "not checked")
        lo, hi = self.bounds()
        outside = {}
        for name, a, b in zip(self.features, lo, hi, strict=True):
            v = float(feats[name])
            if v < a or v > b:
                outside[name] = {"value": v, "low": float(a), "high": float(b)}
        if not outside:
            return self._result(False, True, {}, "inside the calibration's range")
        what = "; ".join(f"{k} {v['value']:.3f} outside [{v['low']:.3f}, {v['high']:.3f}]" for k, v in outside.items())
        return self._result(True, True, outside, f"unexplained shift: {what} (the calibration windows' range "
                                                 f"widened by {self.margin:g} of it)")

    def _result(self, fired, checked, outside, reason) -> dict[str, Any]:
        return {"fired": bool(fired), "checked": bool(checked), "outside": outside, "fallback": self.fallback,
                "reason": reason}

    def to_dict(self) -> dict[str, Any]:
        return {"features": list(self.features), "low": [float(v) for v in self.low],
                "high": [float(v) for v in self.high], "margin": float(self.margin), "fallback": self.fallback,
                "noise": [float(v) for v in self.noise] if self.noise is not None else None}

    @classmethod
    def from_dict(cls, data: Any, where: str = "the calibration's unexplained_shift_gate"):
        """A gate from :meth:`to_dict`'s output; ``ValueError`` naming ``where`` when malformed."""
        try:
            noise = data.get("noise")
            gate = cls([str(f) for f in data["features"]], [float(v) for v in data["low"]],
                       [float(v) for v in data["high"]], float(data["margin"]), str(data["fallback"]),
                       [float(v) for v in noise] if noise is not None else None)
        except (KeyError, TypeError, ValueError) as err:
            raise ValueError(f"{where} is malformed ({type(err).__name__}: {err}); fix: re-run 'relmon calibrate'") from None
        if not (len(gate.features) == len(gate.low) == len(gate.high)) or not gate.features or (
                gate.noise is not None and len(gate.noise) != len(gate.features)):
            raise ValueError(f"{where}: features/low/high must be non-empty lists of one length; fix: re-run "
                             "'relmon calibrate'")
        return gate


def _window_features(records: pd.DataFrame) -> pd.DataFrame:
    from relmon.analysis.features import window_features

    return window_features(records)


def gated_headline(head: dict[str, Any], estimates: dict[str, tuple[float, float, float]],
                   gate: dict[str, Any]) -> dict[str, Any]:
    """The headline after the gate: unchanged unless ``gate["fired"]``; then the fallback estimator's
    estimate (``average_confidence`` when the fallback gave none), with ``fallback`` True and
    ``reason`` the gate's reason. The headline before the gate is kept as ``before_gate``."""
    if not gate.get("fired"):
        return head
    name = gate.get("fallback")
    if name not in estimates or not math.isfinite(estimates[name][0]):
        name = "average_confidence"
    if name not in estimates:
        return head
    est, lo, hi = (float(v) for v in estimates[name])
    return {**head, "estimator": name, "estimate": est, "lower": lo, "upper": hi, "fallback": True,
            "reason": gate["reason"], "before_gate": {k: head.get(k) for k in ("estimator", "estimate", "lower", "upper")}}


__all__ = ["GATE_FALLBACK", "GATE_FEATURES", "GATE_MARGIN", "UnexplainedShiftGate", "gated_headline"]
