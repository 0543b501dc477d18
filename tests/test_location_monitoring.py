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
from relmon.suspect_regions import check_regions_fit

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


def test_location_comes_from_the_first_method():
    # 'random' heatmaps would put the share near RECT's pixel share (4/64); gradient x input gives 1
    recs = score(linear_model(), RECT, methods=("gradient_x_input", "sensitivity"))
    assert recs.groupby("sample_id")["suspect_share"].nunique().max() == 1
    assert recs[recs["sample_id"] == "s0"]["suspect_share"].iloc[0] == 1.0


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
    with pytest.raises(ConfigError, match=r"\[26, 0, 3, 3\] does not fit in the model's 28x28 input.*fix"):
        check_regions_fit(((26, 0, 3, 3),), 28, 28)
