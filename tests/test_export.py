"""Prometheus metric definitions, the three outputs, the job's config, calibration and CLI."""

from __future__ import annotations

import argparse
import json
import os
import shutil
import socket
import subprocess
from pathlib import Path

import pytest
from conftest import run_cli
from prometheus_client import CollectorRegistry
from prometheus_client.parser import text_string_to_metric_families

from relmon.config import (
    ConfigError,
    MonitorConfig,
    add_config_flags,
    config_from_args,
    config_from_dict,
    load_config,
)
from relmon.export import (
    DRIFT_FEATURE_LABELS,
    ESTIMATOR_LABELS,
    INPUT_ERROR_REASONS,
    METHOD_LABELS,
    PushError,
    RelmonMetrics,
    exposition,
    push,
    serve_http,
    write_textfile,
)
from relmon.metrics import AOPC_RELATIVE_BUCKETS

ROOT = Path(__file__).resolve().parents[1]
BASE = {"model", "model_version", "stream"}

# DESIGN.md §2a, "Metrics": name -> (type, extra label or None).
TABLE = {
    "relmon_estimated_accuracy_ratio": ("gauge", "estimator"),
    "relmon_estimated_accuracy_lower_ratio": ("gauge", "estimator"),
    "relmon_estimated_accuracy_upper_ratio": ("gauge", "estimator"),
    "relmon_aopc": ("gauge", "method"),
    "relmon_aopc_minus_random": ("gauge", "method"),
    "relmon_aopc_relative": ("gauge", "method"),
    "relmon_heatmap_entropy": ("gauge", "method"),
    "relmon_heatmap_png_bytes": ("gauge", "method"),
    "relmon_confidence_ratio": ("gauge", None),
    "relmon_drift_p_value": ("gauge", "feature"),
    "relmon_drift_alarm": ("gauge", None),
    "relmon_sample_aopc_relative": ("histogram", "method"),
    "relmon_samples_processed_total": ("counter", None),
    "relmon_input_errors_total": ("counter", "reason"),
    "relmon_run_duration_seconds": ("gauge", None),
    "relmon_last_success_timestamp_seconds": ("gauge", None),
    "relmon_calibration_timestamp_seconds": ("gauge", None),
    "relmon_calibration_accuracy_ratio": ("gauge", None),
    "relmon_accuracy_alert_threshold_ratio": ("gauge", None),
    "relmon_default_estimator_info": ("gauge", ("estimator", "members")),  # members: a median's (issue 18)
    "relmon_estimator_disagreement_ratio": ("gauge", None),
    "relmon_unexplained_shift": ("gauge", None),  # issue 19
    "relmon_run_samples": ("gauge", None),
    "relmon_run_input_errors": ("gauge", "reason"),
    # issue 19: only exported with suspect_regions (tests/test_location_monitoring.py runs them end to end)
    "relmon_suspect_relevance_share_ratio": ("gauge", "method"),
    "relmon_occlusion_flip_ratio": ("gauge", None),
    "relmon_occlusion_confidence_drop_ratio": ("gauge", None),
}
LOCATION_METRICS = ("relmon_suspect_relevance_share_ratio", "relmon_occlusion_flip_ratio",
                    "relmon_occlusion_confidence_drop_ratio")
FAST = dict(n=16, region=7, steps=8, batch_size=16)


def filled_metrics() -> RelmonMetrics:
    m = RelmonMetrics("fmnist_cnn", "abc123", "default", registry=CollectorRegistry())
    m.set_estimate("atc", 0.8, 0.7, 0.9)
    m.set_method(
        "lrp:epsilon_plus_flat",
        aopc=2.0,
        aopc_minus_random=1.0,
        aopc_relative=0.4,
        entropy_bits=9.0,
        png_bytes=500.0,
    )
    m.set_method("random", aopc=1.0, aopc_relative=0.1)
    m.observe_aopc_relative("lrp:epsilon_plus_flat", [0.1, 0.35, float("nan"), 3.0])
    m.set_confidence(0.85)
    m.set_drift({"aopc": 0.3, "confidence": 0.01}, alarm=True)
    m.add_samples(16)
    m.add_input_errors({"decode_error": 2})
    m.set_run(1.5, 1.7e9)
    m.set_calibration_timestamp(1.6e9)
    m.set_calibration_accuracy(0.9)
    m.set_alert_threshold(0.83)
    m.set_default_estimator("atc")
    m.set_disagreement(0.05)
    m.set_unexplained_shift(True)
    m.set_run_inputs(16, {"decode_error": 2})
    m.set_location({"method": "lrp:epsilon_plus_flat", "suspect_share": 0.4, "occlusion_flip": 0.1,
                    "occlusion_drop": 0.05})
    return m


