"""The per-sample record schema, declared once: one row per (sample, method).

Columns (:data:`RECORD_COLUMNS`, typed by :data:`RECORD_SCHEMA`):

- ``sample_id``, ``window_id`` (str): the input (file path or index) and its window.
- ``model``, ``model_version`` (str): from :func:`relmon.models.model_info`.
- ``pred`` (int64): the predicted (and explained) class, argmax of the clean logits.
- ``confidence`` (float64): max softmax probability.
- ``softmax_entropy`` (float64): entropy of the softmax distribution, in **nats** (natural log).
- ``margin`` (float64): top-1 minus top-2 softmax probability.
- ``label`` (nullable int64), ``correct`` (nullable bool): null without labels (``label = -1``).
- ``method`` (str): canonical method id (``lrp:epsilon_plus_flat`` ...). The **random region order**
  of a sample is the row with ``method = "random"`` (same target and same noise image as the
  heatmap rows); its heatmap columns (entropy, sizes, Gini) are null and its ``aopc`` is the random
  order's AOPC.
- ``score0`` (float64): ``f(x^(0))``, the explained score on the clean input.
- ``aopc`` (float64): MoRF AOPC (random order's for ``method = "random"``); ``aopc_rel`` =
  ``aopc / score0`` (NaN where ``score0 <= 0``).
- ``aopc_lerf``, ``abpc`` (nullable float64): null unless LeRF was asked for.
- ``aopc_early`` (nullable float64): AOPC of the first part of the row's order curve only (MoRF
  for heatmap rows, the random order on the ``random`` row): ``1/(k+1) * sum_{j=0..k} (f(x^(0)) -
  f(x^(j)))`` with ``k`` the steps that perturb about 16 % of the image (the paper's protocol), at
  most ``L``. Null in records written before this column existed or by code that does not fill it.
- ``entropy_bits``, ``png_bytes``, ``jpeg_bytes``, ``gini`` (nullable float64 / int64): heatmap
  complexity (null on the ``random`` row).
- ``probs`` (nullable list of float64) and ``probs_classes`` (nullable list of int64): the class
  probabilities (softmax of the clean logits). For ``K <= PROBS_TOP_K`` (20) classes ``probs`` is the
  whole vector, indexed by class, and ``probs_classes`` is null. For more classes ``probs`` holds the
  ``PROBS_TOP_K`` largest probabilities in descending order and ``probs_classes`` their classes; the
  remaining mass ``1 − sum(probs)`` belongs to the other ``K − 20`` classes (``K`` is the calibration's
  class count). Why 20: COT's cost ``‖p − e_y‖_∞`` reads only the largest entries, and the tail's
  contribution to MaNo's ℓ4 norm and to the nuclear norm is at most its mass ``m`` times
  ``(K − 20)^(−3/4)`` resp. small against the top rows — while a full 1000-class vector would make every
  row 8 kB. Null in records written before schema version 2 (:data:`RECORD_SCHEMA_VERSION`);
  estimators then rebuild each vector from ``confidence`` (:mod:`relmon.analysis.estimators`).
- ``run_id`` (str), ``run_time`` (float64, UTC seconds since the epoch) — nullable: which run of the
  job wrote the row (:func:`new_run_id`); null in records made outside a job and in files written
  before these columns existed (such files are still read: the columns are added as null).

**Optional location columns** (:data:`LOCATION_COLUMNS`, nullable float64, schema version 3): present
only in records scored with ``suspect_regions`` set (:mod:`relmon.suspect_regions`), all four or none;
records scored without it have exactly the columns above (and are written as schema version 2):

- ``suspect_share``: share of the sample's positive relevance inside the suspect regions;
- ``rest_relevance``: signed relevance outside them over the signed total;
- ``occlusion_flip``: 1.0 when blanking the suspect regions changes the prediction, else 0.0;
- ``occlusion_drop``: the predicted class's softmax probability minus the same class's after blanking.

They are per *sample* (:func:`relmon.location.location_features` on the heatmap of the first configured
method) and repeated on each of the sample's rows (every method and ``random``), so any row of a sample
carries them. Null where undefined (no positive relevance, zero total). Reading files with and without
them together gives null columns for the files without (:func:`read_record_files`).

Writes are atomic (a uniquely named temporary file in the target folder, then ``os.replace``), so
concurrent writers and readers never see a half-written file; temporary files left by killed writers
start with ``.`` and end with ``.tmp`` — readers skip them and :func:`remove_stale_temporaries`
deletes them.
"""

