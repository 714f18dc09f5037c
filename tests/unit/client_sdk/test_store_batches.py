"""Contract tests for the store additions the networked client uses: a contact saved
with a send (``Outgoing.contact``), a reply queued with a receipt (``Incoming.reply``),
and the batched calls (``enqueue_many``, ``commit_receive_many``, ``mark_sent_many``).
Both stores run every test (the ``store`` fixture)."""

from __future__ import annotations

import pytest

from client_sdk.errors import StoreConflict
from client_sdk.history import (
    ApplyOutcome,
    ConversationKind,
    MessageStatus,
    SetExpireTimer,
    UpdateStatus,
)
from client_sdk.store import (
    ClientStore,
    Contact,
    ContactState,
    EnvelopeRef,
    Incoming,
    MailboxDirection,
    Outgoing,
    PairwiseMailbox,
    ReceiveOutcome,
    SessionUpdate,
)

from .support import NOW, account, capability, entry, mailbox, session_pair, text


def _contact(n: int, state: ContactState = ContactState.INVITED) -> Contact:
    box = PairwiseMailbox(mailbox_id=mailbox(n), direction=MailboxDirection.INBOUND,
                          capability=capability(n), created_at_ms=NOW)
    return Contact(account_id=account(n), state=state, mailboxes=(box,), created_at_ms=NOW,
                   updated_at_ms=NOW)


def _conversation(store: ClientStore) -> int:
    return store.ensure_conversation(ConversationKind.DIRECT, account(1), now_ms=NOW).id


def test_enqueue_saves_the_contact_in_the_same_transaction(store: ClientStore) -> None:
    alice, _, rng = session_pair(b"contact")
    sent = alice.encrypt(b"x", rng=rng)
    store.enqueue(Outgoing(entry=entry(1, blob=sent.message), contact=_contact(1),
                           session=SessionUpdate(peer=account(1), state=sent.state)))
    assert store.get_contact(account(1)) == _contact(1)
    assert store.contact_for_mailbox(mailbox(1)) == _contact(1)
    # A conflict on the outbox row leaves the contact change unwritten.
    with pytest.raises(StoreConflict):
        store.enqueue(Outgoing(entry=entry(1), contact=_contact(1, ContactState.ACCEPTED)))
    assert store.get_contact(account(1)) == _contact(1)


def test_commit_receive_queues_a_reply(store: ClientStore) -> None:
    envelope = EnvelopeRef(mailbox_id=mailbox(9), seq=1)
    result = store.commit_receive(Incoming(envelope=envelope, received_at_ms=NOW,
                                           contact=_contact(1), reply=entry(5)))
    assert result.outcome is ReceiveOutcome.PROCESSED
    item = store.get_outbox(entry(5).client_msg_id)
    assert item is not None and item.entry == entry(5) and item.message is None
    # A duplicate envelope queues nothing; a reply id already queued writes nothing.
    again = store.commit_receive(Incoming(envelope=envelope, received_at_ms=NOW,
                                          reply=entry(6)))
    assert again.outcome is ReceiveOutcome.DUPLICATE_ENVELOPE
    assert store.get_outbox(entry(6).client_msg_id) is None
    other = EnvelopeRef(mailbox_id=mailbox(9), seq=2)
    with pytest.raises(StoreConflict):
        store.commit_receive(Incoming(envelope=other, received_at_ms=NOW, reply=entry(5)))
    assert not store.envelope_seen(other)


def test_enqueue_many_is_one_all_or_nothing_transaction(store: ClientStore) -> None:
    cid = _conversation(store)
    items = store.enqueue_many([Outgoing(entry=entry(n), history=text(cid, n))
                                for n in range(1, 4)])
    assert [i.client_msg_id for i in items] == [entry(n).client_msg_id for n in range(1, 4)]
    assert store.outbox_size() == 3
    with pytest.raises(StoreConflict):
        store.enqueue_many([Outgoing(entry=entry(4), history=text(cid, 4)),
                            Outgoing(entry=entry(1))])
    assert store.outbox_size() == 3 and store.get_message(cid, text(cid, 4).message_id) is None
    assert store.mark_sent_many([entry(1).client_msg_id, entry(9).client_msg_id,
                                 entry(2).client_msg_id], now_ms=NOW) == [True, False, True]
    assert store.outbox_size() == 1
    for n, status in ((1, MessageStatus.SENT), (2, MessageStatus.SENT),
                      (3, MessageStatus.PENDING)):
        msg = store.get_message(cid, text(cid, n).message_id)
        assert msg is not None and msg.status is status


def test_commit_receive_many(store: ClientStore) -> None:
    cid = _conversation(store)
    alice, bob, rng = session_pair(b"many")
    states = []
    for n in range(3):
        got = bob.decrypt(alice.encrypt(b"m%d" % n, rng=rng).message, now_ms=NOW)
        alice_next = alice.encrypt(b"", rng=rng)  # keep Alice's chain moving
        alice, bob = alice_next.state, got.state
        states.append(got.state)
    incoming = [Incoming(envelope=EnvelopeRef(mailbox_id=mailbox(1), seq=n + 1),
                         received_at_ms=NOW, session=SessionUpdate(peer=account(1), state=s),
                         history=text(cid, n + 1, sender=account(1)))
                for n, s in enumerate(states)]
    results = store.commit_receive_many([*incoming, incoming[0]])
    assert [r.outcome for r in results] == [ReceiveOutcome.PROCESSED] * 3 + [
        ReceiveOutcome.DUPLICATE_ENVELOPE]
    assert store.message_count(cid) == 3
    assert store.load_session(account(1)).to_bytes() == states[-1].to_bytes()  # type: ignore[union-attr]


