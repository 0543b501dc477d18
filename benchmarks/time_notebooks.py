"""Wall and CPU time of each notebook run the way CI runs it (nbclient, ``RELMON_NB_SMALL=1``).

    .venv/bin/python benchmarks/time_notebooks.py [NAME ...]     # default: every notebooks/*.ipynb

Each notebook runs in its own process; CPU time is that process's and its reaped children's (the
kernel) user + system time (``os.wait4``), which stays meaningful on a shared, loaded machine where
the wall clock does not. The load average is printed beside the totals.
"""

from __future__ import annotations

import os
import subprocess
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
RUN = """
import sys, nbformat
from nbclient import NotebookClient
nb = nbformat.read(sys.argv[1], as_version=4)
NotebookClient(nb, timeout=600, kernel_name="python3", resources={"metadata": {"path": sys.argv[2]}}).execute()
"""


def main(names: list[str]) -> int:
    names = names or sorted(p.stem for p in (ROOT / "notebooks").glob("*.ipynb"))
    env = dict(os.environ, RELMON_NB_SMALL="1")
    env.setdefault("OMP_NUM_THREADS", "2")
    total_wall = total_cpu = 0.0
    failed = 0
    for name in names:
        t0 = time.perf_counter()
        proc = subprocess.Popen([sys.executable, "-c", RUN, str(ROOT / "notebooks" / f"{name}.ipynb"),
                                 str(ROOT / "notebooks")], env=env, stderr=subprocess.DEVNULL)
        _, status, usage = os.wait4(proc.pid, 0)
        wall, cpu = time.perf_counter() - t0, usage.ru_utime + usage.ru_stime
        total_wall, total_cpu = total_wall + wall, total_cpu + cpu
        failed += status != 0
        print(f"{name}: wall {wall:.1f} s, CPU {cpu:.1f} s{'' if status == 0 else ', FAILED'}", flush=True)
    load = open("/proc/loadavg").read().split()[:3] if os.path.exists("/proc/loadavg") else "?"
    print(f"total: wall {total_wall:.1f} s, CPU {total_cpu:.1f} s (load average {' '.join(load)}, "
          f"{os.cpu_count()} CPUs)")
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