from __future__ import annotations

import os
import secrets
import tempfile
import time
from collections.abc import Sequence
from datetime import datetime, timezone
from pathlib import Path

import numpy as np
import pandas as pd
import pyarrow as pa
import pyarrow.parquet as pq
import torch

RANDOM_METHOD = "random"

RECORD_SCHEMA = pa.schema(
    [
        pa.field("sample_id", pa.string(), nullable=False),
        pa.field("window_id", pa.string(), nullable=False),
        pa.field("model", pa.string(), nullable=False),
        pa.field("model_version", pa.string(), nullable=False),
        pa.field("pred", pa.int64(), nullable=False),
        pa.field("confidence", pa.float64(), nullable=False),
        pa.field("softmax_entropy", pa.float64(), nullable=False),
        pa.field("margin", pa.float64(), nullable=False),
        pa.field("label", pa.int64(), nullable=True),
        pa.field("correct", pa.bool_(), nullable=True),
        pa.field("method", pa.string(), nullable=False),
        pa.field("score0", pa.float64(), nullable=False),
        pa.field("aopc", pa.float64(), nullable=False),
        pa.field("aopc_rel", pa.float64(), nullable=True),
        pa.field("aopc_lerf", pa.float64(), nullable=True),
        pa.field("abpc", pa.float64(), nullable=True),
        pa.field("aopc_early", pa.float64(), nullable=True),
        pa.field("entropy_bits", pa.float64(), nullable=True),
        pa.field("png_bytes", pa.int64(), nullable=True),
        pa.field("jpeg_bytes", pa.int64(), nullable=True),
        pa.field("gini", pa.float64(), nullable=True),
        pa.field("run_id", pa.string(), nullable=True),
        pa.field("run_time", pa.float64(), nullable=True),
        pa.field("probs", pa.list_(pa.float64()), nullable=True),
        pa.field("probs_classes", pa.list_(pa.int64()), nullable=True),
    ],
    metadata={b"relmon.records.schema_version": b"2"},
)
#: 1: up to issue 17 (no class probabilities); 2: ``probs`` and ``probs_classes``
RECORD_SCHEMA_VERSION = 3
#: the optional per-sample location columns (see the module docstring); same names as relmon.location's
LOCATION_COLUMNS: tuple[str, ...] = ("suspect_share", "rest_relevance", "occlusion_flip", "occlusion_drop")
LOCATION_FIELDS = tuple(pa.field(c, pa.float64(), nullable=True) for c in LOCATION_COLUMNS)
#: the schema of records that carry the location columns (schema version 3)
LOCATION_RECORD_SCHEMA = pa.schema([*RECORD_SCHEMA, *LOCATION_FIELDS],
                                   metadata={b"relmon.records.schema_version": b"3"})
#: the most class probabilities a record keeps (see the module docstring)
PROBS_TOP_K = 20
RECORD_COLUMNS: tuple[str, ...] = tuple(RECORD_SCHEMA.names)
_ALL_COLUMNS = RECORD_COLUMNS + LOCATION_COLUMNS

