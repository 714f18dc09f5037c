"""The SQL behind :class:`relay.store_postgres.PostgresStore`: mailboxes, messages, queues.

Same rules as ``_pg_accounts``: each function runs inside the store's READ COMMITTED
transaction, never commits, and raises the ``relay.ports`` errors for expected refusals.

Concurrency (several relay nodes on one database):

* An append locks every mailbox it names (``FOR NO KEY UPDATE``, in id order, so two
  appends never wait on each other's mailboxes in a cycle) before it reads anything that
  decides the result. Seqs come from the locked ``last_seq``; the idempotency records are read in a
  *later* statement, whose snapshot includes whatever the previous holder of the lock
  committed. So two nodes appending to one mailbox get dense, distinct seqs, and a resend
  racing its original finds it.
* A send's ``send_dedup`` record is keyed by its client_msg_id, which two nodes may be
  storing at once for *different* mailboxes (no common lock). The record is inserted
  ``ON CONFLICT DO NOTHING``; the loser records its copies as ``dedup`` rows instead and
  extends the winner's record, which is what the SQLite adapter does for copies added
  under a client_msg_id that already has a record. Two batches that each extend one
  client_msg_id's record and insert another's, the other way round, can deadlock there:
  rare, and the store runs the victim again.
* The send records an append reads are locked ``FOR KEY SHARE``, which the sweep's
  ``FOR UPDATE SKIP LOCKED`` passes over: a record is not swept between the read and
  the extension of its life.
* Removing deliveries (ack, expiry, deletion) goes through the ``deliveries_gone``
  statement trigger (``relay._pg_schema``), which keeps the pending counts and blob
  reference counts under row locks.
"""

from __future__ import annotations

import hashlib
import hmac
from collections.abc import Sequence
from typing import Any

from ._append_plan import _ENTRY, Box, SendRecord, _entries, accepts, plan, prepare
from ._pg_accounts import Conn, lock_account
from .ports import (
    AckRequest,
    AppendRequest,
    AppendResult,
    ExpiryNotice,
    ExpiryReport,
    MailboxQueue,
    MailboxRecord,
    NotFound,
    QueueSizes,
    Recipient,
    StoreConflict,
    StoredMessage,
    WrongCapability,
)

_MAILBOX_COLS = "id, account_id, created_at_ms, last_seq, pending, retire_at_ms, push_url"


def _mailbox(row: Any) -> MailboxRecord:
    return MailboxRecord(
        mailbox_id=row[0],
        account_id=row[1],
        created_at_ms=row[2],
        last_seq=row[3],
        pending=row[4],
        retire_at_ms=row[5],
        push_url=row[6],
    )


# --------------------------------------------------------------------------- mailboxes


async def create_mailbox(
    conn: Conn, account_id: bytes, mailbox_id: bytes, capability_hash: bytes, now_ms: int,
    push_url: str | None = None,
) -> MailboxRecord:
    # KEY SHARE: the account cannot be deleted until this commits.
    if not await lock_account(conn, account_id, share=True):
        raise NotFound("account")
    inserted = await conn.fetchval(
        "INSERT INTO mailboxes (id, account_id, capability_hash, created_at_ms, push_url)"
        " VALUES ($1, $2, $3, $4, $5) ON CONFLICT (id) DO NOTHING RETURNING 1",
        mailbox_id, account_id, capability_hash, now_ms, push_url,
    )
    if inserted is None:
        raise StoreConflict("mailbox")
    return MailboxRecord(
        mailbox_id=mailbox_id, account_id=account_id, created_at_ms=now_ms, last_seq=0,
        pending=0, retire_at_ms=None, push_url=push_url,
    )


async def get_mailbox(conn: Conn, mailbox_id: bytes) -> MailboxRecord | None:
    row = await conn.fetchrow(
        f"SELECT {_MAILBOX_COLS} FROM mailboxes WHERE id = $1",  # noqa: S608 - constant columns
        mailbox_id,
    )
    return None if row is None else _mailbox(row)


async def list_mailboxes(conn: Conn, account_id: bytes) -> list[MailboxRecord]:
    rows = await conn.fetch(
        f"SELECT {_MAILBOX_COLS} FROM mailboxes WHERE account_id = $1"  # noqa: S608
        " ORDER BY created_at_ms, id",
        account_id,
    )
    return [_mailbox(r) for r in rows]


