"""Relay store throughput: group commit vs one commit per message.

Run: ``python -m bench.store [--seconds 1.5] [--producers 1,100] [--dir PATH]``

For synchronous=FULL and NORMAL and for each producer count, N coroutines append 200-byte
messages (each to its own mailbox, awaiting every append like a connection awaiting
``Sent``) for a fixed time, with group commit (the default writer) and with ``max_batch=1``
(one transaction per message, the baseline), in interleaved rounds (baseline first in odd
rounds, group commit first in even ones) on fresh databases; the best round of each mode
is shown. Prints messages/s, commits, the mean and largest batch, the mean latency a caller
saw, and the ratio to the baseline. Also prints the cost of one bare SQLite commit on this
disk as a reference. The machine is shared: run it a few times.
"""

from __future__ import annotations

import argparse
import asyncio
import hashlib
import sqlite3
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path

from relay.ports import Recipient, RecordingObserver
from relay.store_sqlite import SqliteStore, Synchronous

T0 = 1_700_000_000_000
TTL = 30 * 86_400_000
BLOB = b"\xa5" * 200


@dataclass(frozen=True)
class Result:
    sync: Synchronous
    producers: int
    group: bool
    rate: float
    commits: int
    mean_batch: float
    max_batch: int
    latency_ms: float


async def _run(
    path: Path, sync: Synchronous, producers: int, group: bool, seconds: float
) -> Result:
    obs = RecordingObserver()
    store = await SqliteStore.open(path, synchronous=sync, max_batch=1024 if group else 1,
                                   observer=obs)
    try:
        account = b"\x01" * 16
        await store.create_account(account_id=account, identity_key=b"ik", now_ms=T0)
        rcpts = []
        for p in range(producers):
            mailbox = p.to_bytes(16, "big")
            cap = hashlib.sha256(mailbox).digest()
            await store.create_mailbox(account_id=account, mailbox_id=mailbox,
                                       capability_hash=cap, now_ms=T0)
            rcpts.append([Recipient(mailbox_id=mailbox, capability_hash=cap)])
        obs.reset()
        done = 0
        deadline = time.perf_counter() + seconds

        async def producer(p: int) -> None:
            nonlocal done
            n = 0
            while time.perf_counter() < deadline:
                n += 1
                await store.append(recipients=rcpts[p], client_msg_id=p.to_bytes(8, "big")
                                   + n.to_bytes(8, "big"), blob=BLOB, now_ms=T0, ttl_ms=TTL)
                done += 1

        start = time.perf_counter()
        await asyncio.gather(*(producer(p) for p in range(producers)))
        elapsed = time.perf_counter() - start
    finally:
        await store.close()
    sizes = obs.batch_sizes or [0]
    return Result(
        sync=sync,
        producers=producers,
        group=group,
        rate=done / elapsed,
        commits=obs.commits,
        mean_batch=sum(sizes) / len(sizes),
        max_batch=max(sizes),
        latency_ms=1000 * obs.operation_seconds.get("append", 0.0) / max(done, 1),
    )


def _bare_commit_ms(path: Path, sync: Synchronous, seconds: float = 0.5) -> float:
    conn = sqlite3.connect(path, isolation_level=None)
    conn.execute("PRAGMA journal_mode = WAL")
    conn.execute(f"PRAGMA synchronous = {sync.value}")
    conn.execute("CREATE TABLE t (x BLOB)")
    n = 0
    start = time.perf_counter()
    while time.perf_counter() - start < seconds:
        conn.execute("BEGIN IMMEDIATE")
        conn.execute("INSERT INTO t VALUES (?)", (BLOB,))
        conn.execute("COMMIT")
        n += 1
    elapsed = time.perf_counter() - start
    conn.close()
    return 1000 * elapsed / n


async def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--seconds", type=float, default=1.5, help="per configuration")
    ap.add_argument("--producers", default="1,100", help="comma-separated counts")
    ap.add_argument("--rounds", type=int, default=2, help="interleaved rounds per mode")
    ap.add_argument("--dir", type=Path, default=None, help="where the databases go")
    args = ap.parse_args()
    counts = [int(x) for x in args.producers.split(",")]
    with tempfile.TemporaryDirectory(dir=args.dir, prefix="pigeon-bench-") as tmp:
        root = Path(tmp)
        print(f"bench.store: 200-byte appends, {args.seconds:.1f} s per run, "
              f"best of {args.rounds} interleaved rounds")
        for sync in (Synchronous.FULL, Synchronous.NORMAL):
            ms = _bare_commit_ms(root / f"bare-{sync.value}.db", sync)
            print(f"reference: one bare SQLite commit, synchronous={sync.value}: {ms:.3f} ms")
        print()
        header = (f"{'sync':<7}{'prod':>5}  {'mode':<13}{'msgs/s':>9}{'commits':>9}"
                  f"{'mean batch':>12}{'max':>6}{'lat ms':>9}{'ratio':>8}")
        print(header)
        print("-" * len(header))
        i = 0
        for sync in (Synchronous.FULL, Synchronous.NORMAL):
            for producers in counts:
                results: dict[bool, Result] = {}
                for rnd in range(args.rounds):
                    for group in (False, True) if rnd % 2 == 0 else (True, False):
                        i += 1
                        r = await _run(root / f"run{i}.db", sync, producers, group, args.seconds)
                        if group not in results or r.rate > results[group].rate:
                            results[group] = r
                base = results[False].rate
                for group in (False, True):
                    r = results[group]
                    mode = "group commit" if group else "per message"
                    print(f"{sync.value:<7}{producers:>5}  {mode:<13}{r.rate:>9.0f}{r.commits:>9}"
                          f"{r.mean_batch:>12.1f}{r.max_batch:>6}{r.latency_ms:>9.3f}"
                          f"{r.rate / base:>7.2f}x")


if __name__ == "__main__":
    asyncio.run(main())
