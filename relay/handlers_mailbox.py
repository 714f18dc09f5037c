"""Mailbox stages: create, rotate, delete, contact mailbox, subscribe, unsubscribe, push.

Theory of operation (protocol §9.4 "Mailboxes", §9.5; DESIGN.md "Addresses"):

* Every frame here is account-bound and names mailboxes the account must own
  (``NO_SUCH_MAILBOX`` or ``FORBIDDEN`` otherwise: these are said to the owner only).
  Ownership is cached per connection (:meth:`relay.connection.Connection.require_owner`).
* The relay draws mailbox ids (16 random bytes); the owner gives only the SHA-256 of the
  send capability. A new mailbox's hash goes straight into the node's capability cache,
  so the first send to it needs no store read.
* ``Subscribe`` **moves** each mailbox to this connection (a connection of this node that
  had it stops delivering it, and so does one of another node: ``Bus.subscriptions_taken``,
  the later subscription keeps it), answers ``Subscribed`` listing the mailboxes that do not
  exist or are not owned, and only then lets the delivery pump read each backlog: the
  expiry notice, the unacked envelopes in seq order, then live ones.
* ``RotateMailbox`` creates the new mailbox (subscribed on the connection of this node
  that receives the old one, if any) and retires the old one at ``retire_at_ms``
  (default ``config.rotation_grace_ms`` from now). A repeat (the old mailbox already
  retired: a retry after a lost answer) answers the account's mailbox with the capability
  hash it names (the one the first created: capabilities are fresh) and changes nothing.
* ``DeleteMailbox`` deletes the queue with it and tells subscriptions (bus ``CLOSED``).
* ``RegisterPush`` sets or clears a push URL (``https`` only, no credentials, no private
  addresses unless ``config.push_allow_http``): the relay then POSTs an empty body to it
  when an envelope arrives and nobody receives the mailbox live.
"""

from __future__ import annotations

import secrets
from typing import Final

from protocol import (
    CreateMailbox,
    DeleteMailbox,
    ErrorCode,
    MailboxCreated,
    Ok,
    RegisterPush,
    RotateMailbox,
    SetContactMailbox,
    Subscribe,
    Subscribed,
    Unsubscribe,
)
from protocol.limits import MAILBOX_ID_SIZE

from .connection import Connection
from .delivery import DeliveryPump
from .pipeline import FrameCtx, Refuse
from .ports import NotFound, StoreConflict, WrongCapability
from .push import validate_push_url

__all__ = [
    "MAX_MAILBOXES_PER_ACCOUNT",
    "create_mailbox",
    "delete_mailbox",
    "register_push",
    "rotate_mailbox",
    "set_contact_mailbox",
    "subscribe",
    "unsubscribe",
]

MAX_MAILBOXES_PER_ACCOUNT: Final = 10_000
"""Two per contact, with rotations in flight: plenty for a person, a bound for a script."""


def _account(conn: Connection) -> bytes:
    assert conn.account_id is not None  # require_auth ran
    return conn.account_id


async def _pump(conn: Connection) -> DeliveryPump:
    if conn.pump is None:
        conn.pump = await DeliveryPump.create(conn)
    return conn.pump


async def _subscribe_here(conn: Connection, mailbox_ids: list[bytes]) -> DeliveryPump:
    """Move *mailbox_ids* to this connection (held until :meth:`DeliveryPump.release`)."""
    node = conn.node
    pump = await _pump(conn)
    for mailbox_id in mailbox_ids:
        holder = node.subscribers.get(mailbox_id)
        if holder is not None and holder is not conn and holder.pump is not None:
            await holder.pump.drop(mailbox_id)
        node.subscribers[mailbox_id] = conn
    if mailbox_ids:  # and from connections of other nodes (the bus; best effort)
        conn.subscribed_ms = at_ms = node.clock_ms()
        await node.bus.subscriptions_taken(mailbox_ids, at_ms)
    await pump.subscribe(mailbox_ids)
    return pump


async def create_mailbox(ctx: FrameCtx[CreateMailbox]) -> None:
    conn, frame = ctx.conn, ctx.frame
    node = conn.node
    account_id = _account(conn)
    # Counted in the store, not this connection's cache: the account's other connections
    # create mailboxes too. Creations in flight at once may each pass; the overshoot is
    # bounded by the account's connections times their in-flight frames.
    if await node.store.count_mailboxes(account_id) >= MAX_MAILBOXES_PER_ACCOUNT:
        raise Refuse(ErrorCode.QUOTA_EXCEEDED, message="too many mailboxes")
    for _ in range(3):  # an id collision is astronomically unlikely; never loop forever
        mailbox_id = secrets.token_bytes(MAILBOX_ID_SIZE)
        try:
            await node.store.create_mailbox(account_id=account_id, mailbox_id=mailbox_id,
                                            capability_hash=frame.capability_hash,
                                            now_ms=node.clock_ms())
        except StoreConflict:
            continue
        except NotFound:
            raise Refuse(ErrorCode.UNKNOWN_ACCOUNT) from None
        break
    else:  # pragma: no cover
        raise Refuse(ErrorCode.INTERNAL)
    conn.owned.add(mailbox_id)
    node.capabilities.put(mailbox_id, frame.capability_hash, node.clock_ms())
    node.set_push_url(mailbox_id, None)
    await conn.send(MailboxCreated(request_id=ctx.request_id, mailbox_id=mailbox_id).encode())


