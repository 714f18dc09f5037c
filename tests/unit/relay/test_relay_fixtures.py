"""Frozen relay databases of every shipped schema version open, migrate and keep their data.

The fixtures and how each was built: ``relay_fixtures.py``. Each test decompresses a
fixture into ``tmp_path`` and opens it with today's ``SqliteStore``, which migrates it;
the store-level tests run in both writer modes (the migration then runs in this process
or in the writer process). What the version's own code returned while writing
(``probes``) and read back (``snapshot``) is the oracle.
"""

from __future__ import annotations

import gzip
import json
import sqlite3
from collections.abc import AsyncIterator, Callable
from contextlib import asynccontextmanager
from pathlib import Path
from typing import Any

import pytest

from pigeon_crypto.errors import StoreError
from relay.ports import (
    InviteRejected,
    NotFound,
    OneTimePrekey,
    Recipient,
    RejectReason,
    StoreConflict,
    invite_code_hash,
)
from relay.store_sqlite import SCHEMA_VERSION, SqliteStore, WriterMode

from .relay_fixtures import (
    ALICE,
    BOB,
    BUILT_WITH,
    CAROL,
    DATA,
    DAVE,
    DAY_MS,
    DEDUP_TTL_MS,
    INVITES,
    MAILBOXES,
    NOW,
    PUSH_URL,
    READ_AT,
    TTL_MS,
    binding,
    capability,
    capability_hash,
    cmid,
    expected_path,
    fixture_path,
    identity_key,
    prekey,
    rotation_record,
)
from .relay_snapshot import snapshot

SHIPPED = [int(p.name.removeprefix("relay_v").removesuffix(".db.gz"))
           for p in sorted(DATA.glob("relay_v*.db.gz"))]
WRITERS = [WriterMode.THREAD, WriterMode.PROCESS]

ADDED_COLUMNS_BY: dict[int, dict[str, list[str]]] = {2: {"mailboxes": ["serial"]}}
"""Columns a migration to version N adds to an existing table (``ALTER TABLE``, which
rewrites the table's SQL); every other object of an older database must come through
unchanged."""
REPLACED_BY: dict[int, list[str]] = {3: ["deliveries_gone"], 5: ["deliveries_gone"]}
"""Triggers a migration to version N drops and creates again under the same name (v3:
``deliveries_gone`` only cleans up after a deleted mailbox's cascade, acks and the
expiry sweep keep the counters and blobs once per statement; v5: back to v2's trigger,
for every deleted row)."""
REBUILT_BY: dict[int, dict[str, list[str]]] = {6: {"send_dedup": ["id", "send_key"]}}
"""Tables a migration to version N builds again under the same name with these columns
added, keeping every row (v6: the send records in insertion order, with a small index
on their key's first bytes)."""
SEEDED_BY: dict[int, dict[str, list[tuple[Any, ...]]]] = {
    2: {"counters": [("mailbox_serial", 0)]}}
"""Rows a migration to version N inserts into a table it creates; every other new table
starts empty."""


def _legacy_until(rows: dict[str, list[tuple[Any, ...]]]) -> dict[str, list[tuple[Any, ...]]]:
    return {"counters": [("dedup_legacy_until",
                          max((r[5] for r in rows["dedup"]), default=0))]}


ADDED_ROWS_BY: dict[int, Callable[[dict[str, list[tuple[Any, ...]]]],
                                  dict[str, list[tuple[Any, ...]]]]] = {4: _legacy_until}
"""Rows a migration to version N adds, computed from the old database's rows (v4: until
when its ``dedup`` rows may still answer retries, the latest of their keep_until_ms)."""

GENERATION = {MAILBOXES["bob_2"].hex(): 2}
"""Mailboxes whose capability was replaced: the generation that is accepted now."""
SWEPT = cmid(7).hex()
"""The send whose message and idempotency record the build's expiry sweep removed."""
FAR = NOW + 60 * DAY_MS
"""After every message, idempotency record and retirement time of the fixtures."""


