"""pigeon-chat's command line syntax: the table of commands (:data:`COMMANDS`, which
``/help`` prints) and :func:`split_command`.

A line is split into the command and its arguments: commands whose argument is free
text (``/name``, ``/search``, ``/verify``, ``/open``, ``/send``) take the rest of the
line as it is; the others split it like a shell (quotes group words). A wrong number
of arguments or an unknown command raises :class:`UsageError`, which the loop prints:
the program goes on.
"""

from __future__ import annotations

import shlex
from dataclasses import dataclass
from typing import Final

__all__ = ["COMMANDS", "HISTORY_DEFAULT", "CommandSpec", "UsageError", "command_spec",
           "format_duration", "parse_duration", "split_command"]

HISTORY_DEFAULT: Final = 20
"""Messages ``/history`` shows without a count."""


class UsageError(Exception):
    """The line is not a valid command (printed; nothing was done)."""


@dataclass(frozen=True, slots=True)
class CommandSpec:
    """One command. ``rest``: its single argument is the rest of the line, as typed."""

    name: str
    args: str
    summary: str
    details: str = ""
    min_args: int = 0
    max_args: int = 0
    rest: bool = False
    takes_contact: bool = False

    @property
    def usage(self) -> str:
        return f"/{self.name}" + (f" {self.args}" if self.args else "")


COMMANDS: Final[tuple[CommandSpec, ...]] = (
    CommandSpec("help", "[command]", "list the commands, or explain one", max_args=1),
    CommandSpec("register", "[invite-code]", "create your account on the relay",
                "Creates the account (your identity key and prekeys go to the relay; the "
                "private keys stay in the profile) and your contact mailbox. An "
                "invite-only relay needs a code (`pigeon-relay admin invite create`). "
                "Registering again is harmless.", max_args=1),
    CommandSpec("me", "", "your account id and contact link (share it to be added)"),
    CommandSpec("name", "<display name>", "set the name your contacts see",
                "Shared end to end with every contact (the relay never sees it).",
                min_args=1, rest=True),
    CommandSpec("username", "<name>", "make your account findable as @name on this relay",
                min_args=1, max_args=1),
    CommandSpec("add", "<account-id|@username|link>", "invite someone to be your contact",
                "A contact link (pigeon://contact/...) also pins their identity key; an "
                "account id is 32 hex digits. They appear as a contact once they accept; "
                "compare safety numbers (/safety) to be sure it is them.",
                min_args=1, max_args=1),
    CommandSpec("invites", "", "invitations waiting for you (and yours, waiting for them)"),
    CommandSpec("accept", "[contact]", "accept an invitation (the only one if not named)",
                max_args=1, takes_contact=True),
    CommandSpec("contacts", "", "list your contacts (with the numbers /open takes)"),
    CommandSpec("open", "<contact>", "switch to the conversation with a contact",
                "A contact is named by its number in /contacts, its display name (or the "
                "start of it), or the start of its account id. Lines that do not start "
                "with / are sent to the open conversation (start a text with // to send "
                "one beginning with /).", min_args=1, rest=True, takes_contact=True),
    CommandSpec("safety", "[contact]", "show the safety number with a contact",
                "Both sides see the same 60 digits when no one sits in the middle. "
                "Compare them in person or on a call, then /verify.",
                max_args=1, takes_contact=True),
    CommandSpec("verify", "<safety number>", "mark the open contact verified if it matches",
                "Type the 60 digits the other side reads to you (spaces are ignored).",
                min_args=1, rest=True),
    CommandSpec("send", "<path>", "send a file to the open conversation (progress bar)",
                min_args=1, rest=True),
    CommandSpec("get", "<message> <dest>", "download a received file (#id from the chat)",
                "<message> is the #id shown with the file; <dest> a file or folder (a new "
                "folder if it ends with /).",
                min_args=2, max_args=2),
    CommandSpec("search", "<text>", "search all your conversations", min_args=1, rest=True),
    CommandSpec("history", "[count]", f"the last messages here (default {HISTORY_DEFAULT})",
                max_args=1),
    CommandSpec("disappear", "<duration|off>",
                "make new messages here disappear (both sides), e.g. 1h, 7d, off",
                "Sets the open conversation's timer for you and your contact: every "
                "message sent or received from now on is deleted that long after it "
                "reached each device. Units: s, m, h, d, w (e.g. 30s, 1h, 7d); off keeps "
                "messages again.", min_args=1, max_args=1),
    CommandSpec("block", "[contact]", "block a contact (the open one if not named)",
                "Nothing they send is shown and nothing is sent to them; /unblock undoes it.",
                max_args=1, takes_contact=True),
    CommandSpec("unblock", "<contact>", "unblock a contact", min_args=1, max_args=1,
                takes_contact=True),
    CommandSpec("quit", "", "leave pigeon-chat (Ctrl-D too)"),
)
_BY_NAME: Final = {spec.name: spec for spec in COMMANDS}


_UNITS_MS: Final = {"s": 1_000, "m": 60_000, "h": 3_600_000, "d": 86_400_000,
                    "w": 604_800_000}
_MAX_DURATION_MS: Final = 365 * 86_400_000


def parse_duration(text: str) -> int | None:
    """``30s``, ``5m``, ``1h``, ``7d``, ``2w`` to milliseconds; ``off`` to None.

    Raises:
        UsageError: anything else, or more than a year.
    """
    word = text.strip().lower()
    if word == "off":
        return None
    number, unit = word[:-1], word[-1:]
    if unit not in _UNITS_MS or not number.isdigit() or int(number) == 0:
        raise UsageError(f"{text!r} is not a duration: use e.g. 30s, 5m, 1h, 7d, 2w or off")
    ms = int(number) * _UNITS_MS[unit]
    if ms > _MAX_DURATION_MS:
        raise UsageError("a disappearing timer is at most a year (365d)")
    return ms


def format_duration(ms: int | None) -> str:
    """The largest whole unit: 3,600,000 -> ``1h``; None -> ``off``."""
    if ms is None:
        return "off"
    for unit in "wdhms":
        if ms % _UNITS_MS[unit] == 0:
            return f"{ms // _UNITS_MS[unit]}{unit}"
    return f"{ms}ms"


def split_command(line: str) -> tuple[CommandSpec, list[str]]:
    """Parse ``/name args...`` into the command and its arguments.

    Raises:
        UsageError: unknown command, unbalanced quotes, wrong number of arguments.
    """
    head, _, tail = line.strip().partition(" ")
    spec = _BY_NAME.get(head[1:].lower())
    if spec is None:
        raise UsageError(f"unknown command {head}: /help lists the commands")
    tail = tail.strip()
    if spec.rest:
        args = [tail] if tail else []
    else:
        try:
            args = shlex.split(tail)
        except ValueError as exc:
            raise UsageError(f"{exc}: usage {spec.usage}") from None
    if not spec.min_args <= len(args) <= max(spec.max_args, spec.min_args, spec.rest):
        raise UsageError(f"usage: {spec.usage}  ({spec.summary})")
    return spec, args


def command_spec(name: str) -> CommandSpec | None:
    """The command called *name* (without the slash, any case), if there is one."""
    return _BY_NAME.get(name.lower())
