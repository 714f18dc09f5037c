"""Profiles: one SQLite file per local account, its secrets sealed under a data key.

Theory of operation (docs/client-store.md, "Profile file")
    ``Profile.create(path, passphrase)`` draws a random 32-byte data key, wraps it
    under Argon2id(passphrase) (``pigeon_crypto.sealing``; the Argon2 parameters are
    the AD) and writes the wrapped key, plus a sealed *key check* value, to the small
    ``profile_meta`` table of a new file. The file is built under a temporary name and
    linked into place only when complete, so a crash during creation never leaves a
    half-made profile at *path*.

    ``Profile.open(path, passphrase)`` refuses anything that is not a whole Pigeon
    profile with a clear error before asking for the passphrase's work:

    ========================================  ==========================================
    no file                                   :class:`ProfileNotFound`
    open elsewhere (exclusive lock held)      :class:`ProfileLocked`
    not SQLite, truncated, damaged pages      :class:`ProfileCorrupt`
    SQLite but not a profile (application_id  :class:`ProfileCorrupt`
    or tables missing, no wrapped key)
    schema newer than this SDK                :class:`ProfileTooNew`
    passphrase does not unwrap the key        :class:`WrongPassphrase`
    key unwraps but does not open the key     :class:`ProfileCorrupt` (the wrapped key
    check (wrapped key from another file)     was swapped)
    ========================================  ==========================================

    ``change_passphrase`` re-wraps the 32-byte data key only; no record is touched.

The connection runs with ``locking_mode=EXCLUSIVE`` (the lock is taken at open and
held until close: a second process or ``Profile`` gets :class:`ProfileLocked`, so two
writers can never encrypt from the same ratchet state), ``journal_mode=WAL``,
``synchronous=FULL`` by default, ``foreign_keys``, ``secure_delete`` (freed pages are
zeroed) and ``temp_store=MEMORY`` (sorts never spill plaintext into temporary files).
The schema is migrated on open (``_sqlite_schema``).
"""

from __future__ import annotations

import enum
import os
import sqlite3
from pathlib import Path
from types import TracebackType

from sqlite_utils import Database

from pigeon_crypto.errors import DecodeError, UnsupportedVersion
from pigeon_crypto.rng import Rng, system_rng
from pigeon_crypto.sealing import (
    DEFAULT_PARAMS,
    Argon2Params,
    DataKey,
    UnsealError,
    create_data_key,
    needs_rewrap,
    rewrap,
    seal,
    unlock,
    unseal,
)

from ..errors import (
    ProfileCorrupt,
    ProfileExists,
    ProfileNotFound,
    ProfileTooNew,
    StoreConflict,
    StoreError,
)
from ._sqlite_db import Db, map_sqlite_error, record_ad
from ._sqlite_schema import APPLICATION_ID, SCHEMA_VERSION, migrate, stored_version
from .sqlite import SqliteStore

__all__ = ["DEFAULT_BUSY_TIMEOUT_MS", "Durability", "Profile"]

DEFAULT_BUSY_TIMEOUT_MS = 200
"""How long open() waits for another owner's lock before ProfileLocked: the lock is held
for a profile's whole session, so waiting longer only delays the error."""
CACHE_KIB = 16 * 1024
"""SQLite page cache per profile: keeps the hot part of large histories' indexes in
memory (the default is 2 MiB)."""
_KEY_CHECK = b"pigeon profile key check v1"
_REQUIRED_TABLES = frozenset({"profile_meta", "schema_version", "messages", "sessions"})


class Durability(enum.Enum):
    """``PRAGMA synchronous`` (WAL mode): what a returned write survives.

    FULL: process crash, OS crash and power loss (fsync per commit). The default.
    NORMAL: process crash; an OS crash or power loss may roll back the last commits.
    OFF: process crash only; for tests and benchmarks.
    """

    FULL = "FULL"
    NORMAL = "NORMAL"
    OFF = "OFF"


def _key_check_ad() -> bytes:
    return record_ad("profile_meta", "value", b"key_check")


