"""The per-batch scoring of a monitored stream, with torch and pandas only (no Lightning, no torchmetrics).

:class:`BatchScorer` holds the scoring settings and does what every runner does per batch:
:meth:`~BatchScorer.select` (DDP padding dropped, seeded sampling, per-window cap) and
:meth:`~BatchScorer.score_batch` (explain → :func:`~relmon.perturbation.evaluate_heatmaps` →
random order → records, :mod:`relmon.records`). The window aggregates go to a *sink*:

- :class:`WindowAccumulator` (here): plain float64 sums for one process, used by the job's
  Lightning-free runner (:mod:`relmon.jobs.runner`);
- :class:`relmon.lightning.RelevanceMonitor` keeps the same sums in torchmetrics states (summed across
  DDP ranks) and delegates the scoring to a :class:`BatchScorer`.

Both sinks compute the same numbers from the same sums (:func:`mean_ci`), so a window summary is the
same whichever runner scored it.

Sampling and DDP padding: a sample is monitored iff ``selection_hash(seed, sample_id) <
sample_rate``. A plain :class:`~torch.utils.data.DistributedSampler` pads every rank to ``ceil(N /
world)`` items by repeating the first indices; the padded items are exactly the global positions
``>= N``, where the ``j``-th item of rank ``r`` has global position ``r + j * world``.
:func:`padding_flags` computes this per batch, and padded items are neither recorded nor counted.
Lightning's ``UnrepeatedDistributedSampler`` never pads (recognised without importing Lightning: if
Lightning is not loaded, no sampler can be Lightning's).
"""

from __future__ import annotations

import hashlib
import math
import sys
import warnings
from collections import Counter
from collections.abc import Sequence
from typing import Any

import numpy as np
import pandas as pd
import torch
from torch import nn
from torch.utils.data import DistributedSampler

from relmon.complexity import entropy_bits, heatmap_complexity
from relmon.explain import canonical_method, explain_full, to_heatmap
from relmon.identity import model_info
from relmon.perturbation import (
    DEFAULT_MAX_BATCH_BYTES,
    DEFAULT_STEPS,
    evaluate_heatmaps,
    region_perturbation,
    steps_for_fraction,
)
from relmon.records import (
    RANDOM_METHOD,
    class_probabilities,
    confidence_signals,
    empty_records,
    make_records_of_parts,
)
from relmon.sums import Count, FiniteSums, mean_ci, t_quantile  # noqa: F401  (re-exported)

#: Share of the image perturbed by the early part of each curve (``aopc_early``).
EARLY_FRACTION = 0.16


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


def _unrepeated_samplers() -> tuple[type, ...]:
    """Lightning's never-padding predict samplers, from the Lightning modules already imported."""
    out = []
    for name in ("pytorch_lightning.overrides.distributed", "lightning.pytorch.overrides.distributed"):
        cls = getattr(sys.modules.get(name), "UnrepeatedDistributedSampler", None)
        if isinstance(cls, type):
            out.append(cls)
    return tuple(out)


def padding_flags(sampler: Any, position: int, count: int) -> list[bool]:
    """Which of ``count`` items starting at this rank's ``position`` are DistributedSampler padding.

    ``sampler`` is the loader's sampler. Only a plain :class:`~torch.utils.data.DistributedSampler`
    (or a subclass other than Lightning's unrepeated one) pads: its ``j``-th item on rank ``r`` has
    global position ``r + j * num_replicas``, and positions ``>= len(dataset)`` repeat earlier items.
    """
    if not isinstance(sampler, DistributedSampler) or isinstance(sampler, _unrepeated_samplers()):
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
# curves and intervals


def early_steps(size: tuple[int, int], region: int, num_steps: int, fraction: float = EARLY_FRACTION) -> int:
    """Steps ``k`` (1..L) after which about ``fraction`` of an image of ``size`` (H, W) is perturbed:
    :func:`relmon.perturbation.steps_for_fraction`, capped at the curve's ``L``."""
    return int(min(steps_for_fraction(int(size[0]), int(size[1]), region, fraction), num_steps))


