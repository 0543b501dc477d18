"""Every Prometheus metric relmon exports, declared once (the README's "Metrics" list is this registry).

Conventions: one ``relmon_`` prefix, base units (seconds, bytes, bits), ratios in ``[0, 1]`` named
``_ratio``, counters ``_total``. Every series carries ``model``, ``model_version`` and ``stream``; the
only other labels are ``estimator``, ``method``, ``feature`` and ``reason``, each from a closed set
declared here (a value outside it raises ``ValueError``, so label cardinality cannot grow by accident).

:class:`RelmonMetrics` creates the metrics on an explicit
:class:`~prometheus_client.CollectorRegistry` (a fresh one by default, never the global registry) for
one ``(model, model_version, stream)`` and offers one setter per group of metrics.
"""

from __future__ import annotations

import math
from collections.abc import Iterable, Mapping
from dataclasses import dataclass

from relmon.constants import AOPC_RELATIVE_BUCKETS
from relmon.extras import optional_imports

with optional_imports("relmon's Prometheus metrics (relmon calibrate | monitor | serve)"):
    from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram

BASE_LABELS: tuple[str, ...] = ("model", "model_version", "stream")

#: ``method`` label values: canonical heatmap method ids (relmon.explain) plus ``random`` (the random
#: region order). ``lrp`` is an alias of ``lrp:epsilon_plus_flat`` and never appears as a label.
METHOD_LABELS: tuple[str, ...] = (
    "lrp:epsilon_plus_flat",
    "lrp:epsilon_gamma_box",
    "lrp:epsilon_alpha2_beta1",
    "lrp:epsilon_alpha2_beta1_flat",
    "lrp:epsilon_0_01",
    "lrp:epsilon_100",
    "lrp:alpha2_beta1",
    "sensitivity",
    "deconvnet",
    "gradient_x_input",
    "random",
)
#: ``estimator`` label values: the named configurations of relmon.analysis.estimators.ESTIMATORS.
#: ``average_confidence`` is also what the job reports without a calibration (mean max-softmax).
ESTIMATOR_LABELS: tuple[str, ...] = (
    "average_confidence",
    "cbpe_isotonic",
    "atc",
    "atc_neg_entropy",
    "doc",
    "regression_confidence",
    "regression_relevance",
    "regression_relevance_confidence",
    # per-sample correctness models, COT, nuclear norm, baselines fitted on clean windows only
    "cbpe_isotonic_source",
    "atc_source",
    "atc_neg_entropy_source",
    "doc_source",
    "cot",
    "cot_source",
    "nuclear_norm",
    "correctness_confidence",
    "correctness_relevance",
    "median_of_best3",
    "mano",  # issue 18
    "location_regression",  # issue 19
    "location_regression_local",
)
#: ``feature`` label values: relmon.analysis.drift.DRIFT_FEATURES, then its LOCATION_DRIFT_FEATURES
#: (tested when suspect_regions is set).
DRIFT_FEATURE_LABELS: tuple[str, ...] = (
    "aopc",
    "aopc_rel",
    "aopc_minus_random",
    "entropy_bits",
    "confidence",
    "softmax_entropy",
    "margin",
    "suspect_share",
    "rest_relevance",
    "occlusion_flip",
    "occlusion_drop",
)
#: ``reason`` label values of relmon_input_errors_total (relmon.data.streams INPUT_ERROR_REASONS: READ_ERROR,
#: DECODE_ERROR, TOO_LARGE, SIZE_MISMATCH, NON_FINITE).
INPUT_ERROR_REASONS: tuple[str, ...] = ("read_error", "decode_error", "too_large", "size_mismatch", "non_finite")

_CLOSED = {
    "method": METHOD_LABELS,
    "estimator": ESTIMATOR_LABELS,
    "feature": DRIFT_FEATURE_LABELS,
    "reason": INPUT_ERROR_REASONS,
}


