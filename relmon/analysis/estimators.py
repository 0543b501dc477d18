"""Label-free accuracy estimators with the scikit-learn interface.

Every estimator is fitted on **labelled** per-sample records (:mod:`relmon.records`) grouped by
``window_id`` and predicts the accuracy of windows of **unlabelled** records:

- ``fit(records)`` → self;
- ``predict(records)`` → DataFrame ``[window_id, estimate, lower, upper]`` (accuracy in ``[0, 1]``,
  ``lower``/``upper`` a two-sided interval at level ``interval``, 90 % by default);
- ``score(records)`` → minus the mean absolute error against the windows' true accuracy.

Baselines (label-free accuracy estimators from the literature):

- :class:`AverageConfidence` — mean max-softmax confidence; with ``calibrate=True`` after isotonic
  calibration of the confidence on the reference data (what NannyML's CBPE reduces to for multiclass
  accuracy; one calibration map for the max-softmax, not one per class).
- :class:`ATC` — average thresholded confidence (Garg et al. 2022).
- :class:`DoC` — difference of confidences (Guillory et al. 2021).

relmon's :class:`RelevanceEstimator` regresses window accuracy on window features
(:func:`relmon.analysis.features.window_features`): feature sets ``relevance`` (AOPC / heatmap
complexity only), ``confidence`` (confidence only, the like-for-like control) and
``relevance+confidence``. Its interval comes from cross-validated residual quantiles on the
calibration windows; the baselines' from the binomial (Poisson-binomial) variance of a window's
accuracy given the estimate.

Estimators are saved as versioned JSON (:meth:`save` / :func:`load_estimator`), never pickle: the
file names the estimator kind, its parameters, the model (name and version) it was fitted for and
its feature list; loading it for another model, kind or feature set raises
:class:`EstimatorMismatchError` naming both.
"""

from __future__ import annotations

import json
import os
import warnings
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
from scipy.stats import norm
from sklearn.base import BaseEstimator
from sklearn.isotonic import IsotonicRegression

from relmon.analysis.features import feature_columns, heatmap_methods, sample_features, window_features

FORMAT = "relmon-estimator"
FORMAT_VERSION = 1


class EstimatorMismatchError(ValueError):
    """An estimator (or its file) is used for another model, kind or feature set than it was made for."""


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


def _pbinom_halfwidth(p: np.ndarray, n: np.ndarray, level: float, var: np.ndarray | None = None) -> np.ndarray:
    """Normal half-width of a window accuracy with per-window ``var`` (default ``p (1 - p) / n``)."""
    z = float(norm.ppf(0.5 + level / 2.0))
    v = p * (1.0 - p) / np.maximum(n, 1) if var is None else var
    return z * np.sqrt(np.maximum(v, 0.0))


def _result(window_id, estimate, lower, upper) -> pd.DataFrame:
    est = np.clip(np.asarray(estimate, dtype=float), 0.0, 1.0)
    return pd.DataFrame({
        "window_id": np.asarray(window_id).astype(str),
        "estimate": est,
        "lower": np.clip(np.minimum(np.asarray(lower, dtype=float), est), 0.0, 1.0),
        "upper": np.clip(np.maximum(np.asarray(upper, dtype=float), est), 0.0, 1.0),
    })


