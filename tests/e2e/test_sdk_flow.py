"""End to end: SDK clients and a real ``pigeon-relay`` process (client_sdk.testing).

The full flow of the SDK issue: register, add by link and by username, invitations and
acceptance, profile names, text, replies, edits, reactions, deletes, receipts, typing,
presence, disappearing messages, blocking, safety numbers, an offline recipient, a third
client. Skipped only if the relay answers 4501 (a build without the frame pipeline).
"""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator
from typing import Any

import pytest

from client_sdk import (
    AsyncClient,
    ContactAccepted,
    ContactBlocked,
    ContactState,
    DisappearingTimerChanged,
    Event,
    InvitationReceived,
    MessageDeleted,
    MessageEdited,
    MessageReceived,
    MessageStatus,
    MessageStatusChanged,
    PresenceChanged,
    ProfileChanged,
    ReactionChanged,
    Reconnected,
    TypingChanged,
    UnknownContact,
)
from client_sdk.testing import (  # noqa: F401 - fixtures
    ClientFactory,
    RelayProcess,
    pigeon_clients,
    pigeon_relay,
    relay_pipeline_available,
)
from protocol.frames import Direction, decode_frame
from protocol.inner import PresenceState
from tests.e2e._relay_fixtures import metric_value


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

    async def wait(self, kind: type[Event], count: int = 1, timeout_s: float = 20.0,
                   **match: object) -> list[Event]:
        async with asyncio.timeout(timeout_s):
            while True:
                got = [e for e in self.events if isinstance(e, kind)
                       and all(getattr(e, k) == v for k, v in match.items())]
                if len(got) >= count:
                    return got
                self.changed.clear()
                await self.changed.wait()


async def test_full_flow_three_clients(clients: ClientFactory) -> None:
    alice, bob, carol = await clients("alice"), await clients("bob"), await clients("carol")
    a, b, c = Inbox(alice), Inbox(bob), Inbox(carol)

    # Alice adds Bob with his contact link; Bob accepts.
    await alice.add_contact_by_link(bob.contact_link())
    [invite] = await b.wait(InvitationReceived)
    assert invite.profile_name == "Alice"  # type: ignore[attr-defined]
    assert [x.account_id for x in bob.invitations()] == [alice.account_id]
    await bob.accept(alice.account_id)
    await a.wait(ContactAccepted, by_peer=True)
    await a.wait(ProfileChanged, display_name="Bob")
    assert (await alice.conversation(bob.account_id)).title == "Bob"
    assert alice.safety_number(bob.account_id) == bob.safety_number(alice.account_id)
    scanned = bob.scannable_safety_number(alice.account_id)
    for garbage in (b"garbage", scanned[:-1], b"\x07" + scanned[1:]):  # any QR code
        assert await alice.verify_safety_number(bob.account_id, garbage) is False
    assert not alice.contact(bob.account_id).verified  # type: ignore[union-attr]
    assert await alice.verify_safety_number(bob.account_id,
                                            bob.scannable_safety_number(alice.account_id))
    assert alice.contact(bob.account_id).verified  # type: ignore[union-attr]

    # Carol finds Bob by username.
    await bob.claim_username("@Bob_42")
    assert await carol.add_contact_by_username("bob_42") == bob.account_id
    await b.wait(InvitationReceived, peer=carol.account_id)
    await bob.accept(carol.account_id)
    await c.wait(ContactAccepted)
    # Adding a contact again, by username or id, changes nothing (an invitation would
    # set it back to INVITED and stop both sides writing).
    assert await carol.add_contact_by_username("bob_42") == bob.account_id
    await carol.add_contact(bob.account_id)
    assert carol.contact(bob.account_id).state is ContactState.ACCEPTED  # type: ignore[union-attr]

    # Text, reply, receipts.
    hello = await alice.send_text(bob.account_id, "hello Bob")
    await a.wait(MessageStatusChanged, message_id=hello.message_id, status=MessageStatus.SENT)
    [got] = await b.wait(MessageReceived, message_id=hello.message_id)
    assert got.text == "hello Bob"  # type: ignore[attr-defined]
    await a.wait(MessageStatusChanged, message_id=hello.message_id,
                 status=MessageStatus.DELIVERED)
    await bob.mark_read(alice.account_id, [hello.message_id])
    await a.wait(MessageStatusChanged, message_id=hello.message_id, status=MessageStatus.READ)
    reply = await bob.send_text(alice.account_id, "hi Alice", reply_to=hello.message_id)
    [r] = await a.wait(MessageReceived, message_id=reply.message_id)
    assert r.reply_to == hello.message_id  # type: ignore[attr-defined]

    # Edit, reaction, delete for everyone.
    await alice.edit(bob.account_id, hello.message_id, "hello, Bob")
    await b.wait(MessageEdited, message_id=hello.message_id)
    await bob.react(alice.account_id, hello.message_id, "❤️")
    await a.wait(ReactionChanged, message_id=hello.message_id)
    await alice.delete_for_everyone(bob.account_id, hello.message_id)
    await b.wait(MessageDeleted, message_id=hello.message_id)
    page = await bob.history(alice.account_id)
    assert [m.body for m in page.messages] == [None, "hi Alice"]

    # Typing and opt-in presence (ephemeral, end to end).
    assert await alice.send_typing(bob.account_id)
    await b.wait(TypingChanged, peer=alice.account_id, active=True)
    assert await alice.set_presence(PresenceState.ONLINE) == 0  # not opted in
    await alice.enable_presence()
    assert await alice.set_presence(PresenceState.AWAY) == 1
    await b.wait(PresenceChanged, state=PresenceState.AWAY)

    # Search and disappearing messages.
    found = await bob.search("Alice")
    assert [h.message.body for h in found.hits] == ["hi Alice"]
    await bob.set_disappearing(carol.account_id, 1)
    note = await carol.send_text(bob.account_id, "gone soon")
    await b.wait(MessageReceived, message_id=note.message_id)
    await asyncio.sleep(0.01)
    assert (await bob.history(carol.account_id)).messages == ()

    # Blocking.
    await bob.block(carol.account_id)
    with pytest.raises(ContactBlocked):
        await bob.send_text(carol.account_id, "no")
    before = len([e for e in b.events if isinstance(e, MessageReceived)])
    await carol.send_text(bob.account_id, "are you there?")
    await c.wait(MessageStatusChanged, status=MessageStatus.SENT, count=2)
    await asyncio.sleep(0.3)
    assert len([e for e in b.events if isinstance(e, MessageReceived)]) == before


