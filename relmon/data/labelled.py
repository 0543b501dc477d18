"""Labelled images for calibration: a class-folder tree, a manifest, or tensors.

- a folder with one sub-folder per class (the torchvision ``ImageFolder`` layout: the class of an
  image is the name of the sub-folder it is in; nested folders below a class folder are read too);
- a manifest, CSV or Parquet, with a column ``path`` (relative to the manifest's folder, absolute, or
  an fsspec URL) and a column ``label`` (an int class index or a class name);
- ``(images, labels)`` tensors through the Python API (:func:`from_tensors`).

:func:`read_labelled` decodes every image to a float tensor in ``[0, 1]`` (``N, C, H, W``), *before*
any normalisation — the calibration's synthetic shifts are applied in that space — and describes
the source (path, kind, a SHA-256 of the listing of paths and labels) for the calibration's meta.
"""

from __future__ import annotations

import hashlib
import os
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

IMAGE_EXTENSIONS = (".png", ".jpg", ".jpeg", ".bmp", ".gif", ".tif", ".tiff", ".webp", ".pgm", ".ppm")
MANIFEST_EXTENSIONS = (".csv", ".parquet", ".pq")


class LabelledDataError(ValueError):
    """The labelled data cannot be used as given; the message names the problem and the fix."""


@dataclass
class LabelledImages:
    """Decoded labelled images: ``images`` float ``(N, C, H, W)`` in [0, 1], ``labels`` int ``(N,)``
    indices into ``classes`` (or None when the classes are not named), ``ids`` one string per image."""

    images: Any
    labels: np.ndarray
    ids: list[str]
    classes: list[str] | None
    source: dict[str, Any] = field(default_factory=dict)

    def __len__(self) -> int:
        return len(self.labels)


def _listing_hash(ids: Sequence[str], labels: Sequence[int]) -> str:
    h = hashlib.sha256()
    for i, y in zip(ids, labels, strict=True):
        h.update(f"{i}\t{int(y)}\n".encode())
    return h.hexdigest()


def _decode(data: bytes, channels: int, image_size: int | None, where: str):
    """One labelled image → float ``(C, H, W)`` in [0, 1]: the streams' decoder (pixel limit checked
    on the header, 16-bit depth kept, nothing printed), then a bilinear resize to ``image_size``."""
    import torch

    from relmon.data.decoding import DEFAULT_MAX_PIXELS, _decode_pil, _to_unit_float

    try:
        x = _to_unit_float(_decode_pil(data, channels, DEFAULT_MAX_PIXELS))
    except Exception as err:  # Pillow raises many types (DecompressionBombError, SyntaxError, OSError, ...)
        raise LabelledDataError(
            f"labelled image {where} cannot be decoded ({type(err).__name__}: {err}); "
            "fix: remove or replace the file"
        ) from None
    if image_size is not None and tuple(x.shape[-2:]) != (image_size, image_size):
        x = torch.nn.functional.interpolate(
            x[None], size=(image_size, image_size), mode="bilinear", align_corners=False, antialias=True
        )[0].clamp_(0.0, 1.0)
    return x


def _read(path: str) -> bytes:
    """The bytes of a manifest's image: regular files only, at most 64 MiB (a path to a FIFO or
    ``/dev/zero`` is an error naming it, not a hang)."""
    from relmon.data.safe_read import DEFAULT_MAX_FILE_BYTES, read_bounded, read_local

    if "://" in path:
        import fsspec

        fs, inner = fsspec.core.url_to_fs(path)
        return read_bounded(fs, inner, DEFAULT_MAX_FILE_BYTES)
    return read_local(path, DEFAULT_MAX_FILE_BYTES)


def _stack(images: list, ids: list[str]):
    import torch

    shapes = {tuple(x.shape) for x in images}
    if len(shapes) > 1:
        first = tuple(images[0].shape)
        other = next(i for i, x in enumerate(images) if tuple(x.shape) != first)
        raise LabelledDataError(
            f"labelled images differ in size: {ids[0]} is {first[1]}x{first[2]}, {ids[other]} is "
            f"{images[other].shape[1]}x{images[other].shape[2]}; fix: set image_size to resize them all"
        )
    return torch.stack(images)