class _WindowEstimator(BaseEstimator):
    """Shared plumbing: model checks, score, JSON (de)serialisation."""

    feature_set: str = "confidence"

    # -- subclasses ---------------------------------------------------------------------------------

    def _fit(self, records: pd.DataFrame) -> None:  # pragma: no cover - abstract
        raise NotImplementedError

    def _predict(self, records: pd.DataFrame) -> pd.DataFrame:  # pragma: no cover - abstract
        raise NotImplementedError

    def _features(self) -> list[str]:
        return ["confidence"]

    def _state(self) -> dict[str, Any]:  # pragma: no cover - abstract
        raise NotImplementedError

    def _set_state(self, state: dict[str, Any]) -> None:  # pragma: no cover - abstract
        raise NotImplementedError

    # -- public API ---------------------------------------------------------------------------------

    def fit(self, records: pd.DataFrame, y=None):
        """Fit on labelled records (``correct`` not null) of one model; ``y`` is ignored (sklearn API)."""
        self.model_, self.model_version_ = _model_of(records)
        if "correct" not in records.columns or records["correct"].isna().all():
            raise ValueError("fit needs labelled records: the 'correct' column is all null")
        if not (0.0 < float(self.interval) < 1.0):
            raise ValueError(f"interval must be in (0, 1), got {self.interval!r}")
        self._fit(records)
        self.features_ = self._features()
        return self

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
        return self._predict(records).sort_values("window_id", ignore_index=True)

    def score(self, records: pd.DataFrame, y=None) -> float:
        """Minus the mean absolute error of the estimates against the windows' true accuracy."""
        pred = self.predict(records).set_index("window_id")
        truth = window_features(records).set_index("window_id")["accuracy"].reindex(pred.index)
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
            "state": self._state(),
        }

    def save(self, path: str | os.PathLike) -> Path:
        """Write the fitted estimator to ``path`` as JSON (parent folders created)."""
        path = Path(path)
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(json.dumps(self.to_dict(), indent=2))
        return path

    @classmethod
    def load(cls, path: str | os.PathLike, model: str | None = None, feature_set: str | None = None):
        """Load a file written by :meth:`save`; see :func:`load_estimator` for ``model``/``feature_set``."""
        est = load_estimator(path, model=model, feature_set=feature_set)
        if cls is not _WindowEstimator and not isinstance(est, cls):
            raise EstimatorMismatchError(f"{path} holds a {type(est).__name__}, not a {cls.__name__}")
        return est


def _samples(records: pd.DataFrame) -> pd.DataFrame:
    return sample_features(records)[["window_id", "sample_id", "confidence", "softmax_entropy", "margin",
                                     "correct"]]


class AverageConfidence(_WindowEstimator):
    """Window accuracy ≈ mean max-softmax confidence (optionally isotonic-calibrated on reference data).

    Parameters
    ----------
    calibrate:
        Fit an isotonic map confidence → P(correct) on the labelled reference records (CBPE-like).
    interval:
        Level of the two-sided interval (Poisson-binomial variance ``Σ c_i (1 - c_i) / n²``).
    """

    def __init__(self, calibrate: bool = False, interval: float = 0.9):
        self.calibrate = calibrate
        self.interval = interval

    def _fit(self, records):
        s = _samples(records).dropna(subset=["correct"])
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

    def _predict(self, records):
        s = _samples(records)
        s = s.assign(p=self._calibrated(s["confidence"].to_numpy()))
        s["v"] = s["p"] * (1.0 - s["p"])
        g = s.groupby("window_id")
        est, n = g["p"].mean(), g.size()
        half = _pbinom_halfwidth(est.to_numpy(), n.to_numpy(), self.interval, g["v"].sum().to_numpy() / n ** 2)
        return _result(est.index, est, est - half, est + half)

    def _state(self):
        return {"x_thresholds": self.x_thresholds_, "y_thresholds": self.y_thresholds_}

    def _set_state(self, state):
        self.x_thresholds_, self.y_thresholds_ = state["x_thresholds"], state["y_thresholds"]


