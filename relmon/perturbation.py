"""Region perturbation and AOPC (Samek et al. 2015, "Evaluating the visualization of what a Deep
Neural Network has learned", arXiv 1509.06321).

Pure functions, tensors in and out, no global state. The pipeline, for a batch of inputs ``x``
``(B, C, H, W)`` and heatmaps ``(B, H, W)`` or ``(B, C', H, W)`` (channel-summed):

1. :func:`region_scores` — sum of the heatmap inside each ``region x region`` cell of a regular grid
   (where H or W is not a multiple of ``region`` the last row/column of cells is smaller).
2. :func:`region_order` — ``morf`` (descending score), ``lerf`` (ascending) or ``random`` (a seeded
   permutation per sample); ties are broken by region index (stable sort).
3. :func:`rank_map` — for every pixel the rank of its region in the order, ``(B, H, W)``.
4. :func:`replacement_images` — the values perturbed pixels take, drawn once per sample.
5. :func:`region_perturbation` — evaluates ``f(x^(k))`` for ``k = 0..L`` where
   ``x^(k) = where(rank_map < k, replacement, x)`` (the first ``k`` regions replaced, cumulatively),
   with the (sample, step) items packed into forwards of exactly the chunk size (sized to a memory
   budget; only the last forward is smaller), and returns the curves and
   AOPC = ``1/(L+1) * sum_{k=0..L} (f(x^(0)) - f(x^(k)))``. ``f(x^(0))`` may come from the caller
   (``clean_logits``, e.g. the explanation pass's logits).
6. :func:`evaluate_heatmaps` — MoRF, random and LeRF orders together (one clean pass shared by all
   orders): AOPC, AOPC minus random, ABPC.

Reproducibility: every random draw of a sample (its uniform noise image, its random order) comes from
a CPU ``torch.Generator`` seeded by ``(seed, sample id, purpose)``, so a sample's curve does not depend
on the batch, the chunking, the memory budget or the rank it is evaluated on.
"""

from __future__ import annotations

import contextlib
import hashlib
import math
import operator
from collections.abc import Sequence
from dataclasses import dataclass, field

import torch
import torch.nn.functional as F
from torch import nn

from relmon.explain.heatmap import to_heatmap
from relmon.preprocessing import eval_mode, input_bounds

ORDERS = ("morf", "lerf", "random")
PERTURBATIONS = ("uniform", "constant", "mean", "blur", "black")
SCORES = ("logit", "softmax")
# relmon's default L (the job's `steps` and RelevanceMonitor's default): DEFAULT_FRACTION of the 49
# regions of 4x4 pixels on a 28x28 image, steps_for_fraction(28, 28, 4, 0.16) = 8. (The paper's L is
# 100, on 227x227 images with 9x9 regions: the same share of the image.)
DEFAULT_STEPS = 8
# The paper perturbs L = 100 regions of 9x9 pixels on 227x227 images: 8100 of 51529 pixels, about
# 16 % of the image. relmon's default perturbs the same share of the image's regions.
DEFAULT_FRACTION = 0.16
DEFAULT_MAX_BATCH_BYTES = 256 * 2**20
# Streams of the per-sample generators: the noise image and the random order draw independently.
_STREAM_NOISE = "noise"
_STREAM_ORDER = "order"
# Activation memory of one item is estimated as this factor times the largest (inputs + output) of
# any leaf module seen in a probe forward: covers residual branches and un-hooked functional ops.
_ACTIVATION_SAFETY = 2.0
# Without a probe, activations are assumed to take this many times the input's bytes.
_ACTIVATION_GUESS = 64
# Default cap on items per forward on CPU (batch_size=None): CPU kernels lose throughput once a
# batch's activations leave the caches (measured on the embedded models: 1000-item batches ran at
# 55-60 % of the throughput of 250-item ones on 2 cores), while GPUs want the largest batch that fits.
CPU_MAX_ITEMS = 256


@dataclass
class PerturbationResult:
    """Curves and AOPC of one order for a batch of ``B`` samples (tensors on the model's device).

    Attributes
    ----------
    curves:
        ``(B, L+1)`` float32 (float64 for float64 inputs), ``f(x^(k))`` for ``k = 0..L`` (column 0 is the clean input). With
        ``step_stride > 1`` the steps not evaluated are filled by linear interpolation.
    aopc:
        ``(B,)`` ``1/(L+1) * sum_k (f(x^(0)) - f(x^(k)))``, in the units of the score.
    aopc_rel:
        ``(B,)`` ``aopc / f(x^(0))`` where ``f(x^(0)) > 0``, else NaN (always defined for softmax).
    score0:
        ``(B,)`` ``f(x^(0))``.
    target:
        ``(B,)`` int64, the class whose score ``f`` is.
    order, perturbation, score, region:
        The settings used.
    steps:
        ``(K,)`` int64, the steps actually evaluated (``0..L`` unless ``step_stride > 1``).
    """

    curves: torch.Tensor
    aopc: torch.Tensor
    aopc_rel: torch.Tensor
    score0: torch.Tensor
    target: torch.Tensor
    order: str
    perturbation: str
    score: str
    region: int
    steps: torch.Tensor = field(repr=False)

    @property
    def num_steps(self) -> int:
        """``L``, the number of perturbation steps (the curves have ``L + 1`` points)."""
        return self.curves.shape[1] - 1

    @property
    def drops(self) -> torch.Tensor:
        """``(B, L+1)`` ``f(x^(0)) - f(x^(k))`` (what Quantus' RegionPerturbation returns for k >= 1)."""
        return self.score0[:, None] - self.curves

    def cpu(self) -> PerturbationResult:
        return PerturbationResult(
            curves=self.curves.cpu(), aopc=self.aopc.cpu(), aopc_rel=self.aopc_rel.cpu(),
            score0=self.score0.cpu(), target=self.target.cpu(), order=self.order,
            perturbation=self.perturbation, score=self.score, region=self.region, steps=self.steps.cpu(),
        )


