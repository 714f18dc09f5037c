"""Group commit for SQLite: one writer thread, a small pool of reader threads.

Theory of operation (docs/protocol.md (§10), "Group commit"):

* Async callers never touch SQLite on the event loop. A write is a plain function
  ``fn(conn) -> T``; :meth:`SqliteEngine.write` puts it on a queue with a future of the
  caller's loop and awaits that future.
* The writer thread blocks on the queue. When woken it takes **everything queued** (up to
  ``max_batch`` ops), runs them in ONE transaction (``BEGIN IMMEDIATE`` ... ``COMMIT``),
  then resolves all the futures, one ``loop.call_soon_threadsafe`` per event loop per
  batch. One op's failure (a uniqueness conflict, say) must not spoil the others: when an
  op raises, the transaction is rolled back and the batch re-run with a ``SAVEPOINT`` per
  op, so only the failing op is undone. (Savepoints cost two statements per op, so the
  common, failure-free path goes without.) Ops are therefore pure functions of the
  connection: running one twice must be harmless.
* Consecutive ops of one kind may run as one call (:meth:`SqliteEngine.write_many`): a
  run of appends (or acks) in a batch becomes a few multi-row statements instead of a
  few statements per op. Fewer statements matter twice here: each one hands the GIL to
  the event loop while SQLite runs and must take it back, and under load getting it back
  is the writer's largest wait. If the grouped call raises, the batch is re-run op by op
  with savepoints as above.
* There is no timer. A lone op is committed as soon as the writer is free; ops batch only
  because they arrived while the previous commit (its fsync) was running. So the batch
  size adapts to load and the idle latency is one commit.
* A caller learns its result only after COMMIT returned, i.e. after the data is durable at
  the configured ``synchronous`` level. If COMMIT fails, every op of the batch fails.
* Cancelling the awaiting coroutine does not cancel the op: it may still commit (the
  result is discarded). Writes that must not repeat are idempotent by design
  (``client_msg_id``).
* Reads run on reader connections (WAL: they see the last committed state and never block
  the writer), each call in its own read transaction for a consistent snapshot.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import queue
import sqlite3
import threading
import time
from collections.abc import Callable, Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from enum import Enum
from pathlib import Path
from typing import Any, Generic, Protocol, TypeVar

from pigeon_crypto.errors import StoreError

from ._sqlite_writer import WriterLost, WriterProcess
from .ports import NullObserver, StoreObserver

__all__ = ["Migration", "SqliteEngine", "Synchronous", "WriterMode", "connect", "open_writer",
           "run_batch"]

T = TypeVar("T")
A = TypeVar("A")
_log = logging.getLogger(__name__)

DEFAULT_MAX_BATCH = 1024
"""Upper bound on ops per transaction: bounds one commit's latency and the WAL growth."""
DEFAULT_READERS = 2
"""Reader threads; more than the cores (2 here) buys nothing with the GIL."""
DEFAULT_BUSY_TIMEOUT_MS = 5_000
"""How long a connection waits for a lock held by another process (the admin CLI)."""
JOURNAL_SIZE_LIMIT = 64 * 1024 * 1024
WRITER_CACHE_KIB = 64 * 1024
"""The writer's page cache (SQLite's default is 2 MiB). The idempotency table's keys
are random, so every append touches a random leaf page of it; with the default cache
most of those pages are re-read from the OS on every batch once the table outgrows it."""
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


class WriterMode(Enum):
    """Where the writer's SQLite connection runs.

    THREAD:  a thread of this process (the default for the library and the admin CLI).
    PROCESS: a child process fed whole batches over a socket pair; results come back
             after its COMMIT. Same transactions, same durability; the GIL of the event
             loop's process is no longer taken back and forth around every statement.
    """

    THREAD = "thread"
    PROCESS = "process"


@dataclass(frozen=True, slots=True)
class Migration:
    """Schema step to ``version``; ``apply`` runs inside the migration transaction."""

    version: int
    apply: Callable[[sqlite3.Connection], None]


@dataclass(slots=True)
class _Op(Generic[T]):
    name: str
    fn: Callable[[sqlite3.Connection], T]
    loop: asyncio.AbstractEventLoop
    future: asyncio.Future[T]
    many: Callable[[sqlite3.Connection, list[Any]], list[T]] | None = None
    """Runs consecutive ops of the same kind together (see :meth:`SqliteEngine.write_many`)."""
    arg: Any = None
    rank: int | None = None
    """Reorderable (see :func:`_regroup`): the op's place among its neighbours' kinds."""


def _one(many: Callable[[sqlite3.Connection, list[Any]], list[T]], arg: Any
         ) -> Callable[[sqlite3.Connection], T]:
    return lambda conn: many(conn, [arg])[0]


