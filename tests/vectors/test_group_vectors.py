"""Check group control payloads against docs/vectors/groups.json (docs/protocol.md
§9.14): the recorded bytes, hashes and signatures of a channel state and of
subscriptions, in both directions, and the inputs the decoders must reject."""

from __future__ import annotations

import hashlib
import json
from pathlib import Path
from typing import Any

import pytest

from pigeon_crypto.signing import Purpose, SigningKey, verify
from protocol.errors import RemoteProtocolError
from protocol.group import decode_group_state, decode_subscription
from tests.vectors import gen_groups

VECTORS: dict[str, Any] = json.loads(
    (Path(__file__).resolve().parents[2] / "docs" / "vectors" / gen_groups.FILENAME).read_text())


def test_regeneration_reproduces_every_byte() -> None:
    assert gen_groups.generate() == VECTORS


@pytest.mark.parametrize("name", ["channel_state", "subscription", "removal"])
def test_bytes_hashes_and_signatures(name: str) -> None:
    vector = VECTORS[name]
    data = bytes.fromhex(vector["hex"])
    decoded = decode_group_state(data) if name == "channel_state" else decode_subscription(data)
    assert decoded.encode() == data
    assert hashlib.sha256(data).hexdigest() == vector["sha256"]
    key = SigningKey(bytes.fromhex(VECTORS["signer_seed"]))
    verify(key.public_key, Purpose.GROUP_CONTROL, data, bytes.fromhex(vector["signature"]))


def test_the_subscription_names_the_state_it_was_made_under() -> None:
    sub = decode_subscription(bytes.fromhex(VECTORS["subscription"]["hex"]))
    assert sub.authority.hex() == VECTORS["channel_state"]["sha256"]


@pytest.mark.parametrize("vector", VECTORS["rejected"],
                         ids=[v["name"] for v in VECTORS["rejected"]])
def test_rejected(vector: dict[str, str]) -> None:
    decode = decode_group_state if vector["decoder"] == "state" else decode_subscription
    with pytest.raises(RemoteProtocolError):
        decode(bytes.fromhex(vector["hex"]))


def test_sealed_control_opens_as_the_spec_says() -> None:
    """§9.14 "Sealed changes", straight from the spec with raw AES-256-GCM: the blob is
    0x82 then chunk 0 of a one-chunk file (§8.1: nonce u96(0), AD 0x01 || seal id ||
    u64(0) || 0x01), its plaintext the padded GroupControl; the key message names the
    blob by SHA-256."""
    from cryptography.exceptions import InvalidTag
    from cryptography.hazmat.primitives.ciphers.aead import AESGCM

    from pigeon_crypto.padding import unpad_message
    from protocol.inner import GroupControl, GroupControlKey, decode_inner

    v = VECTORS["sealed_control"]
    blob = bytes.fromhex(v["blob"])
    assert blob[0] == 0x82 and hashlib.sha256(blob).hexdigest() == v["blob_sha256"]
    key_message = decode_inner(bytes.fromhex(v["key_message"]))
    assert isinstance(key_message, GroupControlKey)
    assert key_message.blob_hash.hex() == v["blob_sha256"]
    seal_id = key_message.seal_id
    ad = b"\x01" + seal_id + (0).to_bytes(8, "big") + b"\x01"
    padded = AESGCM(key_message.key).decrypt(bytes(12), blob[1:], ad)
    assert padded.hex() == v["padded"]
    control = decode_inner(unpad_message(padded))
    assert isinstance(control, GroupControl) and control.encode().hex() == v["control"]
    assert control.state.hex() == VECTORS["channel_state"]["hex"] and control.complete
    key = SigningKey(bytes.fromhex(VECTORS["signer_seed"]))
    verify(key.public_key, Purpose.GROUP_CONTROL, control.state, control.signature)
    with pytest.raises(InvalidTag):  # any flipped bit fails the tag
        AESGCM(key_message.key).decrypt(bytes(12), blob[1:-1] + bytes([blob[-1] ^ 1]), ad)
