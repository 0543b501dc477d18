"""Runs split in parts (DDP ranks or shard jobs), their merge, and the per-window summary file.

A run that is split writes one records **part** per rank or shard into a run folder::

    <records>/<stream>/<run>/part-<k>.parquet      k = 0 .. parts-1
    <records>/<stream>/<run>/summary.json          the window's summary (rank 0 or `relmon merge`)

A part is a records file (:data:`relmon.records.RECORD_SCHEMA`) written atomically whose Parquet
key-value metadata ``relmon.part`` holds a JSON manifest (:func:`part_manifest`): the run id, ``part``
and ``parts``, the kind (``ddp`` or ``shard``), the model and version, the window, a fingerprint of
the scoring settings, and the part's input counts (``seen``, ``bad``, ``padding_skipped``, ``errors``
per reason). :func:`read_run` reads every part of a run folder and refuses an incomplete run (a part
missing) or a mixed one (parts of different runs, settings, models or part counts) with
:class:`RunPartsError`, naming the part and the fix.

:func:`summary_from_records` computes a window summary (the dict of
:meth:`relmon.scoring.WindowAccumulator.summary`) from records alone, so a window split over ranks
or shards is summarised from its gathered records exactly as one process would (the sums are taken
in a canonical order: sorted by window, sample and method).

:func:`window_summary_document` is the one writer of the per-window summary file (estimates with
intervals, drift, alerts, settings, inputs) that ``relmon monitor`` and ``relmon merge`` write and
``trend``/``report`` can read; :func:`write_window_summary` writes it atomically.

Shards: :func:`shard_of` assigns a file to shard ``hash(relative path) mod N`` (blake2b, stable across
machines, Python versions and listing order); :func:`parse_shard` reads ``--shard I/N``.
"""

from __future__ import annotations

import hashlib
import json
import math
import os
import re
from collections.abc import Iterable, Mapping, Sequence
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd

from relmon.records import RANDOM_METHOD, atomic_write, empty_records, read_record_files, validate_records

PART_META_KEY = b"relmon.part"
PART_FORMAT = "relmon-part/1"
SUMMARY_FILE = "summary.json"
SUMMARY_FORMAT = "relmon-window-summary/1"
PART_KINDS = ("ddp", "shard")
_PART_RE = re.compile(r"^part-(\d+)\.parquet$")


class RunPartsError(ValueError):
    """The parts of a run folder cannot be merged (missing, mixed or unreadable); the message names the fix."""


# --------------------------------------------------------------------------------------------------
# shards


def parse_shard(text: str) -> tuple[int, int]:
    """``"I/N"`` → ``(I, N)`` with ``0 <= I < N``; a ``ValueError`` names the expected form."""
    m = re.fullmatch(r"\s*(\d+)\s*/\s*(\d+)\s*", str(text))
    if not m:
        raise ValueError(f"shard must be I/N with integers 0 <= I < N (e.g. 0/4), got {text!r}")
    index, count = int(m.group(1)), int(m.group(2))
    if count < 1 or not 0 <= index < count:
        raise ValueError(f"shard {text!r}: need 0 <= I < N and N >= 1 (shards are numbered 0 .. N-1)")
    return index, count


def shard_of(relative_path: str, count: int) -> int:
    """The shard (``0 .. count-1``) of a file: blake2b of its path relative to the input root (``/``
    separators), modulo ``count``. The same on every machine and in every listing order."""
    key = str(relative_path).replace(os.sep, "/").lstrip("/")
    digest = hashlib.blake2b(key.encode("utf-8"), digest_size=8, person=b"relmon-shard").digest()
    return int.from_bytes(digest, "little") % int(count)


# --------------------------------------------------------------------------------------------------
# parts


def part_name(part: int) -> str:
    return f"part-{int(part)}.parquet"


def settings_fingerprint(settings: Mapping[str, Any]) -> str:
    """A short hash of the scoring settings (JSON with sorted keys): parts of one run must share it."""
    text = json.dumps(dict(settings), sort_keys=True, default=str)
    return hashlib.sha256(text.encode()).hexdigest()[:16]


