"""End to end: groups and channels with several SDK clients and a real relay process.

Create, message, add, remove (the removed member decrypts nothing sent after its
removal, even when handed the blob, nor with a copy of the chain it held), leave,
rename, admins, concurrent admin changes converging on every client, an offline member
catching up, forged control messages and messages from non-members rejected, channels,
edits/reactions/deletes/replies/receipts/typing in groups, and a scan of the relay's
files for group ids and member lists.
Skipped only if the relay answers 4501 (a build without the frame pipeline).
"""

from __future__ import annotations

import asyncio
import contextlib
import dataclasses
import os
import sqlite3
import threading
from collections.abc import AsyncIterator, Awaitable, Callable, Sequence
from pathlib import Path
from typing import Any

import msgpack
import pytest

from client_sdk import (
    AsyncClient,
    ClientError,
    ContactAccepted,
    ContactState,
    DisappearingTimerChanged,
    Event,
    FileOptions,
    GroupChanged,
    GroupInfo,
    GroupReceiptsChanged,
    GroupTypingChanged,
    MessageDeleted,
    MessageEdited,
    MessageKind,
    MessageReceived,
    MessageStatus,
    MessageStatusChanged,
    NotGroupAdmin,
    NotGroupMember,
    ReactionChanged,
    UnknownContact,
    _groups,
)
from client_sdk._sending import _Batch
from client_sdk.core import ClientCore
from client_sdk.store import Durability
from client_sdk.store.records import OutboxItem, Outgoing, SessionUpdate
from client_sdk.testing import (  # noqa: F401 - fixtures
    FAST_PARAMS,
    ClientFactory,
    RelayProcess,
    pigeon_clients,
    pigeon_relay,
    relay_pipeline_available,
)
from pigeon_crypto.files import FileManifest
from pigeon_crypto.padding import pad_message, unpad_message
from pigeon_crypto.rng import system_rng
from pigeon_crypto.sender_keys import OutboundSenderKey, SenderKeyRecord, UnknownSenderChain
from pigeon_crypto.signing import Purpose
from protocol.group import GroupState
from protocol.inner import (
    GroupControl,
    InnerMessage,
    SenderKeyDistribution,
    Text,
    decode_inner,
)
from tests.helpers import avatar_manifest

_MANIFEST = avatar_manifest()
"""A well-formed avatar manifest (the state only carries it; nothing downloads it)."""


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

    def texts(self) -> list[str]:
        return [e.text for e in self.events
                if isinstance(e, MessageReceived) and e.text is not None]

    async def wait(self, event_type: type[Event], count: int = 1, timeout_s: float = 20.0,
                   **match: object) -> list[Event]:
        async with asyncio.timeout(timeout_s):
            while True:
                got = [e for e in self.events if isinstance(e, event_type)
                       and all(getattr(e, k) == v for k, v in match.items())]
                if len(got) >= count:
                    return got
                self.changed.clear()
                await self.changed.wait()

    async def wait_text(self, text: str, timeout_s: float = 20.0) -> MessageReceived:
        try:
            [got] = await self.wait(MessageReceived, text=text, timeout_s=timeout_s)
        except TimeoutError:
            raise AssertionError(f"{text!r} not received; got {self.texts()}") from None
        assert isinstance(got, MessageReceived)
        return got

    async def wait_version(self, version: int, timeout_s: float = 20.0) -> GroupChanged:
        async with asyncio.timeout(timeout_s):
            while True:
                for e in reversed(self.events):
                    if isinstance(e, GroupChanged) and e.group.version >= version:
                        return e
                self.changed.clear()
                await self.changed.wait()


async def mesh(clients: ClientFactory, people: Sequence[AsyncClient]) -> None:
    """Make every pair contacts (group members write to each other pairwise)."""
    for i, x in enumerate(people):
        for y in people[i + 1:]:
            await clients.connect(x, y)


async def quiet(*clients: AsyncClient, timeout_s: float = 20.0) -> None:
    """Until every outbox is empty (the relay stored everything sent)."""
    async with asyncio.timeout(timeout_s):
        for c in clients:
            while await c.outbox_size():  # noqa: ASYNC110 - polls the store
                await asyncio.sleep(0.05)


