"""Label-free accuracy estimators with the scikit-learn interface.

Every estimator is fitted on **labelled** per-sample records (:mod:`relmon.records`) grouped by
``window_id`` and predicts the accuracy of windows of **unlabelled** records:

- ``fit(records)`` → self;
- ``predict(records)`` → DataFrame ``[window_id, estimate, lower, upper]`` (accuracy in ``[0, 1]``,
  ``lower``/``upper`` a two-sided interval at level ``interval``, 90 % by default);
- ``score(records)`` → minus the mean absolute error against the windows' true accuracy (so
  ``sklearn.model_selection.cross_val_score(est, records)`` works).

**Shift types.** A window's shift type is the part of its ``window_id`` before the first ``/``
(``clean``, ``gaussian_noise/3`` → ``gaussian_noise``; :func:`shift_type`).

**Intervals** (``conformal=True``, the default): ``fit`` runs a leave-one-shift-type-out (LOSO) pass
— for every shift type other than ``clean``, a copy is fitted without that type's windows and predicts
them — and keeps the held-out residuals ``r_j = accuracy_j − estimate_j``. A window's interval is
``estimate ± q · sqrt(v_w + τ²)``: ``v_w`` the window's sampling variance (Agresti–Coull: the
binomial variance at ``(n·p + z²/2) / (n + z²)`` over ``n + z²``, never zero, so two images never give
``[1.0, 1.0]``), ``τ²`` the between-shift bias variance (``mean(r²) − mean(v_j)``, at least 0) and ``q``
the split-conformal quantile (the ``⌈(m+1)·level⌉``-th smallest of the ``m`` scores, ``+inf`` — an
interval of ``[0, 1]`` — when that rank exceeds ``m``; :func:`conformal_quantile`) of ``|r_j| / sqrt(v_j + τ²)``. With
fewer than two shift types (or ``conformal=False``) the interval is the sampling part alone
(``q = z``, ``τ = 0``) and ``interval_kind_`` says ``"sampling"``.

**Shift-conditioned intervals** (issue 18, ``interval_kind_ == "conformal-loso-shift"``, the default
since estimator file format 3): ``τ`` is replaced by ``m(d_w) = max(a + b·d_w, 0)``, a line in the
window's label-free shift score ``d_w`` (KS statistic of its confidences against the clean calibration
windows', :meth:`_WindowEstimator.shift_score`) fitted through the held-out ``|r_j|``; ``q`` is the
conformal quantile of ``|r_j| / sqrt(v_j + m(d_j)²)`` (:mod:`relmon.analysis.intervals`). ``fit`` also
keeps each held-out shift type's coverage and width under an interval calibrated on the other types
(``held_out_coverage_``) and names the types below 0.5 coverage (``uncovered_shift_types_``: estimates
are unreliable under them). Files of format 2 load with the unconditioned interval.

Estimators (named configurations in :data:`ESTIMATORS`):

- :class:`AverageConfidence` — mean max-softmax; ``calibrate=True``: isotonic confidence → P(correct)
  (what NannyML's CBPE reduces to for multiclass accuracy with one map for the max-softmax).
- :class:`ATC` — average thresholded confidence (Garg et al., ICLR 2022).
- :class:`DoC` — difference of confidences (Guillory et al. 2021).
- :class:`COT` — confidence optimal transport (Lu et al., NeurIPS 2023), POT's exact solver.
- :class:`NuclearNorm` — normalised nuclear norm of the prediction matrix (Deng et al. 2023), linear
  in accuracy, fitted on the calibration windows.
- :class:`MaNo` — the ℓ4 matrix norm of the softmax prediction matrix (Xie et al., NeurIPS 2024),
  linear in accuracy, fitted on the calibration windows.
- :class:`CorrectnessEstimator` — a calibrated per-sample classifier of P(correct | features)
  (logistic regression on standardised features + isotonic calibration, scikit-learn); window
  estimate = mean P(correct). Feature sets ``confidence`` and ``confidence+relevance``.
- :class:`RelevanceEstimator` — ridge regression of window accuracy on window features.
- :class:`MedianOf` — median of the estimates of named member configurations (``median:a+b+c``).

The baselines take ``source="clean"`` ("as published": fitted on the clean source windows only) or
``source="all"`` (pooled over every calibration window, the same labelled data as relmon's own).

**Class probabilities.** :class:`COT`, :class:`NuclearNorm` and :class:`MaNo` read each sample's
probability vector from the records' ``probs`` column (schema version 2: the softmax vector, or its top
20 entries plus the remaining mass for larger ``K``; :mod:`relmon.records`). Records written before
that column existed keep the top-1 probability only; for them the vector is rebuilt as ``confidence``
on the predicted class and the rest spread evenly over the other classes (the pseudo-label-shift term
is exact, the dispersion of the non-top classes is not seen). All three work in the calibration's class
space (``K`` = 1 + the largest class predicted or labelled there, or the length of the full probability
vectors where larger) and refuse records predicting a class outside it, with an error naming the
class and the fix (their docstrings say why); a records frame without ``pred`` (or, to fit COT,
``label``) raises ``ValueError`` naming the column.

Estimators are saved as versioned JSON (:meth:`save` / :func:`load_estimator`), never pickle. Loading
checks the format, the kind, the state's keys and that every number is finite, and raises
``ValueError`` naming the file and the bad entry; a file for another model or feature set raises
:class:`EstimatorMismatchError` naming both.
"""

from __future__ import annotations

import copy
import json
import math
import os
import warnings
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
from scipy.special import expit
from scipy.stats import norm
from sklearn.base import BaseEstimator, clone
from sklearn.calibration import CalibratedClassifierCV
from sklearn.impute import SimpleImputer
from sklearn.isotonic import IsotonicRegression
from sklearn.linear_model import LinearRegression, LogisticRegression, Ridge
from sklearn.pipeline import make_pipeline
from sklearn.preprocessing import StandardScaler

from relmon.analysis.features import (
    feature_columns,
    sample_feature_columns,
    sample_features,
    window_features_from_samples,
)
from relmon.analysis.intervals import (
    between_shift_variance,
    conditioned_quantile,
    conformal_quantile,
    conformal_rank,
    scale_of,
    shift_reference,
    shift_scores,
)

FORMAT = "relmon-estimator"
FORMAT_VERSION = 3
#: held-out coverage below which a shift type is named as one the calibration cannot cover
UNCOVERED_BELOW = 0.5
CLEAN = "clean"


class EstimatorMismatchError(ValueError):
    """An estimator (or its file) is used for another model, kind or feature set than it was made for."""


def _require_columns(estimator, frame: pd.DataFrame, what: str, suffix: str, more: str = "") -> None:
    """An EstimatorMismatchError naming the fitted columns ``frame`` lacks (none lacking: nothing)."""
    missing = [c for c in estimator.columns_ if c not in frame.columns]
    if missing:
        raise EstimatorMismatchError(
            f"feature set {estimator.feature_set!r} (method {estimator.method_!r}) needs {what} "
            f"{missing[:4]}{more if len(missing) > 4 else ''}, absent from these records{suffix}")


def shift_type(window_id: str) -> str:
    """The shift type of a window: the part of its id before the first ``/`` (``clean``, ``blur`` …)."""
    return str(window_id).split("/", 1)[0]


def _model_of(records: pd.DataFrame) -> tuple[str, str]:
    if not isinstance(records, pd.DataFrame):
        raise TypeError(f"records must be a pandas DataFrame, got {type(records).__name__}")
    if records.empty:
        raise ValueError("records are empty: expected at least one window of per-sample records")
    for col in ("model", "model_version", "window_id"):
        if col not in records.columns:
            raise ValueError(f"records lack column {col!r}; expected the relmon record schema")
    models = records["model"].astype(str).unique()
    if len(models) != 1:
        raise ValueError(f"records must come from one model, got {sorted(models)}")
    versions = records["model_version"].astype(str).unique()
    return str(models[0]), ",".join(sorted(versions))


def _z(level: float) -> float:
    return float(norm.ppf(0.5 + level / 2.0))


def sampling_variance(estimate: np.ndarray, n: np.ndarray, level: float = 0.9) -> np.ndarray:
    """Agresti–Coull variance of a window accuracy ``estimate`` over ``n`` samples (never zero)."""
    z2 = _z(level) ** 2
    n = np.maximum(np.asarray(n, dtype=float), 0.0)
    p = (n * np.clip(np.asarray(estimate, dtype=float), 0.0, 1.0) + z2 / 2.0) / (n + z2)
    return p * (1.0 - p) / (n + z2)


def _result(window_id, estimate, lower, upper) -> pd.DataFrame:
    est = np.clip(np.asarray(estimate, dtype=float), 0.0, 1.0)
    return pd.DataFrame({
        "window_id": np.asarray(window_id).astype(str),
        "estimate": est,
        "lower": np.clip(np.minimum(np.asarray(lower, dtype=float), est), 0.0, 1.0),
        "upper": np.clip(np.maximum(np.asarray(upper, dtype=float), est), 0.0, 1.0),
    })


