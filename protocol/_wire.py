"""Private machinery shared by frames, envelopes and inner messages.

Theory of operation
-------------------
A *record* (frame, envelope or inner message) is a frozen, slotted dataclass whose
fields each declare, through ``field(metadata=wire(key, kind))``, an integer *wire key*
and a :class:`Kind`: the exact type, size and range the value must have.

* **Construction** (``__post_init__``) runs every kind's ``check`` on the Python value.
  A failure is the caller's bug: :class:`~protocol.errors.InvalidValue`
  (a :class:`~protocol.errors.LocalProtocolError`).
* **Encoding** builds the *body*, a msgpack map ``{wire key: value}``; optional fields
  equal to their default are omitted, so there is one canonical encoding.
* **Decoding** parses with :func:`unpack` (size checked before parsing; container
  limits given to the parser; only integer map keys, no duplicates), picks the known
  keys out of the body (unknown keys are ignored: forward compatibility), converts
  the few kinds that need it (enums), and calls the constructor. Any
  :class:`~protocol.errors.InvalidValue` it raises is re-raised as the matching
  :class:`~protocol.errors.RemoteProtocolError` subclass (as h11 does with
  ``_reraise_as_remote_protocol_error``), so one set of checks serves both sides.

Exactness: ``bool`` is never accepted as ``int`` (``type(v) is int``), ``str`` never as
``bytes``, a list never as a tuple; ``nil`` is never accepted for an absent optional
field (omit the key instead).

The msgpack packer is a module-level :class:`msgpack.Packer` (3x cheaper than
``packb``). It is shared safely: it is given no ``default`` hook, and the values we
pack are builtins (or ``int`` subclasses), so ``pack`` runs no Python code and is
atomic under the GIL.
"""

from __future__ import annotations

import dataclasses
import enum
import itertools
import re
from collections.abc import Callable, Mapping
from typing import Any, ClassVar, Final, NamedTuple, TypeAlias, TypeVar

import msgpack

from .errors import (
    ErrorCode,
    FrameTooLarge,
    InvalidFieldValue,
    InvalidValue,
    LimitExceeded,
    LocalProtocolError,
    MalformedFrame,
    MissingField,
    NestingTooDeep,
    ProtocolVersionTooOld,
    RemoteProtocolError,
    UnknownProtocolVersion,
    WrongFieldType,
)
from .limits import MIN_PROTOCOL_VERSION, PROTOCOL_VERSION

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
U64_MAX: Final = 2**64 - 1


class Problem(Exception):
    """Internal: a kind check failed. Converted to a local or remote typed error."""

    def __init__(self, code: ErrorCode, reason: str, field: str | None = None) -> None:
        super().__init__(reason)
        self.code = code
        self.reason = reason
        self.field = field


def _wrong(expected: str, value: object) -> Problem:
    return Problem(ErrorCode.WRONG_FIELD_TYPE, f"expected {expected}, got {type(value).__name__}")


# --- kinds ------------------------------------------------------------------------------


class Kind:
    """The exact wire type of a field; shared, immutable instances."""

    __slots__ = ("converts",)

    def __init__(self, *, converts: bool = False) -> None:
        self.converts = converts
        """Whether decoded values must go through :meth:`from_wire` (enums)."""

    def check(self, value: object) -> None:
        """Raise :class:`Problem` unless *value* is acceptable."""
        raise NotImplementedError

    def from_wire(self, value: object) -> object:
        """Convert a decoded msgpack value to the Python value (identity by default)."""
        return value

    def describe(self) -> str:
        """A short type description for docs and error messages."""
        raise NotImplementedError


class UInt(Kind):
    """An integer in ``lo..hi`` (never a bool). Above ``hi`` raises ``over``."""

    __slots__ = ("hi", "lo", "over")

    def __init__(
        self, lo: int = 0, hi: int = U64_MAX, *, over: ErrorCode = ErrorCode.INVALID_FIELD
    ) -> None:
        super().__init__()
        self.lo = lo
        self.hi = hi
        self.over = over

    def check(self, value: object) -> None:
        if type(value) is not int:
            raise _wrong("int", value)
        if value < self.lo:
            raise Problem(ErrorCode.INVALID_FIELD, f"{value} is below the minimum {self.lo}")
        if value > self.hi:
            raise Problem(self.over, f"{value} exceeds the maximum {self.hi}")

    def describe(self) -> str:
        return f"int {self.lo}..{self.hi}"


