"""What only :class:`relay.store_postgres.PostgresStore` has: several stores (relay nodes)
on one schema at once, the versioned schema set-up, and a server that goes away.

The shared behaviour is the contract suite's (``test_store_contract.py``). Each test here
gets a fresh schema, dropped afterwards; the tests skip (fail under CI) without a server
(``tests.services``).
"""

from __future__ import annotations

import asyncio
import contextlib
import getpass
import hashlib
import random
from collections.abc import AsyncIterator, Awaitable, Callable
from typing import Any
from urllib.parse import urlsplit, urlunsplit

import asyncpg
import pytest

from pigeon_crypto.errors import StoreError
from relay import _pg_accounts as pg_accounts
from relay.ports import (
    AppendRequest,
    AppendResult,
    InviteRejected,
    OneTimePrekey,
    Recipient,
    RecordingObserver,
    StoreConflict,
    invite_code_hash,
    send_dedup_hash,
)
from relay.store_postgres import SCHEMA_VERSION, PostgresStore
from tests.services import postgres_dsn, unique_name

DAY_MS = 86_400_000
T0 = 1_700_000_000_000

Opener = Callable[[], Awaitable[PostgresStore]]


def aid(n: int) -> bytes:
    return n.to_bytes(16, "big")


def mid(n: int) -> bytes:
    return (0xB0 << 120 | n).to_bytes(16, "big")


def cap(n: int) -> bytes:
    return hashlib.sha256(hashlib.sha256(b"capability %d" % n).digest()).digest()


def cmid(n: int) -> bytes:
    return (0xC0 << 120 | n).to_bytes(16, "big")


def rcpt(n: int) -> Recipient:
    return Recipient(mailbox_id=mid(n), capability_hash=cap(n))


async def account(store: PostgresStore, n: int, *mailboxes: int) -> None:
    await store.create_account(account_id=aid(n), identity_key=b"ik%d" % n, now_ms=T0)
    for m in mailboxes:
        await store.create_mailbox(account_id=aid(n), mailbox_id=mid(m), capability_hash=cap(m),
                                   now_ms=T0 + m)


async def send(store: PostgresStore, n: int, *mailboxes: int, now_ms: int = T0
               ) -> AppendResult:
    return await store.append(recipients=[rcpt(m) for m in mailboxes], client_msg_id=cmid(n),
                              blob=b"blob%d" % n, now_ms=now_ms, ttl_ms=DAY_MS)


@pytest.fixture
def dsn() -> str:
    return postgres_dsn()


@pytest.fixture
async def schema(dsn: str) -> AsyncIterator[str]:
    name = unique_name("pgstore")
    try:
        yield name
    finally:
        conn = await asyncpg.connect(dsn)
        try:
            await conn.execute(f"DROP SCHEMA IF EXISTS {name} CASCADE")
        finally:
            await conn.close()


@pytest.fixture
async def admin(dsn: str) -> AsyncIterator[asyncpg.Connection]:
    """A plain connection beside the stores (what another node, or psql, sees)."""
    conn = await asyncpg.connect(dsn)
    try:
        yield conn
    finally:
        await conn.close()


@pytest.fixture
async def nodes(dsn: str, schema: str) -> AsyncIterator[tuple[PostgresStore, PostgresStore]]:
    """Two stores on one schema: two relay nodes sharing a database."""
    one = await PostgresStore.open(dsn, schema=schema, min_connections=1, max_connections=6)
    two = await PostgresStore.open(dsn, schema=schema, min_connections=1, max_connections=6)
    try:
        yield one, two
    finally:
        await one.close()
        await two.close()


# --------------------------------------------------------------------------- two nodes