@dataclass
class HeatmapEvaluation:
    """The results of several orders on the same samples (see :func:`evaluate_heatmaps`)."""

    results: dict[str, PerturbationResult]

    def _aopc(self, order: str) -> torch.Tensor | None:
        res = self.results.get(order)
        return None if res is None else res.aopc

    @property
    def aopc(self) -> torch.Tensor | None:
        """``(B,)`` MoRF AOPC (the paper's AOPC)."""
        return self._aopc("morf")

    @property
    def aopc_rel(self) -> torch.Tensor | None:
        res = self.results.get("morf")
        return None if res is None else res.aopc_rel

    @property
    def aopc_random(self) -> torch.Tensor | None:
        return self._aopc("random")

    @property
    def aopc_lerf(self) -> torch.Tensor | None:
        return self._aopc("lerf")

    @property
    def aopc_minus_random(self) -> torch.Tensor | None:
        """``(B,)`` MoRF AOPC minus random-order AOPC of the same sample (same noise image)."""
        if self.aopc is None or self.aopc_random is None:
            return None
        return self.aopc - self.aopc_random

    @property
    def abpc(self) -> torch.Tensor | None:
        """``(B,)`` area between the LeRF and MoRF curves: ``mean_k (f_lerf(k) - f_morf(k))``."""
        morf, lerf = self.results.get("morf"), self.results.get("lerf")
        if morf is None or lerf is None:
            return None
        return (lerf.curves - morf.curves).mean(dim=1)


# --------------------------------------------------------------------------------------------------
# validation


def _check_choice(value: str, known: Sequence[str], what: str) -> str:
    if not isinstance(value, str) or value.lower() not in known:
        raise ValueError(f"unknown {what} {value!r}; known: {', '.join(known)}")
    return value.lower()


def _as_heatmap(heatmap: torch.Tensor) -> torch.Tensor:
    """``(B, H, W)`` float heatmap: ``(B, C, H, W)`` is summed over channels."""
    if not isinstance(heatmap, torch.Tensor):
        raise TypeError(f"heatmap must be a torch.Tensor, got {type(heatmap).__name__}")
    heatmap = to_heatmap(heatmap)  # (B, C, H, W) summed over channels, (B, H, W) unchanged
    if not heatmap.is_floating_point():
        heatmap = heatmap.float()
    return heatmap


def _check_inputs(x: torch.Tensor, heatmap: torch.Tensor) -> torch.Tensor:
    if not isinstance(x, torch.Tensor):
        raise TypeError(f"x must be a torch.Tensor, got {type(x).__name__}")
    if x.dim() != 4:
        raise ValueError(
            f"x must be (B, C, H, W), got shape {tuple(x.shape)}; add the batch dimension with x.unsqueeze(0)"
        )
    if not x.is_floating_point():
        raise ValueError(f"x must be a floating tensor in the model's input space, got dtype {x.dtype}")
    h = _as_heatmap(heatmap)
    if h.shape[0] != x.shape[0] or h.shape[-2:] != x.shape[-2:]:
        raise ValueError(
            f"heatmap shape {tuple(heatmap.shape)} does not match input shape {tuple(x.shape)}: expected "
            f"({x.shape[0]}, {x.shape[2]}, {x.shape[3]}) or ({x.shape[0]}, C, {x.shape[2]}, {x.shape[3]}); "
            "compute one heatmap per input at the input's resolution"
        )
    if x.shape[0] == 0:
        raise ValueError("x holds no samples (batch size 0)")
    if not bool(torch.isfinite(x).all()):
        raise ValueError("x holds non-finite values (NaN or inf); drop or repair those inputs first")
    if not bool(torch.isfinite(h).all()):
        raise ValueError("heatmap holds non-finite values (NaN or inf); check the explanation method")
    return h


def _as_int(value, name: str, what: str) -> int:
    if isinstance(value, bool):
        raise ValueError(f"{name} must be {what}, got {value!r}")
    try:
        return operator.index(value)
    except TypeError:
        raise ValueError(f"{name} must be {what}, got {value!r}") from None


def _check_region(region: int, height: int, width: int) -> int:
    region = _as_int(region, "region", "a positive int (the side of a square region in pixels)")
    if region < 1:
        raise ValueError(f"region must be a positive int (the side of a square region in pixels), got {region!r}")
    if region > min(height, width):
        raise ValueError(
            f"region {region} is larger than the image ({height}x{width}); choose region <= {min(height, width)}"
            " (e.g. 9 for images of 64 pixels or more, 2-4 for small ones)"
        )
    return region


def num_regions(height: int, width: int, region: int) -> int:
    """Number of cells of the grid: ``ceil(H / region) * ceil(W / region)``."""
    return math.ceil(height / region) * math.ceil(width / region)


