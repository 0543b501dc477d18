"""Unlabeled input streams: folders of images (local or any fsspec URL) and in-memory tensors.

Every stream is a map-style :class:`torch.utils.data.Dataset` whose items are dicts::

    {"x": FloatTensor (C, H, W) in the model's input space, "sample_id": str, "index": int,
     "window_id": str, "label": int (-1 when unknown)}

A folder stream lists file paths once and decodes lazily, so nothing holds a whole stream in memory.
A bad input never ends a run: its item is a :class:`BadSample` (the dataset warns and counts it), and
:func:`collate_skip_bad` drops it from the batch while carrying its id in the batch itself
(``n_bad``, ``bad_ids``, ``bad_reasons``), because DataLoader workers are separate processes whose
counters the consumer never sees. The reasons (:data:`INPUT_ERROR_REASONS`, the ``reason`` label of
``relmon_input_errors_total``):

- ``read_error``: the file cannot be read; ``decode_error``: it is not a decodable PNG/JPEG (decoded by
  Pillow, so a corrupt file raises a Python error and prints nothing on stderr);
- ``too_large``: its header declares more than ``max_pixels`` pixels (default 50 megapixels); the size
  is read from the header before anything is decoded, so a small file that would decode to a huge
  image (a "decompression bomb") costs no memory;
- ``size_mismatch``: with ``size_policy="skip"``, an image whose size differs from the stream's
  reference size (below);
- ``non_finite``: the input holds NaN or ±inf (a tensor stream, or a ``transform`` that made them).

Image sizes (folder streams): with ``image_size`` every image is resized to it (bilinear,
antialiased, aspect ratio not kept) — pass the model's input size. Without it the reference size is
that of the stream's first image in listing order whose header can be read; an image of another
size is resized to it (``size_policy="resize"``, the default; a :class:`ResizedInputWarning` names
the first one) or skipped and counted as ``size_mismatch`` (``size_policy="skip"``). Either way
every batch has one size and a window is never aborted by one odd image.

Windows: ``window_id`` is ``f"{stream}:{start}"``, where start is the first index of a
count window (``window_size=N``) or the UTC start time of a modification-time window
(``window="mtime"``, ``window_seconds``). :func:`window_indices` / :func:`iter_windows` split a stream
into its windows so a job can process one window at a time.

This module holds the streams and their listing; the concepts around them have their own modules,
whose names it re-exports: :mod:`relmon.data.decoding` (decoding and the bad-input taxonomy),
:mod:`relmon.data.windows`, :mod:`relmon.data.batching` (:func:`collate_skip_bad`,
:func:`stream_loader`) and :mod:`relmon.data.datamodule` (``StreamDataModule``, Lightning).
"""

from __future__ import annotations

import math
import os
import warnings
from collections import Counter
from collections.abc import Callable, Sequence
from datetime import datetime, timezone
from typing import Any

import numpy as np
import torch
from torch.utils.data import Dataset

# the decoding, windows and batching of streams live in their own modules; re-exported here
from relmon.data.batching import (  # noqa: F401
    _check_loader_args,
    _loader,
    collate_skip_bad,
    is_empty_batch,
    stream_loader,
)
from relmon.data.decoding import (  # noqa: F401
    DECODE_ERROR,
    DEFAULT_MAX_PIXELS,
    INPUT_ERROR_REASONS,
    NON_FINITE,
    READ_ERROR,
    SIZE_MISMATCH,
    TOO_LARGE,
    BadInputWarning,
    BadSample,
    ImageTooLargeError,
    ResizedInputWarning,
    _decode,
    _decode_pil,
    _header_size,
    _open_image,
    _to_unit_float,
    pixel_ceiling,
)
from relmon.data.safe_read import DEFAULT_MAX_FILE_BYTES
from relmon.data.windows import _Windows, iter_windows, window_indices, window_subset  # noqa: F401
from relmon.names import escape_name
from relmon.preprocessing import Preprocessing

