"""Sealing at rest: a random data key seals secrets; a passphrase wraps the data key.

Theory of operation (spec: "Sealing at rest", docs/protocol.md)
    * A :class:`DataKey` is 32 random bytes. Secrets are sealed under it with
      XChaCha20-Poly1305 (libsodium via PyNaCl) and a random 24-byte nonce per
      seal: 192-bit random nonces never collide in practice, so one key can
      seal any number of records (AES-GCM's 96-bit nonces would cap a key at
      about 2**32 seals).
    * The data key is *wrapped* under ``KEK = Argon2id(passphrase, salt, t, m, p)``
      (RFC 9106, argon2-cffi ``hash_secret_raw``, 32-byte output) with
      XChaCha20-Poly1305; the Argon2 parameters and salt are the AD. Changing
      any parameter changes both the KEK and the AD, so a tampered header
      cannot downgrade the work factor: it just fails to unwrap.
    * Changing the passphrase (:func:`rewrap`) re-wraps only the 32-byte data
      key: sealed records are untouched. The same call raises the parameters
      (:func:`needs_rewrap` tells when stored parameters are below policy).
    * A failed unwrap is :class:`~pigeon_crypto.errors.WrongPassphrase`: with
      an AEAD, a wrong passphrase and a tampered header are indistinguishable.

Passphrases given as ``str`` are NFC-normalized and UTF-8 encoded (so the same
passphrase typed on different platforms unlocks); ``bytes`` are used as is.

Default parameters: RFC 9106 section 4's second recommended option, ``t=3,
m=64 MiB, p=4``; unlocking takes ~0.15 s on the 2-core reference machine
(``python -m bench.primitives``), acceptable once per app start on a desktop.
"""

from __future__ import annotations

import struct
import unicodedata
from dataclasses import dataclass, field

import nacl.bindings as _sodium
import nacl.exceptions
from argon2.low_level import Type, hash_secret_raw

from ._codec import Reader, check_version
from .errors import CryptoError, DecodeError, DecryptionError, InvalidKey, WrongPassphrase
from .rng import Rng

__all__ = [
    "DATA_KEY_SIZE", "DEFAULT_PARAMS", "NONCE_SIZE", "SALT_SIZE", "SEALED_VERSION",
    "WRAPPED_KEY_SIZE", "WRAPPED_VERSION", "Argon2Params", "DataKey", "InvalidKdfParameters",
    "UnsealError", "WrappedKey", "create_data_key", "needs_rewrap", "rewrap", "seal", "unlock",
    "unseal", "wrap_data_key",
]

DATA_KEY_SIZE = 32
SALT_SIZE = 16
NONCE_SIZE = 24  # XChaCha20-Poly1305
TAG_SIZE = 16
WRAPPED_VERSION = 1
SEALED_VERSION = 1

#: Bounds accepted when decoding, so a corrupt header cannot demand absurd work.
MAX_TIME_COST = 64
MAX_MEMORY_KIB = 4 * 1024 * 1024  # 4 GiB
MAX_PARALLELISM = 64

_PARAMS = struct.Struct(">III")
_HEADER_SIZE = 1 + _PARAMS.size + SALT_SIZE
WRAPPED_KEY_SIZE = _HEADER_SIZE + NONCE_SIZE + DATA_KEY_SIZE + TAG_SIZE

_xchacha_encrypt = _sodium.crypto_aead_xchacha20poly1305_ietf_encrypt
_xchacha_decrypt = _sodium.crypto_aead_xchacha20poly1305_ietf_decrypt


class InvalidKdfParameters(CryptoError):
    """Argon2 parameters outside the accepted range."""


class UnsealError(DecryptionError):
    """A sealed record failed authentication (wrong data key, AD, or tampered bytes)."""


