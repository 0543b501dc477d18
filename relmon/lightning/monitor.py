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
"""

from __future__ import annotations

import hashlib
import math
import warnings
from collections import Counter
from collections.abc import Sequence
from typing import Any

import numpy as np
import pandas as pd
import pytorch_lightning as pl
import torch
from torch import nn
from torch.utils.data import DistributedSampler
from torchmetrics import Metric
from torchmetrics.aggregation import SumMetric

from relmon.complexity import heatmap_complexity
from relmon.explain import canonical_method, explain_full, to_heatmap
from relmon.metrics import AOPCMinusRandom, HeatmapEntropy
from relmon.models import model_info
from relmon.perturbation import DEFAULT_MAX_BATCH_BYTES, evaluate_heatmaps, region_perturbation
from relmon.records import RANDOM_METHOD, confidence_signals, empty_records, make_records

try:  # Lightning's own sampler for predict never pads
    from pytorch_lightning.overrides.distributed import UnrepeatedDistributedSampler
except ImportError:  # pragma: no cover - older/newer Lightning without it
    UnrepeatedDistributedSampler = ()  # type: ignore[assignment,misc]

# Two-sided 95 % quantile of the normal distribution (the CI uses Student's t where scipy exists).
_Z95 = 1.959963984540054


# --------------------------------------------------------------------------------------------------
# sampling and DDP padding


def selection_hash(seed: int, sample_id) -> float:
    """A uniform number in ``[0, 1)`` from ``(seed, sample_id)``: the same on every rank and run."""
    digest = hashlib.blake2b(f"{int(seed)}|select|{sample_id}".encode(), digest_size=8).digest()
    return int.from_bytes(digest, "little") / 2.0**64


def random_subset_hash(seed: int, sample_id) -> float:
    """A uniform number in ``[0, 1)`` from ``(seed, sample_id)``, independent of :func:`selection_hash`:
    a sample gets the random-order baseline iff it is ``< random_fraction``."""
    digest = hashlib.blake2b(f"{int(seed)}|random-order|{sample_id}".encode(), digest_size=8).digest()
    return int.from_bytes(digest, "little") / 2.0**64


def padding_flags(sampler: Any, position: int, count: int) -> list[bool]:
    """Which of ``count`` items starting at this rank's ``position`` are DistributedSampler padding.

    ``sampler`` is the loader's sampler. Only a plain :class:`~torch.utils.data.DistributedSampler`
    (or a subclass other than Lightning's unrepeated one) pads: its ``j``-th item on rank ``r`` has
    global position ``r + j * num_replicas``, and positions ``>= len(dataset)`` repeat earlier items.
    """
    if not isinstance(sampler, DistributedSampler) or isinstance(sampler, UnrepeatedDistributedSampler):
        return [False] * count
    n, world, rank = len(sampler.dataset), sampler.num_replicas, sampler.rank
    return [rank + (position + j) * world >= n for j in range(count)]


def global_positions(sampler: Any, position: int, count: int) -> list[int]:
    """Position in the (unsharded) loader order of this rank's items ``position .. position+count-1``.

    Exact for ``shuffle=False`` distributed samplers (Lightning's default for evaluation loops); the
    identity without a distributed sampler.
    """
    if isinstance(sampler, DistributedSampler):
        world, rank = sampler.num_replicas, sampler.rank
        return [rank + (position + j) * world for j in range(count)]
    return list(range(position, position + count))


def loader_sampler(dataloaders: Any, dataloader_idx: int = 0) -> Any:
    """The sampler of loader ``dataloader_idx`` of ``trainer.<stage>_dataloaders`` (None if unknown)."""
    loader = dataloaders
    if isinstance(loader, (list, tuple)):
        loader = loader[dataloader_idx] if dataloader_idx < len(loader) else None
    elif isinstance(loader, dict):
        loader = list(loader.values())[dataloader_idx] if dataloader_idx < len(loader) else None
    sampler = getattr(loader, "sampler", None)
    batch_sampler = getattr(loader, "batch_sampler", None)
    inner = getattr(batch_sampler, "sampler", None)
    if not isinstance(sampler, DistributedSampler) and isinstance(inner, DistributedSampler):
        sampler = inner
    return sampler


def batch_size_of(batch: Any) -> tuple[torch.Tensor | None, int, int]:
    """``(x, good items, bad items)`` of a batch: a tensor, an ``(x, y, ...)`` tuple or a stream dict."""
    if isinstance(batch, dict):
        x = batch.get("x")
        n_bad = int(batch.get("n_bad", 0))
        return x, (0 if x is None else x.shape[0]), n_bad
    if isinstance(batch, (tuple, list)):
        x = batch[0]
    else:
        x = batch
    if not isinstance(x, torch.Tensor):
        raise TypeError(f"cannot find the inputs in a batch of type {type(batch).__name__}; "
                        "expected a tensor, an (x, y) tuple or a dict with 'x'")
    return x, x.shape[0], 0


def keep_mask(flags: list[bool], n_good: int) -> list[bool]:
    """Good items that are not padding: padding is the tail of a rank's sequence, so the last good items.

    Bad (dropped) items have no position inside the collated batch; they are taken to precede the
    padding (a bad item that is itself padding is then counted as a bad input once more).
    """
    n_pad = min(sum(flags), n_good)
    return [True] * (n_good - n_pad) + [False] * n_pad


# --------------------------------------------------------------------------------------------------
# metrics


class MeanCI(Metric):
    """Mean of per-sample values with a 95 % confidence interval, from sum / sum of squares / count.

    All states are summed across processes, so the value after a DDP sync equals that of one
    process fed all samples. Non-finite values are counted in ``nan_count`` and left out.
    ``compute()`` returns a dict: ``mean``, ``ci_low``, ``ci_high`` (Student's t, ``n - 1`` degrees of
    freedom; normal quantile without scipy), ``std`` (sample), ``n``, ``nan_count``.
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
        n = int(self.count)
        total, total_sq = float(self.total), float(self.total_sq)
        mean = total / n if n else math.nan
        if n > 1:
            var = max(0.0, (total_sq - n * mean * mean) / (n - 1))
            std = math.sqrt(var)
            half = _quantile(self.confidence, n - 1) * std / math.sqrt(n)
        else:
            std = half = math.nan
        return {"mean": mean, "ci_low": mean - half, "ci_high": mean + half, "std": std, "n": n,
                "nan_count": int(self.nan_count)}


EARLY_FRACTION = 0.16


def early_steps(size: tuple[int, int], region: int, num_steps: int, fraction: float = EARLY_FRACTION) -> int:
    """Steps ``k`` (1..L) after which about ``fraction`` of an image of ``size`` (H, W) is perturbed."""
    n_regions = math.ceil(size[0] / region) * math.ceil(size[1] / region)
    return int(min(max(round(fraction * n_regions), 1), num_steps))


def early_aopc(result, k: int) -> torch.Tensor:
    """``(B,)`` AOPC of the first ``k`` steps: ``1/(k+1) sum_{j<=k} (f(x^(0)) - f(x^(j)))`` (score units)."""
    curves = result.curves[:, : k + 1].to(torch.float64)
    return (result.score0.to(torch.float64)[:, None] - curves).mean(dim=1)


def _quantile(confidence: float, dof: int) -> float:
    try:
        from scipy.stats import t
    except ImportError:  # pragma: no cover
        return _Z95
    return float(t.ppf(0.5 + confidence / 2.0, dof))


def _take(value, index: list[int]):
    """``value`` (a per-sample list/tensor, or a scalar shared by all samples) at ``index``."""
    if isinstance(value, torch.Tensor):
        return value.index_select(0, torch.tensor(index, dtype=torch.long, device=value.device))
    if isinstance(value, np.ndarray):
        return value[index]
    if isinstance(value, (list, tuple)):
        return [value[i] for i in index]
    return value


def _metric_key(method: str) -> str:
    # ModuleDict keys cannot hold "."; method ids may (e.g. lrp:epsilon_0.01 spelled by a user).
    return method.replace(".", "_")


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
        steps: int = 100,
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
        if isinstance(methods, str):
            methods = (methods,)
        canon = tuple(canonical_method(m) for m in methods)
        if not canon:
            raise ValueError("methods must name at least one heatmap method, e.g. ('lrp',)")
        if RANDOM_METHOD in canon:
            raise ValueError("'random' is always reported (random region order); list only heatmap methods")
        if len(set(canon)) != len(canon):
            raise ValueError(f"methods must not repeat, got {list(canon)}")
        if not (isinstance(sample_rate, (int, float)) and 0.0 < sample_rate <= 1.0):
            raise ValueError(f"sample_rate must be in (0, 1], got {sample_rate!r}")
        if max_samples is not None and (isinstance(max_samples, bool) or not isinstance(max_samples, int)
                                        or max_samples < 1):
            raise ValueError(f"max_samples must be None or a positive int, got {max_samples!r}")
        if isinstance(step_stride, bool) or not isinstance(step_stride, int) or step_stride < 1:
            raise ValueError(f"step_stride must be an int >= 1 (1 evaluates every step), got {step_stride!r}")
        if isinstance(max_batch_bytes, bool) or not isinstance(max_batch_bytes, int) or max_batch_bytes < 1:
            raise ValueError(f"max_batch_bytes must be a positive int (bytes per forward), got {max_batch_bytes!r}")
        if isinstance(random_fraction, bool) or not (isinstance(random_fraction, (int, float))
                                                     and 0.0 < random_fraction <= 1.0):
            raise ValueError(f"random_fraction must be in (0, 1] (1 = random baseline on every sample), "
                             f"got {random_fraction!r}")
        if threads is not None and (isinstance(threads, bool) or not isinstance(threads, int) or threads < 1):
            raise ValueError(f"threads must be None or a positive int (torch threads), got {threads!r}")
        self.step_stride = step_stride
        self.random_fraction = float(random_fraction)
        self.threads = threads
        self.model = model
        self.methods = canon
        self.region = region
        self.steps = steps
        self.perturbation = perturbation
        self.score = score
        self.sample_rate = float(sample_rate)
        self.max_samples = max_samples
        self.seed = int(seed)
        self.lerf = bool(lerf)
        self.keep_heatmaps = bool(keep_heatmaps)
        self.max_batch_bytes = max_batch_bytes
        self.explain_options = {canonical_method(k): dict(v) for k, v in (explain_options or {}).items()}
        info = model_info(model)
        self.model_name, self.model_version = str(info.name), str(info.version)

        every = (*canon, RANDOM_METHOD)
        self.aopc_metrics = nn.ModuleDict({_metric_key(m): MeanCI() for m in every})
        self.aopc_rel_metrics = nn.ModuleDict({_metric_key(m): MeanCI() for m in every})
        self.minus_random_metrics = nn.ModuleDict({_metric_key(m): AOPCMinusRandom() for m in canon})
        self.entropy_metrics = nn.ModuleDict({_metric_key(m): HeatmapEntropy() for m in canon})
        self.bad_inputs = SumMetric()
        self.seen_inputs = SumMetric()
        self.padding_skipped = SumMetric()
        self._window_counts: Counter[str] = Counter()
        self._positions: Counter[int] = Counter()
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
        self._window_counts.clear()
        self._positions.clear()

    def on_predict_epoch_start(self) -> None:
        self.reset_window()

    def on_predict_epoch_end(self) -> None:
        self.last_summary = self.window_summary()

    # -- selection ---------------------------------------------------------------------------------

    def _cap(self) -> int | None:
        if self.max_samples is None:
            return None
        world = self.trainer.world_size if self._trainer is not None else 1
        return math.ceil(self.max_samples / max(1, world))

    def _select(self, batch: dict[str, Any], dataloader_idx: int) -> list[int]:
        """Indices into the batch's good items to monitor (padding dropped, sampled, capped)."""
        x, n_good, n_bad = batch_size_of(batch)
        sampler = loader_sampler(self.trainer.predict_dataloaders, dataloader_idx) if self._trainer else None
        position = self._positions[dataloader_idx]
        self._positions[dataloader_idx] += n_good + n_bad
        keep = keep_mask(padding_flags(sampler, position, n_good + n_bad), n_good)
        self.padding_skipped.update(float(n_good - sum(keep)))
        self.seen_inputs.update(float(sum(keep)))
        ids = batch.get("sample_id") or [str(p) for p in range(position, position + n_good)]
        windows = batch.get("window_id") or [""] * n_good
        cap = self._cap()
        chosen = []
        for i in range(n_good):
            if not keep[i]:
                continue
            if self.sample_rate < 1.0 and selection_hash(self.seed, ids[i]) >= self.sample_rate:
                continue
            if cap is not None and self._window_counts[windows[i]] >= cap:
                continue
            self._window_counts[windows[i]] += 1
            chosen.append(i)
        return chosen

    # -- the step ----------------------------------------------------------------------------------

    def predict_step(self, batch: dict[str, Any], batch_idx: int = 0, dataloader_idx: int = 0) -> pd.DataFrame:
        if not isinstance(batch, dict):
            x, _, _ = batch_size_of(batch)
            batch = {"x": x}
        self.bad_inputs.update(float(batch.get("n_bad", 0)))
        if batch.get("x") is None:
            return empty_records()
        chosen = self._select(batch, dataloader_idx)
        if not chosen:
            return empty_records()
        n_good = batch["x"].shape[0]
        ids = list(batch.get("sample_id") or [str(i) for i in range(n_good)])
        windows = list(batch.get("window_id") or ["default:0"] * n_good)
        labels = batch.get("label")
        index = torch.tensor(chosen, dtype=torch.long)
        x = batch["x"].index_select(0, index.to(batch["x"].device)).to(self.device)
        sample_ids = [str(ids[i]) for i in chosen]
        frame = self.score_batch(
            x, sample_ids, [windows[i] for i in chosen],
            None if labels is None else torch.as_tensor(labels).index_select(0, index.to(
                torch.as_tensor(labels).device)),
        )
        return frame

    def score_batch(
        self,
        x: torch.Tensor,
        sample_ids: Sequence[str],
        window_ids: Sequence[str],
        labels: torch.Tensor | None = None,
    ) -> pd.DataFrame:
        """Records of ``x`` (all of it, no selection) and the metric updates; usable outside a Trainer."""
        if self.threads is None:
            return self._score_batch(x, sample_ids, window_ids, labels)
        before = torch.get_num_threads()
        torch.set_num_threads(self.threads)
        try:
            return self._score_batch(x, sample_ids, window_ids, labels)
        finally:
            torch.set_num_threads(before)

    def _score_batch(self, x, sample_ids, window_ids, labels) -> pd.DataFrame:
        opts = dict(perturbation=self.perturbation, score=self.score, region=self.region, steps=self.steps,
                    seed=self.seed, sample_ids=list(sample_ids), max_batch_bytes=self.max_batch_bytes,
                    step_stride=self.step_stride)
        orders = ("morf", "lerf") if self.lerf else ("morf",)
        frames, heatmaps = [], {}
        target = None
        signals = None
        first_heatmap = None
        logits = None
        for method in self.methods:
            expl = explain_full(self.model, x, method, target=target, **self.explain_options.get(method, {}))
            if target is None:
                target, logits = expl.target, expl.logits
                signals = confidence_signals(expl.logits)
            heat = to_heatmap(expl.relevance, expl.method)
            first_heatmap = heat if first_heatmap is None else first_heatmap
            ev = evaluate_heatmaps(self.model, x, heat, orders=orders, target=target, clean_logits=logits, **opts)
            comp = heatmap_complexity(heat)
            key = _metric_key(method)
            self.aopc_metrics[key].update(ev.aopc)
            self.aopc_rel_metrics[key].update(ev.aopc_rel)
            self.entropy_metrics[key].update(comp["entropy_bits"])
            if self.keep_heatmaps:
                heatmaps[method] = heat.detach().cpu()
            frames.append((method, ev.results["morf"], ev, comp))
        if self.random_fraction < 1.0:
            subset = [i for i, sid in enumerate(sample_ids)
                      if random_subset_hash(self.seed, sid) < self.random_fraction]
        else:
            subset = list(range(x.shape[0]))
        rnd = None
        if subset:
            full = len(subset) == x.shape[0]
            rnd = region_perturbation(
                self.model, x if full else _take(x, subset), first_heatmap if full else _take(first_heatmap, subset),
                order="random", target=target if full else _take(target, subset),
                clean_logits=logits if full else _take(logits, subset),
                **{**opts, "sample_ids": _take(list(sample_ids), subset)},
            )
            key = _metric_key(RANDOM_METHOD)
            self.aopc_metrics[key].update(rnd.aopc)
            self.aopc_rel_metrics[key].update(rnd.aopc_rel)
            for method, _, ev, _ in frames:  # paired on the samples that have the baseline
                aopc = ev.aopc if full else _take(ev.aopc, subset)
                self.minus_random_metrics[_metric_key(method)].update(aopc, rnd.aopc)

        common = dict(
            sample_id=list(sample_ids), window_id=list(window_ids), model=self.model_name,
            model_version=self.model_version, pred=signals["pred"], confidence=signals["confidence"],
            softmax_entropy=signals["softmax_entropy"], margin=signals["margin"],
            label=labels if labels is not None else torch.full((x.shape[0],), -1, dtype=torch.long),
        )
        parts = []
        # Early part of each curve (~16 % of the image perturbed, the paper's protocol): scale-free
        # features for the label-free accuracy estimators (relmon.analysis.features).
        early = early_steps(tuple(x.shape[-2:]), self.region, frames[0][1].num_steps)  # rnd may be None
        for method, morf, ev, comp in frames:
            parts.append(make_records(
                aopc_early=early_aopc(morf, early),
                **common, method=method, score0=morf.score0, aopc=morf.aopc, aopc_rel=morf.aopc_rel,
                aopc_lerf=ev.aopc_lerf if self.lerf else None, abpc=ev.abpc if self.lerf else None,
                entropy_bits=comp["entropy_bits"], png_bytes=comp["png_bytes"],
                jpeg_bytes=comp["jpeg_bytes"], gini=comp["gini"],
            ))
        if rnd is not None:
            sub = {k: _take(v, subset) for k, v in common.items()}
            parts.append(make_records(**sub, method=RANDOM_METHOD, score0=rnd.score0, aopc=rnd.aopc,
                                      aopc_rel=rnd.aopc_rel, aopc_early=early_aopc(rnd, early)))
        frame = pd.concat(parts, ignore_index=True)
        if self.keep_heatmaps:
            frame.attrs["heatmaps"] = heatmaps
            frame.attrs["heatmap_ids"] = list(sample_ids)
        return frame

    # -- aggregates --------------------------------------------------------------------------------

    def window_summary(self) -> dict[str, dict[str, float]]:
        """Per method: ``aopc`` (mean), ``aopc_ci_low``/``aopc_ci_high`` (95 % CI of the mean),
        ``aopc_rel``, ``aopc_minus_random``, ``entropy_bits`` (means), ``n``; the ``random`` entry holds the
        random order's AOPC. Plus ``"_inputs"``: ``seen`` (non-padding good inputs), ``bad``,
        ``padding_skipped``. Under DDP every rank must call it (the metrics sync collectively).
        """
        out: dict[str, dict[str, float]] = {}
        with warnings.catch_warnings(), torch.inference_mode(False):
            warnings.filterwarnings("ignore", message=".*compute.*before.*update.*")
            for method in (*self.methods, RANDOM_METHOD):
                key = _metric_key(method)
                stats = self.aopc_metrics[key].compute()
                entry = {"aopc": stats["mean"], "aopc_ci_low": stats["ci_low"], "aopc_ci_high": stats["ci_high"],
                         "aopc_std": stats["std"], "n": stats["n"],
                         "aopc_rel": self.aopc_rel_metrics[key].compute()["mean"]}
                if method != RANDOM_METHOD:
                    entry["aopc_minus_random"] = float(self.minus_random_metrics[key].compute())
                    entry["entropy_bits"] = float(self.entropy_metrics[key].compute())
                out[method] = entry
            out["_inputs"] = {"seen": int(self.seen_inputs.compute()), "bad": int(self.bad_inputs.compute()),
                              "padding_skipped": int(self.padding_skipped.compute())}
        return out


__all__ = ["MeanCI", "RelevanceMonitor", "padding_flags", "random_subset_hash", "selection_hash"]
