"""What a send's idempotency record costs the relay's SQLite writer as the table grows:
the layout of schema v5 (``send_dedup`` keyed by the random 32-byte ``send_hash``,
``WITHOUT ROWID``) against schema v6's (rows in insertion order, an index on the hash's
first 8 bytes).

Run: ``python -m bench.send_records [--records 0,50000,250000,1000000] [--batch 5000]
[--rounds 7] [--dir PATH] [--migrate 1000000]``

For each table size, two fresh databases (WAL, ``synchronous=FULL``, ``secure_delete``,
as the relay opens them) get ``--records`` records, then ``--rounds`` transactions of
``--batch`` new records each (one group-committed batch of single-recipient sends: one
record per send), the two layouts interleaved round by round. Prints the median time
per batch and per record, and the WAL bytes a batch wrote. The records are as the relay
writes them (a 32-byte hash, three times, one 24-byte entry); the statements are those
of ``relay/_sqlite_ops.py`` for each version. With ``--migrate N``, it also times the
relay's own migration (``relay._sqlite_schema``) of a version-5 database holding N
records to version 6, which copies them. Figures: docs/benchmarks.md, "Send records in
insertion order".
"""

from __future__ import annotations

import argparse
import hashlib
import os
import sqlite3
import statistics
import tempfile
import time
from collections.abc import Iterator
from pathlib import Path

from bench._report import machine_line
from relay._sqlite_schema import MIGRATIONS
from relay._sqlite_txn import Synchronous, open_writer

DAY_MS = 86_400_000
NOW_MS = 1_700_000_000_000

_V5 = (
    """CREATE TABLE send_dedup (
        send_hash BLOB PRIMARY KEY CHECK (length(send_hash) = 32),
        received_at_ms INTEGER NOT NULL, expires_at_ms INTEGER NOT NULL,
        keep_until_ms INTEGER NOT NULL,
        entries BLOB NOT NULL CHECK (length(entries) % 24 = 0)) WITHOUT ROWID""",
    "CREATE INDEX send_dedup_by_expiry ON send_dedup (keep_until_ms)",
)
_V6 = (
    """CREATE TABLE send_dedup (
        id INTEGER PRIMARY KEY,
        send_key BLOB NOT NULL CHECK (length(send_key) = 8),
        send_hash BLOB NOT NULL CHECK (length(send_hash) = 32),
        received_at_ms INTEGER NOT NULL, expires_at_ms INTEGER NOT NULL,
        keep_until_ms INTEGER NOT NULL,
        entries BLOB NOT NULL CHECK (length(entries) % 24 = 0))""",
    "CREATE INDEX send_dedup_by_key ON send_dedup (send_key)",
    "CREATE INDEX send_dedup_by_expiry ON send_dedup (keep_until_ms)",
)
_INSERT = {
    "v5": "INSERT INTO send_dedup (send_hash, received_at_ms, expires_at_ms, keep_until_ms,"
          " entries) VALUES (?, ?, ?, ?, ?)",
    "v6": "INSERT INTO send_dedup (send_key, send_hash, received_at_ms, expires_at_ms,"
          " keep_until_ms, entries) VALUES (?, ?, ?, ?, ?, ?)",
}

Row = tuple[bytes | int, ...]


def _records(start: int, n: int) -> Iterator[tuple[bytes, int, int, int, bytes]]:
    for i in range(start, start + n):
        digest = hashlib.sha256(i.to_bytes(8, "big")).digest()
        at = NOW_MS + i
        yield digest, at, at + 14 * DAY_MS, at + 30 * DAY_MS, digest[:16] + bytes(8)


def _rows(layout: str, start: int, n: int) -> list[Row]:
    if layout == "v5":
        return list(_records(start, n))
    return [(r[0][:8], *r) for r in _records(start, n)]


def _open(path: Path, layout: str, records: int) -> sqlite3.Connection:
    conn = sqlite3.connect(path, isolation_level=None)
    conn.execute("PRAGMA journal_mode = WAL")
    conn.execute("PRAGMA synchronous = FULL")
    conn.execute("PRAGMA secure_delete = ON")
    for statement in _V5 if layout == "v5" else _V6:
        conn.execute(statement)
    conn.execute("BEGIN")
    for start in range(0, records, 50_000):
        conn.executemany(_INSERT[layout], _rows(layout, start, min(50_000, records - start)))
    conn.execute("COMMIT")
    conn.execute("PRAGMA wal_checkpoint(TRUNCATE)")
    return conn


