"""What every job shares: errors, the job's model, its input stream and the scoring pass.

- :func:`load_job_model` — the model named by the config (embedded name or ``package.module:factory``);
- :func:`build_stream` — one window of inputs (the shipped sample, optionally shifted, or a folder);
- :func:`score_stream` — the scoring pass: the Lightning-free loop of :mod:`relmon.jobs.runner` (default)
  or :class:`~relmon.lightning.RelevanceMonitor` in a real ``pl.Trainer.predict`` (``runner: lightning``).
"""

from __future__ import annotations

import logging
import warnings
from typing import TYPE_CHECKING, Any

import numpy as np

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
    """The model the config declares, with its preprocessing and ``model``/``model_version`` labels.

    An embedded name (``fmnist_cnn``), or ``package.module:factory`` called with ``model_kwargs`` (the
    factory must be a function or ``nn.Module`` class returning an ``nn.Module``), loaded from a
    weights-only ``checkpoint`` or, with ``lightning_module``, from a Lightning checkpoint; its
    ``preprocessing`` attached. The version label defaults to a hash of the weights.
    """
    from relmon.models import (
        list_embedded,
        load_embedded,
        load_lightning_checkpoint,
        load_model,
        set_model_info,
    )
    from relmon.models.preprocessing import ATTRIBUTE

    if not cfg.is_embedded:
        prep = cfg.preprocessing_spec()
        kwargs = dict(cfg.model_kwargs or {})
        if cfg.lightning_module is not None:
            model = load_lightning_checkpoint(
                cfg.lightning_module, cfg.checkpoint, preprocessing=prep, model_attr=cfg.model_attr, **kwargs
            )
        else:
            model = load_model(cfg.model, cfg.checkpoint, preprocessing=prep, **kwargs)
        if getattr(model, ATTRIBUTE, None) is None:
            raise ValueError(
                f"model {cfg.model!r} declares no preprocessing (its input space); fix: set preprocessing: "
                "{mean: [...], std: [...], low: 0.0, high: 1.0} in the config (raw pixels scaled to [0, 1])"
            )
        name = cfg.model_name or (cfg.lightning_module or cfg.model).rpartition(":")[2]
        model = set_model_info(model, name, cfg.model_version)
        if cfg.classes is not None and cfg.image_size is not None:
            import torch

            check_classes(model, cfg.classes, torch.zeros(1, cfg.channels, cfg.image_size, cfg.image_size))
        return model
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
    model = load_embedded(cfg.model)
    if cfg.model_name or cfg.model_version:
        model = set_model_info(model, cfg.model_name, cfg.model_version)
    if cfg.classes is not None:
        import torch

        check_classes(model, cfg.classes, torch.zeros(1, 1, 28, 28))
    return model


def model_outputs(model, x) -> int:
    """Number of classes the model outputs, from one forward of ``x`` (raw images in [0, 1])."""
    import torch

    from relmon.models import get_preprocessing

    prep = get_preprocessing(model, "checking the model's classes")
    with torch.no_grad():
        out = model(prep.normalize(x[:1].float()))
    if not isinstance(out, torch.Tensor) or out.ndim != 2:
        shape = tuple(out.shape) if isinstance(out, torch.Tensor) else type(out).__name__
        raise ValueError(
            f"the model returned {shape} for one image; relmon needs class scores shaped (batch, classes); "
            "fix: name a factory whose forward returns logits (for a Lightning checkpoint: set model_attr to "
            "the attribute of the LightningModule that holds the classifier)"
        )
    return int(out.shape[1])


def check_stream_classes(model, classes, stream) -> None:
    """:func:`check_classes` on the first readable item of ``stream`` (already normalised)."""
    import copy


    counted = getattr(stream, "base", stream)  # only-new selections count on their base stream
    saved = {k: copy.copy(getattr(counted, k)) for k in ("errors", "bad_files") if hasattr(counted, k)}
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        items = []
        for i in range(min(len(stream), 16)):
            items.append(stream[i])
            if isinstance(items[-1], dict):
                break
    for k, v in saved.items():  # the scoring pass counts (and warns about) bad files once
        setattr(counted, k, v)
    for item in items:
        if isinstance(item, dict):
            check_classes(model, classes, item["x"].unsqueeze(0))
            return


def check_classes(model, classes, x, outputs: int | None = None) -> int:
    """Raise ``ValueError`` when ``classes`` does not match the model's output count on ``x`` (or
    ``outputs``, when the count is already known)."""
    k = model_outputs(model, x) if outputs is None else int(outputs)
    if classes is not None and len(classes) != k:
        raise ValueError(
            f"the config names {len(classes)} classes {list(classes)[:12]} but the model outputs {k} "
            "class scores; fix: list one class name per model output, in output order"
        )
    return k


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


