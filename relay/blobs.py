"""The folder :class:`~relay.ports.BlobStore` (file chunks) and HMAC blob tokens.

Theory of operation (DESIGN.md "Relay pipeline", blob chunk: upload token -> size limits ->
write -> ack):

* A blob is one encrypted file chunk with a random 16-byte id. Its upload declares the
  total ``size`` (capped by the store's ``max_blob_size`` and by the token's ``max_size``)
  and an expiry. Files live under ``root/<first two hex digits>/``:

  - ``<id>.meta``  17 bytes: version ``1`` | size u64 | expires_at_ms u64 (written first,
    atomically: temp file, fsync, rename, fsync of the directory);
  - ``<id>.part``  the bytes received so far (uploads resume from its length);
  - ``<id>``       the complete blob: ``.part`` is fsynced and renamed once ``size`` bytes
    arrived, so a reader never sees a torn blob.

* Data is streamed: at most ``WRITE_BUFFER`` bytes of an upload and ``READ_CHUNK`` bytes
  of a download are in memory, and every file operation runs in a worker thread.
* Resumable and idempotent: a write starts at any ``offset`` up to the bytes received
  (re-sending a range rewrites it); re-sending any range of a complete blob is accepted
  if the bytes are identical and refused (``BlobConflict``) otherwise.
* One process owns a folder: per-blob ``asyncio.Lock`` s serialise writers of one blob.
* Expiry: :meth:`FolderBlobStore.sweep` deletes complete and partial blobs whose expiry
  passed, and debris of interrupted writes.

Tokens (:func:`issue_blob_token`, :func:`verify_blob_token`) are HMAC-SHA-256 over the
operation, blob id, size cap and expiry; the server issues them, this store never sees
them.
"""

from __future__ import annotations

import asyncio
import base64
import binascii
import contextlib
import enum
import hashlib
import hmac
import os
import struct
from collections.abc import AsyncIterable, AsyncIterator, Callable
from dataclasses import dataclass
from pathlib import Path
from typing import BinaryIO, ParamSpec, TypeVar

from pigeon_crypto.errors import AuthError, StoreError

from .ports import (
    MAILBOX_ID_LEN,
    BlobConflict,
    BlobNotFound,
    BlobRangeError,
    BlobStatus,
    BlobStore,
    BlobTooLarge,
    check_id,
)

__all__ = [
    "BLOB_ID_LEN",
    "DEFAULT_MAX_BLOB_SIZE",
    "BlobOp",
    "BlobTokenClaims",
    "BlobTokenError",
    "FolderBlobReader",
    "FolderBlobStore",
    "issue_blob_token",
    "verify_blob_token",
]

BLOB_ID_LEN = MAILBOX_ID_LEN
"""Blob ids are 16 random bytes, like mailbox ids."""
DEFAULT_MAX_BLOB_SIZE = 16 * 1024 * 1024
"""A chunk bigger than this is refused; clients split files into smaller chunks."""
WRITE_BUFFER = 256 * 1024
"""Bytes of an upload collected before one write call (fewer thread hops, bounded memory)."""
READ_CHUNK = 64 * 1024
"""Bytes per piece of a download."""
_META = struct.Struct(">BQQ")
P = ParamSpec("P")
T = TypeVar("T")
_META_VERSION = 1


def _hex(blob_id: bytes) -> str:
    return check_id("blob_id", blob_id, BLOB_ID_LEN).hex()


