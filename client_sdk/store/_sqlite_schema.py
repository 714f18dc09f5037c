"""The profile's SQLite schema, as ordered migrations (docs/client-store.md).

Policy: append ``Migration(N + 1, fn)`` for every change and never edit a shipped one.
All pending migrations run in one transaction when a profile is opened, so a crash
mid-migration leaves the old schema. A file whose version is above ours is refused
(``ProfileTooNew``): an older SDK must not write rows it does not understand.

Column conventions: ``-- sealed`` marks a value sealed under the data key (AD = table,
column, row key; see ``_sqlite_db.record_ad``). Our own account as a message sender or
reactor is stored as the empty blob ``x''`` so that it takes part in UNIQUE keys
(NULLs would not).
"""

from __future__ import annotations

import sqlite3
from collections.abc import Callable, Sequence
from dataclasses import dataclass

__all__ = ["APPLICATION_ID", "MIGRATIONS", "SCHEMA_VERSION", "Migration", "migrate"]

APPLICATION_ID = 0x50474E50
"""``PRAGMA application_id`` of a profile file ("PGNP"): tells a profile from any other
SQLite file before anything else is read."""


@dataclass(frozen=True, slots=True)
class Migration:
    version: int
    apply: Callable[[sqlite3.Connection], None]


_V1 = [
    # name -> value: the wrapped data key, the key check, creation time.
    "CREATE TABLE profile_meta (name TEXT PRIMARY KEY, value BLOB NOT NULL) WITHOUT ROWID",
    # --- identity and keys --------------------------------------------------------------
    """
    CREATE TABLE local_identity (
        id             INTEGER PRIMARY KEY CHECK (id = 1),
        account_id     BLOB NOT NULL CHECK (length(account_id) = 16),
        initial_public BLOB NOT NULL,           -- IdentityPublicKey
        rotations      BLOB NOT NULL,           -- IdentityRotation records, concatenated
        key_pair       BLOB NOT NULL            -- sealed IdentityKeyPair
    )
    """,
    """
    CREATE TABLE signed_prekeys (
        key_id          INTEGER PRIMARY KEY CHECK (key_id BETWEEN 0 AND 4294967295),
        created_ms      INTEGER NOT NULL,
        public          BLOB NOT NULL,          -- SignedPreKey
        private         BLOB NOT NULL,          -- sealed SignedPreKeyPair
        published_at_ms INTEGER,
        retired_at_ms   INTEGER
    )
    """,
    """
    CREATE TABLE kem_prekeys (
        key_id          INTEGER PRIMARY KEY CHECK (key_id BETWEEN 0 AND 4294967295),
        kind            INTEGER NOT NULL CHECK (kind IN (1, 2)),  -- KemKind
        created_ms      INTEGER NOT NULL,
        public          BLOB NOT NULL,          -- KemPreKey
        private         BLOB NOT NULL,          -- sealed KemPreKeyPair
        published_at_ms INTEGER
    )
    """,
    """
    CREATE TABLE one_time_prekeys (
        key_id          INTEGER PRIMARY KEY CHECK (key_id BETWEEN 0 AND 4294967295),
        public          BLOB NOT NULL,          -- OneTimePreKey
        private         BLOB NOT NULL,          -- sealed OneTimePreKeyPair
        published_at_ms INTEGER
    )
    """,
    """
    CREATE TABLE prekey_id_counters (
        kind    INTEGER PRIMARY KEY,            -- PrekeyKind
        next_id INTEGER NOT NULL
    )
    """,
    # SHA-256 of Accepted.replay_key, kept while its signed prekey is.
    """
    CREATE TABLE initiation_replays (
        replay_hash      BLOB PRIMARY KEY CHECK (length(replay_hash) = 32),
        signed_prekey_id INTEGER NOT NULL REFERENCES signed_prekeys (key_id) ON DELETE CASCADE,
        seen_at_ms       INTEGER NOT NULL
    ) WITHOUT ROWID
    """,
    "CREATE INDEX initiation_replays_by_spk ON initiation_replays (signed_prekey_id)",
    """
    CREATE TABLE sessions (
        peer  BLOB NOT NULL UNIQUE CHECK (length(peer) = 16),
        state BLOB NOT NULL                     -- sealed RatchetState snapshot
    )
    """,
    """
    CREATE TABLE outbound_sender_keys (
        group_id BLOB NOT NULL UNIQUE,
        chain_id INTEGER NOT NULL,
        state    BLOB NOT NULL                  -- sealed OutboundSenderKey
    )
    """,
    """
    CREATE TABLE sender_key_records (
        group_id BLOB NOT NULL,
        sender   BLOB NOT NULL CHECK (length(sender) = 16),
        record   BLOB NOT NULL,                 -- sealed SenderKeyRecord
        UNIQUE (group_id, sender)
    )
    """,
    """
    CREATE TABLE sender_key_shares (
        group_id BLOB NOT NULL,
        chain_id INTEGER NOT NULL,
        member   BLOB NOT NULL CHECK (length(member) = 16),
        PRIMARY KEY (group_id, chain_id, member)
    ) WITHOUT ROWID
    """,
    # --- contacts and settings ------------------------------------------------------------
    """
    CREATE TABLE contacts (
        account_id       BLOB PRIMARY KEY CHECK (length(account_id) = 16),
        state            INTEGER NOT NULL CHECK (state BETWEEN 1 AND 4),  -- ContactState
        identity         BLOB,                  -- IdentityPublicKey
        rotation_chain   BLOB NOT NULL,
        profile_name     TEXT,
        avatar_manifest  BLOB,                  -- sealed
        verified         INTEGER NOT NULL CHECK (verified IN (0, 1)),
        identity_changed INTEGER NOT NULL CHECK (identity_changed IN (0, 1)),
        created_at_ms    INTEGER NOT NULL,
        updated_at_ms    INTEGER NOT NULL
    )
    """,
    """
    CREATE TABLE contact_mailboxes (
        mailbox_id    BLOB PRIMARY KEY CHECK (length(mailbox_id) = 16),
        account_id    BLOB NOT NULL REFERENCES contacts (account_id) ON DELETE CASCADE,
        direction     INTEGER NOT NULL CHECK (direction IN (1, 2)),  -- MailboxDirection
        capability    BLOB NOT NULL,            -- sealed
        relay_url     TEXT,
        created_at_ms INTEGER NOT NULL,
        retired_at_ms INTEGER
    )
    """,
    "CREATE INDEX contact_mailboxes_by_contact ON contact_mailboxes (account_id)",
    """
    CREATE TABLE settings (
        name   TEXT PRIMARY KEY,
        value  BLOB NOT NULL,                   -- sealed when sealed = 1
        sealed INTEGER NOT NULL CHECK (sealed IN (0, 1))
    ) WITHOUT ROWID
    """,
    # --- history ------------------------------------------------------------------------
    """
    CREATE TABLE conversations (
        id                 INTEGER PRIMARY KEY,
        kind               INTEGER NOT NULL CHECK (kind IN (1, 2)),  -- ConversationKind
        peer               BLOB NOT NULL,
        title              TEXT,
        expire_timer_ms    INTEGER CHECK (expire_timer_ms > 0),
        created_at_ms      INTEGER NOT NULL,
        last_message_at_ms INTEGER,
        UNIQUE (kind, peer)
    )
    """,
    "CREATE INDEX conversations_by_activity ON conversations (last_message_at_ms)",
    """
    CREATE TABLE messages (
        id              INTEGER PRIMARY KEY,    -- rowid: keyset tiebreak, FTS rowid
        conversation_id INTEGER NOT NULL REFERENCES conversations (id) ON DELETE CASCADE,
        message_id      BLOB NOT NULL CHECK (length(message_id) = 16),
        sender          BLOB NOT NULL,          -- account id, x'' for ours
        kind            INTEGER NOT NULL,       -- MessageKind
        body            TEXT,                   -- plaintext (indexed by messages_fts)
        attachment      BLOB,                   -- sealed file manifest
        reply_to        BLOB,
        sent_at_ms      INTEGER NOT NULL,       -- ordering time (see history.ordering_time)
        received_at_ms  INTEGER,
        status          INTEGER NOT NULL,       -- MessageStatus
        failure_reason  TEXT,
        edited_at_ms    INTEGER,
        deleted_at_ms   INTEGER,                -- tombstone: deleted for everyone
        expires_at_ms   INTEGER,
        UNIQUE (conversation_id, message_id)
    )
    """,
    # Keyset paging: (conversation_id, sent_at_ms) plus the implicit rowid.
    "CREATE INDEX messages_by_time ON messages (conversation_id, sent_at_ms)",
    "CREATE INDEX messages_by_expiry ON messages (expires_at_ms) WHERE expires_at_ms IS NOT NULL",
    """
    CREATE TABLE reactions (
        message_rowid INTEGER NOT NULL REFERENCES messages (id) ON DELETE CASCADE,
        reactor       BLOB NOT NULL,            -- account id, x'' for ours
        emoji         TEXT NOT NULL,
        at_ms         INTEGER NOT NULL,
        PRIMARY KEY (message_rowid, reactor, emoji)
    ) WITHOUT ROWID
    """,
    # External-content FTS5 index over messages.body, kept by the triggers below. Only
    # an UPDATE OF body touches the index (status changes do not).
    """
    CREATE VIRTUAL TABLE messages_fts USING fts5 (
        body, content = 'messages', content_rowid = 'id',
        tokenize = 'unicode61 remove_diacritics 2'
    )
    """,
    """
    CREATE TRIGGER messages_fts_insert AFTER INSERT ON messages WHEN new.body IS NOT NULL
    BEGIN
        INSERT INTO messages_fts (rowid, body) VALUES (new.id, new.body);
    END
    """,
    """
    CREATE TRIGGER messages_fts_delete AFTER DELETE ON messages WHEN old.body IS NOT NULL
    BEGIN
        INSERT INTO messages_fts (messages_fts, rowid, body) VALUES ('delete', old.id, old.body);
    END
    """,
    """
    CREATE TRIGGER messages_fts_update AFTER UPDATE OF body ON messages
    BEGIN
        INSERT INTO messages_fts (messages_fts, rowid, body)
            SELECT 'delete', old.id, old.body WHERE old.body IS NOT NULL;
        INSERT INTO messages_fts (rowid, body)
            SELECT new.id, new.body WHERE new.body IS NOT NULL;
    END
    """,
    # --- outbox and inbox -----------------------------------------------------------------
    """
    CREATE TABLE outbox (
        seq                INTEGER PRIMARY KEY AUTOINCREMENT,  -- enqueue order, never reused
        client_msg_id      BLOB NOT NULL UNIQUE CHECK (length(client_msg_id) = 16),
        recipients         BLOB NOT NULL,       -- sealed (mailbox id, capability) list
        blob               BLOB NOT NULL,       -- the exact ciphertext to (re)send
        created_at_ms      INTEGER NOT NULL,
        attempts           INTEGER NOT NULL DEFAULT 0,
        next_attempt_at_ms INTEGER NOT NULL,
        last_error         TEXT,
        message_rowid      INTEGER REFERENCES messages (id) ON DELETE SET NULL
    )
    """,
    "CREATE INDEX outbox_due ON outbox (next_attempt_at_ms, seq)",
    "CREATE INDEX outbox_by_message ON outbox (message_rowid)",
    # Envelopes already processed, until the relay could no longer redeliver them.
    """
    CREATE TABLE processed_envelopes (
        mailbox_id     BLOB NOT NULL CHECK (length(mailbox_id) = 16),
        seq            INTEGER NOT NULL,
        received_at_ms INTEGER NOT NULL,
        PRIMARY KEY (mailbox_id, seq)
    ) WITHOUT ROWID
    """,
    "CREATE INDEX processed_envelopes_by_time ON processed_envelopes (received_at_ms)",
]


