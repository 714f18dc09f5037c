"""SQLite operations for key material: identity, prekeys, sessions, sender keys, settings.

Every function runs inside the caller's transaction (a :class:`~._sqlite_db.Tx`).
Private halves are sealed with AD = (table, column, natural key); public halves stay
in clear so that uploads and status queries need no unsealing.
"""

from __future__ import annotations

import hashlib
from collections.abc import Iterable, Sequence

from pigeon_crypto.errors import PrekeyNotFound, ReplayError
from pigeon_crypto.identity import IdentityKeyPair, IdentityPublicKey, IdentityRotation
from pigeon_crypto.pqxdh import Accepted
from pigeon_crypto.prekeys import (
    KemKind,
    KemPreKey,
    KemPreKeyPair,
    OneTimePreKey,
    OneTimePreKeyPair,
    SignedPreKey,
    SignedPreKeyPair,
)
from pigeon_crypto.ratchet import RatchetState
from pigeon_crypto.sender_keys import OutboundSenderKey, SenderKeyRecord

from ..errors import RecordNotFound, StoreConflict
from ._sqlite_db import Tx
from .records import LocalIdentity, PrekeyKind, PrekeyStatus, PrekeyUpload

ROTATION_SIZE = 407
"""An encoded IdentityRotation v1 (see pigeon_crypto.identity): fixed size, so a chain
is stored as the concatenation of its records."""
MAX_KEY_ID = 0xFFFFFFFF
MAX_ALLOCATION = 10_000
"""Most ids one allocation may reserve: far above any upload (100 keys)."""

_PREKEY_TABLES = {
    PrekeyKind.SIGNED: "signed_prekeys",
    PrekeyKind.KEM: "kem_prekeys",
    PrekeyKind.ONE_TIME: "one_time_prekeys",
}


def u32(value: int) -> bytes:
    """Row key of prekey rows: the key id, 4 bytes big-endian."""
    return value.to_bytes(4, "big")


def group_key(group_id: bytes, sender: bytes = b"") -> bytes:
    """Row key of sender-key rows: length-prefixed group id, then the member."""
    return bytes([len(group_id)]) + group_id + sender


# --- identity ---------------------------------------------------------------------------


def local_identity(tx: Tx) -> LocalIdentity | None:
    row = tx.conn.execute(
        "SELECT account_id, initial_public, rotations, key_pair FROM local_identity WHERE id = 1"
    ).fetchone()
    if row is None:
        return None
    account_id, initial_raw, rotations_raw, sealed = row
    secret = tx.unseal("local_identity", "key_pair", account_id, sealed)
    key_pair = tx.decode("identity key pair", IdentityKeyPair.from_bytes, secret)
    initial = tx.decode("identity", IdentityPublicKey.from_bytes, initial_raw)
    if len(rotations_raw) % ROTATION_SIZE:
        raise tx.corrupt("stored identity rotations have a bad length")
    rotations = tuple(
        tx.decode("identity rotation", IdentityRotation.from_bytes,
                  rotations_raw[i:i + ROTATION_SIZE])
        for i in range(0, len(rotations_raw), ROTATION_SIZE)
    )
    try:
        return LocalIdentity(account_id=account_id, initial=initial, rotations=rotations,
                             key_pair=key_pair)
    except ValueError as exc:
        raise tx.corrupt("stored identity is inconsistent") from exc


def save_local_identity(tx: Tx, identity: LocalIdentity) -> None:
    existing = local_identity(tx)
    if existing is not None:
        if existing.account_id != identity.account_id:
            raise StoreConflict("another account's identity is stored in this profile")
        old = [r.to_bytes() for r in existing.rotations]
        if [r.to_bytes() for r in identity.rotations[: len(old)]] != old:
            raise StoreConflict("the rotation chain does not extend the stored one")
    aid = identity.account_id
    tx.conn.execute(
        "INSERT INTO local_identity (id, account_id, initial_public, rotations, key_pair) "
        "VALUES (1, ?, ?, ?, ?) ON CONFLICT (id) DO UPDATE SET "
        "rotations = excluded.rotations, key_pair = excluded.key_pair",
        (aid, identity.initial.to_bytes(), b"".join(r.to_bytes() for r in identity.rotations),
         tx.seal("local_identity", "key_pair", aid, identity.key_pair.to_bytes())),
    )


