"""Window ids unique per run (DESIGN §2a "Windows": stream + start).

A stream scored as one window (no ``window``) or in count windows has ids that restart at ``:0`` on every
run (``default:0``), so two runs of the same stream could not be told apart in the records. A run
therefore names such windows by its start: ``<stream>:<UTC start time>`` (count windows after the
first: ``<stream>:<UTC start time>+<first index>``). The parts of a sharded run (``--shard I/N``), which start
at different times, share the run's ``--run-id`` instead: ``<stream>:run-<run_id>``. Modification-time
windows (``window: mtime``) are already named by their start time and keep their ids.

Sample ids of a folder stream are written relative to the input root (:func:`relative_sample_ids`),
the root itself once per run (``input_root`` of the ``--json`` summary and the summary file's ``run``).
"""

from __future__ import annotations

import os
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




def input_root(stream) -> str | None:
    """The root folder (absolute local path, or URL) of a folder stream, None for other streams."""
    root = getattr(stream, "root", None)
    if root is None:
        return None
    root = str(root)
    return root if "://" in root else os.path.abspath(root)


def relative_sample_ids(records: pd.DataFrame, stream) -> pd.DataFrame:
    """``records`` with the sample ids of a folder stream relative to its root (``/`` separators), so the
    records name no host path; the root is recorded once per run (``input_root`` of the summary)."""
    root = getattr(stream, "root", None)
    if root is None or not len(records):
        return records
    prefixes = {str(root).rstrip("/") + "/", input_root(stream).rstrip("/") + "/"}

    def rel(sid: str) -> str:
        for p in prefixes:
            if sid.startswith(p):
                return sid[len(p):]
        return sid

    ids = records["sample_id"].astype(str)
    return records.assign(sample_id=ids.map({s: rel(s) for s in ids.unique()}))


__all__ = ["input_root", "name_run_windows", "relative_sample_ids", "run_window_label"]
