"""End to end: channels with subscriptions (``create_channel``, docs/protocol.md §9.14)
with several SDK clients and a real relay process.

The admin posts, subscribers read and cannot post; each subscriber learns only its own
membership; a removed subscriber reads nothing sent after (even handed the blob); a
subscriber leaves; a second admin learns the roster and posts to it; forged and
non-admin subscriptions are rejected; an offline subscriber catches up; the relay's
files hold neither the channel id, nor its name, nor its roster.
"""

from __future__ import annotations

import asyncio
import dataclasses
import os

import msgpack
import pytest

from client_sdk import (
    AsyncClient,
    ContactState,
    GroupChanged,
    MessageReceived,
    NotGroupAdmin,
    _groups,
)
from client_sdk.store import Durability
from client_sdk.testing import (  # noqa: F401 - fixtures
    FAST_PARAMS,
    ClientFactory,
    RelayProcess,
    pigeon_clients,
    pigeon_relay,
)
from pigeon_crypto.sender_keys import UnknownSenderChain
from pigeon_crypto.signing import Purpose
from protocol.group import Subscription
from protocol.inner import GroupControl

from .test_sdk_groups import (  # noqa: F401 - the clients fixture
    Inbox,
    _chain_copy,
    _opens,
    _post_to,
    _rogue_group_message,
    _send_inner,
    _unsent_group_blob,
    clients,
    quiet,
)


async def test_channel_admin_posts_subscribers_read(clients: ClientFactory) -> None:  # noqa: F811
    alice, bob, carol, dave = (await clients("alice"), await clients("bob"),
                               await clients("carol"), await clients("dave"))
    for reader in (bob, carol, dave):  # subscribers know the admin only
        await clients.connect(alice, reader)
    a, b, c, d = Inbox(alice), Inbox(bob), Inbox(carol), Inbox(dave)
    readers = [bob.account_id, carol.account_id, dave.account_id]
    info = await alice.create_channel("News", readers)
    gid = info.group_id
    assert info.channel and info.subscriptions and info.admins == (alice.account_id,)
    assert set(info.members) == {alice.account_id, *readers}
    for inbox, me in ((b, bob), (c, carol), (d, dave)):
        changed = await inbox.wait(GroupChanged)
        assert isinstance(changed[0], GroupChanged) and changed[0].created
        # A subscriber learns the admins and itself, no other subscriber.
        assert set((await me.group(gid)).members) == {alice.account_id, me.account_id}
        assert (await me.group(gid)).active
    with pytest.raises(NotGroupAdmin):
        await bob.send_group_text(gid, "may I?")
    await alice.send_group_text(gid, "issue 1")
    for inbox in (b, c, d):
        got = await inbox.wait_text("issue 1")
        assert got.peer == alice.account_id

    # Remove Dave: he learns it; the next post rotates and he cannot read it, not even
    # with a copy of the chain he held.
    dave_copy = await _chain_copy(dave, gid, alice.account_id)
    await alice.remove_members(gid, [dave.account_id])
    await d.wait(GroupChanged, count=2)
    gone = [e for e in d.events if isinstance(e, GroupChanged)][-1]
    assert isinstance(gone, GroupChanged) and not gone.group.active
    assert dave.account_id in gone.removed
    assert dave.account_id not in (await alice.group(gid)).members
    await alice.send_group_text(gid, "issue 2")
    for inbox in (b, c):
        await inbox.wait_text("issue 2")
    await quiet(alice)
    blob = await alice._run(lambda core: _unsent_group_blob(core, gid, "secret issue"))
    await _post_to(alice, dave.account_id, blob)
    await alice.send_text(dave.account_id, "marker")
    await d.wait(MessageReceived, text="marker")
    await asyncio.sleep(0.5)
    assert "issue 2" not in d.texts() and "secret issue" not in d.texts()
    assert d.texts() == ["issue 1", "marker"]
    assert _opens(await _chain_copy(bob, gid, alice.account_id), blob) == "secret issue"
    with pytest.raises(UnknownSenderChain):
        _opens(dave_copy, blob)

    # Carol leaves: signed by her, it reaches the admin; she reads nothing after.
    await carol.leave_group(gid)
    assert not (await carol.group(gid)).active
    [left] = await a.wait(GroupChanged, removed=(carol.account_id,))
    assert isinstance(left, GroupChanged) and left.by == carol.account_id
    await alice.send_group_text(gid, "issue 3")
    await b.wait_text("issue 3")
    await alice.send_text(carol.account_id, "marker")
    await c.wait(MessageReceived, text="marker")
    assert "issue 3" not in c.texts()

    # A rename reaches the remaining subscriber; a rogue post by him is not shown.
    await alice.rename_group(gid, "News 2")
    changed = await b.wait_version(2)
    assert changed.group.name == "News 2"
    await _rogue_group_message(bob, alice.account_id, gid, "bob's post")
    await bob.send_text(alice.account_id, "bob marker")
    await a.wait(MessageReceived, text="bob marker")
    assert "bob's post" not in a.texts()

    # Dave subscribes again: he reads what is posted from now on, nothing between.
    await alice.add_members(gid, [dave.account_id])
    await d.wait(GroupChanged, count=2, created=True)
    assert (await dave.group(gid)).active
    await alice.send_group_text(gid, "issue 4")
    await d.wait_text("issue 4")
    assert d.texts() == ["issue 1", "marker", "issue 4"]


