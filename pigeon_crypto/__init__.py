"""Pigeon's cryptographic core: pure functions and typed objects, no I/O.

Clock (``now_ms``: Unix time in milliseconds) and randomness (``rng``: a
callable returning *n* bytes) are always passed in.
"""

from .errors import (
    AuthError,
    CryptoError,
    DecodeError,
    DecryptionError,
    HeaderDecryptionError,
    InvalidBundle,
    InvalidKey,
    InvalidSignature,
    MessageDecryptionError,
    PigeonError,
    PrekeyNotFound,
    ReplayError,
    StoreError,
    TooManySkipped,
    TransportError,
    UnknownVersion,
    UnsupportedVersion,
    VersionTooOld,
    WrongPassphrase,
)
from .rng import Rng, SeededRng, system_rng
from .signing import Purpose, SigningKey

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
    "Purpose",
    "ReplayError",
    "Rng",
    "SeededRng",
    "SigningKey",
    "StoreError",
    "TooManySkipped",
    "TransportError",
    "UnknownVersion",
    "UnsupportedVersion",
    "VersionTooOld",
    "WrongPassphrase",
    "system_rng",
]
