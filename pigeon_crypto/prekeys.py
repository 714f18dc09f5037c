"""Prekeys and the prekey bundle that PQXDH consumes.

A responder publishes, signed by its identity key (Ed25519):

* one **signed prekey** (X25519), rotated on a schedule; the old one is kept
  for a grace period so in-flight initiations still complete;
* many **one-time prekeys** (X25519), each handed out once and deleted on use;
* **KEM prekeys** (ML-KEM-768, FIPS 203), signed: one *last-resort* key that
  is handed out when the one-time KEM keys run out, and many *one-time* ones.

A :class:`PreKeyBundle` is what an initiator fetches: identity, signed prekey,
one KEM prekey (mandatory: Pigeon has no classical fallback) and optionally a
one-time prekey. Parsing a bundle verifies every signature.

Byte layouts (integers big-endian)::

    SignedPreKey (109):  u8 version=1 | u32 key_id | u64 created_ms | 32 public | 64 sig
        sig = Sig(identity, SIGNED_PREKEY, version | key_id | created_ms | public)
    OneTimePreKey (37):  u8 version=1 | u32 key_id | 32 public
    KemPreKey (1262):    u8 version=1 | u32 key_id | u8 kind | u64 created_ms
                         | 1184 ML-KEM-768 encapsulation key | 64 sig
        kind: 1 = last resort, 2 = one-time
        sig = Sig(identity, KEM_PREKEY, version | key_id | kind | created_ms | public)
    PreKeyBundle:        u8 version=1 | 129 identity | 109 signed prekey | 1262 KEM prekey
                         | u8 has_one_time (0/1) | [37 one-time prekey]

Private counterparts (secret; seal them at rest)::

    SignedPreKeyPair (109):  u8 version=1 | u32 key_id | u64 created_ms | 32 private | 64 sig
    OneTimePreKeyPair (37):  u8 version=1 | u32 key_id | 32 private
    KemPreKeyPair (142):     u8 version=1 | u32 key_id | u8 kind | u64 created_ms
                             | 64 ML-KEM seed (d || z) | 64 sig
"""

from __future__ import annotations

import enum
from dataclasses import dataclass, field

from cryptography.hazmat.primitives.asymmetric import mlkem

from . import x25519
from ._codec import Reader, check_version, u32, u64
from .errors import DecodeError, InvalidBundle, InvalidKey, InvalidSignature
from .identity import IdentityKeyPair, IdentityPublicKey
from .rng import Rng
from .signing import SIGNATURE_SIZE, Purpose

__all__ = [
    "KEM_CIPHERTEXT_SIZE",
    "KEM_PUBLIC_SIZE",
    "KemKind",
    "KemPreKey",
    "KemPreKeyPair",
    "OneTimePreKey",
    "OneTimePreKeyPair",
    "PreKeyBundle",
    "SignedPreKey",
    "SignedPreKeyPair",
]

PREKEY_VERSION = 1
KEM_PUBLIC_SIZE = 1184
KEM_CIPHERTEXT_SIZE = 1088
KEM_SEED_SIZE = 64


class KemKind(enum.IntEnum):
    LAST_RESORT = 1
    ONE_TIME = 2


# --- signed X25519 prekey -------------------------------------------------------------


@dataclass(frozen=True, slots=True, kw_only=True)
class SignedPreKey:
    key_id: int
    created_ms: int
    public: bytes
    signature: bytes = field(repr=False)

    SIZE = 1 + 4 + 8 + 32 + SIGNATURE_SIZE

    def _signed(self) -> bytes:
        return bytes((PREKEY_VERSION,)) + u32(self.key_id) + u64(self.created_ms) + self.public

    def to_bytes(self) -> bytes:
        return self._signed() + self.signature

    @classmethod
    def from_bytes(cls, data: bytes) -> SignedPreKey:
        r = Reader(data, "SignedPreKey")
        check_version("SignedPreKey", r.u8(), PREKEY_VERSION)
        key = cls(key_id=r.u32(), created_ms=r.u64(), public=r.take(32),
                  signature=r.take(SIGNATURE_SIZE))
        r.finish()
        return key

    def check(self, identity: IdentityPublicKey) -> None:
        identity.verify(Purpose.SIGNED_PREKEY, self._signed(), self.signature)