async def test_a_rotation_waiting_on_another_sees_what_it_committed(
    nodes: tuple[PostgresStore, PostgresStore], dsn: str, schema: str
) -> None:
    """Two rotations checked against (K0, 0): the first holds the row and commits K0 ->
    K0 (the key unchanged); the second, waiting on the lock, must see the chain grow and
    fail. (A count in the locking statement would keep its snapshot and pass.)"""
    one, _ = nodes
    await one.create_account(account_id=aid(1), identity_key=b"K0", now_ms=T0)
    first = await asyncpg.connect(dsn, server_settings={"search_path": schema})
    second = await asyncpg.connect(dsn, server_settings={"search_path": schema})
    try:
        held = first.transaction()
        await held.start()
        await pg_accounts.rotate_identity(first, aid(1), b"K0", b"r1 K0->K0", T0, b"K0", 0)

        async def waiting() -> object:
            async with second.transaction():
                return await pg_accounts.rotate_identity(second, aid(1), b"K2", b"r1 K0->K2",
                                                         T0, b"K0", 0)

        task = asyncio.create_task(waiting())
        await asyncio.sleep(0.3)
        assert not task.done()  # on the row lock
        await held.commit()
        with pytest.raises(StoreConflict):
            await task
    finally:
        await first.close()
        await second.close()
    record = await one.get_account(aid(1))
    assert record is not None and (record.identity_key, record.rotation_count) == (b"K0", 1)


async def test_two_nodes_appending_to_one_mailbox_get_dense_distinct_seqs(
    nodes: tuple[PostgresStore, PostgresStore], admin: asyncpg.Connection, schema: str
) -> None:
    one, two = nodes
    await account(one, 1, 10, 11)
    n = 60
    # Every other send also goes to mailbox 11, so the two nodes' lock sets overlap.
    results = await asyncio.gather(*(
        send(one if i % 2 else two, i, 10, *((11,) if i % 3 == 0 else ())) for i in range(n)))
    seqs = [r.seq_for(mid(10)) for r in results]
    assert sorted(s for s in seqs if s is not None) == list(range(1, n + 1))
    in_11 = [r.seq_for(mid(11)) for i, r in enumerate(results) if i % 3 == 0]
    assert sorted(s for s in in_11 if s is not None) == list(range(1, len(in_11) + 1))
    # No message lost: each seq holds the blob of the send that was told that seq.
    stored = {m.seq: m.blob for m in await two.fetch(mid(10), limit=1000, now_ms=T0)}
    assert stored == {r.seq_for(mid(10)): b"blob%d" % i for i, r in enumerate(results)}
    mailbox = await one.get_mailbox(mid(10))
    assert mailbox is not None and (mailbox.last_seq, mailbox.pending) == (n, n)
    # Committed when the call returned: a connection of its own sees every row.
    assert await admin.fetchval(f"SELECT count(*) FROM {schema}.deliveries") == n + len(in_11)


async def test_two_nodes_racing_for_the_last_one_time_prekey_hand_it_out_once(
    nodes: tuple[PostgresStore, PostgresStore],
) -> None:
    one, two = nodes
    await account(one, 1)
    await one.upload_prekeys(
        account_id=aid(1), signed_prekey=b"spk", last_resort_kem=b"lr",
        one_time_x25519=[OneTimePrekey(key_id=i, data=b"otk%d" % i) for i in range(5)],
        one_time_kem=[OneTimePrekey(key_id=7, data=b"kem7")])
    bundles = await asyncio.gather(*(
        (one if i % 2 else two).fetch_prekey_bundle(aid(1)) for i in range(20)))
    assert all(b is not None for b in bundles)
    kem = [b.one_time_kem for b in bundles if b is not None and b.one_time_kem is not None]
    assert kem == [OneTimePrekey(key_id=7, data=b"kem7")]
    assert sum(1 for b in bundles if b is not None and b.last_resort_kem == b"lr") == 19
    x = [b.one_time_x25519.key_id for b in bundles if b is not None and b.one_time_x25519]
    assert sorted(x) == list(range(5))
    counts = await two.prekey_counts(aid(1))
    assert (counts.one_time_x25519, counts.one_time_kem) == (0, 0)


async def _wait_for_the_write_to_block(dsn: str, task: asyncio.Task[Any]) -> None:
    """Until the append *task* runs its write (INSERT ... ON CONFLICT) and waits for a
    lock the test holds; fails if it never does."""
    watcher = await asyncpg.connect(dsn)
    try:
        for _ in range(500):
            waiting = await watcher.fetchval(
                "SELECT count(*) FROM pg_stat_activity WHERE wait_event_type = 'Lock'"
                " AND application_name = 'pigeon-relay' AND query LIKE '%nextval(''blob_ids'')%'")
            if waiting:
                break
            await asyncio.sleep(0.01)
    finally:
        await watcher.close()
    assert waiting and not task.done()


