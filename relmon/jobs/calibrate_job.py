"""``relmon calibrate``: labelled reference data (one clean window plus shifted windows) → a
calibration folder: fitted estimators (JSON), the clean window's records (the drift reference, Parquet)
and ``calibration.json`` (model, version, data source, scoring settings, windows, time).

The labelled data is the user's (``calibration_data``: a class-folder tree or a CSV/Parquet manifest,
or tensors through :func:`relmon.calibrate`); the shipped Fashion-MNIST sample is the default only for
the embedded models. The windows are drawn from a seeded shuffle of the labelled images: the clean
window takes the first ``calibration_n``, each shift × severity window the next ``calibration_n``
with the shift applied in raw ``[0, 1]`` image space (before normalisation). When there are fewer
than ``calibration_n × windows`` images the windows wrap around the shuffled list (reusing images,
never within one window) and a warning says how many images disjoint windows need.
"""

from __future__ import annotations

import logging
import os
import time
import warnings
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
import torch

import relmon
from relmon.config import ConfigError, MonitorConfig
from relmon.data import load_sample
from relmon.data.labelled import from_tensors, read_labelled
from relmon.data.shifts import apply_shift
from relmon.data.streams import TensorStream
from relmon.identity import model_info
from relmon.jobs.calibration import (
    CALIBRATION_FORMAT,
    CALIBRATION_VERSION,
    Calibration,
)
from relmon.jobs.model import check_classes, load_job_model, model_outputs
from relmon.jobs.scoring import score_stream
from relmon.preprocessing import get_preprocessing

log = logging.getLogger("relmon.jobs")

SETTINGS_KEYS = (
    "methods",
    "region",
    "steps",
    "fraction",
    "seed",
    "step_stride",
    "sample_rate",
    "max_samples",
    "calibration_n",
    "method_candidates",
    "method_table_n",
    "calibration_shifts",
    "calibration_severities",
    "shortcut_variants",
    "shortcut_shares",
    "estimators",
    "channels",
    "image_size",
    "suspect_regions",  # issue 19: the location columns of the drift reference were scored with these
)


class CalibrationDataWarning(UserWarning):
    """The labelled data is too small for disjoint calibration windows (images are reused)."""


def sample_data():
    """The shipped labelled Fashion-MNIST sample as :class:`~relmon.data.labelled.LabelledImages`."""
    images, labels = load_sample()
    data = from_tensors(images, labels)
    data.source.update(kind="sample", path="relmon.data.load_sample()")
    return data


def resolve_labelled_data(cfg: MonitorConfig):
    """The labelled data the config names: ``calibration_data``, else the shipped sample for an
    embedded model; a user model without labelled data is a clear error."""
    if cfg.calibration_data is not None:
        return read_labelled(cfg.calibration_data, cfg.classes, channels=cfg.channels, image_size=cfg.image_size)
    if cfg.is_embedded:
        return sample_data()
    raise ConfigError(
        f"model {cfg.lightning_module or cfg.model!r} is not an embedded model, and the shipped sample is "
        "Fashion-MNIST: calibrating on it would give meaningless estimates; fix: set calibration_data to "
        "your labelled images — a folder with one sub-folder per class, or a CSV/Parquet manifest with "
        "columns path and label (flag --calibration-data)"
    )


