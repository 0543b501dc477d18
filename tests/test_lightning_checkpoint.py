"""Lightning checkpoints of ordinary LightningModules (issue 21, item 1): the classifier inside is
found by the callback's rule (torchmetrics children and loss modules are not layers), or named with
``model_attr``. Modules are written to a temporary package and trained with a real ``pl.Trainer``;
``relmon calibrate`` runs as a user would run it, in a fresh process."""

from __future__ import annotations

import json
import os
import re
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import pytorch_lightning as pl
import torch
from PIL import Image
from torch import nn

import relmon
from relmon.config import ConfigError, MonitorConfig, config_from_dict
from relmon.jobs.model import load_job_model

ROOT = Path(__file__).resolve().parents[1]
CLASSES = [str(i) for i in range(10)]
MEAN, STD = 0.3, 0.4

LITNETS = '''
import pytorch_lightning as pl
import torch
from torch import nn
from torchmetrics.classification import MulticlassAccuracy


class LitNet(pl.LightningModule):
    """An ordinary LightningModule: its layers are direct children, beside metrics and a loss module."""

    def __init__(self, num_classes=10, width=6):
        super().__init__()
        self.save_hyperparameters()
        self.conv = nn.Conv2d(1, width, 3, padding=1)
        self.pool = nn.MaxPool2d(2)
        self.fc = nn.Linear(width * 4 * 4, num_classes)
        self.loss_fn = nn.CrossEntropyLoss()
        self.train_acc = MulticlassAccuracy(num_classes=num_classes)
        self.val_acc = MulticlassAccuracy(num_classes=num_classes)

    def forward(self, x):
        return self.fc(torch.flatten(self.pool(torch.relu(self.conv(x))), 1))

    def training_step(self, batch, batch_idx):
        x, y = batch
        logits = self(x)
        self.train_acc(logits, y)
        self.log("train_acc", self.train_acc)
        return self.loss_fn(logits, y)

    def configure_optimizers(self):
        return torch.optim.Adam(self.parameters(), lr=3e-3)


def _net(num_classes, width):
    return nn.Sequential(nn.Conv2d(1, width, 3, padding=1), nn.ReLU(), nn.MaxPool2d(2), nn.Flatten(),
                         nn.Linear(width * 4 * 4, num_classes))


class LitStudent(pl.LightningModule):
    """Distillation-style: the classifier is ``student``; forward returns a dict, a teacher sits beside."""

    def __init__(self, num_classes=10, width=6):
        super().__init__()
        self.save_hyperparameters()
        self.student = _net(num_classes, width)
        self.teacher = _net(num_classes, width)
        self.student_acc = MulticlassAccuracy(num_classes=num_classes)

    def forward(self, x):
        return {"logits": self.student(x), "teacher": self.teacher(x)}

    def training_step(self, batch, batch_idx):
        x, y = batch
        out = self(x)
        return nn.functional.cross_entropy(out["logits"], y) + nn.functional.cross_entropy(out["teacher"], y)

    def configure_optimizers(self):
        return torch.optim.Adam(self.parameters(), lr=3e-3)
'''


def _fit(module, x, y, tmp):
    data = torch.utils.data.TensorDataset((x - MEAN) / STD, y)
    trainer = pl.Trainer(max_epochs=2, logger=False, enable_checkpointing=False, enable_progress_bar=False,
                         enable_model_summary=False, accelerator="cpu", default_root_dir=tmp)
    trainer.fit(module, torch.utils.data.DataLoader(data, batch_size=50, shuffle=True))
    return trainer


@pytest.fixture(scope="module")
def project(tmp_path_factory):
    tmp = tmp_path_factory.mktemp("litckpt")
    (tmp / "litnets.py").write_text(LITNETS)
    sys.path.insert(0, str(tmp))
    try:
        import litnets
    finally:
        sys.path.remove(str(tmp))
    from sklearn.datasets import load_digits

    d = load_digits()
    u8 = np.round(d.images / 16.0 * 255).astype(np.uint8)
    x = torch.from_numpy(u8 / 255.0).float().unsqueeze(1)
    y = torch.from_numpy(d.target).long()
    torch.manual_seed(0)
    ckpts = {}
    for name in ("LitNet", "LitStudent"):
        module = getattr(litnets, name)()
        trainer = _fit(module, x[:800], y[:800], tmp)
        ckpts[name] = tmp / f"{name}.ckpt"
        trainer.save_checkpoint(ckpts[name])
        module.eval()
        ckpts[name + "_trained"] = module
    for i in range(800, 1000):
        folder = tmp / "labelled" / CLASSES[y[i]]
        folder.mkdir(parents=True, exist_ok=True)
        Image.fromarray(u8[i]).save(folder / f"img_{i:04d}.png")
    return {"tmp": tmp, "x": x, "y": y, "ckpt": ckpts, "litnets": litnets}


def _cfg(p, name, **kw):
    return MonitorConfig(model=f"litnets:{name}", lightning_module=f"litnets:{name}", checkpoint=str(p["ckpt"][name]),
                         preprocessing={"mean": [MEAN], "std": [STD], "low": 0.0, "high": 1.0},
                         classes=tuple(CLASSES), image_size=8, **kw)


def _explain_with(model, x):
    return relmon.explain(model, x, "lrp:epsilon_0_01")


