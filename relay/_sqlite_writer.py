"""The SQLite writer in a child process (``WriterMode.PROCESS`` of ``_sqlite_engine``).

Theory of operation. The engine's writer thread still collects each group-commit batch
exactly as in thread mode; instead of running it on a connection of its own, it sends
the batch to this child over a socket pair and blocks (GIL released) until the child
answers. The child runs the batch with the same code (``run_batch``: one ``BEGIN
IMMEDIATE ... COMMIT``, the per-op savepoint fallback, ``synchronous`` as configured)
and answers only after COMMIT returned. So ``Sent`` still follows a durable commit, there
is still no timer, and a lone op is still one commit; what changes is that SQLite's work
and the writer's Python (hashing, decisions, statement building) run outside the event
loop's process and never wait for its GIL.

Messages (``multiprocessing.connection`` framing, pickle protocol 5; both ends are this
code, started together from the same installation):

| direction | message |
| --- | --- |
| parent → child | ``("open", path, synchronous, busy_timeout_ms, migrations)`` once |
| child → parent | ``("ready",)`` or ``("error", exception)`` |
| parent → child | ``(relaxed, [(name, many, arg_or_fn), ...])`` a batch; ``None`` to stop |
| child → parent | ``(committed, seconds, [(ok, result or exception), ...])`` |

``relaxed`` is ``run_batch``'s: True for a batch that may commit at ``NORMAL`` (acks
only).

The hot payloads (``AppendRequest``, ``Recipient``, ``AppendResult``, ``RecipientSeq``)
travel as tuples (:data:`_DISPATCH`): pickling the slotted dataclasses their own way
costs about twice as much, on the event loop's GIL. Exceptions travel as ``(class,
args, attributes)`` and are rebuilt without calling ``__init__`` (several store errors
take other arguments than their message).

Lifetime. The child dies with the relay: it asks the kernel for ``SIGKILL`` when its
parent thread exits (``PR_SET_PDEATHSIG``, Linux) and exits on end of file on its
socket; it ignores SIGINT and SIGTERM (a Ctrl-C in a terminal reaches the whole process
group, and the relay must finish its last batch and stop the child itself). If the child
dies first, :meth:`WriterProcess.run` raises :class:`WriterLost` and the engine fails
every write from then on (see ``SqliteEngine._writer_lost``).
"""

from __future__ import annotations

import contextlib
import copyreg
import io
import os
import pickle
import signal
import socket
import subprocess
import sys
import threading
from collections.abc import Callable, Sequence
from multiprocessing.connection import Connection
from pathlib import Path
from typing import Any

from pigeon_crypto.errors import StoreError

from ._sqlite_txn import Synchronous, open_writer, run_batch
from .ports import AppendRequest, AppendResult, Recipient, RecipientSeq

__all__ = ["WriterLost", "WriterProcess", "main"]

STOP_TIMEOUT_S = 30.0
"""How long :meth:`WriterProcess.close` waits for the child to finish and exit."""
OPEN_TIMEOUT_S = 60.0
"""How long opening (and migrating) the database in the child may take."""


class WriterLost(Exception):
    """The writer process is gone (crashed, killed) or answered garbage."""


# --------------------------------------------------------------------------- codec


def _recipient(mailbox_id: bytes, capability_hash: bytes) -> Recipient:
    r = object.__new__(Recipient)  # already checked when it was first built
    object.__setattr__(r, "mailbox_id", mailbox_id)
    object.__setattr__(r, "capability_hash", capability_hash)
    return r


def _seq(mailbox_id: bytes, seq: int, duplicate: bool) -> RecipientSeq:
    return RecipientSeq(mailbox_id=mailbox_id, seq=seq, duplicate=duplicate)


def _result(received: int, expires: int, accepted: tuple[RecipientSeq, ...],
            rejected: tuple[tuple[bytes, Any], ...]) -> AppendResult:
    return AppendResult(received_at_ms=received, expires_at_ms=expires, accepted=accepted,
                        rejected=rejected)


def _reduce_recipient(r: Recipient) -> tuple[Any, ...]:
    return _recipient, (r.mailbox_id, r.capability_hash)


def _reduce_request(q: AppendRequest) -> tuple[Any, ...]:
    return AppendRequest, (q.recipients, q.client_msg_id, q.blob, q.now_ms, q.ttl_ms,
                           q.max_pending, q.dedup_ttl_ms)


def _reduce_seq(s: RecipientSeq) -> tuple[Any, ...]:
    return _seq, (s.mailbox_id, s.seq, s.duplicate)


