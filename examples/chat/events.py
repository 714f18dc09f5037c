"""pigeon-chat's live updates: each SDK event becomes one line above the prompt.

Messages of the open conversation are shown as they come and marked read (the sender
then sees "read"); messages of other conversations are shown with the contact's name
and how to open it. Status changes of our messages (sent, delivered, read, failed),
typing notices, invitations, acceptances, profile and identity changes and the
connection's state are shown too. A failure while handling one event is printed and
the next one is handled.
"""

from __future__ import annotations

import contextlib
from typing import TYPE_CHECKING

from client_sdk import (
    ContactAccepted,
    DisappearingTimerChanged,
    Disconnected,
    Event,
    IdentityChanged,
    InvitationReceived,
    MailboxRotated,
    MessageDeleted,
    MessageEdited,
    MessageKind,
    MessageReceived,
    MessagesLost,
    MessageStatus,
    MessageStatusChanged,
    ProfileChanged,
    ReactionChanged,
    Reconnected,
    TransferCompleted,
    TransferFailedEvent,
    TransferStarted,
    TypingChanged,
)
from pigeon_crypto.errors import PigeonError

from .syntax import format_duration
from .view import file_label, plain, short_id, status_word

if TYPE_CHECKING:
    from .app import ChatApp

__all__ = ["EventPrinter"]

QUOTE_CHARS = 24
"""How much of our own message a status line quotes."""


class EventPrinter:
    def __init__(self, app: ChatApp) -> None:
        self.app = app
        self.started: set[bytes] = set()
        """Transfers started while this runs (their outcome is shown by the command)."""

    async def run(self) -> None:
        async for event in self.app.client.events():
            try:
                await self.handle(event)
            except PigeonError as exc:
                self.app.error(str(exc))

    async def handle(self, event: Event) -> None:
        app = self.app
        match event:
            case MessageReceived():
                await self._message(event)
            case MessageStatusChanged(status=MessageStatus.PENDING):
                pass  # shown when the message was typed
            case MessageStatusChanged(peer=peer, message_id=mid, status=status, reason=reason):
                quote = app.sent_texts.get(mid)
                what = f'"{plain(quote, QUOTE_CHARS)}"' if quote is not None else "message"
                where = "" if peer == app.current else f" to {app.name_of(peer)}"
                style = "error" if status is MessageStatus.FAILED else "status"
                app.show(f"  {short_id(mid)} {what}{where}: {status_word(status, reason)}",
                         style)
            case TypingChanged(peer=peer, active=True):
                app.show(f"  {app.name_of(peer)} is typing…", "status")
            case InvitationReceived(peer=peer, profile_name=name):
                who = plain(name, 64) if name else "someone"
                app.show(f"{who} ({peer.hex()}) wants to be your contact: /accept "
                         f"{peer.hex()[:8]}  (or /invites)", "notice")
            case ContactAccepted(peer=peer, by_peer=True):
                app.show(f"{app.name_of(peer)} accepted your invitation: /open "
                         f"{app.name_of(peer)} to chat", "notice")
            case ProfileChanged(peer=peer, display_name=name) if name:
                app.show(f"  {peer.hex()[:8]} is now called {plain(name, 64)}", "status")
            case IdentityChanged(peer=peer, requires_ack=True):
                app.show(f"WARNING: the identity of {app.name_of(peer)} changed without a "
                         "signed rotation. Compare safety numbers (/safety) before "
                         "writing to them again.", "error")
            case IdentityChanged(peer=peer):
                app.show(f"  {app.name_of(peer)} rotated their identity key: the safety "
                         "number changed (/safety)", "notice")
            case MessageEdited(peer=peer, message_id=mid, text=text):
                app.show(f"  {app.name_of(peer)} edited {short_id(mid)}: {plain(text)}",
                         "status")
            case MessageDeleted(peer=peer, message_id=mid):
                app.show(f"  {app.name_of(peer)} deleted {short_id(mid)}", "status")
            case ReactionChanged(peer=peer, message_id=mid, emoji=emoji, removed=removed):
                verb = "withdrew" if removed else "reacted"
                app.show(f"  {app.name_of(peer)} {verb} {plain(emoji, 8)} on {short_id(mid)}",
                         "status")
            case TransferStarted(transfer_id=tid):
                self.started.add(tid)
            case TransferCompleted(transfer_id=tid, path=path) if tid not in self.started:
                app.show(f"  a transfer left unfinished earlier is complete ({path})", "ok")
            case TransferFailedEvent(transfer_id=tid, reason=reason) if tid not in self.started:
                app.error(f"a transfer left unfinished earlier failed: {reason}")
            case DisappearingTimerChanged(peer=peer, timer_ms=timer_ms, by_peer=True):
                setting = ("keeps messages again" if timer_ms is None else
                           f"set new messages to disappear after {format_duration(timer_ms)}")
                app.show(f"  {app.name_of(peer)} {setting} (for both of you)", "notice")
            case MailboxRotated():
                pass
            case MessagesLost(peer=peer, count=count):
                whose = app.name_of(peer) if peer is not None else "invitations"
                app.show(f"WARNING: {count} message(s) ({whose}) expired on the relay "
                         "before this device fetched them", "error")
            case Reconnected():
                if not app.connected:
                    app.connected = True
                    app.show("  connected to the relay", "status")
            case Disconnected(reason=reason):
                if app.connected:
                    app.connected = False
                    app.show(f"  offline ({reason}); reconnecting…", "status")
            case _:
                pass

    async def _message(self, event: MessageReceived) -> None:
        app = self.app
        name = app.name_of(event.peer)
        if event.kind is MessageKind.FILE:
            caption = f" {plain(event.text)}" if event.text else ""
            body = (f"sent a file {file_label(event.file)}{caption}  "
                    f"(/get {short_id(event.message_id)} <dest>)")
        elif event.kind is MessageKind.UNSUPPORTED:
            body = "sent a message this version cannot show"
        else:
            body = plain(event.text or "")
        direct = await app.client.find_conversation(event.peer)
        if direct is None or direct.id != event.conversation_id:
            # A group message (another client added us to a group): shown, never marked
            # read from here; pigeon-chat has no group conversations yet.
            app.show(f"[group] {name}: {body}", "other")
            return
        if event.peer == app.current:
            sep = ":" if event.kind is MessageKind.TEXT else ""
            app.show(f"{name}{sep} {body}", "incoming")
            with contextlib.suppress(PigeonError):
                await app.client.mark_read(event.peer, [event.message_id])
        else:
            app.show(f"[{name}] {body}   (/open {name})", "other")
