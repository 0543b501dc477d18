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
- :mod:`relmon.jobs.scoring` — the job's scoring pass (:func:`~relmon.jobs.scoring.score_stream`);
- :mod:`relmon.jobs.only_new` — only-new scoring state and the records folder's lock;
- :mod:`relmon.jobs.calibration` — :class:`Calibration`, :func:`load_calibration`, :func:`check_calibration`;
- :mod:`relmon.jobs.calibrate_job` — :func:`calibrate`: labelled data → a calibration folder;
- :mod:`relmon.jobs.monitor` — :class:`MonitorJob` / :func:`run_monitor`: one window → metrics;
- :mod:`relmon.jobs.serve_job` — :func:`serve`: the /metrics endpoint and the re-run loop;
- :mod:`relmon.jobs.merge` — :func:`~relmon.jobs.merge.run_merge`: a sharded run's parts → the window's outputs.

``relmon.jobs.common`` and ``relmon.jobs.state`` only re-export (their names moved), for existing imports.

The modules of the commands whose function this package exports are named ``calibrate_job`` and
``serve_job``, so the functions ``relmon.jobs.calibrate`` / ``relmon.jobs.serve`` never shadow a
submodule (``import relmon.jobs.calibrate_job as m`` gives the module, ``relmon.jobs.calibrate`` the
function).
"""

from relmon.jobs.calibrate_job import calibrate
from relmon.jobs.calibration import Calibration, check_calibration, load_calibration
from relmon.jobs.errors import (
    CalibrationMismatchError,
    EmptyWindowError,
    JobError,
    RunInterrupted,
    ServeError,
)
from relmon.jobs.monitor import MonitorJob, run_monitor
from relmon.jobs.serve_job import ServeResult, serve
from relmon.jobs.summary import MonitorSummary, confidence_estimate

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