def plan_windows(cfg: MonitorConfig, n_images: int) -> tuple[list[tuple[str, str | None, int]], int, bool]:
    """``(windows, n per window, reused)``: the clean window, one per shift × severity and one per shortcut
    variant × share (``shortcut_<variant>/<share>``: its shift is ``shortcut_<variant>``, its "severity"
    the share; :mod:`relmon.jobs.shortcut_windows`)."""
    from relmon.jobs.shortcut_windows import shortcut_window_plan

    windows = [("clean", None, 0)] + [
        (f"{s}/{sev}", s, sev) for s in cfg.calibration_shifts for sev in cfg.calibration_severities
    ] + [(name, f"shortcut_{v}", share) for name, v, share in shortcut_window_plan(cfg.shortcut_variants,
                                                                                   cfg.shortcut_shares)]
    n = cfg.calibration_n
    need = n * len(windows)
    if n_images >= need:
        return windows, n, False
    if n_images < n:
        warnings.warn(
            f"calibration_n is {n} but only {n_images} labelled images were given: every window uses all "
            f"{n_images} images (the shifted windows are shifted copies of the clean one); disjoint "
            f"windows need calibration_n x windows = {n} x {len(windows)} = {need} images",
            CalibrationDataWarning,
            stacklevel=3,
        )
        return windows, n_images, True
    warnings.warn(
        f"calibration needs calibration_n x windows = {n} x {len(windows)} = {need} labelled images for "
        f"disjoint windows, got {n_images}: the windows wrap around a seeded shuffle of the images, so "
        "shifted windows reuse images of other windows (no image twice within a window); give more "
        "labelled images or lower calibration_n / the shifts",
        CalibrationDataWarning,
        stacklevel=3,
    )
    return windows, n, True


