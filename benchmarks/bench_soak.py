"""Soak: memory over a long image stream scored with sampling, through the job's scoring pass.

The stream cycles through the shipped Fashion-MNIST sample (2,000 images) with a unique ``sample_id``
per position, so ``sample_rate`` selects a fresh subset everywhere; it runs through
:func:`relmon.jobs.scoring.score_stream`, as ``relmon monitor`` does (``--runner``: the default
Lightning-free loop, or a real ``pl.Trainer.predict`` of ``RelevanceMonitor``). The process's resident set size (``VmRSS``) is read every 1,000 images.
Reported: RSS after the first thousand images (the working buffers are allocated by then) and at the
end, the growth between them, the peak, and the rate.

    OMP_NUM_THREADS=1 .venv/bin/python benchmarks/bench_soak.py --images 100000

``tests/test_reliability.py`` runs a 5,000-image version and asserts growth below 100 MiB.

``--serve MINUTES`` soaks the long-running service instead: a real ``relmon serve`` process (its own
interpreter) on a temporary folder input with a records folder, re-running every ``--interval``
seconds; the driver adds a few new PNGs every ``--add-every`` seconds (so runs keep scoring), scrapes
``/metrics`` every interval, and reads the service's ``VmRSS`` and open file descriptors
(``/proc/<pid>/fd``) every 30 s. Reported: RSS and fds after the first minute and at the end, growth,
peaks, runs, samples scored, scrapes and scrape errors.

    nice OMP_NUM_THREADS=1 .venv/bin/python benchmarks/bench_soak.py --serve 30 --interval 2
"""

from __future__ import annotations

import argparse
import json
import time
from typing import Any

import torch
from torch.utils.data import Dataset


def rss_mib() -> float:
    """Resident set size of this process in MiB (from ``/proc/self/status``)."""
    with open("/proc/self/status") as f:
        for line in f:
            if line.startswith("VmRSS:"):
                return int(line.split()[1]) / 1024.0
    raise RuntimeError("no VmRSS in /proc/self/status")


class CyclingStream(Dataset):
    """``n`` items cycling through ``images`` (uint8 ``(N, 28, 28)``); records RSS every ``every`` items."""

    def __init__(self, images: torch.Tensor, n: int, preprocessing, every: int = 1000):
        self.images, self.n, self.prep, self.every = images, n, preprocessing, every
        self.trace: list[tuple[int, float]] = []

    def __len__(self) -> int:
        return self.n

    def __getitem__(self, i: int) -> dict[str, Any]:
        if i % self.every == 0:
            self.trace.append((i, rss_mib()))
        x = self.images[i % len(self.images)].float().div(255.0).unsqueeze(0)
        x = self.prep.normalize(x.unsqueeze(0))[0] if self.prep is not None else x
        return {"x": x, "sample_id": f"soak-{i}", "index": i, "window_id": "soak:0", "label": -1}


def soak(images: int = 5000, sample_rate: float = 0.02, steps: int = 8, region: int = 7,
         batch_size: int = 250, runner: str = "plain") -> dict[str, Any]:
    """Score a stream of ``images`` with sampling; returns the RSS trace and its summary (MiB)."""
    from relmon.config import MonitorConfig
    from relmon.data import load_sample
    from relmon.jobs.scoring import score_stream
    from relmon.models import get_preprocessing, load_embedded

    model = load_embedded("fmnist_cnn")
    prep = get_preprocessing(model)
    pixels, _ = load_sample()
    stream = CyclingStream(torch.from_numpy(pixels), images, prep)
    cfg = MonitorConfig(steps=steps, region=region, sample_rate=sample_rate, batch_size=batch_size, n=None,
                        runner=runner)
    t0 = time.perf_counter()
    records, _, _ = score_stream(cfg, model, stream)
    seconds = time.perf_counter() - t0
    stream.trace.append((images, rss_mib()))
    trace = stream.trace
    # after the first thousand (warm-up: the first batches allocate the working buffers) vs the end
    first = [r for i, r in trace if i >= min(1000, images)][:1] or [trace[0][1]]
    last = [trace[-1][1]]
    return {
        "images": images,
        "runner": runner,
        "scored": int(records["sample_id"].nunique()) if len(records) else 0,
        "sample_rate": sample_rate,
        "seconds": round(seconds, 1),
        "images_per_second": round(images / seconds, 1),
        "rss_first_mib": round(max(first), 1),
        "rss_last_mib": round(max(last), 1),
        "rss_growth_mib": round(max(last) - max(first), 1),
        "rss_peak_mib": round(max(r for _, r in trace), 1),
        "trace": [(i, round(r, 1)) for i, r in trace],
    }


def proc_rss_mib(pid: int) -> float:
    """Resident set size of process ``pid`` in MiB (``/proc/<pid>/status``)."""
    with open(f"/proc/{pid}/status") as f:
        for line in f:
            if line.startswith("VmRSS:"):
                return int(line.split()[1]) / 1024.0
    raise RuntimeError(f"no VmRSS for pid {pid}")


