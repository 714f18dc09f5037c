"""SQLite operations for the outbox and the inbox: the two combined transactions.

``enqueue`` stores the ratchet state (or sender-key chain) that produced a ciphertext,
the outbox row holding that ciphertext and the history change, all inside the caller's
one transaction; ``commit_receive`` does the same for an arriving envelope. A crash
therefore leaves either everything or nothing of a send or a receive.

The recipients list (mailbox ids with their send capabilities) is sealed as one value
with AD key ``client_msg_id``::

    | version u8 = 1 | count u16 | count * (mailbox_id 16 | capability 32) |
"""

from __future__ import annotations

import sqlite3
import struct
from collections.abc import Sequence
from typing import Any

from ..errors import RecordNotFound, StoreConflict
from ..history import ApplyOutcome, MessageStatus, NewMessage
from . import _sqlite_contacts as contacts
from . import _sqlite_groups as groups
from . import _sqlite_history as history
from . import _sqlite_keys as keys
from ._sqlite_db import Tx
from .records import (
    CAPABILITY_SIZE,
    MAILBOX_ID_SIZE,
    EnvelopeRef,
    Incoming,
    OutboxEntry,
    OutboxItem,
    Outgoing,
    ReceiveOutcome,
    ReceiveResult,
    Recipient,
)

_RECIPIENTS_VERSION = 1
_COUNT = struct.Struct(">H")
_ENTRY = MAILBOX_ID_SIZE + CAPABILITY_SIZE
_CHUNK = 500
"""Ids per ``IN (…)`` list: well under SQLite's limit of bound parameters."""
_ITEM = (
    "SELECT o.seq, o.client_msg_id, o.recipients, o.blob, o.created_at_ms, o.attempts, "
    "o.next_attempt_at_ms, o.last_error, m.conversation_id, m.message_id "
    "FROM outbox o LEFT JOIN messages m ON m.id = o.message_rowid"
)


def encode_recipients(recipients: tuple[Recipient, ...]) -> bytes:
    return bytes([_RECIPIENTS_VERSION]) + _COUNT.pack(len(recipients)) + b"".join(
        r.mailbox_id + r.capability for r in recipients)


def decode_recipients(tx: Tx, raw: bytes) -> tuple[Recipient, ...]:
    if len(raw) < 3 or raw[0] != _RECIPIENTS_VERSION:
        raise tx.corrupt("stored outbox recipients have an unknown format")
    (count,) = _COUNT.unpack_from(raw, 1)
    if len(raw) != 3 + count * _ENTRY:
        raise tx.corrupt("stored outbox recipients have a bad length")
    return tuple(
        Recipient(mailbox_id=raw[o:o + MAILBOX_ID_SIZE],
                  capability=raw[o + MAILBOX_ID_SIZE:o + _ENTRY])
        for o in range(3, len(raw), _ENTRY)
    )


def _item(tx: Tx, row: Any) -> OutboxItem:
    (seq, cmid, sealed, blob, created, attempts, due, error, conversation_id,
     message_id) = row
    recipients = decode_recipients(tx, tx.unseal("outbox", "recipients", cmid, sealed))
    entry = OutboxEntry(client_msg_id=bytes(cmid), recipients=recipients, blob=bytes(blob),
                        created_at_ms=created)
    link = None if conversation_id is None else (int(conversation_id), bytes(message_id))
    return OutboxItem(seq=seq, entry=entry, attempts=attempts, next_attempt_at_ms=due,
                      last_error=error, message=link)


def get_outbox(tx: Tx, client_msg_id: bytes) -> OutboxItem | None:
    row = tx.conn.execute(f"{_ITEM} WHERE o.client_msg_id = ?", (client_msg_id,)).fetchone()
    return None if row is None else _item(tx, row)


def enqueue_many(tx: Tx, outgoing: Sequence[Outgoing]) -> list[OutboxItem]:
    """Several :func:`enqueue` in the caller's one transaction (shared history batch)."""
    batch = history.InsertBatch()
    items = [enqueue(tx, o, batch) for o in outgoing]
    batch.finish(tx)
    return items