async def test_create_message_remove_rotate(clients: ClientFactory) -> None:
    alice, bob, carol = await clients("alice"), await clients("bob"), await clients("carol")
    await mesh(clients, [alice, bob, carol])
    a, b, c = Inbox(alice), Inbox(bob), Inbox(carol)

    info = await alice.create_group("Pigeon fans", [bob.account_id, carol.account_id])
    gid = info.group_id
    assert info.version == 1 and info.admins == (alice.account_id,)
    assert set(info.members) == {alice.account_id, bob.account_id, carol.account_id}
    for inbox in (b, c):
        changed = await inbox.wait_version(1)
        assert changed.created and changed.group.name == "Pigeon fans"
        assert changed.by == alice.account_id

    ref = await alice.send_group_text(gid, "hello group")
    for inbox in (b, c):
        got = await inbox.wait_text("hello group")
        assert got.peer == alice.account_id
    assert (await carol.group(gid)).conversation_id == got.conversation_id
    await bob.send_group_text(gid, "hi from bob", reply_to=ref.message_id)
    got_a = await a.wait_text("hi from bob")
    assert got_a.reply_to == ref.message_id and got_a.peer == bob.account_id
    await c.wait_text("hi from bob")
    page = await carol.group_history(gid)
    assert [m.body for m in page.messages] == ["hello group", "hi from bob"]

    # Remove Carol: she learns it; what is sent afterwards she cannot read. A copy of
    # the chain she held for Alice (kept by a client that would not forget it) opens
    # nothing Alice sends after the removal: Alice rotated.
    carol_copy = await _chain_copy(carol, gid, alice.account_id)
    await alice.remove_members(gid, [carol.account_id])
    removed = await c.wait_version(2)
    assert not removed.group.active and removed.removed == (carol.account_id,)
    await b.wait_version(2)
    await bob.send_group_text(gid, "after carol left")
    await a.wait_text("after carol left")
    await alice.send_group_text(gid, "alice after removal")
    await b.wait_text("alice after removal")

    # Hand Carol the post-removal blob anyway, on Alice's pairwise mailbox to her: the
    # chain rotated, so she holds no key for it.
    await quiet(alice, bob)
    blob = await alice._run(lambda core: _unsent_group_blob(core, gid, "secret after removal"))
    dropped_before = carol.dropped_envelopes
    await _post_to(alice, carol.account_id, blob)
    await asyncio.sleep(1.0)
    assert "alice after removal" not in c.texts()
    assert "after carol left" not in c.texts()
    assert "secret after removal" not in c.texts()
    pending = await carol._run(lambda core: core.store.pending_group_blobs())
    assert carol.dropped_envelopes > dropped_before or pending
    assert c.texts() == ["hello group", "hi from bob"]
    assert _opens(await _chain_copy(bob, gid, alice.account_id), blob) \
        == "secret after removal"  # a member's copy opens it
    with pytest.raises(UnknownSenderChain):
        _opens(carol_copy, blob)


async def _chain_copy(client: AsyncClient, group_id: bytes, sender: bytes,
                      ) -> SenderKeyRecord:
    """The chains *client* holds for *sender* in the group, as stored."""
    record = await client._run(lambda core: core.store.load_sender_key_record(group_id, sender))
    assert record is not None
    return record


def _opens(record: SenderKeyRecord, blob: bytes) -> str:
    """The text of a group blob decrypted with *record* (raises if it cannot)."""
    _, padded = record.decrypt(blob[1:])
    inner = decode_inner(unpad_message(padded))
    assert isinstance(inner, Text)
    return inner.text


def _unsent_group_blob(core: object, group_id: bytes, text: str) -> bytes:
    """Encrypt and store a group message as the SDK does, without handing its row to
    the outbox pump (tests only): its blob, to deliver by hand."""
    from client_sdk.core import ClientCore
    assert isinstance(core, ClientCore)
    _mid, _cid, items = _groups.send(
        core, group_id, lambda mid, now: Text(message_id=mid, sent_at_ms=now, text=text),
        lambda cid, mid: None, now_ms=1)
    blobs = [i.entry.blob for i in items if i.entry.blob[0] == _groups.GROUP_BLOB_PREFIX]
    return blobs[-1]


async def _post_to(sender: AsyncClient, peer: bytes, blob: bytes) -> None:
    """Send raw *blob* to *peer*'s pairwise mailbox with *sender*'s capability."""
    from protocol.frames import Send, Sent
    contact = sender.contact(peer)
    assert contact is not None and contact.outbound is not None
    out = contact.outbound
    frame = await sender._request(lambda rid: Send(
        request_id=rid, client_msg_id=bytes(range(16)), blob=blob,
        recipients=((out.mailbox_id, out.capability),)))
    assert isinstance(frame, Sent)


async def test_add_rename_admins_leave(clients: ClientFactory) -> None:
    alice, bob, carol = await clients("alice"), await clients("bob"), await clients("carol")
    await mesh(clients, [alice, bob, carol])
    a, b, c = Inbox(alice), Inbox(bob), Inbox(carol)

    gid = (await alice.create_group("First", [bob.account_id])).group_id
    await b.wait_version(1)
    await alice.send_group_text(gid, "before carol")
    await b.wait_text("before carol")
    early = await alice._run(lambda core: _unsent_group_blob(core, gid, "secret before carol"))

    info = await alice.add_members(gid, [carol.account_id])
    assert info.version == 2 and carol.account_id in info.members
    joined = await c.wait_version(2)
    assert joined.created and joined.group.name == "First"
    added = await b.wait_version(2)
    assert added.added == (carol.account_id,)
    await alice.send_group_text(gid, "welcome carol")
    await bob.send_group_text(gid, "hi carol")
    await c.wait_text("welcome carol")
    await c.wait_text("hi carol")
    assert "before carol" not in c.texts()  # a new member reads nothing from before
    # Not even when handed a blob from before it joined: its copy of Alice's chain
    # starts at a later iteration.
    dropped = carol.dropped_envelopes
    await _post_to(alice, carol.account_id, early)
    await alice.send_text(carol.account_id, "marker")
    await c.wait(MessageReceived, text="marker")
    assert "secret before carol" not in c.texts()
    assert carol.dropped_envelopes == dropped + 1
    assert [m.body for m in (await carol.group_history(gid)).messages] == [
        "welcome carol", "hi carol"]

    with pytest.raises(NotGroupAdmin):
        await carol.rename_group(gid, "Carol's")
    await alice.rename_group(gid, "Renamed")
    for inbox in (b, c):
        renamed = await inbox.wait_version(3)
        assert renamed.renamed and renamed.group.name == "Renamed"
    assert (await carol.group(gid)).name == "Renamed"

    await alice.promote(gid, [bob.account_id])
    promoted = await c.wait_version(4)
    assert promoted.promoted == (bob.account_id,)
    await b.wait_version(4)
    await bob.rename_group(gid, "Bob's now")  # Bob is an admin
    await a.wait_version(5)
    await c.wait_version(5)
    await alice.demote(gid, [bob.account_id])
    assert (await c.wait_version(6)).demoted == (bob.account_id,)
    await b.wait_version(6)
    with pytest.raises(NotGroupAdmin):
        await bob.rename_group(gid, "no longer")

    await carol.leave_group(gid)  # a member leaves: signs the state without itself
    for inbox in (a, b):
        left = await inbox.wait_version(7)
        assert left.removed == (carol.account_id,) and left.by == carol.account_id
    assert not (await carol.group(gid)).active
    await bob.send_group_text(gid, "carol is gone")
    await a.wait_text("carol is gone")
    assert (await alice.group(gid)).members == tuple(sorted([alice.account_id,
                                                             bob.account_id]))
    for client in (alice, bob, carol):
        assert (await client.group(gid)).version == 7


