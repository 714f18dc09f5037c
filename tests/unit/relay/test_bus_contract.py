"""The Bus semantics every adapter must have, run against ``InProcessBus`` and ``RedisBus``.

One bus is one node: routing, publish counts, waiting, per-mailbox order, the bounded
queue (EPHEMERAL dropped, MESSAGE coalesced into RESYNC, control never dropped), the
``set_direct`` fast path, add/remove/close. Two ``RedisBus`` instances with one prefix are
two nodes of one relay: the same semantics across them, no echo of a node's own
publishes, and UNSUBSCRIBE ending remote delivery.
"""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator, Awaitable, Callable

import pytest

from pigeon_crypto.errors import TransportError
from relay._redis_wire import bus_key
from relay.bus import InProcessBus
from relay.bus_redis import RedisBus
from relay.ports import Notification, NotificationKind
from tests.services import redis_url, unique_name

A = b"\xaa" * 16
B = b"\xbb" * 16
C = b"\xcc" * 16
D = b"\xdd" * 16
WAIT_S = 5.0
KEY = bus_key(b"\x42" * 32)
"""The bus key of the test deployment (every node of one relay shares it)."""

AnyBus = InProcessBus | RedisBus
MakeBus = Callable[[], Awaitable[AnyBus]]
RESYNC = Notification(kind=NotificationKind.RESYNC)
CLOSED = Notification(kind=NotificationKind.CLOSED)
MARKER = Notification(kind=NotificationKind.EPHEMERAL, payload=b"marker")


def msg(seq: int, payload: bytes = b"") -> Notification:
    return Notification(kind=NotificationKind.MESSAGE, seq=seq, payload=payload)


def eph(payload: bytes) -> Notification:
    return Notification(kind=NotificationKind.EPHEMERAL, payload=payload)


async def eventually(check: Callable[[], bool], what: str) -> None:
    """Poll *check* until it holds; fail after WAIT_S."""
    loop = asyncio.get_running_loop()
    deadline = loop.time() + WAIT_S
    while not check():
        if loop.time() > deadline:
            pytest.fail(f"timed out waiting for {what}")
        await asyncio.sleep(0.005)


async def get(sub: object) -> tuple[bytes, Notification]:
    result: tuple[bytes, Notification] = await asyncio.wait_for(sub.get(), WAIT_S)  # type: ignore[attr-defined]
    return result


@pytest.fixture(params=["memory", "redis"])
async def make_bus(request: pytest.FixtureRequest) -> AsyncIterator[MakeBus]:
    """A factory of buses. Redis: every call is another node of one relay (one prefix)."""
    opened: list[AnyBus] = []
    if request.param == "memory":
        async def make() -> AnyBus:
            opened.append(InProcessBus())
            return opened[-1]
    else:
        url, prefix = redis_url(), unique_name("bus")

        async def make() -> AnyBus:
            opened.append(await RedisBus.open(url, prefix=prefix, key=KEY))
            return opened[-1]
    yield make
    for bus in opened:
        await bus.close()


@pytest.fixture
async def nodes() -> AsyncIterator[tuple[RedisBus, RedisBus]]:
    """Two nodes of one relay: two RedisBus instances sharing a prefix."""
    url, prefix = redis_url(), unique_name("bus")
    one = await RedisBus.open(url, prefix=prefix, key=KEY)
    two = await RedisBus.open(url, prefix=prefix, key=KEY)
    yield one, two
    await one.close()
    await two.close()


async def barrier(src: RedisBus, dst: RedisBus, mailbox_id: bytes) -> None:
    """Publish ``MARKER`` on *src* and wait until *dst* (following *mailbox_id*) received
    it: Redis delivers in order, so whatever *src* published before reached *dst* too."""
    before = dst.stats().received
    await src.publish(mailbox_id, MARKER)
    await eventually(lambda: dst.stats().received > before, "the marker")


# --------------------------------------------------------------------------- one node


