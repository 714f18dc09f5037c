"""Connection frames: connect, challenge, auth, register, welcome, ping/pong, ok, error.

Lifecycle: the client opens a WebSocket and sends :class:`Connect`; the relay answers
:class:`Challenge` (fresh nonce, its id, its clock). The client may then authenticate
as an account with :class:`Auth`, or create one with :class:`Register` (both answered
by :class:`Welcome`), or stay anonymous: an anonymous connection may only send
(``Send``, ``SendEphemeral``), fetch bundles, look up usernames, download blobs and
ping. Signatures cover :func:`protocol.challenge_payload`.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import ClassVar, Final

from .. import limits as L
from .._kinds import (
    ACCOUNT_ID,
    BOOL,
    ERROR_CODE,
    IDENTITY_KEY,
    NONCE,
    RELAY_ID,
    RETRY_AFTER_MS,
    SIGNATURE,
    TIME_MS,
)
from .._wire import Str, wire
from ._base import OPTIONAL_REQUEST_ID, Direction, Frame, Request, Response, register

__all__ = ["Auth", "Challenge", "Connect", "Error", "Ok", "Ping", "Pong", "Register", "Welcome"]

_INVITE: Final = Str(1, L.MAX_INVITE_CODE_SIZE)
_MESSAGE: Final = Str(0, L.MAX_ERROR_MESSAGE_SIZE)


@register
@dataclass(frozen=True, slots=True, kw_only=True)
class Connect(Request):
    """Client → relay, first frame of a connection; answered by :class:`Challenge`.

    The frame's version is the protocol version of the whole connection. A relay that
    does not speak it answers ``Error(UNSUPPORTED_VERSION)`` and closes.
    """

    TYPE: ClassVar[int] = 1
    DIRECTION: ClassVar[Direction] = Direction.TO_RELAY


@register
@dataclass(frozen=True, slots=True, kw_only=True)
class Challenge(Response):
    """Relay → client: a fresh challenge to sign (answers :class:`Connect`).

    Attributes:
        relay_id: the relay's stable id (16 or 32 bytes); bound into signatures.
        nonce: 32 random bytes, single use.
        server_time_ms: the relay's clock; bound into signatures, and lets clients
            estimate skew. The relay accepts an answer only within its freshness
            window (else ``STALE_CHALLENGE``).
    """

    TYPE: ClassVar[int] = 2
    DIRECTION: ClassVar[Direction] = Direction.TO_CLIENT
    relay_id: bytes = field(metadata=wire(1, RELAY_ID))
    nonce: bytes = field(metadata=wire(2, NONCE))
    server_time_ms: int = field(metadata=wire(3, TIME_MS))


@register
@dataclass(frozen=True, slots=True, kw_only=True)
class Auth(Request):
    """Client → relay: log in as an existing account; answered by :class:`Welcome`.

    Attributes:
        account_id: the account (16 bytes).
        signature: Ed25519 by the account's identity key, ``Purpose.RELAY_CHALLENGE``,
            over ``challenge_payload(relay_id, nonce, server_time_ms, account_id)``.
    """

    TYPE: ClassVar[int] = 3
    DIRECTION: ClassVar[Direction] = Direction.TO_RELAY
    account_id: bytes = field(metadata=wire(1, ACCOUNT_ID))
    signature: bytes = field(metadata=wire(2, SIGNATURE))


@register
@dataclass(frozen=True, slots=True, kw_only=True)
class Register(Request):
    """Client → relay: create an account; answered by :class:`Welcome`.

    Attributes:
        account_id: ``pigeon_crypto.identity.account_id_for(identity)``, which the relay
            checks (``INVALID_FIELD`` otherwise). Repeating a registration with the same
            key succeeds (``Welcome`` with ``new_account`` false).
        identity_key: the identity public key, opaque here (129 bytes in v1).
        signature: proof of possession: the identity's signature
            (``Purpose.RELAY_CHALLENGE``) over the same ``challenge_payload`` as Auth.
        invite_code: required by invitation-only relays.
    """

    TYPE: ClassVar[int] = 4
    DIRECTION: ClassVar[Direction] = Direction.TO_RELAY
    account_id: bytes = field(metadata=wire(1, ACCOUNT_ID))
    identity_key: bytes = field(metadata=wire(2, IDENTITY_KEY))
    signature: bytes = field(metadata=wire(3, SIGNATURE))
    invite_code: str | None = field(default=None, repr=False, metadata=wire(4, _INVITE))


@register
@dataclass(frozen=True, slots=True, kw_only=True)
class Welcome(Response):
    """Relay → client: the connection is authenticated as ``account_id``.

    Attributes:
        account_id: the authenticated account.
        server_time_ms: the relay's clock.
        new_account: ``True`` when this answers a :class:`Register` that created it.
    """

    TYPE: ClassVar[int] = 5
    DIRECTION: ClassVar[Direction] = Direction.TO_CLIENT
    account_id: bytes = field(metadata=wire(1, ACCOUNT_ID))
    server_time_ms: int = field(metadata=wire(2, TIME_MS))
    new_account: bool = field(default=False, metadata=wire(3, BOOL))


@register
@dataclass(frozen=True, slots=True, kw_only=True)
class Ping(Request):
    """Either way: liveness check; the peer answers :class:`Pong` with the same id."""

    TYPE: ClassVar[int] = 6
    DIRECTION: ClassVar[Direction] = Direction.BOTH


@register
@dataclass(frozen=True, slots=True, kw_only=True)
class Pong(Response):
    """Either way: answers :class:`Ping`."""

    TYPE: ClassVar[int] = 7
    DIRECTION: ClassVar[Direction] = Direction.BOTH


@register
@dataclass(frozen=True, slots=True, kw_only=True)
class Ok(Response):
    """Relay → client: the request succeeded and has nothing else to say."""

    TYPE: ClassVar[int] = 8
    DIRECTION: ClassVar[Direction] = Direction.TO_CLIENT


@register
@dataclass(frozen=True, slots=True, kw_only=True)
class Error(Frame):
    """Either way: a request failed, or (``request_id == 0``) the connection has a problem.

    Attributes:
        request_id: the failed request, or 0.
        code: an :class:`~protocol.ErrorCode`; unknown codes from newer peers decode
            as plain ints (classify them by their hundred).
        message: diagnostic text for logs, never shown as the reason to act on.
        retry_after_ms: with ``RATE_LIMITED``, ``OVERLOADED`` and ``UNAVAILABLE``:
            wait at least this long before retrying.
    """

    TYPE: ClassVar[int] = 9
    DIRECTION: ClassVar[Direction] = Direction.BOTH
    request_id: int = field(default=0, metadata=wire(None, OPTIONAL_REQUEST_ID))
    code: int = field(metadata=wire(1, ERROR_CODE))
    message: str | None = field(default=None, metadata=wire(2, _MESSAGE))
    retry_after_ms: int | None = field(default=None, metadata=wire(3, RETRY_AFTER_MS))
