"""End to end: the SDK's reliability promises against a real ``pigeon-relay`` process.

Relay restart mid-conversation; a client process killed right after persisting a message
(it goes out exactly once after restart) and right after the relay stored it (the retry
is deduplicated); redelivered (unacked) and out-of-order envelopes; identity rotation;
mailbox rotation; wrong passphrase; a corrupted profile file. Child processes run this
module (``python -m tests.e2e.test_sdk_reliability MODE ...``).
"""

from __future__ import annotations

import asyncio
import os
import signal
import subprocess
import sys
from collections.abc import AsyncIterator
from pathlib import Path

import aiohttp
import pytest

from client_sdk import (
    AsyncClient,
    ContactState,
    Event,
    IdentityChanged,
    MailboxRotated,
    MessageReceived,
    MessageStatus,
    MessageStatusChanged,
    ProfileCorrupt,
    Reconnected,
    WrongPassphrase,
)
from client_sdk.testing import (  # noqa: F401 - fixtures
    FAST_PARAMS,
    ClientFactory,
    RelayProcess,
    pigeon_clients,
    pigeon_relay,
    relay_pipeline_available,
)

REPO = Path(__file__).resolve().parents[2]


@pytest.fixture
async def clients(pigeon_clients: ClientFactory,  # noqa: F811
                  pigeon_relay: RelayProcess) -> AsyncIterator[ClientFactory]:  # noqa: F811
    if not await relay_pipeline_available(pigeon_relay.url):
        pytest.skip("relay pipeline not available (the relay closed with 4501)")
    yield pigeon_clients


class Inbox:
    def __init__(self, client: AsyncClient) -> None:
        self.events: list[Event] = []
        self.changed = asyncio.Event()
        client.on(Event, self._add)

    def _add(self, event: Event) -> None:
        self.events.append(event)
        self.changed.set()

    def of(self, kind: type[Event], **match: object) -> list[Event]:
        return [e for e in self.events if isinstance(e, kind)
                and all(getattr(e, k) == v for k, v in match.items())]

    async def wait(self, kind: type[Event], count: int = 1, timeout_s: float = 20.0,
                   **match: object) -> list[Event]:
        async with asyncio.timeout(timeout_s):
            while len(got := self.of(kind, **match)) < count:
                self.changed.clear()
                await self.changed.wait()
            return got


async def _texts(client: AsyncClient, peer: bytes) -> list[str | None]:
    page = await client.history(peer, limit=500)
    return [m.body for m in page.messages]


async def test_relay_restart_mid_conversation(clients: ClientFactory) -> None:
    alice, bob = await clients("alice"), await clients("bob")
    await clients.connect(alice, bob)
    a, b = Inbox(alice), Inbox(bob)
    await alice.send_text(bob.account_id, "before")
    await b.wait(MessageReceived)
    clients.relay.restart()
    await a.wait(Reconnected)
    await b.wait(Reconnected)
    ref = await alice.send_text(bob.account_id, "after")
    reply = await bob.send_text(alice.account_id, "got it")
    await b.wait(MessageReceived, message_id=ref.message_id)
    await a.wait(MessageReceived, message_id=reply.message_id)
    assert await _texts(bob, alice.account_id) == ["before", "after", "got it"]


async def test_relay_restart_with_messages_in_flight(clients: ClientFactory) -> None:
    alice, bob = await clients("alice"), await clients("bob")
    await clients.connect(alice, bob)
    b = Inbox(bob)
    sending = asyncio.ensure_future(alice.send_many(bob.account_id,
                                                    [f"m{i}" for i in range(200)]))
    await asyncio.sleep(0.05)
    clients.relay.restart()
    await sending
    await b.wait(MessageReceived, count=200, timeout_s=40)
    await asyncio.sleep(0.3)
    assert len(b.of(MessageReceived)) == 200
    assert await _texts(bob, alice.account_id) == [f"m{i}" for i in range(200)]


