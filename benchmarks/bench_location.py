"""Monitor overhead of ``suspect_regions`` (issue 19): the job's scorer (:class:`relmon.scoring.BatchScorer`,
the monitor's settings: lrp:epsilon_0_01, region 4, L = 8, random order on every sample, records built)
on the shipped Fashion-MNIST sample with the embedded ``fmnist_cnn``, with and without the ten marker
squares of :func:`relmon.data.shortcuts.cue_regions` as suspect regions. Runs are interleaved
(without, with, without, ...) and the ratio is of minima and of medians over the repeats.

    python benchmarks/bench_location.py [--n 512] [--batch-size 64] [--repeats 5] [--threads 2]
"""

from __future__ import annotations

import argparse
import statistics
import time

import torch

from relmon.data import load_sample, to_tensor
from relmon.data.shortcuts import cue_regions
from relmon.models import load_embedded
from relmon.scoring import BatchScorer, WindowAccumulator


def run(scorer: BatchScorer, x: torch.Tensor, batch_size: int) -> float:
    sink = WindowAccumulator(scorer.methods)
    t0 = time.perf_counter()
    for i in range(0, len(x), batch_size):
        xb = x[i:i + batch_size]
        scorer.score_batch(xb, [str(j) for j in range(i, i + len(xb))], ["w"] * len(xb), sink)
    return time.perf_counter() - t0


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--n", type=int, default=512)
    ap.add_argument("--batch-size", type=int, default=64)
    ap.add_argument("--repeats", type=int, default=5)
    ap.add_argument("--threads", type=int, default=2)
    args = ap.parse_args()
    torch.set_num_threads(args.threads)
    images, _ = load_sample()
    x = to_tensor(images[:args.n])
    model = load_embedded("fmnist_cnn")
    settings = dict(methods=("lrp:epsilon_0_01",), region=4, steps=8)
    plain = BatchScorer(model, **settings)
    located = BatchScorer(model, **settings, suspect_regions=cue_regions("marker", 28, 28))
    run(plain, x[:args.batch_size], args.batch_size)  # warm-up
    run(located, x[:args.batch_size], args.batch_size)
    times = {"without": [], "with": []}
    for _ in range(args.repeats):
        times["without"].append(run(plain, x, args.batch_size))
        times["with"].append(run(located, x, args.batch_size))
    lo = {k: min(v) for k, v in times.items()}
    med = {k: statistics.median(v) for k, v in times.items()}
    print(f"n={args.n} batch={args.batch_size} threads={args.threads} repeats={args.repeats}")
    print("| suspect_regions | s (min) | s (median) |\n|---|---|---|")
    for k in ("without", "with"):
        print(f"| {k} | {lo[k]:.3f} | {med[k]:.3f} |")
    print(f"ratio with/without: {lo['with'] / lo['without']:.3f} (min/min), "
          f"{med['with'] / med['without']:.3f} (median/median)")


if __name__ == "__main__":
    main()