@dataclass(frozen=True, slots=True, kw_only=True)
class SignedPreKeyPair:
    public: SignedPreKey
    private: bytes = field(repr=False)

    @classmethod
    def generate(cls, identity: IdentityKeyPair, *, key_id: int, now_ms: int,
                 rng: Rng) -> SignedPreKeyPair:
        private = x25519.generate_private(rng)
        unsigned = SignedPreKey(key_id=key_id, created_ms=now_ms,
                                public=x25519.public_from_private(private), signature=b"")
        sig = identity.sign(Purpose.SIGNED_PREKEY, unsigned._signed())
        return cls(public=SignedPreKey(key_id=key_id, created_ms=now_ms,
                                       public=unsigned.public, signature=sig), private=private)

    @property
    def key_id(self) -> int:
        return self.public.key_id

    def to_bytes(self) -> bytes:
        p = self.public
        return (bytes((PREKEY_VERSION,)) + u32(p.key_id) + u64(p.created_ms) + self.private
                + p.signature)

    @classmethod
    def from_bytes(cls, data: bytes) -> SignedPreKeyPair:
        r = Reader(data, "SignedPreKeyPair")
        check_version("SignedPreKeyPair", r.u8(), PREKEY_VERSION)
        key_id, created, private, sig = r.u32(), r.u64(), r.take(32), r.take(SIGNATURE_SIZE)
        r.finish()
        public = SignedPreKey(key_id=key_id, created_ms=created,
                              public=x25519.public_from_private(private), signature=sig)
        return cls(public=public, private=private)

    def __repr__(self) -> str:
        return f"SignedPreKeyPair(key_id={self.key_id})"


# --- one-time X25519 prekey -----------------------------------------------------------


@dataclass(frozen=True, slots=True, kw_only=True)
class OneTimePreKey:
    key_id: int
    public: bytes

    SIZE = 1 + 4 + 32

    def to_bytes(self) -> bytes:
        return bytes((PREKEY_VERSION,)) + u32(self.key_id) + self.public

    @classmethod
    def from_bytes(cls, data: bytes) -> OneTimePreKey:
        r = Reader(data, "OneTimePreKey")
        check_version("OneTimePreKey", r.u8(), PREKEY_VERSION)
        key = cls(key_id=r.u32(), public=r.take(32))
        r.finish()
        return key


@dataclass(frozen=True, slots=True, kw_only=True)
class OneTimePreKeyPair:
    public: OneTimePreKey
    private: bytes = field(repr=False)

    @classmethod
    def generate(cls, *, key_id: int, rng: Rng) -> OneTimePreKeyPair:
        private = x25519.generate_private(rng)
        return cls(public=OneTimePreKey(key_id=key_id,
                                        public=x25519.public_from_private(private)),
                   private=private)

    @property
    def key_id(self) -> int:
        return self.public.key_id

    def to_bytes(self) -> bytes:
        return bytes((PREKEY_VERSION,)) + u32(self.key_id) + self.private

    @classmethod
    def from_bytes(cls, data: bytes) -> OneTimePreKeyPair:
        r = Reader(data, "OneTimePreKeyPair")
        check_version("OneTimePreKeyPair", r.u8(), PREKEY_VERSION)
        key_id, private = r.u32(), r.take(32)
        r.finish()
        return cls(public=OneTimePreKey(key_id=key_id,
                                        public=x25519.public_from_private(private)),
                   private=private)

    def __repr__(self) -> str:
        return f"OneTimePreKeyPair(key_id={self.key_id})"


# --- ML-KEM-768 prekeys ---------------------------------------------------------------


