"""What only the folder blob store does, and blob tokens.

The semantics every BlobStore has (streaming, resume, idempotent re-upload, limits,
expiry, ranged reads, reopening) are the contract suite's, ``test_blob_contract.py``,
which runs against this store too. Here: the folder's files (no debris, pieces of
``read_chunk`` bytes), its bounded state cache, and the sweep of interrupted folders.
"""

from __future__ import annotations

import asyncio
import os
from collections.abc import AsyncIterator
from pathlib import Path

import pytest

from relay import blobs
from relay.blobs import (
    BlobOp,
    BlobTokenError,
    EmptyChunk,
    FolderBlobStore,
    blob_token,
    verify_blob_token,
)
from relay.ports import BlobStatus, BlobTooLarge

T0 = 1_700_000_000_000
ID = b"\x42" * 16
OTHER = b"\x43" * 16
KEY = b"k" * 32
CHUNK = 64 * 1024


async def pieces(data: bytes, size: int = 10_000) -> AsyncIterator[bytes]:
    for i in range(0, len(data), size):
        yield data[i : i + size]
        await asyncio.sleep(0)


async def read_chunk(store: FolderBlobStore, blob_id: bytes, index: int) -> bytes:
    reader = await store.open_chunk(blob_id, index)
    out = bytearray()
    async for piece in reader:
        assert len(piece) <= 4096  # streamed in bounded pieces
        out += piece
    assert reader.size == len(out)
    return bytes(out)


@pytest.fixture
async def store(tmp_path: Path) -> FolderBlobStore:
    return await FolderBlobStore.create(tmp_path / "blobs", max_blob_size=1 << 20,
                                        max_chunk_size=CHUNK, read_chunk=4096)


def split(data: bytes) -> list[bytes]:
    return [data[i : i + CHUNK] for i in range(0, len(data), CHUNK)]


async def test_the_folder_holds_the_chunks_and_nothing_else(store: FolderBlobStore,
                                                             tmp_path: Path) -> None:
    data = os.urandom(3 * CHUNK + 123)
    chunks = split(data)
    reserved = await store.reserve(ID, size=len(data), chunk_count=4, expires_at_ms=T0)
    assert (reserved.chunks_received, reserved.bytes_received, reserved.complete) == (0, 0, False)
    for i, chunk in enumerate(chunks):
        status = await store.write_chunk(ID, i, pieces(chunk))
    assert (status.chunks_received, status.bytes_received, status.complete) == (4, len(data), True)
    assert b"".join([await read_chunk(store, ID, i) for i in range(4)]) == data
    folder = tmp_path / "blobs" / ID.hex()[:2] / ID.hex()
    assert sorted(p.name for p in folder.iterdir()) == ["0", "1", "2", "3", "meta"]  # no debris
    # Counts survive a restart (rebuilt from the folder, with other limits).
    again = await FolderBlobStore.create(tmp_path / "blobs", max_chunk_size=CHUNK)
    assert await again.status(ID) == status


async def test_an_empty_chunk_leaves_no_file(store: FolderBlobStore) -> None:
    """No folder of empty files: an empty chunk of a blob that is not empty is refused
    as ``EmptyChunk`` (a 400) and writes nothing."""
    await store.reserve(ID, size=3, chunk_count=3, expires_at_ms=T0)
    with pytest.raises(EmptyChunk):
        await store.write_chunk(ID, 0, pieces(b""))
    status = await store.status(ID)
    assert status is not None and status.chunks_received == 0
    assert [p.name for p in store._dir(ID).iterdir() if p.name != "meta"] == []


async def stalled_upload(store: FolderBlobStore
                         ) -> tuple[asyncio.Future[BlobStatus], asyncio.Event]:
    """Blob ``ID`` (10 bytes, one chunk) half uploaded and held in use until the event
    is set: the oldest entry of the state cache, busy."""
    await store.reserve(ID, size=10, chunk_count=1, expires_at_ms=T0)
    release = asyncio.Event()

    async def slow() -> AsyncIterator[bytes]:
        yield b"12345"
        await release.wait()
        yield b"67890"

    upload = asyncio.ensure_future(store.write_chunk(ID, 0, slow()))
    await asyncio.sleep(0.05)
    return upload, release


