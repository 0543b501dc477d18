"""Analysis: window features, correlation reports, label-free accuracy estimators, drift tests."""

from relmon.analysis.correlation import correlation_table, grouped_bootstrap_correlation, plot_correlation
from relmon.analysis.drift import DRIFT_FEATURES, DriftResult, adjust_p_values, false_alarm_rate, ks_drift
from relmon.analysis.estimators import (
    ATC,
    COT,
    DEFAULT_ESTIMATOR,
    ESTIMATORS,
    AverageConfidence,
    CorrectnessEstimator,
    DoC,
    EstimatorMismatchError,
    MaNo,
    MedianOf,
    NuclearNorm,
    RelevanceEstimator,
    load_estimator,
    make_estimator,
    shift_type,
)
from relmon.analysis.features import feature_columns, sample_features, window_features
from relmon.analysis.selection import SelectionResult, select_estimator

__all__ = [
    "ATC",
    "COT",
    "CorrectnessEstimator",
    "MaNo",
    "MedianOf",
    "NuclearNorm",
    "SelectionResult",
    "select_estimator",
    "shift_type",
    "DEFAULT_ESTIMATOR",
    "DRIFT_FEATURES",
    "ESTIMATORS",
    "AverageConfidence",
    "DoC",
    "DriftResult",
    "EstimatorMismatchError",
    "RelevanceEstimator",
    "adjust_p_values",
    "correlation_table",
    "false_alarm_rate",
    "feature_columns",
    "grouped_bootstrap_correlation",
    "ks_drift",
    "load_estimator",
    "make_estimator",
    "plot_correlation",
    "sample_features",
    "window_features",
]
