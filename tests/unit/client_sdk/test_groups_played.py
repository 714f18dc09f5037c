"""Group changes played between real client cores over pairwise sessions
(``FakeRelay``): what an admin removed from a group (or an ex-member) can still sign
(signatures stay valid, the rights do not: docs/protocol.md §9.14, "Removed admins"),
and the events of a change."""

from __future__ import annotations

import dataclasses
import itertools

import pytest

from client_sdk import (
    GroupChanged,
    MessageReceived,
    NotGroupAdmin,
    ReceiptReceived,
    _channels,
    _groups,
    _groups_receive,
)
from client_sdk._group_state import GroupView
from client_sdk._sending import _Batch
from client_sdk.history import MessageStatus, NewMessage
from client_sdk.store.group_records import SignedGroupState
from client_sdk.store.records import Outgoing, SessionUpdate
from protocol.frames import Delivery
from protocol.group import Subscription
from protocol.inner import (
    GroupControl,
    InnerMessage,
    Receipt,
    ReceiptKind,
    SenderKeyRequest,
    Text,
)

from .test_core import FakeRelay, Party, _connect

_ids = itertools.count(1)


def _send_inner(sender: Party, peer: bytes, inner: InnerMessage) -> None:
    """*inner* over the pairwise session, as a tampering client would send it."""
    core = sender.core
    batch = _Batch(core)
    _, outbound = core.sendable(peer)
    blob, state = batch.encrypt(peer, inner)
    batch.commit([Outgoing(entry=batch.entry(outbound, blob, 0),
                           session=SessionUpdate(peer=peer, state=state))])
    sender.flush()


def _control(state: SignedGroupState, **extra: object) -> GroupControl:
    return GroupControl(message_id=next(_ids).to_bytes(16, "big"), sent_at_ms=1,
                        state=state.encoded, signature=state.signature, **extra)  # type: ignore[arg-type]


def _head(p: Party, gid: bytes) -> SignedGroupState:
    head = GroupView.load(p.core, gid).head
    assert head is not None
    return head


def test_a_removed_admin_cannot_take_the_group_back() -> None:
    """A removes admin B at version 2. B then signs a longer branch from version 1,
    where it was an admin: every member, A included, stays on A's branch."""
    relay = FakeRelay()
    a, b, c = Party(relay, "a"), Party(relay, "b"), Party(relay, "c")
    _connect(a, b)
    _connect(a, c)
    _connect(b, c)
    gid, _, _ = _groups.create(a.core, name="g", members=[b.id, c.id], admins=[b.id],
                               avatar=None, channel=False, now_ms=a.now)
    a.flush()
    b.sync()
    c.sync()
    root = _head(c, gid)
    _groups.change(a.core, gid, lambda s: {"members": tuple(sorted((a.id, c.id))),
                                           "admins": (a.id,)}, now_ms=a.now)
    a.flush()
    b.sync()
    c.sync()
    removal = _head(c, gid)
    assert removal.state.version == 2 and b.id not in removal.state.members
    st2 = dataclasses.replace(root.state, version=2, parent=root.hash, signer=b.id,
                              name="B is back", at_ms=5)
    s2 = _groups.sign_state(b.core, st2)
    s3 = _groups.sign_state(b.core, dataclasses.replace(st2, version=3, parent=s2.hash,
                                                        name="B rules", at_ms=6))
    for peer in (a.id, c.id):
        for s in (s2, s3):
            _send_inner(b, peer, _control(s))
    a.sync()
    c.sync()
    for p in (a, c):
        assert _head(p, gid).hash == removal.hash
        assert GroupView.load(p.core, gid).active


