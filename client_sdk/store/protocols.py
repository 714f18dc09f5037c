"""The client store's ports: one narrow ``typing.Protocol`` per concern.

Modelled on libsignal's storage traits (``rust/protocol/src/storage/traits.rs``): the
SDK core receives stores as arguments and never constructs them. Two implementations
pass one contract suite (``tests/unit/client_sdk/test_store_contract.py``):
:class:`~client_sdk.store.memory.MemoryStore` for tests and
:class:`~client_sdk.store.sqlite.SqliteStore` (one SQLite file per profile).

Calling convention
    Every method is **synchronous and thread-safe**, and each call is one transaction:
    it either happens entirely or not at all. Methods block on disk I/O (SQLite), so
    asyncio code calls them off the event loop, e.g.
    ``await asyncio.to_thread(store.enqueue, outgoing)`` or, to keep calls in FIFO
    order, ``loop.run_in_executor(one_thread_executor, ...)``. A store serializes its
    calls internally (one connection behind a lock), so concurrent calls are safe and
    simply wait their turn. Synchronous ports keep the core sans-I/O and the stores
    simple; the AsyncClient owns the thread.

Atomicity across concerns
    A send and a receive each touch several concerns at once. They go through
    :meth:`OutboxStore.enqueue` (ratchet state + outbox row + history, one transaction)
    and :meth:`InboxStore.commit_receive` (ratchet or sender-key state + prekey
    bookkeeping + contact + history + envelope record, one transaction). That is what
    makes a crash harmless: the state that produced a ciphertext is never stored without
    the ciphertext (or vice versa), so a retry resends the same bytes and never
    re-encrypts under a used message key.

Errors
    ``StoreError`` subclasses from :mod:`client_sdk.errors`; a sealed record that fails
    authentication is ``ProfileCorrupt``. Reads of unknown keys return None (or an empty
    list) rather than raising; writes that name a missing record raise ``RecordNotFound``.
"""

from __future__ import annotations

from collections.abc import Iterable, Sequence
from typing import Protocol

from pigeon_crypto.pqxdh import Accepted, ResponderKeys
from pigeon_crypto.prekeys import KemPreKeyPair, OneTimePreKeyPair, SignedPreKeyPair
from pigeon_crypto.ratchet import RatchetState
from pigeon_crypto.sender_keys import OutboundSenderKey, SenderKeyRecord

from ..history import (
    ApplyOutcome,
    Conversation,
    ConversationKind,
    HistoryOp,
    MessageStatus,
    NewMessage,
    Page,
    PageCursor,
    SearchCursor,
    SearchOrder,
    SearchPage,
    StoredMessage,
)
from .group_records import GroupStore
from .records import (
    Contact,
    ContactState,
    EnvelopeRef,
    Incoming,
    LocalIdentity,
    OutboxItem,
    Outgoing,
    PrekeyKind,
    PrekeyStatus,
    PrekeyUpload,
    ReceiveResult,
)

__all__ = [
    "ClientStore",
    "ContactStore",
    "HistoryStore",
    "IdentityStore",
    "InboxStore",
    "OutboxStore",
    "PreKeyStore",
    "SenderKeyStore",
    "SessionStore",
    "SettingsStore",
]


class IdentityStore(Protocol):
    """Our own account identity (peers' identities live in :class:`ContactStore`)."""

    def local_identity(self) -> LocalIdentity | None:
        """Our identity, or None before registration."""
        ...

    def save_local_identity(self, identity: LocalIdentity) -> None:
        """Store our identity: the first one, or a rotation of it.

        Raises:
            StoreConflict: an identity with a different account id is stored (an
                account id never changes; create a new profile instead), or the new
                rotation chain does not extend the stored one.
        """
        ...


