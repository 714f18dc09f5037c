"""The plain records and errors of the relay's ports (re-exported by :mod:`relay.ports`).

Frozen, slotted, keyword-only dataclasses that every adapter returns alike, the fixed id
lengths, and the ``StoreError`` subclasses adapters raise. Import them from
``relay.ports``; this module only keeps that one under the size budget.
"""

from __future__ import annotations

import enum
import hashlib
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any, Final

from pigeon_crypto.errors import StoreError

__all__ = [
    "ACCOUNT_ID_LEN",
    "CAPABILITY_HASH_LEN",
    "CLIENT_MSG_ID_LEN",
    "MAILBOX_ID_LEN",
    "PREKEY_ID_MAX",
    "AccountRecord",
    "AccountSummary",
    "AckRequest",
    "AppendRequest",
    "AppendResult",
    "BlobConflict",
    "BlobNotFound",
    "BlobStatus",
    "BlobTooLarge",
    "ExpiryNotice",
    "ExpiryReport",
    "InviteRecord",
    "InviteRejected",
    "MailboxQueue",
    "MailboxRecord",
    "NotFound",
    "Notification",
    "NotificationKind",
    "OneTimePrekey",
    "PrekeyBundleRecord",
    "PrekeyCounts",
    "QueueSizes",
    "Recipient",
    "RecipientSeq",
    "RejectReason",
    "StoreConflict",
    "StoredMessage",
    "UsernameRecord",
    "WrongCapability",
    "check_id",
    "invite_code_hash",
    "send_dedup_hash",
    "unchecked_notification",
    "unchecked_recipient",
    "unchecked_recipient_seq",
]

ACCOUNT_ID_LEN = 16
"""Account ids are 16 random bytes, stable across identity-key rotation."""
MAILBOX_ID_LEN = 16
"""Mailbox ids are 16 bytes drawn by the relay: unguessable, no structure."""
CAPABILITY_HASH_LEN = 32
"""SHA-256 of a send capability (or of an invite code): the only form the relay keeps."""
CLIENT_MSG_ID_LEN = 16
"""The sender's random retry key for one send (the idempotency key, scoped per mailbox)."""
PREKEY_ID_MAX = 0xFFFF_FFFF
"""One-time prekey ids are u32, chosen by the owner."""


def check_id(what: str, value: bytes, length: int) -> bytes:
    """Return *value* if it is ``bytes`` of exactly *length*; raise ValueError otherwise."""
    if not isinstance(value, bytes) or len(value) != length:
        raise ValueError(f"{what} must be {length} bytes")
    return value


SEND_DEDUP_PREFIX: Final = b"pigeon relay send v1\x00"


AckRequest = tuple[bytes, "int | None", tuple[int, ...]]
"""``(mailbox_id, up_to_seq, seqs)`` of one ack: what the stores' batched ack takes."""


def send_dedup_hash(client_msg_id: bytes) -> bytes:
    """The key of a send's idempotency record (``send_dedup``), the same in every store
    adapter: ``SHA-256(b"pigeon relay send v1\\0" || client_msg_id)``."""
    return hashlib.sha256(SEND_DEDUP_PREFIX + client_msg_id).digest()


def invite_code_hash(code: str) -> bytes:
    """The stored form of an invite code: ``SHA-256(b"pigeon-invite-v1" || utf8(code))``.

    Codes are random and high-entropy (the admin CLI draws them), so a fast hash is enough:
    a leaked database does not reveal unused codes.
    """
    return hashlib.sha256(b"pigeon-invite-v1" + code.encode("utf-8")).digest()


# --------------------------------------------------------------------------- errors


class NotFound(StoreError):
    """The named object does not exist, or is not owned by the caller.

    Attributes:
        what: the kind of object (``"account"``, ``"mailbox"``...). Never an id or a key.
    """

    def __init__(self, what: str) -> None:
        super().__init__(f"{what} not found")
        self.what = what


class StoreConflict(StoreError):
    """A uniqueness rule would be broken (id already used, username taken).

    Attributes:
        what: the kind of object that already exists.
    """

    def __init__(self, what: str) -> None:
        super().__init__(f"{what} already exists")
        self.what = what


class InviteRejected(StoreError):
    """An invite code is unknown, already used, revoked or expired (one answer for all)."""

    def __init__(self) -> None:
        super().__init__("invite code rejected")


