"""The AsyncClient over a real WebSocket, against the frame-level fake relay of
test_core.py served by aiohttp in this process (the real relay process is exercised by
tests/e2e/test_sdk_*.py). Covers the connection loop, request correlation, the outbox
pump, batching, acks, reconnect and the event API."""

from __future__ import annotations

import asyncio
import logging
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import pytest
from aiohttp import WSMsgType, web

from client_sdk import (
    AsyncClient,
    ClientError,
    ConnectionLost,
    ContactAccepted,
    Event,
    InvitationReceived,
    MessageReceived,
    MessageStatus,
    MessageStatusChanged,
    Reconnected,
    TypingChanged,
    WrongPassphrase,
)
from client_sdk.store import Durability
from pigeon_crypto.identity import IdentityPublicKey
from pigeon_crypto.signing import Purpose
from protocol import ErrorCode
from protocol.frames import (
    Ack,
    Auth,
    Connect,
    CreateMailbox,
    Delivery,
    Direction,
    EphemeralDelivery,
    Error,
    FetchBundle,
    Ok,
    Register,
    RotateMailbox,
    Send,
    SendEphemeral,
    SetContactMailbox,
    Subscribe,
    Subscribed,
    UploadPrekeys,
    Welcome,
    decode_frame,
)
from protocol.payloads import challenge_payload

from .support import FAST
from .test_core import FakeRelay


class WsFakeRelay:
    """FakeRelay behind ``GET /v1/ws``; pushes deliveries to subscribed sockets."""

    def __init__(self) -> None:
        self.relay = FakeRelay()
        self.subscribers: dict[bytes, web.WebSocketResponse] = {}
        self.sockets: set[web.WebSocketResponse] = set()
        self.sent_frames = 0

    async def handler(self, request: web.Request) -> web.WebSocketResponse:
        ws = web.WebSocketResponse()
        await ws.prepare(request)
        self.sockets.add(ws)
        account: bytes | None = None
        challenge = None
        try:
            async for msg in ws:
                if msg.type is not WSMsgType.BINARY:
                    continue
                f = decode_frame(msg.data, direction=Direction.TO_RELAY)
                rid = getattr(f, "request_id", 0)
                answer: Any = None
                if isinstance(f, Connect):
                    challenge = self.relay.challenge()
                    answer = challenge.__class__(request_id=rid, relay_id=challenge.relay_id,
                                                 nonce=challenge.nonce,
                                                 server_time_ms=challenge.server_time_ms)
                elif isinstance(f, Register | Auth):
                    assert challenge is not None
                    key = (f.identity_key if isinstance(f, Register)
                           else self.relay.identities[f.account_id])
                    IdentityPublicKey.from_bytes(key).verify(
                        Purpose.RELAY_CHALLENGE,
                        challenge_payload(challenge.relay_id, challenge.nonce,
                                          challenge.server_time_ms, f.account_id), f.signature)
                    account = f.account_id
                    if isinstance(f, Register) and account not in self.relay.identities:
                        self.relay.identities[account] = f.identity_key
                        self.relay.rotations[account] = []
                        self.relay.prekeys[account] = {"otk": [], "kem": []}
                    answer = Welcome(request_id=rid, account_id=account, server_time_ms=0)
                elif isinstance(f, UploadPrekeys):
                    assert account is not None
                    self.relay.upload(account, f)
                    answer = Ok(request_id=rid)
                elif isinstance(f, CreateMailbox):
                    assert account is not None
                    created = self.relay.create_mailbox(account, f.capability_hash)
                    answer = created.__class__(request_id=rid, mailbox_id=created.mailbox_id)
                elif isinstance(f, RotateMailbox):
                    assert account is not None
                    created = self.relay.rotate(account, f.mailbox_id, f.capability_hash)
                    self.subscribers[created.mailbox_id] = ws
                    answer = created.__class__(request_id=rid, mailbox_id=created.mailbox_id)
                elif isinstance(f, SetContactMailbox):
                    assert account is not None
                    self.relay.contact[account] = (f.mailbox_id, f.capability)
                    answer = Ok(request_id=rid)
                elif isinstance(f, Subscribe):
                    for m in f.mailbox_ids:
                        self.subscribers[m] = ws
                    await ws.send_bytes(Subscribed(request_id=rid).encode())
                    for d in self.relay.deliveries(list(f.mailbox_ids)):
                        await ws.send_bytes(d.encode())
                    continue
                elif isinstance(f, FetchBundle):
                    if f.account_id not in self.relay.identities:
                        answer = Error(request_id=rid, code=ErrorCode.UNKNOWN_ACCOUNT)
                    else:
                        b = self.relay.bundle(f.account_id)
                        answer = b.__class__(**{**_fields(b), "request_id": rid})
                elif isinstance(f, Send):
                    before = {m: self.relay.mailboxes[m]["seq"] for m, _ in f.recipients
                              if m in self.relay.mailboxes}
                    answer = self.relay.send(f)
                    self.sent_frames += 1
                    await ws.send_bytes(answer.encode())
                    for m, seq in before.items():
                        box = self.relay.mailboxes[m]
                        target = self.subscribers.get(m)
                        if box["seq"] > seq and target is not None and not target.closed:
                            await target.send_bytes(Delivery(
                                mailbox_id=m, seq=box["seq"], received_at_ms=0,
                                blob=box["queue"][box["seq"]]).encode())
                    continue
                elif isinstance(f, SendEphemeral):
                    for m, _ in f.recipients:
                        target = self.subscribers.get(m)
                        if target is not None and not target.closed:
                            await target.send_bytes(EphemeralDelivery(
                                mailbox_id=m, received_at_ms=0, blob=f.blob).encode())
                    continue
                elif isinstance(f, Ack):
                    self.relay.ack(f)
                    continue
                if answer is not None:
                    await ws.send_bytes(answer.encode())
        finally:
            self.sockets.discard(ws)
        return ws

    async def drop_connections(self) -> None:
        for ws in list(self.sockets):
            await ws.close()


