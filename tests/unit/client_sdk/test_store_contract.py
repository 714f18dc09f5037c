"""Contract suite for the client store ports: MemoryStore and SqliteStore pass all of it.

Every method of every protocol is exercised through the ``store`` fixture (parametrized
in conftest.py), including the atomicity of the two combined transactions.
"""

from __future__ import annotations

import asyncio
import dataclasses

import pytest

from client_sdk.errors import RecordNotFound, StoreConflict
from client_sdk.history import ApplyOutcome, ConversationKind, MessageStatus, NewMessage
from client_sdk.store import (
    ClientStore,
    Contact,
    ContactState,
    EnvelopeRef,
    Incoming,
    LocalIdentity,
    MailboxDirection,
    MemoryStore,
    OutboundSenderKeyUpdate,
    Outgoing,
    PairwiseMailbox,
    PrekeyKind,
    ReceiveOutcome,
    SenderKeyRecordUpdate,
    SessionUpdate,
    _memory_history,
    _sqlite_history,
    retry_delay_ms,
)
from pigeon_crypto.errors import PrekeyNotFound, ReplayError
from pigeon_crypto.identity import IdentityKeyPair, IdentityRotation, account_id_for
from pigeon_crypto.pqxdh import Accepted, accept, initiate
from pigeon_crypto.prekeys import (
    KemKind,
    KemPreKeyPair,
    OneTimePreKeyPair,
    PreKeyBundle,
    SignedPreKeyPair,
)
from pigeon_crypto.rng import SeededRng
from pigeon_crypto.sender_keys import OutboundSenderKey, SenderKeyRecord

from .support import NOW, account, capability, entry, mailbox, session_pair, text

# --- identity -----------------------------------------------------------------------------


def test_local_identity_roundtrip_and_rotation(store: ClientStore) -> None:
    assert store.local_identity() is None
    rng = SeededRng(b"identity")
    first = IdentityKeyPair.generate(rng)
    ident = LocalIdentity.new(first)
    store.save_local_identity(ident)
    loaded = store.local_identity()
    assert loaded is not None
    assert loaded.account_id == account_id_for(first.public)
    assert loaded.key_pair.to_bytes() == first.to_bytes()

    second = IdentityKeyPair.generate(rng)
    rotation = IdentityRotation.create(account_id=ident.account_id, serial=1, old=first,
                                       new=second)
    rotated = LocalIdentity(account_id=ident.account_id, initial=first.public,
                            rotations=(rotation,), key_pair=second)
    store.save_local_identity(rotated)
    loaded = store.local_identity()
    assert loaded is not None
    assert loaded.key_pair.to_bytes() == second.to_bytes()
    assert [r.to_bytes() for r in loaded.rotations] == [rotation.to_bytes()]

    with pytest.raises(StoreConflict):  # a rotation chain never shrinks
        store.save_local_identity(ident)
    with pytest.raises(StoreConflict):  # nor does the account change
        store.save_local_identity(LocalIdentity.new(IdentityKeyPair.generate(rng)))
    assert store.local_identity().key_pair.to_bytes() == second.to_bytes()  # type: ignore[union-attr]


def test_local_identity_rejects_inconsistent_records() -> None:
    rng = SeededRng(b"bad identity")
    a, b = IdentityKeyPair.generate(rng), IdentityKeyPair.generate(rng)
    with pytest.raises(ValueError, match="does not end"):
        LocalIdentity(account_id=account_id_for(a.public), initial=a.public, rotations=(),
                      key_pair=b)


# --- prekeys ------------------------------------------------------------------------------


@dataclasses.dataclass
class Keys:
    identity: IdentityKeyPair
    spk: SignedPreKeyPair
    last_resort: KemPreKeyPair
    kem: list[KemPreKeyPair]
    otks: list[OneTimePreKeyPair]