def _child(mode: str, profile: Path, passphrase: str, url: str, peer: bytes) -> None:
    """Persist one message for *peer*, optionally hand it to the relay, then SIGKILL."""
    from client_sdk import _sending
    from client_sdk._connection import websocket_url
    from client_sdk.core import ClientCore
    from client_sdk.frames import auth_frame, send_frame
    from client_sdk.store import Profile
    from protocol.frames import Challenge, Connect, Sent, Welcome, decode_frame

    store_profile = Profile.open(profile, passphrase)
    core = ClientCore(store_profile.store)
    done = core.submit([_sending.SendText(peer=peer, text=f"killed after {mode}")],
                       now_ms=1)
    [item] = done.items
    if mode == "relay-stored":
        async def hand_over() -> None:
            async with aiohttp.ClientSession() as s, s.ws_connect(websocket_url(url)) as ws:
                await ws.send_bytes(Connect(request_id=1).encode())
                challenge = decode_frame((await ws.receive()).data)
                assert isinstance(challenge, Challenge)
                await ws.send_bytes(auth_frame(core.identity, challenge, 2).encode())
                assert isinstance(decode_frame((await ws.receive()).data), Welcome)
                await ws.send_bytes(send_frame(item, 3).encode())
                assert isinstance(decode_frame((await ws.receive()).data), Sent)
        asyncio.run(hand_over())
    print("persisted", flush=True)
    os.kill(os.getpid(), signal.SIGKILL)


@pytest.mark.parametrize("mode", ["persisted", "relay-stored"])
async def test_client_killed_after_persisting(clients: ClientFactory, mode: str) -> None:
    alice, bob = await clients("alice"), await clients("bob")
    await clients.connect(alice, bob)
    b = Inbox(bob)
    path, peer = alice.path, bob.account_id
    await alice.close()
    proc = await asyncio.create_subprocess_exec(
        sys.executable, "-m", "tests.e2e.test_sdk_reliability", mode, str(path),
        "passphrase of alice", clients.relay.url, peer.hex(), cwd=REPO,
        stdout=subprocess.PIPE, stderr=subprocess.PIPE)
    out, err = await proc.communicate()
    assert proc.returncode == -signal.SIGKILL, err.decode()
    assert out.decode().strip() == "persisted"
    restarted = AsyncClient.open(path, "passphrase of alice", relay_url=clients.relay.url)
    a = Inbox(restarted)
    async with restarted:
        await a.wait(MessageStatusChanged, status=MessageStatus.SENT)
        await b.wait(MessageReceived)
        await asyncio.sleep(0.5)  # a second copy would have arrived by now
        assert len(b.of(MessageReceived)) == 1
        assert await _texts(bob, restarted.account_id) == [f"killed after {mode}"]
        assert await restarted.outbox_size() == 0


async def test_redelivery_and_out_of_order(clients: ClientFactory) -> None:
    alice, bob = await clients("alice"), await clients("bob")
    await clients.connect(alice, bob)
    b = Inbox(bob)
    # Bob processes but never acks: after a reconnect everything comes again.
    bob._ack = lambda acks: None  # type: ignore[method-assign]
    for i in range(3):
        await alice.send_text(bob.account_id, f"dup {i}")
    await b.wait(MessageReceived, count=3)
    clients.relay.restart()
    await b.wait(Reconnected)
    await asyncio.sleep(0.5)
    assert len(b.of(MessageReceived)) == 3
    assert bob.dropped_envelopes == 0  # recognized as seen, not as junk
    del bob._ack  # type: ignore[attr-defined]
    # Out of order: two stored messages reach the relay in reverse order.
    from client_sdk import _sending
    from client_sdk._connection import websocket_url
    from client_sdk.frames import send_frame
    from protocol.frames import Connect, Sent, decode_frame

    done = await alice._run(lambda c: c.submit(
        [_sending.SendText(peer=bob.account_id, text=t) for t in ("first", "second")],
        now_ms=alice._now_ms()))
    async with aiohttp.ClientSession() as s, s.ws_connect(websocket_url(clients.relay.url)) as ws:
        await ws.send_bytes(Connect(request_id=1).encode())
        await ws.receive()
        for rid, item in enumerate(reversed(done.items), start=2):  # anonymous sends
            await ws.send_bytes(send_frame(item, rid).encode())
            assert isinstance(decode_frame((await ws.receive()).data), Sent)
    got = await b.wait(MessageReceived, count=5)
    # Arrival order is the relay's; the ratchet kept the skipped key for "first".
    assert [e.text for e in got[3:]] == ["second", "first"]  # type: ignore[attr-defined]
    assert sorted(await _texts(bob, alice.account_id)) == ["dup 0", "dup 1", "dup 2",
                                                           "first", "second"]


