"""RelevanceMonitor: a LightningModule that scores the explanations of any classifier over a stream.

``Trainer.predict(RelevanceMonitor(model), datamodule=StreamDataModule(stream))`` yields, per batch,
a records frame (:mod:`relmon.records`, one row per (sample, method) plus one ``random`` row per
sample) and updates window aggregates held in torchmetrics Metrics (sum / sum of squares / count
states, reduced by sum), so :meth:`RelevanceMonitor.window_summary` is the same on one process and
under DDP.

Inference mode: Lightning runs ``predict_step`` under ``torch.inference_mode()``. ``explain`` leaves
it for the backward pass (it clones its input outside inference mode), the perturbation engine and
the complexity measures never need gradients, and metric states are (re)created outside inference
mode, so the default ``Trainer(inference_mode=True)`` works.

DDP and padding: for ``predict`` Lightning replaces the sampler by its ``UnrepeatedDistributedSampler``,
which never repeats a sample. When a loader carries a plain ``DistributedSampler`` (a user's own, or
the validation loop's), that sampler pads every rank to ``ceil(N / world)`` items by repeating the
first indices; the padded items are exactly the global positions ``>= N``, where the ``j``-th item
of rank ``r`` has global position ``r + j * world`` (whatever the shuffling). :func:`padding_flags`
computes this per batch, and padded items are neither recorded nor counted.

The selection and scoring themselves live in :mod:`relmon.scoring` (torch + pandas, no Lightning):
this module holds them in a :class:`~relmon.scoring.BatchScorer` and keeps the window aggregates in
torchmetrics states for DDP.
"""

from __future__ import annotations

import warnings
from collections.abc import Sequence
from typing import Any

import pandas as pd
import pytorch_lightning as pl
import torch
from torch import nn
from torchmetrics import Metric
from torchmetrics.aggregation import SumMetric

from relmon.metrics import AOPCMinusRandom, HeatmapEntropy
from relmon.perturbation import DEFAULT_MAX_BATCH_BYTES, DEFAULT_STEPS
from relmon.records import RANDOM_METHOD
from relmon.scoring import (  # noqa: F401  (re-exported: relmon.lightning.monitor's public helpers)
    EARLY_FRACTION,
    BatchScorer,
    batch_size_of,
    early_aopc,
    early_steps,
    global_positions,
    keep_mask,
    loader_sampler,
    mean_ci,
    padding_flags,
    random_subset_hash,
    selection_hash,
    summary_entry,
)

# --------------------------------------------------------------------------------------------------
# metrics


class MeanCI(Metric):
    """Mean of per-sample values with a 95 % confidence interval, from sum / sum of squares / count.

    All states are summed across processes, so the value after a DDP sync equals that of one
    process fed all samples. Non-finite values are counted in ``nan_count`` and left out.
    ``compute()`` returns a dict: ``mean``, ``ci_low``, ``ci_high`` (Student's t, ``n - 1`` degrees of
    freedom; normal quantile without scipy), ``std`` (sample), ``n``, ``nan_count``
    (:func:`relmon.scoring.mean_ci`).
    """

    is_differentiable = False
    full_state_update = False

    def __init__(self, confidence: float = 0.95, **kwargs):
        super().__init__(**kwargs)
        self.confidence = confidence
        self.add_state("total", torch.zeros((), dtype=torch.float64), dist_reduce_fx="sum")
        self.add_state("total_sq", torch.zeros((), dtype=torch.float64), dist_reduce_fx="sum")
        self.add_state("count", torch.zeros((), dtype=torch.int64), dist_reduce_fx="sum")
        self.add_state("nan_count", torch.zeros((), dtype=torch.int64), dist_reduce_fx="sum")

    def update(self, values: torch.Tensor) -> None:
        values = torch.as_tensor(values).detach().to(device=self.total.device, dtype=torch.float64).flatten()
        finite = torch.isfinite(values)
        v = torch.where(finite, values, torch.zeros_like(values))
        self.total += v.sum()
        self.total_sq += (v * v).sum()
        self.count += finite.sum()
        self.nan_count += (~finite).sum()

    def compute(self) -> dict[str, float]:
        return mean_ci(float(self.total), float(self.total_sq), int(self.count), int(self.nan_count),
                       self.confidence)


def _metric_key(method: str) -> str:
    # ModuleDict keys cannot hold "."; method ids may (e.g. lrp:epsilon_0.01 spelled by a user).
    return method.replace(".", "_")