def unpack(version: int, tmp_path: Path) -> Path:
    path = tmp_path / f"v{version}.db"
    path.write_bytes(gzip.decompress(fixture_path(version).read_bytes()))
    return path


def expected(version: int) -> dict[str, Any]:
    data: dict[str, Any] = json.loads(expected_path(version).read_text())
    return data


def raw(path: Path) -> tuple[dict[str, str], dict[str, list[str]],
                             dict[str, list[tuple[Any, ...]]], list[int]]:
    """Schema objects, every table's columns and rows, and the version rows (plain SQLite)."""
    conn = sqlite3.connect(f"file:{path}?mode=ro", uri=True)
    try:
        objects = {name: sql for name, sql in conn.execute(
            "SELECT name, sql FROM sqlite_master WHERE name != 'schema_version'")}
        tables = [name for (name,) in conn.execute(
            "SELECT name FROM sqlite_master WHERE type = 'table' AND name != 'schema_version'")]
        columns = {t: [r[1] for r in conn.execute(f'PRAGMA table_info("{t}")')] for t in tables}
        rows = {t: sorted(conn.execute(f'SELECT * FROM "{t}"').fetchall(), key=repr)
                for t in tables}
        versions = [v for (v,) in conn.execute("SELECT version FROM schema_version ORDER BY rowid")]
    finally:
        conn.close()
    return objects, columns, rows, versions


def query(path: Path, sql: str, *args: Any) -> list[tuple[Any, ...]]:
    conn = sqlite3.connect(path)
    try:
        return conn.execute(sql, args).fetchall()
    finally:
        conn.close()


def check_database(path: Path) -> None:
    assert query(path, "PRAGMA integrity_check") == [("ok",)]
    assert query(path, "PRAGMA foreign_key_check") == []
    # No blob outlives its last delivery row, and the pending counts are exact (the
    # deliveries_gone trigger; in v3 and v4, acks and the expiry sweep per statement).
    assert query(path, "SELECT count(*) FROM blobs WHERE id NOT IN"
                       " (SELECT blob_id FROM deliveries)") == [(0,)]
    assert query(path, "SELECT count(*) FROM mailboxes m WHERE pending != (SELECT count(*)"
                       " FROM deliveries d WHERE d.mailbox_id = m.id)") == [(0,)]
    if query(path, "SELECT 1 FROM sqlite_master WHERE name = 'send_dedup'"):
        # One record per send: since v6 no primary key says so, the writer's lookup does.
        assert query(path, "SELECT count(*) - count(DISTINCT send_hash) FROM send_dedup"
                     ) == [(0,)]


def recipient(mailbox: str, generation: int | None = None) -> Recipient:
    name = next(n for n, m in MAILBOXES.items() if m.hex() == mailbox)
    return Recipient(mailbox_id=bytes.fromhex(mailbox),
                     capability_hash=capability_hash(name, generation or GENERATION.get(
                         mailbox, 1)))


def live_mailboxes(data: dict[str, Any]) -> list[str]:
    return [m for m, rec in data["snapshot"]["mailboxes"].items() if rec is not None]


@asynccontextmanager
async def opened(version: int, tmp_path: Path, writer: WriterMode = WriterMode.THREAD
                 ) -> AsyncIterator[tuple[SqliteStore, Path, dict[str, Any]]]:
    path = unpack(version, tmp_path)
    store = await SqliteStore.open(path, writer=writer)
    try:
        yield store, path, expected(version)
    finally:
        await store.close()


@pytest.fixture(params=WRITERS, ids=[w.value for w in WRITERS])
def writer(request: pytest.FixtureRequest) -> WriterMode:
    mode: WriterMode = request.param
    return mode


# --- the set of fixtures --------------------------------------------------------------------