_STOP = object()
_Outcome = tuple["asyncio.Future[Any]", bool, Any]


def _regroup(batch: list[_Op[Any]]) -> list[_Op[Any]]:
    """Within each stretch of consecutive ranked ops, order the ops by rank, keeping
    their order within a rank (a stable sort): acks interleaved with appends, from a
    thousand connections, become one run of each (two statements for the acks, a few
    for the appends) instead of a run per stretch. Unranked ops stay where they are and
    bound the stretches, so nothing moves past them. Every op in a batch was queued
    while the previous commit ran and none has its result yet: the callers are
    concurrent, and any order of theirs is one they could have observed."""
    out: list[_Op[Any]] = []
    stretch: list[_Op[Any]] = []
    for op in batch:
        if op.rank is None:
            if stretch:
                out += sorted(stretch, key=_rank) if len(stretch) > 1 else stretch
                stretch = []
            out.append(op)
        else:
            stretch.append(op)
    if stretch:
        out += sorted(stretch, key=_rank) if len(stretch) > 1 else stretch
    return out


def _rank(op: _Op[Any]) -> int:
    return op.rank or 0


def _resolve(outcomes: list[_Outcome]) -> None:
    for fut, ok, value in outcomes:
        if fut.done():  # the caller was cancelled; the op ran anyway
            continue
        if ok:
            fut.set_result(value)
        else:
            fut.set_exception(value)


def _observe(call: Callable[..., None], **fields: Any) -> None:
    """Metrics must never break the store: a failing observer is logged, not propagated
    (on the writer thread it would otherwise kill the thread and strand every caller)."""
    try:
        call(**fields)
    except Exception:
        _log.exception("store observer failed")


def _wrap(exc: BaseException, what: str) -> BaseException:
    if isinstance(exc, sqlite3.Error):
        err = StoreError(f"{what} failed: {type(exc).__name__}")
        err.__cause__ = exc
        return err
    return exc