def steps_for_fraction(height: int, width: int, region: int, fraction: float) -> int:
    """``L = round(fraction * num_regions)`` (halves round up), at least 1: the number of steps that
    perturbs ``fraction`` of the image's ``region x region`` regions.

    ``fraction = 0.16`` is the paper's protocol (about 16 % of the image); ``fraction = 1.0`` perturbs
    every region (the curve then ends on pure noise). On 28x28 images: region 4 (49 regions) gives
    L = 8 at 0.16 and 49 at 1.0; region 2 (196 regions) gives L = 31 and 196.
    """
    if isinstance(fraction, bool) or not isinstance(fraction, (int, float)) or not math.isfinite(fraction) \
            or not 0 < fraction <= 1:
        raise ValueError(f"fraction must be a number in (0, 1] (share of the image's regions perturbed), got {fraction!r}")
    n = num_regions(height, width, _check_region(region, height, width))
    return max(1, int(math.floor(fraction * n + 0.5)))


def resolve_steps(height: int, width: int, region: int, steps: int | None = None,
                  fraction: float | None = None) -> int:
    """``L`` from ``steps`` and/or ``fraction``: the one rule of every runner (job, monitor, callback).

    ``fraction`` alone gives :func:`steps_for_fraction`; ``steps`` alone is used as given and must not
    exceed the :func:`num_regions` of the image (a ValueError naming the fix, never silently capped);
    neither means ``fraction = DEFAULT_FRACTION``; both must agree or a ValueError names the conflict."""
    if steps is not None:
        steps = _as_int(steps, "steps (L)", "an int >= 1")
        if steps < 1:
            raise ValueError(f"steps (L) must be an int >= 1, got {steps!r}")
        n_regions = num_regions(height, width, region)
        if steps > n_regions:
            raise ValueError(
                f"steps={steps} exceeds the {n_regions} regions of a {height}x{width} image at region={region}; "
                f"choose steps <= {n_regions}, a smaller region, or fraction= (the share of the regions perturbed)"
            )
    if fraction is None:
        if steps is not None:
            return steps
        fraction = DEFAULT_FRACTION
    from_fraction = steps_for_fraction(height, width, region, fraction)
    if steps is not None and steps != from_fraction:
        raise ValueError(
            f"steps={steps} and fraction={fraction} disagree: fraction={fraction} of the "
            f"{num_regions(height, width, region)} regions of {region}x{region} pixels on a {height}x{width} "
            f"image is L = {from_fraction}; pass only one of them"
        )
    return from_fraction


def _sample_ids(batch: int, sample_ids, offset: int) -> list:
    if sample_ids is None:
        return list(range(offset, offset + batch))
    if isinstance(sample_ids, torch.Tensor):
        sample_ids = sample_ids.flatten().tolist()
    ids = list(sample_ids)
    if len(ids) != batch:
        raise ValueError(f"sample_ids holds {len(ids)} ids for a batch of {batch}; pass one id per sample")
    return ids


def _seed_for(seed: int, sample_id, stream: str) -> int:
    """A 63-bit generator seed from (seed, sample id, stream); ids are ints or strings (``1 != "1"``)."""
    if isinstance(sample_id, torch.Tensor):
        sample_id = sample_id.item()
    sid = repr(sample_id) if isinstance(sample_id, str) else str(operator.index(sample_id))
    digest = hashlib.blake2b(f"{int(seed)}|{stream}|{sid}".encode(), digest_size=8).digest()
    return int.from_bytes(digest, "little") & ((1 << 63) - 1)


def _generator(seed: int, sample_id, stream: str) -> torch.Generator:
    g = torch.Generator(device="cpu")
    g.manual_seed(_seed_for(seed, sample_id, stream))
    return g


# --------------------------------------------------------------------------------------------------
# regions and orders


def region_index_map(height: int, width: int, region: int, device=None) -> torch.Tensor:
    """``(H, W)`` int64 map from pixel to region id ``row * ceil(W/region) + col`` (row-major grid)."""
    region = _check_region(region, height, width)
    cols = math.ceil(width / region)
    rows_idx = torch.arange(height, device=device) // region
    cols_idx = torch.arange(width, device=device) // region
    return rows_idx[:, None] * cols + cols_idx[None, :]


def region_scores(heatmap: torch.Tensor, region: int) -> torch.Tensor:
    """``(B, R)`` sum of the (channel-summed) heatmap inside each region, regions in row-major order.

    Computed as a reshape-and-sum over the grid. Where H or W is not a multiple of ``region`` the
    heatmap is zero-extended for the summation only: the extension adds nothing, so the last
    row/column of regions is exactly the smaller cell of the image (and a reshape-sum is
    deterministic on every device, unlike atomic scatter-adds, so rankings are reproducible).
    """
    h = _as_heatmap(heatmap)
    b, height, width = h.shape
    region = _check_region(region, height, width)
    rows, cols = math.ceil(height / region), math.ceil(width / region)
    pad_h, pad_w = rows * region - height, cols * region - width
    if pad_h or pad_w:
        h = F.pad(h, (0, pad_w, 0, pad_h))
    return h.reshape(b, rows, region, cols, region).sum(dim=(2, 4)).reshape(b, rows * cols)


