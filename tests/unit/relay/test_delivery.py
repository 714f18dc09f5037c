"""The delivery pump's idle path (``relay.delivery.DeliveryPump._direct``, §14.5).

A live delivery published while the pump waits on an empty queue is queued on the
socket in the publisher's turn, in order and counted in the window, without a wake-up
of the pump's task; a gap, a peer that stopped reading and a closed socket go to the
pump as before, which reads the store or waits.
"""

from __future__ import annotations

import asyncio
from collections.abc import Callable
from types import SimpleNamespace
from typing import Any

from protocol import Delivery, Direction, MessagesExpired, decode_frame
from relay.bus import InProcessBus
from relay.config import RelayConfig
from relay.delivery import DeliveryPump
from relay.metrics import NullMetrics
from relay.pipeline import delivery_bytes
from relay.ports import Notification, NotificationKind, Recipient, StoredMessage
from relay.store_memory import MemoryStore

A = b"\xaa" * 16
T = 1_700_000_000_000


class _Sink:
    def __init__(self) -> None:
        self.frames: list[bytes] = []
        self.paused = False

    def send_nowait(self, data: bytes) -> bool:
        if self.paused:
            return False
        self.frames.append(data)
        return True


class _Store:
    def __init__(self) -> None:
        self.stored: dict[int, bytes] = {}
        self.fetches = 0

    async def get_expiry_notice(self, mailbox_id: bytes) -> None:
        return None

    async def fetch(self, mailbox_id: bytes, *, after_seq: int, limit: int, now_ms: int
                    ) -> list[StoredMessage]:
        self.fetches += 1
        return [StoredMessage(mailbox_id=mailbox_id, seq=s, received_at_ms=T,
                              expires_at_ms=T + 1, blob=b)
                for s, b in sorted(self.stored.items()) if s > after_seq][:limit]


class _Conn:
    """What the pump uses of a connection: its node, socket state, sink and send."""

    def __init__(self, bus: InProcessBus, window: int) -> None:
        self.store = _Store()
        self.node = SimpleNamespace(bus=bus, store=self.store, subscribers={},
                                    config=RelayConfig(delivery_window=window),
                                    clock_ms=lambda: T)
        self.ws = SimpleNamespace(closed=False)
        self.sink = _Sink()
        self.sent: list[bytes] = []  # through the pump's task (awaited send)

    async def send(self, data: bytes) -> None:
        self.sent.append(data)


def frame(seq: int) -> bytes:
    return delivery_bytes(A, seq, T, b"blob %d" % seq)


async def publish(bus: InProcessBus, seq: int) -> int:
    return await bus.publish(A, Notification(kind=NotificationKind.MESSAGE, seq=seq,
                                             payload=frame(seq)))


async def settle() -> None:
    for _ in range(5):
        await asyncio.sleep(0)


async def test_live_deliveries_to_an_idle_pump_are_written_in_the_publishers_turn() -> None:
    bus = InProcessBus()
    conn = _Conn(bus, window=3)
    pump: Any = await DeliveryPump.create(conn)  # type: ignore[arg-type]
    await pump.subscribe([A])
    pump.release([A])
    await settle()  # the backlog read: nothing stored yet
    assert conn.store.fetches == 1
    assert await publish(bus, 1) == 1
    assert conn.sink.frames == [frame(1)]  # before any other task ran
    assert await publish(bus, 1) == 1  # already written: skipped, as the pump would
    assert await publish(bus, 2) == 1
    assert conn.sink.frames == [frame(1), frame(2)] and conn.sent == []
    # A gap (seq 3 unseen): left to the pump, which reads the store after seq 2.
    conn.store.stored = {3: b"blob 3", 4: b"blob 4"}
    assert await publish(bus, 4) == 1
    assert conn.sink.frames == [frame(1), frame(2)]
    await settle()
    assert conn.sent == [frame(3)] and conn.store.fetches == 2  # the window (3) is full
    assert await publish(bus, 5) == 1  # full window: ignored until acks
    await settle()
    assert conn.sent == [frame(3)] and conn.sink.frames == [frame(1), frame(2)]
    pump.on_ack(A, 3, ())
    await settle()
    assert conn.sent == [frame(3), frame(4)]
    await pump.close()
    await bus.close()


