"""Records: the frozen dataclasses behind frames, envelopes and inner messages.

Theory of operation
-------------------
A *record* is a frozen, slotted, keyword-only dataclass whose fields each declare,
through ``field(metadata=wire(key, kind))``, an integer *wire key* and a
:class:`~protocol._types.Kind`: the exact type, size and range of the value.
:func:`finalize` (applied after ``@dataclass``) turns the fields into codec tables.

* **Construction** (``__post_init__``) runs every kind's check on the Python value. A
  failure is the caller's bug: :class:`~protocol.errors.InvalidValue` (a
  :class:`~protocol.errors.LocalProtocolError`).
* **Encoding** builds the *body*, a msgpack map ``{wire key: value}`` with keys in
  ascending order; optional fields equal to their default are omitted, so there is
  one canonical encoding.
* **Decoding** (:meth:`Record._from_body`, after :func:`~protocol._msgpack.unpack`)
  looks up each known key (unknown keys are ignored: forward compatibility), converts
  the few kinds that need it, checks the value once and stores it into a new
  instance built without ``__init__`` (as pickle does), then runs the cross-field
  rules. Failures blame the peer: the matching
  :class:`~protocol.errors.RemoteProtocolError` (as h11 re-raises a local error as a
  remote one). ``nil`` is never accepted for an absent optional field.

This module also re-exports the kinds and the msgpack helpers, so record modules
import one place.
"""

from __future__ import annotations

import dataclasses
import enum
import itertools
from collections.abc import Callable, Mapping
from typing import Any, ClassVar, Final, NamedTuple, TypeAlias, TypeVar

from ._msgpack import SUPPORTED_VERSIONS, Buffer, Limits, pack, unpack, version_error
from ._types import Bool, Bytes, Code, EnumKind, Kind, Pair, Problem, Str, TupleOf, UInt
from .errors import (
    ErrorCode,
    InvalidFieldValue,
    InvalidValue,
    LimitExceeded,
    MissingField,
    RemoteProtocolError,
    WrongFieldType,
)

__all__ = [
    "SUPPORTED_VERSIONS",
    "Bool",
    "Buffer",
    "Bytes",
    "Code",
    "EnumKind",
    "FieldSpec",
    "Kind",
    "Limits",
    "Pair",
    "Problem",
    "Record",
    "Str",
    "TupleOf",
    "UInt",
    "finalize",
    "pack",
    "remote_field_error",
    "unpack",
    "version_error",
    "wire",
]

_META: Final = "pigeon.wire"
_ABSENT: Final = object()


# --- field declarations -----------------------------------------------------------------


class _Wire(NamedTuple):
    key: int | None
    kind: Kind


def wire(key: int | None, kind: Kind) -> Mapping[str, Any]:
    """Field metadata: ``field(metadata=wire(3, MAILBOX_ID))``.

    Secret fields (capabilities, tokens, plaintext) are declared with
    ``field(repr=False, ...)``; the record ``repr`` shows them as ``<redacted>``.

    Args:
        key: the integer key in the body map; ``None`` for a header field that the
            record's own codec places outside the body (a frame's request id).
        kind: the exact type of the value.
    """
    return {_META: _Wire(key, kind)}


class FieldSpec(NamedTuple):
    """One field of a record, as used by the codec (and by tests to build strategies)."""

    name: str
    key: int | None
    kind: Kind
    required: bool
    default: object
    secret: bool


R = TypeVar("R", bound="Record")
_Check: TypeAlias = Callable[[object], None]
_Conv: TypeAlias = Callable[[object], object]
_Setter: TypeAlias = Callable[[object, object], None]


class Record:
    """Base of frames, envelopes and inner messages (see the module docstring)."""

    __slots__ = ()

    SPECS: ClassVar[tuple[FieldSpec, ...]] = ()
    """All fields, in declaration order (set by :func:`finalize`)."""
    _CHECKS: ClassVar[tuple[tuple[str, _Check], ...]] = ()
    _ENC_REQ: ClassVar[tuple[tuple[str, int], ...]] = ()
    _ENC_OPT: ClassVar[tuple[tuple[str, int, object], ...]] = ()
    _DEC_HDR: ClassVar[tuple[tuple[str, _Check, _Setter], ...]] = ()
    _DEC: ClassVar[tuple[tuple[str, int, bool, object, _Conv | None, _Check, _Setter], ...]] = ()

    def __post_init__(self) -> None:
        name = ""
        try:
            for name, check in self._CHECKS:
                check(getattr(self, name))
            name = ""
            self._validate()
        except Problem as p:
            raise InvalidValue(type(self).__name__, p.field or name, p.reason, p.code) from None

    def _validate(self) -> None:
        """Cross-field invariants; raise :class:`Problem` with ``field`` set."""

    def _body(self) -> dict[int, object]:
        body: dict[int, object] = {}
        for name, key in self._ENC_REQ:
            body[key] = getattr(self, name)
        for name, key, default in self._ENC_OPT:
            value = getattr(self, name)
            if value != default:
                body[key] = value
        return body

    @classmethod
    def _from_body(cls: type[R], body: dict[int, object], header: tuple[object, ...] = ()) -> R:
        """Build the record from a decoded body; raise only RemoteProtocolError.

        One pass per field: look up, convert, check, store. The instance is built
        without calling ``__init__`` (as pickle does) so that each value is checked
        once, with the peer blamed; ``_validate`` then runs as in ``__post_init__``.

        Args:
            body: the decoded map (int keys, checked by the parser hook).
            header: values of the header fields (key ``None``), in declaration order.
        """
        obj = object.__new__(cls)
        name = ""
        try:
            for spec, value in zip(cls._DEC_HDR, header, strict=True):
                name = spec[0]
                spec[1](value)  # check
                spec[2](obj, value)  # store
            for name, key, required, default, conv, check, setter in cls._DEC:
                value = body.get(key, _ABSENT)
                if value is _ABSENT:
                    if required:
                        raise MissingField(cls.__name__, name)
                    value = default
                elif value is None:  # no field is nullable on the wire: omit it instead
                    raise WrongFieldType(cls.__name__, name, "nil is not a value; omit the key")
                else:
                    if conv is not None:
                        value = conv(value)
                    check(value)
                setter(obj, value)
            name = ""
            obj._validate()
        except Problem as p:
            raise remote_field_error(cls.__name__, p.field or name, p.code, p.reason) from None
        return obj