def make_keys(seed: bytes = b"bob") -> Keys:
    rng = SeededRng(seed)
    identity = IdentityKeyPair.generate(rng)
    return Keys(
        identity=identity,
        spk=SignedPreKeyPair.generate(identity, key_id=1, now_ms=NOW, rng=rng),
        last_resort=KemPreKeyPair.generate(identity, key_id=1, kind=KemKind.LAST_RESORT,
                                           now_ms=NOW, rng=rng),
        kem=[KemPreKeyPair.generate(identity, key_id=2 + i, kind=KemKind.ONE_TIME, now_ms=NOW,
                                    rng=rng) for i in range(2)],
        otks=[OneTimePreKeyPair.generate(key_id=1 + i, rng=rng) for i in range(3)],
    )


def save_keys(store: ClientStore, k: Keys) -> None:
    store.save_signed_prekey(k.spk)
    store.save_kem_prekeys([k.last_resort, *k.kem])
    store.save_one_time_prekeys(k.otks)


def test_prekeys_lookup_save_and_conflicts(store: ClientStore) -> None:
    k = make_keys()
    assert store.signed_prekey(1) is None
    assert store.kem_prekey(1) is None
    assert store.one_time_prekey(1) is None
    save_keys(store, k)
    save_keys(store, k)  # idempotent
    assert store.signed_prekey(1).to_bytes() == k.spk.to_bytes()  # type: ignore[union-attr]
    assert store.kem_prekey(2).to_bytes() == k.kem[0].to_bytes()  # type: ignore[union-attr]
    assert store.one_time_prekey(3).to_bytes() == k.otks[2].to_bytes()  # type: ignore[union-attr]
    other = OneTimePreKeyPair.generate(key_id=1, rng=SeededRng(b"other"))
    with pytest.raises(StoreConflict):
        store.save_one_time_prekeys([other])
    assert store.one_time_prekey(1).to_bytes() == k.otks[0].to_bytes()  # type: ignore[union-attr]


def test_allocate_prekey_ids_skips_held_ids(store: ClientStore) -> None:
    assert store.allocate_prekey_ids(PrekeyKind.ONE_TIME, 3) == [1, 2, 3]
    store.save_one_time_prekeys([OneTimePreKeyPair.generate(key_id=5, rng=SeededRng(b"5"))])
    assert store.allocate_prekey_ids(PrekeyKind.ONE_TIME, 3) == [4, 6, 7]
    assert store.allocate_prekey_ids(PrekeyKind.SIGNED, 1) == [1]  # separate id spaces
    assert store.allocate_prekey_ids(PrekeyKind.ONE_TIME, 0) == []
    with pytest.raises(ValueError):
        store.allocate_prekey_ids(PrekeyKind.KEM, -1)


def test_publication_bookkeeping_and_status(store: ClientStore) -> None:
    k = make_keys()
    save_keys(store, k)
    upload = store.unpublished_prekeys()
    assert [p.key_id for p in upload.signed] == [1]
    assert [p.key_id for p in upload.kem] == [1, 2, 3]
    assert [p.key_id for p in upload.one_time] == [1, 2, 3]
    assert upload.one_time[0].to_bytes() == k.otks[0].public.to_bytes()
    store.mark_published(PrekeyKind.ONE_TIME, [1, 2], now_ms=NOW)
    store.mark_published(PrekeyKind.SIGNED, [1], now_ms=NOW)
    store.mark_published(PrekeyKind.KEM, [1, 2, 3, 99], now_ms=NOW)  # unknown ids ignored
    upload = store.unpublished_prekeys()
    assert (upload.signed, upload.kem) == ((), ())
    assert [p.key_id for p in upload.one_time] == [3]
    assert not upload.empty
    status = store.prekey_status()
    assert status.signed_prekey_id == 1
    assert status.signed_prekey_created_ms == NOW
    assert status.retiring_signed_prekey_ids == ()
    assert status.last_resort_kem_id == 1
    assert (status.one_time_available, status.one_time_unpublished) == (3, 1)
    assert (status.kem_one_time_available, status.kem_unpublished) == (2, 0)


