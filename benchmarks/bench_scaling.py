"""CPU scaling of one window: 2 processes x 1 thread (Lightning DDP, gloo) against 1 process x 2 threads.

Both score the same window (the shipped Fashion-MNIST sample, ``--n`` images, the embedded CNN, the
job's default protocol: lrp + the random order, region 4, L = 8) with
``Trainer.predict(RelevanceMonitor(...))``; the time is that of ``trainer.predict`` alone (start-up and
process launch left out), taken on rank 0 between two barriers. Repeats alternate the two set-ups.

    .venv/bin/python benchmarks/bench_scaling.py --n 1024 --repeats 3

Prints one JSON line per run and the median ratio (DDP throughput / threaded throughput). The machine
may be shared: the load average before and after is printed too.
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import time
import warnings


def one_run(n: int, devices: int, threads: int, batch: int) -> None:
    """Runs inside a fresh process (re-launched per rank by Lightning under DDP); rank 0 prints JSON."""
    warnings.filterwarnings("ignore")
    import logging

    import pytorch_lightning as pl
    import torch

    from relmon.data.streams import StreamDataModule, fashion_mnist_stream
    from relmon.lightning import RelevanceMonitor
    from relmon.models import load_embedded

    for name in ("pytorch_lightning", "lightning_fabric", "lightning.pytorch"):
        logging.getLogger(name).setLevel(logging.ERROR)
    torch.set_num_threads(threads)
    model = load_embedded("fmnist_cnn")
    stream = fashion_mnist_stream(use_sample=True, n=n)
    trainer = pl.Trainer(accelerator="cpu", devices=devices, strategy="ddp" if devices > 1 else "auto",
                         logger=False, enable_progress_bar=False, enable_model_summary=False,
                         enable_checkpointing=False)
    monitor = RelevanceMonitor(model, methods=("lrp",), region=4, steps=8, seed=0)
    data = StreamDataModule(stream, batch_size=batch)
    # a warm-up predict on a few images (process group, first-call costs), then the timed window
    trainer.predict(monitor, datamodule=StreamDataModule(fashion_mnist_stream(use_sample=True, n=2 * batch),
                                                         batch_size=batch), return_predictions=False)
    trainer.strategy.barrier()
    t0 = time.perf_counter()
    trainer.predict(monitor, datamodule=data, return_predictions=False)
    trainer.strategy.barrier()
    seconds = time.perf_counter() - t0
    if trainer.global_rank == 0:
        summary = monitor.last_summary
        print(json.dumps({"devices": devices, "threads": threads, "n": n, "seconds": seconds,
                          "images_per_second": n / seconds, "scored": summary["lrp:epsilon_plus_flat"]["n"]
                          if "lrp:epsilon_plus_flat" in summary else None}), flush=True)


def measure(n: int, devices: int, threads: int, batch: int) -> dict:
    env = dict(os.environ, OMP_NUM_THREADS=str(threads), PYTHONWARNINGS="ignore")
    proc = subprocess.run([sys.executable, __file__, "--child", str(n), str(devices), str(threads), str(batch)],
                          capture_output=True, text=True, env=env, timeout=1200)
    if proc.returncode != 0:
        raise RuntimeError(proc.stderr[-3000:])
    lines = [ln for ln in proc.stdout.splitlines() if ln.startswith("{")]
    return json.loads(lines[-1])


def main() -> None:
    if len(sys.argv) > 1 and sys.argv[1] == "--child":
        one_run(*(int(v) for v in sys.argv[2:6]))
        return
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--n", type=int, default=1024)
    ap.add_argument("--batch", type=int, default=64)
    ap.add_argument("--repeats", type=int, default=3)
    args = ap.parse_args()
    print(json.dumps({"loadavg_before": os.getloadavg(), "cpus": os.cpu_count()}), flush=True)
    ddp, threaded = [], []
    for _ in range(args.repeats):
        r = measure(args.n, 1, 2, args.batch)
        threaded.append(r["images_per_second"])
        print(json.dumps(r), flush=True)
        r = measure(args.n, 2, 1, args.batch)
        ddp.append(r["images_per_second"])
        print(json.dumps(r), flush=True)
    ratios = [d / t for d, t in zip(ddp, threaded, strict=True)]
    print(json.dumps({"threaded_1x2_images_per_second": statistics.median(threaded),
                      "ddp_2x1_images_per_second": statistics.median(ddp),
                      "ratio_ddp_over_threaded_median": statistics.median(ratios),
                      "ratios": ratios, "loadavg_after": os.getloadavg()}), flush=True)


if __name__ == "__main__":
    main()