async def test_offline_recipient(clients: ClientFactory) -> None:
    alice, bob = await clients("alice"), await clients("bob")
    await clients.connect(alice, bob)
    bob_path = bob.path
    await bob.close()
    a = Inbox(alice)
    refs = [await alice.send_text(bob.account_id, f"while you were away {i}")
            for i in range(3)]
    await a.wait(MessageStatusChanged, status=MessageStatus.SENT, count=3)
    bob2 = AsyncClient.open(bob_path, "passphrase of bob", relay_url=clients.relay.url)
    b = Inbox(bob2)
    async with bob2:
        got = await b.wait(MessageReceived, count=3)
        assert [e.message_id for e in got] == [r.message_id for r in refs]  # type: ignore[attr-defined]
        await a.wait(MessageStatusChanged, status=MessageStatus.DELIVERED, count=3)


async def test_disappearing_timer_is_shared_by_both_sides(clients: ClientFactory) -> None:
    alice, bob = await clients("alice"), await clients("bob")
    await clients.connect(alice, bob)
    a, b = Inbox(alice), Inbox(bob)
    kept = await alice.send_text(bob.account_id, "kept")
    await b.wait(MessageReceived, message_id=kept.message_id)

    await alice.set_disappearing(bob.account_id, 3_600_000)
    await a.wait(DisappearingTimerChanged, by_peer=False, timer_ms=3_600_000)
    await b.wait(DisappearingTimerChanged, by_peer=True, timer_ms=3_600_000,
                 peer=alice.account_id)
    assert (await alice.conversation(bob.account_id)).expire_timer_ms == 3_600_000
    assert (await bob.conversation(alice.account_id)).expire_timer_ms == 3_600_000

    # From now on both sides store every message, sent or received, with an expiry.
    m1 = await alice.send_text(bob.account_id, "from alice")
    m2 = await bob.send_text(alice.account_id, "from bob")
    await b.wait(MessageReceived, message_id=m1.message_id)
    await a.wait(MessageReceived, message_id=m2.message_id)
    for client, peer in ((alice, bob.account_id), (bob, alice.account_id)):
        stored = {m.body: m for m in (await client.history(peer)).messages}
        assert stored["kept"].expires_at_ms is None
        assert stored["from alice"].expires_at_ms is not None
        assert stored["from bob"].expires_at_ms is not None

    # Bob turns it off; the change reaches Alice, whose next message is kept by both.
    await bob.set_disappearing(alice.account_id, None)
    await a.wait(DisappearingTimerChanged, by_peer=True, timer_ms=None)
    m3 = await alice.send_text(bob.account_id, "kept again")
    await b.wait(MessageReceived, message_id=m3.message_id)
    for client, peer in ((alice, bob.account_id), (bob, alice.account_id)):
        stored = {m.body: m for m in (await client.history(peer)).messages}
        assert stored["kept again"].expires_at_ms is None

    # A short timer really removes the messages from history on both sides.
    await alice.set_disappearing(bob.account_id, 50)
    await b.wait(DisappearingTimerChanged, by_peer=True, timer_ms=50)
    gone = await alice.send_text(bob.account_id, "gone soon")
    await b.wait(MessageReceived, message_id=gone.message_id)
    await asyncio.sleep(0.1)
    for client, peer in ((alice, bob.account_id), (bob, alice.account_id)):
        bodies = [m.body for m in (await client.history(peer)).messages]
        assert "gone soon" not in bodies and "kept again" in bodies

    for bad in (0, -1, 365 * 24 * 3600 * 1000 + 1):
        with pytest.raises(ValueError):
            await alice.set_disappearing(bob.account_id, bad)


