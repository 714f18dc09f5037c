"""Transfer state of file uploads and downloads, kept in the profile (docs/sdk.md §15.13).

A transfer survives the process: which chunks are done (a bitmap, in clear: it reveals
only a chunk count, which the relay sees anyway) and a sealed record with everything
needed to continue it (the manifest with the file key, the blob token, the paths).
Progress updates touch only the clear columns, so recording a chunk costs one small
write, not a re-seal.

Table ``file_transfers`` (schema version 2):

=============== ============================================================
``id``          the file id (16 bytes): the transfer id on both sides
``direction``   1 upload, 2 download
``state``       :class:`TransferState`
``chunk_count`` chunks of the file
``chunks_done`` bitmap, bit ``i`` (byte ``i // 8``, LSB first) = chunk ``i`` done
``bytes_done``  file bytes of the done chunks
``record``      sealed :class:`TransferRecord` fields (AD: table, column, id)
``error``       why a FAILED transfer failed (no secrets)
=============== ============================================================
"""

from __future__ import annotations

import enum
import threading
import weakref
from dataclasses import dataclass, field, replace
from typing import Any, Protocol

import msgpack

from pigeon_crypto.errors import DecodeError

from ._sqlite_db import Db, Tx

__all__ = [
    "SCHEMA_V2",
    "MemoryTransferStore",
    "SqliteTransferStore",
    "TransferDirection",
    "TransferRecord",
    "TransferState",
    "TransferStore",
    "transfer_store",
]

SCHEMA_V2 = [
    """
    CREATE TABLE file_transfers (
        id            BLOB PRIMARY KEY CHECK (length(id) = 16),
        direction     INTEGER NOT NULL CHECK (direction IN (1, 2)),
        state         INTEGER NOT NULL CHECK (state BETWEEN 1 AND 4),
        chunk_count   INTEGER NOT NULL CHECK (chunk_count >= 1),
        chunks_done   BLOB NOT NULL,
        bytes_done    INTEGER NOT NULL,
        record        BLOB NOT NULL,            -- sealed TransferRecord
        error         TEXT,
        created_at_ms INTEGER NOT NULL,
        updated_at_ms INTEGER NOT NULL
    ) WITHOUT ROWID
    """,
]

_RECORD_VERSION = 1


class TransferDirection(enum.IntEnum):
    UPLOAD = 1
    DOWNLOAD = 2


class TransferState(enum.IntEnum):
    RUNNING = 1
    """Should progress whenever the client is connected (continued after a restart)."""
    PAUSED = 2
    """Stopped by ``pause_transfer``; continues only on ``resume_transfer``."""
    DONE = 3
    FAILED = 4


