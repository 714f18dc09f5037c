"""The sending side of :class:`~client_sdk.core.ClientCore`.

Every message to a contact is one Double Ratchet message whose plaintext is a padded
(``pigeon_crypto.padding``) encoded inner message (``protocol.inner``). It is written to
the outbox together with the new ratchet state, the history change and, where one is
created, the contact record (new pairwise mailbox), in one transaction, before it is
sent; the relay's ``Sent`` later moves it to SENT.

:func:`submit` is the client's group commit: a batch of intents is encrypted in order
(each peer's states chained in an overlay) and stored with one ``enqueue_many``; the
caches take the new states only after the commit returned.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import TYPE_CHECKING

from pigeon_crypto.errors import PigeonError
from pigeon_crypto.padding import pad_message
from pigeon_crypto.pqxdh import initiate
from pigeon_crypto.ratchet import RatchetState
from protocol import limits as L
from protocol.inner import (
    Delete,
    DeleteScope,
    DisappearingTimer,
    Edit,
    File,
    IdentityRotated,
    InnerMessage,
    MailboxAnnouncement,
    MailboxRotation,
    Presence,
    PresenceState,
    Profile,
    Reaction,
    Receipt,
    ReceiptKind,
    Text,
    Typing,
)

from .errors import ClientError, ContactNotReady, UnknownContact
from .events import (
    ContactAccepted,
    DisappearingTimerChanged,
    Event,
    MessageRef,
    MessageStatusChanged,
)
from .frames import VerifiedBundle
from .history import (
    DeleteMessage,
    EditMessage,
    HistoryOp,
    MessageKind,
    MessageStatus,
    NewMessage,
    React,
    SetExpireTimer,
    UpdateStatus,
)
from .payloads import ContactRequest
from .store.records import (
    Contact,
    ContactState,
    MailboxDirection,
    OutboxEntry,
    OutboxItem,
    Outgoing,
    PairwiseMailbox,
    Recipient,
    SessionUpdate,
    retry_delay_ms,
)

if TYPE_CHECKING:
    from .core import ClientCore

__all__ = [
    "Intent",
    "SendDelete",
    "SendDisappearingTimer",
    "SendEdit",
    "SendFile",
    "SendProfile",
    "SendReaction",
    "SendReceipt",
    "SendText",
    "Submitted",
]


@dataclass(frozen=True, slots=True, kw_only=True)
class SendText:
    peer: bytes
    text: str = field(repr=False)
    reply_to: bytes | None = None


@dataclass(frozen=True, slots=True, kw_only=True)
class SendEdit:
    peer: bytes
    target: bytes
    text: str = field(repr=False)


@dataclass(frozen=True, slots=True, kw_only=True)
class SendReaction:
    peer: bytes
    target: bytes
    emoji: str
    remove: bool = False


@dataclass(frozen=True, slots=True, kw_only=True)
class SendDelete:
    """Delete one of our messages for everyone (for-me deletes are local only)."""

    peer: bytes
    target: bytes


@dataclass(frozen=True, slots=True, kw_only=True)
class SendReceipt:
    """DELIVERED (automatic) or READ (the user read incoming messages)."""

    peer: bytes
    kind: ReceiptKind
    message_ids: tuple[bytes, ...]


@dataclass(frozen=True, slots=True, kw_only=True)
class SendProfile:
    peer: bytes
    display_name: str = field(repr=False)
    avatar_manifest: bytes | None = field(default=None, repr=False)


@dataclass(frozen=True, slots=True, kw_only=True)
class SendFile:
    """The message of an uploaded file. ``message_id`` is drawn when the upload begins
    and stored with it, so that a resumed upload finds a message already stored."""

    peer: bytes
    message_id: bytes
    manifest: bytes = field(repr=False)
    caption: str | None = field(default=None, repr=False)


@dataclass(frozen=True, slots=True, kw_only=True)
class SendDisappearingTimer:
    """Set the conversation's disappearing-message timer on both sides (None: keep)."""

    peer: bytes
    timer_ms: int | None


Intent = (SendText | SendEdit | SendReaction | SendDelete | SendReceipt | SendProfile
          | SendFile | SendDisappearingTimer)


@dataclass(slots=True, kw_only=True)
class Submitted:
    """What :func:`submit` did: one result per intent (a ref, None for messages not in
    history, or the error that refused it), the stored outbox rows, and events."""

    results: list[MessageRef | PigeonError | None]
    items: list[OutboxItem] = field(default_factory=list)
    events: list[Event] = field(default_factory=list)


