"""End to end with a model relmon does not ship: a small BatchNorm CNN defined here (as a factory in a
module written to a temporary folder), trained here on digits, calibrated by ``relmon calibrate`` from
a YAML config on a class-folder tree of PNGs, then ``relmon monitor`` on an unlabelled folder —
as a user would, through the real CLI in fresh processes."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
import torch
import yaml
from PIL import Image

ROOT = Path(__file__).resolve().parents[1]
CLASSES = ["zero", "one", "two", "three", "four", "five", "six", "seven", "eight", "nine"]
MEAN, STD = 0.25, 0.35

USERNET = '''
import torch
from torch import nn


class DigitNet(nn.Module):
    def __init__(self, num_classes=10, width=8):
        super().__init__()
        self.features = nn.Sequential(
            nn.Conv2d(1, width, 3, padding=1), nn.BatchNorm2d(width), nn.ReLU(), nn.MaxPool2d(2),
            nn.Conv2d(width, 2 * width, 3, padding=1), nn.BatchNorm2d(2 * width), nn.ReLU(), nn.MaxPool2d(2),
        )
        self.classifier = nn.Linear(2 * width * 4 * 4, num_classes)

    def forward(self, x):
        return self.classifier(torch.flatten(self.features(x), 1))


def build(num_classes=10, width=8):
    return DigitNet(num_classes, width)
'''


def _digits_16():
    """sklearn digits upscaled to 16x16 and quantised to uint8 (what the PNGs hold)."""
    from sklearn.datasets import load_digits

    d = load_digits()
    x = torch.from_numpy(d.images / 16.0).float().unsqueeze(1)
    x = torch.nn.functional.interpolate(x, size=(16, 16), mode="bilinear", align_corners=False)
    u8 = (x.clamp(0, 1) * 255).round().to(torch.uint8)
    return u8, d.target


def _run(args, env, check=True):
    proc = subprocess.run(
        [sys.executable, "-m", "relmon", *args], capture_output=True, text=True, env=env, timeout=240
    )
    if check and proc.returncode != 0:
        raise AssertionError(f"relmon {args} exited {proc.returncode}\nstdout:{proc.stdout}\nstderr:{proc.stderr}")
    return proc


@pytest.fixture(scope="module")
def user_project(tmp_path_factory):
    tmp = tmp_path_factory.mktemp("yourmodel")
    (tmp / "usernet.py").write_text(USERNET)
    sys.path.insert(0, str(tmp))
    try:
        import usernet
    finally:
        sys.path.remove(str(tmp))
    u8, y = _digits_16()
    g = torch.Generator().manual_seed(0)
    order = torch.randperm(len(y), generator=g).numpy()
    train, labelled, unlabelled = order[:1000], order[1000:1240], order[1240:1300]

    torch.manual_seed(0)
    model = usernet.build(num_classes=10)
    x_train = (u8[train].float() / 255 - MEAN) / STD
    y_train = torch.from_numpy(y[train]).long()
    opt = torch.optim.Adam(model.parameters(), lr=3e-3)
    model.train()
    for _ in range(4):  # a few seconds on 2 cores
        for i in range(0, len(train), 50):
            opt.zero_grad()
            loss = torch.nn.functional.cross_entropy(model(x_train[i : i + 50]), y_train[i : i + 50])
            loss.backward()
            opt.step()
    model.eval()
    torch.save(model.state_dict(), tmp / "weights.pt")

    for i in labelled:
        folder = tmp / "labelled" / CLASSES[y[i]]
        folder.mkdir(parents=True, exist_ok=True)
        Image.fromarray(u8[i, 0].numpy()).save(folder / f"img_{i:04d}.png")
    (tmp / "unlabelled").mkdir()
    for i in unlabelled:
        Image.fromarray(u8[i, 0].numpy()).save(tmp / "unlabelled" / f"img_{i:04d}.png")

    config = {
        "model": "usernet:build",
        "model_kwargs": {"num_classes": 10, "width": 8},
        "checkpoint": str(tmp / "weights.pt"),
        "preprocessing": {"mean": [MEAN], "std": [STD], "low": 0.0, "high": 1.0},
        "classes": CLASSES,
        "model_name": "digits-cnn",
        "calibration_data": str(tmp / "labelled"),
        "input": str(tmp / "unlabelled"),
        "channels": 1,
        "methods": ["lrp"],
        "region": 4,
        "steps": 15,
        "batch_size": 64,
        "calibration_n": 60,
        "calibration_shifts": ["gaussian_noise", "blur", "contrast"],
        "calibration_severities": [4],
        "estimators": ["average_confidence", "atc"],
        "records": str(tmp / "records"),
    }
    (tmp / "relmon.yaml").write_text(yaml.safe_dump(config))
    env = {
        **os.environ,
        "PYTHONPATH": os.pathsep.join([str(ROOT), str(tmp)]),
        "OMP_NUM_THREADS": "1",
    }
    cal = _run(["calibrate", "--config", str(tmp / "relmon.yaml"), "--out", str(tmp / "cal"), "--json"], env)
    runs = [
        _run(["monitor", "--config", str(tmp / "relmon.yaml"), "--calibration", str(tmp / "cal"), "--json"], env),
        _run(
            ["monitor", "--config", str(tmp / "relmon.yaml"), "--calibration", str(tmp / "cal"), "--json",
             "--progress"],
            env,
        ),
    ]
    return {"tmp": tmp, "model": model, "u8": u8, "y": y, "cal": cal, "runs": runs, "env": env,
            "labelled": labelled, "unlabelled": unlabelled}


def test_calibration_on_the_users_labelled_folder(user_project):
    p = user_project
    meta = json.loads(p["cal"].stdout)  # --json: stdout is only JSON
    assert meta["model"] == "digits-cnn"
    assert meta["classes"] == CLASSES
    assert meta["data"]["kind"] == "folder" and meta["data"]["n_images"] == len(p["labelled"])
    assert len(meta["data"]["listing_sha256"]) == 64
    assert meta["windows"] == ["clean", "gaussian_noise/4", "blur/4", "contrast/4"]
    assert meta["n_per_window"] == 60 and meta["windows_reuse_images"] is False
    assert meta["settings"]["steps"] == 15 and meta["preprocessing"]["mean"] == [MEAN]

    # the clean window's accuracy equals the accuracy computed here from the folder labels, with the
    # images decoded independently of relmon
    ref = pd.read_parquet(p["tmp"] / "cal" / "reference.parquet")
    ids = sorted(ref["sample_id"].unique())
    assert len(ids) == 60
    correct = []
    for sid in ids:
        cls, name = Path(sid).parts
        img = np.asarray(Image.open(p["tmp"] / "labelled" / cls / name), dtype=np.float32) / 255
        x = (torch.from_numpy(img)[None, None] - MEAN) / STD
        with torch.no_grad():
            pred = int(p["model"](x).argmax(1))
        correct.append(pred == CLASSES.index(cls))
    truth = float(np.mean(correct))
    assert 0.5 < truth < 1.0  # trained, not perfect: the comparison is informative
    assert meta["window_accuracy"]["clean"] == pytest.approx(truth, abs=1e-12)
    # the shifted windows hurt accuracy (the calibration spans a range of accuracies)
    assert min(meta["window_accuracy"].values()) < truth


def test_monitor_on_an_unlabelled_folder_uses_the_calibration(user_project):
    for proc in user_project["runs"]:
        summary = json.loads(proc.stdout)  # only JSON on stdout, also with --progress
        assert summary["model"] == "digits-cnn"
        assert summary["model_version"] == json.loads(user_project["cal"].stdout)["model_version"]
        assert summary["seen"] == summary["scored"] == len(user_project["unlabelled"])
        assert set(summary["estimates"]) == {"average_confidence", "atc"}
        assert summary["drift_p_values"] is not None
        assert summary["accuracy"] is None  # unlabelled
        assert "Traceback" not in proc.stderr


def test_two_consecutive_monitor_runs_are_both_kept(user_project):
    """Needs unique record names per run (engineer B's records naming): both runs' rows survive."""
    files = sorted((user_project["tmp"] / "records").rglob("*.parquet"))
    frame = pd.concat([pd.read_parquet(f) for f in files], ignore_index=True)
    per_run = len(user_project["unlabelled"])  # one method: one row per sample and method (+ random)
    assert len(frame) >= 2 * per_run, f"the second run replaced the first one's records: {files}"
    assert (frame["sample_id"].value_counts() == 2 * frame["method"].nunique()).all()


def test_a_user_model_without_labelled_data_is_refused(user_project, capsys):
    from relmon.cli import main

    cfg = yaml.safe_load((user_project["tmp"] / "relmon.yaml").read_text())
    del cfg["calibration_data"]
    path = user_project["tmp"] / "nodata.yaml"
    path.write_text(yaml.safe_dump(cfg))
    assert main(["calibrate", "--config", str(path), "--out", str(user_project["tmp"] / "x")]) == 3
    err = capsys.readouterr().err
    assert "not an embedded model" in err and "fix: set calibration_data" in err
    assert not (user_project["tmp"] / "x").exists()


def test_class_names_that_do_not_match_the_model_are_refused(user_project, capsys):
    from relmon.cli import main

    cfg = yaml.safe_load((user_project["tmp"] / "relmon.yaml").read_text())
    path = user_project["tmp"] / "badclasses.yaml"

    def calibrate_with(classes) -> str:
        path.write_text(yaml.safe_dump({**cfg, "classes": classes}))
        sys.path.insert(0, str(user_project["tmp"]))
        try:
            assert main(["calibrate", "--config", str(path), "--out", str(user_project["tmp"] / "y")]) == 3
        finally:
            sys.path.remove(str(user_project["tmp"]))
        return capsys.readouterr().err

    err = calibrate_with(CLASSES[:9] + ["ten", "eleven"])  # 11 names for a 10-output model; 'nine' missing
    assert "class(es) ['nine'] that are not in the configured classes" in err
    err = calibrate_with(CLASSES + ["ten"])
    assert "names 11 classes" in err and "the model outputs 10 class scores" in err


def test_the_lightning_runner_agrees_and_a_fraction_is_checked_on_the_users_model(user_project, capsys):
    """The user's model and images: `runner: lightning` gives the default (plain) runner's records and
    estimates; a fraction that resolves to another L than the calibration's (0.16 of the 16 regions of
    4 px on 16x16: L = 3, calibrated with 15) is refused with the fix."""
    from relmon.cli import main
    from relmon.lightning import read_records

    tmp = user_project["tmp"]
    args = ["monitor", "--config", str(tmp / "relmon.yaml"), "--calibration", str(tmp / "cal")]
    sys.path.insert(0, str(tmp))
    try:
        rc = main([*args, "--json", "--runner", "lightning", "--records", str(tmp / "rec_lightning")])
        out = capsys.readouterr().out
        rc_fraction = main([*args, "--steps", "none", "--fraction", "0.16", "--records", str(tmp / "rec_f")])
        err = capsys.readouterr().err
    finally:
        sys.path.remove(str(tmp))
    assert rc == 0
    plain, lightning = json.loads(user_project["runs"][0].stdout), json.loads(out)
    for name, value in plain["estimates"].items():
        assert lightning["estimates"][name] == pytest.approx(value, abs=1e-9), name
    first_run = sorted((tmp / "records").rglob("*.parquet"))[0]
    keys = ["sample_id", "method"]
    a = pd.read_parquet(first_run).drop(columns=["run_id", "run_time"]).sort_values(keys).reset_index(drop=True)
    b = read_records(tmp / "rec_lightning").drop(columns=["run_id", "run_time"]).sort_values(keys).reset_index(drop=True)
    assert a["window_id"].nunique() == b["window_id"].nunique() == 1  # one window per run, named by the run
    a, b = a.drop(columns="window_id"), b.drop(columns="window_id")
    pd.testing.assert_frame_equal(a, b, check_exact=False, rtol=1e-6)
    assert rc_fraction == 3, err
    assert "'steps': 15" in err and "'steps': 3" in err and "re-run 'relmon calibrate'" in err
    assert not (tmp / "rec_f").exists()
