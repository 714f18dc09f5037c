"""The SQL behind :class:`relay.store_sqlite.SqliteStore`: accounts, prekeys, usernames,
invites. Same rules as ``_sqlite_ops``: called inside a transaction, never commits.
"""

from __future__ import annotations

import sqlite3
from collections.abc import Sequence
from typing import Any

from .ports import (
    AccountRecord,
    AccountSummary,
    InviteRecord,
    InviteRejected,
    NotFound,
    OneTimePrekey,
    PrekeyBundleRecord,
    PrekeyCounts,
    StoreConflict,
    UsernameRecord,
)

_X25519 = 1
"""``one_time_prekeys.kind`` of a one-time X25519 prekey."""
_KEM = 2
"""``one_time_prekeys.kind`` of a one-time ML-KEM prekey."""
_ACCOUNT_COLS = (
    "identity_key, created_at_ms, identity_updated_at_ms, contact_mailbox_id,"
    " contact_capability, (SELECT count(*) FROM identity_rotations r WHERE r.account_id = a.id)"
)


def account_exists(conn: sqlite3.Connection, account_id: bytes) -> bool:
    return conn.execute("SELECT 1 FROM accounts WHERE id = ?", (account_id,)).fetchone() is not None


# --------------------------------------------------------------------------- accounts


def consume_invite(conn: sqlite3.Connection, code_hash: bytes, now_ms: int) -> bool:
    cur = conn.execute(
        "UPDATE invites SET used_at_ms = ? WHERE code_hash = ? AND used_at_ms IS NULL"
        " AND (expires_at_ms IS NULL OR expires_at_ms > ?)",
        (now_ms, code_hash, now_ms),
    )
    return cur.rowcount == 1


def create_account(
    conn: sqlite3.Connection,
    account_id: bytes,
    identity_key: bytes,
    now_ms: int,
    invite_code_hash: bytes | None,
) -> AccountRecord:
    if account_exists(conn, account_id):
        raise StoreConflict("account")
    if invite_code_hash is not None and not consume_invite(conn, invite_code_hash, now_ms):
        raise InviteRejected()
    conn.execute(
        "INSERT INTO accounts (id, identity_key, created_at_ms, identity_updated_at_ms)"
        " VALUES (?, ?, ?, ?)",
        (account_id, identity_key, now_ms, now_ms),
    )
    record = get_account(conn, account_id)
    assert record is not None
    return record


def get_account(conn: sqlite3.Connection, account_id: bytes) -> AccountRecord | None:
    row = conn.execute(
        f"SELECT {_ACCOUNT_COLS} FROM accounts a WHERE id = ?",  # noqa: S608 - constant
        (account_id,),
    ).fetchone()
    if row is None:
        return None
    return AccountRecord(
        account_id=account_id,
        identity_key=bytes(row[0]),
        created_at_ms=row[1],
        identity_updated_at_ms=row[2],
        contact_mailbox_id=None if row[3] is None else bytes(row[3]),
        contact_capability=None if row[4] is None else bytes(row[4]),
        rotation_count=row[5],
    )


def rotate_identity(
    conn: sqlite3.Connection, account_id: bytes, identity_key: bytes, rotation: bytes,
    now_ms: int, expect_key: bytes, expect_rotations: int,
) -> AccountRecord:
    # The signed prekey, the last-resort KEM prekey and the one-time KEM prekeys carry
    # signatures by the old key: a bundle built from them no longer verifies against the
    # new identity. They go in the same transaction; the owner uploads new ones signed by
    # the new key right after (protocol §10.7). One-time X25519 prekeys are not signed
    # and their private halves stay with the owner, so they remain usable.
    # Compare and swap: the rotation was checked against the key and chain length read
    # before; a concurrent rotation that committed since must make this one fail, or
    # both would append to the chain from the same old key.
    cur = conn.execute(
        "UPDATE accounts SET identity_key = ?, identity_updated_at_ms = ?,"
        " signed_prekey = NULL, last_resort_kem = NULL WHERE id = ? AND identity_key = ?"
        " AND (SELECT count(*) FROM identity_rotations WHERE account_id = ?) = ?",
        (identity_key, now_ms, account_id, expect_key, account_id, expect_rotations),
    )
    if cur.rowcount != 1:
        if conn.execute("SELECT 1 FROM accounts WHERE id = ?", (account_id,)).fetchone():
            raise StoreConflict("identity rotated meanwhile")
        raise NotFound("account")
    conn.execute(
        "DELETE FROM one_time_prekeys WHERE account_id = ? AND kind = ?", (account_id, _KEM)
    )
    conn.execute(
        "INSERT INTO identity_rotations (account_id, idx, record) VALUES (?,"
        " (SELECT count(*) FROM identity_rotations WHERE account_id = ?), ?)",
        (account_id, account_id, rotation),
    )
    record = get_account(conn, account_id)
    assert record is not None
    return record