async def test_identity_rotation(clients: ClientFactory) -> None:
    alice, bob = await clients("alice"), await clients("bob")
    await clients.connect(alice, bob)
    a, b = Inbox(alice), Inbox(bob)
    before = alice.safety_number(bob.account_id)
    await bob.rotate_identity()
    # Alice hears of it at once, over the session (IdentityRotated), not at her next
    # refresh_contact; a signed rotation needs no acknowledgement.
    [changed] = await a.wait(IdentityChanged)
    assert changed == IdentityChanged(peer=bob.account_id, rotated=True, requires_ack=False)
    assert alice.safety_number(bob.account_id) != before
    assert alice.safety_number(bob.account_id) == bob.safety_number(alice.account_id)
    # The session goes on; Bob's new key logs in after a reconnect.
    ref = await alice.send_text(bob.account_id, "still you")
    await b.wait(MessageReceived, message_id=ref.message_id)
    clients.relay.restart()
    await b.wait(Reconnected)
    await alice.refresh_contact(bob.account_id)  # the bundle says the same: no new event
    assert len(a.of(IdentityChanged)) == 1
    carol = await clients("carol")
    await clients.connect(carol, bob)


async def test_a_rotation_whose_notices_a_crash_lost_is_announced_at_the_next_login(
        clients: ClientFactory, monkeypatch: pytest.MonkeyPatch) -> None:
    """The relay took Bob's rotation but his client died before queueing the
    ``IdentityRotated`` notices: the next time his profile logs in, they go out."""
    from client_sdk.core import ClientCore

    alice, bob = await clients("alice"), await clients("bob")
    await clients.connect(alice, bob)
    a = Inbox(alice)

    def crash(self: ClientCore, *, now_ms: int) -> list[object]:
        raise RuntimeError("killed here")

    monkeypatch.setattr(ClientCore, "announce_identity", crash)
    with pytest.raises(RuntimeError):
        await bob.rotate_identity()
    monkeypatch.undo()
    await bob.close()
    await asyncio.sleep(0.5)
    assert a.of(IdentityChanged) == []
    bob = await clients("bob", register=False)  # the same profile, logging in again
    [changed] = await a.wait(IdentityChanged)
    assert changed == IdentityChanged(peer=bob.account_id, rotated=True, requires_ack=False)
    assert alice.safety_number(bob.account_id) == bob.safety_number(alice.account_id)


async def test_a_contact_blocked_at_a_rotation_is_told_when_unblocked(
        clients: ClientFactory) -> None:
    alice, bob = await clients("alice"), await clients("bob")
    await clients.connect(alice, bob)
    a = Inbox(alice)
    await bob.block(alice.account_id)
    await bob.rotate_identity()
    await asyncio.sleep(0.5)
    assert a.of(IdentityChanged) == []
    await bob.unblock(alice.account_id)
    [changed] = await a.wait(IdentityChanged)
    assert changed == IdentityChanged(peer=bob.account_id, rotated=True, requires_ack=False)
    assert alice.safety_number(bob.account_id) == bob.safety_number(alice.account_id)


async def test_a_rotation_whose_prekey_upload_fails_is_still_announced(
        clients: ClientFactory, monkeypatch: pytest.MonkeyPatch) -> None:
    """The relay took Bob's rotation, then the new prekeys could not be prepared:
    ``rotate_identity`` raises, and Alice is told all the same, without waiting for
    Bob's next login."""
    from client_sdk.core import ClientCore

    alice, bob = await clients("alice"), await clients("bob")
    await clients.connect(alice, bob)
    a = Inbox(alice)

    def broken(self: ClientCore, **kwargs: object) -> list[object]:
        raise RuntimeError("no prekeys today")

    monkeypatch.setattr(ClientCore, "prekeys_to_upload", broken)
    with pytest.raises(RuntimeError):
        await bob.rotate_identity()
    [changed] = await a.wait(IdentityChanged)
    assert changed == IdentityChanged(peer=bob.account_id, rotated=True, requires_ack=False)


