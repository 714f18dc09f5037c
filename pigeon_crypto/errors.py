"""The one exception hierarchy of Pigeon.

Every error the toolkit raises derives from :class:`PigeonError`. This module is
the lowest layer (no imports from the rest of the project); ``protocol``,
``relay`` and ``client_sdk`` re-export and extend it.

Families::

    PigeonError
    ├── CryptoError
    │   ├── DecodeError            malformed bytes: wrong length, truncated, trailing data
    │   ├── UnsupportedVersion
    │   │   ├── VersionTooOld      a version we used to speak and no longer accept
    │   │   └── UnknownVersion     a version newer than (or foreign to) this code
    │   ├── InvalidKey             key bytes rejected by the primitive
    │   ├── InvalidSignature       a signature that does not verify for its purpose
    │   ├── InvalidBundle          a prekey bundle that fails verification
    │   ├── DecryptionError        an AEAD check failed
    │   │   ├── HeaderDecryptionError
    │   │   └── MessageDecryptionError
    │   ├── ReplayError            a duplicate or replayed message / initiation
    │   ├── TooManySkipped         a message gap beyond MAX_SKIP
    │   ├── PrekeyNotFound         an initiation names a prekey we do not hold
    │   └── WrongPassphrase        sealing at rest: the passphrase does not unwrap
    ├── ProtocolError (code)       defined in ``protocol``; Local/Remote split
    ├── StoreError
    ├── TransportError
    └── AuthError

Rules: errors carry structured fields, never key or plaintext bytes; messages
are safe to log.
"""

from __future__ import annotations

__all__ = [
    "AuthError",
    "CryptoError",
    "DecodeError",
    "DecryptionError",
    "HeaderDecryptionError",
    "InvalidBundle",
    "InvalidKey",
    "InvalidSignature",
    "MessageDecryptionError",
    "PigeonError",
    "PrekeyNotFound",
    "ReplayError",
    "StoreError",
    "TooManySkipped",
    "TransportError",
    "UnknownVersion",
    "UnsupportedVersion",
    "VersionTooOld",
    "WrongPassphrase",
]


class PigeonError(Exception):
    """Root of every error raised by Pigeon."""


class CryptoError(PigeonError):
    """A cryptographic object or operation was rejected."""


class DecodeError(CryptoError):
    """Serialized bytes are malformed (wrong length, truncated, trailing bytes).

    Attributes:
        what: the kind of object being decoded, e.g. ``"IdentityPublicKey"``.
        reason: a short description safe to log.
    """

    def __init__(self, what: str, reason: str) -> None:
        super().__init__(f"cannot decode {what}: {reason}")
        self.what = what
        self.reason = reason


class UnsupportedVersion(CryptoError):
    """A versioned object carries a version this code does not accept."""

    def __init__(self, what: str, got: int, supported: tuple[int, ...]) -> None:
        super().__init__(f"{what}: unsupported version {got} (supported: {list(supported)})")
        self.what = what
        self.got = got
        self.supported = supported


class VersionTooOld(UnsupportedVersion):
    """The version is older than the oldest one still accepted."""


class UnknownVersion(UnsupportedVersion):
    """The version is newer than (or unknown to) this code."""


class InvalidKey(CryptoError):
    """Key bytes were rejected by the primitive (wrong size or invalid point)."""


class InvalidSignature(CryptoError):
    """A signature did not verify for the stated purpose.

    Attributes:
        purpose: the signature context (e.g. ``"signed-prekey"``), never key bytes.
    """

    def __init__(self, purpose: str) -> None:
        super().__init__(f"invalid signature for purpose {purpose!r}")
        self.purpose = purpose


class InvalidBundle(CryptoError):
    """A prekey bundle failed verification (missing or badly signed prekeys)."""


class DecryptionError(CryptoError):
    """An authenticated decryption failed (wrong key or tampered bytes)."""


class HeaderDecryptionError(DecryptionError):
    """No known header key decrypts the message header (tampered or foreign)."""


class MessageDecryptionError(DecryptionError):
    """The header decrypted but the body did not (tampered body or AD)."""


class ReplayError(CryptoError):
    """A message or initiation was already processed (duplicate or replay)."""


class TooManySkipped(CryptoError):
    """Accepting the message would skip more message keys than allowed.

    Attributes:
        got: the number of keys that would be skipped.
        maximum: the limit (``MAX_SKIP``).
    """

    def __init__(self, got: int, maximum: int) -> None:
        super().__init__(f"message gap of {got} exceeds the maximum of {maximum}")
        self.got = got
        self.maximum = maximum


class PrekeyNotFound(CryptoError):
    """An initiation refers to a prekey that we do not hold (used, expired, unknown).

    Attributes:
        kind: ``"signed"``, ``"kem"`` or ``"one-time"``.
        key_id: the prekey id named by the peer.
    """

    def __init__(self, kind: str, key_id: int) -> None:
        super().__init__(f"no {kind} prekey with id {key_id}")
        self.kind = kind
        self.key_id = key_id


class WrongPassphrase(CryptoError):
    """The passphrase does not unwrap the sealed data key."""


class StoreError(PigeonError):
    """A persistent store failed or holds data we cannot read."""


class TransportError(PigeonError):
    """The connection to a relay failed or was closed."""


class AuthError(PigeonError):
    """Authentication with a relay failed."""