def part_manifest(*, run_id: str, run_time: float, part: int, parts: int, kind: str, model: str,
                  model_version: str, stream: str, settings: Mapping[str, Any], inputs: Mapping[str, int] | None,
                  errors: Mapping[str, int], listed: int | None = None, window_id: str | None = None,
                  calibration: str | None = None) -> dict[str, Any]:
    """The manifest stored in a part's Parquet metadata (see the module docstring). ``inputs`` is None for
    a DDP rank (its counts are synced across the ranks, and rank 0 writes the window's summary)."""
    if kind not in PART_KINDS:
        raise ValueError(f"kind must be one of {PART_KINDS}, got {kind!r}")
    if not 0 <= int(part) < int(parts):
        raise ValueError(f"part {part} out of range for {parts} parts")
    return {
        "format": PART_FORMAT, "run_id": str(run_id), "run_time": float(run_time), "part": int(part),
        "parts": int(parts), "kind": kind, "model": str(model), "model_version": str(model_version),
        "stream": str(stream), "window_id": window_id, "settings": dict(settings),
        "fingerprint": settings_fingerprint(settings), "calibration": calibration,
        "inputs": None if inputs is None else {k: int(inputs.get(k, 0)) for k in ("seen", "bad", "padding_skipped")},
        "errors": {str(k): int(v) for k, v in dict(errors).items() if int(v)},
        "listed": None if listed is None else int(listed),
    }


def write_part(records: pd.DataFrame, folder: str | os.PathLike, manifest: Mapping[str, Any]) -> Path:
    """Write ``records`` (possibly empty) as ``folder/part-<k>.parquet`` atomically, the manifest in its
    Parquet metadata; the records get the manifest's ``run_id`` and ``run_time``."""
    import pyarrow.parquet as pq

    from relmon.records import to_arrow

    frame = records if len(records) else empty_records()
    frame = frame.assign(run_id=manifest["run_id"], run_time=float(manifest["run_time"]))
    table = to_arrow(validate_records(frame))
    meta = dict(table.schema.metadata or {})
    meta[PART_META_KEY] = json.dumps(dict(manifest), sort_keys=True).encode()
    table = table.replace_schema_metadata(meta)
    return atomic_write(Path(folder) / part_name(manifest["part"]), lambda tmp: pq.write_table(table, tmp))


def read_part_manifest(path: str | os.PathLike) -> dict[str, Any]:
    """The manifest of one part file (a :class:`RunPartsError` when it has none or is unreadable)."""
    import pyarrow.parquet as pq

    try:
        meta = pq.read_schema(path).metadata or {}
    except Exception as err:  # torn or foreign file
        raise RunPartsError(f"cannot read part {str(path)!r}: {type(err).__name__}: {err}; fix: re-run that "
                            "rank or shard") from err
    raw = meta.get(PART_META_KEY)
    if raw is None:
        raise RunPartsError(f"{str(path)!r} holds records but no relmon part manifest; it was not written by "
                            "'relmon monitor --shard' or a DDP run; fix: remove it from the run folder")
    out = json.loads(raw)
    if out.get("format") != PART_FORMAT:
        raise RunPartsError(f"{str(path)!r} has part format {out.get('format')!r}, this relmon reads "
                            f"{PART_FORMAT!r}; fix: re-run the shards with this relmon version")
    return out


def list_parts(folder: str | os.PathLike) -> dict[int, Path]:
    """``{k: path}`` of the ``part-<k>.parquet`` files in ``folder`` (temporary files skipped)."""
    folder = Path(folder)
    if not folder.is_dir():
        raise RunPartsError(f"run folder {str(folder)!r} does not exist; fix: pass the folder holding the run's "
                            "part-<k>.parquet files (<records>/<stream>/<run id>)")
    out = {}
    for p in folder.iterdir():
        m = _PART_RE.match(p.name)
        if m and p.is_file():
            out[int(m.group(1))] = p
    return out


_SAME = ("run_id", "parts", "kind", "model", "model_version", "stream", "fingerprint", "window_id")