async def count_mailboxes(conn: Conn, account_id: bytes) -> int:
    return int(await conn.fetchval("SELECT count(*) FROM mailboxes WHERE account_id = $1",
                                   account_id))


async def owned_mailboxes(conn: Conn, account_id: bytes,
                          mailbox_ids: Sequence[bytes]) -> set[bytes]:
    rows = await conn.fetch(
        "SELECT id FROM mailboxes WHERE account_id = $1 AND id = ANY($2::bytea[])",
        account_id, list(mailbox_ids),
    )
    return {bytes(r[0]) for r in rows}


async def rotate_mailbox(
    conn: Conn, account_id: bytes, mailbox_id: bytes, new_mailbox_id: bytes,
    capability_hash: bytes, retire_at_ms: int, now_ms: int,
) -> MailboxRecord:
    old = await conn.fetchrow(
        "SELECT account_id, retire_at_ms, push_url FROM mailboxes WHERE id = $1"
        " FOR NO KEY UPDATE",
        mailbox_id,
    )
    if old is None or old[0] != account_id:
        raise NotFound("mailbox")
    if old[1] is not None:  # a repeat: the mailbox it created, if any
        row = await conn.fetchrow(
            f"SELECT {_MAILBOX_COLS} FROM mailboxes WHERE account_id = $1"  # noqa: S608
            " AND capability_hash = $2 AND id != $3 ORDER BY created_at_ms DESC LIMIT 1",
            account_id, capability_hash, mailbox_id,
        )
        if row is None:
            raise NotFound("mailbox")
        return _mailbox(row)
    new = await create_mailbox(conn, account_id, new_mailbox_id, capability_hash, now_ms,
                               push_url=old[2])
    await conn.execute("UPDATE mailboxes SET retire_at_ms = $1 WHERE id = $2",
                       retire_at_ms, mailbox_id)
    return new


async def replace_capability(
    conn: Conn, account_id: bytes, mailbox_id: bytes, capability_hash: bytes
) -> None:
    found = await conn.fetchval(
        "UPDATE mailboxes SET capability_hash = $1 WHERE id = $2 AND account_id = $3"
        " RETURNING 1",
        capability_hash, mailbox_id, account_id,
    )
    if found is None:
        raise NotFound("mailbox")


async def set_contact_mailbox(
    conn: Conn, account_id: bytes, mailbox_id: bytes, capability: bytes
) -> None:
    # KEY SHARE on the mailbox: it is not deleted (which would clear the designation)
    # between this check and the account update.
    stored = await conn.fetchval(
        "SELECT capability_hash FROM mailboxes WHERE id = $1 AND account_id = $2"
        " FOR KEY SHARE",
        mailbox_id, account_id,
    )
    if stored is None:
        raise NotFound("mailbox")
    if not hmac.compare_digest(stored, hashlib.sha256(capability).digest()):
        raise WrongCapability()
    await conn.execute(
        "UPDATE accounts SET contact_mailbox_id = $1, contact_capability = $2 WHERE id = $3",
        mailbox_id, capability, account_id,
    )


async def set_push_url(
    conn: Conn, account_id: bytes, mailbox_ids: Sequence[bytes], push_url: str | None
) -> None:
    wanted = set(mailbox_ids)
    if not wanted:
        return
    updated = await conn.fetchval(
        "WITH u AS (UPDATE mailboxes SET push_url = $1 WHERE id = ANY($2::bytea[])"
        " AND account_id = $3 RETURNING 1) SELECT count(*) FROM u",
        push_url, list(wanted), account_id,
    )
    if updated != len(wanted):
        raise NotFound("mailbox")  # rolls back the ones already set


async def delete_mailbox(conn: Conn, account_id: bytes, mailbox_id: bytes) -> bool:
    return await conn.fetchval(
        "DELETE FROM mailboxes WHERE id = $1 AND account_id = $2 RETURNING 1",
        mailbox_id, account_id,
    ) is not None


async def check_capabilities(
    conn: Conn, recipients: Sequence[Recipient], now_ms: int
) -> frozenset[bytes]:
    if not recipients:
        return frozenset()
    rows = await conn.fetch(
        "SELECT id, capability_hash, retire_at_ms FROM mailboxes WHERE id = ANY($1::bytea[])",
        list({r.mailbox_id for r in recipients}),
    )
    boxes = {row[0]: (row[1], row[2]) for row in rows}
    return frozenset(r.mailbox_id for r in recipients
                     if accepts(boxes.get(r.mailbox_id), r, now_ms))


