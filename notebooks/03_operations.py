# ---
# jupyter:
#   jupytext:
#     formats: ipynb,py:percent
#     text_representation:
#       extension: .py
#       format_name: percent
#       format_version: '1.3'
#       jupytext_version: 1.19.6
#   kernelspec:
#     display_name: Python 3
#     language: python
#     name: python3
# ---

# %% [markdown]
# # 03 — Operations: your own model, the callback, calibration, monitoring and the dashboard
#
# Everything here runs on a model of the reader's own: a tiny CNN trained in this notebook on
# scikit-learn's 8×8 digits, written to disk as image files like a real input stream.
#
# 1. **Training with the Lightning callback** — `HeatmapQualityCallback` scores the heatmaps of a
#    few validation inputs after every epoch and logs AOPC, AOPC − random and entropy.
# 2. **Calibration on your labelled data** — `relmon.calibrate` (what `relmon calibrate` runs) scores
#    clean and synthetically shifted windows of labelled images, fits the accuracy estimators, chooses
#    the default and keeps the clean window as the drift reference; saved as a calibration folder.
# 3. **Monitoring** — the monitoring job (`relmon.jobs.MonitorJob`, what `relmon monitor` runs)
#    scores unlabelled windows read from image folders and serves its metrics over HTTP.
# 4. **The dashboard** — a real Prometheus (`prometheus` found on `PATH`, bound to 127.0.0.1 on a free
#    port, storage in a temporary folder) scrapes that endpoint; the Grafana dashboard's panel
#    queries (`deploy/grafana/dashboards/relmon.json`) are evaluated through its
#    `/api/v1/query_range` API and drawn with matplotlib.

# %% tags=["parameters"]
import os

SMALL = os.environ.get("RELMON_NB_SMALL", "0") == "1"
EPOCHS = 4 if SMALL else 8
N_WINDOW = 60 if SMALL else 96  # images per calibration / monitored window
SCRAPE_HOLD_S = 3 if SMALL else 10  # seconds each monitored window stays on the endpoint
REGION, STEPS = 2, 16  # 2x2-pixel regions: all 16 regions of an 8x8 image

# %%
import dataclasses
import json
import logging
import re
import shutil
import socket
import subprocess
import sys
import tempfile
import time
import urllib.parse
import urllib.request
import warnings
from pathlib import Path

import matplotlib.pyplot as plt
import numpy as np
import pandas as pd
import pytorch_lightning as pl
import torch
from PIL import Image
from prometheus_client import CollectorRegistry
from sklearn.datasets import load_digits
from torch import nn
from torch.utils.data import DataLoader, TensorDataset

from relmon.lightning import HeatmapQualityCallback

warnings.filterwarnings("ignore")
for name in ("pytorch_lightning", "lightning.pytorch", "lightning_fabric"):
    logging.getLogger(name).setLevel(logging.ERROR)
torch.manual_seed(0)
work = Path(tempfile.mkdtemp(prefix="relmon-nb03-"))
print("working folder:", work)

# %% [markdown]
# ## Your model and your images
# The model lives in a module of its own, so the monitoring job can build it from
# `package.module:factory` plus a weights-only checkpoint, as it would build yours. The factory
# declares the input space (`Preprocessing`): raw pixels in [0, 1], normalised by mean and std.

# %%
(work / "my_digits.py").write_text('''
from torch import nn
from relmon.models import Preprocessing, attach_preprocessing


class DigitsCNN(nn.Sequential):
    def __init__(self):
        super().__init__(
            nn.Conv2d(1, 8, 3, padding=1), nn.ReLU(), nn.MaxPool2d(2),
            nn.Conv2d(8, 16, 3, padding=1), nn.ReLU(), nn.MaxPool2d(2),
            nn.Flatten(), nn.Linear(16 * 2 * 2, 10),
        )


def digits_cnn():
    return attach_preprocessing(DigitsCNN(), Preprocessing(mean=0.3, std=0.4, low=0.0, high=1.0))
''')
sys.path.insert(0, str(work))
from my_digits import digits_cnn  # noqa: E402

digits = load_digits()
images = torch.from_numpy(digits.images / 16.0).float().unsqueeze(1)  # (1797, 1, 8, 8) in [0, 1]
labels = torch.from_numpy(digits.target).long()
perm = torch.randperm(len(images), generator=torch.Generator().manual_seed(0))
images, labels = images[perm], labels[perm]
train, cal_pool, live_pool = slice(0, 1000), slice(1000, 1000 + 5 * N_WINDOW), slice(1400, None)

# %% [markdown]
# ## 1. Training with the callback

