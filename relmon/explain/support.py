"""Whether relmon's LRP explains a model exactly, approximately, or not at all — measured, not looked up.

``lrp_support(model, x)`` explains ``x`` with a composite at ``zero_bias=True`` (so that a model whose every rule
conserves relevance must give ``Σ R = logit``) and, at the same time, records each hooked layer's relevance in
and out, so that where relevance is lost is named, not guessed:

- ``exact``: ``Σ R`` over the input equals the explained logit within ``tolerance`` (relative), every sample;
- ``approximate``: LRP runs, relevance is not conserved; ``leaks`` names the layers that lose (or gain) most,
  and what no layer accounts for (e.g. a learned input token such as ViT's class token, which takes relevance
  like an input pixel but is not one);
- ``refused``: relmon's support check refuses the model (``reason`` is its message).
"""

from __future__ import annotations

from collections import defaultdict
from dataclasses import dataclass, field

import torch
from torch import nn

from relmon.explain import lrp as _lrp
from relmon.explain._state import evaluation_state, gradients_enabled
from relmon.explain._zennit import zennit_module
from relmon.explain.core import parse_method

VERDICTS = ("exact", "approximate", "refused")


@dataclass
class SupportReport:
    """The outcome of :func:`lrp_support` (relative figures are shares of the explained logit)."""

    verdict: str
    method: str
    conservation: float | None = None  # worst |1 − ΣR/logit| over the samples
    leaks: list[tuple[str, float]] = field(default_factory=list)  # (layer kind, share lost), largest first
    unaccounted: float | None = None  # share lost outside every hooked layer
    reason: str = ""

    def summary(self) -> str:
        if self.verdict == "refused":
            return f"refused: {self.reason}"
        text = f"{self.verdict}: relevance conserved within {self.conservation:.1e} of the logit (zero bias)"
        if self.verdict == "approximate":
            parts = [f"{kind} {share:+.1e}" for kind, share in self.leaks[:3]]
            if self.unaccounted is not None and abs(self.unaccounted) > 1e-3:
                parts.append(f"outside the layers (e.g. a class token) {self.unaccounted:+.1e}")
            text += "; lost at: " + ", ".join(parts) if parts else ""
        return text


def _record(model: nn.Module, tallies: dict) -> list:
    """Wrap the backward of every zennit hook on ``model`` to add (relevance out − relevance in) per layer kind."""
    Hook = zennit_module("core").Hook
    wrapped = []
    for module in model.modules():
        for fn in list(module._forward_hooks.values()):
            hook = getattr(fn, "__self__", None)
            if not isinstance(hook, Hook) or "backward" in hook.__dict__:
                continue
            original, kind = hook.backward, type(module).__name__

            def backward(mod, grad_input, grad_output, _original=original, _kind=kind):
                result = _original(mod, grad_input, grad_output)
                r_in = result[0] if isinstance(result, tuple) else result
                if r_in is not None and grad_output[0] is not None:
                    lost = grad_output[0].flatten(1).sum(1) - r_in.flatten(1).sum(1)
                    tallies[_kind] = tallies[_kind] + lost.detach()
                return result

            hook.backward = backward
            wrapped.append(hook)
    return wrapped


def lrp_support(model: nn.Module, x: torch.Tensor, method: str = "lrp", tolerance: float = 1e-3,
                **options) -> SupportReport:
    """Explain ``x`` (a small batch in the model's input space) with ``method`` at zero bias and judge the
    model's LRP support from the measured conservation (see the module doc). ``options`` are LRP options
    (``attention``, ``canonizers``, ``low``/``high``...)."""
    family, composite_name = parse_method(method)
    if family != "lrp":
        raise ValueError(f"lrp_support judges LRP methods, not {method!r}")
    method = f"lrp:{composite_name}"
    try:
        _lrp.check_lrp_support(model, x, method, canonizers=options.get("canonizers"))
    except _lrp.UnsupportedModelError as err:
        return SupportReport("refused", method, reason=str(err).split(": ", 1)[-1].split(". zennit", 1)[0])
    tallies: dict = defaultdict(lambda: torch.zeros(x.shape[0], dtype=torch.float64))
    with gradients_enabled(), evaluation_state(model):
        xg = x.detach().clone().requires_grad_(True)
        composite, _ = _lrp.composite_for(composite_name, model, xg, zero_bias=True, **options)
        with composite.context(model) as modified:
            _record(modified, tallies)
            logits = modified(xg)
            target = logits.detach().argmax(1)
            seed = torch.zeros_like(logits).scatter_(1, target[:, None], 1.0) * logits.detach()
            relevance, = torch.autograd.grad(logits, xg, grad_outputs=seed)
    explained = logits.detach().gather(1, target[:, None]).squeeze(1).double()
    total = relevance.detach().flatten(1).sum(1).double()
    lost = 1.0 - total / explained
    worst = float(lost.abs().max())
    shares = {kind: (value.to(explained) / explained) for kind, value in tallies.items()}
    leaks = sorted(((k, float(v[v.abs().argmax()])) for k, v in shares.items()), key=lambda kv: -abs(kv[1]))
    leaks = [(k, v) for k, v in leaks if abs(v) > tolerance / 10]
    accounted = sum(shares.values()) if shares else torch.zeros_like(lost)
    unaccounted = float((lost - accounted)[(lost - accounted).abs().argmax()])
    verdict = "exact" if worst <= tolerance and torch.isfinite(relevance).all() else "approximate"
    return SupportReport(verdict, method, worst, leaks, unaccounted)


__all__ = ["VERDICTS", "SupportReport", "lrp_support"]
