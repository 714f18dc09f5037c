"""Vectors for identities, prekey bundles and PQXDH (docs/vectors/pqxdh.json).

Everything comes from ``SeededRng`` seeds except the ML-KEM-768 encapsulation,
which draws its own randomness: its ciphertext and shared secret are recorded
once and reused on regeneration, and the test feeds them back through
``initiate_with_encapsulation``.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

from pigeon_crypto import x25519
from pigeon_crypto.identity import IdentityKeyPair, account_id_for
from pigeon_crypto.kdf import hkdf_sha256
from pigeon_crypto.pqxdh import (
    INFO_SEAL,
    INFO_SK,
    MemoryResponderKeys,
    accept,
    initiate_with_encapsulation,
)
from pigeon_crypto.prekeys import (
    KemKind,
    KemPreKeyPair,
    OneTimePreKeyPair,
    PreKeyBundle,
    SignedPreKeyPair,
)
from pigeon_crypto.rng import SeededRng

FILENAME = "pqxdh.json"
NOW_MS = 1_790_000_000_000
SEEDS = {"alice": b"pigeon vectors: alice", "bob": b"pigeon vectors: bob",
         "initiation": b"pigeon vectors: initiation"}
PAYLOAD = b"pairwise mailbox + capability"


def build(kem_ss: bytes | None = None, kem_ct: bytes | None = None) -> dict[str, Any]:
    alice = IdentityKeyPair.generate(SeededRng(SEEDS["alice"]))
    bob_rng = SeededRng(SEEDS["bob"])
    bob = IdentityKeyPair.generate(bob_rng)
    spk = SignedPreKeyPair.generate(bob, key_id=7, now_ms=NOW_MS, rng=bob_rng)
    kem = KemPreKeyPair.generate(bob, key_id=9, kind=KemKind.ONE_TIME, now_ms=NOW_MS, rng=bob_rng)
    otk = OneTimePreKeyPair.generate(key_id=11, rng=bob_rng)
    bundle = PreKeyBundle(identity=bob.public, signed_prekey=spk.public, kem_prekey=kem.public,
                          one_time_prekey=otk.public)
    if kem_ss is None or kem_ct is None:
        kem_ss, kem_ct = kem.public.encapsulate()
    init_rng = SeededRng(SEEDS["initiation"])
    init = initiate_with_encapsulation(alice, bundle, PAYLOAD, rng=init_rng,
                                       kem_shared_secret=kem_ss, kem_ciphertext=kem_ct)
    # intermediate values, recomputed from the same seeded stream
    ek = SeededRng(SEEDS["initiation"])(32)
    f = b"\xff" * 32
    dh1 = x25519.dh(alice.dh_private, spk.public.public)
    dh2 = x25519.dh(ek, bob.public.dh_key)
    dh3 = x25519.dh(ek, spk.public.public)
    dh4 = x25519.dh(ek, otk.public.public)
    keys = MemoryResponderKeys()
    keys.add(spk, kem, otk)
    acc = accept(bob, keys, init.message, now_ms=NOW_MS)
    assert acc.payload == PAYLOAD
    return {
        "description": "Identities, prekeys, bundle and a PQXDH initiation (see docs/protocol.md)",
        "seeds": {k: v.hex() for k, v in SEEDS.items()},
        "now_ms": NOW_MS,
        "alice": {"identity_private": alice.to_bytes().hex(),
                  "identity_public": alice.public.to_bytes().hex(),
                  "account_id": account_id_for(alice.public).hex()},
        "bob": {"identity_private": bob.to_bytes().hex(),
                "identity_public": bob.public.to_bytes().hex(),
                "account_id": account_id_for(bob.public).hex(),
                "signed_prekey_private": spk.to_bytes().hex(),
                "kem_prekey_private": kem.to_bytes().hex(),
                "one_time_prekey_private": otk.to_bytes().hex(),
                "bundle": bundle.to_bytes().hex()},
        "initiation": {
            "payload": PAYLOAD.hex(),
            "ephemeral_private": ek.hex(),
            "kem_ciphertext": kem_ct.hex(),
            "kem_shared_secret": kem_ss.hex(),
            "dh1": dh1.hex(), "dh2": dh2.hex(), "dh3": dh3.hex(), "dh4": dh4.hex(),
            "seal_key": hkdf_sha256(f + dh3 + dh4 + kem_ss, salt=None, info=INFO_SEAL,
                                    length=32).hex(),
            "shared_secret": hkdf_sha256(f + dh1 + dh2 + dh3 + dh4 + kem_ss, salt=None,
                                         info=INFO_SK, length=32).hex(),
            "associated_data": (alice.public.to_bytes() + bob.public.to_bytes()).hex(),
            "message": init.message.hex(),
            "replay_key": acc.replay_key.hex(),
        },
    }


def generate() -> dict[str, Any]:
    path = Path(__file__).resolve().parents[2] / "docs" / "vectors" / FILENAME
    if path.exists():
        old = json.loads(path.read_text())["initiation"]
        return build(bytes.fromhex(old["kem_shared_secret"]), bytes.fromhex(old["kem_ciphertext"]))
    return build()
