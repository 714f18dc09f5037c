"""Frozen profiles of every shipped schema version open, migrate and keep their data.

The fixtures and how each was built: ``profile_fixtures.py``. Each test decompresses a
fixture into ``tmp_path`` and opens it with today's code, which migrates it.
"""

from __future__ import annotations

import gzip
import json
import sqlite3
from pathlib import Path
from typing import Any

import pytest

from client_sdk._group_state import GroupView
from client_sdk.errors import ProfileTooNew, StoreError
from client_sdk.history import DeleteMessage, DeleteScope, EditMessage, NewMessage
from client_sdk.store import Profile
from client_sdk.store._sqlite_schema import SCHEMA_VERSION

from .profile_fixtures import (
    BUILT_WITH,
    DATA,
    PASSPHRASE,
    SUB_CHANNEL_ID,
    expected_path,
    fixture_path,
    ident,
)
from .profile_snapshot import snapshot
from .support import FAST, NOW

SHIPPED = [int(p.name.removeprefix("profile_v").removesuffix(".db.gz"))
           for p in sorted(DATA.glob("profile_v*.db.gz"))]
WITH_SNAPSHOT = [v for v in SHIPPED if expected_path(v).exists()]

DROPPED_BY: dict[int, set[str]] = {4: {"messages_fts_insert"}}
"""Schema objects a migration to version N removes on purpose; any other object of an
older profile must come through unchanged."""


def unpack(version: int, tmp_path: Path) -> Path:
    path = tmp_path / f"v{version}.db"
    path.write_bytes(gzip.decompress(fixture_path(version).read_bytes()))
    return path


def expected(version: int) -> dict[str, Any]:
    data: dict[str, Any] = json.loads(expected_path(version).read_text())
    return data


def raw(path: Path) -> tuple[dict[str, str], dict[str, list[tuple[Any, ...]]], list[int]]:
    """The schema objects, every table's rows and the version rows, read by plain SQLite."""
    conn = sqlite3.connect(f"file:{path}?mode=ro", uri=True)
    try:
        objects = {name: sql for name, sql in conn.execute(
            "SELECT name, sql FROM sqlite_master WHERE name != 'schema_version'")}
        tables = [name for (name,) in conn.execute(
            "SELECT name FROM sqlite_master WHERE type = 'table' AND name != 'schema_version'")]
        rows = {t: sorted(conn.execute(f'SELECT * FROM "{t}"').fetchall(), key=repr)
                for t in tables}
        versions = [v for (v,) in conn.execute("SELECT version FROM schema_version ORDER BY rowid")]
    finally:
        conn.close()
    return objects, rows, versions


def fts_integrity_check(path: Path) -> None:
    """FTS5's own checks: the index is sound, and it indexes exactly the non-NULL bodies of
    ``messages`` (raises ``sqlite3.DatabaseError`` otherwise).

    The content check (``rank`` 1) expects every content row to be indexed, and the store
    indexes only non-NULL bodies (tombstones have none), so it runs on a copy without the
    NULL-body rows, their removal kept away from the index by dropping its trigger first.
    """
    copy = path.with_name(path.name + ".fts-check")
    copy.write_bytes(path.read_bytes())
    conn = sqlite3.connect(copy)
    try:
        conn.execute("INSERT INTO messages_fts (messages_fts) VALUES ('integrity-check')")
        conn.execute("DROP TRIGGER messages_fts_delete")
        conn.execute("DELETE FROM messages WHERE body IS NULL")
        conn.execute("INSERT INTO messages_fts (messages_fts, rank) VALUES ('integrity-check', 1)")
    finally:
        conn.close()
        copy.unlink()


def as_json(value: Any) -> Any:
    return json.loads(json.dumps(value))


# --- the set of fixtures --------------------------------------------------------------------


