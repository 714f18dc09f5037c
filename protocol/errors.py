"""Protocol errors: the typed exceptions of ``protocol`` and the wire error codes.

Two things live here:

* :class:`ErrorCode`, the stable integers a relay puts in an ``Error`` frame and in
  the per-recipient results of ``Sent``. Codes are grouped by hundreds (``1xx`` the
  frame itself, ``2xx`` authentication and accounts, ``3xx`` mailboxes and
  addressing, ``4xx`` resources, ``5xx`` the relay). A code is never reused or
  renumbered; a receiver that meets a code it does not know keeps the integer and
  can still classify it by its hundred.
* The exception family rooted at :class:`ProtocolError` (itself a
  :class:`~pigeon_crypto.errors.PigeonError`). As in h11, it is split by *blame*:

  - :class:`LocalProtocolError`: our own caller built or encoded something invalid
    (a bug on this side; never caused by peer bytes);
  - :class:`RemoteProtocolError`: the peer sent bytes we reject. Each subclass has a
    stable ``code`` class attribute (an :class:`ErrorCode`), so a relay can answer
    ``Error(code=exc.code, request_id=exc.request_id)`` without a lookup table.

Hierarchy::

    ProtocolError                         code
    ├── LocalProtocolError                BAD_REQUEST (never sent)
    │   ├── InvalidValue                  a constructor argument has a bad type/size/value
    │   └── InvalidUsername               normalize_username() rejected user input
    └── RemoteProtocolError               BAD_REQUEST
        ├── FrameTooLarge                 FRAME_TOO_LARGE   (checked before parsing)
        ├── MalformedFrame                MALFORMED_FRAME   (not msgpack, truncated,
        │   │                                                trailing bytes, bad shape)
        │   └── NestingTooDeep            MALFORMED_FRAME   (parser stack limit)
        ├── UnsupportedProtocolVersion    UNSUPPORTED_VERSION
        │   ├── ProtocolVersionTooOld
        │   └── UnknownProtocolVersion
        ├── UnknownFrameType              UNKNOWN_TYPE      (frames)
        ├── UnknownMessageKind            UNKNOWN_TYPE      (inner messages)
        ├── UnexpectedFrame               UNEXPECTED_FRAME  (valid, but wrong direction/type)
        ├── MissingField                  MISSING_FIELD
        ├── WrongFieldType                WRONG_FIELD_TYPE  (bool is not int, str is not bytes)
        ├── InvalidFieldValue             INVALID_FIELD     (right type, wrong size/range/format)
        └── LimitExceeded                 LIMIT_EXCEEDED    (a length or count above its limit)

Every error carries structured fields (``what``: the frame or record name,
``field``, ``reason``) and never key, capability or plaintext bytes, so messages
are safe to log.
"""

from __future__ import annotations

import enum
from typing import ClassVar

from pigeon_crypto.errors import PigeonError

__all__ = [
    "ErrorCode",
    "FrameTooLarge",
    "InvalidFieldValue",
    "InvalidUsername",
    "InvalidValue",
    "LimitExceeded",
    "LocalProtocolError",
    "MalformedFrame",
    "MissingField",
    "NestingTooDeep",
    "ProtocolError",
    "ProtocolVersionTooOld",
    "RemoteProtocolError",
    "UnexpectedFrame",
    "UnknownFrameType",
    "UnknownMessageKind",
    "UnknownProtocolVersion",
    "UnsupportedProtocolVersion",
    "WrongFieldType",
]