@dataclass(frozen=True, slots=True, kw_only=True)
class TransferRecord:
    """One stored transfer.

    Attributes:
        transfer_id: the file id (manifest ``file_id``).
        peer: the contact the file goes to (upload) or came from (download).
        manifest: the encoded manifest (holds the file key; sealed at rest).
        message_id: the file message: drawn when an upload begins (so that a crash
            after it was stored does not send it twice); the received one for downloads.
        path: the source file (upload) or the destination (download).
        caption: the caption of an upload's file message.
        token, url_path, token_expires_at_ms: the relay's blob grant.
        source_size, source_mtime_ns: the upload source as it was when the upload began.
        chunks_done: the bitmap of done chunks.
    """

    transfer_id: bytes
    direction: TransferDirection
    state: TransferState
    peer: bytes
    manifest: bytes = field(repr=False)
    message_id: bytes
    path: str = field(repr=False)
    chunk_count: int
    chunks_done: bytes = field(repr=False)
    bytes_done: int = 0
    caption: str | None = field(default=None, repr=False)
    token: bytes = field(default=b"", repr=False)
    url_path: str = field(default="", repr=False)
    token_expires_at_ms: int = 0
    source_size: int = 0
    source_mtime_ns: int = 0
    error: str | None = None
    created_at_ms: int = 0
    updated_at_ms: int = 0

    def __post_init__(self) -> None:
        if len(self.transfer_id) != 16:
            raise ValueError("transfer id must be 16 bytes")
        if len(self.chunks_done) != (self.chunk_count + 7) // 8:
            raise ValueError("bitmap size does not match the chunk count")

    def done(self, index: int) -> bool:
        return bool(self.chunks_done[index >> 3] >> (index & 7) & 1)

    def missing(self) -> list[int]:
        """Indexes of the chunks not done yet, in order."""
        bits = self.chunks_done
        return [i for i in range(self.chunk_count) if not bits[i >> 3] >> (i & 7) & 1]

    def sealed_fields(self) -> bytes:
        body: dict[int, Any] = {
            1: self.peer, 2: self.manifest, 3: self.message_id, 4: self.path,
            6: self.token, 7: self.url_path, 8: self.token_expires_at_ms,
            9: self.source_size, 10: self.source_mtime_ns,
        }
        if self.caption is not None:
            body[5] = self.caption
        return bytes(msgpack.packb([_RECORD_VERSION, body], use_bin_type=True))

    @staticmethod
    def parse_sealed_fields(data: bytes) -> dict[str, Any]:
        """The keyword arguments stored by :meth:`sealed_fields`.

        Raises:
            DecodeError: malformed or of an unknown version.
        """
        try:
            version, body = msgpack.unpackb(data, raw=False, strict_map_key=False,
                                            use_list=False)
            if version != _RECORD_VERSION or not isinstance(body, dict):
                raise DecodeError("TransferRecord", f"unknown version {version!r}")
            return {
                "peer": bytes(body[1]), "manifest": bytes(body[2]),
                "message_id": bytes(body[3]), "path": str(body[4]),
                "caption": body.get(5), "token": bytes(body[6]), "url_path": str(body[7]),
                "token_expires_at_ms": int(body[8]), "source_size": int(body[9]),
                "source_mtime_ns": int(body[10]),
            }
        except (ValueError, TypeError, KeyError, msgpack.UnpackException) as exc:
            raise DecodeError("TransferRecord", "malformed") from exc