# --------------------------------------------------------------------------- messages

_LOCK_MAILBOXES = (
    "SELECT id, capability_hash, retire_at_ms, pending, last_seq, serial FROM mailboxes"
    " WHERE id = ANY($1::bytea[]) ORDER BY id FOR NO KEY UPDATE"
)
_SEND_RECORDS = (
    "SELECT send_hash, received_at_ms, expires_at_ms, entries FROM send_dedup"
    " WHERE send_hash = ANY($1::bytea[]) FOR KEY SHARE"
)
"""``FOR KEY SHARE``: the sweep (``FOR UPDATE SKIP LOCKED``) passes over a record this
append may extend, so it cannot go between the read and the extension; the lock does not
conflict with another append's extension (a non-key ``UPDATE``)."""
_DEDUP_ROWS = (
    "SELECT d.mailbox_id, d.dedup_hash, d.seq, d.received_at_ms, d.expires_at_ms"
    " FROM unnest($1::bytea[], $2::bytea[]) AS k(m, h)"
    " JOIN dedup d ON d.mailbox_id = k.m AND d.dedup_hash = k.h"
)
_WRITE = """
    WITH nb AS MATERIALIZED (
        SELECT nextval('blob_ids') AS id, t.ord, t.data, t.refs
        FROM unnest($1::bytea[], $2::integer[]) WITH ORDINALITY AS t(data, refs, ord)
    ), ib AS (
        INSERT INTO blobs (id, size, refs, data)
        SELECT id, length(data), refs, data FROM nb
    ), idl AS (
        INSERT INTO deliveries (mailbox_id, seq, blob_id, received_at_ms, expires_at_ms)
        SELECT d.m, d.s, nb.id, d.r, d.e
        FROM unnest($3::bytea[], $4::bigint[], $5::bigint[], $6::bigint[], $7::bigint[])
            AS d(m, s, b, r, e)
        JOIN nb ON nb.ord = d.b
    ), idd AS (
        INSERT INTO dedup (mailbox_id, dedup_hash, seq, received_at_ms, expires_at_ms,
                           keep_until_ms)
        SELECT * FROM unnest($8::bytea[], $9::bytea[], $10::bigint[], $11::bigint[],
                             $12::bigint[], $13::bigint[])
    ), ext AS (
        UPDATE send_dedup s SET keep_until_ms = greatest(s.keep_until_ms, x.k)
        FROM unnest($14::bytea[], $15::bigint[]) AS x(h, k) WHERE s.send_hash = x.h
    ), cnt AS (
        UPDATE mailboxes m SET last_seq = c.s, pending = m.pending + c.n
        FROM unnest($16::bytea[], $17::bigint[], $18::bigint[]) AS c(id, s, n)
        WHERE m.id = c.id
    )
    INSERT INTO send_dedup (send_hash, received_at_ms, expires_at_ms, keep_until_ms, entries)
    SELECT * FROM unnest($19::bytea[], $20::bigint[], $21::bigint[], $22::bigint[],
                         $23::bytea[])
    ON CONFLICT (send_hash) DO NOTHING RETURNING send_hash
"""
"""Every write of an append run in one statement (one round trip). Blob ids are drawn in
``nb`` and joined back to the deliveries by ordinal; the last INSERT reports which send
records went in (the others lost a race, see the module docstring)."""
_LOST_RACE = """
    WITH idd AS (
        INSERT INTO dedup (mailbox_id, dedup_hash, seq, received_at_ms, expires_at_ms,
                           keep_until_ms)
        SELECT * FROM unnest($1::bytea[], $2::bytea[], $3::bigint[], $4::bigint[],
                             $5::bigint[], $6::bigint[])
        -- A row left here is one the sweep has not reached yet (it goes no later than
        -- the record it was written under, which is gone): the new copy replaces it.
        ON CONFLICT (mailbox_id, dedup_hash) DO UPDATE SET seq = excluded.seq,
            received_at_ms = excluded.received_at_ms, expires_at_ms = excluded.expires_at_ms,
            keep_until_ms = excluded.keep_until_ms
    )
    UPDATE send_dedup s SET keep_until_ms = greatest(s.keep_until_ms, x.k)
    FROM unnest($7::bytea[], $8::bigint[]) AS x(h, k) WHERE s.send_hash = x.h
"""


