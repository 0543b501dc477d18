"""Prometheus export: metric definitions (:mod:`relmon.export.metrics`) and the three outputs
(:mod:`relmon.export.outputs`: HTTP endpoint, Pushgateway, textfile) and their transport security
(:mod:`relmon.export.security`: TLS, mutual TLS and basic auth, secrets that are never printed)."""

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
from relmon.export.security import EndpointSecurity, PushSecurity, Secret, redact_url

__all__ = [
    "BASE_LABELS",
    "DRIFT_FEATURE_LABELS",
    "ESTIMATOR_LABELS",
    "INPUT_ERROR_REASONS",
    "METHOD_LABELS",
    "METRIC_SPECS",
    "EndpointSecurity",
    "HttpEndpoint",
    "MetricSpec",
    "PushError",
    "PushSecurity",
    "RelmonMetrics",
    "Secret",
    "exposition",
    "push",
    "redact_url",
    "serve_http",
    "write_textfile",
]
