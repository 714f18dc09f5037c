"""The writer's batched append (``_sqlite_ops.append_many``, ``SqliteEngine.write_many``).

A run of appends is executed as a handful of multi-row statements; its results must be
exactly those of the same appends run one by one. The reference is the in-memory store
(an independent implementation of the same contract), fed the same calls in order.
Scenarios mix what can happen inside one group-commit batch: wrong and missing
capabilities, a retiring mailbox, a mailbox at its quota, a recipient named twice, the
same ``client_msg_id`` twice in one run (a retry racing its original) and again in a
later run, multi-recipient sends that are partly duplicates.
"""

from __future__ import annotations

import asyncio
import hashlib
import random
import sqlite3
import threading
import time
from pathlib import Path

import pytest

from pigeon_crypto.errors import StoreError
from relay import _sqlite_ops as ops
from relay._sqlite_engine import SqliteEngine
from relay._sqlite_schema import MIGRATIONS
from relay._sqlite_txn import Synchronous, open_writer
from relay.ports import AppendRequest, AppendResult, Recipient, RecordingObserver
from relay.store_memory import MemoryStore
from relay.store_sqlite import SqliteStore

T0 = 1_700_000_000_000
DAY_MS = 86_400_000
ACCOUNT = bytes(16)
MAILBOXES = [bytes([i]) * 16 for i in range(1, 6)]
RETIRING = MAILBOXES[3]  # retires at T0 + 50
SMALL = MAILBOXES[4]     # max_pending 3 is reached here first
UNKNOWN = b"\xee" * 16


def cap(mailbox_id: bytes) -> bytes:
    return hashlib.sha256(b"cap" + mailbox_id).digest()


def random_calls(rng: random.Random, n: int, start: int) -> list[AppendRequest]:
    calls = []
    for i in range(n):
        k = rng.choice([1, 1, 1, 2, 3])
        recipients = []
        for _ in range(k):
            m = rng.choice([*MAILBOXES, UNKNOWN])
            good = rng.random() > 0.1
            recipients.append(Recipient(mailbox_id=m,
                                        capability_hash=cap(m) if good else cap(b"x" + m)))
        cmid = rng.randrange(12).to_bytes(16, "big")  # a small pool: many retries
        now = T0 + start + i
        calls.append(AppendRequest(tuple(recipients), cmid, b"blob %d" % (start + i), now,
                                    DAY_MS, rng.choice([None, 3, 1000]), DAY_MS))
    return calls


async def _reference(calls: list[AppendRequest]) -> tuple[list[AppendResult], MemoryStore]:
    store = MemoryStore()
    await store.create_account(account_id=ACCOUNT, identity_key=b"ik", now_ms=T0)
    for m in MAILBOXES:
        await store.create_mailbox(account_id=ACCOUNT, mailbox_id=m, capability_hash=cap(m),
                                   now_ms=T0)
    await store.rotate_mailbox(account_id=ACCOUNT, mailbox_id=RETIRING,
                               new_mailbox_id=b"\xaa" * 16, capability_hash=cap(b"new"),
                               retire_at_ms=T0 + 50, now_ms=T0)
    results = [await store.append(recipients=c.recipients, client_msg_id=c.client_msg_id,
                                  blob=c.blob, now_ms=c.now_ms, ttl_ms=c.ttl_ms,
                                  max_pending=c.max_pending, dedup_ttl_ms=c.dedup_ttl_ms)
               for c in calls]
    return results, store


async def _sqlite(path: Path) -> SqliteStore:
    store = await SqliteStore.open(path)
    await store.create_account(account_id=ACCOUNT, identity_key=b"ik", now_ms=T0)
    for m in MAILBOXES:
        await store.create_mailbox(account_id=ACCOUNT, mailbox_id=m, capability_hash=cap(m),
                                   now_ms=T0)
    await store.rotate_mailbox(account_id=ACCOUNT, mailbox_id=RETIRING,
                               new_mailbox_id=b"\xaa" * 16, capability_hash=cap(b"new"),
                               retire_at_ms=T0 + 50, now_ms=T0)
    return store


