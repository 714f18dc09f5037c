"""The folder :class:`~relay.ports.BlobStore` for encrypted files, and blob tokens.

Theory of operation (DESIGN.md "Relay pipeline", blob chunk: upload token -> size limits ->
write -> ack; protocol ``RequestBlobUpload(size, chunk_count)``, then
``PUT``/``GET {url_path}/{chunk index}`` with a bearer token):

* A blob is one encrypted file with a random 16-byte id, reserved with its total ``size``
  (at most ``max_blob_size``) and ``chunk_count``, and an expiry. On disk, under
  ``root/<first two hex digits>/<blob id hex>/``:

  - ``meta``      21 bytes: version ``1`` | size u64 | chunk_count u32 | expires_at_ms u64,
    written atomically (temp file, fsync, rename, fsync of the directories);
  - ``<index>``   one stored chunk (decimal index). It appears only complete: a chunk is
    streamed to ``<index>.<random>.tmp``, fsynced, then renamed, so a crash or a client
    that goes away leaves no partial chunk (only a temp file, gone with the blob).

* Streaming: at most ``WRITE_BUFFER`` bytes of an upload and ``read_chunk`` bytes of a
  download are in memory; every file operation runs in a worker thread.
* Resumable and idempotent: the client resumes by sending the chunks that are missing
  (:meth:`FolderBlobStore.chunk_size` tells); re-sending a stored chunk is accepted if the
  bytes are identical and refused (``BlobConflict``) otherwise.
* Limits: a chunk is at most ``max_chunk_size``; all stored and in-flight chunk bytes
  together never exceed the reserved ``size`` (counted per blob in memory, rebuilt from
  the folder after a restart), so a reservation bounds the disk an uploader can use.
* One process owns a folder: ``asyncio`` locks serialise writers of one chunk and the
  reservation, deletion and sweep of one blob.

Tokens: :func:`blob_token` is ``HMAC-SHA-256(key, context | op | blob_id | expires_at_ms)``,
the 32 bytes of the protocol's ``BlobToken.token``. The server puts ``expires_at_ms`` in
the ``url_path`` it hands out (e.g. ``/blobs/<blob id hex>/<expires_at_ms>``) so that the
HTTP handler can verify a request statelessly with :func:`verify_blob_token`.
"""

from __future__ import annotations

import asyncio
import contextlib
import enum
import hashlib
import hmac
import logging
import os
import shutil
import struct
from collections import OrderedDict
from collections.abc import AsyncIterable, AsyncIterator, Callable
from dataclasses import dataclass
from pathlib import Path
from typing import BinaryIO, ParamSpec, TypeVar

from pigeon_crypto.errors import AuthError, StoreError

from .ports import (
    MAILBOX_ID_LEN,
    BlobConflict,
    BlobNotFound,
    BlobStatus,
    BlobStore,
    BlobTooLarge,
    check_id,
)

__all__ = [
    "BLOB_ID_LEN",
    "BLOB_TOKEN_LEN",
    "DEFAULT_MAX_BLOB_SIZE",
    "DEFAULT_MAX_CHUNK_SIZE",
    "MAX_CHUNKS",
    "BlobOp",
    "BlobTokenError",
    "ChunkReader",
    "EmptyChunk",
    "FolderBlobStore",
    "blob_token",
    "check_layout",
    "verify_blob_token",
]

_log = logging.getLogger("pigeon.relay.blobs")

P = ParamSpec("P")
T = TypeVar("T")

