"""Frames: round trip of every type, class-specific decode, direction, reprs, local
validation, canonical encoding, and the request id carried by decode errors."""

from __future__ import annotations

import dataclasses
import threading
from typing import Any

import msgpack
import pytest

from protocol import (
    FRAME_TYPES,
    Ack,
    Auth,
    Bundle,
    Connect,
    Delivery,
    Direction,
    Error,
    ErrorCode,
    Frame,
    InvalidFieldValue,
    InvalidValue,
    LocalProtocolError,
    MissingField,
    Ok,
    Ping,
    Register,
    Send,
    Sent,
    Subscribe,
    UnexpectedFrame,
    UploadPrekeys,
    Welcome,
    WrongFieldType,
    decode_frame,
)
from tests.vectors.gen_frames import (
    ACCOUNT,
    BLOB,
    CAPABILITY,
    CLIENT_MSG_ID,
    MAILBOX,
    SIGNATURE,
    frame_examples,
)

EXAMPLES = frame_examples()


def unpackb(data: bytes) -> Any:
    return msgpack.unpackb(data, strict_map_key=False)


def _send(**changes: object) -> Send:
    fields: dict[str, object] = {
        "request_id": 7,
        "client_msg_id": CLIENT_MSG_ID,
        "blob": BLOB,
        "recipients": ((MAILBOX, CAPABILITY),),
    }
    fields.update(changes)
    return Send(**fields)  # type: ignore[arg-type]


def test_registry_has_every_frame_once() -> None:
    assert len(FRAME_TYPES) == 40
    assert {type(f) for f in EXAMPLES} == set(FRAME_TYPES.values())
    for code, cls in FRAME_TYPES.items():
        assert code == cls.TYPE
        assert 0 < code < 128  # one-byte msgpack fixint


@pytest.mark.parametrize("frame", EXAMPLES, ids=lambda f: type(f).__name__)
def test_round_trip(frame: Frame) -> None:
    wire = frame.encode()
    decoded = decode_frame(wire)
    assert decoded == frame
    assert type(decoded) is type(frame)
    assert type(frame).decode(wire) == frame
    assert Frame.decode(wire) == frame
    assert decoded.encode() == wire


@pytest.mark.parametrize("frame", EXAMPLES, ids=lambda f: type(f).__name__)
def test_frames_are_frozen_slotted_and_keyword_only(frame: Frame) -> None:
    cls = type(frame)
    assert dataclasses.is_dataclass(cls)
    assert not hasattr(frame, "__dict__")
    params = cls.__dataclass_params__
    assert params.frozen
    name = dataclasses.fields(frame)[0].name
    with pytest.raises(dataclasses.FrozenInstanceError):
        setattr(frame, name, None)
    assert all(f.kw_only for f in dataclasses.fields(frame))
    hash(frame)


def test_wire_layout_is_version_type_request_id_body() -> None:
    wire = _send().encode()
    version, ftype, rid, body = unpackb(wire)
    assert (version, ftype, rid) == (1, Send.TYPE, 7)
    assert body == {1: CLIENT_MSG_ID, 2: BLOB, 3: [[MAILBOX, CAPABILITY]]}


def test_optional_fields_equal_to_default_are_omitted() -> None:
    body = unpackb(Ack(request_id=1, mailbox_id=MAILBOX, up_to_seq=3).encode())[3]
    assert body == {1: MAILBOX, 2: 3}
    body = unpackb(Welcome(request_id=1, account_id=ACCOUNT, server_time_ms=0).encode())[3]
    assert body == {1: ACCOUNT, 2: 0}


def test_unsolicited_frames_have_request_id_zero() -> None:
    delivery = Delivery(mailbox_id=MAILBOX, seq=1, received_at_ms=0, blob=b"x")
    assert unpackb(delivery.encode())[2] == 0
    assert not hasattr(delivery, "request_id")


def test_class_decode_rejects_another_type_with_its_request_id() -> None:
    with pytest.raises(UnexpectedFrame) as info:
        Send.decode(Ping(request_id=99).encode())
    assert info.value.got == "Ping"
    assert info.value.request_id == 99
    assert info.value.code is ErrorCode.UNEXPECTED_FRAME


