"""The default relay :class:`~relay.ports.Store`: one SQLite file, group-committed.

``SqliteStore`` is the async facade; the SQL lives in ``_sqlite_ops``, the schema in
``_sqlite_schema`` and the threads in ``_sqlite_engine`` (one writer thread that batches
every write queued by any connection into one ``BEGIN IMMEDIATE ... COMMIT``, committing
at once when only one is queued; reader threads for reads). Nothing blocks the event loop.

Durability is ``Synchronous.FULL`` by default (a returned write survives power loss);
see :class:`relay._sqlite_engine.Synchronous` and docs/protocol.md (§10).

Usage::

    store = await SqliteStore.open("relay.db")
    try:
        ...
    finally:
        await store.close()
"""

from __future__ import annotations

import functools
from collections.abc import Callable, Sequence
from pathlib import Path

from . import _sqlite_accounts as accounts
from . import _sqlite_ops as ops
from ._sqlite_engine import (
    DEFAULT_BUSY_TIMEOUT_MS,
    DEFAULT_MAX_BATCH,
    DEFAULT_READERS,
    SqliteEngine,
    Synchronous,
    WriterMode,
)
from ._sqlite_schema import MIGRATIONS, SCHEMA_VERSION
from .ports import (
    ACCOUNT_ID_LEN,
    CAPABILITY_HASH_LEN,
    CLIENT_MSG_ID_LEN,
    MAILBOX_ID_LEN,
    AccountRecord,
    AccountSummary,
    AppendRequest,
    AppendResult,
    ExpiryNotice,
    ExpiryReport,
    InviteRecord,
    MailboxRecord,
    OneTimePrekey,
    PrekeyBundleRecord,
    PrekeyCounts,
    QueueSizes,
    Recipient,
    Store,
    StoredMessage,
    StoreObserver,
    UsernameRecord,
    check_id,
)

__all__ = ["SCHEMA_VERSION", "SqliteStore", "Synchronous", "WriterMode"]

RANK_ACK = 0
RANK_APPEND = 1
"""Acks and appends queued in one batch are regrouped, acks first (see
``SqliteEngine.write_many``); the callers' order is kept within each kind. An ack names
seqs delivered, i.e. committed by an earlier batch, so it does not see the batch's
appends either way (a client acking seqs it was never sent may or may not remove a copy
queued in the same batch: both are orders its concurrent calls could have taken)."""


def _positive(what: str, value: int) -> int:
    if value < 1:
        raise ValueError(f"{what} must be positive")
    return value


