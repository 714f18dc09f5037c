"""Fuzz the decoders: random bytes, mutated valid frames, and well-formed msgpack with
random contents. A decoder either succeeds or raises a typed RemoteProtocolError;
never anything else (no KeyError, TypeError, RecursionError...). Bounded in time:
each test has a fixed example budget and no per-example deadline."""

from __future__ import annotations

from collections.abc import Callable

import msgpack
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from protocol import (
    FRAME_TYPES,
    Envelope,
    Frame,
    InnerMessage,
    RemoteProtocolError,
    decode_frame,
    decode_inner,
)
from tests.unit.protocol.strategies import envelopes, frames, inner_messages

FUZZ = settings(max_examples=1000, deadline=None, suppress_health_check=[HealthCheck.too_slow])

Decoder = Callable[[bytes], object]
DECODERS: dict[str, Decoder] = {
    "frame": decode_frame,
    "inner": decode_inner,
    "envelope": Envelope.decode,
}


def only_typed_errors(decode: Decoder, data: bytes) -> object | None:
    """Decode; a RemoteProtocolError is fine, anything else fails the test."""
    try:
        result = decode(data)
    except RemoteProtocolError as exc:
        assert isinstance(exc.code, int)
        str(exc)  # messages always format
        return None
    # Whatever decodes must re-encode to something that decodes to the same value.
    assert isinstance(result, (Frame, InnerMessage, Envelope))
    assert decode(result.encode()) == result
    return result


# --- random bytes -----------------------------------------------------------------------


@FUZZ
@given(st.binary(max_size=512), st.sampled_from(sorted(DECODERS)))
def test_random_bytes(data: bytes, which: str) -> None:
    only_typed_errors(DECODERS[which], data)


@FUZZ
@given(st.sampled_from(sorted(FRAME_TYPES)), st.binary(max_size=300))
def test_random_bytes_after_a_valid_header(frame_type: int, tail: bytes) -> None:
    # Array of 4, version 1, a real type, request id 1, then anything.
    only_typed_errors(decode_frame, bytes([0x94, 0x01, frame_type, 0x01]) + tail)


# --- mutations of valid encodings -------------------------------------------------------


@st.composite
def mutated(draw: st.DrawFn, valid: st.SearchStrategy[bytes]) -> bytes:
    data = bytearray(draw(valid))
    for _ in range(draw(st.integers(1, 4))):
        op = draw(st.sampled_from(["flip", "set", "truncate", "extend", "insert", "delete"]))
        if op == "flip" and data:
            i = draw(st.integers(0, len(data) - 1))
            data[i] ^= 1 << draw(st.integers(0, 7))
        elif op == "set" and data:
            i = draw(st.integers(0, len(data) - 1))
            data[i] = draw(st.sampled_from([0x00, 0x7F, 0x80, 0xC0, 0xC1, 0xC3, 0xCF, 0xDD, 0xFF]))
        elif op == "truncate" and data:
            del data[draw(st.integers(0, len(data) - 1)) :]
        elif op == "extend":
            data += draw(st.binary(min_size=1, max_size=16))
        elif op == "insert":
            i = draw(st.integers(0, len(data)))
            data[i:i] = draw(st.binary(min_size=1, max_size=8))
        elif op == "delete" and data:
            i = draw(st.integers(0, len(data) - 1))
            del data[i : i + draw(st.integers(1, 8))]
    return bytes(data)


@FUZZ
@given(mutated(frames.map(lambda f: f.encode())))
def test_mutated_frames(data: bytes) -> None:
    only_typed_errors(decode_frame, data)


@FUZZ
@given(mutated(inner_messages.map(lambda m: m.encode())))
def test_mutated_inner_messages(data: bytes) -> None:
    only_typed_errors(decode_inner, data)


@settings(max_examples=500, deadline=None)
@given(mutated(envelopes.map(lambda e: e.encode())))
def test_mutated_envelopes(data: bytes) -> None:
    only_typed_errors(Envelope.decode, data)


# --- well-formed msgpack, random contents ----------------------------------------------

scalars = (
    st.none()
    | st.booleans()
    | st.integers(-(2**63), 2**64 - 1)
    | st.floats(allow_nan=True)
    | st.binary(max_size=40)
    | st.text(max_size=12)
)
values = st.recursive(
    scalars,
    lambda children: (
        st.lists(children, max_size=3)
        | st.dictionaries(st.integers(-2, 20) | st.text(max_size=2), children, max_size=3)
    ),
    max_leaves=6,
)
STRUCTURED = settings(max_examples=600, deadline=None, suppress_health_check=[HealthCheck.too_slow])


def _pack(obj: object) -> bytes | None:
    try:
        return msgpack.packb(obj, use_bin_type=True)  # type: ignore[no-any-return]
    except (TypeError, ValueError, OverflowError):
        return None  # e.g. a value msgpack cannot represent


@st.composite
def tampered_body(draw: st.DrawFn, body: dict[int, object]) -> dict[int, object]:
    """A valid body with one field replaced, removed, or an unknown one added."""
    body = dict(body)
    op = draw(st.sampled_from(["replace", "remove", "add"]))
    if op == "add" or not body:
        body[draw(st.integers(0, 127))] = draw(values)
    elif op == "replace":
        body[draw(st.sampled_from(sorted(body)))] = draw(values)
    else:
        del body[draw(st.sampled_from(sorted(body)))]
    return body


@STRUCTURED
@given(st.data())
def test_tampered_frame_fields(data: st.DataObject) -> None:
    frame = data.draw(frames)
    body = data.draw(tampered_body(frame._body()))
    rid = data.draw(st.just(getattr(frame, "request_id", 0)) | values)
    version = data.draw(st.just(1) | values)
    packed = _pack([version, frame.TYPE, rid, body])
    if packed is not None:
        only_typed_errors(decode_frame, packed)


@STRUCTURED
@given(st.data())
def test_tampered_inner_fields(data: st.DataObject) -> None:
    msg = data.draw(inner_messages)
    body = data.draw(tampered_body(msg._body()))
    kind = data.draw(st.just(msg.KIND) | st.integers(-3, 130))
    packed = _pack([1, kind, body])
    if packed is not None:
        only_typed_errors(decode_inner, packed)


@STRUCTURED
@given(st.sampled_from(sorted(FRAME_TYPES)) | st.integers(-3, 130), values, values)
def test_random_frame_contents(ftype: int, rid: object, body: object) -> None:
    packed = _pack([1, ftype, rid, body])
    if packed is not None:
        only_typed_errors(decode_frame, packed)
