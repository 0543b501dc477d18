"""``relmon audit`` on 2,000 28×28 images: wall time, and its ratio to the heatmaps alone.

Issue 19's target: the audit runs on 2,000 28×28 images in under 2 minutes on the 2-core development
machine. The audit is the heatmaps (one LRP pass per image) plus region shares, per-class means and
SpRAy (a kNN graph, a Laplacian eigen-decomposition and spectral clustering per class); the ratio
``audit / heatmaps`` says what the analysis adds on top of the explanations (on a loaded, shared
machine the ratio is steadier than the seconds). Model: the embedded ``fmnist_cnn``; data: the shipped
Fashion-MNIST sample (2,000 test images). Interleaved repeats; median and minimum.

    nice python benchmarks/bench_audit.py [--repeats 3] [--n 2000]
"""

from __future__ import annotations

import argparse
import statistics
import time


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--repeats", type=int, default=3)
    ap.add_argument("--n", type=int, default=2000)
    ap.add_argument("--method", default="lrp:epsilon_0_01")
    args = ap.parse_args()
    import torch

    from relmon.audit import heatmaps_for, run_audit
    from relmon.data.fashion_mnist import load_sample
    from relmon.models import load_embedded

    images, labels = load_sample()
    x = torch.from_numpy(images[: args.n].copy()).float().div(255).unsqueeze(1)
    y = torch.from_numpy(labels[: args.n].copy())
    model = load_embedded("fmnist_cnn")
    audit_s, heat_s = [], []
    for _ in range(args.repeats):
        t = time.perf_counter()
        heatmaps_for(model, x, args.method)
        heat_s.append(time.perf_counter() - t)
        t = time.perf_counter()
        result = run_audit(model, x, y, method=args.method)
        audit_s.append(time.perf_counter() - t)
    print(f"{args.n} images, {torch.get_num_threads()} threads, method {args.method}, flagged {result.flagged}")
    print("| step | median s | min s |\n|---|---|---|")
    print(f"| heatmaps only | {statistics.median(heat_s):.2f} | {min(heat_s):.2f} |")
    print(f"| whole audit | {statistics.median(audit_s):.2f} | {min(audit_s):.2f} |")
    print(f"ratio audit / heatmaps (median): {statistics.median(audit_s) / statistics.median(heat_s):.2f}")


if __name__ == "__main__":
    main()
