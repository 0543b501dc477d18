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
import os
import sys
import warnings
import weakref

import torch
import torch.fx
import torch.nn.functional as F
from torch import nn

from relmon.explain import lrp_rules
from relmon.explain._zennit import zennit_module
from relmon.preprocessing import eval_mode, input_bounds

# zennit is imported inside the functions that use it, so that ``import relmon.explain`` stays light, and
# through zennit_module, which skips zennit's package __init__ (it imports torchvision).

DEFAULT_COMPOSITE = "epsilon_plus_flat"


class UnsupportedModelError(ValueError):
    """The model holds a layer or an operation relmon's LRP cannot propagate relevance through correctly."""


def _paper_composite(rule_name, **rule_kwargs):
    def build(zero_params=None, canonizers=None, **_):
        zc, zr = zennit_module("composites"), zennit_module("rules")
        Convolution = zennit_module("types").Convolution

        def rule():
            return getattr(zr, rule_name)(zero_params=zero_params, **rule_kwargs)

        layer_map = zc.layer_map_base() + [(Convolution, rule()), (nn.Linear, rule())]
        return zc.LayerMapComposite(layer_map=layer_map, canonizers=canonizers)

    return build


def _zennit_composite(class_name):
    def build(zero_params=None, canonizers=None, **_):
        return getattr(zennit_module("composites"), class_name)(zero_params=zero_params, canonizers=canonizers)

    return build


def _gamma_box(zero_params=None, canonizers=None, model=None, x=None, low=None, high=None, gamma=0.25, **_):
    zc = zennit_module("composites")
    lo, hi = input_bounds(model, x.shape[1], low, high, needed_for="lrp:epsilon_gamma_box")
    shape = (1, x.shape[1], 1, 1)
    lo = lo.to(x.device, x.dtype).view(shape).expand_as(x)
    hi = hi.to(x.device, x.dtype).view(shape).expand_as(x)
    return zc.EpsilonGammaBox(low=lo, high=hi, gamma=gamma, zero_params=zero_params, canonizers=canonizers)


COMPOSITES = {
    "epsilon_plus_flat": _zennit_composite("EpsilonPlusFlat"),
    "epsilon_gamma_box": _gamma_box,
    "epsilon_alpha2_beta1": _zennit_composite("EpsilonAlpha2Beta1"),
    "epsilon_alpha2_beta1_flat": _zennit_composite("EpsilonAlpha2Beta1Flat"),
    "epsilon_0_01": _paper_composite("Epsilon", epsilon=0.01),
    "epsilon_100": _paper_composite("Epsilon", epsilon=100.0),
    "alpha2_beta1": _paper_composite("AlphaBeta", alpha=2.0, beta=1.0),
}


def default_canonizers(model: nn.Module, example: torch.Tensor | None = None, lrp: bool = True) -> list:
    """Canonizers for ``model`` (see :func:`_merging_canonizers`); for LRP (``lrp=True``) also the canonizer that
    rewrites torchvision's transformer, ConvNeXt, EfficientNet and MobileNetV3 blocks for their rules
    (:mod:`relmon.explain.lrp_rules`), where the model has such blocks."""
    canonizers = _merging_canonizers(model, example)
    if lrp and lrp_rules.handled_blocks(model):
        canonizers.append(lrp_rules.blocks_canonizer())
    return canonizers


