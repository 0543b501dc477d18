"""Issue 21 item 6: the heatmap method chosen per model — ``relmon calibrate``'s paired method table,
the warning when the configured method is no better than the random order, ``methods: auto``.

The model is defined here (not an embedded one): a linear read-out of the image's global mean. Its
gradient is the same at every pixel, so ``sensitivity``'s heatmap is flat, its region order is the fixed
tie-break order, and its AOPC equals the random order's in expectation (gap ~ 0); gradient x input points
at the bright regions, whose replacement by noise lowers the logit most (gap clearly > 0).
"""

from __future__ import annotations

import math

import numpy as np
import pandas as pd
import pytest
import torch
from torch import nn

import relmon
from relmon.config import ConfigError, MonitorConfig, config_from_dict
from relmon.jobs.calibrate_job import calibrate_model
from relmon.jobs.method_choice import (
    DEFAULT_CANDIDATES,
    EMBEDDED_METHOD,
    FALLBACK_METHOD,
    choose,
    paired_table,
    resolve_auto,
    select_methods,
)
from relmon.models import Preprocessing, attach_preprocessing

SIDE = 16


def mean_readout() -> nn.Module:
    """Logits = w * mean(x) + b (class 0 predicted with a positive logit on images of mean ~0.5)."""
    model = nn.Sequential(nn.AdaptiveAvgPool2d(1), nn.Flatten(), nn.Linear(1, 3))
    with torch.no_grad():
        model[2].weight.copy_(torch.tensor([[6.0], [0.0], [-6.0]]))
        model[2].bias.copy_(torch.tensor([0.0, 1.0, 0.0]))
    attach_preprocessing(model, Preprocessing(mean=0.0, std=1.0, low=0.0, high=1.0))
    return model.eval()


def blobs(n: int, seed: int = 0) -> torch.Tensor:
    """``(n, 1, 16, 16)`` images in [0, 1]: a 4x4 grid of random brightness (one value per 4x4 region)."""
    g = torch.Generator().manual_seed(seed)
    coarse = torch.rand(n, 1, 4, 4, generator=g)
    return torch.nn.functional.interpolate(coarse, size=(SIDE, SIDE), mode="nearest")


def settings(**kw) -> MonitorConfig:
    base = dict(region=4, steps=6, calibration_n=24, calibration_shifts=["blur", "contrast"],
                calibration_severities=[3], estimators=["atc", "doc"], method_table_n=64, batch_size=32)
    return MonitorConfig().with_overrides({**base, **kw})


@pytest.fixture(scope="module")
def images():
    return blobs(80)


# -- the table itself: known values ------------------------------------------------------------------


def test_paired_table_known_values_and_pairing():
    # three samples; a's AOPC beats the random order's by 1, 2, 3 (score0 = 1, 2, 1): gap_rel 1, 1, 3
    rows = []
    for i, (s0, rnd, a, b) in enumerate([(1.0, 0.5, 1.5, 1.0), (2.0, 1.0, 3.0, 2.0), (1.0, 0.0, 3.0, 2.5)]):
        for method, aopc in (("a", a), ("b", b), ("random", rnd)):
            rows.append({"sample_id": str(i), "method": method, "aopc": aopc, "score0": s0})
    rows.append({"sample_id": "3", "method": "a", "aopc": 1.0, "score0": -1.0})  # score0 <= 0: no ratio
    rows += [{"sample_id": "3", "method": m, "aopc": 0.0, "score0": -1.0} for m in ("b", "random")]
    table, counts = paired_table(pd.DataFrame(rows), ["a", "b"], reference="b")
    a, b = table.set_index("method").loc["a"], table.set_index("method").loc["b"]
    assert counts == {"scored": 4, "used": 3, "dropped_score0_not_positive": 1}
    assert a["gap_rel"] == pytest.approx(5 / 3) and b["gap_rel"] == pytest.approx((0.5 + 0.5 + 2.5) / 3)
    assert a["gap_rel_se"] == pytest.approx(np.std([1, 1, 3], ddof=1) / math.sqrt(3))
    # paired: a - b is 0.5 on every sample, so its standard error is 0 (unpaired it would not be)
    assert a["diff"] == pytest.approx(0.5) and a["diff_se"] == pytest.approx(0.0, abs=1e-12)
    assert a["gap"] == pytest.approx(2.0)  # score units
    assert choose(table) == "a"  # the argmax; flipped sort gives b


# -- calibration: table, warning, auto ---------------------------------------------------------------


