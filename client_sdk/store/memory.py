"""An in-memory :class:`~client_sdk.store.protocols.ClientStore` for tests.

Behaves like :class:`~client_sdk.store.sqlite.SqliteStore` (one contract suite runs
both): same errors, same outcomes, same atomicity. Crypto objects are kept in their
serialized form and rebuilt on every load, so round-trips are exercised as with SQLite.
Each call runs under a lock on a snapshot of every table; an exception restores the
snapshot, which is this store's rollback. Nothing is sealed: there is no file.
"""

from __future__ import annotations

import contextlib
import dataclasses
import threading
from collections.abc import Iterable, Iterator, Sequence

from pigeon_crypto.pqxdh import Accepted
from pigeon_crypto.prekeys import (
    KemPreKeyPair,
    OneTimePreKeyPair,
    SignedPreKeyPair,
)
from pigeon_crypto.ratchet import RatchetState
from pigeon_crypto.sender_keys import OutboundSenderKey, SenderKeyRecord

from ..errors import RecordNotFound, StoreConflict
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
from ._memory_groups import GroupTables
from ._memory_history import HistoryTables
from ._memory_keys import PrekeyRow, PrekeyTables
from .group_records import (
    GroupRecord,
    GroupWrite,
    PendingGroupBlob,
    SealedControlPart,
    SignedSubscription,
    StoredGroupState,
)
from .records import (
    Contact,
    ContactState,
    EnvelopeRef,
    Incoming,
    LocalIdentity,
    MailboxDirection,
    OutboxEntry,
    OutboxItem,
    Outgoing,
    PrekeyKind,
    PrekeyStatus,
    PrekeyUpload,
    ReceiveOutcome,
    ReceiveResult,
)

__all__ = ["MemoryStore"]

@dataclasses.dataclass(frozen=True, slots=True)
class _OutRow:
    seq: int
    entry: OutboxEntry
    attempts: int
    next_attempt_at_ms: int
    last_error: str | None
    message_rowid: int | None


@dataclasses.dataclass
class _Tables:
    identity: LocalIdentity | None = None
    keys: PrekeyTables = dataclasses.field(default_factory=PrekeyTables)
    sessions: dict[bytes, bytes] = dataclasses.field(default_factory=dict)
    outbound: dict[bytes, tuple[int, bytes]] = dataclasses.field(default_factory=dict)
    records: dict[tuple[bytes, bytes], bytes] = dataclasses.field(default_factory=dict)
    shares: frozenset[tuple[bytes, int, bytes]] = frozenset()
    contacts: dict[bytes, Contact] = dataclasses.field(default_factory=dict)
    settings: dict[str, bytes] = dataclasses.field(default_factory=dict)
    outbox: dict[bytes, _OutRow] = dataclasses.field(default_factory=dict)
    next_seq: int = 1
    envelopes: dict[tuple[bytes, int], int] = dataclasses.field(default_factory=dict)
    history: HistoryTables = dataclasses.field(default_factory=HistoryTables)
    groups: GroupTables = dataclasses.field(default_factory=GroupTables)

    def copy(self) -> _Tables:
        return dataclasses.replace(
            self, keys=self.keys.copy(), sessions=dict(self.sessions), outbound=dict(self.outbound),
            records=dict(self.records), contacts=dict(self.contacts),
            settings=dict(self.settings), outbox=dict(self.outbox),
            envelopes=dict(self.envelopes), history=self.history.copy(),
            groups=self.groups.copy(),
        )