def test_signed_prekey_rotation_and_retirement(store: ClientStore) -> None:
    k = make_keys()
    save_keys(store, k)
    newer = SignedPreKeyPair.generate(k.identity, key_id=2, now_ms=NOW + 10,
                                      rng=SeededRng(b"spk2"))
    store.save_signed_prekey(newer)
    assert store.current_signed_prekey().key_id == 2  # type: ignore[union-attr]
    store.retire_signed_prekey(1, now_ms=NOW + 20)
    store.retire_signed_prekey(1, now_ms=NOW + 99)  # keeps the first retirement time
    assert store.prekey_status().retiring_signed_prekey_ids == (1,)
    assert store.signed_prekey(1) is not None  # still there for in-flight initiations
    with pytest.raises(RecordNotFound):
        store.retire_signed_prekey(42, now_ms=NOW)
    assert store.delete_retired_signed_prekeys(retired_before_ms=NOW + 20) == []
    assert store.delete_retired_signed_prekeys(retired_before_ms=NOW + 21) == [1]
    assert store.signed_prekey(1) is None
    store.retire_signed_prekey(2, now_ms=NOW + 30)
    assert store.current_signed_prekey() is None


def _initiation(k: Keys, *, one_time: bool = True, seed: bytes = b"alice") -> tuple[
        IdentityKeyPair, bytes]:
    rng = SeededRng(seed)
    alice = IdentityKeyPair.generate(rng)
    bundle = PreKeyBundle(identity=k.identity.public, signed_prekey=k.spk.public,
                          kem_prekey=k.kem[0].public,
                          one_time_prekey=k.otks[0].public if one_time else None)
    return alice, initiate(alice, bundle, b"first payload", rng=rng).message


def test_store_is_pqxdh_responder_keys_and_consumes_atomically(store: ClientStore) -> None:
    k = make_keys()
    save_keys(store, k)
    alice, message = _initiation(k)
    accepted = accept(k.identity, store, message, now_ms=NOW)
    assert accepted.payload == b"first payload"
    peer = account_id_for(alice.public)
    result = store.commit_receive(Incoming(
        envelope=EnvelopeRef(mailbox_id=mailbox(1), seq=1), received_at_ms=NOW,
        session=SessionUpdate(peer=peer, state=accepted.session), accepted=accepted,
    ))
    assert result.outcome is ReceiveOutcome.PROCESSED
    assert store.one_time_prekey(1) is None  # consumed
    assert store.kem_prekey(2) is None  # one-time KEM key consumed
    assert store.kem_prekey(1) is not None  # last resort kept
    assert store.seen_initiation(accepted.replay_key)
    assert store.load_session(peer).to_bytes() == accepted.session.to_bytes()  # type: ignore[union-attr]
    with pytest.raises(ReplayError):  # the same initiation again never reaches a session
        accept(k.identity, store, message, now_ms=NOW)
    with pytest.raises(ReplayError):
        store.consume_initiation(accepted, now_ms=NOW)


def test_consume_initiation_missing_prekey_writes_nothing(store: ClientStore) -> None:
    k = make_keys()
    save_keys(store, k)
    _, message = _initiation(k)
    accepted = accept(k.identity, store, message, now_ms=NOW)
    gone = dataclasses.replace(accepted, one_time_prekey_id=77)
    with pytest.raises(PrekeyNotFound):
        store.consume_initiation(gone, now_ms=NOW)
    assert store.kem_prekey(2) is not None  # not consumed either
    assert not store.seen_initiation(accepted.replay_key)
    with pytest.raises(PrekeyNotFound):
        store.commit_receive(Incoming(
            envelope=EnvelopeRef(mailbox_id=mailbox(1), seq=1), received_at_ms=NOW,
            session=SessionUpdate(peer=account(1), state=accepted.session), accepted=gone))
    assert store.load_session(account(1)) is None
    assert not store.envelope_seen(EnvelopeRef(mailbox_id=mailbox(1), seq=1))
    store.consume_initiation(accepted, now_ms=NOW)
    assert store.one_time_prekey(1) is None


