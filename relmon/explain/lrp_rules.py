"""LRP rules for the layers of current image classifiers, on zennit's mechanism (AttnLRP, Achtibat et al., ICML
2024): smooth activations, LayerNorm/GroupNorm, multi-head and shifted-window attention, squeeze-excitation
gates, layer scale, residual sums and unmerged BatchNorms.

How it works. Between hooked layers zennit carries relevance as the gradient. A layer whose rule is the ε-rule of
a *linearised* forward gets :class:`Linearised`: its backward recomputes the layer's forward with the factors
AttnLRP holds constant cut from the graph (``.detach()``) and returns ``x ⊙ ∂f̃/∂x · R / (f̃(x) + ε)``, which is the
ε-rule applied layer by layer inside that forward (for bias-free linear pieces it collapses to the product of
their Jacobians). Elementwise maps held to the identity rule pass relevance unchanged (zennit's ``Pass``), and a
product with a gate treated as a constant is written so its gradient is the identity (:func:`pass_through`).

=========================  ==========================================================================================
layer                      rule
=========================  ==========================================================================================
GELU, SiLU, Hardswish      identity (AttnLRP's rule for smooth elementwise activations): zennit ``Pass``
LayerNorm, LayerNorm2d,    ε-rule with the normalisation factor ``1/std`` held constant: the centring and the affine
GroupNorm                  map are linear, so relevance is conserved up to the bias (``zero_bias`` drops it)
attention                  ``attention="attnlrp"`` (default): softmax by the AttnLRP rule ``R_in = x ⊙ (R_out − s ΣR_out)``
(MultiheadAttention,       (the gradient × input of the softmax), the bilinear products ``q·kᵀ`` and ``A·v`` split
ShiftedWindowAttention)    uniformly (half the relevance to each factor); ``attention="cp"``: the attention matrix
                           held constant (CP-LRP), so relevance flows through the values only and is conserved exactly
squeeze-excitation gate,   the gate/scale held constant: relevance passes through the gated path unchanged
layer scale
residual sums              zennit's ``Sum`` with the ``Norm`` rule (each summand gets its share of the sum)
unmerged BatchNorm         identity (its shift held to be a bias; DenseNet's BatchNorms after concatenations)
=========================  ==========================================================================================
"""

from __future__ import annotations

import functools
import sys

import torch
import torch.nn.functional as F
from torch import nn
from torch.overrides import TorchFunctionMode

from relmon.explain._zennit import zennit_module

ATTENTION_RULES = ("attnlrp", "cp")
DEFAULT_ATTENTION = "attnlrp"
#: Smooth elementwise activations the identity rule covers (zennit's composites already map them to ``Pass``).
SMOOTH_ACTIVATIONS = (nn.GELU, nn.SiLU, nn.Hardswish)


