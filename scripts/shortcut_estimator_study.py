"""Design study for the shortcut-aware estimator and the "unexplained shift" gate (issue 19, item 3).

Scores calibration and test windows of the planted-shortcut models with relmon's own pipeline
(:func:`relmon.jobs.scoring.score_stream`, the shipped scoring settings) plus the per-sample location
features (:func:`relmon.location.location_features`), then fits relmon's estimators on the calibration
windows and reports each one's error on the test windows.

- Models: ``scripts/evaluate_shortcuts.py``'s (cached under ``--cache``), suspect regions = the cue's
  own rectangles (``cue_regions``: the "drawn by the user" case; the audit's regions are the other case).
- Calibration windows (test images 2000..6000): ``clean`` (cue as in training), every shipped
  calibration shift x severity, and the shortcut variants ``shortcut_<remove|shuffle>/<share>`` at the
  mixing shares of :data:`relmon.shortcut.VARIANT_SHARES`.
- Test windows (6000..10000): in_distribution, absent, misleading/0.25, misleading/0.5, and corruptions
  at severities the calibration did not use.

Writes one JSON of per-window estimates; ``--tables`` prints the error tables.
"""

from __future__ import annotations

import argparse
import sys
import time
import warnings
from pathlib import Path

import numpy as np
import pandas as pd
import torch

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
sys.path.insert(0, str(ROOT / "scripts"))

import evaluate_shortcuts as ev  # noqa: E402

from relmon.audit.core import heatmaps_for  # noqa: E402
from relmon.config import MonitorConfig  # noqa: E402
from relmon.data.shifts import apply_shift  # noqa: E402
from relmon.data.shortcuts import cue_regions, plant  # noqa: E402
from relmon.data.streams import TensorStream  # noqa: E402
from relmon.jobs.scoring import score_stream  # noqa: E402
from relmon.location import location_features, shortcut_variant, suspect_mask  # noqa: E402
from relmon.preprocessing import get_preprocessing  # noqa: E402

SHARES = (0.25, 0.5, 1.0)
TEST = ("in_distribution", "absent", "misleading/0.25", "misleading/0.5", "gaussian_noise/4", "contrast/4",
        "blur/2", "rotation/4", "brightness/2", "pixelation/4")


def mixed_variant(raw, mask, variant, share, seed):
    """``variant`` applied to a seeded ``share`` of the images (the rest untouched)."""
    out = raw.clone()
    rng = np.random.default_rng(seed)
    k = int(round(share * len(raw)))
    idx = torch.as_tensor(np.sort(rng.permutation(len(raw))[:k]))
    if k:
        out[idx] = shortcut_variant(raw[idx], mask, variant, seed=seed)
    return out


def make_windows(x, y, kind, mask, plan, n, seed0):
    rng = np.random.default_rng(seed0)
    out = []
    for j, what in enumerate(plan):
        seed = seed0 + j
        idx = torch.as_tensor(rng.choice(len(x), n, replace=False))
        cx, cy = x[idx], y[idx]
        base = plant(cx, cy, kind, p=0.9, seed=seed)
        if what in ("clean", "in_distribution"):
            wx = base
        elif what.startswith("shortcut_"):
            v, share = what[len("shortcut_"):].split("/")
            wx = mixed_variant(base, mask, v, float(share), seed)
        elif what == "absent":
            wx = cx.clone()
        elif what.startswith("misleading"):
            wx = plant(cx, cy, kind, p=0.9, p_wrong=float(what.split("/")[1]), seed=seed)
        else:
            shift, sev = what.split("/")
            wx = apply_shift(base, shift, int(sev), seed=seed)
        out.append((what, wx, cy))
    return out


