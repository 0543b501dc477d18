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
# # 02 — Relevance quality against accuracy
#
# The paper tracked AOPC over training and found it rising with accuracy. relmon's premise is the
# monitoring version of that: when a deployed model's accuracy falls (a shifted input stream), its
# heatmaps get worse, and a scale-free quality measure can tell without labels. Here:
#
# 1. the **checkpoint series** of the embedded CNN (saved during training, test accuracy 14 % → 87 %);
# 2. the **shift suite** (noise, blur, contrast, … at severities 1–5) on the final model;
# 3. an **estimator error table**: accuracy estimators fitted on some shift types and tested on
#    *other* shift types drawn from a disjoint pool of images, with bootstrap intervals.
#
# Quality is measured scale-free, because the raw logit scale moves under shift without accuracy
# moving: `aopc_rel` = AOPC / f(x⁰) and `gap_rel` = (AOPC − AOPC of the random order) / f(x⁰).
# With the small CI settings (`RELMON_NB_SMALL=1`) the numbers are noisy; read them as a
# demonstration, and the full settings (or the project's evaluation tables) as the evidence.

# %% tags=["parameters"]
import os

SMALL = os.environ.get("RELMON_NB_SMALL", "0") == "1"
N = 24 if SMALL else 200  # inputs per window
STEPS_SHOWN = [0, 8, 40, 938] if SMALL else None  # checkpoint steps (None: all)
SHIFTS = ["gaussian_noise", "contrast", "occlusion"] if SMALL else None  # None: all
SEVERITIES = [1, 3, 5] if SMALL else [1, 2, 3, 4, 5]
FIT_SHIFTS = ["gaussian_noise", "blur", "contrast", "brightness"]
TEST_SHIFTS = ["rotation", "occlusion", "pixelation", "jpeg"]
EST_SEVERITIES = [2, 4] if SMALL else [1, 2, 3, 4, 5]
METHOD = "lrp"
REGION, STEPS = 4, 49

# %%
import logging
import warnings

import matplotlib.pyplot as plt
import numpy as np
import pandas as pd
import torch
from scipy.stats import spearmanr

from relmon.analysis import make_estimator
from relmon.config import MonitorConfig
from relmon.data.shifts import SHIFTS as ALL_SHIFTS
from relmon.data.streams import TensorStream
from relmon.jobs.inputs import sample_images
from relmon.jobs.scoring import score_stream
from relmon.models import checkpoint_series, get_preprocessing, load_embedded

warnings.filterwarnings("ignore")
logging.getLogger("pytorch_lightning").setLevel(logging.ERROR)
torch.manual_seed(0)
cfg = MonitorConfig(methods=(METHOD,), region=REGION, steps=STEPS, batch_size=128)
SHIFTS = SHIFTS or list(ALL_SHIFTS)


def score_windows(model, windows, n=N):
    """Records of labelled windows ``(name, shift, severity, offset)`` scored by relmon's monitor."""
    xs, ys = [], []
    for _, shift, sev, offset in windows:
        x, y = sample_images(n, shift, sev, seed=0, offset=offset)
        xs.append(x)
        ys.append(y)
    stream = TensorStream(torch.cat(xs), np.concatenate(ys), preprocessing=get_preprocessing(model),
                          stream="nb", window_size=n)
    records, _, _ = score_stream(cfg, model, stream)
    names = {f"nb:{i * n}": w[0] for i, w in enumerate(windows)}
    records["window_id"] = records["window_id"].map(names)
    return records


def quality(records):
    """Per window: accuracy, confidence, aopc_rel and gap_rel (means over inputs)."""
    heat = records[records["method"] != "random"].set_index(["window_id", "sample_id"])
    rand = records[records["method"] == "random"].set_index(["window_id", "sample_id"])
    s0 = heat["score0"].where(heat["score0"] > 0)
    per = pd.DataFrame({
        "accuracy": heat["correct"].astype(float),
        "confidence": heat["confidence"],
        "aopc_rel": heat["aopc_rel"].astype(float),
        "gap_rel": (heat["aopc"] - rand["aopc"].reindex(heat.index)) / s0,
    })
    return per.groupby(level="window_id", sort=False).mean()


# %% [markdown]
# ## 1. The checkpoint series

# %%
series = [c for c in checkpoint_series("fmnist_cnn") if STEPS_SHOWN is None or c.step in STEPS_SHOWN]
rows = []
for c in series:
    q = quality(score_windows(c.load(), [(f"step{c.step}", None, 3, 0)])).iloc[0]
    rows.append({"step": c.step, **q.to_dict()})