def test_direction_filter() -> None:
    delivery = Delivery(mailbox_id=MAILBOX, seq=1, received_at_ms=0, blob=b"x").encode()
    with pytest.raises(UnexpectedFrame):
        decode_frame(delivery, direction=Direction.TO_RELAY)
    assert decode_frame(delivery, direction=Direction.TO_CLIENT)
    send = _send().encode()
    with pytest.raises(UnexpectedFrame) as info:
        decode_frame(send, direction=Direction.TO_CLIENT)
    assert info.value.request_id == 7
    assert decode_frame(send, direction=Direction.TO_RELAY)
    ping = Ping(request_id=1).encode()  # BOTH
    assert decode_frame(ping, direction=Direction.TO_RELAY)
    assert decode_frame(ping, direction=Direction.TO_CLIENT)


def test_directions_are_consistent_with_base_classes() -> None:
    for cls in FRAME_TYPES.values():
        assert isinstance(cls.DIRECTION, Direction)
    assert Send.DIRECTION is Direction.TO_RELAY
    assert Delivery.DIRECTION is Direction.TO_CLIENT
    assert Error.DIRECTION is Direction.BOTH


def test_decode_errors_carry_the_request_id() -> None:
    wire = msgpack.packb([1, Auth.TYPE, 31, {1: ACCOUNT}])
    with pytest.raises(MissingField) as info:
        decode_frame(wire)
    assert info.value.request_id == 31
    assert (info.value.what, info.value.field) == ("Auth", "signature")
    assert info.value.code is ErrorCode.MISSING_FIELD


def test_error_frame_keeps_unknown_codes_as_ints() -> None:
    wire = msgpack.packb([1, Error.TYPE, 0, {1: 777}])
    frame = decode_frame(wire)
    assert isinstance(frame, Error)
    assert frame.code == 777 and type(frame.code) is int
    known = decode_frame(msgpack.packb([1, Error.TYPE, 0, {1: 400}]))
    assert isinstance(known, Error)
    assert known.code is ErrorCode.RATE_LIMITED


def test_sent_rejections_decode_to_error_codes() -> None:
    frame = Sent.decode(Sent(request_id=1, rejected=((0, 301), (3, 999))).encode())
    assert frame.rejected == ((0, ErrorCode.WRONG_CAPABILITY), (3, 999))
    assert frame.rejected[0][1] is ErrorCode.WRONG_CAPABILITY


# --- local validation (caller misuse) ----------------------------------------------------


@pytest.mark.parametrize(
    ("changes", "field", "problem"),
    [
        ({"request_id": True}, "request_id", ErrorCode.WRONG_FIELD_TYPE),
        ({"request_id": 0}, "request_id", ErrorCode.INVALID_FIELD),
        ({"request_id": 2**32}, "request_id", ErrorCode.INVALID_FIELD),
        ({"client_msg_id": b"x" * 15}, "client_msg_id", ErrorCode.INVALID_FIELD),
        ({"client_msg_id": bytearray(16)}, "client_msg_id", ErrorCode.WRONG_FIELD_TYPE),
        ({"client_msg_id": "x" * 16}, "client_msg_id", ErrorCode.WRONG_FIELD_TYPE),
        ({"blob": b""}, "blob", ErrorCode.INVALID_FIELD),
        ({"blob": b"x" * (64 * 1024 + 1)}, "blob", ErrorCode.LIMIT_EXCEEDED),
        ({"recipients": ()}, "recipients", ErrorCode.INVALID_FIELD),
        ({"recipients": [(MAILBOX, CAPABILITY)]}, "recipients", ErrorCode.WRONG_FIELD_TYPE),
        ({"recipients": ((MAILBOX, CAPABILITY[:31]),)}, "recipients", ErrorCode.INVALID_FIELD),
        ({"recipients": ((MAILBOX,),)}, "recipients", ErrorCode.INVALID_FIELD),
        ({"recipients": ((MAILBOX, CAPABILITY),) * 2001}, "recipients", ErrorCode.LIMIT_EXCEEDED),
        ({"ttl_ms": 0}, "ttl_ms", ErrorCode.INVALID_FIELD),
        ({"ttl_ms": 31 * 24 * 3600 * 1000}, "ttl_ms", ErrorCode.LIMIT_EXCEEDED),
        ({"ttl_ms": 1.5}, "ttl_ms", ErrorCode.WRONG_FIELD_TYPE),
    ],
)
def test_constructor_rejects_bad_values(
    changes: dict[str, object], field: str, problem: ErrorCode
) -> None:
    with pytest.raises(InvalidValue) as info:
        _send(**changes)
    assert isinstance(info.value, LocalProtocolError)
    assert (info.value.what, info.value.field, info.value.problem) == ("Send", field, problem)


