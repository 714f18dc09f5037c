"""The app in-process on 127.0.0.1: the blob grants the frame pipeline will call, the
expiry sweeper with a controlled clock, health failures, and orderly cleanup."""

from __future__ import annotations

import asyncio
import os
from collections.abc import AsyncIterator
from pathlib import Path

import pytest
from aiohttp import web
from aiohttp.test_utils import TestClient, TestServer

from pigeon_crypto.errors import StoreError
from protocol import Connect, CreateMailbox, ErrorCode, Frame, Ping, Pong, Sent
from relay import app as relay_app
from relay import handlers_mailbox
from relay.app import create_app, sweep_once
from relay.blob_http import grant_download, reserve_upload
from relay.bus import InProcessBus
from relay.config import RelayConfig, SyncMode
from relay.ports import BlobTooLarge, PrekeyCounts
from relay.store_memory import MemoryStore
from relay.typedefs import BACKGROUND_TASKS, PUSH, STORE, WEBSOCKETS
from tests.e2e.wsclient import RelayClient, anonymous, connect_user, logged_in

NOW = 1_790_000_000_000


class Clock:
    def __init__(self) -> None:
        self.ms = NOW

    def __call__(self) -> int:
        return self.ms


def config(tmp_path: Path, **kw: object) -> RelayConfig:
    return RelayConfig(data_dir=tmp_path, synchronous=SyncMode.OFF,
                       sweep_interval_ms=3_600_000, **kw)  # type: ignore[arg-type]


@pytest.fixture
async def client(tmp_path: Path) -> AsyncIterator[tuple[TestClient[web.Request, web.Application],
                                                        Clock]]:
    clock = Clock()
    app = create_app(config(tmp_path, blob_max_size=1000), clock_ms=clock)
    async with TestClient(TestServer(app, host="127.0.0.1")) as c:
        yield c, clock


async def test_upload_and_download_grants(
    client: tuple[TestClient[web.Request, web.Application], Clock],
) -> None:
    c, clock = client
    assert isinstance(c.server, TestServer)
    app = c.server.app
    up = await reserve_upload(app, size=6, chunk_count=2)
    assert up.url_path == f"/v1/blobs/{up.blob_id.hex()}/{up.expires_at_ms}"
    assert len(up.token) == 32 and up.expires_at_ms == NOW + 24 * 3_600_000
    auth = {"Authorization": f"Bearer {up.token.hex()}"}
    for i, data in enumerate((b"abc", b"def")):
        resp = await c.put(f"{up.url_path}/{i}", data=data, headers=auth)
        assert resp.status == 200
    down = await grant_download(app, up.blob_id)
    assert down is not None and down.token != up.token
    resp = await c.get(f"{down.url_path}/1",
                       headers={"Authorization": f"Bearer {down.token.hex()}"})
    assert resp.status == 200 and await resp.read() == b"def"
    assert await grant_download(app, os.urandom(16)) is None
    with pytest.raises(BlobTooLarge):
        await reserve_upload(app, size=1001, chunk_count=1)
    # Tokens stop at their time; the blob itself at its own.
    clock.ms = up.expires_at_ms
    resp = await c.put(f"{up.url_path}/0", data=b"abc", headers=auth)
    assert resp.status == 401
    clock.ms = NOW + 31 * 24 * 3_600_000
    assert await grant_download(app, up.blob_id) is None


async def test_sweep_once_expires_blobs_on_the_app_clock(
    client: tuple[TestClient[web.Request, web.Application], Clock],
) -> None:
    c, clock = client
    assert isinstance(c.server, TestServer)
    app = c.server.app
    up = await reserve_upload(app, size=1, chunk_count=1)
    assert await sweep_once(app) == (0, 0)
    clock.ms = NOW + 30 * 24 * 3_600_000
    assert await sweep_once(app) == (0, 1)
    assert await grant_download(app, up.blob_id) is None


class BrokenStore(MemoryStore):
    async def get_account(self, account_id: bytes) -> None:
        raise StoreError("disk on fire")


async def test_health_reports_an_unavailable_store(tmp_path: Path) -> None:
    store = BrokenStore()
    app = create_app(config(tmp_path), store=store)
    async with TestClient(TestServer(app, host="127.0.0.1")) as c:
        assert app[STORE] is store
        resp = await c.get("/health")
        assert resp.status == 503
        assert await resp.json() == {"status": "unavailable", "store": "unavailable",
                                     "blobs": "ok"}


