"""The config that declares a user's model, its loading, the labelled-data readers and the Python API."""

from __future__ import annotations

import argparse
import sys
import warnings
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
import torch
from PIL import Image
from torch import nn

import relmon
from relmon.config import ConfigError, MonitorConfig, config_from_dict, load_config
from relmon.data.labelled import LabelledDataError, read_labelled
from relmon.jobs.calibrate_job import CalibrationDataWarning, plan_windows
from relmon.jobs.model import load_job_model
from relmon.models import load_lightning_checkpoint, load_model

FACTORIES = '''
import torch
from torch import nn


def tiny(num_classes=3, channels=1):
    return nn.Sequential(nn.Conv2d(channels, 4, 3), nn.ReLU(), nn.Flatten(), nn.LazyLinear(num_classes))


def linear(num_classes=3):
    torch.manual_seed(0)
    return nn.Sequential(nn.Flatten(), nn.Linear(64, num_classes))


def not_a_model():
    return 42


class NotAModule:
    pass
'''


@pytest.fixture
def factories(tmp_path, monkeypatch):
    mod = tmp_path / "relmon_test_factories.py"
    mod.write_text(FACTORIES)
    monkeypatch.syspath_prepend(str(tmp_path))
    sys.modules.pop("relmon_test_factories", None)
    yield "relmon_test_factories"
    sys.modules.pop("relmon_test_factories", None)


# --------------------------------------------------------------------------------------------------
# config file and field errors


def test_config_path_that_is_a_directory_or_not_text_is_a_clear_error(tmp_path, monkeypatch):
    with pytest.raises(ConfigError, match=r"is a directory, not a YAML file; fix: pass a readable YAML"):
        load_config(tmp_path)
    binary = tmp_path / "model.pt"
    binary.write_bytes(b"\x80\x02\xff\xfe binary")
    with pytest.raises(ConfigError, match=r"is not UTF-8 text .*fix: pass a readable YAML"):
        load_config(binary)
    ok = tmp_path / "ok.yaml"
    ok.write_text("region: 7\n")

    def denied(self, *a, **k):
        raise PermissionError(13, "Permission denied")

    monkeypatch.setattr(Path, "read_text", denied)  # root reads any file: simulate a mode-000 file
    with pytest.raises(ConfigError, match=r"cannot be read \(permission denied\)"):
        load_config(ok)


def test_cli_config_directory_exits_3_with_the_message(tmp_path, capsys):
    from relmon.cli import main

    assert main(["monitor", "--config", str(tmp_path)]) == 3
    err = capsys.readouterr().err
    assert "is a directory, not a YAML file" in err and "Traceback" not in err


def test_unsupported_accelerator_is_refused_with_the_choices():
    with pytest.raises(ConfigError, match=r"'tpu' is not supported: relmon runs on cpu, gpu, cuda, mps, auto"):
        config_from_dict({"accelerator": "tpu"})
    assert config_from_dict({"accelerator": "GPU"}).accelerator == "gpu"


def test_user_model_fields_are_validated():
    cfg = config_from_dict(
        {
            "model": "pkg.mod:build",
            "model_kwargs": {"num_classes": 5},
            "preprocessing": {"mean": [0.4, 0.5, 0.6], "std": 0.2, "low": 0, "high": 1},
            "classes": [0, 1, 2, 3, 4],
            "window": "mtime",
            "window_seconds": 600,
            "step_stride": 2,
        }
    )
    assert cfg.classes == ("0", "1", "2", "3", "4")
    prep = cfg.preprocessing_spec()
    assert prep.mean == (0.4, 0.5, 0.6) and prep.std == (0.2,)
    assert cfg.max_batch_bytes == 256 * 2**20
    with pytest.raises(ConfigError, match=r"'preprocessing'.*std must be positive"):
        config_from_dict({"model": "a:b", "preprocessing": {"std": [0.0]}})
    with pytest.raises(ConfigError, match=r"unknown key\(s\) \['scale'\]"):
        config_from_dict({"model": "a:b", "preprocessing": {"scale": 2}})
    with pytest.raises(ConfigError, match=r"low must be below high"):
        config_from_dict({"model": "a:b", "preprocessing": {"low": 1, "high": 0}})
    with pytest.raises(ConfigError, match=r"model_kwargs applies to a 'package.module:factory' model"):
        config_from_dict({"model_kwargs": {"a": 1}})
    with pytest.raises(ConfigError, match=r"'classes' names \['a'\] more than once"):
        config_from_dict({"classes": ["a", "b", "a"]})
    with pytest.raises(ConfigError, match=r"'window'.*got 'count'"):
        config_from_dict({"window": "count"})
    with pytest.raises(ConfigError, match=r"lightning_module needs checkpoint"):
        config_from_dict({"model": "a:b", "lightning_module": "a:C"})
    # a flag gives a mapping as YAML text
    assert MonitorConfig(model="a:b").with_overrides({"model_kwargs": "{num_classes: 7}"}).model_kwargs == {
        "num_classes": 7
    }