def _fsync_dir(path: Path) -> None:
    fd = os.open(path, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


@dataclass(frozen=True, slots=True)
class _Paths:
    dir: Path
    meta: Path
    part: Path
    final: Path


class FolderBlobReader:
    """Streams an open blob; the file stays readable even if the blob is deleted meanwhile."""

    def __init__(self, f: BinaryIO, status: BlobStatus, chunk: int) -> None:
        self._f: BinaryIO | None = f
        self._status = status
        self._chunk = chunk

    @property
    def status(self) -> BlobStatus:
        return self._status

    def __aiter__(self) -> AsyncIterator[bytes]:
        return self._pieces()

    async def _pieces(self) -> AsyncIterator[bytes]:
        try:
            while self._f is not None:
                piece = await asyncio.to_thread(self._f.read, self._chunk)
                if not piece:
                    break
                yield piece
        except OSError as exc:
            raise StoreError(f"blob read failed: {type(exc).__name__}") from exc
        finally:
            await self.aclose()

    async def aclose(self) -> None:
        f, self._f = self._f, None
        if f is not None:
            await asyncio.to_thread(f.close)


class FolderBlobStore:
    """Implements :class:`relay.ports.BlobStore` on a local folder."""

    def __init__(
        self,
        root: Path,
        *,
        max_blob_size: int = DEFAULT_MAX_BLOB_SIZE,
        read_chunk: int = READ_CHUNK,
    ) -> None:
        """Use :meth:`create`, which creates the folder off the event loop."""
        self._root = root
        self.max_blob_size = max_blob_size
        self._read_chunk = read_chunk
        self._locks: dict[bytes, tuple[asyncio.Lock, int]] = {}

    @classmethod
    async def create(
        cls, root: str | Path, *, max_blob_size: int = DEFAULT_MAX_BLOB_SIZE,
        read_chunk: int = READ_CHUNK,
    ) -> FolderBlobStore:
        path = Path(root)
        try:
            await asyncio.to_thread(path.mkdir, parents=True, exist_ok=True)
        except OSError as exc:
            raise StoreError(f"cannot create blob folder: {type(exc).__name__}") from exc
        return cls(path, max_blob_size=max_blob_size, read_chunk=read_chunk)

    # ------------------------------------------------------------------ helpers

    def _paths(self, blob_id: bytes) -> _Paths:
        name = _hex(blob_id)
        d = self._root / name[:2]
        return _Paths(d, d / f"{name}.meta", d / f"{name}.part", d / name)

    @contextlib.asynccontextmanager
    async def _locked(self, blob_id: bytes) -> AsyncIterator[None]:
        lock, users = self._locks.get(blob_id, (asyncio.Lock(), 0))
        self._locks[blob_id] = (lock, users + 1)
        try:
            async with lock:
                yield
        finally:
            lock, users = self._locks[blob_id]
            if users == 1:
                del self._locks[blob_id]
            else:
                self._locks[blob_id] = (lock, users - 1)

    @staticmethod
    def _read_meta(p: _Paths) -> tuple[int, int] | None:
        try:
            raw = p.meta.read_bytes()
        except FileNotFoundError:
            return None
        if len(raw) != _META.size or raw[0] != _META_VERSION:
            raise StoreError("unreadable blob metadata")
        _, size, expires = _META.unpack(raw)
        return size, expires

    @staticmethod
    def _write_meta(p: _Paths, size: int, expires_at_ms: int) -> None:
        p.dir.mkdir(exist_ok=True)
        tmp = p.meta.with_name(p.meta.name + ".tmp")
        with open(tmp, "wb") as f:
            f.write(_META.pack(_META_VERSION, size, expires_at_ms))
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, p.meta)
        _fsync_dir(p.dir)

    def _status_sync(self, blob_id: bytes, p: _Paths) -> BlobStatus | None:
        meta = self._read_meta(p)
        if meta is None:
            return None
        size, expires = meta
        if p.final.exists():
            received = size
        else:
            try:
                received = p.part.stat().st_size
            except FileNotFoundError:
                received = 0
        return BlobStatus(blob_id=blob_id, size=size, received=received, expires_at_ms=expires)

    # ------------------------------------------------------------------ port

    async def status(self, blob_id: bytes) -> BlobStatus | None:
        p = self._paths(blob_id)
        try:
            return await asyncio.to_thread(self._status_sync, blob_id, p)
        except OSError as exc:
            raise StoreError(f"blob status failed: {type(exc).__name__}") from exc

    async def write(
        self,
        blob_id: bytes,
        data: AsyncIterable[bytes],
        *,
        offset: int,
        size: int,
        expires_at_ms: int,
    ) -> BlobStatus:
        """Stream *data* into the blob at *offset*; see :class:`relay.ports.BlobStore`.

        Raises:
            BlobTooLarge: *size* exceeds ``max_blob_size``, or *data* runs past *size* (the
                bytes of this call are discarded).
            BlobRangeError: *offset* is beyond the bytes received (resume from ``received``).
            BlobConflict: *size* differs from the first upload's, or re-sent bytes of a
                complete blob differ.
            StoreError: the file system failed.

        If *data* raises (the client went away), the bytes received so far are kept and
        the exception propagates; the upload can resume.
        """
        p = self._paths(blob_id)
        if size > self.max_blob_size:
            raise BlobTooLarge(self.max_blob_size)
        if size < 0 or offset < 0:
            raise ValueError("size and offset must not be negative")
        async with self._locked(blob_id):
            # Only file-system errors become StoreError: an exception raised by *data*
            # (the client went away) propagates as it is.
            status = await _io(self._status_sync, blob_id, p)
            if status is None:
                if offset != 0:
                    raise BlobRangeError(0)
                await _io(self._write_meta, p, size, expires_at_ms)
                status = BlobStatus(
                    blob_id=blob_id, size=size, received=0, expires_at_ms=expires_at_ms
                )
            elif status.size != size:
                raise BlobConflict("declared size differs from the first upload")
            if offset > status.received:
                raise BlobRangeError(status.received)
            if status.complete:
                await self._compare(p.final, data, offset, size)
                return status
            received = await self._append(p, data, offset, size)
            return BlobStatus(
                blob_id=blob_id, size=size, received=received, expires_at_ms=status.expires_at_ms
            )

    async def _append(self, p: _Paths, data: AsyncIterable[bytes], offset: int, size: int) -> int:
        f = await _io(_open_part, p.part)
        pos = offset
        buf = bytearray()
        try:
            await _io(f.truncate, offset)
            await _io(f.seek, offset)
            try:
                async for piece in data:
                    if pos + len(buf) + len(piece) > size:
                        await _io(f.truncate, offset)
                        buf.clear()
                        pos = offset
                        raise BlobTooLarge(size)
                    buf += piece
                    if len(buf) >= WRITE_BUFFER:
                        await _io(f.write, bytes(buf))
                        pos += len(buf)
                        buf.clear()
            finally:
                # On success, and when the client went away: keep what arrived.
                if buf:
                    await _io(f.write, bytes(buf))
                    pos += len(buf)
                await _io(_flush_fsync, f)
        finally:
            await _io(f.close)
        if pos == size:
            await _io(_publish, p)
        return pos

    async def _compare(
        self, path: Path, data: AsyncIterable[bytes], offset: int, size: int
    ) -> None:
        f = await _io(open, path, "rb")
        try:
            await _io(f.seek, offset)
            pos = offset
            async for piece in data:
                if pos + len(piece) > size:
                    raise BlobTooLarge(size)
                stored = await _io(f.read, len(piece))
                if not hmac.compare_digest(stored, piece):
                    raise BlobConflict("re-sent bytes differ from the stored blob")
                pos += len(piece)
        finally:
            await _io(f.close)

    async def open(self, blob_id: bytes, *, offset: int = 0) -> FolderBlobReader:
        """Open a complete blob for streaming from *offset*. Raises BlobNotFound."""
        p = self._paths(blob_id)

        def open_sync() -> tuple[BinaryIO, BlobStatus]:
            status = self._status_sync(blob_id, p)
            if status is None or not status.complete:
                raise BlobNotFound()
            try:
                f = open(p.final, "rb")  # noqa: SIM115 - handed to the reader
            except FileNotFoundError:
                raise BlobNotFound() from None
            if offset:
                f.seek(offset)
            return f, status

        if offset < 0:
            raise ValueError("offset must not be negative")
        try:
            f, status = await asyncio.to_thread(open_sync)
        except OSError as exc:
            raise StoreError(f"blob open failed: {type(exc).__name__}") from exc
        if offset > status.size:
            await asyncio.to_thread(f.close)
            raise BlobRangeError(status.size)
        return FolderBlobReader(f, status, self._read_chunk)

    async def delete(self, blob_id: bytes) -> bool:
        p = self._paths(blob_id)
        async with self._locked(blob_id):
            try:
                return await asyncio.to_thread(_remove, p)
            except OSError as exc:
                raise StoreError(f"blob delete failed: {type(exc).__name__}") from exc

    async def sweep(self, *, now_ms: int) -> int:
        """Delete expired blobs, and debris without metadata. Returns blobs deleted."""

        def candidates() -> set[bytes]:
            found: set[bytes] = set()
            for d in self._root.iterdir():
                if not d.is_dir() or len(d.name) != 2:
                    continue
                for f in d.iterdir():
                    name = f.name.split(".", 1)[0]
                    with contextlib.suppress(ValueError):
                        if len(name) == 2 * BLOB_ID_LEN:
                            found.add(bytes.fromhex(name))
            return found

        def sweep_one(p: _Paths) -> bool:
            try:
                meta = self._read_meta(p)
            except StoreError:
                meta = None  # unreadable: treat as debris
            if meta is not None and meta[1] > now_ms:
                return False
            return _remove(p) and meta is not None

        removed = 0
        try:
            for blob_id in sorted(await asyncio.to_thread(candidates)):
                async with self._locked(blob_id):
                    removed += await asyncio.to_thread(sweep_one, self._paths(blob_id))
        except OSError as exc:
            raise StoreError(f"blob sweep failed: {type(exc).__name__}") from exc
        return removed