def families(text: str) -> dict:
    return {f.name: f for f in text_string_to_metric_families(text)}


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


# --------------------------------------------------------------------------------------------------
# metric definitions


def test_metric_names_types_and_labels_follow_the_design_table():
    fams = families(exposition(filled_metrics().registry))
    exposed = {}
    for fam in fams.values():
        for s in fam.samples:
            if s.name.endswith("_created"):
                continue
            exposed.setdefault(fam.name, set()).update(k for k in s.labels if k != "le")
    for name, (kind, extra) in TABLE.items():
        family = name.removesuffix("_total") if kind == "counter" else name
        assert family in fams, name
        assert fams[family].type == kind, name
        extra = {extra} if isinstance(extra, str) else set(extra or ())
        assert exposed[family] == BASE | extra, name
    declared = {n.removesuffix("_total") if k == "counter" else n for n, (k, _) in TABLE.items()}
    # prometheus_client adds a `<name>_created` gauge (start time) beside each counter and histogram.
    assert declared == {f for f in fams if not f.endswith("_created")}
    text = exposition(filled_metrics().registry)
    assert "relmon_samples_processed_total{" in text and "relmon_input_errors_total{" in text


def test_histogram_buckets_are_the_shared_aopc_relative_buckets():
    fam = families(exposition(filled_metrics().registry))["relmon_sample_aopc_relative"]
    les = [s.labels["le"] for s in fam.samples if s.name.endswith("_bucket")]
    assert [float(x) for x in les[:-1]] == list(AOPC_RELATIVE_BUCKETS)
    assert les[-1] == "+Inf"
    count = next(s.value for s in fam.samples if s.name.endswith("_count"))
    assert count == 3  # the NaN is skipped


def test_label_sets_are_closed_and_match_the_code_that_produces_them():
    import relmon
    from relmon.analysis import DRIFT_FEATURES, ESTIMATORS
    from relmon.data.streams import INPUT_ERROR_REASONS as STREAM_REASONS
    from relmon.explain import canonical_method

    methods = {canonical_method(m) for m in relmon.available_methods() if m != "random"} | {"random"}
    assert set(METHOD_LABELS) == methods
    from relmon.jobs.calibrate_job import MEDIAN_LABEL

    assert set(ESTIMATOR_LABELS) == set(ESTIMATORS) | {MEDIAN_LABEL}  # + a calibration's median-of-best-3
    from relmon.analysis.drift import LOCATION_DRIFT_FEATURES

    assert tuple(DRIFT_FEATURE_LABELS) == tuple(DRIFT_FEATURES) + tuple(LOCATION_DRIFT_FEATURES)
    assert tuple(INPUT_ERROR_REASONS) == tuple(STREAM_REASONS)
    m = RelmonMetrics("m", "v", "s")
    for call in (
        lambda: m.set_method("lrp", aopc=1.0),
        lambda: m.set_estimate("mine", 1, 0, 1),
        lambda: m.set_drift({"pixels": 0.5}, False),
        lambda: m.add_input_errors({"oops": 1}),
        lambda: m.observe_aopc_relative("gradcam", [0.1]),
    ):
        with pytest.raises(ValueError, match="closed set"):
            call()
    with pytest.raises(ValueError, match="model_version"):
        RelmonMetrics("m", "", "s")


def _values(m: RelmonMetrics, name: str) -> dict:
    fam = families(exposition(m.registry))[name]
    return {tuple(sorted(set(s.labels.items()) - set(m.base.items()))): s.value for s in fam.samples}


