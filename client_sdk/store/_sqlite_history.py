"""SQLite operations for history: conversations, messages, paging and FTS5 search.

Runs inside the caller's transaction. Rules (who may edit, status order, ...) come from
:mod:`client_sdk.history`, shared with the memory store.

* Paging is a keyset over the index ``messages_by_time (conversation_id, sent_at_ms)``
  plus the implicit rowid: ``(sent_at_ms, id) < (?, ?) ORDER BY sent_at_ms DESC, id
  DESC LIMIT n + 1``. The cost is one index seek and n + 1 rows whatever the position,
  unlike OFFSET, which walks every skipped row (see ``bench.sdk_history``).
* Search goes through the external-content FTS5 table ``messages_fts``. Newest-first
  walks the FTS doclist by descending rowid and stops after the page; rank order must
  score every match (BM25) before sorting. A new message's index entry is written here,
  right after its row (schema v4: a trigger made FTS5 flush one segment per message);
  edits and deletes keep it in step through triggers.
* Inserts of one transaction can share an :class:`InsertBatch`: each conversation's
  expiry timer is read once and its ``last_message_at_ms`` raised once, at the end.
* Attachments (file manifests) are sealed with AD key ``u64(conversation id) ||
  message id``.
"""

from __future__ import annotations

from collections.abc import Iterable, Iterator, Sequence
from typing import Any, assert_never

from ..errors import RecordNotFound
from ..history import (
    MAX_PAGE,
    ApplyOutcome,
    Conversation,
    ConversationKind,
    DeleteMessage,
    DeleteScope,
    EditMessage,
    HistoryOp,
    MessageKind,
    MessageStatus,
    NewMessage,
    Page,
    PageCursor,
    React,
    Reaction,
    SearchCursor,
    SearchHit,
    SearchOrder,
    SearchPage,
    SetExpireTimer,
    StoredMessage,
    TargetFacts,
    UpdateStatus,
    check_peer,
    decide_delete,
    decide_edit,
    decide_reaction,
    decide_status,
    expiry_for,
    fts_match_expression,
    ordering_time,
)
from ._sqlite_db import Tx

OURS = b""
"""How our own account is stored as a sender or reactor (see _sqlite_schema)."""

_CONV = "id, kind, peer, title, expire_timer_ms, created_at_ms, last_message_at_ms"
_MSG = ", ".join(f"messages.{c}" for c in (
    "id", "conversation_id", "message_id", "sender", "kind", "body", "attachment", "reply_to",
    "sent_at_ms", "received_at_ms", "status", "failure_reason", "edited_at_ms", "deleted_at_ms",
    "expires_at_ms",
))
_INSERT = (
    "INSERT INTO messages (conversation_id, message_id, sender, kind, body, attachment, "
    "reply_to, sent_at_ms, received_at_ms, status, expires_at_ms) "
    "VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?)"
)
_IN_CHUNK = 500
"""Ids per ``IN (…)`` list: well under SQLite's limit of bound parameters."""
_INSERT_NEW = _INSERT + " ON CONFLICT (conversation_id, message_id) DO NOTHING"
_INDEX = "INSERT INTO messages_fts (rowid, body) VALUES (?, ?)"
_RAISE_LAST = (
    "UPDATE conversations SET last_message_at_ms = max(coalesce(last_message_at_ms, 0), ?) "
    "WHERE id = ?"
)
_OUTCOME_PRIORITY = (ApplyOutcome.APPLIED, ApplyOutcome.STALE, ApplyOutcome.NOT_ALLOWED,
                     ApplyOutcome.TARGET_MISSING)


def _who(sender: bytes | None) -> bytes:
    return OURS if sender is None else sender


def _attachment_key(conversation_id: int, message_id: bytes) -> bytes:
    return conversation_id.to_bytes(8, "big") + message_id


def _limit(limit: int) -> int:
    if not 1 <= limit <= MAX_PAGE:
        raise ValueError(f"limit must be 1..{MAX_PAGE}")
    return limit


# --- conversations ------------------------------------------------------------------------