IMAGE_EXTENSIONS = (".png", ".jpg", ".jpeg")
SIZE_POLICIES = ("resize", "skip")
# fs.info keys that hold a modification (or, failing that, creation) time, most specific first:
# local and sftp give "mtime", s3fs "LastModified", gcsfs "updated", adlfs "last_modified",
# memory:// only "created".
_MTIME_KEYS = ("mtime", "LastModified", "last_modified", "updated", "modified", "created", "ctime")


# ---------------------------------------------------------------------------------------------------
# windows


class _Stream(Dataset):
    """Base of the streams: ``window_id(index)``, ``window_key(index)`` and the bad-input counters."""

    _windows: _Windows
    errors: Counter
    bad_files: dict

    @property
    def stream(self) -> str:
        return self._windows.stream

    @property
    def n_bad(self) -> int:
        """Bad inputs met by this process (with DataLoader workers, count the batches' ``n_bad``)."""
        return sum(self.errors.values())

    def _sample_id(self, index: int) -> str:
        raise NotImplementedError

    def _bad(self, index: int, reason: str, exc: BaseException) -> BadSample:
        sid = self._sample_id(index)
        error = f"{type(exc).__name__}: {exc}"
        self.errors[reason] += 1
        self.bad_files[sid] = f"{reason}: {error}"
        warnings.warn(f"skipping {sid} ({reason}): {error}", BadInputWarning, stacklevel=3)
        return BadSample(sid, index, self.window_id(index), reason, error)

    def _check_finite(self, index: int, x: torch.Tensor) -> BadSample | None:
        if x.is_floating_point() and not bool(torch.isfinite(x).all()):
            n = int((~torch.isfinite(x)).sum())
            return self._bad(index, NON_FINITE, ValueError(
                f"{n} of {x.numel()} values are NaN or infinite; the input is left out"))
        return None

    def window_key(self, index: int) -> tuple[float, str]:
        return self._windows.key(index)

    def window_id(self, index: int) -> str:
        return self.window_key(index)[1]


# ---------------------------------------------------------------------------------------------------
# conversions


def _check_channels(preprocessing: Preprocessing | None, channels: int, what: str) -> None:
    if preprocessing is None:
        return
    if not isinstance(preprocessing, Preprocessing):
        raise TypeError(f"preprocessing must be a relmon Preprocessing, got {type(preprocessing).__name__}")
    for name in ("mean", "std"):
        n = len(getattr(preprocessing, name))
        if n not in (1, channels):
            raise ValueError(
                f"channels mismatch: {what} has {channels} channel(s) but the preprocessing {name} has {n} "
                f"values; expected 1 or {channels}"
            )


def _normalize(x: torch.Tensor, preprocessing: Preprocessing | None) -> torch.Tensor:
    return x if preprocessing is None else preprocessing.normalize(x.unsqueeze(0))[0]


def _image_size(image_size: int | Sequence[int] | None) -> tuple[int, int] | None:
    if image_size is None:
        return None
    size = (image_size, image_size) if isinstance(image_size, int) else tuple(image_size)
    if len(size) != 2 or not all(isinstance(s, int) and not isinstance(s, bool) and s > 0 for s in size):
        raise ValueError(f"image_size must be a positive int or (height, width), got {image_size!r}")
    return size


def _mtime(info: dict, path: str) -> float:
    for key in _MTIME_KEYS:
        value = info.get(key)
        if value is None:
            continue
        if isinstance(value, datetime):
            if value.tzinfo is None:  # fsspec back-ends report UTC
                value = value.replace(tzinfo=timezone.utc)
            return value.timestamp()
        if isinstance(value, str):
            try:
                return _mtime({key: datetime.fromisoformat(value.replace("Z", "+00:00"))}, path)
            except ValueError:
                continue
        if isinstance(value, (int, float)):
            return float(value)
    raise ValueError(
        f"cannot tell the modification time of {path}: its file system reports only {sorted(info)} "
        f"(looked for {list(_MTIME_KEYS)}); use count windows (window_size=N) instead"
    )


