"""torchmetrics Metrics: values, NaN handling, and state merging as DDP would do it."""

from __future__ import annotations

import math

import pytest
import torch
from torch import nn

from relmon import complexity
from relmon.metrics import (
    AOPC,
    AOPC_RELATIVE_BUCKETS,
    AOPCHistogram,
    AOPCMinusRandom,
    CompressedSize,
    HeatmapEntropy,
    HeatmapGini,
    MeanCurve,
)
from relmon.perturbation import evaluate_heatmaps, region_perturbation


@pytest.fixture(scope="module")
def evaluations():
    torch.manual_seed(0)
    model = nn.Sequential(nn.Conv2d(1, 3, 3, padding=1), nn.ReLU(), nn.Flatten(), nn.Linear(3 * 64, 4)).eval()
    x, heat = torch.randn(10, 1, 8, 8), torch.randn(10, 8, 8)
    ev = evaluate_heatmaps(model, x, heat, region=2, steps=8, perturbation="constant")
    return ev, heat


def split_states(make, updates_a, updates_b):
    """Two 'ranks' updated on disjoint data, and one metric on all of it."""
    a, b, whole = make(), make(), make()
    for args in updates_a:
        a.update(*args)
        whole.update(*args)
    for args in updates_b:
        b.update(*args)
        whole.update(*args)
    return a, b, whole


def summed_state_copy(a, b, make):
    """What dist_reduce_fx='sum' produces: every state summed across the two ranks."""
    merged = make()
    for name in merged.metric_state:
        setattr(merged, name, getattr(a, name) + getattr(b, name))
    merged._update_count = 1
    return merged


def assert_same(x, y):
    if isinstance(x, dict):
        assert x.keys() == y.keys()
        for k in x:
            torch.testing.assert_close(x[k], y[k], equal_nan=True)
    else:
        torch.testing.assert_close(x, y, equal_nan=True)


CASES = {
    "aopc": (AOPC, lambda ev, h: [(ev.results["morf"],)], lambda ev, h: [(ev.aopc[:3],), (ev.aopc[3:],)]),
    "aopc_rel": (lambda: AOPC(field="aopc_rel"), lambda ev, h: [(ev,)], lambda ev, h: [(ev.aopc_rel[:2],)]),
    "minus_random": (AOPCMinusRandom, lambda ev, h: [(ev,)],
                     lambda ev, h: [(ev.results["morf"], ev.results["random"])]),
    "curve": (lambda: MeanCurve(8), lambda ev, h: [(ev.results["morf"],)],
              lambda ev, h: [(ev.results["lerf"].curves,)]),
    "drop_curve": (lambda: MeanCurve(8, drop=True), lambda ev, h: [(ev.results["morf"],)],
                   lambda ev, h: [(ev.results["lerf"],)]),
    "entropy": (HeatmapEntropy, lambda ev, h: [(h[:4],)], lambda ev, h: [(h[4:],)]),
    "gini": (HeatmapGini, lambda ev, h: [(h[:4],)], lambda ev, h: [(complexity.gini(h[4:]),)]),
    "png": (CompressedSize, lambda ev, h: [(h[:7],)], lambda ev, h: [(h[7:],)]),
    "jpeg": (lambda: CompressedSize("jpeg"), lambda ev, h: [(h[:1],)], lambda ev, h: [(h[1:],)]),
    "histogram": (AOPCHistogram, lambda ev, h: [(ev,)], lambda ev, h: [(torch.tensor([0.0, math.nan, 5.0]),)]),
}


@pytest.mark.parametrize("case", sorted(CASES))
def test_merged_states_equal_one_metric_on_all_data(case, evaluations):
    ev, heat = evaluations
    make, part_a, part_b = CASES[case]
    a, b, whole = split_states(make, part_a(ev, heat), part_b(ev, heat))
    expected = whole.compute()
    assert_same(summed_state_copy(a, b, make).compute(), expected)
    a.merge_state(b)  # torchmetrics' own merge (same reduction as the DDP sync)
    assert_same(a.compute(), expected)


def test_aopc_mean_is_over_samples_not_over_updates(evaluations):
    ev, _ = evaluations
    metric = AOPC()
    metric.update(ev.aopc[:1])
    metric.update(ev.aopc[1:])
    torch.testing.assert_close(metric.compute(), ev.aopc.double().mean())


def test_nan_values_are_counted_not_added():
    metric = AOPC(field="aopc_rel")
    metric.update(torch.tensor([1.0, math.nan, 3.0, math.inf]))
    assert metric.compute().item() == 2.0
    assert metric.count.item() == 2 and metric.nan_count.item() == 2
    empty = AOPC()
    with pytest.warns(UserWarning, match="before the ``update``"):
        assert math.isnan(empty.compute().item())


def test_aopc_minus_random_and_fields(evaluations):
    ev, _ = evaluations
    metric = AOPCMinusRandom()
    metric.update(ev)
    torch.testing.assert_close(metric.compute(), (ev.aopc - ev.aopc_random).double().mean())
    lerf = AOPC(field="abpc")
    lerf.update(ev)
    torch.testing.assert_close(lerf.compute(), ev.abpc.double().mean())
    with pytest.raises(ValueError, match="aopc_lerf"):
        AOPC(field="aopc_lerf").update(evaluate_heatmaps(
            nn.Sequential(nn.Flatten(), nn.Linear(16, 2)), torch.randn(2, 1, 4, 4), torch.randn(2, 4, 4),
            region=2, steps=2, perturbation="mean", orders=("morf",)))
    with pytest.raises(TypeError):
        AOPC().update([1.0, 2.0])


def test_mean_curve(evaluations):
    ev, _ = evaluations
    curve = MeanCurve(8)
    curve.update(ev.results["morf"])
    torch.testing.assert_close(curve.compute(), ev.results["morf"].curves.double().mean(dim=0))
    bad = ev.results["morf"].curves.clone()
    bad[0, 3] = math.nan
    curve = MeanCurve(8, drop=True)
    curve.update(bad)
    assert curve.nan_count.item() == 1 and curve.count.item() == 9
    torch.testing.assert_close(curve.compute()[0], torch.tensor(0.0, dtype=torch.float64))
    with pytest.raises(ValueError, match=r"\(B, 9\)"):
        MeanCurve(8).update(torch.zeros(2, 5))


def test_histogram_buckets_are_prometheus_le():
    assert list(AOPC_RELATIVE_BUCKETS) == sorted(set(AOPC_RELATIVE_BUCKETS))
    hist = AOPCHistogram(buckets=(0.0, 0.5, 1.0))
    hist.update(torch.tensor([-1.0, 0.0, 0.2, 0.5, 0.9, 1.0, 3.0, math.nan]))
    out = hist.compute()
    assert out["counts"].tolist() == [2, 2, 2, 1]  # v <= 0 | <= 0.5 | <= 1 | +Inf
    assert out["cumulative"].tolist() == [2, 4, 6, 7]
    assert out["count"].item() == 7 and out["nan_count"].item() == 1
    assert out["sum"].item() == pytest.approx(4.6)
    with pytest.raises(ValueError, match="increasing"):
        AOPCHistogram(buckets=(1.0, 0.5))


def test_result_fields_feed_metrics_directly():
    model = nn.Sequential(nn.Flatten(), nn.Linear(16, 3))
    res = region_perturbation(model, torch.randn(4, 1, 4, 4), torch.randn(4, 4, 4), region=2, steps=3,
                              perturbation="constant", score="softmax")
    hist = AOPCHistogram()
    hist.update(res)
    assert hist.count.item() == 4 and hist.nan_count.item() == 0  # softmax: aopc_rel always defined
