"""LRP through zennit: named composites, automatic canonizers, and a check that refuses models whose
relevance zennit's rules would get silently wrong.

Composites (method id ``lrp:<name>``):

==============================  =====================================================================
``epsilon_plus_flat`` (default) zennit EpsilonPlusFlat: Flat first layer, z+ convolutions, ε dense
``epsilon_gamma_box``           zennit EpsilonGammaBox: z^B first layer (needs the input range), γ=0.25
``epsilon_alpha2_beta1``        zennit EpsilonAlpha2Beta1: αβ (α=2, β=1) convolutions, ε dense
``epsilon_alpha2_beta1_flat``   as above with a Flat first layer
``epsilon_0_01``                the paper's ε-rule, ε = 0.01, on every layer
``epsilon_100``                 the paper's ε-rule, ε = 100, on every layer (absorbs relevance by design)
``alpha2_beta1``                the paper's αβ-rule, α = 2, β = 1, on every layer
==============================  =====================================================================
"""

from __future__ import annotations

import operator
import warnings
import weakref

import torch
import torch.fx
import zennit.composites as zc
import zennit.layer
import zennit.rules as zr
from torch import nn
from zennit.canonizers import SequentialMergeBatchNorm
from zennit.types import Convolution

from relmon.models.preprocessing import input_bounds

DEFAULT_COMPOSITE = "epsilon_plus_flat"


class UnsupportedModelError(ValueError):
    """The model holds a layer or an operation relmon's LRP cannot propagate relevance through correctly."""


def _paper_composite(rule_factory):
    def build(zero_params=None, canonizers=None, **_):
        layer_map = zc.layer_map_base() + [
            (Convolution, rule_factory(zero_params)),
            (nn.Linear, rule_factory(zero_params)),
        ]
        return zc.LayerMapComposite(layer_map=layer_map, canonizers=canonizers)

    return build


def _gamma_box(zero_params=None, canonizers=None, model=None, x=None, low=None, high=None, gamma=0.25, **_):
    lo, hi = input_bounds(model, x.shape[1], low, high, needed_for="lrp:epsilon_gamma_box")
    shape = (1, x.shape[1], 1, 1)
    lo = lo.to(x.device, x.dtype).view(shape).expand_as(x)
    hi = hi.to(x.device, x.dtype).view(shape).expand_as(x)
    return zc.EpsilonGammaBox(low=lo, high=hi, gamma=gamma, zero_params=zero_params, canonizers=canonizers)


COMPOSITES = {
    "epsilon_plus_flat": lambda zero_params=None, canonizers=None, **_: zc.EpsilonPlusFlat(
        zero_params=zero_params, canonizers=canonizers
    ),
    "epsilon_gamma_box": _gamma_box,
    "epsilon_alpha2_beta1": lambda zero_params=None, canonizers=None, **_: zc.EpsilonAlpha2Beta1(
        zero_params=zero_params, canonizers=canonizers
    ),
    "epsilon_alpha2_beta1_flat": lambda zero_params=None, canonizers=None, **_: zc.EpsilonAlpha2Beta1Flat(
        zero_params=zero_params, canonizers=canonizers
    ),
    "epsilon_0_01": _paper_composite(lambda zp: zr.Epsilon(epsilon=0.01, zero_params=zp)),
    "epsilon_100": _paper_composite(lambda zp: zr.Epsilon(epsilon=100.0, zero_params=zp)),
    "alpha2_beta1": _paper_composite(lambda zp: zr.AlphaBeta(alpha=2.0, beta=1.0, zero_params=zp)),
}


def default_canonizers(model: nn.Module) -> list:
    """Canonizers for ``model``: torchvision's VGG and ResNet get zennit's own; any other model gets its
    BatchNorms merged into the convolution or linear layer that feeds them.

    The pairs come from the model's traced data flow (torch.fx): a BatchNorm is merged only where its
    input is the output of one convolution/linear layer that feeds nothing else. zennit's
    ``SequentialMergeBatchNorm`` pairs layers by their order of registration instead, which is wrong
    where that order is not the data flow (DenseNet's concatenations), so it is only the fallback for
    models fx cannot trace.
    """
    import torchvision.models as tvm
    from zennit.canonizers import NamedMergeBatchNorm
    from zennit.torchvision import ResNetCanonizer, VGGCanonizer

    if isinstance(model, tvm.ResNet):
        return [ResNetCanonizer()]
    if isinstance(model, tvm.VGG):
        return [VGGCanonizer()]
    graph = _traced_graph(model)
    if graph is None:
        return [SequentialMergeBatchNorm()]
    modules = dict(model.named_modules())
    pairs = []
    for node in graph.nodes:
        if node.op != "call_module" or not isinstance(modules.get(node.target), _BATCHNORM):
            continue
        src = node.args[0] if node.args else None
        if (
            isinstance(src, torch.fx.Node) and src.op == "call_module"
            and isinstance(modules.get(src.target), (nn.Conv1d, nn.Conv2d, nn.Conv3d, nn.Linear))
            and len(src.users) == 1
        ):
            pairs.append(((src.target,), node.target))
    return [NamedMergeBatchNorm(pairs)] if pairs else []


