"""Channels with subscriptions (client_sdk._channels, docs/protocol.md §9.14): the wire
rules (disjoint decoders, invariants), the per-subscriber convergence rule, and a
channel of 10,000 subscribers built in process (no relay, no real clients): sizes,
the split of a post into several sends of one blob, every mailbox addressed once, and
what a change of one subscriber costs; the subscriptions and the roster in both
stores, inside a transaction."""

from __future__ import annotations

import collections
import itertools
import math

import pytest

from client_sdk import _channels, _groups
from client_sdk._group_state import GroupView
from client_sdk.core import ClientCore
from client_sdk.store import ClientStore, MemoryStore, Profile
from client_sdk.store.group_records import GroupWrite, SignedSubscription
from client_sdk.store.records import (
    Contact,
    ContactState,
    MailboxDirection,
    OutboxEntry,
    OutboxItem,
    Outgoing,
    PairwiseMailbox,
    Recipient,
)
from pigeon_crypto.errors import PigeonError
from pigeon_crypto.padding import pad_message
from pigeon_crypto.rng import SeededRng
from pigeon_crypto.signing import Purpose, SigningKey
from protocol import limits as L
from protocol.errors import InvalidValue, RemoteProtocolError
from protocol.group import (
    MAX_GROUP_STATE_SIZE,
    GroupState,
    Subscription,
    decode_group_state,
    decode_subscription,
)
from protocol.inner import GroupControl, Text, decode_inner

from .support import NOW, account, capability, mailbox, session_pair

GID = bytes(range(16))
A, B, S = b"\x01" * 16, b"\x02" * 16, b"\x05" * 16
KEYS = {A: SigningKey(b"\x01" * 32), B: SigningKey(b"\x02" * 32), S: SigningKey(b"\x05" * 32)}
STATE = GroupState(group_id=GID, version=1, signer=A, name="news", members=(A, B),
                   admins=(A, B), at_ms=0, channel=True, subscriptions=True)


def _sub(signer: bytes, seq: int, subscribed: bool, subscriber: bytes = S) -> SignedSubscription:
    import hashlib
    sub = Subscription(group_id=GID, seq=seq, signer=signer, at_ms=seq, subscriber=subscriber,
                       subscribed=subscribed,
                       authority=hashlib.sha256(STATE.encode()).digest())
    encoded = sub.encode()
    return SignedSubscription.from_wire(encoded, KEYS[signer].sign(Purpose.GROUP_CONTROL,
                                                                   encoded))


# --- wire rules ---------------------------------------------------------------------------------


def test_state_and_subscription_decoders_are_disjoint() -> None:
    sub = _sub(A, 1, True)
    assert decode_subscription(sub.encoded) == sub.sub
    assert decode_group_state(STATE.encode()) == STATE
    # Both are signed with the group-control purpose: neither decoder takes the other's
    # bytes, so no signature for one is accepted as the other.
    with pytest.raises(RemoteProtocolError):
        decode_subscription(STATE.encode())
    with pytest.raises(RemoteProtocolError):
        decode_group_state(sub.encoded)
    import msgpack
    body = msgpack.unpackb(sub.encoded, strict_map_key=False)[1]
    body[4] = "a name"  # a state's key in a subscription
    with pytest.raises(RemoteProtocolError):
        decode_subscription(msgpack.packb([L.PROTOCOL_VERSION, body]))


def test_invariants() -> None:
    with pytest.raises(InvalidValue):  # subscriptions only in a channel
        GroupState(group_id=GID, version=1, signer=A, name="", members=(A,), admins=(A,),
                   at_ms=0, subscriptions=True)
    with pytest.raises(InvalidValue):  # a channel with subscriptions lists admins only
        GroupState(group_id=GID, version=1, signer=A, name="", members=(A, S), admins=(A,),
                   at_ms=0, channel=True, subscriptions=True)
    with pytest.raises(InvalidValue):  # nobody subscribes itself
        Subscription(group_id=GID, seq=1, signer=S, at_ms=0, subscriber=S, subscribed=True,
                     authority=bytes(32))
    removal = Subscription(group_id=GID, seq=2, signer=A, at_ms=0, subscriber=S,
                           subscribed=False, authority=bytes(32))
    assert "subscriber=<redacted>" in repr(removal) and S.hex() not in repr(removal)