async def test_a_promoted_subscriber_is_introduced_to_the_readers(
        clients: ClientFactory) -> None:  # noqa: F811
    """Bob, a subscriber who knows no other reader, is promoted: he invites the readers
    of his roster, they accept an admin of a channel they read (but never each other),
    and his posts reach them."""
    alice, bob, carol, dave = (await clients("alice"), await clients("bob"),
                               await clients("carol"), await clients("dave"))
    for reader in (bob, carol, dave):
        await clients.connect(alice, reader)
    c, d = Inbox(carol), Inbox(dave)
    gid = (await alice.create_channel("Desk", [bob.account_id, carol.account_id,
                                               dave.account_id])).group_id
    await c.wait(GroupChanged)
    await d.wait(GroupChanged)
    await alice.promote(gid, [bob.account_id])
    async with asyncio.timeout(30):
        while not all((k := bob.contact(r.account_id)) is not None  # noqa: ASYNC110
                      and k.state is ContactState.ACCEPTED for r in (carol, dave)):
            await asyncio.sleep(0.05)
    await bob.send_group_text(gid, "from the new admin")
    for inbox in (c, d):
        await inbox.wait_text("from the new admin")
    # Readers are not introduced to each other.
    assert carol.contact(dave.account_id) is None and dave.contact(carol.account_id) is None