def _connect(path: Path, *, create: bool, durability: Durability,
             busy_timeout_ms: int) -> sqlite3.Connection:
    uri = path.resolve().as_uri() + ("?mode=rwc" if create else "?mode=rw")
    try:
        conn = sqlite3.connect(uri, uri=True, isolation_level=None, check_same_thread=False,
                               timeout=busy_timeout_ms / 1000)
    except sqlite3.Error as exc:
        raise map_sqlite_error(exc, path, "open") from exc
    try:
        conn.execute(f"PRAGMA busy_timeout = {int(busy_timeout_ms)}")
        conn.execute("PRAGMA locking_mode = EXCLUSIVE")
        mode = conn.execute("PRAGMA journal_mode = WAL").fetchone()[0]
        if str(mode).lower() != "wal":
            raise StoreError(f"cannot enable WAL on {path} (journal_mode={mode})")
        conn.execute(f"PRAGMA synchronous = {durability.value}")
        conn.execute("PRAGMA foreign_keys = ON")
        conn.execute("PRAGMA secure_delete = ON")
        conn.execute("PRAGMA temp_store = MEMORY")
        conn.execute(f"PRAGMA cache_size = -{CACHE_KIB}")
        # Take the exclusive lock now (held until close), not at the first write.
        conn.execute("BEGIN IMMEDIATE")
        conn.execute("SELECT count(*) FROM sqlite_master").fetchone()
        conn.execute("COMMIT")
    except sqlite3.Error as exc:
        conn.close()
        raise map_sqlite_error(exc, path, "open") from exc
    except BaseException:
        conn.close()
        raise
    return conn


def _read_wrapped(conn: sqlite3.Connection, path: Path) -> tuple[bytes, bytes]:
    """Validate the file as a profile; return (wrapped key, sealed key check)."""
    app_id = conn.execute("PRAGMA application_id").fetchone()[0]
    if app_id != APPLICATION_ID:
        raise ProfileCorrupt(path, "not a Pigeon profile (wrong SQLite application_id)")
    version = stored_version(conn)
    if version > SCHEMA_VERSION:
        raise ProfileTooNew(path, version, SCHEMA_VERSION)
    missing = _REQUIRED_TABLES - set(Database(conn, recursive_triggers=False,
                                              execute_plugins=False).table_names())
    if missing:
        raise ProfileCorrupt(path, f"missing tables: {', '.join(sorted(missing))}")
    rows = dict(conn.execute(
        "SELECT name, value FROM profile_meta WHERE name IN ('wrapped_key', 'key_check')"))
    if set(rows) != {"wrapped_key", "key_check"}:
        raise ProfileCorrupt(path, "the wrapped data key is missing")
    return bytes(rows["wrapped_key"]), bytes(rows["key_check"])


def _unlock(path: Path, wrapped: bytes, key_check: bytes, passphrase: str | bytes) -> DataKey:
    try:
        data_key = unlock(wrapped, passphrase)
    except (DecodeError, UnsupportedVersion) as exc:
        raise ProfileCorrupt(path, "the wrapped data key is malformed") from exc
    try:
        unseal(data_key, key_check, ad=_key_check_ad())
    except UnsealError as exc:  # e.g. a wrapped key copied from another profile
        raise ProfileCorrupt(path, "the data key does not open this profile's records") from exc
    except (DecodeError, UnsupportedVersion) as exc:
        raise ProfileCorrupt(path, "the key check is malformed") from exc
    return data_key


