"""HeatmapQualityCallback: heatmap quality (AOPC, AOPC − random, entropy) of a model while it trains.

Works on an ordinary LightningModule: the classifier it explains is found at ``setup()`` (before
training starts) — ``model_attr=`` if given, else the first ``nn.Module`` attribute among
``model``, ``net``, ``classifier``, else the LightningModule's own ``forward`` run over its layers
with its torchmetrics children and loss modules left out (they are not layers). LRP support and
the input range (``preprocessing=``, or the one the classifier or the LightningModule declares)
are checked there too, and region / steps against the validation images' size as soon as one
image is known (``example_input_array``, the validation dataset's first item at the start of
training, or the first validation batch) — all before the first training epoch.

During each validation epoch (every ``every_n_epochs``, never in the sanity check) the callback keeps
the first ``max_samples`` validation inputs in loader order; at the epoch end it scores them through
the same :class:`~relmon.scoring.BatchScorer` as the job and :class:`~relmon.lightning.RelevanceMonitor`
(each method's MoRF order, and the random order once per sample with the same noise) and logs, per method,
``relmon/aopc/<method>`` (score units: logits by default, so scale-dependent), ``relmon/aopc_rel/<method>``
(relative AOPC, scale-free), ``relmon/aopc_minus_random/<method>`` (the paired gap to the random order,
score units), ``relmon/aopc_rel_minus_random/<method>`` (the gap of the relative AOPCs, scale-free: the
method's mean ``aopc_rel`` minus the random order's over the same samples), ``relmon/entropy/<method>``
and ``relmon/n``, where ``<method>`` is the method id with every character outside ``[-/\\w.]``
replaced by ``_`` (``lrp:epsilon_plus_flat`` → ``lrp_epsilon_plus_flat``): TensorBoard writers
rewrite those characters themselves, so the same keys reach CSV and TensorBoard loggers.

With ``log_images=k`` the first ``k`` heatmaps of each method are also sent, as one image
``relmon/heatmaps/<method>``, to every logger with ``log_image`` (W&B, Neptune, MLflow) and to
TensorBoard (``add_image``); other loggers get none.

Cost per validated epoch, with ``m`` methods: ``m × max_samples`` explanations (one forward + one
backward each) plus ``(m + 1) × max_samples × (ceil(L / step_stride) + 1)`` forwards (each MoRF order
and the one random order, step 0 included), batched. The defaults — ``max_samples`` = 1 % of the validation set, between 8 and 64, a 7 × 7
region grid, L = 16 % of the regions = 8 (the paper's protocol), step stride 2 — are ``max_samples × 10`` forwards
whatever the image size, so the added time is a fixed share of a validation epoch;
``benchmarks/bench_lightning.py`` measures the ratio to a plain validation epoch
(``benchmarks/RESULTS.md``).

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

import math
import re
from collections.abc import Sequence
from typing import Any

import pytorch_lightning as pl
import torch
from torch import nn
from torchmetrics import Metric

from relmon.explain import canonical_method
from relmon.explain import lrp as _lrp
from relmon.explain._validate import first_layer_channels
from relmon.explain.core import parse_method
from relmon.lightning.images import heatmap_strip, send_image
from relmon.lightning.monitor import metric_window
from relmon.models.classifier import CLASSIFIER_ATTRIBUTES, find_classifier
from relmon.perturbation import (
    DEFAULT_FRACTION,
    DEFAULT_MAX_BATCH_BYTES,
    PERTURBATIONS,
    SCORES,
    resolve_steps,
)
from relmon.preprocessing import ATTRIBUTE as _PREPROCESSING_ATTRIBUTE
from relmon.preprocessing import MissingPreprocessingError, Preprocessing, eval_mode
from relmon.records import RANDOM_METHOD
from relmon.scoring import (
    BatchScorer,
    batch_size_of,
    global_positions,
    keep_mask,
    loader_sampler,
    padding_flags,
)

# DEFAULT_FRACTION (relmon.perturbation): the default share of the regions perturbed when ``steps`` is
# not given, L = steps_for_fraction(H, W, region, fraction); the paper's ~16 % (L = 8 of 49 regions).
#: Default region grid side: ``region = ceil(min(H, W) / GRID)`` when ``region`` is not given.
DEFAULT_GRID = 7
#: ``max_samples=None``: this share of the validation set, clipped to [AUTO_MIN_SAMPLES, AUTO_MAX_SAMPLES]
#: (FALLBACK_SAMPLES when the loader's size is unknown).
AUTO_SAMPLE_SHARE = 0.01
AUTO_MIN_SAMPLES, AUTO_MAX_SAMPLES, FALLBACK_SAMPLES = 8, 64, 32
_TAG_UNSAFE = re.compile(r"[^-/\w.]")


def log_key(*parts: str) -> str:
    """A log key whose characters survive every logger unchanged (TensorBoard rewrites others to ``_``)."""
    return "/".join(_TAG_UNSAFE.sub("_", p) for p in parts)


def _first_loader(trainer: pl.Trainer) -> Any:
    loaders = trainer.val_dataloaders
    if isinstance(loaders, (list, tuple)):
        loaders = loaders[0] if loaders else None
    elif isinstance(loaders, dict):
        loaders = next(iter(loaders.values()), None)
    return loaders


def _validation_size(trainer: pl.Trainer) -> int | None:
    """Items one validation epoch of the first loader sees (all ranks together), or None if unknown."""
    loader = _first_loader(trainer)
    try:
        n = len(loader.dataset)
    except Exception:  # iterable datasets
        return None
    try:
        batches = trainer.num_val_batches[0]
        if math.isfinite(batches) and loader.batch_size:
            n = min(n, int(batches) * int(loader.batch_size) * max(1, trainer.world_size))
    except Exception:  # no limit known
        pass
    return n


def _first_input(trainer: pl.Trainer) -> torch.Tensor | None:
    """The first item of the first validation dataset (without iterating a loader), or None."""
    dataset = getattr(_first_loader(trainer), "dataset", None)
    try:
        if dataset is None or len(dataset) == 0:
            return None
        item = dataset[0]
    except Exception:  # iterable datasets, lazy loaders, a bad first file: wait for the first batch
        return None
    if isinstance(item, dict):
        item = item.get("x")
    elif isinstance(item, (tuple, list)) and item:
        item = item[0]
    return item if isinstance(item, torch.Tensor) and item.dim() >= 2 else None


class HeatmapQualityCallback(pl.Callback):
    """Log heatmap quality of the LightningModule's classifier on validation data.

    Parameters
    ----------
    methods:
        Heatmap methods (bare ``lrp`` = the default composite). Default ``lrp:epsilon_0_01``: at the
        paper's protocol it was the LRP variant above sensitivity on both embedded models (README,
        "The paper's comparison").
    every_n_epochs:
        Run after validation epochs ``n - 1, 2n - 1, ...`` (every epoch for 1).
    max_samples:
        Inputs scored per run: the first ``max_samples`` of the first validation loader. ``None``
        (default): 1 % of the validation epoch's items, at least 8 and at most 64 (32 when the
        loader has no length), so the cost is a fixed share of the epoch; the number used is in
        :attr:`samples_used`. Few samples make a noisy mean: set it (e.g. 32) on small validation
        sets when a steadier signal is worth the time.
    region:
        Side of the square regions in pixels; default ``ceil(min(H, W) / 7)`` (a 7 × 7 grid, 4 px
        on 28 × 28 images). Larger than the images: a ``ValueError`` before training.
    steps, fraction:
        ``L``, the perturbation steps, given directly (``steps``) or as the share of the regions
        perturbed (``fraction`` in ``(0, 1]``, L from :func:`relmon.perturbation.steps_for_fraction`:
        ``round(fraction × regions)``, halves up, at least 1); give at most one; default ``fraction = 0.16``
        (the paper's ≈ 16 %). ``steps`` above the number of regions is a ``ValueError`` before training
        (:func:`relmon.perturbation.resolve_steps`, the rule of every runner).
    step_stride:
        Evaluate every ``step_stride``-th step and interpolate the rest (trapezoid rule, see
        :func:`relmon.perturbation.region_perturbation`); default 2. 1 is exact.
    perturbation, score, seed, max_batch_bytes:
        Region perturbation settings (see :func:`relmon.perturbation.region_perturbation`).
    model_attr:
        Name of the LightningModule attribute holding the classifier. ``None``: the first
        ``nn.Module`` among ``model``, ``net``, ``classifier``, else the LightningModule's ``forward``
        over its layers (torchmetrics children and loss modules excluded).
    preprocessing:
        The classifier's :class:`relmon.Preprocessing` (normalisation and valid input range), needed
        by the ``uniform`` perturbation and ``lrp:epsilon_gamma_box``. ``None``: the one declared by
        the classifier or the LightningModule (``relmon.attach_preprocessing``), or a
        ``Preprocessing`` held in the LightningModule's ``preprocessing`` attribute.
    prefix:
        Log key prefix.
    log_images:
        Heatmaps per method sent as one image to the loggers that take images (0, the default: none).

    Cost per validated epoch, one method: ``max_samples`` explanations plus
    ``max_samples × 2 × (ceil(L / step_stride) + 1)`` forwards (``max_samples × 10`` at the defaults).
    """

    def __init__(
        self,
        methods: Sequence[str] = ("lrp:epsilon_0_01",),
        every_n_epochs: int = 1,
        max_samples: int | None = None,
        region: int | None = None,
        steps: int | None = None,
        fraction: float | None = None,
        step_stride: int = 2,
        perturbation: str = "uniform",
        score: str = "logit",
        seed: int = 0,
        max_batch_bytes: int = DEFAULT_MAX_BATCH_BYTES,
        model_attr: str | None = None,
        preprocessing: Preprocessing | None = None,
        prefix: str = "relmon",
        log_images: int = 0,
    ):
        super().__init__()
        if isinstance(methods, str):
            methods = (methods,)
        self.methods = tuple(canonical_method(m) for m in methods)
        if not self.methods:
            raise ValueError("methods must name at least one heatmap method")

        def positive_int(value, name, allow_none=False):
            if value is None and allow_none:
                return
            if isinstance(value, bool) or not isinstance(value, int) or value < 1:
                raise ValueError(f"{name} must be a positive int{' or None' if allow_none else ''}, got {value!r}")

        positive_int(every_n_epochs, "every_n_epochs")
        positive_int(max_samples, "max_samples", allow_none=True)
        positive_int(region, "region", allow_none=True)
        positive_int(steps, "steps", allow_none=True)
        positive_int(step_stride, "step_stride")
        if isinstance(log_images, bool) or not isinstance(log_images, int) or log_images < 0:
            raise ValueError(f"log_images must be an int >= 0 (heatmaps per method sent to image loggers), "
                             f"got {log_images!r}")
        if steps is not None and fraction is not None:
            raise ValueError("give steps= or fraction= (share of the regions perturbed), not both")
        if fraction is not None and not (isinstance(fraction, (int, float)) and not isinstance(fraction, bool)
                                         and 0.0 < fraction <= 1.0):
            raise ValueError(f"fraction must be in (0, 1] (share of the regions perturbed), got {fraction!r}")
        if perturbation not in PERTURBATIONS:
            raise ValueError(f"perturbation must be one of {', '.join(PERTURBATIONS)}, got {perturbation!r}")
        if score not in SCORES:
            raise ValueError(f"score must be one of {', '.join(SCORES)}, got {score!r}")
        if preprocessing is not None and not isinstance(preprocessing, Preprocessing):
            raise TypeError(f"preprocessing must be a relmon.Preprocessing, got {type(preprocessing).__name__}")
        if model_attr is not None and not (isinstance(model_attr, str) and model_attr):
            raise ValueError(f"model_attr must be an attribute name, got {model_attr!r}")
        self.every_n_epochs = every_n_epochs
        self.max_samples = max_samples
        self.region = region
        self.steps = steps
        self.fraction = None if steps is not None else float(DEFAULT_FRACTION if fraction is None else fraction)
        self.step_stride = step_stride
        self.opts = dict(perturbation=perturbation, score=score, seed=seed, max_batch_bytes=max_batch_bytes,
                         step_stride=step_stride)
        self.model_attr = model_attr
        self.preprocessing = preprocessing
        self.prefix = prefix
        self.log_images = log_images
        self._window = metric_window(self.methods)  # torchmetrics states, summed over ranks
        self._heatmaps: dict[str, torch.Tensor] = {}
        self._active = False
        self._xs: list[torch.Tensor] = []
        self._ids: list = []
        self._position = 0
        self._classifier: nn.Module | None = None
        self._prep: Preprocessing | None = None
        self._geometry: tuple[int, int] | None = None  # (H, W) the region/steps were checked for
        self.samples_used: int | None = None
        self.region_used: int | None = None
        self.steps_used: int | None = None
        self.last_values: dict[str, float] = {}

    # -- set-up checks (before training) -----------------------------------------------------------

    def _needs_range(self) -> bool:
        return self.opts["perturbation"] == "uniform" or "lrp:epsilon_gamma_box" in self.methods

    def resolve_classifier(self, pl_module: pl.LightningModule) -> nn.Module:
        """The module this callback explains (see ``model_attr``); a clear error when there is none."""
        return find_classifier(
            pl_module, self.model_attr, setting="HeatmapQualityCallback(model_attr={attr})",
            fix="Pass model_attr='<name>' naming the attribute that holds it",
        )

    def _resolve_preprocessing(self, pl_module: pl.LightningModule, model: nn.Module) -> Preprocessing | None:
        if self.preprocessing is not None:
            return self.preprocessing
        for owner in (model, pl_module):
            for sub in owner.modules():
                if isinstance(sub, Metric):
                    continue
                prep = getattr(sub, _PREPROCESSING_ATTRIBUTE, None)
                if isinstance(prep, Preprocessing):
                    return prep
        prep = getattr(pl_module, "preprocessing", None)
        if isinstance(prep, Preprocessing):
            return prep
        if self._needs_range():
            what = ("the 'uniform' perturbation" if self.opts["perturbation"] == "uniform"
                    else "lrp:epsilon_gamma_box")
            raise MissingPreprocessingError(
                f"HeatmapQualityCallback needs the valid input range of the classifier for {what}, but neither "
                f"the callback nor {type(pl_module).__name__} declares one. Pass "
                "HeatmapQualityCallback(preprocessing=relmon.Preprocessing(mean=..., std=..., low=0.0, high=1.0)) "
                "with the normalisation your validation data gets, or declare it on the model with "
                "relmon.attach_preprocessing(<classifier>, relmon.Preprocessing(...)), or set "
                "self.preprocessing = relmon.Preprocessing(...) in the LightningModule; perturbation='blur', "
                "'mean', 'black' or 'constant' need no range."
            )
        return None

    def _bounds(self, channels: int) -> tuple[torch.Tensor | None, torch.Tensor | None]:
        if self._prep is None:
            return None, None
        return self._prep.bounds(channels)

    def _check_lrp(self, model: nn.Module) -> None:
        """Raise UnsupportedModelError now for a classifier relmon's LRP cannot explain (no forward needed)."""
        channels = first_layer_channels(model) or (len(self._prep.mean) if self._prep is not None else 1)
        probe = torch.zeros(1, channels, 1, 1)
        low, high = self._bounds(channels)
        for method in self.methods:
            family, name = parse_method(method)
            if family != "lrp":
                continue
            options = {} if low is None else dict(low=low, high=high)
            composite, canonizers = _lrp.composite_for(name, model, probe, **options)
            with torch.inference_mode(False), composite.context(model) as modified:
                _lrp.check_supported(modified, canonizers)

    def check_geometry(self, height: int, width: int) -> tuple[int, int]:
        """``(region, L)`` for ``height × width`` inputs; a ValueError naming the fix when they do not fit."""
        side = min(height, width)
        region = self.region if self.region is not None else max(1, math.ceil(side / DEFAULT_GRID))
        if region > side:
            raise ValueError(
                f"HeatmapQualityCallback: region={region} is larger than the validation images ({height}x{width}); "
                f"choose region <= {side} (or leave it unset for a {DEFAULT_GRID}x{DEFAULT_GRID} grid)"
            )
        try:  # the one rule of every runner: explicit steps at most the regions, never capped
            steps = resolve_steps(height, width, region, self.steps, self.fraction)
        except ValueError as err:
            raise ValueError(f"HeatmapQualityCallback: {err}") from None
        self._geometry = (height, width)
        self.region_used, self.steps_used = region, steps
        return region, steps

    def _check_input(self, x: torch.Tensor | None) -> None:
        if x is None or x.dim() < 2:
            return
        if self._geometry != tuple(x.shape[-2:]):
            self.check_geometry(int(x.shape[-2]), int(x.shape[-1]))

    def setup(self, trainer: pl.Trainer, pl_module: pl.LightningModule, stage: str) -> None:
        if stage not in ("fit", "validate"):
            return
        model = self.resolve_classifier(pl_module)
        self._prep = self._resolve_preprocessing(pl_module, model)
        self._check_lrp(model)
        self._classifier = model
        self._geometry = None
        example = getattr(pl_module, "example_input_array", None)
        if isinstance(example, torch.Tensor):
            self._check_input(example)

    def on_train_start(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        if self._geometry is None:
            self._check_input(_first_input(trainer))

    def on_validation_start(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        if self._geometry is None:
            self._check_input(_first_input(trainer))

    # -- collection --------------------------------------------------------------------------------

    def _runs_now(self, trainer: pl.Trainer) -> bool:
        return not trainer.sanity_checking and (trainer.current_epoch + 1) % self.every_n_epochs == 0

    def _samples(self, trainer: pl.Trainer) -> int:
        if self.max_samples is not None:
            return self.max_samples
        n = _validation_size(trainer)
        if n is None:
            return FALLBACK_SAMPLES
        return int(min(AUTO_MAX_SAMPLES, max(AUTO_MIN_SAMPLES, round(AUTO_SAMPLE_SHARE * n))))

    def on_validation_epoch_start(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        self._active = self._runs_now(trainer)
        self._xs, self._ids, self._position = [], [], 0
        if self._active:
            self.samples_used = self._samples(trainer)

    def on_validation_batch_end(
        self,
        trainer: pl.Trainer,
        pl_module: pl.LightningModule,
        outputs: Any,
        batch: Any,
        batch_idx: int,
        dataloader_idx: int = 0,
    ) -> None:
        if dataloader_idx != 0:
            return
        x, n_good, n_bad = batch_size_of(batch)
        self._check_input(x)  # also in the sanity check: a bad region/steps is reported before training
        if not self._active:
            return
        position = self._position
        self._position += n_good + n_bad
        if x is None or n_good == 0:
            return
        sampler = loader_sampler(trainer.val_dataloaders, dataloader_idx)
        keep = keep_mask(padding_flags(sampler, position, n_good + n_bad), n_good)
        glob = global_positions(sampler, position, n_good)
        ids = batch.get("sample_id") if isinstance(batch, dict) else None
        chosen = [i for i in range(n_good) if keep[i] and glob[i] < self.samples_used]
        if not chosen:
            return
        # Copies made outside inference mode are normal tensors that autograd accepts.
        with torch.inference_mode(False):
            index = torch.tensor(chosen, dtype=torch.long, device=x.device)
            self._xs.append(x.detach().index_select(0, index).clone())
        self._ids.extend(str(ids[i]) if ids else glob[i] for i in chosen)

    # -- scoring -----------------------------------------------------------------------------------

    def _model(self, pl_module: pl.LightningModule) -> nn.Module:
        if self._classifier is None:  # hooks driven without setup(): resolve now
            self._classifier = self.resolve_classifier(pl_module)
            self._prep = self._resolve_preprocessing(pl_module, self._classifier)
        return self._classifier

    def on_validation_epoch_end(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        if not self._active:
            return
        self._active = False
        model = self._model(pl_module)
        device = pl_module.device
        with torch.inference_mode(False):  # states moved or recreated inside it would be inference tensors
            for metric in self._window.aggregates():
                metric.to(device)
        self._window.reset()
        self._heatmaps = {}
        try:
            with eval_mode(model):  # train/eval flags and requires_grad restored, also on an error
                if self._xs:
                    self._score(model, torch.cat(self._xs).to(device))
        finally:
            self._xs, self._ids = [], []
        self._log(trainer, pl_module)

    def scorer(self, model: nn.Module, height: int, width: int, channels: int) -> BatchScorer:
        """The :class:`~relmon.scoring.BatchScorer` of this callback for ``height × width`` inputs (the
        same scoring as the job's and :class:`~relmon.lightning.RelevanceMonitor`'s; no records)."""
        region, steps = self.check_geometry(height, width)
        low, high = self._bounds(channels)
        lrp_options = {} if low is None else dict(low=low, high=high)
        return BatchScorer(
            model, methods=self.methods, region=region, steps=steps, perturbation=self.opts["perturbation"],
            score=self.opts["score"], seed=self.opts["seed"], max_batch_bytes=self.opts["max_batch_bytes"],
            step_stride=self.step_stride, bounds=(low, high), records=False, keep_heatmaps=self.log_images > 0,
            explain_options={m: lrp_options for m in self.methods if m.startswith("lrp")},
        )

    def _score(self, model: nn.Module, x: torch.Tensor) -> None:
        scorer = self.scorer(model, int(x.shape[-2]), int(x.shape[-1]), int(x.shape[1]))
        self._window.add_inputs(seen=x.shape[0])
        frame = scorer.score_batch(x, list(self._ids), [""] * x.shape[0], self._window)
        self._heatmaps = {m: h[: self.log_images] for m, h in frame.attrs.get("heatmaps", {}).items()}

    def log_keys(self) -> list[str]:
        """The keys this callback logs (identical in every logger)."""
        keys = []
        for method in self.methods:
            keys += [log_key(self.prefix, what, method) for what in
                     ("aopc", "aopc_rel", "aopc_minus_random", "aopc_rel_minus_random", "entropy")]
        return [*keys, log_key(self.prefix, "n")]

    def _log(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        # summary() sums the states over ranks (a collective: every rank gets here, with or without data).
        summary = self._window.summary()
        rel_random = summary[RANDOM_METHOD]["aopc_rel"]
        values: dict[str, float] = {}
        for method in self.methods:
            entry = summary[method]
            values[log_key(self.prefix, "aopc", method)] = float(entry["aopc"])
            values[log_key(self.prefix, "aopc_rel", method)] = float(entry["aopc_rel"])
            values[log_key(self.prefix, "aopc_minus_random", method)] = float(entry["aopc_minus_random"])
            values[log_key(self.prefix, "aopc_rel_minus_random", method)] = float(entry["aopc_rel"] - rel_random)
            values[log_key(self.prefix, "entropy", method)] = float(entry["entropy_bits"])
        n = summary["_inputs"]["seen"]
        values[log_key(self.prefix, "n")] = float(n)
        self.last_values = values
        if n == 0:
            return
        pl_module.log_dict(values, on_step=False, on_epoch=True, sync_dist=False)
        if self.log_images and trainer.is_global_zero:
            for method, heat in self._heatmaps.items():
                if heat.shape[0]:
                    send_image(trainer.loggers, log_key(self.prefix, "heatmaps", method), heatmap_strip(heat),
                               trainer.global_step)


__all__ = ["CLASSIFIER_ATTRIBUTES", "DEFAULT_FRACTION", "HeatmapQualityCallback", "log_key"]
