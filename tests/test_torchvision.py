"""torchvision models (weights=None) through relmon's canonizers and support check."""

import pytest
import torch
import torchvision.models as tvm

import relmon
from relmon.explain import conservation, explain_full

pytestmark = pytest.mark.slow


@pytest.mark.parametrize("factory", [tvm.vgg16_bn, tvm.resnet18])
def test_vgg_and_resnet_give_finite_conserved_heatmaps(factory):
    torch.manual_seed(0)
    model = factory(weights=None).eval()
    relmon.attach_preprocessing(model, relmon.Preprocessing(mean=(0.485, 0.456, 0.406), std=(0.229, 0.224, 0.225)))
    x = torch.randn(2, 3, 64, 64)
    params = {k: v.clone() for k, v in model.state_dict().items()}
    for method in ("lrp", "lrp:epsilon_gamma_box"):
        e = explain_full(model, x, method, zero_bias=True)
        assert e.relevance.shape == x.shape
        assert torch.isfinite(e.relevance).all()
        # the canonizers (VGG: BatchNorm merging; ResNet: also the residual sums) keep relevance whole
        assert conservation(e.relevance, e.logits, e.target).abs().max() < 1e-2
    for k, v in model.state_dict().items():
        assert torch.equal(v, params[k]), k


@pytest.mark.parametrize("factory", [tvm.mobilenet_v3_small, tvm.densenet121])
def test_families_refused_before_now_explain(factory):
    # MobileNetV3 (Hardswish, squeeze-excitation) and DenseNet (BatchNorms after concatenations) have rules now
    model = factory(weights=None).eval()
    with torch.no_grad():
        for m in model.modules():
            if isinstance(m, torch.nn.BatchNorm2d):
                m.running_mean.uniform_(-0.5, 0.5)
    r = relmon.explain(model, torch.randn(1, 3, 64, 64), "lrp")
    assert torch.isfinite(r).all() and r.abs().sum() > 0