def _conversation(row: Any) -> Conversation:
    cid, kind, peer, title, timer, created, last = row
    return Conversation(id=cid, kind=ConversationKind(kind), peer=bytes(peer), title=title,
                        expire_timer_ms=timer, created_at_ms=created, last_message_at_ms=last)


def ensure_conversation(tx: Tx, kind: ConversationKind, peer: bytes, now_ms: int,
                        title: str | None) -> Conversation:
    check_peer(kind, peer)
    tx.conn.execute(
        "INSERT INTO conversations (kind, peer, title, created_at_ms) VALUES (?, ?, ?, ?) "
        "ON CONFLICT (kind, peer) DO NOTHING", (int(kind), peer, title, now_ms),
    )
    found = find_conversation(tx, kind, peer)
    assert found is not None
    return found


def get_conversation(tx: Tx, conversation_id: int) -> Conversation | None:
    row = tx.conn.execute(f"SELECT {_CONV} FROM conversations WHERE id = ?",  # noqa: S608
                          (conversation_id,)).fetchone()
    return None if row is None else _conversation(row)


def find_conversation(tx: Tx, kind: ConversationKind, peer: bytes) -> Conversation | None:
    row = tx.conn.execute(
        f"SELECT {_CONV} FROM conversations WHERE kind = ? AND peer = ?",  # noqa: S608
        (int(kind), peer),
    ).fetchone()
    return None if row is None else _conversation(row)


def list_conversations(tx: Tx, limit: int) -> list[Conversation]:
    rows = tx.conn.execute(
        f"SELECT {_CONV} FROM conversations "  # noqa: S608
        "ORDER BY coalesce(last_message_at_ms, created_at_ms) DESC, id DESC LIMIT ?",
        (_limit(limit),),
    ).fetchall()
    return [_conversation(r) for r in rows]


def _update_conversation(tx: Tx, conversation_id: int, column: str, value: object) -> None:
    tx.conn.execute(f"UPDATE conversations SET {column} = ? WHERE id = ?",  # noqa: S608
                    (value, conversation_id))
    if tx.changes() == 0:
        raise RecordNotFound("conversation", conversation_id)


def set_conversation_title(tx: Tx, conversation_id: int, title: str | None) -> None:
    _update_conversation(tx, conversation_id, "title", title)


def set_expire_timer(tx: Tx, conversation_id: int, timer_ms: int | None) -> None:
    if timer_ms is not None and timer_ms <= 0:
        raise ValueError("timer_ms must be positive (or None to keep messages)")
    _update_conversation(tx, conversation_id, "expire_timer_ms", timer_ms)


def delete_conversation(tx: Tx, conversation_id: int) -> bool:
    tx.conn.execute("DELETE FROM conversations WHERE id = ?", (conversation_id,))
    return tx.changes() > 0


def _timer(tx: Tx, conversation_id: int) -> int | None:
    row = tx.conn.execute("SELECT expire_timer_ms FROM conversations WHERE id = ?",
                          (conversation_id,)).fetchone()
    if row is None:
        raise RecordNotFound("conversation", conversation_id)
    return None if row[0] is None else int(row[0])


# --- reading messages -------------------------------------------------------------------


def _reactions(tx: Tx, rowids: list[int]) -> dict[int, list[Reaction]]:
    out: dict[int, list[Reaction]] = {}
    if not rowids:
        return out
    marks = ", ".join("?" * len(rowids))
    for rowid, reactor, emoji, at_ms in tx.conn.execute(
        "SELECT message_rowid, reactor, emoji, at_ms FROM reactions "  # noqa: S608
        f"WHERE message_rowid IN ({marks}) ORDER BY at_ms, reactor, emoji", rowids,
    ):
        out.setdefault(rowid, []).append(
            Reaction(reactor=bytes(reactor) or None, emoji=emoji, at_ms=at_ms))
    return out


