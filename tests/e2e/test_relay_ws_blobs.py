"""File blobs through the frame pipeline and HTTP, and the whole session over TLS.

A file is encrypted with pigeon_crypto's chunked file encryption; its chunks go up with
an upload token from ``RequestBlobUpload`` (resuming after an interruption), its
manifest travels inside a message, and the recipient downloads with a token from
``RequestBlobDownload`` (no account needed) and decrypts. Over TLS, clients pin the
relay's self-signed certificate; a client that does not trust it cannot connect.
"""

from __future__ import annotations

import os
import ssl
from pathlib import Path

import aiohttp
import pytest

from pigeon_crypto.files import FileDecryptor, FileEncryptor, FileManifest, encrypt_stream
from pigeon_crypto.rng import system_rng
from protocol import (
    BlobToken,
    ErrorCode,
    RequestBlobDownload,
    RequestBlobUpload,
    Sent,
)

from ._relay_fixtures import (
    client_ssl_context,
    get_chunk,
    head_chunk,
    put_chunk,
    self_signed,
)
from .conftest import RelayFactory
from .wsclient import RelayClient, anonymous, connect_user


def encrypt_file(data: bytes, name: str) -> tuple[list[bytes], FileManifest]:
    enc = FileEncryptor.create(system_rng)
    chunks = list(encrypt_stream([data], enc))
    return chunks, enc.manifest(name=name, media_type="application/pdf")


def decrypt_file(chunks: list[bytes], manifest: FileManifest) -> bytes:
    dec = FileDecryptor.from_manifest(manifest)
    out = b"".join(dec.update(c) for c in chunks)
    dec.finalize()
    return out


async def transfer_file(url: str, *, ssl_context: ssl.SSLContext | None = None,
                        max_size: int | None = None) -> None:
    """Upload (with a resume), announce, download and decrypt one file."""
    alice = await connect_user(url, ssl_context=ssl_context)
    bob = await connect_user(url, ssl_context=ssl_context)
    box = await bob.create_mailbox()
    await bob.subscribe(box)
    data = os.urandom(150_000)
    chunks, manifest = encrypt_file(data, "secret-plans.pdf")
    size = sum(map(len, chunks))
    grant = await alice.expect(BlobToken, lambda rid: RequestBlobUpload(
        request_id=rid, size=size, chunk_count=len(chunks)))
    assert grant.url_path.startswith("/") and len(grant.token) == 32
    async with aiohttp.ClientSession() as http:
        assert await put_chunk(http, url, grant, 0, chunks[0], ssl_context=ssl_context) == 200
        # Interrupted here; resuming means sending what is missing.
        if ssl_context is None:
            assert await head_chunk(http, url, grant, 0) == 200
            assert await head_chunk(http, url, grant, 1) == 404
        for i in range(1, len(chunks)):
            assert await put_chunk(http, url, grant, i, chunks[i], ssl_context=ssl_context) == 200
        # Re-sending a stored chunk is harmless.
        assert await put_chunk(http, url, grant, 0, chunks[0], ssl_context=ssl_context) == 200
        # The manifest (key, name) goes inside an end-to-end message; here just the blob id.
        assert isinstance(await alice.send([box], grant.blob_id), Sent)
        blob_id = (await bob.next_delivery()).blob
        downloader = await anonymous(url, ssl_context=ssl_context)  # no account needed
        down = await downloader.expect(BlobToken, lambda rid: RequestBlobDownload(
            request_id=rid, blob_id=blob_id))
        got = [await get_chunk(http, url, down, i, ssl_context=ssl_context)
               for i in range(len(chunks))]
    assert got == chunks
    assert decrypt_file(got, manifest) == data
    if max_size is not None:
        err = await alice.error(lambda rid: RequestBlobUpload(request_id=rid,
                                                              size=max_size + 1,
                                                              chunk_count=2))
        assert err.code == ErrorCode.TOO_LARGE
    err = await downloader.error(lambda rid: RequestBlobDownload(request_id=rid,
                                                                 blob_id=os.urandom(16)))
    assert err.code == ErrorCode.NOT_FOUND
    for c in (alice, bob, downloader):
        await c.close()


async def test_blob_upload_resume_download(relay_factory: RelayFactory) -> None:
    rp = relay_factory(["--blob-max-size", "1MiB"])
    await transfer_file(rp.url, max_size=1024 * 1024)


async def test_tls_session_with_pinned_certificate(relay_factory: RelayFactory,
                                                   tmp_path: Path) -> None:
    cert, key = self_signed(tmp_path)
    rp = relay_factory(["--tls-cert", str(cert), "--tls-key", str(key)])
    assert rp.url.startswith("https://")
    pinned = client_ssl_context(cert)
    await transfer_file(rp.url, ssl_context=pinned)
    # A client that does not trust this certificate gets no session at all.
    with pytest.raises(aiohttp.ClientConnectorError):
        await RelayClient.open(rp.url, ssl_context=ssl.create_default_context())


async def test_an_account_reserves_at_most_its_daily_blob_quota(
        relay_factory: RelayFactory) -> None:
    """``--blob-quota``: the file bytes (plus 4 KiB a chunk) one account may reserve per
    day. Past it, ``RATE_LIMITED`` with a retry time; other accounts are not charged; a
    reservation of one empty chunk per byte and no more is all a file may ask for."""
    rp = relay_factory(["--blob-max-size", "1MiB", "--blob-quota", "2MiB"])
    alice, bob = await connect_user(rp.url), await connect_user(rp.url)
    mib = 1024 * 1024
    for _ in range(2):  # 2 x (1 MiB - 8 KiB + 2 chunks of 4 KiB) = the quota
        await alice.expect(BlobToken, lambda rid: RequestBlobUpload(
            request_id=rid, size=mib - 8192, chunk_count=2))
    err = await alice.error(lambda rid: RequestBlobUpload(request_id=rid, size=1000,
                                                          chunk_count=1))
    assert err.code == ErrorCode.RATE_LIMITED and err.retry_after_ms is not None
    assert err.retry_after_ms > 1000  # ~5 KiB at 2 MiB a day: about 3.5 minutes
    await bob.expect(BlobToken, lambda rid: RequestBlobUpload(request_id=rid, size=mib,
                                                             chunk_count=16))
    err = await bob.error(lambda rid: RequestBlobUpload(request_id=rid, size=3,
                                                        chunk_count=4))
    assert err.code == ErrorCode.INVALID_FIELD  # more chunks than bytes
    for c in (alice, bob):
        await c.close()


async def test_blob_grants_draw_on_the_connection_credits(relay_factory: RelayFactory) -> None:
    """An anonymous connection asking for download tokens (a store look-up each) is
    bounded like one that sends: past its bucket, ``RATE_LIMITED``."""
    rp = relay_factory(["--conn-credit-capacity", "3", "--conn-credit-refill", "0.1"])
    stranger = await anonymous(rp.url)
    for _ in range(3):
        err = await stranger.error(lambda rid: RequestBlobDownload(
            request_id=rid, blob_id=os.urandom(16)))
        assert err.code == ErrorCode.NOT_FOUND
    err = await stranger.error(lambda rid: RequestBlobDownload(request_id=rid,
                                                               blob_id=os.urandom(16)))
    assert err.code == ErrorCode.RATE_LIMITED and (err.retry_after_ms or 0) > 1000
    await stranger.close()
