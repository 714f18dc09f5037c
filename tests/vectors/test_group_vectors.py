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