@pytest.mark.parametrize("seed", range(6))
@pytest.mark.parametrize("run", [1, 7, 40])
async def test_a_run_gives_what_one_by_one_gives(tmp_path: Path, seed: int, run: int) -> None:
    calls = random_calls(random.Random(seed), 120, 0)
    expected, memory = await _reference(calls)
    store = await _sqlite(tmp_path / "relay.db")
    await store.close()
    conn = sqlite3.connect(tmp_path / "relay.db", isolation_level=None)
    try:
        got: list[AppendResult] = []
        for i in range(0, len(calls), run):  # runs of `run` calls, each one transaction
            conn.execute("BEGIN IMMEDIATE")
            got += ops.append_many(conn, calls[i:i + run])
            conn.execute("COMMIT")
        assert got == expected
        for m in MAILBOXES:
            stored = ops.fetch(conn, m, 0, 1000, T0)
            assert stored == await memory.fetch(m, limit=1000, now_ms=T0)
            assert ops.pending_count(conn, m) == await memory.pending_count(m)
        # Blob rows are shared by the copies of one send and never orphaned.
        assert conn.execute("SELECT count(*) FROM blobs WHERE id NOT IN"
                            " (SELECT blob_id FROM deliveries)").fetchone() == (0,)
        # One record per send, retried or not (no primary key says so since schema v6).
        assert conn.execute("SELECT count(*) - count(DISTINCT send_hash)"
                            " FROM send_dedup").fetchone() == (0,)
    finally:
        conn.close()


def test_send_record_statements_use_the_key_index(tmp_path: Path) -> None:
    """Every statement on the send records finds them through an index: the table holds
    days of sends, and a scan of it on the write path would cost the writer per send."""
    conn = open_writer(tmp_path / "plan.db", Synchronous.FULL, 1000, MIGRATIONS)
    h = bytes(32)
    try:
        plans = {
            "lookup": (f"SELECT s.send_hash FROM {ops._send_keys(2)}", (h, h)),
            "lone lookup": (ops._ONE_LOOKUP, (bytes(16), h)),
            "extend": (ops._EXTEND_SEND, (1, h)),
            "sweep": (ops._SWEEP_SENDS, (1, 10)),
        }
        for what, (sql, args) in plans.items():
            steps = [r[3] for r in conn.execute("EXPLAIN QUERY PLAN " + sql, args)]
            assert not [s for s in steps if s.startswith("SCAN send_dedup")], (what, steps)
            assert any("send_dedup" in s and "INDEX" in s for s in steps), (what, steps)
    finally:
        conn.close()


