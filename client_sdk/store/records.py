"""Records the stores take and return (everything except history, see ``client_sdk.history``).

All are frozen dataclasses. Secret fields (private keys, capabilities, manifests,
ciphertext blobs) are ``repr=False``; the reprs are pinned by
``tests/unit/client_sdk/test_store_contract.py``.
"""

from __future__ import annotations

import enum
from dataclasses import dataclass, field
from typing import TYPE_CHECKING

from pigeon_crypto.identity import (
    ACCOUNT_ID_SIZE,
    IdentityKeyPair,
    IdentityPublicKey,
    IdentityRotation,
    account_id_for,
    verify_rotation_chain,
)
from pigeon_crypto.pqxdh import Accepted
from pigeon_crypto.prekeys import KemPreKey, OneTimePreKey, SignedPreKey
from pigeon_crypto.ratchet import RatchetState
from pigeon_crypto.rng import Rng
from pigeon_crypto.sender_keys import OutboundSenderKey, SenderKeyRecord

from ..history import ApplyOutcome, HistoryOp

if TYPE_CHECKING:
    from .group_records import GroupWrite

__all__ = [
    "CAPABILITY_SIZE",
    "CLIENT_MSG_ID_SIZE",
    "MAILBOX_ID_SIZE",
    "Contact",
    "ContactState",
    "EnvelopeRef",
    "Incoming",
    "LocalIdentity",
    "MailboxDirection",
    "OutboundSenderKeyUpdate",
    "OutboxEntry",
    "OutboxItem",
    "Outgoing",
    "PairwiseMailbox",
    "PrekeyKind",
    "PrekeyStatus",
    "PrekeyUpload",
    "ReceiveOutcome",
    "ReceiveResult",
    "Recipient",
    "SenderKeyRecordUpdate",
    "SessionUpdate",
    "retry_delay_ms",
]

MAILBOX_ID_SIZE = 16
CAPABILITY_SIZE = 32
CLIENT_MSG_ID_SIZE = 16
MAX_GROUP_ID_SIZE = 64

RETRY_BASE_MS = 1_000
"""First retry after about a second: a dropped connection usually comes back quickly."""
RETRY_CAP_MS = 5 * 60_000
"""Never wait more than five minutes between attempts while the relay is unreachable."""


def _check(what: str, value: bytes, size: int) -> None:
    if not isinstance(value, bytes) or len(value) != size:
        raise ValueError(f"{what} must be {size} bytes")


def _check_group(group_id: bytes) -> None:
    if not isinstance(group_id, bytes) or not 1 <= len(group_id) <= MAX_GROUP_ID_SIZE:
        raise ValueError(f"group_id must be 1..{MAX_GROUP_ID_SIZE} bytes")


# --- identity -----------------------------------------------------------------------------


@dataclass(frozen=True, slots=True, kw_only=True)
class LocalIdentity:
    """Our account: its id, first identity, rotation chain and current key pair.

    Construction checks consistency: ``account_id`` is derived from ``initial`` and the
    rotations lead from ``initial`` to ``key_pair.public``.
    """

    account_id: bytes
    initial: IdentityPublicKey
    rotations: tuple[IdentityRotation, ...]
    key_pair: IdentityKeyPair = field(repr=False)

    def __post_init__(self) -> None:
        _check("account_id", self.account_id, ACCOUNT_ID_SIZE)
        if account_id_for(self.initial) != self.account_id:
            raise ValueError("account_id does not belong to the initial identity")
        current = verify_rotation_chain(self.account_id, self.initial, self.rotations)
        if not current.same_key(self.key_pair.public):
            raise ValueError("the rotation chain does not end at key_pair")

    @classmethod
    def new(cls, key_pair: IdentityKeyPair) -> LocalIdentity:
        """A fresh account for *key_pair* (no rotations)."""
        return cls(account_id=account_id_for(key_pair.public), initial=key_pair.public,
                   rotations=(), key_pair=key_pair)

    def __repr__(self) -> str:
        return (f"LocalIdentity(account_id={self.account_id.hex()}, "
                f"key={self.key_pair.public.fingerprint}, rotations={len(self.rotations)})")


# --- prekeys ------------------------------------------------------------------------------


class PrekeyKind(enum.IntEnum):
    """Key-id spaces and publication kinds (KEM last-resort and one-time share one space)."""

    SIGNED = 1
    KEM = 2
    ONE_TIME = 3


@dataclass(frozen=True, slots=True, kw_only=True)
class PrekeyUpload:
    """Public halves not yet marked published: what the next upload must carry."""

    signed: tuple[SignedPreKey, ...] = ()
    kem: tuple[KemPreKey, ...] = ()
    one_time: tuple[OneTimePreKey, ...] = ()

    @property
    def empty(self) -> bool:
        return not (self.signed or self.kem or self.one_time)


