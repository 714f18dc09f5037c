"""The SQLite writer in a child process (``WriterMode.PROCESS``, ``relay._sqlite_writer``).

The store contract suite runs against this mode too (``sqlite-process``); these tests
cover what only this mode has: errors crossing the process boundary with their type,
a writer that dies (writes fail at once, the owner is told, nothing hangs) and a writer
that must not outlive its parent.
"""

from __future__ import annotations

import asyncio
import hashlib
import os
import signal
import sqlite3
import subprocess
import sys
import textwrap
import time
from pathlib import Path

import pytest

from pigeon_crypto.errors import StoreError
from relay import _sqlite_writer
from relay._sqlite_engine import Migration, SqliteEngine
from relay._sqlite_schema import MIGRATIONS
from relay.ports import NotFound, Recipient, RejectReason, WrongCapability
from relay.store_sqlite import SqliteStore, WriterMode
from tests.helpers import process_alive

REPO = Path(__file__).resolve().parents[3]
T0 = 1_700_000_000_000
DAY_MS = 86_400_000
ACCOUNT = bytes(16)
MAILBOX = b"\x01" * 16
CAP = hashlib.sha256(b"capability").digest()


def _writer_pid(store: SqliteStore) -> int:
    remote = store._engine._remote
    assert remote is not None
    return remote.pid




async def _open(path: Path, **kwargs: object) -> SqliteStore:
    s = await SqliteStore.open(path, writer=WriterMode.PROCESS, **kwargs)  # type: ignore[arg-type]
    await s.create_account(account_id=ACCOUNT, identity_key=b"ik", now_ms=T0)
    await s.create_mailbox(account_id=ACCOUNT, mailbox_id=MAILBOX, capability_hash=CAP,
                           now_ms=T0)
    return s


async def test_results_and_errors_cross_the_process(tmp_path: Path) -> None:
    s = await _open(tmp_path / "r.db")
    try:
        with pytest.raises(NotFound) as missing:
            await s.create_mailbox(account_id=b"\x09" * 16, mailbox_id=b"\x02" * 16,
                                   capability_hash=CAP, now_ms=T0)
        assert str(missing.value) == "account not found"
        with pytest.raises(WrongCapability):
            await s.set_contact_mailbox(account_id=ACCOUNT, mailbox_id=MAILBOX,
                                        capability=b"wrong")
        wrong = Recipient(mailbox_id=MAILBOX, capability_hash=b"\x00" * 32)
        right = Recipient(mailbox_id=MAILBOX, capability_hash=CAP)
        result = await s.append(recipients=[wrong], client_msg_id=b"\x01" * 16, blob=b"x",
                                now_ms=T0, ttl_ms=DAY_MS)
        assert result.rejected == ((MAILBOX, RejectReason.WRONG_CAPABILITY),)
        assert isinstance(result.rejected[0][1], RejectReason)
        first = await s.append(recipients=[right], client_msg_id=b"\x02" * 16, blob=b"x",
                               now_ms=T0, ttl_ms=DAY_MS)
        again = await s.append(recipients=[right], client_msg_id=b"\x02" * 16, blob=b"x",
                               now_ms=T0 + 5, ttl_ms=DAY_MS)
        assert first.seq_for(MAILBOX) == again.seq_for(MAILBOX) == 1 and again.duplicate
    finally:
        await s.close()


async def test_a_dead_writer_fails_writes_and_tells_the_owner(tmp_path: Path) -> None:
    lost = asyncio.Event()
    s = await _open(tmp_path / "d.db", on_fatal=lost.set)
    rcpt = [Recipient(mailbox_id=MAILBOX, capability_hash=CAP)]
    try:
        os.kill(_writer_pid(s), signal.SIGKILL)
        await asyncio.wait_for(lost.wait(), 10)  # noticed while idle, not at the next write
        assert s.failed is not None and "status" in s.failed
        with pytest.raises(StoreError, match="writer process"):
            await asyncio.wait_for(
                s.append(recipients=rcpt, client_msg_id=b"\x03" * 16, blob=b"x", now_ms=T0,
                         ttl_ms=DAY_MS), 10)
        # Reads do not need the writer.
        assert (await s.get_mailbox(MAILBOX)) is not None
    finally:
        await asyncio.wait_for(s.close(), 30)


