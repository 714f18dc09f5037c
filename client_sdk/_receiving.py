"""The receiving side of :class:`~client_sdk.core.ClientCore`.

A ``Delivery`` is mapped by its mailbox id, with no trial decryption:

* our **contact mailbox** carries PQXDH initiations: ``accept`` finds the session by
  the prekeys the initiation names; the contact request inside names the initiator's
  account (checked against the authenticated identity) and its pairwise mailbox;
* a **pairwise mailbox** of ours maps to exactly one contact, hence one session;
* anything else (a mailbox we no longer know) is acked and dropped.

Every envelope of a batch is decrypted against an overlay of states, then all their
effects are stored with one ``commit_receive_many``; events are emitted and envelopes
acked only after it returned. An envelope whose content is bad (any ``PigeonError``:
replay, tampering, a duplicate whose keys are gone, a malformed inner message) is
acked and dropped with a log line; a duplicate envelope is recognized by
``envelopes_seen`` (one read per batch) before decryption and only acked. If the batch
commit fails, each envelope is retried alone; one that still fails is left unacked (the
relay redelivers it after a reconnect).

Simultaneous initiation (both sides invited each other): the session initiated by the
**smaller account id** (bytewise) is kept. The larger side, still INVITED, adopts the
peer's session and answers with its own mailbox (a ``MailboxAnnouncement`` queued in
the same transaction as the receipt); the smaller side ignores the peer's initiation
and waits for that announcement. An initiation never replaces the session of an
ACCEPTED contact (nor a BLOCKED one); replays never get this far (``accept`` rejects
them).
"""

from __future__ import annotations

import dataclasses
import logging
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Protocol

import msgpack

from pigeon_crypto.errors import PigeonError
from pigeon_crypto.identity import IdentityPublicKey, IdentityRotation, verify_rotation_chain
from pigeon_crypto.padding import pad_message, unpad_message
from pigeon_crypto.pqxdh import Accepted, accept
from pigeon_crypto.ratchet import RatchetState
from protocol.errors import RemoteProtocolError, UnknownMessageKind
from protocol.inner import (
    Delete,
    DeleteScope,
    DisappearingTimer,
    Edit,
    File,
    GroupControl,
    GroupControlKey,
    GroupStateRequest,
    IdentityRotated,
    InnerMessage,
    MailboxAnnouncement,
    MailboxRotation,
    Presence,
    Profile,
    Reaction,
    Receipt,
    ReceiptKind,
    SenderKeyDistribution,
    SenderKeyRequest,
    Text,
    Typing,
    decode_inner,
)

from . import _groups_receive
from .events import (
    ContactAccepted,
    DisappearingTimerChanged,
    Event,
    IdentityChanged,
    InvitationReceived,
    MailboxRotated,
    MessageDeleted,
    MessageEdited,
    MessageReceived,
    MessagesLost,
    MessageStatusChanged,
    PresenceChanged,
    ProfileChanged,
    ReactionChanged,
    ReceiptReceived,
    TypingChanged,
)
from .files import file_info
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
    advance_status,
)
from .payloads import ContactRequest
from .store.records import (
    Contact,
    ContactState,
    EnvelopeRef,
    Incoming,
    MailboxDirection,
    OutboxEntry,
    OutboxItem,
    PairwiseMailbox,
    ReceiveOutcome,
    Recipient,
    SessionUpdate,
)

if TYPE_CHECKING:
    from .core import ClientCore

__all__ = ["DeliveryLike", "Received", "receive", "receive_ephemeral"]

_log = logging.getLogger("pigeon.sdk.receive")


class DeliveryLike(Protocol):
    """What :func:`receive` reads of a ``protocol.Delivery``."""

    @property
    def mailbox_id(self) -> bytes: ...

    @property
    def seq(self) -> int: ...

    @property
    def blob(self) -> bytes: ...


