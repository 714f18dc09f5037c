"""Client flows against the relay (protocol chapter 9) and the bare forwarder.

Relay flow of one pair (docs/protocol.md 9.1):

* **receiver**: ``Connect`` -> ``Challenge``; ``Register`` (a fresh identity, signing
  ``challenge_payload(relay_id, nonce, server_time_ms, account_id)`` with
  ``Purpose.RELAY_CHALLENGE``) -> ``Welcome``; ``CreateMailbox(SHA-256(capability))`` ->
  ``MailboxCreated``; ``Subscribe`` -> ``Subscribed``. Then it reads ``Delivery`` frames
  and acks them cumulatively (``Ack(up_to_seq)``).
* **sender**: an anonymous connection: ``Connect`` -> ``Challenge``, then ``Send`` frames
  carrying the receiver's ``(mailbox_id, capability)``; each is answered ``Sent`` once
  durable (or ``Error``).

Setup frames are built and checked with ``protocol`` (typed encode / ``decode_frame``).
The hot path uses pre-encoded templates: :class:`SendTemplate` splices the request id,
``client_msg_id`` and blob into bytes that :func:`check_templates` proves equal to
``Send(...).encode()``; received frames are read with ``msgpack.unpackb`` (the generator
must not be the bottleneck; the relay still decodes strictly).

The 200-byte blob: ``pair index u32 | counter u32 | send time u64 (time.monotonic_ns)
| 184 filler bytes``. CLOCK_MONOTONIC is system-wide on Linux, so a time taken in one
process compares with one taken in another.
"""

from __future__ import annotations

import hashlib
import os
import struct
from dataclasses import dataclass
from typing import Any

import msgpack

from pigeon_crypto.identity import IdentityKeyPair, account_id_for
from pigeon_crypto.rng import system_rng
from pigeon_crypto.signing import Purpose
from protocol import (
    Ack,
    Challenge,
    Connect,
    CreateMailbox,
    MailboxCreated,
    Register,
    Send,
    Subscribe,
    Subscribed,
    Welcome,
    decode_frame,
)
from protocol import Error as ErrorFrame
from protocol.frames import Direction
from protocol.payloads import challenge_payload

from .wsclient import WsClient, connect

__all__ = [
    "BLOB_SIZE",
    "AckTemplate",
    "RelayPairInfo",
    "SendTemplate",
    "check_templates",
    "make_blob",
    "open_forwarder_pair",
    "open_relay_receiver",
    "open_relay_sender",
    "parse_blob",
]

BLOB_SIZE = 200
RELAY_WS_PATH = "/v1/ws"
_BLOB_HEAD = struct.Struct(">IIQ")
_FILLER = bytes(range(256))[: BLOB_SIZE - _BLOB_HEAD.size]
_U64 = struct.Struct(">Q").pack
_packb = msgpack.packb


class SetupError(Exception):
    """The relay answered a setup step with something else than expected."""


def make_blob(pair: int, counter: int, t_ns: int) -> bytes:
    return _BLOB_HEAD.pack(pair, counter & 0xFFFFFFFF, t_ns) + _FILLER


def parse_blob(blob: bytes) -> tuple[int, int, int]:
    """``(pair, counter, send time ns)``."""
    return _BLOB_HEAD.unpack_from(blob, 0)


class SendTemplate:
    """Pre-encoded ``Send`` frame for one recipient; only rid, id and blob change.

    ``[1, 40, rid, {1: client_msg_id(16), 2: blob(200), 3: [[mailbox_id, capability]]}]``
    """

    __slots__ = ("_cmid_prefix", "_tail")

    _HEAD = b"\x94\x01\x28"  # fixarray(4), version 1, type 40

    def __init__(self, mailbox_id: bytes, capability: bytes, cmid_prefix: bytes) -> None:
        if len(cmid_prefix) != 8:
            raise ValueError("client_msg_id prefix is 8 bytes")
        self._cmid_prefix = b"\x83\x01\xc4\x10" + cmid_prefix
        self._tail = b"\x03" + _packb([[mailbox_id, capability]])

    def frame(self, rid: int, counter: int, blob: bytes) -> bytes:
        return b"".join((self._HEAD, _packb(rid), self._cmid_prefix, _U64(counter),
                         b"\x02\xc4\xc8", blob, self._tail))


class AckTemplate:
    """Pre-encoded cumulative ``Ack``: ``[1, 45, rid, {1: mailbox_id, 2: up_to_seq}]``."""

    __slots__ = ("_mid",)

    def __init__(self, mailbox_id: bytes) -> None:
        self._mid = b"\x82\x01\xc4\x10" + mailbox_id + b"\x02"

    def frame(self, rid: int, up_to_seq: int) -> bytes:
        return b"".join((b"\x94\x01\x2d", _packb(rid), self._mid, _packb(up_to_seq)))