async def test_a_peer_that_stopped_reading_is_left_to_the_pump() -> None:
    bus = InProcessBus()
    conn = _Conn(bus, window=100)
    pump: Any = await DeliveryPump.create(conn)  # type: ignore[arg-type]
    await pump.subscribe([A])
    pump.release([A])
    await settle()
    conn.sink.paused = True
    assert await publish(bus, 1) == 1
    assert conn.sink.frames == []
    await settle()
    assert conn.sent == [frame(1)]  # through the pump's awaited send (it waits for drain)
    conn.sink.paused = False
    conn.ws.closed = True
    assert await publish(bus, 2) == 1
    await settle()
    assert conn.sink.frames == [] and conn.sent == [frame(1), frame(2)]
    await pump.close()
    await bus.close()


async def _subscribed_to_a() -> tuple[InProcessBus, _Conn, Any]:
    """A pump whose connection subscribed A, as the node records it, past the backlog."""
    bus = InProcessBus()
    conn = _Conn(bus, window=100)
    pump: Any = await DeliveryPump.create(conn)  # type: ignore[arg-type]
    conn.node.subscribers[A] = conn
    await pump.subscribe([A])
    pump.release([A])
    await settle()
    return bus, conn, pump


async def test_a_late_drop_spares_a_mailbox_subscribed_again_in_between() -> None:
    """Another node took A (the node forgot this connection as its subscriber and left
    the drop to a task); the connection subscribed A again before the task ran: the
    drop leaves the fresh cursor alone, and A is still delivered here."""
    bus, conn, pump = await _subscribed_to_a()
    subscribers = conn.node.subscribers
    del subscribers[A]  # the bus said another node's connection subscribed A later
    late = pump.drop_if_moved(A)
    subscribers[A] = conn  # ... and this connection subscribed it again
    await pump.subscribe([A])
    pump.release([A])
    await late
    assert A in pump and subscribers[A] is conn
    await settle()
    assert await publish(bus, 1) == 1
    assert conn.sink.frames == [frame(1)]
    # Moved for good: the drop removes it.
    del subscribers[A]
    await pump.drop_if_moved(A)
    assert A not in pump and await publish(bus, 2) == 0
    await pump.close()
    await bus.close()


async def test_a_drop_waiting_on_the_bus_spares_a_subscription_made_meanwhile() -> None:
    """The bus's remove awaits (a remote bus); the connection subscribes A again before
    it returns: the node still counts the connection as A's subscriber, the bus
    subscription still holds A (its add ran after the remove) and A is delivered."""
    bus, conn, pump = await _subscribed_to_a()
    subscribers = conn.node.subscribers
    sub = pump._sub
    remove, gate = sub.remove, asyncio.Event()

    async def slow_remove(mailbox_id: bytes) -> None:
        await gate.wait()
        await remove(mailbox_id)

    sub.remove = slow_remove
    dropping = asyncio.ensure_future(pump.drop(A))
    await settle()
    again = asyncio.ensure_future(pump.subscribe([A]))
    await settle()
    gate.set()
    await dropping
    await again
    pump.release([A])
    assert A in pump and subscribers[A] is conn
    await settle()
    assert await publish(bus, 1) == 1
    assert conn.sink.frames == [frame(1)]
    await pump.close()
    await bus.close()


