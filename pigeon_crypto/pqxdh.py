"""PQXDH key agreement (Signal's PQXDH specification, revision 3), PQXDH only.

Theory of operation
-------------------
Bob (responder) publishes a :class:`~pigeon_crypto.prekeys.PreKeyBundle`.
Alice (initiator) verifies it, then (spec section 3.3)::

    EK_A            fresh X25519 key pair
    (CT, SS)        = ML-KEM-768.Encaps(PQPK_B)
    DH1 = DH(IK_A, SPK_B)   DH2 = DH(EK_A, IK_B)   DH3 = DH(EK_A, SPK_B)
    DH4 = DH(EK_A, OPK_B)   (only if the bundle had a one-time prekey)
    SK  = HKDF-SHA-256(ikm = F || DH1 || DH2 || DH3 [|| DH4] || SS,
                       salt = 32 zero bytes, info = INFO_SK, L = 32)
    AD  = IK_A || IK_B      (129-byte serialized identities)

with ``F`` = 32 bytes of 0xFF (spec section 2.5, for X25519).

Pigeon departs from the spec in one place, by design: the initiation must not
reveal who is writing (it goes to Bob's public contact mailbox), so Alice's
identity key travels **encrypted** under::

    K_seal = HKDF-SHA-256(ikm = F || DH3 [|| DH4] || SS, salt = 32 zero bytes,
                          info = INFO_SEAL, L = 32)

``K_seal`` needs Bob's signed (and one-time) prekey *and* the ML-KEM shared
secret, so a passive adversary who later breaks X25519 with a quantum computer
still cannot read the initiator's identity (the contact graph stays hidden).
It is used once (fresh EK_A and SS), hence AES-256-GCM with a zero nonce.

The rest of the initiation is the first Double Ratchet message (header
encrypted), keyed from SK with Bob's signed prekey as his first ratchet key
(Double Ratchet spec section 7.1); its plaintext is the application payload
(the SDK puts the initiator's pairwise mailbox and capability there).
Decrypting it proves Alice holds IK_A (DH1 is in SK), so Bob learns the
identity only together with proof of it.

Replays: Bob refuses an initiation whose (signed prekey id, KEM prekey id,
EK_A) he has already accepted (:attr:`Accepted.replay_key`; keep it for the
signed prekey's lifetime), and one-time prekeys are deleted on use, so a
replay fails with :class:`ReplayError` or :class:`PrekeyNotFound` and never
reaches session storage.

Initiation layout (integers big-endian)::

    | offset | size | field                                             |
    | 0      | 1    | version = 1                                       |
    | 1      | 4    | signed prekey id                                  |
    | 5      | 4    | KEM prekey id                                     |
    | 9      | 1    | has one-time prekey (0 or 1)                      |
    | 10     | 4    | one-time prekey id (0 when absent)                |
    | 14     | 32   | EK_A (X25519 public)                              |
    | 46     | 1088 | ML-KEM-768 ciphertext CT                          |
    | 1134   | 145  | AES-256-GCM(K_seal, 0^12, IK_A, AD = bytes 0..1133)|
    | 1279   | ...  | first Double Ratchet message (see ``ratchet``)    |
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Protocol

from cryptography.exceptions import InvalidTag
from cryptography.hazmat.primitives.ciphers.aead import AESGCM

from . import x25519
from ._codec import Reader, check_version, u32
from .errors import DecodeError, DecryptionError, PrekeyNotFound, ReplayError
from .identity import IdentityKeyPair, IdentityPublicKey
from .kdf import hkdf_sha256
from .prekeys import (
    KEM_CIPHERTEXT_SIZE,
    KemKind,
    KemPreKeyPair,
    OneTimePreKeyPair,
    PreKeyBundle,
    SignedPreKeyPair,
)
from .ratchet import RatchetState, init_initiator, init_responder
from .rng import Rng

__all__ = [
    "INFO_SEAL",
    "INFO_SK",
    "Accepted",
    "Initiation",
    "InitiationHeader",
    "MemoryResponderKeys",
    "ResponderKeys",
    "accept",
    "initiate",
    "initiate_with_encapsulation",
]

INITIATION_VERSION = 1
INFO_SK = b"Pigeon_v1_PQXDH_CURVE25519_SHA-256_ML-KEM-768"
INFO_SEAL = b"Pigeon_v1_PQXDH_identity_seal"
_F = b"\xff" * 32
_ZERO_NONCE = bytes(12)
_HEADER_SIZE = 1 + 4 + 4 + 1 + 4 + 32 + KEM_CIPHERTEXT_SIZE
_SEALED_IDENTITY_SIZE = IdentityPublicKey.SIZE + 16


def _seal_key(dh3: bytes, dh4: bytes, ss: bytes) -> bytes:
    return hkdf_sha256(_F + dh3 + dh4 + ss, salt=None, info=INFO_SEAL, length=32)


def _shared_secret(dh1: bytes, dh2: bytes, dh3: bytes, dh4: bytes, ss: bytes) -> bytes:
    return hkdf_sha256(_F + dh1 + dh2 + dh3 + dh4 + ss, salt=None, info=INFO_SK, length=32)


@dataclass(frozen=True, slots=True, kw_only=True)
class InitiationHeader:
    """The cleartext part of an initiation: which prekeys it used, EK_A and CT."""

    signed_prekey_id: int
    kem_prekey_id: int
    one_time_prekey_id: int | None
    ephemeral_key: bytes
    kem_ciphertext: bytes = field(repr=False)

    def to_bytes(self) -> bytes:
        has_otk = self.one_time_prekey_id is not None
        return (bytes((INITIATION_VERSION,)) + u32(self.signed_prekey_id)
                + u32(self.kem_prekey_id) + bytes((int(has_otk),))
                + u32(self.one_time_prekey_id or 0) + self.ephemeral_key + self.kem_ciphertext)

    @property
    def replay_key(self) -> bytes:
        """(signed prekey id, KEM prekey id, EK_A): what a responder remembers."""
        return u32(self.signed_prekey_id) + u32(self.kem_prekey_id) + self.ephemeral_key

    @classmethod
    def parse(cls, message: bytes) -> tuple[InitiationHeader, bytes, bytes]:
        """Split an initiation into (header, sealed identity, ratchet message).

        Raises:
            DecodeError, UnknownVersion, VersionTooOld: malformed bytes.
        """
        r = Reader(message, "Initiation")
        check_version("Initiation", r.u8(), INITIATION_VERSION)
        spk_id, kem_id, has_otk, otk_id = r.u32(), r.u32(), r.u8(), r.u32()
        if has_otk not in (0, 1):
            raise DecodeError("Initiation", "bad one-time prekey flag")
        header = cls(signed_prekey_id=spk_id, kem_prekey_id=kem_id,
                     one_time_prekey_id=otk_id if has_otk else None,
                     ephemeral_key=r.take(32), kem_ciphertext=r.take(KEM_CIPHERTEXT_SIZE))
        sealed = r.take(_SEALED_IDENTITY_SIZE)
        ratchet_message = r.rest()
        if not ratchet_message:
            raise DecodeError("Initiation", "missing ratchet message")
        return header, sealed, ratchet_message


@dataclass(frozen=True, slots=True, kw_only=True)
class Initiation:
    """Alice's side after :func:`initiate`: send :attr:`message`, store :attr:`session`."""

    message: bytes = field(repr=False)
    session: RatchetState = field(repr=False)
    peer: IdentityPublicKey

    def __repr__(self) -> str:
        return f"Initiation(peer={self.peer.fingerprint}, {len(self.message)} bytes)"