class _Batch:
    """Ratchet states advanced within one batch, not yet committed."""

    def __init__(self, core: ClientCore) -> None:
        self.core = core
        self.states: dict[bytes, RatchetState] = {}
        self._recipients: dict[tuple[bytes, bytes], tuple[Recipient, ...]] = {}

    def encrypt(self, peer: bytes, inner: InnerMessage) -> tuple[bytes, RatchetState]:
        state = self.states.get(peer) or self.core.session(peer)
        if state is None:
            contact = self.core.contact(peer)
            raise ContactNotReady(peer, contact.state.name if contact else "unknown")
        out = state.encrypt(pad_message(inner.encode()), rng=self.core.rng)
        self.states[peer] = out.state
        return out.message, out.state

    def entry(self, to: PairwiseMailbox | tuple[bytes, bytes], blob: bytes,
              now_ms: int) -> OutboxEntry:
        key = to if isinstance(to, tuple) else (to.mailbox_id, to.capability)
        recipients = self._recipients.get(key)
        if recipients is None:  # one (immutable) recipients tuple per mailbox and batch
            recipients = self._recipients[key] = (
                Recipient(mailbox_id=key[0], capability=key[1]),)
        return OutboxEntry(client_msg_id=self.core.rng(16), recipients=recipients,
                           blob=blob, created_at_ms=now_ms)

    def commit(self, outgoing: list[Outgoing]) -> list[OutboxItem]:
        # One transaction: only each peer's last state needs writing (the earlier ones
        # of the batch are never visible on their own).
        last: dict[bytes, int] = {}
        for i, o in enumerate(outgoing):
            if o.session is not None:
                last[o.session.peer] = i
        keep = set(last.values())
        outgoing = [o if o.session is None or i in keep else dataclasses.replace(o, session=None)
                    for i, o in enumerate(outgoing)]
        items = self.core.store.enqueue_many(outgoing) if outgoing else []
        for peer, state in self.states.items():
            self.core.cache_session(peer, state)
        for o in outgoing:
            if o.contact is not None:
                self.core.cache_contact(o.contact)
        return items


def _target_ours(core: ClientCore, cid: int, peer: bytes, target: bytes, *,
                 ours: bool) -> None:
    msg = core.store.get_message(cid, target)
    if msg is None or msg.deleted_at_ms is not None or (ours and not msg.outgoing):
        raise ClientError(f"message {target.hex()} is not "
                          f"{'one of our messages' if ours else 'in this conversation'}")


@dataclass(slots=True)
class _Prepared:
    """One encrypted intent before its ``Outgoing`` is built (the session goes only
    into each peer's last row of the batch)."""

    peer: bytes
    entry: OutboxEntry
    history: HistoryOp | None
    ref: MessageRef
    event: Event | None