_BIG_MANIFEST = avatar_manifest("a" * 1000)
"""An avatar manifest that pads every state of its group to 2,048 bytes: from three
members to write to, changes are sealed (``_groups.sealing_pays``)."""


@pytest.mark.parametrize("sealed", [False, True], ids=["pairwise", "sealed"])
async def test_concurrent_admin_changes_converge(clients: ClientFactory, sealed: bool,
                                                 monkeypatch: pytest.MonkeyPatch) -> None:
    alice, bob, carol, dave = (await clients("alice"), await clients("bob"),
                               await clients("carol"), await clients("dave"))
    people = [alice, bob, carol, dave]
    if sealed:  # a fifth member, so that every change has three members to write to
        people.append(await clients("erin"))
    await mesh(clients, people)
    seals = 0
    seal = _groups.seal_control

    def counting(*args: Any) -> tuple[bytes, bytes, bytes]:
        nonlocal seals
        seals += 1
        return seal(*args)

    monkeypatch.setattr(_groups, "seal_control", counting)
    # Each round's two changes are made at one version whatever the machine's load: both
    # admins enter the change (each on its client's core thread, where the other's change
    # would be received) before either makes it, so neither can have seen the other's.
    change = _groups.change
    barrier: list[threading.Barrier | None] = [None]

    def together(*args: Any, **kwargs: Any) -> Any:
        held = barrier[0]
        if held is not None:
            held.wait(timeout=10)
        return change(*args, **kwargs)

    monkeypatch.setattr(_groups, "change", together)
    inboxes = [Inbox(x) for x in people]
    gid = (await alice.create_group(
        "Start", [bob.account_id, carol.account_id, *(x.account_id for x in people[4:])],
        admins=[bob.account_id], avatar_manifest=_BIG_MANIFEST if sealed else None)).group_id
    for inbox in [*inboxes[1:3], *inboxes[4:]]:
        await inbox.wait_version(1)

    # Three rounds of changes made at the same version by both admins.
    rounds: list[tuple[Callable[[], Awaitable[GroupInfo]], Callable[[], Awaitable[GroupInfo]]]] = [
        (lambda: alice.rename_group(gid, "Alice's name"),
         lambda: bob.rename_group(gid, "Bob's name")),
        (lambda: alice.add_members(gid, [dave.account_id]),
         lambda: bob.remove_members(gid, [carol.account_id])),
        (lambda: alice.rename_group(gid, "A again"),
         lambda: bob.set_group_avatar(gid, avatar_manifest=_MANIFEST)),
    ]
    for first, second in rounds:
        barrier[0] = threading.Barrier(2)
        await asyncio.gather(first(), second())
        barrier[0] = None
        await quiet(alice, bob)
        await _settled(people, gid)
    # Sealed: at least the creation and both renames of round 1 (four members to write
    # to); later changes are sealed when they still have three (it depends on who won).
    assert seals >= 3 if sealed else seals == 0

    heads = [await _head(x, gid) for x in (alice, bob)]
    assert heads[0] == heads[1]
    for x in people[2:]:  # a member agrees; a non-member holds a head without it
        info = await x.group(gid)
        if info.active:
            assert await _head(x, gid) == heads[0]
        else:
            assert x.account_id not in info.members
    # The documented rule: the highest version, then the smallest (signer, hash).
    states = await alice._run(lambda core: core.store.group_states(gid))
    valid = [s.signed for s in states if s.status.name == "VALID"]
    for version in (2, 3, 4):  # each round really made two states at one version
        assert sum(1 for s in valid if s.state.version == version) == 2
    best = min(valid, key=lambda s: (-s.state.version, s.state.signer, s.hash))
    assert heads[0][0] == best.state.version and heads[0][2] == best.hash


async def _head(client: AsyncClient, gid: bytes) -> tuple[int, str, bytes]:
    def head(core: object) -> tuple[int, str, bytes]:
        from client_sdk.core import ClientCore
        assert isinstance(core, ClientCore)
        view = _groups.GroupView.load(core, gid)
        assert view.head is not None
        return view.head.state.version, view.head.state.name, view.head.hash
    return await client._run(head)