def _v1(conn: sqlite3.Connection) -> None:
    for statement in _V1:
        conn.execute(statement)


def _v2(conn: sqlite3.Connection) -> None:
    # File transfers (docs/sdk.md §15.13); statements in client_sdk.store.transfers.
    from .transfers import SCHEMA_V2

    for statement in SCHEMA_V2:
        conn.execute(statement)


def _v3(conn: sqlite3.Connection) -> None:
    # Groups (docs/sdk.md §15.14); statements in client_sdk.store._sqlite_groups.
    from ._sqlite_groups import SCHEMA_GROUPS

    for statement in SCHEMA_GROUPS:
        conn.execute(statement)


def _v4(conn: sqlite3.Connection) -> None:
    # The store writes a new message's index entry itself, in the same transaction
    # (client_sdk.store._sqlite_history.insert_message): an INSERT whose trigger writes
    # to an FTS5 table opens a statement savepoint, and FTS5 flushes its pending terms
    # into a new segment at every savepoint, so the trigger wrote (and merged) one
    # segment per message. The delete and edit triggers stay.
    conn.execute("DROP TRIGGER messages_fts_insert")


def _v5(conn: sqlite3.Connection) -> None:
    # Aggregated receipts of group messages (docs/sdk.md §15.14).
    from ._sqlite_groups import SCHEMA_GROUP_RECEIPTS

    for statement in SCHEMA_GROUP_RECEIPTS:
        conn.execute(statement)


