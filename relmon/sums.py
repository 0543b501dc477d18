"""Sums of finite values and the mean with its confidence interval: the one kernel every aggregate uses.

A window aggregate is a float64 sum, sum of squares and count of the finite values fed to it, with the
non-finite ones counted apart (:func:`add_finite`). The plain :class:`FiniteSums` (one process) and the
torchmetrics Metrics of :mod:`relmon.metrics` (summed across DDP ranks) hold the same states and call the
same kernel, so a window's numbers are the same whichever holds them. torch only (scipy optional).
"""

from __future__ import annotations

import math

import torch

# Two-sided 95 % quantile of the normal distribution (the CI uses Student's t where scipy exists).
_Z95 = 1.959963984540054


def add_finite(state, values) -> None:
    """Add the finite ``values`` to ``state.total`` (and ``state.total_sq`` where the state has one),
    count them in ``state.count`` and the others in ``state.nan_count`` (all float64/int64 tensors)."""
    values = torch.as_tensor(values).detach().to(device=state.total.device, dtype=torch.float64).flatten()
    finite = torch.isfinite(values)
    v = torch.where(finite, values, torch.zeros_like(values))
    state.total += v.sum()
    if hasattr(state, "total_sq"):
        state.total_sq += (v * v).sum()
    state.count += finite.sum()
    state.nan_count += (~finite).sum()


def t_quantile(confidence: float, dof: int) -> float:
    """Two-sided Student's t quantile for ``confidence``: ``scipy.stats.t.ppf(0.5 + confidence / 2, dof)``,
    computed by ``scipy.special.stdtrit`` (the same function; imported here, it costs the job ~9 MiB
    where ``scipy.stats`` costs ~57 MiB); the normal quantile without scipy."""
    try:
        from scipy.special import stdtrit
    except ImportError:  # pragma: no cover
        return _Z95
    return float(stdtrit(dof, 0.5 + confidence / 2.0))


def mean_ci(total: float, total_sq: float, n: int, nan_count: int = 0, confidence: float = 0.95) -> dict[str, float]:
    """Mean, sample std and the ``confidence`` CI of the mean (Student's t, ``n - 1`` dof) from sums.

    Returns ``mean``, ``ci_low``, ``ci_high``, ``std``, ``n``, ``nan_count`` (NaN where undefined).
    """
    n = int(n)
    mean = total / n if n else math.nan
    if n > 1:
        var = max(0.0, (total_sq - n * mean * mean) / (n - 1))
        std = math.sqrt(var)
        half = t_quantile(confidence, n - 1) * std / math.sqrt(n)
    else:
        std = half = math.nan
    return {"mean": mean, "ci_low": mean - half, "ci_high": mean + half, "std": std, "n": n,
            "nan_count": int(nan_count)}


class FiniteSums:
    """float64 sum / sum of squares / count of the finite values fed to :meth:`update` (NaN/inf counted
    apart, :func:`add_finite`); :meth:`compute` is :func:`mean_ci`, as :class:`relmon.metrics.MeanCI`'s."""

    def __init__(self, confidence: float = 0.95) -> None:
        self.confidence = confidence
        self.reset()

    def reset(self) -> None:
        self.total = torch.zeros((), dtype=torch.float64)
        self.total_sq = torch.zeros((), dtype=torch.float64)
        self.count = torch.zeros((), dtype=torch.int64)
        self.nan_count = torch.zeros((), dtype=torch.int64)

    def update(self, values) -> None:
        add_finite(self, values)

    def mean(self) -> float:
        return float(self.total / self.count)  # NaN without a finite value, as torchmetrics' 0/0

    def compute(self) -> dict[str, float]:
        return mean_ci(float(self.total), float(self.total_sq), int(self.count), int(self.nan_count),
                       self.confidence)

    def mean_ci(self, confidence: float | None = None) -> dict[str, float]:
        return mean_ci(float(self.total), float(self.total_sq), int(self.count), int(self.nan_count),
                       self.confidence if confidence is None else confidence)


class Count:
    """A plain counter with the interface of :class:`torchmetrics.aggregation.SumMetric` (``update``,
    ``compute``, ``reset``): the input counts of a one-process window."""

    def __init__(self) -> None:
        self.value = 0.0

    def reset(self) -> None:
        self.value = 0.0

    def update(self, value) -> None:
        self.value += float(value)

    def compute(self) -> float:
        return self.value


__all__ = ["Count", "FiniteSums", "add_finite", "mean_ci", "t_quantile"]
