"""torchmetrics Metrics over relmon's functional core (region perturbation, heatmap complexity).

Every state is a sum or a count reduced with ``dist_reduce_fx="sum"``, so the value after a DDP sync
(or :meth:`torchmetrics.Metric.merge_state`) equals the value of one metric fed all samples — never a
mean of per-rank means. Non-finite values (e.g. ``aopc_rel`` where ``f(x^(0)) <= 0``) are not added:
they are counted in ``nan_count`` and the mean is over the finite values only. A metric that has seen
no finite value computes NaN.

Sums are kept in float64 (long windows of float32 sums drift); devices without float64 (MPS) are not
supported.
"""

from __future__ import annotations

from collections.abc import Sequence

import torch
from torchmetrics import Metric

from relmon import complexity
from relmon.constants import AOPC_RELATIVE_BUCKETS
from relmon.perturbation import HeatmapEvaluation, PerturbationResult
from relmon.sums import add_finite, mean_ci


def _field(source, name: str) -> torch.Tensor:
    """Per-sample values from a tensor, a PerturbationResult or a HeatmapEvaluation."""
    if isinstance(source, torch.Tensor):
        return source
    if isinstance(source, (PerturbationResult, HeatmapEvaluation)):
        value = getattr(source, name, None)
        if value is None:
            raise ValueError(
                f"{type(source).__name__} has no {name!r} values; for aopc_random/aopc_lerf/abpc run "
                "evaluate_heatmaps with the needed orders"
            )
        return value
    raise TypeError(
        f"expected a tensor of per-sample values, a PerturbationResult or a HeatmapEvaluation, "
        f"got {type(source).__name__}"
    )


class _FiniteMean(Metric):
    """Mean of per-sample values over all updates; non-finite values are counted, not added."""

    is_differentiable = False
    full_state_update = False

    def __init__(self, **kwargs):
        super().__init__(**kwargs)
        self.add_state("total", torch.zeros((), dtype=torch.float64), dist_reduce_fx="sum")
        self.add_state("count", torch.zeros((), dtype=torch.int64), dist_reduce_fx="sum")
        self.add_state("nan_count", torch.zeros((), dtype=torch.int64), dist_reduce_fx="sum")

    def _add(self, values: torch.Tensor) -> None:
        add_finite(self, values)

    def compute(self) -> torch.Tensor:
        return self.total / self.count


class MeanCI(_FiniteMean):
    """Mean of per-sample values with a 95 % confidence interval, from sum / sum of squares / count.

    All states are summed across processes, so the value after a DDP sync equals that of one
    process fed all samples. Non-finite values are counted in ``nan_count`` and left out.
    ``compute()`` returns a dict: ``mean``, ``ci_low``, ``ci_high`` (Student's t, ``n - 1`` degrees of
    freedom; normal quantile without scipy), ``std`` (sample), ``n``, ``nan_count``
    (:func:`relmon.sums.mean_ci`; :class:`relmon.sums.FiniteSums` is the same on one process).
    """

    def __init__(self, confidence: float = 0.95, **kwargs):
        super().__init__(**kwargs)
        self.confidence = confidence
        self.add_state("total_sq", torch.zeros((), dtype=torch.float64), dist_reduce_fx="sum")

    def update(self, values) -> None:
        add_finite(self, values)

    def compute(self) -> dict[str, float]:
        return mean_ci(float(self.total), float(self.total_sq), int(self.count), int(self.nan_count),
                       self.confidence)


class AOPC(_FiniteMean):
    """Mean AOPC over samples.

    ``update(source)`` takes a :class:`~relmon.perturbation.PerturbationResult`, a
    :class:`~relmon.perturbation.HeatmapEvaluation` or a ``(B,)`` tensor. ``field`` picks the value:
    ``aopc`` (default), ``aopc_rel``, and for HeatmapEvaluation also ``aopc_random``, ``aopc_lerf``,
    ``aopc_minus_random``, ``abpc``.
    """

    higher_is_better = True

    def __init__(self, field: str = "aopc", **kwargs):
        super().__init__(**kwargs)
        self.field = field

    def update(self, source) -> None:
        self._add(_field(source, self.field))