def pass_through(x: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
    """``y`` in the forward pass, the identity from ``y`` back to ``x`` in the backward pass (the relevance of an
    elementwise map held linear: ``y = g ⊙ x`` with ``g`` a constant gives ``R_x = x g R_y / (g x) = R_y``)."""
    return y.detach() + (x - x.detach())


def _half_gradient(y: torch.Tensor) -> torch.Tensor:
    # value y exactly (0.5·y + 0.5·y), half the gradient to each factor of the product that made y
    half = 0.5 * y
    return half + half.detach()


_SOFTMAX = {torch.softmax, F.softmax, torch.Tensor.softmax}
_PRODUCTS = {torch.matmul, torch.Tensor.matmul, torch.Tensor.__matmul__, torch.bmm, torch.Tensor.bmm}


class AttentionRule(TorchFunctionMode):
    """Inside an attention forward: AttnLRP (``"attnlrp"``) halves the gradient of each product of two tensors
    that both carry gradient (the uniform rule for ``q·kᵀ`` and ``A·v``) and leaves the softmax's gradient as it
    is (in gradient × input form that *is* the AttnLRP softmax rule); CP-LRP (``"cp"``) detaches the softmax's
    output, so the attention matrix is a constant. Used as a torch function mode around a forward written with
    ``softmax``/``matmul`` (torchvision's ``shifted_window_attention``), or through :meth:`softmax` and
    :meth:`product` directly (``nn.MultiheadAttention``, written out in :func:`_multihead_forward`)."""

    def __init__(self, rule: str):
        super().__init__()
        if rule not in ATTENTION_RULES:
            raise ValueError(f"unknown attention rule {rule!r}; choose one of {', '.join(ATTENTION_RULES)}")
        self.rule = rule

    def softmax(self, scores: torch.Tensor) -> torch.Tensor:
        a = torch.softmax(scores, dim=-1)
        return a.detach() if self.rule == "cp" else a

    def product(self, a: torch.Tensor, b: torch.Tensor) -> torch.Tensor:
        y = torch.matmul(a, b)
        return _half_gradient(y) if self.rule == "attnlrp" and a.requires_grad and b.requires_grad else y

    def __torch_function__(self, func, types, args=(), kwargs=None):
        kwargs = kwargs or {}
        if func in _SOFTMAX:
            out = func(*args, **kwargs)
            return out.detach() if self.rule == "cp" else out
        if func in _PRODUCTS and self.rule == "attnlrp":
            out = func(*args, **kwargs)
            a, b = args[0], args[1]
            both = isinstance(a, torch.Tensor) and isinstance(b, torch.Tensor) and a.requires_grad and b.requires_grad
            return _half_gradient(out) if both else out
        if func is F.scaled_dot_product_attention:
            raise NotImplementedError("relmon's attention rule does not cover a fused scaled_dot_product_attention")
        return func(*args, **kwargs)


class SelfAttention(nn.Module):
    """``x ↦ attention(x, x, x)`` of an ``nn.MultiheadAttention``, one input so that a zennit rule can hold it. The
    wrapped module is kept outside the module tree (it stays registered where the model has it)."""

    def __init__(self, attention: nn.MultiheadAttention):
        super().__init__()
        self._wrapped = [attention]

    @property
    def attention(self) -> nn.MultiheadAttention:
        return self._wrapped[0]

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.attention.forward(x, x, x, need_weights=False)[0]


def _value_bias_zeroed(qkv_bias: torch.Tensor) -> torch.Tensor:
    # zero_bias drops the biases on the value path only; q and k keep theirs, so the attention pattern is the real one
    bias = qkv_bias.detach().clone()
    bias[2 * bias.numel() // 3:] = 0
    return bias


def _multihead_forward(module: SelfAttention, x, zero_bias: bool, attention: str):
    """``nn.MultiheadAttention(x, x, x)`` written out (packed projections), with the attention rule applied."""
    mha = module.attention
    if not mha._qkv_same_embed_dim or mha.bias_k is not None or mha.add_zero_attn:
        raise NotImplementedError("nn.MultiheadAttention with separate q/k/v projections, bias_k/v or add_zero_attn")
    rule = AttentionRule(attention)
    in_bias, out_bias = mha.in_proj_bias, mha.out_proj.bias
    if zero_bias:
        in_bias = None if in_bias is None else _value_bias_zeroed(in_bias)
        out_bias = None
    tokens = x if mha.batch_first else x.transpose(0, 1)  # (B, N, E)
    b, n, e = tokens.shape
    heads = mha.num_heads
    q, k, v = F.linear(tokens, mha.in_proj_weight, in_bias).chunk(3, dim=-1)
    q, k, v = (t.reshape(b, n, heads, e // heads).transpose(1, 2) for t in (q, k, v))
    scores = rule.product(q * (e // heads) ** -0.5, k.transpose(-2, -1))
    out = rule.product(rule.softmax(scores), v).transpose(1, 2).reshape(b, n, e)
    out = F.linear(out, mha.out_proj.weight, out_bias)
    return out if mha.batch_first else out.transpose(0, 1)


def _swin_forward(module, x, zero_bias: bool, attention: str):
    from torchvision.models.swin_transformer import shifted_window_attention

    qkv_bias, proj_bias = module.qkv.bias, module.proj.bias
    if zero_bias:
        qkv_bias = None if qkv_bias is None else _value_bias_zeroed(qkv_bias)
        proj_bias = None if proj_bias is None else torch.zeros_like(proj_bias)
    with AttentionRule(attention):
        return shifted_window_attention(
            x, module.qkv.weight, module.proj.weight, module.get_relative_position_bias(), module.window_size,
            module.num_heads, shift_size=module.shift_size, attention_dropout=0.0, dropout=0.0,
            qkv_bias=qkv_bias, proj_bias=proj_bias, training=False,
        )


def _normalise(x: torch.Tensor, dims: tuple, eps: float) -> torch.Tensor:
    centred = x - x.mean(dims, keepdim=True)
    std = torch.sqrt(x.var(dims, unbiased=False, keepdim=True) + eps)
    return centred / std.detach()  # AttnLRP: the normalisation factor is a constant; the centring stays linear


def _layer_norm_last(module: nn.LayerNorm, x, zero_bias: bool):
    y = _normalise(x, tuple(range(-len(module.normalized_shape), 0)), module.eps)
    if module.weight is not None:
        y = y * module.weight
    if module.bias is not None and not zero_bias:
        y = y + module.bias
    return y


def _layer_norm_forward(module, x, zero_bias: bool, attention: str):
    return _layer_norm_last(module, x, zero_bias)


def _layer_norm_2d_forward(module, x, zero_bias: bool, attention: str):
    return _layer_norm_last(module, x.permute(0, 2, 3, 1), zero_bias).permute(0, 3, 1, 2)


def _group_norm_forward(module: nn.GroupNorm, x, zero_bias: bool, attention: str):
    shape = x.shape
    y = _normalise(x.reshape(shape[0], module.num_groups, -1), (-1,), module.eps).reshape(shape)
    affine = (1, -1) + (1,) * (x.dim() - 2)
    if module.weight is not None:
        y = y * module.weight.view(affine)
    if module.bias is not None and not zero_bias:
        y = y + module.bias.view(affine)
    return y


def _torchvision(module_name: str, class_name: str):
    """A torchvision class if torchvision is loaded (a model of it exists then), else None."""
    module = sys.modules.get(module_name)
    return getattr(module, class_name, None) if module is not None else None


def linearised_forwards() -> dict:
    """Exact module type → its LRP forward ``(module, x, zero_bias, attention) -> y``."""
    forwards = {
        nn.LayerNorm: _layer_norm_forward,
        nn.GroupNorm: _group_norm_forward,
        SelfAttention: _multihead_forward,
    }
    layer_norm_2d = _torchvision("torchvision.models.convnext", "LayerNorm2d")
    if layer_norm_2d is not None:
        forwards[layer_norm_2d] = _layer_norm_2d_forward
    swin_attention = _torchvision("torchvision.models.swin_transformer", "ShiftedWindowAttention")
    if swin_attention is not None:
        forwards[swin_attention] = _swin_forward
    return forwards


def _rule_classes():
    Hook, Stabilizer = zennit_module("core").Hook, zennit_module("core").Stabilizer

    class Linearised(Hook):
        """ε-rule of a module's linearised forward (see the module doc): ``R_in = x ⊙ ∂f̃/∂x · R_out / (f̃(x) + ε)``."""

        def __init__(self, epsilon=1e-6, zero_params=None, attention=DEFAULT_ATTENTION):
            super().__init__()
            self.epsilon, self.zero_params, self.attention = epsilon, zero_params, attention
            self.stabilizer = Stabilizer.ensure(epsilon)

        @property
        def zero_bias(self) -> bool:
            zp = self.zero_params
            return zp == "bias" or (isinstance(zp, (list, tuple)) and "bias" in zp)

        def forward(self, module, input, output):
            self.stored_tensors["input"] = input

        def backward(self, module, grad_input, grad_output):
            forward = linearised_forwards()[type(module)]
            x = self.stored_tensors["input"][0].detach().clone().requires_grad_(True)
            with torch.autograd.enable_grad():
                out = forward(module, x, self.zero_bias, self.attention)
                grad, = torch.autograd.grad(out, x, grad_outputs=grad_output[0] / self.stabilizer(out))
            return tuple(x * grad if original.shape == x.shape else None for original in grad_input[:1])

        def copy(self):
            return type(self)(self.epsilon, self.zero_params, self.attention)

    return Linearised


@functools.cache
def linearised_rule_class():
    return _rule_classes()


def extra_layer_map(zero_params=None, attention: str = DEFAULT_ATTENTION, epsilon: float = 1e-6) -> list:
    """Layer-map entries (put before a composite's own) for the layers this module gives rules."""
    if attention not in ATTENTION_RULES:
        raise ValueError(f"unknown attention rule {attention!r}; choose one of {', '.join(ATTENTION_RULES)}")
    rule = linearised_rule_class()(epsilon=epsilon, zero_params=zero_params, attention=attention)
    types = tuple(linearised_forwards())
    return [(types, rule), (SMOOTH_ACTIVATIONS, zennit_module("rules").Pass())]


# -- canonizers: torchvision blocks rewritten so that residual sums and constant gates get their rules ---------


def _sum(block: nn.Module, name: str, a: torch.Tensor, b: torch.Tensor) -> torch.Tensor:
    return getattr(block, name)(torch.stack([a, b], dim=-1))


def _encoder_block_forward(self, input):
    x = self.dropout(self.lrp_attention(self.ln_1(input)))
    x = _sum(self, "lrp_sum_attention", x, input)
    return _sum(self, "lrp_sum_mlp", x, self.mlp(self.ln_2(x)))


def _swin_block_forward(self, x):
    x = _sum(self, "lrp_sum_attention", x, self.stochastic_depth(self.attn(self.norm1(x))))
    return _sum(self, "lrp_sum_mlp", x, self.stochastic_depth(self.mlp(self.norm2(x))))


def _convnext_block_forward(self, input):
    branch = self.block(input)
    result = self.stochastic_depth(pass_through(branch, self.layer_scale * branch))  # layer scale: a constant
    return _sum(self, "lrp_sum", result, input)


def _residual_block_forward(self, input):  # EfficientNet's MBConv, MobileNetV3's InvertedResidual
    result = self.block(input)
    if self.use_res_connect:
        result = _sum(self, "lrp_sum", getattr(self, "stochastic_depth", nn.Identity())(result), input)
    return result


def _squeeze_excitation_forward(self, input):
    gate = self._scale(input.detach())  # the gate is a constant: relevance flows through the gated path only
    return pass_through(input, gate * input)


def _densenet_forward(self, x):
    # DenseNet's head as modules (ReLU, then average pooling with its rule): the functional pooling's gradient
    # would spread relevance evenly, onto positions the ReLU zeroed too, where it is lost
    return self.classifier(torch.flatten(self.lrp_pool(self.lrp_relu(self.features(x))), 1))


def canonized_blocks() -> dict:
    """Exact torchvision block class → (new forward, names of the Sum modules it needs)."""
    blocks = {}
    for module, cls, forward, sums in (
        ("torchvision.models.vision_transformer", "EncoderBlock", _encoder_block_forward,
         ("lrp_sum_attention", "lrp_sum_mlp")),
        ("torchvision.models.swin_transformer", "SwinTransformerBlock", _swin_block_forward,
         ("lrp_sum_attention", "lrp_sum_mlp")),
        ("torchvision.models.convnext", "CNBlock", _convnext_block_forward, ("lrp_sum",)),
        ("torchvision.models.efficientnet", "MBConv", _residual_block_forward, ("lrp_sum",)),
        ("torchvision.models.mobilenetv3", "InvertedResidual", _residual_block_forward, ("lrp_sum",)),
        ("torchvision.ops.misc", "SqueezeExcitation", _squeeze_excitation_forward, ()),
        ("torchvision.models.densenet", "DenseNet", _densenet_forward, ()),
    ):
        found = _torchvision(module, cls)
        if found is not None:
            blocks[found] = (forward, sums)
    return blocks


def blocks_canonizer():
    """A zennit canonizer rewriting the forward of every torchvision block :func:`canonized_blocks` knows (exact
    class): residual sums through zennit ``Sum`` modules, gates and layer scales held constant, ViT's attention
    through :class:`SelfAttention`. The model computes the same values; only the backward (the rules) changes."""
    AttributeCanonizer, Sum = zennit_module("canonizers").AttributeCanonizer, zennit_module("layer").Sum
    blocks = canonized_blocks()

    def attribute_map(name, module):
        entry = blocks.get(type(module))
        if entry is None:
            return None
        forward, sums = entry
        attributes = {"forward": forward.__get__(module)}
        attributes.update({s: Sum() for s in sums})
        if forward is _encoder_block_forward:
            attributes["lrp_attention"] = SelfAttention(module.self_attention)
        if forward is _densenet_forward:
            attributes.update(lrp_relu=nn.ReLU(), lrp_pool=nn.AdaptiveAvgPool2d(1))
        return attributes

    canonizer = AttributeCanonizer(attribute_map)
    canonizer.relmon_blocks = True  # check_supported: the operations inside these blocks are handled
    return canonizer


def handled_blocks(model: nn.Module) -> list[str]:
    """Names of the modules in ``model`` whose forward :func:`blocks_canonizer` rewrites."""
    blocks = canonized_blocks()
    return [name for name, m in model.named_modules() if type(m) in blocks]


def gate_internals(model: nn.Module) -> set[str]:
    """Names of the modules computing a squeeze-excitation gate (held constant: they take no relevance)."""
    se = _torchvision("torchvision.ops.misc", "SqueezeExcitation")
    if se is None:
        return set()
    return {f"{name}.{child}" for name, m in model.named_modules() if type(m) is se for child, _ in m.named_modules()
            if child}


__all__ = [
    "ATTENTION_RULES",
    "DEFAULT_ATTENTION",
    "AttentionRule",
    "SMOOTH_ACTIVATIONS",
    "SelfAttention",
    "blocks_canonizer",
    "canonized_blocks",
    "extra_layer_map",
    "gate_internals",
    "handled_blocks",
    "linearised_forwards",
    "linearised_rule_class",
    "pass_through",
]
