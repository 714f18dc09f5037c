"""Typed events: everything the client tells the application.

Every event is a frozen dataclass deriving from :class:`Event`. The application gets
them from ``async for event in client.events()`` or from handlers registered with
``client.on(EventType, handler)`` (a handler for :class:`Event` sees every event).
Events are emitted only after the change they report is durable in the profile (a
``MessageReceived`` is in history, a ``MessageStatusChanged`` to SENT is committed),
so an application that crashes while handling one finds the same state in the store.

``peer`` is always the contact's 16-byte account id; ``conversation_id`` is the local
history conversation (see :mod:`client_sdk.history`). Reprs never show message text,
capabilities or keys.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import TYPE_CHECKING

from protocol.inner import PresenceState, ReceiptKind

from .history import MessageKind, MessageStatus

if TYPE_CHECKING:
    from .files import FileInfo

__all__ = [
    "ContactAccepted",
    "DisappearingTimerChanged",
    "Disconnected",
    "Event",
    "IdentityChanged",
    "InvitationReceived",
    "MailboxRotated",
    "MessageDeleted",
    "MessageEdited",
    "MessageReceived",
    "MessageRef",
    "MessageStatusChanged",
    "MessagesLost",
    "PresenceChanged",
    "ProfileChanged",
    "ReactionChanged",
    "ReceiptReceived",
    "Reconnected",
    "TypingChanged",
]


@dataclass(frozen=True, slots=True, kw_only=True)
class MessageRef:
    """Names one of our messages: returned by the send methods.

    Attributes:
        peer: the contact it was sent to.
        conversation_id: its conversation in local history.
        message_id: the end-to-end message id (target of edits, reactions, receipts).
        client_msg_id: the relay-level idempotency key of the send (outbox row).
    """

    peer: bytes
    conversation_id: int
    message_id: bytes
    client_msg_id: bytes


@dataclass(frozen=True, slots=True, kw_only=True)
class Event:
    """Base of every event."""


@dataclass(frozen=True, slots=True, kw_only=True)
class MessageReceived(Event):
    """A new text or file message from a contact, now in history.

    Attributes:
        kind: TEXT, FILE, or UNSUPPORTED (a kind a newer client sent: shown as a
            placeholder; ``text`` is None).
        text: the text (for a file: its caption).
        attachment: the encoded file manifest of a FILE (holds the file key).
        file: the manifest's public part (name, size, media type, transfer id) of a
            FILE, for ``download_file(peer, message_id, ...)``, or
            ``download_group_file(group_id, message_id, ...)`` when ``group_id`` is set;
            None if the manifest does not decode.
        sent_at_ms: the author's clock, clamped to ``received_at_ms`` for ordering.
        group_id: the group it was posted in (``peer`` is then its author); None for
            a direct message.
    """

    peer: bytes
    conversation_id: int
    message_id: bytes
    kind: MessageKind
    text: str | None = field(repr=False)
    attachment: bytes | None = field(default=None, repr=False)
    file: FileInfo | None = None
    reply_to: bytes | None = None
    sent_at_ms: int
    received_at_ms: int
    group_id: bytes | None = None


@dataclass(frozen=True, slots=True, kw_only=True)
class MessageStatusChanged(Event):
    """One of our messages moved: PENDING → SENT (the relay stored it) → DELIVERED →
    READ (the peer's receipts), or PENDING → FAILED with ``reason``."""

    peer: bytes
    conversation_id: int
    message_id: bytes
    status: MessageStatus
    reason: str | None = None


@dataclass(frozen=True, slots=True, kw_only=True)
class MessageEdited(Event):
    """A contact edited one of their messages (history holds the new text); in a group
    (``group_id``), ``peer`` is the author."""

    peer: bytes
    conversation_id: int
    message_id: bytes
    text: str = field(repr=False)
    edited_at_ms: int
    group_id: bytes | None = None


@dataclass(frozen=True, slots=True, kw_only=True)
class MessageDeleted(Event):
    """A contact deleted one of their messages for everyone (a tombstone stays); in a
    group (``group_id``), ``peer`` is the author."""

    peer: bytes
    conversation_id: int
    message_id: bytes
    group_id: bytes | None = None


@dataclass(frozen=True, slots=True, kw_only=True)
class ReactionChanged(Event):
    """A contact added (or, with ``removed``, withdrew) a reaction; in a group
    (``group_id``), ``peer`` is the one who reacted."""

    peer: bytes
    conversation_id: int
    message_id: bytes
    emoji: str = field(repr=False)
    removed: bool = False
    group_id: bytes | None = None


@dataclass(frozen=True, slots=True, kw_only=True)
class ReceiptReceived(Event):
    """A contact's delivery or read receipt for some of our messages (the individual
    status moves come as :class:`MessageStatusChanged`)."""

    peer: bytes
    kind: ReceiptKind
    message_ids: tuple[bytes, ...]


@dataclass(frozen=True, slots=True, kw_only=True)
class InvitationReceived(Event):
    """Someone added us: they are a PENDING contact until ``client.accept(peer)``.
    Nothing they send shows before that (they cannot write to us yet anyway: they learn
    our pairwise mailbox only from the acceptance)."""

    peer: bytes
    profile_name: str | None = field(repr=False)


@dataclass(frozen=True, slots=True, kw_only=True)
class ContactAccepted(Event):
    """A contact is ACCEPTED: ``by_peer`` True when they accepted our invitation (their
    mailbox announcement arrived), False when we accepted theirs."""

    peer: bytes
    profile_name: str | None = field(repr=False)
    by_peer: bool


@dataclass(frozen=True, slots=True, kw_only=True)
class ProfileChanged(Event):
    """A contact shared a new display name (conversations are titled with it) or
    avatar (an encoded file manifest)."""

    peer: bytes
    display_name: str | None = field(repr=False)
    avatar_manifest: bytes | None = field(default=None, repr=False)


@dataclass(frozen=True, slots=True, kw_only=True)
class IdentityChanged(Event):
    """A contact's identity key changed; their safety number is different.

    Attributes:
        rotated: True when the new key is linked to the old one by signed rotations
            (protocol §4): the account rotated its key; nothing to acknowledge.
        requires_ack: True when it is not (a different identity history): sending to
            the contact is refused (``IdentityChangeUnacknowledged``) until the user
            calls ``acknowledge_identity_change(peer)``, ideally after comparing safety
            numbers; the contact's ``verified`` flag is cleared.
    """

    peer: bytes
    rotated: bool
    requires_ack: bool


@dataclass(frozen=True, slots=True, kw_only=True)
class DisappearingTimerChanged(Event):
    """The conversation's disappearing-message timer changed, on both sides: by the
    peer (``by_peer``) or by us (``set_disappearing``). ``timer_ms`` None: messages are
    kept. It applies to messages stored from now on."""

    peer: bytes
    conversation_id: int
    timer_ms: int | None
    by_peer: bool


@dataclass(frozen=True, slots=True, kw_only=True)
class MailboxRotated(Event):
    """A contact moved the pairwise mailbox we write to (announced in the session)."""

    peer: bytes


@dataclass(frozen=True, slots=True, kw_only=True)
class TypingChanged(Event):
    peer: bytes
    active: bool


@dataclass(frozen=True, slots=True, kw_only=True)
class PresenceChanged(Event):
    peer: bytes
    state: PresenceState


@dataclass(frozen=True, slots=True, kw_only=True)
class MessagesLost(Event):
    """The relay deleted ``count`` envelopes of one of our mailboxes unread (they
    expired, default after 30 days): those messages are lost.

    Attributes:
        peer: the contact whose mailbox it was, or None for our contact mailbox
            (lost invitations) or a mailbox no longer known.
        up_to_seq: the highest lost sequence number.
    """

    mailbox_id: bytes
    peer: bytes | None
    count: int
    up_to_seq: int


@dataclass(frozen=True, slots=True, kw_only=True)
class Reconnected(Event):
    """The connection to the relay is (re-)established and authenticated; pending sends
    resume and undelivered envelopes come again. ``attempt`` is 0 for the first
    connection, then the number of failed attempts before this one succeeded."""

    attempt: int


@dataclass(frozen=True, slots=True, kw_only=True)
class Disconnected(Event):
    """The connection dropped; the client reconnects with backoff by itself."""

    reason: str
