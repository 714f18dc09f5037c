"""Channels with subscriptions: channels that scale past a state's member list
(docs/protocol.md §9.14 "Channels with subscriptions", docs/sdk.md §15.14).

Theory of operation
    A channel's subscribers do not need to know each other: they read the admins'
    posts and never write to the channel. So its state (``GroupState`` with
    ``subscriptions``) lists only the admins (``members == admins``) and stays small
    whatever the audience; each subscriber's membership is a separate
    :class:`~protocol.group.Subscription`, signed by an admin (subscribed or removed)
    or by the subscriber itself (leaving). A subscription names the hash of the state
    its signer held (``authority``): it is valid where that state is valid and lists
    the signer as an admin (or where an admin of our head passes it on, vouching for
    it, as for states). Per subscriber, the valid subscription with the highest
    ``seq`` wins, then the smallest ``(signer, hash)``: a function of the set of valid
    subscriptions, so admins that received the same ones agree on the roster.

    **Who holds what.** Every admin holds every subscription (the roster); a subscriber
    holds the state chain and its own subscription only. A change of one subscriber
    costs ``GroupControl`` messages to that subscriber and to the other admins
    (O(admins)); a change of the state (rename, avatar, admins) goes to every reader,
    but the state is small (O(readers) bytes in total, not O(readers x list)).

    **Transport.** Subscriptions travel in ``GroupControl.subscriptions`` next to the
    signer's current state, packed so that the message stays in the 32 KiB bucket.
    A subscriber gets the state and its own subscription together, so it can accept
    the state as a base (it is not listed in it). A new admin gets the whole roster
    with the state that promotes it.

    **Sender keys.** A post goes to the admins and the roster, as ``ceil(n /
    MAX_RECIPIENTS)`` sends of one blob (``_groups.send``). Removing a subscriber drops
    the admins' outbound chains when they store it, so the next post rotates and the
    removed subscriber reads nothing sent after; subscribers send no delivery receipts
    (n receipts per post would land on the author).
"""

from __future__ import annotations

import dataclasses
import logging
from collections.abc import Iterable, Sequence
from typing import TYPE_CHECKING, Final

from pigeon_crypto.signing import Purpose
from protocol.group import (
    MAX_CHANNEL_SUBSCRIBERS,
    MAX_GROUP_STATE_SIZE,
    GroupState,
    Subscription,
)
from protocol.inner import MAX_SUBSCRIPTIONS_PER_CONTROL, GroupControl

from ._group_state import GroupView, change_event, group_info, member_view
from ._sending import _Batch
from .errors import ClientError
from .groups import GroupChanged
from .store.group_records import (
    GroupWrite,
    SignedGroupState,
    SignedSubscription,
    StateStatus,
    StoredGroupState,
)
from .store.records import OutboxItem, Outgoing, SessionUpdate

if TYPE_CHECKING:
    from .core import ClientCore
    from .events import Event

__all__ = [
    "create",
    "forward",
    "invited",
    "leave",
    "pack",
    "publish",
    "receive",
    "roster_event",
    "set_subscribed",
    "sign",
]

_log = logging.getLogger("pigeon.sdk.groups")

_PAIR_OVERHEAD: Final = 64 + 8
"""A signature and msgpack framing per ``[subscription, signature]`` pair."""


def sign(core: ClientCore, sub: Subscription) -> SignedSubscription:
    encoded = sub.encode()
    return SignedSubscription.from_wire(
        encoded, core.identity.key_pair.sign(Purpose.GROUP_CONTROL, encoded))


def pack(state: SignedGroupState, subs: Sequence[SignedSubscription],
         ) -> list[tuple[tuple[bytes, bytes], ...]]:
    """Split *subs* over as few ``GroupControl`` s (with *state*) as fit the bucket."""
    budget = MAX_GROUP_STATE_SIZE - len(state.encoded)
    out: list[tuple[tuple[bytes, bytes], ...]] = []
    chunk: list[tuple[bytes, bytes]] = []
    used = 0
    for s in subs:
        size = len(s.encoded) + _PAIR_OVERHEAD
        if chunk and (used + size > budget or len(chunk) == MAX_SUBSCRIPTIONS_PER_CONTROL):
            out.append(tuple(chunk))
            chunk, used = [], 0
        chunk.append((s.encoded, s.signature))
        used += size
    if chunk:
        out.append(tuple(chunk))
    return out


def _take(view: GroupView, new: SignedSubscription) -> tuple[bool, bytes | None]:
    """Keep *new* if it beats the held subscription of its subscriber: ``(taken,
    hash replaced)``."""
    held = view.subs.get(new.sub.subscriber)
    if held is not None and held.sort_key() <= new.sort_key():
        return False, None
    view.subs[new.sub.subscriber] = new
    return True, None if held is None else held.hash


