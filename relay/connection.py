"""Per-connection state of the frame pipeline: :class:`Connection`.

Theory of operation:

* One :class:`Connection` per WebSocket, created by :mod:`relay.ws` after the upgrade. It
  holds the session (challenge, account), the connection's credit buckets and
  misbehaviour counter, a cache of the mailboxes its account owns, its delivery pump
  (:mod:`relay.delivery`, created by the first ``Subscribe``), the forked tasks in flight
  and the ack coalescer.
* :meth:`Connection.send` queues one frame; the frames of one event-loop iteration go out
  in one socket write (:mod:`relay.wsout`). It waits only when the peer stopped reading
  (until the socket drains): a slow peer slows only the coroutine writing to it. A write
  to a closed socket is dropped silently (the peer is gone; its requests have an unknown
  outcome, protocol §9.1).
* :meth:`Connection.fork` runs the forked part of a route outside the reader: the forked
  frames of one event-loop iteration go to one task as a batch (see
  :mod:`relay.pipeline`), at most :data:`~relay.pipeline.MAX_INFLIGHT` frames at once;
  the reader waits for a slot.
* Acks (:class:`AckCoalescer`, one per node) are finalized through the store's group
  commit without holding up the reader: the acks of every connection read in one
  event-loop iteration go to the store as one call, merged per connection and mailbox
  (cumulative maximum, selective union).
* :meth:`Connection.finish` unwinds: drops the subscriptions, lets forked sends and the
  last ack flush complete (a send already accepted still gets routed to its recipients),
  and forgets the session.
"""

from __future__ import annotations

import asyncio
import contextlib
import hmac
import logging
from collections.abc import Awaitable
from typing import TYPE_CHECKING, Any, Final

from aiohttp import web

from pigeon_crypto.errors import StoreError
from protocol import CreditsLow, ErrorCode

from .credits import Misbehaviour, TokenBucket
from .pipeline import MAX_INFLIGHT, Batched, FrameCtx, Halt, Refuse, Route, error_bytes
from .wsout import attach

if TYPE_CHECKING:
    from .delivery import DeliveryPump
    from .node import Node

__all__ = ["AckCoalescer", "Connection"]

_log = logging.getLogger("pigeon.relay.ws")

_CREDITS_LOW_FRACTION: Final = 0.1
"""``CreditsLow`` is sent when a connection's bucket falls under this fraction of its burst."""
_FINISH_TIMEOUT_S: Final = 10.0
"""How long a closing connection waits for its forked sends and last acks to complete."""
_RETRY_STORE_MS: Final = 1000
"""``retry_after_ms`` of an ``UNAVAILABLE`` answer (the store failed; nothing was stored)."""


