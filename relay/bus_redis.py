"""A Redis pub/sub :class:`~relay.ports.Bus`: relay nodes sharing one database deliver
each other's notifications.

Theory of operation (docs/protocol.md §10.13; the semantics are :mod:`relay.bus`'s):

* **Local first.** Every node composes an :class:`~relay.bus.InProcessBus`. ``publish``
  offers the notification to this node's subscriptions in the publisher's turn (bounded
  queues, EPHEMERAL dropped and MESSAGE coalesced into RESYNC when full, the
  ``set_direct`` fast path), then PUBLISHes it on the mailbox's channel
  ``<prefix>:mb:<hex id>`` for the other nodes, which hand it to their own in-process bus
  the same way. The return value is local takers plus the other nodes that had a
  subscriber (PUBLISH's receiver count, less this node when it may be counted), so 0
  still means "nobody anywhere is listening".
* **One pub/sub connection per node** (:class:`relay._redis_conn.PubSub`). It SUBSCRIBEs
  to a mailbox channel while at least one local subscription follows the mailbox
  (reference counted). :meth:`RedisSubscription.add` returns once Redis confirmed the
  SUBSCRIBE, so a hint published after it returns reaches this node (the delivery pump
  reads the store backlog right after ``add``).
* **Coalesced publishes** (:class:`relay._redis_conn.Publisher`). Publishes queue up
  during an event-loop iteration and go to Redis pipelined on one publisher connection,
  one batch at a time, so a batch of N costs one round trip and the per-mailbox order is
  kept. A caller that awaits each publish before the next still pays a round trip each:
  :meth:`RedisBus.publish_many` sends a group's copies in one.
* **Wire** (:mod:`relay._redis_wire` has the tables). Every message is ``version`` (1
  byte, ``2``) ‖ ``origin`` (8 random bytes per node: a node skips its own) ‖ body ‖
  ``tag`` (16 bytes: HMAC-SHA256 of all before it, truncated, under the bus key, which
  every node derives from the deployment's token secret: :func:`relay._redis_wire.bus_key`).
  The body is an :func:`~relay.bus.encode_notification` on a mailbox channel, a 16-byte
  mailbox id on ``<prefix>:inv``, ``0x61`` and a 16-byte account id on ``<prefix>:acct``, a
  heartbeat on ``<prefix>:hb``: ``flags`` (1 byte:
  bit 0 HELLO, bit 1 LOST) ‖ ``interval_ms`` (u32) ‖ ``sent_ms`` (u64, the sender's
  wall clock). A durable notification whose payload exceeds :data:`REMOTE_PAYLOAD_MAX`
  goes without its payload (the consumer reads the store); an oversized EPHEMERAL one
  is not sent to other nodes. A message whose tag does not verify is counted
  (``forged``) and dropped unread; one of another version, or that does not decode, is
  counted (``bad_messages``) and dropped. So whoever can PUBLISH on Redis without the
  token secret cannot inject a hint, an invalidation, a session revocation or a
  heartbeat. It can replay a captured one: a hint names a seq consumers already have,
  or an ephemeral the client drops as a duplicate; an invalidation costs a cache miss;
  a session revocation closes that account's sessions on other nodes (were it registered
  again, its clients reconnect; the store is untouched); a heartbeat is refused when it
  is not newer than the last one of its origin or more than 30 s off this node's clock
  (``stale_beats``; nodes' clocks must agree within that).
* **Outages.** Local subscribers are served throughout. The pub/sub connection is
  re-opened with jittered exponential backoff; once every channel is subscribed again,
  each local subscription gets a RESYNC for each of its mailboxes and the
  ``on_invalidate`` handlers get None (hints and invalidations may have been missed). A
  failed PUBLISH counts 0 remote takers and is never raised into the send path.
  Warnings are logged once per outage and never name a mailbox or carry a payload.
* **Heartbeats: hints lost by other nodes.** Every node publishes a heartbeat every
  ``heartbeat_s`` (:data:`HEARTBEAT_S`) and tracks the peers it hears (at most
  :data:`MAX_PEERS`). Two events make every local subscription RESYNC each of its
  mailboxes and the ``on_invalidate`` handlers get None:

  - a peer not heard for ``peer_timeout_s`` (:data:`PEER_TIMEOUT_S`, or three of its
    own intervals if longer) is declared gone: it may have died (``kill -9``) after
    answering ``Sent`` and before its batch of hints reached Redis;
  - a heartbeat flagged LOST: its sender had failed PUBLISHes or a connection down, and
    says so on its first heartbeat that reaches Redis again.

  So a live recipient on another node gets a committed envelope within about
  ``PEER_TIMEOUT_S`` plus a store read even if the sending node dies before its hint.
  A node (re)joining flags its heartbeat HELLO and the others answer at once, so it
  knows its peers within a round trip. While its own pub/sub connection is down a node
  declares no peer gone (it RESYNCs everything on reconnecting anyway). Heartbeats alone
  never cause a RESYNC. They cost one small PUBLISH per node per period, nothing per
  publish.
* **Invalidation.** :meth:`RedisBus.invalidate` tells the other nodes to forget what they
  cached about a mailbox (``on_invalidate`` handlers); it is best effort, like the hints.
* **Revoked sessions.** :meth:`RedisBus.sessions_revoked` tells the other nodes that an
  account was deleted or its identity rotated (``on_sessions_revoked`` handlers close
  its sessions there, as that node closes its own); best effort too: a session a lost
  message leaves open can do nothing with an account the store no longer has, nor
  change an account whose current key it did not prove.
* **Subscriptions taken.** :meth:`RedisBus.subscriptions_taken` tells the other nodes
  which mailboxes a connection here just subscribed, and when (this node's clock);
  a node whose connection subscribed one earlier (or in the same millisecond, from the
  node with the smaller origin tag) stops delivering it there, as a node does for its
  own connections. A replay of an old one finds every later subscription newer and
  changes nothing; a lost one leaves a mailbox delivered twice (clients drop
  duplicates).
"""

