"""The pipeline's pure parts: hot-path encoders, the resolver table, routes, node caches."""

from __future__ import annotations

import asyncio
import dataclasses
import os
from collections.abc import Callable

import pytest
from aiohttp import web

from protocol import (
    FRAME_TYPES,
    Ack,
    Delivery,
    Direction,
    EphemeralDelivery,
    Error,
    ErrorCode,
    Pong,
    Send,
    SendEphemeral,
    Sent,
    decode_frame,
)
from relay.bus import InProcessBus
from relay.config import RelayConfig
from relay.credits import BucketMap
from relay.handlers_auth import require_auth
from relay.handlers_message import (
    check_capability,
    persist,
    reply_sent,
    route_durable,
    take_credits,
    validate_send,
)
from relay.metrics import NullMetrics
from relay.node import CapabilityCache, DedupWindow, Node
from relay.pipeline import (
    FORK,
    DeliveryEncoder,
    Route,
    delivery_bytes,
    ephemeral_delivery_bytes,
    error_bytes,
    sent_bytes,
)
from relay.ports import (
    Notification,
    NotificationKind,
    Recipient,
    RecipientSeq,
    unchecked_notification,
    unchecked_recipient,
    unchecked_recipient_seq,
)
from relay.resolver import ANONYMOUS, RESOLVER


@pytest.mark.parametrize("rid", [1, 127, 128, 65535, 2**32 - 1])
def test_sent_bytes_are_the_canonical_encoding(rid: int) -> None:
    assert sent_bytes(rid) == Sent(request_id=rid).encode()


@pytest.mark.parametrize("seq", [1, 2**31, 2**63 - 1])
@pytest.mark.parametrize("size", [1, 255, 256, 65536])
def test_delivery_bytes_are_the_canonical_encoding(seq: int, size: int) -> None:
    mailbox, blob, received = os.urandom(16), os.urandom(size), 1_700_000_000_123
    data = delivery_bytes(mailbox, seq, received, blob)
    assert data == Delivery(mailbox_id=mailbox, seq=seq, received_at_ms=received,
                            blob=blob).encode()
    assert decode_frame(data, direction=Direction.TO_CLIENT) == Delivery(
        mailbox_id=mailbox, seq=seq, received_at_ms=received, blob=blob)


@pytest.mark.parametrize("size", [1, 255, 256, 65536])
def test_a_sends_delivery_frames_are_each_the_canonical_encoding(size: int) -> None:
    """The fan-out encodes everything but mailbox id and seq once per send."""
    blob, received = os.urandom(size), 1_700_000_000_123
    encoder = DeliveryEncoder(received, blob)
    for seq in (1, 127, 128, 255, 256, 65535, 65536, 2**32, 2**63 - 1):
        mailbox = os.urandom(16)
        assert encoder.frame(mailbox, seq) == delivery_bytes(mailbox, seq, received, blob)
        assert encoder.frame(mailbox, seq) == Delivery(
            mailbox_id=mailbox, seq=seq, received_at_ms=received, blob=blob).encode()


def test_unchecked_records_equal_the_checked_ones() -> None:
    """The hot path's constructors skip only the checks (values validated upstream)."""
    mailbox, digest = os.urandom(16), os.urandom(32)
    pairs = [
        (unchecked_recipient(mailbox, digest),
         Recipient(mailbox_id=mailbox, capability_hash=digest)),
        (unchecked_recipient_seq(mailbox, 7, True),
         RecipientSeq(mailbox_id=mailbox, seq=7, duplicate=True)),
        (unchecked_notification(NotificationKind.MESSAGE, 7, b"frame"),
         Notification(kind=NotificationKind.MESSAGE, seq=7, payload=b"frame")),
    ]
    for fast, checked in pairs:
        assert fast == checked and hash(fast) == hash(checked) and repr(fast) == repr(checked)
        with pytest.raises(dataclasses.FrozenInstanceError):
            setattr(fast, dataclasses.fields(fast)[0].name, None)


def test_ephemeral_and_error_bytes() -> None:
    mailbox, blob = os.urandom(16), os.urandom(300)
    assert ephemeral_delivery_bytes(mailbox, 5, blob) == EphemeralDelivery(
        mailbox_id=mailbox, received_at_ms=5, blob=blob).encode()
    long = "é" * 300  # cut to the protocol's 256 bytes without splitting a character
    err = decode_frame(error_bytes(7, ErrorCode.RATE_LIMITED, retry_after_ms=9, message=long))
    assert isinstance(err, Error) and err.code == ErrorCode.RATE_LIMITED
    assert err.retry_after_ms == 9 and err.message is not None
    assert len(err.message.encode()) <= 256


