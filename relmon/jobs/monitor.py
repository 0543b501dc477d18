"""``relmon monitor``: one window of unlabelled inputs → records (the scoring pass of
:func:`relmon.jobs.common.score_stream`: a Lightning-free loop, or ``pl.Trainer.predict`` with
``runner: lightning``) → window aggregates, drift
against the calibration's reference, accuracy estimates → metrics → textfile / Pushgateway. Returns a
:class:`MonitorSummary`. Without a calibration the estimate is the confidence baseline (mean
max-softmax, ``estimator="average_confidence"``) and there are no drift metrics.
"""

from __future__ import annotations

import logging
import math
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd

from relmon.config import MonitorConfig
from relmon.export.metrics import RelmonMetrics
from relmon.export.outputs import PushError, push, write_textfile
from relmon.export.security import push_security, redact_url
from relmon.jobs.calibration import check_calibration, load_calibration
from relmon.jobs.common import (
    JobError,
    build_stream,
    check_stream_classes,
    latest_window,
    load_job_model,
    score_stream,
)

log = logging.getLogger("relmon.jobs")

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
        for k, v in self.outputs.items():
            lines.append(f"{k}: {v}")
        return "\n".join(lines)

    def to_dict(self) -> dict[str, Any]:
        from dataclasses import asdict

        return asdict(self)


def window_robustness(calibration, estimates, default, records) -> dict[str, Any]:
    """The issue-18 summary fields of a window (:mod:`relmon.analysis.robust`): headline after the
    disagreement check, the disagreement, the default's members, its shift score, the uncovered types."""
    from relmon.analysis.robust import headline

    head = headline(estimates, default)
    validation = (calibration.meta.get("validation") or {}) if calibration is not None else {}
    shift = None
    est = calibration.estimators.get(default) if calibration is not None else None
    if est is not None and records is not None and hasattr(est, "shift_score"):
        one = records.assign(window_id=records["window_id"].iloc[0])
        value = est.shift_score(one)
        shift = float(value.iloc[-1]) if len(value) else None
    return {"headline": head, "estimator_disagreement": head["disagreement"],
            "default_members": list(validation.get("default_members") or ([default] if default else [])),
            "shift_score": shift, "unreliable_under": list(validation.get("unreliable_under") or [])}


def confidence_estimate(confidence: np.ndarray) -> tuple[float, float, float]:
    """The baseline without calibration: mean max-softmax with a 90 % Poisson-binomial interval."""
    c = confidence[np.isfinite(confidence)]
    if c.size == 0:
        return math.nan, math.nan, math.nan
    est = float(c.mean())
    half = _Z90 * math.sqrt(float((c * (1 - c)).sum())) / c.size
    return est, max(0.0, est - half), min(1.0, est + half)