async def test_a_resend_racing_across_nodes_is_stored_once(
    nodes: tuple[PostgresStore, PostgresStore],
) -> None:
    one, two = nodes
    await account(one, 1, 10, 11)
    for round_ in range(5):
        results = await asyncio.gather(*(
            send(one if i % 2 else two, round_, 10, 11) for i in range(10)))
        assert sum(not r.duplicate for r in results) == 1
        assert {(a.mailbox_id, a.seq) for r in results for a in r.accepted} == {
            (mid(10), round_ + 1), (mid(11), round_ + 1)}
    assert await one.pending_count(mid(10)) == 5
    assert (await two.queue_sizes()).total_blobs == 5


async def test_one_client_msg_id_to_other_mailboxes_on_two_nodes(
    nodes: tuple[PostgresStore, PostgresStore], admin: asyncpg.Connection, schema: str,
    dsn: str,
) -> None:
    """A node whose send record loses the race to another node's (same client_msg_id,
    other mailboxes) still keeps its copy idempotent, for as long as its own TTL."""
    one, two = nodes
    await account(one, 1, 10, 20)
    # The "other node": a send record for cmid(1) inserted and not yet committed, expiring
    # long before the copy that node `one` is about to store.
    tx = admin.transaction()
    await tx.start()
    await admin.execute(f"INSERT INTO {schema}.send_dedup VALUES ($1, $2, $3, $4, '')",
                        send_dedup_hash(cmid(1)), T0, T0 + 10, T0 + 10)
    task = asyncio.create_task(send(one, 1, 20))
    await _wait_for_the_write_to_block(dsn, task)
    await tx.commit()
    first = await task
    assert (first.seq_for(mid(20)), first.duplicate) == (1, False)
    assert (await send(two, 1, 20, now_ms=T0 + 5)).duplicate
    # The other record's short life was extended to this copy's: still a duplicate after
    # the sweep at T0 + 20 (without the extension the record would go, and the retry
    # would not look for the copy's idempotency row).
    report = await two.expire(now_ms=T0 + 20)
    assert report.dedup_removed == 0
    retry = await send(one, 1, 20, now_ms=T0 + 30)
    assert retry.duplicate and retry.seq_for(mid(20)) == 1
    assert await two.pending_count(mid(20)) == 1


async def test_a_lost_race_extends_the_winner_to_the_batchs_longest_copy(
    nodes: tuple[PostgresStore, PostgresStore], admin: asyncpg.Connection, schema: str,
    dsn: str,
) -> None:
    """The record a batch would create for a client_msg_id loses the race; the winner's
    record is extended to the latest keep_until of every copy the batch added under that
    client_msg_id, the later calls' included."""
    one, two = nodes
    await account(one, 1, 20, 21)
    tx = admin.transaction()
    await tx.start()
    await admin.execute(f"INSERT INTO {schema}.send_dedup VALUES ($1, $2, $3, $4, '')",
                        send_dedup_hash(cmid(1)), T0, T0 + 10, T0 + 10)
    task = asyncio.create_task(one.append_many([
        AppendRequest((rcpt(20),), cmid(1), b"short", T0, 100),
        AppendRequest((rcpt(21),), cmid(1), b"long", T0, 10_000),
    ]))
    await _wait_for_the_write_to_block(dsn, task)
    await tx.commit()
    assert [r.duplicate for r in await task] == [False, False]
    await two.expire(now_ms=T0 + 1_000)
    retry = await send(two, 1, 21, now_ms=T0 + 2_000)
    assert retry.duplicate and retry.seq_for(mid(21)) == 1
    assert await one.pending_count(mid(21)) == 1