# --- prekeys ----------------------------------------------------------------------------


def _private(tx: Tx, table: str, key_id: int) -> bytes | None:
    row = tx.conn.execute(f"SELECT private FROM {table} WHERE key_id = ?", (key_id,)).fetchone()  # noqa: S608
    return None if row is None else tx.unseal(table, "private", u32(key_id), row[0])


def signed_prekey(tx: Tx, key_id: int) -> SignedPreKeyPair | None:
    raw = _private(tx, "signed_prekeys", key_id)
    return None if raw is None else tx.decode("signed prekey", SignedPreKeyPair.from_bytes, raw)


def kem_prekey(tx: Tx, key_id: int) -> KemPreKeyPair | None:
    raw = _private(tx, "kem_prekeys", key_id)
    return None if raw is None else tx.decode("KEM prekey", KemPreKeyPair.from_bytes, raw)


def one_time_prekey(tx: Tx, key_id: int) -> OneTimePreKeyPair | None:
    raw = _private(tx, "one_time_prekeys", key_id)
    return None if raw is None else tx.decode("one-time prekey", OneTimePreKeyPair.from_bytes,
                                              raw)


def _replay_hash(replay_key: bytes) -> bytes:
    return hashlib.sha256(replay_key).digest()


def seen_initiation(tx: Tx, replay_key: bytes) -> bool:
    return tx.conn.execute(
        "SELECT 1 FROM initiation_replays WHERE replay_hash = ?", (_replay_hash(replay_key),)
    ).fetchone() is not None


def _insert_prekey(tx: Tx, table: str, key_id: int, public: bytes, private: bytes,
                   extra: dict[str, int]) -> None:
    row = tx.conn.execute(f"SELECT public FROM {table} WHERE key_id = ?", (key_id,)).fetchone()  # noqa: S608
    if row is not None:
        if row[0] == public:
            return  # the same key saved twice: idempotent
        raise StoreConflict(f"{table} key id {key_id} is taken")
    columns = ["key_id", "public", "private", *extra]
    values = [key_id, public, tx.seal(table, "private", u32(key_id), private), *extra.values()]
    tx.conn.execute(
        f"INSERT INTO {table} ({', '.join(columns)}) VALUES ({', '.join('?' * len(values))})",  # noqa: S608
        values,
    )


def save_signed_prekey(tx: Tx, key: SignedPreKeyPair) -> None:
    _insert_prekey(tx, "signed_prekeys", key.key_id, key.public.to_bytes(), key.to_bytes(),
                   {"created_ms": key.public.created_ms})


def save_kem_prekeys(tx: Tx, keys: Sequence[KemPreKeyPair]) -> None:
    for key in keys:
        _insert_prekey(tx, "kem_prekeys", key.key_id, key.public.to_bytes(), key.to_bytes(),
                       {"kind": int(key.public.kind), "created_ms": key.public.created_ms})


def save_one_time_prekeys(tx: Tx, keys: Sequence[OneTimePreKeyPair]) -> None:
    for key in keys:
        _insert_prekey(tx, "one_time_prekeys", key.key_id, key.public.to_bytes(),
                       key.to_bytes(), {})


