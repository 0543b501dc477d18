"""Evaluate relmon's label-free accuracy estimators against confidence baselines (issue 5).

Protocol (DESIGN §4, "Label-free accuracy"):

1. Records (one row per sample and method: LRP plus the random order) are computed ONCE per shift
   condition with the embedded ``fmnist_cnn``: ``clean`` on a pool of ``--pool`` shipped test images,
   every shift of :mod:`relmon.data.shifts` at every severity on a seeded subset of ``--shift-pool`` of
   them. They are cached as Parquet under ``--out`` (``out/`` is gitignored), keyed by the settings.
2. Windows of ``--window`` images are built by resampling those records (seeded, with replacement):
   clean windows, and windows that mix clean and shifted samples in proportions 0.25 .. 1.
3. Leave-one-shift-type-out: every estimator is fitted on the clean windows plus the windows of all
   other shift types (the confidence baselines on the clean reference windows only: their standard
   use) and scored on the windows of the held-out type. MAE, and the coverage of the 90 % interval.
4. The checkpoint series (the paper's experiment): records of ``--checkpoint-images`` images per
   checkpoint, Spearman of window features with the checkpoints' accuracy, bootstrap CI over images.

Writes ``<docs>/estimators.md`` (the table) and PNG plots to ``<docs>``. ``--tiny`` runs everything
at toy settings (CI, < 1 min).

Runtime at the defaults on 2 shared CPU cores (torch 2 threads): about 5 min from scratch (the 53
record files take ~4.5 min: 22,000 shifted/clean images + 2,400 checkpoint images at L = 16), about
30 s when the records are cached.
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path

import numpy as np
import pandas as pd
import torch

ROOT = Path(__file__).resolve().parents[1]
if str(ROOT) not in sys.path:  # run as a file from a checkout
    sys.path.insert(0, str(ROOT))

from relmon.data import load_sample, to_tensor  # noqa: E402
from relmon.data.fashion_mnist import MEAN, STD  # noqa: E402
from relmon.data.shifts import SEVERITIES, SHIFTS, apply_shift  # noqa: E402
from relmon.records import RANDOM_METHOD, read_record_files, write_records  # noqa: E402

PROPORTIONS = (0.25, 0.5, 0.75, 1.0)


def parse_args(argv=None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--out", default=str(ROOT / "out" / "estimators"), help="cache folder for records")
    p.add_argument("--docs", default=str(ROOT / "docs"), help="where estimators.md and the plots go")
    p.add_argument("--model", default="fmnist_cnn")
    p.add_argument("--pool", type=int, default=2000, help="clean pool size (shipped sample: 2000)")
    p.add_argument("--shift-pool", type=int, default=500, help="images per shifted condition")
    p.add_argument("--window", type=int, default=256, help="images per window")
    p.add_argument("--windows-per-condition", type=int, default=2)
    p.add_argument("--clean-windows", type=int, default=40)
    p.add_argument("--region", type=int, default=7)
    p.add_argument("--steps", type=int, default=16)
    p.add_argument("--checkpoint-images", type=int, default=200)
    p.add_argument("--n-boot", type=int, default=1000)
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--threads", type=int, default=2)
    p.add_argument("--tiny", action="store_true", help="toy settings for CI (< 1 min)")
    p.add_argument("--records-only", action="store_true", help="compute and cache records, then stop")
    args = p.parse_args(argv)
    args.severities = list(SEVERITIES)
    args.shifts = list(SHIFTS)
    args.proportions = list(PROPORTIONS)
    if args.tiny:
        args.pool, args.shift_pool, args.window = 64, 32, 32
        args.windows_per_condition, args.clean_windows = 1, 12
        args.steps, args.checkpoint_images, args.n_boot = 4, 16, 200
        args.severities = [2, 5]
        args.proportions = [0.5, 1.0]
    return args


# --------------------------------------------------------------------------------------------------
# records, once per condition


def _monitor(model, args):
    from relmon.lightning.monitor import RelevanceMonitor

    return RelevanceMonitor(model, methods=("lrp",), region=args.region, steps=args.steps, seed=args.seed)


def _score(monitor, x_raw: torch.Tensor, labels: np.ndarray, ids: list[str], window_id: str,
           chunk: int = 500) -> pd.DataFrame:
    frames = []
    for start in range(0, x_raw.shape[0], chunk):
        xb = (x_raw[start:start + chunk] - MEAN) / STD
        frames.append(monitor.score_batch(xb, ids[start:start + chunk], [window_id] * xb.shape[0],
                                          torch.as_tensor(labels[start:start + chunk])))
    return pd.concat(frames, ignore_index=True)


CACHE_STATS = {"computed": 0, "cached": 0}


def _cached(path: Path, compute) -> pd.DataFrame:
    if path.exists():
        CACHE_STATS["cached"] += 1
        return read_record_files([path])
    frame = compute()
    write_records(frame, path)
    CACHE_STATS["computed"] += 1
    return frame


def condition_records(args) -> dict[str, pd.DataFrame]:
    """``{condition: records}`` for ``clean`` and every ``shift@severity``, cached as Parquet."""
    from relmon.models import load_embedded

    images, labels = load_sample()
    images, labels = images[: args.pool], labels[: args.pool]
    x = to_tensor(images, normalize=False)
    rng = np.random.default_rng(args.seed)
    sub = np.sort(rng.choice(len(images), size=min(args.shift_pool, len(images)), replace=False))
    model = load_embedded(args.model)
    monitor = _monitor(model, args)
    cache = Path(args.out) / f"records_{args.model}_r{args.region}_s{args.steps}_seed{args.seed}"
    out = {}
    ids = [str(i) for i in range(len(images))]
    out["clean"] = _cached(cache / f"clean_n{len(images)}.parquet",
                           lambda: _score(monitor, x, labels, ids, "clean"))
    xs, ls, sub_ids = x[sub], labels[sub], [ids[i] for i in sub]
    for shift in args.shifts:
        for sev in args.severities:
            cond = f"{shift}@{sev}"
            shifted = apply_shift(xs, shift, sev, seed=args.seed + sev)
            out[cond] = _cached(cache / f"{cond}_n{len(sub)}.parquet",
                                lambda shifted=shifted, cond=cond: _score(monitor, shifted, ls, sub_ids, cond))
    return out


def checkpoint_records(args) -> tuple[pd.DataFrame, dict[str, float]]:
    """Records of the first ``--checkpoint-images`` images under every checkpoint (window = step)."""
    from relmon.models import checkpoint_series

    images, labels = load_sample()
    n = args.checkpoint_images
    x = to_tensor(images[:n], normalize=False)
    ids = [str(i) for i in range(n)]
    series = checkpoint_series(args.model)
    if args.tiny:
        series = [series[i] for i in np.linspace(0, len(series) - 1, 4).round().astype(int)]
    cache = Path(args.out) / f"checkpoints_{args.model}_r{args.region}_s{args.steps}_seed{args.seed}"
    frames, acc = [], {}
    for ckpt in series:
        wid = f"step{ckpt.step:05d}"
        acc[wid] = float(ckpt.test_accuracy)
        frames.append(_cached(cache / f"{wid}_n{n}.parquet",
                              lambda ckpt=ckpt, wid=wid: _score(_monitor(ckpt.load(), args), x, labels[:n], ids,
                                                                wid)))
    return pd.concat(frames, ignore_index=True), acc


# --------------------------------------------------------------------------------------------------
# windows by resampling records


def _per_sample_blocks(records: pd.DataFrame) -> tuple[pd.DataFrame, int]:
    """Records sorted so that sample ``i`` owns rows ``i*M .. i*M+M-1`` (M methods per sample)."""
    methods = sorted(records["method"].unique())
    rec = records.assign(_m=pd.Categorical(records["method"], categories=methods))
    rec = rec.sort_values(["sample_id", "_m"], kind="stable").drop(columns="_m").reset_index(drop=True)
    m = len(methods)
    if len(rec) % m:
        raise ValueError("every sample needs one row per method")
    return rec, m


def resample_window(blocks: list[tuple[pd.DataFrame, int]], counts: list[int], window_id: str,
                    rng: np.random.Generator) -> pd.DataFrame:
    """A window of ``sum(counts)`` samples drawn with replacement, ``counts[j]`` from ``blocks[j]``."""
    parts, k0 = [], 0
    for (rec, m), k in zip(blocks, counts, strict=True):
        if k == 0:
            continue
        chosen = rng.integers(0, len(rec) // m, size=k)
        rows = (chosen[:, None] * m + np.arange(m)[None, :]).ravel()
        part = rec.iloc[rows].copy()
        part["sample_id"] = (np.repeat(np.arange(k0, k0 + k), m)).astype(str)
        parts.append(part)
        k0 += k
    out = pd.concat(parts, ignore_index=True)
    out["window_id"] = window_id
    return out


def build_windows(cond: dict[str, pd.DataFrame], args) -> tuple[pd.DataFrame, pd.DataFrame]:
    """(records of all windows, window table: window_id, shift, severity, proportion)."""
    rng = np.random.default_rng(args.seed + 1)
    blocks = {c: _per_sample_blocks(r) for c, r in cond.items()}
    frames, meta = [], []
    for i in range(args.clean_windows):
        wid = f"clean/{i}"
        frames.append(resample_window([blocks["clean"]], [args.window], wid, rng))
        meta.append((wid, "clean", 0, 0.0))
    for shift in args.shifts:
        for sev in args.severities:
            for prop in args.proportions:
                for rep in range(args.windows_per_condition):
                    wid = f"{shift}@{sev}/p{prop:.2f}/{rep}"
                    k = round(prop * args.window)
                    frames.append(resample_window([blocks["clean"], blocks[f"{shift}@{sev}"]],
                                                  [args.window - k, k], wid, rng))
                    meta.append((wid, shift, sev, prop))
    windows = pd.DataFrame(meta, columns=["window_id", "shift", "severity", "proportion"])
    return pd.concat(frames, ignore_index=True), windows


# --------------------------------------------------------------------------------------------------
# evaluation


def _estimators():
    """``{name: (estimator, training data)}``: the confidence baselines fit on the clean source windows
    (their standard use), the regressions on clean + shifted training windows."""
    from relmon.analysis.estimators import ESTIMATORS, make_estimator

    return {name: (make_estimator(name), "all" if kind == "RelevanceEstimator" else "clean")
            for name, (kind, _) in ESTIMATORS.items()}


def leave_one_shift_out(records: pd.DataFrame, windows: pd.DataFrame, features: pd.DataFrame):
    """Per held-out shift type and estimator: MAE and 90 %-interval coverage on its windows."""
    from sklearn.base import clone

    shift_of = windows.set_index("window_id")["shift"]
    wshift = records["window_id"].map(shift_of)
    truth = features.set_index("window_id")["accuracy"]
    rows = []
    for held in [s for s in windows["shift"].unique() if s != "clean"]:
        test = records[wshift == held]
        train_all = records[wshift != held]
        train_clean = records[wshift == "clean"]
        for name, (est, source) in _estimators().items():
            est = clone(est).fit(train_clean if source == "clean" else train_all)
            pred = est.predict(test).set_index("window_id")
            y = truth.loc[pred.index]
            err = (pred["estimate"] - y).abs()
            cover = ((pred["lower"] <= y) & (y <= pred["upper"])).mean()
            rows.append({"held_out": held, "estimator": name, "mae": err.mean(), "coverage90": cover,
                         "n_windows": len(pred)})
    return pd.DataFrame(rows)


def markdown_table(frame: pd.DataFrame, floatfmt: str = ".3f", index: bool = True) -> str:
    """A GitHub markdown table (no tabulate dependency)."""
    frame = frame.reset_index() if index else frame
    cols = [str(c) for c in frame.columns]

    def cell(v) -> str:
        if isinstance(v, (float, np.floating)):
            return "—" if not np.isfinite(v) else format(float(v), floatfmt)
        return str(v)

    lines = ["| " + " | ".join(cols) + " |", "|" + "|".join("---" for _ in cols) + "|"]
    lines += ["| " + " | ".join(cell(v) for v in row) + " |" for row in frame.itertuples(index=False)]
    return "\n".join(lines)


def make_verdict(loso: pd.DataFrame) -> str:
    """Plain statement whether relevance features beat the confidence-only estimators."""
    mae = loso.pivot(index="held_out", columns="estimator", values="mae")
    rel_cols = [c for c in mae.columns if "relevance" in c]
    conf_cols = [c for c in mae.columns if "relevance" not in c]
    mean = mae.mean()
    best_rel, best_conf = mean[rel_cols].idxmin(), mean[conf_cols].idxmin()
    wins = int((mae[best_rel] < mae[conf_cols].min(axis=1)).sum())
    head = (f"best relevance-based estimator `{best_rel}` mean MAE {mean[best_rel]:.3f} vs best confidence-only "
            f"`{best_conf}` {mean[best_conf]:.3f}; `{best_rel}` beats every confidence-only estimator on "
            f"{wins} of {len(mae)} held-out shift types.")
    if mean[best_rel] < mean[best_conf]:
        margin = mean[best_conf] - mean[best_rel]
        size = "a small margin, within the spread across shift types" if margin < 0.01 else "a clear margin"
        return f"relevance features beat confidence on mean MAE, by {size}: " + head
    return "relevance features do NOT beat confidence here: " + head


def write_table(path: Path, args, loso: pd.DataFrame, shift_corr: pd.DataFrame, ckpt_corr: pd.DataFrame,
                ckpt_features: pd.DataFrame, drift: dict, runtime: float, default: str, verdict: str,
                plots: list[str]) -> None:
    from relmon.analysis.estimators import DEFAULT_ESTIMATOR

    mae = loso.pivot(index="held_out", columns="estimator", values="mae")
    order = list(_estimators())
    mae = mae[order]
    mean = mae.mean().rename("**mean**")
    cov = loso.groupby("estimator")["coverage90"].mean()[order].rename("90 % interval coverage")
    table = pd.concat([mae, mean.to_frame().T, cov.to_frame().T])
    lines = [
        "# Label-free accuracy estimators: evaluation",
        "",
        "Generated by `scripts/evaluate_estimators.py" + (" --tiny" if args.tiny else "") + "` "
        f"(runtime {runtime:.0f} s on {args.threads} CPU threads, of which {args.records_s:.0f} s for the records: "
        f"{CACHE_STATS['computed']} record files computed, {CACHE_STATS['cached']} read from the Parquet cache). "
        f"Model `{args.model}`, LRP "
        f"(`lrp:epsilon_plus_flat`) plus the random order, region {args.region} x {args.region} px, "
        f"L = {args.steps} steps, uniform perturbation, logit score. Pool: {args.pool} shipped test images "
        f"(clean), {args.shift_pool} per shifted condition ({len(args.shifts)} shifts x severities "
        f"{args.severities}). Windows of {args.window} images resampled (seeded, with replacement) from the "
        f"records: {args.clean_windows} clean, and per shift/severity {len(args.proportions)} shifted proportions "
        f"{list(args.proportions)} x {args.windows_per_condition}.",
        "",
        "## Leave-one-shift-type-out: mean absolute error of the accuracy estimate",
        "",
        "Rows: held-out shift type (estimators fitted on clean + all other shift types; the confidence "
        "baselines use the clean windows as their labelled source). Values: MAE in accuracy points (0..1).",
        "",
        markdown_table(table.rename_axis("held out")),
        "",
        f"**Verdict:** {verdict}",
        "",
        f"Default estimator (`relmon.analysis.estimators.DEFAULT_ESTIMATOR`): `{DEFAULT_ESTIMATOR}`; "
        f"best mean MAE in this run: `{default}`.",
        "",
        "## Correlation with accuracy across shifted windows",
        "",
        "Pearson and Spearman over all windows, 95 % bootstrap CI (windows resampled). Read the raw AOPC "
        "rows next to the random order's AOPC (`aopc_mean@random`): raw AOPC is in logit units and "
        "carries the logit scale, which itself moves with accuracy; the scale-free `aopc_rel` and the gap "
        "to random are the heatmap-quality part of the signal.",
        "",
        markdown_table(shift_corr, "+.3f", index=False),
        "",
        "## Checkpoint series (the paper's experiment)",
        "",
        f"{ckpt_features.shape[0]} checkpoints of `{args.model}`, {args.checkpoint_images} images each; "
        "accuracy = the checkpoint's test accuracy. 95 % bootstrap CI over images (resampled within "
        "every checkpoint).",
        "",
        markdown_table(ckpt_corr, "+.3f", index=False),
        "",
        markdown_table(ckpt_features, ".3f", index=False),
        "",
        "## Drift alarm (KS per feature, Holm-corrected, alpha = 0.01)",
        "",
        f"False-alarm rate on {drift['n_clean']} clean windows: {drift['false_alarm_rate']:.3f}; "
        f"alarm rate on shifted windows (proportion 1): {drift['detection_rate']:.3f}.",
        "",
        "Plots: " + ", ".join(f"`{p}`" for p in plots),
        "",
    ]
    path.write_text("\n".join(lines))


def main(argv=None) -> dict:
    t0 = time.perf_counter()
    args = parse_args(argv)
    torch.set_num_threads(args.threads)
    CACHE_STATS.update(computed=0, cached=0)
    cond = condition_records(args)
    ckpt_records, ckpt_acc = checkpoint_records(args)
    args.records_s = time.perf_counter() - t0
    if args.records_only:
        return {"runtime_s": time.perf_counter() - t0}
    from relmon.analysis.correlation import correlation_table, grouped_bootstrap_correlation, plot_correlation
    from relmon.analysis.drift import false_alarm_rate, ks_drift
    from relmon.analysis.features import sample_features, window_features

    records, windows = build_windows(cond, args)
    features = window_features(records)
    loso = leave_one_shift_out(records, windows, features)

    method = next(m for m in cond["clean"]["method"].unique() if m != RANDOM_METHOD)
    corr_cols = [f"aopc_mean@{method}", f"aopc_rel_mean@{method}", f"aopc_minus_random_mean@{method}",
                 f"entropy_bits_mean@{method}", f"png_bytes_mean@{method}", f"aopc_mean@{RANDOM_METHOD}",
                 "confidence_mean", "softmax_entropy_mean", "margin_mean"]
    shift_corr = correlation_table(features, corr_cols, n_boot=args.n_boot, seed=args.seed)
    docs = Path(args.docs)
    docs.mkdir(parents=True, exist_ok=True)
    plots = []
    plot_correlation(features, [*corr_cols[:4], f"aopc_mean@{RANDOM_METHOD}", "confidence_mean"],
                     docs / "estimators_shift_correlation.png",
                     title="Shifted windows: window features vs accuracy", hue=windows.set_index(
                         "window_id")["shift"].reindex(features["window_id"]).to_numpy())
    plots.append("estimators_shift_correlation.png")

    ckpt_feat = window_features(ckpt_records)
    ckpt_feat["accuracy"] = ckpt_feat["window_id"].map(ckpt_acc)
    ckpt_corr = grouped_bootstrap_correlation(
        ckpt_records, ckpt_acc,
        ["aopc", "aopc_rel", "aopc_minus_random", "entropy_bits", f"aopc@{RANDOM_METHOD}", "confidence"],
        method=method, n_boot=args.n_boot, seed=args.seed)
    plot_correlation(ckpt_feat, [*corr_cols[:4], f"aopc_mean@{RANDOM_METHOD}", "confidence_mean"],
                     docs / "estimators_checkpoint_correlation.png",
                     title=f"Checkpoint series of {args.model}: window features vs test accuracy")
    plots.append("estimators_checkpoint_correlation.png")

    # drift alarm: reference = one clean window, clean windows = the other clean windows
    wshift = records["window_id"].map(windows.set_index("window_id")["shift"])
    clean = records[wshift == "clean"]
    ref_id = clean["window_id"].iloc[0]
    reference = clean[clean["window_id"] == ref_id]
    far = false_alarm_rate(reference, clean[clean["window_id"] != ref_id])
    full = windows[(windows["proportion"] == 1.0)]["window_id"]
    shifted = records[records["window_id"].isin(set(full))]
    ref_samples = sample_features(reference)
    det = float(np.mean([ks_drift(ref_samples, w, method=method).alarm
                         for _, w in sample_features(shifted).groupby("window_id")]))
    drift = {"n_clean": clean["window_id"].nunique() - 1, "false_alarm_rate": far, "detection_rate": det}

    mean_mae = loso.groupby("estimator")["mae"].mean()
    best = str(mean_mae.idxmin())
    verdict = make_verdict(loso)
    runtime = time.perf_counter() - t0
    out = docs / "estimators.md"
    write_table(out, args, loso, shift_corr, ckpt_corr, ckpt_feat[["window_id", "accuracy",
                f"aopc_mean@{method}", f"aopc_mean@{RANDOM_METHOD}", f"aopc_minus_random_mean@{method}",
                f"aopc_rel_mean@{method}", f"entropy_bits_mean@{method}", "confidence_mean"]],
                drift, runtime, best, verdict, plots)
    summary = {"table": str(out), "runtime_s": runtime, "records_s": args.records_s,
               "record_files": dict(CACHE_STATS), "mean_mae": mean_mae.to_dict(), "best": best, "verdict": verdict, "checkpoint_correlation": ckpt_corr.to_dict("records"), "drift": drift}
    (Path(args.out)).mkdir(parents=True, exist_ok=True)
    (Path(args.out) / ("summary_tiny.json" if args.tiny else "summary.json")).write_text(
        json.dumps(summary, indent=2, default=float))
    print(out.read_text())
    print(f"runtime {runtime:.1f} s")
    return summary


if __name__ == "__main__":
    main()
