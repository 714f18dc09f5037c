"""Contract suite for :class:`relay.ports.Store`: every adapter must pass all of it.

To add an adapter (PostgreSQL, say), write a factory ``def _postgres(tmp_path) ->
StoreFactory`` (skip with ``pytest.skip`` when its server is not configured) and add it to
``FACTORIES``. Tests that need persistence across close/reopen are skipped for factories
with ``persistent=False``. A factory whose stores live outside ``tmp_path`` (a PostgreSQL
schema) gives a ``cleanup``, awaited after the test.
"""

from __future__ import annotations

import asyncio
import concurrent.futures
import hashlib
import sqlite3
from collections.abc import AsyncIterator, Awaitable, Callable, Coroutine
from dataclasses import dataclass
from pathlib import Path

import asyncpg
import pytest

from pigeon_crypto.errors import StoreError
from relay.ports import (
    AppendRequest,
    AppendResult,
    InviteRejected,
    NotFound,
    OneTimePrekey,
    Recipient,
    RejectReason,
    Store,
    StoreConflict,
    WrongCapability,
    invite_code_hash,
)
from relay.store_memory import MemoryStore
from relay.store_postgres import PostgresStore
from relay.store_sqlite import SqliteStore, WriterMode
from tests.services import postgres_dsn, unique_name

DAY_MS = 86_400_000
T0 = 1_700_000_000_000


@dataclass(frozen=True)
class StoreFactory:
    """How the suite gets a store. ``open`` may be called again after ``close`` (reopen)."""

    name: str
    open: Callable[[], Awaitable[Store]]
    persistent: bool
    raw_blob_rows: Callable[[], int] | None = None
    """Counts physical blob rows, for adapters where that is observable."""
    cleanup: Callable[[], Awaitable[None]] | None = None
    """Removes what the stores left outside ``tmp_path`` (awaited after the test)."""


def _memory(tmp_path: Path) -> StoreFactory:
    async def open_() -> Store:
        return MemoryStore()

    return StoreFactory(name="memory", open=open_, persistent=False)


def _sqlite(tmp_path: Path, writer: WriterMode = WriterMode.THREAD) -> StoreFactory:
    path = tmp_path / "relay.db"

    async def open_() -> Store:
        return await SqliteStore.open(path, writer=writer)

    def raw_blob_rows() -> int:
        conn = sqlite3.connect(path)
        try:
            return int(conn.execute("SELECT count(*) FROM blobs").fetchone()[0])
        finally:
            conn.close()

    return StoreFactory(name=f"sqlite-{writer.value}", open=open_, persistent=True,
                        raw_blob_rows=raw_blob_rows)


def _sqlite_process(tmp_path: Path) -> StoreFactory:
    return _sqlite(tmp_path, WriterMode.PROCESS)


def _run_aside(coro: Coroutine[None, None, int]) -> int:
    """Run *coro* to completion on a loop of its own (for the synchronous raw_blob_rows)."""
    with concurrent.futures.ThreadPoolExecutor(1) as pool:
        return pool.submit(asyncio.run, coro).result()


def _postgres(tmp_path: Path) -> StoreFactory:
    dsn = postgres_dsn()
    schema = unique_name("contract")

    async def open_() -> Store:
        return await PostgresStore.open(dsn, schema=schema, min_connections=1,
                                        max_connections=4)

    async def count_blobs() -> int:
        conn = await asyncpg.connect(dsn)
        try:
            return int(await conn.fetchval(f"SELECT count(*) FROM {schema}.blobs"))
        finally:
            await conn.close()

    async def cleanup() -> None:
        conn = await asyncpg.connect(dsn)
        try:
            await conn.execute(f"DROP SCHEMA IF EXISTS {schema} CASCADE")
        finally:
            await conn.close()

    return StoreFactory(name="postgres", open=open_, persistent=True,
                        raw_blob_rows=lambda: _run_aside(count_blobs()), cleanup=cleanup)


FACTORIES: dict[str, Callable[[Path], StoreFactory]] = {
    "memory": _memory, "sqlite": _sqlite, "sqlite-process": _sqlite_process,
    "postgres": _postgres}


@pytest.fixture(params=sorted(FACTORIES))
async def store_factory(request: pytest.FixtureRequest, tmp_path: Path
                        ) -> AsyncIterator[StoreFactory]:
    factory = FACTORIES[request.param](tmp_path)
    try:
        yield factory
    finally:
        if factory.cleanup is not None:
            await factory.cleanup()


@pytest.fixture
async def store(store_factory: StoreFactory) -> AsyncIterator[Store]:
    s = await store_factory.open()
    try:
        yield s
    finally:
        await s.close()


# --------------------------------------------------------------------------- helpers


def aid(n: int) -> bytes:
    return n.to_bytes(16, "big")


def mid(n: int) -> bytes:
    return (0xB0 << 120 | n).to_bytes(16, "big")


def capability(n: int) -> bytes:
    return hashlib.sha256(b"capability %d" % n).digest()


def cap(n: int) -> bytes:
    """The stored form: SHA-256 of the capability."""
    return hashlib.sha256(capability(n)).digest()


def cmid(n: int) -> bytes:
    return (0xC0 << 120 | n).to_bytes(16, "big")


def rcpt(n: int) -> Recipient:
    return Recipient(mailbox_id=mid(n), capability_hash=cap(n))


async def account(store: Store, n: int, *mailboxes: int) -> None:
    await store.create_account(account_id=aid(n), identity_key=b"ik%d" % n, now_ms=T0)
    for m in mailboxes:
        await store.create_mailbox(
            account_id=aid(n), mailbox_id=mid(m), capability_hash=cap(m), now_ms=T0 + m
        )


async def send(
    store: Store, n: int, *mailboxes: int, now_ms: int = T0, ttl_ms: int = DAY_MS
) -> AppendResult:
    return await store.append(
        recipients=[rcpt(m) for m in mailboxes], client_msg_id=cmid(n), blob=b"blob%d" % n,
        now_ms=now_ms, ttl_ms=ttl_ms,
    )