def allocate_prekey_ids(tx: Tx, kind: PrekeyKind, count: int) -> list[int]:
    if not 0 <= count <= MAX_ALLOCATION:
        raise ValueError(f"count must be 0..{MAX_ALLOCATION}")
    table = _PREKEY_TABLES[kind]
    row = tx.conn.execute("SELECT next_id FROM prekey_id_counters WHERE kind = ?",
                          (int(kind),)).fetchone()
    candidate = 1 if row is None else int(row[0])
    out: list[int] = []
    while len(out) < count:
        held = tx.conn.execute(f"SELECT 1 FROM {table} WHERE key_id = ?",  # noqa: S608
                               (candidate,)).fetchone()
        if held is None:
            out.append(candidate)
        candidate = 1 if candidate >= MAX_KEY_ID else candidate + 1
    tx.conn.execute(
        "INSERT INTO prekey_id_counters (kind, next_id) VALUES (?, ?) "
        "ON CONFLICT (kind) DO UPDATE SET next_id = excluded.next_id",
        (int(kind), candidate),
    )
    return out


def unpublished_prekeys(tx: Tx) -> PrekeyUpload:
    q = tx.conn.execute
    signed = q("SELECT public FROM signed_prekeys WHERE published_at_ms IS NULL "
               "AND retired_at_ms IS NULL ORDER BY key_id").fetchall()
    kem = q("SELECT public FROM kem_prekeys WHERE published_at_ms IS NULL "
            "ORDER BY key_id").fetchall()
    one = q("SELECT public FROM one_time_prekeys WHERE published_at_ms IS NULL "
            "ORDER BY key_id").fetchall()
    return PrekeyUpload(
        signed=tuple(tx.decode("signed prekey", SignedPreKey.from_bytes, r[0]) for r in signed),
        kem=tuple(tx.decode("KEM prekey", KemPreKey.from_bytes, r[0]) for r in kem),
        one_time=tuple(tx.decode("one-time prekey", OneTimePreKey.from_bytes, r[0])
                       for r in one),
    )


def mark_published(tx: Tx, kind: PrekeyKind, key_ids: Iterable[int], now_ms: int) -> None:
    tx.conn.executemany(
        f"UPDATE {_PREKEY_TABLES[kind]} SET published_at_ms = ? "  # noqa: S608
        "WHERE key_id = ? AND published_at_ms IS NULL",
        [(now_ms, k) for k in key_ids],
    )


def current_signed_prekey(tx: Tx) -> SignedPreKeyPair | None:
    row = tx.conn.execute(
        "SELECT key_id FROM signed_prekeys WHERE retired_at_ms IS NULL "
        "ORDER BY created_ms DESC, key_id DESC LIMIT 1"
    ).fetchone()
    return None if row is None else signed_prekey(tx, int(row[0]))


def retire_signed_prekey(tx: Tx, key_id: int, now_ms: int) -> None:
    tx.conn.execute(
        "UPDATE signed_prekeys SET retired_at_ms = coalesce(retired_at_ms, ?) WHERE key_id = ?",
        (now_ms, key_id),
    )
    if tx.changes() == 0:
        raise RecordNotFound("signed prekey", key_id)


def delete_retired_signed_prekeys(tx: Tx, retired_before_ms: int) -> list[int]:
    ids = [int(r[0]) for r in tx.conn.execute(
        "SELECT key_id FROM signed_prekeys WHERE retired_at_ms < ? ORDER BY key_id",
        (retired_before_ms,),
    )]
    # initiation_replays rows go with them (ON DELETE CASCADE).
    tx.conn.executemany("DELETE FROM signed_prekeys WHERE key_id = ?", [(k,) for k in ids])
    return ids


