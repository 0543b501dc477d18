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
from relmon.explain import (
    COMPOSITES,
    UnsupportedModelError,
    check_lrp_support,
    conservation,
    explain_full,
    first_layer,
    to_heatmap,
)
from relmon.models import SmallCNN, input_bounds


def bias_free_net():
    torch.manual_seed(1)
    model = SmallCNN(bias=False).eval()
    relmon.attach_preprocessing(model, relmon.Preprocessing(mean=0.0, std=1.0))
    return model


# Each composite once, with the property its rules promise on a bias-free ReLU net:
# "exact": every rule conserves; "alpha_beta": the alpha-beta rule on the pixel layer conserves only
# approximately (border neurons with contributions of one sign only over-count their share);
# "epsilon": the epsilon rule only ever shrinks relevance, a share in [0, 1] growing with epsilon.
COMPOSITE_PROPERTY = {
    "epsilon_plus_flat": "exact",
    "epsilon_gamma_box": "exact",
    "epsilon_alpha2_beta1_flat": "exact",
    "epsilon_alpha2_beta1": "alpha_beta",
    "alpha2_beta1": "alpha_beta",
    "epsilon_0_01": "epsilon",
    "epsilon_100": "epsilon",
}


def test_every_composite_has_a_conservation_property():
    assert set(COMPOSITE_PROPERTY) == set(COMPOSITES)


@pytest.mark.parametrize("composite", sorted(COMPOSITE_PROPERTY))
def test_composite_conservation_on_bias_free_net(composite):
    model = bias_free_net()
    x = torch.rand(6, 1, 28, 28)
    e = explain_full(model, x, f"lrp:{composite}")
    share = conservation(e.relevance, e.logits, e.target)
    kind = COMPOSITE_PROPERTY[composite]
    if kind == "exact":
        logit = e.logits.gather(1, e.target[:, None]).squeeze(1)
        torch.testing.assert_close(e.relevance.sum((1, 2, 3)), logit, rtol=1e-3, atol=1e-5)
    elif kind == "alpha_beta":
        assert share.abs().max() < 0.1
        assert share.abs().max() > 1e-3  # the over-count is real (an exact rule here would be another rule)
    else:
        assert bool((share >= -1e-4).all()) and bool((share <= 1 + 1e-4).all())
        if composite == "epsilon_0_01":  # small activations on this net: epsilon = 0.01 absorbs ~12 %
            assert share.max() < 0.3
        else:  # epsilon = 100 absorbs nearly all of it (the paper's point about large epsilon)
            assert share.min() > 0.9


def test_conservation_is_the_unexplained_share():
    relevance = torch.tensor([[[[1.0, 2.0]]], [[[-1.0, 0.5]]]])  # sums 3 and -0.5
    logits = torch.tensor([[4.0, 0.0], [0.0, -1.0]])
    torch.testing.assert_close(conservation(relevance, logits, torch.tensor([0, 1])), torch.tensor([0.25, 0.5]))


@pytest.mark.parametrize("name", ["fmnist_cnn", "fmnist_vgg"])
def test_embedded_models_conserve_once_biases_are_accounted_for(name, sample_batch, request):
    model = request.getfixturevalue(name.split("_")[1])
    x, _ = sample_batch
    with_bias = explain_full(model, x, "lrp")
    no_bias = explain_full(model, x, "lrp", zero_bias=True)
    # zero_bias: the rules ignore biases (incl. those BatchNorm merging creates), so every bit of the
    # explained logit reaches the input ...
    exact = conservation(no_bias.relevance, no_bias.logits, no_bias.target).abs()
    assert exact.max() < 1e-3
    # ... while with biases part of the logit stays with them: a larger unexplained share (the CNN's
    # biases are small, ~0.3 % of the logit; the VGG's merged BatchNorms larger) and other heatmaps.
    absorbed = conservation(with_bias.relevance, with_bias.logits, with_bias.target).abs()
    assert absorbed.mean() > 10 * exact.mean()
    assert not torch.allclose(with_bias.relevance, no_bias.relevance, rtol=1e-3, atol=1e-5)


