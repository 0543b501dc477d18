"""Independent evaluation of relmon's label-free accuracy estimators (issue 10).

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
   frequencies are skewed towards the hardest or the easiest classes). Every estimator is scored twice:
   (a) fitted on all calibration windows (the shipped use; label-prior and compositions are unseen),
   (b) **held-out shift type**: refitted without the windows of the test window's shift type (for
   compositions, without both of its types), so the shift type itself is unseen.
5. MAE per test group with paired bootstrap intervals (scipy.stats.bootstrap over the test windows)
   of the difference to the best baseline, 90 % interval coverage and mean width.

Records are cached as Parquet under ``--cache``; ``--tiny`` is the CI version (< 1 min).
"""

from __future__ import annotations

import argparse
import json
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


def parse_args(argv=None) -> argparse.Namespace:
    from relmon.config import MonitorConfig

    shipped = MonitorConfig()
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--cache", default="/tmp/relmon-g-cache", help="Parquet cache of scored records")
    p.add_argument("--docs", default=str(ROOT / "docs"), help="where estimators.md and the plots go")
    p.add_argument("--models", nargs="+", default=["fmnist_cnn", "fmnist_vgg"])
    p.add_argument("--region", type=int, default=shipped.region)
    p.add_argument("--steps", type=int, default=shipped.steps)
    p.add_argument("--no-lerf", action="store_true", help="skip the LeRF order (no LeRF/MoRF contrast feature)")
    p.add_argument("--no-lerf-for", nargs="*", default=["fmnist_vgg"], metavar="MODEL",
                   help="models scored without LeRF (compute budget; their lerf_contrast feature is NaN)")
    p.add_argument("--window", type=int, default=100, help="images per window")
    p.add_argument("--clean", type=int, default=600, help="clean images per pool")
    p.add_argument("--per-condition", type=int, default=100, help="images per shifted condition")
    p.add_argument("--n-boot", type=int, default=2000)
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--threads", type=int, default=1)
    p.add_argument("--tiny", action="store_true", help="toy settings for CI (< 1 min)")
    p.add_argument("--records-only", action="store_true", help="compute and cache records, then stop")
    args = p.parse_args(argv)
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

    return RelevanceMonitor(model, methods=("lrp",), region=args.region, steps=args.steps, seed=args.seed,
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
    cache = Path(args.cache) / (f"{model_name}_r{args.region}_s{args.steps}_lerf{int(_lerf(model_name, args))}"
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


def main(argv=None) -> dict:
    t0 = time.perf_counter()
    args = parse_args(argv)
    torch.set_num_threads(args.threads)
    records = {m: model_records(m, args) for m in args.models}
    args.records_s = time.perf_counter() - t0
    if args.records_only:
        print(f"records in {args.records_s:.0f} s")
        return {"runtime_s": args.records_s}
    raise SystemExit("evaluation part not written yet")


if __name__ == "__main__":
    main()
