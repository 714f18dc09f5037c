"""History: status transitions, dedup, edits, reactions, deletes, search, paging, expiry.

Runs against both stores (``store`` fixture); search details that only FTS5 has
(BM25 values, diacritics folding) are checked on both where the memory stand-in agrees.
"""

from __future__ import annotations

import pytest

from client_sdk.errors import RecordNotFound
from client_sdk.history import (
    ApplyOutcome,
    ConversationKind,
    DeleteMessage,
    DeleteScope,
    EditMessage,
    MessageKind,
    MessageStatus,
    NewMessage,
    React,
    SearchOrder,
    StoredMessage,
    UpdateStatus,
    advance_status,
    fts_match_expression,
    search_terms,
)
from client_sdk.store import ClientStore, Outgoing

from .support import NOW, account, entry, message_id, text

BOB = account(2)
CAROL = account(3)


def conv(store: ClientStore, peer: bytes = BOB) -> int:
    return store.ensure_conversation(ConversationKind.DIRECT, peer, now_ms=NOW).id


def get(store: ClientStore, cid: int, n: int) -> StoredMessage:
    msg = store.get_message(cid, message_id(n))
    assert msg is not None
    return msg


def ids(messages: object) -> list[bytes]:
    return [m.message_id for m in messages]  # type: ignore[attr-defined]


# --- conversations ------------------------------------------------------------------------


def test_conversations(store: ClientStore) -> None:
    a = store.ensure_conversation(ConversationKind.DIRECT, BOB, now_ms=NOW, title="Bob")
    assert store.ensure_conversation(ConversationKind.DIRECT, BOB, now_ms=NOW + 5) == a
    g = store.ensure_conversation(ConversationKind.GROUP, b"group-id", now_ms=NOW + 1)
    assert store.find_conversation(ConversationKind.GROUP, b"group-id") == g
    assert store.find_conversation(ConversationKind.GROUP, BOB) is None
    assert store.get_conversation(a.id) == a and store.get_conversation(999) is None
    with pytest.raises(ValueError):
        store.ensure_conversation(ConversationKind.DIRECT, b"short", now_ms=NOW)
    with pytest.raises(ValueError):
        store.ensure_conversation(ConversationKind.GROUP, b"", now_ms=NOW)
    assert [c.id for c in store.list_conversations()] == [g.id, a.id]
    store.apply(text(a.id, 1, sent_at=NOW + 5), now_ms=NOW)
    assert [c.id for c in store.list_conversations()] == [a.id, g.id]
    assert store.list_conversations(limit=1)[0].last_message_at_ms == NOW + 5
    store.set_conversation_title(a.id, "Bobby")
    assert store.get_conversation(a.id).title == "Bobby"  # type: ignore[union-attr]
    with pytest.raises(RecordNotFound):
        store.set_conversation_title(999, "x")
    with pytest.raises(RecordNotFound):
        store.apply(text(999, 1), now_ms=NOW)
    with pytest.raises(RecordNotFound):
        store.apply(EditMessage(conversation_id=999, target=message_id(1), editor=None,
                                text="x", edited_at_ms=NOW), now_ms=NOW)


def test_delete_conversation_cascades(store: ClientStore) -> None:
    cid = conv(store)
    item = store.enqueue(Outgoing(entry=entry(1), history=text(cid, 1, "doomed words")))
    store.apply(React(conversation_id=cid, target=message_id(1), reactor=BOB, emoji="x",
                      at_ms=NOW), now_ms=NOW)
    assert store.delete_conversation(cid)
    assert not store.delete_conversation(cid)
    assert store.message_count() == 0
    assert store.search("doomed").hits == ()
    assert store.get_outbox(item.client_msg_id).message is None  # type: ignore[union-attr]


# --- status ------------------------------------------------------------------------------