@dataclass(slots=True, kw_only=True)
class Received:
    """The outcome of a batch: events to emit, ``(mailbox, seqs)`` to ack, outbox rows
    queued by the receipt (to send), and how many envelopes were dropped as bad."""

    events: list[Event] = field(default_factory=list)
    acks: dict[bytes, list[int]] = field(default_factory=dict)
    items: list[OutboxItem] = field(default_factory=list)
    dropped: int = 0
    profile_followups: list[bytes] = field(default_factory=list)
    """Peers that must get our profile (a simultaneous initiation resolved their way)."""
    groups_changed: set[bytes] = field(default_factory=set)
    """Groups whose state or chains were stored: pending group blobs may now be placed."""
    group_forwards: list[tuple[bytes, bytes]] = field(default_factory=list)
    """``(group_id, state hash)`` to pass on to the other members (``_groups``)."""
    group_receipts: list[tuple[bytes, bytes, bytes]] = field(default_factory=list)
    """``(author, group_id, message_id)``: group messages to acknowledge to their author."""
    group_answers: list[tuple[bytes, bytes, bytes]] = field(default_factory=list)
    """``(requester, group_id, state hash)``: states members asked us for."""
    groups_waiting: set[bytes] = field(default_factory=set)
    """Groups in which a state now waits for its parent."""
    groups_back: set[bytes] = field(default_factory=set)
    """Groups we are a member of again: we ask the members for their chains."""
    chains_unknown: set[tuple[bytes, bytes]] = field(default_factory=set)
    """``(group_id, member)``: a member wrote on a chain we forgot: we ask it again."""

    def ack(self, mailbox_id: bytes, seq: int) -> None:
        self.acks.setdefault(mailbox_id, []).append(seq)


@dataclass(slots=True)
class _Pending:
    """One envelope's effects: stored together, then its events emitted."""

    incoming: Incoming
    events: list[Event] = field(default_factory=list)
    """Emitted if the history op APPLIED (or when there is none)."""
    advanced: bytes | None = None
    """The peer whose session this envelope advanced, when ``incoming`` does not carry
    the state (the batch writes only each peer's last state: see :func:`receive`)."""
    receipt_for: bytes | None = None
    title: tuple[bytes, str] | None = None
    followup_profile: bytes | None = None


class _Overlay:
    def __init__(self, core: ClientCore) -> None:
        self.core = core
        self.sessions: dict[bytes, RatchetState] = {}
        self.contacts: dict[bytes, Contact] = {}
        self.groups = _groups_receive.GroupBatch(core)

    def session(self, peer: bytes) -> RatchetState | None:
        return self.sessions.get(peer) or self.core.session(peer)

    def contact(self, peer: bytes) -> Contact | None:
        return self.contacts.get(peer) or self.core.contact(peer)


