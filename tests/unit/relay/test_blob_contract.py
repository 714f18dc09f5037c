"""The BlobStore semantics every adapter must have (``relay.ports.BlobStore``).

Written against the Protocol only: streamed chunks, resumable and idempotent uploads,
reservations and their limits, expiry and deletion, ranged reads, and state that
survives reopening the store. Each adapter enters through a factory in
:data:`ADAPTERS` (the folder store today); what only one adapter does (the folder's
file layout, its state cache, debris) is tested beside it (``test_blobs.py``).
"""

from __future__ import annotations

import asyncio
import os
from collections.abc import AsyncIterator, Awaitable, Callable
from pathlib import Path

import pytest

from relay.blobs import FolderBlobStore
from relay.ports import BlobConflict, BlobNotFound, BlobStore, BlobTooLarge

T0 = 1_700_000_000_000
ID = b"\x42" * 16
OTHER = b"\x43" * 16
CHUNK = 64 * 1024
MAX_BLOB = 1 << 20

MakeStore = Callable[[], Awaitable[BlobStore]]
"""Opens the adapter on the same backing storage each call (a reopen is a restart)."""


def _folder(tmp_path: Path) -> MakeStore:
    async def make() -> BlobStore:
        return await FolderBlobStore.create(tmp_path / "blobs", max_blob_size=MAX_BLOB,
                                            max_chunk_size=CHUNK)
    return make


ADAPTERS: dict[str, Callable[[Path], MakeStore]] = {"folder": _folder}


@pytest.fixture(params=sorted(ADAPTERS))
def make(request: pytest.FixtureRequest, tmp_path: Path) -> MakeStore:
    return ADAPTERS[request.param](tmp_path)


@pytest.fixture
async def store(make: MakeStore) -> BlobStore:
    return await make()


async def pieces(data: bytes, size: int = 10_000) -> AsyncIterator[bytes]:
    for i in range(0, len(data), size):
        yield data[i : i + size]
        await asyncio.sleep(0)


async def read_chunk(store: BlobStore, blob_id: bytes, index: int, offset: int = 0) -> bytes:
    reader = await store.open_chunk(blob_id, index)
    if offset:
        await reader.skip(offset)
    out = bytearray()
    async for piece in reader:
        out += piece
    assert reader.size == await store.chunk_size(blob_id, index)
    return bytes(out)


def split(data: bytes) -> list[bytes]:
    return [data[i : i + CHUNK] for i in range(0, len(data), CHUNK)]


async def test_streamed_upload_download_and_reopen(store: BlobStore, make: MakeStore) -> None:
    data = os.urandom(3 * CHUNK + 123)
    chunks = split(data)
    reserved = await store.reserve(ID, size=len(data), chunk_count=4, expires_at_ms=T0)
    assert (reserved.chunks_received, reserved.bytes_received, reserved.complete) == (0, 0, False)
    for i, chunk in enumerate(chunks):
        status = await store.write_chunk(ID, i, pieces(chunk))
        assert (status.chunks_received, status.bytes_received) == (i + 1, sum(
            map(len, chunks[: i + 1])))
    assert status.complete
    assert b"".join([await read_chunk(store, ID, i) for i in range(4)]) == data
    assert await store.status(ID) == status
    again = await make()  # a restart: everything stored is still there
    assert await again.status(ID) == status
    assert b"".join([await read_chunk(again, ID, i) for i in range(4)]) == data


async def test_a_ranged_read_starts_at_its_offset(store: BlobStore) -> None:
    data = os.urandom(CHUNK)
    await store.reserve(ID, size=len(data), chunk_count=1, expires_at_ms=T0)
    await store.write_chunk(ID, 0, pieces(data))
    for offset in (1, 4095, 4096, 50_000, CHUNK - 1):
        assert await read_chunk(store, ID, 0, offset) == data[offset:]
    reader = await store.open_chunk(ID, 0)  # closed early: no iteration needed
    await reader.aclose()


async def test_resume_after_an_interrupted_upload(store: BlobStore) -> None:
    data = os.urandom(4 * CHUNK)
    chunks = split(data)
    await store.reserve(ID, size=len(data), chunk_count=4, expires_at_ms=T0)
    await store.write_chunk(ID, 0, pieces(chunks[0]))

    async def broken() -> AsyncIterator[bytes]:
        yield chunks[1][:20_000]
        raise ConnectionResetError("client went away")

    with pytest.raises(ConnectionResetError):
        await store.write_chunk(ID, 1, broken())
    status = await store.status(ID)
    assert status is not None
    assert (status.chunks_received, status.bytes_received) == (1, CHUNK)  # nothing partial
    assert [await store.chunk_size(ID, i) for i in range(4)] == [CHUNK, None, None, None]
    with pytest.raises(BlobNotFound):
        await store.open_chunk(ID, 1)
    for i in (3, 1, 2):  # resume: the missing chunks, in any order
        status = await store.write_chunk(ID, i, pieces(chunks[i]))
    assert status.complete
    assert b"".join([await read_chunk(store, ID, i) for i in range(4)]) == data


async def test_reupload_of_a_chunk_is_idempotent(store: BlobStore) -> None:
    data = os.urandom(CHUNK)
    await store.reserve(ID, size=len(data), chunk_count=1, expires_at_ms=T0)
    first = await store.write_chunk(ID, 0, pieces(data))
    again = await store.write_chunk(ID, 0, pieces(data, 777))
    assert again == first and first.bytes_received == CHUNK
    tampered = bytearray(data)
    tampered[10_000] ^= 1
    for bad in (bytes(tampered), data[:-1], data + b"x"):
        with pytest.raises(BlobConflict):
            await store.write_chunk(ID, 0, pieces(bad))
    assert await read_chunk(store, ID, 0) == data
    # Concurrent uploads of one chunk: one stores, the others compare.
    await store.reserve(OTHER, size=len(data), chunk_count=1, expires_at_ms=T0)
    results = await asyncio.gather(*(store.write_chunk(OTHER, 0, pieces(data)) for _ in range(3)))
    assert {(r.chunks_received, r.bytes_received) for r in results} == {(1, CHUNK)}


