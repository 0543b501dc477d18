"""Window ids unique per run (DESIGN §2a "Windows": stream + start).

A stream scored as one window (no ``window``) or in count windows has ids that restart at ``:0`` on every
run (``default:0``), so two runs of the same stream could not be told apart in the records. A run
therefore names such windows by its start: ``<stream>:<UTC start time>`` (count windows after the
first: ``<stream>:<UTC start time>+<first index>``). The parts of a sharded run (``--shard I/N``), which start
at different times, share the run's ``--run-id`` instead: ``<stream>:run-<run_id>``. Modification-time
windows (``window: mtime``) are already named by their start time and keep their ids.
"""

from __future__ import annotations

from datetime import datetime, timezone

import pandas as pd


def run_window_label(stream: str, run_time: float, shard_run_id: str | None = None) -> str:
    """The id of the one window of a run of ``stream`` started at ``run_time`` (seconds, UTC)."""
    if shard_run_id:
        return f"{stream}:run-{shard_run_id}"
    return f"{stream}:{datetime.fromtimestamp(run_time, tz=timezone.utc).strftime('%Y-%m-%dT%H:%M:%S.%fZ')}"


def name_run_windows(records: pd.DataFrame, stream: str, run_time: float, shard_run_id: str | None = None
                     ) -> pd.DataFrame:
    """``records`` with the per-run window ids of :func:`run_window_label` (a copy; ``records`` of an mtime
    window, or empty, are returned unchanged by the caller's choice: see ``MonitorJob.run``)."""
    if not len(records):
        return records
    label = run_window_label(stream, run_time, shard_run_id)
    prefix = f"{stream}:"

    def rename(wid: str) -> str:
        start = wid[len(prefix):] if wid.startswith(prefix) else wid
        return label if start == "0" else f"{label}+{start}"

    names = {w: rename(str(w)) for w in records["window_id"].unique()}
    return records.assign(window_id=records["window_id"].map(names))


__all__ = ["name_run_windows", "run_window_label"]