def test_retiring_a_signed_prekey_drops_its_replay_records(store: ClientStore) -> None:
    k = make_keys()
    save_keys(store, k)
    _, message = _initiation(k, one_time=False)
    accepted: Accepted = accept(k.identity, store, message, now_ms=NOW)
    store.consume_initiation(accepted, now_ms=NOW)
    assert store.seen_initiation(accepted.replay_key)
    store.retire_signed_prekey(1, now_ms=NOW)
    store.delete_retired_signed_prekeys(retired_before_ms=NOW + 1)
    assert not store.seen_initiation(accepted.replay_key)
    with pytest.raises(PrekeyNotFound):  # and the replay now fails for lack of the key
        accept(k.identity, store, message, now_ms=NOW)


# --- sessions and sender keys -------------------------------------------------------------


def test_sessions(store: ClientStore) -> None:
    alice, _, rng = session_pair(b"s")
    assert store.load_session(account(1)) is None
    store.store_session(account(2), alice)
    store.store_session(account(1), alice)
    nxt = alice.encrypt(b"x", rng=rng).state
    store.store_session(account(1), nxt)
    assert store.load_session(account(1)).to_bytes() == nxt.to_bytes()  # type: ignore[union-attr]
    assert store.session_peers() == [account(1), account(2)]
    assert store.delete_session(account(1))
    assert not store.delete_session(account(1))
    assert store.session_peers() == [account(2)]


def test_sender_keys(store: ClientStore) -> None:
    rng = SeededRng(b"sk")
    group = b"group-1"
    assert store.load_outbound_sender_key(group) is None
    ours = OutboundSenderKey.create(rng)
    store.store_outbound_sender_key(group, ours)
    assert store.load_outbound_sender_key(group) == ours
    store.mark_sender_key_shared(group, ours.chain_id, [account(1), account(2)])
    store.mark_sender_key_shared(group, ours.chain_id, [account(2)])
    assert store.sender_key_shared_with(group, ours.chain_id) == {account(1), account(2)}
    advanced, _ = ours.encrypt(b"hi")
    store.store_outbound_sender_key(group, advanced)  # same chain: shares kept
    assert store.sender_key_shared_with(group, ours.chain_id) == {account(1), account(2)}
    fresh = OutboundSenderKey.create(rng)
    store.store_outbound_sender_key(group, fresh)  # new chain: nobody has it yet
    assert store.sender_key_shared_with(group, ours.chain_id) == frozenset()

    record = SenderKeyRecord().process_distribution(ours.distribution())
    assert store.load_sender_key_record(group, account(3)) is None
    store.store_sender_key_record(group, account(3), record)
    loaded = store.load_sender_key_record(group, account(3))
    assert loaded is not None and loaded.to_bytes() == record.to_bytes()
    store.store_sender_key_record(b"group-2", account(3), record)
    store.delete_group_sender_keys(group)
    assert store.load_outbound_sender_key(group) is None
    assert store.load_sender_key_record(group, account(3)) is None
    assert store.load_sender_key_record(b"group-2", account(3)) is not None


# --- contacts and settings ----------------------------------------------------------------


def contact(n: int, *mailboxes: PairwiseMailbox, state: ContactState = ContactState.ACCEPTED,
            ) -> Contact:
    identity = IdentityKeyPair.generate(SeededRng(bytes([n]))).public
    return Contact(account_id=account(n), state=state, identity=identity,
                   rotation_chain=b"\x01chain", profile_name=f"Contact {n}",
                   avatar_manifest=b"avatar manifest with file key", mailboxes=mailboxes,
                   created_at_ms=NOW, updated_at_ms=NOW)


def pairwise(n: int, direction: MailboxDirection, *, retired: int | None = None,
             at: int = NOW) -> PairwiseMailbox:
    return PairwiseMailbox(mailbox_id=mailbox(n), direction=direction,
                           capability=capability(n), created_at_ms=at, retired_at_ms=retired)


