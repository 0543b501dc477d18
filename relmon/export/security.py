"""Transport security of relmon's outputs: TLS and basic auth for the /metrics endpoint and for pushes.

Secrets are never taken from the config file itself: a password comes from a file
(``*_password_file``) or an environment variable (``*_password_env``), or, for pushes, from the user
part of the Pushgateway URL (``https://user:pass@host:9091``). It is held in a :class:`Secret`, whose
``repr``/``str`` never show the value, and every message that names the gateway uses
:func:`redact_url`.

- :class:`EndpointSecurity` — server certificate and key (TLS), a client CA (mutual TLS: clients must
  present a certificate it signed) and basic-auth credentials for ``serve_http``.
- :class:`PushSecurity` — basic auth, a CA bundle to verify the gateway and a client certificate
  for ``push``; :meth:`PushSecurity.handler` is a ``prometheus_client`` push handler.
- :func:`endpoint_security` / :func:`push_security` build them from a
  :class:`~relmon.config.MonitorConfig`, reading the secrets and failing with a
  :class:`~relmon.config.ConfigError` that names the field and the fix.
"""

from __future__ import annotations

import base64
import hmac
import os
import ssl
import urllib.request
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from urllib.parse import urlsplit, urlunsplit

from relmon.config import ConfigError
from relmon.urls import push_url_problem, redact_url


class Secret:
    """A string that never shows itself in ``repr``, ``str``, f-strings or tracebacks' locals."""

    __slots__ = ("_value",)

    def __init__(self, value: str):
        self._value = value

    def reveal(self) -> str:
        return self._value

    def __repr__(self) -> str:
        return "Secret('********')"

    __str__ = __repr__

    def __eq__(self, other) -> bool:
        return isinstance(other, Secret) and hmac.compare_digest(self._value, other._value)

    __hash__ = None  # type: ignore[assignment]


def split_credentials(url: str) -> tuple[str, str | None, Secret | None]:
    """``(url without user part, user or None, password or None)`` of a gateway address."""
    if "@" not in url:
        return url, None, None
    had_scheme = "://" in url
    parts = urlsplit(url if had_scheme else f"http://{url}")
    if parts.username is None:
        return url, None, None
    netloc = parts.netloc.rsplit("@", 1)[1]
    clean = urlunsplit((parts.scheme, netloc, parts.path, parts.query, parts.fragment))
    if not had_scheme:
        clean = clean.split("://", 1)[1]
    from urllib.parse import unquote

    password = Secret(unquote(parts.password)) if parts.password is not None else None
    return clean, unquote(parts.username), password


def read_secret(field_file: str, path: str | None, field_env: str, env: str | None) -> Secret | None:
    """The password from the file ``path`` (trailing newline stripped) or the variable ``env``."""
    if path and env:
        raise ConfigError(
            f"config fields {field_file!r} and {field_env!r} are both set; fix: give the password "
            "one way only"
        )
    if path:
        try:
            value = Path(path).read_text().rstrip("\r\n")
        except OSError as err:
            raise ConfigError(
                f"config field {field_file!r}: cannot read the password file {path!r} "
                f"({type(err).__name__}: {err.strerror or err}); fix: point it at a readable file "
                "that holds only the password"
            ) from None
        if not value:
            raise ConfigError(f"config field {field_file!r}: the password file {path!r} is empty")
        return Secret(value)
    if env:
        value = os.environ.get(env)
        if not value:
            raise ConfigError(
                f"config field {field_env!r}: the environment variable {env!r} is not set or empty; "
                f"fix: export {env} with the password, or use {field_file}"
            )
        return Secret(value)
    return None


def _readable(field: str, path: str | None) -> str | None:
    if path is None:
        return None
    if not os.access(path, os.R_OK) or not Path(path).is_file():
        raise ConfigError(
            f"config field {field!r}: {path!r} is not a readable file; fix: point {field} at a PEM file"
        )
    return str(path)


# --------------------------------------------------------------------------------------------------
# endpoint