# --------------------------------------------------------------------------- accounts


async def test_account_lifecycle(store: Store) -> None:
    rec = await store.create_account(account_id=aid(1), identity_key=b"ik", now_ms=T0)
    assert (rec.account_id, rec.identity_key, rec.created_at_ms) == (aid(1), b"ik", T0)
    assert await store.get_account(aid(1)) == rec
    assert await store.get_account(aid(2)) is None
    with pytest.raises(StoreConflict):
        await store.create_account(account_id=aid(1), identity_key=b"other", now_ms=T0)
    assert (rec.rotation_count, rec.contact_mailbox_id, rec.contact_capability) == (0, None, None)
    rotated = await store.rotate_identity(account_id=aid(1), identity_key=b"ik2", rotation=b"r1",
                                          now_ms=T0 + 5, expect_key=b"ik", expect_rotations=0)
    assert (rotated.identity_key, rotated.created_at_ms, rotated.identity_updated_at_ms,
            rotated.rotation_count) == (b"ik2", T0, T0 + 5, 1)
    assert await store.get_account(aid(1)) == rotated
    again = await store.rotate_identity(account_id=aid(1), identity_key=b"ik3", rotation=b"r2",
                                        now_ms=T0 + 6, expect_key=b"ik2", expect_rotations=1)
    assert again.rotation_count == 2
    # Compare and swap: a rotation checked against a key or chain length that is no
    # longer the account's changes nothing.
    for key, count in ((b"ik2", 2), (b"ik3", 1), (b"ik", 0)):
        with pytest.raises(StoreConflict):
            await store.rotate_identity(account_id=aid(1), identity_key=b"late", rotation=b"rx",
                                        now_ms=T0 + 7, expect_key=key, expect_rotations=count)
    assert await store.get_account(aid(1)) == again
    with pytest.raises(NotFound):
        await store.rotate_identity(account_id=aid(9), identity_key=b"x", rotation=b"r",
                                    now_ms=T0, expect_key=b"ik", expect_rotations=0)
    with pytest.raises(ValueError):
        await store.create_account(account_id=b"short", identity_key=b"x", now_ms=T0)


async def test_list_accounts_paginates_with_mailbox_counts(store: Store) -> None:
    await account(store, 3, 30, 31)
    await account(store, 1)
    await account(store, 2, 20)
    page = await store.list_accounts(limit=2)
    assert [(a.account_id, a.mailbox_count) for a in page] == [(aid(1), 0), (aid(2), 1)]
    rest = await store.list_accounts(after=page[-1].account_id, limit=2)
    assert [(a.account_id, a.mailbox_count, a.created_at_ms) for a in rest] == [(aid(3), 2, T0)]


async def test_invites_are_single_use(store: Store) -> None:
    h1, h2, h3 = (invite_code_hash(c) for c in ("one", "two", "three"))
    await store.create_invite(code_hash=h1, now_ms=T0)
    await store.create_invite(code_hash=h2, now_ms=T0 + 1, expires_at_ms=T0 + 100)
    await store.create_invite(code_hash=h3, now_ms=T0 + 2)
    with pytest.raises(StoreConflict):
        await store.create_invite(code_hash=h1, now_ms=T0)
    # Registration consumes the invite in the same transaction ...
    await store.create_account(account_id=aid(1), identity_key=b"k", now_ms=T0, invite_code_hash=h1)
    with pytest.raises(InviteRejected):
        await store.create_account(
            account_id=aid(2), identity_key=b"k", now_ms=T0, invite_code_hash=h1
        )
    assert await store.get_account(aid(2)) is None
    # ... but not when the account id is taken.
    with pytest.raises(StoreConflict):
        await store.create_account(
            account_id=aid(1), identity_key=b"k", now_ms=T0, invite_code_hash=h3
        )
    assert await store.consume_invite(code_hash=h3, now_ms=T0) is True
    assert await store.consume_invite(code_hash=h3, now_ms=T0) is False
    # Expired, revoked and unknown codes are rejected alike.
    assert await store.consume_invite(code_hash=h2, now_ms=T0 + 100) is False
    assert await store.revoke_invite(h2) is True
    assert await store.revoke_invite(h2) is False
    assert await store.consume_invite(code_hash=invite_code_hash("nope"), now_ms=T0) is False
    listed = await store.list_invites()
    assert [(i.code_hash, i.used_at_ms) for i in listed] == [(h1, T0), (h3, T0)]


async def test_concurrent_registrations_share_one_invite(store: Store) -> None:
    h = invite_code_hash("only-once")
    await store.create_invite(code_hash=h, now_ms=T0)
    results = await asyncio.gather(
        *(
            store.create_account(account_id=aid(i), identity_key=b"k", now_ms=T0,
                                 invite_code_hash=h)
            for i in range(1, 21)
        ),
        return_exceptions=True,
    )
    assert sum(not isinstance(r, BaseException) for r in results) == 1
    assert all(isinstance(r, InviteRejected) for r in results if isinstance(r, BaseException))


async def test_concurrent_rotations_from_one_key_commit_once(store: Store) -> None:
    await account(store, 1)
    results = await asyncio.gather(
        *(
            store.rotate_identity(account_id=aid(1), identity_key=b"new%d" % i,
                                  rotation=b"r%d" % i, now_ms=T0, expect_key=b"ik1",
                                  expect_rotations=0)
            for i in range(20)
        ),
        return_exceptions=True,
    )
    won = [r for r in results if not isinstance(r, BaseException)]
    assert len(won) == 1 and won[0].rotation_count == 1
    assert all(isinstance(r, StoreConflict) for r in results if isinstance(r, BaseException))
    assert await store.get_account(aid(1)) == won[0]


# --------------------------------------------------------------------------- mailboxes