async def rotate_mailbox(ctx: FrameCtx[RotateMailbox]) -> None:
    conn, frame = ctx.conn, ctx.frame
    node = conn.node
    account_id = _account(conn)
    await conn.require_owner(frame.mailbox_id)
    now = node.clock_ms()
    retire_at = frame.retire_at_ms if frame.retire_at_ms is not None else (
        now + node.config.rotation_grace_ms)
    record_id = secrets.token_bytes(MAILBOX_ID_SIZE)
    try:
        record = await node.store.rotate_mailbox(
            account_id=account_id, mailbox_id=frame.mailbox_id, new_mailbox_id=record_id,
            capability_hash=frame.capability_hash, retire_at_ms=retire_at, now_ms=now)
    except NotFound:
        raise Refuse(ErrorCode.NO_SUCH_MAILBOX,
                     message="absent, or retired to another capability") from None
    except StoreConflict:  # pragma: no cover - a 128-bit collision
        raise Refuse(ErrorCode.INTERNAL) from None
    new_id = record.mailbox_id
    conn.owned.add(new_id)
    if new_id != record_id:  # a repeat of a rotation that committed: it did the rest
        await conn.send(MailboxCreated(request_id=ctx.request_id, mailbox_id=new_id).encode())
        return
    node.capabilities.put(new_id, frame.capability_hash, now)
    node.capabilities.retire(frame.mailbox_id, retire_at)
    node.set_push_url(new_id, record.push_url)
    await node.mailbox_changed(frame.mailbox_id)  # other nodes learn its retirement
    # The new mailbox inherits the old one's subscription, whichever of the account's
    # connections on this node holds it (one on another node of a deployment does not).
    heir = node.subscribers.get(frame.mailbox_id)
    inherit = (heir is not None and heir.pump is not None and frame.mailbox_id in heir.pump
               and new_id not in heir.pump)
    if inherit:
        assert heir is not None
        pump = await _subscribe_here(heir, [new_id])
    await conn.send(MailboxCreated(request_id=ctx.request_id, mailbox_id=new_id).encode())
    if inherit:
        pump.release([new_id])


async def delete_mailbox(ctx: FrameCtx[DeleteMailbox]) -> None:
    conn, frame = ctx.conn, ctx.frame
    node = conn.node
    account_id = _account(conn)
    await conn.require_owner(frame.mailbox_id)
    if not await node.store.delete_mailbox(account_id=account_id, mailbox_id=frame.mailbox_id):
        conn.owned.discard(frame.mailbox_id)
        raise Refuse(ErrorCode.NO_SUCH_MAILBOX)
    conn.owned.discard(frame.mailbox_id)
    await node.close_mailbox(frame.mailbox_id)
    await conn.send(Ok(request_id=ctx.request_id).encode())


async def set_contact_mailbox(ctx: FrameCtx[SetContactMailbox]) -> None:
    conn, frame = ctx.conn, ctx.frame
    await conn.require_owner(frame.mailbox_id)
    try:
        await conn.node.store.set_contact_mailbox(
            account_id=_account(conn), mailbox_id=frame.mailbox_id, capability=frame.capability)
    except NotFound:
        raise Refuse(ErrorCode.NO_SUCH_MAILBOX) from None
    except WrongCapability:
        raise Refuse(ErrorCode.WRONG_CAPABILITY) from None
    await conn.send(Ok(request_id=ctx.request_id).encode())


async def subscribe(ctx: FrameCtx[Subscribe]) -> None:
    conn, frame = ctx.conn, ctx.frame
    # One read of which are the account's now: mailboxes created, and deleted, on its
    # other connections (the cache of this one knows neither).
    requested = list(dict.fromkeys(frame.mailbox_ids))
    owned = await conn.node.store.owned_mailboxes(_account(conn), requested)
    accepted: list[bytes] = []
    rejected: list[bytes] = []
    for mailbox_id in requested:
        if mailbox_id in owned:
            conn.owned.add(mailbox_id)
            accepted.append(mailbox_id)
        else:
            conn.owned.discard(mailbox_id)
            rejected.append(mailbox_id)
    pump = await _subscribe_here(conn, accepted)
    await conn.send(Subscribed(request_id=ctx.request_id, rejected=tuple(rejected)).encode())
    pump.release(accepted)


async def unsubscribe(ctx: FrameCtx[Unsubscribe]) -> None:
    conn, frame = ctx.conn, ctx.frame
    if conn.pump is not None:
        for mailbox_id in frame.mailbox_ids:
            await conn.pump.drop(mailbox_id)
    await conn.send(Ok(request_id=ctx.request_id).encode())


async def register_push(ctx: FrameCtx[RegisterPush]) -> None:
    conn, frame = ctx.conn, ctx.frame
    node = conn.node
    if frame.url is not None:
        try:
            validate_push_url(frame.url, allow_insecure=node.config.push_allow_http)
        except ValueError as exc:
            raise Refuse(ErrorCode.INVALID_FIELD, message=str(exc)) from None
    for mailbox_id in frame.mailbox_ids:
        await conn.require_owner(mailbox_id)
    try:
        await node.store.set_push_url(account_id=_account(conn), mailbox_ids=frame.mailbox_ids,
                                      push_url=frame.url)
    except NotFound:
        raise Refuse(ErrorCode.NO_SUCH_MAILBOX) from None
    for mailbox_id in frame.mailbox_ids:
        node.set_push_url(mailbox_id, frame.url)
        await node.mailbox_changed(mailbox_id)
    await conn.send(Ok(request_id=ctx.request_id).encode())