async def _settled(people: Sequence[AsyncClient], gid: bytes, timeout_s: float = 20.0) -> None:
    """Until every member (client whose head lists it) has the same head: the round's
    winner (its signer holds it from the start, so equal heads can only be the winner).
    A client the winner removed, or added only by the losing change, stops at a head
    without itself and receives nothing more."""
    heads: list[tuple[int, str, bytes] | None] = []
    try:
        async with asyncio.timeout(timeout_s):
            while True:
                heads = []
                for p in people:
                    held = await p._run(lambda core: core.store.load_group(gid))
                    active = held is not None and held.active
                    heads.append(await _head(p, gid) if active else None)
                if len({h for h in heads if h is not None}) == 1:
                    return
                await asyncio.sleep(0.1)
    except TimeoutError:
        raise AssertionError(f"heads did not converge: {heads}") from None


async def test_offline_member_catches_up(clients: ClientFactory) -> None:
    alice, bob, carol, dave = (await clients("alice"), await clients("bob"),
                               await clients("carol"), await clients("dave"))
    await mesh(clients, [alice, bob, carol, dave])
    a, b, c0, d = Inbox(alice), Inbox(bob), Inbox(carol), Inbox(dave)
    gid = (await alice.create_group("Club", [bob.account_id, carol.account_id])).group_id
    await c0.wait_version(1)
    await b.wait_version(1)
    await carol.send_group_text(gid, "carol before going offline")
    await a.wait_text("carol before going offline")
    await carol.close()

    # While Carol is offline: a rename, Dave joins and writes, Bob is removed (every
    # remaining sender rotates), more messages.
    await alice.rename_group(gid, "Club 2")
    await alice.add_members(gid, [dave.account_id])
    await d.wait_version(3)
    await b.wait_version(3)
    await alice.send_group_text(gid, "one")
    await dave.send_group_text(gid, "two, from dave")
    await bob.send_group_text(gid, "three, from bob")
    await a.wait_text("two, from dave")
    await a.wait_text("three, from bob")
    await alice.remove_members(gid, [bob.account_id])
    await d.wait_version(4)
    await alice.send_group_text(gid, "four, after bob")
    await dave.send_group_text(gid, "five, after bob")
    await quiet(alice, bob, dave)

    back = AsyncClient.open(clients.folder / "carol.pigeon", "passphrase of carol",
                            relay_url=clients.relay.url, params=FAST_PARAMS,
                            durability=Durability.OFF, reconnect_cap_ms=1000)
    clients.clients.append(back)
    c = Inbox(back)
    await back.start()
    for text in ("one", "two, from dave", "three, from bob", "four, after bob",
                 "five, after bob"):
        await c.wait_text(text)
    info = await back.group(gid)
    assert info.version == 4 and info.name == "Club 2"
    assert set(info.members) == {alice.account_id, carol.account_id, dave.account_id}
    assert await _head(back, gid) == await _head(alice, gid) == await _head(dave, gid)
    # And Carol writes to the current members (with a chain they now hold).
    await back.send_group_text(gid, "carol is back")
    await a.wait_text("carol is back")
    await d.wait_text("carol is back")
    await asyncio.sleep(0.5)
    assert "carol is back" not in b.texts()


async def _send_inner(sender: AsyncClient, peer: bytes, inner: InnerMessage) -> None:
    """Send one pairwise inner message as it is (tests only: forged controls)."""
    def enqueue(core: ClientCore) -> list[OutboxItem]:
        batch = _Batch(core)
        _, outbound = core.sendable(peer)
        blob, state = batch.encrypt(peer, inner)
        return batch.commit([Outgoing(entry=batch.entry(outbound, blob, 0),
                                      session=SessionUpdate(peer=peer, state=state))])
    sender._pump.add(await sender._run(enqueue))


async def _rogue_group_message(sender: AsyncClient, peer: bytes, gid: bytes,
                               text: str) -> None:
    """A chain made up for group *gid*, handed to *peer* pairwise, then a group blob
    with *text* on it: what a non-member (or a member ignoring the rules) could send."""
    chain = OutboundSenderKey.create(system_rng)
    await _send_inner(sender, peer, SenderKeyDistribution(
        message_id=os.urandom(16), sent_at_ms=1, group_id=gid,
        distribution=chain.distribution().to_bytes()))
    await quiet(sender)
    _, message = chain.encrypt(pad_message(Text(message_id=os.urandom(16), sent_at_ms=1,
                                                text=text).encode()))
    await _post_to(sender, peer, bytes([_groups.GROUP_BLOB_PREFIX]) + message)


