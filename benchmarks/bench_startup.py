"""Start-up cost of relmon's entry points against ``import torch``, in fresh subprocesses.

Each case is a fresh ``python`` process; the cases are interleaved (case A, B, C, ..., A, B, C, ...)
so that a change of machine load hits all of them alike, and the table gives medians of wall time
and of CPU time (user + sys of the child, less sensitive to other jobs on a shared machine) and the
ratio of each median to that of ``import torch`` measured in the same run, and to that of ``import
torch`` ended by ``os._exit`` as the job cases are (no interpreter teardown, which costs about 0.5 s
once torch is loaded): the second ratio compares like with like. The children may write ``.pyc``
files (``PYTHONDONTWRITEBYTECODE`` is dropped), as an installed package has its bytecode compiled.

"job: first forward" runs ``relmon monitor`` (the scheduled job, shipped sample) in-process with a
global forward pre-hook that ends the process at the first module call on data (calls made while
``torch.fx`` traces the model are skipped): the time until the job could start computing, i.e. its
start-up (imports, config, data, model, LRP composite; the Trainer with ``runner: lightning``).

    python benchmarks/bench_startup.py [--repeats 7] [--markdown out/startup.md] [--json out/startup.json]
"""

from __future__ import annotations

import argparse
import json
import os
import resource
import statistics
import subprocess
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]

_JOB = """
import os, sys
from relmon.cli import main
import torch
def _first_forward(module, args):
    if any(isinstance(a, torch.fx.Proxy) for a in args):
        return  # torch.fx tracing the model (LRP's layer graph), not a forward on data
    os._exit(0)
torch.nn.modules.module.register_module_forward_pre_hook(_first_forward)
sys.argv = ["relmon", "monitor", "--n", "16", "--methods", {methods}, *{extra}]
sys.exit(main())
"""

_EXIT_BASE = "import torch (ended by os._exit)"
CASES: dict[str, list[str]] = {
    "import torch": ["-c", "import torch"],
    # the job cases end by os._exit (no interpreter teardown, ~0.5 s with torch loaded): compare like with like
    _EXIT_BASE: ["-c", "import os, torch; os._exit(0)"],
    "relmon --help": ["-m", "relmon", "--help"],
    "relmon --version": ["-m", "relmon", "--version"],
    "import relmon.export.metrics (exporter)": ["-c", "import relmon.export.metrics"],
    "import torch, torchvision": ["-c", "import torch, torchvision"],
    "import torch, zennit.rules": ["-c", "import torch, zennit.rules"],
    "import torch, torchmetrics": ["-c", "import torch, torchmetrics"],
    "import torch, pytorch_lightning": ["-c", "import torch, pytorch_lightning"],
    "import relmon.explain": ["-c", "import relmon.explain"],
    "import relmon.lightning": ["-c", "import relmon.lightning"],
    "import relmon.jobs.runner": ["-c", "import relmon.jobs.runner"],
    "job: first forward (lrp)": ["-c", _JOB.format(methods='"lrp"', extra=[])],
    "job: first forward (sensitivity)": ["-c", _JOB.format(methods='"sensitivity"', extra=[])],
    "job: first forward (lrp, runner lightning)": ["-c", _JOB.format(methods='"lrp"',
                                                                      extra=["--runner", "lightning"])],
}


def run_once(args: list[str], env: dict[str, str]) -> tuple[float, float]:
    before = resource.getrusage(resource.RUSAGE_CHILDREN)
    t0 = time.perf_counter()
    proc = subprocess.run([sys.executable, *args], env=env, cwd=ROOT, stdout=subprocess.DEVNULL,
                          stderr=subprocess.PIPE, text=True)
    wall = time.perf_counter() - t0
    after = resource.getrusage(resource.RUSAGE_CHILDREN)
    if proc.returncode != 0:
        raise SystemExit(f"{args!r} failed with exit code {proc.returncode}:\n{proc.stderr[-2000:]}")
    cpu = (after.ru_utime - before.ru_utime) + (after.ru_stime - before.ru_stime)
    return wall, cpu


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--repeats", type=int, default=7)
    parser.add_argument("--only", nargs="*", help="case names (substrings) to run besides 'import torch'")
    parser.add_argument("--json", type=Path)
    parser.add_argument("--markdown", type=Path)
    args = parser.parse_args(argv)
    env = dict(os.environ, PYTHONPATH=f"{ROOT}{os.pathsep}{os.environ.get('PYTHONPATH', '')}".rstrip(os.pathsep),
               OMP_NUM_THREADS=os.environ.get("OMP_NUM_THREADS", "1"))
    # An installed package has its bytecode compiled; let the warm-up run write the .pyc files.
    env.pop("PYTHONDONTWRITEBYTECODE", None)
    cases = {k: v for k, v in CASES.items()
             if k.startswith("import torch") and "," not in k or not args.only or any(s in k for s in args.only)}
    for case in cases.values():  # warm the file cache and .pyc files once
        run_once(case, env)
    walls: dict[str, list[float]] = {k: [] for k in cases}
    cpus: dict[str, list[float]] = {k: [] for k in cases}
    for rep in range(args.repeats):
        for name, case in cases.items():
            wall, cpu = run_once(case, env)
            walls[name].append(wall)
            cpus[name].append(cpu)
        print(f"repeat {rep + 1}/{args.repeats} done", file=sys.stderr)
    base_w = statistics.median(walls["import torch"])
    base_c = statistics.median(cpus["import torch"])
    exit_w = statistics.median(walls[_EXIT_BASE])
    exit_c = statistics.median(cpus[_EXIT_BASE])
    rows = []
    for name in cases:
        mw, mc = statistics.median(walls[name]), statistics.median(cpus[name])
        rows.append(dict(case=name, wall_median_s=mw, wall_min_s=min(walls[name]), cpu_median_s=mc,
                         wall_ratio=mw / base_w, cpu_ratio=mc / base_c,
                         wall_ratio_exit=mw / exit_w, cpu_ratio_exit=mc / exit_c))
    lines = ["| case | wall median s | wall min s | CPU median s | wall / import torch | CPU / import torch "
             "| wall / import torch (os._exit) | CPU / import torch (os._exit) |",
             "|---|---|---|---|---|---|---|---|"]
    lines += [f"| {r['case']} | {r['wall_median_s']:.2f} | {r['wall_min_s']:.2f} | {r['cpu_median_s']:.2f} | "
              f"{r['wall_ratio']:.2f} | {r['cpu_ratio']:.2f} | {r['wall_ratio_exit']:.2f} | "
              f"{r['cpu_ratio_exit']:.2f} |" for r in rows]
    text = "\n".join(lines)
    print(text)
    if args.markdown:
        args.markdown.parent.mkdir(parents=True, exist_ok=True)
        args.markdown.write_text(text + "\n")
    if args.json:
        args.json.parent.mkdir(parents=True, exist_ok=True)
        args.json.write_text(json.dumps(dict(repeats=args.repeats, python=sys.version, rows=rows,
                                             walls=walls, cpus=cpus), indent=1))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
