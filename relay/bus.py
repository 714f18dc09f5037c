"""The in-process :class:`~relay.ports.Bus`: notifications to live mailbox subscriptions.

Theory of operation (DESIGN.md "Relay pipeline"):

* After a durable append commits, the server publishes ``MESSAGE(seq)`` for each recipient
  mailbox; an ephemeral signal is published as ``EPHEMERAL(payload)`` and never stored.
  ``publish`` returns how many subscriptions took it, so "route if subscribed, drop
  otherwise" is ``if await bus.publish(...) == 0: drop``.
* Each subscription has a **bounded** queue, so a slow recipient never blocks a publisher
  or another recipient. When the queue is full:

  - an EPHEMERAL notification is dropped and counted (``dropped``);
  - a MESSAGE notification is *coalesced*: the subscription remembers "mailbox X needs a
    resync" (at most one marker per mailbox, so memory stays bounded) and counts it
    (``coalesced``). ``get()`` yields ``RESYNC`` for X before anything else and discards
    X's stale queued MESSAGE hints. The consumer then fetches X from the store after the
    last seq it delivered. Nothing durable is lost: the store is the truth, the bus only
    says "look now".
  - control notifications (RESYNC, CLOSED) are always queued (rare, at most a few per
    mailbox).

* Consumers must tolerate hints out of order or already delivered (compare ``seq`` with
  the last seq delivered; per-mailbox seqs are dense, so a gap means "fetch").

A Redis adapter keeps the same semantics with one channel per mailbox and the
:func:`encode_notification` layout on the wire.
"""

from __future__ import annotations

import asyncio
from collections import deque
from collections.abc import AsyncIterator, Callable, Sequence
from dataclasses import dataclass

from pigeon_crypto._codec import Reader, check_version, u64, var32
from pigeon_crypto.errors import DecodeError, TransportError

from .ports import MAILBOX_ID_LEN, Bus, Notification, NotificationKind, Subscription, check_id

__all__ = [
    "DEFAULT_MAX_QUEUE",
    "MAX_NOTIFICATION_PAYLOAD",
    "BusStats",
    "InProcessBus",
    "InProcessSubscription",
    "decode_notification",
    "encode_notification",
]

DEFAULT_MAX_QUEUE = 256
"""Per-subscription queue bound: enough for a burst to one device, small enough that a
stalled socket pins at most a few hundred hints."""
MAX_NOTIFICATION_PAYLOAD = 1 << 20
"""Upper bound on an encoded notification's payload (larger blobs are fetched instead)."""
_FORMAT_VERSION = 1


@dataclass(frozen=True, slots=True, kw_only=True)
class BusStats:
    """Counters for metrics (monotonic since the bus started)."""

    published: int
    delivered: int
    dropped: int
    coalesced: int
    subscriptions: int


