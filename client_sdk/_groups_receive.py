"""The receiving side of groups (see :mod:`client_sdk._groups` for the theory).

Called by :mod:`client_sdk._receiving` for what arrives on a contact's pairwise
mailbox: a ``GroupControl``, ``GroupControlKey``, ``GroupStateRequest``,
``SenderKeyDistribution`` or ``SenderKeyRequest`` inner message (inside the pairwise
session), a group blob
(:data:`~client_sdk._groups.GROUP_BLOB_PREFIX`, a sender-key ciphertext) or a sealed
control (:data:`~client_sdk._groups.SEALED_CONTROL_PREFIX`: held until its key comes,
or opened with the key that came first). Everything one envelope changes goes into its
``Incoming.group`` and is stored with the envelope in one transaction; a
:class:`GroupBatch` overlays the batch's uncommitted group changes.

A group blob is placed by ``(sender, chain id)``. It is decrypted only if the sender
is a member of the group's current state (and an admin, in a channel). A blob that
cannot be placed yet (its chain or its sender's membership comes from another
mailbox, in no common order) is kept pending and retried after every batch that
changed a group, for :data:`PENDING_TTL_MS`; a blob that fails verification is
dropped.
"""

from __future__ import annotations

import dataclasses
import hashlib
import logging
import struct
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Final, Protocol

from pigeon_crypto.errors import PigeonError
from pigeon_crypto.padding import unpad_message
from pigeon_crypto.sender_keys import SenderKeyDistribution as Distribution
from pigeon_crypto.sender_keys import SenderKeyRecord, UnknownSenderChain
from pigeon_crypto.signing import Purpose
from protocol.errors import RemoteProtocolError
from protocol.inner import (
    Delete,
    DeleteScope,
    DisappearingTimer,
    Edit,
    File,
    GroupControl,
    GroupControlKey,
    GroupStateRequest,
    InnerMessage,
    Reaction,
    Receipt,
    ReceiptKind,
    SenderKeyDistribution,
    SenderKeyRequest,
    Text,
    Typing,
    decode_inner,
)

from . import _channels
from ._group_state import reached
from ._groups import (
    GROUP_BLOB_PREFIX,
    MAX_SEALED_PADDED,
    SEALED_CONTROL_PREFIX,
    GroupView,
    change_event,
    conversation_id,
    open_sealed,
)
from .events import (
    DisappearingTimerChanged,
    Event,
    MessageDeleted,
    MessageEdited,
    MessageReceived,
    MessageStatusChanged,
    ReactionChanged,
    ReceiptReceived,
)
from .files import file_info
from .groups import GroupReceiptsChanged, GroupTypingChanged
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
from .store.group_records import (
    GroupWrite,
    PendingGroupBlob,
    SealedControlPart,
    SignedGroupState,
    StateStatus,
    StoredGroupState,
)
from .store.records import EnvelopeRef, Incoming, SenderKeyRecordUpdate

if TYPE_CHECKING:
    from .core import ClientCore

__all__ = ["GroupBatch", "apply_inner", "expire_sealed", "group_receipt", "receive_blob",
           "receive_ephemeral", "receive_sealed", "retry_pending"]

_log = logging.getLogger("pigeon.sdk.groups")

PENDING_TTL_MS: Final = 7 * 24 * 3600 * 1000
"""How long an unplaceable group blob is kept: longer than any reordering between
mailboxes, shorter than the relay's 30-day expiry."""
MAX_PENDING_BLOBS: Final = 10_000
"""Pending group blobs kept in all: bounds what contacts can make us store."""
MAX_PENDING_PER_SENDER: Final = 1_000
"""Pending group blobs kept per sender: one contact sending blobs we cannot place
(a stranger's chain ids, a group that does not exist) fills a tenth of the shared
limit at most (it takes ten such contacts to fill it)."""
MAX_SEALED_PARTS: Final = 10_000
"""Sealed blobs waiting for their key, in all (kept as long as pending blobs,
:data:`PENDING_TTL_MS`). Keys are bounded per sender only: a flood of blobs never
costs an authenticated key its place."""
MAX_SEALED_PER_SENDER: Final = 64
"""Halves of sealed changes held per sender (2 MiB of blobs at most): a contact that
floods us with blobs only keeps its own sealed changes from being held."""
MAX_SEALED_BLOB: Final = 1 + MAX_SEALED_PADDED + 16
"""The largest sealed control: the marker, the largest padded control a sender seals
and the GCM tag."""
_SEALED_SIZES: Final = frozenset(1 + (256 << i) + 16 for i in range(8))
"""The sizes a sealed blob can have: the marker, a padding bucket of 256 to 32,768
bytes (protocol §8.2) and the tag. Other blobs are dropped unheld."""
_HEADER: Final = struct.Struct(">BII")


