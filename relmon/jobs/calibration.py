"""A calibration folder: fitted estimators, the drift reference and ``calibration.json``.

A calibration made for another model *name* or other scoring settings (methods, region, steps) is
always refused (:class:`CalibrationMismatchError`); one made for another *version* of the same model
is refused unless ``allow_version_mismatch`` is set, in which case the job logs a warning and the
summary's ``calibration_version_mismatch`` is True.
"""

from __future__ import annotations

import hashlib
import json
import logging
import math
import os
import shutil
import tempfile
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pandas as pd

from relmon.config import AUTO_METHODS, MonitorConfig
from relmon.explain import canonical_method
from relmon.jobs.errors import CalibrationMismatchError
from relmon.records import read_record_files, write_records

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
        """Write the calibration folder ``path`` as a unit; returns it.

        Everything is written to a temporary sibling folder, with ``manifest.json`` holding the sha256 of
        every file, then renamed into place (an existing calibration at ``path`` is renamed aside first
        and deleted after): a reader sees the old calibration or the new one, never a mix, and a write
        killed halfway leaves ``path`` as it was (plus a ``.<name>.tmp-*`` folder that the next save
        removes). ``path`` must not be a non-empty folder that is not a calibration.
        """
        out = Path(path)
        parent = out.parent
        parent.mkdir(parents=True, exist_ok=True)
        if out.exists() and not out.is_dir():
            raise CalibrationError(
                f"calibration path {str(out)!r} is a file; fix: pass a folder path for the calibration"
            )
        if out.is_dir() and any(out.iterdir()) and not (out / CALIBRATION_FILE).exists():
            raise CalibrationError(
                f"{str(out)!r} is a non-empty folder that is not a calibration; refusing to replace it; "
                "fix: pass a new or empty folder (or an existing calibration folder to replace it)"
            )
        _remove_leftovers(out)
        tmp = Path(tempfile.mkdtemp(prefix=f".{out.name}.tmp-", dir=parent))
        try:
            (tmp / "estimators").mkdir()
            files = {}
            for name, est in self.estimators.items():
                est.save(tmp / "estimators" / f"{name}.json")
                files[name] = f"estimators/{name}.json"
            write_records(self.reference, tmp / REFERENCE_FILE)
            if self.records is not None:
                write_records(self.records, tmp / RECORDS_FILE)
            meta = {**self.meta, "estimators": files, "reference": REFERENCE_FILE}
            (tmp / CALIBRATION_FILE).write_text(json.dumps(meta, indent=2))
            manifest = {
                "format": MANIFEST_FORMAT,
                "files": {rel: _sha256(tmp / rel) for rel in _files_of(tmp)},
            }
            (tmp / MANIFEST_FILE).write_text(json.dumps(manifest, indent=2, sort_keys=True))
            _fsync_tree(tmp)
            old = None
            if out.exists():
                old = Path(tempfile.mkdtemp(prefix=f".{out.name}.old-", dir=parent))
                os.replace(out, old / "calibration")
            os.replace(tmp, out)
            from relmon.records import fsync_dir

            fsync_dir(parent)  # the renames survive a crash
        except BaseException:
            shutil.rmtree(tmp, ignore_errors=True)
            raise
        if old is not None:
            shutil.rmtree(old, ignore_errors=True)
        self.path, self.meta = out, meta
        return out

    @classmethod
    def load(cls, path: str | os.PathLike) -> Calibration:
        """Read a calibration folder written by :meth:`save` (``ValueError`` naming what is wrong)."""
        return load_calibration(path)


MANIFEST_FILE = "manifest.json"
MANIFEST_FORMAT = "relmon-calibration-manifest"
_FIX = "fix: re-run 'relmon calibrate --out FOLDER' and pass that folder"


class CalibrationError(ValueError):
    """A calibration folder is incomplete, altered or malformed (the message names the file and fix)."""


def _files_of(folder: Path) -> list[str]:
    return sorted(
        p.relative_to(folder).as_posix()
        for p in folder.rglob("*")
        if p.is_file() and p.name != MANIFEST_FILE
    )


def _sha256(path: Path) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for chunk in iter(lambda: f.read(1 << 20), b""):
            h.update(chunk)
    return h.hexdigest()


def _fsync_tree(folder: Path) -> None:
    """fsync every file under ``folder`` and every folder (their entries), ``folder`` itself last."""
    from relmon.records import fsync_dir

    for p in folder.rglob("*"):
        if p.is_file():
            with open(p, "rb") as f:
                os.fsync(f.fileno())
    for p in sorted((p for p in folder.rglob("*") if p.is_dir()), key=lambda p: len(p.parts), reverse=True):
        fsync_dir(p)
    fsync_dir(folder)