class _Data:
    """Per-sample features of some records and everything derived from them without an estimator.

    Computed on first use and kept: the window features, shift types, window sizes, the labelled and
    leave-one-shift-type-out subsets, per-window values (e.g. the nuclear norm of a window's prediction
    matrix) and point fits of estimator configurations on these samples. A subset made of whole
    windows slices its parent's window rows instead of recomputing them (a subset that cuts windows
    recomputes). :func:`relmon.analysis.selection.select_estimator` hands one ``_Data`` to every
    candidate, so none of this is recomputed per candidate; every value is the one a fresh
    computation gives (same function, same rows, same order).
    """

    def __init__(self, samples: pd.DataFrame, model: str | None = None, model_version: str | None = None):
        self.samples = samples.reset_index(drop=True)
        self.model, self.model_version = model, model_version
        self._windows = None
        self._memo: dict = {}
        self._root = self  # the data whose windows this one's are a selection of (whole windows)
        self._class_source = self  # the data whose classes make the class space (see n_classes)

    @classmethod
    def of(cls, records) -> _Data:
        """``records`` itself when already a ``_Data``; else the per-sample features of a records frame
        of one model."""
        if isinstance(records, _Data):
            return records
        model, version = _model_of(records)
        return cls(sample_features(records), model, version)

    def _cached(self, key, compute):
        if key not in self._memo:
            self._memo[key] = compute()
        return self._memo[key]

    @property
    def windows(self) -> pd.DataFrame:
        if self._windows is None:
            self._windows = window_features_from_samples(self.samples)
        return self._windows

    @property
    def groups(self) -> pd.Series:
        return self._cached("groups", lambda: self.samples["window_id"].map(shift_type))

    def sizes(self) -> pd.Series:
        return self._cached("sizes", lambda: self.samples.groupby("window_id").size())

    def subset(self, mask) -> _Data:
        out = _Data(self.samples[np.asarray(mask, dtype=bool)], self.model, self.model_version)
        out._class_source = self._class_source
        kept = out.sizes()
        if (kept == self.sizes().reindex(kept.index)).all():  # whole windows: per-window values carry over
            out._root = self._root
            if self._windows is not None:
                keep = self._windows["window_id"].isin(set(kept.index))
                out._windows = self._windows[keep].reset_index(drop=True)
        return out

    def labelled(self) -> _Data:
        """The samples with a known ``correct``; they make the class space of what is fitted on them."""
        def make():
            out = self.subset(self.samples["correct"].notna())
            out._class_source = out
            return out

        return self._cached("labelled", make)

    def n_classes(self, who: str) -> int:
        """The class count ``K`` of the calibration these samples belong to: 1 + the largest class
        predicted or labelled in the labelled records that were fitted (not only in this subset), so a
        leave-one-shift-type-out copy works in the class space of the final estimator."""
        return self._class_source._cached("n_classes", lambda: _n_classes(self._class_source.samples, who))

    def of_shift_type(self, group: str, keep: bool) -> _Data:
        """The windows of shift type ``group`` (``keep=True``) or all the others (``keep=False``)."""
        return self._cached(("shift_type", group, keep), lambda: self.subset((self.groups == group) == keep))

    def per_window(self, key, compute) -> pd.Series:
        """``compute(data)`` → Series indexed by window_id, sorted, of values that depend only on each
        window's own samples; computed once on the whole-window root and sliced."""
        full = self._root._cached(("per_window", key), lambda: compute(self._root))
        if self._root is self:
            return full
        return full[full.index.isin(set(self.sizes().index))]

    def point_fit(self, est: _WindowEstimator) -> _WindowEstimator:
        """A copy of ``est`` with its point estimate fitted on these samples (``est._fit_point``); one
        fit per configuration (class and parameters but ``interval``/``conformal``, which the point fit
        does not read), reused by every caller that asks for the same configuration."""
        key = _config_key(est)
        if key not in self._memo:
            fitted = clone(est)
            fitted._fit_point(self)
            self._memo[key] = fitted
        return copy.deepcopy(self._memo[key]).set_params(**est.get_params(deep=False))

    def remember_point_fit(self, est: _WindowEstimator) -> None:
        """Keep (a copy of) an estimator whose point estimate was just fitted on these samples."""
        self._memo.setdefault(_config_key(est), copy.deepcopy(est))


def _config_key(est) -> tuple:
    params = est.get_params(deep=False)
    return ("point_fit", type(est), tuple(sorted((k, repr(v)) for k, v in params.items()
                                                 if k not in ("interval", "conformal"))))


def _check_finite(value, where: str) -> None:
    """Raise ValueError if any number inside ``value`` (nested lists/dicts) is NaN or infinite."""
    if isinstance(value, dict):
        for k, v in value.items():
            _check_finite(v, f"{where}.{k}")
    elif isinstance(value, (list, tuple)):
        for i, v in enumerate(value):
            _check_finite(v, f"{where}[{i}]")
    elif isinstance(value, float) and not math.isfinite(value):
        raise ValueError(f"{where} is {value!r}; an estimator file must hold finite numbers "
                         "(fix: re-run 'relmon calibrate')")