def score_windows(cfg, model, windows, mask, name):
    """Records of all windows (window_id = the plan's name) with the location columns."""
    prep = get_preprocessing(model, "study")
    xs = torch.cat([w[1] for w in windows])
    ys = np.concatenate([w[2].numpy() for w in windows])
    n = len(windows[0][1])
    ids = [f"{name}:{i}" for i in range(len(xs))]
    stream = TensorStream(xs, ys, ids=ids, preprocessing=prep, stream="study", window_size=n)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        records, _, _ = score_stream(cfg, model, stream)
    names = {f"study:{i * n}": w[0] for i, w in enumerate(windows)}
    records["window_id"] = records["window_id"].map(names)
    heat, pred, _ = heatmaps_for(model, xs, cfg.methods[0])
    feats = location_features(model, prep.normalize(xs), heat, pred, mask, raw=xs)
    loc = pd.DataFrame({k: v.numpy().astype(float) for k, v in feats.items()})
    loc["sample_id"] = ids
    records = records.drop(columns=[c for c in loc.columns if c != "sample_id" and c in records.columns])
    return records.merge(loc, on="sample_id", how="left")


ANALYSED = ("atc", "average_confidence", "doc", "cbpe_isotonic", "regression_confidence", "correctness_confidence")


def analyse(folder: Path, names: list[str]) -> pd.DataFrame:
    """Per test window: the accuracy and every estimator's estimate, fitted on the calibration records;
    ``today`` = the default ``relmon calibrate`` selects from the shipped candidates on the calibration
    without the shortcut windows (what a user gets today); ``selected`` = the same selection on all
    calibration windows, ``location_regression[_local]`` as ``relmon calibrate`` fits them with
    ``shortcut_variants`` (that selected default as their fallback); ``gated`` = location_regression
    after the unexplained-shift gate (atc where it fires)."""
    from relmon.analysis import make_estimator
    from relmon.analysis.unexplained import UnexplainedShiftGate
    from relmon.jobs.calibrate_job import fit_and_select
    from relmon.jobs.shortcut_windows import fit_shortcut_estimators

    rows = []
    for name in names:
        rc = pd.read_parquet(folder / f"{name}_cal.parquet")
        rt = pd.read_parquet(folder / f"{name}_test.parquet")
        ordinary = rc[~rc["window_id"].str.startswith("shortcut_")]
        fitted, default, _ = fit_and_select(ordinary, MonitorConfig().estimators)
        preds = {"today": fitted[default].predict(rt).set_index("window_id")["estimate"]}
        fitted, default, validation = fit_and_select(rc, MonitorConfig().estimators)
        preds["selected"] = fitted[default].predict(rt).set_index("window_id")["estimate"]
        fitted, _, _ = fit_shortcut_estimators(rc, fitted, default, validation)
        for e in ("location_regression", "location_regression_local"):
            preds[e] = fitted[e].predict(rt).set_index("window_id")["estimate"]
        for e in ANALYSED:
            preds[e] = make_estimator(e).fit(rc).predict(rt).set_index("window_id")["estimate"]
        gate = UnexplainedShiftGate.fit(rc)
        for w, part in rt.groupby("window_id"):
            g = gate.check(part)
            row = {"model": name, "window": w.split("#")[0], "window_id": w, "today_default": default,
                   "accuracy": float(part.drop_duplicates("sample_id")["correct"].mean()), "gate": g["fired"],
                   **{k: float(v[w]) for k, v in preds.items()}}
            row["gated"] = row["atc"] if g["fired"] else row["location_regression"]
            rows.append(row)
        print(f"{name}: today's default {default}", flush=True)
    return pd.DataFrame(rows)