def delete_account(conn: sqlite3.Connection, account_id: bytes) -> bool:
    # ON DELETE CASCADE: mailboxes -> deliveries (trigger drops orphan blobs), dedup;
    # identity_rotations; one_time_prekeys; usernames. Signed / last-resort prekeys and
    # the contact mailbox live in the row itself. send_dedup records name mailboxes by
    # serial only (unlinkable once the mailboxes are gone; a re-created id gets a new
    # serial) and expire with their keep_until_ms.
    return conn.execute("DELETE FROM accounts WHERE id = ?", (account_id,)).rowcount == 1


def list_accounts(
    conn: sqlite3.Connection, after: bytes | None, limit: int
) -> list[AccountSummary]:
    rows = conn.execute(
        "SELECT a.id, a.created_at_ms,"
        " (SELECT count(*) FROM mailboxes m WHERE m.account_id = a.id)"
        " FROM accounts a WHERE a.id > ? ORDER BY a.id LIMIT ?",
        (after or b"", limit),
    ).fetchall()
    return [
        AccountSummary(account_id=bytes(r[0]), created_at_ms=r[1], mailbox_count=r[2])
        for r in rows
    ]


# --------------------------------------------------------------------------- prekeys


def prekey_counts(conn: sqlite3.Connection, account_id: bytes) -> PrekeyCounts:
    row = conn.execute(
        "SELECT signed_prekey IS NOT NULL, last_resort_kem IS NOT NULL,"
        " (SELECT count(*) FROM one_time_prekeys WHERE account_id = a.id AND kind = 1),"
        " (SELECT count(*) FROM one_time_prekeys WHERE account_id = a.id AND kind = 2)"
        " FROM accounts a WHERE a.id = ?",
        (account_id,),
    ).fetchone()
    if row is None:
        raise NotFound("account")
    return PrekeyCounts(
        one_time_x25519=row[2],
        one_time_kem=row[3],
        has_signed_prekey=bool(row[0]),
        has_last_resort_kem=bool(row[1]),
    )


def upload_prekeys(
    conn: sqlite3.Connection,
    account_id: bytes,
    signed_prekey: bytes | None,
    last_resort_kem: bytes | None,
    one_time_x25519: Sequence[OneTimePrekey],
    one_time_kem: Sequence[OneTimePrekey],
    replace_one_time: bool,
) -> PrekeyCounts:
    if not account_exists(conn, account_id):
        raise NotFound("account")
    if signed_prekey is not None:
        conn.execute(
            "UPDATE accounts SET signed_prekey = ? WHERE id = ?", (signed_prekey, account_id)
        )
    if last_resort_kem is not None:
        conn.execute(
            "UPDATE accounts SET last_resort_kem = ? WHERE id = ?", (last_resort_kem, account_id)
        )
    if replace_one_time:
        conn.execute("DELETE FROM one_time_prekeys WHERE account_id = ?", (account_id,))
    conn.executemany(
        "INSERT INTO one_time_prekeys (account_id, kind, key_id, data) VALUES (?, ?, ?, ?)"
        " ON CONFLICT (account_id, kind, key_id) DO UPDATE SET data = excluded.data",
        [(account_id, _X25519, k.key_id, k.data) for k in one_time_x25519]
        + [(account_id, _KEM, k.key_id, k.data) for k in one_time_kem],
    )
    return prekey_counts(conn, account_id)


def _take_one_time(conn: sqlite3.Connection, account_id: bytes, kind: int) -> OneTimePrekey | None:
    row = conn.execute(
        "DELETE FROM one_time_prekeys WHERE (account_id, kind, key_id) IN ("
        " SELECT account_id, kind, key_id FROM one_time_prekeys"
        " WHERE account_id = ? AND kind = ? ORDER BY key_id LIMIT 1)"
        " RETURNING key_id, data",
        (account_id, kind),
    ).fetchone()
    return None if row is None else OneTimePrekey(key_id=row[0], data=bytes(row[1]))


