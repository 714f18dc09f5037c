"""Byte strings that get signed or hashed, and the username rules.

The protocol does no cryptography: it only fixes *which bytes* are signed or hashed,
so that the SDK (which signs with :mod:`pigeon_crypto.signing`) and the relay (which
verifies and hashes) agree exactly. Each layout starts with a one-byte layout version
and has a fixed order; integers are big-endian.

Relay challenge (signed by the account with ``Purpose.RELAY_CHALLENGE``; answers a
``Challenge`` in ``Auth``, ``Register`` and, with the new key, ``RotateIdentity``):

======  ====  =========================================================
offset  size  field
======  ====  =========================================================
0       1     layout version ``0x01``
1       1     ``n`` = length of relay_id (16 or 32)
2       n     relay_id (from ``Challenge``)
2+n     32    nonce (from ``Challenge``)
34+n    8     time_ms, u64 big-endian (``Challenge.server_time_ms``)
42+n    16    account_id
======  ====  =========================================================

Binding relay id and time means a signature is useless on another relay and after
the relay's freshness window; binding the account id means it cannot be presented
for another account.

Username binding (signed with ``Purpose.USERNAME_BINDING``; carried by
``ClaimUsername`` and returned by ``UsernameFound`` so the looker verifies it):

======  ====  =========================================================
offset  size  field
======  ====  =========================================================
0       1     layout version ``0x01``
1       1     ``n`` = length of the normalized username (3..32)
2       n     username, ASCII
2+n     16    account_id
======  ====  =========================================================

Dedup input (the relay stores ``SHA-256(dedup_input(mailbox_id, client_msg_id))`` as
``Envelope.dedup_hash``; a retried send whose hash is already stored in that mailbox
is answered ``Sent`` again without storing a second copy):

======  ====  =========================================================
offset  size  field
======  ====  =========================================================
0       1     layout version ``0x01``
1       16    mailbox_id
17      16    client_msg_id
======  ====  =========================================================

Scoping the hash by mailbox keeps the copies of one multi-recipient send from sharing
a stored id, and lets a fan-out split over several frames reuse one client_msg_id.

Usernames: ASCII only (no homoglyphs), ``[a-z][a-z0-9_]{2,31}``. User input is
normalized by :func:`normalize_username` (strip surrounding whitespace, one leading
``@``, lowercase); the wire carries only normalized names and decoders reject others.
Lookup is by exact match of the normalized name.
"""

from __future__ import annotations

import re
import struct
from typing import Final

from . import limits as L
from .errors import InvalidUsername, LocalProtocolError

__all__ = [
    "USERNAME_PATTERN",
    "challenge_payload",
    "dedup_input",
    "normalize_username",
    "username_binding_payload",
]

USERNAME_PATTERN: Final = (
    rf"[a-z][a-z0-9_]{{{L.USERNAME_MIN_LENGTH - 1},{L.USERNAME_MAX_LENGTH - 1}}}"
)
"""A normalized username: a lowercase letter, then lowercase letters, digits, ``_``."""
_USERNAME_RE: Final = re.compile(USERNAME_PATTERN)
_LAYOUT_V1: Final = b"\x01"
_U64: Final = struct.Struct(">Q")


def _need(name: str, value: object, sizes: tuple[int, ...]) -> bytes:
    if type(value) is not bytes or len(value) not in sizes:
        want = " or ".join(str(s) for s in sizes)
        raise LocalProtocolError(f"{name} must be {want} bytes")
    return value


def challenge_payload(relay_id: bytes, nonce: bytes, time_ms: int, account_id: bytes) -> bytes:
    """The bytes an account signs (``Purpose.RELAY_CHALLENGE``) to answer a challenge.

    Args:
        relay_id: ``Challenge.relay_id`` (16 or 32 bytes).
        nonce: ``Challenge.nonce`` (32 bytes).
        time_ms: ``Challenge.server_time_ms``.
        account_id: the account authenticating or registering (16 bytes).

    Returns:
        ``0x01 || len(relay_id) || relay_id || nonce || u64(time_ms) || account_id``.

    Raises:
        LocalProtocolError: a size or the time is out of range.
    """
    _need("relay_id", relay_id, L.RELAY_ID_SIZES)
    _need("nonce", nonce, (L.NONCE_SIZE,))
    _need("account_id", account_id, (L.ACCOUNT_ID_SIZE,))
    if type(time_ms) is not int or not 0 <= time_ms <= L.MAX_TIME_MS:
        raise LocalProtocolError("time_ms must be an int in 0..MAX_TIME_MS")
    return b"".join(
        (_LAYOUT_V1, bytes((len(relay_id),)), relay_id, nonce, _U64.pack(time_ms), account_id)
    )


def username_binding_payload(username: str, account_id: bytes) -> bytes:
    """The bytes an account signs (``Purpose.USERNAME_BINDING``) to claim *username*.

    Args:
        username: a normalized username (see :func:`normalize_username`).
        account_id: the claiming account (16 bytes).

    Returns:
        ``0x01 || len(username) || username (ASCII) || account_id``.

    Raises:
        InvalidUsername: *username* is not normalized/valid.
        LocalProtocolError: *account_id* has the wrong size.
    """
    if type(username) is not str or _USERNAME_RE.fullmatch(username) is None:
        raise InvalidUsername(f"not a normalized username (must match {USERNAME_PATTERN})")
    _need("account_id", account_id, (L.ACCOUNT_ID_SIZE,))
    raw = username.encode("ascii")
    return b"".join((_LAYOUT_V1, bytes((len(raw),)), raw, account_id))


def dedup_input(mailbox_id: bytes, client_msg_id: bytes) -> bytes:
    """The bytes whose SHA-256 the relay stores per envelope for idempotent retries.

    Returns:
        ``0x01 || mailbox_id || client_msg_id`` (33 bytes).

    Raises:
        LocalProtocolError: a size is wrong.
    """
    _need("mailbox_id", mailbox_id, (L.MAILBOX_ID_SIZE,))
    _need("client_msg_id", client_msg_id, (L.CLIENT_MSG_ID_SIZE,))
    return _LAYOUT_V1 + mailbox_id + client_msg_id


def normalize_username(raw: str) -> str:
    """Normalize user input to the wire form of a username.

    Strips surrounding whitespace and one leading ``@``, lowercases ASCII letters,
    then requires ``[a-z][a-z0-9_]{2,31}``. Non-ASCII input is rejected rather than
    folded, so two different-looking names can never collide.

    Raises:
        InvalidUsername: the result is not a valid username.
    """
    if type(raw) is not str:
        raise InvalidUsername("not a string")
    name = raw.strip()
    if name.startswith("@"):
        name = name[1:]
    if not name.isascii():
        raise InvalidUsername("only ASCII letters, digits and _ are allowed")
    name = name.lower()
    if not L.USERNAME_MIN_LENGTH <= len(name) <= L.USERNAME_MAX_LENGTH:
        raise InvalidUsername(
            f"length must be {L.USERNAME_MIN_LENGTH}..{L.USERNAME_MAX_LENGTH} characters"
        )
    if _USERNAME_RE.fullmatch(name) is None:
        raise InvalidUsername("must start with a letter; then letters, digits and _ only")
    return name