async def test_mailbox_counts_and_ownership_of_a_list(store: Store) -> None:
    await account(store, 1, 10, 11, 12)
    await account(store, 2, 20)
    assert (await store.count_mailboxes(aid(1)), await store.count_mailboxes(aid(2)),
            await store.count_mailboxes(aid(9))) == (3, 1, 0)
    asked = [mid(10), mid(20), mid(99), mid(12), mid(10)]
    assert await store.owned_mailboxes(aid(1), asked) == {mid(10), mid(12)}
    assert await store.owned_mailboxes(aid(2), asked) == {mid(20)}
    assert await store.owned_mailboxes(aid(1), []) == set()
    many = [mid(10)] + [mid(1000 + i) for i in range(5000)]  # past one statement's list
    assert await store.owned_mailboxes(aid(1), many) == {mid(10)}
    await store.delete_mailbox(account_id=aid(1), mailbox_id=mid(10))
    assert await store.count_mailboxes(aid(1)) == 2
    assert await store.owned_mailboxes(aid(1), asked) == {mid(12)}


async def test_mailbox_ownership_and_capabilities(store: Store) -> None:
    await account(store, 1, 10, 11)
    await account(store, 2, 20)
    with pytest.raises(NotFound):
        await store.create_mailbox(account_id=aid(9), mailbox_id=mid(90), capability_hash=cap(90),
                                   now_ms=T0)
    with pytest.raises(StoreConflict):
        await store.create_mailbox(account_id=aid(2), mailbox_id=mid(10), capability_hash=cap(1),
                                   now_ms=T0)
    mb = await store.get_mailbox(mid(10))
    assert mb is not None
    assert (mb.account_id, mb.created_at_ms, mb.last_seq, mb.pending, mb.retire_at_ms,
            mb.push_url) == (aid(1), T0 + 10, 0, 0, None, None)
    assert [m.mailbox_id for m in await store.list_mailboxes(aid(1))] == [mid(10), mid(11)]
    assert await store.check_capabilities([rcpt(10), rcpt(20), rcpt(99)], now_ms=T0) == {
        mid(10), mid(20),
    }
    wrong = Recipient(mailbox_id=mid(10), capability_hash=cap(11))
    assert await store.check_capabilities([wrong], now_ms=T0) == frozenset()

    with pytest.raises(NotFound):  # not the owner
        await store.replace_capability(account_id=aid(2), mailbox_id=mid(10),
                                       capability_hash=cap(77))
    await store.replace_capability(account_id=aid(1), mailbox_id=mid(10), capability_hash=cap(77))
    assert await store.check_capabilities([rcpt(10)], now_ms=T0) == frozenset()
    assert await store.check_capabilities(
        [Recipient(mailbox_id=mid(10), capability_hash=cap(77))], now_ms=T0
    ) == {mid(10)}

    # Push URLs: all of the named mailboxes or none.
    with pytest.raises(NotFound):
        await store.set_push_url(account_id=aid(1), mailbox_ids=[mid(11), mid(20)],
                                 push_url="https://p")
    mb = await store.get_mailbox(mid(11))
    assert mb is not None and mb.push_url is None
    await store.set_push_url(account_id=aid(1), mailbox_ids=[mid(10), mid(11)],
                             push_url="https://push/x")
    assert [m.push_url for m in await store.list_mailboxes(aid(1))] == ["https://push/x"] * 2
    await store.set_push_url(account_id=aid(1), mailbox_ids=[mid(10)], push_url=None)
    mb = await store.get_mailbox(mid(10))
    assert mb is not None and mb.push_url is None

    assert await store.delete_mailbox(account_id=aid(2), mailbox_id=mid(10)) is False
    assert await store.delete_mailbox(account_id=aid(1), mailbox_id=mid(10)) is True
    assert await store.get_mailbox(mid(10)) is None
    assert await store.delete_mailbox(account_id=aid(1), mailbox_id=mid(10)) is False


# --------------------------------------------------------------------------- append / fetch


async def test_append_assigns_dense_per_mailbox_seqs(store: Store) -> None:
    await account(store, 1, 10, 11)
    for n in range(1, 6):
        r = await send(store, n, 10)
        assert [(a.mailbox_id, a.seq, a.duplicate) for a in r.accepted] == [(mid(10), n, False)]
        assert (r.received_at_ms, r.expires_at_ms, r.rejected) == (T0, T0 + DAY_MS, ())
    r = await send(store, 100, 11)
    assert r.seq_for(mid(11)) == 1  # each mailbox has its own counter
    msgs = await store.fetch(mid(10), now_ms=T0)
    assert [(m.seq, m.blob) for m in msgs] == [(n, b"blob%d" % n) for n in range(1, 6)]
    assert [m.seq for m in await store.fetch(mid(10), after_seq=2, limit=2, now_ms=T0)] == [3, 4]
    mb = await store.get_mailbox(mid(10))
    assert mb is not None and mb.last_seq == 5
    assert await store.pending_count(mid(10)) == 5


async def test_append_is_idempotent_per_client_msg_id(store: Store) -> None:
    await account(store, 1, 10, 11)
    first = await send(store, 1, 10, 11, now_ms=T0)
    again = await send(store, 1, 10, 11, now_ms=T0 + 500)
    assert again.duplicate and not first.duplicate
    assert [(a.mailbox_id, a.seq) for a in again.accepted] == [(mid(10), 1), (mid(11), 1)]
    assert (again.received_at_ms, again.expires_at_ms) == (first.received_at_ms,
                                                           first.expires_at_ms)
    assert await store.pending_count(mid(10)) == 1
    # Still a duplicate after the recipient acked: a late retry must not re-queue.
    await store.ack(mid(10), up_to_seq=1)
    late = await send(store, 1, 10, now_ms=T0 + 1000)
    assert late.duplicate and late.seq_for(mid(10)) == 1
    assert await store.pending_count(mid(10)) == 0
    # The same client_msg_id to another mailbox set: only the new mailbox gets a copy.
    await account(store, 2, 20)
    mixed = await send(store, 1, 11, 20, now_ms=T0 + 2000)
    assert not mixed.duplicate
    assert [(a.mailbox_id, a.seq, a.duplicate) for a in mixed.accepted] == [
        (mid(11), 1, True), (mid(20), 1, False),
    ]
    assert mixed.received_at_ms == T0 + 2000