class _WindowEstimator(BaseEstimator):
    """Shared plumbing: model checks, LOSO conformal intervals, score, JSON (de)serialisation."""

    feature_set: str = "confidence"
    #: keys the ``state`` of a saved file must hold
    _STATE_KEYS: tuple[str, ...] = ()

    # -- subclasses ---------------------------------------------------------------------------------

    def _fit(self, records: pd.DataFrame) -> None:  # pragma: no cover - abstract
        raise NotImplementedError

    def _point(self, records: pd.DataFrame) -> pd.Series:  # pragma: no cover - abstract
        """Point estimate per window (Series indexed by window_id)."""
        raise NotImplementedError

    def _features(self) -> list[str]:
        return ["confidence"]

    def _state(self) -> dict[str, Any]:  # pragma: no cover - abstract
        raise NotImplementedError

    def _set_state(self, state: dict[str, Any]) -> None:  # pragma: no cover - abstract
        raise NotImplementedError

    # -- fitting ------------------------------------------------------------------------------------

    def _training_records(self, data: _Data) -> _Data:
        """The samples a point fit uses: all, or the clean windows for ``source='clean'``."""
        if getattr(self, "source", "all") == "all":
            return data
        if self.source != CLEAN:
            raise ValueError(f"source must be 'all' or 'clean', got {self.source!r}")
        clean = data.of_shift_type(CLEAN, keep=True)
        if clean.samples.empty:
            raise ValueError(f"{type(self).__name__}(source='clean') needs clean source windows (window ids "
                             "'clean' or 'clean/...'); got none. Fix: include clean windows or use source='all'")
        return clean

    def fit(self, records: pd.DataFrame, y=None):
        """Fit on labelled records (``correct`` not null) of one model; ``y`` is ignored (sklearn API)."""
        if isinstance(records, _Data):  # features already computed (select_estimator shares them)
            data = records
            if data.model is None:
                raise ValueError("fit needs the records' model; build the data with _Data.of(records)")
            labelled = data.samples["correct"].notna().any()
        else:
            _model_of(records)
            labelled = "correct" in records.columns and records["correct"].notna().any()
        if not labelled:
            raise ValueError("fit needs labelled records: the 'correct' column is all null")
        if not (0.0 < float(self.interval) < 1.0):
            raise ValueError(f"interval must be in (0, 1), got {self.interval!r}")
        data = _Data.of(records)
        self.model_, self.model_version_ = data.model, data.model_version
        data = data.labelled()
        self._fit_point(data)
        data.remember_point_fit(self)
        clean = data.of_shift_type(CLEAN, keep=True)
        reference = clean if not clean.samples.empty else data  # no clean windows: all calibration windows
        self.shift_reference_ = shift_reference(reference.samples["confidence"].to_numpy(dtype=float))
        self._fit_interval(data)
        return self

    def _fit_point(self, data: _Data) -> None:
        self._fit(self._training_records(data))
        self.features_ = self._features()

    def loso_predictions(self, records) -> pd.DataFrame:
        """Leave-one-shift-type-out predictions on labelled ``records``: for each shift type but
        ``clean``, a copy (without conformal pass) fitted on the other windows predicts that type's
        windows. Columns ``window_id, shift_type, estimate, accuracy, n``."""
        data = _Data.of(records)
        groups = data.groups
        truth = data.windows.set_index("window_id")["accuracy"]
        sizes = data.sizes()
        rows = []
        for g in sorted(set(groups) - {CLEAN}):
            train, test = data.of_shift_type(g, keep=False), data.of_shift_type(g, keep=True)
            try:
                est = train.point_fit(clone(self).set_params(conformal=False))
            except ValueError:
                continue  # e.g. too few windows left for a regression: no residual from this type
            pred = est._point(test)
            rows.append(pd.DataFrame({"window_id": pred.index, "shift_type": g, "estimate": pred.to_numpy(),
                                      "accuracy": truth.reindex(pred.index).to_numpy(),
                                      "n": sizes.reindex(pred.index).to_numpy()}))
        cols = ["window_id", "shift_type", "estimate", "accuracy", "n"]
        out = pd.concat(rows, ignore_index=True) if rows else pd.DataFrame(columns=cols)
        if getattr(self, "shift_reference_", None) is not None:
            out["shift_score"] = self.shift_score(data).reindex(out["window_id"]).to_numpy(dtype=float)
        return out

    def shift_score(self, records) -> pd.Series:
        """Per window (indexed by window_id): the KS statistic of its confidences against the clean
        calibration reference this estimator was fitted with (:func:`relmon.analysis.intervals.shift_scores`);
        NaN for an estimator loaded from a file without a reference."""
        data = _Data.of(records)
        ref = getattr(self, "shift_reference_", None)
        if ref is None:
            return pd.Series(np.nan, index=data.sizes().index, dtype=float)
        key = ("shift_score", len(ref), float(np.sum(ref)), float(ref[0]), float(ref[-1]))
        return data.per_window(key, lambda d: shift_scores(d.samples, ref))

    def _fit_interval(self, records) -> None:
        self.tau_, self.q_, self.n_residuals_, self.interval_kind_ = 0.0, _z(float(self.interval)), 0, "sampling"
        self.interval_scale_, self.held_out_coverage_, self.uncovered_shift_types_ = None, {}, []
        if not getattr(self, "conformal", False):
            return
        loso = self.loso_predictions(records)
        if loso["shift_type"].nunique() >= 2:
            self.loso_ = loso
            self.set_residuals(loso)
            table = held_out_intervals(self, loso)
            self.held_out_coverage_ = {
                str(g): {"coverage": float(p["covered"].mean()), "mean_width": float(p["width"].mean()),
                         "n_windows": len(p)} for g, p in table.groupby("shift_type")}
            self.uncovered_shift_types_ = sorted(g for g, c in self.held_out_coverage_.items()
                                                 if c["coverage"] < UNCOVERED_BELOW)

    def set_residuals(self, loso: pd.DataFrame, conditioned: bool | None = None) -> _WindowEstimator:
        """Calibrate the interval from held-out residuals (columns estimate, accuracy, n; with a
        ``shift_score`` column the scale is shift-conditioned, :mod:`relmon.analysis.intervals`).
        ``conditioned=False`` forces the unconditioned scale ``sqrt(v + τ²)``."""
        level = float(self.interval)
        est = np.clip(loso["estimate"].to_numpy(dtype=float), 0, 1)
        r = loso["accuracy"].to_numpy(dtype=float) - est
        v = sampling_variance(est, loso["n"].to_numpy(dtype=float), level)
        d = loso["shift_score"].to_numpy(dtype=float) if "shift_score" in loso.columns else np.full(len(r), np.nan)
        ok = np.isfinite(r) & np.isfinite(v)
        r, v, d = r[ok], v[ok], d[ok]
        if len(r) < 2:
            return self
        tau2 = between_shift_variance(r, v)
        self.tau_ = math.sqrt(tau2)
        self.n_residuals_ = len(r)
        if conditioned is None:
            conditioned = bool(np.isfinite(d).all())
        if conditioned:
            self.q_, a, b = conditioned_quantile(r, v, d, level)
            self.interval_scale_ = [a, b]
            self.interval_kind_ = "conformal-loso-shift"
        else:
            self.q_ = conformal_quantile(np.abs(r) / np.sqrt(v + tau2), level)
            self.interval_scale_ = None
            self.interval_kind_ = "conformal-loso"
        return self

    def half_width(self, estimate, n, shift=None) -> np.ndarray:
        """The interval's half-width ``q · s`` for windows of point ``estimate``, size ``n`` and shift
        score ``shift`` (used by the shift-conditioned scale only)."""
        v = sampling_variance(estimate, n, float(self.interval))
        scale = getattr(self, "interval_scale_", None)
        if scale is None:
            return self.q_ * np.sqrt(v + self.tau_ ** 2)
        d = np.full(len(np.atleast_1d(v)), np.nan) if shift is None else np.asarray(shift, dtype=float)
        return self.q_ * np.sqrt(v + scale_of(d, scale[0], scale[1]) ** 2)

    # -- public API ---------------------------------------------------------------------------------

    def _check_fitted(self) -> None:
        if not hasattr(self, "model_"):
            raise RuntimeError(f"{type(self).__name__} is not fitted: call fit(records) or load(path) first")

    def predict(self, records: pd.DataFrame) -> pd.DataFrame:
        """DataFrame ``[window_id, estimate, lower, upper]``, one row per window, sorted by window_id."""
        self._check_fitted()
        model, _ = _model_of(records)
        if model != self.model_:
            raise EstimatorMismatchError(
                f"{type(self).__name__} was fitted for model {self.model_!r} (version {self.model_version_}) "
                f"but got records of model {model!r}; fit or load an estimator for {model!r}")
        data = _Data.of(records)
        point = self._point(data).clip(0.0, 1.0)
        n = data.sizes().reindex(point.index).to_numpy(dtype=float)
        est = point.to_numpy(dtype=float)
        shift = self.shift_score(data).reindex(point.index) if getattr(self, "interval_scale_", None) else None
        half = self.half_width(est, n, shift)
        return _result(point.index, est, est - half, est + half).sort_values("window_id", ignore_index=True)

    def score(self, records: pd.DataFrame, y=None) -> float:
        """Minus the mean absolute error of the estimates against the windows' true accuracy."""
        data = _Data.of(records)
        pred = self.predict(records).set_index("window_id")
        truth = data.windows.set_index("window_id")["accuracy"].reindex(pred.index)
        if truth.isna().all():
            raise ValueError("score needs labelled records: no window has a known accuracy")
        return -float((pred["estimate"] - truth).abs().mean())

    # -- serialisation ------------------------------------------------------------------------------

    def to_dict(self) -> dict[str, Any]:
        self._check_fitted()
        return {
            "format": FORMAT,
            "format_version": FORMAT_VERSION,
            "kind": type(self).__name__,
            "params": self.get_params(),
            "model": self.model_,
            "model_version": self.model_version_,
            "feature_set": self.feature_set,
            "features": list(self.features_),
            # q is +inf when the calibration has too few residuals for the level (JSON null)
            "interval": {"tau": self.tau_, "q": self.q_ if math.isfinite(self.q_) else None,
                         "n_residuals": self.n_residuals_,
                         "kind": self.interval_kind_,
                         "scale": getattr(self, "interval_scale_", None),
                         "shift_reference": getattr(self, "shift_reference_", None),
                         "held_out": getattr(self, "held_out_coverage_", {}),
                         "uncovered_shift_types": getattr(self, "uncovered_shift_types_", [])},
            "state": self._state(),
        }

    def save(self, path: str | os.PathLike) -> Path:
        """Write the fitted estimator to ``path`` as JSON (parent folders created, atomic replace)."""
        path = Path(path)
        path.parent.mkdir(parents=True, exist_ok=True)
        tmp = path.with_name(path.name + ".tmp")
        tmp.write_text(json.dumps(self.to_dict(), indent=2, allow_nan=False))
        os.replace(tmp, path)
        return path

    @classmethod
    def load(cls, path: str | os.PathLike, model: str | None = None, feature_set: str | None = None):
        """Load a file written by :meth:`save`; see :func:`load_estimator` for ``model``/``feature_set``."""
        est = load_estimator(path, model=model, feature_set=feature_set)
        if cls is not _WindowEstimator and not isinstance(est, cls):
            raise EstimatorMismatchError(f"{path} holds a {type(est).__name__}, not a {cls.__name__}")
        return est


# ------------------------------------------------------------------------------------------------------
# confidence baselines


class AverageConfidence(_WindowEstimator):
    """Window accuracy ≈ mean max-softmax confidence (optionally isotonic-calibrated: CBPE-like).

    Parameters
    ----------
    calibrate:
        Fit an isotonic map confidence → P(correct) on the labelled records (CBPE-like).
    source:
        ``"all"`` (pooled calibration windows) or ``"clean"`` (clean source windows only).
    interval, conformal:
        Interval level; LOSO conformal calibration of the interval (module docstring).
    """

    _STATE_KEYS = ("x_thresholds", "y_thresholds")

    def __init__(self, calibrate: bool = False, source: str = "all", interval: float = 0.9,
                 conformal: bool = True):
        self.calibrate = calibrate
        self.source = source
        self.interval = interval
        self.conformal = conformal

    def _fit(self, records):
        s = records.samples.dropna(subset=["correct"])
        if self.calibrate:
            iso = IsotonicRegression(y_min=0.0, y_max=1.0, out_of_bounds="clip")
            iso.fit(s["confidence"].to_numpy(), s["correct"].to_numpy())
            self.x_thresholds_ = iso.X_thresholds_.tolist()
            self.y_thresholds_ = iso.y_thresholds_.tolist()
        else:
            self.x_thresholds_ = self.y_thresholds_ = None

    def _calibrated(self, conf: np.ndarray) -> np.ndarray:
        if self.x_thresholds_ is None:
            return conf
        return np.interp(conf, np.asarray(self.x_thresholds_), np.asarray(self.y_thresholds_))

    def _point(self, records):
        s = records.samples
        return pd.Series(self._calibrated(s["confidence"].to_numpy()), index=s["window_id"]).groupby(level=0).mean()

    def _state(self):
        return {"x_thresholds": self.x_thresholds_, "y_thresholds": self.y_thresholds_}

    def _set_state(self, state):
        self.x_thresholds_, self.y_thresholds_ = state["x_thresholds"], state["y_thresholds"]


class ATC(_WindowEstimator):
    """Average thresholded confidence (Garg et al., ICLR 2022).

    On the labelled records pick ``t`` so that the share of per-sample scores above ``t`` equals their
    accuracy; a window's estimate is its share of scores above ``t``.

    Parameters
    ----------
    signal:
        ``"confidence"`` (max softmax) or ``"negative_entropy"`` (minus the softmax entropy; Garg et al.'s
        better-performing variant).
    source, interval, conformal:
        As in :class:`AverageConfidence`.
    """

    _STATE_KEYS = ("threshold", "source_accuracy")

    def __init__(self, signal: str = "confidence", source: str = "all", interval: float = 0.9,
                 conformal: bool = True):
        self.signal = signal
        self.source = source
        self.interval = interval
        self.conformal = conformal

    def _scores(self, s: pd.DataFrame) -> np.ndarray:
        if self.signal == "confidence":
            return s["confidence"].to_numpy(dtype=float)
        if self.signal == "negative_entropy":
            return -s["softmax_entropy"].to_numpy(dtype=float)
        raise ValueError(f"signal must be 'confidence' or 'negative_entropy', got {self.signal!r}")

    def _features(self):
        return ["confidence"] if self.signal == "confidence" else ["softmax_entropy"]

    def _fit(self, records):
        s = records.samples.dropna(subset=["correct"])
        scores = np.sort(self._scores(s))
        acc = float(s["correct"].mean())
        k = round((1.0 - acc) * len(scores))  # samples at or below t
        self.source_accuracy_ = acc
        # With k == 0 every score must lie above t.
        self.threshold_ = float(scores[k - 1]) if k > 0 else float(scores[0] - 1.0)

    def _point(self, records):
        s = records.samples
        above = (self._scores(s) > self.threshold_).astype(float)
        return pd.Series(above, index=s["window_id"]).groupby(level=0).mean()

    def _state(self):
        return {"threshold": self.threshold_, "source_accuracy": self.source_accuracy_}

    def _set_state(self, state):
        self.threshold_, self.source_accuracy_ = state["threshold"], state["source_accuracy"]


