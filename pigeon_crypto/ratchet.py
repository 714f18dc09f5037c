"""The Double Ratchet with header encryption (Signal spec section 4).

Section numbers refer to Signal's "The Double Ratchet Algorithm", revision 1
(2016-11-20): 4 "Double Ratchet with header encryption", 5.2 "Recommended
cryptographic algorithms", 6.4/6.5 (skipped keys, deferred key generation).

Theory of operation
-------------------
A :class:`RatchetState` is an immutable value. :meth:`RatchetState.encrypt`
returns the message *and* the successor state; :meth:`RatchetState.decrypt`
derives a candidate successor, authenticates and decrypts, and only then
returns it (commit after verification). The input state is never modified, so
a failed decrypt leaves the caller holding a usable state, and a caller that
persists ``(new state, ciphertext)`` in one transaction and resends the stored
bytes never encrypts two messages under one message key.

Keys and KDFs (spec 5.2, "Recommended cryptographic algorithms")::

    init:    root_key || shared_hka || shared_nhkb
               = HKDF-SHA-256(ikm=SK, salt=0^32, info="Pigeon_v1_DoubleRatchet_init", L=96)
    KDF_RK:  root_key' || chain_key || next_header_key
               = HKDF-SHA-256(ikm=DH out, salt=root_key, info="Pigeon_v1_DoubleRatchet_root", L=96)
    KDF_CK:  message_key = HMAC-SHA-256(chain_key, 0x01); chain_key' = HMAC-SHA-256(chain_key, 0x02)
    DH:      X25519; an all-zero output (low-order peer key) is rejected (InvalidKey)

Message layout (version 1)::

    | offset | size   | field                                                           |
    |--------|--------|-----------------------------------------------------------------|
    | 0      | 1      | version = 0x01                                                  |
    | 1      | 24     | header nonce (random, from ``rng``)                             |
    | 25     | 56     | XChaCha20-Poly1305(header_key, nonce, AD=version, header)       |
    | 81     | len+16 | AES-256-GCM(message_key, nonce=0^12, AD=body AD, plaintext)     |

    header (40 bytes) = DH ratchet public key (32) || PN (u32 BE) || N (u32 BE)
    body AD           = associated_data || message[0:81]   (spec: CONCAT(AD, enc_header))

Nonces. A header key serves a whole sending chain (spec 4.1), so header nonces
are drawn at random; with XChaCha20's 192-bit nonces a repetition among the
at most 2^32 - 1 messages of one chain has probability below 2^-129.
A message key encrypts exactly one message, which is what makes the constant
body nonce safe (spec 3.1 and 5.2); the API guarantees it by construction
(each ``encrypt`` returns a state with the next key).

Decrypt order (spec 4.6, ``RatchetDecryptHE``): (1) the skipped-key store,
one trial header decryption per *distinct* stored header key other than the
current receiving header key; (2) HKr, the current receiving chain (a number
below Nr is looked up in the store under HKr, otherwise it is a replay);
(3) NHKr, the next receiving chain, which triggers a DH ratchet step.

Deviation from the spec's pseudocode, same keys and bytes (spec 6.5, "Deferring
new ratchet key generation", allows it): ``decrypt`` takes no
``rng``, so the second half of ``DHRatchetHE`` (new DHs, second KDF_RK) runs at
the next ``encrypt`` (state :class:`~._ratchet_state.PendingSending`). Between
the two halves no DH step can legitimately arrive (the peer has not seen our
new key), so NHKr is not tried then; and the used private key is deleted at the
first half, earlier than the spec would.

Errors (all :class:`~pigeon_crypto.errors.PigeonError`; messages never contain
key or plaintext bytes):

* :class:`DecodeError`: shorter than 97 bytes; header counter out of range.
* :class:`UnknownVersion` / :class:`VersionTooOld`: version byte (0 is unknown).
* :class:`HeaderDecryptionError`: no known header key opens the header.
* :class:`MessageDecryptionError`: the header opened but the body (or AD) did not.
* :class:`ReplayError`: a number already consumed (or its key evicted);
  :class:`SkippedKeyExpired` (a ``ReplayError``): its key outlived
  ``SKIPPED_KEY_TTL_MS``.
* :class:`TooManySkipped`: a gap above ``MAX_SKIP`` in one chain.
* :class:`InvalidKey`: a peer ratchet key giving an all-zero DH output.
* :class:`SendingUnavailable`: ``encrypt`` before the responder has received a
  message, or after 2^32 - 1 messages in one chain.

Normative text: ``docs/protocol.md §7``; vectors: ``docs/vectors/ratchet.json``.
"""

