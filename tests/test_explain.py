"""relmon.explain: conservation, agreement with zennit, the gradient baselines, and input checks."""

import pytest
import torch
import zennit.composites as zc
import zennit.rules as zr
from torch import nn
from zennit.attribution import Gradient
from zennit.canonizers import SequentialMergeBatchNorm
from zennit.types import Convolution

import relmon
from relmon.explain import COMPOSITES, UnsupportedModelError, conservation, explain_full, to_heatmap
from relmon.models import SmallCNN, input_bounds

SMALL_EPSILON = ["epsilon_plus_flat", "epsilon_gamma_box", "epsilon_alpha2_beta1_flat"]


def bias_free_net():
    torch.manual_seed(1)
    model = SmallCNN(bias=False).eval()
    relmon.attach_preprocessing(model, relmon.Preprocessing(mean=0.0, std=1.0))
    return model


@pytest.mark.parametrize("composite", SMALL_EPSILON)
def test_lrp_conserves_relevance_on_bias_free_net(composite):
    model = bias_free_net()
    x = torch.rand(6, 1, 28, 28)
    e = explain_full(model, x, f"lrp:{composite}")
    logit = e.logits.gather(1, e.target[:, None]).squeeze(1)
    total = e.relevance.sum((1, 2, 3))
    torch.testing.assert_close(total, logit, rtol=1e-3, atol=1e-5)


@pytest.mark.parametrize("composite", ["epsilon_alpha2_beta1", "alpha2_beta1"])
def test_alpha_beta_on_pixels_conserves_only_approximately(composite):
    # The alpha-beta rule conserves relevance only where a neuron has both positive and negative
    # contributions. On the pixel layer, at image borders (zero padding), some neurons have none of
    # one sign, and their alpha (or beta) share is over-counted: a few per cent, reported, not hidden.
    model = bias_free_net()
    x = torch.rand(6, 1, 28, 28)
    e = explain_full(model, x, f"lrp:{composite}")
    share = conservation(e.relevance, e.logits, e.target)
    assert share.abs().max() < 0.1
    flat = explain_full(model, x, f"lrp:{composite.replace('epsilon_', '')}_flat".replace("alpha2_beta1_flat", "epsilon_alpha2_beta1_flat"))
    assert conservation(flat.relevance, flat.logits, flat.target).abs().max() < 1e-3


def test_large_epsilon_absorbs_relevance_and_the_share_is_reported():
    model = bias_free_net()
    x = torch.rand(6, 1, 28, 28)
    shares = {}
    for composite in ("epsilon_0_01", "epsilon_100"):
        e = explain_full(model, x, f"lrp:{composite}")
        shares[composite] = conservation(e.relevance, e.logits, e.target)
    # On a bias-free ReLU net the epsilon rule only ever shrinks relevance: the absorbed share lies in
    # [0, 1] and grows with epsilon (the paper's epsilon = 100 absorbs nearly all of it).
    assert bool((shares["epsilon_0_01"] >= -1e-4).all()) and bool((shares["epsilon_100"] <= 1 + 1e-4).all())
    assert bool((shares["epsilon_100"] > shares["epsilon_0_01"]).all())
    print({k: round(v.mean().item(), 4) for k, v in shares.items()})


@pytest.mark.parametrize("name", ["fmnist_cnn", "fmnist_vgg"])
@pytest.mark.parametrize("composite", ["epsilon_plus_flat", "epsilon_gamma_box", "epsilon_alpha2_beta1_flat"])
def test_embedded_models_conserve_once_biases_are_accounted_for(name, composite, sample_batch, request):
    model = request.getfixturevalue(name.split("_")[1])
    x, _ = sample_batch
    with_bias = explain_full(model, x, f"lrp:{composite}")
    no_bias = explain_full(model, x, f"lrp:{composite}", zero_bias=True)
    # zero_bias: the rules ignore biases (incl. those BatchNorm merging creates), so every bit of the
    # explained logit reaches the input ...
    assert conservation(no_bias.relevance, no_bias.logits, no_bias.target).abs().max() < 1e-3
    # ... and with biases the difference is the absorbed share, which is what conservation() reports.
    share = conservation(with_bias.relevance, with_bias.logits, with_bias.target)
    logit = with_bias.logits.gather(1, with_bias.target[:, None]).squeeze(1)
    torch.testing.assert_close(with_bias.relevance.sum((1, 2, 3)) + share * logit, logit)


