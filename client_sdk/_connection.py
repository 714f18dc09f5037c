"""One WebSocket connection to a relay: framing and request/response correlation.

:class:`RelayConnection` wraps an open aiohttp WebSocket. ``request`` assigns the next
request id (counting up from 1, wrapping below 2**32), sends the frame and awaits the
frame that answers it (``Error`` raises :class:`~client_sdk.errors.RelayError`);
``send`` sends a frame that has no success answer (``Ack``, ``SendEphemeral``; an
``Error`` for it is logged). Every other frame the relay sends (deliveries, notices,
``Ping``) goes to the ``on_frame`` callback in arrival order. When the socket closes,
every pending request fails with :class:`~client_sdk.errors.ConnectionLost`.

URLs: ``relay_url`` may be the relay's base URL (``http(s)://host:port``, as
``pigeon-relay`` prints it) or a WebSocket URL; :func:`websocket_url` gives
``ws(s)://host:port/v1/ws``. TLS pinning: ``tls_fingerprint`` (the SHA-256 of the
relay certificate's DER bytes, as ``pigeon-relay fingerprint`` prints it) is checked on
every connection with ``aiohttp.Fingerprint``; a mismatch is
:class:`~client_sdk.errors.CertificatePinMismatch`. Without TLS, only loopback
addresses are allowed (protocol §9.1).
"""

from __future__ import annotations

import asyncio
import ipaddress
import logging
import urllib.parse
from collections import deque
from collections.abc import Callable
from typing import Final

import aiohttp

from protocol import limits as L
from protocol.errors import RemoteProtocolError
from protocol.frames import Direction, Error, Frame, Ping, Pong, Request, decode_frame

from .errors import ConnectionLost, RelayError

__all__ = ["Answer", "RelayConnection", "parse_fingerprint", "websocket_url"]

_log = logging.getLogger("pigeon.sdk.connection")

WS_PATH: Final = "/v1/ws"
HEARTBEAT_S: Final = 30.0
"""WebSocket pings find a dead connection within a minute (the relay does the same)."""
REQUEST_TIMEOUT_S: Final = 30.0

Answer = Callable[[Frame | BaseException], None]
"""Receives a request's answer frame, its ``RelayError``, or ``ConnectionLost``."""


def websocket_url(relay_url: str) -> str:
    """The WebSocket endpoint of a relay given by its base or WebSocket URL.

    Raises:
        ValueError: not an http(s)/ws(s) URL, or plain text to a non-loopback host.
    """
    parts = urllib.parse.urlsplit(relay_url.strip())
    scheme = {"http": "ws", "https": "wss", "ws": "ws", "wss": "wss"}.get(parts.scheme)
    if scheme is None or not parts.hostname:
        raise ValueError("the relay URL must be http(s):// or ws(s)://host[:port]")
    if scheme == "ws" and not _loopback(parts.hostname):
        raise ValueError("a relay off this machine must be reached over TLS (wss/https)")
    path = parts.path.rstrip("/")
    if not path.endswith(WS_PATH):
        path += WS_PATH
    return urllib.parse.urlunsplit((scheme, parts.netloc, path, "", ""))


def _loopback(host: str) -> bool:
    if host == "localhost":
        return True
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        return False


def parse_fingerprint(text: str | bytes) -> bytes:
    """A SHA-256 certificate fingerprint from bytes, hex, or ``AA:BB:…`` form."""
    raw = text if isinstance(text, bytes) else bytes.fromhex(text.replace(":", "").strip())
    if len(raw) != 32:
        raise ValueError("a certificate fingerprint is 32 bytes (SHA-256)")
    return raw