def enqueue(tx: Tx, outgoing: Outgoing, batch: history.InsertBatch | None = None,
            ) -> OutboxItem:
    """Store one send (see the module docstring). A ``client_msg_id`` already queued is
    refused by the insert (``StoreConflict``); the transaction then rolls back whole."""
    entry = outgoing.entry
    op = outgoing.history
    if isinstance(op, NewMessage) and (
        op.sender is not None or op.initial_status is not MessageStatus.PENDING
    ):
        raise ValueError("an outgoing NewMessage must be ours (sender=None) and PENDING")
    if outgoing.contact is not None:
        contacts.save_contact(tx, outgoing.contact)
    if outgoing.session is not None:
        keys.store_session(tx, outgoing.session.peer, outgoing.session.state)
    if outgoing.sender_key is not None:
        keys.store_outbound_sender_key(tx, outgoing.sender_key.group_id, outgoing.sender_key.key)
    if outgoing.group is not None:
        groups.write(tx, outgoing.group)
    link = None
    if op is not None:
        outcome, link = history.apply(tx, op, batch)
        if isinstance(op, NewMessage) and outcome is not ApplyOutcome.APPLIED:
            raise StoreConflict(f"the message id is already in history ({outcome.value})")
    seq = _insert(tx, entry, link)
    message = (op.conversation_id, op.message_id) if (
        link is not None and isinstance(op, NewMessage)) else None
    return OutboxItem(seq=seq, entry=entry, attempts=0, next_attempt_at_ms=entry.created_at_ms,
                      last_error=None, message=message)


def _insert(tx: Tx, entry: OutboxEntry, link: int | None) -> int:
    sealed = tx.seal("outbox", "recipients", entry.client_msg_id,
                     encode_recipients(entry.recipients))
    try:
        cur = tx.conn.execute(
            "INSERT INTO outbox (client_msg_id, recipients, blob, created_at_ms, "
            "next_attempt_at_ms, message_rowid) VALUES (?, ?, ?, ?, ?, ?)",
            (entry.client_msg_id, sealed, entry.blob, entry.created_at_ms,
             entry.created_at_ms, link),
        )
    except sqlite3.IntegrityError as exc:
        if getattr(exc, "sqlite_errorname", "") == "SQLITE_CONSTRAINT_UNIQUE":
            raise StoreConflict("client_msg_id is already queued") from exc
        raise
    assert cur.lastrowid is not None
    return int(cur.lastrowid)


def due_outbox(tx: Tx, now_ms: int, limit: int) -> list[OutboxItem]:
    if limit < 1:
        raise ValueError("limit must be positive")
    rows = tx.conn.execute(f"{_ITEM} WHERE o.next_attempt_at_ms <= ? ORDER BY o.seq LIMIT ?",
                           (now_ms, limit)).fetchall()
    return [_item(tx, r) for r in rows]


def next_outbox_due_at(tx: Tx) -> int | None:
    row = tx.conn.execute("SELECT min(next_attempt_at_ms) FROM outbox").fetchone()
    return None if row[0] is None else int(row[0])


def outbox_size(tx: Tx) -> int:
    return int(tx.conn.execute("SELECT count(*) FROM outbox").fetchone()[0])


def record_attempt(tx: Tx, client_msg_id: bytes, retry_at_ms: int,
                   error: str | None) -> OutboxItem:
    tx.conn.execute(
        "UPDATE outbox SET attempts = attempts + 1, next_attempt_at_ms = ?, last_error = ? "
        "WHERE client_msg_id = ?", (retry_at_ms, error, client_msg_id))
    item = get_outbox(tx, client_msg_id)
    if item is None:
        raise RecordNotFound("outbox entry", client_msg_id.hex())
    return item


def finish(tx: Tx, client_msg_id: bytes, status: MessageStatus, reason: str | None) -> bool:
    """Delete the row; move its linked message to SENT or FAILED(reason)."""
    row = tx.conn.execute("SELECT message_rowid FROM outbox WHERE client_msg_id = ?",
                          (client_msg_id,)).fetchone()
    if row is None:
        return False
    tx.conn.execute("DELETE FROM outbox WHERE client_msg_id = ?", (client_msg_id,))
    if row[0] is not None:
        history.set_outgoing_status(tx, int(row[0]), status, reason)
    return True


