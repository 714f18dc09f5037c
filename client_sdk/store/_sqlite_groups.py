"""SQLite operations for groups (schema: ``SCHEMA_GROUPS``, applied by a migration in
``_sqlite_schema``). A state's encoded bytes (name, members, admins, avatar manifest)
are sealed with AD key ``hash``; ids, versions and chain ids are not secret on this
device and stay plain for lookups."""

from __future__ import annotations

from typing import Any, Final

from pigeon_crypto.errors import PigeonError

from . import _sqlite_history as history
from . import _sqlite_keys as keys
from ._sqlite_db import Tx
from .group_records import (
    GroupRecord,
    GroupWrite,
    PendingGroupBlob,
    SealedControlPart,
    SignedGroupState,
    SignedSubscription,
    StateStatus,
    StoredGroupState,
)

SCHEMA_GROUPS: Final = (
    """
    CREATE TABLE groups (
        group_id      BLOB PRIMARY KEY CHECK (length(group_id) = 16),
        head          BLOB NOT NULL CHECK (length(head) = 32),  -- hash of the current state
        active        INTEGER NOT NULL CHECK (active IN (0, 1)),
        updated_at_ms INTEGER NOT NULL
    ) WITHOUT ROWID
    """,
    """
    CREATE TABLE group_states (
        hash           BLOB PRIMARY KEY CHECK (length(hash) = 32),
        group_id       BLOB NOT NULL CHECK (length(group_id) = 16),
        status         INTEGER NOT NULL CHECK (status IN (1, 2)),  -- StateStatus
        state          BLOB NOT NULL,           -- sealed encoded GroupState
        signature      BLOB NOT NULL,
        received_at_ms INTEGER NOT NULL
    ) WITHOUT ROWID
    """,
    "CREATE INDEX group_states_by_group ON group_states (group_id)",
    """
    CREATE TABLE group_chains (
        sender   BLOB NOT NULL CHECK (length(sender) = 16),
        chain_id INTEGER NOT NULL,
        group_id BLOB NOT NULL CHECK (length(group_id) = 16),
        PRIMARY KEY (sender, chain_id)
    ) WITHOUT ROWID
    """,
    """
    CREATE TABLE group_pending (
        id             INTEGER PRIMARY KEY,
        sender         BLOB NOT NULL CHECK (length(sender) = 16),
        blob           BLOB NOT NULL,           -- a sender-key ciphertext as received
        received_at_ms INTEGER NOT NULL
    )
    """,
)


SCHEMA_GROUP_RECEIPTS: Final = (
    # Who delivered (1) and read (2) each of our group messages: aggregated receipts.
    """
    CREATE TABLE group_receipts (
        group_id   BLOB NOT NULL CHECK (length(group_id) = 16),
        message_id BLOB NOT NULL CHECK (length(message_id) = 16),
        member     BLOB NOT NULL CHECK (length(member) = 16),
        kind       INTEGER NOT NULL CHECK (kind IN (1, 2)),  -- ReceiptKind
        at_ms      INTEGER NOT NULL,
        PRIMARY KEY (group_id, message_id, member, kind)
    ) WITHOUT ROWID
    """,
)


SCHEMA_CHANNEL_SUBSCRIPTIONS: Final = (
    # Channels with subscriptions (docs/protocol.md §9.14): per subscriber, the winning
    # signed subscription. The subscriber is only inside the sealed bytes.
    """
    CREATE TABLE channel_subscriptions (
        hash           BLOB PRIMARY KEY CHECK (length(hash) = 32),
        group_id       BLOB NOT NULL CHECK (length(group_id) = 16),
        subscription   BLOB NOT NULL,           -- sealed encoded Subscription
        signature      BLOB NOT NULL
    ) WITHOUT ROWID
    """,
    "CREATE INDEX channel_subscriptions_by_group ON channel_subscriptions (group_id)",
)


SCHEMA_CHANNEL_ROSTERS: Final = (
    # The subscribed ids of each channel in one sealed value (16 bytes each, sorted):
    # a post reads it instead of unsealing every subscription.
    """
    CREATE TABLE channel_rosters (
        group_id BLOB PRIMARY KEY CHECK (length(group_id) = 16),
        roster   BLOB NOT NULL                  -- sealed concatenated account ids
    ) WITHOUT ROWID
    """,
)


SCHEMA_SEALED_CONTROLS: Final = (
    # Sealed group changes (docs/protocol.md §9.14): the blob (one multi-recipient
    # send) or its key (pairwise), whichever arrived first, until the other comes.
    """
    CREATE TABLE group_sealed (
        sender         BLOB NOT NULL CHECK (length(sender) = 16),
        hash           BLOB NOT NULL CHECK (length(hash) = 32),  -- SHA-256 of the blob
        blob           BLOB,                    -- the sealed blob as received
        key            BLOB,                    -- sealed: key (32) then seal id (16)
        received_at_ms INTEGER NOT NULL,
        PRIMARY KEY (sender, hash),
        CHECK ((blob IS NULL) <> (key IS NULL))
    ) WITHOUT ROWID
    """,
)


