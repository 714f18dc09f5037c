"""Sender keys for groups: one symmetric chain and one Ed25519 key per member.

Theory of operation (spec: "Sender keys", docs/protocol.md)
    Each member owns, per group, an :class:`OutboundSenderKey`: a random
    ``chain_id`` (u32), an ``iteration`` counter, a 32-byte ``chain_key`` and an
    Ed25519 signing key. The chain is Signal's SenderKey chain::

        message_key = HMAC-SHA-256(chain_key, 0x01)
        chain_key'  = HMAC-SHA-256(chain_key, 0x02)

    A message is ``header || AES-256-GCM(message_key, nonce = 0^96, body,
    AD = header) || signature`` with ``header = 0x01 || chain_id || iteration``
    and an Ed25519 signature (purpose ``SENDER_KEY_MESSAGE``) over everything
    before it. Each message key encrypts exactly one message, so the fixed
    nonce never repeats under a key — *provided the caller persists the new
    outbound state before sending*: re-encrypting different bytes from a
    stale state would reuse a key and nonce. Store the state and the
    ciphertext together and resend the stored bytes on retry.

    The member hands a :class:`SenderKeyDistribution` (chain id, iteration,
    chain key, signing public key) to every other member over the pairwise
    Double Ratchet sessions. It carries no signature of its own: the pairwise
    session already authenticates its sender, and the carrying message names
    the group (``Purpose.SENDER_KEY_DISTRIBUTION`` stays reserved for a relayed
    form). Receivers hold a :class:`SenderKeyRecord` per (group, sender) with
    up to :data:`MAX_CHAINS_PER_SENDER` :class:`InboundSenderKey` chains.
    When a member leaves or is removed, every remaining member creates a new
    outbound chain and distributes it: O(n) pairwise messages per sender,
    O(n**2) for the group.

Decryption order: decode, find the chain (:class:`UnknownSenderChain`), verify
the signature (:class:`~pigeon_crypto.errors.InvalidSignature`, before any key
is derived), then take the message key: a stored skipped key for an older
iteration (else :class:`DuplicateSenderKeyMessage`), or ratchet forward at most
:data:`MAX_SENDER_KEY_GAP` steps (else
:class:`~pigeon_crypto.errors.TooManySkipped`), storing skipped keys (at most
:data:`MAX_SKIPPED_KEYS`, oldest evicted). States are immutable: ``decrypt``
returns the new state and the caller commits it only after success.
"""

from __future__ import annotations

import hmac
import struct
from collections.abc import Mapping
from dataclasses import dataclass, field
from itertools import islice

from cryptography.exceptions import InvalidTag
from cryptography.hazmat.primitives.ciphers.aead import AESGCM

from ._codec import Reader, check_version, u16, var32
from .errors import (
    CryptoError,
    DecodeError,
    InvalidKey,
    MessageDecryptionError,
    ReplayError,
    TooManySkipped,
)
from .rng import Rng
from .signing import PUBLIC_KEY_SIZE, SEED_SIZE, SIGNATURE_SIZE, Purpose, SigningKey, verify

__all__ = [
    "CHAIN_KEY_SIZE", "MAX_CHAINS_PER_SENDER", "MAX_ITERATION", "MAX_SENDER_KEY_GAP",
    "MAX_SKIPPED_KEYS", "SENDER_KEY_VERSION", "DuplicateSenderKeyMessage", "InboundSenderKey",
    "OutboundSenderKey", "SenderChainConflict", "SenderChainExhausted", "SenderKeyDistribution",
    "SenderKeyMessage", "SenderKeyRecord", "UnknownSenderChain",
]

#: Version byte of messages, distributions and states.
SENDER_KEY_VERSION = 1
CHAIN_KEY_SIZE = 32
#: Most chain steps one message may skip: bounds the HMAC work an authentic
#: but far-ahead message can cause (~2000 * 2 HMACs, well under a millisecond).
MAX_SENDER_KEY_GAP = 2000
#: Most skipped message keys kept per chain (36 bytes each), oldest evicted first.
MAX_SKIPPED_KEYS = 2000
#: Chains kept per (group, sender); older chains are dropped (as Signal's 5).
MAX_CHAINS_PER_SENDER = 5
#: Iterations are u32 on the wire; a chain stops before wrapping.
MAX_ITERATION = 0xFFFFFFFF

_HEADER = struct.Struct(">BII")
_HEADER_SIZE = _HEADER.size
_TAG_SIZE = 16
_MIN_MESSAGE_SIZE = _HEADER_SIZE + _TAG_SIZE + SIGNATURE_SIZE
_ZERO_NONCE = bytes(12)
_MESSAGE_KEY_SEED = b"\x01"
_CHAIN_KEY_SEED = b"\x02"
_PURPOSE = Purpose.SENDER_KEY_MESSAGE
_SKIPPED_ENTRY = struct.Struct(">I32s")