def zennit_reference(model, x, composite_name):
    """Relevance straight from zennit, built here independently of relmon's registry."""
    canonizers = [SequentialMergeBatchNorm()]
    lo, hi = input_bounds(model, x.shape[1])
    low, high = lo.view(1, -1, 1, 1).expand_as(x), hi.view(1, -1, 1, 1).expand_as(x)

    def every_layer(rule):
        return zc.LayerMapComposite(
            layer_map=zc.layer_map_base() + [(Convolution, rule()), (nn.Linear, rule())], canonizers=canonizers
        )

    composite = {
        "epsilon_plus_flat": lambda: zc.EpsilonPlusFlat(canonizers=canonizers),
        "epsilon_gamma_box": lambda: zc.EpsilonGammaBox(low=low, high=high, canonizers=canonizers),
        "epsilon_alpha2_beta1": lambda: zc.EpsilonAlpha2Beta1(canonizers=canonizers),
        "epsilon_alpha2_beta1_flat": lambda: zc.EpsilonAlpha2Beta1Flat(canonizers=canonizers),
        "epsilon_0_01": lambda: every_layer(lambda: zr.Epsilon(epsilon=0.01)),
        "epsilon_100": lambda: every_layer(lambda: zr.Epsilon(epsilon=100.0)),
        "alpha2_beta1": lambda: every_layer(lambda: zr.AlphaBeta(alpha=2.0, beta=1.0)),
    }[composite_name]()
    with torch.no_grad():
        target = model(x).argmax(1)
    with Gradient(model=model, composite=composite) as attributor:
        out, relevance = attributor(x, lambda out: torch.eye(out.shape[1])[target] * out)
    return relevance


@pytest.mark.parametrize("composite", sorted(COMPOSITES))
def test_relmon_composites_equal_zennit(composite, vgg, sample_batch):
    x, _ = sample_batch
    ours = relmon.explain(vgg, x, f"lrp:{composite}")
    theirs = zennit_reference(vgg, x, composite)
    torch.testing.assert_close(ours, theirs, rtol=1e-5, atol=1e-6)


def test_bare_lrp_is_the_default_composite(cnn, sample_batch):
    x, _ = sample_batch
    torch.testing.assert_close(relmon.explain(cnn, x, "lrp"), relmon.explain(cnn, x, "lrp:epsilon_plus_flat"))
    assert relmon.canonical_method("lrp") == "lrp:epsilon_plus_flat"


def test_sensitivity_is_the_pooled_input_gradient(cnn, sample_batch):
    x, _ = sample_batch
    xg = x.clone().requires_grad_(True)
    logits = cnn(xg)
    target = logits.argmax(1)
    grad, = torch.autograd.grad(logits.gather(1, target[:, None]).sum(), xg)
    r = relmon.explain(cnn, x, "sensitivity")
    torch.testing.assert_close(r, grad)
    x3 = torch.randn(2, 3, 5, 5)
    torch.testing.assert_close(to_heatmap(x3, "sensitivity"), x3.pow(2).sum(1).sqrt())
    torch.testing.assert_close(to_heatmap(x3, "sensitivity", norm="linf"), x3.abs().amax(1))
    torch.testing.assert_close(to_heatmap(x3, "lrp:epsilon_plus_flat"), x3.sum(1))


def test_gradient_x_input(cnn, sample_batch):
    x, _ = sample_batch
    torch.testing.assert_close(relmon.explain(cnn, x, "gradient_x_input"), relmon.explain(cnn, x, "sensitivity") * x)


