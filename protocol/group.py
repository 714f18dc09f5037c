"""Group state: what an admin signs in a group control message (docs/protocol.md §9.14).

A group's state is versioned and complete: every control message carries the whole
new state (name, avatar, members, admins, channel flag), the version it creates and
the hash of the state it was derived from. Members never merge partial changes; they
pick one state among those they hold by a deterministic rule (the SDK's
``client_sdk._groups``), so every member that received the same control messages ends
on the same state whatever the order of arrival.

Wire form (signed bytes; the signature travels next to them in
:class:`protocol.inner.GroupControl`)::

    [version, {key: value, ...}]

| Key | Field | Kind |
| --- | --- | --- |
| 1 | ``group_id`` | bin[16], random, known only to members |
| 2 | ``version`` | int 1..2^53 (1 = creation) |
| 3 | ``signer`` | bin[16], the signing account |
| 4 | ``name`` | str[0..128] |
| 5 | ``members`` | array[1..1000] of bin[16], strictly increasing |
| 6 | ``admins`` | array[1..1000] of bin[16], strictly increasing, each a member |
| 7 | ``at_ms`` | int, the signer's clock (informative) |
| 8 | ``parent`` | bin[32]? SHA-256 of the encoded parent state; absent at version 1 |
| 9 | ``avatar`` | bin[1..32768]? an encoded file manifest (the avatar is an encrypted file) |
| 10 | ``channel`` | bool? only admins post (default false) |
| 11 | ``subscriptions`` | bool? a channel whose subscribers are not listed (default false) |

A channel with ``subscriptions`` lists only its admins in ``members`` (= ``admins``):
each subscriber holds a :class:`Subscription` signed for it by an admin, and only the
admins hold every subscription (the roster). A subscription's wire form::

    [version, {key: value, ...}]

| Key | Field | Kind |
| --- | --- | --- |
| 1 | ``group_id`` | bin[16] |
| 2 | ``seq`` | int 1..2^53, per subscriber (+1 per change of that subscriber) |
| 3 | ``signer`` | bin[16], an admin, or the subscriber itself leaving |
| 7 | ``at_ms`` | int, the signer's clock (informative) |
| 12 | ``subscriber`` | bin[16] |
| 13 | ``subscribed`` | bool: true = subscribed, false = removed or left |
| 14 | ``authority`` | bin[32], SHA-256 of the channel state the signer held (its rights) |

Both are signed with the same purpose (``group-control``); neither decoder accepts the
other's bytes (a state needs keys 4-6, which a subscription must not carry; a
subscription needs keys 12-14, which a state must not carry), so no signature made for
one verifies as the other.

No cryptography here (the protocol package has none): hashing and signing are the
SDK's. Encoding is canonical (keys ascending, optional fields omitted at their
default), so the hash of a state is well defined.
"""

from __future__ import annotations

import itertools
from dataclasses import dataclass, field
from typing import Final

from . import limits as L
from ._kinds import ACCOUNT_ID, BOOL, TIME_MS
from ._wire import (
    Buffer,
    Bytes,
    Limits,
    Problem,
    Record,
    Str,
    TupleOf,
    UInt,
    finalize,
    pack,
    unpack,
    version_error,
    wire,
)
from .errors import ErrorCode, LocalProtocolError, MalformedFrame

__all__ = [
    "GROUP_ID_SIZE",
    "MAX_CHANNEL_SUBSCRIBERS",
    "MAX_GROUP_MEMBERS",
    "MAX_GROUP_STATE_READ_SIZE",
    "MAX_SUBSCRIPTION_SIZE",
    "GroupState",
    "Subscription",
    "decode_group_state",
    "decode_subscription",
]