def test_a_fixture_for_every_shipped_version(tmp_path: Path) -> None:
    """A schema bump fails here until its fixture, built by its own code, is added."""
    assert list(range(1, SCHEMA_VERSION + 1)) == SHIPPED, (
        f"frozen relay databases for versions {SHIPPED}, schema is at {SCHEMA_VERSION}: "
        "build the missing one with its own code (relay_fixtures.py)")
    assert sorted(BUILT_WITH) == SHIPPED
    for version in SHIPPED:
        # Written by that version's code: today's would have stamped today's version.
        assert raw(unpack(version, tmp_path))[3] == list(range(1, version + 1)), version
        data = expected(version)
        assert (data["schema_version"], data["commit"]) == (version, BUILT_WITH[version])


def test_frozen_databases_hold_what_a_migration_could_damage(tmp_path: Path) -> None:
    """The builder's own read-back (what the tests compare against) is not empty, and
    each version stored its idempotency records its own way."""
    for version in SHIPPED:
        snap = expected(version)["snapshot"]
        accounts = snap["accounts"]
        assert [a is None for a in accounts.values()] == [False, False, False, True]
        assert accounts[ALICE.hex()]["rotation_count"] == 1
        assert accounts[ALICE.hex()]["prekey_counts"] == [5, 3, True, True]
        assert accounts[ALICE.hex()]["contact_mailbox_id"] == MAILBOXES["alice_contact"].hex()
        assert {m: len(r["messages"]) for m, r in snap["mailboxes"].items() if r} == {
            MAILBOXES[n].hex(): k for n, k in (("alice_contact", 1), ("alice_old", 2),
                                               ("alice_new", 2), ("alice_short2", 1),
                                               ("bob_1", 3), ("bob_2", 2), ("carol", 3))}
        assert snap["mailboxes"][MAILBOXES["bob_1"].hex()]["pending"] == 4  # one past TTL
        assert snap["mailboxes"][MAILBOXES["carol"].hex()]["expiry_notice"] == [1, 2]
        assert [u is None for u in snap["usernames"].values()] == [
            True, False, False, True, True, True]
        assert sorted(i[3] is None for i in snap["invites"]) == [False] * 3 + [True] * 3
        tables = raw(unpack(version, tmp_path))[2]
        if version == 1:  # one dedup row per copy
            assert len(tables["dedup"]) == 19
        elif version < 4:  # one record per multi-recipient send, dedup rows for the others
            assert (len(tables["dedup"]), len(tables["send_dedup"])) == (8, 5)
        else:  # one record per send; a dedup row for the copy a retry added (send 9)
            assert (len(tables["dedup"]), len(tables["send_dedup"])) == (1, 13)


# --- opening each fixture with today's code: the files ---------------------------------------


@pytest.mark.parametrize("version", SHIPPED)
async def test_frozen_database_migrates_without_touching_old_rows(version: int,
                                                                  tmp_path: Path) -> None:
    path = unpack(version, tmp_path)
    objects, columns, rows, versions = raw(path)
    await (await SqliteStore.open(path)).close()
    objects_after, columns_after, rows_after, versions_after = raw(path)
    assert versions_after == versions + list(range(version + 1, SCHEMA_VERSION + 1))
    later = range(version + 1, SCHEMA_VERSION + 1)
    added: dict[str, list[str]] = {}
    for v in later:
        for table, cols in ADDED_COLUMNS_BY.get(v, {}).items():
            added.setdefault(table, []).extend(cols)
    replaced = {name for v in later for name in REPLACED_BY.get(v, [])}
    rebuilt = {t: cols for v in later for t, cols in REBUILT_BY.get(v, {}).items()}
    assert set(objects) <= set(objects_after)
    for name, sql in objects.items():
        if name not in added and name not in replaced and name not in rebuilt:
            assert objects_after[name] == sql, f"{name} changed"
    extra: dict[str, list[tuple[Any, ...]]] = {}
    for v in later:
        if v in ADDED_ROWS_BY:
            for table, more in ADDED_ROWS_BY[v](rows).items():
                extra.setdefault(table, []).extend(more)
    for table, old in rows.items():
        if table in rebuilt:
            assert sorted(columns_after[table]) == sorted(columns[table] + rebuilt[table])
        else:
            assert columns_after[table] == columns[table] + added.get(table, []), table
        old_columns = ", ".join(f'"{c}"' for c in columns[table])
        kept = sorted(query(path, f'SELECT {old_columns} FROM "{table}"'), key=repr)
        assert kept == sorted(old + extra.get(table, []), key=repr), f"rows of {table} changed"
    seeded = {t: r for v in later for t, r in SEEDED_BY.get(v, {}).items()}
    for table in set(rows_after) - set(rows):
        assert rows_after[table] == sorted(seeded.get(table, []) + extra.get(table, []),
                                           key=repr), f"new table {table}"
    if "send_dedup" in rebuilt:  # each key's index entry is its first bytes, in order
        assert query(path, "SELECT count(*) FROM send_dedup WHERE send_key IS NOT"
                           " substr(send_hash, 1, 8)") == [(0,)]
        times = [r[0] for r in query(path, "SELECT received_at_ms FROM send_dedup ORDER BY id")]
        assert times == sorted(times)
    check_database(path)