def test_advance_status_rules() -> None:
    S = MessageStatus
    assert advance_status(S.PENDING, S.SENT, outgoing=True) is S.SENT
    assert advance_status(S.SENT, S.READ, outgoing=True) is S.READ
    assert advance_status(S.READ, S.DELIVERED, outgoing=True) is None
    assert advance_status(S.PENDING, S.FAILED, outgoing=True) is S.FAILED
    assert advance_status(S.SENT, S.FAILED, outgoing=True) is None
    assert advance_status(S.FAILED, S.SENT, outgoing=True) is None
    assert advance_status(S.RECEIVED, S.READ, outgoing=False) is S.READ
    assert advance_status(S.RECEIVED, S.DELIVERED, outgoing=False) is None
    with pytest.raises(ValueError):
        NewMessage(conversation_id=1, message_id=message_id(1), sender=BOB, sent_at_ms=1,
                   status=S.SENT)


def test_outgoing_status_moves_forward_only(store: ClientStore) -> None:
    cid = conv(store)
    item = store.enqueue(Outgoing(entry=entry(1), history=text(cid, 1)))
    assert get(store, cid, 1).status is MessageStatus.PENDING

    def receipt(status: MessageStatus, by: bytes | None = BOB) -> ApplyOutcome:
        return store.apply(UpdateStatus(conversation_id=cid, message_ids=(message_id(1),),
                                        status=status, by=by, at_ms=NOW), now_ms=NOW)

    store.mark_sent(item.client_msg_id, now_ms=NOW)
    assert get(store, cid, 1).status is MessageStatus.SENT
    assert receipt(MessageStatus.DELIVERED) is ApplyOutcome.APPLIED
    assert get(store, cid, 1).status is MessageStatus.DELIVERED
    assert receipt(MessageStatus.READ) is ApplyOutcome.APPLIED
    assert receipt(MessageStatus.DELIVERED) is ApplyOutcome.STALE  # late, changes nothing
    assert get(store, cid, 1).status is MessageStatus.READ
    assert receipt(MessageStatus.READ, by=None) is ApplyOutcome.NOT_ALLOWED  # we don't ack ours
    assert receipt(MessageStatus.SENT) is ApplyOutcome.NOT_ALLOWED  # only the relay says sent


def test_incoming_status_and_receipt_edge_cases(store: ClientStore) -> None:
    cid = conv(store)
    store.apply(text(cid, 1, sender=BOB), now_ms=NOW)
    assert get(store, cid, 1).status is MessageStatus.RECEIVED
    read = UpdateStatus(conversation_id=cid, message_ids=(message_id(1), message_id(9)),
                        status=MessageStatus.READ, by=None, at_ms=NOW)
    assert store.apply(read, now_ms=NOW) is ApplyOutcome.APPLIED  # one of two applied
    assert get(store, cid, 1).status is MessageStatus.READ
    assert store.apply(read, now_ms=NOW) is ApplyOutcome.STALE
    by_peer = UpdateStatus(conversation_id=cid, message_ids=(message_id(1),),
                           status=MessageStatus.READ, by=BOB, at_ms=NOW)
    assert store.apply(by_peer, now_ms=NOW) is ApplyOutcome.NOT_ALLOWED
    missing = UpdateStatus(conversation_id=cid, message_ids=(message_id(9),),
                           status=MessageStatus.READ, by=None, at_ms=NOW)
    assert store.apply(missing, now_ms=NOW) is ApplyOutcome.TARGET_MISSING


def test_failed_is_final(store: ClientStore) -> None:
    cid = conv(store)
    item = store.enqueue(Outgoing(entry=entry(1), history=text(cid, 1)))
    store.mark_failed(item.client_msg_id, reason="too large", now_ms=NOW)
    delivered = UpdateStatus(conversation_id=cid, message_ids=(message_id(1),),
                             status=MessageStatus.DELIVERED, by=BOB, at_ms=NOW)
    assert store.apply(delivered, now_ms=NOW) is ApplyOutcome.STALE
    assert get(store, cid, 1).failure_reason == "too large"


# --- dedup and ordering -------------------------------------------------------------------


