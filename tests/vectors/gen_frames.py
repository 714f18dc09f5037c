"""Vectors for the wire frames, the stored envelope and the signed payloads
(docs/vectors/frames.json).

One example per frame type: its field values (bytes as hex, enums as integers,
tuples as lists, absent optional fields as null or []) and the exact bytes of its
encoding. Plus byte-exact inputs that decoders must reject (with the error class and
wire code) or must accept while ignoring unknown fields. All values are fixed
patterns, no randomness.
"""

from __future__ import annotations

from typing import Any

import msgpack

from protocol import (
    FRAME_TYPES,
    Ack,
    Auth,
    BlobToken,
    Bundle,
    Challenge,
    ClaimUsername,
    Connect,
    CreateMailbox,
    CreditsLow,
    DeleteAccount,
    DeleteMailbox,
    Delivery,
    Envelope,
    EphemeralDelivery,
    Error,
    ErrorCode,
    FetchBundle,
    LookupUsername,
    MailboxCreated,
    MessagesExpired,
    Ok,
    Overloaded,
    Ping,
    Pong,
    PrekeysLow,
    Register,
    RegisterPush,
    ReleaseUsername,
    RequestBlobDownload,
    RequestBlobUpload,
    RotateIdentity,
    RotateMailbox,
    Send,
    SendEphemeral,
    Sent,
    SetContactMailbox,
    Subscribe,
    Subscribed,
    Unsubscribe,
    UploadPrekeys,
    UsernameFound,
    Welcome,
    challenge_payload,
    dedup_input,
    username_binding_payload,
)
from protocol._wire import Bool, Bytes, Code, EnumKind, Kind, Pair, Record, Str, TupleOf, UInt
from protocol.frames import Frame

FILENAME = "frames.json"


def pattern(n: int, seed: int) -> bytes:
    """``n`` bytes of a fixed, recognizable pattern."""
    return bytes((seed + 7 * i) % 256 for i in range(n))


ACCOUNT = pattern(16, 0xA0)
OTHER_ACCOUNT = pattern(16, 0xA1)
MAILBOX = pattern(16, 0x10)
MAILBOX_2 = pattern(16, 0x20)
MAILBOX_3 = pattern(16, 0x30)
CAPABILITY = pattern(32, 0xC0)
CAPABILITY_2 = pattern(32, 0xC8)
CAPABILITY_HASH = pattern(32, 0x48)
CLIENT_MSG_ID = pattern(16, 0xE0)
SIGNATURE = pattern(64, 0x51)
SIGNATURE_2 = pattern(64, 0x52)
RELAY_ID = pattern(16, 0x77)
NONCE = pattern(32, 0x4E)
IDENTITY_KEY = b"\x01" + pattern(128, 0x1D)
BLOB = pattern(200, 0xB0)
SMALL_BLOB = pattern(24, 0xB1)
BLOB_ID = pattern(16, 0xF1)
BLOB_TOKEN = pattern(32, 0xF2)
DEDUP_HASH = pattern(32, 0xDD)
SIGNED_PREKEY = pattern(109, 0x5A)
KEM_PREKEY = pattern(1262, 0x6B)
ONE_TIME_PREKEY = pattern(37, 0x3C)
ROTATION = pattern(407, 0x2E)
TIME_MS = 1_767_225_600_000  # 2026-01-01T00:00:00Z