class _NotYet(Exception):
    """The blob cannot be placed yet (kept pending)."""


@dataclass(slots=True)
class _Held:
    """How much of one kind the store holds, with what the batch added: per sender
    (counted from the store at the sender's first) and in all (counted at the first)."""

    what: str
    per_sender: int
    in_all: int
    count: Callable[[bytes | None], int]
    """The store's count: of one sender's, or (None) of those that count in all."""
    by: dict[bytes, int] = field(default_factory=dict)
    total: int | None = None

    def take(self, sender: bytes, *, counts_in_all: bool = True) -> bool:
        """Count one more from *sender* (False: too many held, drop it)."""
        held = self.by.get(sender)
        if held is None:
            held = self.count(sender)
        if held >= self.per_sender:
            _log.info("too many %s from %s; one dropped", self.what, sender.hex()[:8])
            return False
        if counts_in_all:
            if self.total is None:
                self.total = self.count(None)
            if self.total >= self.in_all:
                _log.info("too many %s held; one dropped", self.what)
                return False
            self.total += 1
        self.by[sender] = held + 1
        return True


@dataclass(slots=True)
class GroupBatch:
    """Group state as changed by the envelopes of one batch, not yet committed."""

    core: ClientCore
    views: dict[bytes, GroupView] = field(default_factory=dict)
    records: dict[tuple[bytes, bytes], SenderKeyRecord | None] = field(default_factory=dict)
    chains: dict[tuple[bytes, int], bytes] = field(default_factory=dict)
    changed: set[bytes] = field(default_factory=set)
    pending: _Held = field(init=False)
    """Pending group blobs held (:data:`MAX_PENDING_PER_SENDER`, :data:`MAX_PENDING_BLOBS`)."""
    relay_ms: int | None = None
    """When the relay stored the envelope being processed (``Delivery.received_at_ms``)."""
    forwards: list[tuple[bytes, bytes]] = field(default_factory=list)
    """``(group_id, state or subscription hash)``: what we pass on as the group's first
    admin."""
    to_ack: list[tuple[bytes, bytes, bytes]] = field(default_factory=list)
    """``(author, group_id, message_id)``: group messages to send a delivery receipt for."""
    receipts: dict[tuple[bytes, bytes], set[tuple[bytes, int]]] = field(default_factory=dict)
    """Receipts held per ``(group_id, message_id)`` of ours, with the batch's."""
    sealed: dict[tuple[bytes, bytes], SealedControlPart | None] = field(default_factory=dict)
    """Halves of sealed changes the batch added (None: used in the batch)."""
    sealed_held: _Held = field(init=False)
    """Halves of sealed changes held: per sender, and blobs in all
    (:data:`MAX_SEALED_PER_SENDER`, :data:`MAX_SEALED_PARTS`)."""
    waiting: set[bytes] = field(default_factory=set)
    """Groups in which the batch stored a state that waits for its parent."""
    answers: list[tuple[bytes, bytes, bytes]] = field(default_factory=list)
    """``(requester, group_id, state hash)``: states members asked us for."""
    back: set[bytes] = field(default_factory=set)
    """Groups we are a member of again, having left or been removed: we forgot every
    member's chain then, and ask for them (``SenderKeyRequest``)."""
    unknown_chains: set[tuple[bytes, bytes]] = field(default_factory=set)
    """``(group_id, member)``: a member of a group we are in wrote on a chain of its we
    no longer hold (we forgot it when we left): we ask that member for its chain."""

    def __post_init__(self) -> None:
        store = self.core.store
        self.pending = _Held(
            "pending group blobs", MAX_PENDING_PER_SENDER, MAX_PENDING_BLOBS,
            lambda sender: store.pending_group_blob_count(sender=sender))
        self.sealed_held = _Held(
            "halves of sealed group changes", MAX_SEALED_PER_SENDER, MAX_SEALED_PARTS,
            lambda sender: store.sealed_control_count(sender=sender, blobs=sender is None))

    def view(self, group_id: bytes) -> GroupView:
        found = self.views.get(group_id)
        if found is None:
            found = self.views[group_id] = GroupView.load(self.core, group_id)
        return found

    def record(self, group_id: bytes, sender: bytes) -> SenderKeyRecord | None:
        key = (group_id, sender)
        if key not in self.records:
            self.records[key] = self.core.store.load_sender_key_record(group_id, sender)
        return self.records[key]

    def sealed_part(self, sender: bytes, blob_hash: bytes) -> SealedControlPart | None:
        key = (sender, blob_hash)
        if key in self.sealed:
            return self.sealed[key]
        return self.core.store.sealed_control_part(sender, blob_hash)

    def keep_sealed(self, part: SealedControlPart) -> GroupWrite | None:
        """Keep one half until the other comes (None: too many held, dropped). Keys count
        per sender only: a flood of blobs never costs an authenticated key its place."""
        if not self.sealed_held.take(part.sender, counts_in_all=part.blob is not None):
            return None
        self.sealed[(part.sender, part.hash)] = part
        return GroupWrite(sealed_add=(part,))

    def chain_group(self, sender: bytes, chain_id: int) -> bytes | None:
        found = self.chains.get((sender, chain_id))
        return found if found is not None else self.core.store.group_for_chain(sender, chain_id)