async def test_forged_controls_and_non_members_rejected(clients: ClientFactory) -> None:
    alice, bob, carol, eve = (await clients("alice"), await clients("bob"),
                              await clients("carol"), await clients("eve"))
    await mesh(clients, [alice, bob, carol])
    await clients.connect(eve, bob)
    a, b, c = Inbox(alice), Inbox(bob), Inbox(carol)
    gid = (await alice.create_group("Safe", [bob.account_id, carol.account_id])).group_id
    await b.wait_version(1)
    await c.wait_version(1)
    head = await carol._run(lambda core: _groups.GroupView.load(core, gid).head)
    assert head is not None
    parent = head.state

    # 1. Carol (a member, not an admin) signs a state removing Bob.
    coup = GroupState(group_id=gid, version=2, parent=head.hash, signer=carol.account_id,
                      name=parent.name, members=tuple(m for m in parent.members
                                                      if m != bob.account_id),
                      admins=parent.admins, at_ms=1)
    sig = carol.core.identity.key_pair.sign(Purpose.GROUP_CONTROL, coup.encode())
    # 2. A state claiming Alice as its signer, signed by Carol's key.
    forged = dataclasses.replace(coup, signer=alice.account_id, name="Forged")
    bad_sig = carol.core.identity.key_pair.sign(Purpose.GROUP_CONTROL, forged.encode())
    # 3. The right state with a signature for another purpose.
    other_purpose = alice.core.identity.key_pair.sign(Purpose.SENDER_KEY_MESSAGE,
                                                      forged.encode())
    for state, signature in ((coup, sig), (forged, bad_sig), (forged, other_purpose)):
        for peer in (alice.account_id, bob.account_id):
            await _send_inner(carol, peer, GroupControl(
                message_id=os.urandom(16), sent_at_ms=1, state=state.encode(),
                signature=signature))
    # 4. Eve, a contact of Bob and no member, writes "in" the group.
    await _rogue_group_message(eve, bob.account_id, gid, "eve was here")
    # A pairwise marker after all of it: once it arrives, the rest was processed.
    await carol.send_text(bob.account_id, "marker")
    await carol.send_text(alice.account_id, "marker")
    await eve.send_text(bob.account_id, "eve marker")
    await b.wait(MessageReceived, text="marker")
    await b.wait(MessageReceived, text="eve marker")
    await a.wait(MessageReceived, text="marker")
    for client in (alice, bob):
        info = await client.group(gid)
        assert info.version == 1 and info.name == "Safe"
        assert bob.account_id in info.members
    assert not [e for e in b.events if isinstance(e, GroupChanged)
                and e.group.version > 1]
    assert "eve was here" not in b.texts()

    # 5. Once removed, Carol's messages are not shown either (she is no member).
    await alice.remove_members(gid, [carol.account_id])
    await b.wait_version(2)
    await _rogue_group_message(carol, bob.account_id, gid, "carol after removal")
    await carol.send_text(bob.account_id, "marker 2")
    await b.wait(MessageReceived, text="marker 2")
    assert "carol after removal" not in b.texts()
    await alice.send_group_text(gid, "still fine")
    await b.wait_text("still fine")

    # 6. Eve's blob from step 4 waited at Bob's; Eve is added now: it was stored before
    #    the state adding her, so it is dropped, while what she writes as a member shows.
    await clients.connect(alice, eve)
    await alice.add_members(gid, [eve.account_id])
    e = Inbox(eve)
    await b.wait_version(3)
    await e.wait_version(3)
    await eve.send_group_text(gid, "eve, a member now")
    await b.wait_text("eve, a member now")
    await alice.send_group_text(gid, "welcome eve")
    await b.wait_text("welcome eve")
    assert "eve was here" not in b.texts()


async def test_listed_channel_only_admins_post(clients: ClientFactory) -> None:
    # A channel whose state lists every member (create_group(channel=True), up to
    # 1,000); channels that scale (create_channel) are in test_sdk_channels.py.
    alice, bob, carol, dave = (await clients("alice"), await clients("bob"),
                               await clients("carol"), await clients("dave"))
    await mesh(clients, [alice, bob, carol])
    await clients.connect(alice, dave)  # a subscriber needs a session with admins only
    a, b, c, d = Inbox(alice), Inbox(bob), Inbox(carol), Inbox(dave)
    info = await alice.create_group("News", [bob.account_id, carol.account_id,
                                             dave.account_id], channel=True)
    assert info.channel and not info.subscriptions
    for inbox in (b, c, d):
        await inbox.wait_version(1)
    with pytest.raises(NotGroupAdmin):
        await bob.send_group_text(info.group_id, "may I?")
    await alice.send_group_text(info.group_id, "issue 1")
    for inbox in (b, c, d):
        await inbox.wait_text("issue 1")
    await dave.leave_group(info.group_id)  # signed by Dave, reaches the admin
    assert (await a.wait_version(2)).removed == (dave.account_id,)
    # Bob and Carol are no contacts of Dave: Alice, the first admin, passes it on.
    for inbox in (b, c):
        assert (await inbox.wait_version(2)).removed == (dave.account_id,)
    await alice.rename_group(info.group_id, "News 2")
    for inbox in (b, c):
        await inbox.wait_version(3)
    # A member posting anyway (bypassing its client) is not shown.
    await _rogue_group_message(bob, carol.account_id, info.group_id, "bob's post")
    await bob.send_text(carol.account_id, "marker")
    await c.wait(MessageReceived, text="marker")
    assert "bob's post" not in c.texts()


