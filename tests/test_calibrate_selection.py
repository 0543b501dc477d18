"""`relmon calibrate` chooses the default estimator by leave-one-shift-type-out validation on the
calibration windows, stores the table, and the monitor reports (and exports) that estimator."""

from __future__ import annotations

import json

import pytest
from prometheus_client import CollectorRegistry

from relmon.config import MonitorConfig
from relmon.jobs import MonitorJob, calibrate
from relmon.jobs.calibrate_job import MEDIAN_LABEL

SETTINGS = dict(region=7, steps=4, batch_size=128, n=48)


@pytest.fixture(scope="module")
def calibrated(tmp_path_factory):
    cfg = MonitorConfig(
        **SETTINGS,
        calibration_n=24,
        calibration_shifts=("gaussian_noise", "contrast", "blur"),
        calibration_severities=(2, 5),
        estimators=("average_confidence", "atc", "doc", "nuclear_norm"),
    )
    return cfg, calibrate(cfg, tmp_path_factory.mktemp("cal") / "cal")


def test_default_is_the_lowest_held_out_error_and_the_table_is_stored(calibrated):
    cfg, cal = calibrated
    meta = json.loads((cal.path / "calibration.json").read_text())  # strict JSON on disk
    validation = meta["validation"]
    summary = validation["summary"]
    maes = [row["mae"] for row in summary]
    assert maes == sorted(maes)  # ranked by mean held-out error
    best = summary[0]["estimator"]
    expected = MEDIAN_LABEL if best.startswith("median:") else best
    assert meta["default_estimator"] == expected == validation["chosen"].replace(best, expected)
    assert expected in cal.estimators  # the default is a fitted, saved estimator
    held_out = {row["held_out"] for row in validation["per_shift_type"]}
    assert held_out == {"gaussian_noise", "contrast", "blur"}  # every shift type held out once
    assert set(cfg.estimators) <= {row["estimator"] for row in summary}  # every candidate validated


def test_monitor_names_and_exports_the_calibrations_default(calibrated):
    cfg, cal = calibrated
    registry = CollectorRegistry()
    job = MonitorJob(MonitorConfig(**SETTINGS, calibration=str(cal.path)), registry=registry)
    summary, _ = job.compute()
    default = cal.meta["default_estimator"]
    assert summary.default_estimator == default and default in summary.estimates
    assert "<- headline (default)" in next(line for line in summary.table().splitlines() if line.startswith(default))
    info = {s.labels["estimator"]: s.value for m in registry.collect() if m.name == "relmon_default_estimator_info"
            for s in m.samples}
    assert info == {default: 1.0}


def test_unknown_estimator_is_refused_before_scoring(tmp_path):
    from relmon.config import ConfigError

    cfg = MonitorConfig(**SETTINGS, calibration_n=8, estimators=("atc", "atcc"))
    with pytest.raises(ConfigError, match="config field 'estimators': unknown estimator 'atcc'"):
        calibrate(cfg, tmp_path / "cal")
    assert not (tmp_path / "cal").exists()  # nothing half-written