class AckCoalescer:
    """The node's acks: those of every connection read in one event-loop iteration go to
    the store as one call (:meth:`relay.ports.MessageStore.ack_many`).

    One store call, one task and one future per iteration instead of per ack (a
    1,000-member group's receivers send about one ack per delivery). Acks of one
    connection for one mailbox within an iteration are merged (cumulative maximum,
    selective union); flushes do not wait for each other (acks only ever remove, so
    their order does not matter). A failed flush answers each of its acks
    ``UNAVAILABLE`` with the connection's last merged request id for that mailbox (the
    envelopes are simply delivered again).
    """

    __slots__ = ("_node", "_pending", "_scheduled", "_tasks")

    def __init__(self, node: Node) -> None:
        self._node = node
        self._pending: dict[tuple[Connection, bytes], tuple[int, set[int] | None, int]] = {}
        self._scheduled = False
        self._tasks: set[asyncio.Task[None]] = set()

    def add(self, conn: Connection, mailbox_id: bytes, up_to_seq: int, seqs: tuple[int, ...],
            request_id: int) -> None:
        """Queue an ack (``up_to_seq`` 0: none cumulative); flushed after this iteration."""
        key = (conn, mailbox_id)
        old = self._pending.get(key)
        if old is None:
            self._pending[key] = (up_to_seq, set(seqs) if seqs else None, request_id)
        else:
            merged = old[1]
            if seqs:
                merged = (merged or set()) | set(seqs)
            self._pending[key] = (max(old[0], up_to_seq), merged, request_id)
        if not self._scheduled:
            self._scheduled = True
            asyncio.get_running_loop().call_soon(self._start)

    def _start(self) -> None:
        self._scheduled = False
        batch, self._pending = self._pending, {}
        if batch:
            task = asyncio.get_running_loop().create_task(self._flush(batch))
            self._tasks.add(task)
            task.add_done_callback(self._tasks.discard)

    async def _flush(self, batch: dict[tuple[Connection, bytes],
                                       tuple[int, set[int] | None, int]]) -> None:
        requests = [(mailbox_id, up_to or None,
                     sorted(s for s in seqs if s > up_to) if seqs else ())
                    for (_, mailbox_id), (up_to, seqs, _) in batch.items()]
        try:
            await self._node.store.ack_many(requests)
        except StoreError as exc:
            _log.warning("ack failed: %s", type(exc).__name__)
            for (conn, _), (_, _, rid) in batch.items():
                await conn.send(error_bytes(rid, ErrorCode.UNAVAILABLE,
                                            retry_after_ms=_RETRY_STORE_MS))

    async def drain(self, conn: Connection) -> None:
        """Return once every ack *conn* queued is committed (or answered as failed)."""
        if any(key[0] is conn for key in self._pending):
            self._start()  # now, not at the end of this iteration (a later one is a no-op)
        if self._tasks:
            await asyncio.wait(list(self._tasks))


