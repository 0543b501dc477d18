"""Which torchvision families relmon's LRP supports: prints the README's support matrix.

    .venv/bin/python scripts/support_matrix.py

Each model is built with weights=None, its BatchNorm statistics randomised to stand in for trained
ones (an untrained BatchNorm is the identity and hides merging problems), and explained with
``lrp`` at zero_bias=True, so that a supported model must conserve relevance exactly. A second table
covers small constructed models with the pitfalls relmon's support check is for (the same models
as in tests/test_explain.py).
"""

from __future__ import annotations

import time
import warnings

import torch
import torch.nn.functional as F
import torchvision.models as tvm
from torch import nn

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


class _Net(nn.Module):
    def __init__(self, head_first=False):
        super().__init__()
        if head_first:
            self.fc = nn.Linear(4 * 14 * 14, 10)
        self.conv = nn.Conv2d(1, 4, 3, padding=1)
        self.pool = nn.MaxPool2d(2)
        self.conv2 = nn.Conv2d(4, 4, 3, padding=1)
        if not head_first:
            self.fc = nn.Linear(4 * 14 * 14, 10)

    def body(self, x, act=torch.relu):
        return self.fc(act(self.conv2(self.pool(torch.relu(self.conv(x))))).flatten(1))


class HeadRegisteredFirst(_Net):
    def __init__(self):
        super().__init__(head_first=True)

    def forward(self, x):
        return self.body(x)


class LogSoftmaxOutput(_Net):
    def forward(self, x):
        return F.log_softmax(self.body(x), dim=1)


class FunctionalELU(_Net):
    def forward(self, x):
        return self.body(x, F.elu)


class UntraceableWithELU(_Net):
    def forward(self, x):
        if x.shape[-1] != 28:
            raise ValueError("28x28 only")
        return self.body(x, F.elu)


class UntraceableClean(_Net):
    def forward(self, x):
        if x.shape[-1] != 28:
            raise ValueError("28x28 only")
        return self.body(x)


def _zennit_correlation(model, x, e):
    """Correlation of zennit's EpsilonPlusFlat heatmap (first layer by registration) with relmon's."""
    import zennit.composites as zc
    from zennit.attribution import Gradient

    with Gradient(model=model, composite=zc.EpsilonPlusFlat(zero_params="bias")) as attributor:
        _, theirs = attributor(x, lambda out: torch.eye(out.shape[1])[e.target] * out)
    a, b = theirs.flatten(1), e.relevance.flatten(1)
    a, b = a - a.mean(1, keepdim=True), b - b.mean(1, keepdim=True)
    corr = (a * b).sum(1) / (a.norm(dim=1) * b.norm(dim=1))
    return "heatmap correlation " + ", ".join(f"{c:.2f}" for c in corr.tolist())


def constructed():
    print("\n| constructed model | result | detail |")
    print("|---|---|---|")
    for cls in (HeadRegisteredFirst, LogSoftmaxOutput, FunctionalELU, UntraceableWithELU, UntraceableClean):
        model = cls().eval()
        x = torch.rand(2, 1, 28, 28)
        with warnings.catch_warnings(record=True) as caught:
            warnings.simplefilter("always")
            try:
                e = explain_full(model, x, "lrp", zero_bias=True)
                err = conservation(e.relevance, e.logits, e.target).abs().max().item()
                result, detail = "works", f"relevance conserved within {err:.1e}; first layer '{relmon.explain.first_layer(model)}'"
                if cls is HeadRegisteredFirst:
                    detail += f"; zennit's own EpsilonPlusFlat (Flat rule on 'fc'): {_zennit_correlation(model, x, e)}"
            except UnsupportedModelError as exc:
                msg = str(exc).split(": ", 1)[1].split(". zennit", 1)[0]
                result, detail = "clear error", f"refused: {msg[:150]}{'…' if len(msg) > 150 else ''}"
        if caught:
            detail += " (warns: could not trace forward, checked by a hook probe)"
        print(f"| `{cls.__name__}` | {result} | {detail} |", flush=True)


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
    constructed()


if __name__ == "__main__":
    main()
