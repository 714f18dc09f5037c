"""The WebSocket endpoint ``GET /v1/ws``: connection bookkeeping, and a placeholder pipeline.

Theory of operation (DESIGN.md "Relay pipeline"; protocol §9.1):

* :func:`websocket_handler` admits a connection (refusing the upgrade with 503 beyond
  ``max_connections``), sets the WebSocket maximum message size to ``max_frame_size`` (so
  oversize frames are refused before parsing, close code 1009), and registers the socket in
  ``app[WEBSOCKETS]`` and the connections gauge inside ``try/finally`` (STYLE.md section 6);
  ``on_shutdown`` closes every registered socket with 1001 (going away).
* Each connection gets a :class:`Connection`: its send-credit bucket and misbehaviour
  counter (:mod:`relay.credits`), with the node-wide per-mailbox buckets at
  ``app[MAILBOX_CREDITS]``.
* The frame pipeline (decode with ``protocol``, auth, sends, deliveries, acks) replaces
  :func:`run_pipeline`. Until then the relay accepts the upgrade and closes at once with
  :data:`CLOSE_NOT_IMPLEMENTED` and a readable reason, so a client sees a clear answer
  rather than a hang.
"""

from __future__ import annotations

import contextlib
import logging
from collections.abc import AsyncIterator
from dataclasses import dataclass, field
from typing import Final

from aiohttp import WSCloseCode, web

from .credits import Misbehaviour, TokenBucket
from .typedefs import CONFIG, METRICS, MONOTONIC, WEBSOCKETS

__all__ = [
    "CLOSE_NOT_IMPLEMENTED",
    "HEARTBEAT_S",
    "Connection",
    "registered",
    "run_pipeline",
    "websocket_handler",
]

_log = logging.getLogger("pigeon.relay.ws")

CLOSE_NOT_IMPLEMENTED: Final = 4501
"""Private-use close code: this relay build has no frame pipeline yet."""
HEARTBEAT_S: Final = 30.0
"""WebSocket ping interval: finds dead peers behind NATs within a minute."""


@dataclass(slots=True, kw_only=True)
class Connection:
    """Per-connection state the frame pipeline builds on."""

    ws: web.WebSocketResponse = field(repr=False)
    credits: TokenBucket
    misbehaviour: Misbehaviour
    account_id: bytes | None = None
    """Set once the connection authenticates (``Welcome``)."""

    @classmethod
    def for_request(cls, request: web.Request, ws: web.WebSocketResponse) -> Connection:
        config = request.app[CONFIG]
        return cls(
            ws=ws,
            credits=TokenBucket(config.conn_credit_capacity, config.conn_credit_refill_per_s,
                                now=request.app[MONOTONIC]()),
            misbehaviour=Misbehaviour(config.misbehaviour_threshold),
        )


@contextlib.asynccontextmanager
async def registered(request: web.Request, ws: web.WebSocketResponse) -> AsyncIterator[None]:
    """Keep *ws* in the app's socket registry and the connections gauge while open."""
    sockets, metrics = request.app[WEBSOCKETS], request.app[METRICS]
    sockets.add(ws)
    metrics.connection_opened()
    try:
        yield
    finally:
        sockets.discard(ws)
        metrics.connection_closed()


async def run_pipeline(request: web.Request, conn: Connection) -> None:
    """The frame pipeline. Placeholder: closes with :data:`CLOSE_NOT_IMPLEMENTED`."""
    await conn.ws.close(
        code=CLOSE_NOT_IMPLEMENTED,
        message=b"pigeon-relay: WebSocket frame pipeline not implemented yet",
    )


async def websocket_handler(request: web.Request) -> web.StreamResponse:
    """``GET /v1/ws``: upgrade, register, run the pipeline, unregister."""
    config = request.app[CONFIG]
    if len(request.app[WEBSOCKETS]) >= config.max_connections:
        return web.json_response({"error": "too many connections"}, status=503,
                                 headers={"Retry-After": "5"})
    ws = web.WebSocketResponse(max_msg_size=config.max_frame_size, heartbeat=HEARTBEAT_S)
    await ws.prepare(request)
    async with registered(request, ws):
        try:
            await run_pipeline(request, Connection.for_request(request, ws))
        finally:
            if not ws.closed:
                await ws.close(code=WSCloseCode.GOING_AWAY)
    return ws