@dataclass(frozen=True, slots=True, kw_only=True)
class PrekeyStatus:
    """What the client needs to decide whether to rotate or replenish.

    Attributes:
        signed_prekey_id / signed_prekey_created_ms: the current (newest, not retired)
            signed prekey, or None.
        retiring_signed_prekey_ids: retired but still kept for in-flight initiations.
        last_resort_kem_id: the newest last-resort KEM prekey, or None.
        one_time_available / kem_one_time_available: private keys held (published or not).
        one_time_unpublished / kem_unpublished: ... of which not yet uploaded.
    """

    signed_prekey_id: int | None
    signed_prekey_created_ms: int | None
    retiring_signed_prekey_ids: tuple[int, ...]
    last_resort_kem_id: int | None
    one_time_available: int
    one_time_unpublished: int
    kem_one_time_available: int
    kem_unpublished: int


# --- sessions and sender keys -------------------------------------------------------------


@dataclass(frozen=True, slots=True, kw_only=True)
class SessionUpdate:
    """The ratchet state to store for a peer (account id)."""

    peer: bytes
    state: RatchetState = field(repr=False)

    def __post_init__(self) -> None:
        _check("peer", self.peer, ACCOUNT_ID_SIZE)


@dataclass(frozen=True, slots=True, kw_only=True)
class OutboundSenderKeyUpdate:
    """Our sender-key chain for a group, after ``encrypt``."""

    group_id: bytes
    key: OutboundSenderKey = field(repr=False)

    def __post_init__(self) -> None:
        _check_group(self.group_id)


@dataclass(frozen=True, slots=True, kw_only=True)
class SenderKeyRecordUpdate:
    """A member's sender-key chains, after ``decrypt`` or a distribution."""

    group_id: bytes
    sender: bytes
    record: SenderKeyRecord = field(repr=False)

    def __post_init__(self) -> None:
        _check_group(self.group_id)
        _check("sender", self.sender, ACCOUNT_ID_SIZE)


# --- contacts -----------------------------------------------------------------------------


class ContactState(enum.IntEnum):
    INVITED = 1
    """We sent an invitation; nothing back yet."""
    PENDING = 2
    """They wrote first; the user has not accepted yet."""
    ACCEPTED = 3
    BLOCKED = 4


class MailboxDirection(enum.IntEnum):
    INBOUND = 1
    """Our mailbox: the contact writes to it with the capability we gave them."""
    OUTBOUND = 2
    """Their mailbox: we write to it with the capability they gave us."""


@dataclass(frozen=True, slots=True, kw_only=True)
class PairwiseMailbox:
    """One pairwise mailbox and its send capability. A rotation retires the old one
    (``retired_at_ms``) and keeps it for a grace period so in-flight messages land."""

    mailbox_id: bytes
    direction: MailboxDirection
    capability: bytes = field(repr=False)
    relay_url: str | None = None
    created_at_ms: int
    retired_at_ms: int | None = None

    def __post_init__(self) -> None:
        _check("mailbox_id", self.mailbox_id, MAILBOX_ID_SIZE)
        _check("capability", self.capability, CAPABILITY_SIZE)


@dataclass(frozen=True, slots=True, kw_only=True)
class Contact:
    """Everything we know about a contact.

    Attributes:
        identity: their current identity key (None until known, e.g. INVITED).
        rotation_chain: their identity-rotation records, opaque bytes as received.
        avatar_manifest: a file manifest (holds the avatar's file key: sealed at rest).
        mailboxes: current and retiring pairwise mailboxes, both directions, kept
            oldest first (by ``created_at_ms``, then id).
        identity_changed: their identity changed without a rotation chain and the
            user has not acknowledged it yet.
    """

    account_id: bytes
    state: ContactState
    identity: IdentityPublicKey | None = None
    rotation_chain: bytes = b""
    profile_name: str | None = None
    avatar_manifest: bytes | None = field(default=None, repr=False)
    mailboxes: tuple[PairwiseMailbox, ...] = ()
    verified: bool = False
    identity_changed: bool = False
    created_at_ms: int
    updated_at_ms: int

    def __post_init__(self) -> None:
        _check("account_id", self.account_id, ACCOUNT_ID_SIZE)
        ids = [m.mailbox_id for m in self.mailboxes]
        if len(set(ids)) != len(ids):
            raise ValueError("a mailbox is listed twice")
        # One canonical order (oldest first), as every store returns them.
        ordered = tuple(sorted(self.mailboxes, key=lambda m: (m.created_at_ms, m.mailbox_id)))
        object.__setattr__(self, "mailboxes", ordered)

    def _current(self, direction: MailboxDirection) -> PairwiseMailbox | None:
        live = [m for m in self.mailboxes if m.direction is direction and m.retired_at_ms is None]
        return max(live, key=lambda m: m.created_at_ms, default=None)

    @property
    def inbound(self) -> PairwiseMailbox | None:
        """Our current mailbox for this contact."""
        return self._current(MailboxDirection.INBOUND)

    @property
    def outbound(self) -> PairwiseMailbox | None:
        """Their current mailbox (where we send)."""
        return self._current(MailboxDirection.OUTBOUND)