async def test_runs_larger_than_one_statement_are_split(tmp_path: Path,
                                                        monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(ops, "_MAX_ROWS", 3)
    calls = random_calls(random.Random(99), 60, 0)
    expected, _ = await _reference(calls)
    store = await _sqlite(tmp_path / "relay.db")
    await store.close()
    conn = sqlite3.connect(tmp_path / "relay.db", isolation_level=None)
    try:
        conn.execute("BEGIN IMMEDIATE")
        assert ops.append_many(conn, calls) == expected
        conn.execute("COMMIT")
    finally:
        conn.close()


async def test_concurrent_appends_are_grouped_into_one_call(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    sizes: list[int] = []
    real = ops.append_many

    def counting(conn: sqlite3.Connection, calls: list[AppendRequest]
                 ) -> list[AppendResult]:
        sizes.append(len(calls))
        return real(conn, calls)

    monkeypatch.setattr(ops, "append_many", counting)
    store = await _sqlite(tmp_path / "relay.db")
    try:
        m = MAILBOXES[0]
        results = await asyncio.gather(*(
            store.append(recipients=[Recipient(mailbox_id=m, capability_hash=cap(m))],
                         client_msg_id=n.to_bytes(16, "big"), blob=b"x", now_ms=T0,
                         ttl_ms=DAY_MS) for n in range(300)))
        assert sorted(r.seq_for(m) or 0 for r in results) == list(range(1, 301))
        assert sum(sizes) == 300 and max(sizes) > 1  # grouped, each call counted once
    finally:
        await store.close()


async def test_a_failing_run_falls_back_to_one_op_at_a_time(tmp_path: Path) -> None:
    observer = RecordingObserver()
    engine = await SqliteEngine.open(tmp_path / "e.db", MIGRATIONS, observer=observer)
    calls: list[list[str]] = []

    def many(conn: sqlite3.Connection, args: list[str]) -> list[str]:
        calls.append(list(args))
        if "bad" in args:
            raise sqlite3.IntegrityError("boom")
        conn.execute("CREATE TABLE IF NOT EXISTS t (v TEXT)")
        conn.executemany("INSERT INTO t VALUES (?)", [(a,) for a in args])
        return [a.upper() for a in args]

    gate = threading.Event()

    def blocker(conn: sqlite3.Connection) -> None:
        gate.wait(10)  # holds the writer so that the next four queue up as one batch

    try:
        first = asyncio.ensure_future(engine.write("block", blocker))
        await asyncio.sleep(0.05)
        pending = asyncio.gather(
            *(engine.write_many("t", many, a) for a in ["a", "b", "bad", "c"]),
            return_exceptions=True)
        await asyncio.sleep(0.05)
        gate.set()
        await first
        results = await pending
        assert calls[0] == ["a", "b", "bad", "c"]  # tried as one run first
        assert results[:2] == ["A", "B"] and results[3] == "C"
        assert isinstance(results[2], StoreError)
        rows = await engine.read("r", lambda c: c.execute("SELECT v FROM t").fetchall())
        assert sorted(rows) == [("a",), ("b",), ("c",)]
    finally:
        await engine.close()


@pytest.mark.parametrize("variable_limit", [None, 9])
@pytest.mark.parametrize("seed", range(5))
async def test_a_run_of_acks_gives_what_one_by_one_gives(
        tmp_path: Path, seed: int, variable_limit: int | None) -> None:
    """*variable_limit*: SQLite's bound-parameter limit, 9 splitting the run's query
    and its DELETE into statements of two and four rows."""
    rng = random.Random(seed)
    calls = random_calls(rng, 150, 0)
    paths = [tmp_path / "one.db", tmp_path / "many.db"]
    for path in paths:
        store = await _sqlite(path)
        await store.close()
        conn = sqlite3.connect(path, isolation_level=None)
        conn.execute("BEGIN IMMEDIATE")
        ops.append_many(conn, calls)
        conn.execute("COMMIT")
        conn.close()
    acks: list[ops.AckRequest] = []
    for _ in range(12):
        m = rng.choice([*MAILBOXES, UNKNOWN])
        up = rng.choice([None, rng.randrange(0, 30)])
        seqs = tuple(rng.randrange(0, 30) for _ in range(rng.randrange(0, 5)))
        acks.append((m, up, seqs))
    one, many = (sqlite3.connect(p, isolation_level=None) for p in paths)
    if variable_limit is not None:
        many.setlimit(sqlite3.SQLITE_LIMIT_VARIABLE_NUMBER, variable_limit)
    try:
        expected = [ops.ack(one, m, up, seqs) for m, up, seqs in acks]
        many.execute("BEGIN IMMEDIATE")
        got = ops.ack_many(many, acks)
        many.execute("COMMIT")
        assert got == expected and sum(got) > 0
        query = ("SELECT mailbox_id, seq, blob_id FROM deliveries ORDER BY 1, 2",
                 "SELECT id, pending, last_seq FROM mailboxes ORDER BY 1",
                 "SELECT id FROM blobs ORDER BY 1")
        for sql in query:
            assert many.execute(sql).fetchall() == one.execute(sql).fetchall()
    finally:
        one.close()
        many.close()


async def test_without_json_functions_the_results_are_the_same(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(ops, "_JSON", False)  # SQLite before 3.38
    for sub in ("a", "b"):
        (tmp_path / sub).mkdir()
    await test_a_run_gives_what_one_by_one_gives(tmp_path / "a", 3, 40)
    await test_a_run_of_acks_gives_what_one_by_one_gives(tmp_path / "b", 3, None)


async def test_interleaved_acks_and_appends_regroup_into_one_run_each(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    calls: list[tuple[str, int]] = []
    real_append, real_ack = ops.append_lists, ops.ack_many

    def appends(conn: sqlite3.Connection, lists: list[list[AppendRequest]]
                ) -> list[list[AppendResult]]:
        calls.append(("append", len(lists)))
        return real_append(conn, lists)

    def acks(conn: sqlite3.Connection, args: list[ops.AckRequest]) -> list[int]:
        calls.append(("ack", len(args)))
        return real_ack(conn, args)

    monkeypatch.setattr(ops, "append_lists", appends)
    monkeypatch.setattr(ops, "ack_many", acks)
    store = await _sqlite(tmp_path / "relay.db")
    rcpt = [Recipient(mailbox_id=m, capability_hash=cap(m)) for m in MAILBOXES[:3]]
    try:
        for r in rcpt:  # seq 1 in each mailbox, to be acked
            await store.append(recipients=[r], client_msg_id=b"\x01" * 16, blob=b"old",
                               now_ms=T0, ttl_ms=DAY_MS)
        calls.clear()
        started = threading.Event()

        def hold(conn: sqlite3.Connection) -> None:
            started.set()
            time.sleep(0.3)  # everything below queues behind this op: one batch

        held = asyncio.ensure_future(store._engine.write("hold", hold))
        await asyncio.to_thread(started.wait)
        ops_in_order = []
        for r in rcpt:  # ack, append, ack, append, ...
            ops_in_order.append(store.ack(r.mailbox_id, up_to_seq=1))
            ops_in_order.append(store.append(recipients=[r], client_msg_id=b"\x02" * 16,
                                             blob=b"new", now_ms=T0 + 1, ttl_ms=DAY_MS))
        results = await asyncio.gather(held, *ops_in_order)
        assert calls == [("ack", 3), ("append", 3)]
        assert results[1::2] == [1, 1, 1]  # each ack removed seq 1
        assert [r.seq_for(m.mailbox_id) for r, m in zip(results[2::2], rcpt, strict=True)
                ] == [2, 2, 2]
        for r in rcpt:
            assert await store.pending_count(r.mailbox_id) == 1
    finally:
        await store.close()


class _Spy:
    """A connection that records the SQL it runs."""

    def __init__(self, conn: sqlite3.Connection) -> None:
        self.conn = conn
        self.sql: list[str] = []

    def execute(self, sql: str, *args: object) -> sqlite3.Cursor:
        self.sql.append(sql)
        return self.conn.execute(sql, *args)

    def executemany(self, sql: str, rows: object) -> sqlite3.Cursor:
        self.sql.append(sql)
        return self.conn.executemany(sql, rows)  # type: ignore[arg-type]

    def getlimit(self, what: int) -> int:
        return self.conn.getlimit(what)

    def looked_up_dedup(self) -> bool:
        found = any("JOIN dedup" in s or "FROM dedup" in s for s in self.sql)
        self.sql.clear()
        return found


def _append(spy: _Spy, recipients: list[bytes], cmid: int, now: int) -> AppendResult:
    spy.conn.execute("BEGIN IMMEDIATE")
    result = ops.append_many(spy, [AppendRequest(  # type: ignore[arg-type]
        tuple(Recipient(mailbox_id=m, capability_hash=cap(m)) for m in recipients),
        cmid.to_bytes(16, "big"), b"blob", now, DAY_MS, None, 2 * DAY_MS)])[0]
    spy.conn.execute("COMMIT")
    return result


async def test_a_send_without_a_record_needs_no_dedup_lookup(tmp_path: Path) -> None:
    """Schema v4: every send's first copies are named by its send record (a single
    recipient's too), so only a retry, whose record exists, looks up `dedup` rows, which
    are written only for copies added under an existing record."""
    await (await _sqlite(tmp_path / "relay.db")).close()
    spy = _Spy(sqlite3.connect(tmp_path / "relay.db", isolation_level=None))
    try:
        a, b, c = MAILBOXES[:3]
        first = _append(spy, [a, b], 1, T0)
        assert not spy.looked_up_dedup()
        assert not _append(spy, [c], 2, T0 + 1).accepted[0].duplicate
        assert not spy.looked_up_dedup()
        assert spy.conn.execute("SELECT count(*) FROM dedup").fetchone() == (0,)
        assert spy.conn.execute("SELECT count(*) FROM send_dedup").fetchone() == (2,)
        # A retry to a larger set: the record exists, so the lookup runs; c's copy is
        # new and gets a dedup row with its own times; the record lives as long.
        retry = _append(spy, [a, b, c], 1, T0 + 5)
        assert spy.looked_up_dedup()
        assert [(r.seq, r.duplicate) for r in retry.accepted] == [
            (1, True), (1, True), (2, False)]
        assert spy.conn.execute("SELECT keep_until_ms FROM dedup").fetchall() == [
            (T0 + 5 + 2 * DAY_MS,)]
        assert spy.conn.execute("SELECT max(keep_until_ms) FROM send_dedup").fetchone() == (
            T0 + 5 + 2 * DAY_MS,)
        again = _append(spy, [c], 1, T0 + 9)  # c's copy answers with its own times
        assert [(r.seq, r.duplicate) for r in again.accepted] == [(2, True)]
        assert again.received_at_ms == T0 + 5 != first.received_at_ms
        assert _append(spy, [b], 2, T0 + 9).accepted[0].duplicate is False  # c only had 2
    finally:
        spy.conn.close()


async def test_rows_of_older_versions_are_looked_up_until_they_expire(tmp_path: Path) -> None:
    """A database upgraded to v4 keeps answering from its older `dedup` rows: every send
    looks them up until the latest keep_until among them (``dedup_legacy_until``)."""
    await (await _sqlite(tmp_path / "relay.db")).close()
    spy = _Spy(sqlite3.connect(tmp_path / "relay.db", isolation_level=None))
    try:
        a, b = MAILBOXES[:2]
        key = hashlib.sha256(b"\x01" + a + (7).to_bytes(16, "big")).digest()
        spy.conn.execute("INSERT INTO dedup VALUES (?, ?, 9, ?, ?, ?)",
                         (a, key, T0, T0 + DAY_MS, T0 + 100))
        spy.conn.execute("UPDATE counters SET value = ? WHERE name = 'dedup_legacy_until'",
                         (T0 + 100,))
        retry = _append(spy, [a, b], 7, T0 + 10)  # no record: found by the old row
        assert spy.looked_up_dedup()
        assert [(r.seq, r.duplicate) for r in retry.accepted] == [(9, True), (1, False)]
        _append(spy, [a], 8, T0 + 20)
        assert spy.looked_up_dedup()
        _append(spy, [a], 9, T0 + 100)  # past the window: records only
        assert not spy.looked_up_dedup()
    finally:
        spy.conn.close()


async def test_a_lone_message_to_one_mailbox_takes_five_short_statements(
    tmp_path: Path,
) -> None:
    """The commonest lone write (a message between two people) skips the run machinery:
    one lookup row, then an INSERT per table and a plain counter UPDATE; its results and
    rows are those of the general path (``test_a_run_gives_what_one_by_one_gives`` with
    runs of one)."""
    await (await _sqlite(tmp_path / "relay.db")).close()
    spy = _Spy(sqlite3.connect(tmp_path / "relay.db", isolation_level=None))
    try:
        a = MAILBOXES[0]
        assert _append(spy, [a], 1, T0).accepted[0].seq == 1
        statements = [s.split()[0] + " " + s.split()[1] for s in spy.sql]
        assert statements == ["SELECT m.capability_hash,", "INSERT INTO", "INSERT INTO",
                              "INSERT INTO", "UPDATE mailboxes"], spy.sql
        assert not any("json" in s or "FROM (VALUES" in s for s in spy.sql)
        spy.sql.clear()
        assert _append(spy, [a], 1, T0 + 1).accepted[0].duplicate  # a retry: no rows
        assert [s.split()[0] for s in spy.sql] == ["SELECT", "SELECT"]  # + its dedup row
        blob_ids = spy.conn.execute("SELECT blob_id FROM deliveries").fetchall()
        assert blob_ids == spy.conn.execute("SELECT id FROM blobs").fetchall() == [(1,)]
    finally:
        spy.conn.close()


def test_placeholder_rows_are_cached_only_for_common_batch_sizes() -> None:
    ops._cached_rows.cache_clear()
    assert ops._rows(2, 3) == "(?,?,?),(?,?,?)"
    assert ops._rows(2, 3) is ops._rows(2, 3)
    big = ops._CACHED_ROWS + 1
    assert ops._rows(big, 4) == ",".join(["(?,?,?,?)"] * big)
    info = ops._cached_rows.cache_info()
    assert (info.misses, info.currsize) == (1, 1)  # the long list was built, not kept


@pytest.mark.parametrize("variable_limit", [None, 9])
async def test_ownership_of_a_long_list_within_the_variable_limit(
        tmp_path: Path, variable_limit: int | None) -> None:
    """``owned_mailboxes`` splits a ``Subscribe``'s ids into statements SQLite accepts."""
    store = await _sqlite(tmp_path / "r.db")  # ACCOUNT owns MAILBOXES
    await store.close()
    conn = sqlite3.connect(tmp_path / "r.db")
    if variable_limit is not None:
        conn.setlimit(sqlite3.SQLITE_LIMIT_VARIABLE_NUMBER, variable_limit)
    try:
        asked = [*MAILBOXES, *(i.to_bytes(16, "big") for i in range(1000))]
        assert ops.owned_mailboxes(conn, ACCOUNT, asked) == set(MAILBOXES)
        assert ops.owned_mailboxes(conn, b"\x09" * 16, asked) == set()
    finally:
        conn.close()
