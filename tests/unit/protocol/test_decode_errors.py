"""Every typed decode error, and that hostile sizes are refused before being read."""

from __future__ import annotations

import time
from typing import Any

import msgpack
import pytest

import protocol._msgpack as msgpack_module
from protocol import (
    Auth,
    Delivery,
    ErrorCode,
    FrameTooLarge,
    InvalidFieldValue,
    LimitExceeded,
    MalformedFrame,
    MissingField,
    NestingTooDeep,
    Ping,
    ProtocolVersionTooOld,
    RemoteProtocolError,
    Send,
    Subscribe,
    UnknownFrameType,
    UnknownProtocolVersion,
    UnsupportedProtocolVersion,
    WrongFieldType,
    decode_frame,
    limits,
)
from protocol._wire import SUPPORTED_VERSIONS, version_error
from tests.vectors.gen_frames import ACCOUNT, BLOB, CAPABILITY, CLIENT_MSG_ID, MAILBOX, SIGNATURE


def pack(obj: object) -> bytes:
    out: bytes = msgpack.packb(obj, use_bin_type=True)
    return out


def send_body(**changes: object) -> dict[int, Any]:
    body: dict[int, Any] = {1: CLIENT_MSG_ID, 2: BLOB, 3: [[MAILBOX, CAPABILITY]]}
    body.update({int(k[1:]): v for k, v in changes.items()})
    return body


def send_wire(**changes: object) -> bytes:
    return pack([1, Send.TYPE, 7, send_body(**changes)])


def test_reference_send_decodes() -> None:
    assert isinstance(decode_frame(send_wire()), Send)


# --- size before parsing ---------------------------------------------------------------


def test_oversize_is_rejected_before_parsing(monkeypatch: pytest.MonkeyPatch) -> None:
    def must_not_parse(*args: object, **kwargs: object) -> object:
        raise AssertionError("the parser was called on an oversize frame")

    monkeypatch.setattr(msgpack, "unpackb", must_not_parse)
    data = b"\x00" * (limits.MAX_FRAME_SIZE + 1)
    with pytest.raises(FrameTooLarge) as info:
        decode_frame(data)
    assert (info.value.size, info.value.maximum) == (
        limits.MAX_FRAME_SIZE + 1,
        limits.MAX_FRAME_SIZE,
    )
    assert info.value.code is ErrorCode.FRAME_TOO_LARGE


def test_frame_of_exactly_the_maximum_size_is_parsed() -> None:
    # A valid Ping padded with unknown fields to exactly MAX_FRAME_SIZE is accepted;
    # one byte more is refused.
    big = b"x" * limits.MAX_FRAME_BIN_LEN

    def frame(n: int) -> bytes:
        return pack([1, Ping.TYPE, 1, {100: big, 101: big, 102: big, 103: b"y" * n}])

    n = next(n for n in range(limits.MAX_FRAME_BIN_LEN) if len(frame(n)) == limits.MAX_FRAME_SIZE)
    assert decode_frame(frame(n)) == Ping(request_id=1)
    with pytest.raises(FrameTooLarge):
        decode_frame(frame(n + 1))


@pytest.mark.parametrize(
    ("header", "what"),
    [
        (b"\xc6\x40\x00\x00\x00", "bin32 of 1 GiB"),
        (b"\xdb\x40\x00\x00\x00", "str32 of 1 GiB"),
        (b"\xdd\x40\x00\x00\x00", "array32 of 2**30 items"),
        (b"\xdf\x40\x00\x00\x00", "map32 of 2**30 pairs"),
        (b"\xc5\xff\xff", "bin16 of 64 KiB - 1 in a tiny frame"),
    ],
)
def test_huge_length_prefixes_are_refused_without_allocation(header: bytes, what: str) -> None:
    data = b"\x94\x01\x06\x01\x81\x64" + header + b"\x00" * 8
    t0 = time.perf_counter()
    with pytest.raises((LimitExceeded, MalformedFrame)):
        decode_frame(data)
    assert time.perf_counter() - t0 < 0.05, what


def test_container_limits_are_given_to_the_parser() -> None:
    # 2001 recipients: refused by the parser's array limit, not after building them.
    too_many = pack([1, Send.TYPE, 7, send_body(k3=[[MAILBOX, CAPABILITY]] * 2001)])
    with pytest.raises(LimitExceeded, match="max_array_len"):
        decode_frame(too_many)
    # A string longer than any string field: refused by the parser.
    with pytest.raises(LimitExceeded, match="max_str_len"):
        decode_frame(pack([1, Ping.TYPE, 1, {100: "x" * (limits.MAX_FRAME_STR_LEN + 1)}]))
    with pytest.raises(LimitExceeded, match="max_map_len"):
        decode_frame(pack([1, Ping.TYPE, 1, {i: 0 for i in range(limits.MAX_MAP_LEN + 1)}]))