class UnknownSenderChain(CryptoError):
    """A message names a chain we hold no distribution for.

    Attributes:
        chain_id: the chain id named by the message.
    """

    def __init__(self, chain_id: int) -> None:
        super().__init__(f"no sender-key chain with id {chain_id}")
        self.chain_id = chain_id


class DuplicateSenderKeyMessage(ReplayError):
    """The message's key was already used, evicted, or precedes the distribution."""

    def __init__(self, chain_id: int, iteration: int) -> None:
        super().__init__(f"chain {chain_id}: iteration {iteration} already used or unavailable")
        self.chain_id = chain_id
        self.iteration = iteration


class SenderChainConflict(CryptoError):
    """A distribution reuses a known chain id with a different signing key."""

    def __init__(self, chain_id: int) -> None:
        super().__init__(f"chain {chain_id} already known with another signing key")
        self.chain_id = chain_id


class SenderChainExhausted(CryptoError):
    """The outbound chain reached :data:`MAX_ITERATION`; create a new chain."""


def _check_common(chain_id: int, iteration: int, chain_key: bytes) -> None:
    if not 0 <= chain_id <= 0xFFFFFFFF:
        raise InvalidKey("chain id must be a u32")
    if not 0 <= iteration <= MAX_ITERATION:
        raise InvalidKey("iteration must be a u32")
    if len(chain_key) != CHAIN_KEY_SIZE:
        raise InvalidKey(f"chain key must be {CHAIN_KEY_SIZE} bytes")


@dataclass(frozen=True, slots=True, kw_only=True)
class SenderKeyDistribution:
    """A member's chain as handed to the others over pairwise sessions.

    Layout (73 bytes)::

        | version u8 = 1 | chain_id u32 | iteration u32 | chain_key 32 | signing_public_key 32 |
    """

    chain_id: int
    iteration: int
    chain_key: bytes = field(repr=False)
    signing_public_key: bytes

    def __post_init__(self) -> None:
        _check_common(self.chain_id, self.iteration, self.chain_key)
        if len(self.signing_public_key) != PUBLIC_KEY_SIZE:
            raise InvalidKey("signing public key must be 32 bytes")

    def __repr__(self) -> str:
        return (
            f"SenderKeyDistribution(chain_id={self.chain_id}, iteration={self.iteration}, "
            f"signing_public_key={self.signing_public_key.hex()})"
        )

    def to_bytes(self) -> bytes:
        return (
            _HEADER.pack(SENDER_KEY_VERSION, self.chain_id, self.iteration) + self.chain_key
            + self.signing_public_key
        )

    @classmethod
    def from_bytes(cls, data: bytes) -> SenderKeyDistribution:
        """Raises DecodeError or UnsupportedVersion on malformed input."""
        r = Reader(data, "SenderKeyDistribution")
        check_version("SenderKeyDistribution", r.u8(), SENDER_KEY_VERSION)
        chain_id, iteration = r.u32(), r.u32()
        chain_key, pub = r.take(CHAIN_KEY_SIZE), r.take(PUBLIC_KEY_SIZE)
        r.finish()
        return cls(
            chain_id=chain_id, iteration=iteration, chain_key=chain_key, signing_public_key=pub
        )


@dataclass(frozen=True, slots=True, kw_only=True)
class SenderKeyMessage:
    """A parsed sender-key message (for inspection; ``decrypt`` parses inline).

    Layout::

        | version u8 = 1 | chain_id u32 | iteration u32 | ciphertext (body + 16-byte tag) |
        | signature 64 over all preceding bytes, purpose SENDER_KEY_MESSAGE |
    """

    chain_id: int
    iteration: int
    ciphertext: bytes = field(repr=False)
    signature: bytes = field(repr=False)

    @classmethod
    def from_bytes(cls, data: bytes) -> SenderKeyMessage:
        """Raises DecodeError or UnsupportedVersion on malformed input."""
        chain_id, iteration = _parse_header(data)
        return cls(
            chain_id=chain_id, iteration=iteration,
            ciphertext=bytes(data[_HEADER_SIZE:-SIGNATURE_SIZE]),
            signature=bytes(data[-SIGNATURE_SIZE:]),
        )


