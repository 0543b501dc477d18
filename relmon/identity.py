"""A model's identity: the ``model`` / ``model_version`` labels of records and metrics.

Core (imports torch only): the scorer labels its records with :func:`model_info` without loading
:mod:`relmon.models.loading`, which sets the labels of the models it loads.
"""

from __future__ import annotations

import hashlib
from dataclasses import dataclass

import torch
from torch import nn

_INFO = "relmon_info"


@dataclass(frozen=True)
class ModelInfo:
    """Identity of a loaded model, used for record columns and metric labels."""

    name: str
    version: str
    test_accuracy: float | None = None


def model_info(model: nn.Module) -> ModelInfo:
    """The model's name and version: as loaded by relmon, else its class name and a hash of its weights."""
    return getattr(model, _INFO, None) or ModelInfo(name=type(model).__name__, version=weights_hash(model))


def weights_hash(model: nn.Module) -> str:
    """A 12-hex-digit SHA-256 of the model's state_dict (names, dtypes, shapes and values)."""
    h = hashlib.sha256()
    for key, value in model.state_dict().items():
        h.update(key.encode())
        if isinstance(value, torch.Tensor):
            t = value.detach().cpu().contiguous()
            h.update(f"{t.dtype}{tuple(t.shape)}".encode())
            h.update(t.reshape(-1).view(torch.uint8).numpy().tobytes() if t.numel() else b"")  # 0-dim too
        else:
            h.update(repr(value).encode())
    return h.hexdigest()[:12]


def set_model_info(model: nn.Module, name: str | None = None, version: str | None = None) -> nn.Module:
    """Set the ``model`` / ``model_version`` labels of ``model`` (None keeps the current one)."""
    info = model_info(model)
    return attach_info(model, ModelInfo(name or info.name, version or info.version, info.test_accuracy))


def attach_info(model: nn.Module, info: ModelInfo) -> nn.Module:
    """Set ``info`` as the model's identity (returns the model)."""
    object.__setattr__(model, _INFO, info)
    return model


__all__ = ["ModelInfo", "attach_info", "model_info", "set_model_info", "weights_hash"]