def test_recipient_error_names_the_bad_item() -> None:
    good = (MAILBOX, CAPABILITY)
    with pytest.raises(InvalidValue, match="item 2"):
        _send(recipients=(good, good, (MAILBOX, b"short")))


def test_cross_field_invariants() -> None:
    with pytest.raises(InvalidValue, match="nothing to acknowledge"):
        Ack(request_id=1, mailbox_id=MAILBOX)
    with pytest.raises(InvalidValue, match="strictly increasing"):
        Ack(request_id=1, mailbox_id=MAILBOX, up_to_seq=5, seqs=(7, 6))
    with pytest.raises(InvalidValue, match="strictly increasing"):
        Ack(request_id=1, mailbox_id=MAILBOX, up_to_seq=5, seqs=(5,))
    assert Ack(request_id=1, mailbox_id=MAILBOX, seqs=(1, 9))
    with pytest.raises(InvalidValue, match="nothing to upload"):
        UploadPrekeys(request_id=1)
    with pytest.raises(InvalidValue, match="go together"):
        Bundle(
            request_id=1,
            account_id=ACCOUNT,
            identity_key=b"k",
            signed_prekey=b"s",
            kem_prekey=b"q",
            contact_mailbox_id=MAILBOX,
        )


def test_cross_field_invariants_on_decode_blame_the_peer() -> None:
    wire = msgpack.packb([1, Ack.TYPE, 4, {1: MAILBOX, 2: 9, 3: [3]}])
    with pytest.raises(InvalidFieldValue) as info:
        decode_frame(wire)
    assert (info.value.field, info.value.request_id) == ("seqs", 4)


def test_bool_is_not_int_and_int_is_not_bool() -> None:
    with pytest.raises(WrongFieldType):
        decode_frame(msgpack.packb([1, Welcome.TYPE, 1, {1: ACCOUNT, 2: 0, 3: 1}]))
    with pytest.raises(WrongFieldType):
        decode_frame(msgpack.packb([1, Welcome.TYPE, 1, {1: ACCOUNT, 2: False}]))
    with pytest.raises(InvalidValue):
        Welcome(request_id=1, account_id=ACCOUNT, server_time_ms=0, new_account=1)  # type: ignore[arg-type]


def test_decode_rejects_non_bytes_as_caller_misuse() -> None:
    with pytest.raises(LocalProtocolError):
        decode_frame("not bytes")  # type: ignore[arg-type]
    assert decode_frame(bytearray(Ok(request_id=1).encode())) == Ok(request_id=1)
    assert decode_frame(memoryview(Ok(request_id=1).encode())) == Ok(request_id=1)


# --- reprs (pinned): ids in hex, long bytes as sizes, secrets redacted ------------------


def test_reprs_are_pinned_and_redact_secrets() -> None:
    assert repr(_send(ttl_ms=60_000)) == (
        "Send(request_id=7, client_msg_id=e0e7eef5fc030a11181f262d343b4249, "
        "blob=<200 bytes>, recipients=<redacted>, ttl_ms=60000)"
    )
    reg = Register(
        request_id=2,
        account_id=ACCOUNT,
        identity_key=b"\x01" * 129,
        signature=SIGNATURE,
        invite_code="SECRET-CODE",
    )
    assert "SECRET" not in repr(reg)
    assert repr(reg) == (
        "Register(request_id=2, account_id=a0a7aeb5bcc3cad1d8dfe6edf4fb0209, "
        "identity_key=<129 bytes>, signature=<64 bytes>, invite_code=<redacted>)"
    )
    assert repr(Error(code=ErrorCode.RATE_LIMITED, retry_after_ms=10)) == (
        "Error(request_id=0, code=ErrorCode.RATE_LIMITED, message=None, retry_after_ms=10)"
    )
    assert repr(Subscribe(request_id=1, mailbox_ids=(MAILBOX,))) == (
        "Subscribe(request_id=1, mailbox_ids=(10171e252c333a41484f565d646b7279,))"
    )
    assert repr(Connect(request_id=5)) == "Connect(request_id=5)"
    for frame in EXAMPLES:
        text = repr(frame)
        assert CAPABILITY.hex() not in text
        assert "PIGEON-1234" not in text


def test_encoding_from_many_threads_is_safe() -> None:
    frames = frame_examples()
    expected = [f.encode() for f in frames]
    errors: list[str] = []

    def work() -> None:
        for _ in range(200):
            for frame, wire in zip(frames, expected, strict=True):
                if frame.encode() != wire:
                    errors.append(type(frame).__name__)

    threads = [threading.Thread(target=work) for _ in range(4)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert errors == []
