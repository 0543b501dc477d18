"""LRP rules for current image classifiers (relmon.explain.lrp_rules): conservation on small configurations of
torchvision's own classes, the AttnLRP rules against the paper's formulas, per-layer conservation of every rule
relmon adds, the refusal of what is still unsupported, and models left as they were."""

from __future__ import annotations

import pytest
import torch
import torchvision.models as tvm
from torch import nn
from torchvision.models.convnext import CNBlockConfig, ConvNeXt
from torchvision.models.densenet import DenseNet
from torchvision.models.efficientnet import EfficientNet, MBConvConfig
from torchvision.models.swin_transformer import SwinTransformer
from torchvision.models.vision_transformer import VisionTransformer

import relmon
from relmon.explain import UnsupportedModelError, conservation, explain_full, lrp_rules
from relmon.explain.lrp import composite_for
from relmon.explain.support import lrp_support


def _realistic(model: nn.Module) -> nn.Module:
    """weights=None model with trained-looking normalisation statistics and affine parameters (untrained ones are
    the identity and hide mistakes) and a non-zero head (torchvision's ViT starts with a zero head)."""
    g = torch.Generator().manual_seed(1)
    with torch.no_grad():
        for m in model.modules():
            if isinstance(m, nn.BatchNorm2d):
                m.running_mean.copy_(torch.rand(m.running_mean.shape, generator=g) - 0.5)
                m.running_var.copy_(torch.rand(m.running_var.shape, generator=g) * 1.5 + 0.5)
            if isinstance(m, (nn.LayerNorm, nn.GroupNorm)) and m.weight is not None:
                m.weight.copy_(torch.rand(m.weight.shape, generator=g) + 0.5)
                m.bias.copy_(torch.rand(m.bias.shape, generator=g) * 0.6 - 0.3)
        head = getattr(getattr(model, "heads", None), "head", getattr(model, "head", None))
        if isinstance(head, nn.Linear):  # torchvision starts ViT with a zero head, Swin with a tiny one
            head.weight.copy_(torch.randn(head.weight.shape, generator=g) * 0.3)
    return model.eval()


def tiny_vit():
    return VisionTransformer(image_size=32, patch_size=8, num_layers=2, num_heads=2, hidden_dim=32, mlp_dim=64,
                             num_classes=10)


def tiny_swin():
    return SwinTransformer(patch_size=[4, 4], embed_dim=16, depths=[2, 2], num_heads=[2, 2], window_size=[4, 4],
                           num_classes=10)


def tiny_convnext():
    return ConvNeXt([CNBlockConfig(16, 32, 1), CNBlockConfig(32, None, 1)], layer_scale=0.5, num_classes=10)


def tiny_densenet():
    return DenseNet(growth_rate=8, block_config=(2, 2), num_init_features=16, bn_size=2, num_classes=10)


def tiny_efficientnet():
    return EfficientNet([MBConvConfig(1, 3, 1, 16, 16, 1), MBConvConfig(4, 3, 2, 16, 24, 2)], dropout=0.1,
                        num_classes=10)


def _relevance_with_inputs(model, x, attention="cp", extra=()):
    """Relevance of the pixels and of learned input tensors (``extra``, e.g. ViT's class token) at zero bias."""
    x = x.detach().clone().requires_grad_(True)
    composite, _ = composite_for("epsilon_plus_flat", model, x, zero_bias=True, attention=attention)
    with composite.context(model) as modified:
        logits = modified(x)
        target = logits.argmax(1)
        seed = torch.zeros_like(logits).scatter_(1, target[:, None], 1.0) * logits.detach()
        grads = torch.autograd.grad(logits, [x, *extra], grad_outputs=seed)
    return logits.detach().gather(1, target[:, None]).squeeze(1), grads


@pytest.mark.parametrize(("factory", "options"), [
    (tiny_convnext, {}),
    (tiny_densenet, {}),
])
def test_exact_families_conserve_relevance(factory, options):
    torch.manual_seed(0)
    model = _realistic(factory())
    x = torch.randn(2, 3, 32, 32)
    e = explain_full(model, x, "lrp", zero_bias=True, **options)
    assert torch.isfinite(e.relevance).all()
    assert conservation(e.relevance, e.logits, e.target).abs().max() < 1e-3


def test_swin_with_cp_attention_loses_only_what_the_stabilisers_take():
    # Swin's residual stream has sums near zero, where the 1e-6 stabiliser of the sum and attention rules takes
    # a few 1e-3 of the logit (the same in float64): "approximate", but no rule leaks by design
    torch.manual_seed(0)
    model = _realistic(tiny_swin())
    report = lrp_support(model.double(), torch.randn(2, 3, 32, 32, dtype=torch.float64), attention="cp")
    assert report.conservation < 1e-2
    assert abs(report.unaccounted) < 1e-6


