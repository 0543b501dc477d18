"""``relmon merge``: the window of a sharded run, computed from all its parts as one run would.

:func:`run_merge` reads every ``part-<k>.parquet`` of the run folder (:func:`relmon.runs.read_run`:
an incomplete run, parts of different runs or settings, or overlapping shards are refused with a
:class:`~relmon.runs.RunPartsError`, exit 3), sums the parts' input counts, computes the window
summary from the records (:func:`relmon.runs.summary_from_records`), then the estimates, drift and
metrics with :meth:`relmon.jobs.monitor.MonitorJob.finish` against the calibration, and writes the
run's ``summary.json``, the textfile and the push like ``relmon monitor``. It loads no model: the
model's name and version come from the parts.
"""

from __future__ import annotations

import logging
import time
from dataclasses import replace
from pathlib import Path

from relmon.config import ConfigError, MonitorConfig
from relmon.jobs.errors import EmptyWindowError, JobError
from relmon.jobs.monitor import MonitorJob, _output_error, _remove_stale_textfile_temporaries
from relmon.jobs.only_new import stream_folder
from relmon.jobs.summary import MonitorSummary
from relmon.runs import (
    SUMMARY_FILE,
    RunPartsError,
    read_run,
    sum_inputs,
    summary_from_records,
    window_summary_document,
    write_window_summary,
)

log = logging.getLogger("relmon.jobs")


def run_folder_of(cfg: MonitorConfig, run: str | None) -> Path:
    """The run folder: ``run``, or ``<records>/<stream>/<run_id>`` from the config."""
    if run:
        return Path(run)
    if not cfg.records or not cfg.run_id:
        raise ConfigError("relmon merge needs the run folder: pass RUN, or records and run_id (flags --records "
                          "FOLDER --run-id ID, with the shards' --stream) to merge <records>/<stream>/<run_id>")
    return stream_folder(cfg.records, cfg.stream) / cfg.run_id


def wait_for_parts(folder: Path, wait_seconds: float, poll: float = 2.0):
    """:func:`relmon.runs.read_run`, retried while parts are missing for up to ``wait_seconds``."""
    deadline = time.monotonic() + max(0.0, float(wait_seconds))
    while True:
        try:
            return read_run(folder)
        except RunPartsError as err:
            waiting = ("incomplete run" in str(err) or "holds no part" in str(err) or "does not exist" in str(err))
            if not waiting or time.monotonic() >= deadline:
                raise
            log.info("waiting for the run's parts: %s", err)
            time.sleep(min(poll, max(0.0, deadline - time.monotonic())))


def run_merge(cfg: MonitorConfig, run: str | None = None, wait_seconds: float = 0.0, registry=None) -> MonitorSummary:
    """Merge a sharded run's parts into the window's outputs (see the module docstring)."""
    t0 = time.perf_counter()
    folder = run_folder_of(cfg, run)
    records, manifests = wait_for_parts(folder, wait_seconds)
    first = manifests[0]
    if first["kind"] != "shard":
        raise RunPartsError(f"run {first['run_id']!r} in {str(folder)!r} was written by a {first['kind']} run, whose "
                            "rank 0 writes the window's summary itself; fix: merge only sharded runs "
                            "('relmon monitor --shard I/N')")
    settings = first["settings"]
    # the calibration is checked against the shards' settings, not this command's flags
    cfg = replace(cfg, stream=first["stream"], methods=tuple(settings["methods"]), region=settings["region"],
                  steps=settings["steps"], fraction=None, seed=settings["seed"], shard=None)
    inputs, errors = sum_inputs(manifests)
    summary = summary_from_records(records, settings["methods"], inputs=inputs)
    summary.pop("_inputs")
    job = MonitorJob(cfg, registry=registry, identity=(first["model"], first["model_version"]))
    result, records = job.finish(records, summary, inputs, errors, t0)
    result.outputs["run_id"] = first["run_id"]
    result.outputs["parts"] = len(manifests)
    failures: list[str] = []
    doc = window_summary_document(result.to_dict(), settings=settings,
                                  run={"run_id": first["run_id"], "run_time": first["run_time"],
                                       "parts": len(manifests), "kind": "shard"})
    try:
        result.outputs["summary"] = str(write_window_summary(folder / SUMMARY_FILE, doc))
    except OSError as err:
        failures.append(_output_error("window summary", str(folder), err, "records: FOLDER"))
    if cfg.textfile:
        from relmon.export.outputs import write_textfile

        try:
            _remove_stale_textfile_temporaries(cfg.textfile)
            result.outputs["textfile"] = str(write_textfile(job.registry, cfg.textfile))
        except OSError as err:
            failures.append(_output_error("textfile", cfg.textfile, err, "textfile: PATH"))
    if cfg.pushgateway:
        from relmon.export.outputs import PushError
        from relmon.export.security import redact_url

        try:
            attempts = job._push()
            result.outputs["push"] = f"{redact_url(cfg.pushgateway)} (job {cfg.job}, {attempts} attempt(s))"
        except PushError as err:
            failures.append(str(err))
    if failures:
        raise JobError("; ".join(failures), result)
    if result.scored == 0:
        raise EmptyWindowError(f"empty window, nothing scored in any of the {len(manifests)} shards; the last-success "
                               "time was not advanced; fix: check input, sample_rate and max_samples", result)
    return result


__all__ = ["run_folder_of", "run_merge", "wait_for_parts"]