from __future__ import annotations

import asyncio
import logging
import secrets
from collections.abc import AsyncIterator, Callable, Iterable, Sequence
from dataclasses import dataclass
from typing import Final

from redis.asyncio import ConnectionPool
from redis.asyncio.connection import AbstractConnection
from redis.asyncio.retry import Retry
from redis.backoff import NoBackoff
from redis.exceptions import RedisError

from pigeon_crypto.errors import (
    InvalidSignature,
    PigeonError,
    TransportError,
    UnsupportedVersion,
)

from ._redis_conn import Publisher, PubSub, connect
from ._redis_peers import Heartbeats
from ._redis_wire import ACCOUNT_GONE, HEAD_LEN, ORIGIN_LEN, SUBSCRIBED, Tagger, head
from .bus import (
    DEFAULT_MAX_QUEUE,
    MAX_NOTIFICATION_PAYLOAD,
    InProcessBus,
    InProcessSubscription,
    decode_notification,
    encode_notification,
)
from .ports import ACCOUNT_ID_LEN, MAILBOX_ID_LEN, Bus, Notification, Subscription, check_id

__all__ = [
    "HEARTBEAT_S",
    "MAX_PEERS",
    "PEER_TIMEOUT_S",
    "REMOTE_PAYLOAD_MAX",
    "RedisBus",
    "RedisBusStats",
    "RedisSubscription",
]

_log = logging.getLogger("pigeon.relay.bus_redis")

REMOTE_PAYLOAD_MAX: Final = 64 * 1024
"""Largest payload sent to other nodes: a hint stays small in Redis's output buffers
(a subscriber's buffer overflow disconnects it); bigger blobs are read from the store."""
HEARTBEAT_S: Final = 1.0
"""Heartbeat period: one tiny PUBLISH a second per node is nothing for Redis."""
PEER_TIMEOUT_S: Final = 3.0
"""A peer silent this long is gone: three missed beats, so one slow beat is no loss."""
MAX_PEERS: Final = 256
"""Peers tracked: a deployment has a handful of nodes; forged origins on the heartbeat
channel must not grow memory (the least recently heard is dropped, as if gone)."""
_CONNECT_TIMEOUT_S: Final = 2.0
_OPEN_TIMEOUT_S: Final = 10.0