# pandas dtypes matching the schema (nullable extension dtypes where the schema allows nulls).
_PANDAS_DTYPES = {
    "sample_id": "string", "window_id": "string", "model": "string", "model_version": "string",
    "pred": "int64", "confidence": "float64", "softmax_entropy": "float64", "margin": "float64",
    "label": "Int64", "correct": "boolean", "method": "string", "score0": "float64", "aopc": "float64",
    "aopc_rel": "float64", "aopc_lerf": "Float64", "abpc": "Float64", "aopc_early": "Float64",
    "entropy_bits": "Float64", "png_bytes": "Int64", "jpeg_bytes": "Int64", "gini": "Float64",
    "run_id": "string", "run_time": "Float64", "probs": "object", "probs_classes": "object",
    **{c: "Float64" for c in LOCATION_COLUMNS},
}
_DTYPE_OBJECTS = {name: pd.api.types.pandas_dtype(dtype) for name, dtype in _PANDAS_DTYPES.items()}
# Columns added after the first schema: files without them are read with the column null.
_ADDED_COLUMNS = ("aopc_early", "run_id", "run_time", "probs", "probs_classes")
_LIST_COLUMNS = ("probs", "probs_classes")
TMP_SUFFIX = ".tmp"


class RecordSchemaError(ValueError):
    """A records frame does not match :data:`RECORD_SCHEMA`."""


def confidence_signals(logits: torch.Tensor) -> dict[str, torch.Tensor]:
    """``(B,)`` tensors from clean logits ``(B, K)``: pred, confidence, softmax_entropy (nats), margin."""
    if logits.dim() != 2:
        raise ValueError(f"logits must be (B, K), got shape {tuple(logits.shape)}")
    logp = torch.log_softmax(logits.detach().to(torch.float64), dim=1)
    p = logp.exp()
    top = torch.topk(p, k=min(2, p.shape[1]), dim=1).values
    margin = top[:, 0] - top[:, 1] if top.shape[1] > 1 else top[:, 0]
    return {
        "pred": p.argmax(dim=1),
        "confidence": top[:, 0],
        "softmax_entropy": -(p * logp).nan_to_num(0.0).sum(dim=1),
        "margin": margin,
    }


def class_probabilities(logits: torch.Tensor, top_k: int = PROBS_TOP_K) -> dict[str, list]:
    """The ``probs`` and ``probs_classes`` columns from clean logits ``(B, K)``: per sample the softmax
    vector (``K <= top_k``; ``probs_classes`` None) or its ``top_k`` largest entries, descending, and
    their classes."""
    if logits.dim() != 2:
        raise ValueError(f"logits must be (B, K), got shape {tuple(logits.shape)}")
    p = torch.softmax(logits.detach().to(torch.float64), dim=1).cpu()
    if p.shape[1] <= top_k:
        return {"probs": list(p.numpy()), "probs_classes": [None] * p.shape[0]}
    values, classes = torch.topk(p, k=top_k, dim=1)
    return {"probs": list(values.numpy()), "probs_classes": list(classes.numpy().astype(np.int64))}


def _values(value, n: int, name: str) -> np.ndarray | list:
    """``n`` values of a column from a tensor, array, sequence or scalar (broadcast)."""
    if isinstance(value, torch.Tensor):
        value = value.detach().cpu().numpy()
    if isinstance(value, (str, int, float, bool, np.generic)) or value is None:
        return [value] * n
    if name in _LIST_COLUMNS and isinstance(value, np.ndarray) and value.ndim == 2:
        value = list(value)  # one vector per row
    out = np.asarray(value) if not isinstance(value, list) else value
    if len(out) != n:
        raise RecordSchemaError(f"column {name!r} holds {len(out)} values for {n} rows")
    return out