def test_contacts(store: ClientStore) -> None:
    inbound_old = pairwise(1, MailboxDirection.INBOUND, retired=NOW + 5)
    inbound = pairwise(2, MailboxDirection.INBOUND, at=NOW + 5)
    outbound = pairwise(3, MailboxDirection.OUTBOUND)
    bob = contact(1, inbound_old, inbound, outbound)
    assert store.get_contact(account(1)) is None
    store.save_contact(bob)
    assert store.get_contact(account(1)) == bob
    assert bob.inbound == inbound and bob.outbound == outbound
    assert store.contact_for_mailbox(mailbox(1)) == bob  # retiring mailboxes still map
    assert store.contact_for_mailbox(mailbox(2)) == bob
    assert store.contact_for_mailbox(mailbox(3)) is None  # theirs, not ours
    carol = contact(2, pairwise(4, MailboxDirection.INBOUND), state=ContactState.PENDING)
    store.save_contact(carol)
    assert store.list_contacts() == [bob, carol]
    assert store.list_contacts(state=ContactState.PENDING) == [carol]
    with pytest.raises(StoreConflict):
        store.save_contact(contact(3, pairwise(2, MailboxDirection.INBOUND)))
    assert store.get_contact(account(3)) is None
    changed = dataclasses.replace(bob, mailboxes=(inbound,), identity_changed=True,
                                  verified=True, state=ContactState.BLOCKED, avatar_manifest=None)
    store.save_contact(changed)
    assert store.get_contact(account(1)) == changed
    assert store.contact_for_mailbox(mailbox(1)) is None
    assert store.delete_contact(account(1))
    assert not store.delete_contact(account(1))
    assert store.contact_for_mailbox(mailbox(2)) is None


def test_settings(store: ClientStore) -> None:
    assert store.get_setting("relay") is None
    store.put_setting("relay", b"wss://relay.example")
    store.put_setting("token", b"secret token", secret=True)
    assert store.get_setting("relay") == b"wss://relay.example"
    assert store.get_setting("token") == b"secret token"
    store.put_setting("relay", b"wss://other.example", secret=True)
    assert store.get_setting("relay") == b"wss://other.example"
    assert store.delete_setting("relay")
    assert not store.delete_setting("relay")


# --- outbox -------------------------------------------------------------------------------


def conversation(store: ClientStore, n: int = 1) -> int:
    return store.ensure_conversation(ConversationKind.DIRECT, account(n), now_ms=NOW).id


def test_enqueue_stores_state_row_and_history_together(store: ClientStore) -> None:
    cid = conversation(store)
    alice, _, rng = session_pair(b"enqueue")
    sent = alice.encrypt(b"payload", rng=rng)
    item = store.enqueue(Outgoing(
        entry=entry(1, blob=sent.message, recipients=2),
        session=SessionUpdate(peer=account(1), state=sent.state),
        history=text(cid, 1, "hi there"),
    ))
    assert item.seq >= 1 and item.attempts == 0
    assert item.next_attempt_at_ms == NOW
    assert item.entry == entry(1, blob=sent.message, recipients=2)
    assert item.message == (cid, text(cid, 1).message_id)
    assert store.load_session(account(1)).to_bytes() == sent.state.to_bytes()  # type: ignore[union-attr]
    msg = store.get_message(cid, text(cid, 1).message_id)
    assert msg is not None and msg.status is MessageStatus.PENDING and msg.body == "hi there"
    assert store.get_outbox(item.client_msg_id) == item
    assert store.get_outbox(b"\x00" * 16) is None