async def test_second_admin_gets_the_roster_and_posts(clients: ClientFactory) -> None:  # noqa: F811
    alice, bob, carol, dave = (await clients("alice"), await clients("bob"),
                               await clients("carol"), await clients("dave"))
    await clients.connect(alice, bob)
    for reader in (carol, dave):  # both admins know the readers
        await clients.connect(alice, reader)
        await clients.connect(bob, reader)
    b, c, d = Inbox(bob), Inbox(carol), Inbox(dave)
    gid = (await alice.create_channel("Desk", [carol.account_id])).group_id
    await c.wait(GroupChanged)
    # Dave subscribes later: he reads nothing from before.
    await alice.send_group_text(gid, "before dave")
    await c.wait_text("before dave")
    await alice.add_members(gid, [dave.account_id])
    await d.wait(GroupChanged)
    await alice.promote(gid, [bob.account_id])
    changed = await b.wait_version(2)
    assert set(changed.group.admins) == {alice.account_id, bob.account_id}
    # Bob, a new admin, got the roster with the state that promoted him.
    async with asyncio.timeout(20):
        while set((await bob.group(gid)).members) != {  # noqa: ASYNC110 - polls the store
                alice.account_id, bob.account_id, carol.account_id, dave.account_id}:
            await asyncio.sleep(0.05)
    await bob.send_group_text(gid, "from bob")
    for inbox in (c, d):
        await inbox.wait_text("from bob")
    assert "before dave" not in d.texts()
    # Bob removes Carol; Alice learns it from Bob and rotates before her next post.
    await bob.remove_members(gid, [carol.account_id])
    async with asyncio.timeout(20):
        while carol.account_id in (await alice.group(gid)).members:  # noqa: ASYNC110
            await asyncio.sleep(0.05)
    await alice.send_group_text(gid, "after carol")
    await d.wait_text("after carol")
    await alice.send_text(carol.account_id, "marker")
    await c.wait(MessageReceived, text="marker")
    assert "after carol" not in c.texts()

    # Alice demotes Bob: he stays a subscriber, reads, and may no longer post.
    await alice.demote(gid, [bob.account_id])
    changed = await b.wait_version(3)
    assert changed.demoted == (bob.account_id,) and changed.group.active
    assert (await bob.group(gid)).admins == (alice.account_id,)
    with pytest.raises(NotGroupAdmin):
        await bob.send_group_text(gid, "still an admin?")
    await alice.send_group_text(gid, "bob reads as a subscriber")
    await b.wait_text("bob reads as a subscriber")


async def test_forged_subscriptions_rejected(clients: ClientFactory) -> None:  # noqa: F811
    """Non-admin, misattributed, cross-purpose and state-as-subscription control messages,
    at an admin, at a subscriber and at a non-member."""
    alice, bob, carol = await clients("alice"), await clients("bob"), await clients("carol")
    await clients.connect(alice, bob)
    await clients.connect(alice, carol)
    await clients.connect(bob, carol)
    a, b, c = Inbox(alice), Inbox(bob), Inbox(carol)
    gid = (await alice.create_channel("Safe", [bob.account_id, carol.account_id])).group_id
    await b.wait(GroupChanged)
    await c.wait(GroupChanged)
    view = await bob._run(lambda core: _groups.GroupView.load(core, gid))
    head = view.head
    assert head is not None
    removal = Subscription(group_id=gid, seq=2, signer=bob.account_id, at_ms=1,
                           subscriber=carol.account_id, subscribed=False,
                           authority=head.hash)
    bob_key = bob.core.identity.key_pair
    forgeries = [
        # 1. Bob, a subscriber, removes Carol under his own name.
        (removal.encode(), bob_key.sign(Purpose.GROUP_CONTROL, removal.encode())),
        # 2. The same claiming Alice as its signer, signed by Bob's key.
        (dataclasses.replace(removal, signer=alice.account_id).encode(),
         bob_key.sign(Purpose.GROUP_CONTROL,
                      dataclasses.replace(removal, signer=alice.account_id).encode())),
        # 3. A removal signed by Alice's key for another purpose.
        (dataclasses.replace(removal, signer=alice.account_id).encode(),
         alice.core.identity.key_pair.sign(
             Purpose.SENDER_KEY_MESSAGE,
             dataclasses.replace(removal, signer=alice.account_id).encode())),
        # 4. The channel's state and its signature offered as a subscription.
        (head.encoded, head.signature),
    ]
    for pair in forgeries:
        for peer in (alice.account_id, carol.account_id):
            await _send_inner(bob, peer, GroupControl(
                message_id=os.urandom(16), sent_at_ms=1, state=head.encoded,
                signature=head.signature, subscriptions=(pair,)))
    await bob.send_text(alice.account_id, "marker")
    await bob.send_text(carol.account_id, "marker")
    await a.wait(MessageReceived, text="marker")
    await c.wait(MessageReceived, text="marker")
    assert carol.account_id in (await alice.group(gid)).members
    assert (await carol.group(gid)).active
    assert [e.created for e in a.events if isinstance(e, GroupChanged)] == [True]
    assert len([e for e in c.events if isinstance(e, GroupChanged)]) == 1
    await alice.send_group_text(gid, "still fine")
    await c.wait_text("still fine")

    # 5. Bob "subscribes" Eve, his contact and no reader: under his own name, and
    # claiming Alice's. Eve takes neither: no admin of the state made them.
    eve = await clients("eve")
    await clients.connect(bob, eve)
    e = Inbox(eve)
    for signer in (bob.account_id, alice.account_id):
        invite = Subscription(group_id=gid, seq=1, signer=signer, at_ms=1,
                              subscriber=eve.account_id, subscribed=True,
                              authority=head.hash)
        await _send_inner(bob, eve.account_id, GroupControl(
            message_id=os.urandom(16), sent_at_ms=1, state=head.encoded,
            signature=head.signature,
            subscriptions=((invite.encode(), bob_key.sign(Purpose.GROUP_CONTROL,
                                                          invite.encode())),)))
    await bob.send_text(eve.account_id, "marker")
    await e.wait(MessageReceived, text="marker")
    assert await eve.groups(include_left=True) == []
    assert not [ev for ev in e.events if isinstance(ev, GroupChanged)]