# %%
class LitDigits(pl.LightningModule):
    def __init__(self):
        super().__init__()
        self.net = digits_cnn()

    def forward(self, x):
        return self.net(x)

    def _step(self, batch, stage):
        x, y = batch
        logits = self.net(x)
        loss = nn.functional.cross_entropy(logits, y)
        self.log(f"{stage}_loss", loss, prog_bar=False)
        self.log(f"{stage}_acc", (logits.argmax(1) == y).float().mean())
        return loss

    def training_step(self, batch, _):
        return self._step(batch, "train")

    def validation_step(self, batch, _):
        self._step(batch, "val")

    def configure_optimizers(self):
        return torch.optim.Adam(self.parameters(), lr=3e-3)


def normalise(x):
    return (x - 0.3) / 0.4  # the model consumes normalised inputs (its Preprocessing)


train_dl = DataLoader(TensorDataset(normalise(images[train]), labels[train]), batch_size=64, shuffle=True)
val_dl = DataLoader(TensorDataset(normalise(images[cal_pool]), labels[cal_pool]), batch_size=128)
callback = HeatmapQualityCallback(methods=("lrp",), max_samples=32, region=REGION, steps=STEPS,
                                  model_attr="net")
logged = []


class Keep(pl.Callback):
    def on_validation_epoch_end(self, trainer, pl_module):
        logged.append({k: float(v) for k, v in trainer.callback_metrics.items()})


lit = LitDigits()
trainer = pl.Trainer(max_epochs=EPOCHS, callbacks=[callback, Keep()], logger=False, enable_checkpointing=False,
                     enable_progress_bar=False, enable_model_summary=False, accelerator="cpu",
                     inference_mode=True)
trainer.fit(lit, train_dl, val_dl)
log = pd.DataFrame(logged)
log.round(3)

# %%
relmon_cols = [c for c in log.columns if c.startswith("relmon")]
fig, ax = plt.subplots(figsize=(7, 3.2))
for c in relmon_cols:
    ax.plot(log.index, log[c], "o-", label=c)
ax.plot(log.index, log["val_acc"], "ks--", label="val_acc")
ax.set_xlabel("validation run (0 = sanity check)")
ax.legend(fontsize=7)
plt.tight_layout()

# %% [markdown]
# ## 2. Calibration on your labelled data
# A clean window and shifted windows (noise, blur, contrast) of labelled images the model did not
# train on, scored by the same monitor the job runs, then every estimator fitted on them.

# %%
import relmon  # noqa: E402
from relmon.config import MonitorConfig  # noqa: E402
from relmon.data.shifts import apply_shift  # noqa: E402
from relmon.models import load_model  # noqa: E402

ckpt = work / "digits_cnn.pt"
torch.save(lit.net.state_dict(), ckpt)
model = load_model("my_digits:digits_cnn", ckpt)  # what the job will load: weights_only
cfg = MonitorConfig(model="my_digits:digits_cnn", checkpoint=str(ckpt), methods=("lrp",), region=REGION,
                    steps=STEPS, batch_size=128, estimators=("average_confidence", "atc", "doc",
                                                             "regression_relevance"))
# relmon.calibrate is what `relmon calibrate` runs: a clean window and one window per shift x severity
# (5 windows of N_WINDOW disjoint labelled images here), every estimator fitted, the default chosen by
# leave-one-shift-type-out validation, the clean window kept as the drift reference
calibration = relmon.calibrate(
    model, (images[cal_pool], labels[cal_pool]), config=cfg, calibration_n=N_WINDOW,
    calibration_shifts=["gaussian_noise", "blur", "contrast", "occlusion"], calibration_severities=[4],
    out=work / "calibration",
)
print("default estimator:", calibration.meta["default_estimator"])
pd.Series(calibration.meta["window_accuracy"], name="accuracy").round(3)

# %% [markdown]
# ## 3. Monitoring unlabelled windows, served over HTTP
# The live images are written as PNG files, one folder per window (the last three shifted); the
# job reads a folder, scores it, estimates its accuracy, tests drift and updates its metrics, which
# `serve_http` exposes at `/metrics` on 127.0.0.1 (a free port).

# %%
from relmon.export.outputs import serve_http  # noqa: E402
from relmon.jobs import MonitorJob  # noqa: E402

live = [("live-clean", None, 0), ("live-noise", "gaussian_noise", 4), ("live-occlusion", "occlusion", 4),
        ("live-contrast", "contrast", 5)]
live_x, live_y = images[live_pool], labels[live_pool]
truth = {}
for i, (name, shift, sev) in enumerate(live):
    x = live_x[i * N_WINDOW:(i + 1) * N_WINDOW]
    x = x if shift is None else apply_shift(x, shift, sev, seed=1)
    folder = work / "live" / name
    folder.mkdir(parents=True)
    for j, img in enumerate(x):
        Image.fromarray((img[0].clamp(0, 1).numpy() * 255).round().astype(np.uint8)).save(folder / f"{j:04d}.png")
    with torch.no_grad():
        truth[name] = float((model(normalise(x)).argmax(1) == live_y[i * N_WINDOW:(i + 1) * N_WINDOW]).float().mean())

job_cfg = dataclasses.replace(cfg, input=str(work / "live" / live[0][0]), stream="digits", channels=1,
                              calibration=str(work / "calibration"))
