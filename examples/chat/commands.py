"""What pigeon-chat's slash commands do (:class:`Commands`); their syntax is in
:mod:`.syntax`. A command that cannot run (wrong arguments, a contact that matches
nothing, no open conversation) raises :class:`~.syntax.UsageError`, which the loop
prints: the program goes on.
"""

from __future__ import annotations

import asyncio
import hmac
import re
from collections.abc import Awaitable, Callable
from pathlib import Path
from typing import TYPE_CHECKING, Final

from client_sdk import (
    Contact,
    ContactLink,
    ContactState,
    MessageKind,
    MessageStatus,
    RelayError,
)
from client_sdk.files import file_info
from client_sdk.history import StoredMessage
from protocol.errors import ErrorCode

from .syntax import (
    COMMANDS,
    HISTORY_DEFAULT,
    CommandSpec,
    UsageError,
    command_spec,
    format_duration,
    parse_duration,
    split_command,
)
from .view import contact_line, human_size, message_line, plain, safe_file_name, short_id

if TYPE_CHECKING:
    from .app import ChatApp

__all__ = ["Commands"]

HISTORY_MAX: Final = 500
SHOWN_ON_OPEN: Final = 10
"""Messages shown when a conversation is opened."""
SEARCH_LIMIT: Final = 20
FIND_MESSAGE_LIMIT: Final = 5000
"""How far back ``/get`` looks for a short id (pages of the open conversation)."""
MAX_DISPLAY_NAME: Final = 128
"""The contact request's limit for a display name (docs/sdk.md §15.4)."""
REQUEST_TIMEOUT_S: Final = 45.0
"""Commands that talk to the relay give up after this (the SDK's own request timeout
is 30 s; registering may reconnect first)."""


def _local_file(text: str) -> tuple[Path, int]:
    path = _expand(text.strip("'\""))
    if not path.is_file():
        raise UsageError(f"no file at {path}")
    return path, path.stat().st_size


def _expand(text: str) -> Path:
    return Path(text).expanduser()


def _destination(text: str, name: str) -> Path:
    """Where ``/get`` writes: *text* itself, or *name* inside it if it is a folder (one
    ending in ``/`` is created). An existing file is never overwritten."""
    raw = text.strip("'\"")
    dest = _expand(raw)
    if raw.endswith("/") and not dest.exists():
        try:
            dest.mkdir(parents=True)
        except OSError as exc:
            raise UsageError(f"cannot create the folder {dest}: {exc.strerror}") from None
    if dest.is_dir():
        dest = dest / name
    if dest.exists():
        raise UsageError(f"{dest} exists already: choose another name")
    if not dest.parent.is_dir():
        raise UsageError(f"no folder {dest.parent}")
    return dest


