"""The two Redis connections of one :class:`relay.bus_redis.RedisBus` node.

* :class:`Publisher`: coalesced, pipelined ``PUBLISH`` on one connection, one batch at a
  time (the next collects while one is in flight), each caller with its own receiver
  count; a failed batch counts 0 and is never raised into the send path.
* :class:`PubSub`: the pub/sub connection. Channels are reference counted (SUBSCRIBE on
  the first local follower, UNSUBSCRIBE after the last); :meth:`PubSub.retain` returns
  once Redis confirmed the SUBSCRIBE. A supervisor re-opens a lost connection with
  jittered exponential backoff, re-subscribes everything and tells the bus
  (``on_live(reconnected=True)``), which RESYNCs.

Neither knows what the messages mean (:mod:`relay.bus_redis` does).
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections import deque
from collections.abc import Awaitable, Callable, Iterable, Sequence
from typing import Final

from redis.asyncio.connection import AbstractConnection
from redis.asyncio.retry import Retry
from redis.backoff import EqualJitterBackoff
from redis.exceptions import ConnectionError as RedisConnectionError
from redis.exceptions import RedisError, ResponseError
from redis.exceptions import TimeoutError as RedisTimeoutError

_log = logging.getLogger("pigeon.relay.bus_redis")

PING_INTERVAL_S: Final = 5.0
"""An idle pub/sub connection is PINGed after this; no answer within as long again: lost."""
CONFIRM_TIMEOUT_S: Final = 10.0
"""Longest ``retain`` waits for a SUBSCRIBE confirmation (a lost connection ends it sooner)."""
IO_TIMEOUT_S: Final = 5.0
"""Publisher deadline: bounds how long a send path waits on an unresponsive Redis."""
_BACKOFF_BASE_S: Final = 0.05
_BACKOFF_CAP_S: Final = 5.0
_STABLE_S: Final = 1.0
"""A session that lasted this long was healthy: reconnect at once, then back off again."""
_SUBSCRIBE_CHUNK: Final = 1000
"""Channels per SUBSCRIBE command when re-subscribing everything."""

_Pending = tuple[bytes, bytes, "asyncio.Future[int]"]


HANDSHAKE_TIMEOUT_S: Final = 5.0
"""Connecting and the handshake (CLIENT SETNAME, AUTH): redis-py bounds only the TCP
connect, and a server that accepts and then stays silent (a load balancer whose backend
died, a stopped Redis) would hold the caller for ever."""


async def connect(conn: AbstractConnection) -> None:
    """Open *conn*; raise ``redis.exceptions.ConnectionError`` when it takes longer than
    :data:`HANDSHAKE_TIMEOUT_S`."""
    try:
        async with asyncio.timeout(HANDSHAKE_TIMEOUT_S):
            await conn.connect()  # type: ignore[no-untyped-call]
    except TimeoutError:
        await conn.disconnect(nowait=True)
        raise RedisConnectionError("no answer to the handshake") from None


class Publisher:
    """Pipelined PUBLISH on one connection (see the module docstring)."""

    def __init__(self, conn: AbstractConnection, *, maybe_counted: Callable[[bytes], bool],
                 listening: Callable[[], bool], on_failure: Callable[[], None],
                 quiet: bytes) -> None:
        self._conn = conn
        self._maybe_counted = maybe_counted
        """Whether the server may count this node among a channel's receivers."""
        self._listening = listening
        """Whether the pub/sub connection is live (a sign Redis answers)."""
        self._on_failure = on_failure
        self._quiet = quiet
        """A channel whose failures ``failures`` does not count (the heartbeats)."""
        self._batch: list[_Pending] = []
        self._flusher: asyncio.Task[None] | None = None
        self._down = False
        self.remote_takers = 0
        self.failures = 0

    def enqueue(self, channel: bytes, data: bytes) -> asyncio.Future[int]:
        """PUBLISH *data* on *channel* with this iteration's batch; the future gets the
        receivers other than this node (0 if it failed)."""
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
                    if channel != self._quiet:  # heartbeats are no notification's takers
                        self.remote_takers += count
                    if not future.done():
                        future.set_result(count)
                batch = []
        finally:
            for _, _, future in batch + self._batch:  # cancelled (closing): nobody else
                if not future.done():
                    future.set_result(0)
            self._flusher = None

    async def _send(self, batch: list[_Pending]) -> list[int]:
        if self._down and not self._listening():
            # Both connections failed: Redis is down. Skip it until the listener is
            # back rather than make every send path wait for a connect timeout.
            self._failed(batch)
            return [0] * len(batch)
        try:
            results = await self._pipeline(self._pack(batch), len(batch))
        except (RedisError, OSError, TimeoutError) as exc:
            self._failed(batch)
            if not self._down:
                self._down = True
                _log.warning("redis bus: publish failed (%s); other nodes miss hints until "
                             "Redis answers", type(exc).__name__)
            return [0] * len(batch)
        if self._down:
            self._down = False
            _log.info("redis bus: publishing again")
        refused = [item for item, r in zip(batch, results, strict=True) if r < 0]
        if refused:
            self._failed(refused)
        return [max(r, 0) for r in results]

    def _pack(self, batch: list[_Pending]) -> list[bytes]:
        """The batch's PUBLISH commands in RESP, by redis-py's packer (packing by hand
        cost 6x less per command but did not make publishing clearly faster:
        ``bench.bus``, docs/benchmarks.md)."""
        return self._conn.pack_commands([(b"PUBLISH", channel, data)
                                         for channel, data, _ in batch])

    def _failed(self, batch: list[_Pending]) -> None:
        self.failures += sum(channel != self._quiet for channel, _, _ in batch)
        self._on_failure()

    async def _pipeline(self, packed: list[bytes], replies: int) -> list[int]:
        """Send *packed* PUBLISH commands, read their receiver counts (-1: refused).
        Once more on a fresh connection if the first one failed (a PUBLISH repeated after
        a lost reply duplicates a hint, which consumers tolerate)."""
        conn = self._conn
        for attempt in (1, 2):
            try:
                async with asyncio.timeout(IO_TIMEOUT_S):
                    if not conn.is_connected:
                        await connect(conn)
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

    async def close(self) -> None:
        """Stop sending; every pending publish counts 0."""
        if self._flusher is not None:
            self._flusher.cancel()
            await asyncio.gather(self._flusher, return_exceptions=True)
        for _, _, future in self._batch:
            if not future.done():
                future.set_result(0)
        self._batch.clear()
        await self._conn.disconnect()


