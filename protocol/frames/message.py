"""Message frames: durable and ephemeral sends, deliveries, acks.

Guarantees (docs/protocol.md, "Ordering and acks"):

* ``Sent`` is sent only after the envelope is durable in every accepted mailbox.
* A retried :class:`Send` with the same ``client_msg_id`` is idempotent per mailbox.
* Delivery is at-least-once, in relay sequence order per mailbox, until acked.
* Ephemeral sends are never stored: delivered to subscribed mailboxes or dropped.

Sends need no account: only the capability of each recipient mailbox.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import ClassVar, Final, TypeAlias

from .. import limits as L
from .._kinds import (
    BLOB,
    CLIENT_MSG_ID,
    EPHEMERAL_BLOB,
    EPHEMERAL_RECIPIENTS,
    ERROR_CODE,
    INDEX,
    MAILBOX_ID,
    RECIPIENTS,
    SEQ,
    SEQ_OR_ZERO,
    TIME_MS,
    TTL_MS,
)
from .._wire import Pair, Problem, TupleOf, wire
from ..errors import ErrorCode
from ._base import Direction, Frame, Request, Response, register

__all__ = [
    "Ack",
    "Delivery",
    "EphemeralDelivery",
    "Recipient",
    "Send",
    "SendEphemeral",
    "Sent",
]

Recipient: TypeAlias = tuple[bytes, bytes]
"""``(mailbox_id, capability)``: 16 and 32 bytes."""

_REJECTED: Final = TupleOf(Pair(INDEX, ERROR_CODE), 0, L.MAX_RECIPIENTS)
_ACK_SEQS: Final = TupleOf(SEQ, 0, L.MAX_ACK_SEQS)


@register
@dataclass(frozen=True, slots=True, kw_only=True)
class Send(Request):
    """Client → relay: store one opaque blob in one or many mailboxes.

    Answered by :class:`Sent` once durable, or by ``Error`` (e.g. ``RATE_LIMITED``
    with ``retry_after_ms``; ``WRONG_CAPABILITY`` when no recipient was accepted).

    Attributes:
        client_msg_id: 16 random bytes chosen once per message; retries reuse it and
            are then answered ``Sent`` without storing a second copy.
        blob: the ciphertext, opaque to the relay (1..MAX_BLOB_SIZE bytes).
        recipients: ``(mailbox_id, capability)`` pairs, 1..MAX_RECIPIENTS. A larger
            fan-out is split over several Sends with the same id and blob.
        ttl_ms: keep at most this long (default and maximum: 30 days).
    """

    TYPE: ClassVar[int] = 40
    DIRECTION: ClassVar[Direction] = Direction.TO_RELAY
    client_msg_id: bytes = field(metadata=wire(1, CLIENT_MSG_ID))
    blob: bytes = field(metadata=wire(2, BLOB))
    recipients: tuple[Recipient, ...] = field(repr=False, metadata=wire(3, RECIPIENTS))
    ttl_ms: int | None = field(default=None, metadata=wire(4, TTL_MS))


@register
@dataclass(frozen=True, slots=True, kw_only=True)
class Sent(Response):
    """Relay → client: the send is durable in every recipient mailbox not in ``rejected``.

    Attributes:
        rejected: ``(index into Send.recipients, error code)`` for recipients that were
            refused (``WRONG_CAPABILITY``, ``QUOTA_EXCEEDED``...). Sequence numbers are
            not returned: they would tell a sender how busy someone else's mailbox is.
    """

    TYPE: ClassVar[int] = 41
    DIRECTION: ClassVar[Direction] = Direction.TO_CLIENT
    rejected: tuple[tuple[int, int], ...] = field(default=(), metadata=wire(1, _REJECTED))


@register
@dataclass(frozen=True, slots=True, kw_only=True)
class SendEphemeral(Request):
    """Client → relay: typing or call signalling; never stored, never acked.

    Delivered as :class:`EphemeralDelivery` to recipients subscribed right now,
    dropped for the others. No success answer (``Error`` only on failure); the
    relay drops a repeated ``client_msg_id`` within its dedup window.
    """

    TYPE: ClassVar[int] = 42
    DIRECTION: ClassVar[Direction] = Direction.TO_RELAY
    client_msg_id: bytes = field(metadata=wire(1, CLIENT_MSG_ID))
    blob: bytes = field(metadata=wire(2, EPHEMERAL_BLOB))
    recipients: tuple[Recipient, ...] = field(repr=False, metadata=wire(3, EPHEMERAL_RECIPIENTS))


@register
@dataclass(frozen=True, slots=True, kw_only=True)
class Delivery(Frame):
    """Relay → client: one stored envelope of a subscribed mailbox.

    Attributes:
        mailbox_id: where it was stored.
        seq: its relay sequence number in that mailbox (from 1, increasing, gaps
            possible after expiry or deletion).
        received_at_ms: when the relay stored it.
        blob: the sender's opaque blob.
    """

    TYPE: ClassVar[int] = 43
    DIRECTION: ClassVar[Direction] = Direction.TO_CLIENT
    mailbox_id: bytes = field(metadata=wire(1, MAILBOX_ID))
    seq: int = field(metadata=wire(2, SEQ))
    received_at_ms: int = field(metadata=wire(3, TIME_MS))
    blob: bytes = field(metadata=wire(4, BLOB))


@register
@dataclass(frozen=True, slots=True, kw_only=True)
class EphemeralDelivery(Frame):
    """Relay → client: an ephemeral blob (no sequence number, not acked)."""

    TYPE: ClassVar[int] = 44
    DIRECTION: ClassVar[Direction] = Direction.TO_CLIENT
    mailbox_id: bytes = field(metadata=wire(1, MAILBOX_ID))
    received_at_ms: int = field(metadata=wire(2, TIME_MS))
    blob: bytes = field(metadata=wire(3, EPHEMERAL_BLOB))


@register
@dataclass(frozen=True, slots=True, kw_only=True)
class Ack(Request):
    """Client → relay: these deliveries of one mailbox are processed; delete them.

    No success answer (``Error`` only on failure: ``NO_SUCH_MAILBOX``, ``FORBIDDEN``).

    Attributes:
        mailbox_id: an owned mailbox.
        up_to_seq: cumulative: every envelope with ``seq <= up_to_seq``.
        seqs: selective: these further envelopes, strictly increasing, each greater
            than ``up_to_seq`` (so an out-of-order gap can be acked around).
    """

    TYPE: ClassVar[int] = 45
    DIRECTION: ClassVar[Direction] = Direction.TO_RELAY
    mailbox_id: bytes = field(metadata=wire(1, MAILBOX_ID))
    up_to_seq: int = field(default=0, metadata=wire(2, SEQ_OR_ZERO))
    seqs: tuple[int, ...] = field(default=(), metadata=wire(3, _ACK_SEQS))

    def _validate(self) -> None:
        previous = self.up_to_seq
        for seq in self.seqs:
            if seq <= previous:
                raise Problem(
                    ErrorCode.INVALID_FIELD,
                    "must be strictly increasing and above up_to_seq",
                    "seqs",
                )
            previous = seq
        if previous == 0:
            raise Problem(ErrorCode.INVALID_FIELD, "nothing to acknowledge", "up_to_seq")