class Bool(Kind):
    """``true`` or ``false``; never an integer."""

    __slots__ = ()

    def check(self, value: object) -> None:
        if type(value) is not bool:
            raise _wrong("bool", value)

    def describe(self) -> str:
        return "bool"


class Bytes(Kind):
    """A msgpack ``bin``: exactly one of ``sizes``, or ``lo..hi`` bytes."""

    __slots__ = ("hi", "lo", "sizes")

    def __init__(
        self, lo: int = 0, hi: int | None = None, *, sizes: tuple[int, ...] | None = None
    ) -> None:
        if sizes is None and hi is None:
            raise ValueError("Bytes needs hi or sizes")
        super().__init__()
        self.sizes = sizes
        self.lo = min(sizes) if sizes else lo
        self.hi = max(sizes) if sizes else (hi if hi is not None else 0)

    @classmethod
    def exactly(cls, size: int) -> Bytes:
        return cls(sizes=(size,))

    def check(self, value: object) -> None:
        if type(value) is bytes:  # fast path
            n = len(value)
            if self.sizes is None:
                if self.lo <= n <= self.hi:
                    return
            elif n in self.sizes:
                return
        if type(value) is not bytes:
            raise _wrong("bytes", value)
        n = len(value)
        if self.sizes is not None:
            if n not in self.sizes:
                want = " or ".join(str(s) for s in self.sizes)
                raise Problem(ErrorCode.INVALID_FIELD, f"expected {want} bytes, got {n}")
        elif n > self.hi:
            raise Problem(ErrorCode.LIMIT_EXCEEDED, f"{n} bytes exceed the maximum {self.hi}")
        elif n < self.lo:
            raise Problem(ErrorCode.INVALID_FIELD, f"{n} bytes are below the minimum {self.lo}")

    def describe(self) -> str:
        if self.sizes is not None:
            return "bin[" + "|".join(str(s) for s in self.sizes) + "]"
        return f"bin[{self.lo}..{self.hi}]"


class Str(Kind):
    """A msgpack ``str`` of ``lo..hi`` UTF-8 bytes, optionally matching ``pattern``."""

    __slots__ = ("hi", "lo", "pattern")

    def __init__(self, lo: int, hi: int, *, pattern: str | None = None) -> None:
        super().__init__()
        self.lo = lo
        self.hi = hi
        self.pattern = re.compile(pattern) if pattern is not None else None

    def check(self, value: object) -> None:
        if type(value) is not str:
            raise _wrong("str", value)
        if value.isascii():
            n = len(value)
        else:
            try:
                n = len(value.encode("utf-8"))
            except UnicodeEncodeError:
                raise Problem(ErrorCode.INVALID_FIELD, "not encodable as UTF-8") from None
        if n > self.hi:
            raise Problem(ErrorCode.LIMIT_EXCEEDED, f"{n} bytes exceed the maximum {self.hi}")
        if n < self.lo:
            raise Problem(ErrorCode.INVALID_FIELD, f"{n} bytes are below the minimum {self.lo}")
        if self.pattern is not None and self.pattern.fullmatch(value) is None:
            raise Problem(ErrorCode.INVALID_FIELD, f"does not match {self.pattern.pattern}")

    def describe(self) -> str:
        return f"str[{self.lo}..{self.hi}]"


class EnumKind(Kind):
    """A closed set of integers, held in Python as members of an ``IntEnum``."""

    __slots__ = ("enum",)

    def __init__(self, enum_cls: type[enum.IntEnum]) -> None:
        super().__init__(converts=True)
        self.enum = enum_cls

    def check(self, value: object) -> None:
        if type(value) is not self.enum:
            raise _wrong(self.enum.__name__, value)

    def from_wire(self, value: object) -> object:
        if type(value) is not int:
            raise _wrong("int", value)
        member = self.enum._value2member_map_.get(value)
        if member is None:
            raise Problem(ErrorCode.INVALID_FIELD, f"{value} is not a {self.enum.__name__} value")
        return member

    def describe(self) -> str:
        return f"int ({self.enum.__name__})"