def _merging_canonizers(model: nn.Module, example: torch.Tensor | None = None) -> list:
    """Canonizers for ``model``: torchvision's VGG and ResNet get zennit's own; any other model gets its
    BatchNorms merged into the convolution or linear layer that feeds them.

    The pairs come from the model's traced data flow (torch.fx): a BatchNorm is merged only where its
    input is the output of one convolution/linear layer that feeds nothing else. zennit's
    ``SequentialMergeBatchNorm`` pairs layers by their order of registration instead, which is wrong
    where that order is not the data flow (DenseNet's concatenations). Where fx cannot trace the model
    and an ``example`` input is given, the pairs come from running it once with hooks (a BatchNorm whose
    input is the output of the layer run just before it); without an example, registration order is
    the fallback.
    """
    canon = zennit_module("canonizers")
    NamedMergeBatchNorm, SequentialMergeBatchNorm = canon.NamedMergeBatchNorm, canon.SequentialMergeBatchNorm
    # A torchvision model's class comes from torchvision.models: where that is not loaded, the model is
    # none of them (so models without torchvision never import it, nor zennit.torchvision).
    tvm = sys.modules.get("torchvision.models")
    if tvm is not None and isinstance(model, tvm.ResNet):
        return [zennit_module("torchvision").ResNetCanonizer()]
    if tvm is not None and isinstance(model, tvm.VGG):
        return [zennit_module("torchvision").VGGCanonizer()]
    graph = _traced_graph(model)
    if graph is None:
        if example is None:
            return [SequentialMergeBatchNorm()]
        pairs = _probe(model, example).bn_pairs
        return [NamedMergeBatchNorm(pairs)] if pairs else []
    modules = dict(model.named_modules())
    pairs = []
    for node in graph.nodes:
        if node.op != "call_module" or not isinstance(modules.get(node.target), _BATCHNORM):
            continue
        src = node.args[0] if node.args else None
        if (
            isinstance(src, torch.fx.Node) and src.op == "call_module"
            and isinstance(modules.get(src.target), _WEIGHTED)
            and len(src.users) == 1
        ):
            pairs.append(((src.target,), node.target))
    return [NamedMergeBatchNorm(pairs)] if pairs else []


_WEIGHTED = (nn.Conv1d, nn.Conv2d, nn.Conv3d, nn.Linear)
_BATCHNORM = (nn.BatchNorm1d, nn.BatchNorm2d, nn.BatchNorm3d)
# Leaf layers whose relevance the composites above handle correctly (zennit's Sum is added lazily).
_SUPPORTED_LEAVES = (
    *_WEIGHTED,
    nn.ReLU, nn.LeakyReLU,
    nn.MaxPool1d, nn.MaxPool2d, nn.MaxPool3d, nn.AdaptiveMaxPool2d,
    nn.AvgPool1d, nn.AvgPool2d, nn.AvgPool3d, nn.AdaptiveAvgPool1d, nn.AdaptiveAvgPool2d,
    nn.Flatten, nn.Unflatten, nn.Identity, nn.Dropout, nn.Dropout2d,
)

_FIX_OUTPUT = ("explain the logits: wrap the model without its final {op} (e.g. a module whose forward "
               "returns the layer before it)")
_FIX_ACTIVATION = ("LRP has no rule for {op}; build the model with nn.ReLU modules, or use a gradient method "
                   "(method='gradient_x_input' or 'sensitivity')")
_FIX_NORM = ("LRP cannot propagate relevance through {op} in forward(); use an nn.BatchNorm module right after a "
             "convolution or linear layer (relmon merges it into that layer), or normalise the input before the "
             "model (relmon.attach_preprocessing)")
_FIX_MIX = ("{op} of two activations needs a canonizer or a dedicated rule; pass canonizers= that rewrite it, "
            "or use a gradient method")
