"""Independent evaluation of relmon's label-free accuracy estimators.

Protocol (docs/estimators.md states the figures; DESIGN §4a):

1. **Disjoint image pools.** The Fashion-MNIST test set (10,000 images, read from the Debian
   ``fashion-mnist`` dataset) is split: the **fit pool** (images 2000-5999) makes the calibration
   records, the **test pool** (images 6000-9999) the test windows. No image of the test pool is ever
   seen by a fitted estimator; nothing is resampled with replacement.
2. **Calibration (fit pool)** as ``relmon calibrate`` makes it: ``clean`` plus every shift type of
   :mod:`relmon.data.shifts` at severities 1, 3, 5, ``--per-condition`` images each, windows of
   ``--window`` images (window ids ``clean/0``, ``gaussian_noise/3/0``, ...). Scoring uses the settings
   given by ``--region`` / ``--steps`` (default: what ``relmon calibrate`` ships, relmon/config.py).
3. **Selection on validation only.** :func:`relmon.analysis.selection.select_estimator` runs a
   leave-one-shift-type-out evaluation on the calibration records and picks the default; it never sees
   a test window.
4. **Test (test pool)**: clean windows; every shift type at the **unseen severities** 2 and 4; four
   **compositions** (two shifts at once, severity 3); **label-prior shift** (clean windows whose class
   frequencies are skewed towards the hardest or the easiest classes). The calibration also holds
   label-prior windows built the same way from the fit pool's clean images (``--no-calibration-label-prior``
   drops them). Every shifted test window is scored **held-out**: each estimator is refitted on the
   calibration without the windows of the test window's shift type (for compositions, without both of
   its types); clean test windows by the estimators fitted on all calibration windows.
5. MAE per test group with paired bootstrap intervals (scipy.stats.bootstrap over the test windows)
   of the difference to the best baseline, 90 % interval coverage and mean width; per-sample AUROC of
   every feature for correctness and the window Spearman with accuracy (bootstrap over windows).

Scored with the method(s), region size and L that ``relmon calibrate`` ships (``--methods``,
``--region``, ``--steps`` default to ``relmon.config.MonitorConfig``), and the selection chooses among
``MonitorConfig().estimators`` (``--candidates``); every other named estimator is a report-only row.
docs/estimators.md states the runtime of the run that produced it (records with L = 8: about a minute
per model on one thread).
Records are cached as Parquet under ``--cache``; ``--tiny`` is the CI version (< 1 min).
"""

from __future__ import annotations

import argparse
import sys
import time
import zlib
from pathlib import Path

import numpy as np
import pandas as pd
import torch

ROOT = Path(__file__).resolve().parents[1]
if str(ROOT) not in sys.path:  # run as a file from a checkout
    sys.path.insert(0, str(ROOT))

from relmon.data.fashion_mnist import MEAN, STD  # noqa: E402
from relmon.data.shifts import SHIFTS, apply_shift  # noqa: E402
from relmon.records import read_record_files, write_records  # noqa: E402

FIT_POOL = (2000, 6000)
TEST_POOL = (6000, 10000)
FIT_SEVERITIES = (1, 3, 5)
TEST_SEVERITIES = (2, 4)
COMPOSITIONS = (("blur", "gaussian_noise"), ("contrast", "rotation"), ("jpeg", "occlusion"),
                ("brightness", "pixelation"))
HARD_CLASSES = (0, 2, 4, 6)   # t-shirt, pullover, coat, shirt: the classes the models confuse most
EASY_CLASSES = (1, 5, 8, 9)   # trouser, sandal, bag, ankle boot


def _shipped(cfg):
    """The shipped config as it scores the embedded models (``methods: auto`` is their method)."""
    import dataclasses

    from relmon.jobs.method_auto import EMBEDDED_METHOD, is_auto

    return dataclasses.replace(cfg, methods=(EMBEDDED_METHOD,)) if is_auto(cfg.methods) else cfg


def parse_args(argv=None) -> argparse.Namespace:
    from relmon.config import MonitorConfig

    shipped = _shipped(MonitorConfig())
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--cache", default="/tmp/relmon-g-cache", help="Parquet cache of scored records")
    p.add_argument("--docs", default=str(ROOT / "docs"), help="where estimators.md and the plots go")
    p.add_argument("--models", nargs="+", default=["fmnist_cnn", "fmnist_vgg"])
    p.add_argument("--methods", nargs="+", default=list(shipped.methods),
                   help="heatmap methods scored (default: what 'relmon calibrate' ships); the first one "
                        "feeds the relevance features")
    p.add_argument("--candidates", nargs="+", default=list(shipped.estimators),
                   help="estimators the selection chooses among (default: the candidates 'relmon calibrate' "
                        "ships); every other estimator of relmon.analysis.ESTIMATORS is a report-only row")
    p.add_argument("--region", type=int, default=shipped.region)
    p.add_argument("--steps", type=int, default=shipped.steps)
    p.add_argument("--no-lerf", action="store_true", help="skip the LeRF order (no LeRF/MoRF contrast feature)")
    p.add_argument("--no-lerf-for", nargs="*", default=[], metavar="MODEL",
                   help="models scored without LeRF (compute budget; their lerf_contrast feature is NaN)")
    p.add_argument("--window", type=int, default=100, help="images per window")
    p.add_argument("--clean", type=int, default=600, help="clean images per pool")
    p.add_argument("--per-condition", type=int, default=100, help="images per shifted condition")
    p.add_argument("--n-boot", type=int, default=2000)
    p.add_argument("--no-calibration-label-prior", action="store_true",
                   help="do not add label-prior windows (from the fit pool's clean images) to the calibration")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--threads", type=int, default=1)
    p.add_argument("--tiny", action="store_true", help="toy settings for CI (< 1 min)")
    p.add_argument("--records-only", action="store_true", help="compute and cache records, then stop")
    args = p.parse_args(argv)
    args.command = " ".join(["python scripts/evaluate_estimators.py",
                             *(sys.argv[1:] if argv is None else list(argv))])
    args.shifts = list(SHIFTS)
    args.compositions = list(COMPOSITIONS)
    if args.tiny:
        args.models = args.models[:1]
        args.window, args.clean, args.per_condition, args.n_boot = 20, 40, 20, 200
        args.steps = min(args.steps, 8)
        args.shifts = ["gaussian_noise", "contrast", "rotation", "blur"]
        args.compositions = [("blur", "gaussian_noise")]
    return args


