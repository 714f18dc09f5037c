"""The PostgreSQL and Redis servers the scale-out adapters' tests use.

``PIGEON_TEST_POSTGRES`` (default ``postgresql://127.0.0.1:5432/test``) and
``PIGEON_TEST_REDIS`` (default ``redis://127.0.0.1:6379/0``) name them. A test that needs
one calls :func:`postgres_dsn` or :func:`redis_url`: when the server does not answer, the
test is skipped with the reason, except under CI (``CI`` set to anything but ``false``
or ``0``), where the servers are part of the machine and their absence fails the test.
Set a variable to ``off`` to skip those tests on purpose, CI or not.

Each test gets its own namespace (a PostgreSQL schema, a Redis key prefix) from
:func:`unique_name`, so tests and runs never see each other's data.
"""

from __future__ import annotations

import functools
import os
import secrets
import socket
from urllib.parse import urlsplit

import pytest

__all__ = ["postgres_dsn", "redis_url", "unique_name"]

_POSTGRES_DEFAULT = "postgresql://127.0.0.1:5432/test"
_REDIS_DEFAULT = "redis://127.0.0.1:6379/0"


def _in_ci() -> bool:
    return os.environ.get("CI", "").lower() not in ("", "false", "0")


@functools.cache
def _answers(host: str, port: int) -> str | None:
    """None if something accepts TCP connections there, else why not."""
    try:
        with socket.create_connection((host, port), timeout=2):
            return None
    except OSError as exc:
        return f"{type(exc).__name__}: {exc.strerror or exc}"


def _service(variable: str, default: str, what: str, default_port: int) -> str:
    url = os.environ.get(variable, default)
    if url.lower() == "off":
        pytest.skip(f"{what} tests turned off ({variable}=off)")
    parts = urlsplit(url)
    host, port = parts.hostname or "127.0.0.1", parts.port or default_port
    problem = _answers(host, port)
    if problem is not None:
        reason = (f"no {what} server at {host}:{port} ({problem}); "
                  f"set {variable} to its URL, or to 'off'")
        if _in_ci():
            pytest.fail(f"{reason}. Under CI the server must be there.", pytrace=False)
        pytest.skip(reason)
    return url


def postgres_dsn() -> str:
    """The test PostgreSQL server's DSN, or skip (fail under CI) when it is not there."""
    return _service("PIGEON_TEST_POSTGRES", _POSTGRES_DEFAULT, "PostgreSQL", 5432)


def redis_url() -> str:
    """The test Redis server's URL, or skip (fail under CI) when it is not there."""
    return _service("PIGEON_TEST_REDIS", _REDIS_DEFAULT, "Redis", 6379)


def unique_name(stem: str) -> str:
    """A fresh lower-case identifier for one test's schema or key prefix."""
    return f"{stem}_{secrets.token_hex(6)}"