@dataclass(frozen=True)
class EndpointSecurity:
    """TLS and basic auth of the /metrics endpoint (all optional; nothing set: plain HTTP, no auth).

    ``client_ca_file`` turns on mutual TLS: every client must present a certificate signed by it.
    ``username`` with ``password``: requests without matching ``Authorization: Basic`` get 401.
    """

    cert_file: str | None = None
    key_file: str | None = None
    client_ca_file: str | None = None
    username: str | None = None
    password: Secret | None = None

    def __post_init__(self):
        if bool(self.cert_file) != bool(self.key_file):
            raise ConfigError(
                "http_tls_cert_file and http_tls_key_file go together; fix: set both (TLS) or neither"
            )
        if self.client_ca_file and not self.cert_file:
            raise ConfigError(
                "http_tls_client_ca_file (mutual TLS) needs the endpoint to use TLS; fix: also set "
                "http_tls_cert_file and http_tls_key_file"
            )
        if (self.username is None) != (self.password is None):
            raise ConfigError(
                "basic auth of the endpoint needs http_auth_username and a password "
                "(http_auth_password_file or http_auth_password_env); fix: set both or neither"
            )

    @property
    def tls(self) -> bool:
        return bool(self.cert_file)

    def ssl_context(self) -> ssl.SSLContext | None:
        """The server's TLS context (TLS 1.2 or newer), or None without TLS."""
        if not self.tls:
            return None
        ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
        ctx.minimum_version = ssl.TLSVersion.TLSv1_2
        try:
            ctx.load_cert_chain(self.cert_file, self.key_file)
        except (OSError, ssl.SSLError) as err:
            raise ConfigError(
                f"cannot load the endpoint certificate {self.cert_file!r} with key {self.key_file!r}: "
                f"{err}; fix: give a PEM certificate and its matching unencrypted PEM key"
            ) from None
        if self.client_ca_file:
            try:
                ctx.load_verify_locations(cafile=self.client_ca_file)
            except (OSError, ssl.SSLError) as err:
                raise ConfigError(
                    f"cannot load the client CA {self.client_ca_file!r}: {err}; fix: give a PEM CA bundle"
                ) from None
            ctx.verify_mode = ssl.CERT_REQUIRED
        return ctx

    def wrap_app(self, app: Callable) -> Callable:
        """``app`` behind basic auth (401 with ``WWW-Authenticate`` on a missing or wrong password)."""
        if self.username is None:
            return app
        expected = b"Basic " + base64.b64encode(f"{self.username}:{self.password.reveal()}".encode())

        def guarded(environ, start_response):
            given = environ.get("HTTP_AUTHORIZATION", "").encode("latin-1", "replace")
            if hmac.compare_digest(given, expected):
                return app(environ, start_response)
            start_response(
                "401 Unauthorized",
                [("WWW-Authenticate", 'Basic realm="relmon", charset="UTF-8"'), ("Content-Type", "text/plain")],
            )
            return [b"401 Unauthorized: basic auth credentials required\n"]

        return guarded


def endpoint_security(cfg) -> EndpointSecurity:
    """The endpoint's :class:`EndpointSecurity` from a config (reads the password now)."""
    password = read_secret(
        "http_auth_password_file", cfg.http_auth_password_file, "http_auth_password_env", cfg.http_auth_password_env
    )
    if password is not None and not cfg.http_auth_username:
        raise ConfigError(
            "an endpoint password is configured but http_auth_username is not; fix: set http_auth_username"
        )
    if cfg.http_auth_username and password is None:
        raise ConfigError(
            "http_auth_username is set but no password; fix: set http_auth_password_file (a file "
            "holding only the password) or http_auth_password_env (an environment variable's name)"
        )
    if cfg.http_auth_username and not cfg.http_tls_cert_file:
        import logging

        logging.getLogger("relmon.export").warning(
            "the /metrics endpoint asks for basic auth over plain HTTP: the password crosses the network "
            "readable by anyone on the path; fix: set http_tls_cert_file and http_tls_key_file (HTTPS)")
    return EndpointSecurity(
        cert_file=_readable("http_tls_cert_file", cfg.http_tls_cert_file),
        key_file=_readable("http_tls_key_file", cfg.http_tls_key_file),
        client_ca_file=_readable("http_tls_client_ca_file", cfg.http_tls_client_ca_file),
        username=cfg.http_auth_username,
        password=password,
    )


