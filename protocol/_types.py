"""Field kinds: the exact wire type, size and range of each field.

A :class:`Kind` checks a Python value (``check``) and, for the few kinds whose Python
form differs from the msgpack form (enums, error codes), converts a decoded value
(``from_wire``). Checks raise :class:`Problem`, an internal signal that the record
machinery (:mod:`protocol._wire`) turns into :class:`~protocol.errors.InvalidValue`
when our caller is at fault, or into the matching
:class:`~protocol.errors.RemoteProtocolError` when the peer is.

Exactness: ``bool`` is never accepted as ``int`` (``type(v) is int``), ``str`` never as
``bytes``, a list never as a tuple.
"""

from __future__ import annotations

import enum
import re
from collections.abc import Callable
from typing import Final

from .errors import ErrorCode

__all__ = [
    "U64_MAX",
    "Bool",
    "Bytes",
    "Code",
    "EnumKind",
    "Kind",
    "Pair",
    "Problem",
    "Str",
    "TupleOf",
    "UInt",
]

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