def test_a_fixture_for_every_shipped_version(tmp_path: Path) -> None:
    """A schema bump fails here until its fixture, built by its own code, is added."""
    assert list(range(1, SCHEMA_VERSION + 1)) == SHIPPED, (
        f"frozen profiles for versions {SHIPPED}, schema is at {SCHEMA_VERSION}: build the "
        "missing one with its own code (profile_fixtures.py)")
    assert sorted(BUILT_WITH) == SHIPPED
    assert SHIPPED[1:] == WITH_SNAPSHOT  # version 1 predates the snapshots
    for version in SHIPPED:
        # Written by that version's code: today's would have stamped today's version.
        assert raw(unpack(version, tmp_path))[2] == list(range(1, version + 1)), version
    for version in WITH_SNAPSHOT:
        data = expected(version)
        assert (data["schema_version"], data["commit"]) == (version, BUILT_WITH[version])


def test_frozen_profiles_hold_what_a_migration_could_damage() -> None:
    """The builder's own read-back (what the tests compare against) is not empty."""
    for version in WITH_SNAPSHOT:
        snap = expected(version)["snapshot"]
        assert snap["identity"] is not None and len(snap["identity"]["rotations"]) == 1
        assert len(snap["sessions"]) == 2 and snap["sender_keys"]["outbound"] is not None
        assert snap["prekeys"]["replays"] == [True, False]
        assert snap["envelopes"] == [True, True, False]
        assert [len(c["messages"]) for c in snap["conversations"]][:2] == [9, 1]
        assert snap["outbox"]["size"] == 2
        search = snap["search"]
        assert len(search["marmot"]) == (3 if version < 3 else 4)
        assert [h[2] for h in search["albatross"]] == ["edited wording, an albatross"]
        assert search["draft"] == search["deleted"] == []  # an edit's old text, a tombstone
        assert len(snap["transfers"]) == 2
        groups = snap.get("groups", {"groups": []})["groups"]
        assert len(groups) == (0 if version < 3 else 2 if version < 6 else 3)
        if version >= 5:
            assert [len(r) for r in snap["groups"]["receipts"].values()] == [3]
        if version >= 6:
            assert [len(s) for s in snap["groups"]["subscriptions"].values()] == [2]
        if version >= 7:
            assert [len(r) for r in snap["groups"]["rosters"].values()] == [1]


# --- opening each fixture with today's code -------------------------------------------------


@pytest.mark.parametrize("version", SHIPPED)
def test_frozen_profile_migrates_without_touching_old_rows(version: int,
                                                           tmp_path: Path) -> None:
    path = unpack(version, tmp_path)
    objects, rows, versions = raw(path)
    with Profile.open(path, PASSPHRASE) as profile:
        profile.check_integrity()
    objects_after, rows_after, versions_after = raw(path)
    assert versions_after == versions + list(range(version + 1, SCHEMA_VERSION + 1))
    dropped = set().union(*(DROPPED_BY.get(v, set())
                            for v in range(version + 1, SCHEMA_VERSION + 1)))
    assert {n for n in objects if n not in objects_after} == dropped & set(objects)
    for name, sql in objects.items():
        if name not in dropped:
            assert objects_after[name] == sql, f"{name} changed"
    for table, old in rows.items():
        assert rows_after[table] == old, f"rows of {table} changed"
    for table in set(rows_after) - set(rows):
        assert rows_after[table] == [], f"new table {table} is not empty"
    fts_integrity_check(path)


@pytest.mark.parametrize("version", SHIPPED)
def test_migrated_schema_is_a_new_profiles_schema(version: int, tmp_path: Path) -> None:
    """Catches an edit to a shipped migration (or to the statements it imports): the
    tables an old SDK created would then differ from those a new profile gets."""
    path = unpack(version, tmp_path)
    Profile.open(path, PASSPHRASE).close()
    Profile.create(tmp_path / "new.db", PASSPHRASE, params=FAST).close()

    def schema(p: Path) -> dict[str, str]:
        return {name: " ".join((sql or "").split()) for name, sql in raw(p)[0].items()}

    assert schema(path) == schema(tmp_path / "new.db")


