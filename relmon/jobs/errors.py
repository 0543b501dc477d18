"""The jobs' errors (the lowest layer of :mod:`relmon.jobs`: imports only :mod:`relmon.exitcodes`).

Each error the CLI maps to an exit code of :mod:`relmon.exitcodes`: a :class:`CalibrationMismatchError`
is bad input (3), a :class:`JobError` or :class:`ServeError` an output failure (4), an
:class:`EmptyWindowError` 6, a :class:`RunInterrupted` its :attr:`~RunInterrupted.exit_code` (5 or 7).
"""

from __future__ import annotations

from typing import TYPE_CHECKING

from relmon.exitcodes import EXIT_INTERRUPTED, EXIT_TIMEOUT
from relmon.interrupts import Interrupted

if TYPE_CHECKING:
    import pandas as pd

    from relmon.jobs.summary import MonitorSummary


class CalibrationMismatchError(ValueError):
    """The calibration was made for another model, version or scoring settings than the job's."""


class ServeError(RuntimeError):
    """The /metrics endpoint could not be started (address in use, permission, bad address)."""


class JobError(RuntimeError):
    """A run failed after its metrics were computed (e.g. the push); ``summary`` holds the results."""

    def __init__(self, message: str, summary: MonitorSummary):
        super().__init__(message)
        self.summary = summary


class EmptyWindowError(JobError):
    """The window held nothing to score; ``summary`` holds the (empty) results. CLI exit code 6."""


class RunInterrupted(Interrupted):
    """Scoring stopped before the window's end (a signal or the run deadline).

    ``records`` holds the records of the finished batches (possibly empty), ``reason`` is ``"signal"``
    or ``"timeout"``, ``signum`` the signal number (signals only), ``written`` the records file the job
    wrote them to (set by the job).
    """

    def __init__(self, message: str, reason: str, records: pd.DataFrame | None = None, signum: int | None = None):
        super().__init__(message)
        self.reason = reason
        self.records = records
        self.signum = signum
        self.written: str | None = None

    @property
    def exit_code(self) -> int:
        return EXIT_TIMEOUT if self.reason == "timeout" else EXIT_INTERRUPTED


__all__ = ["CalibrationMismatchError", "EmptyWindowError", "JobError", "RunInterrupted", "ServeError"]
