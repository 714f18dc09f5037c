"""The groups and channels part of :class:`~client_sdk.client.AsyncClient`'s API
(docs/sdk.md §15.14). Each call runs the core's group logic (``_groups``) on the
worker, queues the stored rows on the outbox pump and emits the events."""

from __future__ import annotations

import logging
import os
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import TYPE_CHECKING, TypeVar

from pigeon_crypto.errors import PigeonError
from pigeon_crypto.files import FileManifest
from protocol.group import GroupState

from . import _channels, _groups
from .events import (
    Event,
    InvitationReceived,
    MessageRef,
    Reconnected,
)
from .groups import GroupChanged, GroupInfo
from .store.records import ContactState

if TYPE_CHECKING:
    from ._client_files import Progress
    from ._connection import RelayConnection
    from ._pump import OutboxPump
    from .core import ClientCore

__all__ = ["GroupsApiMixin"]

T = TypeVar("T")
E = TypeVar("E", bound=Event)
_log = logging.getLogger("pigeon.sdk.groups")


def _ids(ids: Sequence[bytes]) -> tuple[bytes, ...]:
    return tuple(sorted(set(ids)))


class GroupsApiMixin:
    """Mixed into AsyncClient (which provides the attributes declared here)."""

    if TYPE_CHECKING:
        _send_conn: RelayConnection | None
        _pump: OutboxPump

        async def _run(self, fn: Callable[[ClientCore], T]) -> T: ...

        @property
        def core(self) -> ClientCore: ...

        @property
        def account_id(self) -> bytes: ...

        def on(self, event_type: type[E], handler: Callable[[E], object],
               ) -> Callable[[], None]: ...

        async def add_contact(self, account_id: bytes, *,
                              fingerprint: bytes | None = None) -> None: ...

        async def accept(self, peer: bytes) -> None: ...

        def _emit(self, events: Sequence[Event]) -> None: ...

        @staticmethod
        def _now_ms() -> int: ...

        async def send_file(self, peer: bytes, path: str | os.PathLike[str], *,
                            caption: str | None = None, media_type: str | None = None,
                            progress: Progress | None = None) -> MessageRef: ...

        async def download_file(self, peer: bytes, message_id: bytes,
                                dest_path: str | os.PathLike[str], *,
                                progress: Progress | None = None) -> Path: ...

        async def upload_file(self, path: str | os.PathLike[str], *,
                              media_type: str | None = None,
                              progress: Progress | None = None) -> bytes: ...

        async def download_manifest(self, peer: bytes, manifest: bytes,
                                    dest_path: str | os.PathLike[str], *,
                                    progress: Progress | None = None) -> Path: ...

    # --- introductions ---------------------------------------------------------------------

    group_introductions: bool = True
    """Make the members of our groups (not channels) contacts of each other: an author
    writes to each member's pairwise mailbox. The member with the smaller account id
    invites, the other accepts invitations from members of a group it shares."""

    def _init_groups(self) -> None:
        self._introducing: set[bytes] = set()
        self.on(GroupChanged, self._introduce_members)
        self.on(InvitationReceived, self._accept_co_member)
        self.on(Reconnected, self._introduce_all)

    async def _introduce_all(self, event: Reconnected) -> None:
        """After each login: finish introductions a restart or a failure interrupted."""
        if not self.group_introductions:
            return
        for info in await self.groups():
            await self._introduce(info)

    async def _introduce_members(self, event: GroupChanged) -> None:
        await self._introduce(event.group)

    async def _introduce(self, info: GroupInfo) -> None:
        """Become contacts with whom we must write to, or read from, in *info*: every
        member of a group; in a channel, an admin with the readers and the other
        admins, a reader with the admins only (readers are never introduced to each
        other). Between peers, the smaller account id invites and the other accepts;
        in a channel an admin invites the readers (a subscriber knows no roster)."""
        if not self.group_introductions or not info.active:
            return
        me = self.account_id
        admins = frozenset(info.admins)
        if info.channel and me not in admins:
            peers: Sequence[bytes] = info.admins  # they invite us; we accept theirs
        else:
            peers = info.members
        for member in peers:
            if member == me or member in self._introducing:
                continue
            contact = self.core.contact(member)
            if contact is not None and contact.state is not ContactState.PENDING:
                continue
            if contact is None:
                invites_us = member < me
                if info.channel:  # an admin invites the readers; admins as in a group
                    invites_us = me not in admins or (member in admins and member < me)
                if invites_us:
                    continue  # the other invites us; we accept (_accept_co_member)
            self._introducing.add(member)
            try:
                if contact is None:
                    await self.add_contact(member)
                else:  # they invited us before we knew the group
                    await self.accept(member)
            except PigeonError as exc:
                _log.info("could not introduce a group member: %s", type(exc).__name__)
            finally:
                self._introducing.discard(member)

    async def _accept_co_member(self, event: InvitationReceived) -> None:
        peer = event.peer
        if not self.group_introductions or peer in self._introducing:
            return

        def shares_a_group(c: ClientCore) -> bool:
            """A group we are both in, or a channel one of us administers and the
            other is in (its readers do not meet each other)."""
            me = c.account_id
            for record in c.store.list_groups():
                if not record.active:
                    continue
                view = _groups.GroupView.load(c, record.group_id)
                head = view.head
                if head is None:
                    continue
                st = head.state
                if not st.channel:
                    if peer in st.members:
                        return True
                elif peer in st.admins or (me in st.admins and peer in view.audience()):
                    return True
            return False

        if await self._run(shares_a_group):
            contact = self.core.contact(peer)
            if contact is not None and contact.state is ContactState.PENDING:
                self._introducing.add(peer)
                try:
                    await self.accept(peer)
                except PigeonError as exc:
                    _log.info("could not accept a group member: %s", type(exc).__name__)
                finally:
                    self._introducing.discard(peer)

    # --- group state --------------------------------------------------------------------

    async def create_group(self, name: str, members: Sequence[bytes], *,
                           admins: Sequence[bytes] = (),
                           avatar: str | os.PathLike[str] | None = None,
                           avatar_manifest: bytes | None = None,
                           channel: bool = False) -> GroupInfo:
        """Create a group with us as an admin and send it to every member (each must be
        an accepted contact). *avatar* is an image file, encrypted and uploaded first
        (``upload_file``); or *avatar_manifest*, the encoded manifest of a file already
        uploaded. With *channel*, only admins post; the state still lists every member
        (at most 1,000; see ``create_channel`` for channels that scale).

        Raises:
            UnknownContact, ContactNotReady, ContactBlocked, IdentityChangeUnacknowledged.
            ValueError: both *avatar* and *avatar_manifest*, or a manifest that is not one.
        """
        manifest = await self._avatar_manifest(avatar, avatar_manifest, members)
        return await self._create_group(name, members, admins=admins, avatar=manifest,
                                        channel=channel, subscriptions=False)

    async def _create_group(self, name: str, members: Sequence[bytes], *, admins: Sequence[bytes],
                      avatar: bytes | None, channel: bool, subscriptions: bool) -> GroupInfo:
        now = self._now_ms()
        group_id, items, events = await self._run(lambda c: _groups.create(
            c, name=name, members=members, admins=admins, avatar=avatar,
            channel=channel, subscriptions=subscriptions, now_ms=now))
        self._pump.add(items)
        self._emit(events)
        return await self.group(group_id)

    async def create_channel(self, name: str, subscribers: Sequence[bytes], *,
                             admins: Sequence[bytes] = (),
                             avatar: str | os.PathLike[str] | None = None,
                             avatar_manifest: bytes | None = None) -> GroupInfo:
        """A channel: only admins post, subscribers read (up to
        ``MAX_CHANNEL_SUBSCRIBERS``). Its state lists the admins only; each subscriber
        holds its own signed subscription and learns no other subscriber; the admins
        hold them all. Subscribers need sessions with the admins only. *avatar* and
        *avatar_manifest* as for :meth:`create_group`.

        Raises:
            UnknownContact, ContactNotReady, ... for a subscriber we cannot write to.
        """
        manifest = await self._avatar_manifest(avatar, avatar_manifest, subscribers)
        return await self._create_group(name, subscribers, admins=admins, avatar=manifest,
                                        channel=True, subscriptions=True)

    async def _avatar_manifest(self, avatar: str | os.PathLike[str] | None,
                               manifest: bytes | None, members: Sequence[bytes] = (),
                               ) -> bytes | None:
        """The avatar manifest a call names (a group state's or our profile's): *avatar*
        uploaded (once every one of *members* is someone we can write to), or *manifest*
        checked."""
        if avatar is not None:
            if manifest is not None:
                raise ValueError("give avatar or avatar_manifest, not both")
            for member in members:  # as _groups.create will: before anything is uploaded
                if member != self.account_id:
                    self.core.require_sendable(member)
            return await self.upload_file(avatar)
        if manifest is not None:
            try:
                FileManifest.from_bytes(manifest)
            except PigeonError as exc:
                raise ValueError("avatar_manifest is not an encoded file manifest") from exc
        return manifest

    async def _subscriptions(self, group_id: bytes) -> bool:
        """Whether the group is a channel with subscriptions (UnknownGroup)."""
        return (await self.group(group_id)).subscriptions

    async def _set_subscribed(self, group_id: bytes, ids: Sequence[bytes],
                              subscribed: bool) -> GroupInfo:
        now = self._now_ms()
        items, events = await self._run(lambda c: _channels.set_subscribed(
            c, group_id, ids, subscribed, now_ms=now))
        self._pump.add(items)
        self._emit(events)
        return await self.group(group_id)

    async def _change(self, group_id: bytes,
                      mutate: Callable[[GroupState], dict[str, object]], *,
                      leave: bool = False, readers: Sequence[bytes] = ()) -> GroupInfo:
        now = self._now_ms()
        items, events = await self._run(lambda c: _groups.change(
            c, group_id, mutate, leave=leave, readers=readers, now_ms=now))
        self._pump.add(items)
        self._emit(events)
        return await self.group(group_id)

    async def add_members(self, group_id: bytes, members: Sequence[bytes]) -> GroupInfo:
        """Add accepted contacts (admins only). They read only what is sent from now on.
        In a channel (``create_channel``) they become subscribers."""
        if await self._subscriptions(group_id):
            return await self._set_subscribed(group_id, members, True)
        return await self._change(group_id, lambda s: {"members": _ids([*s.members, *members])})

    async def remove_members(self, group_id: bytes, members: Sequence[bytes]) -> GroupInfo:
        """Remove members (admins only); every remaining member rotates its sender key
        before its next message, so the removed read nothing sent after this. In a
        channel, subscribers lose their subscription and admins their seat."""
        gone = set(members)
        if await self._subscriptions(group_id):
            info = await self._set_subscribed(group_id, members, False)
            if not gone & set(info.admins):
                return info
        return await self._change(group_id, lambda s: {
            "members": tuple(m for m in s.members if m not in gone),
            "admins": tuple(m for m in s.admins if m not in gone)})

    async def rename_group(self, group_id: bytes, name: str) -> GroupInfo:
        """Give the group a new name (admins only): a signed control message to every
        member, who each get ``GroupChanged``. Returns the group as it is now.

        Raises:
            UnknownGroup, NotGroupMember, NotGroupAdmin.
        """
        return await self._change(group_id, lambda s: {"name": name})

    async def set_group_avatar(self, group_id: bytes, *,
                               avatar_manifest: bytes | None = None,
                               avatar: str | os.PathLike[str] | None = None) -> GroupInfo:
        """Set the group's avatar (admins only): *avatar*, an image file encrypted and
        uploaded first, or *avatar_manifest*, a file already uploaded; neither removes
        it. Members get ``GroupChanged`` and fetch it with :meth:`download_group_avatar`.

        Raises:
            UnknownGroup, NotGroupMember, NotGroupAdmin (before anything is uploaded).
            ValueError: both given, or a manifest that is not one.
        """
        await self._run(lambda c: _groups.changeable(c, group_id))  # _change's checks
        manifest = await self._avatar_manifest(avatar, avatar_manifest)
        return await self._change(group_id, lambda s: {"avatar": manifest})

    async def download_group_avatar(self, group_id: bytes, dest_path: str | os.PathLike[str],
                                    *, progress: Progress | None = None) -> Path | None:
        """Download the avatar the group's state names to *dest_path* (None: it has
        none). Like a contact's avatar it is an encrypted file on the relay, kept until
        the relay's blob expiry (``--blob-ttl``); an older one must be set again.

        Raises:
            UnknownGroup.
            NotAFileMessage: the state names something that is not a file manifest.
            TransferFailed: as for ``download_file``.
        """
        manifest = (await self.group(group_id)).avatar_manifest
        if manifest is None:
            return None
        return await self.download_manifest(group_id, manifest, dest_path, progress=progress)

    async def promote(self, group_id: bytes, members: Sequence[bytes]) -> GroupInfo:
        """Make members admins (admins only)."""
        return await self._change(group_id, lambda s: {"admins": _ids([*s.admins, *members])})

    async def demote(self, group_id: bytes, members: Sequence[bytes]) -> GroupInfo:
        """Take admin rights away (admins only; a group keeps at least one admin). In a
        channel, the demoted stay as subscribers."""
        gone = set(members)
        return await self._change(group_id, lambda s: {
            "admins": tuple(m for m in s.admins if m not in gone)}, readers=members)

    async def leave_group(self, group_id: bytes) -> None:
        """Leave: a state without us, signed by us, sent to the others. If we are the
        last admin, the member with the smallest account id becomes one."""
        now = self._now_ms()
        items, events = await self._run(lambda c: _groups.leave(c, group_id, now_ms=now))
        self._pump.add(items)
        self._emit(events)

    async def group(self, group_id: bytes) -> GroupInfo:
        """The group as its current state describes it.

        Raises:
            UnknownGroup.
        """
        now = self._now_ms()
        return await self._run(lambda c: _groups.group_info(
            c, _groups.GroupView.load(c, group_id), now_ms=now))

    async def groups(self, *, include_left: bool = False) -> list[GroupInfo]:
        """Every group we are in (and those we left, with *include_left*)."""
        now = self._now_ms()

        def all_groups(c: ClientCore) -> list[GroupInfo]:
            out = []
            for record in c.store.list_groups():
                if record.active or include_left:
                    out.append(_groups.group_info(c, _groups.GroupView.load(c, record.group_id),
                                                  now_ms=now))
            return out

        return await self._run(all_groups)

    async def group_members(self, group_id: bytes) -> tuple[bytes, ...]:
        return (await self.group(group_id)).members