def frame_examples() -> list[Frame]:
    """One example of every frame type, in type-code order."""
    examples: list[Frame] = [
        Connect(request_id=1),
        Challenge(request_id=1, relay_id=RELAY_ID, nonce=NONCE, server_time_ms=TIME_MS),
        Auth(request_id=2, account_id=ACCOUNT, signature=SIGNATURE),
        Register(
            request_id=2,
            account_id=ACCOUNT,
            identity_key=IDENTITY_KEY,
            signature=SIGNATURE,
            invite_code="PIGEON-1234",
        ),
        Welcome(request_id=2, account_id=ACCOUNT, server_time_ms=TIME_MS + 5, new_account=True),
        Ping(request_id=3),
        Pong(request_id=3),
        Ok(request_id=4),
        Error(
            request_id=5,
            code=ErrorCode.RATE_LIMITED,
            message="slow down",
            retry_after_ms=1500,
        ),
        DeleteAccount(request_id=6),
        RotateIdentity(request_id=7, rotation=ROTATION, signature=SIGNATURE_2),
        ClaimUsername(request_id=8, username="alice_01", account_id=ACCOUNT, signature=SIGNATURE),
        ReleaseUsername(request_id=9, username="alice_01"),
        LookupUsername(request_id=10, username="alice_01"),
        UsernameFound(request_id=10, username="alice_01", account_id=ACCOUNT, signature=SIGNATURE),
        UploadPrekeys(
            request_id=11,
            signed_prekey=SIGNED_PREKEY,
            kem_prekey=KEM_PREKEY,
            one_time_prekeys=(ONE_TIME_PREKEY, pattern(37, 0x3D)),
            one_time_kem_prekeys=(),
        ),
        FetchBundle(request_id=12, account_id=OTHER_ACCOUNT),
        Bundle(
            request_id=12,
            account_id=OTHER_ACCOUNT,
            identity_key=IDENTITY_KEY,
            signed_prekey=SIGNED_PREKEY,
            kem_prekey=KEM_PREKEY,
            one_time_prekey=ONE_TIME_PREKEY,
            contact_mailbox_id=MAILBOX_3,
            contact_capability=CAPABILITY_2,
            rotations=(ROTATION,),
        ),
        CreateMailbox(request_id=13, capability_hash=CAPABILITY_HASH),
        MailboxCreated(request_id=13, mailbox_id=MAILBOX),
        RotateMailbox(
            request_id=14,
            mailbox_id=MAILBOX,
            capability_hash=pattern(32, 0x49),
            retire_at_ms=TIME_MS + 7 * 24 * 3600 * 1000,
        ),
        DeleteMailbox(request_id=15, mailbox_id=MAILBOX_2),
        SetContactMailbox(request_id=16, mailbox_id=MAILBOX_3, capability=CAPABILITY_2),
        Subscribe(request_id=17, mailbox_ids=(MAILBOX, MAILBOX_2, MAILBOX_3)),
        Subscribed(request_id=17, rejected=(MAILBOX_2,)),
        Unsubscribe(request_id=18, mailbox_ids=(MAILBOX_3,)),
        RegisterPush(request_id=19, mailbox_ids=(MAILBOX,), url="https://push.example/wake/abc123"),
        Send(
            request_id=20,
            client_msg_id=CLIENT_MSG_ID,
            blob=BLOB,
            recipients=((MAILBOX, CAPABILITY), (MAILBOX_2, CAPABILITY_2)),
            ttl_ms=86_400_000,
        ),
        Sent(request_id=20, rejected=((1, ErrorCode.WRONG_CAPABILITY),)),
        SendEphemeral(
            request_id=21,
            client_msg_id=pattern(16, 0xE1),
            blob=SMALL_BLOB,
            recipients=((MAILBOX, CAPABILITY),),
        ),
        Delivery(mailbox_id=MAILBOX, seq=42, received_at_ms=TIME_MS + 60_000, blob=BLOB),
        EphemeralDelivery(mailbox_id=MAILBOX, received_at_ms=TIME_MS + 61_000, blob=SMALL_BLOB),
        Ack(request_id=22, mailbox_id=MAILBOX, up_to_seq=40, seqs=(42, 45)),
        RequestBlobUpload(request_id=23, size=5 * 1024 * 1024, chunk_count=80),
        RequestBlobDownload(request_id=24, blob_id=BLOB_ID),
        BlobToken(
            request_id=23,
            blob_id=BLOB_ID,
            token=BLOB_TOKEN,
            url_path="/blobs/8fa1c3",
            expires_at_ms=TIME_MS + 3_600_000,
        ),
        CreditsLow(remaining=12, refill_in_ms=30_000),
        Overloaded(retry_after_ms=5_000),
        PrekeysLow(one_time_prekeys=3, one_time_kem_prekeys=0),
        MessagesExpired(mailbox_id=MAILBOX_2, count=17, up_to_seq=99),
    ]
    return examples


ENVELOPE = Envelope(
    mailbox_id=MAILBOX,
    seq=42,
    received_at_ms=TIME_MS + 60_000,
    expires_at_ms=TIME_MS + 60_000 + 30 * 24 * 3600 * 1000,
    dedup_hash=DEDUP_HASH,
    blob=BLOB,
)