def test_outbox_retries_then_sent(store: ClientStore) -> None:
    cid = conversation(store)
    first = store.enqueue(Outgoing(entry=entry(1), history=text(cid, 1)))
    second = store.enqueue(Outgoing(entry=entry(2, at=NOW + 1)))
    assert store.outbox_size() == 2
    assert [i.seq for i in store.due_outbox(now_ms=NOW + 1)] == [first.seq, second.seq]
    assert store.due_outbox(now_ms=NOW + 1, limit=1) == [first]
    assert store.next_outbox_due_at() == NOW
    retried = store.record_attempt(first.client_msg_id, retry_at_ms=NOW + 5_000,
                                   error="timeout")
    assert (retried.attempts, retried.last_error) == (1, "timeout")
    assert retried.entry == first.entry  # the same bytes are resent
    assert store.due_outbox(now_ms=NOW + 1) == [second]
    assert store.next_outbox_due_at() == NOW + 1
    assert store.due_outbox(now_ms=NOW + 5_000)[0].client_msg_id == first.client_msg_id
    assert store.mark_sent(first.client_msg_id, now_ms=NOW + 6_000)
    assert not store.mark_sent(first.client_msg_id, now_ms=NOW + 6_000)  # idempotent
    assert store.get_message(cid, text(cid, 1).message_id).status is MessageStatus.SENT  # type: ignore[union-attr]
    assert store.mark_sent(second.client_msg_id, now_ms=NOW)  # no linked message
    assert store.outbox_size() == 0
    assert store.next_outbox_due_at() is None
    with pytest.raises(RecordNotFound):
        store.record_attempt(first.client_msg_id, retry_at_ms=NOW)


def test_outbox_permanent_failure(store: ClientStore) -> None:
    cid = conversation(store)
    item = store.enqueue(Outgoing(entry=entry(1), history=text(cid, 1)))
    assert store.mark_failed(item.client_msg_id, reason="mailbox gone", now_ms=NOW)
    assert not store.mark_failed(item.client_msg_id, reason="again", now_ms=NOW)
    msg = store.get_message(cid, text(cid, 1).message_id)
    assert msg is not None
    assert (msg.status, msg.failure_reason) == (MessageStatus.FAILED, "mailbox gone")


def test_enqueue_conflicts_write_nothing(store: ClientStore) -> None:
    cid = conversation(store)
    alice, _, rng = session_pair(b"conflict")
    store.enqueue(Outgoing(entry=entry(1), session=SessionUpdate(peer=account(1), state=alice)))
    later = alice.encrypt(b"x", rng=rng).state
    with pytest.raises(StoreConflict):  # same client_msg_id
        store.enqueue(Outgoing(entry=entry(1), history=text(cid, 2),
                               session=SessionUpdate(peer=account(1), state=later)))
    with pytest.raises(RecordNotFound):  # unknown conversation
        store.enqueue(Outgoing(entry=entry(3), history=text(cid + 99, 3),
                               session=SessionUpdate(peer=account(1), state=later)))
    store.apply(text(cid, 4), now_ms=NOW)
    with pytest.raises(StoreConflict):  # the message id is taken
        store.enqueue(Outgoing(entry=entry(4), history=text(cid, 4),
                               session=SessionUpdate(peer=account(1), state=later)))
    with pytest.raises(ValueError):  # an outgoing message is ours
        store.enqueue(Outgoing(entry=entry(5), history=text(cid, 5, sender=account(1))))
    assert store.load_session(account(1)).to_bytes() == alice.to_bytes()  # type: ignore[union-attr]
    assert store.outbox_size() == 1
    assert store.message_count(cid) == 1
    assert store.get_message(cid, text(cid, 2).message_id) is None


def _break_history(store: ClientStore, monkeypatch: pytest.MonkeyPatch) -> None:
    """Make the history step of a combined transaction fail after the state was written."""
    def boom(*args: object, **kwargs: object) -> object:
        raise RuntimeError("simulated failure inside the transaction")

    if isinstance(store, MemoryStore):
        monkeypatch.setattr(_memory_history.HistoryTables, "apply", boom)
    else:
        monkeypatch.setattr(_sqlite_history, "apply", boom)


