"""Safety numbers: a human-comparable and scannable fingerprint of two identities.

Theory of operation (spec: "Safety numbers", docs/protocol.md)
    Signal's *NumericFingerprint* construction (libsignal
    ``rust/protocol/src/fingerprint.rs``), applied to Pigeon identities. An
    identity is ``(account_id: 16 bytes, identity_key: Ed25519 public key, 32
    bytes)``. Each party's fingerprint is iterated SHA-512::

        h_0 = SHA-512(0x0000 || identity_key || account_id || identity_key)
        h_i = SHA-512(h_{i-1} || identity_key)          for i = 1 .. 5199

    and ``f = h_5199`` (5200 hashes in all, as Signal: > 112 bits of work for
    an attacker searching a colliding identity). The first 30 bytes of ``f``
    give 30 digits: six 5-byte big-endian integers, each ``mod 100000``,
    zero-padded to 5 digits.

    The *displayable* safety number is the two 30-digit halves concatenated,
    the smaller string first, so both parties see the same 60 digits whatever
    side computes them (12 groups of 5 when formatted). It changes when
    either identity key or account id changes.

    The *scannable* form (for QR codes) is ``version (u8 = 1) || local_f[:32] ||
    remote_f[:32]``, 65 bytes. A scanner compares, in constant time, the
    scanned local half with its own remote half and vice versa.

The construction is checked against Signal's published test vectors in
``tests/unit/pigeon_crypto/test_safety.py`` (same function, Signal's 33-byte
keys and phone-number identifiers).
"""

from __future__ import annotations

import hashlib
import hmac

from ._codec import Reader, check_version
from .errors import InvalidKey

__all__ = [
    "ACCOUNT_ID_SIZE",
    "FINGERPRINT_ITERATIONS",
    "IDENTITY_KEY_SIZE",
    "SCANNABLE_SIZE",
    "SCANNABLE_VERSION",
    "fingerprint",
    "format_safety_number",
    "safety_number",
    "scannable_safety_number",
    "verify_scanned",
]

#: Iterations of SHA-512 per fingerprint (Signal's value: > 112 bits).
FINGERPRINT_ITERATIONS = 5200
ACCOUNT_ID_SIZE = 16
IDENTITY_KEY_SIZE = 32
SCANNABLE_VERSION = 1
#: Bytes of each fingerprint carried in the scannable form.
SCANNABLE_HALF = 32
SCANNABLE_SIZE = 1 + 2 * SCANNABLE_HALF

_FINGERPRINT_VERSION = b"\x00\x00"


def _iterated_hash(key: bytes, stable_id: bytes, iterations: int) -> bytes:
    # Signal's get_fingerprint: the key is appended at every step.
    h = hashlib.sha512(_FINGERPRINT_VERSION + key + stable_id + key).digest()
    sha512 = hashlib.sha512
    for _ in range(iterations - 1):
        h = sha512(h + key).digest()
    return h


def _digits(f: bytes) -> str:
    return "".join(
        f"{int.from_bytes(f[i : i + 5], 'big') % 100_000:05d}" for i in range(0, 30, 5)
    )


def _check_identity(account_id: bytes, identity_key: bytes) -> None:
    if len(account_id) != ACCOUNT_ID_SIZE:
        raise InvalidKey(f"account id must be {ACCOUNT_ID_SIZE} bytes")
    if len(identity_key) != IDENTITY_KEY_SIZE:
        raise InvalidKey(f"identity key must be {IDENTITY_KEY_SIZE} bytes")


def fingerprint(account_id: bytes, identity_key: bytes) -> bytes:
    """One party's 64-byte fingerprint (iterated SHA-512).

    Raises:
        InvalidKey: wrong account id or key size.
    """
    _check_identity(account_id, identity_key)
    return _iterated_hash(bytes(identity_key), bytes(account_id), FINGERPRINT_ITERATIONS)


def _combine(local_f: bytes, remote_f: bytes) -> str:
    a, b = _digits(local_f), _digits(remote_f)
    return a + b if a <= b else b + a


def safety_number(
    local_account_id: bytes, local_identity_key: bytes,
    remote_account_id: bytes, remote_identity_key: bytes,
) -> str:
    """The 60-digit safety number of a pair of identities (same on both sides).

    Raises:
        InvalidKey: wrong account id or key size.
    """
    return _combine(
        fingerprint(local_account_id, local_identity_key),
        fingerprint(remote_account_id, remote_identity_key),
    )


def format_safety_number(digits: str) -> str:
    """Group 60 digits into 12 blocks of 5 separated by spaces (display only)."""
    return " ".join(digits[i : i + 5] for i in range(0, len(digits), 5))


def scannable_safety_number(
    local_account_id: bytes, local_identity_key: bytes,
    remote_account_id: bytes, remote_identity_key: bytes,
) -> bytes:
    """The QR payload: ``0x01 || local_fingerprint[:32] || remote_fingerprint[:32]``."""
    local_f = fingerprint(local_account_id, local_identity_key)
    remote_f = fingerprint(remote_account_id, remote_identity_key)
    return bytes([SCANNABLE_VERSION]) + local_f[:SCANNABLE_HALF] + remote_f[:SCANNABLE_HALF]


def verify_scanned(
    local_account_id: bytes, local_identity_key: bytes,
    remote_account_id: bytes, remote_identity_key: bytes, scanned: bytes,
) -> bool:
    """Check a scanned QR payload made by the remote party.

    The payload's first half must be the remote party's fingerprint and its
    second half ours. Both comparisons run in constant time and both always run.

    Returns:
        True if both halves match, False otherwise.

    Raises:
        DecodeError: the payload has the wrong length.
        UnknownVersion / VersionTooOld: unsupported scannable version.
        InvalidKey: wrong account id or key size.
    """
    r = Reader(scanned, "ScannableSafetyNumber")
    check_version("ScannableSafetyNumber", r.u8(), SCANNABLE_VERSION)
    their_local = r.take(SCANNABLE_HALF)
    their_remote = r.take(SCANNABLE_HALF)
    r.finish()
    local_f = fingerprint(local_account_id, local_identity_key)[:SCANNABLE_HALF]
    remote_f = fingerprint(remote_account_id, remote_identity_key)[:SCANNABLE_HALF]
    same1 = hmac.compare_digest(their_local, remote_f)
    same2 = hmac.compare_digest(their_remote, local_f)
    return same1 & same2