async def test_cleanup_cancels_background_tasks_and_push(tmp_path: Path) -> None:
    app = create_app(config(tmp_path))
    async with TestClient(TestServer(app, host="127.0.0.1")) as c:
        running: dict[str, asyncio.Task[None]] = app[BACKGROUND_TASKS]
        tasks = dict(running)
        assert set(tasks) == {"sweeper"}
        push = app[PUSH]
        async with c.ws_connect("/v1/ws") as ws:
            await ws.send_bytes(Connect(request_id=1).encode())
            await ws.receive()  # the Challenge
    await asyncio.sleep(0)
    assert all(t.done() for t in tasks.values())
    assert push.wake("https://push.example/x") is False  # closed


async def test_shutdown_drops_clients_that_stopped_reading(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    # A peer that stopped reading leaves the socket paused: ws.close() would wait for it
    # to drain forever (the heartbeat stops on close), and shutdown closed them in turn.
    monkeypatch.setattr(relay_app, "_CLOSE_TIMEOUT_S", 0.05)
    app = create_app(config(tmp_path))
    async with TestClient(TestServer(app, host="127.0.0.1")) as c:
        clients = [await c.ws_connect("/v1/ws") for _ in range(2)]
        for ws in clients:
            await ws.send_bytes(Connect(request_id=1).encode())
            await ws.receive()  # the Challenge: the relay holds the socket
        sockets = list(app[WEBSOCKETS])
        assert len(sockets) == 2
        for sws in sockets:
            transport = sws._req.transport  # type: ignore[union-attr]
            transport.get_protocol().pause_writing()  # its send buffer is full
        async with asyncio.timeout(2.0):
            await relay_app._close_websockets(app)
            for ws in clients:  # dropped: the clients see the connection end
                while not ws.closed:
                    await ws.receive()
        assert all(sws.closed for sws in sockets)


class NoPrekeyCounts(MemoryStore):
    async def prekey_counts(self, account_id: bytes) -> PrekeyCounts:
        raise StoreError("disk on fire")


async def _answer_to_ping(c: RelayClient) -> list[Frame]:
    """What arrives until the ``Pong`` of a ``Ping`` sent now (in order, Pong last)."""
    rid = c.rid()
    await c.ws.send_bytes(Ping(request_id=rid).encode())
    seen: list[Frame] = []
    async with asyncio.timeout(5):
        while not seen or not isinstance(seen[-1], Pong):
            seen.append(await c.notices.get())
    return seen


async def test_a_failure_after_the_answer_adds_no_second_answer(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """Work done after a request was answered (the prekeys-low check after ``Welcome``,
    the bus publish after ``Sent``) may fail; the request keeps its one answer."""
    async def broken_publish(self: InProcessBus, items: object) -> list[int]:
        raise RuntimeError("bus bug")

    monkeypatch.setattr(InProcessBus, "publish_many", broken_publish)
    store = NoPrekeyCounts()
    app = create_app(config(tmp_path), store=store)
    async with TestClient(TestServer(app, host="127.0.0.1")) as client:
        url = str(client.make_url(""))
        first = await connect_user(url)  # Register: a new account is not checked
        assert first.identity is not None
        box = await first.create_mailbox()
        again = await logged_in(url, first.identity)  # Welcome, then the check fails
        assert await _answer_to_ping(again) == [Pong(request_id=again._next_rid)]
        sender = await anonymous(url)
        assert isinstance(await sender.send([box], b"hello"), Sent)  # then publish fails
        assert await _answer_to_ping(sender) == [Pong(request_id=sender._next_rid)]
        for c in (first, again, sender):
            await c.close()
    await store.close()


async def test_the_mailbox_cap_counts_every_connection_of_the_account(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(handlers_mailbox, "MAX_MAILBOXES_PER_ACCOUNT", 3)
    app = create_app(config(tmp_path))
    async with TestClient(TestServer(app, host="127.0.0.1")) as client:
        url = str(client.make_url(""))
        first = await connect_user(url)
        assert first.identity is not None
        second = await logged_in(url, first.identity)
        await first.create_mailbox()  # each connection has seen some of the three
        await second.create_mailbox()
        await first.create_mailbox()
        refused = await second.error(lambda rid: CreateMailbox(request_id=rid,
                                                               capability_hash=bytes(32)))
        assert refused.code == ErrorCode.QUOTA_EXCEEDED
        for c in (first, second):
            await c.close()
