"""``relmon serve``: start the /metrics endpoint and re-run the job every ``interval_seconds`` (or when
the watched input folder changes); bounded by ``max_iterations`` and stoppable with an Event.

On a folder (or fsspec URL) input, serve always scores **only new or changed files** (the only-new
state is kept in the records folder when ``records`` is set, in memory otherwise), so the counters
``relmon_samples_processed_total`` and ``relmon_input_errors_total`` count each input once; a run that
finds nothing new changes no metric and is not a failure. ``watch`` polls the listing (size and
modification time of every file, through fsspec) every ``interval_seconds`` and runs when it changed.

The input folder is listed once per iteration: with ``watch`` the run's stream and its only-new
selection use the watch listing; without it the stream's own listing serves both.
"""

from __future__ import annotations

import logging
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass

from relmon.config import MonitorConfig
from relmon.data.streams import file_signatures
from relmon.export.outputs import HttpEndpoint, serve_http
from relmon.export.security import endpoint_security
from relmon.jobs.errors import EmptyWindowError, JobError, RunInterrupted, ServeError
from relmon.jobs.monitor import MonitorJob
from relmon.jobs.only_new import find_files
from relmon.jobs.signals import stop_requested
from relmon.jobs.summary import MonitorSummary

log = logging.getLogger("relmon.jobs")


def list_input(root: str) -> dict[str, dict] | None:
    """One fsspec listing (``{path: info}``) of the local folder or fsspec URL ``root``; None (logged)
    when it fails."""
    try:
        return find_files(root)
    except (OSError, ValueError) as err:
        log.warning("cannot list %s: %s", root, err)
        return None


def signature(found: dict[str, dict] | None) -> tuple:
    """(path, size, mtime) of every file of a :func:`list_input` listing (``()`` for None): changes
    when inputs change."""
    if not found:
        return ()
    return tuple(sorted((p, size, mtime) for p, (size, mtime) in file_signatures(found).items()))


@dataclass
class ServeResult:
    runs: int
    failures: int
    summaries: list[MonitorSummary]
    empty: int = 0  # runs that found nothing (new) to score
    interrupted: bool = False  # stopped by SIGTERM/SIGINT or run_timeout_seconds during a run


def serve(
    cfg: MonitorConfig,
    stop: threading.Event | None = None,
    on_ready: Callable[[HttpEndpoint], None] | None = None,
    on_run: Callable[[MonitorSummary], None] | None = None,
    registry=None,
    progress: bool = False,
) -> ServeResult:
    """Serve /metrics and re-run the job (every interval, or when the watched folder changed).

    Returns after ``cfg.max_iterations`` runs or once ``stop`` is set; the endpoint is stopped on the
    way out. A failing run is logged and counted (its last-success timestamp is not updated, so the
    stale-job alert fires); configuration errors raise before the endpoint starts. Pushes and
    textfile writes follow each run when configured.
    """
    stop = stop or threading.Event()
    if cfg.world_size > 1 or cfg.shard:
        from relmon.config import ConfigError

        raise ConfigError(
            "relmon serve runs each window on one device (its loop, listing and /metrics endpoint are one "
            "process's); fix: remove devices/num_nodes/shard here, and for several devices schedule 'relmon "
            "monitor --runner lightning --devices N' (DDP) or sharded jobs with 'relmon merge' (README "
            "\"Scaling out\")")
    security = endpoint_security(cfg)  # TLS / basic auth settings checked before the model loads
    # only-new scoring on every folder input: count every input once (see the module docstring)
    job = MonitorJob(cfg, registry=registry, progress=progress, only_new=cfg.only_new or cfg.input != "sample")
    try:
        endpoint = serve_http(job.registry, port=cfg.http_port, addr=cfg.http_addr, security=security)
    except OSError as err:
        raise ServeError(
            f"cannot serve metrics on {cfg.http_addr}:{cfg.http_port}: {err}; fix: choose a free "
            "--http-port (or 0 for any) or another --http-addr"
        ) from err
    log.info("serving metrics at %s", endpoint.url)
    result = ServeResult(0, 0, [])
    try:
        if on_ready is not None:
            on_ready(endpoint)
        last_sig = None
        while not stop.is_set():
            # one listing per iteration: the watch signature's listing is the run's input listing
            found = list_input(cfg.input) if cfg.watch else None
            sig = signature(found) if cfg.watch else None
            if not cfg.watch or sig != last_sig:
                last_sig = sig
                t0 = time.perf_counter()
                try:
                    summary = job.run(listing=found or None)  # None: the stream lists the folder itself (once)
                    result.summaries.append(summary)
                    if on_run is not None:
                        on_run(summary)
                except EmptyWindowError as err:
                    result.empty += 1
                    log.info("%s", err)
                except RunInterrupted as err:
                    result.interrupted = True
                    result.runs += 1
                    log.warning("run stopped: %s (records of finished batches: %s)", err, err.written)
                    break
                except JobError as err:
                    result.failures += 1
                    result.summaries.append(err.summary)
                    log.error("run failed: %s", err)
                except Exception as err:  # keep serving; last_success goes stale and alerts
                    result.failures += 1
                    job.metrics.set_run(time.perf_counter() - t0, None)
                    log.exception("run failed: %s", err)
                result.runs += 1
                if cfg.max_iterations is not None and result.runs >= cfg.max_iterations:
                    break
            if stop_requested():
                break
            stop.wait(cfg.interval_seconds)
    finally:
        endpoint.stop()
    return result