def make_records(n: int | None = None, **columns) -> pd.DataFrame:
    """A validated records frame from per-row columns (tensors, arrays, lists or scalars).

    Every column of :data:`RECORD_COLUMNS` must be given except the nullable ones (``label``,
    ``correct``, ``aopc_lerf``, ``abpc`` and the complexity columns), which default to null. ``label``
    values ``< 0`` mean unknown (null); ``correct`` is derived from ``pred`` and ``label`` when not
    given. Scalars are broadcast to ``n`` rows (inferred from the first array-like column).
    """
    unknown = set(columns) - set(_ALL_COLUMNS)
    if unknown:
        raise RecordSchemaError(f"unknown record column(s) {sorted(unknown)}; known: {list(RECORD_COLUMNS)} "
                                f"and the optional {list(LOCATION_COLUMNS)}")
    if n is None:
        n = _rows(columns)
    data = {}
    for name in record_columns(any(c in columns for c in LOCATION_COLUMNS)):
        if name in columns:
            data[name] = _values(columns[name], n, name)
        elif name in LOCATION_COLUMNS or RECORD_SCHEMA.field(name).nullable:
            data[name] = [None] * n
        else:
            raise RecordSchemaError(f"missing required record column {name!r}")
    frame = pd.DataFrame(data)
    label = pd.Series(pd.array(frame["label"], dtype="Int64"), index=frame.index)
    frame["label"] = label.mask(label < 0)
    if "correct" not in columns:
        frame["correct"] = (frame["label"] == frame["pred"].astype("Int64")).astype("boolean")
    return validate_records(frame)


def _rows(columns: dict) -> int:
    for value in columns.values():
        if isinstance(value, (torch.Tensor, np.ndarray, list, tuple)):
            return len(value)
    raise RecordSchemaError("cannot tell the number of rows: pass n= or at least one array column")


def make_records_of_parts(*parts: dict) -> pd.DataFrame:
    """One validated records frame from groups of rows, each a dict of columns as :func:`make_records`
    takes them: the frame that concatenating ``make_records(**part)`` for each part gives, built and
    validated once (the per-call cost of pandas dominates a batch's records on a GPU). A column that a
    part does not give is null in its rows."""
    if len(parts) == 1:
        return make_records(**parts[0])
    sized = [(_rows(part), part) for part in parts]
    columns = {}
    for name in _ALL_COLUMNS:
        if not any(name in part for _, part in sized):
            continue
        values = [_values(part[name], n, name) if name in part else [None] * n for n, part in sized]
        if all(isinstance(v, np.ndarray) for v in values):
            columns[name] = np.concatenate(values)
        else:
            columns[name] = [x for v in values for x in (v.tolist() if isinstance(v, np.ndarray) else v)]
    return make_records(n=sum(n for n, _ in sized), **columns)


def empty_records() -> pd.DataFrame:
    """A frame with the record columns and dtypes and no rows."""
    return validate_records(pd.DataFrame({c: pd.Series([], dtype=_PANDAS_DTYPES[c]) for c in RECORD_COLUMNS}))


def validate_records(frame: pd.DataFrame) -> pd.DataFrame:
    """Check ``frame`` against :data:`RECORD_SCHEMA` and return it with the schema's column order and dtypes.

    Raises :class:`RecordSchemaError` for missing/extra columns, nulls in non-nullable columns, or
    values that cannot be cast.
    """
    if not isinstance(frame, pd.DataFrame):
        raise RecordSchemaError(f"records must be a pandas DataFrame, got {type(frame).__name__}")
    if any(c not in frame.columns for c in _ADDED_COLUMNS):
        frame = frame.assign(**{c: None for c in _ADDED_COLUMNS if c not in frame.columns})
    located = has_location(frame)
    columns = record_columns(located)
    missing = [c for c in columns if c not in frame.columns]
    extra = [c for c in frame.columns if c not in columns]
    if missing or extra:
        raise RecordSchemaError(f"records columns mismatch: missing {missing}, unexpected {extra}")
    out = {}
    for name in columns:
        col = frame[name]
        if name not in LOCATION_COLUMNS and not RECORD_SCHEMA.field(name).nullable and bool(col.isna().any()):
            raise RecordSchemaError(f"column {name!r} must not hold nulls")
        if name in _LIST_COLUMNS:  # one vector (or null) per row
            out[name] = pd.Series([None if _is_null(v) else v for v in col], index=col.index, dtype=object)
            continue
        if col.dtype == _DTYPE_OBJECTS[name]:
            out[name] = col  # already the schema's dtype (frames made by make_records, read back, ...)
            continue
        try:
            out[name] = col.astype(_PANDAS_DTYPES[name])
        except (TypeError, ValueError) as err:
            raise RecordSchemaError(f"column {name!r} cannot be cast to {_PANDAS_DTYPES[name]}: {err}") from err
    result = pd.DataFrame(out, index=frame.index)
    try:
        to_arrow(result)
    except (pa.ArrowInvalid, pa.ArrowTypeError) as err:
        raise RecordSchemaError(f"records do not match the schema: {err}") from err
    return result