@dataclass(frozen=True, slots=True, kw_only=True)
class Accepted:
    """Bob's side after :func:`accept`.

    Persist :attr:`session`, delete the consumed one-time prekeys and record
    :attr:`replay_key` in one transaction (``MemoryResponderKeys.commit``
    shows the bookkeeping).
    """

    peer: IdentityPublicKey
    session: RatchetState = field(repr=False)
    payload: bytes = field(repr=False)
    replay_key: bytes = field(repr=False)
    signed_prekey_id: int
    kem_prekey_id: int
    kem_prekey_kind: KemKind
    one_time_prekey_id: int | None


def initiate(identity: IdentityKeyPair, bundle: PreKeyBundle, payload: bytes, *,
             rng: Rng) -> Initiation:
    """Verify *bundle* and build the first message carrying *payload*.

    Raises:
        InvalidBundle: a signature in the bundle does not verify.
        InvalidKey: a bundle key is a low-order point or not a valid KEM key.
    """
    bundle.check()
    shared, ciphertext = bundle.kem_prekey.encapsulate()
    return initiate_with_encapsulation(identity, bundle, payload, rng=rng,
                                       kem_shared_secret=shared, kem_ciphertext=ciphertext)


def initiate_with_encapsulation(identity: IdentityKeyPair, bundle: PreKeyBundle,
                                payload: bytes, *, rng: Rng, kem_shared_secret: bytes,
                                kem_ciphertext: bytes) -> Initiation:
    """:func:`initiate` with the ML-KEM output given (for test vectors).

    The caller is responsible for having checked *bundle*. ML-KEM's
    encapsulation takes no seed, so published vectors record its output and
    feed it back through this function.
    """
    ek_private = x25519.generate_private(rng)
    ek_public = x25519.public_from_private(ek_private)
    spk, otk = bundle.signed_prekey, bundle.one_time_prekey
    dh1 = identity.dh(spk.public)
    dh2 = x25519.dh(ek_private, bundle.identity.dh_key)
    dh3 = x25519.dh(ek_private, spk.public)
    dh4 = x25519.dh(ek_private, otk.public) if otk is not None else b""
    header = InitiationHeader(
        signed_prekey_id=spk.key_id, kem_prekey_id=bundle.kem_prekey.key_id,
        one_time_prekey_id=otk.key_id if otk is not None else None,
        ephemeral_key=ek_public, kem_ciphertext=kem_ciphertext,
    ).to_bytes()
    sealed = AESGCM(_seal_key(dh3, dh4, kem_shared_secret)).encrypt(
        _ZERO_NONCE, identity.public.to_bytes(), header)
    ad = identity.public.to_bytes() + bundle.identity.to_bytes()
    session = init_initiator(shared_secret=_shared_secret(dh1, dh2, dh3, dh4, kem_shared_secret),
                             peer_ratchet_public=spk.public, associated_data=ad, rng=rng)
    first = session.encrypt(payload, rng=rng)
    return Initiation(message=header + sealed + first.message, session=first.state,
                      peer=bundle.identity)


