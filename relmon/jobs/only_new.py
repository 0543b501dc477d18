"""Only-new scoring (``only_new: true``) and the lock of a records folder.

The state is a JSON file ``<records>/<stream>/.relmon-state.json`` mapping every input file already
handled (scored, skipped by sampling, or bad) to its ``[size, mtime]``. A run scores only files whose
``(size, mtime)`` differs from the state (new or changed files), and the job writes the state
**after** the records and every output succeeded (atomically, temporary file + ``os.replace``): a run
that crashes or is stopped leaves the state as it was, so the next run scores those files again
(records may then hold a file twice, under two ``run_id`` values; nothing is lost).

Concurrent runs on the same records folder and stream take an exclusive ``fcntl`` lock on
``<records>/<stream>/.relmon.lock`` for the whole run when ``only_new`` is set (the second waits, then
sees the first one's state). Without ``only_new`` no lock is needed: every run writes its own file.
"""

from __future__ import annotations

import fcntl
import json
import os
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

from torch.utils.data import Dataset

from relmon.data.streams import file_signatures
from relmon.jobs.signals import check
from relmon.records import atomic_write

STATE_FILE = ".relmon-state.json"
LOCK_FILE = ".relmon.lock"
STATE_FORMAT = "relmon-only-new"


def stream_folder(records: str | os.PathLike, stream: str) -> Path:
    """``<records>/<folder_name(stream)>``: letters, digits, ``_-.`` kept, anything else (and a leading
    ``.``) percent-encoded, so two stream names never share a folder (:func:`relmon.names.folder_name`)."""
    from relmon.names import folder_name

    return Path(records) / folder_name(stream)


class StateError(ValueError):
    """The only-new state file cannot be used (the message names the file and the fix)."""


def find_files(root: str, storage_options: dict | None = None) -> dict[str, dict]:
    """One listing of the local folder or fsspec URL ``root``: ``fs.find(path, detail=True)``
    (``{fs path: info}``), which an :class:`~relmon.data.streams.ImageFolderStream` accepts as its
    ``listing`` so the folder is not listed twice."""
    import fsspec

    fs, path = fsspec.core.url_to_fs(root, **(storage_options or {}))
    return fs.find(path, detail=True)


def listing(root: str, storage_options: dict | None = None) -> dict[str, tuple[int | None, float | None]]:
    """``{fs path: (size, mtime)}`` of every file under the local folder or fsspec URL ``root``."""
    return file_signatures(find_files(root, storage_options))


class NewFiles(Dataset):
    """The items of an :class:`~relmon.data.streams.ImageFolderStream` at ``indices`` (the new files).

    ``errors`` and ``bad_files`` are the base stream's (bad files are counted where they are read).
    """

    def __init__(self, base, indices: list[int]):
        self.base = base
        self.indices = list(indices)

    def __len__(self) -> int:
        return len(self.indices)

    def __getitem__(self, i: int) -> Any:
        return self.base[self.indices[i]]

    @property
    def errors(self):
        return self.base.errors

    @property
    def bad_files(self):
        return self.base.bad_files