def test_dedup_by_message_id(store: ClientStore) -> None:
    cid = conv(store)
    assert store.apply(text(cid, 1, "a", sender=BOB), now_ms=NOW) is ApplyOutcome.APPLIED
    assert store.apply(text(cid, 1, "a", sender=BOB), now_ms=NOW) is ApplyOutcome.DUPLICATE
    assert store.apply(text(cid, 1, "mine", sender=CAROL),
                       now_ms=NOW) is ApplyOutcome.ID_CONFLICT
    assert store.apply(text(cid, 1, "ours"), now_ms=NOW) is ApplyOutcome.ID_CONFLICT
    assert get(store, cid, 1).body == "a"
    other = conv(store, CAROL)  # ids are per conversation
    assert store.apply(text(other, 1, sender=CAROL), now_ms=NOW) is ApplyOutcome.APPLIED
    assert store.message_count() == 2 and store.message_count(cid) == 1


def test_incoming_sent_at_is_clamped_to_receipt(store: ClientStore) -> None:
    cid = conv(store)
    store.apply(text(cid, 1, sender=BOB, sent_at=NOW + 10**9, received_at=NOW), now_ms=NOW)
    store.apply(text(cid, 2, sent_at=NOW + 5), now_ms=NOW)
    msg = get(store, cid, 1)
    assert (msg.sent_at_ms, msg.received_at_ms) == (NOW, NOW)
    assert ids(store.page(cid).messages) == [message_id(1), message_id(2)]


def test_file_messages_keep_their_manifest(store: ClientStore) -> None:
    cid = conv(store)
    store.apply(NewMessage(conversation_id=cid, message_id=message_id(1), sender=BOB,
                           sent_at_ms=NOW, kind=MessageKind.FILE, body="holiday photo",
                           attachment=b"manifest bytes", reply_to=message_id(7)), now_ms=NOW)
    msg = get(store, cid, 1)
    assert (msg.kind, msg.attachment, msg.reply_to) == (
        MessageKind.FILE, b"manifest bytes", message_id(7))
    assert ids(h.message for h in store.search("photo").hits) == [message_id(1)]


# --- edits, reactions, deletes -------------------------------------------------------------


def test_edits(store: ClientStore) -> None:
    cid = conv(store)
    store.apply(text(cid, 1, "original wording", sender=BOB), now_ms=NOW)

    def edit(body: str, at: int, editor: bytes | None = BOB, n: int = 1) -> ApplyOutcome:
        return store.apply(EditMessage(conversation_id=cid, target=message_id(n), editor=editor,
                                       text=body, edited_at_ms=at), now_ms=NOW)

    assert edit("revised wording", NOW + 10) is ApplyOutcome.APPLIED
    assert edit("older revision", NOW + 5) is ApplyOutcome.STALE  # last writer wins
    assert edit("hijack", NOW + 20, editor=CAROL) is ApplyOutcome.NOT_ALLOWED
    assert edit("hijack", NOW + 20, editor=None) is ApplyOutcome.NOT_ALLOWED
    assert edit("nothing", NOW + 20, n=9) is ApplyOutcome.TARGET_MISSING
    msg = get(store, cid, 1)
    assert (msg.body, msg.edited_at_ms) == ("revised wording", NOW + 10)
    assert ids(h.message for h in store.search("revised").hits) == [message_id(1)]
    assert store.search("original").hits == ()
    assert store.search("older").hits == ()


def test_reactions(store: ClientStore) -> None:
    cid = conv(store)
    store.apply(text(cid, 1, sender=BOB), now_ms=NOW)

    def react(emoji: str, who: bytes | None, remove: bool = False, n: int = 1) -> ApplyOutcome:
        return store.apply(React(conversation_id=cid, target=message_id(n), reactor=who,
                                 emoji=emoji, remove=remove, at_ms=NOW), now_ms=NOW)

    assert react("👍", None) is ApplyOutcome.APPLIED
    assert react("👍", None) is ApplyOutcome.DUPLICATE
    assert react("🎉", BOB) is ApplyOutcome.APPLIED
    assert react("👍", CAROL) is ApplyOutcome.APPLIED
    assert react("x", None, n=9) is ApplyOutcome.TARGET_MISSING
    assert {(r.reactor, r.emoji) for r in get(store, cid, 1).reactions} == {
        (None, "👍"), (BOB, "🎉"), (CAROL, "👍")}
    assert react("👍", CAROL, remove=True) is ApplyOutcome.APPLIED
    assert react("👍", CAROL, remove=True) is ApplyOutcome.DUPLICATE
    page = store.page(cid)
    assert {(r.reactor, r.emoji) for r in page.messages[0].reactions} == {
        (None, "👍"), (BOB, "🎉")}