async def test_edits_reactions_deletes_receipts_typing(clients: ClientFactory) -> None:
    alice, bob, carol = await clients("alice"), await clients("bob"), await clients("carol")
    await mesh(clients, [alice, bob, carol])
    a, b, c = Inbox(alice), Inbox(bob), Inbox(carol)
    gid = (await alice.create_group("Talk", [bob.account_id, carol.account_id])).group_id
    await b.wait_version(1)
    await c.wait_version(1)
    ref = await alice.send_group_text(gid, "first draft")
    await b.wait_text("first draft")
    await c.wait_text("first draft")
    await alice.edit_group_message(gid, ref.message_id, "final text")
    for inbox in (b, c):
        [edited] = await inbox.wait(MessageEdited, message_id=ref.message_id)
        assert edited.text == "final text"  # type: ignore[attr-defined]
        assert edited.group_id == gid  # type: ignore[attr-defined]
    await bob.react_in_group(gid, ref.message_id, "👍")
    [reaction] = await a.wait(ReactionChanged, message_id=ref.message_id)
    assert reaction.peer == bob.account_id  # type: ignore[attr-defined]
    assert reaction.group_id == gid  # type: ignore[attr-defined]
    await c.wait(ReactionChanged, message_id=ref.message_id)
    reply = await bob.send_group_text(gid, "a reply", reply_to=ref.message_id)
    got = await c.wait_text("a reply")
    assert got.reply_to == ref.message_id and got.group_id == gid
    assert got.peer == bob.account_id
    # Receipts go to the author only, who aggregates them: DELIVERED once both
    # delivered (automatic), READ once both read.
    await a.wait(MessageStatusChanged, message_id=ref.message_id,
                 status=MessageStatus.DELIVERED)
    await carol.mark_group_read(gid, [ref.message_id])
    [partial] = await a.wait(GroupReceiptsChanged, message_id=ref.message_id,
                             read=(carol.account_id,))
    assert isinstance(partial, GroupReceiptsChanged) and partial.members == 2
    assert set(partial.delivered) == {bob.account_id, carol.account_id}
    assert not [e for e in a.events if isinstance(e, MessageStatusChanged)
                and e.status is MessageStatus.READ]
    await bob.mark_group_read(gid, [ref.message_id])
    await a.wait(MessageStatusChanged, message_id=ref.message_id, status=MessageStatus.READ)
    mine = next(m for m in (await alice.group_history(gid)).messages
                if m.message_id == ref.message_id)
    assert mine.status is MessageStatus.READ
    assert not [e for e in b.events if isinstance(e, GroupReceiptsChanged)
                and e.message_id == ref.message_id]  # only the author learns them
    page = await bob.group_history(gid)
    first = next(m for m in page.messages if m.message_id == ref.message_id)
    assert first.body == "final text" and first.reactions
    found = await bob.search("FINAL", peer=gid)  # a group id names its conversation
    assert [h.message.message_id for h in found.hits] == [ref.message_id]
    assert (await bob.search("final", peer=alice.account_id)).hits == ()
    with pytest.raises(UnknownContact):
        await bob.search("final", peer=os.urandom(16))
    with pytest.raises(ClientError):  # only the author edits or deletes
        await alice.edit_group_message(gid, reply.message_id, "not mine")
    await alice.delete_in_group(gid, ref.message_id)
    [deleted] = await b.wait(MessageDeleted, message_id=ref.message_id)
    assert deleted.group_id == gid  # type: ignore[attr-defined]
    await c.wait(MessageDeleted, message_id=ref.message_id)
    assert await alice.send_group_typing(gid)  # Alice's chain is with everyone
    [typing] = await b.wait(GroupTypingChanged, group_id=gid)
    assert typing.peer == alice.account_id and typing.active  # type: ignore[attr-defined]


async def test_a_member_added_after_a_message_is_not_waited_for(
        clients: ClientFactory) -> None:
    """Receipts count against those who could have received the message: Carol, added
    after Alice's message, never gets it, and Bob's read alone makes it READ."""
    alice, bob, carol = await clients("alice"), await clients("bob"), await clients("carol")
    await mesh(clients, [alice, bob, carol])
    a, b, c = Inbox(alice), Inbox(bob), Inbox(carol)
    gid = (await alice.create_group("g", [bob.account_id])).group_id
    await b.wait_version(1)
    ref = await alice.send_group_text(gid, "before carol")
    await b.wait_text("before carol")
    await a.wait(MessageStatusChanged, message_id=ref.message_id,
                 status=MessageStatus.DELIVERED)
    await asyncio.sleep(0.01)  # the add is stored after the message was sent
    await alice.add_members(gid, [carol.account_id])
    await c.wait_version(2)
    await b.wait_version(2)
    await bob.mark_group_read(gid, [ref.message_id])
    [counted] = await a.wait(GroupReceiptsChanged, message_id=ref.message_id,
                             read=(bob.account_id,))
    assert isinstance(counted, GroupReceiptsChanged) and counted.members == 1
    await a.wait(MessageStatusChanged, message_id=ref.message_id, status=MessageStatus.READ)


async def test_relay_store_holds_no_group_id_or_members(
        clients: ClientFactory, pigeon_relay: RelayProcess,  # noqa: F811
        tmp_path: Path) -> None:
    alice, bob, carol = await clients("alice"), await clients("bob"), await clients("carol")
    await mesh(clients, [alice, bob, carol])
    b, c = Inbox(bob), Inbox(carol)
    name = "Very secret group name"
    info = await alice.create_group(name, [bob.account_id, carol.account_id])
    gid = info.group_id
    await b.wait_version(1)
    await c.wait_version(1)
    for i in range(5):
        await alice.send_group_text(gid, f"group text {i}")
        await bob.send_group_text(gid, f"bob text {i}")
    await c.wait_text("group text 4")
    await c.wait_text("bob text 4")
    await alice.rename_group(gid, name + " 2")
    await c.wait_version(2)
    photo = tmp_path / "group photo.jpg"
    photo.write_bytes(os.urandom(50_000))
    await alice.send_group_file(gid, photo, caption=name)  # a blob in the blob store
    await c.wait(MessageReceived, kind=MessageKind.FILE)
    # Keep envelopes on the relay: Carol disconnects before more arrive.
    await carol.close()
    await alice.send_group_text(gid, "while carol is away")
    await quiet(alice)

    members = sorted([alice.account_id, bob.account_id, carol.account_id])
    needles = {
        "group id": gid, "group id (hex)": gid.hex().encode(),
        "name": name.encode(), "member list": b"".join(members),
        "member list (msgpack)": msgpack.packb(members),
        "member pair": members[0] + members[1],
        "file name": b"group photo",
    }
    scanned = 0
    for path in sorted(pigeon_relay.folder.rglob("*")):
        if not path.is_file():
            continue
        data = path.read_bytes()
        scanned += len(data)
        for what, needle in needles.items():
            assert needle not in data, f"{what} found in the relay's {path.name}"
    assert scanned > 0
    blobs = [p for p in pigeon_relay.folder.rglob("*") if p.is_file() and "blob" in str(p)]
    assert blobs, "the relay's blob store was scanned"
    db = list(pigeon_relay.folder.rglob("*.sqlite*")) + list(pigeon_relay.folder.rglob("*.db*"))
    assert db, "the relay's SQLite file was scanned"
    # The one blob row of a group send links its recipients' mailboxes only while two of
    # its copies are unacked: once Bob acked his, Carol's copies name their blob alone.
    [main] = [p for p in db if p.suffix in (".sqlite", ".db")]
    with contextlib.closing(sqlite3.connect(f"file:{main}?mode=ro", uri=True)) as conn:
        deadline = asyncio.get_running_loop().time() + 20
        while shared := conn.execute("SELECT count(*) FROM (SELECT blob_id FROM deliveries"
                                     " GROUP BY blob_id HAVING count(*) > 1)").fetchone()[0]:
            assert asyncio.get_running_loop().time() < deadline, \
                f"{shared} blob rows still named by two deliveries after Bob's acks"
            await asyncio.sleep(0.05)  # Bob's acks on their way
        assert conn.execute("SELECT count(*) FROM deliveries").fetchone()[0] > 0  # Carol's