async def _io(fn: Callable[P, T], /, *args: P.args, **kwargs: P.kwargs) -> T:
    """Run a blocking file operation in a thread; OSError becomes StoreError."""
    try:
        return await asyncio.to_thread(fn, *args, **kwargs)
    except OSError as exc:
        raise StoreError(f"blob file operation failed: {type(exc).__name__}") from exc


def _open_part(path: Path) -> BinaryIO:
    # "r+b" keeps what an interrupted upload left; "w+b" creates the file.
    return open(path, "r+b" if path.exists() else "w+b")


def _flush_fsync(f: BinaryIO) -> None:
    f.flush()
    os.fsync(f.fileno())


def _publish(p: _Paths) -> None:
    os.replace(p.part, p.final)
    _fsync_dir(p.dir)


def _remove(p: _Paths) -> bool:
    """Remove data first and metadata last, so a crash leaves debris that sweep finds."""
    existed = False
    for path in (p.final, p.part, p.meta.with_name(p.meta.name + ".tmp"), p.meta):
        try:
            path.unlink()
            existed = True
        except FileNotFoundError:
            pass
    return existed


# --------------------------------------------------------------------------- tokens


class BlobOp(enum.IntEnum):
    UPLOAD = 1
    DOWNLOAD = 2


@dataclass(frozen=True, slots=True, kw_only=True)
class BlobTokenClaims:
    op: BlobOp
    blob_id: bytes
    max_size: int
    expires_at_ms: int


