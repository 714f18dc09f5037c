"""A relay :class:`~relay.ports.Store` on PostgreSQL, for several relay nodes on one database.

``PostgresStore`` is the async facade over an asyncpg pool; the SQL lives in ``_pg_ops``
(mailboxes, messages, queues) and ``_pg_accounts`` (accounts, prekeys, usernames,
invites), the schema in ``_pg_schema``. It behaves like the SQLite adapter (the contract
suite runs on both); what differs is that other nodes write the same tables at the same
time, so:

* Every port method that writes is one READ COMMITTED transaction (a single-statement
  one, an ack say, runs as PostgreSQL's implicit transaction) and returns only after its
  COMMIT (``synchronous_commit`` is the server's, ``on`` by default: durable). Row locks
  and ``ON CONFLICT`` make each decision race-free across nodes (see the module
  docstrings of ``_pg_ops`` and ``_pg_accounts``). Most locks are taken in a fixed order,
  so deadlocks are rare, but not impossible (an account deletion racing a mailbox
  creation and an append to it; two batches extending and inserting ``send_dedup``
  records of the same client_msg_ids): a transaction PostgreSQL aborts as a deadlock
  victim or serialization failure is run again, up to :data:`MAX_ATTEMPTS` times.
* No call waits on another node for ever: statements, lock waits and waits for a pooled
  connection time out, and the server ends a session left idle in a transaction or whose
  host stopped answering keepalives, releasing its locks (``COMMAND_TIMEOUT_S`` and the
  constants after it). A timeout is a ``StoreError``, as any driver error.
* Reads are single statements (one snapshot each), outside any transaction.
* asyncpg and OS errors are raised as ``StoreError`` (``from`` the original) whose text
  names the operation and the error class only: PostgreSQL's messages may quote key
  values. Expected refusals raise the ``relay.ports`` errors, as the other adapters do.

Usage::

    store = await PostgresStore.open("postgresql://relay@db/relay", schema="pigeon")
    try:
        ...
    finally:
        await store.close()
"""

from __future__ import annotations

import asyncio
import logging
import random
import time
from collections.abc import Awaitable, Callable, Sequence
from typing import Final, TypeVar

import asyncpg
from asyncpg import Record
from asyncpg.pool import Pool

from pigeon_crypto.errors import StoreError

from . import _pg_accounts as accounts
from . import _pg_ops as ops
from ._pg_accounts import Conn
from ._pg_schema import MIGRATIONS, SCHEMA_VERSION, check_schema_name, lock_key, quoted
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
    NullObserver,
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
    observe,
)

__all__ = ["SCHEMA_VERSION", "PostgresStore"]

_log = logging.getLogger(__name__)

T = TypeVar("T")

CONNECT_TIMEOUT_S = 10.0
"""How long opening a connection may take before the call fails with ``StoreError``."""
COMMAND_TIMEOUT_S = 30.0
"""Longest statement: the server cancels it (``statement_timeout``), and the client gives
up on an answer a little later (the server may be the one stalled). ``StoreError``."""
LOCK_TIMEOUT_S = 10.0
"""Longest wait for one lock (``lock_timeout``): a node stalled while holding a mailbox's
row lock costs the others this, then ``StoreError`` (the relay answers UNAVAILABLE)."""
IDLE_IN_TRANSACTION_TIMEOUT_S = 60.0
"""A session that leaves its transaction open and idle this long is ended by the server
(``idle_in_transaction_session_timeout``), which releases its locks: a node that stalls
mid-transaction blocks the others for at most this."""
ACQUIRE_TIMEOUT_S = 10.0
"""Longest wait for a pooled connection when all are busy; then ``StoreError``."""
TCP_KEEPALIVE_IDLE_S = 30
"""Idle seconds before the server probes a node's connection (``tcp_keepalives_idle``)..."""
TCP_KEEPALIVE_INTERVAL_S = 10
"""...seconds between probes (``tcp_keepalives_interval``)..."""
TCP_KEEPALIVE_COUNT = 3
"""...and unanswered probes before it drops the connection, aborting its transaction
(``tcp_keepalives_count``): a node whose host vanished holds its locks about a minute,
not the OS default of two hours. Ignored on a Unix-domain socket."""
TCP_USER_TIMEOUT_S = 60
"""How long data the server sent may stay unacknowledged before it drops the connection
(``tcp_user_timeout``, PostgreSQL 12+, which the schema needs anyway)."""
CLIENT_TIMEOUT_MARGIN_S = 5.0
"""The client waits this much longer than ``statement_timeout`` for an answer."""
SETUP_TIMEOUT_S = 600.0
"""The schema set-up (migrations, under an advisory lock another node may hold while it
migrates) runs without the server timeouts and with this client timeout."""
CLOSE_TIMEOUT_S = 30.0
"""How long :meth:`PostgresStore.close` waits for calls in flight before cutting them off."""
MAX_ATTEMPTS = 5
"""Runs of one write transaction when PostgreSQL aborts it as a deadlock victim or a
serialization failure (rare: most locks are taken in a fixed order; see ``_pg_ops``)."""