def test_per_run_gauges_hold_the_last_run_and_the_default_estimator_is_unique():
    m = RelmonMetrics("m", "v", "s")
    m.add_input_errors({"decode_error": 2})
    m.set_run_inputs(10, {"decode_error": 2})
    m.add_input_errors({"decode_error": 2})
    m.set_run_inputs(12, {"decode_error": 2})  # the same bad file again: the gauge stays 2
    from relmon.export.metrics import INPUT_ERROR_REASONS

    assert _values(m, "relmon_run_input_errors") == {
        (("reason", r),): (2.0 if r == "decode_error" else 0.0) for r in INPUT_ERROR_REASONS
    }
    assert _values(m, "relmon_run_samples") == {(): 12.0}
    assert _values(m, "relmon_input_errors")[(("reason", "decode_error"),)] == 4.0  # the counter adds up
    m.set_default_estimator("atc")
    m.set_default_estimator("doc")
    assert _values(m, "relmon_default_estimator_info") == {(("estimator", "doc"), ("members", "")): 1.0}
    m.set_default_estimator("median_of_best3", ["atc", "doc", "mano"])  # a median names its members
    assert _values(m, "relmon_default_estimator_info") == {
        (("estimator", "median_of_best3"), ("members", "atc+doc+mano")): 1.0}
    with pytest.raises(ValueError, match="closed set"):
        m.set_default_estimator("mine")
    with pytest.raises(ValueError, match="closed set"):
        m.set_default_estimator("median_of_best3", ["atc", "mine"])
    with pytest.raises(ValueError, match=r"ratio in \[0, 1\]"):
        m.set_calibration_accuracy(87.5)
    with pytest.raises(ValueError, match="closed set"):
        m.set_run_inputs(1, {"oops": 1})


def test_metrics_never_use_the_global_registry():
    from prometheus_client import REGISTRY

    before = set(REGISTRY._names_to_collectors)
    RelmonMetrics("m", "v", "s")
    RelmonMetrics("m", "v", "s")  # a second instance does not clash either
    assert set(REGISTRY._names_to_collectors) == before


@pytest.mark.skipif(
    shutil.which("promtool") is None, reason="promtool (Debian package prometheus) not installed"
)
def test_promtool_check_metrics_passes_on_the_exposition():
    text = exposition(filled_metrics().registry)
    res = subprocess.run(
        ["promtool", "check", "metrics"], input=text, capture_output=True, text=True, timeout=30
    )
    assert res.returncode == 0 and not (res.stdout + res.stderr).strip(), res.stdout + res.stderr


# --------------------------------------------------------------------------------------------------
# outputs


def test_textfile_write_is_atomic(tmp_path, monkeypatch):
    path = tmp_path / "sub" / "relmon.prom"
    m = filled_metrics()
    renames = []
    real_rename = os.rename
    monkeypatch.setattr(os, "rename", lambda a, b: (renames.append((a, b)), real_rename(a, b))[1])
    write_textfile(m.registry, path)
    assert renames and Path(renames[0][0]).parent == path.parent and Path(renames[0][1]) == path
    assert "relmon_aopc{" in path.read_text()
    before = path.read_text()

    class Broken:
        def collect(self):
            raise RuntimeError("collector failed mid-write")

    bad = CollectorRegistry()
    bad.register(Broken())
    with pytest.raises(RuntimeError):
        write_textfile(bad, path)
    assert path.read_text() == before  # readers never see a partial file
    assert sorted(p.name for p in path.parent.iterdir()) == ["relmon.prom"]  # no temp file left


def test_push_retries_with_backoff_then_fails_clearly():
    port = free_port()  # nothing listens there
    waits = []
    with pytest.raises(PushError) as info:
        push(
            filled_metrics().registry,
            f"127.0.0.1:{port}",
            job="relmon",
            grouping_key={"stream": "s"},
            timeout=1,
            retries=2,
            backoff=0.25,
            sleep=waits.append,
        )
    msg = str(info.value)
    assert f"127.0.0.1:{port}" in msg and "3 attempt(s)" in msg and "'stream': 's'" in msg
    assert waits == [0.25, 0.5]


def test_http_endpoint_serves_and_stops():
    from urllib.request import urlopen

    m = filled_metrics()
    with serve_http(m.registry, port=0, addr="127.0.0.1") as ep:
        body = urlopen(ep.url, timeout=5).read().decode()
        assert "relmon_confidence_ratio" in body
    with pytest.raises(OSError):
        urlopen(ep.url, timeout=2)
    with pytest.raises(ValueError, match="port"):
        serve_http(m.registry, port=70000)