async def test_append_many_is_appends_in_order_committed_together(store: Store) -> None:
    await account(store, 1, 10, 11)
    first = await send(store, 1, 10)
    requests = [
        AppendRequest((rcpt(10),), cmid(2), b"two", T0, DAY_MS),
        AppendRequest((rcpt(10), rcpt(11)), cmid(1), b"one again", T0, DAY_MS),  # retry
        AppendRequest((rcpt(11),), cmid(2), b"two again", T0, DAY_MS),  # new in 11
        AppendRequest((rcpt(10),), cmid(2), b"two again", T0, DAY_MS),  # retry in-batch
        AppendRequest((rcpt(10),), cmid(3), b"three", T0, DAY_MS, 3),  # quota: 3 queued
    ]
    results = await store.append_many(requests)
    assert [[(r.mailbox_id, r.seq, r.duplicate) for r in res.accepted] for res in results] == [
        [(mid(10), 2, False)],
        [(mid(10), first.accepted[0].seq, True), (mid(11), 1, False)],
        [(mid(11), 2, False)],
        [(mid(10), 2, True)],
        [(mid(10), 3, False)],
    ]
    assert results[4].rejected == ()
    [quota] = await store.append_many(
        [AppendRequest((rcpt(10),), cmid(4), b"four", T0, DAY_MS, 3)])
    assert quota.rejected == ((mid(10), RejectReason.QUOTA_EXCEEDED),)
    assert [m.blob for m in await store.fetch(mid(11), now_ms=T0)] == [b"one again",
                                                                        b"two again"]
    assert await store.append_many([]) == []
    with pytest.raises(ValueError):  # all or nothing: the good request is not stored
        await store.append_many([AppendRequest((rcpt(11),), cmid(9), b"x", T0, DAY_MS),
                                 AppendRequest((rcpt(11),), b"short", b"x", T0, DAY_MS)])
    assert await store.pending_count(mid(11)) == 2


async def test_append_rejects_bad_capabilities_alike(store: Store) -> None:
    await account(store, 1, 10, 11)
    wrong = Recipient(mailbox_id=mid(11), capability_hash=cap(10))
    r = await store.append(recipients=[rcpt(10), wrong, rcpt(99), rcpt(10)], client_msg_id=cmid(1),
                           blob=b"x", now_ms=T0, ttl_ms=DAY_MS)
    assert [a.mailbox_id for a in r.accepted] == [mid(10)]
    assert r.rejected == ((mid(11), RejectReason.WRONG_CAPABILITY),
                          (mid(99), RejectReason.WRONG_CAPABILITY))
    assert await store.pending_count(mid(11)) == 0
    none = await store.append(recipients=[rcpt(99)], client_msg_id=cmid(2), blob=b"x",
                              now_ms=T0, ttl_ms=DAY_MS)
    assert none.accepted == () and not none.duplicate
    assert (await store.queue_sizes()).total_blobs == 1


async def test_fan_out_stores_the_blob_once(
    store: Store, store_factory: StoreFactory
) -> None:
    await account(store, 1, 10)
    await account(store, 2, 20, 21)
    r = await send(store, 1, 10, 20, 21)
    assert [a.seq for a in r.accepted] == [1, 1, 1]
    sizes = await store.queue_sizes()
    assert (sizes.total_messages, sizes.total_blobs, sizes.total_blob_bytes) == (3, 1, 5)
    if store_factory.raw_blob_rows is not None:
        assert store_factory.raw_blob_rows() == 1
    for m in (10, 20, 21):
        assert [x.blob for x in await store.fetch(mid(m), now_ms=T0)] == [b"blob1"]


async def test_ack_cumulative_selective_and_blob_gc(
    store: Store, store_factory: StoreFactory
) -> None:
    await account(store, 1, 10, 11)
    for n in range(1, 7):
        await send(store, n, 10)
    await send(store, 7, 10, 11)  # shared blob: seq 7 in 10, seq 1 in 11
    assert await store.ack(mid(10), up_to_seq=2) == 2
    assert await store.ack(mid(10), seqs=[4, 6, 6, 99]) == 2
    assert await store.ack(mid(10)) == 0
    assert [m.seq for m in await store.fetch(mid(10), now_ms=T0)] == [3, 5, 7]
    assert await store.ack(mid(10), up_to_seq=3, seqs=[3, 5]) == 2  # overlap counted once
    assert (await store.queue_sizes()).total_blobs == 1
    assert await store.ack(mid(10), up_to_seq=10) == 1
    # Blob 7 survives: mailbox 11 still references it.
    assert [m.blob for m in await store.fetch(mid(11), now_ms=T0)] == [b"blob7"]
    sizes = await store.queue_sizes()
    assert (sizes.total_messages, sizes.total_blobs) == (1, 1)
    await store.ack(mid(11), seqs=[1])
    assert (await store.queue_sizes()).total_blobs == 0
    if store_factory.raw_blob_rows is not None:
        assert store_factory.raw_blob_rows() == 0
    # Seqs keep counting after the queue empties.
    assert (await send(store, 8, 10)).seq_for(mid(10)) == 8


async def test_ack_many_is_the_acks_in_order(store: Store, store_factory: StoreFactory
                                             ) -> None:
    """One call for several connections' acks: each counted as if run after the earlier
    ones (a row for the first ack that removes it), blobs and counts as for one by one."""
    await account(store, 1, 10, 11)
    for n in range(1, 6):
        await send(store, n, 10, 11)  # seqs 1..5 in both, one blob each
    got = await store.ack_many([(mid(10), 2, ()), (mid(11), None, (1, 3)),
                                (mid(10), 3, (2, 5)), (mid(12), 9, ()), (mid(11), None, ())])
    assert got == [2, 2, 2, 0, 0]
    assert [m.seq for m in await store.fetch(mid(10), now_ms=T0)] == [4]
    assert [m.seq for m in await store.fetch(mid(11), now_ms=T0)] == [2, 4, 5]
    assert await store.pending_count(mid(10)) == 1
    assert await store.pending_count(mid(11)) == 3
    assert (await store.queue_sizes()).total_blobs == 3  # blobs 1 and 3 went with both
    assert await store.ack_many([]) == []
    if store_factory.raw_blob_rows is not None:
        assert store_factory.raw_blob_rows() == 3


