"""Lightning integration benchmarks: RelevanceMonitor predict throughput, and the validation
callback's cost relative to a plain validation epoch. Ratios from one run (interleaved repeats).

    .venv/bin/python benchmarks/bench_lightning.py                 # CPU
    python benchmarks/bench_lightning.py --accelerator gpu          # CUDA (benchmarks/gpu_check.sh)

Throughput: images per second through ``trainer.predict(RelevanceMonitor(...))`` on the shipped
Fashion-MNIST sample with the embedded model (methods lrp + the random order, so (2 L + 2) forwards
per image plus one explanation), and the same number of plain forwards for scale.
Callback: median wall time of ``trainer.validate`` with ``HeatmapQualityCallback()`` at its defaults /
without it (interleaved repeats, same loader), per embedded model and validation-epoch size:

    .venv/bin/python benchmarks/bench_lightning.py --skip-predict --repeats 5
"""

from __future__ import annotations

import argparse
import logging
import math
import statistics
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
    # the same scoring in the monitoring job's Lightning-free loop (relmon/jobs/runner.py)
    from relmon.data.streams import stream_loader
    from relmon.jobs.runner import resolve_device, run_plain
    from relmon.scoring import BatchScorer

    scorer = BatchScorer(model, methods=("lrp",), region=args.region, steps=args.steps)
    loader = stream_loader(stream, batch_size=args.batch)
    dev = resolve_device("gpu" if args.accelerator == "gpu" else "cpu")
    run_plain(scorer, stream_loader(fashion_mnist_stream(use_sample=True, n=16), batch_size=16), dev)
    plain_runner = []
    for _ in range(args.repeats):
        sync(args.accelerator)
        t0 = time.perf_counter()
        run_plain(scorer, loader, dev)
        sync(args.accelerator)
        plain_runner.append(time.perf_counter() - t0)
    row = {"accelerator": args.accelerator, "model": args.model, "n": args.n, "batch": args.batch, "region": args.region,
           "L": steps, "plain_runner_images_per_s": args.n / min(plain_runner),
           "images_per_s": args.n / best, "forwards_per_s": forwards / best, "plain_forwards_per_s": forwards / plain,
           "seconds": best}
    print(f"predict: {row}", flush=True)
    return row


def bench_callback(args):
    """Validation epoch with the callback at its defaults / without it, interleaved repeats, per model."""
    images, labels = load_sample()
    rows = []
    for name in args.callback_models:
        model = load_embedded(name)
        for val_n in args.callback_val_n:
            data = TensorDataset(to_tensor(images[:val_n]), torch.from_numpy(labels[:val_n]))
            loader = DataLoader(data, batch_size=args.val_batch)
            module = Classifier(model)
            callback = HeatmapQualityCallback()  # the defaults
            for callbacks in ((), (callback,)):  # warm-up of both
                trainer(args.accelerator, callbacks).validate(module, loader, verbose=False)
            plain, with_cb = [], []
            for _ in range(args.repeats):
                for sink, callbacks in ((plain, ()), (with_cb, (callback,))):
                    sync(args.accelerator)
                    t0 = time.perf_counter()
                    trainer(args.accelerator, callbacks).validate(module, loader, verbose=False)
                    sync(args.accelerator)
                    sink.append(time.perf_counter() - t0)
            p, c = statistics.median(plain), statistics.median(with_cb)
            steps = callback.steps_used
            forwards = callback.samples_used * 2 * (math.ceil(steps / callback.step_stride) + 1)
            row = {"accelerator": args.accelerator, "model": name, "val_images": val_n, "val_batch": args.val_batch,
                   "max_samples": callback.samples_used, "region": callback.region_used, "L": steps,
                   "step_stride": callback.step_stride, "extra_forwards": forwards,
                   "plain_s": round(p, 4), "callback_s": round(c, 4), "ratio": round(c / p, 3),
                   "added_s": round(c - p, 4)}
            print(f"callback: {row}", flush=True)
            rows.append(row)
    return rows


def bench_stride_error(args):
    """What the default step stride changes: per-sample AOPC at stride 4 vs every step (L = 16, 7x7 grid),
    beside the sampling error of a 32-sample mean (the callback's default window)."""
    from relmon.explain import explain_full, to_heatmap
    from relmon.perturbation import evaluate_heatmaps

    rows = []
    x = to_tensor(load_sample()[0][: args.error_n])
    for name in args.callback_models:
        model = load_embedded(name)
        expl = explain_full(model, x, "lrp")
        heat = to_heatmap(expl.relevance, expl.method)
        out = {}
        for stride in (1, 4):
            ev = evaluate_heatmaps(model, x, heat, orders=("morf", "random"), target=expl.target, region=4,
                                   steps=16, step_stride=stride, sample_ids=list(range(len(x))))
            out[stride] = (ev.aopc.double(), ev.aopc_minus_random.double())
        diff = out[4][1] - out[1][1]
        row = {"model": name, "n": len(x), "aopc_minus_random_mean_exact": round(float(out[1][1].mean()), 4),
               "mean_shift_stride4": round(float(diff.mean()), 4),
               "max_abs_per_sample": round(float(diff.abs().max()), 4),
               "sampling_se_32": round(float(out[1][1].std() / math.sqrt(32)), 4)}
        print(f"stride_error: {row}", flush=True)
        rows.append(row)
    return rows


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
    ap.add_argument("--skip-predict", action="store_true", help="only the callback benchmark")
    ap.add_argument("--skip-callback", action="store_true", help="only the predict benchmark")
    ap.add_argument("--callback-models", nargs="+", default=["fmnist_cnn", "fmnist_vgg"])
    ap.add_argument("--callback-val-n", nargs="+", type=int, default=[2000, 1000, 500],
                    help="validation epoch sizes (images of the shipped sample)")
    ap.add_argument("--val-batch", type=int, default=64)
    ap.add_argument("--error-n", type=int, default=512, help="images for the step-stride error measurement")
    ap.add_argument("--json", help="also write the rows here")
    args = ap.parse_args(argv)
    for name in ("pytorch_lightning", "lightning.pytorch", "lightning_fabric", "lightning"):
        logging.getLogger(name).setLevel(logging.WARNING)  # one line per Trainer otherwise
    if args.accelerator == "gpu" and not torch.cuda.is_available():
        print("bench_lightning: no CUDA device; skipping")
        return
    torch.manual_seed(0)
    results = {"device": torch.cuda.get_device_name() if args.accelerator == "gpu" else "cpu",
               "torch": torch.__version__}
    if not args.skip_predict:
        results["predict"] = bench_predict(args)
    if not args.skip_callback:
        results["callback"] = bench_callback(args)
    if args.accelerator == "cpu":  # an accuracy figure, the same on any device: measured on the CPU runs
        results["stride_error"] = bench_stride_error(args)
    if args.json:
        import json
        from pathlib import Path

        Path(args.json).parent.mkdir(parents=True, exist_ok=True)
        Path(args.json).write_text(json.dumps(results, indent=2))


if __name__ == "__main__":
    main()
