"""Vectors for group control payloads (docs/vectors/groups.json, docs/protocol.md §9.14).

A channel state with subscriptions and a subscription made under it: the exact bytes
of each, their SHA-256 (what a parent or an ``authority`` names), the Ed25519
signature of each by a fixed key with purpose ``group-control`` (signatures are
deterministic), and inputs the decoders must reject: the two kinds are disjoint
although they share a signing purpose. A sealed change of that state: the padded
``GroupControl``, its sealed blob under a fixed key and seal id, and the
``GroupControlKey`` naming it.
"""

from __future__ import annotations

import hashlib
from typing import Any

import msgpack

from client_sdk._groups import sealed_blob
from pigeon_crypto.padding import pad_message
from pigeon_crypto.signing import Purpose, SigningKey
from protocol.group import GroupState, Subscription
from protocol.inner import GroupControl, GroupControlKey
from tests.vectors.gen_frames import TIME_MS, pattern

FILENAME = "groups.json"
SIGNER_SEED = pattern(32, 0x5E)
"""The admin's Ed25519 seed (its account id is ``pattern(16, 0xA1)``)."""


def state() -> GroupState:
    return GroupState(group_id=pattern(16, 0x6C), version=2, signer=pattern(16, 0xA1),
                      name="Pigeon news", members=(pattern(16, 0xA1), pattern(16, 0xA2)),
                      admins=(pattern(16, 0xA1), pattern(16, 0xA2)), at_ms=TIME_MS + 20,
                      parent=pattern(32, 0x6D), channel=True, subscriptions=True)


def subscription(subscribed: bool = True) -> Subscription:
    return Subscription(group_id=pattern(16, 0x6C), seq=3, signer=pattern(16, 0xA1),
                        at_ms=TIME_MS + 21, subscriber=pattern(16, 0xB2),
                        subscribed=subscribed,
                        authority=hashlib.sha256(state().encode()).digest())


def _signed(encoded: bytes) -> dict[str, str]:
    key = SigningKey(SIGNER_SEED)
    return {"hex": encoded.hex(), "sha256": hashlib.sha256(encoded).hexdigest(),
            "signature": key.sign(Purpose.GROUP_CONTROL, encoded).hex()}


def _raw(obj: object) -> str:
    return msgpack.packb(obj, use_bin_type=True).hex()  # type: ignore[no-any-return]


def rejected() -> list[dict[str, str]]:
    sub_body = msgpack.unpackb(subscription().encode(), strict_map_key=False)[1]
    state_body = msgpack.unpackb(state().encode(), strict_map_key=False)[1]
    self_sub = {**sub_body, 3: sub_body[12]}
    return [
        {"name": "a subscription with a state's key 5 (members)", "decoder": "subscription",
         "hex": _raw([1, {**sub_body, 5: [pattern(16, 0xA1)]}])},
        {"name": "a state with a subscription's key 12", "decoder": "state",
         "hex": _raw([1, {**state_body, 12: pattern(16, 0xB2)}])},
        {"name": "a state decoded as a subscription", "decoder": "subscription",
         "hex": state().encode().hex()},
        {"name": "a subscription decoded as a state", "decoder": "state",
         "hex": subscription().encode().hex()},
        {"name": "a subscriber subscribing itself", "decoder": "subscription",
         "hex": _raw([1, self_sub])},
        {"name": "subscriptions in a group that is no channel", "decoder": "state",
         "hex": _raw([1, {k: v for k, v in state_body.items() if k != 10}])},
        {"name": "a channel with subscriptions listing a non-admin", "decoder": "state",
         "hex": _raw([1, {**state_body, 6: [pattern(16, 0xA1)]}])},
    ]


SEAL_KEY = pattern(32, 0x5A)
SEAL_ID = pattern(16, 0x5B)


def sealed_control() -> dict[str, str]:
    """A sealed change: the padded ``GroupControl`` of :func:`state`, its sealed blob
    under a fixed key and seal id, and the ``GroupControlKey`` that opens it."""
    encoded = state().encode()
    control = GroupControl(message_id=pattern(16, 0x13), sent_at_ms=TIME_MS + 22,
                           state=encoded, signature=SigningKey(SIGNER_SEED).sign(
                               Purpose.GROUP_CONTROL, encoded), complete=True)
    padded = pad_message(control.encode())
    blob = sealed_blob(SEAL_KEY, SEAL_ID, padded)
    key = GroupControlKey(message_id=pattern(16, 0x14), sent_at_ms=TIME_MS + 22,
                          blob_hash=hashlib.sha256(blob).digest(), key=SEAL_KEY, seal_id=SEAL_ID)
    return {"control": control.encode().hex(), "padded": padded.hex(), "key": SEAL_KEY.hex(),
            "seal_id": SEAL_ID.hex(), "blob": blob.hex(),
            "blob_sha256": hashlib.sha256(blob).hexdigest(), "key_message": key.encode().hex()}


def generate() -> dict[str, Any]:
    return {
        "signer_seed": SIGNER_SEED.hex(),
        "channel_state": _signed(state().encode()),
        "subscription": _signed(subscription().encode()),
        "removal": _signed(subscription(False).encode()),
        "rejected": rejected(),
        "sealed_control": sealed_control(),
    }