class PreKeyStore(ResponderKeys, Protocol):
    """Our prekeys: private halves for :func:`pigeon_crypto.pqxdh.accept` (the
    :class:`~pigeon_crypto.pqxdh.ResponderKeys` lookups) plus upload bookkeeping.

    Replay records are tied to the signed prekey their initiation used and are dropped
    with it (:meth:`delete_retired_signed_prekeys`): after that an old initiation fails
    with ``PrekeyNotFound`` instead.
    """

    def save_signed_prekey(self, key: SignedPreKeyPair) -> None:
        """Add a signed prekey (unpublished). Use :meth:`retire_signed_prekey` on the
        previous one once the new one is published."""
        ...

    def save_kem_prekeys(self, keys: Sequence[KemPreKeyPair]) -> None:
        """Add ML-KEM prekeys (last-resort or one-time; unpublished)."""
        ...

    def save_one_time_prekeys(self, keys: Sequence[OneTimePreKeyPair]) -> None:
        """Add one-time X25519 prekeys (unpublished)."""
        ...

    def allocate_prekey_ids(self, kind: PrekeyKind, count: int) -> list[int]:
        """Reserve *count* fresh key ids (1..2**32-1, wrapping, skipping held ones)."""
        ...

    def unpublished_prekeys(self) -> PrekeyUpload:
        """Public halves of every prekey not yet marked published."""
        ...

    def mark_published(self, kind: PrekeyKind, key_ids: Iterable[int], *, now_ms: int) -> None:
        """Record that the relay acknowledged an upload of these keys (idempotent)."""
        ...

    def current_signed_prekey(self) -> SignedPreKeyPair | None:
        """The newest signed prekey that is not retired."""
        ...

    def retire_signed_prekey(self, key_id: int, *, now_ms: int) -> None:
        """Stop offering *key_id* but keep it (and its replay records) for in-flight
        initiations until :meth:`delete_retired_signed_prekeys`.

        Raises:
            RecordNotFound: no such signed prekey.
        """
        ...

    def delete_retired_signed_prekeys(self, *, retired_before_ms: int) -> list[int]:
        """Delete signed prekeys retired before the cutoff and their replay records."""
        ...

    def prekey_status(self) -> PrekeyStatus: ...

    def consume_initiation(self, accepted: Accepted, *, now_ms: int) -> None:
        """Delete the one-time prekeys *accepted* used and record its replay key.

        Normally done by :meth:`InboxStore.commit_receive` together with the session.

        Raises:
            ReplayError: the initiation was recorded before.
            PrekeyNotFound: a one-time prekey it used is gone.
        """
        ...


class SessionStore(Protocol):
    """Double Ratchet states, one per peer account."""

    def load_session(self, peer: bytes) -> RatchetState | None: ...

    def store_session(self, peer: bytes, state: RatchetState) -> None: ...

    def delete_session(self, peer: bytes) -> bool:
        """Returns whether a session existed."""
        ...

    def session_peers(self) -> list[bytes]:
        """Account ids with a session, sorted."""
        ...


class SenderKeyStore(Protocol):
    """Group sender keys: our chain per group, and every member's chains."""

    def load_outbound_sender_key(self, group_id: bytes) -> OutboundSenderKey | None: ...

    def store_outbound_sender_key(self, group_id: bytes, key: OutboundSenderKey) -> None:
        """Store our chain; a new chain id forgets whom the old chain was shared with."""
        ...

    def load_sender_key_record(self, group_id: bytes, sender: bytes) -> SenderKeyRecord | None:
        ...

    def store_sender_key_record(
        self, group_id: bytes, sender: bytes, record: SenderKeyRecord
    ) -> None: ...

    def mark_sender_key_shared(
        self, group_id: bytes, chain_id: int, members: Iterable[bytes]
    ) -> None:
        """Record that these members received our chain *chain_id* (distribution sent)."""
        ...

    def sender_key_shared_with(self, group_id: bytes, chain_id: int) -> frozenset[bytes]: ...

    def delete_group_sender_keys(self, group_id: bytes) -> None:
        """Forget every chain of the group (we left, or it was deleted)."""
        ...


