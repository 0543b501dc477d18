"""The accuracy alert as a detector of "true drop >= 0.10": chosen on validation, judged on independent
windows (issue 18, deliverable 4; DESIGN §4a). Writes ``docs/alerts.md`` and ``docs/alerts_firing.png``.

Protocol
--------
1. **Images.** The Fashion-MNIST test set (``/usr/share/datasets/fashion-mnist``) split as in
   ``scripts/evaluate_estimators.py`` (whose window-building code this script imports): the **fit pool**
   (images 2000-5999) makes the calibration (clean + every shift type at severities 1, 3, 5, windows of
   ``--window`` images, plus label-prior windows); the **test pool** (6000-9999) the evaluation windows:
   clean, every shift type at the unseen severities 2 and 4, four compositions, label-prior windows.
   The test pool is scored with more images per condition than the estimator evaluation
   (``--test-clean``, ``--test-per-condition``) so that each drop band holds enough windows.
2. **Calibration as relmon ships it.** The default estimator is chosen by
   :func:`relmon.analysis.selection.select_estimator` on the fit pool (the candidates of
   ``MonitorConfig().estimators``), with whatever estimators and intervals the checkout's
   ``relmon.analysis`` holds. The clean reference the threshold hangs on (and the drift reference) is a
   set of ``--ref-n`` clean fit-pool images: for 100 images (``calibration_n``'s default) every one of the
   fit pool's clean windows serves as the reference in turn, so the figures include the
   reference's own sampling noise; for 600 the whole clean fit pool.
3. **Validation windows** (fit pool only): each shifted window is predicted by the default estimator
   refitted without its shift type (leave-one-shift-type-out, interval included); each clean window by
   the estimator fitted on all calibration windows, and tested for drift against a reference that
   excludes it. ``ALERT_MARGIN`` is chosen here: the smallest margin of ``--margins`` whose false-alert
   rate (any severity, windows with a true drop <= 0.03) is <= 5 %.
4. **Evaluation windows** (test pool, never seen by a fit or a choice): every shifted window predicted
   by the estimator refitted without its shift type(s), clean windows by the full calibration; drift
   against the fit-pool reference. The alert is :func:`relmon.analysis.alerts.accuracy_alerts`, the
   function ``relmon monitor`` reports and the Prometheus rules mirror.
5. **True drop** = the model's accuracy on all 10,000 clean test images − the window's accuracy.

Runtime: records about 3-6 min on 1 thread for the two embedded models (cached under ``--cache``),
the rest 2-5 min. ``--tiny`` is a smoke run.
"""

from __future__ import annotations

import argparse
import hashlib
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pandas as pd
import torch

ROOT = Path(__file__).resolve().parents[1]
for p in (ROOT, ROOT / "scripts"):
    if str(p) not in sys.path:
        sys.path.insert(0, str(p))

import evaluate_estimators as ee  # noqa: E402  (the estimator evaluation's window-building code)

BANDS = [(-1.0, 0.03, "<= 0.03"), (0.03, 0.10, "0.03-0.10"), (0.10, 0.15, "0.10-0.15"),
         (0.15, 0.30, "0.15-0.30"), (0.30, 1.0, "> 0.30")]
TARGET_DETECT, TARGET_FALSE = 0.80, 0.05