class InProcessSubscription:
    """A subscription to some mailboxes; iterate it for ``(mailbox_id, notification)``."""

    def __init__(self, bus: InProcessBus, max_queue: int) -> None:
        self._bus = bus
        self._ids: set[bytes] = set()
        # Made when something is queued and dropped once drained: an idle connection's
        # subscription holds no deque (a block, ~0.6 KB) and no Event (its waiters' deque).
        self._queue: deque[tuple[bytes, Notification]] | None = None
        self._resync: dict[bytes, None] = {}  # insertion-ordered set
        self._max = max_queue
        self._waiter: asyncio.Future[None] | None = None
        self._closed = False
        self._parked = False
        self._direct: Callable[[bytes, Notification], bool] | None = None
        self.dropped = 0
        self.coalesced = 0

    def set_direct(self, handler: Callable[[bytes, Notification], bool] | None) -> None:
        """Let *handler* take notifications synchronously while the consumer is parked.

        While the consumer waits in :meth:`get` on an empty queue with no RESYNC pending,
        a published notification is first offered to ``handler(mailbox_id, n)``; if it
        returns True, the notification was handled (exactly as :meth:`get` would have
        yielded it next: nothing is queued before it) and the consumer stays parked: no
        queue entry, no wake-up, no task step. If it returns False (or the consumer is
        busy), the notification is queued as usual, with the bound and coalescing above.
        The delivery pump uses this to write a live delivery in the publisher's turn.
        """
        self._direct = handler

    @property
    def mailbox_ids(self) -> frozenset[bytes]:
        return frozenset(self._ids)

    @property
    def closed(self) -> bool:
        return self._closed

    @property
    def queued(self) -> int:
        return (len(self._queue) if self._queue else 0) + len(self._resync)

    async def add(self, mailbox_id: bytes) -> None:
        check_id("mailbox_id", mailbox_id, MAILBOX_ID_LEN)
        if self._closed:
            raise TransportError("subscription is closed")
        self._ids.add(mailbox_id)
        self._bus._index(self, mailbox_id)

    async def add_many(self, mailbox_ids: Sequence[bytes]) -> None:
        for mailbox_id in mailbox_ids:  # before adding any: a bad id adds nothing
            check_id("mailbox_id", mailbox_id, MAILBOX_ID_LEN)
        for mailbox_id in mailbox_ids:
            await self.add(mailbox_id)

    async def remove(self, mailbox_id: bytes) -> None:
        self._ids.discard(mailbox_id)
        self._resync.pop(mailbox_id, None)
        self._bus._unindex(self, mailbox_id)

    def resync(self, mailbox_id: bytes) -> None:
        """See :meth:`relay.ports.Subscription.resync` (not counted as coalesced)."""
        if self._closed or mailbox_id not in self._ids:
            return
        self._resync[mailbox_id] = None
        self._wake()

    def _wake(self) -> None:
        waiter = self._waiter
        if waiter is not None and not waiter.done():
            waiter.set_result(None)

    def _offer(self, mailbox_id: bytes, n: Notification) -> bool:
        """Called by the bus; never blocks. Returns False if *n* was dropped."""
        if self._closed:
            return False
        direct = self._direct
        if (direct is not None and self._parked and not self._queue and not self._resync
                and direct(mailbox_id, n)):
            return True
        control = n.kind in (NotificationKind.RESYNC, NotificationKind.CLOSED)
        queue = self._queue
        if queue is None:
            queue = self._queue = deque()
        if control or len(queue) < self._max:
            queue.append((mailbox_id, n))
        elif n.durable:
            self._resync[mailbox_id] = None
            self.coalesced += 1
            self._bus._coalesced += 1
        else:
            self.dropped += 1
            self._bus._dropped += 1
            return False
        self._wake()
        return True

    async def get(self) -> tuple[bytes, Notification]:
        """Next notification; RESYNC markers first. Raises StopAsyncIteration once closed
        (queued notifications are discarded on close). One consumer at a time (the
        delivery pump): a second concurrent call raises RuntimeError."""
        while True:
            if self._closed:
                raise StopAsyncIteration
            if self._resync:
                mailbox_id = next(iter(self._resync))
                del self._resync[mailbox_id]
                if self._queue:
                    self._queue = deque(
                        (m, n) for m, n in self._queue
                        if not (m == mailbox_id and n.kind is NotificationKind.MESSAGE)
                    )
                return mailbox_id, Notification(kind=NotificationKind.RESYNC)
            if self._queue:
                return self._queue.popleft()
            self._queue = None
            if self._waiter is not None:
                raise RuntimeError("a subscription has one consumer at a time")
            self._waiter = asyncio.get_running_loop().create_future()
            self._parked = True
            try:
                await self._waiter
            finally:
                self._parked = False
                self._waiter = None

    def __aiter__(self) -> AsyncIterator[tuple[bytes, Notification]]:
        return self

    async def __anext__(self) -> tuple[bytes, Notification]:
        return await self.get()

    async def close(self) -> None:
        if self._closed:
            return
        self._closed = True
        for mailbox_id in list(self._ids):
            self._bus._unindex(self, mailbox_id)
        self._bus._forget(self)
        self._queue = None
        self._resync.clear()
        self._wake()

    async def __aenter__(self) -> InProcessSubscription:
        return self

    async def __aexit__(self, *exc: object) -> None:
        await self.close()


