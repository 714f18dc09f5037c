"""Group state as a device holds it: the rules that make a state valid and the
convergence rule that picks the current one (theory: :mod:`client_sdk._groups`,
docs/protocol.md §9.14), and the group's view for the application (``GroupInfo``,
``GroupChanged``, its conversation)."""

from __future__ import annotations

import dataclasses
import logging
from collections.abc import Callable, Iterable, Iterator, Sequence
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Final

from protocol.group import GroupState

from .groups import GroupChanged, GroupInfo, NotGroupAdmin, NotGroupMember, UnknownGroup
from .history import ConversationKind
from .store.group_records import (
    GroupRecord,
    SignedGroupState,
    SignedSubscription,
    StateStatus,
    StoredGroupState,
)

if TYPE_CHECKING:
    from .core import ClientCore

__all__ = [
    "MAX_PENDING_STATES",
    "GroupView",
    "authorized",
    "change_event",
    "conversation_id",
    "group_info",
    "reached",
    "revoked",
]

_log = logging.getLogger("pigeon.sdk.groups")

MAX_PENDING_STATES: Final = 256
"""Pending states kept per group: bounds what a member can make us store."""


# --- convergence ------------------------------------------------------------------------------


def authorized(parent: GroupState, child: GroupState) -> bool:
    """Whether *child* may follow *parent* (versions, signer's rights)."""
    if child.group_id != parent.group_id or child.version != parent.version + 1:
        return False
    signer = child.signer
    if signer in parent.admins:
        return True
    # Leaving: a member removes itself and changes nothing else.
    return (signer in parent.members and signer not in child.members
            and set(child.members) == set(parent.members) - {signer}
            and child.admins == parent.admins and child.name == parent.name
            and child.avatar == parent.avatar and child.channel == parent.channel
            and child.subscriptions == parent.subscriptions)


def revoked(valid: Sequence[SignedGroupState]) -> set[bytes]:
    """Hashes of the states void because an admin who signed them was removed: a
    *removal* is a state that drops admins of its parent (other than its signer); it
    voids every state such an admin signed at the removal's version or later that does
    not descend from the removal, and every descendant of those. Removals are applied
    in order of (version, signer, hash), and one voided by an earlier one voids nothing
    (of two admins removing each other at one version, the smaller (signer, hash)
    stands). A function of the set alone, like the convergence rule."""
    by_hash = {s.hash: s for s in valid}
    children: dict[bytes, list[bytes]] = {}
    removals: list[tuple[SignedGroupState, frozenset[bytes]]] = []
    for s in valid:
        parent = None if s.state.parent is None else by_hash.get(s.state.parent)
        if parent is None:
            continue
        children.setdefault(parent.hash, []).append(s.hash)
        dropped = frozenset(parent.state.admins) - set(s.state.admins) - {s.state.signer}
        if dropped:
            removals.append((s, dropped))
    if not removals:
        return set()

    def subtree(root: bytes) -> set[bytes]:
        out, todo = {root}, [root]
        while todo:
            for child in children.get(todo.pop(), ()):
                if child not in out:
                    out.add(child)
                    todo.append(child)
        return out

    gone: set[bytes] = set()
    removals.sort(key=lambda r: (r[0].state.version, r[0].state.signer, r[0].hash))
    for removal, dropped in removals:
        if removal.hash in gone:
            continue
        kept = subtree(removal.hash)
        for s in valid:
            if (s.state.signer in dropped and s.state.version >= removal.state.version
                    and s.hash not in kept and s.hash not in gone):
                gone |= subtree(s.hash)
    return gone