def test_vit_with_cp_attention_conserves_relevance_over_pixels_and_class_token():
    torch.manual_seed(0)
    model = _realistic(tiny_vit())
    x = torch.randn(1, 3, 32, 32)  # batch 1: the class token's gradient is that sample's relevance
    logit, (r_pixels, r_token) = _relevance_with_inputs(model, x, "cp", extra=(model.class_token,))
    total = r_pixels.sum() + r_token.sum()
    assert abs(float(total / logit) - 1) < 1e-3
    assert abs(float(r_token.sum() / logit)) > 1e-3  # the class token does take relevance: ViT is "approximate"


def test_attnlrp_softmax_rule_is_the_papers_formula():
    # AttnLRP (Achtibat et al. 2024, softmax rule): R_in = x ⊙ (R_out − s · ΣR_out), with s = softmax(x)
    torch.manual_seed(0)
    x = torch.randn(3, 7, dtype=torch.float64, requires_grad=True)
    r_out = torch.randn(3, 7, dtype=torch.float64)
    rule = lrp_rules.AttentionRule("attnlrp")
    s = rule.softmax(x)
    grad, = torch.autograd.grad(s, x, grad_outputs=r_out / s.detach())
    expected = x.detach() * (r_out - s.detach() * r_out.sum(-1, keepdim=True))
    torch.testing.assert_close(x.detach() * grad, expected)
    with rule:  # the same through the torch function mode (as torchvision's Swin attention calls it)
        s2 = torch.nn.functional.softmax(x, dim=-1)
    grad2, = torch.autograd.grad(s2, x, grad_outputs=r_out / s2.detach())
    torch.testing.assert_close(x.detach() * grad2, expected)


def test_attnlrp_splits_a_product_of_two_activations_half_and_half():
    torch.manual_seed(0)
    a = torch.randn(2, 4, 5, dtype=torch.float64, requires_grad=True)
    b = torch.randn(2, 5, 3, dtype=torch.float64, requires_grad=True)
    y = a @ b
    r = torch.randn_like(y)
    for rule, share in (("attnlrp", 0.5), ("cp", 1.0)):
        with lrp_rules.AttentionRule(rule):
            out = torch.matmul(a, b)
        torch.testing.assert_close(out, y)  # the forward value is unchanged
        ga, gb = torch.autograd.grad(out, [a, b], grad_outputs=r / y.detach())
        torch.testing.assert_close((a * ga).sum(), share * r.sum())
        torch.testing.assert_close((b * gb).sum(), share * r.sum())
    # CP-LRP: the attention matrix is a constant, so q and k get no relevance
    q = torch.randn(4, 6, dtype=torch.float64, requires_grad=True)
    a_cp = lrp_rules.AttentionRule("cp").softmax(q)
    assert a_cp.grad_fn is None


def test_attnlrp_absorbs_relevance_in_the_softmax_but_conserves_elsewhere():
    torch.manual_seed(0)
    model = _realistic(tiny_vit())
    report = lrp_support(model, torch.randn(2, 3, 32, 32), attention="attnlrp")
    assert report.verdict == "approximate"
    kinds = dict(report.leaks)
    assert abs(kinds.pop("SelfAttention")) > 1e-2  # the softmax rule's bias term
    assert all(abs(v) < 1e-3 for v in kinds.values()), kinds  # LayerNorm, Sum, GELU, linear layers conserve


@pytest.mark.parametrize("factory", [tiny_efficientnet, lambda: tvm.mobilenet_v3_small(num_classes=10)])
def test_every_rule_relmon_adds_conserves_relevance_layer_by_layer(factory):
    # EfficientNet/MobileNetV3 end to end lose relevance in zennit's z+ rule on (depthwise) convolutions; the
    # squeeze-excitation gates, residual sums, SiLU/Hardswish and unmerged BatchNorms must not lose any.
    torch.manual_seed(0)
    model = _realistic(factory())
    report = lrp_support(model, torch.randn(2, 3, 32, 32))
    assert report.verdict in ("exact", "approximate")
    for kind, share in report.leaks:
        assert kind == "Conv2d" or abs(share) < 1e-3, (kind, share)
    assert abs(report.unaccounted) < 1e-3


