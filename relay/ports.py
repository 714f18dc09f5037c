"""Ports of the relay: the ``Store``, ``Bus`` and ``BlobStore`` protocols and their records.

Theory of operation (DESIGN.md "Addresses", "Relay pipeline"; docs/_drafts/50-relay-store.md):

* The relay is blind. It stores accounts (identity key + opaque prekey blobs), mailboxes
  (one-way queues owned by an account, written by anyone who holds the mailbox's send
  capability, of which only ``SHA-256(capability)`` is stored), and opaque message blobs.
  **No record names a sender**: a stored message knows its mailbox, its per-mailbox
  sequence number, two timestamps and its bytes.
* Every identifier is plain ``bytes`` of a fixed length (constants below). Hashes
  (capability, invite code) are computed by callers; the store compares capability hashes
  with :func:`hmac.compare_digest`.
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
    "BlobRangeError",
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
    "MailboxKind",
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
    "Store",
    "StoreConflict",
    "StoreObserver",
    "StoredMessage",
    "Subscription",
    "UsernameRecord",
    "UsernameStore",
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


class BlobNotFound(NotFound):
    """No complete blob with that id (never uploaded, unfinished, expired or deleted)."""

    def __init__(self) -> None:
        super().__init__("blob")


class BlobTooLarge(StoreError):
    """An upload exceeds the blob's declared size or the store's limit.

    Attributes:
        limit: the size in bytes that may not be exceeded.
    """

    def __init__(self, limit: int) -> None:
        super().__init__(f"blob exceeds {limit} bytes")
        self.limit = limit


class BlobRangeError(StoreError):
    """An upload starts beyond the bytes received so far (it would leave a hole).

    Attributes:
        received: how many bytes the store holds; resume from there.
    """

    def __init__(self, received: int) -> None:
        super().__init__(f"upload must resume at or before byte {received}")
        self.received = received


class BlobConflict(StoreError):
    """Re-uploaded bytes or a declared size differ from what the store already holds."""

    def __init__(self, reason: str) -> None:
        super().__init__(f"blob conflict: {reason}")
        self.reason = reason


# --------------------------------------------------------------------------- records

class MailboxKind(enum.IntEnum):
    """What a mailbox is for. Stored as an integer; informational for the relay."""

    CONTACT = 1
    """The account's public mailbox for first contact (PQXDH initiations)."""
    PAIRWISE = 2
    """A private mailbox handed to one contact inside the encrypted session."""


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
        rejected: recipients whose mailbox is unknown or whose capability did not match
            (one answer for both, so a sender cannot probe for mailbox ids).
    """

    received_at_ms: int
    expires_at_ms: int
    accepted: tuple[RecipientSeq, ...]
    rejected: tuple[bytes, ...]

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
    account_id: bytes
    identity_key: bytes = field(repr=False)
    created_at_ms: int
    identity_updated_at_ms: int


@dataclass(frozen=True, slots=True, kw_only=True)
class AccountSummary:
    """A row of ``pigeon-relay admin accounts``."""

    account_id: bytes
    created_at_ms: int
    mailbox_count: int


@dataclass(frozen=True, slots=True, kw_only=True)
class MailboxRecord:
    """A mailbox as its owner (and the relay) sees it. The capability hash is never exposed."""

    mailbox_id: bytes
    account_id: bytes
    kind: MailboxKind
    created_at_ms: int
    last_seq: int
    """The highest seq ever assigned in this mailbox (seqs are dense: 1, 2, 3...)."""
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
        more: the limit was hit; call again.
    """

    notices: tuple[ExpiryNotice, ...]
    messages_removed: int
    dedup_removed: int
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
    what is left after this fetch, for prekeys-low notices.
    """

    account_id: bytes
    identity_key: bytes = field(repr=False)
    signed_prekey: bytes = field(repr=False)
    one_time_x25519: OneTimePrekey | None
    one_time_kem: OneTimePrekey | None
    last_resort_kem: bytes | None = field(repr=False)
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
        self, *, account_id: bytes, identity_key: bytes, now_ms: int
    ) -> AccountRecord:
        """Replace the identity key (the caller verified the old key's signature).

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
        self,
        *,
        account_id: bytes,
        mailbox_id: bytes,
        capability_hash: bytes,
        kind: MailboxKind,
        now_ms: int,
    ) -> MailboxRecord:
        """Raises NotFound (no such account) or StoreConflict (mailbox id taken)."""
        ...

    async def get_mailbox(self, mailbox_id: bytes) -> MailboxRecord | None: ...

    async def list_mailboxes(self, account_id: bytes) -> list[MailboxRecord]:
        """The account's mailboxes, ordered by creation time then id."""
        ...

    async def replace_capability(
        self, *, account_id: bytes, mailbox_id: bytes, capability_hash: bytes
    ) -> None:
        """Rotate the send capability in place. Raises NotFound unless *account_id* owns it."""
        ...

    async def set_push_url(
        self, *, account_id: bytes, mailbox_id: bytes, push_url: str | None
    ) -> None:
        """Set or clear the content-free push hook. Raises NotFound unless owned."""
        ...

    async def delete_mailbox(self, *, account_id: bytes, mailbox_id: bytes) -> bool:
        """Delete an owned mailbox with its queue. False if absent or not owned."""
        ...

    async def check_capabilities(self, recipients: Sequence[Recipient]) -> frozenset[bytes]:
        """The mailbox ids whose stored capability hash equals the one given (constant-time)."""
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
    ) -> AppendResult:
        """Durably queue *blob* for every recipient whose capability matches.

        One transaction: the blob is stored once, with one delivery row per new recipient
        mailbox, each getting that mailbox's next seq. Idempotent per
        ``(client_msg_id, mailbox)``: a recipient that already has this client_msg_id gets
        its original seq back (``duplicate=True``) and nothing new. When this returns, the
        write is committed at the configured durability.
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
        the account is unknown or lacks a signed prekey or any KEM prekey."""
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
    """Upload state of a blob (a file chunk): ``received`` of ``size`` bytes so far."""

    blob_id: bytes
    size: int
    received: int
    expires_at_ms: int

    @property
    def complete(self) -> bool:
        return self.received == self.size


class BlobReader(Protocol):
    """An open, complete blob: iterate for its bytes in pieces, then close."""

    @property
    def status(self) -> BlobStatus: ...

    def __aiter__(self) -> AsyncIterator[bytes]: ...

    async def aclose(self) -> None: ...


class BlobStore(Protocol):
    async def write(
        self,
        blob_id: bytes,
        data: AsyncIterable[bytes],
        *,
        offset: int,
        size: int,
        expires_at_ms: int,
    ) -> BlobStatus:
        """Stream *data* into the blob at *offset* (``<=`` bytes received so far: uploads
        resume, and re-sending a range is idempotent). The blob becomes readable once
        ``size`` bytes arrived. Raises BlobTooLarge, BlobRangeError, BlobConflict."""
        ...

    async def status(self, blob_id: bytes) -> BlobStatus | None: ...

    async def open(self, blob_id: bytes, *, offset: int = 0) -> BlobReader:
        """Open a complete blob for streaming. Raises BlobNotFound."""
        ...

    async def delete(self, blob_id: bytes) -> bool: ...

    async def sweep(self, *, now_ms: int) -> int:
        """Delete blobs (complete or partial) whose ``expires_at_ms <= now_ms``."""
        ...