class ATC(_WindowEstimator):
    """Average thresholded confidence (Garg et al., ICLR 2022).

    On the labelled source records pick ``t`` so that the share of per-sample scores above ``t`` equals
    the source accuracy; a window's estimate is its share of scores above ``t``.

    Parameters
    ----------
    score:
        ``"confidence"`` (max softmax) or ``"negative_entropy"`` (minus the softmax entropy; Garg et al.'s
        better-performing variant).
    interval:
        Level of the binomial interval around the estimate.
    """

    def __init__(self, score: str = "confidence", interval: float = 0.9):
        self.score = score
        self.interval = interval

    def _scores(self, s: pd.DataFrame) -> np.ndarray:
        if self.score == "confidence":
            return s["confidence"].to_numpy(dtype=float)
        if self.score == "negative_entropy":
            return -s["softmax_entropy"].to_numpy(dtype=float)
        raise ValueError(f"score must be 'confidence' or 'negative_entropy', got {self.score!r}")

    def _features(self):
        return ["confidence"] if self.score == "confidence" else ["softmax_entropy"]

    def _fit(self, records):
        s = _samples(records).dropna(subset=["correct"])
        scores = np.sort(self._scores(s))
        acc = float(s["correct"].mean())
        k = round((1.0 - acc) * len(scores))  # samples at or below t
        self.source_accuracy_ = acc
        # With k == 0 every score must lie above t.
        self.threshold_ = float(scores[k - 1]) if k > 0 else float(scores[0] - 1.0)

    def _predict(self, records):
        s = _samples(records)
        s = s.assign(above=(self._scores(s) > self.threshold_).astype(float))
        g = s.groupby("window_id")
        est, n = g["above"].mean(), g.size()
        half = _pbinom_halfwidth(est.to_numpy(), n.to_numpy(), self.interval)
        return _result(est.index, est, est - half, est + half)

    def _state(self):
        return {"threshold": self.threshold_, "source_accuracy": self.source_accuracy_}

    def _set_state(self, state):
        self.threshold_, self.source_accuracy_ = state["threshold"], state["source_accuracy"]


class DoC(_WindowEstimator):
    """Difference of confidences (Guillory et al. 2021): ``acc_source + (mean conf_target − mean conf_source)``."""

    def __init__(self, interval: float = 0.9):
        self.interval = interval

    def _fit(self, records):
        s = _samples(records).dropna(subset=["correct"])
        self.source_accuracy_ = float(s["correct"].mean())
        self.source_confidence_ = float(s["confidence"].mean())

    def _predict(self, records):
        g = _samples(records).groupby("window_id")
        est = (self.source_accuracy_ + g["confidence"].mean() - self.source_confidence_).clip(0.0, 1.0)
        half = _pbinom_halfwidth(est.to_numpy(), g.size().to_numpy(), self.interval)
        return _result(est.index, est, est - half, est + half)

    def _state(self):
        return {"source_accuracy": self.source_accuracy_, "source_confidence": self.source_confidence_}

    def _set_state(self, state):
        self.source_accuracy_, self.source_confidence_ = state["source_accuracy"], state["source_confidence"]