def _mtime_or_nan(info: dict, path: str) -> float:
    try:
        return _mtime(info, path)
    except ValueError:
        return math.nan


def file_signatures(found: dict[str, dict]) -> dict[str, tuple[int | None, float | None]]:
    """``{path: (size, mtime)}`` of an ``fs.find(path, detail=True)`` listing (None where the file system
    does not report one)."""
    out = {}
    for p, info in found.items():
        try:
            mtime = _mtime(info, p)
        except ValueError:
            mtime = None
        size = info.get("size")
        out[p] = (None if size is None else int(size), mtime)
    return out


# ---------------------------------------------------------------------------------------------------
# streams


class ImageFolderStream(_Stream):
    """Image files under ``root`` (nested folders, sorted by path), decoded lazily.

    Parameters
    ----------
    root:
        A local folder or an fsspec URL (``s3://bucket/prefix``, ``memory://imgs`` …).
    transform:
        Called last on each ``(C, H, W)`` tensor (after resizing and normalisation).
    preprocessing:
        The model's :class:`~relmon.preprocessing.Preprocessing`; images are scaled to
        ``[0, 1]`` and normalised with it. Without it ``x`` is the image in ``[0, 1]``.
    image_size:
        ``int`` (square) or ``(height, width)``: resize every image (bilinear, antialiased, aspect
        ratio not kept) — the model's input size. Without it, see ``size_policy``.
    size_policy:
        Without ``image_size``, what happens to an image whose size differs from the reference size
        (that of the stream's first image, in listing order, whose header can be read): ``"resize"``
        (default) resizes it to the reference size, ``"skip"`` skips it and counts it as
        ``size_mismatch``.
    max_pixels:
        Largest image (width × height, from the header, before decoding) accepted; larger ones are
        skipped and counted as ``too_large``. Default 50 megapixels; at most :func:`pixel_ceiling`
        (Pillow's own limit, which relmon does not change); ``None`` means that ceiling.
    channels:
        1 (grey) or 3 (RGB); every image is converted to it.
    window, window_size, window_seconds, stream:
        Window assignment: ``window_size=N`` (count windows, id ``f"{stream}:{first_index}"``),
        ``window="mtime"`` (id ``f"{stream}:{UTC start}"``, start = floor(mtime / window_seconds) ·
        window_seconds), or neither (one window ``f"{stream}:0"``).
    storage_options:
        Passed to the fsspec file system (credentials, endpoints); kept in :attr:`storage_options`.
    listing:
        ``{path: info}`` of the files under ``root`` as ``fs.find(path, detail=True)`` gives it, when
        the caller has just listed the folder (``relmon serve --watch``): the stream then does not
        list it again. The sizes and modification times of the listed files are kept in
        :attr:`file_info` (``{path: (size, mtime)}``) either way.

    ``sample_id`` is the file's path (local) or URL. A file that cannot be used (unreadable,
    undecodable, too large, skipped for its size, non-finite after ``transform``) yields a
    :class:`BadSample` (warned with :class:`BadInputWarning`, counted per reason in :attr:`errors`
    and named in :attr:`bad_files` of this process); :func:`collate_skip_bad` drops it. Resized
    images are counted in :attr:`n_resized`; the first :attr:`MAX_RESIZED_IDS` of them are named in
    :attr:`resized` (sample_id → original ``(H, W)``), so a long ``serve --watch`` run keeps a bounded
    record.
    """

    #: How many resized images :attr:`resized` names (the count :attr:`n_resized` has no bound).
    MAX_RESIZED_IDS = 100

    def __init__(
        self,
        root: str | os.PathLike,
        transform: Callable[[torch.Tensor], torch.Tensor] | None = None,
        preprocessing: Preprocessing | None = None,
        image_size: int | Sequence[int] | None = None,
        channels: int = 1,
        extensions: Sequence[str] = IMAGE_EXTENSIONS,
        *,
        stream: str = "default",
        window: str | None = None,
        window_size: int | None = None,
        window_seconds: float = 3600.0,
        storage_options: dict[str, Any] | None = None,
        size_policy: str = "resize",
        max_pixels: int | None = DEFAULT_MAX_PIXELS,
        listing: dict[str, dict] | None = None,
        target_size: int | Sequence[int] | None = None,
        max_file_bytes: int = DEFAULT_MAX_FILE_BYTES,
        deadline: float | None = None,
    ):
        import fsspec

        if size_policy not in SIZE_POLICIES:
            raise ValueError(f"size_policy must be 'resize' or 'skip', got {size_policy!r}")
        ceiling = pixel_ceiling()
        if max_pixels is None:
            max_pixels = ceiling
        elif isinstance(max_pixels, bool) or not isinstance(max_pixels, int) or max_pixels < 1:
            raise ValueError(f"max_pixels must be a positive int (width x height) or None, got {max_pixels!r}")
        elif ceiling is not None and max_pixels > ceiling:
            raise ValueError(
                f"max_pixels={max_pixels:,} is above Pillow's own limit of {ceiling:,} pixels "
                "(2 x PIL.Image.MAX_IMAGE_PIXELS), which relmon does not change; raise PIL.Image.MAX_IMAGE_PIXELS "
                "in your program first if you really need larger images"
            )
        if channels not in (1, 3):
            raise ValueError(f"channels must be 1 (grey) or 3 (RGB), got {channels!r}")
        if isinstance(max_file_bytes, bool) or not isinstance(max_file_bytes, int) or max_file_bytes < 1:
            raise ValueError(f"max_file_bytes must be a positive int, got {max_file_bytes!r}")
        _check_channels(preprocessing, channels, f"ImageFolderStream(channels={channels})")
        if isinstance(extensions, str):
            extensions = (extensions,)
        exts = tuple(e.lower() if e.startswith(".") else "." + e.lower() for e in extensions)
        if not exts:
            raise ValueError("extensions must name at least one file extension, e.g. ('.png',)")
        self._windows = _Windows(stream, window, window_size, window_seconds)
        self.root = os.fspath(root)
        self.transform = transform
        self.preprocessing = preprocessing
        self.image_size = _image_size(image_size)
        self.target_size = _image_size(target_size)
        self.max_file_bytes = max_file_bytes
        self.deadline = deadline  # a time.monotonic() value: reads stop there (run_timeout_seconds)
        self.channels = channels
        self.extensions = exts
        self.size_policy = size_policy
        self.max_pixels = max_pixels

        from relmon.data.file_listing import list_images, listing_from_find

        self.storage_options = dict(storage_options or {})
        fs, path = fsspec.core.url_to_fs(self.root, **self.storage_options)
        if listing and path.rstrip("/") not in listing:  # the caller's listing of a folder holding files
            files = listing_from_find(path, dict(listing), exts, _mtime_or_nan)
        elif not fs.exists(path):
            raise FileNotFoundError(
                f"image folder {self.root!r} does not exist; expected a folder (local path or fsspec URL) "
                f"holding image files ({', '.join(exts)}), possibly in nested folders"
            )
        elif not fs.isdir(path):
            raise NotADirectoryError(
                f"{self.root!r} is a file; expected a folder holding image files ({', '.join(exts)})"
            )
        else:
            # one lazy walk: paths, sizes and modification times held compactly (no per-file dict), so a
            # folder of millions of files lists in bounded memory (relmon.data.file_listing)
            files = list_images(self.root, exts, storage_options=self.storage_options,
                                with_info=self._windows.window == "mtime", mtime_of=_mtime_or_nan)
        paths = files.paths
        if not paths:
            from relmon.data.file_listing import EmptyFolderError

            raise EmptyFolderError(
                f"no images found under {self.root!r}: looked recursively for files ending in "
                f"{', '.join(exts)} (case-insensitive) and found {files.others} other file(s); fix: write the "
                "images to score there (relmon monitor --empty-ok exits 0 on an empty folder)"
            )
        self._fs = fs
        self._files = files
        self._no_file_info = False
        self._root_path = path.rstrip("/")
        self._paths = paths
        self._mtimes = None
        if self._windows.window == "mtime":
            missing = np.flatnonzero(~np.isfinite(files.mtimes))
            if missing.size:  # the file system reports no time: the error names what it reports
                p = paths[int(missing[0])]
                _mtime(fs.info(p), p)
            self._mtimes = files.mtimes
        local = fsspec.utils.get_protocol(self.root) in ("file", "local")
        # ids are printable UTF-8: a name that is not UTF-8 or holds control characters is escaped
        self._ids = [escape_name(p) for p in (paths if local else [fs.unstrip_protocol(p) for p in paths])]
        self.errors: Counter[str] = Counter()  # reason → count, in this process only
        self.bad_files: dict[str, str] = {}  # sample_id → "reason: error", in this process only
        self.resized: dict[str, tuple[int, int]] = {}  # sample_id → original (H, W): the first MAX_RESIZED_IDS
        self.n_resized = 0  # resized images, in this process only
        self._reference: tuple[str, tuple[int, int]] | None = None

    def __len__(self) -> int:
        return len(self._paths)

    @property
    def sample_ids(self) -> list[str]:
        return list(self._ids)

    @property
    def file_info(self) -> dict[str, tuple[int | None, float | None]]:
        """``{path: (size, mtime)}`` of the listed images (None where unknown), built on demand (a local
        folder listed without sizes and times is stat-ed then: only-new scoring needs them)."""
        if self._no_file_info:
            return None
        if self._files.sizes is None:
            from relmon.data.file_listing import list_images

            again = list_images(self.root, self.extensions, storage_options=self.storage_options, with_info=True,
                                mtime_of=_mtime_or_nan)
            known = dict(zip(again.paths, zip(again.sizes.tolist(), again.mtimes.tolist(), strict=True), strict=True))
            sizes = [known.get(p, (-1, math.nan)) for p in self._paths]
            self._files.sizes = np.asarray([v[0] for v in sizes], dtype=np.int64)
            self._files.mtimes = np.asarray([v[1] for v in sizes], dtype=np.float64)
        return self._files.signatures()

    @file_info.deleter
    def file_info(self) -> None:  # a stream without its own listing: only-new scoring lists the folder itself
        self._no_file_info = True

    def relative_path(self, index: int) -> str:
        """The path of image ``index`` relative to the root (``/`` separators): what ``shard`` hashes."""
        return self._paths[index][len(self._root_path):].lstrip("/")

    def window_key(self, index: int) -> tuple[float, str]:
        mtime = None if self._mtimes is None else self._mtimes[index]
        return self._windows.key(index, mtime)

    def _sample_id(self, index: int) -> str:
        return self._ids[index]

    def reference_size(self) -> tuple[int, int] | None:
        """``(H, W)`` the images are brought to: ``image_size``, else ``target_size`` (the model's input
        size), else the header of the stream's first readable file (read within ``max_file_bytes``)."""
        if self.image_size is not None:
            return self.image_size
        if self.target_size is not None:
            return self.target_size
        if self._reference is None:
            for i, path in enumerate(self._paths):
                try:
                    size = _header_size(self._read(path), self.max_pixels)
                except Exception:  # unreadable, special, corrupt or too large: not a reference
                    continue
                self._reference = (f"the size of the stream's first image {self._ids[i]}", size)
                break
            else:
                return None
        return self._reference[1]

    def _reference_name(self) -> str:
        return "the model's input size" if self.target_size is not None else self._reference[0]

    def _read(self, path: str) -> bytes:
        """The file's bytes: regular files only, at most ``max_file_bytes``, stopped at ``deadline``."""
        from relmon.data.safe_read import read_bounded

        return read_bounded(self._fs, path, self.max_file_bytes, self.deadline)

    def __getitem__(self, index: int) -> dict[str, Any] | BadSample:
        index = int(index)
        if not 0 <= index < len(self._paths):
            raise IndexError(f"index {index} out of range for a stream of {len(self._paths)} images")
        try:
            data = self._read(self._paths[index])
        except Exception as exc:  # a vanished, unreadable or special file must not end the run
            return self._bad(index, READ_ERROR, exc)
        target = self.reference_size()
        try:
            size = _header_size(data, self.max_pixels)  # (H, W) from the header: nothing decoded yet
            target = target or size
            if size != target and self.image_size is None and self.size_policy == "skip":
                return self._bad(index, SIZE_MISMATCH, ValueError(
                    f"the image is {size[0]}x{size[1]}, the stream's reference size is {target[0]}x{target[1]} "
                    f"({self._reference_name()}); pass image_size= or size_policy='resize' to resize"))
            img = _decode(data, self.channels, self.max_pixels, target)
        except ImageTooLargeError as exc:
            return self._bad(index, TOO_LARGE, exc)
        except Exception as exc:  # Pillow raises OSError/ValueError/SyntaxError... for bad bytes
            return self._bad(index, DECODE_ERROR, exc)
        x = _to_unit_float(img)
        if tuple(x.shape[-2:]) != target:
            if self.image_size is None and not self.n_resized:
                warnings.warn(
                    f"{self._ids[index]} is {size[0]}x{size[1]}; resized to {target[0]}x{target[1]}, "
                    f"{self._reference_name()} (pass image_size= to choose the size, or "
                    "size_policy='skip' to skip such images); further resizes are counted in .n_resized",
                    ResizedInputWarning, stacklevel=2)
            self.n_resized += 1
            if len(self.resized) < self.MAX_RESIZED_IDS or self._ids[index] in self.resized:
                self.resized[self._ids[index]] = size
            x = torch.nn.functional.interpolate(
                x.unsqueeze(0), size=target, mode="bilinear", align_corners=False, antialias=True
            )[0]
        x = _normalize(x, self.preprocessing)
        if self.transform is not None:
            x = self.transform(x)
        bad = self._check_finite(index, x)
        if bad is not None:
            return bad
        return {"x": x, "sample_id": self._ids[index], "index": index,
                "window_id": self.window_id(index), "label": -1}


