"""The job's scoring loop without Lightning: one process, one device (the job always uses ``devices=1``).

:func:`run_plain` iterates a stream's DataLoader (:func:`relmon.data.streams.stream_loader`) and
scores each batch with a :class:`~relmon.scoring.BatchScorer` into a
:class:`~relmon.scoring.WindowAccumulator`: the records and the window summary are those of
``pl.Trainer.predict`` with :class:`~relmon.lightning.RelevanceMonitor` (same selection, no padding on
one process, the same sums), without importing pytorch_lightning or torchmetrics (their imports
bring torchvision and ``torch._dynamo``: seconds of start-up).

Like Lightning's predict loop it puts the model on the device (``accelerator``: ``auto`` → CUDA where
available), in eval mode, and runs under ``torch.inference_mode()`` (the explanation leaves it for its
backward pass). Stopping works as with :func:`relmon.jobs.signals.stop_callback`: before each batch a
requested stop (SIGTERM/SIGINT) or a passed run deadline raises
:class:`~relmon.jobs.signals.RunInterrupted` carrying the finished batches' records; a signal in the
middle of a batch raises at once and the batch's records are dropped.
"""

from __future__ import annotations

from typing import Any

import pandas as pd
import torch

from relmon.config import ConfigError
from relmon.data.batching import stream_loader
from relmon.jobs import signals
from relmon.preprocessing import eval_mode
from relmon.records import empty_records
from relmon.scoring import BatchScorer, WindowAccumulator


def resolve_device(accelerator: str = "cpu") -> torch.device:
    """The torch device of a config ``accelerator``: ``cpu``; ``gpu``/``cuda``; ``mps``; ``auto`` (CUDA if
    available, else MPS if available, else CPU, as Lightning's ``auto``). A :class:`~relmon.config.ConfigError` names the fix
    when the accelerator asked for is not available."""
    name = str(accelerator).lower()
    if name == "auto":
        if torch.cuda.is_available():
            return torch.device("cuda", 0)
        mps = getattr(torch.backends, "mps", None)
        if mps is not None and mps.is_available():
            return torch.device("mps")
        return torch.device("cpu")
    if name in ("gpu", "cuda"):
        if not torch.cuda.is_available():
            raise ConfigError(f"accelerator {accelerator!r}: no CUDA device is available; fix: set accelerator: "
                               "cpu (or auto)")
        return torch.device("cuda", 0)
    if name == "mps":
        mps = getattr(torch.backends, "mps", None)
        if mps is None or not mps.is_available():
            raise ConfigError(f"accelerator {accelerator!r}: MPS is not available; fix: set accelerator: cpu "
                               "(or auto)")
        return torch.device("mps")
    if name == "cpu":
        return torch.device("cpu")
    raise ConfigError(f"unknown accelerator {accelerator!r}; choose one of cpu, gpu, cuda, mps, auto")


def _records(frames: list[pd.DataFrame]) -> pd.DataFrame | None:
    frames = [f for f in frames if isinstance(f, pd.DataFrame) and len(f)]
    return pd.concat(frames, ignore_index=True) if frames else None


def _progress(loader, enabled: bool):
    if not enabled:
        return loader
    from tqdm.auto import tqdm  # installed with Lightning; imported only for a progress bar

    return tqdm(loader, desc="Scoring", unit="batch", leave=False)


def run_plain(scorer: BatchScorer, loader: Any, device: torch.device | str = "cpu", progress: bool = False,
              sink: WindowAccumulator | None = None) -> tuple[pd.DataFrame, WindowAccumulator]:
    """Score every batch of ``loader`` on ``device``: ``(records, window aggregates)``.

    Raises :class:`~relmon.jobs.signals.RunInterrupted` (with the finished batches' records) on a stop
    request or the run deadline, checked before each batch.
    """
    device = torch.device(device)
    sink = WindowAccumulator(scorer.methods) if sink is None else sink
    model = scorer.model
    home = next(iter(model.parameters()), next(iter(model.buffers()), None))
    home = home.device if home is not None else None  # moved back afterwards: the caller's model stays put
    model.to(device)
    scorer.reset_window()
    frames: list[pd.DataFrame] = []
    signals.STOP.in_predict = True  # a signal during a batch raises at once (see relmon.jobs.signals)
    try:
        with eval_mode(model), torch.inference_mode():
            for batch in _progress(loader, progress):
                if signals.should_stop():
                    signals.check(_records(frames))
                frame = scorer.score_loader_batch(batch, sink, device=device)
                if isinstance(frame, pd.DataFrame) and len(frame):
                    frames.append(frame)
        signals.STOP.in_predict = False  # a signal from here on is handled between runs, not mid-cleanup
    except signals.RunInterrupted as exc:
        if exc.records is None:
            exc.records = _records(frames)
        raise
    finally:
        signals.STOP.in_predict = False
        if home is not None and home != device:
            model.to(home)
    records = _records(frames)
    return (records if records is not None else empty_records()), sink


def score_plain(cfg, model, stream, options: dict, progress: bool = False, window_id: str | None = None):
    """The job's scoring pass with :func:`run_plain`: ``(records, window summary, scorer)``; ``options``
    are the scorer's settings (:func:`relmon.jobs.scoring.scoring_options`)."""
    scorer = BatchScorer(model, **options)
    loader = stream_loader(stream, batch_size=cfg.batch_size, window_id=window_id)
    records, sink = run_plain(scorer, loader, resolve_device(cfg.accelerator), progress=progress)
    return records, sink.summary(), scorer


__all__ = ["resolve_device", "run_plain", "score_plain"]
