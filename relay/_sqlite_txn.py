"""One group-commit transaction on the writer's connection, and how that connection is
opened: the part of the SQLite engine that runs wherever the writer runs (a thread of
the relay, ``relay._sqlite_engine``, or the writer process, ``relay._sqlite_writer``).

``run_batch`` runs a batch of ops in one ``BEGIN IMMEDIATE ... COMMIT``: consecutive ops
of one kind as one grouped call, and if an op fails, the whole batch again with a
savepoint per op so that only that op is undone (docs/protocol.md (§10), "Group commit").
"""

from __future__ import annotations

import contextlib
import sqlite3
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from enum import Enum
from pathlib import Path
from typing import Any, Protocol

from pigeon_crypto.errors import StoreError

__all__ = ["JOURNAL_SIZE_LIMIT", "WRITER_CACHE_KIB", "Migration", "StoreConnection",
           "Synchronous", "connect", "open_writer", "run_batch"]

JOURNAL_SIZE_LIMIT = 64 * 1024 * 1024
WRITER_CACHE_KIB = 64 * 1024
"""The writer's page cache (SQLite's default is 2 MiB). The send records' lookup index
(``send_dedup_by_key``, schema v6) is keyed by random bytes, so every append touches a
random leaf page of it; with the default cache most of those pages are re-read from the
OS on every batch once the index outgrows it."""
"""Truncate the WAL file back to this after checkpoints so a burst does not pin disk."""


class Synchronous(Enum):
    """``PRAGMA synchronous`` in WAL mode, with what a *returned* commit survives.

    FULL:   the WAL is fsynced at every commit: survives process crash, OS crash and power
            loss. The default; group commit amortises the fsync over a batch.
    NORMAL: fsync only at checkpoints: survives a process crash (SIGKILL, OOM); an OS crash
            or power loss may roll back the last commits (the file stays consistent).
    OFF:    no fsync at all: survives a process crash only; an OS crash or power loss may
            lose recent commits or corrupt the file. For tests and benchmarks.
    """

    FULL = "FULL"
    NORMAL = "NORMAL"
    OFF = "OFF"


class StoreConnection(sqlite3.Connection):
    """A connection that knows its ``synchronous`` levels: ``configured``, and ``level``,
    the one last set (None: unknown, a change failed). ``run_batch`` sets the level a
    batch needs before its ``BEGIN`` and only when it differs, so an ack batch's
    ``NORMAL`` lasts until the next durable batch, which cannot begin without ``FULL``."""

    configured: Synchronous
    level: Synchronous | None


@dataclass(frozen=True, slots=True)
class Migration:
    """Schema step to ``version``; ``apply`` runs inside the migration transaction."""

    version: int
    apply: Callable[[sqlite3.Connection], None]


def _wrap(exc: BaseException, what: str) -> BaseException:
    if isinstance(exc, sqlite3.Error):
        err = StoreError(f"{what} failed: {type(exc).__name__}")
        err.__cause__ = exc
        return err
    return exc


class _Work(Protocol):
    """What the batch runner needs of an op (``_Op`` here, ``_Item`` in the writer process)."""

    @property
    def name(self) -> str: ...
    @property
    def fn(self) -> Callable[[sqlite3.Connection], Any]: ...
    @property
    def many(self) -> Callable[[sqlite3.Connection, list[Any]], list[Any]] | None: ...
    @property
    def arg(self) -> Any: ...


def run_batch(conn: StoreConnection, batch: Sequence[_Work], *, relaxed: bool = False
              ) -> tuple[bool, list[tuple[bool, Any]], float]:
    """Run *batch* in one transaction: ``(committed, [(ok, result or exception)], seconds)``.

    *relaxed*: none of the batch's ops needs to survive power loss (acks: a lost one
    only means a redelivery, which clients drop as a duplicate), so the batch commits at
    ``NORMAL`` when ``FULL`` is configured (WAL: no fsync; a process crash still loses
    nothing; ``OFF`` stays ``OFF``). Any other batch commits at the configured level,
    set before its ``BEGIN`` if the connection is not known to be at it. A transaction
    that a failed ``ROLLBACK`` left open is rolled back first; if it cannot be (then
    ``PRAGMA synchronous`` could not be set either), the batch fails rather than commit
    with less durability than configured, and the next one tries again.
    The next ``FULL`` commit syncs the WAL up to its own end, so it makes the relaxed
    commits before it durable too.

    Fast path without per-op savepoints (two statements per op saved). If an op fails,
    everything is rolled back and the batch re-run with savepoints, so the failure stays
    confined to its op. Ops are pure functions of the connection, so running one twice is
    harmless; the re-run meets the same state. If COMMIT (or SQLite itself) fails, every
    op fails.
    """
    start = time.perf_counter()
    # Relaxed lowers FULL to NORMAL, never raises OFF.
    want = Synchronous.NORMAL if relaxed and conn.configured is Synchronous.FULL \
        else conn.configured
    try:
        if conn.in_transaction:  # left open by a failed ROLLBACK: its ops had failed
            conn.execute("ROLLBACK")
        if conn.level is not want:
            conn.level = None
            conn.execute(f"PRAGMA synchronous = {want.value}")
            conn.level = want
        outcomes = _attempt(conn, batch, savepoints=False)
        if outcomes is None:
            outcomes = _attempt(conn, batch, savepoints=True)
            assert outcomes is not None
        return True, outcomes, time.perf_counter() - start
    except Exception as exc:
        if conn.in_transaction:
            with contextlib.suppress(sqlite3.Error):
                conn.execute("ROLLBACK")
        err = _wrap(exc, "commit")
        return False, [(False, err)] * len(batch), time.perf_counter() - start