def receive(core: ClientCore, deliveries: Sequence[DeliveryLike], *, now_ms: int,
            ) -> Received:
    out = Received()
    overlay = _Overlay(core)
    pending: list[_Pending] = []
    refs: list[tuple[bytes, int]] = []
    # Redeliveries are recognized before decryption, with one read for the batch.
    seen = {(e.mailbox_id, e.seq) for e in core.store.envelopes_seen(
        [EnvelopeRef(mailbox_id=d.mailbox_id, seq=d.seq) for d in deliveries])}
    for d in deliveries:
        key = (d.mailbox_id, d.seq)
        if key in seen:
            out.ack(*key)
            continue
        seen.add(key)
        try:
            p = _process(core, overlay, d, now_ms)
        except PigeonError as exc:
            _log.info("dropped an undecryptable envelope (%s, seq %d): %s",
                      d.mailbox_id.hex()[:8], d.seq, type(exc).__name__)
            out.dropped += 1
            out.ack(*key)
            continue
        if p is None:
            out.dropped += 1
            out.ack(*key)
            continue
        pending.append(p)
        refs.append(key)
    if not pending:
        return out
    # One transaction: only each peer's last state needs writing, and it is the
    # overlay's (decrypted envelopes carry no state of their own: ``advanced``).
    last: dict[bytes, int] = {}
    for i, p in enumerate(pending):
        peer = p.advanced if p.incoming.session is None else p.incoming.session.peer
        if peer is not None:
            last[peer] = i
    final = {i: peer for peer, i in last.items()}
    incoming: list[Incoming] = []
    for i, p in enumerate(pending):
        one = p.incoming
        if i in final:
            peer = final[i]
            one = dataclasses.replace(one, session=SessionUpdate(
                peer=peer, state=overlay.sessions[peer]))
        elif one.session is not None:
            one = dataclasses.replace(one, session=None)
        incoming.append(one)
    try:
        results = core.store.commit_receive_many(incoming)
    except Exception:
        if len(deliveries) == 1:
            _log.exception("could not store an envelope; it stays unacked")
            return out
        # Isolate the failure: each delivery alone (from the committed states).
        for d in deliveries:
            single = receive(core, [d], now_ms=now_ms)
            out.events += single.events
            out.items += single.items
            out.dropped += single.dropped
            out.profile_followups += single.profile_followups
            out.groups_changed |= single.groups_changed
            out.group_forwards += single.group_forwards
            out.group_receipts += single.group_receipts
            out.group_answers += single.group_answers
            out.groups_waiting |= single.groups_waiting
            out.groups_back |= single.groups_back
            out.chains_unknown |= single.chains_unknown
            for mailbox_id, seqs in single.acks.items():
                out.acks.setdefault(mailbox_id, []).extend(seqs)
        return out
    for peer, state in overlay.sessions.items():
        core.cache_session(peer, state)
    for contact in overlay.contacts.values():
        core.cache_contact(contact)
    out.groups_changed = overlay.groups.changed
    out.group_forwards = overlay.groups.forwards
    out.group_receipts = overlay.groups.to_ack
    out.group_answers = overlay.groups.answers
    out.groups_waiting = overlay.groups.waiting
    out.groups_back = overlay.groups.back
    out.chains_unknown = overlay.groups.unknown_chains
    for p, key, result in zip(pending, refs, results, strict=True):
        out.ack(*key)
        if result.outcome is ReceiveOutcome.DUPLICATE_ENVELOPE:
            continue
        if p.incoming.reply is not None:
            item = core.store.get_outbox(p.incoming.reply.client_msg_id)
            if item is not None:
                out.items.append(item)
        if p.title is not None:
            core.store.set_conversation_title(core.conversation_id(p.title[0], now_ms=now_ms),
                                              p.title[1])
        if p.followup_profile is not None:
            out.profile_followups.append(p.followup_profile)
        if result.history is not None and result.history.value != "applied":
            continue
        out.events += p.events
        if p.receipt_for is not None and core.config.auto_delivery_receipts:
            assert isinstance(p.incoming.history, NewMessage)
            core.pending_receipts.setdefault(p.receipt_for, []).append(
                p.incoming.history.message_id)
    return out


def _process(core: ClientCore, overlay: _Overlay, d: DeliveryLike, now_ms: int,
             ) -> _Pending | None:
    envelope = EnvelopeRef(mailbox_id=d.mailbox_id, seq=d.seq)
    mailbox = core.contact_mailbox
    if mailbox is not None and d.mailbox_id == mailbox[0]:
        return _initiation(core, overlay, envelope, d.blob, now_ms)
    contact = core.contact_for_mailbox(d.mailbox_id)
    if contact is None:
        _log.info("delivery on an unknown mailbox %s dropped", d.mailbox_id.hex()[:8])
        return None
    contact = overlay.contact(contact.account_id) or contact
    peer = contact.account_id
    overlay.groups.relay_ms = getattr(d, "received_at_ms", None)
    group_path = _groups_receive.blob_path(d.blob)  # not a ratchet message: group bytes
    if group_path is not None:
        if contact.state is not ContactState.ACCEPTED:
            return None
        group_in, group_events = group_path(core, overlay.groups, peer, envelope, d.blob,
                                            now_ms=now_ms)
        return _Pending(group_in, events=group_events)
    state = overlay.session(peer)
    if state is None:
        return None
    dec = state.decrypt(d.blob, now_ms=now_ms)
    overlay.sessions[peer] = dec.state
    incoming = Incoming(envelope=envelope, received_at_ms=now_ms)
    pending = _Pending(incoming, advanced=peer)
    plaintext = unpad_message(dec.plaintext)
    if contact.state in (ContactState.BLOCKED, ContactState.PENDING):
        return pending  # advance the session, show nothing
    try:
        inner = decode_inner(plaintext)
    except UnknownMessageKind:
        message_id = _raw_message_id(plaintext)
        if message_id is None:
            return pending
        cid = core.conversation_id(peer, now_ms=now_ms)
        op = NewMessage(conversation_id=cid, message_id=message_id, sender=peer,
                        sent_at_ms=now_ms, received_at_ms=now_ms, kind=MessageKind.UNSUPPORTED)
        pending.incoming = dataclasses.replace(incoming, history=op)
        pending.events.append(MessageReceived(
            peer=peer, conversation_id=cid, message_id=message_id,
            kind=MessageKind.UNSUPPORTED, text=None, sent_at_ms=now_ms, received_at_ms=now_ms))
        return pending
    except RemoteProtocolError:
        _log.info("malformed inner message from %s dropped", peer.hex()[:8])
        return pending
    return _apply_inner(core, overlay, contact, pending, inner, now_ms)