async def test_an_unblock_whose_announcement_fails_still_unblocks(
        clients: ClientFactory, monkeypatch: pytest.MonkeyPatch,
        caplog: pytest.LogCaptureFixture) -> None:
    """Queueing the waiting rotation notice fails on unblock: the unblock stands (no
    exception), the failure is logged, and the next login tells Alice."""
    from client_sdk.core import ClientCore

    alice, bob = await clients("alice"), await clients("bob")
    await clients.connect(alice, bob)
    a = Inbox(alice)
    await bob.block(alice.account_id)
    await bob.rotate_identity()

    def broken(self: ClientCore, *, now_ms: int) -> list[object]:
        raise RuntimeError("not now")

    monkeypatch.setattr(ClientCore, "announce_identity_to_waiting", broken)
    await bob.unblock(alice.account_id)
    assert "could not queue identity announcements" in caplog.text
    contact = bob.core.contact(alice.account_id)
    assert contact is not None and contact.state is ContactState.ACCEPTED
    await asyncio.sleep(0.5)
    assert a.of(IdentityChanged) == []
    monkeypatch.undo()
    await bob.close()
    bob = await clients("bob", register=False)
    [changed] = await a.wait(IdentityChanged)
    assert changed == IdentityChanged(peer=bob.account_id, rotated=True, requires_ack=False)


async def test_mailbox_rotation(clients: ClientFactory) -> None:
    alice, bob = await clients("alice"), await clients("bob")
    await clients.connect(alice, bob)
    a, b = Inbox(alice), Inbox(bob)
    old = alice.contact(bob.account_id).inbound  # type: ignore[union-attr]
    await alice.rotate_mailbox(bob.account_id)
    new = alice.contact(bob.account_id).inbound  # type: ignore[union-attr]
    assert old is not None and new is not None and new.mailbox_id != old.mailbox_id
    await b.wait(MailboxRotated)
    assert bob.contact(alice.account_id).outbound.mailbox_id == new.mailbox_id  # type: ignore[union-attr]
    ref = await bob.send_text(alice.account_id, "to your new mailbox")
    await a.wait(MessageReceived, message_id=ref.message_id)


async def test_wrong_passphrase_and_corrupted_profile(clients: ClientFactory,
                                                      tmp_path: Path) -> None:
    alice = await clients("alice")
    path = alice.path
    await alice.close()
    with pytest.raises(WrongPassphrase):
        async with AsyncClient.open(path, "not the passphrase"):
            pass
    damaged = tmp_path / "damaged.pigeon"
    data = bytearray(path.read_bytes())
    data[100:4096] = os.urandom(3996)
    damaged.write_bytes(bytes(data))
    with pytest.raises(ProfileCorrupt) as info:
        async with AsyncClient.open(damaged, "passphrase of alice"):
            pass
    assert str(damaged) in str(info.value)
    garbage = tmp_path / "garbage.pigeon"
    garbage.write_bytes(b"this is not a database" * 100)
    with pytest.raises(ProfileCorrupt):
        async with AsyncClient.open(garbage, "x"):
            pass
    async with AsyncClient.open(path, "passphrase of alice", params=FAST_PARAMS) as again:
        await again.change_passphrase("passphrase of alice", "new passphrase")
    with pytest.raises(WrongPassphrase):
        async with AsyncClient.open(path, "passphrase of alice"):
            pass
    async with AsyncClient.open(path, "new passphrase") as again:
        await again.wait_connected(10)


if __name__ == "__main__":
    _mode, _profile, _passphrase, _url, _peer = sys.argv[1:6]
    _child(_mode, Path(_profile), _passphrase, _url, bytes.fromhex(_peer))