class DoC(_WindowEstimator):
    """Difference of confidences (Guillory et al. 2021): ``acc_source + (mean conf_target − mean conf_source)``."""

    _STATE_KEYS = ("source_accuracy", "source_confidence")

    def __init__(self, source: str = "all", interval: float = 0.9, conformal: bool = True):
        self.source = source
        self.interval = interval
        self.conformal = conformal

    def _fit(self, records):
        s = records.samples.dropna(subset=["correct"])
        self.source_accuracy_ = float(s["correct"].mean())
        self.source_confidence_ = float(s["confidence"].mean())

    def _point(self, records):
        g = records.samples.groupby("window_id")["confidence"].mean()
        return self.source_accuracy_ + g - self.source_confidence_

    def _state(self):
        return {"source_accuracy": self.source_accuracy_, "source_confidence": self.source_confidence_}

    def _set_state(self, state):
        self.source_accuracy_, self.source_confidence_ = state["source_accuracy"], state["source_confidence"]


_CLASS_COLUMNS = {
    "pred": ("the model's predicted class of each sample",
             "score the records with relmon (its records carry 'pred') or add the column"),
    "label": ("each labelled sample's true class, for the source label distribution",
              "calibrate on labelled data (class folders, or a manifest with a label column)"),
}


def _class_column(samples: pd.DataFrame, column: str, who: str) -> np.ndarray:
    """``column`` (``pred`` or ``label``) as integers, with a clear error where it is missing."""
    meaning, fix = _CLASS_COLUMNS[column]
    if column not in samples.columns:
        raise ValueError(f"{who} needs the records' {column!r} column ({meaning}), absent from these records; "
                         f"fix: {fix}, or leave {who} out of the estimators")
    values = samples[column].dropna()
    if values.empty:
        raise ValueError(f"{who} needs the records' {column!r} column ({meaning}), but it is all null; fix: {fix}")
    values = values.to_numpy(dtype=np.int64)
    if values.min() < 0:
        raise ValueError(f"{who}: the records' {column!r} column holds class {int(values.min())}; class "
                         "indices must be 0 or more")
    return values


def _n_classes(samples: pd.DataFrame, who: str) -> int:
    """The class count K of the calibration: 1 + the largest class predicted or labelled in it, or the
    length of the records' full probability vectors where that is larger (the model's own K)."""
    top = int(_class_column(samples, "pred", who).max())
    if "label" in samples.columns and samples["label"].notna().any():
        top = max(top, int(_class_column(samples, "label", who).max()))
    return max(top + 1, _full_probs_length(samples))


def _full_probs_length(samples: pd.DataFrame) -> int:
    """The length of the full probability vectors in ``samples`` (0 where none are full vectors)."""
    if "probs" not in samples.columns:
        return 0
    full = samples["probs"].notna()
    if "probs_classes" in samples.columns:
        full &= samples["probs_classes"].isna()
    return max((len(v) for v in samples.loc[full, "probs"]), default=0)


def _predicted_classes(samples: pd.DataFrame, k: int, who: str) -> np.ndarray:
    """The ``pred`` column, every class in ``0..k-1`` (the fitted class space) or a clear error."""
    if "pred" in samples.columns and samples["pred"].isna().any():
        raise ValueError(f"{who}: {int(samples['pred'].isna().sum())} sample(s) have no 'pred'; fix: records "
                         "must carry every sample's predicted class")
    preds = _class_column(samples, "pred", who)
    if preds.max() >= k:
        c = int(preds.max())
        raise ValueError(
            f"{who} was calibrated on {k} classes (0..{k - 1}: those its calibration records predicted or were "
            f"labelled with) but these records predict class {c}, which has no place in the {k}-class "
            f"prediction matrix it was fitted on. Fix: calibrate on labelled data that includes class {c} "
            f"('relmon calibrate'), or leave {who} out of the estimators")
    return preds


def _probability_matrix(samples: pd.DataFrame, preds: np.ndarray, k: int) -> np.ndarray:
    """``(n, k)`` class probabilities of the samples in the calibration's class space of ``k`` classes.

    From the records' ``probs`` where present (schema version 2): a full vector is used as it is
    (entries of classes ``>= k`` — never predicted nor labelled in calibration — are dropped, which
    removes at most their small mass); a top-k vector (``probs_classes``) gets the remaining mass
    spread evenly over the classes not listed. Records without ``probs`` (older files) get
    ``confidence`` on the predicted class and the rest spread evenly over the other classes."""
    conf = samples["confidence"].to_numpy(dtype=float)
    rest = (1.0 - conf) / max(k - 1, 1)
    p = np.repeat(rest[:, None], k, axis=1)
    p[np.arange(len(conf)), preds] = conf
    if "probs" not in samples.columns:
        return p
    probs = samples["probs"].to_numpy(dtype=object)
    classes = (samples["probs_classes"].to_numpy(dtype=object) if "probs_classes" in samples.columns
               else np.full(len(probs), None, dtype=object))
    for i, (v, c) in enumerate(zip(probs, classes, strict=True)):
        if v is None or (isinstance(v, float) and np.isnan(v)):
            continue  # an older record: the rebuilt row stays
        v = np.asarray(v, dtype=float)
        if c is None or (isinstance(c, float) and np.isnan(c)):
            row = np.zeros(k)
            row[:min(k, len(v))] = v[:k]
        else:
            c = np.asarray(c, dtype=np.int64)
            inside = c < k
            free = k - int(inside.sum())
            row = np.full(k, max(0.0, 1.0 - float(v.sum())) / free if free > 0 else 0.0)
            row[c[inside]] = v[inside]
        p[i] = row
    return p


class COT(_WindowEstimator):
    """Confidence optimal transport (Lu et al., NeurIPS 2023).

    Estimated error of a window = the optimal-transport cost (POT's exact ``ot.emd2``) between its
    samples' probability vectors (uniform weights) and the source label distribution (one-hot vectors
    ``e_y`` weighted by the labelled records' class frequencies), with ground cost ``‖p − e_y‖_∞``.
    Estimate = 1 − cost. The fitted quantity is the label distribution over the calibration's ``K``
    classes (1 + the largest class predicted or labelled in the labelled calibration records, also for
    the leave-one-shift-type-out copies; a class never labelled has weight 0).

    **Classes not seen in calibration** (a prediction ``≥ K``) raise ``ValueError`` naming the class
    and the fix, as in :class:`NuclearNorm`: the rebuilt probability vectors have ``K`` entries (the
    non-top mass spread over ``K − 1`` classes), so such a prediction has no place in them; widening
    ``K`` for one window would change every sample's vector and hence the cost scale the estimate is
    read on, and folding the class into another would count predictions as agreeing with a class the
    model did not predict. Either would be a confident wrong number; the estimator instead asks to be
    calibrated on data that covers the class. Records without ``pred`` (or, to fit, ``label``) raise
    ``ValueError`` naming the column.
    """

    _STATE_KEYS = ("label_distribution",)

    def __init__(self, source: str = "all", interval: float = 0.9, conformal: bool = True):
        self.source = source
        self.interval = interval
        self.conformal = conformal

    def _fit(self, records):
        k = records.n_classes("COT")
        labels = _class_column(records.samples, "label", "COT")
        self.label_distribution_ = (np.bincount(labels, minlength=k) / len(labels)).tolist()

    def _point(self, records):
        from relmon.extras import require

        ot = require("ot", "the COT accuracy estimator")

        pi = np.asarray(self.label_distribution_, dtype=float)
        k = len(pi)
        s = records.samples
        preds = _predicted_classes(s, k, "COT")
        out = {}
        for wid, idx in s.groupby("window_id").indices.items():
            p = _probability_matrix(s.iloc[idx], preds[idx], k)
            cost = np.abs(p[:, None, :] - np.eye(k)[None, :, :]).max(axis=2)  # (n, k): ‖p_i − e_y‖_∞
            a = np.full(len(idx), 1.0 / len(idx))
            out[wid] = 1.0 - float(ot.emd2(a, pi, cost))
        return pd.Series(out).sort_index()

    def _state(self):
        return {"label_distribution": self.label_distribution_}

    def _set_state(self, state):
        self.label_distribution_ = list(state["label_distribution"])


