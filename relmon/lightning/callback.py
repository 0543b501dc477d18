"""HeatmapQualityCallback: heatmap quality (AOPC, AOPC − random, entropy) of a model while it trains.

During each validation epoch (every ``every_n_epochs``, never in the sanity check) the callback keeps
the first ``max_samples`` validation inputs in loader order; at the epoch end it explains them, runs
region perturbation (MoRF and the random order, same noise) and logs, per method,
``relmon/aopc/<method>``, ``relmon/aopc_minus_random/<method>``, ``relmon/entropy/<method>`` and
``relmon/n``.

DDP: the validation sampler pads every rank by repeating samples; the padded items (global positions
``>= N``, see :func:`~relmon.lightning.monitor.padding_flags`) are not collected, each rank keeps the
items of global position ``< max_samples`` (the same set one process would keep, for the unshuffled
validation loaders Lightning builds), the noise is seeded by that global position (or the batch's
``sample_id``), and the values come from torchmetrics states summed over ranks — so the logged means
equal the single-process ones. Every rank logs the same synced value.

Inference mode and model state: Lightning validates under ``torch.inference_mode()``; inputs are
copied outside it, ``explain`` re-enables autograd for its backward pass, and the model's
train/eval flags and ``requires_grad`` are restored (checked after every run).
"""

from __future__ import annotations

import warnings
from collections.abc import Sequence
from typing import Any

import pytorch_lightning as pl
import torch
from torch import nn
from torchmetrics.aggregation import SumMetric

from relmon.explain import canonical_method, explain_full, to_heatmap
from relmon.lightning.monitor import (
    batch_size_of,
    global_positions,
    keep_mask,
    loader_sampler,
    padding_flags,
)
from relmon.metrics import AOPC, AOPCMinusRandom, HeatmapEntropy
from relmon.models.preprocessing import ATTRIBUTE as _PREPROCESSING_ATTRIBUTE
from relmon.models.preprocessing import input_bounds
from relmon.perturbation import DEFAULT_MAX_BATCH_BYTES, evaluate_heatmaps


def _input_range(module: nn.Module) -> tuple[Any, Any]:
    """``(low, high)`` of the first (sub)module declaring its preprocessing, else ``(None, None)``."""
    for sub in module.modules():
        prep = getattr(sub, _PREPROCESSING_ATTRIBUTE, None)
        if prep is not None:
            return input_bounds(sub, 1 if len(prep.mean) == 1 else len(prep.mean))
    return None, None