def _fields(frame: Any) -> dict[str, Any]:
    import dataclasses
    return {f.name: getattr(frame, f.name) for f in dataclasses.fields(frame)}


@pytest.fixture
async def fake() -> AsyncIterator[tuple[WsFakeRelay, str]]:
    relay = WsFakeRelay()
    app = web.Application()
    app.router.add_get("/v1/ws", relay.handler)
    runner = web.AppRunner(app)
    await runner.setup()
    site = web.TCPSite(runner, "127.0.0.1", 0)
    await site.start()
    port = site._server.sockets[0].getsockname()[1]  # type: ignore[union-attr]
    try:
        yield relay, f"http://127.0.0.1:{port}"
    finally:
        await relay.drop_connections()
        await runner.cleanup()


def _open(tmp_path: Path, name: str, url: str, **kw: Any) -> AsyncClient:
    return AsyncClient.open(tmp_path / f"{name}.pigeon", "pass " + name, relay_url=url,
                            params=FAST, durability=Durability.OFF,
                            reconnect_cap_ms=300, **kw)


async def _next(client: AsyncClient, kind: type[Event], *, timeout_s: float = 10.0,
                **match: Any) -> Any:
    async with asyncio.timeout(timeout_s):
        async for event in client.events():
            if isinstance(event, kind) and all(getattr(event, k) == v
                                               for k, v in match.items()):
                return event
    raise AssertionError("events ended")


class Inbox:
    """Collects a client's events from the start."""

    def __init__(self, client: AsyncClient) -> None:
        self.events: list[Event] = []
        self.changed = asyncio.Event()
        client.on(Event, self._add)

    def _add(self, event: Event) -> None:
        self.events.append(event)
        self.changed.set()

    async def wait(self, kind: type[Event], count: int = 1, timeout_s: float = 15.0,
                   **match: Any) -> list[Any]:
        async with asyncio.timeout(timeout_s):
            while True:
                got = [e for e in self.events if isinstance(e, kind)
                       and all(getattr(e, k) == v for k, v in match.items())]
                if len(got) >= count:
                    return got
                self.changed.clear()
                await self.changed.wait()