def _columns(rows: Sequence[Sequence[Any]], n: int) -> list[list[Any]]:
    """*rows* of *n* values as *n* column lists (for ``unnest``)."""
    if not rows:
        return [[] for _ in range(n)]
    return [list(col) for col in zip(*rows, strict=True)]


async def append_many(conn: Conn, calls: Sequence[AppendRequest]) -> list[AppendResult]:
    """Run *calls* in order in a handful of statements, with exactly the results of
    running them one by one (the SQLite adapter's ``append_many`` decisions).

    Round trips: lock the mailboxes; read the send records; read ``dedup`` rows only when
    a record exists (a retry); one statement for every write; one more only when another
    node stored a send record for the same client_msg_id meanwhile.
    """
    if not calls:
        return []
    # 1. What the run needs to know.
    lookups = prepare(calls)
    keys = lookups.keys
    cmids = lookups.cmids
    mailbox_ids = lookups.mailbox_ids
    # [capability hash, retire_at_ms, pending, last_seq, new copies in this run, serial]
    boxes: dict[bytes, Box] = {}
    if mailbox_ids:
        for row in await conn.fetch(_LOCK_MAILBOXES, list(mailbox_ids)):
            boxes[row[0]] = [row[1], row[2], row[3], row[4], 0, row[5]]
    # After the locks, in a new statement: sees what earlier holders committed.
    sends: dict[bytes, SendRecord] = {}
    if boxes:
        for row in await conn.fetch(_SEND_RECORDS, list(cmids.values())):
            sends[row[0]] = (row[1], row[2], _entries(row[3]))
    known: dict[tuple[bytes, bytes], tuple[int, int, int]] = {}
    pair_m: list[bytes] = []
    pair_h: list[bytes] = []
    for call, mine in zip(calls, keys, strict=True):
        if cmids[call.client_msg_id] in sends:
            for r, key in mine:
                if r.mailbox_id in boxes:
                    pair_m.append(r.mailbox_id)
                    pair_h.append(key)
    if pair_m:
        for row in await conn.fetch(_DEDUP_ROWS, pair_m, pair_h):
            known[(row[0], row[1])] = (row[2], row[3], row[4])
    # 2. The decisions, call by call, in order (a later call sees the earlier ones).
    # Blobs are referred to by their 1-based ordinal in the run (``_WRITE`` joins on it).
    out = plan(calls, lookups, boxes, sends, known)
    if not out.blobs:
        return out.results
    # 3. The writes, one statement.
    counters = [(m, b[3], b[4]) for m, b in boxes.items() if b[4]]
    ext = sorted(out.extended.items())  # a stable lock order over the records
    send_rows = out.send_rows
    inserted = await conn.fetch(
        _WRITE,
        out.blobs, out.blob_refs, *_columns(out.deliveries, 5),
        *_columns(out.dedup_rows, 6),
        [h for h, _ in ext], [k for _, k in ext], *_columns(counters, 3),
        *_columns(send_rows, 5),
    )
    lost = set(out.created) - {row[0] for row in inserted}
    if lost:
        # Another node stored a record for this client_msg_id (for other mailboxes: ours
        # are locked) after we looked. Our copies are ours all the same; record them as
        # copies added under an existing record.
        rows = [row for skey in sorted(lost) for row in out.fallback_rows(skey)]
        # The winner's record must last as long as every copy this run added under the
        # client_msg_id (the later calls' too): the folded keep_until of ours.
        keep = sorted((skey, send_rows[out.created[skey]][3]) for skey in lost)
        await conn.execute(_LOST_RACE, *_columns(rows, 6),
                           [h for h, _ in keep], [k for _, k in keep])
    return out.results


async def fetch(
    conn: Conn, mailbox_id: bytes, after_seq: int, limit: int, now_ms: int
) -> list[StoredMessage]:
    rows = await conn.fetch(
        "SELECT d.seq, d.received_at_ms, d.expires_at_ms, b.data"
        " FROM deliveries d JOIN blobs b ON b.id = d.blob_id"
        " WHERE d.mailbox_id = $1 AND d.seq > $2 AND d.expires_at_ms > $3"
        " ORDER BY d.seq LIMIT $4",
        mailbox_id, after_seq, now_ms, limit,
    )
    return [StoredMessage(mailbox_id=mailbox_id, seq=r[0], received_at_ms=r[1],
                          expires_at_ms=r[2], blob=r[3]) for r in rows]