def test_every_frame_a_client_may_send_has_a_route() -> None:
    to_relay = {cls for cls in FRAME_TYPES.values()
                if cls.DIRECTION in (Direction.TO_RELAY, Direction.BOTH)}
    assert to_relay == set(RESOLVER)
    for cls, route in RESOLVER.items():
        assert route.name == cls.__name__ and route.inline + route.forked


def test_the_durable_send_route_follows_the_design() -> None:
    route = RESOLVER[Send]
    assert route.stages == (validate_send, check_capability, take_credits, FORK,
                            persist, reply_sent, route_durable)
    assert not RESOLVER[SendEphemeral].forked  # never persisted: nothing to fork
    assert require_auth in RESOLVER[Ack].inline


def test_anonymous_frames_are_exactly_the_protocols_list() -> None:
    names = {cls.__name__ for cls in ANONYMOUS}
    assert names == {"Connect", "Auth", "Register", "Ping", "Pong", "Error", "Send",
                     "SendEphemeral", "FetchBundle", "LookupUsername", "RequestBlobDownload"}
    assert Pong in ANONYMOUS  # answers to our pings (we send none) are ignored


def test_route_construction_rules() -> None:
    with pytest.raises(ValueError, match="more than one FORK"):
        Route.of("x", validate_send, FORK, persist, FORK, reply_sent)
    with pytest.raises(ValueError, match="no stages"):
        Route.of("x")
    route = Route.of("x", validate_send, FORK, persist)
    assert (route.inline, route.forked) == ((validate_send,), (persist,))
    with pytest.raises(ValueError, match="must follow FORK"):
        Route.of("x", persist, FORK, reply_sent)


def test_capability_cache() -> None:
    cache = CapabilityCache(max_entries=2, ttl_ms=1000)
    a, b, c, h = os.urandom(16), os.urandom(16), os.urandom(16), os.urandom(32)
    assert cache.check(a, h, 0) is None
    cache.put(a, h, 0)
    assert cache.check(a, h, 0) is True
    assert cache.check(a, os.urandom(32), 0) is False
    cache.retire(a, 100)
    assert cache.check(a, h, 99) is True and cache.check(a, h, 100) is False
    cache.put(b, h, 0)
    cache.put(c, h, 0)  # evicts the oldest
    assert len(cache) == 2 and cache.check(a, h, 0) is None
    cache.forget(b)
    assert cache.check(b, h, 0) is None
    # Trusted for the TTL only: then the store is asked again.
    assert cache.check(c, h, 999) is True
    assert cache.check(c, h, 1000) is None and len(cache) == 0


def test_dedup_window() -> None:
    window = DedupWindow(1000, max_entries=3)
    k = [os.urandom(16) for _ in range(5)]
    assert window.first_time(k[0], 0) and not window.first_time(k[0], 999)
    assert window.first_time(k[0], 1000)  # the window passed
    for key in k[1:4]:
        assert window.first_time(key, 1001)
    assert window.first_time(k[0], 1002)  # evicted by the bound, not by time


class _QueuedStore:
    """Just enough of a store for the backpressure probe."""

    def __init__(self) -> None:
        self.pending_writes = 0


def _node(store: object, *, config: RelayConfig | None = None, bus: object = None,
          push: object = None, clock: list[int] | None = None) -> Node:
    """A node around *store* (and *bus*, *push*), its wall clock ``clock[0]``."""
    ms = clock if clock is not None else [0]
    return Node(web.Application(), config=config or RelayConfig(), relay_id=bytes(16),
                store=store, bus=bus or InProcessBus(), push=push,  # type: ignore[arg-type]
                metrics=NullMetrics(), clock_ms=lambda: ms[0], monotonic=lambda: 0.0,
                mailbox_credits=BucketMap(10, 1, max_buckets=10))


async def test_readers_pause_while_the_store_lags() -> None:
    store = _QueuedStore()
    node = _node(store, config=RelayConfig(max_pending_writes=100))
    assert not node.store_lagging()
    store.pending_writes = 101
    assert node.store_lagging() and node.stalls == 1
    waiter = asyncio.create_task(node.wait_for_store())
    await asyncio.sleep(0.01)
    store.pending_writes = 60  # under the mark, not yet under half of it
    await asyncio.sleep(0.01)
    assert not waiter.done() and node.store_lagging()
    store.pending_writes = 50
    await asyncio.wait_for(waiter, 1)
    assert not node.store_lagging() and node.stalls == 1
    await node.close()


class _InvalidatingBus(InProcessBus):
    """Records the node's invalidation handler, as a cross-node bus would call it."""

    def on_invalidate(self, handler: Callable[[bytes | None], None]) -> None:
        self.handler = handler


