"""Identities: an Ed25519 signing key plus an X25519 DH key signed by it.

Theory of operation
-------------------
An identity is two key pairs. The Ed25519 key signs (prekeys, relay
challenges, username bindings, rotations, group control); the X25519 key takes
part in PQXDH. The X25519 public key is signed by the Ed25519 key under
``Purpose.IDENTITY_DH``, so an :class:`IdentityPublicKey` is self-certifying and
parsing one verifies it.

An *account id* (16 bytes) names an account for its whole life:
``SHA-256("pigeon/v1/account-id" || first Ed25519 public key)[:16]``. When the
identity key is rotated, the old key signs the new one (and the new key signs
too, proving possession) in an :class:`IdentityRotation`; the account id stays.
A peer whose identity changes *without* such a chain back to the account id is
an "identity changed" event for the application.

Byte layouts (all integers big-endian)
--------------------------------------
``IdentityPublicKey`` (129 bytes)::

    | 0  | u8  | version = 1                                   |
    | 1  | 32  | Ed25519 public key                            |
    | 33 | 32  | X25519 public key                             |
    | 65 | 64  | Sig(Ed25519, IDENTITY_DH, X25519 public key)  |

``IdentityKeyPair`` (65 bytes, secret)::

    | 0  | u8  | version = 1        |
    | 1  | 32  | Ed25519 seed       |
    | 33 | 32  | X25519 private key |

``IdentityRotation`` (1 + 16 + 4 + 129 + 129 + 64 + 64 = 407 bytes)::

    | u8 version | account id 16 | serial u32 | old identity 129 | new identity 129 |
    | signature by old key 64 | signature by new key 64 |

Both signatures are over ``account id || serial || old identity || new identity``
under ``Purpose.IDENTITY_ROTATION``.
"""

from __future__ import annotations

import hashlib
import hmac
from collections.abc import Sequence
from dataclasses import dataclass, field

from . import x25519
from ._codec import Reader, check_version, u32
from .errors import InvalidSignature
from .rng import Rng
from .signing import SIGNATURE_SIZE, Purpose, SigningKey, verify

__all__ = [
    "ACCOUNT_ID_SIZE",
    "IdentityKeyPair",
    "IdentityPublicKey",
    "IdentityRotation",
    "account_id_for",
    "verify_rotation_chain",
]

ACCOUNT_ID_SIZE = 16
_ACCOUNT_ID_CONTEXT = b"pigeon/v1/account-id"
IDENTITY_VERSION = 1
ROTATION_VERSION = 1


@dataclass(frozen=True, slots=True, kw_only=True)
class IdentityPublicKey:
    """A peer's (or our) public identity; always verified when constructed from bytes."""

    signing_key: bytes
    dh_key: bytes
    dh_signature: bytes = field(repr=False)

    SIZE = 1 + 32 + 32 + SIGNATURE_SIZE

    def to_bytes(self) -> bytes:
        return bytes((IDENTITY_VERSION,)) + self.signing_key + self.dh_key + self.dh_signature

    @classmethod
    def from_bytes(cls, data: bytes) -> IdentityPublicKey:
        """Parse and verify.

        Raises:
            DecodeError: wrong length.
            UnknownVersion, VersionTooOld: unsupported version byte.
            InvalidSignature: the DH key is not signed by the signing key.
        """
        r = Reader(data, "IdentityPublicKey")
        check_version("IdentityPublicKey", r.u8(), IDENTITY_VERSION)
        ident = cls(signing_key=r.take(32), dh_key=r.take(32), dh_signature=r.take(SIGNATURE_SIZE))
        r.finish()
        ident.check()
        return ident

    def check(self) -> None:
        """Verify the signature over the DH key (raises InvalidSignature)."""
        verify(self.signing_key, Purpose.IDENTITY_DH, self.dh_key, self.dh_signature)

    def verify(self, purpose: Purpose, payload: bytes, signature: bytes) -> None:
        """Verify a signature made by this identity for *purpose*."""
        verify(self.signing_key, purpose, payload, signature)

    @property
    def fingerprint(self) -> str:
        """A short, public, non-secret label for logs and reprs."""
        return self.signing_key[:6].hex()

    def same_key(self, other: IdentityPublicKey) -> bool:
        """Constant-time equality of the serialized keys."""
        return hmac.compare_digest(self.to_bytes(), other.to_bytes())

    def __repr__(self) -> str:
        return f"IdentityPublicKey({self.fingerprint})"