def region_order(
    scores: torch.Tensor, order: str = "morf", *, seed: int = 0, sample_ids=None, offset: int = 0
) -> torch.Tensor:
    """``(B, R)`` int64: for each sample the region ids in perturbation order.

    ``morf``: descending score; ``lerf``: ascending score; both break ties by the lower region id
    first (stable sort; MoRF sorts the negated scores). ``random``: a permutation drawn from the
    sample's generator seeded by ``(seed, sample id)`` (ids default to ``offset + index``).
    """
    order = _check_choice(order, ORDERS, "order")
    if scores.dim() != 2:
        raise ValueError(f"scores must be (B, R), got shape {tuple(scores.shape)}")
    if order == "morf":
        return torch.sort(-scores, dim=1, stable=True).indices
    if order == "lerf":
        return torch.sort(scores, dim=1, stable=True).indices
    b, r = scores.shape
    ids = _sample_ids(b, sample_ids, offset)
    # One small draw per sample: the per-sample generator is what makes the order batch-independent.
    perms = [torch.randperm(r, generator=_generator(seed, sid, _STREAM_ORDER)) for sid in ids]
    return torch.stack(perms).to(scores.device)


def rank_map(order: torch.Tensor, height: int, width: int, region: int) -> torch.Tensor:
    """``(B, H, W)`` int32: rank of each pixel's region in ``order`` (``0`` = perturbed first).

    Pixel ``p`` is perturbed at step ``k`` iff ``rank_map[p] < k``.
    """
    b, r = order.shape
    if r != num_regions(height, width, region):
        raise ValueError(f"order has {r} regions but a {height}x{width} image has "
                         f"{num_regions(height, width, region)} regions of size {region}")
    ranks = torch.empty_like(order)
    ranks.scatter_(1, order, torch.arange(r, device=order.device).expand(b, r))
    index = region_index_map(height, width, region, device=order.device).flatten()
    return ranks[:, index].reshape(b, height, width).to(torch.int32)


# --------------------------------------------------------------------------------------------------
# replacement values


def _gaussian_blur(x: torch.Tensor, sigma: float) -> torch.Tensor:
    radius = max(1, math.ceil(3.0 * sigma))
    t = torch.arange(-radius, radius + 1, device=x.device, dtype=torch.float32)
    kernel = torch.exp(-0.5 * (t / sigma) ** 2)
    kernel = (kernel / kernel.sum()).to(x.dtype)
    c = x.shape[1]
    out = F.pad(x, (radius, radius, radius, radius), mode="replicate")
    out = F.conv2d(out, kernel.view(1, 1, 1, -1).expand(c, 1, 1, -1), groups=c)
    return F.conv2d(out, kernel.view(1, 1, -1, 1).expand(c, 1, -1, 1), groups=c)


def replacement_images(
    x: torch.Tensor,
    perturbation: str = "uniform",
    *,
    low: torch.Tensor | None = None,
    high: torch.Tensor | None = None,
    value: float = 0.0,
    sigma: float = 2.0,
    seed: int = 0,
    sample_ids=None,
    offset: int = 0,
) -> torch.Tensor:
    """``(B, C, H, W)`` values that perturbed pixels take, on ``x``'s device and dtype.

    - ``uniform``: per pixel and channel ``U(low[c], high[c])``, drawn on the CPU from the sample's
      generator seeded by ``(seed, sample id)`` and then moved to the device. ``low``/``high`` are
      per-channel tensors ``(C,)`` (see :func:`relmon.models.input_bounds`).
    - ``constant``: ``value`` everywhere.
    - ``mean``: the per-sample, per-channel mean of ``x``.
    - ``blur``: ``x`` blurred by a Gaussian of standard deviation ``sigma`` pixels (edges replicated).
    - ``black``: the per-sample minimum of the whole input (Quantus' ``"black"`` baseline).
    """
    perturbation = _check_choice(perturbation, PERTURBATIONS, "perturbation")
    b, c, height, width = x.shape
    if perturbation == "uniform":
        if low is None or high is None:
            raise ValueError("the 'uniform' perturbation needs low= and high= (per-channel valid input range)")
        lo = torch.as_tensor(low, dtype=torch.float32).flatten().expand(c).reshape(1, c, 1, 1)
        hi = torch.as_tensor(high, dtype=torch.float32).flatten().expand(c).reshape(1, c, 1, 1)
        ids = _sample_ids(b, sample_ids, offset)
        u = torch.stack(
            [torch.rand((c, height, width), generator=_generator(seed, sid, _STREAM_NOISE)) for sid in ids]
        )
        return (lo + (hi - lo) * u).to(device=x.device, dtype=x.dtype)
    if perturbation == "constant":
        return torch.full_like(x, float(value))
    if perturbation == "mean":
        return x.mean(dim=(2, 3), keepdim=True).expand_as(x)
    if perturbation == "black":
        return x.amin(dim=(1, 2, 3), keepdim=True).expand_as(x)
    if not sigma > 0:
        raise ValueError(f"blur needs sigma > 0 (pixels), got {sigma}")
    return _gaussian_blur(x, float(sigma))


def perturb(x: torch.Tensor, ranks: torch.Tensor, replacement: torch.Tensor, k: int) -> torch.Tensor:
    """``x^(k)``: the pixels of the first ``k`` regions (``ranks < k``) replaced, ``(B, C, H, W)``."""
    return torch.where((ranks < k).unsqueeze(1), replacement, x)


# --------------------------------------------------------------------------------------------------
# evaluation


def evaluated_steps(num_steps: int, step_stride: int = 1) -> torch.Tensor:
    """Steps evaluated with subsampling: ``0, s, 2s, ...`` and always ``L``, as int64 ``(K,)``."""
    step_stride = _as_int(step_stride, "step_stride", "an int >= 1 (1 evaluates every step)")
    if step_stride < 1:
        raise ValueError(f"step_stride must be an int >= 1 (1 evaluates every step), got {step_stride!r}")
    steps = list(range(0, num_steps + 1, step_stride))
    if steps[-1] != num_steps:
        steps.append(num_steps)
    return torch.tensor(steps, dtype=torch.int64)