def build_stream(cfg: MonitorConfig, model, listing: dict | None = None):
    """The input stream of one window: the (shifted) shipped sample or a folder of images (``listing``:
    the caller's ``fs.find(detail=True)`` of the folder, so it is not listed again)."""
    from relmon.data.streams import ImageFolderStream, TensorStream
    from relmon.models import get_preprocessing

    prep = get_preprocessing(model, "reading inputs")
    if cfg.input == "sample":
        x, labels = sample_images(cfg.n, cfg.shift, cfg.severity, cfg.seed)
        return TensorStream(x, labels, preprocessing=prep, stream=cfg.stream)
    return ImageFolderStream(
        cfg.input,
        preprocessing=prep,
        channels=cfg.channels,
        image_size=cfg.image_size,
        stream=cfg.stream,
        window=cfg.window,
        window_seconds=cfg.window_seconds,
        size_policy=cfg.size_policy,
        max_pixels=cfg.max_pixels,
        listing=listing,
    )


def input_size(stream) -> tuple[int, int] | None:
    """``(H, W)`` of the images a relmon stream yields (a folder's reference size, a tensor stream's
    shape; through only-new selections and Subsets); None when no image is readable."""
    from torch.utils.data import Subset

    while isinstance(stream, Subset) or hasattr(stream, "base"):
        stream = stream.dataset if isinstance(stream, Subset) else stream.base
    if hasattr(stream, "reference_size"):
        return stream.reference_size()
    x = getattr(stream, "x", None)
    return tuple(int(v) for v in x.shape[-2:]) if x is not None else None


def scoring_options(cfg: MonitorConfig, stream) -> dict:
    """The keyword arguments of the job's scorer (:class:`~relmon.scoring.BatchScorer`, or
    :class:`~relmon.lightning.RelevanceMonitor` with ``runner: lightning``) on ``stream``."""
    return dict(methods=cfg.methods, region=cfg.region, steps=job_steps(cfg, stream), sample_rate=cfg.sample_rate,
                max_samples=cfg.max_samples, seed=cfg.seed, step_stride=cfg.step_stride,
                max_batch_bytes=cfg.max_batch_bytes, random_fraction=cfg.random_fraction, threads=cfg.threads)


def job_steps(cfg: MonitorConfig, stream) -> int:
    """``L`` of the job on ``stream``: :meth:`MonitorConfig.resolve_steps` on the stream's image size
    (with ``fraction``; ``steps`` is a count and needs no size)."""
    if cfg.fraction is None and cfg.steps is not None:
        return int(cfg.steps)
    size = input_size(stream)
    if size is None:  # no readable image: nothing will be scored, any L does
        return 1
    return cfg.resolve_steps(*size)


def latest_window(stream) -> str | None:
    """The id of the newest window of an mtime-windowed stream (None: the stream is one window)."""
    from relmon.data.streams import window_indices

    if getattr(getattr(stream, "_windows", None), "window", None) != "mtime":
        return None
    return list(window_indices(stream))[-1]


def _quiet_lightning() -> None:
    for name in ("pytorch_lightning", "lightning.pytorch", "lightning_fabric", "lightning"):
        logging.getLogger(name).setLevel(logging.WARNING)
    warnings.filterwarnings("ignore", message=".*does not have many workers.*")
    warnings.filterwarnings("ignore", message=".*GPU available but not used.*")
    warnings.filterwarnings("ignore", message=".*treespec.*")


def score_stream(cfg: MonitorConfig, model, stream, progress: bool = False, window_id: str | None = None):
    """Score ``stream`` (only window ``window_id`` if given): ``(records, window summary, scorer)``.

    ``cfg.runner``: ``plain`` (default) runs :func:`relmon.jobs.runner.score_plain`, a one-process loop
    that imports neither Lightning nor torchmetrics; ``lightning`` runs
    :class:`~relmon.lightning.RelevanceMonitor` in ``pl.Trainer.predict`` (the third item is then the
    monitor). Both give the same records and summary.
    """
    if getattr(cfg, "runner", "plain") == "plain":
        from relmon.jobs.runner import score_plain

        return score_plain(cfg, model, stream, progress=progress, window_id=window_id)
    return score_stream_lightning(cfg, model, stream, progress=progress, window_id=window_id)


def score_stream_lightning(cfg: MonitorConfig, model, stream, progress: bool = False, window_id: str | None = None):
    """Run :class:`RelevanceMonitor` over ``stream`` (only window ``window_id`` if given) in
    ``pl.Trainer.predict``: (records, window summary, monitor)."""
    import pytorch_lightning as pl

    from relmon.data.streams import StreamDataModule
    from relmon.jobs.signals import stop_callback
    from relmon.lightning import RelevanceMonitor
    from relmon.records import empty_records

    _quiet_lightning()
    monitor = RelevanceMonitor(model, **scoring_options(cfg, stream))
    stop = stop_callback()  # SIGTERM/SIGINT and run_timeout_seconds stop between batches; keeps the records
    trainer = pl.Trainer(
        accelerator=cfg.accelerator,
        devices=1,
        logger=False,
        enable_checkpointing=False,
        enable_model_summary=False,
        enable_progress_bar=progress,
        callbacks=[stop],
    )
    data = StreamDataModule(stream, batch_size=cfg.batch_size, window_id=window_id)
    trainer.predict(monitor, datamodule=data, return_predictions=False)  # the frames are kept once, by `stop`
    records = stop.records()
    records = records if records is not None else empty_records()
    return records, monitor.last_summary or monitor.window_summary(), monitor
