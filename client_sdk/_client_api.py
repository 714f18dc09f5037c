"""The part of :class:`~client_sdk.client.AsyncClient`'s API that needs no connection:
local reads (contacts, history, search), local decisions (block, verify, disappearing
messages, passphrase) and the message intents that go through the group commit.
Kept apart so that ``client.py`` stays about the connection."""

from __future__ import annotations

import asyncio
import logging
import os
from collections.abc import Callable, Sequence
from typing import TYPE_CHECKING, TypeVar

from protocol import limits as L
from protocol.inner import DeleteScope

from . import _sending
from .errors import UnknownContact
from .events import MessageRef
from .groups import UnknownGroup
from .history import (
    Conversation,
    ConversationKind,
    DeleteMessage,
    Page,
    PageCursor,
    SearchPage,
)
from .store.records import Contact, ContactState

if TYPE_CHECKING:
    from ._pump import OutboxPump
    from .core import ClientCore
    from .groups import GroupInfo
    from .store.profile import Profile

__all__ = ["ClientApiMixin"]

_log = logging.getLogger("pigeon.sdk")

T = TypeVar("T")


class ClientApiMixin:
    """Mixed into AsyncClient (which provides the attributes declared here)."""

    if TYPE_CHECKING:
        _profile: Profile | None
        _relay_url: str | None
        _pump: OutboxPump

        @property
        def core(self) -> ClientCore: ...

        async def _run(self, fn: Callable[[ClientCore], T]) -> T: ...

        async def _submit(self, intent: _sending.Intent) -> MessageRef | None: ...

        def _queue_intents(self, intents: Sequence[_sending.Intent],
                           ) -> list[asyncio.Future[MessageRef | None]]: ...

        @staticmethod
        def _now_ms() -> int: ...

        async def upload_file(self, path: str | os.PathLike[str], *,
                              media_type: str | None = None) -> bytes: ...

        async def group(self, group_id: bytes) -> GroupInfo: ...

        async def _avatar_manifest(self, avatar: str | os.PathLike[str] | None,
                                   manifest: bytes | None, members: Sequence[bytes] = (),
                                   ) -> bytes | None: ...

    # --- our account --------------------------------------------------------------------

    @property
    def registered(self) -> bool:
        """True once this profile has an account on its relay (``register``)."""
        return self.core.registered

    @property
    def display_name(self) -> str | None:
        """Our display name as last set with ``set_profile`` (None: never set)."""
        return self.core.display_name()

    def check_sendable(self, peer: bytes) -> Contact:
        """The contact, if a message to *peer* would be accepted now.

        Raises:
            UnknownContact, ContactBlocked, ContactNotReady,
            IdentityChangeUnacknowledged: why a send would be refused.
        """
        return self.core.require_sendable(peer)

    @property
    def account_id(self) -> bytes:
        """Our 16-byte account id (stable across identity rotations)."""
        return self.core.account_id

    def contact_link(self) -> str:
        """A link (and QR payload) others use to add us; it pins our identity."""
        return self.core.contact_link(self._relay_url)

    async def set_profile(self, display_name: str, *,
                          avatar: str | os.PathLike[str] | None = None,
                          avatar_manifest: bytes | None = None) -> None:
        """Set our display name and avatar and share them with every accepted contact,
        end to end (the relay never sees them; it stores the avatar as an encrypted
        blob, like any file).

        Args:
            avatar: an image file: encrypted and uploaded first (``upload_file``).
            avatar_manifest: instead of *avatar*, the manifest of a file already
                uploaded. Neither: no avatar.

        Contacts get ``ProfileChanged`` and fetch the image with ``download_avatar``.

        Raises:
            ValueError: both *avatar* and *avatar_manifest*, or a manifest that is not
                one (nothing is stored or sent), as for a group's avatar.
        """
        # The group calls' helper: one check of the manifest (or upload) for both.
        avatar_manifest = await self._avatar_manifest(avatar, avatar_manifest)

        def store(core: ClientCore) -> list[Contact]:
            core.store.put_setting("display_name", display_name.encode())
            if avatar_manifest is None:
                core.store.delete_setting("avatar_manifest")
            else:
                core.store.put_setting("avatar_manifest", avatar_manifest, secret=True)
            return core.contacts(ContactState.ACCEPTED)

        for contact in await self._run(store):
            await self._submit(_sending.SendProfile(peer=contact.account_id,
                                                    display_name=display_name,
                                                    avatar_manifest=avatar_manifest))

    async def change_passphrase(self, old: str | bytes, new: str | bytes) -> None:
        """Re-wrap the profile's data key (records are not re-encrypted).

        Raises:
            WrongPassphrase: *old* is wrong.
        """
        profile = self._profile
        assert profile is not None
        await self._run(lambda c: profile.change_passphrase(old, new))

    # --- contacts ---------------------------------------------------------------------------

    def contacts(self, state: ContactState | None = None) -> list[Contact]:
        """Contacts (optionally in one state), sorted by account id."""
        return self.core.contacts(state)

    def contact(self, peer: bytes) -> Contact | None:
        return self.core.contact(peer)

    def invitations(self) -> list[Contact]:
        """Contacts who invited us and wait for ``accept`` (PENDING)."""
        return self.core.contacts(ContactState.PENDING)

    async def block(self, peer: bytes) -> None:
        """Stop showing anything from *peer* and refuse sends to them."""
        await self._run(lambda c: c.set_state(peer, blocked=True, now_ms=self._now_ms()))

    async def unblock(self, peer: bytes) -> None:
        await self._run(lambda c: c.set_state(peer, blocked=False, now_ms=self._now_ms()))
        await self._announce_to_waiting()

    def safety_number(self, peer: bytes) -> str:
        """The 60-digit safety number with *peer* (12 groups of 5), to compare aloud."""
        return self.core.safety_number(peer)

    def scannable_safety_number(self, peer: bytes) -> bytes:
        """The QR payload the peer scans to verify us (``verify_safety_number``)."""
        return self.core.scannable_safety_number(peer)

    async def verify_safety_number(self, peer: bytes, scanned: bytes) -> bool:
        """Check the peer's scanned QR payload; on a match the contact is verified."""
        return await self._run(lambda c: c.verify_scanned(peer, scanned,
                                                          now_ms=self._now_ms()))

    async def mark_verified(self, peer: bytes, verified: bool = True) -> None:
        """Record that the user compared safety numbers (or withdraw it)."""
        await self._run(lambda c: c.set_verified(peer, verified, now_ms=self._now_ms()))

    async def acknowledge_identity_change(self, peer: bytes) -> None:
        """The user saw ``IdentityChanged(requires_ack=True)``: allow sending again."""
        await self._run(lambda c: c.acknowledge_identity_change(peer, now_ms=self._now_ms()))
        await self._announce_to_waiting()

    async def _announce_to_waiting(self) -> None:
        """Our identity rotations, to contacts skipped when they were announced that we
        may write to now (``ClientCore.announce_identity_to_waiting``). The state change
        that called this has happened: a failure here is logged, and the next login
        announces again (the waiting list stays as it was)."""
        try:
            self._pump.add(await self._run(
                lambda c: c.announce_identity_to_waiting(now_ms=self._now_ms())))
        except Exception:
            _log.exception("could not queue identity announcements; retried at login")

    # --- history ---------------------------------------------------------------------------

    async def conversation(self, peer: bytes) -> Conversation:
        """The direct conversation with *peer* (titled with their profile name)."""
        if self.core.contact(peer) is None:
            raise UnknownContact(peer)
        now = self._now_ms()
        found = await self._run(lambda c: c.store.get_conversation(
            c.conversation_id(peer, now_ms=now)))
        assert found is not None
        return found

    async def history(self, peer: bytes, *, before: PageCursor | None = None,
                      after: PageCursor | None = None, limit: int = 50) -> Page:
        """A page of the conversation with *peer*, oldest first (keyset paging)."""
        cid = (await self.conversation(peer)).id
        now = self._now_ms()
        return await self._run(lambda c: c.store.page(cid, before=before, after=after,
                                                      limit=limit, now_ms=now))

    async def search(self, text: str, *, peer: bytes | None = None,
                     limit: int = 50) -> SearchPage:
        """Full-text search of history: all conversations, or the one with *peer* (a
        contact's account id or a group id), newest first. Every word of *text* must
        appear, the last one possibly as the start of a word from three characters on
        (search as you type); case and diacritics do not matter, punctuation only
        separates words.

        Raises:
            UnknownContact: *peer* is neither a contact nor a group of ours.
        """
        if peer is None:
            cid = None
        elif self.core.contact(peer) is not None:
            cid = (await self.conversation(peer)).id
        else:
            try:
                cid = (await self.group(peer)).conversation_id
            except UnknownGroup:
                raise UnknownContact(peer) from None
        now = self._now_ms()
        return await self._run(lambda c: c.store.search(text, conversation_id=cid,
                                                        limit=limit, now_ms=now))

    async def set_disappearing(self, peer: bytes, timer_ms: int | None) -> None:
        """Set the conversation's disappearing-message timer on both sides (None: keep
        messages): messages stored from now on, sent or received, on this device and
        on the peer's, are deleted *timer_ms* after they reach each device.

        The change is sent to the peer (end to end, through the outbox) in the same
        transaction that sets it here; both sides get ``DisappearingTimerChanged``.

        Raises:
            ValueError: *timer_ms* is not 1 ms .. one year (or None).
            UnknownContact, ContactNotReady: as for sending.
        """
        if timer_ms is not None and not 0 < timer_ms <= L.MAX_DISAPPEARING_TIMER_MS:
            raise ValueError("timer_ms must be 1 ms .. one year, or None to keep messages")
        await self._submit(_sending.SendDisappearingTimer(peer=peer, timer_ms=timer_ms))

    # --- message intents ------------------------------------------------------------------

    async def edit(self, peer: bytes, message_id: bytes, text: str) -> None:
        """Replace the text of one of our messages, for both sides."""
        await self._submit(_sending.SendEdit(peer=peer, target=message_id, text=text))

    async def react(self, peer: bytes, message_id: bytes, emoji: str, *,
                    remove: bool = False) -> None:
        await self._submit(_sending.SendReaction(peer=peer, target=message_id, emoji=emoji,
                                                 remove=remove))

    async def delete_for_everyone(self, peer: bytes, message_id: bytes) -> None:
        """Delete one of our messages on both sides (a tombstone stays)."""
        await self._submit(_sending.SendDelete(peer=peer, target=message_id))

    async def delete_for_me(self, peer: bytes, message_id: bytes) -> None:
        """Remove a message from our history only (nothing is sent)."""
        cid = (await self.conversation(peer)).id
        op = DeleteMessage(conversation_id=cid, target=message_id, by=None,
                           scope=DeleteScope.FOR_ME, at_ms=self._now_ms())
        await self._run(lambda c: c.store.apply(op, now_ms=self._now_ms()))

    async def find_conversation(self, peer: bytes) -> Conversation | None:
        return await self._run(lambda c: c.store.find_conversation(ConversationKind.DIRECT,
                                                                  peer))

    async def outbox_size(self) -> int:
        """Messages stored and not yet accepted by the relay."""
        return await self._run(lambda c: c.store.outbox_size())

    async def send_many(self, peer: bytes, texts: Sequence[str]) -> list[MessageRef]:
        """Send several texts at once (one transaction): for bulk senders and tests."""
        refs = await asyncio.gather(*self._queue_intents(
            [_sending.SendText(peer=peer, text=t) for t in texts]))
        return [r for r in refs if r is not None]