# Functions in forward() relevance cannot pass through correctly: (what, fix template, needs 2 tensors).
_FUNCTIONS = {
    operator.add: ("addition", _FIX_MIX, True), operator.iadd: ("addition", _FIX_MIX, True),
    operator.sub: ("subtraction", _FIX_MIX, True), operator.isub: ("subtraction", _FIX_MIX, True),
    operator.mul: ("multiplication", _FIX_MIX, True), operator.imul: ("multiplication", _FIX_MIX, True),
    operator.truediv: ("division", _FIX_MIX, True), operator.itruediv: ("division", _FIX_MIX, True),
    operator.matmul: ("matrix product", _FIX_MIX, True), torch.add: ("addition", _FIX_MIX, True),
    torch.sub: ("subtraction", _FIX_MIX, True), torch.mul: ("multiplication", _FIX_MIX, True),
    torch.div: ("division", _FIX_MIX, True), torch.matmul: ("matrix product", _FIX_MIX, True),
    torch.bmm: ("matrix product", _FIX_MIX, True), torch.einsum: ("einsum", _FIX_MIX, True),
    torch.softmax: ("softmax", _FIX_OUTPUT, False), F.softmax: ("softmax", _FIX_OUTPUT, False),
    torch.log_softmax: ("log_softmax", _FIX_OUTPUT, False), F.log_softmax: ("log_softmax", _FIX_OUTPUT, False),
    torch.sigmoid: ("sigmoid", _FIX_ACTIVATION, False), F.sigmoid: ("sigmoid", _FIX_ACTIVATION, False),
    torch.tanh: ("tanh", _FIX_ACTIVATION, False), F.tanh: ("tanh", _FIX_ACTIVATION, False),
    F.elu: ("elu", _FIX_ACTIVATION, False), F.selu: ("selu", _FIX_ACTIVATION, False),
    F.celu: ("celu", _FIX_ACTIVATION, False), F.gelu: ("gelu", _FIX_ACTIVATION, False),
    F.silu: ("silu", _FIX_ACTIVATION, False), F.mish: ("mish", _FIX_ACTIVATION, False),
    F.softplus: ("softplus", _FIX_ACTIVATION, False), F.hardswish: ("hardswish", _FIX_ACTIVATION, False),
    torch.exp: ("exp", _FIX_ACTIVATION, False), torch.log: ("log", _FIX_ACTIVATION, False),
    F.batch_norm: ("functional batch_norm", _FIX_NORM, False),
    F.layer_norm: ("layer_norm", _FIX_NORM, False), F.group_norm: ("group_norm", _FIX_NORM, False),
    F.instance_norm: ("instance_norm", _FIX_NORM, False), F.normalize: ("normalize", _FIX_NORM, False),
    F.local_response_norm: ("local_response_norm", _FIX_NORM, False),
    F.scaled_dot_product_attention: ("attention", _FIX_MIX, False),
}
_METHODS = {
    "add": ("addition", _FIX_MIX, True), "add_": ("addition", _FIX_MIX, True),
    "sub": ("subtraction", _FIX_MIX, True), "mul": ("multiplication", _FIX_MIX, True),
    "mul_": ("multiplication", _FIX_MIX, True), "div": ("division", _FIX_MIX, True),
    "div_": ("division", _FIX_MIX, True), "matmul": ("matrix product", _FIX_MIX, True),
    "softmax": ("softmax", _FIX_OUTPUT, False), "log_softmax": ("log_softmax", _FIX_OUTPUT, False),
    "sigmoid": ("sigmoid", _FIX_ACTIVATION, False), "tanh": ("tanh", _FIX_ACTIVATION, False),
    "exp": ("exp", _FIX_ACTIVATION, False), "log": ("log", _FIX_ACTIVATION, False),
}
_FX_CACHE: weakref.WeakKeyDictionary = weakref.WeakKeyDictionary()
_PROBE_CACHE: weakref.WeakKeyDictionary = weakref.WeakKeyDictionary()
_TRACE_ERRORS: weakref.WeakKeyDictionary = weakref.WeakKeyDictionary()
_WARNED: weakref.WeakSet = weakref.WeakSet()
_PACKAGE_DIRS = tuple(
    os.path.dirname(os.path.abspath(m.__file__)) + os.sep
    for m in (torch, sys.modules[__name__.split(".")[0]]) if getattr(m, "__file__", None)
)


