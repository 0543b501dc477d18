"""``select_estimator`` with features shared by all candidates vs every candidate fitted on its own.

Before, ``relmon.analysis.selection.select_estimator`` fitted each candidate on the raw records, so
every candidate recomputed the per-sample features, the window features, the leave-one-shift-type-out
subsets and per-window values (and a median refitted its members). Now one ``_Data`` holds them for
all candidates. Both paths run here in one process, interleaved (shared, independent, shared, ...),
on demo-sized calibration records (``make demo``: 25 windows × 80 images, the shipped candidates),
and the table gives the median and minimum wall time of each and their ratio. Both paths give the
same table bit for bit (``tests/test_calibrate_selection.py``).

The records come from ``--records`` (a calibration's ``records.parquet``, e.g. ``out/calibration``
after ``make demo``) or are made here with ``relmon.calibrate`` on the embedded model and the
shipped sample at the demo's ``--calibration-n 80``.

    python benchmarks/bench_selection.py [--records out/calibration/records.parquet] [--repeats 5]
"""

from __future__ import annotations

import argparse
import statistics
import tempfile
import time
from pathlib import Path

import pandas as pd


def demo_records(n: int) -> pd.DataFrame:
    from relmon.config import MonitorConfig
    from relmon.jobs import calibrate

    with tempfile.TemporaryDirectory() as tmp:
        cal = calibrate(MonitorConfig(calibration_n=n), Path(tmp) / "cal")
        return pd.read_parquet(cal.path / "records.parquet")


def independent(records: pd.DataFrame, candidates, level: float = 0.9) -> pd.DataFrame:
    """The former path: each candidate (and the median of the best three) fitted on the records frame."""
    from relmon.analysis import make_estimator
    from relmon.analysis.selection import _held_out_rows, _summary

    rows = []
    for name in candidates:
        rows += _held_out_rows(name, make_estimator(name).set_params(interval=level).fit(records), level)
    best = list(_summary(pd.DataFrame(rows)).index[:3])
    name = "median:" + "+".join(best)
    rows += _held_out_rows(name, make_estimator(name).set_params(interval=level).fit(records), level)
    return pd.DataFrame(rows)


def main(argv=None) -> dict:
    from relmon.analysis.selection import select_estimator
    from relmon.config import MonitorConfig

    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--records", help="a calibration's records.parquet (default: calibrate the demo here)")
    ap.add_argument("--calibration-n", type=int, default=80)
    ap.add_argument("--repeats", type=int, default=5)
    args = ap.parse_args(argv)
    records = pd.read_parquet(args.records) if args.records else demo_records(args.calibration_n)
    candidates = list(MonitorConfig().estimators)
    sizes = records.drop_duplicates(["window_id", "sample_id"]).groupby("window_id").size()
    print(f"records: {len(sizes)} windows x {int(sizes.median())} images, methods {sorted(records['method'].unique())}, "
          f"{len(candidates)} candidates + median")
    times: dict[str, list[float]] = {"shared": [], "independent": []}
    for _ in range(args.repeats):
        t = time.perf_counter()
        table = select_estimator(records, candidates=candidates).table
        times["shared"].append(time.perf_counter() - t)
        t = time.perf_counter()
        ref = independent(records, candidates)
        times["independent"].append(time.perf_counter() - t)
        pd.testing.assert_frame_equal(table, ref, check_exact=True)
    med = {k: statistics.median(v) for k, v in times.items()}
    low = {k: min(v) for k, v in times.items()}
    print("| path | median s | min s |\n|---|---|---|")
    for k in times:
        print(f"| {k} | {med[k]:.3f} | {low[k]:.3f} |")
    print(f"speed-up (independent / shared): median {med['independent'] / med['shared']:.2f}x, "
          f"min {low['independent'] / low['shared']:.2f}x; tables identical")
    return {"median": med, "min": low}


if __name__ == "__main__":
    main()