async def test_a_writer_killed_mid_batch_fails_that_batch(tmp_path: Path) -> None:
    s = await _open(tmp_path / "m.db")
    rcpt = [Recipient(mailbox_id=MAILBOX, capability_hash=CAP)]

    async def send(n: int) -> object:
        try:
            return await s.append(recipients=rcpt, client_msg_id=n.to_bytes(16, "big"),
                                  blob=b"x" * 200, now_ms=T0, ttl_ms=DAY_MS)
        except StoreError as exc:
            return exc

    try:
        tasks = [asyncio.create_task(send(n)) for n in range(2000)]
        await asyncio.sleep(0.05)
        os.kill(_writer_pid(s), signal.SIGKILL)
        results = await asyncio.wait_for(asyncio.gather(*tasks), 30)
        assert any(isinstance(r, StoreError) for r in results)
    finally:
        await asyncio.wait_for(s.close(), 30)


async def test_open_errors_come_back(tmp_path: Path) -> None:
    path = tmp_path / "garbage.db"
    path.write_bytes(b"this is not a database" * 100)
    with pytest.raises(StoreError):
        await SqliteStore.open(path, writer=WriterMode.PROCESS)


def _slow_migration(conn: sqlite3.Connection) -> None:
    time.sleep(3)  # a table copied on a large database (schema v6: minutes)
    conn.execute("CREATE TABLE slow (x INTEGER)")


async def test_a_migration_longer_than_the_childs_open_time(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """Migrations run in the relay's process before the child opens the database: one
    that takes longer than the child is given to open (``OPEN_TIMEOUT_S``) must not make
    the relay unable to start."""
    monkeypatch.setattr(_sqlite_writer, "OPEN_TIMEOUT_S", 2.0)
    migrations = (*MIGRATIONS, Migration(len(MIGRATIONS) + 1, _slow_migration))
    engine = await SqliteEngine.open(tmp_path / "slow.db", migrations,
                                     writer=WriterMode.PROCESS)
    await engine.close()
    conn = sqlite3.connect(tmp_path / "slow.db")
    try:
        assert conn.execute("SELECT max(version) FROM schema_version").fetchone() == (
            len(migrations),)
        assert conn.execute("SELECT count(*) FROM slow").fetchone() == (0,)
    finally:
        conn.close()


_PARENT = textwrap.dedent(
    """
    import asyncio, sys, time
    from relay.store_sqlite import SqliteStore, WriterMode

    async def main(path):
        store = await SqliteStore.open(path, writer=WriterMode.PROCESS)
        print(store._engine._remote.pid, flush=True)
        await asyncio.sleep(3600)

    asyncio.run(main(sys.argv[1]))
    """
)


def test_the_writer_dies_with_its_parent(tmp_path: Path) -> None:
    proc = subprocess.Popen([sys.executable, "-c", _PARENT, str(tmp_path / "p.db")],
                            stdout=subprocess.PIPE, text=True, cwd=REPO,
                            env={**os.environ, "PYTHONPATH": str(REPO)})
    try:
        assert proc.stdout is not None
        child = int(proc.stdout.readline())
        assert process_alive(child)
    finally:
        proc.kill()
        proc.wait()
    deadline = time.monotonic() + 10
    while process_alive(child) and time.monotonic() < deadline:
        time.sleep(0.05)
    assert not process_alive(child), "the writer process outlived the relay"


async def test_an_op_that_does_not_pickle_fails_alone(tmp_path: Path) -> None:
    s = await _open(tmp_path / "u.db")
    rcpt = [Recipient(mailbox_id=MAILBOX, capability_hash=CAP)]
    try:
        # In one batch with a good op: the bad one fails, the good one commits, and the
        # writer keeps serving.
        bad, good = await asyncio.gather(
            s._engine.write("bad", lambda conn: 1),
            s.append(recipients=rcpt, client_msg_id=b"\x04" * 16, blob=b"x", now_ms=T0,
                     ttl_ms=DAY_MS),
            return_exceptions=True)
        assert isinstance(bad, StoreError) and "not transferable" in str(bad)
        assert not isinstance(good, BaseException) and good.seq_for(MAILBOX) == 1
        with pytest.raises(StoreError, match="not transferable"):
            await s._engine.write("bad", lambda conn: 1)
        assert s.failed is None
        again = await s.append(recipients=rcpt, client_msg_id=b"\x05" * 16, blob=b"y",
                               now_ms=T0, ttl_ms=DAY_MS)
        assert again.seq_for(MAILBOX) == 2
    finally:
        await s.close()