class HeatmapQualityCallback(pl.Callback):
    """Log heatmap quality of ``pl_module`` (or ``getattr(pl_module, model_attr)``) on validation data.

    Parameters
    ----------
    methods:
        Heatmap methods (bare ``lrp`` = the default composite).
    every_n_epochs:
        Run after validation epochs ``n - 1, 2n - 1, ...`` (every epoch for 1).
    max_samples:
        Inputs scored per run: the first ``max_samples`` of the first validation loader.
    region, steps, perturbation, score, seed, max_batch_bytes:
        Region perturbation settings (see :func:`relmon.perturbation.region_perturbation`).
    model_attr:
        Name of the attribute of the LightningModule holding the classifier to explain; ``None``
        explains the LightningModule itself. The input range for the ``uniform`` perturbation comes
        from the first submodule that declares its preprocessing.
    prefix:
        Log key prefix.
    """

    def __init__(
        self,
        methods: Sequence[str] = ("lrp",),
        every_n_epochs: int = 1,
        max_samples: int = 64,
        region: int = 9,
        steps: int = 100,
        perturbation: str = "uniform",
        score: str = "logit",
        seed: int = 0,
        max_batch_bytes: int = DEFAULT_MAX_BATCH_BYTES,
        model_attr: str | None = None,
        prefix: str = "relmon",
    ):
        super().__init__()
        if isinstance(methods, str):
            methods = (methods,)
        self.methods = tuple(canonical_method(m) for m in methods)
        if not self.methods:
            raise ValueError("methods must name at least one heatmap method")
        if isinstance(every_n_epochs, bool) or not isinstance(every_n_epochs, int) or every_n_epochs < 1:
            raise ValueError(f"every_n_epochs must be a positive int, got {every_n_epochs!r}")
        if isinstance(max_samples, bool) or not isinstance(max_samples, int) or max_samples < 1:
            raise ValueError(f"max_samples must be a positive int, got {max_samples!r}")
        self.every_n_epochs = every_n_epochs
        self.max_samples = max_samples
        self.opts = dict(region=region, steps=steps, perturbation=perturbation, score=score, seed=seed,
                         max_batch_bytes=max_batch_bytes)
        self.model_attr = model_attr
        self.prefix = prefix
        self._aopc = {m: AOPC() for m in self.methods}
        self._minus_random = {m: AOPCMinusRandom() for m in self.methods}
        self._entropy = {m: HeatmapEntropy() for m in self.methods}
        self._count = SumMetric()  # scored samples, summed over ranks
        self._active = False
        self._xs: list[torch.Tensor] = []
        self._ids: list = []
        self._position = 0
        self.last_values: dict[str, float] = {}

    # -- collection --------------------------------------------------------------------------------

    def _runs_now(self, trainer: pl.Trainer) -> bool:
        return not trainer.sanity_checking and (trainer.current_epoch + 1) % self.every_n_epochs == 0

    def on_validation_epoch_start(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        self._active = self._runs_now(trainer)
        self._xs, self._ids, self._position = [], [], 0

    def on_validation_batch_end(
        self,
        trainer: pl.Trainer,
        pl_module: pl.LightningModule,
        outputs: Any,
        batch: Any,
        batch_idx: int,
        dataloader_idx: int = 0,
    ) -> None:
        if not self._active or dataloader_idx != 0:
            return
        x, n_good, n_bad = batch_size_of(batch)
        position = self._position
        self._position += n_good + n_bad
        if x is None or n_good == 0:
            return
        sampler = loader_sampler(trainer.val_dataloaders, dataloader_idx)
        keep = keep_mask(padding_flags(sampler, position, n_good + n_bad), n_good)
        glob = global_positions(sampler, position, n_good)
        ids = batch.get("sample_id") if isinstance(batch, dict) else None
        chosen = [i for i in range(n_good) if keep[i] and glob[i] < self.max_samples]
        if not chosen:
            return
        # Copies made outside inference mode are normal tensors that autograd accepts.
        with torch.inference_mode(False):
            index = torch.tensor(chosen, dtype=torch.long, device=x.device)
            self._xs.append(x.detach().index_select(0, index).clone())
        self._ids.extend(str(ids[i]) if ids else glob[i] for i in chosen)

    # -- scoring -----------------------------------------------------------------------------------

    def _model(self, pl_module: pl.LightningModule) -> nn.Module:
        return pl_module if self.model_attr is None else getattr(pl_module, self.model_attr)

    def _metrics(self) -> list:
        return [*self._aopc.values(), *self._minus_random.values(), *self._entropy.values(), self._count]

    def on_validation_epoch_end(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        if not self._active:
            return
        self._active = False
        model = self._model(pl_module)
        device = pl_module.device
        with torch.inference_mode(False):
            for metric in self._metrics():
                metric.to(device)
                metric.reset()
        modes = [(m, m.training) for m in model.modules()]
        grads = [(p, p.requires_grad) for p in model.parameters()]
        try:
            if self._xs:
                self._score(model, torch.cat(self._xs).to(device))
        finally:
            self._xs, self._ids = [], []
            for module, training in modes:
                module.training = training
            for param, flag in grads:
                param.requires_grad_(flag)
        self._log(pl_module)

    def _score(self, model: nn.Module, x: torch.Tensor) -> None:
        low, high = _input_range(model) if self.opts["perturbation"] == "uniform" else (None, None)
        kwargs = dict(self.opts, sample_ids=list(self._ids), low=low, high=high)
        target = None
        for method in self.methods:
            expl = explain_full(model, x, method, target=target)
            target = expl.target if target is None else target
            heat = to_heatmap(expl.relevance, expl.method)
            ev = evaluate_heatmaps(model, x, heat, orders=("morf", "random"), target=target, **kwargs)
            with torch.inference_mode(False):
                self._aopc[method].update(ev.aopc)
                self._minus_random[method].update(ev)
                self._entropy[method].update(heat)
        with torch.inference_mode(False):
            self._count.update(float(x.shape[0]))

    def _log(self, pl_module: pl.LightningModule) -> None:
        # compute() sums the states over ranks (a collective: every rank gets here, with or without data).
        values: dict[str, float] = {}
        with warnings.catch_warnings(), torch.inference_mode(False):
            warnings.filterwarnings("ignore", message=".*compute.*before.*update.*")
            for method in self.methods:
                values[f"{self.prefix}/aopc/{method}"] = float(self._aopc[method].compute())
                values[f"{self.prefix}/aopc_minus_random/{method}"] = float(self._minus_random[method].compute())
                values[f"{self.prefix}/entropy/{method}"] = float(self._entropy[method].compute())
            n = int(self._count.compute())
        values[f"{self.prefix}/n"] = float(n)
        self.last_values = values
        if n == 0:
            return
        for key, value in values.items():
            pl_module.log(key, value, on_step=False, on_epoch=True, sync_dist=False)


__all__ = ["HeatmapQualityCallback"]
