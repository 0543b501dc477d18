"""``relmon monitor``: one window of unlabelled inputs → records (the scoring pass of
:func:`relmon.jobs.scoring.score_stream`: a Lightning-free loop, or ``pl.Trainer.predict`` with
``runner: lightning``) → window aggregates, drift
against the calibration's reference, accuracy estimates → metrics → textfile / Pushgateway. Returns a
:class:`MonitorSummary`. Without a calibration the estimate is the confidence baseline (mean
max-softmax, ``estimator="average_confidence"``) and there are no drift metrics.
"""

from __future__ import annotations

import logging
import math
import re
import threading
import time
from contextlib import nullcontext
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd

from relmon.config import MonitorConfig
from relmon.distributed import broadcast, env_rank, gather
from relmon.explain import canonical_method
from relmon.export.metrics import RelmonMetrics
from relmon.export.outputs import PushError, push, write_textfile
from relmon.export.security import push_security, redact_url
from relmon.identity import model_info
from relmon.jobs.calibration import Calibration, check_calibration, load_calibration
from relmon.jobs.errors import CalibrationMismatchError, EmptyWindowError, JobError, RunInterrupted
from relmon.jobs.inputs import build_stream, input_size, latest_window
from relmon.jobs.method_auto import is_auto, resolve_auto
from relmon.jobs.model import check_stream_classes, load_job_model
from relmon.jobs.only_new import STATE_FILE, SeenFiles, folder_lock, stream_folder
from relmon.jobs.runner import resolve_device
from relmon.jobs.scaleout import plan_window, scoring_settings, write_part_file
from relmon.jobs.scoring import _example, job_steps, score_stream
from relmon.jobs.signals import run_deadline, run_time_left
from relmon.jobs.summary import BASELINE_ESTIMATOR, MonitorSummary, confidence_estimate
from relmon.jobs.window_ids import input_root, name_run_windows, relative_sample_ids
from relmon.perturbation import DEFAULT_FRACTION
from relmon.records import (
    RANDOM_METHOD,
    new_run_id,
    remove_stale_temporaries,
    run_file_name,
    write_records,
)
from relmon.runs import SUMMARY_FILE, part_manifest, window_summary_document, write_window_summary