# --------------------------------------------------------------------------------------------------
# records: one Parquet file per (model, pool, condition)


def _stable_seed(*parts) -> int:
    return zlib.crc32("/".join(map(str, parts)).encode()) % (2 ** 31)


def conditions(args) -> list[tuple[str, str, tuple[tuple[str, int], ...], int]]:
    """``(pool, condition name, shifts applied, n images)`` for every condition scored."""
    out = [("fit", "clean", (), args.clean), ("test", "clean", (), args.clean)]
    for shift in args.shifts:
        out += [("fit", f"{shift}/{sev}", ((shift, sev),), args.per_condition) for sev in FIT_SEVERITIES]
        out += [("test", f"{shift}/{sev}", ((shift, sev),), args.per_condition) for sev in TEST_SEVERITIES]
    for a, b in args.compositions:
        if a in args.shifts and b in args.shifts:
            out.append(("test", f"{a}+{b}/3", ((a, 3), (b, 3)), args.per_condition))
    return out


def _lerf(model_name: str, args) -> bool:
    return not args.no_lerf and model_name not in args.no_lerf_for


def _monitor(model, model_name, args):
    from relmon.lightning.monitor import RelevanceMonitor

    return RelevanceMonitor(model, methods=tuple(args.methods), region=args.region, steps=args.steps, seed=args.seed,
                            lerf=_lerf(model_name, args))


def score_condition(monitor, images: np.ndarray, labels: np.ndarray, index: np.ndarray, shifts, name: str,
                    pool: str, window: int, chunk: int = 200) -> pd.DataFrame:
    """Records of ``images[index]`` under ``shifts``; window ``k`` holds images ``k*window ..``."""
    x = torch.as_tensor(images[index], dtype=torch.float32)[:, None] / 255.0
    for shift, sev in shifts:
        x = apply_shift(x, shift, sev, seed=_stable_seed(pool, name, shift, sev))
    frames = []
    for start in range(0, len(index), chunk):
        sl = slice(start, start + chunk)
        ids = [f"{pool}:{i}" for i in index[sl]]
        wids = [f"{name}/{k // window}" for k in range(start, min(start + chunk, len(index)))]
        frames.append(monitor.score_batch((x[sl] - MEAN) / STD, ids, wids, torch.as_tensor(labels[index[sl]])))
    return pd.concat(frames, ignore_index=True)


def model_records(model_name: str, args, log=print) -> dict[str, pd.DataFrame]:
    """``{"fit": records, "test": records}`` of one model (cached per condition)."""
    from relmon.data.fashion_mnist import load_fashion_mnist
    from relmon.models import load_embedded

    images, labels = load_fashion_mnist("test")
    model = load_embedded(model_name)
    monitor = _monitor(model, model_name, args)
    tag = "+".join(m.replace(":", "-") for m in args.methods)
    cache = Path(args.cache) / (f"{model_name}_{tag}_r{args.region}_s{args.steps}_lerf{int(_lerf(model_name, args))}"
                                f"_w{args.window}_seed{args.seed}")
    out: dict[str, list[pd.DataFrame]] = {"fit": [], "test": []}
    for pool, name, shifts, n in conditions(args):
        lo, hi = FIT_POOL if pool == "fit" else TEST_POOL
        n = n - n % args.window
        rng = np.random.default_rng(_stable_seed(args.seed, pool, name))
        index = np.sort(rng.choice(np.arange(lo, hi), size=n, replace=False))
        path = cache / f"{pool}_{name.replace('/', '@')}_n{n}.parquet"
        if path.exists():
            frame = read_record_files([path])
        else:
            t0 = time.perf_counter()
            frame = score_condition(monitor, images, labels, index, shifts, name, pool, args.window)
            write_records(frame, path)
            log(f"{model_name} {pool} {name}: {n} images in {time.perf_counter() - t0:.1f} s")
        out[pool].append(frame)
    return {k: pd.concat(v, ignore_index=True) for k, v in out.items()}


# --------------------------------------------------------------------------------------------------
# test windows


