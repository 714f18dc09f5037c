"""Content-free push wake-ups against a real local HTTP receiver on 127.0.0.1."""

from __future__ import annotations

import asyncio
import socket
from collections.abc import AsyncIterator
from dataclasses import dataclass, field

import pytest
from aiohttp import web

from relay.metrics import PrometheusMetrics
from relay.push import WAKE_HEADERS, PushNotifier, validate_push_url


@dataclass
class Received:
    method: str
    path: str
    query: str
    headers: dict[str, str]
    body: bytes


@dataclass
class Receiver:
    base: str
    requests: list[Received] = field(default_factory=list)
    release: asyncio.Event = field(default_factory=asyncio.Event)
    held: asyncio.Event = field(default_factory=asyncio.Event)
    """Set when a ``/hold`` request reaches the receiver."""
    in_flight: int = 0
    max_in_flight: int = 0


@pytest.fixture
async def receiver() -> AsyncIterator[Receiver]:
    rec = Receiver(base="")

    async def handle(request: web.Request) -> web.Response:
        rec.requests.append(Received(request.method, request.path, request.query_string,
                                     dict(request.headers), await request.read()))
        kind = request.path.split("/")[1]
        if kind in ("hold", "hold-gone"):
            rec.in_flight += 1
            rec.max_in_flight = max(rec.max_in_flight, rec.in_flight)
            rec.held.set()
            try:
                await rec.release.wait()
            finally:
                rec.in_flight -= 1
        if kind == "slow":
            await asyncio.sleep(2)
        if kind == "redirect":
            raise web.HTTPFound("/ok/elsewhere")
        status = {"gone": 410, "hold-gone": 410, "missing": 404, "fail": 500}.get(kind, 201)
        return web.Response(status=status)

    app = web.Application()
    app.router.add_route("*", "/{tail:.*}", handle)
    runner = web.AppRunner(app, access_log=None, shutdown_timeout=0.5)
    await runner.setup()
    site = web.TCPSite(runner, "127.0.0.1", 0)
    await site.start()
    host, port = runner.addresses[0][:2]
    rec.base = f"http://{host}:{port}"
    try:
        yield rec
    finally:
        rec.release.set()
        await runner.cleanup()


def closed_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


async def test_wake_up_carries_nothing(receiver: Receiver) -> None:
    metrics = PrometheusMetrics()
    push = PushNotifier(allow_insecure=True, metrics=metrics)
    try:
        url = receiver.base + "/ok/device-7f3a?topic=abc"
        assert push.wake(url) is True
        await push.drain()
    finally:
        await push.close()
    assert len(receiver.requests) == 1
    req = receiver.requests[0]
    assert req.method == "POST"
    assert req.path == "/ok/device-7f3a" and req.query == "topic=abc"  # the URL as registered
    assert req.body == b""  # no sender, no mailbox, no count, no content
    expected = {"host", "content-length", "accept", "accept-encoding", "connection",
                *(k.lower() for k in WAKE_HEADERS)}
    assert {k.lower() for k in req.headers} <= expected
    assert req.headers["User-Agent"] == "pigeon-relay"
    assert push.stats.sent == 1 and push.stats.failed == 0
    assert b'pigeon_relay_push_wakeups_total{result="sent"} 1.0' in metrics.render()


async def test_burst_is_coalesced_and_the_last_wake_is_kept(receiver: Receiver) -> None:
    push = PushNotifier(allow_insecure=True, min_interval_s=0.2)
    url = receiver.base + "/ok/a"
    try:
        loop = asyncio.get_running_loop()
        assert push.wake(url) is True
        assert push.wake(url) is False  # the pending one covers it
        await push.drain()
        first = loop.time()
        assert push.wake(url) is True  # inside the interval: deferred, not dropped
        assert push.wake(url) is False
        await push.drain()
        assert loop.time() - first >= 0.15
    finally:
        await push.close()
    assert len(receiver.requests) == 2
    assert push.stats.coalesced == 2 and push.stats.sent == 2


async def test_a_wake_during_the_post_gets_one_more_after_it(receiver: Receiver) -> None:
    """The device may have answered the first POST before the envelope that asked for the
    second one was stored: coalescing that into the POST in flight would lose it."""
    push = PushNotifier(allow_insecure=True, min_interval_s=0.2)
    url = receiver.base + "/hold/a"
    try:
        loop = asyncio.get_running_loop()
        assert push.wake(url) is True
        await asyncio.wait_for(receiver.held.wait(), 5)  # the POST is at the receiver
        started = loop.time()
        for _ in range(3):
            assert push.wake(url) is False  # one trailing POST covers them all
        receiver.release.set()
        await push.drain()
        assert loop.time() - started >= 0.15  # the interval still holds
    finally:
        await push.close()
    assert len(receiver.requests) == 2
    assert push.stats.sent == 2 and push.stats.coalesced == 3


