"""The public Python API of the monitoring jobs; ``relmon calibrate`` / ``relmon monitor`` are thin
layers over the same code (:mod:`relmon.jobs`).

>>> cal = relmon.calibrate(model, "data/labelled/", classes=["cat", "dog"], calibration_n=200)
>>> cal.save("out/calibration")
>>> summary, records = relmon.monitor(model, "data/today/", calibration="out/calibration")
>>> summary.estimates["atc"]          # (estimate, lower, upper)
"""

from __future__ import annotations

import os
from collections.abc import Mapping
from typing import Any

from relmon.config import MonitorConfig


def _config(config: MonitorConfig | str | os.PathLike | Mapping | None, settings: dict[str, Any]):
    from relmon.config import config_from_dict, load_config

    if config is None:
        cfg = MonitorConfig()
    elif isinstance(config, MonitorConfig):
        cfg = config
    elif isinstance(config, Mapping):
        cfg = config_from_dict(config, where="config")
    else:
        cfg = load_config(config)
    # the model is given as an object: its factory fields do not apply
    prep = settings.pop("preprocessing", None)
    cfg = cfg.with_overrides(settings)
    return cfg, prep


def _prepare_model(model, cfg: MonitorConfig, prep):
    from torch import nn

    from relmon.jobs.model import load_job_model
    from relmon.models import Preprocessing, attach_preprocessing, set_model_info

    if model is None or isinstance(model, str):  # loaded from the config: preprocessing is a config field
        overrides = {"model": model, "preprocessing": prep}
        return load_job_model(cfg.with_overrides(overrides))
    if not isinstance(model, nn.Module):
        raise TypeError(f"model must be a torch.nn.Module (or a model name), got {type(model).__name__}")
    if prep is not None:
        if isinstance(prep, Mapping):
            prep = Preprocessing(**prep)
        attach_preprocessing(model, prep)
    if cfg.model_name or cfg.model_version:
        set_model_info(model, cfg.model_name, cfg.model_version)
    model.eval()
    return model


def _labelled(data, cfg: MonitorConfig):
    from relmon.data.labelled import LabelledImages, from_tensors, read_labelled
    from relmon.jobs.calibrate_job import sample_data

    if isinstance(data, LabelledImages):
        return data
    if isinstance(data, str) and data == "sample":
        return sample_data()
    if isinstance(data, (str, os.PathLike)):
        return read_labelled(data, cfg.classes, channels=cfg.channels, image_size=cfg.image_size)
    if isinstance(data, tuple) and len(data) == 2:
        return from_tensors(data[0], data[1], cfg.classes)
    raise TypeError(
        "data must be a folder with one sub-folder per class, a CSV/Parquet manifest (path, label), "
        f"an (images, labels) tuple or 'sample'; got {type(data).__name__}"
    )


def calibrate(
    model,
    data,
    *,
    config: MonitorConfig | str | os.PathLike | Mapping | None = None,
    out: str | os.PathLike | None = None,
    progress: bool = False,
    **settings: Any,
):
    """Calibrate ``model`` on labelled ``data``: returns a :class:`~relmon.jobs.Calibration`.

    Parameters
    ----------
    model:
        An ``nn.Module`` carrying its preprocessing (:func:`relmon.attach_preprocessing`, or pass
        ``preprocessing=relmon.Preprocessing(...)`` / a ``{mean, std, low, high}`` mapping here), or an
        embedded model's name.
    data:
        A folder with one sub-folder per class, a CSV/Parquet manifest with columns ``path`` and
        ``label``, an ``(images, labels)`` tuple (images ``(N, C, H, W)`` in [0, 1] before
        normalisation, labels class indices), or ``"sample"`` (the shipped Fashion-MNIST sample).
    config:
        A :class:`MonitorConfig`, a YAML file or a mapping; ``settings`` (any config field, e.g.
        ``calibration_n=200, classes=[...], steps=49``) override it.
    out:
        Also save the calibration folder there (else call ``.save(path)`` yourself).

    The calibration scores one clean window and one window per shift × severity of the data (see
    :mod:`relmon.jobs.calibrate_job`), fits the estimators and keeps the clean window's records as the
    drift reference. ``cal.meta`` records the data source, settings and windows.
    """
    from relmon.jobs.calibrate_job import calibrate_model

    cfg, prep = _config(config, dict(settings))
    m = _prepare_model(model, cfg, prep)
    return calibrate_model(m, _labelled(data, cfg), cfg, out=out, progress=progress)