class AOPCMinusRandom(_FiniteMean):
    """Mean over samples of ``AOPC_morf - AOPC_random`` (pairs with a non-finite member are counted apart).

    ``update(evaluation)`` with a HeatmapEvaluation holding both orders, or ``update(morf, random)``
    with two results / ``(B,)`` tensors of the same samples.
    """

    higher_is_better = True

    def update(self, morf, random=None) -> None:
        if random is None:
            if not isinstance(morf, HeatmapEvaluation):
                raise ValueError("update(morf, random): pass the random order's AOPC, or one HeatmapEvaluation")
            values = _field(morf, "aopc_minus_random")
        else:
            a, r = _field(morf, "aopc"), _field(random, "aopc")
            if a.shape != r.shape:
                raise ValueError(f"morf and random AOPC need the same shape, got {tuple(a.shape)} and {tuple(r.shape)}")
            values = a.to(r.device) - r
        self._add(values)


class HeatmapEntropy(_FiniteMean):
    """Mean Shannon entropy (bits) of heatmaps; ``update`` takes heatmaps or ``(B,)`` precomputed values."""

    higher_is_better = False

    def update(self, heatmap: torch.Tensor) -> None:
        self._add(heatmap if heatmap.dim() == 1 else complexity.entropy_bits(heatmap))


class HeatmapGini(_FiniteMean):
    """Mean Gini sparseness of heatmaps; ``update`` takes heatmaps or ``(B,)`` precomputed values."""

    higher_is_better = True

    def update(self, heatmap: torch.Tensor) -> None:
        self._add(heatmap if heatmap.dim() == 1 else complexity.gini(heatmap))


class CompressedSize(_FiniteMean):
    """Mean compressed size in bytes (``format="png"`` or ``"jpeg"``) of heatmaps rendered to 8 bits.

    ``update`` takes heatmaps or ``(B,)`` precomputed sizes.
    """

    higher_is_better = False

    def __init__(self, format: str = "png", jpeg_quality: int = complexity.JPEG_QUALITY, **kwargs):
        super().__init__(**kwargs)
        if format not in ("png", "jpeg"):
            raise ValueError(f"unknown format {format!r}; known: png, jpeg")
        self.format = format
        self.jpeg_quality = jpeg_quality

    def update(self, heatmap: torch.Tensor) -> None:
        if heatmap.dim() == 1:
            self._add(heatmap)
        elif self.format == "png":
            self._add(complexity.png_bytes(heatmap))
        else:
            self._add(complexity.jpeg_bytes(heatmap, self.jpeg_quality))


class MeanCurve(Metric):
    """Mean perturbation curve ``(L+1,)`` over samples: ``f(x^(k))``, or the drop ``f(x^(0)) - f(x^(k))``.

    ``num_steps`` is ``L`` (fixes the state's shape). Rows with any non-finite value are counted in
    ``nan_count`` and left out.
    """

    is_differentiable = False
    full_state_update = False

    def __init__(self, num_steps: int, drop: bool = False, **kwargs):
        super().__init__(**kwargs)
        if not isinstance(num_steps, int) or num_steps < 1:
            raise ValueError(f"num_steps must be an int >= 1 (L), got {num_steps!r}")
        self.num_steps = num_steps
        self.drop = drop
        self.add_state("curve_sum", torch.zeros(num_steps + 1, dtype=torch.float64), dist_reduce_fx="sum")
        self.add_state("count", torch.zeros((), dtype=torch.int64), dist_reduce_fx="sum")
        self.add_state("nan_count", torch.zeros((), dtype=torch.int64), dist_reduce_fx="sum")

    def update(self, source) -> None:
        if isinstance(source, PerturbationResult):
            curves = source.drops if self.drop else source.curves
        elif isinstance(source, torch.Tensor):
            curves = source[:, :1] - source if self.drop else source
        else:
            raise TypeError(f"expected a PerturbationResult or a (B, L+1) tensor, got {type(source).__name__}")
        if curves.dim() != 2 or curves.shape[1] != self.num_steps + 1:
            raise ValueError(
                f"curves must be (B, {self.num_steps + 1}) for num_steps={self.num_steps}, got {tuple(curves.shape)}"
            )
        curves = curves.detach().to(device=self.curve_sum.device, dtype=torch.float64)
        finite = torch.isfinite(curves).all(dim=1)
        self.curve_sum += torch.where(finite[:, None], curves, torch.zeros_like(curves)).sum(dim=0)
        self.count += finite.sum()
        self.nan_count += (~finite).sum()

    def compute(self) -> torch.Tensor:
        return self.curve_sum / self.count