def test_failure_inside_enqueue_leaves_neither_state_nor_row(
        store: ClientStore, monkeypatch: pytest.MonkeyPatch) -> None:
    cid = conversation(store)
    alice, _, rng = session_pair(b"atomic")
    store.store_session(account(1), alice)
    sent = alice.encrypt(b"payload", rng=rng)
    _break_history(store, monkeypatch)
    with pytest.raises(RuntimeError, match="simulated"):
        store.enqueue(Outgoing(entry=entry(1, blob=sent.message),
                               session=SessionUpdate(peer=account(1), state=sent.state),
                               history=text(cid, 1)))
    assert store.load_session(account(1)).to_bytes() == alice.to_bytes()  # type: ignore[union-attr]
    assert store.outbox_size() == 0
    assert store.get_outbox(entry(1).client_msg_id) is None
    monkeypatch.undo()
    assert store.message_count() == 0
    store.enqueue(Outgoing(entry=entry(1, blob=sent.message),  # and it can be redone
                           session=SessionUpdate(peer=account(1), state=sent.state),
                           history=text(cid, 1)))
    assert store.load_session(account(1)).to_bytes() == sent.state.to_bytes()  # type: ignore[union-attr]


def test_failure_inside_commit_receive_leaves_nothing(
        store: ClientStore, monkeypatch: pytest.MonkeyPatch) -> None:
    cid = conversation(store)
    _, bob, _ = session_pair(b"atomic-in")
    envelope = EnvelopeRef(mailbox_id=mailbox(1), seq=7)
    _break_history(store, monkeypatch)
    with pytest.raises(RuntimeError, match="simulated"):
        store.commit_receive(Incoming(
            envelope=envelope, received_at_ms=NOW,
            session=SessionUpdate(peer=account(1), state=bob),
            contact=contact(1), history=text(cid, 1, sender=account(1))))
    assert store.load_session(account(1)) is None
    assert store.get_contact(account(1)) is None
    assert not store.envelope_seen(envelope)


def test_enqueue_group_message_stores_sender_key(store: ClientStore) -> None:
    ours = OutboundSenderKey.create(SeededRng(b"group"))
    nxt, blob = ours.encrypt(b"to the group")
    store.enqueue(Outgoing(entry=entry(1, blob=blob, recipients=3),
                           sender_key=OutboundSenderKeyUpdate(group_id=b"g", key=nxt)))
    assert store.load_outbound_sender_key(b"g") == nxt


# --- inbox --------------------------------------------------------------------------------


def test_commit_receive_dedups_envelopes(store: ClientStore) -> None:
    cid = conversation(store)
    alice, bob, rng = session_pair(b"receive")
    got = bob.decrypt(alice.encrypt(b"m", rng=rng).message, now_ms=NOW)
    envelope = EnvelopeRef(mailbox_id=mailbox(1), seq=1)
    assert not store.envelope_seen(envelope)
    first = store.commit_receive(Incoming(
        envelope=envelope, received_at_ms=NOW, contact=contact(1),
        session=SessionUpdate(peer=account(1), state=got.state),
        history=text(cid, 1, "first", sender=account(1))))
    assert first.outcome is ReceiveOutcome.PROCESSED
    assert first.history is ApplyOutcome.APPLIED
    assert store.envelope_seen(envelope)
    assert store.get_contact(account(1)) == contact(1)
    again = store.commit_receive(Incoming(
        envelope=envelope, received_at_ms=NOW + 1,
        session=SessionUpdate(peer=account(1), state=bob),
        history=text(cid, 2, "second", sender=account(1))))
    assert again.outcome is ReceiveOutcome.DUPLICATE_ENVELOPE and again.history is None
    assert store.load_session(account(1)).to_bytes() == got.state.to_bytes()  # type: ignore[union-attr]
    assert store.message_count(cid) == 1
    # Another envelope carrying the same message id: stored once.
    third = store.commit_receive(Incoming(
        envelope=EnvelopeRef(mailbox_id=mailbox(1), seq=2), received_at_ms=NOW,
        history=text(cid, 1, "first", sender=account(1))))
    assert third.history is ApplyOutcome.DUPLICATE
    assert store.message_count(cid) == 1


