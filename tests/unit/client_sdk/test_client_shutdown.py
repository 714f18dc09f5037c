"""AsyncClient at the edges of cancellation and close(): a cancelled call stops, and
nothing a caller awaits is left unresolved by close(). No relay: the client is opened
without one, and a stand-in connection loop is installed where a test needs one."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator
from pathlib import Path

import pytest

from client_sdk import AsyncClient
from client_sdk.errors import ConnectionLost
from client_sdk.store import Durability

from .support import FAST

_GUARD_S = 2.0
"""Bounds every wait here: a hang fails the test instead of stalling the run."""


@pytest.fixture
async def client(tmp_path: Path) -> AsyncIterator[AsyncClient]:
    client = AsyncClient.open(tmp_path / "alice.pigeon", "pass", params=FAST,
                              durability=Durability.OFF)
    await client.start()
    try:
        yield client
    finally:
        async with asyncio.timeout(_GUARD_S):
            await client.close()


class _SlowLoop:
    """A connection loop whose unwinding takes a while once cancelled (the real one
    closes its WebSockets on the way out), until ``release``."""

    def __init__(self) -> None:
        self.cancelled = asyncio.Event()
        self.release = asyncio.Event()
        self.task = asyncio.ensure_future(self._run())

    async def _run(self) -> None:
        try:
            await asyncio.Event().wait()
        finally:
            self.cancelled.set()
            await self.release.wait()


async def test_a_cancelled_register_stops(client: AsyncClient) -> None:
    loop = _SlowLoop()
    client._loop_task = loop.task
    registering = asyncio.ensure_future(client.register(timeout_s=30))
    async with asyncio.timeout(_GUARD_S):
        await loop.cancelled.wait()  # register() waits for the old loop to unwind
    registering.cancel()
    loop.release.set()
    with pytest.raises(asyncio.CancelledError):
        async with asyncio.timeout(_GUARD_S):
            await registering
    assert client._loop_task is loop.task  # no new loop was started


async def test_close_during_register_starts_no_loop(client: AsyncClient) -> None:
    loop = _SlowLoop()
    client._loop_task = loop.task
    registering = asyncio.ensure_future(client.register(timeout_s=30))
    async with asyncio.timeout(_GUARD_S):
        await loop.cancelled.wait()
    closing = asyncio.ensure_future(client.close())
    await asyncio.sleep(0)
    loop.release.set()
    async with asyncio.timeout(_GUARD_S):
        with pytest.raises(ConnectionLost):
            await registering
        await closing
    assert client._loop_task is loop.task
    assert client._session is None  # no connection loop opened a session after close()