def early_aopc(result, k: int) -> torch.Tensor:
    """``(B,)`` AOPC of the first ``k`` steps: ``1/(k+1) sum_{j<=k} (f(x^(0)) - f(x^(j)))`` (score units)."""
    curves = result.curves[:, : k + 1].to(torch.float64)
    return (result.score0.to(torch.float64)[:, None] - curves).mean(dim=1)


def _take(value, index: list[int]):
    """``value`` (a per-sample list/tensor, or a scalar shared by all samples) at ``index``."""
    if isinstance(value, torch.Tensor):
        return value.index_select(0, torch.tensor(index, dtype=torch.long, device=value.device))
    if isinstance(value, np.ndarray):
        return value[index]
    if isinstance(value, (list, tuple)):
        return [value[i] for i in index]
    return value


# --------------------------------------------------------------------------------------------------
# the plain window aggregates


def summary_entry(aopc: dict[str, float], aopc_rel: float, minus_random: float | None = None,
                  entropy_bits: float | None = None) -> dict[str, float]:
    """One method's entry of a window summary (see :meth:`WindowAccumulator.summary`)."""
    entry = {"aopc": aopc["mean"], "aopc_ci_low": aopc["ci_low"], "aopc_ci_high": aopc["ci_high"],
             "aopc_std": aopc["std"], "n": aopc["n"], "aopc_rel": aopc_rel}
    if minus_random is not None:
        entry["aopc_minus_random"] = float(minus_random)
        entry["entropy_bits"] = float(entropy_bits)
    return entry


class WindowAccumulator:
    """A window's aggregates: the sink :meth:`BatchScorer.score_batch` feeds.

    ``sums`` makes one aggregate (``update(values)``, ``compute()`` → :func:`mean_ci`'s dict,
    ``reset()``) and ``counter`` one input count (``update(n)``, ``compute()``, ``reset()``). The
    defaults, :class:`~relmon.sums.FiniteSums` and :class:`~relmon.sums.Count`, hold one process's
    window (the job's Lightning-free runner); :class:`relmon.lightning.RelevanceMonitor` and
    :class:`relmon.lightning.HeatmapQualityCallback` pass :class:`relmon.metrics.MeanCI` and
    torchmetrics' ``SumMetric``, whose states are summed across DDP ranks by ``compute()``.
    """

    INPUTS = ("seen", "bad", "padding_skipped")

    def __init__(self, methods: Sequence[str], sums=FiniteSums, counter=Count):
        self.methods = tuple(methods)
        every = (*self.methods, RANDOM_METHOD)
        self.aopc = {m: sums() for m in every}
        self.aopc_rel = {m: sums() for m in every}
        self.minus_random = {m: sums() for m in self.methods}
        self.entropy = {m: sums() for m in self.methods}
        self.inputs = {k: counter() for k in self.INPUTS}

    def aggregates(self) -> list:
        """Every aggregate and counter (to register torchmetrics states as submodules, move them, reset)."""
        out = list(self.inputs.values())
        for group in (self.aopc, self.aopc_rel, self.minus_random, self.entropy):
            out.extend(group.values())
        return out

    def reset(self) -> None:
        with torch.inference_mode(False):  # metric states recreated inside it would be inference tensors
            for item in self.aggregates():
                item.reset()

    # the sink interface
    def add_inputs(self, seen: int | None = None, bad: int | None = None, padding_skipped: int | None = None) -> None:
        for name, value in (("seen", seen), ("bad", bad), ("padding_skipped", padding_skipped)):
            if value is not None:
                self.inputs[name].update(float(value))

    def add_method(self, method: str, aopc, aopc_rel, entropy_bits=None) -> None:
        self.aopc[method].update(aopc)
        self.aopc_rel[method].update(aopc_rel)
        if entropy_bits is not None:
            self.entropy[method].update(entropy_bits)

    def add_minus_random(self, method: str, aopc: torch.Tensor, random_aopc: torch.Tensor) -> None:
        self.minus_random[method].update(aopc.to(random_aopc.device) - random_aopc)

    def summary(self) -> dict[str, dict[str, float]]:
        """Per method: ``aopc`` (mean), ``aopc_ci_low``/``aopc_ci_high`` (95 % CI of the mean),
        ``aopc_std``, ``n``, ``aopc_rel``, ``aopc_minus_random``, ``entropy_bits`` (means); the
        ``random`` entry holds the random order's AOPC. Plus ``"_inputs"``: ``seen`` (non-padding good
        inputs), ``bad``, ``padding_skipped``. With torchmetrics aggregates every DDP rank must call it
        (``compute()`` syncs collectively)."""
        out: dict[str, dict[str, float]] = {}
        with warnings.catch_warnings(), torch.inference_mode(False):
            warnings.filterwarnings("ignore", message=".*compute.*before.*update.*")
            for method in (*self.methods, RANDOM_METHOD):
                stats, rel = self.aopc[method].compute(), self.aopc_rel[method].compute()["mean"]
                if method == RANDOM_METHOD:
                    out[method] = summary_entry(stats, rel)
                else:
                    out[method] = summary_entry(stats, rel, self.minus_random[method].compute()["mean"],
                                                self.entropy[method].compute()["mean"])
            out["_inputs"] = {k: int(round(float(self.inputs[k].compute()))) for k in self.INPUTS}
        return out


