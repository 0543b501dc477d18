"""Calibration cost of the method table (issue 21 item 6): ``relmon calibrate``'s scoring of every
candidate method on ``method_table_n`` clean images, as a share of the whole calibration, measured
inside one run (``calibration.json`` → ``method_selection.seconds`` against the run's wall time), so the
machine's load cancels out of the ratio.

Two models: the embedded ``fmnist_cnn`` on the shipped sample (the demo's calibration: ``calibration_n``
80, every shipped shift) and a small CNN relmon does not ship (random weights; the cost does not depend
on them) on the same images.

    python benchmarks/bench_method_table.py [--n 80] [--table-n 128] [--threads 2]
"""

from __future__ import annotations

import argparse
import time

import torch
from torch import nn

from relmon.config import MonitorConfig
from relmon.jobs.calibrate_job import calibrate_model, sample_data
from relmon.models import load_embedded
from relmon.preprocessing import Preprocessing, attach_preprocessing


def user_cnn() -> nn.Module:
    torch.manual_seed(0)
    net = nn.Sequential(nn.Conv2d(1, 16, 3, padding=1), nn.ReLU(), nn.MaxPool2d(2),
                        nn.Conv2d(16, 32, 3, padding=1), nn.ReLU(), nn.MaxPool2d(2),
                        nn.Flatten(), nn.Linear(32 * 7 * 7, 10)).eval()
    return attach_preprocessing(net, Preprocessing(0.0, 1.0))


def measure(model, data, cfg: MonitorConfig) -> tuple[float, float]:
    t0 = time.perf_counter()
    cal = calibrate_model(model, data, cfg)
    total = time.perf_counter() - t0
    return total, float(cal.meta["method_selection"]["seconds"])


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--n", type=int, default=80, help="calibration_n")
    ap.add_argument("--table-n", type=int, default=128, help="method_table_n")
    ap.add_argument("--threads", type=int, default=2)
    args = ap.parse_args()
    torch.set_num_threads(args.threads)
    data = sample_data()
    cfg = MonitorConfig(calibration_n=args.n, method_table_n=args.table_n)
    print(f"calibration_n={args.n} method_table_n={args.table_n} threads={args.threads}")
    print("| model | calibration s | of it the method table s | ratio with / without the table |\n|---|---|---|---|")
    for name, model in (("fmnist_cnn (embedded)", load_embedded("fmnist_cnn")), ("user CNN (not shipped)", user_cnn())):
        total, table = measure(model, data, cfg)
        print(f"| {name} | {total:.1f} | {table:.1f} | {total / (total - table):.2f} |", flush=True)


if __name__ == "__main__":
    main()