async def test_routes_to_subscribers_of_the_mailbox_only(make_bus: MakeBus) -> None:
    bus = await make_bus()
    sub_a = await bus.subscribe([A])
    sub_ab = await bus.subscribe([A, B])
    assert sub_ab.mailbox_ids == {A, B}
    assert await bus.publish(A, msg(1)) == 2
    assert await bus.publish(B, eph(b"typing")) == 1
    assert await bus.publish(C, eph(b"nobody")) == 0  # route-if-subscribed: drop
    assert await get(sub_a) == (A, msg(1))
    assert await get(sub_ab) == (A, msg(1))
    assert await get(sub_ab) == (B, eph(b"typing"))
    assert bus.subscribers(A) == 2 and bus.subscribers(C) == 0
    await sub_ab.remove(A)
    await sub_ab.remove(D)  # not followed: harmless
    assert await bus.publish(A, msg(2)) == 1
    await sub_a.add(C)
    await sub_a.add(C)  # twice: still one copy
    assert await bus.publish(C, msg(1)) == 1
    assert [await get(sub_a) for _ in range(2)] == [(A, msg(2)), (C, msg(1))]
    assert sub_a.queued == 0 and sub_ab.queued == 0
    stats = bus.stats()
    assert (stats.published, stats.delivered, stats.subscriptions) == (5, 5, 2)


async def test_get_waits_for_a_publish(make_bus: MakeBus) -> None:
    bus = await make_bus()
    sub = await bus.subscribe([A])
    waiter = asyncio.create_task(sub.get())
    await asyncio.sleep(0.01)
    assert not waiter.done()
    await bus.publish(A, msg(5))
    assert await asyncio.wait_for(waiter, WAIT_S) == (A, msg(5))


async def test_order_is_kept_per_mailbox(make_bus: MakeBus) -> None:
    bus = await make_bus()
    sub = await bus.subscribe([A, B], max_queue=1000)
    sent = [(A if i % 3 else B, msg(i)) for i in range(1, 301)]
    await asyncio.gather(*(bus.publish(m, n) for m, n in sent))
    got = [await get(sub) for _ in sent]
    for mailbox_id in (A, B):
        assert [n for m, n in got if m == mailbox_id] == [n for m, n in sent if m == mailbox_id]


async def test_full_queue_drops_ephemeral_and_coalesces_durable(make_bus: MakeBus) -> None:
    bus = await make_bus()
    slow = await bus.subscribe([A, B], max_queue=3)
    fast = await bus.subscribe([A], max_queue=100)
    for seq in (1, 2, 3):
        await bus.publish(A, msg(seq))  # fills slow
    assert await bus.publish(A, eph(b"x")) == 1  # fast took it, slow dropped it
    assert slow.dropped == 1
    for seq in (4, 5, 6):
        assert await bus.publish(A, msg(seq)) == 2  # coalesced in slow: still "taken"
    await bus.publish(B, msg(1))
    assert (slow.coalesced, slow.dropped) == (4, 1)
    assert await bus.publish(B, CLOSED) == 1  # control: queued beyond the bound
    assert [await get(slow) for _ in range(3)] == [(A, RESYNC), (B, RESYNC), (B, CLOSED)]
    assert slow.queued == 0
    assert [(await get(fast))[1].seq for _ in range(7)] == [1, 2, 3, 0, 4, 5, 6]
    stats = bus.stats()
    assert (stats.dropped, stats.coalesced) == (1, 4)


async def test_resync_request_is_local_and_comes_first(make_bus: MakeBus) -> None:
    bus = await make_bus()
    sub = await bus.subscribe([A, B])
    other = await bus.subscribe([A])
    await bus.publish(A, msg(1))
    await bus.publish(B, msg(7))
    sub.resync(A)
    sub.resync(C)  # not followed: ignored
    assert await get(sub) == (A, RESYNC)
    assert await get(sub) == (B, msg(7))  # A's stale hint was discarded
    assert await get(other) == (A, msg(1))
    assert sub.queued == 0 and other.queued == 0 and sub.coalesced == 0