async def test_acks_on_two_nodes_drop_a_shared_blob_with_its_last_copy(
    nodes: tuple[PostgresStore, PostgresStore], admin: asyncpg.Connection, schema: str
) -> None:
    one, two = nodes
    await account(one, 1, 10, 11, 12, 13)
    for n in range(1, 21):
        await send(one, n, 10, 11, 12, 13)  # one blob, four copies
    got = await asyncio.gather(*(
        (one if m % 2 else two).ack(mid(m), seqs=[s]) for s in range(1, 21)
        for m in (10, 11, 12, 13)))
    assert sum(got) == 80
    assert await admin.fetchval(f"SELECT count(*) FROM {schema}.blobs") == 0
    assert (await one.queue_sizes()).total_messages == 0
    assert [await two.pending_count(mid(m)) for m in (10, 11, 12, 13)] == [0, 0, 0, 0]


async def test_a_mixed_load_on_two_nodes_keeps_the_counters_true(
    nodes: tuple[PostgresStore, PostgresStore], admin: asyncpg.Connection, schema: str
) -> None:
    """Appends, acks, sweeps and mailbox deletions from both nodes at once: afterwards
    every pending count and blob reference count matches the rows, no blob is orphaned
    and no call failed (deadlock victims are retried)."""
    one, two = nodes
    await account(one, 1, *range(10, 22))
    rnd = random.Random(7)

    async def worker(w: int) -> None:
        s = one if w % 2 else two
        for i in range(40):
            op = rnd.random()
            if op < 0.5:
                ms = rnd.sample(range(10, 22), rnd.randint(1, 5))
                await s.append(recipients=[rcpt(m) for m in ms],
                               client_msg_id=cmid(rnd.randrange(100)), blob=b"x",
                               now_ms=T0 + i, ttl_ms=rnd.randint(1, 60))
            elif op < 0.8:
                await s.ack_many([(mid(rnd.randrange(10, 22)), rnd.randrange(20),
                                   (rnd.randrange(20),)) for _ in range(rnd.randint(1, 3))])
            elif op < 0.9:
                await s.expire(now_ms=T0 + i, limit=rnd.randint(1, 20))
            else:
                m = rnd.randrange(10, 22)
                if await s.delete_mailbox(account_id=aid(1), mailbox_id=mid(m)):
                    await s.create_mailbox(account_id=aid(1), mailbox_id=mid(m),
                                           capability_hash=cap(m), now_ms=T0 + i)

    await asyncio.gather(*(worker(w) for w in range(8)))
    q = f"SET LOCAL search_path = {schema}"
    async with admin.transaction():
        await admin.execute(q)
        assert await admin.fetch(
            "SELECT id FROM mailboxes m WHERE pending <>"
            " (SELECT count(*) FROM deliveries d WHERE d.mailbox_id = m.id)") == []
        assert await admin.fetch(
            "SELECT id FROM blobs b WHERE refs <>"
            " (SELECT count(*) FROM deliveries d WHERE d.blob_id = b.id)") == []
        assert await admin.fetchval(
            "SELECT count(*) FROM mailboxes m WHERE last_seq <"
            " (SELECT coalesce(max(seq), 0) FROM deliveries d WHERE d.mailbox_id = m.id)") == 0
        assert await admin.fetchval("SELECT count(*) FROM blobs") > 0


async def test_two_nodes_share_one_invite_and_one_username(
    nodes: tuple[PostgresStore, PostgresStore],
) -> None:
    one, two = nodes
    h = invite_code_hash("once")
    await one.create_invite(code_hash=h, now_ms=T0)
    made = await asyncio.gather(*(
        (one if i % 2 else two).create_account(account_id=aid(i), identity_key=b"k",
                                               now_ms=T0, invite_code_hash=h)
        for i in range(1, 11)), return_exceptions=True)
    assert sum(not isinstance(r, BaseException) for r in made) == 1
    assert all(isinstance(r, InviteRejected) for r in made if isinstance(r, BaseException))
    await account(one, 20)
    await account(one, 21)
    claims = await asyncio.gather(*(
        (one if i % 2 else two).claim_username(account_id=aid(20 + i % 2), username="alice",
                                               binding=b"b%d" % i, now_ms=T0)
        for i in range(10)), return_exceptions=True)
    winners = {r.account_id for r in claims if not isinstance(r, BaseException)}
    assert len(winners) == 1
    assert all(isinstance(r, StoreConflict) for r in claims if isinstance(r, BaseException))
    found = await two.lookup_username("alice")
    assert found is not None and {found.account_id} == winners


