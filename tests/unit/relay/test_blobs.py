"""The folder blob store (streamed, resumable, idempotent, bounded, expiring) and tokens."""

from __future__ import annotations

import os
from collections.abc import AsyncIterator, Iterable
from pathlib import Path

import pytest

from relay.blobs import (
    BlobOp,
    BlobTokenError,
    FolderBlobStore,
    issue_blob_token,
    verify_blob_token,
)
from relay.ports import BlobConflict, BlobNotFound, BlobRangeError, BlobTooLarge

T0 = 1_700_000_000_000
ID = b"\x42" * 16
OTHER = b"\x43" * 16
KEY = b"k" * 32


async def pieces(data: bytes, size: int = 10_000) -> AsyncIterator[bytes]:
    for i in range(0, len(data), size):
        yield data[i : i + size]


async def chunks(parts: Iterable[bytes]) -> AsyncIterator[bytes]:
    for p in parts:
        yield p


async def read_all(store: FolderBlobStore, blob_id: bytes, offset: int = 0) -> bytes:
    reader = await store.open(blob_id, offset=offset)
    out = bytearray()
    async for piece in reader:
        assert len(piece) <= 4096  # streamed in bounded pieces
        out += piece
    return bytes(out)


@pytest.fixture
async def store(tmp_path: Path) -> FolderBlobStore:
    return await FolderBlobStore.create(tmp_path / "blobs", max_blob_size=1 << 20,
                                        read_chunk=4096)


async def test_streamed_upload_and_download(store: FolderBlobStore, tmp_path: Path) -> None:
    data = os.urandom(300_000)
    status = await store.write(ID, pieces(data), offset=0, size=len(data), expires_at_ms=T0)
    assert (status.received, status.size, status.complete) == (len(data), len(data), True)
    assert await read_all(store, ID) == data
    assert await read_all(store, ID, offset=299_000) == data[299_000:]
    reader = await store.open(ID)
    assert reader.status == status
    await reader.aclose()
    files = sorted(p.name for p in (tmp_path / "blobs" / ID.hex()[:2]).iterdir())
    assert files == [ID.hex(), ID.hex() + ".meta"]  # no .part, no temp debris


async def test_resume_after_a_partial_upload(store: FolderBlobStore) -> None:
    data = os.urandom(100_000)
    first = await store.write(ID, pieces(data[:40_000]), offset=0, size=len(data),
                              expires_at_ms=T0)
    assert (first.received, first.complete) == (40_000, False)
    with pytest.raises(BlobNotFound):
        await store.open(ID)  # not readable until complete
    with pytest.raises(BlobRangeError) as gap:
        await store.write(ID, pieces(data[50_000:]), offset=50_000, size=len(data),
                          expires_at_ms=T0)
    assert gap.value.received == 40_000
    status = await store.status(ID)
    assert status is not None and status.received == 40_000
    # Re-send an overlapping range (idempotent), then finish.
    await store.write(ID, pieces(data[30_000:60_000]), offset=30_000, size=len(data),
                      expires_at_ms=T0)
    done = await store.write(ID, pieces(data[60_000:]), offset=60_000, size=len(data),
                             expires_at_ms=T0)
    assert done.complete
    assert await read_all(store, ID) == data


async def test_client_disconnect_keeps_received_bytes(store: FolderBlobStore) -> None:
    data = os.urandom(50_000)

    async def broken() -> AsyncIterator[bytes]:
        yield data[:20_000]
        yield data[20_000:30_000]
        raise ConnectionResetError("client went away")

    with pytest.raises(ConnectionResetError):
        await store.write(ID, broken(), offset=0, size=len(data), expires_at_ms=T0)
    status = await store.status(ID)
    assert status is not None and status.received == 30_000
    await store.write(ID, pieces(data[30_000:]), offset=30_000, size=len(data), expires_at_ms=T0)
    assert await read_all(store, ID) == data


async def test_reupload_of_a_complete_blob_is_idempotent(store: FolderBlobStore) -> None:
    data = os.urandom(20_000)
    first = await store.write(ID, pieces(data), offset=0, size=len(data), expires_at_ms=T0)
    again = await store.write(ID, pieces(data, 777), offset=0, size=len(data), expires_at_ms=T0)
    assert again == first
    tail = await store.write(ID, pieces(data[5_000:]), offset=5_000, size=len(data),
                             expires_at_ms=T0)
    assert tail.complete
    tampered = bytearray(data)
    tampered[10_000] ^= 1
    with pytest.raises(BlobConflict):
        await store.write(ID, pieces(bytes(tampered)), offset=0, size=len(data), expires_at_ms=T0)
    with pytest.raises(BlobConflict):
        await store.write(ID, pieces(data), offset=0, size=len(data) + 1, expires_at_ms=T0)
    assert await read_all(store, ID) == data


