"""Vectors for file chunks, padding, safety numbers, sealing and sender keys
(docs/vectors/primitives.json).

Every random byte comes from ``SeededRng`` with the seeds below; all values are
hex. Argon2 parameters are tiny so the vector test stays fast: the format and
the KDF call are the same for the default parameters.
"""

from __future__ import annotations

import hmac
from typing import Any

from pigeon_crypto.files import FileDecryptor, FileEncryptor, FileLayout, chunk_ad, encrypt_stream
from pigeon_crypto.padding import message_bucket, pad_message, padded_file_size
from pigeon_crypto.rng import SeededRng
from pigeon_crypto.safety import (
    fingerprint,
    format_safety_number,
    safety_number,
    scannable_safety_number,
)
from pigeon_crypto.sealing import Argon2Params, _kek, create_data_key, rewrap, seal
from pigeon_crypto.sender_keys import OutboundSenderKey, SenderKeyRecord
from pigeon_crypto.signing import SigningKey

FILENAME = "primitives.json"
SEEDS = {
    "file": b"pigeon vectors: file",
    "alice": b"pigeon vectors: alice",
    "bob": b"pigeon vectors: bob",
    "sealing": b"pigeon vectors: sealing",
    "sender_key": b"pigeon vectors: sender key",
}
FILE_CHUNK_SIZE = 256  # small so the vector stays readable; CHUNK_SIZE is 64 KiB
FILE_SIZE = 700
PASSPHRASE = "correct horse battery staple"
NEW_PASSPHRASE = "tr0ub4dor&3"
SEAL_PARAMS = Argon2Params(time_cost=1, memory_kib=64, parallelism=1)
RAISED_PARAMS = Argon2Params(time_cost=2, memory_kib=256, parallelism=2)


def file_plaintext() -> bytes:
    return bytes((i * 31 + 7) % 256 for i in range(FILE_SIZE))


def _padding() -> dict[str, Any]:
    samples = [b"", b"hi", b"\x80", b"x" * 255, b"y" * 256]
    return {
        "message_buckets": {str(n): message_bucket(n) for n in
                            (0, 1, 255, 256, 1000, 4095, 65535, 65536, 200000)},
        "messages": [{"plaintext": p.hex(), "padded": pad_message(p).hex()} for p in samples],
        "file_buckets": {str(n): padded_file_size(n) for n in
                         (0, 541, 542, 1000, 65536, 10**6, 10**9, 2**40)},
    }


def _files() -> dict[str, Any]:
    data = file_plaintext()
    rng = SeededRng(SEEDS["file"])
    enc = FileEncryptor.create(rng, chunk_size=FILE_CHUNK_SIZE)
    chunks = list(encrypt_stream([data], enc))
    layout = FileLayout(FILE_SIZE, FILE_CHUNK_SIZE)
    manifest = enc.manifest(name="notes.txt", media_type="text/plain",
                            blob_id=bytes(range(16)))
    dec = FileDecryptor.from_manifest(manifest)
    assert b"".join(dec.update(c) for c in chunks) == data
    return {
        "seed": SEEDS["file"].decode(),
        "plaintext": data.hex(),
        "chunk_size": FILE_CHUNK_SIZE,
        "key": manifest.key.hex(),
        "file_id": manifest.file_id.hex(),
        "padded_size": layout.padded_size,
        "chunk_count": layout.chunk_count,
        "chunks": [
            {"ad": chunk_ad(manifest.file_id, i, i == layout.chunk_count - 1).hex(),
             "nonce": i.to_bytes(12, "big").hex(), "ciphertext": c.hex()}
            for i, c in enumerate(chunks)
        ],
        "manifest": manifest.to_bytes().hex(),
    }


def _identity(seed: bytes) -> tuple[bytes, bytes]:
    rng = SeededRng(seed)
    account_id = rng(16)
    return account_id, SigningKey(rng(32)).public_key


def _safety() -> dict[str, Any]:
    alice, bob = _identity(SEEDS["alice"]), _identity(SEEDS["bob"])
    digits = safety_number(*alice, *bob)
    return {
        "alice": {"account_id": alice[0].hex(), "identity_key": alice[1].hex(),
                  "fingerprint": fingerprint(*alice).hex()},
        "bob": {"account_id": bob[0].hex(), "identity_key": bob[1].hex(),
                "fingerprint": fingerprint(*bob).hex()},
        "safety_number": digits,
        "formatted": format_safety_number(digits),
        "scannable_alice": scannable_safety_number(*alice, *bob).hex(),
        "scannable_bob": scannable_safety_number(*bob, *alice).hex(),
    }


def _params(p: Argon2Params) -> dict[str, int]:
    return {"time_cost": p.time_cost, "memory_kib": p.memory_kib, "parallelism": p.parallelism}


def _sealing() -> dict[str, Any]:
    rng = SeededRng(SEEDS["sealing"])
    data_key, wrapped = create_data_key(PASSPHRASE, params=SEAL_PARAMS, rng=rng)
    salt = wrapped[13:29]
    sealed = seal(data_key, b"identity private key", ad=b"identity/1", rng=rng)
    rewrapped = rewrap(wrapped, PASSPHRASE, NEW_PASSPHRASE, params=RAISED_PARAMS, rng=rng)
    return {
        "seed": SEEDS["sealing"].decode(),
        "passphrase": PASSPHRASE,
        "params": _params(SEAL_PARAMS),
        "data_key": data_key.key.hex(),
        "salt": salt.hex(),
        "kek": _kek(PASSPHRASE, salt, SEAL_PARAMS).hex(),
        "wrapped": wrapped.hex(),
        "sealed": {"plaintext": b"identity private key".hex(), "ad": b"identity/1".hex(),
                   "sealed": sealed.hex()},
        "rewrapped": {"passphrase": NEW_PASSPHRASE, "params": _params(RAISED_PARAMS),
                      "wrapped": rewrapped.hex()},
    }


def _sender_keys() -> dict[str, Any]:
    alice = OutboundSenderKey.create(SeededRng(SEEDS["sender_key"]))
    initial = alice.to_bytes()
    dist = alice.distribution()
    chain_keys, message_keys, messages = [], [], []
    ck = alice.chain_key
    for i in range(3):
        chain_keys.append(ck.hex())
        message_keys.append(hmac.digest(ck, b"\x01", "sha256").hex())
        ck = hmac.digest(ck, b"\x02", "sha256")
        alice, wire = alice.encrypt(b"group message %d" % i)
        messages.append({"plaintext": (b"group message %d" % i).hex(), "message": wire.hex()})
    record = SenderKeyRecord().process_distribution(dist)
    record, _ = record.decrypt(bytes.fromhex(messages[2]["message"]))
    return {
        "seed": SEEDS["sender_key"].decode(),
        "outbound_state": initial.hex(),
        "outbound_state_after": alice.to_bytes().hex(),
        "distribution": dist.to_bytes().hex(),
        "chain_keys": chain_keys,
        "message_keys": message_keys,
        "messages": messages,
        "record_after_message_2": record.to_bytes().hex(),
    }


def generate() -> dict[str, Any]:
    return {
        "padding": _padding(),
        "files": _files(),
        "safety_numbers": _safety(),
        "sealing": _sealing(),
        "sender_keys": _sender_keys(),
    }