def label_prior_windows(test: pd.DataFrame, args, seed_offset: int = 7) -> pd.DataFrame:
    """Windows of clean records of one pool with skewed class frequencies (80 % hard or 80 % easy classes)."""
    clean = test[test["window_id"].str.startswith("clean/")]
    per = clean.drop_duplicates("sample_id")[["sample_id", "label"]]
    rng = np.random.default_rng(args.seed + seed_offset)
    frames = []
    for kind, classes in (("hard", HARD_CLASSES), ("easy", EASY_CLASSES)):
        inside = per[per["label"].isin(classes)]["sample_id"].to_numpy()
        outside = per[~per["label"].isin(classes)]["sample_id"].to_numpy()
        k_in = round(0.8 * args.window)
        n_windows = min(len(inside) // k_in, len(outside) // (args.window - k_in), 3)
        chosen_in = rng.permutation(inside)[: n_windows * k_in]
        chosen_out = rng.permutation(outside)[: n_windows * (args.window - k_in)]
        for w in range(n_windows):
            ids = set(chosen_in[w * k_in:(w + 1) * k_in]) | set(chosen_out[w * (args.window - k_in):
                                                                        (w + 1) * (args.window - k_in)])
            part = clean[clean["sample_id"].isin(ids)].copy()
            part["window_id"] = f"label_prior_{kind}/{w}"
            frames.append(part)
    return pd.concat(frames, ignore_index=True) if frames else clean.iloc[:0]


def test_group(window_id: str) -> str:
    head = window_id.split("/", 1)[0]
    return head


BASELINE_PREFIXES = ("average_confidence", "cbpe", "atc", "doc", "cot", "nuclear_norm", "mano")


def is_baseline(name: str) -> bool:
    return name.startswith(BASELINE_PREFIXES)


def _rows(model: str, name: str, protocol: str, pred: pd.DataFrame, truth: pd.Series, chosen: str = "") -> list[dict]:
    out = []
    for r in pred.itertuples(index=False):
        out.append({"model": model, "estimator": name, "protocol": protocol, "window_id": r.window_id,
                    "group": test_group(r.window_id), "estimate": r.estimate, "lower": r.lower, "upper": r.upper,
                    "accuracy": float(truth[r.window_id]), "chosen": chosen})
    return out


def _selected_rows(model, sel, part, truth, protocol) -> list[dict]:
    """Rows of the selection ``sel``'s choice on ``part``: ``selected`` (the shipped criterion, shift-
    conditioned interval), ``selected_flat`` (the same estimate, unconditioned interval) and
    ``selected_mean`` (the choice of the former mean criterion from the same candidate table)."""
    import copy

    from relmon.analysis.selection import _summary

    est = sel.fitted[sel.chosen]
    rows = _rows(model, "selected", protocol, est.predict(part), truth, sel.chosen)
    flat = copy.deepcopy(est)
    if getattr(est, "loso_", None) is not None:
        flat.set_residuals(est.loso_, conditioned=False)
    rows += _rows(model, "selected_flat", protocol, flat.predict(part), truth, sel.chosen)
    by_mean = str(_summary(sel.table, "mean").index[0])
    rows += _rows(model, "selected_mean", protocol, sel.fitted[by_mean].predict(part), truth, by_mean)
    return rows


def evaluate_model(model: str, fit: pd.DataFrame, test: pd.DataFrame, args, log=print):
    """Selection on ``fit``; predictions on ``test`` (a) fitted on all calibration windows, (b) refitted
    without the test window's shift type(s), with the selection NESTED: for every held-out group the
    selection runs again on the calibration without that group's type(s), and ``selected`` is its
    choice. Returns (selection on all calibration windows, long prediction frame, nested choices)."""
    from sklearn.base import clone

    from relmon.analysis.estimators import ESTIMATORS, make_estimator, shift_type
    from relmon.analysis.features import window_features
    from relmon.analysis.selection import select_estimator

    t0 = time.perf_counter()
    # the selection chooses among the shipped candidates only, as 'relmon calibrate' does
    sel = select_estimator(fit, candidates=list(args.candidates), level=0.9)
    log(f"{model}: selection in {time.perf_counter() - t0:.0f} s, chosen {sel.chosen}")
    # every other named estimator (e.g. the *_source baselines as published) is a report-only row
    fitted = dict(sel.fitted)
    for name in ESTIMATORS:
        if name not in fitted and name not in sel.errors:
            try:
                fitted[name] = make_estimator(name).set_params(interval=0.9).fit(fit)
            except (ValueError, KeyError) as err:
                log(f"  report-only {name}: {err}")
    truth = window_features(test).set_index("window_id")["accuracy"]
    rows = []
    for name, est in fitted.items():
        rows += _rows(model, name, "all_calibration", est.predict(test), truth)
    rows += _selected_rows(model, sel, test, truth, "all_calibration")
    fit_types = fit["window_id"].map(shift_type)
    test_types = test["window_id"].map(shift_type)
    nested = {}
    for g in sorted(set(test_types) - {"clean"}):
        excluded = set(g.split("+"))
        train = fit[~fit_types.isin(excluded)]
        part = test[test_types == g]
        try:
            inner = select_estimator(train, candidates=list(args.candidates), level=0.9)
        except ValueError as err:
            log(f"  nested selection without {sorted(excluded)}: {err}")
            inner = None
        if inner is not None:
            nested[g] = inner.chosen
            rows += _selected_rows(model, inner, part, truth, "held_out_type")
        for name in fitted:
            try:
                refit = inner.fitted[name] if inner is not None and name in inner.fitted else \
                    clone(make_estimator(name)).fit(train)
            except ValueError as err:
                log(f"  {name} without {sorted(excluded)}: {err}")
                continue
            rows += _rows(model, name, "held_out_type", refit.predict(part), truth)
    log(f"{model}: evaluation in {time.perf_counter() - t0:.0f} s")
    return sel, pd.DataFrame(rows), nested


def conditioning_table(model: str, fit: pd.DataFrame, sel) -> pd.DataFrame:
    """Validation only (the calibration's leave-one-shift-type-out windows, never the test pool): held-out
    coverage and width of each candidate's 90 % interval with no conditioning (``q·sqrt(v + τ²)``), the
    shipped KS shift score, and the absolute mean-confidence change against the clean windows — the
    evidence the interval method was chosen on."""
    from relmon.analysis.estimators import _Data, held_out_intervals

    s = _Data.of(fit).samples
    clean = s["window_id"].str.startswith("clean")
    drop = (s.groupby("window_id")["confidence"].mean() - s.loc[clean, "confidence"].mean()).abs()
    rows = []
    for name, est in sel.fitted.items():
        loso = getattr(est, "loso_", None)
        if loso is None or "shift_score" not in loso.columns:
            continue
        for kind in ("none", "ks", "mean_confidence_change"):
            frame = loso.assign(shift_score=drop.reindex(loso["window_id"]).to_numpy()) \
                if kind == "mean_confidence_change" else loso
            t = held_out_intervals(est, frame, conditioned=kind != "none")
            per_type = t.groupby("shift_type")["covered"].mean()
            rows.append({"model": model, "estimator": name, "scale": kind, "coverage": t["covered"].mean(),
                         "mean_width": t["width"].mean(), "types_below_0.5": int((per_type < 0.5).sum())})
    return pd.DataFrame(rows)


# --------------------------------------------------------------------------------------------------
# feature relations


def feature_relations(test: pd.DataFrame, model: str, n_boot: int, seed: int) -> pd.DataFrame:
    """Per-sample AUROC (feature vs correct) and window Spearman (window mean vs accuracy), with 95 %
    bootstrap intervals over test windows (scipy.stats.bootstrap)."""
    from scipy.stats import bootstrap, spearmanr
    from sklearn.metrics import roc_auc_score

    from relmon.analysis.features import SAMPLE_CONFIDENCE_FEATURES, SCALE_FREE_FEATURES, sample_features

    s = sample_features(test)
    method = next(c.split("@")[1] for c in s.columns if c.startswith("aopc_rel@") and not c.endswith("@random"))
    feats = list(SAMPLE_CONFIDENCE_FEATURES) + [f"{f}@{method}" for f in SCALE_FREE_FEATURES] + [
        f"aopc@{method}", "aopc@random"]
    windows = s["window_id"].unique()
    idx_of = s.groupby("window_id").indices
    rows = []
    rng = np.random.default_rng(seed)
    for f in feats:
        if f not in s.columns or s[f].notna().sum() < 10:
            continue
        x, y = s[f].to_numpy(dtype=float), s["correct"].to_numpy(dtype=float)

        def auroc(w_idx, x=x, y=y):
            rows_ = np.concatenate([idx_of[windows[int(i)]] for i in w_idx])
            ok = np.isfinite(x[rows_])
            return roc_auc_score(y[rows_][ok], x[rows_][ok])

        ci = bootstrap((np.arange(len(windows)),), auroc, vectorized=False, n_resamples=max(n_boot // 4, 50),
                       method="percentile", random_state=rng).confidence_interval
        wm = s.groupby("window_id").agg(f=(f, "mean"), acc=("correct", "mean")).dropna()
        rho = spearmanr(wm["f"], wm["acc"])[0]
        rci = bootstrap((wm["f"].to_numpy(), wm["acc"].to_numpy()), lambda a, b: spearmanr(a, b)[0],
                        paired=True, vectorized=False, n_resamples=n_boot, method="percentile",
                        random_state=rng).confidence_interval
        rows.append({"model": model, "feature": f, "auroc": auroc(np.arange(len(windows))), "auroc_lo": ci.low,
                     "auroc_hi": ci.high, "spearman": rho, "spearman_lo": rci.low, "spearman_hi": rci.high})
    return pd.DataFrame(rows)


# --------------------------------------------------------------------------------------------------
# tables


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


def paired_difference(a: np.ndarray, b: np.ndarray, n_boot: int, seed: int) -> tuple[float, float, float]:
    """Mean of ``a − b`` (paired) with a 95 % percentile bootstrap interval (NaN with < 2 pairs)."""
    from scipy.stats import bootstrap

    d = np.asarray(a, dtype=float) - np.asarray(b, dtype=float)
    if len(d) < 2 or np.allclose(d, d[0]):
        return float(d.mean()) if len(d) else np.nan, np.nan, np.nan
    ci = bootstrap((d,), np.mean, n_resamples=n_boot, method="percentile",
                   random_state=np.random.default_rng(seed)).confidence_interval
    return float(d.mean()), float(ci.low), float(ci.high)


def summarise(preds: pd.DataFrame, chosen: dict[str, str], args) -> dict[str, pd.DataFrame]:
    """Tables: MAE per (protocol, group, estimator); the default vs the best baseline; targets."""
    preds = preds.assign(err=(preds["estimate"] - preds["accuracy"]).abs(),
                         covered=(preds["lower"] <= preds["accuracy"]) & (preds["accuracy"] <= preds["upper"]),
                         width=preds["upper"] - preds["lower"])
    # "selected" rows come from evaluate_model: nested selection on held-out groups, the calibration's
    # own choice on clean windows
    # held-out protocol for shift types and compositions; the all-calibration fit for clean and label prior
    main = preds[((preds["protocol"] == "held_out_type") & (preds["group"] != "clean"))
                 | ((preds["protocol"] == "all_calibration") & (preds["group"] == "clean"))]
    mae = main.pivot_table(index="group", columns="estimator", values="err", aggfunc="mean")
    overall = main.groupby("estimator").agg(mae=("err", "mean"), coverage=("covered", "mean"),
                                            mean_width=("width", "mean"), n_windows=("err", "size"))
    worst = mae.max().rename("worst_group_mae")
    overall = overall.join(worst).sort_values("mae")
    baselines = [n for n in overall.index if is_baseline(n)]
    best_base = baselines[0]
    comp_rows = []
    for g, part in main.groupby("group"):
        a = part[part["estimator"] == "selected"].set_index(["model", "window_id"])["err"]
        b = part[part["estimator"] == best_base].set_index(["model", "window_id"])["err"].reindex(a.index)
        mean, lo, hi = paired_difference(a.to_numpy(), b.to_numpy(), args.n_boot, args.seed)
        comp_rows.append({"group": g, "n_windows": len(a), "selected_mae": float(a.mean()),
                          f"{best_base}_mae": float(b.mean()), "difference": mean, "diff_lo": lo, "diff_hi": hi})
    a = main[main["estimator"] == "selected"].set_index(["model", "window_id"])["err"]
    b = main[main["estimator"] == best_base].set_index(["model", "window_id"])["err"].reindex(a.index)
    mean, lo, hi = paired_difference(a.to_numpy(), b.to_numpy(), args.n_boot, args.seed)
    comp_rows.append({"group": "**all**", "n_windows": len(a), "selected_mae": float(a.mean()),
                      f"{best_base}_mae": float(b.mean()), "difference": mean, "diff_lo": lo, "diff_hi": hi})
    comparison = pd.DataFrame(comp_rows)
    shifted = main[~main["group"].isin(["clean"]) & ~main["group"].str.startswith("label_prior")]
    sel = shifted[shifted["estimator"] == "selected"]
    sel_all = main[main["estimator"] == "selected"]
    per_group = sel.groupby("group")["err"].mean()
    targets = pd.DataFrame([
        {"target": "MAE over held-out shift types and compositions <= 0.03", "measured": sel["err"].mean(),
         "met": sel["err"].mean() <= 0.03},
        {"target": "no held-out shift type / composition MAE above 0.06", "measured": per_group.max(),
         "met": per_group.max() <= 0.06},
        {"target": f"never > 0.02 worse than the best baseline ({best_base}) on any group",
         "measured": comparison["difference"].max(), "met": comparison["difference"].max() <= 0.02},
        {"target": "90 % interval coverage in 0.85-0.95 (all test windows)", "measured": sel_all["covered"].mean(),
         "met": 0.85 <= sel_all["covered"].mean() <= 0.95},
        {"target": "mean interval width <= 0.20", "measured": sel_all["width"].mean(),
         "met": sel_all["width"].mean() <= 0.20},
    ])
    # the added value of relevance, measured on one estimator with and without the relevance features
    contrast_rows = []
    for with_rel, without in (("correctness_relevance", "correctness_confidence"),
                              ("regression_relevance_confidence", "regression_confidence")):
        a = main[main["estimator"] == with_rel].set_index(["model", "window_id"])["err"]
        b = main[main["estimator"] == without].set_index(["model", "window_id"])["err"].reindex(a.index)
        if len(a) and b.notna().all():
            mean, lo, hi = paired_difference(a.to_numpy(), b.to_numpy(), args.n_boot, args.seed)
            contrast_rows.append({"with_relevance": with_rel, "without": without, "n_windows": len(a),
                                  "mae_with": float(a.mean()), "mae_without": float(b.mean()),
                                  "difference": mean, "diff_lo": lo, "diff_hi": hi})
    per_model = main.groupby(["model", "estimator"]).agg(mae=("err", "mean"), coverage=("covered", "mean"),
                                                         mean_width=("width", "mean")).reset_index()
    intervals, targets18 = interval_tables(main, overall, best_base, getattr(args, "uncovered", {}))
    return {"mae": mae, "overall": overall, "comparison": comparison, "targets": targets, "best_baseline": best_base,
            "relevance_contrast": pd.DataFrame(contrast_rows), "intervals": intervals, "targets18": targets18,
            "per_model": per_model, "preds": preds}


def interval_tables(main: pd.DataFrame, overall: pd.DataFrame, best_base: str, uncovered: dict[str, list[str]]):
    """Per test group: coverage and width of the selected estimator's interval, shift-conditioned
    (``selected``) and unconditioned (``selected_flat``), and whether the group is named as uncovered by
    the calibration of that model (a composition when either of its types is); the issue-18 targets."""
    rows = []
    for (model, g), part in main[main["estimator"].isin(["selected", "selected_flat"])].groupby(["model", "group"]):
        cond, flat = part[part["estimator"] == "selected"], part[part["estimator"] == "selected_flat"]
        flagged = any(t in uncovered.get(model, []) for t in g.split("+"))
        rows.append({"model": model, "group": g, "n_windows": len(cond), "chosen": ", ".join(sorted(set(cond["chosen"]))),
                     "mae": cond["err"].mean(), "coverage": cond["covered"].mean(), "mean_width": cond["width"].mean(),
                     "coverage_flat": flat["covered"].mean(), "mean_width_flat": flat["width"].mean(),
                     "flagged_uncovered": "yes" if flagged else ""})
    table = pd.DataFrame(rows)
    shifted = table[table["group"] != "clean"]
    clean = table[table["group"] == "clean"]

    def weighted(frame, col):
        return float((frame[col] * frame["n_windows"]).sum() / frame["n_windows"].sum())

    cov, width = weighted(shifted, "coverage"), weighted(shifted, "mean_width")
    cov_flat, width_flat = weighted(shifted, "coverage_flat"), weighted(shifted, "mean_width_flat")
    clean_width = weighted(clean, "mean_width")
    low = shifted[shifted["coverage"] < 0.5]
    unflagged = low[low["flagged_uncovered"] != "yes"]
    sel_mae = float(overall.loc["selected", "mae"])
    base_mae = float(overall.loc[best_base, "mae"])
    targets = pd.DataFrame([
        {"target": "interval coverage >= 0.85 over held-out shifted windows", "measured": cov, "met": cov >= 0.85,
         "unconditioned": cov_flat},
        {"target": "mean interval width <= 0.30 over held-out shifted windows", "measured": width,
         "met": width <= 0.30, "unconditioned": width_flat},
        {"target": "mean interval width <= 0.15 on windows without drift (clean)", "measured": clean_width,
         "met": clean_width <= 0.15, "unconditioned": weighted(clean, "mean_width_flat")},
        {"target": "no (model, group) below 0.5 coverage unless flagged uncovered: unflagged groups below 0.5",
         "measured": float(len(unflagged)), "met": len(unflagged) == 0,
         "unconditioned": float((shifted["coverage_flat"] < 0.5).sum())},
        {"target": "selected MAE <= 0.072 (before issue 18)", "measured": sel_mae, "met": sel_mae <= 0.072,
         "unconditioned": np.nan},
        {"target": f"selected MAE never > 0.02 worse than the best baseline overall ({best_base} {base_mae:.3f})",
         "measured": sel_mae - base_mae, "met": sel_mae - base_mae <= 0.02, "unconditioned": np.nan},
    ])
    return table, targets


def plot_estimates(path: Path, tables) -> None:
    """Estimate vs true accuracy on the test windows (held-out protocol), one panel per estimator."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    preds = tables["preds"]
    names = ["selected", tables["best_baseline"], "correctness_relevance", "regression_relevance"]
    main = preds[((preds["protocol"] == "held_out_type") & (preds["group"] != "clean"))
                 | ((preds["protocol"] == "all_calibration") & (preds["group"] == "clean"))]
    fig, axes = plt.subplots(1, len(names), figsize=(4 * len(names), 4), sharex=True, sharey=True)
    for ax, name in zip(axes, names, strict=True):
        part = main[main["estimator"] == name]
        for model, marker in zip(sorted(part["model"].unique()), "os", strict=False):
            m = part[part["model"] == model]
            ax.errorbar(m["accuracy"], m["estimate"], yerr=[m["estimate"] - m["lower"], m["upper"] - m["estimate"]],
                        fmt=marker, ms=4, alpha=0.6, elinewidth=0.5, label=model)
        ax.plot([0, 1], [0, 1], "k--", lw=0.8)
        ax.set_title(f"{name}\nMAE {part['err'].mean():.3f}" if "err" in part else name)
        ax.set_xlabel("true window accuracy")
    axes[0].set_ylabel("estimate (90 % interval)")
    axes[0].legend(loc="upper left", fontsize=8)
    fig.tight_layout()
    fig.savefig(path, dpi=90)
    plt.close(fig)


def write_docs(path: Path, args, tables, selections, relations, runtime: float, validation: pd.Series,
               nested: dict[str, dict[str, str]] | None = None) -> None:
    from relmon.analysis.estimators import DEFAULT_ESTIMATOR
    from relmon.config import MonitorConfig

    shipped = _shipped(MonitorConfig())
    is_shipped = (tuple(args.methods) == tuple(shipped.methods) and args.region == shipped.region
                  and args.steps == shipped.steps and tuple(args.candidates) == tuple(shipped.estimators))
    shipped_note = (" (the settings `relmon calibrate` ships)" if is_shipped
                    else " (NOT the settings `relmon calibrate` ships)")
    overall = tables["overall"]
    mae = tables["mae"][list(overall.index)]
    overall = overall.assign(role=[n if n.startswith("selected") else
                                   "candidate" if n in args.candidates or n.startswith("median:") else
                                   "report-only" for n in overall.index])
    sel_lines = []
    for model, sel in selections.items():
        sel_lines += [f"**{model}** — chosen on the calibration's own LOSO validation: `{sel.chosen}`", "",
                      markdown_table(sel.summary.head(8).rename_axis("estimator")), ""]
    singles = [n for n in overall.index if not n.startswith(("selected", "median:"))]
    rel_names = [n for n in singles if "relevance" in n]
    conf_names = [n for n in singles if n not in rel_names]
    best_rel, best_conf = rel_names[0], conf_names[0]
    verdict = (f"best relevance-based estimator `{best_rel}` MAE {overall.loc[best_rel, 'mae']:.3f} vs best "
               f"confidence-only `{best_conf}` {overall.loc[best_conf, 'mae']:.3f} (all test windows, both models).")
    if overall.loc[best_rel, "mae"] < overall.loc[best_conf, "mae"] - 0.005:
        verdict = "relevance features help here: " + verdict
    else:
        verdict = "relevance features do NOT measurably help here: " + verdict
    lines = [
        "# Label-free accuracy estimators: independent evaluation",
        "",
        f"Generated by `{args.command}` "
        f"(runtime {runtime:.0f} s on {args.threads} CPU thread(s), records {args.records_s:.0f} s of it; records "
        f"cached under `{args.cache}`). Models {', '.join(f'`{m}`' for m in args.models)}; heatmap method(s) "
        f"{', '.join(f'`{m}`' for m in args.methods)} plus the random order, **region {args.region} px, "
        f"L = {args.steps} steps**{shipped_note}, uniform perturbation, logit score; LeRF run for "
        f"{[m for m in args.models if m not in args.no_lerf_for and not args.no_lerf]}.",
        "",
        "Selection candidates (as `relmon calibrate` ships them, `MonitorConfig.estimators`): "
        + ", ".join(f"`{n}`" for n in args.candidates) + ". Every other row (the `*_source` baselines as "
        "published, fitted on clean windows only, and the remaining variants) is **report-only**: evaluated "
        "with the same protocol, never selectable.",
        "",
        f"Data: Fashion-MNIST test set, **fit pool images {FIT_POOL[0]}-{FIT_POOL[1] - 1}, test pool "
        f"{TEST_POOL[0]}-{TEST_POOL[1] - 1}** (disjoint). Windows of {args.window} distinct images. Calibration "
        f"(fit pool): clean ({args.clean} images) + {len(args.shifts)} shift types x severities {list(FIT_SEVERITIES)} "
        f"({args.per_condition} images each). Test (test pool): clean ({args.clean}), the same shift types at the "
        f"**unseen severities {list(TEST_SEVERITIES)}**, compositions {['+'.join(c) for c in args.compositions]} "
        "(severity 3 each), and label-prior windows (80 % of the images from the hard classes "
        f"{list(HARD_CLASSES)} or the easy classes {list(EASY_CLASSES)}). Images are not resampled; an image of a "
        "pool may appear under several conditions (different windows). **Natural shift: none found** — the "
        "package registries hold no second source of Fashion-MNIST classes (sklearn's digits is another task).",
        "",
        "Protocol: every shifted test window (shift types, compositions, label prior) is scored **held-out**: "
        "every estimator is refitted on the calibration without the test window's shift type(s) (for a "
        "composition both types; for label prior the calibration's label-prior windows of that kind, built "
        "from the fit pool's clean images); clean windows by the estimators fitted on all calibration windows. `selected` = per model, the estimator that "
        "`relmon.analysis.selection.select_estimator` chose on the calibration alone (never on test windows). "
        "Intervals: 90 %, conformal from leave-one-shift-type-out residuals of the calibration plus the "
        "window's sampling variance.",
        "",
        "## Issue 18 targets (nested selection, shift-conditioned intervals)",
        "",
        "`selected` = per model and held-out group, the estimator `select_estimator` (criterion: worst "
        "held-out type) chose on the calibration WITHOUT that group's shift type(s) (nested); on clean windows "
        "the calibration's own choice. `unconditioned` = the same estimates with the former interval "
        "`q·sqrt(v + τ²)` (`selected_flat`). Coverage and widths are over the held-out shifted windows (shift "
        "types at unseen severities, compositions, label prior) of both models.",
        "",
        markdown_table(tables["targets18"], index=False),
        "",
        "Nested choices (held-out group → chosen): " + "; ".join(
            f"**{m}** " + ", ".join(f"{g} → `{c}`" for g, c in sorted(ch.items()))
            for m, ch in (nested or {}).items()) + ".",
        "",
        "Shift types each model's calibration names as uncovered (held-out coverage below 0.5 in its own "
        "leave-one-shift-type-out validation; `relmon monitor` prints \"estimates unreliable under: ...\"): "
        + "; ".join(f"**{m}** {', '.join(u) if u else 'none'}" for m, u in getattr(args, "uncovered", {}).items())
        + ".",
        "",
        "### How the interval method was chosen (validation only: the calibration's held-out shift types)",
        "",
        "Mean over both models and every candidate of the held-out coverage, width and number of shift types "
        "below 0.5 coverage, for the former unconditioned scale `sqrt(v + τ²)` (`none`), the shipped "
        "KS-conditioned scale (`ks`) and a mean-confidence-change score (`mean_confidence_change`):",
        "",
        markdown_table(tables["conditioning"].groupby("scale")[["coverage", "mean_width", "types_below_0.5"]]
                       .mean().rename_axis("scale")),
        "",
        "MAPIE (`mapie` 1.6) is not used: its regressors conformalise one (X, y) row per prediction from a "
        "scikit-learn regressor, while these estimators are fitted on per-sample records and predict window "
        "accuracy, their held-out residuals come from leave-one-shift-type-out refits, and the scale carries "
        "the binomial window variance; the split-conformal quantile it would compute is the one-line rank "
        "`relmon.analysis.intervals.conformal_quantile` (tests pin it on scores 1..m).",
        "",
        "### Coverage and width per shift type (selected estimator, 90 % intervals)",
        "",
        markdown_table(tables["intervals"], index=False),
        "",
        "## Issue 10 targets (the selected estimator)",
        "",
        markdown_table(tables["targets"], index=False),
        "",
        f"**Verdict on relevance:** {verdict}",
        "",
        "Paired contrast of the same estimator with and without the relevance features (absolute error, "
        "with − without; negative = relevance helps; 95 % bootstrap over all test windows of both models):",
        "",
        markdown_table(tables["relevance_contrast"], "+.3f", index=False),
        "",
        f"`DEFAULT_ESTIMATOR` (used where no calibration selected one): `{DEFAULT_ESTIMATOR}`. Validation ranking "
        "of the single estimators (mean leave-one-shift-type-out MAE on the CALIBRATION windows of both models, "
        "never the test windows): " + ", ".join(f"`{k}` {v:.3f}" for k, v in validation.head(6).items()) + ".",
        "",
        "## Overall (test windows, both models)",
        "",
        markdown_table(overall.rename_axis("estimator")),
        "",
        "## MAE per test group (rows) and estimator (columns)",
        "",
        markdown_table(mae.rename_axis("group")),
        "",
        f"## Selected vs the best baseline (`{tables['best_baseline']}`): paired difference of absolute errors",
        "",
        "Negative = the selected estimator is better. 95 % percentile bootstrap over the group's test windows "
        "(both models); with 2-4 windows a group's interval is weak evidence.",
        "",
        markdown_table(tables["comparison"], "+.3f", index=False),
        "",
        "![estimate vs true accuracy](estimators_test_windows.png)",
        "",
        "`estimators_test_windows.png`: estimate and 90 % interval vs the true accuracy of every test window.",
        "",
        "## Per model",
        "",
        markdown_table(tables["per_model"].pivot(index="estimator", columns="model", values="mae")
                       .sort_values(args.models[0]).rename_axis("MAE")),
        "",
        "## Selection on the calibration (leave-one-shift-type-out, fit pool only)",
        "",
        *sel_lines,
        "## Features vs correctness and window accuracy (test pool)",
        "",
        "AUROC of the per-sample feature for `correct` (0.5 = no relation; < 0.5 = inverse), 95 % bootstrap "
        "over test windows; Spearman of the window mean with window accuracy over the test windows, 95 % "
        "bootstrap over windows.",
        "",
        markdown_table(relations, "+.3f", index=False),
        "",
    ]
    path.write_text("\n".join(lines))


def main(argv=None) -> dict:
    t0 = time.perf_counter()
    args = parse_args(argv)
    torch.set_num_threads(args.threads)
    records = {m: model_records(m, args) for m in args.models}
    args.records_s = time.perf_counter() - t0
    if args.records_only:
        print(f"records in {args.records_s:.0f} s")
        return {"runtime_s": args.records_s}
    selections, frames, relations, nested, conditioning = {}, [], [], {}, []
    args.uncovered = {}
    for m, rec in records.items():
        test = pd.concat([rec["test"], label_prior_windows(rec["test"], args)], ignore_index=True)
        fit = rec["fit"]
        if not args.no_calibration_label_prior:  # the calibration sees label-prior shift too (fit pool)
            fit = pd.concat([fit, label_prior_windows(fit, args, seed_offset=11)], ignore_index=True)
        sel, preds, nested[m] = evaluate_model(m, fit, test, args)
        selections[m] = sel
        conditioning.append(conditioning_table(m, fit, sel))
        args.uncovered[m] = list(getattr(sel.fitted[sel.chosen], "uncovered_shift_types_", []))
        frames.append(preds)
        relations.append(feature_relations(rec["test"], m, args.n_boot, args.seed))
    tables = summarise(pd.concat(frames, ignore_index=True), {m: s.chosen for m, s in selections.items()}, args)
    tables["conditioning"] = pd.concat(conditioning, ignore_index=True)
    docs = Path(args.docs)
    docs.mkdir(parents=True, exist_ok=True)
    validation = pd.concat([s.summary["mae"].rename(m) for m, s in selections.items()], axis=1)
    validation = validation[~validation.index.str.startswith("median:")].mean(axis=1).sort_values()
    runtime = time.perf_counter() - t0
    plot_estimates(docs / "estimators_test_windows.png", tables)
    write_docs(docs / "estimators.md", args, tables, selections, pd.concat(relations, ignore_index=True), runtime,
               validation, nested)
    Path(args.cache).mkdir(parents=True, exist_ok=True)
    tables["preds"].to_csv(Path(args.cache) / ("predictions_tiny.csv" if args.tiny else "predictions.csv"), index=False)
    print("mean LOSO validation MAE (calibration only), single estimators:", validation.round(3).to_dict())
    summary = {"runtime_s": runtime, "chosen": {m: s.chosen for m, s in selections.items()},
               "validation_mae": validation.to_dict(),
               "overall_mae": tables["overall"]["mae"].to_dict(),
               "targets": tables["targets"].to_dict("records"), "best_baseline": tables["best_baseline"],
               "targets18": tables["targets18"].to_dict("records"), "nested": nested, "uncovered": args.uncovered}
    print((docs / "estimators.md").read_text())
    print(f"runtime {runtime:.1f} s")
    return summary


if __name__ == "__main__":
    main()