def test_every_field_is_documented_in_the_example_config():
    from relmon.config import FIELDS

    text = (Path(__file__).resolve().parents[1] / "deploy" / "relmon.example.yaml").read_text()
    missing = [name for name in FIELDS if f"{name}:" not in text]
    assert not missing, f"deploy/relmon.example.yaml does not document {missing}"


# --------------------------------------------------------------------------------------------------
# loading the user's model


def test_factory_must_be_a_function_or_module_class_returning_a_module(factories):
    for spec, msg in [
        ("builtins:exit", r"is a Quitter, not a Python function or nn.Module class"),
        ("builtins:eval", r"is a built-in, not a Python function"),
        ("os:sep", r"is a non-callable str"),
        (f"{factories}:NotAModule", r"not a torch.nn.Module subclass"),
        (f"{factories}:not_a_model", r"returned a int, expected a torch.nn.Module"),
    ]:
        cfg = MonitorConfig(model=spec, preprocessing={"mean": [0.5], "std": [0.5]})
        with pytest.raises(TypeError, match=msg):
            load_job_model(cfg)
    with pytest.raises(TypeError, match=r"could not be called with model_kwargs \{'depth': 3\}"):
        load_job_model(MonitorConfig(model=f"{factories}:linear", model_kwargs={"depth": 3}))


def test_factory_kwargs_preprocessing_labels_and_weights_hash(factories, tmp_path):
    spec = f"{factories}:linear"
    cfg = MonitorConfig(model=spec, model_kwargs={"num_classes": 4}, preprocessing={"mean": 0.5, "std": 0.25})
    model = load_job_model(cfg)
    assert model[1].out_features == 4
    assert relmon.models.get_preprocessing(model).mean == (0.5,)
    info = relmon.models.model_info(model)
    assert info.name == "linear" and len(info.version) == 12
    assert relmon.models.model_info(load_job_model(cfg)).version == info.version  # same weights, same hash
    other = load_job_model(cfg)
    with torch.no_grad():
        other[1].weight[0, 0] += 1e-3
    assert relmon.models.weights_hash(other) != info.version
    named = load_job_model(MonitorConfig(**{**cfg.__dict__, "model_name": "digits", "model_version": "v7"}))
    assert relmon.models.model_info(named) == relmon.models.ModelInfo("digits", "v7")
    with pytest.raises(ValueError, match=r"declares no preprocessing.*fix: set preprocessing"):
        load_job_model(MonitorConfig(model=spec))
    with pytest.raises(ValueError, match=r"names 3 classes .* but the model outputs 4"):
        load_job_model(MonitorConfig(**{**cfg.__dict__, "classes": ("a", "b", "c"), "image_size": 8}))


def test_pickled_objects_are_refused_without_torchs_weights_only_false_advice(tmp_path, factories):
    bad = tmp_path / "pickled.ckpt"
    torch.save(argparse.Namespace(lr=0.1), bad)
    with pytest.raises(ValueError) as err:
        load_lightning_checkpoint("pytorch_lightning:LightningModule", bad)
    msg = str(err.value)
    assert "holds pickled Python object(s) (argparse.Namespace)" in msg and "never unpickles" in msg
    assert "weights_only=False" not in msg and "weights_only` set to `False" not in msg
    with pytest.raises(ValueError) as err:
        load_model(f"{factories}:linear", bad)
    assert "argparse.Namespace" in str(err.value) and "weights_only=False" not in str(err.value)
    assert "fix: save the weights with torch.save(model.state_dict(), path)" in str(err.value)
    junk = tmp_path / "junk.pt"
    junk.write_bytes(b"not a checkpoint at all")
    with pytest.raises(ValueError, match=r"could not read .*junk.pt as a weights-only checkpoint") as err:
        load_model(f"{factories}:linear", junk)
    assert "(UnpicklingError: Unsupported operand 110)" in str(err.value)  # torch's reason, not its advice
    assert "weights_only" not in str(err.value).replace("weights_only=True", "")


