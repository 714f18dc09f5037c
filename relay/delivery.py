"""Delivery to one connection: its bus subscription, per-mailbox cursors, and the pump task.

Theory of operation (DESIGN.md "Relay pipeline": route -> finalize on recipient ack;
protocol §9.5):

* A connection that subscribes gets one :class:`DeliveryPump`: one bus subscription with
  a bounded queue (the outbound queue of this connection), one task that writes to the
  socket, and one :class:`Cursor` per subscribed mailbox (``last``: the highest seq
  delivered on this connection; ``unacked``: delivered seqs not acked yet).
* **Live path.** A durable send publishes ``MESSAGE(seq, payload)`` after its commit,
  where ``payload`` is the already encoded ``Delivery`` frame (the envelope just stored
  is what gets delivered: nothing is read back). The pump writes it if ``seq`` is the
  next one (``last + 1``; per-mailbox seqs are dense), skips it if it was delivered
  already, and otherwise (a gap, or a hint without payload) reads the mailbox from the
  store after ``last``. Ephemeral signals arrive as ``EPHEMERAL(payload)`` with the
  encoded ``EphemeralDelivery`` and are written as they are.
* **Backlog and catching up.** ``RESYNC`` for a mailbox means "read it from the store
  after ``last``": the pump then sends the expiry notice if one is pending
  (``MessagesExpired``, cleared only after it was written), then up to a page of
  envelopes in seq order, and asks for another ``RESYNC`` if there may be more (so other
  mailboxes get their turn). If the page holds envelopes that expired but were not
  swept yet, the pump sweeps the mailbox (``Store.expire_mailbox``: into the stored
  notice, as the sweeper does) and sends the notice before the first delivery that
  follows them. A new subscription starts that way (requested with
  :meth:`relay.ports.Subscription.resync` once ``Subscribed`` is out); so does a mailbox
  whose window reopens, and one whose hints the bus had to coalesce.
* **Idle pumps.** While the pump waits on an empty queue, the in-process bus hands it a
  live hint in the publisher's turn (:meth:`DeliveryPump._direct`): an in-order
  delivery is queued on the socket at once, without a wake-up and step of the pump's
  task; anything that needs waiting or reading (a gap, a peer that stopped reading)
  is queued for the pump as before.
* **A slow subscriber never blocks anyone else.** Only the pump writes deliveries to its
  socket; when the peer stops reading, the pump waits in that write, the bus keeps at
  most ``max_queue`` hints for it (durable ones are coalesced into one ``RESYNC`` per
  mailbox, ephemeral ones dropped and counted), and when the socket drains the pump
  catches up from the store. Publishers never wait for a subscriber.
* **Flow control.** At most ``config.delivery_window`` deliveries per mailbox are written
  and not yet acked; then the cursor is ``full`` and hints for it are ignored until acks
  bring it under half the window, which requests a ``RESYNC``.
* **Redelivery.** A new subscription starts from ``last = 0``: every unacked envelope is
  delivered again, in order (at-least-once; clients deduplicate).
"""

from __future__ import annotations

import asyncio
import bisect
import contextlib
import logging
from collections.abc import Iterable, Sequence
from typing import TYPE_CHECKING, Final

from pigeon_crypto.errors import StoreError
from protocol import MessagesExpired

from .pipeline import delivery_bytes
from .ports import Notification, NotificationKind, Subscription

if TYPE_CHECKING:
    from .connection import Connection

__all__ = ["PAGE", "Cursor", "DeliveryPump"]

_log = logging.getLogger("pigeon.relay.delivery")

PAGE: Final = 256
"""Envelopes read from the store per fetch while catching up."""
_QUEUE: Final = 1024
"""Bus hints queued per connection before durable ones are coalesced into RESYNC."""
_STORE_RETRY_S: Final = 1.0
"""Pause before reading a mailbox again after the store failed."""
_U32_MAX: Final = 0xFFFF_FFFF
_MESSAGE: Final = NotificationKind.MESSAGE
_EPHEMERAL: Final = NotificationKind.EPHEMERAL
_RESYNC: Final = NotificationKind.RESYNC
_CLOSED: Final = NotificationKind.CLOSED
_EVERYTHING: Final = 0
"""``now_ms`` for a fetch that hides no expired envelope."""


class Cursor:
    """Delivery state of one mailbox on one connection."""

    __slots__ = ("full", "held", "last", "unacked")

    def __init__(self) -> None:
        self.last = 0
        """Highest seq written to this connection."""
        self.unacked: list[int] = []
        """Seqs written and not acked, ascending (a list: an idle connection's empty deque
        would hold a whole block, ~0.6 KB, of the per-connection budget)."""
        self.held = True
        """True until ``Subscribed`` is written (nothing is delivered before it)."""
        self.full = False
        """The delivery window is full; waiting for acks."""