class ErrorCode(enum.IntEnum):
    """Stable wire error codes (``Error.code``, ``Sent.rejected``). Never renumbered."""

    # 1xx: the frame itself. The request was not understood; do not retry unchanged.
    BAD_REQUEST = 100
    """Generic rejection of a request that is otherwise not classified."""
    MALFORMED_FRAME = 101
    """Not msgpack, truncated, trailing bytes, nested too deep, or not the frame shape."""
    FRAME_TOO_LARGE = 102
    """The frame exceeds ``MAX_FRAME_SIZE``."""
    UNSUPPORTED_VERSION = 103
    """The protocol version is too old or unknown to the receiver."""
    UNKNOWN_TYPE = 104
    """Unknown frame type (or inner message kind)."""
    UNEXPECTED_FRAME = 105
    """A valid frame that is not acceptable now: wrong direction (a relay-to-client frame
    sent to the relay), or wrong connection state (``Auth`` twice, ``Auth`` before
    ``Challenge``)."""
    MISSING_FIELD = 106
    """A required field is absent."""
    WRONG_FIELD_TYPE = 107
    """A field has the wrong msgpack type (``bool`` is not ``int``; ``str`` is not ``bin``)."""
    INVALID_FIELD = 108
    """A field has the right type but a wrong size, range or format."""
    LIMIT_EXCEEDED = 109
    """A length or count is above its limit from :mod:`protocol.limits`."""
    DUPLICATE = 110
    """The request id is already in flight on this connection."""

    # 2xx: authentication and accounts.
    UNAUTHORIZED = 200
    """The request needs an authenticated connection (``Auth`` or ``Register`` first)."""
    AUTH_FAILED = 201
    """The challenge signature did not verify for the account's identity key."""
    STALE_CHALLENGE = 202
    """The challenge is expired or was already answered; reconnect for a fresh one."""
    UNKNOWN_ACCOUNT = 203
    """No account with that id (``Auth``, ``FetchBundle``)."""
    ACCOUNT_EXISTS = 204
    """``Register`` for an account id that is already registered with another key."""
    INVITE_REQUIRED = 205
    """This relay registers accounts by invitation only."""
    INVITE_INVALID = 206
    """The invite code is unknown, used up or expired."""
    USERNAME_TAKEN = 207
    """The username is bound to another account."""
    USERNAME_REJECTED = 208
    """The username is well-formed but refused by relay policy (reserved names)."""

    # 3xx: mailboxes and addressing.
    FORBIDDEN = 300
    """Authenticated, but not the owner of the mailbox / username concerned."""
    WRONG_CAPABILITY = 301
    """The send capability does not match, or the mailbox does not exist (senders are not
    told which: see docs, "What the relay learns")."""
    NO_SUCH_MAILBOX = 302
    """Owner operations only: the mailbox does not exist (anymore)."""
    NOT_FOUND = 303
    """The username, bundle or blob looked up does not exist."""

    # 4xx: resources. Retry later, after ``retry_after_ms`` when given.
    RATE_LIMITED = 400
    """Out of credits on this connection or mailbox; retry after ``retry_after_ms``."""
    OVERLOADED = 401
    """The relay sheds load; retry after ``retry_after_ms``."""
    TOO_LARGE = 402
    """Within protocol limits but above this relay's policy (e.g. file size)."""
    QUOTA_EXCEEDED = 403
    """Too many mailboxes, prekeys, usernames or stored bytes for this account."""

    # 5xx: the relay. The request may be retried with the same ``client_msg_id``.
    INTERNAL = 500
    """Unexpected relay failure; nothing was stored."""
    UNAVAILABLE = 501
    """Storage or bus temporarily unavailable; nothing was stored."""


class ProtocolError(PigeonError):
    """Root of protocol errors.

    Attributes:
        code: the stable :class:`ErrorCode` of this error class.
        request_id: the request id of the frame being decoded, when it was read
            before the error (so a relay can answer with a correlated ``Error``);
            ``None`` otherwise.
    """

    code: ClassVar[ErrorCode] = ErrorCode.BAD_REQUEST

    def __init__(self, message: str) -> None:
        super().__init__(message)
        self.request_id: int | None = None


class LocalProtocolError(ProtocolError):
    """Our caller tried to build or encode something invalid (a local bug)."""


class InvalidValue(LocalProtocolError):
    """A constructor argument of a frame, envelope or inner message is invalid.

    Attributes:
        what: the class name, e.g. ``"Send"``.
        field: the field name, e.g. ``"client_msg_id"``.
        reason: what is wrong, safe to log (sizes and types, never values).
        problem: the code this would carry had a peer sent it:
            ``WRONG_FIELD_TYPE``, ``INVALID_FIELD`` or ``LIMIT_EXCEEDED``.
    """

    def __init__(self, what: str, field: str, reason: str, problem: ErrorCode) -> None:
        super().__init__(f"{what}.{field}: {reason}")
        self.what = what
        self.field = field
        self.reason = reason
        self.problem = problem


class InvalidUsername(LocalProtocolError):
    """User input is not a valid username (see :func:`protocol.normalize_username`).

    Attributes:
        reason: the rule that failed.
    """

    def __init__(self, reason: str) -> None:
        super().__init__(f"invalid username: {reason}")
        self.reason = reason


