"""Benchmarks of relmon's region-perturbation engine (AOPC).

CPU (default):
  overhead     AOPC wall time / wall time of the same number of plain forwards at the same batch size
  packing      the same ratio at relmon's default chunk on the embedded models (28x28) and on
               ResNet-18/ResNet-50 (weights=None) at 224x224 with N=4, L=16 (chunks smaller than a
               curve and not dividing N*(L+1)); also the sizes of the forwards relmon ran
  quantus      Quantus RegionPerturbation wall time / relmon wall time on the same work
  memory       peak RSS growth for N=1024, L=100 (region 2 on 28x28) under a 1 GiB budget (subprocess)
  subsampling  error of step subsampling s=2,5,10 against the full curve, per window of 256 images
  random_subset  error that a random-order baseline on a seeded subset of each window (the monitor's
               random_fraction) adds to the window's AOPC - random, against the full computation

CUDA (``--device cuda``): ResNet-50 (weights=None) at 224x224, L=100, region 9, bf16 autocast and
channels-last: overhead vs plain forwards, and peak allocated memory under budgets.

Examples::

    python benchmarks/bench_perturbation.py --quick
    python benchmarks/bench_perturbation.py --only overhead subsampling
    python benchmarks/bench_perturbation.py --device cuda --json out/bench_cuda.json
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import resource
import statistics
import subprocess
import sys
import time
import warnings
from pathlib import Path

import numpy as np
import torch

from relmon.data import load_sample, to_tensor
from relmon.models import Preprocessing, attach_preprocessing, input_bounds, load_embedded
from relmon.perturbation import (
    CPU_MAX_ITEMS,
    evaluated_steps,
    interpolate_curves,
    items_per_chunk,
    region_perturbation,
)

CPU_BENCHES = ("overhead", "packing", "quantus", "memory", "subsampling", "random_subset")
GiB = 2**30
MiB = 2**20


def log(msg: str) -> None:
    print(msg, file=sys.stderr, flush=True)


def grad_x_input(model: torch.nn.Module, x: torch.Tensor, batch: int = 256) -> torch.Tensor:
    """Gradient x input heatmap ``(B, H, W)`` of the predicted logit (channel sum)."""
    out = []
    for chunk in x.split(batch):
        xi = chunk.clone().requires_grad_(True)
        logits = model(xi)
        logits.gather(1, logits.argmax(1, keepdim=True)).sum().backward()
        out.append((xi.grad * xi).sum(1).detach())
    return torch.cat(out)


def heatmaps(model, x, kind: str) -> torch.Tensor:
    if kind == "lrp":
        from relmon.explain import explain, to_heatmap

        return to_heatmap(explain(model, x, "lrp"), "lrp")
    return grad_x_input(model, x)


def sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def plain_forwards(model, x, n_items: int, batch: int, device, autocast_dtype=None, channels_last=False) -> float:
    """Seconds for ``n_items`` forwards of pre-built inputs in batches of ``batch`` (what AOPC cannot beat)."""
    fmt = torch.channels_last if channels_last else torch.contiguous_format
    reps = -(-batch // x.shape[0])
    xb = x.to(device).repeat(reps, 1, 1, 1)[:batch].contiguous(memory_format=fmt)
    ctx = torch.autocast(device.type, dtype=autocast_dtype) if autocast_dtype else torch.autocast(
        device.type, enabled=False)
    with torch.inference_mode(), ctx:
        sync(device)
        t0 = time.perf_counter()
        done = 0
        while done < n_items:
            n = min(batch, n_items - done)
            model(xb[:n] if n < batch else xb)
            done += n
        sync(device)
    return time.perf_counter() - t0


def timed(fn, device) -> float:
    sync(device)
    t0 = time.perf_counter()
    fn()
    sync(device)
    return time.perf_counter() - t0


# --------------------------------------------------------------------------------------------------
# CPU benchmarks


class ForwardTimer:
    """Accumulates wall time spent inside ``model.forward`` (hooks), to split AOPC time into
    model forwards and everything relmon adds around them."""

    def __init__(self, model: torch.nn.Module, device: torch.device):
        self.total, self._t0, self.device = 0.0, 0.0, device
        self._handles = [model.register_forward_pre_hook(self._pre), model.register_forward_hook(self._post)]

    def _pre(self, *_):
        sync(self.device)
        self._t0 = time.perf_counter()

    def _post(self, *_):
        sync(self.device)
        self.total += time.perf_counter() - self._t0

    def remove(self):
        for h in self._handles:
            h.remove()


def _overhead_one(name: str, x: torch.Tensor, args) -> dict:
    region, steps, n = 4, 49, x.shape[0]
    cpu = torch.device("cpu")
    model = load_embedded(name)
    heat = heatmaps(model, x, args.heatmap)
    items = n * (steps + 1)
    kwargs = dict(region=region, steps=steps, order="morf", perturbation="uniform")
    if args.batch:
        kwargs.update(batch_size=args.batch)
        batch = (args.batch // (steps + 1)) * (steps + 1) or args.batch
    else:  # relmon's defaults: 256 MiB budget, at most CPU_MAX_ITEMS per forward, whole curves
        batch = (min(items_per_chunk(model, x[:1]), CPU_MAX_ITEMS) // (steps + 1)) * (steps + 1)
    region_perturbation(model, x[:8], heat[:8], **kwargs)  # warm-up
    plain_forwards(model, x, 2 * batch, batch, cpu)
    t_plain, t_aopc, t_inside = [], [], []
    for _ in range(args.repeats):  # interleaved, so that load from other processes hits both alike
        t_plain.append(plain_forwards(model, x, items, batch, cpu))
        timer = ForwardTimer(model, cpu)
        t_aopc.append(timed(lambda: region_perturbation(model, x, heat, **kwargs), cpu))
        timer.remove()
        t_inside.append(timer.total)
    outside = [a - i for a, i in zip(t_aopc, t_inside, strict=True)]
    row = {
        "model": name, "n": n, "steps": steps, "region": region, "items": items, "batch": batch,
        "plain_s": min(t_plain), "aopc_s": min(t_aopc), "ratio": min(t_aopc) / min(t_plain),
        "ratio_median": statistics.median(a / p for a, p in zip(t_aopc, t_plain, strict=True)),
        "outside_forward_s": statistics.median(outside),
        "engine_share": statistics.median(o / i for o, i in zip(outside, t_inside, strict=True)),
        "forwards_per_s": items / min(t_aopc),
    }
    log(f"overhead {name}: {row}")
    return row


def bench_overhead(args) -> dict:
    n = 64 if args.quick else 256
    imgs, _ = load_sample()
    x = to_tensor(imgs[:n])
    return {"rows": [_overhead_one(name, x, args) for name in ("fmnist_cnn", "fmnist_vgg")]}


def _packing_model(name: str):
    """(model, input shape) of a packing configuration; torchvision models get ImageNet preprocessing."""
    if name.startswith("fmnist"):
        return load_embedded(name), (1, 28, 28)
    import torchvision

    model = getattr(torchvision.models, name)(weights=None).eval()
    attach_preprocessing(model, Preprocessing(mean=(0.485, 0.456, 0.406), std=(0.229, 0.224, 0.225)))
    return model, (3, 224, 224)


def _packing_one(name: str, n: int, region: int, steps: int, args) -> dict:
    cpu = torch.device("cpu")
    model, shape = _packing_model(name)
    lo, hi = input_bounds(model, shape[0])
    g = torch.Generator().manual_seed(0)
    x = lo.view(1, -1, 1, 1) + (hi - lo).view(1, -1, 1, 1) * torch.rand(n, *shape, generator=g)
    heat = torch.randn(n, *shape[1:], generator=g)  # the cost does not depend on the heatmap
    kwargs = dict(region=region, steps=steps, order="morf", perturbation="uniform")
    items = n * (steps + 1)
    with torch.inference_mode():
        chunk = min(items_per_chunk(model, x[:1]), CPU_MAX_ITEMS)  # relmon's default chunk on CPU
    sizes: list[int] = []
    handle = model.register_forward_pre_hook(lambda _m, a: sizes.append(a[0].shape[0]))
    region_perturbation(model, x[:1], heat[:1], **kwargs)  # warm-up
    handle.remove()
    plain_forwards(model, x, min(items, 2 * chunk), chunk, cpu)
    t_plain, t_aopc, t_inside, forwards = [], [], [], []
    for _ in range(args.repeats):  # interleaved
        t_plain.append(plain_forwards(model, x, items, chunk, cpu))
        sizes.clear()
        handle = model.register_forward_pre_hook(lambda _m, a: sizes.append(a[0].shape[0]))
        timer = ForwardTimer(model, cpu)
        t_aopc.append(timed(lambda: region_perturbation(model, x, heat, **kwargs), cpu))
        timer.remove()
        handle.remove()
        t_inside.append(timer.total)
        forwards = [s for s in sizes if s != 1 or chunk == 1]  # drop the one-item memory probe
    outside = [a - i for a, i in zip(t_aopc, t_inside, strict=True)]
    row = {
        "model": name, "input": "x".join(map(str, shape)), "n": n, "steps": steps, "region": region,
        "items": items, "chunk": chunk, "forward_sizes": forwards,
        "plain_s": statistics.median(t_plain), "aopc_s": statistics.median(t_aopc),
        "ratio_median": statistics.median(a / p for a, p in zip(t_aopc, t_plain, strict=True)),
        "ratio_min": min(t_aopc) / min(t_plain),
        "engine_share": statistics.median(o / i for o, i in zip(outside, t_inside, strict=True)),
    }
    log(f"packing {name}: {row}")
    return row


def bench_packing(args) -> dict:
    configs = [("fmnist_cnn", 64, 4, 49), ("fmnist_vgg", 64, 4, 49), ("fmnist_cnn", 16, 9, 16),
               ("resnet18", 4, 9, 16), ("resnet50", 4, 9, 16)]
    if args.quick:
        configs = [("fmnist_cnn", 16, 4, 49), ("resnet18", 2, 9, 16)]
    return {"rows": [_packing_one(*c, args) for c in configs]}


def _quantus_one(quantus, name: str, x: torch.Tensor, args) -> dict:
    region, steps, n = 4, 49, x.shape[0]
    cpu = torch.device("cpu")
    model = load_embedded(name)
    heat = heatmaps(model, x, args.heatmap)
    kwargs = dict(region=region, steps=steps, order="morf", perturbation="black", score="softmax")
    res = region_perturbation(model, x, heat, **kwargs)
    metric = quantus.RegionPerturbation(patch_size=region, order="morf", regions_evaluation=steps,
                                        perturb_baseline="black", abs=False, normalise=False,
                                        disable_warnings=True, display_progressbar=False)
    xn, yn, an = x.numpy(), res.target.numpy(), heat.numpy()[:, None]

    def run_quantus():
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            return metric(model=model, x_batch=xn, y_batch=yn, a_batch=an, softmax=True, device="cpu",
                          batch_size=64)

    curves = np.asarray(run_quantus())  # warm-up and agreement check
    max_diff = float(np.abs(curves - res.drops[:, 1:].numpy()).max())
    t_q, t_r = [], []
    for _ in range(args.repeats):
        t_q.append(timed(run_quantus, cpu))
        t_r.append(timed(lambda: region_perturbation(model, x, heat, **kwargs), cpu))
    row = {"model": name, "n": n, "steps": steps, "region": region, "quantus_s": min(t_q),
           "relmon_s": min(t_r), "speedup": min(t_q) / min(t_r), "max_abs_curve_diff": max_diff}
    log(f"quantus {name}: {row}")
    return row


def bench_quantus(args) -> dict:
    try:
        import quantus
    except ImportError:
        return {"skipped": "quantus is not installed (pip install 'relmon[oracle]')"}
    n = 32 if args.quick else 128
    imgs, _ = load_sample()
    x = to_tensor(imgs[:n])
    rows = [_quantus_one(quantus, name, x, args) for name in ("fmnist_cnn", "fmnist_vgg")]
    return {"rows": rows, "quantus_version": getattr(quantus, "__version__", "?")}


def _status_kib(field: str) -> int:
    with open("/proc/self/status") as f:
        for line in f:
            if line.startswith(field + ":"):
                return int(line.split()[1])
    raise RuntimeError(f"{field} not in /proc/self/status")


def _reset_peak_rss() -> bool:
    """Reset the kernel's RSS high-water mark (VmHWM) to the current RSS (Linux >= 4.0)."""
    try:
        with open("/proc/self/clear_refs", "w") as f:
            f.write("5")
        return True
    except OSError:
        return False


