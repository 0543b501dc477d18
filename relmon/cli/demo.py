"""``relmon demo``: every heatmap method on the embedded model and the shipped sample."""

from __future__ import annotations

import argparse
import time
from pathlib import Path

from relmon.exitcodes import EXIT_OK


def run_demo(args: argparse.Namespace) -> int:
    import torch

    import relmon
    from relmon.complexity import entropy_bits
    from relmon.data import FASHION_MNIST_CLASSES, load_sample, to_tensor
    from relmon.explain import conservation, explain_full, to_heatmap
    from relmon.models import load_embedded, model_info
    from relmon.perturbation import num_regions, region_perturbation
    from relmon.report import heatmap_grid

    torch.manual_seed(args.seed)
    model = load_embedded(args.model)
    info = model_info(model)
    images, labels = load_sample()
    n = min(args.n, len(images))
    x = to_tensor(images[:n])
    with torch.no_grad():
        pred = model(x).argmax(1)
    acc = (pred == torch.from_numpy(labels[:n])).float().mean().item()
    print(f"relmon {relmon.__version__} demo: model {info.name} (version {info.version}), "
          f"{n} shipped Fashion-MNIST test images, accuracy on them {acc:.3f}")

    methods = args.methods or relmon.available_methods()[1:]  # skip the bare 'lrp' alias
    heatmaps, rows = {}, []
    ids = list(range(n))
    random_order = None
    for method in methods:
        t0 = time.perf_counter()
        e = explain_full(model, x, method)
        hm = to_heatmap(e.relevance, e.method)
        seconds = time.perf_counter() - t0
        kw = dict(target=e.target, region=args.region, steps=args.steps, sample_ids=ids, seed=args.seed)
        if random_order is None:  # the random order does not depend on the heatmap: run it once
            random_order = region_perturbation(model, x, hm, order="random", **kw).aopc
        aopc = region_perturbation(model, x, hm, order="morf", **kw).aopc
        heatmaps[e.method] = hm[: args.grid]
        absorbed = conservation(e.relevance, e.logits, e.target).mean().item() if method.startswith("lrp") else float("nan")
        rows.append((e.method, 1000 * seconds / n, absorbed, aopc.mean().item(),
                     (aopc - random_order).mean().item(), entropy_bits(hm).mean().item()))

    print(f"\n{'method':<30} {'ms/image':>9} {'absorbed':>9} {'AOPC':>7} {'-random':>8} {'entropy':>8}")
    for method, ms, absorbed, aopc, gap, ent in rows:
        shown = f"{absorbed:9.3f}" if absorbed == absorbed else f"{'-':>9}"
        print(f"{method:<30} {ms:9.2f} {shown} {aopc:7.3f} {gap:8.3f} {ent:8.3f}")
    print(f"\nAOPC: mean logit drop over L = {min(args.steps, num_regions(28, 28, args.region))} steps perturbing "
          f"{args.region}x{args.region} regions most-relevant-first with uniform noise; -random: minus the same noise "
          f"in random order ({random_order.mean().item():.3f}); entropy in bits; absorbed: share of the explained "
          "logit not in the input relevance (biases, epsilon), LRP only")

    k = min(args.grid, n)
    titles = [f"{FASHION_MNIST_CLASSES[int(p)]}" for p in pred[:k]]
    out = Path(args.out)
    path = heatmap_grid(to_tensor(images[:k], normalize=False), heatmaps, out / "heatmaps.png", titles=titles)
    print(f"\nwrote {path}")
    return EXIT_OK