def test_lightning_checkpoint_from_the_config(tmp_path):
    import pytorch_lightning as pl

    class Lit(pl.LightningModule):
        def __init__(self, num_classes=3):
            super().__init__()
            self.save_hyperparameters()
            self.net = nn.Sequential(nn.Flatten(), nn.Linear(16, num_classes))

        def forward(self, x):
            return self.net(x)

    mod = sys.modules[__name__]
    mod.Lit = Lit  # importable as tests.test_config:Lit / this module's name
    trainer = pl.Trainer(max_epochs=0, logger=False, enable_checkpointing=False, enable_progress_bar=False,
                         enable_model_summary=False)
    trainer.strategy.connect(Lit(num_classes=5))
    ckpt = tmp_path / "m.ckpt"
    trainer.save_checkpoint(ckpt)
    cfg = MonitorConfig(model=f"{__name__}:Lit", lightning_module=f"{__name__}:Lit", checkpoint=str(ckpt),
                        preprocessing={"mean": 0.0, "std": 1.0}, classes=tuple("abcde"), image_size=4)
    model = load_job_model(cfg)
    assert isinstance(model, nn.Sequential) and model[1].out_features == 5  # Lit's `net`, 5 classes from hparams
    assert relmon.models.model_info(model).name == "Lit"


# --------------------------------------------------------------------------------------------------
# labelled data


def _png(path: Path, value: int, size: int = 8):
    path.parent.mkdir(parents=True, exist_ok=True)
    Image.fromarray(np.full((size, size), value, dtype=np.uint8)).save(path)


def test_class_folders_and_manifests_give_the_same_labels(tmp_path):
    for cls, value in [("cat", 10), ("dog", 200)]:
        for i in range(3):
            _png(tmp_path / "tree" / cls / f"{i}.png", value + i)
    data = read_labelled(tmp_path / "tree", classes=["bird", "cat", "dog"])
    assert data.classes == ["bird", "cat", "dog"]
    assert data.labels.tolist() == [1, 1, 1, 2, 2, 2]
    assert data.images.shape == (6, 1, 8, 8)
    assert float(data.images[3, 0, 0, 0]) == pytest.approx(200 / 255)
    assert data.source["kind"] == "folder" and data.source["n_images"] == 6

    rows = [{"path": f"tree/{cls}/{i}.png", "label": cls} for cls in ("cat", "dog") for i in range(3)]
    pd.DataFrame(rows).to_csv(tmp_path / "m.csv", index=False)
    by_name = read_labelled(tmp_path / "m.csv", classes=["bird", "cat", "dog"])
    assert by_name.labels.tolist() == data.labels.tolist()
    assert torch.equal(by_name.images, data.images)
    pd.DataFrame([{**r, "label": 1 + (r["label"] == "dog")} for r in rows]).to_parquet(tmp_path / "m.parquet")
    by_index = read_labelled(tmp_path / "m.parquet", classes=["bird", "cat", "dog"])
    assert by_index.labels.tolist() == data.labels.tolist()
    assert by_index.source["listing_sha256"] == by_name.source["listing_sha256"]