def _messages(tx: Tx, rows: list[Any]) -> list[StoredMessage]:
    reactions = _reactions(tx, [r[0] for r in rows])
    out = []
    for (rowid, cid, mid, sender, kind, body, sealed, reply_to, sent, received, status,
         reason, edited, deleted, expires) in rows:
        attachment = None
        if sealed is not None:
            attachment = tx.unseal("messages", "attachment", _attachment_key(cid, mid), sealed)
        try:
            out.append(StoredMessage(
                rowid=rowid, conversation_id=cid, message_id=bytes(mid),
                sender=bytes(sender) or None, kind=MessageKind(kind), body=body,
                attachment=attachment, reply_to=reply_to, sent_at_ms=sent,
                received_at_ms=received, status=MessageStatus(status), failure_reason=reason,
                edited_at_ms=edited, deleted_at_ms=deleted, expires_at_ms=expires,
                reactions=tuple(reactions.get(rowid, ())),
            ))
        except ValueError as exc:
            raise tx.corrupt("stored message is invalid") from exc
    return out


def get_message(tx: Tx, conversation_id: int, message_id: bytes) -> StoredMessage | None:
    rows = tx.conn.execute(
        f"SELECT {_MSG} FROM messages WHERE conversation_id = ? AND message_id = ?",  # noqa: S608
        (conversation_id, message_id),
    ).fetchall()
    return _messages(tx, rows)[0] if rows else None


def outgoing_statuses(tx: Tx, conversation_id: int, message_ids: Sequence[bytes],
                      ) -> dict[bytes, MessageStatus]:
    out: dict[bytes, MessageStatus] = {}
    ids = list(message_ids)
    for i in range(0, len(ids), _IN_CHUNK):
        chunk = ids[i:i + _IN_CHUNK]
        marks = ", ".join("?" * len(chunk))
        for mid, status in tx.conn.execute(
                "SELECT message_id, status FROM messages "  # noqa: S608
                f"WHERE conversation_id = ? AND sender = x'' AND message_id IN ({marks})",
                (conversation_id, *chunk)):
            try:
                out[bytes(mid)] = MessageStatus(status)
            except ValueError as exc:
                raise tx.corrupt("stored message status is invalid") from exc
    return out


def message_count(tx: Tx, conversation_id: int | None) -> int:
    if conversation_id is None:
        return int(tx.conn.execute("SELECT count(*) FROM messages").fetchone()[0])
    return int(tx.conn.execute("SELECT count(*) FROM messages WHERE conversation_id = ?",
                               (conversation_id,)).fetchone()[0])


def page(tx: Tx, conversation_id: int, before: PageCursor | None, after: PageCursor | None,
         limit: int, now_ms: int | None) -> Page:
    if before is not None and after is not None:
        raise ValueError("give before or after, not both")
    n = _limit(limit)
    where = "conversation_id = ?"
    args: list[object] = [conversation_id]
    if now_ms is not None:
        where += " AND (expires_at_ms IS NULL OR expires_at_ms > ?)"
        args.append(now_ms)
    if after is not None:
        where += " AND (sent_at_ms, id) > (?, ?)"
        args += [after.sent_at_ms, after.rowid]
        order = "ASC"
    else:
        if before is not None:
            where += " AND (sent_at_ms, id) < (?, ?)"
            args += [before.sent_at_ms, before.rowid]
        order = "DESC"
    rows = tx.conn.execute(
        f"SELECT {_MSG} FROM messages WHERE {where} "  # noqa: S608
        f"ORDER BY sent_at_ms {order}, id {order} LIMIT ?", (*args, n + 1),
    ).fetchall()
    more = len(rows) > n
    msgs = _messages(tx, rows[:n])
    if after is None:
        msgs.reverse()
        older = msgs[0].cursor if more else None
        newer = msgs[-1].cursor if before is not None and msgs else None
    else:
        older = msgs[0].cursor if msgs else None
        newer = msgs[-1].cursor if more else None
    return Page(messages=tuple(msgs), older=older, newer=newer)


