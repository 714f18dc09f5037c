"""The Double Ratchet's slow paths as pure functions over state parts (internal).

``ratchet.py`` keeps the two hot paths (next message of the current sending
or receiving chain) inline; everything else — skipped keys, gaps, DH ratchet
steps, the deferred second half of a DH step — lives here. Each function
takes the parts of a state (see ``_ratchet_state``) and returns new parts plus
the plaintext; none mutates its inputs, and none returns before the message
body has authenticated (commit after verification).

Spec references are to Signal's "The Double Ratchet Algorithm", revision 1:
2.6 and 3.5 (out-of-order messages, MAX_SKIP), 4.6 (decrypting with header
encryption), 6.4 (deleting skipped keys), 6.5 (deferred key generation).
"""

from __future__ import annotations

import hmac

from cryptography.exceptions import InvalidTag

from ._ratchet_primitives import (
    AESGCM,
    BODY_NONCE,
    CK_CONSTANT,
    HEAD_SIZE,
    KEY_SIZE,
    MAX_CHAIN_INDEX,
    MK_CONSTANT,
    dh,
    generate_dh,
    hmac_digest,
    kdf_rk,
    open_header,
    unpack_counters,
)
from ._ratchet_skipped import SKIPPED_KEY_TTL_MS, SkippedKeys
from ._ratchet_state import (
    PendingSending,
    ReceivingChain,
    Root,
    Sending,
    SendingChain,
    header_prefix,
)
from .errors import (
    CryptoError,
    DecodeError,
    MessageDecryptionError,
    ReplayError,
    TooManySkipped,
)
from .rng import Rng

__all__ = [
    "MAX_SKIP",
    "Parts",
    "SendingUnavailable",
    "SkippedKeyExpired",
    "activate_sending",
    "decrypt_current_chain",
    "decrypt_dh_step",
    "decrypt_with_skipped",
    "find_skipped_chain",
    "open_body",
]

MAX_SKIP = 1000
"""Most message keys one message may skip in one chain (spec 3.5): covers real loss, caps work."""

Parts = tuple[Root, Sending, ReceivingChain | None, SkippedKeys, bytes]
"""(root, sending, receiving, skipped, plaintext): a successor state and its plaintext."""


class SkippedKeyExpired(ReplayError):
    """The message's skipped key was older than ``SKIPPED_KEY_TTL_MS``; it is no longer accepted.

    Attributes:
        age_ms: how old the key was at ``now_ms``.
        ttl_ms: the limit.
    """

    def __init__(self, age_ms: int, ttl_ms: int) -> None:
        super().__init__(f"skipped message key expired ({age_ms} ms old, limit {ttl_ms} ms)")
        self.age_ms = age_ms
        self.ttl_ms = ttl_ms


class SendingUnavailable(CryptoError):
    """This state cannot encrypt: no sending chain yet, or the chain is exhausted.

    Attributes:
        reason: ``"no-sending-chain"`` (responder before the first received
            message) or ``"chain-exhausted"`` (2^32 - 1 messages without a reply).
    """

    def __init__(self, reason: str) -> None:
        super().__init__(f"cannot encrypt: {reason}")
        self.reason = reason


def activate_sending(root: Root, sending: Sending, rng: Rng) -> tuple[Root, SendingChain]:
    """Second half of spec ``DHRatchetHE``: new DHs, ``KDF_RK(RK, DH(DHs, DHr))``, HKs = NHKs.

    ``decrypt`` has no ``rng``, so a received DH step leaves the state
    :class:`PendingSending` and the first ``encrypt`` afterwards lands here.
    ``rng`` is asked for exactly 32 bytes (the new private key).

    Raises:
        SendingUnavailable: *sending* is ``None`` (responder before any message).
        InvalidKey: the peer's ratchet key is low order.
    """
    match sending:
        case SendingChain():
            return root, sending
        case None:
            raise SendingUnavailable("no-sending-chain")
        case PendingSending(header_key=header_key, pn=pn):
            pass
    assert root.dhr is not None  # a pending state always knows the peer's key
    dhs, dhs_public = generate_dh(rng)
    root_key, chain_key, next_header_key_send = kdf_rk(root.root_key, dh(dhs, root.dhr))
    new_root = Root(
        root_key=root_key,
        dhs=dhs,
        dhs_public=dhs_public,
        dhr=root.dhr,
        next_header_key_send=next_header_key_send,
        next_header_key_recv=root.next_header_key_recv,
    )
    chain = SendingChain(
        header_key=header_key,
        chain_key=chain_key,
        n=0,
        pn=pn,
        prefix=header_prefix(dhs_public, pn),
    )
    return new_root, chain