def _prepare(core: ClientCore, batch: _Batch, intent: Intent, now_ms: int) -> _Prepared:
    _, outbound = core.sendable(intent.peer)
    peer = intent.peer
    mid = intent.message_id if isinstance(intent, SendFile) else core.rng(16)
    cid = core.conversation_id(peer, now_ms=now_ms)
    inner: InnerMessage
    op: HistoryOp | None = None
    new_message = False
    timer_event: Event | None = None
    match intent:
        case SendText(text=text, reply_to=reply_to):
            inner = Text(message_id=mid, sent_at_ms=now_ms, text=text, reply_to=reply_to)
            op = NewMessage(conversation_id=cid, message_id=mid, sender=None,
                            sent_at_ms=now_ms, body=text, reply_to=reply_to)
            new_message = True
        case SendEdit(target=target, text=text):
            _target_ours(core, cid, peer, target, ours=True)
            inner = Edit(message_id=mid, sent_at_ms=now_ms, target=target, text=text)
            op = EditMessage(conversation_id=cid, target=target, editor=None, text=text,
                             edited_at_ms=now_ms)
        case SendReaction(target=target, emoji=emoji, remove=remove):
            _target_ours(core, cid, peer, target, ours=False)
            inner = Reaction(message_id=mid, sent_at_ms=now_ms, target=target, emoji=emoji,
                             remove=remove)
            op = React(conversation_id=cid, target=target, reactor=None, emoji=emoji,
                       remove=remove, at_ms=now_ms)
        case SendDelete(target=target):
            _target_ours(core, cid, peer, target, ours=True)
            inner = Delete(message_id=mid, sent_at_ms=now_ms, target=target,
                           scope=DeleteScope.FOR_EVERYONE)
            op = DeleteMessage(conversation_id=cid, target=target, by=None,
                               scope=DeleteScope.FOR_EVERYONE, at_ms=now_ms)
        case SendReceipt(kind=kind, message_ids=ids):
            inner = Receipt(message_id=mid, sent_at_ms=now_ms, kind=kind, message_ids=ids)
            if kind is ReceiptKind.READ:
                op = UpdateStatus(conversation_id=cid, message_ids=ids,
                                  status=MessageStatus.READ, by=None, at_ms=now_ms)
        case SendProfile(display_name=name, avatar_manifest=avatar):
            inner = Profile(message_id=mid, sent_at_ms=now_ms, display_name=name,
                            avatar_manifest=avatar)
        case SendDisappearingTimer(timer_ms=timer_ms):
            inner = DisappearingTimer(message_id=mid, sent_at_ms=now_ms, timer_ms=timer_ms)
            op = SetExpireTimer(conversation_id=cid, timer_ms=timer_ms, by=None, at_ms=now_ms)
            timer_event = DisappearingTimerChanged(peer=peer, conversation_id=cid,
                                                   timer_ms=timer_ms, by_peer=False)
        case SendFile(manifest=manifest, caption=caption):
            inner = File(message_id=mid, sent_at_ms=now_ms, manifest=manifest,
                         caption=caption)
            op = NewMessage(conversation_id=cid, message_id=mid, sender=None,
                            sent_at_ms=now_ms, kind=MessageKind.FILE, body=caption,
                            attachment=manifest)
            new_message = True
    blob, _ = batch.encrypt(peer, inner)
    entry = batch.entry(outbound, blob, now_ms)
    ref = MessageRef(peer=peer, conversation_id=cid, message_id=mid,
                     client_msg_id=entry.client_msg_id)
    event: Event | None = MessageStatusChanged(
        peer=peer, conversation_id=cid, message_id=mid,
        status=MessageStatus.PENDING) if new_message else timer_event
    return _Prepared(peer, entry, op, ref, event)


def _split_receipts(intents: Sequence[Intent]) -> list[Intent]:
    out: list[Intent] = []
    for intent in intents:
        if isinstance(intent, SendReceipt) and len(intent.message_ids) > L.MAX_RECEIPT_IDS:
            ids = intent.message_ids
            out += [dataclasses.replace(intent, message_ids=ids[i:i + L.MAX_RECEIPT_IDS])
                    for i in range(0, len(ids), L.MAX_RECEIPT_IDS)]
        else:
            out.append(intent)
    return out


def submit(core: ClientCore, intents: Sequence[Intent], *, now_ms: int,
           quiet: bool = False) -> Submitted:
    """Encrypt and store *intents* in one transaction; refusals are per intent.

    With *quiet* (automatic receipts), intents for contacts that cannot receive are
    dropped without a result.
    """
    if quiet:
        intents = _split_receipts(intents)
    batch = _Batch(core)
    results: list[MessageRef | PigeonError | None] = []
    prepared: list[_Prepared] = []
    events: list[Event] = []
    slots: list[int] = []
    for intent in intents:
        try:
            p = _prepare(core, batch, intent, now_ms)
        except PigeonError as exc:
            results.append(None if quiet else exc)
            continue
        slots.append(len(results))
        results.append(p.ref if p.history is not None else None)
        prepared.append(p)
        if p.event is not None:
            events.append(p.event)
    # Only each peer's last row carries the session: the batch's final state for it.
    last = {p.peer: i for i, p in enumerate(prepared)}
    final = {i: SessionUpdate(peer=peer, state=batch.states[peer]) for peer, i in last.items()}
    outgoing = [Outgoing(entry=p.entry, history=p.history, session=final.get(i))
                for i, p in enumerate(prepared)]
    try:
        items = batch.commit(outgoing)
    except PigeonError as exc:
        for i in slots:
            results[i] = exc
        return Submitted(results=results)
    return Submitted(results=results, items=items, events=events)


# --- contacts: invitation, acceptance, mailbox rotation ------------------------------------


