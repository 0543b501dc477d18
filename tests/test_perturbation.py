"""Region perturbation / AOPC: closed forms on a linear model, Quantus as an independent oracle,
and the invariances the engine promises (chunking, batch composition, seeds)."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch
from torch import nn

from relmon.models import MissingPreprocessingError, Preprocessing, attach_preprocessing
from relmon.perturbation import (
    DEFAULT_FRACTION,
    ORDERS,
    PERTURBATIONS,
    evaluate_heatmaps,
    evaluated_steps,
    items_per_chunk,
    num_regions,
    perturb,
    rank_map,
    region_index_map,
    region_order,
    region_perturbation,
    region_scores,
    replacement_images,
    steps_for_fraction,
)


def linear_model(weight: torch.Tensor) -> nn.Module:
    """``logit_c(x) = sum(weight[c] * x)``: a bias-free Linear layer over the flattened input."""
    classes = weight.shape[0]
    layer = nn.Linear(weight[0].numel(), classes, bias=False, dtype=weight.dtype)
    with torch.no_grad():
        layer.weight.copy_(weight.reshape(classes, -1))
    return nn.Sequential(nn.Flatten(), layer)


def tiny_cnn(channels: int = 1, size: int = 16, classes: int = 5, seed: int = 0) -> nn.Module:
    torch.manual_seed(seed)
    model = nn.Sequential(
        nn.Conv2d(channels, 4, 3, padding=1),
        nn.ReLU(),
        nn.MaxPool2d(2),
        nn.Flatten(),
        nn.Linear(4 * (size // 2) ** 2, classes),
    )
    model.eval()
    return attach_preprocessing(model, Preprocessing(mean=(0.5,), std=(0.25,), low=0.0, high=1.0))


def expected_linear_curves(w_t: torch.Tensor, x: torch.Tensor, noise: torch.Tensor, region: int, order: str,
                           steps: int):
    """Closed form: f(x^(k)) = f(x) - sum of the first k region scores of h = w_t * (x - noise)."""
    contrib = (w_t * (x - noise)).sum(dim=1)  # (B, H, W), exact heatmap of the linear model
    scores = region_scores(contrib, region)  # (B, R) score of region r = drop when r is replaced
    ordered = torch.sort(scores, dim=1, descending=(order == "morf"), stable=True).values
    f0 = (w_t * x).sum(dim=(1, 2, 3))
    drops = torch.cat([torch.zeros_like(f0)[:, None], ordered.cumsum(dim=1)[:, :steps]], dim=1)
    return f0[:, None] - drops, contrib


@pytest.mark.parametrize("perturbation", ["constant", "uniform"])
@pytest.mark.parametrize("order", ["morf", "lerf"])
def test_linear_model_closed_form(order, perturbation):
    g = torch.Generator().manual_seed(1)
    b, c, h, w, classes, region, steps = 5, 2, 10, 8, 3, 3, 9  # 4x3 grid with smaller last row/col
    weight = torch.randn(classes, c, h, w, generator=g, dtype=torch.float64)
    x = torch.randn(b, c, h, w, generator=g, dtype=torch.float64)
    model = linear_model(weight)
    target = torch.tensor([0, 1, 2, 0, 1])
    kwargs = dict(perturbation=perturbation, value=0.7, low=-2.0, high=2.0, seed=3)
    noise = replacement_images(x, perturbation, low=torch.full((c,), -2.0), high=torch.full((c,), 2.0),
                               value=0.7, seed=3)
    expected, heatmap = expected_linear_curves(weight[target], x, noise, region, order, steps)
    res = region_perturbation(model, x, heatmap, region=region, steps=steps, order=order, target=target, **kwargs)
    torch.testing.assert_close(res.curves, expected, rtol=0, atol=1e-12)
    aopc = (expected[:, :1] - expected).sum(dim=1) / (steps + 1)
    torch.testing.assert_close(res.aopc, aopc, rtol=0, atol=1e-12)
    torch.testing.assert_close(res.score0, expected[:, 0])
    f0 = expected[:, 0]
    torch.testing.assert_close(res.aopc_rel[f0 > 0], (aopc / f0)[f0 > 0])
    assert torch.isnan(res.aopc_rel[f0 <= 0]).all()


def test_linear_model_morf_above_random_above_lerf():
    g = torch.Generator().manual_seed(2)
    weight = torch.randn(4, 1, 12, 12, generator=g, dtype=torch.float64)
    x = torch.randn(6, 1, 12, 12, generator=g, dtype=torch.float64)
    model = linear_model(weight)
    target = (x.flatten(1) @ weight.flatten(1).T).argmax(dim=1)
    heatmap = (weight[target] * x).sum(dim=1)  # exact for the constant-0 baseline
    ev = evaluate_heatmaps(model, x, heatmap, region=3, steps=16, perturbation="constant", value=0.0)
    assert torch.equal(ev.results["random"].target, target) and torch.equal(ev.results["lerf"].target, target)
    # Greedy removal of the largest (smallest) additive contributions bounds every other order, step by step.
    assert (ev.results["morf"].curves <= ev.results["random"].curves + 1e-12).all()
    assert (ev.results["random"].curves <= ev.results["lerf"].curves + 1e-12).all()
    assert (ev.aopc_lerf <= ev.aopc).all() and (ev.aopc_minus_random >= 0).all()
    torch.testing.assert_close(ev.abpc, ev.aopc - ev.aopc_lerf)


@pytest.mark.parametrize(
    ("channels", "patch", "regions_evaluation", "order", "normalise"),
    [(1, 4, 16, "morf", False), (1, 4, 16, "lerf", False), (3, 2, 30, "morf", False), (3, 2, 30, "lerf", True)],
)
def test_equals_quantus_region_perturbation(monkeypatch, channels, patch, regions_evaluation, order, normalise):
    quantus = pytest.importorskip("quantus")
    if not hasattr(np, "trapz"):  # NumPy 2.4 removed it; Quantus' AUC helper still calls it.
        monkeypatch.setattr(np, "trapz", np.trapezoid, raising=False)
    model = tiny_cnn(channels=channels, size=16, classes=5, seed=4)
    g = torch.Generator().manual_seed(5)
    x = torch.randn(6, channels, 16, 16, generator=g)
    heatmap = torch.randn(6, channels, 16, 16, generator=g)
    res = region_perturbation(model, x, heatmap, region=patch, steps=regions_evaluation, order=order,
                              perturbation="black", score="softmax")
    metric = quantus.RegionPerturbation(
        patch_size=patch, order=order, regions_evaluation=regions_evaluation, perturb_baseline="black",
        abs=False, normalise=normalise, disable_warnings=True, display_progressbar=False,
    )
    # normalise=True divides by the positive max |a|: a positive scale that leaves the ranking alone.
    curves = metric(model=model, x_batch=x.numpy(), y_batch=res.target.numpy(), a_batch=heatmap.numpy(),
                    softmax=True, device="cpu", batch_size=64)
    oracle = torch.as_tensor(np.asarray(curves, dtype=np.float64))
    assert oracle.shape == (6, regions_evaluation)
    assert (res.drops[:, 1:].double() - oracle).abs().max().item() <= 1e-5


def _quantus_metric(quantus, monkeypatch, **kwargs):
    if not hasattr(np, "trapz"):  # NumPy 2.4 removed it; Quantus' AUC helper still calls it.
        monkeypatch.setattr(np, "trapz", np.trapezoid, raising=False)
    return quantus.RegionPerturbation(abs=False, normalise=False, disable_warnings=True,
                                      display_progressbar=False, **kwargs)


@pytest.mark.parametrize(("size", "patch", "regions_evaluation", "order"),
                         [(16, 4, 12, "morf"), (14, 3, 20, "morf"), (14, 3, 25, "lerf"), (11, 4, 9, "morf")])
def test_equals_quantus_uniform_noise_logit_score(monkeypatch, size, patch, regions_evaluation, order):
    """The paper's setting -- uniform noise, logit score -- against Quantus with the same noise image
    injected, on grids that divide the image and grids whose last row/column of cells is smaller."""
    quantus = pytest.importorskip("quantus")
    # Quantus pads a non-dividing image by (floor, ceil) of the missing pixels; with one missing pixel
    # that is (0, 1): its last cells are then one pixel short, as relmon's.
    assert size % patch in (0, patch - 1)
    model = tiny_cnn(channels=2, size=size - size % 2, classes=5, seed=4) if size % 2 == 0 else None
    if model is None:
        torch.manual_seed(4)
        model = nn.Sequential(nn.Conv2d(2, 3, 3, padding=1), nn.ReLU(), nn.Flatten(), nn.Linear(3 * size * size, 5))
        model = attach_preprocessing(model.eval(), Preprocessing(mean=(0.5,), std=(0.25,), low=0.0, high=1.0))
    g = torch.Generator().manual_seed(5)
    x = torch.randn(6, 2, size, size, generator=g)
    heatmap = torch.randn(6, 2, size, size, generator=g)
    res = region_perturbation(model, x, heatmap, region=patch, steps=regions_evaluation, order=order,
                              perturbation="uniform", score="logit", seed=7)
    noise = replacement_images(x, "uniform", low=torch.full((2,), -2.0), high=torch.full((2,), 2.0), seed=7)
    pad = (-size) % patch
    noise_pad = np.pad(noise.numpy(), ((0, 0), (0, 0), (0, pad), (0, pad)), mode="edge").reshape(6, -1)

    def inject(arr, indices, **_):  # Quantus' perturb_func: replace the indexed pixels by the same noise
        out = arr.copy()
        rows = np.arange(arr.shape[0])[:, None]
        out[rows, indices] = noise_pad[rows, indices]
        return out

    metric = _quantus_metric(quantus, monkeypatch, patch_size=patch, order=order,
                             regions_evaluation=regions_evaluation, perturb_func=inject)
    curves = metric(model=model, x_batch=x.numpy(), y_batch=res.target.numpy(), a_batch=heatmap.numpy(),
                    softmax=False, device="cpu", batch_size=64)
    oracle = torch.as_tensor(np.asarray(curves, dtype=np.float64))
    assert oracle.shape == (6, min(regions_evaluation, num_regions(size, size, patch)))
    assert (res.drops[:, 1:].double() - oracle).abs().max().item() <= 1e-5


def test_morf_and_random_orders_share_each_samples_noise_image():
    model = tiny_cnn()
    g = torch.Generator().manual_seed(13)
    x, heat = torch.randn(4, 1, 16, 16, generator=g), torch.randn(4, 16, 16, generator=g)
    ev = evaluate_heatmaps(model, x, heat, region=4, fraction=1.0, seed=5, orders=("morf", "random", "lerf"))
    # With every region replaced, each order ends on the same image: the sample's own noise.
    noise = replacement_images(x, "uniform", low=torch.full((1,), -2.0), high=torch.full((1,), 2.0), seed=5)
    on_noise = model(noise).gather(1, ev.results["morf"].target[:, None]).squeeze(1).detach()
    for order in ("morf", "random", "lerf"):
        torch.testing.assert_close(ev.results[order].curves[:, -1], on_noise, rtol=1e-5, atol=1e-5)
    # ... and the orders differ in between (so the test above is not one order three times).
    assert not torch.allclose(ev.results["morf"].curves[:, 1:-1], ev.results["random"].curves[:, 1:-1])


def test_fraction_gives_the_papers_share_of_regions():
    # 28x28: 49 regions of 4x4, 196 of 2x2; halves round up.
    assert steps_for_fraction(28, 28, 4, 0.16) == 8 and steps_for_fraction(28, 28, 4, 1.0) == 49
    assert steps_for_fraction(28, 28, 2, 0.16) == 31 and steps_for_fraction(28, 28, 2, 1.0) == 196
    assert steps_for_fraction(10, 10, 5, 0.125) == 1 and steps_for_fraction(10, 10, 5, 0.01) == 1  # at least 1
    assert steps_for_fraction(4, 4, 2, 0.625) == 3  # 2.5 rounds up
    # the paper: 9x9 regions, L = 100 on 227x227 (26x26 = 676 regions, the last ones smaller) is ~15 %
    assert abs(steps_for_fraction(227, 227, 9, DEFAULT_FRACTION) - 100) <= 10
    model = tiny_cnn()
    g = torch.Generator().manual_seed(14)
    x, heat = torch.randn(2, 1, 16, 16, generator=g), torch.randn(2, 16, 16, generator=g)
    default = region_perturbation(model, x, heat, region=2)  # 64 regions: 0.16 * 64 = 10.24 -> 10
    assert default.num_steps == 10
    by_steps = region_perturbation(model, x, heat, region=2, steps=10)
    both = region_perturbation(model, x, heat, region=2, steps=10, fraction=0.16)
    torch.testing.assert_close(default.curves, by_steps.curves, rtol=0, atol=0)
    torch.testing.assert_close(both.curves, by_steps.curves, rtol=0, atol=0)
    full = region_perturbation(model, x, heat, region=2, fraction=1.0)
    assert full.num_steps == 64
    torch.testing.assert_close(full.curves[:, :11], default.curves, rtol=1e-6, atol=1e-6)  # a prefix
    with pytest.raises(ValueError, match=r"steps=12 and fraction=0.16 disagree: .* 64 regions of 2x2 .* L = 10; "
                                         "pass only one of them"):
        region_perturbation(model, x, heat, region=2, steps=12, fraction=0.16)
    for bad in (0, 1.5, -0.1, float("nan"), "0.1", True):
        with pytest.raises(ValueError, match=r"fraction must be a number in \(0, 1\]"):
            region_perturbation(model, x, heat, region=2, fraction=bad)


def test_region_grid_and_scores_non_multiple():
    idx = region_index_map(10, 7, 4)
    assert idx.shape == (10, 7) and idx.max().item() == num_regions(10, 7, 4) - 1 == 5
    assert idx[0, 0] == 0 and idx[0, 4] == 1 and idx[4, 0] == 2 and idx[9, 6] == 5
    heat = torch.randn(2, 3, 10, 7)
    scores = region_scores(heat, 4)
    summed = heat.sum(dim=1)
    for r in range(6):  # reference: explicit sum over the pixels of each (possibly smaller) region
        torch.testing.assert_close(scores[:, r], (summed * (idx == r)).sum(dim=(1, 2)))


def test_ties_break_by_region_index():
    scores = torch.tensor([[1.0, 2.0, 2.0, 0.0, 2.0, 1.0]])
    assert region_order(scores, "morf").tolist() == [[1, 2, 4, 0, 5, 3]]
    assert region_order(scores, "lerf").tolist() == [[3, 0, 5, 1, 2, 4]]
    flat = torch.zeros(1, 5)
    assert region_order(flat, "morf").tolist() == region_order(flat, "lerf").tolist() == [[0, 1, 2, 3, 4]]


def test_rank_map_drives_cumulative_perturbation():
    heat = torch.arange(16.0).reshape(1, 4, 4)  # 2x2 regions scored 10, 18, 42, 50
    ranks = rank_map(region_order(region_scores(heat, 2), "morf"), 4, 4, 2)
    assert ranks[0, 3, 3] == 0 and ranks[0, 0, 0] == 3
    x = torch.ones(1, 1, 4, 4)
    noise = torch.zeros_like(x)
    assert perturb(x, ranks, noise, 0).sum() == 16 and perturb(x, ranks, noise, 1).sum() == 12
    assert perturb(x, ranks, noise, 4).sum() == 0
    assert perturb(x, ranks, noise, 1)[0, 0, 2:, 2:].sum() == 0


def test_steps_at_most_the_regions_and_subsampling():
    model = tiny_cnn()
    g = torch.Generator().manual_seed(6)
    x, heat = torch.randn(3, 1, 16, 16, generator=g), torch.randn(3, 16, 16, generator=g)
    # one rule for every runner (resolve_steps): more steps than regions is an error, never capped
    with pytest.raises(ValueError, match=r"steps=100 exceeds the 4 regions of a 16x16 image at region=8; "
                                         r"choose steps <= 4"):
        region_perturbation(model, x, heat, region=8, steps=100)
    every = region_perturbation(model, x, heat, region=8, steps=4)
    assert every.curves.shape == (3, 5) and every.num_steps == 4
    full = region_perturbation(model, x, heat, region=2, steps=20)
    same = region_perturbation(model, x, heat, region=2, steps=20, step_stride=1)
    torch.testing.assert_close(full.curves, same.curves, rtol=0, atol=0)
    sub = region_perturbation(model, x, heat, region=2, steps=20, step_stride=3)
    assert sub.steps.tolist() == [0, 3, 6, 9, 12, 15, 18, 20] == evaluated_steps(20, 3).tolist()
    torch.testing.assert_close(sub.curves[:, sub.steps], full.curves[:, sub.steps])
    # Trapezoid rule: skipped steps lie on the line between their evaluated neighbours.
    torch.testing.assert_close(sub.curves[:, 4], (2 * full.curves[:, 3] + full.curves[:, 6]) / 3)
    torch.testing.assert_close(sub.curves[:, 19], (full.curves[:, 18] + full.curves[:, 20]) / 2)
    assert (sub.aopc - full.aopc).abs().max() < 0.5 * full.aopc.abs().max() + 1e-6


def test_chunking_does_not_change_results():
    model = tiny_cnn()
    g = torch.Generator().manual_seed(7)
    x, heat = torch.randn(5, 1, 16, 16, generator=g), torch.randn(5, 16, 16, generator=g)
    kwargs = dict(region=2, steps=13, order="random", seed=11)
    huge = region_perturbation(model, x, heat, max_batch_bytes=2**34, **kwargs)
    tiny = region_perturbation(model, x, heat, max_batch_bytes=1, **kwargs)  # one item per forward
    split = region_perturbation(model, x, heat, batch_size=9, **kwargs)  # blocks split a 14-step curve
    pairs = region_perturbation(model, x, heat, batch_size=30, **kwargs)  # two whole curves per forward
    assert items_per_chunk(model, x[:1], max_batch_bytes=1) == 1
    assert items_per_chunk(model, x[:1], max_batch_bytes=2**34) >= 5 * 14
    for other in (tiny, split, pairs):
        torch.testing.assert_close(other.curves, huge.curves, rtol=1e-6, atol=1e-6)
        assert torch.equal(other.target, huge.target)


def test_seed_reproducibility_and_batch_independence():
    model = tiny_cnn()
    g = torch.Generator().manual_seed(8)
    x, heat = torch.randn(6, 1, 16, 16, generator=g), torch.randn(6, 16, 16, generator=g)
    kwargs = dict(region=4, steps=16, order="random", perturbation="uniform")
    a = region_perturbation(model, x, heat, seed=1, **kwargs)
    b = region_perturbation(model, x, heat, seed=1, **kwargs)
    c = region_perturbation(model, x, heat, seed=2, **kwargs)
    torch.testing.assert_close(a.curves, b.curves, rtol=0, atol=0)
    assert not torch.allclose(a.curves[:, 1:], c.curves[:, 1:])
    alone = region_perturbation(model, x[3:4], heat[3:4], seed=1, sample_ids=[3], **kwargs)
    torch.testing.assert_close(alone.curves[0], a.curves[3], rtol=1e-6, atol=1e-6)
    tail = region_perturbation(model, x[2:], heat[2:], seed=1, offset=2, **kwargs)
    torch.testing.assert_close(tail.curves, a.curves[2:], rtol=1e-6, atol=1e-6)
    named = region_perturbation(model, x[:2], heat[:2], seed=1, sample_ids=["a.png", "b.png"], **kwargs)
    named2 = region_perturbation(model, x[:2].flip(0), heat[:2].flip(0), seed=1,
                                 sample_ids=["b.png", "a.png"], **kwargs)
    torch.testing.assert_close(named.curves, named2.curves.flip(0), rtol=1e-6, atol=1e-6)


def test_uniform_noise_is_drawn_once_per_sample_within_bounds():
    x = torch.zeros(3, 2, 6, 6)
    lo, hi = torch.tensor([-1.0, 2.0]), torch.tensor([0.0, 5.0])
    noise = replacement_images(x, "uniform", low=lo, high=hi, seed=0)
    assert noise[:, 0].min() >= -1 and noise[:, 0].max() <= 0 and noise[:, 1].min() >= 2 and noise[:, 1].max() <= 5
    again = replacement_images(x[1:2], "uniform", low=lo, high=hi, seed=0, sample_ids=[1])
    assert torch.equal(noise[1:2], again)
    assert not torch.equal(noise[0], noise[1])


def test_deterministic_replacements():
    g = torch.Generator().manual_seed(9)
    x = torch.randn(2, 3, 8, 8, generator=g)
    assert (replacement_images(x, "constant", value=0.25) == 0.25).all()
    torch.testing.assert_close(replacement_images(x, "mean")[:, :, 3, 5], x.mean(dim=(2, 3)))
    black = replacement_images(x, "black")
    torch.testing.assert_close(black[:, 1, 2, 2], x.flatten(1).min(dim=1).values)
    const = torch.full((1, 1, 8, 8), 3.0)
    torch.testing.assert_close(replacement_images(const, "blur", sigma=1.5), const)
    blurred = replacement_images(x, "blur", sigma=1.0)
    assert blurred.shape == x.shape and blurred.std() < x.std()


def test_uniform_bounds_from_model_or_error():
    model = tiny_cnn()
    x, heat = torch.randn(2, 1, 16, 16), torch.randn(2, 16, 16)
    explicit = region_perturbation(model, x, heat, region=4, steps=4, low=-2.0, high=2.0)
    declared = region_perturbation(model, x, heat, region=4, steps=4)  # (0 - .5)/.25 .. (1 - .5)/.25
    torch.testing.assert_close(explicit.curves, declared.curves)
    bare = nn.Sequential(nn.Flatten(), nn.Linear(256, 3))
    with pytest.raises(MissingPreprocessingError, match="low="):
        region_perturbation(bare, x, heat, region=4, steps=4)


def test_target_and_softmax_score():
    model = tiny_cnn()
    g = torch.Generator().manual_seed(10)
    x, heat = torch.randn(4, 1, 16, 16, generator=g), torch.randn(4, 16, 16, generator=g)
    logits = model(x)
    res = region_perturbation(model, x, heat, region=4, steps=8, score="softmax", target=2)
    assert (res.target == 2).all()
    torch.testing.assert_close(res.score0, logits.softmax(dim=1)[:, 2].detach())
    assert not torch.isnan(res.aopc_rel).any()
    assert (res.curves >= 0).all() and (res.curves <= 1).all()
    pred = region_perturbation(model, x, heat, region=4, steps=8)
    assert torch.equal(pred.target, logits.argmax(dim=1))
    torch.testing.assert_close(pred.score0, logits.max(dim=1).values.detach())


def test_model_mode_is_restored_and_eval_used():
    model = nn.Sequential(nn.Flatten(), nn.Linear(64, 8), nn.Dropout(0.5), nn.ReLU(), nn.Linear(8, 3))
    model.train()
    model[2].eval()
    x, heat = torch.randn(3, 1, 8, 8), torch.randn(3, 8, 8)
    a = region_perturbation(model, x, heat, region=2, steps=5, perturbation="mean")
    model[2].train()  # Dropout active in train mode: eval mode during evaluation makes runs agree
    b = region_perturbation(model, x, heat, region=2, steps=5, perturbation="mean")
    torch.testing.assert_close(a.curves, b.curves)
    assert model.training and model[2].training
    model[2].eval()
    region_perturbation(model, x, heat, region=2, steps=5, perturbation="mean")
    assert model.training and not model[2].training and model[1].training


def test_channels_last_and_autocast_options():
    model = tiny_cnn(channels=3)
    g = torch.Generator().manual_seed(12)
    x, heat = torch.randn(2, 3, 16, 16, generator=g), torch.randn(2, 16, 16, generator=g)
    ref = region_perturbation(model, x, heat, region=4, steps=6, perturbation="blur")
    cl = region_perturbation(model, x, heat, region=4, steps=6, perturbation="blur", channels_last=True)
    torch.testing.assert_close(cl.curves, ref.curves, rtol=1e-5, atol=1e-5)
    bf = region_perturbation(model, x, heat, region=4, steps=6, perturbation="blur", autocast_dtype=torch.bfloat16)
    assert bf.curves.dtype == torch.float32
    torch.testing.assert_close(bf.curves, ref.curves, rtol=0.05, atol=0.1)


def test_clear_errors():
    model = tiny_cnn()
    x, heat = torch.randn(2, 1, 16, 16), torch.randn(2, 16, 16)
    with pytest.raises(ValueError, match="does not match input shape"):
        region_perturbation(model, x, torch.randn(2, 15, 16))
    with pytest.raises(ValueError, match="does not match input shape"):
        region_perturbation(model, x, torch.randn(3, 16, 16))
    with pytest.raises(ValueError, match="larger than the image"):
        region_perturbation(model, x, heat, region=17)
    with pytest.raises(ValueError, match="steps"):
        region_perturbation(model, x, heat, region=4, steps=0)
    with pytest.raises(ValueError, match="unknown order 'mrf'; known: " + ", ".join(ORDERS)):
        region_perturbation(model, x, heat, region=4, order="mrf")
    with pytest.raises(ValueError, match="unknown perturbation 'noise'; known: " + ", ".join(PERTURBATIONS)):
        region_perturbation(model, x, heat, region=4, perturbation="noise")
    bad = x.clone()
    bad[1, 0, 3, 3] = math.nan
    with pytest.raises(ValueError, match="non-finite"):
        region_perturbation(model, bad, heat, region=4)
    bad_heat = heat.clone()
    bad_heat[0, 0, 0] = math.inf
    with pytest.raises(ValueError, match="non-finite"):
        region_perturbation(model, x, bad_heat, region=4)
    with pytest.raises(ValueError, match="step_stride"):
        region_perturbation(model, x, heat, region=4, step_stride=0)
    with pytest.raises(ValueError, match="sample_ids"):
        region_perturbation(model, x, heat, region=4, sample_ids=[1])
    with pytest.raises(ValueError, match="out of range"):
        region_perturbation(model, x, heat, region=4, steps=2, target=7)
    with pytest.raises(ValueError, match="orders"):
        evaluate_heatmaps(model, x, heat, region=4, orders=("morf", "morf"))
