"""How pigeon-chat shows things: pure formatting, no I/O (tested without a terminal).

Messages are named by a short id, ``#`` and the first 6 hex digits of their 16-byte
message id (:func:`short_id`), which ``/get`` accepts back; contacts by their display
name when they shared one, else by the start of their account id.
"""

from __future__ import annotations

import datetime as _dt
import unicodedata
from typing import Final

from client_sdk import Contact, ContactState, FileInfo, MessageKind, MessageStatus
from client_sdk.files import file_info
from client_sdk.history import StoredMessage

__all__ = [
    "SHORT_ID_HEX",
    "contact_line",
    "contact_name",
    "file_label",
    "human_size",
    "message_line",
    "plain",
    "safe_file_name",
    "short_id",
    "status_word",
]

SHORT_ID_HEX: Final = 6
"""Hex digits of a message id shown: unique enough within one conversation's view."""
MAX_SHOWN_TEXT: Final = 4000
"""Longest text shown for one message (the rest is cut with an ellipsis)."""

_STATUS_WORDS: Final = {
    MessageStatus.PENDING: "pending",
    MessageStatus.SENT: "sent",
    MessageStatus.DELIVERED: "delivered",
    MessageStatus.READ: "read",
    MessageStatus.FAILED: "failed",
    MessageStatus.RECEIVED: "received",
}
_STATE_WORDS: Final = {
    ContactState.INVITED: "invited, waiting for them to accept",
    ContactState.PENDING: "invited you: /accept",
    ContactState.ACCEPTED: "contact",
    ContactState.BLOCKED: "blocked",
}


def plain(text: str, limit: int = MAX_SHOWN_TEXT) -> str:
    """*text* made safe to print: control and format characters (terminal escapes,
    bidirectional overrides) become visible escapes; cut at *limit* characters."""
    out = []
    for ch in text[:limit]:
        category = unicodedata.category(ch)
        if ch == "\n":
            out.append("\n    ")
        elif category in ("Cc", "Cf", "Cs", "Co") and ch != "\u200d":
            out.append(f"\\u{ord(ch):04x}")
        else:
            out.append(ch)
    return "".join(out) + ("…" if len(text) > limit else "")


def safe_file_name(name: str) -> str:
    """A sender's file name made safe as a local base name: no folders, no control
    characters, no leading dots (a hidden or special file); ``file`` if nothing is left."""
    base = name.replace("\\", "/").rsplit("/", 1)[-1]
    cleaned = "".join(ch for ch in base if unicodedata.category(ch)[0] != "C").strip()
    return cleaned.lstrip(".")[:200] or "file"


def file_label(info: FileInfo | None) -> str:
    """``name (size)`` of a file message, cleaned for the terminal."""
    if info is None:
        return "(unreadable file description)"
    return f"{plain(info.name, 80)} ({human_size(info.size)})"


def short_id(message_id: bytes) -> str:
    return "#" + message_id.hex()[:SHORT_ID_HEX]


def contact_name(contact: Contact | None, account_id: bytes) -> str:
    """A display name (cleaned) or the first 8 hex digits of the account id."""
    if contact is not None and contact.profile_name:
        return plain(contact.profile_name, 64).replace("\n    ", " ")
    return account_id.hex()[:8]


def contact_line(index: int, contact: Contact) -> str:
    flags = ""
    if contact.state is ContactState.ACCEPTED and contact.verified:
        flags += ", verified"
    if contact.identity_changed:
        flags += ", IDENTITY CHANGED"
    return (f"{index:>3}. {contact_name(contact, contact.account_id):<20} "
            f"{contact.account_id.hex()}  {_STATE_WORDS[contact.state]}{flags}")


def status_word(status: MessageStatus, reason: str | None = None) -> str:
    word = _STATUS_WORDS[status]
    return f"{word} ({reason})" if reason else word


def human_size(size: int) -> str:
    value = float(size)
    for unit in ("B", "KB", "MB", "GB"):
        if value < 1000 or unit == "GB":
            return f"{value:.0f} {unit}" if unit == "B" else f"{value:.1f} {unit}"
        value /= 1000
    raise AssertionError("unreachable")


def clock(ms: int) -> str:
    """Local time of a Unix-millisecond timestamp: ``HH:MM`` today, else the date too."""
    when = _dt.datetime.fromtimestamp(ms / 1000).astimezone()
    if when.date() == _dt.datetime.now().astimezone().date():
        return when.strftime("%H:%M")
    return when.strftime("%Y-%m-%d %H:%M")


def message_line(message: StoredMessage, peer_name: str) -> str:
    """One history line: time, short id, author, text (or file / deleted), and the
    status of our own messages."""
    author = "you" if message.outgoing else peer_name
    head = f"{clock(message.sent_at_ms)} {short_id(message.message_id)} {author}:"
    if message.deleted_at_ms is not None:
        body = "(deleted)"
    elif message.kind is MessageKind.FILE:
        info = None if message.attachment is None else file_info(message.attachment)
        caption = f" {plain(message.body)}" if message.body else ""
        body = f"[file] {file_label(info)}{caption}"
        if not message.outgoing:
            body += f"  (/get {short_id(message.message_id)} <dest>)"
    elif message.kind is MessageKind.UNSUPPORTED:
        body = "(a message this version cannot show)"
    else:
        body = plain(message.body or "")
    if message.edited_at_ms is not None and message.deleted_at_ms is None:
        body += " (edited)"
    tail = ""
    if message.outgoing:
        tail = f"  [{status_word(message.status, message.failure_reason)}]"
    reactions = " ".join(r.emoji for r in message.reactions)
    return f"{head} {body}{tail}" + (f"  {reactions}" if reactions else "")