# --------------------------------------------------------------------------- schema


async def test_reopening_keeps_the_data_and_the_schema_version(
    dsn: str, schema: str, admin: asyncpg.Connection
) -> None:
    store = await PostgresStore.open(dsn, schema=schema, min_connections=1)
    await account(store, 1, 10)
    await send(store, 1, 10)
    await store.close()
    await store.close()  # idempotent
    with pytest.raises(StoreError):
        await store.get_mailbox(mid(10))
    again = await PostgresStore.open(dsn, schema=schema, min_connections=1)
    try:
        assert [m.blob for m in await again.fetch(mid(10), now_ms=T0)] == [b"blob1"]
        assert (await send(again, 1, 10)).duplicate
        assert (await send(again, 2, 10)).seq_for(mid(10)) == 2
    finally:
        await again.close()
    versions = await admin.fetch(f"SELECT version FROM {schema}.schema_version")
    assert [r[0] for r in versions] == [SCHEMA_VERSION] == [1]


async def test_a_newer_schema_version_is_refused(
    dsn: str, schema: str, admin: asyncpg.Connection
) -> None:
    store = await PostgresStore.open(dsn, schema=schema, min_connections=1)
    await store.close()
    await admin.execute(f"INSERT INTO {schema}.schema_version VALUES ($1)", SCHEMA_VERSION + 1)
    with pytest.raises(StoreError, match="newer"):
        await PostgresStore.open(dsn, schema=schema, min_connections=1)


async def test_nodes_starting_together_set_the_schema_up_once(
    dsn: str, schema: str, admin: asyncpg.Connection
) -> None:
    stores = await asyncio.gather(*(
        PostgresStore.open(dsn, schema=schema, min_connections=1) for _ in range(4)))
    for store in stores:
        await store.close()
    assert await admin.fetchval(f"SELECT count(*) FROM {schema}.schema_version") == 1


@pytest.mark.parametrize("name", ["", "Pigeon", "a-b", "1abc", "pg_catalog", "x; DROP",
                                  "a" * 64, "sch\u00e9ma", 'x"y'])
async def test_schema_names_must_be_plain_identifiers(dsn: str, name: str) -> None:
    with pytest.raises(ValueError, match="schema"):
        await PostgresStore.open(dsn, schema=name)


async def test_a_reserved_word_is_a_schema_name_like_any_other(
    dsn: str, admin: asyncpg.Connection
) -> None:
    await admin.execute('DROP SCHEMA IF EXISTS "user" CASCADE')
    try:
        store = await PostgresStore.open(dsn, schema="user", min_connections=1)
        try:
            await account(store, 1, 10)
            assert (await send(store, 1, 10)).seq_for(mid(10)) == 1
        finally:
            await store.close()
        assert await admin.fetchval('SELECT count(*) FROM "user".deliveries') == 1
    finally:
        await admin.execute('DROP SCHEMA IF EXISTS "user" CASCADE')


async def test_the_observer_sees_calls_and_commits(dsn: str, schema: str) -> None:
    observer = RecordingObserver()
    store = await PostgresStore.open(dsn, schema=schema, min_connections=1, observer=observer)
    try:
        await account(store, 1, 10)
        await send(store, 1, 10)
        await store.get_mailbox(mid(10))
        with pytest.raises(StoreConflict):
            await store.create_mailbox(account_id=aid(1), mailbox_id=mid(10),
                                       capability_hash=cap(10), now_ms=T0)
    finally:
        await store.close()
    assert observer.operations == {"create_account": 1, "create_mailbox": 2, "append": 1,
                                   "get_mailbox": 1}
    assert (observer.commits, observer.failed_commits) == (4, 1)


# --------------------------------------------------------------------------- failures


