"""Load on the /metrics endpoint: N concurrent scrapers for S seconds on loopback.

Each variant's server runs in its own child process (so the scrapers do not share its interpreter),
holds a registry filled like a real job's (every estimator, four methods with histograms, drift),
binds 127.0.0.1 on a free port and is stopped by its pid. The scrapers are threads of this process;
each opens a new connection per request (as urllib does) with a 10 s timeout. Reported per variant:
requests, errors (by kind), p50 / p99 / max latency, and the server's resident memory (VmRSS) before
and after the load plus its peak (VmHWM).

Variants: ``before`` = ``prometheus_client.start_http_server`` (socketserver's listen backlog of 5,
the exposition rendered for every scrape); ``after`` = :func:`relmon.export.serve_http` (backlog
128, one rendering reused for 1 s). Loads: a closed loop (each client re-requests as soon as it is
answered: saturates the CPU, so latency ~ clients / throughput) and a paced load (each client
scrapes once per second). All four run in one invocation, one after the other, so their figures are
comparable.

    OMP_NUM_THREADS=1 PYTHONPATH=. python benchmarks/bench_exporter.py --clients 50 --seconds 30

tests/test_export_security.py runs :func:`scrape_load` for 5 s and asserts zero errors only.
"""

from __future__ import annotations

import argparse
import subprocess
import sys
import threading
import time
import urllib.request
from collections import Counter

import numpy as np


def scrape_load(
    url: str,
    clients: int = 50,
    seconds: float = 30.0,
    timeout: float = 10.0,
    interval: float = 0.0,
    raw: bool = False,
) -> dict:
    """``clients`` threads GET ``url`` for ``seconds``; latency percentiles and errors.

    ``interval=0``: each client sends its next request as soon as the last one is answered (a closed
    loop that saturates the machine). ``interval>0``: each client scrapes once per ``interval``
    seconds, the clients' phases spread evenly over it (like Prometheus servers scraping on a schedule).
    """
    deadline = time.perf_counter() + seconds
    latencies: list[list[float]] = [[] for _ in range(clients)]
    errors: list[Counter] = [Counter() for _ in range(clients)]
    start = threading.Barrier(clients)

    def worker(i: int) -> None:
        start.wait()
        tick = time.perf_counter() + interval * i / clients
        while time.perf_counter() < deadline:
            if interval > 0:
                time.sleep(max(0.0, tick - time.perf_counter()))
                tick += interval
            t0 = time.perf_counter()
            try:
                with urllib.request.urlopen(url, timeout=timeout) as resp:
                    resp.read()
                latencies[i].append(time.perf_counter() - t0)
            except Exception as err:  # counted, never fatal: that is what is measured
                errors[i][type(err).__name__] += 1

    threads = [threading.Thread(target=worker, args=(i,), daemon=True) for i in range(clients)]
    t0 = time.perf_counter()
    for t in threads:
        t.start()
    for t in threads:
        t.join(seconds + timeout + 30)
    wall = time.perf_counter() - t0
    lat = np.array([x for xs in latencies for x in xs])
    kinds = sum(errors, Counter())
    if raw:
        return {"latencies": lat.tolist(), "error_kinds": dict(kinds), "wall": wall}
    return summarize(lat, kinds, wall)


def summarize(lat: np.ndarray, kinds: Counter, wall: float) -> dict:
    pct = (lambda q: float(np.percentile(lat, q)) * 1000) if lat.size else (lambda q: float("nan"))
    return {
        "requests": int(lat.size),
        "errors": int(sum(kinds.values())),
        "error_kinds": dict(kinds),
        "p50_ms": pct(50),
        "p99_ms": pct(99),
        "max_ms": float(lat.max()) * 1000 if lat.size else float("nan"),
        "rps": lat.size / wall,
    }


def _scrape_part(args) -> dict:
    return scrape_load(*args, raw=True)


