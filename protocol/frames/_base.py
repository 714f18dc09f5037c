"""Frame base classes, the frame type registry, and the frame codec.

Wire form of every frame (one frame per WebSocket binary message)::

    [version, type, request_id, {key: value, ...}]

===========  ========  =========================================================
position     msgpack   meaning
===========  ========  =========================================================
0            int       protocol version, ``1`` (:data:`~protocol.limits.PROTOCOL_VERSION`)
1            int       frame type code (the ``TYPE`` of the class; never reused)
2            int       request id, u32: ``1..2**32-1`` on requests and their responses,
                       ``0`` on frames that answer nothing (deliveries, notices)
3            map       the body: small integer keys (per frame type) to values
===========  ========  =========================================================

Decoding order: length (``MAX_FRAME_SIZE``) before parsing; then the parser with
container limits; then the version (first element, before anything else, so a
future version may change everything after it); then shape, type code, request id
and body. Optional fields equal to their default are omitted from the body;
unknown body keys are ignored.
"""

from __future__ import annotations

import enum
from dataclasses import dataclass, field
from typing import ClassVar, Final, Self, TypeVar

from .. import limits as L
from .._wire import Buffer, Limits, Record, UInt, finalize, pack, unpack, version_error, wire
from ..errors import (
    InvalidFieldValue,
    LocalProtocolError,
    MalformedFrame,
    RemoteProtocolError,
    UnexpectedFrame,
    UnknownFrameType,
    WrongFieldType,
)

__all__ = [
    "FRAME_TYPES",
    "Direction",
    "Frame",
    "Request",
    "Response",
    "decode_frame",
    "register",
]

FRAME_LIMITS: Final = Limits(
    what="frame",
    max_size=L.MAX_FRAME_SIZE,
    max_bin_len=L.MAX_FRAME_BIN_LEN,
    max_str_len=L.MAX_FRAME_STR_LEN,
    max_array_len=L.MAX_FRAME_ARRAY_LEN,
    max_map_len=L.MAX_MAP_LEN,
)

REQUEST_ID: Final = UInt(1, L.MAX_REQUEST_ID)
"""A request id: u32, never 0 (0 marks frames that answer no request)."""
OPTIONAL_REQUEST_ID: Final = UInt(0, L.MAX_REQUEST_ID)


class Direction(enum.Enum):
    """Who may send a frame type."""

    TO_RELAY = "client to relay"
    TO_CLIENT = "relay to client"
    BOTH = "either way"


class Frame(Record):
    """A wire frame. Subclasses are frozen, slotted, keyword-only dataclasses."""

    __slots__ = ()

    TYPE: ClassVar[int]
    """The frame type code on the wire."""
    DIRECTION: ClassVar[Direction]
    """Who may send it."""
    _HAS_RID: ClassVar[bool] = False

    def encode(self) -> bytes:
        """The wire bytes of this frame.

        Raises:
            LocalProtocolError: the frame would exceed ``MAX_FRAME_SIZE`` (cannot
                happen for frames within the per-field limits; checked anyway).
        """
        out = pack((L.PROTOCOL_VERSION, self.TYPE, getattr(self, "request_id", 0), self._body()))
        if len(out) > L.MAX_FRAME_SIZE:
            raise LocalProtocolError(
                f"{type(self).__name__} encodes to {len(out)} bytes, over MAX_FRAME_SIZE"
            )
        return out

    @classmethod
    def decode(cls, data: Buffer) -> Self:
        """Decode *data* as a frame of this class (``Frame.decode`` accepts any type).

        Raises:
            RemoteProtocolError: any subclass, see :func:`decode_frame`;
                :class:`UnexpectedFrame` if the frame is valid but of another type.
        """
        frame = decode_frame(data)
        if not isinstance(frame, cls):
            exc = UnexpectedFrame(type(frame).__name__, cls.__name__)
            exc.request_id = getattr(frame, "request_id", 0)
            raise exc
        return frame


