"""Gateway addresses: checking a Pushgateway URL when the config loads, and redacting its credentials.

Standard library only (the config, the exporters and the CLI import it). A password may hold any
character, and ``urllib.parse`` splits an unencoded ``#``, ``/`` or ``?`` in it into the fragment, path
or query, so a password would show as "host" or "path" in a message. :func:`redact_url` therefore does
not parse: it hides everything between ``://`` (or the start, without a scheme) and the **last** ``@``,
however the rest parses. :func:`push_url_problem` refuses, when the config loads, a URL whose user
part holds one of those characters unencoded (they would cut the URL elsewhere than its author meant).
"""

from __future__ import annotations

import re
from urllib.parse import urlsplit

REDACTED = "***"
# The characters that end the authority of a URL (RFC 3986 3.2): unencoded in a user part, they cut it.
_CUTTERS = ("/", "?", "#")
_SCHEMES = ("http", "https")


def redact_url(url: str) -> str:
    """``url`` with everything between ``://`` (or its start) and its last ``@`` replaced by ``***``.

    No parsing is involved, so no password can survive, whatever characters it holds:
    ``http://u:p#a/b?c@host:9091`` -> ``http://***@host:9091``.
    """
    if not isinstance(url, str) or "@" not in url:
        return url
    scheme, sep, rest = url.partition("://")
    if not sep:
        scheme, rest = "", url
    return f"{scheme}{sep}{REDACTED}@{rest.rpartition('@')[2]}"


def redact_text(text: str, url: str | None) -> str:
    """``text`` with the credentials of ``url`` (its user part, and the password alone) replaced by
    ``***`` wherever they appear, and the URL itself shown redacted."""
    if not url or "@" not in url or not isinstance(text, str):
        return text
    scheme, sep, rest = url.partition("://")
    userinfo = (rest if sep else url).rpartition("@")[0]
    text = text.replace(url, redact_url(url))
    pieces = [userinfo, userinfo.partition(":")[2]]
    for piece in sorted({p for p in pieces if p}, key=len, reverse=True):
        text = text.replace(piece, REDACTED)
    return text


def push_url_problem(url: str) -> str | None:
    """Why ``url`` is not a usable Pushgateway address (None when it is); the reason never shows the
    password.

    Accepted: ``host:port``, ``http(s)://host[:port][/path]``, optionally with ``user:password@``
    before the host, where the user part holds no unencoded ``/``, ``?`` or ``#`` (percent-encode them
    as ``%2F``, ``%3F``, ``%23``); an ``@`` in the password is read up to the last ``@``.
    """
    shown = redact_url(url)
    scheme, sep, rest = url.partition("://")
    if sep and scheme.lower() not in _SCHEMES:
        return f"pushgateway {shown!r} has the scheme {scheme!r}; expected http:// or https://"
    if not sep:
        rest = url
    userinfo, at, hostpart = rest.rpartition("@")
    if at:
        cut = [c for c in _CUTTERS if c in userinfo]
        if cut:
            codes = ", ".join(f"{c!r} as %{ord(c):02X}" for c in cut)
            return (
                f"the user part of pushgateway {shown!r} holds unencoded {', '.join(repr(c) for c in cut)}, which "
                f"cut the URL before its host; fix: percent-encode them ({codes}), or better put the password in "
                "push_password_file and the user in push_username"
            )
        if not userinfo:
            return f"pushgateway {shown!r} has an empty user part before '@'"
    authority = re.split(r"[/?#]", hostpart, maxsplit=1)[0]
    try:
        parts = urlsplit(f"http://{authority}")
        port = parts.port  # ValueError for a port that is not a number in 0..65535
        host = parts.hostname
    except ValueError as err:
        return f"pushgateway {shown!r} has a bad host or port ({err})"
    if not host:
        return f"pushgateway {shown!r} names no host"
    del port
    return None


__all__ = ["REDACTED", "push_url_problem", "redact_text", "redact_url"]