def _reduce_result(r: AppendResult) -> tuple[Any, ...]:
    return _result, (r.received_at_ms, r.expires_at_ms, r.accepted, r.rejected)


_DISPATCH: dict[Any, Any] = {
    **copyreg.dispatch_table,
    Recipient: _reduce_recipient,
    AppendRequest: _reduce_request,
    RecipientSeq: _reduce_seq,
    AppendResult: _reduce_result,
}


def _dumps(obj: Any) -> bytes:
    buf = io.BytesIO()
    pickler = pickle.Pickler(buf, protocol=5)
    pickler.dispatch_table = _DISPATCH
    pickler.dump(obj)
    return buf.getvalue()


def _exc_out(exc: BaseException) -> tuple[Any, ...]:
    return type(exc), exc.args, dict(getattr(exc, "__dict__", {}))


def _exc_in(data: tuple[Any, ...]) -> BaseException:
    cls, args, attrs = data
    exc: BaseException = cls.__new__(cls)
    exc.args = args
    with contextlib.suppress(AttributeError, TypeError):
        exc.__dict__.update(attrs)
    return exc


# --------------------------------------------------------------------------- parent side


_CHILD = "import sys; from relay._sqlite_writer import main; sys.exit(main())"
"""Not ``-m``: run as ``__main__``, this module's codec functions would pickle by the
wrong module name."""


class WriterProcess:
    """The parent's handle on the writer process. Used by one thread at a time: the
    engine's opener, then its writer thread, then its closer."""

    def __init__(self, proc: subprocess.Popen[bytes], conn: Connection) -> None:
        self._proc = proc
        self._conn = conn
        self._closing = False

    def watch(self, on_exit: Callable[[str], None]) -> None:
        """Call *on_exit* (from a watcher thread) if the child exits before :meth:`close`
        asked it to, even while no batch is running (an idle relay notices too)."""
        def wait() -> None:
            code = self._proc.wait()
            if not self._closing:
                on_exit(f"the writer process exited with status {code}")

        threading.Thread(target=wait, name="pigeon-store-writer-watch", daemon=True).start()

    @classmethod
    def spawn(cls) -> WriterProcess:
        """Start the child (not yet opened). Call from a thread that outlives the engine
        (the event loop's): the parent-death signal follows the thread that forked."""
        parent, child = socket.socketpair()
        try:
            proc = subprocess.Popen(  # noqa: S603 - our own interpreter and module
                [sys.executable, "-c", _CHILD, str(child.fileno()), str(os.getpid())],
                pass_fds=(child.fileno(),), stdin=subprocess.DEVNULL,
            )
        except BaseException:
            parent.close()
            raise
        finally:
            child.close()
        return cls(proc, Connection(parent.detach()))

    @property
    def pid(self) -> int:
        return self._proc.pid

    def open(self, path: Path, synchronous: str, busy_timeout_ms: int,
             migrations: Sequence[Any]) -> None:
        """Open and migrate the database in the child; raise what it raised."""
        try:
            self._conn.send_bytes(pickle.dumps(
                ("open", str(path), synchronous, busy_timeout_ms, tuple(migrations)), 5))
            if not self._conn.poll(OPEN_TIMEOUT_S):
                raise WriterLost("the writer process did not open the database in time")
            answer = pickle.loads(self._conn.recv_bytes())  # noqa: S301 - our own child
        except (OSError, EOFError) as exc:
            raise WriterLost(self._why(exc)) from exc
        if answer[0] != "ready":
            raise _exc_in(answer[1])

    def run(self, batch: Sequence[Any], relaxed: bool = False
            ) -> tuple[bool, list[tuple[bool, Any]], float]:
        """Ship one batch of engine ops; return ``run_batch``'s answer from the child."""
        items = [(op.name, op.many, op.arg) if op.many is not None else (op.name, None, op.fn)
                 for op in batch]
        try:
            data = _dumps((relaxed, items))
        except Exception:
            return self._run_transferable(batch, items, relaxed)
        try:
            self._conn.send_bytes(data)
            raw = self._conn.recv_bytes()
        except (OSError, EOFError) as exc:
            raise WriterLost(self._why(exc)) from exc
        try:
            committed, seconds, outcomes = pickle.loads(raw)  # noqa: S301 - our own child
            results = [(True, v) if ok else (False, _exc_in(v))
                       for ok, v in outcomes]
        except Exception as exc:
            raise WriterLost(f"unreadable answer ({type(exc).__name__})") from exc
        if len(results) != len(batch):
            raise WriterLost("answer does not match the batch")
        return committed, results, seconds

    def _run_transferable(self, batch: Sequence[Any], items: list[Any],
                          relaxed: bool,
                          ) -> tuple[bool, list[tuple[bool, Any]], float]:
        """Some op of *batch* does not pickle (a lambda, say: a caller's bug, not the
        writer's): that op fails with ``StoreError``, the others run as usual."""
        bad: dict[int, BaseException] = {}
        for i, item in enumerate(items):
            try:
                _dumps(item)
            except Exception as exc:
                bad[i] = StoreError(f"{item[0]}: write not transferable to the writer"
                                    f" process ({type(exc).__name__})")
        good = [op for i, op in enumerate(batch) if i not in bad]
        committed, results, seconds = self.run(good, relaxed) if good else (True, [], 0.0)
        it = iter(results)
        merged = [(False, bad[i]) if i in bad else next(it) for i in range(len(batch))]
        return committed, merged, seconds

    def _why(self, exc: BaseException) -> str:
        code = self._proc.poll()
        if code is None:
            with contextlib.suppress(subprocess.TimeoutExpired):
                code = self._proc.wait(1.0)
        if code is None:
            return f"lost the writer process ({type(exc).__name__})"
        return f"the writer process exited with status {code}"

    def close(self) -> None:
        """Ask the child to finish and exit; kill it if it does not. Idempotent."""
        self._closing = True
        if self._proc.poll() is None:
            with contextlib.suppress(OSError):
                self._conn.send_bytes(pickle.dumps(None))
            try:
                self._proc.wait(STOP_TIMEOUT_S)
            except subprocess.TimeoutExpired:
                self.kill()
        self._conn.close()

    def kill(self) -> None:
        self._closing = True
        with contextlib.suppress(OSError):
            self._proc.kill()
        with contextlib.suppress(subprocess.TimeoutExpired):
            self._proc.wait(5.0)
        with contextlib.suppress(OSError):
            self._conn.close()


