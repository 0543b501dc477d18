"""Reading one input file without letting it hang, flood or slow down a run.

A folder stream reads files it did not make. :func:`read_bounded` reads one of them so that

- anything that is not a regular file after following links (a FIFO, which blocks ``open`` until a
  writer comes; a device such as ``/dev/zero``, endless; a socket) is refused **without being opened
  for reading** (:class:`NotRegularFileError`): a local file is opened with ``O_NONBLOCK`` and checked
  with ``fstat`` on that very descriptor (no window between the check and the read), a remote one by
  its listing's ``type``;
- at most ``max_bytes`` are read (:class:`FileTooLargeError`, checked on the size before reading and
  again while reading, for a file that grows);
- a run deadline (a ``time.monotonic()`` value) stops the read between chunks (:class:`ReadDeadlineError`).

All three are ``OSError`` subclasses: the stream counts them as ``read_error``.

:func:`shrink_for` brings a lazily opened PIL image close to the size it will be resized to *before*
it is converted to floats (JPEG: the decoder's ``draft`` mode; other formats: ``reduce`` by an integer
factor), so a 7000x7000 image bound for 28x28 never becomes a 196 MB float tensor.
"""

from __future__ import annotations

import os
import stat
import time

#: Default largest input file read (bytes): 64 MiB.
DEFAULT_MAX_FILE_BYTES = 64 * 1024 * 1024
_CHUNK = 1 << 20


class NotRegularFileError(OSError):
    """The path is not a regular file after following links (FIFO, device, socket, folder); not opened."""


class FileTooLargeError(OSError):
    """The file holds more than ``max_file_bytes`` bytes; not read past that."""


class ReadDeadlineError(OSError):
    """The run deadline (``run_timeout_seconds``) passed while the file was being read."""


def _kind(mode: int) -> str:
    for test, name in ((stat.S_ISFIFO, "a FIFO (named pipe)"), (stat.S_ISCHR, "a character device"),
                       (stat.S_ISBLK, "a block device"), (stat.S_ISSOCK, "a socket"), (stat.S_ISDIR, "a folder")):
        if test(mode):
            return name
    return "not a regular file"


def _not_regular(kind: str) -> NotRegularFileError:
    return NotRegularFileError(
        f"{kind}, not a regular file (links followed); it was not read; fix: keep only image files in the "
        "input folder"
    )


def _too_large(size: int, max_bytes: int, growing: bool = False) -> FileTooLargeError:
    return FileTooLargeError(
        f"the file holds {'more than ' if growing else ''}{size:,} bytes, above max_file_bytes="
        f"{max_bytes:,}; it was not read (raise max_file_bytes to accept such files)"
    )


def _deadline_passed(deadline: float | None) -> bool:
    return deadline is not None and time.monotonic() > deadline


def _deadline_error() -> ReadDeadlineError:
    return ReadDeadlineError("the run deadline (run_timeout_seconds) passed while the file was being read")


def is_local(fs) -> bool:
    """True for fsspec's local file system."""
    protocol = getattr(fs, "protocol", ())
    protocols = (protocol,) if isinstance(protocol, str) else tuple(protocol)
    return "file" in protocols or "local" in protocols


def read_local(path: str, max_bytes: int, deadline: float | None = None) -> bytes:
    """The bytes of the local regular file ``path`` (see the module docstring)."""
    if _deadline_passed(deadline):
        raise _deadline_error()
    # O_NONBLOCK: opening a FIFO for reading returns at once instead of waiting for a writer
    fd = os.open(path, os.O_RDONLY | os.O_NONBLOCK | getattr(os, "O_CLOEXEC", 0))
    try:
        st = os.fstat(fd)
        if not stat.S_ISREG(st.st_mode):
            raise _not_regular(_kind(st.st_mode))
        if st.st_size > max_bytes:
            raise _too_large(st.st_size, max_bytes)
        os.set_blocking(fd, True)
        chunks, total = [], 0
        while True:
            chunk = os.read(fd, min(_CHUNK, max_bytes + 1 - total))
            if not chunk:
                break
            chunks.append(chunk)
            total += len(chunk)
            if total > max_bytes:  # the file grew while being read
                raise _too_large(max_bytes, max_bytes, growing=True)
            if _deadline_passed(deadline):
                raise _deadline_error()
        return b"".join(chunks)
    finally:
        os.close(fd)


def read_bounded(fs, path: str, max_bytes: int = DEFAULT_MAX_FILE_BYTES, deadline: float | None = None,
                 info: dict | None = None) -> bytes:
    """The bytes of ``path`` on the fsspec file system ``fs``, at most ``max_bytes``, refusing anything
    that is not a regular file (``info``: the file's listing entry, for remote file systems)."""
    if is_local(fs):
        return read_local(path, max_bytes, deadline)
    if info is not None:
        kind = info.get("type")
        if kind not in (None, "file"):
            raise _not_regular(f"listed as {kind!r}")
        size = info.get("size")
        if isinstance(size, int) and size > max_bytes:
            raise _too_large(size, max_bytes)
    if _deadline_passed(deadline):
        raise _deadline_error()
    chunks, total = [], 0
    with fs.open(path, "rb") as f:
        while True:
            chunk = f.read(min(_CHUNK, max_bytes + 1 - total))
            if not chunk:
                break
            chunks.append(chunk)
            total += len(chunk)
            if total > max_bytes:
                raise _too_large(max_bytes, max_bytes, growing=True)
            if _deadline_passed(deadline):
                raise _deadline_error()
    return b"".join(chunks)


def shrink_for(img, target: tuple[int, int] | None):
    """``img`` (a lazily opened PIL image) reduced, before it is fully decoded into memory where the
    format allows, to at least twice ``target`` = ``(H, W)`` in both sides; unchanged when it is not at
    least four times larger (the final antialiased resize then starts from at least 2x its size)."""
    if target is None:
        return img
    th, tw = target
    w, h = img.size
    factor = min(w // (2 * tw), h // (2 * th))
    if factor < 2:
        return img
    if getattr(img, "format", None) == "JPEG":  # the decoder itself scales by 1/2, 1/4 or 1/8
        img.draft(img.mode, (2 * tw, 2 * th))
        w2, h2 = img.size
        factor = min(w2 // (2 * tw), h2 // (2 * th))
        if factor < 2:
            return img
    return img.reduce(factor)


__all__ = [
    "DEFAULT_MAX_FILE_BYTES",
    "FileTooLargeError",
    "NotRegularFileError",
    "ReadDeadlineError",
    "is_local",
    "read_bounded",
    "read_local",
    "shrink_for",
]