def test_labelled_data_errors_name_the_fix(tmp_path):
    _png(tmp_path / "tree" / "cat" / "0.png", 1)
    _png(tmp_path / "tree" / "wolf" / "0.png", 1, size=9)
    with pytest.raises(LabelledDataError, match=r"class\(es\) \['wolf'\] that are not in the configured classes"):
        read_labelled(tmp_path / "tree", classes=["cat", "dog"])
    with pytest.raises(LabelledDataError, match=r"differ in size.*fix: set image_size"):
        read_labelled(tmp_path / "tree")
    assert read_labelled(tmp_path / "tree", image_size=8).images.shape == (2, 1, 8, 8)
    pd.DataFrame({"file": ["a.png"], "label": [0]}).to_csv(tmp_path / "bad.csv", index=False)
    with pytest.raises(LabelledDataError, match=r"lacks column\(s\) \['path'\]"):
        read_labelled(tmp_path / "bad.csv")
    with pytest.raises(LabelledDataError, match="does not exist"):
        read_labelled(tmp_path / "nowhere")


def test_too_few_images_warns_how_many_are_needed():
    cfg = MonitorConfig(calibration_n=50, calibration_shifts=("blur", "contrast"), calibration_severities=(2, 4))
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        windows, n, reused = plan_windows(cfg, 250)
    assert len(windows) == 5 and n == 50 and not reused
    with pytest.warns(CalibrationDataWarning, match=r"50 x 5 = 250 labelled images for disjoint windows, got 249"):
        assert plan_windows(cfg, 249)[1:] == (50, True)
    with pytest.warns(CalibrationDataWarning, match=r"only 20 labelled images were given: every window uses all 20"):
        assert plan_windows(cfg, 20)[1:] == (20, True)


# --------------------------------------------------------------------------------------------------
# the Python API


def test_python_api_calibrate_and_monitor_on_tensors(tmp_path):
    from relmon.data import load_sample

    images, labels = load_sample()
    x = torch.from_numpy(images[:120]).float().div(255).unsqueeze(1)
    y = labels[:120]
    model = relmon.load_embedded("fmnist_cnn")
    settings = dict(region=7, steps=8, calibration_n=40, calibration_shifts=["gaussian_noise"],
                    calibration_severities=[5], estimators=["average_confidence", "atc"], seed=3)
    cal = relmon.calibrate(model, (x, y), **settings)
    assert cal.meta["data"]["kind"] == "tensors" and cal.meta["windows"] == ["clean", "gaussian_noise/5"]
    # clean-window accuracy == accuracy of the model's predictions on exactly those images
    ids = sorted(int(i) for i in cal.reference["sample_id"].unique())
    with torch.no_grad():
        pred = model(relmon.models.get_preprocessing(model).normalize(x[ids])).argmax(1).numpy()
    assert cal.meta["window_accuracy"]["clean"] == pytest.approx(float((pred == y[ids]).mean()), abs=1e-12)
    saved = cal.save(tmp_path / "cal")
    loaded = relmon.Calibration.load(saved)
    assert loaded.meta["model_version"] == relmon.models.model_info(model).version
    summary, records = relmon.monitor(model, (x[:24], y[:24]), calibration=tmp_path / "cal", region=7, steps=8)
    assert summary.scored == 24 and set(summary.estimates) == {"average_confidence", "atc"}
    assert summary.accuracy == pytest.approx(float((records.drop_duplicates("sample_id")["correct"]).mean()))
    assert len(records) == 24 * 2  # lrp + random order
    with pytest.raises(ValueError, match=r"float images must lie in \[0, 1\]"):
        relmon.calibrate(model, (x * 255, y), **settings)


def test_help_does_not_import_torch():
    import subprocess

    for command in (["--help"], ["monitor", "--help"], ["calibrate", "--help"], ["serve", "--help"]):
        proc = subprocess.run(
            [sys.executable, "-X", "importtime", "-m", "relmon", *command], capture_output=True, text=True, check=True
        )
        heavy = [line for line in proc.stderr.splitlines() if line.split("|")[-1].strip().split(".")[0]
                 in ("torch", "zennit", "pytorch_lightning", "lightning", "numpy", "pandas")]
        assert not heavy, f"relmon {' '.join(command)} imported {heavy[:3]}"
        assert "usage: relmon" in proc.stdout


