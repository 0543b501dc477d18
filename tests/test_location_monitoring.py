"""Suspect regions as monitoring features (issue 19, deliverable 2): the config field, the scorer's
location columns on a model whose answer is known by construction, the records schema and the
window features."""

from __future__ import annotations

import json

import pandas as pd
import pytest
import torch
from torch import nn

from relmon.analysis.features import sample_features, window_features
from relmon.config import ConfigError, MonitorConfig, config_from_dict
from relmon.location import LOCATION_COLUMNS, suspect_mask
from relmon.preprocessing import Preprocessing, attach_preprocessing
from relmon.records import RECORD_COLUMNS, read_record_files, write_records
from relmon.scoring import BatchScorer, WindowAccumulator
from relmon.suspect_regions import SuspectRegionsError, check_regions_fit

RECT = [[2, 2, 2, 2]]  # the suspect region of an 8x8 image
OTHER = [[5, 5, 3, 3]]  # where class 1 looks


def linear_model() -> nn.Module:
    """logit 0 = 3 x (sum of the pixels in RECT); logit 1 = sum of the pixels in OTHER; no bias.

    An image bright in RECT is class 0 and its gradient x input relevance lies entirely in RECT (share
    1, rest 0); every image has OTHER at a floor of 0.01, so with RECT blanked it is class 1 (a flip by
    construction)."""
    lin = nn.Linear(64, 2, bias=False)
    with torch.no_grad():
        lin.weight.zero_()
        lin.weight[0] = 3.0 * suspect_mask(RECT, 8, 8).flatten().float()
        lin.weight[1] = suspect_mask(OTHER, 8, 8).flatten().float()
    return attach_preprocessing(nn.Sequential(nn.Flatten(), lin).eval(), Preprocessing(0.0, 1.0))


def images() -> torch.Tensor:
    x = torch.full((3, 1, 8, 8), 0.0)
    x[:, :, 5:8, 5:8] = 0.01  # OTHER's floor: class 1 once RECT is dark
    x[0, :, 2:4, 2:4] = 1.0  # class 0 by RECT: logits 12 vs 0.09
    x[1, :, 5:8, 5:8] = 1.0  # class 1 by OTHER: logits 0 vs 9
    x[2, :, 2:4, 2:4] = 0.5  # class 0 by RECT, weaker: logits 6 vs 0.09
    return x


def score(model, regions, methods=("gradient_x_input",)):
    scorer = BatchScorer(model, methods=methods, region=2, steps=2, suspect_regions=regions)
    x = images()
    return scorer.score_batch(x, [f"s{i}" for i in range(len(x))], ["w:0"] * len(x),
                              WindowAccumulator(scorer.methods), labels=torch.tensor([0, 1, 0]))


# ---------------------------------------------------------------------------------------------
# the scorer: known answers


def test_share_flip_and_drop_on_a_model_that_reads_the_suspect_region():
    recs = score(linear_model(), RECT)
    assert list(recs.columns) == [*RECORD_COLUMNS, *LOCATION_COLUMNS]
    first = recs[recs["method"] == "gradient_x_input"].set_index("sample_id")
    assert first["pred"].tolist() == [0, 1, 0]
    # all relevance of the class-0 samples (w x) lies in RECT; none of the class-1 sample's
    assert first["suspect_share"].tolist() == [1.0, 0.0, 1.0]
    assert first["rest_relevance"].tolist() == [0.0, 1.0, 0.0]
    # blanking RECT: class 0 -> logits 0 vs 0.09 -> class 1 (flip); class 1 keeps its OTHER evidence
    assert first["occlusion_flip"].tolist() == [1.0, 0.0, 1.0]
    p = torch.tensor([[12.0, 0.09], [0.0, 9.0], [6.0, 0.09]]).softmax(1)
    after = torch.tensor([[0.0, 0.09], [0.0, 9.0], [0.0, 0.09]]).softmax(1)
    want = (p[:, 0] - after[:, 0]).tolist()
    want[1] = (p[1, 1] - after[1, 1]).item()
    assert first["occlusion_drop"].astype(float).tolist() == pytest.approx(want, abs=1e-6)
    # the same values on every row of a sample (the random row too)
    rnd = recs[recs["method"] == "random"].set_index("sample_id")
    pd.testing.assert_frame_equal(rnd[list(LOCATION_COLUMNS)], first[list(LOCATION_COLUMNS)])


