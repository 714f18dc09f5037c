"""The SQL behind :class:`relay.store_sqlite.SqliteStore`: mailboxes, messages, queues.

Each function takes a connection that is already inside a transaction (the writer's
group-commit batch, under a savepoint, or a reader's snapshot) and must not commit. Write
functions raise the ``relay.ports`` errors for expected refusals; the engine wraps anything
raised by sqlite3 into ``StoreError``. Accounts, prekeys, usernames and invites are in
``_sqlite_accounts``.
"""

from __future__ import annotations

import hmac
import sqlite3
from collections.abc import Sequence
from typing import Any

from ._sqlite_accounts import account_exists
from .ports import (
    AppendResult,
    ExpiryNotice,
    ExpiryReport,
    MailboxKind,
    MailboxQueue,
    MailboxRecord,
    NotFound,
    QueueSizes,
    Recipient,
    RecipientSeq,
    StoreConflict,
    StoredMessage,
)

_MAILBOX_COLS = "id, account_id, kind, created_at_ms, last_seq, push_url"

def _mailbox(row: Any) -> MailboxRecord:
    return MailboxRecord(
        mailbox_id=bytes(row[0]),
        account_id=bytes(row[1]),
        kind=MailboxKind(row[2]),
        created_at_ms=int(row[3]),
        last_seq=int(row[4]),
        push_url=row[5],
    )


# --------------------------------------------------------------------------- mailboxes


def create_mailbox(
    conn: sqlite3.Connection,
    account_id: bytes,
    mailbox_id: bytes,
    capability_hash: bytes,
    kind: MailboxKind,
    now_ms: int,
) -> MailboxRecord:
    if not account_exists(conn, account_id):
        raise NotFound("account")
    if conn.execute("SELECT 1 FROM mailboxes WHERE id = ?", (mailbox_id,)).fetchone():
        raise StoreConflict("mailbox")
    conn.execute(
        "INSERT INTO mailboxes (id, account_id, capability_hash, kind, created_at_ms)"
        " VALUES (?, ?, ?, ?, ?)",
        (mailbox_id, account_id, capability_hash, int(kind), now_ms),
    )
    return MailboxRecord(
        mailbox_id=mailbox_id,
        account_id=account_id,
        kind=kind,
        created_at_ms=now_ms,
        last_seq=0,
        push_url=None,
    )


def get_mailbox(conn: sqlite3.Connection, mailbox_id: bytes) -> MailboxRecord | None:
    row = conn.execute(
        f"SELECT {_MAILBOX_COLS} FROM mailboxes WHERE id = ?",  # noqa: S608 - constant columns
        (mailbox_id,),
    ).fetchone()
    return None if row is None else _mailbox(row)


def list_mailboxes(conn: sqlite3.Connection, account_id: bytes) -> list[MailboxRecord]:
    rows = conn.execute(
        f"SELECT {_MAILBOX_COLS} FROM mailboxes WHERE account_id = ?"  # noqa: S608
        " ORDER BY created_at_ms, id",
        (account_id,),
    ).fetchall()
    return [_mailbox(r) for r in rows]


def update_owned_mailbox(
    conn: sqlite3.Connection, account_id: bytes, mailbox_id: bytes, column: str, value: object
) -> None:
    if column not in ("capability_hash", "push_url"):
        raise ValueError("not an updatable mailbox column")
    cur = conn.execute(
        f"UPDATE mailboxes SET {column} = ? WHERE id = ? AND account_id = ?",  # noqa: S608
        (value, mailbox_id, account_id),
    )
    if cur.rowcount != 1:
        raise NotFound("mailbox")


def delete_mailbox(conn: sqlite3.Connection, account_id: bytes, mailbox_id: bytes) -> bool:
    cur = conn.execute(
        "DELETE FROM mailboxes WHERE id = ? AND account_id = ?", (mailbox_id, account_id)
    )
    return cur.rowcount == 1


def _capability_ok(conn: sqlite3.Connection, r: Recipient) -> bool:
    row = conn.execute(
        "SELECT capability_hash FROM mailboxes WHERE id = ?", (r.mailbox_id,)
    ).fetchone()
    return row is not None and hmac.compare_digest(bytes(row[0]), r.capability_hash)