def load_group(tx: Tx, group_id: bytes) -> GroupRecord | None:
    row = tx.conn.execute("SELECT head, active, updated_at_ms FROM groups WHERE group_id = ?",
                          (group_id,)).fetchone()
    if row is None:
        return None
    return GroupRecord(group_id=group_id, head=bytes(row[0]), active=bool(row[1]),
                       updated_at_ms=int(row[2]))


def list_groups(tx: Tx) -> list[GroupRecord]:
    rows = tx.conn.execute(
        "SELECT group_id, head, active, updated_at_ms FROM groups ORDER BY group_id").fetchall()
    return [GroupRecord(group_id=bytes(r[0]), head=bytes(r[1]), active=bool(r[2]),
                        updated_at_ms=int(r[3])) for r in rows]


def _state(tx: Tx, row: Any) -> StoredGroupState:
    digest, status, sealed, signature, received = row
    encoded = tx.unseal("group_states", "state", bytes(digest), sealed)
    try:
        signed = SignedGroupState.from_wire(encoded, bytes(signature))
    except PigeonError as exc:
        raise tx.corrupt("a stored group state does not decode") from exc
    return StoredGroupState(signed=signed, status=StateStatus(status), received_at_ms=received)


def group_states(tx: Tx, group_id: bytes) -> list[StoredGroupState]:
    rows = tx.conn.execute(
        "SELECT hash, status, state, signature, received_at_ms FROM group_states "
        "WHERE group_id = ?", (group_id,)).fetchall()
    return [_state(tx, r) for r in rows]


def group_for_chain(tx: Tx, sender: bytes, chain_id: int) -> bytes | None:
    row = tx.conn.execute("SELECT group_id FROM group_chains WHERE sender = ? AND chain_id = ?",
                          (sender, chain_id)).fetchone()
    return None if row is None else bytes(row[0])


def channel_subscriptions(tx: Tx, group_id: bytes) -> list[SignedSubscription]:
    rows = tx.conn.execute(
        "SELECT hash, subscription, signature FROM channel_subscriptions WHERE group_id = ?",
        (group_id,)).fetchall()
    out = []
    for digest, sealed, signature in rows:
        encoded = tx.unseal("channel_subscriptions", "subscription", bytes(digest), sealed)
        try:
            out.append(SignedSubscription.from_wire(encoded, bytes(signature)))
        except PigeonError as exc:
            raise tx.corrupt("a stored subscription does not decode") from exc
    return out


def channel_roster(tx: Tx, group_id: bytes) -> frozenset[bytes] | None:
    row = tx.conn.execute("SELECT roster FROM channel_rosters WHERE group_id = ?",
                          (group_id,)).fetchone()
    if row is None:
        return None
    packed = tx.unseal("channel_rosters", "roster", group_id, row[0])
    if len(packed) % 16:
        raise tx.corrupt("a stored channel roster is not a list of account ids")
    return frozenset(packed[i:i + 16] for i in range(0, len(packed), 16))


def pending_group_blobs(tx: Tx, limit: int) -> list[PendingGroupBlob]:
    rows = tx.conn.execute(
        "SELECT id, sender, blob, received_at_ms FROM group_pending ORDER BY id LIMIT ?",
        (limit,)).fetchall()
    return [PendingGroupBlob(id=int(r[0]), sender=bytes(r[1]), blob=bytes(r[2]),
                             received_at_ms=int(r[3])) for r in rows]


def pending_group_blob_count(tx: Tx, sender: bytes | None) -> int:
    # A scan of at most MAX_PENDING_BLOBS rows, done once per batch that keeps a blob
    # pending: cheaper than an index every other write would pay for.
    row = tx.conn.execute("SELECT count(*) FROM group_pending WHERE ? IS NULL OR sender = ?",
                          (sender, sender)).fetchone()
    return int(row[0])


def group_receipts(tx: Tx, group_id: bytes, message_id: bytes) -> list[tuple[bytes, int]]:
    rows = tx.conn.execute(
        "SELECT member, kind FROM group_receipts WHERE group_id = ? AND message_id = ?",
        (group_id, message_id)).fetchall()
    return [(bytes(r[0]), int(r[1])) for r in rows]


def _sealed_ad(sender: bytes, blob_hash: bytes) -> bytes:
    return sender + blob_hash


def sealed_control_part(tx: Tx, sender: bytes, blob_hash: bytes) -> SealedControlPart | None:
    row = tx.conn.execute(
        "SELECT blob, key, received_at_ms FROM group_sealed WHERE sender = ? AND hash = ?",
        (sender, blob_hash)).fetchone()
    if row is None:
        return None
    blob, sealed, received = row
    key = (None if sealed is None
           else tx.unseal("group_sealed", "key", _sealed_ad(sender, blob_hash), sealed))
    try:
        return SealedControlPart(sender=sender, hash=blob_hash,
                                 blob=None if blob is None else bytes(blob), key=key,
                                 received_at_ms=int(received))
    except ValueError as exc:
        raise tx.corrupt("a stored sealed group change is malformed") from exc


