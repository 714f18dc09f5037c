"""The node's ack coalescer (``relay.connection.AckCoalescer``, docs/relay.md §14.5).

The acks every connection sends in one event-loop iteration reach the store as one
``ack_many`` call, merged per connection and mailbox; a failed call answers each merged
ack ``UNAVAILABLE`` with its last request id; ``drain`` flushes a closing connection's
acks at once and waits for them.
"""

from __future__ import annotations

import asyncio
from collections.abc import Sequence
from types import SimpleNamespace
from typing import Any

from pigeon_crypto.errors import StoreError
from protocol import ErrorCode, decode_frame
from relay.connection import AckCoalescer

A, B = b"\xaa" * 16, b"\xbb" * 16


class _Store:
    def __init__(self, fail: bool = False) -> None:
        self.calls: list[list[tuple[bytes, int | None, tuple[int, ...]]]] = []
        self.fail = fail
        self.release = asyncio.Event()
        self.release.set()

    async def ack_many(self, requests: Sequence[tuple[bytes, int | None, Sequence[int]]]
                       ) -> list[int]:
        self.calls.append([(m, up, tuple(seqs)) for m, up, seqs in requests])
        await self.release.wait()
        if self.fail:
            raise StoreError("disk I/O error")
        return [0] * len(requests)


class _Conn:
    def __init__(self) -> None:
        self.sent: list[Any] = []

    async def send(self, data: bytes) -> None:
        self.sent.append(decode_frame(data))


def _coalescer(store: _Store) -> AckCoalescer:
    return AckCoalescer(SimpleNamespace(store=store))  # type: ignore[arg-type]


async def test_one_store_call_per_iteration_for_every_connection() -> None:
    store = _Store()
    acks = _coalescer(store)
    one, two, three = _Conn(), _Conn(), _Conn()
    acks.add(one, A, 3, (), 10)  # type: ignore[arg-type]
    acks.add(one, A, 5, (9, 4), 11)  # type: ignore[arg-type]  # merged with the first
    acks.add(two, B, 0, (7,), 20)  # type: ignore[arg-type]  # selective only
    acks.add(three, A, 2, (), 30)  # type: ignore[arg-type]  # another connection, same mailbox
    assert store.calls == []  # flushed after this iteration, not per ack
    await asyncio.sleep(0)
    await asyncio.sleep(0)
    assert store.calls == [[(A, 5, (9,)), (B, None, (7,)), (A, 2, ())]]
    acks.add(two, B, 8, (), 21)  # type: ignore[arg-type]
    await asyncio.sleep(0)
    await asyncio.sleep(0)
    assert store.calls[1:] == [[(B, 8, ())]]
    assert one.sent == two.sent == three.sent == []


async def test_a_failed_flush_answers_each_ack_with_its_last_request_id() -> None:
    store = _Store(fail=True)
    acks = _coalescer(store)
    one, two = _Conn(), _Conn()
    acks.add(one, A, 3, (), 10)  # type: ignore[arg-type]
    acks.add(one, A, 4, (), 11)  # type: ignore[arg-type]
    acks.add(one, B, 1, (), 12)  # type: ignore[arg-type]
    acks.add(two, A, 1, (), 20)  # type: ignore[arg-type]
    await acks.drain(two)  # type: ignore[arg-type]
    assert [(e.request_id, e.code) for e in one.sent] == [
        (11, ErrorCode.UNAVAILABLE), (12, ErrorCode.UNAVAILABLE)]
    assert [(e.request_id, e.code) for e in two.sent] == [(20, ErrorCode.UNAVAILABLE)]
    assert all(e.retry_after_ms for e in one.sent + two.sent)


async def test_drain_flushes_at_once_and_waits_for_the_commit() -> None:
    store = _Store()
    store.release.clear()
    acks = _coalescer(store)
    conn = _Conn()
    acks.add(conn, A, 3, (), 10)  # type: ignore[arg-type]
    drain = asyncio.create_task(acks.drain(conn))  # type: ignore[arg-type]
    for _ in range(3):
        await asyncio.sleep(0)
    assert store.calls == [[(A, 3, ())]] and not drain.done()
    store.release.set()
    await asyncio.wait_for(drain, 1)
    await asyncio.sleep(0)
    assert len(store.calls) == 1  # the scheduled flush found nothing left