def _next_seq(view: GroupView, subscriber: bytes) -> int:
    held = view.subs.get(subscriber)
    return 1 if held is None else held.sub.seq + 1


# --- sending ------------------------------------------------------------------------------------


def _fan(core: ClientCore, state: SignedGroupState, to: dict[bytes, list[SignedSubscription]],
         write: GroupWrite, *, now_ms: int) -> list[OutboxItem]:
    """``GroupControl(state, subscriptions)`` to each peer (several if its
    subscriptions do not fit one), with *write* in the same transaction."""
    me = core.account_id
    batch = _Batch(core)
    outgoing: list[Outgoing] = []
    for peer in sorted(to):
        if peer == me:
            continue
        for chunk in pack(state, to[peer]) or [()]:
            try:
                _, outbound = core.sendable(peer)
                inner = GroupControl(message_id=core.rng(16), sent_at_ms=now_ms,
                                     state=state.encoded, signature=state.signature,
                                     subscriptions=chunk)
                blob, session = batch.encrypt(peer, inner)
            except ClientError as exc:
                _log.info("channel change not sent to %s: %s", peer.hex()[:8],
                          type(exc).__name__)
                break
            outgoing.append(Outgoing(
                entry=batch.entry((outbound.mailbox_id, outbound.capability), blob, now_ms),
                session=SessionUpdate(peer=peer, state=session)))
    if not outgoing:
        core.store.write_group(write, now_ms=now_ms)
        return []
    outgoing[0] = dataclasses.replace(outgoing[0], group=write)
    return batch.commit(outgoing)


def create(core: ClientCore, *, name: str, subscribers: Sequence[bytes],
           admins: Sequence[bytes], avatar: bytes | None, now_ms: int,
           ) -> tuple[bytes, list[OutboxItem], list[Event]]:
    """A new channel with subscriptions, us an admin: the state to every reader, with
    its subscription to each subscriber and the roster to each admin."""
    me = core.account_id
    admin_ids = tuple(sorted({*admins, me}))
    readers = sorted(set(subscribers) - set(admin_ids))
    if len(readers) > MAX_CHANNEL_SUBSCRIBERS:
        raise ClientError(f"a channel has at most {MAX_CHANNEL_SUBSCRIBERS} subscribers")
    for peer in {*readers, *admin_ids} - {me}:
        core.sendable(peer)  # UnknownContact / ContactNotReady / ...
    group_id = core.rng(16)
    state = GroupState(group_id=group_id, version=1, signer=me, name=name,
                       members=admin_ids, admins=admin_ids, avatar=avatar, channel=True,
                       subscriptions=True, at_ms=now_ms)
    encoded = state.encode()
    signed = SignedGroupState.from_wire(
        encoded, core.identity.key_pair.sign(Purpose.GROUP_CONTROL, encoded))
    view = GroupView(group_id=group_id, record=None)
    view.states[signed.hash] = StoredGroupState(signed=signed, status=StateStatus.VALID,
                                                received_at_ms=now_ms)
    subs = [sign(core, Subscription(group_id=group_id, seq=1, signer=me, at_ms=now_ms,
                                    subscriber=s, subscribed=True, authority=signed.hash))
            for s in readers]
    for s in subs:
        view.subs[s.sub.subscriber] = s
    record = view.converge(me, now_ms=now_ms)
    assert record is not None
    write = GroupWrite(group=record, states=(view.states[signed.hash],),
                       subscriptions=tuple(subs), roster=view.roster_write())
    to: dict[bytes, list[SignedSubscription]] = {s.sub.subscriber: [s] for s in subs}
    for a in admin_ids:
        to[a] = subs
    items = _fan(core, signed, to, write, now_ms=now_ms)
    return group_id, items, [change_event(core, view, None, now_ms=now_ms)]


