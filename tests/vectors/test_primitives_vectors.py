"""Check files, padding, safety numbers, sealing and sender keys against
docs/vectors/primitives.json byte for byte, and recompute each value from the
primitives directly (AES-GCM, HMAC, Argon2id, SHA-512) where it is cheap to."""

from __future__ import annotations

import hashlib
import hmac
import json
from pathlib import Path
from typing import Any

import nacl.bindings
from argon2.low_level import Type, hash_secret_raw
from cryptography.hazmat.primitives.ciphers.aead import AESGCM

from pigeon_crypto.files import FileDecryptor, FileManifest
from pigeon_crypto.padding import pad_message, padded_file_size, unpad_message
from pigeon_crypto.safety import safety_number, verify_scanned
from pigeon_crypto.sealing import unlock, unseal
from pigeon_crypto.sender_keys import (
    OutboundSenderKey,
    SenderKeyDistribution,
    SenderKeyRecord,
)
from pigeon_crypto.signing import Purpose, verify
from tests.vectors import gen_primitives

VECTORS: dict[str, Any] = json.loads(
    (Path(__file__).resolve().parents[2] / "docs" / "vectors" / gen_primitives.FILENAME).read_text()
)


def h(x: str) -> bytes:
    return bytes.fromhex(x)


def test_regeneration_reproduces_every_byte() -> None:
    assert gen_primitives.generate() == VECTORS


def test_padding_vectors() -> None:
    v = VECTORS["padding"]
    for m in v["messages"]:
        assert pad_message(h(m["plaintext"])) == h(m["padded"])
        assert unpad_message(h(m["padded"])) == h(m["plaintext"])
    for size, padded in v["file_buckets"].items():
        assert padded_file_size(int(size)) == padded


def test_file_vectors_decrypt_with_raw_aes_gcm() -> None:
    v = VECTORS["files"]
    key, file_id = h(v["key"]), h(v["file_id"])
    manifest = FileManifest.from_bytes(h(v["manifest"]))
    assert (manifest.key, manifest.file_id) == (key, file_id)
    assert manifest.true_size == len(h(v["plaintext"]))
    assert manifest.blob_id == bytes(range(16))
    padded = b""
    for i, c in enumerate(v["chunks"]):
        final = b"\x01" if i == v["chunk_count"] - 1 else b"\x00"
        ad = b"\x01" + file_id + i.to_bytes(8, "big") + final
        assert h(c["ad"]) == ad and h(c["nonce"]) == i.to_bytes(12, "big")
        padded += AESGCM(key).decrypt(h(c["nonce"]), h(c["ciphertext"]), ad)
    plaintext = h(v["plaintext"])
    assert len(padded) == v["padded_size"]
    assert padded == plaintext + bytes(v["padded_size"] - len(plaintext))
    dec = FileDecryptor.from_manifest(manifest)
    assert b"".join(dec.update(h(c["ciphertext"])) for c in v["chunks"]) == plaintext
    dec.finalize()


def test_safety_number_vectors() -> None:
    v = VECTORS["safety_numbers"]
    a, b = v["alice"], v["bob"]
    for party in (a, b):
        key, account = h(party["identity_key"]), h(party["account_id"])
        f = hashlib.sha512(b"\x00\x00" + key + account + key).digest()
        for _ in range(5199):
            f = hashlib.sha512(f + key).digest()
        assert f == h(party["fingerprint"])
    ids = (h(a["account_id"]), h(a["identity_key"]), h(b["account_id"]), h(b["identity_key"]))
    assert safety_number(*ids) == v["safety_number"] == v["formatted"].replace(" ", "")
    assert verify_scanned(*ids[2:], *ids[:2], h(v["scannable_alice"]))
    assert verify_scanned(*ids, h(v["scannable_bob"]))


def test_sealing_vectors() -> None:
    v = VECTORS["sealing"]
    p = v["params"]
    kek = hash_secret_raw(
        v["passphrase"].encode(), h(v["salt"]), time_cost=p["time_cost"],
        memory_cost=p["memory_kib"], parallelism=p["parallelism"], hash_len=32, type=Type.ID,
    )
    assert kek == h(v["kek"])
    wrapped = h(v["wrapped"])
    raw = nacl.bindings.crypto_aead_xchacha20poly1305_ietf_decrypt(
        wrapped[53:], wrapped[:29], wrapped[29:53], kek
    )
    assert raw == h(v["data_key"])
    data_key = unlock(wrapped, v["passphrase"])
    assert data_key.key == h(v["data_key"])
    s = v["sealed"]
    assert unseal(data_key, h(s["sealed"]), ad=h(s["ad"])) == h(s["plaintext"])
    r = v["rewrapped"]
    assert unlock(h(r["wrapped"]), r["passphrase"]) == data_key
    assert h(r["wrapped"])[1:13] == b"".join(
        r["params"][k].to_bytes(4, "big") for k in ("time_cost", "memory_kib", "parallelism")
    )


def test_sender_key_vectors() -> None:
    v = VECTORS["sender_keys"]
    dist = SenderKeyDistribution.from_bytes(h(v["distribution"]))
    alice = OutboundSenderKey.from_bytes(h(v["outbound_state"]))
    assert alice.distribution() == dist
    ck = dist.chain_key
    for i, m in enumerate(v["messages"]):
        assert ck == h(v["chain_keys"][i])
        mk = hmac.digest(ck, b"\x01", "sha256")
        assert mk == h(v["message_keys"][i])
        wire = h(m["message"])
        verify(dist.signing_public_key, Purpose.SENDER_KEY_MESSAGE, wire[:-64], wire[-64:])
        assert AESGCM(mk).decrypt(bytes(12), wire[9:-64], wire[:9]) == h(m["plaintext"])
        alice, again = alice.encrypt(h(m["plaintext"]))
        assert again == wire
        ck = hmac.digest(ck, b"\x02", "sha256")
    assert alice.to_bytes() == h(v["outbound_state_after"])
    record = SenderKeyRecord.from_bytes(h(v["record_after_message_2"]))
    assert sorted(record.chains[0].skipped) == [0, 1]
    for m in v["messages"][:2]:
        record, plain = record.decrypt(h(m["message"]))
        assert plain == h(m["plaintext"])