def memory_child(n: int, steps: int, region: int, budget: int, budget_only: int) -> None:
    """Runs in a fresh process: prints the peak RSS growth of one AOPC run as JSON.

    The peak is the kernel's VmHWM, reset just before the run (ru_maxrss would also count what the
    process inherited at fork/exec and everything before the run).
    """
    torch.set_num_threads(int(os.environ.get("RELMON_BENCH_THREADS", "2")))
    model = load_embedded("fmnist_cnn")
    imgs, _ = load_sample()
    x = to_tensor(np.resize(imgs, (n, 28, 28)))
    heat = grad_x_input(model, x)
    region_perturbation(model, x[:4], heat[:4], region=region, steps=4)  # allocator and kernels warm
    reset = _reset_peak_rss()
    before = _status_kib("VmRSS")
    t0 = time.perf_counter()
    # budget_only: no CPU_MAX_ITEMS cap, so the memory budget alone sets the batch (as on a GPU).
    cap = 2**62 if budget_only else None
    res = region_perturbation(model, x, heat, region=region, steps=steps, max_batch_bytes=budget, batch_size=cap)
    seconds = time.perf_counter() - t0
    chunk = min(items_per_chunk(model, x[:1], budget), CPU_MAX_ITEMS if cap is None else cap)
    k = res.num_steps + 1
    peak = _status_kib("VmHWM") if reset else resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    print(json.dumps({
        "n": n, "steps": res.num_steps, "region": region, "budget_mib": budget / MiB,
        "chunk_items": (chunk // k) * k if chunk >= k else chunk, "budget_only": bool(budget_only),
        "rss_before_mib": before / 1024,
        "peak_rss_mib": peak / 1024, "peak_growth_mib": (peak - before) / 1024, "seconds": seconds,
        "input_mib": x.nbytes / MiB, "peak_source": "VmHWM (reset)" if reset else "ru_maxrss",
    }))


def bench_memory(args) -> dict:
    configs = [(128, 100, 2, GiB, 0), (128, 100, 2, GiB, 1), (256, 100, 2, 64 * MiB, 1)] if args.quick else [
        (1024, 100, 2, GiB, 0), (256, 100, 2, GiB, 1), (1024, 100, 2, GiB, 1), (1024, 100, 2, 64 * MiB, 1)]
    rows = []
    for n, steps, region, budget, budget_only in configs:
        cmd = [sys.executable, __file__, "--memory-child", str(n), str(steps), str(region), str(budget),
               str(budget_only)]
        env = dict(os.environ, RELMON_BENCH_THREADS=str(torch.get_num_threads()))
        out = subprocess.run(cmd, capture_output=True, text=True, check=True, env=env)
        row = json.loads(out.stdout.strip().splitlines()[-1])
        log(f"memory: {row}")
        rows.append(row)
    return {"rows": rows}


def bench_subsampling(args) -> dict:
    window, strides = 256, (2, 5, 10)
    n_windows = 2 if args.quick else 7
    region, steps = 2, 100
    imgs, _ = load_sample()
    model = load_embedded("fmnist_cnn")
    full_aopc, sub_aopc = [], {s: [] for s in strides}
    t_full, t_sub = 0.0, dict.fromkeys(strides, 0.0)
    for w in range(n_windows):
        x = to_tensor(imgs[w * window:(w + 1) * window])
        heat = heatmaps(model, x, args.heatmap)
        kwargs = dict(region=region, steps=steps, offset=w * window)
        t0 = time.perf_counter()
        full = region_perturbation(model, x, heat, **kwargs)
        t_full += time.perf_counter() - t0
        full_aopc.append(full.aopc)
        for s in strides:
            if w == 0:  # run the engine once per stride: timing, and check it equals interpolating the full curve
                t0 = time.perf_counter()
                sub = region_perturbation(model, x, heat, step_stride=s, **kwargs)
                t_sub[s] = time.perf_counter() - t0
                derived = interpolate_curves(full.curves[:, sub.steps], sub.steps, full.num_steps)
                torch.testing.assert_close(sub.curves, derived, rtol=1e-5, atol=1e-5)
                sub_aopc[s].append(sub.aopc)
            else:  # identical by construction: the evaluated steps of the full curve, interpolated
                ks = evaluated_steps(full.num_steps, s)
                curves = interpolate_curves(full.curves[:, ks], ks, full.num_steps)
                sub_aopc[s].append((full.score0[:, None] - curves).mean(1))
        log(f"subsampling: window {w} done")
    full_all = torch.cat(full_aopc)
    rows = []
    for s in strides:
        sub_all = torch.cat(sub_aopc[s])
        win_err = [abs(float(a.mean() - b.mean())) for a, b in zip(full_aopc, sub_aopc[s], strict=True)]
        rows.append({
            "stride": s, "forwards_fraction": len(evaluated_steps(steps, s)) / (steps + 1),
            "window_mean_abs_err": float(np.mean(win_err)), "window_max_abs_err": float(np.max(win_err)),
            "sample_mean_abs_err": float((sub_all - full_all).abs().mean()),
            "sample_p95_abs_err": float((sub_all - full_all).abs().quantile(0.95)),
            "seconds_window0": t_sub[s],
        })
    sem = [float(a.std() / np.sqrt(len(a))) for a in full_aopc]
    return {
        "rows": rows, "windows": n_windows, "window": window, "steps": steps, "region": region,
        "mean_window_aopc": float(np.mean([float(a.mean()) for a in full_aopc])),
        "sample_aopc_std": float(full_all.std()), "window_sem_mean": float(np.mean(sem)),
        "full_seconds_per_window": t_full / n_windows,
    }


# --------------------------------------------------------------------------------------------------
# CUDA benchmark


def regression_mean(y: torch.Tensor, z: torch.Tensor, keep: torch.Tensor) -> float:
    """Regression estimate of ``mean(y)`` over all samples from ``y`` seen on ``keep`` only, with the
    auxiliaries ``z`` ``(N, p)`` known for all: fit ``y ~ 1 + z`` on the subset, average the fit."""
    design = torch.cat([torch.ones(len(y), 1, dtype=z.dtype), z], 1)
    beta = torch.linalg.lstsq(design[keep], y[keep, None]).solution
    return float((design.mean(0) @ beta).squeeze())


def bench_random_subset(args) -> dict:
    """Error of ``RelevanceMonitor(random_fraction=f)``'s window ``aopc_minus_random`` against the full one.

    A sample's random-order AOPC depends only on ``(seed, sample id)`` (tested), so the monitor's
    subset estimate is exactly ``mean_window(AOPC_lrp) - mean_subset(AOPC_random)`` of the full run's
    per-sample values; the subsets are drawn here as the monitor draws them
    (``random_subset_hash(subset_seed, id) < f``) for several subset seeds.
    """
    from relmon.explain import explain_full, to_heatmap
    from relmon.lightning.monitor import random_subset_hash
    from relmon.perturbation import evaluate_heatmaps

    window, windows = 256, (2 if args.quick else 7)
    region, steps, seeds = 4, 49, range(8 if args.quick else 20)
    imgs, _ = load_sample()
    x = to_tensor(imgs[: window * windows])
    ids = [str(i) for i in range(x.shape[0])]
    model = load_embedded("fmnist_cnn")
    t0 = time.perf_counter()
    morf, rnd, score0 = [], [], []
    for b0 in range(0, x.shape[0], window):
        xb = x[b0:b0 + window]
        expl = explain_full(model, xb, "lrp")
        ev = evaluate_heatmaps(model, xb, to_heatmap(expl.relevance, expl.method), orders=("morf", "random"),
                               region=region, steps=steps, target=expl.target, clean_logits=expl.logits,
                               sample_ids=ids[b0:b0 + window])
        morf.append(ev.aopc.double())
        rnd.append(ev.aopc_random.double())
        score0.append(ev.results["morf"].score0.double())
    seconds = time.perf_counter() - t0
    m, r = torch.cat(morf).view(windows, window), torch.cat(rnd).view(windows, window)
    s0 = torch.cat(score0).view(windows, window)
    full = (m - r).mean(dim=1)  # the full computation's window AOPC - random (paired)
    sem_diff = float(((m - r).std(dim=1) / window**0.5).mean())
    sem_morf = float((m.std(dim=1) / window**0.5).mean())
    rows = []
    for fraction in (0.1, 0.25, 0.5):
        errs, errs_paired, errs_reg, sizes = [], [], [], []
        for seed in seeds:
            for w in range(windows):
                keep = torch.tensor([random_subset_hash(seed, ids[w * window + i]) < fraction for i in range(window)])
                sizes.append(int(keep.sum()))
                unpaired = m[w].mean() - r[w][keep].mean()
                paired = (m[w][keep] - r[w][keep]).mean()
                errs.append(float(unpaired - full[w]))
                errs_paired.append(float(paired - full[w]))
                errs_reg.append(float(m[w].mean() - regression_mean(r[w], torch.stack([m[w], s0[w]], 1), keep)
                                      - full[w]))
        e, ep = np.abs(errs), np.abs(errs_paired)
        rows.append({"fraction": fraction, "subset_mean_size": float(np.mean(sizes)),
                     "forwards_share": (1 + fraction) / 2,
                     "abs_err_mean": float(e.mean()), "abs_err_p95": float(np.quantile(e, 0.95)),
                     "abs_err_max": float(e.max()), "rmse": float(np.sqrt(np.mean(np.square(errs)))),
                     "paired_abs_err_mean": float(ep.mean()), "paired_rmse": float(np.sqrt(np.mean(np.square(errs_paired)))),
                     "regression_abs_err_mean": float(np.abs(errs_reg).mean()),
                     "regression_rmse": float(np.sqrt(np.mean(np.square(errs_reg))))})
        log(f"random_subset: {rows[-1]}")
    return {"window": window, "windows": windows, "region": region, "steps": steps, "subset_seeds": len(seeds),
            "mean_window_aopc_minus_random": float(full.mean()), "window_sem_aopc_minus_random": sem_diff,
            "window_sem_aopc": sem_morf, "random_aopc_std": float(r.std(dim=1).mean()),
            "seconds_full": seconds, "rows": rows}


def bench_cuda(args) -> dict:
    """ResNet-50 at 224x224 on CUDA; with ``--dry-run`` the same code on the CPU at tiny sizes (to know
    that it runs before a GPU machine is spent on it)."""
    dry = args.dry_run
    if not dry and not torch.cuda.is_available():
        msg = "CUDA is not available on this machine; skipping the ResNet-50 benchmark"
        log(msg)
        return {"skipped": msg}
    import torchvision

    device = torch.device("cpu" if dry else "cuda")
    torch.backends.cudnn.benchmark = True
    n = 2 if dry else 16 if args.quick else 64
    # bf16 convolutions are slow on CPUs without bf16 units: the dry run takes ResNet-18 at 32x32.
    steps, region, batch, size = (2, 16, 4, 32) if dry else (100, 9, args.cuda_batch, 224)
    arch = torchvision.models.resnet18 if dry else torchvision.models.resnet50
    model = arch(weights=None).eval().to(device).to(memory_format=torch.channels_last)
    attach_preprocessing(model, Preprocessing(mean=(0.485, 0.456, 0.406), std=(0.229, 0.224, 0.225)))
    lo, hi = input_bounds(model, 3)
    g = torch.Generator().manual_seed(0)
    x = (lo.view(1, 3, 1, 1) + (hi - lo).view(1, 3, 1, 1) * torch.rand(n, 3, size, size, generator=g)).to(device)
    heat = torch.randn(n, size, size, generator=g).to(device)  # cost does not depend on the heatmap
    items = n * (steps + 1)
    common = dict(region=region, steps=steps, autocast_dtype=torch.bfloat16, channels_last=True)
    fixed = dict(common, batch_size=batch, max_batch_bytes=64 * GiB)
    region_perturbation(model, x[:2], heat[:2], **fixed)  # warm-up (cudnn autotune)
    plain_forwards(model, x, 2 * batch, batch, device, torch.bfloat16, True)
    t_plain, t_aopc = [], []
    for _ in range(args.repeats):
        t_plain.append(plain_forwards(model, x, items, batch, device, torch.bfloat16, True))
        t_aopc.append(timed(lambda: region_perturbation(model, x, heat, **fixed), device))
    rows = {"overhead": {
        "gpu": "dry run on CPU" if dry else torch.cuda.get_device_name(device), "size": size, "n": n, "steps": steps, "region": region, "batch": batch,
        "items": items, "plain_s": min(t_plain), "aopc_s": min(t_aopc), "ratio": min(t_aopc) / min(t_plain),
        "forwards_per_s": items / min(t_aopc), "plain_forwards_per_s": items / min(t_plain),
    }}
    log(f"cuda overhead: {rows['overhead']}")
    mem = []
    for budget in (() if dry else (GiB, 4 * GiB)):
        torch.cuda.synchronize()
        torch.cuda.empty_cache()
        # untimed first call: with cudnn.benchmark every new chunk shape is autotuned once (an H200
        # took 2.1-2.2 s instead of 0.45 s when that was timed)
        region_perturbation(model, x, heat, max_batch_bytes=budget, **common)
        torch.cuda.synchronize()
        base = torch.cuda.memory_allocated(device)
        torch.cuda.reset_peak_memory_stats(device)
        t = timed(lambda b=budget: region_perturbation(model, x, heat, max_batch_bytes=b, **common), device)
        peak = torch.cuda.max_memory_allocated(device)
        with torch.inference_mode(), torch.autocast("cuda", dtype=torch.bfloat16):
            chunk = items_per_chunk(model, x[:1].contiguous(memory_format=torch.channels_last), budget)
        mem.append({"budget_mib": budget / MiB, "chunk_items": chunk, "peak_growth_mib": (peak - base) / MiB,
                    "seconds": t, "forwards_per_s": items / t})
        log(f"cuda memory: {mem[-1]}")
    rows["memory"] = mem
    rows["quantus"] = _cuda_quantus(model, x, heat, steps, region, batch, args)
    return rows


def _cuda_quantus(model, x, heat, steps, region, batch, args) -> dict:
    """Quantus RegionPerturbation vs relmon on the GPU, same images, heatmaps, steps and regions.

    Quantus evaluates one step of all images per forward; relmon packs (image, step) pairs into full
    batches. Quantus has no bf16 path, so relmon is timed both in float32 and with bf16 autocast.
    """
    try:
        import quantus
    except ImportError:
        msg = ("quantus is not importable here (on the GPU machines it must travel as wheels with its "
               "dependencies); skipping the Quantus comparison")
        log(msg)
        return {"skipped": msg}
    device = x.device
    n = 2 if args.dry_run else 8 if args.quick else 16
    xq, hq = x[:n].float().contiguous(), heat[:n]
    kwargs = dict(region=region, steps=steps, order="morf", perturbation="black", score="softmax",
                  batch_size=batch, max_batch_bytes=64 * GiB)
    res = region_perturbation(model, xq, hq, **kwargs)
    metric = quantus.RegionPerturbation(patch_size=region, order="morf", regions_evaluation=steps,
                                        perturb_baseline="black", abs=False, normalise=False,
                                        disable_warnings=True, display_progressbar=False)
    xn, yn, an = xq.cpu().numpy(), res.target.cpu().numpy(), hq.cpu().numpy()[:, None]

    def run_quantus():
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            return metric(model=model, x_batch=xn, y_batch=yn, a_batch=an, softmax=True, device=str(device),
                          batch_size=batch)

    drops = np.asarray(run_quantus())  # warm-up, and the agreement check at float32
    max_diff = float(np.abs(drops - res.drops[:, 1:].cpu().numpy()).max())
    bf16 = region_perturbation(model, xq, hq, autocast_dtype=torch.bfloat16, channels_last=True, **kwargs)
    max_diff_bf16 = float(np.abs(drops - bf16.drops[:, 1:].float().cpu().numpy()).max())
    t_q = min(timed(run_quantus, device) for _ in range(max(1, args.repeats - 1)))
    if args.dry_run:
        args.repeats = 1
    t_32 = min(timed(lambda: region_perturbation(model, xq, hq, **kwargs), device) for _ in range(args.repeats))
    t_bf = min(timed(lambda: region_perturbation(model, xq, hq, autocast_dtype=torch.bfloat16,
                                                 channels_last=True, **kwargs), device)
               for _ in range(args.repeats))
    row = {"n": n, "steps": steps, "region": region, "quantus_s": t_q, "relmon_fp32_s": t_32,
           "relmon_bf16_s": t_bf, "speedup_fp32": t_q / t_32, "speedup_bf16": t_q / t_bf,
           "max_abs_curve_diff_fp32": max_diff, "max_abs_curve_diff_bf16": max_diff_bf16,
           "quantus_version": getattr(quantus, "__version__", "?")}
    log(f"cuda quantus: {row}")
    return row


# --------------------------------------------------------------------------------------------------


def markdown(results: dict, argv: list[str]) -> str:
    cmd = "python benchmarks/bench_perturbation.py " + " ".join(argv)
    lines = [f"Command: `{cmd}`", f"Machine: {results['machine']}", ""]
    if "overhead" in results:
        lines += ["### Overhead vs plain forwards", "",
                  "| model | N | L | region | forwards | items/forward | plain s | AOPC s | ratio (min/min) |"
                  " ratio (median) | time outside model.forward / inside |", "|" + "---|" * 11]
        for r in results["overhead"]["rows"]:
            lines.append(f"| {r['model']} | {r['n']} | {r['steps']} | {r['region']} | {r['items']} | {r['batch']} | "
                         f"{r['plain_s']:.2f} | {r['aopc_s']:.2f} | {r['ratio']:.3f} | {r['ratio_median']:.3f} | "
                         f"{r['engine_share']:.3f} |")
        lines.append("")
    if "packing" in results:
        lines += ["### Packing: AOPC vs the same items in full batches", "",
                  "| model | input | N | L | region | items | items/forward | forwards relmon ran | plain s |"
                  " AOPC s | ratio (median) | ratio (min/min) | outside / inside model.forward |", "|" + "---|" * 13]
        for r in results["packing"]["rows"]:
            sizes = r["forward_sizes"]
            shown = f"{len(sizes)}: {sizes[0]} x {len(sizes) - 1} + {sizes[-1]}" if len(sizes) > 1 else str(sizes)
            lines.append(f"| {r['model']} | {r['input']} | {r['n']} | {r['steps']} | {r['region']} | {r['items']} | "
                         f"{r['chunk']} | {shown} | {r['plain_s']:.2f} | {r['aopc_s']:.2f} | {r['ratio_median']:.3f} | "
                         f"{r['ratio_min']:.3f} | {r['engine_share']:.3f} |")
        lines.append("")
    if "quantus" in results:
        q = results["quantus"]
        lines += ["### relmon vs Quantus RegionPerturbation", ""]
        if "skipped" in q:
            lines.append(q["skipped"])
        else:
            lines += ["| model | N | L | region | Quantus s | relmon s | speed-up | max abs curve diff |",
                      "|" + "---|" * 8]
            for r in q["rows"]:
                lines.append(f"| {r['model']} | {r['n']} | {r['steps']} | {r['region']} | {r['quantus_s']:.2f} | "
                             f"{r['relmon_s']:.2f} | {r['speedup']:.1f}x | {r['max_abs_curve_diff']:.1e} |")
        lines.append("")
    if "memory" in results:
        lines += ["### Peak memory (RSS growth in a fresh process)", "",
                  "| N | L | region | budget MiB | batch set by | items/forward | peak RSS growth MiB |"
                  " peak RSS MiB | s |", "|" + "---|" * 9]
        for r in results["memory"]["rows"]:
            by = "budget only" if r["budget_only"] else f"default (budget, CPU cap {CPU_MAX_ITEMS})"
            lines.append(f"| {r['n']} | {r['steps']} | {r['region']} | {r['budget_mib']:.0f} | {by} | "
                         f"{r['chunk_items']} | {r['peak_growth_mib']:.0f} | {r['peak_rss_mib']:.0f} | "
                         f"{r['seconds']:.1f} |")
        lines.append("")
    if "subsampling" in results:
        s = results["subsampling"]
        lines += ["### Step subsampling error", "",
                  f"{s['windows']} windows of {s['window']} images, L={s['steps']}, region {s['region']}; "
                  f"mean window AOPC {s['mean_window_aopc']:.3f}, per-sample AOPC std {s['sample_aopc_std']:.3f}, "
                  f"sampling standard error of a window mean {s['window_sem_mean']:.4f}; full run "
                  f"{s['full_seconds_per_window']:.1f} s per window.", "",
                  "| s | forwards (share of full) | window-mean abs err (mean / max) | per-sample abs err (mean / p95) |"
                  " s for window 0 |", "|" + "---|" * 5]
        for r in s["rows"]:
            lines.append(f"| {r['stride']} | {r['forwards_fraction']:.2f} | {r['window_mean_abs_err']:.4f} / "
                         f"{r['window_max_abs_err']:.4f} | {r['sample_mean_abs_err']:.4f} / "
                         f"{r['sample_p95_abs_err']:.4f} | {r['seconds_window0']:.1f} |")
        lines.append("")
    if "random_subset" in results:
        s = results["random_subset"]
        lines += ["### Random-order baseline on a subset (`random_fraction`)", "",
                  f"{s['windows']} windows of {s['window']} images, fmnist_cnn, LRP, region {s['region']}, L={s['steps']}, "
                  f"{s['subset_seeds']} subset seeds; mean window AOPC - random {s['mean_window_aopc_minus_random']:.3f}; "
                  f"sampling standard error of a window mean: AOPC - random {s['window_sem_aopc_minus_random']:.3f}, "
                  f"AOPC {s['window_sem_aopc']:.3f}; per-sample random-order AOPC std {s['random_aopc_std']:.3f}.", "",
                  "| fraction | subset size (mean) | forwards (share of full, 1 method) | abs err mean / p95 / max |"
                  " RMSE | paired-on-subset: abs err mean / RMSE | regression on (AOPC, f(x0)): abs err mean / RMSE |",
                  "|" + "---|" * 7]
        for r in s["rows"]:
            lines.append(f"| {r['fraction']} | {r['subset_mean_size']:.0f} | {r['forwards_share']:.3f} | "
                         f"{r['abs_err_mean']:.4f} / {r['abs_err_p95']:.4f} / {r['abs_err_max']:.4f} | {r['rmse']:.4f} | "
                         f"{r['paired_abs_err_mean']:.4f} / {r['paired_rmse']:.4f} | "
                         f"{r['regression_abs_err_mean']:.4f} / {r['regression_rmse']:.4f} |")
        lines.append("")
    if "cuda" in results:
        c = results["cuda"]
        lines += ["### CUDA: ResNet-50, 224x224, L=100, region 9, bf16 + channels-last"
                  + (" (DRY RUN on the CPU at tiny sizes: no figure to keep)" if c.get("overhead", {}).get("gpu")
                     == "dry run on CPU" else ""), ""]
        if "skipped" in c:
            lines.append(c["skipped"])
        else:
            lines.append("```json\n" + json.dumps(c, indent=1) + "\n```")
        lines.append("")
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> None:
    argv = sys.argv[1:] if argv is None else argv
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--quick", action="store_true", help="small sizes (about a minute on 2 CPU cores)")
    ap.add_argument("--device", choices=("cpu", "cuda"), default="cpu")
    ap.add_argument("--only", nargs="+", choices=CPU_BENCHES, help="CPU benchmarks to run (default: all)")
    ap.add_argument("--repeats", type=int, default=3)
    ap.add_argument("--threads", type=int, default=2, help="torch CPU threads")
    ap.add_argument("--batch", type=int, default=None,
                    help="items per forward for the CPU overhead benchmark (default: relmon's default)")
    ap.add_argument("--cuda-batch", type=int, default=256, help="items per forward for the CUDA benchmark")
    ap.add_argument("--dry-run", action="store_true",
                    help="with --device cuda: run the CUDA benchmark's code on the CPU at tiny sizes")
    ap.add_argument("--heatmap", choices=("gradient_x_input", "lrp"), default="gradient_x_input")
    ap.add_argument("--json", type=Path, help="also write the raw results here")
    ap.add_argument("--markdown", type=Path, help="also write the markdown section here")
    ap.add_argument("--memory-child", nargs=5, type=int, help=argparse.SUPPRESS)
    args = ap.parse_args(argv)
    torch.set_num_threads(args.threads)
    if args.memory_child:
        memory_child(*args.memory_child)
        return
    results: dict = {"machine": f"{platform.machine()} CPU, {os.cpu_count()} cores, torch {torch.__version__}, "
                                f"{args.threads} threads"}
    if args.device == "cuda":
        results["cuda"] = bench_cuda(args)
    else:
        for name in args.only or CPU_BENCHES:
            log(f"running {name} ...")
            results[name] = globals()[f"bench_{name}"](args)
    text = markdown(results, argv)
    print(text)
    if args.json:
        args.json.parent.mkdir(parents=True, exist_ok=True)
        args.json.write_text(json.dumps(results, indent=1))
    if args.markdown:
        args.markdown.parent.mkdir(parents=True, exist_ok=True)
        args.markdown.write_text(text)


if __name__ == "__main__":
    main()
