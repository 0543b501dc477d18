"""relmon: label-free monitoring of image classifiers by the quality of their explanations.

The top-level names are imported on first use (PEP 562), so ``import relmon`` and ``relmon --help``
do not pay for torch, zennit or Lightning until something needs them.
"""

from __future__ import annotations

import importlib
import sys
import types
from typing import TYPE_CHECKING, Any

__version__ = "0.2.0"

# public name -> module that defines it
_LAZY = {
    "audit": "relmon.api",
    "calibrate": "relmon.api",
    "monitor": "relmon.api",
    "Calibration": "relmon.jobs.calibration",
    "MonitorSummary": "relmon.jobs.summary",
    "MonitorConfig": "relmon.config",
    "load_config": "relmon.config",
    "UnsupportedModelError": "relmon.explain",
    "available_methods": "relmon.explain",
    "canonical_method": "relmon.explain",
    "conservation": "relmon.explain",
    "explain": "relmon.explain",
    "explain_full": "relmon.explain",
    "to_heatmap": "relmon.explain",
    "Preprocessing": "relmon.preprocessing",
    "attach_preprocessing": "relmon.preprocessing",
    "load_embedded": "relmon.models",
    "load_model": "relmon.models",
    "evaluate_heatmaps": "relmon.perturbation",
    "region_perturbation": "relmon.perturbation",
}

__all__ = ["__version__", *sorted(_LAZY)]


def __getattr__(name: str) -> Any:
    module = _LAZY.get(name)
    if module is None:
        raise AttributeError(f"module 'relmon' has no attribute {name!r}")
    value = getattr(importlib.import_module(module), name)
    globals()[name] = value  # cache: the next access is a plain attribute lookup
    return value


def __dir__() -> list[str]:
    return sorted(set(globals()) | set(_LAZY))


class _Package(types.ModuleType):
    """``relmon.explain`` is both a function (the API) and a sub-package. Importing the sub-package
    (``from relmon.explain.core import ...``) before the function was first used would bind the
    *module* to ``relmon.explain``; this keeps the name for the function (the sub-package stays in
    ``sys.modules``, where ``from relmon.explain import ...`` finds it)."""

    def __setattr__(self, name: str, value: Any) -> None:
        if name in _LAZY and isinstance(value, types.ModuleType):
            return
        super().__setattr__(name, value)


sys.modules[__name__].__class__ = _Package


if TYPE_CHECKING:  # for type checkers and IDEs
    from relmon.api import audit, calibrate, monitor  # noqa: F401
    from relmon.config import MonitorConfig, load_config  # noqa: F401
    from relmon.explain import (  # noqa: F401
        UnsupportedModelError,
        available_methods,
        canonical_method,
        conservation,
        explain,
        explain_full,
        to_heatmap,
    )
    from relmon.jobs.calibration import Calibration  # noqa: F401
    from relmon.jobs.summary import MonitorSummary  # noqa: F401
    from relmon.models import load_embedded, load_model  # noqa: F401
    from relmon.perturbation import evaluate_heatmaps, region_perturbation  # noqa: F401
    from relmon.preprocessing import Preprocessing, attach_preprocessing  # noqa: F401