def test_per_field_count_limits() -> None:
    ids = [bytes([i % 256, i // 256]) * 8 for i in range(limits.MAX_MAILBOXES_PER_SUBSCRIBE + 1)]
    with pytest.raises(LimitExceeded) as info:
        decode_frame(pack([1, Subscribe.TYPE, 3, {1: ids}]))
    assert (info.value.what, info.value.field) == ("Subscribe", "mailbox_ids")
    assert info.value.code is ErrorCode.LIMIT_EXCEEDED
    assert info.value.request_id == 3
    with pytest.raises(LimitExceeded):
        decode_frame(send_wire(k2=b"x" * (limits.MAX_BLOB_SIZE + 1)))


# --- parse errors ------------------------------------------------------------------------


def test_truncated_at_every_length() -> None:
    data = send_wire()
    for n in range(len(data)):
        with pytest.raises(MalformedFrame):
            decode_frame(data[:n])


def test_trailing_data() -> None:
    with pytest.raises(MalformedFrame, match="trailing"):
        decode_frame(send_wire() + b"\xc0")
    with pytest.raises(MalformedFrame, match="trailing"):
        decode_frame(send_wire() + send_wire())


@pytest.mark.parametrize("depth", [1100, 5000, 100_000])
def test_deep_nesting_is_rejected(depth: int) -> None:
    # Deep arrays inside an unknown field of an otherwise valid Ping.
    data = b"\x94\x01\x06\x01\x81\x64" + b"\x91" * depth + b"\x00"
    with pytest.raises(NestingTooDeep) as info:
        decode_frame(data)
    assert isinstance(info.value, MalformedFrame)
    assert info.value.code is ErrorCode.MALFORMED_FRAME


def test_deep_maps_are_rejected() -> None:
    data = b"\x94\x01\x06\x01" + b"\x81\x01" * 2000 + b"\x00"
    with pytest.raises(NestingTooDeep):
        decode_frame(data)


def test_nested_structure_where_a_flat_value_is_expected() -> None:
    with pytest.raises(WrongFieldType, match="expected bytes, got tuple"):
        decode_frame(send_wire(k1=[[CLIENT_MSG_ID]]))
    with pytest.raises(WrongFieldType, match="expected int, got dict"):
        decode_frame(pack([1, Delivery.TYPE, 0, {1: MAILBOX, 2: {1: 1}, 3: 0, 4: BLOB}]))


@pytest.mark.parametrize(
    ("data", "reason"),
    [
        (b"\xc1", "reserved byte 0xc1"),
        (b"\xd6\xff\x00\x00\x00\x00", "ext type (timestamp)"),
        (pack({1: 2}), "a map, not an array"),
        (pack([]), "an empty array"),
        (pack([1, 6, 1]), "three elements"),
        (pack([1, 6, 1, {}, 0]), "five elements"),
        (pack([1, 6, 1, [0]]), "body is not a map"),
        (pack([1, 6, 1, {"a": 1}]), "str key"),
        (pack([1, 6, 1, {1.0: 1}]), "float key equal to a known key"),
        (pack([1, 6, 1, {True: 1}]), "bool key equal to a known key"),
        (b"\x94\x01\x06\x01\x82\x01\x00\x01\x01", "duplicate key"),
        (pack([1, "6", 1, {}]), "type is a string"),
        (pack(["1", 6, 1, {}]), "version is a string"),
        (pack([1, 6, 1, {3: b"\xff"}]).replace(b"\xc4\x01\xff", b"\xa1\xff"), "bad UTF-8"),
    ],
)
def test_malformed(data: bytes, reason: str) -> None:
    with pytest.raises(MalformedFrame):
        decode_frame(data)


# --- header errors -----------------------------------------------------------------------


def test_unknown_frame_type() -> None:
    for code in (0, 16, 99, 127, 128, 1000, -1):
        with pytest.raises(UnknownFrameType) as info:
            decode_frame(pack([1, code, 1, {}]))
        assert info.value.frame_type == code
        assert info.value.code is ErrorCode.UNKNOWN_TYPE


def test_unsupported_versions_are_distinguished() -> None:
    for version in (0, 2, 255, -1, 2**40):
        with pytest.raises(UnknownProtocolVersion) as info:
            decode_frame(pack([version, Ping.TYPE, 1, {}]))
        assert info.value.got == version
        assert info.value.supported == SUPPORTED_VERSIONS == (1,)
        assert info.value.code is ErrorCode.UNSUPPORTED_VERSION
    # The version is read before the shape: a v2 frame may look like anything else.
    with pytest.raises(UnknownProtocolVersion):
        decode_frame(pack([2, "anything", None]))
    with pytest.raises(MalformedFrame):
        decode_frame(pack([True, Ping.TYPE, 1, {}]))


def test_too_old_versus_unknown(monkeypatch: pytest.MonkeyPatch) -> None:
    # No version is too old yet (v1 is the first); check the classification itself.
    monkeypatch.setattr(msgpack_module, "MIN_PROTOCOL_VERSION", 3)
    assert isinstance(version_error("frame", 2), ProtocolVersionTooOld)
    assert isinstance(version_error("frame", 0), UnknownProtocolVersion)
    assert isinstance(version_error("frame", 9), UnknownProtocolVersion)
    for cls in (ProtocolVersionTooOld, UnknownProtocolVersion):
        assert issubclass(cls, UnsupportedProtocolVersion)


# --- field errors ------------------------------------------------------------------------


def test_missing_required_field() -> None:
    body = send_body()
    del body[2]
    with pytest.raises(MissingField) as info:
        decode_frame(pack([1, Send.TYPE, 7, body]))
    assert (info.value.what, info.value.field, info.value.request_id) == ("Send", "blob", 7)


@pytest.mark.parametrize(
    ("changes", "field"),
    [
        ({"k1": "e" * 16}, "client_msg_id"),  # str is not bytes
        ({"k1": 5}, "client_msg_id"),
        ({"k2": "blob"}, "blob"),
        ({"k3": [(MAILBOX, CAPABILITY.hex())]}, "recipients"),
        ({"k3": {1: 2}}, "recipients"),
        ({"k4": True}, "ttl_ms"),  # bool is not int
        ({"k4": 1.0}, "ttl_ms"),  # float is not int
        ({"k4": "60000"}, "ttl_ms"),
        ({"k4": None}, "ttl_ms"),  # nil is not "absent"
    ],
)
def test_wrong_field_types(changes: dict[str, object], field: str) -> None:
    with pytest.raises(WrongFieldType) as info:
        decode_frame(send_wire(**changes))
    assert info.value.field == field
    assert info.value.code is ErrorCode.WRONG_FIELD_TYPE


def test_request_id_types() -> None:
    with pytest.raises(WrongFieldType):
        decode_frame(pack([1, Ping.TYPE, True, {}]))
    with pytest.raises(WrongFieldType):
        decode_frame(pack([1, Ping.TYPE, 1.0, {}]))
    with pytest.raises(InvalidFieldValue):
        decode_frame(pack([1, Ping.TYPE, -1, {}]))
    with pytest.raises(InvalidFieldValue):
        decode_frame(pack([1, Delivery.TYPE, 1, {1: MAILBOX, 2: 1, 3: 0, 4: BLOB}]))


@pytest.mark.parametrize(
    ("changes", "field"),
    [
        ({"k1": CLIENT_MSG_ID[:15]}, "client_msg_id"),
        ({"k1": CLIENT_MSG_ID + b"\x00"}, "client_msg_id"),
        ({"k2": b""}, "blob"),
        ({"k3": []}, "recipients"),
        ({"k3": [[MAILBOX, CAPABILITY, b""]]}, "recipients"),
        ({"k3": [[MAILBOX[:8], CAPABILITY]]}, "recipients"),
        ({"k4": 0}, "ttl_ms"),
        ({"k4": -5}, "ttl_ms"),
    ],
)
def test_invalid_field_values(changes: dict[str, object], field: str) -> None:
    with pytest.raises(InvalidFieldValue) as info:
        decode_frame(send_wire(**changes))
    assert info.value.field == field
    assert info.value.code is ErrorCode.INVALID_FIELD


def test_unknown_fields_are_ignored_but_must_be_well_formed() -> None:
    frame = decode_frame(pack([1, Auth.TYPE, 2, {1: ACCOUNT, 2: SIGNATURE, 50: {1: [1, 2]}}]))
    assert frame == Auth(request_id=2, account_id=ACCOUNT, signature=SIGNATURE)
    with pytest.raises(MalformedFrame):  # keys inside unknown maps are still ints only
        decode_frame(pack([1, Auth.TYPE, 2, {1: ACCOUNT, 2: SIGNATURE, 50: {"k": 1}}]))


def test_every_decode_error_is_remote_and_has_a_code() -> None:
    for cls in (
        FrameTooLarge,
        MalformedFrame,
        NestingTooDeep,
        UnknownFrameType,
        UnsupportedProtocolVersion,
        MissingField,
        WrongFieldType,
        InvalidFieldValue,
        LimitExceeded,
    ):
        assert issubclass(cls, RemoteProtocolError)
        assert isinstance(cls.code, ErrorCode)
