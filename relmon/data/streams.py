"""Unlabeled input streams: folders of images (local or any fsspec URL) and in-memory tensors.

Every stream is a map-style :class:`torch.utils.data.Dataset` whose items are dicts::

    {"x": FloatTensor (C, H, W) in the model's input space, "sample_id": str, "index": int,
     "window_id": str, "label": int (-1 when unknown)}

A folder stream lists file paths once and decodes lazily, so nothing holds a whole stream in memory.
An unreadable or corrupt file never ends a run: its item is a :class:`BadSample` (the dataset warns
and counts it), and :func:`collate_skip_bad` drops it from the batch while carrying its id in the
batch itself (``n_bad``, ``bad_ids``, ``bad_reasons``), because DataLoader workers are separate
processes whose counters the consumer never sees.

Windows (DESIGN §2a): ``window_id`` is ``f"{stream}:{start}"``, where start is the first index of a
count window (``window_size=N``) or the UTC start time of a modification-time window
(``window="mtime"``, ``window_seconds``). :func:`window_indices` / :func:`iter_windows` split a stream
into its windows so a job can process one window at a time.
"""

from __future__ import annotations

import math
import os
import warnings
from collections import Counter
from collections.abc import Callable, Iterator, Sequence
from datetime import datetime, timezone
from typing import Any, NamedTuple

import numpy as np
import pytorch_lightning as pl
import torch
from torch.utils.data import DataLoader, Dataset, Subset, default_collate

from relmon.models.preprocessing import Preprocessing

IMAGE_EXTENSIONS = (".png", ".jpg", ".jpeg")
# Closed set of reasons, usable as the ``reason`` label of ``relmon_input_errors_total``.
READ_ERROR = "read_error"
DECODE_ERROR = "decode_error"
# fs.info keys that hold a modification (or, failing that, creation) time, most specific first:
# local and sftp give "mtime", s3fs "LastModified", gcsfs "updated", adlfs "last_modified",
# memory:// only "created".
_MTIME_KEYS = ("mtime", "LastModified", "last_modified", "updated", "modified", "created", "ctime")


class BadInputWarning(UserWarning):
    """An input file could not be read or decoded; it is skipped and counted."""


class BadSample(NamedTuple):
    """The item a stream returns for an input it cannot read; dropped by :func:`collate_skip_bad`."""

    sample_id: str
    index: int
    window_id: str
    reason: str  # READ_ERROR or DECODE_ERROR
    error: str


# ---------------------------------------------------------------------------------------------------
# windows


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


class _Stream(Dataset):
    """Base of the streams: ``window_id(index)`` and ``window_key(index)``."""

    _windows: _Windows

    @property
    def stream(self) -> str:
        return self._windows.stream

    def window_key(self, index: int) -> tuple[float, str]:
        return self._windows.key(index)

    def window_id(self, index: int) -> str:
        return self.window_key(index)[1]


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


def _to_unit_float(x: torch.Tensor) -> torch.Tensor:
    if x.dtype == torch.uint8:
        return x.float().div_(255.0)
    if x.dtype == torch.uint16:  # 16-bit PNG
        return x.to(torch.int32).float().div_(65535.0)
    return x.float()


def _decode(data: bytes, channels: int) -> torch.Tensor:
    """Encoded image bytes → uint8 (or uint16) tensor ``(channels, H, W)``."""
    try:
        from torchvision.io import ImageReadMode, decode_image
    except ImportError:  # torchvision without its image codecs (deprecated since 0.29): PIL decodes
        return _decode_pil(data, channels)
    buf = torch.frombuffer(bytearray(data), dtype=torch.uint8)
    mode = ImageReadMode.GRAY if channels == 1 else ImageReadMode.RGB
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", DeprecationWarning)  # torchvision 0.29 deprecates its codecs
        return decode_image(buf, mode=mode)