def test_a_timer_change_in_a_receive_batch_applies_to_the_messages_after_it(
        store: ClientStore) -> None:
    cid = _conversation(store)
    peer = account(1)
    ops = [text(cid, 1, "before", sender=peer, received_at=NOW),
           SetExpireTimer(conversation_id=cid, timer_ms=60_000, by=peer, at_ms=NOW),
           text(cid, 2, "after", sender=peer, received_at=NOW),
           SetExpireTimer(conversation_id=cid, timer_ms=None, by=peer, at_ms=NOW),
           text(cid, 3, "kept", sender=peer, received_at=NOW)]
    store.commit_receive_many([Incoming(envelope=EnvelopeRef(mailbox_id=mailbox(1), seq=n),
                                        received_at_ms=NOW, history=op)
                               for n, op in enumerate(ops, start=1)])
    expiry = [store.get_message(cid, text(cid, n).message_id) for n in (1, 2, 3)]
    assert [m.expires_at_ms if m else "missing" for m in expiry] == [None, NOW + 60_000, None]
    assert store.get_conversation(cid).expire_timer_ms is None  # type: ignore[union-attr]
    store.apply(SetExpireTimer(conversation_id=cid, timer_ms=5, by=None, at_ms=NOW), now_ms=NOW)
    assert store.get_conversation(cid).expire_timer_ms == 5  # type: ignore[union-attr]
    with pytest.raises(ValueError):
        SetExpireTimer(conversation_id=cid, timer_ms=0, by=None, at_ms=NOW)


def test_envelopes_seen_answers_for_a_batch(store: ClientStore) -> None:
    refs = [EnvelopeRef(mailbox_id=mailbox(m), seq=s) for m in (1, 2) for s in (1, 2, 3)]
    store.commit_receive_many([Incoming(envelope=r, received_at_ms=NOW)
                               for r in (refs[0], refs[2], refs[4])])
    assert store.envelopes_seen(refs) == {refs[0], refs[2], refs[4]}
    assert store.envelopes_seen([]) == set()
    many = [EnvelopeRef(mailbox_id=mailbox(3), seq=s) for s in range(1, 1202)]
    store.commit_receive_many([Incoming(envelope=r, received_at_ms=NOW) for r in many[::2]])
    assert store.envelopes_seen(many) == set(many[::2])  # more ids than one IN list holds


def test_outgoing_statuses_and_a_receipt_naming_many_messages(store: ClientStore) -> None:
    cid = _conversation(store)
    store.enqueue_many([Outgoing(entry=entry(n), history=text(cid, n)) for n in range(1, 701)])
    store.mark_sent_many([entry(n).client_msg_id for n in range(1, 601)], now_ms=NOW)
    store.apply(text(cid, 800, sender=account(1)), now_ms=NOW)  # incoming: left out
    ids = [text(cid, n).message_id for n in (1, 650, 800, 900)]
    assert store.outgoing_statuses(cid, ids) == {ids[0]: MessageStatus.SENT,
                                                 ids[1]: MessageStatus.PENDING}
    all_ids = tuple(text(cid, n).message_id for n in range(1, 701))
    receipt = UpdateStatus(conversation_id=cid, message_ids=(*all_ids, all_ids[0]),
                           status=MessageStatus.DELIVERED, by=account(1), at_ms=NOW)
    assert store.apply(receipt, now_ms=NOW) is ApplyOutcome.APPLIED
    statuses = store.outgoing_statuses(cid, all_ids)
    assert set(statuses.values()) == {MessageStatus.DELIVERED} and len(statuses) == 700
    assert store.apply(receipt, now_ms=NOW) is ApplyOutcome.STALE


def test_mark_sent_many_counts_a_repeated_id_once(store: ClientStore) -> None:
    cid = _conversation(store)
    store.enqueue_many([Outgoing(entry=entry(n), history=text(cid, n)) for n in (1, 2)])
    one, two = entry(1).client_msg_id, entry(2).client_msg_id
    assert store.mark_sent_many([one, one, two], now_ms=NOW) == [True, False, True]
    assert store.mark_sent_many([one], now_ms=NOW) == [False]


def test_new_messages_are_searchable_from_every_insert_path(store: ClientStore) -> None:
    cid = _conversation(store)
    store.enqueue_many([Outgoing(entry=entry(1), history=text(cid, 1, "queued alpha"))])
    store.commit_receive_many([Incoming(envelope=EnvelopeRef(mailbox_id=mailbox(1), seq=1),
                                        received_at_ms=NOW,
                                        history=text(cid, 2, "received alpha",
                                                     sender=account(1)))])
    store.import_messages([text(cid, 3, "imported alpha"), text(cid, 4, body="")])
    store.apply(text(cid, 5, "applied alpha"), now_ms=NOW)
    hits = store.search("alpha").hits
    assert sorted(h.message.body or "" for h in hits) == [
        "applied alpha", "imported alpha", "queued alpha", "received alpha"]
    conversation = store.get_conversation(cid)
    assert conversation is not None and conversation.last_message_at_ms == NOW + 5