def test_table_has_a_finite_row_per_candidate_and_auto_takes_the_argmax(images):
    model = mean_readout()
    cfg = settings()
    sel = select_methods(cfg, model, images[:64], Preprocessing(mean=0.0, std=1.0))
    table = pd.DataFrame(sel["table"])
    assert list(table["method"]) == list(DEFAULT_CANDIDATES) == list(cfg.method_candidates)
    assert np.isfinite(table[["gap_rel", "gap_rel_se", "diff", "diff_se"]].to_numpy(float)).all()
    assert (table["n"] == 64).all() and sel["used"] == 64
    best = table.loc[table["gap_rel"].idxmax(), "method"]
    assert sel["chosen"] == sel["best"] == best and table.loc[table["chosen"], "method"].tolist() == [best]
    assert table["gap_rel"].max() > table["gap_rel"].min()  # a real choice: the mutation (argmin) differs
    assert (table["compared_with"] == best).all()


def test_warns_when_the_configured_method_is_no_better_than_random(images, caplog):
    model = mean_readout()
    with caplog.at_level("WARNING", logger="relmon.jobs"):
        cal = calibrate_model(model, relmon.data.labelled.from_tensors(images, torch.zeros(len(images)).long()),
                              settings(methods=["sensitivity"]))
    sel = cal.meta["method_selection"]
    rows = pd.DataFrame(sel["table"]).set_index("method")
    assert rows.loc["sensitivity", "gap_rel_lower"] <= 0 < rows.loc["gradient_x_input", "gap_rel_lower"]
    assert len(sel["warnings"]) == 1
    text = sel["warnings"][0]
    assert text.startswith("heatmap method sensitivity is no better than the random order on this model")
    assert "significantly better here: " in text and "gradient_x_input" in text.split("significantly better")[1]
    assert "fix: set methods: auto" in text
    assert text in caplog.text
    assert cal.meta["methods"] == ["sensitivity"]  # configured: warned, not overridden


def test_no_warning_when_the_configured_method_is_clearly_better(images, caplog):
    with caplog.at_level("WARNING", logger="relmon.jobs"):
        sel = select_methods(settings(methods=["gradient_x_input"]), mean_readout(), images[:64],
                             Preprocessing(mean=0.0, std=1.0))
    assert sel["warnings"] == [] and "no better than the random order" not in caplog.text
    assert sel["chosen"] == "gradient_x_input" and sel["configured"] == ["gradient_x_input"]


def test_auto_calibration_records_the_choice_and_monitor_uses_it(images, tmp_path):
    model = mean_readout()
    data = relmon.data.labelled.from_tensors(images, torch.zeros(len(images)).long())
    cal = calibrate_model(model, data, settings(), out=tmp_path / "cal")  # methods: auto (the default)
    sel = cal.meta["method_selection"]
    assert sel["configured"] == "auto" and cal.meta["methods"] == [sel["chosen"]] == [sel["best"]]
    assert set(cal.reference["method"]) == {sel["chosen"], "random"}  # the calibration scored with it
    summary, records = relmon.monitor(model, images[:8], calibration=tmp_path / "cal", region=4, steps=6)
    assert set(records["method"]) == {sel["chosen"], "random"} and set(summary.methods) == {sel["chosen"], "random"}


def test_auto_without_calibration_falls_back_and_embedded_models_keep_their_method(images, caplog):
    model = mean_readout()
    with caplog.at_level("INFO", logger="relmon.jobs"):
        summary, records = relmon.monitor(model, images[:4], region=4, steps=2)
    assert set(records["method"]) == {FALLBACK_METHOD, "random"}
    assert "'relmon calibrate' measures every candidate method" in caplog.text
    embedded = relmon.load_embedded("fmnist_cnn")
    assert resolve_auto(MonitorConfig(), embedded).methods == (EMBEDDED_METHOD,)
    # and in the calibration: the embedded model keeps it even where the table ranks another method first
    x = torch.from_numpy(relmon.data.load_sample()[0][:16]).float().div(255).unsqueeze(1)
    sel = select_methods(MonitorConfig().with_overrides({"steps": 2, "region": 7}), embedded, x,
                         relmon.models.get_preprocessing(embedded))
    assert sel["chosen"] == EMBEDDED_METHOD and "chosen on 256 test images" in sel["rule"]