def sealed_control_count(tx: Tx, sender: bytes | None, blobs: bool) -> int:
    if sender is None:  # a scan: rare (once per batch that holds a blob)
        row = tx.conn.execute("SELECT count(*) FROM group_sealed "
                              "WHERE NOT ? OR blob IS NOT NULL", (blobs,)).fetchone()
    else:  # the primary key's prefix
        row = tx.conn.execute("SELECT count(*) FROM group_sealed WHERE sender = ? "
                              "AND (NOT ? OR blob IS NOT NULL)", (sender, blobs)).fetchone()
    return int(row[0])


def _write_sealed(tx: Tx, w: GroupWrite) -> None:
    for part in w.sealed_add:
        key = (None if part.key is None else
               tx.seal("group_sealed", "key", _sealed_ad(part.sender, part.hash), part.key))
        tx.conn.execute(
            "INSERT OR IGNORE INTO group_sealed (sender, hash, blob, key, received_at_ms) "
            "VALUES (?, ?, ?, ?, ?)", (part.sender, part.hash, part.blob, key,
                                       part.received_at_ms))
    for sender, blob_hash in w.sealed_done:
        tx.conn.execute("DELETE FROM group_sealed WHERE sender = ? AND hash = ?",
                        (sender, blob_hash))
    if w.sealed_expire_before is not None:
        tx.conn.execute("DELETE FROM group_sealed WHERE received_at_ms < ?",
                        (w.sealed_expire_before,))


def write(tx: Tx, w: GroupWrite) -> None:
    """Apply one :class:`GroupWrite` inside the caller's transaction."""
    if w.group is not None:
        g = w.group
        tx.conn.execute(
            "INSERT INTO groups (group_id, head, active, updated_at_ms) VALUES (?, ?, ?, ?) "
            "ON CONFLICT (group_id) DO UPDATE SET head = excluded.head, "
            "active = excluded.active, updated_at_ms = excluded.updated_at_ms",
            (g.group_id, g.head, int(g.active), g.updated_at_ms))
    for s in w.states:
        signed = s.signed
        tx.conn.execute(
            "INSERT INTO group_states (hash, group_id, status, state, signature, "
            "received_at_ms) VALUES (?, ?, ?, ?, ?, ?) "
            "ON CONFLICT (hash) DO UPDATE SET status = excluded.status",
            (signed.hash, signed.state.group_id, int(s.status),
             tx.seal("group_states", "state", signed.hash, signed.encoded), signed.signature,
             s.received_at_ms))
    for sender, chain_id, group_id in w.chains:
        tx.conn.execute(
            "INSERT INTO group_chains (sender, chain_id, group_id) VALUES (?, ?, ?) "
            "ON CONFLICT (sender, chain_id) DO UPDATE SET group_id = excluded.group_id",
            (sender, chain_id, group_id))
    for group_id, chain_id, member in w.shares:
        keys.mark_sender_key_shared(tx, group_id, chain_id, [member])
    for group_id, member in w.unshare:
        tx.conn.execute("DELETE FROM sender_key_shares WHERE group_id = ? AND member = ?",
                        (group_id, member))
    for u in w.sender_keys:
        keys.store_sender_key_record(tx, u.group_id, u.sender, u.record)
    for p in w.pending_add:
        tx.conn.execute(
            "INSERT INTO group_pending (sender, blob, received_at_ms) VALUES (?, ?, ?)",
            (p.sender, p.blob, p.received_at_ms))
    for pid in w.pending_done:
        tx.conn.execute("DELETE FROM group_pending WHERE id = ?", (pid,))
    for group_id, message_id, member, kind, at_ms in w.receipts:
        tx.conn.execute(
            "INSERT OR IGNORE INTO group_receipts (group_id, message_id, member, kind, at_ms) "
            "VALUES (?, ?, ?, ?, ?)", (group_id, message_id, member, kind, at_ms))
    for digest in w.subscriptions_gone:
        tx.conn.execute("DELETE FROM channel_subscriptions WHERE hash = ?", (digest,))
    if w.subscriptions:
        tx.conn.executemany(
            "INSERT OR IGNORE INTO channel_subscriptions (hash, group_id, subscription, "
            "signature) VALUES (?, ?, ?, ?)",
            [(s.hash, s.sub.group_id,
              tx.seal("channel_subscriptions", "subscription", s.hash, s.encoded), s.signature)
             for s in w.subscriptions])
    if w.roster is not None:
        group_id, ids = w.roster
        tx.conn.execute(
            "INSERT INTO channel_rosters (group_id, roster) VALUES (?, ?) "
            "ON CONFLICT (group_id) DO UPDATE SET roster = excluded.roster",
            (group_id, tx.seal("channel_rosters", "roster", group_id, b"".join(ids))))
    _write_sealed(tx, w)
    for op in w.history:
        history.apply(tx, op)
    if w.forget_keys is not None:
        keys.delete_group_sender_keys(tx, w.forget_keys)
    if w.drop_outbound is not None:
        for table in ("outbound_sender_keys", "sender_key_shares"):
            tx.conn.execute(f"DELETE FROM {table} WHERE group_id = ?",  # noqa: S608
                            (w.drop_outbound,))