def remote_field_error(what: str, field: str, code: ErrorCode, reason: str) -> RemoteProtocolError:
    """The peer-blamed twin of a field problem."""
    if code is ErrorCode.WRONG_FIELD_TYPE:
        return WrongFieldType(what, field, reason)
    if code is ErrorCode.LIMIT_EXCEEDED:
        return LimitExceeded(what, field, reason)
    return InvalidFieldValue(what, field, reason)


def finalize(cls: type[R]) -> type[R]:
    """Compute the codec tables of a record dataclass (applied after ``@dataclass``)."""
    specs: list[FieldSpec] = []
    keys: set[int] = set()
    for f in dataclasses.fields(cls):  # type: ignore[arg-type]
        w = f.metadata.get(_META)
        if not isinstance(w, _Wire):
            raise TypeError(f"{cls.__name__}.{f.name} has no wire() metadata")
        if w.key is not None:
            if w.key in keys or not 0 <= w.key <= 127:
                raise TypeError(f"{cls.__name__}.{f.name}: bad or duplicate wire key {w.key}")
            keys.add(w.key)
        required = f.default is dataclasses.MISSING and f.default_factory is dataclasses.MISSING
        default = None if required else f.default
        specs.append(FieldSpec(f.name, w.key, w.kind, required, default, not f.repr))
    body = [(s.key, s.required) for s in specs if s.key is not None]
    if body != sorted(body, key=lambda kr: kr[0]) or any(
        later > earlier for (_, earlier), (_, later) in itertools.pairwise(body)
    ):
        # The encoder writes required then optional fields in declaration order; this
        # keeps the body's keys ascending, which the vectors and docs promise.
        raise TypeError(f"{cls.__name__}: declare body fields by ascending key, required first")
    cls.SPECS = tuple(specs)
    cls._CHECKS = tuple(
        (s.name, _nullable(s.kind.check) if s.default is None and not s.required else s.kind.check)
        for s in specs
    )
    cls._ENC_REQ = tuple((s.name, s.key) for s in specs if s.required and s.key is not None)
    cls._ENC_OPT = tuple(
        (s.name, s.key, s.default) for s in specs if not s.required and s.key is not None
    )
    setters = {s.name: getattr(cls, s.name).__set__ for s in specs}  # slot descriptors
    cls._DEC_HDR = tuple((s.name, s.kind.check, setters[s.name]) for s in specs if s.key is None)
    cls._DEC = tuple(
        (
            s.name,
            s.key,
            s.required,
            s.default,
            s.kind.from_wire if s.kind.converts else None,
            s.kind.check,  # decoded values are never None here
            setters[s.name],
        )
        for s in specs
        if s.key is not None
    )
    cls.__repr__ = _record_repr  # type: ignore[method-assign,assignment]
    return cls


def _nullable(check: Callable[[object], None]) -> Callable[[object], None]:
    """An optional field whose default is ``None`` accepts ``None`` (encoded as absent)."""

    def check_or_none(value: object) -> None:
        if value is not None:
            check(value)

    return check_or_none


def _short(value: object, secret: bool) -> str:
    if value is None:
        return "None"
    if secret:
        return "<redacted>"
    if isinstance(value, enum.Enum):
        return f"{type(value).__name__}.{value.name}"
    if isinstance(value, bytes):
        return value.hex() if len(value) <= 32 else f"<{len(value)} bytes>"
    if isinstance(value, tuple):
        if len(value) > 4:
            return f"<{len(value)} items>"
        inner = ", ".join(_short(x, False) for x in value)
        return f"({inner},)" if len(value) == 1 else f"({inner})"
    return repr(value)


def _record_repr(self: Record) -> str:
    parts = [f"{s.name}={_short(getattr(self, s.name), s.secret)}" for s in self.SPECS]
    return f"{type(self).__name__}({', '.join(parts)})"
