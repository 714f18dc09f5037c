"""The relay writer's own cost per message: its SQL and Python, no event loop, no sockets.

Run: ``python -m bench.relay_writer [--mailboxes 1000] [--messages 2800] [--rounds 10]
[--dir PATH]``

Opens a fresh relay database (the relay's schema, ``synchronous=FULL``, WAL) with
``--mailboxes`` mailboxes and runs, in one ``BEGIN IMMEDIATE ... COMMIT`` per round,
exactly what the writer runs for a group-committed batch (``relay._sqlite_ops``), in two
shapes:

* **open loop**: ``--messages`` single-recipient appends of 200-byte blobs spread over
  the mailboxes (as 1,000 pairs at 10,000 msgs/s give the writer a few times a second),
  then one ack per message (``ack_many``).
* **fan-out**: one append of a 300-byte blob to every mailbox (a group message), then a
  cumulative ack from every mailbox.
* **lone messages** (``--lone`` of them, a pair that is not busy: ping-pong): each append
  in a transaction of its own, then its ack in another, as the writer runs them when
  nothing else is queued. Measured against the same run's baselines, interleaved
  message by message: the append by the general run path (``_sqlite_ops._LONE`` off)
  against the lone path, and the ack's commit at ``FULL`` against the relaxed
  ``NORMAL`` commit of an ack-only batch (``run_batch(relaxed=...)``). The append's
  FULL commit is split by the previous ack's commit (after a relaxed one it also syncs
  that ack's WAL frames). The general path is this tree's, with the cached row strings
  and one-row inserts both paths share. Medians.

Prints microseconds per message (open loop) or per delivery (fan-out) for the append,
the ack and the commit, and the time spent in each SQL statement (the rest of the
append and the ack is the writer's Python). This is the floor under what the relay's
writer costs per message: in the relay the same work also competes with the event loop
for the CPU and, with the thread writer, for the GIL. Figures: docs/benchmarks.md.
"""

from __future__ import annotations

import argparse
import hashlib
import os
import sqlite3
import statistics
import tempfile
import time
from collections import defaultdict
from collections.abc import Callable, Iterable, Iterator
from pathlib import Path
from typing import Any

from bench._report import machine_line
from relay import _sqlite_ops as ops
from relay._sqlite_schema import MIGRATIONS
from relay._sqlite_txn import open_writer
from relay.ports import AppendRequest, Recipient
from relay.store_sqlite import Synchronous

NOW_MS = 1_700_000_000_000
TTL_MS = 30 * 86_400_000


class _Timed:
    """A connection whose ``execute`` adds each statement's time (rows included) to
    *spent*, keyed by the statement's first words."""

    def __init__(self, conn: sqlite3.Connection, spent: dict[str, float]) -> None:
        self._conn = conn
        self._spent = spent

    def execute(self, sql: str, *args: Any) -> _Rows:
        start = time.perf_counter()
        rows = _Rows(list(self._conn.execute(sql, *args)))
        self._spent[" ".join(sql.split())[:60]] += time.perf_counter() - start
        return rows

    def __getattr__(self, name: str) -> Any:
        return getattr(self._conn, name)


class _Rows:
    def __init__(self, rows: list[Any]) -> None:
        self._rows = rows

    def fetchone(self) -> Any:
        return self._rows[0] if self._rows else None

    def __iter__(self) -> Iterator[Any]:
        return iter(self._rows)


def _database(folder: Path, mailboxes: int) -> tuple[sqlite3.Connection, list[Recipient]]:
    conn = open_writer(folder / "relay.db", Synchronous.FULL, 5_000, MIGRATIONS)
    account = os.urandom(16)
    conn.execute("BEGIN IMMEDIATE")
    conn.execute("INSERT INTO accounts (id, identity_key, created_at_ms, identity_updated_at_ms)"
                 " VALUES (?, ?, ?, ?)", (account, os.urandom(32), NOW_MS, NOW_MS))
    recipients = []
    for serial in range(1, mailboxes + 1):
        mailbox_id = os.urandom(16)
        digest = hashlib.sha256(os.urandom(32)).digest()
        conn.execute("INSERT INTO mailboxes (id, account_id, capability_hash, created_at_ms,"
                     " serial) VALUES (?, ?, ?, ?, ?)",
                     (mailbox_id, account, digest, NOW_MS, serial))
        recipients.append(Recipient(mailbox_id=mailbox_id, capability_hash=digest))
    conn.execute("COMMIT")
    return conn, recipients


def _rounds(conn: sqlite3.Connection, rounds: int,
            batch: Callable[[sqlite3.Connection, int], tuple[float, float]],
            ) -> tuple[float, float, float]:
    append = ack = commit = 0.0
    for i in range(rounds):
        conn.execute("BEGIN IMMEDIATE")
        a, b = batch(conn, i)
        append += a
        ack += b
        start = time.perf_counter()
        conn.execute("COMMIT")
        commit += time.perf_counter() - start
    return append, ack, commit


def _open_loop(recipients: list[Recipient], messages: int, spent: dict[str, float],
               ) -> Callable[[sqlite3.Connection, int], tuple[float, float]]:
    def batch(conn: sqlite3.Connection, i: int) -> tuple[float, float]:
        timed: Any = _Timed(conn, spent)
        targets = [recipients[(i * messages + k) % len(recipients)] for k in range(messages)]
        calls = [AppendRequest((r,), os.urandom(16), os.urandom(200), NOW_MS, TTL_MS, None,
                               TTL_MS) for r in targets]
        start = time.perf_counter()
        results = ops.append_many(timed, calls)
        mid = time.perf_counter()
        ops.ack_many(timed, [(r.mailbox_id, res.accepted[0].seq, ())
                             for r, res in zip(targets, results, strict=True)])
        return mid - start, time.perf_counter() - mid
    return batch