class WrongCapability(StoreError):
    """A capability does not match the mailbox's stored capability hash."""

    def __init__(self) -> None:
        super().__init__("capability does not match the mailbox")


class BlobNotFound(NotFound):
    """No such blob or chunk (never reserved or uploaded, expired or deleted)."""

    def __init__(self, what: str = "blob") -> None:
        super().__init__(what)


class BlobTooLarge(StoreError):
    """An upload exceeds the blob's reserved size, the chunk size limit or the store's limit.

    Attributes:
        limit: the size in bytes that may not be exceeded.
    """

    def __init__(self, limit: int) -> None:
        super().__init__(f"blob exceeds {limit} bytes")
        self.limit = limit


class BlobConflict(StoreError):
    """A re-uploaded chunk differs from the stored one, or a reservation from the first."""

    def __init__(self, reason: str) -> None:
        super().__init__(f"blob conflict: {reason}")
        self.reason = reason


# --------------------------------------------------------------------------- records

class RejectReason(enum.IntEnum):
    """Why one recipient of a send was refused (the server maps it to a wire error code)."""

    WRONG_CAPABILITY = 1
    """Unknown mailbox, retired mailbox or capability mismatch: one answer for all, so a
    sender cannot probe which mailbox ids exist."""
    QUOTA_EXCEEDED = 2
    """The mailbox already holds ``max_pending`` undelivered messages."""


@dataclass(frozen=True, slots=True, kw_only=True)
class Recipient:
    """One target of a send: a mailbox and the hash of the capability the sender showed."""

    mailbox_id: bytes
    capability_hash: bytes = field(repr=False)

    def __post_init__(self) -> None:
        check_id("mailbox_id", self.mailbox_id, MAILBOX_ID_LEN)
        check_id("capability_hash", self.capability_hash, CAPABILITY_HASH_LEN)


@dataclass(frozen=True, slots=True, kw_only=True)
class StoredMessage:
    """A queued message as delivered to the mailbox owner. ``blob`` is opaque ciphertext."""

    mailbox_id: bytes
    seq: int
    received_at_ms: int
    expires_at_ms: int
    blob: bytes = field(repr=False)


@dataclass(frozen=True, slots=True, kw_only=True)
class RecipientSeq:
    """The sequence number assigned in one mailbox.

    ``duplicate`` is true when this ``(client_msg_id, mailbox)`` had been stored before:
    ``seq`` is then the original one and nothing new was queued (do not route it again).
    """

    mailbox_id: bytes
    seq: int
    duplicate: bool


@dataclass(frozen=True, slots=True)
class AppendRequest:
    """The arguments of one :meth:`MessageStore.append`, for :meth:`MessageStore.append_many`.

    Positional and unchecked on construction: it is built once per durable send on the
    hot path from values already validated (the frame decoder checked the ids' lengths,
    :class:`Recipient` its own fields); the store checks ``client_msg_id`` and ``ttl_ms``.
    """

    recipients: tuple[Recipient, ...]
    client_msg_id: bytes
    blob: bytes = field(repr=False)
    now_ms: int
    ttl_ms: int
    max_pending: int | None = None
    dedup_ttl_ms: int | None = None


@dataclass(frozen=True, slots=True, kw_only=True)
class AppendResult:
    """Outcome of :meth:`MessageStore.append`.

    Attributes:
        received_at_ms: when the new copy was stored; for an all-duplicate result, when
            the original was stored.
        expires_at_ms: when that copy expires.
        accepted: one entry per accepted recipient, in request order.
        rejected: ``(mailbox_id, reason)`` for each refused recipient, in request order.
    """

    received_at_ms: int
    expires_at_ms: int
    accepted: tuple[RecipientSeq, ...]
    rejected: tuple[tuple[bytes, RejectReason], ...]

    @property
    def duplicate(self) -> bool:
        """True when every accepted recipient already had this message (a pure retry)."""
        return bool(self.accepted) and all(r.duplicate for r in self.accepted)

    def seq_for(self, mailbox_id: bytes) -> int | None:
        """The seq assigned in *mailbox_id*, or None if it was rejected or not named."""
        for r in self.accepted:
            if r.mailbox_id == mailbox_id:
                return r.seq
        return None