class AOPCHistogram(Metric):
    """Histogram of per-sample values (default ``aopc_rel``) over fixed buckets, Prometheus-style.

    ``buckets`` are upper bounds (a value ``v`` falls in the first bucket with ``v <= bound``; values
    above the last bound in the implicit ``+Inf`` bucket). ``compute()`` returns a dict with
    ``buckets`` (the bounds), ``counts`` (per bucket, ``len(buckets) + 1`` with ``+Inf`` last),
    ``cumulative`` (the Prometheus ``_bucket`` counts), ``sum``, ``count`` and ``nan_count``.
    """

    is_differentiable = False
    full_state_update = False

    def __init__(self, buckets: Sequence[float] = AOPC_RELATIVE_BUCKETS, field: str = "aopc_rel", **kwargs):
        super().__init__(**kwargs)
        bounds = [float(b) for b in buckets]
        if not bounds or any(b >= c for b, c in zip(bounds[:-1], bounds[1:], strict=True)):
            raise ValueError(f"buckets must be a non-empty, strictly increasing sequence, got {list(buckets)}")
        self.buckets = tuple(bounds)
        self.field = field
        self.add_state("bucket_counts", torch.zeros(len(bounds) + 1, dtype=torch.int64), dist_reduce_fx="sum")
        self.add_state("total", torch.zeros((), dtype=torch.float64), dist_reduce_fx="sum")
        self.add_state("count", torch.zeros((), dtype=torch.int64), dist_reduce_fx="sum")
        self.add_state("nan_count", torch.zeros((), dtype=torch.int64), dist_reduce_fx="sum")

    def update(self, source) -> None:
        values = _field(source, self.field).detach().to(device=self.total.device, dtype=torch.float64).flatten()
        finite = torch.isfinite(values)
        bounds = torch.tensor(self.buckets, dtype=torch.float64, device=values.device)
        # right=False: index i with bounds[i-1] < v <= bounds[i], i.e. Prometheus' "le".
        index = torch.bucketize(torch.where(finite, values, torch.zeros_like(values)), bounds)
        self.bucket_counts += torch.bincount(index[finite], minlength=len(self.buckets) + 1)
        add_finite(self, values)

    def compute(self) -> dict[str, torch.Tensor]:
        return {
            "buckets": torch.tensor(self.buckets, dtype=torch.float64),
            "counts": self.bucket_counts.clone(),
            "cumulative": torch.cumsum(self.bucket_counts, dim=0),
            "sum": self.total.clone(),
            "count": self.count.clone(),
            "nan_count": self.nan_count.clone(),
        }


__all__ = [
    "AOPC",
    "AOPC_RELATIVE_BUCKETS",
    "AOPCHistogram",
    "AOPCMinusRandom",
    "MeanCI",
    "CompressedSize",
    "HeatmapEntropy",
    "HeatmapGini",
    "MeanCurve",
]