def set_subscribed(core: ClientCore, group_id: bytes, ids: Iterable[bytes], subscribed: bool,
                   *, now_ms: int) -> tuple[list[OutboxItem], list[Event]]:
    """Subscribe or remove subscribers (admins only): one new subscription each, sent to
    its subscriber and to the other admins. Removing drops our outbound chain (the next
    post rotates)."""
    me = core.account_id
    view, head = member_view(core, group_id, admin=True)
    st = head.state
    roster = view.roster
    wanted = sorted(i for i in set(ids) - set(st.admins) if (i in roster) != subscribed)
    if subscribed:
        if len(roster) + len(wanted) > MAX_CHANNEL_SUBSCRIBERS:
            raise ClientError(f"a channel has at most {MAX_CHANNEL_SUBSCRIBERS} subscribers")
        for peer in wanted:
            core.sendable(peer)
    if not wanted:
        return [], []
    subs: list[SignedSubscription] = []
    gone: list[bytes] = []
    for peer in wanted:
        s = sign(core, Subscription(group_id=group_id, seq=_next_seq(view, peer), signer=me,
                                    at_ms=now_ms, subscriber=peer, subscribed=subscribed,
                                    authority=head.hash))
        held = view.subs.get(peer)
        if held is not None:
            gone.append(held.hash)
        view.subs[peer] = s
        subs.append(s)
    write = GroupWrite(subscriptions=tuple(subs), subscriptions_gone=tuple(gone),
                       roster=view.roster_write(),
                       drop_outbound=None if subscribed else group_id)
    to: dict[bytes, list[SignedSubscription]] = {s.sub.subscriber: [s] for s in subs}
    for a in st.admins:
        to[a] = subs
    items = _fan(core, head, to, write, now_ms=now_ms)
    return items, [_roster_event(core, view, me, subs, now_ms=now_ms)]


def _roster_event(core: ClientCore, view: GroupView, by: bytes,
                  subs: Sequence[SignedSubscription], *, now_ms: int) -> GroupChanged:
    info = group_info(core, view, now_ms=now_ms)
    return GroupChanged(group=info, by=by,
                        added=tuple(sorted(s.sub.subscriber for s in subs if s.sub.subscribed)),
                        removed=tuple(sorted(s.sub.subscriber for s in subs
                                             if not s.sub.subscribed)))


def leave(core: ClientCore, view: GroupView, head: SignedGroupState, *, now_ms: int,
          ) -> tuple[list[OutboxItem], list[Event]]:
    """A subscriber leaves: a subscription signed by itself, sent to the admins.
    *view* is the channel's, loaded and checked by ``_groups.leave`` (*head* its head)."""
    me = core.account_id
    group_id = head.state.group_id
    s = sign(core, Subscription(group_id=group_id, seq=_next_seq(view, me), signer=me,
                                at_ms=now_ms, subscriber=me, subscribed=False,
                                authority=head.hash))
    held = view.subs.get(me)
    view.subs[me] = s
    old = head
    record = view.converge(me, now_ms=now_ms)
    write = GroupWrite(group=record, subscriptions=(s,),
                       subscriptions_gone=() if held is None else (held.hash,),
                       roster=view.roster_write(), forget_keys=group_id)
    items = _fan(core, head, {a: [s] for a in head.state.admins}, write, now_ms=now_ms)
    return items, [dataclasses.replace(change_event(core, view, old, now_ms=now_ms),
                                       removed=(me,))]


def publish(core: ClientCore, view: GroupView, old: SignedGroupState | None,
            signed: SignedGroupState, write: GroupWrite, *, readers: Sequence[bytes] = (),
            now_ms: int) -> list[OutboxItem]:
    """A new state of a channel with subscriptions (ours, stored by *write*): to every
    reader; admins it promotes (or adds) also get the roster, and the admins it
    removes that are in *readers* (demoted) get a subscription in the same message."""
    me = core.account_id
    st = signed.state
    before = set() if old is None else set(old.state.admins)
    demoted = sorted((before - set(st.admins) - {me}) & set(readers))
    extra: list[SignedSubscription] = []
    gone: list[bytes] = []
    for peer in demoted:
        s = sign(core, Subscription(group_id=st.group_id, seq=_next_seq(view, peer),
                                    signer=me, at_ms=now_ms, subscriber=peer,
                                    subscribed=True, authority=signed.hash))
        held = view.subs.get(peer)
        if held is not None:
            gone.append(held.hash)
        view.subs[peer] = s
        extra.append(s)
    if extra:
        write = dataclasses.replace(write, subscriptions=tuple(extra),
                                    subscriptions_gone=tuple(gone),
                                    roster=view.roster_write())
    everyone = list(view.subs.values())
    to: dict[bytes, list[SignedSubscription]] = {r: [] for r in view.audience(st) | before}
    for s in extra:
        to[s.sub.subscriber] = [s]
    for a in st.admins:
        to[a] = everyone if a not in before else extra
    return _fan(core, signed, to, write, now_ms=now_ms)


# --- receiving ----------------------------------------------------------------------------------


