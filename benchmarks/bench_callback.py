"""The validation callback's cost on an ordinary LightningModule (not one of relmon's embedded models):
median wall time of ``trainer.validate`` with ``HeatmapQualityCallback(preprocessing=...)`` at its
defaults / without it, interleaved repeats on the same loader, per validation-epoch size.

The module is what a user writes: a BatchNorm CNN as attributes (no ``model``/``net`` attribute, so the
callback explains the module's own ``forward``), a torchmetrics accuracy child and a loss module, and a
``validation_step`` that computes and logs both. Its weights are a few SGD steps on the shipped
Fashion-MNIST sample (enough for non-trivial heatmaps; the cost does not depend on accuracy).

    .venv/bin/python benchmarks/bench_callback.py --repeats 5 --json out/bench_callback.json
"""

from __future__ import annotations

import argparse
import logging
import statistics
import time

import pytorch_lightning as pl
import torch
import torchmetrics
from torch.utils.data import DataLoader, TensorDataset

from relmon.data import load_sample, to_tensor
from relmon.lightning import HeatmapQualityCallback
from relmon.models import FASHION_MNIST_PREPROCESSING


class LitCNN(pl.LightningModule):
    def __init__(self):
        super().__init__()
        self.features = torch.nn.Sequential(
            torch.nn.Conv2d(1, 16, 3, padding=1), torch.nn.BatchNorm2d(16), torch.nn.ReLU(), torch.nn.MaxPool2d(2),
            torch.nn.Conv2d(16, 32, 3, padding=1), torch.nn.BatchNorm2d(32), torch.nn.ReLU(), torch.nn.MaxPool2d(2))
        self.head = torch.nn.Sequential(torch.nn.Flatten(), torch.nn.Linear(32 * 7 * 7, 64), torch.nn.ReLU(),
                                        torch.nn.Linear(64, 10))
        self.loss_fn = torch.nn.CrossEntropyLoss()
        self.val_acc = torchmetrics.classification.MulticlassAccuracy(num_classes=10)

    def forward(self, x):
        return self.head(self.features(x))

    def training_step(self, batch, batch_idx):
        x, y = batch
        return self.loss_fn(self(x), y)

    def validation_step(self, batch, batch_idx):
        x, y = batch
        logits = self(x)
        self.val_acc(logits, y)
        self.log("val_loss", self.loss_fn(logits, y))
        self.log("val_acc", self.val_acc)

    def configure_optimizers(self):
        return torch.optim.SGD(self.parameters(), lr=0.05, momentum=0.9)


def trainer(callbacks=(), **kwargs):
    return pl.Trainer(accelerator="cpu", devices=1, logger=False, enable_progress_bar=False,
                      enable_model_summary=False, enable_checkpointing=False, callbacks=list(callbacks), **kwargs)


def main(argv=None):
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--val-n", nargs="+", type=int, default=[2000, 500], help="validation epoch sizes")
    ap.add_argument("--val-batch", type=int, default=64)
    ap.add_argument("--train-steps", type=int, default=60)
    ap.add_argument("--repeats", type=int, default=3)
    ap.add_argument("--json", help="also write the rows here")
    args = ap.parse_args(argv)
    for name in ("pytorch_lightning", "lightning.pytorch", "lightning_fabric", "lightning"):
        logging.getLogger(name).setLevel(logging.WARNING)
    torch.manual_seed(0)
    images, labels = load_sample()
    x = to_tensor(images)  # normalised with the Fashion-MNIST statistics (FASHION_MNIST_PREPROCESSING)
    y = torch.from_numpy(labels).long()
    module = LitCNN()
    train = DataLoader(TensorDataset(x, y), batch_size=64, shuffle=True)
    trainer(max_steps=args.train_steps).fit(module, train)
    rows = []
    for val_n in args.val_n:
        loader = DataLoader(TensorDataset(x[:val_n], y[:val_n]), batch_size=args.val_batch)
        callback = HeatmapQualityCallback(preprocessing=FASHION_MNIST_PREPROCESSING)  # the defaults
        for callbacks in ((), (callback,)):  # warm-up of both
            trainer(callbacks).validate(module, loader, verbose=False)
        plain, with_cb = [], []
        for _ in range(args.repeats):
            for sink, callbacks in ((plain, ()), (with_cb, (callback,))):
                t0 = time.perf_counter()
                trainer(callbacks).validate(module, loader, verbose=False)
                sink.append(time.perf_counter() - t0)
        p, c = statistics.median(plain), statistics.median(with_cb)
        row = {"val_images": val_n, "max_samples": callback.samples_used, "region": callback.region_used,
               "L": callback.steps_used, "step_stride": callback.step_stride, "plain_s": round(p, 4),
               "callback_s": round(c, 4), "ratio": round(c / p, 3), "ratios": [round(b / a, 3) for a, b in
                                                                                zip(plain, with_cb, strict=True)],
               "last_values": callback.last_values}
        print(f"callback: {row}", flush=True)
        rows.append(row)
    if args.json:
        import json
        from pathlib import Path

        Path(args.json).parent.mkdir(parents=True, exist_ok=True)
        Path(args.json).write_text(json.dumps({"torch": torch.__version__, "rows": rows}, indent=2))


if __name__ == "__main__":
    main()