def test_delete_for_everyone_leaves_a_tombstone(store: ClientStore) -> None:
    cid = conv(store)
    store.apply(text(cid, 1, "regrettable remark", sender=BOB), now_ms=NOW)
    store.apply(React(conversation_id=cid, target=message_id(1), reactor=None, emoji="😮",
                      at_ms=NOW), now_ms=NOW)

    def delete(by: bytes | None, scope: DeleteScope = DeleteScope.FOR_EVERYONE) -> ApplyOutcome:
        return store.apply(DeleteMessage(conversation_id=cid, target=message_id(1), by=by,
                                         scope=scope, at_ms=NOW + 1), now_ms=NOW)

    assert delete(CAROL) is ApplyOutcome.NOT_ALLOWED  # not the author
    assert delete(None) is ApplyOutcome.NOT_ALLOWED
    assert delete(BOB) is ApplyOutcome.APPLIED
    assert delete(BOB) is ApplyOutcome.DUPLICATE
    msg = get(store, cid, 1)
    assert (msg.body, msg.attachment, msg.deleted_at_ms, msg.reactions) == (
        None, None, NOW + 1, ())
    assert store.search("regrettable").hits == ()
    assert store.apply(EditMessage(conversation_id=cid, target=message_id(1), editor=BOB,
                                   text="back again", edited_at_ms=NOW + 2),
                       now_ms=NOW) is ApplyOutcome.NOT_ALLOWED
    assert store.apply(React(conversation_id=cid, target=message_id(1), reactor=None,
                             emoji="x", at_ms=NOW), now_ms=NOW) is ApplyOutcome.NOT_ALLOWED
    assert len(store.page(cid).messages) == 1  # the tombstone stays in the conversation


def test_delete_for_me_removes_the_row(store: ClientStore) -> None:
    cid = conv(store)
    item = store.enqueue(Outgoing(entry=entry(1), history=text(cid, 1, "ephemeral thought")))
    store.apply(text(cid, 2, "keep", sender=BOB), now_ms=NOW)
    for_me = DeleteMessage(conversation_id=cid, target=message_id(2), by=BOB,
                           scope=DeleteScope.FOR_ME, at_ms=NOW)
    assert store.apply(for_me, now_ms=NOW) is ApplyOutcome.NOT_ALLOWED  # only we may
    ours = DeleteMessage(conversation_id=cid, target=message_id(1), by=None,
                         scope=DeleteScope.FOR_ME, at_ms=NOW)
    assert store.apply(ours, now_ms=NOW) is ApplyOutcome.APPLIED
    assert store.apply(ours, now_ms=NOW) is ApplyOutcome.TARGET_MISSING
    assert store.get_message(cid, message_id(1)) is None
    assert store.search("ephemeral").hits == ()
    assert store.get_outbox(item.client_msg_id).message is None  # type: ignore[union-attr]
    assert store.mark_sent(item.client_msg_id, now_ms=NOW)  # still sent; nothing to update


# --- search ------------------------------------------------------------------------------


def test_search_terms_are_quoted() -> None:
    assert search_terms("Héllo, WORLD_x 42!") == ["hello", "world", "x", "42"]
    assert fts_match_expression('say "AND" OR body:* NEAR(') == (
        '"say" "and" "or" "body" "near"*')  # the last term is a prefix
    assert fts_match_expression("on at") == '"on" "at"'  # from three characters on
    assert fts_match_expression("  ,;  ") is None