async def test_a_parked_consumer_takes_notifications_directly(make_bus: MakeBus) -> None:
    bus = await make_bus()
    sub = await bus.subscribe([A])
    seen: list[tuple[bytes, Notification]] = []

    def direct(mailbox_id: bytes, n: Notification) -> bool:
        seen.append((mailbox_id, n))
        return n.seq != 99

    set_direct = sub.set_direct  # the delivery pump looks it up with getattr
    set_direct(direct)
    waiter = asyncio.create_task(sub.get())
    await asyncio.sleep(0.01)
    assert await bus.publish(A, msg(2)) == 1
    assert seen == [(A, msg(2))] and sub.queued == 0  # handled in the publisher's turn
    assert await bus.publish(A, msg(99)) == 1  # declined: queued, the consumer wakes
    assert await asyncio.wait_for(waiter, WAIT_S) == (A, msg(99))
    set_direct(None)


async def test_close_ends_iteration_and_unsubscribes(make_bus: MakeBus) -> None:
    bus = await make_bus()
    sub = await bus.subscribe([A])
    await bus.publish(A, msg(1))
    seen: list[tuple[bytes, Notification]] = []

    async def consume() -> None:
        async for item in sub:
            seen.append(item)

    task = asyncio.create_task(consume())
    await asyncio.sleep(0.01)
    await sub.close()
    await sub.close()  # idempotent
    await asyncio.wait_for(task, WAIT_S)
    assert seen == [(A, msg(1))] and sub.closed
    assert await bus.publish(A, msg(2)) == 0
    with pytest.raises(TransportError):
        await sub.add(B)
    async with await bus.subscribe([B]) as scoped:
        assert bus.subscribers(B) == 1
    assert scoped.closed and bus.subscribers(B) == 0
    assert bus.stats().subscriptions == 0
    blocked = await bus.subscribe([C])
    waiter = asyncio.create_task(blocked.get())
    await asyncio.sleep(0.01)
    await bus.close()
    with pytest.raises(StopAsyncIteration):
        await asyncio.wait_for(waiter, WAIT_S)  # closing the bus ends its subscriptions
    with pytest.raises(TransportError):
        await bus.subscribe([A])
    await bus.close()  # idempotent


async def test_rejects_bad_arguments(make_bus: MakeBus) -> None:
    bus = await make_bus()
    with pytest.raises(ValueError):
        await bus.subscribe([b"short"])
    with pytest.raises(ValueError):
        await bus.subscribe([A], max_queue=0)
    sub = await bus.subscribe()
    with pytest.raises(ValueError):
        await sub.add(b"short")
    with pytest.raises(ValueError):
        await sub.add_many([A, b"short"])  # checked before any is added
    assert sub.mailbox_ids == frozenset()
    assert await bus.publish(A, msg(1)) == 0


async def test_one_consumer_at_a_time_and_a_cancelled_get_loses_nothing(
        make_bus: MakeBus) -> None:
    bus = await make_bus()
    sub = await bus.subscribe([A])
    first = asyncio.ensure_future(sub.get())
    await asyncio.sleep(0)  # parked
    with pytest.raises(RuntimeError):
        await sub.get()
    assert await bus.publish(A, msg(1)) == 1
    assert await asyncio.wait_for(first, WAIT_S) == (A, msg(1))
    with pytest.raises(TimeoutError):
        await asyncio.wait_for(sub.get(), 0.05)
    assert await bus.publish(A, msg(2)) == 1  # after a cancelled wait
    assert await get(sub) == (A, msg(2))
    assert sub.queued == 0


async def test_add_many_follows_each_mailbox_once(make_bus: MakeBus) -> None:
    bus = await make_bus()
    sub = await bus.subscribe([A])
    await sub.add_many([B, A, C, B])
    assert sub.mailbox_ids == frozenset({A, B, C})
    assert await bus.publish_many([(m, msg(1)) for m in (A, B, C, D)]) == [1, 1, 1, 0]
    assert [await get(sub) for _ in range(3)] == [(A, msg(1)), (B, msg(1)), (C, msg(1))]
    assert sub.queued == 0