def check_parts(manifests: Mapping[int, Mapping[str, Any]], folder: str | os.PathLike = "") -> int:
    """Refuse a run whose parts are incomplete or mixed; returns the number of parts."""
    if not manifests:
        raise RunPartsError(f"run folder {str(folder)!r} holds no part-<k>.parquet file; fix: run the shards "
                            "('relmon monitor --shard I/N --run-id ID') before merging")
    first_k = min(manifests)
    first = manifests[first_k]
    for k, m in sorted(manifests.items()):
        if m.get("part") != k:
            raise RunPartsError(f"part-{k}.parquet in {str(folder)!r} says it is part {m.get('part')}; fix: do "
                                "not rename part files")
        for key in _SAME:
            if m.get(key) != first.get(key):
                what = "settings" if key == "fingerprint" else key
                raise RunPartsError(
                    f"mixed run in {str(folder)!r}: part {k} has {what} {m.get(key)!r} but part {first_k} has "
                    f"{first.get(key)!r}; every shard of a run must use the same run id, shard count, model, "
                    "window and settings; fix: remove the stray part or re-run all shards with one config")
    parts = int(first["parts"])
    missing = [k for k in range(parts) if k not in manifests]
    extra = [k for k in manifests if k >= parts]
    if extra:
        raise RunPartsError(f"run {first['run_id']!r} in {str(folder)!r} has {parts} parts but holds part(s) "
                            f"{extra}; fix: remove the stray part files")
    if missing:
        shards = ", ".join(f"--shard {k}/{parts}" for k in missing)
        raise RunPartsError(
            f"incomplete run {first['run_id']!r} in {str(folder)!r}: {len(missing)} of {parts} parts missing "
            f"(part(s) {missing}); fix: run the missing shard(s) ({shards}, same --run-id) and merge again")
    return parts


def read_run(folder: str | os.PathLike) -> tuple[pd.DataFrame, list[dict[str, Any]]]:
    """Every part of a complete run folder: ``(records, manifests in part order)``.

    The records are sorted canonically (:func:`sort_records`). A :class:`RunPartsError` for a missing,
    mixed or unreadable part, and for a sample that two parts both scored.
    """
    paths = list_parts(folder)
    manifests = {k: read_part_manifest(p) for k, p in paths.items()}
    parts = check_parts(manifests, folder)
    records = read_record_files([paths[k] for k in range(parts)])
    dup = records.duplicated(["window_id", "sample_id", "method"])
    if bool(dup.any()):
        row = records[dup].iloc[0]
        raise RunPartsError(f"sample {row['sample_id']!r} (method {row['method']}) is in more than one part of "
                            f"{str(folder)!r}; the shards overlap; fix: re-run the shards with one --shard count")
    return sort_records(records), [manifests[k] for k in range(parts)]


def sum_inputs(manifests: Iterable[Mapping[str, Any]]) -> tuple[dict[str, int], dict[str, int]]:
    """``(inputs, errors)`` summed over the parts' manifests."""
    inputs = {"seen": 0, "bad": 0, "padding_skipped": 0}
    errors: dict[str, int] = {}
    for m in manifests:
        for k in inputs:
            inputs[k] += int(m["inputs"].get(k, 0))
        for k, v in m.get("errors", {}).items():
            errors[k] = errors.get(k, 0) + int(v)
    return inputs, errors


# --------------------------------------------------------------------------------------------------
# the window summary from records


def sort_records(records: pd.DataFrame) -> pd.DataFrame:
    """Records in the canonical order (window, sample, method), index reset: the order in which a
    split run's parts are gathered, whatever rank or shard wrote each row."""
    if not len(records):
        return records.reset_index(drop=True)
    return records.sort_values(["window_id", "sample_id", "method"], kind="stable").reset_index(drop=True)


