"""Strict msgpack parsing, and packing with a per-thread packer.

:func:`unpack` checks the input size before parsing, gives the parser a limit for
every container and string length (so a hostile length prefix is refused before
anything is allocated), admits only integer map keys without duplicates, and turns
every parser exception into a typed :class:`~protocol.errors.RemoteProtocolError`.

:func:`pack` reuses one :class:`msgpack.Packer` per thread.
"""

from __future__ import annotations

import threading
from typing import Final, NamedTuple, TypeAlias

import msgpack

from .errors import (
    FrameTooLarge,
    LimitExceeded,
    LocalProtocolError,
    MalformedFrame,
    NestingTooDeep,
    ProtocolVersionTooOld,
    RemoteProtocolError,
    UnknownProtocolVersion,
)
from .limits import MIN_PROTOCOL_VERSION, PROTOCOL_VERSION

__all__ = ["SUPPORTED_VERSIONS", "Buffer", "Limits", "pack", "unpack", "version_error"]

Buffer: TypeAlias = bytes | bytearray | memoryview
"""Decoders accept any of these (non-``bytes`` inputs are copied once)."""

_local: Final = threading.local()


def pack(obj: object) -> bytes:
    """msgpack bytes of *obj* (``bin`` for bytes, ``str`` for text), with a per-thread
    :class:`msgpack.Packer`: 3x cheaper than ``packb``, which builds a packer (and a
    256 KiB buffer) per call, and never shared between threads."""
    try:
        packer = _local.pack
    except AttributeError:
        packer = _local.pack = msgpack.Packer(use_bin_type=True, autoreset=True, buf_size=4096).pack
    out: bytes = packer(obj)
    return out


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
