"""The relay's PostgreSQL schema (version 1) and how :class:`relay.store_postgres.PostgresStore`
brings a database up to it (docs/protocol.md (§10)).

Everything lives in one schema (``pigeon`` by default), which the pool's connections put
first on their ``search_path``; the statements below name no schema. ``schema_version``
holds one row per applied version, as in the SQLite store. Append a ``_V2`` list for every
change; never edit a shipped one.

What is stored is what the SQLite adapter stores (``relay._sqlite_schema``): accounts,
mailboxes (owner, capability *hash*, seq counter, pending count, expiry notice, retirement
time, push URL), message blobs once per send with their per-mailbox delivery rows, the
idempotency records, usernames with their bindings, invite code *hashes*. No table has a
column for a sender.

Differences that several relay nodes on one database need:

* ``blobs.refs`` counts the deliveries of a blob. A "no delivery references it any more"
  check, as SQLite's trigger makes, races under READ COMMITTED (two acks of the last two
  copies each still see the other's row), so the last reference is found by decrementing
  the counter under the blob's row lock.
* ``deliveries_gone`` is a statement-level trigger over the deleted rows (an ack of a
  1,000-member fan-out is one statement, not 1,000 trigger calls). It locks the mailboxes,
  then the blobs, each in id order, so that two of them do not wait on each other's
  mailboxes or blobs in a cycle; appends lock mailboxes in the same order and never wait
  on a blob. Deadlocks elsewhere are rare but possible (see ``relay.store_postgres``),
  and the store runs the victim again.
"""

from __future__ import annotations

import re

__all__ = ["MIGRATIONS", "SCHEMA_VERSION", "check_schema_name", "lock_key", "quoted"]

_SCHEMA_NAME = re.compile(r"[a-z_][a-z0-9_]{0,62}")
"""A plain, unquoted PostgreSQL identifier (lower case: unquoted names fold to it)."""


def check_schema_name(name: str) -> str:
    """Return *name* if it is a plain lower-case identifier; raise ValueError otherwise.

    The name is put into SQL text (``CREATE SCHEMA``) and ``search_path``, so nothing that
    would need quoting is accepted, nor ``pg_*`` (reserved by PostgreSQL).
    """
    if not isinstance(name, str) or not _SCHEMA_NAME.fullmatch(name) or name.startswith("pg_"):
        raise ValueError("schema must be a plain lower-case identifier (a-z, 0-9, _)")
    return name


def quoted(schema: str) -> str:
    """*schema* (checked) as a quoted identifier: a reserved word (``user``) works too."""
    return f'"{check_schema_name(schema)}"'


def lock_key(schema: str) -> str:
    """Text hashed into the advisory lock that serialises schema set-up across nodes."""
    return f"pigeon-relay schema {schema}"


