"""The stored envelope: round trip, strictness, and nothing that names a sender."""

from __future__ import annotations

import msgpack
import pytest

from protocol import (
    Delivery,
    Envelope,
    InvalidFieldValue,
    InvalidValue,
    MalformedFrame,
    MissingField,
    UnknownProtocolVersion,
    limits,
)
from tests.vectors.gen_frames import ENVELOPE


def pack(obj: object) -> bytes:
    out: bytes = msgpack.packb(obj, use_bin_type=True)
    return out


def test_round_trip() -> None:
    wire = ENVELOPE.encode()
    assert Envelope.decode(wire) == ENVELOPE
    assert Envelope.decode(wire).encode() == wire


def test_fields_name_no_sender() -> None:
    names = {s.name for s in Envelope.SPECS}
    assert names == {"mailbox_id", "seq", "received_at_ms", "expires_at_ms", "dedup_hash", "blob"}


def test_delivery() -> None:
    assert ENVELOPE.delivery() == Delivery(
        mailbox_id=ENVELOPE.mailbox_id,
        seq=ENVELOPE.seq,
        received_at_ms=ENVELOPE.received_at_ms,
        blob=ENVELOPE.blob,
    )


def test_strictness() -> None:
    body = msgpack.unpackb(ENVELOPE.encode(), strict_map_key=False)[1]
    with pytest.raises(UnknownProtocolVersion):
        Envelope.decode(pack([2, body]))
    with pytest.raises(MalformedFrame):
        Envelope.decode(pack([1, body, 0]))
    with pytest.raises(MalformedFrame):
        Envelope.decode(ENVELOPE.encode() + b"\x00")
    del body[5]
    with pytest.raises(MissingField):
        Envelope.decode(pack([1, body]))
    with pytest.raises(InvalidFieldValue, match="expires before"):
        Envelope.decode(pack([1, {**body, 5: b"h" * 32, 4: 0}]))
    with pytest.raises(InvalidValue):
        Envelope(
            mailbox_id=ENVELOPE.mailbox_id,
            seq=0,
            received_at_ms=0,
            expires_at_ms=0,
            dedup_hash=b"h" * 32,
            blob=b"x",
        )


def test_largest_envelope_fits() -> None:
    env = Envelope(
        mailbox_id=ENVELOPE.mailbox_id,
        seq=limits.MAX_SEQ,
        received_at_ms=limits.MAX_TIME_MS,
        expires_at_ms=limits.MAX_TIME_MS,
        dedup_hash=b"h" * 32,
        blob=b"x" * limits.MAX_BLOB_SIZE,
    )
    assert len(env.encode()) <= limits.MAX_ENVELOPE_SIZE
    assert Envelope.decode(env.encode()) == env
