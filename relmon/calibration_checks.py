"""Range checks of a calibration's ``calibration.json`` values (beyond their types).

Standard library only. A calibration edited by hand and its manifest recomputed passes the sha256
check, so every value the monitor uses is checked here: a NaN accuracy would silently drop the
calibration-accuracy gauge, a ``created`` time in the future would make the calibration look fresh for
ever. :func:`meta_problems` returns one line per bad field (field name, value, what was expected); the
loader raises with the file's name and the fix.
"""

from __future__ import annotations

import math
import time
from typing import Any

#: Seconds a calibration's ``created`` time may lie ahead of this machine's clock (clock skew).
CLOCK_SKEW_SECONDS = 300.0
#: The headline estimator when a calibration names none (mean max-softmax, needs no fitting).
BASELINE_ESTIMATOR = "average_confidence"


def _number(value: Any) -> bool:
    return isinstance(value, (int, float)) and not isinstance(value, bool)


def _ratio(field: str, value: Any) -> str | None:
    if not _number(value) or not math.isfinite(value) or not 0.0 <= value <= 1.0:
        return f"field {field!r} must be a finite number in [0, 1] (a ratio), got {value!r}"
    return None


def _positive_int(field: str, value: Any) -> str | None:
    if isinstance(value, bool) or not isinstance(value, int) or value < 1:
        return f"field {field!r} must be a positive integer, got {value!r}"
    return None


def meta_problems(meta: dict[str, Any], now: float | None = None) -> list[str]:
    """Every out-of-range value of a calibration's metadata (types were checked before), as messages
    naming the field; empty when all are in range."""
    now = time.time() if now is None else now
    problems: list[str | None] = []
    created = meta.get("created")
    if _number(created):
        if not math.isfinite(created) or created <= 0:
            problems.append(f"field 'created' must be a finite time in seconds since 1970, got {created!r}")
        elif created > now + CLOCK_SKEW_SECONDS:
            problems.append(
                f"field 'created' ({created!r}) lies in the future (this machine's clock says {now:.0f}); a "
                "calibration cannot be made after it is read"
            )
    for name in ("region", "steps", "n_per_window"):
        if name in meta:
            problems.append(_positive_int(name, meta[name]))
    fraction = meta.get("fraction")
    if fraction is not None and (not _number(fraction) or not math.isfinite(fraction) or not 0 < fraction <= 1):
        problems.append(f"field 'fraction' must be null or a number in (0, 1], got {fraction!r}")
    size = meta.get("input_size")
    if size is not None and not (
        isinstance(size, list) and len(size) == 2 and all(_positive_int("input_size", v) is None for v in size)
    ):
        problems.append(f"field 'input_size' must be [height, width], two positive integers, got {size!r}")
    accuracy = meta.get("window_accuracy")
    if accuracy is not None:
        if not isinstance(accuracy, dict):
            problems.append(f"field 'window_accuracy' must be an object of window: accuracy, got {accuracy!r}")
        else:
            problems.extend(_ratio(f"window_accuracy.{w}", v) for w, v in accuracy.items())
    default = meta.get("default_estimator")
    if default is not None:
        known = sorted(meta.get("estimators") or {})
        if not isinstance(default, str) or default not in [*known, BASELINE_ESTIMATOR]:
            problems.append(
                f"field 'default_estimator' must name one of the calibration's estimators {known} (or "
                f"{BASELINE_ESTIMATOR!r}), got {default!r}"
            )
    classes = meta.get("classes")
    if classes is not None and not (isinstance(classes, list) and all(isinstance(c, str) for c in classes)):
        problems.append(f"field 'classes' must be null or a list of class names, got {classes!r}")
    return [p for p in problems if p]


__all__ = ["BASELINE_ESTIMATOR", "CLOCK_SKEW_SECONDS", "meta_problems"]