# --------------------------------------------------------------------------- child side


class _Item:
    __slots__ = ("arg", "fn", "many", "name")

    def __init__(self, name: str, many: Any, value: Any) -> None:
        self.name = name
        self.many = many
        if many is None:
            self.fn, self.arg = value, None
        else:
            self.arg = value
            self.fn = lambda conn: many(conn, [value])[0]


def _die_with_parent(parent_pid: int) -> None:
    """SIGKILL when the parent goes (Linux); if it is already gone, go now."""
    if sys.platform.startswith("linux"):
        with contextlib.suppress(OSError, AttributeError):
            import ctypes

            libc = ctypes.CDLL(None, use_errno=True)
            libc.prctl(1, signal.SIGKILL, 0, 0, 0)  # PR_SET_PDEATHSIG
    if os.getppid() != parent_pid:
        os._exit(1)


def main(argv: Sequence[str] | None = None) -> int:
    """The child: ``main([FD, PARENT_PID])`` (see :data:`_CHILD`)."""
    args = list(sys.argv[1:] if argv is None else argv)
    fd, parent_pid = int(args[0]), int(args[1])
    signal.signal(signal.SIGINT, signal.SIG_IGN)
    signal.signal(signal.SIGTERM, signal.SIG_IGN)
    _die_with_parent(parent_pid)
    conn = Connection(fd)
    try:
        _, path, sync, busy_ms, migrations = pickle.loads(conn.recv_bytes())  # noqa: S301
    except EOFError:
        return 0
    try:
        db = open_writer(Path(path), Synchronous(sync), busy_ms, migrations)
    except Exception as exc:
        conn.send_bytes(pickle.dumps(("error", _exc_out(exc)), 5))
        return 1
    conn.send_bytes(pickle.dumps(("ready",), 5))
    try:
        while True:
            try:
                raw = conn.recv_bytes()
            except EOFError:
                return 0  # the parent is gone
            message = pickle.loads(raw)  # noqa: S301 - our own parent
            if message is None:
                return 0
            relaxed, items = message
            committed, outcomes, seconds = run_batch(
                db, [_Item(*i) for i in items], relaxed=bool(relaxed))
            out = [(True, v) if ok else (False, _exc_out(v)) for ok, v in outcomes]
            try:
                data = _dumps((committed, seconds, out))
            except Exception as exc:  # a result that does not pickle: a bug, said loudly
                why = StoreError(f"result not transferable: {type(exc).__name__}")
                data = _dumps((committed, seconds, [(False, _exc_out(why))] * len(out)))
            try:
                conn.send_bytes(data)
            except OSError:
                return 0  # the parent is gone; what committed stays committed
    finally:
        db.close()