def _remove_leftovers(out: Path) -> None:
    """Delete ``.<name>.tmp-*`` / ``.<name>.old-*`` siblings left by saves that were killed."""
    for p in out.parent.glob(f".{out.name}.tmp-*"):
        shutil.rmtree(p, ignore_errors=True)
    if out.is_dir():  # an old-* folder is only garbage once the new calibration is in place
        for p in out.parent.glob(f".{out.name}.old-*"):
            shutil.rmtree(p, ignore_errors=True)


def _verify_manifest(path: Path) -> None:
    mpath = path / MANIFEST_FILE
    if not mpath.is_file():
        raise CalibrationError(
            f"calibration {str(path)!r} has no {MANIFEST_FILE} (written by an older relmon, or copied "
            f"file by file), so its files cannot be checked to belong together; {_FIX}"
        )
    try:
        manifest = json.loads(mpath.read_text())
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as err:
        raise CalibrationError(f"{mpath} cannot be read as JSON ({err}); {_FIX}") from None
    listed = manifest.get("files") if isinstance(manifest, dict) else None
    if not isinstance(listed, dict) or manifest.get("format") != MANIFEST_FORMAT:
        raise CalibrationError(f"{mpath} is not a relmon calibration manifest; {_FIX}")
    present = set(_files_of(path))
    missing = sorted(set(listed) - present)
    if missing:
        raise CalibrationError(f"calibration {str(path)!r} is incomplete: {missing} missing; {_FIX}")
    extra = sorted(present - set(listed))
    if extra:
        raise CalibrationError(
            f"calibration {str(path)!r} holds files its manifest does not list: {extra} (a mix of two "
            f"calibrations?); {_FIX}"
        )
    changed = sorted(rel for rel, digest in listed.items() if _sha256(path / rel) != digest)
    if changed:
        raise CalibrationError(
            f"calibration {str(path)!r}: {changed} do not match the sha256 in {MANIFEST_FILE} (a mix of two "
            f"calibrations, or edited by hand); {_FIX}"
        )


_REQUIRED = {
    "format": str,
    "format_version": int,
    "created": (int, float),
    "model": str,
    "model_version": str,
    "methods": list,
    "region": int,
    "steps": int,
    "estimators": dict,
    "reference": str,
}


def _check_meta(meta: Any, meta_path: Path) -> dict[str, Any]:
    if not isinstance(meta, dict):
        raise CalibrationError(
            f"{meta_path} must hold a JSON object (the calibration's metadata), got a "
            f"{type(meta).__name__}; {_FIX}"
        )
    if meta.get("format") != CALIBRATION_FORMAT or meta.get("format_version") != CALIBRATION_VERSION:
        raise CalibrationError(
            f"{meta_path} is not a relmon calibration of format version {CALIBRATION_VERSION}; {_FIX}"
        )
    for key, kind in _REQUIRED.items():
        if key not in meta:
            raise CalibrationError(f"{meta_path} lacks the field {key!r}; {_FIX}")
        value = meta[key]
        if isinstance(value, bool) or not isinstance(value, kind):
            raise CalibrationError(
                f"{meta_path}: field {key!r} must be of type "
                f"{getattr(kind, '__name__', 'number')}, got {value!r}; {_FIX}"
            )
    if not math.isfinite(float(meta["created"])):
        raise CalibrationError(f"{meta_path}: field 'created' must be a finite time, got {meta['created']!r}; {_FIX}")
    if not all(isinstance(m, str) for m in meta["methods"]):
        raise CalibrationError(f"{meta_path}: field 'methods' must be a list of strings; {_FIX}")
    from relmon.calibration_checks import meta_problems

    problems = meta_problems(meta)
    if problems:
        raise CalibrationError(f"{meta_path}: {'; '.join(problems)}; {_FIX}")
    for name, rel in meta["estimators"].items():
        if not isinstance(rel, str) or rel.startswith("/") or ".." in Path(rel).parts:
            raise CalibrationError(
                f"{meta_path}: estimator {name!r} must name a file inside the folder, got {rel!r}; {_FIX}"
            )
    return meta


