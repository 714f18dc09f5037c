"""Local history: conversations, messages with status, edits, reactions, deletes.

Theory of operation (docs/client-store.md, "History")
    History is what the user sees; it is kept only on this device. Every change is a
    *history operation* (:data:`HistoryOp`) applied by a
    :class:`~client_sdk.store.protocols.HistoryStore`: alone (``apply``), or inside the
    transaction that also stores the ratchet state and the outbox row
    (``OutboxStore.enqueue``) or the processed envelope (``InboxStore.commit_receive``).

    * **Identity of a message**: ``(conversation, message_id)``; the 16-byte id is
      chosen at random by the author (``protocol.inner``). The first row to claim an
      id in a conversation keeps it: a repeat from the same author is a duplicate
      (``DUPLICATE``), a repeat from anyone else is refused (``ID_CONFLICT``), so a
      peer cannot overwrite or shadow someone else's message.
    * **Order**: pages are ordered by ``(sent_at_ms, rowid)``. ``sent_at_ms`` is the
      author's clock, informative only, so an incoming message's is clamped to its
      ``received_at_ms`` (:func:`ordering_time`): a peer with a clock in the future
      cannot pin a message to the bottom of the conversation.
    * **Status** moves forward only (:func:`advance_status`): ours go PENDING → SENT →
      DELIVERED → READ, or PENDING → FAILED(reason); incoming ones RECEIVED → READ.
      A late "delivered" after "read" changes nothing.
    * **Edits** are allowed to the author only, last writer (by the editor's clock)
      wins; **deletes for everyone** to the author only and leave a tombstone (body,
      attachment and reactions gone, the row stays so that replies still point
      somewhere); **deletes for me** remove the row (only we may ask for that).
    * **Disappearing messages**: a conversation timer gives each new message an
      ``expires_at_ms`` (:func:`expiry_for`); ``purge_expired`` deletes them and pages
      hide them from then on even before a purge.

The rule functions here are pure and shared by the memory and SQLite stores, so both
decide the same way.
"""

from __future__ import annotations

import enum
import re
import unicodedata
from collections import Counter
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field
from typing import NamedTuple

from protocol.inner import DeleteScope

__all__ = [
    "ApplyOutcome",
    "Conversation",
    "ConversationKind",
    "DeleteMessage",
    "DeleteScope",
    "EditMessage",
    "HistoryOp",
    "MessageKind",
    "MessageStatus",
    "NewMessage",
    "Page",
    "PageCursor",
    "React",
    "Reaction",
    "SearchCursor",
    "SearchHit",
    "SearchOrder",
    "SearchPage",
    "SetExpireTimer",
    "StoredMessage",
    "TargetFacts",
    "UpdateStatus",
    "advance_status",
    "check_peer",
    "decide_delete",
    "decide_edit",
    "decide_reaction",
    "decide_status",
    "expiry_for",
    "fts_match_expression",
    "index_terms",
    "ordering_time",
    "search_matches",
    "search_terms",
]

MESSAGE_ID_SIZE = 16
ACCOUNT_ID_SIZE = 16
MAX_PEER_ID_SIZE = 64
"""A conversation peer: a 16-byte account id, or a group id (up to 64 bytes)."""
MAX_PAGE = 500
"""Largest page a caller may ask for: bounds one query's work and memory."""
MAX_SEARCH_TERMS = 16
"""Terms per search query: more only slows the query down without narrowing much."""
PREFIX_MIN_LEN = 3
"""A query's last term matches the words it begins only from this many characters on
(``"hel"`` finds "hello"; ``"he"`` only "he"): a one- or two-letter prefix would make
FTS5 merge the postings of a large part of the vocabulary at every keystroke."""


class ConversationKind(enum.IntEnum):
    DIRECT = 1
    GROUP = 2


class MessageKind(enum.IntEnum):
    TEXT = 1
    FILE = 2
    UNSUPPORTED = 3
    """An inner kind this SDK does not know (a newer client sent it)."""


class MessageStatus(enum.IntEnum):
    """Where a message stands. Ours: PENDING → SENT → DELIVERED → READ, or FAILED.
    Incoming: RECEIVED → READ (we read it)."""

    PENDING = 1
    SENT = 2
    DELIVERED = 3
    READ = 4
    FAILED = 5
    RECEIVED = 6


_OUTGOING_RANK = {
    MessageStatus.PENDING: 0,
    MessageStatus.SENT: 1,
    MessageStatus.DELIVERED: 2,
    MessageStatus.READ: 3,
}
_INCOMING_RANK = {MessageStatus.RECEIVED: 0, MessageStatus.READ: 1}