class RelayConnection:
    """An open, framed connection. Not reusable after close."""

    def __init__(self, ws: aiohttp.ClientWebSocketResponse,
                 on_frame: Callable[[Frame], None]) -> None:
        self._ws = ws
        self._on_frame = on_frame
        self._next_id = 0
        self._pending: dict[int, asyncio.Future[Frame] | Answer] = {}
        self._out: deque[bytes] = deque()
        self._writer: asyncio.Task[None] | None = None
        self.closed = False
        self.close_code: int | None = None

    def next_id(self) -> int:
        self._next_id = self._next_id % L.MAX_REQUEST_ID + 1
        while self._next_id in self._pending:
            self._next_id = self._next_id % L.MAX_REQUEST_ID + 1
        return self._next_id

    def start(self, build: Callable[[int], Request]) -> tuple[Request, asyncio.Future[Frame]]:
        """Send a request now; return it and the future of its answer."""
        if self.closed:
            raise ConnectionLost("not connected", self.close_code)
        frame = build(self.next_id())
        future: asyncio.Future[Frame] = asyncio.get_running_loop().create_future()
        self._pending[frame.request_id] = future
        self._send_bytes(frame.encode())
        return frame, future

    def start_with(self, build: Callable[[int], Request], on_answer: Answer) -> Request:
        """Send a request now; *on_answer* is called from the read loop with its answer
        (or error) instead of resolving a future: for callers with thousands of
        requests in flight (the outbox pump), one callback each and nothing scheduled."""
        if self.closed:
            raise ConnectionLost("not connected", self.close_code)
        frame = build(self.next_id())
        self._pending[frame.request_id] = on_answer
        self._send_bytes(frame.encode())
        return frame

    async def request(self, build: Callable[[int], Request],
                      timeout_s: float = REQUEST_TIMEOUT_S) -> Frame:
        """Send a request and await its answer.

        Raises:
            RelayError: the relay answered ``Error``.
            ConnectionLost: the connection closed first (the outcome is unknown).
            TimeoutError: no answer in time.
        """
        frame, future = self.start(build)
        try:
            # asyncio.timeout, not wait_for: on Python 3.11 wait_for swallows a
            # cancellation that arrives in the same loop turn as the answer, and the
            # cancelled caller (the connection loop, on close) would run on.
            async with asyncio.timeout(timeout_s):
                return await future
        finally:
            self._pending.pop(frame.request_id, None)

    def send(self, build: Callable[[int], Request]) -> None:
        """Send a request that is not answered on success (``Ack``, ``SendEphemeral``)."""
        self.send_frame(build(self.next_id()))

    def send_frame(self, frame: Request) -> None:
        """Send a built request (its id from :meth:`next_id`) that is not answered on
        success."""
        if self.closed:
            raise ConnectionLost("not connected", self.close_code)
        self._send_bytes(frame.encode())

    def _send_bytes(self, data: bytes) -> None:
        # send_bytes only buffers into the transport (it waits only when the transport
        # asks to drain); one writer task per burst keeps callers sync and frames in
        # order, without a task per frame.
        self._out.append(data)
        if self._writer is None:
            self._writer = asyncio.ensure_future(self._write_out())
            self._writer.add_done_callback(self._writer_done)

    async def _write_out(self) -> None:
        out = self._out
        send = self._ws.send_bytes
        while out:
            await send(out.popleft())

    def _writer_done(self, task: asyncio.Task[None]) -> None:
        self._writer = None
        _log_send_failure(task)
        if task.cancelled() or task.exception() is not None:
            self._out.clear()  # the socket is gone: what is left can never be written
        elif self._out:
            self._writer = asyncio.ensure_future(self._write_out())
            self._writer.add_done_callback(self._writer_done)

    async def read_loop(self) -> None:
        """Read frames until the socket closes; then fail what is pending."""
        try:
            async for msg in self._ws:
                if msg.type is aiohttp.WSMsgType.BINARY:
                    self._dispatch(msg.data)
                elif msg.type is aiohttp.WSMsgType.ERROR:
                    break
                else:
                    _log.warning("unexpected WebSocket message type %s", msg.type)
        finally:
            self.closed = True
            self.close_code = self._ws.close_code
            lost = ConnectionLost("the connection to the relay closed", self.close_code)
            pending, self._pending = self._pending, {}
            for waiter in pending.values():
                if not isinstance(waiter, asyncio.Future):
                    waiter(lost)
                elif not waiter.done():
                    waiter.set_exception(lost)

    def _dispatch(self, data: bytes) -> None:
        try:
            frame = decode_frame(data, direction=Direction.TO_CLIENT)
        except RemoteProtocolError as exc:
            _log.warning("undecodable frame from the relay: %s", exc)
            return
        if isinstance(frame, Ping):
            self._send_bytes(Pong(request_id=frame.request_id).encode())
            return
        rid = getattr(frame, "request_id", 0)
        if rid:
            waiter = self._pending.pop(rid, None)
            if waiter is not None:
                answer: Frame | BaseException = frame
                if isinstance(frame, Error):
                    answer = RelayError(frame.code, frame.message, frame.retry_after_ms)
                if not isinstance(waiter, asyncio.Future):
                    waiter(answer)
                elif waiter.done():
                    pass
                elif isinstance(answer, BaseException):
                    waiter.set_exception(answer)
                else:
                    waiter.set_result(answer)
                return
            if isinstance(frame, Error):
                _log.info("relay error %s for request %d", frame.code, rid)
                return
        self._on_frame(frame)

    async def close(self) -> None:
        await self._ws.close()


def _log_send_failure(task: asyncio.Future[None]) -> None:
    if not task.cancelled() and task.exception() is not None:
        _log.debug("send on a closing connection failed: %s", task.exception())
