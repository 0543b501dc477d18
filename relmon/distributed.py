"""The few collective steps a job needs under DDP (``devices``/``num_nodes`` > 1 with Lightning).

Lightning starts the ranks (its subprocess launcher re-runs the same ``relmon`` command with
``LOCAL_RANK``/``NODE_RANK`` set; ``torchrun`` or SLURM set ``RANK``) and sets up the process group in
``Trainer.predict``. After the predict loop the group is still up, and the job uses it to:

- agree on the run id (:func:`broadcast`, rank 0's),
- gather every rank's records frame and input counts on every rank (:func:`gather`), so rank 0
  computes the window's summary, estimates and drift from all of them,
- check before scoring that every rank listed the same inputs (:func:`check_same`): a file that
  arrives between two ranks' listings would otherwise shift the distributed sampler's split.

Without a process group every function is the one-process identity.
"""

from __future__ import annotations

import hashlib
import os
from collections.abc import Iterable
from typing import Any


def env_rank() -> int:
    """This process's global rank as the launcher's environment tells it before any process group
    exists (0 for the process the user started): ``RANK``, else ``NODE_RANK``/``LOCAL_RANK`` > 0
    means a rank other than 0."""
    for name in ("RANK",):
        if os.environ.get(name, "").isdigit():
            return int(os.environ[name])
    local = int(os.environ.get("LOCAL_RANK", "0") or 0)
    node = int(os.environ.get("NODE_RANK", "0") or 0)
    return 0 if (local == 0 and node == 0) else max(1, local + node)


def _group():
    import torch.distributed as dist

    if dist.is_available() and dist.is_initialized():
        return dist
    return None


def rank_and_world() -> tuple[int, int]:
    """``(rank, world size)`` of the process group; ``(0, 1)`` without one."""
    dist = _group()
    if dist is None:
        return 0, 1
    return dist.get_rank(), dist.get_world_size()


def gather(obj: Any) -> list[Any]:
    """Every rank's ``obj`` (picklable), in rank order, on every rank; ``[obj]`` without a process group."""
    dist = _group()
    if dist is None:
        return [obj]
    out: list[Any] = [None] * dist.get_world_size()
    dist.all_gather_object(out, obj)
    return out


def broadcast(obj: Any) -> Any:
    """Rank 0's ``obj`` on every rank."""
    dist = _group()
    if dist is None:
        return obj
    box = [obj]
    dist.broadcast_object_list(box, src=0)
    return box[0]


def fingerprint(ids: Iterable[str]) -> str:
    """A digest of a sequence of sample ids (order matters)."""
    h = hashlib.sha256()
    for s in ids:
        h.update(str(s).encode())
        h.update(b"\0")
    return h.hexdigest()


def check_same(value: str, what: str) -> None:
    """Raise ``ValueError`` on every rank unless every rank passes the same ``value``."""
    values = gather(value)
    if len(set(values)) > 1:
        differ = [r for r, v in enumerate(values) if v != values[0]]
        raise ValueError(
            f"the ranks do not agree on {what}: rank(s) {differ} differ from rank 0 (the input changed while "
            "the ranks listed it); fix: run again, or score a window that no longer changes (mtime windows, "
            "a folder per window)")


__all__ = ["broadcast", "check_same", "env_rank", "fingerprint", "gather", "rank_and_world"]
