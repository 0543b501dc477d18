"""``explain``: one entry point for every heatmap method, batched, on the input's device."""

from __future__ import annotations

from dataclasses import dataclass

import torch
from torch import nn

from relmon.explain import lrp as _lrp
from relmon.explain._state import evaluation_state, gradients_enabled
from relmon.explain._validate import check_input, resolve_target
from relmon.explain._zennit import zennit_module as _zennit_module
from relmon.interrupts import Interrupted

PLAIN_METHODS = ("sensitivity", "deconvnet", "gradient_x_input", "random")
_OPTIONS = {
    "lrp": {"zero_bias", "canonizers", "strict", "low", "high", "gamma", "attention"},
    "sensitivity": set(),
    "deconvnet": {"canonizers"},
    "gradient_x_input": set(),
    "random": {"seed"},
}


def available_methods() -> list[str]:
    """Every method id ``explain`` accepts (bare ``lrp`` is ``lrp:epsilon_plus_flat``)."""
    return ["lrp", *(f"lrp:{c}" for c in _lrp.COMPOSITES), *PLAIN_METHODS]


def parse_method(method: str) -> tuple[str, str | None]:
    """``'lrp:epsilon_100'`` → ``('lrp', 'epsilon_100')``; ``'lrp'`` → the default composite."""
    if not isinstance(method, str):
        raise TypeError(f"method must be a string id, got {type(method).__name__}")
    family, _, composite = method.partition(":")
    if family == "lrp":
        composite = composite or _lrp.DEFAULT_COMPOSITE
        if composite in _lrp.COMPOSITES:
            return "lrp", composite
    elif family in PLAIN_METHODS and not composite:
        return family, None
    raise ValueError(f"unknown method {method!r}; known methods: {', '.join(available_methods())}")


def canonical_method(method: str) -> str:
    """The id used in records and metric labels (``lrp`` → ``lrp:epsilon_plus_flat``)."""
    family, composite = parse_method(method)
    return f"lrp:{composite}" if family == "lrp" else family


@dataclass
class Explanation:
    """Relevance ``(B, C, H, W)``, the clean logits ``(B, K)`` and the explained classes ``(B,)``."""

    relevance: torch.Tensor
    logits: torch.Tensor
    target: torch.Tensor
    method: str


def _one_hot(target: torch.Tensor, logits: torch.Tensor) -> torch.Tensor:
    return torch.zeros_like(logits).scatter_(1, target[:, None], 1.0)


def _forward(model: nn.Module, x: torch.Tensor) -> torch.Tensor:
    try:
        out = model(x)
    except Interrupted:
        raise
    except RuntimeError as err:
        raise ValueError(
            f"the model could not process a batch of shape {tuple(x.shape)}: {err}. Check the image size and "
            "the number of channels the model was built for."
        ) from err
    if not isinstance(out, torch.Tensor) or out.dim() != 2:
        shape = tuple(out.shape) if isinstance(out, torch.Tensor) else type(out).__name__
        raise ValueError(f"the model must return logits of shape (B, num_classes), it returned {shape}")
    return out


def _gradient(model, x, target, seed_with_logit: bool, composite=None, strict=True, canonizers=()):
    """One forward and one backward; the seed is one-hot (gradient) or one-hot × logit (LRP)."""
    if composite is None:
        logits = _forward(model, x)
        idx = resolve_target(target, logits.detach())
        seed = _one_hot(idx, logits)
        grad, = torch.autograd.grad(logits, x, grad_outputs=seed)
        return grad, logits.detach(), idx
    with composite.context(model) as modified:
        if strict:
            _lrp.check_supported(modified, canonizers, x[:1].detach())
        logits = _forward(modified, x)
        idx = resolve_target(target, logits.detach())
        seed = _one_hot(idx, logits)
        if seed_with_logit:
            seed = seed * logits.detach()
        grad, = torch.autograd.grad(logits, x, grad_outputs=seed)
    return grad, logits.detach(), idx