BLOB_ID_LEN = MAILBOX_ID_LEN
"""Blob ids are 16 random bytes, like mailbox ids."""
DEFAULT_MAX_BLOB_SIZE = 4 * 1024**3
"""The protocol's largest file (``MAX_FILE_SIZE``); operators may set less."""
DEFAULT_MAX_CHUNK_SIZE = 16 * 1024 * 1024
"""pigeon_crypto's largest chunk size (its default is 64 KiB)."""
MAX_CHUNKS = 65_536
"""The protocol's ``MAX_FILE_CHUNKS``."""
WRITE_BUFFER = 256 * 1024
"""Bytes of an upload collected before one write call (fewer thread hops, bounded memory)."""
READ_CHUNK = 64 * 1024
"""Bytes per piece of a download."""
STATE_CACHE = 4096
"""Blobs whose byte counts are kept in memory; others are recounted from disk on use."""
DEBRIS_GRACE_MS = 10 * 60 * 1000
"""A blob folder without metadata is removed by the sweep only this long after it was
last changed: younger, it may be a reservation being written (by another node)."""
_META = struct.Struct(">BQIQ")


def check_layout(size: int, chunk_count: int, max_size: int) -> None:
    """Raise unless a blob of *size* bytes in *chunk_count* chunks may be reserved: at
    most *max_size* bytes, and every chunk holds a byte at least (one empty chunk: an
    empty file), so a reservation cannot ask for a folder of empty files.

    Raises:
        BlobTooLarge: *size* above *max_size*.
        ValueError: a negative size, or *chunk_count* outside 1..min(MAX_CHUNKS, size).
    """
    if size > max_size:
        raise BlobTooLarge(max_size)
    if size < 0 or not 1 <= chunk_count <= min(MAX_CHUNKS, max(1, size)):
        raise ValueError("size must be >= 0 and chunk_count in 1..min(MAX_CHUNKS, size)")


class EmptyChunk(ValueError):
    """A chunk without a byte, for a blob that is not empty (refused: 400)."""
_META_VERSION = 1


async def _io(fn: Callable[P, T], /, *args: P.args, **kwargs: P.kwargs) -> T:
    """Run a blocking file operation in a thread; OSError becomes StoreError."""
    try:
        return await asyncio.to_thread(fn, *args, **kwargs)
    except OSError as exc:
        raise StoreError(f"blob file operation failed: {type(exc).__name__}") from exc