def test_search_basics(store: ClientStore) -> None:
    a, b = conv(store), conv(store, CAROL)
    store.apply(text(a, 1, "Meet at the café at noon"), now_ms=NOW)
    store.apply(text(a, 2, "noon works, see you", sender=BOB), now_ms=NOW)
    store.apply(text(b, 3, "Lunch at noon?", sender=CAROL), now_ms=NOW)
    assert ids(h.message for h in store.search("noon").hits) == [
        message_id(3), message_id(2), message_id(1)]  # newest stored first
    assert ids(h.message for h in store.search("NOON cafe").hits) == [message_id(1)]
    assert ids(h.message for h in store.search("noon", conversation_id=b).hits) == [
        message_id(3)]
    assert store.search("dinner").hits == ()
    # Folded as the FTS5 tokenizer folds: case and diacritics only, whatever the form.
    store.apply(text(b, 4, "Straße in Köln, nai\u0308ve", sender=CAROL), now_ms=NOW)
    for query in ("STRAẞE", "straße", "koln", "Köln", "naïve", "naive", "nai\u0308ve"):
        assert ids(h.message for h in store.search(query).hits) == [message_id(4)], query
    assert store.search("strasse").hits == ()  # no full case folding (ß is not ss)
    # Search as you type: the last word may be the start of one, the others are whole.
    assert ids(h.message for h in store.search("Caf").hits) == [message_id(1)]
    assert ids(h.message for h in store.search("meet caf").hits) == [message_id(1)]
    assert store.search("mee cafe").hits == ()
    assert len(store.search("noo").hits) == 3
    assert store.search("no").hits == ()  # a prefix from three characters on only
    assert ids(h.message for h in store.search("noon wor").hits) == [message_id(2)]
    for nasty in ['"', "AND", "*", "body:noon", "NEAR(noon", "noon)", "", "  "]:
        store.search(nasty)  # never an FTS5 syntax error
    assert store.search('"noon"').hits  # quotes are just punctuation
    with pytest.raises(ValueError):
        store.search("noon", limit=0)


def test_search_rank_order_and_paging(store: ClientStore) -> None:
    cid = conv(store)
    store.apply(text(cid, 1, "apple pie with cream and sugar"), now_ms=NOW)
    store.apply(text(cid, 2, "apple apple apple pie bits"), now_ms=NOW)
    for n in range(3, 23):
        store.apply(text(cid, n, f"note {n} about an apple"), now_ms=NOW)
    best = store.search("apple", order=SearchOrder.RANK, limit=1).hits[0]
    assert best.message.message_id == message_id(2)
    for order in SearchOrder:
        seen: list[bytes] = []
        scores: list[float] = []
        page = store.search("apple", order=order, limit=7)
        while True:
            seen += ids(h.message for h in page.hits)
            scores += [h.score for h in page.hits]
            if page.next is None:
                break
            page = store.search("apple", order=order, limit=7, cursor=page.next)
        assert sorted(seen) == sorted(message_id(n) for n in range(1, 23)), order
        if order is SearchOrder.RANK:
            assert scores == sorted(scores)
        else:
            assert seen == [message_id(n) for n in range(22, 0, -1)]


# --- paging ------------------------------------------------------------------------------