def fetch_prekey_bundle(conn: sqlite3.Connection, account_id: bytes) -> PrekeyBundleRecord | None:
    row = conn.execute(
        "SELECT identity_key, signed_prekey, last_resort_kem, contact_mailbox_id,"
        " contact_capability,"
        " EXISTS (SELECT 1 FROM one_time_prekeys WHERE account_id = a.id AND kind = 2)"
        " FROM accounts a WHERE id = ?",
        (account_id,),
    ).fetchone()
    if row is None:
        raise NotFound("account")
    if row[1] is None or (row[2] is None and not row[5]):
        return None  # no usable bundle: consume nothing
    otk = _take_one_time(conn, account_id, _X25519)
    kem = _take_one_time(conn, account_id, _KEM)
    rotations = conn.execute(
        "SELECT record FROM identity_rotations WHERE account_id = ? ORDER BY idx", (account_id,)
    ).fetchall()
    return PrekeyBundleRecord(
        account_id=account_id,
        identity_key=bytes(row[0]),
        rotations=tuple(bytes(r[0]) for r in rotations),
        signed_prekey=bytes(row[1]),
        one_time_x25519=otk,
        one_time_kem=kem,
        last_resort_kem=None if kem is not None else bytes(row[2]),
        contact_mailbox_id=None if row[3] is None else bytes(row[3]),
        contact_capability=None if row[4] is None else bytes(row[4]),
        remaining=prekey_counts(conn, account_id),
    )


# --------------------------------------------------------------------------- usernames


def _username(row: Any) -> UsernameRecord:
    return UsernameRecord(
        username=str(row[0]),
        account_id=bytes(row[1]),
        binding=bytes(row[2]),
        claimed_at_ms=int(row[3]),
    )


def claim_username(
    conn: sqlite3.Connection, account_id: bytes, username: str, binding: bytes, now_ms: int
) -> UsernameRecord:
    if not account_exists(conn, account_id):
        raise NotFound("account")
    row = conn.execute(
        "SELECT account_id FROM usernames WHERE username = ?", (username,)
    ).fetchone()
    if row is not None and bytes(row[0]) != account_id:
        raise StoreConflict("username")
    conn.execute("DELETE FROM usernames WHERE account_id = ?", (account_id,))
    conn.execute(
        "INSERT INTO usernames (username, account_id, binding, claimed_at_ms) VALUES (?, ?, ?, ?)",
        (username, account_id, binding, now_ms),
    )
    return UsernameRecord(
        username=username, account_id=account_id, binding=binding, claimed_at_ms=now_ms
    )


def lookup_username(conn: sqlite3.Connection, username: str) -> UsernameRecord | None:
    row = conn.execute(
        "SELECT username, account_id, binding, claimed_at_ms FROM usernames WHERE username = ?",
        (username,),
    ).fetchone()
    return None if row is None else _username(row)


def release_username(conn: sqlite3.Connection, account_id: bytes) -> bool:
    return conn.execute("DELETE FROM usernames WHERE account_id = ?", (account_id,)).rowcount == 1


# --------------------------------------------------------------------------- invites


def create_invite(
    conn: sqlite3.Connection, code_hash: bytes, now_ms: int, expires_at_ms: int | None
) -> InviteRecord:
    if conn.execute("SELECT 1 FROM invites WHERE code_hash = ?", (code_hash,)).fetchone():
        raise StoreConflict("invite")
    conn.execute(
        "INSERT INTO invites (code_hash, created_at_ms, expires_at_ms) VALUES (?, ?, ?)",
        (code_hash, now_ms, expires_at_ms),
    )
    return InviteRecord(
        code_hash=code_hash, created_at_ms=now_ms, expires_at_ms=expires_at_ms, used_at_ms=None
    )


def revoke_invite(conn: sqlite3.Connection, code_hash: bytes) -> bool:
    return conn.execute("DELETE FROM invites WHERE code_hash = ?", (code_hash,)).rowcount == 1


def list_invites(conn: sqlite3.Connection) -> list[InviteRecord]:
    rows = conn.execute(
        "SELECT code_hash, created_at_ms, expires_at_ms, used_at_ms FROM invites"
        " ORDER BY created_at_ms, code_hash"
    ).fetchall()
    return [
        InviteRecord(code_hash=bytes(r[0]), created_at_ms=r[1], expires_at_ms=r[2], used_at_ms=r[3])
        for r in rows
    ]