class _StoreConn:
    """A connection around a real (memory) store; frames decoded as they are sent."""

    def __init__(self, bus: InProcessBus, store: MemoryStore, now_ms: int) -> None:
        self.node = SimpleNamespace(bus=bus, store=store, subscribers={},
                                    config=RelayConfig(delivery_window=100),
                                    clock_ms=lambda: now_ms, metrics=NullMetrics())
        self.ws = SimpleNamespace(closed=False)
        self.sink = _Sink()
        self.sink.paused = True  # everything through the pump's awaited send
        self.got: list[tuple[str, int, int]] = []
        self.on_notice: Callable[[], None] | None = None
        """Called as the ``MessagesExpired`` is written (the pump waits in that write)."""

    async def send(self, data: bytes) -> None:
        if self.ws.closed:  # as Connection.send: dropped on a closed socket
            return
        f = decode_frame(data, direction=Direction.TO_CLIENT)
        if isinstance(f, MessagesExpired):
            self.got.append(("expired", f.count, f.up_to_seq))
            if self.on_notice is not None:
                self.on_notice()
        elif isinstance(f, Delivery):
            self.got.append(("delivery", f.seq, 0))


async def _mailbox_with_an_unswept_expiry() -> MemoryStore:
    store = MemoryStore()
    await store.create_account(account_id=bytes(16), identity_key=b"ik", now_ms=T)
    capability_hash = bytes(32)
    await store.create_mailbox(account_id=bytes(16), mailbox_id=A,
                               capability_hash=capability_hash, now_ms=T)
    for n, ttl in enumerate((1_000, 10**9)):
        await store.append(recipients=[Recipient(mailbox_id=A, capability_hash=capability_hash)],
                           client_msg_id=bytes([n + 1]) * 16, blob=b"m%d" % n, now_ms=T,
                           ttl_ms=ttl)
    return store


Hook = Callable[[_StoreConn, Any], None]
"""Interference with a catch-up: called with the connection and its pump."""


def _closed(conn: _StoreConn, pump: Any) -> None:
    conn.ws.closed = True  # the peer went away


def _dropped(conn: _StoreConn, pump: Any) -> None:
    pump._cursors.pop(A)  # unsubscribed, or taken by another connection


async def _catch_up(store: MemoryStore, *, after_sweep: Hook | None = None,
                    on_notice: Hook | None = None) -> _StoreConn:
    """A new subscription's catch-up at T + 5 s (seq 1 expired; no sweep ran)."""
    bus = InProcessBus()
    conn = _StoreConn(bus, store, T + 5_000)
    pump: Any = await DeliveryPump.create(conn)  # type: ignore[arg-type]
    if on_notice is not None:
        conn.on_notice = lambda: on_notice(conn, pump)
    sweep = store.expire_mailbox

    async def sweep_then(mailbox_id: bytes, *, now_ms: int) -> int:
        n = await sweep(mailbox_id, now_ms=now_ms)
        if after_sweep is not None:
            after_sweep(conn, pump)
        return n

    store.expire_mailbox = sweep_then  # type: ignore[method-assign]
    try:
        await pump.subscribe([A])
        pump.release([A])
        await settle()
    finally:
        del store.expire_mailbox
        await pump.close()
        await bus.close()
    return conn


async def test_an_unswept_expiry_is_reported_before_what_follows_and_never_lost() -> None:
    store = await _mailbox_with_an_unswept_expiry()
    assert (await _catch_up(store)).got == [("expired", 1, 1), ("delivery", 2, 0)]
    assert await store.get_expiry_notice(A) is None  # cleared once written
    for interference in (_closed, _dropped):
        store = await _mailbox_with_an_unswept_expiry()
        assert (await _catch_up(store, after_sweep=interference)).got == []
        # Swept into the stored notice: the next subscription hears of it first.
        assert (await _catch_up(store)).got == [("expired", 1, 1), ("delivery", 2, 0)]
    # Dropped while the notice was being written: nothing more of that mailbox goes out.
    store = await _mailbox_with_an_unswept_expiry()
    assert (await _catch_up(store, on_notice=_dropped)).got == [("expired", 1, 1)]
