"""Stored forms of groups (docs/sdk.md §15.14): signed states, the group row, the
chain index, pending group blobs, and :class:`GroupWrite`, what one group operation
changes, stored inside the same transaction as the send or the receipt that caused it
(``Outgoing.group`` / ``Incoming.group``) or alone (``GroupStore.write_group``).
"""

from __future__ import annotations

import enum
import hashlib
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Protocol

from protocol.group import (
    GROUP_ID_SIZE,
    GroupState,
    Subscription,
    decode_group_state,
    decode_subscription,
)

from ..history import HistoryOp
from .records import SenderKeyRecordUpdate

__all__ = [
    "GroupRecord",
    "GroupStore",
    "GroupWrite",
    "PendingGroupBlob",
    "SealedControlPart",
    "SignedGroupState",
    "SignedSubscription",
    "StateStatus",
    "StoredGroupState",
]


def _check(name: str, value: bytes, size: int) -> None:
    if not isinstance(value, bytes) or len(value) != size:
        raise ValueError(f"{name} must be {size} bytes")


class StateStatus(enum.IntEnum):
    VALID = 1
    """Verified and derived from a valid parent by an allowed signer."""
    PENDING = 2
    """Signature verified; its parent has not arrived yet (another member's mailbox)."""


@dataclass(frozen=True, slots=True, kw_only=True)
class SignedGroupState:
    """A group state with the exact bytes its signer signed, and their SHA-256."""

    state: GroupState
    encoded: bytes = field(repr=False)
    signature: bytes = field(repr=False)
    hash: bytes

    @classmethod
    def from_wire(cls, encoded: bytes, signature: bytes) -> SignedGroupState:
        """Decode (strictly) and hash; the signature is checked by the caller.

        Raises:
            RemoteProtocolError: the bytes are not a valid group state.
        """
        return cls(state=decode_group_state(encoded), encoded=encoded, signature=signature,
                   hash=hashlib.sha256(encoded).digest())

    def sort_key(self) -> tuple[int, bytes, bytes]:
        """The convergence rule as one key: the smallest key is the head. Highest
        version first; among equal versions the smallest (signer, hash)."""
        return (-self.state.version, self.state.signer, self.hash)


@dataclass(frozen=True, slots=True, kw_only=True)
class SignedSubscription:
    """A channel subscription with the exact bytes its signer signed, and their SHA-256
    (docs/protocol.md §9.14, "Channels with subscriptions")."""

    sub: Subscription
    encoded: bytes = field(repr=False)
    signature: bytes = field(repr=False)
    hash: bytes

    @classmethod
    def from_wire(cls, encoded: bytes, signature: bytes) -> SignedSubscription:
        """Decode (strictly) and hash; the signature is checked by the caller.

        Raises:
            RemoteProtocolError: the bytes are not a valid subscription.
        """
        return cls(sub=decode_subscription(encoded), encoded=encoded, signature=signature,
                   hash=hashlib.sha256(encoded).digest())

    def sort_key(self) -> tuple[int, bytes, bytes]:
        """Per subscriber, the smallest key wins: highest ``seq``, then the smallest
        (signer, hash)."""
        return (-self.sub.seq, self.sub.signer, self.hash)


@dataclass(frozen=True, slots=True, kw_only=True)
class StoredGroupState:
    """A state as held; ``received_at_ms`` is when the relay stored the envelope that
    brought it (our clock for our own states): a removed member's messages stored by
    the relay before its removal are still accepted."""

    signed: SignedGroupState
    status: StateStatus
    received_at_ms: int


@dataclass(frozen=True, slots=True, kw_only=True)
class GroupRecord:
    """One group we know: the hash of its current state (the head) and whether we are
    still a member (``active``)."""

    group_id: bytes
    head: bytes
    active: bool
    updated_at_ms: int

    def __post_init__(self) -> None:
        _check("group_id", self.group_id, GROUP_ID_SIZE)
        _check("head", self.head, 32)


@dataclass(frozen=True, slots=True, kw_only=True)
class PendingGroupBlob:
    """A group message we could not place yet (its chain or its sender's membership
    arrives from another mailbox); retried when groups change, dropped after a while.
    ``received_at_ms`` is the relay's time of the envelope."""

    id: int
    sender: bytes
    blob: bytes = field(repr=False)
    received_at_ms: int


@dataclass(frozen=True, slots=True, kw_only=True)
class SealedControlPart:
    """Half of a sealed group change from *sender* (docs/protocol.md §9.14): the sealed
    blob (``blob``) or its key (``key``: the 32-byte key then the 16-byte seal id),
    whichever arrived first, kept until the other half comes; ``hash`` is SHA-256 of
    the blob. ``received_at_ms`` is the relay's time of the envelope."""

    sender: bytes
    hash: bytes
    blob: bytes | None = field(default=None, repr=False)
    key: bytes | None = field(default=None, repr=False)
    received_at_ms: int

    def __post_init__(self) -> None:
        _check("sender", self.sender, 16)
        _check("hash", self.hash, 32)
        if (self.blob is None) == (self.key is None):
            raise ValueError("a sealed control part is the blob or the key")
        if self.key is not None:
            _check("key", self.key, 48)


