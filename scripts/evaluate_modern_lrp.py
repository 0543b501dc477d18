"""Evidence for LRP on transformer/ConvNeXt/EfficientNet-style models: AOPC − random (the paper's region
perturbation, fraction 0.16) of relmon's new rules against sensitivity and gradient × input, on three tiny models
of torchvision's own classes trained here on Fashion-MNIST.

    nice .venv/bin/python scripts/evaluate_modern_lrp.py            # ~12 min on 2 shared cores; writes the evidence
                                                                   # section of docs/model_coverage.md

Protocol (DESIGN §4a): each model trains on 20,000 training images for a time budget; the ViT's attention rule
(AttnLRP or CP-LRP) is chosen on validation images (the first test images) and every figure is reported on disjoint
test images (5000–5999). AOPC − random is per sample (the MoRF order of the heatmap minus the random order, same
noise), differences between methods are paired per sample, ± one standard error.
"""

from __future__ import annotations

import argparse
import re
import time
from pathlib import Path

import numpy as np
import torch
from torch import nn
from torchvision.models.convnext import CNBlockConfig, ConvNeXt
from torchvision.models.efficientnet import EfficientNet, MBConvConfig
from torchvision.models.vision_transformer import VisionTransformer

import relmon
from relmon.data.fashion_mnist import MEAN, STD, load_fashion_mnist, to_tensor
from relmon.explain.support import lrp_support
from relmon.perturbation import region_perturbation

ROOT = Path(__file__).resolve().parents[1]
DOC = ROOT / "docs" / "model_coverage.md"
START, END = "<!-- evidence:start -->", "<!-- evidence:end -->"
LOW, HIGH = (0 - MEAN) / STD, (1 - MEAN) / STD


def tiny_vit() -> nn.Module:
    m = VisionTransformer(image_size=28, patch_size=7, num_layers=2, num_heads=4, hidden_dim=64, mlp_dim=128,
                          num_classes=10)
    m.conv_proj = nn.Conv2d(1, 64, kernel_size=7, stride=7)
    return m


def tiny_convnext() -> nn.Module:
    m = ConvNeXt([CNBlockConfig(32, 64, 2), CNBlockConfig(64, None, 2)], num_classes=10)
    m.features[0][0] = nn.Conv2d(1, 32, kernel_size=2, stride=2)
    return m


def tiny_efficientnet() -> nn.Module:
    m = EfficientNet([MBConvConfig(1, 3, 1, 16, 16, 1), MBConvConfig(4, 3, 2, 16, 24, 2),
                      MBConvConfig(4, 3, 2, 24, 40, 1)], dropout=0.1, num_classes=10)
    m.features[0][0] = nn.Conv2d(1, 16, kernel_size=3, padding=1, bias=False)
    return m


MODELS = {"tiny ViT (LayerNorm, attention, GELU)": tiny_vit,
          "tiny ConvNeXt (LayerNorm2d, GELU, layer scale)": tiny_convnext,
          "tiny EfficientNet (SiLU, squeeze-excitation, BatchNorm)": tiny_efficientnet}


def train(model, x, y, seconds, epochs=3, seed=0):
    torch.manual_seed(seed)
    opt = torch.optim.AdamW(model.parameters(), lr=2e-3, weight_decay=0.01)
    model.train()
    start, done = time.perf_counter(), 0
    for _ in range(epochs):
        order = torch.randperm(len(x))
        for i in range(0, len(x), 128):
            idx = order[i:i + 128]
            opt.zero_grad()
            nn.functional.cross_entropy(model(x[idx]), y[idx]).backward()
            opt.step()
            done += len(idx)
            if time.perf_counter() - start > seconds:
                return model.eval(), done
    return model.eval(), done


def aopc_minus_random(model, x, method, **options):
    """Per-sample AOPC(MoRF) − AOPC(random order) at fraction 0.16 (4×4 regions: L = 8)."""
    out = []
    for i in range(0, len(x), 100):
        xb = x[i:i + 100]
        e = relmon.explain_full(model, xb, method, **options)
        heat = relmon.to_heatmap(e.relevance, e.method)
        kw = dict(region=4, fraction=0.16, low=LOW, high=HIGH, target=e.target, seed=0,
                  sample_ids=list(range(i, i + len(xb))))
        morf = region_perturbation(model, xb, heat, order="morf", **kw).aopc
        rnd = region_perturbation(model, xb, heat, order="random", **kw).aopc
        out.append(morf - rnd)
    return torch.cat(out).double().numpy()


