"""What :class:`relay.bus_redis.RedisBus` nodes say to each other through Redis: the
envelope of every message, its tag, and the heartbeat body.

Every message, on every channel, is an envelope (big-endian):

======  =========  =======================================================
size    field      meaning
======  =========  =======================================================
1       version    ``2`` (``1``, untagged, is refused)
8       origin     random per ``RedisBus``: a node skips its own messages
n       body       by channel, below
16      tag        ``HMAC-SHA256(bus key, version ‖ origin ‖ body)``
                   truncated to its first 16 bytes (:data:`TAG_LEN`)
======  =========  =======================================================

The bus key is ``HKDF-SHA256(token secret, salt=none, info="pigeon relay bus v1")``, 32
bytes (:func:`bus_key`, RFC 5869): every node of a deployment shares the token secret,
so they share the key, and nobody else has it. A message whose tag does not verify is
dropped unread.

=======================  =========================================================
channel                  body
=======================  =========================================================
``<prefix>:mb:<hex id>``  :func:`relay.bus.encode_notification` (a hint)
``<prefix>:inv``          the 16-byte mailbox id (an invalidation)
``<prefix>:acct``         ``0x61`` then the 16-byte account id (revoked sessions)
``<prefix>:sub``          ``0x62``, ``at_ms`` (u64), then one or more 16-byte mailbox
                          ids (subscriptions taken: 9 + 16n bytes)
``<prefix>:hb``           a heartbeat (13 bytes, below)
=======================  =========================================================

The channel is not under the tag; the bodies of the five channels differ in length or
first byte and a hint names its mailbox, which must be its channel's, so a message moved
to another channel does not decode there.

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
8       sent_ms      the sender's wall clock, Unix milliseconds (u64),
                     strictly increasing per origin: a receiver refuses a
                     beat more than :data:`MAX_CLOCK_SKEW_MS` off its own
                     clock, or not newer than the last one it took from
                     that origin (a replay)
======  ===========  =====================================================
"""

from __future__ import annotations

import hmac
from dataclasses import dataclass
from typing import Final

from cryptography.hazmat.primitives import hashes
from cryptography.hazmat.primitives.kdf.hkdf import HKDF

from pigeon_crypto.errors import DecodeError, InvalidSignature, UnknownVersion, VersionTooOld

from .config import TOKEN_SECRET_LEN

ENVELOPE_VERSION: Final = 2
"""2: tagged. 1 (untagged) is refused: a node of version 1 cannot be trusted."""
ORIGIN_LEN: Final = 8
"""Random node tag: 64 bits make two nodes' tags collide with negligible probability."""
HEAD_LEN: Final = 1 + ORIGIN_LEN
TAG_LEN: Final = 16
"""HMAC-SHA256 truncated to 128 bits: a forger's chance is 2^-128 per try."""
KEY_LEN: Final = 32
SECRET_MIN_LEN: Final = TOKEN_SECRET_LEN
"""The token secret's minimum (the relay's own, ``relay.config.TOKEN_SECRET_LEN``)."""
BUS_KEY_INFO: Final = b"pigeon relay bus v1"
ACCOUNT_GONE: Final = b"\x61"
"""First byte of a session revocation's body (17 bytes, unlike an invalidation)."""
SUBSCRIBED: Final = b"\x62"
"""First byte of a subscriptions-taken body (9 + 16n bytes: never 13, 16 or 17)."""
MAX_CLOCK_SKEW_MS: Final = 30_000
"""A heartbeat further than this from the receiver's clock is refused: replays of a
captured beat are bounded to this window (and then by the per-origin order); nodes'
clocks must agree within it (NTP does to milliseconds)."""
HELLO: Final = 0x01
LOST: Final = 0x02
_BEAT_BODY_LEN: Final = 1 + 4 + 8
_U32_MAX: Final = 0xFFFF_FFFF
_U64_MAX: Final = 0xFFFF_FFFF_FFFF_FFFF