@dataclass(slots=True)
class GroupView:
    """A group's states as this device holds them, with the rules applied."""

    group_id: bytes
    record: GroupRecord | None
    states: dict[bytes, StoredGroupState] = field(default_factory=dict)
    stored_roster: frozenset[bytes] | None = None
    """The roster as stored (``channel_rosters``), until :attr:`subs` is loaded: a post
    needs the subscribers' ids, not 10,000 signed subscriptions."""
    load_subs: Callable[[], list[SignedSubscription]] | None = None
    _subs: dict[bytes, SignedSubscription] | None = None

    @classmethod
    def load(cls, core: ClientCore, group_id: bytes) -> GroupView:
        record = core.store.load_group(group_id)
        states = {s.signed.hash: s for s in core.store.group_states(group_id)}
        return cls(group_id=group_id, record=record, states=states,
                   stored_roster=core.store.channel_roster(group_id),
                   load_subs=lambda: core.store.channel_subscriptions(group_id))

    @property
    def subs(self) -> dict[bytes, SignedSubscription]:
        """A channel with subscriptions: subscriber -> its winning subscription (every
        one for an admin; our own for a subscriber). Loaded on first use."""
        if self._subs is None:
            held = self.load_subs() if self.load_subs is not None else []
            self._subs = {s.sub.subscriber: s for s in held}
        return self._subs

    @property
    def roster(self) -> frozenset[bytes]:
        """Subscribers whose winning subscription says subscribed."""
        if self._subs is None and self.stored_roster is not None:
            return self.stored_roster
        return frozenset(k for k, s in self.subs.items() if s.sub.subscribed)

    def roster_write(self) -> tuple[bytes, tuple[bytes, ...]]:
        """The roster to store with a write that changes subscriptions."""
        return self.group_id, tuple(sorted(self.roster))

    def audience(self, state: GroupState | None = None) -> frozenset[bytes]:
        """Who reads the group: its members, and in a channel with subscriptions its
        subscribers as far as we know them (all of them if we are an admin)."""
        st = state if state is not None else (None if self.head is None else self.head.state)
        if st is None:
            return frozenset()
        if st.subscriptions:
            return frozenset(st.members) | self.roster
        return frozenset(st.members)

    def is_member(self, me: bytes, state: GroupState) -> bool:
        return me in state.members or (state.subscriptions and me in self.roster)

    @property
    def head(self) -> SignedGroupState | None:
        if self.record is None:
            return None
        found = self.states.get(self.record.head)
        return None if found is None else found.signed

    @property
    def active(self) -> bool:
        return self.record is not None and self.record.active

    def _valid(self) -> list[SignedGroupState]:
        return [s.signed for s in self.states.values() if s.status is StateStatus.VALID]

    def effective(self) -> list[SignedGroupState]:
        """The valid states the convergence rule chooses from: all of them but those
        :func:`revoked` (an admin's signatures made void by its removal)."""
        valid = self._valid()
        gone = revoked(valid)
        return [s for s in valid if s.hash not in gone] if gone else valid

    def absorb(self, signed: SignedGroupState, me: bytes, *, now_ms: int,
               invited: bool = False) -> list[StoredGroupState]:
        """Add a state whose signature was verified; returns the rows to store (new or
        now valid). The head is recomputed by :meth:`converge`. *invited*: a valid
        subscription for us made under this state came with it (a channel with
        subscriptions lists no subscriber)."""
        known = self.states.get(signed.hash)
        if known is not None and known.status is StateStatus.VALID:
            return []
        st = signed.state
        head = self.head
        base = (not self.active and (me in st.members or (invited and st.subscriptions))
                and st.signer in st.admins
                and (head is None or (st.version > head.state.version
                                      and self._may_add_us_back(signed))))
        if base:
            row = StoredGroupState(signed=signed, status=StateStatus.VALID,
                                   received_at_ms=now_ms)
            self.states[signed.hash] = row
            return [row, *self._settle(now_ms)]
        if head is None:
            return []  # not ours to hold: we are not a member of it
        parent = None if st.parent is None else self.states.get(st.parent)
        if ((parent is None or parent.status is not StateStatus.VALID)
                and me not in st.members and st.signer in head.state.admins
                and st.version >= head.state.version):
            # We were added in a change that lost to this one (its signer forwards it to
            # us, see forward_winners): we cannot check its ancestry, but an admin of
            # our head may remove us anyway.
            row = StoredGroupState(signed=signed, status=StateStatus.VALID,
                                   received_at_ms=now_ms)
            self.states[signed.hash] = row
            return [row, *self._settle(now_ms)]
        pending = sum(1 for s in self.states.values() if s.status is StateStatus.PENDING)
        if known is None and pending >= MAX_PENDING_STATES:
            _log.info("too many pending states in a group; one dropped")
            return []
        row = StoredGroupState(signed=signed, status=StateStatus.PENDING, received_at_ms=now_ms)
        self.states[signed.hash] = row
        settled = self._settle(now_ms)
        if self.states.get(signed.hash) is None:
            return []  # rejected
        return [row, *settled] if known is None else settled

    def line(self) -> Iterator[StoredGroupState]:
        """The head, then its parent, and so on, as far as we hold them (newest first:
        callers usually stop after one or two)."""
        row = None if self.record is None else self.states.get(self.record.head)
        while row is not None:
            yield row
            parent = row.signed.state.parent
            row = None if parent is None else self.states.get(parent)

    def _may_add_us_back(self, signed: SignedGroupState) -> bool:
        """For a group we were removed from (or left): whether *signed*, which lists us
        again, may be taken without its ancestry. Not if we hold its parent (then the
        usual rule decides, :func:`authorized`), and only if its signer was an admin in
        a state we hold: anyone else could sign a state that names itself admin."""
        st = signed.state
        parent = None if st.parent is None else self.states.get(st.parent)
        if parent is not None and parent.status is StateStatus.VALID:
            return False
        return any(st.signer in s.state.admins for s in self._valid())

    def _settle(self, now_ms: int) -> list[StoredGroupState]:
        """Validate pending states whose parent became valid; drop unauthorized ones."""
        out: list[StoredGroupState] = []
        progress = True
        while progress:
            progress = False
            for h, row in list(self.states.items()):
                if row.status is not StateStatus.PENDING:
                    continue
                parent_hash = row.signed.state.parent
                parent = None if parent_hash is None else self.states.get(parent_hash)
                if parent is None or parent.status is not StateStatus.VALID:
                    continue
                if authorized(parent.signed.state, row.signed.state):
                    valid = dataclasses.replace(row, status=StateStatus.VALID)
                    self.states[h] = valid
                    out = [o for o in out if o.signed.hash != h] + [valid]
                else:
                    _log.info("a group state signed without the right to make it dropped")
                    del self.states[h]
                    out = [o for o in out if o.signed.hash != h]
                progress = True
        return out

    def converge(self, me: bytes, *, now_ms: int) -> GroupRecord | None:
        """Apply the convergence rule; returns the new group row if the head moved."""
        valid = self.effective()
        if not valid:
            return None
        best = min(valid, key=SignedGroupState.sort_key)
        active = self.is_member(me, best.state)
        if (self.record is not None and self.record.head == best.hash
                and self.record.active == active):
            return None
        self.record = GroupRecord(group_id=self.group_id, head=best.hash,
                                  active=active, updated_at_ms=now_ms)
        return self.record