from __future__ import annotations

from dataclasses import dataclass, field

from cryptography.exceptions import InvalidTag

from ._ratchet_primitives import (
    AESGCM,
    BODY_NONCE,
    CK_CONSTANT,
    HEAD_SIZE,
    HEADER_NONCE_SIZE,
    KEY_SIZE,
    MAX_CHAIN_INDEX,
    MESSAGE_VERSION,
    MIN_MESSAGE_SIZE,
    MK_CONSTANT,
    VERSION_BYTE,
    check_message_version,
    hmac_digest,
    kdf_init,
    load_private,
    open_header,
    pack_u32,
    unpack_counters,
    xchacha_seal,
)
from ._ratchet_skipped import (
    EMPTY,
    MAX_SKIPPED_CHAINS,
    MAX_SKIPPED_KEYS,
    SKIPPED_KEY_TTL_MS,
    SkippedKeys,
)
from ._ratchet_state import (
    SNAPSHOT_VERSION,
    PendingSending,
    ReceivingChain,
    Root,
    Sending,
    SendingChain,
    decode_snapshot,
    encode_snapshot,
)
from ._ratchet_steps import (
    MAX_SKIP,
    Parts,
    SendingUnavailable,
    SkippedKeyExpired,
    activate_sending,
    decrypt_current_chain,
    decrypt_dh_step,
    decrypt_with_skipped,
    find_skipped_chain,
)
from .errors import DecodeError, HeaderDecryptionError, InvalidKey, MessageDecryptionError
from .rng import Rng

__all__ = [
    "MAX_SKIP",
    "MAX_SKIPPED_CHAINS",
    "MAX_SKIPPED_KEYS",
    "MESSAGE_VERSION",
    "SKIPPED_KEY_TTL_MS",
    "SNAPSHOT_VERSION",
    "Decrypted",
    "Encrypted",
    "RatchetState",
    "SendingUnavailable",
    "SkippedKeyExpired",
    "init_initiator",
    "init_responder",
]

_MAX_AD = 0xFFFF  # the snapshot stores associated_data with a u16 length


@dataclass(frozen=True, slots=True, kw_only=True)
class Encrypted:
    """Result of :meth:`RatchetState.encrypt`: persist ``state`` and ``message`` together."""

    state: RatchetState
    message: bytes


@dataclass(frozen=True, slots=True, kw_only=True)
class Decrypted:
    """Result of :meth:`RatchetState.decrypt`: the successor state and the plaintext."""

    state: RatchetState
    plaintext: bytes = field(repr=False)


