"""Input checks and target handling shared by every heatmap method."""

from __future__ import annotations

import torch
from torch import nn


def first_layer_channels(model: nn.Module) -> int | None:
    """Input channels the model's first layer expects, if it is a convolution (first in execution order
    where torch.fx can trace the model, else in registration order)."""
    from relmon.explain.lrp import first_layer

    name = first_layer(model)
    module = None if name is None else model.get_submodule(name)
    if isinstance(module, (nn.Conv1d, nn.Conv2d, nn.Conv3d)):
        return module.in_channels
    return None


def check_input(model: nn.Module, x) -> None:
    """Raise a ValueError/TypeError naming the problem and the fix for an unusable batch."""
    if not isinstance(x, torch.Tensor):
        raise TypeError(f"x must be a torch.Tensor of shape (B, C, H, W), got {type(x).__name__}")
    if x.dim() != 4:
        hint = " Add the batch dimension with x.unsqueeze(0)." if x.dim() == 3 else ""
        raise ValueError(f"x must have 4 dimensions (B, C, H, W), got {x.dim()} with shape {tuple(x.shape)}.{hint}")
    if not x.is_floating_point():
        raise TypeError(
            f"x must be a floating-point tensor in the model's input space, got dtype {x.dtype}. "
            "Convert and normalise it first, e.g. relmon.data.to_tensor(images) for uint8 images."
        )
    if x.shape[0] == 0:
        raise ValueError("x is an empty batch (B = 0)")
    channels = first_layer_channels(model)
    if channels is not None and x.shape[1] != channels:
        raise ValueError(
            f"x has {x.shape[1]} channels but the model's first convolution expects {channels} "
            f"(x has shape {tuple(x.shape)}; expected (B, {channels}, H, W))"
        )
    finite = torch.isfinite(x).flatten(1).all(1)
    if not bool(finite.all()):
        bad = (~finite).nonzero().flatten().tolist()
        raise ValueError(f"x holds NaN or Inf values in samples {bad[:10]}{' ...' if len(bad) > 10 else ''}; "
                         "drop or repair those samples before explaining")


def resolve_target(target, logits: torch.Tensor) -> torch.Tensor:
    """Class indices ``(B,)``: the predicted class for ``None``, else the given int or indices."""
    batch, num_classes = logits.shape[0], logits.shape[1]
    if target is None:
        return logits.argmax(1)
    if isinstance(target, bool):
        raise TypeError("target must be None, an int or a tensor of class indices, got a bool")
    if isinstance(target, int):
        idx = torch.full((batch,), target, dtype=torch.long, device=logits.device)
    else:
        idx = torch.as_tensor(target, device=logits.device)
        if idx.is_floating_point() or idx.dtype == torch.bool:
            raise TypeError(f"target must hold integer class indices, got dtype {idx.dtype}")
        idx = idx.long().flatten() if idx.dim() == 0 else idx.long()
        if idx.dim() == 1 and idx.numel() == 1 and batch > 1:
            idx = idx.expand(batch)
        if idx.shape != (batch,):
            raise ValueError(f"target must be an int or have shape ({batch},), got shape {tuple(idx.shape)}")
    if bool(((idx < 0) | (idx >= num_classes)).any()):
        raise ValueError(f"target holds class indices outside [0, {num_classes - 1}]: {idx.tolist()[:10]}")
    return idx