def _fan_out(recipients: list[Recipient], spent: dict[str, float],
             ) -> Callable[[sqlite3.Connection, int], tuple[float, float]]:
    everyone = tuple(recipients)

    def batch(conn: sqlite3.Connection, i: int) -> tuple[float, float]:
        timed: Any = _Timed(conn, spent)
        call = AppendRequest(everyone, os.urandom(16), os.urandom(300), NOW_MS, TTL_MS, None,
                             TTL_MS)
        start = time.perf_counter()
        ops.append_many(timed, [call])
        mid = time.perf_counter()
        ops.ack_many(timed, [(r.mailbox_id, i + 1, ()) for r in recipients])
        return mid - start, time.perf_counter() - mid
    return batch


def _report(title: str, unit: str, count: int, times: Iterable[float],
            spent: dict[str, float]) -> None:
    append, ack, commit = (t / count * 1e6 for t in times)
    total = append + ack + commit
    print(f"{title}: {total:.1f} µs per {unit} = append {append:.1f} + ack {ack:.1f}"
          f" + commit {commit:.1f}  (at most {1e6 / total:,.0f}/s on one core)")
    for statement, seconds in sorted(spent.items(), key=lambda kv: -kv[1]):
        print(f"    {seconds / count * 1e6:6.2f} µs  {statement} ...")


def _lone(folder: Path, count: int) -> None:
    conn, recipients = _database(folder, 10)
    names = ("append, lone path", "append, general path",
             "append's commit (FULL), after a relaxed ack",
             "append's commit (FULL), after a FULL ack",
             "ack, its statements", "ack's commit, relaxed (NORMAL)", "ack's commit (FULL)")
    times: dict[str, list[float]] = {n: [] for n in names}
    clock = time.perf_counter
    after_relaxed = False  # the previous ack's commit: its WAL frames are synced by ours
    for i in range(count + 200):  # the first 200 warm up
        r = recipients[i % len(recipients)]
        general = i % 2 == 1
        call = AppendRequest((r,), os.urandom(16), os.urandom(200), NOW_MS, TTL_MS, None,
                             TTL_MS)
        ops._LONE = not general
        conn.execute("BEGIN IMMEDIATE")
        t0 = clock()
        result = ops.append_many(conn, [call])[0]
        t1 = clock()
        conn.execute("COMMIT")
        t2 = clock()
        relaxed = i % 4 < 2
        conn.execute(f"PRAGMA synchronous = {'NORMAL' if relaxed else 'FULL'}")
        conn.execute("BEGIN IMMEDIATE")
        t3 = clock()
        ops.ack_many(conn, [(r.mailbox_id, result.accepted[0].seq, ())])
        t4 = clock()
        conn.execute("COMMIT")
        t5 = clock()
        conn.execute("PRAGMA synchronous = FULL")
        if i < 200:
            continue
        times[names[1] if general else names[0]].append(t1 - t0)
        times[names[2] if after_relaxed else names[3]].append(t2 - t1)
        times[names[4]].append(t4 - t3)
        times[names[5] if relaxed else names[6]].append(t5 - t4)
        after_relaxed = relaxed
    ops._LONE = True
    conn.close()
    med = {n: statistics.median(v) * 1e6 for n, v in times.items()}
    print(f"lone messages ({count}), medians:")
    for n in names:
        print(f"    {med[n]:7.1f} µs  {n}")
    new = med[names[0]] + med[names[2]] + med[names[4]] + med[names[5]]
    old = med[names[1]] + med[names[3]] + med[names[4]] + med[names[6]]
    print(f"    writer time per lone message: {new:.0f} µs (lone path, relaxed ack) against"
          f" {old:.0f} µs (general path, FULL ack): {old / new:.2f}x")
    print("    (the general path is this tree's: its cached row strings and one-row inserts"
          " serve both paths, so the ratio leaves them out)")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0] if __doc__ else None)
    parser.add_argument("--mailboxes", type=int, default=1000)
    parser.add_argument("--messages", type=int, default=2800,
                        help="open loop: single-recipient messages per transaction")
    parser.add_argument("--rounds", type=int, default=10, help="transactions per shape")
    parser.add_argument("--lone", type=int, default=4000,
                        help="lone messages (an append and an ack, each its own transaction)")
    parser.add_argument("--dir", type=Path, help="where the databases go (default: tmp)")
    args = parser.parse_args()
    print(machine_line(f"sqlite {sqlite3.sqlite_version}"))
    with tempfile.TemporaryDirectory(dir=args.dir) as tmp:
        folder = Path(tmp)
        for name, make, count, unit in (
            ("open loop", lambda r, s: _open_loop(r, args.messages, s),
             args.rounds * args.messages, "message"),
            ("fan-out", _fan_out, args.rounds * args.mailboxes, "delivery"),
        ):
            (folder / name).mkdir()
            conn, recipients = _database(folder / name, args.mailboxes)
            spent: dict[str, float] = defaultdict(float)
            times = _rounds(conn, args.rounds, make(recipients, spent))
            conn.close()
            _report(f"{name}, {args.mailboxes} mailboxes", unit, count, times, spent)
        (folder / "lone").mkdir()
        _lone(folder / "lone", args.lone)


if __name__ == "__main__":
    main()
