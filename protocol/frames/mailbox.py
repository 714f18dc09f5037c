"""Mailbox frames: create, rotate, delete, contact mailbox, subscribe, push.

A mailbox is a one-way queue owned by the account that created it. Its id is chosen
by the relay (16 random bytes); the owner chooses the send capability (32 random
bytes) and gives the relay only ``capability_hash`` = SHA-256(capability), computed
by the SDK. All frames here need an authenticated connection and ownership of the
mailboxes named (``FORBIDDEN`` / ``NO_SUCH_MAILBOX``).
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import ClassVar, Final

from .. import limits as L
from .._kinds import CAPABILITY, CAPABILITY_HASH, MAILBOX_ID, MAILBOX_IDS, TIME_MS
from .._wire import Str, TupleOf, wire
from ._base import Direction, Request, Response, register

__all__ = [
    "CreateMailbox",
    "DeleteMailbox",
    "MailboxCreated",
    "RegisterPush",
    "RotateMailbox",
    "SetContactMailbox",
    "Subscribe",
    "Subscribed",
    "Unsubscribe",
]

_PUSH_URL: Final = Str(1, L.MAX_PUSH_URL_SIZE, pattern=r"https://\S+")
_REJECTED_IDS: Final = TupleOf(MAILBOX_ID, 0, L.MAX_MAILBOXES_PER_SUBSCRIBE)


@register
@dataclass(frozen=True, slots=True, kw_only=True)
class CreateMailbox(Request):
    """Client → relay: create a mailbox; answered by :class:`MailboxCreated`.

    Attributes:
        capability_hash: SHA-256 of the send capability (the relay never sees the
            capability itself, except for a contact mailbox, see SetContactMailbox).
    """

    TYPE: ClassVar[int] = 30
    DIRECTION: ClassVar[Direction] = Direction.TO_RELAY
    capability_hash: bytes = field(metadata=wire(1, CAPABILITY_HASH))


@register
@dataclass(frozen=True, slots=True, kw_only=True)
class MailboxCreated(Response):
    """Relay → client: the new mailbox id (answers CreateMailbox and RotateMailbox)."""

    TYPE: ClassVar[int] = 31
    DIRECTION: ClassVar[Direction] = Direction.TO_CLIENT
    mailbox_id: bytes = field(metadata=wire(1, MAILBOX_ID))


@register
@dataclass(frozen=True, slots=True, kw_only=True)
class RotateMailbox(Request):
    """Client → relay: replace ``mailbox_id`` by a new mailbox with a new capability.

    Answered by :class:`MailboxCreated` with the new id; the new mailbox inherits the
    subscription and push registration. The old mailbox keeps accepting sends until
    ``retire_at_ms`` (default: the relay's grace period), so messages in flight while
    the rotation is announced (inside the session) still arrive; then it is deleted
    after its stored envelopes are acked or expire.
    """

    TYPE: ClassVar[int] = 32
    DIRECTION: ClassVar[Direction] = Direction.TO_RELAY
    mailbox_id: bytes = field(metadata=wire(1, MAILBOX_ID))
    capability_hash: bytes = field(metadata=wire(2, CAPABILITY_HASH))
    retire_at_ms: int | None = field(default=None, metadata=wire(3, TIME_MS))


@register
@dataclass(frozen=True, slots=True, kw_only=True)
class DeleteMailbox(Request):
    """Client → relay: delete a mailbox and its stored envelopes now. Answered by ``Ok``."""

    TYPE: ClassVar[int] = 33
    DIRECTION: ClassVar[Direction] = Direction.TO_RELAY
    mailbox_id: bytes = field(metadata=wire(1, MAILBOX_ID))


@register
@dataclass(frozen=True, slots=True, kw_only=True)
class SetContactMailbox(Request):
    """Client → relay: publish one owned mailbox as the account's contact mailbox.

    The capability is published with the bundle (anyone may write a first message;
    credits limit abuse), so here the relay receives it in clear and checks that its
    SHA-256 matches the mailbox's ``capability_hash``. Answered by ``Ok``.
    """

    TYPE: ClassVar[int] = 34
    DIRECTION: ClassVar[Direction] = Direction.TO_RELAY
    mailbox_id: bytes = field(metadata=wire(1, MAILBOX_ID))
    capability: bytes = field(repr=False, metadata=wire(2, CAPABILITY))


@register
@dataclass(frozen=True, slots=True, kw_only=True)
class Subscribe(Request):
    """Client → relay: start delivery from these owned mailboxes on this connection.

    Answered by :class:`Subscribed`. The relay then sends every unacked envelope of
    each mailbox as ``Delivery`` frames in sequence order, followed by new ones as they
    arrive. Subscribing again on another connection moves the subscription there.
    """

    TYPE: ClassVar[int] = 35
    DIRECTION: ClassVar[Direction] = Direction.TO_RELAY
    mailbox_ids: tuple[bytes, ...] = field(metadata=wire(1, MAILBOX_IDS))


@register
@dataclass(frozen=True, slots=True, kw_only=True)
class Subscribed(Response):
    """Relay → client: subscription result.

    Attributes:
        rejected: the requested mailboxes that do not exist or are not owned by this
            account (all others are subscribed).
    """

    TYPE: ClassVar[int] = 36
    DIRECTION: ClassVar[Direction] = Direction.TO_CLIENT
    rejected: tuple[bytes, ...] = field(default=(), metadata=wire(1, _REJECTED_IDS))


@register
@dataclass(frozen=True, slots=True, kw_only=True)
class Unsubscribe(Request):
    """Client → relay: stop delivery of these mailboxes here. Answered by ``Ok``."""

    TYPE: ClassVar[int] = 37
    DIRECTION: ClassVar[Direction] = Direction.TO_RELAY
    mailbox_ids: tuple[bytes, ...] = field(metadata=wire(1, MAILBOX_IDS))


@register
@dataclass(frozen=True, slots=True, kw_only=True)
class RegisterPush(Request):
    """Client → relay: set (or with ``url`` absent, clear) a push endpoint.

    When an envelope arrives for one of these mailboxes and no connection is
    subscribed, the relay POSTs an empty body to ``url``: a content-free wake-up
    (no mailbox id, no sender, no count). Answered by ``Ok``.
    """

    TYPE: ClassVar[int] = 38
    DIRECTION: ClassVar[Direction] = Direction.TO_RELAY
    mailbox_ids: tuple[bytes, ...] = field(metadata=wire(1, MAILBOX_IDS))
    url: str | None = field(default=None, repr=False, metadata=wire(2, _PUSH_URL))
