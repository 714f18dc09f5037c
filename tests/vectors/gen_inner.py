"""Vectors for the inner (end-to-end encrypted) message kinds (docs/vectors/inner.json).

One example per kind: fields (bytes as hex, enums as integers) and the exact bytes
of the plaintext before padding and encryption; plus inputs decoders must reject.
"""

from __future__ import annotations

from typing import Any

import msgpack

import protocol.errors as errors
from protocol import (
    INNER_KINDS,
    Delete,
    DeleteScope,
    DisappearingTimer,
    Edit,
    File,
    GroupControl,
    GroupControlKey,
    GroupStateRequest,
    IdentityRotated,
    InnerMessage,
    MailboxAnnouncement,
    MailboxRotation,
    Presence,
    PresenceState,
    Profile,
    Reaction,
    Receipt,
    ReceiptKind,
    SenderKeyDistribution,
    SenderKeyRequest,
    Text,
    Typing,
)
from protocol.group import GroupState, Subscription
from tests.vectors.gen_frames import (
    CAPABILITY,
    MAILBOX,
    MAILBOX_2,
    TIME_MS,
    fields_to_json,
    pattern,
)

FILENAME = "inner.json"

MSG_1 = pattern(16, 0x01)
MSG_2 = pattern(16, 0x02)
MSG_3 = pattern(16, 0x03)
MANIFEST = b"\x01" + pattern(90, 0x9A)


def channel_state() -> GroupState:
    """A channel with subscriptions: its state lists the admins only."""
    return GroupState(group_id=pattern(16, 0x6C), version=1, signer=pattern(16, 0xA1),
                      name="Pigeon news", members=(pattern(16, 0xA1),),
                      admins=(pattern(16, 0xA1),), at_ms=TIME_MS + 11, channel=True,
                      subscriptions=True)


def channel_subscription() -> Subscription:
    """An admin subscribes one reader, under the channel state above."""
    import hashlib
    return Subscription(group_id=pattern(16, 0x6C), seq=1, signer=pattern(16, 0xA1),
                        at_ms=TIME_MS + 11, subscriber=pattern(16, 0xB2), subscribed=True,
                        authority=hashlib.sha256(channel_state().encode()).digest())


def inner_examples() -> list[InnerMessage]:
    """One example of every inner message kind, in kind order."""
    t = TIME_MS
    return [
        Text(message_id=MSG_1, sent_at_ms=t, text="Hello, Bob! \N{BIRD}", reply_to=None),
        File(
            message_id=MSG_2,
            sent_at_ms=t + 1,
            manifest=MANIFEST,
            caption="the plan",
            reply_to=MSG_1,
        ),
        Edit(message_id=pattern(16, 0x04), sent_at_ms=t + 2, target=MSG_1, text="Hello, Bob!"),
        Reaction(
            message_id=pattern(16, 0x05), sent_at_ms=t + 3, target=MSG_1, emoji="\N{THUMBS UP SIGN}"
        ),
        Delete(
            message_id=pattern(16, 0x06),
            sent_at_ms=t + 4,
            target=MSG_2,
            scope=DeleteScope.FOR_EVERYONE,
        ),
        Receipt(
            message_id=pattern(16, 0x07),
            sent_at_ms=t + 5,
            kind=ReceiptKind.READ,
            message_ids=(MSG_1, MSG_2, MSG_3),
        ),
        Typing(message_id=pattern(16, 0x08), sent_at_ms=t + 6, active=True),
        Presence(message_id=pattern(16, 0x09), sent_at_ms=t + 7, state=PresenceState.AWAY),
        Profile(
            message_id=pattern(16, 0x0A),
            sent_at_ms=t + 8,
            display_name="Alice",
            avatar_manifest=MANIFEST,
        ),
        MailboxAnnouncement(
            message_id=pattern(16, 0x0B),
            sent_at_ms=t + 9,
            mailbox_id=MAILBOX,
            capability=CAPABILITY,
            relay_url="wss://relay.example/ws",
        ),
        MailboxRotation(
            message_id=pattern(16, 0x0C),
            sent_at_ms=t + 10,
            old_mailbox_id=MAILBOX,
            mailbox_id=MAILBOX_2,
            capability=pattern(32, 0xC9),
        ),
        GroupControl(
            message_id=pattern(16, 0x0D),
            sent_at_ms=t + 11,
            state=GroupState(
                group_id=pattern(16, 0x6C),
                version=2,
                signer=pattern(16, 0xA1),
                name="Pigeon fans",
                members=(pattern(16, 0xA1), pattern(16, 0xB2), pattern(16, 0xC3)),
                admins=(pattern(16, 0xA1),),
                at_ms=t + 11,
                parent=pattern(32, 0x6D),
                avatar=MANIFEST,
            ).encode(),
            signature=pattern(64, 0x6E),
        ),
        GroupControl(  # a channel with subscriptions: its state and one subscription
            message_id=pattern(16, 0x11),
            sent_at_ms=t + 11,
            state=channel_state().encode(),
            signature=pattern(64, 0x6F),
            subscriptions=((channel_subscription().encode(), pattern(64, 0x70)),),
        ),
        GroupControl(  # its signer wrote it to every member: nobody passes it on
            message_id=pattern(16, 0x12),
            sent_at_ms=t + 11,
            state=channel_state().encode(),
            signature=pattern(64, 0x71),
            complete=True,
        ),
        SenderKeyDistribution(
            message_id=pattern(16, 0x0E),
            sent_at_ms=t + 12,
            group_id=pattern(16, 0x6C),
            distribution=pattern(73, 0x5D),
        ),
        DisappearingTimer(message_id=pattern(16, 0x0F), sent_at_ms=t + 13,
                          timer_ms=7 * 24 * 3600 * 1000),
        DisappearingTimer(message_id=pattern(16, 0x10), sent_at_ms=t + 14),
        GroupControlKey(message_id=pattern(16, 0x15), sent_at_ms=t + 15,
                        blob_hash=pattern(32, 0x5C), key=pattern(32, 0x5A),
                        seal_id=pattern(16, 0x5B)),
        GroupStateRequest(message_id=pattern(16, 0x16), sent_at_ms=t + 16,
                          group_id=pattern(16, 0x6C),
                          hashes=(pattern(32, 0x6D), pattern(32, 0x6E))),
        IdentityRotated(message_id=pattern(16, 0x17), sent_at_ms=t + 17,  # opaque here:
                        rotations=(pattern(407, 0x4A), pattern(407, 0x4B))),  # §4 bytes
        SenderKeyRequest(message_id=pattern(16, 0x18), sent_at_ms=t + 18,
                         group_id=pattern(16, 0x6C)),
    ]