def mean_se(v):
    return float(np.mean(v)), float(np.std(v, ddof=1) / np.sqrt(len(v)))


def main():
    parser = argparse.ArgumentParser()
    parser.add_argument("--seconds", type=float, default=60, help="training budget per model")
    parser.add_argument("--n-train", type=int, default=20000)
    parser.add_argument("--n-test", type=int, default=300)
    parser.add_argument("--n-val", type=int, default=200)
    args = parser.parse_args()
    torch.set_num_threads(2)
    xi, yi = load_fashion_mnist("train")
    xt, yt = load_fashion_mnist("test")
    x_train, y_train = to_tensor(xi[:args.n_train]), torch.from_numpy(yi[:args.n_train]).long()
    x_val = to_tensor(xt[:args.n_val])
    x_test, y_test = to_tensor(xt[5000:5000 + args.n_test]), torch.from_numpy(yt[5000:5000 + args.n_test]).long()
    lines = [
        f"Fashion-MNIST, trained here ({args.n_train} training images, ≤ {args.seconds:.0f} s each on 2 shared "
        f"cores); AOPC − random at fraction 0.16 (4×4 regions, L = 8, uniform noise, logit score) on test images "
        f"5000–{5000 + args.n_test - 1} ({args.n_test}); the ViT's attention rule chosen on test images 0–{args.n_val - 1}. "
        "`python scripts/evaluate_modern_lrp.py`.",
        "",
        "| model | accuracy | conservation (zero bias) | method | AOPC − random | vs gradient × input (paired) |",
        "|---|---|---|---|---|---|",
    ]
    for name, factory in MODELS.items():
        t0 = time.perf_counter()
        model, seen = train(factory(), x_train, y_train, args.seconds)
        with torch.no_grad():
            acc = float((model(x_test).argmax(1) == y_test).float().mean())
        options, chosen = {}, ""
        if "ViT" in name:
            val = {rule: aopc_minus_random(model, x_val, "lrp", attention=rule).mean() for rule in ("attnlrp", "cp")}
            rule = max(val, key=val.get)
            options, chosen = {"attention": rule}, (f" (attention={rule}; validation AOPC − random: "
                                                    + ", ".join(f"{k} {v:.3f}" for k, v in val.items()) + ")")
        report = lrp_support(model, x_test[:8], **options)
        scores = {
            "lrp" + chosen: aopc_minus_random(model, x_test, "lrp", **options),
            "sensitivity": aopc_minus_random(model, x_test, "sensitivity"),
            "gradient_x_input": aopc_minus_random(model, x_test, "gradient_x_input"),
        }
        if "ViT" in name:
            other = "cp" if options["attention"] == "attnlrp" else "attnlrp"
            scores[f"lrp (attention={other})"] = aopc_minus_random(model, x_test, "lrp", attention=other)
        gxi = scores["gradient_x_input"]
        for i, (method, v) in enumerate(scores.items()):
            m, se = mean_se(v)
            d, dse = mean_se(v - gxi)
            vs = "—" if method == "gradient_x_input" else f"{d:+.3f} ± {dse:.3f}"
            head = (f"{name} | {acc:.3f} | {report.verdict}, {report.conservation:.1e}" if i == 0 else " | | ")
            lines.append(f"| {head} | `{method}` | {m:.3f} ± {se:.3f} ({m / se:.0f} SE) | {vs} |")
        print(f"{name}: {seen} images seen, {time.perf_counter() - t0:.0f} s", flush=True)
        print("\n".join(lines[-len(scores):]), flush=True)
    text = DOC.read_text() if DOC.exists() else ""
    block = START + "\n" + "\n".join(lines) + "\n" + END
    if START in text:
        text = re.sub(re.escape(START) + ".*?" + re.escape(END), lambda _: block, text, flags=re.S)
    else:
        text = text + "\n## Evidence on tiny trained models\n\n" + block + "\n"
    DOC.write_text(text)


if __name__ == "__main__":
    main()
