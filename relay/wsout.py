"""Outbound WebSocket frames, coalesced: one socket write per connection per loop iteration.

Theory of operation:

* aiohttp writes every frame with its own ``transport.write``: on an idle socket that is
  one ``send()`` system call per frame, and under load a connection gets dozens of
  frames in one event-loop iteration (every ``Sent`` of a group commit, a burst of
  deliveries). :class:`FrameSink` builds the (unmasked, server-side) binary frames of
  the pipeline itself, keeps those queued during one iteration, and hands them to the
  transport in one ``write`` at the end of it (``loop.call_soon``), or at once past
  ``FLUSH_AT`` bytes.
* It sits in front of the transport that aiohttp's ``WebSocketWriter`` writes to, as a
  proxy: aiohttp's own frames (pings, pongs, the close frame) flush what is queued and
  then go out immediately, so frames stay in order and nothing can follow a close frame.
* Flow control is the transport's: :meth:`FrameSink.send` waits (aiohttp's drain) while
  the transport is paused because the peer stopped reading. Only the writing coroutine
  waits: a slow peer slows only itself.
* Every frame queued is counted in ``frames_out`` by its type, read from the frame's
  third byte (``[version, type, ...]``: a fixarray header, then two one-byte integers,
  protocol §9.2) without decoding it; aiohttp's own control frames are not counted.
* The proxy relies on two aiohttp internals (``WebSocketResponse._writer.transport`` and
  the protocol's ``_paused``/``_drain_helper``); if they are missing (another aiohttp),
  :func:`attach` returns a sink that calls ``ws.send_bytes`` per frame instead.
"""

from __future__ import annotations

import asyncio
import struct
from typing import Any, Final

from aiohttp import web

from protocol import FRAME_TYPES

from .metrics import Metrics

__all__ = ["FLUSH_AT", "FrameSink", "attach"]

FLUSH_AT: Final = 64 * 1024
"""Queued bytes that are written at once rather than at the end of the iteration."""
_BINARY: Final = 0x82  # FIN + opcode 2
_LEN2: Final = struct.Struct("!BBH").pack
_LEN8: Final = struct.Struct("!BBQ").pack
_TYPE_NAMES: Final = {code: cls.__name__ for code, cls in FRAME_TYPES.items()}
"""Frame type code -> the ``type`` label of ``frames_out`` (the class name, as ``frames_in``)."""


def frame_type_name(data: bytes) -> str:
    """The type of an encoded frame, for metrics: its class name, or ``"unknown"``."""
    return _TYPE_NAMES.get(data[2], "unknown") if len(data) > 2 else "unknown"


def _frame(data: bytes) -> bytes:
    n = len(data)
    if n < 126:
        return bytes((_BINARY, n)) + data
    if n < 65536:
        return _LEN2(_BINARY, 126, n) + data
    return _LEN8(_BINARY, 127, n) + data


class _Proxy:
    """The transport as aiohttp's writer sees it: its writes flush ours first."""

    __slots__ = ("_sink", "_transport")

    def __init__(self, transport: Any, sink: FrameSink) -> None:
        self._transport = transport
        self._sink = sink

    def write(self, data: Any) -> None:
        self._sink.flush()
        self._transport.write(data)

    def is_closing(self) -> bool:
        return bool(self._transport.is_closing())

    def __getattr__(self, name: str) -> Any:
        return getattr(self._transport, name)


class FrameSink:
    """Queues binary frames for one WebSocket; see the module docstring."""

    __slots__ = ("_count", "_loop", "_pending", "_protocol", "_scheduled", "_size",
                 "_transport", "_ws")

    def __init__(self, ws: web.WebSocketResponse, transport: Any, protocol: Any,
                 metrics: Metrics) -> None:
        self._ws = ws
        self._count = metrics.frame_out
        self._transport = transport
        self._protocol = protocol
        self._loop = asyncio.get_running_loop()
        self._pending: list[bytes] = []
        self._size = 0
        self._scheduled = False

    async def send(self, data: bytes) -> None:
        """Queue one binary frame carrying *data*; wait while the peer is not reading.

        Raises:
            ConnectionError: the connection is gone (from the drain).
        """
        if self._transport is None:
            self._count(frame_type_name(data))
            await self._ws.send_bytes(data)
            return
        if self._transport.is_closing():
            return
        self._queue(data)
        if self._protocol._paused:
            await self._protocol._drain_helper()

    @property
    def coalescing(self) -> bool:
        """Frames are queued and written here (else each is an awaited aiohttp send, and
        :meth:`send_nowait` cannot tell whether the peer reads)."""
        return self._transport is not None

    def send_nowait(self, data: bytes) -> bool:
        """:meth:`send` if it would not wait: False (nothing queued) when frames cannot be
        queued here (no transport access) or the peer stopped reading; the caller then
        awaits :meth:`send`. True also when the connection is closing (dropped, as
        :meth:`send` drops it)."""
        transport = self._transport
        if transport is None or self._protocol._paused:
            return False
        if transport.is_closing():
            return True
        self._queue(data)
        return True

    def _queue(self, data: bytes) -> None:
        """Add one frame to the batch: written at once past ``FLUSH_AT``, else at the end
        of this loop iteration."""
        self._count(frame_type_name(data))
        self._pending.append(_frame(data))
        self._size += len(data)
        if self._size >= FLUSH_AT:
            self.flush()
        elif not self._scheduled:
            self._scheduled = True
            self._loop.call_soon(self._flush_soon)

    def _flush_soon(self) -> None:
        self._scheduled = False
        self.flush()

    def flush(self) -> None:
        """Write everything queued, in one call."""
        pending = self._pending
        if not pending:
            return
        data = pending[0] if len(pending) == 1 else b"".join(pending)
        pending.clear()
        self._size = 0
        transport = self._transport
        if transport is not None and not transport.is_closing():
            transport.write(data)


def attach(ws: web.WebSocketResponse, metrics: Metrics) -> FrameSink:
    """A :class:`FrameSink` for a prepared *ws* (coalescing if aiohttp allows it) that
    counts its frames in *metrics*."""
    writer = getattr(ws, "_writer", None)
    transport = getattr(writer, "transport", None)
    protocol = getattr(writer, "protocol", None)
    if (transport is None or protocol is None or not hasattr(protocol, "_paused")
            or not hasattr(protocol, "_drain_helper") or ws.compress):
        return FrameSink(ws, None, None, metrics)
    sink = FrameSink(ws, transport, protocol, metrics)
    writer.transport = _Proxy(transport, sink)  # type: ignore[union-attr]
    return sink
