"""The SQL behind :class:`relay.store_postgres.PostgresStore`: accounts, prekeys, usernames,
invites (the message side is in ``_pg_ops``).

Each function takes a pooled connection already inside the store's transaction (READ
COMMITTED) and never commits; it raises the ``relay.ports`` errors for expected refusals,
which roll the transaction back. Several relay nodes run these at once on one database,
so every check-then-write below is either one statement (a row lock re-checks the
condition on the newest row version) or protected by a row lock taken first.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import TYPE_CHECKING, TypeAlias

from asyncpg import Record
from asyncpg.pool import PoolConnectionProxy

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

if TYPE_CHECKING:
    Conn: TypeAlias = PoolConnectionProxy[Record]
else:  # not subscriptable at run time (the generic is the stubs')
    Conn = PoolConnectionProxy

_X25519 = 1
"""``one_time_prekeys.kind`` of a one-time X25519 prekey."""
_KEM = 2
"""``one_time_prekeys.kind`` of a one-time ML-KEM prekey."""


async def lock_account(conn: Conn, account_id: bytes, *, share: bool = False) -> bool:
    """Lock the account row (``FOR KEY SHARE``: it cannot be deleted meanwhile; or
    ``FOR NO KEY UPDATE``: writers of the row wait). False if absent."""
    mode = "KEY SHARE" if share else "NO KEY UPDATE"
    row = await conn.fetchval(
        f"SELECT 1 FROM accounts WHERE id = $1 FOR {mode}", account_id  # noqa: S608 - constant
    )
    return row is not None


# --------------------------------------------------------------------------- accounts


async def consume_invite(conn: Conn, code_hash: bytes, now_ms: int) -> bool:
    # One statement: the row lock re-checks used_at_ms on the newest version, so two
    # nodes racing for one code see it consumed once.
    row = await conn.fetchval(
        "UPDATE invites SET used_at_ms = $1 WHERE code_hash = $2 AND used_at_ms IS NULL"
        " AND (expires_at_ms IS NULL OR expires_at_ms > $1) RETURNING 1",
        now_ms, code_hash,
    )
    return row is not None


async def create_account(
    conn: Conn, account_id: bytes, identity_key: bytes, now_ms: int,
    invite_code_hash: bytes | None,
) -> AccountRecord:
    # The insert first: a taken id is a StoreConflict whatever the invite (as in the
    # SQLite adapter), and raising rolls back the consumption below.
    inserted = await conn.fetchval(
        "INSERT INTO accounts (id, identity_key, created_at_ms, identity_updated_at_ms)"
        " VALUES ($1, $2, $3, $3) ON CONFLICT (id) DO NOTHING RETURNING 1",
        account_id, identity_key, now_ms,
    )
    if inserted is None:
        raise StoreConflict("account")
    if invite_code_hash is not None and not await consume_invite(conn, invite_code_hash, now_ms):
        raise InviteRejected()
    return AccountRecord(
        account_id=account_id, identity_key=identity_key, created_at_ms=now_ms,
        identity_updated_at_ms=now_ms, rotation_count=0, contact_mailbox_id=None,
        contact_capability=None,
    )


async def get_account(conn: Conn, account_id: bytes) -> AccountRecord | None:
    row = await conn.fetchrow(
        "SELECT identity_key, created_at_ms, identity_updated_at_ms, contact_mailbox_id,"
        " contact_capability,"
        " (SELECT count(*) FROM identity_rotations r WHERE r.account_id = a.id)"
        " FROM accounts a WHERE id = $1",
        account_id,
    )
    if row is None:
        return None
    return AccountRecord(
        account_id=account_id,
        identity_key=row[0],
        created_at_ms=row[1],
        identity_updated_at_ms=row[2],
        contact_mailbox_id=row[3],
        contact_capability=row[4],
        rotation_count=row[5],
    )


async def rotate_identity(
    conn: Conn, account_id: bytes, identity_key: bytes, rotation: bytes, now_ms: int,
    expect_key: bytes, expect_rotations: int,
) -> AccountRecord:
    # What the old key signed goes in the same transaction (see
    # relay._sqlite_accounts.rotate_identity); unsigned one-time X25519 prekeys stay.
    # Compare and swap. The row lock first, then the key and the chain length read by a
    # statement of their own: under READ COMMITTED it sees what a rotation that held the
    # lock committed (a subquery of the locking statement would keep its older snapshot).
    if await conn.fetchval("SELECT 1 FROM accounts WHERE id = $1 FOR UPDATE",
                           account_id) is None:
        raise NotFound("account")
    current = await conn.fetchrow(
        "SELECT identity_key, (SELECT count(*) FROM identity_rotations WHERE account_id = $1)"
        " FROM accounts WHERE id = $1", account_id,
    )
    assert current is not None  # locked above
    if current[0] != expect_key or current[1] != expect_rotations:
        raise StoreConflict("identity rotated meanwhile")
    await conn.execute(
        "UPDATE accounts SET identity_key = $1, identity_updated_at_ms = $2,"
        " signed_prekey = NULL, last_resort_kem = NULL WHERE id = $3",
        identity_key, now_ms, account_id,
    )
    await conn.execute(
        "DELETE FROM one_time_prekeys WHERE account_id = $1 AND kind = $2", account_id, _KEM
    )
    await conn.execute(
        "INSERT INTO identity_rotations (account_id, idx, record) VALUES ($1,"
        " (SELECT count(*) FROM identity_rotations WHERE account_id = $1), $2)",
        account_id, rotation,
    )
    record = await get_account(conn, account_id)
    assert record is not None
    return record


async def delete_account(conn: Conn, account_id: bytes) -> bool:
    # The mailboxes first, in id order, then all their queued copies in one statement
    # (one deliveries_gone call: blobs locked in id order), as acks and appends lock
    # them; a cascade would take them in index order, one mailbox at a time.
    mailbox_ids = [r[0] for r in await conn.fetch(
        "SELECT id FROM mailboxes WHERE account_id = $1 ORDER BY id FOR UPDATE", account_id)]
    if mailbox_ids:
        await conn.execute("DELETE FROM deliveries WHERE mailbox_id = ANY($1::bytea[])",
                           mailbox_ids)
    # ON DELETE CASCADE: mailboxes (and dedup); identity_rotations; one_time_prekeys;
    # usernames. send_dedup records name mailboxes by serial only and expire with
    # keep_until_ms.
    return await conn.fetchval(
        "DELETE FROM accounts WHERE id = $1 RETURNING 1", account_id) is not None


async def list_accounts(conn: Conn, after: bytes | None, limit: int) -> list[AccountSummary]:
    rows = await conn.fetch(
        "SELECT a.id, a.created_at_ms,"
        " (SELECT count(*) FROM mailboxes m WHERE m.account_id = a.id)"
        " FROM accounts a WHERE a.id > $1 ORDER BY a.id LIMIT $2",
        after or b"", limit,
    )
    return [AccountSummary(account_id=r[0], created_at_ms=r[1], mailbox_count=r[2])
            for r in rows]


# --------------------------------------------------------------------------- prekeys


async def prekey_counts(conn: Conn, account_id: bytes) -> PrekeyCounts:
    row = await conn.fetchrow(
        "SELECT signed_prekey IS NOT NULL, last_resort_kem IS NOT NULL,"
        " (SELECT count(*) FROM one_time_prekeys WHERE account_id = a.id AND kind = $2),"
        " (SELECT count(*) FROM one_time_prekeys WHERE account_id = a.id AND kind = $3)"
        " FROM accounts a WHERE a.id = $1",
        account_id, _X25519, _KEM,
    )
    if row is None:
        raise NotFound("account")
    return PrekeyCounts(
        one_time_x25519=row[2],
        one_time_kem=row[3],
        has_signed_prekey=row[0],
        has_last_resort_kem=row[1],
    )


async def upload_prekeys(
    conn: Conn,
    account_id: bytes,
    signed_prekey: bytes | None,
    last_resort_kem: bytes | None,
    one_time_x25519: Sequence[OneTimePrekey],
    one_time_kem: Sequence[OneTimePrekey],
    replace_one_time: bool,
) -> PrekeyCounts:
    # The row lock orders this against a rotation (which drops what the old key signed)
    # and against bundle fetches (FOR SHARE).
    found = await conn.fetchval(
        "UPDATE accounts SET signed_prekey = coalesce($2, signed_prekey),"
        " last_resort_kem = coalesce($3, last_resort_kem) WHERE id = $1 RETURNING 1",
        account_id, signed_prekey, last_resort_kem,
    )
    if found is None:
        raise NotFound("account")
    if replace_one_time:
        await conn.execute("DELETE FROM one_time_prekeys WHERE account_id = $1", account_id)
    keys = [(_X25519, k) for k in one_time_x25519] + [(_KEM, k) for k in one_time_kem]
    if keys:
        # Later entries win for a repeated id, as one INSERT ... ON CONFLICT per key would.
        latest = {(kind, k.key_id): k.data for kind, k in keys}
        await conn.execute(
            "INSERT INTO one_time_prekeys (account_id, kind, key_id, data)"
            " SELECT $1, k, i, d FROM unnest($2::smallint[], $3::bigint[], $4::bytea[])"
            " AS t(k, i, d)"
            " ON CONFLICT (account_id, kind, key_id) DO UPDATE SET data = excluded.data",
            account_id, [k for k, _ in latest], [i for _, i in latest], list(latest.values()),
        )
    return await prekey_counts(conn, account_id)


async def _take_one_time(conn: Conn, account_id: bytes, kind: int) -> OneTimePrekey | None:
    # SKIP LOCKED: a key another node is handing out right now is passed over, never
    # handed out twice (a plain FOR UPDATE would wait, then find no row at all).
    row = await conn.fetchrow(
        "DELETE FROM one_time_prekeys WHERE (account_id, kind, key_id) = ("
        " SELECT account_id, kind, key_id FROM one_time_prekeys"
        " WHERE account_id = $1 AND kind = $2 ORDER BY key_id LIMIT 1"
        " FOR UPDATE SKIP LOCKED)"
        " RETURNING key_id, data",
        account_id, kind,
    )
    return None if row is None else OneTimePrekey(key_id=row[0], data=row[1])


async def fetch_prekey_bundle(conn: Conn, account_id: bytes) -> PrekeyBundleRecord | None:
    # FOR SHARE: bundle fetches run side by side, but not across an upload or a rotation.
    row = await conn.fetchrow(
        "SELECT identity_key, signed_prekey, last_resort_kem, contact_mailbox_id,"
        " contact_capability FROM accounts a WHERE id = $1 FOR SHARE",
        account_id,
    )
    if row is None:
        raise NotFound("account")
    if row[1] is None:
        return None  # no usable bundle: consume nothing
    # The KEM prekey first: without one-time KEM prekeys (or only ones being handed out
    # by others) and without a last-resort one, nothing has been consumed yet.
    kem = await _take_one_time(conn, account_id, _KEM)
    if kem is None and row[2] is None:
        return None
    otk = await _take_one_time(conn, account_id, _X25519)
    rotations = await conn.fetch(
        "SELECT record FROM identity_rotations WHERE account_id = $1 ORDER BY idx", account_id
    )
    return PrekeyBundleRecord(
        account_id=account_id,
        identity_key=row[0],
        rotations=tuple(r[0] for r in rotations),
        signed_prekey=row[1],
        one_time_x25519=otk,
        one_time_kem=kem,
        last_resort_kem=None if kem is not None else row[2],
        contact_mailbox_id=row[3],
        contact_capability=row[4],
        remaining=await prekey_counts(conn, account_id),
    )


# --------------------------------------------------------------------------- usernames


async def claim_username(
    conn: Conn, account_id: bytes, username: str, binding: bytes, now_ms: int
) -> UsernameRecord:
    # The account lock serialises one account's claims (each replaces the previous name).
    if not await lock_account(conn, account_id):
        raise NotFound("account")
    await conn.execute("DELETE FROM usernames WHERE account_id = $1", account_id)
    # Another account's claim of the same name, committed or in flight, is a conflict
    # (ON CONFLICT waits for an in-flight one); raising restores the deleted name.
    inserted = await conn.fetchval(
        "INSERT INTO usernames (username, account_id, binding, claimed_at_ms)"
        " VALUES ($1, $2, $3, $4) ON CONFLICT (username) DO NOTHING RETURNING 1",
        username, account_id, binding, now_ms,
    )
    if inserted is None:
        raise StoreConflict("username")
    return UsernameRecord(
        username=username, account_id=account_id, binding=binding, claimed_at_ms=now_ms
    )


async def lookup_username(conn: Conn, username: str) -> UsernameRecord | None:
    row = await conn.fetchrow(
        "SELECT username, account_id, binding, claimed_at_ms FROM usernames WHERE username = $1",
        username,
    )
    if row is None:
        return None
    return UsernameRecord(username=row[0], account_id=row[1], binding=row[2],
                          claimed_at_ms=row[3])


async def release_username(conn: Conn, account_id: bytes) -> bool:
    return await conn.fetchval(
        "DELETE FROM usernames WHERE account_id = $1 RETURNING 1", account_id) is not None


# --------------------------------------------------------------------------- invites


async def create_invite(
    conn: Conn, code_hash: bytes, now_ms: int, expires_at_ms: int | None
) -> InviteRecord:
    inserted = await conn.fetchval(
        "INSERT INTO invites (code_hash, created_at_ms, expires_at_ms) VALUES ($1, $2, $3)"
        " ON CONFLICT (code_hash) DO NOTHING RETURNING 1",
        code_hash, now_ms, expires_at_ms,
    )
    if inserted is None:
        raise StoreConflict("invite")
    return InviteRecord(
        code_hash=code_hash, created_at_ms=now_ms, expires_at_ms=expires_at_ms, used_at_ms=None
    )


async def revoke_invite(conn: Conn, code_hash: bytes) -> bool:
    return await conn.fetchval(
        "DELETE FROM invites WHERE code_hash = $1 RETURNING 1", code_hash) is not None


async def list_invites(conn: Conn) -> list[InviteRecord]:
    rows = await conn.fetch(
        "SELECT code_hash, created_at_ms, expires_at_ms, used_at_ms FROM invites"
        " ORDER BY created_at_ms, code_hash"
    )
    return [InviteRecord(code_hash=r[0], created_at_ms=r[1], expires_at_ms=r[2],
                         used_at_ms=r[3]) for r in rows]
