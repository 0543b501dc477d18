# ---
# jupyter:
#   jupytext:
#     formats: ipynb,py:percent
#     text_representation:
#       extension: .py
#       format_name: percent
#   kernelspec:
#     display_name: Python 3
#     language: python
#     name: python3
# ---

# %% [markdown]
# # 01 — The paper on the embedded model
#
# Samek et al., *Evaluating the visualization of what a Deep Neural Network has learned*
# (arXiv 1509.06321): a heatmap is good when destroying the regions it calls most relevant first
# (MoRF) makes the class score fall faster than destroying regions in random order. The paper
# measures the area over the MoRF curve (AOPC) after perturbing about 16 % of the image and compares
# LRP with sensitivity (gradients) and deconvolution; it also reports that good heatmaps are
# simpler (lower entropy, smaller compressed files).
#
# Here: every heatmap method of relmon on the embedded Fashion-MNIST CNN and the shipped test
# sample, the MoRF curves relative to the random order (at ≈16 % and over the whole image), and the
# AOPC / entropy / compressed-size table. Whether the paper's ordering holds on this model is a
# result to read off, not something this notebook assumes.

# %% tags=["parameters"]
import os

SMALL = os.environ.get("RELMON_NB_SMALL", "0") == "1"  # CI: small settings
N = 24 if SMALL else 256  # inputs explained
REGION = 4  # 4x4-pixel regions: 7 x 7 = 49 regions on a 28x28 image
STEPS = 49  # the whole image
SEED = 0

# %%
import tempfile

import matplotlib.pyplot as plt
import numpy as np
import pandas as pd
import torch

import relmon
from relmon.complexity import heatmap_complexity
from relmon.data import load_sample, to_tensor
from relmon.explain import available_methods, explain, to_heatmap
from relmon.perturbation import evaluate_heatmaps
from relmon.report import heatmap_grid

torch.manual_seed(SEED)
model = relmon.load_embedded("fmnist_cnn")
images, labels = load_sample()
x = to_tensor(images[:N])
y = torch.from_numpy(labels[:N])
with torch.no_grad():
    pred = model(x).argmax(1)
print(f"{N} inputs, accuracy of the model on them: {(pred == y).float().mean():.3f}")
methods = [m for m in available_methods() if m != "lrp"]  # 'lrp' is an alias
methods

# %% [markdown]
# ## Heatmaps of every method, side by side
# Each heatmap explains the predicted class and is scaled to its own largest absolute value (red
# positive, blue negative relevance; gradient norms and the random baseline on a sequential map).

# %%
heatmaps = {m: to_heatmap(explain(model, x, m, target=pred), m) for m in methods}
shown = torch.from_numpy(images[:4]).float().div(255).unsqueeze(1)  # inputs in [0, 1] for display
grid_path = heatmap_grid(shown, {m: h[:4] for m, h in heatmaps.items()},
                         os.path.join(tempfile.mkdtemp(prefix="relmon-nb01-"), "heatmaps.png"))
plt.figure(figsize=(14, 5))
plt.imshow(plt.imread(grid_path))
plt.axis("off");

# %% [markdown]
# ## MoRF curves relative to the random order
# The paper's perturbation: each region is replaced by uniform noise over the valid input range, in
# the order the heatmap ranks the regions. The same noise image and target serve the random order,
# so the gap compares like with like. The fraction ≈16 % of the image is the paper's: 8 of the 49
# regions here.

# %%
K16 = round(0.16 * STEPS)
curves, rows = {}, []
for m in methods:
    ev = evaluate_heatmaps(model, x, heatmaps[m], orders=("morf", "random"), target=pred, region=REGION,
                           steps=STEPS, seed=SEED)
    morf, rand = ev.results["morf"].curves, ev.results["random"].curves
    score0 = morf[:, :1]
    drop_m, drop_r = score0 - morf, score0 - rand  # f(x0) - f(xk)
    curves[m] = ((drop_m - drop_r) / score0.abs()).mean(0)
    cx = heatmap_complexity(heatmaps[m])
    rows.append({
        "method": m,
        "AOPC 16 %": drop_m[:, : K16 + 1].mean().item(),
        "AOPC−random 16 %": (drop_m - drop_r)[:, : K16 + 1].mean().item(),
        "AOPC whole": drop_m.mean().item(),
        "AOPC−random whole": (drop_m - drop_r).mean().item(),
        "AOPC/score0 whole": (drop_m / score0.abs()).mean().item(),
        "entropy (bits)": cx["entropy_bits"].float().mean().item(),
        "PNG bytes": cx["png_bytes"].float().mean().item(),
    })
table = pd.DataFrame(rows).set_index("method").sort_values("AOPC−random 16 %", ascending=False)

fig, axes = plt.subplots(1, 2, figsize=(12, 4), sharey=False)
for i, (m, c) in enumerate(curves.items()):
    frac = np.arange(len(c)) / STEPS
    style = dict(color="k", ls="--") if m == "random" else dict(color=f"C{i % 10}")
    axes[0].plot(frac[: K16 + 1], c[: K16 + 1], label=m, **style)
    axes[1].plot(frac, c, label=m, **style)
axes[0].set_title(f"first {K16} regions (≈16 % of the image)")
axes[1].set_title("whole image")
for ax in axes:
    ax.axhline(0, color="grey", lw=0.6)
    ax.set_xlabel("share of regions perturbed")
    ax.set_ylabel("mean (MoRF drop − random drop) / |f(x0)|")
axes[1].legend(fontsize=7, ncol=2)
plt.tight_layout()

# %% [markdown]
# ## AOPC, entropy and compressed size
# Sorted by the gap to the random order at ≈16 %. The `random` method (a noise heatmap) is one more
# random order: its gap scatters around 0 and shows how large a gap chance alone gives.

# %%
table.round(3)

# %%
lrp_gap = table.loc["lrp:epsilon_plus_flat", "AOPC−random 16 %"]
others = table.drop(index=[m for m in table.index if m.startswith("lrp") or m == "random"])
print(f"LRP (epsilon_plus_flat) gap at 16 %: {lrp_gap:.3f}; best non-LRP method: "
      f"{others['AOPC−random 16 %'].idxmax()} ({others['AOPC−random 16 %'].max():.3f})")
assert all(float(c[0]) == 0.0 for c in curves.values())  # nothing perturbed yet: no drop
