"""Vectors for the Double Ratchet with header encryption (docs/vectors/ratchet.json).

Everything comes from fixed ``SeededRng`` seeds. The scenario is run twice: by
``pigeon_crypto.ratchet`` and by :class:`Model`, a short transcription of
docs/protocol.md §7 written directly on the primitives
(``cryptography`` HKDF/X25519/AES-GCM, ``hmac.digest``, PyNaCl XChaCha20-
Poly1305). Generation fails unless both produce the same bytes; the model
supplies the recorded intermediate values (root, chain, message and header
keys, DH outputs, header plaintexts).

Scenario (``events``):

1. A→B ``a0``: Bob's first message (his DH step), delivered at once.
2. A→B ``a1``, ``a2``; ``a2`` delivered first (``a1``'s key is skipped).
3. B→A ``b0``: Bob's first send (new ratchet key), Alice's DH step.
4. A→B ``a3``: Alice's new chain, PN = 3; Bob's DH step.
5. ``a1`` delivered late, from the previous chain (skipped-key store).
6. B→A ``b1``, ``b2``, in order.

Each send records the RNG bytes it consumed, the sender's snapshot before and
after, and every intermediate value; each delivery records the receiver's
snapshot before and after, so tests can replay any event alone.
"""

from __future__ import annotations

import hmac
import struct
from typing import Any

from cryptography.hazmat.primitives import hashes
from cryptography.hazmat.primitives.asymmetric.x25519 import X25519PrivateKey, X25519PublicKey
from cryptography.hazmat.primitives.ciphers.aead import AESGCM
from cryptography.hazmat.primitives.kdf.hkdf import HKDF
from nacl.bindings import (
    crypto_aead_xchacha20poly1305_ietf_decrypt,
    crypto_aead_xchacha20poly1305_ietf_encrypt,
)

from pigeon_crypto.ratchet import init_initiator, init_responder
from pigeon_crypto.rng import Rng, SeededRng

FILENAME = "ratchet.json"
NOW_MS = 1_790_000_000_000
SEEDS = {
    "shared_secret": b"pigeon vectors: ratchet shared secret",
    "identities": b"pigeon vectors: ratchet identities",
    "bob_signed_prekey": b"pigeon vectors: ratchet bob signed prekey",
    "alice": b"pigeon vectors: ratchet alice",
    "bob": b"pigeon vectors: ratchet bob",
}
INIT_INFO = b"Pigeon_v1_DoubleRatchet_init"
ROOT_INFO = b"Pigeon_v1_DoubleRatchet_root"
VERSION = b"\x01"
ZERO_NONCE = bytes(12)

SCRIPT: list[tuple[str, str, str]] = [
    # (action, party, label)
    ("send", "alice", "a0"),
    ("deliver", "bob", "a0"),
    ("send", "alice", "a1"),
    ("send", "alice", "a2"),
    ("deliver", "bob", "a2"),
    ("send", "bob", "b0"),
    ("deliver", "alice", "b0"),
    ("send", "alice", "a3"),
    ("deliver", "bob", "a3"),
    ("deliver", "bob", "a1"),
    ("send", "bob", "b1"),
    ("send", "bob", "b2"),
    ("deliver", "alice", "b1"),
    ("deliver", "alice", "b2"),
]


def hkdf(ikm: bytes, salt: bytes, info: bytes) -> tuple[bytes, bytes, bytes]:
    okm = HKDF(algorithm=hashes.SHA256(), length=96, salt=salt, info=info).derive(ikm)
    return okm[:32], okm[32:64], okm[64:]


def x25519(private: bytes, public: bytes) -> bytes:
    return X25519PrivateKey.from_private_bytes(private).exchange(
        X25519PublicKey.from_public_bytes(public))


def public_of(private: bytes) -> bytes:
    return X25519PrivateKey.from_private_bytes(private).public_key().public_bytes_raw()


def kdf_ck(chain_key: bytes) -> tuple[bytes, bytes]:
    """(message_key, next chain_key)."""
    return hmac.digest(chain_key, b"\x01", "sha256"), hmac.digest(chain_key, b"\x02", "sha256")


class Recorder:
    """Wraps a SeededRng and remembers the bytes handed out since the last ``take``."""

    def __init__(self, seed: bytes) -> None:
        self.rng = SeededRng(seed)
        self.out = b""

    def __call__(self, n: int) -> bytes:
        data = self.rng(n)
        self.out += data
        return data

    def take(self) -> bytes:
        out, self.out = self.out, b""
        return out


class Replay:
    """Hands out recorded bytes in order (lets the model and tests consume what the library did)."""

    def __init__(self, data: bytes) -> None:
        self.data = data

    def __call__(self, n: int) -> bytes:
        out, self.data = self.data[:n], self.data[n:]
        assert len(out) == n, "replayed RNG ran out of bytes"
        return out


