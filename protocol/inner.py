"""Inner messages: the plaintext that the SDK encrypts end to end.

The relay never sees these: an inner message is encoded, padded and encrypted by the
SDK (pigeon_crypto), and the ciphertext is a frame's opaque ``blob``. Same strict
msgpack rules as frames, with their own limits (``MAX_INNER_MESSAGE_SIZE``).

Wire form::

    [version, kind, {key: value, ...}]

Keys 1 and 2 are common to every kind: ``message_id`` (bin[16], random, the target of
edits, reactions, deletes, receipts and replies) and ``sent_at_ms`` (the sender's
clock, informative only). Kind-specific keys start at 3; see each class. An unknown
kind raises :class:`~protocol.errors.UnknownMessageKind` (a newer client sent it: the
SDK shows it as unsupported rather than failing the session); unknown keys are ignored.

``GroupControl`` carries a signed ``protocol.group.GroupState``;
``SenderKeyDistribution`` a member's sender-key chain for one group. Group messages
themselves are these same kinds (Text, Edit, ...) encrypted with a sender key instead
of a pairwise session: the chain names the group, so they carry no group id.
"""

from __future__ import annotations

import enum
from dataclasses import dataclass, field
from typing import ClassVar, Final, Self

from . import limits as L
from ._kinds import BOOL, CAPABILITY, MAILBOX_ID, MESSAGE_ID, SIGNATURE, TIME_MS
from ._wire import (
    Buffer,
    Bytes,
    EnumKind,
    Limits,
    Pair,
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
from .errors import LocalProtocolError, MalformedFrame, UnexpectedFrame, UnknownMessageKind
from .group import MAX_SUBSCRIPTION_SIZE

__all__ = [
    "INNER_KINDS",
    "MAX_STATE_REQUEST_HASHES",
    "Delete",
    "DeleteScope",
    "DisappearingTimer",
    "Edit",
    "File",
    "GroupControl",
    "GroupControlKey",
    "GroupStateRequest",
    "IdentityRotated",
    "InnerMessage",
    "MailboxAnnouncement",
    "MailboxRotation",
    "Presence",
    "PresenceState",
    "Profile",
    "Reaction",
    "Receipt",
    "ReceiptKind",
    "SenderKeyDistribution",
    "SenderKeyRequest",
    "Text",
    "Typing",
    "decode_inner",
]

INNER_LIMITS: Final = Limits(
    what="inner message",
    max_size=L.MAX_INNER_MESSAGE_SIZE,
    max_bin_len=L.MAX_INNER_BIN_LEN,
    max_str_len=L.MAX_INNER_STR_LEN,
    max_array_len=L.MAX_INNER_ARRAY_LEN,
    max_map_len=L.MAX_MAP_LEN,
)


class DeleteScope(enum.IntEnum):
    """Who a :class:`Delete` applies to."""

    FOR_ME = 1
    """Only the sender's own devices (sync); recipients ignore it."""
    FOR_EVERYONE = 2
    """Every recipient hides the target (allowed for the target's own author)."""


class ReceiptKind(enum.IntEnum):
    DELIVERED = 1
    READ = 2


class PresenceState(enum.IntEnum):
    ONLINE = 1
    AWAY = 2
    OFFLINE = 3


_TEXT: Final = Str(1, L.MAX_TEXT_SIZE)
_CAPTION: Final = Str(1, L.MAX_TEXT_SIZE)
_MANIFEST: Final = Bytes(1, L.MAX_MANIFEST_SIZE)
_EMOJI: Final = Str(1, L.MAX_REACTION_SIZE)
_DISPLAY_NAME: Final = Str(0, L.MAX_DISPLAY_NAME_SIZE)
_RELAY_URL: Final = Str(1, L.MAX_RELAY_URL_SIZE, pattern=r"(wss|https)://\S+")
_GROUP_STATE: Final = Bytes(1, L.MAX_PLACEHOLDER_SIZE)
_DISTRIBUTION: Final = Bytes.exactly(73)
_SHA256: Final = Bytes.exactly(32)
_SEAL_KEY: Final = Bytes.exactly(32)
_SEAL_ID: Final = Bytes.exactly(16)
MAX_STATE_REQUEST_HASHES: Final = 16
"""States asked for in one ``GroupStateRequest``."""
_STATE_HASHES: Final = TupleOf(_SHA256, 1, MAX_STATE_REQUEST_HASHES)
MAX_SUBSCRIPTIONS_PER_CONTROL: Final = 128
"""Signed subscriptions per ``GroupControl`` (~180 bytes each): with a channel's state
they stay within one 32 KiB padding bucket (the SDK also packs by size)."""
_SUBSCRIPTIONS: Final = TupleOf(Pair(Bytes(1, MAX_SUBSCRIPTION_SIZE), SIGNATURE), 0,
                                MAX_SUBSCRIPTIONS_PER_CONTROL)
_TIMER_MS: Final = UInt(1, L.MAX_DISAPPEARING_TIMER_MS)
GROUP_ID: Final = Bytes.exactly(16)
_MESSAGE_IDS: Final = TupleOf(MESSAGE_ID, 1, L.MAX_RECEIPT_IDS)
_ROTATIONS: Final = TupleOf(Bytes(1, L.MAX_ROTATION_SIZE), 1, L.MAX_IDENTITY_ROTATIONS)

INNER_KINDS: Final[dict[int, type[InnerMessage]]] = {}
"""The registry: inner message kind code to class."""


@dataclass(frozen=True, slots=True, kw_only=True)
class InnerMessage(Record):
    """Base of every inner message kind.

    Attributes:
        message_id: 16 random bytes chosen by the sender.
        sent_at_ms: the sender's clock (informative; order by arrival and causality).
    """

    KIND: ClassVar[int]
    message_id: bytes = field(metadata=wire(1, MESSAGE_ID))
    sent_at_ms: int = field(metadata=wire(2, TIME_MS))

    def encode(self) -> bytes:
        """Versioned bytes ``[1, kind, body]``.

        Raises:
            LocalProtocolError: the result exceeds ``MAX_INNER_MESSAGE_SIZE``.
        """
        out = pack((L.PROTOCOL_VERSION, self.KIND, self._body()))
        if len(out) > L.MAX_INNER_MESSAGE_SIZE:
            raise LocalProtocolError(
                f"{type(self).__name__} encodes to {len(out)} bytes, "
                f"over MAX_INNER_MESSAGE_SIZE ({L.MAX_INNER_MESSAGE_SIZE})"
            )
        return out

    @classmethod
    def decode(cls, data: Buffer) -> Self:
        """Decode as this kind (``InnerMessage.decode`` accepts any kind).

        Raises:
            RemoteProtocolError: see :func:`decode_inner`;
                :class:`UnexpectedFrame` for a valid message of another kind.
        """
        msg = decode_inner(data)
        if not isinstance(msg, cls):
            raise UnexpectedFrame(type(msg).__name__, cls.__name__)
        return msg


def _kind(cls: type[InnerMessage]) -> type[InnerMessage]:
    code = cls.KIND
    if code in INNER_KINDS or not 0 < code <= 127:
        raise TypeError(f"inner kind {code} of {cls.__name__} is invalid or taken")
    finalize(cls)
    INNER_KINDS[code] = cls
    return cls


def decode_inner(data: Buffer) -> InnerMessage:
    """Decode any inner message strictly.

    Raises:
        FrameTooLarge: over ``MAX_INNER_MESSAGE_SIZE`` (checked before parsing).
        MalformedFrame: not ``[version, kind, map]`` or bad msgpack.
        UnsupportedProtocolVersion: too old or unknown version.
        UnknownMessageKind: a kind this code does not know.
        MissingField, WrongFieldType, InvalidFieldValue, LimitExceeded: bad fields.
    """
    obj = unpack(data, INNER_LIMITS)
    if type(obj) is not tuple or not obj:
        raise MalformedFrame("inner message", "expected a non-empty msgpack array")
    version = obj[0]
    if type(version) is not int or not L.MIN_PROTOCOL_VERSION <= version <= L.PROTOCOL_VERSION:
        raise version_error("inner message", version)
    if len(obj) != 3:
        raise MalformedFrame("inner message", f"expected 3 elements, got {len(obj)}")
    _, kind, body = obj
    if type(kind) is not int:
        raise MalformedFrame("inner message", f"kind is {type(kind).__name__}, expected int")
    cls = INNER_KINDS.get(kind)
    if cls is None:
        raise UnknownMessageKind(kind)
    if type(body) is not dict:
        raise MalformedFrame("inner message", f"body is {type(body).__name__}, expected a map")
    return cls._from_body(body)


# Kinds. Keys 1 and 2 are the common fields; kind-specific keys start at 3.


@_kind
@dataclass(frozen=True, slots=True, kw_only=True)
class Text(InnerMessage):
    """A text message, optionally replying to ``reply_to`` (a message id)."""

    KIND: ClassVar[int] = 1
    text: str = field(repr=False, metadata=wire(3, _TEXT))
    reply_to: bytes | None = field(default=None, metadata=wire(4, MESSAGE_ID))


@_kind
@dataclass(frozen=True, slots=True, kw_only=True)
class File(InnerMessage):
    """A file: the encoded pigeon_crypto file manifest (key, blob id, sizes, name, type).

    The manifest holds the file key: it is secret, like everything here.
    """

    KIND: ClassVar[int] = 2
    manifest: bytes = field(repr=False, metadata=wire(3, _MANIFEST))
    caption: str | None = field(default=None, repr=False, metadata=wire(4, _CAPTION))
    reply_to: bytes | None = field(default=None, metadata=wire(5, MESSAGE_ID))


@_kind
@dataclass(frozen=True, slots=True, kw_only=True)
class Edit(InnerMessage):
    """Replace the text of the sender's own message ``target``."""

    KIND: ClassVar[int] = 3
    target: bytes = field(metadata=wire(3, MESSAGE_ID))
    text: str = field(repr=False, metadata=wire(4, _TEXT))


@_kind
@dataclass(frozen=True, slots=True, kw_only=True)
class Reaction(InnerMessage):
    """Add (or with ``remove``, withdraw) an emoji reaction to ``target``."""

    KIND: ClassVar[int] = 4
    target: bytes = field(metadata=wire(3, MESSAGE_ID))
    emoji: str = field(repr=False, metadata=wire(4, _EMOJI))
    remove: bool = field(default=False, metadata=wire(5, BOOL))


@_kind
@dataclass(frozen=True, slots=True, kw_only=True)
class Delete(InnerMessage):
    """Delete ``target`` for the sender's devices or for everyone."""

    KIND: ClassVar[int] = 5
    target: bytes = field(metadata=wire(3, MESSAGE_ID))
    scope: DeleteScope = field(metadata=wire(4, EnumKind(DeleteScope)))


@_kind
@dataclass(frozen=True, slots=True, kw_only=True)
class Receipt(InnerMessage):
    """Delivery or read receipts for up to ``MAX_RECEIPT_IDS`` messages (of one group,
    with ``group_id``)."""

    KIND: ClassVar[int] = 6
    kind: ReceiptKind = field(metadata=wire(3, EnumKind(ReceiptKind)))
    message_ids: tuple[bytes, ...] = field(metadata=wire(4, _MESSAGE_IDS))
    group_id: bytes | None = field(default=None, metadata=wire(5, GROUP_ID))
    """Set when the messages are group messages (sent pairwise to their author)."""


@_kind
@dataclass(frozen=True, slots=True, kw_only=True)
class Typing(InnerMessage):
    """Typing indicator (sent with ``SendEphemeral``)."""

    KIND: ClassVar[int] = 7
    active: bool = field(metadata=wire(3, BOOL))


@_kind
@dataclass(frozen=True, slots=True, kw_only=True)
class Presence(InnerMessage):
    """Presence (sent with ``SendEphemeral``)."""

    KIND: ClassVar[int] = 8
    state: PresenceState = field(metadata=wire(3, EnumKind(PresenceState)))


@_kind
@dataclass(frozen=True, slots=True, kw_only=True)
class Profile(InnerMessage):
    """The sender's profile: display name and optional avatar (a file manifest)."""

    KIND: ClassVar[int] = 9
    display_name: str = field(repr=False, metadata=wire(3, _DISPLAY_NAME))
    avatar_manifest: bytes | None = field(default=None, repr=False, metadata=wire(4, _MANIFEST))


@_kind
@dataclass(frozen=True, slots=True, kw_only=True)
class MailboxAnnouncement(InnerMessage):
    """ "Write to me here": a pairwise mailbox and its send capability.

    ``relay_url`` names the relay when it is not the one this session uses.
    """

    KIND: ClassVar[int] = 10
    mailbox_id: bytes = field(metadata=wire(3, MAILBOX_ID))
    capability: bytes = field(repr=False, metadata=wire(4, CAPABILITY))
    relay_url: str | None = field(default=None, metadata=wire(5, _RELAY_URL))


@_kind
@dataclass(frozen=True, slots=True, kw_only=True)
class MailboxRotation(InnerMessage):
    """Stop writing to ``old_mailbox_id``; write to ``mailbox_id`` with ``capability``."""

    KIND: ClassVar[int] = 11
    old_mailbox_id: bytes = field(metadata=wire(3, MAILBOX_ID))
    mailbox_id: bytes = field(metadata=wire(4, MAILBOX_ID))
    capability: bytes = field(repr=False, metadata=wire(5, CAPABILITY))
    relay_url: str | None = field(default=None, metadata=wire(6, _RELAY_URL))


@_kind
@dataclass(frozen=True, slots=True, kw_only=True)
class GroupControl(InnerMessage):
    """A signed group state (``protocol.group.GroupState``), sent by its signer over the
    pairwise session to every member of the old and the new state.

    ``signature`` is Ed25519 by the signer's identity key over ``state`` with purpose
    ``group-control`` (docs/protocol.md §3, §9.14). In a channel with subscriptions,
    ``subscriptions`` carries ``[encoded protocol.group.Subscription, signature]``
    pairs (same purpose), each made under ``state`` or an earlier state. ``complete``:
    the signer wrote this state to every member of the old and the new state, so nobody
    needs to pass it on (absent: false).
    """

    KIND: ClassVar[int] = 12
    state: bytes = field(repr=False, metadata=wire(3, _GROUP_STATE))
    signature: bytes = field(repr=False, metadata=wire(4, SIGNATURE))
    subscriptions: tuple[tuple[bytes, bytes], ...] = field(
        default=(), repr=False, metadata=wire(5, _SUBSCRIPTIONS))
    complete: bool = field(default=False, metadata=wire(6, BOOL))


@_kind
@dataclass(frozen=True, slots=True, kw_only=True)
class GroupControlKey(InnerMessage):
    """The key to a *sealed* ``GroupControl``: one stored once with a multi-recipient
    send to every member's pairwise mailbox, encrypted as the single chunk of a file
    (docs/protocol.md §8.1, §9.14), instead of one pairwise copy per member.

    ``blob_hash`` is SHA-256 of the sealed blob as the relay delivers it (its ``0x82``
    prefix included); ``key`` and ``seal_id`` are that chunk's file key and file id.
    Sent pairwise by whoever sealed the control, to each member it sent the blob to.
    """

    KIND: ClassVar[int] = 15
    blob_hash: bytes = field(repr=False, metadata=wire(3, _SHA256))
    key: bytes = field(repr=False, metadata=wire(4, _SEAL_KEY))
    seal_id: bytes = field(repr=False, metadata=wire(5, _SEAL_ID))


@_kind
@dataclass(frozen=True, slots=True, kw_only=True)
class GroupStateRequest(InnerMessage):
    """Asks a member for group states by hash: the parents of states we hold whose
    parent never reached us (docs/protocol.md §9.14, "Missing states"). Answered with
    the ``GroupControl`` of each requested state that the requester was sent."""

    KIND: ClassVar[int] = 16
    group_id: bytes = field(metadata=wire(3, GROUP_ID))
    hashes: tuple[bytes, ...] = field(metadata=wire(4, _STATE_HASHES))


@_kind
@dataclass(frozen=True, slots=True, kw_only=True)
class SenderKeyDistribution(InnerMessage):
    """The sender's chain for one group (``pigeon_crypto.sender_keys.
    SenderKeyDistribution`` bytes, 73): holds a chain key, secret."""

    KIND: ClassVar[int] = 13
    group_id: bytes = field(metadata=wire(3, GROUP_ID))
    distribution: bytes = field(repr=False, metadata=wire(4, _DISTRIBUTION))


@_kind
@dataclass(frozen=True, slots=True, kw_only=True)
class SenderKeyRequest(InnerMessage):
    """The sender lacks our chain for the group: it forgot its sender keys when it left
    or was removed, and is a member again (a concurrent change won over its departure,
    or an admin added it back; docs/protocol.md §9.14, "A departure that lost"). A
    receiver whose head lists the sender sends its chain again with its next group
    message."""

    KIND: ClassVar[int] = 18
    group_id: bytes = field(metadata=wire(3, GROUP_ID))


@_kind
@dataclass(frozen=True, slots=True, kw_only=True)
class DisappearingTimer(InnerMessage):
    """The sender set this conversation's disappearing-message timer: messages stored
    from now on, on both sides, disappear ``timer_ms`` after they reach each device
    (absent: messages are kept)."""

    KIND: ClassVar[int] = 14
    timer_ms: int | None = field(default=None, metadata=wire(3, _TIMER_MS))


@_kind
@dataclass(frozen=True, slots=True, kw_only=True)
class IdentityRotated(InnerMessage):
    """The sender rotated its identity key: ``rotations`` is its whole rotation chain,
    oldest first (``pigeon_crypto.identity.IdentityRotation`` bytes, each signed by the
    key it replaces, as in a contact request), ending at the new key. Sent over the
    pairwise session to every accepted contact right after the rotation; the receiver
    takes the new key only if the chain verifies for the sender's account and passes
    through the key it knew (docs/protocol.md §4)."""

    KIND: ClassVar[int] = 17
    rotations: tuple[bytes, ...] = field(repr=False, metadata=wire(3, _ROTATIONS))
