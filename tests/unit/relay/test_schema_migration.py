"""Relay schema migrations: a relay upgraded in place keeps its queued messages and its
idempotency records.

The version-1 database is built with the shipped version-1 migration (never edited) and
filled with exactly the rows version-1 code wrote for a single-recipient and a
two-recipient send (a blob, one delivery row and one ``dedup`` row per copy, the
counters). Opening it with the current code migrates it; everything queued is still
delivered, retries are still recognised, and new sends use the new tables.
"""

from __future__ import annotations

import hashlib
import sqlite3
from pathlib import Path

from relay._sqlite_engine import SqliteEngine
from relay._sqlite_ops import dedup_hash
from relay._sqlite_schema import MIGRATIONS
from relay.ports import Recipient
from relay.store_sqlite import SCHEMA_VERSION, SqliteStore, WriterMode

T0 = 1_700_000_000_000
DAY_MS = 86_400_000
ACCOUNT = b"\x0a" * 16
BOX_A, BOX_B = b"\x01" * 16, b"\x02" * 16
CAP_A, CAP_B = hashlib.sha256(b"a").digest(), hashlib.sha256(b"b").digest()
A = Recipient(mailbox_id=BOX_A, capability_hash=CAP_A)
B = Recipient(mailbox_id=BOX_B, capability_hash=CAP_B)
SOLO, GROUP = b"\x51" * 16, b"\x52" * 16


async def _v1_database(path: Path) -> None:
    engine = await SqliteEngine.open(path, MIGRATIONS[:1])
    await engine.close()
    conn = sqlite3.connect(path)
    try:
        exp, keep = T0 + DAY_MS, T0 + 30 * DAY_MS
        conn.execute("INSERT INTO accounts (id, identity_key, created_at_ms,"
                     " identity_updated_at_ms) VALUES (?, ?, ?, ?)", (ACCOUNT, b"ik", T0, T0))
        # A: a single-recipient send (seq 1), then the group send (seq 2); B: the group
        # send (seq 1). As version 1 wrote them: per-copy delivery and dedup rows.
        for box, cap, last in ((BOX_A, CAP_A, 2), (BOX_B, CAP_B, 1)):
            conn.execute("INSERT INTO mailboxes (id, account_id, capability_hash, created_at_ms,"
                         " last_seq, pending) VALUES (?, ?, ?, ?, ?, ?)",
                         (box, ACCOUNT, cap, T0, last, last))
        conn.execute("INSERT INTO blobs (id, size, data) VALUES (1, 4, ?), (2, 5, ?)",
                     (b"solo", b"group"))
        for box, seq, blob, cmid in ((BOX_A, 1, 1, SOLO), (BOX_A, 2, 2, GROUP),
                                     (BOX_B, 1, 2, GROUP)):
            conn.execute("INSERT INTO deliveries VALUES (?, ?, ?, ?, ?)", (box, seq, blob, T0, exp))
            conn.execute("INSERT INTO dedup VALUES (?, ?, ?, ?, ?, ?)",
                         (box, dedup_hash(box, cmid), seq, T0, exp, keep))
        conn.commit()
        assert conn.execute("SELECT max(version) FROM schema_version").fetchone() == (1,)
    finally:
        conn.close()


async def _check_upgrade(tmp_path: Path, writer: WriterMode) -> None:
    path = tmp_path / "relay.db"
    await _v1_database(path)
    store = await SqliteStore.open(path, writer=writer)
    try:
        # Every queued message survived, in order, with its blob.
        a = await store.fetch(BOX_A, now_ms=T0)
        b = await store.fetch(BOX_B, now_ms=T0)
        assert [(m.seq, m.blob) for m in a] == [(1, b"solo"), (2, b"group")]
        assert [(m.seq, m.blob) for m in b] == [(1, b"group")]
        # Version-1 idempotency records still answer retries with the original seqs.
        solo = await store.append(recipients=[A], client_msg_id=SOLO, blob=b"solo",
                                  now_ms=T0 + 1, ttl_ms=DAY_MS)
        group = await store.append(recipients=[A, B], client_msg_id=GROUP, blob=b"group",
                                   now_ms=T0 + 1, ttl_ms=DAY_MS)
        assert solo.duplicate and solo.seq_for(BOX_A) == 1
        assert group.duplicate and (group.seq_for(BOX_A), group.seq_for(BOX_B)) == (2, 1)
        assert group.received_at_ms == T0
        # New sends continue the counters; a group send now writes one send record.
        new = await store.append(recipients=[A, B], client_msg_id=b"\x53" * 16, blob=b"new",
                                 now_ms=T0 + 2, ttl_ms=DAY_MS)
        assert (new.seq_for(BOX_A), new.seq_for(BOX_B)) == (3, 2) and not new.duplicate
        again = await store.append(recipients=[B, A], client_msg_id=b"\x53" * 16, blob=b"new",
                                   now_ms=T0 + 3, ttl_ms=DAY_MS)
        assert again.duplicate and (again.seq_for(BOX_A), again.seq_for(BOX_B)) == (3, 2)
        assert await store.ack(BOX_A, up_to_seq=3) == 3
        assert await store.pending_count(BOX_A) == 0 and await store.pending_count(BOX_B) == 2
        # Mailboxes created after the upgrade take serials from the new counter.
        await store.create_mailbox(account_id=ACCOUNT, mailbox_id=b"\x03" * 16,
                                   capability_hash=CAP_A, now_ms=T0 + 4)
    finally:
        await store.close()
    conn = sqlite3.connect(path)
    try:
        assert conn.execute("SELECT version FROM schema_version ORDER BY version").fetchall() \
            == [(v,) for v in range(1, SCHEMA_VERSION + 1)]
        assert conn.execute("SELECT count(*) FROM dedup").fetchone() == (3,)
        assert conn.execute("SELECT count(*) FROM send_dedup").fetchone() == (1,)
        assert conn.execute("SELECT id, serial FROM mailboxes ORDER BY id").fetchall() == [
            (BOX_A, 0), (BOX_B, 0), (b"\x03" * 16, 1)]
        assert conn.execute("PRAGMA integrity_check").fetchone() == ("ok",)
        assert conn.execute("PRAGMA foreign_key_check").fetchall() == []
    finally:
        conn.close()


async def test_upgrade_from_v1_keeps_queued_messages(tmp_path: Path) -> None:
    await _check_upgrade(tmp_path, WriterMode.THREAD)


async def test_upgrade_from_v1_in_the_writer_process(tmp_path: Path) -> None:
    await _check_upgrade(tmp_path, WriterMode.PROCESS)
