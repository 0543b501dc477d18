"""zennit's submodules without its package ``__init__``.

zennit's ``__init__`` imports every submodule, ``zennit.torchvision`` among them, which imports
torchvision (and through ``torchvision.ops`` ``torch._dynamo``): about a second of start-up that
relmon's LRP never needs (the submodules it uses import torch only). :func:`zennit_module` loads
only the submodule asked for. When ``zennit`` is not yet imported, it first puts a package module
made from zennit's import spec into ``sys.modules`` without running its ``__init__``; that module
imports any submodule on attribute access (PEP 562), so a later ``import zennit;
zennit.attribution.Gradient`` or ``from zennit.torchvision import ResNetCanonizer`` still works. A
zennit already imported in full is used as it is.
"""

from __future__ import annotations

import importlib
import importlib.util
import sys
import threading
from types import ModuleType

#: The submodules of zennit's package (its ``__init__``'s ``__all__``).
SUBMODULES = ("attribution", "canonizers", "cmap", "composites", "core", "image", "layer", "rules",
              "torchvision", "types")
_LOCK = threading.Lock()


def _lazy_package() -> ModuleType:
    spec = importlib.util.find_spec("zennit")
    if spec is None or spec.submodule_search_locations is None:
        raise ImportError("relmon's LRP and deconvnet need the zennit package; fix: pip install zennit")
    package = importlib.util.module_from_spec(spec)  # the package's __init__ is not run

    def __getattr__(name: str):
        if name in SUBMODULES:
            return importlib.import_module(f"zennit.{name}")  # also sets it as the package's attribute
        raise AttributeError(f"module 'zennit' has no attribute {name!r}")

    def __dir__():
        return sorted({*package.__dict__, *SUBMODULES})

    package.__getattr__ = __getattr__
    package.__dir__ = __dir__
    package.__all__ = list(SUBMODULES)
    return package


def zennit_package() -> ModuleType:
    """The ``zennit`` package module: the one already imported, or a lazy one (see the module doc)."""
    module = sys.modules.get("zennit")
    if module is not None:
        return module
    with _LOCK:
        module = sys.modules.get("zennit")
        if module is None:
            module = sys.modules["zennit"] = _lazy_package()
    return module


def zennit_module(name: str) -> ModuleType:
    """``zennit.<name>`` (e.g. ``"composites"``), imported without zennit's package ``__init__``."""
    zennit_package()
    return importlib.import_module(f"zennit.{name}")


__all__ = ["SUBMODULES", "zennit_module", "zennit_package"]