def interpolate_curves(values: torch.Tensor, steps: torch.Tensor, num_steps: int) -> torch.Tensor:
    """``(B, L+1)`` curves from ``(B, K)`` values at ``steps``, linear in between (exact at ``steps``)."""
    steps = steps.to(values.device)
    if steps.numel() == num_steps + 1:
        return values
    k = torch.arange(num_steps + 1, device=values.device)
    j = (torch.searchsorted(steps, k, right=True) - 1).clamp(0, steps.numel() - 2)
    k0, k1 = steps[j], steps[j + 1]
    t = ((k - k0).to(values.dtype) / (k1 - k0).to(values.dtype))[None, :]
    return values[:, j] * (1 - t) + values[:, j + 1] * t


def aopc_from_curves(curves: torch.Tensor, score0: torch.Tensor | None = None) -> torch.Tensor:
    """``(B,)`` AOPC ``1/(L+1) * sum_{k=0..L} (f(x^(0)) - f(x^(k)))`` of curves ``(B, L+1)``."""
    if score0 is None:
        score0 = curves[:, 0]
    return (score0[:, None] - curves).mean(dim=1)


def _model_device(model: nn.Module, fallback: torch.device) -> torch.device:
    for tensor in model.parameters():
        return tensor.device
    for tensor in model.buffers():
        return tensor.device
    return fallback


def _leaf_activation_bytes(model: nn.Module, probe: torch.Tensor) -> int:
    """Largest (inputs + output) bytes of any leaf module during a forward of ``probe``."""
    peak = [0]

    def hook(_module, inputs, output):
        size = sum(t.nbytes for t in inputs if isinstance(t, torch.Tensor))
        outs = output if isinstance(output, (tuple, list)) else (output,)
        size += sum(t.nbytes for t in outs if isinstance(t, torch.Tensor))
        peak[0] = max(peak[0], size)

    handles = [m.register_forward_hook(hook) for m in model.modules() if not any(True for _ in m.children())]
    try:
        out = model(probe)
    finally:
        for handle in handles:
            handle.remove()
    if isinstance(out, torch.Tensor):
        peak[0] = max(peak[0], probe.nbytes + out.nbytes)
    return peak[0]


