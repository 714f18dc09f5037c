"""Redis bus publish throughput: what a hint to another node costs, and whether the
hand-packed ``PUBLISH`` earns its keep.

Run: ``python -m bench.bus [--messages 2000] [--batch 100] [--rounds 8] [--redis URL]``

Needs a Redis on loopback (``--redis``, default ``$PIGEON_TEST_REDIS`` or
``redis://127.0.0.1:6379/0``); without one it says so and exits 0. A second node, a
``RedisBus`` in another process, follows the mailbox, so every PUBLISH has a receiver
and Redis fans it out (its received count is checked after each mode). Each mode
publishes ``--messages`` MESSAGE notifications with 200-byte payloads to that mailbox:

* ``InProcessBus`` with a local subscriber, awaited one by one: the baseline (a single
  node's cost);
* ``RedisBus.publish`` awaited one by one (a round trip each);
* ``RedisBus.publish`` concurrently, ``--batch`` per event-loop iteration (coalesced into
  one pipeline);
* ``RedisBus.publish_many`` of ``--batch`` items;
* the same ``publish_many`` with ``PUBLISH`` packed in RESP by hand (:func:`hand_pack`)
  in place of redis-py's ``Connection.pack_commands``, which the bus uses: the bus
  packed by hand until this showed no clear gain (docs/benchmarks.md);
* redis-py's own client pipeline (``Redis.pipeline(transaction=False)``, ``--batch``
  PUBLISHes per ``execute``), no bus: what a plain redis-py user would write (the
  messages tagged as the bus tags them, so the follower takes them).

Every bus message carries an HMAC-SHA256 tag (:class:`relay._redis_wire.Tagger`); the
cost of tagging one hint alone is printed after the table.

Modes run in interleaved rounds (the order rotates); the best round of each is shown,
with the ratio to the baseline of the same run, and the packing cost alone (a batch).
"""

from __future__ import annotations

import argparse
import asyncio
import os
import secrets
import sys
import time
from collections.abc import Awaitable, Callable
from urllib.parse import urlsplit

from redis.asyncio import Redis
from redis.asyncio.connection import Connection

from bench._report import machine_line
from relay._redis_wire import Tagger, bus_key
from relay.bus import InProcessBus, encode_notification
from relay.bus_redis import RedisBus
from relay.ports import Notification, NotificationKind

MAILBOX = b"\x5a" * 16
PAYLOAD = b"\xa5" * 200
_LOOPBACK = {"127.0.0.1", "localhost", "::1"}
KEY = bus_key(b"\x5a" * 32)
"""The bench deployment's bus key (the follower process derives the same)."""
_DEADLINE_S = 120.0
"""The whole run stops here (a wedged Redis must not hang the benchmark)."""

Publish = Callable[[list[Notification]], Awaitable[None]]


def _notes(n: int) -> list[Notification]:
    return [Notification(kind=NotificationKind.MESSAGE, seq=i + 1, payload=PAYLOAD)
            for i in range(n)]


async def _follow(url: str, prefix: str) -> None:
    """The second node: follow the mailbox, drain it, print ``received`` per stdin line."""
    bus = await RedisBus.open(url, prefix=prefix, key=KEY)
    sub = await bus.subscribe([MAILBOX], max_queue=1 << 20)

    async def drain() -> None:
        async for _ in sub:
            pass

    drainer = asyncio.create_task(drain())
    print("ready", flush=True)
    loop = asyncio.get_running_loop()
    while await loop.run_in_executor(None, sys.stdin.readline):
        print(bus.stats().received, flush=True)
    drainer.cancel()
    await bus.close()


class _Follower:
    def __init__(self, proc: asyncio.subprocess.Process) -> None:
        self._proc = proc

    async def received(self) -> int:
        assert self._proc.stdin is not None and self._proc.stdout is not None
        self._proc.stdin.write(b"?\n")
        await self._proc.stdin.drain()
        return int(await asyncio.wait_for(self._proc.stdout.readline(), 10))

    async def close(self) -> None:
        assert self._proc.stdin is not None
        self._proc.stdin.close()  # it exits at the end of its input
        try:
            await asyncio.wait_for(self._proc.wait(), 10)
        except TimeoutError:
            self._proc.kill()
            await self._proc.wait()


