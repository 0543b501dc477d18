"""The paper's comparison of heatmap methods (Samek et al. 2015, arXiv 1509.06321) on relmon's embedded
models, under two protocols and two region sizes, with paired standard errors.

    OMP_NUM_THREADS=1 .venv/bin/python scripts/paper_comparison.py          # 256 images, ~10 min, 1 core
    OMP_NUM_THREADS=1 .venv/bin/python scripts/paper_comparison.py --n 32   # quick look

Protocols: ``fraction = 0.16`` (the paper perturbs L = 100 regions of 9x9 pixels on 227x227 images,
about 16 % of the image) and ``fraction = 1.0`` (every region, the curve ends on pure noise). The 0.16
curve is the first ``L + 1`` points of the full one (same order, same noise), so both come from one
run per region size; at region 2 the full curve (196 steps) is evaluated every ``--stride`` steps
beyond the 0.16 prefix and interpolated linearly (trapezoid AOPC).

Every method sees the SAME images, the same per-sample uniform noise image, the same random order
and the same target (the predicted class), so the per-sample differences between two methods are
paired: the tables give the mean difference and its paired standard error (standard deviation of the
per-sample differences / sqrt(n)). Images: the Fashion-MNIST test set from index 2000 on (disjoint
from the shipped sample, the first 2000, on which relmon's calibration and tests run).

Writes docs/paper_comparison.md (tables), .csv (per-sample records) and .png (MoRF minus random curves).
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
from relmon.perturbation import aopc_from_curves, num_regions, region_perturbation, steps_for_fraction

ROOT = Path(__file__).resolve().parents[1]
LRP_DEFAULT = "lrp:epsilon_plus_flat"
FRACTIONS = (0.16, 1.0)


def load_images(n: int, start: int):
    try:
        images, labels = load_fashion_mnist("test")
        source = f"Fashion-MNIST test set, images {start}–{start + n - 1}"
    except DatasetNotFoundError:
        images, labels = load_sample()
        start = 0
        source = f"shipped sample, images 0–{n - 1}"
    return to_tensor(images[start:start + n]), torch.from_numpy(labels[start:start + n]), source


def curve_for(model, x, heat, target, ids, region, order, stride):
    """Full-image curve ``(B, R+1)``: exact up to the 0.16 prefix, ``stride``-subsampled beyond it."""
    n_reg = num_regions(x.shape[2], x.shape[3], region)
    head = steps_for_fraction(x.shape[2], x.shape[3], region, FRACTIONS[0])
    kw = dict(region=region, order=order, target=target, sample_ids=ids, seed=0, perturbation="uniform")
    if stride <= 1:
        return region_perturbation(model, x, heat, steps=n_reg, **kw).curves
    exact = region_perturbation(model, x, heat, steps=head, **kw).curves
    full = region_perturbation(model, x, heat, steps=n_reg, step_stride=stride, **kw).curves
    full[:, : head + 1] = exact  # the skipped steps inside the prefix: exact values
    return full


def run_model(name, x, labels, methods, regions, stride, batch):
    model = relmon.load_embedded(name)
    rows, mean_curves = [], {}
    heats, targets, complexity = {}, None, {}
    for method in methods:  # explanations once per method, shared by every protocol
        hs, ts, cs = [], [], []
        for start in range(0, len(x), batch):
            e = relmon.explain_full(model, x[start:start + batch], method)
            h = relmon.to_heatmap(e.relevance, e.method)
            hs.append(h)
            ts.append(e.target)
            cs.append(pd.DataFrame({k: v.numpy() for k, v in heatmap_complexity(h).items()}))
        heats[method] = torch.cat(hs)
        t = torch.cat(ts)
        assert targets is None or torch.equal(t, targets), "every method must explain the same class"
        targets = t
        complexity[method] = pd.concat(cs, ignore_index=True)
    correct = (targets == labels).numpy()
    for region in regions:
        stride_r = stride if num_regions(28, 28, region) > 100 else 1
        for method in [*methods, "random order"]:
            t0 = time.perf_counter()
            parts = []
            for start in range(0, len(x), batch):
                sl = slice(start, start + batch)
                ids = list(range(start, min(start + batch, len(x))))
                heat = heats[LRP_DEFAULT if method == "random order" else method][sl]
                order = "random" if method == "random order" else "morf"
                parts.append(curve_for(model, x[sl], heat, targets[sl], ids, region, order, stride_r))
            curves = torch.cat(parts).double()
            mean_curves[(region, method)] = curves.mean(0).numpy()
            for fraction in FRACTIONS:
                L = steps_for_fraction(28, 28, region, fraction)
                df = pd.DataFrame({
                    "sample": np.arange(len(x)), "aopc": aopc_from_curves(curves[:, : L + 1]).numpy(),
                    "correct": correct,
                })
                df["model"], df["method"], df["region"], df["fraction"], df["L"] = name, method, region, fraction, L
                if method != "random order":
                    df = pd.concat([df, complexity[method]], axis=1)
                rows.append(df)
            print(f"  {name:<11} region {region} {method:<30} ({time.perf_counter() - t0:5.1f} s)", flush=True)
    records = pd.concat(rows, ignore_index=True)
    key = ["model", "region", "fraction", "sample"]
    rnd = records[records.method == "random order"].set_index(key).aopc
    records["aopc_minus_random"] = records.aopc - pd.MultiIndex.from_frame(records[key]).map(rnd).to_numpy()
    return records, mean_curves


def paired(records: pd.DataFrame, column: str, reference: str) -> pd.DataFrame:
    """Per (model, region, fraction, method): mean of ``column`` minus the reference method's, per sample,
    and its paired standard error."""
    key = ["model", "region", "fraction", "sample"]
    ref = records[records.method == reference].set_index(key)[column]
    diff = records[column] - pd.MultiIndex.from_frame(records[key]).map(ref).to_numpy()
    g = diff.groupby([records.model, records.region, records.fraction, records.method], sort=False)
    return pd.DataFrame({"mean": g.mean(), "se": g.std(ddof=1) / np.sqrt(g.count())})


def aopc_table(records: pd.DataFrame) -> pd.DataFrame:
    rec = records[records.method != "random order"]
    g = rec.groupby(["model", "region", "fraction", "method"], sort=False)
    mr = g.aopc_minus_random
    vs_lrp = paired(rec, "aopc", LRP_DEFAULT)
    vs_sens = paired(rec, "aopc", "sensitivity")
    table = pd.DataFrame({
        "L": g.L.first(), "AOPC": g.aopc.mean(),
        "AOPC − random": mr.mean().map("{:.3f}".format) + " ± " + (mr.std(ddof=1) / np.sqrt(mr.count())).map("{:.3f}".format),
        f"− {LRP_DEFAULT}": vs_lrp["mean"].map("{:+.3f}".format) + " ± " + vs_lrp["se"].map("{:.3f}".format),
        "− sensitivity": vs_sens["mean"].map("{:+.3f}".format) + " ± " + vs_sens["se"].map("{:.3f}".format),
    })
    return table.reset_index()


def complexity_tables(records: pd.DataFrame) -> dict[str, pd.DataFrame]:
    """One table per measure: mean per method and paired differences from three reference methods."""
    # complexity does not depend on the protocol: one (region, fraction) slice holds each heatmap once
    rec = records[(records.method != "random order") & (records.fraction == FRACTIONS[0])]
    rec = rec[rec.region == rec.region.min()]
    tables = {}
    for col, label, digits in (("entropy_bits", "entropy (bits)", 3), ("png_bytes", "PNG bytes", 0),
                               ("jpeg_bytes", "JPEG bytes", 0), ("gini", "Gini", 3)):
        g = rec.groupby(["model", "method"], sort=False)[col]
        out = {"mean": g.mean().map(f"{{:.{digits}f}}".format)}
        for ref in (LRP_DEFAULT, "sensitivity", "deconvnet"):
            d = paired(rec, col, ref).droplevel(["region", "fraction"])
            out[f"− {ref}"] = d["mean"].map(f"{{:+.{digits}f}}".format) + " ± " + d["se"].map(f"{{:.{digits}f}}".format)
        tables[label] = pd.DataFrame(out).reset_index()
    return tables


def to_markdown(table: pd.DataFrame) -> str:
    def fmt(v):
        if isinstance(v, float):
            return f"{v:.3f}" if abs(v) < 100 else f"{v:.0f}"
        return str(v)

    lines = ["| " + " | ".join(map(str, table.columns)) + " |", "|" + "---|" * len(table.columns)]
    lines += ["| " + " | ".join(fmt(v) for v in row) + " |" for row in table.itertuples(index=False)]
    return "\n".join(lines)


def plot(curves_by_model, regions, path):
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    models = list(curves_by_model)
    fig, axes = plt.subplots(len(regions), len(models), figsize=(6 * len(models), 4 * len(regions)), squeeze=False)
    for i, region in enumerate(regions):
        for j, name in enumerate(models):
            ax, curves = axes[i, j], curves_by_model[name]
            base = curves[(region, "random order")]
            n_reg = len(base) - 1
            frac = np.arange(n_reg + 1) / n_reg
            for (r, method), curve in curves.items():
                if r != region or method == "random order":
                    continue
                ax.plot(frac, curve - base, "-" if method.startswith("lrp") else "--", label=method, lw=1.3)
            ax.axhline(0, color="k", lw=0.8)
            ax.axvline(FRACTIONS[0], color="grey", ls=":", lw=1)
            ax.set_title(f"{name}, {region}×{region} regions: MoRF minus random order")
            ax.set_xlabel("share of regions perturbed (dotted: the paper's 0.16)")
            ax.set_ylabel("f(x^(k)) − f_random(x^(k))  [logit]")
    axes[0, -1].legend(fontsize=7, loc="lower left")
    fig.tight_layout()
    fig.savefig(path, dpi=100)
    plt.close(fig)


def main(argv=None):
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--n", type=int, default=256)
    ap.add_argument("--start", type=int, default=2000, help="first test-set index (the shipped sample is 0-1999)")
    ap.add_argument("--models", nargs="+", default=["fmnist_cnn", "fmnist_vgg"])
    ap.add_argument("--methods", nargs="+", default=[m for m in relmon.available_methods() if m != "lrp"])
    ap.add_argument("--regions", nargs="+", type=int, default=[2, 4])
    ap.add_argument("--stride", type=int, default=4, help="step stride of the full-image curve beyond 0.16 "
                    "where it has more than 100 steps")
    ap.add_argument("--batch", type=int, default=128)
    ap.add_argument("--out", type=Path, default=ROOT / "docs" / "paper_comparison")
    args = ap.parse_args(argv)
    for m in (LRP_DEFAULT, "sensitivity", "deconvnet"):
        if m not in args.methods:
            args.methods.append(m)

    torch.manual_seed(0)
    x, labels, source = load_images(args.n, args.start)
    print(f"{len(x)} images ({source}); regions {args.regions}; fractions {FRACTIONS}", flush=True)
    t0 = time.perf_counter()
    all_records, all_curves = [], {}
    for name in args.models:
        records, curves = run_model(name, x, labels, args.methods, args.regions, args.stride, args.batch)
        all_records.append(records)
        all_curves[name] = curves
    records = pd.concat(all_records, ignore_index=True)
    elapsed = time.perf_counter() - t0
    args.out.parent.mkdir(parents=True, exist_ok=True)
    records.to_csv(args.out.with_suffix(".csv"), index=False, float_format="%.5g")
    plot(all_curves, args.regions, args.out.with_suffix(".png"))
    command = " ".join(["OMP_NUM_THREADS=1 python scripts/paper_comparison.py", *(argv or [])])
    md = [
        "# Paper comparison: region perturbation (MoRF) on the embedded models\n",
        f"{len(x)} images ({source}); uniform noise over the model's input range, one noise image and one "
        "random order per sample shared by every method; target = predicted class, score = its logit. "
        "L = round(fraction × number of regions): fraction 0.16 is the paper's protocol (≈16 % of the image), "
        f"1.0 perturbs every region (region 2, fraction 1.0: steps beyond L = 31 evaluated every {args.stride} "
        "and interpolated). Entries are mean ± standard error over images; the two right-hand columns are "
        "paired: mean per-image difference of AOPC from the named method's, ± its paired standard error "
        f"(the random order is common to all methods, so these equal differences of AOPC − random). `{command}`, "
        f"{elapsed:.0f} s on one core of this machine.\n",
        "## AOPC\n",
        to_markdown(aopc_table(records)),
        "\n## Heatmap complexity (independent of the protocol)\n",
        "Mean per method, and the paired mean difference (± paired standard error) from `lrp:epsilon_plus_flat`, "
        "`sensitivity` and `deconvnet` on the same images; lower entropy / fewer bytes / higher Gini = a "
        "sparser heatmap.",
    ]
    for label, table in complexity_tables(records).items():
        md += [f"\n### {label}\n", to_markdown(table)]
    md.append("")
    args.out.with_suffix(".md").write_text("\n".join(md))
    print("\n".join(md))


if __name__ == "__main__":
    main()
