"""Message stages: durable sends, ephemeral sends, acks (the hot path).

Theory of operation (DESIGN.md "Relay pipeline"; protocol §9.4 "Messages", §9.5):

Durable ``Send``::

    validate -> capability -> credits -> FORK -> persist -> ack sender -> route

* **validate**: the frame decoder already enforced every protocol limit; the relay's own
  policy caps ``ttl_ms`` at ``config.message_ttl_ms`` (never refused, only shortened).
* **capability**: each distinct recipient's capability is hashed (SHA-256) and compared
  with the node's cache of confirmed hashes; unknown mailboxes are checked with one store
  read for all of them. A wrong capability and a missing mailbox are the same answer,
  ``WRONG_CAPABILITY`` (a sender learns nothing about mailbox existence). If no recipient
  passes, the send is refused before it costs anything.
* **credits**: one credit per accepted recipient from the connection's bucket and one from
  each recipient mailbox's bucket, all or nothing (:func:`relay.credits.take_send`); an
  empty bucket refuses the send with ``RATE_LIMITED`` and ``retry_after_ms`` (and a
  ``CreditsLow`` notice when it is the connection's own bucket).
* **persist** (batched): one ``append_many`` through the group commit for the sends a
  connection read in one event-loop iteration: each blob is stored once however
  many mailboxes it reaches; a recipient that already holds this ``client_msg_id`` keeps
  its original copy (idempotent retry).
* **ack sender**: ``Sent`` (with the refused recipients' indices), written only after the
  commit returned; ``Error`` with the first code if no recipient took it.
* **route**: for every new copy, ``MESSAGE(seq, Delivery frame)`` on the bus; a mailbox
  nobody receives live gets a push wake-up if it registered a URL. The encoded
  ``Delivery`` rides along unless the fan-out is large (``FANOUT_PAYLOAD_BUDGET``), in
  which case subscribers read it from the store.

``SendEphemeral``: validate -> capability -> credits -> dedup window -> route if subscribed,
drop otherwise (dropped copies counted in ``pigeon_relay_ephemeral_dropped``). Never stored.

``Ack``: auth -> ownership -> finalize: the connection's delivery window is updated at
once, and the deletion goes through the group commit (coalesced per mailbox).
"""

from __future__ import annotations

import hashlib
import logging
from collections.abc import Awaitable
from typing import TYPE_CHECKING, Final

from pigeon_crypto.errors import StoreError
from protocol import Ack, ErrorCode, Send, SendEphemeral, Sent
from protocol.limits import CLIENT_MSG_ID_SIZE

from .credits import take_send
from .pipeline import (
    Batched,
    DeliveryEncoder,
    FrameCtx,
    Halt,
    Refuse,
    ephemeral_delivery_bytes,
    sent_bytes,
)
from .ports import (
    AppendRequest,
    Notification,
    NotificationKind,
    Recipient,
    RejectReason,
    unchecked_notification,
    unchecked_recipient,
)

__all__ = [
    "FANOUT_PAYLOAD_BUDGET",
    "ack_owner",
    "check_capability",
    "dedup_ephemeral",
    "finalize_ack",
    "persist",
    "reply_sent",
    "route_durable",
    "route_ephemeral",
    "take_credits",
    "validate_send",
]

if TYPE_CHECKING:
    from .node import Node

_log = logging.getLogger("pigeon.relay.message")

FANOUT_PAYLOAD_BUDGET: Final = 1 << 20
"""Bytes of encoded ``Delivery`` frames one send may put on the bus (blob size times new
copies); above it the hints carry no payload and subscribers read the store instead."""
_REJECT_CODES: Final = {
    RejectReason.WRONG_CAPABILITY: ErrorCode.WRONG_CAPABILITY,
    RejectReason.QUOTA_EXCEEDED: ErrorCode.QUOTA_EXCEEDED,
}
_MESSAGE: Final = NotificationKind.MESSAGE
_EPHEMERAL: Final = NotificationKind.EPHEMERAL
_RETRY_STORE_MS: Final = 1000
_sha256 = hashlib.sha256
assert CLIENT_MSG_ID_SIZE == 16


# --------------------------------------------------------------------------- durable sends


