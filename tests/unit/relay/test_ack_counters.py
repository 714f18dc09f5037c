"""Pending counts and blob clean-up through acks, expiry and deletions.

Whatever deletes deliveries (one ack, a run of acks, the expiry sweep, a deleted
mailbox's or account's cascade) must leave each mailbox's ``pending`` equal to its
delivery rows and the blob rows exactly the blobs some delivery still names (schema v3
and v4 kept both once per statement in code; v5 is back to the per-row
``deliveries_gone`` trigger, which was cheaper). The oracle is the in-memory store fed
the same calls, and the tables themselves.
"""

from __future__ import annotations

import dataclasses
import random
import sqlite3
from pathlib import Path

import pytest

from relay import _sqlite_ops as ops
from relay.ports import Recipient
from relay.store_memory import MemoryStore

from .test_append_many import (
    ACCOUNT,
    DAY_MS,
    MAILBOXES,
    T0,
    UNKNOWN,
    _reference,
    _sqlite,
    random_calls,
)

OTHER = b"\x0b" * 16
"""A second account's mailbox: copies of shared blobs outlive the first account."""


def check_tables(conn: sqlite3.Connection) -> None:
    assert conn.execute(
        "SELECT m.id, m.pending, (SELECT count(*) FROM deliveries d WHERE d.mailbox_id = m.id)"
        " FROM mailboxes m WHERE m.pending != (SELECT count(*) FROM deliveries d"
        " WHERE d.mailbox_id = m.id)").fetchall() == []
    assert conn.execute("SELECT id FROM blobs EXCEPT SELECT blob_id FROM deliveries"
                        ).fetchall() == []
    assert conn.execute("SELECT blob_id FROM deliveries EXCEPT SELECT id FROM blobs"
                        ).fetchall() == []


async def check_against(conn: sqlite3.Connection, memory: MemoryStore) -> None:
    check_tables(conn)
    for m in [*MAILBOXES, OTHER]:
        assert ops.pending_count(conn, m) == await memory.pending_count(m), m.hex()
        assert ops.fetch(conn, m, 0, 1000, T0) == await memory.fetch(m, limit=1000, now_ms=T0)


@pytest.mark.parametrize("seed", range(4))
@pytest.mark.parametrize("grouped", [False, True])
async def test_acks_expiry_and_deletions_keep_counts_and_blobs(
        tmp_path: Path, seed: int, grouped: bool) -> None:
    rng = random.Random(seed)
    calls = random_calls(rng, 150, 0)
    # Some sends also reach a mailbox of another account (blobs shared across accounts).
    calls = [dataclasses.replace(c, recipients=(*c.recipients, _other())) if i % 3 == 0
             else c for i, c in enumerate(calls)]
    store = await _sqlite(tmp_path / "relay.db")
    await store.create_account(account_id=b"\x02" * 16, identity_key=b"ik2", now_ms=T0)
    await store.create_mailbox(account_id=b"\x02" * 16, mailbox_id=OTHER,
                               capability_hash=_other().capability_hash, now_ms=T0)
    await store.close()
    _, memory = await _reference([])
    await memory.create_account(account_id=b"\x02" * 16, identity_key=b"ik2", now_ms=T0)
    await memory.create_mailbox(account_id=b"\x02" * 16, mailbox_id=OTHER,
                                capability_hash=_other().capability_hash, now_ms=T0)
    for c in calls:
        await memory.append(recipients=c.recipients, client_msg_id=c.client_msg_id,
                            blob=c.blob, now_ms=c.now_ms, ttl_ms=c.ttl_ms,
                            max_pending=c.max_pending, dedup_ttl_ms=c.dedup_ttl_ms)
    conn = sqlite3.connect(tmp_path / "relay.db", isolation_level=None)
    conn.execute("PRAGMA foreign_keys = ON")
    try:
        conn.execute("BEGIN IMMEDIATE")
        ops.append_many(conn, calls)
        conn.execute("COMMIT")
        await check_against(conn, memory)
        for _ in range(6):  # rounds of acks: cumulative, selective, repeated, unknown
            acks: list[ops.AckRequest] = []
            for _ in range(rng.randrange(1, 8)):
                m = rng.choice([*MAILBOXES, OTHER, UNKNOWN])
                up = rng.choice([None, rng.randrange(0, 15)])
                seqs = tuple(rng.randrange(0, 40) for _ in range(rng.randrange(0, 4)))
                acks.append((m, up, seqs))
            conn.execute("BEGIN IMMEDIATE")
            got = (ops.ack_many(conn, acks) if grouped
                   else [ops.ack(conn, m, up, seqs) for m, up, seqs in acks])
            conn.execute("COMMIT")
            want = [await memory.ack(m, up_to_seq=up, seqs=seqs) for m, up, seqs in acks]
            assert got == want
            await check_against(conn, memory)
        # The expiry sweep (some messages past their TTL), a mailbox and an account gone.
        conn.execute("BEGIN IMMEDIATE")
        report = ops.expire(conn, T0 + DAY_MS + 120, 10_000)
        conn.execute("COMMIT")
        want_report = await memory.expire(now_ms=T0 + DAY_MS + 120)
        assert report.messages_removed == want_report.messages_removed > 0
        check_tables(conn)
        conn.execute("BEGIN IMMEDIATE")
        assert ops.delete_mailbox(conn, ACCOUNT, MAILBOXES[0])
        conn.execute("COMMIT")
        check_tables(conn)
        conn.execute("BEGIN IMMEDIATE")
        conn.execute("DELETE FROM accounts WHERE id = ?", (ACCOUNT,))
        conn.execute("COMMIT")
        check_tables(conn)
        assert conn.execute("SELECT count(*) FROM blobs").fetchone()[0] == conn.execute(
            "SELECT count(DISTINCT blob_id) FROM deliveries WHERE mailbox_id = ?",
            (OTHER,)).fetchone()[0]
    finally:
        conn.close()


def _other() -> Recipient:
    return Recipient(mailbox_id=OTHER, capability_hash=b"\x0c" * 32)