def search(tx: Tx, text: str, conversation_id: int | None, order: SearchOrder, limit: int,
           cursor: SearchCursor | None, now_ms: int | None) -> SearchPage:
    n = _limit(limit)
    expression = fts_match_expression(text)
    if expression is None:
        return SearchPage(hits=(), next=None)
    where = "messages_fts MATCH ?"
    args: list[object] = [expression]
    if conversation_id is not None:
        where += " AND messages.conversation_id = ?"
        args.append(conversation_id)
    if now_ms is not None:
        where += " AND (messages.expires_at_ms IS NULL OR messages.expires_at_ms > ?)"
        args.append(now_ms)
    if order is SearchOrder.NEWEST:
        if cursor is not None:
            where += " AND messages_fts.rowid < ?"
            args.append(cursor.rowid)
        order_by = "messages_fts.rowid DESC"
    else:
        if cursor is not None:
            where += " AND (messages_fts.rank, messages_fts.rowid) > (?, ?)"
            args += [cursor.score, cursor.rowid]
        order_by = "messages_fts.rank, messages_fts.rowid"
    rows = tx.conn.execute(
        f"SELECT {_MSG}, messages_fts.rank FROM messages_fts "  # noqa: S608
        f"JOIN messages ON messages.id = messages_fts.rowid WHERE {where} "
        f"ORDER BY {order_by} LIMIT ?", (*args, n + 1),
    ).fetchall()
    more = len(rows) > n
    rows = rows[:n]
    msgs = _messages(tx, [r[:-1] for r in rows])
    hits = tuple(SearchHit(message=m, score=float(r[-1])) for m, r in zip(msgs, rows, strict=True))
    nxt = SearchCursor(hits[-1].score, hits[-1].message.rowid) if more and hits else None
    return SearchPage(hits=hits, next=nxt)


# --- writing messages ---------------------------------------------------------------------


def _row(tx: Tx, op: NewMessage, timer: int | None) -> tuple[object, ...]:
    attachment = None
    if op.attachment is not None:
        attachment = tx.seal("messages", "attachment",
                             _attachment_key(op.conversation_id, op.message_id), op.attachment)
    return (op.conversation_id, op.message_id, _who(op.sender), int(op.kind), op.body,
            attachment, op.reply_to, ordering_time(op), op.received_at_ms,
            int(op.initial_status), expiry_for(op, timer))


class InsertBatch:
    """What the inserts of one transaction share: conversation timers (read once) and
    the newest ordering time per conversation (written once, by :meth:`finish`)."""

    __slots__ = ("latest", "timers")

    def __init__(self) -> None:
        self.timers: dict[int, int | None] = {}
        self.latest: dict[int, int] = {}

    def timer(self, tx: Tx, conversation_id: int) -> int | None:
        if conversation_id in self.timers:
            return self.timers[conversation_id]
        timer = self.timers[conversation_id] = _timer(tx, conversation_id)
        return timer

    def finish(self, tx: Tx) -> None:
        """Raise each conversation's ``last_message_at_ms`` (before the commit)."""
        if self.latest:
            tx.conn.executemany(_RAISE_LAST, [(t, c) for c, t in self.latest.items()])
            self.latest.clear()


def insert_message(tx: Tx, op: NewMessage, batch: InsertBatch | None = None,
                   ) -> tuple[ApplyOutcome, int | None]:
    """Insert a new message; returns the outcome and the new rowid (when APPLIED).

    With *batch*, the conversation's ``last_message_at_ms`` is raised by
    ``batch.finish`` (the caller calls it in the same transaction)."""
    cid = op.conversation_id
    timer = _timer(tx, cid) if batch is None else batch.timer(tx, cid)
    cur = tx.conn.execute(_INSERT_NEW, _row(tx, op, timer))
    if cur.rowcount != 1:  # (conversation_id, message_id) exists: who wrote it first?
        existing = tx.conn.execute(
            "SELECT sender FROM messages WHERE conversation_id = ? AND message_id = ?",
            (cid, op.message_id),
        ).fetchone()
        same = existing is not None and bytes(existing[0]) == _who(op.sender)
        return (ApplyOutcome.DUPLICATE if same else ApplyOutcome.ID_CONFLICT), None
    rowid = cur.lastrowid
    if op.body is not None:
        tx.conn.execute(_INDEX, (rowid, op.body))
    at = ordering_time(op)
    if batch is None:
        tx.conn.execute(_RAISE_LAST, (at, cid))
    elif at > batch.latest.get(cid, -1):
        batch.latest[cid] = at
    return ApplyOutcome.APPLIED, rowid