def _fsync_dir(path: Path) -> None:
    fd = os.open(path, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def _size_or_none(path: Path) -> int | None:
    try:
        return path.stat().st_size
    except FileNotFoundError:
        return None


@dataclass(slots=True)
class _State:
    """A blob's reservation and its byte counts (the disk is the truth; this is a cache)."""

    size: int
    chunk_count: int
    expires_at_ms: int
    stored_bytes: int
    stored_chunks: int
    inflight: int = 0
    users: int = 0


class ChunkReader:
    """Streams one open chunk; the file stays readable even if the blob is deleted."""

    def __init__(self, f: BinaryIO, size: int, piece: int) -> None:
        self._f: BinaryIO | None = f
        self._size = size
        self._piece = piece

    @property
    def size(self) -> int:
        return self._size

    def __aiter__(self) -> AsyncIterator[bytes]:
        return self._pieces()

    async def skip(self, offset: int) -> None:
        """Start the iteration *offset* bytes into the chunk (a ranged download reads
        no byte before its range)."""
        if self._f is not None:
            await _io(self._f.seek, offset)

    async def _pieces(self) -> AsyncIterator[bytes]:
        try:
            while self._f is not None:
                piece = await _io(self._f.read, self._piece)
                if not piece:
                    break
                yield piece
        finally:
            await self.aclose()

    async def aclose(self) -> None:
        f, self._f = self._f, None
        if f is not None:
            await _io(f.close)


class FolderBlobStore:
    """Implements :class:`relay.ports.BlobStore` on a local folder."""

    def __init__(
        self,
        root: Path,
        *,
        max_blob_size: int = DEFAULT_MAX_BLOB_SIZE,
        max_chunk_size: int = DEFAULT_MAX_CHUNK_SIZE,
        read_chunk: int = READ_CHUNK,
    ) -> None:
        """Use :meth:`create`, which makes the folder off the event loop."""
        self._root = root
        self.max_blob_size = max_blob_size
        self.max_chunk_size = max_chunk_size
        self._read_chunk = read_chunk
        self._states: OrderedDict[bytes, _State] = OrderedDict()
        self._locks: dict[object, tuple[asyncio.Lock, int]] = {}

    @classmethod
    async def create(
        cls,
        root: str | Path,
        *,
        max_blob_size: int = DEFAULT_MAX_BLOB_SIZE,
        max_chunk_size: int = DEFAULT_MAX_CHUNK_SIZE,
        read_chunk: int = READ_CHUNK,
    ) -> FolderBlobStore:
        path = Path(root)
        await _io(path.mkdir, parents=True, exist_ok=True)
        return cls(
            path, max_blob_size=max_blob_size, max_chunk_size=max_chunk_size,
            read_chunk=read_chunk,
        )

    # ------------------------------------------------------------------ internals

    def _dir(self, blob_id: bytes) -> Path:
        name = check_id("blob_id", blob_id, BLOB_ID_LEN).hex()
        return self._root / name[:2] / name

    @contextlib.asynccontextmanager
    async def _locked(self, key: object) -> AsyncIterator[None]:
        lock, users = self._locks.get(key, (asyncio.Lock(), 0))
        self._locks[key] = (lock, users + 1)
        try:
            async with lock:
                yield
        finally:
            lock, users = self._locks[key]
            if users == 1:
                del self._locks[key]
            else:
                self._locks[key] = (lock, users - 1)

    @staticmethod
    def _load(d: Path) -> _State | None:
        try:
            raw = (d / "meta").read_bytes()
        except FileNotFoundError:
            return None
        if len(raw) != _META.size or raw[0] != _META_VERSION:
            raise StoreError("unreadable blob metadata")
        _, size, count, expires = _META.unpack(raw)
        stored_bytes = stored_chunks = 0
        with os.scandir(d) as entries:
            for e in entries:
                if e.name.isdigit():
                    stored_bytes += e.stat().st_size
                    stored_chunks += 1
        return _State(size, count, expires, stored_bytes, stored_chunks)

    async def _state(self, blob_id: bytes) -> _State:
        state = self._states.get(blob_id)
        if state is None:
            state = await _io(self._load, self._dir(blob_id))
            if state is None:
                raise BlobNotFound()
            state = self._states.setdefault(blob_id, state)  # another task may have won
        self._states.move_to_end(blob_id)
        if len(self._states) > STATE_CACHE:
            # Oldest first, past the ones in use (a slow upload must not pin the cache
            # open for everything reserved after it).
            excess = len(self._states) - STATE_CACHE
            idle: list[bytes] = []
            for key, st in self._states.items():
                if key != blob_id and not (st.users or st.inflight):  # not the one asked
                    idle.append(key)
                    if len(idle) == excess:
                        break
            for key in idle:
                del self._states[key]
        return state

    @staticmethod
    def _status(blob_id: bytes, s: _State) -> BlobStatus:
        return BlobStatus(
            blob_id=blob_id,
            size=s.size,
            chunk_count=s.chunk_count,
            chunks_received=s.stored_chunks,
            bytes_received=s.stored_bytes,
            expires_at_ms=s.expires_at_ms,
        )

    # ------------------------------------------------------------------ port

    async def reserve(
        self, blob_id: bytes, *, size: int, chunk_count: int, expires_at_ms: int
    ) -> BlobStatus:
        d = self._dir(blob_id)
        check_layout(size, chunk_count, self.max_blob_size)
        async with self._locked(blob_id):
            with contextlib.suppress(BlobNotFound):
                s = await self._state(blob_id)
                if (s.size, s.chunk_count) != (size, chunk_count):
                    raise BlobConflict("reserved with another size or chunk count")
                return self._status(blob_id, s)
            await _io(_write_meta, d, _META.pack(_META_VERSION, size, chunk_count, expires_at_ms))
            self._states[blob_id] = _State(size, chunk_count, expires_at_ms, 0, 0)
            return self._status(blob_id, self._states[blob_id])

    async def write_chunk(
        self, blob_id: bytes, index: int, data: AsyncIterable[bytes]
    ) -> BlobStatus:
        s = await self._state(blob_id)
        if not 0 <= index < s.chunk_count:
            raise ValueError("chunk index out of range")
        final = self._dir(blob_id) / str(index)
        s.users += 1
        try:
            async with self._locked((blob_id, index)):
                stored = await _io(_size_or_none, final)
                if stored is not None:
                    await self._compare(final, stored, data)
                else:
                    await self._receive(s, final, data)
            return self._status(blob_id, s)
        finally:
            s.users -= 1

    async def _receive(self, s: _State, final: Path, data: AsyncIterable[bytes]) -> None:
        tmp = final.with_name(f"{final.name}.{os.urandom(8).hex()}.tmp")
        f = await _io(open, tmp, "xb")
        n = 0
        buf = bytearray()
        try:
            try:
                async for piece in data:
                    if n + len(piece) > self.max_chunk_size:
                        raise BlobTooLarge(self.max_chunk_size)
                    if s.stored_bytes + s.inflight + len(piece) > s.size:
                        raise BlobTooLarge(s.size)
                    s.inflight += len(piece)
                    n += len(piece)
                    buf += piece
                    if len(buf) >= WRITE_BUFFER:
                        await _io(f.write, bytes(buf))
                        buf.clear()
                if buf:
                    await _io(f.write, bytes(buf))
                if n == 0 and s.size > 0:
                    raise EmptyChunk("an empty chunk: only an empty file has one")
                await _io(_flush_fsync, f)
            finally:
                await _io(f.close)
            await _io(_publish, tmp, final)
            s.stored_bytes += n
            s.stored_chunks += 1
        except BaseException:
            # Nothing partial stays behind: the client re-sends the whole chunk.
            with contextlib.suppress(OSError):
                await asyncio.to_thread(tmp.unlink, missing_ok=True)
            raise
        finally:
            s.inflight -= n

    async def _compare(self, path: Path, stored: int, data: AsyncIterable[bytes]) -> None:
        f = await _io(open, path, "rb")
        try:
            pos = 0
            async for piece in data:
                if pos + len(piece) > stored:
                    raise BlobConflict("re-sent chunk differs from the stored one")
                if not hmac.compare_digest(await _io(f.read, len(piece)), piece):
                    raise BlobConflict("re-sent chunk differs from the stored one")
                pos += len(piece)
            if pos != stored:
                raise BlobConflict("re-sent chunk differs from the stored one")
        finally:
            await _io(f.close)

    async def status(self, blob_id: bytes) -> BlobStatus | None:
        try:
            return self._status(blob_id, await self._state(blob_id))
        except BlobNotFound:
            return None

    async def chunk_size(self, blob_id: bytes, index: int) -> int | None:
        return await _io(_size_or_none, self._dir(blob_id) / str(int(index)))

    async def open_chunk(self, blob_id: bytes, index: int) -> ChunkReader:
        path = self._dir(blob_id) / str(int(index))

        def open_sync() -> tuple[BinaryIO, int] | None:
            try:
                f = open(path, "rb")  # noqa: SIM115 - handed to the reader
            except FileNotFoundError:
                return None
            return f, os.fstat(f.fileno()).st_size

        opened = await _io(open_sync)
        if opened is None:
            raise BlobNotFound("chunk")
        return ChunkReader(opened[0], opened[1], self._read_chunk)

    async def delete(self, blob_id: bytes) -> bool:
        d = self._dir(blob_id)
        async with self._locked(blob_id):
            self._states.pop(blob_id, None)
            return await _io(_remove_tree, d)

    async def sweep(self, *, now_ms: int) -> int:
        """Delete expired blobs, and folders left without metadata. Returns blobs deleted."""

        def candidates() -> list[bytes]:
            found: list[bytes] = []
            for shard in self._root.iterdir():
                if shard.is_dir() and len(shard.name) == 2:
                    for d in shard.iterdir():
                        with contextlib.suppress(ValueError):
                            if len(d.name) == 2 * BLOB_ID_LEN:
                                found.append(bytes.fromhex(d.name))
            return sorted(found)

        def expired(d: Path) -> bool:
            try:
                raw = (d / "meta").read_bytes()
            except FileNotFoundError:
                # Debris of an interrupted reservation, once old enough not to be one
                # that another process (a node sharing the folder) is writing now.
                try:
                    return d.stat().st_mtime * 1000 < now_ms - DEBRIS_GRACE_MS
                except FileNotFoundError:
                    return False
            return len(raw) != _META.size or _META.unpack(raw)[3] <= now_ms

        removed = 0
        for blob_id in await _io(candidates):
            d = self._dir(blob_id)
            async with self._locked(blob_id):
                try:
                    if await _io(expired, d):
                        self._states.pop(blob_id, None)
                        removed += await _io(_remove_tree, d)
                except StoreError as exc:  # one blob (raced by another node) is no reason
                    _log.warning("blob sweep skipped one blob: %s",  # to stop the pass
                                 type(exc.__cause__ or exc).__name__)
        return removed


def _write_meta(d: Path, raw: bytes) -> None:
    d.mkdir(parents=True, exist_ok=True)
    tmp = d / "meta.tmp"
    with open(tmp, "wb") as f:
        f.write(raw)
        f.flush()
        os.fsync(f.fileno())
    os.replace(tmp, d / "meta")
    _fsync_dir(d)
    _fsync_dir(d.parent)


def _flush_fsync(f: BinaryIO) -> None:
    f.flush()
    os.fsync(f.fileno())


def _publish(tmp: Path, final: Path) -> None:
    os.replace(tmp, final)
    _fsync_dir(final.parent)


def _remove_tree(d: Path) -> bool:
    if not d.exists():
        return False
    shutil.rmtree(d)
    return True


def _conforms(store: FolderBlobStore) -> BlobStore:  # pragma: no cover - checked by mypy
    return store


# --------------------------------------------------------------------------- tokens


class BlobOp(enum.IntEnum):
    UPLOAD = 1
    DOWNLOAD = 2


class BlobTokenError(AuthError):
    """A blob token is forged, expired, or for another blob or operation.

    Attributes:
        reason: short, safe to log (never the token or the key).
    """

    def __init__(self, reason: str) -> None:
        super().__init__(f"blob token rejected: {reason}")
        self.reason = reason


BLOB_TOKEN_LEN = 32
"""The protocol's ``BLOB_TOKEN_SIZE``: one HMAC-SHA-256 output."""
TOKEN_KEY_MIN = 32
"""Keys shorter than the HMAC output are refused."""
_TOKEN_CONTEXT = b"pigeon-blob-token-v1\x00"
_TOKEN_BODY = struct.Struct(">B16sQ")


def blob_token(key: bytes, *, op: BlobOp, blob_id: bytes, expires_at_ms: int) -> bytes:
    """``HMAC-SHA-256(key, "pigeon-blob-token-v1\\0" | u8 op | blob_id | u64 expires_at_ms)``."""
    if len(key) < TOKEN_KEY_MIN:
        raise ValueError(f"token key must be at least {TOKEN_KEY_MIN} bytes")
    check_id("blob_id", blob_id, BLOB_ID_LEN)
    body = _TOKEN_BODY.pack(int(op), blob_id, expires_at_ms)
    return hmac.new(key, _TOKEN_CONTEXT + body, hashlib.sha256).digest()


def verify_blob_token(
    key: bytes, token: bytes, *, op: BlobOp, blob_id: bytes, expires_at_ms: int, now_ms: int
) -> None:
    """Accept *token* for *op* on *blob_id* with the *expires_at_ms* named in the URL.

    Raises:
        BlobTokenError: ``"bad token"`` (forged, or for another blob, operation or
            expiry: a MAC cannot tell which) or ``"expired"``.
    """
    expected = blob_token(key, op=op, blob_id=blob_id, expires_at_ms=expires_at_ms)
    if not hmac.compare_digest(expected, bytes(token)):
        raise BlobTokenError("bad token")
    if expires_at_ms <= now_ms:
        raise BlobTokenError("expired")