def parse_args(argv=None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--cache", default="/tmp/relmon-alerts-cache")
    p.add_argument("--docs", default=str(ROOT / "docs"))
    p.add_argument("--models", nargs="+", default=["fmnist_cnn", "fmnist_vgg"])
    p.add_argument("--window", type=int, default=100)
    p.add_argument("--test-clean", type=int, default=2000, help="clean test-pool images")
    p.add_argument("--test-per-condition", type=int, default=300, help="test-pool images per shifted condition")
    p.add_argument("--ref-n", type=int, nargs="+", default=[100, 600],
                   help="clean reference sizes (the first one is the headline and the margin's choice)")
    p.add_argument("--margins", type=float, nargs="+", default=[round(0.01 * i, 2) for i in range(16)])
    p.add_argument("--threads", type=int, default=1)
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--tiny", action="store_true", help="smoke run (one model, few conditions)")
    p.add_argument("--records-only", action="store_true")
    args = p.parse_args(argv)
    args.command = " ".join(["python scripts/evaluate_alerts.py", *(sys.argv[1:] if argv is None else list(argv))])
    # the estimator evaluation's settings (what relmon calibrate ships), for its window-building code
    fit_argv = ["--models", *args.models, "--window", str(args.window), "--seed", str(args.seed)]
    args.fit = ee.parse_args(fit_argv + (["--tiny"] if args.tiny else []))
    args.test = ee.parse_args(fit_argv + ["--clean", str(args.test_clean), "--per-condition",
                                          str(args.test_per_condition)] + (["--tiny"] if args.tiny else []))
    if args.tiny:
        args.models = args.models[:1]
        args.window = args.fit.window
        args.test.clean, args.test.per_condition = 80, 40
        args.ref_n = [20, 40]
    return args


# --------------------------------------------------------------------------------------------------
# records


def _schema_tag() -> str:
    from relmon.records import RECORD_SCHEMA

    return hashlib.sha1(",".join(RECORD_SCHEMA.names).encode()).hexdigest()[:8]


def model_records(model_name: str, args, log=print) -> dict[str, pd.DataFrame]:
    """``{"fit": ..., "test": ...}`` records of one model, scored with the shipped settings (cached)."""
    from relmon.data.fashion_mnist import load_fashion_mnist
    from relmon.models import load_embedded
    from relmon.records import read_record_files, write_records

    images, labels = load_fashion_mnist("test")
    model = load_embedded(model_name)
    monitor = ee._monitor(model, model_name, args.fit)
    tag = "+".join(m.replace(":", "-") for m in args.fit.methods)
    cache = Path(args.cache) / (f"{model_name}_{tag}_r{args.fit.region}_s{args.fit.steps}_w{args.window}"
                                f"_seed{args.seed}_schema{_schema_tag()}")
    out: dict[str, list[pd.DataFrame]] = {"fit": [], "test": []}
    for pool_args, pool in ((args.fit, "fit"), (args.test, "test")):
        for cond_pool, name, shifts, n in ee.conditions(pool_args):
            if cond_pool != pool:
                continue
            lo, hi = ee.FIT_POOL if pool == "fit" else ee.TEST_POOL
            n = n - n % args.window
            rng = np.random.default_rng(ee._stable_seed(args.seed, pool, name))
            index = np.sort(rng.choice(np.arange(lo, hi), size=n, replace=False))
            path = cache / f"{pool}_{name.replace('/', '@')}_n{n}.parquet"
            if path.exists():
                frame = read_record_files([path])
            else:
                t0 = time.perf_counter()
                frame = ee.score_condition(monitor, images, labels, index, shifts, name, pool, args.window)
                write_records(frame, path)
                log(f"{model_name} {pool} {name}: {n} images in {time.perf_counter() - t0:.1f} s", flush=True)
            out[pool].append(frame)
    return {k: pd.concat(v, ignore_index=True) for k, v in out.items()}


def clean_accuracy(model_name: str) -> float:
    """The model's accuracy on all 10,000 clean Fashion-MNIST test images (the drop's reference)."""
    from relmon.data.fashion_mnist import MEAN, STD, load_fashion_mnist
    from relmon.models import load_embedded

    images, labels = load_fashion_mnist("test")
    model = load_embedded(model_name).eval()
    correct = 0
    with torch.inference_mode():
        for s in range(0, len(images), 1000):
            x = (torch.as_tensor(images[s:s + 1000], dtype=torch.float32)[:, None] / 255.0 - MEAN) / STD
            correct += int((model(x).argmax(1).numpy() == labels[s:s + 1000]).sum())
    return correct / len(images)


# --------------------------------------------------------------------------------------------------
# per-window summaries: estimate + interval of the default estimator, drift, reference


def _predict_held_out(name: str, fit: pd.DataFrame, frames: dict[str, pd.DataFrame], full) -> dict[str, pd.DataFrame]:
    """Predictions of the windows of each frame of ``frames``: shifted ones by ``name`` refitted without
    their shift type(s) (one refit per excluded set, shared by the frames), clean ones by ``full``
    (fitted on all of ``fit``)."""
    from sklearn.base import clone

    from relmon.analysis.estimators import make_estimator, shift_type

    fit_types = fit["window_id"].map(shift_type)
    types = {k: f["window_id"].map(shift_type) for k, f in frames.items()}
    parts: dict[str, list[pd.DataFrame]] = {k: [] for k in frames}
    for g in sorted(set().union(*(set(t) for t in types.values()))):
        if g == "clean":
            est = full
        else:
            train = fit[~fit_types.isin(set(g.split("+")))]
            est = clone(make_estimator(name)).set_params(interval=0.9).fit(train)
        for k, f in frames.items():
            part = f[types[k] == g]
            if len(part):
                parts[k].append(est.predict(part))
    return {k: pd.concat(v, ignore_index=True).set_index("window_id") for k, v in parts.items()}


def _references(fit_samples: pd.DataFrame, ref_n: int, window: int) -> list[tuple[str, list[str]]]:
    """Clean fit-pool reference draws of ``ref_n`` images: disjoint blocks of whole clean windows."""
    clean = sorted(w for w in fit_samples["window_id"].unique() if str(w).startswith("clean/"))
    k = max(1, ref_n // window)
    if k > len(clean):
        raise ValueError(f"--ref-n {ref_n} needs {k} clean fit windows of {window}, the fit pool has {len(clean)}")
    return [(f"ref{i}", clean[i * k:(i + 1) * k]) for i in range(len(clean) // k)]


def window_table(model: str, fit: pd.DataFrame, test: pd.DataFrame, args, log=print) -> tuple[pd.DataFrame, dict]:
    """One row per (split, window, reference draw): truth, the default's estimate and interval, the
    drift alarm, the reference's accuracy and n."""
    from relmon.analysis import ks_drift
    from relmon.analysis.features import sample_features, window_features
    from relmon.analysis.selection import select_estimator

    t0 = time.perf_counter()
    candidates = list(args.fit.candidates)
    sel = select_estimator(fit, candidates=candidates, level=0.9)
    chosen = sel.chosen
    full = sel.fitted[chosen]
    log(f"{model}: default {chosen} (selection {time.perf_counter() - t0:.0f} s)", flush=True)
    info = {"default": chosen, "interval_kind": getattr(full, "interval_kind_", "?"),
            "validation_mae": float(sel.summary.loc[chosen, "mae"])}
    preds = _predict_held_out(chosen, fit, {"validation": fit, "test": test}, full)
    truth = {"validation": window_features(fit).set_index("window_id")["accuracy"],
             "test": window_features(test).set_index("window_id")["accuracy"]}
    log(f"{model}: held-out predictions in {time.perf_counter() - t0:.0f} s", flush=True)
    from relmon.explain import canonical_method

    method = canonical_method(args.fit.methods[0])
    samples = {"validation": sample_features(fit), "test": sample_features(test)}
    by_window = {k: dict(tuple(v.groupby("window_id"))) for k, v in samples.items()}
    fit_by_window = by_window["validation"]
    rows = []
    for ref_n in args.ref_n:
        for ref_id, ref_windows in _references(samples["validation"], ref_n, args.window):
            ref = pd.concat([fit_by_window[w] for w in ref_windows], ignore_index=True)
            ref_acc, n_ref = float(ref["correct"].mean()), len(ref)
            for split in ("validation", "test"):
                for wid, win in by_window[split].items():
                    if split == "validation" and wid in ref_windows:
                        continue  # a window is never tested against a reference that contains it
                    p = preds[split].loc[wid]
                    drift = ks_drift(ref, win, method=method, alpha=0.01)
                    rows.append({"model": model, "split": split, "window_id": wid, "group": ee.test_group(wid),
                                 "ref_n": ref_n, "ref_id": ref_id, "ref_accuracy": ref_acc, "n_ref": n_ref,
                                 "accuracy": float(truth[split][wid]), "n": len(win),
                                 "estimate": float(p["estimate"]), "lower": float(p["lower"]),
                                 "upper": float(p["upper"]), "drift_alarm": bool(drift.alarm),
                                 "default_estimator": chosen})
    log(f"{model}: windows and drift in {time.perf_counter() - t0:.0f} s", flush=True)
    return pd.DataFrame(rows), info


def fire(table: pd.DataFrame, margin: float) -> pd.DataFrame:
    """``table`` with ``warning``, ``critical``, ``any`` columns: what :func:`accuracy_alerts` fires."""
    from relmon.analysis.alerts import accuracy_alerts, accuracy_threshold

    warn, crit, thr = [], [], []
    for r in table.itertuples(index=False):
        summary = {"estimates": {r.default_estimator: (r.estimate, r.lower, r.upper)},
                   "default_estimator": r.default_estimator, "drift_alarm": r.drift_alarm,
                   "calibration_accuracy": r.ref_accuracy, "calibration_n": r.n_ref}
        sev = {a["severity"] for a in accuracy_alerts(summary, margin=margin)}
        warn.append("warning" in sev)
        crit.append("critical" in sev)
        thr.append(accuracy_threshold(r.ref_accuracy, r.n_ref, margin))
    out = table.assign(warning=warn, critical=crit, threshold=thr)
    return out.assign(any=out["warning"] | out["critical"])


def band_of(drop: pd.Series) -> pd.Series:
    labels = [b[2] for b in BANDS]
    return pd.cut(drop, [b[0] for b in BANDS] + [BANDS[-1][1]], labels=labels, right=True)


def rates(table: pd.DataFrame) -> dict[str, float]:
    low, big, pos = table[table["drop"] <= 0.03], table[table["drop"] >= 0.15], table[table["drop"] >= 0.10]
    neg = table[table["drop"] < 0.10]
    return {"false_alert_rate_drop<=0.03": low["any"].mean(), "n_drop<=0.03": len(low),
            "firing_rate_drop>=0.15": big["any"].mean(), "n_drop>=0.15": len(big),
            "detection_rate_drop>=0.10": pos["any"].mean(), "n_drop>=0.10": len(pos),
            "firing_rate_drop<0.10": neg["any"].mean(),
            "precision": table.loc[table["any"], "drop"].ge(0.10).mean() if table["any"].any() else float("nan")}


def choose_margin(validation: pd.DataFrame, margins) -> tuple[float, pd.DataFrame]:
    rows = []
    for m in margins:
        r = rates(fire(validation, m))
        rows.append({"margin": m, **r})
    grid = pd.DataFrame(rows)
    ok = grid[grid["false_alert_rate_drop<=0.03"] <= TARGET_FALSE]
    chosen = float(ok["margin"].min()) if len(ok) else float(max(margins))
    return chosen, grid


# --------------------------------------------------------------------------------------------------
# report


def band_table(t: pd.DataFrame) -> pd.DataFrame:
    g = t.assign(band=band_of(t["drop"])).groupby("band", observed=False)
    return pd.DataFrame({"windows": g.size(), "unique_windows": g["window_id"].nunique(),
                         "warning": g["warning"].mean(), "critical": g["critical"].mean(),
                         "any": g["any"].mean()}).rename_axis("true drop")


def plot(path: Path, test: pd.DataFrame, headline_ref: int) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, (ax1, ax2) = plt.subplots(1, 2, figsize=(11, 4.2))
    edges = np.arange(-0.10, 0.75, 0.05)
    for ref_n, part in test.groupby("ref_n"):
        mid = (edges[:-1] + edges[1:]) / 2
        cut = pd.cut(part["drop"], edges)
        for sev, style in (("any", "-o"), ("critical", "--s")):
            rate = part.groupby(cut, observed=False)[sev].mean().to_numpy()
            ax1.plot(mid, rate, style, ms=4, label=f"{sev}, reference n={ref_n}")
    ax1.axvline(0.10, color="k", lw=0.8, ls=":")
    ax1.axvspan(-0.10, 0.03, color="g", alpha=0.08, label="drop <= 0.03 (target <= 5 %)")
    ax1.axvspan(0.15, 0.75, color="r", alpha=0.06, label="drop >= 0.15 (target >= 80 %)")
    ax1.set_xlabel("true accuracy drop of the window")
    ax1.set_ylabel("firing rate (evaluation windows)")
    ax1.set_ylim(-0.02, 1.02)
    ax1.legend(fontsize=7, loc="center right")
    head = test[test["ref_n"] == headline_ref]
    for model, marker in zip(sorted(head["model"].unique()), "os", strict=False):
        m = head[head["model"] == model]
        colors = np.where(m["critical"], "r", np.where(m["warning"], "orange", "grey"))
        ax2.scatter(m["drop"], m["estimate"] - m["threshold"], c=colors, marker=marker, s=12, alpha=0.6,
                    label=f"{model}")
    ax2.axhline(0, color="k", lw=0.8)
    ax2.axvline(0.10, color="k", lw=0.8, ls=":")
    ax2.set_xlabel("true accuracy drop of the window")
    ax2.set_ylabel("default estimate - alert threshold")
    ax2.set_title(f"reference n={headline_ref}: red critical, orange warning, grey none", fontsize=9)
    ax2.legend(fontsize=7)
    fig.tight_layout()
    fig.savefig(path, dpi=90)
    plt.close(fig)


def _git_head() -> str:
    try:
        return subprocess.run(["git", "-C", str(ROOT), "log", "-1", "--format=%h %s"], capture_output=True,
                              text=True, timeout=10).stdout.strip()[:100]
    except OSError:
        return "?"


def write_docs(path: Path, args, info, clean_acc, margin, grid, test, runtime) -> None:
    from relmon.analysis.alerts import ALERT_MARGIN, REFERENCE_CONFIDENCE

    head_ref = args.ref_n[0]
    lines = [
        "# The accuracy alert as a detector",
        "",
        f"Generated by `{args.command}` (runtime {runtime:.0f} s on {args.threads} CPU thread(s); records cached "
        f"under `{args.cache}`) on commit `{_git_head()}`: the estimators and intervals are those of that "
        "checkout's `relmon.analysis`. Protocol: the docstring of `scripts/evaluate_alerts.py`.",
        "",
        "**The alert** (`relmon.analysis.alerts.accuracy_alerts`, mirrored by `RelmonEstimatedAccuracyLow` in "
        "`deploy/prometheus/alerts.yml`): threshold = one-sided "
        f"{REFERENCE_CONFIDENCE:.0%} Clopper-Pearson lower bound of the calibration's clean accuracy (from its n "
        "images) − margin; `warning` when the default estimate is below it and the drift test alarms; "
        "`critical` when the upper bound of the default estimate's interval is below it.",
        "",
        "**Data**: Fashion-MNIST test set, fit pool images "
        f"{ee.FIT_POOL[0]}-{ee.FIT_POOL[1] - 1} (calibration and validation), test pool {ee.TEST_POOL[0]}-"
        f"{ee.TEST_POOL[1] - 1} (evaluation), disjoint. Windows of {args.window} images. Models: "
        + ", ".join(f"`{m}` (clean accuracy {clean_acc[m]:.3f} on all 10,000 test images; default estimator "
                    f"`{info[m]['default']}`, interval `{info[m]['interval_kind']}`)" for m in args.models)
        + ". True drop = that clean accuracy − the window's accuracy. Clean references: n = "
        + ", ".join(str(n) for n in args.ref_n) + f" images (n = {head_ref}, `calibration_n`'s default, is the "
        "headline; each disjoint block of the fit pool's clean windows serves as the reference in turn, so a window "
        "is counted once per reference draw).",
        "",
        "## Choice on validation (fit pool only)",
        "",
        f"Smallest margin whose false-alert rate (any severity, validation windows with drop <= 0.03, reference "
        f"n = {head_ref}) is <= {TARGET_FALSE:.0%}: **{margin:.2f}**. Shipped `ALERT_MARGIN` = {ALERT_MARGIN:.2f}"
        + (" (the same)." if abs(margin - ALERT_MARGIN) < 1e-9 else
           " — **differs from the validation choice**: the evaluation below uses the validation choice; "
           "update the constant."),
        "",
        markdown(grid.set_index("margin"), "{:.3f}"),
        "",
    ]
    for ref_n in args.ref_n:
        t = test[test["ref_n"] == ref_n]
        r = rates(t)
        clean = t[t["group"] == "clean"]
        targets = pd.DataFrame([
            {"target": "fires on >= 80 % of windows with drop >= 0.15", "measured": r["firing_rate_drop>=0.15"],
             "windows": r["n_drop>=0.15"], "met": r["firing_rate_drop>=0.15"] >= TARGET_DETECT},
            {"target": "fires on <= 5 % of windows with drop <= 0.03", "measured": r["false_alert_rate_drop<=0.03"],
             "windows": r["n_drop<=0.03"], "met": r["false_alert_rate_drop<=0.03"] <= TARGET_FALSE},
        ])
        per_ref = t.groupby("ref_id").apply(lambda x: pd.Series(rates(x)), include_groups=False)
        lines += [
            f"## Evaluation windows (test pool), clean reference n = {ref_n}",
            "",
            markdown(targets.set_index("target"), "{:.3f}"),
            "",
            f"As a classifier of drop >= 0.10: detection rate {r['detection_rate_drop>=0.10']:.3f} "
            f"({r['n_drop>=0.10']} windows), firing rate on drop < 0.10 {r['firing_rate_drop<0.10']:.3f}, "
            f"precision {r['precision']:.3f}. Clean held-out windows (test pool, no shift): {len(clean)} "
            f"(window, reference) pairs, firing rate {clean['any'].mean():.3f} (warning {clean['warning'].mean():.3f}, "
            f"critical {clean['critical'].mean():.3f}); drift alarm on {clean['drift_alarm'].mean():.3f} of them.",
            "",
            "Firing rate by true-drop band:",
            "",
            markdown(band_table(t), "{:.3f}"),
            "",
            f"Spread over the {t['ref_id'].nunique()} reference draw(s) (false-alert rate on drop <= 0.03 / firing "
            "rate on drop >= 0.15): "
            + ", ".join(f"{k} {v['false_alert_rate_drop<=0.03']:.3f} / {v['firing_rate_drop>=0.15']:.3f}"
                        for k, v in per_ref.iterrows()) + ".",
            "",
            "Firing rate (any severity) and mean true drop per test group:",
            "",
            markdown(t.groupby("group").agg(windows=("any", "size"), mean_drop=("drop", "mean"),
                                            any=("any", "mean"), critical=("critical", "mean"),
                                            drift=("drift_alarm", "mean")), "{:.3f}"),
            "",
        ]
    lines += ["![firing rate against true drop](alerts_firing.png)", "",
              "`alerts_firing.png`: left, firing rate per 0.05 drop bin (evaluation windows); right, the default "
              "estimate minus the threshold against the true drop, per window.", ""]
    path.write_text("\n".join(lines))


def markdown(frame: pd.DataFrame, fmt: str = "{:.3f}") -> str:
    cols = [frame.index.name or "", *map(str, frame.columns)]
    out = ["| " + " | ".join(cols) + " |", "|" + "---|" * len(cols)]
    for idx, *row in frame.itertuples(index=True, name=None):
        cells = [str(idx)]
        for v in row:
            if isinstance(v, (bool, np.bool_)):
                cells.append(str(bool(v)))
            elif isinstance(v, (float, np.floating)):
                cells.append(fmt.format(v))
            else:
                cells.append(str(v))
        out.append("| " + " | ".join(cells) + " |")
    return "\n".join(out)


def main(argv=None) -> dict:
    t0 = time.perf_counter()
    args = parse_args(argv)
    torch.set_num_threads(args.threads)
    records = {m: model_records(m, args) for m in args.models}
    print(f"records in {time.perf_counter() - t0:.0f} s", flush=True)
    if args.records_only:
        return {}
    frames, info, clean_acc = [], {}, {}
    for m, rec in records.items():
        clean_acc[m] = clean_accuracy(m)
        fit = pd.concat([rec["fit"], ee.label_prior_windows(rec["fit"], args.fit, seed_offset=11)], ignore_index=True)
        test = pd.concat([rec["test"], ee.label_prior_windows(rec["test"], args.test)], ignore_index=True)
        table, info[m] = window_table(m, fit, test, args)
        frames.append(table.assign(drop=clean_acc[m] - table["accuracy"]))
    table = pd.concat(frames, ignore_index=True)
    validation = table[(table["split"] == "validation") & (table["ref_n"] == args.ref_n[0])]
    margin, grid = choose_margin(validation, args.margins)
    test = fire(table[table["split"] == "test"], margin)
    runtime = time.perf_counter() - t0
    docs = Path(args.docs)
    docs.mkdir(parents=True, exist_ok=True)
    Path(args.cache).mkdir(parents=True, exist_ok=True)
    pd.concat([fire(table[table["split"] == "validation"], margin), test]).to_csv(
        Path(args.cache) / ("alert_windows_tiny.csv" if args.tiny else "alert_windows.csv"), index=False)
    plot(docs / "alerts_firing.png", test, args.ref_n[0])
    write_docs(docs / "alerts.md", args, info, clean_acc, margin, grid, test, runtime)
    print((docs / "alerts.md").read_text())
    print(f"runtime {runtime:.1f} s")
    return {"margin": margin, "rates": {n: rates(test[test["ref_n"] == n]) for n in args.ref_n}, "info": info}


if __name__ == "__main__":
    main()
