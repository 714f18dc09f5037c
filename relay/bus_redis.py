"""A Redis pub/sub :class:`~relay.ports.Bus`: relay nodes sharing one database deliver
each other's notifications.

Theory of operation (docs/protocol.md §10.10; the semantics are :mod:`relay.bus`'s):

* **Local first.** Every node composes an :class:`~relay.bus.InProcessBus`. ``publish``
  offers the notification to this node's subscriptions in the publisher's turn (bounded
  queues, EPHEMERAL dropped and MESSAGE coalesced into RESYNC when full, the
  ``set_direct`` fast path), then PUBLISHes it on the mailbox's channel
  ``<prefix>:mb:<hex id>`` for the other nodes, which hand it to their own in-process bus
  the same way. The return value is local takers plus the other nodes that had a
  subscriber (PUBLISH's receiver count, less this node when it may be counted), so 0
  still means "nobody anywhere is listening".
* **One pub/sub connection per node.** It SUBSCRIBEs to a mailbox channel while at least
  one local subscription follows the mailbox (reference counted; UNSUBSCRIBE when the
  last one goes). :meth:`RedisSubscription.add` returns once Redis confirmed the
  SUBSCRIBE, so a hint published after it returns reaches this node (the delivery pump
  reads the store backlog right after ``add``). Commands and confirmations travel in
  order on that one connection, so each confirmation is matched to the oldest
  unconfirmed SUBSCRIBE of its channel.
* **Coalesced publishes.** Publishes queue up during an event-loop iteration and go to
  Redis pipelined on one publisher connection, one batch at a time (the next batch
  collects while one is in flight), so a batch of N costs one round trip and the
  per-mailbox order is kept. Each caller still gets its own receiver count. A caller
  that awaits each publish before the next still pays a round trip each:
  :meth:`RedisBus.publish_many` sends a group's copies in one.
* **Wire.** A message is an envelope around :func:`~relay.bus.encode_notification`:

  ======  =========  ===================================================
  size    field      meaning
  ======  =========  ===================================================
  1       version    ``1``
  8       origin     random per :class:`RedisBus`: a node skips its own
  n       body       ``encode_notification`` (mailbox channels), or the
                     16-byte mailbox id (``<prefix>:inv``, invalidations)
  ======  =========  ===================================================

  A durable notification whose payload exceeds :data:`REMOTE_PAYLOAD_MAX` goes without
  its payload (the consumer reads the store: a MESSAGE without payload is legal); an
  oversized EPHEMERAL one, which has no store to fall back to, is not sent to other
  nodes. Undecodable messages are counted (``bad_messages``) and dropped.
* **Outages.** Local subscribers are served throughout. The pub/sub connection is
  re-opened with jittered exponential backoff (redis-py's ``Retry``); once every channel
  is subscribed again, each local subscription gets a RESYNC for each of its mailboxes
  (hints may have been missed meanwhile). A failed PUBLISH counts 0 remote takers and is
  never raised into the send path; warnings are logged once per outage and never name
  a mailbox or carry a payload.
* **Invalidation.** :meth:`RedisBus.invalidate` tells the other nodes to forget what they
  cached about a mailbox (``on_invalidate`` handlers); it is best effort, like the hints.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import secrets
from collections import deque
from collections.abc import AsyncIterator, Callable, Iterable, Sequence
from dataclasses import dataclass
from typing import Final

from redis.asyncio import ConnectionPool
from redis.asyncio.connection import AbstractConnection
from redis.asyncio.retry import Retry
from redis.backoff import EqualJitterBackoff, NoBackoff
from redis.exceptions import ConnectionError as RedisConnectionError
from redis.exceptions import RedisError, ResponseError
from redis.exceptions import TimeoutError as RedisTimeoutError

from pigeon_crypto.errors import PigeonError, TransportError

from .bus import (
    DEFAULT_MAX_QUEUE,
    MAX_NOTIFICATION_PAYLOAD,
    InProcessBus,
    InProcessSubscription,
    decode_notification,
    encode_notification,
)
from .ports import MAILBOX_ID_LEN, Bus, Notification, Subscription, check_id

__all__ = ["REMOTE_PAYLOAD_MAX", "RedisBus", "RedisBusStats", "RedisSubscription"]

_log = logging.getLogger("pigeon.relay.bus_redis")

REMOTE_PAYLOAD_MAX: Final = 64 * 1024
"""Largest payload sent to other nodes: a hint stays small in Redis's output buffers
(a subscriber's buffer overflow disconnects it); bigger blobs are read from the store."""
ORIGIN_LEN: Final = 8
"""Random node tag: 64 bits make two nodes' tags collide with negligible probability."""
_ENVELOPE_VERSION: Final = 1
_HEAD_LEN: Final = 1 + ORIGIN_LEN
_PING_INTERVAL_S: Final = 5.0
"""An idle pub/sub connection is PINGed after this; no answer within as long again: lost."""
_CONFIRM_TIMEOUT_S: Final = 10.0
"""Longest ``add`` waits for a SUBSCRIBE confirmation (a lost connection ends it sooner)."""
_CONNECT_TIMEOUT_S: Final = 2.0
_IO_TIMEOUT_S: Final = 5.0
"""Publisher socket timeout: bounds how long a send path waits on an unresponsive Redis."""
_OPEN_TIMEOUT_S: Final = 10.0
_BACKOFF_BASE_S: Final = 0.05
_BACKOFF_CAP_S: Final = 5.0
_STABLE_S: Final = 1.0
"""A session that lasted this long was healthy: reconnect at once, then back off again."""
_SUBSCRIBE_CHUNK: Final = 1000
"""Channels per SUBSCRIBE command when re-subscribing everything."""


@dataclass(frozen=True, slots=True, kw_only=True)
class RedisBusStats:
    """Counters for metrics (monotonic since the bus opened, but ``subscriptions`` and
    ``channels``). The first five mean what :class:`relay.bus.BusStats`'s do."""

    published: int
    """``publish`` calls on this node."""
    delivered: int
    """Local subscriptions that took a notification, published here or on another node."""
    dropped: int
    coalesced: int
    subscriptions: int
    received: int
    """Notifications from other nodes handed to this node's subscriptions."""
    remote_takers: int
    """Other nodes that had a subscriber for this node's publishes (sum of counts)."""
    stripped: int
    """Sent to other nodes without their payload (larger than REMOTE_PAYLOAD_MAX)."""
    publish_failures: int
    """Notifications and invalidations that did not reach Redis."""
    reconnects: int
    bad_messages: int
    channels: int
    """Mailbox channels this node's pub/sub connection is subscribed to now."""


class _Channel:
    """This node's view of one channel on its pub/sub connection."""

    __slots__ = ("live", "name", "refs", "unsubs", "waiters")

    def __init__(self, name: bytes) -> None:
        self.name = name
        self.refs = 0
        """Local subscriptions following it (the invalidation channel: always 1)."""
        self.live = False
        """The last confirmation the server sent for it was ``subscribe``."""
        self.waiters: deque[asyncio.Future[None]] = deque()
        """One per SUBSCRIBE sent and not confirmed, oldest first."""
        self.unsubs = 0
        """UNSUBSCRIBEs sent and not confirmed."""

    @property
    def maybe_counted(self) -> bool:
        """Whether the server may count this node among the channel's receivers."""
        return self.live or bool(self.waiters) or self.unsubs > 0


_Pending = tuple[bytes, bytes, "asyncio.Future[int]"]


class RedisSubscription:
    """A subscription of one :class:`RedisBus`: a local :class:`InProcessSubscription`
    whose mailboxes this node's pub/sub connection follows."""

    def __init__(self, bus: RedisBus, inner: InProcessSubscription) -> None:
        self._bus = bus
        self._inner = inner
        self._ids: set[bytes] = set()

    def set_direct(self, handler: Callable[[bytes, Notification], bool] | None) -> None:
        """See :meth:`InProcessSubscription.set_direct`; it also takes notifications from
        other nodes, in the listener's turn."""
        self._inner.set_direct(handler)

    @property
    def mailbox_ids(self) -> frozenset[bytes]:
        return frozenset(self._ids)

    @property
    def closed(self) -> bool:
        return self._inner.closed

    @property
    def queued(self) -> int:
        return self._inner.queued

    @property
    def dropped(self) -> int:
        return self._inner.dropped

    @property
    def coalesced(self) -> int:
        return self._inner.coalesced

    async def add(self, mailbox_id: bytes) -> None:
        """Follow *mailbox_id*; returns once Redis confirmed the SUBSCRIBE (at once when
        another local subscription follows it already, or during an outage, which ends
        with a RESYNC for it).

        Raises:
            ValueError: the id has the wrong length. TransportError: closed.
        """
        await self._add_many((mailbox_id,))

    async def _add_many(self, mailbox_ids: Sequence[bytes]) -> None:
        for mailbox_id in mailbox_ids:
            check_id("mailbox_id", mailbox_id, MAILBOX_ID_LEN)
        if self._inner.closed:
            raise TransportError("subscription is closed")
        fresh = []
        for mailbox_id in mailbox_ids:
            if mailbox_id not in self._ids:
                await self._inner.add(mailbox_id)
                self._ids.add(mailbox_id)
                fresh.append(mailbox_id)
        await self._bus._retain(fresh)

    async def remove(self, mailbox_id: bytes) -> None:
        await self._inner.remove(mailbox_id)
        if mailbox_id in self._ids:
            self._ids.discard(mailbox_id)
            self._bus._release(mailbox_id)

    def resync(self, mailbox_id: bytes) -> None:
        """See :meth:`relay.ports.Subscription.resync`."""
        self._inner.resync(mailbox_id)

    async def get(self) -> tuple[bytes, Notification]:
        return await self._inner.get()

    def __aiter__(self) -> AsyncIterator[tuple[bytes, Notification]]:
        return self

    async def __anext__(self) -> tuple[bytes, Notification]:
        return await self._inner.get()

    async def close(self) -> None:
        ids, self._ids = self._ids, set()
        await self._inner.close()
        for mailbox_id in ids:
            self._bus._release(mailbox_id)
        self._bus._subs.pop(self, None)

    async def __aenter__(self) -> RedisSubscription:
        return self

    async def __aexit__(self, *exc: object) -> None:
        await self.close()


class RedisBus:
    """Implements :class:`relay.ports.Bus` across nodes over Redis pub/sub (see the module
    docstring). Create it with :meth:`open`."""

    def __init__(self, url: str, *, prefix: str, max_queue: int = DEFAULT_MAX_QUEUE) -> None:
        if not prefix or any(c.isspace() for c in prefix):
            raise ValueError("prefix must be a non-empty word")
        self._local = InProcessBus(max_queue=max_queue)
        self._origin = secrets.token_bytes(ORIGIN_LEN)
        self._head = bytes([_ENVELOPE_VERSION]) + self._origin
        self._mb_prefix = f"{prefix}:mb:".encode()
        self._inv = _Channel(f"{prefix}:inv".encode())
        self._inv.refs = 1
        self._channels: dict[bytes, _Channel] = {self._inv.name: self._inv}
        self._subs: dict[RedisSubscription, None] = {}
        self._handlers: list[Callable[[bytes], None]] = []
        # Two connections, RESP2, no retries inside redis-py (this class retries) and no
        # per-read socket timeout (a publish batch has one deadline; the pub/sub
        # connection is idle by nature and PINGed instead).
        self._pool: ConnectionPool = ConnectionPool.from_url(
            url, protocol=2, retry=Retry(NoBackoff(), 0), socket_timeout=None,
            socket_connect_timeout=_CONNECT_TIMEOUT_S)
        self._pub = self._connection(f"{prefix}:pub:{self._origin.hex()}")
        self._ps_name = f"{prefix}:bus:{self._origin.hex()}"
        self._conn: AbstractConnection | None = None  # set once every channel is live
        self._outbox: list[tuple[bytes, ...]] = []
        self._writer: asyncio.Task[None] | None = None
        self._batch: list[_Pending] = []
        self._flusher: asyncio.Task[None] | None = None
        self._supervisor: asyncio.Task[None] | None = None
        self._ready = asyncio.Event()
        self._closed = False
        self._outage = False
        self._publish_down = False
        self._published = 0
        self._received = 0
        self._remote_takers = 0
        self._stripped = 0
        self._publish_failures = 0
        self._reconnects = 0
        self._bad = 0

    @classmethod
    async def open(cls, url: str, *, prefix: str = "pigeon") -> RedisBus:
        """Connect, subscribe to the invalidation channel and start the listener.

        Raises:
            TransportError: Redis did not answer within a few seconds.
        """
        bus = cls(url, prefix=prefix)
        try:
            await _connect(bus._pub)
            bus._supervisor = asyncio.get_running_loop().create_task(
                bus._supervise(), name="pigeon-relay-bus-redis")
            await asyncio.wait_for(bus._ready.wait(), _OPEN_TIMEOUT_S)
        except (RedisError, OSError, TimeoutError) as exc:
            await bus.close()
            raise TransportError(f"redis bus: cannot connect ({type(exc).__name__})") from exc
        except BaseException:
            await bus.close()
            raise
        return bus

    @property
    def origin(self) -> bytes:
        """This node's random tag on the wire (its pub/sub connection is named
        ``<prefix>:bus:<origin hex>`` in ``CLIENT LIST``)."""
        return self._origin

    # ------------------------------------------------------------------ publishing

    async def publish(self, mailbox_id: bytes, notification: Notification) -> int:
        """Offer *notification* to this node's subscriptions, then to the other nodes'.

        Returns:
            Local subscriptions that took it plus other nodes with a subscriber for the
            mailbox (0 for them while Redis is unreachable).

        Raises:
            ValueError: the id has the wrong length, or an encoded payload over 1 MiB.
        """
        wire = self._wire(mailbox_id, notification)
        self._published += 1
        local = await self._local.publish(mailbox_id, notification)
        if wire is None or self._closed:
            return local
        return local + await self._enqueue(self._mb_prefix + mailbox_id.hex().encode(), wire)

    async def publish_many(self, items: Sequence[tuple[bytes, Notification]]) -> list[int]:
        """:meth:`publish` for each ``(mailbox_id, notification)``, in order, with one
        Redis round trip for all of them (a group send awaits this once, not N times)."""
        futures: list[asyncio.Future[int] | None] = []
        counts = []
        for mailbox_id, notification in items:
            wire = self._wire(mailbox_id, notification)
            self._published += 1
            counts.append(await self._local.publish(mailbox_id, notification))
            futures.append(None if wire is None or self._closed else
                           self._enqueue(self._mb_prefix + mailbox_id.hex().encode(), wire))
        for i, future in enumerate(futures):
            if future is not None:
                counts[i] += await future
        return counts

    async def invalidate(self, mailbox_id: bytes) -> None:
        """Tell every other node to forget what it cached about *mailbox_id* (its
        ``on_invalidate`` handlers run). Best effort: lost while Redis is unreachable."""
        check_id("mailbox_id", mailbox_id, MAILBOX_ID_LEN)
        if not self._closed:
            await self._enqueue(self._inv.name, self._head + mailbox_id)

    def on_invalidate(self, handler: Callable[[bytes], None]) -> None:
        """Call ``handler(mailbox_id)`` for each invalidation from another node."""
        self._handlers.append(handler)

    def _wire(self, mailbox_id: bytes, n: Notification) -> bytes | None:
        if len(n.payload) > REMOTE_PAYLOAD_MAX:
            check_id("mailbox_id", mailbox_id, MAILBOX_ID_LEN)
            if len(n.payload) > MAX_NOTIFICATION_PAYLOAD:
                raise ValueError("notification payload too large")
            if not n.durable:
                return None  # nothing to fetch instead: other nodes do not get it
            self._stripped += 1
            n = Notification(kind=n.kind, seq=n.seq)
        return self._head + encode_notification(mailbox_id, n)

    def _enqueue(self, channel: bytes, data: bytes) -> asyncio.Future[int]:
        future: asyncio.Future[int] = asyncio.get_running_loop().create_future()
        self._batch.append((channel, data, future))
        if self._flusher is None:
            self._flusher = asyncio.get_running_loop().create_task(self._flush())
        return future

    async def _flush(self) -> None:
        """Send the queued publishes, one pipeline per batch, until none is left."""
        batch: list[_Pending] = []
        try:
            while self._batch:
                batch, self._batch = self._batch, []
                before = [self._maybe_counted(channel) for channel, _, _ in batch]
                counts = await self._send(batch)
                for (channel, _, future), count, counted in zip(
                        batch, counts, before, strict=True):
                    if counted or self._maybe_counted(channel):
                        count = max(count - 1, 0)
                    self._remote_takers += count
                    if not future.done():
                        future.set_result(count)
                batch = []
        finally:
            for _, _, future in batch + self._batch:  # cancelled (closing): nobody else
                if not future.done():
                    future.set_result(0)
            self._flusher = None

    async def _send(self, batch: list[_Pending]) -> list[int]:
        if self._publish_down and self._conn is None:
            # Both connections failed: Redis is down. Skip it until the listener is
            # back rather than make every send path wait for a connect timeout.
            self._publish_failures += len(batch)
            return [0] * len(batch)
        packed = b"".join([_pack_publish(channel, data) for channel, data, _ in batch])
        try:
            results = await self._pipeline(packed, len(batch))
        except (RedisError, OSError, TimeoutError) as exc:
            self._publish_failures += len(batch)
            if not self._publish_down:
                self._publish_down = True
                _log.warning("redis bus: publish failed (%s); other nodes miss hints until "
                             "Redis answers", type(exc).__name__)
            return [0] * len(batch)
        if self._publish_down:
            self._publish_down = False
            _log.info("redis bus: publishing again")
        self._publish_failures += sum(r < 0 for r in results)
        return [max(r, 0) for r in results]

    async def _pipeline(self, packed: bytes, replies: int) -> list[int]:
        """Send *packed* PUBLISH commands, read their receiver counts (-1: refused).
        Once more on a fresh connection if the first one failed (a PUBLISH repeated after
        a lost reply duplicates a hint, which consumers tolerate)."""
        conn = self._pub
        for attempt in (1, 2):
            try:
                async with asyncio.timeout(_IO_TIMEOUT_S):
                    if not conn.is_connected:
                        await _connect(conn)
                    await conn.send_packed_command(packed, check_health=False)
                    results = []
                    for _ in range(replies):
                        try:
                            reply = await conn.read_response()
                        except ResponseError:  # one refused command (ACL...), read on
                            reply = -1
                        results.append(reply if isinstance(reply, int) else -1)
                    return results
            except (RedisError, OSError, TimeoutError) as exc:
                await conn.disconnect(nowait=True)  # half-read replies: start afresh
                if attempt == 2 or isinstance(exc, TimeoutError | RedisTimeoutError):
                    raise  # a slow Redis gets no second deadline on the send path
        raise AssertionError("unreachable")  # pragma: no cover

    def _connection(self, name: str) -> AbstractConnection:
        conn: AbstractConnection = self._pool.make_connection()  # type: ignore[no-untyped-call]
        conn.client_name = name
        return conn

    def _maybe_counted(self, channel: bytes) -> bool:
        ch = self._channels.get(channel)
        return ch is not None and ch.maybe_counted

    # ------------------------------------------------------------------ subscriptions

    async def subscribe(
        self, mailbox_ids: Sequence[bytes] = (), *, max_queue: int | None = None
    ) -> RedisSubscription:
        """A new subscription to *mailbox_ids* (live on every node when this returns).

        Raises:
            ValueError: a bad id or ``max_queue < 1``. TransportError: the bus is closed.
        """
        for mailbox_id in mailbox_ids:
            check_id("mailbox_id", mailbox_id, MAILBOX_ID_LEN)
        inner = await self._local.subscribe(max_queue=max_queue)
        sub = RedisSubscription(self, inner)
        self._subs[sub] = None
        try:
            await sub._add_many(mailbox_ids)
        except BaseException:
            await sub.close()
            raise
        return sub

    async def _retain(self, mailbox_ids: Iterable[bytes]) -> None:
        """Count a local follower of each mailbox; wait for its SUBSCRIBE if one is due."""
        waits: list[asyncio.Future[None]] = []
        names: list[bytes] = []
        loop = asyncio.get_running_loop()
        for mailbox_id in mailbox_ids:
            name = self._mb_prefix + mailbox_id.hex().encode()
            ch = self._channels.get(name)
            if ch is None:
                ch = self._channels[name] = _Channel(name)
            ch.refs += 1
            if ch.refs == 1 and self._conn is not None:
                future: asyncio.Future[None] = loop.create_future()
                ch.waiters.append(future)
                names.append(name)
                waits.append(future)
            elif ch.waiters:
                waits.append(ch.waiters[-1])
        if names:
            self._command(b"SUBSCRIBE", *names)
        if waits:
            _, pending = await asyncio.wait(waits, timeout=_CONFIRM_TIMEOUT_S)
            if pending:
                _log.warning("redis bus: SUBSCRIBE not confirmed within %.0f s",
                             _CONFIRM_TIMEOUT_S)

    def _release(self, mailbox_id: bytes) -> None:
        ch = self._channels.get(self._mb_prefix + mailbox_id.hex().encode())
        if ch is None or self._closed:
            return
        ch.refs -= 1
        if ch.refs == 0:
            if self._conn is not None and (ch.live or ch.waiters):
                ch.unsubs += 1
                self._command(b"UNSUBSCRIBE", ch.name)
            self._drop_if_idle(ch)

    def _drop_if_idle(self, ch: _Channel) -> None:
        if ch.refs == 0 and not ch.maybe_counted:
            self._channels.pop(ch.name, None)

    def _command(self, *args: bytes) -> None:
        """Queue a command for the live pub/sub connection (sent in order, in batches)."""
        self._outbox.append(args)
        if self._writer is None:
            self._writer = asyncio.get_running_loop().create_task(self._write())

    async def _write(self) -> None:
        try:
            while self._outbox:
                commands, self._outbox = self._outbox, []
                conn = self._conn
                if conn is None:
                    continue  # the next session subscribes whatever is wanted then
                # On failure redis-py closes the connection: the listener's read fails
                # and the session reconnects, re-subscribes and RESYNCs.
                with contextlib.suppress(RedisError, OSError):
                    await conn.send_packed_command(conn.pack_commands(commands),
                                                   check_health=False)
        finally:
            self._writer = None

    # ------------------------------------------------------------------ the listener

    async def _supervise(self) -> None:
        retry = Retry(EqualJitterBackoff(cap=_BACKOFF_CAP_S, base=_BACKOFF_BASE_S), -1)
        while True:
            try:
                await retry.call_with_retry(self._session, self._session_failed)
            except Exception as exc:  # a bug must not end the listener for good
                _log.error("redis bus: listener failed (%s); restarting", type(exc).__name__)
                await asyncio.sleep(_BACKOFF_CAP_S)

    async def _session_failed(self, error: Exception) -> None:
        if not self._outage and self._ready.is_set():
            self._outage = True
            _log.warning("redis bus: pub/sub connection lost (%s); serving local "
                         "subscribers, reconnecting", type(error).__name__)

    async def _session(self) -> None:
        """One pub/sub connection: subscribe everything, then read until it fails.
        Returns after a healthy session (the supervisor then reconnects at once)."""
        loop = asyncio.get_running_loop()
        conn = self._connection(self._ps_name)
        started = loop.time()
        ready = False
        error: Exception = RedisConnectionError("closed")
        try:
            await _connect(conn)
            await self._sync(conn)
            self._go_live(conn)
            ready = True
            await self._read_loop(conn)
        except (RedisError, OSError) as exc:
            error = exc
        finally:
            self._lost()
            await conn.disconnect(nowait=True)
        if ready and loop.time() - started >= _STABLE_S:
            await self._session_failed(error)
            return
        raise RedisConnectionError(type(error).__name__) from error

    async def _sync(self, conn: AbstractConnection) -> None:
        """SUBSCRIBE every wanted channel (including ones wanted meanwhile) and wait for
        the confirmations, delivering messages that arrive in between."""
        loop = asyncio.get_running_loop()
        while True:
            todo = [ch for ch in self._channels.values()
                    if ch.refs > 0 and not ch.live and not ch.waiters]
            if not todo:
                return
            futures = []
            for ch in todo:
                future: asyncio.Future[None] = loop.create_future()
                ch.waiters.append(future)
                futures.append(future)
            commands = [(b"SUBSCRIBE", *(ch.name for ch in todo[i:i + _SUBSCRIBE_CHUNK]))
                        for i in range(0, len(todo), _SUBSCRIBE_CHUNK)]
            await conn.send_packed_command(conn.pack_commands(commands), check_health=False)
            while not all(f.done() for f in futures):
                reply = await conn.read_response(timeout=_PING_INTERVAL_S * 2)
                if reply is None:
                    raise RedisConnectionError("no SUBSCRIBE confirmation")
                await self._dispatch(reply)

    def _go_live(self, conn: AbstractConnection) -> None:
        self._conn = conn
        for ch in list(self._channels.values()):
            if ch.refs == 0 and (ch.live or ch.waiters) and not ch.unsubs:
                ch.unsubs += 1
                self._command(b"UNSUBSCRIBE", ch.name)
        if self._ready.is_set():  # a reconnect: hints may have been missed meanwhile
            self._reconnects += 1
            for sub in self._subs:
                for mailbox_id in sub._ids:
                    sub.resync(mailbox_id)
            if self._outage:
                self._outage = False
                _log.info("redis bus: pub/sub connection restored")
        self._ready.set()

    def _lost(self) -> None:
        """The pub/sub connection is gone: the server forgot its subscriptions."""
        self._conn = None
        self._outbox.clear()
        for ch in list(self._channels.values()):
            for future in ch.waiters:  # released: the reconnect's RESYNC covers them
                if not future.done():
                    future.set_result(None)
            ch.waiters.clear()
            ch.live = False
            ch.unsubs = 0
            self._drop_if_idle(ch)

    async def _read_loop(self, conn: AbstractConnection) -> None:
        pinged = False
        while True:
            reply = await conn.read_response(timeout=_PING_INTERVAL_S)
            if reply is None:
                if pinged:
                    raise RedisConnectionError("no answer to PING")
                pinged = True
                self._command(b"PING")
                continue
            pinged = False
            await self._dispatch(reply)

    async def _dispatch(self, reply: object) -> None:
        if not isinstance(reply, list) or len(reply) < 2:
            self._bad += 1
            return
        kind, channel = reply[0], reply[1]
        if kind == b"message" and len(reply) == 3:
            await self._on_message(channel, reply[2])
        elif kind == b"subscribe":
            ch = self._channels.get(channel)
            if ch is not None:
                ch.live = True
                if ch.waiters:
                    future = ch.waiters.popleft()
                    if not future.done():
                        future.set_result(None)
        elif kind == b"unsubscribe":
            ch = self._channels.get(channel)
            if ch is not None:
                ch.unsubs = max(ch.unsubs - 1, 0)
                ch.live = False
                self._drop_if_idle(ch)
        elif kind != b"pong":
            self._bad += 1

    async def _on_message(self, channel: bytes, data: object) -> None:
        if not isinstance(data, bytes) or len(data) < _HEAD_LEN or data[0] != _ENVELOPE_VERSION:
            self._bad += 1
            return
        if data[1:_HEAD_LEN] == self._origin:
            return  # our own publish: local subscribers had it in the publisher's turn
        body = data[_HEAD_LEN:]
        if channel == self._inv.name:
            if len(body) != MAILBOX_ID_LEN:
                self._bad += 1
                return
            for handler in self._handlers:
                try:
                    handler(body)
                except Exception as exc:  # one handler's bug must not stop the listener
                    _log.error("redis bus: invalidation handler failed (%s)",
                               type(exc).__name__)
            return
        try:
            mailbox_id, note = decode_notification(body)
        except PigeonError:
            self._bad += 1
            return
        if channel != self._mb_prefix + mailbox_id.hex().encode():
            self._bad += 1  # a message naming another mailbox than its channel's
            return
        self._received += 1
        await self._local.publish(mailbox_id, note)

    # ------------------------------------------------------------------ the rest

    def subscribers(self, mailbox_id: bytes) -> int:
        """How many local subscriptions listen to *mailbox_id*."""
        return self._local.subscribers(mailbox_id)

    def stats(self) -> RedisBusStats:
        local = self._local.stats()
        return RedisBusStats(
            published=self._published,
            delivered=local.delivered,
            dropped=local.dropped,
            coalesced=local.coalesced,
            subscriptions=local.subscriptions,
            received=self._received,
            remote_takers=self._remote_takers,
            stripped=self._stripped,
            publish_failures=self._publish_failures,
            reconnects=self._reconnects,
            bad_messages=self._bad,
            channels=sum(ch.live for ch in self._channels.values()) - self._inv.live,
        )

    async def close(self) -> None:
        """Close every subscription and both connections. Idempotent."""
        if self._closed:
            return
        self._closed = True
        tasks = [t for t in (self._supervisor, self._writer, self._flusher) if t is not None]
        for task in tasks:
            task.cancel()
        await asyncio.gather(*tasks, return_exceptions=True)
        for _, _, future in self._batch:
            if not future.done():
                future.set_result(0)
        self._batch.clear()
        await self._local.close()
        self._subs.clear()
        await self._pub.disconnect()
        await self._pool.disconnect()


async def _connect(conn: AbstractConnection) -> None:
    await conn.connect()  # type: ignore[no-untyped-call]


def _pack_publish(channel: bytes, data: bytes) -> bytes:
    """``PUBLISH channel data`` in RESP (redis-py's generic packer costs more per command
    than the whole round trip share of a batched one)."""
    return b"".join((b"*3\r\n$7\r\nPUBLISH\r\n$", str(len(channel)).encode(), b"\r\n",
                     channel, b"\r\n$", str(len(data)).encode(), b"\r\n", data, b"\r\n"))


def _conforms(bus: RedisBus, sub: RedisSubscription) -> tuple[Bus, Subscription]:
    return bus, sub  # pragma: no cover - checked by mypy
