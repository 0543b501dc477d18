"""The input space a model consumes: normalisation and the valid range of every channel.

relmon never guesses the input space of a model. The uniform perturbation of AOPC draws values
from the valid range, and ``lrp:epsilon_gamma_box`` needs the same bounds for its first layer, so
every model relmon loads carries a :class:`Preprocessing` (attribute ``relmon_preprocessing``).

Also :func:`eval_mode`, the one save/restore of a model's train/eval flags (and ``requires_grad``) that
every scoring path uses. This module is core: it imports torch only (``relmon.models`` and
``relmon.data`` build on it, never the other way round).
"""

from __future__ import annotations

from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass, field

import torch

ATTRIBUTE = "relmon_preprocessing"


class MissingPreprocessingError(ValueError):
    """Raised when an operation needs the input space of a model that does not declare it."""


def _as_tuple(value: float | Sequence[float], name: str) -> tuple[float, ...]:
    if isinstance(value, (int, float)):
        return (float(value),)
    out = tuple(float(v) for v in value)
    if not out:
        raise ValueError(f"{name} must hold at least one value per channel, got an empty sequence")
    return out


@dataclass(frozen=True)
class Preprocessing:
    """Per-channel normalisation ``(x - mean) / std`` applied to raw images in ``[low, high]``.

    Parameters
    ----------
    mean, std:
        One value, or one value per channel, in raw pixel units.
    low, high:
        Valid range of raw pixels (``0`` and ``1`` for images scaled to ``[0, 1]``).

    ``bounds(channels)`` gives the valid range in the space the model consumes, i.e. the image of
    ``[low, high]`` under the normalisation.
    """

    mean: tuple[float, ...] = (0.0,)
    std: tuple[float, ...] = (1.0,)
    low: float = 0.0
    high: float = 1.0
    extra: dict = field(default_factory=dict, compare=False)

    def __post_init__(self):
        object.__setattr__(self, "mean", _as_tuple(self.mean, "mean"))
        object.__setattr__(self, "std", _as_tuple(self.std, "std"))
        if any(s <= 0 for s in self.std):
            raise ValueError(f"std must be positive per channel, got {self.std}")
        if not self.low < self.high:
            raise ValueError(f"low must be below high, got low={self.low}, high={self.high}")
        if len(self.mean) != len(self.std) and 1 not in (len(self.mean), len(self.std)):
            raise ValueError(
                f"mean and std need the same number of channels, got {len(self.mean)} and {len(self.std)}"
            )

    def _per_channel(self, values: tuple[float, ...], channels: int, name: str) -> torch.Tensor:
        if len(values) == 1:
            values = values * channels
        if len(values) != channels:
            raise ValueError(
                f"preprocessing {name} has {len(values)} channels but the input has {channels}; "
                f"declare one {name} per input channel"
            )
        return torch.tensor(values, dtype=torch.float32)

    def normalize(self, x: torch.Tensor) -> torch.Tensor:
        """Map raw images ``(B, C, H, W)`` in ``[low, high]`` to the model's input space."""
        c = x.shape[1]
        mean = self._per_channel(self.mean, c, "mean").to(x.device, x.dtype).view(1, c, 1, 1)
        std = self._per_channel(self.std, c, "std").to(x.device, x.dtype).view(1, c, 1, 1)
        return (x - mean) / std

    def denormalize(self, x: torch.Tensor) -> torch.Tensor:
        """The inverse of :meth:`normalize`: model inputs back to raw images (used by :mod:`relmon.location`)."""
        c = x.shape[1]
        mean = self._per_channel(self.mean, c, "mean").to(x.device, x.dtype).view(1, c, 1, 1)
        std = self._per_channel(self.std, c, "std").to(x.device, x.dtype).view(1, c, 1, 1)
        return x * std + mean

    def bounds(self, channels: int) -> tuple[torch.Tensor, torch.Tensor]:
        """Per-channel ``(low, high)`` of the model's input space, each of shape ``(channels,)``."""
        mean = self._per_channel(self.mean, channels, "mean")
        std = self._per_channel(self.std, channels, "std")
        return (self.low - mean) / std, (self.high - mean) / std

    def to_dict(self) -> dict:
        return {"mean": list(self.mean), "std": list(self.std), "low": self.low, "high": self.high}

    @classmethod
    def from_dict(cls, d: dict) -> Preprocessing:
        return cls(mean=d["mean"], std=d["std"], low=d.get("low", 0.0), high=d.get("high", 1.0))