class NuclearNorm(_WindowEstimator):
    """Nuclear-norm (confidence and dispersity) estimator (Deng et al., ICML 2023).

    Window feature ``‖P‖_* / sqrt(n · min(n, K))`` of the ``(n, K)`` prediction matrix; accuracy is
    linear in it, the line fitted (scikit-learn ``LinearRegression``) on the calibration windows (the
    paper fits it on synthetically shifted sets, i.e. pooled). ``K`` is the calibration's class count
    (1 + the largest class predicted or labelled in the labelled calibration records, also for the
    leave-one-shift-type-out copies), kept with the line.

    **Classes not seen in calibration** (a prediction ``≥ K``) raise ``ValueError`` naming the class
    and the fix, as in :class:`COT`. The line holds for the ``K``-column matrix and its normaliser
    ``sqrt(n · min(n, K))``: widening ``K`` would move the feature off the fitted line, and folding the
    class into column ``K − 1`` (what this estimator once did) adds agreement with a class the model
    did not predict, raising the norm and the estimate — a confident wrong number. Records without
    ``pred`` raise ``ValueError`` naming the column.
    """

    _STATE_KEYS = ("n_classes", "coef", "intercept")

    def __init__(self, source: str = "all", interval: float = 0.9, conformal: bool = True):
        self.source = source
        self.interval = interval
        self.conformal = conformal

    def _norms(self, records, k):
        return records.per_window(("nuclear_norm", k), lambda data: self._window_norms(data, k))

    @staticmethod
    def _window_norms(records, k):
        s = records.samples
        preds = _predicted_classes(s, k, "NuclearNorm")
        out = {}
        for wid, idx in s.groupby("window_id").indices.items():
            p = _probability_matrix(s.iloc[idx], preds[idx], k)
            out[wid] = float(np.linalg.norm(p, ord="nuc") / math.sqrt(len(idx) * min(len(idx), k)))
        return pd.Series(out).sort_index()

    def _fit(self, records):
        k = records.n_classes("NuclearNorm")
        x = self._norms(records, k)
        y = records.windows.set_index("window_id")["accuracy"].reindex(x.index)
        if len(x) < 3 or float(np.ptp(y)) == 0.0:
            raise ValueError(f"NuclearNorm needs at least 3 labelled windows of different accuracy, got {len(x)}")
        reg = LinearRegression().fit(x.to_numpy()[:, None], y.to_numpy())
        self.n_classes_, self.coef_, self.intercept_ = k, float(reg.coef_[0]), float(reg.intercept_)

    def _point(self, records):
        x = self._norms(records, self.n_classes_)
        return self.intercept_ + self.coef_ * x

    def _state(self):
        return {"n_classes": self.n_classes_, "coef": self.coef_, "intercept": self.intercept_}

    def _set_state(self, state):
        self.n_classes_, self.coef_, self.intercept_ = int(state["n_classes"]), state["coef"], state["intercept"]


def mano_score(p: np.ndarray, order: float = 4.0) -> float:
    """MaNo's score of an ``(N, K)`` matrix of normalised (softmax) predictions: the entrywise
    ``L_order`` norm divided by ``(N·K)^(1/order)`` (Xie et al., NeurIPS 2024, Eq. 4; ``order`` 4)."""
    p = np.asarray(p, dtype=float)
    return float((np.sum(np.abs(p) ** order) / p.size) ** (1.0 / order))


def mano_criterion(p: np.ndarray) -> float:
    """MaNo's calibration criterion ``Φ = −1/(N·K) Σ_i Σ_k log p_ik`` (the cross-entropy of the uniform
    distribution against the predictions); the paper switches to its Taylor normalisation when Φ
    exceeds 5 (over-confident logits)."""
    p = np.clip(np.asarray(p, dtype=float), 1e-300, 1.0)
    return float(-np.mean(np.log(p)))


class MaNo(_WindowEstimator):
    """MaNo (Xie, Odonnat, Feofanov et al., NeurIPS 2024): the matrix-norm score of a window's softmax
    prediction matrix, mapped to accuracy by a line fitted on the calibration windows.

    Window score ``S = (Σ_ik p_ik^4 / (N·K))^(1/4)`` (:func:`mano_score`; the paper's ``p = 4``); accuracy
    ``= intercept + coef · S`` (scikit-learn ``LinearRegression`` over the labelled calibration windows,
    as for :class:`NuclearNorm`; the paper reports the score's linear correlation with accuracy over
    shifted sets). The paper normalises with softmax, or with a second-order Taylor approximation of
    softmax where its criterion ``Φ`` (:func:`mano_criterion`) exceeds 5; the Taylor form needs the raw
    logits, which records do not keep (``probs`` holds softmax), so this estimator uses softmax and
    records the calibration's ``Φ`` (``criterion_``) to show when the paper would have switched.
    ``K`` and the class rules are those of :class:`NuclearNorm`; records without ``probs`` use the
    vectors rebuilt from ``confidence``.
    """

    _STATE_KEYS = ("n_classes", "coef", "intercept")

    def __init__(self, source: str = "all", interval: float = 0.9, conformal: bool = True):
        self.source = source
        self.interval = interval
        self.conformal = conformal

    @staticmethod
    def _window_scores(records, k):
        s = records.samples
        preds = _predicted_classes(s, k, "MaNo")
        out = {}
        for wid, idx in s.groupby("window_id").indices.items():
            out[wid] = mano_score(_probability_matrix(s.iloc[idx], preds[idx], k))
        return pd.Series(out).sort_index()

    def _scores(self, records, k):
        return records.per_window(("mano", k), lambda data: self._window_scores(data, k))

    def _fit(self, records):
        k = records.n_classes("MaNo")
        x = self._scores(records, k)
        y = records.windows.set_index("window_id")["accuracy"].reindex(x.index)
        if len(x) < 3 or float(np.ptp(y)) == 0.0:
            raise ValueError(f"MaNo needs at least 3 labelled windows of different accuracy, got {len(x)}")
        reg = LinearRegression().fit(x.to_numpy()[:, None], y.to_numpy())
        s = records.samples
        self.criterion_ = mano_criterion(_probability_matrix(s, _predicted_classes(s, k, "MaNo"), k))
        self.n_classes_, self.coef_, self.intercept_ = k, float(reg.coef_[0]), float(reg.intercept_)

    def _point(self, records):
        return self.intercept_ + self.coef_ * self._scores(records, self.n_classes_)

    def _state(self):
        return {"n_classes": self.n_classes_, "coef": self.coef_, "intercept": self.intercept_,
                "criterion": self.criterion_}

    def _set_state(self, state):
        self.n_classes_, self.coef_, self.intercept_ = int(state["n_classes"]), state["coef"], state["intercept"]
        self.criterion_ = state.get("criterion")


# ------------------------------------------------------------------------------------------------------
# relmon's estimators


def _method_of(records: pd.DataFrame, method: str | None, needed: bool) -> str:
    if method is not None:
        return method
    methods = heatmap_methods_from_features(records.samples)
    if not methods and needed:
        raise ValueError("records hold no heatmap method rows; relevance features need e.g. 'lrp' rows")
    return methods[0] if methods else "none"


class CorrectnessEstimator(_WindowEstimator):
    """Calibrated per-sample classifier of P(correct | features); window estimate = mean P(correct).

    scikit-learn parts: median imputation (features may be NaN, e.g. no ``random`` row) →
    ``StandardScaler`` → ``LogisticRegression``, calibrated isotonically with ``CalibratedClassifierCV``
    (``ensemble=False``: cross-validated predictions calibrate one model fitted on all samples).

    Parameters
    ----------
    feature_set:
        ``"confidence"`` (confidence, margin, softmax entropy, energy) or ``"confidence+relevance"``
        (plus the scale-free relevance features of ``method``;
        :func:`relmon.analysis.features.sample_feature_columns`).
    method:
        Heatmap method of the relevance features (``None``: the first of the training records).
    C:
        Inverse L2 penalty of the logistic regression.
    interval, conformal:
        As in :class:`AverageConfidence`.
    """

    _STATE_KEYS = ("method", "columns", "impute", "mean", "scale", "coef", "intercept", "x_thresholds",
                   "y_thresholds")

    def __init__(self, feature_set: str = "confidence", method: str | None = None, C: float = 1.0,
                 interval: float = 0.9, conformal: bool = True):
        self.feature_set = feature_set
        self.method = method
        self.C = C
        self.interval = interval
        self.conformal = conformal

    def _features(self):
        return list(self.columns_)

    def _matrix(self, s: pd.DataFrame) -> np.ndarray:
        _require_columns(self, s, "per-sample features", f"; fix: score with method {self.method_!r}")
        return s[self.columns_].to_numpy(dtype=float)

    def _fit(self, records):
        self.method_ = _method_of(records, self.method, needed=self.feature_set != "confidence")
        self.columns_ = sample_feature_columns(self.feature_set, self.method_)
        s = records.samples.dropna(subset=["correct"])
        x, y = self._matrix(s), s["correct"].to_numpy(dtype=int)
        if len(np.unique(y)) < 2:
            raise ValueError("CorrectnessEstimator needs both correct and wrong samples in the labelled records")
        base = make_pipeline(SimpleImputer(strategy="median", keep_empty_features=True), StandardScaler(),
                             LogisticRegression(C=float(self.C), max_iter=1000))
        cv = int(min(3, np.bincount(y).min()))
        if cv >= 2:
            cal = CalibratedClassifierCV(base, method="isotonic", cv=cv, ensemble=False).fit(x, y)
            pair = cal.calibrated_classifiers_[0]
            fitted, iso = pair.estimator, pair.calibrators[0]
            xt, yt = iso.X_thresholds_.tolist(), iso.y_thresholds_.tolist()
        else:  # too few wrong (or right) samples to cross-validate: the logistic model's own probabilities
            fitted = base.fit(x, y)
            grid = np.linspace(-30.0, 30.0, 601)
            xt, yt = grid.tolist(), expit(grid).tolist()
        imp, scaler, lr = fitted[0], fitted[1], fitted[2]
        stats = np.where(np.isfinite(imp.statistics_), imp.statistics_, 0.0)
        self.impute_, self.mean_, self.scale_ = stats.tolist(), scaler.mean_.tolist(), scaler.scale_.tolist()
        self.coef_, self.intercept_ = lr.coef_[0].tolist(), float(lr.intercept_[0])
        self.x_thresholds_, self.y_thresholds_ = xt, yt

    def predict_proba_correct(self, records: pd.DataFrame) -> pd.DataFrame:
        """Per sample: ``window_id, sample_id, p_correct`` (calibrated)."""
        s = records.samples
        x = self._matrix(s)
        x = np.where(np.isfinite(x), x, np.asarray(self.impute_)[None, :])
        z = ((x - np.asarray(self.mean_)) / np.asarray(self.scale_)) @ np.asarray(self.coef_) + self.intercept_
        # CalibratedClassifierCV calibrates the decision function (the logit z), not expit(z).
        p = np.interp(z, np.asarray(self.x_thresholds_), np.asarray(self.y_thresholds_))
        return pd.DataFrame({"window_id": s["window_id"], "sample_id": s["sample_id"], "p_correct": p})

    def _point(self, records):
        return self.predict_proba_correct(records).groupby("window_id")["p_correct"].mean()

    def _state(self):
        return {"method": self.method_, "columns": self.columns_, "impute": self.impute_, "mean": self.mean_,
                "scale": self.scale_, "coef": self.coef_, "intercept": self.intercept_,
                "x_thresholds": self.x_thresholds_, "y_thresholds": self.y_thresholds_}

    def _set_state(self, state):
        self.method_, self.columns_ = state["method"], list(state["columns"])
        self.impute_, self.mean_, self.scale_ = state["impute"], state["mean"], state["scale"]
        self.coef_, self.intercept_ = state["coef"], state["intercept"]
        self.x_thresholds_, self.y_thresholds_ = state["x_thresholds"], state["y_thresholds"]
        if not (len(self.columns_) == len(self.impute_) == len(self.mean_) == len(self.scale_) == len(self.coef_)):
            raise ValueError("state lengths of columns/impute/mean/scale/coef differ")


