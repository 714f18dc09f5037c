"""RelayConnection's request correlation at the edges the event loop can reach: an
answer and a cancellation in the same loop turn."""

from __future__ import annotations

import asyncio
from typing import Any, cast

import aiohttp
import pytest

from client_sdk._connection import RelayConnection
from protocol import Ping, Pong
from protocol.frames import Frame


class _Socket:
    """The two members of a client WebSocket that sending a request touches."""

    close_code: int | None = None

    def __init__(self) -> None:
        self.sent: list[bytes] = []

    async def send_bytes(self, data: bytes) -> None:
        self.sent.append(data)


def _connection() -> RelayConnection:
    frames: list[Frame] = []
    return RelayConnection(cast(aiohttp.ClientWebSocketResponse, _Socket()), frames.append)


async def _awaiting(conn: RelayConnection) -> tuple[asyncio.Task[Any], int]:
    task = asyncio.ensure_future(conn.request(lambda rid: Ping(request_id=rid)))
    for _ in range(3):
        await asyncio.sleep(0)  # the request is sent and its caller awaits the answer
    (request_id,) = conn._pending
    return task, request_id


async def test_a_cancellation_in_the_answers_turn_is_not_swallowed() -> None:
    # The connection loop is cancelled on close() while it awaits a request; if the
    # answer lands in the same turn the cancellation must still win, or the loop runs
    # on and close() waits for it forever.
    conn = _connection()
    task, request_id = await _awaiting(conn)
    conn._dispatch(Pong(request_id=request_id).encode())
    task.cancel()
    with pytest.raises(asyncio.CancelledError):
        await task
    assert not conn._pending


async def test_an_answer_resolves_the_request() -> None:
    conn = _connection()
    task, request_id = await _awaiting(conn)
    conn._dispatch(Pong(request_id=request_id).encode())
    assert await task == Pong(request_id=request_id)
    assert not conn._pending


async def test_no_answer_in_time_is_a_timeout() -> None:
    conn = _connection()
    with pytest.raises(TimeoutError):
        await conn.request(lambda rid: Ping(request_id=rid), timeout_s=0.01)
    assert not conn._pending