@dataclass(frozen=True, slots=True, kw_only=True)
class Argon2Params:
    """Argon2id cost parameters (RFC 9106 section 3.1).

    Attributes:
        time_cost: passes over memory (``t``), 1..64.
        memory_kib: memory in KiB (``m``), ``8 * parallelism`` .. 4 GiB.
        parallelism: lanes (``p``), 1..64.
    """

    time_cost: int
    memory_kib: int
    parallelism: int

    def __post_init__(self) -> None:
        if not 1 <= self.time_cost <= MAX_TIME_COST:
            raise InvalidKdfParameters(f"time_cost {self.time_cost} outside 1..{MAX_TIME_COST}")
        if not 1 <= self.parallelism <= MAX_PARALLELISM:
            raise InvalidKdfParameters(f"parallelism {self.parallelism} outside 1..64")
        if not 8 * self.parallelism <= self.memory_kib <= MAX_MEMORY_KIB:
            raise InvalidKdfParameters(f"memory_kib {self.memory_kib} out of range")

    def at_least(self, other: Argon2Params) -> bool:
        """True if every cost here is >= the same cost in *other*."""
        return (
            self.time_cost >= other.time_cost
            and self.memory_kib >= other.memory_kib
            and self.parallelism >= other.parallelism
        )


#: RFC 9106 section 4, second recommended option (memory-constrained): t=3, m=64 MiB, p=4.
DEFAULT_PARAMS = Argon2Params(time_cost=3, memory_kib=64 * 1024, parallelism=4)


@dataclass(frozen=True, slots=True)
class DataKey:
    """The 32-byte key that seals the client's secrets. Never shown in reprs."""

    key: bytes = field(repr=False)

    def __post_init__(self) -> None:
        if len(self.key) != DATA_KEY_SIZE:
            raise InvalidKey(f"data key must be {DATA_KEY_SIZE} bytes")

    @classmethod
    def generate(cls, rng: Rng) -> DataKey:
        return cls(rng(DATA_KEY_SIZE))

    def seal(self, plaintext: bytes, *, ad: bytes = b"", rng: Rng) -> bytes:
        """See :func:`seal`."""
        return seal(self, plaintext, ad=ad, rng=rng)

    def open(self, sealed: bytes, *, ad: bytes = b"") -> bytes:
        """See :func:`unseal`."""
        return unseal(self, sealed, ad=ad)


@dataclass(frozen=True, slots=True, kw_only=True)
class WrappedKey:
    """The data key wrapped under a passphrase.

    Layout (version 1, 101 bytes, integers big-endian)::

        | field        | size | notes                                        |
        |--------------|------|----------------------------------------------|
        | version      | 1    | 0x01                                         |
        | time_cost    | u32  | Argon2id t                                   |
        | memory_kib   | u32  | Argon2id m (KiB)                             |
        | parallelism  | u32  | Argon2id p                                   |
        | salt         | 16   | random per wrap                              |
        | nonce        | 24   | XChaCha20-Poly1305 nonce, random per wrap    |
        | wrapped_key  | 48   | XChaCha20-Poly1305(KEK, nonce, data key,     |
        |              |      |   AD = the 29 header bytes above)            |
    """

    params: Argon2Params
    salt: bytes
    nonce: bytes
    ciphertext: bytes

    def header(self) -> bytes:
        p = self.params
        return (
            bytes([WRAPPED_VERSION]) + _PARAMS.pack(p.time_cost, p.memory_kib, p.parallelism)
            + self.salt
        )

    def to_bytes(self) -> bytes:
        return self.header() + self.nonce + self.ciphertext

    @classmethod
    def from_bytes(cls, data: bytes) -> WrappedKey:
        """Decode a wrapped key.

        Raises:
            DecodeError: wrong length or parameters out of range.
            UnknownVersion / VersionTooOld: unsupported version byte.
        """
        r = Reader(data, "WrappedKey")
        check_version("WrappedKey", r.u8(), WRAPPED_VERSION)
        t, m, p = r.u32(), r.u32(), r.u32()
        salt = r.take(SALT_SIZE)
        nonce = r.take(NONCE_SIZE)
        ciphertext = r.take(DATA_KEY_SIZE + TAG_SIZE)
        r.finish()
        try:
            params = Argon2Params(time_cost=t, memory_kib=m, parallelism=p)
        except InvalidKdfParameters as exc:
            raise DecodeError("WrappedKey", str(exc)) from exc
        return cls(params=params, salt=salt, nonce=nonce, ciphertext=ciphertext)


def _passphrase_bytes(passphrase: str | bytes) -> bytes:
    if isinstance(passphrase, str):
        return unicodedata.normalize("NFC", passphrase).encode("utf-8")
    return bytes(passphrase)


def _kek(passphrase: str | bytes, salt: bytes, params: Argon2Params) -> bytes:
    return bytes(
        hash_secret_raw(
            _passphrase_bytes(passphrase), salt, time_cost=params.time_cost,
            memory_cost=params.memory_kib, parallelism=params.parallelism, hash_len=32,
            type=Type.ID, version=19,
        )
    )


