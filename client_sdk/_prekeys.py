"""Prekey lifecycle for the core (protocol §5): generate what is missing, rotate the
signed prekey on a schedule, top up one-time keys, and drop retired signed prekeys
after their grace period. Pure apart from the store it is given.

Policy (``PrekeyPolicy``):

* one signed X25519 prekey, replaced every ``signed_rotation_ms`` (7 days); the
  replaced one is *retired* at once (no longer uploaded) but kept, with its replay
  records, for ``signed_grace_ms`` (37 days: the relay's 30-day envelope TTL plus the
  week an initiation may sit in a sender's outbox), then deleted;
* one last-resort ML-KEM-768 prekey (made once);
* ``one_time_target`` one-time X25519 and ML-KEM prekeys. At registration the client
  holds and uploads that many; on the relay's ``PrekeysLow`` notice it generates
  ``target - relay count`` more of each kind (the relay's count, not ours: keys the
  relay handed out in bundles that never became initiations stay in the store).
"""

from __future__ import annotations

from dataclasses import dataclass

from pigeon_crypto.prekeys import KemKind, KemPreKeyPair, OneTimePreKeyPair, SignedPreKeyPair
from pigeon_crypto.rng import Rng

from .store.protocols import ClientStore
from .store.records import LocalIdentity, PrekeyKind, PrekeyUpload

__all__ = ["PrekeyPolicy", "mark_uploaded", "plan_prekeys", "resign_after_rotation"]

_DAY_MS = 86_400_000


@dataclass(frozen=True, slots=True, kw_only=True)
class PrekeyPolicy:
    one_time_target: int = 100
    """One-time keys of each kind kept on the relay (one upload frame of each)."""
    signed_rotation_ms: int = 7 * _DAY_MS
    """Signal rotates its signed prekey weekly to monthly; weekly bounds exposure."""
    signed_grace_ms: int = 37 * _DAY_MS
    """Keep a retired signed prekey this long: initiations may be 30 days in a mailbox."""


def plan_prekeys(store: ClientStore, identity: LocalIdentity, *, now_ms: int, rng: Rng,
                 policy: PrekeyPolicy, relay_one_time: int | None = None,
                 relay_kem_one_time: int | None = None) -> PrekeyUpload:
    """Generate whatever the policy says is missing and return every unpublished key.

    Args:
        relay_one_time / relay_kem_one_time: counts from a ``PrekeysLow`` notice; when
            given, top up to the target from them instead of from our own counts.
    """
    status = store.prekey_status()
    key_pair = identity.key_pair
    if (status.signed_prekey_id is None or status.signed_prekey_created_ms is None
            or now_ms - status.signed_prekey_created_ms >= policy.signed_rotation_ms):
        (key_id,) = store.allocate_prekey_ids(PrekeyKind.SIGNED, 1)
        store.save_signed_prekey(SignedPreKeyPair.generate(key_pair, key_id=key_id,
                                                           now_ms=now_ms, rng=rng))
        if status.signed_prekey_id is not None:
            store.retire_signed_prekey(status.signed_prekey_id, now_ms=now_ms)
    store.delete_retired_signed_prekeys(retired_before_ms=now_ms - policy.signed_grace_ms)
    if status.last_resort_kem_id is None:
        (key_id,) = store.allocate_prekey_ids(PrekeyKind.KEM, 1)
        store.save_kem_prekeys([KemPreKeyPair.generate(
            key_pair, key_id=key_id, kind=KemKind.LAST_RESORT, now_ms=now_ms, rng=rng)])
    have_otk = status.one_time_available if relay_one_time is None else (
        relay_one_time + status.one_time_unpublished)
    missing = policy.one_time_target - have_otk
    if missing > 0:
        ids = store.allocate_prekey_ids(PrekeyKind.ONE_TIME, missing)
        store.save_one_time_prekeys([OneTimePreKeyPair.generate(key_id=i, rng=rng)
                                     for i in ids])
    unpublished_kem = status.kem_unpublished - (1 if status.last_resort_kem_id is None else 0)
    have_kem = status.kem_one_time_available if relay_kem_one_time is None else (
        relay_kem_one_time + max(0, unpublished_kem))
    missing = policy.one_time_target - have_kem
    if missing > 0:
        ids = store.allocate_prekey_ids(PrekeyKind.KEM, missing)
        store.save_kem_prekeys([KemPreKeyPair.generate(
            key_pair, key_id=i, kind=KemKind.ONE_TIME, now_ms=now_ms, rng=rng) for i in ids])
    return store.unpublished_prekeys()


def mark_uploaded(store: ClientStore, piece: PrekeyUpload, *, now_ms: int) -> None:
    """The relay acknowledged *piece*: mark its keys published."""
    if piece.signed:
        store.mark_published(PrekeyKind.SIGNED, [k.key_id for k in piece.signed], now_ms=now_ms)
    if piece.kem:
        store.mark_published(PrekeyKind.KEM, [k.key_id for k in piece.kem], now_ms=now_ms)
    if piece.one_time:
        store.mark_published(PrekeyKind.ONE_TIME, [k.key_id for k in piece.one_time],
                             now_ms=now_ms)


def resign_after_rotation(store: ClientStore, identity: LocalIdentity, *, now_ms: int,
                          rng: Rng, policy: PrekeyPolicy) -> None:
    """After an identity rotation every signed prekey must be signed by the new key: a
    new signed prekey (the old one retired), a new last-resort ML-KEM key and a new
    batch of one-time ML-KEM keys. The old private keys stay to answer initiations
    already made with them. (The relay must drop the old one-time KEM keys from its
    pool on ``RotateIdentity``: bundles carrying them no longer verify.)"""
    status = store.prekey_status()
    key_pair = identity.key_pair
    (key_id,) = store.allocate_prekey_ids(PrekeyKind.SIGNED, 1)
    store.save_signed_prekey(SignedPreKeyPair.generate(key_pair, key_id=key_id, now_ms=now_ms,
                                                       rng=rng))
    if status.signed_prekey_id is not None:
        store.retire_signed_prekey(status.signed_prekey_id, now_ms=now_ms)
    ids = store.allocate_prekey_ids(PrekeyKind.KEM, policy.one_time_target + 1)
    store.save_kem_prekeys(
        [KemPreKeyPair.generate(key_pair, key_id=ids[0], kind=KemKind.LAST_RESORT,
                                now_ms=now_ms, rng=rng)]
        + [KemPreKeyPair.generate(key_pair, key_id=i, kind=KemKind.ONE_TIME, now_ms=now_ms,
                                  rng=rng) for i in ids[1:]])