# --- pairwise inner messages -------------------------------------------------------------------


def apply_inner(core: ClientCore, batch: GroupBatch, sender: bytes, inner: InnerMessage, *,
                now_ms: int) -> tuple[GroupWrite | None, list[Event]]:
    """A group message from *sender* that is not a group blob (pairwise): a
    ``GroupControl``, ``GroupControlKey``, ``GroupStateRequest``,
    ``SenderKeyDistribution`` or ``SenderKeyRequest``."""
    try:
        if isinstance(inner, GroupControl):
            return _control(core, batch, sender, inner, now_ms)
        if isinstance(inner, SenderKeyDistribution):
            return _distribution(batch, sender, inner), []
        if isinstance(inner, GroupControlKey):
            return _control_key(core, batch, sender, inner, now_ms)
        if isinstance(inner, GroupStateRequest):
            _state_request(batch, sender, inner)
            return None, []
        if isinstance(inner, SenderKeyRequest):
            return _key_request(batch, sender, inner), []
    except PigeonError as exc:
        _log.info("group message from %s dropped: %s", sender.hex()[:8], type(exc).__name__)
    return None, []


# --- sealed controls: one blob for every member, a pairwise key to each ----------------------


def receive_sealed(core: ClientCore, batch: GroupBatch, sender: bytes, envelope: EnvelopeRef,
                   blob: bytes, *, now_ms: int) -> tuple[Incoming, list[Event]]:
    """A sealed ``GroupControl`` on *sender*'s pairwise mailbox: opened if its key came
    first, else kept for the key."""
    incoming = Incoming(envelope=envelope, received_at_ms=now_ms)
    if len(blob) not in _SEALED_SIZES:
        _log.info("a sealed group change of a size no sender makes from %s dropped",
                  sender.hex()[:8])
        return incoming, []
    digest = hashlib.sha256(blob).digest()
    part = batch.sealed_part(sender, digest)
    if part is None:
        write = batch.keep_sealed(SealedControlPart(
            sender=sender, hash=digest, blob=blob, received_at_ms=_arrival(batch, now_ms)))
        return dataclasses.replace(incoming, group=write), []
    if part.key is None:
        return incoming, []  # the same blob again
    write, events = _unseal(core, batch, sender, blob, part, now_ms)
    return dataclasses.replace(incoming, group=write), events


def _arrival(batch: GroupBatch, now_ms: int) -> int:
    """When the relay stored the envelope being processed, never later than our clock
    (a relay's time in the future would keep a half from ever expiring)."""
    return min(batch.relay_ms or now_ms, now_ms)


def _control_key(core: ClientCore, batch: GroupBatch, sender: bytes, inner: GroupControlKey,
                 now_ms: int) -> tuple[GroupWrite | None, list[Event]]:
    key = inner.key + inner.seal_id
    part = batch.sealed_part(sender, inner.blob_hash)
    if part is None:
        return batch.keep_sealed(SealedControlPart(
            sender=sender, hash=inner.blob_hash, key=key,
            received_at_ms=_arrival(batch, now_ms))), []
    if part.blob is None:
        return None, []  # the same key again
    return _unseal(core, batch, sender, part.blob, dataclasses.replace(part, key=key, blob=None),
                   now_ms)