_FOREIGN: tuple[type[BaseException], ...] = (
    asyncpg.PostgresError, asyncpg.InterfaceError, asyncpg.InternalClientError, OSError,
    TimeoutError,
)
"""What the driver, the server or the network raise; wrapped as ``StoreError``."""


def _server_ms(seconds: float) -> str:
    """A duration setting's value in milliseconds (0 would turn the timeout off)."""
    return str(max(1, round(seconds * 1000)))


_OPEN_HINTS: Final = {
    "InvalidCatalogNameError": "the database named in the store URL does not exist",
    "InvalidPasswordError": "the server refused the user or password of the store URL",
    "InvalidAuthorizationSpecificationError": "the server refused the store URL's user",
    "ConnectionRefusedError": "nothing listens at the store URL's host and port",
}
"""What the operator should check, by error class (the server's own message may quote
values, so it is not shown)."""


def _positive(what: str, value: int) -> int:
    if value < 1:
        raise ValueError(f"{what} must be positive")
    return value


def _wrap(what: str, exc: BaseException) -> StoreError:
    """A ``StoreError`` naming *what* failed and the error class, never its message
    (PostgreSQL quotes key values in constraint errors)."""
    code = getattr(exc, "sqlstate", None)
    detail = type(exc).__name__ + (f", SQLSTATE {code}" if code else "")
    err = StoreError(f"{what} failed ({detail})")
    err.__cause__ = exc
    return err


async def _keep_session(conn: object) -> None:
    """The pool's reset on release, which saves a round trip per call: the store sets no
    session state (no ``SET``, ``LISTEN`` or session advisory lock), and asyncpg still
    rolls back a transaction left open (a cancelled call) before calling this."""


async def _set_up(conn: Conn, schema: str, *, create: bool = True) -> None:
    """Create *schema* and its tables, or bring them up to :data:`SCHEMA_VERSION`.

    One transaction under an advisory lock, so nodes starting together do it once. With
    *create* false a schema without the relay's tables is an error (``StoreError``), not
    made: the admin CLI must not turn a mistyped name into an empty deployment.
    """
    name = quoted(schema)
    wait = SETUP_TIMEOUT_S
    if not create and not await conn.fetchval(
            "SELECT to_regclass($1) IS NOT NULL", f"{name}.schema_version", timeout=wait):
        raise StoreError(f"no relay tables in schema {schema!r} of this database "
                         "(check --store-schema)")
    async with conn.transaction():
        # Migrations may take long, and so may another node's, holding the advisory lock.
        await conn.execute("SET LOCAL statement_timeout = 0; SET LOCAL lock_timeout = 0",
                           timeout=wait)
        await conn.execute("SELECT pg_advisory_xact_lock(hashtext($1))", lock_key(schema),
                           timeout=wait)
        await conn.execute(f"CREATE SCHEMA IF NOT EXISTS {name}", timeout=wait)
        await conn.execute(
            f"CREATE TABLE IF NOT EXISTS {name}.schema_version (version integer NOT NULL)",
            timeout=wait)
        current = await conn.fetchval(f"SELECT max(version) FROM {name}.schema_version",  # noqa: S608 - checked name
                                      timeout=wait)
        current = current or 0
        if current > SCHEMA_VERSION:
            raise StoreError(
                f"database schema version {current} is newer than this code ({SCHEMA_VERSION})"
            )
        for version, statements in MIGRATIONS:
            if version > current:
                for statement in statements:
                    await conn.execute(statement, timeout=wait)
                await conn.execute(
                    f"INSERT INTO {name}.schema_version (version) VALUES ($1)",  # noqa: S608
                    version, timeout=wait,
                )