class ContactStore(Protocol):
    """Contacts with their identity, trust flags, profile and pairwise mailboxes."""

    def get_contact(self, account_id: bytes) -> Contact | None: ...

    def save_contact(self, contact: Contact) -> None:
        """Create or replace a contact, including its set of mailboxes.

        Raises:
            StoreConflict: one of its mailboxes belongs to another contact.
        """
        ...

    def delete_contact(self, account_id: bytes) -> bool: ...

    def list_contacts(self, *, state: ContactState | None = None) -> list[Contact]:
        """Contacts (optionally in one state), sorted by account id."""
        ...

    def contact_for_mailbox(self, mailbox_id: bytes) -> Contact | None:
        """The contact owning an INBOUND mailbox of ours (current or retiring): maps an
        arriving envelope straight to its session."""
        ...


class SettingsStore(Protocol):
    """Small named values (relay URL, registration state, our contact mailbox)."""

    def get_setting(self, name: str) -> bytes | None: ...

    def put_setting(self, name: str, value: bytes, *, secret: bool = False) -> None:
        """Store *value*; ``secret=True`` seals it at rest."""
        ...

    def delete_setting(self, name: str) -> bool: ...


class OutboxStore(Protocol):
    """Durable sends: stored before the first attempt, resent byte for byte until the
    relay answers ``sent`` (or a permanent error)."""

    def enqueue(self, outgoing: Outgoing) -> OutboxItem:
        """In ONE transaction: save ``outgoing.contact``, store ``outgoing.session`` /
        ``outgoing.sender_key``, insert the outbox row, apply ``outgoing.history`` (a
        NewMessage is linked to the row and starts PENDING). Due immediately.

        Raises:
            StoreConflict: ``client_msg_id`` is already queued (nothing is written).
            RecordNotFound: the history op names an unknown conversation (nothing is
                written).
        """
        ...

    def enqueue_many(self, outgoing: Sequence[Outgoing]) -> list[OutboxItem]:
        """:meth:`enqueue` each of *outgoing*, in order, in ONE transaction (a client's
        group commit: a burst of sends costs one commit). All or nothing: if one raises,
        nothing of the batch is written."""
        ...

    def get_outbox(self, client_msg_id: bytes) -> OutboxItem | None: ...

    def due_outbox(self, *, now_ms: int, limit: int = 100) -> list[OutboxItem]:
        """Rows whose next attempt is due, oldest enqueued first."""
        ...

    def next_outbox_due_at(self) -> int | None:
        """Earliest ``next_attempt_at_ms`` of any row (when to wake up), or None."""
        ...

    def outbox_size(self) -> int: ...

    def record_attempt(
        self, client_msg_id: bytes, *, retry_at_ms: int, error: str | None = None
    ) -> OutboxItem:
        """Count a failed attempt; the row is due again at *retry_at_ms*
        (see :func:`~client_sdk.store.records.retry_delay_ms`).

        Raises:
            RecordNotFound: no such row (already sent or failed).
        """
        ...

    def mark_sent(self, client_msg_id: bytes, *, now_ms: int) -> bool:
        """The relay made it durable: delete the row and move the linked message to
        SENT, in one transaction. Returns False if there was no such row (idempotent)."""
        ...

    def mark_sent_many(self, client_msg_ids: Sequence[bytes], *, now_ms: int) -> list[bool]:
        """:meth:`mark_sent` for each id, in ONE transaction; one result per id."""
        ...

    def mark_failed(self, client_msg_id: bytes, *, reason: str, now_ms: int) -> bool:
        """Give up (permanent relay error): delete the row and mark the linked message
        FAILED with *reason*. Returns False if there was no such row."""
        ...


class InboxStore(Protocol):
    """Received envelopes: processed once, in one transaction with their effects."""

    def envelope_seen(self, envelope: EnvelopeRef) -> bool:
        """True if this envelope was processed: ack it again without decrypting."""
        ...

    def envelopes_seen(self, envelopes: Sequence[EnvelopeRef]) -> set[EnvelopeRef]:
        """Those of *envelopes* that were processed (:meth:`envelope_seen` for a batch,
        one read)."""
        ...

    def commit_receive(self, incoming: Incoming) -> ReceiveResult:
        """In ONE transaction: if the envelope is new, consume the PQXDH prekeys, save
        the contact, the ratchet state or sender-key record, apply the history op, queue
        ``incoming.reply`` (if any) and record the envelope. A duplicate envelope writes
        nothing.

        Raises:
            ReplayError / PrekeyNotFound: see :meth:`PreKeyStore.consume_initiation`.
            RecordNotFound: the history op names an unknown conversation.
        """
        ...

    def commit_receive_many(self, incoming: Sequence[Incoming]) -> list[ReceiveResult]:
        """:meth:`commit_receive` each of *incoming*, in order, in ONE transaction (one
        commit for a burst of deliveries). All or nothing: if one raises, nothing of the
        batch is written."""
        ...

    def purge_envelope_records(self, *, received_before_ms: int) -> int:
        """Forget envelope records older than the relay could redeliver (its TTL)."""
        ...