class RemoteProtocolError(ProtocolError):
    """The peer sent bytes that we reject. Subclasses carry a specific ``code``."""


class FrameTooLarge(RemoteProtocolError):
    """The input is longer than the limit; rejected before any parsing.

    Attributes:
        size: the input length in bytes.
        maximum: the limit.
    """

    code = ErrorCode.FRAME_TOO_LARGE

    def __init__(self, what: str, size: int, maximum: int) -> None:
        super().__init__(f"{what} of {size} bytes exceeds the maximum of {maximum}")
        self.what = what
        self.size = size
        self.maximum = maximum


class MalformedFrame(RemoteProtocolError):
    """The bytes are not a well-formed frame: bad msgpack, truncated, trailing bytes,
    a map key that is not an integer, a duplicated key, or the wrong overall shape.

    Attributes:
        what: ``"frame"``, ``"envelope"``, ``"inner message"``...
        reason: a short description.
    """

    code = ErrorCode.MALFORMED_FRAME

    def __init__(self, what: str, reason: str) -> None:
        super().__init__(f"malformed {what}: {reason}")
        self.what = what
        self.reason = reason


class NestingTooDeep(MalformedFrame):
    """Containers nested deeper than the parser's stack allows."""


class UnsupportedProtocolVersion(RemoteProtocolError):
    """The version is not one we speak.

    Attributes:
        what: the object kind.
        got: the version read (an ``int``; ``-1`` when it was not an integer at all).
        supported: the versions this code accepts.
    """

    code = ErrorCode.UNSUPPORTED_VERSION

    def __init__(self, what: str, got: int, supported: tuple[int, ...]) -> None:
        super().__init__(f"{what}: unsupported version {got} (supported: {list(supported)})")
        self.what = what
        self.got = got
        self.supported = supported


class ProtocolVersionTooOld(UnsupportedProtocolVersion):
    """A version we used to speak and no longer accept."""


class UnknownProtocolVersion(UnsupportedProtocolVersion):
    """A version newer than (or foreign to) this code."""


class UnknownFrameType(RemoteProtocolError):
    """The frame type code is not in the registry.

    Attributes:
        frame_type: the integer read.
    """

    code = ErrorCode.UNKNOWN_TYPE

    def __init__(self, frame_type: int) -> None:
        super().__init__(f"unknown frame type {frame_type}")
        self.frame_type = frame_type


class UnknownMessageKind(RemoteProtocolError):
    """The inner message kind is not one we know (a newer client may have sent it).

    Attributes:
        kind: the integer read.
    """

    code = ErrorCode.UNKNOWN_TYPE

    def __init__(self, kind: int) -> None:
        super().__init__(f"unknown inner message kind {kind}")
        self.kind = kind


class UnexpectedFrame(RemoteProtocolError):
    """A well-formed frame that is not acceptable here (direction or expected type).

    Attributes:
        got: the frame class name received.
        expected: what was acceptable, e.g. ``"a frame sent to the relay"``.
    """

    code = ErrorCode.UNEXPECTED_FRAME

    def __init__(self, got: str, expected: str) -> None:
        super().__init__(f"unexpected {got}: expected {expected}")
        self.got = got
        self.expected = expected


class _FieldError(RemoteProtocolError):
    """Base of the per-field decode errors (not exported)."""

    def __init__(self, what: str, field: str, reason: str) -> None:
        super().__init__(f"{what}.{field}: {reason}")
        self.what = what
        self.field = field
        self.reason = reason


class MissingField(_FieldError):
    """A required field is absent."""

    code = ErrorCode.MISSING_FIELD

    def __init__(self, what: str, field: str) -> None:
        super().__init__(what, field, "required field is missing")


class WrongFieldType(_FieldError):
    """A field has the wrong msgpack type (``bool`` for ``int``, ``str`` for bytes...)."""

    code = ErrorCode.WRONG_FIELD_TYPE


class InvalidFieldValue(_FieldError):
    """A field has the right type but a wrong size, range or format."""

    code = ErrorCode.INVALID_FIELD


class LimitExceeded(_FieldError):
    """A length or count is above its limit (from :mod:`protocol.limits`)."""

    code = ErrorCode.LIMIT_EXCEEDED