class SeenFiles:
    """The files already handled: persisted in ``path`` (JSON) or, with ``path=None``, in memory only
    (``relmon serve`` without a records folder)."""

    def __init__(self, path: str | os.PathLike | None):
        self.path = None if path is None else Path(path)
        self.files: dict[str, list] = {}
        self.pending: dict[str, list] = {}
        self.reload()

    def reload(self) -> None:
        if self.path is None or not self.path.exists():
            return
        try:
            data = json.loads(self.path.read_text())
        except (OSError, UnicodeDecodeError, json.JSONDecodeError) as err:
            raise StateError(
                f"the only-new state {str(self.path)!r} cannot be read ({err}); fix: delete it (the next "
                "run then scores every file again)"
            ) from None
        files = data.get("files") if isinstance(data, dict) else None
        if not isinstance(data, dict) or data.get("format") != STATE_FORMAT or not isinstance(files, dict):
            raise StateError(
                f"{str(self.path)!r} is not a relmon only-new state (expected a JSON object with "
                f"format {STATE_FORMAT!r} and 'files'); fix: delete it (the next run then scores every "
                "file again)"
            )
        self.files = {str(k): list(v) for k, v in files.items()}

    def select(self, stream, current: dict[str, tuple] | None = None) -> NewFiles:
        """The files of ``stream`` (an ImageFolderStream) that are new or changed; remembers them as
        pending until :meth:`commit`.

        ``current`` (``{path: (size, mtime)}``) defaults to the sizes and times of the stream's own
        listing (its ``file_info``), so the folder is listed once per run; a stream without one is
        listed again with its ``storage_options``.
        """
        if not hasattr(stream, "_paths") or not hasattr(stream, "root"):
            raise StateError(
                f"only_new needs a folder or fsspec URL of image files, got a {type(stream).__name__}; "
                "fix: set only_new: false"
            )
        if current is None:
            current = getattr(stream, "file_info", None)
        if current is None:
            current = listing(stream.root, getattr(stream, "storage_options", None))
        ids = stream.sample_ids
        indices, pending = [], {}
        for i, p in enumerate(stream._paths):
            sig = list(current.get(p, (None, None)))
            if self.files.get(ids[i]) != sig or sig == [None, None]:
                indices.append(i)
                pending[ids[i]] = sig
        self.pending = pending
        self._present = set(ids)
        return NewFiles(stream, indices)

    def commit(self) -> None:
        """Mark the pending files as handled and write the state atomically (after a successful run)."""
        present = getattr(self, "_present", None)
        if not self.pending and (present is None or set(self.files) <= present):
            return
        kept = self.files if present is None else {k: v for k, v in self.files.items() if k in present}
        files = {**kept, **self.pending}  # files gone from the input are forgotten (the state stays small)
        if self.path is not None:
            text = json.dumps({"format": STATE_FORMAT, "files": files}, indent=0, sort_keys=True)
            atomic_write(self.path, lambda tmp: Path(tmp).write_text(text))
        self.files, self.pending = files, {}

    def discard(self) -> None:
        self.pending = {}


@contextmanager
def folder_lock(folder: str | os.PathLike, timeout: float | None = None,
                on_wait: Callable[[], None] | None = None) -> Iterator[Path]:
    """An exclusive ``fcntl`` lock on ``folder/.relmon.lock``; waits while another run holds it.

    The wait polls, so SIGTERM/SIGINT (:mod:`relmon.jobs.signals`) stop it; with ``timeout`` seconds it
    gives up with a :class:`StateError` naming the lock file. ``on_wait`` is called once when the lock
    is held by another run (what was read before the wait may be stale by the time it is acquired).
    """
    folder = Path(folder)
    folder.mkdir(parents=True, exist_ok=True)
    path = folder / LOCK_FILE
    start = time.monotonic()
    with open(path, "a+") as f:
        while True:
            try:
                fcntl.flock(f.fileno(), fcntl.LOCK_EX | fcntl.LOCK_NB)
                break
            except BlockingIOError:
                if on_wait is not None:
                    on_wait()
                    on_wait = None
                check()  # a stop request or the run deadline ends the wait
                if timeout is not None and time.monotonic() - start > timeout:
                    raise StateError(
                        f"another relmon run holds {str(path)!r} (only_new on the same records folder and "
                        f"stream) for more than {timeout:g} s; fix: wait for it, or stop it"
                    ) from None
                time.sleep(0.1)
        try:
            yield path
        finally:
            fcntl.flock(f.fileno(), fcntl.LOCK_UN)


__all__ = ["LOCK_FILE", "STATE_FILE", "NewFiles", "SeenFiles", "StateError", "find_files", "folder_lock", "listing",
           "stream_folder"]