def test_epsilon_rule_constants_from_a_single_linear_layer():
    # One bias-free linear layer: the epsilon rule gives R_i = x_i w_i f / (f + eps), so
    # eps = f**2 / sum(R) - f for f > 0 -- read off relmon's relevance, independent of its code.
    torch.manual_seed(3)
    model = nn.Sequential(nn.Flatten(), nn.Linear(16, 3, bias=False)).eval()
    with torch.no_grad():
        model[1].weight.abs_()
    x = torch.rand(4, 1, 4, 4) + 0.1
    for composite, epsilon in (("epsilon_0_01", 0.01), ("epsilon_100", 100.0)):
        e = explain_full(model, x, f"lrp:{composite}")
        f = e.logits.gather(1, e.target[:, None]).squeeze(1).double()
        total = e.relevance.sum((1, 2, 3)).double()
        torch.testing.assert_close(f * f / total - f, torch.full_like(f, epsilon), rtol=1e-3, atol=1e-4)


def test_epsilon_lrp_approaches_gradient_x_input_on_bias_free_relu_net():
    # On a bias-free ReLU net, epsilon-LRP -> gradient x input as epsilon / |z| -> 0. Scaling every
    # layer's weights by c scales the pre-activations z of layer l by c**l (and gradient x input by a
    # constant), so the fixed epsilon = 0.01 becomes ever smaller relative to z.
    x = torch.rand(6, 1, 28, 28, dtype=torch.float64)

    def gap(composite, c):
        model = bias_free_net().double()
        with torch.no_grad():
            for p in model.parameters():
                p.mul_(c)
        gxi = relmon.explain(model, x, "gradient_x_input")
        return ((relmon.explain(model, x, f"lrp:{composite}") - gxi).abs().sum() / gxi.abs().sum()).item()

    gaps = [gap("epsilon_0_01", c) for c in (1.0, 10.0, 100.0, 1000.0)]
    assert gaps[0] > gaps[1] > gaps[2] > gaps[3] and gaps[3] < 2e-3, gaps
    assert gap("epsilon_100", 100.0) > 10 * gaps[2]  # a large epsilon stays far from it at the same scale


def test_alpha_beta_matches_hand_computation():
    w1 = torch.tensor([[1.0, -2.0, 0.5, 1.0], [-1.0, 1.0, 1.0, -0.5], [0.5, 0.5, -1.0, 2.0]], dtype=torch.float64)
    w2 = torch.tensor([[1.0, -1.0, 2.0], [-1.0, 3.0, 1.0]], dtype=torch.float64)
    model = nn.Sequential(nn.Flatten(), nn.Linear(4, 3, bias=False), nn.ReLU(), nn.Linear(3, 2, bias=False))
    model = model.double().eval()
    with torch.no_grad():
        model[1].weight.copy_(w1)
        model[3].weight.copy_(w2)
    x = torch.tensor([[[[1.0, 0.5], [2.0, 1.0]]]], dtype=torch.float64)
    a0 = x.flatten()
    a1 = torch.relu(w1 @ a0)  # (1.0, 0.5, 2.0): every hidden unit active
    target = 0

    def alpha_beta(a, w, relevance, alpha=2.0, beta=1.0):
        z = a[None, :] * w  # (out, in) contributions, inputs non-negative here
        pos, neg = z.clamp(min=0), z.clamp(max=0)
        share = alpha * pos / pos.sum(1, keepdim=True) - beta * neg / neg.sum(1, keepdim=True)
        return (share * relevance[:, None]).sum(0)

    r2 = torch.zeros(2, dtype=torch.float64)
    r2[target] = (w2 @ a1)[target]
    expected = alpha_beta(a0, w1, alpha_beta(a1, w2, r2)).view(1, 1, 2, 2)
    got = relmon.explain(model, x, "lrp:alpha2_beta1", target=target)
    torch.testing.assert_close(got, expected, rtol=1e-5, atol=1e-6)
    assert not torch.allclose(relmon.explain(model, x, "lrp:epsilon_0_01", target=target), expected, atol=1e-2)


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


class TanhNet(SiLUNet):
    def __init__(self):
        super().__init__()
        self.act = nn.Tanh()