def _unseal(core: ClientCore, batch: GroupBatch, sender: bytes, blob: bytes,
            held: SealedControlPart, now_ms: int) -> tuple[GroupWrite, list[Event]]:
    """Open a sealed control with its key (in *held*, the half that came first, or the
    key just received) and take it as if *sender* had sent it pairwise, at the time the
    first half reached the relay; the held half goes either way."""
    digest = hashlib.sha256(blob).digest()
    batch.sealed[(sender, digest)] = None
    done = GroupWrite(sealed_done=((sender, digest),))
    key = held.key
    assert key is not None
    relay_ms = batch.relay_ms
    batch.relay_ms = min(held.received_at_ms, _arrival(batch, now_ms))
    try:
        inner = decode_inner(unpad_message(open_sealed(blob, key[:32], key[32:])))
        if not isinstance(inner, GroupControl):
            raise RemoteProtocolError("a sealed control that is not a GroupControl")
        write, events = _control(core, batch, sender, inner, now_ms)
    except PigeonError as exc:
        _log.info("sealed group change from %s dropped: %s", sender.hex()[:8],
                  type(exc).__name__)
        return done, []
    finally:
        batch.relay_ms = relay_ms
    if write is None:
        return done, events
    return dataclasses.replace(write, sealed_done=done.sealed_done), events


def _state_ok(core: ClientCore, view: GroupView, sender: bytes,
              signed: SignedGroupState) -> bool:
    """Whether to consider a state: verified against its signer's identity, or passed
    on by an admin who verified it (raises on a bad signature)."""
    st = signed.state
    if st.signer == core.account_id:
        return False  # our own state, sent back by someone: we hold it
    contact = core.contact(st.signer)
    if contact is not None and contact.identity is not None:
        contact.identity.verify(Purpose.GROUP_CONTROL, signed.encoded, signed.signature)
        return True
    # Signed by someone we have no session with (a channel's subscriber leaving, an
    # admin who is not our contact): only an admin may pass it on to us, having
    # verified it (forward_states, forward_winners).
    parent = None if st.parent is None else view.states.get(st.parent)
    admins = st.admins if parent is None else parent.signed.state.admins
    if sender == st.signer or sender not in admins:
        _log.info("group state signed by an unknown account dropped")
        return False
    return True


def _control(core: ClientCore, batch: GroupBatch, sender: bytes, inner: GroupControl,
             now_ms: int) -> tuple[GroupWrite | None, list[Event]]:
    signed = SignedGroupState.from_wire(inner.state, inner.signature)
    st = signed.state
    me = core.account_id
    view = batch.view(st.group_id)
    old = view.head
    was_active = view.active
    rows = []
    if _state_ok(core, view, sender, signed):
        invited = (not was_active and bool(inner.subscriptions)
                   and _channels.invited(core, sender, signed, inner.subscriptions))
        rows = view.absorb(signed, me, now_ms=batch.relay_ms or now_ms, invited=invited)
    record = view.converge(me, now_ms=now_ms) if rows else None
    taken, gone, passing = _channels.receive(core, view, sender, inner.subscriptions)
    if not rows and not taken:
        return None, []
    record = view.converge(me, now_ms=now_ms) or record
    batch.changed.add(view.group_id)
    if any(row.status is StateStatus.PENDING for row in rows):
        batch.waiting.add(view.group_id)
    for row in rows:
        st = row.signed.state
        reached_all = (inner.complete and sender == st.signer
                       and row.signed.hash == signed.hash)  # its signer wrote to everyone
        if (not reached_all and row.status is StateStatus.VALID and st.signer != me
                and st.admins and st.admins[0] == me):
            batch.forwards.append((view.group_id, row.signed.hash))
    batch.forwards += [(view.group_id, s.hash) for s in passing]
    events: list[Event] = []
    forget = drop = None
    if record is not None and (record.head != (old.hash if old else None)
                               or record.active != was_active):
        event = change_event(core, view, old, now_ms=now_ms)
        if was_active and not record.active and me not in event.removed:
            event = dataclasses.replace(event, removed=(*event.removed, me))
        elif not was_active and record.active and not event.created:
            event = dataclasses.replace(event, created=True, added=(me,))  # subscribed again
        if old is not None and not was_active and record.active:
            batch.back.add(record.group_id)
        events.append(event)
        if was_active and not record.active:
            forget = record.group_id
        elif _someone_left(old, view.head):
            drop = record.group_id
    others = [s for s in taken if s.sub.subscriber != me]
    if others:
        events.append(_channels.roster_event(core, view, sender, others, now_ms=now_ms))
        if any(not s.sub.subscribed for s in others):
            drop = view.group_id  # a subscriber left: our next post rotates
    return GroupWrite(group=record, states=tuple(rows), forget_keys=forget,
                      drop_outbound=drop if forget is None else None,
                      subscriptions=tuple(taken), subscriptions_gone=tuple(gone),
                      roster=view.roster_write() if taken else None), events