class Code(Kind):
    """An open set of error codes (u16): known values become :class:`ErrorCode` members,
    unknown ones (from a newer relay) stay plain integers."""

    __slots__ = ()

    def __init__(self) -> None:
        super().__init__(converts=True)

    def check(self, value: object) -> None:
        if type(value) is not int and type(value) is not ErrorCode:
            raise _wrong("int", value)
        if not 0 <= value <= 0xFFFF:
            raise Problem(ErrorCode.INVALID_FIELD, f"error code {value} is not a u16")

    def from_wire(self, value: object) -> object:
        if type(value) is not int:
            raise _wrong("int", value)
        return ErrorCode._value2member_map_.get(value, value)

    def describe(self) -> str:
        return "int (ErrorCode)"


class TupleOf(Kind):
    """A msgpack array of ``lo..hi`` items of one kind; a ``tuple`` in Python."""

    __slots__ = ("_pair_sizes", "hi", "item", "lo")

    def __init__(self, item: Kind, lo: int, hi: int) -> None:
        super().__init__(converts=item.converts)
        self.item = item
        self.lo = lo
        self.hi = hi
        self._pair_sizes: tuple[int, int] | None = None
        if isinstance(item, Pair):
            a, b = item.first, item.second
            if (
                isinstance(a, Bytes)
                and isinstance(b, Bytes)
                and a.sizes is not None
                and b.sizes is not None
                and len(a.sizes) == 1
                and len(b.sizes) == 1
            ):
                self._pair_sizes = (a.sizes[0], b.sizes[0])

    def check(self, value: object) -> None:
        if type(value) is not tuple:
            raise _wrong("tuple", value)
        n = len(value)
        if n > self.hi:
            raise Problem(ErrorCode.LIMIT_EXCEEDED, f"{n} items exceed the maximum {self.hi}")
        if n < self.lo:
            raise Problem(ErrorCode.INVALID_FIELD, f"{n} items are below the minimum {self.lo}")
        if self._pair_sizes is not None:
            # Fast path for [fixed bytes, fixed bytes] items (recipients): inline checks;
            # on the first doubtful item fall through to the precise generic checks.
            s0, s1 = self._pair_sizes
            for x in value:
                if type(x) is not tuple or len(x) != 2:
                    break
                a, b = x
                if type(a) is not bytes or len(a) != s0 or type(b) is not bytes or len(b) != s1:
                    break
            else:
                return
        check = self.item.check
        try:
            for x in value:
                check(x)
        except Problem as p:
            raise Problem(p.code, f"item {_first_bad(value, check)}: {p.reason}") from None

    def from_wire(self, value: object) -> object:
        if type(value) is not tuple:
            raise _wrong("array", value)
        conv = self.item.from_wire
        try:
            return tuple([conv(x) for x in value])
        except Problem as p:
            raise Problem(p.code, f"item {_first_bad(value, conv)}: {p.reason}") from None

    def describe(self) -> str:
        return f"array[{self.lo}..{self.hi}] of {self.item.describe()}"


class Pair(Kind):
    """A two-element msgpack array ``[a, b]``; a 2-tuple in Python."""

    __slots__ = ("first", "second")

    def __init__(self, first: Kind, second: Kind) -> None:
        super().__init__(converts=first.converts or second.converts)
        self.first = first
        self.second = second

    def check(self, value: object) -> None:
        if type(value) is not tuple:
            raise _wrong("tuple", value)
        if len(value) != 2:
            raise Problem(ErrorCode.INVALID_FIELD, f"expected 2 items, got {len(value)}")
        self.first.check(value[0])
        self.second.check(value[1])

    def from_wire(self, value: object) -> object:
        if type(value) is not tuple:
            raise _wrong("array", value)
        if len(value) != 2:
            raise Problem(ErrorCode.INVALID_FIELD, f"expected 2 items, got {len(value)}")
        return (self.first.from_wire(value[0]), self.second.from_wire(value[1]))

    def describe(self) -> str:
        return f"[{self.first.describe()}, {self.second.describe()}]"


def _first_bad(value: tuple[object, ...], fn: Callable[[object], object]) -> int:
    """Index of the first item that *fn* rejects (cold path, for error messages)."""
    for i, x in enumerate(value):
        try:
            fn(x)
        except Problem:
            return i
    return -1  # pragma: no cover - only called after a failure


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
Buffer: TypeAlias = bytes | bytearray | memoryview
"""Decoders accept any of these (non-``bytes`` inputs are copied once)."""
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


# --- msgpack ---------------------------------------------------------------------------

