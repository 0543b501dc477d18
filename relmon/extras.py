"""Optional dependencies: an import that fails names the ``pip install 'relmon[extra]'`` that fixes it.

The core (explain, AOPC, complexity, torchmetrics wrappers, the Python API's scoring) needs only the
packages every install gets. The entry points that need more say so when they are imported:

- ``lightning`` — :mod:`relmon.lightning` (callback, monitor module) and ``runner: lightning``;
- ``monitor`` — the jobs (``relmon calibrate | monitor | serve``): Prometheus metrics, and the COT
  estimator's optimal transport (POT);
- ``report`` — ``relmon report | trend``, heatmap grids and plots (matplotlib);
- ``all`` — all of them.

:data:`EXTRAS` maps each optional top-level module to its extra; ``pyproject.toml`` declares the same
(a test keeps the two in step).
"""

from __future__ import annotations

import contextlib
import importlib
from types import ModuleType

#: optional top-level module -> (distribution on PyPI, relmon extra that installs it)
EXTRAS: dict[str, tuple[str, str]] = {
    "pytorch_lightning": ("pytorch-lightning", "lightning"),
    "prometheus_client": ("prometheus-client", "monitor"),
    "ot": ("pot", "monitor"),
    "matplotlib": ("matplotlib", "report"),
}


class MissingExtraError(ImportError):
    """An optional dependency is not installed; the message names the extra that installs it."""


def _missing_module(err: ImportError) -> str | None:
    name = getattr(err, "name", None)
    return name.split(".")[0] if name else None


def missing_extra_error(err: ImportError, feature: str) -> ImportError:
    """``err`` turned into a :class:`MissingExtraError` naming the extra, when the missing module is an
    optional dependency of relmon; any other ImportError is returned unchanged."""
    top = _missing_module(err)
    if top not in EXTRAS:
        return err
    dist, extra = EXTRAS[top]
    return MissingExtraError(
        f"{feature} needs the optional package {dist!r} (module {top!r}), which is not installed; "
        f"fix: pip install 'relmon[{extra}]' (or 'relmon[all]')",
        name=top,
    )


@contextlib.contextmanager
def optional_imports(feature: str):
    """Wrap the imports of an entry point: a missing optional dependency raises :class:`MissingExtraError`.

    >>> with optional_imports("relmon.lightning (the Lightning callback)"):
    ...     import pytorch_lightning as pl
    """
    try:
        yield
    except ImportError as err:
        new = missing_extra_error(err, feature)
        if new is err:
            raise
        raise new from err


def require(module: str, feature: str) -> ModuleType:
    """Import ``module`` (an optional dependency) for ``feature``, or raise :class:`MissingExtraError`."""
    with optional_imports(feature):
        return importlib.import_module(module)


__all__ = ["EXTRAS", "MissingExtraError", "missing_extra_error", "optional_imports", "require"]
