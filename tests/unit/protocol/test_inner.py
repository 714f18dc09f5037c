"""Inner messages: round trip of every kind, strictness, reprs that hide plaintext."""

from __future__ import annotations

import msgpack
import pytest

from protocol import (
    INNER_KINDS,
    Delete,
    DeleteScope,
    File,
    FrameTooLarge,
    InnerMessage,
    InvalidFieldValue,
    InvalidValue,
    LocalProtocolError,
    MailboxAnnouncement,
    MissingField,
    Receipt,
    ReceiptKind,
    Text,
    Typing,
    UnexpectedFrame,
    UnknownMessageKind,
    UnknownProtocolVersion,
    WrongFieldType,
    decode_inner,
    limits,
)
from tests.vectors.gen_frames import CAPABILITY, MAILBOX
from tests.vectors.gen_inner import MSG_1, MSG_2, inner_examples

EXAMPLES = inner_examples()


def pack(obj: object) -> bytes:
    out: bytes = msgpack.packb(obj, use_bin_type=True)
    return out


def test_every_kind_has_an_example() -> None:
    assert {type(m) for m in EXAMPLES} == set(INNER_KINDS.values())
    assert sorted(INNER_KINDS) == list(range(1, 19))


@pytest.mark.parametrize("msg", EXAMPLES, ids=lambda m: type(m).__name__)
def test_round_trip(msg: InnerMessage) -> None:
    wire = msg.encode()
    assert decode_inner(wire) == msg
    assert type(msg).decode(wire) == msg
    assert InnerMessage.decode(wire) == msg
    assert decode_inner(wire).encode() == wire


def test_wire_layout() -> None:
    wire = Text(message_id=MSG_1, sent_at_ms=5, text="hi", reply_to=MSG_2).encode()
    assert msgpack.unpackb(wire, strict_map_key=False) == [
        1,
        1,
        {1: MSG_1, 2: 5, 3: "hi", 4: MSG_2},
    ]


def test_kind_specific_decode_rejects_other_kinds() -> None:
    with pytest.raises(UnexpectedFrame):
        Text.decode(Typing(message_id=MSG_1, sent_at_ms=0, active=True).encode())


def test_unknown_kind_and_version() -> None:
    with pytest.raises(UnknownMessageKind) as info:
        decode_inner(pack([1, 99, {1: MSG_1, 2: 0}]))
    assert info.value.kind == 99
    with pytest.raises(UnknownProtocolVersion):
        decode_inner(pack([2, 1, {1: MSG_1, 2: 0, 3: "x"}]))


def test_strict_fields() -> None:
    base = {1: MSG_1, 2: 0}
    with pytest.raises(MissingField):
        decode_inner(pack([1, 1, base]))
    with pytest.raises(WrongFieldType):
        decode_inner(pack([1, 7, {**base, 3: 0}]))  # int is not bool
    with pytest.raises(InvalidFieldValue):
        decode_inner(pack([1, 5, {**base, 3: MSG_2, 4: 0}]))  # no DeleteScope 0
    with pytest.raises(InvalidFieldValue):
        decode_inner(pack([1, 10, {**base, 3: MAILBOX, 4: CAPABILITY, 5: "http://x"}]))
    ok = decode_inner(pack([1, 5, {**base, 3: MSG_2, 4: 2}]))
    assert isinstance(ok, Delete)
    assert ok.scope is DeleteScope.FOR_EVERYONE


def test_enums_must_be_members_when_constructed() -> None:
    with pytest.raises(InvalidValue):
        Delete(message_id=MSG_1, sent_at_ms=0, target=MSG_2, scope=2)  # type: ignore[arg-type]
    with pytest.raises(InvalidValue):
        Receipt(message_id=MSG_1, sent_at_ms=0, kind=ReceiptKind.READ, message_ids=())


def test_size_limits() -> None:
    with pytest.raises(InvalidValue):
        Text(message_id=MSG_1, sent_at_ms=0, text="x" * (limits.MAX_TEXT_SIZE + 1))
    # The text limit counts UTF-8 bytes, not characters.
    with pytest.raises(InvalidValue):
        Text(message_id=MSG_1, sent_at_ms=0, text="\N{BIRD}" * (limits.MAX_TEXT_SIZE // 4 + 1))
    with pytest.raises(InvalidValue):
        Text(message_id=MSG_1, sent_at_ms=0, text="\ud800")  # lone surrogate
    big = File(
        message_id=MSG_1,
        sent_at_ms=0,
        manifest=b"m" * limits.MAX_MANIFEST_SIZE,
        caption="c" * limits.MAX_TEXT_SIZE,
    )
    with pytest.raises(LocalProtocolError, match="MAX_INNER_MESSAGE_SIZE"):
        big.encode()
    with pytest.raises(FrameTooLarge):
        decode_inner(b"\x00" * (limits.MAX_INNER_MESSAGE_SIZE + 1))


def test_reprs_hide_plaintext_and_secrets() -> None:
    text = Text(message_id=MSG_1, sent_at_ms=3, text="meet at noon")
    assert repr(text) == (
        "Text(message_id=01080f161d242b323940474e555c636a, sent_at_ms=3, "
        "text=<redacted>, reply_to=None)"
    )
    ann = MailboxAnnouncement(
        message_id=MSG_1, sent_at_ms=0, mailbox_id=MAILBOX, capability=CAPABILITY
    )
    assert CAPABILITY.hex() not in repr(ann)
    for msg in EXAMPLES:
        r = repr(msg)
        assert "Bob" not in r and "Alice" not in r and "plan" not in r