class ApplyOutcome(enum.Enum):
    """What applying a :data:`HistoryOp` did."""

    APPLIED = "applied"
    DUPLICATE = "duplicate"
    """Already applied (same message id from the same author, same reaction, ...)."""
    ID_CONFLICT = "id-conflict"
    """The message id is taken in this conversation by another author."""
    TARGET_MISSING = "target-missing"
    """The targeted message is unknown (deleted, expired, or not received yet)."""
    NOT_ALLOWED = "not-allowed"
    """The author may not do this (edit or delete someone else's message, ...)."""
    STALE = "stale"
    """Valid but older than what is stored (an earlier edit, a backward status)."""


def _check_id(what: str, value: bytes | None, size: int, *, optional: bool = False) -> None:
    if value is None and optional:
        return
    if not isinstance(value, bytes) or len(value) != size:
        raise ValueError(f"{what} must be {size} bytes")


def _check_sender(what: str, value: bytes | None) -> None:
    _check_id(what, value, ACCOUNT_ID_SIZE, optional=True)


# --- conversations ----------------------------------------------------------------------


def check_peer(kind: ConversationKind, peer: bytes) -> None:
    """A DIRECT peer is a 16-byte account id; a GROUP peer a 1..64-byte group id."""
    if kind is ConversationKind.DIRECT:
        _check_id("a direct conversation's peer", peer, ACCOUNT_ID_SIZE)
    elif not isinstance(peer, bytes) or not 1 <= len(peer) <= MAX_PEER_ID_SIZE:
        raise ValueError(f"a group id must be 1..{MAX_PEER_ID_SIZE} bytes")


@dataclass(frozen=True, slots=True, kw_only=True)
class Conversation:
    """A conversation with one contact (DIRECT, ``peer`` = account id) or a group
    (GROUP, ``peer`` = group id)."""

    id: int
    kind: ConversationKind
    peer: bytes
    title: str | None
    expire_timer_ms: int | None
    created_at_ms: int
    last_message_at_ms: int | None


# --- operations -------------------------------------------------------------------------


@dataclass(frozen=True, slots=True, kw_only=True)
class NewMessage:
    """A new text or file message, ours (``sender=None``) or a peer's.

    Attributes:
        status: defaults to PENDING for ours and RECEIVED for a peer's; a bulk import
            may give any status valid for the direction.
        attachment: the encoded file manifest (holds the file key: sealed at rest).
    """

    conversation_id: int
    message_id: bytes
    sender: bytes | None
    sent_at_ms: int
    received_at_ms: int | None = None
    kind: MessageKind = MessageKind.TEXT
    body: str | None = field(default=None, repr=False)
    attachment: bytes | None = field(default=None, repr=False)
    reply_to: bytes | None = None
    status: MessageStatus | None = None

    def __post_init__(self) -> None:
        _check_id("message_id", self.message_id, MESSAGE_ID_SIZE)
        _check_sender("sender", self.sender)
        _check_id("reply_to", self.reply_to, MESSAGE_ID_SIZE, optional=True)
        if self.status is not None:
            allowed = (
                _INCOMING_RANK if self.sender is not None
                else {**_OUTGOING_RANK, MessageStatus.FAILED: 0}
            )
            if self.status not in allowed:
                raise ValueError(f"status {self.status.name} is not valid for this direction")

    @property
    def initial_status(self) -> MessageStatus:
        if self.status is not None:
            return self.status
        return MessageStatus.PENDING if self.sender is None else MessageStatus.RECEIVED


@dataclass(frozen=True, slots=True, kw_only=True)
class EditMessage:
    """Replace the body of ``target`` (allowed to its author only)."""

    conversation_id: int
    target: bytes
    editor: bytes | None
    text: str = field(repr=False)
    edited_at_ms: int

    def __post_init__(self) -> None:
        _check_id("target", self.target, MESSAGE_ID_SIZE)
        _check_sender("editor", self.editor)


@dataclass(frozen=True, slots=True, kw_only=True)
class React:
    """Add (or with ``remove`` withdraw) ``reactor``'s emoji on ``target``."""

    conversation_id: int
    target: bytes
    reactor: bytes | None
    emoji: str = field(repr=False)
    remove: bool = False
    at_ms: int

    def __post_init__(self) -> None:
        _check_id("target", self.target, MESSAGE_ID_SIZE)
        _check_sender("reactor", self.reactor)
        if not self.emoji:
            raise ValueError("emoji must not be empty")


@dataclass(frozen=True, slots=True, kw_only=True)
class DeleteMessage:
    """Delete ``target`` for us only (FOR_ME, ours to ask) or for everyone (author only)."""

    conversation_id: int
    target: bytes
    by: bytes | None
    scope: DeleteScope
    at_ms: int

    def __post_init__(self) -> None:
        _check_id("target", self.target, MESSAGE_ID_SIZE)
        _check_sender("by", self.by)