def _warn_at_caller(message: str, category=UserWarning) -> None:
    """``warnings.warn`` attributed to the first frame outside relmon, torch, contextlib and Lightning, so
    the warning names the user's line that asked for the explanation."""
    frame, level = sys._getframe(1), 1
    skip = (*_PACKAGE_DIRS, os.path.dirname(warnings.__file__) + os.sep + "contextlib.py")
    while frame is not None:
        path = os.path.abspath(frame.f_code.co_filename)
        module = frame.f_globals.get("__name__", "")
        if not (path.startswith(skip) or module.split(".")[0] in ("lightning", "pytorch_lightning", "contextlib")):
            break
        frame, level = frame.f_back, level + 1
    warnings.warn(message, category, stacklevel=level + 1)


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
    except Exception as err:  # dynamic control flow etc.: the hook probe checks it instead
        _TRACE_ERRORS[model] = f"{type(err).__name__}: {str(err).splitlines()[0] if str(err) else ''}"
        graph = None
    _FX_CACHE[model] = graph
    return graph


def _leaves(model: nn.Module):
    return [(n, m) for n, m in model.named_modules() if n and len(list(m.children())) == 0]


def _execution_order(model: nn.Module, example: torch.Tensor | None) -> list[str] | None:
    """Names of the leaf modules in the order forward() runs them (fx graph, else a hook probe)."""
    graph = _traced_graph(model)
    if graph is not None:
        leaves = {n for n, _ in _leaves(model)}
        seen: list[str] = []
        for node in graph.nodes:
            if node.op == "call_module" and node.target in leaves and node.target not in seen:
                seen.append(node.target)
        return seen
    return None if example is None else _probe(model, example).order


class _ProbeResult:
    def __init__(self, order, problems, bn_pairs):
        self.order, self.problems, self.bn_pairs = order, problems, bn_pairs


def _same_values(a: torch.Tensor, b: torch.Tensor) -> bool:
    return a.numel() == b.numel() and a.dtype == b.dtype and torch.equal(a.reshape(-1), b.reshape(-1))


def _probe(model: nn.Module, example: torch.Tensor) -> _ProbeResult:
    """Run ``model`` once on one example with forward hooks on every leaf module; an operation in forward()
    that no module performs shows as a leaf whose input is neither the model's input nor (up to a reshape
    or a ReLU) the output of an earlier leaf, or as a model output that is no leaf's output."""
    if model in _PROBE_CACHE:
        return _PROBE_CACHE[model]
    calls: list[tuple[str, torch.Tensor | None, torch.Tensor]] = []

    def hook(name):
        def record(_module, inputs, output):
            first = next((t for t in inputs if isinstance(t, torch.Tensor)), None)
            if isinstance(output, torch.Tensor):
                calls.append((name, None if first is None else first.detach(), output.detach()))
        return record

    handles = [m.register_forward_hook(hook(n)) for n, m in _leaves(model)]
    try:
        with eval_mode(model), torch.no_grad():
            out = model(example[:1])
    finally:
        for h in handles:
            h.remove()
    modules = dict(model.named_modules())
    problems, pairs, order = [], [], []
    known: list[tuple[str, torch.Tensor]] = [("the input", example[:1].detach())]

    def source(t):
        for name, value in reversed(known):
            if _same_values(t, value) or _same_values(t, torch.relu(value)):
                return name
        return None

    for name, inp, output in calls:
        if name not in order:
            order.append(name)
        if inp is not None:
            src = source(inp)
            if src is None:
                prev = known[-1][0]
                problems.append(f"an operation in forward() between {prev if prev == 'the input' else repr(prev)} "
                                f"and '{name}' that no module performs (fx could not trace forward(), so relmon "
                                "cannot name it; make it a module or remove it)")
            elif isinstance(modules.get(name), _BATCHNORM) and src != "the input" \
                    and isinstance(modules.get(src), _WEIGHTED) and _same_values(inp, dict(known)[src]):
                pairs.append(((src,), name))
        known.append((name, output))
    if isinstance(out, torch.Tensor) and calls and not any(_same_values(out, v) for _, v in known[1:]):
        problems.append(f"an operation in forward() after the last layer '{calls[-1][0]}' (e.g. a softmax or "
                        f"log_softmax; explain the logits: return the output of '{calls[-1][0]}')")
    result = _ProbeResult(order, problems, pairs)
    _PROBE_CACHE[model] = result
    return result