def _attempt(conn: sqlite3.Connection, batch: Sequence[_Work], *, savepoints: bool
             ) -> list[tuple[bool, Any]] | None:
    """One transaction over *batch*. Without savepoints, returns None as soon as an op
    of a multi-op batch fails (after rolling back). Raises if SQLite itself fails."""
    outcomes: list[tuple[bool, Any]] = []
    conn.execute("BEGIN IMMEDIATE")
    i, n = 0, len(batch)
    while i < n:
        op = batch[i]
        many = op.many
        if many is not None and not savepoints:
            j = i + 1
            while j < n and batch[j].many is many:
                j += 1
            if j - i > 1:
                run = batch[i:j]
                try:
                    values = many(conn, [o.arg for o in run])
                except Exception:
                    if conn.in_transaction:
                        conn.execute("ROLLBACK")
                    return None  # re-run op by op, with savepoints
                if len(values) != len(run):
                    raise ValueError("a grouped call returned the wrong number of results")
                outcomes += [(True, v) for v in values]
                i = j
                continue
        i += 1
        if savepoints:
            conn.execute("SAVEPOINT op")
        try:
            value = op.fn(conn)
        except Exception as exc:
            if not savepoints:
                if conn.in_transaction:
                    conn.execute("ROLLBACK")
                if len(batch) == 1:
                    return [(False, _wrap(exc, op.name))]
                return None
            # If SQLite already rolled back the whole transaction (disk full, say),
            # ROLLBACK TO raises and the caller fails the batch.
            conn.execute("ROLLBACK TO op")
            conn.execute("RELEASE op")
            outcomes.append((False, _wrap(exc, op.name)))
        else:
            if savepoints:
                conn.execute("RELEASE op")
            outcomes.append((True, value))
    conn.execute("COMMIT")
    return outcomes


def connect(path: Path, sync: Synchronous, busy_ms: int) -> StoreConnection:
    """A connection with the store's PRAGMAs (foreign keys, secure_delete, synchronous)."""
    # isolation_level=None: we issue BEGIN/COMMIT ourselves. check_same_thread=False only
    # so that close() may run elsewhere; each connection is used by one thread at a time.
    conn = sqlite3.connect(path, isolation_level=None, check_same_thread=False,
                           timeout=busy_ms / 1000, factory=StoreConnection)
    conn.configured = sync
    conn.level = None
    conn.execute(f"PRAGMA busy_timeout = {int(busy_ms)}")
    conn.execute("PRAGMA foreign_keys = ON")
    conn.execute("PRAGMA secure_delete = ON")
    conn.execute(f"PRAGMA synchronous = {sync.value}")
    conn.level = sync
    return conn


def open_writer(path: Path, sync: Synchronous, busy_ms: int,
                migrations: Sequence[Migration]) -> StoreConnection:
    """The writer's connection: WAL, its page cache, the schema migrated."""
    try:
        conn = connect(path, sync, busy_ms)
    except sqlite3.Error as exc:
        raise StoreError(f"cannot open store: {type(exc).__name__}") from exc
    try:
        mode = conn.execute("PRAGMA journal_mode = WAL").fetchone()[0]
        if str(mode).lower() != "wal":
            raise StoreError(f"cannot enable WAL (journal_mode={mode})")
        conn.execute(f"PRAGMA journal_size_limit = {JOURNAL_SIZE_LIMIT}")
        conn.execute(f"PRAGMA cache_size = -{WRITER_CACHE_KIB}")
        _migrate(conn, migrations)
    except sqlite3.Error as exc:
        conn.close()
        raise StoreError(f"cannot open store: {type(exc).__name__}") from exc
    except BaseException:
        conn.close()
        raise
    return conn


def _migrate(conn: sqlite3.Connection, migrations: Sequence[Migration]) -> None:
    """Apply the ordered *migrations* above the stored version, in one transaction."""
    versions = [m.version for m in migrations]
    if versions != sorted(set(versions)) or (versions and versions[0] < 1):
        raise ValueError("migrations must have strictly increasing versions >= 1")
    latest = versions[-1] if versions else 0
    conn.execute("BEGIN IMMEDIATE")
    try:
        conn.execute("CREATE TABLE IF NOT EXISTS schema_version (version INTEGER NOT NULL)")
        row = conn.execute("SELECT max(version) FROM schema_version").fetchone()
        current = int(row[0]) if row and row[0] is not None else 0
        if current > latest:
            raise StoreError(
                f"database schema version {current} is newer than this code ({latest})"
            )
        for m in migrations:
            if m.version > current:
                m.apply(conn)
                conn.execute("INSERT INTO schema_version (version) VALUES (?)", (m.version,))
        conn.execute("COMMIT")
    except BaseException:
        if conn.in_transaction:
            conn.execute("ROLLBACK")
        raise
