"""Check identities, bundles and PQXDH against docs/vectors/pqxdh.json byte for byte."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from pigeon_crypto.identity import IdentityKeyPair, IdentityPublicKey, account_id_for
from pigeon_crypto.pqxdh import MemoryResponderKeys, accept
from pigeon_crypto.prekeys import KemPreKeyPair, OneTimePreKeyPair, PreKeyBundle, SignedPreKeyPair
from tests.vectors import gen_pqxdh

VECTORS = json.loads((Path(__file__).resolve().parents[2] / "docs" / "vectors"
                      / gen_pqxdh.FILENAME).read_text())


def h(x: str) -> bytes:
    return bytes.fromhex(x)


def test_regeneration_reproduces_every_byte() -> None:
    ini = VECTORS["initiation"]
    assert gen_pqxdh.build(h(ini["kem_shared_secret"]), h(ini["kem_ciphertext"])) == VECTORS


@pytest.mark.parametrize("who", ["alice", "bob"])
def test_identity_vectors(who: str) -> None:
    v = VECTORS[who]
    ident = IdentityKeyPair.from_bytes(h(v["identity_private"]))
    assert ident.public.to_bytes() == h(v["identity_public"])
    assert IdentityPublicKey.from_bytes(h(v["identity_public"])) == ident.public
    assert account_id_for(ident.public) == h(v["account_id"])


def test_bundle_vector_parses_and_matches_private_keys() -> None:
    v = VECTORS["bob"]
    bundle = PreKeyBundle.from_bytes(h(v["bundle"]))
    assert bundle.signed_prekey == SignedPreKeyPair.from_bytes(h(v["signed_prekey_private"])).public
    assert bundle.kem_prekey == KemPreKeyPair.from_bytes(h(v["kem_prekey_private"])).public
    assert bundle.one_time_prekey == OneTimePreKeyPair.from_bytes(
        h(v["one_time_prekey_private"])).public


def test_recorded_initiation_is_accepted_by_the_responder() -> None:
    v, ini = VECTORS["bob"], VECTORS["initiation"]
    bob = IdentityKeyPair.from_bytes(h(v["identity_private"]))
    kem = KemPreKeyPair.from_bytes(h(v["kem_prekey_private"]))
    # ML-KEM decapsulation of the recorded ciphertext gives the recorded secret
    assert kem.decapsulate(h(ini["kem_ciphertext"])) == h(ini["kem_shared_secret"])
    keys = MemoryResponderKeys()
    keys.add(SignedPreKeyPair.from_bytes(h(v["signed_prekey_private"])), kem,
             OneTimePreKeyPair.from_bytes(h(v["one_time_prekey_private"])))
    acc = accept(bob, keys, h(ini["message"]), now_ms=VECTORS["now_ms"])
    assert acc.payload == h(ini["payload"])
    assert acc.peer.to_bytes() == h(VECTORS["alice"]["identity_public"])
    assert acc.replay_key == h(ini["replay_key"])
