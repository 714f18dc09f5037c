"""RedisBus behaviour beyond the Bus contract: confirmed SUBSCRIBEs, oversized payloads,
invalidations, garbage on a channel, connection loss and reconnection, close.

Tests that stop the server or pause every client run their own throwaway
``redis-server`` on a free loopback port (skipped when it is not installed); the others
use the shared test server with a fresh prefix each (``tests.services``).
"""

from __future__ import annotations

import asyncio
import hmac
import logging
import shutil
import socket
import subprocess
import sys
import time
from collections.abc import AsyncIterator, Iterator
from pathlib import Path

import pytest
from redis.asyncio import Redis
from redis.exceptions import ConnectionError as RedisConnectionError

from pigeon_crypto.errors import (
    DecodeError,
    InvalidSignature,
    TransportError,
    UnknownVersion,
    VersionTooOld,
)
from relay._redis_peers import Peers
from relay._redis_wire import MAX_CLOCK_SKEW_MS, Tagger, bus_key, encode_heartbeat, head
from relay.bus import encode_notification
from relay.bus_redis import REMOTE_PAYLOAD_MAX, RedisBus
from tests.services import redis_url, unique_name
from tests.unit.relay.test_bus_contract import (
    CLOSED,
    KEY,
    MARKER,
    RESYNC,
    WAIT_S,
    A,
    B,
    C,
    D,
    barrier,
    eph,
    eventually,
    get,
    msg,
)


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port: int = s.getsockname()[1]
        return port