async def test_readded_member_reads_a_silent_members_next_message(
        clients: ClientFactory) -> None:
    alice, bob, carol = await clients("alice"), await clients("bob"), await clients("carol")
    await mesh(clients, [alice, bob, carol])
    a, b, c = Inbox(alice), Inbox(bob), Inbox(carol)
    gid = (await alice.create_group("Again", [bob.account_id, carol.account_id])).group_id
    await b.wait_version(1)
    await c.wait_version(1)
    await bob.send_group_text(gid, "bob's first")  # Bob's chain goes to Alice and Carol
    await c.wait_text("bob's first")
    await alice.remove_members(gid, [carol.account_id])
    await alice.add_members(gid, [carol.account_id])
    await b.wait_version(3)
    await c.wait_version(3)
    # Bob said nothing meanwhile: he dropped his chain when Carol left, so his next
    # message starts a new one, which Carol (who forgot the old one) receives.
    await bob.send_group_text(gid, "bob after carol is back")
    await c.wait_text("bob after carol is back")
    await a.wait_text("bob after carol is back")


async def test_files_in_groups(clients: ClientFactory, tmp_path: Path) -> None:
    alice, bob, carol = await clients("alice"), await clients("bob"), await clients("carol")
    await mesh(clients, [alice, bob, carol])
    b, c = Inbox(bob), Inbox(carol)
    gid = (await alice.create_group("Files", [bob.account_id, carol.account_id])).group_id
    await b.wait_version(1)
    await c.wait_version(1)
    data = os.urandom(300_000)
    source = tmp_path / "notes.bin"
    source.write_bytes(data)
    alice.file_options = FileOptions(chunk_size=64 * 1024, parallel=3)
    ref = await alice.send_group_file(gid, source, caption="for everyone")
    assert ref.peer == gid
    for client, inbox in ((bob, b), (carol, c)):
        [event] = await inbox.wait(MessageReceived, kind=MessageKind.FILE)
        assert isinstance(event, MessageReceived)
        assert event.peer == alice.account_id and event.text == "for everyone"
        assert event.group_id == gid and event.file is not None
        assert event.file.name == "notes.bin" and event.file.size == len(data)
        assert event.conversation_id == (await client.group(gid)).conversation_id
        out = await client.download_group_file(gid, event.message_id,
                                               tmp_path / f"{client.account_id.hex()}.bin")
        assert out.read_bytes() == data
    page = await alice.group_history(gid)
    assert [m.kind for m in page.messages] == [MessageKind.FILE]


async def test_group_avatar_is_an_encrypted_file(clients: ClientFactory, tmp_path: Path) -> None:
    alice, bob = await clients("alice"), await clients("bob")
    await clients.connect(alice, bob)
    b = Inbox(bob)
    first, second = tmp_path / "first.png", tmp_path / "second.png"
    first.write_bytes(os.urandom(70_000))
    second.write_bytes(os.urandom(5_000))
    gid = (await alice.create_group("Pictures", [bob.account_id], avatar=first)).group_id
    info = (await b.wait_version(1)).group
    assert info.avatar_manifest is not None
    assert FileManifest.from_bytes(info.avatar_manifest).name == "first.png"
    got = await bob.download_group_avatar(gid, tmp_path / "bob-first.png")
    assert got is not None and got.read_bytes() == first.read_bytes()

    before = await alice.transfers()
    with pytest.raises(UnknownContact):  # every member is checked before the upload
        await alice.create_group("Nobody", [bytes(16)], avatar=second)
    assert await alice.transfers() == before
    before = await bob.transfers()
    with pytest.raises(NotGroupAdmin):  # checked before anything is uploaded
        await bob.set_group_avatar(gid, avatar=second)
    assert await bob.transfers() == before
    with pytest.raises(ValueError, match="not both"):
        await alice.set_group_avatar(gid, avatar_manifest=info.avatar_manifest,
                                     avatar=second)
    with pytest.raises(ValueError, match="not an encoded file manifest"):
        await alice.set_group_avatar(gid, avatar_manifest=b"an encoded manifest")

    await alice.set_group_avatar(gid, avatar=second)
    info = (await b.wait_version(2)).group
    got = await bob.download_group_avatar(gid, tmp_path / "bob-second.png")
    assert got is not None and got.read_bytes() == second.read_bytes()
    # The admin who set it gets it too: from its own source file, which is here.
    mine = await alice.download_group_avatar(gid, tmp_path / "alice-second.png")
    assert mine is not None and mine.read_bytes() == second.read_bytes()
    await alice.set_group_avatar(gid)  # neither: no avatar
    assert (await b.wait_version(3)).group.avatar_manifest is None
    assert await bob.download_group_avatar(gid, tmp_path / "none.png") is None
    assert not (tmp_path / "none.png").exists()
    await bob.leave_group(gid)  # no longer a member: as for rename_group, not "not an admin"
    before = await bob.transfers()
    with pytest.raises(NotGroupMember):
        await bob.set_group_avatar(gid, avatar=second)
    assert await bob.transfers() == before