# --------------------------------------------------------------------------------------------------
# push


@dataclass(frozen=True)
class PushSecurity:
    """Basic auth and TLS of pushes. ``ca_file`` verifies the gateway's certificate (default: the
    system's CAs); ``cert_file``/``key_file`` is the client certificate for a gateway that wants one."""

    username: str | None = None
    password: Secret | None = None
    ca_file: str | None = None
    cert_file: str | None = None
    key_file: str | None = None

    def __post_init__(self):
        if bool(self.cert_file) != bool(self.key_file):
            raise ConfigError(
                "push_tls_cert_file and push_tls_key_file go together; fix: set both or neither"
            )
        if (self.username is None) != (self.password is None):
            raise ConfigError(
                "basic auth of pushes needs push_username and a password (push_password_file, "
                "push_password_env or user:password in the pushgateway URL); fix: set both or neither"
            )

    def ssl_context(self) -> ssl.SSLContext:
        ctx = ssl.create_default_context(cafile=self.ca_file)
        if self.cert_file:
            ctx.load_cert_chain(self.cert_file, self.key_file)
        return ctx

    def handler(self, url, method, timeout, headers, data):
        """A ``prometheus_client`` push handler: one request with auth header and TLS context."""

        def handle():
            request = urllib.request.Request(url, data=data, method=method)
            for name, value in headers:
                request.add_header(name, value)
            if self.username is not None:
                token = base64.b64encode(f"{self.username}:{self.password.reveal()}".encode()).decode()
                request.add_header("Authorization", f"Basic {token}")
            opener = urllib.request.build_opener(urllib.request.HTTPSHandler(context=self.ssl_context()))
            with opener.open(request, timeout=timeout) as resp:
                if resp.status >= 400:
                    raise OSError(f"error talking to the Pushgateway: {resp.status} {resp.reason}")

        return handle


def push_security(cfg) -> tuple[str | None, PushSecurity]:
    """``(gateway URL without credentials, PushSecurity)`` from a config (reads the password now).

    Credentials in the URL (``http://user:pass@host:9091``) are accepted and moved into the
    Authorization header; they cannot be combined with ``push_username`` / ``push_password_*``.
    """
    gateway = cfg.pushgateway
    url_user = url_password = None
    if gateway:
        problem = push_url_problem(gateway)
        if problem is not None:
            raise ConfigError(f"config field 'pushgateway': {problem}")
        gateway, url_user, url_password = split_credentials(gateway)
    if url_user is not None and (cfg.push_username or cfg.push_password_file or cfg.push_password_env):
        raise ConfigError(
            f"the pushgateway URL {redact_url(cfg.pushgateway)!r} carries credentials and push_username / "
            "push_password_* are set too; fix: give the credentials one way (preferably push_username "
            "with push_password_file)"
        )
    password = read_secret("push_password_file", cfg.push_password_file, "push_password_env", cfg.push_password_env)
    if url_user is not None and url_password is None:
        raise ConfigError(
            f"the pushgateway URL {redact_url(cfg.pushgateway)!r} names a user but no password; fix: "
            "set push_username and push_password_file instead"
        )
    username = url_user if url_user is not None else cfg.push_username
    password = url_password if url_user is not None else password
    if cfg.push_username and password is None:
        raise ConfigError(
            "push_username is set but no password; fix: set push_password_file (a file holding only "
            "the password) or push_password_env (an environment variable's name)"
        )
    if password is not None and username is None:
        raise ConfigError("a push password is configured but push_username is not; fix: set push_username")
    security = PushSecurity(
        username=username,
        password=password,
        ca_file=_readable("push_tls_ca_file", cfg.push_tls_ca_file),
        cert_file=_readable("push_tls_cert_file", cfg.push_tls_cert_file),
        key_file=_readable("push_tls_key_file", cfg.push_tls_key_file),
    )
    return gateway, security


__all__ = [
    "EndpointSecurity",
    "PushSecurity",
    "Secret",
    "endpoint_security",
    "push_security",
    "read_secret",
    "redact_url",
    "split_credentials",
]
