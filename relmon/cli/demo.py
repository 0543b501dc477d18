"""``relmon demo``: the main job end to end without make, then every heatmap method side by side.

1. calibrate the embedded model on the labelled shipped sample (once; cached in ``--calibration``,
   redone when the cached one was made with other settings);
2. monitor one *unlabelled*, noise-shifted window of the shipped sample against it: records, the
   Prometheus textfile, and the summary table (estimates beside the true accuracy the sample knows);
3. every heatmap method on the clean sample, scored by AOPC, and a PNG grid of inputs and heatmaps.
"""

from __future__ import annotations

import argparse
import time
from pathlib import Path

from relmon.exitcodes import EXIT_OK


def run_job_demo(args: argparse.Namespace) -> None:
    """Steps 1 and 2: calibrate if needed, then monitor a shifted window and print its table."""
    from relmon.config import MonitorConfig
    from relmon.jobs import CalibrationMismatchError, calibrate, run_monitor
    from relmon.jobs.calibration import check_calibration, load_calibration
    from relmon.models import load_embedded, model_info

    out, cal_dir = Path(args.out), Path(args.calibration)
    cfg = MonitorConfig(
        model=args.model, shift=args.shift, severity=args.severity, n=args.window_n,
        calibration_n=args.calibration_n, calibration=str(cal_dir), textfile=str(out / "relmon.prom"),
        records=str(out / "records"),
    )
    if args.calibration_shifts:
        cfg = cfg.with_overrides({"calibration_shifts": tuple(args.calibration_shifts)})
    reason = "no calibration yet"
    if (cal_dir / "calibration.json").is_file():
        try:
            info = model_info(load_embedded(args.model))
            check_calibration(load_calibration(cal_dir), info.name, info.version, cfg)
            reason = None
        except (CalibrationMismatchError, ValueError) as err:
            reason = f"the cached one does not fit ({str(err)[:160]})"
    if reason is not None:
        print(f"[1/3] calibrating {args.model} on the labelled shipped sample ({reason}) -> {cal_dir}", flush=True)
        calibrate(cfg, cal_dir)
    else:
        print(f"[1/3] using the calibration in {cal_dir}", flush=True)
    print(f"[2/3] monitoring an unlabelled window of {args.window_n} shipped images shifted by {args.shift} "
          f"(severity {args.severity})", flush=True)
    summary = run_monitor(cfg)
    print(summary.table())
    print(f"wrote {out / 'relmon.prom'} and the records under {out / 'records'}\n", flush=True)


def run_demo(args: argparse.Namespace) -> int:
    import torch

    if not args.methods_only:
        run_job_demo(args)
        print("[3/3] every heatmap method on the clean shipped sample", flush=True)

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
