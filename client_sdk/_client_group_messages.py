"""The group messages part of :class:`~client_sdk.client.AsyncClient`'s API (docs/sdk.md
§15.14): texts, files, edits, reactions, deletes, receipts, typing, the disappearing
timer and history of a group conversation. Each send is one sender-key message and one
multi-recipient send (``_groups.send``), queued on the outbox pump."""

from __future__ import annotations

import contextlib
import os
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import TYPE_CHECKING, TypeVar

from protocol import limits as L
from protocol.frames import SendEphemeral
from protocol.inner import (
    Delete,
    DeleteScope,
    DisappearingTimer,
    Edit,
    File,
    InnerMessage,
    Reaction,
    Text,
    Typing,
)

from . import _groups
from .errors import ClientError, ConnectionLost
from .events import DisappearingTimerChanged, Event, MessageRef, MessageStatusChanged
from .groups import GroupInfo, UnknownGroup
from .history import (
    DeleteMessage,
    EditMessage,
    HistoryOp,
    MessageKind,
    MessageStatus,
    NewMessage,
    Page,
    PageCursor,
    React,
    SetExpireTimer,
)

if TYPE_CHECKING:
    from ._client_files import Progress
    from ._connection import RelayConnection
    from ._pump import OutboxPump
    from .core import ClientCore
    from .store.records import OutboxItem
    from .store.transfers import TransferRecord

__all__ = ["GroupMessagesMixin"]

T = TypeVar("T")