async def test_public_state_the_chat_uses(clients: ClientFactory) -> None:
    alice, bob = await clients("alice"), await clients("bob")
    assert alice.registered and alice.display_name == "Alice"
    with pytest.raises(UnknownContact):
        alice.check_sendable(bob.account_id)
    await clients.connect(alice, bob)
    assert alice.check_sendable(bob.account_id).account_id == bob.account_id
    await alice.block(bob.account_id)
    with pytest.raises(ContactBlocked):
        alice.check_sendable(bob.account_id)


def _spy(conn: Any, names: list[str]) -> None:
    """Record the type of every frame *conn* sends from now on."""
    send_bytes = conn._send_bytes

    def record(data: bytes) -> None:
        names.append(type(decode_frame(data, direction=Direction.TO_RELAY)).__name__)
        send_bytes(data)

    conn._send_bytes = record


async def _connections_become(url: str, expected: float) -> None:
    async with asyncio.timeout(10):
        while await metric_value(url, "pigeon_relay_connections") != expected:  # noqa: ASYNC110 - polls another process
            await asyncio.sleep(0.05)


async def test_sends_go_over_a_second_anonymous_connection(clients: ClientFactory) -> None:
    url = clients.relay.url
    base = await metric_value(url, "pigeon_relay_connections")
    alice = await clients("alice")
    await alice.wait_connected(20)
    await _connections_become(url, base + 2)  # receives on one, sends on the other
    bob = await clients("bob", anonymous_sends=False)
    await bob.wait_connected(20)
    await _connections_become(url, base + 3)
    seen: dict[str, list[str]] = {"authenticated": [], "anonymous": []}
    for name, conn in (("authenticated", alice._conn), ("anonymous", alice._send_conn)):
        assert conn is not None
        _spy(conn, seen[name])
    await clients.connect(alice, bob)  # Alice fetches Bob's bundle and invites him
    first = await alice.send_text(bob.account_id, "over the anonymous connection")
    await clients.next_event(bob, MessageReceived, message_id=first.message_id)
    assert {"FetchBundle", "Send"} <= set(seen["anonymous"])
    assert {"FetchBundle", "Send", "SendEphemeral", "Auth"}.isdisjoint(seen["authenticated"])
    assert "CreateMailbox" in seen["authenticated"]  # the account's own business

    # The anonymous connection drops: both are made again, and nothing is lost or doubled.
    a = Inbox(alice)
    b = Inbox(bob)
    send_conn = alice._send_conn
    assert send_conn is not None and send_conn is not alice._conn
    await send_conn.close()
    await a.wait(Reconnected)
    refs = [await alice.send_text(bob.account_id, f"after {i}") for i in range(5)]
    for ref in refs:
        await b.wait(MessageReceived, message_id=ref.message_id)
    await a.wait(MessageStatusChanged, status=MessageStatus.DELIVERED, count=5)
    await _connections_become(url, base + 3)
    assert len([e for e in b.events if isinstance(e, MessageReceived)]) == 5
