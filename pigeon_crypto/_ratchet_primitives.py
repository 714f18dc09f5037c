"""Primitives, constants and wire layout of the Double Ratchet (internal).

Everything here is a thin, named wrapper around one ``cryptography`` or PyNaCl
call, so that :mod:`pigeon_crypto.ratchet` reads like the Signal spec and every
info string, constant and byte offset is defined exactly once. The hot path in
``ratchet.py`` calls the aliased primitives (``hmac_digest``, ``AESGCM``,
``xchacha_seal``/``xchacha_open``) directly to avoid a Python call layer per
message; the constants it needs are exported from here.

Normative description: ``docs/protocol.md §7``.
"""

from __future__ import annotations

import hmac
import struct

import nacl.bindings as _sodium
import nacl.exceptions
from cryptography.hazmat.primitives.ciphers.aead import AESGCM

from . import x25519
from ._codec import check_version
from .errors import InvalidKey
from .kdf import ZERO_SALT, hkdf_sha256
from .rng import Rng

__all__ = [
    "AESGCM",
    "BODY_NONCE",
    "CK_CONSTANT",
    "ENC_HEADER_SIZE",
    "HEADER_NONCE_SIZE",
    "HEADER_SIZE",
    "HEAD_SIZE",
    "INIT_INFO",
    "KEY_SIZE",
    "MAX_CHAIN_INDEX",
    "MESSAGE_VERSION",
    "MIN_MESSAGE_SIZE",
    "MK_CONSTANT",
    "ROOT_INFO",
    "TAG_SIZE",
    "VERSION_BYTE",
    "check_message_version",
    "dh",
    "generate_dh",
    "hmac_digest",
    "kdf_init",
    "kdf_rk",
    "load_private",
    "open_header",
    "pack_u32",
    "unpack_counters",
    "xchacha_open",
    "xchacha_seal",
]

# --- sizes and wire layout ----------------------------------------------------------------

MESSAGE_VERSION = 1
"""Version byte of a ratchet message (offset 0)."""
VERSION_BYTE = bytes([MESSAGE_VERSION])
KEY_SIZE = 32
"""Every ratchet key (root, chain, message, header, X25519) is 32 bytes."""
TAG_SIZE = 16
"""Poly1305 and GCM tags."""
HEADER_NONCE_SIZE = 24
"""XChaCha20-Poly1305 nonce, drawn from ``rng`` for every message."""
HEADER_SIZE = KEY_SIZE + 4 + 4
"""Header plaintext: DH ratchet public key (32) || PN (u32 BE) || N (u32 BE)."""
ENC_HEADER_SIZE = HEADER_SIZE + TAG_SIZE
HEAD_SIZE = 1 + HEADER_NONCE_SIZE + ENC_HEADER_SIZE
"""Bytes before the body: version || header nonce || encrypted header (81)."""
MIN_MESSAGE_SIZE = HEAD_SIZE + TAG_SIZE
"""An empty plaintext still carries the 16-byte GCM tag (97 bytes in all)."""
MAX_CHAIN_INDEX = 0xFFFF_FFFE
"""Largest message number N a sender uses, so that N and PN (= N + 1) fit a u32."""

BODY_NONCE = bytes(12)
"""Constant AES-GCM nonce: each message key encrypts exactly one message (spec 5.2)."""

# --- KDF labels and constants ---------------------------------------------------------------

INIT_INFO = b"Pigeon_v1_DoubleRatchet_init"
ROOT_INFO = b"Pigeon_v1_DoubleRatchet_root"
MK_CONSTANT = b"\x01"
"""KDF_CK: message_key = HMAC-SHA-256(chain_key, 0x01) (spec 5.2)."""
CK_CONSTANT = b"\x02"
"""KDF_CK: next chain_key = HMAC-SHA-256(chain_key, 0x02) (spec 5.2)."""

# --- primitive aliases used on the hot path --------------------------------------------------

hmac_digest = hmac.digest
xchacha_seal = _sodium.crypto_aead_xchacha20poly1305_ietf_encrypt
xchacha_open = _sodium.crypto_aead_xchacha20poly1305_ietf_decrypt
_SodiumError = nacl.exceptions.CryptoError

pack_u32 = struct.Struct(">I").pack
unpack_counters = struct.Struct(">II").unpack_from
"""``(PN, N) = unpack_counters(header, 32)``."""



def check_message_version(version: int) -> None:
    """Raise :class:`VersionTooOld` or :class:`UnknownVersion` for a foreign version byte."""
    check_version("ratchet message", version, MESSAGE_VERSION)


def kdf_init(shared_secret: bytes) -> tuple[bytes, bytes, bytes]:
    """Split the PQXDH output into (root_key, shared_hka, shared_nhkb).

    HKDF-SHA-256(ikm=shared_secret, salt=32 zero bytes, info=INIT_INFO, L=96), split 32/32/32.
    """
    okm = hkdf_sha256(shared_secret, salt=ZERO_SALT, info=INIT_INFO, length=3 * KEY_SIZE)
    return okm[:32], okm[32:64], okm[64:]


def kdf_rk(root_key: bytes, dh_out: bytes) -> tuple[bytes, bytes, bytes]:
    """KDF_RK_HE (spec 4.2): returns (root_key, chain_key, next_header_key).

    HKDF-SHA-256(ikm=dh_out, salt=root_key, info=ROOT_INFO, L=96), split 32/32/32.
    """
    okm = hkdf_sha256(dh_out, salt=root_key, info=ROOT_INFO, length=3 * KEY_SIZE)
    return okm[:32], okm[32:64], okm[64:]


def generate_dh(rng: Rng) -> tuple[bytes, bytes]:
    """GENERATE_DH (spec 5.2): a fresh X25519 key pair from 32 bytes of ``rng``.

    Returns the raw private scalar and the 32 raw public bytes (libsodium,
    through :mod:`pigeon_crypto.x25519`).
    """
    raw = rng(KEY_SIZE)
    if len(raw) != KEY_SIZE:
        raise InvalidKey(f"rng returned {len(raw)} bytes for an X25519 key, expected {KEY_SIZE}")
    return raw, x25519.public_from_private(raw)


def load_private(raw: bytes) -> tuple[bytes, bytes]:
    """Check 32 raw X25519 private bytes; returns (private, public bytes)."""
    if len(raw) != KEY_SIZE:
        raise InvalidKey(f"X25519 private key must be {KEY_SIZE} bytes")
    raw = bytes(raw)
    return raw, x25519.public_from_private(raw)


def dh(private: bytes, peer_public: bytes) -> bytes:
    """DH (spec 5.2): X25519, rejecting a low-order peer key (all-zero output).

    Raises:
        InvalidKey: ``peer_public`` is not 32 bytes or yields the all-zero secret.
    """
    return x25519.dh(private, peer_public)


def open_header(header_key: bytes, nonce: bytes, enc_header: bytes) -> bytes | None:
    """HDECRYPT (spec 4.2): the 40-byte header plaintext, or ``None`` if the key does not fit."""
    try:
        out: bytes = xchacha_open(enc_header, VERSION_BYTE, nonce, header_key)
    except _SodiumError:
        return None
    return out
