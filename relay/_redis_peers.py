"""Heartbeats between :class:`relay.bus_redis.RedisBus` nodes: which peers are alive,
and when hints from them may have been lost (the wire layout is in
:mod:`relay._redis_wire`; the guarantee in :mod:`relay.bus_redis`).

A node beats every ``heartbeat_s``. A peer silent past its deadline (``peer_timeout_s``,
or three of its own periods if longer) is gone; a heartbeat flagged LOST says its sender
failed to publish. Either calls ``resync()``. A heartbeat flagged HELLO (its sender
(re)joined and knows no peer) is answered at once. No peer is blamed while this node
cannot listen (its pub/sub connection is down, or its event loop stalled).

A beat carries its sender's wall clock (strictly increasing per origin). One more than
:data:`~relay._redis_wire.MAX_CLOCK_SKEW_MS` off this node's clock, or not newer than
the last taken from its origin, is refused (``stale``): a captured beat replayed by
whoever can publish on Redis (its tag is genuine) neither keeps a dead peer alive nor
makes every node RESYNC again.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
from collections.abc import Callable
from typing import Final

from ._redis_wire import HEAD_LEN, MAX_CLOCK_SKEW_MS, decode_heartbeat, encode_heartbeat

_log = logging.getLogger("pigeon.relay.bus_redis")

MISSED_BEATS: Final = 3
"""A peer with a longer period than ours gets this many of its own before it is gone."""


class Peers:
    """The other nodes heard from, with the time each is declared gone (no I/O: the
    caller passes the clock). Least recently heard first."""

    def __init__(self, timeout_s: float, limit: int) -> None:
        self._timeout_s = timeout_s
        self._limit = limit
        self._deadlines: dict[bytes, float] = {}
        self._last_ms: dict[bytes, int] = {}
        """The newest ``sent_ms`` taken from each origin (gone ones too) within the
        clock window, least recently taken first: anything older is a replay."""

    def took(self, origin: bytes, sent_ms: int, now_ms: int) -> bool:
        """Whether a beat *origin* sent at *sent_ms* is fresh (then it is noted): within
        :data:`MAX_CLOCK_SKEW_MS` of *now_ms* and newer than the last one taken."""
        if abs(now_ms - sent_ms) > MAX_CLOCK_SKEW_MS:
            return False
        last = self._last_ms.get(origin)
        if last is not None and sent_ms <= last:
            return False
        self._last_ms.pop(origin, None)
        self._last_ms[origin] = sent_ms
        while True:  # forget what the window refuses anyway (only real nodes get here)
            oldest = next(iter(self._last_ms))
            if self._last_ms[oldest] >= now_ms - MAX_CLOCK_SKEW_MS:
                return True
            del self._last_ms[oldest]

    def __len__(self) -> int:
        return len(self._deadlines)

    def heard(self, origin: bytes, now: float, interval_s: float) -> int:
        """Note a heartbeat; returns how many peers were dropped to make room."""
        deadline = now + max(self._timeout_s, MISSED_BEATS * interval_s)
        if self._deadlines.pop(origin, None) is not None or len(self._deadlines) < self._limit:
            self._deadlines[origin] = deadline
            return 0
        del self._deadlines[next(iter(self._deadlines))]
        self._deadlines[origin] = deadline
        return 1

    def expire(self, now: float) -> int:
        """Forget the peers whose deadline passed; returns how many."""
        gone = [origin for origin, deadline in self._deadlines.items() if deadline <= now]
        for origin in gone:
            del self._deadlines[origin]
        return len(gone)

    def next_deadline(self) -> float:
        return min(self._deadlines.values(), default=float("inf"))

    def postpone(self, by_s: float) -> None:
        """This node could not listen for *by_s*: do not blame the others for it."""
        for origin in self._deadlines:
            self._deadlines[origin] += by_s

    def clear(self) -> None:
        self._deadlines.clear()


class Heartbeats:
    """One node's heartbeat task and peer table (see the module docstring)."""

    def __init__(self, head: bytes, *, heartbeat_s: float, peer_timeout_s: float,
                 max_peers: int, send: Callable[[bytes], None],
                 listening: Callable[[], bool], resync: Callable[[], None],
                 wall_ms: Callable[[], int] = lambda: time.time_ns() // 1_000_000) -> None:
        if not 0.001 <= heartbeat_s < peer_timeout_s:
            raise ValueError("need 0.001 <= heartbeat_s < peer_timeout_s")
        self._head = head
        self._heartbeat_s = heartbeat_s
        self._interval_ms = max(round(heartbeat_s * 1000), 1)
        self._peers = Peers(peer_timeout_s, max_peers)
        self._send = send
        self._listening = listening
        self._resync = resync
        self._wall_ms = wall_ms
        self._sent_ms = 0
        """The last beat's ``sent_ms``: the next one is later even if the clock is not."""
        self._now = asyncio.Event()
        self._hello = False
        """The next beat asks the others to answer (this node knows no peer)."""
        self._lost = False
        """The next beat says LOST (a publish failed or a connection was down)."""
        self._task: asyncio.Task[None] | None = None
        self.peers_lost = 0
        self.losses_announced = 0
        self.stale = 0

    @property
    def peers(self) -> int:
        return len(self._peers)

    def start(self) -> None:
        self._task = asyncio.get_running_loop().create_task(
            self._run(), name="pigeon-relay-bus-redis-heartbeat")

    def joined(self) -> None:
        """The pub/sub connection is (again) subscribed to the heartbeats: say HELLO."""
        self._hello = True
        self._now.set()

    def deaf(self, *, announce: bool) -> None:
        """The pub/sub connection is gone: nobody is heard, so nobody is blamed (the
        reconnect RESYNCs everything); *announce*: say LOST once Redis answers."""
        self._peers.clear()
        self._lost = self._lost or announce

    def publish_failed(self) -> None:
        self._lost = True

    def received(self, message: bytes) -> None:
        """A heartbeat message from another node, its tag checked (and removed).

        Raises:
            DecodeError: not a heartbeat.
        """
        beat = decode_heartbeat(message)
        origin = message[1:HEAD_LEN]
        if not self._peers.took(origin, beat.sent_ms, self._wall_ms()):
            if not self.stale:
                _log.warning("redis bus: a heartbeat was refused for its time (a replay, "
                             "or the clocks of two nodes differ by more than %d s)",
                             MAX_CLOCK_SKEW_MS // 1000)
            self.stale += 1
            return
        now = asyncio.get_running_loop().time()
        if self._peers.heard(origin, now, beat.interval_ms / 1000):
            self._gone(1)
        if beat.hello:
            self._now.set()  # the newcomer learns of this node within a round trip
        if beat.lost:
            self.losses_announced += 1
            _log.warning("redis bus: a peer node had lost publishes; resyncing local "
                         "subscriptions")
            self._resync()

    def _gone(self, n: int) -> None:
        self.peers_lost += n
        _log.warning("redis bus: %d peer node(s) went silent; resyncing local subscriptions",
                     n)
        self._resync()

    async def _run(self) -> None:
        loop = asyncio.get_running_loop()
        next_beat = loop.time()
        while True:
            now = loop.time()
            if now >= next_beat or self._now.is_set():
                self._now.clear()
                self._sent_ms = max(self._wall_ms(), self._sent_ms + 1)
                data = encode_heartbeat(self._head, hello=self._hello, lost=self._lost,
                                        interval_ms=self._interval_ms, sent_ms=self._sent_ms)
                self._hello = self._lost = False  # a failed PUBLISH sets LOST again
                self._send(data)
                next_beat = now + self._heartbeat_s
            wake = next_beat
            if self._listening():  # deaf, it blames no one: past deadlines must not spin it
                wake = min(wake, self._peers.next_deadline())
            with contextlib.suppress(TimeoutError):
                async with asyncio.timeout(max(wake - now, 0.0)):
                    await self._now.wait()
            late = loop.time() - wake
            if late > self._heartbeat_s:  # this loop stalled, and its listener with it:
                self._peers.postpone(late + self._heartbeat_s)  # a period to hear them
            if self._listening():
                gone = self._peers.expire(loop.time())
                if gone:
                    self._gone(gone)

    async def close(self) -> None:
        if self._task is not None:
            self._task.cancel()
            await asyncio.gather(self._task, return_exceptions=True)

