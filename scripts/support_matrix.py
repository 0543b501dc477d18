"""Which torchvision families relmon's LRP supports: prints the README's support matrix.

    .venv/bin/python scripts/support_matrix.py

Each model is built with weights=None, its BatchNorm statistics randomised to stand in for trained
ones (an untrained BatchNorm is the identity and hides merging problems), and explained with
``lrp`` at zero_bias=True, so that a supported model must conserve relevance exactly.
"""

from __future__ import annotations

import time

import torch
import torchvision.models as tvm

import relmon
from relmon.explain import UnsupportedModelError, conservation, explain_full

FAMILIES = [
    ("VGG", "vgg16_bn", 64),
    ("ResNet", "resnet18", 64),
    ("ResNet", "resnet50", 64),
    ("DenseNet", "densenet121", 64),
    ("MobileNetV3", "mobilenet_v3_small", 64),
    ("EfficientNet", "efficientnet_b0", 64),
    ("ConvNeXt", "convnext_tiny", 64),
    ("ViT", "vit_b_16", 224),
]


def main():
    torch.manual_seed(0)
    print("| family | model | result | detail |")
    print("|---|---|---|---|")
    for family, name, size in FAMILIES:
        model = getattr(tvm, name)(weights=None).eval()
        with torch.no_grad():
            for m in model.modules():
                if isinstance(m, torch.nn.BatchNorm2d):
                    m.running_mean.uniform_(-0.5, 0.5)
                    m.running_var.uniform_(0.5, 2.0)
        x = torch.randn(2, 3, size, size)
        t0 = time.perf_counter()
        try:
            e = explain_full(model, x, "lrp", zero_bias=True)
            err = conservation(e.relevance, e.logits, e.target).abs().max().item()
            ok = torch.isfinite(e.relevance).all().item() and err < 1e-2
            result = "works" if ok else "works with a caveat"
            detail = f"relevance conserved within {err:.1e} (zero_bias=True)"
        except UnsupportedModelError as exc:
            result = "clear error"
            msg = str(exc).split(": ", 1)[1].split(". zennit", 1)[0]
            detail = f"refused: {msg[:160]}{'…' if len(msg) > 160 else ''}"
        print(f"| {family} | `{name}` ({size}²) | {result} | {detail} ({time.perf_counter() - t0:.1f} s) |", flush=True)
    _ = relmon


if __name__ == "__main__":
    main()