async def test_a_wake_while_the_post_waits_for_a_slot_is_covered_by_it(
        receiver: Receiver) -> None:
    push = PushNotifier(allow_insecure=True, concurrency=1, min_interval_s=0.1)
    try:
        assert push.wake(receiver.base + "/hold/a") is True  # takes the only slot
        await asyncio.wait_for(receiver.held.wait(), 5)
        assert push.wake(receiver.base + "/ok/b") is True  # waits for the slot
        await asyncio.sleep(0.05)
        assert push.wake(receiver.base + "/ok/b") is False  # nothing posted yet: covered
        receiver.release.set()
        await push.drain()
    finally:
        await push.close()
    assert [r.path for r in receiver.requests].count("/ok/b") == 1


async def test_a_gone_url_gets_no_trailing_post(receiver: Receiver) -> None:
    push = PushNotifier(allow_insecure=True, min_interval_s=0.05)
    url = receiver.base + "/hold-gone"
    try:
        assert push.wake(url) is True
        await asyncio.wait_for(receiver.held.wait(), 5)
        assert push.wake(url) is False  # during the POST: would follow it, but it is gone
        receiver.release.set()
        await push.drain()
    finally:
        await push.close()
    assert len(receiver.requests) == 1 and push.stats.gone == 1


async def test_failures_are_counted_never_raised(receiver: Receiver) -> None:
    gone: list[str] = []
    push = PushNotifier(allow_insecure=True, timeout_s=0.3, on_gone=gone.append)
    try:
        assert await push.send_now(receiver.base + "/fail") is False
        assert await push.send_now(receiver.base + "/slow") is False  # timeout
        assert await push.send_now(f"http://127.0.0.1:{closed_port()}/x") is False  # refused
        assert await push.send_now(receiver.base + "/redirect") is False  # not followed
        assert await push.send_now(receiver.base + "/gone") is False
        assert await push.send_now(receiver.base + "/missing") is False
        push.wake(receiver.base + "/fail")  # scheduled: errors stay inside the task
        await push.drain()
    finally:
        await push.close()
    assert push.stats.failed == 5 and push.stats.gone == 2 and push.stats.sent == 0
    assert gone == [receiver.base + "/gone", receiver.base + "/missing"]
    assert not any(r.path == "/ok/elsewhere" for r in receiver.requests)


async def test_concurrency_is_bounded(receiver: Receiver) -> None:
    push = PushNotifier(allow_insecure=True, concurrency=2)
    try:
        for i in range(5):
            assert push.wake(f"{receiver.base}/hold/{i}")
        for _ in range(100):
            if receiver.in_flight == 2:
                break
            await asyncio.sleep(0.01)
        await asyncio.sleep(0.05)
        assert receiver.in_flight == 2 and push.pending == 5
        receiver.release.set()
        await push.drain()
    finally:
        await push.close()
    assert receiver.max_in_flight == 2 and push.stats.sent == 5


async def test_pending_limit_drops_and_close_cancels(receiver: Receiver) -> None:
    push = PushNotifier(allow_insecure=True, max_pending=2, concurrency=1)
    assert push.wake(receiver.base + "/hold/1")
    assert push.wake(receiver.base + "/hold/2")
    assert push.wake(receiver.base + "/hold/3") is False
    assert push.stats.dropped == 1
    await asyncio.sleep(0.05)
    await push.close()  # cancels the held and the queued wake-up, and waits for them
    assert push.pending == 0
    assert push.wake(receiver.base + "/ok") is False  # closed


async def test_wake_refuses_insecure_urls_by_default(receiver: Receiver) -> None:
    push = PushNotifier()
    try:
        assert push.wake(receiver.base + "/ok") is False  # http and loopback
        await push.drain()
    finally:
        await push.close()
    assert receiver.requests == [] and push.stats.dropped == 1


@pytest.mark.parametrize("url", [
    "http://push.example/x", "ftp://push.example/x", "https://user:pw@push.example/x",
    "https://127.0.0.1/x", "https://10.1.2.3/x", "https://[::1]/x", "https://localhost/x",
    "https://169.254.169.254/latest", "https:///nohost", "https://push.example:99999/",
    "https://push.example/" + "a" * 600,
])
def test_validate_push_url_refuses(url: str) -> None:
    with pytest.raises(ValueError) as err:
        validate_push_url(url)
    assert url not in str(err.value)  # the URL is a secret address: never echoed


def test_validate_push_url_accepts() -> None:
    for url in ("https://push.example/up/abc?x=1", "https://93.184.216.34/w"):
        assert validate_push_url(url) == url
    assert validate_push_url("http://127.0.0.1:8080/x", allow_insecure=True)