class MonitorJob:
    """A configured job: the model, its metrics (on an explicit registry) and the calibration.

    :meth:`run` scores one window and fills the metrics; run it again (``serve``) and the counters
    accumulate while the gauges hold the latest window.
    """

    def __init__(
        self,
        cfg: MonitorConfig,
        registry=None,
        progress: bool = False,
        *,
        model=None,
        calibration=None,
        stream=None,
    ):
        """``model`` (an ``nn.Module`` with preprocessing), ``calibration`` (a :class:`Calibration` or
        a folder) and ``stream`` (a relmon stream) replace what ``cfg`` names (Python API)."""
        from relmon.jobs.calibration import Calibration
        from relmon.models import model_info

        self.cfg = cfg
        self.progress = progress
        if cfg.runner == "plain":  # an accelerator this machine lacks is a config error, before any work
            from relmon.jobs.runner import resolve_device

            resolve_device(cfg.accelerator)
        self.push_url, self.push_security = push_security(cfg)  # secrets read (and checked) up front
        self.model = load_job_model(cfg) if model is None else model
        self.stream = stream
        info = model_info(self.model)
        self.model_name, self.model_version = str(info.name), str(info.version)
        if calibration is None and cfg.calibration:
            calibration = cfg.calibration
        if calibration is not None and not isinstance(calibration, Calibration):
            calibration = load_calibration(calibration)
        self.calibration = calibration
        self.version_mismatch = (
            check_calibration(self.calibration, self.model_name, self.model_version, cfg)
            if self.calibration
            else False
        )
        self.metrics = RelmonMetrics(self.model_name, self.model_version, cfg.stream, registry=registry)
        if self.calibration is not None:
            self.metrics.set_calibration_timestamp(self.calibration.timestamp)
            clean = (self.calibration.meta.get("window_accuracy") or {}).get("clean")
            if clean is not None:
                self.metrics.set_calibration_accuracy(clean)
        meta = self.calibration.meta if self.calibration is not None else {}
        self.default_estimator = meta.get("default_estimator", BASELINE_ESTIMATOR)
        members = (meta.get("validation") or {}).get("default_members") or []
        self.metrics.set_default_estimator(self.default_estimator, members if len(members) > 1 else ())

    @property
    def registry(self):
        return self.metrics.registry

    def compute(self) -> tuple[MonitorSummary, pd.DataFrame]:
        """Score the window and fill the metrics (no outputs)."""
        from relmon.records import RANDOM_METHOD

        cfg = self.cfg
        t0 = time.perf_counter()
        listing = getattr(self, "input_listing", None)  # serve's listing of this iteration (listed once)
        stream = self.stream if self.stream is not None else build_stream(cfg, self.model, listing=listing)
        stream = self._prepare_stream(stream)  # only-new scoring: the new or changed files only
        self._check_fraction_steps(stream)
        if cfg.classes is not None and not getattr(self, "_classes_checked", False):
            check_stream_classes(self.model, cfg.classes, stream)  # once per job: a forward on one input
            self._classes_checked = True
        records, summary, _ = score_stream(
            cfg, self.model, stream, progress=self.progress, window_id=latest_window(stream)
        )
        inputs = summary.pop("_inputs")
        errors = dict(getattr(stream, "errors", {}) or {})
        if sum(errors.values()) < inputs["bad"]:  # bad items seen by the batches but not by this process
            errors["read_error"] = errors.get("read_error", 0) + inputs["bad"] - sum(errors.values())
        samples = records.drop_duplicates(["window_id", "sample_id"]) if len(records) else records
        conf = samples["confidence"].to_numpy(dtype=float) if len(samples) else np.array([])
        labelled = samples["correct"].dropna() if "correct" in samples else pd.Series(dtype=float)
        accuracy = float(labelled.astype(float).mean()) if len(labelled) else None

        estimates: dict[str, tuple[float, float, float]] = {}
        estimate_errors: dict[str, str] = {}
        drift_p, alarm = None, None
        if len(records) and self.calibration is not None:
            from relmon.analysis import ks_drift

            one = records.assign(window_id=records["window_id"].iloc[0])  # the job's window is one window
            for name, est in self.calibration.estimators.items():
                try:
                    row = est.predict(one).iloc[-1]
                except ValueError as err:  # e.g. a class this window predicts that calibration never saw
                    estimate_errors[name] = str(err)
                    log.warning("estimator %s cannot score this window, so it publishes no estimate this run "
                                "(the records and the other estimators are kept): %s", name, err)
                    continue
                estimates[name] = (float(row["estimate"]), float(row["lower"]), float(row["upper"]))
            from relmon.explain import canonical_method

            res = ks_drift(
                self.calibration.reference,
                records,
                method=canonical_method(cfg.methods[0]),
                alpha=cfg.drift_alpha,
            )
            drift_p, alarm = dict(res.p_values), bool(res.alarm)
        if BASELINE_ESTIMATOR not in estimates:
            estimates[BASELINE_ESTIMATOR] = confidence_estimate(conf)
        robust = window_robustness(self.calibration, estimates, self.default_estimator,
                                   records if len(records) else None)

        m = self.metrics
        for name, (est, lo, hi) in estimates.items():
            m.set_estimate(name, est, lo, hi)
        for name in estimate_errors:  # no stale value from an earlier run of a long-lived registry (serve)
            m.clear_estimate(name)
        png = records.groupby("method")["png_bytes"].mean() if len(records) else pd.Series(dtype=float)
        for method, s in summary.items():
            if method == RANDOM_METHOD:
                m.set_method(method, aopc=s["aopc"], aopc_relative=s["aopc_rel"])
            else:
                m.set_method(
                    method,
                    aopc=s["aopc"],
                    aopc_minus_random=s["aopc_minus_random"],
                    aopc_relative=s["aopc_rel"],
                    entropy_bits=s["entropy_bits"],
                    png_bytes=png.get(method, math.nan),
                )
            values = records.loc[records["method"] == method, "aopc_rel"] if len(records) else []
            m.observe_aopc_relative(method, values)
        m.set_confidence(float(conf.mean()) if conf.size else math.nan)
        if drift_p is not None:
            m.set_drift(drift_p, alarm)
        m.set_disagreement(robust["estimator_disagreement"])
        m.add_samples(len(samples))
        m.add_input_errors(errors)
        m.set_run_inputs(len(samples), errors)
        duration = time.perf_counter() - t0
        finished = time.time()
        m.set_run(duration, finished if len(samples) else None)  # an empty window is no success
        result = MonitorSummary(
            model=self.model_name,
            model_version=self.model_version,
            stream=cfg.stream,
            window_ids=sorted(records["window_id"].unique().tolist()) if len(records) else [],
            seen=int(inputs["seen"]),
            scored=len(samples),
            input_errors=errors,
            methods=summary,
            confidence=float(conf.mean()) if conf.size else math.nan,
            estimates=estimates,
            drift_p_values=drift_p,
            drift_alarm=alarm,
            duration_seconds=duration,
            finished_at=finished,
            accuracy=accuracy,
            calibration=(str(self.calibration.path or "<in memory>")) if self.calibration else None,
            calibration_timestamp=self.calibration.timestamp if self.calibration else None,
            calibration_version_mismatch=self.version_mismatch,
            default_estimator=self.default_estimator,
            estimate_errors=estimate_errors,
            **robust,
        )
        return result, records

    def _check_fraction_steps(self, stream) -> None:
        """With ``fraction``, the L resolved on the stream's images must be the calibration's L."""
        from relmon.jobs.common import CalibrationMismatchError, input_size, job_steps

        # steps given as a count needs no image size; else L comes from fraction (or the default
        # fraction when neither is set, 'steps: null')
        if (self.cfg.fraction is None and self.cfg.steps is not None) or self.calibration is None \
                or input_size(stream) is None:
            return
        steps, made = job_steps(self.cfg, stream), self.calibration.meta["steps"]
        if steps != made:
            from relmon.perturbation import DEFAULT_FRACTION

            h, w = input_size(stream)
            fraction = self.cfg.fraction if self.cfg.fraction is not None else DEFAULT_FRACTION
            raise CalibrationMismatchError(
                f"fraction={fraction:g} gives L = {steps} steps on the input's {h}x{w} images, but "
                f"calibration {str(self.calibration.path)!r} was made with L = {made}: AOPC is not comparable; "
                f"fix: set image_size to the calibration's size {self.calibration.meta.get('input_size')}, "
                f"or steps: {made} (and fraction: null), or re-run 'relmon calibrate'"
            )

    # -- outputs (reliability) ---------------------------------------------------------------------

    def _prepare_stream(self, stream):
        """The stream to score: with only-new scoring, its new or changed files only."""
        seen = getattr(self, "_seen", None)
        return stream if seen is None else seen.select(stream)

    def _seen_files(self):
        """The only-new state of this job (None without only-new scoring)."""
        from relmon.jobs.state import STATE_FILE, SeenFiles, stream_folder

        if not (self.cfg.only_new or getattr(self, "serve_only_new", False)):
            return None
        if getattr(self, "_seen", None) is None:
            path = stream_folder(self.cfg.records, self.cfg.stream) / STATE_FILE if self.cfg.records else None
            self._seen = SeenFiles(path)
        elif self._seen.path is not None:
            self._seen.reload()  # another process may have advanced it
        return self._seen

    def _write_run_records(self, records: pd.DataFrame, run_id: str, run_time: float) -> str | None:
        from relmon.jobs.state import stream_folder
        from relmon.records import remove_stale_temporaries, run_file_name, write_records

        if not self.cfg.records or not len(records):
            return None
        folder = stream_folder(self.cfg.records, self.cfg.stream)
        path = write_records(
            records.assign(run_id=run_id, run_time=run_time), folder / run_file_name(run_id, run_time)
        )
        remove_stale_temporaries(folder)
        return str(path)

    def run(self, outputs: bool = True) -> MonitorSummary:
        """:meth:`compute`, then write the records and textfile and push; every output is tried even
        when another fails.

        - Records go to ``<records>/<stream>/<UTC time>_<run id>.parquet`` (one file per run, never
          overwritten; columns ``run_id`` and ``run_time``), written atomically.
        - A failed output (unwritable records folder or textfile, failed push) raises :class:`JobError`
          after the others were done; its ``summary`` holds the results and ``outputs`` says what failed.
        - An empty window (nothing scored) raises :class:`EmptyWindowError` after the outputs (the
          last-success timestamp is not advanced).
        - A SIGTERM/SIGINT (under :func:`relmon.jobs.signals.stop_on_signals`) or ``run_timeout_seconds``
          raises :class:`~relmon.jobs.signals.RunInterrupted` after writing the finished batches'
          records; nothing is pushed.
        - With ``only_new`` the run scores only new or changed files, holds the records folder's lock,
          and saves the state only after every output succeeded.

        The push uses ``pushadd_to_gateway`` with job ``cfg.job`` and grouping key ``{model, stream}``,
        bounded by a deadline of ``(push_retries + 1) * push_timeout`` plus the backoffs. A scheduled job
        is a fresh process each time, so its pushed counters hold that run's counts; Prometheus'
        ``increase``/``rate`` treat the drop between runs as a counter reset.
        """
        from contextlib import nullcontext

        from relmon.jobs.signals import RunInterrupted, run_deadline
        from relmon.jobs.state import folder_lock, stream_folder
        from relmon.records import new_run_id

        cfg = self.cfg
        run_id, run_time = new_run_id()
        lock = (
            # a listing serve made before another run held the lock may be stale: list again inside it
            folder_lock(stream_folder(cfg.records, cfg.stream), on_wait=lambda: setattr(self, "input_listing", None))
            if cfg.records and (cfg.only_new or getattr(self, "serve_only_new", False))
            else nullcontext()
        )
        with run_deadline(cfg.run_timeout_seconds), lock:  # the deadline also bounds the wait for the lock
            seen = self._seen_files()
            log.info("run %s: scoring %s (stream %s)", run_id, cfg.input, cfg.stream)
            try:
                summary, records = self.compute()
            except RunInterrupted as err:
                if seen is not None:
                    seen.discard()
                if err.records is not None and len(err.records):
                    try:
                        err.written = self._write_run_records(err.records, run_id, run_time)
                    except OSError as werr:
                        log.error("could not write the finished batches' records: %s", werr)
                raise
            except BaseException:
                if seen is not None:
                    seen.discard()
                raise
            summary.outputs["run_id"] = run_id
            failures: list[str] = []
            try:
                written = self._write_run_records(records, run_id, run_time)
                if written:
                    summary.outputs["records"] = written
            except OSError as err:
                failures.append(_output_error("records", cfg.records, err, "records: FOLDER"))
                summary.outputs["records"] = f"FAILED: {err}"
            if outputs:
                if cfg.textfile:
                    try:
                        _remove_stale_textfile_temporaries(cfg.textfile)
                        summary.outputs["textfile"] = str(write_textfile(self.registry, cfg.textfile))
                    except OSError as err:
                        failures.append(_output_error("textfile", cfg.textfile, err, "textfile: PATH"))
                        summary.outputs["textfile"] = f"FAILED: {err}"
                if cfg.pushgateway:
                    try:
                        attempts = self._push()
                        summary.outputs["push"] = f"{redact_url(cfg.pushgateway)} (job {cfg.job}, {attempts} attempt(s))"
                    except PushError as err:
                        failures.append(str(err))
                        summary.outputs["push"] = f"FAILED: {err}"
            if failures:
                if seen is not None:
                    seen.discard()
                raise JobError("; ".join(failures), summary)
            if seen is not None:
                seen.commit()
            if summary.scored == 0:
                why = (
                    "no new or changed input since the last successful run (only_new)"
                    if seen is not None and summary.seen == 0 and not summary.input_errors
                    else f"{summary.seen} input(s) read, {sum(summary.input_errors.values())} bad, none "
                    "selected for scoring (sample_rate / max_samples) or readable"
                )
                summary.outputs["status"] = f"empty window: {why}"
                raise EmptyWindowError(
                    f"empty window, nothing scored: {why}; the last-success time was not advanced; "
                    "fix: check input, sample_rate and max_samples",
                    summary,
                )
        return summary

    def _push(self) -> int:
        """:func:`push` with an overall deadline (a gateway that trickles bytes cannot hold the run)."""
        import threading

        cfg = self.cfg
        key = {"model": self.model_name, "stream": cfg.stream}
        url, security = self.push_url, self.push_security  # resolved (and checked) in __init__
        deadline = (cfg.push_retries + 1) * cfg.push_timeout + cfg.push_backoff * (2**cfg.push_retries - 1)
        box: dict[str, Any] = {}

        def target() -> None:
            try:
                box["attempts"] = push(
                    self.registry,
                    url,
                    job=cfg.job,
                    grouping_key=key,
                    timeout=cfg.push_timeout,
                    retries=cfg.push_retries,
                    backoff=cfg.push_backoff,
                    security=security,
                )
            except BaseException as err:  # handed to the caller's thread
                box["error"] = err

        thread = threading.Thread(target=target, name="relmon-push", daemon=True)
        thread.start()
        thread.join(deadline)
        if thread.is_alive():
            raise PushError(
                f"could not push to the Pushgateway at {redact_url(cfg.pushgateway)!r} (job={cfg.job!r}): no answer "
                f"within the push deadline of {deadline:g} s ((push_retries + 1) x push_timeout + backoffs); "
                "check that the gateway is up and answers"
            )
        if "error" in box:
            raise box["error"]
        return int(box["attempts"])