@dataclass(frozen=True, slots=True, kw_only=True)
class RedisBusStats:
    """Counters for metrics (monotonic since the bus opened, but ``subscriptions``,
    ``channels`` and ``peers``). The first five mean what :class:`relay.bus.BusStats`'s do."""

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
    """Other nodes that had a subscriber for this node's publishes (sum of counts; an
    invalidation or session revocation counts every other node)."""
    stripped: int
    """Sent to other nodes without their payload (larger than REMOTE_PAYLOAD_MAX)."""
    publish_failures: int
    """Notifications, invalidations and session revocations that did not reach Redis
    (heartbeats aside)."""
    reconnects: int
    bad_messages: int
    """Messages that did not decode or carry another wire version, dropped."""
    forged: int
    """Messages whose tag did not verify (no tag, a damaged one, another key), dropped."""
    stale_beats: int
    """Heartbeats refused for their time: replayed, or the sender's clock too far off."""
    channels: int
    """Mailbox channels this node's pub/sub connection is subscribed to now."""
    peers: int
    """Other nodes heard from recently."""
    peers_lost: int
    """Peers declared gone (silent too long): each RESYNCed every local subscription."""
    losses_announced: int
    """Heartbeats flagged LOST from other nodes: each RESYNCed every local subscription."""


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
        await self.add_many((mailbox_id,))

    async def add_many(self, mailbox_ids: Sequence[bytes]) -> None:
        """:meth:`add` for each of *mailbox_ids*, with one SUBSCRIBE for all of them."""
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

    def __init__(self, url: str, *, prefix: str, key: bytes,
                 max_queue: int = DEFAULT_MAX_QUEUE, heartbeat_s: float = HEARTBEAT_S,
                 peer_timeout_s: float = PEER_TIMEOUT_S) -> None:
        if not prefix or any(c.isspace() for c in prefix):
            raise ValueError("prefix must be a non-empty word")
        self._tagger = Tagger(key)
        self._forged = 0
        self._old_version_seen = False
        self._local = InProcessBus(max_queue=max_queue)
        self._origin = secrets.token_bytes(ORIGIN_LEN)
        self._head = head(self._origin)
        self._mb_prefix = f"{prefix}:mb:".encode()
        self._inv = f"{prefix}:inv".encode()
        self._acct = f"{prefix}:acct".encode()
        self._taken = f"{prefix}:sub".encode()
        self._hb = f"{prefix}:hb".encode()
        self._subs: dict[RedisSubscription, None] = {}
        self._handlers: list[Callable[[bytes | None], None]] = []
        self._account_handlers: list[Callable[[bytes], None]] = []
        self._taken_handlers: list[Callable[[Sequence[bytes], int, bool], None]] = []
        # Two connections, RESP2, no retries inside redis-py (the adapters retry) and no
        # per-read socket timeout (a publish batch has one deadline; the pub/sub
        # connection is idle by nature and PINGed instead).
        self._pool: ConnectionPool = ConnectionPool.from_url(
            url, protocol=2, retry=Retry(NoBackoff(), 0), socket_timeout=None,
            socket_connect_timeout=_CONNECT_TIMEOUT_S)
        pub = self._connection(f"{prefix}:pub:{self._origin.hex()}")
        ps_name = f"{prefix}:bus:{self._origin.hex()}"
        self._pubsub = PubSub(lambda: self._connection(ps_name),
                              fixed=(self._inv, self._acct, self._taken, self._hb),
                              on_message=self._on_message, on_live=self._on_live,
                              on_lost=self._on_lost)
        self._publisher = Publisher(pub, maybe_counted=self._pubsub.maybe_counted,
                                    listening=lambda: self._pubsub.live,
                                    on_failure=self._publish_failed, quiet=self._hb)
        self._beats = Heartbeats(self._head, heartbeat_s=heartbeat_s,
                                 peer_timeout_s=peer_timeout_s, max_peers=MAX_PEERS,
                                 send=self._send_beat, listening=lambda: self._pubsub.live,
                                 resync=self._resync_all)
        self._closed = False
        self._published = 0
        self._received = 0
        self._stripped = 0

    @classmethod
    async def open(cls, url: str, *, prefix: str = "pigeon", key: bytes,
                   heartbeat_s: float = HEARTBEAT_S,
                   peer_timeout_s: float = PEER_TIMEOUT_S) -> RedisBus:
        """Connect, subscribe to the invalidation and heartbeat channels and start the
        listener and the heartbeat. *key* is the bus key every node of the deployment
        shares (:func:`relay._redis_wire.bus_key` of the token secret): it tags what
        this node publishes and checks what it hears.

        Raises:
            TransportError: Redis did not answer within a few seconds.
            ValueError: a bad prefix or key, or ``heartbeat_s`` not below
            ``peer_timeout_s``.
        """
        bus = cls(url, prefix=prefix, key=key, heartbeat_s=heartbeat_s,
                  peer_timeout_s=peer_timeout_s)
        try:
            await connect(bus._publisher._conn)
            bus._pubsub.start()
            await asyncio.wait_for(bus._pubsub.ready.wait(), _OPEN_TIMEOUT_S)
        except (RedisError, OSError, TimeoutError) as exc:
            await bus.close()
            raise TransportError(f"redis bus: cannot connect ({type(exc).__name__})") from exc
        except BaseException:
            await bus.close()
            raise
        bus._beats.start()
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
        return local + await self._publisher.enqueue(
            self._channel(mailbox_id), wire)

    async def publish_many(self, items: Sequence[tuple[bytes, Notification]]) -> list[int]:
        """:meth:`publish` for each ``(mailbox_id, notification)``, in order, with one
        Redis round trip for all of them (a group send awaits this once, not N times)."""
        futures: list[asyncio.Future[int] | None] = []
        counts = []
        for mailbox_id, notification in items:
            wire = self._wire(mailbox_id, notification)
            self._published += 1
            counts.append(await self._local.publish(mailbox_id, notification))
            futures.append(None if wire is None or self._closed else self._publisher.enqueue(
                self._channel(mailbox_id), wire))
        for i, future in enumerate(futures):
            if future is not None:
                counts[i] += await future
        return counts

    async def invalidate(self, mailbox_id: bytes) -> None:
        """Tell every other node to forget what it cached about *mailbox_id* (its
        ``on_invalidate`` handlers run). Best effort: lost while Redis is unreachable
        (the next heartbeat that gets through says LOST, and they forget everything)."""
        check_id("mailbox_id", mailbox_id, MAILBOX_ID_LEN)
        if not self._closed:  # queued behind this node's earlier publishes; not awaited
            self._publisher.enqueue(self._inv, self._tagger.seal(self._head + mailbox_id))

    def on_invalidate(self, handler: Callable[[bytes | None], None]) -> None:
        """Call ``handler(mailbox_id)`` for each invalidation from another node, and
        ``handler(None)`` when invalidations may have been missed (this node's pub/sub
        connection was cut off, a peer went silent or announced lost publishes)."""
        self._handlers.append(handler)

    async def sessions_revoked(self, account_id: bytes) -> None:
        """Tell every other node that *account_id* was deleted or its identity rotated
        (its ``on_sessions_revoked`` handlers run: they close its sessions there).
        Returns once Redis took it, with whatever this node published before (it is
        rare; ``pigeon-relay admin`` closes the bus right after). Best effort, like an
        invalidation: lost while Redis is unreachable; a session left open on another
        node can do nothing with an account the store no longer has, nor change one
        whose current key it did not prove."""
        check_id("account_id", account_id, ACCOUNT_ID_LEN)
        if not self._closed:
            await self._publisher.enqueue(
                self._acct, self._tagger.seal(self._head + ACCOUNT_GONE + account_id))

    def on_sessions_revoked(self, handler: Callable[[bytes], None]) -> None:
        """Call ``handler(account_id)`` for each account whose sessions another node
        revoked."""
        self._account_handlers.append(handler)

    async def subscriptions_taken(self, mailbox_ids: Sequence[bytes], at_ms: int) -> None:
        """Tell every other node that a connection here subscribed *mailbox_ids* at
        *at_ms* (their ``on_subscriptions_taken`` handlers run). Queued behind this
        node's earlier publishes, not awaited. Best effort: a lost one leaves a mailbox
        delivered on two nodes (the client drops the duplicates), as before it existed."""
        for mailbox_id in mailbox_ids:
            check_id("mailbox_id", mailbox_id, MAILBOX_ID_LEN)
        if mailbox_ids and not self._closed:
            self._publisher.enqueue(self._taken, self._tagger.seal(
                self._head + SUBSCRIBED + at_ms.to_bytes(8, "big") + b"".join(mailbox_ids)))

    def on_subscriptions_taken(self, handler: Callable[[Sequence[bytes], int, bool], None]
                               ) -> None:
        """Call ``handler(mailbox_ids, at_ms, later_on_tie)`` for each subscription
        another node took; *later_on_tie*: that node's origin tag is the greater."""
        self._taken_handlers.append(handler)

    def _channel(self, mailbox_id: bytes) -> bytes:
        return self._mb_prefix + mailbox_id.hex().encode()

    def _wire(self, mailbox_id: bytes, n: Notification) -> bytes | None:
        if len(n.payload) > REMOTE_PAYLOAD_MAX:
            check_id("mailbox_id", mailbox_id, MAILBOX_ID_LEN)
            if len(n.payload) > MAX_NOTIFICATION_PAYLOAD:
                raise ValueError("notification payload too large")
            if not n.durable:
                return None  # nothing to fetch instead: other nodes do not get it
            self._stripped += 1
            n = Notification(kind=n.kind, seq=n.seq)
        return self._tagger.seal(self._head + encode_notification(mailbox_id, n))

    def _publish_failed(self) -> None:
        self._beats.publish_failed()

    def _send_beat(self, data: bytes) -> None:
        self._publisher.enqueue(self._hb, self._tagger.seal(data))

    def _connection(self, name: str) -> AbstractConnection:
        conn: AbstractConnection = self._pool.make_connection()  # type: ignore[no-untyped-call]
        conn.client_name = name
        return conn

    # ------------------------------------------------------------------ subscriptions

    async def subscribe(
        self, mailbox_ids: Sequence[bytes] = (), *, max_queue: int | None = None
    ) -> RedisSubscription:
        """A new subscription to *mailbox_ids* (live on every node when this returns).

        Raises:
            ValueError: a bad id or ``max_queue < 1``. TransportError: the bus is closed.
        """
        inner = await self._local.subscribe(max_queue=max_queue)
        sub = RedisSubscription(self, inner)
        self._subs[sub] = None
        try:
            await sub.add_many(mailbox_ids)
        except BaseException:
            await sub.close()
            raise
        return sub

    async def _retain(self, mailbox_ids: Iterable[bytes]) -> None:
        await self._pubsub.retain([self._channel(m) for m in mailbox_ids])

    def _release(self, mailbox_id: bytes) -> None:
        if not self._closed:
            self._pubsub.release(self._channel(mailbox_id))

    def _resync_all(self) -> None:
        """Hints may have been missed: every local subscription reads the store."""
        for sub in self._subs:
            for mailbox_id in sub._ids:
                sub.resync(mailbox_id)
        self._tell_handlers(None)

    def _tell_handlers(self, mailbox_id: bytes | None) -> None:
        for handler in self._handlers:
            try:
                handler(mailbox_id)
            except Exception as exc:  # one handler's bug must not stop the listener
                _log.error("redis bus: invalidation handler failed (%s)", type(exc).__name__)

    # ------------------------------------------------------------------ the listener

    def _on_live(self, reconnected: bool) -> None:
        """Every channel is subscribed (again): say HELLO; after an outage RESYNC (hints
        and invalidations may have been missed meanwhile)."""
        self._beats.joined()
        if reconnected:
            self._resync_all()

    def _on_lost(self) -> None:
        self._beats.deaf(announce=self._pubsub.ready.is_set())

    async def _on_message(self, channel: bytes, data: object) -> None:
        if not isinstance(data, bytes):
            self._pubsub.bad += 1
            return
        if data.startswith(self._head):
            return  # our own publish: local subscribers had it in the publisher's turn
        try:
            message = self._tagger.open(data)
        except InvalidSignature:
            self._refuse_forged()
            return
        except PigeonError as exc:
            self._pubsub.bad += 1
            if isinstance(exc, UnsupportedVersion):
                self._refuse_version()
            return
        if channel == self._hb:
            try:
                self._beats.received(message)
            except PigeonError:
                self._pubsub.bad += 1
            return
        body = message[HEAD_LEN:]
        if channel == self._inv:
            if len(body) != MAILBOX_ID_LEN:
                self._pubsub.bad += 1
                return
            self._tell_handlers(body)
            return
        if channel == self._acct:
            if len(body) != 1 + ACCOUNT_ID_LEN or body[:1] != ACCOUNT_GONE:
                self._pubsub.bad += 1
                return
            for handler in self._account_handlers:
                try:
                    handler(body[1:])
                except Exception as exc:  # as for invalidations: the listener goes on
                    _log.error("redis bus: account handler failed (%s)", type(exc).__name__)
            return
        if channel == self._taken:
            self._on_taken(message[1:HEAD_LEN], body)
            return
        try:
            mailbox_id, note = decode_notification(body)
        except PigeonError:
            self._pubsub.bad += 1
            return
        if channel != self._channel(mailbox_id):
            self._pubsub.bad += 1  # a message naming another mailbox than its channel's
            return
        self._received += 1
        await self._local.publish(mailbox_id, note)

    def _on_taken(self, origin: bytes, body: bytes) -> None:
        ids_len = len(body) - 9
        if (body[:1] != SUBSCRIBED or ids_len < MAILBOX_ID_LEN
                or ids_len % MAILBOX_ID_LEN):
            self._pubsub.bad += 1
            return
        at_ms = int.from_bytes(body[1:9], "big")
        ids = [body[i:i + MAILBOX_ID_LEN] for i in range(9, len(body), MAILBOX_ID_LEN)]
        later_on_tie = origin > self._origin
        for handler in self._taken_handlers:
            try:
                handler(ids, at_ms, later_on_tie)
            except Exception as exc:  # as for invalidations: the listener goes on
                _log.error("redis bus: subscription handler failed (%s)", type(exc).__name__)

    def _refuse_forged(self) -> None:
        if not self._forged:  # once: no content, no channel
            _log.warning("redis bus: a message with a bad tag was dropped (a node with "
                         "another token secret, or someone else publishing on this Redis)")
        self._forged += 1

    def _refuse_version(self) -> None:
        if not self._old_version_seen:
            _log.warning("redis bus: a message of another wire version was dropped (a "
                         "node of another relay version on this prefix?)")
        self._old_version_seen = True

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
            remote_takers=self._publisher.remote_takers,
            stripped=self._stripped,
            publish_failures=self._publisher.failures,
            reconnects=self._pubsub.reconnects,
            bad_messages=self._pubsub.bad,
            forged=self._forged,
            stale_beats=self._beats.stale,
            channels=self._pubsub.channels,
            peers=self._beats.peers,
            peers_lost=self._beats.peers_lost,
            losses_announced=self._beats.losses_announced,
        )

    async def close(self) -> None:
        """Close every subscription and both connections. Idempotent."""
        if self._closed:
            return
        self._closed = True
        await self._beats.close()
        await self._pubsub.close()
        await self._publisher.close()
        await self._local.close()
        self._subs.clear()
        await self._pool.disconnect()


def _conforms(bus: RedisBus, sub: RedisSubscription) -> tuple[Bus, Subscription]:
    return bus, sub  # pragma: no cover - checked by mypy
