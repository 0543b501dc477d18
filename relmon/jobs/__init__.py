"""The jobs behind ``relmon calibrate | monitor | serve``, one module per command.

The modules of the commands whose function this package exports are named ``calibrate_job`` and
``serve_job``, so the functions ``relmon.jobs.calibrate`` / ``relmon.jobs.serve`` never shadow a
submodule (``import relmon.jobs.calibrate_job as m`` gives the module, ``relmon.jobs.calibrate`` the
function).

- :mod:`relmon.jobs.calibrate_job` — :func:`calibrate`: labelled data → a calibration folder;
- :mod:`relmon.jobs.calibration` — :class:`Calibration`, :func:`load_calibration`, :func:`check_calibration`;
- :mod:`relmon.jobs.monitor` — :class:`MonitorJob` / :func:`run_monitor`: one window → metrics;
- :mod:`relmon.jobs.serve_job` — :func:`serve`: the /metrics endpoint and the re-run loop;
- :mod:`relmon.jobs.common` — the job's model, input stream and scoring pass, shared errors.
"""

from relmon.jobs.calibrate_job import calibrate
from relmon.jobs.calibration import Calibration, check_calibration, load_calibration
from relmon.jobs.common import CalibrationMismatchError, JobError, ServeError
from relmon.jobs.monitor import MonitorJob, MonitorSummary, confidence_estimate, run_monitor
from relmon.jobs.serve_job import ServeResult, serve

__all__ = [
    "Calibration",
    "CalibrationMismatchError",
    "JobError",
    "MonitorJob",
    "MonitorSummary",
    "ServeError",
    "ServeResult",
    "calibrate",
    "check_calibration",
    "confidence_estimate",
    "load_calibration",
    "run_monitor",
    "serve",
]
