"""The AsyncClient's background work (split from ``client.py``): frames from the relay,
the batched receiver (process, ack after commit, emit, then delivery receipts), the
group-committed sender, prekey replenishment and hourly maintenance. Mixed into
:class:`~client_sdk.client.AsyncClient`."""

from __future__ import annotations

import asyncio
import contextlib
import functools
import logging
from collections import deque
from collections.abc import Callable, Sequence
from typing import TYPE_CHECKING, Any, Final, TypeVar

from pigeon_crypto.errors import PigeonError
from protocol.frames import (
    Delivery,
    EphemeralDelivery,
    Frame,
    MessagesExpired,
    Overloaded,
    PrekeysLow,
)

from . import _sending
from .errors import ConnectionLost, NotRegistered
from .events import Event, MessageRef
from .frames import ack_frames

if TYPE_CHECKING:
    from ._connection import RelayConnection
    from ._pump import OutboxPump
    from .core import ClientCore
    from .store.records import OutboxItem

__all__ = ["RECEIVE_BATCH", "SEND_BATCH", "BackgroundMixin"]

_log = logging.getLogger("pigeon.sdk")

RECEIVE_BATCH: Final = 512
"""Deliveries processed in one transaction."""
SEND_BATCH: Final = 512
"""Intents encrypted and stored in one transaction."""

T = TypeVar("T")