# --------------------------------------------------------------------------------------------------
# config


def test_config_errors_name_the_field_and_the_fix(tmp_path):
    with pytest.raises(ConfigError, match=r"'regoin'.*did you mean 'region'.*fix"):
        config_from_dict({"regoin": 7})
    with pytest.raises(ConfigError, match=r"'region'.*positive integer.*got 0.*fix: set region"):
        config_from_dict({"region": 0})
    with pytest.raises(ConfigError, match=r"'shift'.*known shifts"):
        config_from_dict({"shift": "fog"})
    with pytest.raises(ConfigError, match=r"'sample_rate'.*\(0, 1\]"):
        config_from_dict({"sample_rate": 1.5})
    with pytest.raises(ConfigError, match=r"watch: true needs input to be a folder"):
        config_from_dict({"watch": True})
    bad = tmp_path / "bad.yaml"
    bad.write_text("- a list\n")
    with pytest.raises(ConfigError, match="mapping"):
        load_config(bad)
    with pytest.raises(ConfigError, match="does not exist"):
        load_config(tmp_path / "missing.yaml")


def test_example_config_loads_and_flags_override(tmp_path):
    cfg = load_config(ROOT / "deploy" / "relmon.example.yaml")
    assert cfg.http_port == 9108 and cfg.methods == ("auto",) == type(cfg)().methods  # the shipped default (issue 21)
    parser = argparse.ArgumentParser()
    parser.add_argument("--config")
    add_config_flags(parser)
    args = parser.parse_args(
        [
            "--config",
            str(ROOT / "deploy" / "relmon.example.yaml"),
            "--region",
            "7",
            "--methods",
            "lrp",
            "sensitivity",
            "--watch",
            "--input",
            str(tmp_path),
            "--shift",
            "blur",
        ]
    )
    with pytest.raises(ConfigError, match="shift applies to input: sample only"):
        config_from_args(args)
    args.shift = "none"  # clears the file's shift
    cfg = config_from_args(args)
    assert cfg.shift is None
    assert cfg.region == 7 and cfg.methods == ("lrp", "sensitivity") and cfg.watch is True
    assert cfg.steps == 8  # from the file
    assert MonitorConfig().with_overrides({"http_port": "0"}).http_port == 0


# --------------------------------------------------------------------------------------------------
# the job, calibration and CLI


@pytest.fixture(scope="module")
def calibration(tmp_path_factory):
    from relmon.jobs import calibrate

    out = tmp_path_factory.mktemp("cal")
    cfg = MonitorConfig(
        **FAST,
        calibration_n=16,
        calibration_shifts=("gaussian_noise",),
        calibration_severities=(2, 5),
        estimators=("average_confidence", "atc", "regression_relevance"),
    )
    return calibrate(cfg, out)


def test_monitor_with_calibration_fills_every_metric(calibration, tmp_path):
    from relmon.jobs import MonitorJob

    cfg = MonitorConfig(
        **FAST,
        shift="contrast",
        severity=4,
        calibration=str(calibration.path),
        textfile=str(tmp_path / "m.prom"),
        records=str(tmp_path / "records"),
    )
    job = MonitorJob(cfg)
    summary = job.run()
    assert set(summary.estimates) == {"average_confidence", "atc", "regression_relevance"}
    from relmon.analysis import DRIFT_FEATURES

    # without suspect_regions: the seven features, not the location ones
    assert summary.drift_p_values is not None and set(summary.drift_p_values) == set(DRIFT_FEATURES)
    assert summary.scored == 16 and Path(summary.outputs["records"]).is_file()
    fams = families((tmp_path / "m.prom").read_text())
    missing = [
        n
        for n in TABLE
        if n not in LOCATION_METRICS and not any(s.name == n or s.name.startswith(n + "_") for f in fams.values() for s in f.samples)
    ]
    assert missing == ["relmon_unexplained_shift"]  # issue 19: only with suspect_regions (the gate)
    ts = next(s.value for s in fams["relmon_calibration_timestamp_seconds"].samples)
    assert ts == pytest.approx(calibration.timestamp)
    acc = next(s.value for s in fams["relmon_calibration_accuracy_ratio"].samples)
    assert acc == pytest.approx(calibration.meta["window_accuracy"]["clean"])
    default = [s.labels["estimator"] for s in fams["relmon_default_estimator_info"].samples if s.value == 1]
    assert default == [calibration.meta.get("default_estimator", "average_confidence")]
    assert next(s.value for s in fams["relmon_run_samples"].samples) == 16
    assert "regression_relevance" in summary.table()