async def _start_follower(url: str, prefix: str) -> _Follower:
    proc = await asyncio.create_subprocess_exec(
        sys.executable, "-m", "bench.bus", "--follow", "--redis", url, "--prefix", prefix,
        stdin=asyncio.subprocess.PIPE, stdout=asyncio.subprocess.PIPE)
    assert proc.stdout is not None
    if await asyncio.wait_for(proc.stdout.readline(), 20) != b"ready\n":
        raise SystemExit("bench.bus: the follower process did not start")
    return _Follower(proc)


_PACKER = Connection()


def redis_py_pack(batch: list[tuple[bytes, bytes, object]]) -> list[bytes]:
    """What the bus sends (``Publisher._pack``)."""
    return _PACKER.pack_commands([(b"PUBLISH", channel, data) for channel, data, _ in batch])


def hand_pack(batch: list[tuple[bytes, bytes, object]]) -> list[bytes]:
    """``PUBLISH channel data`` for each item, in RESP, written out by hand."""
    return [b"".join([b"".join((b"*3\r\n$7\r\nPUBLISH\r\n$", str(len(channel)).encode(),
                                b"\r\n", channel, b"\r\n$", str(len(data)).encode(),
                                b"\r\n", data, b"\r\n"))
                      for channel, data, _ in batch])]


async def _modes(url: str, prefix: str, batch: int) -> dict[str, tuple[Publish, object]]:
    """name -> (publish all, the bus or client to close)."""
    local = InProcessBus()
    one = await RedisBus.open(url, prefix=prefix, key=KEY)
    client = Redis.from_url(url)
    channel = f"{prefix}:mb:{MAILBOX.hex()}".encode()
    head, seal = one._head, Tagger(KEY).seal

    async def baseline(notes: list[Notification]) -> None:
        sub = await local.subscribe([MAILBOX], max_queue=len(notes))
        for note in notes:
            await local.publish(MAILBOX, note)
        await sub.close()

    async def one_by_one(notes: list[Notification]) -> None:
        for note in notes:
            await one.publish(MAILBOX, note)

    async def concurrent(notes: list[Notification]) -> None:
        for i in range(0, len(notes), batch):
            await asyncio.gather(*(one.publish(MAILBOX, n) for n in notes[i:i + batch]))

    async def many(notes: list[Notification]) -> None:
        for i in range(0, len(notes), batch):
            await one.publish_many([(MAILBOX, n) for n in notes[i:i + batch]])

    async def many_by_hand(notes: list[Notification]) -> None:
        publisher = one._publisher
        publisher._pack = hand_pack  # type: ignore[method-assign,assignment]
        try:
            for i in range(0, len(notes), batch):
                await one.publish_many([(MAILBOX, n) for n in notes[i:i + batch]])
        finally:
            del publisher._pack

    async def pipeline(notes: list[Notification]) -> None:
        for i in range(0, len(notes), batch):
            pipe = client.pipeline(transaction=False)
            for note in notes[i:i + batch]:
                pipe.publish(channel, seal(head + encode_notification(MAILBOX, note)))
            await pipe.execute()

    return {
        "InProcessBus, local subscriber (baseline)": (baseline, local),
        "RedisBus.publish, awaited one by one": (one_by_one, one),
        f"RedisBus.publish, {batch} concurrent": (concurrent, one),
        f"RedisBus.publish_many, {batch} a call": (many, one),
        f"publish_many, {batch} a call, packed by hand": (many_by_hand, one),
        f"redis-py pipeline, {batch} per execute": (pipeline, client),
    }


def _tag_cost_us(rounds: int = 20_000) -> float:
    """Microseconds to tag one hint of a 200-byte payload (``Tagger.seal``)."""
    message = b"\x02" + b"\x00" * 8 + encode_notification(MAILBOX, _notes(1)[0])
    seal = Tagger(KEY).seal
    best = float("inf")
    for _ in range(5):
        start = time.perf_counter()
        for _ in range(rounds):
            seal(message)
        best = min(best, 1e6 * (time.perf_counter() - start) / rounds)
    return best