def test_location_comes_from_the_first_method(cnn, sample_batch):
    """The shares are those of the first method's heatmap (the two orders differ on a real CNN)."""
    from relmon.explain import explain_full, to_heatmap
    from relmon.location import location_features

    x = sample_batch[0]
    rect = [[8, 8, 10, 10]]
    shares = {}
    for methods in (("gradient_x_input", "sensitivity"), ("sensitivity", "gradient_x_input")):
        scorer = BatchScorer(cnn, methods=methods, region=4, steps=2, suspect_regions=rect)
        recs = scorer.score_batch(x, [f"s{i}" for i in range(len(x))], ["w"] * len(x), WindowAccumulator(methods))
        got = recs[recs["method"] == methods[1]]["suspect_share"].astype(float).to_numpy()
        ex = explain_full(cnn, x, methods[0])
        want = location_features(cnn, x, to_heatmap(ex.relevance, ex.method), ex.target,
                                 suspect_mask(rect, 28, 28))["suspect_share"].numpy()
        assert got == pytest.approx(want, abs=1e-6)
        shares[methods[0]] = got
    assert abs(shares["gradient_x_input"] - shares["sensitivity"]).max() > 0.05


def test_a_region_the_model_ignores_shares_nothing_and_flips_nothing():
    recs = score(linear_model(), [[0, 0, 2, 2]])
    first = recs[recs["method"] == "gradient_x_input"]
    assert first["suspect_share"].tolist() == [0.0, 0.0, 0.0]
    assert first["occlusion_flip"].tolist() == [0.0, 0.0, 0.0]
    assert first["occlusion_drop"].astype(float).abs().max() < 1e-7


def test_without_suspect_regions_the_records_are_unchanged():
    recs = score(linear_model(), None)
    assert list(recs.columns) == list(RECORD_COLUMNS)
    assert not any(c in sample_features(recs).columns for c in LOCATION_COLUMNS)


def test_a_region_outside_the_input_is_a_clear_error():
    with pytest.raises(ValueError, match=r"suspect_regions: region .* does not fit in a 8x8 image; fix"):
        score(linear_model(), [[6, 6, 4, 4]])


def test_the_occlusion_is_one_extra_forward_per_batch():
    model = linear_model()
    calls = []
    model.register_forward_hook(lambda *a: calls.append(1))
    score(model, None)
    without = len(calls)
    calls.clear()
    score(model, RECT)
    assert len(calls) == without + 1


# ---------------------------------------------------------------------------------------------
# records and features


def test_records_round_trip_and_mixed_files(tmp_path):
    model = linear_model()
    with_loc = write_records(score(model, RECT), tmp_path / "a.parquet")
    without = write_records(score(model, None), tmp_path / "b.parquet")
    import pyarrow.parquet as pq

    assert pq.read_schema(with_loc).metadata[b"relmon.records.schema_version"] == b"3"
    assert pq.read_schema(without).metadata[b"relmon.records.schema_version"] == b"2"  # old readers read it
    back = read_record_files([with_loc])
    assert list(back.columns) == [*RECORD_COLUMNS, *LOCATION_COLUMNS]
    assert back["occlusion_flip"].tolist()[:3] == [1.0, 0.0, 1.0]
    assert list(read_record_files([without]).columns) == list(RECORD_COLUMNS)
    mixed = read_record_files([without, with_loc])
    assert mixed["suspect_share"].isna().sum() == len(read_record_files([without]))


