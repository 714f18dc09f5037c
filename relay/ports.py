"""Ports of the relay: the ``Store``, ``Bus`` and ``BlobStore`` protocols and their records.

Theory of operation (DESIGN.md "Addresses", "Relay pipeline"; docs/_drafts/50-relay-store.md):

* The relay is blind. It stores accounts (identity key + opaque prekey blobs), mailboxes
  (one-way queues owned by an account, written by anyone who holds the mailbox's send
  capability, of which only ``SHA-256(capability)`` is stored), and opaque message blobs.
  **No record names a sender**: a stored message knows its mailbox, its per-mailbox
  sequence number, two timestamps and its bytes.
* Every identifier is plain ``bytes`` of a fixed length (constants below). Capability
  hashes are computed by the SDK (protocol: ``CreateMailbox.capability_hash``); the store
  compares them with :func:`hmac.compare_digest`. The one capability the relay sees in
  clear is a contact mailbox's, which is public (published with the bundle).
* Time is passed in as ``now_ms`` (Unix milliseconds) so that tests control the clock.
* Adapters raise :class:`~pigeon_crypto.errors.StoreError` or one of the subclasses below;
  a foreign exception (``sqlite3.Error``, ``OSError``...) is wrapped ``from`` the original.
  Caller misuse (an id of the wrong length) raises :class:`ValueError`.

The records are frozen, slotted, keyword-only dataclasses so that every adapter (SQLite,
memory, a future PostgreSQL) returns exactly the same values, which the contract suite in
``tests/unit/relay/test_store_contract.py`` compares.
"""

from __future__ import annotations

import enum
import hashlib
import threading
from collections.abc import AsyncIterable, AsyncIterator, Sequence
from dataclasses import dataclass, field
from typing import Protocol, runtime_checkable

from pigeon_crypto.errors import StoreError