def _raw(obj: object) -> str:
    return msgpack.packb(obj, use_bin_type=True).hex()  # type: ignore[no-any-return]


def rejected_inner() -> list[dict[str, Any]]:
    base = {1: MSG_1, 2: TIME_MS}
    cases = [
        ("unknown kind 99", _raw([1, 99, base]), "UnknownMessageKind"),
        ("version 2", _raw([2, 1, {**base, 3: "hi"}]), "UnknownProtocolVersion"),
        ("four elements", _raw([1, 1, {**base, 3: "hi"}, 0]), "MalformedFrame"),
        ("missing message_id", _raw([1, 1, {2: TIME_MS, 3: "hi"}]), "MissingField"),
        ("text as bytes", _raw([1, 1, {**base, 3: b"hi"}]), "WrongFieldType"),
        ("empty text", _raw([1, 1, {**base, 3: ""}]), "InvalidFieldValue"),
        ("delete scope 3", _raw([1, 5, {**base, 3: MSG_2, 4: 3}]), "InvalidFieldValue"),
        ("disappearing timer 0", _raw([1, 14, {**base, 3: 0}]), "InvalidFieldValue"),
        ("disappearing timer over a year",
         _raw([1, 14, {**base, 3: 365 * 24 * 3600 * 1000 + 1}]), "InvalidFieldValue"),
        ("typing active = 1 (int is not bool)", _raw([1, 7, {**base, 3: 1}]), "WrongFieldType"),
        ("receipt with no ids", _raw([1, 6, {**base, 3: 2, 4: []}]), "InvalidFieldValue"),
        ("identity rotated with no rotation", _raw([1, 17, {**base, 3: []}]),
         "InvalidFieldValue"),
        ("sender key request without its group", _raw([1, 18, base]), "MissingField"),
    ]
    return [
        {"name": n, "hex": x, "error": e, "code": int(getattr(errors, e).code)} for n, x, e in cases
    ]


def generate() -> dict[str, Any]:
    messages = [
        {
            "kind_name": type(m).__name__,
            "kind": m.KIND,
            "fields": fields_to_json(m),
            "hex": m.encode().hex(),
        }
        for m in inner_examples()
    ]
    assert {m["kind"] for m in messages} == set(INNER_KINDS), "every kind has a vector"
    return {
        "description": (
            "Pigeon inner message format v1 (the plaintext inside end-to-end encryption, "
            "before padding): one example per kind, and inputs decoders must reject. "
            "Bytes are hex; see docs/protocol.md."
        ),
        "protocol_version": 1,
        "messages": messages,
        "rejected": rejected_inner(),
    }
