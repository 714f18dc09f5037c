"""The relay's SQLite schema, as ordered migrations (docs/protocol.md (§10)).

Append a new ``Migration(version=N + 1, ...)`` for every change; never edit a shipped one.
Each runs inside the migration transaction, so statements are executed one by one
(``executescript`` would commit).

What is stored, and what is not: accounts (id, identity key and its rotation chain, opaque
prekey records, the public contact mailbox), mailboxes (owner, capability *hash*, seq
counter, pending count, expiry notice, retirement time, push URL), message blobs and their
per-mailbox delivery rows, per-mailbox idempotency hashes, usernames with their signed
bindings, invite code *hashes*. No table has a column for a sender.
"""

from __future__ import annotations

import functools
import sqlite3

from ._sqlite_txn import Migration

__all__ = ["MIGRATIONS", "SCHEMA_VERSION"]

_DELIVERIES_GONE = """
    CREATE TRIGGER deliveries_gone AFTER DELETE ON deliveries
    BEGIN
        UPDATE mailboxes SET pending = pending - 1 WHERE id = OLD.mailbox_id;
        DELETE FROM blobs WHERE id = OLD.blob_id
            AND NOT EXISTS (SELECT 1 FROM deliveries WHERE blob_id = OLD.blob_id);
    END
    """
"""The per-row trigger of versions 1, 2 and 5 (version 5 restores it word for word)."""

