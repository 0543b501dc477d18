"""What every job shares: errors, the job's model, its input stream and the scoring pass.

- :func:`load_job_model` — the model named by the config (embedded name or ``package.module:factory``);
- :func:`build_stream` — one window of inputs (the shipped sample, optionally shifted, or a folder);
- :func:`score_stream` — :class:`~relmon.lightning.RelevanceMonitor` in a real ``pl.Trainer.predict``.
"""

from __future__ import annotations

import logging
import warnings
from typing import TYPE_CHECKING, Any

import numpy as np
import pandas as pd

from relmon.config import MonitorConfig

if TYPE_CHECKING:
    from relmon.jobs.monitor import MonitorSummary

log = logging.getLogger("relmon.jobs")


class CalibrationMismatchError(ValueError):
    """The calibration was made for another model, version or scoring settings than the job's."""


class ServeError(RuntimeError):
    """The /metrics endpoint could not be started (address in use, permission, bad address)."""


class JobError(RuntimeError):
    """A run failed after its metrics were computed (e.g. the push); ``summary`` holds the results."""

    def __init__(self, message: str, summary: MonitorSummary):
        super().__init__(message)
        self.summary = summary


# --------------------------------------------------------------------------------------------------
# model, inputs and scoring


def load_job_model(cfg: MonitorConfig):
    """The model named by ``cfg.model``: an embedded name or ``package.module:factory`` (+ checkpoint)."""
    from relmon.models import list_embedded, load_embedded, load_model

    if ":" in cfg.model:
        return load_model(cfg.model, cfg.checkpoint)
    if cfg.checkpoint is not None:
        raise ValueError(
            f"checkpoint applies to 'package.module:factory' models, not to the embedded "
            f"model {cfg.model!r}; fix: remove checkpoint or name a factory"
        )
    if cfg.model not in list_embedded():
        raise ValueError(
            f"unknown embedded model {cfg.model!r}; choose one of {list_embedded()} or give "
            "'package.module:factory'"
        )
    return load_embedded(cfg.model)


def sample_images(
    n: int | None, shift: str | None = None, severity: int = 3, seed: int = 0, offset: int = 0
) -> tuple[Any, np.ndarray]:
    """``n`` shipped Fashion-MNIST images from ``offset`` (wrapping), float ``(n, 1, 28, 28)`` in [0, 1],
    optionally shifted, and their labels."""
    import torch

    from relmon.data import load_sample

    images, labels = load_sample()
    total = len(images)
    n = total if n is None else int(n)
    index = (np.arange(n) + offset) % total
    x = torch.from_numpy(images[index]).float().div_(255.0).unsqueeze(1)
    if shift is not None:
        from relmon.data.shifts import apply_shift

        x = apply_shift(x, shift, severity, seed=seed)
    return x, labels[index]


def build_stream(cfg: MonitorConfig, model):
    """The input stream of one window: the (shifted) shipped sample or a folder of images."""
    from relmon.data.streams import ImageFolderStream, TensorStream
    from relmon.models import get_preprocessing

    prep = get_preprocessing(model, "reading inputs")
    if cfg.input == "sample":
        x, labels = sample_images(cfg.n, cfg.shift, cfg.severity, cfg.seed)
        return TensorStream(x, labels, preprocessing=prep, stream=cfg.stream)
    return ImageFolderStream(
        cfg.input, preprocessing=prep, channels=cfg.channels, image_size=cfg.image_size, stream=cfg.stream
    )


def _quiet_lightning() -> None:
    for name in ("pytorch_lightning", "lightning.pytorch", "lightning_fabric", "lightning"):
        logging.getLogger(name).setLevel(logging.WARNING)
    warnings.filterwarnings("ignore", message=".*does not have many workers.*")
    warnings.filterwarnings("ignore", message=".*GPU available but not used.*")
    warnings.filterwarnings("ignore", message=".*treespec.*")


def score_stream(cfg: MonitorConfig, model, stream, progress: bool = False):
    """Run :class:`RelevanceMonitor` over ``stream`` in ``pl.Trainer.predict``: (records, window summary)."""
    import pytorch_lightning as pl

    from relmon.data.streams import StreamDataModule
    from relmon.jobs.signals import stop_callback
    from relmon.lightning import RelevanceMonitor
    from relmon.records import empty_records

    _quiet_lightning()
    monitor = RelevanceMonitor(
        model,
        methods=cfg.methods,
        region=cfg.region,
        steps=cfg.steps,
        sample_rate=cfg.sample_rate,
        max_samples=cfg.max_samples,
        seed=cfg.seed,
    )
    trainer = pl.Trainer(
        accelerator=cfg.accelerator,
        devices=1,
        logger=False,
        enable_checkpointing=False,
        enable_model_summary=False,
        enable_progress_bar=progress,
        callbacks=[stop_callback()],  # SIGTERM/SIGINT and run_timeout_seconds stop between batches
    )
    frames = trainer.predict(monitor, datamodule=StreamDataModule(stream, batch_size=cfg.batch_size)) or []
    frames = [f for f in frames if f is not None and len(f)]
    records = pd.concat(frames, ignore_index=True) if frames else empty_records()
    return records, monitor.last_summary or monitor.window_summary(), monitor
