"""What ``relmon monitor`` hands machines and people (issue 21 item 3): window ids unique per run,
``--json`` estimates as objects, an error object and the documented exit code on failures."""

import json

import pandas as pd

from relmon.cli import main
from relmon.exitcodes import EXIT_EMPTY, EXIT_INPUT
from tests.conftest import write_sample_pngs

FAST = ["--steps", "4", "--region", "7", "--batch-size", "4", "--methods", "lrp"]


def _monitor(capsys, *args):
    rc = main(["monitor", "--json", *FAST, *args])
    captured = capsys.readouterr()
    return rc, json.loads(captured.out), captured.err


def test_two_runs_of_one_folder_get_two_window_ids_and_estimates_are_objects(tmp_path, capsys):
    write_sample_pngs(tmp_path / "in", 8)
    common = ["--input", str(tmp_path / "in"), "--stream", "cam", "--records", str(tmp_path / "rec")]
    rc1, first, _ = _monitor(capsys, *common)
    rc2, second, _ = _monitor(capsys, *common)
    assert rc1 == rc2 == 0
    assert len(first["window_ids"]) == len(second["window_ids"]) == 1
    assert first["window_ids"] != second["window_ids"]  # not "cam:0" on every run
    assert all(w.startswith("cam:20") for w in first["window_ids"] + second["window_ids"])  # stream + start
    records = pd.concat([pd.read_parquet(p) for p in sorted((tmp_path / "rec").rglob("*.parquet"))])
    assert sorted(records["window_id"].unique()) == sorted(first["window_ids"] + second["window_ids"])
    # sample ids relative to the input root, the root recorded once per run (--json and the summary file)
    assert sorted(set(records["sample_id"])) == [f"img{i:04d}.png" for i in range(8)]
    assert first["input_root"] == second["input_root"] == str((tmp_path / "in").resolve())
    docs = [json.loads(p.read_text()) for p in sorted((tmp_path / "rec").rglob("*.summary.json"))]
    assert [d["run"]["input_root"] for d in docs] == [first["input_root"]] * 2
    for summary in (first, second):
        (name, est), = summary["estimates"].items()  # no calibration: the baseline only
        assert set(est) == {"estimate", "lower", "upper"}
        assert 0 <= est["lower"] <= est["estimate"] <= est["upper"] <= 1


def test_an_empty_folder_exits_6_with_an_error_object(tmp_path, capsys):
    (tmp_path / "in").mkdir()
    (tmp_path / "in" / "notes.txt").write_text("not an image")
    rc, out, err = _monitor(capsys, "--input", str(tmp_path / "in"))
    assert rc == EXIT_EMPTY == 6
    assert set(out) == {"error"} and out["error"]["code"] == 6
    assert out["error"]["message"].startswith("no images found under") and "1 other file" in out["error"]["message"]
    assert "--empty-ok" in out["error"]["fix"] and "no images found" in err
    rc, out, err = _monitor(capsys, "--input", str(tmp_path / "in"), "--empty-ok")
    assert rc == 0 and out["scored"] == 0


def test_a_missing_folder_exits_3_with_an_error_object(tmp_path, capsys):
    rc, out, err = _monitor(capsys, "--input", str(tmp_path / "nowhere"))
    assert rc == EXIT_INPUT == 3
    assert out["error"]["code"] == 3 and "does not exist" in out["error"]["message"]
    assert "does not exist" in err
