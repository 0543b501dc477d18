"""Windows of a stream: which window each item belongs to, and a stream split into its windows.

``window_id`` is ``f"{stream}:{start}"``, where start is the first index of a count window
(``window_size=N``) or the UTC start time of a modification-time window (``window="mtime"``,
``window_seconds``). :func:`window_indices` / :func:`iter_windows` split a stream into its windows so a
job can process one window at a time; :func:`window_subset` keeps one window.
"""

from __future__ import annotations

import math
from collections.abc import Iterator
from datetime import datetime, timezone

from torch.utils.data import Dataset, Subset


class _Windows:
    """Window assignment shared by the streams: one window, count windows or mtime windows."""

    def __init__(self, stream: str, window: str | None, window_size: int | None, window_seconds: float):
        if not isinstance(stream, str) or not stream:
            raise ValueError(f"stream must be a non-empty name, got {stream!r}")
        if window is None:
            window = "count" if window_size is not None else None
        if window not in (None, "count", "mtime"):
            raise ValueError(f"window must be None, 'count' or 'mtime', got {window!r}")
        if window == "count":
            if isinstance(window_size, bool) or not isinstance(window_size, int) or window_size < 1:
                raise ValueError(f"window='count' needs window_size, a positive int, got {window_size!r}")
        elif window_size is not None:
            raise ValueError(f"window_size applies to count windows only, not to window={window!r}")
        if window == "mtime" and not (isinstance(window_seconds, (int, float)) and window_seconds > 0):
            raise ValueError(f"window_seconds must be a positive number of seconds, got {window_seconds!r}")
        self.stream = stream
        self.window = window
        self.window_size = window_size
        self.window_seconds = float(window_seconds)

    def key(self, index: int, mtime: float | None = None) -> tuple[float, str]:
        """``(sort key, window_id)`` of the item at ``index`` (with modification time ``mtime``)."""
        if self.window is None:
            return 0.0, f"{self.stream}:0"
        if self.window == "count":
            start = (index // self.window_size) * self.window_size
            return float(start), f"{self.stream}:{start}"
        start = math.floor(mtime / self.window_seconds) * self.window_seconds
        iso = datetime.fromtimestamp(start, tz=timezone.utc).strftime("%Y-%m-%dT%H:%M:%SZ")
        return float(start), f"{self.stream}:{iso}"


def window_indices(stream: Dataset) -> dict[str, list[int]]:
    """Window id → the stream indices in that window, windows in order of their start.

    Works without decoding anything (folder streams read only the listing). ``stream`` is one of the
    streams of this module or a :class:`~torch.utils.data.Subset` of one (indices then refer to the
    subset).
    """
    base, mapping = stream, None
    if isinstance(stream, Subset):
        base, mapping = stream.dataset, list(stream.indices)
    if not hasattr(base, "window_key"):
        raise TypeError(f"expected a relmon stream (or a Subset of one), got {type(stream).__name__}")
    n = len(mapping) if mapping is not None else len(base)
    groups: dict[str, list[int]] = {}
    starts: dict[str, float] = {}
    for i in range(n):
        start, wid = base.window_key(mapping[i] if mapping is not None else i)
        groups.setdefault(wid, []).append(i)
        starts.setdefault(wid, start)
    # sorted() is stable, so windows with equal starts keep their order of first appearance.
    return {wid: groups[wid] for wid in sorted(groups, key=starts.__getitem__)}


def iter_windows(stream: Dataset) -> Iterator[tuple[str, Subset]]:
    """Yield ``(window_id, Subset)`` for each window of ``stream``; the subsets decode lazily."""
    for wid, idx in window_indices(stream).items():
        yield wid, Subset(stream, idx)


def window_subset(stream: Dataset, window_id: str | None = None) -> Dataset:
    """``stream`` restricted to window ``window_id`` (a :class:`~torch.utils.data.Subset`); the stream
    itself for None. A ``KeyError`` names the stream's windows when it has no such window."""
    if window_id is None:
        return stream
    windows = window_indices(stream)
    if window_id not in windows:
        raise KeyError(f"window {window_id!r} is not in the stream; its windows: {list(windows)}")
    return Subset(stream, windows[window_id])
