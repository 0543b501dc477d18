"""RecordWriter: per-rank Parquet files of the records that RelevanceMonitor's predict_step returns."""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
import pytorch_lightning as pl
from pytorch_lightning.callbacks import BasePredictionWriter

from relmon.records import read_record_files, write_records


class RecordWriter(BasePredictionWriter):
    """Write each predict batch's records to ``output_dir/records-rank{r}-run{k}-dl{d}-batch{i}.parquet``.

    Every rank writes its own files (no gathering, nothing held in memory); empty batches write
    nothing. ``k`` counts the ``Trainer.predict`` calls this writer has seen (so a second call does
    not overwrite the first one's files; a rerun in a new process does, which keeps reruns of a
    window idempotent). Frames carrying heatmaps (``RelevanceMonitor(keep_heatmaps=True)``) also get
    ``heatmaps-<same stem>.npz`` with ``sample_id`` and one ``(B, H, W)`` array per method (key =
    method id). Read everything back with :func:`read_records`.

    Use ``Trainer(callbacks=[RecordWriter(dir)])`` and, for long streams,
    ``trainer.predict(..., return_predictions=False)``.
    """

    def __init__(self, output_dir: str | os.PathLike, write_interval: str = "batch"):
        if write_interval != "batch":
            raise ValueError("RecordWriter writes per batch (write_interval='batch')")
        super().__init__(write_interval=write_interval)
        self.output_dir = Path(output_dir)
        self.written: list[Path] = []
        self._run = -1

    def on_predict_epoch_start(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        self._run += 1

    def write_on_batch_end(
        self,
        trainer: pl.Trainer,
        pl_module: pl.LightningModule,
        prediction: Any,
        batch_indices: Any,
        batch: Any,
        batch_idx: int,
        dataloader_idx: int = 0,
    ) -> None:
        if not isinstance(prediction, pd.DataFrame):
            raise TypeError(f"RecordWriter expects records frames from predict_step, got {type(prediction).__name__}")
        if prediction.empty:
            return
        run = max(self._run, 0)
        stem = f"rank{trainer.global_rank}-run{run:03d}-dl{dataloader_idx}-batch{batch_idx:06d}"
        self.written.append(write_records(prediction, self.output_dir / f"records-{stem}.parquet"))
        heatmaps = prediction.attrs.get("heatmaps")
        if heatmaps:
            arrays = {m: h.numpy() for m, h in heatmaps.items()}
            arrays["sample_id"] = np.asarray(prediction.attrs.get("heatmap_ids", []), dtype=str)
            np.savez_compressed(self.output_dir / f"heatmaps-{stem}.npz", **arrays)


def read_records(folder: str | os.PathLike, deduplicate: bool = True) -> pd.DataFrame:
    """Every records Parquet file under ``folder`` (recursively) as one validated frame.

    Reads what :class:`RecordWriter` writes (``records-*.parquet``) and what ``relmon monitor`` writes
    (``<stream>/<UTC time>_<run id>.parquet``); temporary files of unfinished writes (``.*.tmp``) and
    hidden files are skipped. With ``deduplicate`` (default), rows repeating a ``(sample_id, window_id,
    method, run_id)`` are dropped (the first kept): a second line of defence against samples processed
    twice within one run (DDP padding from a user-supplied sampler). Rows of *different* runs are all
    kept (a scheduled job that scores a file again in a later run keeps both rows).
    """
    folder = Path(folder)
    if not folder.is_dir():
        raise NotADirectoryError(
            f"{folder} is not a folder of record files; fix: pass the folder given as 'records' "
            "(relmon monitor) or to RecordWriter"
        )
    files = sorted(
        p for p in folder.rglob("*.parquet")
        if p.is_file() and not any(part.startswith(".") for part in p.relative_to(folder).parts)
    )
    frame = read_record_files(files)
    if deduplicate:
        keys = ["sample_id", "window_id", "method", "run_id"]
        frame = frame.drop_duplicates(subset=keys, keep="first")
    return frame.reset_index(drop=True)


__all__ = ["RecordWriter", "read_records"]
