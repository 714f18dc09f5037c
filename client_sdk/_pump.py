"""The outbox pump: sends stored outbox rows and absorbs the relay's answers.

Theory of operation
    Rows are stored before they are sent (``enqueue``), so the pump only ever sends
    what the store holds, byte for byte, with the row's ``client_msg_id``. It keeps
    the rows it knows (loaded from the store on every connection, plus every row
    queued since) and sends them pipelined, up to ``window`` in flight, on the current
    connection. Answers are absorbed in batches on the core's worker: ``Sent`` rows
    are marked sent together (one transaction), permanent errors mark the message
    FAILED with the error's name, and retryable ones (rate limits, overload, relay
    failures) record an attempt and come back after the exponential backoff of
    ``retry_delay_ms`` (at least the relay's ``retry_after_ms``). A lost connection
    loses nothing: in-flight rows are sent again on the next connection, and the
    relay's per-mailbox idempotency (``client_msg_id``) stores each message once.
"""

from __future__ import annotations

import asyncio
import functools
import logging
from collections import deque
from collections.abc import Awaitable, Callable
from typing import Final

from protocol.errors import ErrorCode
from protocol.frames import Frame, Send, Sent

from ._connection import RelayConnection
from .errors import ConnectionLost, RelayError
from .events import Event
from .frames import send_frame
from .store.records import OutboxItem

__all__ = ["OutboxPump", "is_retryable"]

_log = logging.getLogger("pigeon.sdk.outbox")

WINDOW: Final = 1024
"""Sends in flight per connection: enough to keep a relay's group commit busy."""

_PERMANENT: Final = frozenset({
    ErrorCode.WRONG_CAPABILITY, ErrorCode.TOO_LARGE, ErrorCode.FORBIDDEN,
    ErrorCode.NO_SUCH_MAILBOX,
})


def _build_send(item: OutboxItem, request_id: int) -> Send:
    return send_frame(item, request_id)


def is_retryable(code: int) -> bool:
    """Whether a ``Send`` refused with *code* may succeed later with the same bytes."""
    if code in _PERMANENT:
        return False
    if code == ErrorCode.DUPLICATE:  # a request id clash, not the message
        return True
    return code // 100 in (2, 4, 5)  # auth races, resources, relay failures


class OutboxPump:
    """Owned by the AsyncClient; *run_core* runs a function on the core's worker."""

    def __init__(self, run_core: Callable[..., Awaitable[object]],
                 emit: Callable[[list[Event]], None], now_ms: Callable[[], int],
                 window: int = WINDOW) -> None:
        self._run_core = run_core
        self._emit = emit
        self._now_ms = now_ms
        self._window = window
        self._known: dict[bytes, OutboxItem] = {}
        self._ready: deque[bytes] = deque()
        self._inflight: set[bytes] = set()
        self._attempts: dict[bytes, int] = {}
        self._done: list[tuple[OutboxItem, Frame | BaseException]] = []
        self._conn: RelayConnection | None = None
        self._wake = asyncio.Event()
        self._absorbing = False

    @property
    def pending(self) -> int:
        """Rows known and not yet answered ``Sent`` (or failed)."""
        return len(self._known)

    def add(self, items: list[OutboxItem]) -> None:
        """Queue rows just stored (or loaded from the store)."""
        for item in items:
            if item.client_msg_id not in self._known:
                self._known[item.client_msg_id] = item
                self._ready.append(item.client_msg_id)
        self._fill()

    def attach(self, conn: RelayConnection, stored: list[OutboxItem]) -> None:
        """A new connection: everything known and not answered goes again."""
        self._conn = conn
        self._inflight.clear()
        self._ready = deque(sorted(self._known, key=lambda c: self._known[c].seq))
        self.add(stored)
        self._fill()

    def detach(self) -> None:
        self._conn = None
        self._inflight.clear()

    def _fill(self) -> None:
        conn = self._conn
        if conn is None or conn.closed:
            return
        while self._ready and len(self._inflight) < self._window:
            cmid = self._ready.popleft()
            item = self._known.get(cmid)
            if item is None or cmid in self._inflight:
                continue
            try:
                conn.start_with(functools.partial(_build_send, item),
                                functools.partial(self._answered, item))
            except ConnectionLost:
                self._ready.appendleft(cmid)
                return
            self._inflight.add(cmid)

    def _answered(self, item: OutboxItem, result: Frame | BaseException) -> None:
        """The relay's answer to a ``Send`` (or the connection's loss)."""
        self._done.append((item, result))
        self._wake.set()

    async def run(self) -> None:
        """Absorb answers until cancelled (one core call per burst of answers)."""
        while True:
            await self._wake.wait()
            self._wake.clear()
            done, self._done = self._done, []
            if done:
                await self._absorb(done)
            self._fill()

    async def _absorb(self, done: list[tuple[OutboxItem, Frame | BaseException]]) -> None:
        now = self._now_ms()
        sent: list[OutboxItem] = []
        for item, result in done:
            cmid = item.client_msg_id
            self._inflight.discard(cmid)
            if isinstance(result, Sent):
                sent.append(item)
            elif isinstance(result, RelayError):
                await self._refused(item, result, now)
            else:  # connection lost or timeout: unknown outcome, send again later
                if cmid in self._known and self._conn is not None and not self._conn.closed:
                    self._ready.append(cmid)
        if sent:
            for item in sent:
                self._known.pop(item.client_msg_id, None)
                self._attempts.pop(item.client_msg_id, None)
            events = await self._run_core("sent", sent, now_ms=now)
            assert isinstance(events, list)
            self._emit(events)

    async def _refused(self, item: OutboxItem, error: RelayError, now: int) -> None:
        cmid = item.client_msg_id
        if not is_retryable(error.code):
            self._known.pop(cmid, None)
            try:
                reason = ErrorCode(error.code).name.lower().replace("_", "-")
            except ValueError:
                reason = f"error-{error.code}"
            events = await self._run_core("send_failed", item, reason=reason, now_ms=now)
            assert isinstance(events, list)
            self._emit(events)
            return
        attempts = self._attempts.get(cmid, item.attempts) + 1
        self._attempts[cmid] = attempts
        retry_at = await self._run_core("send_retry", cmid, attempts=attempts,
                                        error=str(error.code), now_ms=now,
                                        not_before_ms=error.retry_after_ms or 0)
        assert isinstance(retry_at, int)
        delay = max(0.0, (retry_at - now) / 1000)
        _log.info("send refused (%s); retrying in %.1f s", error.code, delay)
        asyncio.get_running_loop().call_later(delay, self._requeue, cmid)

    def _requeue(self, cmid: bytes) -> None:
        if cmid in self._known and cmid not in self._inflight:
            self._ready.append(cmid)
            self._fill()