def test_deconvnet_matches_hand_computation():
    w1 = torch.tensor([[1.0, -2.0, 0.5, 1.0], [-1.0, 1.0, 1.0, -0.5], [0.5, 0.5, -1.0, 2.0]])
    w2 = torch.tensor([[1.0, -1.0, 2.0], [-1.0, 3.0, 1.0]])
    model = nn.Sequential(nn.Flatten(), nn.Linear(4, 3, bias=False), nn.ReLU(), nn.Linear(3, 2, bias=False))
    with torch.no_grad():
        model[1].weight.copy_(w1)
        model[3].weight.copy_(w2)
    x = torch.tensor([[[[1.0, 0.0], [1.0, 0.0]]]])  # hidden pre-activations (1.5, 0, -0.5): unit 2 inactive
    target = 1
    signal = torch.relu(w2[target])  # deconvnet: ReLU passes positive signals, not gated by the forward
    expected = (w1.t() @ signal).view(1, 1, 2, 2)
    torch.testing.assert_close(relmon.explain(model, x, "deconvnet", target=target), expected)
    # the gradient would have been gated by the forward activation pattern: a different answer
    assert not torch.allclose(relmon.explain(model, x, "sensitivity", target=target), expected)


def test_random_heatmap_is_seeded(cnn, sample_batch):
    x, _ = sample_batch
    a = relmon.explain(cnn, x, "random", seed=3)
    assert torch.equal(a, relmon.explain(cnn, x, "random", seed=3))
    assert not torch.equal(a, relmon.explain(cnn, x, "random", seed=4))
    assert a.shape == x.shape and float(a.min()) >= 0 and float(a.max()) <= 1


def test_target_handling(cnn, sample_batch):
    x, _ = sample_batch
    e = explain_full(cnn, x, "sensitivity")
    assert torch.equal(e.target, cnn(x).argmax(1))
    e3 = explain_full(cnn, x, "sensitivity", target=3)
    assert torch.equal(e3.target, torch.full((8,), 3))
    t = torch.arange(8) % 10
    et = explain_full(cnn, x, "lrp", target=t)
    assert torch.equal(et.target, t)
    # the seed is the chosen class' logit: relevance sums track that logit, not the predicted one
    assert not torch.allclose(et.relevance, relmon.explain(cnn, x, "lrp"))
    with pytest.raises(ValueError, match=r"outside \[0, 9\]"):
        relmon.explain(cnn, x, "lrp", target=10)
    with pytest.raises(ValueError, match=r"shape \(8,\)"):
        relmon.explain(cnn, x, "lrp", target=torch.zeros(3, dtype=torch.long))
    with pytest.raises(TypeError, match="integer class indices"):
        relmon.explain(cnn, x, "lrp", target=torch.zeros(8))


def _hook_count(model):
    return sum(len(m._forward_hooks) + len(m._forward_pre_hooks) + len(m._backward_hooks) for m in model.modules())


@pytest.mark.parametrize("method", ["lrp", "lrp:epsilon_gamma_box", "deconvnet", "sensitivity"])
def test_model_is_left_unchanged(method, sample_batch):
    model = relmon.load_embedded("fmnist_vgg")
    model.train()
    model.classifier[1].weight.requires_grad_(False)
    before = {k: v.clone() for k, v in model.state_dict().items()}
    flags = [p.requires_grad for p in model.parameters()]
    hooks = _hook_count(model)
    x, _ = sample_batch
    relmon.explain(model, x, method)
    assert model.training and all(m.training for m in model.modules())
    assert [p.requires_grad for p in model.parameters()] == flags
    assert _hook_count(model) == hooks
    after = model.state_dict()
    assert before.keys() == after.keys()
    for k in before:
        assert torch.equal(before[k], after[k]), k
    assert all(p.grad is None for p in model.parameters())


def test_works_inside_inference_mode(cnn, sample_batch):
    x, _ = sample_batch
    expected = relmon.explain(cnn, x, "lrp")
    with torch.inference_mode():
        xi = x.clone()
        got = relmon.explain(cnn, xi, "lrp")
    torch.testing.assert_close(got, expected)