# --------------------------------------------------------------------------------------------------
# the scorer


class BatchScorer:
    """Select and score the batches of a stream.

    Parameters
    ----------
    model:
        The classifier (with its declared input space, see :func:`relmon.attach_preprocessing`).
    methods:
        Heatmap methods (ids of :func:`relmon.available_methods`; bare ``lrp`` = default composite).
        ``random`` is not a method here: every scored sample (or the ``random_fraction`` subset) gets
        the random region order's AOPC with the same target and noise image, evaluated once per sample
        (the order and the noise depend only on ``(seed, sample_id)``, not on the method).
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
    bounds:
        ``(low, high)`` input range tensors for the perturbation (``None``: the model's declared one).
    suspect_regions:
        Rectangles ``[top, left, height, width]`` in input pixels (``relmon audit``): each record gets the
        per-sample location features of :func:`relmon.location.location_features` (columns
        :data:`relmon.location.LOCATION_COLUMNS`) from the **first** method's heatmap and one extra forward
        (the occlusion) per batch; None (default): no location columns. Not computed with ``records=False``.
    records:
        False: feed the sink only (the entropy is the one complexity measure computed) and return an
        empty records frame (still carrying the heatmaps with ``keep_heatmaps``): the training callback.

    The clean scores ``f(x^(0))`` are taken from the first explanation pass's logits, so no order
    evaluates the clean input again.
    """

    #: The settings a :class:`relmon.lightning.RelevanceMonitor` exposes as read-only attributes.
    SETTINGS = ("methods", "region", "steps", "perturbation", "score", "sample_rate", "max_samples", "seed", "lerf",
                "keep_heatmaps", "max_batch_bytes", "explain_options", "step_stride", "random_fraction", "threads",
                "suspect_regions", "model_name", "model_version")

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
        bounds: tuple[torch.Tensor | None, torch.Tensor | None] | None = None,
        records: bool = True,
        suspect_regions: Sequence[Sequence[int]] | None = None,
    ):
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
        self.step_stride = step_stride
        self.random_fraction = float(random_fraction)
        self.threads = threads
        self.bounds = (None, None) if bounds is None else tuple(bounds)
        self.records = bool(records)
        self.suspect_regions = (None if suspect_regions is None
                                else tuple(tuple(int(v) for v in r) for r in suspect_regions))
        self._masks: dict[tuple[int, int], torch.Tensor] = {}
        info = model_info(model) if self.records else None  # the records' columns (hashes the weights)
        self.model_name, self.model_version = (str(info.name), str(info.version)) if info else ("", "")
        self.window_counts: Counter[str] = Counter()
        self.positions: Counter[int] = Counter()

    def reset_window(self) -> None:
        """Forget the per-window counts and the loader positions."""
        self.window_counts.clear()
        self.positions.clear()

    # -- selection ---------------------------------------------------------------------------------

    def cap(self, world_size: int = 1) -> int | None:
        """Monitored samples per window on this process (``ceil(max_samples / world_size)``)."""
        if self.max_samples is None:
            return None
        return math.ceil(self.max_samples / max(1, int(world_size)))

    def select(self, batch: dict[str, Any], sink, dataloader_idx: int = 0, sampler: Any = None,
               world_size: int = 1) -> list[int]:
        """Indices into the batch's good items to monitor (padding dropped, sampled, capped); counts the
        seen and padding items in ``sink``."""
        x, n_good, n_bad = batch_size_of(batch)
        position = self.positions[dataloader_idx]
        self.positions[dataloader_idx] += n_good + n_bad
        keep = keep_mask(padding_flags(sampler, position, n_good + n_bad), n_good)
        sink.add_inputs(seen=sum(keep), padding_skipped=n_good - sum(keep))
        ids = batch.get("sample_id") or [str(p) for p in range(position, position + n_good)]
        windows = batch.get("window_id") or [""] * n_good
        cap = self.cap(world_size)
        chosen = []
        for i in range(n_good):
            if not keep[i]:
                continue
            if self.sample_rate < 1.0 and selection_hash(self.seed, ids[i]) >= self.sample_rate:
                continue
            if cap is not None and self.window_counts[windows[i]] >= cap:
                continue
            self.window_counts[windows[i]] += 1
            chosen.append(i)
        return chosen

    def score_loader_batch(self, batch: Any, sink, device: torch.device | str | None = None,
                           dataloader_idx: int = 0, sampler: Any = None, world_size: int = 1) -> pd.DataFrame:
        """A loader's batch (a stream dict, a tensor or an ``(x, y)`` tuple): count it, select, score the
        selection on ``device`` (default: where ``x`` is). The records frame (empty when nothing selected)."""
        if not isinstance(batch, dict):
            x, _, _ = batch_size_of(batch)
            batch = {"x": x}
        sink.add_inputs(bad=int(batch.get("n_bad", 0)))
        if batch.get("x") is None:
            return empty_records()
        chosen = self.select(batch, sink, dataloader_idx, sampler, world_size)
        if not chosen:
            return empty_records()
        n_good = batch["x"].shape[0]
        ids = list(batch.get("sample_id") or [str(i) for i in range(n_good)])
        windows = list(batch.get("window_id") or ["default:0"] * n_good)
        labels = batch.get("label")
        index = torch.tensor(chosen, dtype=torch.long)
        x = batch["x"].index_select(0, index.to(batch["x"].device))
        if device is not None:
            x = x.to(device)
        if labels is not None:
            labels = torch.as_tensor(labels)
            labels = labels.index_select(0, index.to(labels.device))
        return self.score_batch(x, [str(ids[i]) for i in chosen], [windows[i] for i in chosen], sink, labels)

    # -- scoring -----------------------------------------------------------------------------------

    def score_batch(self, x: torch.Tensor, sample_ids: Sequence[str], window_ids: Sequence[str], sink,
                    labels: torch.Tensor | None = None) -> pd.DataFrame:
        """Records of ``x`` (all of it, no selection); the window aggregates go to ``sink``."""
        if self.threads is None:
            return self._score_batch(x, sample_ids, window_ids, sink, labels)
        before = torch.get_num_threads()
        torch.set_num_threads(self.threads)
        try:
            return self._score_batch(x, sample_ids, window_ids, sink, labels)
        finally:
            torch.set_num_threads(before)

    def _location(self, x, heatmap, target, logits) -> dict[str, torch.Tensor]:
        """The location columns of a batch (empty without ``suspect_regions``)."""
        if self.suspect_regions is None:
            return {}
        from relmon.location import location_features, suspect_mask
        from relmon.preprocessing import get_preprocessing

        size = (int(x.shape[-2]), int(x.shape[-1]))
        if size not in self._masks:
            try:
                self._masks[size] = suspect_mask(self.suspect_regions, *size)
            except ValueError as err:
                raise ValueError(f"suspect_regions: {err}; fix: give rectangles in the model's input pixels "
                                 f"({size[0]}x{size[1]})") from None
        low = get_preprocessing(self.model, "the occlusion of suspect_regions").low
        return location_features(self.model, x, heatmap, target, self._masks[size], low=low, logits=logits)

    def _score_batch(self, x, sample_ids, window_ids, sink, labels) -> pd.DataFrame:
        opts = dict(perturbation=self.perturbation, score=self.score, region=self.region, steps=self.steps,
                    seed=self.seed, sample_ids=list(sample_ids), max_batch_bytes=self.max_batch_bytes,
                    step_stride=self.step_stride, low=self.bounds[0], high=self.bounds[1])
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
            comp = heatmap_complexity(heat) if self.records else {"entropy_bits": entropy_bits(heat)}
            sink.add_method(method, ev.aopc, ev.aopc_rel, comp["entropy_bits"])
            if self.keep_heatmaps:
                heatmaps[method] = heat.detach().cpu()
            frames.append((method, ev.results["morf"], ev, comp))
        location = self._location(x, first_heatmap, target, logits) if self.records else {}
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
            sink.add_method(RANDOM_METHOD, rnd.aopc, rnd.aopc_rel)
            for method, _, ev, _ in frames:  # paired on the samples that have the baseline
                aopc = ev.aopc if full else _take(ev.aopc, subset)
                sink.add_minus_random(method, aopc, rnd.aopc)
        if not self.records:
            frame = empty_records()
            if self.keep_heatmaps:
                frame.attrs["heatmaps"] = heatmaps
                frame.attrs["heatmap_ids"] = list(sample_ids)
            return frame

        common = dict(
            sample_id=list(sample_ids), window_id=list(window_ids), model=self.model_name,
            model_version=self.model_version, pred=signals["pred"], confidence=signals["confidence"],
            softmax_entropy=signals["softmax_entropy"], margin=signals["margin"],
            label=labels if labels is not None else torch.full((x.shape[0],), -1, dtype=torch.long),
            **class_probabilities(logits),  # probs / probs_classes: COT, nuclear norm and MaNo read them
            **location,  # suspect_share ... on every row of the sample (the first method's heatmap)
        )
        parts = []
        # Early part of each curve (~16 % of the image perturbed, the paper's protocol): scale-free
        # features for the label-free accuracy estimators (relmon.analysis.features).
        early = early_steps(tuple(x.shape[-2:]), self.region, frames[0][1].num_steps)  # rnd may be None
        for method, morf, ev, comp in frames:
            parts.append(dict(
                aopc_early=early_aopc(morf, early),
                **common, method=method, score0=morf.score0, aopc=morf.aopc, aopc_rel=morf.aopc_rel,
                aopc_lerf=ev.aopc_lerf if self.lerf else None, abpc=ev.abpc if self.lerf else None,
                entropy_bits=comp["entropy_bits"], png_bytes=comp["png_bytes"],
                jpeg_bytes=comp["jpeg_bytes"], gini=comp["gini"],
            ))
        if rnd is not None:
            sub = {k: _take(v, subset) for k, v in common.items()}
            parts.append(dict(**sub, method=RANDOM_METHOD, score0=rnd.score0, aopc=rnd.aopc,
                              aopc_rel=rnd.aopc_rel, aopc_early=early_aopc(rnd, early)))
        frame = make_records_of_parts(*parts)  # one frame built and validated once per batch
        if self.keep_heatmaps:
            frame.attrs["heatmaps"] = heatmaps
            frame.attrs["heatmap_ids"] = list(sample_ids)
        return frame


__all__ = [
    "EARLY_FRACTION",
    "BatchScorer",
    "FiniteSums",
    "WindowAccumulator",
    "batch_size_of",
    "early_aopc",
    "early_steps",
    "global_positions",
    "keep_mask",
    "loader_sampler",
    "mean_ci",
    "padding_flags",
    "random_subset_hash",
    "selection_hash",
    "summary_entry",
    "t_quantile",
]
