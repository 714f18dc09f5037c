"""Pigeon's client SDK: an asyncio client over a sans-I/O core.

Quickstart (docs/sdk.md)::

    from client_sdk import AsyncClient, MessageReceived

    async with AsyncClient.open("alice.pigeon", passphrase, relay_url=url) as alice:
        await alice.register()
        await alice.add_contact_by_link(bob_link)
        async for event in alice.events():
            if isinstance(event, ContactAccepted):
                await alice.send_text(event.peer, "hi Bob")

Layers (STYLE.md §1): :mod:`client_sdk.frames` (pure frame builders and checkers),
:class:`~client_sdk.core.ClientCore` (the no-I/O client that absorbs results; it runs
its store calls on the thread it is called from), :class:`~client_sdk.AsyncClient`
(sockets, reconnects, retries, the worker thread). Persistence: :mod:`client_sdk.store`.
"""

from pigeon_crypto.errors import InvalidBundle
from protocol.errors import InvalidUsername
from protocol.inner import PresenceState, ReceiptKind

from .client import AsyncClient, EventWaiter
from .core import ClientCore, CoreConfig
from .errors import (
    CertificatePinMismatch,
    ClientError,
    ConnectionLost,
    ContactBlocked,
    ContactNotReady,
    IdentityChangeUnacknowledged,
    IdentityMismatch,
    InvalidContactLink,
    NotRegistered,
    PigeonError,
    ProfileCorrupt,
    ProfileLocked,
    ProfileNotFound,
    ProfileTooNew,
    RelayError,
    TransportError,
    UnknownContact,
    WrongPassphrase,
)
from .events import (
    ContactAccepted,
    DisappearingTimerChanged,
    Disconnected,
    Event,
    IdentityChanged,
    InvitationReceived,
    MailboxRotated,
    MessageDeleted,
    MessageEdited,
    MessageReceived,
    MessageRef,
    MessagesLost,
    MessageStatusChanged,
    PresenceChanged,
    ProfileChanged,
    ReactionChanged,
    ReceiptReceived,
    Reconnected,
    TypingChanged,
)
from .files import (
    FileInfo,
    FileOptions,
    FileTooLarge,
    NotAFileMessage,
    TransferCompleted,
    TransferDirection,
    TransferFailed,
    TransferFailedEvent,
    TransferInfo,
    TransferStarted,
    TransferState,
    UnknownTransfer,
)
from .groups import (
    GroupChanged,
    GroupInfo,
    GroupReceiptsChanged,
    GroupTypingChanged,
    NotGroupAdmin,
    NotGroupMember,
    UnknownGroup,
)
from .history import (
    ConversationKind,
    MessageKind,
    MessageStatus,
    Page,
    SearchHit,
    SearchPage,
    StoredMessage,
)
from .payloads import ContactLink
from .store import Contact, ContactState, Durability

__all__ = [
    "AsyncClient",
    "CertificatePinMismatch",
    "ClientCore",
    "ClientError",
    "ConnectionLost",
    "Contact",
    "ContactAccepted",
    "ContactBlocked",
    "ContactLink",
    "ContactNotReady",
    "ContactState",
    "ConversationKind",
    "CoreConfig",
    "DisappearingTimerChanged",
    "Disconnected",
    "Durability",
    "Event",
    "EventWaiter",
    "FileInfo",
    "FileOptions",
    "FileTooLarge",
    "GroupChanged",
    "GroupInfo",
    "GroupReceiptsChanged",
    "GroupTypingChanged",
    "IdentityChangeUnacknowledged",
    "IdentityChanged",
    "IdentityMismatch",
    "InvalidBundle",
    "InvalidContactLink",
    "InvalidUsername",
    "InvitationReceived",
    "MailboxRotated",
    "MessageDeleted",
    "MessageEdited",
    "MessageKind",
    "MessageReceived",
    "MessageRef",
    "MessageStatus",
    "MessageStatusChanged",
    "MessagesLost",
    "NotAFileMessage",
    "NotGroupAdmin",
    "NotGroupMember",
    "NotRegistered",
    "Page",
    "PigeonError",
    "PresenceChanged",
    "PresenceState",
    "ProfileChanged",
    "ProfileCorrupt",
    "ProfileLocked",
    "ProfileNotFound",
    "ProfileTooNew",
    "ReactionChanged",
    "ReceiptKind",
    "ReceiptReceived",
    "Reconnected",
    "RelayError",
    "SearchHit",
    "SearchPage",
    "StoredMessage",
    "TransferCompleted",
    "TransferDirection",
    "TransferFailed",
    "TransferFailedEvent",
    "TransferInfo",
    "TransferStarted",
    "TransferState",
    "TransportError",
    "TypingChanged",
    "UnknownContact",
    "UnknownGroup",
    "UnknownTransfer",
    "WrongPassphrase",
]
