"""The profile's SQLite connection: transactions, error mapping and sealing.

One connection per profile, used by one thread at a time behind a re-entrant lock: a
client has one writer, and SQLite serializes writers anyway. Each public store method
runs in exactly one transaction (:meth:`Db.write` = ``BEGIN IMMEDIATE`` … ``COMMIT``,
:meth:`Db.read` = a deferred read transaction for a consistent snapshot); any exception
rolls the whole transaction back.

Sealed columns are XChaCha20-Poly1305 records (``pigeon_crypto.sealing``) under the
profile's data key with the associated data :func:`record_ad`, which names the table,
the column and the row's natural key: a sealed value copied into another row or column
does not open.
"""

from __future__ import annotations

import contextlib
import sqlite3
import threading
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import TypeVar

from pigeon_crypto.errors import CryptoError, PigeonError
from pigeon_crypto.rng import Rng
from pigeon_crypto.sealing import DataKey, seal, unseal

from ..errors import ProfileCorrupt, ProfileLocked, StoreClosed, StoreError

__all__ = ["Db", "Tx", "map_sqlite_error", "record_ad"]

T = TypeVar("T")

_AD_PREFIX = b"pigeon/sdk-store/v1\x00"


def record_ad(table: str, column: str, key: bytes) -> bytes:
    """``"pigeon/sdk-store/v1" 0x00 table 0x00 column 0x00 key``: binds a sealed value to
    its place. Table and column names hold no NUL, and the key comes last, so the
    encoding is unambiguous."""
    return _AD_PREFIX + table.encode() + b"\x00" + column.encode() + b"\x00" + key


def map_sqlite_error(exc: sqlite3.Error, path: Path, what: str) -> StoreError:
    """Translate an sqlite3 error into the SDK's hierarchy (the caller chains it)."""
    name = getattr(exc, "sqlite_errorname", "") or type(exc).__name__
    if name.startswith(("SQLITE_CORRUPT", "SQLITE_NOTADB")):
        return ProfileCorrupt(path, f"SQLite reports {name} during {what}")
    if name.startswith(("SQLITE_BUSY", "SQLITE_LOCKED")):
        return ProfileLocked(path)
    return StoreError(f"{what} failed: {name}")


class Tx:
    """What store helpers get inside a transaction: the connection and sealing."""

    __slots__ = ("_key", "_path", "_rng", "conn")

    def __init__(self, conn: sqlite3.Connection, path: Path, key: DataKey, rng: Rng) -> None:
        self.conn = conn
        self._path = path
        self._key = key
        self._rng = rng

    def __repr__(self) -> str:
        return f"Tx({self._path})"

    def seal(self, table: str, column: str, key: bytes, plaintext: bytes) -> bytes:
        return seal(self._key, plaintext, ad=record_ad(table, column, key), rng=self._rng)

    def unseal(self, table: str, column: str, key: bytes, sealed: bytes) -> bytes:
        """Open a sealed value.

        Raises:
            ProfileCorrupt: it does not authenticate (tampered, or moved from another row).
        """
        try:
            return unseal(self._key, sealed, ad=record_ad(table, column, key))
        except CryptoError as exc:
            raise ProfileCorrupt(
                self._path, f"sealed {table}.{column} failed authentication"
            ) from exc

    def decode(self, what: str, parse: Callable[[bytes], T], data: bytes) -> T:
        """Parse stored bytes; a parse failure means the file is damaged."""
        try:
            return parse(data)
        except PigeonError as exc:
            raise ProfileCorrupt(self._path, f"stored {what} does not decode") from exc

    def corrupt(self, reason: str) -> ProfileCorrupt:
        return ProfileCorrupt(self._path, reason)

    def changes(self) -> int:
        return int(self.conn.execute("SELECT changes()").fetchone()[0])


class Db:
    """Owns the connection; hands out one transaction at a time."""

    def __init__(self, conn: sqlite3.Connection, path: Path, key: DataKey, rng: Rng) -> None:
        self._conn: sqlite3.Connection | None = conn
        self.path = path
        self._tx = Tx(conn, path, key, rng)
        self._lock = threading.RLock()

    def __repr__(self) -> str:
        return f"Db({self.path}, {'closed' if self._conn is None else 'open'})"

    @property
    def closed(self) -> bool:
        return self._conn is None

    @contextlib.contextmanager
    def write(self, what: str) -> Iterator[Tx]:
        """One write transaction; rolled back if the body raises."""
        with self._lock:
            conn = self._require()
            try:
                conn.execute("BEGIN IMMEDIATE")
                try:
                    yield self._tx
                except BaseException:
                    if conn.in_transaction:
                        conn.execute("ROLLBACK")
                    raise
                conn.execute("COMMIT")
            except sqlite3.Error as exc:
                if conn.in_transaction:
                    with contextlib.suppress(sqlite3.Error):
                        conn.execute("ROLLBACK")
                raise map_sqlite_error(exc, self.path, what) from exc

    @contextlib.contextmanager
    def read(self, what: str) -> Iterator[Tx]:
        """One read transaction (a consistent snapshot across statements)."""
        with self._lock:
            conn = self._require()
            try:
                conn.execute("BEGIN")
                try:
                    yield self._tx
                finally:
                    if conn.in_transaction:
                        conn.execute("COMMIT")
            except sqlite3.Error as exc:
                raise map_sqlite_error(exc, self.path, what) from exc

    def close(self) -> None:
        """Close the connection (checkpoints the WAL). Idempotent."""
        with self._lock:
            conn, self._conn = self._conn, None
            if conn is not None:
                try:
                    conn.close()
                except sqlite3.Error as exc:
                    raise map_sqlite_error(exc, self.path, "close") from exc

    def _require(self) -> sqlite3.Connection:
        if self._conn is None:
            raise StoreClosed()
        if self._conn.in_transaction:
            # Same thread (the lock is re-entrant): an iterable given to the store, say,
            # called back into it. One call is one transaction; they do not nest.
            raise StoreError("store calls cannot be nested inside another store call")
        return self._conn
