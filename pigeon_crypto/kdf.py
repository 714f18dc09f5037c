"""Key derivation: HKDF-SHA-256 (RFC 5869) and HMAC-SHA-256.

Thin wrappers so every KDF call in Pigeon names its info string in one place.
HKDF comes from ``cryptography``; HMAC from the standard library's
``hmac.digest`` (OpenSSL one-shot, the fastest call available).
"""

from __future__ import annotations

import hmac

from cryptography.hazmat.primitives import hashes
from cryptography.hazmat.primitives.kdf.hkdf import HKDF

__all__ = ["ZERO_SALT", "hkdf_sha256", "hmac_sha256"]

ZERO_SALT = bytes(32)


def hkdf_sha256(ikm: bytes, *, salt: bytes | None, info: bytes, length: int) -> bytes:
    """HKDF-SHA-256 extract-and-expand (RFC 5869). ``salt=None`` means 32 zero bytes."""
    return HKDF(
        algorithm=hashes.SHA256(), length=length, salt=salt if salt is not None else ZERO_SALT,
        info=info,
    ).derive(ikm)


def hmac_sha256(key: bytes, data: bytes) -> bytes:
    """HMAC-SHA-256(key, data)."""
    return hmac.digest(key, data, "sha256")