@pytest.mark.parametrize(
    ("model_cls", "message"),
    [(TanhNet, r"'act' \(Tanh\)"), (ResidualNet, "addition 'add' in forward")],
)
def test_unsupported_models_are_refused_not_silently_wrong(model_cls, message):
    model = model_cls().eval()
    x = torch.rand(2, 1, 28, 28)
    with pytest.raises(UnsupportedModelError, match=message):
        relmon.explain(model, x, "lrp")
    assert torch.isfinite(relmon.explain(model, x, "lrp", strict=False)).all()
    assert torch.isfinite(relmon.explain(model, x, "sensitivity")).all()  # gradient methods need no rules


class Ordered(nn.Module):
    """Bias-free conv net registered in execution order."""

    def __init__(self):
        super().__init__()
        self.conv = nn.Conv2d(1, 4, 3, padding=1, bias=False)
        self.relu = nn.ReLU()
        self.pool = nn.MaxPool2d(2)
        self.conv2 = nn.Conv2d(4, 4, 3, padding=1, bias=False)
        self.relu2 = nn.ReLU()
        self.fc = nn.Linear(4 * 14 * 14, 10, bias=False)

    def features(self, x):
        return self.pool(self.relu(self.conv(x)))

    def forward(self, x):
        return self.fc(self.relu2(self.conv2(self.features(x))).flatten(1))


class HeadFirst(Ordered):
    """The same network, its classifier head registered before its first convolution."""

    def __init__(self):
        nn.Module.__init__(self)
        self.fc = nn.Linear(4 * 14 * 14, 10, bias=False)
        self.conv2 = nn.Conv2d(4, 4, 3, padding=1, bias=False)
        self.relu2 = nn.ReLU()
        self.conv = nn.Conv2d(1, 4, 3, padding=1, bias=False)
        self.relu = nn.ReLU()
        self.pool = nn.MaxPool2d(2)


def twin(cls):
    torch.manual_seed(0)
    reference = Ordered().eval()
    model = cls().eval()
    model.load_state_dict(reference.state_dict(), strict=False)  # extra buffers keep their values
    attach = relmon.Preprocessing(mean=0.0, std=1.0)
    relmon.attach_preprocessing(reference, attach)
    relmon.attach_preprocessing(model, attach)
    return reference, model


def correlation(a, b):
    a, b = a.flatten(1) - a.flatten(1).mean(1, keepdim=True), b.flatten(1) - b.flatten(1).mean(1, keepdim=True)
    return (a * b).sum(1) / (a.norm(dim=1) * b.norm(dim=1))


@pytest.mark.parametrize("composite", ["epsilon_plus_flat", "epsilon_gamma_box", "epsilon_alpha2_beta1_flat"])
def test_first_layer_rule_goes_to_the_first_layer_in_execution_order(composite):
    reference, model = twin(HeadFirst)
    x = torch.rand(4, 1, 28, 28)
    assert first_layer(model) == "conv"
    with pytest.raises(ValueError, match="expects 1"):  # the input check reads the same first layer
        relmon.explain(model, torch.rand(2, 3, 28, 28), f"lrp:{composite}")
    expected = relmon.explain(reference, x, f"lrp:{composite}")
    torch.testing.assert_close(relmon.explain(model, x, f"lrp:{composite}"), expected)
    # zennit alone gives the first-layer rule to 'fc', the first *registered* layer: a different heatmap
    zennit_composite = {
        "epsilon_plus_flat": lambda: zc.EpsilonPlusFlat(),
        "epsilon_gamma_box": lambda: zc.EpsilonGammaBox(low=torch.zeros_like(x), high=torch.ones_like(x)),
        "epsilon_alpha2_beta1_flat": lambda: zc.EpsilonAlpha2Beta1Flat(),
    }[composite]()
    target = reference(x).argmax(1)
    with Gradient(model=model, composite=zennit_composite) as attributor:
        if composite == "epsilon_gamma_box":  # z^B on 'conv2' (first registered conv) with the pixel bounds
            with pytest.raises(RuntimeError, match="Invalid shape"):
                attributor(x, lambda out: torch.eye(10)[target] * out)
            return
        _, wrong = attributor(x, lambda out: torch.eye(10)[target] * out)
    assert correlation(wrong, expected).abs().max() < 0.5