def _kem_kind(value: int, what: str) -> KemKind:
    try:
        return KemKind(value)
    except ValueError:
        raise DecodeError(what, f"unknown KEM prekey kind {value}") from None


@dataclass(frozen=True, slots=True, kw_only=True)
class KemPreKey:
    key_id: int
    kind: KemKind
    created_ms: int
    public: bytes = field(repr=False)
    signature: bytes = field(repr=False)

    SIZE = 1 + 4 + 1 + 8 + KEM_PUBLIC_SIZE + SIGNATURE_SIZE

    def _signed(self) -> bytes:
        return (bytes((PREKEY_VERSION,)) + u32(self.key_id) + bytes((self.kind,))
                + u64(self.created_ms) + self.public)

    def to_bytes(self) -> bytes:
        return self._signed() + self.signature

    @classmethod
    def from_bytes(cls, data: bytes) -> KemPreKey:
        r = Reader(data, "KemPreKey")
        check_version("KemPreKey", r.u8(), PREKEY_VERSION)
        key = cls(key_id=r.u32(), kind=_kem_kind(r.u8(), "KemPreKey"), created_ms=r.u64(),
                  public=r.take(KEM_PUBLIC_SIZE), signature=r.take(SIGNATURE_SIZE))
        r.finish()
        return key

    def check(self, identity: IdentityPublicKey) -> None:
        identity.verify(Purpose.KEM_PREKEY, self._signed(), self.signature)

    def encapsulate(self) -> tuple[bytes, bytes]:
        """ML-KEM-768 encapsulation: returns ``(shared_secret, ciphertext)``.

        The primitive draws its own randomness (it takes no seed); vectors
        record its output instead.
        """
        try:
            key = mlkem.MLKEM768PublicKey.from_public_bytes(self.public)
        except ValueError as exc:
            raise InvalidKey("invalid ML-KEM-768 encapsulation key") from exc
        shared, ciphertext = key.encapsulate()
        return shared, ciphertext


@dataclass(frozen=True, slots=True, kw_only=True)
class KemPreKeyPair:
    public: KemPreKey
    seed: bytes = field(repr=False)
    # The expanded decapsulation key, built once from the seed (expansion costs
    # about as much as a decapsulation).
    _key: mlkem.MLKEM768PrivateKey = field(init=False, repr=False, compare=False)

    def __post_init__(self) -> None:
        if len(self.seed) != KEM_SEED_SIZE:
            raise InvalidKey("ML-KEM-768 seed must be 64 bytes")
        object.__setattr__(self, "_key", mlkem.MLKEM768PrivateKey.from_seed_bytes(self.seed))

    @classmethod
    def generate(cls, identity: IdentityKeyPair, *, key_id: int, kind: KemKind, now_ms: int,
                 rng: Rng) -> KemPreKeyPair:
        seed = rng(KEM_SEED_SIZE)
        pub = mlkem.MLKEM768PrivateKey.from_seed_bytes(seed).public_key().public_bytes_raw()
        unsigned = KemPreKey(key_id=key_id, kind=kind, created_ms=now_ms, public=pub,
                             signature=b"")
        sig = identity.sign(Purpose.KEM_PREKEY, unsigned._signed())
        return cls(public=KemPreKey(key_id=key_id, kind=kind, created_ms=now_ms, public=pub,
                                    signature=sig), seed=seed)

    @property
    def key_id(self) -> int:
        return self.public.key_id

    def decapsulate(self, ciphertext: bytes) -> bytes:
        if len(ciphertext) != KEM_CIPHERTEXT_SIZE:
            raise DecodeError("KEM ciphertext", f"expected {KEM_CIPHERTEXT_SIZE} bytes")
        return self._key.decapsulate(ciphertext)

    def to_bytes(self) -> bytes:
        p = self.public
        return (bytes((PREKEY_VERSION,)) + u32(p.key_id) + bytes((p.kind,)) + u64(p.created_ms)
                + self.seed + p.signature)

    @classmethod
    def from_bytes(cls, data: bytes) -> KemPreKeyPair:
        r = Reader(data, "KemPreKeyPair")
        check_version("KemPreKeyPair", r.u8(), PREKEY_VERSION)
        key_id, kind, created = r.u32(), _kem_kind(r.u8(), "KemPreKeyPair"), r.u64()
        seed, sig = r.take(KEM_SEED_SIZE), r.take(SIGNATURE_SIZE)
        r.finish()
        pub = mlkem.MLKEM768PrivateKey.from_seed_bytes(seed).public_key().public_bytes_raw()
        return cls(public=KemPreKey(key_id=key_id, kind=kind, created_ms=created, public=pub,
                                    signature=sig), seed=seed)

    def __repr__(self) -> str:
        return f"KemPreKeyPair(key_id={self.key_id}, kind={self.public.kind.name})"


