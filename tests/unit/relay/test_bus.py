"""The in-process bus: routing, bounded queues, drop and coalesce accounting, codec."""

from __future__ import annotations

import asyncio

import pytest

from pigeon_crypto.errors import DecodeError, TransportError, UnknownVersion
from relay.bus import InProcessBus, decode_notification, encode_notification
from relay.ports import Notification, NotificationKind

A = b"\xaa" * 16
B = b"\xbb" * 16
C = b"\xcc" * 16


def msg(seq: int) -> Notification:
    return Notification(kind=NotificationKind.MESSAGE, seq=seq)


def eph(payload: bytes) -> Notification:
    return Notification(kind=NotificationKind.EPHEMERAL, payload=payload)


async def test_routes_to_subscribers_of_the_mailbox_only() -> None:
    bus = InProcessBus()
    sub_a = await bus.subscribe([A])
    sub_ab = await bus.subscribe([A, B])
    assert await bus.publish(A, msg(1)) == 2
    assert await bus.publish(B, eph(b"typing")) == 1
    assert await bus.publish(C, eph(b"nobody")) == 0  # route-if-subscribed: drop
    assert await sub_a.get() == (A, msg(1))
    assert await sub_ab.get() == (A, msg(1))
    assert await sub_ab.get() == (B, eph(b"typing"))
    assert bus.subscribers(A) == 2 and bus.subscribers(C) == 0
    await sub_ab.remove(A)
    assert await bus.publish(A, msg(2)) == 1
    await sub_a.add(C)
    assert await bus.publish(C, msg(1)) == 1
    assert [await sub_a.get() for _ in range(2)] == [(A, msg(2)), (C, msg(1))]
    stats = bus.stats()
    assert (stats.published, stats.delivered, stats.subscriptions) == (5, 5, 2)
    await bus.close()


async def test_get_waits_for_a_publish() -> None:
    bus = InProcessBus()
    sub = await bus.subscribe([A])
    waiter = asyncio.create_task(sub.get())
    await asyncio.sleep(0)
    assert not waiter.done()
    await bus.publish(A, msg(5))
    assert await asyncio.wait_for(waiter, 5) == (A, msg(5))
    await bus.close()


async def test_full_queue_drops_ephemeral_and_coalesces_durable() -> None:
    bus = InProcessBus()
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
    # Control notifications are never lost.
    await bus.publish(B, Notification(kind=NotificationKind.CLOSED))
    # RESYNC markers first (A's stale hints are discarded), then what is left.
    got = [await slow.get() for _ in range(3)]
    assert got == [
        (A, Notification(kind=NotificationKind.RESYNC)),
        (B, Notification(kind=NotificationKind.RESYNC)),
        (B, Notification(kind=NotificationKind.CLOSED)),
    ]
    assert slow.queued == 0
    assert [(await fast.get())[1].seq for _ in range(7)] == [1, 2, 3, 0, 4, 5, 6]
    stats = bus.stats()
    assert (stats.dropped, stats.coalesced) == (1, 4)
    await bus.close()


async def test_close_ends_iteration_and_unsubscribes() -> None:
    bus = InProcessBus()
    sub = await bus.subscribe([A])
    await bus.publish(A, msg(1))
    seen: list[tuple[bytes, Notification]] = []

    async def consume() -> None:
        async for item in sub:
            seen.append(item)

    task = asyncio.create_task(consume())
    await asyncio.sleep(0.01)
    await sub.close()
    await asyncio.wait_for(task, 5)
    assert seen == [(A, msg(1))]
    assert await bus.publish(A, msg(2)) == 0
    with pytest.raises(TransportError):
        await sub.add(B)
    async with await bus.subscribe([B]) as scoped:
        assert bus.subscribers(B) == 1
    assert scoped.closed and bus.subscribers(B) == 0
    await bus.close()
    with pytest.raises(TransportError):
        await bus.subscribe([A])


async def test_rejects_bad_arguments() -> None:
    bus = InProcessBus()
    with pytest.raises(ValueError):
        await bus.subscribe([b"short"])
    with pytest.raises(ValueError):
        await bus.subscribe([A], max_queue=0)
    with pytest.raises(ValueError):
        InProcessBus(max_queue=0)


