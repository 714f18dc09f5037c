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
    gid, _, _ = _groups.create(a.core, name="real", members=[c.id, e.id], admins=[],
                               avatar=None, channel=False, now_ms=a.now)
    a.flush()
    c.sync()
    e.sync()
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


def test_an_avatar_change_says_so_in_its_event() -> None:
    relay = FakeRelay()
    a, b = Party(relay, "a"), Party(relay, "b")
    _connect(a, b)
    gid, _, _ = _groups.create(a.core, name="g", members=[b.id], admins=[], avatar=None,
                               channel=False, now_ms=a.now)
    a.flush()
    b.sync()
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
    relay = FakeRelay()
    a, b = Party(relay, "a"), Party(relay, "b")
    _connect(a, b)
    gid, _, _ = _groups.create(a.core, name="g", members=[b.id], admins=[], avatar=None,
                               channel=False, now_ms=a.now)
    a.flush()
    b.sync()
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


@pytest.mark.parametrize("departure", ["removed", "left"])
def test_a_member_whose_departure_lost_gets_the_chains_it_forgot(departure: str) -> None:
    """Admin X removes M (or M leaves) while admin Y renames, at one version; Y's
    rename wins (Y has the smallest id). M takes its departure first (it forgets every
    chain), then the rename puts it back. Member C took the rename first, so the
    departure changed nothing there and C kept its chain, shared with M: M asks for it
    (``SenderKeyRequest``), and C's next message carries it again."""
    relay = FakeRelay()
    people = sorted((Party(relay, n) for n in ("p", "q", "r", "s")), key=lambda p: p.id)
    for p, q in itertools.combinations(people, 2):
        _connect(p, q)
    y, x, m, c = people
    gid, _, _ = _groups.create(x.core, name="g", members=[y.id, m.id, c.id], admins=[y.id],
                               avatar=None, channel=False, now_ms=x.now)
    x.flush()
    for p in (y, m, c):
        p.sync()
    _text(c, gid, "before")
    m.sync()
    assert [e.text for e in m.take(MessageReceived)] == ["before"]  # type: ignore[attr-defined]
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
    m.sync()  # the rename wins: M is back, and asks the members for their chains
    assert GroupView.load(m.core, gid).active and _head(m, gid).state.name == "renamed"
    assert _head(c, gid).hash == _head(m, gid).hash
    c.sync()
    _text(c, gid, "after")
    m.sync()
    assert [e.text for e in m.take(MessageReceived)] == ["after"]  # type: ignore[attr-defined]


def test_a_sender_key_request_from_a_non_member_changes_nothing() -> None:
    relay = FakeRelay()
    a, b, outsider = Party(relay, "a"), Party(relay, "b"), Party(relay, "o")
    _connect(a, b)
    _connect(a, outsider)
    gid, _, _ = _groups.create(a.core, name="g", members=[b.id], admins=[], avatar=None,
                               channel=False, now_ms=a.now)
    a.flush()
    b.sync()
    batch = _groups_receive.GroupBatch(a.core)
    request = SenderKeyRequest(message_id=bytes(16), sent_at_ms=1, group_id=gid)
    assert _groups_receive.apply_inner(a.core, batch, outsider.id, request,
                                       now_ms=a.now) == (None, [])
    assert _groups_receive.apply_inner(a.core, batch, outsider.id, dataclasses.replace(
        request, group_id=bytes(16)), now_ms=a.now) == (None, [])  # a group A lacks
    write, _ = _groups_receive.apply_inner(a.core, batch, b.id, request, now_ms=a.now)
    assert write is not None and write.unshare == ((gid, b.id),)  # a member: sent again