class ResponderKeys(Protocol):
    """What :func:`accept` needs to look up. Return ``None`` for unknown ids."""

    def signed_prekey(self, key_id: int) -> SignedPreKeyPair | None: ...

    def kem_prekey(self, key_id: int) -> KemPreKeyPair | None: ...

    def one_time_prekey(self, key_id: int) -> OneTimePreKeyPair | None: ...

    def seen_initiation(self, replay_key: bytes) -> bool: ...


def accept(identity: IdentityKeyPair, keys: ResponderKeys, message: bytes, *,
           now_ms: int) -> Accepted:
    """Process an initiation addressed to us. Pure: nothing is consumed here.

    Args:
        identity: our identity key pair.
        keys: our prekeys and replay record (read only).
        message: the initiation bytes.
        now_ms: current time, for the ratchet's skipped-key bookkeeping.

    Returns:
        The peer's verified identity, the new session, the payload and what
        the caller must now consume/record.

    Raises:
        DecodeError, UnknownVersion, VersionTooOld: malformed initiation.
        ReplayError: this initiation was accepted before.
        PrekeyNotFound: a named prekey is unknown or already used.
        DecryptionError: the sealed identity or the first message does not
            decrypt (tampering, or a KEM ciphertext for another key).
        InvalidSignature: the sealed identity is not self-signed.
        InvalidKey: EK_A or IK_A is a low-order point.
    """
    header, sealed, ratchet_message = InitiationHeader.parse(message)
    replay_key = header.replay_key
    if keys.seen_initiation(replay_key):
        raise ReplayError("initiation already accepted")
    spk = keys.signed_prekey(header.signed_prekey_id)
    if spk is None:
        raise PrekeyNotFound("signed", header.signed_prekey_id)
    kem = keys.kem_prekey(header.kem_prekey_id)
    if kem is None:
        raise PrekeyNotFound("kem", header.kem_prekey_id)
    otk: OneTimePreKeyPair | None = None
    if header.one_time_prekey_id is not None:
        otk = keys.one_time_prekey(header.one_time_prekey_id)
        if otk is None:
            raise PrekeyNotFound("one-time", header.one_time_prekey_id)

    ss = kem.decapsulate(header.kem_ciphertext)
    ek = header.ephemeral_key
    dh3 = x25519.dh(spk.private, ek)
    dh4 = x25519.dh(otk.private, ek) if otk is not None else b""
    try:
        identity_bytes = AESGCM(_seal_key(dh3, dh4, ss)).decrypt(
            _ZERO_NONCE, sealed, message[:_HEADER_SIZE])
    except InvalidTag as exc:
        raise DecryptionError("sealed initiator identity does not decrypt") from exc
    peer = IdentityPublicKey.from_bytes(identity_bytes)
    dh1 = x25519.dh(spk.private, peer.dh_key)
    dh2 = identity.dh(ek)
    ad = peer.to_bytes() + identity.public.to_bytes()
    session = init_responder(shared_secret=_shared_secret(dh1, dh2, dh3, dh4, ss),
                             our_ratchet_private=spk.private, associated_data=ad)
    first = session.decrypt(ratchet_message, now_ms=now_ms)
    return Accepted(
        peer=peer, session=first.state, payload=first.plaintext, replay_key=replay_key,
        signed_prekey_id=spk.key_id, kem_prekey_id=kem.key_id, kem_prekey_kind=kem.public.kind,
        one_time_prekey_id=otk.key_id if otk is not None else None,
    )