def validate_send(ctx: FrameCtx[Send]) -> None:
    """Stage: the relay's retention policy (a longer ``ttl_ms`` is shortened)."""
    limit = ctx.conn.node.config.message_ttl_ms
    ttl = ctx.frame.ttl_ms
    ctx.ttl_ms = limit if ttl is None or ttl > limit else ttl


def check_capability(ctx: FrameCtx[Send] | FrameCtx[SendEphemeral]) -> Awaitable[None] | None:
    """Stage: keep the recipients whose capability matches (cache first, then the store)."""
    node = ctx.conn.node
    cache = node.capabilities
    now = node.clock_ms()
    recipients = ctx.recipients
    indices = ctx.indices
    unknown: list[tuple[int, Recipient]] = []
    seen: set[bytes] = set()
    for index, (mailbox_id, capability) in enumerate(ctx.frame.recipients):
        if mailbox_id in seen:
            continue  # named twice: one copy, answered once
        seen.add(mailbox_id)
        # The decoder checked the id's length; the hash is a SHA-256 digest.
        recipient = unchecked_recipient(mailbox_id, _sha256(capability).digest())
        verdict = cache.check(mailbox_id, recipient.capability_hash, now)
        if verdict:
            recipients.append(recipient)
            indices.append(index)
        elif verdict is None:
            unknown.append((index, recipient))
        else:
            ctx.rejected.append((index, ErrorCode.WRONG_CAPABILITY))
    if unknown:
        return _check_in_store(ctx, unknown, now)
    if not recipients:
        raise Refuse(ErrorCode.WRONG_CAPABILITY)
    return None


async def _check_in_store(ctx: FrameCtx[Send] | FrameCtx[SendEphemeral],
                          unknown: list[tuple[int, Recipient]], now: int) -> None:
    node = ctx.conn.node
    good = await node.store.check_capabilities([r for _, r in unknown], now_ms=now)
    merged = list(zip(ctx.indices, ctx.recipients, strict=True))
    for index, recipient in unknown:
        if recipient.mailbox_id in good:
            node.capabilities.put(recipient.mailbox_id, recipient.capability_hash, now)
            merged.append((index, recipient))
        else:
            ctx.rejected.append((index, ErrorCode.WRONG_CAPABILITY))
    if not merged:
        raise Refuse(ErrorCode.WRONG_CAPABILITY)
    merged.sort(key=lambda pair: pair[0])
    ctx.indices[:] = [i for i, _ in merged]
    ctx.recipients[:] = [r for _, r in merged]


def take_credits(ctx: FrameCtx[Send] | FrameCtx[SendEphemeral]) -> Awaitable[None] | None:
    """Stage: charge the connection and every recipient mailbox, or refuse."""
    conn = ctx.conn
    node = conn.node
    now = node.monotonic()
    recipients = ctx.recipients
    mailboxes = ([recipients[0].mailbox_id] if len(recipients) == 1
                 else [r.mailbox_id for r in recipients])
    refusal = take_send(conn.credits, node.mailbox_credits, mailboxes, now)
    if refusal is not None:
        node.metrics.credit_refused(refusal.scope)
        raise Refuse(ErrorCode.RATE_LIMITED, retry_after_ms=refusal.retry_after_ms,
                     message=f"{refusal.scope} credits")
    return conn.check_credits_low(now)


async def _persist(ctxs: list[FrameCtx[Send]]) -> None:
    node = ctxs[0].conn.node
    config = node.config
    now = node.clock_ms()
    max_pending = config.max_pending_per_mailbox
    dedup_ttl = config.message_ttl_ms
    results = await node.store.append_many([
        AppendRequest(tuple(ctx.recipients), ctx.frame.client_msg_id, ctx.frame.blob, now,
                      ctx.ttl_ms, max_pending, dedup_ttl)
        for ctx in ctxs])
    for ctx, result in zip(ctxs, results, strict=True):
        ctx.result = result


persist: Final = Batched(_persist)
"""Forked, batched stage: the durable appends of a batch, in one store call (one
group-committed transaction). ``Sent`` only after it returns."""