class Connection:
    """One client WebSocket and its session (see the module docstring)."""

    __slots__ = (
        "_slot_free", "account_id", "batch", "challenge", "challenge_used", "connected",
        "credits", "credits_low_sent", "forked", "identity_checked_ms", "identity_key",
        "inflight", "lookups", "misbehaviour", "node", "owned", "pump", "remote", "sink",
        "subscribed_ms", "tasks", "ws",
    )

    def __init__(self, node: Node, ws: web.WebSocketResponse, remote: str) -> None:
        config = node.config
        now = node.monotonic()
        self.node = node
        self.ws = ws
        self.sink = attach(ws, node.metrics)
        self.remote = remote
        """The peer's address: a key of the per-address lookup credits; never stored."""
        self.credits = TokenBucket(config.conn_credit_capacity,
                                   config.conn_credit_refill_per_s, now=now)
        self.lookups = TokenBucket(config.lookup_credit_capacity,
                                   config.lookup_credit_refill_per_s, now=now)
        self.misbehaviour = Misbehaviour(config.misbehaviour_threshold)
        self.connected = False
        """``Connect`` was received (and answered with ``Challenge``)."""
        self.challenge: tuple[bytes, int] | None = None
        """``(nonce, server_time_ms)`` of this connection's challenge."""
        self.challenge_used = False
        self.account_id: bytes | None = None
        self.identity_key: bytes | None = None
        """The identity key this session proved (or rotated to)."""
        self.identity_checked_ms = 0
        """When the store last confirmed :attr:`identity_key` as the account's."""
        self.owned: set[bytes] = set()
        """Mailboxes known to belong to ``account_id`` (confirmed by the store)."""
        self.pump: DeliveryPump | None = None
        self.subscribed_ms = 0
        """When this connection last took subscriptions (wall clock): of two connections
        on two nodes subscribed to one mailbox, the later keeps it."""
        self.inflight: set[int] = set()
        """Request ids of forked requests not answered yet (``DUPLICATE`` protection)."""
        self.tasks: set[asyncio.Task[None]] = set()
        """One task per batch of forked frames still running."""
        self.batch: list[tuple[Route, FrameCtx[Any]]] = []
        """Forked frames of this loop iteration, not yet handed to a task."""
        self.forked = 0
        """Forked frames queued or running (at most ``MAX_INFLIGHT``)."""
        self._slot_free: asyncio.Future[None] | None = None
        self.credits_low_sent = False

    # ------------------------------------------------------------------ output

    async def send(self, data: bytes) -> None:
        """Write one frame (coalesced with the others of this loop iteration, see
        :mod:`relay.wsout`); dropped if the socket is already closed."""
        if self.ws.closed:
            return
        # Closed under us: the reader loop sees the close and unwinds.
        with contextlib.suppress(ConnectionError, RuntimeError):
            await self.sink.send(data)

    def send_notice(self, data: bytes) -> None:
        """Send an advisory frame on behalf of another connection, never waiting for this
        peer: dropped (counted as an ephemeral drop) while it is not reading."""
        if self.ws.closed:
            return
        if self.sink.send_nowait(data):
            return
        if self.sink.coalescing:  # the peer stopped reading
            self.node.metrics.ephemeral_dropped()
        else:  # no transport access here: an awaited send, off the caller's path
            self.node.background(self.send(data))

    def check_credits_low(self, now: float) -> Awaitable[None] | None:
        """Send ``CreditsLow`` once each time the bucket drops under its low mark."""
        bucket = self.credits
        remaining = bucket.tokens(now)
        if remaining >= bucket.capacity * _CREDITS_LOW_FRACTION:
            self.credits_low_sent = False
            return None
        if self.credits_low_sent:
            return None
        self.credits_low_sent = True
        refill_ms = int(1000 / bucket.refill_per_s) + 1
        frame = CreditsLow(remaining=max(0, int(remaining)),  # in debt after a wide fan-out
                           refill_in_ms=min(refill_ms, 2**32 - 1))
        return self.send(frame.encode())

    # ------------------------------------------------------------------ session

    def authenticate(self, account_id: bytes, identity_key: bytes) -> None:
        self.account_id = account_id
        self.set_identity(identity_key)
        self.node.add_session(account_id, self)

    def set_identity(self, identity_key: bytes) -> None:
        """This session proved *identity_key* just now (a login, a rotation)."""
        self.identity_key = identity_key
        self.identity_checked_ms = self.node.clock_ms()

    def identity_recent(self, within_ms: int) -> Awaitable[None] | None:
        """:meth:`require_current_identity` unless the store confirmed the key within
        *within_ms* (frequent frames, an ``Ack``, pay a store read that often only)."""
        if self.node.clock_ms() - self.identity_checked_ms < within_ms:
            return None
        return self.require_current_identity()

    async def require_current_identity(self) -> None:
        """Raise ``Refuse(AUTH_FAILED)`` and close this connection unless its identity
        key is still the account's: a session that logged in with a key rotated away
        since (closed by the rotation, but a notice from another node may be lost, or
        its login may have raced the rotation) can change nothing of the account."""
        record = await self.node.store.get_account(self.account_id or b"")
        if record is None:
            raise Refuse(ErrorCode.UNKNOWN_ACCOUNT)
        if self.identity_key is None or not hmac.compare_digest(record.identity_key,
                                                                 self.identity_key):
            self.node.close_soon([self], reason=b"identity rotated")
            raise Refuse(ErrorCode.AUTH_FAILED, message="identity rotated: log in again")
        self.identity_checked_ms = self.node.clock_ms()

    async def require_owner(self, mailbox_id: bytes) -> None:
        """Raise ``Refuse(NO_SUCH_MAILBOX | FORBIDDEN)`` unless the account owns *mailbox_id*."""
        if mailbox_id in self.owned:
            return
        record = await self.node.store.get_mailbox(mailbox_id)
        if record is None:
            raise Refuse(ErrorCode.NO_SUCH_MAILBOX)
        if record.account_id != self.account_id:
            raise Refuse(ErrorCode.FORBIDDEN)
        self.owned.add(mailbox_id)

    # ------------------------------------------------------------------ forked stages

    async def fork(self, route: Route, ctx: FrameCtx[Any]) -> None:
        """Queue ``route.forked`` for *ctx*; wait while ``MAX_INFLIGHT`` frames are in flight.

        The frames forked during one event-loop iteration leave together: the first one
        schedules :meth:`_launch` (``call_soon``), which hands the batch to one task.
        """
        while self.forked >= MAX_INFLIGHT:
            waiter = self._slot_free
            if waiter is None:
                waiter = self._slot_free = asyncio.get_running_loop().create_future()
            await waiter
        self.inflight.add(ctx.request_id)
        self.forked += 1
        batch = self.batch
        if not batch:
            asyncio.get_running_loop().call_soon(self._launch)
        batch.append((route, ctx))

    def _launch(self) -> None:
        batch, self.batch = self.batch, []
        loop = asyncio.get_running_loop()
        i, n = 0, len(batch)
        while i < n:  # consecutive frames of one route share a task (in practice: Send)
            route = batch[i][0]
            j = i + 1
            while j < n and batch[j][0] is route:
                j += 1
            task = loop.create_task(self._run_forked(route, [c for _, c in batch[i:j]]))  # noqa: RUF006 - in self.tasks
            self.tasks.add(task)
            task.add_done_callback(self.tasks.discard)
            i = j

    async def _run_forked(self, route: Route, ctxs: list[FrameCtx[Any]]) -> None:
        live = ctxs
        try:
            for stage in route.forked:
                if isinstance(stage, Batched):
                    try:
                        await stage.fn(live)
                    except Exception as exc:  # the whole batch failed
                        if stage.after_reply:  # answered already: one answer per request
                            _log.error("%s: %s failed after the reply", route.name,
                                       stage.name, exc_info=exc)
                            return
                        for ctx in live:
                            await self._failed(route, ctx, exc)
                        return
                    continue
                survivors: list[FrameCtx[Any]] = []
                for ctx in live:
                    try:
                        pending = stage(ctx)
                        if pending is not None:
                            await pending
                    except Exception as exc:
                        await self._failed(route, ctx, exc)
                    else:
                        survivors.append(ctx)
                live = survivors
        finally:
            inflight = self.inflight
            for ctx in ctxs:
                inflight.discard(ctx.request_id)
            self.forked -= len(ctxs)
            waiter = self._slot_free
            if waiter is not None and not waiter.done():
                self._slot_free = None
                waiter.set_result(None)

    async def _failed(self, route: Route, ctx: FrameCtx[Any], exc: Exception) -> None:
        """Answer a forked frame whose stage raised (the same answers as the reader's)."""
        if isinstance(exc, Refuse):
            await self.send(error_bytes(ctx.request_id, exc.code,
                                        retry_after_ms=exc.retry_after_ms,
                                        message=exc.message))
        elif isinstance(exc, Halt):
            pass
        elif isinstance(exc, StoreError):
            _log.warning("%s: store failed: %s", route.name, type(exc).__name__)
            await self.send(error_bytes(ctx.request_id, ErrorCode.UNAVAILABLE,
                                        retry_after_ms=_RETRY_STORE_MS))
        else:
            _log.error("%s failed", route.name, exc_info=exc)
            await self.send(error_bytes(ctx.request_id, ErrorCode.INTERNAL))

    # ------------------------------------------------------------------ teardown

    async def finish(self) -> None:
        """Unwind after the socket closed (see the module docstring)."""
        node = self.node
        if self.pump is not None:
            for mailbox_id in self.pump.mailbox_ids():
                if node.subscribers.get(mailbox_id) is self:
                    del node.subscribers[mailbox_id]
            await self.pump.close()
        if self.batch:  # forked in the reader's last iteration: launch them now
            self._launch()
        pending = [*self.tasks]
        if pending:
            await asyncio.wait(pending, timeout=_FINISH_TIMEOUT_S)
        try:
            # asyncio.timeout, not wait_for: on Python 3.11 wait_for swallows a cancellation
            # that arrives in the turn the drain finishes, and shutdown would run on.
            async with asyncio.timeout(_FINISH_TIMEOUT_S):
                await node.acks.drain(self)
        except TimeoutError:
            _log.warning("acks of a closed connection still pending")
        if self.account_id is not None:
            node.remove_session(self.account_id, self)