async def test_mailbox_quota(store: Store) -> None:
    await account(store, 1, 10, 11)
    for n in range(3):
        r = await store.append(recipients=[rcpt(10)], client_msg_id=cmid(n), blob=b"x",
                               now_ms=T0, ttl_ms=DAY_MS, max_pending=3)
        assert r.rejected == ()
    full = await store.append(recipients=[rcpt(10), rcpt(11)], client_msg_id=cmid(9), blob=b"x",
                              now_ms=T0, ttl_ms=DAY_MS, max_pending=3)
    assert full.rejected == ((mid(10), RejectReason.QUOTA_EXCEEDED),)
    assert [a.mailbox_id for a in full.accepted] == [mid(11)]
    # A retry of a stored message is still answered (dedup comes before the quota).
    retry = await store.append(recipients=[rcpt(10)], client_msg_id=cmid(0), blob=b"x",
                               now_ms=T0, ttl_ms=DAY_MS, max_pending=3)
    assert retry.duplicate and retry.rejected == ()
    await store.ack(mid(10), up_to_seq=1)
    mb = await store.get_mailbox(mid(10))
    assert mb is not None and mb.pending == 2
    again = await store.append(recipients=[rcpt(10)], client_msg_id=cmid(9), blob=b"x",
                               now_ms=T0, ttl_ms=DAY_MS, max_pending=3)
    assert again.seq_for(mid(10)) == 4


async def test_rotated_mailbox_retires(store: Store) -> None:
    await account(store, 1, 10)
    await account(store, 2)
    await store.set_push_url(account_id=aid(1), mailbox_ids=[mid(10)], push_url="https://w")
    with pytest.raises(NotFound):
        await store.rotate_mailbox(account_id=aid(2), mailbox_id=mid(10), new_mailbox_id=mid(12),
                                   capability_hash=cap(12), retire_at_ms=T0 + 100, now_ms=T0)
    new = await store.rotate_mailbox(account_id=aid(1), mailbox_id=mid(10),
                                     new_mailbox_id=mid(12), capability_hash=cap(12),
                                     retire_at_ms=T0 + 100, now_ms=T0)
    assert (new.mailbox_id, new.push_url, new.retire_at_ms) == (mid(12), "https://w", None)
    old = await store.get_mailbox(mid(10))
    assert old is not None and old.retire_at_ms == T0 + 100
    with pytest.raises(NotFound):  # a retiring mailbox is not rotated twice
        await store.rotate_mailbox(account_id=aid(1), mailbox_id=mid(10), new_mailbox_id=mid(13),
                                   capability_hash=cap(13), retire_at_ms=T0, now_ms=T0)
    # ... but the same rotation repeated (a retry) answers the mailbox it made, unchanged.
    repeat = await store.rotate_mailbox(account_id=aid(1), mailbox_id=mid(10),
                                        new_mailbox_id=mid(14), capability_hash=cap(12),
                                        retire_at_ms=T0 + 900, now_ms=T0 + 5)
    assert repeat == new
    assert await store.get_mailbox(mid(10)) == old and await store.get_mailbox(mid(14)) is None
    with pytest.raises(NotFound):  # not the owner's to repeat
        await store.rotate_mailbox(account_id=aid(2), mailbox_id=mid(10), new_mailbox_id=mid(14),
                                   capability_hash=cap(12), retire_at_ms=T0, now_ms=T0)
    # Until retirement the old mailbox accepts sends (messages in flight still arrive) ...
    assert (await send(store, 1, 10, now_ms=T0 + 99)).seq_for(mid(10)) == 1
    # ... then refuses them, and goes away once its queue is empty.
    late = await send(store, 2, 10, 12, now_ms=T0 + 100)
    assert late.rejected == ((mid(10), RejectReason.WRONG_CAPABILITY),)
    assert await store.check_capabilities([rcpt(10), rcpt(12)], now_ms=T0 + 100) == {mid(12)}
    assert (await store.expire(now_ms=T0 + 200)).retired == ()  # still holds seq 1
    assert [m.seq for m in await store.fetch(mid(10), now_ms=T0 + 200)] == [1]
    await store.ack(mid(10), up_to_seq=1)
    report = await store.expire(now_ms=T0 + 200)
    assert report.retired == (mid(10),)
    assert await store.get_mailbox(mid(10)) is None
    assert [m.mailbox_id for m in await store.list_mailboxes(aid(1))] == [mid(12)]


async def test_contact_mailbox_is_published_with_the_bundle(store: Store) -> None:
    await account(store, 1, 10, 11)
    await account(store, 2, 20)
    await store.upload_prekeys(account_id=aid(1), signed_prekey=b"spk", last_resort_kem=b"lr")
    with pytest.raises(WrongCapability):
        await store.set_contact_mailbox(account_id=aid(1), mailbox_id=mid(10),
                                        capability=capability(11))
    with pytest.raises(NotFound):
        await store.set_contact_mailbox(account_id=aid(1), mailbox_id=mid(20),
                                        capability=capability(20))
    await store.set_contact_mailbox(account_id=aid(1), mailbox_id=mid(10),
                                    capability=capability(10))
    acct = await store.get_account(aid(1))
    assert acct is not None
    assert (acct.contact_mailbox_id, acct.contact_capability) == (mid(10), capability(10))
    await store.rotate_identity(account_id=aid(1), identity_key=b"k2", rotation=b"rot1",
                                now_ms=T0, expect_key=b"ik1", expect_rotations=0)
    await store.rotate_identity(account_id=aid(1), identity_key=b"k3", rotation=b"rot2",
                                now_ms=T0, expect_key=b"k2", expect_rotations=1)
    await store.upload_prekeys(account_id=aid(1), signed_prekey=b"spk3", last_resort_kem=b"lr3")
    bundle = await store.fetch_prekey_bundle(aid(1))
    assert bundle is not None
    assert (bundle.identity_key, bundle.rotations) == (b"k3", (b"rot1", b"rot2"))
    assert (bundle.contact_mailbox_id, bundle.contact_capability) == (mid(10), capability(10))
    # Moving it, then deleting the mailbox, clears the designation.
    await store.set_contact_mailbox(account_id=aid(1), mailbox_id=mid(11),
                                    capability=capability(11))
    await store.delete_mailbox(account_id=aid(1), mailbox_id=mid(10))
    acct = await store.get_account(aid(1))
    assert acct is not None and acct.contact_mailbox_id == mid(11)
    await store.delete_mailbox(account_id=aid(1), mailbox_id=mid(11))
    bundle = await store.fetch_prekey_bundle(aid(1))
    assert bundle is not None and (bundle.contact_mailbox_id, bundle.contact_capability) == (
        None, None,
    )


