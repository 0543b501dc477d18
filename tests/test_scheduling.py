"""Chunk scheduling of the AOPC engine: every forward but the last holds exactly the chunk's items,
across sample boundaries; curves equal an independent step-by-step reference whatever the chunk;
f(x^(0)) is evaluated once per sample for all orders (or taken from the caller's logits)."""

from __future__ import annotations

import pytest
import torch
from torch import nn

from relmon.models import Preprocessing, attach_preprocessing, input_bounds
from relmon.perturbation import (
    _runs,
    evaluate_heatmaps,
    evaluated_steps,
    num_regions,
    perturb,
    rank_map,
    region_order,
    region_perturbation,
    region_scores,
    replacement_images,
)


def small_cnn(seed: int = 0) -> nn.Module:
    torch.manual_seed(seed)
    model = nn.Sequential(nn.Conv2d(2, 4, 3, padding=1), nn.ReLU(), nn.MaxPool2d(2), nn.Flatten(),
                          nn.Linear(4 * 6 * 5, 6))
    return attach_preprocessing(model.eval(), Preprocessing(mean=(0.5, 0.5), std=(0.25, 0.25), low=0.0, high=1.0))


class Counting(nn.Module):
    """Records the number of items of every forward."""

    def __init__(self, model: nn.Module):
        super().__init__()
        self.model = model
        self.sizes: list[int] = []
        self.relmon_preprocessing = model.relmon_preprocessing

    def forward(self, x):
        self.sizes.append(x.shape[0])
        return self.model(x)


def reference_curves(model, x, heat, *, region, steps, order, perturbation, seed, stride=1, score="logit"):
    """One forward per (sample, step), inputs built by the public step-by-step helpers."""
    b, c, h, w = x.shape
    ks = evaluated_steps(min(steps, num_regions(h, w, region)), stride).tolist()
    lo, hi = input_bounds(model, c)
    noise = replacement_images(x, perturbation, low=lo, high=hi, seed=seed)
    ranks = rank_map(region_order(region_scores(heat, region), order, seed=seed), h, w, region)
    out = torch.empty(b, len(ks))
    with torch.no_grad():
        for i in range(b):
            target = int(model(x[i:i + 1]).argmax())
            for j, k in enumerate(ks):
                logits = model(perturb(x[i:i + 1], ranks[i:i + 1], noise[i:i + 1], k))[0]
                out[i, j] = logits[target] if score == "logit" else torch.softmax(logits, 0)[target]
    return out


def data(b=5, seed=3):
    g = torch.Generator().manual_seed(seed)
    return torch.rand(b, 2, 12, 10, generator=g), torch.randn(b, 12, 10, generator=g)


@pytest.mark.parametrize("runs_args", [(0, 7, 3), (2, 11, 3), (5, 6, 4), (4, 20, 4), (1, 2, 1), (3, 40, 5)])
def test_runs_cover_the_items_once_in_order(runs_args):
    i0, i1, per = runs_args
    runs = _runs(i0, i1, per)
    assert len(runs) <= 3
    items = [b * per + j for b0, b1, j0, j1 in runs for b in range(b0, b1) for j in range(j0, j1)]
    assert items == list(range(i0, i1))


@pytest.mark.parametrize("chunk", [1, 4, 7, 12, 13, 14, 29, 64, 1000])
def test_curves_equal_step_by_step_reference_for_any_chunk(chunk):
    # region 3 on 12x10 -> 16 regions; L = 12 -> 13 items per curve, 5 curves = 65 items: chunks
    # smaller than a curve, equal to it, not dividing 65, and larger than everything.
    model = small_cnn()
    x, heat = data()
    kwargs = dict(region=3, steps=12, order="random", perturbation="uniform", seed=4)
    ref = reference_curves(model, x, heat, **kwargs)
    counted = Counting(model)
    res = region_perturbation(counted, x, heat, batch_size=chunk, **kwargs)
    torch.testing.assert_close(res.curves, ref, rtol=1e-6, atol=1e-6)
    sizes = counted.sizes[1:]  # the first forward is the one-item memory probe
    assert sum(sizes) == 5 * 13
    assert all(s == min(chunk, 65) for s in sizes[:-1]) and 0 < sizes[-1] <= chunk


