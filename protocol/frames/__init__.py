"""Wire frames between client and relay: typed, immutable, strict.

Every frame is a frozen, slotted, keyword-only dataclass with ``encode() -> bytes``
and ``decode(data) -> Self``; :func:`decode_frame` decodes any registered type (a
registry dict from type code to class, see :data:`FRAME_TYPES`). The wire form and
decoding rules are in :mod:`protocol.frames._base`; the frame set by area:

* :mod:`.session`: Connect, Challenge, Auth, Register, Welcome, Ping, Pong, Ok, Error
* :mod:`.account`: DeleteAccount, RotateIdentity, ClaimUsername, ReleaseUsername,
  LookupUsername, UsernameFound, UploadPrekeys, FetchBundle, Bundle
* :mod:`.mailbox`: CreateMailbox, MailboxCreated, RotateMailbox, DeleteMailbox,
  SetContactMailbox, Subscribe, Subscribed, Unsubscribe, RegisterPush
* :mod:`.message`: Send, Sent, SendEphemeral, Delivery, EphemeralDelivery, Ack
* :mod:`.system`: RequestBlobUpload, RequestBlobDownload, BlobToken, CreditsLow,
  Overloaded, PrekeysLow, MessagesExpired
"""

from __future__ import annotations

from typing import TypeAlias

from ._base import FRAME_TYPES, Direction, Frame, Request, Response, decode_frame
from .account import (
    Bundle,
    ClaimUsername,
    DeleteAccount,
    FetchBundle,
    LookupUsername,
    ReleaseUsername,
    RotateIdentity,
    UploadPrekeys,
    UsernameFound,
)
from .mailbox import (
    CreateMailbox,
    DeleteMailbox,
    MailboxCreated,
    RegisterPush,
    RotateMailbox,
    SetContactMailbox,
    Subscribe,
    Subscribed,
    Unsubscribe,
)
from .message import Ack, Delivery, EphemeralDelivery, Recipient, Send, SendEphemeral, Sent
from .session import Auth, Challenge, Connect, Error, Ok, Ping, Pong, Register, Welcome
from .system import (
    BlobToken,
    CreditsLow,
    MessagesExpired,
    Overloaded,
    PrekeysLow,
    RequestBlobDownload,
    RequestBlobUpload,
)

SendResult: TypeAlias = Sent | Error
"""What answers a :class:`Send`: ``Sent`` once durable, or ``Error`` (code, retry_after_ms)."""

Notice: TypeAlias = CreditsLow | Overloaded | PrekeysLow | MessagesExpired
"""Relay-generated notices (never stored, request id 0)."""

__all__ = [
    "FRAME_TYPES",
    "Ack",
    "Auth",
    "BlobToken",
    "Bundle",
    "Challenge",
    "ClaimUsername",
    "Connect",
    "CreateMailbox",
    "CreditsLow",
    "DeleteAccount",
    "DeleteMailbox",
    "Delivery",
    "Direction",
    "EphemeralDelivery",
    "Error",
    "FetchBundle",
    "Frame",
    "LookupUsername",
    "MailboxCreated",
    "MessagesExpired",
    "Notice",
    "Ok",
    "Overloaded",
    "Ping",
    "Pong",
    "PrekeysLow",
    "Recipient",
    "Register",
    "RegisterPush",
    "ReleaseUsername",
    "Request",
    "RequestBlobDownload",
    "RequestBlobUpload",
    "Response",
    "RotateIdentity",
    "RotateMailbox",
    "Send",
    "SendEphemeral",
    "SendResult",
    "Sent",
    "SetContactMailbox",
    "Subscribe",
    "Subscribed",
    "Unsubscribe",
    "UploadPrekeys",
    "UsernameFound",
    "Welcome",
    "decode_frame",
]