async def test_a_blob_in_use_does_not_pin_the_state_cache(
        store: FolderBlobStore, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(blobs, "STATE_CACHE", 8)
    upload, release = await stalled_upload(store)
    for i in range(30):
        blob_id = bytes([i]) * 16
        await store.reserve(blob_id, size=1, chunk_count=1, expires_at_ms=T0)
        await store.status(blob_id)
        assert len(store._states) <= 9  # the limit, plus the one in use
    assert ID in store._states
    release.set()
    assert (await upload).bytes_received == 10


async def test_the_sweep_removes_old_debris(store: FolderBlobStore, tmp_path: Path) -> None:
    keep = b"\x44" * 16
    await store.reserve(keep, size=3, chunk_count=1, expires_at_ms=T0 + 10_000)
    await store.write_chunk(keep, 0, pieces(b"new"))
    # A folder without metadata (an interrupted reservation) is debris once it is older
    # than DEBRIS_GRACE_MS; a younger one may be a reservation another node is writing.
    debris = tmp_path / "blobs" / "aa" / ("aa" * 16)
    debris.mkdir(parents=True)
    (debris / "0.1234.tmp").write_bytes(b"junk")
    young = tmp_path / "blobs" / "bb" / ("bb" * 16)
    young.mkdir(parents=True)
    now_s = (T0 + 100) / 1000
    os.utime(debris, (now_s - blobs.DEBRIS_GRACE_MS / 1000 - 1,) * 2)
    os.utime(young, (now_s - 5,) * 2)
    await store.sweep(now_ms=T0 + 100)
    assert not debris.exists() and young.exists()
    assert await read_chunk(store, keep, 0) == b"new"


def test_tokens() -> None:
    token = blob_token(KEY, op=BlobOp.UPLOAD, blob_id=ID, expires_at_ms=T0 + 60_000)
    assert len(token) == 32
    verify_blob_token(KEY, token, op=BlobOp.UPLOAD, blob_id=ID, expires_at_ms=T0 + 60_000,
                      now_ms=T0)
    good = {"op": BlobOp.UPLOAD, "blob_id": ID, "expires_at_ms": T0 + 60_000, "now_ms": T0}
    cases: list[tuple[bytes, bytes, dict[str, object], str]] = [
        (b"x" * 32, token, {}, "bad token"),
        (KEY, token, {"op": BlobOp.DOWNLOAD}, "bad token"),
        (KEY, token, {"blob_id": OTHER}, "bad token"),
        (KEY, token, {"expires_at_ms": T0 + 70_000}, "bad token"),  # URL edited
        (KEY, token[:-1] + bytes([token[-1] ^ 1]), {}, "bad token"),
        (KEY, token[:16], {}, "bad token"),
        (KEY, token, {"now_ms": T0 + 60_000}, "expired"),
    ]
    for key, tok, change, reason in cases:
        with pytest.raises(BlobTokenError) as info:
            verify_blob_token(key, tok, **{**good, **change})  # type: ignore[arg-type]
        assert info.value.reason == reason
    with pytest.raises(ValueError):
        blob_token(b"short", op=BlobOp.UPLOAD, blob_id=ID, expires_at_ms=T0)
    # Pinned bytes: tokens issued before an upgrade must still verify after it.
    assert token.hex() == PINNED


PINNED = "6cd9a2367c73961670eda70d545d528f94fe6accf35276cbf85771561c43f45d"


async def test_the_state_asked_for_is_never_the_one_evicted(
        store: FolderBlobStore, monkeypatch: pytest.MonkeyPatch) -> None:
    """With every older cached blob busy, the cache must not drop the state it is
    about to hand out: two writers would then count on two copies and together store
    more than the reservation."""
    monkeypatch.setattr(blobs, "STATE_CACHE", 1)
    busy, release = await stalled_upload(store)
    await store.reserve(OTHER, size=10, chunk_count=2, expires_at_ms=T0)
    results = await asyncio.gather(store.write_chunk(OTHER, 0, pieces(b"a" * 8, 2)),
                                   store.write_chunk(OTHER, 1, pieces(b"b" * 8, 2)),
                                   return_exceptions=True)
    # One (or, when their pieces interleave, both) refused; never 16 bytes stored.
    assert any(isinstance(r, BlobTooLarge) for r in results)
    status = await store.status(OTHER)
    assert status is not None and status.bytes_received <= 10
    release.set()
    await busy


async def test_a_blob_the_sweep_cannot_remove_does_not_stop_it(
        store: FolderBlobStore, monkeypatch: pytest.MonkeyPatch) -> None:
    """One expired blob that cannot be removed (another node raced it, a permission) is
    skipped and logged; the pass goes on with the others."""
    for blob_id in (ID, OTHER):
        await store.reserve(blob_id, size=1, chunk_count=1, expires_at_ms=T0)
    remove = blobs._remove_tree

    def stuck(d: Path) -> bool:
        if d == store._dir(ID):
            raise OSError("directory not empty")
        return remove(d)

    monkeypatch.setattr(blobs, "_remove_tree", stuck)
    assert await store.sweep(now_ms=T0 + 1) == 1
    assert await store.status(OTHER) is None
    assert store._dir(ID).exists()
