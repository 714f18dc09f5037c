"""The AsyncClient's file methods: ``send_file``, ``download_file``, pause and resume
(docs/sdk.md §15.13). Mixed into :class:`~client_sdk.client.AsyncClient`.

Each transfer runs as one task (:meth:`FilesMixin._drive`) that owns its file
descriptor and its HTTP session, and moves the chunks its stored bitmap does not mark
done (:func:`client_sdk._transfers.run_chunks`). Progress is batched into the profile
(at most every ``progress_interval_s``; a download fsyncs its part file first, so a
recorded chunk is on disk). Transfers left RUNNING continue after every login; the
caller of ``send_file``/``download_file`` awaits the task's future.
"""

from __future__ import annotations

import asyncio
import contextlib
import functools
import logging
import mimetypes
import os
import shutil
import stat
import time
from collections.abc import Callable
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import TYPE_CHECKING, Any, TypeVar

import aiohttp

from pigeon_crypto.errors import PigeonError
from pigeon_crypto.files import (
    FILE_ID_SIZE,
    FILE_KEY_SIZE,
    ChunkCipher,
    FileLayout,
    FileManifest,
    max_true_size,
)
from protocol import limits as L
from protocol.errors import ErrorCode
from protocol.frames import BlobToken, Frame, RequestBlobDownload, RequestBlobUpload

from . import _sending
from ._transfers import (
    REQUEST_TIMEOUT_S,
    BlobGrant,
    TokenExpired,
    TransferError,
    http_base_url,
    is_transient,
    run_chunks,
    to_end,
)
from .errors import ClientError, ConnectionLost, RelayError, UnknownContact
from .events import Event, MessageRef
from .files import (
    FileOptions,
    FileTooLarge,
    NotAFileMessage,
    TransferCompleted,
    TransferFailed,
    TransferFailedEvent,
    TransferInfo,
    TransferStarted,
    UnknownTransfer,
)
from .history import MessageKind
from .store.transfers import (
    TransferDirection,
    TransferRecord,
    TransferState,
    empty_bitmap,
    transfer_store,
)

if TYPE_CHECKING:
    from .core import ClientCore
    from .history import Conversation

__all__ = ["FilesMixin"]

_log = logging.getLogger("pigeon.sdk.files")

_OUTAGE_BACKOFF_S = (1.0, 30.0)
_GRANT_ATTEMPTS = 5
"""Blob grant requests made while rate-limited: waited out and retried this often."""
_GRANT_MAX_WAIT_MS = 30_000
"""A longer retry_after (the daily blob quota) is raised to the caller at once."""
"""After a chunk exhausted its retries on transient errors, the transfer waits (doubling
from 1 s up to 30 s) and goes on: it stays RUNNING while the client is open."""

T = TypeVar("T")
Progress = Callable[[int, int], None]


@functools.lru_cache(maxsize=16)
def _protocol_limit(chunk_size: int) -> int:
    """The largest file one relay blob can hold with *chunk_size* chunks (§9.7)."""
    return max_true_size(L.MAX_FILE_SIZE, chunk_size, L.MAX_FILE_CHUNKS)


@dataclass(eq=False)
class _Running:
    record: TransferRecord
    bitmap: bytearray
    bytes_done: int
    paused: bool
    wake: asyncio.Event = field(default_factory=asyncio.Event)
    done: asyncio.Future[None] = field(
        default_factory=lambda: asyncio.get_running_loop().create_future())
    progress: list[Progress] = field(default_factory=list)
    ref: MessageRef | None = None
    flush_lock: asyncio.Lock = field(default_factory=asyncio.Lock)
    flushed_at: float = 0.0
    grant: BlobGrant | None = None
    task: asyncio.Task[Any] | None = None
    cancelled: bool = False

    @property
    def total(self) -> int:
        return FileManifest.from_bytes(self.record.manifest).true_size

    def report(self) -> None:
        total = self.total
        for callback in list(self.progress):
            try:
                callback(self.bytes_done, total)
            except Exception:
                _log.exception("progress callback failed")