@dataclass(frozen=True, slots=True, kw_only=True, eq=False, repr=False)
class RatchetState:
    """One side of a Double Ratchet session (spec 4.3 state variables), immutable.

    Build with :func:`init_initiator`, :func:`init_responder` or
    :meth:`from_bytes`; never construct directly. States compare by identity
    (they hold key objects); compare snapshots to compare values.
    """

    associated_data: bytes
    _root: Root
    _sending: Sending
    _receiving: ReceivingChain | None
    _skipped: SkippedKeys

    # -- public read-only view ------------------------------------------------------------------

    @property
    def ratchet_public_key(self) -> bytes | None:
        """Our current DH ratchet public key (``None`` until the next ``encrypt`` makes one)."""
        return self._root.dhs_public

    @property
    def peer_ratchet_public_key(self) -> bytes | None:
        """The peer's current DH ratchet public key (DHr)."""
        return self._root.dhr

    @property
    def can_send(self) -> bool:
        """False only for a responder that has not received a message yet."""
        return self._sending is not None

    @property
    def sending_index(self) -> int:
        """Ns: messages sent in the current sending chain (0 when none or pending)."""
        sending = self._sending
        return sending.n if isinstance(sending, SendingChain) else 0

    @property
    def receiving_index(self) -> int:
        """Nr: the next expected message number in the current receiving chain."""
        receiving = self._receiving
        return 0 if receiving is None else receiving.n

    @property
    def previous_sending_length(self) -> int:
        """PN: length of our previous sending chain."""
        sending = self._sending
        return 0 if sending is None else sending.pn

    @property
    def skipped_count(self) -> int:
        """Number of stored skipped message keys."""
        return len(self._skipped)

    def __repr__(self) -> str:
        ours = self._root.dhs_public
        theirs = self._root.dhr
        match self._sending:
            case SendingChain(n=n):
                sending = f"active:{n}"
            case PendingSending():
                sending = "pending"
            case None:
                sending = "none"
        return (
            f"RatchetState(ours={ours[:4].hex() + '…' if ours else None}, "
            f"theirs={theirs[:4].hex() + '…' if theirs else None}, sending={sending}, "
            f"pn={self.previous_sending_length}, receiving={self.receiving_index}, "
            f"skipped={len(self._skipped)})"
        )

    # -- encrypt (spec 4.5 RatchetEncryptHE) ------------------------------------------------------

    def encrypt(self, plaintext: bytes, *, rng: Rng) -> Encrypted:
        """Encrypt one message with the next message key of the sending chain.

        Args:
            plaintext: the (already padded) message bytes.
            rng: randomness for the header nonce (24 bytes) and, right after a
                received DH step, first the new ratchet private key (32 bytes).

        Returns:
            ``Encrypted(state, message)``. Persist both before sending; to
            retry, resend ``message`` — never call ``encrypt`` on the old state
            again, which would reuse its message key for different bytes.

        Raises:
            SendingUnavailable: responder before its first received message,
                or 2^32 - 1 messages sent in this chain.
            InvalidKey: ``rng`` returned the wrong number of bytes.
        """
        root = self._root
        sending = self._sending
        if type(sending) is not SendingChain:
            root, sending = activate_sending(root, sending, rng)
        header_key, chain_key, n, pn, prefix = sending
        if n > MAX_CHAIN_INDEX:
            raise SendingUnavailable("chain-exhausted")
        nonce = rng(HEADER_NONCE_SIZE)
        if len(nonce) != HEADER_NONCE_SIZE:
            raise InvalidKey(f"rng returned {len(nonce)} bytes for the header nonce")
        enc_header = xchacha_seal(prefix + pack_u32(n), VERSION_BYTE, nonce, header_key)
        head = VERSION_BYTE + nonce + enc_header
        ad = self.associated_data
        body = AESGCM(hmac_digest(chain_key, MK_CONSTANT, "sha256")).encrypt(
            BODY_NONCE, plaintext, ad + head
        )
        next_sending = _new_tuple(SendingChain, (
            header_key, hmac_digest(chain_key, CK_CONSTANT, "sha256"), n + 1, pn, prefix
        ))
        return _encrypted(
            _state(ad, root, next_sending, self._receiving, self._skipped), head + body
        )

    # -- decrypt (spec 4.6 RatchetDecryptHE) ------------------------------------------------------

    def decrypt(self, message: bytes, *, now_ms: int) -> Decrypted:
        """Authenticate and decrypt one message; return the successor state.

        Args:
            message: the wire bytes (layout in the module docstring).
            now_ms: current Unix time in milliseconds: stamps skipped keys
                created by this call and expires old ones.

        Returns:
            ``Decrypted(state, plaintext)``; ``self`` is unchanged.

        Raises:
            DecodeError, UnknownVersion, VersionTooOld, HeaderDecryptionError,
            MessageDecryptionError, ReplayError, SkippedKeyExpired,
            TooManySkipped, InvalidKey: see the module docstring. On any error
            no state changes.
            ValueError: ``now_ms`` is not a non-negative integer (checked when
                skipped keys would be stored with it).
        """
        if type(message) is not bytes:
            message = _as_bytes(message)
        if len(message) < MIN_MESSAGE_SIZE or message[0] != MESSAGE_VERSION:
            _reject_framing(message)
        nonce = message[1:25]
        enc_header = message[25:HEAD_SIZE]
        ad = self.associated_data
        root = self._root
        receiving = self._receiving
        skipped = self._skipped

        if skipped is not EMPTY:  # (1) stored header keys of earlier chains
            current = None if receiving is None else receiving.header_key
            found = find_skipped_chain(skipped, current, nonce, enc_header)
            if found is not None:
                skipped, plaintext = decrypt_with_skipped(
                    skipped, found[0], found[1], ad, message, now_ms
                )
                return self._successor((root, self._sending, receiving, skipped, plaintext))

        if receiving is not None:  # (2) HKr, the current receiving chain
            header = open_header(receiving.header_key, nonce, enc_header)
            if header is not None:
                n = unpack_counters(header, KEY_SIZE)[1]
                if n != receiving.n or n > MAX_CHAIN_INDEX:
                    return self._successor(decrypt_current_chain(
                        root, self._sending, receiving, skipped, n, ad, message, now_ms
                    ))
                # Hot path: the next message of the current chain (inline, no extra calls).
                chain_key = receiving.chain_key
                try:
                    plaintext = AESGCM(hmac_digest(chain_key, MK_CONSTANT, "sha256")).decrypt(
                        BODY_NONCE, message[HEAD_SIZE:], ad + message[:HEAD_SIZE]
                    )
                except InvalidTag:
                    raise MessageDecryptionError("message body failed authentication") from None
                if skipped is not EMPTY:
                    skipped = skipped.purged(now_ms)
                next_receiving = _new_tuple(ReceivingChain, (
                    receiving.header_key, hmac_digest(chain_key, CK_CONSTANT, "sha256"), n + 1
                ))
                return _decrypted(
                    _state(ad, root, self._sending, next_receiving, skipped), plaintext
                )

        # (3) NHKr: a DH ratchet step. Not tried while sending is pending: the peer
        # cannot have seen our next ratchet key yet, so no honest message uses NHKr.
        if root.dhs is not None:
            header = open_header(root.next_header_key_recv, nonce, enc_header)
            if header is not None:
                return self._successor(decrypt_dh_step(
                    root, self._sending, receiving, skipped, header, ad, message, now_ms
                ))
        raise HeaderDecryptionError("no known header key decrypts the message header")

    def _successor(self, parts: Parts) -> Decrypted:
        root, sending, receiving, skipped, plaintext = parts
        state = _state(self.associated_data, root, sending, receiving, skipped)
        return _decrypted(state, plaintext)

    # -- snapshot -----------------------------------------------------------------------------

    def to_bytes(self) -> bytes:
        """Versioned snapshot (layout in ``pigeon_crypto._ratchet_state``). Contains secrets."""
        return encode_snapshot(
            self.associated_data, self._root, self._sending, self._receiving, self._skipped
        )

    @classmethod
    def from_bytes(cls, data: bytes) -> RatchetState:
        """Inverse of :meth:`to_bytes`; ``from_bytes(b).to_bytes() == b``.

        Raises:
            DecodeError: truncated, trailing bytes, or an inconsistent state.
            UnknownVersion, VersionTooOld: foreign snapshot version.
        """
        associated_data, root, sending, receiving, skipped = decode_snapshot(data)
        return cls(
            associated_data=associated_data,
            _root=root,
            _sending=sending,
            _receiving=receiving,
            _skipped=skipped,
        )


