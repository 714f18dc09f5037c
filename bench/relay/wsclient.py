"""A lean WebSocket client for the load generator: one asyncio Protocol, no task per message.

Why not ``aiohttp.ClientSession.ws_connect``: one aiohttp client process tops out near
35k frames/s on this machine (a coroutine wake-up, a ``WSMessage`` and a reader queue per
frame), which would make the generator, not the server, the bottleneck. This client:

* does the RFC 6455 upgrade by hand (checks ``101`` and ``Sec-WebSocket-Accept``);
* parses server frames straight out of ``data_received`` and calls ``on_message(payload)``
  synchronously for each binary message (or queues them for :meth:`recv` while a
  request/response handshake is running);
* masks client frames with aiohttp's C masking function and a random key per frame
  (RFC 6455 5.3; the server unmasks either way, so its work is the real one);
* **coalesces writes**: frames sent during one event-loop iteration go out in one
  ``transport.write`` (one ``send`` syscall) at the end of it, like any pipelining client.
  ``send(..., flush=True)`` writes at once (used by the ping-pong phase).

It answers pings with pongs and close frames with a close, and records the close code.
Loopback only: plain ``ws://``.
"""

from __future__ import annotations

import asyncio
import base64
import contextlib
import hashlib
import os
import struct
from collections import deque
from collections.abc import Callable

from aiohttp._websocket.helpers import websocket_mask

__all__ = ["WsClient", "WsClosed", "connect"]

_GUID = b"258EAFA5-E914-47DA-95CA-C5AB0DC85B11"
_PACK_H = struct.Struct("!BB").pack
_PACK_H16 = struct.Struct("!BBH").pack
_PACK_H64 = struct.Struct("!BBQ").pack
_UNPACK_16 = struct.Struct("!H").unpack_from
_UNPACK_64 = struct.Struct("!Q").unpack_from

OP_CONT, OP_TEXT, OP_BINARY, OP_CLOSE, OP_PING, OP_PONG = 0x0, 0x1, 0x2, 0x8, 0x9, 0xA


class WsClosed(Exception):
    """The connection closed (``code`` is the peer's close code, or None)."""

    def __init__(self, code: int | None, reason: str = "") -> None:
        super().__init__(f"websocket closed (code {code}) {reason}".strip())
        self.code = code
        self.reason = reason


class _MaskPool:
    """Random 4-byte masking keys, drawn from the OS in bulk (os.urandom per frame is slow)."""

    __slots__ = ("_i", "_keys")

    def __init__(self) -> None:
        self._keys: list[bytes] = []
        self._i = 0

    def next(self) -> bytes:
        if self._i >= len(self._keys):
            raw = os.urandom(4 * 4096)
            self._keys = [raw[i:i + 4] for i in range(0, len(raw), 4)]
            self._i = 0
        key = self._keys[self._i]
        self._i += 1
        return key


_MASKS = _MaskPool()