def check_templates() -> None:
    """Prove the hot-path templates produce exactly what ``protocol`` encodes and decodes."""
    mailbox, cap, prefix = os.urandom(16), os.urandom(32), os.urandom(8)
    tpl = SendTemplate(mailbox, cap, prefix)
    for rid, counter in ((1, 0), (127, 1), (128, 2**31), (65_536, 2**40), (2**32 - 1, 7)):
        blob = make_blob(3, counter, 123_456_789)
        raw = tpl.frame(rid, counter, blob)
        typed = Send(request_id=rid, client_msg_id=prefix + _U64(counter), blob=blob,
                     recipients=((mailbox, cap),))
        if raw != typed.encode() or decode_frame(raw, direction=Direction.TO_RELAY) != typed:
            raise AssertionError(f"SendTemplate differs from Send.encode() (rid {rid})")
    ack = AckTemplate(mailbox)
    for rid, seq in ((1, 1), (200, 300), (70_000, 2**33)):
        raw = ack.frame(rid, seq)
        typed_ack = Ack(request_id=rid, mailbox_id=mailbox, up_to_seq=seq)
        if raw != typed_ack.encode() or decode_frame(raw) != typed_ack:
            raise AssertionError(f"AckTemplate differs from Ack.encode() (rid {rid})")
    if len(make_blob(0, 0, 0)) != BLOB_SIZE:
        raise AssertionError("blob size")


async def _request(ws: WsClient, frame_bytes: bytes, expect: type[Any], timeout_s: float) -> Any:
    ws.send(frame_bytes, flush=True)
    data = await ws.recv(timeout_s)
    frame = decode_frame(data, direction=Direction.TO_CLIENT)
    if isinstance(frame, ErrorFrame):
        raise SetupError(f"relay answered Error {frame.code} to {expect.__name__}: "
                         f"{frame.message or ''}")
    if not isinstance(frame, expect):
        raise SetupError(f"expected {expect.__name__}, got {type(frame).__name__}")
    return frame


async def _connect_relay(port: int, timeout_s: float) -> tuple[WsClient, Challenge]:
    ws = await connect("127.0.0.1", port, RELAY_WS_PATH, timeout_s=timeout_s)
    try:
        challenge = await _request(ws, Connect(request_id=1).encode(), Challenge, timeout_s)
    except BaseException:
        ws.abort()
        raise
    return ws, challenge


@dataclass(slots=True)
class RelayPairInfo:
    mailbox_id: bytes
    capability: bytes


async def open_relay_receiver(port: int, *, timeout_s: float = 60.0
                              ) -> tuple[WsClient, RelayPairInfo]:
    """Register a fresh account, create a mailbox, subscribe. The socket then idles."""
    ws, ch = await _connect_relay(port, timeout_s)
    try:
        ident = IdentityKeyPair.generate(system_rng)
        account_id = account_id_for(ident.public)
        sig = ident.sign(Purpose.RELAY_CHALLENGE,
                         challenge_payload(ch.relay_id, ch.nonce, ch.server_time_ms, account_id))
        await _request(ws, Register(request_id=2, account_id=account_id,
                                    identity_key=ident.public.to_bytes(),
                                    signature=sig).encode(), Welcome, timeout_s)
        capability = os.urandom(32)
        created = await _request(
            ws, CreateMailbox(request_id=3,
                              capability_hash=hashlib.sha256(capability).digest()).encode(),
            MailboxCreated, timeout_s)
        sub = await _request(ws, Subscribe(request_id=4,
                                           mailbox_ids=(created.mailbox_id,)).encode(),
                             Subscribed, timeout_s)
        if sub.rejected:
            raise SetupError("Subscribe rejected the new mailbox")
    except BaseException:
        ws.abort()
        raise
    return ws, RelayPairInfo(mailbox_id=created.mailbox_id, capability=capability)


async def open_relay_sender(port: int, *, timeout_s: float = 60.0) -> WsClient:
    """An anonymous connection (Connect -> Challenge); it may only send."""
    ws, _ = await _connect_relay(port, timeout_s)
    return ws


async def open_forwarder_pair(port: int, pair: int, *, timeout_s: float = 60.0
                              ) -> tuple[WsClient, WsClient]:
    """``(sender, receiver)`` sockets of one pair on the bare forwarder."""
    recv = await connect("127.0.0.1", port, f"/ws?pair={pair}&role=recv", timeout_s=timeout_s)
    try:
        send = await connect("127.0.0.1", port, f"/ws?pair={pair}&role=send", timeout_s=timeout_s)
    except BaseException:
        recv.abort()
        raise
    return send, recv


def unpack_frame(data: bytes) -> Any:
    """Hot-path read of a received frame: ``[version, type, rid, body]`` (no validation)."""
    return msgpack.unpackb(data, strict_map_key=False)
