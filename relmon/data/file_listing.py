"""A listing of image files that scales to millions of entries: listed lazily, held compactly.

:func:`list_images` walks a folder (local: ``os.scandir``, one directory at a time; any other fsspec
URL: ``fs.walk``, one directory's entries at a time) and keeps, per image file, only its path and —
when asked — its size and modification time, in a :class:`FileListing` (a sorted ``list`` of paths and
two NumPy arrays: about 100 bytes per file plus the path's characters, no per-file dict). Nothing is
opened or decoded. A local walk does not even ``stat`` a file unless sizes or times are asked for.

:func:`select_indices` samples a listing *before decoding* (DESIGN §2b): a file is kept iff its
``selection_hash(seed, sample_id) < sample_rate`` (the hash the scorer uses), and at most
``max_samples`` per window, the first ones in listing order. :func:`shard_indices` keeps the files of
shard ``I/N`` (:func:`relmon.runs.shard_of` on the path relative to the root). Both work on the
sample ids alone, so a stream of 10 million files decodes only what is scored.
"""

from __future__ import annotations

import os
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np


class EmptyFolderError(ValueError):
    """The input folder holds no image file: an empty window (``relmon monitor`` exits 6, not 3)."""


@dataclass
class FileListing:
    """The image files under a root: ``paths`` sorted, with ``sizes`` (int64, -1 = unknown) and ``mtimes``
    (float64 seconds, NaN = unknown) aligned to them when the walk asked for them (else None)."""

    root: str
    paths: list[str]
    sizes: np.ndarray | None = None
    mtimes: np.ndarray | None = None
    others: int = 0  # files of other extensions seen (named in the error when no image is found)

    def __len__(self) -> int:
        return len(self.paths)

    def relative(self, index: int) -> str:
        """Path of file ``index`` relative to the root, with ``/`` separators."""
        path, root = self.paths[index], self.root.rstrip("/")
        rel = path[len(root):] if path.startswith(root) else path
        return rel.replace(os.sep, "/").lstrip("/")

    def signatures(self) -> dict[str, tuple[int | None, float | None]]:
        """``{path: (size, mtime)}`` (None where unknown), built on demand (only-new scoring needs it)."""
        out = {}
        for i, p in enumerate(self.paths):
            size = None if self.sizes is None or self.sizes[i] < 0 else int(self.sizes[i])
            mtime = None if self.mtimes is None or not np.isfinite(self.mtimes[i]) else float(self.mtimes[i])
            out[p] = (size, mtime)
        return out


def _has_ext(name: str, extensions: tuple[str, ...]) -> bool:
    return os.path.splitext(name)[1].lower() in extensions


def _walk_local(root: str, extensions: tuple[str, ...], stat: bool, others: list[int]):
    """Yield ``(path, size, mtime)`` of the image files under a local ``root``, one directory at a time."""
    stack = [root]
    while stack:
        folder = stack.pop()
        try:
            entries = os.scandir(folder)
        except OSError:
            continue
        with entries:
            for entry in entries:
                try:
                    if entry.is_dir(follow_symlinks=False):
                        stack.append(entry.path)
                        continue
                    if not entry.is_file() and not (_has_ext(entry.name, extensions) and os.path.exists(entry.path)):
                        continue  # a FIFO, device or socket named like an image is listed: the stream
                        # refuses to read it and counts it as read_error (relmon.data.safe_read)
                    if not _has_ext(entry.name, extensions):
                        others[0] += 1
                        continue
                    if stat:
                        st = entry.stat()
                        yield entry.path, st.st_size, st.st_mtime
                    else:
                        yield entry.path, -1, float("nan")
                except OSError:  # vanished meanwhile: not listed
                    continue