def _v6(conn: sqlite3.Connection) -> None:
    # Channels with subscriptions (docs/sdk.md §15.14): the admins' roster.
    from ._sqlite_groups import SCHEMA_CHANNEL_SUBSCRIPTIONS

    for statement in SCHEMA_CHANNEL_SUBSCRIPTIONS:
        conn.execute(statement)


def _v7(conn: sqlite3.Connection) -> None:
    # Each channel's roster in one sealed value (a post reads only the ids).
    from ._sqlite_groups import SCHEMA_CHANNEL_ROSTERS

    for statement in SCHEMA_CHANNEL_ROSTERS:
        conn.execute(statement)


def _v8(conn: sqlite3.Connection) -> None:
    # Sealed group changes: a blob or its key waiting for the other half.
    from ._sqlite_groups import SCHEMA_SEALED_CONTROLS

    for statement in SCHEMA_SEALED_CONTROLS:
        conn.execute(statement)


MIGRATIONS: tuple[Migration, ...] = (Migration(1, _v1), Migration(2, _v2), Migration(3, _v3),
                                     Migration(4, _v4), Migration(5, _v5), Migration(6, _v6),
                                     Migration(7, _v7), Migration(8, _v8))
SCHEMA_VERSION = MIGRATIONS[-1].version


def stored_version(conn: sqlite3.Connection) -> int:
    """The schema version recorded in the file (0 for a new file)."""
    has_table = conn.execute(
        "SELECT 1 FROM sqlite_master WHERE type = 'table' AND name = 'schema_version'"
    ).fetchone()
    if not has_table:
        return 0
    row = conn.execute("SELECT max(version) FROM schema_version").fetchone()
    return int(row[0]) if row and row[0] is not None else 0


def migrate(conn: sqlite3.Connection, migrations: Sequence[Migration] = MIGRATIONS) -> int:
    """Apply every migration above the stored version, in one transaction.

    The caller checked that the stored version is not above the newest migration.
    Returns the version reached.
    """
    versions = [m.version for m in migrations]
    if versions != sorted(set(versions)) or (versions and versions[0] < 1):
        raise ValueError("migrations must have strictly increasing versions >= 1")
    conn.execute("BEGIN IMMEDIATE")
    try:
        conn.execute("CREATE TABLE IF NOT EXISTS schema_version (version INTEGER NOT NULL)")
        current = stored_version(conn)
        for m in migrations:
            if m.version > current:
                m.apply(conn)
                conn.execute("INSERT INTO schema_version (version) VALUES (?)", (m.version,))
                current = m.version
        conn.execute("COMMIT")
    except BaseException:
        if conn.in_transaction:
            conn.execute("ROLLBACK")
        raise
    return current