# Leaf layers whose relevance the composites above handle correctly.
_SUPPORTED_LEAVES = (
    nn.Conv1d, nn.Conv2d, nn.Conv3d, nn.Linear,
    nn.ReLU, nn.LeakyReLU,
    nn.MaxPool1d, nn.MaxPool2d, nn.MaxPool3d, nn.AdaptiveMaxPool2d,
    nn.AvgPool1d, nn.AvgPool2d, nn.AvgPool3d, nn.AdaptiveAvgPool1d, nn.AdaptiveAvgPool2d,
    nn.Flatten, nn.Unflatten, nn.Identity, nn.Dropout, nn.Dropout2d,
    zennit.layer.Sum,
)
_BATCHNORM = (nn.BatchNorm1d, nn.BatchNorm2d, nn.BatchNorm3d)
# Functions in forward() that mix two activations; their relevance needs a rule zennit's
# composites do not give (a residual sum needs a canonizer, a product a dedicated rule).
_MIXING_FUNCTIONS = {
    operator.add: "addition", operator.iadd: "addition", operator.sub: "subtraction",
    operator.mul: "multiplication", operator.imul: "multiplication", operator.truediv: "division",
    operator.matmul: "matrix product", torch.add: "addition", torch.mul: "multiplication",
    torch.matmul: "matrix product", torch.bmm: "matrix product", torch.einsum: "einsum",
    torch.sigmoid: "sigmoid gate", torch.softmax: "softmax", torch.tanh: "tanh",
    nn.functional.silu: "SiLU", nn.functional.gelu: "GELU", nn.functional.hardswish: "Hardswish",
    nn.functional.layer_norm: "layer norm", nn.functional.softmax: "softmax",
    nn.functional.scaled_dot_product_attention: "attention",
}
_MIXING_METHODS = {"add": "addition", "mul": "multiplication", "matmul": "matrix product",
                   "sigmoid": "sigmoid gate", "softmax": "softmax", "div": "division"}

_UNARY = {"sigmoid gate", "softmax", "tanh", "SiLU", "GELU", "Hardswish", "layer norm", "attention"}
_FX_CACHE: weakref.WeakKeyDictionary = weakref.WeakKeyDictionary()


def _is_merged(bn: nn.Module) -> bool:
    # zennit's MergeBatchNorm turns a merged BatchNorm into the identity for the context's duration.
    return (
        bn.running_mean is not None
        and bool((bn.running_mean == 0).all()) and bool((bn.running_var == 1).all())
        and (bn.weight is None or bool((bn.weight == 1).all()))
        and (bn.bias is None or bool((bn.bias == 0).all()))
    )


def _traced_graph(model: nn.Module):
    """``torch.fx`` graph of ``model.forward`` (cached per model), or None where it cannot be traced."""
    if model in _FX_CACHE:
        return _FX_CACHE[model]
    try:
        graph = torch.fx.symbolic_trace(model).graph
    except Exception as err:  # dynamic control flow etc.: cannot check, say so once per model
        warnings.warn(
            f"relmon could not trace {type(model).__name__}.forward with torch.fx ({type(err).__name__}: {err}); "
            "operations in forward() (residual sums, products) are unchecked and BatchNorms are merged by "
            "registration order — verify relevance with relmon.conservation().",
            stacklevel=4,
        )
        graph = None
    _FX_CACHE[model] = graph
    return graph


def _forward_problems(model: nn.Module) -> list[str]:
    """Operations in forward() that mix two tensors or gate them, found in the traced graph."""
    graph = _traced_graph(model)
    problems: list[str] = []
    for node in graph.nodes if graph is not None else ():
        tensor_args = [a for a in node.args if isinstance(a, torch.fx.Node)]
        if node.op == "call_function" and node.target in _MIXING_FUNCTIONS:
            what = _MIXING_FUNCTIONS[node.target]
        elif node.op == "call_method" and node.target in _MIXING_METHODS:
            what = _MIXING_METHODS[node.target]
        else:
            continue
        # x * 0.5 or x + 1 is a constant scale or shift (a bias); two tensors mixing is the problem.
        if what in _UNARY or len(tensor_args) >= 2:
            problems.append(f"{what} '{node.name}' in forward()")
    return problems


def check_supported(model: nn.Module, canonizers: list) -> None:
    """Raise :class:`UnsupportedModelError` naming every layer relmon's LRP would get wrong.

    Call it while the composite (with its canonizers) is registered: merged BatchNorms are the
    identity then, unmerged ones are reported.
    """
    problems = []
    for name, module in model.named_modules():
        if len(list(module.children())) > 0:
            continue
        if isinstance(module, _BATCHNORM):
            if not _is_merged(module):
                problems.append(f"'{name}' (BatchNorm not preceded by a convolution or linear layer, cannot be merged)")
        elif not isinstance(module, _SUPPORTED_LEAVES):
            problems.append(f"'{name}' ({type(module).__name__})")
    handled_by_canonizer = any(type(c).__name__ == "ResNetCanonizer" for c in canonizers)
    if not handled_by_canonizer:
        problems.extend(_forward_problems(model))
    if problems:
        listed = "; ".join(problems[:8]) + (f"; and {len(problems) - 8} more" if len(problems) > 8 else "")
        raise UnsupportedModelError(
            f"relmon's LRP does not support {type(model).__name__}: {listed}. zennit's composites would "
            "propagate relevance through these without a proper rule, giving silently wrong heatmaps. Use a "
            "gradient method (method='sensitivity' or 'gradient_x_input'), pass canonizers= that rewrite these "
            "parts, or pass strict=False to explain anyway (then check relmon.explain.conservation())."
        )


def composite_for(name: str, model: nn.Module, x: torch.Tensor, zero_bias: bool = False,
                  canonizers: list | None = None, **options):
    """A fresh zennit composite for ``lrp:<name>`` (one instance per call: composites hold state)."""
    if name not in COMPOSITES:
        raise ValueError(f"unknown LRP composite {name!r}; known: {', '.join(sorted(COMPOSITES))}")
    canonizers = default_canonizers(model) if canonizers is None else list(canonizers)
    zero_params = "bias" if zero_bias else None
    composite = COMPOSITES[name](zero_params=zero_params, canonizers=canonizers, model=model, x=x, **options)
    return composite, canonizers