def test_gamma_box_on_a_dense_first_layer_gives_no_layer_the_pixel_rule():
    # z^B is a convolution rule in zennit's EpsilonGammaBox: with a Linear first layer no layer gets it
    # (not a later convolution, which would get bounds of the wrong shape).
    torch.manual_seed(0)
    model = nn.Sequential(nn.Flatten(), nn.Linear(64, 64), nn.ReLU(), nn.Unflatten(1, (1, 8, 8)),
                          nn.Conv2d(1, 2, 3), nn.ReLU(), nn.Flatten(), nn.Linear(72, 3)).eval()
    x = torch.rand(2, 1, 8, 8)
    r = relmon.explain(model, x, "lrp:epsilon_gamma_box", low=0.0, high=1.0, zero_bias=True)
    e = explain_full(model, x, "lrp:epsilon_gamma_box", low=0.0, high=1.0, zero_bias=True)
    assert torch.isfinite(r).all()
    assert conservation(e.relevance, e.logits, e.target).abs().max() < 1e-3


class LogSoftmaxNet(Ordered):
    def forward(self, x):
        return nn.functional.log_softmax(super().forward(x), dim=1)


class EluNet(Ordered):
    def forward(self, x):
        return self.fc(nn.functional.elu(self.conv2(self.features(x))).flatten(1))


class FunctionalBatchNormNet(Ordered):
    def __init__(self):
        super().__init__()
        self.register_buffer("mean", torch.full((4,), 0.2))
        self.register_buffer("var", torch.full((4,), 2.0))

    def forward(self, x):
        h = nn.functional.batch_norm(self.conv2(self.features(x)), self.mean, self.var)
        return self.fc(self.relu2(h).flatten(1))


class InForwardNormalisationNet(Ordered):
    def forward(self, x):
        x = (x - x.mean(dim=(2, 3), keepdim=True)) / x.std(dim=(2, 3), keepdim=True)
        return super().forward(x)


@pytest.mark.parametrize(
    ("model_cls", "message"),
    [
        (LogSoftmaxNet, r"log_softmax 'log_softmax' at the output of forward\(\) \(explain the logits: wrap the model "
                        r"without its final log_softmax"),
        (EluNet, r"elu 'elu' in forward\(\) \(LRP has no rule for elu; build the model with nn.ReLU modules"),
        (FunctionalBatchNormNet, r"functional batch_norm 'batch_norm' in forward\(\) \(.*nn.BatchNorm module"),
        (InForwardNormalisationNet, r"subtraction 'sub' in forward\(\).*division 'truediv' in forward\(\)"),
    ],
)
def test_functional_ops_without_a_rule_are_refused(model_cls, message):
    _, model = twin(model_cls)
    x = torch.rand(4, 1, 28, 28)
    with pytest.raises(UnsupportedModelError, match=message):
        relmon.explain(model, x, "lrp")
    with pytest.raises(UnsupportedModelError, match=message):
        check_lrp_support(model, x)
    # without the check the heatmap is wrong: relevance is not conserved on this bias-free net
    # (log_softmax: it sums to ~0; elu and the functional BatchNorm: several per cent off).
    e = explain_full(model, x, "lrp", strict=False)
    share = conservation(e.relevance, e.logits, e.target)
    assert not bool((share.abs() < 1e-2).all()), share


class UntraceableEluNet(Ordered):
    def forward(self, x):
        if x.shape[-1] != 28:  # Python control flow on a shape: torch.fx cannot trace this
            raise ValueError("28x28 images only")
        return self.fc(nn.functional.elu(self.conv2(self.features(x))).flatten(1))


class UntraceableLogSoftmaxNet(Ordered):
    def forward(self, x):
        if x.shape[-1] != 28:
            raise ValueError("28x28 images only")
        return super().forward(x).log_softmax(1)


class UntraceableNet(Ordered):
    def forward(self, x):
        if x.shape[-1] != 28:
            raise ValueError("28x28 images only")
        return super().forward(x)


@pytest.mark.parametrize(
    ("model_cls", "message"),
    [(UntraceableEluNet, "an operation in forward\\(\\) between 'conv2' and 'fc' that no module performs"),
     (UntraceableLogSoftmaxNet, "an operation in forward\\(\\) after the last layer 'fc'.*explain the logits")],
)
def test_untraceable_forward_is_probed_and_the_warning_names_the_caller(model_cls, message):
    _, model = twin(model_cls)
    x = torch.rand(4, 1, 28, 28)
    with pytest.warns(UserWarning, match="could not trace") as record:
        with pytest.raises(UnsupportedModelError, match=message):
            relmon.explain(model, x, "lrp")
    assert [w.filename for w in record] == [__file__]  # the user's line, not relmon's
    e = explain_full(model, x, "lrp", strict=False)
    assert not bool((conservation(e.relevance, e.logits, e.target).abs() < 1e-2).all())


