"""Leave the model as it was: train/eval mode per module and requires_grad per parameter."""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager

import torch
from torch import nn

from relmon.preprocessing import eval_mode


@contextmanager
def evaluation_state(model: nn.Module) -> Iterator[None]:
    """Eval mode and frozen parameters inside; every module's mode and parameter flag restored after.

    Parameters do not need gradients for heatmaps (only the input does), which saves the backward
    pass the weight gradients.
    """
    with eval_mode(model, freeze=True):
        yield


@contextmanager
def gradients_enabled() -> Iterator[None]:
    """Autograd on, also when the caller runs under ``torch.inference_mode()`` (Lightning's eval loops).

    Tensors made under inference mode cannot enter autograd, so callers clone their input inside
    this context (see ``explain``).
    """
    with torch.inference_mode(False), torch.enable_grad():
        yield