def group_info(core: ClientCore, view: GroupView, *, now_ms: int) -> GroupInfo:
    head = view.head
    if head is None:
        raise UnknownGroup(view.group_id)
    st = head.state
    return GroupInfo(group_id=view.group_id, version=st.version, name=st.name,
                     members=tuple(sorted(view.audience(st))), admins=st.admins,
                     avatar_manifest=st.avatar, subscriptions=st.subscriptions,
                     channel=st.channel, active=view.active,
                     conversation_id=conversation_id(core, view.group_id, st.name,
                                                     now_ms=now_ms))


def conversation_id(core: ClientCore, group_id: bytes, title: str | None, *,
                    now_ms: int) -> int:
    """The group's conversation (a read; created, titled, on first use)."""
    found = core.store.find_conversation(ConversationKind.GROUP, group_id)
    if found is not None:
        return found.id
    return core.store.ensure_conversation(ConversationKind.GROUP, group_id, now_ms=now_ms,
                                          title=title or None).id


def change_event(core: ClientCore, view: GroupView, old: SignedGroupState | None, *,
                 now_ms: int) -> GroupChanged:
    """The event for a head move from *old* to the view's head (also retitles)."""
    new = view.head
    assert new is not None
    st = new.state
    info = group_info(core, view, now_ms=now_ms)
    if old is None:
        return GroupChanged(group=info, by=st.signer, created=True, added=info.members,
                            promoted=st.admins, renamed=True,
                            avatar_changed=st.avatar is not None)
    o = old.state
    if o.name != st.name:
        core.store.set_conversation_title(info.conversation_id, st.name or None)

    def diff(a: Iterable[bytes], b: Iterable[bytes]) -> tuple[bytes, ...]:
        return tuple(sorted(set(a) - set(b)))

    return GroupChanged(group=info, by=st.signer, added=diff(st.members, o.members),
                        removed=diff(o.members, st.members),
                        promoted=diff(st.admins, o.admins), demoted=diff(o.admins, st.admins),
                        renamed=o.name != st.name, avatar_changed=o.avatar != st.avatar)


def member_view(core: ClientCore, group_id: bytes, *, admin: bool = False,
                ) -> tuple[GroupView, SignedGroupState]:
    """The group and its head, if we are a member (and an admin, if *admin*).

    Raises:
        UnknownGroup, NotGroupMember, NotGroupAdmin.
    """
    view = GroupView.load(core, group_id)
    head = view.head
    if head is None:
        raise UnknownGroup(group_id)
    if not view.active:
        raise NotGroupMember(group_id)
    if admin and core.account_id not in head.state.admins:
        raise NotGroupAdmin(group_id)
    return view, head


def reached(view: GroupView, state: GroupState) -> set[bytes]:
    """Whom the signer of *state* sent it to: the parent's members and its own (and, in
    a channel with subscriptions, its subscribers)."""
    parent = None if state.parent is None else view.states.get(state.parent)
    before = () if parent is None else parent.signed.state.members
    roster = view.roster if state.subscriptions else frozenset()
    return set(before) | set(state.members) | roster