def summary_from_records(records: pd.DataFrame, methods: Sequence[str],
                         inputs: Mapping[str, int] | None = None) -> dict[str, dict[str, float]]:
    """The window summary of :meth:`relmon.scoring.WindowAccumulator.summary` computed from records.

    Per method: ``aopc`` mean and 95 % CI over its rows' finite AOPC, ``aopc_std``, ``n``, ``aopc_rel``
    (mean of the finite values); heatmap methods also ``entropy_bits`` and ``aopc_minus_random`` (the
    mean of the paired differences on the samples that have a ``random`` row). ``inputs`` (``seen``,
    ``bad``, ``padding_skipped``) is copied to ``"_inputs"``; records do not hold them.
    """
    from relmon.scoring import FiniteSums, summary_entry

    def sums(values) -> FiniteSums:
        s = FiniteSums()
        s.update(np.array(values, dtype=np.float64))  # a writable copy for torch
        return s

    frame = sort_records(records)
    by_method = {m: frame[frame["method"] == m] for m in (*methods, RANDOM_METHOD)}
    rnd = by_method[RANDOM_METHOD].set_index(["window_id", "sample_id"])["aopc"]
    out: dict[str, dict[str, float]] = {}
    for method in (*methods, RANDOM_METHOD):
        rows = by_method[method]
        aopc = sums(rows["aopc"].to_numpy(dtype=float, na_value=np.nan))
        rel = sums(rows["aopc_rel"].to_numpy(dtype=float, na_value=np.nan)).mean()
        if method == RANDOM_METHOD:
            out[method] = summary_entry(aopc.mean_ci(), rel)
            continue
        paired = rows.join(rnd.rename("random_aopc"), on=["window_id", "sample_id"], how="inner")
        diff = _paired_difference(paired["aopc"].to_numpy(dtype=float), paired["random_aopc"].to_numpy(dtype=float))
        entropy = sums(rows["entropy_bits"].to_numpy(dtype=float, na_value=np.nan)).mean()
        out[method] = summary_entry(aopc.mean_ci(), rel, sums(diff).mean(), entropy)
    inputs = dict(inputs or {})
    out["_inputs"] = {k: int(inputs.get(k, 0)) for k in ("seen", "bad", "padding_skipped")}
    return out


def _paired_difference(aopc: np.ndarray, random_aopc: np.ndarray) -> np.ndarray:
    """``aopc - random_aopc`` as the scorers take it: in the model's dtype (float32 for a float32 model,
    whose AOPC values are float32 numbers stored as float64), so the summary is one process's to the bit."""
    def is_f32(v: np.ndarray) -> bool:
        return bool(np.array_equal(v.astype(np.float32).astype(np.float64), v, equal_nan=True))

    if is_f32(aopc) and is_f32(random_aopc):
        return (aopc.astype(np.float32) - random_aopc.astype(np.float32)).astype(np.float64)
    return aopc - random_aopc


# --------------------------------------------------------------------------------------------------
# the per-window summary file