def _state_request(batch: GroupBatch, sender: bytes, inner: GroupStateRequest) -> None:
    """Answer (after the batch) with each requested state we hold that its signer sent,
    or should have sent, to *sender*: a member of its parent or of itself."""
    view = batch.view(inner.group_id)
    for digest in inner.hashes:
        row = view.states.get(digest)
        if (row is not None and row.status is StateStatus.VALID
                and sender in reached(view, row.signed.state)):
            batch.answers.append((sender, inner.group_id, digest))


def _key_request(batch: GroupBatch, sender: bytes, inner: SenderKeyRequest,
                 ) -> GroupWrite | None:
    """A member lacks our chain (it forgot it when it left, and is back): our next
    message sends it again, at its iteration then. Only to a member of our head: an
    ex-member gets nothing by asking.

    Deleting the share also forgets that the requester holds the chain, which rotation
    step 1 reads ("anyone who received it is no longer a member"). That is safe because
    every head change that drops a member drops our whole chain (``drop_outbound``), so
    a share is never what makes us rotate away from a member who left."""
    view = batch.view(inner.group_id)
    head = view.head
    if head is None or not view.active or sender not in view.audience():
        _log.info("a sender key request from a non-member dropped")
        return None
    return GroupWrite(unshare=((inner.group_id, sender),))


def _state_when(view: GroupView, at_ms: int) -> SignedGroupState | None:
    """The latest state on the head's line that we held at *at_ms* (None: the head,
    when none is that old). Who could receive a message we sent then is its audience: a
    member added later never got it and is not waited for (subscribers come from the
    current roster: it has no history)."""
    return next((row.signed for row in view.line() if row.received_at_ms <= at_ms), None)


def _someone_left(old: SignedGroupState | None, new: SignedGroupState | None) -> bool:
    return (old is not None and new is not None
            and not set(old.state.members) <= set(new.state.members))


def _distribution(batch: GroupBatch, sender: bytes, inner: SenderKeyDistribution,
                  ) -> GroupWrite | None:
    dist = Distribution.from_bytes(inner.distribution)
    group_id = inner.group_id
    known = batch.chain_group(sender, dist.chain_id)
    if known is not None and known != group_id:
        _log.info("a chain id reused across groups by %s dropped", sender.hex()[:8])
        return None
    record = (batch.record(group_id, sender) or SenderKeyRecord()).process_distribution(dist)
    batch.records[(group_id, sender)] = record
    batch.chains[(sender, dist.chain_id)] = group_id
    batch.changed.add(group_id)
    return GroupWrite(chains=((sender, dist.chain_id, group_id),),
                      sender_keys=(SenderKeyRecordUpdate(group_id=group_id, sender=sender,
                                                         record=record),))


