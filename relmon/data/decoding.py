"""Decoding image bytes, and the taxonomy of bad inputs.

A bad input never ends a run: a stream returns a :class:`BadSample` for it (warning with
:class:`BadInputWarning` and counting it), and :func:`relmon.data.batching.collate_skip_bad` drops it
from the batch. The reasons (:data:`INPUT_ERROR_REASONS`, the ``reason`` label of
``relmon_input_errors_total``) are described in :mod:`relmon.data.streams`.

Images are decoded by Pillow (a corrupt file raises a Python error and prints nothing on stderr);
the header is checked against ``max_pixels`` before anything is decoded.
"""

from __future__ import annotations

import warnings
from typing import NamedTuple

import numpy as np
import torch

# Closed set of reasons, usable as the ``reason`` label of ``relmon_input_errors_total``.
READ_ERROR = "read_error"
DECODE_ERROR = "decode_error"
TOO_LARGE = "too_large"
SIZE_MISMATCH = "size_mismatch"
NON_FINITE = "non_finite"
INPUT_ERROR_REASONS = (READ_ERROR, DECODE_ERROR, TOO_LARGE, SIZE_MISMATCH, NON_FINITE)
#: Default pixel limit (width × height) of one decoded image.
DEFAULT_MAX_PIXELS = 50_000_000


class BadInputWarning(UserWarning):
    """An input could not be used (unreadable, undecodable, too large, odd size, non-finite); skipped and counted."""


class ResizedInputWarning(UserWarning):
    """An image of another size than the stream's reference size was resized to it."""


class ImageTooLargeError(ValueError):
    """An image's header declares more pixels than the stream's ``max_pixels``."""


class BadSample(NamedTuple):
    """The item a stream returns for an input it cannot read; dropped by :func:`collate_skip_bad`."""

    sample_id: str
    index: int
    window_id: str
    reason: str  # one of INPUT_ERROR_REASONS
    error: str


def _to_unit_float(x: torch.Tensor) -> torch.Tensor:
    if x.dtype == torch.uint8:
        return x.float().div_(255.0)
    if x.dtype == torch.uint16:  # 16-bit PNG
        return x.to(torch.int32).float().div_(65535.0)
    return x.float()


def pixel_ceiling() -> int | None:
    """Largest image Pillow opens at all (``2 × PIL.Image.MAX_IMAGE_PIXELS``; None when unlimited)."""
    from PIL import Image

    limit = Image.MAX_IMAGE_PIXELS
    return None if limit is None else 2 * int(limit)


def _open_image(data: bytes, max_pixels: int | None):
    """A lazily decoding PIL image of ``data`` whose header size is checked against ``max_pixels``.

    Pillow reads only the header here. Its own decompression-bomb guard is left as it is (no global
    state is changed): its warning is silenced (``max_pixels`` decides) and its error, raised above
    :func:`pixel_ceiling`, is reported as :class:`ImageTooLargeError`.
    """
    import io

    from PIL import Image

    with warnings.catch_warnings():
        warnings.simplefilter("ignore", Image.DecompressionBombWarning)
        try:
            img = Image.open(io.BytesIO(data))
        except Image.DecompressionBombError as exc:
            raise ImageTooLargeError(f"{exc}; relmon's max_pixels is {max_pixels:,}") from None
    width, height = img.size
    if max_pixels is not None and width * height > max_pixels:
        img.close()
        raise ImageTooLargeError(
            f"the image is {width}x{height} = {width * height:,} pixels, above max_pixels={max_pixels:,}; "
            "it was not decoded (raise max_pixels= to accept such images)"
        )
    return img


_SIXTEEN_BIT = ("I;16", "I;16L", "I;16B", "I;16N", "I")


def _decode_pil(data: bytes, channels: int, max_pixels: int | None = DEFAULT_MAX_PIXELS,
                target: tuple[int, int] | None = None) -> torch.Tensor:
    """Encoded image bytes → uint8 (uint16 for 16-bit grey PNG) tensor ``(channels, H, W)`` via Pillow;
    an image at least 4x larger than ``target`` (H, W) is first reduced to at least twice it
    (:func:`~relmon.data.safe_read.shrink_for`), so a huge image never becomes a huge float tensor."""
    from relmon.data import safe_read

    with _open_image(data, max_pixels) as opened, safe_read.shrink_for(opened, target) as img:
        if img.mode in _SIXTEEN_BIT:  # 16-bit grey: keep the depth (Pillow's convert("L") would saturate)
            arr = np.clip(np.asarray(img), 0, 65535).astype(np.uint16)[None]
            if channels == 3:
                arr = np.repeat(arr, 3, axis=0)
            return torch.from_numpy(np.ascontiguousarray(arr))
        arr = np.asarray(img.convert("L" if channels == 1 else "RGB"))
    arr = arr[None] if arr.ndim == 2 else arr.transpose(2, 0, 1)
    return torch.from_numpy(np.array(arr, dtype=np.uint8, copy=True))


def _decode(data: bytes, channels: int, max_pixels: int | None = DEFAULT_MAX_PIXELS,
            target: tuple[int, int] | None = None) -> torch.Tensor:
    """Encoded image bytes → ``(channels, H, W)`` tensor; raises for bad bytes, never prints.

    Pillow decodes (torchvision's ``decode_image`` lets libpng print ``libpng error`` lines on the
    process's stderr for corrupt files); its header is checked against ``max_pixels`` first.
    """
    return _decode_pil(data, channels, max_pixels, target)


def _header_size(data: bytes, max_pixels: int | None) -> tuple[int, int]:
    """``(height, width)`` from the header only."""
    img = _open_image(data, max_pixels)
    try:
        width, height = img.size
    finally:
        img.close()
    return height, width