def monitor(
    model,
    data,
    calibration=None,
    *,
    config: MonitorConfig | str | os.PathLike | Mapping | None = None,
    registry=None,
    progress: bool = False,
    **settings: Any,
):
    """Score one window of (unlabelled) ``data`` with ``model``: returns ``(MonitorSummary, records)``.

    ``data`` is a folder or fsspec URL of images, a tensor ``(N, C, H, W)`` of images in [0, 1]
    (before normalisation), an ``(images, labels)`` tuple (the summary then also holds the true
    accuracy), or ``"sample"``. ``calibration`` is a :class:`~relmon.jobs.Calibration` or a folder
    written by ``relmon calibrate`` / ``Calibration.save``; without it the estimate is the mean
    confidence and drift is not tested. ``records`` is a DataFrame of the relmon records schema
    (one row per sample and method). Nothing is written: use ``relmon monitor`` (or
    ``MonitorJob.run``) for the textfile, Pushgateway and records folder.
    """
    import torch

    from relmon.data.streams import TensorStream
    from relmon.jobs.monitor import MonitorJob
    from relmon.models import get_preprocessing

    settings = dict(settings)
    stream = None
    if isinstance(data, (str, os.PathLike)):
        settings["input"] = os.fspath(data)
    cfg, prep = _config(config, settings)
    m = _prepare_model(model, cfg, prep)
    if not isinstance(data, (str, os.PathLike)):
        labels = None
        if isinstance(data, tuple) and len(data) == 2:
            data, labels = data
        x = torch.as_tensor(data)
        stream = TensorStream(x, labels, preprocessing=get_preprocessing(m, "monitoring"), stream=cfg.stream)
    job = MonitorJob(cfg, registry=registry, progress=progress, model=m, calibration=calibration, stream=stream)
    return job.compute()


def _audit_images(data, cfg: MonitorConfig):
    """``(images, labels or None, classes, source)`` for the audit: a class-folder tree or manifest
    (labelled), a flat folder of images (unlabelled), an ``(images, labels)`` tuple or an images tensor."""
    from pathlib import Path

    from relmon.audit import AuditError
    from relmon.data.labelled import IMAGE_EXTENSIONS, _decode, _stack

    if isinstance(data, (str, os.PathLike)) and str(data) != "sample":
        path = Path(data)
        if path.is_dir() and not any(p.is_dir() and not p.name.startswith(".") for p in path.iterdir()):
            files = sorted(p for p in path.iterdir() if p.is_file() and p.suffix.lower() in IMAGE_EXTENSIONS)
            if not files:
                raise AuditError(
                    f"no images found in {str(path)!r} (extensions {', '.join(IMAGE_EXTENSIONS)}); fix: point the "
                    "audit at a folder of images, a class-folder tree or a CSV/Parquet manifest"
                )
            ids = [p.name for p in files]
            images = [_decode(p.read_bytes(), cfg.channels, cfg.image_size, str(p)) for p in files]
            return _stack(images, ids), None, cfg.classes, {"kind": "images", "path": str(path.resolve())}
    if isinstance(data, tuple) and len(data) == 2 and data[1] is None:
        return data[0], None, cfg.classes, {"kind": "tensors"}
    if not isinstance(data, (str, os.PathLike, tuple)) and not hasattr(data, "labels"):
        return data, None, cfg.classes, {"kind": "tensors"}
    lab = _labelled(data, cfg)
    return lab.images, lab.labels, lab.classes or cfg.classes, lab.source


def audit(
    model,
    data,
    *,
    config: MonitorConfig | str | os.PathLike | Mapping | None = None,
    out: str | os.PathLike | None = None,
    **options: Any,
):
    """Audit ``model`` for Clever-Hans shortcuts on ``data``: returns an :class:`~relmon.audit.AuditResult`.

    ``data`` is a class-folder tree or CSV/Parquet manifest (labelled), a flat folder of images
    (unlabelled), an ``(images, labels)`` tuple, an images tensor ``(N, C, H, W)`` in [0, 1], or
    ``"sample"``. The heatmap method is the config's first ``methods`` entry and the grid its
    ``region``; ``options`` are config fields (``classes``, ``region``, ...) or audit options of
    :func:`relmon.audit.run_audit` (``min_excess``, ``min_lift``, ``max_clusters``, ...). ``out``
    also writes the HTML page there. ``result.suspect_regions`` goes into the monitoring config.
    """
    import inspect

    from relmon.audit import run_audit, write_audit_html

    audit_keys = set(inspect.signature(run_audit).parameters) - {"model", "images", "labels", "classes"}
    audit_opts = {k: options.pop(k) for k in list(options) if k in audit_keys - {"method", "region", "batch_size", "seed"}}
    cfg, prep = _config(config, dict(options))
    m = _prepare_model(model, cfg, prep)
    images, labels, classes, source = _audit_images(data, cfg)
    from relmon.jobs.method_choice import is_auto, resolve_auto

    if is_auto(cfg.methods):  # no calibration here: the fallback of methods: auto
        import torch

        cfg = resolve_auto(cfg, m, None, torch.as_tensor(images[:1]).float())  # a shape for the LRP check
    result = run_audit(m, images, labels, classes=classes, method=cfg.methods[0], region=cfg.region,
                       batch_size=cfg.batch_size, seed=cfg.seed, **audit_opts)
    result.settings["data"] = source
    if out is not None:
        write_audit_html(out, result)
    return result


__all__ = ["audit", "calibrate", "monitor"]
