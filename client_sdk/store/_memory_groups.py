"""The memory store's group tables (tests only), applied like ``_sqlite_groups``."""

from __future__ import annotations

import dataclasses
from collections.abc import Callable

from ..history import HistoryOp
from .group_records import (
    GroupRecord,
    GroupWrite,
    PendingGroupBlob,
    SealedControlPart,
    SignedSubscription,
    StoredGroupState,
)


@dataclasses.dataclass
class GroupTables:
    groups: dict[bytes, GroupRecord] = dataclasses.field(default_factory=dict)
    states: dict[bytes, StoredGroupState] = dataclasses.field(default_factory=dict)
    chains: dict[tuple[bytes, int], bytes] = dataclasses.field(default_factory=dict)
    pending: dict[int, PendingGroupBlob] = dataclasses.field(default_factory=dict)
    next_pending: int = 1
    receipts: dict[tuple[bytes, bytes, bytes, int], int] = dataclasses.field(
        default_factory=dict)
    subscriptions: dict[bytes, SignedSubscription] = dataclasses.field(default_factory=dict)
    rosters: dict[bytes, frozenset[bytes]] = dataclasses.field(default_factory=dict)
    sealed: dict[tuple[bytes, bytes], SealedControlPart] = dataclasses.field(
        default_factory=dict)

    def copy(self) -> GroupTables:
        return GroupTables(groups=dict(self.groups), states=dict(self.states),
                           chains=dict(self.chains), pending=dict(self.pending),
                           next_pending=self.next_pending, receipts=dict(self.receipts),
                           subscriptions=dict(self.subscriptions),
                           rosters=dict(self.rosters), sealed=dict(self.sealed))

    def channel_subscriptions(self, group_id: bytes) -> list[SignedSubscription]:
        return [s for s in self.subscriptions.values() if s.sub.group_id == group_id]

    def group_states(self, group_id: bytes) -> list[StoredGroupState]:
        return [s for s in self.states.values() if s.signed.state.group_id == group_id]

    def write(self, w: GroupWrite, *, share: Callable[[bytes, int, bytes], None],
              unshare: Callable[[bytes, bytes], None],
              store_record: Callable[[GroupWrite], None],
              apply: Callable[[HistoryOp], object], forget: Callable[[bytes], None],
              drop_outbound: Callable[[bytes], None]) -> None:
        if w.group is not None:
            self.groups[w.group.group_id] = w.group
        for s in w.states:
            old = self.states.get(s.signed.hash)
            self.states[s.signed.hash] = s if old is None else dataclasses.replace(
                old, status=s.status)
        for sender, chain_id, group_id in w.chains:
            self.chains[(sender, chain_id)] = group_id
        for group_id, chain_id, member in w.shares:
            share(group_id, chain_id, member)
        for group_id, member in w.unshare:
            unshare(group_id, member)
        store_record(w)
        for p in w.pending_add:
            self.pending[self.next_pending] = dataclasses.replace(p, id=self.next_pending)
            self.next_pending += 1
        for pid in w.pending_done:
            self.pending.pop(pid, None)
        for group_id, message_id, member, kind, at_ms in w.receipts:
            self.receipts.setdefault((group_id, message_id, member, kind), at_ms)
        for digest in w.subscriptions_gone:
            self.subscriptions.pop(digest, None)
        for sub in w.subscriptions:
            self.subscriptions.setdefault(sub.hash, sub)
        if w.roster is not None:
            self.rosters[w.roster[0]] = frozenset(w.roster[1])
        for part in w.sealed_add:
            self.sealed.setdefault((part.sender, part.hash), part)
        for done in w.sealed_done:
            self.sealed.pop(done, None)
        if w.sealed_expire_before is not None:
            cutoff = w.sealed_expire_before
            self.sealed = {k: p for k, p in self.sealed.items() if p.received_at_ms >= cutoff}
        for op in w.history:
            apply(op)
        if w.forget_keys is not None:
            forget(w.forget_keys)
        if w.drop_outbound is not None:
            drop_outbound(w.drop_outbound)
