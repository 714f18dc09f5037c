"""The resolver: frame class -> :class:`~relay.pipeline.Route`, built once at import.

This table *is* the relay's behaviour per frame (DESIGN.md "Relay pipeline"). Reading a
row: the stages run left to right; :data:`~relay.pipeline.FORK` is where the rest of the
chain leaves the reader loop for a bounded per-connection task. ``require_auth`` marks the
account-bound frames; an anonymous connection may only ``Send``, ``SendEphemeral``,
``FetchBundle``, ``LookupUsername``, ``RequestBlobDownload`` and ``Ping`` (and ``Connect``,
``Auth``, ``Register``). Every frame type a client may send has a row; a test checks it.
"""

from __future__ import annotations

from typing import Final

from protocol import (
    Ack,
    Auth,
    ClaimUsername,
    Connect,
    CreateMailbox,
    DeleteAccount,
    DeleteMailbox,
    Error,
    FetchBundle,
    Frame,
    LookupUsername,
    Ping,
    Pong,
    RegisterPush,
    ReleaseUsername,
    RequestBlobDownload,
    RequestBlobUpload,
    RotateIdentity,
    RotateMailbox,
    Send,
    SendEphemeral,
    SetContactMailbox,
    Subscribe,
    Unsubscribe,
    UploadPrekeys,
)
from protocol import Register as RegisterFrame

from .handlers_auth import (
    current_identity,
    delete_account,
    handle_auth,
    handle_connect,
    handle_ping,
    handle_register,
    recent_identity,
    require_auth,
    rotate_identity,
)
from .handlers_blob import request_download, request_upload, take_request_credit
from .handlers_directory import (
    claim_username,
    fetch_bundle,
    lookup_username,
    release_username,
    take_lookup_credit,
    upload_prekeys,
)
from .handlers_mailbox import (
    create_mailbox,
    delete_mailbox,
    register_push,
    rotate_mailbox,
    set_contact_mailbox,
    subscribe,
    unsubscribe,
)
from .handlers_message import (
    ack_owner,
    check_capability,
    dedup_ephemeral,
    finalize_ack,
    persist,
    reply_sent,
    route_durable,
    route_ephemeral,
    take_credits,
    validate_send,
)
from .pipeline import FORK, FrameCtx, Route, Stage

__all__ = ["ANONYMOUS", "RESOLVER", "ignore"]


def ignore(ctx: FrameCtx[object]) -> None:
    """Stage: nothing to do (a client's ``Pong`` or ``Error`` answering nothing we asked)."""


def _row(frame: type[Frame], *stages: Stage | object) -> tuple[type[Frame], Route]:
    return frame, Route.of(frame.__name__, *stages)  # type: ignore[arg-type]


RESOLVER: Final[dict[type[Frame], Route]] = dict((
    # session
    _row(Connect, handle_connect),
    _row(Auth, handle_auth),
    _row(RegisterFrame, handle_register),
    _row(Ping, handle_ping),
    _row(Pong, ignore),
    _row(Error, ignore),
    # durable and ephemeral messages, acks: the hot path
    _row(Send, validate_send, check_capability, take_credits, FORK,
         persist, reply_sent, route_durable),
    _row(SendEphemeral, check_capability, take_credits, dedup_ephemeral, route_ephemeral),
    _row(Ack, require_auth, recent_identity, ack_owner, finalize_ack),
    # accounts and the directory (current_identity: a session whose key was rotated
    # away changes nothing; ClaimUsername and RotateIdentity need the current key's
    # signature anyway)
    _row(DeleteAccount, require_auth, current_identity, delete_account),
    _row(RotateIdentity, require_auth, rotate_identity),
    _row(UploadPrekeys, require_auth, current_identity, upload_prekeys),
    _row(FetchBundle, take_lookup_credit, fetch_bundle),
    _row(ClaimUsername, require_auth, claim_username),
    _row(ReleaseUsername, require_auth, current_identity, release_username),
    _row(LookupUsername, take_lookup_credit, lookup_username),
    # mailboxes
    _row(CreateMailbox, require_auth, current_identity, create_mailbox),
    _row(RotateMailbox, require_auth, current_identity, rotate_mailbox),
    _row(DeleteMailbox, require_auth, current_identity, delete_mailbox),
    _row(SetContactMailbox, require_auth, current_identity, set_contact_mailbox),
    _row(Subscribe, require_auth, current_identity, subscribe),
    _row(Unsubscribe, require_auth, unsubscribe),
    _row(RegisterPush, require_auth, current_identity, register_push),
    # blobs
    _row(RequestBlobUpload, require_auth, current_identity, take_request_credit,
         request_upload),
    _row(RequestBlobDownload, take_request_credit, request_download),
))
"""Every frame a client may send, with its stages."""

ANONYMOUS: Final = frozenset(
    cls for cls, route in RESOLVER.items() if require_auth not in route.inline
)
"""Frame types an unauthenticated connection may send (derived from the table)."""