@pytest.mark.parametrize("chunk", [3, 10, 17])
def test_stride_softmax_and_morf_match_reference(chunk):
    model = small_cnn(1)
    x, heat = data(4, seed=5)
    kwargs = dict(region=2, steps=23, order="morf", perturbation="blur", seed=0)
    ref = reference_curves(model, x, heat, stride=4, score="softmax", **kwargs)
    res = region_perturbation(model, x, heat, batch_size=chunk, step_stride=4, score="softmax", **kwargs)
    torch.testing.assert_close(res.curves[:, res.steps], ref, rtol=1e-6, atol=1e-6)


def test_clean_logits_skip_step_zero_and_give_the_same_curves():
    model = small_cnn(2)
    x, heat = data(6, seed=7)
    kwargs = dict(region=3, steps=9, order="morf", seed=2, batch_size=8)
    plain = region_perturbation(model, x, heat, **kwargs)
    counted = Counting(model)
    with torch.no_grad():
        logits = model(x)
    reused = region_perturbation(counted, x, heat, clean_logits=logits, **kwargs)
    assert sum(counted.sizes[1:]) == 6 * 9  # steps 1..9 only
    assert all(s == 8 for s in counted.sizes[1:-1])
    torch.testing.assert_close(reused.curves, plain.curves, rtol=1e-6, atol=1e-6)
    assert torch.equal(reused.target, plain.target)
    # A logit that is not the model's own moves step 0 only: the curve's column 0 is the caller's.
    shifted = logits.clone()
    shifted[torch.arange(6), plain.target] += 1.0
    moved = region_perturbation(model, x, heat, clean_logits=shifted, **kwargs)
    torch.testing.assert_close(moved.curves[:, 0], plain.curves[:, 0] + 1.0)
    torch.testing.assert_close(moved.curves[:, 1:], plain.curves[:, 1:], rtol=1e-6, atol=1e-6)
    with pytest.raises(ValueError, match=r"clean_logits must be \(B, classes\) = \(6, classes\)"):
        region_perturbation(model, x, heat, clean_logits=logits[:5], **kwargs)
    with pytest.raises(ValueError, match="target 9 is out of range for 6 classes"):
        region_perturbation(model, x, heat, clean_logits=logits, target=9, **kwargs)


def test_evaluate_heatmaps_evaluates_the_clean_input_once_for_all_orders():
    model = small_cnn(3)
    x, heat = data(5, seed=9)
    kwargs = dict(region=3, steps=9, seed=1, batch_size=16)
    counted = Counting(model)
    ev = evaluate_heatmaps(counted, x, heat, orders=("morf", "random", "lerf"), **kwargs)
    # probes excluded: 5 clean items, then 5 x 9 items per order
    items = [s for s in counted.sizes if s != 1]
    assert sum(items) == 5 + 3 * 5 * 9
    for order in ("morf", "random", "lerf"):
        res = ev.results[order]
        # usable in autograd afterwards: nothing returned is an inference-mode tensor
        assert not any(t.is_inference() for t in (res.curves, res.target, res.score0, res.aopc))
        alone = region_perturbation(model, x, heat, order=order, **kwargs)
        torch.testing.assert_close(ev.results[order].curves, alone.curves, rtol=1e-6, atol=1e-6)


# --------------------------------------------------------------------------------------------------
# start-up: what the light entry points import (benchmarks/bench_startup.py measures the time)


@pytest.mark.parametrize(("code", "absent"), [
    ("import relmon.export.metrics", ("torch", "torchmetrics", "scipy")),
    ("import relmon.cli; relmon.cli.main(['--help'])", ("torch", "torchmetrics", "zennit", "pytorch_lightning")),
])
def test_light_entry_points_import_no_torch(code, absent):
    import subprocess
    import sys
    from pathlib import Path

    root = Path(__file__).resolve().parents[1]
    probe = (f"import sys\ntry:\n    {code}\nexcept SystemExit:\n    pass\n"
             f"print('IMPORTED:' + ','.join(m for m in {absent!r} if m in sys.modules))")
    out = subprocess.run([sys.executable, "-c", probe], cwd=root, capture_output=True, text=True, timeout=300,
                         env={**__import__("os").environ, "PYTHONPATH": str(root)})
    assert out.returncode == 0, out.stderr
    assert out.stdout.strip().splitlines()[-1] == "IMPORTED:", out.stdout[-300:]
