"""The three ways out of relmon's metrics: an HTTP endpoint, the Pushgateway and a textfile.

- :func:`serve_http` — ``prometheus_client.start_http_server`` on an explicit registry, address and
  port; returns an :class:`HttpEndpoint` whose :meth:`~HttpEndpoint.stop` shuts the server down.
- :func:`push` — ``pushadd_to_gateway`` (keeps the group's other metrics) with a grouping key, a
  timeout per attempt and retries with exponential backoff; raises :class:`PushError` after the last.
- :func:`write_textfile` — ``write_to_textfile`` (temp file + ``os.replace``: readers never see a
  half-written file), e.g. for node-exporter's textfile collector.
"""

from __future__ import annotations

import os
import time
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from prometheus_client import CollectorRegistry, generate_latest, pushadd_to_gateway, start_http_server
from prometheus_client import write_to_textfile as _write_to_textfile


class PushError(RuntimeError):
    """Pushing to the Pushgateway failed after every retry (the message names the gateway and cause)."""


@dataclass
class HttpEndpoint:
    """A running /metrics endpoint; ``stop()`` shuts it down (idempotent)."""

    server: Any
    thread: Any
    addr: str
    port: int

    @property
    def url(self) -> str:
        return f"http://{self.addr}:{self.port}/metrics"

    def stop(self) -> None:
        if self.server is not None:
            self.server.shutdown()
            self.server.server_close()
            self.thread.join(timeout=5)
            self.server = None

    def __enter__(self) -> HttpEndpoint:
        return self

    def __exit__(self, *exc) -> None:
        self.stop()


def exposition(registry: CollectorRegistry) -> str:
    """The registry in the Prometheus text format (what /metrics serves)."""
    return generate_latest(registry).decode()


def serve_http(registry: CollectorRegistry, port: int = 9108, addr: str = "0.0.0.0") -> HttpEndpoint:
    """Serve ``registry`` at ``http://addr:port/metrics`` from a daemon thread (``port=0``: a free port).

    Raises ``OSError`` when the address cannot be bound (e.g. the port is in use).
    """
    if isinstance(port, bool) or not isinstance(port, int) or not 0 <= port <= 65535:
        raise ValueError(f"port must be an int in 0..65535, got {port!r}")
    server, thread = start_http_server(port, addr=addr, registry=registry)
    return HttpEndpoint(server, thread, addr, int(server.server_port))


def push(
    registry: CollectorRegistry,
    gateway: str,
    job: str = "relmon",
    grouping_key: Mapping[str, str] | None = None,
    timeout: float = 10.0,
    retries: int = 3,
    backoff: float = 0.5,
    sleep: Callable[[float], None] = time.sleep,
) -> int:
    """``pushadd_to_gateway`` with ``retries`` retries (waits ``backoff * 2**i`` s between attempts).

    Returns the number of attempts made. Raises :class:`PushError` (chained to the last error) when
    every attempt failed; the caller's computed metrics are untouched, so it can still write them
    elsewhere.
    """
    if not gateway:
        raise ValueError("gateway must be a Pushgateway address such as 'localhost:9091'")
    if retries < 0:
        raise ValueError(f"retries must be >= 0, got {retries}")
    key = {str(k): str(v) for k, v in (grouping_key or {}).items()}
    last: Exception | None = None
    for attempt in range(retries + 1):
        try:
            pushadd_to_gateway(gateway, job=job, registry=registry, grouping_key=key, timeout=timeout)
            return attempt + 1
        except Exception as err:  # urllib raises URLError/HTTPError/OSError/timeouts
            last = err
            if attempt < retries:
                sleep(backoff * 2**attempt)
    raise PushError(
        f"could not push to the Pushgateway at {gateway!r} (job={job!r}, grouping key {key}) after "
        f"{retries + 1} attempt(s): {type(last).__name__}: {last}; check the address and that the "
        "gateway is up"
    ) from last


def write_textfile(registry: CollectorRegistry, path: str | os.PathLike) -> Path:
    """Write the exposition to ``path`` atomically (parent folders created); returns the path."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    _write_to_textfile(str(path), registry)
    return path


__all__ = ["HttpEndpoint", "PushError", "exposition", "push", "serve_http", "write_textfile"]
