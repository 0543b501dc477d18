"""The paper's comparison of heatmap methods on relmon's embedded models.

    .venv/bin/python scripts/paper_comparison.py            # 1,000 test images, both models
    .venv/bin/python scripts/paper_comparison.py --n 64      # quick look

For every method: MoRF AOPC (uniform noise over the valid input range, the paper's choice, predicted
class logit), the same per-sample noise ordered at random (the baseline the paper plots against),
AOPC minus random, AOPC relative to the clean logit, and the heatmap complexity measures (entropy,
PNG and JPEG bytes, Gini). Writes docs/paper_comparison.md (the README table), .csv (per-sample
records) and .png (mean MoRF curve minus the random-order curve, per method).
"""

from __future__ import annotations

import argparse
import time
from pathlib import Path

import numpy as np
import pandas as pd
import torch

import relmon
from relmon.complexity import heatmap_complexity
from relmon.data import DatasetNotFoundError, load_fashion_mnist, load_sample, to_tensor
from relmon.perturbation import region_perturbation

ROOT = Path(__file__).resolve().parents[1]


def load_images(n: int):
    try:
        images, labels = load_fashion_mnist("test")
        source = "Fashion-MNIST test set"
    except DatasetNotFoundError:
        images, labels = load_sample()
        source = "shipped sample"
    return to_tensor(images[:n]), torch.from_numpy(labels[:n]), source


def run_model(name, x, labels, methods, region, steps, batch):
    model = relmon.load_embedded(name)
    rows, curves = [], {}
    for method in methods + ["random order"]:
        t0 = time.perf_counter()
        parts, curve_parts = [], []
        for start in range(0, len(x), batch):
            xb = x[start : start + batch]
            ids = list(range(start, start + len(xb)))
            order = "morf"
            if method == "random order":
                e = relmon.explain_full(model, xb, "lrp")  # ignored by the random order
                order = "random"
            else:
                e = relmon.explain_full(model, xb, method)
            heat = relmon.to_heatmap(e.relevance, e.method)
            res = region_perturbation(model, xb, heat, region=region, steps=steps, order=order,
                                      target=e.target, sample_ids=ids, seed=0)
            part = {"sample": ids, "aopc": res.aopc.numpy(), "aopc_rel": res.aopc_rel.numpy(),
                    "correct": (e.target == labels[start : start + len(xb)]).numpy()}
            if method != "random order":
                part.update({k: v.numpy() for k, v in heatmap_complexity(heat).items()})
            parts.append(pd.DataFrame(part))
            curve_parts.append(res.curves)
        df = pd.concat(parts, ignore_index=True)
        df["method"], df["model"] = method, name
        rows.append(df)
        curves[method] = torch.cat(curve_parts).mean(0).numpy()
        print(f"  {name:<11} {method:<30} AOPC {df.aopc.mean():7.3f}  ({time.perf_counter() - t0:5.1f} s)", flush=True)
    records = pd.concat(rows, ignore_index=True)
    random_aopc = records[records.method == "random order"].set_index("sample").aopc
    records["aopc_minus_random"] = records.aopc - records["sample"].map(random_aopc)
    return records, curves


def summarise(records: pd.DataFrame) -> pd.DataFrame:
    def sem(s):
        return s.std(ddof=1) / np.sqrt(s.count())

    g = records.groupby(["model", "method"], sort=False)
    table = pd.DataFrame({
        "AOPC": g.aopc.mean(), "±": g.aopc.apply(sem),
        "AOPC − random": g.aopc_minus_random.mean(), "± ": g.aopc_minus_random.apply(sem),
        "AOPC / f(x⁰)": g.aopc_rel.mean(),
        "entropy (bits)": g.entropy_bits.mean(), "PNG bytes": g.png_bytes.mean(),
        "JPEG bytes": g.jpeg_bytes.mean(), "Gini": g.gini.mean(),
    })
    return table.reset_index()


def to_markdown(table: pd.DataFrame) -> str:
    def fmt(v):
        return f"{v:.3f}" if isinstance(v, float) and abs(v) < 100 else (f"{v:.0f}" if isinstance(v, float) else str(v))

    lines = ["| " + " | ".join(table.columns) + " |", "|" + "---|" * len(table.columns)]
    lines += ["| " + " | ".join(fmt(v) for v in row) + " |" for row in table.itertuples(index=False)]
    return "\n".join(lines)


def plot(curves_by_model, path, region, steps):
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, axes = plt.subplots(1, len(curves_by_model), figsize=(6 * len(curves_by_model), 4.2), squeeze=False)
    for ax, (name, curves) in zip(axes[0], curves_by_model.items(), strict=True):
        base = curves["random order"]
        for method, curve in curves.items():
            if method == "random order":
                continue
            style = "-" if method.startswith("lrp") else "--"
            ax.plot(np.arange(len(curve)), curve - base, style, label=method, lw=1.4)
        ax.axhline(0, color="k", lw=0.8)
        ax.set_title(f"{name}: MoRF curve minus random order")
        ax.set_xlabel(f"perturbation step k ({region}×{region} regions, uniform noise)")
        ax.set_ylabel("f(x^(k)) − f_random(x^(k))  [logit]")
    axes[0, -1].legend(fontsize=7, loc="lower left")
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)


def main(argv=None):
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--n", type=int, default=1000)
    ap.add_argument("--models", nargs="+", default=["fmnist_cnn", "fmnist_vgg"])
    ap.add_argument("--methods", nargs="+", default=[m for m in relmon.available_methods() if m != "lrp"])
    ap.add_argument("--region", type=int, default=4)
    ap.add_argument("--steps", type=int, default=49)
    ap.add_argument("--batch", type=int, default=250)
    ap.add_argument("--out", type=Path, default=ROOT / "docs" / "paper_comparison")
    args = ap.parse_args(argv)

    torch.manual_seed(0)
    x, labels, source = load_images(args.n)
    print(f"{len(x)} images from the {source}; region {args.region}, L = {args.steps}", flush=True)
    t0 = time.perf_counter()
    all_records, all_curves = [], {}
    for name in args.models:
        records, curves = run_model(name, x, labels, args.methods, args.region, args.steps, args.batch)
        all_records.append(records)
        all_curves[name] = curves
    records = pd.concat(all_records, ignore_index=True)
    table = summarise(records[records.method != "random order"])
    args.out.parent.mkdir(parents=True, exist_ok=True)
    records.to_csv(args.out.with_suffix(".csv"), index=False, float_format="%.5g")
    plot(all_curves, args.out.with_suffix(".png"), args.region, args.steps)
    header = (f"{len(x)} images of the {source}, {args.region}×{args.region} regions, L = {args.steps}, "
              f"uniform noise, predicted-class logit; mean (± standard error). "
              f"`{' '.join(['python scripts/paper_comparison.py', *(argv or [])])}`, "
              f"{time.perf_counter() - t0:.0f} s on this machine.\n\n")
    md = header + to_markdown(table) + "\n"
    args.out.with_suffix(".md").write_text(md)
    print(md)


if __name__ == "__main__":
    main()