@dataclass(frozen=True, slots=True, kw_only=True)
class IdentityKeyPair:
    """Our identity. Secret fields never appear in the repr."""

    public: IdentityPublicKey
    signing_seed: bytes = field(repr=False)
    dh_private: bytes = field(repr=False)

    @classmethod
    def generate(cls, rng: Rng) -> IdentityKeyPair:
        return cls.from_secrets(signing_seed=rng(32), dh_private=x25519.generate_private(rng))

    @classmethod
    def from_secrets(cls, *, signing_seed: bytes, dh_private: bytes) -> IdentityKeyPair:
        signer = SigningKey(signing_seed)
        dh_public = x25519.public_from_private(dh_private)
        public = IdentityPublicKey(
            signing_key=signer.public_key,
            dh_key=dh_public,
            dh_signature=signer.sign(Purpose.IDENTITY_DH, dh_public),
        )
        return cls(public=public, signing_seed=bytes(signing_seed), dh_private=bytes(dh_private))

    def sign(self, purpose: Purpose, payload: bytes) -> bytes:
        return SigningKey(self.signing_seed).sign(purpose, payload)

    def dh(self, peer_public: bytes) -> bytes:
        return x25519.dh(self.dh_private, peer_public)

    def to_bytes(self) -> bytes:
        """Secret serialization (seal it before storing; see ``sealing``)."""
        return bytes((IDENTITY_VERSION,)) + self.signing_seed + self.dh_private

    @classmethod
    def from_bytes(cls, data: bytes) -> IdentityKeyPair:
        r = Reader(data, "IdentityKeyPair")
        check_version("IdentityKeyPair", r.u8(), IDENTITY_VERSION)
        seed, dh_private = r.take(32), r.take(32)
        r.finish()
        return cls.from_secrets(signing_seed=seed, dh_private=dh_private)

    def __repr__(self) -> str:
        return f"IdentityKeyPair({self.public.fingerprint})"


def account_id_for(initial_identity: IdentityPublicKey) -> bytes:
    """The stable 16-byte account id derived from an account's first identity."""
    digest = hashlib.sha256(_ACCOUNT_ID_CONTEXT + initial_identity.signing_key).digest()
    return digest[:ACCOUNT_ID_SIZE]


@dataclass(frozen=True, slots=True, kw_only=True)
class IdentityRotation:
    """Replacement of an account's identity key, signed by the old and the new key."""

    account_id: bytes
    serial: int
    old: IdentityPublicKey
    new: IdentityPublicKey
    old_signature: bytes = field(repr=False)
    new_signature: bytes = field(repr=False)

    @staticmethod
    def _payload(account_id: bytes, serial: int, old: IdentityPublicKey,
                 new: IdentityPublicKey) -> bytes:
        return account_id + u32(serial) + old.to_bytes() + new.to_bytes()

    @classmethod
    def create(cls, *, account_id: bytes, serial: int, old: IdentityKeyPair,
               new: IdentityKeyPair) -> IdentityRotation:
        """Sign a rotation from *old* to *new*; *serial* counts rotations from 1."""
        payload = cls._payload(account_id, serial, old.public, new.public)
        return cls(
            account_id=account_id, serial=serial, old=old.public, new=new.public,
            old_signature=old.sign(Purpose.IDENTITY_ROTATION, payload),
            new_signature=new.sign(Purpose.IDENTITY_ROTATION, payload),
        )

    def check(self) -> None:
        """Verify both signatures (raises InvalidSignature)."""
        payload = self._payload(self.account_id, self.serial, self.old, self.new)
        self.old.verify(Purpose.IDENTITY_ROTATION, payload, self.old_signature)
        self.new.verify(Purpose.IDENTITY_ROTATION, payload, self.new_signature)

    def to_bytes(self) -> bytes:
        return (
            bytes((ROTATION_VERSION,)) + self._payload(self.account_id, self.serial, self.old,
                                                       self.new)
            + self.old_signature + self.new_signature
        )

    @classmethod
    def from_bytes(cls, data: bytes) -> IdentityRotation:
        r = Reader(data, "IdentityRotation")
        check_version("IdentityRotation", r.u8(), ROTATION_VERSION)
        account_id, serial = r.take(ACCOUNT_ID_SIZE), r.u32()
        old = IdentityPublicKey.from_bytes(r.take(IdentityPublicKey.SIZE))
        new = IdentityPublicKey.from_bytes(r.take(IdentityPublicKey.SIZE))
        rot = cls(account_id=account_id, serial=serial, old=old, new=new,
                  old_signature=r.take(SIGNATURE_SIZE), new_signature=r.take(SIGNATURE_SIZE))
        r.finish()
        rot.check()
        return rot

    def __repr__(self) -> str:
        return (f"IdentityRotation(serial={self.serial}, {self.old.fingerprint} -> "
                f"{self.new.fingerprint})")


def verify_rotation_chain(account_id: bytes, initial: IdentityPublicKey,
                          rotations: Sequence[IdentityRotation]) -> IdentityPublicKey:
    """Check that *rotations* lead from the account's first identity; return the current one.

    Raises:
        InvalidSignature: the account id does not belong to *initial*, a rotation
            is badly signed, out of order, or does not start from the previous key.
    """
    if not hmac.compare_digest(account_id_for(initial), account_id):
        raise InvalidSignature(Purpose.IDENTITY_ROTATION.label)
    current = initial
    for expected_serial, rot in enumerate(rotations, start=1):
        if (rot.serial != expected_serial or not hmac.compare_digest(rot.account_id, account_id)
                or not rot.old.same_key(current)):
            raise InvalidSignature(Purpose.IDENTITY_ROTATION.label)
        rot.check()
        current = rot.new
    return current