async def test_offline_subscriber_catches_up(clients: ClientFactory) -> None:  # noqa: F811
    alice, bob = await clients("alice"), await clients("bob")
    await clients.connect(alice, bob)
    gid = (await alice.create_channel("Later", [])).group_id
    await bob.close()
    await alice.add_members(gid, [bob.account_id])
    await alice.rename_group(gid, "Later 2")
    await alice.send_group_text(gid, "while away")
    await quiet(alice)
    back = AsyncClient.open(clients.folder / "bob.pigeon", "passphrase of bob",
                            relay_url=clients.relay.url, params=FAST_PARAMS,
                            durability=Durability.OFF, reconnect_cap_ms=1000)
    clients.clients.append(back)
    b = Inbox(back)
    await back.start()
    await b.wait_text("while away")
    info = await back.group(gid)
    assert info.active and info.name == "Later 2" and info.subscriptions


async def test_relay_store_holds_no_channel_id_or_roster(
        clients: ClientFactory, pigeon_relay: RelayProcess) -> None:  # noqa: F811
    alice, bob, carol = await clients("alice"), await clients("bob"), await clients("carol")
    for reader in (bob, carol):
        await clients.connect(alice, reader)
    b, c = Inbox(bob), Inbox(carol)
    name = "Very secret channel name"
    gid = (await alice.create_channel(name, [bob.account_id, carol.account_id])).group_id
    await b.wait(GroupChanged)
    await c.wait(GroupChanged)
    await alice.send_group_text(gid, "post 1")
    await c.wait_text("post 1")
    await alice.remove_members(gid, [bob.account_id])
    await b.wait(GroupChanged, count=2)
    await carol.close()  # envelopes stay on the relay
    await alice.add_members(gid, [bob.account_id])
    await alice.send_group_text(gid, "post 2")
    await quiet(alice)
    roster = sorted([alice.account_id, bob.account_id, carol.account_id])
    needles = {"channel id": gid, "channel id (hex)": gid.hex().encode(),
               "name": name.encode(), "roster": b"".join(roster),
               "readers": b"".join(sorted([bob.account_id, carol.account_id])),
               "roster (msgpack)": msgpack.packb(roster)}
    scanned = 0
    for path in sorted(pigeon_relay.folder.rglob("*")):
        if path.is_file():
            data = path.read_bytes()
            scanned += len(data)
            for what, needle in needles.items():
                assert needle not in data, f"{what} found in the relay's {path.name}"
    assert scanned > 0