async def test_two_clients_over_websocket(fake: tuple[WsFakeRelay, str],
                                          tmp_path: Path) -> None:
    _, url = fake
    async with _open(tmp_path, "alice", url) as alice, _open(tmp_path, "bob", url) as bob:
        a_in, b_in = Inbox(alice), Inbox(bob)
        await alice.register()
        await bob.register()
        await alice.set_profile("Alice")
        await bob.set_profile("Bob")
        await alice.add_contact_by_link(bob.contact_link())
        [invite] = await b_in.wait(InvitationReceived)
        assert invite.peer == alice.account_id and invite.profile_name == "Alice"
        await bob.accept(alice.account_id)
        await a_in.wait(ContactAccepted, by_peer=True)
        ref = await alice.send_text(bob.account_id, "hello")
        [got] = await b_in.wait(MessageReceived)
        assert got.text == "hello" and got.message_id == ref.message_id
        await a_in.wait(MessageStatusChanged, status=MessageStatus.DELIVERED)
        await bob.mark_read(alice.account_id, [ref.message_id])
        await a_in.wait(MessageStatusChanged, status=MessageStatus.READ)
        assert await bob.send_typing(alice.account_id)
        await a_in.wait(TypingChanged, active=True)
        # A burst: group commit on the way out, batches on the way in.
        refs = await alice.send_many(bob.account_id, [f"m{i}" for i in range(300)])
        assert len(refs) == 300
        await b_in.wait(MessageReceived, count=301)
        await a_in.wait(MessageStatusChanged, count=301, status=MessageStatus.SENT)
        assert await alice.outbox_size() == 0
        page = await bob.history(alice.account_id, limit=5)
        assert [m.body for m in page.messages] == ["m295", "m296", "m297", "m298", "m299"]
        assert (await alice.conversation(bob.account_id)).title == "Bob"
        assert alice.safety_number(bob.account_id) == bob.safety_number(alice.account_id)


async def test_reconnect_and_offline_outbox(fake: tuple[WsFakeRelay, str],
                                            tmp_path: Path) -> None:
    relay, url = fake
    async with _open(tmp_path, "alice", url) as alice, _open(tmp_path, "bob", url) as bob:
        a_in, b_in = Inbox(alice), Inbox(bob)
        await alice.register()
        await bob.register()
        await alice.add_contact(bob.account_id)
        await b_in.wait(InvitationReceived)
        await bob.accept(alice.account_id)
        await a_in.wait(ContactAccepted)
        await relay.drop_connections()
        ref = await alice.send_text(bob.account_id, "while reconnecting")
        await a_in.wait(Reconnected, count=2)
        await b_in.wait(MessageReceived, message_id=ref.message_id)
    # Reopen: same account, no re-registration, history kept.
    async with _open(tmp_path, "alice", url) as alice:
        await alice.wait_connected(10)
        assert alice.contact(bob.account_id) is not None
        page = await alice.history(bob.account_id)
        assert [m.body for m in page.messages] == ["while reconnecting"]


async def test_wrong_passphrase(tmp_path: Path, fake: tuple[WsFakeRelay, str]) -> None:
    _, url = fake
    async with _open(tmp_path, "carol", url):
        pass
    with pytest.raises(WrongPassphrase):
        async with AsyncClient.open(tmp_path / "carol.pigeon", "nope", relay_url=url):
            pass


async def test_register_without_a_relay_says_so_at_once(tmp_path: Path) -> None:
    """A new profile opened without ``relay_url`` knows no relay: ``register`` says so
    at once rather than as a TimeoutError after ``timeout_s``."""
    async with AsyncClient.open(tmp_path / "nowhere.pigeon", "pass", params=FAST,
                                durability=Durability.OFF) as client:
        with pytest.raises(ClientError, match="no relay URL"):
            await asyncio.wait_for(client.register(timeout_s=30), 5)
        assert not client.core.registered
        for call in (client.history, client.conversation):  # a hex str, not bytes
            with pytest.raises(TypeError, match=r"bytes\.fromhex"):
                await call("ab" * 16)  # type: ignore[operator]


async def test_register_on_a_relay_named_after_open(tmp_path: Path,
                                                     fake: tuple[WsFakeRelay, str]) -> None:
    """A profile opened without a relay registers on the one ``register`` names and
    remembers it: reopened without one, it connects there. An account cannot move to
    another relay by registering again."""
    _, url = fake
    path = tmp_path / "later.pigeon"
    async with AsyncClient.open(path, "pass", params=FAST,
                                durability=Durability.OFF) as client:
        account = await client.register(relay_url=url, timeout_s=10)
        assert client.core.registered
        with pytest.raises(ClientError, match="another relay"):
            await client.register(relay_url="http://127.0.0.1:9")
        assert await client.register(relay_url=url, timeout_s=10) == account  # harmless
    async with AsyncClient.open(path, "pass", params=FAST,
                                durability=Durability.OFF) as client:
        await client.wait_connected(10)
        assert client.account_id == account