@dataclass(frozen=True, slots=True, kw_only=True)
class GroupWrite:
    """Everything one group operation changes, applied in order in one transaction.

    Attributes:
        group: the group row to create or replace.
        states: states to insert or replace (by hash).
        chains: ``(sender, chain_id, group_id)``: which group a member's chain is for.
        shares: ``(group_id, chain_id, member)``: members our chain was sent to.
        unshare: ``(group_id, member)``: members that lack our chain after all (they
            asked for it: ``SenderKeyRequest``); our next message sends it again.
        sender_keys: members' chains to store (distributions, pending decryptions).
        pending_add: group blobs to keep for later (``id`` is ignored: assigned).
        pending_done: ids of pending blobs handled (or expired).
        history: history operations (only for a standalone ``write_group``).
        forget_keys: a group whose sender keys all go (we left or were removed).
        drop_outbound: a group whose outbound chain goes (someone left: the next message
            starts a new chain, shared afresh with the members of that time).
        receipts: ``(group_id, message_id, member, kind, at_ms)``: a member delivered
            (1) or read (2) one of our messages.
        subscriptions: channel subscriptions to keep (each the winner for its
            subscriber); ``subscriptions_gone``: hashes of the ones they replace.
        roster: ``(group_id, subscribed ids)``, the channel's roster after this write
            (given with every change of ``subscriptions``).
        sealed_add: halves of sealed changes to keep until the other half comes.
        sealed_done: ``(sender, hash)`` of halves used (applied in order, after
            ``sealed_add``: a half added and used in one batch leaves nothing).
        sealed_expire_before: drop the halves received before this time.
    """

    group: GroupRecord | None = None
    states: tuple[StoredGroupState, ...] = ()
    chains: tuple[tuple[bytes, int, bytes], ...] = ()
    shares: tuple[tuple[bytes, int, bytes], ...] = ()
    unshare: tuple[tuple[bytes, bytes], ...] = ()
    sender_keys: tuple[SenderKeyRecordUpdate, ...] = ()
    pending_add: tuple[PendingGroupBlob, ...] = ()
    pending_done: tuple[int, ...] = ()
    history: tuple[HistoryOp, ...] = ()
    forget_keys: bytes | None = None
    drop_outbound: bytes | None = None
    receipts: tuple[tuple[bytes, bytes, bytes, int, int], ...] = ()
    subscriptions: tuple[SignedSubscription, ...] = ()
    subscriptions_gone: tuple[bytes, ...] = ()
    roster: tuple[bytes, tuple[bytes, ...]] | None = None
    sealed_add: tuple[SealedControlPart, ...] = ()
    sealed_done: tuple[tuple[bytes, bytes], ...] = ()
    sealed_expire_before: int | None = None


class GroupStore(Protocol):
    """Groups: states, the group rows, the chain index and pending group blobs."""

    def load_group(self, group_id: bytes) -> GroupRecord | None: ...

    def list_groups(self) -> list[GroupRecord]:
        """Every group we know (also those we left), by group id."""
        ...

    def group_states(self, group_id: bytes) -> list[StoredGroupState]:
        """Every state held for the group (valid and pending)."""
        ...

    def group_for_chain(self, sender: bytes, chain_id: int) -> bytes | None:
        """The group a member's chain belongs to."""
        ...

    def channel_subscriptions(self, group_id: bytes) -> list[SignedSubscription]:
        """The subscriptions held for a channel (one per subscriber: the winner)."""
        ...

    def channel_roster(self, group_id: bytes) -> frozenset[bytes] | None:
        """The subscribed ids of a channel, as last written (None: never written)."""
        ...

    def pending_group_blobs(self, *, limit: int = 1000) -> list[PendingGroupBlob]:
        """Pending group blobs, oldest first."""
        ...

    def pending_group_blob_count(self, *, sender: bytes | None = None) -> int:
        """Pending group blobs held: in all, or from *sender*."""
        ...

    def group_receipts(self, group_id: bytes, message_id: bytes) -> list[tuple[bytes, int]]:
        """``(member, kind)`` receipts held for one of our group messages."""
        ...

    def sealed_control_part(self, sender: bytes, blob_hash: bytes) -> SealedControlPart | None:
        """The half of a sealed change from *sender* held for *blob_hash*, if any."""
        ...

    def sealed_control_count(self, *, sender: bytes | None = None, blobs: bool = False,
                             ) -> int:
        """Halves of sealed changes held: in all, or from *sender*; only blobs if
        *blobs*."""
        ...

    def write_group(self, write: GroupWrite, *, now_ms: int) -> None:
        """Apply *write* alone, in one transaction."""
        ...


def history_ops(write: GroupWrite | None) -> Sequence[HistoryOp]:
    return () if write is None else write.history