def check_capabilities(
    conn: sqlite3.Connection, recipients: Sequence[Recipient]
) -> frozenset[bytes]:
    return frozenset(r.mailbox_id for r in recipients if _capability_ok(conn, r))


# --------------------------------------------------------------------------- messages


def append(
    conn: sqlite3.Connection,
    recipients: Sequence[Recipient],
    client_msg_id: bytes,
    blob: bytes,
    now_ms: int,
    ttl_ms: int,
) -> AppendResult:
    expires = now_ms + ttl_ms
    accepted: list[RecipientSeq] = []
    rejected: list[bytes] = []
    fresh: list[int] = []  # indexes into accepted still to be stored
    original: tuple[int, int] | None = None
    seen: set[bytes] = set()
    for r in recipients:
        if r.mailbox_id in seen:
            continue
        seen.add(r.mailbox_id)
        if not _capability_ok(conn, r):
            rejected.append(r.mailbox_id)
            continue
        row = conn.execute(
            "SELECT seq, received_at_ms, expires_at_ms FROM dedup"
            " WHERE mailbox_id = ? AND client_msg_id = ?",
            (r.mailbox_id, client_msg_id),
        ).fetchone()
        if row is not None:
            accepted.append(RecipientSeq(mailbox_id=r.mailbox_id, seq=row[0], duplicate=True))
            original = original or (row[1], row[2])
        else:
            fresh.append(len(accepted))
            accepted.append(RecipientSeq(mailbox_id=r.mailbox_id, seq=0, duplicate=False))
    if fresh:
        blob_id = conn.execute(
            "INSERT INTO blobs (size, data) VALUES (?, ?)", (len(blob), blob)
        ).lastrowid
        for i in fresh:
            mailbox_id = accepted[i].mailbox_id
            seq = conn.execute(
                "UPDATE mailboxes SET last_seq = last_seq + 1 WHERE id = ? RETURNING last_seq",
                (mailbox_id,),
            ).fetchone()[0]
            conn.execute(
                "INSERT INTO deliveries (mailbox_id, seq, blob_id, received_at_ms, expires_at_ms)"
                " VALUES (?, ?, ?, ?, ?)",
                (mailbox_id, seq, blob_id, now_ms, expires),
            )
            conn.execute(
                "INSERT INTO dedup (mailbox_id, client_msg_id, seq, received_at_ms, expires_at_ms)"
                " VALUES (?, ?, ?, ?, ?)",
                (mailbox_id, client_msg_id, seq, now_ms, expires),
            )
            accepted[i] = RecipientSeq(mailbox_id=mailbox_id, seq=seq, duplicate=False)
    received, expires_at = (now_ms, expires) if fresh or original is None else original
    return AppendResult(
        received_at_ms=received,
        expires_at_ms=expires_at,
        accepted=tuple(accepted),
        rejected=tuple(rejected),
    )


def fetch(
    conn: sqlite3.Connection, mailbox_id: bytes, after_seq: int, limit: int, now_ms: int
) -> list[StoredMessage]:
    rows = conn.execute(
        "SELECT d.seq, d.received_at_ms, d.expires_at_ms, b.data"
        " FROM deliveries d JOIN blobs b ON b.id = d.blob_id"
        " WHERE d.mailbox_id = ? AND d.seq > ? AND d.expires_at_ms > ?"
        " ORDER BY d.seq LIMIT ?",
        (mailbox_id, after_seq, now_ms, limit),
    ).fetchall()
    return [
        StoredMessage(
            mailbox_id=mailbox_id,
            seq=r[0],
            received_at_ms=r[1],
            expires_at_ms=r[2],
            blob=bytes(r[3]),
        )
        for r in rows
    ]


def ack(
    conn: sqlite3.Connection, mailbox_id: bytes, up_to_seq: int | None, seqs: Sequence[int]
) -> int:
    removed = 0
    if up_to_seq is not None:
        removed += conn.execute(
            "DELETE FROM deliveries WHERE mailbox_id = ? AND seq <= ?", (mailbox_id, up_to_seq)
        ).rowcount
    for seq in sorted(set(seqs)):
        removed += conn.execute(
            "DELETE FROM deliveries WHERE mailbox_id = ? AND seq = ?", (mailbox_id, seq)
        ).rowcount
    return removed