class RelevanceEstimator(_WindowEstimator):
    """Ridge regression (scikit-learn ``StandardScaler`` + ``Ridge``) of window accuracy on window features.

    Parameters
    ----------
    feature_set:
        ``"relevance"`` (AOPC, AOPC relative, AOPC − random, heatmap entropy and PNG size: mean and
        10/50/90 % quantiles), ``"confidence"`` (max-softmax, softmax entropy, margin statistics) or
        ``"relevance+confidence"``. See :func:`relmon.analysis.features.feature_columns`.
    method:
        Heatmap method whose features are used; ``None`` = the first heatmap method of the records.
    alpha:
        Ridge penalty on the standardised features.
    interval, conformal:
        As in :class:`AverageConfidence`.
    """

    _STATE_KEYS = ("method", "columns", "coef", "intercept", "mean")

    def __init__(self, feature_set: str = "relevance+confidence", method: str | None = None, alpha: float = 1.0,
                 interval: float = 0.9, conformal: bool = True):
        self.feature_set = feature_set
        self.method = method
        self.alpha = alpha
        self.interval = interval
        self.conformal = conformal

    def _features(self):
        return list(self.columns_)

    def _matrix(self, feats: pd.DataFrame) -> np.ndarray:
        _require_columns(self, feats, "window features",
                         f" (their heatmap methods: {heatmap_methods_from_features(feats)})", more="...")
        x = feats[self.columns_].to_numpy(dtype=float)
        # A window where a feature is undefined everywhere (e.g. aopc_rel NaN) falls back to the mean.
        return np.where(np.isfinite(x), x, np.asarray(self.mean_)[None, :])

    def _fit(self, records):
        self.method_ = _method_of(records, self.method, needed=self.feature_set != "confidence")
        self.columns_ = feature_columns(self.feature_set, self.method_)
        feats = records.windows.dropna(subset=["accuracy"])
        if len(feats) < 3:
            raise ValueError(f"RelevanceEstimator needs at least 3 labelled windows, got {len(feats)}")
        missing = [c for c in self.columns_ if c not in feats.columns]
        if missing:
            raise ValueError(f"training records lack window features {missing[:4]} of feature set "
                             f"{self.feature_set!r}")
        x = feats[self.columns_].to_numpy(dtype=float)
        finite = np.where(np.isfinite(x), x, np.nan)
        with warnings.catch_warnings():  # an all-NaN column's mean is NaN (then 0), others stay unbiased
            warnings.simplefilter("ignore", RuntimeWarning)
            col_mean = np.nanmean(finite, axis=0)
        self.mean_ = np.nan_to_num(col_mean).tolist()
        x = self._matrix(feats)
        y = feats["accuracy"].to_numpy(dtype=float)
        pipe = make_pipeline(StandardScaler(), Ridge(alpha=float(self.alpha))).fit(x, y)
        scaler, ridge = pipe[0], pipe[1]
        coef = ridge.coef_ / scaler.scale_
        self.coef_ = coef.tolist()
        self.intercept_ = float(ridge.intercept_ - coef @ scaler.mean_)
        self.n_windows_ = len(y)

    def _point(self, records):
        feats = records.windows
        est = self.intercept_ + self._matrix(feats) @ np.asarray(self.coef_)
        return pd.Series(est, index=feats["window_id"].to_numpy())

    def _state(self):
        return {"method": self.method_, "columns": self.columns_, "coef": self.coef_,
                "intercept": self.intercept_, "mean": self.mean_, "n_windows": self.n_windows_}

    def _set_state(self, state):
        self.method_, self.columns_ = state["method"], list(state["columns"])
        self.coef_, self.intercept_, self.mean_ = state["coef"], state["intercept"], state["mean"]
        self.n_windows_ = state.get("n_windows")
        if not (len(self.columns_) == len(self.coef_) == len(self.mean_)):
            raise ValueError("state lengths of columns/coef/mean differ")


class MedianOf(_WindowEstimator):
    """Median of the point estimates of named member configurations (a robust combination).

    Parameters
    ----------
    members:
        Names of :data:`ESTIMATORS` (at least one), e.g. ``("atc", "cbpe_isotonic", "cot")``.
    interval, conformal:
        As in :class:`AverageConfidence`; the interval is calibrated on the median's own LOSO residuals.
    """

    _STATE_KEYS = ("members",)

    def __init__(self, members: Sequence[str] = ("atc", "cbpe_isotonic", "doc"), interval: float = 0.9,
                 conformal: bool = True):
        self.members = members
        self.interval = interval
        self.conformal = conformal

    def _fit(self, records):
        names = list(self.members)
        if not names:
            raise ValueError("MedianOf needs at least one member estimator name")
        self.members_ = []
        for n in names:
            # the same configuration's point fit on the same samples as the candidate's own (shared
            # when select_estimator evaluates both)
            member = records.point_fit(make_estimator(n).set_params(conformal=False))
            member.model_ = getattr(self, "model_", "")
            member.model_version_ = getattr(self, "model_version_", "")
            member.n_residuals_, member.tau_, member.q_, member.interval_kind_ = 0, 0.0, _z(member.interval), "sampling"
            self.members_.append(member)

    def _features(self):
        return sorted({f for m in self.members_ for f in m.features_})

    def _point(self, records):
        return pd.concat([m._point(records) for m in self.members_], axis=1).median(axis=1)

    def _state(self):
        return {"members": [m.to_dict() for m in self.members_]}

    def _set_state(self, state):
        self.members_ = [_from_dict(d, "member") for d in state["members"]]


#: The shortcut-variant calibration windows (``shortcut_variants``) are named ``shortcut_<variant>/<share>``.
SHORTCUT_PREFIX = "shortcut_"
#: The estimators ``relmon calibrate`` adds to the candidates when the calibration has shortcut windows.
LOCATION_ESTIMATORS: tuple[str, ...] = ("location_regression", "location_regression_local")
#: Window features of :class:`LocationRegression`'s regression: mean confidence and the mean occlusion
#: flip rate and confidence drop of the suspect regions (:mod:`relmon.location`).
LOCATION_REGRESSION_FEATURES: tuple[str, ...] = ("confidence_mean", "occlusion_flip_mean", "occlusion_drop_mean")


def shortcut_family(window_ids) -> np.ndarray:
    """True for the windows where only the shortcut varies: ``clean`` and ``shortcut_*`` windows."""
    types = pd.Series(np.asarray(window_ids).astype(str)).map(shift_type)
    return (types.eq(CLEAN) | types.str.startswith(SHORTCUT_PREFIX)).to_numpy()


#: Standard errors of a window mean added to the envelope on both sides (a window is never outside
#: for a difference that sampling alone makes likely).
ENVELOPE_SE = 3.0


def sampling_se(samples: pd.DataFrame, columns) -> np.ndarray:
    """Per window-feature column ``<feature>_<stat>[@m]``: the median over windows of the standard error
    ``std / sqrt(n)`` of the per-sample ``<feature>[@m]`` (NaN where that column is missing)."""
    g = samples.groupby("window_id")
    out = []
    for col in columns:
        base, _, method = col.partition("@")
        feature = base.rsplit("_", 1)[0]
        name = f"{feature}@{method}" if method else feature
        if name not in samples.columns:
            out.append(np.nan)
            continue
        se = g[name].std() / np.sqrt(g[name].count().clip(lower=1))
        out.append(float(np.nanmedian(se.to_numpy(dtype=float))) if se.notna().any() else np.nan)
    return np.asarray(out, dtype=float)


def _envelope_columns(feats: pd.DataFrame, method: str) -> list[str]:
    """The window features that decide whether a window lies where the shortcut family was calibrated:
    the regression's features, the heatmap's entropy, PNG size and Gini index of ``method`` and the 10 %
    and 50 % confidence quantiles (those present)."""
    more = [f"entropy_bits_mean@{method}", f"png_bytes_mean@{method}", f"gini_mean@{method}",
            "confidence_q10", "confidence_q50"]
    return [*LOCATION_REGRESSION_FEATURES, *(c for c in more if c in feats.columns)]