async def test_wait_for_one_event_bounded(tmp_path: Path) -> None:
    """``wait_for``: the next matching event from now on; a timeout leaves the client
    and its other listeners as they were; closing the client ends the wait."""
    async with AsyncClient.open(tmp_path / "w.pigeon", "pass", params=FAST,
                                durability=Durability.OFF) as client:
        seen: list[Event] = []
        client.on(Event, seen.append)
        handlers = len(client._handlers)

        def typing(peer: bytes, active: bool) -> TypingChanged:
            return TypingChanged(peer=peer, active=active)

        waiting = asyncio.ensure_future(client.wait_for(
            TypingChanged, peer=b"b" * 16, check=lambda e: e.active, timeout_s=5))
        await asyncio.sleep(0)
        client._emit([typing(b"a" * 16, True), typing(b"b" * 16, False),
                      typing(b"b" * 16, True)])
        got = await waiting
        assert got == typing(b"b" * 16, True) and len(seen) == 3
        with pytest.raises(TimeoutError):
            await client.wait_for(TypingChanged, timeout_s=0.05)
        with pytest.raises(TypeError, match="no field per"):
            await client.wait_for(TypingChanged, per=b"b" * 16, timeout_s=5)
        client._emit([typing(b"c" * 16, True)])  # listeners still there; no waiter left
        assert len(seen) == 4 and len(client._handlers) == handlers

        def broken(event: TypingChanged) -> bool:
            raise ValueError("the predicate's own error")

        waiting = asyncio.ensure_future(client.wait_for(TypingChanged, check=broken))
        await asyncio.sleep(0)
        client._emit([typing(b"d" * 16, True)])
        with pytest.raises(ValueError, match="predicate"):
            await waiting
        waiting = asyncio.ensure_future(client.wait_for(MessageReceived))
        await asyncio.sleep(0)
    with pytest.raises(ConnectionLost):
        await asyncio.wait_for(waiting, 5)


async def test_a_failing_handler_is_logged_and_the_others_go_on(
        tmp_path: Path, caplog: pytest.LogCaptureFixture) -> None:
    async with AsyncClient.open(tmp_path / "h.pigeon", "pass", params=FAST,
                                durability=Durability.OFF) as client:
        seen: list[Event] = []

        def broken(event: Event) -> None:
            raise RuntimeError("sync handler bug")

        async def broken_async(event: Event) -> None:
            raise RuntimeError("async handler bug")

        client.on(TypingChanged, broken)
        client.on(TypingChanged, broken_async)
        client.on(TypingChanged, seen.append)
        with caplog.at_level(logging.ERROR, logger="pigeon.sdk"):
            for active in (True, False):
                client._emit([TypingChanged(peer=b"p" * 16, active=active)])
            await asyncio.sleep(0.05)
        assert len(seen) == 2  # later handlers and later events still served
        failures = [r for r in caplog.records if r.getMessage() == "event handler failed"]
        assert len(failures) == 4  # two per event, sync and async alike
        assert {str(r.exc_info[1]) for r in failures if r.exc_info} == {
            "sync handler bug", "async handler bug"}


async def test_expect_listens_from_the_call_on(tmp_path: Path) -> None:
    """``expect`` registers at once: an event emitted before ``wait`` is not missed (the
    race ``wait_for`` leaves to whoever triggers the event first); a timeout leaves it
    listening; leaving the ``async with`` stops it."""
    async with AsyncClient.open(tmp_path / "e.pigeon", "pass", params=FAST,
                                durability=Durability.OFF) as client:
        handlers = len(client._handlers)
        async with client.expect(TypingChanged, peer=b"b" * 16) as waiter:
            assert len(client._handlers) == handlers + 1
            with pytest.raises(TimeoutError):
                await waiter.wait(0.02)
            client._emit([TypingChanged(peer=b"a" * 16, active=True),
                          TypingChanged(peer=b"b" * 16, active=True)])  # before wait()
            assert len(client._handlers) == handlers  # answered: it stopped listening
            got = await waiter.wait(1)
            assert got.peer == b"b" * 16 and await waiter.wait() is got
        async with client.expect(TypingChanged) as never:
            pass
        assert len(client._handlers) == handlers
        with pytest.raises(ClientError, match="cancelled"):
            await never.wait(1)
        with pytest.raises(TypeError, match="no field per"):
            client.expect(TypingChanged, per=b"b" * 16)