job = MonitorJob(job_cfg, registry=CollectorRegistry())
endpoint = serve_http(job.registry, port=0, addr="127.0.0.1")
print("metrics at", endpoint.url)

# %% [markdown]
# ## 4. A real Prometheus, and the dashboard's panels
# Prometheus needs about 5 s before its first scrape is queryable, so the notebook waits for the
# target to be up, then runs the four windows, holding each on the endpoint for a few scrapes.

# %%
def free_port():
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def api(path, **params):
    url = f"http://127.0.0.1:{prom_port}/api/v1/{path}?{urllib.parse.urlencode(params)}"
    with urllib.request.urlopen(url, timeout=5) as r:
        return json.load(r)["data"]


PROMETHEUS = shutil.which("prometheus")  # Debian's package puts it in /usr/bin; any install on PATH works
if PROMETHEUS is None:
    raise RuntimeError("no 'prometheus' on PATH; fix: apt-get install prometheus (scripts/setup.sh does), or put "
                       "the Prometheus binary's folder on PATH")
prom_port = free_port()
prom_dir = work / "prometheus"
prom_dir.mkdir()
(prom_dir / "prometheus.yml").write_text(
    "global: {scrape_interval: 1s, evaluation_interval: 1s}\n"
    f"scrape_configs: [{{job_name: relmon, static_configs: [{{targets: ['127.0.0.1:{endpoint.port}']}}]}}]\n")
prom = subprocess.Popen(
    [PROMETHEUS, f"--config.file={prom_dir / 'prometheus.yml'}", f"--storage.tsdb.path={prom_dir / 'data'}",
     f"--web.listen-address=127.0.0.1:{prom_port}"],
    stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
try:
    deadline = time.time() + 60
    while True:  # the target is up once a scrape has landed
        try:
            if api("query", query='up{job="relmon"}')["result"]:
                break
        except OSError:
            pass
        if time.time() > deadline:
            raise TimeoutError("Prometheus did not scrape the endpoint within 60 s")
        time.sleep(0.5)
    start = time.time()
    summaries = []
    for name, _, _ in live:
        job.cfg = dataclasses.replace(job_cfg, input=str(work / "live" / name))
        summary, _ = job.compute()
        summaries.append({"window": name, "true accuracy": truth[name],
                          **{f"est {k}": v[0] for k, v in summary.estimates.items()},
                          "drift alarm": summary.drift_alarm})
        time.sleep(SCRAPE_HOLD_S)
    time.sleep(2)
    end = time.time()
    repo = Path.cwd() if (Path.cwd() / "deploy").is_dir() else Path.cwd().parent  # run from notebooks/ or the root
    dashboard = json.loads((repo / "deploy/grafana/dashboards/relmon.json").read_text())
    builtins = {"__rate_interval": "5s", "__interval": "1s", "__range": f"{int(end - start) + 1}s"}

    def substitute(expr):
        """Grafana's template variables: the built-in intervals, and every other variable = all values."""
        return re.sub(r"\$\{?(\w+)\}?", lambda m: builtins.get(m.group(1), ".*"), expr)

    def all_panels(items):  # rows may hold panels of their own
        for p in items:
            yield p
            yield from all_panels(p.get("panels", []))

    panels = []
    for panel in all_panels(dashboard["panels"]):
        if not panel.get("targets"):
            continue
        series = []
        for target in panel.get("targets", []):
            if not target.get("expr"):
                continue
            expr = substitute(target["expr"])
            for s in api("query_range", query=expr, start=start, end=end, step=1)["result"]:
                series.append((target.get("legendFormat") or expr.split("{")[0], s["metric"], s["values"]))
        panels.append((panel.get("title", ""), series))
finally:
    prom.terminate()
    prom.wait(timeout=20)
    endpoint.stop()
pd.DataFrame(summaries).round(3)

# %%
fig, axes = plt.subplots((len(panels) + 1) // 2, 2, figsize=(13, 2.8 * ((len(panels) + 1) // 2)), squeeze=False)
for ax, (title, series) in zip(axes.flat, panels, strict=False):
    for legend, metric, values in series:
        t = np.array([float(v[0]) for v in values]) - start
        y = np.array([float(v[1]) for v in values])
        label = legend
        for key, val in metric.items():
            label = label.replace("{{" + key + "}}", val)
        extra = metric.get("estimator") or metric.get("method") or metric.get("feature") or ""
        ax.plot(t, y, label=(label if "{" not in label else "") or f"{metric.get('__name__', '')} {extra}")
    ax.set_title(title, fontsize=9)
    ax.set_xlabel("seconds", fontsize=8)
    if series:
        ax.legend(fontsize=6)
for ax in list(axes.flat)[len(panels):]:
    ax.axis("off")
plt.tight_layout()

# %%
assert sum(len(s) for _, s in panels) > 0, "no panel returned data"
shutil.rmtree(work, ignore_errors=True)
