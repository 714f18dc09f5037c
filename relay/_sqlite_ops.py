"""The SQL behind :class:`relay.store_sqlite.SqliteStore`: mailboxes, messages, queues.

Each function takes a connection that is already inside a transaction (the writer's
group-commit batch, or a reader's snapshot) and never commits. Write functions raise the
``relay.ports`` errors for expected refusals and must be pure functions of the connection
(the engine may run one twice); the engine wraps anything raised by sqlite3 into
``StoreError``. Accounts, prekeys, usernames and invites are in ``_sqlite_accounts``.
"""

from __future__ import annotations

import functools
import hashlib
import hmac
import json
import sqlite3
from collections.abc import Iterator, Sequence, Sized
from typing import Any, Final, TypeVar

from protocol import dedup_input

from ._append_plan import (
    _ENTRY,
    AppendPlan,
    Box,
    SendRecord,
    _entries,
    accepts,
    plan,
    prepare,
)
from ._sqlite_accounts import account_exists
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
_MAX_ROWS = 4096
"""Most rows per multi-row statement (bounds one statement's text and bound values)."""
_UPDATE_FROM = sqlite3.sqlite_version_info >= (3, 33, 0)
_JSON = sqlite3.sqlite_version_info >= (3, 38, 0)
"""JSON functions are built in from SQLite 3.38 (``ack_many`` falls back to one DELETE
per call before)."""
"""``UPDATE ... FROM`` (one statement for every counter of a run) needs SQLite 3.33."""

_LONE = True
"""Whether a lone single-recipient append takes :func:`_append_one` (off only to measure
it against the general path: ``python -m bench.relay_writer``)."""

R = TypeVar("R")
_T = TypeVar("_T")


def dedup_hash(mailbox_id: bytes, client_msg_id: bytes) -> bytes:
    """What the store keeps for idempotency (docs/protocol.md: ``dedup_input``)."""
    return hashlib.sha256(dedup_input(mailbox_id, client_msg_id)).digest()


_LEGACY_SQL = "SELECT value FROM counters WHERE name = 'dedup_legacy_until'"
"""Until when ``dedup`` rows of schema versions before 4 may answer retries (set by the
version 4 migration: the latest ``keep_until_ms`` among them; 0 for a new database)."""


def _mailbox(row: Any) -> MailboxRecord:
    return MailboxRecord(
        mailbox_id=bytes(row[0]),
        account_id=bytes(row[1]),
        created_at_ms=row[2],
        last_seq=row[3],
        pending=row[4],
        retire_at_ms=row[5],
        push_url=row[6],
    )


# --------------------------------------------------------------------------- mailboxes