_packer: Final = msgpack.Packer(use_bin_type=True, autoreset=True)
pack: Final[Callable[[object], bytes]] = _packer.pack


def _map_pairs(pairs: list[tuple[object, object]]) -> dict[object, object]:
    """object_pairs_hook: integer keys only, no duplicates (one meaning per encoding)."""
    for key, _ in pairs:
        if type(key) is not int:
            raise MalformedFrame("map", f"map key of type {type(key).__name__}, expected int")
    body = dict(pairs)
    if len(body) != len(pairs):
        raise MalformedFrame("map", "duplicate map key")
    return body


SUPPORTED_VERSIONS: Final = tuple(range(MIN_PROTOCOL_VERSION, PROTOCOL_VERSION + 1))


def version_error(what: str, version: object) -> RemoteProtocolError:
    """The error for a version outside ``SUPPORTED_VERSIONS`` (too old vs unknown)."""
    if type(version) is not int:
        return MalformedFrame(what, f"version is {type(version).__name__}, expected int")
    if 0 < version < MIN_PROTOCOL_VERSION:
        return ProtocolVersionTooOld(what, version, SUPPORTED_VERSIONS)
    return UnknownProtocolVersion(what, version, SUPPORTED_VERSIONS)


class Limits(NamedTuple):
    """Parser limits for one kind of record."""

    what: str
    max_size: int
    max_bin_len: int
    max_str_len: int
    max_array_len: int
    max_map_len: int


def unpack(data: Buffer, limits: Limits) -> object:
    """Parse *data* as exactly one msgpack object, strictly.

    Args:
        data: the whole input (``bytes``; ``bytearray`` and ``memoryview`` are copied).
        limits: size and container limits for this kind of record.

    Returns:
        The object, with arrays as tuples and maps as dicts with int keys.

    Raises:
        FrameTooLarge: ``len(data) > limits.max_size``, before any parsing.
        NestingTooDeep: containers nested beyond the parser's stack (1024 levels).
        LimitExceeded: a length prefix above a container limit (before allocation).
        MalformedFrame: anything else the parser rejects: truncated input, trailing
            bytes, reserved or ext types, invalid UTF-8, non-int or duplicate map keys.
        LocalProtocolError: *data* is not bytes-like (caller misuse).
    """
    if type(data) is not bytes:
        if not isinstance(data, (bytes, bytearray, memoryview)):
            raise LocalProtocolError(f"cannot decode {type(data).__name__}, expected bytes")
        data = bytes(data)
    if len(data) > limits.max_size:
        raise FrameTooLarge(limits.what, len(data), limits.max_size)
    try:
        return msgpack.unpackb(
            data,
            raw=False,
            use_list=False,
            strict_map_key=False,
            object_pairs_hook=_map_pairs,
            max_bin_len=limits.max_bin_len,
            max_str_len=limits.max_str_len,
            max_array_len=limits.max_array_len,
            max_map_len=limits.max_map_len,
            max_ext_len=0,
        )
    except MalformedFrame as exc:
        raise MalformedFrame(limits.what, exc.reason) from None
    except msgpack.StackError:
        raise NestingTooDeep(limits.what, "containers nested too deeply") from None
    except msgpack.ExtraData:
        raise MalformedFrame(limits.what, "trailing bytes after the object") from None
    except UnicodeDecodeError:
        raise MalformedFrame(limits.what, "invalid UTF-8 in a string") from None
    except ValueError as exc:
        text = str(exc)
        if "max_ext_len" in text:
            raise MalformedFrame(limits.what, "msgpack ext types are not used") from None
        if " exceeds max_" in text:
            # "N exceeds max_bin_len(M)": the parser refused a length prefix up front.
            raise LimitExceeded(limits.what, "(length prefix)", text) from None
        if "incomplete input" in text:
            raise MalformedFrame(limits.what, "truncated") from None
        raise MalformedFrame(limits.what, text or type(exc).__name__) from None
    except RecursionError:  # pure-Python msgpack fallback recurses per nesting level
        raise NestingTooDeep(limits.what, "containers nested too deeply") from None
    except Exception as exc:
        # The parser is foreign code facing hostile input: whatever else it raises
        # (TypeError for an unhashable key, FormatError...) is still a malformed frame.
        raise MalformedFrame(limits.what, type(exc).__name__) from None
