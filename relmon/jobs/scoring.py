"""The job's scoring pass: the scorer's settings from the config (:func:`scoring_options`, with the L
of :func:`job_steps`) and :func:`score_stream`, which runs the Lightning-free loop of
:mod:`relmon.jobs.runner` (default) or :class:`~relmon.lightning.RelevanceMonitor` in a real
``pl.Trainer.predict`` (``runner: lightning``; Lightning is imported only then).
"""

from __future__ import annotations

import logging
import warnings

from relmon.config import MonitorConfig
from relmon.jobs.inputs import input_size
from relmon.jobs.method_auto import is_auto, resolve_auto
from relmon.jobs.runner import score_plain
from relmon.jobs.signals import stop_callback
from relmon.records import empty_records


def scoring_options(cfg: MonitorConfig, stream) -> dict:
    """The keyword arguments of the job's scorer (:class:`~relmon.scoring.BatchScorer`, or
    :class:`~relmon.lightning.RelevanceMonitor` with ``runner: lightning``) on ``stream``."""
    return dict(methods=cfg.methods, region=cfg.region, steps=job_steps(cfg, stream), sample_rate=cfg.sample_rate,
                max_samples=cfg.max_samples, seed=cfg.seed, step_stride=cfg.step_stride,
                max_batch_bytes=cfg.max_batch_bytes, random_fraction=cfg.random_fraction, threads=cfg.threads,
                suspect_regions=job_suspect_regions(cfg, stream))


def job_suspect_regions(cfg: MonitorConfig, stream):
    """``cfg.suspect_regions``, checked against the stream's image size (a ConfigError naming the field)."""
    if cfg.suspect_regions is None:
        return None
    size = input_size(stream)
    if size is not None:
        from relmon.config import ConfigError
        from relmon.suspect_regions import SuspectRegionsError, check_regions_fit

        try:
            check_regions_fit(cfg.suspect_regions, *size)
        except SuspectRegionsError as err:
            raise ConfigError(str(err)) from None
    return cfg.suspect_regions


def job_steps(cfg: MonitorConfig, stream) -> int:
    """``L`` of the job on ``stream``: :meth:`MonitorConfig.resolve_steps` on the stream's image size
    (with ``fraction``; ``steps`` is a count and needs no size)."""
    if cfg.fraction is None and cfg.steps is not None:
        return int(cfg.steps)
    size = input_size(stream)
    if size is None:  # no readable image: nothing will be scored, any L does
        return 1
    return cfg.resolve_steps(*size)


def _example(stream, channels: int = 1):
    """A zero batch of one image shaped like ``stream``'s (None when its size is unknown): enough for the
    LRP support check of the ``methods: auto`` fallback."""
    import torch

    size = input_size(stream)
    if size is None:
        return None
    base = stream
    while hasattr(base, "dataset") or hasattr(base, "base"):
        base = getattr(base, "dataset", None) or base.base
    x = getattr(base, "x", None)
    return torch.zeros(1, int(x.shape[1]) if x is not None and x.ndim == 4 else channels, *size)


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
    if is_auto(cfg.methods):  # a caller that did not resolve methods: auto (the jobs do): the fallback
        cfg = resolve_auto(cfg, model, None, _example(stream))
    if cfg.runner == "plain":
        return score_plain(cfg, model, stream, scoring_options(cfg, stream), progress=progress, window_id=window_id)
    return score_stream_lightning(cfg, model, stream, progress=progress, window_id=window_id)


def score_stream_lightning(cfg: MonitorConfig, model, stream, progress: bool = False, window_id: str | None = None):
    """Run :class:`RelevanceMonitor` over ``stream`` (only window ``window_id`` if given) in
    ``pl.Trainer.predict``: (records, window summary, monitor).

    With ``devices``/``num_nodes`` > 1 (DDP) every rank scores its share of the window and gets every
    rank's records back (:func:`relmon.jobs.scaleout.gather_window`): the summary is computed from all
    of them, and ``summary["_dist"]`` says which rank this is and holds its own records."""
    from relmon.data.datamodule import StreamDataModule  # a LightningDataModule, made on first use
    from relmon.jobs.scaleout import distributed_datamodule, gather_window, lightning_trainer
    from relmon.lightning import RelevanceMonitor

    _quiet_lightning()
    monitor = RelevanceMonitor(model, **scoring_options(cfg, stream))
    stop = stop_callback()  # SIGTERM/SIGINT and run_timeout_seconds stop between batches; keeps the records
    data = StreamDataModule(stream, batch_size=cfg.batch_size, window_id=window_id)
    trainer = lightning_trainer(cfg, progress, [stop], data.stream)
    if trainer.world_size > 1:  # padded split: no rank is empty, the repeats are dropped
        data = distributed_datamodule(data.stream, cfg.batch_size)
    trainer.predict(monitor, datamodule=data, return_predictions=False)  # the frames are kept once, by `stop`
    records = stop.records()
    records = records if records is not None else empty_records()
    summary = monitor.last_summary or monitor.window_summary()
    if trainer.world_size > 1:
        records, summary = gather_window(records, summary, monitor.methods, stream)
    return records, summary, monitor


__all__ = ["job_steps", "job_suspect_regions", "score_stream", "score_stream_lightning", "scoring_options"]