def test_untraceable_but_clean_forward_is_explained_like_its_traceable_twin():
    reference, model = twin(UntraceableNet)
    x = torch.rand(4, 1, 28, 28)
    with pytest.warns(UserWarning, match="could not trace") as record:
        got = relmon.explain(model, x, "lrp")
    assert record[0].filename == __file__
    torch.testing.assert_close(got, relmon.explain(reference, x, "lrp"))


@pytest.mark.parametrize("model_cls", [SiLUNet, PreActNet])
def test_silu_and_an_unmerged_batchnorm_now_get_rules(model_cls):
    # SiLU: AttnLRP's identity rule; a BatchNorm no layer precedes: the identity rule (its shift is a bias)
    torch.manual_seed(0)
    model = model_cls().eval()
    with torch.no_grad():
        model.fc.weight.mul_(10)  # logits of a few units, not hundredths: the 1e-6 stabilisers stay negligible
        if isinstance(model, PreActNet):
            model.bn.running_mean.fill_(0.3)
            model.bn.running_var.fill_(2.0)
    e = relmon.explain_full(model, torch.rand(2, 1, 28, 28), "lrp", zero_bias=True)
    from relmon.explain import conservation

    assert conservation(e.relevance, e.logits, e.target).abs().max() < 1e-3


def test_check_lrp_support_is_cheap_and_names_every_problem():
    calls = []
    _, model = twin(Ordered)
    model.register_forward_pre_hook(lambda *_: calls.append(1))
    assert check_lrp_support(model, torch.rand(2, 1, 28, 28)) is None
    assert calls == []  # a traceable model is checked from its graph, without running it
    _, elu = twin(EluNet)
    assert check_lrp_support(elu, torch.rand(2, 1, 28, 28), composite="sensitivity") is None
    with pytest.raises(ValueError, match="unknown LRP composite 'nope'"):
        check_lrp_support(model, torch.rand(2, 1, 28, 28), composite="lrp:nope")

    class Both(Ordered):
        def __init__(self):
            super().__init__()
            self.act = nn.Tanh()

        def forward(self, x):
            return nn.functional.log_softmax(self.fc(self.act(self.conv2(self.features(x))).flatten(1)), 1)

    with pytest.raises(UnsupportedModelError, match=r"'act' \(Tanh\).*log_softmax 'log_softmax' at the output"):
        check_lrp_support(Both().eval(), torch.rand(2, 1, 28, 28), composite="lrp:epsilon_0_01")


@pytest.mark.gpu
@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA device (run benchmarks/gpu_check.sh there)")
@pytest.mark.parametrize("method", ["lrp", "lrp:epsilon_gamma_box", "sensitivity", "deconvnet"])
def test_cuda_matches_cpu(method, sample_batch, exact_fp32):
    model = relmon.load_embedded("fmnist_vgg")
    x, _ = sample_batch
    cpu = relmon.explain(model, x, method)
    gpu = relmon.explain(model.cuda(), x.cuda(), method)
    model.cpu()
    assert gpu.device.type == "cuda"
    torch.testing.assert_close(gpu.cpu(), cpu, rtol=1e-3, atol=1e-4)


def test_a_stop_request_inside_the_forward_is_not_reported_as_a_broken_model():
    """A job's signal handler raises RunInterrupted wherever the process is, often inside the model's
    forward; explain must let it through (the job then exits 5), not wrap it as 'could not process'."""
    from relmon.jobs.errors import RunInterrupted

    class StoppedMidForward(torch.nn.Module):
        def __init__(self):
            super().__init__()
            self.conv = torch.nn.Conv2d(1, 2, 3)

        def forward(self, x):
            raise RunInterrupted("stopped by SIGTERM", "signal")

    for method, options in (("sensitivity", {}), ("lrp", {"strict": False})):
        with pytest.raises(RunInterrupted, match="stopped by SIGTERM"):
            relmon.explain(StoppedMidForward(), torch.rand(2, 1, 8, 8), method, **options)