def _verify(core: ClientCore, view: GroupView, sender: bytes, s: SignedSubscription) -> bool:
    """Signature (by the signer's identity, or vouched for by an admin of our head who
    passed it on) and rights (an admin of the authority state, or the subscriber
    leaving)."""
    head = view.head
    vouched = (head is not None and head.state.subscriptions
               and sender in head.state.admins)
    contact = core.contact(s.sub.signer)
    if contact is not None and contact.identity is not None:
        contact.identity.verify(Purpose.GROUP_CONTROL, s.encoded, s.signature)
    elif not vouched or sender == s.sub.signer:
        return False
    auth = view.states.get(s.sub.authority)
    if auth is None or auth.status is not StateStatus.VALID:
        return vouched  # made under a state we never held: an admin of ours vouches
    ast = auth.signed.state
    if not ast.subscriptions or ast.group_id != s.sub.group_id:
        return False
    if s.sub.signer == s.sub.subscriber and not s.sub.subscribed:
        return True  # a subscriber leaving
    # An admin of the state it names, and still one of our head: an admin removed since
    # keeps signatures valid under the older state, not the right to use them.
    return s.sub.signer in ast.admins and (head is None or s.sub.signer in head.state.admins)


def invited(core: ClientCore, sender: bytes, signed: SignedGroupState,
            pairs: Sequence[tuple[bytes, bytes]]) -> bool:
    """Whether *pairs* hold a subscription for us made under *signed* by one of its
    admins, with a valid signature (the base of a subscriber's channel).

    Raises:
        PigeonError: a bad subscription or signature (the message is dropped).
    """
    me = core.account_id
    st = signed.state
    if not st.subscriptions:
        return False
    for encoded, signature in pairs:
        s = SignedSubscription.from_wire(encoded, signature)
        if (s.sub.subscriber == me and s.sub.subscribed and s.sub.authority == signed.hash
                and s.sub.group_id == st.group_id and s.sub.signer in st.admins):
            contact = core.contact(s.sub.signer)
            if contact is None or contact.identity is None:
                continue
            contact.identity.verify(Purpose.GROUP_CONTROL, s.encoded, s.signature)
            return True
    return False


def receive(core: ClientCore, view: GroupView, sender: bytes,
            pairs: Sequence[tuple[bytes, bytes]],
            ) -> tuple[list[SignedSubscription], list[bytes], list[SignedSubscription]]:
    """Subscriptions from *sender* (after the state that came with them was absorbed):
    ``(taken, hashes they replace, taken ones we pass on)``. An admin keeps every valid
    one; a subscriber only its own.

    Raises:
        PigeonError: a malformed subscription or a bad signature (the message is dropped).
    """
    me = core.account_id
    head = view.head
    if head is None or not head.state.subscriptions:
        return [], [], []
    admin = me in head.state.admins
    taken: list[SignedSubscription] = []
    gone: list[bytes] = []
    for encoded, signature in pairs:
        s = SignedSubscription.from_wire(encoded, signature)
        if s.sub.group_id != view.group_id or (not admin and s.sub.subscriber != me):
            continue
        if not _verify(core, view, sender, s):
            _log.info("a subscription signed without the right to make it dropped")
            continue
        ok, replaced = _take(view, s)
        if ok:
            taken.append(s)
            if replaced is not None:
                gone.append(replaced)
    first = admin and head.state.admins[0] == me
    forward = [s for s in taken if first and s.sub.signer != me]
    return taken, gone, forward


def forward(core: ClientCore, items: Iterable[tuple[bytes, SignedSubscription]], *,
            now_ms: int) -> list[OutboxItem]:
    """As the channel's first admin, pass subscriptions others signed on to the other
    admins (a subscriber leaving reaches the admins it knows; an admin's change the
    admins it is a contact of). Receivers ignore what they hold."""
    me = core.account_id
    by_group: dict[bytes, list[SignedSubscription]] = {}
    for group_id, s in items:
        by_group.setdefault(group_id, []).append(s)
    out: list[OutboxItem] = []
    for group_id, subs in by_group.items():
        view = GroupView.load(core, group_id)
        head = view.head
        if head is None or me not in head.state.admins:
            continue
        to = {a: [s for s in subs if a not in (s.sub.signer, s.sub.subscriber)]
              for a in head.state.admins if a != me}
        to = {a: v for a, v in to.items() if v}
        if to:
            out += _fan(core, head, to, GroupWrite(), now_ms=now_ms)
    return out


def roster_event(core: ClientCore, view: GroupView, sender: bytes,
                 taken: Sequence[SignedSubscription], *, now_ms: int) -> GroupChanged:
    by = taken[-1].sub.signer if taken else sender
    return _roster_event(core, view, by, taken, now_ms=now_ms)
