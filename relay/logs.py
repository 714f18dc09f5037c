"""Logging for the relay: text or JSON lines, with redaction of anything secret-looking.

Theory of operation:

* :func:`setup_logging` installs one handler on the root logger (stderr by default), so the
  relay's loggers (``pigeon.relay.*``) and aiohttp's (``aiohttp.access``,
  ``aiohttp.server``...) share the format.
* The relay never logs frame payloads, tokens, capabilities or keys. Redaction is the
  second line of defence, applied to every record by :class:`RedactingFilter` and to every
  finished line by the formatters:

  - a ``bytes``/``bytearray``/``memoryview`` value (message, argument or ``extra`` field)
    is replaced by ``<N bytes>``: frame payloads are bytes, so they cannot reach a log;
  - an ``extra`` field whose name suggests a secret (token, secret, key, capability,
    password, authorization, payload, blob, frame, cookie) is replaced by ``[redacted]``;
  - in the finished line, bytes literals (``b'...'``, e.g. in an exception message), runs
    of 32 or more hex digits and of 40 or more base64url
    characters mixing digits and both cases are replaced by ``[redacted]``. This also hides
    mailbox and blob ids (32 hex digits) from access logs, which is intended: ids are
    metadata the operator does not need. A TLS fingerprint logged on purpose is written
    with colons (``AB:CD:...``) and is not affected.

* JSON lines: one object per record with ``ts`` (UTC, ISO 8601, milliseconds), ``level``,
  ``logger``, ``msg``, the ``extra`` fields, and ``exc`` for a traceback.
"""

from __future__ import annotations

import datetime as _dt
import json
import logging
import re
import sys
from collections.abc import Mapping
from typing import Any, Final, TextIO

from .config import LogFormat

__all__ = [
    "RELAY_LOGGER",
    "JsonFormatter",
    "RedactingFilter",
    "TextFormatter",
    "redact_text",
    "setup_logging",
]

RELAY_LOGGER: Final = "pigeon.relay"
REDACTED: Final = "[redacted]"

_HEX_RUN = re.compile(r"(?<![0-9A-Za-z])[0-9A-Fa-f]{32,}(?![0-9A-Za-z])")
_B64_RUN = re.compile(r"(?<![A-Za-z0-9_\-])[A-Za-z0-9_\-]{40,}={0,2}")
_BLOB_PATH = re.compile(r"(/v1/blobs/)[^/\s]+/[0-9]+")
"""A blob URL's id and token expiry: the expiry, one per grant, would link an upload to
its downloads in an access log as well as the id would."""
_BYTES_LITERAL = re.compile(r"""\bb(?:'(?:[^'\\\n]|\\.)*'|"(?:[^"\\\n]|\\.)*")""")
_SECRET_NAME = re.compile(
    r"token|secret|key|capab|passw|authoriz|payload|blob|frame|cookie|nonce|signature",
    re.IGNORECASE,
)
# Attributes every LogRecord has; anything else on a record came from ``extra=``.
_STANDARD_ATTRS: Final = frozenset(
    vars(logging.LogRecord("", 0, "", 0, "", None, None)).keys() | {"message", "asctime"}
)


def _looks_random(run: str) -> bool:
    return (any(c.isdigit() for c in run) and any(c.islower() for c in run)
            and any(c.isupper() for c in run))


def redact_text(text: str) -> str:
    """Replace bytes literals (``b'...'``, as in an exception message), a blob URL's id
    and expiry, long hex runs and random-looking base64url runs by ``[redacted]``."""
    text = _BYTES_LITERAL.sub("b'" + REDACTED + "'", text)
    text = _BLOB_PATH.sub(r"\g<1>" + REDACTED, text)
    text = _HEX_RUN.sub(REDACTED, text)
    return _B64_RUN.sub(lambda m: REDACTED if _looks_random(m.group(0)) else m.group(0), text)


def _safe(value: Any) -> Any:
    if isinstance(value, bytes | bytearray | memoryview):
        return f"<{len(value)} bytes>"
    return value


