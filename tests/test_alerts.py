"""The accuracy alert: relmon.analysis.alerts (one pure function), `relmon monitor --json`'s "alerts",
and the Prometheus rules that mirror it, run by promtool on the same real windows."""

from __future__ import annotations

import math
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
from scipy.stats import beta

from relmon.analysis.alerts import (
    ALERT_NAME,
    accuracy_alerts,
    accuracy_threshold,
    reference_lower_bound,
    reference_warning,
)

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "scripts"))
PROMTOOL = shutil.which("promtool") or "/usr/bin/promtool"


def summary(est=0.70, lower=0.60, upper=0.80, drift=True, acc=0.90, n=600, default="atc"):
    return {"estimates": {default: (est, lower, upper), "doc": (0.1, 0.0, 0.2)}, "default_estimator": default,
            "drift_alarm": drift, "calibration_accuracy": acc, "calibration_n": n}


def test_reference_lower_bound_is_the_one_sided_clopper_pearson_bound():
    # the exact one-sided 95 % lower bound is the 5 % quantile of Beta(k, n - k + 1)
    for acc, n in ((0.925, 80), (0.90, 600), (0.5, 16), (1.0, 100)):
        k = round(acc * n)
        assert reference_lower_bound(acc, n) == pytest.approx(beta.ppf(0.05, k, n - k + 1), abs=1e-9)
    assert reference_lower_bound(0.0, 50) == 0.0
    # more images, tighter bound
    assert reference_lower_bound(0.9, 80) < reference_lower_bound(0.9, 600) < 0.9


def test_threshold_is_the_lower_bound_minus_the_margin():
    assert accuracy_threshold(0.9, 600, margin=0.05) == pytest.approx(beta.ppf(0.05, 540, 61) - 0.05, abs=1e-9)
    assert accuracy_threshold(None, 600) is None and accuracy_threshold(0.9, None) is None
    with pytest.raises(ValueError, match="clean window size n must be a positive integer, got 0"):
        accuracy_threshold(0.9, 0)
    with pytest.raises(ValueError, match=r"clean accuracy must be a ratio in \[0, 1\], got 1.2"):
        accuracy_threshold(1.2, 100)


def test_severities_follow_the_rule():
    t = accuracy_threshold(0.90, 600)  # 0.878 - ALERT_MARGIN (0.05)
    assert 0.82 < t < 0.83
    # estimate below the threshold with drift: warning; without drift: nothing
    assert [a["severity"] for a in accuracy_alerts(summary(est=0.80, upper=0.95))] == ["warning"]
    assert accuracy_alerts(summary(est=0.80, upper=0.95, drift=False)) == []
    assert accuracy_alerts(summary(est=0.80, upper=0.95, drift=None)) == []
    # upper bound below: critical, with or without drift (and the warning too when drift alarms)
    assert [a["severity"] for a in accuracy_alerts(summary(est=0.70, upper=0.80, drift=False))] == ["critical"]
    assert [a["severity"] for a in accuracy_alerts(summary(est=0.70, upper=0.80))] == ["warning", "critical"]
    # strict comparisons, as the rules' `<`
    assert accuracy_alerts(summary(est=t, upper=t)) == []
    # only the default estimator counts: doc's 0.1 never alerts on its own
    assert accuracy_alerts(summary(est=0.95, upper=0.99)) == []
    a = accuracy_alerts(summary(est=0.70, upper=0.80, drift=False))[0]
    assert a["name"] == ALERT_NAME
    assert a["reason"].startswith(f"default estimator atc: upper bound 0.800 of the estimate below the threshold {t:.3f}")
    assert "(n=600)" in a["reason"]


def test_the_reference_sampling_error_moves_the_threshold():
    # 80 clean images at 0.925 (the demo's calibration): the threshold sits ~0.12 below the point value,
    # further than with 600 images at the same accuracy; a window estimated at 0.84 alerts only with 600
    small, large = accuracy_threshold(0.925, 80), accuracy_threshold(0.925, 600)
    assert small < large - 0.03
    s = summary(est=0.83, upper=0.85, acc=0.925, drift=True)  # thresholds 0.807 and 0.855
    assert accuracy_alerts({**s, "calibration_n": 80}) == []
    assert {a["severity"] for a in accuracy_alerts({**s, "calibration_n": 600})} == {"warning", "critical"}


