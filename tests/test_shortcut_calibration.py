"""Issue 19 item 3, end to end: ``shortcut_variants`` calibration windows, the shortcut-aware estimators
fitted on them, and the "unexplained shift" gate in the monitor (summary, --json, metric, headline).

The model is built in the test so its behaviour is known: a linear classifier of 16x16 images whose
logit for class ``c`` is 3 x the pixel sum of class ``c``'s marker square (the planted cue of
:mod:`relmon.data.shortcuts`) plus the pixel sum of class ``c``'s "content" square. A right cue makes
it right, a wrong cue wrong, and without a cue it reads the (noisy) content.
"""

from __future__ import annotations

import json

import numpy as np
import pytest
import torch
from torch import nn

from relmon.config import ConfigError, MonitorConfig, config_from_dict
from relmon.data.labelled import from_tensors
from relmon.data.shortcuts import cue_regions, marker_box
from relmon.data.streams import TensorStream
from relmon.jobs.calibrate_job import calibrate_model, plan_windows
from relmon.jobs.monitor import MonitorJob
from relmon.jobs.shortcut_windows import break_shortcut
from relmon.location import suspect_mask
from relmon.preprocessing import Preprocessing, attach_preprocessing

K, S = 4, 16  # classes, image side
CONTENT = [(8, 1 + 4 * c, 3, 3) for c in range(K)]  # class c's content square (rows 8..10)


def cue_model() -> nn.Module:
    lin = nn.Linear(S * S, K, bias=False)
    with torch.no_grad():
        lin.weight.zero_()
        for c in range(K):
            lin.weight[c] += 3.0 * suspect_mask([list(marker_box(c, S, S))], S, S).flatten().float()
            lin.weight[c] += suspect_mask([list(CONTENT[c])], S, S).flatten().float()
    return attach_preprocessing(nn.Sequential(nn.Flatten(), lin).eval(), Preprocessing(0.0, 1.0))


def images(n: int, seed: int, cue: float = 0.9, all_markers: bool = False):
    """``n`` images: noisy content squares (the true class's brighter), and the true class's marker in
    a share ``cue`` of them (``all_markers``: every class's marker lit and no content in every image)."""
    g = torch.Generator().manual_seed(seed)
    y = torch.randint(0, K, (n,), generator=g)
    x = torch.rand(n, 1, S, S, generator=g) * 0.05
    for c in range(K):
        t, left, h, w = CONTENT[c]
        x[:, :, t:t + h, left:left + w] = torch.rand(n, 1, 1, 1, generator=g) * 0.5
    for i in range(n):
        t, left, h, w = CONTENT[int(y[i])]
        x[i, :, t:t + h, left:left + w] += 0.25
        if all_markers:  # and no content: every class equally likely
            for c in range(K):
                t, left, h, w = CONTENT[c]
                x[i, :, t:t + h, left:left + w] = 0.0
                t, left, h, w = marker_box(c, S, S)
                x[i, :, t:t + h, left:left + w] = 1.0
        elif torch.rand(1, generator=g).item() < cue:
            t, left, h, w = marker_box(int(y[i]), S, S)
            x[i, :, t:t + h, left:left + w] = 1.0
    return x.clamp(0, 1), y


def config(**extra) -> MonitorConfig:
    values = dict(methods=["gradient_x_input"], region=4, steps=2, calibration_n=80, seed=3,
                  calibration_shifts=["gaussian_noise"], calibration_severities=[3],
                  # one candidate, so the pre-shortcut default (the gate's fallback) is known: doc
                  estimators=["doc"],
                  suspect_regions=cue_regions("marker", S, S, K), shortcut_variants=["remove", "shuffle"],
                  shortcut_shares=[0.5, 1.0])
    values.update(extra)
    return config_from_dict(values)


@pytest.fixture(scope="module")
def calibrated():
    x, y = images(480, seed=0)
    model = cue_model()
    cal = calibrate_model(model, from_tensors(x, y), config())
    return model, cal


def test_variant_windows_exist_with_their_shares_and_ordered_accuracies(calibrated):
    """Mutation checked: applying the variant to every image whatever the share (k = len(raw) in
    break_shortcut) makes shortcut_shuffle/0.5 as bad as shortcut_shuffle/1 and fails the ordering."""
    _, cal = calibrated
    names = ["shortcut_remove/0.5", "shortcut_remove/1", "shortcut_shuffle/0.5", "shortcut_shuffle/1"]
    assert cal.meta["windows"] == ["clean", "gaussian_noise/3", *names]
    acc = cal.meta["window_accuracy"]
    assert set(names) <= set(acc)
    # the cue is right on ~90 % of the clean images; swapped cues mostly point elsewhere; blanked cues
    # leave the noisy content: every break lowers the accuracy, more of it lowers it more
    assert acc["clean"] > acc["shortcut_shuffle/0.5"] + 0.15 > acc["shortcut_shuffle/1"] + 0.3
    assert acc["clean"] > acc["shortcut_remove/0.5"] > acc["shortcut_remove/1"]
    assert acc["shortcut_shuffle/1"] < acc["shortcut_remove/1"]  # a wrong cue is worse than none
    assert cal.meta["shortcut_variants"] == ["remove", "shuffle"] and cal.meta["shortcut_shares"] == [0.5, 1.0]
    # the shortcut-aware estimators were fitted with the selection's default as their fallback, and
    # location_regression is the default; the gate is stored
    assert {"location_regression", "location_regression_local"} <= set(cal.estimators)
    before = cal.meta["validation"]["default_before_shortcut"]
    assert cal.meta["default_estimator"] == "location_regression" and before == "doc"
    assert cal.estimators["location_regression"].fallback == before
    # that selection saw the windows a calibration without shortcut_variants has (here one shift type,
    # so "first candidate"), not the shortcut windows (mutation checked: selecting on every window
    # validates over three shift types and fails this)
    assert "before: first candidate (fewer than 2 shift types)" in cal.meta["validation"]["chosen_by"]
    gate = cal.meta["unexplained_shift_gate"]
    # the gate falls back to that pre-shortcut default (ATC erred 0.5 on contrast windows: docs/shortcuts.md)
    assert gate["fallback"] == before and "occlusion_flip_mean" in gate["features"]