@pytest.mark.parametrize("version", SHIPPED)
async def test_migrated_schema_is_a_new_databases_schema(version: int, tmp_path: Path) -> None:
    """Catches an edit to a shipped migration: the tables an old relay created would then
    differ from those a new database gets."""
    path = unpack(version, tmp_path)
    await (await SqliteStore.open(path)).close()
    await (await SqliteStore.open(tmp_path / "new.db")).close()

    def schema(p: Path) -> dict[str, str]:
        return {name: " ".join((sql or "").split()) for name, sql in raw(p)[0].items()}

    assert schema(path) == schema(tmp_path / "new.db")


@pytest.mark.parametrize("version", SHIPPED)
async def test_mailboxes_made_after_the_migration_get_fresh_serials(version: int,
                                                                    tmp_path: Path) -> None:
    async with opened(version, tmp_path) as (store, path, _):
        before = dict(query(path, "SELECT id, serial FROM mailboxes"))
        await store.create_mailbox(account_id=CAROL, mailbox_id=b"\x3c" * 16,
                                   capability_hash=capability_hash("new"), now_ms=READ_AT)
        new = await store.rotate_mailbox(
            account_id=ALICE, mailbox_id=MAILBOXES["alice_new"], new_mailbox_id=b"\x3d" * 16,
            capability_hash=capability_hash("newer"), retire_at_ms=READ_AT + DAY_MS,
            now_ms=READ_AT)
        assert new.push_url == PUSH_URL  # the push registration is inherited
        after = dict(query(path, "SELECT id, serial FROM mailboxes"))
    if version == 1:  # migration 2 gives every existing mailbox serial 0
        assert set(before.values()) == {0}
    else:
        assert len(set(before.values())) == len(before) and 0 not in before.values()
    assert after[b"\x3c" * 16] == max(before.values()) + 1
    assert after[b"\x3d" * 16] == max(before.values()) + 2


# --- opening each fixture with today's code: the store ---------------------------------------


@pytest.mark.parametrize("version", SHIPPED)
async def test_frozen_database_reads_back_what_its_version_wrote(
        version: int, writer: WriterMode, tmp_path: Path) -> None:
    async with opened(version, tmp_path, writer) as (store, path, data):
        assert query(path, "SELECT max(version) FROM schema_version") == [(SCHEMA_VERSION,)]
        got = json.loads(json.dumps(await snapshot(store, version, data["probes"])))
    want = data["snapshot"]
    assert sorted(got) == sorted(want)
    for key in want:  # one section at a time, for a readable diff
        assert got[key] == want[key], key