def test_sample_and_window_features_carry_the_location_columns():
    recs = score(linear_model(), RECT)
    samples = sample_features(recs)
    assert samples[list(LOCATION_COLUMNS)].shape == (3, 4)
    assert samples.set_index("sample_id").loc["s0", "suspect_share"] == 1.0
    win = window_features(recs)
    assert win["occlusion_flip_mean"].iloc[0] == pytest.approx(2 / 3)
    assert win["suspect_share_mean"].iloc[0] == pytest.approx(2 / 3)


def test_drift_tests_the_location_features_when_both_sides_have_them():
    from relmon.analysis import DRIFT_FEATURES, ks_drift

    model = linear_model()
    ref, same = score(model, RECT), score(model, RECT)
    res = ks_drift(ref, same)
    assert res.features == DRIFT_FEATURES + LOCATION_COLUMNS
    assert res.p_values["suspect_share"] == 1.0 and not res.alarm  # identical windows
    assert ks_drift(score(model, None), same).features == DRIFT_FEATURES  # reference without: not tested
    assert ks_drift(ref, score(model, None)).features == DRIFT_FEATURES


# ---------------------------------------------------------------------------------------------
# the config field


def test_config_takes_rectangles_or_an_audit_file(tmp_path):
    cfg = config_from_dict({"suspect_regions": [[1, 2, 3, 4]]})
    assert cfg.suspect_regions == ((1, 2, 3, 4),)
    assert cfg.to_dict()["suspect_regions"] == [[1, 2, 3, 4]]
    audit = tmp_path / "audit.json"
    audit.write_text(json.dumps({"flagged": True, "suspect_regions": [[0, 0, 3, 3], [25, 1, 3, 3]]}))
    assert config_from_dict({"suspect_regions": str(audit)}).suspect_regions == ((0, 0, 3, 3), (25, 1, 3, 3))
    flag = MonitorConfig().with_overrides({"suspect_regions": "[[1, 1, 2, 2]]"})
    assert flag.suspect_regions == ((1, 1, 2, 2),)
    assert MonitorConfig().suspect_regions is None


@pytest.mark.parametrize("value, message", [
    ([], "expected a non-empty list"),
    ([[1, 2, 3]], r"rectangle \[1, 2, 3\] is not \[top, left, height, width\]"),
    ([[-1, 0, 2, 2]], r"rectangle \[-1, 0, 2, 2\] is not"),
    ([[0, 0, 0, 2]], r"rectangle \[0, 0, 0, 2\] is not"),
    ([[0, 0, 1.5, 2]], r"rectangle \[0, 0, 1.5, 2\] is not"),
    ([[True, 0, 1, 2]], r"rectangle \[True, 0, 1, 2\] is not"),
    ("missing.json", r"cannot read the audit file 'missing.json'"),
])
def test_config_errors_name_the_field_and_the_fix(value, message):
    with pytest.raises(ConfigError, match=rf"config field 'suspect_regions': {message}.*fix"):
        config_from_dict({"suspect_regions": value})


def test_audit_files_without_regions_are_refused(tmp_path):
    empty = tmp_path / "control.json"
    empty.write_text(json.dumps({"flagged": False, "suspect_regions": []}))
    with pytest.raises(ConfigError, match="found no suspect regions, so there is nothing to monitor; fix: remove"):
        config_from_dict({"suspect_regions": str(empty)})
    other = tmp_path / "other.json"
    other.write_text(json.dumps({"x": 1}))
    with pytest.raises(ConfigError, match="holds no 'suspect_regions' key"):
        config_from_dict({"suspect_regions": str(other)})


def test_regions_are_checked_against_the_input_size():
    check_regions_fit(((25, 25, 3, 3),), 28, 28)
    with pytest.raises(SuspectRegionsError, match=r"\[26, 0, 3, 3\] does not fit in the model's 28x28 input.*fix"):
        check_regions_fit(((26, 0, 3, 3),), 28, 28)


# ---------------------------------------------------------------------------------------------
# end to end: audit -> config -> calibrate -> monitor, on a model trained here with a planted marker


