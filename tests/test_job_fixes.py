"""Job review fixes: submodules not shadowed by their functions, one listing per serve iteration,
bounded resize bookkeeping, and the ``fraction`` config field."""

from __future__ import annotations

import importlib
import pkgutil
from types import ModuleType

import relmon


def test_job_functions_do_not_shadow_submodules():
    import relmon.jobs as jobs
    import relmon.jobs.calibrate_job as cal_mod
    import relmon.jobs.serve_job as serve_mod

    assert isinstance(cal_mod, ModuleType) and isinstance(serve_mod, ModuleType)
    assert cal_mod.calibrate is jobs.calibrate and serve_mod.serve is jobs.serve
    assert callable(jobs.calibrate) and not isinstance(jobs.calibrate, ModuleType)
    # every submodule of relmon.jobs is reachable as an attribute of the package (no export shadows it)
    names = [info.name for info in pkgutil.iter_modules(jobs.__path__)]
    assert {"calibrate_job", "serve_job", "monitor", "state"} <= set(names)
    for name in names:
        module = importlib.import_module(f"relmon.jobs.{name}")
        assert getattr(jobs, name) is module, name
    # the top-level API keeps its own calibrate (tensors / LabelledImages in, a Calibration out)
    assert relmon.calibrate.__module__ == "relmon.api"