class LocationRegression(_WindowEstimator):
    """Shortcut-aware window estimator (issue 19): a regression fitted on the windows where only the
    shortcut varies, used where a window lies in their range, else a fallback estimator.

    Why window level: per sample, what an occlusion flip says about correctness depends on the window.
    In a window whose shortcut cues are intact a flip marks a prediction the cue carried (right); in a
    window of misleading cues it marks one the wrong cue carried (wrong). A per-sample model pooled over
    calibration windows averages the two and misses windows of many misleading cues. Across windows,
    however, the mean flip rate and confidence drop rise with the share of broken cues while the
    accuracy falls, close to linearly (measured on the planted-shortcut models; docs/shortcuts.md).

    - **Family regression**: ridge regression (``StandardScaler`` + ``Ridge(alpha)``) of window accuracy
      on :data:`LOCATION_REGRESSION_FEATURES`, fitted on the ``clean`` and ``shortcut_<variant>/<share>``
      calibration windows (the ``shortcut_variants`` of the calibration: suspect regions blanked or
      swapped in a share of the images).
    - **Envelope**: a window is in the family's range when each of the regression's features, the
      heatmap's mean entropy, PNG size and Gini index and the 10/50 % confidence quantiles lies within
      the family windows' ``[min, max]`` widened on both sides by ``margin`` of the span plus
      :data:`ENVELOPE_SE` standard errors of a window mean (:func:`sampling_se`). Strong corruptions
      move the confidence and the heatmap statistics out of it; mild ones may stay inside (measured).
    - **Fallback**: outside the envelope the estimate is the ``fallback`` configuration's (a name of
      :data:`ESTIMATORS` or ``median:a+b+c``), fitted on all calibration windows. ``relmon calibrate``
      sets it to the default its leave-one-shift-type-out selection chose among the other candidates,
      so outside the envelope the shortcut-aware estimate is today's default.

    ``alpha``, ``margin`` and ``fallback`` were chosen on the tuning shortcuts (``marker``, ``border``)
    of ``scripts/shortcut_estimator_study.py``; the records need the location columns
    (``suspect_regions`` in the config) and the calibration the shortcut windows (``shortcut_variants``).

    Measured there (4 models, suspect regions = the cue's rectangles, 2 windows of 200 images per test
    kind, mean absolute error), with the fallback ``relmon calibrate`` gives it (the selection's default
    among the shipped candidates: cot, or a median of cot, nuclear_norm and mano): misleading windows
    p = 0.25 / 0.5: 0.020 / 0.033 against that default's 0.031 / 0.076 (ATC 0.089 / 0.140, mean
    confidence 0.063 / 0.114); on the marker models at p = 0.5 0.038 against ATC 0.214 and confidence
    0.150. The price: mild corruptions that raise the cue reliance (noise, blur) or move the cue away
    (rotation, pixelation) stay inside the envelope and look like broken cues, so on ordinary
    corruption windows it errs 0.176 against the default's 0.146. ``fit_on="local"`` (also fitting the
    calibration windows inside the envelope) trades the other way: 0.058 / 0.088 and 0.152.
    """

    feature_set = "location"
    _STATE_KEYS = ("method", "columns", "coef", "intercept", "envelope_columns", "low", "high", "pad", "fallback")

    def __init__(self, fallback: str = "regression_confidence", alpha: float = 1.0, margin: float = 0.25,
                 fit_on: str = "family", interval: float = 0.9, conformal: bool = True):
        self.fallback = fallback
        self.alpha = alpha
        self.fit_on = fit_on
        self.margin = margin
        self.interval = interval
        self.conformal = conformal

    def _features(self):
        return sorted({*self.envelope_columns_, *self.fallback_.features_})

    def _fit(self, records):
        members = self.fallback[len(MEDIAN_PREFIX):].split("+") if str(self.fallback).startswith(MEDIAN_PREFIX) \
            else [self.fallback]
        if any(m not in ESTIMATORS or ESTIMATORS[m][0] == "LocationRegression" for m in members):
            raise ValueError(f"fallback must name a non-location estimator of {list(ESTIMATORS)} (or "
                             f"'median:a+b+c' of them), got {self.fallback!r}")
        feats = records.windows.dropna(subset=["accuracy"])
        missing = [c for c in LOCATION_REGRESSION_FEATURES if c not in feats.columns or feats[c].isna().all()]
        if missing:
            raise ValueError(f"LocationRegression needs the location features {missing} (records scored with "
                             "suspect_regions); fix: set suspect_regions in the config (from 'relmon audit')")
        fam = feats[shortcut_family(feats["window_id"])].dropna(subset=list(LOCATION_REGRESSION_FEATURES))
        n_short = int((~fam["window_id"].map(shift_type).eq(CLEAN)).sum())
        if n_short < 2 or len(fam) < 3:
            raise ValueError(f"LocationRegression needs at least 2 shortcut-variant calibration windows "
                             f"('shortcut_<variant>/<share>') and 3 with the clean ones, got {n_short} and {len(fam)}; "
                             "fix: set shortcut_variants (with suspect_regions) and re-run 'relmon calibrate'")
        if self.fit_on not in ("family", "local"):
            raise ValueError(f"fit_on must be 'family' or 'local', got {self.fit_on!r}")
        self.method_ = _method_of(records, None, needed=False)
        self.columns_ = list(LOCATION_REGRESSION_FEATURES)
        self.envelope_columns_ = _envelope_columns(fam, self.method_)
        env = fam[self.envelope_columns_].to_numpy(dtype=float)
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", RuntimeWarning)
            self.low_ = np.nan_to_num(np.nanmin(env, axis=0)).tolist()
            self.high_ = np.nan_to_num(np.nanmax(env, axis=0)).tolist()
            se = sampling_se(records.samples[shortcut_family(records.samples["window_id"])], self.envelope_columns_)
        self.pad_ = (float(self.margin) * (np.asarray(self.high_) - np.asarray(self.low_))
                     + ENVELOPE_SE * np.nan_to_num(se)).tolist()
        train = fam
        if self.fit_on == "local":  # also the other calibration windows that lie in the family's envelope
            near = self.in_envelope(feats).to_numpy() & feats[self.columns_].notna().all(axis=1).to_numpy()
            train = feats[near | feats["window_id"].isin(set(fam["window_id"])).to_numpy()]
        x = train[self.columns_].to_numpy(dtype=float)
        pipe = make_pipeline(StandardScaler(), Ridge(alpha=float(self.alpha))).fit(x, train["accuracy"].to_numpy(dtype=float))
        scaler, ridge = pipe[0], pipe[1]
        coef = ridge.coef_ / scaler.scale_
        self.coef_, self.intercept_ = coef.tolist(), float(ridge.intercept_ - coef @ scaler.mean_)
        self.n_windows_ = len(train)
        member = records.point_fit(make_estimator(self.fallback).set_params(conformal=False))
        member.model_ = getattr(self, "model_", "")
        member.model_version_ = getattr(self, "model_version_", "")
        member.n_residuals_, member.tau_, member.q_, member.interval_kind_ = 0, 0.0, _z(member.interval), "sampling"
        self.fallback_ = member

    def in_envelope(self, records) -> pd.Series:
        """Per window (indexed by window_id): True where the family regression applies. ``records``:
        records, their :class:`_Data` or a window-feature frame."""
        if isinstance(records, pd.DataFrame) and "sample_id" not in records.columns:
            feats = records
        else:
            feats = _Data.of(records).windows
        missing = [c for c in self.envelope_columns_ if c not in feats.columns]
        if missing:
            return pd.Series(False, index=feats["window_id"].to_numpy())
        x = feats[self.envelope_columns_].to_numpy(dtype=float)
        lo, hi, pad = np.asarray(self.low_), np.asarray(self.high_), np.asarray(self.pad_)
        inside = (np.isfinite(x) & (x >= lo - pad) & (x <= hi + pad)).all(axis=1)
        return pd.Series(inside, index=feats["window_id"].to_numpy())

    def _point(self, records):
        feats = records.windows
        other = self.fallback_._point(records).reindex(feats["window_id"].to_numpy())
        inside = self.in_envelope(records).to_numpy()
        if not inside.any():
            return other
        x = feats[self.columns_].to_numpy(dtype=float)
        family = self.intercept_ + np.where(np.isfinite(x), x, 0.0) @ np.asarray(self.coef_)
        return pd.Series(np.where(inside, family, other.to_numpy(dtype=float)), index=feats["window_id"].to_numpy())

    def _state(self):
        return {"method": self.method_, "columns": self.columns_, "coef": self.coef_, "intercept": self.intercept_,
                "envelope_columns": self.envelope_columns_, "low": self.low_, "high": self.high_,
                "pad": self.pad_, "n_windows": self.n_windows_, "fallback": self.fallback_.to_dict()}

    def _set_state(self, state):
        self.method_, self.columns_ = state["method"], list(state["columns"])
        self.coef_, self.intercept_ = [float(c) for c in state["coef"]], float(state["intercept"])
        self.envelope_columns_ = list(state["envelope_columns"])
        self.low_, self.high_ = [float(v) for v in state["low"]], [float(v) for v in state["high"]]
        self.pad_, self.n_windows_ = [float(v) for v in state["pad"]], state.get("n_windows")
        if len(self.columns_) != len(self.coef_) or not (
                len(self.envelope_columns_) == len(self.low_) == len(self.high_) == len(self.pad_)):
            raise ValueError("state lengths of columns/coef or envelope_columns/low/high/pad differ")
        self.fallback_ = _from_dict(state["fallback"], "fallback")