def _is_shape(node, _seen=None) -> bool:
    """Whether an fx node computes a size (from ``x.shape``, ``x.size()``, ``x.dim()``) rather than a tensor."""
    if not isinstance(node, torch.fx.Node):
        return True  # a Python constant
    if node.op == "call_method" and node.target in ("size", "dim"):
        return True
    if node.op == "call_function" and node.target is getattr:
        return len(node.args) > 1 and node.args[1] in ("shape", "ndim")
    if node.op == "call_function" and node.target in (operator.getitem, operator.mul, operator.floordiv,
                                                      operator.add, operator.sub, operator.truediv, operator.mod):
        args = [a for a in node.args if isinstance(a, torch.fx.Node)]
        return bool(args) and all(_is_shape(a) for a in args)
    return False


def _inside(node: torch.fx.Node, modules: set[str]) -> bool:
    """Whether fx recorded ``node`` as computed inside one of the named modules."""
    stack = node.meta.get("nn_module_stack") or {}
    return any(path in modules for path, _ in stack.values())


def _forward_problems(model: nn.Module, example: torch.Tensor | None = None,
                      handled: set[str] = frozenset()) -> list[str]:
    """Operations in forward() relevance cannot pass through: from the traced graph, or, where fx cannot
    trace forward(), from a hook probe on ``example`` (with a warning pointing at the caller)."""
    graph = _traced_graph(model)
    if graph is None:
        reason = _TRACE_ERRORS.get(model, "unknown error")
        if example is None:
            if model not in _WARNED:
                _WARNED.add(model)
                _warn_at_caller(
                    f"relmon could not trace {type(model).__name__}.forward with torch.fx ({reason}) and has no "
                    "example input to probe it: operations in forward() are unchecked and BatchNorms are merged by "
                    "registration order; verify relevance with relmon.explain.conservation()."
                )
            return []
        if model not in _WARNED:
            _WARNED.add(model)
            _warn_at_caller(
                f"relmon could not trace {type(model).__name__}.forward with torch.fx ({reason}); it checked the "
                "model by running it once with hooks on every layer instead, which finds operations between "
                "layers but cannot name them. Verify relevance with relmon.explain.conservation()."
            )
        return list(_probe(model, example).problems)
    problems: list[str] = []
    for node in graph.nodes:
        if node.op == "call_function" and node.target in _FUNCTIONS:
            what, fix, two = _FUNCTIONS[node.target]
        elif node.op == "call_method" and node.target in _METHODS:
            what, fix, two = _METHODS[node.target]
        else:
            continue
        if handled and _inside(node, handled):
            continue  # a block the LRP canonizer rewrites, or a layer with its own rule (relmon.explain.lrp_rules)
        if _is_shape(node):
            continue  # arithmetic on sizes (h // p * w // p), not on activations
        tensors = [a for a in (*node.args, *node.kwargs.values()) if isinstance(a, torch.fx.Node)]
        if node.target is torch.cat and node.args and isinstance(node.args[0], (list, tuple)):
            tensors = [a for a in node.args[0] if isinstance(a, torch.fx.Node)]
        if what in ("addition", "subtraction"):
            # x + self.pos_embedding: a learned constant added is a bias (it takes no relevance)
            tensors = [a for a in tensors if a.op != "get_attr"]
        # x * 0.5 or x + 1 is a constant scale or shift (a bias); two tensors mixing is the problem.
        if two and len(tensors) < 2:
            continue
        at_output = all(u.op == "output" for u in node.users)
        where = "at the output of forward()" if at_output else "in forward()"
        problems.append(f"{what} '{node.name}' {where} ({fix.format(op=what)})")
    return problems


def _supported_leaves() -> tuple:
    return (*_SUPPORTED_LEAVES, *lrp_rules.SMOOTH_ACTIVATIONS, zennit_module("layer").Sum)