def _decode_pil(data: bytes, channels: int) -> torch.Tensor:
    import io

    from PIL import Image

    with Image.open(io.BytesIO(data)) as img:
        arr = np.asarray(img.convert("L" if channels == 1 else "RGB"))
    arr = arr[None] if arr.ndim == 2 else arr.transpose(2, 0, 1)
    return torch.from_numpy(np.array(arr, dtype=np.uint8, copy=True))


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
        The model's :class:`~relmon.models.preprocessing.Preprocessing`; images are scaled to
        ``[0, 1]`` and normalised with it. Without it ``x`` is the image in ``[0, 1]``.
    image_size:
        ``int`` (square) or ``(height, width)``: resize every image (bilinear, antialiased).
        Needed when the folder mixes image sizes and batches hold more than one image.
    channels:
        1 (grey) or 3 (RGB); every image is converted to it.
    window, window_size, window_seconds, stream:
        Window assignment: ``window_size=N`` (count windows, id ``f"{stream}:{first_index}"``),
        ``window="mtime"`` (id ``f"{stream}:{UTC start}"``, start = floor(mtime / window_seconds) ·
        window_seconds), or neither (one window ``f"{stream}:0"``).
    storage_options:
        Passed to the fsspec file system (credentials, endpoints).

    ``sample_id`` is the file's path (local) or URL. A file that cannot be read or decoded yields a
    :class:`BadSample` (warned with :class:`BadInputWarning`, counted in :attr:`errors` and
    :attr:`bad_files` of this process); :func:`collate_skip_bad` drops it.
    """

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
    ):
        import fsspec

        if channels not in (1, 3):
            raise ValueError(f"channels must be 1 (grey) or 3 (RGB), got {channels!r}")
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
        self.channels = channels
        self.extensions = exts

        fs, path = fsspec.core.url_to_fs(self.root, **(storage_options or {}))
        if not fs.exists(path):
            raise FileNotFoundError(
                f"image folder {self.root!r} does not exist; expected a folder (local path or fsspec URL) "
                f"holding image files ({', '.join(exts)}), possibly in nested folders"
            )
        if not fs.isdir(path):
            raise NotADirectoryError(
                f"{self.root!r} is a file; expected a folder holding image files ({', '.join(exts)})"
            )
        with_mtime = self._windows.window == "mtime"
        found = fs.find(path, detail=with_mtime)
        names = sorted(found)
        paths = [p for p in names if os.path.splitext(p)[1].lower() in exts]
        if not paths:
            raise ValueError(
                f"no images found under {self.root!r}: looked recursively for files ending in "
                f"{', '.join(exts)} (case-insensitive) and found {len(names)} other file(s)"
            )
        self._fs = fs
        self._paths = paths
        self._mtimes = [_mtime(found[p], p) for p in paths] if with_mtime else None
        local = fsspec.utils.get_protocol(self.root) in ("file", "local")
        self._ids = paths if local else [fs.unstrip_protocol(p) for p in paths]
        self.errors: Counter[str] = Counter()  # reason → count, in this process only
        self.bad_files: dict[str, str] = {}  # sample_id → "reason: error", in this process only

    def __len__(self) -> int:
        return len(self._paths)

    @property
    def sample_ids(self) -> list[str]:
        return list(self._ids)

    @property
    def n_bad(self) -> int:
        """Bad files met by this process (with DataLoader workers, count the batches' ``n_bad``)."""
        return sum(self.errors.values())

    def window_key(self, index: int) -> tuple[float, str]:
        mtime = None if self._mtimes is None else self._mtimes[index]
        return self._windows.key(index, mtime)

    def _bad(self, index: int, reason: str, exc: BaseException) -> BadSample:
        sid = self._ids[index]
        error = f"{type(exc).__name__}: {exc}"
        self.errors[reason] += 1
        self.bad_files[sid] = f"{reason}: {error}"
        warnings.warn(f"skipping {sid} ({reason}): {error}", BadInputWarning, stacklevel=2)
        return BadSample(sid, index, self.window_id(index), reason, error)

    def __getitem__(self, index: int) -> dict[str, Any] | BadSample:
        index = int(index)
        if not 0 <= index < len(self._paths):
            raise IndexError(f"index {index} out of range for a stream of {len(self._paths)} images")
        try:
            with self._fs.open(self._paths[index], "rb") as f:
                data = f.read()
        except Exception as exc:  # a vanished or unreadable file must not end the run
            return self._bad(index, READ_ERROR, exc)
        try:
            img = _decode(data, self.channels)
        except Exception as exc:  # the decoders raise RuntimeError/OSError/ValueError for bad bytes
            return self._bad(index, DECODE_ERROR, exc)
        x = _to_unit_float(img)
        if self.image_size is not None and tuple(x.shape[-2:]) != self.image_size:
            x = torch.nn.functional.interpolate(
                x.unsqueeze(0), size=self.image_size, mode="bilinear", align_corners=False, antialias=True
            )[0]
        x = _normalize(x, self.preprocessing)
        if self.transform is not None:
            x = self.transform(x)
        return {"x": x, "sample_id": self._ids[index], "index": index,
                "window_id": self.window_id(index), "label": -1}


class TensorStream(_Stream):
    """A stream over images held in memory: a tensor or NumPy array ``(N, C, H, W)`` or ``(N, H, W)``.

    uint8 images are scaled to ``[0, 1]``; float images are taken as ``[0, 1]`` when ``preprocessing``
    is given, else as already in the model's input space. ``preprocessing`` then normalises each
    item as it is read (the stored array is never copied). ``labels`` (``N`` ints) default to -1,
    ``ids`` (``N`` strings) to the index as a string. Count windows with ``window_size=N``.
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

    def __len__(self) -> int:
        return self.x.shape[0]

    def __getitem__(self, index: int) -> dict[str, Any]:
        index = int(index)
        if not 0 <= index < len(self):
            raise IndexError(f"index {index} out of range for a stream of {len(self)} images")
        x = self.x[index]
        if x.dtype == torch.uint8:
            x = x.float().div_(255.0)
        elif x.dtype != torch.float32:
            x = x.float()
        x = _normalize(x, self.preprocessing)
        return {
            "x": x,
            "sample_id": self.ids[index] if self.ids is not None else str(index),
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


# ---------------------------------------------------------------------------------------------------
# batching


def collate_skip_bad(items: Sequence[dict[str, Any] | BadSample | None]) -> dict[str, Any]:
    """Collate stream items, dropping bad ones (:class:`BadSample` or ``None``) but counting them.

    Returns ``{"x": (B, C, H, W), "sample_id": [str], "index": LongTensor (B,), "window_id": [str],
    "label": LongTensor (B,), "n_bad": int, "bad_ids": [str], "bad_reasons": [str]}``. When every
    item is bad the batch still comes back (so its ``n_bad`` reaches the consumer) with ``x = None``
    and empty ids; check ``batch["x"] is None`` (or :func:`is_empty_batch`).
    """
    good = [it for it in items if it is not None and not isinstance(it, BadSample)]
    bad = [it for it in items if it is None or isinstance(it, BadSample)]
    bad_ids = [b.sample_id for b in bad if b is not None]
    bad_reasons = [b.reason for b in bad if b is not None]
    if good:
        shapes = {tuple(it["x"].shape) for it in good if isinstance(it.get("x"), torch.Tensor)}
        if len(shapes) > 1:
            raise ValueError(
                f"images in one batch differ in shape {sorted(shapes)}; pass image_size= to the stream "
                "(or use batch_size=1)"
            )
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


class StreamDataModule(pl.LightningDataModule):
    """Serve a stream (or a :class:`~torch.utils.data.Subset` of one) to ``Trainer.predict``/``validate``.

    Order is deterministic (no shuffling); under DDP Lightning adds its own distributed sampler.
    ``window_id`` restricts the loaders to one window of the stream. Batches are made by
    :func:`collate_skip_bad`.
    """

    def __init__(
        self,
        stream: Dataset,
        batch_size: int = 32,
        num_workers: int = 0,
        *,
        window_id: str | None = None,
        collate_fn: Callable[[list], Any] = collate_skip_bad,
        pin_memory: bool = False,
    ):
        super().__init__()
        if isinstance(batch_size, bool) or not isinstance(batch_size, int) or batch_size < 1:
            raise ValueError(f"batch_size must be a positive int, got {batch_size!r}")
        if isinstance(num_workers, bool) or not isinstance(num_workers, int) or num_workers < 0:
            raise ValueError(f"num_workers must be an int >= 0, got {num_workers!r}")
        if window_id is not None:
            windows = window_indices(stream)
            if window_id not in windows:
                raise KeyError(f"window {window_id!r} is not in the stream; its windows: {list(windows)}")
            stream = Subset(stream, windows[window_id])
        self.stream = stream
        self.batch_size = batch_size
        self.num_workers = num_workers
        self.collate_fn = collate_fn
        self.pin_memory = pin_memory

    def _loader(self) -> DataLoader:
        return DataLoader(
            self.stream,
            batch_size=self.batch_size,
            shuffle=False,
            num_workers=self.num_workers,
            collate_fn=self.collate_fn,
            pin_memory=self.pin_memory,
            persistent_workers=False,
        )

    def predict_dataloader(self) -> DataLoader:
        return self._loader()

    def val_dataloader(self) -> DataLoader:
        return self._loader()

    def test_dataloader(self) -> DataLoader:
        return self._loader()