GROUP_ID_SIZE: Final = 16
MAX_GROUP_MEMBERS: Final = 1000
"""Members per group: 1,000 account ids (18 bytes each encoded) fit one control
message and one multi-recipient ``Send`` (MAX_RECIPIENTS = 2,000)."""
MAX_GROUP_STATE_SIZE: Final = 32 * 1024 - 256
"""An encoded state, checked on encode: its ``GroupControl`` (the state, a signature,
~110 bytes of framing) must pad to the 32 KiB bucket (pigeon_crypto padding; the next
bucket, 64 KiB, no longer fits one relay blob). 1,000 members take ~18 KB, leaving room
for ~800 admins."""
MAX_GROUP_STATE_READ_SIZE: Final = 32 * 1024
"""Checked before parsing: the limit of earlier versions, which wrote states of up to
32 KiB; profiles store such states and older clients may still send them."""

MAX_CHANNEL_SUBSCRIBERS: Final = 50_000
"""Subscribers per channel with ``subscriptions``: no state carries them, so the bound is
the admins' cost: a post is ceil(n / MAX_RECIPIENTS) sends of one blob, a rotation n
pairwise distributions, and each admin stores n sealed subscriptions (~250 bytes each)."""
MAX_SUBSCRIPTION_SIZE: Final = 256
"""An encoded subscription is ~115 bytes (three ids, a hash, two ints, a bool)."""
_STATE_ONLY_KEYS: Final = frozenset((4, 5, 6))
_SUBSCRIPTION_ONLY_KEYS: Final = frozenset((12, 13, 14))

_LIMITS: Final = Limits(
    what="group state",
    max_size=MAX_GROUP_STATE_READ_SIZE,
    max_bin_len=L.MAX_MANIFEST_SIZE,
    max_str_len=L.MAX_DISPLAY_NAME_SIZE,
    max_array_len=MAX_GROUP_MEMBERS,
    max_map_len=L.MAX_MAP_LEN,
)
_MEMBERS: Final = TupleOf(ACCOUNT_ID, 1, MAX_GROUP_MEMBERS)
_ADMINS: Final = TupleOf(ACCOUNT_ID, 0, MAX_GROUP_MEMBERS)


def _strictly_increasing(name: str, ids: tuple[bytes, ...]) -> None:
    if any(a >= b for a, b in itertools.pairwise(ids)):
        raise Problem(ErrorCode.INVALID_FIELD, "must be strictly increasing", name)


@dataclass(frozen=True, slots=True, kw_only=True)
class GroupState(Record):
    """One version of a group, as its signer derived it from ``parent``.

    Invariants (checked on construction and decoding): members and admins strictly
    increasing (so the encoding is canonical), admins a subset of members, at least
    one admin, ``parent`` present exactly when ``version > 1``.
    """

    group_id: bytes = field(metadata=wire(1, Bytes.exactly(GROUP_ID_SIZE)))
    version: int = field(metadata=wire(2, UInt(1, 2**53)))
    signer: bytes = field(metadata=wire(3, ACCOUNT_ID))
    name: str = field(repr=False, metadata=wire(4, Str(0, L.MAX_DISPLAY_NAME_SIZE)))
    members: tuple[bytes, ...] = field(repr=False, metadata=wire(5, _MEMBERS))
    admins: tuple[bytes, ...] = field(repr=False, metadata=wire(6, _ADMINS))
    at_ms: int = field(metadata=wire(7, TIME_MS))
    parent: bytes | None = field(default=None, metadata=wire(8, Bytes.exactly(32)))
    avatar: bytes | None = field(default=None, repr=False,
                                 metadata=wire(9, Bytes(1, L.MAX_MANIFEST_SIZE)))
    channel: bool = field(default=False, metadata=wire(10, BOOL))
    subscriptions: bool = field(default=False, metadata=wire(11, BOOL))

    def _validate(self) -> None:
        _strictly_increasing("members", self.members)
        _strictly_increasing("admins", self.admins)
        if not set(self.admins) <= set(self.members):
            raise Problem(ErrorCode.INVALID_FIELD, "every admin must be a member", "admins")
        if not self.admins:
            raise Problem(ErrorCode.INVALID_FIELD, "a group needs an admin", "admins")
        if (self.parent is None) != (self.version == 1):
            raise Problem(ErrorCode.INVALID_FIELD, "parent is required after version 1",
                          "parent")
        if self.subscriptions and not self.channel:
            raise Problem(ErrorCode.INVALID_FIELD, "only a channel has subscriptions",
                          "subscriptions")
        if self.subscriptions and self.members != self.admins:
            raise Problem(ErrorCode.INVALID_FIELD,
                          "a channel with subscriptions lists its admins only", "members")

    def encode(self) -> bytes:
        """Canonical bytes ``[1, body]`` (what is hashed and signed).

        Raises:
            LocalProtocolError: over ``MAX_GROUP_STATE_SIZE``.
        """
        out = pack((L.PROTOCOL_VERSION, self._body()))
        if len(out) > MAX_GROUP_STATE_SIZE:
            raise LocalProtocolError(
                f"group state encodes to {len(out)} bytes, over {MAX_GROUP_STATE_SIZE}")
        return out