class HistoryStore(Protocol):
    """Conversations and messages (types and rules in :mod:`client_sdk.history`)."""

    def ensure_conversation(
        self, kind: ConversationKind, peer: bytes, *, now_ms: int, title: str | None = None
    ) -> Conversation:
        """The conversation with *peer*, created if needed (*title* applies on creation)."""
        ...

    def get_conversation(self, conversation_id: int) -> Conversation | None: ...

    def find_conversation(self, kind: ConversationKind, peer: bytes) -> Conversation | None: ...

    def list_conversations(self, *, limit: int = 100) -> list[Conversation]:
        """Most recently active first."""
        ...

    def set_conversation_title(self, conversation_id: int, title: str | None) -> None: ...

    def set_expire_timer(self, conversation_id: int, timer_ms: int | None) -> None:
        """Disappearing messages: applies to messages stored from now on."""
        ...

    def delete_conversation(self, conversation_id: int) -> bool:
        """Delete it with all its messages."""
        ...

    def apply(self, op: HistoryOp, *, now_ms: int) -> ApplyOutcome:
        """Apply one history op in its own transaction.

        Raises:
            RecordNotFound: unknown conversation.
        """
        ...

    def import_messages(self, messages: Iterable[NewMessage]) -> int:
        """Insert many messages in one transaction (restore, benchmarks); duplicates are
        skipped. Returns the number inserted.

        Raises:
            RecordNotFound: a message names an unknown conversation (nothing is written).
        """
        ...

    def get_message(self, conversation_id: int, message_id: bytes) -> StoredMessage | None: ...

    def outgoing_statuses(self, conversation_id: int, message_ids: Sequence[bytes],
                          ) -> dict[bytes, MessageStatus]:
        """The status of each of *our* messages among *message_ids* in the conversation
        (incoming and unknown ids are left out): what a receipt may move, in one read."""
        ...

    def page(
        self,
        conversation_id: int,
        *,
        before: PageCursor | None = None,
        after: PageCursor | None = None,
        limit: int = 50,
        now_ms: int | None = None,
    ) -> Page:
        """A page of the conversation by ``(sent_at_ms, rowid)`` keyset, oldest first:
        the newest page, the page just before *before* or just after *after*. With
        *now_ms*, expired messages are hidden even before :meth:`purge_expired`."""
        ...

    def search(
        self,
        text: str,
        *,
        conversation_id: int | None = None,
        order: SearchOrder = SearchOrder.NEWEST,
        limit: int = 50,
        cursor: SearchCursor | None = None,
        now_ms: int | None = None,
    ) -> SearchPage:
        """Full-text search: every term of *text* must occur (see
        :func:`~client_sdk.history.fts_match_expression`). Tombstones, deleted and
        purged messages are never found; edits are found by their new text; with
        *now_ms*, expired messages are not found even before :meth:`purge_expired`.
        NEWEST orders by storage order (rowid), newest first."""
        ...

    def purge_expired(self, *, now_ms: int) -> int:
        """Delete messages whose ``expires_at_ms`` has passed; returns how many."""
        ...

    def message_count(self, conversation_id: int | None = None) -> int: ...


class ClientStore(
    GroupStore,
    IdentityStore,
    PreKeyStore,
    SessionStore,
    SenderKeyStore,
    ContactStore,
    SettingsStore,
    OutboxStore,
    InboxStore,
    HistoryStore,
    Protocol,
):
    """Everything the client needs, as one object (both implementations are one)."""
