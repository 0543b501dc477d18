"""The three ways out of relmon's metrics: an HTTP endpoint, the Pushgateway and a textfile.

- :func:`serve_http` — ``prometheus_client.make_wsgi_app`` on an explicit registry, served by a
  threading WSGI server bound to ``127.0.0.1`` unless another address is given, with a listen backlog
  of 128 (prometheus-client's own server keeps the socketserver default of 5, which drops connections
  under 50 concurrent scrapers), optional TLS / mutual TLS and basic auth
  (:class:`~relmon.export.security.EndpointSecurity`); returns an :class:`HttpEndpoint` whose
  :meth:`~HttpEndpoint.stop` shuts the server down.
- :func:`push` — ``pushadd_to_gateway`` (keeps the group's other metrics) with a grouping key, a
  timeout per attempt and retries with exponential backoff, optional basic auth and TLS
  (:class:`~relmon.export.security.PushSecurity`); raises :class:`PushError` after the last. The
  gateway is named in messages with its password redacted.
- :func:`write_textfile` — ``write_to_textfile`` (temp file + ``os.replace``: readers never see a
  half-written file), e.g. for node-exporter's textfile collector.
"""

from __future__ import annotations

import os
import socket
import ssl
import threading
import time
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any
from wsgiref.simple_server import WSGIRequestHandler, make_server

from relmon.extras import optional_imports

with optional_imports("relmon's Prometheus outputs (relmon monitor | serve)"):
    from prometheus_client import CollectorRegistry, generate_latest, make_wsgi_app, pushadd_to_gateway
    from prometheus_client import write_to_textfile as _write_to_textfile
    from prometheus_client.exposition import ThreadingWSGIServer, default_handler

from relmon.export.security import EndpointSecurity, PushSecurity, split_credentials
from relmon.urls import push_url_problem, redact_text, redact_url

#: Listen backlog of the /metrics server (socketserver's default is 5).
DEFAULT_BACKLOG = 128
#: Seconds one rendering of the exposition is served to other scrapes (see :func:`serve_http`).
DEFAULT_CACHE_SECONDS = 1.0
#: Seconds a client may take for the TLS handshake and for each read/write of one request.
CLIENT_TIMEOUT = 30.0


class PushError(RuntimeError):
    """Pushing to the Pushgateway failed after every retry (the message names the gateway and cause)."""


@dataclass
class HttpEndpoint:
    """A running /metrics endpoint; ``stop()`` shuts it down (idempotent)."""

    server: Any
    thread: Any
    addr: str
    port: int
    scheme: str = "http"

    @property
    def url(self) -> str:
        host = f"[{self.addr}]" if ":" in self.addr else self.addr
        return f"{self.scheme}://{host}:{self.port}/metrics"

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


class _CachedApp:
    """``app``'s successful GET responses reused for ``seconds`` (per Accept / Accept-Encoding / query).

    Rendering the exposition costs milliseconds of CPU per scrape; many scrapers within a second get
    the same bytes (at most ``seconds`` old; a run updates the metrics once per window). At most
    ``max_entries`` variants are kept, so odd headers cannot grow the cache.
    """

    def __init__(self, app: Callable, seconds: float, max_entries: int = 8):
        self.app, self.seconds, self.max_entries = app, seconds, max_entries
        self._cache: dict[tuple, tuple[float, str, list, list]] = {}
        self._lock = threading.Lock()

    def __call__(self, environ, start_response):
        if environ.get("REQUEST_METHOD") != "GET" or self.seconds <= 0:
            return self.app(environ, start_response)
        key = (
            environ.get("PATH_INFO"),
            environ.get("QUERY_STRING", ""),
            environ.get("HTTP_ACCEPT", ""),
            "gzip" in environ.get("HTTP_ACCEPT_ENCODING", ""),
        )
        now = time.monotonic()
        with self._lock:
            hit = self._cache.get(key)
        if hit is None or now - hit[0] > self.seconds:
            captured = {}

            def capture(status, headers, exc_info=None):
                captured["status"], captured["headers"] = status, headers
                return lambda data: None

            body = list(self.app(environ, capture))
            hit = (now, captured["status"], captured["headers"], body)
            if captured["status"].startswith("200"):
                with self._lock:
                    if len(self._cache) >= self.max_entries and key not in self._cache:
                        self._cache.pop(next(iter(self._cache)))
                    self._cache[key] = hit
        start_response(hit[1], list(hit[2]))
        return hit[3]