@dataclass(frozen=True, slots=True, kw_only=True)
class Request(Frame):
    """A frame that expects an answer correlated by ``request_id``.

    Request ids are chosen by the sender of the request, unique among its requests in
    flight on the connection (each direction has its own space).
    """

    request_id: int = field(metadata=wire(None, REQUEST_ID))


@dataclass(frozen=True, slots=True, kw_only=True)
class Response(Frame):
    """A frame that answers the request with the same ``request_id``."""

    request_id: int = field(metadata=wire(None, REQUEST_ID))


FRAME_TYPES: Final[dict[int, type[Frame]]] = {}
"""The registry: frame type code to class. Decoding looks the class up here."""

F = TypeVar("F", bound=Frame)


def register(cls: type[F]) -> type[F]:
    """Class decorator (outermost, after ``@dataclass``): finalize and register."""
    code = cls.TYPE
    if code in FRAME_TYPES or not 0 < code <= 127:
        raise TypeError(f"frame type {code} of {cls.__name__} is invalid or taken")
    finalize(cls)
    cls._HAS_RID = any(s.name == "request_id" for s in cls.SPECS)
    FRAME_TYPES[code] = cls
    return cls


def decode_frame(data: Buffer, *, direction: Direction | None = None) -> Frame:
    """Decode one frame strictly.

    Args:
        data: one complete WebSocket binary message.
        direction: if given, only frames that may travel that way are accepted
            (a relay passes ``Direction.TO_RELAY``, a client ``Direction.TO_CLIENT``).

    Returns:
        The frame, an instance of the class registered for its type code.

    Raises:
        FrameTooLarge: more than ``MAX_FRAME_SIZE`` bytes (checked before parsing).
        MalformedFrame: not one msgpack array ``[version, type, request_id, body]``
            (including truncated input, trailing bytes, non-int or duplicate keys);
            :class:`NestingTooDeep` for deep nesting.
        UnsupportedProtocolVersion: :class:`ProtocolVersionTooOld` or
            :class:`UnknownProtocolVersion`.
        UnknownFrameType: the type code is not registered.
        UnexpectedFrame: the frame may not travel in *direction*.
        MissingField, WrongFieldType, InvalidFieldValue, LimitExceeded: a field is
            absent, of the wrong type, of a wrong size or value, or over a limit.

        Every error raised after the request id was read has ``request_id`` set, so
        the receiver can answer with a correlated ``Error`` frame.
    """
    obj = unpack(data, FRAME_LIMITS)
    if type(obj) is not tuple or not obj:
        raise MalformedFrame("frame", "a frame is a non-empty msgpack array")
    version = obj[0]
    if type(version) is not int or not L.MIN_PROTOCOL_VERSION <= version <= L.PROTOCOL_VERSION:
        raise version_error("frame", version)
    if len(obj) != 4:
        raise MalformedFrame("frame", f"expected 4 elements, got {len(obj)}")
    _, ftype, rid, body = obj
    cls = FRAME_TYPES.get(ftype) if type(ftype) is int else None
    if cls is None:
        if type(ftype) is not int:
            raise MalformedFrame("frame", f"type is {type(ftype).__name__}, expected int")
        raise UnknownFrameType(ftype)
    if type(rid) is not int:
        raise WrongFieldType(cls.__name__, "request_id", f"expected int, got {type(rid).__name__}")
    try:
        if (
            direction is not None
            and cls.DIRECTION is not direction
            and cls.DIRECTION is not Direction.BOTH
        ):
            raise UnexpectedFrame(cls.__name__, f"a frame sent {direction.value}")
        if type(body) is not dict:
            raise MalformedFrame("frame", f"body is {type(body).__name__}, expected a map")
        if cls._HAS_RID:
            return cls._from_body(body, (rid,))
        if rid != 0:
            raise InvalidFieldValue(cls.__name__, "request_id", "must be 0 on this frame type")
        return cls._from_body(body)
    except RemoteProtocolError as exc:
        exc.request_id = rid if 0 <= rid <= L.MAX_REQUEST_ID else None
        raise