def scrape_load_procs(url: str, clients: int, seconds: float, interval: float, procs: int) -> dict:
    """:func:`scrape_load` with the clients split over ``procs`` processes (no shared interpreter lock)."""
    import multiprocessing

    if procs <= 1:
        return scrape_load(url, clients=clients, seconds=seconds, interval=interval)
    sizes = [clients // procs + (i < clients % procs) for i in range(procs)]
    with multiprocessing.get_context("fork").Pool(procs) as pool:
        parts = pool.map(_scrape_part, [(url, n, seconds, 10.0, interval) for n in sizes])
    lat = np.array([x for part in parts for x in part["latencies"]])
    kinds = sum((Counter(part["error_kinds"]) for part in parts), Counter())
    return summarize(lat, kinds, max(part["wall"] for part in parts))


def filled_registry():
    from relmon.export import ESTIMATOR_LABELS, RelmonMetrics

    m = RelmonMetrics("fmnist_cnn", "0123abcd", "production")
    rng = np.random.default_rng(0)
    for name in ESTIMATOR_LABELS:
        m.set_estimate(name, 0.8, 0.75, 0.85)
    for method in ("lrp:epsilon_plus_flat", "sensitivity", "gradient_x_input", "random"):
        m.set_method(method, aopc=1.0, aopc_relative=0.3)
        m.observe_aopc_relative(method, rng.normal(0.3, 0.2, 256))
    m.set_drift({"aopc": 0.3, "confidence": 0.2}, alarm=False)
    m.add_samples(256)
    m.add_input_errors({})
    m.set_run(12.0, time.time())
    return m.registry


def _child(variant: str) -> None:
    """Serve a filled registry with ``variant``'s server; print the port; wait for stdin to close."""
    registry = filled_registry()
    if variant == "before":
        from prometheus_client import start_http_server

        server, _ = start_http_server(0, addr="127.0.0.1", registry=registry)
        port = server.server_port
    else:
        from relmon.export import serve_http

        port = serve_http(registry, port=0, addr="127.0.0.1").port
    print(port, flush=True)
    sys.stdin.read()


def _memory_kib(pid: int) -> dict[str, int]:
    out = {}
    for line in open(f"/proc/{pid}/status"):
        key, _, value = line.partition(":")
        if key in ("VmRSS", "VmHWM"):
            out[key] = int(value.split()[0])
    return out


def run_variant(variant: str, clients: int, seconds: float, interval: float, procs: int = 1) -> dict:
    proc = subprocess.Popen(
        [sys.executable, __file__, "--child", variant], stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True
    )
    try:
        port = int(proc.stdout.readline())
        url = f"http://127.0.0.1:{port}/metrics"
        urllib.request.urlopen(url, timeout=10).read()  # warm
        before = _memory_kib(proc.pid)
        result = scrape_load_procs(url, clients, seconds, interval, procs)
        after = _memory_kib(proc.pid)
        result.update(rss_before_mib=before["VmRSS"] / 1024, rss_after_mib=after["VmRSS"] / 1024,
                      peak_mib=after["VmHWM"] / 1024)  # fmt: skip
        return result
    finally:
        proc.stdin.close()
        proc.terminate()
        proc.wait(timeout=10)


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--clients", type=int, default=50)
    p.add_argument("--seconds", type=float, default=30.0)
    p.add_argument("--intervals", nargs="+", type=float, default=[0.0, 1.0],
                   help="seconds between one client's scrapes; 0 = closed loop (default: 0 and 1)")
    p.add_argument("--client-procs", type=int, default=1, help="processes the client threads are split over")
    p.add_argument("--variants", nargs="+", default=["before", "after"], choices=["before", "after"])
    p.add_argument("--child", choices=["before", "after"], help=argparse.SUPPRESS)
    args = p.parse_args(argv)
    if args.child:
        _child(args.child)
        return 0
    print(f"{args.clients} scrapers x {args.seconds:g} s on 127.0.0.1, clients in {args.client_procs} process(es)\n")
    print(
        "| load | server | backlog, cache | requests | req/s | errors | p50 ms | p99 ms | max ms "
        "| RSS before→after MiB | peak MiB |"
    )
    print("|---|---|---|---|---|---|---|---|---|---|---|")
    for interval, variant in [(i, v) for i in args.intervals for v in args.variants]:
        r = run_variant(variant, args.clients, args.seconds, interval, args.client_procs)
        load = "closed loop" if interval == 0 else f"1 scrape / {interval:g} s each"
        name = "prometheus_client.start_http_server" if variant == "before" else "relmon serve_http"
        kinds = f" ({', '.join(f'{k} {v}' for k, v in r['error_kinds'].items())})" if r["errors"] else ""
        print(
            f"| {load} | {name} | {'5, none' if variant == 'before' else '128, 1 s'} | {r['requests']} | {r['rps']:.0f} | "
            f"{r['errors']}{kinds} | {r['p50_ms']:.1f} | {r['p99_ms']:.1f} | {r['max_ms']:.0f} | "
            f"{r['rss_before_mib']:.1f}→{r['rss_after_mib']:.1f} | {r['peak_mib']:.1f} |",
            flush=True,
        )
    return 0


if __name__ == "__main__":
    sys.exit(main())