def calibrate_model(model, data, cfg: MonitorConfig, out: str | os.PathLike | None = None, progress: bool = False):
    """Calibrate ``model`` (with preprocessing attached) on labelled ``data``
    (:class:`~relmon.data.labelled.LabelledImages`): score the windows, fit ``cfg.estimators``.

    Returns the :class:`Calibration`; with ``out`` it is also saved there (and read back).
    """
    _check_estimator_names(cfg.estimators)  # before the (costly) scoring
    from relmon.analysis.estimators import LOCATION_ESTIMATORS

    if not cfg.shortcut_variants and (named := [e for e in cfg.estimators if e in LOCATION_ESTIMATORS]):
        raise ConfigError(f"estimators {named} learn from the shortcut calibration windows, but shortcut_variants is "
                          "not set; fix: set suspect_regions and shortcut_variants (e.g. [remove, shuffle]), or "
                          "remove them from estimators")
    prep = get_preprocessing(model, "calibration")
    info = model_info(model)
    classes = data.classes if data.classes is not None else cfg.classes
    if data.classes is not None and cfg.classes is not None and list(data.classes) != list(cfg.classes):
        raise ValueError(
            f"the labelled data's classes {data.classes} differ from the configured classes {list(cfg.classes)}; "
            "fix: make them the same (the model's class names in output order)"
        )
    k = model_outputs(model, data.images[:1])
    if data.source.get("kind") == "folder" and cfg.classes is None and len(data.classes) != k:
        raise ValueError(
            f"the labelled folder has {len(data.classes)} class sub-folders {data.classes[:12]} but the model "
            f"outputs {k} classes; fix: set classes: the model's {k} class names in output order (the "
            "sub-folders are matched to them by name)"
        )
    check_classes(model, classes, data.images[:1], outputs=k)
    if len(data.labels) and int(data.labels.max()) >= k:
        raise ValueError(
            f"labels go up to {int(data.labels.max())} but the model outputs {k} classes; "
            "fix: give labels in 0..K-1 of the model's output"
        )
    height, width = (int(v) for v in data.images.shape[-2:])
    steps = cfg.resolve_steps(height, width)  # L: the monitor resolves the same from the calibration's size
    n_images = len(data)
    windows, n, reused = plan_windows(cfg, n_images)
    order = np.random.default_rng(cfg.seed).permutation(n_images)
    # issue 21 item 6: every candidate method's paired AOPC gap on clean images; methods: auto picks one
    from relmon.jobs.method_choice import calibration_methods

    table_images = data.images[torch.as_tensor(order[: max(1, min(cfg.method_table_n, n_images))])]
    cfg, method_selection = calibration_methods(cfg, model, table_images, prep, progress=progress)
    mask = None
    if cfg.shortcut_variants:
        from relmon.jobs.shortcut_windows import break_shortcut, shortcut_mask

        mask = shortcut_mask(cfg, height, width)
    xs, ys, ids, used = [], [], [], {}
    for i, (name, shift, sev) in enumerate(windows):
        index = order[(i * n + np.arange(n)) % n_images]
        x = data.images[torch.as_tensor(index)]
        if shift is not None and shift.startswith("shortcut_"):
            x = break_shortcut(x, mask, shift[len("shortcut_"):], float(sev), seed=cfg.seed + i, low=float(prep.low))
        elif shift is not None:
            x = apply_shift(x, shift, sev, seed=cfg.seed + i)
        xs.append(x)
        ys.append(data.labels[index])
        ids.extend(data.ids[j] if shift is None else f"{data.ids[j]}@{name}" for j in index)
        used[name] = {"n": int(n), "first": int((i * n) % n_images)}
    stream = TensorStream(
        torch.cat(xs), np.concatenate(ys), ids=ids, preprocessing=prep, stream="calibration", window_size=n
    )
    records, _, _ = score_stream(cfg, model, stream, progress=progress)
    names = {f"calibration:{i * n}": name for i, (name, _, _) in enumerate(windows)}
    records["window_id"] = records["window_id"].map(names)
    from relmon.analysis.estimators import LOCATION_ESTIMATORS

    # the other estimators and their selection see the windows a calibration without shortcut_variants
    # has: the default they pick is the headline's fallback (outside the shortcut windows' envelope and
    # when the unexplained-shift gate fires), so it must be today's default, not one the shortcut
    # windows swayed (on planted shortcuts that swayed choice erred 0.22-0.25 on contrast windows where
    # today's erred 0.08-0.09: docs/shortcuts.md)
    ordinary = records
    if cfg.shortcut_variants:
        from relmon.jobs.shortcut_windows import PREFIX

        ordinary = records[~records["window_id"].astype(str).str.startswith(PREFIX)]
    estimators, default, validation = fit_and_select(ordinary, [e for e in cfg.estimators if e not in LOCATION_ESTIMATORS])
    if cfg.shortcut_variants:  # issue 19: the shortcut-aware estimators learn from the shortcut windows
        from relmon.jobs.shortcut_windows import fit_shortcut_estimators

        estimators, default, validation = fit_shortcut_estimators(records, estimators, default, validation)
    from relmon.analysis.unexplained import UnexplainedShiftGate

    # None without location features; when it fires the headline falls back to the default relmon chose
    # without the shortcut machinery (what the headline is without shortcut_variants)
    gate = UnexplainedShiftGate.fit(records, fallback=validation.get("default_before_shortcut", default))
    settings = {key: getattr(cfg, key) for key in SETTINGS_KEYS}
    settings = {k: list(v) if isinstance(v, tuple) else v for k, v in settings.items()}
    meta = {
        "format": CALIBRATION_FORMAT,
        "format_version": CALIBRATION_VERSION,
        "created": time.time(),
        "relmon_version": relmon.__version__,
        "model": info.name,
        "model_version": info.version,
        "methods": list(cfg.methods),  # resolved: methods: auto is the method_selection's choice
        "method_selection": method_selection,
        "region": cfg.region,
        "steps": steps,  # the resolved L (also with fraction)
        "fraction": cfg.fraction,
        "input_size": [height, width],
        "seed": cfg.seed,
        "classes": list(classes) if classes is not None else None,
        "preprocessing": prep.to_dict(),
        "data": dict(data.source),
        "settings": settings,
        "windows": [w[0] for w in windows],
        "n_per_window": int(n),
        "windows_reuse_images": reused,
        "window_images": used,
        "default_estimator": default,
        "shortcut_variants": list(cfg.shortcut_variants),
        "shortcut_shares": list(cfg.shortcut_shares) if cfg.shortcut_variants else [],
        "unexplained_shift_gate": gate.to_dict() if gate is not None else None,
        "validation": validation,
        "window_accuracy": {
            k: float(v)
            for k, v in records.drop_duplicates(["window_id", "sample_id"])
            .groupby("window_id")["correct"]
            .mean()
            .items()
        },
    }
    from relmon.analysis.alerts import reference_warning  # the alert threshold's clean reference is too small

    if meta["window_accuracy"].get("clean") is not None and (why := reference_warning(meta["window_accuracy"]["clean"], n)):
        log.warning("%s", why)
    cal = Calibration(
        path=Path(out) if out is not None else None,
        meta=meta,
        estimators=estimators,
        reference=records[records["window_id"] == "clean"],
        records=records,
    )
    from relmon.distributed import env_rank

    if out is None or env_rank() != 0:  # under DDP every rank fitted the same; rank 0 writes
        return cal
    cal.save(out)
    return Calibration.load(out)