def load_calibration(path: str | os.PathLike) -> Calibration:
    """Read a calibration folder written by :meth:`Calibration.save` (:class:`CalibrationError` — a
    ``ValueError`` — naming the file, the problem and the fix; ``FileNotFoundError`` without one).

    The manifest's sha256 of every file is checked first, so a folder mixing two calibrations (a save
    killed halfway by an older relmon, a hand copy) is refused.
    """
    from relmon.analysis import load_estimator  # scikit-learn / scipy: only when a calibration is read

    path = Path(path)
    meta_path = path / CALIBRATION_FILE
    if not meta_path.is_file():
        aside = sorted(path.parent.glob(f".{path.name}.old-*/calibration")) if path.name else []
        hint = (
            f" (a save was interrupted while replacing it: the previous calibration is in {str(aside[-1])!r})"
            if aside
            else ""
        )
        raise FileNotFoundError(
            f"{str(path)!r} is not a calibration folder (no {CALIBRATION_FILE}){hint}; {_FIX}"
        )
    _verify_manifest(path)
    try:
        meta = json.loads(meta_path.read_text())
    except (UnicodeDecodeError, json.JSONDecodeError) as err:
        raise CalibrationError(f"{meta_path} is not valid JSON: {err}; {_FIX}") from None
    meta = _check_meta(meta, meta_path)
    estimators = {}
    for name, rel in meta["estimators"].items():
        try:
            estimators[name] = load_estimator(path / rel)
        except (KeyError, TypeError) as err:
            raise CalibrationError(f"estimator file {str(path / rel)!r} is malformed ({type(err).__name__}: "
                                   f"{err}); {_FIX}") from None
    try:
        reference = read_record_files([path / meta["reference"]])
    except (OSError, ValueError) as err:
        raise CalibrationError(
            f"the drift reference {str(path / meta['reference'])!r} cannot be read ({err}); {_FIX}"
        ) from None
    return Calibration(path, meta, estimators, reference)


def calibration_steps(cal: Calibration, cfg: MonitorConfig) -> int:
    """The job's ``L`` on the calibration's images: ``steps``, or ``fraction`` resolved on the
    calibration's ``input_size`` (the model's input size; a calibration without one — made before the
    field existed — is read with the job's ``image_size``, else 28x28 for the embedded models)."""
    if cfg.fraction is None and cfg.steps is not None:
        return int(cfg.steps)
    size = cal.meta.get("input_size")
    if not size:
        if cfg.image_size is None and not cfg.is_embedded:
            raise CalibrationMismatchError(
                f"calibration {str(cal.path)!r} does not record its image size, so fraction={cfg.fraction} cannot "
                f"be turned into a number of steps to compare with its L = {cal.meta['steps']}; fix: set "
                f"steps: {cal.meta['steps']} (and fraction: null), set image_size, or re-run 'relmon calibrate'"
            )
        size = [cfg.image_size or 28] * 2
    return cfg.resolve_steps(int(size[0]), int(size[1]))


def _check_suspect_regions(cal: Calibration, cfg: MonitorConfig) -> None:
    """The location features are comparable only on the same suspect regions (issue 19): other regions
    are an error, regions on one side only a warning (the drift test then leaves the features out)."""
    made = (cal.meta.get("settings") or {}).get("suspect_regions")
    made = [list(r) for r in made] if made else None
    mine = [list(r) for r in cfg.suspect_regions] if cfg.suspect_regions else None
    if made == mine:
        return
    if made and mine:
        raise CalibrationMismatchError(
            f"calibration {str(cal.path)!r} was made with suspect_regions {made}, the job uses {mine}: the "
            "location features are not comparable; fix: use the calibration's suspect_regions or re-run "
            "'relmon calibrate' with these")
    log.warning("calibration %r was made %s suspect_regions, the job %s them: the location features are not "
                "tested for drift against it; fix: re-run 'relmon calibrate' with the job's suspect_regions",
                str(cal.path), "with" if made else "without", "does not use" if made else "uses")


def check_calibration(cal: Calibration, model_name: str, model_version: str, cfg: MonitorConfig) -> bool:
    """Raise :class:`CalibrationMismatchError` if ``cal`` does not fit; True if only the version differs
    (allowed by ``cfg.allow_version_mismatch``)."""
    m = cal.meta
    if m["model"] != model_name:
        raise CalibrationMismatchError(
            f"calibration {str(cal.path)!r} was made for model {m['model']!r}, the job runs {model_name!r}; "
            "fix: run 'relmon calibrate' for this model"
        )
    auto = tuple(cfg.methods) == AUTO_METHODS  # methods: auto scores with the calibration's choice
    settings = {
        "methods": [canonical_method(x) for x in (m["methods"] if auto else cfg.methods)],
        "region": cfg.region,
        "steps": calibration_steps(cal, cfg),
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
    _check_suspect_regions(cal, cfg)
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