def finish_many(tx: Tx, client_msg_ids: Sequence[bytes], status: MessageStatus,
                reason: str | None) -> list[bool]:
    """:func:`finish` for many rows with two statements per chunk of ids (a ``DELETE …
    RETURNING`` and one status update per linked message). An id listed twice counts
    once (the first time)."""
    found: dict[bytes, int | None] = {}
    ids = list(dict.fromkeys(client_msg_ids))
    for i in range(0, len(ids), _CHUNK):
        chunk = ids[i:i + _CHUNK]
        marks = ", ".join("?" * len(chunk))
        for cmid, rowid in tx.conn.execute(
                f"DELETE FROM outbox WHERE client_msg_id IN ({marks}) "  # noqa: S608
                "RETURNING client_msg_id, message_rowid", chunk).fetchall():
            found[bytes(cmid)] = rowid
    history.set_outgoing_status_many(
        tx, [int(r) for r in found.values() if r is not None], status, reason)
    out = []
    for cmid in client_msg_ids:
        out.append(cmid in found)
        found.pop(cmid, None)
    return out


# --- inbox ------------------------------------------------------------------------------


def envelope_seen(tx: Tx, envelope: EnvelopeRef) -> bool:
    return tx.conn.execute(
        "SELECT 1 FROM processed_envelopes WHERE mailbox_id = ? AND seq = ?",
        (envelope.mailbox_id, envelope.seq),
    ).fetchone() is not None


def envelopes_seen(tx: Tx, envelopes: Sequence[EnvelopeRef]) -> set[EnvelopeRef]:
    """Those of *envelopes* already recorded: one query per mailbox and chunk of seqs."""
    by_mailbox: dict[bytes, dict[int, EnvelopeRef]] = {}
    for e in envelopes:
        by_mailbox.setdefault(e.mailbox_id, {})[e.seq] = e
    seen: set[EnvelopeRef] = set()
    for mailbox_id, refs in by_mailbox.items():
        seqs = list(refs)
        for i in range(0, len(seqs), _CHUNK):
            chunk = seqs[i:i + _CHUNK]
            marks = ", ".join("?" * len(chunk))
            for (seq,) in tx.conn.execute(
                    "SELECT seq FROM processed_envelopes "  # noqa: S608
                    f"WHERE mailbox_id = ? AND seq IN ({marks})", (mailbox_id, *chunk)):
                seen.add(refs[seq])
    return seen


def commit_receive_many(tx: Tx, incoming: Sequence[Incoming]) -> list[ReceiveResult]:
    """Several :func:`commit_receive` in the caller's one transaction."""
    batch = history.InsertBatch()
    results = [commit_receive(tx, i, batch) for i in incoming]
    batch.finish(tx)
    return results


def commit_receive(tx: Tx, incoming: Incoming, batch: history.InsertBatch | None = None,
                   ) -> ReceiveResult:
    # The envelope record first: it is the duplicate check (nothing else is written for
    # an envelope already processed) and the record, in one statement.
    cur = tx.conn.execute(
        "INSERT INTO processed_envelopes (mailbox_id, seq, received_at_ms) VALUES (?, ?, ?) "
        "ON CONFLICT (mailbox_id, seq) DO NOTHING",
        (incoming.envelope.mailbox_id, incoming.envelope.seq, incoming.received_at_ms),
    )
    if cur.rowcount != 1:
        return ReceiveResult(outcome=ReceiveOutcome.DUPLICATE_ENVELOPE)
    if incoming.accepted is not None:
        keys.consume_initiation(tx, incoming.accepted, incoming.received_at_ms)
    if incoming.contact is not None:
        contacts.save_contact(tx, incoming.contact)
    if incoming.session is not None:
        keys.store_session(tx, incoming.session.peer, incoming.session.state)
    if incoming.sender_key is not None:
        u = incoming.sender_key
        keys.store_sender_key_record(tx, u.group_id, u.sender, u.record)
    if incoming.group is not None:
        groups.write(tx, incoming.group)
    outcome = None
    if incoming.history is not None:
        outcome, _ = history.apply(tx, incoming.history, batch)
    if incoming.reply is not None:
        _insert(tx, incoming.reply, None)
    return ReceiveResult(outcome=ReceiveOutcome.PROCESSED, history=outcome)


def purge_envelope_records(tx: Tx, received_before_ms: int) -> int:
    cur = tx.conn.execute("DELETE FROM processed_envelopes WHERE received_at_ms < ?",
                          (received_before_ms,))
    return max(cur.rowcount, 0)