def import_messages(tx: Tx, messages: Iterable[NewMessage]) -> int:
    timers: dict[int, int | None] = {}

    def rows() -> Iterator[tuple[object, ...]]:
        for op in messages:
            cid = op.conversation_id
            if cid not in timers:
                timers[cid] = _timer(tx, cid)
            yield _row(tx, op, timers[cid])

    # Rowids only grow (INTEGER PRIMARY KEY, max + 1): the new rows are those above.
    before = tx.conn.execute("SELECT coalesce(max(id), 0) FROM messages").fetchone()[0]
    cur = tx.conn.executemany(_INSERT_NEW, rows())
    tx.conn.execute("INSERT INTO messages_fts (rowid, body) SELECT id, body FROM messages "
                    "WHERE id > ? AND body IS NOT NULL", (before,))
    tx.conn.executemany(
        "UPDATE conversations SET last_message_at_ms = "
        "(SELECT max(sent_at_ms) FROM messages WHERE conversation_id = ?) WHERE id = ?",
        [(cid, cid) for cid in timers],
    )
    return max(cur.rowcount, 0)


def _target(tx: Tx, conversation_id: int, message_id: bytes) -> tuple[int, TargetFacts] | None:
    row = tx.conn.execute(
        "SELECT id, sender, deleted_at_ms, edited_at_ms, status FROM messages "
        "WHERE conversation_id = ? AND message_id = ?", (conversation_id, message_id),
    ).fetchone()
    if row is None:
        return None
    rowid, sender, deleted, edited, status = row
    try:
        facts = TargetFacts(sender=bytes(sender) or None, deleted=deleted is not None,
                            edited_at_ms=edited, status=MessageStatus(status))
    except ValueError as exc:
        raise tx.corrupt("stored message status is invalid") from exc
    return rowid, facts


def _edit(tx: Tx, op: EditMessage) -> ApplyOutcome:
    found = _target(tx, op.conversation_id, op.target)
    if found is None:
        return ApplyOutcome.TARGET_MISSING
    rowid, facts = found
    outcome = decide_edit(facts, op)
    if outcome is ApplyOutcome.APPLIED:
        tx.conn.execute("UPDATE messages SET body = ?, edited_at_ms = ? WHERE id = ?",
                        (op.text, op.edited_at_ms, rowid))
    return outcome


def _react(tx: Tx, op: React) -> ApplyOutcome:
    found = _target(tx, op.conversation_id, op.target)
    if found is None:
        return ApplyOutcome.TARGET_MISSING
    rowid, facts = found
    outcome = decide_reaction(facts, op)
    if outcome is not ApplyOutcome.APPLIED:
        return outcome
    if op.remove:
        tx.conn.execute(
            "DELETE FROM reactions WHERE message_rowid = ? AND reactor = ? AND emoji = ?",
            (rowid, _who(op.reactor), op.emoji))
    else:
        tx.conn.execute(
            "INSERT INTO reactions (message_rowid, reactor, emoji, at_ms) VALUES (?, ?, ?, ?) "
            "ON CONFLICT DO NOTHING", (rowid, _who(op.reactor), op.emoji, op.at_ms))
    return ApplyOutcome.APPLIED if tx.changes() else ApplyOutcome.DUPLICATE


def _delete(tx: Tx, op: DeleteMessage) -> ApplyOutcome:
    found = _target(tx, op.conversation_id, op.target)
    if found is None:
        return ApplyOutcome.TARGET_MISSING
    rowid, facts = found
    outcome = decide_delete(facts, op)
    if outcome is not ApplyOutcome.APPLIED:
        return outcome
    if op.scope is DeleteScope.FOR_ME:
        tx.conn.execute("DELETE FROM messages WHERE id = ?", (rowid,))
    else:
        tx.conn.execute(
            "UPDATE messages SET body = NULL, attachment = NULL, deleted_at_ms = ? WHERE id = ?",
            (op.at_ms, rowid))
        tx.conn.execute("DELETE FROM reactions WHERE message_rowid = ?", (rowid,))
    return outcome