def test_roster_rule_is_order_independent() -> None:
    """Per subscriber: highest seq, then smallest (signer, hash); any arrival order."""
    subs = [_sub(A, 1, True), _sub(B, 2, False), _sub(A, 2, True), _sub(B, 1, True)]
    winners = set()
    for order in itertools.permutations(subs):
        view = GroupView(group_id=GID, record=None)
        for s in order:
            _channels._take(view, s)
        winners.add(view.subs[S].hash)
    expected = min(subs, key=SignedSubscription.sort_key)
    assert winners == {expected.hash} and expected.sub.seq == 2 and expected.sub.signer == A


# --- 10,000 subscribers, in process ------------------------------------------------------------

N = 10_000


def _admin(profile: Profile, n: int) -> tuple[ClientCore, list[bytes], dict[bytes, bytes]]:
    """An admin with *n* accepted contacts (a session and an outbound mailbox each) on
    a SQLite profile; returns the core, the subscribers and each one's outbound
    mailbox."""
    store = profile.store
    ClientCore(store, rng=SeededRng(b"channel admin")).create_identity()
    session, _, _ = session_pair(b"sessions")  # encrypting only: one state serves all
    peers = [account(i) for i in range(n)]
    boxes: dict[bytes, bytes] = {}
    for i, peer in enumerate(peers):
        outbound = PairwiseMailbox(mailbox_id=mailbox(i), direction=MailboxDirection.OUTBOUND,
                                   capability=capability(i), created_at_ms=1)
        inbound = PairwiseMailbox(mailbox_id=mailbox(n + i), direction=MailboxDirection.INBOUND,
                                  capability=capability(n + i), created_at_ms=1)
        store.save_contact(Contact(account_id=peer, state=ContactState.ACCEPTED,
                                   mailboxes=(inbound, outbound), created_at_ms=1,
                                   updated_at_ms=1))
        store.store_session(peer, session)
        boxes[peer] = outbound.mailbox_id
    return ClientCore(store, rng=SeededRng(b"channel admin")), peers, boxes


def _text(mid: bytes, now_ms: int) -> Text:
    return Text(message_id=mid, sent_at_ms=now_ms, text="issue 1")


def _group_sends(items: list[OutboxItem]) -> list[OutboxItem]:
    return [i for i in items if i.entry.blob[0] == _groups.GROUP_BLOB_PREFIX]


def _addressed(items: list[OutboxItem]) -> collections.Counter[bytes]:
    return collections.Counter(r.mailbox_id for i in items for r in i.entry.recipients)


def test_a_channel_of_10000_subscribers(profile: Profile) -> None:
    core, peers, boxes = _admin(profile, N)
    gid, items, _ = _channels.create(core, name="Pigeon news", subscribers=peers, admins=(),
                                     avatar=None, now_ms=NOW)
    view = GroupView.load(core, gid)
    assert view.head is not None and view.active and len(view.roster) == N
    # The state names the channel and its admin only: its size does not grow with n.
    assert len(view.head.encoded) < 200
    assert len(core.store.channel_subscriptions(gid)) == N
    # Creation: one GroupControl (the state and that subscriber's subscription) per
    # subscriber, each in the smallest padding bucket: O(n) bytes in all.
    assert len(items) == N and all(len(i.entry.recipients) == 1 for i in items)
    assert _addressed(items) == collections.Counter(boxes.values())
    sizes = {len(i.entry.blob) for i in items}
    assert max(sizes) <= 1024, sizes
    created_bytes = sum(len(i.entry.blob) for i in items)

    # The first post: a distribution to each subscriber, then ONE blob in
    # ceil(n / MAX_RECIPIENTS) multi-recipient sends, each mailbox in exactly one.
    _, _, items = _groups.send(core, gid, _text, lambda cid, mid: None, now_ms=NOW)
    sends = _group_sends(items)
    assert len(sends) == math.ceil(N / L.MAX_RECIPIENTS) == 5
    assert len({s.entry.blob for s in sends}) == 1
    assert len({s.entry.client_msg_id for s in sends}) == len(sends)  # retried apart
    assert all(len(s.entry.recipients) <= L.MAX_RECIPIENTS for s in sends)
    assert _addressed(sends) == collections.Counter(boxes.values())
    assert len(items) - len(sends) == N  # the distributions, pairwise
    # A steady post: the five sends only.
    _, _, items = _groups.send(core, gid, _text, lambda cid, mid: None, now_ms=NOW + 1)
    assert len(items) == 5 and _addressed(items) == collections.Counter(boxes.values())

    # Removing one subscriber costs one message (it has no other admin to tell), not
    # one per subscriber; the next post rotates and skips its mailbox.
    gone = peers[7]
    items, events = _channels.set_subscribed(core, gid, [gone], False, now_ms=NOW + 2)
    assert len(items) == 1 and items[0].entry.recipients[0].mailbox_id == boxes[gone]
    assert events[0].removed == (gone,)  # type: ignore[attr-defined]
    _, _, items = _groups.send(core, gid, _text, lambda cid, mid: None, now_ms=NOW + 3)
    sends = _group_sends(items)
    assert len(items) - len(sends) == N - 1  # the new chain, to everyone but the removed
    addressed = _addressed(sends)
    assert boxes[gone] not in addressed and set(addressed.values()) == {1}
    assert len(addressed) == N - 1

    # A rename reaches every reader: one small message each, O(n) bytes in all.
    items, _ = _groups.change(core, gid, lambda s: {"name": "Pigeon news 2"}, now_ms=NOW + 4)
    assert len(items) == N - 1 and max(len(i.entry.blob) for i in items) <= 1024
    assert created_bytes <= N * 1024