def _folder(root, x, y, flat=False):
    """Raw images ``(N, 1, 28, 28)`` in [0, 1] as PNGs: class folders ``c<k>/`` (labelled) or flat."""
    import numpy as np
    from PIL import Image

    for i in range(len(x)):
        d = root if flat else root / f"c{int(y[i])}"
        d.mkdir(parents=True, exist_ok=True)
        Image.fromarray(np.round(x[i, 0].numpy() * 255).astype(np.uint8)).save(d / f"{i:04d}.png")
    return root


def _config(tmp_path, name, checkpoint, **extra):
    import yaml

    from relmon.data.fashion_mnist import MEAN, STD

    cfg = {"model": "relmon.audit.planted:build_cnn", "model_kwargs": {"arch": "cnn", "widths": [8, 16]},
           "checkpoint": str(checkpoint), "preprocessing": {"mean": [MEAN], "std": [STD]},
           "classes": [f"c{k}" for k in range(10)], "image_size": 28, "estimators": ["average_confidence", "atc"],
           "calibration_n": 250, "calibration_shifts": ["contrast"], "calibration_severities": [3], **extra}
    path = tmp_path / f"{name}.yaml"
    path.write_text(yaml.safe_dump(cfg))
    return path


@pytest.fixture(scope="module")
def planted_models(tmp_path_factory):
    """A model trained on Fashion-MNIST training images with their class marker planted in 90 % of them,
    a control trained on the clean images, and the shipped sample (test images: raw, labels) the audit,
    calibration and monitored windows are drawn from."""
    import numpy as np

    from relmon.audit.planted import shortcut_model
    from relmon.data.fashion_mnist import load_fashion_mnist, load_sample

    train_x, train_y = load_fashion_mnist("train")
    xt = torch.from_numpy(np.array(train_x[:6000])).float().div(255).unsqueeze(1)
    yt = torch.from_numpy(np.array(train_y[:6000], dtype=np.int64))
    opts = dict(epochs=2, widths=(8, 16), lr=3e-3)
    shortcut = shortcut_model("cnn", "marker", xt, yt, p=0.9, **opts)
    control = shortcut_model("cnn", None, xt, yt, **opts)
    images, labels = load_sample()
    x = torch.from_numpy(images).float().div(255).unsqueeze(1)
    y = torch.from_numpy(labels)
    root = tmp_path_factory.mktemp("planted")
    for name, model in (("shortcut", shortcut), ("control", control)):
        torch.save(model.state_dict(), root / f"{name}.pt")
    return root, x, y