async def test_the_dsn_and_its_password_stay_out_of_reprs_and_errors(
    dsn: str, schema: str
) -> None:
    parts = urlsplit(dsn)
    user = parts.username or getpass.getuser()
    secret = "hunter2-do-not-show"
    with_password = urlunsplit(parts._replace(
        netloc=f"{user}:{secret}@{parts.hostname}:{parts.port or 5432}"))
    store = await PostgresStore.open(with_password, schema=schema, min_connections=1)
    try:
        assert secret not in repr(store) and schema in repr(store)
    finally:
        await store.close()
    refused = urlunsplit(parts._replace(netloc=f"{user}:{secret}@127.0.0.1:1"))
    with pytest.raises(StoreError) as caught:
        await PostgresStore.open(refused, schema=schema)
    assert secret not in str(caught.value) and "127.0.0.1" not in str(caught.value)



@pytest.mark.parametrize("bad", ["postgresql://127.0.0.1:1/test", "postgresql://[::1/x",
                                 "postgresql://127.0.0.1:5432/no_such_database_here"])
async def test_a_bad_dsn_is_a_store_error(bad: str) -> None:
    postgres_dsn()  # the last one needs the server
    with pytest.raises(StoreError) as caught:
        await PostgresStore.open(bad, schema="pigeon_never_created")
    assert caught.value.__cause__ is not None


async def test_open_says_what_to_check(dsn: str) -> None:
    parts = urlsplit(dsn)
    missing = urlunsplit(parts._replace(path="/no_such_database_here"))
    with pytest.raises(StoreError, match="database named in the store URL does not exist"):
        await PostgresStore.open(missing, schema="pigeon_never_created")
    with pytest.raises(StoreError, match="nothing listens"):
        await PostgresStore.open("postgresql://127.0.0.1:1/test", schema="x")


async def test_without_create_a_schema_without_tables_is_refused(
        dsn: str, schema: str, admin: asyncpg.Connection) -> None:
    with pytest.raises(StoreError, match="no relay tables"):
        await PostgresStore.open(dsn, schema=schema, create=False)
    assert not await admin.fetchval(  # and nothing was made
        "SELECT count(*) FROM information_schema.schemata WHERE schema_name = $1", schema)
    store = await PostgresStore.open(dsn, schema=schema)  # a node makes it
    await store.close()
    store = await PostgresStore.open(dsn, schema=schema, create=False)  # then admin opens it
    await store.close()