def open_body(message_key: bytes, associated_data: bytes, message: bytes) -> bytes:
    """AES-256-GCM decrypt of ``message[81:]`` with AD = associated_data || ``message[:81]``."""
    try:
        plaintext: bytes = AESGCM(message_key).decrypt(
            BODY_NONCE, message[HEAD_SIZE:], associated_data + message[:HEAD_SIZE]
        )
    except InvalidTag:
        raise MessageDecryptionError("message body failed authentication") from None
    return plaintext


def find_skipped_chain(
    skipped: SkippedKeys, current: bytes | None, nonce: bytes, enc_header: bytes
) -> tuple[bytes, int] | None:
    """Spec ``TrySkippedMessageKeysHE``: one header trial per distinct stored header key.

    The current receiving header key (*current*) is passed over: the HKr step
    tries it next and consults the store for numbers below Nr.

    Returns:
        ``(header_key, N)`` of the stored chain whose key opens the header, or ``None``.
    """
    for header_key in skipped:
        if current is not None and hmac.compare_digest(header_key, current):
            continue
        header = open_header(header_key, nonce, enc_header)
        if header is not None:
            return header_key, unpack_counters(header, KEY_SIZE)[1]
    return None


def decrypt_with_skipped(
    skipped: SkippedKeys,
    header_key: bytes,
    n: int,
    associated_data: bytes,
    message: bytes,
    now_ms: int,
) -> tuple[SkippedKeys, bytes]:
    """Decrypt with the stored key ``(header_key, n)``; returns (store without it, plaintext).

    Raises:
        ReplayError: no such key (already used, or evicted by the bounds).
        SkippedKeyExpired: the key is older than ``SKIPPED_KEY_TTL_MS``.
        MessageDecryptionError: the body does not authenticate.
    """
    entry = skipped.get(header_key, n)
    if entry is None:
        raise ReplayError("message number already decrypted (or its skipped key was evicted)")
    message_key, created_ms = entry
    age = now_ms - created_ms
    if age > SKIPPED_KEY_TTL_MS:
        raise SkippedKeyExpired(age, SKIPPED_KEY_TTL_MS)
    plaintext = open_body(message_key, associated_data, message)
    return skipped.without(header_key, n).purged(now_ms), plaintext


def decrypt_current_chain(
    root: Root,
    sending: Sending,
    receiving: ReceivingChain,
    skipped: SkippedKeys,
    n: int,
    associated_data: bytes,
    message: bytes,
    now_ms: int,
) -> Parts:
    """HKr opened the header but N is not Nr: a late message or a gap (spec 3.5).

    Raises:
        DecodeError: N out of range. ReplayError, SkippedKeyExpired: N < Nr
        without a usable stored key. TooManySkipped: N - Nr > MAX_SKIP.
        MessageDecryptionError: the body does not authenticate.
    """
    _check_index(n)
    if n < receiving.n:
        skipped, plaintext = decrypt_with_skipped(
            skipped, receiving.header_key, n, associated_data, message, now_ms
        )
        return root, sending, receiving, skipped, plaintext
    _check_gap(n - receiving.n)
    _check_now(now_ms)
    entries, chain_key = _skip_keys(receiving.chain_key, receiving.n, n)
    plaintext = open_body(hmac_digest(chain_key, MK_CONSTANT, "sha256"), associated_data, message)
    new_receiving = ReceivingChain(
        header_key=receiving.header_key,
        chain_key=hmac_digest(chain_key, CK_CONSTANT, "sha256"),
        n=n + 1,
    )
    skipped = skipped.purged(now_ms).with_added(receiving.header_key, entries, now_ms)
    return root, sending, new_receiving, skipped, plaintext


