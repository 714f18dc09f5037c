"""What every connection of one relay process shares: :class:`Node`, and its small caches.

Theory of operation:

* :func:`install_pipeline` (called by ``create_app``) registers a ``cleanup_ctx`` that builds
  the :class:`Node` once the store, bus and push notifier exist, and puts it at
  ``app[NODE]``. Handlers reach everything through ``conn.node``: config, clock, store,
  bus, push, metrics, the relay id, and the node-wide state below.
* **Capability cache** (:class:`CapabilityCache`): mailbox id -> the capability hash the
  store confirmed (and the retirement time when this node rotated it). A send to a
  cached mailbox passes the capability stage without a store read; a hash that differs
  from the cached one is refused at once (mailbox ids are never reused and capabilities
  only change by rotation, which makes a new mailbox). ``append`` checks again inside its
  transaction, so a stale entry costs at most a credit, never a wrong delivery; a
  rejection there evicts the entry. It holds only what the store holds (hashes).
* **Subscriptions**: ``subscribers`` maps a mailbox to the connection of this node that
  receives it, so that subscribing elsewhere *moves* the subscription (protocol §9.1; from
  another node too: ``Bus.subscriptions_taken``, the later subscription keeps it);
  ``sessions`` maps an account to its authenticated connections (``PrekeysLow`` notices,
  closing them when the account is deleted).
* **Ephemeral dedup window** (:class:`DedupWindow`): ``client_msg_id`` values of recent
  ephemeral sends, in memory only, forgotten after ``EPHEMERAL_DEDUP_MS``.
* **Push URLs**: mailbox id -> registered push URL (or None), loaded from the store the
  first time a mailbox without a live subscription receives an envelope.
* **Backpressure**: :meth:`Node.store_lagging` is true while the store's queue of writes
  is above ``config.max_pending_writes``; readers then wait in
  :meth:`Node.wait_for_store` (one poller per node, not per connection) until it is back
  under half of it. Nothing is dropped: frames stay in the sockets.
"""

from __future__ import annotations

import asyncio
import contextlib
import hmac
import logging
from collections.abc import AsyncIterator, Callable, Coroutine, Sequence
from typing import TYPE_CHECKING, Any, Final, Protocol, runtime_checkable

from aiohttp import WSCloseCode, web

from .config import RelayConfig
from .connection import AckCoalescer
from .credits import BucketMap
from .metrics import Metrics
from .ports import Bus, Notification, NotificationKind, Store
from .push import PushNotifier
from .typedefs import (
    BUS,
    CLOCK_MS,
    CONFIG,
    IDENTITY,
    MAILBOX_CREDITS,
    METRICS,
    MONOTONIC,
    NODE,
    PUSH,
    STORE,
)

if TYPE_CHECKING:
    from .connection import Connection

__all__ = [
    "EPHEMERAL_DEDUP_MS",
    "CapabilityCache",
    "DedupWindow",
    "Node",
    "install_pipeline",
]

_log = logging.getLogger("pigeon.relay.node")

EPHEMERAL_DEDUP_MS: Final = 60_000
"""A repeated ephemeral ``client_msg_id`` within this window is dropped (retries of a
typing signal or an SDP offer are useless after a minute anyway)."""
_CACHE_ENTRIES: Final = 100_000
"""Bound of each node-wide cache (oldest entries evicted first)."""
CAPABILITY_TTL_MS: Final = 60_000
"""How long a capability the store confirmed is trusted without asking it again."""
_PRESSURE_POLL_S: Final = 0.002
CLOSE_TIMEOUT_S: Final = 5.0
"""How long a revoked session's peer has to take its close frame before it is dropped."""
IDENTITY_RECHECK_MS: Final = 60_000
"""How stale the store's word on a session's identity key may be for an ``Ack``."""
"""How often a stalled node looks at the store's queue again."""


@runtime_checkable
class _Queued(Protocol):
    """A store with a write queue (``SqliteStore``); the memory store has none."""

    @property
    def pending_writes(self) -> int: ...