_ACK = ("SELECT ack_call, ack_removed FROM ack_deliveries($1, $2, $3, $4),"
        " set_config('synchronous_commit', 'off', true)")
"""Every ack of a run in one statement (the function is in ``relay._pg_schema``): each
queued row named is counted for the first call that names it (what running them one by
one would report), and removed once; a row a concurrent ack removed first is not counted.

The statement's transaction (its own, implicit) commits with ``synchronous_commit =
off``: it does not wait for the WAL flush. An ack lost to a database crash only means a
redelivery, which clients drop as a duplicate; the setting ends with the transaction
(``is_local``), so nothing else on the pooled connection is affected. (An ack that
removes no row may skip the ``set_config``: it writes nothing to wait for.)"""


async def ack_many(conn: Conn, calls: Sequence[AckRequest]) -> list[int]:
    idx: list[int] = []
    mailbox_ids: list[bytes] = []
    ups: list[int | None] = []
    seqs: list[int | None] = []
    for i, (mailbox_id, up_to_seq, selected) in enumerate(calls):
        if up_to_seq is not None:
            idx.append(i)
            mailbox_ids.append(mailbox_id)
            ups.append(up_to_seq)
            seqs.append(None)
        for seq in set(selected):
            idx.append(i)
            mailbox_ids.append(mailbox_id)
            ups.append(None)
            seqs.append(seq)
    counts = [0] * len(calls)
    if not idx:
        return counts
    for row in await conn.fetch(_ACK, idx, mailbox_ids, ups, seqs):
        counts[row[0]] = row[1]
    return counts


async def pending_count(conn: Conn, mailbox_id: bytes) -> int:
    value = await conn.fetchval("SELECT pending FROM mailboxes WHERE id = $1", mailbox_id)
    return 0 if value is None else int(value)


async def expire_mailbox(conn: Conn, mailbox_id: bytes, now_ms: int) -> int:
    # The mailbox locked first, as expire and ack_deliveries lock it.
    await conn.execute("SELECT 1 FROM mailboxes WHERE id = $1 FOR NO KEY UPDATE", mailbox_id)
    seqs = [r[0] for r in await conn.fetch(
        "DELETE FROM deliveries WHERE mailbox_id = $1 AND expires_at_ms <= $2 RETURNING seq",
        mailbox_id, now_ms,
    )]
    if seqs:
        await conn.execute(
            "UPDATE mailboxes SET expired_count = expired_count + $1,"
            " expired_up_to_seq = greatest(expired_up_to_seq, $2) WHERE id = $3",
            len(seqs), max(seqs), mailbox_id,
        )
    return len(seqs)