# --- bundle ---------------------------------------------------------------------------


@dataclass(frozen=True, slots=True, kw_only=True)
class PreKeyBundle:
    """What an initiator needs; :meth:`check` (run by :meth:`from_bytes`) verifies it."""

    identity: IdentityPublicKey
    signed_prekey: SignedPreKey
    kem_prekey: KemPreKey
    one_time_prekey: OneTimePreKey | None = None
    _checked: bool = field(init=False, default=False, repr=False, compare=False)

    def check(self) -> None:
        """Verify every signature (once per object; the object is immutable).

        Raises:
            InvalidBundle: a prekey is not signed by the bundle's identity
                (wrapping the :class:`InvalidSignature`).
        """
        if self._checked:
            return
        try:
            self.identity.check()
        except InvalidSignature as exc:
            raise InvalidBundle("bundle identity is not self-signed") from exc
        self._check_prekeys()

    def _check_prekeys(self) -> None:
        try:
            self.signed_prekey.check(self.identity)
            self.kem_prekey.check(self.identity)
        except InvalidSignature as exc:
            raise InvalidBundle(f"bundle signature check failed ({exc.purpose})") from exc
        object.__setattr__(self, "_checked", True)

    def to_bytes(self) -> bytes:
        out = (bytes((PREKEY_VERSION,)) + self.identity.to_bytes() + self.signed_prekey.to_bytes()
               + self.kem_prekey.to_bytes())
        if self.one_time_prekey is None:
            return out + b"\x00"
        return out + b"\x01" + self.one_time_prekey.to_bytes()

    @classmethod
    def from_bytes(cls, data: bytes) -> PreKeyBundle:
        """Parse and verify a bundle.

        Raises:
            InvalidBundle: missing or badly signed prekeys (a bundle without a
                KEM prekey is never accepted).
            DecodeError, UnknownVersion, VersionTooOld: malformed bytes.
        """
        r = Reader(data, "PreKeyBundle")
        check_version("PreKeyBundle", r.u8(), PREKEY_VERSION)
        try:
            identity = IdentityPublicKey.from_bytes(r.take(IdentityPublicKey.SIZE))
        except InvalidSignature as exc:
            raise InvalidBundle("bundle identity is not self-signed") from exc
        spk = SignedPreKey.from_bytes(r.take(SignedPreKey.SIZE))
        if r.remaining < KemPreKey.SIZE + 1:
            raise InvalidBundle("bundle has no ML-KEM prekey")
        kem = KemPreKey.from_bytes(r.take(KemPreKey.SIZE))
        flag = r.u8()
        if flag not in (0, 1):
            raise DecodeError("PreKeyBundle", "bad one-time prekey flag")
        otk = OneTimePreKey.from_bytes(r.take(OneTimePreKey.SIZE)) if flag else None
        r.finish()
        bundle = cls(identity=identity, signed_prekey=spk, kem_prekey=kem, one_time_prekey=otk)
        bundle._check_prekeys()  # the identity was verified by its own parser
        return bundle