def wrap_data_key(
    data_key: DataKey, passphrase: str | bytes, *, params: Argon2Params = DEFAULT_PARAMS,
    rng: Rng,
) -> bytes:
    """Wrap *data_key* under *passphrase* with fresh salt and nonce; returns the blob."""
    salt = rng(SALT_SIZE)
    nonce = rng(NONCE_SIZE)
    shell = WrappedKey(params=params, salt=salt, nonce=nonce, ciphertext=b"")
    header = shell.header()
    ciphertext = _xchacha_encrypt(data_key.key, header, nonce, _kek(passphrase, salt, params))
    return header + nonce + ciphertext


def create_data_key(
    passphrase: str | bytes, *, params: Argon2Params = DEFAULT_PARAMS, rng: Rng
) -> tuple[DataKey, bytes]:
    """Draw a new data key and wrap it; returns ``(data_key, wrapped_blob)``."""
    data_key = DataKey.generate(rng)
    return data_key, wrap_data_key(data_key, passphrase, params=params, rng=rng)


def unlock(wrapped: bytes, passphrase: str | bytes) -> DataKey:
    """Unwrap the data key (runs Argon2id with the stored parameters).

    Raises:
        WrongPassphrase: the passphrase is wrong or the blob was tampered with.
        DecodeError / UnsupportedVersion: malformed blob.
    """
    w = WrappedKey.from_bytes(wrapped)
    kek = _kek(passphrase, w.salt, w.params)
    try:
        key = _xchacha_decrypt(w.ciphertext, w.header(), w.nonce, kek)
    except nacl.exceptions.CryptoError as exc:
        raise WrongPassphrase("the passphrase does not unlock this key") from exc
    return DataKey(bytes(key))


def rewrap(
    wrapped: bytes, old_passphrase: str | bytes, new_passphrase: str | bytes, *,
    params: Argon2Params | None = None, rng: Rng,
) -> bytes:
    """Re-wrap the same data key under a new passphrase and/or parameters.

    Sealed records stay readable: only the wrapped-key blob changes.
    *params* defaults to the stored parameters.

    Raises:
        WrongPassphrase: *old_passphrase* does not unlock *wrapped*.
    """
    data_key = unlock(wrapped, old_passphrase)
    new_params = params if params is not None else WrappedKey.from_bytes(wrapped).params
    return wrap_data_key(data_key, new_passphrase, params=new_params, rng=rng)


def needs_rewrap(wrapped: bytes, policy: Argon2Params = DEFAULT_PARAMS) -> bool:
    """True if the stored parameters are below *policy* in any cost (rewrap on next unlock)."""
    return not WrappedKey.from_bytes(wrapped).params.at_least(policy)


def _sealed_ad(ad: bytes) -> bytes:
    return bytes([SEALED_VERSION]) + ad


def seal(data_key: DataKey, plaintext: bytes, *, ad: bytes = b"", rng: Rng) -> bytes:
    """Seal a secret: ``0x01 || nonce (24) || XChaCha20-Poly1305(data_key, nonce, pt, 0x01 || ad)``.

    *ad* should name the record (e.g. table and row id) so sealed values
    cannot be swapped between records.
    """
    nonce = rng(NONCE_SIZE)
    ct = _xchacha_encrypt(bytes(plaintext), _sealed_ad(ad), nonce, data_key.key)
    return bytes([SEALED_VERSION]) + nonce + ct


def unseal(data_key: DataKey, sealed: bytes, *, ad: bytes = b"") -> bytes:
    """Open a record made by :func:`seal` with the same *ad*.

    Raises:
        DecodeError: too short.
        UnsupportedVersion: unknown version byte.
        UnsealError: wrong key or AD, or tampered bytes.
    """
    r = Reader(sealed, "SealedRecord")
    check_version("SealedRecord", r.u8(), SEALED_VERSION)
    nonce = r.take(NONCE_SIZE)
    if r.remaining < TAG_SIZE:
        raise DecodeError("SealedRecord", "shorter than the tag")
    ct = r.rest()
    try:
        return bytes(_xchacha_decrypt(ct, _sealed_ad(ad), nonce, data_key.key))
    except nacl.exceptions.CryptoError as exc:
        raise UnsealError("sealed record failed authentication") from exc
