"""The jobs behind ``relmon calibrate | monitor | serve``.

The modules are layered: each imports only modules listed above it (``tests/test_import_graph.py``
fails on a cycle), and in-function imports are kept for optional heavy dependencies (Lightning,
scikit-learn/scipy through :mod:`relmon.analysis`, tqdm).

- :mod:`relmon.jobs.errors` — the jobs' errors (exit codes from :mod:`relmon.exitcodes`);
- :mod:`relmon.jobs.summary` — :class:`MonitorSummary`, the confidence baseline estimate;
- :mod:`relmon.jobs.signals` — SIGTERM/SIGINT and the run deadline;
- :mod:`relmon.jobs.model` — the job's model (:func:`~relmon.jobs.model.load_job_model`) and class checks;
- :mod:`relmon.jobs.inputs` — one window of inputs (:func:`~relmon.jobs.inputs.build_stream`);
- :mod:`relmon.jobs.runner` — the Lightning-free scoring loop;
- :mod:`relmon.jobs.scaleout` — one window over DDP ranks or shards: the run's plan (sampled before
  decoding, its shard), the DDP trainer and the gathering of the ranks' records, part files;
- :mod:`relmon.jobs.method_auto` — ``methods: auto`` resolved (embedded models, a calibration's choice, fallback);
- :mod:`relmon.jobs.scoring` — the job's scoring pass (:func:`~relmon.jobs.scoring.score_stream`);
- :mod:`relmon.jobs.method_choice` — the calibration's paired method table and the ``auto`` choice;
- :mod:`relmon.jobs.only_new` — only-new scoring state and the records folder's lock;
- :mod:`relmon.jobs.calibration` — :class:`Calibration`, :func:`load_calibration`, :func:`check_calibration`;
- :mod:`relmon.jobs.calibrate_job` — :func:`calibrate`: labelled data → a calibration folder;
- :mod:`relmon.jobs.monitor` — :class:`MonitorJob` / :func:`run_monitor`: one window → metrics;
- :mod:`relmon.jobs.serve_job` — :func:`serve`: the /metrics endpoint and the re-run loop;
- :mod:`relmon.jobs.merge` — :func:`~relmon.jobs.merge.run_merge`: a sharded run's parts → the window's outputs.

The modules of the commands whose function this package exports are named ``calibrate_job`` and
``serve_job``, so the functions ``relmon.jobs.calibrate`` / ``relmon.jobs.serve`` never shadow a
submodule (``import relmon.jobs.calibrate_job as m`` gives the module, ``relmon.jobs.calibrate`` the
function).
"""

import importlib
from typing import TYPE_CHECKING, Any

# public name -> the module that defines it, imported on first use (PEP 562): importing one job module
# (e.g. relmon.jobs.runner) does not load the others.
_LAZY = {
    "calibrate": "relmon.jobs.calibrate_job",
    "Calibration": "relmon.jobs.calibration",
    "check_calibration": "relmon.jobs.calibration",
    "load_calibration": "relmon.jobs.calibration",
    "CalibrationMismatchError": "relmon.jobs.errors",
    "EmptyWindowError": "relmon.jobs.errors",
    "JobError": "relmon.jobs.errors",
    "RunInterrupted": "relmon.jobs.errors",
    "ServeError": "relmon.jobs.errors",
    "MonitorJob": "relmon.jobs.monitor",
    "run_monitor": "relmon.jobs.monitor",
    "ServeResult": "relmon.jobs.serve_job",
    "serve": "relmon.jobs.serve_job",
    "MonitorSummary": "relmon.jobs.summary",
    "confidence_estimate": "relmon.jobs.summary",
}


def __getattr__(name: str) -> Any:
    module = _LAZY.get(name)
    if module is None:
        raise AttributeError(f"module 'relmon.jobs' has no attribute {name!r}")
    value = getattr(importlib.import_module(module), name)
    globals()[name] = value
    return value


def __dir__() -> list[str]:
    return sorted(set(globals()) | set(_LAZY))


if TYPE_CHECKING:  # for type checkers and IDEs
    from relmon.jobs.calibrate_job import calibrate  # noqa: F401
    from relmon.jobs.calibration import Calibration, check_calibration, load_calibration  # noqa: F401
    from relmon.jobs.errors import (  # noqa: F401
        CalibrationMismatchError,
        EmptyWindowError,
        JobError,
        RunInterrupted,
        ServeError,
    )
    from relmon.jobs.monitor import MonitorJob, run_monitor  # noqa: F401
    from relmon.jobs.serve_job import ServeResult, serve  # noqa: F401
    from relmon.jobs.summary import MonitorSummary, confidence_estimate  # noqa: F401

__all__ = [
    "Calibration",
    "CalibrationMismatchError",
    "EmptyWindowError",
    "JobError",
    "MonitorJob",
    "MonitorSummary",
    "RunInterrupted",
    "ServeError",
    "ServeResult",
    "calibrate",
    "check_calibration",
    "confidence_estimate",
    "load_calibration",
    "run_monitor",
    "serve",
]
