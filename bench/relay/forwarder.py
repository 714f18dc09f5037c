"""The ceiling: a bare aiohttp WebSocket forwarder (no storage, no auth, no parsing).

Run: ``python -m bench.relay.forwarder --port 0`` prints exactly one line on stdout once
it accepts connections (``forwarder listening on http://127.0.0.1:PORT``), like
``pigeon-relay``, and stops on SIGINT/SIGTERM.

``GET /ws?pair=ID&role=recv`` registers the receiver socket of pair ``ID`` (messages it
sends, e.g. acks, are read and dropped); ``GET /ws?pair=ID&role=send`` forwards each
binary message to the receiver of the same pair with ``send_bytes`` (dropped, and
counted, if that receiver is gone). The server is configured like the relay's (same
aiohttp, ``max_msg_size`` 256 KiB, no access log) so that the only difference measured is
the relay's own work: decoding, auth, capability, credits, group commit, ``Sent``,
delivery, acks, removal.
"""

from __future__ import annotations

import argparse
import asyncio
import signal
import sys

from aiohttp import WSMsgType, web

MAX_FRAME_SIZE = 256 * 1024
LISTENING_PREFIX = "forwarder listening on "

RECEIVERS = web.AppKey("receivers", dict)
DROPPED = web.AppKey("dropped", list)


async def ws_handler(request: web.Request) -> web.StreamResponse:
    pair = request.query.get("pair", "")
    role = request.query.get("role", "")
    if not pair or role not in ("send", "recv"):
        return web.Response(status=400, text="pair and role=send|recv required")
    receivers: dict[str, web.WebSocketResponse] = request.app[RECEIVERS]
    ws = web.WebSocketResponse(max_msg_size=MAX_FRAME_SIZE)
    if role == "recv":
        receivers[pair] = ws  # before the 101 goes out: a sender cannot race it
        try:
            await ws.prepare(request)
            async for _msg in ws:
                pass
        finally:
            if receivers.get(pair) is ws:
                del receivers[pair]
        return ws
    await ws.prepare(request)
    dropped = request.app[DROPPED]
    async for msg in ws:
        if msg.type is WSMsgType.BINARY:
            peer = receivers.get(pair)
            if peer is None or peer.closed:
                dropped[0] += 1
                continue
            await peer.send_bytes(msg.data)
    return ws


def create_app() -> web.Application:
    app = web.Application()
    app[RECEIVERS] = {}
    app[DROPPED] = [0]
    app.router.add_get("/ws", ws_handler)
    return app


async def serve(host: str, port: int) -> None:
    runner = web.AppRunner(create_app(), access_log=None, handle_signals=False,
                           shutdown_timeout=1.0)
    await runner.setup()
    try:
        site = web.TCPSite(runner, host, port)
        await site.start()
        bound_host, bound_port = runner.addresses[0][:2]
        print(f"{LISTENING_PREFIX}http://{bound_host}:{bound_port}", flush=True)
        stop = asyncio.Event()
        loop = asyncio.get_running_loop()
        for sig in (signal.SIGINT, signal.SIGTERM):
            loop.add_signal_handler(sig, stop.set)
        await stop.wait()
    finally:
        await runner.cleanup()


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m bench.relay.forwarder",
                                     description=__doc__.split("\n")[0] if __doc__ else None)
    parser.add_argument("--host", default="127.0.0.1")
    parser.add_argument("--port", type=int, default=0)
    args = parser.parse_args(argv)
    if args.host not in ("127.0.0.1", "localhost", "::1"):
        parser.error("loopback only")
    asyncio.run(serve(args.host, args.port))
    return 0


if __name__ == "__main__":
    sys.exit(main())
