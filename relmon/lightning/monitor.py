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
this module holds them in a :class:`~relmon.scoring.BatchScorer` and its sink, a
:class:`~relmon.scoring.WindowAccumulator` whose aggregates are torchmetrics states (summed across DDP
ranks) — the same accumulator, with plain sums, that the job's Lightning-free runner uses.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import pandas as pd
import pytorch_lightning as pl
import torch
from torch import nn
from torchmetrics.aggregation import SumMetric

from relmon.metrics import MeanCI
from relmon.scoring import (  # noqa: F401  (re-exported: relmon.lightning.monitor's public helpers)
    EARLY_FRACTION,
    BatchScorer,
    WindowAccumulator,
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


def metric_window(methods: Sequence[str]) -> WindowAccumulator:
    """A :class:`~relmon.scoring.WindowAccumulator` of torchmetrics states (summed across DDP ranks)."""
    return WindowAccumulator(methods, sums=MeanCI, counter=SumMetric)


class RelevanceMonitor(pl.LightningModule):
    """Score the heatmaps of ``model`` on unlabeled batches in ``Trainer.predict``.

    ``RelevanceMonitor(model, **settings)``: the settings (``methods``, ``region``, ``steps``,
    ``sample_rate``, ``max_samples``, ``seed``, ``keep_heatmaps``, ``random_fraction``, ...) are those of
    :class:`relmon.scoring.BatchScorer`, which validates them and does the selection and the scoring;
    they read back as attributes (``monitor.methods``). ``scorer=`` passes a ready scorer instead.

    ``predict_step`` returns a records frame (:mod:`relmon.records`); :meth:`window_summary` the
    aggregates of everything predicted since the last ``Trainer.predict`` started (also kept in
    :attr:`last_summary` at the end of each predict epoch, while the process group is still up).
    """

    def __init__(self, model: nn.Module, scorer: BatchScorer | None = None, **settings: Any):
        super().__init__()
        if scorer is not None and settings:
            raise ValueError(f"give scorer= or scoring settings, not both (got {sorted(settings)})")
        self.model = model
        self.scorer = scorer if scorer is not None else BatchScorer(model, **settings)  # a plain object
        self.window = metric_window(self.scorer.methods)
        self.window_metrics = nn.ModuleList(self.window.aggregates())  # moved with the module
        self.last_summary: dict[str, Any] | None = None

    def __getattr__(self, name: str) -> Any:
        if name in BatchScorer.SETTINGS and "scorer" in self.__dict__:
            return getattr(self.__dict__["scorer"], name)
        return super().__getattr__(name)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.model(x)

    def reset_window(self) -> None:
        """Forget the aggregates, the per-window counts and the loader positions."""
        self.window.reset()
        self.scorer.reset_window()

    def on_predict_epoch_start(self) -> None:
        self.reset_window()

    def on_predict_epoch_end(self) -> None:
        self.last_summary = self.window_summary()

    def predict_step(self, batch: dict[str, Any], batch_idx: int = 0, dataloader_idx: int = 0) -> pd.DataFrame:
        sampler = loader_sampler(self.trainer.predict_dataloaders, dataloader_idx) if self._trainer else None
        world = self.trainer.world_size if self._trainer is not None else 1
        return self.scorer.score_loader_batch(batch, self.window, device=self.device, dataloader_idx=dataloader_idx,
                                              sampler=sampler, world_size=world)

    def score_batch(
        self,
        x: torch.Tensor,
        sample_ids: Sequence[str],
        window_ids: Sequence[str],
        labels: torch.Tensor | None = None,
    ) -> pd.DataFrame:
        """Records of ``x`` (all of it, no selection) and the metric updates; usable outside a Trainer."""
        return self.scorer.score_batch(x, sample_ids, window_ids, self.window, labels)

    def window_summary(self) -> dict[str, dict[str, float]]:
        """:meth:`relmon.scoring.WindowAccumulator.summary` of the window (under DDP every rank must call
        it: the metrics sync collectively)."""
        return self.window.summary()


__all__ = ["EARLY_FRACTION", "MeanCI", "RelevanceMonitor", "early_steps", "metric_window", "padding_flags",
           "random_subset_hash", "selection_hash"]
