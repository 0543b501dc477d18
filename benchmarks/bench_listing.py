"""Listing a folder of 1,000,000 image files: peak memory and time of relmon's listing step.

Makes ``--n`` empty ``.png`` files in a temporary folder (``--per-folder`` per sub-folder; kept for
re-runs with ``--keep``), then, in a fresh process for each measurement:

- ``listing``: :func:`relmon.data.file_listing.list_images` alone;
- ``stream``: what a monitor run does before decoding anything: build the ``ImageFolderStream``
  (``image_size`` given, count windows of ``--window-size``), split it in windows, and select the
  files to score (``sample_rate``, ``max_samples`` per window) — :func:`relmon.data.file_listing.select_indices`
  on the sample ids;
- ``shard``: the same, plus ``--shard 0/8`` (one shard's files).

Reports the process's peak RSS (``ru_maxrss``), its RSS after the imports (torch etc.), and the wall
time of the step. ``--memory`` lists a generated fsspec ``memory://`` folder instead (the store itself
then counts in the RSS).

    .venv/bin/python benchmarks/bench_listing.py --n 1000000
"""

from __future__ import annotations

import argparse
import json
import os
import resource
import shutil
import subprocess
import sys
import tempfile
import time


def rss_mib() -> float:
    with open("/proc/self/status") as f:
        for line in f:
            if line.startswith("VmRSS:"):
                return int(line.split()[1]) / 1024
    return float("nan")


def peak_mib() -> float:
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024


def make_files(root: str, n: int, per_folder: int) -> None:
    for start in range(0, n, per_folder):
        folder = os.path.join(root, f"d{start // per_folder:05d}")
        os.makedirs(folder, exist_ok=True)
        for i in range(start, min(n, start + per_folder)):
            os.close(os.open(os.path.join(folder, f"img_{i:08d}.png"), os.O_CREAT | os.O_WRONLY, 0o644))


def child(mode: str, root: str, n_memory: int, window_size: int, sample_rate: float, max_samples: int) -> None:
    if n_memory:
        import fsspec

        fs = fsspec.filesystem("memory")
        for i in range(n_memory):
            fs.pipe_file(f"/bench/d{i // 1000:05d}/img_{i:08d}.png", b"")
        root = "memory://bench"
    import torch  # noqa: F401  (what the job has imported before it lists)

    from relmon.data.file_listing import list_images, select_indices, shard_indices
    from relmon.data.streams import IMAGE_EXTENSIONS, ImageFolderStream

    base = rss_mib()
    t0 = time.perf_counter()
    if mode == "listing":
        listing = list_images(root, IMAGE_EXTENSIONS)
        n, selected = len(listing), None
    else:
        stream = ImageFolderStream(root, image_size=28, window_size=window_size)
        n = len(stream)
        ids = stream.sample_ids
        candidates = None
        if mode == "shard":
            candidates = shard_indices(stream.relative_path, n, (0, 8))
        selected = len(select_indices(ids, stream.window_id, seed=0, sample_rate=sample_rate,
                                      max_samples=max_samples, candidates=candidates))
    seconds = time.perf_counter() - t0
    print(json.dumps({"mode": mode, "files": n, "selected": selected, "seconds": round(seconds, 2),
                      "rss_after_imports_mib": round(base, 1), "peak_rss_mib": round(peak_mib(), 1),
                      "memory_fs": bool(n_memory)}), flush=True)


def main() -> None:
    if sys.argv[1:2] == ["--child"]:
        mode, root, n_memory, window_size, rate, cap = sys.argv[2:8]
        child(mode, root, int(n_memory), int(window_size), float(rate), int(cap))
        return
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--n", type=int, default=1_000_000)
    ap.add_argument("--per-folder", type=int, default=1000)
    ap.add_argument("--window-size", type=int, default=100_000)
    ap.add_argument("--sample-rate", type=float, default=0.01)
    ap.add_argument("--max-samples", type=int, default=256)
    ap.add_argument("--modes", default="listing,stream,shard")
    ap.add_argument("--folder", help="use (or make) the files here (default: a temporary folder)")
    ap.add_argument("--keep", action="store_true", help="keep the generated folder")
    ap.add_argument("--memory", action="store_true", help="list a generated memory:// folder instead")
    args = ap.parse_args()
    root = args.folder or tempfile.mkdtemp(prefix="relmon-listing-")
    try:
        if not args.memory:
            marker = os.path.join(root, f".made-{args.n}-{args.per_folder}")
            if not os.path.exists(marker):
                t0 = time.perf_counter()
                make_files(root, args.n, args.per_folder)
                open(marker, "w").close()
                print(json.dumps({"made_files": args.n, "seconds": round(time.perf_counter() - t0, 1)}), flush=True)
        print(json.dumps({"loadavg": os.getloadavg()}), flush=True)
        for mode in args.modes.split(","):
            proc = subprocess.run(
                [sys.executable, __file__, "--child", mode, root, str(args.n if args.memory else 0),
                 str(args.window_size), str(args.sample_rate), str(args.max_samples)],
                capture_output=True, text=True, timeout=1800)
            if proc.returncode != 0:
                print(json.dumps({"mode": mode, "error": proc.stderr[-2000:]}), flush=True)
            else:
                print(proc.stdout.strip(), flush=True)
    finally:
        if not args.keep and not args.folder:
            shutil.rmtree(root, ignore_errors=True)


if __name__ == "__main__":
    main()