@dataclass(frozen=True, slots=True, kw_only=True)
class AccountRecord:
    """An account: its current identity key and its public contact mailbox, if set.

    ``rotation_count`` is the length of the identity-rotation chain the store keeps
    (handed out with every bundle, so contacts can follow rotations).
    """

    account_id: bytes
    identity_key: bytes = field(repr=False)
    created_at_ms: int
    identity_updated_at_ms: int
    rotation_count: int
    contact_mailbox_id: bytes | None
    contact_capability: bytes | None = field(repr=False)


@dataclass(frozen=True, slots=True, kw_only=True)
class AccountSummary:
    """A row of ``pigeon-relay admin accounts``."""

    account_id: bytes
    created_at_ms: int
    mailbox_count: int


@dataclass(frozen=True, slots=True, kw_only=True)
class MailboxRecord:
    """A mailbox as its owner (and the relay) sees it. The capability hash is never exposed.

    Attributes:
        last_seq: the highest seq ever assigned here (seqs are dense: 1, 2, 3...).
        pending: messages stored and not yet acked or expired.
        retire_at_ms: set by a rotation: sends are refused from then on, and the mailbox
            is deleted once ``pending`` is 0.
        push_url: the content-free wake-up endpoint, if registered.
    """

    mailbox_id: bytes
    account_id: bytes
    created_at_ms: int
    last_seq: int
    pending: int
    retire_at_ms: int | None
    push_url: str | None = field(repr=False)


@dataclass(frozen=True, slots=True, kw_only=True)
class ExpiryNotice:
    """``count`` messages expired unread in a mailbox, the newest of them with ``up_to_seq``."""

    mailbox_id: bytes
    count: int
    up_to_seq: int


@dataclass(frozen=True, slots=True, kw_only=True)
class ExpiryReport:
    """Result of one expiry sweep (at most ``limit`` rows of each kind).

    Attributes:
        notices: per mailbox, what this sweep expired (notices also accumulate in the
            store until :meth:`MessageStore.clear_expiry_notice`).
        messages_removed: delivery rows removed.
        dedup_removed: idempotency records removed.
        retired: rotated-away mailboxes deleted (retirement time passed, queue empty).
        more: the limit was hit; call again.
    """

    notices: tuple[ExpiryNotice, ...]
    messages_removed: int
    dedup_removed: int
    retired: tuple[bytes, ...]
    more: bool


@dataclass(frozen=True, slots=True, kw_only=True)
class OneTimePrekey:
    """An opaque one-time prekey blob and the owner's u32 id for it."""

    key_id: int
    data: bytes = field(repr=False)

    def __post_init__(self) -> None:
        if not 0 <= self.key_id <= PREKEY_ID_MAX:
            raise ValueError("one-time prekey id must be a u32")


@dataclass(frozen=True, slots=True, kw_only=True)
class PrekeyCounts:
    one_time_x25519: int
    one_time_kem: int
    has_signed_prekey: bool
    has_last_resort_kem: bool


@dataclass(frozen=True, slots=True, kw_only=True)
class PrekeyBundleRecord:
    """What a bundle fetch hands out. One-time prekeys in it are already deleted.

    Exactly one of ``one_time_kem`` and ``last_resort_kem`` is set. ``remaining`` counts
    what is left after this fetch, for prekeys-low notices. ``rotations`` is the identity
    rotation chain, oldest first.
    """

    account_id: bytes
    identity_key: bytes = field(repr=False)
    rotations: tuple[bytes, ...] = field(repr=False)
    signed_prekey: bytes = field(repr=False)
    one_time_x25519: OneTimePrekey | None
    one_time_kem: OneTimePrekey | None
    last_resort_kem: bytes | None = field(repr=False)
    contact_mailbox_id: bytes | None
    contact_capability: bytes | None = field(repr=False)
    remaining: PrekeyCounts

    @property
    def uses_last_resort(self) -> bool:
        return self.one_time_kem is None


@dataclass(frozen=True, slots=True, kw_only=True)
class UsernameRecord:
    """A discoverable username: exact string, its owner and the owner-signed binding."""

    username: str
    account_id: bytes
    binding: bytes = field(repr=False)
    claimed_at_ms: int


@dataclass(frozen=True, slots=True, kw_only=True)
class InviteRecord:
    code_hash: bytes
    created_at_ms: int
    expires_at_ms: int | None
    used_at_ms: int | None


