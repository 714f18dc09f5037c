"""SQLite adapter specifics: group commit, PRAGMAs, migrations, errors, crash durability."""

from __future__ import annotations

import asyncio
import hashlib
import os
import signal
import sqlite3
import subprocess
import sys
import textwrap
import threading
import time
from collections.abc import AsyncIterator, Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest

from pigeon_crypto.errors import StoreError
from protocol import dedup_input
from relay._sqlite_txn import open_writer, run_batch
from relay.ports import Recipient, RecordingObserver, StoreConflict
from relay.store_sqlite import SCHEMA_VERSION, SqliteStore, Synchronous, WriterMode

REPO = Path(__file__).resolve().parents[3]
T0 = 1_700_000_000_000
DAY_MS = 86_400_000
ACCOUNT = bytes(16)
MAILBOX = b"\x01" * 16
CAP = hashlib.sha256(b"capability").digest()
RCPT = Recipient(mailbox_id=MAILBOX, capability_hash=CAP)


async def _setup(store: SqliteStore) -> None:
    await store.create_account(account_id=ACCOUNT, identity_key=b"ik", now_ms=T0)
    await store.create_mailbox(account_id=ACCOUNT, mailbox_id=MAILBOX, capability_hash=CAP,
                               now_ms=T0)


def _cmid(n: int) -> bytes:
    return n.to_bytes(16, "big")


async def _append(store: SqliteStore, n: int) -> int:
    r = await store.append(recipients=[RCPT], client_msg_id=_cmid(n), blob=b"m" * 200,
                           now_ms=T0, ttl_ms=DAY_MS)
    seq = r.seq_for(MAILBOX)
    assert seq is not None
    return seq


@pytest.fixture
def observer() -> RecordingObserver:
    return RecordingObserver()


@pytest.fixture
async def store(tmp_path: Path, observer: RecordingObserver) -> AsyncIterator[SqliteStore]:
    s = await SqliteStore.open(tmp_path / "relay.db", observer=observer)
    await _setup(s)
    observer.reset()
    try:
        yield s
    finally:
        await s.close()


async def test_concurrent_appends_share_transactions(
    store: SqliteStore, observer: RecordingObserver
) -> None:
    seqs = await asyncio.gather(*(_append(store, n) for n in range(200)))
    assert sorted(seqs) == list(range(1, 201))
    assert sum(observer.batch_sizes) == 200
    assert observer.commits < 200, observer.batch_sizes
    assert max(observer.batch_sizes) > 1
    assert observer.operations["append"] == 200
    assert store.pending_writes == 0


async def test_lone_append_commits_at_once_in_its_own_transaction(
    store: SqliteStore, observer: RecordingObserver
) -> None:
    # No timer by construction: the writer commits whatever is queued as soon as it is
    # free, so a lone write is a batch of one and each sequential write its own commit.
    start = time.perf_counter()
    await _append(store, 1)
    lone = time.perf_counter() - start
    assert observer.batch_sizes == [1]
    for n in range(2, 6):
        await _append(store, n)
    assert observer.batch_sizes == [1] * 5
    assert lone < 2.0  # generous: only catches a batching timer of human scale


async def test_max_batch_one_disables_group_commit(tmp_path: Path) -> None:
    obs = RecordingObserver()
    s = await SqliteStore.open(tmp_path / "one.db", max_batch=1, observer=obs)
    try:
        await _setup(s)
        obs.reset()
        await asyncio.gather(*(_append(s, n) for n in range(50)))
        assert obs.batch_sizes == [1] * 50
    finally:
        await s.close()


async def test_a_failing_write_spoils_nothing_else_in_its_batch(
    store: SqliteStore, observer: RecordingObserver
) -> None:
    appends = [_append(store, n) for n in range(40)]
    dup_account = store.create_account(account_id=ACCOUNT, identity_key=b"x", now_ms=T0)
    results = await asyncio.gather(*appends[:20], dup_account, *appends[20:],
                                   return_exceptions=True)
    assert isinstance(results[20], StoreConflict)
    seqs = [r for i, r in enumerate(results) if i != 20]
    assert sorted(seqs) == list(range(1, 41))  # type: ignore[type-var]
    assert observer.commits < 41
    assert observer.failed_commits == 0
    assert await store.pending_count(MAILBOX) == 40


