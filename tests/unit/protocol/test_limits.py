"""The limits are consistent: every frame at its per-field maxima fits MAX_FRAME_SIZE
and decodes, and the parser limits admit every legitimate value."""

from __future__ import annotations

from typing import Any

import pytest

from protocol import FRAME_TYPES, INNER_KINDS, Ack, Envelope, ErrorCode, Frame, limits
from protocol._wire import Bool, Bytes, Code, EnumKind, Kind, Pair, Record, Str, TupleOf, UInt
from protocol.frames._base import FRAME_LIMITS
from protocol.inner import INNER_LIMITS


def largest(kind: Kind) -> Any:
    """The largest encoding of a value of this kind."""
    if isinstance(kind, UInt):
        return kind.hi
    if isinstance(kind, Bool):
        return True
    if isinstance(kind, Bytes):
        return b"\xff" * kind.hi
    if isinstance(kind, Str):
        pattern = kind.pattern.pattern if kind.pattern is not None else ""
        if pattern.startswith("https://") or pattern.startswith("(wss|https)"):
            return "https://" + "a" * (kind.hi - len("https://"))
        if pattern.startswith("/"):
            return "/" + "a" * (kind.hi - 1)
        return "a" * kind.hi
    if isinstance(kind, EnumKind):
        return max(kind.enum)
    if isinstance(kind, Code):
        return ErrorCode.UNAVAILABLE
    if isinstance(kind, TupleOf):
        return (largest(kind.item),) * kind.hi
    if isinstance(kind, Pair):
        return (largest(kind.first), largest(kind.second))
    raise AssertionError(kind)


def maximal(cls: type[Frame]) -> Frame:
    if cls is Ack:
        top = limits.MAX_SEQ
        seqs = tuple(range(top - limits.MAX_ACK_SEQS + 1, top + 1))
        return Ack(
            request_id=limits.MAX_REQUEST_ID, mailbox_id=b"m" * 16, up_to_seq=top - 5000, seqs=seqs
        )
    return cls(**{s.name: largest(s.kind) for s in cls.SPECS})


@pytest.mark.parametrize("cls", list(FRAME_TYPES.values()), ids=lambda c: c.__name__)
def test_every_frame_at_its_maxima_fits_and_decodes(cls: type[Frame]) -> None:
    frame = maximal(cls)
    wire = frame.encode()
    assert len(wire) <= limits.MAX_FRAME_SIZE
    assert type(frame).decode(wire) == frame


def test_the_largest_frames_use_most_of_the_budget() -> None:
    sizes = {cls.__name__: len(maximal(cls).encode()) for cls in FRAME_TYPES.values()}
    biggest = max(sizes.values())
    # The budget is not wildly oversized either: the largest frame uses over half of it.
    assert limits.MAX_FRAME_SIZE // 2 < biggest <= limits.MAX_FRAME_SIZE, sizes


def _kinds(kind: Kind) -> list[Kind]:
    if isinstance(kind, TupleOf):
        return [kind, *_kinds(kind.item)]
    if isinstance(kind, Pair):
        return [kind, *_kinds(kind.first), *_kinds(kind.second)]
    return [kind]


@pytest.mark.parametrize(
    ("classes", "parser"),
    [
        (list(FRAME_TYPES.values()), FRAME_LIMITS),
        (list(INNER_KINDS.values()), INNER_LIMITS),
    ],
    ids=["frames", "inner"],
)
def test_parser_limits_admit_every_field(classes: list[type[Record]], parser: Any) -> None:
    for cls in classes:
        assert len(cls.SPECS) <= parser.max_map_len
        for spec in cls.SPECS:
            for kind in _kinds(spec.kind):
                if isinstance(kind, Bytes):
                    assert kind.hi <= parser.max_bin_len, (cls, spec.name)
                elif isinstance(kind, Str):
                    assert kind.hi <= parser.max_str_len, (cls, spec.name)
                elif isinstance(kind, TupleOf):
                    assert kind.hi <= parser.max_array_len, (cls, spec.name)


def test_field_keys_fit_one_byte_and_are_unique() -> None:
    classes: list[type[Record]] = [*FRAME_TYPES.values(), *INNER_KINDS.values(), Envelope]
    for cls in classes:
        keys = [s.key for s in cls.SPECS if s.key is not None]
        assert len(keys) == len(set(keys))
        assert all(0 < k < 128 for k in keys)


def test_limit_relationships() -> None:
    assert limits.MAX_EPHEMERAL_BLOB_SIZE < limits.MAX_BLOB_SIZE
    assert limits.MAX_INNER_MESSAGE_SIZE < limits.MAX_BLOB_SIZE
    assert limits.MAX_EPHEMERAL_RECIPIENTS <= limits.MAX_RECIPIENTS
    assert limits.DEFAULT_TTL_MS <= limits.MAX_TTL_MS
    assert limits.MIN_PROTOCOL_VERSION <= limits.PROTOCOL_VERSION
    assert limits.MAX_ENVELOPE_SIZE > limits.MAX_BLOB_SIZE
    for name in limits.__all__:
        value = getattr(limits, name)
        assert isinstance(value, (int, tuple)) and value, name