class RedactingFilter(logging.Filter):
    """Replaces bytes and secret-named ``extra`` fields before a record is formatted."""

    def filter(self, record: logging.LogRecord) -> bool:
        record.msg = _safe(record.msg)
        if isinstance(record.args, Mapping):
            record.args = {k: _safe(v) for k, v in record.args.items()}
        elif isinstance(record.args, tuple):
            record.args = tuple(_safe(a) for a in record.args)
        for name, value in list(vars(record).items()):
            if name in _STANDARD_ATTRS:
                continue
            if _SECRET_NAME.search(name):
                setattr(record, name, REDACTED)
            else:
                setattr(record, name, _safe(value))
        return True


def _extras(record: logging.LogRecord) -> dict[str, Any]:
    return {k: v for k, v in vars(record).items() if k not in _STANDARD_ATTRS}


def _jsonable(value: Any) -> Any:
    if value is None or isinstance(value, bool | int | float | str):
        return value
    if isinstance(value, list | tuple):
        return [_jsonable(v) for v in value]
    if isinstance(value, Mapping):
        return {str(k): _jsonable(v) for k, v in value.items()}
    return str(_safe(value))


class TextFormatter(logging.Formatter):
    """``2026-11-22T08:00:00.000Z INFO pigeon.relay: message key=value ...``"""

    def format(self, record: logging.LogRecord) -> str:
        ts = _timestamp(record)
        parts = [f"{ts} {record.levelname} {record.name}: {record.getMessage()}"]
        if record.name != "aiohttp.access":  # its extras repeat the access line
            parts += [f"{k}={_safe(v)}" for k, v in _extras(record).items()]
        line = " ".join(parts)
        if record.exc_info:
            line += "\n" + self.formatException(record.exc_info)
        if record.stack_info:
            line += "\n" + self.formatStack(record.stack_info)
        return redact_text(line)


class JsonFormatter(logging.Formatter):
    """One JSON object per line."""

    def format(self, record: logging.LogRecord) -> str:
        obj: dict[str, Any] = {
            "ts": _timestamp(record),
            "level": record.levelname,
            "logger": record.name,
            "msg": redact_text(record.getMessage()),
        }
        for k, v in _extras(record).items():
            value = _jsonable(v)
            obj.setdefault(k, redact_text(value) if isinstance(value, str) else value)
        if record.exc_info:
            obj["exc"] = redact_text(self.formatException(record.exc_info))
        if record.stack_info:
            obj["stack"] = redact_text(self.formatStack(record.stack_info))
        # Strings are redacted before encoding (JSON escaping would hide a bytes literal)
        # and the line again after (nested values; escaping does not split hex runs).
        return redact_text(json.dumps(obj, separators=(",", ":")))


def _timestamp(record: logging.LogRecord) -> str:
    t = _dt.datetime.fromtimestamp(record.created, tz=_dt.UTC)
    return t.strftime("%Y-%m-%dT%H:%M:%S.") + f"{t.microsecond // 1000:03d}Z"


_INSTALLED: list[logging.Handler] = []


def setup_logging(
    level: str = "INFO", fmt: LogFormat = LogFormat.TEXT, *, stream: TextIO | None = None
) -> logging.Handler:
    """Send all logging to *stream* (default stderr) in *fmt*, at *level* and above.

    Calling it again replaces the handler it installed before (tests, reconfiguration).

    Returns:
        The installed handler.
    """
    root = logging.getLogger()
    for old in _INSTALLED:
        root.removeHandler(old)
    _INSTALLED.clear()
    handler = logging.StreamHandler(stream if stream is not None else sys.stderr)
    handler.addFilter(RedactingFilter())
    handler.setFormatter(JsonFormatter() if fmt is LogFormat.JSON else TextFormatter())
    root.addHandler(handler)
    root.setLevel(level.upper())
    _INSTALLED.append(handler)
    return handler