def test_a_removed_channel_admin_cannot_subscribe_anyone() -> None:
    """A demotes B in a channel with subscriptions; B signs a subscription for its
    contact X under the state where it was an admin: A's roster does not take it."""
    relay = FakeRelay()
    a, b, s, x = Party(relay, "a"), Party(relay, "b"), Party(relay, "s"), Party(relay, "x")
    _connect(a, b)
    _connect(a, s)
    _connect(a, x)
    _connect(b, x)
    gid, _, _ = _groups.create(a.core, name="news", members=[s.id], admins=[b.id],
                               avatar=None, channel=True, subscriptions=True, now_ms=a.now)
    a.flush()
    b.sync()
    s.sync()
    a.sync()
    v1 = _head(a, gid)
    _groups.change(a.core, gid, lambda st: {"admins": (a.id,)}, now_ms=a.now)
    a.flush()
    b.sync()
    a.sync()
    sub = _channels.sign(b.core, Subscription(group_id=gid, seq=1, signer=b.id, at_ms=9,
                                              subscriber=x.id, subscribed=True,
                                              authority=v1.hash))
    _send_inner(b, a.id, _control(v1, subscriptions=((sub.encoded, sub.signature),)))
    a.sync()
    view = GroupView.load(a.core, gid)
    assert x.id not in view.roster and s.id in view.roster


def test_an_ex_member_cannot_sign_a_removed_member_back_in() -> None:
    """C and E were removed; E (never an admin) signs a state naming itself admin and C
    a member: C stays out."""
    relay = FakeRelay()
    a, c, e = Party(relay, "a"), Party(relay, "c"), Party(relay, "e")
    _connect(a, c)
    _connect(a, e)
    _connect(c, e)
    gid = _synced_group(a, [c, e], name="real")
    _groups.change(a.core, gid, lambda st: {"members": (a.id,)}, now_ms=a.now)
    a.flush()
    c.sync()
    e.sync()
    assert not GroupView.load(c.core, gid).active
    held = _head(c, gid)
    members = tuple(sorted((c.id, e.id)))
    for parent in (held.hash, b"\x77" * 32):  # on our head; on a state we never saw
        fake = _groups.sign_state(e.core, dataclasses.replace(
            held.state, version=held.state.version + 1, parent=parent, signer=e.id,
            name="fake", members=members, admins=(e.id,)))
        _send_inner(e, c.id, _control(fake))
        c.sync()
        view = GroupView.load(c.core, gid)
        assert not view.active and _head(c, gid).hash == held.hash


def _synced_group(admin: Party, members: list[Party], name: str = "g") -> bytes:
    """A group *admin* creates with *members* (its contacts), who then hold its state."""
    gid, _, _ = _groups.create(admin.core, name=name, members=[m.id for m in members],
                               admins=[], avatar=None, channel=False, now_ms=admin.now)
    admin.flush()
    for m in members:
        m.sync()
    return gid


def _two_in_a_group() -> tuple[Party, Party, bytes]:
    """Contacts A and B, and a group A created with B in it (B has its state)."""
    relay = FakeRelay()
    a, b = Party(relay, "a"), Party(relay, "b")
    _connect(a, b)
    return a, b, _synced_group(a, [b])


def test_an_avatar_change_says_so_in_its_event() -> None:
    a, b, gid = _two_in_a_group()
    [created] = b.take(GroupChanged)
    assert isinstance(created, GroupChanged) and not created.avatar_changed
    manifest = b"\x42" * 40
    _groups.change(a.core, gid, lambda st: {"avatar": manifest}, now_ms=a.now)
    a.flush()
    b.sync()
    [changed] = b.take(GroupChanged)
    assert isinstance(changed, GroupChanged) and changed.avatar_changed
    assert not changed.renamed and changed.group.avatar_manifest == manifest
    _groups.change(a.core, gid, lambda st: {"name": "h"}, now_ms=a.now)
    a.flush()
    b.sync()
    [renamed] = b.take(GroupChanged)
    assert isinstance(renamed, GroupChanged) and renamed.renamed
    assert not renamed.avatar_changed