def test_break_shortcut_changes_the_stated_share_reproducibly():
    x, _ = images(40, seed=5)
    mask = suspect_mask(cue_regions("marker", S, S, K), S, S)
    for variant in ("remove", "shuffle"):
        a = break_shortcut(x, mask, variant, 0.25, seed=9)
        assert torch.equal(a, break_shortcut(x, mask, variant, 0.25, seed=9))
        changed = (a != x).flatten(1).any(1)
        assert int(changed.sum()) <= 10  # round(0.25 x 40); an image may keep identical pixels
        assert torch.equal(a[..., ~mask], x[..., ~mask])  # only the suspect regions change
    assert int((break_shortcut(x, mask, "remove", 0.25, seed=9)[..., mask] == 0).flatten(1).all(1).sum()) == 10


def test_the_windows_count_in_the_calibration_size_warning():
    cfg = config()
    windows, n, reused = plan_windows(cfg, 6 * 80)
    assert len(windows) == 6 and not reused
    with pytest.warns(UserWarning, match=r"80 x 6 = 480"):
        plan_windows(cfg, 300)


def test_config_errors():
    with pytest.raises(ConfigError, match=r"shortcut_variants \['shuffle'\].*suspect_regions is not set"):
        config_from_dict({"shortcut_variants": ["shuffle"]})
    with pytest.raises(ConfigError, match=r"'shortcut_variants'.*'blur' is not a shortcut variant"):
        config_from_dict({"shortcut_variants": ["blur"]})
    with pytest.raises(ConfigError, match=r"'shortcut_shares'.*is not a share in \(0, 1\]"):
        config_from_dict({"shortcut_shares": [0.5, 0]})
    with pytest.raises(ConfigError, match=r"'shortcut_shares'.*listed twice"):
        config_from_dict({"shortcut_shares": [0.5, 0.5]})
    assert MonitorConfig().shortcut_variants == ()  # off by default
    x, y = images(8, seed=1)
    cfg = config_from_dict({"estimators": ["atc", "location_regression"], "methods": ["gradient_x_input"]})
    with pytest.raises(ConfigError, match=r"\['location_regression'\] learn from the shortcut calibration windows"):
        calibrate_model(cue_model(), from_tensors(x, y), cfg)


def _monitor(model, cal, x, registry=None):
    stream = TensorStream(x, ids=[f"m{i}" for i in range(len(x))], preprocessing=Preprocessing(0.0, 1.0))
    job = MonitorJob(config(), model=model, calibration=cal, stream=stream, registry=registry)
    summary, _ = job.compute()
    return job, summary


def test_gate_in_the_monitor_fires_outside_and_not_inside(calibrated):
    """Mutations checked: a gate margin of 50 (UnexplainedShiftGate.fit(..., margin=50) in calibrate_job)
    keeps the all-markers window inside and fails this test; the old ATC fallback (no ``fallback=`` in
    calibrate_job; ATC not fitted, so average_confidence) puts another estimator than the pre-shortcut
    default ``doc`` in the headline and fails it."""
    model, cal = calibrated
    x_in, _ = images(80, seed=21)
    job, inside = _monitor(model, cal, x_in)
    assert inside.unexplained_shift["checked"] and not inside.unexplained_shift["fired"]
    assert inside.headline["estimator"] == cal.meta["default_estimator"]
    assert job.registry.get_sample_value("relmon_unexplained_shift", job.metrics.base) == 0.0
    # every class's marker lit in every image: a window no calibration window resembles
    x_out, _ = images(80, seed=22, all_markers=True)
    job, outside = _monitor(model, cal, x_out)
    gate = outside.unexplained_shift
    assert gate["fired"] and gate["outside"], gate
    before = cal.meta["validation"]["default_before_shortcut"]
    assert before == "doc"  # neither atc nor average_confidence: the old ATC fallback would show
    assert outside.headline["estimator"] == before and outside.headline["fallback"]
    assert outside.headline["estimate"] == pytest.approx(outside.estimates[before][0])
    assert outside.headline["reason"].startswith("unexplained shift:")
    assert job.registry.get_sample_value("relmon_unexplained_shift", job.metrics.base) == 1.0
    doc = json.loads(json.dumps(outside.to_dict()))  # what --json prints
    assert doc["unexplained_shift"]["fired"] is True
    assert "UNEXPLAINED SHIFT" in outside.table()


def test_without_location_features_there_is_no_gate(calibrated):
    model, cal = calibrated
    meta = {**cal.meta, "unexplained_shift_gate": None,
            "default_estimator": cal.meta["validation"]["default_before_shortcut"]}
    plain = type(cal)(cal.path, meta, {k: v for k, v in cal.estimators.items() if not k.startswith("location")},
                      cal.reference)
    x, _ = images(40, seed=23, all_markers=True)
    job, summary = _monitor(model, plain, x)
    assert summary.unexplained_shift is None and not summary.headline.get("reason")
    assert job.registry.get_sample_value("relmon_unexplained_shift", job.metrics.base) is None
    assert np.isfinite(summary.headline["estimate"])