def prekey_status(tx: Tx) -> PrekeyStatus:
    q = tx.conn.execute
    current = q("SELECT key_id, created_ms FROM signed_prekeys WHERE retired_at_ms IS NULL "
                "ORDER BY created_ms DESC, key_id DESC LIMIT 1").fetchone()
    retiring = tuple(int(r[0]) for r in q(
        "SELECT key_id FROM signed_prekeys WHERE retired_at_ms IS NOT NULL ORDER BY key_id"))
    last_resort = q("SELECT key_id FROM kem_prekeys WHERE kind = ? "
                    "ORDER BY created_ms DESC, key_id DESC LIMIT 1",
                    (int(KemKind.LAST_RESORT),)).fetchone()
    one = q("SELECT count(*), count(*) - count(published_at_ms) FROM one_time_prekeys").fetchone()
    kem_one = q("SELECT count(*) FROM kem_prekeys WHERE kind = ?",
                (int(KemKind.ONE_TIME),)).fetchone()
    kem_unpub = q("SELECT count(*) FROM kem_prekeys WHERE published_at_ms IS NULL").fetchone()
    return PrekeyStatus(
        signed_prekey_id=None if current is None else int(current[0]),
        signed_prekey_created_ms=None if current is None else int(current[1]),
        retiring_signed_prekey_ids=retiring,
        last_resort_kem_id=None if last_resort is None else int(last_resort[0]),
        one_time_available=int(one[0]),
        one_time_unpublished=int(one[1]),
        kem_one_time_available=int(kem_one[0]),
        kem_unpublished=int(kem_unpub[0]),
    )


def consume_initiation(tx: Tx, accepted: Accepted, now_ms: int) -> None:
    digest = _replay_hash(accepted.replay_key)
    if tx.conn.execute("SELECT 1 FROM initiation_replays WHERE replay_hash = ?",
                       (digest,)).fetchone():
        raise ReplayError("initiation already accepted")
    spk = accepted.signed_prekey_id
    if tx.conn.execute("SELECT 1 FROM signed_prekeys WHERE key_id = ?", (spk,)).fetchone() is None:
        raise PrekeyNotFound("signed", spk)
    if accepted.one_time_prekey_id is not None:
        tx.conn.execute("DELETE FROM one_time_prekeys WHERE key_id = ?",
                        (accepted.one_time_prekey_id,))
        if tx.changes() == 0:
            raise PrekeyNotFound("one-time", accepted.one_time_prekey_id)
    if accepted.kem_prekey_kind is KemKind.ONE_TIME:
        tx.conn.execute("DELETE FROM kem_prekeys WHERE key_id = ? AND kind = ?",
                        (accepted.kem_prekey_id, int(KemKind.ONE_TIME)))
        if tx.changes() == 0:
            raise PrekeyNotFound("kem", accepted.kem_prekey_id)
    tx.conn.execute(
        "INSERT INTO initiation_replays (replay_hash, signed_prekey_id, seen_at_ms) "
        "VALUES (?, ?, ?)", (digest, spk, now_ms),
    )


# --- sessions -----------------------------------------------------------------------------


def load_session(tx: Tx, peer: bytes) -> RatchetState | None:
    row = tx.conn.execute("SELECT state FROM sessions WHERE peer = ?", (peer,)).fetchone()
    if row is None:
        return None
    raw = tx.unseal("sessions", "state", peer, row[0])
    return tx.decode("ratchet state", RatchetState.from_bytes, raw)


def store_session(tx: Tx, peer: bytes, state: RatchetState) -> None:
    tx.conn.execute(
        "INSERT INTO sessions (peer, state) VALUES (?, ?) "
        "ON CONFLICT (peer) DO UPDATE SET state = excluded.state",
        (peer, tx.seal("sessions", "state", peer, state.to_bytes())),
    )


def delete_session(tx: Tx, peer: bytes) -> bool:
    tx.conn.execute("DELETE FROM sessions WHERE peer = ?", (peer,))
    return tx.changes() > 0


def session_peers(tx: Tx) -> list[bytes]:
    return [bytes(r[0]) for r in tx.conn.execute("SELECT peer FROM sessions ORDER BY peer")]


# --- sender keys --------------------------------------------------------------------------