class CapabilityCache:
    """Mailbox id -> confirmed capability hash and known retirement time (FIFO-bounded).

    An entry is trusted for :data:`CAPABILITY_TTL_MS` after the store confirmed it, then
    asked again: a retirement the cache never heard of (decided on another node whose
    invalidation was lost, or an entry re-cached from the store during a rotation's
    grace period, which ``check_capabilities`` does not date) holds within that bound.
    """

    __slots__ = ("_entries", "_max", "_ttl")

    def __init__(self, max_entries: int = _CACHE_ENTRIES,
                 ttl_ms: int = CAPABILITY_TTL_MS) -> None:
        self._entries: dict[bytes, tuple[bytes, int | None, int]] = {}
        self._max = max_entries
        self._ttl = ttl_ms

    def check(self, mailbox_id: bytes, capability_hash: bytes, now_ms: int) -> bool | None:
        """True: known good; False: known wrong (or retired); None: ask the store."""
        entry = self._entries.get(mailbox_id)
        if entry is None:
            return None
        good, retire_at, stale_at = entry
        if retire_at is not None and retire_at <= now_ms:
            return False
        if stale_at <= now_ms:
            del self._entries[mailbox_id]
            return None
        return hmac.compare_digest(good, capability_hash)

    def put(self, mailbox_id: bytes, capability_hash: bytes, now_ms: int,
            retire_at_ms: int | None = None) -> None:
        entries = self._entries
        if mailbox_id not in entries and len(entries) >= self._max:
            del entries[next(iter(entries))]
        entries[mailbox_id] = (capability_hash, retire_at_ms, now_ms + self._ttl)

    def retire(self, mailbox_id: bytes, retire_at_ms: int) -> None:
        entry = self._entries.get(mailbox_id)
        if entry is not None:
            self._entries[mailbox_id] = (entry[0], retire_at_ms, entry[2])

    def forget(self, mailbox_id: bytes) -> None:
        self._entries.pop(mailbox_id, None)

    def clear(self) -> None:
        self._entries.clear()

    def __len__(self) -> int:
        return len(self._entries)


class DedupWindow:
    """Keys seen within the last *window_ms* (insertion order is time order)."""

    __slots__ = ("_max", "_seen", "_window")

    def __init__(self, window_ms: int, max_entries: int = _CACHE_ENTRIES) -> None:
        self._seen: dict[bytes, int] = {}
        self._window = window_ms
        self._max = max_entries

    def first_time(self, key: bytes, now_ms: int) -> bool:
        """Record *key*; False if it was already seen within the window."""
        seen = self._seen
        while seen:  # expire from the oldest end; amortised O(1)
            oldest = next(iter(seen))
            if seen[oldest] > now_ms - self._window and len(seen) < self._max:
                break
            del seen[oldest]
        if key in seen:
            return False
        seen[key] = now_ms
        return True