class _MetricSink:
    """The :class:`~relmon.scoring.BatchScorer` sink that feeds a RelevanceMonitor's torchmetrics states."""

    def __init__(self, monitor: RelevanceMonitor):
        self.m = monitor

    def add_inputs(self, seen: int | None = None, bad: int | None = None, padding_skipped: int | None = None) -> None:
        if bad is not None:
            self.m.bad_inputs.update(float(bad))
        if padding_skipped is not None:
            self.m.padding_skipped.update(float(padding_skipped))
        if seen is not None:
            self.m.seen_inputs.update(float(seen))

    def add_method(self, method: str, aopc, aopc_rel, entropy_bits=None) -> None:
        key = _metric_key(method)
        self.m.aopc_metrics[key].update(aopc)
        self.m.aopc_rel_metrics[key].update(aopc_rel)
        if entropy_bits is not None:
            self.m.entropy_metrics[key].update(entropy_bits)

    def add_minus_random(self, method: str, aopc, random_aopc) -> None:
        self.m.minus_random_metrics[_metric_key(method)].update(aopc, random_aopc)


_SETTINGS = ("methods", "region", "steps", "perturbation", "score", "sample_rate", "max_samples", "seed", "lerf",
             "keep_heatmaps", "max_batch_bytes", "explain_options", "step_stride", "random_fraction", "threads",
             "model_name", "model_version")


def _setting(name: str) -> property:
    return property(lambda self: getattr(self.scorer, name), lambda self, v: setattr(self.scorer, name, v),
                    doc=f"``{name}`` of the monitor's :class:`~relmon.scoring.BatchScorer`.")


# --------------------------------------------------------------------------------------------------
# the module


