"""The WebSocket endpoint ``GET /v1/ws``: admission, and the reader loop of the frame pipeline.

Theory of operation (DESIGN.md "Relay pipeline"; protocol §9.1, §9.2, §9.6):

* :func:`websocket_handler` admits a connection (503 beyond ``max_connections``), sets the
  WebSocket maximum message size to ``max_frame_size`` (an oversize frame is refused
  before it is buffered: aiohttp closes with 1009), turns off per-message compression
  (ciphertext does not compress, and compression next to secrets invites length
  side channels), registers the socket (``app[WEBSOCKETS]``, the connections gauge) in
  ``try/finally`` and runs :func:`run_pipeline` with a fresh
  :class:`~relay.connection.Connection`.
* :func:`run_pipeline` is the reader loop. For each message: wait first if the store is
  lagging (backpressure: durable frames are never dropped, they wait in the socket); a
  text message or a frame that does not decode is answered ``Error`` with the decoder's
  code and the request id when it could be read, and counts as misbehaviour; errors that
  cannot be tied to a request (request id 0 or unreadable, unsupported version) are
  fatal: ``Error`` then close 1002. Past ``misbehaviour_threshold`` strikes the
  connection is closed too. A good frame is resolved to its route
  (:data:`relay.resolver.RESOLVER`); its inline stages run here, the forked ones in a
  bounded task (:meth:`~relay.connection.Connection.fork`). Before ``Connect`` every other
  frame is ``UNEXPECTED_FRAME``.
* A stage's :class:`~relay.pipeline.Refuse` becomes ``Error(request_id, code,
  retry_after_ms)``; a store failure ``UNAVAILABLE`` (nothing was stored); anything
  unexpected ``INTERNAL`` (logged with the frame type only: never ids, keys or content).
"""

from __future__ import annotations

import logging
from typing import Final

from aiohttp import WSCloseCode, WSMsgType, web

from pigeon_crypto.errors import StoreError
from protocol import (
    Connect,
    Direction,
    ErrorCode,
    FrameTooLarge,
    Overloaded,
    RemoteProtocolError,
    UnsupportedProtocolVersion,
    decode_frame,
)

from .connection import Connection
from .pipeline import FrameCtx, Halt, Refuse, error_bytes
from .resolver import RESOLVER
from .typedefs import CONFIG, METRICS, NODE, WEBSOCKETS

__all__ = ["HEARTBEAT_S", "run_pipeline", "websocket_handler"]

_log = logging.getLogger("pigeon.relay.ws")

HEARTBEAT_S: Final = 30.0
"""WebSocket ping interval: finds dead peers behind NATs within a minute."""
_OVERLOADED_RETRY_MS: Final = 250
"""``Overloaded.retry_after_ms`` sent when reads pause for a lagging store."""
_RETRY_STORE_MS: Final = 1000
_BINARY: Final = WSMsgType.BINARY
_TO_RELAY: Final = Direction.TO_RELAY


async def websocket_handler(request: web.Request) -> web.StreamResponse:
    """``GET /v1/ws``: upgrade, register, run the pipeline, unregister."""
    app = request.app
    config = app[CONFIG]
    if len(app[WEBSOCKETS]) >= config.max_connections:
        return web.json_response({"error": "too many connections"}, status=503,
                                 headers={"Retry-After": "5"})
    ws = web.WebSocketResponse(max_msg_size=config.max_frame_size, heartbeat=HEARTBEAT_S,
                               compress=False)
    await ws.prepare(request)
    sockets, metrics = app[WEBSOCKETS], app[METRICS]
    sockets.add(ws)
    metrics.connection_opened()
    conn = Connection(app[NODE], ws, request.remote or "")
    try:
        await run_pipeline(conn)
    finally:
        sockets.discard(ws)
        metrics.connection_closed()
        if not ws.closed:
            await ws.close(code=WSCloseCode.GOING_AWAY)
        await conn.finish()
    return ws


async def _refuse(conn: Connection, request_id: int, refusal: Refuse) -> None:
    await conn.send(error_bytes(request_id, refusal.code, retry_after_ms=refusal.retry_after_ms,
                                message=refusal.message))


async def _bad_frame(conn: Connection, exc: RemoteProtocolError | None) -> bool:
    """Answer a frame that does not decode. Returns True when the connection was closed."""
    rid = exc.request_id if exc is not None else None
    code = exc.code if exc is not None else ErrorCode.MALFORMED_FRAME
    message = str(exc) if exc is not None else "text messages are not frames"
    fatal = not rid or isinstance(exc, UnsupportedProtocolVersion)
    over = conn.misbehaviour.strike()
    await conn.send(error_bytes(rid or 0, code, message=message))
    if fatal or over:
        conn.node.metrics.misbehaviour_closed()
        close = (WSCloseCode.MESSAGE_TOO_BIG if isinstance(exc, FrameTooLarge)
                 else WSCloseCode.PROTOCOL_ERROR)
        reason = b"too many bad frames" if over and not fatal else b"protocol error"
        await conn.ws.close(code=close, message=reason)
        return True
    return False


async def _wait_for_store(conn: Connection) -> None:
    """Backpressure: stop reading this socket until the store's queue drains."""
    await conn.send(Overloaded(retry_after_ms=_OVERLOADED_RETRY_MS).encode())
    await conn.node.wait_for_store()


async def run_pipeline(conn: Connection) -> None:
    """Read frames until the socket closes (see the module docstring)."""
    ws = conn.ws
    node = conn.node
    metrics = node.metrics
    resolver = RESOLVER
    while True:
        if node.store_lagging():
            await _wait_for_store(conn)
        msg = await ws.receive()
        if msg.type is not _BINARY:
            if msg.type is WSMsgType.TEXT:
                if await _bad_frame(conn, None):
                    return
                continue
            if msg.type is WSMsgType.ERROR:
                metrics.misbehaviour_closed()  # oversize or broken framing: aiohttp closed it
            return  # CLOSE, CLOSING, CLOSED, ERROR
        try:
            frame = decode_frame(msg.data, direction=_TO_RELAY)
        except RemoteProtocolError as exc:
            if await _bad_frame(conn, exc):
                return
            continue
        route = resolver[type(frame)]
        metrics.frame_in(route.name)
        rid: int = getattr(frame, "request_id", 0)
        ctx = FrameCtx(conn, frame, rid)
        try:
            if not conn.connected and type(frame) is not Connect:
                raise Refuse(ErrorCode.UNEXPECTED_FRAME, message="the first frame is Connect")
            if route.forked and rid in conn.inflight:
                raise Refuse(ErrorCode.DUPLICATE, message="request id in flight")
            for stage in route.inline:
                pending = stage(ctx)
                if pending is not None:
                    await pending
            if route.forked:
                await conn.fork(route, ctx)
        except Refuse as refusal:
            await _refuse(conn, rid, refusal)
        except Halt:
            if ws.closed:
                return
        except StoreError as exc:
            _log.warning("%s: store failed: %s", route.name, type(exc).__name__)
            await conn.send(error_bytes(rid, ErrorCode.UNAVAILABLE,
                                        retry_after_ms=_RETRY_STORE_MS))
        except Exception:
            _log.exception("%s failed", route.name)
            await conn.send(error_bytes(rid, ErrorCode.INTERNAL))