def held_out_intervals(est: _WindowEstimator, loso: pd.DataFrame, conditioned: bool | None = None) -> pd.DataFrame:
    """The LOSO windows of ``est`` with the interval each would get from a calibration WITHOUT its own
    shift type: for every held-out type ``g`` the interval (scale and quantile) is calibrated on the
    other types' residuals only. Columns of ``loso`` plus ``lower, upper, width, covered``."""
    level = float(est.interval)
    parts = []
    for g, part in loso.groupby("shift_type"):
        other = est.__class__(**est.get_params())
        other.tau_, other.q_, other.interval_scale_ = 0.0, _z(level), None
        other.set_residuals(loso[loso["shift_type"] != g], conditioned=conditioned)
        e = np.clip(part["estimate"].to_numpy(dtype=float), 0.0, 1.0)
        shift = part["shift_score"].to_numpy(dtype=float) if "shift_score" in part.columns else None
        half = other.half_width(e, part["n"].to_numpy(dtype=float), shift)
        lo, hi = np.clip(e - half, 0, 1), np.clip(e + half, 0, 1)
        y = part["accuracy"].to_numpy(dtype=float)
        parts.append(part.assign(lower=lo, upper=hi, width=hi - lo, covered=(lo <= y) & (y <= hi)))
    return pd.concat(parts, ignore_index=True) if parts else loso.assign(lower=[], upper=[], width=[], covered=[])


def heatmap_methods_from_features(feats: pd.DataFrame) -> list[str]:
    return sorted({c.partition("@")[2] for c in feats.columns if "@" in c} - {"random"})


KINDS: dict[str, type[_WindowEstimator]] = {
    "AverageConfidence": AverageConfidence,
    "ATC": ATC,
    "DoC": DoC,
    "COT": COT,
    "NuclearNorm": NuclearNorm,
    "MaNo": MaNo,
    "CorrectnessEstimator": CorrectnessEstimator,
    "RelevanceEstimator": RelevanceEstimator,
    "MedianOf": MedianOf,
    "LocationRegression": LocationRegression,
}

#: Named estimator configurations (the rows of docs/estimators.md). ``*_source``: the baseline as
#: published, fitted on the clean source windows only; the others use every calibration window.
ESTIMATORS: dict[str, tuple[str, dict[str, Any]]] = {
    "average_confidence": ("AverageConfidence", {"calibrate": False}),
    "cbpe_isotonic": ("AverageConfidence", {"calibrate": True}),
    "cbpe_isotonic_source": ("AverageConfidence", {"calibrate": True, "source": "clean"}),
    "atc": ("ATC", {"signal": "confidence"}),
    "atc_source": ("ATC", {"signal": "confidence", "source": "clean"}),
    "atc_neg_entropy": ("ATC", {"signal": "negative_entropy"}),
    "atc_neg_entropy_source": ("ATC", {"signal": "negative_entropy", "source": "clean"}),
    "doc": ("DoC", {}),
    "doc_source": ("DoC", {"source": "clean"}),
    "cot": ("COT", {}),
    "cot_source": ("COT", {"source": "clean"}),
    "nuclear_norm": ("NuclearNorm", {}),
    "mano": ("MaNo", {}),
    "correctness_confidence": ("CorrectnessEstimator", {"feature_set": "confidence"}),
    "correctness_relevance": ("CorrectnessEstimator", {"feature_set": "confidence+relevance"}),
    "regression_confidence": ("RelevanceEstimator", {"feature_set": "confidence"}),
    "regression_relevance": ("RelevanceEstimator", {"feature_set": "relevance"}),
    "regression_relevance_confidence": ("RelevanceEstimator", {"feature_set": "relevance+confidence"}),
    # issue 19: needs the location columns (suspect_regions) and the shortcut calibration windows
    "location_regression": ("LocationRegression", {}),
    "location_regression_local": ("LocationRegression", {"fit_on": "local"}),
}

#: Used where no calibration chose one (``relmon.analysis.selection.select_estimator`` picks per
#: calibration): among the candidates ``relmon calibrate`` ships (``MonitorConfig.estimators``), the single
#: estimator with the lowest leave-one-shift-type-out MAE on the CALIBRATION windows of both embedded
#: models (validation, never the test windows) in docs/estimators.md — re-measured at the shipped
#: settings (lrp:epsilon_0_01, region 4, L = 8): atc 0.076, then nuclear_norm 0.079.
DEFAULT_ESTIMATOR = "atc"

MEDIAN_PREFIX = "median:"


def make_estimator(name: str = DEFAULT_ESTIMATOR) -> _WindowEstimator:
    """A fresh (unfitted) estimator of the named configuration: a key of :data:`ESTIMATORS` or
    ``median:<name>+<name>+...`` (the median of those configurations, :class:`MedianOf`)."""
    if isinstance(name, str) and name.startswith(MEDIAN_PREFIX):
        members = tuple(name[len(MEDIAN_PREFIX):].split("+"))
        unknown = [m for m in members if m not in ESTIMATORS]
        if unknown or not members:
            raise ValueError(f"unknown member(s) {unknown} in {name!r}; members must be among {list(ESTIMATORS)}")
        return MedianOf(members=list(members))
    if name not in ESTIMATORS:
        raise ValueError(f"unknown estimator {name!r}; choose one of {list(ESTIMATORS)} or 'median:a+b+c'")
    kind, params = ESTIMATORS[name]
    return KINDS[kind](**params)


def _from_dict(data: Any, where: str) -> _WindowEstimator:
    if not isinstance(data, dict) or data.get("format") != FORMAT:
        got = data.get("format") if isinstance(data, dict) else type(data).__name__
        raise ValueError(f"{where} is not a relmon estimator file (format {got!r}, expected {FORMAT!r})")
    version = data.get("format_version")
    if not isinstance(version, int) or version > FORMAT_VERSION or version < 1:
        raise ValueError(f"{where} has format_version {version!r}; this relmon reads versions 1..{FORMAT_VERSION}")
    kind = data.get("kind")
    if kind not in KINDS:
        raise ValueError(f"{where} holds unknown estimator kind {kind!r}; known: {list(KINDS)}")
    required = ["params", "model", "model_version", "feature_set", "features", "state"]
    missing = [k for k in required if k not in data]
    cls = KINDS[kind]
    state = data.get("state")
    if not missing and isinstance(state, dict):
        missing = [f"state.{k}" for k in cls._STATE_KEYS if k not in state]
    elif not missing:
        missing = ["state (a mapping)"]
    if missing:
        raise ValueError(f"{where} lacks {missing}; fix: re-run 'relmon calibrate' to rewrite it")
    _check_finite(data.get("state"), f"{where}: state")
    _check_finite(data.get("interval", {}), f"{where}: interval")
    params = dict(data["params"]) if isinstance(data["params"], dict) else data["params"]
    if version == 1 and isinstance(params, dict):  # format 1: ATC's `score` is now `signal`; no CV params
        if kind == "ATC" and "score" in params:
            params["signal"] = params.pop("score")
        if kind == "RelevanceEstimator":
            params.pop("cv", None)
            params.pop("seed", None)
    try:
        est = cls(**params)
    except TypeError as err:
        raise ValueError(f"{where}: parameters {params} do not fit {kind}: {err}") from err
    est.model_, est.model_version_ = data["model"], data["model_version"]
    est.features_ = list(data["features"])
    interval = data.get("interval") or {}
    est.tau_ = float(interval.get("tau", 0.0))
    q = interval.get("q", _z(float(est.interval)))
    est.q_ = math.inf if q is None else float(q)  # null: too few residuals for the level (unbounded)
    est.n_residuals_ = int(interval.get("n_residuals", 0))
    est.interval_kind_ = str(interval.get("kind", "sampling"))
    scale, reference = interval.get("scale"), interval.get("shift_reference")  # format 3
    est.interval_scale_ = [float(scale[0]), float(scale[1])] if scale is not None and reference is not None else None
    est.shift_reference_ = [float(x) for x in reference] if reference is not None else None
    est.held_out_coverage_ = dict(interval.get("held_out") or {})
    est.uncovered_shift_types_ = [str(g) for g in interval.get("uncovered_shift_types") or []]
    if est.tau_ < 0 or est.q_ <= 0:
        raise ValueError(f"{where}: interval tau {est.tau_} / q {est.q_} out of range (tau >= 0, q > 0)")
    try:
        est._set_state(state)
    except (KeyError, TypeError, ValueError) as err:
        raise ValueError(f"{where}: state does not fit {kind}: {err}") from err
    return est


def load_estimator(path: str | os.PathLike, model: str | None = None,
                   feature_set: str | None = None) -> _WindowEstimator:
    """Load an estimator saved with ``save``.

    ``model`` / ``feature_set``: what the caller is going to use it for; a file made for another model
    (name) or feature set raises :class:`EstimatorMismatchError` naming both. Unknown formats,
    versions or kinds, missing keys and non-finite numbers raise ``ValueError`` naming the file.
    """
    path = Path(path)
    try:
        data = json.loads(path.read_text())
    except json.JSONDecodeError as err:
        raise ValueError(f"{path} is not a relmon estimator file (not JSON: {err})") from err
    if isinstance(data, dict) and data.get("format") == FORMAT:
        if model is not None and data.get("model") != model:
            raise EstimatorMismatchError(
                f"{path} was fitted for model {data.get('model')!r} (version {data.get('model_version')}), "
                f"not for model {model!r}")
        if feature_set is not None and data.get("feature_set") != feature_set:
            raise EstimatorMismatchError(
                f"{path} uses feature set {data.get('feature_set')!r} ({len(data.get('features', []))} features), "
                f"not feature set {feature_set!r}")
    return _from_dict(data, str(path))


__all__ = [
    "ATC",
    "COT",
    "DEFAULT_ESTIMATOR",
    "ESTIMATORS",
    "FORMAT_VERSION",
    "AverageConfidence",
    "CorrectnessEstimator",
    "DoC",
    "EstimatorMismatchError",
    "LocationRegression",
    "MaNo",
    "MedianOf",
    "NuclearNorm",
    "RelevanceEstimator",
    "conformal_quantile",
    "conformal_rank",
    "held_out_intervals",
    "load_estimator",
    "make_estimator",
    "mano_criterion",
    "mano_score",
    "sampling_variance",
    "shift_type",
]