@pytest.mark.slow
def test_audit_to_monitoring_end_to_end(planted_models, tmp_path, capsys, caplog):
    import glob

    from conftest import run_cli

    from relmon.cli import main
    from relmon.data.shortcuts import plant
    from relmon.records import read_record_files

    root, x, y = planted_models
    # the user's labelled data (the marker in 90 % of the images, as in training): audited, then calibrated on
    labelled = _folder(tmp_path / "labelled", plant(x[:500], y[:500], "marker", p=0.9, seed=2), y[:500])
    base = _config(tmp_path, "base", root / "shortcut.pt")
    assert main(["audit", str(labelled), "--config", str(base), "--json"]) == 0
    audit = json.loads(capsys.readouterr().out)
    assert audit["flagged"] and audit["suspect_regions"]
    (tmp_path / "audit.json").write_text(json.dumps(audit))
    cfg = _config(tmp_path, "cfg", root / "shortcut.pt", suspect_regions=str(tmp_path / "audit.json"),
                  calibration_data=str(labelled))
    assert run_cli(["calibrate", "--config", str(cfg), "--out", str(tmp_path / "cal")]) == 0
    capsys.readouterr()
    reference = read_record_files([tmp_path / "cal" / "reference.parquet"])
    assert all(c in reference.columns for c in LOCATION_COLUMNS)
    # the calibration remembers its regions: other regions are refused, none only warned about
    from relmon.config import load_config
    from relmon.jobs import CalibrationMismatchError, load_calibration
    from relmon.jobs.calibration import check_calibration

    cal, job_cfg = load_calibration(tmp_path / "cal"), load_config(cfg)
    ident = cal.meta["model"], cal.meta["model_version"]
    assert check_calibration(cal, *ident, job_cfg) is False
    with pytest.raises(CalibrationMismatchError, match="made with suspect_regions .* the job uses \\[\\[0, 0, 2, 2\\]\\]"):
        check_calibration(cal, *ident, job_cfg.with_overrides({"suspect_regions": [[0, 0, 2, 2]]}))
    from dataclasses import replace

    with caplog.at_level("WARNING", logger="relmon.jobs"):
        check_calibration(cal, *ident, replace(job_cfg, suspect_regions=None))
    assert "the location features are not tested for drift against it" in caplog.text

    # monitored windows from images the audit and calibration never saw: the marker as in training,
    # and a window where every image carries another class's marker (the shortcut misleads)
    clean = _folder(tmp_path / "clean", plant(x[1000:1250], y[1000:1250], "marker", p=0.9, seed=5), y, flat=True)
    wrong = _folder(tmp_path / "wrong", plant(x[1250:1500], y[1250:1500], "marker", p_wrong=1.0, seed=6), y,
                    flat=True)
    out = {}
    for name, folder in (("clean", clean), ("wrong", wrong)):
        rc = run_cli(["monitor", "--config", str(cfg), "--calibration", str(tmp_path / "cal"), "--input",
                      str(folder), "--records", str(tmp_path / f"rec_{name}"), "--textfile",
                      str(tmp_path / f"{name}.prom"), "--json"])
        assert rc == 0
        out[name] = json.loads(capsys.readouterr().out)
        recs = read_record_files(glob.glob(str(tmp_path / f"rec_{name}" / "**" / "*.parquet"), recursive=True))
        assert list(recs.columns) == [*RECORD_COLUMNS, *LOCATION_COLUMNS] and recs["suspect_share"].notna().all()
    flip = {k: v["location"]["occlusion_flip"] for k, v in out.items()}
    # blanking the regions flips predictions in every window (the audit's regions are 4x4 cells, bands and
    # corners that cover object pixels too), more often where a wrong marker carried the prediction
    # (measured: 0.48 and 0.62; 250 images each, standard error of the difference about 0.044)
    assert flip["wrong"] > flip["clean"] + 0.08, flip
    # from the first configured method (methods: auto resolves to the calibration's choice)
    assert out["wrong"]["location"]["method"] == next(iter(out["wrong"]["methods"])) != "random"
    # the exported flip rate is the summary's
    from prometheus_client.parser import text_string_to_metric_families

    def gauge(name, metric):
        fams = {f.name: f for f in text_string_to_metric_families((tmp_path / f"{name}.prom").read_text())}
        return fams[metric].samples[0].value

    assert gauge("wrong", "relmon_occlusion_flip_ratio") == pytest.approx(flip["wrong"])
    assert gauge("clean", "relmon_occlusion_flip_ratio") == pytest.approx(flip["clean"])
    assert gauge("wrong", "relmon_suspect_relevance_share_ratio") == pytest.approx(
        out["wrong"]["location"]["suspect_share"])
    # the drift test (11 features, Holm-corrected at drift_alpha 0.01) rejects for a location feature on
    # the misleading window, for none on the clean one
    from relmon.analysis.drift import adjust_p_values

    adjusted = {}
    for k, v in out.items():
        p = v["drift_p_values"]
        assert set(LOCATION_COLUMNS) <= set(p)
        adjusted[k] = dict(zip(p, adjust_p_values(list(p.values())), strict=True))
    location_p = {k: min(a[c] for c in LOCATION_COLUMNS) for k, a in adjusted.items()}
    assert location_p["wrong"] < 0.01 and location_p["clean"] > 0.01, location_p
    assert out["wrong"]["drift_alarm"] and not out["clean"]["drift_alarm"]


