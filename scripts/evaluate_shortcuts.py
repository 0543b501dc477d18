"""Evaluation of the Clever-Hans audit and of relevance-location monitoring on planted shortcuts
(issue 19; the figures are in docs/shortcuts.md).

Protocol (DESIGN §4a):

1. **Models.** Fashion-MNIST training images ``0..--train-n`` with a planted cue
   (:mod:`relmon.data.shortcuts`: ``marker`` positional, ``border`` global, ``watermark`` texture) in
   90 % of them, two architectures each (``cnn``: 2 conv + linear; ``bncnn``: the same with
   BatchNorm; :mod:`relmon.audit.planted`); controls of both architectures trained on the clean
   images. Same schedule; ``--seed`` sets the training seed (``--audit-only`` for more seeds' audits).
2. **Tuning kinds and the held-out kind.** The audit's rule (``min_excess``, ``min_lift``, the candidate
   families: rings of width 1..2, corner blocks; class means flag, clusters do not), the location
   features and the gate margin were chosen looking at ``marker`` and ``border`` only; ``watermark``
   was held out of every decision and is reported separately.
3. **Audit** on ``--audit-n`` images of the test pool ``0..2000`` (the cue planted as in training:
   the user's labelled data looks like the training data); controls are audited on clean images *and*
   on images carrying each cue (a control must not be flagged for a cue it does not use).
   Recall = shortcut models flagged; false flags = control audits flagged.
4. **Monitoring** (shortcut models only). Suspect regions come from the model's own audit. The
   calibration windows come from test images ``2000..6000``: in-distribution (cue as in training), and
   the ``remove`` / ``shuffle`` variants of :func:`relmon.location.shortcut_variant`
   (``shortcut_variants: [remove, shuffle]``), plus two corruptions; the test windows from the
   disjoint images ``6000..10000``: in-distribution, shortcut-absent (no cue), misleading (a share
   ``p`` = 0.25 / 0.5 of the images carries another class's cue) and corruption windows at an
   unseen severity. Estimators: average confidence, ATC, DoC (fitted on the in-distribution window),
   a per-sample correctness model on confidence (logistic regression, fitted on the in-distribution
   and corruption windows: today's ``correctness_confidence`` idea), and the shortcut-aware one: the
   same logistic regression on confidence + the location features, fitted on all calibration
   windows including the variants; with the **gate**: a window whose mean location features lie
   outside the calibration windows' range (widened by ``--gate-margin`` of it) is an "unexplained
   shift" and gets the ATC estimate instead.

Run: ``nice python scripts/evaluate_shortcuts.py`` (models cached under ``--cache``: the file name holds
every training setting; about 10 min on the shared 2-core machine).
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path

import numpy as np
import torch
from torch import nn

ROOT = Path(__file__).resolve().parents[1]
if str(ROOT) not in sys.path:
    sys.path.insert(0, str(ROOT))

from relmon.audit import run_audit  # noqa: E402
from relmon.audit.core import heatmaps_for  # noqa: E402
from relmon.audit.planted import ARCHS, shortcut_model  # noqa: E402
from relmon.data.fashion_mnist import MEAN, STD, load_fashion_mnist  # noqa: E402
from relmon.data.shifts import apply_shift  # noqa: E402
from relmon.data.shortcuts import KINDS, cue_regions, plant  # noqa: E402
from relmon.location import location_features, shortcut_variant, suspect_mask  # noqa: E402

TUNING = ("marker", "border")
HELD_OUT = "watermark"
FEATURES = ("confidence", "suspect_share", "occlusion_flip", "occlusion_drop")


def get_model(arch, kind, xtr, ytr, args) -> nn.Module:
    """Trained on the first ``--train-n`` training images, or read from ``--cache`` (the file name holds
    every training setting: :func:`relmon.audit.planted.cache_name`)."""
    return shortcut_model(arch, kind, xtr, ytr, epochs=args.epochs, seed=args.seed, cache=args.cache)


def accuracy(model, x, y) -> float:
    with torch.no_grad():
        return float((model((x - MEAN) / STD).argmax(1) == y).float().mean())


def window_samples(model, raw, y, mask) -> dict[str, np.ndarray]:
    """Per-sample confidence, correctness and location features of one window."""
    heat, pred, conf = heatmaps_for(model, raw, "lrp:epsilon_0_01")
    x = (raw - MEAN) / STD
    feats = location_features(model, x, heat, pred, mask, raw=raw)
    out = {k: v.numpy().astype(float) for k, v in feats.items()}
    out["confidence"] = conf.numpy().astype(float)
    out["correct"] = (pred == y).numpy().astype(float)
    return out


def atc_threshold(conf: np.ndarray, correct: np.ndarray) -> float:
    """ATC (Garg et al. 2022): t with share(conf > t) = accuracy on the labelled source window."""
    return float(np.quantile(conf, 1.0 - correct.mean()))


def feature_matrix(s: dict[str, np.ndarray], names) -> np.ndarray:
    return np.nan_to_num(np.stack([s[n] for n in names], 1), nan=0.0)


def product_windows(model, name, kind, rects, cal_x, cal_y, test_raw, args) -> list[dict]:
    """The product's estimates of the test windows ``test_raw`` (``[(what, raw images, labels)]``).

    One :func:`relmon.jobs.calibrate_job.calibrate_model` on the calibration pool (the cue planted as in
    training: the user's labelled data) with the audit's ``suspect_regions`` and ``shortcut_variants``
    ``[remove, shuffle]``: its default estimator and unexplained-shift gate give the ``product``
    headline, as ``relmon monitor`` computes it. ``today`` is the default that the shipped candidates
    select on the same calibration records without the shortcut windows (those windows come last, so
    the others are the images and shifts a calibration without them would score). Each test window is
    scored once by :func:`relmon.jobs.scoring.score_stream` with the same config."""
    import importlib
    import warnings

    from relmon.analysis.robust import window_robustness
    from relmon.config import MonitorConfig
    from relmon.data.labelled import LabelledImages
    from relmon.data.streams import TensorStream
    from relmon.jobs.calibrate_job import calibrate_model, fit_and_select
    from relmon.jobs.method_auto import resolve_auto
    from relmon.jobs.scoring import score_stream
    from relmon.preprocessing import get_preprocessing

    unexplained = importlib.import_module("relmon.analysis.unexplained")  # the gate (issue 19, item 3)
    t0 = time.time()
    base = plant(cal_x, cal_y, kind, p=0.9, seed=300)
    data = LabelledImages(base, cal_y.numpy(), [f"cal:{i}" for i in range(len(base))], None, {"kind": "tensors"})
    cfg = MonitorConfig(calibration_n=args.cal_n, calibration_shifts=tuple(args.cal_shifts),
                        calibration_severities=tuple(args.cal_severities),
                        suspect_regions=tuple(tuple(int(v) for v in r) for r in rects),
                        shortcut_variants=("remove", "shuffle"))
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        cal = calibrate_model(model, data, cfg)
        ordinary = cal.records[~cal.records["window_id"].str.startswith("shortcut_")]
        today, today_default, _ = fit_and_select(ordinary, MonitorConfig().estimators)
    default = cal.meta["default_estimator"]
    gate_d = cal.meta.get("unexplained_shift_gate")
    gate = unexplained.UnexplainedShiftGate.from_dict(gate_d) if gate_d else None
    prep = get_preprocessing(model, "the evaluation")
    cfg = resolve_auto(cfg, model, cal)  # methods: auto -> the calibration's choice, as the monitor scores
    rows = []
    for j, (what, wx, wy) in enumerate(test_raw):
        stream = TensorStream(wx, wy.numpy(), ids=[f"{what}:{j}:{i}" for i in range(len(wx))], preprocessing=prep,
                              stream="test", window_size=len(wx))
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            rec, _, _ = score_stream(cfg, model, stream)
        one = rec.assign(window_id="test")
        estimates = {}
        for e_name, est in cal.estimators.items():
            try:
                r = est.predict(one).iloc[-1]
            except ValueError:
                continue
            estimates[e_name] = (float(r["estimate"]), float(r["lower"]), float(r["upper"]))
        head = window_robustness(cal, estimates, default, one)["headline"]
        fired = False
        if gate is not None:
            check = gate.check(one)
            fired = bool(check.get("fired"))
            head = unexplained.gated_headline(head, estimates, check)
        rows.append({
            "model": name, "kind": kind, "window": what, "product": float(head["estimate"]),
            "product_lower": float(head["lower"]), "product_upper": float(head["upper"]),
            "product_estimator": head["estimator"], "product_default": default, "gated": fired,
            "today": float(today[today_default].predict(one).iloc[-1]["estimate"]), "today_default": today_default,
            "method": cfg.methods[0],
            "accuracy": float(rec.drop_duplicates("sample_id")["correct"].astype(float).mean()),
            **{f"est_{k}": v[0] for k, v in estimates.items()},
        })
    print(f"{name}: product path {time.time() - t0:.0f} s (default {default}, today {today_default})", flush=True)
    return rows


ESTIMATORS = ("confidence", "atc", "doc", "correctness_confidence", "confidence_variants", "location",
              "location_gated")


def markdown(results: dict) -> str:
    """The tables of docs/shortcuts.md from the results JSON."""
    import pandas as pd

    out = []
    a = pd.DataFrame(results["audits"])
    out.append("### Audit\n")
    out.append("| model | audited data | flagged | suspect rects | cluster-only rects | cue pixels covered | seconds |")
    out.append("|---|---|---|---|---|---|---|")
    for _, r in a.iterrows():
        cov = "–" if pd.isna(r.get("cue_pixels_covered")) else f"{r['cue_pixels_covered']:.2f}"
        only = r.get("n_cluster_only")
        out.append(f"| {r['model']} | {r['data']} | {'**yes**' if r['flagged'] else 'no'} | {r['n_suspect']} | "
                   f"{'–' if pd.isna(only) else int(only)} | {cov} | {r['seconds']:.1f} |")
    sc = a[a["kind"].notna()]
    ctl = a[a["kind"].isna()]
    out.append(f"\nRecall (shortcut models flagged): tuning kinds {int(sc[sc.kind.isin(TUNING)].flagged.sum())}/"
               f"{int(sc.kind.isin(TUNING).sum())}, held-out {HELD_OUT} {int(sc[sc.kind == HELD_OUT].flagged.sum())}/"
               f"{int((sc.kind == HELD_OUT).sum())}; false flags (control audits flagged): "
               f"{int(ctl.flagged.sum())}/{len(ctl)}.\n")
    m = results["models"]
    out.append("" if m else "(model accuracies: in the JSON of a finished run)")
    out.append("### Models (accuracy on the test pool)\n")
    out.append("| model | with its cue (90 %) | no cue | every image a wrong cue |")
    out.append("|---|---|---|---|")
    for name, v in m.items():
        out.append(f"| {name} | {v['accuracy']:.3f} | {v.get('accuracy_no_cue', float('nan')):.3f} | "
                   f"{v.get('accuracy_wrong_cue', float('nan')):.3f} |")
    if results["windows"]:
        w = pd.DataFrame(results["windows"])
        for e in ESTIMATORS:
            w[f"err_{e}"] = (w[e] - w["accuracy"]).abs()
        w["group"] = np.where(w["kind"] == HELD_OUT, f"held-out ({HELD_OUT})", "tuning kinds")
        out.append("\n### Window estimates: mean absolute error\n")
        cols = ["accuracy", *[f"err_{e}" for e in ESTIMATORS], "gated"]
        t = w.groupby(["group", "window"])[cols].mean()
        t.insert(0, "windows", w.groupby(["group", "window"]).size())
        out.append("| group | window | windows | accuracy | " + " | ".join(ESTIMATORS) + " | gated share |")
        out.append("|---|---|---|---|" + "---|" * (len(ESTIMATORS) + 1))
        for (g, win), r in t.iterrows():
            out.append(f"| {g} | {win} | {int(r['windows'])} | {r['accuracy']:.3f} | "
                       + " | ".join(f"{r[f'err_{e}']:.3f}" for e in ESTIMATORS) + f" | {r['gated']:.2f} |")
        mis = w[w["window"].str.startswith("misleading")]
        if len(mis) >= 2:
            from scipy.stats import bootstrap

            out.append("\nPaired bootstrap over misleading windows (90 % interval of the error difference; "
                       "positive = the shortcut-aware estimator errs less):\n")
            for g, part in mis.groupby("group"):
                for base in ("confidence", "atc", "correctness_confidence", "confidence_variants"):
                    d = (part[f"err_{base}"] - part["err_location_gated"]).to_numpy()
                    if len(d) < 2:
                        continue
                    ci = bootstrap((d,), np.mean, confidence_level=0.9, n_resamples=2000,
                                   random_state=0).confidence_interval
                    out.append(f"- {g}: err({base}) − err(location_gated) = {d.mean():+.3f} "
                               f"[{ci.low:+.3f}, {ci.high:+.3f}] over {len(d)} windows")
    if results.get("product"):
        out.append(product_markdown(pd.DataFrame(results["product"])))
    return "\n".join(out) + "\n"


def product_markdown(p) -> str:
    """The product-path tables: today's default vs the shortcut-aware calibration's gated headline."""
    from scipy.stats import bootstrap

    p = p.copy()
    ests = ["today", "product", "est_location_regression", "est_atc", "est_average_confidence"]
    ests = [e for e in ests if e in p]
    for e in ests:
        p[f"err_{e}"] = (p[e] - p["accuracy"]).abs()
    p["group"] = np.where(p["kind"] == HELD_OUT, f"held-out ({HELD_OUT})", "tuning kinds")
    p["covered"] = (p["product_lower"] <= p["accuracy"]) & (p["accuracy"] <= p["product_upper"])
    p["width"] = p["product_upper"] - p["product_lower"]  # coverage is judged with the width it costs
    label = {"today": "today's default", "product": "product (gated)"}
    out = ["\n### Window estimates of the product: mean absolute error\n",
           "`relmon calibrate` (`calibrate_model`) with the audit's `suspect_regions` and `shortcut_variants: "
           "[remove, shuffle]`; the monitor's headline (default estimator, unexplained-shift gate); today's "
           "default = what the shipped candidates select on the same calibration without the shortcut "
           "windows. Defaults chosen: product "
           + ", ".join(f"{m}: {d}" for m, d in p.groupby("model")["product_default"].first().items())
           + "; today " + ", ".join(f"{m}: {d}" for m, d in p.groupby("model")["today_default"].first().items())
           + ".\n",
           "| group | window | windows | accuracy | " + " | ".join(label.get(e, e[4:]) for e in ests)
           + " | gated share | product interval covers | mean interval width |",
           "|---|---|---|---|" + "---|" * (len(ests) + 3)]
    t = p.groupby(["group", "window"])
    for (g, w), part in t:
        out.append(f"| {g} | {w} | {len(part)} | {part['accuracy'].mean():.3f} | "
                   + " | ".join(f"{part[f'err_{e}'].mean():.3f}" for e in ests)
                   + f" | {part['gated'].mean():.2f} | {part['covered'].mean():.2f} | {part['width'].mean():.2f} |")
    out.append("\nPaired bootstrap (90 % interval of the error difference; positive = the product errs less):\n")
    for g, part in p.groupby("group"):
        for what, sel in (("misleading", part["window"].str.startswith("misleading")),
                          ("corruption", part["window"].str.contains("/") & ~part["window"].str.startswith("misleading"))):
            sub = part[sel]
            for base in ("today", "est_atc", "est_average_confidence"):
                if base not in p or len(sub) < 2:
                    continue
                d = (sub[f"err_{base}"] - sub["err_product"]).to_numpy()
                ci = bootstrap((d,), np.mean, confidence_level=0.9, n_resamples=2000, random_state=0).confidence_interval
                out.append(f"- {g}, {what} windows: err({label.get(base, base[4:])}) − err(product) = {d.mean():+.3f} "
                           f"[{ci.low:+.3f}, {ci.high:+.3f}] over {len(d)} windows")
    return "\n".join(out)


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--train-n", type=int, default=6000)
    ap.add_argument("--epochs", type=int, default=2)
    ap.add_argument("--audit-n", type=int, default=1000)
    ap.add_argument("--window", type=int, default=200)
    ap.add_argument("--pool-n", type=int, default=2000, help="images of each monitoring pool used")
    ap.add_argument("--gate-margin", type=float, default=0.25)
    ap.add_argument("--seed", type=int, default=0, help="training seed (initial weights, shuffling, planting)")
    ap.add_argument("--cache", default="out/shortcuts_cache", help="folder of trained models (shared by runs)")
    ap.add_argument("--train-only", action="store_true", help="only train (or find) the models in --cache")
    ap.add_argument("--out", default="out/shortcuts.json")
    ap.add_argument("--kinds", nargs="+", default=list(KINDS))
    ap.add_argument("--no-controls", action="store_true", help="skip the control models (another run does them)")
    ap.add_argument("--controls-only", action="store_true", help="only the control models' audits")
    ap.add_argument("--audit-only", action="store_true", help="audits only, no monitoring windows")
    ap.add_argument("--product", action="store_true",
                    help="also estimate the test windows with the product: relmon calibrate (calibrate_model, "
                         "shortcut_variants remove+shuffle, the audit's suspect_regions), its default estimator "
                         "and unexplained-shift gate, and today's default (the same calibration without the "
                         "shortcut windows)")
    ap.add_argument("--cal-n", type=int, default=100, help="--product: calibration_n")
    ap.add_argument("--cal-shifts", nargs="+", default=["gaussian_noise", "blur", "contrast", "brightness"],
                    help="--product: calibration_shifts (fewer than shipped: the CPU budget)")
    ap.add_argument("--cal-severities", nargs="+", type=int, default=[3], help="--product: calibration_severities")
    ap.add_argument("--tables", metavar="JSON", nargs="+",
                    help="only print the markdown tables of earlier --out files (runs split by --kinds are merged)")
    args = ap.parse_args(argv)
    if args.tables:
        merged = {"models": {}, "audits": [], "windows": [], "product": [], "seconds": 0.0}
        for f in args.tables:
            text = Path(f).read_text()
            if not f.endswith(".json"):  # the log of a run cut short: its printed rows
                rows = [json.loads(line) for line in text.splitlines() if line.startswith("{")]
                text = json.dumps({"models": {}, "audits": [r for r in rows if "data" in r],
                                   "windows": [r for r in rows if "window" in r and "product" not in r],
                                   "product": [r for r in rows if "product" in r]})
            part = json.loads(text)
            merged["models"].update(part["models"])
            merged["audits"] += part["audits"]
            merged["windows"] += part["windows"]
            merged["product"] += part.get("product", [])
            merged["seconds"] += part.get("seconds", 0.0)
        print(markdown(merged))
        return 0
    t_start = time.time()
    from sklearn.linear_model import LogisticRegression

    xtr_u8, ytr_np = load_fashion_mnist("train")
    xte_u8, yte_np = load_fashion_mnist("test")
    xtr = torch.from_numpy(xtr_u8[: args.train_n].copy()).float().div(255).unsqueeze(1)
    ytr = torch.from_numpy(ytr_np[: args.train_n])
    xte = torch.from_numpy(xte_u8.copy()).float().div(255).unsqueeze(1)
    yte = torch.from_numpy(yte_np)
    audit_x, audit_y = xte[: args.audit_n], yte[: args.audit_n]
    cal_x, cal_y = xte[2000:2000 + args.pool_n], yte[2000:2000 + args.pool_n]
    test_x, test_y = xte[6000:6000 + args.pool_n], yte[6000:6000 + args.pool_n]
    results = {"settings": vars(args), "models": {}, "audits": [], "windows": [], "product": []}
    tag = f" s{args.seed}" if args.seed else ""  # model names of other training seeds
    if args.train_only:
        for arch in ARCHS:
            for kind in (None, *args.kinds):
                t0 = time.time()
                model = get_model(arch, kind, xtr, ytr, args)
                print(f"{arch}/{kind or 'control'}: accuracy {accuracy(model, test_x, test_y):.3f} on clean test "
                      f"images ({time.time() - t0:.1f} s)", flush=True)
        return 0

    for arch in () if args.no_controls else ARCHS:  # controls
        model = get_model(arch, None, xtr, ytr, args)
        cname = f"{arch}/control{tag}"
        results["models"][cname] = {"accuracy": accuracy(model, test_x, test_y)}
        for data_kind in (None, *args.kinds):
            xa = audit_x if data_kind is None else plant(audit_x, audit_y, data_kind, p=0.9, seed=12)
            t0 = time.time()
            r = run_audit(model, xa, audit_y)
            results["audits"].append({"model": cname, "kind": None, "seed": args.seed, "data": data_kind or "clean",
                                      "flagged": r.flagged, "n_suspect": len(r.suspect_regions),
                                      "n_cluster_only": len([c for c in r.cluster_suspect_regions if c not in r.suspect_regions]),
                                      "seconds": time.time() - t0,
                                      "max_excess": max((i["top_region"]["share"] - i["top_region"]["pixel_share"])
                                                        for i in r.per_class.values() if i["top_region"])})
            print(json.dumps(results["audits"][-1]), flush=True)

    for kind in () if args.controls_only else args.kinds:
        for arch in ARCHS:
            name = f"{arch}/{kind}{tag}"
            model = get_model(arch, kind, xtr, ytr, args)
            in_dist = plant(test_x, test_y, kind, p=0.9, seed=13)
            misled = plant(test_x, test_y, kind, p=0.0, p_wrong=1.0, seed=14)
            results["models"][name] = {"accuracy": accuracy(model, in_dist, test_y),
                                       "accuracy_no_cue": accuracy(model, test_x, test_y),
                                       "accuracy_wrong_cue": accuracy(model, misled, test_y)}
            xa = plant(audit_x, audit_y, kind, p=0.9, seed=12)
            t0 = time.time()
            r = run_audit(model, xa, audit_y)
            cue = suspect_mask(cue_regions(kind, 28, 28), 28, 28)
            found = suspect_mask(r.suspect_regions, 28, 28) if r.suspect_regions else torch.zeros(28, 28, dtype=bool)
            hit = float((found & cue).sum() / cue.sum())  # share of the cue's pixels inside suspect regions
            results["audits"].append({"model": name, "kind": kind, "seed": args.seed, "data": kind, "flagged": r.flagged,
                                      "n_cluster_only": len([c for c in r.cluster_suspect_regions if c not in r.suspect_regions]),
                                      "n_suspect": len(r.suspect_regions), "cue_pixels_covered": hit,
                                      "suspect_pixel_share": float(found.float().mean()),
                                      "seconds": time.time() - t0})
            print(json.dumps(results["audits"][-1]), flush=True)
            if not r.flagged or args.audit_only:
                continue
            mask = found

            # calibration windows (images 2000..6000), then test windows (6000..10000)
            def windows(x, y, kind=kind, mask=mask, model=model, calibration=True, keep=None):
                n = args.window
                chunks = [(x[i:i + n], y[i:i + n]) for i in range(0, len(x) - n + 1, n)]
                out, seed = [], 100 if calibration else 200
                for j, (cx, cy) in enumerate(chunks):
                    seed += 1
                    base = plant(cx, cy, kind, p=0.9, seed=seed)
                    if calibration:
                        kinds = ["in_distribution", "remove", "shuffle", "gaussian_noise/3", "blur/3"]
                    else:
                        kinds = ["in_distribution", "absent", "misleading/0.25", "misleading/0.5",
                                 "gaussian_noise/4", "contrast/4"]
                    what = kinds[j % len(kinds)]
                    if what in ("remove", "shuffle"):
                        wx = shortcut_variant(base, mask, what, seed=seed)
                    elif what == "absent":
                        wx = cx.clone()
                    elif what.startswith("misleading"):
                        wx = plant(cx, cy, kind, p=0.9, p_wrong=float(what.split("/")[1]), seed=seed)
                    elif "/" in what:
                        shift, sev = what.split("/")
                        wx = apply_shift(base, shift, int(sev), seed=seed)
                    else:
                        wx = base
                    out.append((what, window_samples(model, wx, cy, mask)))
                    if keep is not None:
                        keep.append((what, wx, cy))
                return out

            cal = windows(cal_x, cal_y, calibration=True)
            test_raw = []
            test = windows(test_x, test_y, calibration=False, keep=test_raw)
            ind = [s for w, s in cal if w == "in_distribution"]
            cat = {k: np.concatenate([s[k] for s in ind]) for k in ind[0]}
            t_atc = atc_threshold(cat["confidence"], cat["correct"])
            conf_src, acc_src = cat["confidence"].mean(), cat["correct"].mean()
            ordinary = [s for w, s in cal if w in ("in_distribution", "gaussian_noise/3", "blur/3")]
            everything = [s for _, s in cal]

            def fit(samples, names):
                X = np.concatenate([feature_matrix(s, names) for s in samples])
                yv = np.concatenate([s["correct"] for s in samples])
                return LogisticRegression(max_iter=1000).fit(X, yv)

            conf_model = fit(ordinary, ["confidence"])
            conf_variants = fit(everything, ["confidence"])
            loc_model = fit(everything, list(FEATURES))
            means = np.array([[np.nanmean(s[f]) for f in FEATURES[1:]] for s in everything])
            lo, hi = means.min(0), means.max(0)
            span = np.maximum(hi - lo, 1e-6)
            for what, s in test:
                m = np.array([np.nanmean(s[f]) for f in FEATURES[1:]])
                gated = bool(((m < lo - args.gate_margin * span) | (m > hi + args.gate_margin * span)).any())
                atc = float((s["confidence"] > t_atc).mean())
                loc = float(loc_model.predict_proba(feature_matrix(s, FEATURES))[:, 1].mean())
                row = {
                    "model": name, "kind": kind, "window": what, "n": int(len(s["correct"])),
                    "accuracy": float(s["correct"].mean()),
                    "confidence": float(s["confidence"].mean()),
                    "atc": atc,
                    "doc": float(acc_src + s["confidence"].mean() - conf_src),
                    "correctness_confidence": float(conf_model.predict_proba(feature_matrix(s, ["confidence"]))[:, 1].mean()),
                    "confidence_variants": float(conf_variants.predict_proba(feature_matrix(s, ["confidence"]))[:, 1].mean()),
                    "location": loc,
                    "location_gated": atc if gated else loc,
                    "gated": gated,
                    **{f"mean_{f}": float(np.nanmean(s[f])) for f in FEATURES[1:]},
                }
                results["windows"].append(row)
                print(json.dumps(row), flush=True)
            if args.product:
                for row in product_windows(model, name, kind, r.suspect_regions, cal_x, cal_y, test_raw, args):
                    results["product"].append(row)
                    print(json.dumps(row), flush=True)
    results["seconds"] = time.time() - t_start
    Path(args.out).parent.mkdir(parents=True, exist_ok=True)
    Path(args.out).write_text(json.dumps(results, indent=1))
    print(f"done in {results['seconds']:.0f} s; wrote {args.out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