def measure(folder: Path, records: int, batch: int, rounds: int) -> dict[str, tuple[float, int]]:
    """``layout -> (median seconds per batch, median WAL bytes per batch)``."""
    conns = {layout: _open(folder / f"{layout}-{records}.db", layout, records)
             for layout in ("v5", "v6")}
    times: dict[str, list[float]] = {layout: [] for layout in conns}
    wal: dict[str, list[int]] = {layout: [] for layout in conns}
    next_id = records
    try:
        for _ in range(rounds):
            for layout, conn in conns.items():
                rows = _rows(layout, next_id, batch)
                conn.execute("PRAGMA wal_checkpoint(TRUNCATE)")
                start = time.perf_counter()
                conn.execute("BEGIN IMMEDIATE")
                conn.executemany(_INSERT[layout], rows)
                conn.execute("COMMIT")
                times[layout].append(time.perf_counter() - start)
                wal[layout].append(os.path.getsize(folder / f"{layout}-{records}.db-wal"))
            next_id += batch
    finally:
        for conn in conns.values():
            conn.close()
    return {layout: (statistics.median(times[layout]), int(statistics.median(wal[layout])))
            for layout in conns}


def migrate(folder: Path, records: int) -> tuple[float, int, int]:
    """``(seconds, file bytes before, file and WAL bytes after)`` of migrating a v5 relay
    database holding *records* send records to the newest schema."""
    path = folder / "migrate.db"
    conn = open_writer(path, Synchronous.FULL, 1000, MIGRATIONS[:5])
    try:
        conn.execute("BEGIN")
        for first in range(0, records, 50_000):
            conn.executemany(_INSERT["v5"], _rows("v5", first, min(50_000, records - first)))
        conn.execute("COMMIT")
        conn.execute("PRAGMA wal_checkpoint(TRUNCATE)")
    finally:
        conn.close()
    before = path.stat().st_size
    began = time.perf_counter()
    open_writer(path, Synchronous.FULL, 1000, MIGRATIONS).close()
    seconds = time.perf_counter() - began
    wal = folder / "migrate.db-wal"
    return seconds, before, path.stat().st_size + (wal.stat().st_size if wal.exists() else 0)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0] if __doc__ else None)
    parser.add_argument("--records", default="0,50000,250000,1000000",
                        help="records already in the table, a comma list")
    parser.add_argument("--batch", type=int, default=5000, help="records per transaction")
    parser.add_argument("--rounds", type=int, default=7, help="transactions per layout")
    parser.add_argument("--dir", type=Path, default=None, help="where the databases go")
    parser.add_argument("--migrate", type=int, default=0, metavar="N",
                        help="also time the v5 -> v6 migration of N records")
    args = parser.parse_args()
    print(machine_line())
    print(f"batch {args.batch:,} records per transaction, median of {args.rounds} rounds")
    print("| records held | v5 ms/batch | v6 ms/batch | v5 µs/record | v6 µs/record"
          " | v5 WAL MB | v6 WAL MB | v6/v5 time |")
    print("| --- | --- | --- | --- | --- | --- | --- | --- |")
    with tempfile.TemporaryDirectory(dir=args.dir) as tmp:
        for records in (int(r) for r in args.records.split(",")):
            got = measure(Path(tmp), records, args.batch, args.rounds)
            (t5, w5), (t6, w6) = got["v5"], got["v6"]
            print(f"| {records:,} | {t5 * 1e3:.1f} | {t6 * 1e3:.1f}"
                  f" | {t5 / args.batch * 1e6:.1f} | {t6 / args.batch * 1e6:.1f}"
                  f" | {w5 / 1e6:.1f} | {w6 / 1e6:.1f} | {t6 / t5:.2f}x |", flush=True)
        if args.migrate:
            seconds, before, after = migrate(Path(tmp), args.migrate)
            print(f"migration v5 -> v6 of {args.migrate:,} records: {seconds:.1f} s,"
                  f" database {before / 1e6:.0f} MB before, {after / 1e6:.0f} MB with its"
                  " WAL after")


if __name__ == "__main__":
    main()