class PostgresStore:
    """Implements :class:`relay.ports.Store` on PostgreSQL (one schema, shared by nodes)."""

    def __init__(self, pool: Pool[Record], schema: str, observer: StoreObserver,
                 acquire_timeout_s: float = ACQUIRE_TIMEOUT_S) -> None:
        """Use :meth:`open`."""
        self._pool = pool
        self._acquire_timeout = acquire_timeout_s
        self._schema = schema
        self._observer = observer
        self._closed = False

    def __repr__(self) -> str:
        # The DSN may carry a password: show the schema only.
        return f"PostgresStore(schema={self._schema!r}, closed={self._closed})"

    @classmethod
    async def open(
        cls,
        dsn: str,
        *,
        schema: str = "pigeon",
        observer: StoreObserver | None = None,
        min_connections: int = 2,
        max_connections: int = 10,
        command_timeout_s: float = COMMAND_TIMEOUT_S,
        lock_timeout_s: float = LOCK_TIMEOUT_S,
        idle_in_transaction_timeout_s: float = IDLE_IN_TRANSACTION_TIMEOUT_S,
        acquire_timeout_s: float = ACQUIRE_TIMEOUT_S,
        create: bool = True,
    ) -> PostgresStore:
        """Connect a pool to *dsn* and create or update the tables in *schema*.

        Args:
            dsn: a libpq connection URI or string (``postgresql://user@host/db``).
            schema: where the tables live: a plain lower-case identifier. Nodes sharing a
                relay use the same database and schema.
            observer: receives per-call latencies and per-transaction commits.
            min_connections: connections opened at once and kept.
            max_connections: most connections; calls beyond wait for one.
            command_timeout_s: longest statement (:data:`COMMAND_TIMEOUT_S`).
            lock_timeout_s: longest wait for one lock (:data:`LOCK_TIMEOUT_S`).
            idle_in_transaction_timeout_s: the server ends a session idle this long in a
                transaction (:data:`IDLE_IN_TRANSACTION_TIMEOUT_S`).
            acquire_timeout_s: longest wait for a pooled connection
                (:data:`ACQUIRE_TIMEOUT_S`).
            create: make the schema and tables when missing (False: a ``StoreError``).

        Every timeout that runs out is a ``StoreError``.

        Raises:
            ValueError: a bad schema name, connection counts or timeouts.
            StoreError: the server cannot be reached or refuses us, the set-up fails, or
                the schema's version is newer than this code.
        """
        check_schema_name(schema)
        if not 1 <= min_connections <= max_connections:
            raise ValueError("need 1 <= min_connections <= max_connections")
        timeouts = (command_timeout_s, lock_timeout_s, idle_in_transaction_timeout_s,
                    acquire_timeout_s)
        if not all(t > 0 for t in timeouts):
            raise ValueError("timeouts must be positive")
        try:
            pool: Pool[Record] = await asyncpg.create_pool(
                dsn,
                min_size=min_connections,
                max_size=max_connections,
                timeout=CONNECT_TIMEOUT_S,
                command_timeout=command_timeout_s + CLIENT_TIMEOUT_MARGIN_S,
                server_settings={
                    "search_path": quoted(schema),
                    "application_name": "pigeon-relay",
                    "statement_timeout": _server_ms(command_timeout_s),
                    "lock_timeout": _server_ms(lock_timeout_s),
                    "idle_in_transaction_session_timeout":
                        _server_ms(idle_in_transaction_timeout_s),
                    "tcp_keepalives_idle": str(TCP_KEEPALIVE_IDLE_S),
                    "tcp_keepalives_interval": str(TCP_KEEPALIVE_INTERVAL_S),
                    "tcp_keepalives_count": str(TCP_KEEPALIVE_COUNT),
                    "tcp_user_timeout": str(TCP_USER_TIMEOUT_S * 1000),
                },
                reset=_keep_session,
            )
        except StoreError:
            raise
        except Exception as exc:  # bad DSN text, refused, auth...: one answer
            err = _wrap("opening the store", exc)
            hint = _OPEN_HINTS.get(type(exc).__name__)
            if hint is not None:
                err = StoreError(f"{err}: {hint}")
            raise err from exc
        try:
            async with pool.acquire(timeout=acquire_timeout_s) as conn:
                await _set_up(conn, schema, create=create)
        except BaseException as exc:
            pool.terminate()
            if isinstance(exc, _FOREIGN):
                raise _wrap("setting up the schema", exc) from exc
            raise
        return cls(pool, schema, observer or NullObserver(), acquire_timeout_s)

    async def close(self) -> None:
        """Let calls in flight finish, then close every connection. Idempotent."""
        if self._closed:
            return
        self._closed = True
        try:
            await asyncio.wait_for(self._pool.close(), CLOSE_TIMEOUT_S)
        except TimeoutError:
            self._pool.terminate()
        except _FOREIGN as exc:
            self._pool.terminate()
            raise _wrap("closing the store", exc) from exc

    # ------------------------------------------------------------------ engine

    async def _write(self, name: str, fn: Callable[[Conn], Awaitable[T]], *,
                     one_statement: bool = False) -> T:
        """Run *fn* in one transaction, again if PostgreSQL aborts it as a deadlock
        victim or serialization failure; return once it has committed.

        *one_statement*: *fn* runs a single statement and raises nothing after it that
        would need its effects undone. It then runs as PostgreSQL's implicit transaction
        (committed before the reply arrives), which saves the BEGIN and COMMIT round trips.
        """
        if self._closed:
            raise StoreError("store is closed")
        start = time.perf_counter()
        ok = False
        try:
            for attempt in range(1, MAX_ATTEMPTS + 1):
                began = time.perf_counter()
                committed = False
                try:
                    async with self._pool.acquire(timeout=self._acquire_timeout) as conn:
                        if one_statement:
                            result = await fn(conn)
                        else:
                            async with conn.transaction():
                                result = await fn(conn)
                    committed = True
                except asyncpg.TransactionRollbackError as exc:
                    if attempt == MAX_ATTEMPTS:
                        raise _wrap(name, exc) from exc
                    await asyncio.sleep(random.uniform(0, 0.01 * attempt))  # noqa: S311 - jitter
                    continue
                except _FOREIGN as exc:
                    raise _wrap(name, exc) from exc
                finally:
                    observe(self._observer.on_commit, ops=1,
                             seconds=time.perf_counter() - began, ok=committed)
                ok = True
                return result
            raise AssertionError("unreachable")  # pragma: no cover
        finally:
            observe(self._observer.on_operation, name=name,
                     seconds=time.perf_counter() - start, ok=ok)

    async def _read(self, name: str, fn: Callable[[Conn], Awaitable[T]]) -> T:
        """Run *fn* (single-statement reads) on a pooled connection."""
        if self._closed:
            raise StoreError("store is closed")
        start = time.perf_counter()
        ok = False
        try:
            async with self._pool.acquire(timeout=self._acquire_timeout) as conn:
                result = await fn(conn)
            ok = True
            return result
        except _FOREIGN as exc:
            raise _wrap(name, exc) from exc
        finally:
            observe(self._observer.on_operation, name=name,
                     seconds=time.perf_counter() - start, ok=ok)

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
        key = bytes(identity_key)
        return await self._write("create_account", lambda c: accounts.create_account(
            c, account_id, key, now_ms, invite_code_hash))

    async def get_account(self, account_id: bytes) -> AccountRecord | None:
        return await self._read("get_account", lambda c: accounts.get_account(c, account_id))

    async def rotate_identity(
        self, *, account_id: bytes, identity_key: bytes, rotation: bytes, now_ms: int,
        expect_key: bytes, expect_rotations: int,
    ) -> AccountRecord:
        check_id("account_id", account_id, ACCOUNT_ID_LEN)
        key, record, old = bytes(identity_key), bytes(rotation), bytes(expect_key)
        return await self._write("rotate_identity", lambda c: accounts.rotate_identity(
            c, account_id, key, record, now_ms, old, expect_rotations))

    async def delete_account(self, account_id: bytes) -> bool:
        return await self._write("delete_account",
                                 lambda c: accounts.delete_account(c, account_id))

    async def list_accounts(
        self, *, after: bytes | None = None, limit: int = 100
    ) -> list[AccountSummary]:
        _positive("limit", limit)
        return await self._read("list_accounts",
                                lambda c: accounts.list_accounts(c, after, limit))

    # ------------------------------------------------------------------ mailboxes

    async def create_mailbox(
        self, *, account_id: bytes, mailbox_id: bytes, capability_hash: bytes, now_ms: int
    ) -> MailboxRecord:
        check_id("account_id", account_id, ACCOUNT_ID_LEN)
        check_id("mailbox_id", mailbox_id, MAILBOX_ID_LEN)
        check_id("capability_hash", capability_hash, CAPABILITY_HASH_LEN)
        return await self._write("create_mailbox", lambda c: ops.create_mailbox(
            c, account_id, mailbox_id, capability_hash, now_ms))

    async def get_mailbox(self, mailbox_id: bytes) -> MailboxRecord | None:
        return await self._read("get_mailbox", lambda c: ops.get_mailbox(c, mailbox_id))

    async def list_mailboxes(self, account_id: bytes) -> list[MailboxRecord]:
        return await self._read("list_mailboxes", lambda c: ops.list_mailboxes(c, account_id))

    async def count_mailboxes(self, account_id: bytes) -> int:
        return await self._read("count_mailboxes", lambda c: ops.count_mailboxes(c, account_id))

    async def owned_mailboxes(self, account_id: bytes,
                              mailbox_ids: Sequence[bytes]) -> set[bytes]:
        ids = list(mailbox_ids)
        return await self._read("owned_mailboxes",
                                lambda c: ops.owned_mailboxes(c, account_id, ids))

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
        return await self._write("rotate_mailbox", lambda c: ops.rotate_mailbox(
            c, account_id, mailbox_id, new_mailbox_id, capability_hash, retire_at_ms, now_ms))

    async def replace_capability(
        self, *, account_id: bytes, mailbox_id: bytes, capability_hash: bytes
    ) -> None:
        check_id("capability_hash", capability_hash, CAPABILITY_HASH_LEN)
        await self._write("replace_capability", lambda c: ops.replace_capability(
            c, account_id, mailbox_id, capability_hash), one_statement=True)

    async def set_contact_mailbox(
        self, *, account_id: bytes, mailbox_id: bytes, capability: bytes
    ) -> None:
        cap = bytes(capability)
        await self._write("set_contact_mailbox", lambda c: ops.set_contact_mailbox(
            c, account_id, mailbox_id, cap))

    async def set_push_url(
        self, *, account_id: bytes, mailbox_ids: Sequence[bytes], push_url: str | None
    ) -> None:
        ids = tuple(mailbox_ids)
        await self._write("set_push_url",
                          lambda c: ops.set_push_url(c, account_id, ids, push_url))

    async def delete_mailbox(self, *, account_id: bytes, mailbox_id: bytes) -> bool:
        return await self._write("delete_mailbox",
                                 lambda c: ops.delete_mailbox(c, account_id, mailbox_id),
                                 one_statement=True)

    async def check_capabilities(
        self, recipients: Sequence[Recipient], *, now_ms: int
    ) -> frozenset[bytes]:
        rs = tuple(recipients)
        return await self._read("check_capabilities",
                                lambda c: ops.check_capabilities(c, rs, now_ms))

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
        request = AppendRequest(tuple(recipients), client_msg_id, bytes(blob), now_ms, ttl_ms,
                                max_pending, dedup_ttl_ms)
        return (await self._write("append", lambda c: ops.append_many(c, [request])))[0]

    async def append_many(self, requests: Sequence[AppendRequest]) -> list[AppendResult]:
        for request in requests:  # all or nothing: check before the transaction
            check_id("client_msg_id", request.client_msg_id, CLIENT_MSG_ID_LEN)
            _positive("ttl_ms", request.ttl_ms)
        if not requests:
            return []
        calls = list(requests)
        return await self._write("append_many", lambda c: ops.append_many(c, calls))

    async def fetch(
        self, mailbox_id: bytes, *, after_seq: int = 0, limit: int = 100, now_ms: int
    ) -> list[StoredMessage]:
        _positive("limit", limit)
        return await self._read("fetch", lambda c: ops.fetch(
            c, mailbox_id, after_seq, limit, now_ms))

    async def ack(
        self, mailbox_id: bytes, *, up_to_seq: int | None = None, seqs: Sequence[int] = ()
    ) -> int:
        if up_to_seq is None and not seqs:
            return 0
        return (await self.ack_many([(mailbox_id, up_to_seq, seqs)]))[0]

    async def ack_many(
        self, requests: Sequence[tuple[bytes, int | None, Sequence[int]]]
    ) -> list[int]:
        calls = [(m, up, tuple(seqs)) for m, up, seqs in requests]
        if not calls:
            return []
        return await self._write("ack", lambda c: ops.ack_many(c, calls), one_statement=True)

    async def pending_count(self, mailbox_id: bytes) -> int:
        return await self._read("pending_count", lambda c: ops.pending_count(c, mailbox_id))

    async def expire(self, *, now_ms: int, limit: int = 10_000) -> ExpiryReport:
        _positive("limit", limit)
        return await self._write("expire", lambda c: ops.expire(c, now_ms, limit))

    async def expire_mailbox(self, mailbox_id: bytes, *, now_ms: int) -> int:
        return await self._write("expire_mailbox",
                                 lambda c: ops.expire_mailbox(c, mailbox_id, now_ms))

    async def get_expiry_notice(self, mailbox_id: bytes) -> ExpiryNotice | None:
        return await self._read("get_expiry_notice",
                                lambda c: ops.get_expiry_notice(c, mailbox_id))

    async def clear_expiry_notice(self, notice: ExpiryNotice) -> None:
        await self._write("clear_expiry_notice", lambda c: ops.clear_expiry_notice(c, notice),
                          one_statement=True)

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
        x25519, kem = tuple(one_time_x25519), tuple(one_time_kem)
        return await self._write("upload_prekeys", lambda c: accounts.upload_prekeys(
            c, account_id, signed_prekey, last_resort_kem, x25519, kem, replace_one_time))

    async def fetch_prekey_bundle(self, account_id: bytes) -> PrekeyBundleRecord | None:
        # A write: consuming one-time prekeys must be atomic.
        return await self._write("fetch_prekey_bundle",
                                 lambda c: accounts.fetch_prekey_bundle(c, account_id))

    async def prekey_counts(self, account_id: bytes) -> PrekeyCounts:
        return await self._read("prekey_counts",
                                lambda c: accounts.prekey_counts(c, account_id))

    # ------------------------------------------------------------------ usernames

    async def claim_username(
        self, *, account_id: bytes, username: str, binding: bytes, now_ms: int
    ) -> UsernameRecord:
        if not username:
            raise ValueError("username must not be empty")
        signed = bytes(binding)
        return await self._write("claim_username", lambda c: accounts.claim_username(
            c, account_id, username, signed, now_ms))

    async def lookup_username(self, username: str) -> UsernameRecord | None:
        return await self._read("lookup_username",
                                lambda c: accounts.lookup_username(c, username))

    async def release_username(self, account_id: bytes) -> bool:
        return await self._write("release_username",
                                 lambda c: accounts.release_username(c, account_id),
                                 one_statement=True)

    # ------------------------------------------------------------------ invites

    async def create_invite(
        self, *, code_hash: bytes, now_ms: int, expires_at_ms: int | None = None
    ) -> InviteRecord:
        check_id("code_hash", code_hash, CAPABILITY_HASH_LEN)
        return await self._write("create_invite", lambda c: accounts.create_invite(
            c, code_hash, now_ms, expires_at_ms), one_statement=True)

    async def consume_invite(self, *, code_hash: bytes, now_ms: int) -> bool:
        return await self._write("consume_invite",
                                 lambda c: accounts.consume_invite(c, code_hash, now_ms),
                                 one_statement=True)

    async def revoke_invite(self, code_hash: bytes) -> bool:
        return await self._write("revoke_invite",
                                 lambda c: accounts.revoke_invite(c, code_hash),
                                 one_statement=True)

    async def list_invites(self) -> list[InviteRecord]:
        return await self._read("list_invites", accounts.list_invites)

    # ------------------------------------------------------------------ admin

    async def queue_sizes(self, *, limit: int = 100) -> QueueSizes:
        _positive("limit", limit)
        return await self._read("queue_sizes", lambda c: ops.queue_sizes(c, limit))


def _conforms(store: PostgresStore) -> Store:  # pragma: no cover - checked by mypy
    return store