def _match_classes(found: list[str], classes: Sequence[str] | None, where: str) -> list[str]:
    if classes is None:
        return sorted(found)
    unknown = [c for c in found if c not in classes]
    if unknown:
        raise LabelledDataError(
            f"{where} has class(es) {unknown} that are not in the configured classes {list(classes)}; "
            "fix: rename the sub-folders / labels to the model's class names or correct 'classes'"
        )
    return list(classes)


def _read_folder(root: Path, classes, channels, image_size):
    subdirs = sorted(p for p in root.iterdir() if p.is_dir() and not p.name.startswith("."))
    if not subdirs:
        raise LabelledDataError(
            f"labelled folder {str(root)!r} has no class sub-folders; expected one sub-folder per class "
            "(root/<class name>/<image>.png, the torchvision ImageFolder layout) or a CSV/Parquet manifest"
        )
    names = _match_classes([d.name for d in subdirs], classes, f"labelled folder {str(root)!r}")
    paths, labels = [], []
    for d in subdirs:
        for p in sorted(d.rglob("*")):
            if p.is_file() and p.suffix.lower() in IMAGE_EXTENSIONS:
                paths.append(p)
                labels.append(names.index(d.name))
    if not paths:
        raise LabelledDataError(
            f"no images found in the class sub-folders of {str(root)!r} (extensions {', '.join(IMAGE_EXTENSIONS)})"
        )
    ids = [str(p.relative_to(root)) for p in paths]
    images = [_decode(p.read_bytes(), channels, image_size, str(p)) for p in paths]
    return _stack(images, ids), np.asarray(labels, dtype=np.int64), ids, names


def _read_manifest(path: Path, classes, channels, image_size):
    import pandas as pd

    try:
        table = pd.read_parquet(path) if path.suffix.lower() in (".parquet", ".pq") else pd.read_csv(path)
    except Exception as err:  # pandas raises many types for unreadable tables
        raise LabelledDataError(f"manifest {str(path)!r} cannot be read as a table: {err}") from None
    missing = [c for c in ("path", "label") if c not in table.columns]
    if missing:
        raise LabelledDataError(
            f"manifest {str(path)!r} lacks column(s) {missing} (has {list(table.columns)}); "
            "fix: give columns 'path' (file or URL) and 'label' (class index or name)"
        )
    if not len(table):
        raise LabelledDataError(f"manifest {str(path)!r} has no rows")
    raw = table["label"].tolist()
    if all(isinstance(v, (int, np.integer)) and not isinstance(v, bool) for v in raw):
        labels = [int(v) for v in raw]
        names = list(classes) if classes is not None else None
        bad = [v for v in labels if v < 0 or (names is not None and v >= len(names))]
        if bad:
            raise LabelledDataError(
                f"manifest {str(path)!r} has label(s) {sorted(set(bad))[:5]} outside 0..{len(names) - 1 if names else 'K-1'}"
                "; fix: use class indices of the model's output or class names"
            )
    else:
        found = sorted({str(v) for v in raw})
        names = _match_classes(found, classes, f"manifest {str(path)!r}")
        labels = [names.index(str(v)) for v in raw]
    ids, images = [], []
    for p in table["path"].astype(str):
        full = p if "://" in p or os.path.isabs(p) else str(path.parent / p)
        try:
            data = _read(full)
        except OSError as err:
            raise LabelledDataError(
                f"manifest {str(path)!r}: image {p!r} cannot be read ({err}); fix: correct its path"
            ) from None
        ids.append(p)
        images.append(_decode(data, channels, image_size, repr(p)))
    return _stack(images, ids), np.asarray(labels, dtype=np.int64), ids, names