async def test_other_nodes_invalidations_clear_the_caches() -> None:
    bus = _InvalidatingBus()
    node = _node(_QueuedStore(), bus=bus)
    one, two = b"\x01" * 16, b"\x02" * 16
    for mailbox_id in (one, two):
        node.capabilities.put(mailbox_id, bytes(32), 0)
        node.set_push_url(mailbox_id, "https://push.example/x")
    bus.handler(one)  # another node changed mailbox one
    assert node.capabilities.check(one, bytes(32), 0) is None
    assert node.capabilities.check(two, bytes(32), 0) is True
    assert list(node._push_urls) == [two]
    bus.handler(None)  # the bus was cut off: anything may have changed
    assert node.capabilities.check(two, bytes(32), 0) is None
    assert len(node.capabilities) == 0 and not node._push_urls


async def test_a_failed_wake_up_costs_that_wake_up_only() -> None:
    """Every send of the batch already has its Sent: a store error while looking up one
    offline owner's push URL must not fail the batch or skip the other wake-ups."""
    from types import SimpleNamespace

    from pigeon_crypto.errors import StoreError

    woken: list[bytes] = []

    async def wake(mailbox_id: bytes) -> None:
        if mailbox_id == b"\x01" * 16:
            raise StoreError("down")
        woken.append(mailbox_id)

    node = SimpleNamespace(bus=InProcessBus(), wake=wake)  # nobody subscribed: all wake
    ctxs = [SimpleNamespace(
        conn=SimpleNamespace(node=node), frame=SimpleNamespace(blob=b"x" * 10),
        result=SimpleNamespace(received_at_ms=1, accepted=[
            SimpleNamespace(mailbox_id=bytes([i]) * 16, seq=1, duplicate=False)
            for i in ids]))
        for ids in ((1, 2), (3,))]
    await route_durable.fn(ctxs)  # type: ignore[arg-type]
    assert woken == [b"\x02" * 16, b"\x03" * 16]


async def test_push_urls_are_asked_again_after_the_ttl() -> None:
    from types import SimpleNamespace

    from relay.node import CAPABILITY_TTL_MS

    urls = ["https://push.example/old"]
    reads: list[bytes] = []

    class Store(_QueuedStore):
        async def get_mailbox(self, mailbox_id: bytes) -> object:
            reads.append(mailbox_id)
            return SimpleNamespace(push_url=urls[0])

    woken: list[str] = []
    clock = [0]
    node = _node(Store(), push=SimpleNamespace(wake=woken.append), clock=clock)
    box = b"\x07" * 16
    await node.wake(box)
    urls[0] = "https://push.example/new"  # changed through another node; its notice lost
    clock[0] = CAPABILITY_TTL_MS - 1
    await node.wake(box)
    clock[0] = CAPABILITY_TTL_MS
    await node.wake(box)
    assert woken == ["https://push.example/old"] * 2 + ["https://push.example/new"]
    assert len(reads) == 2


async def test_an_ack_rechecks_the_identity_a_minute_after_the_last_read() -> None:
    """A session's key is read from the store at most a minute apart for acks: within
    the minute no read; after it, a key rotated away refuses the ack and closes the
    session."""
    from types import SimpleNamespace

    from relay.connection import Connection
    from relay.node import IDENTITY_RECHECK_MS
    from relay.pipeline import Refuse

    current = [b"old key"]
    reads: list[bytes] = []

    class Store(_QueuedStore):
        async def get_account(self, account_id: bytes) -> object:
            reads.append(account_id)
            return SimpleNamespace(identity_key=current[0])

    closed: list[bytes] = []

    async def close(*, code: int, message: bytes) -> None:
        closed.append(message)

    clock = [1_000]
    node = _node(Store(), clock=clock)
    ws = SimpleNamespace(compress=False, closed=False, close=close)
    conn = Connection(node, ws, "127.0.0.1")  # type: ignore[arg-type]
    conn.authenticate(b"\x01" * 16, b"old key")
    clock[0] += IDENTITY_RECHECK_MS - 1
    assert conn.identity_recent(IDENTITY_RECHECK_MS) is None and reads == []
    clock[0] += 1
    check = conn.identity_recent(IDENTITY_RECHECK_MS)
    assert check is not None
    await check  # still the account's key: confirmed, and the minute starts again
    assert len(reads) == 1 and conn.identity_recent(IDENTITY_RECHECK_MS) is None
    current[0] = b"new key"  # rotated on a node whose notice never came
    clock[0] += IDENTITY_RECHECK_MS
    check = conn.identity_recent(IDENTITY_RECHECK_MS)
    assert check is not None
    with pytest.raises(Refuse) as info:
        await check
    assert info.value.code is ErrorCode.AUTH_FAILED
    await asyncio.sleep(0.01)
    assert closed == [b"identity rotated"]
    await node.close()