def create_mailbox(
    conn: sqlite3.Connection,
    account_id: bytes,
    mailbox_id: bytes,
    capability_hash: bytes,
    now_ms: int,
    push_url: str | None = None,
) -> MailboxRecord:
    if not account_exists(conn, account_id):
        raise NotFound("account")
    if conn.execute("SELECT 1 FROM mailboxes WHERE id = ?", (mailbox_id,)).fetchone():
        raise StoreConflict("mailbox")
    serial = conn.execute("UPDATE counters SET value = value + 1"
                          " WHERE name = 'mailbox_serial' RETURNING value").fetchone()[0]
    conn.execute(
        "INSERT INTO mailboxes (id, account_id, capability_hash, created_at_ms, push_url,"
        " serial) VALUES (?, ?, ?, ?, ?, ?)",
        (mailbox_id, account_id, capability_hash, now_ms, push_url, serial),
    )
    return MailboxRecord(
        mailbox_id=mailbox_id,
        account_id=account_id,
        created_at_ms=now_ms,
        last_seq=0,
        pending=0,
        retire_at_ms=None,
        push_url=push_url,
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


def count_mailboxes(conn: sqlite3.Connection, account_id: bytes) -> int:
    return int(conn.execute("SELECT count(*) FROM mailboxes WHERE account_id = ?",
                            (account_id,)).fetchone()[0])


def owned_mailboxes(
    conn: sqlite3.Connection, account_id: bytes, mailbox_ids: Sequence[bytes]
) -> set[bytes]:
    found: set[bytes] = set()
    ids = list(dict.fromkeys(mailbox_ids))
    step = max(1, _chunks(conn, 1) - 1)  # and the account id
    for at in range(0, len(ids), step):
        chunk = ids[at:at + step]
        found.update(bytes(r[0]) for r in conn.execute(
            "SELECT id FROM mailboxes WHERE account_id = ? AND id IN"  # noqa: S608
            f" ({','.join('?' * len(chunk))})", (account_id, *chunk)))
    return found


def rotate_mailbox(
    conn: sqlite3.Connection,
    account_id: bytes,
    mailbox_id: bytes,
    new_mailbox_id: bytes,
    capability_hash: bytes,
    retire_at_ms: int,
    now_ms: int,
) -> MailboxRecord:
    old = get_mailbox(conn, mailbox_id)
    if old is None or old.account_id != account_id:
        raise NotFound("mailbox")
    if old.retire_at_ms is not None:  # a repeat: the mailbox it created, if any
        row = conn.execute(
            f"SELECT {_MAILBOX_COLS} FROM mailboxes WHERE account_id = ?"  # noqa: S608
            " AND capability_hash = ? AND id != ? ORDER BY created_at_ms DESC LIMIT 1",
            (account_id, capability_hash, mailbox_id),
        ).fetchone()
        if row is None:
            raise NotFound("mailbox")
        return _mailbox(row)
    new = create_mailbox(
        conn, account_id, new_mailbox_id, capability_hash, now_ms, push_url=old.push_url
    )
    conn.execute("UPDATE mailboxes SET retire_at_ms = ? WHERE id = ?", (retire_at_ms, mailbox_id))
    return new


def replace_capability(
    conn: sqlite3.Connection, account_id: bytes, mailbox_id: bytes, capability_hash: bytes
) -> None:
    cur = conn.execute(
        "UPDATE mailboxes SET capability_hash = ? WHERE id = ? AND account_id = ?",
        (capability_hash, mailbox_id, account_id),
    )
    if cur.rowcount != 1:
        raise NotFound("mailbox")


def set_contact_mailbox(
    conn: sqlite3.Connection, account_id: bytes, mailbox_id: bytes, capability: bytes
) -> None:
    row = conn.execute(
        "SELECT capability_hash FROM mailboxes WHERE id = ? AND account_id = ?",
        (mailbox_id, account_id),
    ).fetchone()
    if row is None:
        raise NotFound("mailbox")
    if not hmac.compare_digest(bytes(row[0]), hashlib.sha256(capability).digest()):
        raise WrongCapability()
    conn.execute(
        "UPDATE accounts SET contact_mailbox_id = ?, contact_capability = ? WHERE id = ?",
        (mailbox_id, capability, account_id),
    )


def set_push_url(
    conn: sqlite3.Connection, account_id: bytes, mailbox_ids: Sequence[bytes], push_url: str | None
) -> None:
    for mailbox_id in mailbox_ids:
        cur = conn.execute(
            "UPDATE mailboxes SET push_url = ? WHERE id = ? AND account_id = ?",
            (push_url, mailbox_id, account_id),
        )
        if cur.rowcount != 1:
            raise NotFound("mailbox")  # the engine rolls back the ones already set


def delete_mailbox(conn: sqlite3.Connection, account_id: bytes, mailbox_id: bytes) -> bool:
    cur = conn.execute(
        "DELETE FROM mailboxes WHERE id = ? AND account_id = ?", (mailbox_id, account_id)
    )
    return cur.rowcount == 1


def check_capabilities(
    conn: sqlite3.Connection, recipients: Sequence[Recipient], now_ms: int
) -> frozenset[bytes]:
    ok: set[bytes] = set()
    for r in recipients:
        row = conn.execute(
            "SELECT capability_hash, retire_at_ms FROM mailboxes WHERE id = ?", (r.mailbox_id,)
        ).fetchone()
        if accepts(row, r, now_ms):
            ok.add(r.mailbox_id)
    return frozenset(ok)


# --------------------------------------------------------------------------- messages


_CACHED_ROWS = 256
"""Placeholder lists for up to this many rows are kept (the common batch sizes); a
longer one (a chunk of a large batch) is built each time rather than kept."""


@functools.lru_cache(maxsize=512)
def _cached_rows(n: int, cols: int) -> str:
    one = "(" + ",".join("?" * cols) + ")"
    return ",".join([one] * n)


def _rows(n: int, cols: int) -> str:
    """``(?,?),(?,?)...``: *n* rows of *cols* placeholders."""
    if n > _CACHED_ROWS:
        return _cached_rows.__wrapped__(n, cols)
    return _cached_rows(n, cols)


def _chunks(conn: sqlite3.Connection, cols: int) -> int:
    """Rows per multi-row statement: within SQLite's bound-parameter limit."""
    return max(1, min(_MAX_ROWS, conn.getlimit(sqlite3.SQLITE_LIMIT_VARIABLE_NUMBER) // cols))


_SEND_KEY: Final = 8
"""Bytes of a send record's key in ``send_dedup.send_key``, its lookup index (schema v6)."""


def _send_keys(n: int) -> str:
    """``FROM`` the send records of *n* keys bound as parameters: probes the small
    ``send_key`` index, then compares the whole key."""
    return (f"(VALUES {_rows(n, 1)}) k JOIN send_dedup s"
            f" ON s.send_key = substr(k.column1, 1, {_SEND_KEY}) AND s.send_hash = k.column1")


_EXTEND_SEND: Final = (
    "UPDATE send_dedup SET keep_until_ms = max(keep_until_ms, ?1)"  # noqa: S608
    f" WHERE send_key = substr(?2, 1, {_SEND_KEY}) AND send_hash = ?2")
"""A retry added copies under a send's record: it is kept as long as they are."""
_SWEEP_SENDS: Final = (
    "DELETE FROM send_dedup WHERE id IN ("
    " SELECT id FROM send_dedup WHERE keep_until_ms <= ? LIMIT ?)")
"""The expiry sweep's part of the send records, at most ``LIMIT`` of them a call."""


def _slices(items: Sequence[_T], size: int) -> Iterator[Sequence[_T]]:
    """*items* in consecutive slices of at most *size*."""
    for i in range(0, len(items), size):
        yield items[i:i + size]


def _parts(conn: sqlite3.Connection, rows: Sequence[tuple[Any, ...]], cols: int,
           ) -> Iterator[tuple[int, list[Any]]]:
    """*rows* of *cols* values in statement-sized parts: ``(rows in the part, its values
    flattened)``, for a ``VALUES`` list of ``_rows(n, cols)``."""
    for part in _slices(rows, _chunks(conn, cols)):
        yield len(part), [v for row in part for v in row]


def _insert_rows(conn: sqlite3.Connection, head: str, rows: list[tuple[Any, ...]],
                 cols: int) -> None:
    if len(rows) == 1:
        conn.execute(head + _rows(1, cols), rows[0])
        return
    for n, values in _parts(conn, rows, cols):
        conn.execute(head + _rows(n, cols), values)


def append_many(conn: sqlite3.Connection, calls: Sequence[AppendRequest]) -> list[AppendResult]:
    """Run *calls* (appends queued one after the other) in a handful of statements.

    The result is exactly that of running them one by one in order: the same capability,
    retirement, quota and idempotency decisions and the same seqs. Instead of five
    statements per copy (one lookup, the blob, the seq counter, the delivery row, the
    dedup row), the whole run costs one lookup of every mailbox named, one lookup of
    every dedup key, then one multi-row INSERT per table and one UPDATE of the counters.
    Every statement releases the GIL while SQLite works, so fewer, larger statements
    leave the event loop more room and hand the GIL back and forth less.

    Blob ids are allocated here (one past the highest in use: this runs inside the
    writer's ``BEGIN IMMEDIATE``, so nobody else allocates meanwhile), so the blob rows
    go in one statement too.
    """
    if not calls:
        return []
    if _LONE and len(calls) == 1 and len(calls[0].recipients) == 1:
        return [_append_one(conn, calls[0])]
    # 1. What the run needs to know: every mailbox named, every send record of the
    # client_msg_ids, and the (mailbox, dedup key) rows of the calls that may have some.
    lookups = prepare(calls)
    keys = lookups.keys
    cmids = lookups.cmids
    # Every call's send record is looked up (a retry must find its copies). Hits are rare
    # (retries): with JSON, the lookup rides along in the mailbox statement, and so does
    # the time until which `dedup` rows written before schema v4 may still answer.
    sends: dict[bytes, SendRecord] = {}
    skeys = list(cmids.values())
    sends_done = False
    legacy_until: int | None = None
    boxes: dict[bytes, Box] = {}
    ids = list(lookups.mailbox_ids)
    step1 = _chunks(conn, 1)
    for part in _slices(ids, step1):
        marks = ",".join("?" * len(part))
        if _JSON:  # one row: each row of a result would hand the GIL back and forth
            sql = (
                "SELECT (SELECT json_group_array(json_array(hex(id), hex(capability_hash),"  # noqa: S608
                " retire_at_ms, pending, last_seq, serial))"
                f" FROM mailboxes WHERE id IN ({marks})), ({_LEGACY_SQL})"
            )
            args: Sequence[bytes] = part
            if not sends_done and len(part) + len(skeys) <= step1:
                sql += (", (SELECT json_group_array(json_array(hex(s.send_hash),"  # noqa: S608
                        " s.received_at_ms, s.expires_at_ms, hex(s.entries)))"
                        f" FROM {_send_keys(len(skeys))})")
                args = [*part, *skeys]
            found = conn.execute(sql, args).fetchone()
            rows = [(bytes.fromhex(r[0]), bytes.fromhex(r[1]), *r[2:])
                    for r in json.loads(found[0])]
            legacy_until = found[1]
            if len(found) > 2:
                sends_done = True
                for h, received, expires, entries in json.loads(found[2]):
                    sends[bytes.fromhex(h)] = (received, expires,
                                               _entries(bytes.fromhex(entries)))
        else:
            sql = ("SELECT id, capability_hash, retire_at_ms, pending, last_seq, serial"  # noqa: S608
                   f" FROM mailboxes WHERE id IN ({marks})")
            rows = [(bytes(r[0]), bytes(r[1]), *r[2:]) for r in conn.execute(sql, part)]
        for row in rows:
            # [capability hash, retire_at_ms, pending, last_seq, new copies in this run,
            #  serial]
            boxes[row[0]] = [row[1], row[2], row[3], row[4], 0, row[5]]
    if not sends_done:
        for part in _slices(skeys, step1):
            sql = ("SELECT s.send_hash, s.received_at_ms, s.expires_at_ms, s.entries"  # noqa: S608
                   f" FROM {_send_keys(len(part))}")
            for row in conn.execute(sql, part):
                sends[bytes(row[0])] = (row[1], row[2], _entries(bytes(row[3])))
    if legacy_until is None:
        legacy_until = conn.execute(_LEGACY_SQL).fetchone()[0]
    # Since schema v4 every send's first copies are named by its send record, and `dedup`
    # rows are written only for copies added under a client_msg_id that already has one:
    # a call needs the (mailbox, dedup key) lookup only when its record exists, or while
    # rows of older versions may still answer (until the latest of their keep_until).
    pairs: list[bytes] = []
    for call, mine in zip(calls, keys, strict=True):
        if cmids[call.client_msg_id] in sends or call.now_ms < (legacy_until or 0):
            for r, key in mine:
                pairs += (r.mailbox_id, key)
    known: dict[tuple[bytes, bytes], tuple[int, int, int]] = {}
    for part in _slices(pairs, _chunks(conn, 2) * 2):  # flat (mailbox, key) pairs
        sql = (
            f"WITH k(m, h) AS (VALUES {_rows(len(part) // 2, 2)})"  # noqa: S608 - placeholders
            " SELECT d.mailbox_id, d.dedup_hash, d.seq, d.received_at_ms, d.expires_at_ms"
            " FROM k JOIN dedup d ON d.mailbox_id = k.m AND d.dedup_hash = k.h"
        )
        for row in conn.execute(sql, part):
            known[(bytes(row[0]), bytes(row[1]))] = (row[2], row[3], row[4])
    # 2. The decisions, call by call, in order (a later call sees the earlier ones).
    # Blob ids are one past the highest in use, asked only when a blob is stored.
    top: list[int] = []

    def blob_base() -> int:
        top.append(conn.execute("SELECT coalesce(max(id), 0) FROM blobs").fetchone()[0])
        return top[0]

    out = plan(calls, lookups, boxes, sends, known, blob_base)
    # 3. The writes: one multi-row statement per table (chunked at the parameter limit).
    if out.blobs:
        _write_plan(conn, out, boxes, top[0])
    return out.results


def _write_plan(conn: sqlite3.Connection, out: AppendPlan, boxes: dict[bytes, Box],
                base: int | None) -> None:
    """The rows of *out*, one multi-row statement per table. *base*: the blob ids are
    ``base + 1, base + 2, ...``, as the plan numbered them; None: a lone blob without an
    id yet (SQLite gives it one, and the delivery rows are pointed at it)."""
    deliveries = out.deliveries
    if base is None:
        blob = out.blobs[0]
        blob_id = conn.execute("INSERT INTO blobs (size, data) VALUES (?, ?)",
                               (len(blob), blob)).lastrowid
        assert blob_id is not None
        deliveries = [(m, q, blob_id, t, e) for m, q, _, t, e in deliveries]
    else:
        _insert_rows(conn, "INSERT INTO blobs (id, size, data) VALUES ",
                     [(base + i, len(data), data) for i, data in enumerate(out.blobs, 1)],
                     3)
    _insert_rows(conn, "INSERT INTO deliveries"
                 " (mailbox_id, seq, blob_id, received_at_ms, expires_at_ms) VALUES ",
                 deliveries, 5)
    if out.dedup_rows:
        _insert_rows(conn, "INSERT INTO dedup (mailbox_id, dedup_hash, seq,"
                     " received_at_ms, expires_at_ms, keep_until_ms) VALUES ",
                     out.dedup_rows, 6)
    if out.send_rows:
        _insert_rows(conn, "INSERT INTO send_dedup (send_key, send_hash, received_at_ms,"
                     " expires_at_ms, keep_until_ms, entries) VALUES ",
                     [(row[0][:_SEND_KEY], *row) for row in out.send_rows], 6)
    if out.extended:
        conn.executemany(_EXTEND_SEND, [(k, h) for h, k in out.extended.items()])
    counters = [(m, b[3], b[4]) for m, b in boxes.items() if b[4]]
    if _UPDATE_FROM and len(counters) > 1:
        for n, values in _parts(conn, counters, 3):
            sql = (
                "UPDATE mailboxes SET last_seq = v.column2, pending = pending + v.column3"  # noqa: S608 - placeholders
                f" FROM (VALUES {_rows(n, 3)}) AS v"
                " WHERE mailboxes.id = v.column1"
            )
            conn.execute(sql, values)
    else:
        conn.executemany(
            "UPDATE mailboxes SET last_seq = ?, pending = pending + ? WHERE id = ?",
            [(seq, n, m) for m, seq, n in counters],
        )


_ONE_LOOKUP = (
    "SELECT m.capability_hash, m.retire_at_ms, m.pending, m.last_seq, m.serial,"  # noqa: S608
    f" ({_LEGACY_SQL}), s.received_at_ms, s.expires_at_ms, s.entries"
    " FROM (SELECT 1) LEFT JOIN mailboxes m ON m.id = ?1"
    f" LEFT JOIN send_dedup s ON s.send_key = substr(?2, 1, {_SEND_KEY}) AND s.send_hash = ?2"
)
"""What a lone single-recipient append must know, in one row: the mailbox, the time
until which pre-v4 ``dedup`` rows may answer, and the send record (NULLs when absent)."""


def _append_one(conn: sqlite3.Connection, call: AppendRequest) -> AppendResult:
    """:func:`append_many` for one call to one mailbox (a message between two people on a
    relay that is not busy: the commonest lone write). The same lookups, decisions
    (``plan``) and rows, in short statements: one lookup row, the dedup row only when a
    retry may have one, then an INSERT per table and a plain UPDATE of the counter.
    The general path's multi-row statements, JSON and ``UPDATE ... FROM`` pay off over
    many rows; for one they cost about twice as much as the work itself."""
    lookups = prepare([call])
    (r, key), = lookups.keys[0]
    skey = lookups.cmids[call.client_msg_id]
    row = conn.execute(_ONE_LOOKUP, (r.mailbox_id, skey)).fetchone()
    boxes: dict[bytes, Box] = {}
    if row[0] is not None:
        boxes[r.mailbox_id] = [bytes(row[0]), row[1], row[2], row[3], 0, row[4]]
    sends: dict[bytes, SendRecord] = {}
    if row[6] is not None:
        sends[skey] = (row[6], row[7], _entries(bytes(row[8])))
    known: dict[tuple[bytes, bytes], tuple[int, int, int]] = {}
    if skey in sends or call.now_ms < (row[5] or 0):
        found = conn.execute(
            "SELECT seq, received_at_ms, expires_at_ms FROM dedup"
            " WHERE mailbox_id = ? AND dedup_hash = ?", (r.mailbox_id, key)).fetchone()
        if found is not None:
            known[(r.mailbox_id, key)] = (found[0], found[1], found[2])
    out = plan([call], lookups, boxes, sends, known)
    if out.blobs:
        _write_plan(conn, out, boxes, None)
    return out.results[0]


def append_lists(conn: sqlite3.Connection, lists: Sequence[Sequence[AppendRequest]]
                 ) -> list[list[AppendResult]]:
    """:func:`append_many` over several callers' lists at once; results split back."""
    flat = [request for requests in lists for request in requests]
    return _split_back(lists, append_many(conn, flat))


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




def ack_many(conn: sqlite3.Connection, calls: Sequence[AckRequest]) -> list[int]:
    """:func:`ack` for each call, in order, in two statements instead of one per call.

    First one query lists every queued ``(call, seq)`` the calls name, as one JSON row
    (one step: a statement's rows would each hand the GIL back and forth); each row is
    counted for the first call that names it, which is what running the calls one by
    one would report. Then one DELETE removes them all (the ``deliveries_gone`` trigger
    still keeps the counters and drops unreferenced blobs, row by row, inside SQLite).
    """
    if len(calls) == 1 or not _JSON:
        return [ack(conn, m, up, seqs) for m, up, seqs in calls]
    rows: list[tuple[int, bytes, int | None, int | None]] = []
    for i, (mailbox_id, up_to_seq, seqs) in enumerate(calls):
        if up_to_seq is not None:
            rows.append((i, mailbox_id, up_to_seq, None))
        rows += [(i, mailbox_id, None, seq) for seq in set(seqs)]
    if not rows:
        return [0] * len(calls)
    found: list[list[int]] = []
    for n, values in _parts(conn, rows, 4):  # every query before any DELETE: one state
        sql = (
            f"WITH v(i, m, up, s) AS (VALUES {_rows(n, 4)})"  # noqa: S608 - placeholders
            " SELECT json_group_array(json_array(i, seq)) FROM ("
            " SELECT v.i AS i, d.seq AS seq FROM v JOIN deliveries d"
            " ON d.mailbox_id = v.m AND d.seq <= v.up WHERE v.up IS NOT NULL"
            " UNION ALL SELECT v.i, d.seq FROM v JOIN deliveries d"
            " ON d.mailbox_id = v.m AND d.seq = v.s WHERE v.s IS NOT NULL)"
        )
        found += json.loads(conn.execute(sql, values).fetchone()[0])
    counts = [0] * len(calls)
    gone: dict[tuple[bytes, int], None] = {}
    for i, seq in sorted(found):
        key = (calls[i][0], seq)
        if key not in gone:
            gone[key] = None
            counts[i] += 1
    for n, values in _parts(conn, list(gone), 2):
        sql = (
            "DELETE FROM deliveries WHERE (mailbox_id, seq) IN"  # noqa: S608 - placeholders
            f" (SELECT column1, column2 FROM (VALUES {_rows(n, 2)}))"
        )
        conn.execute(sql, values)
    return counts


def ack_lists(conn: sqlite3.Connection, lists: Sequence[Sequence[AckRequest]]
              ) -> list[list[int]]:
    """:func:`ack_many` over several callers' lists at once; results split back."""
    flat = [request for requests in lists for request in requests]
    return _split_back(lists, ack_many(conn, flat) if flat else [])


def _split_back(lists: Sequence[Sized], results: list[R]) -> list[list[R]]:
    """*results* of the concatenated *lists*, cut back into one list per input list."""
    out: list[list[R]] = []
    start = 0
    for requests in lists:
        out.append(results[start:start + len(requests)])
        start += len(requests)
    return out


def pending_count(conn: sqlite3.Connection, mailbox_id: bytes) -> int:
    row = conn.execute("SELECT pending FROM mailboxes WHERE id = ?", (mailbox_id,)).fetchone()
    return 0 if row is None else int(row[0])


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
        _add_to_notice(conn, mailbox_id, count, top)
    dedup = conn.execute(
        "DELETE FROM dedup WHERE (mailbox_id, dedup_hash) IN ("
        " SELECT mailbox_id, dedup_hash FROM dedup WHERE keep_until_ms <= ? LIMIT ?)",
        (now_ms, limit),
    ).rowcount
    send_records = conn.execute(
        _SWEEP_SENDS + " RETURNING length(entries)",
        (now_ms, limit),
    ).fetchall()
    retired = conn.execute(
        "DELETE FROM mailboxes WHERE id IN (SELECT id FROM mailboxes"
        " WHERE retire_at_ms <= ? AND pending = 0 ORDER BY retire_at_ms LIMIT ?) RETURNING id",
        (now_ms, limit),
    ).fetchall()
    return ExpiryReport(
        notices=tuple(
            ExpiryNotice(mailbox_id=m, count=c, up_to_seq=s)
            for m, (c, s) in sorted(per_mailbox.items())
        ),
        messages_removed=len(rows),
        # Counted per mailbox record, as the other adapters count them.
        dedup_removed=dedup + sum(n // _ENTRY for (n,) in send_records),
        retired=tuple(sorted(bytes(r[0]) for r in retired)),
        more=max(len(rows), dedup, len(send_records), len(retired)) >= limit,
    )


def expire_mailbox(conn: sqlite3.Connection, mailbox_id: bytes, now_ms: int) -> int:
    seqs = [r[0] for r in conn.execute(
        "DELETE FROM deliveries WHERE mailbox_id = ? AND expires_at_ms <= ? RETURNING seq",
        (mailbox_id, now_ms),
    ).fetchall()]
    if seqs:
        _add_to_notice(conn, mailbox_id, len(seqs), max(seqs))
    return len(seqs)


def _add_to_notice(conn: sqlite3.Connection, mailbox_id: bytes, count: int, top: int) -> None:
    """Record *count* envelopes up to seq *top* as expired unread (the stored notice)."""
    conn.execute(
        "UPDATE mailboxes SET expired_count = expired_count + ?,"
        " expired_up_to_seq = max(expired_up_to_seq, ?) WHERE id = ?",
        (count, top, mailbox_id),
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
        "SELECT m.id, m.account_id, m.pending,"
        " (SELECT min(received_at_ms) FROM deliveries d WHERE d.mailbox_id = m.id)"
        " FROM mailboxes m WHERE m.pending > 0 ORDER BY m.pending DESC, m.id LIMIT ?",
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
