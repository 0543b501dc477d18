"""Which torchvision families relmon's LRP supports, measured: writes the README's support matrix (between its
markers) and docs/model_coverage.md (its support section), and prints both.

    nice .venv/bin/python scripts/support_matrix.py      # ~5 min on 2 shared cores

Each model is built with weights=None, its BatchNorm statistics randomised to stand in for trained ones (an
untrained BatchNorm is the identity and hides merging problems; torchvision's zero ViT head is replaced by a
random one), and judged by :func:`relmon.explain.support.lrp_support`: ``lrp`` at zero_bias=True, so that a model
whose every rule conserves relevance must give Σ R = logit; "exact" means within 1e-3 of the logit, "approximate"
that LRP runs but relevance is lost (the layers losing it are named), "refused" that the support check refuses
it. A second table covers small constructed models with the pitfalls relmon's support check is for (the same
models as in tests/test_explain.py).
"""

from __future__ import annotations

import re
import time
import warnings
from pathlib import Path

import torch
import torch.nn.functional as F
import torchvision.models as tvm
from torch import nn

from relmon.explain import UnsupportedModelError, conservation, explain_full
from relmon.explain.lrp import first_layer
from relmon.explain.support import lrp_support

ROOT = Path(__file__).resolve().parents[1]
# (family, model, image size, batch, LRP options)
FAMILIES = [
    ("VGG", "vgg16_bn", 64, 2, {}),
    ("ResNet", "resnet18", 64, 2, {}),
    ("ResNet", "resnet50", 64, 2, {}),
    ("DenseNet", "densenet121", 64, 2, {}),
    ("MobileNetV3", "mobilenet_v3_small", 64, 2, {}),
    ("EfficientNet", "efficientnet_b0", 64, 2, {}),
    ("ConvNeXt", "convnext_tiny", 64, 2, {}),
    ("Swin", "swin_t", 64, 2, {}),
    ("Swin", "swin_t", 64, 2, {"attention": "cp"}),
    ("ViT", "vit_b_16", 224, 1, {}),
    ("ViT", "vit_b_16", 224, 1, {"attention": "cp"}),
    ("Swin V2", "swin_v2_t", 64, 1, {}),
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
    lines = ["| constructed model | result | detail |", "|---|---|---|"]
    for cls in (HeadRegisteredFirst, LogSoftmaxOutput, FunctionalELU, UntraceableWithELU, UntraceableClean):
        model = cls().eval()
        x = torch.rand(2, 1, 28, 28)
        with warnings.catch_warnings(record=True) as caught:
            warnings.simplefilter("always")
            try:
                e = explain_full(model, x, "lrp", zero_bias=True)
                err = conservation(e.relevance, e.logits, e.target).abs().max().item()
                result, detail = "works", f"relevance conserved within {err:.1e}; first layer '{first_layer(model)}'"
                if cls is HeadRegisteredFirst:
                    detail += f"; zennit's own EpsilonPlusFlat (Flat rule on 'fc'): {_zennit_correlation(model, x, e)}"
            except UnsupportedModelError as exc:
                msg = str(exc).split(": ", 1)[1].split(". zennit", 1)[0]
                result, detail = "clear error", f"refused: {msg[:150]}{'…' if len(msg) > 150 else ''}"
        if caught:
            detail += " (warns: could not trace forward, checked by a hook probe)"
        lines.append(f"| `{cls.__name__}` | {result} | {detail} |")
        print(lines[-1], flush=True)
    return lines


def _model(name):
    model = getattr(tvm, name)(weights=None).eval()
    with torch.no_grad():
        for m in model.modules():
            if isinstance(m, torch.nn.BatchNorm2d):
                m.running_mean.uniform_(-0.5, 0.5)
                m.running_var.uniform_(0.5, 2.0)
        head = getattr(getattr(model, "heads", None), "head", None)
        if head is not None:  # torchvision starts ViT with a zero head: every logit would be 0
            torch.nn.init.normal_(head.weight, std=0.02)
    return model


def families():
    lines = ["| family | model | LRP | measured (zero bias, `lrp`) | time |", "|---|---|---|---|---|"]
    for family, name, size, batch, options in FAMILIES:
        torch.manual_seed(0)
        model = _model(name)
        x = torch.randn(batch, 3, size, size)
        t0 = time.perf_counter()
        report = lrp_support(model, x, **options)
        detail = report.summary().split(": ", 1)[1]
        if len(detail) > 200:
            detail = detail[:200] + "…"
        opts = "".join(f", {k}={v}" for k, v in options.items())
        lines.append(f"| {family} | `{name}` ({size}²{opts}) | **{report.verdict}** | {detail} | "
                     f"{time.perf_counter() - t0:.0f} s |")
        print(lines[-1], flush=True)
    return lines


def _replace(path: Path, start: str, end: str, body: str, heading: str = "") -> None:
    text = path.read_text() if path.exists() else heading
    block = f"{start}\n{body}\n{end}"
    if start in text:
        text = re.sub(re.escape(start) + ".*?" + re.escape(end), lambda _: block, text, flags=re.S)
    else:
        text = text.rstrip("\n") + "\n\n" + block + "\n"
    path.write_text(text)


def _families_in_readme() -> list[str]:
    """The families table as the README holds it (for ``--keep-families``: redo only the constructed table)."""
    text = (ROOT / "README.md").read_text()
    block = text.split("<!-- support-matrix:start -->", 1)[1].split("<!-- support-matrix:end -->", 1)[0]
    lines = [line for line in block.splitlines() if line.startswith("|")]
    cut = next((i for i, line in enumerate(lines) if line.startswith("| constructed model")), len(lines))
    return lines[:cut]


def main():
    import argparse

    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--keep-families", action="store_true",
                        help="keep the torchvision table the README holds and redo only the constructed models")
    args = parser.parse_args()
    table = "\n".join(_families_in_readme() if args.keep_families else families())
    small = "\n".join(constructed())
    note = ("Generated by `python scripts/support_matrix.py` (torchvision, `weights=None`, BatchNorm statistics "
            "randomised to stand in for trained ones, `lrp` with `zero_bias=True`; exact = Σ R within 1e-3 of the "
            "logit, every sample). Every family also works with `sensitivity`, `gradient_x_input` and `random`.")
    _replace(ROOT / "README.md", "<!-- support-matrix:start -->", "<!-- support-matrix:end -->",
             f"{note}\n\n{table}\n\nSmall constructed models with the pitfalls above (same script; like those "
             f"`tests/test_explain.py` checks):\n\n{small}")
    _replace(ROOT / "docs" / "model_coverage.md", "<!-- support-matrix:start -->", "<!-- support-matrix:end -->",
             f"{note}\n\n{table}", heading="# Model coverage of relmon's LRP\n")


if __name__ == "__main__":
    main()