def group_receipt(core: ClientCore, batch: GroupBatch, sender: bytes, receipt: Receipt, *,
                  now_ms: int) -> tuple[GroupWrite | None, list[Event]]:
    """A member's receipt (pairwise, with ``group_id``) for our group messages: store it,
    aggregate, and move a message to DELIVERED / READ once every other member did."""
    group_id = receipt.group_id
    assert group_id is not None
    me = core.account_id
    view = batch.view(group_id)
    head = view.head
    audience = view.audience()
    if head is None or sender not in audience or sender == me:
        return None, []
    cid = conversation_id(core, group_id, head.state.name, now_ms=now_ms)
    others = set(audience) - {me}
    kind = int(receipt.kind)
    rows: list[tuple[bytes, bytes, bytes, int, int]] = []
    events: list[Event] = [ReceiptReceived(peer=sender, kind=receipt.kind,
                                           message_ids=receipt.message_ids)]
    reached: dict[MessageStatus, list[bytes]] = {MessageStatus.READ: [],
                                                 MessageStatus.DELIVERED: []}
    audiences: dict[bytes | None, frozenset[bytes]] = {}  # per state, for this receipt
    for mid in receipt.message_ids:
        msg = core.store.get_message(cid, mid)
        if msg is None or not msg.outgoing:
            continue
        held = batch.receipts.get((group_id, mid))
        if held is None:
            held = batch.receipts[(group_id, mid)] = set(core.store.group_receipts(group_id,
                                                                                   mid))
        held.add((sender, kind))
        rows.append((group_id, mid, sender, kind, now_ms))
        then = _state_when(view, msg.sent_at_ms)
        key = None if then is None else then.hash
        readers = audiences.get(key)
        if readers is None:
            readers = audiences[key] = frozenset(others) & (
                audience if then is None else view.audience(then.state))
        delivered = {m for m, _ in held} & readers
        read = {m for m, k in held if k == int(ReceiptKind.READ)} & readers
        events.append(GroupReceiptsChanged(group_id=group_id, conversation_id=cid,
                                           message_id=mid, delivered=tuple(sorted(delivered)),
                                           read=tuple(sorted(read)), members=len(readers)))
        status = (MessageStatus.READ if read == readers else
                  MessageStatus.DELIVERED if delivered == readers else None)
        if status is not None and advance_status(msg.status, status,
                                                 outgoing=True) is not None:
            reached[status].append(mid)
            events.append(MessageStatusChanged(peer=group_id, conversation_id=cid,
                                               message_id=mid, status=status))
    ops = tuple(UpdateStatus(conversation_id=cid, message_ids=tuple(mids), status=status,
                             by=sender, at_ms=now_ms)
                for status, mids in reached.items() if mids)
    return GroupWrite(receipts=tuple(rows), history=ops), events


# --- group blobs ---------------------------------------------------------------------------------


def _spoke_before_removal(view: GroupView, sender: bytes, relay_ms: int) -> bool:
    """Whether *sender*, no longer a member, was one when the relay stored its blob:
    before the relay stored the state that removed it (states keep the relay's time of
    the envelope that brought them; ours, our clock)."""
    removals = []
    for row in view.states.values():
        st = row.signed.state
        parent = None if st.parent is None else view.states.get(st.parent)
        if (parent is not None and row.status is StateStatus.VALID
                and sender in parent.signed.state.members and sender not in st.members):
            removals.append(row.received_at_ms)
    return bool(removals) and relay_ms < max(removals)


def _added_after(view: GroupView, sender: bytes, relay_ms: int, me: bytes) -> bool:
    """Whether *sender*, a member of the head, was added by a state the relay stored
    after the blob (*relay_ms*): a non-member's blob, kept pending, must not be shown
    once its sender is added. States of ours are left out (their time is our clock, not
    the relay's); we chose to add that sender."""
    # Back from the head, usually one step: a state listing the sender that the relay
    # stored before the blob shows it was a member by then.
    newer: StoredGroupState | None = None  # the last state seen listing the sender
    for row in view.line():
        if sender not in row.signed.state.members:
            # *newer* added the sender, after the blob (or we would have stopped).
            return newer is not None and newer.signed.state.signer != me
        if row.received_at_ms <= relay_ms:
            return False
        newer = row
    return False  # added before anything we hold (our base state)


def _open(core: ClientCore, batch: GroupBatch, sender: bytes, blob: bytes, relay_ms: int,
          ) -> tuple[bytes, SenderKeyRecord, InnerMessage]:
    """Place and decrypt a group blob: ``(group_id, new record, inner)``.

    Raises:
        _NotYet: not placeable now. PigeonError: bad blob (drop it).
    """
    if len(blob) < 1 + _HEADER.size:
        raise RemoteProtocolError("group blob too short")
    _, chain_id, _ = _HEADER.unpack_from(blob, 1)
    group_id = batch.chain_group(sender, chain_id)
    if group_id is None:
        raise _NotYet
    view = batch.view(group_id)
    head = view.head
    if head is None or not view.active:
        raise _NotYet
    if sender not in head.state.members and not _spoke_before_removal(view, sender, relay_ms):
        raise _NotYet
    if _added_after(view, sender, relay_ms, core.account_id):
        raise RemoteProtocolError("a group blob from before its sender was a member")
    # A chain we placed before (its distribution came) but hold no longer: we forgot it
    # when we left, and the sender, a member again like us, sends it again on request.
    record = batch.record(group_id, sender)
    if record is None:
        batch.unknown_chains.add((group_id, sender))
        raise _NotYet
    if head.state.channel and sender not in head.state.admins:
        raise RemoteProtocolError("a member who is not an admin posted in a channel")
    try:
        new_record, padded = record.decrypt(blob[1:])
    except UnknownSenderChain:
        batch.unknown_chains.add((group_id, sender))
        raise
    inner = decode_inner(unpad_message(padded))
    batch.records[(group_id, sender)] = new_record
    return group_id, new_record, inner


