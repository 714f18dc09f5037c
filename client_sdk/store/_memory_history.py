"""History for :class:`~client_sdk.store.memory.MemoryStore`: plain dicts, same rules.

Mirrors ``_sqlite_history`` operation for operation (the contract suite runs both).
Every container holds immutable values, so a shallow :meth:`HistoryTables.copy` is a
complete snapshot (the memory store's rollback). Paging sorts and search scans: fine
for tests, not for a million messages.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Iterable
from typing import assert_never

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
    index_terms,
    ordering_time,
    search_matches,
    search_terms,
)

_OUTCOME_PRIORITY = (ApplyOutcome.APPLIED, ApplyOutcome.STALE, ApplyOutcome.NOT_ALLOWED,
                     ApplyOutcome.TARGET_MISSING)


def _limit(limit: int) -> int:
    if not 1 <= limit <= MAX_PAGE:
        raise ValueError(f"limit must be 1..{MAX_PAGE}")
    return limit


@dataclasses.dataclass
class HistoryTables:
    conversations: dict[int, Conversation] = dataclasses.field(default_factory=dict)
    conversation_keys: dict[tuple[ConversationKind, bytes], int] = dataclasses.field(
        default_factory=dict)
    # rowid -> message (reactions left empty here; joined on read)
    messages: dict[int, StoredMessage] = dataclasses.field(default_factory=dict)
    index: dict[tuple[int, bytes], int] = dataclasses.field(default_factory=dict)
    # (rowid, reactor or b"", emoji) -> at_ms
    reactions: dict[tuple[int, bytes, str], int] = dataclasses.field(default_factory=dict)
    next_conversation: int = 1
    next_rowid: int = 1

    def copy(self) -> HistoryTables:
        return HistoryTables(
            conversations=dict(self.conversations), conversation_keys=dict(self.conversation_keys),
            messages=dict(self.messages), index=dict(self.index), reactions=dict(self.reactions),
            next_conversation=self.next_conversation, next_rowid=self.next_rowid,
        )

    # --- conversations ------------------------------------------------------------------

    def ensure_conversation(self, kind: ConversationKind, peer: bytes, now_ms: int,
                            title: str | None) -> Conversation:
        check_peer(kind, peer)
        cid = self.conversation_keys.get((kind, peer))
        if cid is not None:
            return self.conversations[cid]
        cid = self.next_conversation
        self.next_conversation += 1
        conv = Conversation(id=cid, kind=kind, peer=peer, title=title, expire_timer_ms=None,
                            created_at_ms=now_ms, last_message_at_ms=None)
        self.conversations[cid] = conv
        self.conversation_keys[(kind, peer)] = cid
        return conv

    def require(self, conversation_id: int) -> Conversation:
        conv = self.conversations.get(conversation_id)
        if conv is None:
            raise RecordNotFound("conversation", conversation_id)
        return conv

    def list_conversations(self, limit: int) -> list[Conversation]:
        convs = sorted(self.conversations.values(), reverse=True,
                       key=lambda c: (c.last_message_at_ms or c.created_at_ms, c.id))
        return convs[:_limit(limit)]

    def set_title(self, conversation_id: int, title: str | None) -> None:
        conv = self.require(conversation_id)
        self.conversations[conversation_id] = dataclasses.replace(conv, title=title)

    def set_timer(self, conversation_id: int, timer_ms: int | None) -> None:
        if timer_ms is not None and timer_ms <= 0:
            raise ValueError("timer_ms must be positive (or None to keep messages)")
        conv = self.require(conversation_id)
        self.conversations[conversation_id] = dataclasses.replace(conv, expire_timer_ms=timer_ms)

    def delete_conversation(self, conversation_id: int) -> list[int]:
        """Returns the rowids of the deleted messages (the outbox unlinks them)."""
        conv = self.conversations.pop(conversation_id, None)
        if conv is None:
            return []
        del self.conversation_keys[(conv.kind, conv.peer)]
        gone = [r for r, m in self.messages.items() if m.conversation_id == conversation_id]
        for rowid in gone:
            self._drop(rowid)
        return gone

    # --- reading ------------------------------------------------------------------------

    def _full(self, msg: StoredMessage) -> StoredMessage:
        reactions = sorted(
            (at, who, emoji) for (rowid, who, emoji), at in self.reactions.items()
            if rowid == msg.rowid
        )
        return dataclasses.replace(msg, reactions=tuple(
            Reaction(reactor=who or None, emoji=emoji, at_ms=at) for at, who, emoji in reactions))

    def get_message(self, conversation_id: int, message_id: bytes) -> StoredMessage | None:
        rowid = self.index.get((conversation_id, message_id))
        return None if rowid is None else self._full(self.messages[rowid])

    def outgoing_statuses(self, conversation_id: int, message_ids: Iterable[bytes],
                          ) -> dict[bytes, MessageStatus]:
        out = {}
        for mid in message_ids:
            rowid = self.index.get((conversation_id, mid))
            if rowid is not None and self.messages[rowid].outgoing:
                out[mid] = self.messages[rowid].status
        return out

    def count(self, conversation_id: int | None) -> int:
        if conversation_id is None:
            return len(self.messages)
        return sum(1 for m in self.messages.values() if m.conversation_id == conversation_id)

    def page(self, conversation_id: int, before: PageCursor | None, after: PageCursor | None,
             limit: int, now_ms: int | None) -> Page:
        if before is not None and after is not None:
            raise ValueError("give before or after, not both")
        n = _limit(limit)
        msgs = sorted(
            (m for m in self.messages.values() if m.conversation_id == conversation_id
             and (now_ms is None or m.expires_at_ms is None or m.expires_at_ms > now_ms)),
            key=lambda m: m.cursor,
        )
        if after is not None:
            newer_side = [m for m in msgs if m.cursor > after]
            chosen = newer_side[:n]
            more = len(newer_side) > n
            older = chosen[0].cursor if chosen else None
            newer = chosen[-1].cursor if more else None
        else:
            older_side = [m for m in msgs if before is None or m.cursor < before]
            chosen = older_side[-n:]
            more = len(older_side) > n
            older = chosen[0].cursor if more else None
            newer = chosen[-1].cursor if before is not None and chosen else None
        return Page(messages=tuple(self._full(m) for m in chosen), older=older, newer=newer)

    def search(self, text: str, conversation_id: int | None, order: SearchOrder, limit: int,
               cursor: SearchCursor | None, now_ms: int | None) -> SearchPage:
        n = _limit(limit)
        terms = search_terms(text)
        if not terms:
            return SearchPage(hits=(), next=None)
        hits: list[tuple[float, int]] = []
        for rowid, m in self.messages.items():
            if m.body is None or (conversation_id is not None
                                  and m.conversation_id != conversation_id):
                continue
            if now_ms is not None and m.expires_at_ms is not None and m.expires_at_ms <= now_ms:
                continue
            words = index_terms(m.body)
            matched = search_matches(terms, words)
            if matched:
                # A stand-in for BM25 (lower is better): matched share of the body.
                hits.append((-matched / len(words), rowid))
        if order is SearchOrder.NEWEST:
            hits.sort(key=lambda h: -h[1])
            if cursor is not None:
                hits = [h for h in hits if h[1] < cursor.rowid]
        else:
            hits.sort()
            if cursor is not None:
                hits = [h for h in hits if h > (cursor.score, cursor.rowid)]
        more = len(hits) > n
        found = tuple(SearchHit(message=self._full(self.messages[r]), score=s)
                      for s, r in hits[:n])
        nxt = SearchCursor(found[-1].score, found[-1].message.rowid) if more else None
        return SearchPage(hits=found, next=nxt)

    # --- writing ------------------------------------------------------------------------

    def _drop(self, rowid: int) -> None:
        msg = self.messages.pop(rowid)
        del self.index[(msg.conversation_id, msg.message_id)]
        for key in [k for k in self.reactions if k[0] == rowid]:
            del self.reactions[key]

    def insert(self, op: NewMessage) -> tuple[ApplyOutcome, int | None]:
        conv = self.require(op.conversation_id)
        existing = self.index.get((op.conversation_id, op.message_id))
        if existing is not None:
            same = self.messages[existing].sender == op.sender
            return (ApplyOutcome.DUPLICATE if same else ApplyOutcome.ID_CONFLICT), None
        rowid = self.next_rowid
        self.next_rowid += 1
        sent = ordering_time(op)
        self.messages[rowid] = StoredMessage(
            rowid=rowid, conversation_id=op.conversation_id, message_id=op.message_id,
            sender=op.sender, kind=op.kind, body=op.body, attachment=op.attachment,
            reply_to=op.reply_to, sent_at_ms=sent, received_at_ms=op.received_at_ms,
            status=op.initial_status, failure_reason=None, edited_at_ms=None,
            deleted_at_ms=None, expires_at_ms=expiry_for(op, conv.expire_timer_ms),
        )
        self.index[(op.conversation_id, op.message_id)] = rowid
        last = max(conv.last_message_at_ms or 0, sent)
        self.conversations[conv.id] = dataclasses.replace(conv, last_message_at_ms=last)
        return ApplyOutcome.APPLIED, rowid

    def import_messages(self, messages: Iterable[NewMessage]) -> int:
        return sum(1 for op in messages if self.insert(op)[0] is ApplyOutcome.APPLIED)

    def _target(self, conversation_id: int, mid: bytes) -> tuple[int, TargetFacts] | None:
        rowid = self.index.get((conversation_id, mid))
        if rowid is None:
            return None
        m = self.messages[rowid]
        return rowid, TargetFacts(sender=m.sender, deleted=m.deleted_at_ms is not None,
                                  edited_at_ms=m.edited_at_ms, status=m.status)

    def _update(self, rowid: int, **changes: object) -> None:
        self.messages[rowid] = dataclasses.replace(self.messages[rowid], **changes)  # type: ignore[arg-type]

    def _edit(self, op: EditMessage) -> ApplyOutcome:
        found = self._target(op.conversation_id, op.target)
        if found is None:
            return ApplyOutcome.TARGET_MISSING
        outcome = decide_edit(found[1], op)
        if outcome is ApplyOutcome.APPLIED:
            self._update(found[0], body=op.text, edited_at_ms=op.edited_at_ms)
        return outcome

    def _react(self, op: React) -> ApplyOutcome:
        found = self._target(op.conversation_id, op.target)
        if found is None:
            return ApplyOutcome.TARGET_MISSING
        outcome = decide_reaction(found[1], op)
        if outcome is not ApplyOutcome.APPLIED:
            return outcome
        key = (found[0], op.reactor or b"", op.emoji)
        if op.remove:
            return ApplyOutcome.APPLIED if self.reactions.pop(key, None) is not None \
                else ApplyOutcome.DUPLICATE
        if key in self.reactions:
            return ApplyOutcome.DUPLICATE
        self.reactions[key] = op.at_ms
        return ApplyOutcome.APPLIED

    def _delete(self, op: DeleteMessage) -> tuple[ApplyOutcome, int | None]:
        found = self._target(op.conversation_id, op.target)
        if found is None:
            return ApplyOutcome.TARGET_MISSING, None
        rowid, facts = found
        outcome = decide_delete(facts, op)
        if outcome is not ApplyOutcome.APPLIED:
            return outcome, None
        if op.scope is DeleteScope.FOR_ME:
            self._drop(rowid)
            return outcome, rowid
        self._update(rowid, body=None, attachment=None, deleted_at_ms=op.at_ms)
        for key in [k for k in self.reactions if k[0] == rowid]:
            del self.reactions[key]
        return outcome, None

    def _status(self, op: UpdateStatus) -> ApplyOutcome:
        seen: set[ApplyOutcome] = set()
        for mid in op.message_ids:
            found = self._target(op.conversation_id, mid)
            if found is None:
                seen.add(ApplyOutcome.TARGET_MISSING)
                continue
            decision = decide_status(found[1], op)
            if isinstance(decision, ApplyOutcome):
                seen.add(decision)
                continue
            self._update(found[0], status=decision)
            seen.add(ApplyOutcome.APPLIED)
        return next(o for o in _OUTCOME_PRIORITY if o in seen)

    def apply(self, op: HistoryOp) -> tuple[ApplyOutcome, int | None, int | None]:
        """Returns (outcome, inserted rowid, removed rowid)."""
        if isinstance(op, NewMessage):
            outcome, rowid = self.insert(op)
            return outcome, rowid, None
        self.require(op.conversation_id)
        match op:
            case EditMessage():
                return self._edit(op), None, None
            case React():
                return self._react(op), None, None
            case DeleteMessage():
                outcome, removed = self._delete(op)
                return outcome, None, removed
            case UpdateStatus():
                return self._status(op), None, None
            case SetExpireTimer():
                self.set_timer(op.conversation_id, op.timer_ms)
                return ApplyOutcome.APPLIED, None, None
            case _:
                assert_never(op)

    def set_outgoing_status(self, rowid: int, status: MessageStatus, reason: str | None) -> None:
        msg = self.messages.get(rowid)
        if msg is not None and msg.status is MessageStatus.PENDING:
            self._update(rowid, status=status, failure_reason=reason)

    def purge_expired(self, now_ms: int) -> list[int]:
        gone = [r for r, m in self.messages.items()
                if m.expires_at_ms is not None and m.expires_at_ms <= now_ms]
        for rowid in gone:
            self._drop(rowid)
        return gone
