"""Soak: memory over a long image stream scored with sampling, through the job's scoring pass.

The stream cycles through the shipped Fashion-MNIST sample (2,000 images) with a unique ``sample_id``
per position, so ``sample_rate`` selects a fresh subset everywhere; it runs through
:func:`relmon.jobs.scoring.score_stream`, as ``relmon monitor`` does (``--runner``: the default
Lightning-free loop, or a real ``pl.Trainer.predict`` of ``RelevanceMonitor``). The process's resident set size (``VmRSS``) is read every 1,000 images.
Reported: RSS after the first thousand images (the working buffers are allocated by then) and at the
end, the growth between them, the peak, and the rate.

    OMP_NUM_THREADS=1 .venv/bin/python benchmarks/bench_soak.py --images 100000

``tests/test_reliability.py`` runs a 5,000-image version and asserts growth below 100 MiB.
"""

from __future__ import annotations

import argparse
import json
import time
from typing import Any

import torch
from torch.utils.data import Dataset


def rss_mib() -> float:
    """Resident set size of this process in MiB (from ``/proc/self/status``)."""
    with open("/proc/self/status") as f:
        for line in f:
            if line.startswith("VmRSS:"):
                return int(line.split()[1]) / 1024.0
    raise RuntimeError("no VmRSS in /proc/self/status")


class CyclingStream(Dataset):
    """``n`` items cycling through ``images`` (uint8 ``(N, 28, 28)``); records RSS every ``every`` items."""

    def __init__(self, images: torch.Tensor, n: int, preprocessing, every: int = 1000):
        self.images, self.n, self.prep, self.every = images, n, preprocessing, every
        self.trace: list[tuple[int, float]] = []

    def __len__(self) -> int:
        return self.n

    def __getitem__(self, i: int) -> dict[str, Any]:
        if i % self.every == 0:
            self.trace.append((i, rss_mib()))
        x = self.images[i % len(self.images)].float().div(255.0).unsqueeze(0)
        x = self.prep.normalize(x.unsqueeze(0))[0] if self.prep is not None else x
        return {"x": x, "sample_id": f"soak-{i}", "index": i, "window_id": "soak:0", "label": -1}


def soak(images: int = 5000, sample_rate: float = 0.02, steps: int = 8, region: int = 7,
         batch_size: int = 250, runner: str = "plain") -> dict[str, Any]:
    """Score a stream of ``images`` with sampling; returns the RSS trace and its summary (MiB)."""
    from relmon.config import MonitorConfig
    from relmon.data import load_sample
    from relmon.jobs.scoring import score_stream
    from relmon.models import get_preprocessing, load_embedded

    model = load_embedded("fmnist_cnn")
    prep = get_preprocessing(model)
    pixels, _ = load_sample()
    stream = CyclingStream(torch.from_numpy(pixels), images, prep)
    cfg = MonitorConfig(steps=steps, region=region, sample_rate=sample_rate, batch_size=batch_size, n=None,
                        runner=runner)
    t0 = time.perf_counter()
    records, _, _ = score_stream(cfg, model, stream)
    seconds = time.perf_counter() - t0
    stream.trace.append((images, rss_mib()))
    trace = stream.trace
    # after the first thousand (warm-up: the first batches allocate the working buffers) vs the end
    first = [r for i, r in trace if i >= min(1000, images)][:1] or [trace[0][1]]
    last = [trace[-1][1]]
    return {
        "images": images,
        "runner": runner,
        "scored": int(records["sample_id"].nunique()) if len(records) else 0,
        "sample_rate": sample_rate,
        "seconds": round(seconds, 1),
        "images_per_second": round(images / seconds, 1),
        "rss_first_mib": round(max(first), 1),
        "rss_last_mib": round(max(last), 1),
        "rss_growth_mib": round(max(last) - max(first), 1),
        "rss_peak_mib": round(max(r for _, r in trace), 1),
        "trace": [(i, round(r, 1)) for i, r in trace],
    }


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--images", type=int, default=100_000)
    p.add_argument("--sample-rate", type=float, default=0.02)
    p.add_argument("--steps", type=int, default=8)
    p.add_argument("--batch-size", type=int, default=250)
    p.add_argument("--runner", choices=("plain", "lightning"), default="plain",
                   help="the job's scoring loop (config field runner)")
    p.add_argument("--json", action="store_true", help="print the whole trace as JSON")
    a = p.parse_args()
    torch.set_num_threads(1)
    out = soak(a.images, a.sample_rate, a.steps, batch_size=a.batch_size, runner=a.runner)
    if a.json:
        print(json.dumps(out, indent=1))
        return
    trace = out.pop("trace")
    for k, v in out.items():
        print(f"{k:<18} {v}")
    step = max(1, len(trace) // 10)
    print("images  RSS MiB")
    for i, r in trace[::step] + [trace[-1]]:
        print(f"{i:>7} {r:8.1f}")


if __name__ == "__main__":
    main()