def receive_blob(core: ClientCore, batch: GroupBatch, sender: bytes, envelope: EnvelopeRef,
                 blob: bytes, *, now_ms: int) -> tuple[Incoming, list[Event]]:
    """A group blob on *sender*'s pairwise mailbox (PigeonError: drop it)."""
    try:
        group_id, record, inner = _open(core, batch, sender, blob, batch.relay_ms or now_ms)
    except _NotYet:
        if not batch.pending.take(sender):
            return Incoming(envelope=envelope, received_at_ms=now_ms), []
        pending = PendingGroupBlob(id=0, sender=sender, blob=blob,
                                   received_at_ms=batch.relay_ms or now_ms)
        return Incoming(envelope=envelope, received_at_ms=now_ms,
                        group=GroupWrite(pending_add=(pending,))), []
    op, events = _message(core, batch, group_id, sender, inner, now_ms)
    _want_receipt(core, batch, group_id, sender, inner)
    update = SenderKeyRecordUpdate(group_id=group_id, sender=sender, record=record)
    return Incoming(envelope=envelope, received_at_ms=now_ms, sender_key=update,
                    history=op), events


def _want_receipt(core: ClientCore, batch: GroupBatch, group_id: bytes, sender: bytes,
                  inner: InnerMessage) -> None:
    head = batch.view(group_id).head
    if head is not None and head.state.subscriptions:
        return  # a channel's readers tell its authors nothing (n receipts per post)
    if core.config.auto_delivery_receipts and isinstance(inner, Text | File):
        batch.to_ack.append((sender, group_id, inner.message_id))


def _message(core: ClientCore, batch: GroupBatch, group_id: bytes, sender: bytes,
             inner: InnerMessage, now_ms: int) -> tuple[HistoryOp | None, list[Event]]:
    head = batch.view(group_id).head
    assert head is not None
    cid = conversation_id(core, group_id, head.state.name, now_ms=now_ms)
    sent = min(inner.sent_at_ms, now_ms)
    mid = inner.message_id
    match inner:
        case Text(text=text, reply_to=reply_to):
            return (NewMessage(conversation_id=cid, message_id=mid, sender=sender,
                               sent_at_ms=inner.sent_at_ms, received_at_ms=now_ms, body=text,
                               reply_to=reply_to),
                    [MessageReceived(peer=sender, conversation_id=cid, message_id=mid,
                                     kind=MessageKind.TEXT, text=text, reply_to=reply_to,
                                     sent_at_ms=sent, received_at_ms=now_ms,
                                     group_id=group_id)])
        case File(manifest=manifest, caption=caption, reply_to=reply_to):
            return (NewMessage(conversation_id=cid, message_id=mid, sender=sender,
                               sent_at_ms=inner.sent_at_ms, received_at_ms=now_ms,
                               kind=MessageKind.FILE, body=caption, attachment=manifest,
                               reply_to=reply_to),
                    [MessageReceived(peer=sender, conversation_id=cid, message_id=mid,
                                     kind=MessageKind.FILE, text=caption, attachment=manifest,
                                     file=file_info(manifest), reply_to=reply_to,
                                     sent_at_ms=sent, received_at_ms=now_ms,
                                     group_id=group_id)])
        case Edit(target=target, text=text):
            return (EditMessage(conversation_id=cid, target=target, editor=sender, text=text,
                                edited_at_ms=inner.sent_at_ms),
                    [MessageEdited(peer=sender, conversation_id=cid, message_id=target,
                                   text=text, edited_at_ms=inner.sent_at_ms,
                                   group_id=group_id)])
        case Reaction(target=target, emoji=emoji, remove=remove):
            return (React(conversation_id=cid, target=target, reactor=sender, emoji=emoji,
                          remove=remove, at_ms=inner.sent_at_ms),
                    [ReactionChanged(peer=sender, conversation_id=cid, message_id=target,
                                     emoji=emoji, removed=remove, group_id=group_id)])
        case Delete(target=target, scope=DeleteScope.FOR_EVERYONE):
            return (DeleteMessage(conversation_id=cid, target=target, by=sender,
                                  scope=DeleteScope.FOR_EVERYONE, at_ms=inner.sent_at_ms),
                    [MessageDeleted(peer=sender, conversation_id=cid, message_id=target,
                                    group_id=group_id)])
        case Typing(active=active):
            return None, [GroupTypingChanged(group_id=group_id, peer=sender, active=active)]
        case DisappearingTimer(timer_ms=timer_ms):
            return (SetExpireTimer(conversation_id=cid, timer_ms=timer_ms, by=sender, at_ms=sent),
                    [DisappearingTimerChanged(peer=group_id, conversation_id=cid,
                                              timer_ms=timer_ms, by_peer=True)])
        case _:
            return None, []