def bus_key(token_secret: bytes) -> bytes:
    """The bus key of a deployment: HKDF-SHA256 of its shared token secret (RFC 5869,
    no salt, info :data:`BUS_KEY_INFO`).

    Raises:
        ValueError: a secret shorter than :data:`SECRET_MIN_LEN`.
    """
    if len(token_secret) < SECRET_MIN_LEN:
        raise ValueError(f"token secret must be at least {SECRET_MIN_LEN} bytes")
    return HKDF(algorithm=hashes.SHA256(), length=KEY_LEN, salt=None,
                info=BUS_KEY_INFO).derive(token_secret)


class Tagger:
    """Seals and opens messages under one bus key (the key never shows in a repr)."""

    __slots__ = ("_key",)

    def __init__(self, key: bytes) -> None:
        if len(key) != KEY_LEN:
            raise ValueError(f"bus key must be {KEY_LEN} bytes")
        self._key = key

    def __repr__(self) -> str:
        return "Tagger(key=<hidden>)"

    def seal(self, message: bytes) -> bytes:
        """*message* (``version ‖ origin ‖ body``) followed by its tag."""
        return message + hmac.digest(self._key, message, "sha256")[:TAG_LEN]

    def open(self, data: bytes) -> bytes:
        """*data* without its tag, once the version and the tag are checked.

        Raises:
            DecodeError: empty. VersionTooOld, UnknownVersion: not version 2.
            InvalidSignature: the tag does not verify (missing, too short, damaged, or
            made with another key).
        """
        if not data:
            raise DecodeError("bus message", "empty")
        if data[0] != ENVELOPE_VERSION:
            error = VersionTooOld if data[0] < ENVELOPE_VERSION else UnknownVersion
            raise error("bus message", data[0], (ENVELOPE_VERSION,))
        if len(data) < HEAD_LEN + TAG_LEN:  # no room for a tag: none
            raise InvalidSignature("bus message")
        message = data[:-TAG_LEN]
        if not hmac.compare_digest(hmac.digest(self._key, message, "sha256")[:TAG_LEN],
                                   data[-TAG_LEN:]):
            raise InvalidSignature("bus message")
        return message


def head(origin: bytes) -> bytes:
    """The first bytes of every message *origin* sends."""
    if len(origin) != ORIGIN_LEN:
        raise ValueError("origin must be 8 bytes")
    return bytes([ENVELOPE_VERSION]) + origin


@dataclass(frozen=True, slots=True, kw_only=True)
class Heartbeat:
    """A decoded heartbeat (its origin is the envelope's)."""

    hello: bool
    lost: bool
    interval_ms: int
    sent_ms: int


def encode_heartbeat(head_bytes: bytes, *, hello: bool, lost: bool, interval_ms: int,
                     sent_ms: int) -> bytes:
    """A heartbeat message before its tag: the sender's :func:`head`, then the body."""
    if not 0 < interval_ms <= _U32_MAX:
        raise ValueError("interval_ms out of range")
    if not 0 <= sent_ms <= _U64_MAX:
        raise ValueError("sent_ms out of range")
    flags = (HELLO if hello else 0) | (LOST if lost else 0)
    return (head_bytes + bytes([flags]) + interval_ms.to_bytes(4, "big")
            + sent_ms.to_bytes(8, "big"))


def decode_heartbeat(message: bytes) -> Heartbeat:
    """The body of a heartbeat message (:meth:`Tagger.open` already checked it).

    Raises:
        DecodeError: the wrong length, or an interval of 0.
    """
    if len(message) != HEAD_LEN + _BEAT_BODY_LEN:
        raise DecodeError("heartbeat", "wrong length")
    flags = message[HEAD_LEN]
    interval_ms = int.from_bytes(message[HEAD_LEN + 1:HEAD_LEN + 5], "big")
    if interval_ms == 0:
        raise DecodeError("heartbeat", "interval 0")
    return Heartbeat(hello=bool(flags & HELLO), lost=bool(flags & LOST), interval_ms=interval_ms,
                     sent_ms=int.from_bytes(message[HEAD_LEN + 5:], "big"))