def test_commit_receive_group_sender_key_and_purge(store: ClientStore) -> None:
    record = SenderKeyRecord().process_distribution(
        OutboundSenderKey.create(SeededRng(b"m")).distribution())
    store.commit_receive(Incoming(
        envelope=EnvelopeRef(mailbox_id=mailbox(1), seq=1), received_at_ms=NOW,
        sender_key=SenderKeyRecordUpdate(group_id=b"g", sender=account(2), record=record)))
    store.commit_receive(Incoming(envelope=EnvelopeRef(mailbox_id=mailbox(1), seq=2),
                                  received_at_ms=NOW + 10))
    assert store.load_sender_key_record(b"g", account(2)).to_bytes() == record.to_bytes()  # type: ignore[union-attr]
    assert store.purge_envelope_records(received_before_ms=NOW + 10) == 1
    assert not store.envelope_seen(EnvelopeRef(mailbox_id=mailbox(1), seq=1))
    assert store.envelope_seen(EnvelopeRef(mailbox_id=mailbox(1), seq=2))


# --- threads, reprs, helpers -------------------------------------------------------------


async def test_calls_from_worker_threads_do_not_block_the_loop(store: ClientStore) -> None:
    cid = conversation(store)

    async def send(n: int) -> None:
        await asyncio.to_thread(store.enqueue, Outgoing(entry=entry(n), history=text(cid, n)))

    await asyncio.gather(*(send(n) for n in range(1, 41)))
    assert store.outbox_size() == 40
    assert store.message_count(cid) == 40


def test_retry_delay_is_exponential_capped_and_jittered() -> None:
    rng = SeededRng(b"jitter")
    assert retry_delay_ms(0, rng) == 0
    for attempts, ceiling in [(1, 1_000), (2, 2_000), (5, 16_000), (20, 300_000)]:
        delays = [retry_delay_ms(attempts, rng) for _ in range(50)]
        assert all(ceiling // 2 <= d <= ceiling for d in delays)
        assert len(set(delays)) > 1


def test_reprs_hide_secrets(store: ClientStore) -> None:
    rng = SeededRng(b"repr")
    identity = LocalIdentity.new(IdentityKeyPair.generate(rng))
    alice, _, _ = session_pair(b"repr")
    c = contact(1, pairwise(1, MailboxDirection.INBOUND))
    e = entry(1, blob=b"ciphertext-bytes")
    msg = NewMessage(conversation_id=1, message_id=b"\x01" * 16, sender=None, sent_at_ms=1,
                     body="secret body text", attachment=b"manifest-key")
    cap_hex, cap_raw = capability(1).hex(), repr(capability(1))
    samples = [
        identity, c, c.mailboxes[0], e, e.recipients[0],
        SessionUpdate(peer=account(1), state=alice), msg,
        Incoming(envelope=EnvelopeRef(mailbox_id=mailbox(1), seq=1), received_at_ms=1,
                 contact=c, session=SessionUpdate(peer=account(1), state=alice)),
        Outgoing(entry=e, history=msg), store,
    ]
    for obj in samples:
        text_ = repr(obj)
        for secret in (cap_hex, cap_raw, "ciphertext-bytes", "secret body", "manifest-key",
                       "avatar manifest", identity.key_pair.signing_seed.hex(),
                       repr(identity.key_pair.signing_seed)):
            assert secret not in text_, (type(obj).__name__, secret)
    assert repr(identity) == (
        f"LocalIdentity(account_id={identity.account_id.hex()}, "
        f"key={identity.key_pair.public.fingerprint}, rotations=0)")
    assert repr(e.recipients[0]) == f"Recipient(mailbox_id={mailbox(10)!r})"
    assert repr(msg) == (
        "NewMessage(conversation_id=1, message_id=b'\\x01\\x01\\x01\\x01\\x01\\x01\\x01\\x01"
        "\\x01\\x01\\x01\\x01\\x01\\x01\\x01\\x01', sender=None, sent_at_ms=1, "
        "received_at_ms=None, kind=<MessageKind.TEXT: 1>, reply_to=None, status=None)")