def test_the_roster_packs_into_full_control_messages() -> None:
    """A new admin gets the roster: 10,000 subscriptions in GroupControls that each
    pad to at most the 32 KiB bucket (one relay blob)."""
    core = ClientCore(MemoryStore(), rng=SeededRng(b"packer"))
    core.create_identity()
    me = core.account_id
    state = GroupState(group_id=GID, version=1, signer=me, name="x" * 128,
                       members=(me,), admins=(me,), at_ms=0, channel=True,
                       subscriptions=True)
    from client_sdk._groups import sign_state
    signed = sign_state(core, state)
    subs = [_channels.sign(core, Subscription(group_id=GID, seq=1, signer=me, at_ms=NOW,
                                              subscriber=account(i), subscribed=True,
                                              authority=signed.hash)) for i in range(N)]
    chunks = _channels.pack(signed, subs)
    assert sum(len(c) for c in chunks) == N and len(chunks) == math.ceil(N / 128)
    for chunk in chunks:
        inner = GroupControl(message_id=bytes(16), sent_at_ms=NOW, state=signed.encoded,
                             signature=signed.signature, subscriptions=chunk)
        encoded = inner.encode()
        assert len(encoded) <= MAX_GROUP_STATE_SIZE + 512
        assert len(pad_message(encoded)) <= 32 * 1024
        assert decode_inner(encoded) == inner


# --- storage (both stores) ------------------------------------------------------------------


def test_subscriptions_and_roster_are_stored_and_replaced(store: ClientStore) -> None:
    assert store.channel_subscriptions(GID) == [] and store.channel_roster(GID) is None
    first, other = _sub(A, 1, True), _sub(A, 1, True, subscriber=B)
    store.write_group(GroupWrite(subscriptions=(first, other), roster=(GID, (B, S))),
                      now_ms=NOW)
    assert {s.hash for s in store.channel_subscriptions(GID)} == {first.hash, other.hash}
    assert store.channel_roster(GID) == frozenset({B, S})
    removal = _sub(B, 2, False)
    store.write_group(GroupWrite(subscriptions=(removal,), subscriptions_gone=(first.hash,),
                                 roster=(GID, (B,))), now_ms=NOW)
    held = {s.sub.subscriber: s for s in store.channel_subscriptions(GID)}
    assert held[S] == removal and held[B] == other
    assert store.channel_roster(GID) == frozenset({B})
    assert store.channel_subscriptions(bytes(16)) == []
    # In a failed transaction (a send whose client_msg_id is taken), nothing is kept.
    entry = OutboxEntry(client_msg_id=b"\x05" * 16, blob=b"x", created_at_ms=1,
                        recipients=(Recipient(mailbox_id=b"\x06" * 16,
                                              capability=b"\x07" * 32),))
    store.enqueue(Outgoing(entry=entry))
    with pytest.raises(PigeonError):
        store.enqueue(Outgoing(entry=entry, group=GroupWrite(
            subscriptions=(_sub(A, 9, True),), subscriptions_gone=(removal.hash,),
            roster=(GID, (B, S)))))
    assert store.channel_roster(GID) == frozenset({B})
    assert {s.hash for s in store.channel_subscriptions(GID)} == {removal.hash, other.hash}