def test_dropping_the_detach_on_the_layernorm_factor_breaks_conservation(monkeypatch):
    # mutation check: with 1/std differentiated, LayerNorm is scale-invariant and its gradient × input vanishes
    torch.manual_seed(0)
    model = _realistic(tiny_convnext())
    x = torch.randn(2, 3, 32, 32)

    def undetached(x, dims, eps):
        return (x - x.mean(dims, keepdim=True)) / torch.sqrt(x.var(dims, unbiased=False, keepdim=True) + eps)

    monkeypatch.setattr(lrp_rules, "_normalise", undetached)
    e = explain_full(model, x, "lrp", zero_bias=True)
    assert conservation(e.relevance, e.logits, e.target).abs().max() > 0.1


@pytest.mark.parametrize("factory", [tiny_vit, tiny_swin, tiny_convnext, tiny_efficientnet, tiny_densenet])
def test_the_model_computes_the_same_and_is_restored(factory):
    torch.manual_seed(0)
    model = _realistic(factory())
    x = torch.randn(2, 3, 32, 32)
    with torch.no_grad():
        before = model(x)
    state = {k: v.clone() for k, v in model.state_dict().items()}
    names = [n for n, _ in model.named_modules()]
    xg = x.clone().requires_grad_(True)
    composite, _ = composite_for("epsilon_plus_flat", model, xg)
    with composite.context(model) as modified:
        torch.testing.assert_close(modified(xg).detach(), before, rtol=1e-5, atol=1e-5)
    with torch.no_grad():
        assert torch.equal(model(x), before)
    assert [n for n, _ in model.named_modules()] == names
    assert all("forward" not in m.__dict__ for m in model.modules())
    for k, v in model.state_dict().items():
        assert torch.equal(v, state[k]), k


class TanhNet(nn.Module):
    def __init__(self):
        super().__init__()
        self.conv = nn.Conv2d(1, 4, 3)
        self.act = nn.Tanh()
        self.fc = nn.Linear(4 * 26 * 26, 10)

    def forward(self, x):
        return self.fc(self.act(self.conv(x)).flatten(1))


class RawAttention(nn.Module):
    def __init__(self):
        super().__init__()
        self.embed = nn.Linear(4, 8)
        self.attn = nn.MultiheadAttention(8, 2, batch_first=True)
        self.fc = nn.Linear(8, 3)

    def forward(self, x):
        h = self.embed(x.flatten(2).transpose(1, 2))
        return self.fc(self.attn(h, h, h)[0].mean(1))


class FunctionalGELU(nn.Module):
    def __init__(self):
        super().__init__()
        self.conv = nn.Conv2d(1, 4, 3)
        self.fc = nn.Linear(4 * 26 * 26, 10)

    def forward(self, x):
        return self.fc(nn.functional.gelu(self.conv(x)).flatten(1))


@pytest.mark.parametrize(("factory", "shape", "message"), [
    (TanhNet, (2, 1, 28, 28), r"'act' \(Tanh\)"),
    (RawAttention, (2, 4, 4, 4), r"'attn' \(nn.MultiheadAttention outside torchvision's ViT EncoderBlock"),
    (FunctionalGELU, (2, 1, 28, 28), r"gelu 'gelu' in forward\(\)"),
    (lambda: tvm.swin_v2_t(num_classes=10), (1, 3, 64, 64), r"ShiftedWindowAttentionV2: no LRP rule"),
])
def test_what_is_still_unsupported_is_refused(factory, shape, message):
    model = factory().eval()
    with pytest.raises(UnsupportedModelError, match=message):
        relmon.explain(model, torch.randn(shape), "lrp")
    assert lrp_support(model, torch.randn(shape)).verdict == "refused"


def test_attention_option_is_checked():
    model = _realistic(tiny_vit())
    with pytest.raises(ValueError, match="unknown attention rule 'softmax'; choose one of attnlrp, cp"):
        relmon.explain(model, torch.randn(1, 3, 32, 32), "lrp", attention="softmax")


def test_methods_check_prints_the_measured_verdict(capsys):
    from relmon.cli import main

    assert main(["methods", "--check", "torchvision.models:resnet18", "--image-size", "32"]) == 0
    out = capsys.readouterr().out
    assert "torchvision.models:resnet18: LRP (lrp:epsilon_plus_flat) exact: relevance conserved within" in out
    assert main(["methods", "--check", "swin_v2_t"]) == 3
    out = capsys.readouterr().out
    assert "swin_v2_t: LRP (lrp:epsilon_plus_flat) refused: 'features.1.0.attn' (ShiftedWindowAttentionV2" in out
    assert main(["methods", "--check", "not_a_model"]) == 3  # the CLI's clear-error path (ValueError)
    assert "unknown model 'not_a_model'" in capsys.readouterr().err