log = logging.getLogger("relmon.jobs")


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
        only_new: bool | None = None,
        identity: tuple[str, str] | None = None,
    ):
        """``model`` (an ``nn.Module`` with preprocessing), ``calibration`` (a :class:`Calibration` or
        a folder) and ``stream`` (a relmon stream) replace what ``cfg`` names (Python API).
        ``only_new`` (default ``cfg.only_new``): score only the new or changed files of a folder input
        (``serve`` turns it on for every folder input). ``identity`` (``(model name, version)``) makes a
        job that loads no model and scores nothing: it finishes a window scored elsewhere (``relmon
        merge``, :meth:`finish`)."""
        self.cfg = cfg
        self.progress = progress
        self.only_new = cfg.only_new if only_new is None else bool(only_new)
        self._seen: SeenFiles | None = None  # the only-new state, made on the first run
        self._classes_checked = False  # the class names are checked once per job (a forward on one input)
        if cfg.runner == "plain":  # an accelerator this machine lacks is a config error, before any work
            resolve_device(cfg.accelerator)
        self.push_url, self.push_security = push_security(cfg)  # secrets read (and checked) up front
        self.stream = stream
        self._dist: dict | None = None  # under DDP: this rank, the world size, its own records (see compute)
        self._steps: int | None = None  # the L of the last scored window
        self._window: str | None = None  # the id of the last scored mtime window (None: one window)
        self._input = None  # the last scored stream before only-new selection (its root: input_root)
        if identity is not None:
            self.model = None
            self.model_name, self.model_version = str(identity[0]), str(identity[1])
        else:
            self.model = load_job_model(cfg) if model is None else model
            info = model_info(self.model)
            self.model_name, self.model_version = str(info.name), str(info.version)
        if calibration is None and cfg.calibration:
            calibration = cfg.calibration
        if calibration is not None and not isinstance(calibration, Calibration):
            calibration = load_calibration(calibration)
        self.calibration = calibration
        if calibration is not None:  # methods: auto → the calibration's choice (issue 21 item 6)
            self.cfg = cfg = resolve_auto(cfg, self.model, calibration)
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
            from relmon.analysis.alerts import accuracy_threshold

            self.reference = clean, self.calibration.meta.get("n_per_window")  # the alert's clean reference
            self.metrics.set_alert_threshold(accuracy_threshold(*self.reference) if clean is not None else None)
        meta = self.calibration.meta if self.calibration is not None else {}
        self.default_estimator = meta.get("default_estimator", BASELINE_ESTIMATOR)
        self.gate = None  # issue 19: the "unexplained shift" gate of a calibration with location features
        if meta.get("unexplained_shift_gate"):
            from relmon.analysis.unexplained import UnexplainedShiftGate

            self.gate = UnexplainedShiftGate.from_dict(meta["unexplained_shift_gate"])
        members = (meta.get("validation") or {}).get("default_members") or []
        self.metrics.set_default_estimator(self.default_estimator, members if len(members) > 1 else ())

    @property
    def registry(self):
        return self.metrics.registry

    def compute(self, listing: dict | None = None) -> tuple[MonitorSummary, pd.DataFrame]:
        """Score the window and fill the metrics (no outputs). ``listing``: the caller's fsspec listing
        of the input folder (``serve`` lists it once per iteration), else the stream lists it."""
        cfg = self.cfg
        t0 = time.perf_counter()
        stream = self.stream if self.stream is not None else build_stream(
            cfg, self.model, listing=listing, calibration=self.calibration)
        self._input = stream  # the folder stream: the root the records' sample ids are relative to
        if is_auto(cfg.methods):  # no calibration: the fallback method (checked on the input's size)
            self.cfg = cfg = resolve_auto(cfg, self.model, None, _example(stream, cfg.channels))
        stream = self._prepare_stream(stream)  # only-new scoring: the new or changed files only
        self._check_fraction_steps(stream)
        self._steps = job_steps(cfg, stream)
        if cfg.classes is not None and not self._classes_checked:
            check_stream_classes(self.model, cfg.classes, stream)  # once per job: a forward on one input
            self._classes_checked = True
        # the window's items, sampled before decoding, of this shard (shard: I/N); the same on every rank
        self._window = latest_window(stream)  # None: the stream is one window (the same on every shard)
        planned, not_selected = plan_window(cfg, stream, self._window)
        records, summary, _ = score_stream(cfg, self.model, planned, progress=self.progress)
        self._dist = summary.pop("_dist", None)
        inputs = summary.pop("_inputs")
        inputs["seen"] += not_selected  # listed, left out by the sampling: seen, never read
        errors = dict(self._dist["errors"]) if self._dist else dict(getattr(stream, "errors", {}) or {})
        return self.finish(records, summary, inputs, errors, t0)

    def finish(self, records: pd.DataFrame, summary: dict, inputs: dict, errors: dict,
               t0: float) -> tuple[MonitorSummary, pd.DataFrame]:
        """The window's estimates, drift and metrics from its records and summary (after scoring, or from
        the parts of a sharded run: ``relmon merge``); ``t0`` (``time.perf_counter()``) starts the run's
        duration."""
        cfg = self.cfg
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
            res = ks_drift(
                self.calibration.reference,
                records,
                method=canonical_method(cfg.methods[0]),
                alpha=cfg.drift_alpha,
            )
            drift_p, alarm = dict(res.p_values), bool(res.alarm)
        if BASELINE_ESTIMATOR not in estimates:
            estimates[BASELINE_ESTIMATOR] = confidence_estimate(conf)
        from relmon.analysis.robust import window_robustness

        robust = window_robustness(self.calibration, estimates, self.default_estimator,
                                   records if len(records) else None)  # issue 18: headline, disagreement
        unexplained = None
        if self.gate is not None:  # issue 19: outside what the calibration covered -> the fallback default
            from relmon.analysis.unexplained import gated_headline

            unexplained = self.gate.check(records if len(records) else None)
            robust["headline"] = gated_headline(robust["headline"], estimates, unexplained)

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
        from relmon.analysis.location import location_summary

        location = location_summary(records)  # None without suspect_regions
        if location is not None:
            m.set_location(location)
        if drift_p is not None:
            m.set_drift(drift_p, alarm)
        m.set_disagreement(robust["estimator_disagreement"])
        if unexplained is not None and unexplained["checked"]:
            m.set_unexplained_shift(unexplained["fired"])
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
            location=location,
            unexplained_shift=unexplained,
            **robust,
        )
        if self.calibration is not None and self.reference[0] is not None:
            from relmon.analysis.alerts import accuracy_alerts, accuracy_threshold

            result.calibration_accuracy, result.calibration_n = self.reference
            result.alert_threshold = accuracy_threshold(*self.reference)
            result.alerts = accuracy_alerts(result)
        return result, records

    def _check_fraction_steps(self, stream) -> None:
        """With ``fraction``, the L resolved on the stream's images must be the calibration's L."""
        # steps given as a count needs no image size; else L comes from fraction (or the default
        # fraction when neither is set, 'steps: null')
        if (self.cfg.fraction is None and self.cfg.steps is not None) or self.calibration is None \
                or input_size(stream) is None:
            return
        steps, made = job_steps(self.cfg, stream), self.calibration.meta["steps"]
        if steps != made:
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
        return stream if self._seen is None else self._seen.select(stream)

    def _seen_files(self):
        """The only-new state of this job (None without only-new scoring)."""
        if not self.only_new:
            return None
        if self._seen is None:
            path = stream_folder(self.cfg.records, self.cfg.stream) / STATE_FILE if self.cfg.records else None
            self._seen = SeenFiles(path)
        elif self._seen.path is not None:
            self._seen.reload()  # another process may have advanced it
        return self._seen

    def _output_ids(self, records: pd.DataFrame, run_time: float) -> pd.DataFrame:
        """The ids the records are written with: windows named by this run (one window or count windows),
        sample ids relative to the input root (:mod:`relmon.jobs.window_ids`)."""
        if self._window is None and len(records):
            records = name_run_windows(records, self.cfg.stream, run_time, self.cfg.run_id if self.cfg.shard else None)
        return relative_sample_ids(records, self._input)

    def _write_run_records(self, records: pd.DataFrame, run_id: str, run_time: float) -> str | None:
        if not self.cfg.records or not len(records):
            return None
        folder = stream_folder(self.cfg.records, self.cfg.stream)
        path = write_records(
            records.assign(run_id=run_id, run_time=run_time), folder / run_file_name(run_id, run_time)
        )
        remove_stale_temporaries(folder)
        return str(path)

    # -- split runs (DDP ranks, shards) and the per-window summary file ------------------------------

    def run_folder(self, run_id: str, run_time: float) -> Path:
        """``<records>/<stream>/<run>``: the folder of a split run (a shard run's is named by ``run_id``)."""
        name = self.cfg.run_id if self.cfg.shard else run_file_name(run_id, run_time, suffix="")
        return stream_folder(self.cfg.records, self.cfg.stream) / name

    def settings(self) -> dict[str, Any]:
        """The scoring settings of this job's records (in the parts' manifests and the window summary)."""
        return scoring_settings(self.cfg, self._steps if self._steps is not None else -1,
                                [canonical_method(m) for m in self.cfg.methods])

    def _write_part(self, records: pd.DataFrame, summary: MonitorSummary, run_id: str, run_time: float):
        """Write this DDP rank's or this shard's part of the window. Returns None on DDP rank 0 (which then
        writes the window's outputs), else ``summary`` (the run ends here)."""
        cfg, dist = self.cfg, self._dist
        if dist is not None:
            part, parts, kind, local = dist["rank"], dist["world"], "ddp", dist["local"]
            inputs, errors = None, {}  # a rank's counts are synced: rank 0 holds the window's
        else:
            part, parts = (int(v) for v in cfg.shard.split("/"))
            kind, local = "shard", records
            inputs = {"seen": summary.seen, "bad": sum(summary.input_errors.values()), "padding_skipped": 0}
            errors = summary.input_errors
        try:
            if cfg.records:
                manifest = part_manifest(
                    run_id=cfg.run_id if kind == "shard" else run_id, run_time=run_time, part=part, parts=parts,
                    kind=kind, model=self.model_name, model_version=self.model_version, stream=cfg.stream,
                    settings=self.settings(), inputs=inputs, errors=errors,
                    window_id=self._window, calibration=summary.calibration)
                summary.outputs["records"] = str(write_part_file(local, self.run_folder(run_id, run_time), manifest))
        finally:
            if dist is not None:
                gather(None)  # a barrier: rank 0 writes the window's summary once every part is there
        return None if dist is not None and dist["rank"] == 0 else summary

    def _write_summary(self, summary: MonitorSummary, run_id: str, run_time: float) -> Path:
        """The per-window summary file: ``summary.json`` in a split run's folder, else
        ``<UTC time>_<run id>.summary.json`` beside the run's records."""
        if self._dist is not None:
            path = self.run_folder(run_id, run_time) / SUMMARY_FILE
            run = {"run_id": run_id, "run_time": run_time, "parts": self._dist["world"], "kind": "ddp",
                   "input_root": summary.input_root}
        else:
            path = stream_folder(self.cfg.records, self.cfg.stream) / run_file_name(run_id, run_time, ".summary.json")
            run = {"run_id": run_id, "run_time": run_time, "parts": 1, "kind": "single", "input_root": summary.input_root}
        doc = window_summary_document(summary.to_dict(), settings=self.settings(), run=run)
        return write_window_summary(path, doc)

    def run(self, outputs: bool = True, listing: dict | None = None) -> MonitorSummary:
        """:meth:`compute` (on ``listing``, the caller's listing of the input folder, if given), then
        write the records and textfile and push; every output is tried even when another fails.

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
        cfg = self.cfg
        run_id, run_time = new_run_id()
        given = {"listing": listing}

        def stale() -> None:  # a listing made before another run held the lock may be stale: list again
            given["listing"] = None

        lock = (
            folder_lock(stream_folder(cfg.records, cfg.stream), on_wait=stale)
            if cfg.records and self.only_new and env_rank() == 0
            else nullcontext()  # DDP: rank 0 holds the lock for the ranks it launches
        )
        if cfg.records:  # temporaries of killed writes, whatever this run's outcome (also exit 6)
            remove_stale_temporaries(stream_folder(cfg.records, cfg.stream))
        with run_deadline(cfg.run_timeout_seconds), lock:  # the deadline also bounds the wait for the lock
            seen = self._seen_files()
            log.info("run %s: scoring %s (stream %s)", run_id, cfg.input, cfg.stream)
            try:
                summary, records = self.compute(listing=given["listing"])
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
            if self._dist is not None:  # DDP: every rank names the run as rank 0 does
                run_id, run_time = broadcast((run_id, run_time))
            records = self._output_ids(records, run_time)
            if self._dist is not None:  # a DDP rank writes its own records as its part
                self._dist["local"] = self._output_ids(self._dist["local"], run_time)
            if len(records):
                summary.window_ids = sorted(records["window_id"].unique().tolist())
            summary.input_root = input_root(self._input)  # the root of the sample ids, once per run
            summary.outputs["run_id"] = run_id
            failures: list[str] = []
            if self._dist is not None or cfg.shard:
                try:
                    done = self._write_part(records, summary, run_id, run_time)
                except OSError as err:
                    done = summary
                    failures.append(_output_error("records part", cfg.records, err, "records: FOLDER"))
                    summary.outputs["records"] = f"FAILED: {err}"
                if done is not None:  # another rank's part, or one shard's: the window is made elsewhere
                    if seen is not None:
                        seen.discard()
                    if failures:
                        raise JobError("; ".join(failures), summary)
                    return summary
            else:
                try:
                    written = self._write_run_records(records, run_id, run_time)
                    if written:
                        summary.outputs["records"] = written
                except OSError as err:
                    failures.append(_output_error("records", cfg.records, err, "records: FOLDER"))
                    summary.outputs["records"] = f"FAILED: {err}"
            if cfg.records and not failures:
                try:
                    summary.outputs["summary"] = str(self._write_summary(summary, run_id, run_time))
                except OSError as err:
                    failures.append(_output_error("window summary", cfg.records, err, "records: FOLDER"))
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
        cfg = self.cfg
        key = {"model": self.model_name, "stream": cfg.stream}
        url, security = self.push_url, self.push_security  # resolved (and checked) in __init__
        deadline = (cfg.push_retries + 1) * cfg.push_timeout + cfg.push_backoff * (2**cfg.push_retries - 1)
        why = "the push deadline of {:g} s ((push_retries + 1) x push_timeout + backoffs)"
        timeout = cfg.push_timeout
        left = run_time_left()
        if left is not None and left < deadline:  # run_timeout_seconds bounds the push too
            deadline = timeout = max(left, 0.1)
            why = "the {:g} s left of run_timeout_seconds"
        box: dict[str, Any] = {}

        def target() -> None:
            try:
                box["attempts"] = push(
                    self.registry,
                    url,
                    job=cfg.job,
                    grouping_key=key,
                    timeout=timeout,
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
                f"within {why.format(deadline)}; check that the gateway is up and answers"
            )
        if "error" in box:
            raise box["error"]
        return int(box["attempts"])


def _remove_stale_textfile_temporaries(textfile: str, older_than: float = 3600.0) -> list[str]:
    """Delete ``<textfile>.<pid>.<thread>`` files (prometheus-client's temporary name) of writes killed
    more than ``older_than`` seconds ago."""
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


# names other modules and tests import from here
__all__ = ["BASELINE_ESTIMATOR", "EmptyWindowError", "MonitorJob", "MonitorSummary", "confidence_estimate", "run_monitor"]