def _finite(value):
    """JSON-safe numbers: NaN and infinities become None."""
    if isinstance(value, float) and not math.isfinite(value):
        return None
    if isinstance(value, (np.floating,)):
        return _finite(float(value))
    if isinstance(value, (np.integer,)):
        return int(value)
    if isinstance(value, Mapping):
        return {str(k): _finite(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [_finite(v) for v in value]
    return value


def window_alerts(summary: Mapping[str, Any]) -> list[dict[str, Any]]:
    """The alerts of a window summary: the drift alarm (``drift``) when the KS tests fire, then the
    accuracy alerts the job computed with :func:`relmon.analysis.alerts.accuracy_alerts` (the summary's
    ``alerts``: ``{"name", "severity", "reason"}``, what ``--json`` reports and the Prometheus rules
    mirror)."""
    alerts = []
    if summary.get("drift_alarm"):
        p = summary.get("drift_p_values") or {}
        alerts.append({"alert": "drift", "features": sorted(k for k, v in p.items() if v is not None)})
    alerts += [dict(a) for a in summary.get("alerts") or []]
    return alerts


def window_summary_document(summary: Mapping[str, Any], *, settings: Mapping[str, Any] | None = None,
                            run: Mapping[str, Any] | None = None) -> dict[str, Any]:
    """The per-window summary file's content, from a job's summary (``MonitorSummary.to_dict()``).

    Keys: ``format``, ``run`` (run id, time, parts, kind, records files), ``model``, ``model_version``,
    ``stream``, ``window_ids``, ``inputs`` (seen, scored, errors per reason), ``methods`` (the window
    means with their intervals), ``confidence``, ``accuracy`` (labels known), ``estimates``
    (``{estimator: {estimate, lower, upper}}``), ``default_estimator``, ``estimate_errors``, ``headline``,
    ``estimator_disagreement``, ``default_members``, ``shift_score``, ``unreliable_under``, ``drift``
    (``p_values``, ``alarm``), ``alerts`` (:func:`window_alerts`), ``calibration``, ``settings``.
    NaN is written as null. This is the one place the file's layout is decided.
    """
    s = dict(summary)
    estimates = {name: {"estimate": v[0], "lower": v[1], "upper": v[2]} if isinstance(v, (list, tuple)) else v
                 for name, v in (s.get("estimates") or {}).items()}
    doc = {
        "format": SUMMARY_FORMAT,
        "run": dict(run or {}),
        "model": s.get("model"),
        "model_version": s.get("model_version"),
        "stream": s.get("stream"),
        "window_ids": list(s.get("window_ids") or []),
        "inputs": {"seen": s.get("seen"), "scored": s.get("scored"), "errors": dict(s.get("input_errors") or {})},
        "methods": s.get("methods") or {},
        "confidence": s.get("confidence"),
        "accuracy": s.get("accuracy"),
        "estimates": estimates,
        "default_estimator": s.get("default_estimator"),
        "estimate_errors": dict(s.get("estimate_errors") or {}),
        # issue 18 (relmon.analysis.robust): headline after the disagreement check, the disagreement, the
        # default's members, the window's shift score, the shift types the calibration cannot cover
        "headline": dict(s.get("headline") or {}),
        "estimator_disagreement": s.get("estimator_disagreement"),
        "default_members": list(s.get("default_members") or []),
        "shift_score": s.get("shift_score"),
        "unreliable_under": list(s.get("unreliable_under") or []),
        "unexplained_shift": s.get("unexplained_shift"),  # issue 19 (relmon.analysis.unexplained)
        "drift": {"p_values": s.get("drift_p_values"), "alarm": s.get("drift_alarm")},
        "alerts": window_alerts(s),
        "calibration": {"path": s.get("calibration"), "timestamp": s.get("calibration_timestamp"),
                        "version_mismatch": s.get("calibration_version_mismatch", False)},
        "settings": dict(settings or {}),
        **({"location": dict(s["location"])} if s.get("location") else {}),  # issue 19: suspect_regions set
        "finished_at": s.get("finished_at"),
        "duration_seconds": s.get("duration_seconds"),
    }
    return _finite(doc)


def write_window_summary(path: str | os.PathLike, document: Mapping[str, Any]) -> Path:
    """Write a summary document as JSON, atomically and fsynced."""
    text = json.dumps(document, indent=1, sort_keys=False, allow_nan=False)

    def write(tmp: str) -> None:
        with open(tmp, "w") as f:
            f.write(text + "\n")
            f.flush()
            os.fsync(f.fileno())

    return atomic_write(path, write)


def read_window_summary(path: str | os.PathLike) -> dict[str, Any]:
    """A summary file written by :func:`write_window_summary`."""
    doc = json.loads(Path(path).read_text())
    if doc.get("format") != SUMMARY_FORMAT:
        raise ValueError(f"{str(path)!r} is not a relmon window summary (format {doc.get('format')!r})")
    return doc


__all__ = [
    "PART_KINDS", "SUMMARY_FILE", "RunPartsError", "check_parts", "list_parts", "parse_shard", "part_manifest",
    "part_name", "read_part_manifest", "read_run", "read_window_summary", "settings_fingerprint", "shard_of",
    "sort_records", "sum_inputs", "summary_from_records", "window_alerts", "window_summary_document",
    "write_part", "write_window_summary",
]