# --------------------------------------------------------------------------- expiry


async def test_expiry_is_reported_to_the_owner(store: Store) -> None:
    await account(store, 1, 10, 11)
    await send(store, 1, 10, now_ms=T0, ttl_ms=100)
    await send(store, 2, 10, now_ms=T0 + 10, ttl_ms=100)
    await send(store, 3, 10, 11, now_ms=T0 + 20, ttl_ms=1000)
    assert [m.seq for m in await store.fetch(mid(10), now_ms=T0 + 105)] == [2, 3]  # unswept
    report = await store.expire(now_ms=T0 + 110)
    assert [(n.mailbox_id, n.count, n.up_to_seq) for n in report.notices] == [(mid(10), 2, 2)]
    assert (report.messages_removed, report.dedup_removed, report.retired, report.more) == (
        2, 2, (), False,
    )
    assert [m.seq for m in await store.fetch(mid(10), now_ms=T0 + 110)] == [3]
    assert (await store.queue_sizes()).total_blobs == 1
    notice = await store.get_expiry_notice(mid(10))
    assert notice is not None and (notice.count, notice.up_to_seq) == (2, 2)
    assert await store.get_expiry_notice(mid(11)) is None

    # An expiry recorded after the notice was read survives its clearing.
    late = await store.expire(now_ms=T0 + 5000)
    assert {(n.mailbox_id, n.count, n.up_to_seq) for n in late.notices} == {
        (mid(10), 1, 3), (mid(11), 1, 1),
    }
    await store.clear_expiry_notice(notice)
    rest = await store.get_expiry_notice(mid(10))
    assert rest is not None and (rest.count, rest.up_to_seq) == (1, 3)
    await store.clear_expiry_notice(rest)
    assert await store.get_expiry_notice(mid(10)) is None
    # The dedup records expired too: the same client_msg_id is now a new message.
    assert not (await send(store, 1, 10, now_ms=T0 + 6000)).duplicate


async def test_one_mailbox_swept_into_its_notice(store: Store) -> None:
    await account(store, 1, 10, 11)
    await send(store, 1, 10, 11, now_ms=T0, ttl_ms=100)
    await send(store, 2, 10, now_ms=T0, ttl_ms=1000)
    await send(store, 3, 10, now_ms=T0 + 10, ttl_ms=100)
    assert await store.expire_mailbox(mid(10), now_ms=T0 + 99) == 0
    assert await store.expire_mailbox(mid(10), now_ms=T0 + 110) == 2
    assert [m.seq for m in await store.fetch(mid(10), now_ms=0)] == [2]
    notice = await store.get_expiry_notice(mid(10))
    assert notice is not None and (notice.count, notice.up_to_seq) == (2, 3)
    assert await store.pending_count(mid(10)) == 1
    # Only that mailbox: the other's copy waits for the sweeper, which counts it alone.
    assert await store.get_expiry_notice(mid(11)) is None
    report = await store.expire(now_ms=T0 + 110)
    assert [(n.mailbox_id, n.count) for n in report.notices] == [(mid(11), 1)]
    assert report.messages_removed == 1 and (await store.queue_sizes()).total_blobs == 1
    assert await store.expire_mailbox(mid(99), now_ms=T0) == 0


async def test_dedup_records_outlive_a_short_ttl(store: Store) -> None:
    await account(store, 1, 10)

    async def send_short(now_ms: int) -> bool:
        r = await store.append(recipients=[rcpt(10)], client_msg_id=cmid(1), blob=b"x",
                               now_ms=now_ms, ttl_ms=100, dedup_ttl_ms=10_000)
        return r.duplicate

    assert not await send_short(T0)
    report = await store.expire(now_ms=T0 + 200)
    assert (report.messages_removed, report.dedup_removed) == (1, 0)
    assert await send_short(T0 + 300)  # a late retry is still recognised, not re-queued
    assert await store.pending_count(mid(10)) == 0
    assert (await store.expire(now_ms=T0 + 10_000)).dedup_removed == 1
    assert not await send_short(T0 + 10_001)


async def test_one_client_msg_id_twice_in_a_batch_keeps_the_longer_dedup(
    store: Store,
) -> None:
    """An earlier call in a batch creates the send record with a short life; a later call
    with the same client_msg_id adds a copy for another mailbox that lives longer. The
    record lives as long as that copy: a resend to it after the short TTL is a duplicate."""
    await account(store, 1, 10, 11)
    first, second = await store.append_many([
        AppendRequest((rcpt(10),), cmid(1), b"short", T0, 1_000),
        AppendRequest((rcpt(11),), cmid(1), b"long", T0, 100_000),
    ])
    assert not first.duplicate and not second.duplicate
    await store.expire(now_ms=T0 + 2_000)
    again = await send(store, 1, 11, now_ms=T0 + 3_000, ttl_ms=100_000)
    assert again.duplicate and again.seq_for(mid(11)) == 1
    assert await store.pending_count(mid(11)) == 1