def pending_count(conn: sqlite3.Connection, mailbox_id: bytes) -> int:
    row = conn.execute(
        "SELECT count(*) FROM deliveries WHERE mailbox_id = ?", (mailbox_id,)
    ).fetchone()
    return int(row[0])


def expire(conn: sqlite3.Connection, now_ms: int, limit: int) -> ExpiryReport:
    rows = conn.execute(
        "DELETE FROM deliveries WHERE (mailbox_id, seq) IN ("
        " SELECT mailbox_id, seq FROM deliveries WHERE expires_at_ms <= ?"
        " ORDER BY expires_at_ms, mailbox_id, seq LIMIT ?) RETURNING mailbox_id, seq",
        (now_ms, limit),
    ).fetchall()
    per_mailbox: dict[bytes, tuple[int, int]] = {}
    for mailbox_id, seq in rows:
        count, top = per_mailbox.get(bytes(mailbox_id), (0, 0))
        per_mailbox[bytes(mailbox_id)] = (count + 1, max(top, seq))
    for mailbox_id, (count, top) in per_mailbox.items():
        conn.execute(
            "UPDATE mailboxes SET expired_count = expired_count + ?,"
            " expired_up_to_seq = max(expired_up_to_seq, ?) WHERE id = ?",
            (count, top, mailbox_id),
        )
    dedup = conn.execute(
        "DELETE FROM dedup WHERE (mailbox_id, client_msg_id) IN ("
        " SELECT mailbox_id, client_msg_id FROM dedup WHERE expires_at_ms <= ? LIMIT ?)",
        (now_ms, limit),
    ).rowcount
    notices = tuple(
        ExpiryNotice(mailbox_id=m, count=c, up_to_seq=s)
        for m, (c, s) in sorted(per_mailbox.items())
    )
    return ExpiryReport(
        notices=notices,
        messages_removed=len(rows),
        dedup_removed=dedup,
        more=len(rows) >= limit or dedup >= limit,
    )


def get_expiry_notice(conn: sqlite3.Connection, mailbox_id: bytes) -> ExpiryNotice | None:
    row = conn.execute(
        "SELECT expired_count, expired_up_to_seq FROM mailboxes WHERE id = ?", (mailbox_id,)
    ).fetchone()
    if row is None or row[0] == 0:
        return None
    return ExpiryNotice(mailbox_id=mailbox_id, count=row[0], up_to_seq=row[1])


def clear_expiry_notice(conn: sqlite3.Connection, notice: ExpiryNotice) -> None:
    # Subtract what was reported: expiries recorded since the notice was read stay pending.
    conn.execute(
        "UPDATE mailboxes SET"
        " expired_up_to_seq = CASE WHEN expired_count <= ? THEN 0 ELSE expired_up_to_seq END,"
        " expired_count = max(expired_count - ?, 0) WHERE id = ?",
        (notice.count, notice.count, notice.mailbox_id),
    )


# --------------------------------------------------------------------------- admin


def queue_sizes(conn: sqlite3.Connection, limit: int) -> QueueSizes:
    total = conn.execute("SELECT count(*) FROM deliveries").fetchone()[0]
    blobs, blob_bytes = conn.execute(
        "SELECT count(*), coalesce(sum(size), 0) FROM blobs"
    ).fetchone()
    rows = conn.execute(
        "SELECT d.mailbox_id, m.account_id, count(*) AS n, min(d.received_at_ms)"
        " FROM deliveries d JOIN mailboxes m ON m.id = d.mailbox_id"
        " GROUP BY d.mailbox_id ORDER BY n DESC, d.mailbox_id LIMIT ?",
        (limit,),
    ).fetchall()
    return QueueSizes(
        total_messages=total,
        total_blobs=blobs,
        total_blob_bytes=blob_bytes,
        mailboxes=tuple(
            MailboxQueue(
                mailbox_id=bytes(r[0]),
                account_id=bytes(r[1]),
                pending=r[2],
                oldest_received_at_ms=r[3],
            )
            for r in rows
        ),
    )
