"""The chunk engine (client_sdk._transfers.run_chunks) against a scripted HTTP server on
127.0.0.1: retries of transient answers, permanent refusals, expired tokens, pausing,
and downloads that do not authenticate or are too long."""

from __future__ import annotations

import asyncio
import os
import threading
import time
from collections.abc import AsyncIterator, Callable, Iterator
from pathlib import Path

import aiohttp
import pytest
from aiohttp import web

from client_sdk import _transfers
from client_sdk._transfers import (
    BlobGrant,
    TokenExpired,
    TransferError,
    http_base_url,
    run_chunks,
    to_end,
)
from pigeon_crypto.files import ChunkAuthenticationError, ChunkCipher, FileLayout

CS = 1024
KEY, FILE_ID = b"\x01" * 32, b"\x02" * 16

Script = Callable[[web.Request, int], web.StreamResponse | None]


class Server:
    def __init__(self) -> None:
        self.stored: dict[int, bytes] = {}
        self.calls: list[tuple[str, int]] = []
        self.script: Script = lambda request, index: None
        self.url = ""

    async def handle(self, request: web.Request) -> web.StreamResponse:
        index = int(request.match_info["i"])
        self.calls.append((request.method, index))
        assert request.headers["Authorization"] == "Bearer " + "ab" * 32
        scripted = self.script(request, index)
        if scripted is not None:
            return scripted
        if request.method == "PUT":
            self.stored[index] = await request.read()
            return web.json_response({"index": index})
        return web.Response(body=self.stored[index])


@pytest.fixture
async def server() -> AsyncIterator[Server]:
    srv = Server()
    app = web.Application()
    app.router.add_route("*", "/blob/{i}", srv.handle)
    runner = web.AppRunner(app)
    await runner.setup()
    site = web.TCPSite(runner, "127.0.0.1", 0)
    await site.start()
    port = runner.addresses[0][1]
    srv.url = f"http://127.0.0.1:{port}/blob"
    try:
        yield srv
    finally:
        await runner.cleanup()


def cipher(size: int) -> ChunkCipher:
    return ChunkCipher(key=KEY, file_id=FILE_ID, layout=FileLayout(size, CS))


async def run(server: Server, *, upload: bool, fd: int, c: ChunkCipher,
              indexes: list[int] | None = None, paused: Callable[[], bool] = lambda: False,
              retries: int = 4) -> list[int]:
    done: list[int] = []

    async def on_chunk(index: int, size: int) -> None:
        assert size == c.layout.data_length(index)
        done.append(index)

    grant = BlobGrant(url=server.url, token=b"\xab" * 32, expires_at_ms=2**62)
    async with aiohttp.ClientSession() as http:
        await run_chunks(upload=upload, http=http, grant=lambda: grant, cipher=c, fd=fd,
                         indexes=list(range(c.layout.chunk_count)) if indexes is None
                         else indexes, parallel=3, retries=retries, paused=paused,
                         on_chunk=on_chunk)
    return done


@pytest.fixture
def source(tmp_path: Path) -> Iterator[tuple[bytes, int]]:
    data = os.urandom(10 * CS + 100)
    path = tmp_path / "src"
    path.write_bytes(data)
    fd = os.open(path, os.O_RDONLY)
    yield data, fd
    os.close(fd)


async def test_upload_retries_transient_answers(server: Server,
                                                source: tuple[bytes, int]) -> None:
    data, fd = source
    c = cipher(len(data))
    failures = {1: 2, 5: 1}  # chunk -> how many 503/429 before it is taken

    def flaky(request: web.Request, index: int) -> web.StreamResponse | None:
        if failures.get(index):
            failures[index] -= 1
            return web.Response(status=503 if index == 1 else 429)
        return None

    server.script = flaky
    done = await run(server, upload=True, fd=fd, c=c)
    assert sorted(done) == list(range(c.layout.chunk_count))
    assert [i for m, i in server.calls].count(1) == 3
    # What the server holds decrypts to the file.
    out = b"".join(c.open(i, server.stored[i]) for i in range(c.layout.chunk_count))
    assert out == data


async def test_upload_gives_up_after_the_retries(server: Server,
                                                 source: tuple[bytes, int]) -> None:
    data, fd = source
    server.script = lambda r, i: web.Response(status=503) if i == 2 else None
    with pytest.raises(Exception, match="HTTP 503"):
        await run(server, upload=True, fd=fd, c=cipher(len(data)), retries=2)
    assert [i for m, i in server.calls].count(2) == 2