def reply_sent(ctx: FrameCtx[Send]) -> Awaitable[None]:
    """Forked stage: answer ``Sent`` (or ``Error`` when no recipient took the envelope)."""
    conn = ctx.conn
    result = ctx.result
    rejected = ctx.rejected
    if result.rejected:
        node = conn.node
        index_of = dict(zip((r.mailbox_id for r in ctx.recipients), ctx.indices, strict=True))
        for mailbox_id, reason in result.rejected:
            rejected.append((index_of[mailbox_id], _REJECT_CODES[reason]))
            if reason is RejectReason.WRONG_CAPABILITY:
                node.capabilities.forget(mailbox_id)  # retired or gone: the cache was stale
    if not result.accepted:
        rejected.sort()
        raise Refuse(ErrorCode(rejected[0][1]))
    if rejected:
        rejected.sort()
        return conn.send(Sent(request_id=ctx.request_id, rejected=tuple(rejected)).encode())
    return conn.send(sent_bytes(ctx.request_id))


async def _route_durable(ctxs: list[FrameCtx[Send]]) -> None:
    node = ctxs[0].conn.node
    notes: list[tuple[bytes, Notification]] = []
    for ctx in ctxs:
        result = ctx.result
        fresh = [r for r in result.accepted if not r.duplicate]
        if not fresh:
            continue
        blob = ctx.frame.blob
        if len(blob) * len(fresh) > FANOUT_PAYLOAD_BUDGET:
            notes += [(copy.mailbox_id, unchecked_notification(_MESSAGE, copy.seq, b""))
                      for copy in fresh]
        else:
            # The copies' Delivery frames differ only in mailbox id and seq: the rest
            # (the blob above all) is encoded once per send.
            frame = DeliveryEncoder(result.received_at_ms, blob).frame
            notes += [(copy.mailbox_id, unchecked_notification(
                _MESSAGE, copy.seq, frame(copy.mailbox_id, copy.seq))) for copy in fresh]
    if notes:
        for (mailbox_id, _), taken in zip(notes, await node.bus.publish_many(notes),
                                          strict=True):
            if not taken:
                await _wake(node, mailbox_id)


async def _wake(node: Node, mailbox_id: bytes) -> None:
    """Wake an offline owner; a store that fails to name the push URL costs that one
    wake-up, not the batch (whose senders all have their ``Sent`` already)."""
    try:
        await node.wake(mailbox_id)
    except StoreError as exc:
        _log.warning("push wake-up skipped: store failed: %s", type(exc).__name__)


route_durable: Final = Batched(_route_durable, after_reply=True)
"""Forked, batched stage: tell subscribers (bus ``MESSAGE``), or wake an offline owner.
Every copy of every send of the batch goes in one ``publish_many`` (a bus between nodes
answers it in one round trip, where one call per send would wait for one each, in turn)."""


# --------------------------------------------------------------------------- ephemeral


def dedup_ephemeral(ctx: FrameCtx[SendEphemeral]) -> None:
    """Stage: drop (silently) an ephemeral ``client_msg_id`` seen within the window."""
    node = ctx.conn.node
    if not node.ephemeral.first_time(ctx.frame.client_msg_id, node.clock_ms()):
        raise Halt


async def route_ephemeral(ctx: FrameCtx[SendEphemeral]) -> None:
    """Stage: deliver to whoever is subscribed right now; count the copies dropped."""
    node = ctx.conn.node
    blob = ctx.frame.blob
    now = node.clock_ms()
    counts = await node.bus.publish_many([
        (recipient.mailbox_id,
         unchecked_notification(_EPHEMERAL, 0,
                                ephemeral_delivery_bytes(recipient.mailbox_id, now, blob)))
        for recipient in ctx.recipients])
    dropped = counts.count(0)
    if dropped:
        node.metrics.ephemeral_dropped(dropped)


# --------------------------------------------------------------------------- acks


def ack_owner(ctx: FrameCtx[Ack]) -> Awaitable[None] | None:
    """Stage: the mailbox must be the account's (cached per connection)."""
    conn = ctx.conn
    mailbox_id = ctx.frame.mailbox_id
    if mailbox_id in conn.owned:
        return None
    return conn.require_owner(mailbox_id)


def finalize_ack(ctx: FrameCtx[Ack]) -> None:
    """Stage: reopen the delivery window now; delete through the group commit."""
    conn, frame = ctx.conn, ctx.frame
    if conn.pump is not None:
        conn.pump.on_ack(frame.mailbox_id, frame.up_to_seq, frame.seqs)
    conn.node.acks.add(conn, frame.mailbox_id, frame.up_to_seq, frame.seqs, ctx.request_id)