class Profile:
    """An open profile: the file, its unlocked data key and :attr:`store`.

    Use as a context manager or call :meth:`close`. The repr shows the path only.
    """

    def __init__(self, path: Path, db: Db) -> None:
        """Use :meth:`create` or :meth:`open`."""
        self.path = path
        self._db = db
        self.store = SqliteStore(db)

    def __repr__(self) -> str:
        return f"Profile({str(self.path)!r}, {'closed' if self._db.closed else 'open'})"

    # --- lifecycle ----------------------------------------------------------------------

    @classmethod
    def create(
        cls,
        path: str | os.PathLike[str],
        passphrase: str | bytes,
        *,
        params: Argon2Params = DEFAULT_PARAMS,
        durability: Durability = Durability.FULL,
        busy_timeout_ms: int = DEFAULT_BUSY_TIMEOUT_MS,
        rng: Rng = system_rng,
    ) -> Profile:
        """Create a new, empty profile at *path* and open it.

        Args:
            params: Argon2id cost (tests pass small ones; see ``sealing.DEFAULT_PARAMS``).
            rng: randomness for the data key, salts and seal nonces.

        Raises:
            ProfileExists: something already exists at *path* (never overwritten).
            ValueError: an empty passphrase.
            StoreError: the file cannot be written.
        """
        target = Path(path)
        if not passphrase:
            raise ValueError("the passphrase must not be empty")
        if target.exists():
            raise ProfileExists(target)
        temp = target.with_name(f".{target.name}.{rng(8).hex()}.creating")
        data_key, wrapped = create_data_key(passphrase, params=params, rng=rng)
        key_check = seal(data_key, _KEY_CHECK, ad=_key_check_ad(), rng=rng)
        try:
            conn = _connect(temp, create=True, durability=durability,
                            busy_timeout_ms=busy_timeout_ms)
            try:
                conn.execute(f"PRAGMA application_id = {APPLICATION_ID}")
                migrate(conn)
                conn.executemany("INSERT INTO profile_meta (name, value) VALUES (?, ?)",
                                 [("wrapped_key", wrapped), ("key_check", key_check)])
            except sqlite3.Error as exc:
                raise map_sqlite_error(exc, temp, "create") from exc
            finally:
                conn.close()
            try:
                os.link(temp, target)  # atomic, and fails rather than overwrite
            except FileExistsError:
                raise ProfileExists(target) from None
            except OSError:  # no hard links here (FAT, some sandboxes): rename instead
                if target.exists():
                    raise ProfileExists(target) from None
                os.rename(temp, target)
        finally:
            for leftover in (temp, temp.with_name(temp.name + "-wal")):
                leftover.unlink(missing_ok=True)
        conn = _connect(target, create=False, durability=durability,
                        busy_timeout_ms=busy_timeout_ms)
        return cls(target, Db(conn, target, data_key, rng))

    @classmethod
    def open(
        cls,
        path: str | os.PathLike[str],
        passphrase: str | bytes,
        *,
        durability: Durability = Durability.FULL,
        busy_timeout_ms: int = DEFAULT_BUSY_TIMEOUT_MS,
        upgrade_params: Argon2Params | None = None,
        integrity_check: bool = False,
        rng: Rng = system_rng,
    ) -> Profile:
        """Open, unlock and migrate an existing profile.

        Args:
            upgrade_params: if the stored Argon2 parameters are below these, re-wrap the
                data key with them (the passphrase is at hand now).
            integrity_check: run ``PRAGMA quick_check`` (reads the whole file: seconds
                for a large history). Without it, damage is still reported as
                ProfileCorrupt when a damaged page or record is read.

        Raises:
            ProfileNotFound, ProfileLocked, ProfileCorrupt, ProfileTooNew,
            WrongPassphrase: see the module docstring.
        """
        target = Path(path)
        if not target.is_file():
            raise ProfileNotFound(target)
        conn = _connect(target, create=False, durability=durability,
                        busy_timeout_ms=busy_timeout_ms)
        try:
            wrapped, key_check = _read_wrapped(conn, target)
            data_key = _unlock(target, wrapped, key_check, passphrase)
            profile = cls(target, Db(conn, target, data_key, rng))
            if integrity_check:
                profile.check_integrity()
            migrate(conn)
            if upgrade_params is not None and needs_rewrap(wrapped, upgrade_params):
                profile._store_wrapped(wrapped, rewrap(wrapped, passphrase, passphrase,
                                                       params=upgrade_params, rng=rng))
        except sqlite3.Error as exc:
            conn.close()
            raise map_sqlite_error(exc, target, "open") from exc
        except BaseException:
            conn.close()
            raise
        return profile

    def close(self) -> None:
        """Close the file (idempotent); the store raises StoreClosed afterwards."""
        self._db.close()

    def __enter__(self) -> Profile:
        return self

    def __exit__(self, exc_type: type[BaseException] | None, exc: BaseException | None,
                 tb: TracebackType | None) -> None:
        self.close()

    # --- operations ---------------------------------------------------------------------

    def change_passphrase(
        self, old: str | bytes, new: str | bytes, *, params: Argon2Params | None = None,
        rng: Rng = system_rng,
    ) -> None:
        """Re-wrap the data key under *new* (and *params*, default: the stored ones).
        Only the wrapped key changes; sealed records stay as they are.

        Raises:
            WrongPassphrase: *old* does not unlock the profile.
            ValueError: *new* is empty.
        """
        if not new:
            raise ValueError("the passphrase must not be empty")
        wrapped = self._wrapped()
        self._store_wrapped(wrapped, rewrap(wrapped, old, new, params=params, rng=rng))

    def check_integrity(self) -> None:
        """Run ``PRAGMA quick_check`` over the whole file.

        Raises:
            ProfileCorrupt: SQLite found damage (its first finding is the reason).
        """
        with self._db.read("integrity check") as tx:
            rows = tx.conn.execute("PRAGMA quick_check").fetchall()
        if [tuple(r) for r in rows] != [("ok",)]:
            raise ProfileCorrupt(self.path, f"integrity check failed: {rows[0][0]}")

    def _wrapped(self) -> bytes:
        with self._db.read("read wrapped key") as tx:
            row = tx.conn.execute(
                "SELECT value FROM profile_meta WHERE name = 'wrapped_key'").fetchone()
        if row is None:
            raise ProfileCorrupt(self.path, "the wrapped data key is missing")
        return bytes(row[0])

    def _store_wrapped(self, old: bytes, new: bytes) -> None:
        # Compare-and-swap: the KDF ran outside the lock.
        with self._db.write("store wrapped key") as tx:
            tx.conn.execute(
                "UPDATE profile_meta SET value = ? WHERE name = 'wrapped_key' AND value = ?",
                (new, old))
            if tx.changes() != 1:
                raise StoreConflict("the passphrase was changed concurrently")