def _pack_cost_us(batch: int, rounds: int = 200) -> tuple[float, float]:
    """Microseconds per PUBLISH to pack a batch: by hand, and by redis-py."""
    channel = b"pigeon:mb:" + MAILBOX.hex().encode()
    data = b"\x02" + b"\x00" * 8 + encode_notification(MAILBOX, _notes(1)[0]) + b"\x00" * 16
    items: list[tuple[bytes, bytes, object]] = [(channel, data, None)] * batch
    out = []
    for pack in (hand_pack, redis_py_pack):
        start = time.perf_counter()
        for _ in range(rounds):
            pack(items)
        out.append(1e6 * (time.perf_counter() - start) / rounds / batch)
    return out[0], out[1]


async def _bench(args: argparse.Namespace) -> None:
    prefix = f"bench_{secrets.token_hex(4)}"
    follower = await _start_follower(args.redis, prefix)
    try:
        await _run(args, prefix, follower)
    finally:
        await follower.close()


async def _run(args: argparse.Namespace, prefix: str, follower: _Follower) -> None:
    modes = await _modes(args.redis, prefix, args.batch)
    notes = _notes(args.messages)
    best: dict[str, float] = {}
    names = list(modes)
    for rnd in range(args.rounds):
        order = names[rnd % len(names):] + names[:rnd % len(names)]
        for name in order:
            publish, _ = modes[name]
            before = await follower.received()
            start = time.perf_counter()
            await publish(notes)
            rate = len(notes) / (time.perf_counter() - start)
            best[name] = max(best.get(name, 0.0), rate)
            if "baseline" not in name:
                expected = before + len(notes)
                for _ in range(200):  # the last hints are on their way
                    if await follower.received() >= expected:
                        break
                    await asyncio.sleep(0.01)
                else:
                    raise SystemExit(f"bench.bus: the follower missed hints ({name})")
    for _, closing in {id(c): c for _, c in modes.values()}.items():
        if isinstance(closing, Redis):
            await closing.aclose()
        else:
            await closing.close()  # type: ignore[attr-defined]
    hand, generic = _pack_cost_us(args.batch)
    base = best[names[0]]
    print(machine_line(f"Redis at {args.redis}"))
    print(f"bench.bus: {args.messages} MESSAGE publishes of 200-byte payloads to one mailbox "
          f"a node in another process follows; best of {args.rounds} interleaved rounds")
    print()
    print("| mode | publishes/s | µs each | ratio to baseline |")
    print("| --- | --- | --- | --- |")
    for name in names:
        rate = best[name]
        print(f"| {name} | {rate:,.0f} | {1e6 / rate:.1f} | {rate / base:.3f}x |")
    print()
    print(f"packing a batch of {args.batch}, per PUBLISH: by hand {hand:.2f} µs, redis-py "
          f"pack_commands {generic:.2f} µs ({generic / hand:.1f}x)")
    print(f"tagging one hint (HMAC-SHA256, best of 5): {_tag_cost_us():.2f} µs")


async def _reachable(url: str) -> str | None:
    client = Redis.from_url(url, socket_connect_timeout=2)
    try:
        await client.ping()
        return None
    except Exception as exc:  # any failure means "no Redis to measure"
        return type(exc).__name__
    finally:
        await client.aclose()


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0] if __doc__ else None)
    ap.add_argument("--messages", type=int, default=2000, help="publishes per mode and round")
    ap.add_argument("--batch", type=int, default=100, help="publishes per pipeline")
    ap.add_argument("--rounds", type=int, default=8, help="interleaved rounds")
    ap.add_argument("--redis", default=os.environ.get("PIGEON_TEST_REDIS",
                                                      "redis://127.0.0.1:6379/0"))
    ap.add_argument("--follow", action="store_true", help=argparse.SUPPRESS)
    ap.add_argument("--prefix", default="bench", help=argparse.SUPPRESS)
    args = ap.parse_args()
    if urlsplit(args.redis).hostname not in _LOOPBACK:
        raise SystemExit("bench.bus: loopback Redis only (127.0.0.1, localhost, ::1)")
    if args.follow:
        asyncio.run(_follow(args.redis, args.prefix))
        return
    problem = asyncio.run(_reachable(args.redis))
    if problem is not None:
        print(f"bench.bus: skipped: no Redis answers at {args.redis} ({problem}); "
              "start one or pass --redis")
        return

    async def bounded() -> None:
        await asyncio.wait_for(_bench(args), _DEADLINE_S)

    asyncio.run(bounded())


if __name__ == "__main__":
    main()