def _raw_message_id(plaintext: bytes) -> bytes | None:
    """The message id of an inner message of an unknown kind (for the placeholder)."""
    try:
        obj = msgpack.unpackb(plaintext, raw=False, strict_map_key=False, use_list=False,
                              max_ext_len=0)
        value = obj[2][1]
    except Exception:
        return None
    return value if type(value) is bytes and len(value) == 16 else None


def _apply_inner(core: ClientCore, overlay: _Overlay, contact: Contact, pending: _Pending,
                 inner: InnerMessage, now_ms: int) -> _Pending:
    peer = contact.account_id
    op: HistoryOp | None = None
    sent = min(inner.sent_at_ms, now_ms)

    def cid() -> int:
        return core.conversation_id(peer, now_ms=now_ms)

    match inner:
        case Text(text=text, reply_to=reply_to):
            op = NewMessage(conversation_id=cid(), message_id=inner.message_id, sender=peer,
                            sent_at_ms=inner.sent_at_ms, received_at_ms=now_ms, body=text,
                            reply_to=reply_to)
            pending.events.append(MessageReceived(
                peer=peer, conversation_id=cid(), message_id=inner.message_id,
                kind=MessageKind.TEXT, text=text, reply_to=reply_to, sent_at_ms=sent,
                received_at_ms=now_ms))
            pending.receipt_for = peer
        case File(manifest=manifest, caption=caption, reply_to=reply_to):
            op = NewMessage(conversation_id=cid(), message_id=inner.message_id, sender=peer,
                            sent_at_ms=inner.sent_at_ms, received_at_ms=now_ms,
                            kind=MessageKind.FILE, body=caption, attachment=manifest,
                            reply_to=reply_to)
            pending.events.append(MessageReceived(
                peer=peer, conversation_id=cid(), message_id=inner.message_id,
                kind=MessageKind.FILE, text=caption, attachment=manifest,
                file=file_info(manifest), reply_to=reply_to, sent_at_ms=sent,
                received_at_ms=now_ms))
            pending.receipt_for = peer
        case Edit(target=target, text=text):
            op = EditMessage(conversation_id=cid(), target=target, editor=peer, text=text,
                             edited_at_ms=inner.sent_at_ms)
            pending.events.append(MessageEdited(peer=peer, conversation_id=cid(),
                                                message_id=target, text=text,
                                                edited_at_ms=inner.sent_at_ms))
        case Reaction(target=target, emoji=emoji, remove=remove):
            op = React(conversation_id=cid(), target=target, reactor=peer, emoji=emoji,
                       remove=remove, at_ms=inner.sent_at_ms)
            pending.events.append(ReactionChanged(peer=peer, conversation_id=cid(),
                                                  message_id=target, emoji=emoji,
                                                  removed=remove))
        case Delete(target=target, scope=DeleteScope.FOR_EVERYONE):
            op = DeleteMessage(conversation_id=cid(), target=target, by=peer,
                               scope=DeleteScope.FOR_EVERYONE, at_ms=inner.sent_at_ms)
            pending.events.append(MessageDeleted(peer=peer, conversation_id=cid(),
                                                 message_id=target))
        case Receipt(group_id=bytes()):
            write, group_events = _groups_receive.group_receipt(core, overlay.groups, peer,
                                                                inner, now_ms=now_ms)
            pending.incoming = dataclasses.replace(pending.incoming, group=write)
            pending.events += group_events
        case Receipt(kind=kind, message_ids=ids):
            status = MessageStatus.READ if kind is ReceiptKind.READ else MessageStatus.DELIVERED
            op = UpdateStatus(conversation_id=cid(), message_ids=ids, status=status, by=peer,
                              at_ms=now_ms)
            pending.events.append(ReceiptReceived(peer=peer, kind=kind, message_ids=ids))
            conversation_id = cid()
            ours = core.store.outgoing_statuses(conversation_id, ids)
            pending.events += [
                MessageStatusChanged(peer=peer, conversation_id=conversation_id,
                                     message_id=mid, status=status)
                for mid in ids
                if mid in ours and advance_status(ours[mid], status, outgoing=True) is not None]
        case DisappearingTimer(timer_ms=timer_ms):
            op = SetExpireTimer(conversation_id=cid(), timer_ms=timer_ms, by=peer, at_ms=sent)
            pending.events.append(DisappearingTimerChanged(
                peer=peer, conversation_id=cid(), timer_ms=timer_ms, by_peer=True))
        case Typing(active=active):
            pending.events.append(TypingChanged(peer=peer, active=active))
        case Presence(state=state):
            pending.events.append(PresenceChanged(peer=peer, state=state))
        case Profile(display_name=name, avatar_manifest=avatar):
            updated = dataclasses.replace(contact, profile_name=name or None,
                                          avatar_manifest=avatar, updated_at_ms=now_ms)
            overlay.contacts[peer] = updated
            pending.incoming = dataclasses.replace(pending.incoming, contact=updated)
            pending.title = (peer, name) if name else None
            pending.events.append(ProfileChanged(peer=peer, display_name=name or None,
                                                 avatar_manifest=avatar))
        case MailboxAnnouncement(mailbox_id=mailbox_id, capability=capability,
                                 relay_url=relay_url):
            was_invited = contact.state is ContactState.INVITED
            updated = _set_outbound(contact, mailbox_id, capability, relay_url, now_ms)
            if was_invited:
                updated = dataclasses.replace(updated, state=ContactState.ACCEPTED)
                pending.events.append(ContactAccepted(peer=peer,
                                                      profile_name=contact.profile_name,
                                                      by_peer=True))
            overlay.contacts[peer] = updated
            pending.incoming = dataclasses.replace(pending.incoming, contact=updated)
        case MailboxRotation(old_mailbox_id=old_id, mailbox_id=mailbox_id,
                             capability=capability, relay_url=relay_url):
            current = contact.outbound
            if current is not None and current.mailbox_id == old_id:
                updated = _set_outbound(contact, mailbox_id, capability, relay_url, now_ms)
                overlay.contacts[peer] = updated
                pending.incoming = dataclasses.replace(pending.incoming, contact=updated)
                pending.events.append(MailboxRotated(peer=peer))
        case IdentityRotated(rotations=raw):
            updated, change = _announced_identity(contact, raw, now_ms)
            if change is not None:
                overlay.contacts[peer] = updated
                pending.incoming = dataclasses.replace(pending.incoming, contact=updated)
                pending.events.append(change)
        case (GroupControl() | GroupControlKey() | GroupStateRequest()
              | SenderKeyDistribution() | SenderKeyRequest()):
            write, group_events = _groups_receive.apply_inner(core, overlay.groups, peer, inner,
                                                              now_ms=now_ms)
            pending.incoming = dataclasses.replace(pending.incoming, group=write)
            pending.events += group_events
        case _:
            pass  # FOR_ME deletes (other devices' business)
    if op is not None:
        pending.incoming = dataclasses.replace(pending.incoming, history=op)
    return pending