def tables(df: pd.DataFrame) -> str:
    ests = ["today", "selected", "location_regression", "location_regression_local", *ANALYSED, "gated"]
    err = df.assign(**{e: (df[e] - df["accuracy"]).abs() for e in ests})
    t = err.groupby("window")[["accuracy", *ests]].mean()
    t.insert(0, "windows", err.groupby("window").size())
    out = ["| window | windows | accuracy | " + " | ".join(ests) + " |", "|---" * (len(ests) + 3) + "|"]
    for w, r in t.iterrows():
        out.append(f"| {w} | {int(r['windows'])} | {r['accuracy']:.3f} | " + " | ".join(f"{r[e]:.3f}" for e in ests) + " |")
    mis = err[err["window"].str.startswith("misleading")]
    ordn = err[~err["window"].str.startswith(("misleading", "in_distribution", "absent"))]
    for label, part in (("misleading (mean)", mis), ("ordinary corruptions (mean)", ordn),
                        ("ordinary without rotation", ordn[~ordn["window"].str.startswith("rotation")])):
        out.append(f"| **{label}** | {len(part)} | {part['accuracy'].mean():.3f} | "
                   + " | ".join(f"{part[e].mean():.3f}" for e in ests) + " |")
    out.append(f"\nToday's defaults: {dict(df.groupby('model')['today_default'].first())}; gate fired on "
               f"{int(df['gate'].sum())} of {len(df)} test windows.")
    return "\n".join(out)


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--train-n", type=int, default=4000)
    ap.add_argument("--epochs", type=int, default=2)
    ap.add_argument("--window", type=int, default=200)
    ap.add_argument("--seed", type=int, default=0, help="training seed (evaluate_shortcuts.get_model)")
    ap.add_argument("--cache", default="out/shortcuts_cache", help="folder of trained models (shared with evaluate_shortcuts)")
    ap.add_argument("--kinds", nargs="+", default=["marker", "border"])
    ap.add_argument("--archs", nargs="+", default=list(ev.ARCHS))
    ap.add_argument("--records", default="out/study", help="folder for the scored records (parquet)")
    ap.add_argument("--test-repeats", type=int, default=2, help="test windows per test kind")
    ap.add_argument("--analyse", nargs="+", metavar="MODEL", help="only fit and evaluate the estimators on "
                    "the scored records of these models (e.g. cnn_marker bncnn_border); prints the tables")
    args = ap.parse_args(argv)
    if args.analyse:
        df = analyse(Path(args.records), args.analyse)
        df.to_csv(Path(args.records) / f"analysis_{'_'.join(args.analyse)}.csv", index=False)
        print(tables(df))
        return 0
    from relmon.data.fashion_mnist import load_fashion_mnist

    xtr_u8, ytr_np = load_fashion_mnist("train")
    xte_u8, yte_np = load_fashion_mnist("test")
    xtr = torch.from_numpy(xtr_u8[: args.train_n].copy()).float().div(255).unsqueeze(1)
    ytr = torch.from_numpy(ytr_np[: args.train_n])
    xte = torch.from_numpy(xte_u8.copy()).float().div(255).unsqueeze(1)
    yte = torch.from_numpy(yte_np)
    cfg = MonitorConfig()
    cal_plan = ["clean"] + [f"{s}/{v}" for s in cfg.calibration_shifts for v in cfg.calibration_severities] + [
        f"shortcut_{v}/{s:g}" for v in ("remove", "shuffle") for s in SHARES]
    test_plan = [w for w in TEST for _ in range(args.test_repeats)]
    out = Path(args.records)
    out.mkdir(parents=True, exist_ok=True)
    for kind in args.kinds:
        for arch in args.archs:
            t0 = time.time()
            model = ev.get_model(arch, kind, xtr, ytr, args)
            mask = suspect_mask(cue_regions(kind, 28, 28), 28, 28)
            name = f"{arch}_{kind}"
            cal = make_windows(xte[2000:6000], yte[2000:6000], kind, mask, cal_plan, args.window, 1000)
            test = make_windows(xte[6000:], yte[6000:], kind, mask, test_plan, args.window, 5000)
            rc = score_windows(cfg, model, cal, mask, name + "_cal")
            rt = score_windows(cfg, model, test, mask, name + "_test")
            # test windows named <kind>#<repeat>
            rt["window_id"] = rt["window_id"] + "#" + rt.groupby("window_id")["sample_id"].transform(
                lambda s: s.map(lambda i: str((int(i.rsplit(":", 1)[1]) // args.window) % 1000)))
            rc.to_parquet(out / f"{name}_cal.parquet")
            rt.to_parquet(out / f"{name}_test.parquet")
            print(f"{name}: {time.time() - t0:.0f} s", flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
