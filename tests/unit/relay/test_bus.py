"""The in-process bus beyond the Bus contract (tests/unit/relay/test_bus_contract.py, which
runs routing, waiting, bounded queues and closing on it too): its own arguments, the
codec, RESYNC requests, the direct path and publish_many."""

from __future__ import annotations

import asyncio

import pytest

from pigeon_crypto.errors import DecodeError, UnknownVersion
from relay.bus import InProcessBus, decode_notification, encode_notification
from relay.ports import Notification, NotificationKind

A = b"\xaa" * 16
B = b"\xbb" * 16
C = b"\xcc" * 16


def msg(seq: int) -> Notification:
    return Notification(kind=NotificationKind.MESSAGE, seq=seq)


def eph(payload: bytes) -> Notification:
    return Notification(kind=NotificationKind.EPHEMERAL, payload=payload)


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