class Node:
    """Per-process relay state shared by all connections (see the module docstring)."""

    def __init__(
        self,
        app: web.Application,
        *,
        config: RelayConfig,
        relay_id: bytes,
        store: Store,
        bus: Bus,
        push: PushNotifier,
        metrics: Metrics,
        clock_ms: Callable[[], int],
        monotonic: Callable[[], float],
        mailbox_credits: BucketMap[bytes],
    ) -> None:
        self.app = app
        self.config = config
        self.relay_id = relay_id
        self.store = store
        self.bus = bus
        self.push = push
        self.metrics = metrics
        self.clock_ms = clock_ms
        self.monotonic = monotonic
        self.mailbox_credits = mailbox_credits
        self.lookup_credits: BucketMap[str] = BucketMap(
            config.lookup_credit_capacity, config.lookup_credit_refill_per_s,
            max_buckets=_CACHE_ENTRIES)
        self.blob_credits: BucketMap[bytes] = BucketMap(
            config.blob_quota_per_day, config.blob_quota_per_day / 86_400,
            max_buckets=_CACHE_ENTRIES)
        """File bytes each account may still reserve (``--blob-quota`` a day)."""
        self.capabilities = CapabilityCache()
        self.ephemeral = DedupWindow(EPHEMERAL_DEDUP_MS)
        self.acks = AckCoalescer(self)
        """Every connection's acks, one store call per event-loop iteration."""
        self.subscribers: dict[bytes, Connection] = {}
        self.sessions: dict[bytes, set[Connection]] = {}
        self._push_urls: dict[bytes, tuple[str | None, int]] = {}
        """Mailbox id -> (push URL, when to ask the store again)."""
        self._pending_writes: Callable[[], int] | None = None
        if isinstance(store, _Queued):
            queued: _Queued = store
            self._pending_writes = lambda: queued.pending_writes
        self._high_water = config.max_pending_writes
        self._unstalled = asyncio.Event()
        self._unstalled.set()
        self._poller: asyncio.Task[None] | None = None
        self.stalls = 0
        self._closing: set[asyncio.Task[None]] = set()
        bus.on_invalidate(self._invalidated)
        bus.on_sessions_revoked(self._sessions_revoked)
        bus.on_subscriptions_taken(self._subscriptions_taken)

    # ------------------------------------------------------------------ mailboxes

    def forget_mailbox(self, mailbox_id: bytes) -> None:
        """Drop everything cached about a mailbox (deleted, or changed on another node)."""
        self.capabilities.forget(mailbox_id)
        self._push_urls.pop(mailbox_id, None)

    def _invalidated(self, mailbox_id: bytes | None) -> None:
        """Another node changed *mailbox_id*; None: invalidations may have been missed
        (the bus was cut off), so forget every cached mailbox."""
        if mailbox_id is not None:
            self.forget_mailbox(mailbox_id)
        else:
            self.capabilities.clear()
            self._push_urls.clear()

    async def mailbox_changed(self, mailbox_id: bytes) -> None:
        """A mailbox's capability or push URL changed here: other nodes of the same
        database forget what they cached about it (this node updated its own cache)."""
        await self.bus.invalidate(mailbox_id)

    async def close_mailbox(self, mailbox_id: bytes) -> None:
        """A mailbox is gone: forget it and tell whoever receives it (bus ``CLOSED``)."""
        self.forget_mailbox(mailbox_id)
        holder = self.subscribers.pop(mailbox_id, None)
        if holder is not None and holder.pump is not None:
            await holder.pump.drop(mailbox_id)
        await self.mailbox_changed(mailbox_id)
        await self.bus.publish(mailbox_id, Notification(kind=NotificationKind.CLOSED))

    def _subscriptions_taken(self, mailbox_ids: Sequence[bytes], at_ms: int,
                             later_on_tie: bool) -> None:
        """A connection of another node subscribed *mailbox_ids* at *at_ms*: ours stop
        delivering those they subscribed earlier (the rule of one live subscription per
        mailbox, which ``Subscribe`` keeps among this node's connections). Both nodes
        compare the same two (time, node) pairs, so exactly one keeps the mailbox."""
        for mailbox_id in mailbox_ids:
            holder = self.subscribers.get(mailbox_id)
            if holder is None or holder.pump is None:
                continue
            mine = holder.subscribed_ms
            if at_ms > mine or (at_ms == mine and later_on_tie):
                del self.subscribers[mailbox_id]
                self.background(holder.pump.drop_if_moved(mailbox_id))

    def background(self, work: Coroutine[Any, Any, None]) -> None:
        """Run *work* as a task of the node (cancelled when it closes)."""
        task = asyncio.get_running_loop().create_task(work)
        self._closing.add(task)
        task.add_done_callback(self._closing.discard)

    def set_push_url(self, mailbox_id: bytes, url: str | None) -> None:
        """Cache *mailbox_id*'s push URL for :data:`CAPABILITY_TTL_MS` (then the store is
        asked again: another node may have changed it and its invalidation been lost, or
        arrived while our read of the old value was in flight)."""
        urls = self._push_urls
        if mailbox_id not in urls and len(urls) >= _CACHE_ENTRIES:
            del urls[next(iter(urls))]
        urls[mailbox_id] = (url, self.clock_ms() + CAPABILITY_TTL_MS)

    async def wake(self, mailbox_id: bytes) -> None:
        """An envelope arrived for a mailbox nobody receives live: POST its push URL, if any."""
        cached = self._push_urls.get(mailbox_id)
        if cached is not None and cached[1] > self.clock_ms():
            url = cached[0]
        else:
            record = await self.store.get_mailbox(mailbox_id)
            url = record.push_url if record is not None else None
            self.set_push_url(mailbox_id, url)
        if url is not None:
            self.push.wake(url)

    # ------------------------------------------------------------------ sessions

    def add_session(self, account_id: bytes, conn: Connection) -> None:
        self.sessions.setdefault(account_id, set()).add(conn)

    async def close_sessions(self, account_id: bytes, *, reason: bytes,
                             keep: Connection | None = None) -> None:
        """Close every connection of this node logged in as *account_id* but *keep*
        (the account was deleted, or its identity rotated): all at once, each within
        :data:`CLOSE_TIMEOUT_S` (a peer that stopped reading cannot hold the others, or
        the caller, open)."""
        conns = [c for c in self.sessions.get(account_id, ()) if c is not keep]
        await asyncio.gather(*(self._close(conn, reason) for conn in conns))

    def close_soon(self, conns: list[Connection], *, reason: bytes) -> None:
        """:meth:`close_sessions` for *conns*, in a task of its own."""
        async def close_all() -> None:
            await asyncio.gather(*(self._close(conn, reason) for conn in conns))

        self.background(close_all())

    @staticmethod
    async def _close(conn: Connection, reason: bytes) -> None:
        try:
            # A close cancelled at the deadline drops the connection instead.
            await asyncio.wait_for(conn.ws.close(code=WSCloseCode.OK, message=reason),
                                   CLOSE_TIMEOUT_S)
        except TimeoutError:
            _log.warning("a revoked session did not take its close frame; dropped")
        except Exception as exc:  # its socket is going away anyway
            _log.warning("closing a revoked session failed: %s", type(exc).__name__)

    def _sessions_revoked(self, account_id: bytes) -> None:
        """Another node deleted *account_id* or rotated its identity: close its sessions
        here too."""
        if account_id in self.sessions:
            self.close_soon(list(self.sessions[account_id]), reason=b"session revoked")

    def remove_session(self, account_id: bytes, conn: Connection) -> None:
        conns = self.sessions.get(account_id)
        if conns is not None:
            conns.discard(conn)
            if not conns:
                del self.sessions[account_id]

    # ------------------------------------------------------------------ backpressure

    def store_lagging(self) -> bool:
        """True while the store's write queue is above the high-water mark."""
        if not self._unstalled.is_set():
            return True
        probe = self._pending_writes
        if probe is None or probe() <= self._high_water:
            return False
        self._unstalled.clear()
        self.stalls += 1
        _log.warning("store lagging: %d writes queued; pausing socket reads", probe())
        self._poller = asyncio.get_running_loop().create_task(self._poll(probe))
        return True

    async def _poll(self, probe: Callable[[], int]) -> None:
        try:
            # The queue is counted on the store's writer thread: nothing to wait on here.
            while probe() > self._high_water // 2:  # noqa: ASYNC110
                await asyncio.sleep(_PRESSURE_POLL_S)
        finally:
            self._unstalled.set()
            self._poller = None

    async def wait_for_store(self) -> None:
        await self._unstalled.wait()

    async def close(self) -> None:
        for task in list(self._closing):
            task.cancel()
        if self._poller is not None:
            self._poller.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._poller


async def _node_ctx(app: web.Application) -> AsyncIterator[None]:
    node = Node(
        app,
        config=app[CONFIG],
        relay_id=app[IDENTITY].relay_id,
        store=app[STORE],
        bus=app[BUS],
        push=app[PUSH],
        metrics=app[METRICS],
        clock_ms=app[CLOCK_MS],
        monotonic=app[MONOTONIC],
        mailbox_credits=app[MAILBOX_CREDITS],
    )
    app[NODE] = node
    try:
        yield
    finally:
        await node.close()


def install_pipeline(app: web.Application) -> None:
    """Register the node's ``cleanup_ctx`` (after the store, bus and push resources)."""
    app.cleanup_ctx.append(_node_ctx)
