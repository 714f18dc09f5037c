"""Ports of the relay: the ``Store``, ``Bus`` and ``BlobStore`` protocols and their records.

Theory of operation (DESIGN.md "Addresses", "Relay pipeline"; docs/protocol.md (§10)):

* The relay is blind. It stores accounts (identity key + opaque prekey blobs), mailboxes
  (one-way queues owned by an account, written by anyone who holds the mailbox's send
  capability, of which only ``SHA-256(capability)`` is stored), and opaque message blobs.
  **No record names a sender**: a stored message knows its mailbox, its per-mailbox
  sequence number, two timestamps and its bytes.
* Every identifier is plain ``bytes`` of a fixed length (the ``*_LEN`` constants). Capability
  hashes are computed by the SDK (protocol: ``CreateMailbox.capability_hash``); the store
  compares them with :func:`hmac.compare_digest`. The one capability the relay sees in
  clear is a contact mailbox's, which is public (published with the bundle).
* Time is passed in as ``now_ms`` (Unix milliseconds) so that tests control the clock.
* Adapters raise :class:`~pigeon_crypto.errors.StoreError` or a subclass exported here;
  a foreign exception (``sqlite3.Error``, ``OSError``...) is wrapped ``from`` the original.
  Caller misuse (an id of the wrong length) raises :class:`ValueError`.

The records are frozen, slotted, keyword-only dataclasses so that every adapter (SQLite,
memory, a future PostgreSQL) returns exactly the same values, which the contract suite in
``tests/unit/relay/test_store_contract.py`` compares.
"""

from __future__ import annotations

import logging
import threading
from collections.abc import AsyncIterable, AsyncIterator, Callable, Sequence
from typing import Any, Protocol, runtime_checkable

from ._port_records import (
    ACCOUNT_ID_LEN,
    CAPABILITY_HASH_LEN,
    CLIENT_MSG_ID_LEN,
    MAILBOX_ID_LEN,
    PREKEY_ID_MAX,
    AccountRecord,
    AccountSummary,
    AckRequest,
    AppendRequest,
    AppendResult,
    BlobConflict,
    BlobNotFound,
    BlobStatus,
    BlobTooLarge,
    ExpiryNotice,
    ExpiryReport,
    InviteRecord,
    InviteRejected,
    MailboxQueue,
    MailboxRecord,
    NotFound,
    Notification,
    NotificationKind,
    OneTimePrekey,
    PrekeyBundleRecord,
    PrekeyCounts,
    QueueSizes,
    Recipient,
    RecipientSeq,
    RejectReason,
    StoreConflict,
    StoredMessage,
    UsernameRecord,
    WrongCapability,
    check_id,
    invite_code_hash,
    send_dedup_hash,
    unchecked_notification,
    unchecked_recipient,
    unchecked_recipient_seq,
)

__all__ = [
    "ACCOUNT_ID_LEN",
    "CAPABILITY_HASH_LEN",
    "CLIENT_MSG_ID_LEN",
    "MAILBOX_ID_LEN",
    "PREKEY_ID_MAX",
    "AccountRecord",
    "AccountStore",
    "AccountSummary",
    "AckRequest",
    "AdminStore",
    "AppendRequest",
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
    "observe",
    "send_dedup_hash",
    "unchecked_notification",
    "unchecked_recipient",
    "unchecked_recipient_seq",
]

# --------------------------------------------------------------------------- observer


class StoreObserver(Protocol):
    """Hook for metrics; the server maps it to Prometheus. Must be fast and thread-safe.

    ``on_commit`` runs on the adapter's writer thread (SQLite) once per transaction;
    ``on_operation`` runs on the caller's event loop once per store call, with the
    latency the caller saw (queueing + transaction + wake-up).
    """

    def on_commit(self, *, ops: int, seconds: float, ok: bool) -> None: ...

    def on_operation(self, *, name: str, seconds: float, ok: bool) -> None: ...