class DeliveryPump:
    """Writes deliveries of the subscribed mailboxes to one connection (module docstring)."""

    def __init__(self, conn: Connection, sub: Subscription) -> None:
        self._conn = conn
        self._sub = sub
        self._window = conn.node.config.delivery_window
        self._cursors: dict[bytes, Cursor] = {}
        # Orders the bus subscription's add and remove as subscribe and drop were called
        # (on a remote bus both await): a drop whose remove lands after a later
        # subscription's add would leave that subscription deaf.
        self._changes = asyncio.Lock()
        self._set_direct = getattr(sub, "set_direct", None)
        if self._set_direct is not None:  # the in-process bus: see _direct
            self._set_direct(self._direct)
        self._task = asyncio.get_running_loop().create_task(self._run(),
                                                            name="pigeon-relay-delivery")

    @classmethod
    async def create(cls, conn: Connection) -> DeliveryPump:
        sub = await conn.node.bus.subscribe(max_queue=_QUEUE)
        return cls(conn, sub)

    def mailbox_ids(self) -> list[bytes]:
        return list(self._cursors)

    def __contains__(self, mailbox_id: object) -> bool:
        return mailbox_id in self._cursors

    # ------------------------------------------------------------------ control

    async def subscribe(self, mailbox_ids: Sequence[bytes]) -> None:
        """Start following *mailbox_ids* with fresh, held cursors (a repeated subscription
        starts over: everything unacked is delivered again). Call :meth:`release` once
        ``Subscribed`` is written."""
        for mailbox_id in mailbox_ids:
            self._cursors[mailbox_id] = Cursor()
        async with self._changes:
            await self._sub.add_many(mailbox_ids)

    def release(self, mailbox_ids: Iterable[bytes]) -> None:
        """Let delivery begin: each mailbox is read from the store, then follows live."""
        for mailbox_id in mailbox_ids:
            cursor = self._cursors.get(mailbox_id)
            if cursor is not None and cursor.held:
                cursor.held = False
                self._sub.resync(mailbox_id)

    async def drop(self, mailbox_id: bytes) -> None:
        """Stop delivering *mailbox_id* here (unsubscribed, moved, deleted)."""
        if self._cursors.pop(mailbox_id, None) is not None:
            async with self._changes:
                await self._sub.remove(mailbox_id)
        node = self._conn.node
        # Checked after the await: had this connection subscribed again meanwhile, the
        # fresh cursor keeps the mailbox (its add runs after this remove).
        if node.subscribers.get(mailbox_id) is self._conn and mailbox_id not in self._cursors:
            del node.subscribers[mailbox_id]

    async def drop_if_moved(self, mailbox_id: bytes) -> None:
        """:meth:`drop` *mailbox_id* unless this connection holds it again. For a drop
        decided earlier and run later (another node took the mailbox): had this
        connection subscribed it again in between, a plain drop would remove the fresh
        cursor and leave the mailbox delivered nowhere."""
        if self._conn.node.subscribers.get(mailbox_id) is not self._conn:
            await self.drop(mailbox_id)

    def on_ack(self, mailbox_id: bytes, up_to_seq: int, seqs: Sequence[int]) -> None:
        """Account for an ack in the window; reopen a full window past half of it."""
        cursor = self._cursors.get(mailbox_id)
        if cursor is None:
            return
        unacked = cursor.unacked
        if unacked and unacked[0] <= up_to_seq:
            del unacked[:bisect.bisect_right(unacked, up_to_seq)]
        for seq in seqs:
            with contextlib.suppress(ValueError):
                unacked.remove(seq)
        if cursor.full and len(unacked) <= self._window // 2:
            cursor.full = False
            self._sub.resync(mailbox_id)

    async def close(self) -> None:
        self._cursors.clear()
        if self._set_direct is not None:
            self._set_direct(None)
        await self._sub.close()
        self._task.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await self._task

    # ------------------------------------------------------------------ the pump

    def _direct(self, mailbox_id: bytes, note: Notification) -> bool:
        """A hint published while the pump is parked on an empty queue: do here, in the
        publisher's turn, what :meth:`_run` would do with it next, when that needs no
        waiting (a live delivery in order, or a hint to skip). False leaves it to the
        pump (queued as usual): anything but ``MESSAGE``, a gap or a hint without
        payload (read from the store), a socket whose peer stopped reading (the pump
        waits for the drain) or that closed. Saves a task wake-up and step per delivery:
        a 1,000-member group message is 1,000 of them."""
        if note.kind is not _MESSAGE:
            return False
        cursor = self._cursors.get(mailbox_id)
        seq = note.seq
        if cursor is None or cursor.held or cursor.full or seq <= cursor.last:
            return True  # what the pump does with it: nothing
        conn = self._conn
        if seq != cursor.last + 1 or not note.payload or conn.ws.closed:
            return False
        if not conn.sink.send_nowait(note.payload):
            return False
        cursor.last = seq
        cursor.unacked.append(seq)
        if len(cursor.unacked) >= self._window:
            cursor.full = True
        return True

    async def _run(self) -> None:
        sub = self._sub
        cursors = self._cursors
        send = self._conn.send
        window = self._window
        while True:
            try:
                mailbox_id, note = await sub.get()
            except StopAsyncIteration:
                return
            try:
                kind = note.kind
                if kind is _MESSAGE:
                    cursor = cursors.get(mailbox_id)
                    if cursor is None or cursor.held or cursor.full or note.seq <= cursor.last:
                        continue
                    if note.seq == cursor.last + 1 and note.payload:
                        await send(note.payload)
                        cursor.last = note.seq
                        cursor.unacked.append(note.seq)
                        if len(cursor.unacked) >= window:
                            cursor.full = True
                    else:  # a gap (expired or unseen envelopes) or a hint without payload
                        await self._catch_up(mailbox_id, cursor, expiry=False)
                elif kind is _EPHEMERAL:
                    if note.payload and mailbox_id in cursors:
                        await send(note.payload)
                elif kind is _RESYNC:
                    cursor = cursors.get(mailbox_id)
                    if cursor is not None and not cursor.held and not cursor.full:
                        await self._catch_up(mailbox_id, cursor, expiry=True)
                elif kind is _CLOSED:
                    await self.drop(mailbox_id)
            except StoreError as exc:
                _log.warning("delivery: store failed: %s; retrying", type(exc).__name__)
                await asyncio.sleep(_STORE_RETRY_S)
                sub.resync(mailbox_id)
            except Exception:  # the pump must outlive a bug in one delivery; it is logged
                _log.exception("delivery failed")

    async def _catch_up(self, mailbox_id: bytes, cursor: Cursor, *, expiry: bool) -> None:
        node = self._conn.node
        store = node.store
        send = self._conn.send
        if expiry and not await self._report_expiry(mailbox_id, cursor):
            return
        room = self._window - len(cursor.unacked)
        if room <= 0:
            cursor.full = True
            return
        limit = min(room, PAGE)
        now = node.clock_ms()
        # Expired envelopes the sweeper has not reached come too (as of time 0 nothing
        # has expired), so that they are reported before the deliveries that follow them.
        page = await store.fetch(mailbox_id, after_seq=cursor.last, limit=limit,
                                 now_ms=_EVERYTHING)
        expired = swept = False
        for message in page:
            if self._cursors.get(mailbox_id) is not cursor:
                return  # dropped meanwhile
            if message.seq <= cursor.last:
                continue
            if message.expires_at_ms <= now:
                expired = True
                continue
            if expired and not swept:
                swept = True
                if not await self._sweep(mailbox_id, cursor, now):
                    return
            await send(delivery_bytes(mailbox_id, message.seq, message.received_at_ms,
                                      message.blob))
            cursor.last = message.seq
            cursor.unacked.append(message.seq)
        if expired:
            if not swept and not await self._sweep(mailbox_id, cursor, now):
                return
            cursor.last = max(cursor.last, page[-1].seq)  # gone from the store
        if len(cursor.unacked) >= self._window:
            cursor.full = True
        elif len(page) >= limit:
            self._sub.resync(mailbox_id)  # there may be more: after the other mailboxes

    async def _sweep(self, mailbox_id: bytes, cursor: Cursor, now_ms: int) -> bool:
        """Sweep the mailbox's expired envelopes into its stored notice (as the sweeper
        does), then send the notice: before the deliveries that follow them, and never
        lost (it stays stored until written). False if the mailbox was dropped."""
        node = self._conn.node
        node.metrics.expired("messages", await node.store.expire_mailbox(mailbox_id,
                                                                         now_ms=now_ms))
        return await self._report_expiry(mailbox_id, cursor)

    async def _report_expiry(self, mailbox_id: bytes, cursor: Cursor) -> bool:
        """Send the stored expiry notice if one is pending (``MessagesExpired``), and clear
        it once written. False if the mailbox was dropped from this pump meanwhile (then
        nothing more of it may be written)."""
        store = self._conn.node.store
        notice = await store.get_expiry_notice(mailbox_id)
        if self._cursors.get(mailbox_id) is not cursor:
            return False
        if notice is not None:
            await self._conn.send(MessagesExpired(
                mailbox_id=mailbox_id, count=min(notice.count, _U32_MAX),
                up_to_seq=notice.up_to_seq).encode())
            if not self._conn.ws.closed:  # cleared only once it was written
                await store.clear_expiry_notice(notice)
        return self._cursors.get(mailbox_id) is cursor  # not dropped while it was written
