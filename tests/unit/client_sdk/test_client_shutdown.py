"""AsyncClient at the edges of cancellation and close(): a cancelled call stops, and
nothing a caller awaits is left unresolved by close(). No relay: the client is opened
without one, and a stand-in connection loop is installed where a test needs one."""

from __future__ import annotations

import asyncio
import functools
import threading
from collections.abc import AsyncIterator, Callable
from pathlib import Path
from typing import TypeVar

import pytest

from client_sdk import AsyncClient, _client_background, _sending
from client_sdk._sending import SendText
from client_sdk.core import ClientCore
from client_sdk.errors import ConnectionLost
from client_sdk.store import Durability, Profile

from .support import FAST

_GUARD_S = 2.0
"""Bounds every wait here: a hang fails the test instead of stalling the run."""
T = TypeVar("T")


@pytest.fixture
async def client(tmp_path: Path) -> AsyncIterator[AsyncClient]:
    # A relay URL nothing listens on: the tests replace the connection loop.
    client = AsyncClient.open(tmp_path / "alice.pigeon", "pass", params=FAST,
                              durability=Durability.OFF, relay_url="http://127.0.0.1:9")
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


async def test_close_fails_the_sends_it_interrupts(client: AsyncClient,
                                                   monkeypatch: pytest.MonkeyPatch) -> None:
    await client._run(lambda c: c.create_identity())
    in_flight = asyncio.Event()
    taken: list[_sending.Intent] = []
    run = client._run

    async def spy(fn: Callable[[ClientCore], T]) -> T:
        if isinstance(fn, functools.partial) and fn.func is _client_background._submit:
            taken.extend(fn.keywords["intents"])
            in_flight.set()  # the sender took the batch off the queue, to the worker
        return await run(fn)

    monkeypatch.setattr(client, "_run", spy)
    gate = threading.Event()
    assert client._executor is not None
    busy = asyncio.get_running_loop().run_in_executor(client._executor, gate.wait, _GUARD_S)
    first = client._queue_intents([SendText(peer=bytes(16), text="a")])
    async with asyncio.timeout(_GUARD_S):
        await in_flight.wait()
    assert [i.text for i in taken if isinstance(i, SendText)] == ["a"]
    assert client._tx == []  # "a" is in the batch only: the queue cannot answer for it
    second = client._queue_intents([SendText(peer=bytes(16), text="b")])
    closing = asyncio.ensure_future(client.close())
    async with asyncio.timeout(_GUARD_S):
        # Answered while the worker is still busy: by the cancelled sender, not the worker.
        await asyncio.wait([*first, *second])
    gate.set()
    async with asyncio.timeout(_GUARD_S):
        await busy
        await closing
        for future in (*first, *second):
            with pytest.raises(ConnectionLost):
                await future
    with pytest.raises(ConnectionLost):
        client._queue_intents([SendText(peer=bytes(16), text="c")])


async def test_waiting_for_a_connection_ends_with_close(client: AsyncClient) -> None:
    waiting = asyncio.ensure_future(client.wait_connected())  # no timeout
    await asyncio.sleep(0)
    async with asyncio.timeout(_GUARD_S):
        await client.close()
        with pytest.raises(ConnectionLost):
            await waiting
        assert [e async for e in client.events()] == []  # after close: ends at once


def _reopen(path: Path) -> None:
    """Open the profile again: ProfileLocked while a client still holds it."""
    Profile.open(path, "pass", durability=Durability.OFF).close()


async def test_a_cancelled_close_is_finished(client: AsyncClient) -> None:
    stuck = _SlowLoop()  # background work slow to unwind: close() waits on it
    client._tasks.add(stuck.task)
    closing = asyncio.ensure_future(client.close())
    async with asyncio.timeout(_GUARD_S):
        await stuck.cancelled.wait()
    closing.cancel()
    with pytest.raises(asyncio.CancelledError):
        async with asyncio.timeout(_GUARD_S):
            await closing
    stuck.release.set()
    async with asyncio.timeout(_GUARD_S):
        await client.close()  # waits for the closing the cancel left going, or redoes it
    _reopen(client.path)


async def test_a_second_close_waits_for_the_first(client: AsyncClient) -> None:
    stuck = _SlowLoop()
    client._tasks.add(stuck.task)
    first = asyncio.ensure_future(client.close())
    async with asyncio.timeout(_GUARD_S):
        await stuck.cancelled.wait()
    second = asyncio.ensure_future(client.close())
    for _ in range(5):
        await asyncio.sleep(0)
    assert not second.done()  # the profile is still open: not closed yet
    stuck.release.set()
    async with asyncio.timeout(_GUARD_S):
        await second
        await first
    _reopen(client.path)


async def test_a_cancelled_closing_starts_again(client: AsyncClient) -> None:
    stuck = _SlowLoop()
    client._tasks.add(stuck.task)
    closing = asyncio.ensure_future(client.close())
    async with asyncio.timeout(_GUARD_S):
        await stuck.cancelled.wait()
    assert client._close_task is not None
    client._close_task.cancel()  # as asyncio.run cancels every task left on its way out
    with pytest.raises(asyncio.CancelledError):
        async with asyncio.timeout(_GUARD_S):
            await closing
    stuck.release.set()
    async with asyncio.timeout(_GUARD_S):
        await client.close()
    _reopen(client.path)