# --- JSON <-> Python values, driven by the field kinds --------------------------------


def to_json(kind: Kind, value: object) -> Any:
    if value is None:
        return None
    if isinstance(kind, Bytes):
        assert isinstance(value, bytes)
        return value.hex()
    if isinstance(kind, (EnumKind, Code)):
        assert isinstance(value, int)
        return int(value)
    if isinstance(kind, TupleOf):
        assert isinstance(value, tuple)
        return [to_json(kind.item, x) for x in value]
    if isinstance(kind, Pair):
        assert isinstance(value, tuple)
        return [to_json(kind.first, value[0]), to_json(kind.second, value[1])]
    assert isinstance(kind, (UInt, Bool, Str))
    return value


def from_json(kind: Kind, value: Any) -> object:
    if value is None:
        return None
    if isinstance(kind, Bytes):
        return bytes.fromhex(value)
    if isinstance(kind, EnumKind):
        return kind.enum(value)
    if isinstance(kind, Code):
        return kind.from_wire(value)
    if isinstance(kind, TupleOf):
        return tuple(from_json(kind.item, x) for x in value)
    if isinstance(kind, Pair):
        return (from_json(kind.first, value[0]), from_json(kind.second, value[1]))
    return value


def fields_to_json(record: Record) -> dict[str, Any]:
    return {s.name: to_json(s.kind, getattr(record, s.name)) for s in record.SPECS}


def fields_from_json(cls: type[Record], fields: dict[str, Any]) -> dict[str, Any]:
    kinds = {s.name: s.kind for s in cls.SPECS}
    return {name: from_json(kinds[name], value) for name, value in fields.items()}


# --- inputs that must be rejected or tolerated ----------------------------------------


def _raw(obj: object) -> str:
    return msgpack.packb(obj, use_bin_type=True).hex()  # type: ignore[no-any-return]


def rejected_frames() -> list[dict[str, Any]]:
    """Byte-exact inputs every decoder must reject, with the error class and code."""
    send = next(f for f in frame_examples() if isinstance(f, Send)).encode()
    auth = {1: ACCOUNT, 2: SIGNATURE}
    cases: list[tuple[str, str, str]] = [
        ("empty input", "", "MalformedFrame"),
        ("truncated (last byte of a Send removed)", send[:-1].hex(), "MalformedFrame"),
        ("trailing byte after a Send", (send + b"\x00").hex(), "MalformedFrame"),
        ("not an array", _raw({1: 1}), "MalformedFrame"),
        ("three elements", _raw([1, 6, 3]), "MalformedFrame"),
        ("version 2 (unknown)", _raw([2, 6, 3, {}]), "UnknownProtocolVersion"),
        ("version 0 (unknown)", _raw([0, 6, 3, {}]), "UnknownProtocolVersion"),
        ("version true (bool is not int)", _raw([True, 6, 3, {}]), "MalformedFrame"),
        ("unknown frame type 99", _raw([1, 99, 3, {}]), "UnknownFrameType"),
        ("request id true (bool is not int)", _raw([1, 6, True, {}]), "WrongFieldType"),
        ("request id 0 on a request", _raw([1, 6, 0, {}]), "InvalidFieldValue"),
        ("request id above u32", _raw([1, 6, 2**32, {}]), "InvalidFieldValue"),
        ("request id on a delivery", _raw([1, 61, 5, {1: 10}]), "InvalidFieldValue"),
        ("body is an array", _raw([1, 6, 3, []]), "MalformedFrame"),
        ("missing signature", _raw([1, 3, 2, {1: ACCOUNT}]), "MissingField"),
        ("account id as str", _raw([1, 3, 2, {1: "a" * 16, 2: SIGNATURE}]), "WrongFieldType"),
        ("account id of 15 bytes", _raw([1, 3, 2, {**auth, 1: ACCOUNT[:15]}]), "InvalidFieldValue"),
        (
            "seq true (bool is not int)",
            _raw([1, 43, 0, {1: MAILBOX, 2: True, 3: 0, 4: BLOB}]),
            "WrongFieldType",
        ),
        ("seq 0", _raw([1, 43, 0, {1: MAILBOX, 2: 0, 3: 0, 4: BLOB}]), "InvalidFieldValue"),
        ("nil for an optional field", _raw([1, 9, 5, {1: 400, 2: None}]), "WrongFieldType"),
        (
            "invite code over 64 bytes",
            _raw([1, 4, 2, {1: ACCOUNT, 2: IDENTITY_KEY, 3: SIGNATURE, 4: "x" * 65}]),
            "LimitExceeded",
        ),
        ("string map key", _raw([1, 6, 3, {"1": 0}]), "MalformedFrame"),
        ("duplicate map key", "94010603" + "82" + "0100" + "0100", "MalformedFrame"),
        ("ext type", "94010603" + "81" + "01" + "d6ff00000000", "MalformedFrame"),
        (
            "array length prefix above the limit",
            "94010603" + "81" + "01" + "dd00010000",
            "LimitExceeded",
        ),
        (
            "nested 1100 arrays deep",
            "94010603" + "81" + "64" + "91" * 1100 + "00",
            "NestingTooDeep",
        ),
        ("non-UTF-8 string", "94010e0a" + "81" + "01" + "a3" + "ff" * 3, "MalformedFrame"),
        ("username not normalized", _raw([1, 14, 10, {1: "Alice"}]), "InvalidFieldValue"),
        (
            "ack seqs not increasing",
            _raw([1, 45, 22, {1: MAILBOX, 3: [5, 5]}]),
            "InvalidFieldValue",
        ),
    ]
    import protocol.errors as errors

    out = []
    for name, hexdata, error in cases:
        cls = getattr(errors, error)
        out.append({"name": name, "hex": hexdata, "error": error, "code": int(cls.code)})
    return out