def items_per_chunk(
    model: nn.Module,
    example: torch.Tensor,
    max_batch_bytes: int = DEFAULT_MAX_BATCH_BYTES,
    probe: bool = True,
) -> int:
    """How many perturbed inputs one forward may hold so that its memory stays under ``max_batch_bytes``.

    Per item: the perturbed input and its construction (about 5 input-sized tensors: the gathered
    clean image and replacement, the result, a channels-last copy, the rank map and mask) plus the
    model's activations, estimated as twice the largest (inputs + output) of any leaf module in a
    probe forward of ``example`` (one input, run by the caller under the same autocast/inference mode;
    without a probe, 64 times the input's bytes). An estimate, not a guarantee: kernels' workspaces
    are not seen. At least one item per chunk.
    """
    if not isinstance(max_batch_bytes, int) or max_batch_bytes <= 0:
        raise ValueError(f"max_batch_bytes must be a positive int (bytes), got {max_batch_bytes!r}")
    example = example[:1]
    in_bytes = example.nbytes
    build = 5 * in_bytes + example.shape[-2] * example.shape[-1] * 5
    if probe:
        act = int(_ACTIVATION_SAFETY * _leaf_activation_bytes(model, example))
    else:
        act = _ACTIVATION_GUESS * in_bytes
    return max(1, max_batch_bytes // max(1, build + act))


def _chunk_size(model: nn.Module, example: torch.Tensor, max_batch_bytes: int, batch_size: int | None,
                probe: bool, device: torch.device) -> int:
    """Items per forward: the memory budget's, capped by ``batch_size`` (or ``CPU_MAX_ITEMS`` on CPU)."""
    chunk = items_per_chunk(model, example, max_batch_bytes, probe=probe)
    if batch_size is not None:
        return min(chunk, batch_size)
    if device.type == "cpu":
        return min(chunk, CPU_MAX_ITEMS)
    return chunk


def _runs(i0: int, i1: int, per: int) -> list[tuple[int, int, int, int]]:
    """Split the flat items ``i0 .. i1-1`` (item ``i`` = sample ``i // per``, slot ``i % per``) into at
    most three ``(b0, b1, j0, j1)`` runs: the tail of a sample begun in an earlier forward, whole
    samples, the head of a sample continued in a later forward. Each run is one broadcast ``where``."""
    out = []
    b, j = divmod(i0, per)
    if j:
        j1 = min(per, j + (i1 - i0))
        out.append((b, b + 1, j, j1))
        i0 += j1 - j
        b += 1
    whole = (i1 - i0) // per
    if whole:
        out.append((b, b + whole, 0, per))
        i0 += whole * per
        b += whole
    if i1 > i0:
        out.append((b, b + 1, 0, i1 - i0))
    return out


class _Prepared:
    """Per-sample inputs of the engine, built for a group of consecutive samples at a time: the clean
    images, their replacement images and rank maps (the region order gathered to pixels once per
    sample, never per forward). A group holds about one forward's worth of samples, so memory beyond
    the caller's ``x`` stays within the budget whatever ``B``."""

    def __init__(self, build, group: int):
        self._build, self._group = build, max(1, group)
        self._g0 = self._g1 = 0
        self._data: tuple = ()

    def get(self, b0: int, b1: int, total: int) -> tuple:
        if not (self._g0 <= b0 and b1 <= self._g1):
            self._g0, self._g1 = b0, max(b1, min(total, b0 + self._group))
            self._data = self._build(self._g0, self._g1)
        s = slice(b0 - self._g0, b1 - self._g0)
        return tuple(t[s] for t in self._data)


def _check_output(out, n: int) -> None:
    if not isinstance(out, torch.Tensor) or out.dim() != 2 or out.shape[0] != n:
        raise ValueError(
            "the model must return class scores of shape (N, classes), got "
            f"{tuple(out.shape) if isinstance(out, torch.Tensor) else type(out).__name__}"
        )


def _pick(out: torch.Tensor, target: torch.Tensor, score: str, check: bool = False) -> torch.Tensor:
    """The ``target`` class's logit (or softmax probability) of ``(..., classes)`` scores; ``target``
    is ``(N,)`` for ``(N, classes)`` or ``(N, S, classes)`` scores (one class per row ``N``)."""
    if check and int(target.max()) >= out.shape[-1]:
        raise ValueError(f"target {int(target.max())} is out of range for {out.shape[-1]} classes")
    index = target.view(-1, *([1] * (out.dim() - 1))).expand(*out.shape[:-1], 1)
    picked = out.gather(-1, index).squeeze(-1)
    if score == "softmax":
        picked = torch.exp(picked - torch.logsumexp(out, dim=-1))
    return picked


_CLEAN_OPTIONS = ("max_batch_bytes", "batch_size", "autocast_dtype", "channels_last", "probe")


def _clean_logits(model: nn.Module, x: torch.Tensor, *, max_batch_bytes: int = DEFAULT_MAX_BATCH_BYTES,
                  batch_size: int | None = None, autocast_dtype: torch.dtype | None = None,
                  channels_last: bool = False, probe: bool = True) -> torch.Tensor:
    """``(B, classes)`` ``f(x)`` in chunks of the engine's size (float32, float64 for float64 ``x``)."""
    device = _model_device(model, x.device)
    value_dtype = torch.float64 if x.dtype == torch.float64 else torch.float32
    memory_format = torch.channels_last if channels_last else torch.contiguous_format
    autocast = (torch.autocast(device_type=device.type, dtype=autocast_dtype)
                if autocast_dtype is not None else contextlib.nullcontext())
    outs = []
    with eval_mode(model), torch.inference_mode(), autocast:
        example = x[:1].to(device).contiguous(memory_format=memory_format)
        chunk = _chunk_size(model, example, max_batch_bytes, batch_size, probe, device)
        for b0 in range(0, x.shape[0], chunk):
            xb = x[b0:b0 + chunk].to(device).contiguous(memory_format=memory_format)
            out = model(xb)
            _check_output(out, xb.shape[0])
            outs.append(out.to(value_dtype))
    return torch.cat(outs)


def region_perturbation(
    model: nn.Module,
    x: torch.Tensor,
    heatmap: torch.Tensor,
    *,
    region: int = 9,
    steps: int | None = None,
    fraction: float | None = None,
    order: str = "morf",
    perturbation: str = "uniform",
    low: float | torch.Tensor | None = None,
    high: float | torch.Tensor | None = None,
    value: float = 0.0,
    sigma: float = 2.0,
    target: int | torch.Tensor | None = None,
    score: str = "logit",
    seed: int = 0,
    sample_ids=None,
    offset: int = 0,
    step_stride: int = 1,
    max_batch_bytes: int = DEFAULT_MAX_BATCH_BYTES,
    batch_size: int | None = None,
    autocast_dtype: torch.dtype | None = None,
    channels_last: bool = False,
    probe: bool = True,
    clean_logits: torch.Tensor | None = None,
) -> PerturbationResult:
    """Region perturbation curves and AOPC of ``heatmap`` for ``model`` on ``x``.

    Parameters
    ----------
    model:
        Classifier returning ``(N, classes)`` scores; run in eval mode (each submodule's mode is
        restored afterwards) under ``torch.inference_mode()``.
    x:
        ``(B, C, H, W)`` float inputs in the model's input space (any device; moved per chunk).
    heatmap:
        ``(B, H, W)`` or ``(B, C', H, W)`` (summed over channels).
    region:
        Side of the square regions in pixels; the last row/column of the grid is smaller when H or W
        is not a multiple.
    steps, fraction:
        ``L``, the number of perturbation steps, given directly (``steps``, an int >= 1, at most the
        number of regions: :func:`resolve_steps`) or as the share of the image's regions perturbed (``fraction`` in (0, 1]:
        ``L = round(fraction * num_regions)``, see :func:`steps_for_fraction`). Neither given: the
        paper's protocol, ``fraction = DEFAULT_FRACTION = 0.16`` (the paper perturbs about 16 % of the
        image); ``fraction=1.0`` perturbs the whole image. Both given: they must give the same ``L``.
    order:
        ``morf``, ``lerf`` or ``random``.
    perturbation:
        ``uniform`` (the paper's; range from ``low``/``high`` or the model's declared input space),
        ``constant`` (``value``), ``mean``, ``blur`` (``sigma``) or ``black``; see
        :func:`replacement_images`. The replacement is fixed per sample over the steps.
    target:
        Class whose score is tracked: ``None`` = argmax of the clean logits; an int or ``(B,)`` tensor.
    score:
        ``logit`` (the paper's pre-softmax score) or ``softmax`` (probability).
    seed, sample_ids, offset:
        Random draws of a sample come from a generator seeded by ``(seed, sample id)``; sample ids
        are ``offset + index`` unless ``sample_ids`` (ints or strings, one per sample) are given.
    step_stride:
        ``s``: evaluate only steps ``0, s, 2s, ...`` and ``L``. The curve at the skipped steps is
        linearly interpolated between the neighbouring evaluated steps, so the AOPC sum over
        ``k = 0..L`` becomes a trapezoidal approximation; cost is about ``1/s`` of the full run.
        ``s = 1`` (default) is exact.
    max_batch_bytes, batch_size, probe:
        Memory budget of one forward (default 256 MiB) from which the number of (sample, step) items
        per forward is derived (see :func:`items_per_chunk`); ``batch_size`` caps it further
        (default on CPU: at most ``CPU_MAX_ITEMS`` = 256 items, where larger batches run slower). A
        forward holds the whole curves of ``chunk // K`` samples (``K`` evaluated steps), or, when
        the chunk is smaller than a curve, ``chunk`` steps of one sample. Results do not depend on
        them (up to the float non-associativity of batched kernels).
    autocast_dtype, channels_last:
        Run forwards under ``torch.autocast(dtype=autocast_dtype)`` (e.g. ``torch.bfloat16`` on CUDA)
        and/or feed channels-last inputs (convert the model itself with
        ``model.to(memory_format=torch.channels_last)``; relmon does not modify the model).
    clean_logits:
        Optional ``(B, classes)`` scores ``f(x)`` already computed (e.g. the logits of the explanation
        pass, :attr:`relmon.explain.Explanation.logits`): step 0 is then taken from them instead of
        being evaluated again, and ``target=None`` means their argmax.

    Scheduling: the ``(sample, step)`` items are packed into forwards of exactly the chunk size
    (except the last), across sample boundaries; each forward's inputs are built by at most three
    broadcast ``where`` calls from per-sample rank maps gathered once per sample.

    Returns
    -------
    PerturbationResult, its tensors on the model's device.
    """
    order = _check_choice(order, ORDERS, "order")
    perturbation = _check_choice(perturbation, PERTURBATIONS, "perturbation")
    score = _check_choice(score, SCORES, "score")
    h = _check_inputs(x, heatmap)
    b, c, height, width = x.shape
    region = _check_region(region, height, width)
    num_steps = resolve_steps(height, width, region, steps, fraction)
    if batch_size is not None and (not isinstance(batch_size, int) or batch_size < 1):
        raise ValueError(f"batch_size must be None or an int >= 1, got {batch_size!r}")
    ks = evaluated_steps(num_steps, step_stride)
    n_k = ks.numel()
    ids = _sample_ids(b, sample_ids, offset)

    lo = hi = None
    if perturbation == "uniform":
        lo, hi = input_bounds(model, c, low, high, needed_for="the 'uniform' perturbation of region_perturbation")

    device = _model_device(model, x.device)
    # (B, R) scores are small; the (H, W) rank maps are built per group of about one forward's
    # samples (see _Prepared) so that memory beyond the caller's x and heatmap stays within the budget.
    scores = region_scores(h, region)

    fixed_target = None
    if target is not None:
        fixed_target = torch.as_tensor(target, dtype=torch.int64).flatten()
        if fixed_target.numel() == 1:
            fixed_target = fixed_target.expand(b)
        if fixed_target.numel() != b:
            raise ValueError(f"target needs 1 or {b} class indices, got {fixed_target.numel()}")
        if bool((fixed_target < 0).any()):
            raise ValueError(f"target must hold class indices >= 0, got {fixed_target.tolist()}")
        fixed_target = fixed_target.to(device)

    autocast = (
        torch.autocast(device_type=device.type, dtype=autocast_dtype)
        if autocast_dtype is not None else contextlib.nullcontext()
    )
    memory_format = torch.channels_last if channels_last else torch.contiguous_format
    ks_dev = ks.to(device=device, dtype=torch.int32)  # same dtype as the rank map: no promotion
    # Scores are kept in float32, or float64 for float64 inputs (exact analytic checks).
    value_dtype = torch.float64 if x.dtype == torch.float64 else torch.float32
    values = torch.empty(b, n_k, device=device, dtype=value_dtype)
    tgt = fixed_target.clone() if fixed_target is not None else torch.zeros(b, dtype=torch.int64, device=device)

    def build(g0: int, g1: int) -> tuple:
        xs = x[g0:g1].to(device)
        noise = replacement_images(xs, perturbation, low=lo, high=hi, value=value, sigma=sigma,
                                   seed=seed, sample_ids=ids[g0:g1])
        perm = region_order(scores[g0:g1], order, seed=seed, sample_ids=ids[g0:g1])
        return xs, noise, rank_map(perm.to(device), height, width, region)

    with eval_mode(model), torch.inference_mode(), autocast:
        if clean_logits is not None:
            # Step 0 from the caller's f(x): only steps 1.. are evaluated.
            logits = torch.as_tensor(clean_logits).to(device=device, dtype=value_dtype)
            if logits.dim() != 2 or logits.shape[0] != b:
                raise ValueError(f"clean_logits must be (B, classes) = ({b}, classes) scores of x, got shape "
                                 f"{tuple(logits.shape)}; pass the logits of the same inputs or leave it None")
            if fixed_target is None:
                tgt.copy_(logits.argmax(dim=1))  # in place: tgt stays a normal (non-inference) tensor
            values[:, 0] = _pick(logits, tgt, score, check=fixed_target is not None)
            first = 1
        else:
            first = 0
        per = n_k - first  # evaluated items per sample
        example = x[:1].to(device).contiguous(memory_format=memory_format)
        chunk = _chunk_size(model, example, max_batch_bytes, batch_size, probe, device)
        prepared = _Prepared(build, math.ceil(chunk / max(1, per)) + 1)
        total = b * per
        buf = None
        for i0 in range(0, total, chunk):
            i1 = min(total, i0 + chunk)
            n = i1 - i0
            if buf is None or buf.shape[0] < n:
                buf = torch.empty((n, c, height, width), device=device, dtype=x.dtype, memory_format=memory_format)
            xk = buf[:n]
            runs = _runs(i0, i1, per)
            pos = 0
            for b0, b1, j0, j1 in runs:
                xs, noise, rs = prepared.get(b0, b1, b)
                nb, nj = b1 - b0, j1 - j0
                mask = rs.unsqueeze(1) < ks_dev[first + j0:first + j1].view(1, nj, 1, 1)
                torch.where(mask.unsqueeze(2), noise.unsqueeze(1), xs.unsqueeze(1),
                            out=xk[pos:pos + nb * nj].view(nb, nj, c, height, width))
                pos += nb * nj
            out = model(xk)
            _check_output(out, n)
            out = out.to(value_dtype)
            pos = 0
            for b0, b1, j0, j1 in runs:
                nb, nj = b1 - b0, j1 - j0
                rows = out[pos:pos + nb * nj].view(nb, nj, -1)
                if first + j0 == 0 and fixed_target is None:
                    # Step 0 (the clean input) opens every sample's first run: it fixes the target.
                    tgt[b0:b1] = rows[:, 0].argmax(dim=1)
                check = i0 == 0 and pos == 0 and fixed_target is not None
                values[b0:b1, first + j0:first + j1] = _pick(rows, tgt[b0:b1], score, check=check)
                pos += nb * nj

    curves = interpolate_curves(values, ks, num_steps)
    score0 = curves[:, 0].clone()
    aopc = aopc_from_curves(curves, score0)
    aopc_rel = torch.where(score0 > 0, aopc / score0, torch.full_like(aopc, float("nan")))
    return PerturbationResult(
        curves=curves, aopc=aopc, aopc_rel=aopc_rel, score0=score0, target=tgt, order=order,
        perturbation=perturbation, score=score, region=region, steps=ks,
    )


def evaluate_heatmaps(
    model: nn.Module,
    x: torch.Tensor,
    heatmap: torch.Tensor,
    *,
    orders: Sequence[str] = ("morf", "random", "lerf"),
    target: int | torch.Tensor | None = None,
    clean_logits: torch.Tensor | None = None,
    **kwargs,
) -> HeatmapEvaluation:
    """Run :func:`region_perturbation` for each of ``orders`` on the same samples.

    All orders share the target (that of the first order when ``target=None``) and the per-sample
    replacement images (same seed and sample ids), so ``aopc_minus_random`` compares like with like.
    The result gives per sample: ``aopc`` (MoRF), ``aopc_rel``, ``aopc_random``,
    ``aopc_minus_random``, ``aopc_lerf`` and ``abpc`` (those whose orders were run; else None).
    ``kwargs`` go to :func:`region_perturbation` (``region``, ``steps`` or ``fraction``,
    ``perturbation``, ...); without ``steps`` and ``fraction`` the paper's ``fraction = 0.16`` is used.

    ``f(x^(0))`` is evaluated once for all orders: from ``clean_logits`` when given (e.g. the
    explanation pass's logits), else by one chunked forward of ``x`` before the orders run.
    """
    if isinstance(orders, str):
        orders = (orders,)
    orders = [_check_choice(o, ORDERS, "order") for o in orders]
    if not orders:
        raise ValueError(f"orders must name at least one of {', '.join(ORDERS)}")
    if len(set(orders)) != len(orders):
        raise ValueError(f"orders must not repeat, got {orders}")
    if clean_logits is None:
        _check_inputs(x, heatmap)
        clean_logits = _clean_logits(model, x, **{k: kwargs[k] for k in _CLEAN_OPTIONS if k in kwargs})
    results: dict[str, PerturbationResult] = {}
    for order in orders:
        res = region_perturbation(model, x, heatmap, order=order, target=target, clean_logits=clean_logits,
                                  **kwargs)
        target = res.target if target is None else target
        results[order] = res
    return HeatmapEvaluation(results)


__all__ = [
    "CPU_MAX_ITEMS",
    "DEFAULT_FRACTION",
    "DEFAULT_MAX_BATCH_BYTES",
    "DEFAULT_STEPS",
    "ORDERS",
    "PERTURBATIONS",
    "SCORES",
    "HeatmapEvaluation",
    "PerturbationResult",
    "aopc_from_curves",
    "eval_mode",
    "evaluate_heatmaps",
    "evaluated_steps",
    "interpolate_curves",
    "items_per_chunk",
    "num_regions",
    "perturb",
    "rank_map",
    "region_index_map",
    "region_order",
    "region_perturbation",
    "region_scores",
    "replacement_images",
    "resolve_steps",
    "steps_for_fraction",
]