class BlobTokenError(AuthError):
    """A blob token is malformed, forged, expired or for another blob or operation.

    Attributes:
        reason: short, safe to log (never the token or key).
    """

    def __init__(self, reason: str) -> None:
        super().__init__(f"blob token rejected: {reason}")
        self.reason = reason


TOKEN_KEY_MIN = 32
"""HMAC-SHA-256 keys shorter than its output are refused."""
_TOKEN_BODY = struct.Struct(">BB16sQQ")
_TOKEN_VERSION = 1
_TOKEN_CONTEXT = b"pigeon-blob-token-v1\x00"
_TOKEN_LEN = _TOKEN_BODY.size + hashlib.sha256().digest_size


def _token_tag(key: bytes, body: bytes) -> bytes:
    if len(key) < TOKEN_KEY_MIN:
        raise ValueError(f"token key must be at least {TOKEN_KEY_MIN} bytes")
    return hmac.new(key, _TOKEN_CONTEXT + body, hashlib.sha256).digest()


def issue_blob_token(
    key: bytes, *, op: BlobOp, blob_id: bytes, max_size: int, expires_at_ms: int
) -> str:
    """A URL-safe token: base64url(version | op | blob_id | max_size u64 | expires u64 | tag).

    The tag is ``HMAC-SHA-256(key, "pigeon-blob-token-v1\\0" || body)``.
    """
    check_id("blob_id", blob_id, BLOB_ID_LEN)
    body = _TOKEN_BODY.pack(_TOKEN_VERSION, int(op), blob_id, max_size, expires_at_ms)
    return base64.urlsafe_b64encode(body + _token_tag(key, body)).rstrip(b"=").decode("ascii")


def verify_blob_token(
    key: bytes, token: str, *, op: BlobOp, blob_id: bytes, now_ms: int
) -> BlobTokenClaims:
    """Check *token* for *op* on *blob_id* at *now_ms*; return its claims.

    Raises:
        BlobTokenError: malformed, bad tag, wrong operation or blob, or expired.
    """
    try:
        raw = base64.urlsafe_b64decode(token + "=" * (-len(token) % 4))
    except (binascii.Error, ValueError):
        raise BlobTokenError("malformed") from None
    if len(raw) != _TOKEN_LEN:
        raise BlobTokenError("malformed")
    body, tag = raw[: _TOKEN_BODY.size], raw[_TOKEN_BODY.size :]
    if not hmac.compare_digest(_token_tag(key, body), tag):
        raise BlobTokenError("bad tag")
    version, raw_op, token_blob, max_size, expires = _TOKEN_BODY.unpack(body)
    if version != _TOKEN_VERSION:
        raise BlobTokenError("unknown version")
    if raw_op != int(op):
        raise BlobTokenError("wrong operation")
    if not hmac.compare_digest(token_blob, blob_id):
        raise BlobTokenError("wrong blob")
    if expires <= now_ms:
        raise BlobTokenError("expired")
    return BlobTokenClaims(op=op, blob_id=blob_id, max_size=max_size, expires_at_ms=expires)


def _conforms(store: FolderBlobStore) -> BlobStore:  # pragma: no cover - checked by mypy
    return store