def tolerated_frames() -> list[dict[str, Any]]:
    """Inputs with unknown optional fields: decoders ignore them."""
    ping_extra = _raw([1, 6, 3, {100: "from the future", 101: [1, 2, {3: b"x"}]}])
    ack_extra = _raw([1, 45, 22, {1: MAILBOX, 2: 40, 9: True}])
    return [
        {
            "name": "Ping with unknown keys 100 and 101",
            "hex": ping_extra,
            "frame": "Ping",
            "fields": {"request_id": 3},
        },
        {
            "name": "Ack with unknown key 9",
            "hex": ack_extra,
            "frame": "Ack",
            "fields": {"request_id": 22, "mailbox_id": MAILBOX.hex(), "up_to_seq": 40, "seqs": []},
        },
    ]


def generate() -> dict[str, Any]:
    frames = []
    for frame in frame_examples():
        frames.append(
            {
                "frame": type(frame).__name__,
                "type": frame.TYPE,
                "direction": frame.DIRECTION.name,
                "fields": fields_to_json(frame),
                "hex": frame.encode().hex(),
            }
        )
    assert {f["type"] for f in frames} == set(FRAME_TYPES), "every frame type has a vector"
    return {
        "description": (
            "Pigeon wire protocol v1: one example per frame type (fields and exact bytes), "
            "the stored envelope, the signed/hashed payload layouts, and inputs that "
            "decoders must reject or tolerate. Bytes are hex; see docs/protocol.md."
        ),
        "protocol_version": 1,
        "frames": frames,
        "envelope": {"fields": fields_to_json(ENVELOPE), "hex": ENVELOPE.encode().hex()},
        "payloads": {
            "challenge": {
                "relay_id": RELAY_ID.hex(),
                "nonce": NONCE.hex(),
                "time_ms": TIME_MS,
                "account_id": ACCOUNT.hex(),
                "hex": challenge_payload(RELAY_ID, NONCE, TIME_MS, ACCOUNT).hex(),
            },
            "username_binding": {
                "username": "alice_01",
                "account_id": ACCOUNT.hex(),
                "hex": username_binding_payload("alice_01", ACCOUNT).hex(),
            },
            "dedup_input": {
                "mailbox_id": MAILBOX.hex(),
                "client_msg_id": CLIENT_MSG_ID.hex(),
                "hex": dedup_input(MAILBOX, CLIENT_MSG_ID).hex(),
            },
        },
        "rejected": rejected_frames(),
        "tolerated": tolerated_frames(),
    }