class FilesMixin:
    """Mixed into AsyncClient (which provides the attributes declared here)."""

    file_options: FileOptions = FileOptions()
    _running_transfers: dict[bytes, _Running] | None = None

    if TYPE_CHECKING:
        _relay_url: str | None
        _pin: bytes | None
        _closing: asyncio.Event

        @property
        def core(self) -> ClientCore: ...

        async def _run(self, fn: Callable[[ClientCore], T]) -> T: ...

        async def _submit(self, intent: _sending.Intent) -> MessageRef | None: ...

        async def _request(self, build: Callable[[int], Any], timeout_s: float = 30.0, *,
                           anonymous: bool = False) -> Frame: ...

        def _spawn(self, coro: Any) -> asyncio.Task[Any]: ...

        async def conversation(self, peer: bytes) -> Conversation: ...

        async def _group_target(self, target: bytes) -> int | None: ...

        async def _group_file_message(self, record: TransferRecord) -> MessageRef: ...

        def _emit(self, events: list[Event]) -> None: ...

        @staticmethod
        def _now_ms() -> int: ...

    @property
    def _running(self) -> dict[bytes, _Running]:
        if self._running_transfers is None:
            self._running_transfers = {}
        return self._running_transfers

    # --- public API ---------------------------------------------------------------------

    async def send_file(self, peer: bytes, path: str | os.PathLike[str], *,
                        caption: str | None = None, media_type: str | None = None,
                        progress: Progress | None = None) -> MessageRef:
        """Encrypt and upload the file at *path*, then send its message to *peer*.

        Returns once the file message is stored (PENDING); the usual status events
        follow. *progress* is called with ``(bytes_done, total)`` as chunks are stored.

        Raises:
            FileTooLarge: before anything is uploaded.
            UnknownContact, ContactNotReady, ContactBlocked: as for ``send_text``.
            TransferFailed: the upload failed for good.
            OSError: the file cannot be read.
        """
        if await self._group_target(peer) is None:  # a group id: send_group_file
            await self._run(lambda c: c.sendable(peer))
        record, running = await self._upload(peer, path, caption=caption,
                                             media_type=media_type, progress=progress)
        await asyncio.shield(running.done)
        if running.ref is not None:
            return running.ref
        cid = await self._run(lambda c: c.conversation_id(peer, now_ms=self._now_ms()))
        return MessageRef(peer=peer, conversation_id=cid, message_id=record.message_id,
                          client_msg_id=b"\x00" * 16)

    async def upload_file(self, path: str | os.PathLike[str], *,
                          media_type: str | None = None,
                          progress: Progress | None = None) -> bytes:
        """Encrypt and upload the file at *path* without sending it to anyone; return
        its encoded manifest (file key, blob id, sizes, name, type: secret).

        For avatars (``set_profile(..., avatar=path)`` does this) and for an app's own
        use: whoever gets the manifest, end to end, can download the file with
        :meth:`download_manifest` until the relay's blob expires (``--blob-ttl``,
        30 days by default). Chunked, resumable and bounded in memory like
        :meth:`send_file`; the transfer is listed by :meth:`transfers` with our own
        account id as its peer.

        Raises:
            FileTooLarge, TransferFailed, OSError: as for :meth:`send_file`.
        """
        record, running = await self._upload(self.core.account_id, path, caption=None,
                                             media_type=media_type, progress=progress)
        await asyncio.shield(running.done)
        return record.manifest

    async def _upload(self, peer: bytes, path: str | os.PathLike[str], *,
                      caption: str | None, media_type: str | None,
                      progress: Progress | None) -> tuple[TransferRecord, _Running]:
        source, st = await asyncio.to_thread(_stat_source, Path(path))
        opts = self.file_options
        size = st.st_size
        limit = _protocol_limit(opts.chunk_size)
        if opts.max_file_size is not None:
            limit = min(limit, opts.max_file_size)
        if size > limit:
            raise FileTooLarge(size, limit)
        rng = self.core.rng
        layout = FileLayout(size, opts.chunk_size)
        mt = media_type or mimetypes.guess_type(source.name)[0] or "application/octet-stream"
        manifest = FileManifest(
            key=rng(FILE_KEY_SIZE), file_id=rng(FILE_ID_SIZE), chunk_size=opts.chunk_size,
            true_size=size, padded_size=layout.padded_size, chunk_count=layout.chunk_count,
            name=source.name, media_type=mt)
        try:
            answer = await self._grant_request(lambda rid: RequestBlobUpload(
                request_id=rid, size=layout.ciphertext_size, chunk_count=layout.chunk_count))
        except RelayError as exc:
            if exc.code == ErrorCode.TOO_LARGE:
                raise FileTooLarge(size, None) from exc
            raise
        assert isinstance(answer, BlobToken)
        manifest = manifest.with_blob_id(answer.blob_id)
        now = self._now_ms()
        record = TransferRecord(
            transfer_id=manifest.file_id, direction=TransferDirection.UPLOAD,
            state=TransferState.RUNNING, peer=peer, manifest=manifest.to_bytes(),
            message_id=rng(16), path=str(source), chunk_count=layout.chunk_count,
            chunks_done=empty_bitmap(layout.chunk_count), caption=caption,
            token=answer.token, url_path=answer.url_path,
            token_expires_at_ms=answer.expires_at_ms, source_size=size,
            source_mtime_ns=st.st_mtime_ns, created_at_ms=now, updated_at_ms=now)
        await self._run(lambda c: transfer_store(c.store).put_transfer(record))
        self._emit([TransferStarted(transfer_id=record.transfer_id,
                                    direction=record.direction, peer=peer,
                                    name=manifest.name, size=size)])
        return record, self._start(record, progress)

    async def download_file(self, peer: bytes, message_id: bytes,
                            dest_path: str | os.PathLike[str], *,
                            progress: Progress | None = None) -> Path:
        """Download, verify and decrypt the file of message *message_id* to *dest_path*.

        The file is written as ``dest_path.part`` and renamed when complete; an earlier
        attempt of the same file to the same path is resumed. If this file is being
        downloaded already (e.g. continued after a restart), this waits for that
        download and returns its path.

        Raises:
            NotAFileMessage: no such FILE message with *peer*.
            TransferFailed: the relay no longer has the file, a chunk failed to
                authenticate, or the relay refused a request for good.
        """
        cid = await self._group_target(peer) or (await self.conversation(peer)).id
        msg = await self._run(lambda c: c.store.get_message(cid, message_id))
        if msg is None or msg.kind is not MessageKind.FILE or msg.attachment is None:
            raise NotAFileMessage(message_id)
        return await self._download(peer, message_id, msg.attachment, dest_path, progress)

    async def download_manifest(self, peer: bytes, manifest: bytes,
                                dest_path: str | os.PathLike[str], *,
                                progress: Progress | None = None) -> Path:
        """Download the file an encoded *manifest* names (one that *peer* shared with
        us end to end, e.g. its avatar: ``Contact.avatar_manifest``) to *dest_path*;
        resumable like :meth:`download_file`.

        Raises:
            NotAFileMessage: *manifest* is not a valid file manifest.
            TransferFailed: as for :meth:`download_file`.
        """
        try:
            file_id = FileManifest.from_bytes(manifest).file_id
        except PigeonError as exc:
            raise NotAFileMessage(b"\x00" * 16) from exc
        return await self._download(peer, file_id, manifest, dest_path, progress)

    async def download_avatar(self, peer: bytes, dest_path: str | os.PathLike[str], *,
                              progress: Progress | None = None) -> Path | None:
        """Download the avatar *peer* shared with us to *dest_path* (None: they have
        none)."""
        contact = self.core.contact(peer)
        if contact is None:
            raise UnknownContact(peer)
        if contact.avatar_manifest is None:
            return None
        return await self.download_manifest(peer, contact.avatar_manifest, dest_path,
                                            progress=progress)

    async def _download(self, peer: bytes, message_id: bytes, attachment: bytes,
                        dest_path: str | os.PathLike[str], progress: Progress | None,
                        ) -> Path:
        dest = await asyncio.to_thread(Path(dest_path).resolve)
        try:
            manifest = FileManifest.from_bytes(attachment)
        except PigeonError as exc:
            raise NotAFileMessage(message_id) from exc
        tid = manifest.file_id
        if (running := self._running.get(tid)) is not None:
            if progress is not None:
                running.progress.append(progress)
            await asyncio.shield(running.done)
            return Path(running.record.path)
        store_of = transfer_store
        stored = await self._run(lambda c: store_of(c.store).get_transfer(tid))
        if stored is not None and stored.direction is TransferDirection.UPLOAD:
            # Our own upload (a file we sent, our or our group's avatar): the source is
            # here, if it has not changed since.
            return await asyncio.to_thread(_copy_source, stored, dest)
        if stored is not None and Path(stored.path) == dest:
            if stored.state is TransferState.DONE and dest.exists():
                return dest
            if stored.state is not TransferState.DONE:
                stored = replace(stored, state=TransferState.RUNNING, error=None)
                await self._run(lambda c: store_of(c.store).put_transfer(stored))
                running = self._start(stored, progress)
                await asyncio.shield(running.done)
                return dest
        if not manifest.blob_id:
            raise NotAFileMessage(message_id)
        grant = await self._download_grant(tid, manifest.blob_id)
        now = self._now_ms()
        record = TransferRecord(
            transfer_id=tid, direction=TransferDirection.DOWNLOAD,
            state=TransferState.RUNNING, peer=peer, manifest=attachment,
            message_id=message_id, path=str(dest), chunk_count=manifest.chunk_count,
            chunks_done=empty_bitmap(manifest.chunk_count), token=grant.token,
            url_path=grant.url_path, token_expires_at_ms=grant.expires_at_ms,
            created_at_ms=now, updated_at_ms=now)
        part = _part_path(dest)
        await asyncio.to_thread(_truncate, part)
        await self._run(lambda c: store_of(c.store).put_transfer(record))
        self._emit([TransferStarted(transfer_id=tid, direction=record.direction, peer=peer,
                                    name=manifest.name, size=manifest.true_size)])
        running = self._start(record, progress)
        await asyncio.shield(running.done)
        return dest

    def pause_transfer(self, transfer_id: bytes) -> None:
        """Stop starting new chunks of a transfer (chunks in flight finish); the pause is
        stored, so it lasts across restarts. Resume with :meth:`resume_transfer`."""
        running = self._running.get(transfer_id)
        if running is not None:
            running.paused = True  # its task stores PAUSED once the chunks in flight end
            running.wake.clear()
            return
        self._spawn(self._set_state(transfer_id, TransferState.PAUSED,
                                    only_from=TransferState.RUNNING))

    async def resume_transfer(self, transfer_id: bytes) -> None:
        """Continue a paused transfer, or one a restart (or a failure) left unfinished.

        Raises:
            UnknownTransfer: no such transfer.
        """
        running = self._running.get(transfer_id)
        if running is not None:
            running.paused = False  # its task stores RUNNING when it wakes
            running.wake.set()
            return
        record = await self._run(lambda c: transfer_store(c.store).get_transfer(transfer_id))
        if record is None:
            raise UnknownTransfer(transfer_id)
        if record.state is TransferState.DONE:
            return
        record = replace(record, state=TransferState.RUNNING, error=None)
        await self._set_state(transfer_id, TransferState.RUNNING)
        self._start(record, None)

    async def cancel_transfer(self, transfer_id: bytes) -> None:
        """Stop a transfer for good and forget it: chunks in flight are abandoned, its
        stored state is deleted and, for a download, its ``.part`` file removed; the
        chunks already on the relay expire there (``--blob-ttl``). A cancelled upload
        sends no message (unless its message was stored already: the upload had
        finished). Whoever awaits it (``send_file``, ``download_file``,
        ``wait_transfer``) gets ``TransferFailed`` with reason ``"cancelled"``, and
        ``TransferFailedEvent`` is emitted. A finished (DONE) transfer is only forgotten.

        Raises:
            UnknownTransfer: no such transfer.
        """
        running = self._running.get(transfer_id)
        record = running.record if running is not None else await self._run(
            lambda c: transfer_store(c.store).get_transfer(transfer_id))
        if record is None:
            raise UnknownTransfer(transfer_id)
        if running is not None and running.task is not None:
            running.cancelled = True
            running.task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await running.task
        await self._run(lambda c: transfer_store(c.store).delete_transfer(transfer_id))
        if record.direction is TransferDirection.DOWNLOAD:
            await asyncio.to_thread(_part_path(Path(record.path)).unlink, missing_ok=True)
        if running is not None and not running.done.done():
            running.done.set_exception(TransferFailed(transfer_id, CANCELLED))
        if record.state is not TransferState.DONE:
            self._emit([TransferFailedEvent(transfer_id=transfer_id, direction=record.direction,
                                            peer=record.peer, reason=CANCELLED)])

    async def wait_transfer(self, transfer_id: bytes) -> TransferInfo:
        """Wait until the transfer is done (a paused one waits for its resume).

        Raises:
            UnknownTransfer: no such transfer.
            TransferFailed: it failed.
        """
        running = self._running.get(transfer_id)
        if running is not None:
            await asyncio.shield(running.done)
        record = await self._run(lambda c: transfer_store(c.store).get_transfer(transfer_id))
        if record is None:
            raise UnknownTransfer(transfer_id)
        if record.state is TransferState.FAILED:
            raise TransferFailed(transfer_id, record.error or "failed")
        if record.state is not TransferState.DONE:
            running = self._start(record, None)
            await asyncio.shield(running.done)
            return await self.wait_transfer(transfer_id)
        return TransferInfo.of(record)

    async def transfers(self) -> list[TransferInfo]:
        """Every stored transfer, newest first (with live progress for running ones)."""
        records = await self._run(lambda c: transfer_store(c.store).list_transfers())
        out = []
        for r in records:
            live = self._running.get(r.transfer_id)
            if live is not None:
                r = replace(r, bytes_done=live.bytes_done)
            out.append(TransferInfo.of(r))
        return out

    # --- internals --------------------------------------------------------------------------

    def _resume_transfers(self) -> None:
        """After a login: continue every stored RUNNING transfer not already running."""
        async def resume() -> None:
            records = await self._run(lambda c: transfer_store(c.store).list_transfers())
            for r in records:
                if r.state is TransferState.RUNNING and r.transfer_id not in self._running:
                    self._start(r, None)

        self._spawn(resume())

    async def _set_state(self, transfer_id: bytes, state: TransferState, *,
                         error: str | None = None,
                         only_from: TransferState | None = None) -> None:
        now = self._now_ms()

        def write(core: ClientCore) -> None:
            store = transfer_store(core.store)
            if only_from is not None:
                found = store.get_transfer(transfer_id)
                if found is None or found.state is not only_from:
                    return
            store.set_transfer_state(transfer_id, state, error=error, now_ms=now)

        await self._run(write)

    def _start(self, record: TransferRecord, progress: Progress | None) -> _Running:
        running = self._running.get(record.transfer_id)
        if running is None:
            bitmap = bytearray(record.chunks_done)
            running = _Running(record=record, bitmap=bitmap, bytes_done=record.bytes_done,
                               paused=record.state is TransferState.PAUSED)
            self._running[record.transfer_id] = running
            running.done.add_done_callback(lambda f: f.exception() if not f.cancelled()
                                           else None)
            running.task = self._spawn(self._drive(running))
        if progress is not None:
            running.progress.append(progress)
        return running

    async def _download_grant(self, transfer_id: bytes, blob_id: bytes) -> BlobToken:
        try:
            answer = await self._grant_request(
                lambda rid: RequestBlobDownload(request_id=rid, blob_id=blob_id),
                anonymous=True)
        except RelayError as exc:
            if exc.code == ErrorCode.NOT_FOUND:
                raise TransferFailed(transfer_id, "the relay no longer has this file") \
                    from exc
            raise
        assert isinstance(answer, BlobToken)
        return answer

    async def _grant_request(self, build: Callable[[int], Any], *,
                             anonymous: bool = False) -> Frame:
        """A blob grant request; a short rate limit (the connection's credits, which
        the outbox draws on too, or the relay being overloaded) is waited out and
        retried, a few times, instead of failing the transfer. The daily blob quota
        (a wait of minutes or more) is the caller's to see."""
        for attempt in range(_GRANT_ATTEMPTS):
            try:
                return await self._request(build, anonymous=anonymous)
            except RelayError as exc:
                wait_ms = exc.retry_after_ms
                if (exc.code not in (ErrorCode.RATE_LIMITED, ErrorCode.OVERLOADED)
                        or wait_ms is None or wait_ms > _GRANT_MAX_WAIT_MS
                        or attempt == _GRANT_ATTEMPTS - 1):
                    raise
                await asyncio.sleep(wait_ms / 1000)
        raise AssertionError("unreachable")  # pragma: no cover

    def _grant(self, record: TransferRecord) -> BlobGrant:
        assert self._relay_url is not None
        return BlobGrant(url=http_base_url(self._relay_url) + record.url_path,
                         token=record.token, expires_at_ms=record.token_expires_at_ms)

    async def _flush(self, running: _Running, fd: int, *, force: bool = False) -> None:
        """Store the bitmap (downloads: after an fsync, so recorded chunks are on disk)."""
        if not force and time.monotonic() - running.flushed_at < \
                self.file_options.progress_interval_s:
            return
        async with running.flush_lock:
            running.flushed_at = time.monotonic()
            bitmap, done = bytes(running.bitmap), running.bytes_done
            record = running.record
            if record.direction is TransferDirection.DOWNLOAD:
                await to_end(os.fsync, fd)
            now = self._now_ms()
            await self._run(lambda c: transfer_store(c.store).update_progress(
                record.transfer_id, bitmap, done, now_ms=now))
            running.record = replace(record, chunks_done=bitmap, bytes_done=done)

    async def _drive(self, running: _Running) -> None:
        record = running.record
        tid = record.transfer_id
        fd = -1
        try:
            fd, existed = await to_end(self._open_for, record, undo=_close_opened)
            if not existed and running.bytes_done:  # the part file was removed: start over
                running.bitmap[:] = empty_bitmap(record.chunk_count)
                running.bytes_done = 0
            await self._move_chunks(running, fd)
            await self._flush(running, fd, force=True)
            await self._finish(running, fd)
            os.close(fd)
            fd = -1
            if record.direction is TransferDirection.DOWNLOAD:
                await asyncio.to_thread(os.replace, _part_path(Path(record.path)),
                                        record.path)
            await self._set_state(tid, TransferState.DONE)
            self._emit([TransferCompleted(transfer_id=tid, direction=record.direction,
                                          peer=record.peer, message_id=record.message_id,
                                          path=Path(record.path))])
            running.done.set_result(None)
        except asyncio.CancelledError:
            if running.cancelled:  # cancel_transfer deletes what was stored, then fails it
                raise
            if fd >= 0:  # closing: keep what was done (a crash loses at most one interval)
                with contextlib.suppress(Exception):
                    await self._flush(running, fd, force=True)
            if running.paused:
                with contextlib.suppress(Exception):
                    await self._set_state(tid, TransferState.PAUSED)
            running.done.set_exception(ConnectionLost(
                "the client closed; the transfer continues when it is opened again"))
            raise
        except Exception as exc:  # PigeonError, TransferError, OSError, a callback's bug
            reason = exc.reason if isinstance(exc, TransferFailed) else \
                f"{type(exc).__name__}: {exc}"
            if isinstance(exc, ConnectionLost):  # not permanent: continue after login
                running.done.set_exception(exc)
            else:
                with contextlib.suppress(PigeonError):
                    await self._set_state(tid, TransferState.FAILED, error=reason)
                self._emit([TransferFailedEvent(transfer_id=tid, direction=record.direction,
                                                peer=record.peer, reason=reason)])
                running.done.set_exception(TransferFailed(tid, reason))
        finally:
            if fd >= 0:
                os.close(fd)
            self._running.pop(tid, None)

    @staticmethod
    def _open_for(record: TransferRecord) -> tuple[int, bool]:
        """The file descriptor a transfer reads from or writes to, and whether the file
        existed (worker thread)."""
        if record.direction is TransferDirection.UPLOAD:
            st = os.stat(record.path)
            if (st.st_size, st.st_mtime_ns) != (record.source_size, record.source_mtime_ns):
                raise TransferError("the source file changed since the upload began")
            return os.open(record.path, os.O_RDONLY), True
        part = _part_path(Path(record.path))
        existed = part.exists()
        return os.open(part, os.O_RDWR | os.O_CREAT, 0o600), existed

    async def _move_chunks(self, running: _Running, fd: int) -> None:
        record = running.record
        upload = record.direction is TransferDirection.UPLOAD
        manifest = FileManifest.from_bytes(record.manifest)
        cipher = ChunkCipher.from_manifest(manifest)
        running.grant = self._grant(record)
        opts = self.file_options
        running.report()

        def grant() -> BlobGrant:
            assert running.grant is not None
            return running.grant

        async def on_chunk(index: int, size: int) -> None:
            running.bitmap[index >> 3] |= 1 << (index & 7)
            running.bytes_done += size
            running.report()
            await self._flush(running, fd)

        timeout = aiohttp.ClientTimeout(total=REQUEST_TIMEOUT_S)
        ssl: aiohttp.Fingerprint | bool = aiohttp.Fingerprint(self._pin) \
            if self._pin is not None else True
        connector = aiohttp.TCPConnector(limit=opts.parallel, ssl=ssl)
        backoff = _OUTAGE_BACKOFF_S[0]
        async with aiohttp.ClientSession(timeout=timeout, connector=connector) as http:
            while True:
                missing = [i for i in range(record.chunk_count)
                           if not running.bitmap[i >> 3] >> (i & 7) & 1]
                if not missing:
                    return
                if running.paused:
                    await self._flush(running, fd, force=True)
                    await self._set_state(record.transfer_id, TransferState.PAUSED)
                    while running.paused:
                        running.wake.clear()
                        await running.wake.wait()
                    await self._set_state(record.transfer_id, TransferState.RUNNING)
                    continue
                if grant().expires_at_ms <= self._now_ms():
                    await self._renew(running, upload)
                try:
                    await run_chunks(
                        upload=upload, http=http, grant=grant,
                        cipher=cipher, fd=fd, indexes=missing, parallel=opts.parallel,
                        retries=opts.retries, paused=lambda: running.paused,
                        on_chunk=on_chunk)
                    backoff = _OUTAGE_BACKOFF_S[0]
                except TokenExpired:
                    await self._renew(running, upload)
                except Exception as exc:
                    if not is_transient(exc):
                        raise
                    _log.warning("transfer %s: %s; trying again in %.0f s",
                                 record.transfer_id.hex(), type(exc).__name__, backoff)
                    await self._flush(running, fd, force=True)
                    await asyncio.sleep(backoff)
                    backoff = min(backoff * 2, _OUTAGE_BACKOFF_S[1])

    async def _renew(self, running: _Running, upload: bool) -> BlobGrant:
        record = running.record
        if upload:  # a new upload token needs a new blob: the user sends the file again
            raise TransferError("the upload token expired; send the file again")
        manifest = FileManifest.from_bytes(record.manifest)
        answer = await self._download_grant(record.transfer_id, manifest.blob_id)
        record = replace(record, token=answer.token, url_path=answer.url_path,
                         token_expires_at_ms=answer.expires_at_ms)
        await self._run(lambda c: transfer_store(c.store).put_transfer(record))
        running.record = record
        running.grant = self._grant(record)
        return running.grant

    async def _finish(self, running: _Running, fd: int) -> None:
        record = running.record
        if record.direction is TransferDirection.DOWNLOAD:
            await to_end(os.fsync, fd)
            return
        peer, mid = record.peer, record.message_id
        if peer == self.core.account_id:  # upload_file: no message goes with it
            return
        if await self._group_target(peer) is not None:
            running.ref = await self._group_file_message(record)
            return

        def stored(core: ClientCore) -> bool:
            cid = core.conversation_id(peer, now_ms=self._now_ms())
            return core.store.get_message(cid, mid) is not None

        if await self._run(stored):  # a crash came after the message was stored
            return
        running.ref = await self._submit(_sending.SendFile(
            peer=peer, message_id=mid, manifest=record.manifest, caption=record.caption))


def _copy_source(upload: TransferRecord, dest: Path) -> Path:
    """Copy an upload's source file to *dest* (via a ``.part`` file, then renamed)."""
    source = Path(upload.path)
    try:
        st = source.stat()
    except OSError:
        st = None
    if st is None or (st.st_size, st.st_mtime_ns) != (upload.source_size,
                                                      upload.source_mtime_ns):
        raise ClientError(f"this file was sent from this profile and {source} has changed "
                          "or gone since")
    part = _part_path(dest)
    shutil.copyfile(source, part)
    os.replace(part, dest)
    return dest


def _close_opened(opened: tuple[int, bool]) -> None:
    os.close(opened[0])


CANCELLED = "cancelled"
"""The reason of ``TransferFailed`` for a transfer stopped by ``cancel_transfer``."""


def _stat_source(path: Path) -> tuple[Path, os.stat_result]:
    source = path.resolve()
    st = os.stat(source)
    if not stat.S_ISREG(st.st_mode):
        raise ClientError(f"not a regular file: {source.name}")
    return source, st


def _part_path(dest: Path) -> Path:
    return dest.with_name(dest.name + ".part")


def _truncate(path: Path) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    os.close(fd)