def has_location(frame: pd.DataFrame) -> bool:
    """True when ``frame`` carries the location columns (any of them: a partial set is a schema error)."""
    return any(c in frame.columns for c in LOCATION_COLUMNS)


def record_columns(location: bool = False) -> tuple[str, ...]:
    """The record columns, with the optional location columns when ``location``."""
    return _ALL_COLUMNS if location else RECORD_COLUMNS


def record_schema(location: bool = False) -> pa.Schema:
    """:data:`RECORD_SCHEMA`, or :data:`LOCATION_RECORD_SCHEMA` when ``location``."""
    return LOCATION_RECORD_SCHEMA if location else RECORD_SCHEMA


def _is_null(value) -> bool:
    return value is None or value is pd.NA or (isinstance(value, float) and np.isnan(value))


def to_arrow(frame: pd.DataFrame) -> pa.Table:
    """The records as an Arrow table with exactly :data:`RECORD_SCHEMA` (:data:`LOCATION_RECORD_SCHEMA`
    when the frame carries the location columns)."""
    located = has_location(frame)
    return pa.Table.from_pandas(frame[list(record_columns(located))], schema=record_schema(located),
                                preserve_index=False)


def new_run_id() -> tuple[str, float]:
    """``(run_id, run_time)`` of a new run: a random 12-hex-digit id and the UTC time in seconds."""
    return secrets.token_hex(6), time.time()


def run_file_name(run_id: str, run_time: float, suffix: str = ".parquet") -> str:
    """``<UTC time>_<run_id><suffix>``, e.g. ``20250101T120000.123456Z_1a2b3c4d5e6f.parquet``: unique per run
    and sorted by time."""
    stamp = datetime.fromtimestamp(run_time, tz=timezone.utc).strftime("%Y%m%dT%H%M%S.%fZ")
    return f"{stamp}_{run_id}{suffix}"