def test_an_admin_removed_on_a_losing_branch_cannot_change_the_group() -> None:
    """Admins X and Y change the group at one version: X removes admin B, Y renames.
    Y's change wins the tie (smaller signer), so B's head still lists B as an admin,
    but B's removal voids its changes: its client refuses to make one, and keeps its
    head and states as they were."""
    relay = FakeRelay()
    a, b, c = Party(relay, "a"), Party(relay, "b"), Party(relay, "c")
    for p, q in ((a, b), (a, c), (b, c)):
        _connect(p, q)
    gid, _, _ = _groups.create(a.core, name="g", members=[b.id, c.id],
                               admins=[b.id, c.id], avatar=None, channel=False, now_ms=a.now)
    a.flush()
    b.sync()
    c.sync()
    y, x = sorted((a, c), key=lambda p: p.id)  # y signs the winner of the tie
    _groups.change(x.core, gid, lambda st: {"admins": tuple(sorted((a.id, c.id)))},
                   now_ms=x.now)
    _groups.change(y.core, gid, lambda st: {"name": "renamed"}, now_ms=y.now)
    x.flush()
    y.flush()
    b.sync()
    head = _head(b, gid)
    assert head.state.name == "renamed" and b.id in head.state.admins
    held = set(GroupView.load(b.core, gid).states)
    with pytest.raises(NotGroupAdmin):
        _groups.change(b.core, gid, lambda st: {"name": "by B"}, now_ms=b.now)
    view = GroupView.load(b.core, gid)
    assert set(view.states) == held and _head(b, gid).hash == head.hash


def test_a_receipt_inside_a_group_message_is_ignored() -> None:
    """Group receipts go pairwise to the author; one encrypted to the whole group with
    the sender key (kind 6 is not a group message kind) is dropped: the author's message
    stays SENT."""
    a, b, gid = _two_in_a_group()
    mid, cid, _ = _groups.send(
        a.core, gid, lambda m, now: Text(message_id=m, sent_at_ms=now, text="hello"),
        lambda c, m: NewMessage(conversation_id=c, message_id=m, sender=None,
                                sent_at_ms=a.now, body="hello"), now_ms=a.now)
    a.flush()
    for inner in (lambda m, now: Receipt(message_id=m, sent_at_ms=now,
                                         kind=ReceiptKind.READ, message_ids=(mid,)),
                  lambda m, now: Text(message_id=m, sent_at_ms=now, text="marker")):
        _groups.send(b.core, gid, inner, lambda c, m: None, now_ms=b.now)
    b.flush()
    a.sync()
    assert [e.text for e in a.take(MessageReceived)] == ["marker"]  # type: ignore[attr-defined]
    assert a.take(ReceiptReceived) == []
    msg = a.core.store.get_message(cid, mid)
    assert msg is not None and msg.status is not MessageStatus.READ


def _text(p: Party, gid: bytes, text: str) -> None:
    _groups.send(p.core, gid, lambda m, now: Text(message_id=m, sent_at_ms=now, text=text),
                 lambda c, m: None, now_ms=p.now)
    p.flush()


def _from(sender: Party, to: Party) -> list[Delivery]:
    """What *to* has waiting on *sender*'s pairwise mailbox."""
    mailbox = sender.core.sendable(to.id)[1].mailbox_id
    return [d for d in to.relay.deliveries(to.core.subscriptions()) if d.mailbox_id == mailbox]


def _texts(p: Party) -> list[str]:
    return [e.text for e in p.take(MessageReceived)]  # type: ignore[attr-defined]


def _shares(p: Party, gid: bytes) -> frozenset[bytes]:
    """Whom *p*'s current chain for the group went to."""
    chain = p.store.load_outbound_sender_key(gid)
    assert chain is not None
    return p.store.sender_key_shared_with(gid, chain.chain_id)