class SqliteEngine:
    """Owns the connections and threads; knows nothing about the relay's tables."""

    def __init__(
        self,
        path: Path,
        *,
        synchronous: Synchronous,
        max_batch: int,
        readers: int,
        busy_timeout_ms: int,
        observer: StoreObserver,
    ) -> None:
        if max_batch < 1 or readers < 1:
            raise ValueError("max_batch and readers must be positive")
        self._path = path
        self._sync = synchronous
        self._max_batch = max_batch
        self._busy_ms = busy_timeout_ms
        self._observer = observer
        self._queue: queue.SimpleQueue[object] = queue.SimpleQueue()
        self._lock = threading.Lock()  # orders "not closed" checks against the stop marker
        self._closed = False
        self._writer_conn: sqlite3.Connection | None = None
        self._writer: threading.Thread | None = None
        self._reader_conns: list[sqlite3.Connection] = []
        self._local = threading.local()
        self._readers = ThreadPoolExecutor(
            max_workers=readers, thread_name_prefix="pigeon-store-read"
        )
        self._pending = 0
        self._remote: WriterProcess | None = None
        self._failed: str | None = None
        self._on_fatal: Callable[[], None] | None = None
        self._loop: asyncio.AbstractEventLoop | None = None

    # ------------------------------------------------------------------ lifecycle

    @classmethod
    async def open(
        cls,
        path: str | Path,
        migrations: Sequence[Migration],
        *,
        synchronous: Synchronous = Synchronous.FULL,
        max_batch: int = DEFAULT_MAX_BATCH,
        readers: int = DEFAULT_READERS,
        busy_timeout_ms: int = DEFAULT_BUSY_TIMEOUT_MS,
        observer: StoreObserver | None = None,
        writer: WriterMode = WriterMode.THREAD,
        on_fatal: Callable[[], None] | None = None,
    ) -> SqliteEngine:
        """Open (creating if needed) and migrate the database, then start the writer.

        With ``writer=WriterMode.PROCESS`` the writer's SQLite connection lives in a child
        process (``relay._sqlite_writer``) and the writer thread only ships each batch to
        it and waits for the outcome: SQLite's work and the writer's Python no longer
        compete with the event loop for this process's GIL. *on_fatal* is called (on the
        loop that opened the engine) if that process dies: every later write then fails
        at once with ``StoreError``; the relay stops rather than hang."""
        engine = cls(
            Path(path),
            synchronous=synchronous,
            max_batch=max_batch,
            readers=readers,
            busy_timeout_ms=busy_timeout_ms,
            observer=observer or NullObserver(),
        )
        engine._on_fatal = on_fatal
        engine._loop = asyncio.get_running_loop()
        try:
            if writer is WriterMode.PROCESS:
                # Started from this (the loop's) thread: the child's parent-death signal
                # follows the thread that forked it, and this one lives as long as we do.
                remote = WriterProcess.spawn()
                engine._remote = remote
                await asyncio.to_thread(remote.open, engine._path, synchronous.value,
                                        busy_timeout_ms, tuple(migrations))
                remote.watch(engine._writer_lost)
            else:
                engine._writer_conn = await asyncio.to_thread(
                    open_writer, engine._path, synchronous, busy_timeout_ms, migrations)
        except BaseException:
            engine._readers.shutdown(wait=False)
            if engine._remote is not None:
                engine._remote.kill()
            raise
        engine._writer = threading.Thread(
            target=engine._run, name="pigeon-store-writer", daemon=True
        )
        engine._writer.start()
        return engine

    def _connect(self) -> sqlite3.Connection:
        return connect(self._path, self._sync, self._busy_ms)

    async def close(self) -> None:
        """Run what is queued, stop the writer, close every connection. Idempotent."""
        with self._lock:
            if self._closed:
                return
            self._closed = True
            self._queue.put(_STOP)
        if self._writer is not None:
            await asyncio.to_thread(self._writer.join)
        if self._remote is not None:
            await asyncio.to_thread(self._remote.close)
        await asyncio.to_thread(self._readers.shutdown, True)
        for conn in [*self._reader_conns, self._writer_conn]:
            if conn is not None:
                conn.close()
        self._reader_conns.clear()

    @property
    def failed(self) -> str | None:
        """Why the writer process is gone (None while it serves, and in thread mode)."""
        return self._failed

    @property
    def pending_writes(self) -> int:
        """Writes queued or running: the server pauses reading sockets when this is high."""
        return self._pending

    # ------------------------------------------------------------------ calls

    async def write(self, name: str, fn: Callable[[sqlite3.Connection], T]) -> T:
        """Run *fn* in the next group-committed transaction; return after COMMIT."""
        loop = asyncio.get_running_loop()
        return await self._submit(_Op(name, fn, loop, loop.create_future()))

    async def write_many(self, name: str,
                         many: Callable[[sqlite3.Connection, list[A]], list[T]], arg: A,
                         *, rank: int | None = None) -> T:
        """Like :meth:`write` for ``many(conn, [arg])[0]``, but consecutive ops of a batch
        with the same *many* run in one call ``many(conn, [arg1, arg2, ...])``, which
        returns their results in order. *many* must give each call the result it would
        get alone, in that order (e.g. one multi-row statement per table for a run of
        appends). If it raises, the batch falls back to one call per op.

        With a *rank*, the op may also move past adjacent ranked ops of other kinds in
        its batch (:func:`_regroup`), so that interleaved kinds still make one run each.
        Only for kinds whose order against each other does not matter among concurrent
        callers (acks and appends: an ack can only name seqs delivered, i.e. committed
        by an earlier batch)."""
        loop = asyncio.get_running_loop()
        return await self._submit(_Op(name, _one(many, arg), loop, loop.create_future(),
                                      many, arg, rank))

    async def _submit(self, op: _Op[T]) -> T:
        name = op.name
        start = time.perf_counter()
        with self._lock:
            if self._closed:
                raise StoreError("store is closed")
            if self._failed is not None:
                raise StoreError(self._failed)
            self._pending += 1
            self._queue.put(op)
        ok = False
        try:
            result = await op.future
            ok = True
            return result
        finally:
            _observe(self._observer.on_operation, name=name,
                     seconds=time.perf_counter() - start, ok=ok)

    async def read(self, name: str, fn: Callable[[sqlite3.Connection], T]) -> T:
        """Run *fn* in a read transaction on a reader thread."""
        if self._closed:
            raise StoreError("store is closed")
        loop = asyncio.get_running_loop()
        start = time.perf_counter()
        ok = False
        try:
            result = await loop.run_in_executor(self._readers, self._read_in_thread, name, fn)
            ok = True
            return result
        finally:
            _observe(self._observer.on_operation, name=name,
                     seconds=time.perf_counter() - start, ok=ok)

    def _read_in_thread(self, name: str, fn: Callable[[sqlite3.Connection], T]) -> T:
        conn: sqlite3.Connection | None = getattr(self._local, "conn", None)
        try:
            if conn is None:
                conn = self._connect()
                conn.execute("PRAGMA query_only = ON")
                self._local.conn = conn
                with self._lock:
                    self._reader_conns.append(conn)
            conn.execute("BEGIN")
            try:
                return fn(conn)
            finally:
                conn.execute("COMMIT")
        except sqlite3.Error as exc:
            raise StoreError(f"{name} failed: {type(exc).__name__}") from exc

    # ------------------------------------------------------------------ writer thread

    def _run(self) -> None:
        while True:
            item = self._queue.get()
            batch: list[_Op[Any]] = []
            stop = item is _STOP
            if not stop:
                batch.append(item)  # type: ignore[arg-type]
                while len(batch) < self._max_batch:
                    try:
                        item = self._queue.get_nowait()
                    except queue.Empty:
                        break
                    if item is _STOP:
                        stop = True
                        break
                    batch.append(item)  # type: ignore[arg-type]
            if batch:
                try:
                    self._run_batch(_regroup(batch))
                except Exception as exc:  # never let the writer thread die silently
                    _log.exception("store writer failed on a batch")
                    err = StoreError(f"store writer failed: {type(exc).__name__}")
                    self._finish_failed(batch, err)
            if stop:
                return

    def _run_batch(self, batch: list[_Op[Any]]) -> None:
        if self._remote is not None:
            if self._failed is not None:
                committed, results, seconds = False, [(False, StoreError(self._failed))] * len(
                    batch), 0.0
            else:
                try:
                    committed, results, seconds = self._remote.run(batch)
                except WriterLost as exc:
                    committed, results, seconds = False, [(False, StoreError(str(exc)))] * len(
                        batch), 0.0
                    self._writer_lost(str(exc))
        else:
            conn = self._writer_conn
            assert conn is not None
            committed, results, seconds = run_batch(conn, batch)
        _observe(self._observer.on_commit, ops=len(batch), seconds=seconds, ok=committed)
        with self._lock:
            self._pending -= len(batch)
        by_loop: dict[asyncio.AbstractEventLoop, list[_Outcome]] = {}
        for op, (ok, value) in zip(batch, results, strict=True):
            by_loop.setdefault(op.loop, []).append((op.future, ok, value))
        for loop, items in by_loop.items():
            # A closed loop means its callers are gone; nothing left to tell them.
            with contextlib.suppress(RuntimeError):
                loop.call_soon_threadsafe(_resolve, items)

    def _finish_failed(self, batch: list[_Op[Any]], err: BaseException) -> None:
        with self._lock:
            self._pending -= len(batch)
        by_loop: dict[asyncio.AbstractEventLoop, list[_Outcome]] = {}
        for op in batch:
            by_loop.setdefault(op.loop, []).append((op.future, False, err))
        for loop, items in by_loop.items():
            with contextlib.suppress(RuntimeError):
                loop.call_soon_threadsafe(_resolve, items)

    def _writer_lost(self, why: str) -> None:
        """The writer process died: fail loudly, once. The batch it was running may or
        may not have committed; its callers get ``StoreError`` (clients retry, and the
        retries are idempotent), and so does every later write."""
        with self._lock:
            if self._failed is not None or self._closed:
                return
            self._failed = f"store writer process failed: {why}"
        _log.critical("%s; the relay can no longer persist messages", why)
        if self._on_fatal is not None and self._loop is not None:
            with contextlib.suppress(RuntimeError):
                self._loop.call_soon_threadsafe(self._on_fatal)


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