def test_method_table_n_zero_skips_the_table(images):
    cal = calibrate_model(mean_readout(), relmon.data.labelled.from_tensors(images, torch.zeros(len(images)).long()),
                          settings(method_table_n=0))
    assert cal.meta["method_selection"] is None and cal.meta["methods"] == [FALLBACK_METHOD]


# -- report and config -------------------------------------------------------------------------------


def test_report_shows_the_method_table_escaped(images):
    from relmon.report.html import render_report
    from relmon.report.methods import method_table_section

    cal = calibrate_model(mean_readout(), relmon.data.labelled.from_tensors(images, torch.zeros(len(images)).long()),
                          settings(methods=["sensitivity"]))
    page = render_report(cal.records, calibration=cal, images=False)
    section = page.split('<section id="method_table">', 1)[1].split("</section>", 1)[0]
    for m in DEFAULT_CANDIDATES:
        assert f"<td>{m}</td>" in section
    assert "paired difference vs sensitivity" in section and "Warning:" in section
    assert 'href="#method_table"' in page
    cal.meta["method_selection"]["warnings"] = ["<script>x</script>"]
    assert "<script>" not in method_table_section(cal) and "&lt;script&gt;" in method_table_section(cal)


def test_auto_round_trips_in_the_config():
    assert MonitorConfig().methods == ("auto",)
    for given in ("auto", ["auto"], "AUTO"):
        cfg = config_from_dict({"methods": given})
        assert cfg.methods == ("auto",)
        assert config_from_dict(cfg.to_dict()).methods == ("auto",)
    assert MonitorConfig().with_overrides({"methods": ["auto"]}).methods == ("auto",)  # the flag --methods auto
    assert config_from_dict({"methods": ["sensitivity"]}).methods == ("sensitivity",)
    with pytest.raises(ConfigError, match=r"config field 'methods': .*auto lets the calibration choose the method "
                                          r"and cannot be combined with other methods"):
        config_from_dict({"methods": ["auto", "sensitivity"]})
    with pytest.raises(ConfigError, match="method_table_n"):
        config_from_dict({"method_table_n": -1})


# -- the CLI: printed summary and --json -------------------------------------------------------------

FACTORY = '''
import torch
from torch import nn


def mean_readout():
    model = nn.Sequential(nn.AdaptiveAvgPool2d(1), nn.Flatten(), nn.Linear(1, 3))
    with torch.no_grad():
        model[2].weight.copy_(torch.tensor([[6.0], [0.0], [-6.0]]))
        model[2].bias.copy_(torch.tensor([0.0, 1.0, 0.0]))
    return model
'''


def test_cli_calibrate_prints_the_table_and_the_warning_and_json_carries_them(tmp_path, monkeypatch, capsys):
    import json
    import sys

    from PIL import Image

    from relmon.cli import main

    (tmp_path / "relmon_test_readout.py").write_text(FACTORY)
    monkeypatch.syspath_prepend(str(tmp_path))
    sys.modules.pop("relmon_test_readout", None)
    x = blobs(72, seed=1)
    for i, img in enumerate(x):
        folder = tmp_path / "labelled" / "abc"[i % 3]
        folder.mkdir(parents=True, exist_ok=True)
        Image.fromarray((img[0].numpy() * 255).round().astype("uint8")).save(folder / f"{i}.png")
    args = ["calibrate", "--model", "relmon_test_readout:mean_readout", "--preprocessing",
            "{mean: 0.0, std: 1.0, low: 0.0, high: 1.0}", "--calibration-data", str(tmp_path / "labelled"),
            "--classes", "a", "b", "c", "--region", "4", "--steps", "6", "--calibration-n", "24",
            "--calibration-shifts", "blur", "--calibration-severities", "3", "--estimators", "atc",
            "--method-table-n", "64", "--methods", "sensitivity"]
    assert main([*args, "--out", str(tmp_path / "cal")]) == 0
    out = capsys.readouterr().out
    assert "methods compared on 64 clean images" in out and "lrp:epsilon_plus_flat" in out
    assert "WARNING: heatmap method sensitivity is no better than the random order" in out
    assert main([*args, "--out", str(tmp_path / "cal2"), "--json"]) == 0
    meta = json.loads(capsys.readouterr().out)
    sel = meta["method_selection"]
    assert meta["methods"] == ["sensitivity"] and len(sel["table"]) == len(DEFAULT_CANDIDATES)
    assert sel["warnings"] and sel["warnings"][0].startswith("heatmap method sensitivity is no better")
    sys.modules.pop("relmon_test_readout", None)