def _torchvision_leaves() -> tuple:
    """torchvision's leaf modules that only move data (Permute) or are the identity in eval mode (StochasticDepth)."""
    found = []
    for module, name in (("torchvision.ops.misc", "Permute"), ("torchvision.ops.stochastic_depth", "StochasticDepth")):
        cls = getattr(sys.modules.get(module), name, None)
        if cls is not None:
            found.append(cls)
    return tuple(found)


def _attention_problems(model: nn.Module, blocks: bool) -> list[str]:
    """Attention modules relmon has no rule for: an ``nn.MultiheadAttention`` outside torchvision's ViT
    ``EncoderBlock`` (whose canonizer gives it one input), or any other module named like an attention layer."""
    wrapped = set()
    if blocks:
        for name in lrp_rules.handled_blocks(model):
            attention = getattr(model.get_submodule(name), "self_attention", None)
            if isinstance(attention, nn.MultiheadAttention):
                wrapped.add(id(attention))
    with_rules = tuple(lrp_rules.linearised_forwards())
    problems = []
    for name, module in model.named_modules():
        if isinstance(module, nn.MultiheadAttention):
            if id(module) not in wrapped:
                problems.append(f"'{name}' (nn.MultiheadAttention outside torchvision's ViT EncoderBlock: relmon "
                                "gives it a rule through relmon.explain.lrp_rules.SelfAttention; call that module "
                                "with one input x instead)")
        elif "Attention" in type(module).__name__ and type(module) not in with_rules:
            problems.append(f"'{name}' ({type(module).__name__}: no LRP rule for this attention layer)")
    return problems


def check_supported(model: nn.Module, canonizers: list, example: torch.Tensor | None = None) -> None:
    """Raise :class:`UnsupportedModelError` naming every layer and operation relmon's LRP would get wrong.

    Call it while the composite (with its canonizers) is registered: merged BatchNorms are the
    identity then, unmerged ones are reported. ``example`` (one input) lets models fx cannot trace be
    checked by a hook probe.
    """
    problems = []
    supported = _supported_leaves()
    with_rules = tuple(lrp_rules.linearised_forwards())
    blocks = any(getattr(c, "relmon_blocks", False) for c in canonizers)
    gates = lrp_rules.gate_internals(model) if blocks else set()
    for name, module in _leaves(model):
        # a BatchNorm not merged into a layer before it (DenseNet's, after concatenations) gets the identity rule
        if isinstance(module, _BATCHNORM) or name in gates:
            continue
        if not (isinstance(module, supported) or type(module) in with_rules
                or type(module) in _torchvision_leaves()):
            problems.append(f"'{name}' ({type(module).__name__})")
    problems.extend(_attention_problems(model, blocks))
    handled_by_canonizer = any(type(c).__name__ == "ResNetCanonizer" for c in canonizers)
    if not handled_by_canonizer:
        inside = set(lrp_rules.handled_blocks(model)) if blocks else set()
        inside |= {n for n, m in model.named_modules() if type(m) in with_rules}
        problems.extend(_forward_problems(model, example, inside))
    if problems:
        listed = "; ".join(problems[:8]) + (f"; and {len(problems) - 8} more" if len(problems) > 8 else "")
        raise UnsupportedModelError(
            f"relmon's LRP does not support {type(model).__name__}: {listed}. zennit's composites would "
            "propagate relevance through these without a proper rule, giving silently wrong heatmaps. Use a "
            "gradient method (method='sensitivity' or 'gradient_x_input'), pass canonizers= that rewrite these "
            "parts, or pass strict=False to explain anyway (then check relmon.explain.conservation())."
        )