def fsync_file(path: str | os.PathLike) -> None:
    """Flush ``path``'s data to the disk (``fsync``)."""
    fd = os.open(path, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def fsync_dir(folder: str | os.PathLike) -> None:
    """Flush ``folder``'s entries (a rename or a new file in it) to the disk; a file system that cannot
    fsync a folder (some network ones) is left as it is."""
    try:
        fd = os.open(folder, os.O_RDONLY | getattr(os, "O_DIRECTORY", 0))
    except OSError:
        return
    try:
        os.fsync(fd)
    except OSError:  # EINVAL: this file system does not sync folders
        pass
    finally:
        os.close(fd)


def atomic_write(path: str | os.PathLike, write) -> Path:
    """Call ``write(tmp_path)`` on a uniquely named temporary file beside ``path``, then ``os.replace`` it
    onto ``path``; the temporary file is removed when ``write`` fails. Parent folders are created.

    Durable: the temporary file is fsynced before the rename and the folder after it, so after a power
    loss ``path`` holds the old content or the new one, never an empty or partial file."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=TMP_SUFFIX, dir=path.parent)
    os.close(fd)
    try:
        os.chmod(tmp, 0o666 & ~_umask())  # mkstemp makes 0600; give the usual permissions
        write(tmp)
        fsync_file(tmp)  # the data is on disk before the name points at it
        os.replace(tmp, path)  # readers never see a half-written file
        fsync_dir(path.parent)  # the rename itself survives a crash
    except BaseException:
        try:
            os.unlink(tmp)
        except OSError:
            pass
        raise
    return path


def _umask() -> int:
    try:
        with open("/proc/self/status") as f:
            for line in f:
                if line.startswith("Umask:"):
                    return int(line.split()[1], 8)
    except (OSError, ValueError):
        pass
    return 0o022


def remove_stale_temporaries(folder: str | os.PathLike, older_than: float = 3600.0) -> list[Path]:
    """Delete temporary files of killed writes under ``folder`` last modified more than ``older_than``
    seconds ago (younger ones may belong to a writer still running); returns the removed paths."""
    folder = Path(folder)
    removed = []
    if not folder.is_dir():
        return removed
    now = time.time()
    for p in folder.rglob(f".*{TMP_SUFFIX}"):
        try:
            if p.is_file() and now - p.stat().st_mtime > older_than:
                p.unlink()
                removed.append(p)
        except OSError:
            continue
    return removed


def write_records(frame: pd.DataFrame, path: str | os.PathLike) -> Path:
    """Validate ``frame`` and write it to the Parquet file ``path`` atomically (parent folders created).

    The temporary file has a unique name, so concurrent writers (even of the same ``path``) never clash;
    the last ``os.replace`` wins.
    """
    table = to_arrow(validate_records(frame))
    return atomic_write(path, lambda tmp: pq.write_table(table, tmp))


def read_record_files(paths: Sequence[str | os.PathLike]) -> pd.DataFrame:
    """Concatenate the Parquet record files ``paths`` (each checked against the schema).

    Files written before the ``run_id``/``run_time`` columns existed are read with them null.
    """
    frames = []
    for p in paths:
        with open(p, "rb") as f:  # one open: a file replaced meanwhile is read whole (old or new)
            table = pq.ParquetFile(f).read()
        version = int((table.schema.metadata or {}).get(b"relmon.records.schema_version", b"1"))
        if version > RECORD_SCHEMA_VERSION:
            raise RecordSchemaError(f"{p} holds records of schema version {version}; this relmon reads versions "
                                    f"1..{RECORD_SCHEMA_VERSION}. Fix: upgrade relmon to read them")
        for name in _ADDED_COLUMNS:  # files written before these columns were added
            field = RECORD_SCHEMA.field(name)
            if name not in table.schema.names:
                table = table.append_column(field, pa.nulls(len(table), field.type))
        located = any(n in table.schema.names for n in LOCATION_COLUMNS)
        columns = record_columns(located)
        table = table.select([n for n in columns if n in table.schema.names]
                             + [n for n in table.schema.names if n not in columns])
        if not table.schema.equals(record_schema(located), check_metadata=False):
            raise RecordSchemaError(f"{p} does not hold the record schema: {table.schema}")
        frames.append(validate_records(table.to_pandas(types_mapper=_arrow_to_pandas_dtype)))
    if not frames:
        return empty_records()
    # files scored without suspect_regions get null location columns beside those scored with it (concat)
    return validate_records(pd.concat(frames, ignore_index=True))


def _arrow_to_pandas_dtype(arrow_type: pa.DataType):
    if arrow_type == pa.string():
        return pd.StringDtype()
    return None


__all__ = [
    "LOCATION_COLUMNS",
    "LOCATION_RECORD_SCHEMA",
    "PROBS_TOP_K",
    "RANDOM_METHOD",
    "RECORD_COLUMNS",
    "RECORD_SCHEMA_VERSION",
    "RECORD_SCHEMA",
    "RecordSchemaError",
    "atomic_write",
    "class_probabilities",
    "confidence_signals",
    "has_location",
    "record_columns",
    "record_schema",
    "new_run_id",
    "remove_stale_temporaries",
    "run_file_name",
    "empty_records",
    "make_records",
    "read_record_files",
    "to_arrow",
    "validate_records",
    "write_records",
]