class ThrowawayRedis:
    """A ``redis-server`` of this test's own, stopped and restarted at will."""

    def __init__(self) -> None:
        self.port = _free_port()
        self.url = f"redis://127.0.0.1:{self.port}/0"
        self._proc: subprocess.Popen[bytes] | None = None

    def start(self) -> None:
        self._proc = subprocess.Popen(
            ["redis-server", "--port", str(self.port), "--bind", "127.0.0.1",
             "--save", "", "--appendonly", "no"],
            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        deadline = time.monotonic() + WAIT_S
        while True:
            try:
                with socket.create_connection(("127.0.0.1", self.port), timeout=0.2):
                    return
            except OSError:
                if time.monotonic() > deadline or self._proc.poll() is not None:
                    self.stop()
                    pytest.fail("the throwaway redis-server did not start")
                time.sleep(0.02)

    def stop(self) -> None:
        proc, self._proc = self._proc, None
        if proc is not None:
            proc.kill()
            proc.wait(WAIT_S)


@pytest.fixture
def own_redis() -> Iterator[ThrowawayRedis]:
    if shutil.which("redis-server") is None:
        pytest.skip("redis-server is not on PATH")
    server = ThrowawayRedis()
    server.start()
    yield server
    server.stop()


@pytest.fixture
async def shared() -> AsyncIterator[tuple[str, str]]:
    """The shared test server's URL and a fresh prefix."""
    yield redis_url(), unique_name("bus")


@pytest.fixture
async def nodes(shared: tuple[str, str]) -> AsyncIterator[tuple[RedisBus, RedisBus]]:
    url, prefix = shared
    one = await RedisBus.open(url, prefix=prefix, key=KEY)
    two = await RedisBus.open(url, prefix=prefix, key=KEY)
    yield one, two
    await one.close()
    await two.close()


async def _pubsub_client_id(raw: Redis, bus: RedisBus, prefix: str) -> str | None:
    name = f"{prefix}:bus:{bus.origin.hex()}"
    for client in await raw.client_list():
        if client.get("name") == name:
            return str(client["id"])
    return None


# --------------------------------------------------------------------------- subscribing


async def test_add_returns_once_the_subscribe_is_confirmed(own_redis: ThrowawayRedis) -> None:
    one = await RedisBus.open(own_redis.url, prefix="p", key=KEY)
    two = await RedisBus.open(own_redis.url, prefix="p", key=KEY)
    raw = Redis.from_url(own_redis.url)
    try:
        sub = await two.subscribe()
        await raw.execute_command("CLIENT", "PAUSE", "400", "ALL")  # Redis answers late
        started = time.monotonic()
        await asyncio.wait_for(sub.add(A), WAIT_S)
        assert time.monotonic() - started >= 0.3  # add waited for the confirmation
        assert await one.publish(A, msg(1)) == 1  # so the other node's publish counts it
        assert await get(sub) == (A, msg(1))
        # subscribe() with ids waits for all of them.
        many = [bytes([i]) * 16 for i in range(1, 41)]
        await raw.execute_command("CLIENT", "PAUSE", "300", "ALL")
        started = time.monotonic()
        multi = await asyncio.wait_for(two.subscribe(many), WAIT_S)
        assert time.monotonic() - started >= 0.2
        assert two.stats().channels == 41
        assert await asyncio.gather(*(one.publish(m, msg(1)) for m in many)) == [1] * 40
        assert {(await get(multi))[0] for _ in many} == set(many)
    finally:
        await raw.aclose()
        await one.close()
        await two.close()


async def _subscribe_calls(raw: Redis) -> int:
    stats = await raw.info("commandstats")
    return int(stats.get("cmdstat_subscribe", {}).get("calls", 0))


async def test_add_many_is_one_subscribe(own_redis: ThrowawayRedis) -> None:
    """A login that follows many mailboxes waits for one SUBSCRIBE, not one per mailbox
    (each is a round trip to Redis)."""
    one = await RedisBus.open(own_redis.url, prefix="p", key=KEY)
    two = await RedisBus.open(own_redis.url, prefix="p", key=KEY)
    raw = Redis.from_url(own_redis.url)
    try:
        sub = await two.subscribe()
        many = [bytes([i]) * 16 for i in range(1, 61)]
        before = await _subscribe_calls(raw)
        await sub.add_many(many)
        assert await _subscribe_calls(raw) - before == 1
        assert two.stats().channels == 60 and sub.mailbox_ids == frozenset(many)
        assert await one.publish_many([(m, msg(1)) for m in many]) == [1] * 60
        assert {(await get(sub))[0] for _ in many} == set(many)
        # Following them again (or some of them) subscribes nothing more.
        await sub.add_many(many[:10])
        assert await _subscribe_calls(raw) - before == 1
    finally:
        await raw.aclose()
        await one.close()
        await two.close()


async def test_a_publish_right_after_add_is_received(nodes: tuple[RedisBus, RedisBus]) -> None:
    one, two = nodes
    sub = await two.subscribe()
    for i in range(1, 31):
        mailbox_id = bytes([i]) * 16
        await sub.add(mailbox_id)
        assert await one.publish(mailbox_id, msg(i)) == 1
        assert await get(sub) == (mailbox_id, msg(i))


async def test_a_refused_subscribe_leaves_nothing_behind(nodes: tuple[RedisBus, RedisBus]) -> None:
    one, _ = nodes
    with pytest.raises(ValueError):
        await one.subscribe([A, b"short"])
    assert one.stats().subscriptions == 0 and one.stats().channels == 0
    assert one.subscribers(A) == 0


# --------------------------------------------------------------------------- publishing


async def test_publishes_of_one_iteration_share_a_round_trip(
    nodes: tuple[RedisBus, RedisBus], monkeypatch: pytest.MonkeyPatch,
) -> None:
    one, two = nodes
    batches: list[int] = []
    send = one._publisher._send

    async def recording(batch: list[tuple[bytes, bytes, asyncio.Future[int]]]) -> list[int]:
        hints = sum(channel != one._hb for channel, _, _ in batch)  # a heartbeat may join
        if hints:
            batches.append(hints)
        return await send(batch)

    monkeypatch.setattr(one._publisher, "_send", recording)
    there = await two.subscribe([A], max_queue=1000)
    here = await one.subscribe([B])
    items = [(A, msg(i)) if i % 2 else (B, msg(i)) for i in range(1, 51)]
    counts = await asyncio.gather(*(one.publish(m, n) for m, n in items))
    assert batches == [50]
    assert counts == [1] * 50  # A: the remote node; B: the local one (not itself again)
    assert await one.publish_many(items) == [1] * 50
    assert batches == [50, 50]
    for _ in range(3):
        await one.publish(C, msg(1))
    assert batches == [50, 50, 1, 1, 1]  # awaited one by one: one round trip each
    assert [(await get(there))[1].seq for _ in range(50)] == [i for i in range(1, 51) if i % 2] * 2
    assert here.queued == 50


async def test_a_big_payload_goes_without_it(nodes: tuple[RedisBus, RedisBus]) -> None:
    one, two = nodes
    here = await one.subscribe([A])
    there = await two.subscribe([A])
    big, edge = b"x" * (REMOTE_PAYLOAD_MAX + 1), b"y" * REMOTE_PAYLOAD_MAX
    assert await one.publish(A, msg(1, big)) == 2
    assert await one.publish(A, msg(2, edge)) == 2
    assert await one.publish(A, eph(big)) == 1  # an ephemeral one has no store to fall back to
    await barrier(one, two, A)
    assert [await get(here) for _ in range(4)] == [
        (A, msg(1, big)), (A, msg(2, edge)), (A, eph(big)), (A, MARKER)]
    assert [await get(there) for _ in range(3)] == [(A, msg(1)), (A, msg(2, edge)), (A, MARKER)]
    assert there.queued == 0 and one.stats().stripped == 1
    with pytest.raises(ValueError):
        await one.publish(A, msg(3, b"z" * ((1 << 20) + 1)))


# --------------------------------------------------------------------------- invalidation


@pytest.mark.parametrize(("say", "hear", "other"), [
    ("invalidate", "on_invalidate", "on_sessions_revoked"),
    ("sessions_revoked", "on_sessions_revoked", "on_invalidate"),
])
async def test_a_notice_reaches_the_other_nodes_only(
        nodes: tuple[RedisBus, RedisBus], say: str, hear: str, other: str) -> None:
    """An invalidation (a mailbox id) and a session revocation (an account id) reach
    every other node's handlers, never the sender's own, and never the other kind's
    (their bodies differ); a raising handler stops neither the next one nor the
    listener."""
    one, two = nodes
    seen_one: list[bytes | None] = []
    seen_two: list[bytes | None] = []
    mixed_up: list[bytes | None] = []

    def broken(key: bytes | None) -> None:
        raise RuntimeError("a buggy handler")

    getattr(one, hear)(seen_one.append)
    getattr(two, hear)(broken)
    getattr(two, hear)(seen_two.append)
    getattr(two, other)(mixed_up.append)
    await getattr(one, say)(A)
    await eventually(lambda: seen_two == [A], "the notice")
    await getattr(two, say)(B)  # ordered after one's own: it would have come back by now
    await eventually(lambda: seen_one == [B], "the other notice")
    assert seen_one == [B] and seen_two == [A] and mixed_up == []
    with pytest.raises(ValueError):
        await getattr(one, say)(b"short")
    there = await two.subscribe([C])  # the listener goes on
    assert await one.publish(C, msg(1)) == 1
    assert await get(there) == (C, msg(1))


async def test_subscriptions_taken_reach_the_other_nodes_with_one_tie_break(
        nodes: tuple[RedisBus, RedisBus]) -> None:
    """A node says which mailboxes a connection of it subscribed, and when; every other
    node hears it (never the sender), and of two nodes exactly one counts as the later
    one when the times are equal."""
    one, two = nodes
    heard_one: list[tuple[list[bytes], int, bool]] = []
    heard_two: list[tuple[list[bytes], int, bool]] = []
    one.on_subscriptions_taken(lambda ids, at, tie: heard_one.append((list(ids), at, tie)))
    two.on_subscriptions_taken(lambda ids, at, tie: heard_two.append((list(ids), at, tie)))
    await one.subscriptions_taken([A, B], 1_700_000_000_123)
    await eventually(lambda: bool(heard_two), "one's subscriptions")
    await two.subscriptions_taken([C], 99)
    await eventually(lambda: bool(heard_one), "two's subscription")
    await one.subscriptions_taken([], 7)  # nothing to say: nothing sent
    await two.subscriptions_taken([A], 100)  # ordered after one's: would have come by now
    await eventually(lambda: len(heard_one) == 2, "two's second subscription")
    assert heard_two == [([A, B], 1_700_000_000_123, heard_one[0][2] is False)]
    assert heard_one[0][:2] == ([C], 99) and heard_one[1][:2] == ([A], 100)
    assert heard_one[0][2] != heard_two[0][2]  # one of the two wins a tie, never both
    with pytest.raises(ValueError):
        await one.subscriptions_taken([b"short"], 1)


# --------------------------------------------------------------------------- garbage


async def test_garbage_is_counted_and_dropped(
    nodes: tuple[RedisBus, RedisBus], shared: tuple[str, str],
) -> None:
    one, two = nodes
    url, prefix = shared
    there = await two.subscribe([A])
    channel, inv, hb = f"{prefix}:mb:{A.hex()}", f"{prefix}:inv", f"{prefix}:hb"
    acct, sub = f"{prefix}:acct", f"{prefix}:sub"
    gone: list[bytes] = []
    two.on_sessions_revoked(gone.append)
    taken: list[object] = []
    two.on_subscriptions_taken(lambda *args: taken.append(args))
    at = (5).to_bytes(8, "big")
    stranger = head(b"\x07" * 8)
    seal = Tagger(KEY).seal  # well tagged, badly formed: a node's bug, not a forgery
    raw = Redis.from_url(url)
    try:
        for channel_name, data in [
            (channel, b""),
            (channel, b"\x01" + stranger[1:] + encode_notification(A, msg(1))),  # version 1
            (channel, seal(b"\x01" + stranger[1:] + encode_notification(A, msg(1)))),
            (channel, seal(b"\x03" + stranger[1:] + encode_notification(A, msg(1)))),
            (channel, seal(stranger + b"junk")),
            (channel, seal(stranger + encode_notification(A, msg(1))[:-1])),  # truncated
            (channel, seal(stranger + encode_notification(B, msg(1)))),  # not this channel's
            (inv, seal(stranger + b"abc")),
            (inv, seal(stranger + b"a" + A)),  # an account deletion's body
            (acct, seal(stranger + A)),  # an invalidation's body
            (acct, seal(stranger + b"b" + A)),
            (hb, seal(stranger + b"\x00\x00\x00\x00\x64")),  # a version 1 heartbeat body
            (sub, seal(stranger + b"a" + at + A)),  # not a subscription's first byte
            (sub, seal(stranger + b"b" + at)),  # no mailbox
            (sub, seal(stranger + b"b" + at + A + B[:-1])),  # a ragged id
            (acct, seal(stranger + b"b" + at + A)),  # a subscription's body
        ]:
            assert await raw.publish(channel_name, data) == (1 if channel_name == channel else 2)
        assert not gone and not taken
        await one.publish(A, msg(9))
        await eventually(lambda: two.stats().received == 1, "the good message")
        assert await get(there) == (A, msg(9)) and there.queued == 0
        stats = two.stats()
        assert (stats.bad_messages, stats.forged, stats.reconnects) == (16, 0, 0)
        # A well-formed message of a node of this deployment (it has the key) is fine.
        assert await raw.publish(channel, seal(stranger + encode_notification(A, msg(10)))) == 1
        assert await get(there) == (A, msg(10))
    finally:
        await raw.aclose()


OTHER_KEY = bus_key(b"\x43" * 32)
"""Another deployment's bus key (or a node given the wrong secret file)."""


async def test_messages_without_the_key_are_dropped_unread(
    nodes: tuple[RedisBus, RedisBus], shared: tuple[str, str],
    caplog: pytest.LogCaptureFixture,
) -> None:
    """Whoever can PUBLISH on Redis but lacks the token secret injects nothing."""
    one, two = nodes
    url, prefix = shared
    caplog.set_level(logging.INFO, logger="pigeon.relay.bus_redis")
    seen = _invalidations(two)
    there = await two.subscribe([A])
    channel, inv = f"{prefix}:mb:{A.hex()}", f"{prefix}:inv"
    stranger = head(b"\x07" * 8)
    hint = stranger + encode_notification(A, msg(10, b"secret payload"))
    good = Tagger(KEY).seal(hint)
    seal_other = Tagger(OTHER_KEY).seal
    forgeries = [
        (channel, b"\x02"),  # no room for a tag
        (channel, seal_other(stranger)[:-1]),
        (channel, hint),  # no tag (its last 16 bytes taken for one)
        (channel, hint + bytes(16)),  # a zero tag
        (channel, Tagger(OTHER_KEY).seal(hint)),  # another key's tag
        (channel, good[:-1] + bytes([good[-1] ^ 0x01])),  # one tag bit flipped
        (channel, bytes([good[0]]) + good[1:9] + bytes([good[9] ^ 0x80]) + good[10:]),  # body
        (inv, stranger + A),
        (inv, Tagger(OTHER_KEY).seal(stranger + A)),
    ]
    raw = Redis.from_url(url)
    try:
        for channel_name, data in forgeries:
            await raw.publish(channel_name, data)
        await barrier(one, two, A)  # Redis delivers in order: the forgeries came first
        assert await get(there) == (A, MARKER) and there.queued == 0
        stats = two.stats()
        assert (stats.forged, stats.bad_messages, stats.received) == (9, 0, 1)
        assert seen == [] and one.stats().forged == 2  # one hears the invalidations only
        assert await raw.publish(channel, good) == 1  # the same, tagged with the key
        assert await get(there) == (A, msg(10, b"secret payload"))
    finally:
        await raw.aclose()
    warnings = [r.getMessage() for r in caplog.records if "bad tag" in r.getMessage()]
    assert len(warnings) == 2  # once per node
    for record in caplog.records:  # neither ids, payloads nor tags in the logs
        text = record.getMessage()
        assert A.hex() not in text and "secret payload" not in text and good[-16:].hex() not in text


async def test_nodes_with_different_keys_do_not_hear_each_other(
        shared: tuple[str, str]) -> None:
    url, prefix = shared
    one = await RedisBus.open(url, prefix=prefix, key=KEY, heartbeat_s=BEAT_S,
                              peer_timeout_s=TIMEOUT_S)
    other = await RedisBus.open(url, prefix=prefix, key=OTHER_KEY, heartbeat_s=BEAT_S,
                                peer_timeout_s=TIMEOUT_S)
    try:
        seen = _invalidations(other)
        there = await other.subscribe([A])
        await one.publish(A, msg(1))  # Redis counts the subscriber; the node drops it
        await one.invalidate(A)
        await eventually(lambda: other.stats().forged >= 5, "the hint, the invalidation and "
                         "the heartbeats")
        await asyncio.sleep(5 * BEAT_S)
        assert there.queued == 0 and seen == [] and other.stats().received == 0
        for bus in (one, other):
            stats = bus.stats()
            assert (stats.peers, stats.peers_lost, stats.losses_announced) == (0, 0, 0)
            assert stats.forged >= 3 and stats.bad_messages == 0
    finally:
        await one.close()
        await other.close()


def test_the_bus_key_is_hkdf_of_the_token_secret() -> None:
    secret = bytes(range(32))
    prk = hmac.digest(bytes(32), secret, "sha256")  # RFC 5869: no salt = zeros
    assert bus_key(secret) == hmac.digest(prk, b"pigeon relay bus v1\x01", "sha256")
    assert bus_key(secret + b"\x00") != bus_key(secret)
    with pytest.raises(ValueError):
        bus_key(bytes(31))
    with pytest.raises(ValueError):
        Tagger(bytes(16))
    tagger = Tagger(KEY)
    assert repr(tagger) == "Tagger(key=<hidden>)" and KEY.hex() not in repr(tagger)
    sealed = tagger.seal(head(bytes(8)) + b"body")
    assert len(sealed) == 1 + 8 + 4 + 16 and tagger.open(sealed) == sealed[:-16]
    for bad, error in [(b"\x01" + sealed[1:], VersionTooOld),
                       (b"\x03" + sealed[1:], UnknownVersion),
                       (b"", DecodeError), (sealed[:24], InvalidSignature),
                       (sealed[:-1] + bytes([sealed[-1] ^ 1]), InvalidSignature)]:
        with pytest.raises(error):
            tagger.open(bad)


# --------------------------------------------------------------------------- outages


async def test_a_killed_connection_reconnects_and_resyncs(
    nodes: tuple[RedisBus, RedisBus], shared: tuple[str, str],
) -> None:
    one, two = nodes
    url, prefix = shared
    both = await two.subscribe([A, B])
    only_b = await two.subscribe([B])
    raw = Redis.from_url(url)
    try:
        client_id = await _pubsub_client_id(raw, two, prefix)
        assert client_id is not None
        await raw.execute_command("CLIENT", "KILL", "ID", client_id)
        await eventually(lambda: two.stats().reconnects == 1, "the reconnection")
        assert await _pubsub_client_id(raw, two, prefix) not in (None, client_id)
    finally:
        await raw.aclose()
    assert {await get(both) for _ in range(2)} == {(A, RESYNC), (B, RESYNC)}
    assert await get(only_b) == (B, RESYNC)
    assert both.queued == 0 and only_b.queued == 0
    assert two.stats().channels == 2
    assert await one.publish(A, msg(1)) == 1
    assert await one.publish(B, msg(1)) == 1
    assert [await get(both) for _ in range(2)] == [(A, msg(1)), (B, msg(1))]
    assert await get(only_b) == (B, msg(1))


async def test_a_killed_publisher_connection_is_replaced_at_once(
    nodes: tuple[RedisBus, RedisBus], shared: tuple[str, str],
) -> None:
    one, two = nodes
    url, prefix = shared
    there = await two.subscribe([A])
    raw = Redis.from_url(url)
    try:
        name = f"{prefix}:pub:{one.origin.hex()}"
        ids = [str(c["id"]) for c in await raw.client_list() if c.get("name") == name]
        assert len(ids) == 1
        await raw.execute_command("CLIENT", "KILL", "ID", ids[0])
    finally:
        await raw.aclose()
    assert await one.publish(A, msg(1)) == 1  # retried on a fresh connection
    assert await get(there) == (A, msg(1))
    assert one.stats().publish_failures == 0


async def test_an_outage_serves_local_subscribers_then_resyncs(
    own_redis: ThrowawayRedis, caplog: pytest.LogCaptureFixture,
) -> None:
    one = await RedisBus.open(own_redis.url, prefix="p", key=KEY)
    two = await RedisBus.open(own_redis.url, prefix="p", key=KEY)
    try:
        here = await one.subscribe([A])
        there = await two.subscribe([A])
        seen: list[list[bytes | None]] = [[], []]
        one.on_invalidate(seen[0].append)
        two.on_invalidate(seen[1].append)
        caplog.set_level(logging.INFO, logger="pigeon.relay.bus_redis")
        await asyncio.to_thread(own_redis.stop)
        for seq in range(1, 6):  # local delivery goes on, remote counts 0, no exception
            assert await asyncio.wait_for(one.publish(A, msg(seq)), WAIT_S) == 1
        await asyncio.wait_for(one.invalidate(A), WAIT_S)
        assert [(await get(here))[1].seq for _ in range(5)] == [1, 2, 3, 4, 5]
        assert one.stats().publish_failures == 6
        await asyncio.wait_for(here.add(B), WAIT_S)  # no Redis to confirm: at once
        await asyncio.sleep(0.3)  # a few reconnection attempts
        warnings = [r for r in caplog.records if r.levelno == logging.WARNING]
        assert sum("publish failed" in r.getMessage() for r in warnings) == 1
        assert sum("connection lost" in r.getMessage() for r in warnings) == 2  # per node
        await asyncio.to_thread(own_redis.start)
        await eventually(lambda: (one.stats().reconnects, two.stats().reconnects) == (1, 1),
                         "both reconnections")
        # Each says it was cut off, but only a node already back hears it (one that is
        # not RESYNCs everything on its own reconnect): the first back hears the other.
        await eventually(lambda: one.stats().losses_announced
                         + two.stats().losses_announced >= 1, "an announcement")
        await asyncio.sleep(0.5)  # the second one's, if any (merged into the RESYNCs)
        assert one.stats().losses_announced + two.stats().losses_announced in (1, 2)
        assert all(s and set(s) == {None} for s in seen)  # cached mailboxes: all suspect
        assert {await get(here) for _ in range(2)} == {(A, RESYNC), (B, RESYNC)}
        assert await get(there) == (A, RESYNC)
        assert await two.publish(B, msg(7)) == 1  # one's SUBSCRIBE made during the outage
        assert await two.publish(A, msg(6)) == 2
        assert [await get(here) for _ in range(2)] == [(B, msg(7)), (A, msg(6))]
        assert await get(there) == (A, msg(6))
        assert one.stats().publish_failures == 6 and await one.publish(C, msg(1)) == 0
        assert any("restored" in r.getMessage() for r in caplog.records)
        for record in caplog.records:  # no ids or payloads in the logs
            assert A.hex() not in record.getMessage() and B.hex() not in record.getMessage()
    finally:
        await one.close()
        await two.close()


async def test_open_fails_when_redis_does_not_answer() -> None:
    started = time.monotonic()
    with pytest.raises(TransportError):
        await RedisBus.open(f"redis://127.0.0.1:{_free_port()}/0", prefix="p", key=KEY)
    assert time.monotonic() - started < WAIT_S
    assert not [t for t in asyncio.all_tasks() if t.get_name() == "pigeon-relay-bus-redis"]


async def test_open_fails_when_redis_accepts_and_stays_silent(
        monkeypatch: pytest.MonkeyPatch) -> None:
    """A load balancer whose backend died: the TCP connect succeeds, nothing answers."""
    import relay._redis_conn as conn_module

    monkeypatch.setattr(conn_module, "HANDSHAKE_TIMEOUT_S", 0.5)
    held: list[asyncio.StreamWriter] = []

    async def silent(_reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        held.append(writer)  # never answers, never closes

    server = await asyncio.start_server(silent, "127.0.0.1", 0)
    port = server.sockets[0].getsockname()[1]
    try:
        started = time.monotonic()
        with pytest.raises(TransportError):
            await RedisBus.open(f"redis://127.0.0.1:{port}/0", prefix="p", key=KEY)
        assert time.monotonic() - started < WAIT_S
        assert held  # it did connect: the handshake is what timed out
    finally:
        for writer in held:
            writer.close()
        server.close()
        await server.wait_closed()


# --------------------------------------------------------------------------- close


async def test_close_is_clean_and_idempotent(shared: tuple[str, str]) -> None:
    url, prefix = shared
    bus = await RedisBus.open(url, prefix=prefix, key=KEY)
    other = await RedisBus.open(url, prefix=prefix, key=KEY)
    raw = Redis.from_url(url)
    try:
        sub = await bus.subscribe([A])
        await other.subscribe([B])
        waiter = asyncio.create_task(sub.get())
        in_flight = [asyncio.create_task(bus.publish(B, CLOSED)) for _ in range(20)]
        await asyncio.sleep(0)
        await bus.close()
        with pytest.raises(StopAsyncIteration):
            await asyncio.wait_for(waiter, WAIT_S)
        done = await asyncio.wait_for(asyncio.gather(*in_flight), WAIT_S)  # none hangs
        assert all(n in (0, 1) for n in done)
        await bus.close()
        await sub.close()
        assert await bus.publish(A, msg(1)) == 0
        with pytest.raises(TransportError):
            await bus.subscribe([A])
        listeners = [t for t in asyncio.all_tasks() if t.get_name() == "pigeon-relay-bus-redis"]
        assert len(listeners) == 1  # the other node's
        for _ in range(100):
            if await _pubsub_client_id(raw, bus, prefix) is None:
                break
            await asyncio.sleep(0.02)
        assert await _pubsub_client_id(raw, bus, prefix) is None
        assert await _pubsub_client_id(raw, other, prefix) is not None
    finally:
        await raw.aclose()
        await other.close()


# --------------------------------------------------------------------------- heartbeats

BEAT_S, TIMEOUT_S = 0.1, 0.6
"""Fast heartbeats for these tests (the defaults are 1 s and 3 s)."""

_HELPER = """
import asyncio, sys
from relay.bus_redis import RedisBus

async def main() -> None:
    bus = await RedisBus.open(sys.argv[1], prefix=sys.argv[2], key=bytes.fromhex(sys.argv[6]),
                              heartbeat_s=float(sys.argv[3]), peer_timeout_s=float(sys.argv[4]))
    await bus.subscribe([bytes.fromhex(sys.argv[5])])
    print("ready", flush=True)
    await asyncio.sleep(60)

asyncio.run(main())
"""


@pytest.fixture
async def beating(shared: tuple[str, str]) -> AsyncIterator[tuple[RedisBus, RedisBus]]:
    """Two nodes with fast heartbeats, each knowing the other."""
    url, prefix = shared
    one = await RedisBus.open(url, prefix=prefix, key=KEY, heartbeat_s=BEAT_S,
                               peer_timeout_s=TIMEOUT_S)
    two = await RedisBus.open(url, prefix=prefix, key=KEY, heartbeat_s=BEAT_S,
                               peer_timeout_s=TIMEOUT_S)
    try:
        await eventually(lambda: one.stats().peers == two.stats().peers == 1, "the peers")
        yield one, two
    finally:
        await one.close()
        await two.close()


def _invalidations(bus: RedisBus) -> list[bytes | None]:
    seen: list[bytes | None] = []
    bus.on_invalidate(seen.append)
    return seen


async def _resyncs(sub: object, n: int) -> set[tuple[bytes, object]]:
    return {await get(sub) for _ in range(n)}


async def test_a_killed_peer_makes_every_local_subscription_resync(
    shared: tuple[str, str], caplog: pytest.LogCaptureFixture,
) -> None:
    """A node killed with SIGKILL (no goodbye; its last hints may never have reached
    Redis) is declared gone after the timeout: every mailbox of every subscription on
    the other node is read from the store again."""
    url, prefix = shared
    two = await RedisBus.open(url, prefix=prefix, key=KEY, heartbeat_s=BEAT_S,
                               peer_timeout_s=TIMEOUT_S)
    helper = await asyncio.create_subprocess_exec(
        sys.executable, "-c", _HELPER, url, prefix, str(BEAT_S), str(TIMEOUT_S), D.hex(),
        KEY.hex(),
        stdout=asyncio.subprocess.PIPE, cwd=Path(__file__).parents[3])
    try:
        assert helper.stdout is not None
        assert await asyncio.wait_for(helper.stdout.readline(), 20) == b"ready\n"
        seen = _invalidations(two)
        caplog.set_level(logging.INFO, logger="pigeon.relay.bus_redis")
        both = await two.subscribe([A, B])
        only_c = await two.subscribe([C])
        await eventually(lambda: two.stats().peers == 1, "the helper's heartbeat")
        assert await two.publish(D, msg(1)) == 1  # the helper is a live node
        await asyncio.sleep(3 * TIMEOUT_S)  # healthy: nothing to resync
        assert both.queued == only_c.queued == 0 and seen == []
        helper.kill()
        killed = time.monotonic()
        assert await _resyncs(both, 2) == {(A, RESYNC), (B, RESYNC)}
        assert await get(only_c) == (C, RESYNC)
        assert time.monotonic() - killed < TIMEOUT_S + 1.0
        assert seen == [None]  # its invalidations may have been lost too
        stats = two.stats()
        assert (stats.peers, stats.peers_lost, stats.reconnects) == (0, 1, 0)
        assert both.queued == only_c.queued == 0
        await asyncio.sleep(2 * TIMEOUT_S)  # once per lost peer, not on every tick
        assert both.queued == 0 and seen == [None] and two.stats().peers_lost == 1
        lost = [r for r in caplog.records if "went silent" in r.getMessage()]
        assert len(lost) == 1
        for record in caplog.records:
            assert A.hex() not in record.getMessage() and prefix not in record.getMessage()
    finally:
        if helper.returncode is None:
            helper.kill()
        await helper.wait()
        await two.close()


async def test_a_peer_that_stops_beating_is_gone(beating: tuple[RedisBus, RedisBus]) -> None:
    one, two = beating
    seen = _invalidations(two)
    there = await two.subscribe([A, B])
    await one._beats.close()  # alive, connected, silent
    assert await _resyncs(there, 2) == {(A, RESYNC), (B, RESYNC)}
    assert seen == [None] and two.stats().peers_lost == 1
    assert one.stats().peers_lost == 0  # two still beats


async def test_heartbeats_alone_never_resync(beating: tuple[RedisBus, RedisBus]) -> None:
    one, two = beating
    seen = [_invalidations(one), _invalidations(two)]
    subs = [await one.subscribe([A]), await two.subscribe([A, B])]
    await asyncio.sleep(10 * BEAT_S)
    time.sleep(2 * TIMEOUT_S)  # noqa: ASYNC251 - a stalled event loop heard nobody: it blames nobody
    await asyncio.sleep(10 * BEAT_S)
    for bus in (one, two):
        stats = bus.stats()
        assert (stats.peers, stats.peers_lost, stats.losses_announced) == (1, 0, 0)
        assert stats.remote_takers == 0 and stats.publish_failures == 0
    assert [sub.queued for sub in subs] == [0, 0] and seen == [[], []]
    assert await one.publish(A, msg(1)) == 2
    assert await get(subs[1]) == (A, msg(1))


async def test_failed_publishes_are_announced_once_redis_answers(
    beating: tuple[RedisBus, RedisBus], monkeypatch: pytest.MonkeyPatch,
) -> None:
    one, two = beating
    seen_one, seen_two = _invalidations(one), _invalidations(two)
    there = await two.subscribe([A, B])

    async def refused(packed: list[bytes], replies: int) -> list[int]:
        raise RedisConnectionError("the publisher is cut off")

    monkeypatch.setattr(one._publisher, "_pipeline", refused)
    assert await one.publish(A, msg(1)) == 0  # the hint is lost
    await asyncio.sleep(2 * BEAT_S)  # shorter than the timeout: nobody is declared gone
    assert there.queued == 0 and one.stats().publish_failures == 1
    monkeypatch.undo()
    assert await _resyncs(there, 2) == {(A, RESYNC), (B, RESYNC)}
    assert seen_two == [None] and seen_one == []
    assert two.stats().losses_announced == 1 and two.stats().peers_lost == 0
    await asyncio.sleep(3 * BEAT_S)
    assert there.queued == 0 and two.stats().losses_announced == 1  # said once


async def test_a_node_cut_off_says_so_after_reconnecting(
    beating: tuple[RedisBus, RedisBus], shared: tuple[str, str],
) -> None:
    one, two = beating
    _, prefix = shared
    seen_one, seen_two = _invalidations(one), _invalidations(two)
    here, there = await one.subscribe([C]), await two.subscribe([A, B])
    raw = Redis.from_url(shared[0])
    try:
        client_id = await _pubsub_client_id(raw, one, prefix)
        assert client_id is not None
        await raw.execute_command("CLIENT", "KILL", "ID", client_id)
    finally:
        await raw.aclose()
    assert await get(here) == (C, RESYNC)  # its own subscriptions, as before
    assert await _resyncs(there, 2) == {(A, RESYNC), (B, RESYNC)}  # the other node's
    assert seen_one == [None] and seen_two == [None]
    assert one.stats().reconnects == 1 and two.stats().losses_announced == 1
    assert two.stats().peers_lost == 0


def _wall_ms() -> int:
    return time.time_ns() // 1_000_000


async def test_forged_heartbeats_count_for_nothing(
    beating: tuple[RedisBus, RedisBus], shared: tuple[str, str],
) -> None:
    """A LOST (or HELLO) heartbeat without a good tag neither adds a peer nor RESYNCs."""
    one, two = beating
    url, prefix = shared
    seen = _invalidations(two)
    there = await two.subscribe([A, B])
    beat = encode_heartbeat(head(b"\x07" * 8), hello=True, lost=True, interval_ms=100,
                            sent_ms=_wall_ms())
    good = Tagger(KEY).seal(beat)
    raw = Redis.from_url(url)
    try:
        for data in [beat, beat + bytes(16), Tagger(OTHER_KEY).seal(beat),
                     good[:-1] + bytes([good[-1] ^ 0x40])]:
            assert await raw.publish(f"{prefix}:hb", data) == 2
    finally:
        await raw.aclose()
    await eventually(lambda: two.stats().forged == 4, "the forgeries")
    await asyncio.sleep(2 * TIMEOUT_S)  # a forged peer would have gone by now
    assert there.queued == 0 and seen == []
    for bus in (one, two):
        stats = bus.stats()
        assert (stats.peers, stats.peers_lost, stats.losses_announced) == (1, 0, 0)
        assert stats.forged == 4


async def test_a_replayed_heartbeat_is_refused(
    beating: tuple[RedisBus, RedisBus], shared: tuple[str, str],
    caplog: pytest.LogCaptureFixture,
) -> None:
    """A genuine heartbeat captured on Redis and published again (its tag is good) is
    refused: not newer than its origin's last, or too far from this node's clock."""
    one, two = beating
    url, prefix = shared
    hb = f"{prefix}:hb"
    caplog.set_level(logging.INFO, logger="pigeon.relay.bus_redis")
    seen = _invalidations(two)
    there = await two.subscribe([A, B])
    raw = Redis.from_url(url)
    pubsub = raw.pubsub()
    try:
        await pubsub.subscribe(hb)
        captured = None
        deadline = time.monotonic() + WAIT_S
        while captured is None:  # one of one's own beats
            assert time.monotonic() < deadline, "no heartbeat of one's captured"
            message = await pubsub.get_message(ignore_subscribe_messages=True, timeout=1.0)
            if message is not None and message["data"][1:9] == one.origin:
                captured = message["data"]
        seal = Tagger(KEY).seal
        now = _wall_ms()
        lost = seal(encode_heartbeat(head(b"\x07" * 8), hello=False, lost=True,
                                     interval_ms=60_000, sent_ms=now))  # a slow node
        assert await raw.publish(hb, lost) == 3
        assert await _resyncs(there, 2) == {(A, RESYNC), (B, RESYNC)}  # the real one
        assert seen == [None] and two.stats().losses_announced == 1
        for data in [
            captured, lost, lost,  # replays
            seal(encode_heartbeat(head(b"\x07" * 8), hello=False, lost=True,
                                  interval_ms=60_000, sent_ms=now - 1)),  # older
            seal(encode_heartbeat(head(b"\x08" * 8), hello=False, lost=True, interval_ms=100,
                                  sent_ms=now - MAX_CLOCK_SKEW_MS - 1_000)),  # too old
            seal(encode_heartbeat(head(b"\x09" * 8), hello=False, lost=True, interval_ms=100,
                                  sent_ms=now + MAX_CLOCK_SKEW_MS + 5_000)),  # too new
        ]:
            await raw.publish(hb, data)
    finally:
        await pubsub.aclose()
        await raw.aclose()
    await eventually(lambda: two.stats().stale_beats == 6, "the refusals")
    await asyncio.sleep(2 * TIMEOUT_S)
    assert there.queued == 0 and seen == [None]
    stats = two.stats()
    assert (stats.losses_announced, stats.peers_lost, stats.peers) == (1, 0, 2)
    assert (stats.forged, stats.bad_messages) == (0, 0)
    assert one.stats().stale_beats == 5  # all but its own
    assert sum("refused for its time" in r.getMessage() for r in caplog.records) == 2


def test_heartbeats_are_refused_out_of_the_window_or_order() -> None:
    peers = Peers(timeout_s=3.0, limit=4)
    now = 1_000_000
    assert peers.took(b"a" * 8, now, now)
    assert not peers.took(b"a" * 8, now, now + 1)  # the same again
    assert not peers.took(b"a" * 8, now - 1, now + 1)  # older
    assert peers.took(b"a" * 8, now + 1, now + 1)
    assert not peers.took(b"b" * 8, now - MAX_CLOCK_SKEW_MS - 1, now)
    assert not peers.took(b"b" * 8, now + MAX_CLOCK_SKEW_MS + 1, now)
    assert peers.took(b"b" * 8, now + MAX_CLOCK_SKEW_MS, now)  # a clock ahead, in bounds
    peers.clear()  # deaf: the peers are forgotten, their last beats are not
    assert not peers.took(b"a" * 8, now + 1, now + 2)
    later = now + 2 * MAX_CLOCK_SKEW_MS
    assert peers.took(b"c" * 8, later, later)
    assert list(peers._last_ms) == [b"b" * 8, b"c" * 8]  # a's is out of the window now


def test_the_peer_table_is_bounded() -> None:
    peers = Peers(timeout_s=3.0, limit=2)
    assert peers.heard(b"a" * 8, 0.0, 1.0) == 0
    assert peers.heard(b"b" * 8, 1.0, 1.0) == 0
    assert peers.heard(b"a" * 8, 2.0, 1.0) == 0  # heard again: now the most recent
    assert peers.heard(b"c" * 8, 2.5, 1.0) == 1  # b, the least recently heard, goes
    assert len(peers) == 2 and peers.next_deadline() == 5.0
    assert peers.heard(b"d" * 8, 2.6, 2.0) == 1  # a slow beater: three of its periods
    assert peers.expire(5.4) == 0 and peers.expire(5.5) == 1  # c; a made room for d
    assert peers.next_deadline() == pytest.approx(8.6)
    peers.postpone(1.0)
    assert peers.expire(9.0) == 0 and peers.expire(9.6) == 1 and len(peers) == 0
