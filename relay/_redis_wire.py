"""What :class:`relay.bus_redis.RedisBus` nodes say to each other through Redis: the
envelope of every message and the heartbeat body.

Every message, on every channel, is an envelope (big-endian):

======  =========  =======================================================
size    field      meaning
======  =========  =======================================================
1       version    ``1``
8       origin     random per ``RedisBus``: a node skips its own messages
n       body       by channel, below
======  =========  =======================================================

=======================  =========================================================
channel                  body
=======================  =========================================================
``<prefix>:mb:<hex id>``  :func:`relay.bus.encode_notification` (a hint)
``<prefix>:inv``          the 16-byte mailbox id (an invalidation)
``<prefix>:hb``           a heartbeat (5 bytes, below)
=======================  =========================================================

Heartbeat body:

======  ===========  =====================================================
size    field        meaning
======  ===========  =====================================================
1       flags        bit 0 ``HELLO``: the sender (re)joined and knows no
                     peer: answer with a heartbeat now. Bit 1 ``LOST``:
                     hints or invalidations the sender published may have
                     been lost (failed PUBLISHes, a connection down):
                     resync. Other bits: 0, ignored by receivers.
4       interval_ms  the sender's heartbeat period (u32): a receiver
                     waits at least three of them before declaring it gone
======  ===========  =====================================================
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Final

from pigeon_crypto.errors import DecodeError

ENVELOPE_VERSION: Final = 1
ORIGIN_LEN: Final = 8
"""Random node tag: 64 bits make two nodes' tags collide with negligible probability."""
HEAD_LEN: Final = 1 + ORIGIN_LEN
HELLO: Final = 0x01
LOST: Final = 0x02
_BEAT_LEN: Final = HEAD_LEN + 1 + 4
_U32_MAX: Final = 0xFFFF_FFFF


def head(origin: bytes) -> bytes:
    """The first bytes of every message *origin* sends."""
    if len(origin) != ORIGIN_LEN:
        raise ValueError("origin must be 8 bytes")
    return bytes([ENVELOPE_VERSION]) + origin


def is_envelope(data: object) -> bool:
    """Whether *data* starts like a message of this version."""
    return isinstance(data, bytes) and len(data) >= HEAD_LEN and data[0] == ENVELOPE_VERSION


@dataclass(frozen=True, slots=True, kw_only=True)
class Heartbeat:
    """A decoded heartbeat (its origin is the envelope's)."""

    hello: bool
    lost: bool
    interval_ms: int


def encode_heartbeat(head_bytes: bytes, *, hello: bool, lost: bool, interval_ms: int) -> bytes:
    """A whole heartbeat message: the sender's :func:`head`, then the body."""
    if not 0 < interval_ms <= _U32_MAX:
        raise ValueError("interval_ms out of range")
    flags = (HELLO if hello else 0) | (LOST if lost else 0)
    return head_bytes + bytes([flags]) + interval_ms.to_bytes(4, "big")


def decode_heartbeat(data: bytes) -> Heartbeat:
    """The body of a whole heartbeat message (its envelope already checked).

    Raises:
        DecodeError: the wrong length, or an interval of 0.
    """
    if len(data) != _BEAT_LEN:
        raise DecodeError("heartbeat", "wrong length")
    flags = data[HEAD_LEN]
    interval_ms = int.from_bytes(data[HEAD_LEN + 1:], "big")
    if interval_ms == 0:
        raise DecodeError("heartbeat", "interval 0")
    return Heartbeat(hello=bool(flags & HELLO), lost=bool(flags & LOST), interval_ms=interval_ms)