# --- outbox and inbox ---------------------------------------------------------------------


@dataclass(frozen=True, slots=True, kw_only=True)
class Recipient:
    mailbox_id: bytes
    capability: bytes = field(repr=False)

    def __post_init__(self) -> None:
        _check("mailbox_id", self.mailbox_id, MAILBOX_ID_SIZE)
        _check("capability", self.capability, CAPABILITY_SIZE)


@dataclass(frozen=True, slots=True, kw_only=True)
class OutboxEntry:
    """One durable send: the exact bytes to (re)send and where."""

    client_msg_id: bytes
    recipients: tuple[Recipient, ...]
    blob: bytes = field(repr=False)
    created_at_ms: int

    def __post_init__(self) -> None:
        _check("client_msg_id", self.client_msg_id, CLIENT_MSG_ID_SIZE)
        if not self.recipients:
            raise ValueError("an outbox entry needs at least one recipient")
        if not self.blob:
            raise ValueError("blob must not be empty")


@dataclass(frozen=True, slots=True, kw_only=True)
class OutboxItem:
    """A stored outbox row. ``message`` links to the history message whose status the
    relay's answer moves (``(conversation_id, message_id)``), if any."""

    seq: int
    entry: OutboxEntry
    attempts: int
    next_attempt_at_ms: int
    last_error: str | None
    message: tuple[int, bytes] | None

    @property
    def client_msg_id(self) -> bytes:
        return self.entry.client_msg_id


@dataclass(frozen=True, slots=True, kw_only=True)
class Outgoing:
    """Everything a send changes, stored in ONE transaction by ``OutboxStore.enqueue``:
    the new ratchet state (or sender-key chain) that produced ``entry.blob``, the outbox
    row, and the history change the user sees (a NewMessage becomes PENDING and is
    linked to the outbox row).

    Attributes:
        contact: a contact to create or replace in the same transaction (a first
            contact with its new inbound mailbox, an acceptance, a mailbox rotation:
            the mailbox and the message announcing it are stored together).
    """

    entry: OutboxEntry
    session: SessionUpdate | None = None
    sender_key: OutboundSenderKeyUpdate | None = None
    history: HistoryOp | None = None
    contact: Contact | None = None
    group: GroupWrite | None = None
    """Group changes stored with this row (``store.group_records``)."""


@dataclass(frozen=True, slots=True, kw_only=True)
class EnvelopeRef:
    """A relay envelope's identity: ``(mailbox_id, seq)``."""

    mailbox_id: bytes
    seq: int

    def __post_init__(self) -> None:
        _check("mailbox_id", self.mailbox_id, MAILBOX_ID_SIZE)
        if not 1 <= self.seq < 2**63:
            raise ValueError("seq must be 1..2**63-1")


@dataclass(frozen=True, slots=True, kw_only=True)
class Incoming:
    """Everything a received envelope changes, stored in ONE transaction by
    ``InboxStore.commit_receive``.

    Attributes:
        accepted: a PQXDH initiation we accepted: its one-time prekeys are deleted and
            its replay record kept, in the same transaction as the new session.
        contact: a contact to create or replace (first contact, profile, mailbox change).
        reply: an outbox row to queue in the same transaction (a message the receipt
            obliges us to send, e.g. announcing our mailbox when a simultaneous
            initiation is resolved in the peer's favour); ``session`` is then the state
            after encrypting it. Not linked to history.
    """

    envelope: EnvelopeRef
    received_at_ms: int
    session: SessionUpdate | None = None
    sender_key: SenderKeyRecordUpdate | None = None
    accepted: Accepted | None = field(default=None, repr=False)
    contact: Contact | None = None
    history: HistoryOp | None = None
    reply: OutboxEntry | None = None
    group: GroupWrite | None = None
    """Group changes stored with this envelope (``store.group_records``)."""


class ReceiveOutcome(enum.Enum):
    PROCESSED = "processed"
    """Stored; ``history_outcome`` says what the history op did."""
    DUPLICATE_ENVELOPE = "duplicate-envelope"
    """This envelope was processed before: nothing was written (ack it again)."""


@dataclass(frozen=True, slots=True, kw_only=True)
class ReceiveResult:
    outcome: ReceiveOutcome
    history: ApplyOutcome | None = None
    """What the history op did (None when there was none or the envelope was a duplicate)."""


def retry_delay_ms(attempts: int, rng: Rng) -> int:
    """Delay before the next attempt after *attempts* failures: exponential from
    RETRY_BASE_MS, capped at RETRY_CAP_MS, with "equal jitter" (half fixed, half random)
    so that clients cut off together do not come back together."""
    if attempts < 1:
        return 0
    ceiling = min(RETRY_CAP_MS, RETRY_BASE_MS << min(attempts - 1, 30))
    half = ceiling // 2
    return half + int.from_bytes(rng(4), "big") % (half + 1)
