"""The relmon command, run as a user would."""

import subprocess
import sys

import pytest
from PIL import Image

from relmon.cli import main


def test_demo_writes_grid_and_summary(tmp_path, capsys):
    rc = main(["demo", "--methods-only", "--n", "16", "--grid", "3", "--steps", "8", "--out", str(tmp_path),
               "--methods", "lrp", "sensitivity", "random"])
    assert rc == 0
    out = capsys.readouterr().out
    assert "lrp:epsilon_plus_flat" in out and "sensitivity" in out and "accuracy on them" in out
    assert "AOPC" in out and "L = 8 steps" in out
    with Image.open(tmp_path / "heatmaps.png") as img:
        width, height = img.size
    assert width > height > 100  # 3 rows, 4 columns


@pytest.mark.slow
def test_demo_runs_the_main_job_without_make(tmp_path, capsys):
    """`relmon demo` calibrates (once), monitors a shifted unlabelled window and prints its table."""
    cal = tmp_path / "cal"
    args = ["demo", "--out", str(tmp_path / "out"), "--calibration", str(cal), "--calibration-n", "10",
            "--calibration-shifts", "gaussian_noise", "--window-n", "24", "--n", "4", "--grid", "2", "--steps", "4",
            "--methods", "lrp"]
    assert main(args) == 0
    out = capsys.readouterr().out
    assert "[1/3] calibrating fmnist_cnn" in out and (cal / "calibration.json").is_file()
    assert "shifted by gaussian_noise (severity 3)" in out and "24 of 24 inputs scored" in out
    assert "<- headline" in out and "(true accuracy, labels known)" in out
    prom = (tmp_path / "out" / "relmon.prom").read_text()
    assert 'relmon_estimated_accuracy_ratio{' in prom and 'stream="default"' in prom
    assert list((tmp_path / "out" / "records").rglob("*.parquet")) and (tmp_path / "out" / "heatmaps.png").is_file()
    made = (cal / "calibration.json").stat().st_mtime_ns
    assert main(args) == 0  # the second run reuses the calibration that fits
    assert f"[1/3] using the calibration in {cal}" in capsys.readouterr().out
    assert (cal / "calibration.json").stat().st_mtime_ns == made


def test_bad_method_exits_with_input_error(tmp_path, capsys):
    rc = main(["demo", "--methods-only", "--n", "4", "--out", str(tmp_path), "--methods", "gradcam"])
    assert rc == 3
    assert "unknown method 'gradcam'" in capsys.readouterr().err
    assert not (tmp_path / "heatmaps.png").exists()


def test_console_script_help():
    result = subprocess.run([sys.executable, "-m", "relmon", "--help"], capture_output=True, text=True, check=True)
    assert "demo" in result.stdout and "Exit codes" in result.stdout
    result = subprocess.run([sys.executable, "-m", "relmon", "methods"], capture_output=True, text=True, check=True)
    assert "lrp:epsilon_gamma_box" in result.stdout.split()


def test_json_stdout_holds_only_json_even_with_a_progress_bar(capsys):
    import json

    rc = main(["monitor", "--json", "--progress", "--n", "8", "--steps", "4", "--region", "7", "--batch-size", "4"])
    assert rc == 0
    captured = capsys.readouterr()
    summary = json.loads(captured.out)  # the whole of stdout is one JSON document
    assert summary["scored"] == 8 and summary["model"] == "fmnist_cnn"
    assert "Scoring" in captured.err and "/2 " in captured.err  # the runner's progress bar went to stderr


def test_calibrate_input_flag_points_at_calibration_data(tmp_path, capsys):
    assert main(["calibrate", "--input", str(tmp_path), "--out", str(tmp_path / "cal")]) == 3
    err = capsys.readouterr().err
    assert "reads labelled data from calibration_data" in err and f"--calibration-data {tmp_path}" in err
    assert not (tmp_path / "cal").exists()


def test_serve_json_prints_one_json_document_per_line(capsys):
    import json

    rc = main(["serve", "--json", "--max-iterations", "1", "--http-addr", "127.0.0.1", "--http-port", "0",
               "--n", "8", "--steps", "4", "--region", "7", "--interval-seconds", "0.1"])
    assert rc == 0
    captured = capsys.readouterr()
    docs = [json.loads(line) for line in captured.out.splitlines()]
    assert docs[0]["scored"] == 8 and docs[-1] == {"runs": 1, "failures": 0, "empty": 0, "interrupted": False}
    assert "serving metrics at http://127.0.0.1:" in captured.err


def test_empty_ok_makes_an_empty_window_exit_0(tmp_path, capsys):
    """For a Kubernetes CronJob: a run with nothing to score must not be a failed Job (deploy/k8s)."""
    from relmon.lightning.monitor import selection_hash

    assert all(selection_hash(0, str(i)) >= 0.01 for i in range(3))  # sample_rate 0.01 selects none of them
    args = ["monitor", "--n", "3", "--region", "7", "--steps", "8", "--sample-rate", "0.01"]
    assert main([*args, "--textfile", str(tmp_path / "a.prom")]) == 6
    capsys.readouterr()
    assert main([*args, "--textfile", str(tmp_path / "b.prom"), "--empty-ok"]) == 0
    out, err = capsys.readouterr()
    assert "empty window" in out and "(--empty-ok: exit 0)" in err
    # still not a success: the last-success time is not advanced (written as 0, as without the flag)
    from prometheus_client.parser import text_string_to_metric_families

    values = {s.name: s.value for fam in text_string_to_metric_families((tmp_path / "b.prom").read_text())
              for s in fam.samples}
    assert values.get("relmon_last_success_timestamp_seconds", 0.0) == 0.0 and values["relmon_run_duration_seconds"] > 0