class RelevanceEstimator(_WindowEstimator):
    """Ridge regression of window accuracy on window features (standardised), with residual intervals.

    Parameters
    ----------
    feature_set:
        ``"relevance"`` (AOPC, AOPC relative, AOPC − random, heatmap entropy and PNG size: mean and
        10/50/90 % quantiles), ``"confidence"`` (max-softmax, softmax entropy, margin statistics) or
        ``"relevance+confidence"``. See :func:`relmon.analysis.features.feature_columns`.
    method:
        Heatmap method whose features are used; ``None`` = the only (first, sorted) heatmap method of
        the training records.
    alpha:
        Ridge penalty on the standardised features.
    interval:
        Level of the interval: estimate + the ``(1 ± interval) / 2`` quantiles of ``cv``-fold
        cross-validated residuals on the calibration windows.
    cv, seed:
        Folds and seed of the residual cross-validation (windows shuffled).
    """

    def __init__(self, feature_set: str = "relevance+confidence", method: str | None = None, alpha: float = 1.0,
                 interval: float = 0.9, cv: int = 5, seed: int = 0):
        self.feature_set = feature_set
        self.method = method
        self.alpha = alpha
        self.interval = interval
        self.cv = cv
        self.seed = seed

    def _columns(self, records: pd.DataFrame) -> list[str]:
        method = self.method
        if method is None:
            methods = heatmap_methods(records)
            if not methods and self.feature_set != "confidence":
                raise ValueError("records hold no heatmap method rows; relevance features need e.g. 'lrp' rows")
            method = methods[0] if methods else "none"
        self.method_ = method
        return feature_columns(self.feature_set, method)

    def _features(self):
        return list(self.columns_)

    @staticmethod
    def _ridge(x: np.ndarray, y: np.ndarray, alpha: float) -> tuple[np.ndarray, float, np.ndarray, np.ndarray]:
        mu = x.mean(axis=0)
        sd = x.std(axis=0)
        sd = np.where(sd > 1e-12, sd, 1.0)
        z = (x - mu) / sd
        y0 = y.mean()
        coef = np.linalg.solve(z.T @ z + alpha * np.eye(z.shape[1]), z.T @ (y - y0))
        return coef, float(y0), mu, sd

    def _matrix(self, feats: pd.DataFrame) -> np.ndarray:
        missing = [c for c in self.columns_ if c not in feats.columns]
        if missing:
            raise EstimatorMismatchError(
                f"feature set {self.feature_set!r} (method {self.method_!r}) needs window features "
                f"{missing[:4]}{'...' if len(missing) > 4 else ''}, absent from these records "
                f"(their heatmap methods: {heatmap_methods_from_features(feats)})")
        x = feats[self.columns_].to_numpy(dtype=float)
        # A window where a feature is undefined everywhere (e.g. aopc_rel NaN) falls back to the mean.
        bad = ~np.isfinite(x)
        if bad.any():
            x = np.where(bad, np.asarray(self.mean_)[None, :], x)
        return x

    def _fit(self, records):
        self.columns_ = self._columns(records)
        feats = window_features(records).dropna(subset=["accuracy"])
        if len(feats) < 3:
            raise ValueError(f"RelevanceEstimator needs at least 3 labelled windows, got {len(feats)}")
        missing = [c for c in self.columns_ if c not in feats.columns]
        if missing:
            raise ValueError(f"training records lack window features {missing[:4]} of feature set "
                             f"{self.feature_set!r}")
        x = feats[self.columns_].to_numpy(dtype=float)
        col_mean = np.nanmean(np.where(np.isfinite(x), x, np.nan), axis=0)
        self.mean_ = np.nan_to_num(col_mean).tolist()
        x = self._matrix(feats)
        y = feats["accuracy"].to_numpy(dtype=float)
        coef, y0, mu, sd = self._ridge(x, y, float(self.alpha))
        self.coef_, self.intercept_ = (coef / sd).tolist(), float(y0 - (coef / sd) @ mu)
        # Cross-validated residuals for the interval (in-sample when there are too few windows).
        resid = y - self._linear(x)
        folds = int(self.cv)
        if folds >= 2 and len(y) >= 2 * folds:
            order = np.random.default_rng(self.seed).permutation(len(y))
            resid = np.empty(len(y))
            for f in range(folds):
                test = order[f::folds]
                train = np.setdiff1d(order, test)
                c, b0, m, s = self._ridge(x[train], y[train], float(self.alpha))
                resid[test] = y[test] - (b0 + ((x[test] - m) / s) @ c)
        lo, hi = (1.0 - float(self.interval)) / 2.0, (1.0 + float(self.interval)) / 2.0
        self.residual_quantiles_ = [float(np.quantile(resid, lo)), float(np.quantile(resid, hi))]
        self.n_windows_ = len(y)

    def _linear(self, x: np.ndarray) -> np.ndarray:
        return self.intercept_ + x @ np.asarray(self.coef_)

    def _predict(self, records):
        feats = window_features(records)
        est = np.clip(self._linear(self._matrix(feats)), 0.0, 1.0)
        lo, hi = self.residual_quantiles_
        return _result(feats["window_id"], est, est + lo, est + hi)

    def _state(self):
        return {"method": self.method_, "columns": self.columns_, "coef": self.coef_,
                "intercept": self.intercept_, "mean": self.mean_,
                "residual_quantiles": self.residual_quantiles_, "n_windows": self.n_windows_}

    def _set_state(self, state):
        self.method_, self.columns_ = state["method"], list(state["columns"])
        self.coef_, self.intercept_, self.mean_ = state["coef"], state["intercept"], state["mean"]
        self.residual_quantiles_, self.n_windows_ = state["residual_quantiles"], state["n_windows"]