class WsClient(asyncio.Protocol):
    """One client WebSocket. Create with :func:`connect`."""

    def __init__(self, host: str, port: int, path: str) -> None:
        self._request = (
            f"GET {path} HTTP/1.1\r\nHost: {host}:{port}\r\nUpgrade: websocket\r\n"
            "Connection: Upgrade\r\n"
        ).encode()
        self._key = base64.b64encode(os.urandom(16))
        self._loop = asyncio.get_running_loop()
        self._handshake: asyncio.Future[None] = self._loop.create_future()
        self._upgraded = False
        self._buf = bytearray()
        self._frag: list[bytes] = []
        self._out: list[bytes] = []
        self._flush_scheduled = False
        self.transport: asyncio.Transport | None = None
        self.on_message: Callable[[bytes], None] | None = None
        """Called with each binary message; None: messages queue for :meth:`recv`."""
        self.on_close: Callable[[WsClient], None] | None = None
        self._queue: deque[bytes] = deque()
        self._waiter: asyncio.Future[None] | None = None
        self.closed = False
        self.close_code: int | None = None
        self.close_reason = ""
        self.frames_in = 0
        self.frames_out = 0

    # ------------------------------------------------------------------ asyncio.Protocol

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        assert isinstance(transport, asyncio.Transport)
        self.transport = transport
        transport.write(self._request + b"Sec-WebSocket-Key: " + self._key
                        + b"\r\nSec-WebSocket-Version: 13\r\n\r\n")

    def data_received(self, data: bytes) -> None:
        if self._upgraded:
            if self._buf:
                self._buf += data
            else:
                self._buf = bytearray(data)
            self._parse()
            return
        self._buf += data
        end = self._buf.find(b"\r\n\r\n")
        if end < 0:
            if len(self._buf) > 16384:
                self._fail(WsClosed(None, "oversized handshake response"))
            return
        head = bytes(self._buf[:end]).decode("latin-1")
        del self._buf[:end + 4]
        status = head.split("\r\n", 1)[0]
        if " 101 " not in status + " ":
            self._fail(WsClosed(None, f"upgrade refused: {status}"))
            return
        accept = base64.b64encode(hashlib.sha1(self._key + _GUID).digest()).decode()
        headers = {k.strip().lower(): v.strip() for k, _, v in
                   (line.partition(":") for line in head.split("\r\n")[1:])}
        if headers.get("sec-websocket-accept") != accept:
            self._fail(WsClosed(None, "bad Sec-WebSocket-Accept"))
            return
        self._upgraded = True
        if not self._handshake.done():
            self._handshake.set_result(None)
        if self._buf:
            self._parse()

    def connection_lost(self, exc: Exception | None) -> None:
        was_closed = self.closed
        self.closed = True
        self.transport = None
        if not self._handshake.done():
            self._handshake.set_exception(WsClosed(None, f"connection lost: {exc}"))
        self._wake()
        if not was_closed and self.on_close is not None:
            self.on_close(self)

    # ------------------------------------------------------------------ parsing

    def _parse(self) -> None:
        buf = self._buf
        n = len(buf)
        pos = 0
        on_message = self.on_message
        while n - pos >= 2:
            b0 = buf[pos]
            b1 = buf[pos + 1]
            length = b1 & 0x7F
            hdr = 2
            if length == 126:
                if n - pos < 4:
                    break
                length = _UNPACK_16(buf, pos + 2)[0]
                hdr = 4
            elif length == 127:
                if n - pos < 10:
                    break
                length = _UNPACK_64(buf, pos + 2)[0]
                hdr = 10
            if b1 & 0x80:  # a server must not mask
                self._fail(WsClosed(None, "masked frame from server"))
                return
            end = pos + hdr + length
            if end > n:
                break
            payload = bytes(buf[pos + hdr:end])
            pos = end
            opcode = b0 & 0x0F
            fin = b0 & 0x80
            if opcode == OP_BINARY and fin:
                self.frames_in += 1
                if on_message is not None:
                    on_message(payload)
                else:
                    self._queue.append(payload)
                    self._wake()
                on_message = self.on_message  # a callback may switch modes
            elif opcode in (OP_BINARY, OP_TEXT, OP_CONT):
                self._frag.append(payload)
                if fin:
                    whole = b"".join(self._frag)
                    self._frag.clear()
                    self.frames_in += 1
                    if on_message is not None:
                        on_message(whole)
                    else:
                        self._queue.append(whole)
                        self._wake()
            elif opcode == OP_PING:
                self._send_raw(OP_PONG, payload, flush=True)
            elif opcode == OP_CLOSE:
                code = _UNPACK_16(payload, 0)[0] if len(payload) >= 2 else None
                self.close_code = code
                self.close_reason = payload[2:].decode("utf-8", "replace")
                self.close()
                return
        if pos:
            del buf[:pos]

    def _wake(self) -> None:
        w = self._waiter
        if w is not None and not w.done():
            w.set_result(None)

    def _fail(self, exc: WsClosed) -> None:
        if not self._handshake.done():
            self._handshake.set_exception(exc)
        self.close_reason = str(exc)
        if self.transport is not None:
            self.transport.abort()

    # ------------------------------------------------------------------ API

    async def wait_upgraded(self) -> None:
        await self._handshake

    async def recv(self, timeout_s: float = 30.0) -> bytes:
        """The next binary message (only while ``on_message`` is None)."""
        async with asyncio.timeout(timeout_s):
            while not self._queue:
                if self.closed:
                    raise WsClosed(self.close_code, self.close_reason)
                self._waiter = self._loop.create_future()
                await self._waiter
        return self._queue.popleft()

    def send(self, payload: bytes, *, flush: bool = False) -> None:
        """Send one binary message (coalesced with others sent this loop iteration)."""
        self._send_raw(OP_BINARY, payload, flush=flush)
        self.frames_out += 1

    def _send_raw(self, opcode: int, payload: bytes, *, flush: bool) -> None:
        if self.transport is None:
            raise WsClosed(self.close_code, self.close_reason or "not connected")
        n = len(payload)
        if n < 126:
            hdr = _PACK_H(0x80 | opcode, 0x80 | n)
        elif n < 65536:
            hdr = _PACK_H16(0x80 | opcode, 0x80 | 126, n)
        else:
            hdr = _PACK_H64(0x80 | opcode, 0x80 | 127, n)
        key = _MASKS.next()
        body = bytearray(payload)
        websocket_mask(key, body)
        self._out.append(hdr)
        self._out.append(key)
        self._out.append(body)  # type: ignore[arg-type]
        if flush:
            self.flush()
        elif not self._flush_scheduled:
            self._flush_scheduled = True
            self._loop.call_soon(self.flush)

    def flush(self) -> None:
        self._flush_scheduled = False
        if self._out and self.transport is not None:
            self.transport.write(b"".join(self._out))
        self._out.clear()

    def close(self, code: int = 1000) -> None:
        """Send a close frame (best effort) and close the transport."""
        if self.transport is None:
            return
        with contextlib.suppress(WsClosed):
            self._send_raw(OP_CLOSE, struct.pack("!H", code), flush=True)
        was_closed = self.closed
        self.closed = True
        if self.transport is not None:
            self.transport.close()
        self._wake()
        if not was_closed and self.on_close is not None:
            self.on_close(self)

    def abort(self) -> None:
        self.closed = True
        if self.transport is not None:
            self.transport.abort()


async def connect(host: str, port: int, path: str, *, timeout_s: float = 30.0) -> WsClient:
    """Open a WebSocket to ``ws://host:port/path`` (loopback only)."""
    if host not in ("127.0.0.1", "localhost", "::1"):
        raise ValueError("the benchmark only talks to loopback")
    loop = asyncio.get_running_loop()
    async with asyncio.timeout(timeout_s):
        _, proto = await loop.create_connection(lambda: WsClient(host, port, path), host, port)
        try:
            await proto.wait_upgraded()
        except BaseException:
            proto.abort()
            raise
    return proto