class TensorStream(_Stream):
    """A stream over images held in memory: a tensor or NumPy array ``(N, C, H, W)`` or ``(N, H, W)``.

    uint8 images are scaled to ``[0, 1]``; float images are taken as ``[0, 1]`` when ``preprocessing``
    is given, else as already in the model's input space. ``preprocessing`` then normalises each
    item as it is read (the stored array is never copied). ``labels`` (``N`` ints) default to -1,
    ``ids`` (``N`` strings) to the index as a string. Count windows with ``window_size=N``.

    An image holding NaN or ±inf is a :class:`BadSample` (reason ``non_finite``, warned with
    :class:`BadInputWarning`, counted in :attr:`errors`), so one bad image never fails a batch.
    """

    def __init__(
        self,
        x: torch.Tensor | np.ndarray,
        labels: torch.Tensor | np.ndarray | Sequence[int] | None = None,
        ids: Sequence[str] | None = None,
        preprocessing: Preprocessing | None = None,
        *,
        stream: str = "default",
        window_size: int | None = None,
    ):
        if isinstance(x, np.ndarray):
            x = torch.from_numpy(x if x.flags.writeable else x.copy())
        if not isinstance(x, torch.Tensor):
            raise TypeError(f"x must be a torch.Tensor or numpy.ndarray, got {type(x).__name__}")
        if x.ndim == 3:
            x = x.unsqueeze(1)
        if x.ndim != 4:
            raise ValueError(
                f"expected images shaped (N, C, H, W) or (N, H, W), got an array of rank {x.ndim} "
                f"with shape {tuple(x.shape)}"
            )
        if not (x.dtype == torch.uint8 or x.is_floating_point()):
            raise TypeError(f"images must be uint8 or floating point, got {x.dtype}")
        n = x.shape[0]
        _check_channels(preprocessing, x.shape[1], f"the input {tuple(x.shape)}")
        if labels is not None:
            labels = torch.as_tensor(np.asarray(labels)).long().flatten()
            if labels.numel() != n:
                raise ValueError(f"labels holds {labels.numel()} values for {n} images")
        if ids is not None:
            ids = [str(i) for i in ids]
            if len(ids) != n:
                raise ValueError(f"ids holds {len(ids)} values for {n} images")
            if len(set(ids)) != n:
                raise ValueError("ids must be unique")
        self._windows = _Windows(stream, None, window_size, 3600.0)
        self.x = x
        self.labels = labels
        self.ids = ids
        self.preprocessing = preprocessing
        self.errors: Counter[str] = Counter()  # reason → count, in this process only
        self.bad_files: dict[str, str] = {}  # sample_id → "reason: error", in this process only

    def __len__(self) -> int:
        return self.x.shape[0]

    def _sample_id(self, index: int) -> str:
        return self.ids[index] if self.ids is not None else str(index)

    def __getitem__(self, index: int) -> dict[str, Any] | BadSample:
        index = int(index)
        if not 0 <= index < len(self):
            raise IndexError(f"index {index} out of range for a stream of {len(self)} images")
        x = self.x[index]
        if x.dtype == torch.uint8:
            x = x.float().div_(255.0)
        elif x.dtype != torch.float32:
            x = x.float()
        x = _normalize(x, self.preprocessing)
        bad = self._check_finite(index, x)
        if bad is not None:
            return bad
        return {
            "x": x,
            "sample_id": self._sample_id(index),
            "index": index,
            "window_id": self.window_id(index),
            "label": int(self.labels[index]) if self.labels is not None else -1,
        }