def run_batch(conn: sqlite3.Connection, batch: Sequence[_Work]
              ) -> tuple[bool, list[tuple[bool, Any]], float]:
    """Run *batch* in one transaction: ``(committed, [(ok, result or exception)], seconds)``.

    Fast path without per-op savepoints (two statements per op saved). If an op fails,
    everything is rolled back and the batch re-run with savepoints, so the failure stays
    confined to its op. Ops are pure functions of the connection, so running one twice is
    harmless; the re-run meets the same state. If COMMIT (or SQLite itself) fails, every
    op fails.
    """
    start = time.perf_counter()
    try:
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


def connect(path: Path, sync: Synchronous, busy_ms: int) -> sqlite3.Connection:
    """A connection with the store's PRAGMAs (foreign keys, secure_delete, synchronous)."""
    # isolation_level=None: we issue BEGIN/COMMIT ourselves. check_same_thread=False only
    # so that close() may run elsewhere; each connection is used by one thread at a time.
    conn = sqlite3.connect(path, isolation_level=None, check_same_thread=False,
                           timeout=busy_ms / 1000)
    conn.execute(f"PRAGMA busy_timeout = {int(busy_ms)}")
    conn.execute("PRAGMA foreign_keys = ON")
    conn.execute("PRAGMA secure_delete = ON")
    conn.execute(f"PRAGMA synchronous = {sync.value}")
    return conn


def open_writer(path: Path, sync: Synchronous, busy_ms: int,
                migrations: Sequence[Migration]) -> sqlite3.Connection:
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
