"""Domain-separated Ed25519 signatures.

Every signature in Pigeon is made over ``context || 0x00 || payload`` where
*context* is one of the :class:`Purpose` strings below. The contexts are
ASCII and contain no zero byte, so the encoding is prefix-free: a signature
made for one purpose never verifies for another (tested in
``tests/unit/pigeon_crypto/test_signing.py``).

Ed25519 (RFC 8032) comes from libsodium through PyNaCl's low-level bindings,
which verify about twice as fast as the alternatives measured here.
"""

from __future__ import annotations

import enum

import nacl.bindings as _sodium
import nacl.exceptions

from .errors import InvalidKey, InvalidSignature

__all__ = [
    "PUBLIC_KEY_SIZE",
    "SEED_SIZE",
    "SIGNATURE_SIZE",
    "Purpose",
    "SigningKey",
    "sign",
    "verify",
]

SEED_SIZE = 32
PUBLIC_KEY_SIZE = 32
SIGNATURE_SIZE = 64


class Purpose(enum.Enum):
    """Signature contexts. The value is the exact byte prefix that is signed."""

    IDENTITY_DH = b"pigeon/v1/identity-dh"
    SIGNED_PREKEY = b"pigeon/v1/signed-prekey"
    KEM_PREKEY = b"pigeon/v1/kem-prekey"
    RELAY_CHALLENGE = b"pigeon/v1/relay-challenge"
    USERNAME_BINDING = b"pigeon/v1/username-binding"
    IDENTITY_ROTATION = b"pigeon/v1/identity-rotation"
    GROUP_CONTROL = b"pigeon/v1/group-control"
    SENDER_KEY_MESSAGE = b"pigeon/v1/sender-key-message"
    SENDER_KEY_DISTRIBUTION = b"pigeon/v1/sender-key-distribution"

    @property
    def label(self) -> str:
        return self.value.decode("ascii").rsplit("/", 1)[-1]


def _signed_bytes(purpose: Purpose, payload: bytes) -> bytes:
    return purpose.value + b"\x00" + payload


class SigningKey:
    """An Ed25519 private key built from a 32-byte seed. The repr never shows it."""

    __slots__ = ("_public", "_sk")

    def __init__(self, seed: bytes) -> None:
        if len(seed) != SEED_SIZE:
            raise InvalidKey(f"Ed25519 seed must be {SEED_SIZE} bytes")
        pk, sk = _sodium.crypto_sign_seed_keypair(bytes(seed))
        self._public: bytes = pk
        self._sk: bytes = sk

    @property
    def public_key(self) -> bytes:
        return self._public

    @property
    def seed(self) -> bytes:
        return self._sk[:SEED_SIZE]

    def sign(self, purpose: Purpose, payload: bytes) -> bytes:
        """Sign *payload* for *purpose*; returns the 64-byte signature."""
        return _sodium.crypto_sign(_signed_bytes(purpose, payload), self._sk)[:SIGNATURE_SIZE]

    def __repr__(self) -> str:
        return f"SigningKey(public={self._public[:4].hex()}…)"


def sign(seed: bytes, purpose: Purpose, payload: bytes) -> bytes:
    """One-shot: sign *payload* for *purpose* with the key of *seed*."""
    return SigningKey(seed).sign(purpose, payload)


def verify(public_key: bytes, purpose: Purpose, payload: bytes, signature: bytes) -> None:
    """Verify a signature made for *purpose*.

    Raises:
        InvalidSignature: the signature is wrong, for another purpose, or
            either the key or the signature has the wrong size.
    """
    if len(public_key) != PUBLIC_KEY_SIZE or len(signature) != SIGNATURE_SIZE:
        raise InvalidSignature(purpose.label)
    try:
        _sodium.crypto_sign_open(bytes(signature) + _signed_bytes(purpose, payload), public_key)
    except (nacl.exceptions.BadSignatureError, nacl.exceptions.ValueError) as exc:
        raise InvalidSignature(purpose.label) from exc