@dataclass(frozen=True, slots=True, kw_only=True)
class UpdateStatus:
    """A receipt: a peer (``by``) saw our messages (DELIVERED / READ), or we (``by=None``)
    read incoming ones (READ)."""

    conversation_id: int
    message_ids: tuple[bytes, ...]
    status: MessageStatus
    by: bytes | None
    at_ms: int

    def __post_init__(self) -> None:
        if not self.message_ids:
            raise ValueError("message_ids must not be empty")
        for mid in self.message_ids:
            _check_id("message id", mid, MESSAGE_ID_SIZE)
        _check_sender("by", self.by)


@dataclass(frozen=True, slots=True, kw_only=True)
class SetExpireTimer:
    """The conversation's disappearing-message timer (None: keep messages), set by us
    (``by=None``) or by the peer (their ``DisappearingTimer`` message). Messages stored
    from now on get ``expires_at_ms``; those already stored keep theirs."""

    conversation_id: int
    timer_ms: int | None
    by: bytes | None
    at_ms: int

    def __post_init__(self) -> None:
        if self.timer_ms is not None and self.timer_ms <= 0:
            raise ValueError("timer_ms must be positive (or None to keep messages)")
        _check_sender("by", self.by)


HistoryOp = NewMessage | EditMessage | React | DeleteMessage | UpdateStatus | SetExpireTimer
"""Everything that changes history."""


# --- stored messages, pages, search ----------------------------------------------------


@dataclass(frozen=True, slots=True, kw_only=True)
class Reaction:
    reactor: bytes | None
    emoji: str = field(repr=False)
    at_ms: int


class PageCursor(NamedTuple):
    """A position in a conversation: ``(sent_at_ms, rowid)`` of a message."""

    sent_at_ms: int
    rowid: int


@dataclass(frozen=True, slots=True, kw_only=True)
class StoredMessage:
    """A message as stored. ``deleted_at_ms`` marks a tombstone (deleted for everyone)."""

    rowid: int
    conversation_id: int
    message_id: bytes
    sender: bytes | None
    kind: MessageKind
    body: str | None = field(repr=False)
    attachment: bytes | None = field(repr=False)
    reply_to: bytes | None
    sent_at_ms: int
    received_at_ms: int | None
    status: MessageStatus
    failure_reason: str | None
    edited_at_ms: int | None
    deleted_at_ms: int | None
    expires_at_ms: int | None
    reactions: tuple[Reaction, ...] = ()

    @property
    def outgoing(self) -> bool:
        return self.sender is None

    @property
    def cursor(self) -> PageCursor:
        return PageCursor(self.sent_at_ms, self.rowid)


@dataclass(frozen=True, slots=True, kw_only=True)
class Page:
    """Up to ``limit`` messages, oldest first.

    Attributes:
        older: pass as ``before=`` for the previous (older) page; None at the start.
        newer: pass as ``after=`` for the next (newer) page; None at the newest end.
    """

    messages: tuple[StoredMessage, ...]
    older: PageCursor | None
    newer: PageCursor | None


class SearchOrder(enum.Enum):
    NEWEST = "newest"
    """Most recently stored first: stops after ``limit`` hits, fast for any term."""
    RANK = "rank"
    """Best BM25 score first: scores every match, slower for very common terms."""


class SearchCursor(NamedTuple):
    """Where the next search page starts: the last hit's ``(score, rowid)``."""

    score: float
    rowid: int


@dataclass(frozen=True, slots=True, kw_only=True)
class SearchHit:
    """A match; ``score`` is BM25 as SQLite FTS5 reports it (lower is better)."""

    message: StoredMessage
    score: float


@dataclass(frozen=True, slots=True, kw_only=True)
class SearchPage:
    hits: tuple[SearchHit, ...]
    next: SearchCursor | None


# --- rules (shared by every store) -----------------------------------------------------


class TargetFacts(NamedTuple):
    """What the rules need to know about a targeted message."""

    sender: bytes | None
    deleted: bool
    edited_at_ms: int | None
    status: MessageStatus


def ordering_time(op: NewMessage) -> int:
    """The ``sent_at_ms`` stored for ordering: a peer's clock clamped to our receipt."""
    if op.sender is not None and op.received_at_ms is not None:
        return min(op.sent_at_ms, op.received_at_ms)
    return op.sent_at_ms


def expiry_for(op: NewMessage, timer_ms: int | None) -> int | None:
    """``expires_at_ms`` for a new message under a conversation timer (None: keep).

    The timer runs from when the message reached this device: sending time for ours,
    receipt time for a peer's.
    """
    if timer_ms is None:
        return None
    start = op.received_at_ms if op.sender is not None and op.received_at_ms else op.sent_at_ms
    return start + timer_ms