@dataclass(frozen=True)
class MetricSpec:
    """One exposed metric (a row of :data:`METRIC_SPECS`): name, type, extra label (or None) and help text."""

    name: str
    type: str  # gauge | counter | histogram
    label: str | tuple[str, ...] | None
    help: str

    @property
    def labels(self) -> tuple[str, ...]:
        """The extra labels (beside model, model_version, stream)."""
        return () if self.label is None else (self.label,) if isinstance(self.label, str) else tuple(self.label)


METRIC_SPECS: tuple[MetricSpec, ...] = (
    MetricSpec(
        "relmon_estimated_accuracy_ratio",
        "gauge",
        "estimator",
        "Label-free estimate of the window's accuracy (0-1).",
    ),
    MetricSpec(
        "relmon_estimated_accuracy_lower_ratio",
        "gauge",
        "estimator",
        "Lower bound of the accuracy estimate's interval (0-1).",
    ),
    MetricSpec(
        "relmon_estimated_accuracy_upper_ratio",
        "gauge",
        "estimator",
        "Upper bound of the accuracy estimate's interval (0-1).",
    ),
    MetricSpec(
        "relmon_aopc",
        "gauge",
        "method",
        "Mean AOPC (most relevant first) of the window, in score units (logits by default).",
    ),
    MetricSpec(
        "relmon_aopc_minus_random",
        "gauge",
        "method",
        "Mean AOPC minus the random region order's AOPC on the same samples, in score units.",
    ),
    MetricSpec(
        "relmon_aopc_relative",
        "gauge",
        "method",
        "Mean AOPC relative to the unperturbed score f(x0) (unitless).",
    ),
    MetricSpec(
        "relmon_heatmap_entropy", "gauge", "method", "Mean Shannon entropy of the normalised absolute heatmaps, in bits (unit kept out of the name: promtool reserves _bits-like suffixes for bytes)."
    ),
    MetricSpec(
        "relmon_heatmap_png_bytes", "gauge", "method", "Mean PNG-compressed size of the heatmaps in bytes."
    ),
    MetricSpec("relmon_confidence_ratio", "gauge", None, "Mean max-softmax confidence of the window (0-1)."),
    MetricSpec(
        "relmon_drift_p_value",
        "gauge",
        "feature",
        "KS two-sample p-value of a per-sample feature, window vs the calibration reference.",
    ),
    MetricSpec(
        "relmon_drift_alarm",
        "gauge",
        None,
        "1 when the multiple-testing corrected drift test rejects at alpha, else 0.",
    ),
    MetricSpec(
        "relmon_sample_aopc_relative",
        "histogram",
        "method",
        "Per-sample relative AOPC (buckets shared with relmon.constants.AOPC_RELATIVE_BUCKETS).",
    ),
    MetricSpec("relmon_samples_processed_total", "counter", None, "Samples whose explanations were scored."),
    MetricSpec("relmon_input_errors_total", "counter", "reason", "Inputs that could not be read or decoded."),
    MetricSpec(
        "relmon_run_duration_seconds", "gauge", None, "Wall-clock duration of the last monitoring run."
    ),
    MetricSpec(
        "relmon_last_success_timestamp_seconds",
        "gauge",
        None,
        "Unix time of the last monitoring run that completed.",
    ),
    MetricSpec(
        "relmon_calibration_timestamp_seconds",
        "gauge",
        None,
        "Unix time at which the calibration in use was made (absent without calibration).",
    ),
    MetricSpec(
        "relmon_calibration_accuracy_ratio",
        "gauge",
        None,
        "Accuracy of the model on the calibration's clean (labelled) window (0-1); absent without "
        "calibration. The accuracy alert's threshold is derived from it (relmon_accuracy_alert_threshold_ratio).",
    ),
    MetricSpec(
        "relmon_accuracy_alert_threshold_ratio",
        "gauge",
        None,
        "Accuracy threshold of the accuracy alert (0-1): the one-sided 95 % lower bound of the calibration's "
        "clean accuracy minus the alert margin (relmon.analysis.alerts); absent without calibration.",
    ),
    MetricSpec(
        "relmon_default_estimator_info",
        "gauge",
        ("estimator", "members"),
        "1 for the estimator the calibration chose as default (average_confidence without calibration); "
        "alerts use only this estimator's series. members: a median's estimators joined by '+' (else empty).",
    ),
    MetricSpec(
        "relmon_estimator_disagreement_ratio",
        "gauge",
        None,
        "|default estimate - median of all the window's estimates| (0-1): the estimators disagree when large.",
    ),
    # issue 19: where the model looks (only with suspect_regions; relmon.analysis.location)
    MetricSpec(
        "relmon_suspect_relevance_share_ratio",
        "gauge",
        "method",
        "Mean share of the positive relevance inside the configured suspect regions (0-1), from the heatmaps "
        "of method.",
    ),
    MetricSpec(
        "relmon_occlusion_flip_ratio",
        "gauge",
        None,
        "Share of the window's samples whose prediction changes when the suspect regions are blanked (0-1).",
    ),
    MetricSpec(
        "relmon_occlusion_confidence_drop_ratio",
        "gauge",
        None,
        "Mean drop of the predicted class's softmax probability when the suspect regions are blanked "
        "(-1 to 1; positive: the regions carried the prediction).",
    ),
    MetricSpec(
        "relmon_unexplained_shift",
        "gauge",
        None,
        "1 when the window's location features (or confidence) lie outside the calibration windows' range "
        "(relmon.analysis.unexplained; the headline then falls back to the default calibrated without the shortcut estimators), else 0; "
        "absent without suspect regions.",
    ),
    MetricSpec(
        "relmon_run_samples",
        "gauge",
        None,
        "Samples scored by the last run (a per-run count: right in both scrape and Pushgateway mode).",
    ),
    MetricSpec(
        "relmon_run_input_errors",
        "gauge",
        "reason",
        "Inputs of the last run that could not be read or decoded (a per-run count, by reason).",
    ),
)