async def test_size_limits(store: FolderBlobStore) -> None:
    with pytest.raises(BlobTooLarge) as info:
        await store.write(ID, pieces(b"x"), offset=0, size=(1 << 20) + 1, expires_at_ms=T0)
    assert info.value.limit == 1 << 20
    assert await store.status(ID) is None
    # More bytes than declared: this call's bytes are discarded, earlier ones kept.
    await store.write(ID, pieces(b"a" * 100), offset=0, size=1000, expires_at_ms=T0)
    with pytest.raises(BlobTooLarge):
        await store.write(ID, pieces(b"b" * 2000, 100), offset=100, size=1000, expires_at_ms=T0)
    status = await store.status(ID)
    assert status is not None and status.received == 100
    done = await store.write(ID, pieces(b"c" * 900), offset=100, size=1000, expires_at_ms=T0)
    assert done.complete
    with pytest.raises(BlobTooLarge):
        await store.write(ID, pieces(b"a" * 100 + b"c" * 901), offset=0, size=1000,
                          expires_at_ms=T0)
    with pytest.raises(ValueError):
        await store.write(b"short", pieces(b"x"), offset=0, size=1, expires_at_ms=T0)


async def test_first_write_must_start_at_zero(store: FolderBlobStore) -> None:
    with pytest.raises(BlobRangeError):
        await store.write(ID, pieces(b"x"), offset=5, size=10, expires_at_ms=T0)
    with pytest.raises(BlobNotFound):
        await store.open(OTHER)


async def test_expiry_sweep_and_delete(store: FolderBlobStore, tmp_path: Path) -> None:
    await store.write(ID, pieces(b"old"), offset=0, size=3, expires_at_ms=T0)
    await store.write(OTHER, pieces(b"par"), offset=0, size=10, expires_at_ms=T0 + 50)
    keep = b"\x44" * 16
    await store.write(keep, pieces(b"new"), offset=0, size=3, expires_at_ms=T0 + 10_000)
    reader = await store.open(ID)  # an open reader survives the sweep (POSIX)
    assert await store.sweep(now_ms=T0 - 1) == 0
    assert await store.sweep(now_ms=T0 + 100) == 2
    assert [p async for p in reader] == [b"old"]
    assert await store.status(ID) is None and await store.status(OTHER) is None
    assert await read_all(store, keep) == b"new"
    # Debris from an interrupted write (no metadata) goes too.
    debris = tmp_path / "blobs" / "aa" / ("aa" * 16 + ".part")
    debris.parent.mkdir()
    debris.write_bytes(b"junk")
    await store.sweep(now_ms=T0 + 100)
    assert not debris.exists()
    assert await store.delete(keep) is True
    assert await store.delete(keep) is False
    with pytest.raises(BlobNotFound):
        await store.open(keep)


def test_tokens() -> None:
    token = issue_blob_token(KEY, op=BlobOp.UPLOAD, blob_id=ID, max_size=1000,
                             expires_at_ms=T0 + 60_000)
    assert len(token) == 88 and "=" not in token
    claims = verify_blob_token(KEY, token, op=BlobOp.UPLOAD, blob_id=ID, now_ms=T0)
    assert (claims.max_size, claims.expires_at_ms) == (1000, T0 + 60_000)
    cases = [
        (dict(key=b"x" * 32), "bad tag"),
        (dict(op=BlobOp.DOWNLOAD), "wrong operation"),
        (dict(blob_id=OTHER), "wrong blob"),
        (dict(now_ms=T0 + 60_000), "expired"),
        (dict(token=token[:-2]), "malformed"),
        (dict(token="!!!!"), "malformed"),
        (dict(token=token[:10] + ("A" if token[10] != "A" else "B") + token[11:]), "bad tag"),
    ]
    for change, reason in cases:
        args: dict[str, object] = dict(key=KEY, token=token, op=BlobOp.UPLOAD, blob_id=ID,
                                       now_ms=T0)
        args.update(change)
        with pytest.raises(BlobTokenError) as info:
            verify_blob_token(args.pop("key"), args.pop("token"), **args)  # type: ignore[arg-type]
        assert info.value.reason == reason
        assert token not in str(info.value)
    with pytest.raises(ValueError):
        issue_blob_token(b"short", op=BlobOp.UPLOAD, blob_id=ID, max_size=1, expires_at_ms=T0)
    # Pinned bytes: the layout is part of the server's URLs.
    assert token == (
        "AQFCQkJCQkJCQkJCQkJCQkJCAAAAAAAAA-gAAAGLz-ZSYA4dywVkJeUQzloNXx1EgqLmbp7cfNMHlu6yWzaK04-m"
    )