def read_labelled(
    source: str | os.PathLike,
    classes: Sequence[str] | None = None,
    channels: int = 1,
    image_size: int | None = None,
) -> LabelledImages:
    """Read a class-folder tree or a CSV/Parquet manifest of labelled images (see the module doc).

    ``classes`` (the model's class names in output order) maps folder names / string labels to
    indices; without it the sorted folder names are the classes. Raises :class:`LabelledDataError`
    (a ``ValueError``) naming the problem and the fix.
    """
    path = Path(source)
    if not path.exists():
        raise LabelledDataError(
            f"labelled data {str(source)!r} does not exist; fix: set calibration_data to a folder with one "
            "sub-folder per class or a CSV/Parquet manifest with columns path and label"
        )
    if path.is_dir():
        kind = "folder"
        images, labels, ids, names = _read_folder(path, classes, channels, image_size)
    elif path.suffix.lower() in MANIFEST_EXTENSIONS:
        kind = "manifest"
        images, labels, ids, names = _read_manifest(path, classes, channels, image_size)
    else:
        raise LabelledDataError(
            f"labelled data {str(source)!r} is a file but not a manifest ({', '.join(MANIFEST_EXTENSIONS)}); "
            "fix: give a class-folder tree or a CSV/Parquet manifest with columns path and label"
        )
    source_meta = {
        "kind": kind,
        "path": str(path.resolve()),
        "n_images": len(ids),
        "listing_sha256": _listing_hash(ids, labels),
        "classes": names,
    }
    return LabelledImages(images, labels, ids, names, source_meta)


def from_tensors(images, labels, classes: Sequence[str] | None = None) -> LabelledImages:
    """Labelled images given in memory: ``images`` ``(N, C, H, W)`` (or ``(N, H, W)``) floats in [0, 1]
    or uint8, ``labels`` ``N`` class indices."""
    import torch

    x = torch.as_tensor(images).detach().cpu()
    if x.ndim == 3:
        x = x.unsqueeze(1)
    if x.ndim != 4:
        raise LabelledDataError(f"images must be shaped (N, C, H, W) or (N, H, W), got {tuple(x.shape)}")
    if x.dtype == torch.uint8:
        x = x.float().div(255.0)
    elif not x.is_floating_point():
        raise LabelledDataError(f"images must be float in [0, 1] or uint8, got {x.dtype}")
    else:
        x = x.float()
        lo, hi = float(x.min()), float(x.max())
        if not (np.isfinite(lo) and np.isfinite(hi)) or lo < 0.0 or hi > 1.0:
            raise LabelledDataError(
                f"float images must lie in [0, 1] (before normalisation), got values in [{lo:.3g}, {hi:.3g}]; "
                "fix: pass raw images scaled to [0, 1]; relmon normalises them with the model's preprocessing"
            )
    y_raw = np.asarray(torch.as_tensor(labels).detach().cpu().numpy()).reshape(-1)
    if y_raw.dtype.kind == "f" and not np.all(np.isfinite(y_raw) & (y_raw == np.round(y_raw))):
        raise LabelledDataError("labels must be integer class indices, got non-integer values; fix: pass int labels")
    y = y_raw.astype(np.int64)
    if len(y) != len(x):
        raise LabelledDataError(f"{len(y)} labels for {len(x)} images")
    if (y < 0).any() or (classes is not None and (y >= len(classes)).any()):
        raise LabelledDataError(f"labels must be class indices in 0..{len(classes) - 1 if classes else 'K-1'}")
    ids = [str(i) for i in range(len(y))]
    h = hashlib.sha256(x.detach().cpu().numpy().tobytes())
    h.update(y.tobytes())
    meta = {"kind": "tensors", "path": None, "n_images": len(y), "listing_sha256": h.hexdigest(),
            "classes": list(classes) if classes is not None else None}
    return LabelledImages(x, y, ids, list(classes) if classes is not None else None, meta)


__all__ = ["LabelledDataError", "LabelledImages", "from_tensors", "read_labelled"]
