"""Stopping a run cleanly: SIGTERM / SIGINT and the run deadline (``run_timeout_seconds``).

Lightning installs its own SIGTERM handler during ``Trainer.predict`` (it only notes the signal and goes
on scoring; a KeyboardInterrupt makes it call ``sys.exit(1)``). :func:`stop_on_signals` installs
handlers that request a stop; Lightning chains them. While a scoring trainer runs (between its
``on_predict_start`` and ``on_predict_end``) the handler raises :class:`RunInterrupted` at once, in the
middle of the batch (whose records are dropped); elsewhere (outputs, ``serve`` waiting) it only sets the
request. :class:`StopCallback`, added to every scoring trainer, keeps each finished batch's records
(the scoring pass reads them there: ``trainer.predict(..., return_predictions=False)``, so each frame
is held once), checks the request and the run deadline before each batch, and hands the finished
records to the exception, so the job writes them and exits with :data:`EXIT_INTERRUPTED` (signal) or
:data:`EXIT_TIMEOUT` (deadline). The Lightning-free loop of :mod:`relmon.jobs.runner` does the same
checks itself.

A second SIGINT/SIGTERM while a stop is already pending raises ``KeyboardInterrupt`` at once.
"""

from __future__ import annotations

import signal
import threading
import time
from collections.abc import Iterator
from contextlib import contextmanager

import pandas as pd

from relmon.exitcodes import EXIT_EMPTY, EXIT_INTERRUPTED, EXIT_TIMEOUT  # noqa: F401 (re-exported)
from relmon.jobs.errors import RunInterrupted


class _StopState:
    def __init__(self) -> None:
        self.signum: int | None = None
        self.deadline: float | None = None  # time.monotonic() value
        self.timeout: float | None = None
        self.events: list[threading.Event] = []
        self.in_predict = False  # a scoring trainer is running: a signal raises at once

    def request(self, signum: int) -> None:
        self.signum = signum
        for ev in self.events:
            ev.set()


STOP = _StopState()


def stop_requested() -> bool:
    """True once SIGTERM/SIGINT arrived under :func:`stop_on_signals`."""
    return STOP.signum is not None


def should_stop() -> bool:
    """True when a stop was requested or the run deadline passed (:func:`check` would raise)."""
    return STOP.signum is not None or (STOP.deadline is not None and time.monotonic() > STOP.deadline)


def run_time_left() -> float | None:
    """Seconds left before the run deadline (None without one; negative once it passed)."""
    return None if STOP.deadline is None else STOP.deadline - time.monotonic()


def check(records: pd.DataFrame | None = None) -> None:
    """Raise :class:`RunInterrupted` if a stop was requested or the run deadline passed."""
    if STOP.signum is not None:
        name = signal.Signals(STOP.signum).name
        raise RunInterrupted(f"stopped by {name}", "signal", records, STOP.signum)
    if STOP.deadline is not None and time.monotonic() > STOP.deadline:
        raise RunInterrupted(
            f"run_timeout_seconds ({STOP.timeout:g} s) passed before the window was scored; fix: raise "
            "run_timeout_seconds, lower n / max_samples / sample_rate or steps",
            "timeout",
            records,
        )


def _handler(signum, frame) -> None:
    if STOP.signum is not None:  # second signal: stop now
        raise KeyboardInterrupt
    STOP.request(signum)
    if STOP.in_predict:
        STOP.in_predict = False  # raise once; StopCallback.on_exception adds the finished records
        check()


@contextmanager
def stop_on_signals(event: threading.Event | None = None) -> Iterator[None]:
    """Within the block, SIGTERM and SIGINT request a stop (``event`` is set too) instead of killing.

    Only in the main thread (elsewhere signals cannot be handled; the block then changes nothing).
    The previous handlers are restored on exit and the request is cleared.
    """
    if threading.current_thread() is not threading.main_thread():
        yield
        return
    old = {s: signal.getsignal(s) for s in (signal.SIGTERM, signal.SIGINT)}
    STOP.signum = None
    if event is not None:
        STOP.events.append(event)
    for s in old:
        signal.signal(s, _handler)
    try:
        yield
    finally:
        for s, h in old.items():
            signal.signal(s, h)
        if event is not None and event in STOP.events:
            STOP.events.remove(event)
        STOP.signum = None


@contextmanager
def run_deadline(seconds: float | None) -> Iterator[None]:
    """Within the block, :func:`check` raises once ``seconds`` have passed (None: no deadline)."""
    saved = STOP.deadline, STOP.timeout
    if seconds is not None:
        STOP.deadline, STOP.timeout = time.monotonic() + float(seconds), float(seconds)
    try:
        yield
    finally:
        STOP.deadline, STOP.timeout = saved


def _make_callback():
    import pytorch_lightning as pl

    class StopCallback(pl.Callback):
        """Keeps each finished batch's records (:meth:`records`; run ``predict`` with
        ``return_predictions=False`` so Lightning does not keep them too); before each batch, raises
        :class:`RunInterrupted` (with them) when a stop was requested or the run deadline passed."""

        def __init__(self) -> None:
            self.frames: list[pd.DataFrame] = []

        def records(self) -> pd.DataFrame | None:
            frames = [f for f in self.frames if isinstance(f, pd.DataFrame) and len(f)]
            return pd.concat(frames, ignore_index=True) if frames else None

        def on_predict_start(self, trainer, pl_module) -> None:
            STOP.in_predict = True

        def on_predict_end(self, trainer, pl_module) -> None:
            STOP.in_predict = False

        def on_exception(self, trainer, pl_module, exception: BaseException) -> None:
            STOP.in_predict = False
            if isinstance(exception, RunInterrupted) and exception.records is None:
                exception.records = self.records()

        def on_predict_batch_start(self, trainer, pl_module, batch, batch_idx, dataloader_idx=0) -> None:
            if should_stop():
                check(self.records())

        def on_predict_batch_end(self, trainer, pl_module, outputs, batch, batch_idx, dataloader_idx=0) -> None:
            if isinstance(outputs, pd.DataFrame) and len(outputs):
                self.frames.append(outputs)

    return StopCallback


_CALLBACK_CLASS = None


def stop_callback():
    """A new :class:`StopCallback` (a Lightning callback) for a scoring trainer."""
    global _CALLBACK_CLASS
    if _CALLBACK_CLASS is None:
        _CALLBACK_CLASS = _make_callback()
    return _CALLBACK_CLASS()


__all__ = [
    "EXIT_EMPTY",
    "EXIT_INTERRUPTED",
    "EXIT_TIMEOUT",
    "STOP",
    "RunInterrupted",
    "check",
    "should_stop",
    "run_deadline",
    "run_time_left",
    "stop_callback",
    "stop_on_signals",
    "stop_requested",
]