def decrypt_dh_step(
    root: Root,
    sending: Sending,
    receiving: ReceivingChain | None,
    skipped: SkippedKeys,
    header: bytes,
    associated_data: bytes,
    message: bytes,
    now_ms: int,
) -> Parts:
    """NHKr opened the header: ``SkipMessageKeysHE(PN)`` then the first half of ``DHRatchetHE``.

    Stores the rest of the old receiving chain (up to PN) and the gap before N
    in the new one, derives the new receiving chain from
    ``KDF_RK(RK, DH(DHs, header.dh))``, deletes DHs and leaves sending pending.

    Raises:
        DecodeError: N out of range. TooManySkipped: PN - Nr or N above MAX_SKIP.
        InvalidKey: low-order peer ratchet key. MessageDecryptionError: bad body.
    """
    assert root.dhs is not None  # the caller does not try NHKr while sending is pending
    pn, n = unpack_counters(header, KEY_SIZE)
    _check_index(n)
    old_gap = pn - receiving.n if receiving is not None else 0
    _check_gap(old_gap)
    _check_gap(n)
    if old_gap > 0 or n > 0:
        _check_now(now_ms)
    peer_public = header[:KEY_SIZE]
    root_key, chain_key, next_header_key_recv = kdf_rk(root.root_key, dh(root.dhs, peer_public))
    new_entries, chain_key = _skip_keys(chain_key, 0, n)
    plaintext = open_body(hmac_digest(chain_key, MK_CONSTANT, "sha256"), associated_data, message)

    if skipped:
        skipped = skipped.purged(now_ms)
    if receiving is not None and old_gap > 0:
        old_entries, _ = _skip_keys(receiving.chain_key, receiving.n, pn)
        skipped = skipped.with_added(receiving.header_key, old_entries, now_ms)
    if new_entries:
        skipped = skipped.with_added(root.next_header_key_recv, new_entries, now_ms)
    new_root = Root(
        root_key=root_key,
        dhs=None,  # used up; the next encrypt generates DHs (second half of the step)
        dhs_public=None,
        dhr=peer_public,
        next_header_key_send=root.next_header_key_send,
        next_header_key_recv=next_header_key_recv,
    )
    previous_length = sending.n if isinstance(sending, SendingChain) else 0
    new_sending = PendingSending(header_key=root.next_header_key_send, pn=previous_length)
    new_receiving = ReceivingChain(
        header_key=root.next_header_key_recv,
        chain_key=hmac_digest(chain_key, CK_CONSTANT, "sha256"),
        n=n + 1,
    )
    return new_root, new_sending, new_receiving, skipped, plaintext


def _skip_keys(
    chain_key: bytes, start: int, until: int
) -> tuple[list[tuple[int, bytes]], bytes]:
    """Message keys ``start .. until-1`` (spec ``SkipMessageKeysHE``), chain key at *until*."""
    entries = []
    for i in range(start, until):
        entries.append((i, hmac_digest(chain_key, MK_CONSTANT, "sha256")))
        chain_key = hmac_digest(chain_key, CK_CONSTANT, "sha256")
    return entries, chain_key


def _check_index(n: int) -> None:
    """An honest sender never uses N above MAX_CHAIN_INDEX (so Nr fits a u32)."""
    if n > MAX_CHAIN_INDEX:
        raise DecodeError("ratchet header", f"message number {n} out of range")


def _check_gap(gap: int) -> None:
    if gap > MAX_SKIP:
        raise TooManySkipped(gap, MAX_SKIP)


def _check_now(now_ms: int) -> None:
    """Skipped keys keep ``now_ms`` as a u64 in the snapshot: reject a nonsensical clock."""
    if not isinstance(now_ms, int) or not 0 <= now_ms <= 0xFFFF_FFFF_FFFF_FFFF:
        raise ValueError("now_ms must be a non-negative Unix time in milliseconds")