def _departure_lost(departure: str, kind: str) -> tuple[bytes, list[Party]]:
    """Admin X removes M (or M leaves) while admin Y renames, at one version; Y's
    rename wins (Y has the smallest id). M takes its departure first (it forgets every
    chain), then the rename puts it back. C (an admin too in a channel, where only
    admins post) and Y took the rename first, so the departure never moved their heads:
    they kept their chains, shared with M. Returns the group and ``[y, x, m, c]``, M
    back in and its requests sent, before C and Y have read them."""
    relay = FakeRelay()
    people = sorted((Party(relay, n) for n in ("p", "q", "r", "s")), key=lambda p: p.id)
    for p, q in itertools.combinations(people, 2):
        _connect(p, q)
    y, x, m, c = people
    admins = [y.id, c.id] if kind == "channel" else [y.id]
    gid, _, _ = _groups.create(x.core, name="g", members=[y.id, m.id, c.id], admins=admins,
                               avatar=None, channel=kind == "channel", now_ms=x.now)
    x.flush()
    for p in (y, m, c):
        p.sync()
    _text(c, gid, "before")
    _text(y, gid, "y before")
    m.sync()
    assert sorted(_texts(m)) == ["before", "y before"]
    if departure == "removed":
        _groups.change(x.core, gid, lambda st: {"members": tuple(p for p in st.members
                                                                 if p != m.id)}, now_ms=x.now)
        x.flush()
        m.sync(_from(x, m))
    else:
        _groups.leave(m.core, gid, now_ms=m.now)
        m.flush()
    assert not GroupView.load(m.core, gid).active  # gone: every chain forgotten
    _groups.change(y.core, gid, lambda st: {"name": "renamed"}, now_ms=y.now)
    y.flush()
    c.sync(_from(y, c))
    c.sync()  # then the departure, which loses: C keeps its chain
    y.sync()
    m.sync()  # the rename wins: M is back, and asks the members for their chains
    assert GroupView.load(m.core, gid).active and _head(m, gid).state.name == "renamed"
    assert _head(c, gid).hash == _head(m, gid).hash == _head(y, gid).hash
    assert m.id in _shares(c, gid) and m.id in _shares(y, gid)  # they would not resend
    return gid, people


@pytest.mark.parametrize("kind", ["group", "channel"])
@pytest.mark.parametrize("departure", ["removed", "left"])
def test_a_member_whose_departure_lost_gets_the_chains_it_forgot(departure: str,
                                                                 kind: str) -> None:
    """M asks every member who may post for its chain (``SenderKeyRequest``); their next
    messages carry it again."""
    gid, (y, _, m, c) = _departure_lost(departure, kind)
    c.sync()
    y.sync()
    assert m.id not in _shares(c, gid) and m.id not in _shares(y, gid)
    _text(c, gid, "after")
    _text(y, gid, "y after")
    m.sync()
    assert sorted(_texts(m)) == ["after", "y after"]


def test_a_lost_sender_key_request_is_asked_again_by_the_next_message() -> None:
    """M's request to C never arrives (a crash, a lost message): C's next message, on
    the chain M forgot, makes M ask again (after the request interval); C's message
    after that carries the chain."""
    gid, (_, _, m, c) = _departure_lost("removed", "group")
    for d in _from(m, c):
        del c.relay.mailboxes[d.mailbox_id]["queue"][d.seq]
    _text(c, gid, "lost")
    m.sync()
    assert _texts(m) == [] and _from(m, c) == []  # asked a moment ago: not again yet
    m.now += _groups.STATE_REQUEST_INTERVAL_MS
    _text(c, gid, "lost too")
    m.sync()
    assert _texts(m) == [] and len(_from(m, c)) == 1  # asked again
    c.sync()
    _text(c, gid, "after")
    m.sync()
    assert _texts(m) == ["after"]


def test_a_sender_key_request_from_anyone_but_a_member_changes_nothing() -> None:
    """Not from an outsider, nor from a removed member, nor at a receiver that is no
    longer in the group; a member's is taken."""
    relay = FakeRelay()
    a, b, gone, outsider = (Party(relay, n) for n in ("a", "b", "g", "o"))
    for p in (b, gone, outsider):
        _connect(a, p)
    gid = _synced_group(a, [b, gone])
    _groups.change(a.core, gid, lambda st: {"members": tuple(sorted((a.id, b.id)))},
                   now_ms=a.now)
    a.flush()
    b.sync()
    gone.sync()
    request = SenderKeyRequest(message_id=bytes(16), sent_at_ms=1, group_id=gid)

    def asks(receiver: Party, sender: Party, req: SenderKeyRequest = request) -> object:
        batch = _groups_receive.GroupBatch(receiver.core)
        return _groups_receive.apply_inner(receiver.core, batch, sender.id, req,
                                           now_ms=receiver.now)

    assert asks(a, outsider) == (None, [])
    assert asks(a, gone) == (None, [])  # removed: the group's head no longer lists it
    assert asks(a, b, dataclasses.replace(request, group_id=bytes(16))) == (None, [])
    assert asks(gone, b) == (None, [])  # a receiver that is not in the group
    write, _ = asks(a, b)  # type: ignore[misc]
    assert write is not None and write.unshare == ((gid, b.id),)  # a member: sent again