finalize(GroupState)


def decode_group_state(data: Buffer) -> GroupState:
    """Decode a group state strictly.

    Raises:
        RemoteProtocolError: malformed msgpack, an unknown version, bad fields, or a
            broken invariant (see :class:`GroupState`).
    """
    body = _versioned_body(data, _LIMITS, "group state", _SUBSCRIPTION_ONLY_KEYS,
                           "a subscription's key in a state")
    return GroupState._from_body(body)


@dataclass(frozen=True, slots=True, kw_only=True)
class Subscription(Record):
    """One subscriber's membership of a channel with ``subscriptions``, signed by an
    admin (``subscribed`` true or false) or by the subscriber itself (false: leaving).

    Per subscriber, the valid subscription with the highest ``seq`` wins, then the
    smallest ``(signer, SHA-256 of the encoding)``, bytewise (docs/protocol.md §9.14).
    """

    group_id: bytes = field(metadata=wire(1, Bytes.exactly(GROUP_ID_SIZE)))
    seq: int = field(metadata=wire(2, UInt(1, 2**53)))
    signer: bytes = field(metadata=wire(3, ACCOUNT_ID))
    at_ms: int = field(metadata=wire(7, TIME_MS))
    subscriber: bytes = field(repr=False, metadata=wire(12, ACCOUNT_ID))
    subscribed: bool = field(metadata=wire(13, BOOL))
    authority: bytes = field(metadata=wire(14, Bytes.exactly(32)))

    def _validate(self) -> None:
        if self.signer == self.subscriber and self.subscribed:
            raise Problem(ErrorCode.INVALID_FIELD, "a subscriber cannot subscribe itself",
                          "subscribed")

    def encode(self) -> bytes:
        """Canonical bytes ``[1, body]`` (what is hashed and signed)."""
        return pack((L.PROTOCOL_VERSION, self._body()))


finalize(Subscription)

_SUBSCRIPTION_LIMITS: Final = Limits(
    what="subscription",
    max_size=MAX_SUBSCRIPTION_SIZE,
    max_bin_len=32,
    max_str_len=0,
    max_array_len=2,
    max_map_len=L.MAX_MAP_LEN,
)


def decode_subscription(data: Buffer) -> Subscription:
    """Decode a subscription strictly.

    Raises:
        RemoteProtocolError: malformed msgpack, an unknown version, bad fields, a state's
            key (4, 5 or 6), or a subscriber subscribing itself.
    """
    body = _versioned_body(data, _SUBSCRIPTION_LIMITS, "subscription", _STATE_ONLY_KEYS,
                           "a state's key in a subscription")
    return Subscription._from_body(body)


def _versioned_body(data: Buffer, limits: Limits, what: str, foreign: frozenset[int],
                    foreign_message: str) -> dict[int, object]:
    """The map of ``[version, map]`` bytes, refusing the other record's keys
    (*foreign*): a state never parses as a subscription, nor the reverse."""
    obj = unpack(data, limits)
    if type(obj) is not tuple or len(obj) != 2:
        raise MalformedFrame(what, "expected [version, map]")
    version, body = obj
    if type(version) is not int or version != L.PROTOCOL_VERSION:
        raise version_error(what, version)
    if type(body) is not dict:
        raise MalformedFrame(what, "body is not a map")
    if not foreign.isdisjoint(body):
        raise MalformedFrame(what, foreign_message)
    return body