class Model:
    """One party, transcribed from the spec chapter on raw primitives (no skipped-key bounds)."""

    def __init__(self, ad: bytes, root_key: bytes) -> None:
        self.ad = ad
        self.rk = root_key
        self.dhs: bytes | None = None
        self.dhr: bytes | None = None
        self.cks: bytes | None = None
        self.ckr: bytes | None = None
        self.ns = self.nr = self.pn = 0
        self.hks: bytes | None = None
        self.hkr: bytes | None = None
        self.nhks = b""
        self.nhkr = b""
        self.pending = False
        self.skipped: dict[tuple[bytes, int], bytes] = {}

    def encrypt(self, plaintext: bytes, rng: Rng, rec: dict[str, Any]) -> bytes:
        if self.pending:  # second half of the DH step, deferred to the first send
            assert self.dhr is not None
            self.dhs = rng(32)
            dh_out = x25519(self.dhs, self.dhr)
            rec["dh_step"] = {"root_key_before": self.rk.hex(), "ratchet_private": self.dhs.hex(),
                              "ratchet_public": public_of(self.dhs).hex(),
                              "peer_ratchet_public": self.dhr.hex(), "dh_output": dh_out.hex()}
            self.rk, self.cks, self.nhks = hkdf(dh_out, self.rk, ROOT_INFO)
            rec["dh_step"] |= {"root_key": self.rk.hex(), "chain_key": self.cks.hex(),
                               "next_header_key": self.nhks.hex()}
            self.pending = False
        assert self.cks is not None and self.hks is not None and self.dhs is not None
        message_key, next_chain_key = kdf_ck(self.cks)
        header = public_of(self.dhs) + struct.pack(">II", self.pn, self.ns)
        nonce = rng(24)
        enc_header = crypto_aead_xchacha20poly1305_ietf_encrypt(header, VERSION, nonce, self.hks)
        head = VERSION + nonce + enc_header
        body = AESGCM(message_key).encrypt(ZERO_NONCE, plaintext, self.ad + head)
        rec |= {"chain_key": self.cks.hex(), "message_key": message_key.hex(),
                "next_chain_key": next_chain_key.hex(), "header_key": self.hks.hex(),
                "header_nonce": nonce.hex(), "header_plaintext": header.hex(),
                "header": {"ratchet_public": header[:32].hex(), "pn": self.pn, "n": self.ns},
                "encrypted_header": enc_header.hex(), "body_ad": (self.ad + head).hex(),
                "body_ciphertext": body.hex()}
        self.cks, self.ns = next_chain_key, self.ns + 1
        return head + body

    def decrypt(self, message: bytes, rec: dict[str, Any]) -> bytes:
        nonce, enc_header, head = message[1:25], message[25:81], message[:81]
        for (hk, n), mk in list(self.skipped.items()):
            header = self._open(hk, nonce, enc_header)
            if header is not None and struct.unpack(">II", header[32:])[1] == n:
                del self.skipped[(hk, n)]
                rec |= {"path": "skipped", "header_key": hk.hex(), "message_key": mk.hex()}
                return AESGCM(mk).decrypt(ZERO_NONCE, message[81:], self.ad + head)
        header = self._open(self.hkr, nonce, enc_header) if self.hkr else None
        rec["path"] = "current"
        if header is None:
            header = self._open(self.nhkr, nonce, enc_header)
            assert header is not None, "no header key fits"
            rec["path"] = "dh-step"
            pn, n = struct.unpack(">II", header[32:])
            self._skip(pn)
            self.pn, self.ns, self.nr = self.ns, 0, 0
            self.hks, self.hkr, self.dhr = self.nhks, self.nhkr, header[:32]
            assert self.dhs is not None
            dh_out = x25519(self.dhs, self.dhr)
            rec["dh_step"] = {"root_key_before": self.rk.hex(), "dh_output": dh_out.hex(),
                              "peer_ratchet_public": self.dhr.hex()}
            self.rk, self.ckr, self.nhkr = hkdf(dh_out, self.rk, ROOT_INFO)
            rec["dh_step"] |= {"root_key": self.rk.hex(), "chain_key": self.ckr.hex(),
                               "next_header_key": self.nhkr.hex()}
            self.dhs, self.cks, self.pending = None, None, True
        n = struct.unpack(">II", header[32:])[1]
        self._skip(n)
        assert self.ckr is not None and self.hkr is not None
        message_key, self.ckr = kdf_ck(self.ckr)
        self.nr += 1
        rec |= {"header_key": self.hkr.hex(), "message_key": message_key.hex()}
        return AESGCM(message_key).decrypt(ZERO_NONCE, message[81:], self.ad + head)

    def _skip(self, until: int) -> None:
        while self.ckr is not None and self.hkr is not None and self.nr < until:
            self.skipped[(self.hkr, self.nr)], self.ckr = kdf_ck(self.ckr)
            self.nr += 1

    @staticmethod
    def _open(key: bytes, nonce: bytes, enc_header: bytes) -> bytes | None:
        try:
            out: bytes = crypto_aead_xchacha20poly1305_ietf_decrypt(enc_header, VERSION, nonce, key)
        except Exception:  # nacl CryptoError: wrong key
            return None
        return out