@pytest.mark.parametrize("version", SHIPPED)
async def test_retries_of_old_sends_get_their_original_seqs(
        version: int, writer: WriterMode, tmp_path: Path) -> None:
    async with opened(version, tmp_path, writer) as (store, path, data):
        sends = data["probes"]["sends"]
        first: dict[tuple[str, str], int] = {}
        original: dict[str, tuple[int, int]] = {}
        for send in sends:
            result = send["result"]
            original.setdefault(send["client_msg_id"],
                                (result["received_at_ms"], result["expires_at_ms"]))
            for mailbox, seq, _ in result["accepted"]:
                first.setdefault((send["client_msg_id"], mailbox), seq)
        live = live_mailboxes(data)
        before = {m: await store.get_mailbox(bytes.fromhex(m)) for m in live}
        for send in sends:
            if send["client_msg_id"] == SWEPT:
                continue
            names = send["recipients"]
            result = await store.append(
                recipients=[recipient(m, g) for m, g in names],
                client_msg_id=bytes.fromhex(send["client_msg_id"]),
                blob=bytes.fromhex(send["blob"]), now_ms=READ_AT, ttl_ms=TTL_MS,
                dedup_ttl_ms=DEDUP_TTL_MS)
            accepts = [m for m, g in names if m in live and g == GENERATION.get(m, 1)]
            assert [(r.mailbox_id.hex(), r.seq, r.duplicate) for r in result.accepted] == [
                (m, first[(send["client_msg_id"], m)], True) for m in accepts], send["note"]
            assert [(m.hex(), why) for m, why in result.rejected] == [
                (m, RejectReason.WRONG_CAPABILITY) for m, _ in names if m not in accepts]
            if accepts:
                assert (result.received_at_ms, result.expires_at_ms) == original[
                    send["client_msg_id"]]
        # Nothing was queued again: the counters and queues are as they were.
        for m, record in before.items():
            assert await store.get_mailbox(bytes.fromhex(m)) == record
        # The swept send's record expired with its message: a retry is a new copy.
        swept = next(s for s in sends if s["client_msg_id"] == SWEPT)
        carol = before[MAILBOXES["carol"].hex()]
        assert carol is not None
        again = await store.append(
            recipients=[recipient(m, g) for m, g in swept["recipients"]],
            client_msg_id=bytes.fromhex(SWEPT), blob=bytes.fromhex(swept["blob"]),
            now_ms=READ_AT, ttl_ms=TTL_MS, dedup_ttl_ms=DEDUP_TTL_MS)
        assert not again.duplicate and again.seq_for(MAILBOXES["carol"]) == carol.last_seq + 1
    check_database(path)


@pytest.mark.parametrize("version", SHIPPED)
async def test_new_sends_continue_the_counters(version: int, writer: WriterMode,
                                               tmp_path: Path) -> None:
    async with opened(version, tmp_path, writer) as (store, path, data):
        snap = data["snapshot"]["mailboxes"]
        live = live_mailboxes(data)
        recipients = [recipient(m) for m in live]
        new = await store.append(recipients=recipients, client_msg_id=cmid(100),
                                 blob=b"after the upgrade", now_ms=READ_AT, ttl_ms=TTL_MS,
                                 dedup_ttl_ms=DEDUP_TTL_MS)
        assert [(r.mailbox_id.hex(), r.seq, r.duplicate) for r in new.accepted] == [
            (m, snap[m]["last_seq"] + 1, False) for m in live]
        again = await store.append(recipients=recipients[::-1], client_msg_id=cmid(100),
                                   blob=b"after the upgrade", now_ms=READ_AT + 1,
                                   ttl_ms=TTL_MS, dedup_ttl_ms=DEDUP_TTL_MS)
        assert again.duplicate and again.received_at_ms == READ_AT
        assert {r.mailbox_id.hex(): r.seq for r in again.accepted} == {
            m: snap[m]["last_seq"] + 1 for m in live}
        solo = await store.append(recipients=[recipient(MAILBOXES["bob_1"].hex())],
                                  client_msg_id=cmid(101), blob=b"solo", now_ms=READ_AT,
                                  ttl_ms=TTL_MS)
        assert solo.seq_for(MAILBOXES["bob_1"]) == snap[MAILBOXES["bob_1"].hex()]["last_seq"] + 2
        # Old messages first, in order, with their blobs; then the new ones.
        for m in live:
            fetched = await store.fetch(bytes.fromhex(m), now_ms=READ_AT)
            old = [[q.seq, q.received_at_ms, q.expires_at_ms, q.blob.hex()]
                   for q in fetched[:len(snap[m]["messages"])]]
            assert old == snap[m]["messages"]
            assert [q.blob for q in fetched[len(old):]] == [b"after the upgrade"] + (
                [b"solo"] if m == MAILBOXES["bob_1"].hex() else [])
        for m in live:
            record = await store.get_mailbox(bytes.fromhex(m))
            assert record is not None
            await store.ack(bytes.fromhex(m), up_to_seq=record.last_seq)
            assert await store.pending_count(bytes.fromhex(m)) == 0
        sizes = await store.queue_sizes()
        assert (sizes.total_messages, sizes.total_blobs, sizes.mailboxes) == (0, 0, ())
    check_database(path)