def retry_pending(core: ClientCore, *, now_ms: int,
                  ) -> tuple[list[Event], list[tuple[bytes, bytes, bytes]],
                             set[tuple[bytes, bytes]]]:
    """Place the pending group blobs that can be placed now (one transaction); returns
    the events, the delivery receipts to send and the ``(group_id, member)`` chains we
    no longer hold (:attr:`GroupBatch.unknown_chains`)."""
    pending = core.store.pending_group_blobs(limit=MAX_PENDING_BLOBS)
    if not pending:
        return [], [], set()
    batch = GroupBatch(core)
    done: list[int] = []
    updates: dict[tuple[bytes, bytes], SenderKeyRecordUpdate] = {}
    ops: list[HistoryOp] = []
    events: list[Event] = []
    for p in pending:
        try:
            group_id, record, inner = _open(core, batch, p.sender, p.blob, p.received_at_ms)
        except _NotYet:
            if now_ms - p.received_at_ms > PENDING_TTL_MS:
                done.append(p.id)
            continue
        except PigeonError as exc:
            _log.info("pending group blob dropped: %s", type(exc).__name__)
            done.append(p.id)
            continue
        done.append(p.id)
        updates[(group_id, p.sender)] = SenderKeyRecordUpdate(group_id=group_id,
                                                              sender=p.sender, record=record)
        op, evs = _message(core, batch, group_id, p.sender, inner, now_ms)
        _want_receipt(core, batch, group_id, p.sender, inner)
        if op is not None:
            ops.append(op)
        events += evs
    if done:
        core.store.write_group(GroupWrite(sender_keys=tuple(updates.values()),
                                          pending_done=tuple(done), history=tuple(ops)),
                               now_ms=now_ms)
    return events, batch.to_ack, batch.unknown_chains


def expire_sealed(core: ClientCore, *, now_ms: int) -> None:
    """Drop the halves of sealed changes held longer than :data:`PENDING_TTL_MS` (their
    other half is not coming)."""
    if core.store.sealed_control_count():
        core.store.write_group(GroupWrite(sealed_expire_before=now_ms - PENDING_TTL_MS),
                               now_ms=now_ms)


def receive_ephemeral(core: ClientCore, sender: bytes, blob: bytes, *, now_ms: int,
                      ) -> list[Event]:
    """A group typing signal: decrypt, keep the chain's state, report; never pending."""
    batch = GroupBatch(core)
    try:
        group_id, record, inner = _open(core, batch, sender, blob, now_ms)
    except (_NotYet, PigeonError):
        return []
    if not isinstance(inner, Typing):
        return []
    core.store.write_group(GroupWrite(sender_keys=(SenderKeyRecordUpdate(
        group_id=group_id, sender=sender, record=record),)), now_ms=now_ms)
    return [GroupTypingChanged(group_id=group_id, peer=sender, active=inner.active)]


def is_group_blob(blob: bytes) -> bool:
    return blob[:1] == bytes([GROUP_BLOB_PREFIX])


class _BlobPath(Protocol):
    def __call__(self, core: ClientCore, batch: GroupBatch, sender: bytes,
                 envelope: EnvelopeRef, blob: bytes, *, now_ms: int,
                 ) -> tuple[Incoming, list[Event]]: ...


def blob_path(blob: bytes) -> _BlobPath | None:
    """What takes a blob on a pairwise mailbox that is not a Double Ratchet message: a
    group message (:data:`GROUP_BLOB_PREFIX`) or a sealed control
    (:data:`SEALED_CONTROL_PREFIX`); None for anything else."""
    if is_group_blob(blob):
        return receive_blob
    if blob[:1] == bytes([SEALED_CONTROL_PREFIX]):
        return receive_sealed
    return None