def _announced_identity(contact: Contact, raw: Sequence[bytes], now_ms: int,
                        ) -> tuple[Contact, IdentityChanged | None]:
    """A contact's ``IdentityRotated``: taken only as a signed rotation, i.e. a chain
    that verifies for the contact's account and passes through the key we knew (anything
    else, which its own session cannot justify, is dropped: ``refresh_contact`` fetches
    the bundle and decides with the user's acknowledgement)."""
    try:
        rotations = tuple(IdentityRotation.from_bytes(r) for r in raw)
        initial = rotations[0].old
        current = verify_rotation_chain(contact.account_id, initial, rotations)
    except PigeonError:
        _log.info("identity rotation from %s with an invalid chain dropped",
                  contact.account_id.hex()[:8])
        return contact, None
    updated, change = identity_update(contact, current, initial, rotations, b"".join(raw))
    if not isinstance(change, IdentityChanged):
        return updated, None
    if not change.rotated:
        _log.info("identity rotation from %s not chained to the key we know dropped",
                  contact.account_id.hex()[:8])
        return contact, None
    return dataclasses.replace(updated, updated_at_ms=now_ms), change


def _set_outbound(contact: Contact, mailbox_id: bytes, capability: bytes,
                  relay_url: str | None, now_ms: int) -> Contact:
    """Write to this mailbox from now on (the previous outbound one is forgotten)."""
    kept = tuple(m for m in contact.mailboxes if m.direction is MailboxDirection.INBOUND)
    new = PairwiseMailbox(mailbox_id=mailbox_id, direction=MailboxDirection.OUTBOUND,
                          capability=capability, relay_url=relay_url, created_at_ms=now_ms)
    return dataclasses.replace(contact, mailboxes=(*kept, new), updated_at_ms=now_ms)