def observe(call: Callable[..., None], **fields: Any) -> None:
    """Call an observer method: metrics must never break a store, so one that fails is
    logged, not propagated (on a writer thread it would strand every caller)."""
    try:
        call(**fields)
    except Exception:
        logging.getLogger("pigeon.relay.store").exception("store observer failed")


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
        self, *, account_id: bytes, identity_key: bytes, rotation: bytes, now_ms: int,
        expect_key: bytes, expect_rotations: int,
    ) -> AccountRecord:
        """Replace the identity key and append *rotation* (the opaque, already verified
        ``IdentityRotation`` record) to the account's rotation chain, if the account still
        has *expect_key* and *expect_rotations* records (the state the rotation was
        verified against: of two concurrent rotations from one key, one fails). In the same
        transaction, drop what the old key signed: the signed prekey, the last-resort KEM
        prekey and the one-time KEM prekeys (a bundle holding them would not verify); the
        account publishes no bundle until the owner uploads new ones. Unsigned one-time
        X25519 prekeys stay.

        Raises:
            NotFound: no such account.
            StoreConflict: the key or the chain length is no longer the expected one.
        """
        ...

    async def delete_account(self, account_id: bytes) -> bool:
        """Delete the account and everything it owns (mailboxes, their queued messages and
        per-mailbox idempotency records, prekeys, username) in one transaction. False if
        absent. A multi-recipient send's idempotency record (SQLite ``send_dedup``) names
        its mailboxes only by an internal serial, which nothing maps back once the
        mailboxes are gone; it stays until it expires (at most the message TTL)."""
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

    async def count_mailboxes(self, account_id: bytes) -> int:
        """How many mailboxes the account has (retiring ones included)."""
        ...

    async def owned_mailboxes(self, account_id: bytes,
                              mailbox_ids: Sequence[bytes]) -> set[bytes]:
        """Those of *mailbox_ids* that exist and belong to the account."""
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

        Idempotent: if *mailbox_id* is already retired, this is taken as a repeat of the
        rotation that retired it: the call changes nothing and returns the account's
        (latest) mailbox with *capability_hash*, the one that rotation created when the
        client draws fresh capabilities.

        Raises:
            NotFound: the old mailbox is absent or not owned, or retired and the account
                has no other mailbox with *capability_hash*.
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
        dedup_ttl_ms: int | None = None,
    ) -> AppendResult:
        """Durably queue *blob* for every recipient that accepts it.

        One transaction: the blob is stored once, with one delivery row per new recipient
        mailbox, each getting that mailbox's next seq; it expires at ``now_ms + ttl_ms``.
        Idempotent per ``(client_msg_id, mailbox)``: a recipient that already has this
        client_msg_id gets its original seq back (``duplicate=True``) and nothing new; the
        idempotency record is kept ``max(ttl_ms, dedup_ttl_ms)`` (the relay passes its
        maximum TTL), even after the ack. Refused: a wrong capability or retired mailbox,
        and a mailbox already holding *max_pending* messages. When this returns, the write
        is committed at the configured durability.
        """
        ...

    async def append_many(self, requests: Sequence[AppendRequest]) -> list[AppendResult]:
        """:meth:`append` for each request, in order, committed together.

        The results are those the calls would get one after the other (a later request
        sees the earlier ones: seqs, duplicates, quota). All or nothing: when this
        returns, every request is committed; when it raises, none is. The relay's
        pipeline passes the durable sends one connection read in one event-loop
        iteration, so that a busy connection costs one store call per iteration, not
        one per frame.
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

    async def ack_many(
        self, requests: Sequence[tuple[bytes, int | None, Sequence[int]]]
    ) -> list[int]:
        """:meth:`ack` for each ``(mailbox_id, up_to_seq, seqs)``, in order, committed
        together; returns what each call would return after the earlier ones (a row is
        counted for the first request that removes it). The relay passes the acks of
        every connection read in one event-loop iteration: one store call for all of
        them, not one per ack."""
        ...

    async def pending_count(self, mailbox_id: bytes) -> int: ...

    async def expire(self, *, now_ms: int, limit: int = 10_000) -> ExpiryReport:
        """Remove messages and idempotency records with ``expires_at_ms <= now_ms`` and add
        the per-mailbox counts to the stored expiry notices."""
        ...

    async def expire_mailbox(self, mailbox_id: bytes, *, now_ms: int) -> int:
        """:meth:`expire` for one mailbox's messages only, in one transaction: remove those
        with ``expires_at_ms <= now_ms`` and add them to its stored expiry notice. Returns
        how many went. The delivery pump calls it when a fetch meets expired envelopes the
        sweeper has not reached, so that they are reported before what follows them."""
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

    async def add_many(self, mailbox_ids: Sequence[bytes]) -> None:
        """:meth:`add` each of *mailbox_ids*; a cross-node bus follows them all in one
        round trip (a login subscribing to a few hundred mailboxes waits once). Every id
        is checked before any is added."""
        ...

    async def remove(self, mailbox_id: bytes) -> None: ...

    def resync(self, mailbox_id: bytes) -> None:
        """Make :meth:`get` yield ``RESYNC`` for *mailbox_id* before anything else, as if
        its hints had been coalesced. Local to this subscription (nothing is published): the
        consumer's way to schedule a fetch from the store on its own loop (a new
        subscription's backlog, a delivery window that reopened). No-op for a mailbox this
        subscription does not follow, or once closed."""
        ...

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

    async def publish_many(self, items: Sequence[tuple[bytes, Notification]]) -> list[int]:
        """:meth:`publish` each ``(mailbox_id, notification)`` in order; the counts in the
        same order. A group send's copies: a cross-node bus sends them in one round trip."""
        ...

    async def subscribe(
        self, mailbox_ids: Sequence[bytes] = (), *, max_queue: int | None = None
    ) -> Subscription: ...

    async def invalidate(self, mailbox_id: bytes) -> None:
        """Tell every other node that *mailbox_id* changed (capability retired or gone,
        push URL changed): their handlers given to :meth:`on_invalidate` run with it.
        A single-node bus has no one to tell."""
        ...

    def on_invalidate(self, handler: Callable[[bytes | None], None]) -> None:
        """Call *handler* with each mailbox id another node invalidates, and with None
        when invalidations may have been missed (a cross-node bus that was cut off and
        reconnected): then everything cached about mailboxes is suspect."""
        ...

    async def sessions_revoked(self, account_id: bytes) -> None:
        """Tell every other node that *account_id*'s sessions are revoked (the account
        was deleted, or its identity key rotated): their handlers given to
        :meth:`on_sessions_revoked` run with it (and close its sessions there). A
        single-node bus has no one to tell."""
        ...

    def on_sessions_revoked(self, handler: Callable[[bytes], None]) -> None:
        """Call *handler* with each account id whose sessions another node revoked."""
        ...

    async def subscriptions_taken(self, mailbox_ids: Sequence[bytes], at_ms: int) -> None:
        """Tell every other node that a connection of this one subscribed *mailbox_ids*
        at *at_ms* (this node's clock): their handlers given to
        :meth:`on_subscriptions_taken` run with them, and a node whose connection
        subscribed one of them earlier stops delivering it there (one live subscription
        per mailbox, across nodes). Not awaited by anyone's delivery; a single-node bus
        has no one to tell."""
        ...

    def on_subscriptions_taken(self, handler: Callable[[Sequence[bytes], int, bool], None]
                               ) -> None:
        """Call ``handler(mailbox_ids, at_ms, later_on_tie)`` for each
        :meth:`subscriptions_taken` of another node. *later_on_tie*: whether that node's
        subscription counts as the later one when *at_ms* equals this node's (a fixed
        order of the nodes, so that of two made in the same millisecond exactly one
        stays)."""
        ...

    async def close(self) -> None: ...


class BlobReader(Protocol):
    """One open chunk: iterate for its bytes in pieces (then it closes), or close early."""

    @property
    def size(self) -> int: ...

    def __aiter__(self) -> AsyncIterator[bytes]: ...

    async def skip(self, offset: int) -> None:
        """Start the iteration *offset* bytes in (before iterating)."""
        ...

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
