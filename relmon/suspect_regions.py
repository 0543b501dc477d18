"""The ``suspect_regions`` setting: rectangles ``[top, left, height, width]`` in the model's input
pixels, given inline or as the path of a ``relmon audit --json`` output file (its ``suspect_regions``).

:func:`coerce_regions` checks the form (a non-empty list of four integers each, top/left ``>= 0``,
height/width ``>= 1``) when the config is read; :func:`check_regions_fit` checks that every rectangle
lies inside the image once the input size is known (the job calls it on the stream's first image).
Both raise :class:`SuspectRegionsError` (a ``ValueError``) naming the field and the fix; the config
and the job turn it into a :class:`relmon.config.ConfigError` (this module imports neither).
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

Rects = tuple[tuple[int, int, int, int], ...]

_FORM = "[[top, left, height, width], ...] (integers; top, left >= 0; height, width >= 1)"


class SuspectRegionsError(ValueError):
    """The ``suspect_regions`` setting is malformed or does not fit the input; the message names the fix."""


def _error(message: str) -> SuspectRegionsError:
    return SuspectRegionsError(message)


def read_audit_regions(path: str | Path, name: str = "suspect_regions") -> Any:
    """The ``suspect_regions`` of a ``relmon audit --json`` output file (a clear error otherwise)."""
    fix = f"fix: run 'relmon audit --json > audit.json' and set {name}: audit.json, or list the rectangles"
    try:
        text = Path(path).read_text(encoding="utf-8")
    except OSError as err:
        raise _error(f"config field {name!r}: cannot read the audit file {str(path)!r} "
                     f"({err.strerror or err}); {fix}") from None
    try:
        data = json.loads(text)
    except ValueError as err:
        raise _error(f"config field {name!r}: {str(path)!r} is not JSON ({err}); {fix}") from None
    if not isinstance(data, dict) or "suspect_regions" not in data:
        raise _error(f"config field {name!r}: {str(path)!r} holds no 'suspect_regions' key (not a "
                     f"'relmon audit --json' output); {fix}")
    regions = data["suspect_regions"]
    if isinstance(regions, list) and not regions:
        raise _error(f"config field {name!r}: the audit in {str(path)!r} found no suspect regions, so there is "
                     "nothing to monitor; fix: remove suspect_regions (or draw the rectangles yourself)")
    return regions


def coerce_regions(name: str, value: Any, bad: str) -> Rects:
    """``value`` (a list of rectangles, a YAML/JSON string of one, or an audit JSON path) as a tuple of
    ``(top, left, height, width)`` int tuples; ``bad`` is the generic error message of the field."""
    if isinstance(value, str):
        text = value.strip()
        if text.startswith("["):  # a flag: --suspect-regions '[[1, 1, 3, 3]]'
            import yaml

            try:
                value = yaml.safe_load(text)
            except yaml.YAMLError:
                raise _error(bad) from None
        else:
            value = read_audit_regions(text, name)
    if not isinstance(value, (list, tuple)) or not value:
        raise _error(f"config field {name!r}: expected a non-empty list {_FORM}, got {value!r}; fix: copy "
                     "'suspect_regions' from 'relmon audit --json', or give the path of that output file")
    out = []
    for rect in value:
        ok = (isinstance(rect, (list, tuple)) and len(rect) == 4
              and all(isinstance(v, int) and not isinstance(v, bool) for v in rect))
        if not ok or rect[0] < 0 or rect[1] < 0 or rect[2] < 1 or rect[3] < 1:
            raise _error(f"config field {name!r}: rectangle {rect!r} is not [top, left, height, width] with "
                         f"integers top, left >= 0 and height, width >= 1; fix: write each rectangle as {_FORM}")
        out.append(tuple(int(v) for v in rect))
    return tuple(out)


def check_regions_fit(regions: Rects, height: int, width: int, name: str = "suspect_regions") -> None:
    """A :class:`SuspectRegionsError` when a rectangle does not lie inside ``height x width``."""
    for t, left, h, w in regions:
        if t + h > height or left + w > width:
            raise _error(
                f"config field {name!r}: rectangle [top, left, height, width] = {[t, left, h, w]} does not fit in "
                f"the model's {height}x{width} input (rows {t}..{t + h - 1}, columns {left}..{left + w - 1}); "
                "fix: give rectangles in the model's input pixels (the audit's size), or set image_size to the "
                "size the regions were found on"
            )


__all__ = ["Rects", "SuspectRegionsError", "check_regions_fit", "coerce_regions", "read_audit_regions"]