def list_images(root: str | os.PathLike, extensions: Sequence[str], *, storage_options: dict | None = None,
                with_info: bool = False, mtime_of: Callable[[dict, str], float] | None = None) -> FileListing:
    """The image files (``extensions``, lower-case with the dot) under ``root``, sorted by path.

    A local folder is walked one directory at a time (``os.scandir``); ``with_info`` adds sizes and
    modification times (``stat``), without it only directory entries are read. Any other fsspec URL is
    listed with one ``fs.find`` (flat and paginated on object stores), sizes and times always kept
    (``mtime_of(info, path)`` reads the time from an info dict). Paths are local absolute paths, or the
    file system's paths (no protocol).
    """
    import fsspec

    root = os.fspath(root)
    exts = tuple(extensions)
    fs, path = fsspec.core.url_to_fs(root, **(storage_options or {}))
    others = [0]
    if fsspec.utils.get_protocol(root) not in ("file", "local"):
        # an object store lists flat and fast with one find (paginated), sizes and times included: keep
        # them (free), but only compactly (the info dicts are dropped as they are read)
        return listing_from_find(path, fs.find(path, detail=True), exts, mtime_of or _no_mtime)
    rows = _walk_local(path, exts, with_info, others)  # fsspec's absolute path: the ids fs.find gives
    base = path
    paths: list[str] = []
    sizes: list[int] = []
    mtimes: list[float] = []
    for p, size, mtime in rows:
        paths.append(p)
        if with_info:
            sizes.append(size)
            mtimes.append(mtime)
    if not with_info:
        paths.sort()  # in place: no second list of a million strings
        return FileListing(base, paths, others=others[0])
    idx = np.asarray(sorted(range(len(paths)), key=paths.__getitem__), dtype=np.int64)
    out = FileListing(base, [paths[i] for i in idx], others=others[0])
    out.sizes = np.asarray(sizes, dtype=np.int64)[idx] if len(idx) else np.zeros(0, np.int64)
    out.mtimes = np.asarray(mtimes, dtype=np.float64)[idx] if len(idx) else np.zeros(0, np.float64)
    return out


def _no_mtime(info: dict, path: str) -> float:
    return float("nan")


def listing_from_find(root: str, found: dict[str, dict], extensions: Sequence[str],
                      mtime_of: Callable[[dict, str], float]) -> FileListing:
    """A :class:`FileListing` of an ``fs.find(path, detail=True)`` result (an object store's listing, or
    the one ``relmon serve`` makes once per iteration and hands on); ``found`` is emptied as it is read."""
    exts = tuple(extensions)
    total = len(found)
    rows = []
    while found:
        p, info = found.popitem()
        if info.get("type", "file") in ("file", "other") and _has_ext(p, exts):  # "other": counted as read_error
            rows.append((p, -1 if info.get("size") is None else int(info["size"]), mtime_of(info, p)))
    rows.sort()
    paths = [r[0] for r in rows]
    sizes = np.asarray([r[1] for r in rows], dtype=np.int64)
    mtimes = np.asarray([r[2] for r in rows], dtype=np.float64)
    return FileListing(root, paths, sizes, mtimes, others=total - len(paths))


def select_indices(sample_ids: Sequence[str], window_ids: Sequence[str] | Callable[[int], str] | None = None, *,
                   seed: int = 0, sample_rate: float = 1.0, max_samples: int | None = None,
                   candidates: Sequence[int] | None = None) -> list[int]:
    """Indices of the files to decode and score: the scorer's seeded selection done on the ids alone.

    A file is kept iff ``selection_hash(seed, sample_id) < sample_rate``; then at most ``max_samples``
    per window (``window_ids``: a sequence or ``index -> window id``; None: one window), the first in
    the order of ``candidates`` (default: all, in listing order). A capped file that turns out to be
    unreadable is not replaced: the window scores fewer files (sampling happens before decoding).
    """
    from relmon.scoring import selection_hash

    order = range(len(sample_ids)) if candidates is None else candidates
    window_of: Callable[[int], Any]
    if window_ids is None:
        window_of = lambda i: ""  # noqa: E731
    elif callable(window_ids):
        window_of = window_ids
    else:
        window_of = window_ids.__getitem__
    counts: dict[Any, int] = {}
    out = []
    for i in order:
        if sample_rate < 1.0 and selection_hash(seed, sample_ids[i]) >= sample_rate:
            continue
        if max_samples is not None:
            w = window_of(i)
            if counts.get(w, 0) >= max_samples:
                continue
            counts[w] = counts.get(w, 0) + 1
        out.append(i)
    return out