def check_label(label: str, value: str) -> str:
    """``value`` if it belongs to the closed set of ``label``; else ``ValueError`` naming the set."""
    allowed = _CLOSED[label]
    if value not in allowed:
        raise ValueError(f"{label} label {value!r} is not one of the closed set {list(allowed)}")
    return value


def _finite(value) -> bool:
    try:
        return math.isfinite(float(value))
    except (TypeError, ValueError):
        return False


class RelmonMetrics:
    """The relmon metrics of one ``(model, model_version, stream)`` on ``registry``.

    Attributes are named after the metrics without the ``relmon_`` prefix (and without ``_total`` for
    counters), e.g. ``self.aopc``, ``self.samples_processed``. Non-finite values are not set (a NaN
    gauge would hide the previous value and break alert arithmetic); they are skipped.
    """

    def __init__(
        self, model: str, model_version: str, stream: str, registry: CollectorRegistry | None = None
    ):
        for name, value in (("model", model), ("model_version", model_version), ("stream", stream)):
            if not isinstance(value, str) or not value:
                raise ValueError(f"{name} must be a non-empty string, got {value!r}")
        self.registry = registry if registry is not None else CollectorRegistry(auto_describe=True)
        self.base = {"model": model, "model_version": model_version, "stream": stream}
        self._metrics: dict[str, Gauge | Counter | Histogram] = {}
        for spec in METRIC_SPECS:
            labels = [*BASE_LABELS, *spec.labels]
            if spec.type == "gauge":
                metric = Gauge(spec.name, spec.help, labels, registry=self.registry)
            elif spec.type == "counter":
                metric = Counter(spec.name.removesuffix("_total"), spec.help, labels, registry=self.registry)
            else:
                metric = Histogram(
                    spec.name, spec.help, labels, buckets=AOPC_RELATIVE_BUCKETS, registry=self.registry
                )
            self._metrics[spec.name] = metric
            setattr(self, spec.name.removeprefix("relmon_").removesuffix("_total"), metric)

    def metric(self, name: str):
        """The client object of the exposed metric ``name`` (e.g. ``relmon_aopc``)."""
        return self._metrics[name]

    def _child(self, name: str, **extra):
        for label, value in extra.items():
            check_label(label, value)
        return self._metrics[name].labels(**self.base, **extra)

    def _set(self, name: str, value, **extra) -> None:
        if _finite(value):
            self._child(name, **extra).set(float(value))
        else:
            for label, v in extra.items():
                check_label(label, v)

    # -- setters -------------------------------------------------------------------------------------

    def set_estimate(self, estimator: str, estimate: float, lower: float, upper: float) -> None:
        """Estimated accuracy of ``estimator`` with its interval (ratios in [0, 1]). A non-finite value
        removes the estimator's gauges (:meth:`clear_estimate`): no earlier run's estimate stays exposed."""
        if not all(_finite(v) for v in (estimate, lower, upper)):
            self.clear_estimate(estimator)
            return
        self._set("relmon_estimated_accuracy_ratio", estimate, estimator=estimator)
        self._set("relmon_estimated_accuracy_lower_ratio", lower, estimator=estimator)
        self._set("relmon_estimated_accuracy_upper_ratio", upper, estimator=estimator)

    def clear_estimate(self, estimator: str) -> None:
        """Remove ``estimator``'s estimate and interval (it could not score this window): no stale value
        stays exposed by a long-lived registry."""
        check_label("estimator", estimator)
        for name in ("relmon_estimated_accuracy_ratio", "relmon_estimated_accuracy_lower_ratio",
                     "relmon_estimated_accuracy_upper_ratio"):
            try:
                self._metrics[name].remove(*self.base.values(), estimator)
            except KeyError:
                pass

    def set_method(
        self,
        method: str,
        *,
        aopc=None,
        aopc_minus_random=None,
        aopc_relative=None,
        entropy_bits=None,
        png_bytes=None,
    ) -> None:
        """Window means of one heatmap method (``random``: only ``aopc`` and ``aopc_relative``)."""
        check_label("method", method)
        for name, value in (
            ("relmon_aopc", aopc),
            ("relmon_aopc_minus_random", aopc_minus_random),
            ("relmon_aopc_relative", aopc_relative),
            ("relmon_heatmap_entropy", entropy_bits),
            ("relmon_heatmap_png_bytes", png_bytes),
        ):
            if value is not None:
                self._set(name, value, method=method)

    def observe_aopc_relative(self, method: str, values: Iterable[float]) -> int:
        """Add per-sample relative AOPC values to the histogram; returns how many were finite."""
        child = self._child("relmon_sample_aopc_relative", method=method)
        n = 0
        for v in values:
            if _finite(v):
                child.observe(float(v))
                n += 1
        return n

    def set_confidence(self, value: float) -> None:
        self._set("relmon_confidence_ratio", value)

    def set_drift(self, p_values: Mapping[str, float], alarm: bool) -> None:
        """KS p-value per feature and the corrected alarm (0/1)."""
        for feature, p in p_values.items():
            self._set("relmon_drift_p_value", p, feature=feature)
        self._child("relmon_drift_alarm").set(1.0 if alarm else 0.0)

    def set_location(self, location: Mapping[str, float]) -> None:
        """Window means of the location features (:func:`relmon.analysis.location.location_summary`):
        suspect-region relevance share (labelled with its heatmap ``method``), flip rate, confidence drop."""
        self._set("relmon_suspect_relevance_share_ratio", location.get("suspect_share"),
                  method=location["method"])
        self._set("relmon_occlusion_flip_ratio", location.get("occlusion_flip"))
        self._set("relmon_occlusion_confidence_drop_ratio", location.get("occlusion_drop"))

    def add_samples(self, n: int) -> None:
        if n < 0:
            raise ValueError(f"samples processed must be >= 0, got {n}")
        self._child("relmon_samples_processed_total").inc(n)

    def add_input_errors(self, counts: Mapping[str, int]) -> None:
        """Count bad inputs per reason; every reason's series exists (at 0) once this is called."""
        for reason in INPUT_ERROR_REASONS:
            self._child("relmon_input_errors_total", reason=reason).inc(0)
        for reason, n in counts.items():
            if n < 0:
                raise ValueError(f"input errors must be >= 0, got {reason}={n}")
            self._child("relmon_input_errors_total", reason=reason).inc(n)

    def set_run(self, duration_seconds: float, success_timestamp: float | None) -> None:
        """Duration of the last run; ``success_timestamp`` (Unix seconds) only when it succeeded."""
        self._set("relmon_run_duration_seconds", duration_seconds)
        if success_timestamp is not None:
            self._set("relmon_last_success_timestamp_seconds", success_timestamp)

    def set_calibration_timestamp(self, timestamp: float) -> None:
        self._set("relmon_calibration_timestamp_seconds", timestamp)

    def set_calibration_accuracy(self, accuracy: float) -> None:
        """The calibration's clean-window accuracy, a ratio in [0, 1] (``ValueError`` outside)."""
        if _finite(accuracy) and not 0.0 <= float(accuracy) <= 1.0:
            raise ValueError(f"calibration accuracy must be a ratio in [0, 1], got {accuracy!r}")
        self._set("relmon_calibration_accuracy_ratio", accuracy)

    def set_alert_threshold(self, threshold: float | None) -> None:
        """The accuracy alert's threshold, a ratio in [0, 1] (``ValueError`` outside); ``None``: none."""
        if threshold is None:
            return
        if _finite(threshold) and not 0.0 <= float(threshold) <= 1.0:
            raise ValueError(f"alert threshold must be a ratio in [0, 1], got {threshold!r}")
        self._set("relmon_accuracy_alert_threshold_ratio", threshold)

    def set_default_estimator(self, estimator: str, members: Iterable[str] = ()) -> None:
        """Mark ``estimator`` as the default (value 1); any previously marked one is removed. ``members``:
        the estimators of a median default (each from the closed ``estimator`` set), joined by ``+``."""
        check_label("estimator", estimator)
        members = [check_label("estimator", m) for m in members]
        self._metrics["relmon_default_estimator_info"].clear()
        self._metrics["relmon_default_estimator_info"].labels(
            **self.base, estimator=estimator, members="+".join(members)).set(1.0)

    def set_disagreement(self, value: float | None) -> None:
        """``|default − median of all estimates|`` of the window (not set when undefined)."""
        if value is not None and _finite(value):
            self._metrics["relmon_estimator_disagreement_ratio"].labels(**self.base).set(float(value))

    def set_unexplained_shift(self, fired: bool) -> None:
        """1 when the window lies outside what the calibration covered (issue 19), else 0."""
        self._metrics["relmon_unexplained_shift"].labels(**self.base).set(1.0 if fired else 0.0)

    def set_run_inputs(self, samples: int, errors: Mapping[str, int]) -> None:
        """Per-run counts (gauges): samples scored and bad inputs by reason (every reason, 0 if none).

        Unlike the ``_total`` counters, these hold the last run's counts, so an alert on them works
        the same whether Prometheus scrapes ``relmon serve`` or a Pushgateway that each scheduled run
        pushes its own counts to.
        """
        if samples < 0 or any(n < 0 for n in errors.values()):
            raise ValueError(f"run counts must be >= 0, got samples={samples}, errors={dict(errors)}")
        for reason in errors:
            check_label("reason", reason)
        self._child("relmon_run_samples").set(float(samples))
        for reason in INPUT_ERROR_REASONS:
            self._child("relmon_run_input_errors", reason=reason).set(float(errors.get(reason, 0)))


__all__ = [
    "BASE_LABELS",
    "DRIFT_FEATURE_LABELS",
    "ESTIMATOR_LABELS",
    "INPUT_ERROR_REASONS",
    "METHOD_LABELS",
    "METRIC_SPECS",
    "MetricSpec",
    "RelmonMetrics",
    "check_label",
]
