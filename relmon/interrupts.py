"""The one exception a stop request raises through the core.

A job's signal handler (and its run deadline) raises a subclass of :class:`Interrupted` from wherever
the process is, often inside a model's forward pass. Core code that turns a model's ``RuntimeError``
into a clearer ``ValueError`` must let this one through unchanged, or a SIGTERM during a forward would
be reported as a broken model. It lives here, below the core, because the core may not import the
jobs that define the concrete :class:`relmon.jobs.errors.RunInterrupted`.
"""

from __future__ import annotations


class Interrupted(RuntimeError):
    """A stop request (signal or deadline) raised through running code; never wrapped or swallowed."""