class SqliteStore:
    """Implements :class:`relay.ports.Store` on SQLite (WAL, foreign keys, secure_delete)."""

    def __init__(self, engine: SqliteEngine) -> None:
        """Use :meth:`open`."""
        self._engine = engine

    @classmethod
    async def open(
        cls,
        path: str | Path,
        *,
        synchronous: Synchronous = Synchronous.FULL,
        max_batch: int = DEFAULT_MAX_BATCH,
        readers: int = DEFAULT_READERS,
        busy_timeout_ms: int = DEFAULT_BUSY_TIMEOUT_MS,
        observer: StoreObserver | None = None,
        writer: WriterMode = WriterMode.THREAD,
        on_fatal: Callable[[], None] | None = None,
    ) -> SqliteStore:
        """Open or create the database at *path* and bring its schema up to date.

        Args:
            path: the database file (WAL adds ``-wal`` and ``-shm`` beside it).
            synchronous: durability of a returned write (default FULL: power loss).
            max_batch: most writes per transaction; 1 disables group commit (benchmarks).
            readers: reader threads (each with its own connection).
            busy_timeout_ms: wait for locks held by another process (the admin CLI).
            observer: receives commit batch sizes and per-call latencies.
            writer: where the writer's connection runs: a thread of this process, or a
                child process fed whole batches (``WriterMode.PROCESS``; what
                ``pigeon-relay`` uses, docs/relay.md §14.12).
            on_fatal: called on the opening loop if the writer process dies (every later
                write fails with ``StoreError``).

        Raises:
            StoreError: the file cannot be opened, WAL cannot be enabled, or the schema is
                newer than this code.
        """
        engine = await SqliteEngine.open(
            path,
            MIGRATIONS,
            synchronous=synchronous,
            max_batch=max_batch,
            readers=readers,
            busy_timeout_ms=busy_timeout_ms,
            observer=observer,
            writer=writer,
            on_fatal=on_fatal,
        )
        return cls(engine)

    async def close(self) -> None:
        await self._engine.close()

    @property
    def failed(self) -> str | None:
        """Why the writer process is gone; None while the store works."""
        return self._engine.failed

    @property
    def pending_writes(self) -> int:
        """Writes queued or in the running transaction (for backpressure and metrics)."""
        return self._engine.pending_writes

    # ------------------------------------------------------------------ accounts

    async def create_account(
        self,
        *,
        account_id: bytes,
        identity_key: bytes,
        now_ms: int,
        invite_code_hash: bytes | None = None,
    ) -> AccountRecord:
        check_id("account_id", account_id, ACCOUNT_ID_LEN)
        if invite_code_hash is not None:
            check_id("invite_code_hash", invite_code_hash, CAPABILITY_HASH_LEN)
        return await self._engine.write(
            "create_account",
            functools.partial(
                accounts.create_account, account_id=account_id, identity_key=identity_key,
                now_ms=now_ms, invite_code_hash=invite_code_hash,
            ),
        )

    async def get_account(self, account_id: bytes) -> AccountRecord | None:
        return await self._engine.read(
            "get_account", functools.partial(accounts.get_account, account_id=account_id)
        )

    async def rotate_identity(
        self, *, account_id: bytes, identity_key: bytes, rotation: bytes, now_ms: int,
        expect_key: bytes, expect_rotations: int,
    ) -> AccountRecord:
        check_id("account_id", account_id, ACCOUNT_ID_LEN)
        return await self._engine.write(
            "rotate_identity",
            functools.partial(
                accounts.rotate_identity, account_id=account_id, identity_key=identity_key,
                rotation=bytes(rotation), now_ms=now_ms, expect_key=bytes(expect_key),
                expect_rotations=expect_rotations,
            ),
        )

    async def delete_account(self, account_id: bytes) -> bool:
        return await self._engine.write(
            "delete_account", functools.partial(accounts.delete_account, account_id=account_id)
        )

    async def list_accounts(
        self, *, after: bytes | None = None, limit: int = 100
    ) -> list[AccountSummary]:
        _positive("limit", limit)
        return await self._engine.read(
            "list_accounts", functools.partial(accounts.list_accounts, after=after, limit=limit)
        )

    # ------------------------------------------------------------------ mailboxes

    async def create_mailbox(
        self, *, account_id: bytes, mailbox_id: bytes, capability_hash: bytes, now_ms: int
    ) -> MailboxRecord:
        check_id("account_id", account_id, ACCOUNT_ID_LEN)
        check_id("mailbox_id", mailbox_id, MAILBOX_ID_LEN)
        check_id("capability_hash", capability_hash, CAPABILITY_HASH_LEN)
        return await self._engine.write(
            "create_mailbox",
            functools.partial(
                ops.create_mailbox, account_id=account_id, mailbox_id=mailbox_id,
                capability_hash=capability_hash, now_ms=now_ms,
            ),
        )

    async def get_mailbox(self, mailbox_id: bytes) -> MailboxRecord | None:
        return await self._engine.read(
            "get_mailbox", functools.partial(ops.get_mailbox, mailbox_id=mailbox_id)
        )

    async def list_mailboxes(self, account_id: bytes) -> list[MailboxRecord]:
        return await self._engine.read(
            "list_mailboxes", functools.partial(ops.list_mailboxes, account_id=account_id)
        )

    async def count_mailboxes(self, account_id: bytes) -> int:
        return await self._engine.read(
            "count_mailboxes", functools.partial(ops.count_mailboxes, account_id=account_id)
        )

    async def owned_mailboxes(self, account_id: bytes,
                              mailbox_ids: Sequence[bytes]) -> set[bytes]:
        return await self._engine.read(
            "owned_mailboxes", functools.partial(ops.owned_mailboxes, account_id=account_id,
                                                 mailbox_ids=list(mailbox_ids)),
        )

    async def rotate_mailbox(
        self,
        *,
        account_id: bytes,
        mailbox_id: bytes,
        new_mailbox_id: bytes,
        capability_hash: bytes,
        retire_at_ms: int,
        now_ms: int,
    ) -> MailboxRecord:
        check_id("new_mailbox_id", new_mailbox_id, MAILBOX_ID_LEN)
        check_id("capability_hash", capability_hash, CAPABILITY_HASH_LEN)
        return await self._engine.write(
            "rotate_mailbox",
            functools.partial(
                ops.rotate_mailbox, account_id=account_id, mailbox_id=mailbox_id,
                new_mailbox_id=new_mailbox_id, capability_hash=capability_hash,
                retire_at_ms=retire_at_ms, now_ms=now_ms,
            ),
        )

    async def replace_capability(
        self, *, account_id: bytes, mailbox_id: bytes, capability_hash: bytes
    ) -> None:
        check_id("capability_hash", capability_hash, CAPABILITY_HASH_LEN)
        await self._engine.write(
            "replace_capability",
            functools.partial(
                ops.replace_capability, account_id=account_id, mailbox_id=mailbox_id,
                capability_hash=capability_hash,
            ),
        )

    async def set_contact_mailbox(
        self, *, account_id: bytes, mailbox_id: bytes, capability: bytes
    ) -> None:
        await self._engine.write(
            "set_contact_mailbox",
            functools.partial(
                ops.set_contact_mailbox, account_id=account_id, mailbox_id=mailbox_id,
                capability=bytes(capability),
            ),
        )

    async def set_push_url(
        self, *, account_id: bytes, mailbox_ids: Sequence[bytes], push_url: str | None
    ) -> None:
        await self._engine.write(
            "set_push_url",
            functools.partial(
                ops.set_push_url, account_id=account_id, mailbox_ids=tuple(mailbox_ids),
                push_url=push_url,
            ),
        )

    async def delete_mailbox(self, *, account_id: bytes, mailbox_id: bytes) -> bool:
        return await self._engine.write(
            "delete_mailbox",
            functools.partial(ops.delete_mailbox, account_id=account_id, mailbox_id=mailbox_id),
        )

    async def check_capabilities(
        self, recipients: Sequence[Recipient], *, now_ms: int
    ) -> frozenset[bytes]:
        return await self._engine.read(
            "check_capabilities",
            functools.partial(
                ops.check_capabilities, recipients=tuple(recipients), now_ms=now_ms
            ),
        )

    # ------------------------------------------------------------------ messages

    async def append(
        self,
        *,
        recipients: Sequence[Recipient],
        client_msg_id: bytes,
        blob: bytes,
        now_ms: int,
        ttl_ms: int,
        max_pending: int | None = None,
        dedup_ttl_ms: int | None = None,
    ) -> AppendResult:
        check_id("client_msg_id", client_msg_id, CLIENT_MSG_ID_LEN)
        _positive("ttl_ms", ttl_ms)
        # Appends queued back to back run as one ops.append_many (multi-row statements).
        request = AppendRequest(tuple(recipients), client_msg_id, bytes(blob), now_ms, ttl_ms,
                                max_pending, dedup_ttl_ms)
        return (await self._engine.write_many("append", ops.append_lists, [request],
                                              rank=RANK_APPEND))[0]

    async def append_many(self, requests: Sequence[AppendRequest]) -> list[AppendResult]:
        for request in requests:
            check_id("client_msg_id", request.client_msg_id, CLIENT_MSG_ID_LEN)
            _positive("ttl_ms", request.ttl_ms)
        if not requests:
            return []
        # One op for the whole list; lists queued back to back share one append_many.
        return await self._engine.write_many("append_many", ops.append_lists, list(requests),
                                             rank=RANK_APPEND)

    async def fetch(
        self, mailbox_id: bytes, *, after_seq: int = 0, limit: int = 100, now_ms: int
    ) -> list[StoredMessage]:
        _positive("limit", limit)
        return await self._engine.read(
            "fetch",
            functools.partial(
                ops.fetch, mailbox_id=mailbox_id, after_seq=after_seq, limit=limit, now_ms=now_ms
            ),
        )

    async def ack(
        self, mailbox_id: bytes, *, up_to_seq: int | None = None, seqs: Sequence[int] = ()
    ) -> int:
        if up_to_seq is None and not seqs:
            return 0
        return (await self.ack_many([(mailbox_id, up_to_seq, seqs)]))[0]

    async def ack_many(
        self, requests: Sequence[tuple[bytes, int | None, Sequence[int]]]
    ) -> list[int]:
        # Ack calls queued back to back run as one ops.ack_many (a few statements in all).
        # Not durable: an ack lost to power loss means a redelivery, which clients drop as
        # a duplicate, so a batch of acks alone commits without an fsync.
        return await self._engine.write_many(
            "ack", ops.ack_lists, [(m, up, tuple(seqs)) for m, up, seqs in requests],
            rank=RANK_ACK, durable=False)

    async def pending_count(self, mailbox_id: bytes) -> int:
        return await self._engine.read(
            "pending_count", functools.partial(ops.pending_count, mailbox_id=mailbox_id)
        )

    async def expire(self, *, now_ms: int, limit: int = 10_000) -> ExpiryReport:
        _positive("limit", limit)
        return await self._engine.write(
            "expire", functools.partial(ops.expire, now_ms=now_ms, limit=limit)
        )

    async def expire_mailbox(self, mailbox_id: bytes, *, now_ms: int) -> int:
        return await self._engine.write(
            "expire_mailbox",
            functools.partial(ops.expire_mailbox, mailbox_id=mailbox_id, now_ms=now_ms),
        )

    async def get_expiry_notice(self, mailbox_id: bytes) -> ExpiryNotice | None:
        return await self._engine.read(
            "get_expiry_notice", functools.partial(ops.get_expiry_notice, mailbox_id=mailbox_id)
        )

    async def clear_expiry_notice(self, notice: ExpiryNotice) -> None:
        await self._engine.write(
            "clear_expiry_notice", functools.partial(ops.clear_expiry_notice, notice=notice)
        )

    # ------------------------------------------------------------------ prekeys

    async def upload_prekeys(
        self,
        *,
        account_id: bytes,
        signed_prekey: bytes | None = None,
        last_resort_kem: bytes | None = None,
        one_time_x25519: Sequence[OneTimePrekey] = (),
        one_time_kem: Sequence[OneTimePrekey] = (),
        replace_one_time: bool = False,
    ) -> PrekeyCounts:
        return await self._engine.write(
            "upload_prekeys",
            functools.partial(
                accounts.upload_prekeys, account_id=account_id, signed_prekey=signed_prekey,
                last_resort_kem=last_resort_kem, one_time_x25519=tuple(one_time_x25519),
                one_time_kem=tuple(one_time_kem), replace_one_time=replace_one_time,
            ),
        )

    async def fetch_prekey_bundle(self, account_id: bytes) -> PrekeyBundleRecord | None:
        # A write: consuming one-time prekeys must be atomic and serialised.
        return await self._engine.write(
            "fetch_prekey_bundle",
            functools.partial(accounts.fetch_prekey_bundle, account_id=account_id),
        )

    async def prekey_counts(self, account_id: bytes) -> PrekeyCounts:
        return await self._engine.read(
            "prekey_counts", functools.partial(accounts.prekey_counts, account_id=account_id)
        )

    # ------------------------------------------------------------------ usernames

    async def claim_username(
        self, *, account_id: bytes, username: str, binding: bytes, now_ms: int
    ) -> UsernameRecord:
        if not username:
            raise ValueError("username must not be empty")
        return await self._engine.write(
            "claim_username",
            functools.partial(
                accounts.claim_username, account_id=account_id, username=username, binding=binding,
                now_ms=now_ms,
            ),
        )

    async def lookup_username(self, username: str) -> UsernameRecord | None:
        return await self._engine.read(
            "lookup_username", functools.partial(accounts.lookup_username, username=username)
        )

    async def release_username(self, account_id: bytes) -> bool:
        return await self._engine.write(
            "release_username", functools.partial(accounts.release_username, account_id=account_id)
        )

    # ------------------------------------------------------------------ invites

    async def create_invite(
        self, *, code_hash: bytes, now_ms: int, expires_at_ms: int | None = None
    ) -> InviteRecord:
        check_id("code_hash", code_hash, CAPABILITY_HASH_LEN)
        return await self._engine.write(
            "create_invite",
            functools.partial(
                accounts.create_invite, code_hash=code_hash, now_ms=now_ms,
                expires_at_ms=expires_at_ms,
            ),
        )

    async def consume_invite(self, *, code_hash: bytes, now_ms: int) -> bool:
        return await self._engine.write(
            "consume_invite",
            functools.partial(accounts.consume_invite, code_hash=code_hash, now_ms=now_ms),
        )

    async def revoke_invite(self, code_hash: bytes) -> bool:
        return await self._engine.write(
            "revoke_invite", functools.partial(accounts.revoke_invite, code_hash=code_hash)
        )

    async def list_invites(self) -> list[InviteRecord]:
        return await self._engine.read("list_invites", accounts.list_invites)

    # ------------------------------------------------------------------ admin

    async def queue_sizes(self, *, limit: int = 100) -> QueueSizes:
        _positive("limit", limit)
        return await self._engine.read(
            "queue_sizes", functools.partial(ops.queue_sizes, limit=limit)
        )


def _conforms(store: SqliteStore) -> Store:  # pragma: no cover - checked by mypy
    return store
