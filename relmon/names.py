"""Names that come from outside (file names, stream names, folder paths) made safe to print and store.

Standard library only. Three uses:

- :func:`escape_name` — a file name as text that is valid UTF-8 and holds no control character: bytes
  that are not UTF-8 (Python keeps them as lone surrogates, ``"x\\udcff.png"``) become ``\\xff``, control
  characters (newline, carriage return, escape, ...) their backslash escape. Used for ``sample_id``
  (a Parquet string must be UTF-8) and everywhere a name is printed, so a file called
  ``"a\\nrelmon: INFO ..."`` cannot forge a log line.
- :func:`escape_text` — the same for a whole message (log lines, error messages).
- :func:`folder_name` — an injective, file-system-safe folder name for a stream name: two different
  stream names never share a records/state folder, and ``.``/``..`` never climb out of it.
"""

from __future__ import annotations

import hashlib
import logging
import re

# C0 controls, DEL and C1 controls, plus the Unicode line and paragraph separators.
_CONTROL = re.compile(r"[\x00-\x1f\x7f-\x9f\u2028\u2029]")
_SURROGATE = re.compile(r"[\ud800-\udfff]")
_SHORT = {"\n": "\\n", "\r": "\\r", "\t": "\\t"}


def _control(m: re.Match) -> str:
    c = m.group(0)
    return _SHORT.get(c) or (f"\\x{ord(c):02x}" if ord(c) < 0x100 else f"\\u{ord(c):04x}")


def _surrogate(m: re.Match) -> str:
    code = ord(m.group(0))
    # os.fsdecode keeps a byte b >= 0x80 that is not UTF-8 as U+DC00 + b (PEP 383 "surrogateescape")
    return f"\\x{code - 0xDC00:02x}" if 0xDC80 <= code <= 0xDCFF else f"\\u{code:04x}"


def escape_text(text: str) -> str:
    """``text`` with control characters and lone surrogates replaced by backslash escapes."""
    if not isinstance(text, str):
        text = str(text)
    return _CONTROL.sub(_control, _SURROGATE.sub(_surrogate, text))


def escape_name(name: str) -> str:
    """A file or stream name as printable UTF-8 text (see the module docstring); a name that is
    already printable UTF-8 comes back unchanged."""
    return escape_text(name)


def is_clean(name: str) -> bool:
    """True when :func:`escape_name` leaves ``name`` unchanged."""
    return not (_CONTROL.search(name) or _SURROGATE.search(name))


_FOLDER_SAFE = re.compile(r"[A-Za-z0-9_.-]")
_MAX_FOLDER = 120  # bytes of an encoded folder name before it is shortened with a hash


def folder_name(stream: str) -> str:
    """The folder (one path component) that holds a stream's records and state.

    Letters, digits, ``_``, ``-`` and ``.`` stay as they are (so the folder of the usual names, e.g.
    ``default`` or ``cam-1``, is the name itself); every other character, a leading ``.`` and ``%`` itself
    become ``%XX`` per UTF-8 byte. The encoding is reversible, so two different names never share a
    folder, and no name gives ``.``, ``..``, a hidden folder or a path separator. A name whose encoding
    is longer than 120 bytes is cut and ends in the first 16 hex digits of its SHA-256.
    """
    if not isinstance(stream, str) or not stream:
        raise ValueError(f"a stream name must be a non-empty string, got {stream!r}")
    out = []
    for i, c in enumerate(stream):
        if _FOLDER_SAFE.fullmatch(c) and not (i == 0 and c == "."):
            out.append(c)
        else:
            out.extend(f"%{b:02X}" for b in c.encode("utf-8", "surrogatepass"))
    encoded = "".join(out)
    if len(encoded) > _MAX_FOLDER:
        digest = hashlib.sha256(stream.encode("utf-8", "surrogatepass")).hexdigest()[:16]
        encoded = f"{encoded[:_MAX_FOLDER - 17]}~{digest}"
    return encoded


class EscapingFormatter(logging.Formatter):
    """A log formatter whose message part has control characters escaped (a name holding a newline
    cannot make a second, forged log line); a traceback, appended after the message, keeps its lines."""

    def formatMessage(self, record: logging.LogRecord) -> str:  # noqa: N802 (logging's name)
        saved = record.message
        record.message = escape_text(saved)
        try:
            return super().formatMessage(record)
        finally:
            record.message = saved


__all__ = ["EscapingFormatter", "escape_name", "escape_text", "folder_name", "is_clean"]