def attach_preprocessing(model: torch.nn.Module, preprocessing: Preprocessing) -> torch.nn.Module:
    """Declare the input space of ``model`` (returns the same model, for chaining)."""
    if not isinstance(preprocessing, Preprocessing):
        raise TypeError(f"expected relmon.Preprocessing, got {type(preprocessing).__name__}")
    # object.__setattr__ keeps nn.Module from treating it as a submodule or buffer.
    object.__setattr__(model, ATTRIBUTE, preprocessing)
    return model


def get_preprocessing(model: torch.nn.Module, needed_for: str = "this operation") -> Preprocessing:
    """The model's :class:`Preprocessing`, or a clear error that says how to declare it."""
    prep = getattr(model, ATTRIBUTE, None)
    if prep is None:
        raise MissingPreprocessingError(
            f"{needed_for} needs the model's valid input range, but {type(model).__name__} declares none. "
            "Declare it with relmon.attach_preprocessing(model, relmon.Preprocessing(mean=..., std=..., "
            "low=0.0, high=1.0)) or pass low=/high= explicitly."
        )
    return prep


def input_bounds(
    model: torch.nn.Module | None,
    channels: int,
    low: float | torch.Tensor | None = None,
    high: float | torch.Tensor | None = None,
    needed_for: str = "this operation",
) -> tuple[torch.Tensor, torch.Tensor]:
    """Per-channel valid input range: explicit ``low``/``high`` win, else the model's declaration."""
    if low is not None and high is not None:
        lo = torch.as_tensor(low, dtype=torch.float32).flatten()
        hi = torch.as_tensor(high, dtype=torch.float32).flatten()
        lo = lo.expand(channels) if lo.numel() == 1 else lo
        hi = hi.expand(channels) if hi.numel() == 1 else hi
        if lo.numel() != channels or hi.numel() != channels:
            raise ValueError(f"low/high need 1 or {channels} values, got {lo.numel()} and {hi.numel()}")
        if bool((lo >= hi).any()):
            raise ValueError(f"low must be below high per channel, got low={lo.tolist()}, high={hi.tolist()}")
        return lo.clone(), hi.clone()
    if (low is None) != (high is None):
        raise ValueError("pass both low= and high=, or neither (then the model's preprocessing is used)")
    if model is None:
        raise MissingPreprocessingError(f"{needed_for} needs low= and high= (the valid input range)")
    return get_preprocessing(model, needed_for).bounds(channels)


@contextmanager
def eval_mode(model: torch.nn.Module, freeze: bool = False) -> Iterator[torch.nn.Module]:
    """Every submodule in eval mode inside (with ``freeze``, every parameter's ``requires_grad`` off too);
    each module's own train/eval flag and each parameter's ``requires_grad`` restored afterwards, also
    when the block raises."""
    modes = [(m, m.training) for m in model.modules()]
    flags = [(p, p.requires_grad) for p in model.parameters()]
    model.eval()
    if freeze:
        for p, _ in flags:
            p.requires_grad_(False)
    try:
        yield model
    finally:
        for p, flag in flags:
            if p.requires_grad != flag:
                p.requires_grad_(flag)
        for m, mode in modes:
            m.training = mode


__all__ = ["ATTRIBUTE", "MissingPreprocessingError", "Preprocessing", "attach_preprocessing", "eval_mode",
           "get_preprocessing", "input_bounds"]
