"""The relay's SQLite schema, as ordered migrations (docs/_drafts/50-relay-store.md).

Append a new ``Migration(version=N + 1, ...)`` for every change; never edit a shipped one.
Each runs inside the migration transaction, so statements are executed one by one
(``executescript`` would commit).

What is stored, and what is not: accounts (id, identity key, opaque prekey blobs), mailboxes
(owner, capability *hash*, seq counter, expiry notice, push URL), message blobs and their
per-mailbox delivery rows, per-mailbox idempotency records, usernames, invite code
*hashes*. No table has a column for a sender.
"""

from __future__ import annotations

import sqlite3

from ._sqlite_engine import Migration

__all__ = ["MIGRATIONS", "SCHEMA_VERSION"]

_V1 = [
    """
    CREATE TABLE accounts (
        id                     BLOB PRIMARY KEY CHECK (length(id) = 16),
        identity_key           BLOB NOT NULL,
        created_at_ms          INTEGER NOT NULL,
        identity_updated_at_ms INTEGER NOT NULL,
        signed_prekey          BLOB,
        last_resort_kem        BLOB
    ) WITHOUT ROWID
    """,
    """
    CREATE TABLE mailboxes (
        id                BLOB PRIMARY KEY CHECK (length(id) = 16),
        account_id        BLOB NOT NULL REFERENCES accounts (id) ON DELETE CASCADE,
        capability_hash   BLOB NOT NULL CHECK (length(capability_hash) = 32),
        kind              INTEGER NOT NULL,
        created_at_ms     INTEGER NOT NULL,
        last_seq          INTEGER NOT NULL DEFAULT 0,
        expired_count     INTEGER NOT NULL DEFAULT 0,
        expired_up_to_seq INTEGER NOT NULL DEFAULT 0,
        push_url          TEXT
    ) WITHOUT ROWID
    """,
    "CREATE INDEX mailboxes_by_account ON mailboxes (account_id, created_at_ms)",
    # One row per stored blob, however many mailboxes it was sent to.
    """
    CREATE TABLE blobs (
        id   INTEGER PRIMARY KEY,
        size INTEGER NOT NULL,
        data BLOB NOT NULL
    )
    """,
    # One row per (recipient mailbox, seq) still queued; removed on ack or expiry.
    """
    CREATE TABLE deliveries (
        mailbox_id     BLOB NOT NULL REFERENCES mailboxes (id) ON DELETE CASCADE,
        seq            INTEGER NOT NULL,
        blob_id        INTEGER NOT NULL REFERENCES blobs (id),
        received_at_ms INTEGER NOT NULL,
        expires_at_ms  INTEGER NOT NULL,
        PRIMARY KEY (mailbox_id, seq)
    ) WITHOUT ROWID
    """,
    "CREATE INDEX deliveries_by_blob ON deliveries (blob_id)",
    "CREATE INDEX deliveries_by_expiry ON deliveries (expires_at_ms)",
    # Blob GC: whatever removes a delivery (ack, expiry, cascade from a mailbox or account
    # deletion; SQLite fires triggers for FK cascades) drops the blob with its last reference.
    """
    CREATE TRIGGER deliveries_blob_gc AFTER DELETE ON deliveries
    BEGIN
        DELETE FROM blobs WHERE id = OLD.blob_id
            AND NOT EXISTS (SELECT 1 FROM deliveries WHERE blob_id = OLD.blob_id);
    END
    """,
    # Idempotency: the sender's client_msg_id scoped by recipient mailbox. Outlives the
    # delivery row (a retry after the ack must not re-queue) until the message's expiry.
    """
    CREATE TABLE dedup (
        mailbox_id     BLOB NOT NULL REFERENCES mailboxes (id) ON DELETE CASCADE,
        client_msg_id  BLOB NOT NULL,
        seq            INTEGER NOT NULL,
        received_at_ms INTEGER NOT NULL,
        expires_at_ms  INTEGER NOT NULL,
        PRIMARY KEY (mailbox_id, client_msg_id)
    ) WITHOUT ROWID
    """,
    "CREATE INDEX dedup_by_expiry ON dedup (expires_at_ms)",
    """
    CREATE TABLE one_time_prekeys (
        account_id BLOB NOT NULL REFERENCES accounts (id) ON DELETE CASCADE,
        kind       INTEGER NOT NULL,
        key_id     INTEGER NOT NULL CHECK (key_id BETWEEN 0 AND 4294967295),
        data       BLOB NOT NULL,
        PRIMARY KEY (account_id, kind, key_id)
    ) WITHOUT ROWID
    """,
    """
    CREATE TABLE usernames (
        username      TEXT PRIMARY KEY,
        account_id    BLOB NOT NULL UNIQUE REFERENCES accounts (id) ON DELETE CASCADE,
        binding       BLOB NOT NULL,
        claimed_at_ms INTEGER NOT NULL
    ) WITHOUT ROWID
    """,
    """
    CREATE TABLE invites (
        code_hash     BLOB PRIMARY KEY CHECK (length(code_hash) = 32),
        created_at_ms INTEGER NOT NULL,
        expires_at_ms INTEGER,
        used_at_ms    INTEGER
    ) WITHOUT ROWID
    """,
]


def _v1(conn: sqlite3.Connection) -> None:
    for statement in _V1:
        conn.execute(statement)


MIGRATIONS = (Migration(1, _v1),)
SCHEMA_VERSION = MIGRATIONS[-1].version
