"""Run RelevanceMonitor and HeatmapQualityCallback under 2-process CPU DDP (gloo); rank 0 writes JSON.

Used by tests/test_lightning.py as a subprocess (Lightning's "ddp" strategy re-launches this script
for the other rank). Three runs on one Trainer, each over an odd number of samples so that a padding
sampler repeats one:

1. ``predict``: Lightning's own predict sampler (UnrepeatedDistributedSampler).
2. ``predict_padded``: a user loader with a plain DistributedSampler (pads rank 1 with sample 0).
3. ``validate``: the callback during ``trainer.validate`` (Lightning's padded DistributedSampler).

Usage: python tests/ddp_script.py OUT_DIR N DEVICES
"""

from __future__ import annotations

import json
import os
import sys
import warnings

import pytorch_lightning as pl
import torch
from torch.utils.data import DataLoader, DistributedSampler, TensorDataset

from relmon.data.streams import StreamDataModule, collate_skip_bad, fashion_mnist_stream
from relmon.lightning import HeatmapQualityCallback, RecordWriter, RelevanceMonitor, read_records
from relmon.models import load_embedded

SETTINGS = dict(region=7, steps=16, seed=3)


class PaddedStream(pl.LightningDataModule):
    """A predict loader carrying its own (padding) DistributedSampler."""

    def __init__(self, stream, batch_size: int):
        super().__init__()
        self.stream = stream
        self.batch_size = batch_size

    def predict_dataloader(self) -> DataLoader:
        sampler = DistributedSampler(self.stream, num_replicas=self.trainer.world_size,
                                     rank=self.trainer.global_rank, shuffle=False)
        return DataLoader(self.stream, batch_size=self.batch_size, sampler=sampler, collate_fn=collate_skip_bad)


class Classifier(pl.LightningModule):
    def __init__(self, model):
        super().__init__()
        self.model = model

    def forward(self, x):
        return self.model(x)

    def validation_step(self, batch, batch_idx):
        x, y = batch
        self.log("val_loss", torch.nn.functional.cross_entropy(self(x), y), sync_dist=True)


def main(out_dir: str, n: int, devices: int) -> None:
    if devices > 1:  # a standalone run: quiet, one thread per rank
        warnings.filterwarnings("ignore")
        torch.set_num_threads(1)
    model = load_embedded("fmnist_cnn")
    stream = fashion_mnist_stream(use_sample=True, n=n)
    strategy = "ddp" if devices > 1 else "auto"
    callback = HeatmapQualityCallback(methods=("lrp",), max_samples=n + 10, **SETTINGS)
    trainer = pl.Trainer(accelerator="cpu", devices=devices, strategy=strategy, logger=False,
                         enable_progress_bar=False, enable_model_summary=False,
                         callbacks=[RecordWriter(os.path.join(out_dir, "records")), callback])
    result = {"world_size": trainer.world_size}

    monitor = RelevanceMonitor(model, **SETTINGS)
    trainer.predict(monitor, datamodule=StreamDataModule(stream, batch_size=4), return_predictions=False)
    result["predict"] = monitor.last_summary
    trainer.strategy.barrier()
    if trainer.global_rank == 0:
        records = read_records(os.path.join(out_dir, "records"), deduplicate=False)
        result["records_rows"] = len(records)
        result["records_samples"] = int(records["sample_id"].nunique())

    padded = RelevanceMonitor(model, **SETTINGS)
    trainer.predict(padded, datamodule=PaddedStream(stream, batch_size=4), return_predictions=False)
    result["predict_padded"] = padded.last_summary

    x = torch.stack([stream[i]["x"] for i in range(n)])
    y = torch.tensor([stream[i]["label"] for i in range(n)])
    trainer.validate(Classifier(model), DataLoader(TensorDataset(x, y), batch_size=4), verbose=False)
    result["validate"] = callback.last_values

    if trainer.global_rank == 0:
        with open(os.path.join(out_dir, "result.json"), "w") as f:
            json.dump(result, f)


if __name__ == "__main__":
    main(sys.argv[1], int(sys.argv[2]), int(sys.argv[3]))