@pytest.mark.parametrize("version", WITH_SNAPSHOT)
def test_frozen_profile_reads_back_what_its_version_wrote(version: int,
                                                          tmp_path: Path) -> None:
    path = unpack(version, tmp_path)
    data = expected(version)
    with Profile.open(path, PASSPHRASE) as profile:
        profile.check_integrity()
        with profile._db.read("test") as tx:
            assert tx.conn.execute("SELECT max(version) FROM schema_version"
                                   ).fetchone()[0] == SCHEMA_VERSION
        got = as_json(snapshot(profile.store, version, data["probes"]))
    want = data["snapshot"]
    assert sorted(got) == sorted(want)
    for key in want:  # one section at a time, for a readable diff
        assert got[key] == want[key], key


@pytest.mark.parametrize("version", SHIPPED)
def test_migrated_profile_takes_new_history(version: int, tmp_path: Path) -> None:
    """After the migration today's writes keep the search index right: a new message
    (indexed by the store since v4, by a trigger before), an edit and a delete of an
    old one (still triggers)."""
    path = unpack(version, tmp_path)
    with Profile.open(path, PASSPHRASE) as profile:
        s = profile.store
        conversation = s.list_conversations()[-1]  # the oldest: present in every version
        old = s.page(conversation.id).messages[-1]
        assert old.body is not None
        s.apply(NewMessage(conversation_id=conversation.id, message_id=ident(0x3D, 999),
                           sender=None, sent_at_ms=NOW + 10**6, body="written after zygote"),
                now_ms=NOW + 10**6)
        s.apply(EditMessage(conversation_id=conversation.id, target=old.message_id,
                            editor=old.sender, text="rewritten after quokka",
                            edited_at_ms=NOW + 10**6), now_ms=NOW + 10**6)
        old_words = old.body.split()
        assert [h.message.body for h in s.search("zygote").hits] == ["written after zygote"]
        assert [h.message.body for h in s.search("quokka").hits] == ["rewritten after quokka"]
        assert all(h.message.message_id != old.message_id
                   for w in old_words for h in s.search(w).hits)
        s.apply(DeleteMessage(conversation_id=conversation.id, target=ident(0x3D, 999), by=None,
                              scope=DeleteScope.FOR_EVERYONE, at_ms=NOW + 10**6),
                now_ms=NOW + 10**6)
        assert s.search("zygote").hits == ()
        profile.check_integrity()
    fts_integrity_check(path)
    with Profile.open(path, PASSPHRASE) as profile:  # and it opens again, migrated once
        assert [h.message.body for h in profile.store.search("quokka").hits] == [
            "rewritten after quokka"]


def test_profile_newer_than_the_sdk_is_refused(tmp_path: Path) -> None:
    path = unpack(SHIPPED[-1], tmp_path)
    conn = sqlite3.connect(path)
    conn.execute("INSERT INTO schema_version (version) VALUES (?)", (SCHEMA_VERSION + 1,))
    conn.commit()
    conn.close()
    before = path.read_bytes()
    with pytest.raises(ProfileTooNew) as info:
        Profile.open(path, PASSPHRASE)
    assert (info.value.found, info.value.supported) == (SCHEMA_VERSION + 1, SCHEMA_VERSION)
    assert isinstance(info.value, StoreError)
    assert path.read_bytes() == before  # refused before writing anything


def test_a_channel_roster_from_before_v7_is_read_from_its_subscriptions(tmp_path: Path) -> None:
    """Migration 7 adds ``channel_rosters`` empty (a migration cannot seal values): a v6
    channel has no stored roster, and the group view falls back to its subscriptions."""
    path = unpack(6, tmp_path)
    with Profile.open(path, PASSPHRASE) as profile:
        s = profile.store
        assert s.channel_roster(SUB_CHANNEL_ID) is None
        view = GroupView(group_id=SUB_CHANNEL_ID, record=s.load_group(SUB_CHANNEL_ID),
                         stored_roster=None,
                         load_subs=lambda: s.channel_subscriptions(SUB_CHANNEL_ID))
        subscribed = {x.sub.subscriber for x in s.channel_subscriptions(SUB_CHANNEL_ID)
                      if x.sub.subscribed}
        assert len(subscribed) == 1 and view.roster == subscribed