async def expire(conn: Conn, now_ms: int, limit: int) -> ExpiryReport:
    # The due rows' mailboxes are locked first, in id order (see ack_deliveries in
    # relay._pg_schema): a sweep on another node holding some of them is waited for
    # until its transaction ends. A row it or an ack removed meanwhile is not counted
    # (the DELETE re-reads after the locks).
    due = await conn.fetch(
        "SELECT mailbox_id, seq FROM deliveries WHERE expires_at_ms <= $1"
        " ORDER BY expires_at_ms, mailbox_id, seq LIMIT $2",
        now_ms, limit,
    )
    rows: list[Any] = []
    if due:
        await conn.execute(
            "SELECT 1 FROM mailboxes WHERE id = ANY($1::bytea[]) ORDER BY id FOR NO KEY UPDATE",
            list({r[0] for r in due}),
        )
        rows = await conn.fetch(
            "DELETE FROM deliveries d USING unnest($1::bytea[], $2::bigint[]) AS x(m, s)"
            " WHERE d.mailbox_id = x.m AND d.seq = x.s AND d.expires_at_ms <= $3"
            " RETURNING d.mailbox_id, d.seq",
            [r[0] for r in due], [r[1] for r in due], now_ms,
        )
    per_mailbox: dict[bytes, tuple[int, int]] = {}
    for mailbox_id, seq in rows:
        count, top = per_mailbox.get(mailbox_id, (0, 0))
        per_mailbox[mailbox_id] = (count + 1, max(top, seq))
    if per_mailbox:
        notes = sorted(per_mailbox.items())
        await conn.execute(
            "UPDATE mailboxes m SET expired_count = m.expired_count + x.c,"
            " expired_up_to_seq = greatest(m.expired_up_to_seq, x.s)"
            " FROM unnest($1::bytea[], $2::bigint[], $3::bigint[]) AS x(id, c, s)"
            " WHERE m.id = x.id",
            [m for m, _ in notes], [c for _, (c, _) in notes], [s for _, (_, s) in notes],
        )
    dedup = await conn.fetchval(
        "WITH g AS (DELETE FROM dedup WHERE (mailbox_id, dedup_hash) IN ("
        " SELECT mailbox_id, dedup_hash FROM dedup WHERE keep_until_ms <= $1 LIMIT $2"
        " FOR UPDATE SKIP LOCKED) RETURNING 1) SELECT count(*) FROM g",
        now_ms, limit,
    )
    send_records = await conn.fetch(
        "DELETE FROM send_dedup WHERE send_hash IN ("
        " SELECT send_hash FROM send_dedup WHERE keep_until_ms <= $1 LIMIT $2"
        " FOR UPDATE SKIP LOCKED) AND keep_until_ms <= $1 RETURNING length(entries)",
        now_ms, limit,
    )
    # The conditions again on the outer DELETE: they are re-checked on the newest row
    # version should an append to the mailbox commit meanwhile.
    retired = await conn.fetch(
        "DELETE FROM mailboxes WHERE id IN (SELECT id FROM mailboxes"
        " WHERE retire_at_ms <= $1 AND pending = 0 ORDER BY retire_at_ms LIMIT $2"
        " FOR UPDATE SKIP LOCKED) AND retire_at_ms <= $1 AND pending = 0 RETURNING id",
        now_ms, limit,
    )
    return ExpiryReport(
        notices=tuple(ExpiryNotice(mailbox_id=m, count=c, up_to_seq=s)
                      for m, (c, s) in sorted(per_mailbox.items())),
        messages_removed=len(rows),
        # Counted per mailbox record, as the other adapters count them.
        dedup_removed=dedup + sum(n // _ENTRY for (n,) in send_records),
        retired=tuple(sorted(r[0] for r in retired)),
        more=max(len(rows), dedup, len(send_records), len(retired)) >= limit,
    )


async def get_expiry_notice(conn: Conn, mailbox_id: bytes) -> ExpiryNotice | None:
    row = await conn.fetchrow(
        "SELECT expired_count, expired_up_to_seq FROM mailboxes WHERE id = $1", mailbox_id
    )
    if row is None or row[0] == 0:
        return None
    return ExpiryNotice(mailbox_id=mailbox_id, count=row[0], up_to_seq=row[1])


async def clear_expiry_notice(conn: Conn, notice: ExpiryNotice) -> None:
    # Subtract what was reported: expiries recorded since the notice was read stay pending.
    await conn.execute(
        "UPDATE mailboxes SET"
        " expired_up_to_seq = CASE WHEN expired_count <= $1 THEN 0 ELSE expired_up_to_seq END,"
        " expired_count = greatest(expired_count - $1, 0) WHERE id = $2",
        notice.count, notice.mailbox_id,
    )


# --------------------------------------------------------------------------- admin


async def queue_sizes(conn: Conn, limit: int) -> QueueSizes:
    # One statement: one snapshot for the totals and the list.
    row = await conn.fetchrow(
        "SELECT (SELECT count(*) FROM deliveries),"
        " (SELECT count(*) FROM blobs), (SELECT coalesce(sum(size), 0) FROM blobs),"
        " (SELECT coalesce(array_agg(ROW(q.id, q.account_id, q.pending, q.oldest)"
        "   ORDER BY q.pending DESC, q.id), '{}') FROM ("
        "   SELECT m.id, m.account_id, m.pending,"
        "   (SELECT min(received_at_ms) FROM deliveries d WHERE d.mailbox_id = m.id) AS oldest"
        "   FROM mailboxes m WHERE m.pending > 0 ORDER BY m.pending DESC, m.id LIMIT $1) q)",
        limit,
    )
    assert row is not None
    return QueueSizes(
        total_messages=row[0],
        total_blobs=row[1],
        total_blob_bytes=int(row[2]),
        mailboxes=tuple(
            MailboxQueue(mailbox_id=q[0], account_id=q[1], pending=q[2],
                         oldest_received_at_ms=q[3])
            for q in row[3]
        ),
    )
