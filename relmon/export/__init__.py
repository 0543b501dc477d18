"""Prometheus export: metric definitions (:mod:`relmon.export.metrics`) and the three outputs
(:mod:`relmon.export.outputs`: HTTP endpoint, Pushgateway, textfile)."""

from relmon.export.metrics import (
    BASE_LABELS,
    DRIFT_FEATURE_LABELS,
    ESTIMATOR_LABELS,
    INPUT_ERROR_REASONS,
    METHOD_LABELS,
    METRIC_SPECS,
    MetricSpec,
    RelmonMetrics,
)
from relmon.export.outputs import HttpEndpoint, PushError, exposition, push, serve_http, write_textfile

__all__ = [
    "BASE_LABELS",
    "DRIFT_FEATURE_LABELS",
    "ESTIMATOR_LABELS",
    "INPUT_ERROR_REASONS",
    "METHOD_LABELS",
    "METRIC_SPECS",
    "HttpEndpoint",
    "MetricSpec",
    "PushError",
    "RelmonMetrics",
    "exposition",
    "push",
    "serve_http",
    "write_textfile",
]
