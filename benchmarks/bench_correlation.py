"""``correlation_table``: vectorized bootstrap vs the former one-resample-at-a-time call.

``relmon.analysis.correlation.correlation_table`` gives ``scipy.stats.bootstrap`` a statistic that
takes every resample at once (``vectorized=True``); before, scipy called ``pearsonr`` / ``spearmanr``
once per resample. Both run here in one process, interleaved, on the window features of demo-sized
calibration records (25 windows; every feature column against accuracy, 1000 resamples), and the
table gives median / minimum wall time, their ratio and the largest difference between the intervals
(same seed, so the same resamples: rounding only).

    python benchmarks/bench_correlation.py [--records out/calibration/records.parquet] [--repeats 3]
"""

from __future__ import annotations

import argparse
import statistics
import time

import numpy as np
import pandas as pd


def non_vectorized(features: pd.DataFrame, columns, n_boot: int, seed: int, level: float) -> pd.DataFrame:
    """The former implementation: scipy.stats.bootstrap(vectorized=False) over pearsonr / spearmanr."""
    from scipy.stats import bootstrap, pearsonr, spearmanr

    rng = np.random.default_rng(seed)
    rows = []
    for col in columns:
        d = features[[col, "accuracy"]].astype(float).dropna()
        x, y = d[col].to_numpy(), d["accuracy"].to_numpy()
        row = {"feature": col, "n": len(d)}
        for name, fn in (("pearson", pearsonr), ("spearman", spearmanr)):
            def stat(a, b, fn=fn):
                return np.nan if len(a) < 2 or np.ptp(a) == 0 or np.ptp(b) == 0 else fn(a, b)[0]

            row[name] = float(stat(x, y))
            row[f"{name}_lo"] = row[f"{name}_hi"] = float("nan")
            if len(d) >= 3 and np.isfinite(row[name]):
                ci = bootstrap((x, y), stat, paired=True, vectorized=False, n_resamples=n_boot,
                               confidence_level=level, method="percentile", random_state=rng).confidence_interval
                row[f"{name}_lo"], row[f"{name}_hi"] = float(ci.low), float(ci.high)
        rows.append(row)
    return pd.DataFrame(rows)


def main(argv=None) -> dict:
    from bench_selection import demo_records

    from relmon.analysis import correlation_table, window_features

    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--records", help="a calibration's records.parquet (default: calibrate the demo here)")
    ap.add_argument("--calibration-n", type=int, default=80)
    ap.add_argument("--repeats", type=int, default=3)
    ap.add_argument("--n-boot", type=int, default=1000)
    args = ap.parse_args(argv)
    records = pd.read_parquet(args.records) if args.records else demo_records(args.calibration_n)
    feats = window_features(records)
    cols = [c for c in feats.columns if c not in ("window_id", "n", "n_labelled", "accuracy")]
    print(f"{len(feats)} windows, {len(cols)} feature columns, {args.n_boot} resamples")
    times: dict[str, list[float]] = {"vectorized": [], "non-vectorized": []}
    diff = 0.0
    for _ in range(args.repeats):
        t = time.perf_counter()
        new = correlation_table(feats, cols, n_boot=args.n_boot, seed=0, level=0.95)
        times["vectorized"].append(time.perf_counter() - t)
        t = time.perf_counter()
        old = non_vectorized(feats, cols, n_boot=args.n_boot, seed=0, level=0.95)
        times["non-vectorized"].append(time.perf_counter() - t)
        num = [c for c in new.columns if c != "feature"]
        a, b = new[num].to_numpy(dtype=float), old[num].to_numpy(dtype=float)
        assert (np.isnan(a) == np.isnan(b)).all()
        diff = max(diff, float(np.nanmax(np.abs(a - b))))
    med = {k: statistics.median(v) for k, v in times.items()}
    low = {k: min(v) for k, v in times.items()}
    print("| path | median s | min s | s per column |\n|---|---|---|---|")
    for k in times:
        print(f"| {k} | {med[k]:.3f} | {low[k]:.3f} | {med[k] / len(cols):.4f} |")
    print(f"speed-up (non-vectorized / vectorized): median {med['non-vectorized'] / med['vectorized']:.1f}x, "
          f"min {low['non-vectorized'] / low['vectorized']:.1f}x; largest interval difference {diff:.1e}")
    return {"median": med, "min": low, "max_abs_diff": diff}


if __name__ == "__main__":
    main()