class _Channel:
    """This node's view of one channel on its pub/sub connection."""

    __slots__ = ("live", "name", "refs", "unsubs", "waiters")

    def __init__(self, name: bytes) -> None:
        self.name = name
        self.refs = 0
        """Local followers (a fixed channel: always 1)."""
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


class PubSub:
    """The pub/sub connection and its supervisor (see the module docstring). Commands
    and confirmations travel in order on the one connection, so each confirmation is
    matched to the oldest unconfirmed SUBSCRIBE of its channel."""

    def __init__(self, make_connection: Callable[[], AbstractConnection], *,
                 fixed: Sequence[bytes],
                 on_message: Callable[[bytes, object], Awaitable[None]],
                 on_live: Callable[[bool], None], on_lost: Callable[[], None]) -> None:
        self._make_connection = make_connection
        self._fixed = frozenset(fixed)
        self._channels: dict[bytes, _Channel] = {}
        for name in fixed:
            self._channels[name] = _Channel(name)
            self._channels[name].refs = 1
        self._on_message = on_message
        self._on_live = on_live
        self._on_lost = on_lost
        self._conn: AbstractConnection | None = None  # set once every channel is live
        self._outbox: list[tuple[bytes, ...]] = []
        self._writer: asyncio.Task[None] | None = None
        self._supervisor: asyncio.Task[None] | None = None
        self.ready = asyncio.Event()
        """Set once the first session subscribed everything."""
        self._outage = False
        self._closed = False
        self.reconnects = 0
        self.bad = 0

    @property
    def live(self) -> bool:
        """Every wanted channel is subscribed on a working connection."""
        return self._conn is not None

    @property
    def channels(self) -> int:
        """Channels subscribed now, the fixed ones excepted."""
        return sum(ch.live for ch in self._channels.values() if ch.name not in self._fixed)

    def maybe_counted(self, name: bytes) -> bool:
        ch = self._channels.get(name)
        return ch is not None and ch.maybe_counted

    def start(self) -> None:
        self._supervisor = asyncio.get_running_loop().create_task(
            self._supervise(), name="pigeon-relay-bus-redis")

    async def retain(self, names: Iterable[bytes]) -> None:
        """Count a local follower of each channel; wait for its SUBSCRIBE if one is due."""
        waits: list[asyncio.Future[None]] = []
        todo: list[bytes] = []
        loop = asyncio.get_running_loop()
        for name in names:
            ch = self._channels.get(name)
            if ch is None:
                ch = self._channels[name] = _Channel(name)
            ch.refs += 1
            if ch.refs == 1 and self._conn is not None:
                future: asyncio.Future[None] = loop.create_future()
                ch.waiters.append(future)
                todo.append(name)
                waits.append(future)
            elif ch.waiters:
                waits.append(ch.waiters[-1])
        if todo:
            self._command(b"SUBSCRIBE", *todo)
        if waits:
            _, pending = await asyncio.wait(waits, timeout=CONFIRM_TIMEOUT_S)
            if pending:
                _log.warning("redis bus: SUBSCRIBE not confirmed within %.0f s",
                             CONFIRM_TIMEOUT_S)

    def release(self, name: bytes) -> None:
        ch = self._channels.get(name)
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
        """Queue a command for the live connection (sent in order, in batches)."""
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

    async def _supervise(self) -> None:
        retry = Retry(EqualJitterBackoff(cap=_BACKOFF_CAP_S, base=_BACKOFF_BASE_S), -1)
        while True:
            try:
                await retry.call_with_retry(self._session, self._session_failed)
            except Exception as exc:  # a bug must not end the listener for good
                _log.error("redis bus: listener failed (%s); restarting", type(exc).__name__)
                await asyncio.sleep(_BACKOFF_CAP_S)

    async def _session_failed(self, error: Exception) -> None:
        if not self._outage and self.ready.is_set():
            self._outage = True
            _log.warning("redis bus: pub/sub connection lost (%s); serving local "
                         "subscribers, reconnecting", type(error).__name__)

    async def _session(self) -> None:
        """One connection: subscribe everything, then read until it fails. Returns after
        a healthy session (the supervisor then reconnects at once)."""
        loop = asyncio.get_running_loop()
        conn = self._make_connection()
        started = loop.time()
        ready = False
        error: Exception = RedisConnectionError("closed")
        try:
            await connect(conn)
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
        the confirmations, handing on messages that arrive in between."""
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
                reply = await conn.read_response(timeout=PING_INTERVAL_S * 2)
                if reply is None:
                    raise RedisConnectionError("no SUBSCRIBE confirmation")
                await self._dispatch(reply)

    def _go_live(self, conn: AbstractConnection) -> None:
        self._conn = conn
        for ch in list(self._channels.values()):
            if ch.refs == 0 and (ch.live or ch.waiters) and not ch.unsubs:
                ch.unsubs += 1
                self._command(b"UNSUBSCRIBE", ch.name)
        reconnected = self.ready.is_set()
        if reconnected:
            self.reconnects += 1
            if self._outage:
                self._outage = False
                _log.info("redis bus: pub/sub connection restored")
        self._on_live(reconnected)
        self.ready.set()

    def _lost(self) -> None:
        """The connection is gone: the server forgot its subscriptions."""
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
        self._on_lost()

    async def _read_loop(self, conn: AbstractConnection) -> None:
        pinged = False
        while True:
            reply = await conn.read_response(timeout=PING_INTERVAL_S)
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
            self.bad += 1
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
            self.bad += 1

    async def close(self) -> None:
        """Stop the supervisor and the writer (their connection closes with them)."""
        self._closed = True
        tasks = [t for t in (self._supervisor, self._writer) if t is not None]
        for task in tasks:
            task.cancel()
        await asyncio.gather(*tasks, return_exceptions=True)