class Commands:
    """The commands of one :class:`~examples.chat.app.ChatApp`."""

    def __init__(self, app: ChatApp) -> None:
        self.app = app
        self.client = app.client
        self._handlers: dict[str, Callable[[list[str]], Awaitable[bool | None]]] = {
            spec.name: getattr(self, f"cmd_{spec.name}") for spec in COMMANDS}
        self._transfers: set[asyncio.Task[None]] = set()

    # --- dispatch ---------------------------------------------------------------------------

    async def run_line(self, line: str) -> bool:
        """Run one line; False when it is /quit."""
        text = line.strip()
        if not text:
            return True
        if text.startswith("/") and not text.startswith("//"):
            spec, args = split_command(text)
            if spec.name != "help" and spec.name != "quit" and not self._registered(spec):
                return True
            async with asyncio.timeout(REQUEST_TIMEOUT_S):
                return await self._handlers[spec.name](args) is not False
        await self._send_text(line[1:] if text.startswith("//") else line)
        return True

    def _registered(self, spec: CommandSpec) -> bool:
        if spec.name == "register" or self.client.registered:
            return True
        self.app.error("this profile has no account yet: /register first")
        return False

    # --- account ----------------------------------------------------------------------------

    def greet(self) -> None:
        app = self.app
        app.show(f"pigeon-chat · profile {self.client.path}")
        if not self.client.registered:
            where = f"on the relay ({app.relay_url})" if app.relay_url else \
                "(start pigeon-chat with --relay URL first)"
            app.show(f"This profile has no account yet: /register creates one {where}. "
                     "/help lists the commands.", "notice")
            return
        name = self.app.my_name or "no display name yet (/name)"
        contacts = self.client.contacts(ContactState.ACCEPTED)
        app.show(f"You are {plain(name, 64)}, account {self.client.account_id.hex()}; "
                 f"{len(contacts)} contact(s). /help lists the commands.")
        waiting = self.client.invitations()
        if waiting:
            app.show(f"{len(waiting)} invitation(s) waiting: /invites", "notice")

    async def cmd_help(self, args: list[str]) -> None:
        if args:
            spec = command_spec(args[0].lstrip("/"))
            if spec is None:
                raise UsageError(f"no command /{args[0].lstrip('/')}: /help lists them")
            self.app.show(f"{spec.usage}\n    {spec.summary}.")
            if spec.details:
                self.app.show(f"    {spec.details}")
            return
        width = max(len(spec.usage) for spec in COMMANDS)
        lines = [f"  {spec.usage:<{width}}  {spec.summary}" for spec in COMMANDS]
        self.app.show("Commands (/help <command> for more):\n" + "\n".join(lines)
                      + "\nOther lines are messages to the open conversation.")

    async def cmd_register(self, args: list[str]) -> None:
        was = self.client.registered and self.app.connected
        if not self.client.registered and self.app.relay_url is None:
            raise UsageError("no relay known for this profile: start pigeon-chat with "
                             "--relay URL")
        try:
            account = await self.client.register(
                invite_code=args[0] if args else None,
                relay_url=None if self.client.registered else self.app.relay_url,
                timeout_s=REQUEST_TIMEOUT_S - 5)
        except RelayError as exc:
            if exc.code == ErrorCode.INVITE_REQUIRED:
                raise UsageError("this relay is invite-only: /register <invite-code> (its "
                                 "operator creates codes with `pigeon-relay admin invite "
                                 "create`)") from None
            if exc.code == ErrorCode.INVITE_INVALID:
                raise UsageError("the relay refused that invite code (unknown, used or "
                                 "expired)") from None
            raise
        self.app.connected = True
        if was:
            self.app.show(f"already registered: account {account.hex()}")
            return
        self.app.show(f"registered: account {account.hex()}", "ok")
        self.app.show(f"others add you with: /add {self.client.contact_link()}")
        if not self.app.my_name:
            self.app.show("set the name your contacts see with /name <display name>", "notice")

    async def cmd_me(self, args: list[str]) -> None:
        link = self.client.contact_link()
        relay = ContactLink.parse(link).relay_url or "?"
        name = self.app.my_name
        self.app.show(
            f"account  {self.client.account_id.hex()}\n"
            f"name     {plain(name, 64) if name else '(none yet: /name <display name>)'}\n"
            f"relay    {relay} ({'online' if self.app.connected else 'offline'})\n"
            f"link     {link}")

    async def cmd_name(self, args: list[str]) -> None:
        name = args[0]
        if len(name) > MAX_DISPLAY_NAME:
            raise UsageError(f"a display name has at most {MAX_DISPLAY_NAME} characters")
        await self.client.set_profile(name)
        self.app.my_name = name
        self.app.show(f"your display name is now {plain(name, 64)} (sent to your contacts, "
                      "end to end)", "ok")

    async def cmd_username(self, args: list[str]) -> None:
        name = await self.client.claim_username(args[0].lstrip("@"))
        self.app.show(f"others can now add you with: /add @{name}", "ok")

    # --- contacts ---------------------------------------------------------------------------

    def resolve(self, text: str, states: tuple[ContactState, ...] = ()) -> Contact:
        """The contact *text* names: its number in /contacts, display name (exact, then
        unique prefix, ignoring case), or account id prefix (4+ hex digits)."""
        contacts = [c for c in self.client.contacts() if not states or c.state in states]
        everyone = self.client.contacts()
        key = text.strip().lower()
        if key.isdigit() and 1 <= int(key) <= len(everyone):
            found = everyone[int(key) - 1]
            if not states or found.state in states:
                return found
        for match in (
            lambda c: self.app.name_of(c.account_id).lower() == key,
            lambda c: len(key) >= 4 and c.account_id.hex().startswith(key),
            lambda c: self.app.name_of(c.account_id).lower().startswith(key),
        ):
            hits = [c for c in contacts if match(c)]
            if len(hits) == 1:
                return hits[0]
            if len(hits) > 1:
                names = ", ".join(self.app.name_of(c.account_id) for c in hits)
                raise UsageError(f"{text!r} matches several contacts ({names}): say which")
        raise UsageError(f"no contact matches {text!r}: /contacts lists them")

    def _contact_or_current(self, args: list[str]) -> Contact:
        if args:
            return self.resolve(args[0])
        if self.app.current is None:
            raise UsageError("no conversation open: name a contact or /open one")
        contact = self.client.contact(self.app.current)
        assert contact is not None
        return contact

    async def cmd_add(self, args: list[str]) -> None:
        target = args[0]
        if target.startswith("pigeon://"):
            peer: bytes | None = ContactLink.parse(target).account_id
        elif target.startswith("@"):
            peer = None
        elif re.fullmatch(r"[0-9a-fA-F]{32}", target):
            peer = bytes.fromhex(target)
        else:
            raise UsageError("expected an account id (32 hex digits), @username or a "
                             "pigeon://contact/ link")
        if peer == self.client.account_id:
            raise UsageError("that is your own account")
        inviters = {c.account_id for c in self.client.contacts(ContactState.PENDING)}
        if target.startswith("pigeon://"):
            await self.client.add_contact_by_link(target)
        elif peer is None:
            peer = await self.client.add_contact_by_username(target[1:])
        else:
            await self.client.add_contact(peer)
        assert peer is not None
        name = self.app.name_of(peer)
        after = self.client.contact(peer)
        if peer in inviters:
            self.app.show(f"{name} had invited you: you are now contacts (/open {name})", "ok")
        elif after is not None and after.state is ContactState.ACCEPTED:
            self.app.show(f"{name} is already a contact: /open {name}")
        else:
            self.app.show(f"invitation sent to {peer.hex()}: they become a contact once "
                          "they accept", "ok")

    async def cmd_invites(self, args: list[str]) -> None:
        pending = self.client.contacts(ContactState.PENDING)
        invited = self.client.contacts(ContactState.INVITED)
        if not pending and not invited:
            self.app.show("no invitations")
        for contact in pending:
            self.app.show(f"  {self.app.name_of(contact.account_id)} "
                          f"({contact.account_id.hex()}) invited you: /accept "
                          f"{contact.account_id.hex()[:8]}")
        for contact in invited:
            self.app.show(f"  you invited {contact.account_id.hex()}: waiting for them")

    async def cmd_accept(self, args: list[str]) -> None:
        if args:
            contact = self.resolve(args[0], (ContactState.PENDING,))
        else:
            pending = self.client.invitations()
            if not pending:
                raise UsageError("no invitation is waiting (/invites)")
            if len(pending) > 1:
                raise UsageError(f"{len(pending)} invitations are waiting: /accept "
                                 "<contact> (see /invites)")
            contact = pending[0]
        await self.client.accept(contact.account_id)
        name = self.app.name_of(contact.account_id)
        self.app.show(f"you and {name} are now contacts", "ok")
        accepted = self.client.contact(contact.account_id)
        if self.app.current is None and accepted is not None:
            await self._open(accepted)

    async def cmd_contacts(self, args: list[str]) -> None:
        contacts = self.client.contacts()
        if not contacts:
            self.app.show("no contacts yet: /add <link>, or share your link (/me)")
        for index, contact in enumerate(contacts, 1):
            self.app.show(contact_line(index, contact))

    async def cmd_open(self, args: list[str]) -> None:
        await self._open(self.resolve(args[0]))

    async def _open(self, contact: Contact) -> None:
        peer = contact.account_id
        name = self.app.name_of(peer)
        if contact.state is ContactState.BLOCKED:
            raise UsageError(f"{name} is blocked: /unblock {name} first")
        if contact.state is ContactState.PENDING:
            raise UsageError(f"{name} invited you: /accept {name} first")
        self.app.current = peer
        self.app.show(f"── conversation with {name} ──", "notice")
        if contact.state is ContactState.INVITED:
            self.app.show("  they have not accepted your invitation yet", "status")
            return
        page = await self.client.history(peer, limit=SHOWN_ON_OPEN)
        for message in page.messages:
            self.app.show(message_line(message, name))
        unread = [m.message_id for m in page.messages
                  if not m.outgoing and m.status is MessageStatus.RECEIVED]
        if unread:
            await self.client.mark_read(peer, unread)

    async def cmd_safety(self, args: list[str]) -> None:
        contact = self._contact_or_current(args)
        name = self.app.name_of(contact.account_id)
        if contact.identity is None:
            raise UsageError(f"no identity key of {name} yet (they have not answered)")
        number = self.client.safety_number(contact.account_id)
        state = "verified" if contact.verified else "not verified"
        self.app.show(f"safety number with {name} ({state}):\n  {number}\n"
                      f"Compare it with the one {name} sees, in person or on a call; if it "
                      "matches: /verify <the number>")

    async def cmd_verify(self, args: list[str]) -> None:
        if self.app.current is None:
            raise UsageError("open the conversation first (/open <contact>)")
        digits = re.sub(r"[\s-]", "", args[0])
        if not re.fullmatch(r"\d{60}", digits):
            raise UsageError("a safety number is 60 digits (spaces allowed)")
        peer = self.app.current
        name = self.app.name_of(peer)
        ours = self.client.safety_number(peer).replace(" ", "")
        if not hmac.compare_digest(ours.encode(), digits.encode()):
            self.app.show(f"that is NOT your safety number with {name}: not verified. If "
                          "you compared the right conversation, someone may be in the "
                          "middle.", "error")
            return
        await self.client.mark_verified(peer)
        self.app.show(f"{name} is verified: the safety numbers match", "ok")

    async def cmd_block(self, args: list[str]) -> None:
        contact = self._contact_or_current(args)
        name = self.app.name_of(contact.account_id)
        await self.client.block(contact.account_id)
        if self.app.current == contact.account_id:
            self.app.current = None
        self.app.show(f"blocked {name}: nothing from them is shown, nothing goes to them "
                      f"(/unblock {name} to undo)", "ok")

    async def cmd_unblock(self, args: list[str]) -> None:
        contact = self.resolve(args[0], (ContactState.BLOCKED,))
        await self.client.unblock(contact.account_id)
        self.app.show(f"unblocked {self.app.name_of(contact.account_id)}", "ok")

    # --- messages ---------------------------------------------------------------------------

    def _current_peer(self) -> bytes:
        if self.app.current is None:
            raise UsageError("no conversation open: /open <contact> first (/contacts lists "
                             "them)")
        return self.app.current

    async def _send_text(self, text: str) -> None:
        peer = self._current_peer()
        ref = await self.client.send_text(peer, text)
        self.app.sent_texts[ref.message_id] = text
        if not self.app.connected:
            self.app.show(f"  {short_id(ref.message_id)} stored: it goes out when the relay "
                          "is reachable again", "status")

    async def cmd_disappear(self, args: list[str]) -> None:
        peer = self._current_peer()
        timer_ms = parse_duration(args[0])
        await self.client.set_disappearing(peer, timer_ms)
        name = self.app.name_of(peer)
        if timer_ms is None:
            self.app.show(f"messages with {name} are kept again (for both of you)", "ok")
        else:
            self.app.show(f"new messages with {name} disappear {format_duration(timer_ms)} "
                          "after they arrive (for both of you)", "ok")

    async def cmd_history(self, args: list[str]) -> None:
        peer = self._current_peer()
        try:
            count = int(args[0]) if args else HISTORY_DEFAULT
        except ValueError:
            raise UsageError("usage: /history [count]") from None
        if not 1 <= count <= HISTORY_MAX:
            raise UsageError(f"count must be 1 to {HISTORY_MAX}")
        page = await self.client.history(peer, limit=count)
        if not page.messages:
            self.app.show("no messages yet")
        name = self.app.name_of(peer)
        for message in page.messages:
            self.app.show(message_line(message, name))

    async def cmd_search(self, args: list[str]) -> None:
        found = await self.client.search(args[0], limit=SEARCH_LIMIT)
        if not found.hits:
            self.app.show(f"nothing found for {args[0]!r}")
            return
        where: dict[int, bytes] = {}
        for contact in self.client.contacts():
            conversation = await self.client.find_conversation(contact.account_id)
            if conversation is not None:
                where[conversation.id] = contact.account_id
        self.app.show(f"{len(found.hits)} message(s) with {args[0]!r}, newest first:")
        for hit in found.hits:
            peer = where.get(hit.message.conversation_id)
            name = self.app.name_of(peer) if peer is not None else "?"
            self.app.show(f"  [{name}] {message_line(hit.message, name)}")

    async def cmd_send(self, args: list[str]) -> None:
        peer = self._current_peer()
        self.client.check_sendable(peer)
        path, size = _local_file(args[0])
        name = self.app.name_of(peer)
        transfer = self.app.transfers.start(f"→ {name} {plain(path.name, 32)}", size)

        async def run() -> None:
            try:
                ref = await self.client.send_file(
                    peer, path, progress=self.app.transfers.callback(transfer))
                self.app.sent_texts[ref.message_id] = f"[file] {path.name}"
                self.app.show(f"  {short_id(ref.message_id)} sent {plain(path.name)} "
                              f"({human_size(size)}) to {name}", "status")
            finally:
                self.app.transfers.finish(transfer)

        self._background(run(), f"sending {path.name}")

    async def cmd_get(self, args: list[str]) -> None:
        peer = self._current_peer()
        message = await self._find_message(peer, args[0])
        info = None if message.attachment is None else file_info(message.attachment)
        if message.kind is not MessageKind.FILE or info is None:
            raise UsageError(f"{short_id(message.message_id)} is not a file")
        dest = _destination(args[1], safe_file_name(info.name))
        label = f"← {plain(dest.name, 32)}"
        transfer = self.app.transfers.start(label, info.size)

        async def run() -> None:
            try:
                saved = await self.client.download_file(
                    peer, message.message_id, dest,
                    progress=self.app.transfers.callback(transfer))
                self.app.show(f"  saved {short_id(message.message_id)} to {saved} "
                              f"({human_size(info.size)})", "ok")
            finally:
                self.app.transfers.finish(transfer)

        self._background(run(), f"downloading {short_id(message.message_id)}")

    async def _find_message(self, peer: bytes, text: str) -> StoredMessage:
        prefix = text.lstrip("#").lower()
        if not re.fullmatch(r"[0-9a-f]{4,32}", prefix):
            raise UsageError("name the message by the #id shown with it, e.g. #3fa2c1")
        before = None
        seen = 0
        while seen < FIND_MESSAGE_LIMIT:
            page = await self.client.history(peer, before=before, limit=HISTORY_MAX)
            hits = [m for m in page.messages if m.message_id.hex().startswith(prefix)]
            if len(hits) > 1:
                raise UsageError(f"#{prefix} names several messages: give more digits")
            if hits:
                return hits[0]
            seen += len(page.messages)
            if page.older is None:
                break
            before = page.older
        raise UsageError(f"no message #{prefix} in this conversation")

    def _background(self, work: Awaitable[None], what: str) -> None:
        async def guarded() -> None:
            try:
                await work
            except asyncio.CancelledError:
                raise
            except Exception as exc:  # reported, the chat goes on
                self.app.error(f"{what} failed: {exc}")

        task = asyncio.ensure_future(guarded())
        self._transfers.add(task)
        task.add_done_callback(self._transfers.discard)

    async def cancel_transfers(self) -> None:
        for task in list(self._transfers):
            task.cancel()
        await asyncio.gather(*self._transfers, return_exceptions=True)

    async def cmd_quit(self, args: list[str]) -> bool:
        return False