@pytest.mark.parametrize("version", SHIPPED)
async def test_bundles_hand_out_the_stored_prekeys(version: int, writer: WriterMode,
                                                   tmp_path: Path) -> None:
    async with opened(version, tmp_path, writer) as (store, path, data):
        assert data["probes"]["bundle_at_build"] == {"one_time_x25519": 1, "one_time_kem": 1}
        got = []
        for _ in range(7):
            b = await store.fetch_prekey_bundle(ALICE)
            assert b is not None
            assert (b.identity_key, b.rotations) == (identity_key("alice", 2),
                                                     (rotation_record("alice", 2),))
            assert b.signed_prekey == prekey("alice", "spk", 2, 2)
            assert (b.contact_mailbox_id, b.contact_capability) == (
                MAILBOXES["alice_contact"], capability("alice_contact"))
            got.append((b.one_time_x25519, b.one_time_kem, b.last_resort_kem))
        # X25519 2-4 from before the rotation, 5-6 after; KEM 10-12, then the last resort.
        assert got == [
            (OneTimePrekey(key_id=x, data=prekey("alice", "x25519", x, 1 if x < 5 else 2))
             if x else None,
             OneTimePrekey(key_id=k, data=prekey("alice", "kem", k, 2)) if k else None,
             None if k else prekey("alice", "lrk", 2, 2))
            for x, k in ((2, 10), (3, 11), (4, 12), (5, 0), (6, 0), (0, 0), (0, 0))]
        bob = await store.fetch_prekey_bundle(BOB)
        assert bob is not None and bob.uses_last_resort and bob.one_time_x25519 is None
        assert (bob.signed_prekey, bob.last_resort_kem) == (prekey("bob", "spk", 1),
                                                            prekey("bob", "lrk", 1))
        assert await store.fetch_prekey_bundle(CAROL) is None  # no prekeys: nothing to hand
        with pytest.raises(NotFound):
            await store.fetch_prekey_bundle(DAVE)
        # A rotation after the upgrade extends the old chain and drops the signed keys.
        rotated = await store.rotate_identity(account_id=ALICE,
                                              identity_key=identity_key("alice", 3),
                                              rotation=rotation_record("alice", 3),
                                              now_ms=READ_AT,
                                              expect_key=identity_key("alice", 2),
                                              expect_rotations=1)
        assert rotated.rotation_count == 2
        assert await store.fetch_prekey_bundle(ALICE) is None
        await store.upload_prekeys(account_id=ALICE, signed_prekey=b"spk 3",
                                   last_resort_kem=b"lrk 3")
        b = await store.fetch_prekey_bundle(ALICE)
        assert b is not None and b.rotations == (rotation_record("alice", 2),
                                                 rotation_record("alice", 3))
    check_database(path)