async def test_first_admin_does_not_pass_on_a_state_its_signer_wrote_to_everyone(
        clients: ClientFactory, monkeypatch: pytest.MonkeyPatch) -> None:
    alice, bob, carol = await clients("alice"), await clients("bob"), await clients("carol")
    await mesh(clients, [alice, bob, carol])
    first, second = sorted([alice, bob], key=lambda x: x.account_id)  # admins[0] = first
    inboxes = {x.account_id: Inbox(x) for x in (alice, bob, carol)}
    gid = (await first.create_group("G", [second.account_id, carol.account_id],
                                    admins=[second.account_id])).group_id
    for x in (second, carol):
        await inboxes[x.account_id].wait_version(1)
    passed_on: list[tuple[bytes, bytes]] = []
    real = _groups.forward_states

    def forward_states(core: ClientCore, states: Any, **kw: Any) -> list[OutboxItem]:
        states = list(states)
        if core.account_id == first.account_id:
            passed_on.extend(states)
        return real(core, states, **kw)

    monkeypatch.setattr(_groups, "forward_states", forward_states)
    # The second admin removes Carol: it writes to everyone, and says so.
    await rename_members(second, gid, [first.account_id])
    assert (await inboxes[first.account_id].wait_version(2)).group.members == tuple(
        sorted([first.account_id, second.account_id]))
    await quiet(first, second)
    assert passed_on == []


async def rename_members(client: AsyncClient, gid: bytes, members: Sequence[bytes],
                         ) -> list[OutboxItem]:
    now = client._now_ms()
    keep = (client.account_id, *members)
    items, events = await client._run(lambda c: _groups.change(
        c, gid, lambda s: {"members": tuple(sorted(keep)),
                           "admins": tuple(a for a in s.admins if a in keep)}, now_ms=now))
    client._pump.add(items)
    client._emit(events)
    return items


async def test_members_who_are_not_contacts_are_introduced(clients: ClientFactory) -> None:
    alice, bob, carol = await clients("alice"), await clients("bob"), await clients("carol")
    await clients.connect(alice, bob)
    await clients.connect(alice, carol)  # Bob and Carol do not know each other
    b, c = Inbox(bob), Inbox(carol)
    gid = (await alice.create_group("Intro", [bob.account_id, carol.account_id])).group_id
    await b.wait_version(1)
    await c.wait_version(1)
    # The member with the smaller account id invites; the other accepts a co-member.
    await b.wait(ContactAccepted, peer=carol.account_id)
    await c.wait(ContactAccepted, peer=bob.account_id)
    for x, y in ((bob, carol), (carol, bob)):
        contact = x.contact(y.account_id)
        assert contact is not None and contact.state is ContactState.ACCEPTED
    await bob.send_group_text(gid, "hello carol, via the group")
    await c.wait_text("hello carol, via the group")
    await carol.send_group_text(gid, "hello bob")
    await b.wait_text("hello bob")


async def test_group_disappearing_timer_reaches_every_member(clients: ClientFactory) -> None:
    alice, bob, carol = await clients("alice"), await clients("bob"), await clients("carol")
    await mesh(clients, [alice, bob, carol])
    a, b, c = Inbox(alice), Inbox(bob), Inbox(carol)
    gid = (await alice.create_group("Ephemeral", [bob.account_id, carol.account_id])).group_id
    for inbox in (b, c):
        await inbox.wait_version(1)
    await bob.send_group_text(gid, "kept")
    await a.wait_text("kept")

    await alice.set_group_disappearing(gid, 3_600_000)
    await a.wait(DisappearingTimerChanged, peer=gid, by_peer=False, timer_ms=3_600_000)
    for inbox in (b, c):
        await inbox.wait(DisappearingTimerChanged, peer=gid, by_peer=True, timer_ms=3_600_000)
    await carol.send_group_text(gid, "vanishing")
    for inbox in (a, b):
        await inbox.wait_text("vanishing")
    for client in (alice, bob, carol):
        stored = {m.body: m for m in (await client.group_history(gid)).messages}
        assert stored["kept"].expires_at_ms is None
        assert stored["vanishing"].expires_at_ms is not None, client

    await bob.set_group_disappearing(gid, None)
    await a.wait(DisappearingTimerChanged, peer=gid, by_peer=True, timer_ms=None)
    await c.wait(DisappearingTimerChanged, peer=gid, by_peer=True, timer_ms=None)
    with pytest.raises(ValueError):
        await alice.set_group_disappearing(gid, 0)