async def test_permanent_refusal_and_expired_token(server: Server,
                                                   source: tuple[bytes, int]) -> None:
    data, fd = source
    server.script = lambda r, i: web.json_response(
        {"error": "chunk differs from the stored one"}, status=409) if i == 0 else None
    with pytest.raises(TransferError, match="409"):
        await run(server, upload=True, fd=fd, c=cipher(len(data)), indexes=[0])
    assert server.calls == [("PUT", 0)]  # not retried
    server.script = lambda r, i: web.json_response(
        {"error": "blob token rejected: expired"}, status=401)
    with pytest.raises(TokenExpired):
        await run(server, upload=True, fd=fd, c=cipher(len(data)), indexes=[0])


async def test_pause_stops_taking_chunks(server: Server, source: tuple[bytes, int]) -> None:
    data, fd = source
    c = cipher(len(data))
    paused = False

    def pause_after_first(request: web.Request, index: int) -> None:
        nonlocal paused
        paused = True

    server.script = pause_after_first
    done = await run(server, upload=True, fd=fd, c=c, paused=lambda: paused)
    assert 1 <= len(done) <= 3 < c.layout.chunk_count  # only those already in flight


async def test_download_writes_at_offsets_and_rejects_bad_chunks(
        server: Server, tmp_path: Path) -> None:
    data = os.urandom(7 * CS + 5)
    c = cipher(len(data))
    n = c.layout.chunk_count
    server.stored = {i: c.seal(i, data[i * CS:i * CS + c.layout.data_length(i)])
                     for i in range(n)}
    out = tmp_path / "out"
    fd = os.open(out, os.O_RDWR | os.O_CREAT)
    try:
        done = await run(server, upload=False, fd=fd, c=c, indexes=list(range(n))[::-1])
        assert sorted(done) == list(range(n))
        assert out.read_bytes() == data
        # A chunk moved to another index does not authenticate.
        server.stored[3] = server.stored[4]
        with pytest.raises(ChunkAuthenticationError):
            await run(server, upload=False, fd=fd, c=c, indexes=[3])
        # A body longer than the chunk is cut off.
        server.script = lambda r, i: web.Response(body=b"x" * (CS * 3))
        with pytest.raises(TransferError, match="bytes"):
            await run(server, upload=False, fd=fd, c=c, indexes=[0])
    finally:
        os.close(fd)


async def test_no_chunk_write_outlives_the_call(server: Server, tmp_path: Path,
                                                 monkeypatch: pytest.MonkeyPatch) -> None:
    # One chunk fails while another is being written in a thread: when run_chunks
    # raises, the caller closes fd, so no write on it may still be running (its number
    # could be another file's by then).
    data = os.urandom(2 * CS)
    c = cipher(len(data))
    server.stored = {i: c.seal(i, data[i * CS:(i + 1) * CS]) for i in range(2)}
    writing, written = threading.Event(), threading.Event()
    real = _transfers._open_and_write

    def open_and_write(fd: int, ci: ChunkCipher, index: int, body: bytes) -> int:
        if index == 1:
            writing.wait(2.0)
            raise TransferError("chunk 1 refused")
        writing.set()
        time.sleep(0.05)  # a slow disk
        size = real(fd, ci, index, body)
        written.set()
        return size

    monkeypatch.setattr(_transfers, "_open_and_write", open_and_write)
    fd = os.open(tmp_path / "out", os.O_RDWR | os.O_CREAT)
    try:
        with pytest.raises(TransferError, match="chunk 1"):
            await run(server, upload=False, fd=fd, c=c, indexes=[0, 1])
        assert written.is_set()
    finally:
        os.close(fd)


def test_http_base_url() -> None:
    assert http_base_url("http://127.0.0.1:8080") == "http://127.0.0.1:8080"
    assert http_base_url("wss://relay.example/v1/ws") == "https://relay.example"
    assert http_base_url("https://relay.example/pigeon/") == "https://relay.example/pigeon"
    with pytest.raises(ValueError):
        http_base_url("http://relay.example")  # plain text off loopback


async def test_a_cancelled_thread_call_returns_once_the_call_ended() -> None:
    # The fsyncs and the open of a transfer's file: their caller closes the fd as soon
    # as it is cancelled, so the call on it must be over by then (and an fd it opened
    # closed by undo).
    started, ended = threading.Event(), threading.Event()
    undone: list[int] = []

    def slow() -> int:
        started.set()
        time.sleep(0.05)
        ended.set()
        return 7

    task = asyncio.ensure_future(to_end(slow, undo=undone.append))
    while not started.is_set():  # noqa: ASYNC110 - a thread's event
        await asyncio.sleep(0.001)
    task.cancel()
    with pytest.raises(asyncio.CancelledError):
        await task
    assert ended.is_set() and undone == [7]
