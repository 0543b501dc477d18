"""Batches of stream items: :func:`collate_skip_bad` drops bad items from a batch while carrying
their ids in the batch itself (``n_bad``, ``bad_ids``, ``bad_reasons``; DataLoader workers are separate
processes whose counters the consumer never sees), and :func:`stream_loader` is a stream's DataLoader."""

from __future__ import annotations

import warnings
from collections.abc import Callable, Sequence
from typing import Any

import torch
from torch.utils.data import DataLoader, Dataset, default_collate

from relmon.data.decoding import NON_FINITE, SIZE_MISMATCH, BadInputWarning, BadSample
from relmon.data.windows import window_subset


def collate_skip_bad(items: Sequence[dict[str, Any] | BadSample | None]) -> dict[str, Any]:
    """Collate stream items, dropping bad ones (:class:`BadSample` or ``None``) but counting them.

    Returns ``{"x": (B, C, H, W), "sample_id": [str], "index": LongTensor (B,), "window_id": [str],
    "label": LongTensor (B,), "n_bad": int, "bad_ids": [str], "bad_reasons": [str]}``. When every
    item is bad the batch still comes back (so its ``n_bad`` reaches the consumer) with ``x = None``
    and empty ids; check ``batch["x"] is None`` (or :func:`is_empty_batch`).

    A last line of defence for datasets other than relmon's streams (which never produce these): a
    good item whose ``x`` holds NaN/inf is dropped as ``non_finite``, and one whose ``x`` has another
    shape than the batch's first good item is dropped as ``size_mismatch`` (both with a
    :class:`BadInputWarning`); the batch is never refused.
    """
    good, bad = [], []
    for it in items:
        if it is None or isinstance(it, BadSample):
            bad.append(it)
            continue
        x = it.get("x") if isinstance(it, dict) else None
        reason = None
        if isinstance(x, torch.Tensor):
            if x.is_floating_point() and not bool(torch.isfinite(x).all()):
                reason, error = NON_FINITE, "ValueError: the input holds NaN or infinite values"
            elif good and tuple(x.shape) != tuple(good[0]["x"].shape):
                reason, error = SIZE_MISMATCH, (
                    f"ValueError: shape {tuple(x.shape)} differs from the batch's {tuple(good[0]['x'].shape)}; "
                    "pass image_size= to the stream")
        if reason is None:
            good.append(it)
            continue
        sid = str(it.get("sample_id", "?"))
        warnings.warn(f"skipping {sid} ({reason}): {error}", BadInputWarning, stacklevel=2)
        bad.append(BadSample(sid, int(it.get("index", -1)), str(it.get("window_id", "")), reason, error))
    bad_ids = [b.sample_id for b in bad if b is not None]
    bad_reasons = [b.reason for b in bad if b is not None]
    if good:
        batch = default_collate(good)
    else:
        batch = {"x": None, "sample_id": [], "index": torch.zeros(0, dtype=torch.long),
                 "window_id": [], "label": torch.zeros(0, dtype=torch.long)}
    batch["n_bad"] = len(bad)
    batch["bad_ids"] = bad_ids
    batch["bad_reasons"] = bad_reasons
    return batch


def is_empty_batch(batch: dict[str, Any]) -> bool:
    """True for a batch of :func:`collate_skip_bad` in which every item was bad."""
    return batch.get("x") is None


def _check_loader_args(batch_size: int, num_workers: int) -> None:
    if isinstance(batch_size, bool) or not isinstance(batch_size, int) or batch_size < 1:
        raise ValueError(f"batch_size must be a positive int, got {batch_size!r}")
    if isinstance(num_workers, bool) or not isinstance(num_workers, int) or num_workers < 0:
        raise ValueError(f"num_workers must be an int >= 0, got {num_workers!r}")


def stream_loader(
    stream: Dataset,
    batch_size: int = 32,
    num_workers: int = 0,
    *,
    window_id: str | None = None,
    collate_fn: Callable[[list], Any] = collate_skip_bad,
    pin_memory: bool = False,
) -> DataLoader:
    """The DataLoader of a stream (or of its window ``window_id``): stream order, no shuffling,
    batches made by :func:`collate_skip_bad`. The same loader :class:`StreamDataModule` serves to
    Lightning; this function needs torch only."""
    _check_loader_args(batch_size, num_workers)
    return _loader(window_subset(stream, window_id), batch_size, num_workers, collate_fn, pin_memory)


def _loader(stream: Dataset, batch_size: int, num_workers: int, collate_fn, pin_memory: bool) -> DataLoader:
    return DataLoader(
        stream,
        batch_size=batch_size,
        shuffle=False,
        num_workers=num_workers,
        collate_fn=collate_fn,
        pin_memory=pin_memory,
        persistent_workers=False,
    )