def heatmap_methods_from_features(feats: pd.DataFrame) -> list[str]:
    return sorted({c.partition("@")[2] for c in feats.columns if "@" in c} - {"random"})


KINDS: dict[str, type[_WindowEstimator]] = {
    "AverageConfidence": AverageConfidence,
    "ATC": ATC,
    "DoC": DoC,
    "RelevanceEstimator": RelevanceEstimator,
}

#: Named estimator configurations (the rows of docs/estimators.md).
ESTIMATORS: dict[str, tuple[str, dict[str, Any]]] = {
    "average_confidence": ("AverageConfidence", {"calibrate": False}),
    "cbpe_isotonic": ("AverageConfidence", {"calibrate": True}),
    "atc": ("ATC", {"score": "confidence"}),
    "atc_neg_entropy": ("ATC", {"score": "negative_entropy"}),
    "doc": ("DoC", {}),
    "regression_confidence": ("RelevanceEstimator", {"feature_set": "confidence"}),
    "regression_relevance": ("RelevanceEstimator", {"feature_set": "relevance"}),
    "regression_relevance_confidence": ("RelevanceEstimator", {"feature_set": "relevance+confidence"}),
}

#: The estimator with the lowest mean leave-one-shift-type-out MAE in docs/estimators.md
#: (scripts/evaluate_estimators.py, default settings).
DEFAULT_ESTIMATOR = "regression_relevance"


def make_estimator(name: str = DEFAULT_ESTIMATOR) -> _WindowEstimator:
    """A fresh (unfitted) estimator of the named configuration (keys of :data:`ESTIMATORS`)."""
    if name not in ESTIMATORS:
        raise ValueError(f"unknown estimator {name!r}; choose one of {list(ESTIMATORS)}")
    kind, params = ESTIMATORS[name]
    return KINDS[kind](**params)


def load_estimator(path: str | os.PathLike, model: str | None = None,
                   feature_set: str | None = None) -> _WindowEstimator:
    """Load an estimator saved with ``save``.

    ``model`` / ``feature_set``: what the caller is going to use it for; a file made for another model
    (name) or feature set raises :class:`EstimatorMismatchError` naming both. Unknown formats,
    versions or kinds raise ``ValueError``.
    """
    path = Path(path)
    try:
        data = json.loads(path.read_text())
    except json.JSONDecodeError as err:
        raise ValueError(f"{path} is not a relmon estimator file (not JSON: {err})") from err
    if not isinstance(data, dict) or data.get("format") != FORMAT:
        raise ValueError(f"{path} is not a relmon estimator file (format {data.get('format')!r} "
                         f"if a dict, expected {FORMAT!r})" if isinstance(data, dict) else
                         f"{path} is not a relmon estimator file")
    version = data.get("format_version")
    if not isinstance(version, int) or version > FORMAT_VERSION or version < 1:
        raise ValueError(f"{path} has format_version {version!r}; this relmon reads versions 1..{FORMAT_VERSION}")
    kind = data.get("kind")
    if kind not in KINDS:
        raise ValueError(f"{path} holds unknown estimator kind {kind!r}; known: {list(KINDS)}")
    if model is not None and data["model"] != model:
        raise EstimatorMismatchError(
            f"{path} was fitted for model {data['model']!r} (version {data['model_version']}), "
            f"not for model {model!r}")
    if feature_set is not None and data["feature_set"] != feature_set:
        raise EstimatorMismatchError(
            f"{path} uses feature set {data['feature_set']!r} ({len(data['features'])} features), "
            f"not feature set {feature_set!r}")
    est = KINDS[kind](**data["params"])
    est.model_, est.model_version_ = data["model"], data["model_version"]
    est.features_ = list(data["features"])
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        est._set_state(data["state"])
    return est


__all__ = [
    "ATC",
    "DEFAULT_ESTIMATOR",
    "ESTIMATORS",
    "FORMAT_VERSION",
    "AverageConfidence",
    "DoC",
    "EstimatorMismatchError",
    "RelevanceEstimator",
    "load_estimator",
    "make_estimator",
]