def _parse_header(data: bytes) -> tuple[int, int]:
    if len(data) < _MIN_MESSAGE_SIZE:
        raise DecodeError("SenderKeyMessage", f"{len(data)} bytes is too short")
    version, chain_id, iteration = _HEADER.unpack_from(data)
    if version != SENDER_KEY_VERSION:
        check_version("SenderKeyMessage", version, SENDER_KEY_VERSION)
    if iteration >= MAX_ITERATION:
        raise DecodeError("SenderKeyMessage", "iteration out of range")
    return chain_id, iteration


@dataclass(frozen=True, slots=True, kw_only=True, eq=False)
class OutboundSenderKey:
    """Our own chain for one group. Persist the state returned by :meth:`encrypt`
    before sending its message.

    State layout (73 bytes)::

        | version u8 = 1 | chain_id u32 | iteration u32 | chain_key 32 | signing_seed 32 |
    """

    chain_id: int
    iteration: int
    chain_key: bytes = field(repr=False)
    signing_key: SigningKey = field(repr=False)

    def __post_init__(self) -> None:
        _check_common(self.chain_id, self.iteration, self.chain_key)

    @classmethod
    def create(cls, rng: Rng) -> OutboundSenderKey:
        """A fresh chain: random chain id, chain key and signing key, iteration 0."""
        chain_id = int.from_bytes(rng(4), "big")
        chain_key = rng(CHAIN_KEY_SIZE)
        return cls(
            chain_id=chain_id, iteration=0, chain_key=chain_key,
            signing_key=SigningKey(rng(SEED_SIZE)),
        )

    @property
    def signing_public_key(self) -> bytes:
        return self.signing_key.public_key

    def __repr__(self) -> str:
        return (
            f"OutboundSenderKey(chain_id={self.chain_id}, iteration={self.iteration}, "
            f"signing_public_key={self.signing_key.public_key.hex()})"
        )

    def __eq__(self, other: object) -> bool:
        if not isinstance(other, OutboundSenderKey):
            return NotImplemented
        return hmac.compare_digest(self.to_bytes(), other.to_bytes())

    __hash__ = None  # type: ignore[assignment]

    def distribution(self) -> SenderKeyDistribution:
        """The distribution message for the current iteration (later messages only)."""
        return SenderKeyDistribution(
            chain_id=self.chain_id, iteration=self.iteration, chain_key=self.chain_key,
            signing_public_key=self.signing_key.public_key,
        )

    def encrypt(self, plaintext: bytes) -> tuple[OutboundSenderKey, bytes]:
        """Encrypt and sign one group message.

        Returns:
            ``(next_state, message_bytes)``; persist *next_state* before sending.

        Raises:
            SenderChainExhausted: the iteration counter is at its maximum.
        """
        it = self.iteration
        if it >= MAX_ITERATION:
            raise SenderChainExhausted("sender-key chain exhausted; create a new one")
        ck = self.chain_key
        header = _HEADER.pack(SENDER_KEY_VERSION, self.chain_id, it)
        message_key = hmac.digest(ck, _MESSAGE_KEY_SEED, "sha256")
        signed = header + AESGCM(message_key).encrypt(_ZERO_NONCE, plaintext, header)
        signature = self.signing_key.sign(_PURPOSE, signed)
        nxt = OutboundSenderKey(
            chain_id=self.chain_id, iteration=it + 1,
            chain_key=hmac.digest(ck, _CHAIN_KEY_SEED, "sha256"), signing_key=self.signing_key,
        )
        return nxt, signed + signature

    def to_bytes(self) -> bytes:
        return (
            _HEADER.pack(SENDER_KEY_VERSION, self.chain_id, self.iteration) + self.chain_key
            + self.signing_key.seed
        )

    @classmethod
    def from_bytes(cls, data: bytes) -> OutboundSenderKey:
        """Raises DecodeError or UnsupportedVersion on malformed input."""
        r = Reader(data, "OutboundSenderKey")
        check_version("OutboundSenderKey", r.u8(), SENDER_KEY_VERSION)
        chain_id, iteration = r.u32(), r.u32()
        chain_key, seed = r.take(CHAIN_KEY_SIZE), r.take(SEED_SIZE)
        r.finish()
        return cls(
            chain_id=chain_id, iteration=iteration, chain_key=chain_key,
            signing_key=SigningKey(seed),
        )