# Fast constructors for the three frozen result types. The hot path builds one
# RatchetState and one Encrypted/Decrypted per message; the generated __init__
# of a frozen dataclass sets each field through object.__setattr__ with keyword
# arguments (~1.5 us for RatchetState here), while filling the slots through
# their descriptors is ~3x cheaper. The result is the same object: every slot is
# set exactly once, and the instance is frozen from then on.
_new = object.__new__
_new_tuple = tuple.__new__  # NamedTuple(...) without its Python-level __new__ (half the cost)
_set_ad = RatchetState.__dict__["associated_data"].__set__
_set_root = RatchetState.__dict__["_root"].__set__
_set_sending = RatchetState.__dict__["_sending"].__set__
_set_receiving = RatchetState.__dict__["_receiving"].__set__
_set_skipped = RatchetState.__dict__["_skipped"].__set__
_set_enc_state = Encrypted.__dict__["state"].__set__
_set_enc_message = Encrypted.__dict__["message"].__set__
_set_dec_state = Decrypted.__dict__["state"].__set__
_set_dec_plaintext = Decrypted.__dict__["plaintext"].__set__


def _state(
    associated_data: bytes,
    root: Root,
    sending: Sending,
    receiving: ReceivingChain | None,
    skipped: SkippedKeys,
) -> RatchetState:
    state: RatchetState = _new(RatchetState)
    _set_ad(state, associated_data)
    _set_root(state, root)
    _set_sending(state, sending)
    _set_receiving(state, receiving)
    _set_skipped(state, skipped)
    return state