ckpt = pd.DataFrame(rows).set_index("step")
ckpt.round(3)

# %%
fig, axes = plt.subplots(1, 2, figsize=(11, 3.8))
for ax, col in zip(axes, ["aopc_rel", "gap_rel"], strict=True):
    ax.plot(ckpt["accuracy"], ckpt[col], "o-")
    for step, r in ckpt.iterrows():
        ax.annotate(str(step), (r["accuracy"], r[col]), fontsize=7)
    rho = spearmanr(ckpt["accuracy"], ckpt[col]).statistic
    ax.set_title(f"{col} vs accuracy over training (Spearman ρ = {rho:.2f})", fontsize=9)
    ax.set_xlabel(f"accuracy on the {N} inputs")
    ax.set_ylabel(col)
plt.tight_layout()

# %% [markdown]
# ## 2. The shift suite on the final model

# %%
model = load_embedded("fmnist_cnn")
windows = [("clean", None, 3, 0)] + [(f"{s}/{v}", s, v, 0) for s in SHIFTS for v in SEVERITIES]
shift_q = quality(score_windows(model, windows))
shift_q["shift"] = [w.split("/")[0] for w in shift_q.index]
shift_q.round(3)

# %%
fig, axes = plt.subplots(1, 3, figsize=(15, 4))
for ax, col in zip(axes, ["aopc_rel", "gap_rel", "confidence"], strict=True):
    for i, (shift, g) in enumerate(shift_q.groupby("shift", sort=False)):
        ax.plot(g["accuracy"], g[col], "o-" if shift != "clean" else "k*", color=f"C{i % 10}", label=shift,
                ms=10 if shift == "clean" else 5)
    rho = spearmanr(shift_q["accuracy"], shift_q[col]).statistic
    ax.set_title(f"{col} (Spearman ρ over windows = {rho:.2f})", fontsize=9)
    ax.set_xlabel("accuracy of the window")
axes[0].legend(fontsize=7)
plt.tight_layout()

# %% [markdown]
# ## 3. Estimator error on held-out shift types
# Estimators are fitted on the clean window and the `FIT_SHIFTS` windows (images 0…), and tested on
# `TEST_SHIFTS` windows drawn from images 1000… — shift types and images the fit never saw. Per
# estimator: mean absolute error with a 90 % bootstrap interval over the test windows, and how often
# the estimator's own 90 % interval covered the true accuracy, with its mean width.

# %%
fit_windows = [("clean", None, 3, 0)] + [
    (f"{s}/{v}", s, v, (i + 1) * N) for i, (s, v) in enumerate((s, v) for s in FIT_SHIFTS for v in EST_SEVERITIES)
]
test_windows = [(f"{s}/{v}", s, v, 1000 + i * N) for i, (s, v) in
                enumerate((s, v) for s in TEST_SHIFTS for v in EST_SEVERITIES)]
fit_records = score_windows(model, fit_windows)
test_records = score_windows(model, test_windows)
truth = test_records.drop_duplicates(["window_id", "sample_id"]).groupby("window_id")["correct"].mean()

rng = np.random.default_rng(0)
rows = []
for name in ["average_confidence", "atc", "doc", "regression_confidence", "regression_relevance"]:
    pred = make_estimator(name).fit(fit_records).predict(test_records).set_index("window_id")
    t = truth.reindex(pred.index).astype(float)
    err = (pred["estimate"] - t).abs().to_numpy()
    boot = [err[rng.integers(0, len(err), len(err))].mean() for _ in range(2000)]
    rows.append({
        "estimator": name,
        "MAE": err.mean(),
        "MAE 90 % interval": f"[{np.quantile(boot, 0.05):.3f}, {np.quantile(boot, 0.95):.3f}]",
        "coverage": float(((pred["lower"] <= t) & (t <= pred["upper"])).mean()),
        "mean width": float((pred["upper"] - pred["lower"]).mean()),
        "test windows": len(err),
    })
errors = pd.DataFrame(rows).set_index("estimator")
errors.round(3)

# %% [markdown]
# Read the intervals before the means: with few test windows they overlap, and a difference inside
# them is not evidence. Coverage is judged together with width — a wide interval covers easily.

# %%
assert errors["MAE"].between(0, 1).all() and errors["coverage"].between(0, 1).all()