_V1 = [
    """
    CREATE TABLE accounts (
        id                     bytea PRIMARY KEY CHECK (length(id) = 16),
        identity_key           bytea NOT NULL,
        created_at_ms          bigint NOT NULL,
        identity_updated_at_ms bigint NOT NULL,
        signed_prekey          bytea,
        last_resort_kem        bytea,
        -- The public contact mailbox and its capability (published with the bundle).
        -- Cleared by the mailboxes_contact_gone trigger, not a foreign key (no cycle).
        contact_mailbox_id     bytea,
        contact_capability     bytea
    )
    """,
    # The identity-rotation chain (opaque, verified records), oldest first.
    """
    CREATE TABLE identity_rotations (
        account_id bytea NOT NULL REFERENCES accounts (id) ON DELETE CASCADE,
        idx        integer NOT NULL,
        record     bytea NOT NULL,
        PRIMARY KEY (account_id, idx)
    )
    """,
    # A mailbox's serial names it in send_dedup entries: distinct for every mailbox ever
    # created, so a mailbox re-created under the same id does not inherit the old entries.
    "CREATE SEQUENCE mailbox_serial",
    """
    CREATE TABLE mailboxes (
        id                bytea PRIMARY KEY CHECK (length(id) = 16),
        account_id        bytea NOT NULL REFERENCES accounts (id) ON DELETE CASCADE,
        capability_hash   bytea NOT NULL CHECK (length(capability_hash) = 32),
        created_at_ms     bigint NOT NULL,
        last_seq          bigint NOT NULL DEFAULT 0,  -- per-mailbox seq counter
        pending           bigint NOT NULL DEFAULT 0,  -- delivery rows (append, trigger)
        expired_count     bigint NOT NULL DEFAULT 0,  -- unreported expiry notice
        expired_up_to_seq bigint NOT NULL DEFAULT 0,
        retire_at_ms      bigint,                     -- set by a rotation
        push_url          text,
        serial            bigint NOT NULL DEFAULT nextval('mailbox_serial')
    )
    """,
    "CREATE INDEX mailboxes_by_account ON mailboxes (account_id, created_at_ms)",
    "CREATE INDEX mailboxes_retiring ON mailboxes (retire_at_ms) WHERE retire_at_ms IS NOT NULL",
    "CREATE INDEX mailboxes_pending ON mailboxes (pending DESC, id) WHERE pending > 0",
    """
    CREATE FUNCTION mailboxes_contact_gone() RETURNS trigger LANGUAGE plpgsql AS $$
    BEGIN
        UPDATE accounts SET contact_mailbox_id = NULL, contact_capability = NULL
            WHERE id = OLD.account_id AND contact_mailbox_id = OLD.id;
        RETURN NULL;
    END
    $$
    """,
    """
    CREATE TRIGGER mailboxes_contact_gone AFTER DELETE ON mailboxes
        FOR EACH ROW EXECUTE FUNCTION mailboxes_contact_gone()
    """,
    # One row per stored blob, however many mailboxes it was sent to; refs = deliveries.
    "CREATE SEQUENCE blob_ids",
    """
    CREATE TABLE blobs (
        id   bigint PRIMARY KEY,  -- from blob_ids, drawn by the append statement
        size integer NOT NULL,
        refs integer NOT NULL CHECK (refs >= 0),
        data bytea NOT NULL
    )
    """,
    # One row per (recipient mailbox, seq) still queued; removed on ack or expiry.
    """
    CREATE TABLE deliveries (
        mailbox_id     bytea NOT NULL REFERENCES mailboxes (id) ON DELETE CASCADE,
        seq            bigint NOT NULL,
        blob_id        bigint NOT NULL REFERENCES blobs (id),
        received_at_ms bigint NOT NULL,
        expires_at_ms  bigint NOT NULL,
        PRIMARY KEY (mailbox_id, seq)
    )
    """,
    "CREATE INDEX deliveries_by_blob ON deliveries (blob_id)",
    "CREATE INDEX deliveries_by_expiry ON deliveries (expires_at_ms)",
    # Whatever removes deliveries (ack, expiry, cascade from a mailbox or account deletion)
    # keeps the pending counts and drops each blob with its last reference. Appends add to
    # pending and refs themselves.
    """
    CREATE FUNCTION deliveries_gone() RETURNS trigger LANGUAGE plpgsql AS $$
    BEGIN
        PERFORM 1 FROM mailboxes WHERE id IN (SELECT mailbox_id FROM gone)
            ORDER BY id FOR NO KEY UPDATE;
        UPDATE mailboxes m SET pending = m.pending - g.n
            FROM (SELECT mailbox_id, count(*) AS n FROM gone GROUP BY mailbox_id) g
            WHERE m.id = g.mailbox_id;
        PERFORM 1 FROM blobs WHERE id IN (SELECT blob_id FROM gone)
            ORDER BY id FOR NO KEY UPDATE;
        UPDATE blobs b SET refs = b.refs - g.n
            FROM (SELECT blob_id, count(*) AS n FROM gone GROUP BY blob_id) g
            WHERE b.id = g.blob_id;
        DELETE FROM blobs WHERE id IN (SELECT blob_id FROM gone) AND refs = 0;
        RETURN NULL;
    END
    $$
    """,
    """
    CREATE TRIGGER deliveries_gone AFTER DELETE ON deliveries
        REFERENCING OLD TABLE AS gone
        FOR EACH STATEMENT EXECUTE FUNCTION deliveries_gone()
    """,
    # Acks of several calls in one round trip (relay._pg_ops.ack_many): the mailboxes are
    # locked first, in id order, as everything else that deletes deliveries locks them
    # (deleting a mailbox, the expiry sweep), so that an ack and a deletion do not wait on
    # each other's mailboxes in a cycle. Each queued row named is counted for the first
    # call naming it.
    """
    CREATE FUNCTION ack_deliveries(ci integer[], cm bytea[], cup bigint[], cs bigint[])
    RETURNS TABLE (ack_call integer, ack_removed bigint) LANGUAGE plpgsql AS $$
    BEGIN
        PERFORM 1 FROM mailboxes WHERE id = ANY(cm) ORDER BY id FOR NO KEY UPDATE;
        RETURN QUERY
        WITH v AS (
            SELECT * FROM unnest(ci, cm, cup, cs) AS v(i, m, up, s)
        ), hit AS (
            SELECT DISTINCT ON (x.m, x.seq) x.i, x.m, x.seq FROM (
                SELECT v.i, d.mailbox_id AS m, d.seq FROM v
                    JOIN deliveries d ON d.mailbox_id = v.m AND d.seq <= v.up
                    WHERE v.up IS NOT NULL
                UNION ALL
                SELECT v.i, d.mailbox_id, d.seq FROM v
                    JOIN deliveries d ON d.mailbox_id = v.m AND d.seq = v.s
                    WHERE v.s IS NOT NULL
            ) x ORDER BY x.m, x.seq, x.i
        ), gone AS (
            DELETE FROM deliveries d USING hit
                WHERE d.mailbox_id = hit.m AND d.seq = hit.seq RETURNING hit.i
        )
        SELECT gone.i, count(*) FROM gone GROUP BY gone.i;
    END
    $$
    """,
    # Idempotency per recipient mailbox for copies added under a client_msg_id that
    # already has a send_dedup record: SHA-256(protocol.dedup_input(mailbox, client_msg_id)).
    # Outlives the delivery row until keep_until_ms; names the recipient mailbox only.
    """
    CREATE TABLE dedup (
        mailbox_id     bytea NOT NULL REFERENCES mailboxes (id) ON DELETE CASCADE,
        dedup_hash     bytea NOT NULL CHECK (length(dedup_hash) = 32),
        seq            bigint NOT NULL,
        received_at_ms bigint NOT NULL,
        expires_at_ms  bigint NOT NULL,
        keep_until_ms  bigint NOT NULL,
        PRIMARY KEY (mailbox_id, dedup_hash)
    )
    """,
    "CREATE INDEX dedup_by_expiry ON dedup (keep_until_ms)",
    # One idempotency record per send (relay._sqlite_schema, version 2): keyed by
    # SHA-256("pigeon relay send v1" 0x00 || client_msg_id); `entries` lists the copies it
    # queued, 24 bytes each (16 bytes of SHA-256(dedup hash || mailbox serial), then the
    # seq, 8 bytes big-endian). Names no mailbox.
    """
    CREATE TABLE send_dedup (
        send_hash      bytea PRIMARY KEY CHECK (length(send_hash) = 32),
        received_at_ms bigint NOT NULL,
        expires_at_ms  bigint NOT NULL,
        keep_until_ms  bigint NOT NULL,
        entries        bytea NOT NULL CHECK (length(entries) % 24 = 0)
    )
    """,
    "CREATE INDEX send_dedup_by_expiry ON send_dedup (keep_until_ms)",
    """
    CREATE TABLE one_time_prekeys (
        account_id bytea NOT NULL REFERENCES accounts (id) ON DELETE CASCADE,
        kind       smallint NOT NULL,
        key_id     bigint NOT NULL CHECK (key_id BETWEEN 0 AND 4294967295),
        data       bytea NOT NULL,
        PRIMARY KEY (account_id, kind, key_id)
    )
    """,
    """
    CREATE TABLE usernames (
        username      text PRIMARY KEY,
        account_id    bytea NOT NULL UNIQUE REFERENCES accounts (id) ON DELETE CASCADE,
        binding       bytea NOT NULL,
        claimed_at_ms bigint NOT NULL
    )
    """,
    """
    CREATE TABLE invites (
        code_hash     bytea PRIMARY KEY CHECK (length(code_hash) = 32),
        created_at_ms bigint NOT NULL,
        expires_at_ms bigint,
        used_at_ms    bigint
    )
    """,
]

MIGRATIONS: tuple[tuple[int, tuple[str, ...]], ...] = ((1, tuple(_V1)),)
"""``(version, statements)`` in order; each version is applied in the set-up transaction."""
SCHEMA_VERSION = MIGRATIONS[-1][0]