# --- first contact ------------------------------------------------------------------------


def identity_update(contact: Contact, new: IdentityPublicKey, initial: IdentityPublicKey,
                    rotations: Sequence[IdentityRotation], rotation_bytes: bytes,
                    ) -> tuple[Contact, Event | None]:
    """Apply a (verified) identity for *contact*: unchanged, a signed rotation from the
    key we knew, or a change we cannot link to it (needs the user's acknowledgement)."""
    old = contact.identity
    if old is None or old.same_key(new):
        return dataclasses.replace(contact, identity=new, rotation_chain=rotation_bytes), None
    chain = [initial, *(r.new for r in rotations)][:-1]
    rotated = any(k.same_key(old) for k in chain)
    updated = dataclasses.replace(
        contact, identity=new, rotation_chain=rotation_bytes,
        identity_changed=contact.identity_changed or not rotated,
        verified=contact.verified and rotated)
    return updated, IdentityChanged(peer=contact.account_id, rotated=rotated,
                                    requires_ack=not rotated)


def _initiation(core: ClientCore, overlay: _Overlay, envelope: EnvelopeRef, blob: bytes,
                now_ms: int) -> _Pending | None:
    me = core.identity
    accepted = accept(me.key_pair, core.store, blob, now_ms=now_ms)
    consume_only = _Pending(Incoming(envelope=envelope, received_at_ms=now_ms,
                                     accepted=accepted))
    try:
        request = ContactRequest.decode(unpad_message(accepted.payload))
        rotations = tuple(IdentityRotation.from_bytes(r) for r in request.rotations)
        initial = rotations[0].old if rotations else accepted.peer
        current = verify_rotation_chain(request.account_id, initial, rotations)
    except PigeonError:
        _log.info("initiation with an invalid contact request dropped")
        return consume_only
    if not current.same_key(accepted.peer) or request.account_id == me.account_id:
        _log.info("initiation claiming an account it does not own dropped")
        return consume_only
    peer = request.account_id
    existing = overlay.contact(peer)
    outbound = PairwiseMailbox(mailbox_id=request.mailbox_id,
                               direction=MailboxDirection.OUTBOUND,
                               capability=request.capability, relay_url=request.relay_url,
                               created_at_ms=now_ms)
    rotation_bytes = b"".join(request.rotations)
    if existing is None or existing.state is ContactState.PENDING:
        contact = Contact(account_id=peer, state=ContactState.PENDING, identity=accepted.peer,
                          rotation_chain=rotation_bytes, profile_name=request.display_name,
                          mailboxes=(outbound,),
                          created_at_ms=now_ms if existing is None else existing.created_at_ms,
                          updated_at_ms=now_ms)
        events: list[Event] = []
        if existing is not None:
            contact, change = identity_update(
                dataclasses.replace(contact, identity=existing.identity), accepted.peer,
                initial, rotations, rotation_bytes)
            events += [change] if change else []
        overlay.sessions[peer] = accepted.session
        overlay.contacts[peer] = contact
        events.append(InvitationReceived(peer=peer, profile_name=request.display_name))
        return _Pending(dataclasses.replace(
            consume_only.incoming, contact=contact,
            session=SessionUpdate(peer=peer, state=accepted.session)), events=events)
    if existing.state is ContactState.INVITED and peer < me.account_id:
        return _adopt(core, overlay, existing, accepted, outbound, request, consume_only,
                      now_ms, initial, rotations, rotation_bytes)
    if existing.state is ContactState.ACCEPTED:
        updated, change = identity_update(existing, accepted.peer, initial, rotations,
                                          rotation_bytes)
        if change is not None:
            overlay.contacts[peer] = updated
            return _Pending(dataclasses.replace(consume_only.incoming, contact=updated),
                            events=[change])
    _log.info("initiation from %s ignored (contact is %s)", peer.hex()[:8],
              existing.state.name)
    return consume_only