@pytest.mark.slow
def test_a_control_model_gives_no_regions_and_monitoring_without_them_is_unchanged(planted_models, tmp_path,
                                                                                    capsys):
    import glob

    from conftest import run_cli

    from relmon.cli import main
    from relmon.data.shortcuts import plant
    from relmon.records import read_record_files

    root, x, y = planted_models
    labelled = _folder(tmp_path / "labelled", plant(x[:500], y[:500], "marker", p=0.9, seed=2), y[:500])
    base = _config(tmp_path, "base", root / "control.pt")
    assert main(["audit", str(labelled), "--config", str(base), "--json"]) == 0
    audit = json.loads(capsys.readouterr().out)
    assert not audit["flagged"] and audit["suspect_regions"] == []
    (tmp_path / "audit.json").write_text(json.dumps(audit))
    cfg = _config(tmp_path, "cfg", root / "control.pt", suspect_regions=str(tmp_path / "audit.json"))
    assert run_cli(["monitor", "--config", str(cfg), "--input", str(labelled)]) == 3
    assert "found no suspect regions, so there is nothing to monitor" in capsys.readouterr().err
    # without suspect_regions: the records and the summary are as before
    assert run_cli(["monitor", "--config", str(base), "--input", str(labelled), "--records",
                    str(tmp_path / "rec"), "--json"]) == 0
    summary = json.loads(capsys.readouterr().out)
    assert summary["location"] is None
    recs = read_record_files(glob.glob(str(tmp_path / "rec" / "**" / "*.parquet"), recursive=True))
    assert list(recs.columns) == list(RECORD_COLUMNS)


def test_report_shows_where_the_model_looks():
    from relmon.report.html import render_report

    model = linear_model()
    a = score(model, RECT)
    b = score(model, RECT).assign(window_id="w:1")
    b = b[b["sample_id"] != "s1"]  # window 1: only the two class-0 inputs (both flip)
    page = render_report(pd.concat([a, b], ignore_index=True))
    section = page.split('<section id="location">')[1].split("</section>")[0]
    assert "Where the model looks" in section and "data:image/png;base64," in section
    import re

    tables = [[re.findall(r"<t[dh][^>]*>([^<]*)</t[dh]>", row) for row in re.findall(r"<tr.*?</tr>", t, re.S)]
              for t in re.findall(r"<table.*?</table>", section, re.S)]
    per_window, per_class = tables
    flip = per_window[0].index("occlusion flip rate")
    assert [row[flip] for row in per_window[1:]] == ["0.667", "1.000"]  # window w:0, then w:1
    share = per_class[0].index("relevance share in suspect regions")
    assert [(row[0], row[1], row[share]) for row in per_class[1:]] == [("0", "4", "1.000"), ("1", "1", "0.000")]
    plain = render_report(score(model, None))
    assert "carry no location features: set suspect_regions" in plain.split('<section id="location">')[1]


def test_both_runners_give_the_same_location_columns(tmp_path, capsys):
    """The plain loop and Lightning's RelevanceMonitor score through the same BatchScorer."""
    import glob

    from conftest import run_cli

    from relmon.records import read_record_files

    got = {}
    for runner in ("plain", "lightning"):
        rc = run_cli(["monitor", "--n", "12", "--batch-size", "8", "--methods", "lrp:epsilon_0_01", "--runner", runner,
                      "--suspect-regions", "[[0, 0, 8, 28], [20, 0, 8, 28]]", "--records", str(tmp_path / runner)])
        assert rc == 0
        recs = read_record_files(glob.glob(str(tmp_path / runner / "**" / "*.parquet"), recursive=True))
        got[runner] = recs.sort_values(["sample_id", "method"])[list(LOCATION_COLUMNS)].astype(float).to_numpy()
    capsys.readouterr()
    assert got["plain"].shape == (24, 4)
    assert got["plain"] == pytest.approx(got["lightning"], abs=1e-6, nan_ok=True)
