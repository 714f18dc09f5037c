"""The SQLite :class:`~client_sdk.store.protocols.ClientStore`: one file per profile.

Obtain one from :class:`~client_sdk.store.profile.Profile` (``profile.store``), which
opens the file, unlocks the data key and migrates the schema. The SQL lives in the
``_sqlite_*`` helpers; this class only opens one transaction per call:
``Db.write`` (``BEGIN IMMEDIATE`` … ``COMMIT``) for writes, ``Db.read`` for reads.

Threads: all methods are synchronous and serialized by one lock around the one
connection, so they may be called from any thread, e.g. via ``asyncio.to_thread``
(see ``protocols``). Durability: ``PRAGMA synchronous`` as the profile was opened with
(FULL by default: a returned write survives power loss).
"""

from __future__ import annotations

from collections.abc import Iterable, Sequence

from pigeon_crypto.pqxdh import Accepted
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
from . import _sqlite_contacts as contacts
from . import _sqlite_groups as _groups
from . import _sqlite_history as history
from . import _sqlite_keys as _keys
from . import _sqlite_outbox as outbox
from ._sqlite_db import Db
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
    OutboxItem,
    Outgoing,
    PrekeyKind,
    PrekeyStatus,
    PrekeyUpload,
    ReceiveResult,
)

__all__ = ["SqliteStore"]