def test_notification_codec_round_trips_and_rejects_junk() -> None:
    n = Notification(kind=NotificationKind.MESSAGE, seq=2**40, payload=b"blob")
    data = encode_notification(A, n)
    assert data.hex() == "0101" + A.hex() + "0000010000000000" + "00000004" + b"blob".hex()
    assert decode_notification(data) == (A, n)
    with pytest.raises(DecodeError):
        decode_notification(data + b"\x00")
    with pytest.raises(DecodeError):
        decode_notification(data[:-1])
    with pytest.raises(UnknownVersion):
        decode_notification(b"\x02" + data[1:])
    with pytest.raises(DecodeError):
        decode_notification(data[:1] + b"\x09" + data[2:])
    assert repr(n) == "Notification(kind=<NotificationKind.MESSAGE: 1>, seq=1099511627776)"


async def test_resync_request_is_local_and_comes_first() -> None:
    bus = InProcessBus()
    sub = await bus.subscribe([A, B])
    other = await bus.subscribe([A])
    await bus.publish(A, msg(1))
    await bus.publish(B, msg(7))
    sub.resync(A)
    sub.resync(C)  # not followed: ignored
    waiter = asyncio.create_task(other.get())
    assert await sub.get() == (A, Notification(kind=NotificationKind.RESYNC))
    assert await sub.get() == (B, msg(7))  # A's stale hint was discarded
    assert sub.queued == 0 and sub.coalesced == 0
    assert await asyncio.wait_for(waiter, 5) == (A, msg(1))  # the other one is untouched
    assert other.queued == 0
    # A consumer blocked in get() wakes up for a resync request.
    blocked = asyncio.create_task(sub.get())
    await asyncio.sleep(0)
    sub.resync(B)
    assert await asyncio.wait_for(blocked, 5) == (B, Notification(kind=NotificationKind.RESYNC))
    await sub.close()
    sub.resync(A)  # closed: no-op
    await bus.close()


async def test_a_parked_consumer_takes_notifications_directly() -> None:
    """``set_direct``: offered first while the consumer waits on an empty queue with no
    RESYNC pending; queued as usual when it declines or when the consumer is busy."""
    bus = InProcessBus()
    sub = await bus.subscribe([A, B])
    seen: list[tuple[bytes, Notification]] = []

    def direct(mailbox_id: bytes, n: Notification) -> bool:
        seen.append((mailbox_id, n))
        return n.seq != 99  # declines seq 99

    sub.set_direct(direct)
    assert await bus.publish(A, msg(1)) == 1  # nobody waits in get(): queued
    assert seen == [] and await sub.get() == (A, msg(1))
    waiter = asyncio.create_task(sub.get())
    await asyncio.sleep(0)
    assert await bus.publish(A, msg(2)) == 1  # parked: handled here, the consumer sleeps on
    assert seen == [(A, msg(2))] and sub.queued == 0
    await asyncio.sleep(0)
    assert not waiter.done()
    assert await bus.publish(B, msg(99)) == 1  # declined: queued and woken
    assert await asyncio.wait_for(waiter, 5) == (B, msg(99))
    waiter = asyncio.create_task(sub.get())
    await asyncio.sleep(0)
    sub.resync(A)  # a RESYNC pending: everything waits behind it
    assert await bus.publish(B, msg(3)) == 1
    assert seen == [(A, msg(2)), (B, msg(99))]
    assert await asyncio.wait_for(waiter, 5) == (A, Notification(kind=NotificationKind.RESYNC))
    assert await sub.get() == (B, msg(3))
    sub.set_direct(None)
    await bus.close()


async def test_a_bad_mailbox_id_leaves_no_subscription_behind() -> None:
    bus = InProcessBus()
    with pytest.raises(ValueError):
        await bus.subscribe([A, b"short"])
    assert bus.stats().subscriptions == 0 and bus.subscribers(A) == 0
    await bus.close()


async def test_publish_many_is_publish_in_order() -> None:
    bus = InProcessBus()
    sub = await bus.subscribe([A, B])
    assert await bus.publish_many([(A, msg(1)), (C, msg(1)), (B, msg(1)), (A, msg(2))]) == [
        1, 0, 1, 1]
    assert [await sub.get() for _ in range(3)] == [(A, msg(1)), (B, msg(1)), (A, msg(2))]
    assert bus.stats().published == 4
    await bus.close()
