"""Lightning integration benchmarks: RelevanceMonitor predict throughput, and the validation
callback's cost relative to a plain validation epoch. Ratios from one run (interleaved repeats).

    .venv/bin/python benchmarks/bench_lightning.py                 # CPU
    python benchmarks/bench_lightning.py --accelerator gpu          # CUDA (benchmarks/gpu_check.sh)

Throughput: images per second through ``trainer.predict(RelevanceMonitor(...))`` on the shipped
Fashion-MNIST sample with the embedded model (methods lrp + the random order, so (2 L + 2) forwards
per image plus one explanation), and the same number of plain forwards for scale.
Callback: wall time of ``trainer.validate`` with ``HeatmapQualityCallback`` / without it.
"""

from __future__ import annotations

import argparse
import time

import pytorch_lightning as pl
import torch
from torch.utils.data import DataLoader, TensorDataset

from relmon.data import load_sample, to_tensor
from relmon.data.streams import StreamDataModule, fashion_mnist_stream
from relmon.lightning import HeatmapQualityCallback, RelevanceMonitor
from relmon.models import load_embedded


class Classifier(pl.LightningModule):
    def __init__(self, model):
        super().__init__()
        self.model = model

    def forward(self, x):
        return self.model(x)

    def validation_step(self, batch, batch_idx):
        x, y = batch
        self.log("val_loss", torch.nn.functional.cross_entropy(self(x), y))


def trainer(accelerator, callbacks=()):
    return pl.Trainer(accelerator=accelerator, devices=1, logger=False, enable_progress_bar=False,
                      enable_model_summary=False, callbacks=list(callbacks))


def sync(accelerator):
    if accelerator == "gpu":
        torch.cuda.synchronize()


def bench_predict(args):
    model = load_embedded(args.model)
    stream = fashion_mnist_stream(use_sample=True, n=args.n)
    dm = StreamDataModule(stream, batch_size=args.batch)
    monitor = RelevanceMonitor(model, methods=("lrp",), region=args.region, steps=args.steps)
    trainer(args.accelerator).predict(monitor, datamodule=StreamDataModule(fashion_mnist_stream(use_sample=True, n=16), batch_size=16))
    times = []
    for _ in range(args.repeats):
        sync(args.accelerator)
        t0 = time.perf_counter()
        trainer(args.accelerator).predict(monitor, datamodule=dm)
        sync(args.accelerator)
        times.append(time.perf_counter() - t0)
    steps = min(args.steps, ((28 + args.region - 1) // args.region) ** 2)
    forwards = args.n * 2 * (steps + 1)
    device = "cuda" if args.accelerator == "gpu" else "cpu"
    m = model.to(device)
    x = to_tensor(load_sample()[0][:256]).to(device)
    with torch.inference_mode():
        m(x)
        sync(args.accelerator)
        t0 = time.perf_counter()
        done = 0
        while done < forwards:
            m(x)
            done += len(x)
        sync(args.accelerator)
        plain = time.perf_counter() - t0
    best = min(times)
    row = {"accelerator": args.accelerator, "model": args.model, "n": args.n, "region": args.region, "L": steps,
           "images_per_s": args.n / best, "forwards_per_s": forwards / best, "plain_forwards_per_s": forwards / plain,
           "seconds": best}
    print(f"predict: {row}", flush=True)
    return row


def bench_callback(args):
    model = load_embedded(args.model)
    images, labels = load_sample()
    data = TensorDataset(to_tensor(images[: args.val_n]), torch.from_numpy(labels[: args.val_n]))
    loader = DataLoader(data, batch_size=16)
    module = Classifier(model)
    callback = HeatmapQualityCallback(methods=("lrp",), max_samples=args.val_n, region=args.region, steps=args.steps)
    trainer(args.accelerator).validate(module, loader, verbose=False)  # warm-up
    plain, with_cb = [], []
    for _ in range(args.repeats):
        for sink, callbacks in ((plain, ()), (with_cb, (callback,))):
            sync(args.accelerator)
            t0 = time.perf_counter()
            trainer(args.accelerator, callbacks).validate(module, loader, verbose=False)
            sync(args.accelerator)
            sink.append(time.perf_counter() - t0)
    row = {"accelerator": args.accelerator, "val_images": args.val_n, "max_samples": args.val_n,
           "region": args.region, "steps": args.steps, "plain_s": min(plain), "callback_s": min(with_cb),
           "ratio": min(with_cb) / min(plain), "added_s": min(with_cb) - min(plain)}
    print(f"callback: {row}", flush=True)
    return row


def main(argv=None):
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--accelerator", choices=("cpu", "gpu"), default="cpu")
    ap.add_argument("--model", default="fmnist_cnn")
    ap.add_argument("--n", type=int, default=512)
    ap.add_argument("--val-n", type=int, default=256)
    ap.add_argument("--batch", type=int, default=64)
    ap.add_argument("--region", type=int, default=4)
    ap.add_argument("--steps", type=int, default=49)
    ap.add_argument("--repeats", type=int, default=3)
    args = ap.parse_args(argv)
    if args.accelerator == "gpu" and not torch.cuda.is_available():
        print("bench_lightning: no CUDA device; skipping")
        return
    torch.manual_seed(0)
    bench_predict(args)
    bench_callback(args)


if __name__ == "__main__":
    main()