class RelevanceMonitor(pl.LightningModule):
    """Score the heatmaps of ``model`` on unlabeled batches in ``Trainer.predict``.

    Parameters
    ----------
    model:
        The classifier (with its declared input space, see :func:`relmon.attach_preprocessing`).
    methods:
        Heatmap methods (ids of :func:`relmon.available_methods`; bare ``lrp`` = default composite).
        ``random`` is not a method here: every selected sample gets a ``random`` row, the random
        region order's AOPC with the same target and noise image.
    region, steps, perturbation, score, step_stride, max_batch_bytes:
        Passed to :func:`relmon.perturbation.region_perturbation` (``step_stride`` ``s`` evaluates
        steps ``0, s, 2s, ..., L`` and interpolates the rest: about ``1/s`` of the forwards).
    sample_rate:
        A sample is monitored iff ``selection_hash(seed, sample_id) < sample_rate``: deterministic, the
        same on every rank and rerun.
    max_samples:
        Cap of monitored samples per window. On one process: the first ``max_samples`` selected
        samples of each window, in stream order. Under DDP each rank caps at
        ``ceil(max_samples / world_size)`` of its own share (an approximation: the total is at most
        ``max_samples`` but may be less when the ranks' shares of a window differ).
    seed:
        Seeds the selection and, per sample id, the perturbation noise and random order.
    lerf:
        Also run the LeRF order (fills ``aopc_lerf`` and ``abpc``).
    keep_heatmaps:
        Attach the heatmaps to each returned frame: ``frame.attrs["heatmaps"]`` = ``{method: (B, H, W)
        CPU tensor}`` in the order of ``frame.attrs["heatmap_ids"]`` (the batch's selected sample ids);
        :class:`~relmon.lightning.RecordWriter` saves them next to the records.
    explain_options:
        ``{method: {option: value}}`` passed to :func:`relmon.explain_full`.
    step_stride:
        See above; 1 (default) evaluates every step.
    random_fraction:
        Share of the monitored samples that also get the random-order baseline (a ``random`` row),
        chosen by :func:`random_subset_hash` (seeded, the same on every rank and rerun). 1.0 (default)
        runs it on every sample; below 1 the baseline costs that share of its forwards, and a
        window's ``aopc_minus_random`` is the mean of the paired differences over the subset, so its
        sampling error is that of the subset's size (measured in ``benchmarks/RESULTS.md``: the
        unpaired difference of the window's and the subset's means is 2.8x worse).
    threads:
        ``torch.set_num_threads(threads)`` while a batch is scored (restored afterwards); None leaves
        torch's setting alone.

    The clean scores ``f(x^(0))`` are taken from the first explanation pass's logits, so no order
    evaluates the clean input again.

    ``predict_step`` returns a records frame (:mod:`relmon.records`); :meth:`window_summary` the
    aggregates of everything predicted since the last ``Trainer.predict`` started (also kept in
    :attr:`last_summary` at the end of each predict epoch, while the process group is still up).
    """

    def __init__(
        self,
        model: nn.Module,
        methods: Sequence[str] = ("lrp",),
        region: int = 9,
        steps: int = DEFAULT_STEPS,
        perturbation: str = "uniform",
        score: str = "logit",
        sample_rate: float = 1.0,
        max_samples: int | None = None,
        seed: int = 0,
        lerf: bool = False,
        keep_heatmaps: bool = False,
        max_batch_bytes: int = DEFAULT_MAX_BATCH_BYTES,
        explain_options: dict[str, dict] | None = None,
        step_stride: int = 1,
        random_fraction: float = 1.0,
        threads: int | None = None,
    ):
        super().__init__()
        scorer = BatchScorer(
            model, methods=methods, region=region, steps=steps, perturbation=perturbation, score=score,
            sample_rate=sample_rate, max_samples=max_samples, seed=seed, lerf=lerf, keep_heatmaps=keep_heatmaps,
            max_batch_bytes=max_batch_bytes, explain_options=explain_options, step_stride=step_stride,
            random_fraction=random_fraction, threads=threads,
        )
        self.model = model
        self.scorer = scorer  # a plain object (not a submodule) holding the same model
        canon = scorer.methods
        every = (*canon, RANDOM_METHOD)
        self.aopc_metrics = nn.ModuleDict({_metric_key(m): MeanCI() for m in every})
        self.aopc_rel_metrics = nn.ModuleDict({_metric_key(m): MeanCI() for m in every})
        self.minus_random_metrics = nn.ModuleDict({_metric_key(m): AOPCMinusRandom() for m in canon})
        self.entropy_metrics = nn.ModuleDict({_metric_key(m): HeatmapEntropy() for m in canon})
        self.bad_inputs = SumMetric()
        self.seen_inputs = SumMetric()
        self.padding_skipped = SumMetric()
        self._sink = _MetricSink(self)
        self.last_summary: dict[str, Any] | None = None

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.model(x)

    # -- state -------------------------------------------------------------------------------------

    def _metrics(self) -> list[Metric]:
        out: list[Metric] = [self.bad_inputs, self.seen_inputs, self.padding_skipped]
        for group in (self.aopc_metrics, self.aopc_rel_metrics, self.minus_random_metrics, self.entropy_metrics):
            out.extend(group.values())
        return out

    def reset_window(self) -> None:
        """Forget the aggregates, the per-window counts and the loader positions."""
        # Outside inference mode: states recreated inside it would be inference tensors.
        with torch.inference_mode(False):
            for metric in self._metrics():
                metric.reset()
        self.scorer.reset_window()

    def on_predict_epoch_start(self) -> None:
        self.reset_window()

    def on_predict_epoch_end(self) -> None:
        self.last_summary = self.window_summary()

    # -- the step ----------------------------------------------------------------------------------

    def _cap(self) -> int | None:
        return self.scorer.cap(self.trainer.world_size if self._trainer is not None else 1)

    def predict_step(self, batch: dict[str, Any], batch_idx: int = 0, dataloader_idx: int = 0) -> pd.DataFrame:
        sampler = loader_sampler(self.trainer.predict_dataloaders, dataloader_idx) if self._trainer else None
        world = self.trainer.world_size if self._trainer is not None else 1
        return self.scorer.score_loader_batch(batch, self._sink, device=self.device, dataloader_idx=dataloader_idx,
                                              sampler=sampler, world_size=world)

    def score_batch(
        self,
        x: torch.Tensor,
        sample_ids: Sequence[str],
        window_ids: Sequence[str],
        labels: torch.Tensor | None = None,
    ) -> pd.DataFrame:
        """Records of ``x`` (all of it, no selection) and the metric updates; usable outside a Trainer."""
        return self.scorer.score_batch(x, sample_ids, window_ids, self._sink, labels)

    # -- aggregates --------------------------------------------------------------------------------

    def window_summary(self) -> dict[str, dict[str, float]]:
        """Per method: ``aopc`` (mean), ``aopc_ci_low``/``aopc_ci_high`` (95 % CI of the mean),
        ``aopc_rel``, ``aopc_minus_random``, ``entropy_bits`` (means), ``n``; the ``random`` entry holds the
        random order's AOPC. Plus ``"_inputs"``: ``seen`` (non-padding good inputs), ``bad``,
        ``padding_skipped``. Under DDP every rank must call it (the metrics sync collectively). The same
        dict as :meth:`relmon.scoring.WindowAccumulator.summary` on one process.
        """
        out: dict[str, dict[str, float]] = {}
        with warnings.catch_warnings(), torch.inference_mode(False):
            warnings.filterwarnings("ignore", message=".*compute.*before.*update.*")
            for method in (*self.methods, RANDOM_METHOD):
                key = _metric_key(method)
                stats = self.aopc_metrics[key].compute()
                rel = self.aopc_rel_metrics[key].compute()["mean"]
                if method == RANDOM_METHOD:
                    out[method] = summary_entry(stats, rel)
                else:
                    out[method] = summary_entry(stats, rel, float(self.minus_random_metrics[key].compute()),
                                                float(self.entropy_metrics[key].compute()))
            out["_inputs"] = {"seen": int(self.seen_inputs.compute()), "bad": int(self.bad_inputs.compute()),
                              "padding_skipped": int(self.padding_skipped.compute())}
        return out


for _name in _SETTINGS:  # the settings live in the scorer; the monitor's attributes read and set them there
    setattr(RelevanceMonitor, _name, _setting(_name))
del _name

__all__ = ["EARLY_FRACTION", "MeanCI", "RelevanceMonitor", "early_steps", "padding_flags", "random_subset_hash",
           "selection_hash"]