@dataclass(frozen=True, slots=True, kw_only=True)
class InboundSenderKey:
    """Another member's chain, as far as we have advanced it.

    ``skipped`` maps iterations we jumped over to their message keys; it is
    never mutated (a new mapping is built when it changes).

    State layout::

        | version u8 = 1 | chain_id u32 | iteration u32 | chain_key 32 |
        | signing_public_key 32 | n u16 | n * (iteration u32 | message_key 32) |

    Skipped iterations are strictly increasing and below ``iteration``.
    """

    chain_id: int
    iteration: int
    chain_key: bytes = field(repr=False)
    signing_public_key: bytes
    skipped: Mapping[int, bytes] = field(default_factory=dict, repr=False)

    def __post_init__(self) -> None:
        _check_common(self.chain_id, self.iteration, self.chain_key)
        if len(self.signing_public_key) != PUBLIC_KEY_SIZE:
            raise InvalidKey("signing public key must be 32 bytes")

    def __repr__(self) -> str:
        return (
            f"InboundSenderKey(chain_id={self.chain_id}, iteration={self.iteration}, "
            f"signing_public_key={self.signing_public_key.hex()}, skipped={len(self.skipped)})"
        )

    @classmethod
    def from_distribution(cls, dist: SenderKeyDistribution) -> InboundSenderKey:
        return cls(
            chain_id=dist.chain_id, iteration=dist.iteration, chain_key=dist.chain_key,
            signing_public_key=dist.signing_public_key,
        )

    def decrypt(self, message: bytes) -> tuple[InboundSenderKey, bytes]:
        """Verify and decrypt one message of this chain.

        Returns:
            ``(next_state, plaintext)``; commit *next_state* only now.

        Raises:
            DecodeError / UnsupportedVersion: malformed message.
            UnknownSenderChain: the message names another chain.
            InvalidSignature: forged, tampered, or signed for another purpose.
            DuplicateSenderKeyMessage: key already used, evicted or before our start.
            TooManySkipped: more than MAX_SENDER_KEY_GAP steps ahead.
            MessageDecryptionError: the body does not authenticate (sender bug).
        """
        chain_id, iteration = _parse_header(message)
        if chain_id != self.chain_id:
            raise UnknownSenderChain(chain_id)
        return self._decrypt(message, iteration)

    def _decrypt(self, message: bytes, iteration: int) -> tuple[InboundSenderKey, bytes]:
        # The header has been parsed and the chain id matched by the caller.
        signed = message[:-SIGNATURE_SIZE]
        verify(self.signing_public_key, _PURPOSE, signed, message[-SIGNATURE_SIZE:])
        nxt, message_key = self._take_key(iteration)
        try:
            plaintext = AESGCM(message_key).decrypt(
                _ZERO_NONCE, signed[_HEADER_SIZE:], signed[:_HEADER_SIZE]
            )
        except InvalidTag as exc:
            raise MessageDecryptionError("sender-key message body failed authentication") from exc
        return nxt, plaintext

    def _take_key(self, iteration: int) -> tuple[InboundSenderKey, bytes]:
        current = self.iteration
        if iteration < current:
            message_key = self.skipped.get(iteration)
            if message_key is None:
                raise DuplicateSenderKeyMessage(self.chain_id, iteration)
            skipped = {k: v for k, v in self.skipped.items() if k != iteration}
            return self._evolve(current, self.chain_key, skipped), message_key
        gap = iteration - current
        if gap > MAX_SENDER_KEY_GAP:
            raise TooManySkipped(gap, MAX_SENDER_KEY_GAP)
        ck = self.chain_key
        digest = hmac.digest
        skipped_now: Mapping[int, bytes] = self.skipped
        if gap:
            grown = dict(self.skipped)
            for j in range(current, iteration):
                grown[j] = digest(ck, _MESSAGE_KEY_SEED, "sha256")
                ck = digest(ck, _CHAIN_KEY_SEED, "sha256")
            excess = len(grown) - MAX_SKIPPED_KEYS
            if excess > 0:  # insertion order is iteration order: evict the oldest
                for old in list(islice(grown, excess)):
                    del grown[old]
            skipped_now = grown
        message_key = digest(ck, _MESSAGE_KEY_SEED, "sha256")
        nxt = self._evolve(iteration + 1, digest(ck, _CHAIN_KEY_SEED, "sha256"), skipped_now)
        return nxt, message_key

    def _evolve(
        self, iteration: int, chain_key: bytes, skipped: Mapping[int, bytes]
    ) -> InboundSenderKey:
        return InboundSenderKey(
            chain_id=self.chain_id, iteration=iteration, chain_key=chain_key,
            signing_public_key=self.signing_public_key, skipped=skipped,
        )

    def to_bytes(self) -> bytes:
        parts = [
            _HEADER.pack(SENDER_KEY_VERSION, self.chain_id, self.iteration), self.chain_key,
            self.signing_public_key, u16(len(self.skipped)),
        ]
        parts.extend(_SKIPPED_ENTRY.pack(k, v) for k, v in sorted(self.skipped.items()))
        return b"".join(parts)

    @classmethod
    def from_bytes(cls, data: bytes) -> InboundSenderKey:
        """Raises DecodeError or UnsupportedVersion on malformed input."""
        r = Reader(data, "InboundSenderKey")
        check_version("InboundSenderKey", r.u8(), SENDER_KEY_VERSION)
        chain_id, iteration = r.u32(), r.u32()
        chain_key, pub = r.take(CHAIN_KEY_SIZE), r.take(PUBLIC_KEY_SIZE)
        n = r.u16()
        if n > MAX_SKIPPED_KEYS:
            raise DecodeError("InboundSenderKey", f"{n} skipped keys exceed {MAX_SKIPPED_KEYS}")
        skipped: dict[int, bytes] = {}
        last = -1
        for _ in range(n):
            k, v = _SKIPPED_ENTRY.unpack(r.take(_SKIPPED_ENTRY.size))
            if not last < k < iteration:
                raise DecodeError("InboundSenderKey", "skipped iterations out of order")
            skipped[k] = v
            last = k
        r.finish()
        return cls(
            chain_id=chain_id, iteration=iteration, chain_key=chain_key,
            signing_public_key=pub, skipped=skipped,
        )