# --------------------------------------------------------------------------- two nodes


async def test_a_publish_reaches_the_other_node_and_counts_it(
    nodes: tuple[RedisBus, RedisBus],
) -> None:
    one, two = nodes
    here = await one.subscribe([A])
    there = await two.subscribe([A, B])
    assert await one.publish(A, msg(1, b"env")) == 2  # one local + one remote node
    assert await one.publish(B, eph(b"typing")) == 1  # remote only
    assert await one.publish(C, msg(1)) == 0  # nobody anywhere
    assert await get(there) == (A, msg(1, b"env"))
    assert await get(there) == (B, eph(b"typing"))
    assert await get(here) == (A, msg(1, b"env"))
    # No echo: once the other node's marker arrived, our own publish would have too.
    await barrier(two, one, A)
    assert await get(here) == (A, MARKER) and here.queued == 0
    assert await get(there) == (A, MARKER)  # two's local copy
    # A second subscription on the remote node is still one node for Redis.
    also_there = await two.subscribe([A])
    assert await one.publish(A, msg(2)) == 2
    assert await get(also_there) == (A, msg(2)) and await get(there) == (A, msg(2))
    assert one.stats().remote_takers == 3 and two.stats().received == 3


async def test_order_is_kept_across_nodes(nodes: tuple[RedisBus, RedisBus]) -> None:
    one, two = nodes
    there = await two.subscribe([A, B], max_queue=1000)
    sent = [(A if i % 3 else B, msg(i, b"p" * (i % 7))) for i in range(1, 401)]
    concurrent, sequential = sent[:200], sent[200:]
    counts = await asyncio.gather(*(one.publish(m, n) for m, n in concurrent))
    counts += [await one.publish(m, n) for m, n in sequential]
    assert counts == [1] * len(sent)
    got = [await get(there) for _ in sent]
    for mailbox_id in (A, B):
        assert [n for m, n in got if m == mailbox_id] == [n for m, n in sent if m == mailbox_id]


async def test_the_remote_queue_is_bounded_too(nodes: tuple[RedisBus, RedisBus]) -> None:
    one, two = nodes
    slow = await two.subscribe([A], max_queue=2)
    for seq in (1, 2):
        await one.publish(A, msg(seq))
    await one.publish(A, eph(b"x"))
    for seq in (3, 4):
        await one.publish(A, msg(seq))
    await one.publish(A, CLOSED)
    await eventually(lambda: two.stats().received == 6, "six notifications")
    assert (slow.dropped, slow.coalesced) == (1, 2)
    assert [await get(slow) for _ in range(2)] == [(A, RESYNC), (A, CLOSED)]
    assert slow.queued == 0


async def test_remove_and_close_stop_remote_delivery(nodes: tuple[RedisBus, RedisBus]) -> None:
    one, two = nodes
    there = await two.subscribe([A, B])
    other = await two.subscribe([A])
    assert await one.publish(A, msg(1)) == 1
    assert await get(there) == (A, msg(1))  # arrived: the removal below comes after it
    await there.remove(A)  # `other` still follows A: the channel stays
    assert await one.publish(A, msg(2)) == 1
    assert two.stats().channels == 2
    await other.close()  # the last follower of A went: UNSUBSCRIBE
    await eventually(lambda: two.stats().channels == 1, "the UNSUBSCRIBE")
    assert await one.publish(A, msg(3)) == 0
    await barrier(one, two, B)
    assert await get(there) == (B, MARKER)
    assert there.queued == 0  # neither msg(2) nor msg(3)
    await there.close()
    await eventually(lambda: two.stats().channels == 0, "the last UNSUBSCRIBE")
    assert await one.publish(B, msg(1)) == 0
    # Following a mailbox again after the UNSUBSCRIBE works.
    again = await two.subscribe([A])
    assert await one.publish(A, msg(4)) == 1
    assert await get(again) == (A, msg(4))
