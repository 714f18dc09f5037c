"""Hypothesis: every frame type, inner message kind and the envelope round-trip
exactly, and their encoding is canonical (decode then encode gives the same bytes)."""

from __future__ import annotations

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from protocol import Envelope, Frame, InnerMessage, decode_frame, decode_inner
from tests.unit.protocol.strategies import (
    FRAME_CLASSES,
    INNER_CLASSES,
    envelopes,
    frames,
    record_strategy,
)


@pytest.mark.parametrize("cls", FRAME_CLASSES, ids=lambda c: c.__name__)
@settings(max_examples=25, deadline=None)
@given(data=st.data())
def test_every_frame_type_round_trips(cls: type[Frame], data: st.DataObject) -> None:
    frame = data.draw(record_strategy(cls))
    wire = frame.encode()
    decoded = decode_frame(wire)
    assert decoded == frame
    assert type(decoded) is cls
    assert decoded.encode() == wire  # canonical
    assert cls.decode(wire) == frame
    assert hash(decoded) == hash(frame)
    repr(decoded)


@settings(max_examples=300, deadline=None)
@given(frames)
def test_any_frame_round_trips_through_the_base_class(frame: Frame) -> None:
    assert Frame.decode(frame.encode()) == frame


@pytest.mark.parametrize("cls", INNER_CLASSES, ids=lambda c: c.__name__)
@settings(max_examples=25, deadline=None)
@given(data=st.data())
def test_every_inner_kind_round_trips(cls: type[InnerMessage], data: st.DataObject) -> None:
    msg = data.draw(record_strategy(cls))
    wire = msg.encode()
    decoded = decode_inner(wire)
    assert decoded == msg
    assert type(decoded) is cls
    assert decoded.encode() == wire
    assert cls.decode(wire) == msg


@settings(max_examples=100, deadline=None)
@given(envelopes)
def test_envelope_round_trips(env: Envelope) -> None:
    wire = env.encode()
    assert Envelope.decode(wire) == env
    assert Envelope.decode(wire).encode() == wire
    assert env.delivery().blob == env.blob
