"""The store reads behind CreateMailbox's cap and Subscribe's ownership check.

Run: ``python -m bench.mailbox_reads [--mailboxes 10000] [--subscribe 1000] [--rounds 20]
[--dir PATH]``

Opens a fresh relay SQLite store, gives one account ``--mailboxes`` mailboxes, and times,
interleaved round by round, what the relay reads per request: ``count_mailboxes`` (the
cap) and ``owned_mailboxes`` for ``--subscribe`` ids and for one (a ``Subscribe``),
against the baseline in the same run, ``list_mailboxes`` (what both read before: every
mailbox of the account). Medians in milliseconds, and each one's ratio to the baseline.
Figures: docs/benchmarks.md.
"""

from __future__ import annotations

import argparse
import asyncio
import hashlib
import statistics
import tempfile
import time
from collections.abc import Awaitable, Callable
from pathlib import Path

from relay.store_sqlite import SqliteStore

ACCOUNT = b"\x01" * 16


async def _run(path: Path, mailboxes: int, subscribe: int, rounds: int) -> None:
    store = await SqliteStore.open(path)
    try:
        await store.create_account(account_id=ACCOUNT, identity_key=b"k", now_ms=1)
        ids = [i.to_bytes(16, "big") for i in range(mailboxes)]
        await asyncio.gather(*(store.create_mailbox(
            account_id=ACCOUNT, mailbox_id=m, capability_hash=hashlib.sha256(m).digest(),
            now_ms=i) for i, m in enumerate(ids)))
        asked = ids[::max(1, mailboxes // subscribe)][:subscribe]
        reads: dict[str, Callable[[], Awaitable[object]]] = {
            "list_mailboxes (baseline)": lambda: store.list_mailboxes(ACCOUNT),
            "count_mailboxes": lambda: store.count_mailboxes(ACCOUNT),
            f"owned_mailboxes, {len(asked)} ids": lambda: store.owned_mailboxes(ACCOUNT, asked),
            "owned_mailboxes, 1 id": lambda: store.owned_mailboxes(ACCOUNT, asked[:1]),
        }
        times: dict[str, list[float]] = {name: [] for name in reads}
        for _ in range(rounds):
            for name, read in reads.items():
                start = time.perf_counter()
                await read()
                times[name].append((time.perf_counter() - start) * 1000)
        base = statistics.median(times["list_mailboxes (baseline)"])
        print(f"{mailboxes:,} mailboxes of one account, {rounds} rounds (median ms)")
        for name, ms in times.items():
            med = statistics.median(ms)
            print(f"  {name:<28} {med:8.2f} ms  {med / base:6.3f}x the baseline")
    finally:
        await store.close()


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--mailboxes", type=int, default=10_000)
    parser.add_argument("--subscribe", type=int, default=1000)
    parser.add_argument("--rounds", type=int, default=20)
    parser.add_argument("--dir", type=Path, default=None)
    args = parser.parse_args()
    with tempfile.TemporaryDirectory(dir=args.dir) as tmp:
        asyncio.run(_run(Path(tmp) / "relay.db", args.mailboxes, args.subscribe, args.rounds))


if __name__ == "__main__":
    main()