def advance_status(
    current: MessageStatus, proposed: MessageStatus, *, outgoing: bool
) -> MessageStatus | None:
    """The new status, or None if *proposed* does not move *current* forward.

    FAILED is reachable from PENDING only, and final.
    """
    if outgoing:
        if proposed is MessageStatus.FAILED:
            return proposed if current is MessageStatus.PENDING else None
        if current is MessageStatus.FAILED or proposed not in _OUTGOING_RANK:
            return None
        return proposed if _OUTGOING_RANK[proposed] > _OUTGOING_RANK[current] else None
    if proposed not in _INCOMING_RANK or current not in _INCOMING_RANK:
        return None
    return proposed if _INCOMING_RANK[proposed] > _INCOMING_RANK[current] else None


def decide_edit(target: TargetFacts, op: EditMessage) -> ApplyOutcome:
    if target.sender != op.editor or target.deleted:
        return ApplyOutcome.NOT_ALLOWED
    if target.edited_at_ms is not None and op.edited_at_ms <= target.edited_at_ms:
        return ApplyOutcome.STALE
    return ApplyOutcome.APPLIED


def decide_reaction(target: TargetFacts, op: React) -> ApplyOutcome:
    return ApplyOutcome.NOT_ALLOWED if target.deleted else ApplyOutcome.APPLIED


def decide_delete(target: TargetFacts, op: DeleteMessage) -> ApplyOutcome:
    if op.scope is DeleteScope.FOR_ME:
        return ApplyOutcome.APPLIED if op.by is None else ApplyOutcome.NOT_ALLOWED
    if target.sender != op.by:
        return ApplyOutcome.NOT_ALLOWED
    return ApplyOutcome.DUPLICATE if target.deleted else ApplyOutcome.APPLIED


def decide_status(target: TargetFacts, op: UpdateStatus) -> MessageStatus | ApplyOutcome:
    """The status to store, or why not (NOT_ALLOWED, STALE)."""
    outgoing = target.sender is None
    if outgoing:
        if op.by is None or op.status not in (MessageStatus.DELIVERED, MessageStatus.READ):
            return ApplyOutcome.NOT_ALLOWED
    elif op.by is not None or op.status is not MessageStatus.READ:
        return ApplyOutcome.NOT_ALLOWED
    new = advance_status(target.status, op.status, outgoing=outgoing)
    return ApplyOutcome.STALE if new is None else new


# --- search terms ------------------------------------------------------------------------

_TOKEN = re.compile(r"[^\W_]+")


def _fold(token: str) -> str:
    decomposed = unicodedata.normalize("NFD", token.lower())
    return "".join(c for c in decomposed if not unicodedata.combining(c))


def index_terms(text: str) -> list[str]:
    """Split text into terms the way the FTS5 ``unicode61 remove_diacritics 2``
    tokenizer does: runs of letters and digits, lowercased, diacritics removed
    ("Café" and a decomposed "Cafe\u0301" are both ``cafe``), nothing else folded
    ("Straße" stays ``straße``, a ligature stays one: what the index holds)."""
    return [_fold(t) for t in _TOKEN.findall(unicodedata.normalize("NFC", text))]


def search_terms(text: str) -> list[str]:
    """The terms of a search query: :func:`index_terms`, at most MAX_SEARCH_TERMS."""
    return index_terms(text)[:MAX_SEARCH_TERMS]


def search_matches(terms: Sequence[str], words: Iterable[str]) -> int:
    """How many of *words* (a message's :func:`index_terms`) the query *terms* match,
    0 unless every term matches one: whole words, except a last term of at least
    :data:`PREFIX_MIN_LEN` characters, which also matches the words it begins (search as
    you type: ``"hel"`` finds "hello"). The rule of :func:`fts_match_expression`, for
    stores without FTS5."""
    *whole, last = terms
    counts = Counter(words)
    hits = 0
    for term in whole:
        if term not in counts:
            return 0
        hits += counts[term]
    if len(last) < PREFIX_MIN_LEN:
        started = counts[last]
    else:
        started = sum(n for word, n in counts.items() if word.startswith(last))
    return hits + started if started else 0


def fts_match_expression(text: str) -> str | None:
    """An FTS5 MATCH expression for user text: every term quoted, all required, the
    last one a prefix from :data:`PREFIX_MIN_LEN` characters on (``"hel"*``: search
    as you type).

    Quoting means user input is never parsed as FTS5 syntax (``AND``, ``"``, ``*``,
    column filters), so no input can raise a syntax error or widen the query.
    Returns None when the text has no terms.
    """
    terms = search_terms(text)
    if not terms:
        return None
    quoted = " ".join('"' + t.replace('"', '""') + '"' for t in terms)
    return quoted + "*" if len(terms[-1]) >= PREFIX_MIN_LEN else quoted
