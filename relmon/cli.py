"""The ``relmon`` command."""

from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path

from relmon.cli_monitor import EXIT_CODES_HELP, EXIT_INPUT, EXIT_OK, EXIT_USAGE, add_commands


def _demo(args: argparse.Namespace) -> int:
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


def _methods(args: argparse.Namespace) -> int:
    import relmon

    for m in relmon.available_methods():
        print(m)
    return EXIT_OK


def build_parser() -> argparse.ArgumentParser:
    import relmon

    parser = argparse.ArgumentParser(
        prog="relmon",
        description="Label-free monitoring of image classifiers by the quality of their explanations.",
        epilog=EXIT_CODES_HELP,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    parser.add_argument("--version", action="version", version=f"relmon {relmon.__version__}")
    sub = parser.add_subparsers(dest="command", metavar="COMMAND")

    demo = sub.add_parser("demo", help="heatmaps of every method on the embedded model and shipped sample",
                          description="Explain the shipped Fashion-MNIST sample with every heatmap method, "
                                      "print a summary and write a PNG grid of inputs and heatmaps.")
    demo.add_argument("--model", default="fmnist_cnn", help="embedded model (fmnist_cnn, fmnist_vgg)")
    demo.add_argument("--n", type=int, default=256, help="images to explain (default 256)")
    demo.add_argument("--grid", type=int, default=8, help="images shown in the grid (default 8)")
    demo.add_argument("--methods", nargs="+", help="method ids (default: all; see 'relmon methods')")
    demo.add_argument("--out", default="out/demo", help="output folder (default out/demo)")
    demo.add_argument("--region", type=int, default=4, help="perturbation region side in pixels (default 4)")
    demo.add_argument("--steps", type=int, default=49, help="perturbation steps L (default 49, all 7x7 regions)")
    demo.add_argument("--seed", type=int, default=0)
    demo.set_defaults(func=_demo)

    methods = sub.add_parser("methods", help="list the heatmap method ids")
    methods.set_defaults(func=_methods)
    add_commands(sub)  # calibrate, monitor, serve
    return parser


def main(argv: list[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    if not getattr(args, "func", None):
        parser.print_help()
        return EXIT_USAGE
    try:
        return args.func(args)
    except (ValueError, TypeError, FileNotFoundError) as err:
        print(f"relmon: error: {err}", file=sys.stderr)
        return EXIT_INPUT


if __name__ == "__main__":
    sys.exit(main())