class _QuietHandler(WSGIRequestHandler):
    """No access log on stderr; a bounded wait for slow clients."""

    timeout = CLIENT_TIMEOUT

    def log_message(self, format, *args):  # noqa: A002 - the base class's signature
        pass


class _MetricsServer(ThreadingWSGIServer):
    """Thread per request, a large listen backlog, TLS handshakes in the request's own thread (a
    client that never completes its handshake cannot block the accept loop)."""

    request_queue_size = DEFAULT_BACKLOG
    ssl_context: ssl.SSLContext | None = None

    def get_request(self):
        sock, addr = self.socket.accept()
        if self.ssl_context is not None:
            sock = self.ssl_context.wrap_socket(sock, server_side=True, do_handshake_on_connect=False)
        return sock, addr

    def finish_request(self, request, client_address):
        if isinstance(request, ssl.SSLSocket):
            request.settimeout(CLIENT_TIMEOUT)
            try:
                request.do_handshake()
            except (ssl.SSLError, OSError):
                return  # bad or missing client certificate, plain HTTP on a TLS port...: drop it
        super().finish_request(request, client_address)


def serve_http(
    registry: CollectorRegistry,
    port: int = 9108,
    addr: str = "127.0.0.1",
    security: EndpointSecurity | None = None,
    backlog: int = DEFAULT_BACKLOG,
    cache_seconds: float = DEFAULT_CACHE_SECONDS,
) -> HttpEndpoint:
    """Serve ``registry`` at ``http(s)://addr:port/metrics`` from a daemon thread (``port=0``: a free port).

    ``addr`` defaults to the loopback address: pass ``"0.0.0.0"`` (or ``"::"``) explicitly to accept
    scrapes from other hosts. ``security`` adds TLS (``https``), mutual TLS and basic auth;
    ``backlog`` is the listen queue length; ``cache_seconds`` how long one rendering of the
    exposition is reused for other scrapes (0: render every scrape). Raises ``OSError`` when the
    address cannot be bound.
    """
    if isinstance(port, bool) or not isinstance(port, int) or not 0 <= port <= 65535:
        raise ValueError(f"port must be an int in 0..65535, got {port!r}")
    if isinstance(backlog, bool) or not isinstance(backlog, int) or backlog < 1:
        raise ValueError(f"backlog must be a positive int, got {backlog!r}")
    security = security or EndpointSecurity()
    family, _, _, _, sockaddr = socket.getaddrinfo(
        addr, port, type=socket.SOCK_STREAM, flags=socket.AI_PASSIVE
    )[0]

    class Server(_MetricsServer):
        address_family = family
        request_queue_size = backlog
        ssl_context = security.ssl_context()

    if not 0 <= cache_seconds < 3600:
        raise ValueError(f"cache_seconds must be in [0, 3600), got {cache_seconds!r}")
    app = security.wrap_app(_CachedApp(make_wsgi_app(registry), cache_seconds))
    server = make_server(sockaddr[0], port, app, Server, handler_class=_QuietHandler)
    thread = threading.Thread(target=server.serve_forever, name="relmon-metrics-http", daemon=True)
    thread.start()
    return HttpEndpoint(server, thread, addr, int(server.server_port), "https" if security.tls else "http")