def test_paging_by_keyset(store: ClientStore) -> None:
    cid = conv(store)
    for n in range(1, 26):  # sent_at ties resolve by rowid
        store.apply(text(cid, n, sent_at=NOW + n // 2), now_ms=NOW)
    newest = store.page(cid, limit=10)
    assert ids(newest.messages) == [message_id(n) for n in range(16, 26)]
    assert newest.newer is None and newest.older is not None
    older = store.page(cid, before=newest.older, limit=10)
    assert ids(older.messages) == [message_id(n) for n in range(6, 16)]
    oldest = store.page(cid, before=older.older, limit=10)
    assert ids(oldest.messages) == [message_id(n) for n in range(1, 6)]
    assert oldest.older is None and oldest.newer is not None
    forward = store.page(cid, after=oldest.newer, limit=10)
    assert ids(forward.messages) == [message_id(n) for n in range(6, 16)]
    assert forward.newer is not None
    last = store.page(cid, after=store.page(cid, after=forward.newer, limit=10).messages[-2]
                      .cursor, limit=10)
    assert ids(last.messages) == [message_id(25)] and last.newer is None
    assert store.page(conv(store, CAROL)).messages == ()
    with pytest.raises(ValueError):
        store.page(cid, before=newest.older, after=newest.older)
    with pytest.raises(ValueError):
        store.page(cid, limit=501)


def test_paging_is_stable_under_inserts(store: ClientStore) -> None:
    cid = conv(store)
    store.import_messages(text(cid, n, sent_at=NOW + n) for n in range(1, 201))
    collected: list[bytes] = []
    page = store.page(cid, limit=30)
    extra = 1000
    while True:
        collected = ids(page.messages) + collected
        for _ in range(5):  # new messages keep arriving while the user scrolls back
            extra += 1
            store.apply(text(cid, extra, sender=BOB, sent_at=NOW + extra), now_ms=NOW)
        if page.older is None:
            break
        page = store.page(cid, before=page.older, limit=30)
    assert collected == [message_id(n) for n in range(1, 201)]


def test_import_messages(store: ClientStore) -> None:
    cid = conv(store)
    assert store.import_messages(text(cid, n) for n in range(1, 6)) == 5
    assert store.import_messages(text(cid, n) for n in range(4, 9)) == 3  # dups skipped
    assert store.message_count(cid) == 8
    assert store.get_conversation(cid).last_message_at_ms == NOW + 8  # type: ignore[union-attr]
    with pytest.raises(RecordNotFound):
        store.import_messages([text(cid, 20), text(999, 21)])
    assert store.get_message(cid, message_id(20)) is None  # all or nothing


def test_five_thousand_messages(store: ClientStore) -> None:
    cids = [conv(store, account(100 + i)) for i in range(5)]
    words = ["alpha", "bravo", "charlie", "delta", "echo", "foxtrot", "golf", "hotel"]
    store.import_messages(
        text(cids[n % 5], n, " ".join(words[(n * k) % 8] for k in range(1, 6)),
             sent_at=NOW + n)
        for n in range(5000))
    assert store.message_count() == 5000
    page = store.page(cids[2], limit=50)
    assert len(page.messages) == 50 and page.messages[-1].sent_at_ms == NOW + 4997
    hits = store.search("hotel golf", limit=50).hits
    assert hits and all("hotel" in h.message.body and "golf" in h.message.body  # type: ignore[operator]
                        for h in hits)


# --- disappearing messages ----------------------------------------------------------------


def test_disappearing_messages(store: ClientStore) -> None:
    cid = conv(store)
    store.apply(text(cid, 1, "kept forever"), now_ms=NOW)
    store.set_expire_timer(cid, 60_000)
    store.apply(text(cid, 2, "vanishing ours", sent_at=NOW), now_ms=NOW)
    store.apply(text(cid, 3, "vanishing theirs", sender=BOB, sent_at=NOW - 5_000,
                     received_at=NOW + 1_000), now_ms=NOW)
    assert get(store, cid, 1).expires_at_ms is None
    assert get(store, cid, 2).expires_at_ms == NOW + 60_000
    assert get(store, cid, 3).expires_at_ms == NOW + 61_000  # from when it reached us
    later = NOW + 60_500
    assert ids(store.page(cid, now_ms=later).messages) == [message_id(3), message_id(1)]
    assert ids(h.message for h in store.search("vanishing", now_ms=later).hits) == [
        message_id(3)]
    assert store.purge_expired(now_ms=later) == 1
    assert store.purge_expired(now_ms=later) == 0
    assert store.get_message(cid, message_id(2)) is None
    assert store.purge_expired(now_ms=NOW + 61_000) == 1
    assert store.search("vanishing").hits == ()
    assert ids(store.page(cid).messages) == [message_id(1)]
    store.set_expire_timer(cid, None)
    store.apply(text(cid, 4), now_ms=NOW)
    assert get(store, cid, 4).expires_at_ms is None
    with pytest.raises(ValueError):
        store.set_expire_timer(cid, 0)
    with pytest.raises(RecordNotFound):
        store.set_expire_timer(999, 1000)