class MemoryResponderKeys:
    """An in-memory :class:`ResponderKeys` with the consume/record bookkeeping.

    Real stores do the same inside one transaction together with saving the
    session.
    """

    def __init__(self) -> None:
        self.signed: dict[int, SignedPreKeyPair] = {}
        self.kem: dict[int, KemPreKeyPair] = {}
        self.one_time: dict[int, OneTimePreKeyPair] = {}
        self.replays: set[bytes] = set()

    def add(self, *keys: SignedPreKeyPair | KemPreKeyPair | OneTimePreKeyPair) -> None:
        for key in keys:
            if isinstance(key, SignedPreKeyPair):
                self.signed[key.key_id] = key
            elif isinstance(key, KemPreKeyPair):
                self.kem[key.key_id] = key
            else:
                self.one_time[key.key_id] = key

    def signed_prekey(self, key_id: int) -> SignedPreKeyPair | None:
        return self.signed.get(key_id)

    def kem_prekey(self, key_id: int) -> KemPreKeyPair | None:
        return self.kem.get(key_id)

    def one_time_prekey(self, key_id: int) -> OneTimePreKeyPair | None:
        return self.one_time.get(key_id)

    def seen_initiation(self, replay_key: bytes) -> bool:
        return replay_key in self.replays

    def commit(self, accepted: Accepted) -> None:
        """Consume one-time keys and remember the initiation."""
        if accepted.one_time_prekey_id is not None:
            del self.one_time[accepted.one_time_prekey_id]
        if accepted.kem_prekey_kind is KemKind.ONE_TIME:
            del self.kem[accepted.kem_prekey_id]
        self.replays.add(accepted.replay_key)

    def retire_signed_prekey(self, key_id: int) -> None:
        """Drop a signed prekey and the replay records that only it could match."""
        self.signed.pop(key_id, None)
        prefix = u32(key_id)
        self.replays = {k for k in self.replays if not k.startswith(prefix)}