@dataclass(frozen=True, slots=True, kw_only=True)
class MailboxQueue:
    mailbox_id: bytes
    account_id: bytes
    pending: int
    oldest_received_at_ms: int


@dataclass(frozen=True, slots=True, kw_only=True)
class QueueSizes:
    """``pigeon-relay admin queues``: totals and the largest queues first."""

    total_messages: int
    total_blobs: int
    total_blob_bytes: int
    mailboxes: tuple[MailboxQueue, ...]


class NotificationKind(enum.IntEnum):
    MESSAGE = 1
    """A durable message was committed in the mailbox (``seq`` set; ``payload`` may carry
    the blob so a local subscriber need not read it back)."""
    EPHEMERAL = 2
    """An ephemeral signal (typing, call signalling): ``payload`` is all there is."""
    RESYNC = 3
    """Produced by a subscription that had to coalesce durable notifications: fetch from
    the store after the last seq you delivered."""
    CLOSED = 4
    """The mailbox was deleted or its subscription taken over: stop delivering."""


@dataclass(frozen=True, slots=True, kw_only=True)
class Notification:
    """What the bus carries. Hints only: the store is the truth for durable messages."""

    kind: NotificationKind
    seq: int = 0
    payload: bytes = field(default=b"", repr=False)

    @property
    def durable(self) -> bool:
        """Dropping a durable notification would lose a delivery hint, so it is coalesced
        into RESYNC instead; ephemeral ones are simply dropped and counted."""
        return self.kind is not NotificationKind.EPHEMERAL


@dataclass(frozen=True, slots=True, kw_only=True)
class BlobStatus:
    """A file blob: reserved ``size`` bytes in ``chunk_count`` chunks, and what arrived."""

    blob_id: bytes
    size: int
    chunk_count: int
    chunks_received: int
    bytes_received: int
    expires_at_ms: int

    @property
    def complete(self) -> bool:
        return self.chunks_received == self.chunk_count


# --------------------------------------------------------------------------- hot path

# A frozen dataclass's __init__ sets each field through object.__setattr__ and then runs
# __post_init__: 1.0-1.6 µs per record here, paid per recipient of every send (a
# 1,000-member group message builds 1,000 of each below). These build the same records
# from values already validated upstream (the frame decoder checked the ids' lengths, a
# capability hash is a SHA-256 digest, seqs come from the store) by calling the slots'
# descriptors directly: ~0.5 µs. Equal, hashable and immutable like the checked ones.
_new = object.__new__


def _setters(cls: type, *names: str) -> tuple[Callable[[Any, Any], None], ...]:
    """The ``__set__`` of each named slot of *cls* (what ``object.__setattr__`` calls)."""
    return tuple(vars(cls)[name].__set__ for name in names)


_recipient_fields = _setters(Recipient, "mailbox_id", "capability_hash")
_seq_fields = _setters(RecipientSeq, "mailbox_id", "seq", "duplicate")
_note_fields = _setters(Notification, "kind", "seq", "payload")


def unchecked_recipient(mailbox_id: bytes, capability_hash: bytes) -> Recipient:
    """``Recipient(mailbox_id=..., capability_hash=...)`` without the length checks."""
    r: Recipient = _new(Recipient)
    set_mailbox, set_hash = _recipient_fields
    set_mailbox(r, mailbox_id)
    set_hash(r, capability_hash)
    return r


def unchecked_recipient_seq(mailbox_id: bytes, seq: int, duplicate: bool) -> RecipientSeq:
    """``RecipientSeq(mailbox_id=..., seq=..., duplicate=...)``, for the store's results."""
    r: RecipientSeq = _new(RecipientSeq)
    set_mailbox, set_seq, set_duplicate = _seq_fields
    set_mailbox(r, mailbox_id)
    set_seq(r, seq)
    set_duplicate(r, duplicate)
    return r


def unchecked_notification(kind: NotificationKind, seq: int, payload: bytes) -> Notification:
    """``Notification(kind=..., seq=..., payload=...)``, for the route stages."""
    n: Notification = _new(Notification)
    set_kind, set_seq, set_payload = _note_fields
    set_kind(n, kind)
    set_seq(n, seq)
    set_payload(n, payload)
    return n