def _encrypted(state: RatchetState, message: bytes) -> Encrypted:
    out: Encrypted = _new(Encrypted)
    _set_enc_state(out, state)
    _set_enc_message(out, message)
    return out


def _decrypted(state: RatchetState, plaintext: bytes) -> Decrypted:
    out: Decrypted = _new(Decrypted)
    _set_dec_state(out, state)
    _set_dec_plaintext(out, plaintext)
    return out


# ----------------------------------------------------------------------------------------------
# initialisation (spec 4.4)


def init_initiator(
    *, shared_secret: bytes, peer_ratchet_public: bytes, associated_data: bytes, rng: Rng
) -> RatchetState:
    """Alice's side, spec ``RatchetInitAliceHE``.

    Args:
        shared_secret: the 32-byte PQXDH output SK.
        peer_ratchet_public: Bob's signed prekey (X25519 public, 32 bytes),
            his first ratchet key.
        associated_data: the PQXDH AD (both identities), bound to every message.
        rng: randomness for Alice's first ratchet key pair (32 bytes).

    Raises:
        InvalidKey: a key of the wrong size, or a low-order ``peer_ratchet_public``.
        ValueError: ``associated_data`` longer than 65535 bytes.
    """
    root_key, shared_hka, shared_nhkb = _init_keys(shared_secret, associated_data)
    if len(peer_ratchet_public) != KEY_SIZE:
        raise InvalidKey(f"peer ratchet public key must be {KEY_SIZE} bytes")
    root = Root(
        root_key=root_key,
        dhs=None,
        dhs_public=None,
        dhr=bytes(peer_ratchet_public),
        next_header_key_send=shared_nhkb,  # placeholder, replaced by the KDF_RK below
        next_header_key_recv=shared_nhkb,
    )
    root, sending = activate_sending(root, PendingSending(header_key=shared_hka, pn=0), rng)
    return RatchetState(
        associated_data=bytes(associated_data),
        _root=root,
        _sending=sending,
        _receiving=None,
        _skipped=EMPTY,
    )


def init_responder(
    *, shared_secret: bytes, our_ratchet_private: bytes, associated_data: bytes
) -> RatchetState:
    """Bob's side, spec ``RatchetInitBobHE``: he can send after his first received message.

    Args:
        shared_secret: the 32-byte PQXDH output SK.
        our_ratchet_private: the raw 32 private bytes of his signed prekey (X25519).
        associated_data: the PQXDH AD (both identities).

    Raises:
        InvalidKey: a key of the wrong size.
        ValueError: ``associated_data`` longer than 65535 bytes.
    """
    root_key, shared_hka, shared_nhkb = _init_keys(shared_secret, associated_data)
    dhs, dhs_public = load_private(our_ratchet_private)
    root = Root(
        root_key=root_key,
        dhs=dhs,
        dhs_public=dhs_public,
        dhr=None,
        next_header_key_send=shared_nhkb,
        next_header_key_recv=shared_hka,
    )
    return RatchetState(
        associated_data=bytes(associated_data),
        _root=root,
        _sending=None,
        _receiving=None,
        _skipped=EMPTY,
    )


# ----------------------------------------------------------------------------------------------
# helpers


def _init_keys(shared_secret: bytes, associated_data: bytes) -> tuple[bytes, bytes, bytes]:
    if len(shared_secret) != KEY_SIZE:
        raise InvalidKey(f"shared secret must be {KEY_SIZE} bytes")
    if len(associated_data) > _MAX_AD:
        raise ValueError(f"associated_data must be at most {_MAX_AD} bytes")
    return kdf_init(bytes(shared_secret))


def _as_bytes(message: object) -> bytes:
    if isinstance(message, (bytearray, memoryview)):
        return bytes(message)
    raise DecodeError("ratchet message", f"expected bytes, got {type(message).__name__}")


def _reject_framing(message: bytes) -> None:
    """Raise the right error for a message that is too short or has a foreign version."""
    if message:
        check_message_version(message[0])
    raise DecodeError(
        "ratchet message", f"{len(message)} bytes, shorter than the minimum {MIN_MESSAGE_SIZE}"
    )