def start_contact(core: ClientCore, verified: VerifiedBundle, mailbox_id: bytes,
                  capability: bytes, *, relay_url: str | None, now_ms: int,
                  ) -> tuple[list[OutboxItem], list[Event]]:
    me = core.identity
    peer = verified.account_id
    if peer == me.account_id:
        raise ClientError("cannot add our own account as a contact")
    if verified.contact_mailbox is None:
        raise ClientError(f"account {peer.hex()} has no contact mailbox on this relay")
    request = ContactRequest(account_id=me.account_id, mailbox_id=mailbox_id,
                             capability=capability, relay_url=relay_url,
                             display_name=core.display_name(),
                             rotations=tuple(r.to_bytes() for r in me.rotations))
    init = initiate(me.key_pair, verified.bundle, pad_message(request.encode()), rng=core.rng)
    inbound = PairwiseMailbox(mailbox_id=mailbox_id, direction=MailboxDirection.INBOUND,
                              capability=capability, created_at_ms=now_ms)
    old = core.contact(peer)
    kept = () if old is None else tuple(
        dataclasses.replace(m, retired_at_ms=m.retired_at_ms or now_ms)
        for m in old.mailboxes if m.direction is MailboxDirection.INBOUND)
    contact = Contact(account_id=peer, state=ContactState.INVITED, identity=verified.identity,
                      rotation_chain=verified.rotation_bytes,
                      profile_name=None if old is None else old.profile_name,
                      mailboxes=(*kept, inbound),
                      created_at_ms=now_ms if old is None else old.created_at_ms,
                      updated_at_ms=now_ms)
    batch = _Batch(core)
    entry = batch.entry(verified.contact_mailbox, init.message, now_ms)
    batch.states[peer] = init.session
    items = batch.commit([Outgoing(entry=entry, contact=contact,
                                   session=SessionUpdate(peer=peer, state=init.session))])
    return items, []


def accept(core: ClientCore, peer: bytes, mailbox_id: bytes, capability: bytes, *,
           now_ms: int) -> tuple[list[OutboxItem], list[Event]]:
    contact = core.contact(peer)
    if contact is None:
        raise UnknownContact(peer)
    if contact.state is not ContactState.PENDING or contact.outbound is None:
        raise ContactNotReady(peer, contact.state.name)
    inbound = PairwiseMailbox(mailbox_id=mailbox_id, direction=MailboxDirection.INBOUND,
                              capability=capability, created_at_ms=now_ms)
    accepted = dataclasses.replace(contact, state=ContactState.ACCEPTED,
                                   mailboxes=(*contact.mailboxes, inbound),
                                   updated_at_ms=now_ms)
    batch = _Batch(core)
    announce = MailboxAnnouncement(message_id=core.rng(16), sent_at_ms=now_ms,
                                   mailbox_id=mailbox_id, capability=capability)
    blob, state = batch.encrypt(peer, announce)
    outgoing = [Outgoing(entry=batch.entry(contact.outbound, blob, now_ms), contact=accepted,
                         session=SessionUpdate(peer=peer, state=state))]
    name = core.display_name()
    if name is not None:
        profile = Profile(message_id=core.rng(16), sent_at_ms=now_ms, display_name=name,
                          avatar_manifest=core.avatar_manifest())
        blob, state = batch.encrypt(peer, profile)
        outgoing.append(Outgoing(entry=batch.entry(contact.outbound, blob, now_ms),
                                 session=SessionUpdate(peer=peer, state=state)))
    items = batch.commit(outgoing)
    core.conversation_id(peer, now_ms=now_ms)
    return items, [ContactAccepted(peer=peer, profile_name=contact.profile_name,
                                   by_peer=False)]


def rotate_mailbox(core: ClientCore, peer: bytes, mailbox_id: bytes, capability: bytes, *,
                   now_ms: int) -> list[OutboxItem]:
    contact = core.require_sendable(peer)
    old = contact.inbound
    assert old is not None and contact.outbound is not None
    new = PairwiseMailbox(mailbox_id=mailbox_id, direction=MailboxDirection.INBOUND,
                          capability=capability, created_at_ms=now_ms)
    mailboxes = tuple(dataclasses.replace(m, retired_at_ms=now_ms) if m is old else m
                      for m in contact.mailboxes)
    updated = dataclasses.replace(contact, mailboxes=(*mailboxes, new), updated_at_ms=now_ms)
    batch = _Batch(core)
    inner = MailboxRotation(message_id=core.rng(16), sent_at_ms=now_ms,
                            old_mailbox_id=old.mailbox_id, mailbox_id=mailbox_id,
                            capability=capability)
    blob, state = batch.encrypt(peer, inner)
    return batch.commit([Outgoing(entry=batch.entry(contact.outbound, blob, now_ms),
                                  contact=updated,
                                  session=SessionUpdate(peer=peer, state=state))])


