"""``pigeon-chat``: the terminal chat's process: options, passphrase, the prompt loop and
live updates.

Theory of operation
    One asyncio loop runs three things: the prompt (prompt_toolkit, reading one line at
    a time), the SDK's :class:`~client_sdk.AsyncClient` (connection, retries, store),
    and a task that turns the client's events into lines printed *above* the prompt
    (prompt_toolkit prints there while a prompt is shown: the line being typed is
    kept). A line starting with ``/`` is a command (:mod:`.commands`); anything else is
    a message to the open conversation. A failing command prints one line and the
    loop goes on; only ``/quit`` (or Ctrl-D) ends it, with status 0.

    Secrets: the passphrase comes from ``$PIGEON_PASSPHRASE`` or a hidden prompt, goes
    to the SDK and is dropped; nothing here prints or logs it.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import logging
import os
import sys
import time
from collections.abc import Iterable, Sequence
from pathlib import Path
from typing import Final

from prompt_toolkit import PromptSession, print_formatted_text
from prompt_toolkit.application import get_app_or_none
from prompt_toolkit.completion import CompleteEvent, Completer, Completion, WordCompleter
from prompt_toolkit.document import Document
from prompt_toolkit.formatted_text import ANSI, FormattedText
from prompt_toolkit.patch_stdout import patch_stdout
from prompt_toolkit.styles import Style

from client_sdk import AsyncClient, ContactState, WrongPassphrase
from client_sdk.errors import ProfileError
from pigeon_crypto.errors import PigeonError

from .commands import Commands
from .events import EventPrinter
from .syntax import COMMANDS, UsageError
from .transfers import Transfers
from .view import contact_name

__all__ = ["PASSPHRASE_ENV", "ChatApp", "main"]

PASSPHRASE_ENV: Final = "PIGEON_PASSPHRASE"  # noqa: S105 - a variable name
DEFAULT_RELAY: Final = "http://127.0.0.1:8765"
"""Where ``pigeon-relay`` listens when started without options."""
TYPING_EVERY_S: Final = 4.0
"""Typing notices while the user types: one per this many seconds at most."""

STYLE: Final = Style.from_dict({
    "incoming": "bold",
    "other": "ansicyan",
    "notice": "ansiyellow",
    "status": "ansibrightblack",
    "error": "ansired",
    "ok": "ansigreen",
    "bottom-toolbar": "noreverse bg:ansiblack ansiwhite",
})


def default_profile() -> Path:
    base = os.environ.get("XDG_DATA_HOME") or str(Path.home() / ".local" / "share")
    return Path(base) / "pigeon" / "default.pigeon"


class ChatApp:
    """The chat of one profile: the client, the open conversation, the terminal."""

    def __init__(self, client: AsyncClient, *, relay_url: str | None) -> None:
        self.client = client
        self.relay_url = relay_url
        self.current: bytes | None = None
        self.connected = False
        self.session: PromptSession[str] = PromptSession(
            completer=_ChatCompleter(self), complete_while_typing=False,
            bottom_toolbar=self._toolbar, refresh_interval=1.0, style=STYLE)
        self.transfers = Transfers(self._invalidate)
        self.commands = Commands(self)
        self.events = EventPrinter(self)
        self.my_name: str | None = client.display_name
        """Our display name (kept here: the prompt is drawn often, the store is not
        read for it)."""
        self.sent_texts: dict[bytes, str] = {}
        """Texts we sent during this run, by message id (status lines quote them)."""
        self._last_typing = 0.0
        self.session.default_buffer.on_text_changed += self._typed

    # --- output ---------------------------------------------------------------------------

    def show(self, text: str, style: str = "") -> None:
        """Print one line above the prompt (or plainly when no prompt is shown)."""
        print_formatted_text(FormattedText([(f"class:{style}" if style else "", text)]),
                             style=STYLE)

    def error(self, text: str) -> None:
        self.show(f"error: {text}", "error")

    def name_of(self, peer: bytes) -> str:
        return contact_name(self.client.contact(peer), peer)

    def _invalidate(self) -> None:
        app = get_app_or_none()
        if app is not None:
            app.invalidate()

    def _prompt(self) -> str:
        me = "pigeon"
        if self.client.registered:
            me = self.my_name or self.client.account_id.hex()[:8]
        if self.current is not None:
            return f"{me} → {self.name_of(self.current)}> "
        return f"{me}> "

    def _toolbar(self) -> ANSI:
        parts = [" online" if self.connected else " offline"]
        if not self.client.registered:
            parts = [" not registered: /register"]
        if self.current is not None:
            contact = self.client.contact(self.current)
            verified = contact is not None and contact.verified
            parts.append(f"{self.name_of(self.current)}"
                         f"{' (verified)' if verified else ' (not verified: /safety)'}")
        waiting = len(self.client.invitations()) if self.client.registered else 0
        if waiting:
            parts.append(f"{waiting} invitation{'s' if waiting > 1 else ''}: /invites")
        parts.append("/help")
        line = " · ".join(parts)
        if self.transfers:
            width = self.session.app.output.get_size().columns
            line = self.transfers.render(width) + "\n" + line
        return ANSI(line)

    # --- typing notices -------------------------------------------------------------------

    def _typed(self, buffer: object) -> None:
        text = self.session.default_buffer.text
        peer = self.current
        if peer is None or not text or text.startswith("/"):
            return
        now = time.monotonic()
        if now - self._last_typing < TYPING_EVERY_S:
            return
        self._last_typing = now
        contact = self.client.contact(peer)
        if contact is not None and contact.state is ContactState.ACCEPTED:
            task = asyncio.ensure_future(self.client.send_typing(peer, True))
            task.add_done_callback(_ignore_result)

    # --- the loop ---------------------------------------------------------------------------

    async def run(self) -> None:
        """Read lines until /quit or Ctrl-D."""
        events = asyncio.ensure_future(self.events.run())
        try:
            self.commands.greet()
            while True:
                try:
                    line = await self.session.prompt_async(self._prompt)
                except KeyboardInterrupt:
                    continue  # Ctrl-C clears the line, as in a shell
                except EOFError:
                    break
                self._last_typing = 0.0
                if not await self.handle(line):
                    break
        finally:
            events.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await events
            await self.commands.cancel_transfers()

    async def handle(self, line: str) -> bool:
        """Run one input line; False when it asks to quit. Errors are printed."""
        try:
            return await self.commands.run_line(line)
        except UsageError as exc:
            self.error(str(exc))
        except PigeonError as exc:
            self.error(str(exc))
        except TimeoutError:
            self.error("the relay did not answer in time; try again")
        except Exception as exc:  # keep the chat alive; say what happened
            logging.getLogger("pigeon.chat").debug("command failed", exc_info=True)
            self.error(f"{type(exc).__name__}: {exc}")
        return True


class _ChatCompleter(Completer):
    """Tab completes command names, then contact names for the commands taking one."""

    def __init__(self, app: ChatApp) -> None:
        self.app = app
        self.names = WordCompleter([f"/{c.name}" for c in COMMANDS], sentence=True)

    def get_completions(self, document: Document, complete_event: CompleteEvent,
                        ) -> Iterable[Completion]:
        text = document.text_before_cursor
        if " " not in text:
            return list(self.names.get_completions(document, complete_event))
        command, _, arg = text.partition(" ")
        spec = next((c for c in COMMANDS if f"/{c.name}" == command), None)
        if spec is None or not spec.takes_contact or not self.app.client.registered:
            return []
        names = [self.app.name_of(c.account_id) for c in self.app.client.contacts()]
        return [Completion(n, start_position=-len(arg)) for n in names
                if n.lower().startswith(arg.lower())]


def _ignore_result(task: asyncio.Task[bool]) -> None:
    if not task.cancelled():
        task.exception()  # typing notices are best effort


# --- process ---------------------------------------------------------------------------


def _parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="pigeon-chat",
        description="An end-to-end encrypted terminal chat over a Pigeon relay. "
                    "Type /help inside for the commands.",
        epilog=f"The passphrase is read from ${PASSPHRASE_ENV} if set, else asked for "
               "(twice for a new profile).")
    parser.add_argument("-p", "--profile", type=Path, default=None, metavar="PATH",
                        help="profile file (created if missing; default "
                             f"{default_profile()})")
    parser.add_argument("-r", "--relay", metavar="URL", default=None,
                        help="relay base URL, as pigeon-relay prints it (remembered in "
                             f"the profile at registration; default for a new profile "
                             f"{DEFAULT_RELAY})")
    parser.add_argument("--tls-pin", metavar="SHA256", default=None,
                        help="pin the relay's TLS certificate (SHA-256 of its DER bytes, "
                             "as `pigeon-relay fingerprint --tls-cert FILE` prints it)")
    return parser


async def _passphrase(profile: Path, exists: bool, attempt: int) -> str:
    from_env = os.environ.get(PASSPHRASE_ENV)
    if from_env is not None:
        return from_env
    ask: PromptSession[str] = PromptSession()
    if exists:
        label = "passphrase: " if attempt == 0 else "wrong passphrase, try again: "
        return await ask.prompt_async(label, is_password=True)
    print(f"new profile {profile}")
    while True:
        first = await ask.prompt_async("choose a passphrase: ", is_password=True)
        if not first:
            print("the passphrase must not be empty")
            continue
        if await ask.prompt_async("repeat it: ", is_password=True) == first:
            return first
        print("the two passphrases differ")


async def _open(profile: Path, exists: bool, relay: str | None, pin: str | None,
                ) -> AsyncClient:
    attempts = 1 if PASSPHRASE_ENV in os.environ else 3
    for attempt in range(attempts):
        passphrase = await _passphrase(profile, exists, attempt)
        client = AsyncClient.open(profile, passphrase, relay_url=relay, tls_fingerprint=pin,
                                  tune_interpreter=True)
        del passphrase
        try:
            await client.start()
        except WrongPassphrase:
            await client.close()
            if attempt == attempts - 1:
                raise
            continue
        return client
    raise AssertionError("unreachable")


async def _main(profile: Path, exists: bool, relay: str | None, pin: str | None) -> int:
    try:
        client = await _open(profile, exists, relay, pin)
    except WrongPassphrase:
        print(f"pigeon-chat: wrong passphrase for {profile}", file=sys.stderr)
        return 1
    except (ProfileError, PigeonError, ValueError) as exc:
        print(f"pigeon-chat: {exc}", file=sys.stderr)
        return 1
    if relay is None and not client.registered:  # a profile opened before, never registered
        relay = DEFAULT_RELAY
    try:
        with patch_stdout(raw=True):
            _log_above_prompt()
            app = ChatApp(client, relay_url=relay)
            await app.run()
    finally:
        await client.close()
    return 0


def _log_above_prompt() -> None:
    """SDK warnings (reconnects are reported as events; these are the rest) go above the
    prompt, on the patched stderr."""
    handler = logging.StreamHandler(sys.stderr)
    handler.setFormatter(logging.Formatter("[%(name)s] %(levelname)s %(message)s"))
    root = logging.getLogger()
    root.handlers[:] = [handler]
    root.setLevel(logging.WARNING)


def main(argv: Sequence[str] | None = None) -> None:
    args = _parser().parse_args(argv)
    profile: Path = (args.profile or default_profile()).expanduser()
    exists = profile.exists()
    relay: str | None = args.relay
    if not exists:
        relay = relay or DEFAULT_RELAY
        profile.parent.mkdir(parents=True, exist_ok=True)
    try:
        code = asyncio.run(_main(profile, exists, relay, args.tls_pin))
    except (KeyboardInterrupt, EOFError):
        code = 130
    sys.exit(code)