_V1 = [
    """
    CREATE TABLE accounts (
        id                     BLOB PRIMARY KEY CHECK (length(id) = 16),
        identity_key           BLOB NOT NULL,
        created_at_ms          INTEGER NOT NULL,
        identity_updated_at_ms INTEGER NOT NULL,
        signed_prekey          BLOB,
        last_resort_kem        BLOB,
        -- The public contact mailbox and its capability (published with the bundle).
        -- Cleared by the mailboxes_contact_gone trigger, not a foreign key (no cycle).
        contact_mailbox_id     BLOB,
        contact_capability     BLOB
    ) WITHOUT ROWID
    """,
    # The identity-rotation chain (opaque, verified records), oldest first.
    """
    CREATE TABLE identity_rotations (
        account_id BLOB NOT NULL REFERENCES accounts (id) ON DELETE CASCADE,
        idx        INTEGER NOT NULL,
        record     BLOB NOT NULL,
        PRIMARY KEY (account_id, idx)
    ) WITHOUT ROWID
    """,
    """
    CREATE TABLE mailboxes (
        id                BLOB PRIMARY KEY CHECK (length(id) = 16),
        account_id        BLOB NOT NULL REFERENCES accounts (id) ON DELETE CASCADE,
        capability_hash   BLOB NOT NULL CHECK (length(capability_hash) = 32),
        created_at_ms     INTEGER NOT NULL,
        last_seq          INTEGER NOT NULL DEFAULT 0,  -- per-mailbox seq counter
        pending           INTEGER NOT NULL DEFAULT 0,  -- delivery rows, kept by triggers
        expired_count     INTEGER NOT NULL DEFAULT 0,  -- unreported expiry notice
        expired_up_to_seq INTEGER NOT NULL DEFAULT 0,
        retire_at_ms      INTEGER,                     -- set by a rotation
        push_url          TEXT
    ) WITHOUT ROWID
    """,
    "CREATE INDEX mailboxes_by_account ON mailboxes (account_id, created_at_ms)",
    "CREATE INDEX mailboxes_retiring ON mailboxes (retire_at_ms) WHERE retire_at_ms IS NOT NULL",
    """
    CREATE TRIGGER mailboxes_contact_gone AFTER DELETE ON mailboxes
    BEGIN
        UPDATE accounts SET contact_mailbox_id = NULL, contact_capability = NULL
            WHERE id = OLD.account_id AND contact_mailbox_id = OLD.id;
    END
    """,
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
    # Whatever removes a delivery (ack, expiry, cascade from a mailbox or account deletion;
    # SQLite fires triggers for FK cascades) keeps the pending count and drops the blob
    # with its last reference. (The append op increments pending itself.)
    _DELIVERIES_GONE,
    # Idempotency per recipient mailbox: SHA-256(protocol.dedup_input(mailbox, client_msg_id)).
    # Outlives the delivery row (a retry after the ack must not re-queue) until
    # keep_until_ms (the relay's maximum TTL after receipt). expires_at_ms is the message's,
    # returned to a retry. Names the recipient mailbox only, never the sender.
    """
    CREATE TABLE dedup (
        mailbox_id     BLOB NOT NULL REFERENCES mailboxes (id) ON DELETE CASCADE,
        dedup_hash     BLOB NOT NULL CHECK (length(dedup_hash) = 32),
        seq            INTEGER NOT NULL,
        received_at_ms INTEGER NOT NULL,
        expires_at_ms  INTEGER NOT NULL,
        keep_until_ms  INTEGER NOT NULL,
        PRIMARY KEY (mailbox_id, dedup_hash)
    ) WITHOUT ROWID
    """,
    "CREATE INDEX dedup_by_expiry ON dedup (keep_until_ms)",
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


_V2 = [
    # One idempotency record per multi-recipient send instead of one `dedup` row per
    # recipient (a 1,000-member group send wrote 1,000 rows into two random-keyed
    # B-trees). Keyed by SHA-256("pigeon relay send v1" 0x00 || client_msg_id); `entries`
    # lists the copies it queued, 24 bytes each: the first 16 bytes of
    # SHA-256(recipient's dedup hash || the mailbox's serial, 8 bytes big-endian), then the
    # copy's seq (8 bytes, big-endian). The dedup hash is the per-mailbox one
    # (SHA-256(dedup_input(mailbox_id, client_msg_id))), so idempotency stays exact per
    # mailbox (a retry to a different subset queues only the new mailboxes); the serial
    # makes a deleted mailbox's entries dead (a mailbox re-created under the same id has a
    # new serial), as its `dedup` rows die with it. The record names no mailbox: without
    # the client_msg_id, which is not stored, an entry cannot be tied to one.
    # Single-recipient sends, and copies added later under a client_msg_id that already
    # has a record, still get `dedup` rows. Kept until keep_until_ms, like `dedup`.
    """
    CREATE TABLE send_dedup (
        send_hash      BLOB PRIMARY KEY CHECK (length(send_hash) = 32),
        received_at_ms INTEGER NOT NULL,
        expires_at_ms  INTEGER NOT NULL,
        keep_until_ms  INTEGER NOT NULL,
        entries        BLOB NOT NULL CHECK (length(entries) % 24 = 0)
    ) WITHOUT ROWID
    """,
    "CREATE INDEX send_dedup_by_expiry ON send_dedup (keep_until_ms)",
    # A mailbox's serial: distinct for every mailbox ever created (existing ones keep 0:
    # they were all created before any send record existed).
    "ALTER TABLE mailboxes ADD COLUMN serial INTEGER NOT NULL DEFAULT 0",
    "CREATE TABLE counters (name TEXT PRIMARY KEY, value INTEGER NOT NULL) WITHOUT ROWID",
    "INSERT INTO counters (name, value) VALUES ('mailbox_serial', 0)",
]


_V3 = [
    # Acks and the expiry sweep keep the pending counts and drop unreferenced blobs once
    # per statement (relay/_sqlite_ops.py: `_removed`): the per-row trigger cost three
    # B-tree probes and a counter write per acked row (a 1,000-member group message is
    # 1,000 rows of one blob, and its acks from 1,000 mailboxes probed that blob 1,000
    # times). The trigger stays only for deliveries that a mailbox's deletion cascades to
    # (the mailbox, and with it its pending count, is gone by then), so that whatever
    # deletes a mailbox or an account still leaves no orphan blob. Its WHEN is one
    # primary-key probe per row; code that deletes deliveries of a live mailbox must keep
    # the counters and blobs itself.
    "DROP TRIGGER deliveries_gone",
    """
    CREATE TRIGGER deliveries_gone AFTER DELETE ON deliveries
    WHEN NOT EXISTS (SELECT 1 FROM mailboxes WHERE id = OLD.mailbox_id)
    BEGIN
        DELETE FROM blobs WHERE id = OLD.blob_id
            AND NOT EXISTS (SELECT 1 FROM deliveries WHERE blob_id = OLD.blob_id);
    END
    """,
]


_V4 = [
    # Every send's first copies get a `send_dedup` record, a single-recipient send's too
    # (one entry), instead of `dedup` rows; copies added later under a client_msg_id that
    # already has a record still get `dedup` rows. So a send needs the per-recipient
    # `dedup` lookup only when its record exists (a retry), not for every recipient of
    # every send (1,000 keys per 1,000-member group message, one per single send). Rows
    # written before this version still answer retries: until the latest of their
    # keep_until_ms, recorded here, every send looks them up as before.
    "INSERT INTO counters (name, value) SELECT 'dedup_legacy_until',"
    " coalesce(max(keep_until_ms), 0) FROM dedup",
]


_V5 = [
    # Back to version 2's per-row trigger (the version 3 change did not pay): one
    # UPDATE ... FROM (VALUES ...) of the pending counts per ack statement cost 3.2-4.0 us
    # per row, more than the trigger's UPDATE of the same row, and the blob check it
    # saved was small; a 1,000-member fan-out's acks took 16.8-19.1 us per delivery in
    # the writer instead of 12.0-16.8 (python -m bench.relay_writer --rounds 30, back to
    # back). The trigger again keeps the pending count and drops the blob with its last
    # delivery for whatever deletes it (ack, expiry, cascade).
    "DROP TRIGGER deliveries_gone",
    _DELIVERIES_GONE,
]


_V6 = [
    # The send records in insertion order (a rowid table), found through a small index
    # on the first 8 bytes of their key, instead of a WITHOUT ROWID table keyed by the
    # whole random key. Records stay for days (keep_until_ms), so the table is large,
    # and every send inserted a ~90-byte row at a random place in it: each commit wrote
    # nearly every leaf page of the table to the WAL (a batch of 5,000 sends into 250,000
    # records: 16 MB, 88 ms). Now the row appends at the end and only a ~14-byte index
    # entry lands at a random place (5.6 MB, 39 ms; docs/benchmarks.md, "Send records in
    # insertion order"). A lookup probes the index, then compares the whole key.
    """
    CREATE TABLE send_records (
        id             INTEGER PRIMARY KEY,
        send_key       BLOB NOT NULL,  -- send_hash's first 8 bytes: the lookup index
        send_hash      BLOB NOT NULL CHECK (length(send_hash) = 32),
        received_at_ms INTEGER NOT NULL,
        expires_at_ms  INTEGER NOT NULL,
        keep_until_ms  INTEGER NOT NULL,
        entries        BLOB NOT NULL CHECK (length(entries) % 24 = 0),
        CHECK (send_key = substr(send_hash, 1, 8))
    )
    """,
    "INSERT INTO send_records (send_key, send_hash, received_at_ms, expires_at_ms,"
    " keep_until_ms, entries) SELECT substr(send_hash, 1, 8), send_hash, received_at_ms,"
    " expires_at_ms, keep_until_ms, entries FROM send_dedup ORDER BY received_at_ms",
    "DROP TABLE send_dedup",
    "ALTER TABLE send_records RENAME TO send_dedup",
    "CREATE INDEX send_dedup_by_key ON send_dedup (send_key)",
    "CREATE INDEX send_dedup_by_expiry ON send_dedup (keep_until_ms)",
]


def _run(statements: list[str], conn: sqlite3.Connection) -> None:
    for statement in statements:
        conn.execute(statement)


MIGRATIONS = tuple(Migration(n, functools.partial(_run, statements))  # pickles (writer process)
                   for n, statements in enumerate((_V1, _V2, _V3, _V4, _V5, _V6), start=1))
SCHEMA_VERSION = MIGRATIONS[-1].version
