"""The jobs behind ``relmon calibrate | monitor | serve``, one module per command.

- :mod:`relmon.jobs.calibrate` — :func:`calibrate`: labelled data → a calibration folder;
- :mod:`relmon.jobs.calibration` — :class:`Calibration`, :func:`load_calibration`, :func:`check_calibration`;
- :mod:`relmon.jobs.monitor` — :class:`MonitorJob` / :func:`run_monitor`: one window → metrics;
- :mod:`relmon.jobs.serve` — :func:`serve`: the /metrics endpoint and the re-run loop;
- :mod:`relmon.jobs.common` — the job's model, input stream and scoring pass, shared errors.
"""

from relmon.jobs.calibrate import calibrate
from relmon.jobs.calibration import Calibration, check_calibration, load_calibration
from relmon.jobs.common import CalibrationMismatchError, JobError, ServeError
from relmon.jobs.monitor import MonitorJob, MonitorSummary, confidence_estimate, run_monitor
from relmon.jobs.serve import ServeResult, serve

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