class EmptyWindowError(JobError):
    """The window held nothing to score; ``summary`` holds the (empty) results. CLI exit code 6."""


def _remove_stale_textfile_temporaries(textfile: str, older_than: float = 3600.0) -> list[str]:
    """Delete ``<textfile>.<pid>.<thread>`` files (prometheus-client's temporary name) of writes killed
    more than ``older_than`` seconds ago."""
    import re

    path = Path(textfile)
    removed: list[str] = []
    if not path.parent.is_dir():
        return removed
    pattern = re.compile(re.escape(path.name) + r"\.\d+\.\d+$")
    now = time.time()
    for p in path.parent.iterdir():
        try:
            if pattern.match(p.name) and p.is_file() and now - p.stat().st_mtime > older_than:
                p.unlink()
                removed.append(str(p))
        except OSError:
            continue
    return removed


def _output_error(what: str, path: str | None, err: OSError, field_hint: str) -> str:
    return (
        f"could not write the {what} to {str(path)!r}: {type(err).__name__}: {err}; fix: make the "
        f"location writable and with free space, or set {field_hint} elsewhere (the other outputs were "
        "still written)"
    )


def run_monitor(cfg: MonitorConfig, registry=None, progress: bool = False) -> MonitorSummary:
    """One run of the scheduled job (``relmon monitor``)."""
    return MonitorJob(cfg, registry=registry, progress=progress).run()
