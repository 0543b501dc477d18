"""A calibration folder: fitted estimators, the drift reference and ``calibration.json``.

A calibration made for another model *name* or other scoring settings (methods, region, steps) is
always refused (:class:`CalibrationMismatchError`); one made for another *version* of the same model
is refused unless ``allow_version_mismatch`` is set, in which case the job logs a warning and the
summary's ``calibration_version_mismatch`` is True.
"""

from __future__ import annotations

import json
import logging
import os
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pandas as pd

from relmon.config import MonitorConfig
from relmon.jobs.common import CalibrationMismatchError

log = logging.getLogger("relmon.jobs")

CALIBRATION_FORMAT = "relmon-calibration"
CALIBRATION_VERSION = 1
CALIBRATION_FILE = "calibration.json"
REFERENCE_FILE = "reference.parquet"
RECORDS_FILE = "records.parquet"


@dataclass
class Calibration:
    """A calibration: metadata, fitted estimators, the drift reference and (optionally) every record.

    :meth:`save` writes a calibration folder, :meth:`load` reads one back:
    ``calibration.json`` (``meta`` plus the file names), ``estimators/<name>.json``,
    ``reference.parquet`` (the clean window's records) and ``records.parquet`` (all records).
    """

    path: Path
    meta: dict[str, Any]
    estimators: dict[str, Any]
    reference: pd.DataFrame
    records: pd.DataFrame | None = None

    @property
    def timestamp(self) -> float:
        return float(self.meta["created"])

    def save(self, path: str | os.PathLike) -> Path:
        """Write the calibration folder ``path``; returns it. ``calibration.json`` is written last."""
        from relmon.records import write_records

        out = Path(path)
        (out / "estimators").mkdir(parents=True, exist_ok=True)
        files = {}
        for name, est in self.estimators.items():
            est.save(out / "estimators" / f"{name}.json")
            files[name] = f"estimators/{name}.json"
        write_records(self.reference, out / REFERENCE_FILE)
        if self.records is not None:
            write_records(self.records, out / RECORDS_FILE)
        meta = {**self.meta, "estimators": files, "reference": REFERENCE_FILE}
        tmp = out / (CALIBRATION_FILE + ".tmp")
        tmp.write_text(json.dumps(meta, indent=2))
        os.replace(tmp, out / CALIBRATION_FILE)
        self.path, self.meta = out, meta
        return out

    @classmethod
    def load(cls, path: str | os.PathLike) -> Calibration:
        """Read a calibration folder written by :meth:`save` (``ValueError`` naming what is wrong)."""
        return load_calibration(path)


def load_calibration(path: str | os.PathLike) -> Calibration:
    """Read a calibration folder written by :func:`calibrate` (``ValueError`` naming what is wrong)."""
    from relmon.analysis import load_estimator
    from relmon.records import read_record_files

    path = Path(path)
    meta_path = path / CALIBRATION_FILE
    if not meta_path.is_file():
        raise FileNotFoundError(
            f"{str(path)!r} is not a calibration folder (no {CALIBRATION_FILE}); "
            "fix: run 'relmon calibrate --out FOLDER' and pass that folder"
        )
    try:
        meta = json.loads(meta_path.read_text())
    except json.JSONDecodeError as err:
        raise ValueError(f"{meta_path} is not valid JSON: {err}") from err
    if meta.get("format") != CALIBRATION_FORMAT or meta.get("format_version") != CALIBRATION_VERSION:
        raise ValueError(f"{meta_path} is not a relmon calibration of format version {CALIBRATION_VERSION}")
    estimators = {name: load_estimator(path / rel) for name, rel in meta["estimators"].items()}
    reference = read_record_files([path / meta["reference"]])
    return Calibration(path, meta, estimators, reference)


def check_calibration(cal: Calibration, model_name: str, model_version: str, cfg: MonitorConfig) -> bool:
    """Raise :class:`CalibrationMismatchError` if ``cal`` does not fit; True if only the version differs
    (allowed by ``cfg.allow_version_mismatch``)."""
    from relmon.explain import canonical_method

    m = cal.meta
    if m["model"] != model_name:
        raise CalibrationMismatchError(
            f"calibration {str(cal.path)!r} was made for model {m['model']!r}, the job runs {model_name!r}; "
            "fix: run 'relmon calibrate' for this model"
        )
    settings = {
        "methods": [canonical_method(x) for x in cfg.methods],
        "region": cfg.region,
        "steps": cfg.steps,
    }
    made = {
        "methods": [canonical_method(x) for x in m["methods"]],
        "region": m["region"],
        "steps": m["steps"],
    }
    if settings != made:
        raise CalibrationMismatchError(
            f"calibration {str(cal.path)!r} was made with {made}, the job scores with {settings}: "
            "AOPC is not comparable; fix: use the calibration's settings or re-run 'relmon calibrate'"
        )
    if m["model_version"] != model_version:
        msg = (
            f"calibration {str(cal.path)!r} was made for version {m['model_version']!r} of {model_name!r}, "
            f"the job runs version {model_version!r}"
        )
        if not cfg.allow_version_mismatch:
            raise CalibrationMismatchError(
                msg + "; fix: re-run 'relmon calibrate' for this version (or set "
                "allow_version_mismatch: true to use it anyway, flagged)"
            )
        log.warning("%s; used anyway (allow_version_mismatch)", msg)
        return True
    return False