def announce_identity(core: ClientCore, *, now_ms: int, peers: Sequence[bytes] | None = None,
                      ) -> tuple[list[OutboxItem], list[bytes]]:
    """Tell contacts that our identity key rotated: an ``IdentityRotated`` carrying our
    whole rotation chain over each pairwise session, all in one transaction. *peers*:
    these contacts (default: every accepted or blocked one). Returns the items and the
    contacts we may not write to now (blocked, an identity change of theirs not
    acknowledged, no session), to be told once we may."""
    me = core.identity
    rotations = tuple(r.to_bytes() for r in me.rotations)
    if not rotations:
        return [], []
    if peers is None:
        peers = [c.account_id for state in (ContactState.ACCEPTED, ContactState.BLOCKED)
                 for c in core.contacts(state)]
    batch = _Batch(core)
    outgoing: list[Outgoing] = []
    waiting: list[bytes] = []
    for peer in peers:
        if core.contact(peer) is None:
            continue  # deleted since
        try:
            _, outbound = core.sendable(peer)
            inner = IdentityRotated(message_id=core.rng(16), sent_at_ms=now_ms,
                                    rotations=rotations)
            blob, state = batch.encrypt(peer, inner)
        except ClientError:  # ContactBlocked, ContactNotReady, IdentityChangeUnacknowledged
            waiting.append(peer)
            continue
        outgoing.append(Outgoing(entry=batch.entry(outbound, blob, now_ms),
                                 session=SessionUpdate(peer=peer, state=state)))
    return batch.commit(outgoing), waiting


def ephemeral(core: ClientCore, peer: bytes, *, typing: bool | None,
              presence: PresenceState | None, now_ms: int,
              ) -> tuple[bytes, bytes, tuple[bytes, bytes]] | None:
    try:
        contact = core.require_sendable(peer)
    except ClientError:
        return None
    assert contact.outbound is not None
    inner: InnerMessage
    if typing is not None:
        inner = Typing(message_id=core.rng(16), sent_at_ms=now_ms, active=typing)
    elif presence is not None:
        inner = Presence(message_id=core.rng(16), sent_at_ms=now_ms, state=presence)
    else:
        raise ValueError("give typing or presence")
    batch = _Batch(core)
    blob, state = batch.encrypt(peer, inner)
    # Persist the state before the bytes leave: a message key is never used twice.
    core.store.store_session(peer, state)
    core.cache_session(peer, state)
    return core.rng(16), blob, (contact.outbound.mailbox_id, contact.outbound.capability)


# --- outbox results ---------------------------------------------------------------------


def _status_event(core: ClientCore, item: OutboxItem, status: MessageStatus,
                  reason: str | None) -> Event | None:
    if item.message is None:
        return None
    cid, mid = item.message
    peer = core.conversation_peer(cid)
    if peer is None:
        return None
    return MessageStatusChanged(peer=peer, conversation_id=cid, message_id=mid,
                                status=status, reason=reason)


def sent(core: ClientCore, items: Sequence[OutboxItem], *, now_ms: int) -> list[Event]:
    done = core.store.mark_sent_many([i.client_msg_id for i in items], now_ms=now_ms)
    events = [_status_event(core, item, MessageStatus.SENT, None)
              for item, ok in zip(items, done, strict=True) if ok]
    return [e for e in events if e is not None]


def failed(core: ClientCore, item: OutboxItem, *, reason: str, now_ms: int) -> list[Event]:
    if not core.store.mark_failed(item.client_msg_id, reason=reason, now_ms=now_ms):
        return []
    event = _status_event(core, item, MessageStatus.FAILED, reason)
    return [] if event is None else [event]


def retry(core: ClientCore, client_msg_id: bytes, *, attempts: int, error: str,
          now_ms: int, not_before_ms: int = 0) -> int:
    """Record a failed attempt; returns when to try again."""
    delay = max(retry_delay_ms(attempts, core.rng), not_before_ms)
    core.store.record_attempt(client_msg_id, retry_at_ms=now_ms + delay, error=error)
    return now_ms + delay