async def test_a_failing_observer_breaks_nothing(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    class Broken(RecordingObserver):
        def on_commit(self, *, ops: int, seconds: float, ok: bool) -> None:
            raise RuntimeError("metrics backend down")

        def on_operation(self, *, name: str, seconds: float, ok: bool) -> None:
            raise RuntimeError("metrics backend down")

    s = await SqliteStore.open(tmp_path / "o.db", observer=Broken())
    try:
        await _setup(s)
        assert await asyncio.gather(*(_append(s, n) for n in range(10))) != []
        assert await s.pending_count(MAILBOX) == 10
    finally:
        await s.close()
    assert "store observer failed" in caplog.text


async def test_sqlite_errors_are_wrapped(store: SqliteStore) -> None:
    def bad(conn: sqlite3.Connection) -> None:
        conn.execute("INSERT INTO no_such_table VALUES (1)")

    with pytest.raises(StoreError) as info:
        await store._engine.write("bad", bad)
    assert isinstance(info.value.__cause__, sqlite3.OperationalError)
    with pytest.raises(StoreError):
        await store._engine.read("bad", bad)
    assert await _append(store, 1) == 1  # the writer survived


async def test_cancelled_append_still_commits_and_a_retry_is_idempotent(
    store: SqliteStore,
) -> None:
    task = asyncio.create_task(_append(store, 7))
    await asyncio.sleep(0)
    task.cancel()
    with pytest.raises(asyncio.CancelledError):
        await task
    retry = await store.append(recipients=[RCPT], client_msg_id=_cmid(7), blob=b"m" * 200,
                               now_ms=T0, ttl_ms=DAY_MS)
    assert retry.seq_for(MAILBOX) == 1
    assert await store.pending_count(MAILBOX) == 1


@pytest.mark.parametrize(("mode", "expected"), [
    (Synchronous.FULL, 2), (Synchronous.NORMAL, 1), (Synchronous.OFF, 0),
])
async def test_pragmas(tmp_path: Path, mode: Synchronous, expected: int) -> None:
    s = await SqliteStore.open(tmp_path / "p.db", synchronous=mode)
    try:
        def pragmas(conn: sqlite3.Connection) -> tuple[object, ...]:
            return tuple(
                conn.execute(f"PRAGMA {p}").fetchone()[0]
                for p in ("journal_mode", "synchronous", "foreign_keys", "secure_delete",
                          "busy_timeout")
            )

        assert await s._engine.write("pragmas", pragmas) == ("wal", expected, 1, 1, 5000)
        assert (await s._engine.read("pragmas", pragmas))[1:] == (expected, 1, 1, 5000)
    finally:
        await s.close()


def _sync_levels(conn: sqlite3.Connection, args: list[object]) -> list[int]:
    """A grouped write that reports the ``synchronous`` level its transaction commits at
    (module level: the writer process must unpickle it)."""
    level = conn.execute("PRAGMA synchronous").fetchone()[0]
    return [level] * len(args)


def _slow(conn: sqlite3.Connection, args: list[object]) -> list[int]:
    time.sleep(0.2)  # holds the writer, so that what is queued meanwhile shares a batch
    return _sync_levels(conn, args)


@pytest.mark.parametrize("writer", [WriterMode.THREAD, WriterMode.PROCESS])
async def test_a_batch_of_non_durable_writes_alone_commits_without_fsync(
    tmp_path: Path, writer: WriterMode
) -> None:
    """Acks are not durable writes (a lost one is a redelivery): a batch of nothing else
    commits at NORMAL, a batch with any durable write at the configured FULL, and so
    does every durable batch after a relaxed one."""
    s = await SqliteStore.open(tmp_path / "s.db", writer=writer)
    engine = s._engine
    try:
        assert await engine.write_many("a", _sync_levels, 0, durable=False) == 1
        assert await engine.write_many("d", _sync_levels, 0) == 2
        assert await engine.write_many("a", _sync_levels, 0, durable=False) == 1
        slow = asyncio.ensure_future(engine.write_many("d", _slow, 0))
        await asyncio.sleep(0.05)
        mixed = await asyncio.gather(engine.write_many("a", _sync_levels, 1, durable=False),
                                     engine.write_many("d", _sync_levels, 2))
        assert await slow == 2
        assert mixed == [2, 2]  # one batch: the durable write makes it FULL
        assert await engine.write_many("a", _sync_levels, 0, durable=False) == 1
        assert await engine.write_many("d", _sync_levels, 0) == 2
    finally:
        await s.close()


@pytest.mark.parametrize("mode", [Synchronous.NORMAL, Synchronous.OFF])
async def test_non_durable_writes_never_raise_the_configured_level(
    tmp_path: Path, mode: Synchronous
) -> None:
    s = await SqliteStore.open(tmp_path / "s.db", synchronous=mode)
    try:
        level = 1 if mode is Synchronous.NORMAL else 0
        assert await s._engine.write_many("a", _sync_levels, 0, durable=False) == level
        assert await s._engine.write_many("d", _sync_levels, 0) == level
    finally:
        await s.close()


async def test_acks_are_the_non_durable_writes(store: SqliteStore) -> None:
    seq = await _append(store, 1)
    seen: list[str] = []
    conn = store._engine._writer_conn
    assert conn is not None
    conn.set_trace_callback(seen.append)
    try:
        assert await store.ack(MAILBOX, up_to_seq=seq) == 1
        assert await store.ack(MAILBOX, up_to_seq=seq) == 0
        pragmas = [q for q in seen if q.startswith("PRAGMA")]
        assert pragmas == ["PRAGMA synchronous = NORMAL"]  # once: it lasts until needed
        seen.clear()
        await _append(store, 2)
        pragmas = [q for q in seen if q.startswith("PRAGMA")]
        assert pragmas == ["PRAGMA synchronous = FULL"] and seen[1] == "BEGIN IMMEDIATE"
        seen.clear()
        await _append(store, 3)
        assert not [q for q in seen if q.startswith("PRAGMA")]
    finally:
        conn.set_trace_callback(None)


@dataclass
class _Write:
    """A write as ``run_batch`` takes it (the engine's ``_Op`` without its future)."""

    name: str
    fn: Callable[[sqlite3.Connection], Any]
    many: None = None
    arg: None = None


@pytest.mark.parametrize(("mode", "relaxed_level"), [
    (Synchronous.FULL, 1), (Synchronous.NORMAL, 1), (Synchronous.OFF, 0)])
def test_a_relaxed_batch_only_ever_lowers_full(
    tmp_path: Path, mode: Synchronous, relaxed_level: int
) -> None:
    """``run_batch(relaxed=True)`` on its own (the engine asks for it only under FULL):
    FULL drops to NORMAL, and OFF is never raised to NORMAL."""
    conn = open_writer(tmp_path / "w.db", mode, 1000, [])
    levels: list[int] = []

    def level(c: sqlite3.Connection) -> None:
        levels.append(c.execute("PRAGMA synchronous").fetchone()[0])

    try:
        assert run_batch(conn, [_Write("ack", level)], relaxed=True)[0]
        assert run_batch(conn, [_Write("append", level)])[0]
        configured = {Synchronous.FULL: 2, Synchronous.NORMAL: 1, Synchronous.OFF: 0}[mode]
        assert levels == [relaxed_level, configured]
    finally:
        conn.close()


def test_a_durable_batch_fails_rather_than_commit_below_the_configured_level(
    tmp_path: Path
) -> None:
    """A relaxed batch whose COMMIT and ROLLBACK both fail leaves a transaction open at
    NORMAL, where ``PRAGMA synchronous`` cannot be changed. The next durable batch rolls
    it back first; while that ROLLBACK fails too, the batch fails instead of committing
    at NORMAL; once it succeeds, the batch commits at FULL."""
    conn = open_writer(tmp_path / "w.db", Synchronous.FULL, 1000, [])
    conn.execute("CREATE TABLE t (x INTEGER)")
    failing = {"COMMIT": 1, "ROLLBACK": 3}
    execute = conn.execute

    def flaky(sql: str, *args: Any) -> sqlite3.Cursor:
        if failing.get(sql):
            failing[sql] -= 1
            raise sqlite3.OperationalError(f"{sql} failed (simulated)")
        return execute(sql, *args)

    conn.execute = flaky  # type: ignore[method-assign]
    levels: list[int] = []

    def insert(c: sqlite3.Connection) -> None:
        levels.append(c.execute("PRAGMA synchronous").fetchone()[0])
        c.execute("INSERT INTO t VALUES (1)")

    try:
        committed, out, _ = run_batch(conn, [_Write("ack", insert)], relaxed=True)
        assert not committed and isinstance(out[0][1], StoreError)
        assert conn.in_transaction and levels == [1]  # both failed: still open, NORMAL
        committed, out, _ = run_batch(conn, [_Write("append", insert)])
        assert not committed and isinstance(out[0][1], StoreError)
        assert levels == [1] and conn.in_transaction  # both ROLLBACKs failed: never ran
        committed, out, _ = run_batch(conn, [_Write("append", insert)])
        assert committed and out == [(True, None)] and levels == [1, 2]  # healed at once
        assert execute("SELECT count(*) FROM t").fetchone()[0] == 1
    finally:
        conn.close()


async def test_schema_versions(tmp_path: Path) -> None:
    path = tmp_path / "v.db"
    await (await SqliteStore.open(path)).close()
    await (await SqliteStore.open(path)).close()  # reopening applies nothing twice
    conn = sqlite3.connect(path)
    assert conn.execute("SELECT version FROM schema_version").fetchall() == [
        (v,) for v in range(1, SCHEMA_VERSION + 1)]
    conn.execute("INSERT INTO schema_version VALUES (?)", (SCHEMA_VERSION + 1,))
    conn.commit()
    conn.close()
    with pytest.raises(StoreError, match="newer"):
        await SqliteStore.open(path)


async def test_closed_store_refuses_calls(tmp_path: Path) -> None:
    s = await SqliteStore.open(tmp_path / "c.db")
    await _setup(s)
    await s.close()
    await s.close()
    with pytest.raises(StoreError, match="closed"):
        await _append(s, 1)
    with pytest.raises(StoreError, match="closed"):
        await s.pending_count(MAILBOX)


async def test_the_file_holds_no_client_msg_id_and_no_sender(
    store: SqliteStore, tmp_path: Path
) -> None:
    cmid = b"\xc1" * 16
    await store.append(recipients=[RCPT], client_msg_id=cmid, blob=b"m", now_ms=T0, ttl_ms=DAY_MS)
    conn = sqlite3.connect(tmp_path / "relay.db")
    try:
        # Its idempotency record (schema v4: a send record even for one copy): keyed by a
        # hash of the client_msg_id, naming the copy by a hash of its dedup hash and the
        # mailbox's serial, and its seq; no mailbox id.
        assert conn.execute("SELECT count(*) FROM dedup").fetchone() == (0,)
        (serial,) = conn.execute("SELECT serial FROM mailboxes WHERE id = ?",
                                 (MAILBOX,)).fetchone()
        key = hashlib.sha256(dedup_input(MAILBOX, cmid)).digest()
        entry = hashlib.sha256(key + serial.to_bytes(8, "big")).digest()[:16]
        rows = conn.execute("SELECT send_hash, entries FROM send_dedup").fetchall()
        assert rows == [(hashlib.sha256(b"pigeon relay send v1\x00" + cmid).digest(),
                         entry + (1).to_bytes(8, "big"))]
        columns = {
            (t, c[1])
            for (t,) in conn.execute("SELECT name FROM sqlite_master WHERE type = 'table'")
            for c in conn.execute(f"PRAGMA table_info({t})")
        }
        assert not [c for c in columns if "sender" in c[1] or "client_msg" in c[1]]
        for table, column in columns:
            hits = conn.execute(
                f"SELECT count(*) FROM {table} WHERE instr({column}, ?) > 0", (cmid,)
            ).fetchone()[0]
            assert hits == 0, (table, column)
    finally:
        conn.close()


async def test_unreadable_file_is_a_store_error(tmp_path: Path) -> None:
    path = tmp_path / "garbage.db"
    path.write_bytes(b"this is not a database" * 100)
    with pytest.raises(StoreError):
        await SqliteStore.open(path)


# --------------------------------------------------------------------------- crash

_CHILD = textwrap.dedent(
    """
    import asyncio, sys
    from relay.ports import Recipient
    from relay.store_sqlite import SqliteStore

    async def main(path, mailbox, cap):
        store = await SqliteStore.open(path)
        rcpt = [Recipient(mailbox_id=bytes.fromhex(mailbox), capability_hash=bytes.fromhex(cap))]

        async def producer(p):
            n = 0
            while True:
                n += 1
                r = await store.append(recipients=rcpt, client_msg_id=bytes([p]) * 8
                                       + n.to_bytes(8, "big"), blob=b"x" * 200,
                                       now_ms=1_700_000_000_000, ttl_ms=86_400_000)
                sys.stdout.write(f"{r.accepted[0].seq}\\n")
                sys.stdout.flush()

        await asyncio.gather(*(producer(p) for p in range(8)))

    asyncio.run(main(*sys.argv[1:]))
    """
)


def test_every_acknowledged_append_survives_sigkill(tmp_path: Path) -> None:
    path = tmp_path / "crash.db"

    async def prepare() -> None:
        s = await SqliteStore.open(path)
        await _setup(s)
        await s.close()

    asyncio.run(prepare())
    env = {**os.environ, "PYTHONPATH": str(REPO)}
    proc = subprocess.Popen(
        [sys.executable, "-c", _CHILD, str(path), MAILBOX.hex(), CAP.hex()],
        stdout=subprocess.PIPE, cwd=REPO, env=env,
    )
    lines: list[bytes] = []
    assert proc.stdout is not None
    stdout = proc.stdout
    reader = threading.Thread(target=lambda: lines.extend(iter(stdout.readline, b"")))
    reader.start()
    deadline = time.monotonic() + 30
    while len(lines) < 500 and proc.poll() is None and time.monotonic() < deadline:
        time.sleep(0.01)
    assert proc.poll() is None, "the child died on its own"
    os.kill(proc.pid, signal.SIGKILL)
    proc.wait()
    reader.join()
    printed = [int(x) for x in lines if x.endswith(b"\n")]
    assert len(printed) >= 500

    async def check() -> list[int]:
        s = await SqliteStore.open(path)
        try:
            msgs = await s.fetch(MAILBOX, limit=1_000_000, now_ms=T0)
            return [m.seq for m in msgs]
        finally:
            await s.close()

    stored = asyncio.run(check())
    assert set(printed) <= set(stored)
    assert stored == list(range(1, len(stored) + 1))  # dense, no torn transaction