@dataclass(frozen=True, slots=True, kw_only=True)
class SenderKeyRecord:
    """All chains we hold for one sender in one group, newest first.

    Layout::

        | version u8 = 1 | n u8 (<= 5) | n * var32(InboundSenderKey state) |
    """

    chains: tuple[InboundSenderKey, ...] = ()

    def __post_init__(self) -> None:
        if len(self.chains) > MAX_CHAINS_PER_SENDER:
            raise InvalidKey(f"at most {MAX_CHAINS_PER_SENDER} chains per sender")

    def __repr__(self) -> str:
        return f"SenderKeyRecord(chain_ids={[c.chain_id for c in self.chains]})"

    def chain(self, chain_id: int) -> InboundSenderKey:
        """The chain with *chain_id*, or :class:`UnknownSenderChain`."""
        for c in self.chains:
            if c.chain_id == chain_id:
                return c
        raise UnknownSenderChain(chain_id)

    def process_distribution(self, dist: SenderKeyDistribution) -> SenderKeyRecord:
        """Add a chain from a distribution (idempotent for a known chain).

        A repeated distribution for a chain we hold never rewinds it (that would
        re-open used keys); the oldest chain is dropped beyond the limit.

        Raises:
            SenderChainConflict: known chain id with a different signing key.
        """
        for c in self.chains:
            if c.chain_id == dist.chain_id:
                if hmac.compare_digest(c.signing_public_key, dist.signing_public_key):
                    return self
                raise SenderChainConflict(dist.chain_id)
        new = InboundSenderKey.from_distribution(dist)
        return SenderKeyRecord(chains=(new, *self.chains[: MAX_CHAINS_PER_SENDER - 1]))

    def decrypt(self, message: bytes) -> tuple[SenderKeyRecord, bytes]:
        """Decrypt with the chain the message names; see :meth:`InboundSenderKey.decrypt`.

        Returns:
            ``(next_record, plaintext)``; commit *next_record* only now.
        """
        chain_id, iteration = _parse_header(message)
        chains = self.chains
        for i, c in enumerate(chains):
            if c.chain_id == chain_id:
                nxt, plaintext = c._decrypt(message, iteration)
                return SenderKeyRecord(chains=(*chains[:i], nxt, *chains[i + 1 :])), plaintext
        raise UnknownSenderChain(chain_id)

    def to_bytes(self) -> bytes:
        return bytes([SENDER_KEY_VERSION, len(self.chains)]) + b"".join(
            var32(c.to_bytes()) for c in self.chains
        )

    @classmethod
    def from_bytes(cls, data: bytes) -> SenderKeyRecord:
        """Raises DecodeError or UnsupportedVersion on malformed input."""
        r = Reader(data, "SenderKeyRecord")
        check_version("SenderKeyRecord", r.u8(), SENDER_KEY_VERSION)
        n = r.u8()
        if n > MAX_CHAINS_PER_SENDER:
            raise DecodeError("SenderKeyRecord", f"{n} chains exceed {MAX_CHAINS_PER_SENDER}")
        limit = 1 + 8 + 64 + 2 + MAX_SKIPPED_KEYS * _SKIPPED_ENTRY.size
        chains = tuple(InboundSenderKey.from_bytes(r.var32(limit)) for _ in range(n))
        if len({c.chain_id for c in chains}) != n:
            raise DecodeError("SenderKeyRecord", "duplicate chain id")
        r.finish()
        return cls(chains=chains)