@pytest.mark.parametrize("version", SHIPPED)
async def test_usernames_and_invites_behave(version: int, writer: WriterMode,
                                            tmp_path: Path) -> None:
    async with opened(version, tmp_path, writer) as (store, path, _):
        found = await store.lookup_username("alice.w")
        assert found is not None and (found.account_id, found.binding) == (
            ALICE, binding("alice.w", "alice"))
        assert await store.lookup_username("alice") is None  # replaced by alice.w
        with pytest.raises(StoreConflict):
            await store.claim_username(account_id=BOB, username="alice.w", binding=b"b",
                                       now_ms=READ_AT)
        await store.claim_username(account_id=BOB, username="alice", binding=b"b",
                                   now_ms=READ_AT)
        old_bob = await store.lookup_username("bob")
        assert old_bob is None  # Bob's new claim replaced his old name
        await store.claim_username(account_id=CAROL, username="dave", binding=b"c",
                                   now_ms=READ_AT)  # Dave's went with his account

        def code(name: str) -> bytes:
            return invite_code_hash(INVITES[name])

        for name in ("alice", "carol", "dave", "expired", "revoked"):
            with pytest.raises(InviteRejected):
                await store.create_account(account_id=b"\xee" * 16, identity_key=b"k",
                                           now_ms=READ_AT, invite_code_hash=code(name))
        await store.create_account(account_id=b"\xee" * 16, identity_key=b"k",
                                   now_ms=READ_AT, invite_code_hash=code("spare"))
        assert not await store.consume_invite(code_hash=code("spare"), now_ms=READ_AT)
        assert not await store.consume_invite(code_hash=code("expiring"),
                                              now_ms=NOW + 31 * DAY_MS)
        assert await store.consume_invite(code_hash=code("expiring"), now_ms=READ_AT)
        assert not await store.consume_invite(code_hash=code("expiring"), now_ms=READ_AT)
        with pytest.raises(StoreConflict):
            await store.create_invite(code_hash=code("alice"), now_ms=READ_AT)
        used = {i.code_hash: i.used_at_ms for i in await store.list_invites()}
        assert used[code("spare")] == used[code("expiring")] == READ_AT
        assert code("revoked") not in used
        assert await store.revoke_invite(code("expired"))
    check_database(path)


@pytest.mark.parametrize("version", SHIPPED)
async def test_account_deletion_removes_everything_it_owns(
        version: int, writer: WriterMode, tmp_path: Path) -> None:
    async with opened(version, tmp_path, writer) as (store, path, data):
        mine = [m for m in live_mailboxes(data)
                if data["snapshot"]["mailboxes"][m]["account_id"] == ALICE.hex()]
        assert len(mine) == 4
        shared = {r.blob for r in await store.fetch(MAILBOXES["carol"], now_ms=READ_AT)}
        assert await store.delete_account(ALICE)
        assert not await store.delete_account(ALICE)
        assert await store.get_account(ALICE) is None
        assert await store.list_mailboxes(ALICE) == []
        for m in mine:
            assert await store.get_mailbox(bytes.fromhex(m)) is None
            assert await store.fetch(bytes.fromhex(m), now_ms=READ_AT) == []
            refused = await store.append(recipients=[recipient(m)], client_msg_id=cmid(200),
                                         blob=b"x", now_ms=READ_AT, ttl_ms=TTL_MS)
            assert refused.accepted == ()
        assert await store.lookup_username("alice.w") is None
        with pytest.raises(NotFound):
            await store.prekey_counts(ALICE)
        # Copies of her group sends in other mailboxes are untouched.
        assert {r.blob for r in await store.fetch(MAILBOXES["carol"], now_ms=READ_AT)} == shared
        # Re-created under the same ids, nothing of hers comes back: a retry of a send
        # she had received is a new copy (v1 dedup rows went with the mailbox; v2 send
        # records name a mailbox by its serial).
        await store.create_account(account_id=ALICE, identity_key=b"new", now_ms=READ_AT)
        assert await store.prekey_counts(ALICE) == await store.prekey_counts(CAROL)
        await store.create_mailbox(account_id=ALICE, mailbox_id=MAILBOXES["alice_contact"],
                                   capability_hash=capability_hash("alice_contact"),
                                   now_ms=READ_AT)
        retry = await store.append(recipients=[recipient(MAILBOXES["alice_contact"].hex()),
                                               recipient(MAILBOXES["carol"].hex())],
                                   client_msg_id=cmid(2), blob=b"again", now_ms=READ_AT,
                                   ttl_ms=TTL_MS)
        assert [(r.seq, r.duplicate) for r in retry.accepted] == [(1, False), (1, True)]
        assert await store.delete_account(ALICE)
    owned = [bytes.fromhex(m) for m in mine]
    marks = ",".join("?" * len(owned))
    for table in ("accounts", "identity_rotations", "one_time_prekeys", "usernames",
                  "mailboxes"):
        column = "id" if table == "accounts" else "account_id"
        assert query(path, f"SELECT count(*) FROM {table} WHERE {column} = ?", ALICE) == [(0,)]
    for table in ("deliveries", "dedup"):
        assert query(path, f"SELECT count(*) FROM {table} WHERE mailbox_id IN ({marks})",
                     *owned) == [(0,)]
    check_database(path)