def _pin_first_layer(composite, first: str | None, first_module: nn.Module | None) -> None:
    """Give zennit's first-layer rule (Flat, z^B) to the layer named ``first`` — the first weighted layer in
    execution order — and the ordinary rules to every other layer. zennit itself gives it to the first
    matching layer in *registration* order, which is another layer where a model registers its head first.
    Where the first layer is of a type the composite has no first-layer rule for (z^B is defined for
    convolutions only), no layer gets it, rather than a later one."""
    first_map, layer_map = composite.first_map, composite.layer_map
    first_hook = next((hook for types, hook in first_map if isinstance(first_module, types)), None)

    def mapping(ctx, name, module):
        if first_hook is not None and name == first:
            return first_hook
        return next((hook for types, hook in layer_map if isinstance(module, types)), None)

    composite.module_map = mapping


def first_layer(model: nn.Module, example: torch.Tensor | None = None) -> str | None:
    """Name of the first convolution or linear layer forward() runs (execution order, not registration)."""
    order = _execution_order(model, example)
    modules = dict(model.named_modules())
    if order is None:
        return next((n for n, m in _leaves(model) if isinstance(m, _WEIGHTED)), None)
    return next((n for n in order if isinstance(modules.get(n), _WEIGHTED)), None)


def composite_for(name: str, model: nn.Module, x: torch.Tensor, zero_bias: bool = False,
                  canonizers: list | None = None, **options):
    """A fresh zennit composite for ``lrp:<name>`` (one instance per call: composites hold state), its
    first-layer rule pinned to the first layer in execution order."""
    SpecialFirstLayerMapComposite = zennit_module("composites").SpecialFirstLayerMapComposite

    if name not in COMPOSITES:
        raise ValueError(f"unknown LRP composite {name!r}; known: {', '.join(sorted(COMPOSITES))}")
    example = x[:1].detach()
    attention = options.pop("attention", None) or lrp_rules.DEFAULT_ATTENTION
    canonizers = default_canonizers(model, example) if canonizers is None else list(canonizers)
    zero_params = "bias" if zero_bias else None
    composite = COMPOSITES[name](zero_params=zero_params, canonizers=canonizers, model=model, x=x, **options)
    # rules for LayerNorm/GroupNorm, attention and smooth activations, looked up before the composite's own
    composite.layer_map[:0] = lrp_rules.extra_layer_map(zero_params, attention)
    if isinstance(composite, SpecialFirstLayerMapComposite):
        first = first_layer(model, example)
        _pin_first_layer(composite, first, None if first is None else model.get_submodule(first))
    return composite, canonizers


def check_lrp_support(model: nn.Module, example_input: torch.Tensor, composite: str = DEFAULT_COMPOSITE,
                      canonizers: list | None = None) -> None:
    """Raise :class:`UnsupportedModelError` naming every problem relmon's LRP (composite ``lrp:<composite>``)
    would have with ``model``; return None if it has none. ``composite`` is a method id (``"lrp"``,
    ``"lrp:epsilon_gamma_box"``) or a composite name; the gradient methods' ids return None at once.

    Cheap enough to call up front (e.g. when a Lightning callback is set up): it traces ``forward`` once
    with torch.fx (cached per model) and checks every layer and operation without running the model;
    only where fx cannot trace ``forward`` does it run the model once on ``example_input[:1]`` with hooks
    (and warns, naming the caller's line, that such a check cannot name the operations it finds).
    """
    if not isinstance(model, nn.Module):
        raise TypeError(f"model must be a torch.nn.Module, got {type(model).__name__}")
    if not isinstance(example_input, torch.Tensor) or example_input.dim() < 2:
        raise TypeError("example_input must be a batched input tensor such as (B, C, H, W)")
    from relmon.explain._state import evaluation_state

    family, _, name = composite.partition(":")
    if family in ("sensitivity", "gradient_x_input", "deconvnet", "random") and not name:
        return None  # gradient methods need no LRP rules: every model is supported
    composite = (name or DEFAULT_COMPOSITE) if family == "lrp" else composite
    with evaluation_state(model):
        comp, canonizers = composite_for(composite, model, example_input[:1].detach(), canonizers=canonizers)
        with comp.context(model) as modified:
            check_supported(modified, canonizers, example_input[:1].detach())