def load_outbound_sender_key(tx: Tx, group_id: bytes) -> OutboundSenderKey | None:
    row = tx.conn.execute("SELECT state FROM outbound_sender_keys WHERE group_id = ?",
                          (group_id,)).fetchone()
    if row is None:
        return None
    raw = tx.unseal("outbound_sender_keys", "state", group_key(group_id), row[0])
    return tx.decode("outbound sender key", OutboundSenderKey.from_bytes, raw)


def store_outbound_sender_key(tx: Tx, group_id: bytes, key: OutboundSenderKey) -> None:
    tx.conn.execute("DELETE FROM sender_key_shares WHERE group_id = ? AND chain_id != ?",
                    (group_id, key.chain_id))
    tx.conn.execute(
        "INSERT INTO outbound_sender_keys (group_id, chain_id, state) VALUES (?, ?, ?) "
        "ON CONFLICT (group_id) DO UPDATE SET chain_id = excluded.chain_id, "
        "state = excluded.state",
        (group_id, key.chain_id,
         tx.seal("outbound_sender_keys", "state", group_key(group_id), key.to_bytes())),
    )


def load_sender_key_record(tx: Tx, group_id: bytes, sender: bytes) -> SenderKeyRecord | None:
    row = tx.conn.execute(
        "SELECT record FROM sender_key_records WHERE group_id = ? AND sender = ?",
        (group_id, sender),
    ).fetchone()
    if row is None:
        return None
    raw = tx.unseal("sender_key_records", "record", group_key(group_id, sender), row[0])
    return tx.decode("sender key record", SenderKeyRecord.from_bytes, raw)


def store_sender_key_record(tx: Tx, group_id: bytes, sender: bytes,
                            record: SenderKeyRecord) -> None:
    sealed = tx.seal("sender_key_records", "record", group_key(group_id, sender),
                     record.to_bytes())
    tx.conn.execute(
        "INSERT INTO sender_key_records (group_id, sender, record) VALUES (?, ?, ?) "
        "ON CONFLICT (group_id, sender) DO UPDATE SET record = excluded.record",
        (group_id, sender, sealed),
    )


def mark_sender_key_shared(tx: Tx, group_id: bytes, chain_id: int,
                           members: Iterable[bytes]) -> None:
    tx.conn.executemany(
        "INSERT OR IGNORE INTO sender_key_shares (group_id, chain_id, member) VALUES (?, ?, ?)",
        [(group_id, chain_id, m) for m in members],
    )


def sender_key_shared_with(tx: Tx, group_id: bytes, chain_id: int) -> frozenset[bytes]:
    return frozenset(bytes(r[0]) for r in tx.conn.execute(
        "SELECT member FROM sender_key_shares WHERE group_id = ? AND chain_id = ?",
        (group_id, chain_id),
    ))


def delete_group_sender_keys(tx: Tx, group_id: bytes) -> None:
    for table in ("outbound_sender_keys", "sender_key_records", "sender_key_shares"):
        tx.conn.execute(f"DELETE FROM {table} WHERE group_id = ?", (group_id,))  # noqa: S608


# --- settings -------------------------------------------------------------------------------


def get_setting(tx: Tx, name: str) -> bytes | None:
    row = tx.conn.execute("SELECT value, sealed FROM settings WHERE name = ?",
                          (name,)).fetchone()
    if row is None:
        return None
    value, sealed = bytes(row[0]), row[1]
    return tx.unseal("settings", "value", name.encode(), value) if sealed else value


def put_setting(tx: Tx, name: str, value: bytes, secret: bool) -> None:
    stored = tx.seal("settings", "value", name.encode(), value) if secret else value
    tx.conn.execute(
        "INSERT INTO settings (name, value, sealed) VALUES (?, ?, ?) "
        "ON CONFLICT (name) DO UPDATE SET value = excluded.value, sealed = excluded.sealed",
        (name, stored, int(secret)),
    )


def delete_setting(tx: Tx, name: str) -> bool:
    tx.conn.execute("DELETE FROM settings WHERE name = ?", (name,))
    return tx.changes() > 0
