"""Check frames, the envelope and the signed payloads against docs/vectors/frames.json,
in both directions: the fields encode to exactly the recorded bytes, and the recorded
bytes decode to exactly the recorded fields. Rejected inputs raise the recorded error
class and wire code; tolerated inputs decode with their unknown fields ignored."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import pytest

import protocol.errors as errors
from protocol import (
    FRAME_TYPES,
    INNER_KINDS,
    Envelope,
    RemoteProtocolError,
    challenge_payload,
    decode_frame,
    decode_inner,
    dedup_input,
    username_binding_payload,
)
from tests.vectors import gen_frames, gen_inner

VECTORS: dict[str, Any] = json.loads(
    (Path(__file__).resolve().parents[2] / "docs" / "vectors" / gen_frames.FILENAME).read_text()
)
FRAMES: list[dict[str, Any]] = VECTORS["frames"]


def h(x: str) -> bytes:
    return bytes.fromhex(x)


def test_regeneration_reproduces_every_byte() -> None:
    assert gen_frames.generate() == VECTORS


def test_every_frame_type_has_a_vector() -> None:
    assert sorted(v["type"] for v in FRAMES) == sorted(FRAME_TYPES)


@pytest.mark.parametrize("vector", FRAMES, ids=[v["frame"] for v in FRAMES])
def test_fields_encode_to_the_recorded_bytes(vector: dict[str, Any]) -> None:
    cls = FRAME_TYPES[vector["type"]]
    assert cls.__name__ == vector["frame"]
    frame = cls(**gen_frames.fields_from_json(cls, vector["fields"]))
    assert frame.encode().hex() == vector["hex"]


@pytest.mark.parametrize("vector", FRAMES, ids=[v["frame"] for v in FRAMES])
def test_recorded_bytes_decode_to_the_recorded_fields(vector: dict[str, Any]) -> None:
    frame = decode_frame(h(vector["hex"]))
    assert type(frame).__name__ == vector["frame"]
    assert vector["type"] == frame.TYPE
    assert frame.DIRECTION.name == vector["direction"]
    assert gen_frames.fields_to_json(frame) == vector["fields"]


def test_envelope_both_directions() -> None:
    vector = VECTORS["envelope"]
    env = Envelope(**gen_frames.fields_from_json(Envelope, vector["fields"]))
    assert env.encode().hex() == vector["hex"]
    assert gen_frames.fields_to_json(Envelope.decode(h(vector["hex"]))) == vector["fields"]


def test_payload_layouts() -> None:
    p = VECTORS["payloads"]
    c = p["challenge"]
    assert (
        challenge_payload(h(c["relay_id"]), h(c["nonce"]), c["time_ms"], h(c["account_id"])).hex()
        == c["hex"]
    )
    # The documented layout, spelled out: 01 || len || relay_id || nonce || u64 || account.
    relay_id = h(c["relay_id"])
    assert h(c["hex"]) == (
        b"\x01"
        + bytes([len(relay_id)])
        + relay_id
        + h(c["nonce"])
        + c["time_ms"].to_bytes(8, "big")
        + h(c["account_id"])
    )
    u = p["username_binding"]
    assert username_binding_payload(u["username"], h(u["account_id"])).hex() == u["hex"]
    assert h(u["hex"]) == (
        b"\x01" + bytes([len(u["username"])]) + u["username"].encode() + h(u["account_id"])
    )
    d = p["dedup_input"]
    assert dedup_input(h(d["mailbox_id"]), h(d["client_msg_id"])).hex() == d["hex"]


@pytest.mark.parametrize(
    "vector", VECTORS["rejected"], ids=[v["name"] for v in VECTORS["rejected"]]
)
def test_rejected_inputs(vector: dict[str, Any]) -> None:
    expected = getattr(errors, vector["error"])
    with pytest.raises(RemoteProtocolError) as info:
        decode_frame(h(vector["hex"]))
    assert type(info.value) is expected
    assert int(info.value.code) == vector["code"]


@pytest.mark.parametrize(
    "vector", VECTORS["tolerated"], ids=[v["name"] for v in VECTORS["tolerated"]]
)
def test_unknown_fields_are_ignored(vector: dict[str, Any]) -> None:
    frame = decode_frame(h(vector["hex"]))
    assert type(frame).__name__ == vector["frame"]
    assert gen_frames.fields_to_json(frame) == vector["fields"]


# --- inner messages (docs/vectors/inner.json) -----------------------------------------

INNER: dict[str, Any] = json.loads(
    (Path(__file__).resolve().parents[2] / "docs" / "vectors" / gen_inner.FILENAME).read_text()
)


def test_inner_regeneration_reproduces_every_byte() -> None:
    assert gen_inner.generate() == INNER


def test_every_inner_kind_has_a_vector() -> None:
    assert sorted({m["kind"] for m in INNER["messages"]}) == sorted(INNER_KINDS)


@pytest.mark.parametrize(
    "vector", INNER["messages"], ids=[m["kind_name"] for m in INNER["messages"]]
)
def test_inner_both_directions(vector: dict[str, Any]) -> None:
    cls = INNER_KINDS[vector["kind"]]
    msg = cls(**gen_frames.fields_from_json(cls, vector["fields"]))
    assert msg.encode().hex() == vector["hex"]
    decoded = decode_inner(h(vector["hex"]))
    assert type(decoded) is cls
    assert gen_frames.fields_to_json(decoded) == vector["fields"]


@pytest.mark.parametrize("vector", INNER["rejected"], ids=[v["name"] for v in INNER["rejected"]])
def test_inner_rejected_inputs(vector: dict[str, Any]) -> None:
    with pytest.raises(RemoteProtocolError) as info:
        decode_inner(h(vector["hex"]))
    assert type(info.value) is getattr(errors, vector["error"])
    assert int(info.value.code) == vector["code"]