def _status(tx: Tx, op: UpdateStatus) -> ApplyOutcome:
    # One read per chunk of ids and one executemany: a receipt names up to hundreds.
    targets: dict[bytes, tuple[int, TargetFacts]] = {}
    ids = list(dict.fromkeys(op.message_ids))
    for i in range(0, len(ids), _IN_CHUNK):
        chunk = ids[i:i + _IN_CHUNK]
        marks = ", ".join("?" * len(chunk))
        for rowid, mid, sender, deleted, edited, status in tx.conn.execute(
                "SELECT id, message_id, sender, deleted_at_ms, edited_at_ms, status "  # noqa: S608
                f"FROM messages WHERE conversation_id = ? AND message_id IN ({marks})",
                (op.conversation_id, *chunk)):
            try:
                targets[bytes(mid)] = rowid, TargetFacts(
                    sender=bytes(sender) or None, deleted=deleted is not None,
                    edited_at_ms=edited, status=MessageStatus(status))
            except ValueError as exc:
                raise tx.corrupt("stored message status is invalid") from exc
    seen: set[ApplyOutcome] = set()
    updates: list[tuple[int, int]] = []
    for mid in ids:
        found = targets.get(mid)
        if found is None:
            seen.add(ApplyOutcome.TARGET_MISSING)
            continue
        rowid, facts = found
        decision = decide_status(facts, op)
        if isinstance(decision, ApplyOutcome):
            seen.add(decision)
            continue
        updates.append((int(decision), rowid))
        seen.add(ApplyOutcome.APPLIED)
    if updates:
        tx.conn.executemany("UPDATE messages SET status = ? WHERE id = ?", updates)
    return next(o for o in _OUTCOME_PRIORITY if o in seen)


def apply(tx: Tx, op: HistoryOp, batch: InsertBatch | None = None,
          ) -> tuple[ApplyOutcome, int | None]:
    """Apply any op; the rowid is that of a newly inserted message (else None). *batch*:
    see :func:`insert_message`."""
    if isinstance(op, NewMessage):
        return insert_message(tx, op, batch)
    _timer(tx, op.conversation_id)  # RecordNotFound for an unknown conversation
    match op:
        case EditMessage():
            return _edit(tx, op), None
        case React():
            return _react(tx, op), None
        case DeleteMessage():
            return _delete(tx, op), None
        case UpdateStatus():
            return _status(tx, op), None
        case SetExpireTimer():
            set_expire_timer(tx, op.conversation_id, op.timer_ms)
            if batch is not None:  # later inserts of this batch use the new timer
                batch.timers[op.conversation_id] = op.timer_ms
            return ApplyOutcome.APPLIED, None
        case _:
            assert_never(op)


def set_outgoing_status(tx: Tx, rowid: int, status: MessageStatus, reason: str | None) -> None:
    """SENT or FAILED from the outbox: only a PENDING message moves."""
    tx.conn.execute(
        "UPDATE messages SET status = ?, failure_reason = ? WHERE id = ? AND status = ?",
        (int(status), reason, rowid, int(MessageStatus.PENDING)),
    )


def set_outgoing_status_many(tx: Tx, rowids: Sequence[int], status: MessageStatus,
                             reason: str | None) -> None:
    """:func:`set_outgoing_status` for many messages (one ``executemany``)."""
    if rowids:
        tx.conn.executemany(
            "UPDATE messages SET status = ?, failure_reason = ? WHERE id = ? AND status = ?",
            [(int(status), reason, r, int(MessageStatus.PENDING)) for r in rowids])


def purge_expired(tx: Tx, now_ms: int) -> int:
    cur = tx.conn.execute(
        "DELETE FROM messages WHERE expires_at_ms IS NOT NULL AND expires_at_ms <= ?", (now_ms,))
    return max(cur.rowcount, 0)