async def test_expiry_sweep_is_batched(store: Store) -> None:
    await account(store, 1, 10)
    for n in range(1, 6):
        await send(store, n, 10, ttl_ms=10)
    first = await store.expire(now_ms=T0 + 10, limit=3)
    assert (first.messages_removed, first.more) == (3, True)
    assert first.notices[0].up_to_seq == 3
    second = await store.expire(now_ms=T0 + 10, limit=3)
    assert second.messages_removed == 2
    notice = await store.get_expiry_notice(mid(10))
    assert notice is not None and (notice.count, notice.up_to_seq) == (5, 5)


# --------------------------------------------------------------------------- prekeys


def otks(*ids: int) -> list[OneTimePrekey]:
    return [OneTimePrekey(key_id=i, data=b"otk%d" % i) for i in ids]


def kems(*ids: int) -> list[OneTimePrekey]:
    return [OneTimePrekey(key_id=i, data=b"kem%d" % i) for i in ids]


async def test_identity_rotation_drops_what_the_old_key_signed(store: Store) -> None:
    await account(store, 1)
    await store.upload_prekeys(account_id=aid(1), signed_prekey=b"spk1", last_resort_kem=b"lr1",
                               one_time_x25519=otks(1, 2), one_time_kem=kems(1, 2))
    await store.rotate_identity(account_id=aid(1), identity_key=b"ik2", rotation=b"r1",
                                now_ms=T0, expect_key=b"ik1", expect_rotations=0)
    counts = await store.prekey_counts(aid(1))
    # Signed, last-resort and one-time KEM prekeys were signed by the old key: gone.
    # One-time X25519 prekeys carry no signature: kept.
    assert (counts.has_signed_prekey, counts.has_last_resort_kem, counts.one_time_kem,
            counts.one_time_x25519) == (False, False, 0, 2)
    assert await store.fetch_prekey_bundle(aid(1)) is None  # nothing verifiable to hand out
    await store.upload_prekeys(account_id=aid(1), signed_prekey=b"spk2", last_resort_kem=b"lr2",
                               one_time_kem=kems(7))
    bundle = await store.fetch_prekey_bundle(aid(1))
    assert bundle is not None
    assert (bundle.identity_key, bundle.rotations, bundle.signed_prekey) == (
        b"ik2", (b"r1",), b"spk2")
    assert bundle.one_time_kem is not None and bundle.one_time_kem.data == b"kem7"
    assert bundle.one_time_x25519 is not None and bundle.one_time_x25519.data == b"otk1"
    again = await store.fetch_prekey_bundle(aid(1))
    assert again is not None and again.one_time_kem is None and again.last_resort_kem == b"lr2"


async def test_prekey_bundle_consumes_one_time_keys(store: Store) -> None:
    await account(store, 1)
    assert await store.fetch_prekey_bundle(aid(1)) is None  # nothing uploaded
    with pytest.raises(NotFound):
        await store.fetch_prekey_bundle(aid(9))
    with pytest.raises(NotFound):
        await store.upload_prekeys(account_id=aid(9), signed_prekey=b"spk")
    counts = await store.upload_prekeys(account_id=aid(1), one_time_x25519=otks(5, 3),
                                        one_time_kem=kems(7))
    assert (counts.one_time_x25519, counts.one_time_kem, counts.has_signed_prekey) == (2, 1, False)
    assert await store.fetch_prekey_bundle(aid(1)) is None  # no signed prekey: consume nothing
    await store.upload_prekeys(account_id=aid(1), signed_prekey=b"spk", last_resort_kem=b"lr")
    b1 = await store.fetch_prekey_bundle(aid(1))
    assert b1 is not None
    assert (b1.identity_key, b1.signed_prekey) == (b"ik1", b"spk")
    assert b1.one_time_x25519 == OneTimePrekey(key_id=3, data=b"otk3")  # lowest id first
    assert b1.one_time_kem == OneTimePrekey(key_id=7, data=b"kem7")
    assert b1.last_resort_kem is None and not b1.uses_last_resort
    assert (b1.rotations, b1.contact_mailbox_id, b1.contact_capability) == ((), None, None)
    assert (b1.remaining.one_time_x25519, b1.remaining.one_time_kem) == (1, 0)
    b2 = await store.fetch_prekey_bundle(aid(1))
    assert b2 is not None and b2.uses_last_resort and b2.last_resort_kem == b"lr"
    assert b2.one_time_x25519 is not None and b2.one_time_x25519.key_id == 5
    b3 = await store.fetch_prekey_bundle(aid(1))
    assert b3 is not None and b3.one_time_x25519 is None and b3.last_resort_kem == b"lr"
    # Replacing signed / last resort, overwriting an id, replacing the one-time sets.
    await store.upload_prekeys(account_id=aid(1), signed_prekey=b"spk2", one_time_x25519=otks(1))
    await store.upload_prekeys(
        account_id=aid(1), one_time_x25519=[OneTimePrekey(key_id=1, data=b"new")]
    )
    counts = await store.upload_prekeys(account_id=aid(1), one_time_kem=kems(2, 4),
                                        replace_one_time=True)
    assert counts == await store.prekey_counts(aid(1))
    assert (counts.one_time_x25519, counts.one_time_kem, counts.has_last_resort_kem) == (0, 2, True)
    b4 = await store.fetch_prekey_bundle(aid(1))
    assert b4 is not None and b4.signed_prekey == b"spk2" and b4.one_time_kem is not None
    with pytest.raises(NotFound):
        await store.prekey_counts(aid(9))


async def test_prekey_bundle_without_any_kem_is_refused(store: Store) -> None:
    await account(store, 1)
    await store.upload_prekeys(account_id=aid(1), signed_prekey=b"spk", one_time_x25519=otks(1))
    assert await store.fetch_prekey_bundle(aid(1)) is None
    assert (await store.prekey_counts(aid(1))).one_time_x25519 == 1  # not consumed