def shard_indices(relative_paths: Sequence[str] | Callable[[int], str], n: int, shard: tuple[int, int]) -> list[int]:
    """Indices ``0 .. n-1`` whose relative path falls in shard ``(I, N)`` (:func:`relmon.runs.shard_of`)."""
    from relmon.runs import shard_of

    index, count = shard
    rel = relative_paths if callable(relative_paths) else relative_paths.__getitem__
    if count == 1:
        return list(range(n))
    return [i for i in range(n) if shard_of(rel(i), count) == index]


def item_keys(stream) -> tuple[Any, Callable[[int], str], Callable[[int], str], Callable[[int], str]]:
    """``(base stream, sample id of i, window id of i, relative path of i)`` for the items of ``stream``
    (a relmon stream, a :class:`~torch.utils.data.Subset` of one, or an only-new selection), read from
    the listing alone: nothing is opened or decoded."""
    from torch.utils.data import Subset

    maps: list[Sequence[int]] = []
    base = stream
    while isinstance(base, Subset) or (hasattr(base, "base") and hasattr(base, "indices")):
        maps.append(base.indices)
        base = base.dataset if isinstance(base, Subset) else base.base

    def resolve(i: int) -> int:
        for m in reversed(maps):
            i = m[i]
        return i

    def sample_id(i: int) -> str:
        return base._sample_id(resolve(i))

    def window_id(i: int) -> str:
        return base.window_id(resolve(i))

    def relative(i: int) -> str:
        j = resolve(i)
        rel = getattr(base, "relative_path", None)
        return rel(j) if rel is not None else base._sample_id(j)

    return base, sample_id, window_id, relative


def plan_indices(stream, *, seed: int = 0, sample_rate: float = 1.0, max_samples: int | None = None,
                 candidates: Sequence[int] | None = None,
                 shard: tuple[int, int] | None = None) -> tuple[list[int], int]:
    """Which items of ``stream`` a run decodes and scores: ``(indices, not_selected)``.

    The ``candidates`` (a window's indices, e.g. from :func:`relmon.data.streams.window_indices`; all
    items by default), sampled by :func:`select_indices` (rate, then the per-window cap in stream
    order), then those of shard ``(I, N)`` (:func:`shard_indices`). ``not_selected`` counts the
    candidates of this shard that the sampling left out (never read, counted as seen by the job).
    Deterministic: every rank and shard computes the same plan.
    """
    _, sid, wid, rel = item_keys(stream)
    n = len(stream)
    candidates = range(n) if candidates is None else candidates
    if sample_rate >= 1.0 and max_samples is None:
        chosen = list(candidates)
    else:
        chosen = select_indices(_Lazy(sid, n), wid, seed=seed, sample_rate=sample_rate, max_samples=max_samples,
                                candidates=candidates)
    total = len(candidates)
    if shard is not None and shard[1] > 1:
        index, count = shard
        from relmon.runs import shard_of

        in_shard = {i for i in candidates if shard_of(rel(i), count) == index}
        total = len(in_shard)
        chosen = [i for i in chosen if i in in_shard]
    return chosen, total - len(chosen)


class _Lazy:
    """A read-only sequence view ``i -> f(i)`` of length ``n``."""

    def __init__(self, f: Callable[[int], str], n: int):
        self.f, self.n = f, n

    def __len__(self) -> int:
        return self.n

    def __getitem__(self, i: int) -> str:
        return self.f(i)


__all__ = ["FileListing", "item_keys", "list_images", "listing_from_find", "plan_indices", "select_indices",
           "shard_indices"]