def explain_full(model: nn.Module, x: torch.Tensor, method: str = "lrp", target=None, **options) -> Explanation:
    """Like :func:`explain`, also returning the clean logits and the explained classes."""
    family, composite_name = parse_method(method)
    unknown = set(options) - _OPTIONS[family]
    if unknown:
        raise TypeError(
            f"method {method!r} takes no option(s) {sorted(unknown)}; it takes: {sorted(_OPTIONS[family]) or 'none'}"
        )
    if not isinstance(model, nn.Module):
        raise TypeError(f"model must be a torch.nn.Module, got {type(model).__name__}")
    check_input(model, x)

    with gradients_enabled(), evaluation_state(model):
        # clone() outside inference mode makes a normal tensor even from an inference tensor.
        xg = x.detach().clone().requires_grad_(True)
        if family == "lrp":
            strict = options.pop("strict", True)
            composite, canonizers = _lrp.composite_for(composite_name, model, xg, **options)
            grad, logits, idx = _gradient(model, xg, target, True, composite, strict, canonizers)
            relevance = grad
        elif family == "deconvnet":
            zc = _zennit_module("composites")

            canonizers = options.get("canonizers")
            canonizers = _lrp.default_canonizers(model, lrp=False) if canonizers is None else list(canonizers)
            grad, logits, idx = _gradient(model, xg, target, False, zc.DeconvNet(canonizers=canonizers),
                                          strict=False, canonizers=canonizers)
            relevance = grad
        elif family in ("sensitivity", "gradient_x_input"):
            grad, logits, idx = _gradient(model, xg, target, False)
            relevance = grad * xg.detach() if family == "gradient_x_input" else grad
        else:  # random
            with torch.no_grad():
                logits = _forward(model, xg.detach())
            idx = resolve_target(target, logits)
            gen = torch.Generator().manual_seed(int(options.get("seed", 0)))
            relevance = torch.rand(x.shape, generator=gen, dtype=torch.float32).to(x.device, x.dtype)
    return Explanation(relevance.detach(), logits.detach(), idx.detach(), canonical_method(method))


def explain(model: nn.Module, x: torch.Tensor, method: str = "lrp", target=None, **options) -> torch.Tensor:
    """Relevance of every input pixel and channel for the explained class, shaped like ``x``.

    Parameters
    ----------
    model:
        An image classifier returning logits ``(B, K)``. Its mode, hooks, parameters and
        ``requires_grad`` flags are the same afterwards (it runs in eval mode meanwhile).
    x:
        Float batch ``(B, C, H, W)`` in the model's input space, on the model's device.
    method:
        ``lrp`` (= ``lrp:epsilon_plus_flat``), ``lrp:<composite>`` (see :mod:`relmon.explain.lrp`),
        ``sensitivity``, ``deconvnet``, ``gradient_x_input`` or ``random``.
    target:
        ``None`` explains the predicted class (monitoring has no labels); an int or a tensor of
        ``B`` class indices explains those classes.
    options:
        LRP: ``zero_bias`` (rules ignore biases, so relevance is conserved exactly), ``canonizers``
        (zennit canonizers; default chosen by model type), ``strict`` (default ``True``: refuse
        models with layers LRP would get wrong), ``low``/``high`` (input range for
        ``epsilon_gamma_box``, default from the model's preprocessing), ``gamma``.
        ``random``: ``seed``.

    Works inside ``torch.inference_mode()`` (as in Lightning's evaluation loops): relmon leaves
    inference mode for the backward pass itself.

    Returns
    -------
    Tensor ``(B, C, H, W)`` on ``x``'s device. For LRP, ``relevance.sum((1, 2, 3))`` equals the
    explained logit up to what biases and the ε-stabiliser absorb.
    """
    return explain_full(model, x, method, target, **options).relevance


def conservation(relevance: torch.Tensor, logits: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
    """Share of the explained logit *not* found in the input relevance, per sample.

    ``1 - R.sum() / logit``: 0 for perfect conservation; the part absorbed by biases and ε.
    """
    explained = logits.gather(1, target[:, None]).squeeze(1)
    total = relevance.flatten(1).sum(1)
    return 1.0 - total / explained
