"""Public types of groups and channels (docs/sdk.md §15.14): what a group looks like
to the application, its events and its errors. The logic is in ``_groups`` (sending and
convergence) and ``_groups_receive``; the API in ``_client_groups``."""

from __future__ import annotations

from dataclasses import dataclass, field

from .errors import ClientError
from .events import Event

__all__ = [
    "GroupChanged",
    "GroupInfo",
    "GroupReceiptsChanged",
    "GroupTypingChanged",
    "NotGroupAdmin",
    "NotGroupMember",
    "UnknownGroup",
]


@dataclass(frozen=True, slots=True, kw_only=True)
class GroupInfo:
    """A group as its current state (the head) describes it.

    Attributes:
        version: the state's version (1 at creation, +1 per change).
        members, admins: account ids, sorted; admins are members.
        avatar_manifest: an encoded file manifest (the avatar is an encrypted file).
        channel: only admins post; members read.
        subscriptions: a channel whose subscribers are not in its state: ``members`` is
            the admins and the subscribers we know (all of them as an admin; ourselves
            as a subscriber).
        active: we are a member (False after we left or were removed).
        conversation_id: the group's conversation in history.
    """

    group_id: bytes
    version: int
    name: str = field(repr=False)
    members: tuple[bytes, ...] = field(repr=False)
    admins: tuple[bytes, ...] = field(repr=False)
    avatar_manifest: bytes | None = field(default=None, repr=False)
    channel: bool = False
    subscriptions: bool = False
    active: bool
    conversation_id: int


@dataclass(frozen=True, slots=True, kw_only=True)
class GroupChanged(Event):
    """The group's current state changed (created, joined, renamed, members or admins
    changed, we left or were removed). ``by`` is the signer of the new state.

    Attributes:
        created: we learned of the group with this state (creation or being added).
        added, removed, promoted, demoted: account ids, compared with the previous head.
        renamed: the name changed (also set on creation).
        avatar_changed: the avatar was set, replaced or removed (also set on creation
            with an avatar).
    """

    group: GroupInfo
    by: bytes
    created: bool = False
    added: tuple[bytes, ...] = ()
    removed: tuple[bytes, ...] = ()
    promoted: tuple[bytes, ...] = ()
    demoted: tuple[bytes, ...] = ()
    renamed: bool = False
    avatar_changed: bool = False


@dataclass(frozen=True, slots=True, kw_only=True)
class GroupReceiptsChanged(Event):
    """A member's receipt for one of our group messages, aggregated: who delivered it
    (a read counts as delivered) and who read it, out of ``members`` other members. The
    message's status becomes DELIVERED (READ) once all of them delivered (read) it."""

    group_id: bytes
    conversation_id: int
    message_id: bytes
    delivered: tuple[bytes, ...]
    read: tuple[bytes, ...]
    members: int


@dataclass(frozen=True, slots=True, kw_only=True)
class GroupTypingChanged(Event):
    """A member is (not) typing in a group (ephemeral)."""

    group_id: bytes
    peer: bytes
    active: bool


class UnknownGroup(ClientError):
    """No group with this id on this device."""

    def __init__(self, group_id: bytes) -> None:
        super().__init__(f"no group {group_id.hex()}")
        self.group_id = group_id


class NotGroupMember(ClientError):
    """We are not (or no longer) a member of this group."""

    def __init__(self, group_id: bytes) -> None:
        super().__init__(f"not a member of group {group_id.hex()}")
        self.group_id = group_id


class NotGroupAdmin(ClientError):
    """Only the group's admins may do this (change the group, post in a channel)."""

    def __init__(self, group_id: bytes) -> None:
        super().__init__(f"not an admin of group {group_id.hex()}")
        self.group_id = group_id