async def test_concurrent_bundle_fetches_never_share_a_one_time_key(store: Store) -> None:
    await account(store, 1)
    await store.upload_prekeys(account_id=aid(1), signed_prekey=b"spk", last_resort_kem=b"lr",
                               one_time_x25519=otks(*range(30)), one_time_kem=kems(*range(20)))
    bundles = await asyncio.gather(*(store.fetch_prekey_bundle(aid(1)) for _ in range(50)))
    assert all(b is not None for b in bundles)
    x = [b.one_time_x25519.key_id for b in bundles if b and b.one_time_x25519]
    k = [b.one_time_kem.key_id for b in bundles if b and b.one_time_kem]
    assert sorted(x) == list(range(30)) and sorted(k) == list(range(20))
    assert sum(1 for b in bundles if b and b.uses_last_resort) == 30
    counts = await store.prekey_counts(aid(1))
    assert (counts.one_time_x25519, counts.one_time_kem) == (0, 0)


# --------------------------------------------------------------------------- usernames


async def test_usernames_are_unique_and_exact(store: Store) -> None:
    await account(store, 1)
    await account(store, 2)
    with pytest.raises(NotFound):
        await store.claim_username(account_id=aid(9), username="x", binding=b"b", now_ms=T0)
    rec = await store.claim_username(account_id=aid(1), username="alice", binding=b"b1", now_ms=T0)
    assert await store.lookup_username("alice") == rec
    with pytest.raises(StoreConflict):
        await store.claim_username(account_id=aid(2), username="alice", binding=b"b", now_ms=T0)
    for miss in ("Alice", "alic", "alice ", ""):
        assert await store.lookup_username(miss) is None
    # Re-claiming replaces the account's previous name; the old one becomes free.
    await store.claim_username(account_id=aid(1), username="alice2", binding=b"b2", now_ms=T0 + 1)
    assert await store.lookup_username("alice") is None
    await store.claim_username(account_id=aid(2), username="alice", binding=b"b3", now_ms=T0 + 2)
    found = await store.lookup_username("alice")
    assert found is not None and (found.account_id, found.binding) == (aid(2), b"b3")
    assert await store.release_username(aid(2)) is True
    assert await store.release_username(aid(2)) is False
    assert await store.lookup_username("alice") is None


# --------------------------------------------------------------------------- deletion, admin


async def test_account_deletion_removes_everything_it_owns(
    store: Store, store_factory: StoreFactory
) -> None:
    await account(store, 1, 10, 11)
    await account(store, 2, 20)
    await store.upload_prekeys(account_id=aid(1), signed_prekey=b"s", last_resort_kem=b"l",
                               one_time_x25519=otks(1, 2), one_time_kem=kems(1))
    await store.claim_username(account_id=aid(1), username="doomed", binding=b"b", now_ms=T0)
    await store.rotate_identity(account_id=aid(1), identity_key=b"k2", rotation=b"r", now_ms=T0,
                                expect_key=b"ik1", expect_rotations=0)
    await store.set_contact_mailbox(account_id=aid(1), mailbox_id=mid(10),
                                    capability=capability(10))
    await send(store, 1, 10, 11)
    await send(store, 2, 10, 20)  # blob shared with the surviving account
    await send(store, 3, 20)
    assert await store.delete_account(aid(1)) is True
    assert await store.delete_account(aid(1)) is False
    assert await store.get_account(aid(1)) is None
    assert await store.get_mailbox(mid(10)) is None and await store.get_mailbox(mid(11)) is None
    assert await store.list_mailboxes(aid(1)) == []
    assert await store.lookup_username("doomed") is None
    with pytest.raises(NotFound):
        await store.fetch_prekey_bundle(aid(1))
    assert await store.fetch(mid(10), now_ms=T0) == []
    sizes = await store.queue_sizes()
    assert (sizes.total_messages, sizes.total_blobs) == (2, 2)
    if store_factory.raw_blob_rows is not None:
        assert store_factory.raw_blob_rows() == 2
    assert [m.blob for m in await store.fetch(mid(20), now_ms=T0)] == [b"blob2", b"blob3"]
    # The ids are free again (nothing dangling): re-creating works from scratch.
    await account(store, 1, 10)
    assert not (await send(store, 1, 10)).duplicate
    fresh = await store.get_account(aid(1))
    assert fresh is not None and (fresh.rotation_count, fresh.contact_mailbox_id) == (0, None)


async def test_queue_sizes_lists_largest_first(store: Store) -> None:
    await account(store, 1, 10, 11, 12)
    for n in range(3):
        await send(store, n, 10, now_ms=T0 + n)
    await send(store, 9, 11, 10, now_ms=T0 + 50)
    sizes = await store.queue_sizes(limit=5)
    assert [(q.mailbox_id, q.pending, q.oldest_received_at_ms, q.account_id)
            for q in sizes.mailboxes] == [(mid(10), 4, T0, aid(1)), (mid(11), 1, T0 + 50, aid(1))]
    assert (sizes.total_messages, sizes.total_blobs) == (5, 4)
    assert len((await store.queue_sizes(limit=1)).mailboxes) == 1


# --------------------------------------------------------------------------- persistence


async def test_committed_data_survives_reopen(store_factory: StoreFactory) -> None:
    if not store_factory.persistent:
        pytest.skip(f"{store_factory.name} is not persistent")
    s = await store_factory.open()
    await account(s, 1, 10)
    await store_factory_fill(s)
    await s.close()
    with pytest.raises(StoreError):
        await s.get_account(aid(1))
    s2 = await store_factory.open()
    try:
        assert [m.seq for m in await s2.fetch(mid(10), now_ms=T0)] == list(range(1, 11))
        assert (await send(s2, 1, 10)).duplicate
        assert (await send(s2, 11, 10)).seq_for(mid(10)) == 11
        assert (await s2.prekey_counts(aid(1))).one_time_x25519 == 3
        assert await s2.lookup_username("kept") is not None
    finally:
        await s2.close()


async def store_factory_fill(s: Store) -> None:
    await asyncio.gather(*(send(s, n, 10) for n in range(1, 11)))
    await s.upload_prekeys(account_id=aid(1), one_time_x25519=otks(1, 2, 3))
    await s.claim_username(account_id=aid(1), username="kept", binding=b"b", now_ms=T0)
