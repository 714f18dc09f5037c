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
from typing import Any, Generic, TypeVar

from pigeon_crypto.errors import StoreError

from ._sqlite_txn import (
    Migration,
    StoreConnection,
    Synchronous,
    connect,
    open_writer,
    run_batch,
)
from ._sqlite_writer import WriterLost, WriterProcess
from .ports import NullObserver, StoreObserver, observe

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
class WriterMode(Enum):
    """Where the writer's SQLite connection runs.

    THREAD:  a thread of this process (the default for the library and the admin CLI).
    PROCESS: a child process fed whole batches over a socket pair; results come back
             after its COMMIT. Same transactions, same durability; the GIL of the event
             loop's process is no longer taken back and forth around every statement.
    """

    THREAD = "thread"
    PROCESS = "process"


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
    durable: bool = True
    """False: losing the op to power loss is harmless (see :meth:`SqliteEngine.write_many`)."""


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


def _migrate_only(path: Path, synchronous: Synchronous, busy_timeout_ms: int,
                  migrations: Sequence[Migration]) -> None:
    """Open the database as the writer does, apply what *migrations* it lacks, close."""
    open_writer(path, synchronous, busy_timeout_ms, migrations).close()


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
        self._writer_conn: StoreConnection | None = None
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
                # Migrate here first: a migration may take minutes on a large database
                # (schema v6 copies every send record), longer than the child is given
                # to open; the child then finds nothing left to apply.
                await asyncio.to_thread(_migrate_only, engine._path, synchronous,
                                        busy_timeout_ms, migrations)
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
                         *, rank: int | None = None, durable: bool = True) -> T:
        """Like :meth:`write` for ``many(conn, [arg])[0]``, but consecutive ops of a batch
        with the same *many* run in one call ``many(conn, [arg1, arg2, ...])``, which
        returns their results in order. *many* must give each call the result it would
        get alone, in that order (e.g. one multi-row statement per table for a run of
        appends). If it raises, the batch falls back to one call per op.

        With a *rank*, the op may also move past adjacent ranked ops of other kinds in
        its batch (:func:`_regroup`), so that interleaved kinds still make one run each.
        Only for kinds whose order against each other does not matter among concurrent
        callers (acks and appends: an ack can only name seqs delivered, i.e. committed
        by an earlier batch).

        ``durable=False``: the op's effect may be lost to an OS crash or power loss
        (never to a process crash) without harm, like an ack's (the message is delivered
        again and the client drops the duplicate). A batch of such ops only commits
        without waiting for the disk (``NORMAL`` instead of ``FULL``, no fsync), so it
        holds up the next batch's sends for microseconds, not for an fsync; a batch with
        any durable op commits at the configured level, and that commit makes everything
        before it durable too."""
        loop = asyncio.get_running_loop()
        return await self._submit(_Op(name, _one(many, arg), loop, loop.create_future(),
                                      many, arg, rank, durable))

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
            observe(self._observer.on_operation, name=name,
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
            observe(self._observer.on_operation, name=name,
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

    def _relaxed(self, batch: list[_Op[Any]]) -> bool:
        """Whether *batch* may commit at ``NORMAL`` (configured ``FULL``, and no op of it
        needs more; see :meth:`write_many`)."""
        return self._sync is Synchronous.FULL and not any(op.durable for op in batch)

    def _run_batch(self, batch: list[_Op[Any]]) -> None:
        relaxed = self._relaxed(batch)
        if self._remote is not None:
            if self._failed is not None:
                committed, results, seconds = False, [(False, StoreError(self._failed))] * len(
                    batch), 0.0
            else:
                try:
                    committed, results, seconds = self._remote.run(batch, relaxed)
                except WriterLost as exc:
                    committed, results, seconds = False, [(False, StoreError(str(exc)))] * len(
                        batch), 0.0
                    self._writer_lost(str(exc))
        else:
            conn = self._writer_conn
            assert conn is not None
            committed, results, seconds = run_batch(conn, batch, relaxed=relaxed)
        observe(self._observer.on_commit, ops=len(batch), seconds=seconds, ok=committed)
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