def test_calibration_for_another_model_version_is_refused_or_flagged(calibration, tmp_path):
    from relmon.jobs import CalibrationMismatchError, MonitorJob, load_calibration

    other = tmp_path / "cal"
    cal = load_calibration(calibration.path)  # a hand edit would break the manifest: save a changed copy
    cal.meta["model_version"] = "0ld"
    cal.save(other)
    cfg = MonitorConfig(**FAST, calibration=str(other))
    with pytest.raises(CalibrationMismatchError, match=r"version '0ld'.*allow_version_mismatch"):
        MonitorJob(cfg)
    job = MonitorJob(cfg.with_overrides({"allow_version_mismatch": True}))
    assert job.version_mismatch is True
    with pytest.raises(CalibrationMismatchError, match="AOPC is not comparable"):
        MonitorJob(MonitorConfig(**{**FAST, "region": 4}, calibration=str(calibration.path)))
    assert (
        run_cli(["monitor", "--region", "7", "--steps", "8", "--n", "16", "--calibration", str(other)]) == 3
    )


def test_cli_push_failure_exits_4_and_keeps_the_summary(tmp_path, capsys):
    prom = tmp_path / "out.prom"
    rc = run_cli(
        [
            "monitor",
            "--n",
            "16",
            "--region",
            "7",
            "--steps",
            "8",
            "--no-progress",
            "--pushgateway",
            f"127.0.0.1:{free_port()}",
            "--push-retries",
            "1",
            "--push-backoff",
            "0.05",
            "--push-timeout",
            "1",
            "--textfile",
            str(prom),
        ]
    )
    out, err = capsys.readouterr()
    assert rc == 4
    assert "could not push to the Pushgateway" in err
    assert "lrp:epsilon_0_01" in out and "average_confidence" in out  # the summary is not lost
    assert "relmon_aopc{" in prom.read_text()  # the textfile was written before the push


def test_cli_usage_and_input_errors(tmp_path, capsys):
    with pytest.raises(SystemExit) as info:
        run_cli(["monitor", "--no-such-flag"])
    assert info.value.code == 2
    assert run_cli(["monitor", "--region", "zero"]) == 3
    assert "config field 'region'" in capsys.readouterr().err
    assert run_cli(["monitor", "--input", str(tmp_path / "nowhere")]) == 3
    assert run_cli(["serve", "--n", "16", "--http-port", "0", "--http-addr", "256.0.0.1"]) == 4
    for command in ("calibrate", "monitor", "serve"):
        with pytest.raises(SystemExit) as info:
            run_cli([command, "--help"])
        assert info.value.code == 0
        assert "Exit codes" in capsys.readouterr().out


def test_cli_calibrate_writes_a_calibration_that_monitor_uses(tmp_path, capsys):
    out = tmp_path / "cal"
    flags = ["--region", "7", "--steps", "8", "--batch-size", "32"]
    rc = run_cli(
        [
            "calibrate",
            "--out",
            str(out),
            *flags,
            "--calibration-n",
            "16",
            "--calibration-shifts",
            "blur",
            "--calibration-severities",
            "2",
            "5",
            "--estimators",
            "average_confidence",
            "doc",
        ]
    )
    assert rc == 0
    text = capsys.readouterr().out
    assert "blur/5" in text and "clean" in text
    meta = json.loads((out / "calibration.json").read_text())
    assert meta["estimators"] == {
        "average_confidence": "estimators/average_confidence.json",
        "doc": "estimators/doc.json",
    }
    assert run_cli(["monitor", *flags, "--n", "16", "--calibration", str(out), "--json"]) == 0
    summary = json.loads(capsys.readouterr().out)
    assert set(summary["estimates"]) == {"average_confidence", "doc"}
    assert summary["drift_alarm"] in (True, False)