def test_no_reference_or_no_default_estimate_means_no_alert():
    assert accuracy_alerts(summary(acc=None)) == []
    assert accuracy_alerts(summary(n=None)) == []  # an old calibration without its clean window's size
    assert accuracy_alerts({**summary(), "default_estimator": "cot"}) == []  # cot could not score the window
    assert accuracy_alerts(summary(est=math.nan, upper=0.5, drift=True))[0]["severity"] == "critical"


def test_reference_warning_names_the_size_and_the_fix():
    msg = reference_warning(0.925, 80)
    assert msg is not None
    assert msg.startswith("the clean calibration window has only 80 images (accuracy 0.925)")
    assert "fix: calibrate with calibration_n of about" in msg
    need = int(msg.rsplit("about ", 1)[1].split()[0])
    assert reference_warning(0.925, need) is None  # the n it names is enough
    assert reference_warning(0.925, 600) is None


def test_the_window_summary_file_carries_the_accuracy_alerts():
    from relmon.runs import window_summary_document

    s = {**summary(est=0.70, upper=0.80), "drift_p_values": {"aopc": 0.001, "confidence": 0.2}}
    s["alerts"] = accuracy_alerts(s)
    assert [a["severity"] for a in s["alerts"]] == ["warning", "critical"]
    doc = window_summary_document(s)
    assert doc["alerts"] == [{"alert": "drift", "features": ["aopc", "confidence"]}, *s["alerts"]]


# --------------------------------------------------------------------------------------------------
# the function and the Prometheus rules on the same real windows


@pytest.fixture(scope="module")
def fast_calibration(tmp_path_factory):
    """A small real calibration. With one shift type there is nothing to validate a conformal interval
    on, so the default (atc, the first candidate) keeps its sampling interval: narrow enough for the
    critical severity to fire on real windows."""
    from relmon.config import MonitorConfig
    from relmon.jobs import calibrate

    out = tmp_path_factory.mktemp("alerts") / "cal"
    calibrate(MonitorConfig(region=7, steps=8, batch_size=32, calibration_n=48, calibration_shifts=("gaussian_noise",),
                            calibration_severities=(5,), estimators=("atc", "average_confidence")), out)
    return str(out)


# Seen with this calibration (threshold 0.743): clean fires nothing; occlusion/3 has its estimate (0.67)
# below the threshold but no drift alarm (nothing); jpeg/5 has its upper bound below it without drift
# (critical only); rotation/5 both.
WINDOWS = [("clean", None, 3), ("occlusion3", "occlusion", 3), ("jpeg5", "jpeg", 5), ("rotation5", "rotation", 5)]


@pytest.mark.integration
@pytest.mark.skipif(not Path(PROMTOOL).exists(), reason="promtool (Debian package prometheus) not installed")
def test_promtool_rules_fire_what_the_function_says_on_real_windows(fast_calibration, tmp_path):
    import yaml
    from alert_rule_tests import RULES, expected_alerts, promtool_test, real_runs

    runs = real_runs(fast_calibration, WINDOWS, tmp_path, n=64, extra=["--region", "7", "--steps", "8"])
    for text, s in runs:  # --json's "alerts" is the function's output on that very summary
        assert s["alerts"] == accuracy_alerts(s)
        assert s["alert_threshold"] == accuracy_threshold(s["calibration_accuracy"], s["calibration_n"])
        assert "relmon_accuracy_alert_threshold_ratio{" in text
    fired = {a["severity"] for _, s in runs for a in s["alerts"]}
    quiet = [s["stream"] for _, s in runs if not s["alerts"]]
    # the windows exercise both severities and silence, else the comparison below proves little
    assert fired == {"warning", "critical"} and quiet, [(s["stream"], s["alerts"]) for _, s in runs]
    test = promtool_test(runs)
    assert sum(len(t["exp_alerts"]) for t in test["alert_rule_test"]) == sum(len(expected_alerts(s)) for _, s in runs)
    (tmp_path / "alerts.yml").write_text(RULES.read_text())
    (tmp_path / "t.yml").write_text(yaml.safe_dump({"rule_files": ["alerts.yml"], "evaluation_interval": "1m",
                                                    "tests": [test]}, sort_keys=False))
    res = subprocess.run([PROMTOOL, "test", "rules", "t.yml"], cwd=tmp_path, capture_output=True, text=True,
                         timeout=60)
    assert res.returncode == 0, res.stdout + res.stderr