def test_checkpoint_of_a_module_with_torchmetrics_children_explains_its_layers(project):
    p = project
    sys.path.insert(0, str(p["tmp"]))
    try:
        model = load_job_model(_cfg(p, "LitNet"))
    finally:
        sys.path.remove(str(p["tmp"]))
    trained = p["ckpt"]["LitNet_trained"]
    # metrics and the loss module are left out; the layers are the trained module's
    names = {n for n, _ in model.named_children()}
    assert names == {"conv", "pool", "fc"}
    assert relmon.models.model_info(model).name == "LitNet"
    x = (p["x"][900:916] - MEAN) / STD
    assert torch.equal(model(x), trained(x))
    # the relevance equals that of the same network written as a plain nn.Sequential (independent of
    # the LightningModule and of the classifier discovery)
    plain = nn.Sequential(trained.conv, nn.ReLU(), trained.pool, nn.Flatten(), trained.fc).eval()
    relmon.attach_preprocessing(plain, relmon.Preprocessing(mean=MEAN, std=STD))
    r = _explain_with(model, x)
    assert r.abs().sum() > 0 and torch.allclose(r, _explain_with(plain, x), atol=1e-6)


def test_relmon_calibrate_on_a_lightning_checkpoint_with_metric_children(project):
    """The issue's reproduction: this exited 3 with "does not support LitNet: 'train_acc' ..."."""
    p = project
    env = {**os.environ, "PYTHONPATH": os.pathsep.join([str(ROOT), str(p["tmp"])]), "OMP_NUM_THREADS": "1"}
    args = ["calibrate", "--lightning-module", "litnets:LitNet", "--checkpoint", str(p["ckpt"]["LitNet"]),
            "--calibration-data", str(p["tmp"] / "labelled"), "--classes", *CLASSES,
            "--preprocessing", json.dumps({"mean": [MEAN], "std": [STD], "low": 0.0, "high": 1.0}),
            "--methods", "lrp:epsilon_0_01", "--region", "2", "--steps", "4", "--calibration-n", "40",
            "--calibration-shifts", "gaussian_noise", "--calibration-severities", "4",
            "--estimators", "average_confidence", "--out", str(p["tmp"] / "cal"), "--json"]
    proc = subprocess.run([sys.executable, "-m", "relmon", *args], capture_output=True, text=True, env=env,
                          timeout=240)
    assert proc.returncode == 0, proc.stderr
    meta = json.loads(proc.stdout)
    assert meta["model"] == "LitNet" and meta["windows"] == ["clean", "gaussian_noise/4"]
    assert 0.5 < meta["window_accuracy"]["clean"] <= 1.0  # a trained classifier, scored on held-out digits


def test_model_attr_names_the_classifier(project):
    p = project
    sys.path.insert(0, str(p["tmp"]))
    try:
        # without model_attr: the module's forward returns a dict, and the error says how to fix it
        with pytest.raises(ValueError, match=r"returned dict.*model_attr"):
            load_job_model(_cfg(p, "LitStudent"))
        model = load_job_model(_cfg(p, "LitStudent", model_attr="student"))
        with pytest.raises(ValueError, match=r"model_attr: 'student_acc'.*module attributes are \['student', "
                                             r"'teacher'\].*flag --model-attr"):
            load_job_model(_cfg(p, "LitStudent", model_attr="student_acc"))
        summary, records = relmon.monitor(
            None, (p["x"][900:940], p["y"][900:940]), config=_cfg(p, "LitStudent", model_attr="student"),
            methods=("lrp:epsilon_0_01",), region=2, steps=4,
        )
    finally:
        sys.path.remove(str(p["tmp"]))
    trained = p["ckpt"]["LitStudent_trained"]
    assert torch.equal(model[4].weight, trained.student[4].weight)
    x = (p["x"][900:940] - MEAN) / STD
    assert torch.allclose(_explain_with(model, x), _explain_with(trained.student, x), atol=1e-6)
    with torch.no_grad():
        truth = (trained.student(x).argmax(1) == p["y"][900:940]).float().mean().item()
    assert summary.accuracy == pytest.approx(truth)
    assert set(records["method"]) == {"lrp:epsilon_0_01", "random"}


def test_model_attr_needs_a_lightning_module():
    with pytest.raises(ConfigError, match=r"model_attr \('net'\) applies to a Lightning checkpoint"):
        config_from_dict({"model": "a:b", "model_attr": "net"})


def test_relmon_report_draws_the_worst_inputs_of_a_lightning_checkpoint(project, tmp_path):
    """relmon report --lightning-module/--checkpoint/--preprocessing/--input: the worst inputs' heatmaps
    come from the checkpoint's classifier, re-read from the monitored folder."""
    from relmon.cli import main
    from relmon.jobs import run_monitor

    p = project
    live = tmp_path / "live"
    live.mkdir()
    u8 = (p["x"][1000:1024, 0] * 255).round().to(torch.uint8).numpy()
    for i, img in enumerate(u8):
        Image.fromarray(img).save(live / f"digit_{i:03d}.png")
    prep = json.dumps({"mean": [MEAN], "std": [STD], "low": 0.0, "high": 1.0})
    sys.path.insert(0, str(p["tmp"]))
    try:
        run_monitor(_cfg(p, "LitNet").with_overrides(
            {"input": str(live), "records": str(tmp_path / "records"), "methods": ["lrp:epsilon_0_01"],
             "region": 2, "steps": 4, "n": None}))
        out = tmp_path / "report.html"
        rc = main(["report", str(tmp_path / "records"), "--lightning-module", "litnets:LitNet",
                   "--checkpoint", str(p["ckpt"]["LitNet"]), "--preprocessing", prep, "--input", str(live),
                   "--examples", "3", "--out", str(out)])
    finally:
        sys.path.remove(str(p["tmp"]))
    assert rc == 0
    page = out.read_text()
    section = page.split('<section id="heatmaps">')[1].split("</section>")[0]
    assert 'alt="inputs and heatmaps"' in section
    assert re.search(r"\(\d worst inputs re-read from files under ", section)
    assert len(set(re.findall(r"digit_\d{3}\.png", section))) >= 3  # the worst inputs' files are named
    assert "were not found" not in page