def serve_soak(minutes: float = 30.0, interval: float = 2.0, add_every: float = 10.0, add: int = 4,
               sample_every: float = 30.0) -> dict[str, Any]:
    """Run ``relmon serve`` for ``minutes`` and trace its RSS and open fds (see the module docstring)."""
    import os
    import re
    import signal
    import subprocess
    import sys
    import tempfile
    import urllib.request
    from pathlib import Path

    from PIL import Image
    from prometheus_client.parser import text_string_to_metric_families

    from relmon.data import load_sample

    pixels, _ = load_sample()
    root = Path(__file__).resolve().parents[1]
    tmp = Path(tempfile.mkdtemp(prefix="relmon-serve-soak-"))
    inp, rec = tmp / "in", tmp / "rec"
    inp.mkdir()
    written = 0

    def put(k: int) -> None:
        nonlocal written
        for _ in range(k):
            Image.fromarray(pixels[written % len(pixels)]).save(inp / f"img{written:06d}.png")
            written += 1

    put(16)
    env = dict(os.environ, OMP_NUM_THREADS="1", PYTHONPATH=str(root) + os.pathsep + os.environ.get("PYTHONPATH", ""))
    cmd = [sys.executable, "-m", "relmon", "serve", "--input", str(inp), "--records", str(rec),
           "--http-addr", "127.0.0.1", "--http-port", "0", "--interval-seconds", str(interval),
           "--region", "7", "--steps", "8", "--batch-size", "16", "--threads", "1"]
    log = open(tmp / "serve.log", "w+")
    proc = subprocess.Popen(cmd, stdout=subprocess.DEVNULL, stderr=log, env=env, cwd=tmp)
    url = None
    try:
        t_wait = time.monotonic() + 300
        while url is None and time.monotonic() < t_wait and proc.poll() is None:
            time.sleep(0.5)
            m = re.search(r"serving metrics at (\S+)", (tmp / "serve.log").read_text())
            url = m.group(1) if m else None
        if url is None:
            raise RuntimeError(f"serve did not start: {(tmp / 'serve.log').read_text()[-2000:]}")
        t0 = time.monotonic()
        end = t0 + minutes * 60
        trace: list[tuple[float, float, int]] = []
        next_sample = next_add = t0
        scrapes = errors = 0
        samples = 0.0
        while time.monotonic() < end and proc.poll() is None:
            now = time.monotonic()
            if now >= next_sample:
                trace.append((now - t0, proc_rss_mib(proc.pid), len(os.listdir(f"/proc/{proc.pid}/fd"))))
                next_sample += sample_every
            if now >= next_add:
                put(add)
                next_add += add_every
            try:
                with urllib.request.urlopen(url, timeout=10) as r:
                    text = r.read().decode()
                scrapes += 1
                samples = sum(s.value for fam in text_string_to_metric_families(text) for s in fam.samples
                              if s.name == "relmon_samples_processed_total")
            except OSError:
                errors += 1
            time.sleep(interval)
        alive = proc.poll() is None
        trace.append((time.monotonic() - t0, proc_rss_mib(proc.pid), len(os.listdir(f"/proc/{proc.pid}/fd"))))
    finally:
        if proc.poll() is None:
            proc.send_signal(signal.SIGTERM)
            try:
                proc.wait(60)
            except subprocess.TimeoutExpired:
                proc.kill()
                proc.wait()
    stderr = (tmp / "serve.log").read_text()
    first = [x for x in trace if x[0] >= 60][:1] or trace[:1]
    return {
        "minutes": minutes,
        "interval_seconds": interval,
        "alive_at_end": alive,
        "exit_code": proc.returncode,
        "files_added": written,
        "samples_processed_total": samples,
        "scrapes": scrapes,
        "scrape_errors": errors,
        "rss_1min_mib": round(first[0][1], 1),
        "rss_last_mib": round(trace[-1][1], 1),
        "rss_growth_mib": round(trace[-1][1] - first[0][1], 1),
        "rss_peak_mib": round(max(r for _, r, _ in trace), 1),
        "fds_1min": first[0][2],
        "fds_last": trace[-1][2],
        "fds_max": max(f for _, _, f in trace),
        "errors_logged": stderr.count(" ERROR ") + stderr.count("Traceback"),
        "trace": [(round(t), round(r, 1), f) for t, r, f in trace],
    }


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--images", type=int, default=100_000)
    p.add_argument("--sample-rate", type=float, default=0.02)
    p.add_argument("--steps", type=int, default=8)
    p.add_argument("--batch-size", type=int, default=250)
    p.add_argument("--runner", choices=("plain", "lightning"), default="plain",
                   help="the job's scoring loop (config field runner)")
    p.add_argument("--json", action="store_true", help="print the whole trace as JSON")
    p.add_argument("--serve", type=float, metavar="MINUTES", default=None,
                   help="soak a real `relmon serve` process for MINUTES instead (RSS and open fds)")
    p.add_argument("--interval", type=float, default=2.0, help="--serve: interval_seconds of the service")
    p.add_argument("--add-every", type=float, default=10.0, help="--serve: seconds between new input files")
    a = p.parse_args()
    torch.set_num_threads(1)
    if a.serve is not None:
        out = serve_soak(a.serve, a.interval, a.add_every)
        if a.json:
            print(json.dumps(out, indent=1))
            return
        trace = out.pop("trace")
        for k, v in out.items():
            print(f"{k:<24} {v}")
        print("seconds  RSS MiB  fds")
        for t, r, f in trace:
            print(f"{t:>7} {r:8.1f} {f:4d}")
        return
    out = soak(a.images, a.sample_rate, a.steps, batch_size=a.batch_size, runner=a.runner)
    if a.json:
        print(json.dumps(out, indent=1))
        return
    trace = out.pop("trace")
    for k, v in out.items():
        print(f"{k:<18} {v}")
    step = max(1, len(trace) // 10)
    print("images  RSS MiB")
    for i, r in trace[::step] + [trace[-1]]:
        print(f"{i:>7} {r:8.1f}")


if __name__ == "__main__":
    main()
