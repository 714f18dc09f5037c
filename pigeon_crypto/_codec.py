"""Helpers for Pigeon's fixed-layout, versioned byte serialization.

Every serialized crypto object starts with a one-byte *format version*,
followed by fixed-size fields and, where needed, length-prefixed variable
fields (big-endian ``u16`` or ``u32`` length). Decoders read with
:class:`Reader`, which raises :class:`~pigeon_crypto.errors.DecodeError` on
truncation and on trailing bytes, and :func:`check_version`, which separates
"too old" from "unknown".
"""

from __future__ import annotations

import struct

from .errors import DecodeError, UnknownVersion, VersionTooOld

__all__ = ["Reader", "check_version", "u16", "u32", "u64", "var16", "var32"]

_U16 = struct.Struct(">H")
_U32 = struct.Struct(">I")
_U64 = struct.Struct(">Q")


def u16(value: int) -> bytes:
    return _U16.pack(value)


def u32(value: int) -> bytes:
    return _U32.pack(value)


def u64(value: int) -> bytes:
    return _U64.pack(value)


def var16(data: bytes) -> bytes:
    """``u16`` length prefix followed by *data*."""
    return _U16.pack(len(data)) + data


def var32(data: bytes) -> bytes:
    """``u32`` length prefix followed by *data*."""
    return _U32.pack(len(data)) + data


def check_version(what: str, got: int, current: int, oldest: int | None = None) -> None:
    """Raise the right version error unless ``oldest <= got <= current``.

    Args:
        what: object name for the error message.
        got: the version byte read.
        current: the version this code writes.
        oldest: the oldest version still accepted (default: *current*).

    Raises:
        VersionTooOld: ``got`` is below ``oldest`` (but non-zero).
        UnknownVersion: ``got`` is above ``current`` or zero.
    """
    lo = current if oldest is None else oldest
    supported = tuple(range(lo, current + 1))
    if got == 0 or got > current:
        raise UnknownVersion(what, got, supported)
    if got < lo:
        raise VersionTooOld(what, got, supported)


class Reader:
    """Sequential reader over a byte string that never over-reads."""

    __slots__ = ("_data", "_pos", "_what")

    def __init__(self, data: bytes, what: str) -> None:
        if not isinstance(data, (bytes, bytearray, memoryview)):
            raise DecodeError(what, f"expected bytes, got {type(data).__name__}")
        self._data = bytes(data)
        self._pos = 0
        self._what = what

    @property
    def remaining(self) -> int:
        return len(self._data) - self._pos

    def take(self, n: int) -> bytes:
        end = self._pos + n
        if end > len(self._data):
            raise DecodeError(self._what, f"truncated: needed {n} bytes, have {self.remaining}")
        out = self._data[self._pos : end]
        self._pos = end
        return out

    def u8(self) -> int:
        return self.take(1)[0]

    def u16(self) -> int:
        return int(_U16.unpack(self.take(2))[0])

    def u32(self) -> int:
        return int(_U32.unpack(self.take(4))[0])

    def u64(self) -> int:
        return int(_U64.unpack(self.take(8))[0])

    def var16(self, max_len: int = 0xFFFF) -> bytes:
        n = self.u16()
        if n > max_len:
            raise DecodeError(self._what, f"field of {n} bytes exceeds limit {max_len}")
        return self.take(n)

    def var32(self, max_len: int) -> bytes:
        n = self.u32()
        if n > max_len:
            raise DecodeError(self._what, f"field of {n} bytes exceeds limit {max_len}")
        return self.take(n)

    def rest(self) -> bytes:
        return self.take(self.remaining)

    def finish(self) -> None:
        """Raise :class:`DecodeError` if unread bytes remain."""
        if self._pos != len(self._data):
            raise DecodeError(self._what, f"{self.remaining} trailing bytes")