def fashion_mnist_stream(
    split: str = "test",
    root: str | os.PathLike | None = None,
    n: int | None = None,
    use_sample: bool = False,
    *,
    stream: str = "default",
    window_size: int | None = None,
) -> TensorStream:
    """Fashion-MNIST as a :class:`TensorStream`, normalised with its MEAN/STD, labels kept.

    ``use_sample=True`` reads the 2,000 test images shipped with relmon (``split`` must be ``test``);
    otherwise :func:`~relmon.data.fashion_mnist.load_fashion_mnist` reads ``root``. ``n`` keeps the
    first ``n`` images.
    """
    from relmon.data.fashion_mnist import MEAN, STD, load_fashion_mnist, load_sample

    if use_sample:
        if split != "test":
            raise ValueError(f"the shipped sample holds test images only; got split={split!r}")
        images, labels = load_sample()
    else:
        images, labels = load_fashion_mnist(split, root)
    if n is not None:
        if n < 0:
            raise ValueError(f"n must be >= 0, got {n}")
        images, labels = images[:n], labels[:n]
    return TensorStream(
        images, labels, preprocessing=Preprocessing(mean=MEAN, std=STD), stream=stream, window_size=window_size
    )


def __getattr__(name: str):
    # StreamDataModule is a LightningDataModule, made on first use (relmon.data.datamodule), so that
    # importing this module (and the job's plain runner, which uses stream_loader) does not import
    # pytorch_lightning.
    if name == "StreamDataModule":
        from relmon.data import datamodule

        return datamodule.StreamDataModule
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