def test_mtime_window_scores_only_the_newest_files(tmp_path):
    import os
    import time

    from relmon.data import load_sample

    images, _ = load_sample()
    now = time.time()
    for i in range(5):
        path = tmp_path / f"img_{i}.png"
        Image.fromarray(images[i]).save(path)
        if i < 3:  # three files from two hours ago, two new ones
            os.utime(path, (now - 7200, now - 7200))
    model = relmon.load_embedded("fmnist_cnn")
    summary, records = relmon.monitor(model, tmp_path, window="mtime", window_seconds=3600, region=7, steps=8)
    assert summary.scored == 2 and len(summary.window_ids) == 1
    assert sorted(Path(s).name for s in records["sample_id"].unique()) == ["img_3.png", "img_4.png"]
    summary, _ = relmon.monitor(model, tmp_path, region=7, steps=8)
    assert summary.scored == 5


def test_monitor_checks_classes_and_preprocessing_before_scoring(factories):
    from relmon.models import MissingPreprocessingError

    sys.modules.pop(factories, None)
    import importlib

    mod = importlib.import_module(factories)
    model = mod.linear(num_classes=3)
    x = torch.rand(4, 1, 8, 8)
    with pytest.raises(MissingPreprocessingError, match=r"attach_preprocessing"):
        relmon.monitor(model, x)
    with pytest.raises(ValueError, match=r"names 2 classes \['a', 'b'\] but the model outputs 3 class scores"):
        relmon.monitor(model, x, preprocessing={"mean": 0.5, "std": 0.5}, classes=["a", "b"])


def test_manifest_paths_may_be_fsspec_urls(tmp_path):
    import io

    import fsspec

    fs = fsspec.filesystem("memory")
    for i, value in enumerate((30, 220)):
        buf = io.BytesIO()
        Image.fromarray(np.full((4, 4), value, dtype=np.uint8)).save(buf, format="PNG")
        fs.pipe(f"/relmon-test/{i}.png", buf.getvalue())
    pd.DataFrame({"path": ["memory://relmon-test/0.png", "memory://relmon-test/1.png"], "label": [1, 0]}).to_csv(
        tmp_path / "urls.csv", index=False
    )
    data = read_labelled(tmp_path / "urls.csv", classes=["a", "b"])
    assert data.labels.tolist() == [1, 0] and data.ids[0] == "memory://relmon-test/0.png"
    assert float(data.images[1].mean()) == pytest.approx(220 / 255)
    fs.rm("/relmon-test", recursive=True)


def test_kubernetes_configmap_holds_a_valid_config():
    """The CronJob's config (deploy/k8s/configmap.yaml) passes the same validation as a config file:
    only-new scoring with its records folder, a run deadline under the Job's activeDeadlineSeconds."""
    import yaml

    root = Path(__file__).resolve().parents[1]
    data = yaml.safe_load((root / "deploy" / "k8s" / "configmap.yaml").read_text())["data"]["relmon.yaml"]
    cfg = config_from_dict(yaml.safe_load(data), where="deploy/k8s/configmap.yaml")
    job = yaml.safe_load((root / "deploy" / "k8s" / "cronjob.yaml").read_text())
    deadline = job["spec"]["jobTemplate"]["spec"]["activeDeadlineSeconds"]
    assert cfg.only_new and cfg.records and cfg.run_timeout_seconds < deadline


def test_labelled_images_keep_16_bit_depth_and_refuse_decompression_bombs(tmp_path):
    """Labelled images decode like the streams: a 16-bit PNG is not saturated to {0, 1}, and an image
    above the pixel limit is a clear LabelledDataError, not Pillow's raw DecompressionBombError."""
    deep = np.array([[0, 16384], [32768, 65535]], dtype=np.uint16)
    (tmp_path / "tree" / "cat").mkdir(parents=True)
    Image.fromarray(deep).save(tmp_path / "tree" / "cat" / "deep.png")
    data = read_labelled(tmp_path / "tree", classes=["cat"])
    assert np.allclose(data.images[0, 0].numpy(), deep / 65535.0, atol=1e-6)

    (tmp_path / "bomb" / "cat").mkdir(parents=True)
    Image.new("1", (12000, 12000)).save(tmp_path / "bomb" / "cat" / "bomb.png")  # 144 MP > 50 MP
    with pytest.raises(LabelledDataError, match=r"bomb.png cannot be decoded .*fix: remove or replace the file"):
        read_labelled(tmp_path / "bomb", classes=["cat"])