class MemoryStore:
    """Implements every store protocol in memory (tests only)."""

    def __init__(self) -> None:
        self._t = _Tables()
        self._lock = threading.RLock()

    def __repr__(self) -> str:
        return f"MemoryStore({len(self._t.history.messages)} messages)"

    @contextlib.contextmanager
    def _atomic(self) -> Iterator[_Tables]:
        with self._lock:
            snapshot = self._t.copy()
            try:
                yield self._t
            except BaseException:
                self._t = snapshot
                raise

    # --- identity -----------------------------------------------------------------------

    def local_identity(self) -> LocalIdentity | None:
        return self._t.identity

    def save_local_identity(self, identity: LocalIdentity) -> None:
        with self._atomic() as t:
            old = t.identity
            if old is not None:
                if old.account_id != identity.account_id:
                    raise StoreConflict("another account's identity is stored in this profile")
                prefix = [r.to_bytes() for r in identity.rotations[: len(old.rotations)]]
                if prefix != [r.to_bytes() for r in old.rotations]:
                    raise StoreConflict("the rotation chain does not extend the stored one")
            t.identity = identity

    # --- prekeys ------------------------------------------------------------------------

    def signed_prekey(self, key_id: int) -> SignedPreKeyPair | None:
        raw = self._t.keys.private(PrekeyKind.SIGNED, key_id)
        return None if raw is None else SignedPreKeyPair.from_bytes(raw)

    def kem_prekey(self, key_id: int) -> KemPreKeyPair | None:
        raw = self._t.keys.private(PrekeyKind.KEM, key_id)
        return None if raw is None else KemPreKeyPair.from_bytes(raw)

    def one_time_prekey(self, key_id: int) -> OneTimePreKeyPair | None:
        raw = self._t.keys.private(PrekeyKind.ONE_TIME, key_id)
        return None if raw is None else OneTimePreKeyPair.from_bytes(raw)

    def seen_initiation(self, replay_key: bytes) -> bool:
        return self._t.keys.seen(replay_key)

    def save_signed_prekey(self, key: SignedPreKeyPair) -> None:
        with self._atomic() as t:
            t.keys.add(PrekeyKind.SIGNED, key.key_id, key.public.to_bytes(),
                       PrekeyRow(key.to_bytes(), key.public.created_ms))

    def save_kem_prekeys(self, keys: Sequence[KemPreKeyPair]) -> None:
        with self._atomic() as t:
            for key in keys:
                t.keys.add(PrekeyKind.KEM, key.key_id, key.public.to_bytes(),
                           PrekeyRow(key.to_bytes(), key.public.created_ms,
                                     kem_kind=key.public.kind))

    def save_one_time_prekeys(self, keys: Sequence[OneTimePreKeyPair]) -> None:
        with self._atomic() as t:
            for key in keys:
                t.keys.add(PrekeyKind.ONE_TIME, key.key_id, key.public.to_bytes(),
                           PrekeyRow(key.to_bytes(), 0))

    def allocate_prekey_ids(self, kind: PrekeyKind, count: int) -> list[int]:
        with self._atomic() as t:
            return t.keys.allocate(kind, count)

    def unpublished_prekeys(self) -> PrekeyUpload:
        with self._lock:
            return self._t.keys.unpublished()

    def mark_published(self, kind: PrekeyKind, key_ids: Iterable[int], *, now_ms: int) -> None:
        with self._atomic() as t:
            t.keys.mark_published(kind, key_ids, now_ms)

    def current_signed_prekey(self) -> SignedPreKeyPair | None:
        with self._lock:
            found = self._t.keys.current_signed()
            return None if found is None else SignedPreKeyPair.from_bytes(found[1].private)

    def retire_signed_prekey(self, key_id: int, *, now_ms: int) -> None:
        with self._atomic() as t:
            t.keys.retire(key_id, now_ms)

    def delete_retired_signed_prekeys(self, *, retired_before_ms: int) -> list[int]:
        with self._atomic() as t:
            return t.keys.delete_retired(retired_before_ms)

    def prekey_status(self) -> PrekeyStatus:
        with self._lock:
            return self._t.keys.status()

    def consume_initiation(self, accepted: Accepted, *, now_ms: int) -> None:
        with self._atomic() as t:
            t.keys.consume(accepted)

    # --- sessions and sender keys -------------------------------------------------------

    def load_session(self, peer: bytes) -> RatchetState | None:
        raw = self._t.sessions.get(peer)
        return None if raw is None else RatchetState.from_bytes(raw)

    def store_session(self, peer: bytes, state: RatchetState) -> None:
        with self._atomic() as t:
            t.sessions[peer] = state.to_bytes()

    def delete_session(self, peer: bytes) -> bool:
        with self._atomic() as t:
            return t.sessions.pop(peer, None) is not None

    def session_peers(self) -> list[bytes]:
        return sorted(self._t.sessions)

    def load_outbound_sender_key(self, group_id: bytes) -> OutboundSenderKey | None:
        found = self._t.outbound.get(group_id)
        return None if found is None else OutboundSenderKey.from_bytes(found[1])

    def _store_outbound(self, t: _Tables, group_id: bytes, key: OutboundSenderKey) -> None:
        t.shares = frozenset(s for s in t.shares if s[0] != group_id or s[1] == key.chain_id)
        t.outbound[group_id] = (key.chain_id, key.to_bytes())

    def store_outbound_sender_key(self, group_id: bytes, key: OutboundSenderKey) -> None:
        with self._atomic() as t:
            self._store_outbound(t, group_id, key)

    def load_sender_key_record(self, group_id: bytes, sender: bytes) -> SenderKeyRecord | None:
        raw = self._t.records.get((group_id, sender))
        return None if raw is None else SenderKeyRecord.from_bytes(raw)

    def store_sender_key_record(
        self, group_id: bytes, sender: bytes, record: SenderKeyRecord
    ) -> None:
        with self._atomic() as t:
            t.records[(group_id, sender)] = record.to_bytes()

    def mark_sender_key_shared(
        self, group_id: bytes, chain_id: int, members: Iterable[bytes]
    ) -> None:
        with self._atomic() as t:
            t.shares = t.shares | {(group_id, chain_id, m) for m in members}

    def sender_key_shared_with(self, group_id: bytes, chain_id: int) -> frozenset[bytes]:
        return frozenset(m for g, c, m in self._t.shares if g == group_id and c == chain_id)

    def delete_group_sender_keys(self, group_id: bytes) -> None:
        with self._atomic() as t:
            t.outbound.pop(group_id, None)
            t.records = {k: v for k, v in t.records.items() if k[0] != group_id}
            t.shares = frozenset(s for s in t.shares if s[0] != group_id)

    # --- groups ---------------------------------------------------------------------------

    def load_group(self, group_id: bytes) -> GroupRecord | None:
        return self._t.groups.groups.get(group_id)

    def list_groups(self) -> list[GroupRecord]:
        return [g for _, g in sorted(self._t.groups.groups.items())]

    def group_states(self, group_id: bytes) -> list[StoredGroupState]:
        return self._t.groups.group_states(group_id)

    def group_for_chain(self, sender: bytes, chain_id: int) -> bytes | None:
        return self._t.groups.chains.get((sender, chain_id))

    def channel_subscriptions(self, group_id: bytes) -> list[SignedSubscription]:
        return self._t.groups.channel_subscriptions(group_id)

    def channel_roster(self, group_id: bytes) -> frozenset[bytes] | None:
        return self._t.groups.rosters.get(group_id)

    def pending_group_blobs(self, *, limit: int = 1000) -> list[PendingGroupBlob]:
        return [p for _, p in sorted(self._t.groups.pending.items())][:limit]

    def pending_group_blob_count(self, *, sender: bytes | None = None) -> int:
        return sum(1 for p in self._t.groups.pending.values()
                   if sender is None or p.sender == sender)

    def group_receipts(self, group_id: bytes, message_id: bytes) -> list[tuple[bytes, int]]:
        return [(m, k) for (g, mid, m, k) in self._t.groups.receipts
                if g == group_id and mid == message_id]

    def sealed_control_part(self, sender: bytes, blob_hash: bytes) -> SealedControlPart | None:
        return self._t.groups.sealed.get((sender, blob_hash))

    def sealed_control_count(self, *, sender: bytes | None = None, blobs: bool = False,
                             ) -> int:
        return sum(1 for p in self._t.groups.sealed.values()
                   if (sender is None or p.sender == sender) and (not blobs or p.blob))

    def write_group(self, write: GroupWrite, *, now_ms: int) -> None:
        with self._atomic() as t:
            self._write_group(t, write)

    def _write_group(self, t: _Tables, w: GroupWrite) -> None:
        def share(group_id: bytes, chain_id: int, member: bytes) -> None:
            t.shares = t.shares | {(group_id, chain_id, member)}

        def unshare(group_id: bytes, member: bytes) -> None:
            t.shares = frozenset(s for s in t.shares if (s[0], s[2]) != (group_id, member))

        def store_records(w: GroupWrite) -> None:
            for u in w.sender_keys:
                t.records[(u.group_id, u.sender)] = u.record.to_bytes()

        def forget(group_id: bytes) -> None:
            t.outbound.pop(group_id, None)
            t.records = {k: v for k, v in t.records.items() if k[0] != group_id}
            t.shares = frozenset(s for s in t.shares if s[0] != group_id)

        def drop_outbound(group_id: bytes) -> None:
            t.outbound.pop(group_id, None)
            t.shares = frozenset(s for s in t.shares if s[0] != group_id)

        t.groups.write(w, share=share, unshare=unshare, store_record=store_records,
                       apply=lambda op: self._apply(t, op), forget=forget,
                       drop_outbound=drop_outbound)

    # --- contacts and settings ----------------------------------------------------------

    def get_contact(self, account_id: bytes) -> Contact | None:
        return self._t.contacts.get(account_id)

    def _save_contact(self, t: _Tables, contact: Contact) -> None:
        for other in t.contacts.values():
            if other.account_id == contact.account_id:
                continue
            theirs = {m.mailbox_id for m in other.mailboxes}
            if any(m.mailbox_id in theirs for m in contact.mailboxes):
                raise StoreConflict("a mailbox of this contact belongs to another contact")
        t.contacts[contact.account_id] = contact

    def save_contact(self, contact: Contact) -> None:
        with self._atomic() as t:
            self._save_contact(t, contact)

    def delete_contact(self, account_id: bytes) -> bool:
        with self._atomic() as t:
            return t.contacts.pop(account_id, None) is not None

    def list_contacts(self, *, state: ContactState | None = None) -> list[Contact]:
        return [c for _, c in sorted(self._t.contacts.items())
                if state is None or c.state is state]

    def contact_for_mailbox(self, mailbox_id: bytes) -> Contact | None:
        for c in self._t.contacts.values():
            for m in c.mailboxes:
                if m.mailbox_id == mailbox_id and m.direction is MailboxDirection.INBOUND:
                    return c
        return None

    def get_setting(self, name: str) -> bytes | None:
        return self._t.settings.get(name)

    def put_setting(self, name: str, value: bytes, *, secret: bool = False) -> None:
        with self._atomic() as t:
            t.settings[name] = bytes(value)

    def delete_setting(self, name: str) -> bool:
        with self._atomic() as t:
            return t.settings.pop(name, None) is not None

    # --- outbox and inbox ---------------------------------------------------------------

    def _item(self, t: _Tables, row: _OutRow) -> OutboxItem:
        link = None
        if row.message_rowid is not None:
            msg = t.history.messages.get(row.message_rowid)
            if msg is not None:
                link = (msg.conversation_id, msg.message_id)
        return OutboxItem(seq=row.seq, entry=row.entry, attempts=row.attempts,
                          next_attempt_at_ms=row.next_attempt_at_ms, last_error=row.last_error,
                          message=link)

    def _unlink(self, t: _Tables, removed: Iterable[int]) -> None:
        gone = set(removed)
        for cmid, row in list(t.outbox.items()):
            if row.message_rowid in gone:
                t.outbox[cmid] = dataclasses.replace(row, message_rowid=None)

    def _apply(self, t: _Tables, op: HistoryOp) -> tuple[ApplyOutcome, int | None]:
        outcome, inserted, removed = t.history.apply(op)
        if removed is not None:
            self._unlink(t, [removed])
        return outcome, inserted

    def enqueue(self, outgoing: Outgoing) -> OutboxItem:
        with self._atomic() as t:
            return self._enqueue(t, outgoing)

    def enqueue_many(self, outgoing: Sequence[Outgoing]) -> list[OutboxItem]:
        with self._atomic() as t:
            return [self._enqueue(t, o) for o in outgoing]

    def _enqueue(self, t: _Tables, outgoing: Outgoing) -> OutboxItem:
        entry, op = outgoing.entry, outgoing.history
        if isinstance(op, NewMessage) and (
            op.sender is not None or op.initial_status is not MessageStatus.PENDING
        ):
            raise ValueError("an outgoing NewMessage must be ours (sender=None) and PENDING")
        if entry.client_msg_id in t.outbox:
            raise StoreConflict("client_msg_id is already queued")
        if outgoing.contact is not None:
            self._save_contact(t, outgoing.contact)
        if outgoing.session is not None:
            t.sessions[outgoing.session.peer] = outgoing.session.state.to_bytes()
        if outgoing.sender_key is not None:
            self._store_outbound(t, outgoing.sender_key.group_id, outgoing.sender_key.key)
        if outgoing.group is not None:
            self._write_group(t, outgoing.group)
        link = None
        if op is not None:
            outcome, link = self._apply(t, op)
            if isinstance(op, NewMessage) and outcome is not ApplyOutcome.APPLIED:
                raise StoreConflict(f"the message id is already in history ({outcome.value})")
        return self._item(t, self._insert(t, entry, link))

    @staticmethod
    def _insert(t: _Tables, entry: OutboxEntry, link: int | None) -> _OutRow:
        row = _OutRow(seq=t.next_seq, entry=entry, attempts=0,
                      next_attempt_at_ms=entry.created_at_ms, last_error=None,
                      message_rowid=link)
        t.next_seq += 1
        t.outbox[entry.client_msg_id] = row
        return row

    def get_outbox(self, client_msg_id: bytes) -> OutboxItem | None:
        with self._lock:
            row = self._t.outbox.get(client_msg_id)
            return None if row is None else self._item(self._t, row)

    def due_outbox(self, *, now_ms: int, limit: int = 100) -> list[OutboxItem]:
        if limit < 1:
            raise ValueError("limit must be positive")
        with self._lock:
            rows = sorted((r for r in self._t.outbox.values() if r.next_attempt_at_ms <= now_ms),
                          key=lambda r: r.seq)
            return [self._item(self._t, r) for r in rows[:limit]]

    def next_outbox_due_at(self) -> int | None:
        return min((r.next_attempt_at_ms for r in self._t.outbox.values()), default=None)

    def outbox_size(self) -> int:
        return len(self._t.outbox)

    def record_attempt(
        self, client_msg_id: bytes, *, retry_at_ms: int, error: str | None = None
    ) -> OutboxItem:
        with self._atomic() as t:
            row = t.outbox.get(client_msg_id)
            if row is None:
                raise RecordNotFound("outbox entry", client_msg_id.hex())
            row = dataclasses.replace(row, attempts=row.attempts + 1,
                                      next_attempt_at_ms=retry_at_ms, last_error=error)
            t.outbox[client_msg_id] = row
            return self._item(t, row)

    @staticmethod
    def _finish_in(t: _Tables, client_msg_id: bytes, status: MessageStatus,
                   reason: str | None) -> bool:
        row = t.outbox.pop(client_msg_id, None)
        if row is None:
            return False
        if row.message_rowid is not None:
            t.history.set_outgoing_status(row.message_rowid, status, reason)
        return True

    def _finish(self, client_msg_id: bytes, status: MessageStatus, reason: str | None) -> bool:
        with self._atomic() as t:
            return self._finish_in(t, client_msg_id, status, reason)

    def mark_sent(self, client_msg_id: bytes, *, now_ms: int) -> bool:
        return self._finish(client_msg_id, MessageStatus.SENT, None)

    def mark_sent_many(self, client_msg_ids: Sequence[bytes], *, now_ms: int) -> list[bool]:
        with self._atomic() as t:
            return [self._finish_in(t, c, MessageStatus.SENT, None) for c in client_msg_ids]

    def mark_failed(self, client_msg_id: bytes, *, reason: str, now_ms: int) -> bool:
        return self._finish(client_msg_id, MessageStatus.FAILED, reason)

    def envelope_seen(self, envelope: EnvelopeRef) -> bool:
        return (envelope.mailbox_id, envelope.seq) in self._t.envelopes

    def envelopes_seen(self, envelopes: Sequence[EnvelopeRef]) -> set[EnvelopeRef]:
        with self._lock:
            seen = self._t.envelopes
            return {e for e in envelopes if (e.mailbox_id, e.seq) in seen}

    def commit_receive(self, incoming: Incoming) -> ReceiveResult:
        with self._atomic() as t:
            return self._commit_receive(t, incoming)

    def commit_receive_many(self, incoming: Sequence[Incoming]) -> list[ReceiveResult]:
        with self._atomic() as t:
            return [self._commit_receive(t, i) for i in incoming]

    def _commit_receive(self, t: _Tables, incoming: Incoming) -> ReceiveResult:
        key = (incoming.envelope.mailbox_id, incoming.envelope.seq)
        if key in t.envelopes:
            return ReceiveResult(outcome=ReceiveOutcome.DUPLICATE_ENVELOPE)
        if incoming.accepted is not None:
            t.keys.consume(incoming.accepted)
        if incoming.contact is not None:
            self._save_contact(t, incoming.contact)
        if incoming.session is not None:
            t.sessions[incoming.session.peer] = incoming.session.state.to_bytes()
        if incoming.sender_key is not None:
            u = incoming.sender_key
            t.records[(u.group_id, u.sender)] = u.record.to_bytes()
        if incoming.group is not None:
            self._write_group(t, incoming.group)
        outcome = None
        if incoming.history is not None:
            outcome, _ = self._apply(t, incoming.history)
        if incoming.reply is not None:
            if incoming.reply.client_msg_id in t.outbox:
                raise StoreConflict("client_msg_id is already queued")
            self._insert(t, incoming.reply, None)
        t.envelopes[key] = incoming.received_at_ms
        return ReceiveResult(outcome=ReceiveOutcome.PROCESSED, history=outcome)

    def purge_envelope_records(self, *, received_before_ms: int) -> int:
        with self._atomic() as t:
            old = [k for k, at in t.envelopes.items() if at < received_before_ms]
            for k in old:
                del t.envelopes[k]
            return len(old)

    # --- history ------------------------------------------------------------------------

    def ensure_conversation(
        self, kind: ConversationKind, peer: bytes, *, now_ms: int, title: str | None = None
    ) -> Conversation:
        with self._atomic() as t:
            return t.history.ensure_conversation(kind, peer, now_ms, title)

    def get_conversation(self, conversation_id: int) -> Conversation | None:
        return self._t.history.conversations.get(conversation_id)

    def find_conversation(self, kind: ConversationKind, peer: bytes) -> Conversation | None:
        with self._lock:
            cid = self._t.history.conversation_keys.get((kind, peer))
            return None if cid is None else self._t.history.conversations[cid]

    def list_conversations(self, *, limit: int = 100) -> list[Conversation]:
        with self._lock:
            return self._t.history.list_conversations(limit)

    def set_conversation_title(self, conversation_id: int, title: str | None) -> None:
        with self._atomic() as t:
            t.history.set_title(conversation_id, title)

    def set_expire_timer(self, conversation_id: int, timer_ms: int | None) -> None:
        with self._atomic() as t:
            t.history.set_timer(conversation_id, timer_ms)

    def delete_conversation(self, conversation_id: int) -> bool:
        with self._atomic() as t:
            existed = conversation_id in t.history.conversations
            self._unlink(t, t.history.delete_conversation(conversation_id))
            return existed

    def apply(self, op: HistoryOp, *, now_ms: int) -> ApplyOutcome:
        with self._atomic() as t:
            return self._apply(t, op)[0]

    def import_messages(self, messages: Iterable[NewMessage]) -> int:
        with self._atomic() as t:
            return t.history.import_messages(messages)

    def get_message(self, conversation_id: int, message_id: bytes) -> StoredMessage | None:
        with self._lock:
            return self._t.history.get_message(conversation_id, message_id)

    def outgoing_statuses(self, conversation_id: int, message_ids: Sequence[bytes],
                          ) -> dict[bytes, MessageStatus]:
        with self._lock:
            return self._t.history.outgoing_statuses(conversation_id, message_ids)

    def page(
        self,
        conversation_id: int,
        *,
        before: PageCursor | None = None,
        after: PageCursor | None = None,
        limit: int = 50,
        now_ms: int | None = None,
    ) -> Page:
        with self._lock:
            return self._t.history.page(conversation_id, before, after, limit, now_ms)

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
        with self._lock:
            return self._t.history.search(text, conversation_id, order, limit, cursor, now_ms)

    def purge_expired(self, *, now_ms: int) -> int:
        with self._atomic() as t:
            gone = t.history.purge_expired(now_ms)
            self._unlink(t, gone)
            return len(gone)

    def message_count(self, conversation_id: int | None = None) -> int:
        with self._lock:
            return self._t.history.count(conversation_id)