class InProcessBus:
    """Implements :class:`relay.ports.Bus` within one process (one event loop)."""

    def __init__(self, *, max_queue: int = DEFAULT_MAX_QUEUE) -> None:
        if max_queue < 1:
            raise ValueError("max_queue must be positive")
        self._max_queue = max_queue
        self._by_mailbox: dict[bytes, dict[InProcessSubscription, None]] = {}
        self._subs: dict[InProcessSubscription, None] = {}
        self._closed = False
        self._published = 0
        self._delivered = 0
        self._dropped = 0
        self._coalesced = 0

    def _index(self, sub: InProcessSubscription, mailbox_id: bytes) -> None:
        self._by_mailbox.setdefault(mailbox_id, {})[sub] = None

    def _unindex(self, sub: InProcessSubscription, mailbox_id: bytes) -> None:
        subs = self._by_mailbox.get(mailbox_id)
        if subs is not None:
            subs.pop(sub, None)
            if not subs:
                del self._by_mailbox[mailbox_id]

    def _forget(self, sub: InProcessSubscription) -> None:
        self._subs.pop(sub, None)

    async def publish(self, mailbox_id: bytes, notification: Notification) -> int:
        return self._publish(mailbox_id, notification)

    async def publish_many(self, items: Sequence[tuple[bytes, Notification]]) -> list[int]:
        publish = self._publish
        return [publish(mailbox_id, notification) for mailbox_id, notification in items]

    def _publish(self, mailbox_id: bytes, notification: Notification) -> int:
        self._published += 1
        taken = 0
        for sub in list(self._by_mailbox.get(mailbox_id, ())):
            taken += sub._offer(mailbox_id, notification)
        self._delivered += taken
        return taken

    async def subscribe(
        self, mailbox_ids: Sequence[bytes] = (), *, max_queue: int | None = None
    ) -> InProcessSubscription:
        if self._closed:
            raise TransportError("bus is closed")
        size = self._max_queue if max_queue is None else max_queue
        if size < 1:
            raise ValueError("max_queue must be positive")
        for mailbox_id in mailbox_ids:  # before registering: a bad id leaves nothing behind
            check_id("mailbox_id", mailbox_id, MAILBOX_ID_LEN)
        sub = InProcessSubscription(self, size)
        self._subs[sub] = None
        await sub.add_many(mailbox_ids)
        return sub

    def subscribers(self, mailbox_id: bytes) -> int:
        """How many subscriptions listen to *mailbox_id* (for routing decisions, metrics)."""
        return len(self._by_mailbox.get(mailbox_id, ()))

    def stats(self) -> BusStats:
        return BusStats(
            published=self._published,
            delivered=self._delivered,
            dropped=self._dropped,
            coalesced=self._coalesced,
            subscriptions=len(self._subs),
        )

    async def invalidate(self, mailbox_id: bytes) -> None:
        """One node: there is no other node's cache to clear."""

    def on_invalidate(self, handler: Callable[[bytes | None], None]) -> None:
        """One node: no other node will invalidate anything."""

    async def sessions_revoked(self, account_id: bytes) -> None:
        """One node: the node closes its own sessions of the account."""

    def on_sessions_revoked(self, handler: Callable[[bytes], None]) -> None:
        """One node: no other node will revoke sessions."""

    async def subscriptions_taken(self, mailbox_ids: Sequence[bytes], at_ms: int) -> None:
        """One node: its own subscriptions are moved where they are taken."""

    def on_subscriptions_taken(self, handler: Callable[[Sequence[bytes], int, bool], None]
                               ) -> None:
        """One node: no other node ever takes a subscription."""

    async def close(self) -> None:
        self._closed = True
        for sub in list(self._subs):
            await sub.close()


def encode_notification(mailbox_id: bytes, notification: Notification) -> bytes:
    """Bytes for a cross-node bus (Redis). Layout, big-endian:

    ======  =========  ===========================================
    size    field      meaning
    ======  =========  ===========================================
    1       version    ``1``
    1       kind       :class:`NotificationKind`
    16      mailbox    mailbox id
    8       seq        u64 (0 when not a MESSAGE)
    4 + n   payload    u32 length, then the bytes (``<= 1 MiB``)
    ======  =========  ===========================================
    """
    check_id("mailbox_id", mailbox_id, MAILBOX_ID_LEN)
    if len(notification.payload) > MAX_NOTIFICATION_PAYLOAD:
        raise ValueError("notification payload too large")
    return (
        bytes([_FORMAT_VERSION, int(notification.kind)])
        + mailbox_id
        + u64(notification.seq)
        + var32(notification.payload)
    )


def decode_notification(data: bytes) -> tuple[bytes, Notification]:
    """Inverse of :func:`encode_notification`. Raises DecodeError / UnsupportedVersion."""
    r = Reader(data, "Notification")
    check_version("Notification", r.u8(), _FORMAT_VERSION)
    raw_kind = r.u8()
    try:
        kind = NotificationKind(raw_kind)
    except ValueError:
        raise DecodeError("Notification", f"unknown kind {raw_kind}") from None
    mailbox_id = r.take(MAILBOX_ID_LEN)
    seq = r.u64()
    payload = r.var32(MAX_NOTIFICATION_PAYLOAD)
    r.finish()
    return mailbox_id, Notification(kind=kind, seq=seq, payload=payload)


def _conforms(bus: InProcessBus, sub: InProcessSubscription) -> tuple[Bus, Subscription]:
    return bus, sub  # pragma: no cover - checked by mypy