__all__ = [
    "ACCOUNT_ID_LEN",
    "CAPABILITY_HASH_LEN",
    "CLIENT_MSG_ID_LEN",
    "MAILBOX_ID_LEN",
    "PREKEY_ID_MAX",
    "AccountRecord",
    "AccountStore",
    "AccountSummary",
    "AdminStore",
    "AppendResult",
    "BlobConflict",
    "BlobNotFound",
    "BlobReader",
    "BlobStatus",
    "BlobStore",
    "BlobTooLarge",
    "Bus",
    "ExpiryNotice",
    "ExpiryReport",
    "InviteRecord",
    "InviteRejected",
    "InviteStore",
    "MailboxQueue",
    "MailboxRecord",
    "MailboxStore",
    "MessageStore",
    "NotFound",
    "Notification",
    "NotificationKind",
    "NullObserver",
    "OneTimePrekey",
    "PrekeyBundleRecord",
    "PrekeyCounts",
    "PrekeyStore",
    "QueueSizes",
    "Recipient",
    "RecipientSeq",
    "RecordingObserver",
    "RejectReason",
    "Store",
    "StoreConflict",
    "StoreObserver",
    "StoredMessage",
    "Subscription",
    "UsernameRecord",
    "UsernameStore",
    "WrongCapability",
    "check_id",
    "invite_code_hash",
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


# --------------------------------------------------------------------------- observer


class StoreObserver(Protocol):
    """Hook for metrics; the server maps it to Prometheus. Must be fast and thread-safe.

    ``on_commit`` runs on the adapter's writer thread (SQLite) once per transaction;
    ``on_operation`` runs on the caller's event loop once per store call, with the
    latency the caller saw (queueing + transaction + wake-up).
    """

    def on_commit(self, *, ops: int, seconds: float, ok: bool) -> None: ...

    def on_operation(self, *, name: str, seconds: float, ok: bool) -> None: ...


class NullObserver:
    """Observes nothing."""

    def on_commit(self, *, ops: int, seconds: float, ok: bool) -> None:
        pass

    def on_operation(self, *, name: str, seconds: float, ok: bool) -> None:
        pass


class RecordingObserver:
    """Keeps counts and batch sizes in memory (tests, benchmarks, the admin CLI)."""

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self.commits = 0
        self.failed_commits = 0
        self.batch_sizes: list[int] = []
        self.operations: dict[str, int] = {}
        self.operation_seconds: dict[str, float] = {}

    def on_commit(self, *, ops: int, seconds: float, ok: bool) -> None:
        with self._lock:
            self.commits += 1
            self.failed_commits += 0 if ok else 1
            self.batch_sizes.append(ops)

    def on_operation(self, *, name: str, seconds: float, ok: bool) -> None:
        with self._lock:
            self.operations[name] = self.operations.get(name, 0) + 1
            self.operation_seconds[name] = self.operation_seconds.get(name, 0.0) + seconds

    def reset(self) -> None:
        with self._lock:
            self.commits = 0
            self.failed_commits = 0
            self.batch_sizes = []
            self.operations = {}
            self.operation_seconds = {}


# --------------------------------------------------------------------------- store ports


class AccountStore(Protocol):
    async def create_account(
        self,
        *,
        account_id: bytes,
        identity_key: bytes,
        now_ms: int,
        invite_code_hash: bytes | None = None,
    ) -> AccountRecord:
        """Register an account, consuming *invite_code_hash* in the same transaction.

        Raises:
            StoreConflict: the account id exists (the invite is then not consumed).
            InviteRejected: the invite is unknown, used, revoked or expired.
        """
        ...

    async def get_account(self, account_id: bytes) -> AccountRecord | None: ...

    async def rotate_identity(
        self, *, account_id: bytes, identity_key: bytes, rotation: bytes, now_ms: int
    ) -> AccountRecord:
        """Replace the identity key and append *rotation* (the opaque, already verified
        ``IdentityRotation`` record) to the account's rotation chain.

        Raises:
            NotFound: no such account.
        """
        ...

    async def delete_account(self, account_id: bytes) -> bool:
        """Delete the account and everything it owns (mailboxes, their queued messages and
        idempotency records, prekeys, username) in one transaction. False if absent."""
        ...

    async def list_accounts(
        self, *, after: bytes | None = None, limit: int = 100
    ) -> list[AccountSummary]:
        """Accounts ordered by id, strictly after *after* (keyset pagination)."""
        ...


class MailboxStore(Protocol):
    async def create_mailbox(
        self, *, account_id: bytes, mailbox_id: bytes, capability_hash: bytes, now_ms: int
    ) -> MailboxRecord:
        """Raises NotFound (no such account) or StoreConflict (mailbox id taken)."""
        ...

    async def get_mailbox(self, mailbox_id: bytes) -> MailboxRecord | None: ...

    async def list_mailboxes(self, account_id: bytes) -> list[MailboxRecord]:
        """The account's mailboxes, ordered by creation time then id."""
        ...

    async def rotate_mailbox(
        self,
        *,
        account_id: bytes,
        mailbox_id: bytes,
        new_mailbox_id: bytes,
        capability_hash: bytes,
        retire_at_ms: int,
        now_ms: int,
    ) -> MailboxRecord:
        """Create *new_mailbox_id* (inheriting the push URL) and retire *mailbox_id* at
        *retire_at_ms*: it accepts sends until then and is deleted by :meth:`expire` once
        its queue is empty. Returns the new mailbox. A contact-mailbox designation stays
        with the old mailbox (its new capability is unknown here) until it is deleted.

        Raises:
            NotFound: the old mailbox is absent, not owned or already retired.
            StoreConflict: the new id is taken.
        """
        ...

    async def replace_capability(
        self, *, account_id: bytes, mailbox_id: bytes, capability_hash: bytes
    ) -> None:
        """Rotate the send capability in place. Raises NotFound unless *account_id* owns it."""
        ...

    async def set_contact_mailbox(
        self, *, account_id: bytes, mailbox_id: bytes, capability: bytes
    ) -> None:
        """Publish an owned mailbox as the account's contact mailbox, with its (public)
        capability, which must hash to the stored capability hash.

        Raises:
            NotFound: not an owned mailbox.
            WrongCapability: ``SHA-256(capability)`` differs from the stored hash.
        """
        ...

    async def set_push_url(
        self, *, account_id: bytes, mailbox_ids: Sequence[bytes], push_url: str | None
    ) -> None:
        """Set or clear the content-free push hook of owned mailboxes, all or none.
        Raises NotFound if any of them is not owned."""
        ...

    async def delete_mailbox(self, *, account_id: bytes, mailbox_id: bytes) -> bool:
        """Delete an owned mailbox with its queue. False if absent or not owned."""
        ...

    async def check_capabilities(
        self, recipients: Sequence[Recipient], *, now_ms: int
    ) -> frozenset[bytes]:
        """The mailbox ids that would accept a send: the stored capability hash matches
        (constant-time) and the mailbox is not retired."""
        ...


class MessageStore(Protocol):
    async def append(
        self,
        *,
        recipients: Sequence[Recipient],
        client_msg_id: bytes,
        blob: bytes,
        now_ms: int,
        ttl_ms: int,
        max_pending: int | None = None,
    ) -> AppendResult:
        """Durably queue *blob* for every recipient that accepts it.

        One transaction: the blob is stored once, with one delivery row per new recipient
        mailbox, each getting that mailbox's next seq. Idempotent per
        ``(client_msg_id, mailbox)``: a recipient that already has this client_msg_id gets
        its original seq back (``duplicate=True``) and nothing new. Refused: a wrong
        capability or retired mailbox, and a mailbox already holding *max_pending*
        messages. When this returns, the write is committed at the configured durability.
        """
        ...

    async def fetch(
        self, mailbox_id: bytes, *, after_seq: int = 0, limit: int = 100, now_ms: int
    ) -> list[StoredMessage]:
        """Queued, unexpired messages with ``seq > after_seq`` in seq order, at most *limit*."""
        ...

    async def ack(
        self, mailbox_id: bytes, *, up_to_seq: int | None = None, seqs: Sequence[int] = ()
    ) -> int:
        """Remove delivered messages: every ``seq <= up_to_seq`` (cumulative) plus each of
        *seqs* (selective). A blob goes when no delivery references it. Returns rows removed.
        """
        ...

    async def pending_count(self, mailbox_id: bytes) -> int: ...

    async def expire(self, *, now_ms: int, limit: int = 10_000) -> ExpiryReport:
        """Remove messages and idempotency records with ``expires_at_ms <= now_ms`` and add
        the per-mailbox counts to the stored expiry notices."""
        ...

    async def get_expiry_notice(self, mailbox_id: bytes) -> ExpiryNotice | None:
        """Messages that expired unread since the last cleared notice, or None."""
        ...

    async def clear_expiry_notice(self, notice: ExpiryNotice) -> None:
        """Forget what *notice* reported (after it reached the owner). Expiries recorded
        after *notice* was read stay pending."""
        ...


class PrekeyStore(Protocol):
    async def upload_prekeys(
        self,
        *,
        account_id: bytes,
        signed_prekey: bytes | None = None,
        last_resort_kem: bytes | None = None,
        one_time_x25519: Sequence[OneTimePrekey] = (),
        one_time_kem: Sequence[OneTimePrekey] = (),
        replace_one_time: bool = False,
    ) -> PrekeyCounts:
        """Replace the signed / last-resort prekeys when given; add one-time prekeys (an
        existing id is overwritten); with *replace_one_time* first drop all one-time
        prekeys. Raises NotFound for an unknown account."""
        ...

    async def fetch_prekey_bundle(self, account_id: bytes) -> PrekeyBundleRecord | None:
        """Atomically hand out a bundle, consuming the lowest-id one-time X25519 and KEM
        prekeys; falls back to the last-resort KEM prekey. None (and nothing consumed) if
        the account lacks a signed prekey or any KEM prekey. Raises NotFound for an
        unknown account."""
        ...

    async def prekey_counts(self, account_id: bytes) -> PrekeyCounts:
        """Raises NotFound for an unknown account."""
        ...


class UsernameStore(Protocol):
    async def claim_username(
        self, *, account_id: bytes, username: str, binding: bytes, now_ms: int
    ) -> UsernameRecord:
        """Claim an exact username (callers normalise first); replaces the account's
        previous one. Raises StoreConflict if another account holds it, NotFound if the
        account is unknown."""
        ...

    async def lookup_username(self, username: str) -> UsernameRecord | None:
        """Exact match only: there is no listing or prefix search, by design."""
        ...

    async def release_username(self, account_id: bytes) -> bool: ...


class InviteStore(Protocol):
    async def create_invite(
        self, *, code_hash: bytes, now_ms: int, expires_at_ms: int | None = None
    ) -> InviteRecord:
        """Raises StoreConflict if the code hash exists."""
        ...

    async def consume_invite(self, *, code_hash: bytes, now_ms: int) -> bool:
        """Mark the invite used if it is unused and unexpired; True exactly once."""
        ...

    async def revoke_invite(self, code_hash: bytes) -> bool: ...

    async def list_invites(self) -> list[InviteRecord]:
        """Every invite, oldest first."""
        ...


class AdminStore(Protocol):
    async def queue_sizes(self, *, limit: int = 100) -> QueueSizes:
        """Totals, and the *limit* mailboxes with the most pending messages."""
        ...


@runtime_checkable
class Store(
    AccountStore, MailboxStore, MessageStore, PrekeyStore, UsernameStore, InviteStore,
    AdminStore, Protocol,
):
    """Everything the relay persists. Adapters: SQLite (default), memory (tests)."""

    async def close(self) -> None:
        """Finish queued writes, then release resources. Idempotent."""
        ...


# --------------------------------------------------------------------------- bus and blobs
# (records here, implementations in relay/bus.py and relay/blobs.py)


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


class Subscription(Protocol):
    """An owner's live view of some mailboxes. Yields ``(mailbox_id, notification)``."""

    @property
    def mailbox_ids(self) -> frozenset[bytes]: ...

    @property
    def dropped(self) -> int:
        """Ephemeral notifications dropped because the queue was full."""
        ...

    @property
    def coalesced(self) -> int:
        """Durable notifications folded into a RESYNC because the queue was full."""
        ...

    async def add(self, mailbox_id: bytes) -> None: ...

    async def remove(self, mailbox_id: bytes) -> None: ...

    async def get(self) -> tuple[bytes, Notification]:
        """Wait for the next notification. Raises StopAsyncIteration once closed."""
        ...

    def __aiter__(self) -> AsyncIterator[tuple[bytes, Notification]]: ...

    async def close(self) -> None: ...


class Bus(Protocol):
    """Routes notifications to whoever subscribed to a mailbox, on this node or another."""

    async def publish(self, mailbox_id: bytes, notification: Notification) -> int:
        """Returns how many subscriptions received it (0: nobody is listening)."""
        ...

    async def subscribe(
        self, mailbox_ids: Sequence[bytes] = (), *, max_queue: int | None = None
    ) -> Subscription: ...

    async def close(self) -> None: ...


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


class BlobReader(Protocol):
    """One open chunk: iterate for its bytes in pieces (then it closes), or close early."""

    @property
    def size(self) -> int: ...

    def __aiter__(self) -> AsyncIterator[bytes]: ...

    async def aclose(self) -> None: ...


class BlobStore(Protocol):
    """Encrypted file blobs, uploaded and downloaded chunk by chunk (protocol:
    ``RequestBlobUpload(size, chunk_count)``, then ``PUT/GET {url_path}/{index}``)."""

    async def reserve(
        self, blob_id: bytes, *, size: int, chunk_count: int, expires_at_ms: int
    ) -> BlobStatus:
        """Create the blob. Repeating the same reservation is harmless.

        Raises:
            BlobTooLarge: *size* exceeds the store's limit.
            BlobConflict: the blob exists with another size or chunk count.
        """
        ...

    async def write_chunk(
        self, blob_id: bytes, index: int, data: AsyncIterable[bytes]
    ) -> BlobStatus:
        """Stream chunk *index* to durable storage. Re-uploading a stored chunk is
        idempotent (identical bytes are accepted, different ones refused); an interrupted
        upload leaves nothing, so the client resumes by sending the missing chunks.

        Raises:
            BlobNotFound: no reservation. ValueError: *index* out of range.
            BlobTooLarge: the chunk, or all chunks together, exceed the limits.
            BlobConflict: a stored chunk differs from the re-sent one.
        """
        ...

    async def status(self, blob_id: bytes) -> BlobStatus | None: ...

    async def chunk_size(self, blob_id: bytes, index: int) -> int | None:
        """Size of a stored chunk, None if it has not arrived (for resuming)."""
        ...

    async def open_chunk(self, blob_id: bytes, index: int) -> BlobReader:
        """Open a stored chunk for streaming. Raises BlobNotFound."""
        ...

    async def delete(self, blob_id: bytes) -> bool: ...

    async def sweep(self, *, now_ms: int) -> int:
        """Delete blobs (complete or not) whose ``expires_at_ms <= now_ms``."""
        ...