def generate() -> dict[str, Any]:
    shared_secret = SeededRng(SEEDS["shared_secret"])(32)
    ids = SeededRng(SEEDS["identities"])
    associated_data = ids(32) + ids(32)  # stands for IK_A || IK_B
    bob_private = SeededRng(SEEDS["bob_signed_prekey"])(32)
    bob_public = public_of(bob_private)
    rngs = {"alice": Recorder(SEEDS["alice"]), "bob": Recorder(SEEDS["bob"])}

    # -- init: library and model
    root_key, shared_hka, shared_nhkb = hkdf(shared_secret, bytes(32), INIT_INFO)
    states = {
        "alice": init_initiator(shared_secret=shared_secret, peer_ratchet_public=bob_public,
                                associated_data=associated_data, rng=rngs["alice"]),
        "bob": init_responder(shared_secret=shared_secret, our_ratchet_private=bob_private,
                              associated_data=associated_data),
    }
    alice_private = rngs["alice"].take()
    alice, bob = Model(associated_data, root_key), Model(associated_data, root_key)
    alice.dhs, alice.dhr, alice.hks, alice.nhkr = alice_private, bob_public, shared_hka, shared_nhkb
    alice_dh = x25519(alice_private, bob_public)
    alice.rk, alice.cks, alice.nhks = hkdf(alice_dh, root_key, ROOT_INFO)
    bob.dhs, bob.nhks, bob.nhkr = bob_private, shared_nhkb, shared_hka
    models = {"alice": alice, "bob": bob}
    init = {
        "shared_secret": shared_secret.hex(),
        "associated_data": associated_data.hex(),
        "root_key": root_key.hex(),
        "shared_hka": shared_hka.hex(),
        "shared_nhkb": shared_nhkb.hex(),
        "bob_ratchet_private": bob_private.hex(),
        "bob_ratchet_public": bob_public.hex(),
        "alice_ratchet_private": alice_private.hex(),
        "alice_ratchet_public": public_of(alice_private).hex(),
        "alice_dh_output": alice_dh.hex(),
        "alice_root_key": alice.rk.hex(),
        "alice_sending_chain_key": alice.cks.hex(),
        "alice_next_header_key_send": alice.nhks.hex(),
        "alice_state": states["alice"].to_bytes().hex(),
        "bob_state": states["bob"].to_bytes().hex(),
    }

    messages: dict[str, bytes] = {}
    plaintexts: dict[str, bytes] = {}
    events: list[dict[str, Any]] = []
    for action, party, label in SCRIPT:
        state = states[party]
        rec: dict[str, Any] = {"action": action, "party": party, "label": label,
                               "state_before": state.to_bytes().hex()}
        if action == "send":
            plaintext = f"{label}: hello from {party}".encode()
            out = state.encrypt(plaintext, rng=rngs[party])
            rng_bytes = rngs[party].take()
            expected = models[party].encrypt(plaintext, Replay(rng_bytes), rec)
            assert out.message == expected, f"library and model disagree on {label}"
            messages[label], plaintexts[label] = out.message, plaintext
            states[party] = out.state
            rec |= {"rng_output": rng_bytes.hex(), "plaintext": plaintext.hex(),
                    "message": out.message.hex()}
        else:
            got = state.decrypt(messages[label], now_ms=NOW_MS)
            assert got.plaintext == plaintexts[label]
            assert models[party].decrypt(messages[label], rec) == got.plaintext
            states[party] = got.state
            rec |= {"now_ms": NOW_MS, "message": messages[label].hex(),
                    "plaintext": got.plaintext.hex()}
        rec["state_after"] = states[party].to_bytes().hex()
        events.append(rec)

    return {
        "description": "Pigeon Double Ratchet with header encryption, version 1: init, "
                       "in-order and out-of-order delivery, DH steps. Hex everywhere. "
                       "Spec: docs/protocol.md §7.",
        "constants": {
            "init_info": INIT_INFO.hex(), "root_info": ROOT_INFO.hex(),
            "message_key_constant": "01", "chain_key_constant": "02",
            "message_version": 1, "snapshot_version": 1, "body_nonce": ZERO_NONCE.hex(),
        },
        "init": init,
        "events": events,
    }