@pytest.mark.parametrize("version", SHIPPED)
async def test_expiry_sweeps_old_messages_and_records(version: int, writer: WriterMode,
                                                      tmp_path: Path) -> None:
    path = unpack(version, tmp_path)
    _, columns, tables, _ = raw(path)
    entries = columns["send_dedup"].index("entries") if "send_dedup" in columns else 0
    records = len(tables["dedup"]) + sum(len(r[entries]) // 24
                                         for r in tables.get("send_dedup", []))
    async with opened(version, tmp_path, writer) as (store, _, data):
        bob_1, carol = MAILBOXES["bob_1"], MAILBOXES["carol"]
        report = await store.expire(now_ms=READ_AT)  # the message past its TTL
        assert (report.messages_removed, report.dedup_removed, report.retired) == (1, 0, ())
        assert [(n.mailbox_id, n.count, n.up_to_seq) for n in report.notices] == [(bob_1, 1, 2)]
        notice = await store.get_expiry_notice(carol)  # from the build's sweep
        assert notice is not None and (notice.count, notice.up_to_seq) == (1, 2)
        await store.clear_expiry_notice(notice)
        assert await store.get_expiry_notice(carol) is None
        # Past every TTL and retirement: everything queued and every record goes, and the
        # rotated mailbox (alice_old) is deleted once empty.
        report = await store.expire(now_ms=FAR)
        assert report.dedup_removed == records and not report.more
        assert report.retired == (MAILBOXES["alice_old"],)
        assert report.messages_removed == sum(
            r["pending"] for r in data["snapshot"]["mailboxes"].values() if r) - 1
        sizes = await store.queue_sizes()
        assert (sizes.total_messages, sizes.total_blobs) == (0, 0)
    for table in ("deliveries", "blobs", "dedup") + (("send_dedup",) if version >= 2 else ()):
        assert query(path, f"SELECT count(*) FROM {table}") == [(0,)], table
    check_database(path)


async def test_database_newer_than_the_relay_is_refused(writer: WriterMode,
                                                        tmp_path: Path) -> None:
    """There is no dedicated subclass: the engine raises ``StoreError`` naming both
    versions, before writing anything."""
    path = unpack(SHIPPED[-1], tmp_path)
    conn = sqlite3.connect(path)
    conn.execute("INSERT INTO schema_version (version) VALUES (?)", (SCHEMA_VERSION + 1,))
    conn.commit()
    conn.close()
    before = path.read_bytes()
    with pytest.raises(StoreError) as info:
        await SqliteStore.open(path, writer=writer)
    assert type(info.value) is StoreError
    assert str(info.value) == (f"database schema version {SCHEMA_VERSION + 1} is newer than "
                               f"this code ({SCHEMA_VERSION})")
    assert path.read_bytes() == before
    assert raw(path)[3] == [*range(1, SHIPPED[-1] + 1), SCHEMA_VERSION + 1]
