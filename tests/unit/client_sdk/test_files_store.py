"""Transfer state in the profile (client_sdk.store.transfers), memory and SQLite alike."""

from __future__ import annotations

import dataclasses
import sqlite3
from pathlib import Path

import pytest

from client_sdk.errors import ProfileCorrupt
from client_sdk.files import FileInfo, TransferInfo, file_info
from client_sdk.store import ClientStore, Durability, Profile
from client_sdk.store.transfers import (
    TransferDirection,
    TransferRecord,
    TransferState,
    empty_bitmap,
    set_bits,
    transfer_store,
)
from pigeon_crypto.files import FileLayout, FileManifest

from .support import FAST

KEY = b"\x11" * 32


def manifest(size: int = 5000, chunk_size: int = 1024) -> FileManifest:
    layout = FileLayout(size, chunk_size)
    return FileManifest(key=KEY, file_id=b"\x22" * 16, chunk_size=chunk_size,
                        true_size=size, padded_size=layout.padded_size,
                        chunk_count=layout.chunk_count, blob_id=b"\x33" * 16,
                        name="secret-plans.pdf", media_type="application/pdf")


def record(**changes: object) -> TransferRecord:
    m = manifest()
    base = TransferRecord(
        transfer_id=m.file_id, direction=TransferDirection.UPLOAD,
        state=TransferState.RUNNING, peer=b"\x44" * 16, manifest=m.to_bytes(),
        message_id=b"\x55" * 16, path="/home/me/secret-plans.pdf",
        chunk_count=m.chunk_count, chunks_done=empty_bitmap(m.chunk_count),
        caption="for you", token=b"\x66" * 32, url_path="/v1/blobs/33/99",
        token_expires_at_ms=99, source_size=5000, source_mtime_ns=123,
        created_at_ms=1, updated_at_ms=1)
    return dataclasses.replace(base, **changes)  # type: ignore[arg-type]


def test_round_trip_progress_state_and_delete(store: ClientStore) -> None:
    ts = transfer_store(store)
    assert transfer_store(store) is ts or type(transfer_store(store)) is type(ts)
    r = record()
    ts.put_transfer(r)
    assert ts.get_transfer(r.transfer_id) == r
    assert r.missing() == [0, 1, 2, 3, 4]
    bits = set_bits(r.chunks_done, [0, 3])
    ts.update_progress(r.transfer_id, bits, 2048, now_ms=5)
    got = ts.get_transfer(r.transfer_id)
    assert got is not None and got.missing() == [1, 2, 4] and got.bytes_done == 2048
    assert got.done(3) and not got.done(4) and got.updated_at_ms == 5
    ts.set_transfer_state(r.transfer_id, TransferState.FAILED, error="HTTP 409", now_ms=6)
    got = ts.get_transfer(r.transfer_id)
    assert got is not None and (got.state, got.error) == (TransferState.FAILED, "HTTP 409")
    newer = record(transfer_id=b"\x77" * 16, created_at_ms=10,
                   direction=TransferDirection.DOWNLOAD, caption=None)
    ts.put_transfer(newer)
    assert [t.transfer_id for t in ts.list_transfers()] == [newer.transfer_id, r.transfer_id]
    assert ts.delete_transfer(r.transfer_id) and not ts.delete_transfer(r.transfer_id)
    assert ts.get_transfer(r.transfer_id) is None


def test_sqlite_record_is_sealed_and_survives_reopen(tmp_path: Path) -> None:
    path = tmp_path / "p.db"
    profile = Profile.create(path, "pw", params=FAST, durability=Durability.OFF)
    r = record()
    transfer_store(profile.store).put_transfer(r)
    profile.close()
    wal = tmp_path / "p.db-wal"
    raw = path.read_bytes() + (wal.read_bytes() if wal.exists() else b"")
    for secret in (KEY, b"secret-plans", b"\x66" * 32, b"for you"):
        assert secret not in raw
    profile = Profile.open(path, "pw")
    try:
        assert transfer_store(profile.store).get_transfer(r.transfer_id) == r
    finally:
        profile.close()
    # A sealed record moved to another row does not open.
    conn = sqlite3.connect(path)
    conn.execute("UPDATE file_transfers SET id = ?", (b"\x99" * 16,))
    conn.commit()
    conn.close()
    profile = Profile.open(path, "pw")
    try:
        with pytest.raises(ProfileCorrupt):
            transfer_store(profile.store).get_transfer(b"\x99" * 16)
    finally:
        profile.close()


def test_record_checks_and_reprs() -> None:
    with pytest.raises(ValueError):
        record(chunks_done=b"")
    with pytest.raises(ValueError):
        record(transfer_id=b"x")
    text = repr(record())
    assert "secret" not in text and "11" * 8 not in text and "66" * 8 not in text
    info = TransferInfo.of(record())
    assert info.name == "secret-plans.pdf" and info.size == 5000
    assert "secret" not in repr(info)
    fi = file_info(manifest().to_bytes())
    assert fi == FileInfo(transfer_id=b"\x22" * 16, name="secret-plans.pdf", size=5000,
                          media_type="application/pdf")
    assert "secret" not in repr(fi) and "11" * 8 not in repr(fi)
    assert file_info(b"\x02garbage") is None