async def test_reservations(store: BlobStore) -> None:
    with pytest.raises(BlobTooLarge) as info:
        await store.reserve(ID, size=MAX_BLOB + 1, chunk_count=1, expires_at_ms=T0)
    assert info.value.limit == MAX_BLOB
    with pytest.raises(ValueError):
        await store.reserve(ID, size=10, chunk_count=0, expires_at_ms=T0)
    with pytest.raises(ValueError):
        await store.reserve(b"short", size=10, chunk_count=1, expires_at_ms=T0)
    first = await store.reserve(ID, size=10, chunk_count=2, expires_at_ms=T0)
    assert await store.reserve(ID, size=10, chunk_count=2, expires_at_ms=T0) == first
    with pytest.raises(BlobConflict):
        await store.reserve(ID, size=11, chunk_count=2, expires_at_ms=T0)
    with pytest.raises(BlobNotFound):
        await store.write_chunk(OTHER, 0, pieces(b"x"))
    with pytest.raises(ValueError):
        await store.write_chunk(ID, 2, pieces(b"x"))
    assert await store.status(OTHER) is None
    assert await store.chunk_size(OTHER, 0) is None
    with pytest.raises(BlobNotFound):
        await store.open_chunk(OTHER, 0)


async def test_every_chunk_holds_a_byte(store: BlobStore) -> None:
    """A reservation has at most one chunk per byte, and an empty chunk is refused
    unless the whole file is empty."""
    with pytest.raises(ValueError):
        await store.reserve(ID, size=1, chunk_count=2, expires_at_ms=T0)
    with pytest.raises(ValueError):
        await store.reserve(ID, size=0, chunk_count=2, expires_at_ms=T0)
    await store.reserve(ID, size=3, chunk_count=3, expires_at_ms=T0)
    with pytest.raises(ValueError):  # EmptyChunk in the folder store
        await store.write_chunk(ID, 0, pieces(b""))
    status = await store.status(ID)
    assert status is not None and status.chunks_received == 0
    await store.reserve(OTHER, size=0, chunk_count=1, expires_at_ms=T0)  # an empty file
    done = await store.write_chunk(OTHER, 0, pieces(b""))
    assert (done.chunks_received, done.complete) == (1, True)
    assert await read_chunk(store, OTHER, 0) == b""


async def test_size_limits(store: BlobStore) -> None:
    await store.reserve(ID, size=CHUNK + 100, chunk_count=3, expires_at_ms=T0)
    with pytest.raises(BlobTooLarge) as info:  # one chunk above the chunk limit
        await store.write_chunk(ID, 0, pieces(b"a" * (CHUNK + 1)))
    assert info.value.limit == CHUNK
    await store.write_chunk(ID, 0, pieces(b"a" * CHUNK))
    with pytest.raises(BlobTooLarge) as info:  # all chunks together above the reservation
        await store.write_chunk(ID, 1, pieces(b"b" * 101))
    assert info.value.limit == CHUNK + 100
    status = await store.status(ID)
    assert status is not None and status.bytes_received == CHUNK
    # In-flight bytes count too: two interleaved uploads cannot both take the last 100.
    results = await asyncio.gather(
        store.write_chunk(ID, 1, pieces(b"c" * 100, 10)),
        store.write_chunk(ID, 2, pieces(b"d" * 100, 10)),
        return_exceptions=True,
    )
    assert any(isinstance(r, BlobTooLarge) for r in results)
    status = await store.status(ID)
    assert status is not None and status.bytes_received <= CHUNK + 100
    if status.chunks_received == 1:
        status = await store.write_chunk(ID, 1, pieces(b"c" * 100, 10))
    assert status.bytes_received == CHUNK + 100


async def test_expiry_sweep_and_delete(store: BlobStore) -> None:
    await store.reserve(ID, size=3, chunk_count=1, expires_at_ms=T0)
    await store.write_chunk(ID, 0, pieces(b"old"))
    await store.reserve(OTHER, size=10, chunk_count=2, expires_at_ms=T0 + 50)  # unfinished
    keep = b"\x44" * 16
    await store.reserve(keep, size=3, chunk_count=1, expires_at_ms=T0 + 10_000)
    await store.write_chunk(keep, 0, pieces(b"new"))
    reader = await store.open_chunk(ID, 0)  # a download under way outlives the sweep
    assert await store.sweep(now_ms=T0 - 1) == 0
    assert await store.sweep(now_ms=T0 + 100) == 2
    assert [p async for p in reader] == [b"old"]
    assert await store.status(ID) is None and await store.status(OTHER) is None
    with pytest.raises(BlobNotFound):
        await store.open_chunk(ID, 0)
    assert await read_chunk(store, keep, 0) == b"new"
    assert await store.sweep(now_ms=T0 + 100) == 0
    assert await store.delete(keep) is True
    assert await store.delete(keep) is False
    with pytest.raises(BlobNotFound):
        await store.open_chunk(keep, 0)
    # A deleted id can be reserved afresh.
    fresh = await store.reserve(keep, size=5, chunk_count=1, expires_at_ms=T0 + 10_000)
    assert (fresh.chunks_received, fresh.bytes_received) == (0, 0)
