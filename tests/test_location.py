"""Relevance-location features and shortcut-broken variants (relmon/location.py) on a model whose
answer is known by construction."""

from __future__ import annotations

import math

import pytest
import torch
from torch import nn

from relmon.explain import explain_full, to_heatmap
from relmon.location import location_features, shortcut_variant, suspect_mask
from relmon.preprocessing import Preprocessing, attach_preprocessing

RECT = [[2, 2, 2, 2]]  # a 2x2 suspect region of an 8x8 image


def _model() -> nn.Module:
    """Logit 0 = sum of the pixels in RECT, logit 1 = 2: an image bright in RECT is class 0."""
    lin = nn.Linear(64, 2)
    with torch.no_grad():
        lin.weight.zero_()
        lin.weight[0] = suspect_mask(RECT, 8, 8).flatten().float()
        lin.bias.copy_(torch.tensor([0.0, 2.0]))
    return attach_preprocessing(nn.Sequential(nn.Flatten(), lin).eval(), Preprocessing(0.0, 1.0))


def test_features_on_a_model_that_reads_only_the_suspect_region():
    model = _model()
    raw = torch.zeros(2, 1, 8, 8)
    raw[0, :, 2:4, 2:4] = 1.0  # class 0 from the region (logits 4 vs 2)
    raw[1, :, 6:8, 6:8] = 1.0  # class 1: nothing in the region (logits 0 vs 2)
    ex = explain_full(model, raw, "gradient_x_input")
    assert ex.target.tolist() == [0, 1]
    mask = suspect_mask(RECT, 8, 8)
    f = location_features(model, raw, to_heatmap(ex.relevance, ex.method), ex.target, mask, raw=raw)
    # sample 0: all its relevance (w * x) lies in the region; blanking it flips 0 -> 1
    assert f["suspect_share"][0] == 1.0 and f["rest_relevance"][0] == 0.0
    assert f["occlusion_flip"].tolist() == [1.0, 0.0]
    p0 = 1 / (1 + math.exp(-2))  # softmax([4, 2])[0]
    assert f["occlusion_drop"][0] == pytest.approx(p0 - (1 - p0), abs=1e-6)
    assert f["occlusion_drop"][1] == pytest.approx(0.0, abs=1e-6)  # nothing there to remove
    # sample 1 has no relevance at all for class 1 (constant logit): share and rest undefined
    assert math.isnan(f["suspect_share"][1]) and math.isnan(f["rest_relevance"][1])


def test_suspect_share_counts_only_positive_relevance():
    model = _model()
    raw = torch.zeros(1, 1, 8, 8)
    h = torch.zeros(1, 8, 8)
    h[0, 2, 2] = 3.0
    h[0, 0, 0] = 1.0
    h[0, 7, 7] = -2.0
    f = location_features(model, raw, h, torch.tensor([1]), suspect_mask(RECT, 8, 8), raw=raw)
    assert f["suspect_share"][0] == pytest.approx(0.75)
    assert f["rest_relevance"][0] == pytest.approx((1.0 - 2.0) / 2.0)


def test_variants_blank_or_swap_only_the_suspect_region():
    mask = suspect_mask(RECT, 8, 8)
    raw = torch.arange(5, dtype=torch.float32).view(5, 1, 1, 1).expand(5, 1, 8, 8) / 10
    removed = shortcut_variant(raw, mask, "remove")
    assert (removed[..., mask] == 0).all() and torch.equal(removed[..., ~mask], raw[..., ~mask])
    shuffled = shortcut_variant(raw, mask, "shuffle", seed=3)
    assert torch.equal(shuffled[..., ~mask], raw[..., ~mask])
    got = shuffled[:, 0, 2, 2]
    assert sorted(got.tolist()) == sorted(raw[:, 0, 2, 2].tolist())  # a permutation of the contents
    assert (got != raw[:, 0, 2, 2]).all()  # no image keeps its own
    with pytest.raises(ValueError, match="unknown shortcut variant 'swap'; choose one of remove, shuffle"):
        shortcut_variant(raw, mask, "swap")


def test_regions_are_validated():
    with pytest.raises(ValueError, match="suspect_regions is empty"):
        suspect_mask([], 8, 8)
    with pytest.raises(ValueError, match=r"region \[top, left, height, width\] = \[6, 6, 4, 4\] does not fit in a 8x8"):
        suspect_mask([[6, 6, 4, 4]], 8, 8)
    with pytest.raises(ValueError, match=r"a region is \[top, left, height, width\], got \[1, 2\]"):
        suspect_mask([[1, 2]], 8, 8)