def _adopt(core: ClientCore, overlay: _Overlay, existing: Contact, accepted: Accepted,
           outbound: PairwiseMailbox, request: ContactRequest, consume_only: _Pending,
           now_ms: int, initial: IdentityPublicKey, rotations: Sequence[IdentityRotation],
           rotation_bytes: bytes) -> _Pending:
    """Simultaneous initiation, the peer's id is smaller: its session wins. Announce our
    (already created) inbound mailbox on it, in the same transaction."""
    peer = existing.account_id
    inbound = existing.inbound
    if inbound is None:
        return consume_only
    announce = MailboxAnnouncement(message_id=core.rng(16), sent_at_ms=now_ms,
                                   mailbox_id=inbound.mailbox_id, capability=inbound.capability)
    enc = accepted.session.encrypt(pad_message(announce.encode()), rng=core.rng)
    reply = OutboxEntry(client_msg_id=core.rng(16),
                        recipients=(Recipient(mailbox_id=outbound.mailbox_id,
                                              capability=outbound.capability),),
                        blob=enc.message, created_at_ms=now_ms)
    contact, change = identity_update(existing, accepted.peer, initial, rotations,
                                      rotation_bytes)
    contact = dataclasses.replace(
        _set_outbound(contact, outbound.mailbox_id, outbound.capability, outbound.relay_url,
                      now_ms),
        state=ContactState.ACCEPTED, profile_name=request.display_name or contact.profile_name)
    overlay.sessions[peer] = enc.state
    overlay.contacts[peer] = contact
    events: list[Event] = [change] if change else []
    events.append(ContactAccepted(peer=peer, profile_name=contact.profile_name, by_peer=True))
    return _Pending(dataclasses.replace(
        consume_only.incoming, contact=contact, reply=reply,
        session=SessionUpdate(peer=peer, state=enc.state)), events=events,
        followup_profile=peer)


# --- ephemeral deliveries and notices ---------------------------------------------------------


def receive_ephemeral(core: ClientCore, mailbox_id: bytes, blob: bytes, *, now_ms: int,
                      ) -> list[Event]:
    contact = core.contact_for_mailbox(mailbox_id)
    if contact is None:
        return []
    peer = contact.account_id
    if _groups_receive.is_group_blob(blob):
        if contact.state is not ContactState.ACCEPTED:
            return []
        return _groups_receive.receive_ephemeral(core, peer, blob, now_ms=now_ms)
    state = core.session(peer)
    if state is None:
        return []
    try:
        dec = state.decrypt(blob, now_ms=now_ms)
        inner = decode_inner(unpad_message(dec.plaintext))
    except PigeonError:
        return []
    core.store.store_session(peer, dec.state)
    core.cache_session(peer, dec.state)
    if contact.state is not ContactState.ACCEPTED:
        return []
    if isinstance(inner, Typing):
        return [TypingChanged(peer=peer, active=inner.active)]
    if isinstance(inner, Presence):
        return [PresenceChanged(peer=peer, state=inner.state)]
    return []


def messages_expired(core: ClientCore, mailbox_id: bytes, count: int, up_to_seq: int,
                     ) -> list[Event]:
    contact = core.contact_for_mailbox(mailbox_id)
    return [MessagesLost(mailbox_id=mailbox_id,
                         peer=None if contact is None else contact.account_id,
                         count=count, up_to_seq=up_to_seq)]