def test_bad_inputs_raise_clear_errors(cnn):
    with pytest.raises(ValueError, match=r"4 dimensions.*unsqueeze"):
        relmon.explain(cnn, torch.rand(1, 28, 28))
    with pytest.raises(ValueError, match="expects 1"):
        relmon.explain(cnn, torch.rand(2, 3, 28, 28))
    with pytest.raises(TypeError, match="floating-point"):
        relmon.explain(cnn, torch.zeros(2, 1, 28, 28, dtype=torch.uint8))
    bad = torch.rand(3, 1, 28, 28)
    bad[1, 0, 3, 3] = float("nan")
    bad[2, 0, 0, 0] = float("inf")
    with pytest.raises(ValueError, match=r"NaN or Inf values in samples \[1, 2\]"):
        relmon.explain(cnn, bad)
    with pytest.raises(ValueError, match="could not process a batch of shape"):
        relmon.explain(cnn, torch.rand(2, 1, 32, 32))
    with pytest.raises(ValueError, match=r"unknown method 'lrp:nope'.*lrp:epsilon_gamma_box.*sensitivity"):
        relmon.explain(cnn, torch.rand(2, 1, 28, 28), "lrp:nope")
    with pytest.raises(TypeError, match="takes no option"):
        relmon.explain(cnn, torch.rand(2, 1, 28, 28), "sensitivity", seed=1)
    with pytest.raises(TypeError, match="torch.Tensor"):
        relmon.explain(cnn, [[0.0]])


def test_gamma_box_needs_the_input_range():
    model = SmallCNN().eval()
    with pytest.raises(ValueError, match="attach_preprocessing"):
        relmon.explain(model, torch.rand(2, 1, 28, 28), "lrp:epsilon_gamma_box")
    r = relmon.explain(model, torch.rand(2, 1, 28, 28), "lrp:epsilon_gamma_box", low=0.0, high=1.0)
    assert torch.isfinite(r).all()


class SiLUNet(nn.Module):
    def __init__(self):
        super().__init__()
        self.conv = nn.Conv2d(1, 4, 3)
        self.act = nn.SiLU()
        self.fc = nn.Linear(4 * 26 * 26, 10)

    def forward(self, x):
        return self.fc(self.act(self.conv(x)).flatten(1))


class ResidualNet(nn.Module):
    def __init__(self):
        super().__init__()
        self.conv = nn.Conv2d(1, 1, 3, padding=1)
        self.relu = nn.ReLU()
        self.fc = nn.Linear(28 * 28, 10)

    def forward(self, x):
        return self.fc((self.relu(self.conv(x)) + x).flatten(1))


class PreActNet(nn.Module):
    def __init__(self):
        super().__init__()
        self.bn = nn.BatchNorm2d(1)
        self.conv = nn.Conv2d(1, 2, 3)
        self.relu = nn.ReLU()
        self.fc = nn.Linear(2 * 26 * 26, 10)

    def forward(self, x):
        return self.fc(self.relu(self.conv(self.bn(x))).flatten(1))


@pytest.mark.parametrize(
    ("model_cls", "message"),
    [(SiLUNet, r"'act' \(SiLU\)"), (ResidualNet, "addition 'add' in forward"), (PreActNet, r"'bn' \(BatchNorm not preceded")],
)
def test_unsupported_models_are_refused_not_silently_wrong(model_cls, message):
    model = model_cls().eval()
    with torch.no_grad():
        if isinstance(model, PreActNet):
            model.bn.running_mean.fill_(0.3)
    x = torch.rand(2, 1, 28, 28)
    with pytest.raises(UnsupportedModelError, match=message):
        relmon.explain(model, x, "lrp")
    assert torch.isfinite(relmon.explain(model, x, "lrp", strict=False)).all()
    assert torch.isfinite(relmon.explain(model, x, "sensitivity")).all()  # gradient methods need no rules


@pytest.mark.gpu
@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA device (run benchmarks/gpu_check.sh there)")
@pytest.mark.parametrize("method", ["lrp", "lrp:epsilon_gamma_box", "sensitivity", "deconvnet"])
def test_cuda_matches_cpu(method, sample_batch):
    model = relmon.load_embedded("fmnist_vgg")
    x, _ = sample_batch
    cpu = relmon.explain(model, x, method)
    gpu = relmon.explain(model.cuda(), x.cuda(), method)
    model.cpu()
    assert gpu.device.type == "cuda"
    torch.testing.assert_close(gpu.cpu(), cpu, rtol=1e-3, atol=1e-4)