def push(
    registry: CollectorRegistry,
    gateway: str,
    job: str = "relmon",
    grouping_key: Mapping[str, str] | None = None,
    timeout: float = 10.0,
    retries: int = 3,
    backoff: float = 0.5,
    sleep: Callable[[float], None] = time.sleep,
    security: PushSecurity | None = None,
) -> int:
    """``pushadd_to_gateway`` with ``retries`` retries (waits ``backoff * 2**i`` s between attempts).

    ``security`` adds basic auth and TLS settings; credentials in the URL
    (``http://user:pass@host:9091``) are moved into the Authorization header. The password never
    appears in the :class:`PushError` message (the gateway is named with it redacted).

    An HTTP 401 or 403 answer is not retried (the same credentials would be refused again). Basic-auth
    credentials sent over plain ``http://`` log one warning per gateway and process.

    Returns the number of attempts made. Raises :class:`PushError` (chained to the last error) when
    every attempt failed; the caller's computed metrics are untouched, so it can still write them
    elsewhere.
    """
    if not gateway:
        raise ValueError("gateway must be a Pushgateway address such as 'localhost:9091'")
    if retries < 0:
        raise ValueError(f"retries must be >= 0, got {retries}")
    problem = push_url_problem(gateway)
    if problem is not None:
        raise ValueError(problem)
    key = {str(k): str(v) for k, v in (grouping_key or {}).items()}
    shown = redact_url(gateway)
    url, user, password = split_credentials(gateway)
    if user is not None:
        if security is not None and security.username is not None:
            raise ValueError(
                f"the Pushgateway URL {shown!r} carries credentials and security sets a user too; "
                "give the credentials one way"
            )
        base = security or PushSecurity()
        security = PushSecurity(user, password, base.ca_file, base.cert_file, base.key_file)
    if security is not None and security.username is not None:
        warn_plain_http_auth(url)
    handler = security.handler if security is not None else default_handler
    secret = security.password if security is not None else None
    last: Exception | None = None
    attempts = 0
    for attempt in range(retries + 1):
        attempts = attempt + 1
        try:
            pushadd_to_gateway(url, job=job, registry=registry, grouping_key=key, timeout=timeout, handler=handler)
            return attempts
        except Exception as err:  # urllib raises URLError/HTTPError/OSError/timeouts
            last = err
            if _refused_credentials(err):  # the same credentials will be refused again: no retry
                break
            if attempt < retries:
                sleep(backoff * 2**attempt)
    hint = (
        "the gateway refused the credentials (HTTP 401/403), so the push was not retried; fix: check "
        "push_username and the password"
        if _refused_credentials(last)
        else "check the address, the credentials and that the gateway is up"
    )
    raise PushError(
        f"could not push to the Pushgateway at {shown!r} (job={job!r}, grouping key {key}) after "
        f"{attempts} attempt(s): {type(last).__name__}: {_scrub(redact_text(str(last), gateway), secret)}; {hint}"
    ) from last


def _refused_credentials(err: BaseException | None) -> bool:
    """True for an HTTP 401 or 403 answer (urllib's ``HTTPError``, or the handlers' ``OSError`` text)."""
    if err is None:
        return False
    code = getattr(err, "code", None)
    if code in (401, 403):
        return True
    text = str(err)
    return any(f"talking to the Pushgateway: {c}" in text or f"HTTP Error {c}" in text for c in (401, 403))


_WARNED_PLAIN_HTTP: set[str] = set()


def warn_plain_http_auth(url: str) -> bool:
    """Log a warning, once per gateway and process, when basic-auth credentials go to ``url`` over
    plain HTTP (anyone on the path can read them); True when it warned now."""
    import logging

    scheme = url.partition("://")[0].lower() if "://" in url else "http"
    if scheme != "http" or url in _WARNED_PLAIN_HTTP:
        return False
    _WARNED_PLAIN_HTTP.add(url)
    logging.getLogger("relmon.export").warning(
        "basic-auth credentials are sent to the Pushgateway %s over plain HTTP, readable by anyone on the "
        "network path; fix: use an https:// gateway (push_tls_ca_file to verify it)", redact_url(url))
    return True


def _scrub(text: str, password) -> str:
    """``text`` with the password (if any) replaced by ``***``."""
    if password is not None and password.reveal():
        text = text.replace(password.reveal(), "***")
    return text


def write_textfile(registry: CollectorRegistry, path: str | os.PathLike) -> Path:
    """Write the exposition to ``path`` atomically (parent folders created); returns the path."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    _write_to_textfile(str(path), registry)
    return path


__all__ = ["HttpEndpoint", "PushError", "exposition", "push", "serve_http", "write_textfile"]
