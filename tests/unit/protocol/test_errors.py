"""Error codes are stable and every exception class carries the right one."""

from __future__ import annotations

import protocol
from pigeon_crypto.errors import PigeonError
from protocol import (
    ErrorCode,
    InvalidValue,
    LocalProtocolError,
    ProtocolError,
    RemoteProtocolError,
)
from protocol import errors as errors_module

PINNED = {
    "BAD_REQUEST": 100,
    "MALFORMED_FRAME": 101,
    "FRAME_TOO_LARGE": 102,
    "UNSUPPORTED_VERSION": 103,
    "UNKNOWN_TYPE": 104,
    "UNEXPECTED_FRAME": 105,
    "MISSING_FIELD": 106,
    "WRONG_FIELD_TYPE": 107,
    "INVALID_FIELD": 108,
    "LIMIT_EXCEEDED": 109,
    "DUPLICATE": 110,
    "UNAUTHORIZED": 200,
    "AUTH_FAILED": 201,
    "STALE_CHALLENGE": 202,
    "UNKNOWN_ACCOUNT": 203,
    "ACCOUNT_EXISTS": 204,
    "INVITE_REQUIRED": 205,
    "INVITE_INVALID": 206,
    "USERNAME_TAKEN": 207,
    "USERNAME_REJECTED": 208,
    "FORBIDDEN": 300,
    "WRONG_CAPABILITY": 301,
    "NO_SUCH_MAILBOX": 302,
    "NOT_FOUND": 303,
    "RATE_LIMITED": 400,
    "OVERLOADED": 401,
    "TOO_LARGE": 402,
    "QUOTA_EXCEEDED": 403,
    "INTERNAL": 500,
    "UNAVAILABLE": 501,
}


def test_error_codes_are_pinned() -> None:
    """Codes are wire-visible: renumbering one breaks deployed peers."""
    assert {c.name: c.value for c in ErrorCode} == PINNED


def test_hierarchy() -> None:
    assert issubclass(ProtocolError, PigeonError)
    assert issubclass(LocalProtocolError, ProtocolError)
    assert issubclass(RemoteProtocolError, ProtocolError)
    assert not issubclass(LocalProtocolError, RemoteProtocolError)
    exported = [getattr(errors_module, n) for n in errors_module.__all__ if n != "ErrorCode"]
    for cls in exported:
        assert issubclass(cls, ProtocolError), cls
        assert isinstance(cls.code, ErrorCode), cls
        assert issubclass(cls, (LocalProtocolError, RemoteProtocolError)) or cls in (
            ProtocolError,
        ), cls
    remote = [
        c for c in exported if issubclass(c, RemoteProtocolError) and c is not RemoteProtocolError
    ]
    assert all(c.code.value // 100 == 1 for c in remote)  # decode errors are all 1xx


def test_local_error_carries_structure_not_values() -> None:
    exc = InvalidValue(
        "Send", "blob", "70000 bytes exceed the maximum 65536", ErrorCode.LIMIT_EXCEEDED
    )
    assert str(exc) == "Send.blob: 70000 bytes exceed the maximum 65536"
    assert exc.request_id is None


def test_public_api_is_exported() -> None:
    for name in protocol.__all__:
        assert hasattr(protocol, name), name
    assert len(protocol.__all__) == len(set(protocol.__all__))