def calibrate(cfg: MonitorConfig, out: str | os.PathLike, progress: bool = False) -> Calibration:
    """``relmon calibrate``: the config's model and labelled data → the calibration folder ``out``.

    Writes ``out/calibration.json``, ``out/reference.parquet`` (the clean window's records, the drift
    reference), ``out/records.parquet`` (every calibration record) and ``out/estimators/<name>.json``.
    """
    data = resolve_labelled_data(cfg)
    model = load_job_model(cfg)
    return calibrate_model(model, data, cfg, out, progress=progress)


#: Name (and metric label) under which a "median of the best three" default is stored.
MEDIAN_LABEL = "median_of_best3"


def _json_safe(value):
    """``value`` with NaN/inf floats as None and numpy scalars as Python ones (strict JSON)."""
    if isinstance(value, dict):
        return {str(k): _json_safe(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [_json_safe(v) for v in value]
    if isinstance(value, (np.floating, float)):
        return float(value) if np.isfinite(value) else None
    if isinstance(value, np.integer):
        return int(value)
    return value


def _check_estimator_names(names) -> None:
    """Refuse unknown estimator names up front (select_estimator would only list them as failed)."""
    from relmon.analysis import make_estimator

    if not names:
        raise ConfigError("config field 'estimators' is empty; fix: name at least one, e.g. [atc]")
    for name in names:
        try:
            make_estimator(name)
        except ValueError as err:
            raise ConfigError(f"config field 'estimators': {err}") from err


def fit_and_select(records: pd.DataFrame, candidates) -> tuple[dict[str, Any], str, dict[str, Any]]:
    """Fit ``candidates`` on the calibration records and choose the default by leave-one-shift-type-out
    validation on these same (labelled, calibration) windows — :func:`relmon.analysis.selection.select_estimator`.

    Returns (name → fitted estimator, the default's name, the validation table as JSON-ready dict).
    A median-of-best-three default is stored as :data:`MEDIAN_LABEL` (its members in the table).
    With fewer than two shift types there is nothing to validate on: every candidate is fitted and the
    first one is the default (``validation["chosen_by"]`` says so).
    """
    from relmon.analysis import make_estimator
    from relmon.analysis.estimators import MEDIAN_PREFIX
    from relmon.analysis.selection import select_estimator

    shift_types = {str(w).split("/", 1)[0] for w in records["window_id"].unique()} - {"clean"}
    if len(shift_types) < 2:
        fitted = {name: make_estimator(name).fit(records) for name in candidates}
        return fitted, list(candidates)[0], {"chosen_by": "first candidate (fewer than 2 shift types)"}
    sel = select_estimator(records, candidates=list(candidates))
    fitted = {(MEDIAN_LABEL if n.startswith(MEDIAN_PREFIX) else n): est for n, est in sel.fitted.items()}
    default = MEDIAN_LABEL if sel.chosen.startswith(MEDIAN_PREFIX) else sel.chosen
    validation = {
        "chosen_by": f"lowest {'worst per-type' if sel.criterion == 'worst' else 'mean'} absolute error over "
                     "held-out shift types (leave-one-shift-type-out)",
        "criterion": sel.criterion,
        "chosen": sel.chosen,
        "default_members": sel.members,  # the median's estimators, or the one chosen
        # held-out shift types whose interval coverage is below 0.5: estimates unreliable under them
        "unreliable_under": list(getattr(fitted[default], "uncovered_shift_types_", [])),
        "summary": _json_safe(sel.summary.reset_index(names="estimator").to_dict(orient="records")),
        "per_shift_type": _json_safe(sel.table.to_dict(orient="records")),
        "errors": dict(sel.errors),
    }
    return fitted, default, validation
