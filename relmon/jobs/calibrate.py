"""``relmon calibrate``: labelled reference data (one clean window plus shifted windows) → a
calibration folder: fitted estimators (JSON), the clean window's records (the drift reference, Parquet)
and ``calibration.json`` (model, version, scoring settings, time).
"""

from __future__ import annotations

import os
import time
from pathlib import Path

import numpy as np

from relmon.config import MonitorConfig
from relmon.jobs.calibration import (
    CALIBRATION_FORMAT,
    CALIBRATION_VERSION,
    Calibration,
)
from relmon.jobs.common import load_job_model, sample_images, score_stream


def calibrate(cfg: MonitorConfig, out: str | os.PathLike, progress: bool = False) -> Calibration:
    """Score labelled windows (clean + every shift × severity) and fit ``cfg.estimators`` on them.

    Writes ``out/calibration.json``, ``out/reference.parquet`` (the clean window's records, the drift
    reference), ``out/records.parquet`` (every calibration record) and ``out/estimators/<name>.json``.
    """
    import torch

    from relmon.analysis import make_estimator
    from relmon.data.streams import TensorStream
    from relmon.models import get_preprocessing, model_info

    if cfg.input != "sample":
        raise ValueError(
            "calibrate reads the labelled shipped sample (input: sample); got input: "
            f"{cfg.input!r}; fix: set input: sample"
        )
    model = load_job_model(cfg)
    info = model_info(model)
    n = cfg.calibration_n
    windows = [("clean", None, 0)] + [
        (f"{s}/{sev}", s, sev) for s in cfg.calibration_shifts for sev in cfg.calibration_severities
    ]
    xs, ys = [], []
    for i, (_, shift, sev) in enumerate(windows):
        x, y = sample_images(n, shift, sev, seed=cfg.seed, offset=i * n)
        xs.append(x)
        ys.append(y)
    stream = TensorStream(
        torch.cat(xs),
        np.concatenate(ys),
        preprocessing=get_preprocessing(model),
        stream="calibration",
        window_size=n,
    )
    records, _, _ = score_stream(cfg, model, stream, progress=progress)
    names = {f"calibration:{i * n}": name for i, (name, _, _) in enumerate(windows)}
    records["window_id"] = records["window_id"].map(names)
    estimators = {name: make_estimator(name).fit(records) for name in cfg.estimators}
    import relmon

    meta = {
        "format": CALIBRATION_FORMAT,
        "format_version": CALIBRATION_VERSION,
        "created": time.time(),
        "relmon_version": relmon.__version__,
        "model": info.name,
        "model_version": info.version,
        "methods": list(cfg.methods),
        "region": cfg.region,
        "steps": cfg.steps,
        "seed": cfg.seed,
        "windows": [w[0] for w in windows],
        "n_per_window": n,
        "window_accuracy": {
            k: float(v)
            for k, v in records.drop_duplicates(["window_id", "sample_id"])
            .groupby("window_id")["correct"]
            .mean()
            .items()
        },
    }
    cal = Calibration(
        path=Path(out),
        meta=meta,
        estimators=estimators,
        reference=records[records["window_id"] == "clean"],
        records=records,
    )
    cal.save(out)
    return Calibration.load(out)