class BackgroundMixin:
    """Mixed into AsyncClient (which provides the attributes declared here)."""

    if TYPE_CHECKING:
        _conn: RelayConnection | None
        _core: ClientCore | None
        _pump: OutboxPump
        _rx: deque[Frame]
        _rx_wake: asyncio.Event
        _tx: list[tuple[_sending.Intent, asyncio.Future[MessageRef | None]]]
        _tx_wake: asyncio.Event
        _closing: asyncio.Event
        dropped_envelopes: int

        @property
        def core(self) -> ClientCore: ...

        async def _run(self, fn: Callable[[ClientCore], T]) -> T: ...

        def _spawn(self, coro: Any) -> asyncio.Task[Any]: ...

        async def _after_login(self, conn: RelayConnection,
                               notice: PrekeysLow | None = None) -> None: ...

        def _emit(self, events: Sequence[Event]) -> None: ...

        @staticmethod
        def _now_ms() -> int: ...

    # --- frames from the relay ------------------------------------------------------------

    def _on_frame(self, frame: Frame) -> None:
        if isinstance(frame, Delivery | EphemeralDelivery | MessagesExpired):
            self._rx.append(frame)
            self._rx_wake.set()
        elif isinstance(frame, PrekeysLow):
            self._spawn(self._replenish(frame))
        elif isinstance(frame, Overloaded):
            _log.warning("relay overloaded; it asks to wait %d ms", frame.retry_after_ms)
        else:
            _log.debug("ignored frame %s", type(frame).__name__)

    async def _replenish(self, notice: PrekeysLow) -> None:
        conn = self._conn
        if conn is not None:
            with contextlib.suppress(PigeonError):
                await self._after_login(conn, notice)

    async def _receiver(self) -> None:
        """Process deliveries in batches, ack after commit, then emit."""
        while True:
            await self._rx_wake.wait()
            self._rx_wake.clear()
            while self._rx:
                frame = self._rx.popleft()
                now = self._now_ms()
                if isinstance(frame, Delivery):
                    batch = [frame]
                    while self._rx and isinstance(self._rx[0], Delivery) \
                            and len(batch) < RECEIVE_BATCH:
                        batch.append(self._rx.popleft())  # type: ignore[arg-type]
                    received = await self._run(functools.partial(_receive, batch=batch,
                                                                 now_ms=now))
                    self.dropped_envelopes += received.dropped
                    self._ack(received.acks)
                    self._pump.add(received.items)
                    self._emit(received.events)
                elif isinstance(frame, EphemeralDelivery):
                    events = await self._run(functools.partial(_ephemeral, frame=frame,
                                                               now_ms=now))
                    self._emit(events)
                elif isinstance(frame, MessagesExpired):
                    events = await self._run(functools.partial(_expired, frame=frame))
                    self._emit(events)
            if self.core.pending_receipts:
                done = await self._run(lambda c: c.flush_receipts(now_ms=self._now_ms()))
                self._pump.add(done.items)

    def _ack(self, acks: dict[bytes, list[int]]) -> None:
        conn = self._conn
        if conn is None or conn.closed:
            return  # unacked envelopes come again; envelope_seen acks them then
        with contextlib.suppress(ConnectionLost):
            for mailbox_id, seqs in acks.items():
                for frame in ack_frames(mailbox_id, seqs, iter(conn.next_id, 0)):
                    conn.send_frame(frame)

    async def _sender(self) -> None:
        """Group commit of send intents: one core call per burst."""
        batch: list[tuple[_sending.Intent, asyncio.Future[MessageRef | None]]] = []
        try:
            while True:
                await self._tx_wake.wait()
                self._tx_wake.clear()
                while self._tx:
                    batch, self._tx = self._tx[:SEND_BATCH], self._tx[SEND_BATCH:]
                    now = self._now_ms()
                    intents = [i for i, _ in batch]
                    try:
                        done = await self._run(functools.partial(_submit, intents=intents,
                                                                 now_ms=now))
                    except Exception as exc:
                        for _, future in batch:
                            if not future.done():
                                future.set_exception(exc)
                        continue
                    self._pump.add(done.items)
                    self._emit(done.events)
                    for (_, future), result in zip(batch, done.results, strict=True):
                        if future.done():
                            continue
                        if isinstance(result, BaseException):
                            future.set_exception(result)
                        else:
                            future.set_result(result)
                    batch = []
        finally:
            # Cancelled by close(): the callers of what is queued (and of the batch the
            # worker may still be storing) must not wait forever for an answer.
            lost = ConnectionLost("the client closed before the message was stored (a "
                                  "message already being stored is sent when the "
                                  "profile is opened again)")
            pending, self._tx = [*batch, *self._tx], []
            for _, future in pending:
                if not future.done():
                    future.set_exception(lost)

    async def _submit(self, intent: _sending.Intent) -> MessageRef | None:
        return await self._queue_intents([intent])[0]

    def _queue_intents(self, intents: Sequence[_sending.Intent],
                       ) -> list[asyncio.Future[MessageRef | None]]:
        """Queue intents for the group commit; one future each (no task per intent)."""
        if self._core is None or not self._core.has_identity:
            raise NotRegistered()
        if self._closing.is_set():  # no sender any more: the futures would never resolve
            raise ConnectionLost("the client is closed")
        loop = asyncio.get_running_loop()
        futures: list[asyncio.Future[MessageRef | None]] = [loop.create_future()
                                                              for _ in intents]
        self._tx += zip(intents, futures, strict=True)
        self._tx_wake.set()
        return futures

    async def _group_checks(self) -> None:
        """Every 30 s: the core's group upkeep (expiries, missing states)."""
        while True:
            await asyncio.sleep(30)
            try:
                items = await self._run(functools.partial(_group_upkeep,
                                                          now_ms=self._now_ms()))
            except PigeonError as exc:  # a store error: try again next time
                _log.warning("group upkeep failed: %s", type(exc).__name__)
                continue
            if items:
                self._pump.add(items)

    async def _maintenance(self) -> None:
        """Hourly: rotate the signed prekey when due, purge disappearing messages."""
        while True:
            await asyncio.sleep(3600)
            conn = self._conn
            await self._run(functools.partial(_purge, now_ms=self._now_ms()))
            if conn is not None:
                with contextlib.suppress(PigeonError, TimeoutError):
                    await self._after_login(conn, PrekeysLow(one_time_prekeys=10**6,
                                                              one_time_kem_prekeys=10**6))


def _receive(core: ClientCore, *, batch: list[Delivery], now_ms: int) -> Any:
    return core.receive(batch, now_ms=now_ms)


def _ephemeral(core: ClientCore, *, frame: EphemeralDelivery, now_ms: int) -> list[Event]:
    return core.receive_ephemeral(frame.mailbox_id, frame.blob, now_ms=now_ms)


def _expired(core: ClientCore, *, frame: MessagesExpired) -> list[Event]:
    return core.messages_expired(frame.mailbox_id, frame.count, frame.up_to_seq)


def _submit(core: ClientCore, *, intents: list[_sending.Intent], now_ms: int,
            ) -> _sending.Submitted:
    return core.submit(intents, now_ms=now_ms)


def _group_upkeep(core: ClientCore, *, now_ms: int) -> list[OutboxItem]:
    return core.group_upkeep(now_ms=now_ms)


def _purge(core: ClientCore, *, now_ms: int) -> int:
    return core.store.purge_expired(now_ms=now_ms)

