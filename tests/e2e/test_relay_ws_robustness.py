"""Bad input against the real relay: oversize, malformed and misdirected frames, text
messages, unknown versions and types, repeated misbehaviour. The offending connection is
answered with the decoder's error code and closed when the error is fatal or repeated;
the relay keeps serving everyone else."""

from __future__ import annotations

import asyncio
from collections.abc import Iterator

import aiohttp
import msgpack
import pytest

from protocol import Error, ErrorCode, Ping, Pong, Sent

from ._relay_fixtures import metric_value
from .conftest import RelayProcess, launch_relay
from .wsclient import RelayClient, anonymous, connect_user

THRESHOLD = 3


@pytest.fixture(scope="module")
def relay(tmp_path_factory: pytest.TempPathFactory) -> Iterator[RelayProcess]:
    rp = launch_relay(tmp_path_factory.mktemp("ws-robust"),
                      ["--misbehaviour-threshold", str(THRESHOLD)])
    yield rp
    rp.kill()


def frame(*items: object) -> bytes:
    out: bytes = msgpack.packb(list(items), use_bin_type=True)
    return out


async def next_error(c: RelayClient) -> Error:
    return await c.next_notice(Error)


async def closed(c: RelayClient) -> int | None:
    await asyncio.wait_for(c.closed.wait(), 5)
    return c.close_code


async def still_serving(url: str) -> None:
    """A fresh pair still gets a message through, and /health is fine."""
    bob = await connect_user(url)
    box = await bob.create_mailbox()
    await bob.subscribe(box)
    alice = await anonymous(url)
    assert isinstance(await alice.send([box], b"still here"), Sent)
    assert (await bob.next_delivery()).blob == b"still here"
    async with aiohttp.ClientSession() as http, http.get(url + "/health") as resp:
        assert resp.status == 200
    await bob.close()
    await alice.close()


async def test_oversize_frame_closes_that_connection_only(relay: RelayProcess) -> None:
    bystander = await connect_user(relay.url)
    box = await bystander.create_mailbox()
    await bystander.subscribe(box)
    before = await metric_value(relay.url, "pigeon_relay_misbehaviour_closes_total")
    c = await anonymous(relay.url)
    await c.send_raw(b"\x00" * (256 * 1024 + 1))
    assert await closed(c) == 1009  # message too big, refused before it was buffered
    assert await metric_value(relay.url, "pigeon_relay_misbehaviour_closes_total") > before
    sender = await anonymous(relay.url)
    assert isinstance(await sender.send([box], b"after"), Sent)
    assert (await bystander.next_delivery()).blob == b"after"
    await still_serving(relay.url)
    for client in (bystander, sender, c):
        await client.close()


async def test_fatal_errors_answer_then_close(relay: RelayProcess) -> None:
    fatal = [
        (b"\xc1", ErrorCode.MALFORMED_FRAME),  # reserved msgpack byte
        (b"\x94\x01\x28", ErrorCode.MALFORMED_FRAME),  # truncated
        (frame(2, 1, 1, {}), ErrorCode.UNSUPPORTED_VERSION),
        (frame(1, 99, 1, {}), ErrorCode.UNKNOWN_TYPE),  # cannot be tied to a request
        (frame(1, 45, 0, {1: bytes(16), 2: 1}), ErrorCode.INVALID_FIELD),  # Ack, request id 0
    ]
    for data, code in fatal:
        c = await anonymous(relay.url)
        await c.send_raw(data)
        err = await next_error(c)
        assert (err.request_id, err.code) == (0, code), data
        assert await closed(c) == 1002
        await c.close()
    c = await anonymous(relay.url)
    await c.send_raw("a text message is not a frame")
    err = await next_error(c)
    assert err.code == ErrorCode.MALFORMED_FRAME
    assert await closed(c) == 1002
    await c.close()
    await still_serving(relay.url)


async def test_request_errors_keep_the_connection_until_the_threshold(
        relay: RelayProcess) -> None:
    c = await anonymous(relay.url)
    bad = [
        (frame(1, 40, 7, {2: b"blob", 3: [[bytes(16), bytes(32)]]}), 7,
         ErrorCode.MISSING_FIELD),  # Send without client_msg_id
        (frame(1, 41, 8, {}), 8, ErrorCode.UNEXPECTED_FRAME),  # Sent goes relay -> client
    ]
    for data, rid, code in bad:
        await c.send_raw(data)
        err = await next_error(c)
        assert (err.request_id, err.code) == (rid, code)
    # Still open and served between the bad frames.

    assert isinstance(await c.request(lambda rid: Ping(request_id=rid)), Pong)
    # The third bad frame reaches the threshold: answered, then closed.
    await c.send_raw(frame(1, 40, 9, {1: b"short", 2: b"x", 3: [[bytes(16), bytes(32)]]}))
    err = await next_error(c)
    assert (err.request_id, err.code) == (9, ErrorCode.INVALID_FIELD)
    assert await closed(c) == 1002
    await c.close()
    await still_serving(relay.url)