def empty_bitmap(chunk_count: int) -> bytes:
    return bytes((chunk_count + 7) // 8)


def set_bits(bitmap: bytes, indexes: list[int] | tuple[int, ...]) -> bytes:
    out = bytearray(bitmap)
    for i in indexes:
        out[i >> 3] |= 1 << (i & 7)
    return bytes(out)


class TransferStore(Protocol):
    """Synchronous, one transaction per call (like every store port)."""

    def put_transfer(self, record: TransferRecord) -> None:
        """Insert or replace the whole record."""
        ...

    def get_transfer(self, transfer_id: bytes) -> TransferRecord | None: ...

    def list_transfers(self) -> list[TransferRecord]:
        """Newest first."""
        ...

    def update_progress(self, transfer_id: bytes, chunks_done: bytes, bytes_done: int, *,
                        now_ms: int) -> None: ...

    def set_transfer_state(self, transfer_id: bytes, state: TransferState, *,
                           error: str | None = None, now_ms: int) -> None: ...

    def delete_transfer(self, transfer_id: bytes) -> bool: ...


_TABLE = "file_transfers"


class SqliteTransferStore:
    """:class:`TransferStore` on the profile's database (its own transactions)."""

    def __init__(self, db: Db) -> None:
        self._db = db

    def __repr__(self) -> str:
        return f"SqliteTransferStore({self._db.path})"

    def put_transfer(self, record: TransferRecord) -> None:
        with self._db.write("put_transfer") as tx:
            sealed = tx.seal(_TABLE, "record", record.transfer_id, record.sealed_fields())
            tx.conn.execute(
                "INSERT OR REPLACE INTO file_transfers (id, direction, state, chunk_count, "
                "chunks_done, bytes_done, record, error, created_at_ms, updated_at_ms) "
                "VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?)",
                (record.transfer_id, int(record.direction), int(record.state),
                 record.chunk_count, record.chunks_done, record.bytes_done, sealed,
                 record.error, record.created_at_ms, record.updated_at_ms))

    def _row(self, tx: Tx, row: tuple[Any, ...]) -> TransferRecord:
        tid = bytes(row[0])
        fields = tx.decode("transfer record", TransferRecord.parse_sealed_fields,
                           tx.unseal(_TABLE, "record", tid, bytes(row[6])))
        try:
            return TransferRecord(
                transfer_id=tid, direction=TransferDirection(row[1]),
                state=TransferState(row[2]), chunk_count=int(row[3]),
                chunks_done=bytes(row[4]), bytes_done=int(row[5]), error=row[7],
                created_at_ms=int(row[8]), updated_at_ms=int(row[9]), **fields)
        except ValueError as exc:
            raise tx.corrupt("stored transfer is inconsistent") from exc

    _COLUMNS = ("SELECT id, direction, state, chunk_count, chunks_done, bytes_done, record, "
                "error, created_at_ms, updated_at_ms FROM file_transfers")

    def get_transfer(self, transfer_id: bytes) -> TransferRecord | None:
        with self._db.read("get_transfer") as tx:
            row = tx.conn.execute(self._COLUMNS + " WHERE id = ?", (transfer_id,)).fetchone()
            return None if row is None else self._row(tx, row)

    def list_transfers(self) -> list[TransferRecord]:
        with self._db.read("list_transfers") as tx:
            rows = tx.conn.execute(self._COLUMNS + " ORDER BY created_at_ms DESC, id").fetchall()
            return [self._row(tx, r) for r in rows]

    def update_progress(self, transfer_id: bytes, chunks_done: bytes, bytes_done: int, *,
                        now_ms: int) -> None:
        with self._db.write("update_progress") as tx:
            tx.conn.execute("UPDATE file_transfers SET chunks_done = ?, bytes_done = ?, "
                            "updated_at_ms = ? WHERE id = ?",
                            (chunks_done, bytes_done, now_ms, transfer_id))

    def set_transfer_state(self, transfer_id: bytes, state: TransferState, *,
                           error: str | None = None, now_ms: int) -> None:
        with self._db.write("set_transfer_state") as tx:
            tx.conn.execute("UPDATE file_transfers SET state = ?, error = ?, updated_at_ms = ? "
                            "WHERE id = ?", (int(state), error, now_ms, transfer_id))

    def delete_transfer(self, transfer_id: bytes) -> bool:
        with self._db.write("delete_transfer") as tx:
            tx.conn.execute("DELETE FROM file_transfers WHERE id = ?", (transfer_id,))
            return tx.changes() > 0


class MemoryTransferStore:
    """:class:`TransferStore` in memory (tests)."""

    def __init__(self) -> None:
        self._rows: dict[bytes, TransferRecord] = {}
        self._lock = threading.Lock()

    def __repr__(self) -> str:
        return f"MemoryTransferStore({len(self._rows)} transfers)"

    def put_transfer(self, record: TransferRecord) -> None:
        with self._lock:
            self._rows[record.transfer_id] = record

    def get_transfer(self, transfer_id: bytes) -> TransferRecord | None:
        return self._rows.get(transfer_id)

    def list_transfers(self) -> list[TransferRecord]:
        return sorted(self._rows.values(), key=lambda r: (-r.created_at_ms, r.transfer_id))

    def update_progress(self, transfer_id: bytes, chunks_done: bytes, bytes_done: int, *,
                        now_ms: int) -> None:
        with self._lock:
            old = self._rows.get(transfer_id)
            if old is not None:
                self._rows[transfer_id] = replace(old, chunks_done=chunks_done,
                                                  bytes_done=bytes_done, updated_at_ms=now_ms)

    def set_transfer_state(self, transfer_id: bytes, state: TransferState, *,
                           error: str | None = None, now_ms: int) -> None:
        with self._lock:
            old = self._rows.get(transfer_id)
            if old is not None:
                self._rows[transfer_id] = replace(old, state=state, error=error,
                                                  updated_at_ms=now_ms)

    def delete_transfer(self, transfer_id: bytes) -> bool:
        with self._lock:
            return self._rows.pop(transfer_id, None) is not None


_MEMORY: weakref.WeakKeyDictionary[object, MemoryTransferStore] = weakref.WeakKeyDictionary()


def transfer_store(store: object) -> TransferStore:
    """The transfer store that lives with *store* (a profile's ``SqliteStore``, or a
    ``MemoryStore`` in tests)."""
    from .sqlite import SqliteStore

    if isinstance(store, SqliteStore):
        return SqliteTransferStore(store._db)  # same file, same transactions discipline
    found = _MEMORY.get(store)
    if found is None:
        found = _MEMORY[store] = MemoryTransferStore()
    return found