class GroupMessagesMixin:
    """Mixed into AsyncClient (which provides the attributes declared here)."""

    if TYPE_CHECKING:
        _send_conn: RelayConnection | None
        _pump: OutboxPump

        async def _run(self, fn: Callable[[ClientCore], T]) -> T: ...

        def _emit(self, events: Sequence[Event]) -> None: ...

        @staticmethod
        def _now_ms() -> int: ...

        async def group(self, group_id: bytes) -> GroupInfo: ...

        async def send_file(self, peer: bytes, path: str | os.PathLike[str], *,
                            caption: str | None = None, media_type: str | None = None,
                            progress: Progress | None = None) -> MessageRef: ...

        async def download_file(self, peer: bytes, message_id: bytes,
                                dest_path: str | os.PathLike[str], *,
                                progress: Progress | None = None) -> Path: ...

    async def _group_send(self, group_id: bytes, make: Callable[[bytes, int], InnerMessage],
                          history: Callable[[int, bytes], HistoryOp | None],
                          *, new_message: bool = False,
                          message_id: bytes | None = None) -> MessageRef:
        now = self._now_ms()
        mid, cid, items = await self._run(lambda c: _groups.send(
            c, group_id, make, history, now_ms=now, message_id=message_id))
        self._pump.add(items)
        if new_message:
            self._emit([MessageStatusChanged(peer=group_id, conversation_id=cid,
                                             message_id=mid, status=MessageStatus.PENDING)])
        last: list[OutboxItem] = items[-1:]
        return MessageRef(peer=group_id, conversation_id=cid, message_id=mid,
                          client_msg_id=last[0].client_msg_id if last else bytes(16))

    async def send_group_text(self, group_id: bytes, text: str, *,
                              reply_to: bytes | None = None) -> MessageRef:
        """One sender-key message, one multi-recipient send to every member.

        Raises:
            UnknownGroup, NotGroupMember, NotGroupAdmin (in a channel, for non-admins).
        """
        return await self._group_send(
            group_id,
            lambda mid, now: Text(message_id=mid, sent_at_ms=now, text=text, reply_to=reply_to),
            lambda cid, mid: NewMessage(conversation_id=cid, message_id=mid, sender=None,
                                        sent_at_ms=self._now_ms(), body=text,
                                        reply_to=reply_to),
            new_message=True)

    async def send_group_file(self, group_id: bytes, path: str | os.PathLike[str], *,
                              caption: str | None = None, media_type: str | None = None,
                              progress: Progress | None = None,
                              ) -> MessageRef:
        """Encrypt and upload a file (``send_file``'s machinery: chunks, retries,
        resumption), then send its message to the group (one sender-key message).

        Raises:
            UnknownGroup, NotGroupMember, NotGroupAdmin; as ``send_file`` otherwise.
        """
        await self._run(lambda c: _groups.sendable_group(c, group_id))
        return await self.send_file(group_id, path, caption=caption, media_type=media_type,
                                    progress=progress)

    async def download_group_file(self, group_id: bytes, message_id: bytes,
                                  dest_path: str | os.PathLike[str], *,
                                  progress: Progress | None = None,
                                  ) -> Path:
        """Download, verify and decrypt a group file message (``download_file``)."""
        if await self._group_target(group_id) is None:
            raise UnknownGroup(group_id)
        return await self.download_file(group_id, message_id, dest_path, progress=progress)

    async def _group_target(self, target: bytes) -> int | None:
        """The conversation of group *target*, or None if it is no group of ours (the
        file machinery's targets are contacts or groups)."""
        now = self._now_ms()

        def find(c: ClientCore) -> int | None:
            if c.store.load_group(target) is None:
                return None
            return _groups.conversation_id(c, target, None, now_ms=now)

        return await self._run(find)

    async def _group_file_message(self, record: TransferRecord) -> MessageRef:
        """An uploaded file's message to its group (its id was drawn with the upload; a
        crash after it was stored does not send it twice)."""
        group_id, mid = record.peer, record.message_id
        cid = await self._group_target(group_id)
        assert cid is not None
        if await self._run(lambda c: c.store.get_message(cid, mid)) is not None:
            return MessageRef(peer=group_id, conversation_id=cid, message_id=mid,
                              client_msg_id=bytes(16))
        manifest, caption = record.manifest, record.caption
        return await self._group_send(
            group_id,
            lambda m, now: File(message_id=m, sent_at_ms=now, manifest=manifest,
                                caption=caption),
            lambda c, m: NewMessage(conversation_id=c, message_id=m, sender=None,
                                    sent_at_ms=self._now_ms(), kind=MessageKind.FILE,
                                    body=caption, attachment=manifest),
            new_message=True, message_id=mid)

    async def _own_message(self, group_id: bytes, target: bytes) -> None:
        cid = (await self.group(group_id)).conversation_id
        msg = await self._run(lambda c: c.store.get_message(cid, target))
        if msg is None or not msg.outgoing or msg.deleted_at_ms is not None:
            raise ClientError(f"message {target.hex()} is not one of our messages")

    async def set_group_disappearing(self, group_id: bytes, timer_ms: int | None) -> None:
        """Set the group conversation's disappearing-message timer for every member
        (one sender-key ``DisappearingTimer`` message; in a channel, admins only):
        messages stored from now on disappear *timer_ms* after they reach each device.

        Raises:
            ValueError: *timer_ms* is not 1 ms .. one year (or None).
            UnknownGroup, NotGroupMember, NotGroupAdmin: as for sending.
        """
        if timer_ms is not None and not 0 < timer_ms <= L.MAX_DISAPPEARING_TIMER_MS:
            raise ValueError("timer_ms must be 1 ms .. one year, or None to keep messages")
        ref = await self._group_send(
            group_id,
            lambda mid, now: DisappearingTimer(message_id=mid, sent_at_ms=now,
                                               timer_ms=timer_ms),
            lambda cid, mid: SetExpireTimer(conversation_id=cid, timer_ms=timer_ms, by=None,
                                            at_ms=self._now_ms()))
        self._emit([DisappearingTimerChanged(peer=group_id, conversation_id=ref.conversation_id,
                                             timer_ms=timer_ms, by_peer=False)])

    async def edit_group_message(self, group_id: bytes, message_id: bytes, text: str) -> None:
        await self._own_message(group_id, message_id)
        await self._group_send(
            group_id,
            lambda mid, now: Edit(message_id=mid, sent_at_ms=now, target=message_id, text=text),
            lambda cid, mid: EditMessage(conversation_id=cid, target=message_id, editor=None,
                                         text=text, edited_at_ms=self._now_ms()))

    async def react_in_group(self, group_id: bytes, message_id: bytes, emoji: str, *,
                             remove: bool = False) -> None:
        await self._group_send(
            group_id,
            lambda mid, now: Reaction(message_id=mid, sent_at_ms=now, target=message_id,
                                      emoji=emoji, remove=remove),
            lambda cid, mid: React(conversation_id=cid, target=message_id, reactor=None,
                                   emoji=emoji, remove=remove, at_ms=self._now_ms()))

    async def delete_in_group(self, group_id: bytes, message_id: bytes) -> None:
        """Delete one of our group messages for every member (a tombstone stays)."""
        await self._own_message(group_id, message_id)
        await self._group_send(
            group_id,
            lambda mid, now: Delete(message_id=mid, sent_at_ms=now, target=message_id,
                                    scope=DeleteScope.FOR_EVERYONE),
            lambda cid, mid: DeleteMessage(conversation_id=cid, target=message_id, by=None,
                                           scope=DeleteScope.FOR_EVERYONE,
                                           at_ms=self._now_ms()))

    async def mark_group_read(self, group_id: bytes, message_ids: Sequence[bytes]) -> None:
        """Mark group messages READ and tell their authors (one receipt per author,
        pairwise; each author aggregates its members' receipts)."""
        now = self._now_ms()
        items = await self._run(lambda c: _groups.mark_read(c, group_id, message_ids,
                                                            now_ms=now))
        self._pump.add(items)

    async def send_group_typing(self, group_id: bytes, active: bool = True) -> bool:
        """Ephemeral typing signal to the members online now (never stored). Returns
        whether it was sent (members get our chain with our first group message)."""
        now = self._now_ms()
        signal = await self._run(lambda c: _groups.ephemeral(
            c, group_id, Typing(message_id=c.rng(16), sent_at_ms=now, active=active),
            now_ms=now))
        conn = self._send_conn
        if signal is None or conn is None:
            return False
        cmid, blob, recipients = signal
        with contextlib.suppress(ConnectionLost):
            conn.send(lambda rid: SendEphemeral(request_id=rid, client_msg_id=cmid, blob=blob,
                                                recipients=recipients))
            return True
        return False

    async def group_history(self, group_id: bytes, *, before: PageCursor | None = None,
                            after: PageCursor | None = None, limit: int = 50) -> Page:
        """A page of the group's conversation, oldest first."""
        cid = (await self.group(group_id)).conversation_id
        now = self._now_ms()
        return await self._run(lambda c: c.store.page(cid, before=before, after=after,
                                                      limit=limit, now_ms=now))