class SqliteStore:
    """Implements every store protocol on the profile's SQLite file."""

    def __init__(self, db: Db) -> None:
        """Use ``Profile.open`` / ``Profile.create``; *db* is an open, migrated file."""
        self._db = db

    def __repr__(self) -> str:
        return f"SqliteStore({self._db.path})"

    # --- identity -----------------------------------------------------------------------

    def local_identity(self) -> LocalIdentity | None:
        with self._db.read("local_identity") as tx:
            return _keys.local_identity(tx)

    def save_local_identity(self, identity: LocalIdentity) -> None:
        with self._db.write("save_local_identity") as tx:
            _keys.save_local_identity(tx, identity)

    # --- prekeys ------------------------------------------------------------------------

    def signed_prekey(self, key_id: int) -> SignedPreKeyPair | None:
        with self._db.read("signed_prekey") as tx:
            return _keys.signed_prekey(tx, key_id)

    def kem_prekey(self, key_id: int) -> KemPreKeyPair | None:
        with self._db.read("kem_prekey") as tx:
            return _keys.kem_prekey(tx, key_id)

    def one_time_prekey(self, key_id: int) -> OneTimePreKeyPair | None:
        with self._db.read("one_time_prekey") as tx:
            return _keys.one_time_prekey(tx, key_id)

    def seen_initiation(self, replay_key: bytes) -> bool:
        with self._db.read("seen_initiation") as tx:
            return _keys.seen_initiation(tx, replay_key)

    def save_signed_prekey(self, key: SignedPreKeyPair) -> None:
        with self._db.write("save_signed_prekey") as tx:
            _keys.save_signed_prekey(tx, key)

    def save_kem_prekeys(self, keys: Sequence[KemPreKeyPair]) -> None:
        with self._db.write("save_kem_prekeys") as tx:
            _keys.save_kem_prekeys(tx, keys)

    def save_one_time_prekeys(self, keys: Sequence[OneTimePreKeyPair]) -> None:
        with self._db.write("save_one_time_prekeys") as tx:
            _keys.save_one_time_prekeys(tx, keys)

    def allocate_prekey_ids(self, kind: PrekeyKind, count: int) -> list[int]:
        with self._db.write("allocate_prekey_ids") as tx:
            return _keys.allocate_prekey_ids(tx, kind, count)

    def unpublished_prekeys(self) -> PrekeyUpload:
        with self._db.read("unpublished_prekeys") as tx:
            return _keys.unpublished_prekeys(tx)

    def mark_published(self, kind: PrekeyKind, key_ids: Iterable[int], *, now_ms: int) -> None:
        with self._db.write("mark_published") as tx:
            _keys.mark_published(tx, kind, key_ids, now_ms)

    def current_signed_prekey(self) -> SignedPreKeyPair | None:
        with self._db.read("current_signed_prekey") as tx:
            return _keys.current_signed_prekey(tx)

    def retire_signed_prekey(self, key_id: int, *, now_ms: int) -> None:
        with self._db.write("retire_signed_prekey") as tx:
            _keys.retire_signed_prekey(tx, key_id, now_ms)

    def delete_retired_signed_prekeys(self, *, retired_before_ms: int) -> list[int]:
        with self._db.write("delete_retired_signed_prekeys") as tx:
            return _keys.delete_retired_signed_prekeys(tx, retired_before_ms)

    def prekey_status(self) -> PrekeyStatus:
        with self._db.read("prekey_status") as tx:
            return _keys.prekey_status(tx)

    def consume_initiation(self, accepted: Accepted, *, now_ms: int) -> None:
        with self._db.write("consume_initiation") as tx:
            _keys.consume_initiation(tx, accepted, now_ms)

    # --- sessions and sender keys -------------------------------------------------------

    def load_session(self, peer: bytes) -> RatchetState | None:
        with self._db.read("load_session") as tx:
            return _keys.load_session(tx, peer)

    def store_session(self, peer: bytes, state: RatchetState) -> None:
        with self._db.write("store_session") as tx:
            _keys.store_session(tx, peer, state)

    def delete_session(self, peer: bytes) -> bool:
        with self._db.write("delete_session") as tx:
            return _keys.delete_session(tx, peer)

    def session_peers(self) -> list[bytes]:
        with self._db.read("session_peers") as tx:
            return _keys.session_peers(tx)

    def load_outbound_sender_key(self, group_id: bytes) -> OutboundSenderKey | None:
        with self._db.read("load_outbound_sender_key") as tx:
            return _keys.load_outbound_sender_key(tx, group_id)

    def store_outbound_sender_key(self, group_id: bytes, key: OutboundSenderKey) -> None:
        with self._db.write("store_outbound_sender_key") as tx:
            _keys.store_outbound_sender_key(tx, group_id, key)

    def load_sender_key_record(self, group_id: bytes, sender: bytes) -> SenderKeyRecord | None:
        with self._db.read("load_sender_key_record") as tx:
            return _keys.load_sender_key_record(tx, group_id, sender)

    def store_sender_key_record(
        self, group_id: bytes, sender: bytes, record: SenderKeyRecord
    ) -> None:
        with self._db.write("store_sender_key_record") as tx:
            _keys.store_sender_key_record(tx, group_id, sender, record)

    def mark_sender_key_shared(
        self, group_id: bytes, chain_id: int, members: Iterable[bytes]
    ) -> None:
        with self._db.write("mark_sender_key_shared") as tx:
            _keys.mark_sender_key_shared(tx, group_id, chain_id, members)

    def sender_key_shared_with(self, group_id: bytes, chain_id: int) -> frozenset[bytes]:
        with self._db.read("sender_key_shared_with") as tx:
            return _keys.sender_key_shared_with(tx, group_id, chain_id)

    def delete_group_sender_keys(self, group_id: bytes) -> None:
        with self._db.write("delete_group_sender_keys") as tx:
            _keys.delete_group_sender_keys(tx, group_id)

    # --- contacts and settings ----------------------------------------------------------

    # --- groups ---------------------------------------------------------------------------

    def load_group(self, group_id: bytes) -> GroupRecord | None:
        with self._db.read("load_group") as tx:
            return _groups.load_group(tx, group_id)

    def list_groups(self) -> list[GroupRecord]:
        with self._db.read("list_groups") as tx:
            return _groups.list_groups(tx)

    def group_states(self, group_id: bytes) -> list[StoredGroupState]:
        with self._db.read("group_states") as tx:
            return _groups.group_states(tx, group_id)

    def group_for_chain(self, sender: bytes, chain_id: int) -> bytes | None:
        with self._db.read("group_for_chain") as tx:
            return _groups.group_for_chain(tx, sender, chain_id)

    def channel_subscriptions(self, group_id: bytes) -> list[SignedSubscription]:
        with self._db.read("channel_subscriptions") as tx:
            return _groups.channel_subscriptions(tx, group_id)

    def channel_roster(self, group_id: bytes) -> frozenset[bytes] | None:
        with self._db.read("channel_roster") as tx:
            return _groups.channel_roster(tx, group_id)

    def pending_group_blobs(self, *, limit: int = 1000) -> list[PendingGroupBlob]:
        with self._db.read("pending_group_blobs") as tx:
            return _groups.pending_group_blobs(tx, limit)

    def pending_group_blob_count(self, *, sender: bytes | None = None) -> int:
        with self._db.read("pending_group_blob_count") as tx:
            return _groups.pending_group_blob_count(tx, sender)

    def group_receipts(self, group_id: bytes, message_id: bytes) -> list[tuple[bytes, int]]:
        with self._db.read("group_receipts") as tx:
            return _groups.group_receipts(tx, group_id, message_id)

    def sealed_control_part(self, sender: bytes, blob_hash: bytes) -> SealedControlPart | None:
        with self._db.read("sealed_control_part") as tx:
            return _groups.sealed_control_part(tx, sender, blob_hash)

    def sealed_control_count(self, *, sender: bytes | None = None, blobs: bool = False,
                             ) -> int:
        with self._db.read("sealed_control_count") as tx:
            return _groups.sealed_control_count(tx, sender, blobs)

    def write_group(self, write: GroupWrite, *, now_ms: int) -> None:
        with self._db.write("write_group") as tx:
            _groups.write(tx, write)

    def get_contact(self, account_id: bytes) -> Contact | None:
        with self._db.read("get_contact") as tx:
            return contacts.get_contact(tx, account_id)

    def save_contact(self, contact: Contact) -> None:
        with self._db.write("save_contact") as tx:
            contacts.save_contact(tx, contact)

    def delete_contact(self, account_id: bytes) -> bool:
        with self._db.write("delete_contact") as tx:
            return contacts.delete_contact(tx, account_id)

    def list_contacts(self, *, state: ContactState | None = None) -> list[Contact]:
        with self._db.read("list_contacts") as tx:
            return contacts.list_contacts(tx, state)

    def contact_for_mailbox(self, mailbox_id: bytes) -> Contact | None:
        with self._db.read("contact_for_mailbox") as tx:
            return contacts.contact_for_mailbox(tx, mailbox_id)

    def get_setting(self, name: str) -> bytes | None:
        with self._db.read("get_setting") as tx:
            return _keys.get_setting(tx, name)

    def put_setting(self, name: str, value: bytes, *, secret: bool = False) -> None:
        with self._db.write("put_setting") as tx:
            _keys.put_setting(tx, name, value, secret)

    def delete_setting(self, name: str) -> bool:
        with self._db.write("delete_setting") as tx:
            return _keys.delete_setting(tx, name)

    # --- outbox and inbox ---------------------------------------------------------------

    def enqueue(self, outgoing: Outgoing) -> OutboxItem:
        with self._db.write("enqueue") as tx:
            return outbox.enqueue(tx, outgoing)

    def enqueue_many(self, outgoing: Sequence[Outgoing]) -> list[OutboxItem]:
        with self._db.write("enqueue_many") as tx:
            return outbox.enqueue_many(tx, outgoing)

    def get_outbox(self, client_msg_id: bytes) -> OutboxItem | None:
        with self._db.read("get_outbox") as tx:
            return outbox.get_outbox(tx, client_msg_id)

    def due_outbox(self, *, now_ms: int, limit: int = 100) -> list[OutboxItem]:
        with self._db.read("due_outbox") as tx:
            return outbox.due_outbox(tx, now_ms, limit)

    def next_outbox_due_at(self) -> int | None:
        with self._db.read("next_outbox_due_at") as tx:
            return outbox.next_outbox_due_at(tx)

    def outbox_size(self) -> int:
        with self._db.read("outbox_size") as tx:
            return outbox.outbox_size(tx)

    def record_attempt(
        self, client_msg_id: bytes, *, retry_at_ms: int, error: str | None = None
    ) -> OutboxItem:
        with self._db.write("record_attempt") as tx:
            return outbox.record_attempt(tx, client_msg_id, retry_at_ms, error)

    def mark_sent(self, client_msg_id: bytes, *, now_ms: int) -> bool:
        with self._db.write("mark_sent") as tx:
            return outbox.finish(tx, client_msg_id, MessageStatus.SENT, None)

    def mark_sent_many(self, client_msg_ids: Sequence[bytes], *, now_ms: int) -> list[bool]:
        with self._db.write("mark_sent_many") as tx:
            return outbox.finish_many(tx, client_msg_ids, MessageStatus.SENT, None)

    def mark_failed(self, client_msg_id: bytes, *, reason: str, now_ms: int) -> bool:
        with self._db.write("mark_failed") as tx:
            return outbox.finish(tx, client_msg_id, MessageStatus.FAILED, reason)

    def envelope_seen(self, envelope: EnvelopeRef) -> bool:
        with self._db.read("envelope_seen") as tx:
            return outbox.envelope_seen(tx, envelope)

    def envelopes_seen(self, envelopes: Sequence[EnvelopeRef]) -> set[EnvelopeRef]:
        with self._db.read("envelopes_seen") as tx:
            return outbox.envelopes_seen(tx, envelopes)

    def commit_receive(self, incoming: Incoming) -> ReceiveResult:
        with self._db.write("commit_receive") as tx:
            return outbox.commit_receive(tx, incoming)

    def commit_receive_many(self, incoming: Sequence[Incoming]) -> list[ReceiveResult]:
        with self._db.write("commit_receive_many") as tx:
            return outbox.commit_receive_many(tx, incoming)

    def purge_envelope_records(self, *, received_before_ms: int) -> int:
        with self._db.write("purge_envelope_records") as tx:
            return outbox.purge_envelope_records(tx, received_before_ms)

    # --- history ------------------------------------------------------------------------

    def ensure_conversation(
        self, kind: ConversationKind, peer: bytes, *, now_ms: int, title: str | None = None
    ) -> Conversation:
        with self._db.write("ensure_conversation") as tx:
            return history.ensure_conversation(tx, kind, peer, now_ms, title)

    def get_conversation(self, conversation_id: int) -> Conversation | None:
        with self._db.read("get_conversation") as tx:
            return history.get_conversation(tx, conversation_id)

    def find_conversation(self, kind: ConversationKind, peer: bytes) -> Conversation | None:
        with self._db.read("find_conversation") as tx:
            return history.find_conversation(tx, kind, peer)

    def list_conversations(self, *, limit: int = 100) -> list[Conversation]:
        with self._db.read("list_conversations") as tx:
            return history.list_conversations(tx, limit)

    def set_conversation_title(self, conversation_id: int, title: str | None) -> None:
        with self._db.write("set_conversation_title") as tx:
            history.set_conversation_title(tx, conversation_id, title)

    def set_expire_timer(self, conversation_id: int, timer_ms: int | None) -> None:
        with self._db.write("set_expire_timer") as tx:
            history.set_expire_timer(tx, conversation_id, timer_ms)

    def delete_conversation(self, conversation_id: int) -> bool:
        with self._db.write("delete_conversation") as tx:
            return history.delete_conversation(tx, conversation_id)

    def apply(self, op: HistoryOp, *, now_ms: int) -> ApplyOutcome:
        with self._db.write("apply") as tx:
            return history.apply(tx, op)[0]

    def import_messages(self, messages: Iterable[NewMessage]) -> int:
        with self._db.write("import_messages") as tx:
            return history.import_messages(tx, messages)

    def get_message(self, conversation_id: int, message_id: bytes) -> StoredMessage | None:
        with self._db.read("get_message") as tx:
            return history.get_message(tx, conversation_id, message_id)

    def outgoing_statuses(self, conversation_id: int, message_ids: Sequence[bytes],
                          ) -> dict[bytes, MessageStatus]:
        with self._db.read("outgoing_statuses") as tx:
            return history.outgoing_statuses(tx, conversation_id, message_ids)

    def page(
        self,
        conversation_id: int,
        *,
        before: PageCursor | None = None,
        after: PageCursor | None = None,
        limit: int = 50,
        now_ms: int | None = None,
    ) -> Page:
        with self._db.read("page") as tx:
            return history.page(tx, conversation_id, before, after, limit, now_ms)

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
        with self._db.read("search") as tx:
            return history.search(tx, text, conversation_id, order, limit, cursor, now_ms)

    def purge_expired(self, *, now_ms: int) -> int:
        with self._db.write("purge_expired") as tx:
            return history.purge_expired(tx, now_ms)

    def message_count(self, conversation_id: int | None = None) -> int:
        with self._db.read("message_count") as tx:
            return history.message_count(tx, conversation_id)
