"""A stand-in relay that speaks just enough of protocol chapter 9 to check the generator.

Not a benchmark subject: ``python -m bench.relay --fake-relay`` runs the relay phases
against it to prove the client flow (Connect, Challenge, Register with a verified
``Purpose.RELAY_CHALLENGE`` signature, CreateMailbox, Subscribe, Send -> Sent, Delivery,
cumulative Ack with a delivery window) before the real pipeline exists. Every inbound
frame goes through ``protocol.decode_frame(direction=TO_RELAY)``; nothing is stored on
disk; ``Sent`` is answered at once.

Run: ``python -m bench.relay.fake_relay --port 0`` (prints the relay's listening line).
"""

from __future__ import annotations

import argparse
import asyncio
import hashlib
import hmac
import os
import signal
import sys
import time
from collections import deque
from dataclasses import dataclass, field

from aiohttp import WSMsgType, web

from pigeon_crypto.identity import IdentityPublicKey, account_id_for
from pigeon_crypto.signing import Purpose
from protocol import (
    Ack,
    Challenge,
    Connect,
    CreateMailbox,
    Delivery,
    Error,
    ErrorCode,
    MailboxCreated,
    Register,
    Send,
    Sent,
    Subscribe,
    Subscribed,
    Welcome,
    decode_frame,
)
from protocol.frames import Direction
from protocol.payloads import challenge_payload

WINDOW = 256
RELAY_ID = os.urandom(16)


@dataclass(slots=True)
class Mailbox:
    cap_hash: bytes
    seq: int = 0
    pending: deque[tuple[int, bytes]] = field(default_factory=deque)
    unacked: int = 0
    sent_upto: int = 0
    ws: web.WebSocketResponse | None = None


MAILBOXES: dict[bytes, Mailbox] = {}


async def _pump(mb: Mailbox) -> None:
    ws = mb.ws
    if ws is None or ws.closed:
        return
    for seq, blob in list(mb.pending):
        if seq <= mb.sent_upto:
            continue
        if seq - _acked(mb) > WINDOW:
            break
        mb.sent_upto = seq
        await ws.send_bytes(_delivery(mb, seq, blob))


def _acked(mb: Mailbox) -> int:
    return mb.pending[0][0] - 1 if mb.pending else mb.seq


_MB_OF: dict[int, bytes] = {}


def _delivery(mb: Mailbox, seq: int, blob: bytes) -> bytes:
    mailbox_id = _MB_OF[id(mb)]
    return Delivery(mailbox_id=mailbox_id, seq=seq, received_at_ms=int(time.time() * 1000),
                    blob=blob).encode()


async def ws_handler(request: web.Request) -> web.StreamResponse:
    ws = web.WebSocketResponse(max_msg_size=256 * 1024)
    await ws.prepare(request)
    challenge: Challenge | None = None
    account: bytes | None = None
    owned: set[bytes] = set()
    async for msg in ws:
        if msg.type is not WSMsgType.BINARY:
            break
        f = decode_frame(msg.data, direction=Direction.TO_RELAY)
        rid = getattr(f, "request_id", 0)
        if isinstance(f, Connect):
            challenge = Challenge(request_id=rid, relay_id=RELAY_ID, nonce=os.urandom(32),
                                  server_time_ms=int(time.time() * 1000))
            await ws.send_bytes(challenge.encode())
        elif isinstance(f, Register):
            assert challenge is not None
            ident = IdentityPublicKey.from_bytes(f.identity_key)
            if account_id_for(ident) != f.account_id:
                raise ValueError("account id")
            ident.verify(Purpose.RELAY_CHALLENGE,
                         challenge_payload(challenge.relay_id, challenge.nonce,
                                           challenge.server_time_ms, f.account_id), f.signature)
            account = f.account_id
            await ws.send_bytes(Welcome(request_id=rid, account_id=account,
                                        server_time_ms=0, new_account=True).encode())
        elif isinstance(f, CreateMailbox):
            assert account is not None
            mid = os.urandom(16)
            mb = Mailbox(cap_hash=f.capability_hash)
            MAILBOXES[mid] = mb
            _MB_OF[id(mb)] = mid
            owned.add(mid)
            await ws.send_bytes(MailboxCreated(request_id=rid, mailbox_id=mid).encode())
        elif isinstance(f, Subscribe):
            for mid in f.mailbox_ids:
                MAILBOXES[mid].ws = ws
            await ws.send_bytes(Subscribed(request_id=rid).encode())
        elif isinstance(f, Send):
            targets = []
            for mid, cap in f.recipients:
                mb2 = MAILBOXES.get(mid)
                if mb2 is None or not hmac.compare_digest(hashlib.sha256(cap).digest(),
                                                          mb2.cap_hash):
                    await ws.send_bytes(Error(request_id=rid,
                                              code=ErrorCode.WRONG_CAPABILITY).encode())
                    break
                targets.append(mb2)
            else:
                for mb2 in targets:
                    mb2.seq += 1
                    mb2.pending.append((mb2.seq, f.blob))
                await ws.send_bytes(Sent(request_id=rid).encode())
                for mb2 in targets:
                    await _pump(mb2)
        elif isinstance(f, Ack):
            mb3 = MAILBOXES[f.mailbox_id]
            while mb3.pending and mb3.pending[0][0] <= f.up_to_seq:
                mb3.pending.popleft()
            await _pump(mb3)
    return ws


async def serve(port: int) -> None:
    app = web.Application()
    app.router.add_get("/v1/ws", ws_handler)
    runner = web.AppRunner(app, access_log=None, handle_signals=False, shutdown_timeout=1.0)
    await runner.setup()
    try:
        site = web.TCPSite(runner, "127.0.0.1", port)
        await site.start()
        print(f"pigeon-relay listening on http://127.0.0.1:{runner.addresses[0][1]}",
              flush=True)
        stop = asyncio.Event()
        for sig in (signal.SIGINT, signal.SIGTERM):
            asyncio.get_running_loop().add_signal_handler(sig, stop.set)
        await stop.wait()
    finally:
        await runner.cleanup()


def main() -> int:
    p = argparse.ArgumentParser()
    p.add_argument("--port", type=int, default=0)
    p.add_argument("rest", nargs=argparse.REMAINDER)
    args, _ = p.parse_known_args()
    asyncio.run(serve(args.port))
    return 0


if __name__ == "__main__":
    sys.exit(main())
