"""One window over several processes: Lightning DDP inside one job, or shard jobs merged later.

- :func:`plan_window`: the items a run decodes and scores — its window, sampled *before decoding*
  (``sample_rate``, ``max_samples``: :func:`relmon.data.file_listing.plan_indices`), then its shard
  (``shard: I/N``). Every rank and shard computes the same plan from the listing alone.
- :func:`lightning_trainer`: ``pl.Trainer`` with the config's ``devices``, ``strategy`` and
  ``num_nodes``; under DDP a callback first checks that every rank listed the same inputs, and
  :func:`distributed_datamodule` splits the window with a padding ``DistributedSampler`` whose repeats
  the scorer drops (nothing scored twice, nothing dropped, no rank empty).
- :func:`gather_window`: after the predict loop, every rank's records and input-error counts are
  gathered on every rank; the window summary is computed from all records
  (:func:`relmon.runs.summary_from_records`), so rank 0's estimates, drift and metrics are those of
  one device.
- :func:`write_part_file`: a rank's or shard's records as ``<records>/<stream>/<run>/part-<k>.parquet``
  with its manifest (:mod:`relmon.runs`).
"""

from __future__ import annotations

import logging
from pathlib import Path
from typing import Any

import pandas as pd

log = logging.getLogger("relmon.jobs")


def plan_window(cfg, stream, window_id: str | None):
    """``(stream to score, not_selected)``: a Subset of ``stream`` holding the window's sampled items of
    this run's shard, and how many items of the window (and shard) the sampling left out."""
    from torch.utils.data import Subset

    from relmon.data.file_listing import plan_indices
    from relmon.data.streams import window_indices
    from relmon.runs import parse_shard

    candidates = window_indices(stream)[window_id] if window_id is not None else None
    shard = parse_shard(cfg.shard) if getattr(cfg, "shard", None) else None
    if shard is None and candidates is None and cfg.sample_rate >= 1.0 and cfg.max_samples is None:
        return stream, 0  # everything: no Subset (nothing to plan)
    indices, not_selected = plan_indices(stream, seed=cfg.seed, sample_rate=cfg.sample_rate,
                                         max_samples=cfg.max_samples, candidates=candidates, shard=shard)
    return Subset(stream, indices), not_selected


def _same_inputs_callback(dataset):
    import pytorch_lightning as pl

    from relmon.data.file_listing import item_keys
    from relmon.distributed import check_same, fingerprint

    class SameInputs(pl.Callback):
        """Before scoring under DDP: every rank must hold the same inputs in the same order."""

        def on_predict_start(self, trainer, pl_module) -> None:
            _, sid, _, _ = item_keys(dataset)
            check_same(fingerprint(sid(i) for i in range(len(dataset))), "the window's inputs")

    return SameInputs()


def lightning_trainer(cfg, progress: bool, callbacks: list, dataset=None):
    """The job's ``pl.Trainer``: one device by default; ``devices``/``num_nodes`` > 1 run DDP (one process
    per device, Lightning's launcher re-runs this command for the other local ranks)."""
    import pytorch_lightning as pl

    world = int(getattr(cfg, "devices", 1)) * int(getattr(cfg, "num_nodes", 1))
    callbacks = list(callbacks)
    if world > 1 and dataset is not None:
        callbacks.append(_same_inputs_callback(dataset))
    return pl.Trainer(
        accelerator=cfg.accelerator,
        devices=int(getattr(cfg, "devices", 1)),
        num_nodes=int(getattr(cfg, "num_nodes", 1)),
        strategy="ddp" if world > 1 else "auto",
        logger=False,
        enable_checkpointing=False,
        enable_model_summary=False,
        enable_progress_bar=progress,
        callbacks=callbacks,
    )


def distributed_datamodule(stream, batch_size: int):
    """The window under DDP: a plain ``DistributedSampler`` (no shuffling), which Lightning keeps.

    It pads every rank to ``ceil(N / world)`` items by repeating the first ones, so no rank is empty
    when the window holds fewer items than ranks (Lightning's own unrepeated predict sampler refuses
    that, and a rank without a batch would skip the collective hooks). The padded items are the global
    positions ``>= N``; the scorer drops them (:func:`relmon.scoring.padding_flags`): nothing is scored
    or counted twice, nothing is dropped.
    """
    import pytorch_lightning as pl
    from torch.utils.data import DataLoader, DistributedSampler

    from relmon.data.streams import collate_skip_bad

    class PaddedWindow(pl.LightningDataModule):
        def predict_dataloader(self) -> DataLoader:
            sampler = DistributedSampler(stream, num_replicas=self.trainer.world_size, rank=self.trainer.global_rank,
                                         shuffle=False, drop_last=False)
            return DataLoader(stream, batch_size=batch_size, sampler=sampler, collate_fn=collate_skip_bad)

    return PaddedWindow()


def stream_errors(stream) -> dict[str, int]:
    """This process's bad-input counts per reason (``stream.errors`` through Subsets and selections)."""
    from torch.utils.data import Subset

    base = stream
    while isinstance(base, Subset):
        base = base.dataset
    return {str(k): int(v) for k, v in dict(getattr(base, "errors", {}) or {}).items() if int(v)}


def gather_window(records: pd.DataFrame, summary: dict, methods, stream) -> tuple[pd.DataFrame, dict]:
    """Every rank's records and input-error counts on every rank: ``(all records, window summary)``.

    The summary's method entries are computed from all records (canonical order); its ``_inputs`` are the
    torchmetrics-synced counts; ``summary["_dist"]`` holds ``rank``, ``world``, this rank's ``local``
    records and the per-reason ``errors`` summed over the ranks.
    """
    from relmon.distributed import gather, rank_and_world
    from relmon.runs import sort_records, summary_from_records

    rank, world = rank_and_world()
    parts = gather((records, stream_errors(stream)))
    frames = [f for f, _ in parts if len(f)]
    everything = sort_records(pd.concat(frames, ignore_index=True)) if frames else records
    errors: dict[str, int] = {}
    for _, errs in parts:
        for k, v in errs.items():
            errors[k] = errors.get(k, 0) + v
    out = summary_from_records(everything, methods, inputs=summary.get("_inputs"))
    out["_dist"] = {"rank": rank, "world": world, "local": records, "errors": errors}
    return everything, out


def scoring_settings(cfg, steps: int, methods) -> dict[str, Any]:
    """The settings every part of a run must share (their fingerprint is checked by the merge)."""
    return {"methods": list(methods), "region": cfg.region, "steps": int(steps), "sample_rate": cfg.sample_rate,
            "max_samples": cfg.max_samples, "seed": cfg.seed, "step_stride": cfg.step_stride,
            "random_fraction": cfg.random_fraction, "window": cfg.window,
            "window_seconds": cfg.window_seconds, "image_size": cfg.image_size, "channels": cfg.channels,
            "shard_count": int(cfg.shard.split("/")[1]) if getattr(cfg, "shard", None) else None}


def write_part_file(records: pd.DataFrame, folder: Path, manifest: dict) -> Path:
    from relmon.records import remove_stale_temporaries
    from relmon.runs import write_part

    path = write_part(records, folder, manifest)
    remove_stale_temporaries(folder)
    return path


__all__ = ["distributed_datamodule", "gather_window", "lightning_trainer", "plan_window", "scoring_settings", "stream_errors",
           "write_part_file"]