class _Proxy:
    """A TCP relay to the server that the test can cut: the server "goes away"."""

    def __init__(self, host: str, port: int) -> None:
        self._target = (host, port)
        self._server: asyncio.Server | None = None
        self._writers: set[asyncio.StreamWriter] = set()
        self.port = 0

    async def start(self) -> None:
        self._server = await asyncio.start_server(self._serve, "127.0.0.1", 0)
        self.port = self._server.sockets[0].getsockname()[1]

    async def _serve(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        up_reader, up_writer = await asyncio.open_connection(*self._target)
        self._writers |= {writer, up_writer}

        async def pipe(src: asyncio.StreamReader, dst: asyncio.StreamWriter) -> None:
            with contextlib.suppress(OSError):
                while data := await src.read(65536):
                    dst.write(data)
                    await dst.drain()
            dst.close()

        await asyncio.gather(pipe(reader, up_writer), pipe(up_reader, writer))

    async def stop(self) -> None:
        assert self._server is not None
        self._server.close()
        for w in self._writers:
            w.close()
        await self._server.wait_closed()


async def test_a_server_gone_is_a_store_error(dsn: str, schema: str) -> None:
    parts = urlsplit(dsn)
    proxy = _Proxy(parts.hostname or "127.0.0.1", parts.port or 5432)
    await proxy.start()
    via_proxy = urlunsplit(parts._replace(netloc=f"{parts.username or ''}"
                                          f"{'@' if parts.username else ''}127.0.0.1:{proxy.port}"))
    store = await PostgresStore.open(via_proxy, schema=schema, min_connections=1,
                                     max_connections=2)
    try:
        await account(store, 1, 10)
        await proxy.stop()
        with pytest.raises(StoreError) as caught:
            await send(store, 1, 10)
        assert caught.value.__cause__ is not None
        with pytest.raises(StoreError):
            await store.get_mailbox(mid(10))
    finally:
        await store.close()


# --------------------------------------------------------------------------- timeouts


async def test_a_mailbox_locked_by_a_stalled_node_is_a_store_error_not_a_hang(
    dsn: str, schema: str, admin: asyncpg.Connection
) -> None:
    """Another session (a node stalled mid-transaction) holds a mailbox's row lock: an
    append to it fails after the lock timeout, and a call that finds every pooled
    connection busy fails after the acquire timeout; neither waits for the other node."""
    store = await PostgresStore.open(dsn, schema=schema, min_connections=1, max_connections=1,
                                     lock_timeout_s=1.0, acquire_timeout_s=0.2)
    try:
        await account(store, 1, 10)
        tx = admin.transaction()
        await tx.start()
        await admin.execute(f"SELECT 1 FROM {schema}.mailboxes WHERE id = $1 FOR UPDATE",
                            mid(10))
        loop = asyncio.get_running_loop()
        began = loop.time()
        with pytest.raises(StoreError) as caught:
            await send(store, 1, 10)
        assert loop.time() - began < 5
        assert isinstance(caught.value.__cause__, asyncpg.LockNotAvailableError)
        # The one connection is busy waiting on the lock: the next call cannot have it.
        waiting = asyncio.create_task(send(store, 2, 10))
        await asyncio.sleep(0.05)
        with pytest.raises(StoreError) as caught:
            await store.get_mailbox(mid(10))
        assert isinstance(caught.value.__cause__, TimeoutError)
        with pytest.raises(StoreError):
            await waiting
        await tx.rollback()
        assert not (await send(store, 1, 10)).duplicate  # nothing was left half-done
        assert await store.pending_count(mid(10)) == 1
    finally:
        await store.close()


async def test_the_sessions_carry_the_timeouts(dsn: str, schema: str) -> None:
    store = await PostgresStore.open(dsn, schema=schema, min_connections=1, max_connections=1,
                                     command_timeout_s=7, lock_timeout_s=3,
                                     idle_in_transaction_timeout_s=11)
    try:
        async with store._pool.acquire() as conn:  # the pooled sessions themselves
            got = [await conn.fetchval(f"SELECT current_setting('{name}')") for name in (
                "statement_timeout", "lock_timeout", "idle_in_transaction_session_timeout")]
        assert got == ["7s", "3s", "11s"]
    finally:
        await store.close()
    with pytest.raises(ValueError):
        await PostgresStore.open(dsn, schema=schema, lock_timeout_s=0)


async def test_a_statement_over_the_command_timeout_is_a_store_error(
    dsn: str, schema: str, admin: asyncpg.Connection
) -> None:
    """With no lock timeout to speak of, a wait still ends at the statement timeout."""
    store = await PostgresStore.open(dsn, schema=schema, min_connections=1, max_connections=2,
                                     command_timeout_s=0.3, lock_timeout_s=60)
    try:
        await account(store, 1, 10)
        async with admin.transaction():
            await admin.execute(f"SELECT 1 FROM {schema}.mailboxes WHERE id = $1 FOR UPDATE",
                                mid(10))
            with pytest.raises(StoreError) as caught:
                await send(store, 1, 10)
            assert isinstance(caught.value.__cause__,
                              asyncpg.QueryCanceledError | TimeoutError)
    finally:
        await store.close()


async def test_an_ack_commits_without_waiting_for_the_wal_flush(dsn: str, schema: str) -> None:
    """An ack lost to a database crash is a redelivery, so its transaction commits with
    ``synchronous_commit = off``, and only its own: the pooled connection keeps the
    server's setting for whatever runs on it next."""
    from relay import _pg_ops

    store = await PostgresStore.open(dsn, schema=schema, min_connections=1, max_connections=1)
    try:
        await account(store, 1, 10)
        await send(store, 1, 10)
        await send(store, 2, 10)
        async with store._pool.acquire() as conn:
            async with conn.transaction():
                assert await _pg_ops.ack_many(conn, [(mid(10), 1, ())]) == [1]
                assert await conn.fetchval("SHOW synchronous_commit") == "off"
            assert await conn.fetchval("SHOW synchronous_commit") == "on"
        assert await store.ack(mid(10), up_to_seq=2) == 1  # through the store, as the relay
        assert await store.pending_count(mid(10)) == 0
        async with store._pool.acquire() as conn:
            assert await conn.fetchval("SHOW synchronous_commit") == "on"
    finally:
        await store.close()
