"""Groups in the core: group state and its convergence, control messages, sender keys
and group sends (docs/sdk.md §15.14, docs/protocol.md §9.14). Receiving is in
:mod:`client_sdk._groups_receive`.

Theory of operation
    **State.** A group is a set of signed :class:`~protocol.group.GroupState` s, each
    complete (name, avatar, members, admins, channel flag) and naming its version and
    its parent's hash. A state is *valid* when it is the base we joined with (signed
    by one of its admins, naming us) or when its parent is valid, its version is the
    parent's + 1 and its signer may make it: an admin of the parent may make any
    change; any member may sign the one change that removes itself (leaving). States
    whose parent has not arrived yet are kept *pending* and re-examined as others
    arrive (control messages of different signers come over different mailboxes, in
    no common order).

    **Convergence rule.** The current state (the *head*) is, among the valid states,
    the one with the highest version; among equal versions, the one with the smallest
    ``(signer account id, SHA-256 of its encoding)``, bytewise. It is a function of the
    set of valid states only, so members that received the same control messages agree
    whatever the order. Concurrent changes at one version do not merge: the loser's
    change is dropped (its author sees ``GroupChanged`` back to the winner and may
    make it again).

    **Control messages** are ``GroupControl`` inner messages (the encoded state and the
    signer's identity signature, purpose ``group-control``) sent by the signer to every
    member of the parent and of the new state (so removed members learn it), marked
    ``complete`` when we could write to every one of them (the group's first admin then
    does not pass it on): over each pairwise session, or *sealed* when that at least
    halves the bytes (one multi-recipient blob encrypted once, and a pairwise
    ``GroupControlKey`` to each member). The state change and the outbox rows are one
    transaction. A member asks for a parent that never reached it
    (``GroupStateRequest``, after a grace period).

    **Sender keys.** Each member has one outbound chain per group
    (``pigeon_crypto.sender_keys``). A state in which someone left drops it (in the
    transaction that stores the state); before a group send the sender also compares
    whom its chain was shared with (``sender_key_shares``) with the current members: with
    no chain, or if anyone it was shared with is no longer a member, it starts a new
    chain (rotation, so a removed member reads nothing sent after its removal, and a
    re-added one, which forgot the old chains, gets the new one); then it sends it, at
    its current iteration, to every member lacking it (a ``SenderKeyDistribution`` over
    the pairwise session, before the message on the same mailbox, so it arrives
    first). A new member therefore receives chains at their current iteration and
    cannot read anything from before it joined.

    **Group messages** are inner messages (Text, Edit, Reaction, Delete, Receipt...)
    padded and encrypted once with the sender's chain, prefixed with
    :data:`GROUP_BLOB_PREFIX`, and stored with ONE multi-recipient ``Send``: the blob and
    each member's pairwise mailbox with its capability. The receiver knows the sender
    from the mailbox and the group from ``(sender, chain id)``: no group id travels.
"""

from __future__ import annotations

import dataclasses
import hashlib
import logging
from collections.abc import Callable, Iterable, Sequence
from typing import TYPE_CHECKING, Final

from pigeon_crypto.files import FILE_ID_SIZE, FILE_KEY_SIZE, decrypt_chunk, encrypt_chunk
from pigeon_crypto.padding import pad_message
from pigeon_crypto.ratchet import RatchetState
from pigeon_crypto.sender_keys import OutboundSenderKey
from pigeon_crypto.signing import Purpose
from protocol import limits as L
from protocol.group import MAX_GROUP_MEMBERS, GroupState
from protocol.inner import (
    MAX_STATE_REQUEST_HASHES,
    GroupControl,
    GroupControlKey,
    GroupStateRequest,
    InnerMessage,
    Receipt,
    ReceiptKind,
    SenderKeyDistribution,
    SenderKeyRequest,
)

from . import _channels
from ._group_state import (
    MAX_PENDING_STATES,
    GroupView,
    authorized,
    change_event,
    conversation_id,
    group_info,
    member_view,
    reached,
)
from ._sending import _Batch
from .errors import ClientError
from .groups import (
    NotGroupAdmin,
    NotGroupMember,
    UnknownGroup,
)
from .history import HistoryOp, MessageStatus, UpdateStatus
from .store.group_records import (
    GroupWrite,
    SignedGroupState,
    SignedSubscription,
    StateStatus,
    StoredGroupState,
)
from .store.records import (
    OutboundSenderKeyUpdate,
    OutboxEntry,
    OutboxItem,
    Outgoing,
    PairwiseMailbox,
    Recipient,
    SessionUpdate,
)

if TYPE_CHECKING:
    from .core import ClientCore
    from .events import Event

__all__ = [
    "GROUP_BLOB_PREFIX",
    "MAX_PENDING_STATES",
    "SEALED_CONTROL_PREFIX",
    "GroupView",
    "authorized",
    "change_event",
    "conversation_id",
    "create",
    "group_info",
    "send",
]

_log = logging.getLogger("pigeon.sdk.groups")

GROUP_BLOB_PREFIX: Final = 0x81
"""First byte of a group (sender-key) blob on a pairwise mailbox; a Double Ratchet
message starts with its version, 0x01."""
SEALED_CONTROL_PREFIX: Final = 0x82
"""First byte of a sealed ``GroupControl`` on a pairwise mailbox (:func:`seal_control`)."""
MAX_SEALED_PADDED: Final = 32768
"""The largest padded control sealed: the bucket a state of ``MAX_GROUP_STATE_SIZE`` pads
to (larger, older states go pairwise)."""
STATE_REQUEST_INTERVAL_MS: Final = 10 * 60 * 1000
"""How often one missing state is asked for (and one request answered)."""
STATE_REQUEST_GRACE_MS: Final = 60 * 1000
"""How long a parent may be missing before it is asked for."""
_KEY_BUCKET: Final = 256
"""The padded size of a ``GroupControlKey`` (122 bytes encoded: the smallest bucket)."""
# --- control messages -------------------------------------------------------------------------


def sign_state(core: ClientCore, state: GroupState) -> SignedGroupState:
    encoded = state.encode()
    signature = core.identity.key_pair.sign(Purpose.GROUP_CONTROL, encoded)
    return SignedGroupState.from_wire(encoded, signature)


def _sorted_ids(ids: Iterable[bytes]) -> tuple[bytes, ...]:
    return tuple(sorted(set(ids)))


def create(core: ClientCore, *, name: str, members: Sequence[bytes], admins: Sequence[bytes],
           avatar: bytes | None, channel: bool, now_ms: int, subscriptions: bool = False,
           ) -> tuple[bytes, list[OutboxItem], list[Event]]:
    """A new group with us as an admin; every member must be an accepted contact.
    *subscriptions*: a channel whose subscribers are not listed (``_channels``)."""
    if subscriptions:
        return _channels.create(core, name=name, subscribers=members, admins=admins,
                                avatar=avatar, now_ms=now_ms)
    me = core.account_id
    for m in set(members) - {me}:
        core.sendable(m)  # UnknownContact / ContactNotReady / ...
    group_id = core.rng(16)
    state = GroupState(group_id=group_id, version=1, signer=me, name=name,
                       members=_sorted_ids([*members, me]), admins=_sorted_ids([*admins, me]),
                       avatar=avatar, channel=channel, at_ms=now_ms)
    view = GroupView(group_id=group_id, record=None)
    items, events = _publish(core, view, state, now_ms=now_ms)
    return group_id, items, events


def changeable(core: ClientCore, group_id: bytes, *, leave: bool = False,
               ) -> tuple[GroupView, SignedGroupState]:
    """The group and its head, if we may change it (an admin; any member may leave).

    Raises:
        UnknownGroup, NotGroupMember, NotGroupAdmin.
    """
    return member_view(core, group_id, admin=not leave)


def change(core: ClientCore, group_id: bytes, mutate: Callable[[GroupState], dict[str, object]],
           *, leave: bool = False, readers: Sequence[bytes] = (), now_ms: int,
           ) -> tuple[list[OutboxItem], list[Event]]:
    """Sign and send the head's successor, with the fields *mutate* returns changed.
    *readers*: in a channel with subscriptions, admins this change demotes who stay as
    subscribers.

    Raises:
        UnknownGroup, NotGroupMember, NotGroupAdmin; ClientError for an invalid result.
    """
    me = core.account_id
    view, head = changeable(core, group_id, leave=leave)
    fields = mutate(head.state)
    if head.state.subscriptions:  # a channel with subscriptions lists its admins only
        fields["members"] = fields.get("admins", head.state.admins)
    try:
        state = dataclasses.replace(head.state, version=head.state.version + 1, parent=head.hash,
                                    signer=me, at_ms=now_ms, **fields)  # type: ignore[arg-type]
    except ValueError as exc:
        raise ClientError(f"invalid group change: {exc}") from exc
    if len(state.members) > MAX_GROUP_MEMBERS:
        raise ClientError(f"a group has at most {MAX_GROUP_MEMBERS} members")
    for m in set(state.members) - set(head.state.members) - {me}:
        core.sendable(m)
    if not authorized(head.state, state):
        raise NotGroupAdmin(group_id)
    return _publish(core, view, state, readers=readers, now_ms=now_ms)


def leave(core: ClientCore, group_id: bytes, *, now_ms: int,
          ) -> tuple[list[OutboxItem], list[Event]]:
    """Sign the state without us (the smallest member becomes admin if we were the
    last one) and send it; alone in the group, just stop being a member."""
    me = core.account_id
    view = GroupView.load(core, group_id)
    head = view.head
    if head is None:
        raise UnknownGroup(group_id)
    if not view.active or view.record is None:
        raise NotGroupMember(group_id)
    st = head.state
    if st.subscriptions and me not in st.admins:
        return _channels.leave(core, view, head, now_ms=now_ms)
    if st.subscriptions and st.admins == (me,) and view.roster:
        heir = min(view.roster)  # the smallest subscriber takes over
        return change(core, group_id, lambda s: {"admins": (heir,)}, now_ms=now_ms)
    if st.members == (me,):
        old = head
        view.record = dataclasses.replace(view.record, active=False, updated_at_ms=now_ms)
        core.store.write_group(GroupWrite(group=view.record, forget_keys=group_id),
                               now_ms=now_ms)
        return [], [change_event(core, view, old, now_ms=now_ms)]
    members = tuple(m for m in st.members if m != me)
    admins = tuple(m for m in st.admins if m != me) or members[:1]
    return change(core, group_id, lambda s: {"members": members, "admins": admins},
                  leave=me not in st.admins, now_ms=now_ms)


def _publish(core: ClientCore, view: GroupView, state: GroupState, *, now_ms: int,
             readers: Sequence[bytes] = ()) -> tuple[list[OutboxItem], list[Event]]:
    """Store our new state as the head and send it to the old and new members."""
    me = core.account_id
    old = view.head
    signed = sign_state(core, state)
    row = StoredGroupState(signed=signed, status=StateStatus.VALID, received_at_ms=now_ms)
    view.states[signed.hash] = row
    held = view.record
    record = view.converge(me, now_ms=now_ms)
    if record is None or record.head != signed.hash:
        # Void from the start: a removal of us as an admin on another branch (its
        # branch lost, so our head still lists us; see _group_state.revoked).
        del view.states[signed.hash]
        view.record = held
        raise NotGroupAdmin(state.group_id)
    left = me not in state.members
    someone_left = old is not None and not set(old.state.members) <= set(state.members)
    write = GroupWrite(group=record, states=(row,),
                       forget_keys=state.group_id if left else None,
                       drop_outbound=state.group_id if someone_left and not left else None)
    if state.subscriptions:
        items = _channels.publish(core, view, old, signed, write, readers=readers,
                                  now_ms=now_ms)
        return items, [change_event(core, view, old, now_ms=now_ms)]
    old_members = () if old is None else old.state.members
    targets = sorted((set(old_members) | set(state.members)) - {me})
    reachable = _reachable(core, targets)
    complete = len(reachable) == len(targets)  # then the first admin need not pass it on
    batch = _Batch(core)
    outgoing = _control_sends(core, batch, reachable, signed, complete=complete, now_ms=now_ms)
    if outgoing:
        outgoing[0] = dataclasses.replace(outgoing[0], group=write)
        items = batch.commit(outgoing)
    else:
        core.store.write_group(write, now_ms=now_ms)
        items = []
    return items, [change_event(core, view, old, now_ms=now_ms)]


def sealing_pays(control_size: int, peers: int) -> bool:
    """Whether to seal a control of *control_size* padded bytes for *peers* members: when
    one blob plus a key message each (:data:`_KEY_BUCKET`) stores at most half the bytes
    of a pairwise copy each (below that, the extra message per member is not worth it)."""
    return peers * control_size >= 2 * (control_size + peers * _KEY_BUCKET)


def sealed_blob(key: bytes, seal_id: bytes, padded: bytes) -> bytes:
    """:data:`SEALED_CONTROL_PREFIX` and the one chunk of a one-chunk file (protocol
    §8.1) with file key *key* and file id *seal_id*: a padded ``GroupControl``, sealed."""
    return bytes([SEALED_CONTROL_PREFIX]) + encrypt_chunk(key, seal_id, 0, 1, padded)


def open_sealed(blob: bytes, key: bytes, seal_id: bytes) -> bytes:
    """The padded plaintext of :func:`sealed_blob` (ChunkAuthenticationError if it does
    not authenticate)."""
    return decrypt_chunk(key, seal_id, 0, 1, blob[1:])


def seal_control(core: ClientCore, padded: bytes) -> tuple[bytes, bytes, bytes]:
    """Encrypt a padded ``GroupControl`` once under a fresh key and seal id, which only
    the key messages carry: ``(blob, key, seal_id)``."""
    key, seal_id = core.rng(FILE_KEY_SIZE), core.rng(FILE_ID_SIZE)
    return sealed_blob(key, seal_id, padded), key, seal_id


def _control_sends(core: ClientCore, batch: _Batch, peers: Sequence[tuple[bytes, PairwiseMailbox]],
                   signed: SignedGroupState, *, complete: bool, now_ms: int) -> list[Outgoing]:
    """A signed state to *peers*: sealed (one multi-recipient blob, then a pairwise
    ``GroupControlKey`` to each, so the blob comes first on every mailbox) when that
    stores fewer bytes, else a pairwise ``GroupControl`` to each."""
    control = GroupControl(message_id=core.rng(16), sent_at_ms=now_ms, state=signed.encoded,
                           signature=signed.signature, complete=complete)
    padded = pad_message(control.encode())
    sealed = len(padded) <= MAX_SEALED_PADDED and sealing_pays(len(padded), len(peers))
    if sealed:
        blob, key, seal_id = seal_control(core, padded)
        inner: InnerMessage = GroupControlKey(
            message_id=bytes(16), sent_at_ms=now_ms,  # each copy gets its own id below
            blob_hash=hashlib.sha256(blob).digest(), key=key, seal_id=seal_id)
    else:
        inner = control
    recipients: list[Recipient] = []
    outgoing: list[Outgoing] = []
    for peer, outbound in peers:
        try:
            encrypted, session = batch.encrypt(peer, dataclasses.replace(
                inner, message_id=core.rng(16)))
        except ClientError as exc:
            _log.info("group change not sent to %s: %s", peer.hex()[:8], type(exc).__name__)
            continue
        recipients.append(Recipient(mailbox_id=outbound.mailbox_id,
                                    capability=outbound.capability))
        outgoing.append(_pairwise(core, batch, peer, outbound.mailbox_id, outbound.capability,
                                  encrypted, session, now_ms))
    if not sealed or not recipients:
        return outgoing
    return [Outgoing(entry=e) for e in fan_out(core, recipients, blob, now_ms=now_ms)] + outgoing


def _pairwise(core: ClientCore, batch: _Batch, peer: bytes, mailbox_id: bytes,
              capability: bytes, blob: bytes, session: RatchetState, now_ms: int,
              ) -> Outgoing:
    return Outgoing(entry=batch.entry((mailbox_id, capability), blob, now_ms),
                    session=SessionUpdate(peer=peer, state=session))


def _to_peer(core: ClientCore, batch: _Batch, peer: bytes, inner: InnerMessage,
             now_ms: int, what: str) -> Outgoing | None:
    """*inner* over our pairwise session with *peer* (None, logged as *what*: we cannot
    write to that peer now)."""
    try:
        _, outbound = core.sendable(peer)
        blob, session = batch.encrypt(peer, inner)
    except ClientError as exc:
        _log.info("%s not sent to %s: %s", what, peer.hex()[:8], type(exc).__name__)
        return None
    return _pairwise(core, batch, peer, outbound.mailbox_id, outbound.capability, blob,
                     session, now_ms)


def forward_winners(core: ClientCore, group_ids: Iterable[bytes], *, now_ms: int,
                    ) -> list[OutboxItem]:
    """Our change lost to a concurrent one: send the winner to the members that got
    only ours (members we added, which the winner's signer did not write to), so that
    they converge too. Idempotent (receivers ignore a state they hold)."""
    me = core.account_id
    outgoing: list[Outgoing] = []
    batch = _Batch(core)
    for group_id in group_ids:
        view = GroupView.load(core, group_id)
        head = view.head
        if head is None or head.state.signer == me:
            continue
        ours = [s.signed for s in view.states.values()
                if s.status is StateStatus.VALID and s.signed.state.signer == me
                and s.signed.state.version == head.state.version and s.signed.hash != head.hash]
        missing: set[bytes] = set()
        for mine in ours:
            missing |= reached(view, mine.state) - reached(view, head.state)
        outgoing += _control_sends(core, batch, _reachable(core, sorted(missing - {me})),
                                   head, complete=False, now_ms=now_ms)
    return batch.commit(outgoing) if outgoing else []


def _reachable(core: ClientCore, peers: Iterable[bytes]) -> list[tuple[bytes, PairwiseMailbox]]:
    """The peers we can write to now, with the mailbox to write to."""
    out: list[tuple[bytes, PairwiseMailbox]] = []
    for peer in peers:
        try:
            out.append((peer, core.sendable(peer)[1]))
        except ClientError as exc:
            _log.info("group change not sent to %s: %s", peer.hex()[:8], type(exc).__name__)
    return out


def forward_states(core: ClientCore, states: Iterable[tuple[bytes, bytes]], *, now_ms: int,
                   ) -> list[OutboxItem]:
    """As the first admin (smallest account id) of a state someone else signed, pass it
    on to everyone its signer wrote to: members need not be each other's contacts (a
    channel's subscribers know only its admins; a member leaves by writing to those it
    can reach). Receivers ignore states they hold."""
    me = core.account_id
    batch = _Batch(core)
    outgoing: list[Outgoing] = []
    subs: list[tuple[bytes, SignedSubscription]] = []
    for group_id, digest in states:
        view = GroupView.load(core, group_id)
        row = view.states.get(digest)
        if row is None:  # a subscription (channels with subscriptions)
            subs += [(group_id, s) for s in view.subs.values() if s.hash == digest]
            continue
        if row.status is not StateStatus.VALID:
            continue
        signed = row.signed
        peers = sorted(reached(view, signed.state) - {me, signed.state.signer})
        outgoing += _control_sends(core, batch, _reachable(core, peers), signed,
                                   complete=False, now_ms=now_ms)
    items = batch.commit(outgoing) if outgoing else []
    return items + _channels.forward(core, subs, now_ms=now_ms) if subs else items


# --- missing states --------------------------------------------------------------------------


def request_missing(core: ClientCore, group_ids: Iterable[bytes], *, now_ms: int,
                    ) -> list[OutboxItem]:
    """Ask for the parents that pending states of *group_ids* wait for and that never
    reached us (their signer could not write to us, or the message was lost), once a
    parent has been missing for :data:`STATE_REQUEST_GRACE_MS` (parents of different
    signers arrive over different mailboxes, in no common order: most come on their
    own), from two members we can write to: the signer of the waiting state (it holds
    the parent) and the admins of our head, in that order (an admin's answer is taken
    even when the parent's signer is not our contact). Each missing state is asked for
    once per :data:`STATE_REQUEST_INTERVAL_MS`."""
    asks: dict[tuple[bytes, bytes], list[bytes]] = {}
    for group_id in group_ids:
        view = GroupView.load(core, group_id)
        head = view.head
        missing: dict[bytes, bytes] = {}  # parent -> the signer of a state waiting for it
        if head is not None and view.active:
            for row in view.states.values():
                parent = row.signed.state.parent
                if (row.status is StateStatus.PENDING and parent is not None
                        and parent not in view.states):
                    missing.setdefault(parent, row.signed.state.signer)
        for key in [k for k in core.missing_since if k[0] == group_id and k[1] not in missing]:
            del core.missing_since[key]
        asked = core.groups_asked.get(group_id)
        chasing = asked is not None and now_ms - asked < STATE_REQUEST_INTERVAL_MS
        for parent, signer in missing.items():
            # While we fill a chain of missing states (an answer's own parent is
            # missing), the next one is asked for at once: no grace per link.
            since = core.missing_since.setdefault(
                (group_id, parent), now_ms - STATE_REQUEST_GRACE_MS if chasing else now_ms)
            last = core.state_requests.get((group_id, parent))
            if now_ms - since < STATE_REQUEST_GRACE_MS or (
                    last is not None and now_ms - last < STATE_REQUEST_INTERVAL_MS):
                continue
            core.state_requests[(group_id, parent)] = now_ms
            core.groups_asked[group_id] = now_ms
            assert head is not None
            candidates = dict.fromkeys((signer, *head.state.admins))
            for peer in [p for p in candidates if _can_write(core, p)][:2]:
                asks.setdefault((peer, group_id), []).append(parent)
    batch = _Batch(core)
    outgoing: list[Outgoing] = []
    for (peer, group_id), hashes in sorted(asks.items()):
        for i in range(0, len(hashes), MAX_STATE_REQUEST_HASHES):
            out = _to_peer(core, batch, peer, GroupStateRequest(
                message_id=core.rng(16), sent_at_ms=now_ms, group_id=group_id,
                hashes=tuple(hashes[i:i + MAX_STATE_REQUEST_HASHES])), now_ms,
                "group state request")
            if out is not None:
                outgoing.append(out)
    return batch.commit(outgoing) if outgoing else []


def request_keys(core: ClientCore, groups_back: Iterable[bytes],
                 unknown: Iterable[tuple[bytes, bytes]], *, now_ms: int) -> list[OutboxItem]:
    """Ask members for the chains we forgot when we left or were removed
    (``SenderKeyRequest``): every member who may post in *groups_back*, where we are a
    member again (a concurrent change won over our departure, or an admin added us
    back), and each ``(group_id, member)`` of *unknown*, whose message came on a chain we
    no longer hold (a request lost with a crash, or not sendable then). A member that
    rotated since holds no share for us and has nothing to do; one that did not sends
    its chain with its next message. Each member is asked at most once per
    :data:`STATE_REQUEST_INTERVAL_MS` for a group."""
    me = core.account_id
    wanted: set[tuple[bytes, bytes]] = set()
    views: dict[bytes, GroupView] = {}
    for group_id in {*groups_back, *(g for g, _ in unknown)}:
        view = views[group_id] = GroupView.load(core, group_id)
        head = view.head
        if head is not None and view.active and group_id in groups_back:
            posters = head.state.admins if head.state.channel else head.state.members
            wanted |= {(group_id, p) for p in posters}
    wanted |= {(g, m) for g, m in unknown if views[g].active}
    batch = _Batch(core)
    outgoing: list[Outgoing] = []
    for group_id, peer in sorted(wanted):
        last = core.key_requests.get((group_id, peer))
        if peer == me or (last is not None and now_ms - last < STATE_REQUEST_INTERVAL_MS):
            continue
        out = _to_peer(core, batch, peer, SenderKeyRequest(
            message_id=core.rng(16), sent_at_ms=now_ms, group_id=group_id), now_ms,
            "sender key request")
        if out is not None:  # else asked again when that member's next message comes
            core.key_requests[(group_id, peer)] = now_ms
            outgoing.append(out)
    return batch.commit(outgoing) if outgoing else []


def _can_write(core: ClientCore, peer: bytes) -> bool:
    if peer == core.account_id:
        return False
    try:
        core.sendable(peer)
    except ClientError:
        return False
    return True


def answer_requests(core: ClientCore, answers: Iterable[tuple[bytes, bytes, bytes]], *,
                    now_ms: int) -> list[OutboxItem]:
    """Send each requested state (already checked: the requester was to receive it) to
    its requester, each at most once per :data:`STATE_REQUEST_INTERVAL_MS`."""
    batch = _Batch(core)
    outgoing: list[Outgoing] = []
    views: dict[bytes, GroupView] = {}
    for peer, group_id, digest in answers:
        last = core.state_answers.get((peer, digest))
        if last is not None and now_ms - last < STATE_REQUEST_INTERVAL_MS:
            continue
        view = views.get(group_id) or views.setdefault(group_id, GroupView.load(core, group_id))
        row = view.states.get(digest)
        if row is None:
            continue
        core.state_answers[(peer, digest)] = now_ms
        outgoing += _control_sends(core, batch, _reachable(core, [peer]), row.signed,
                                   complete=False, now_ms=now_ms)
    return batch.commit(outgoing) if outgoing else []


# --- receipts ---------------------------------------------------------------------------------


def send_receipts(core: ClientCore, entries: Iterable[tuple[bytes, bytes, bytes]],
                  kind: ReceiptKind, *, now_ms: int, history: HistoryOp | None = None,
                  ) -> list[OutboxItem]:
    """Receipts for group messages, pairwise to their authors: one ``Receipt`` (with
    ``group_id``, up to MAX_RECEIPT_IDS ids) per author and group. *history* (our own
    read marks) is stored in the same transaction."""
    me = core.account_id
    by_author: dict[tuple[bytes, bytes], list[bytes]] = {}
    for author, group_id, message_id in entries:
        if author != me:
            by_author.setdefault((author, group_id), []).append(message_id)
    batch = _Batch(core)
    outgoing: list[Outgoing] = []
    for (author, group_id), ids in sorted(by_author.items()):
        for i in range(0, len(ids), L.MAX_RECEIPT_IDS):
            out = _to_peer(core, batch, author, Receipt(
                message_id=core.rng(16), sent_at_ms=now_ms, kind=kind,
                message_ids=tuple(ids[i:i + L.MAX_RECEIPT_IDS]), group_id=group_id),
                now_ms, "group receipt")
            if out is not None:
                outgoing.append(out)
    if history is not None:
        if not outgoing:
            core.store.apply(history, now_ms=now_ms)
            return []
        outgoing[0] = dataclasses.replace(outgoing[0], history=history)
    return batch.commit(outgoing) if outgoing else []


def mark_read(core: ClientCore, group_id: bytes, message_ids: Sequence[bytes], *,
              now_ms: int) -> list[OutboxItem]:
    """Mark incoming group messages READ here and tell each author (pairwise)."""
    view = GroupView.load(core, group_id)
    head = view.head
    if head is None:
        raise UnknownGroup(group_id)
    cid = conversation_id(core, group_id, head.state.name, now_ms=now_ms)
    quiet = head.state.subscriptions  # a channel's readers tell its authors nothing
    entries: list[tuple[bytes, bytes, bytes]] = []
    for mid in message_ids:
        msg = core.store.get_message(cid, mid)
        if msg is not None and not msg.outgoing and msg.sender is not None:
            entries.append((msg.sender, group_id, mid))
    if not entries:
        return []
    op = UpdateStatus(conversation_id=cid, message_ids=tuple(e[2] for e in entries),
                      status=MessageStatus.READ, by=None, at_ms=now_ms)
    if quiet:
        core.store.apply(op, now_ms=now_ms)
        return []
    return send_receipts(core, entries, ReceiptKind.READ, now_ms=now_ms, history=op)


# --- group sends --------------------------------------------------------------------------------


def sendable_group(core: ClientCore, group_id: bytes) -> tuple[GroupView, SignedGroupState]:
    """The group and its head, if we may post in it.

    Raises:
        UnknownGroup, NotGroupMember, NotGroupAdmin (a channel).
    """
    view, head = member_view(core, group_id)
    if head.state.channel and core.account_id not in head.state.admins:
        raise NotGroupAdmin(group_id)
    return view, head


def _chain(core: ClientCore, group_id: bytes, members: frozenset[bytes],
           ) -> tuple[OutboundSenderKey, frozenset[bytes], bool]:
    """Our chain for the group, a new one if anyone it was shared with left."""
    chain = core.store.load_outbound_sender_key(group_id)
    if chain is not None:
        shared = core.store.sender_key_shared_with(group_id, chain.chain_id)
        if shared <= members:
            return chain, shared, False
    me = core.account_id
    while True:
        fresh = OutboundSenderKey.create(core.rng)
        if core.store.group_for_chain(me, fresh.chain_id) is None:
            return fresh, frozenset(), True


def send(core: ClientCore, group_id: bytes, make: Callable[[bytes, int], InnerMessage],
         history: Callable[[int, bytes], HistoryOp | None], *, now_ms: int,
         message_id: bytes | None = None) -> tuple[bytes, int, list[OutboxItem]]:
    """Encrypt one group message with our chain and queue one multi-recipient send
    (preceded by the distributions members lack), all in one transaction.

    Args:
        make: ``(message_id, now_ms) -> inner message``.
        history: ``(conversation_id, message_id) -> op`` for our history, or None.
        message_id: the message's id if drawn already (a file's, with its upload).

    Returns:
        ``(message_id, conversation_id, outbox rows)``.
    """
    me = core.account_id
    view, head = sendable_group(core, group_id)
    st = head.state
    members = view.audience() - {me}
    chain, shared, fresh = _chain(core, group_id, members)
    cid = conversation_id(core, group_id, st.name, now_ms=now_ms)
    batch = _Batch(core)
    outgoing: list[Outgoing] = []
    recipients: list[Recipient] = []
    shares: list[tuple[bytes, int, bytes]] = []
    distribution = SenderKeyDistribution(
        message_id=core.rng(16), sent_at_ms=now_ms, group_id=group_id,
        distribution=chain.distribution().to_bytes())
    for peer in sorted(members):
        try:
            _, outbound = core.sendable(peer)
            if peer not in shared:
                blob, session = batch.encrypt(peer, dataclasses.replace(
                    distribution, message_id=core.rng(16)))
                outgoing.append(_pairwise(core, batch, peer, outbound.mailbox_id,
                                          outbound.capability, blob, session, now_ms))
                shares.append((group_id, chain.chain_id, peer))
        except ClientError as exc:
            _log.info("group message not sent to %s: %s", peer.hex()[:8], type(exc).__name__)
            continue
        recipients.append(Recipient(mailbox_id=outbound.mailbox_id,
                                    capability=outbound.capability))
    mid = message_id or core.rng(16)
    inner = make(mid, now_ms)
    next_chain, message = chain.encrypt(pad_message(inner.encode()))
    blob = bytes([GROUP_BLOB_PREFIX]) + message
    write = GroupWrite(shares=tuple(shares),
                       chains=((me, chain.chain_id, group_id),) if fresh else ())
    op = history(cid, mid)
    key = OutboundSenderKeyUpdate(group_id=group_id, key=next_chain)
    if recipients:
        for i, entry in enumerate(fan_out(core, recipients, blob, now_ms=now_ms)):
            outgoing.append(Outgoing(entry=entry, sender_key=key if i == 0 else None,
                                     history=op if i == 0 else None))
        outgoing[0] = dataclasses.replace(outgoing[0], group=write)
        items = batch.commit(outgoing)
    else:  # alone in the group: only our history
        core.store.write_group(dataclasses.replace(
            write, history=() if op is None else (op,)), now_ms=now_ms)
        core.store.store_outbound_sender_key(group_id, next_chain)
        items = []
    return mid, cid, items


def fan_out(core: ClientCore, recipients: Sequence[Recipient], blob: bytes, *,
            now_ms: int) -> list[OutboxEntry]:
    """One blob to many mailboxes: ``ceil(n / MAX_RECIPIENTS)`` multi-recipient sends
    (the relay's per-send limit), each mailbox in exactly one. They are queued in one
    transaction; each is retried with its own ``client_msg_id``, which the relay
    deduplicates, so a retry after a crash or a lost ``Sent`` stores nothing twice."""
    return [OutboxEntry(client_msg_id=core.rng(16),
                        recipients=tuple(recipients[i:i + L.MAX_RECIPIENTS]),
                        blob=blob, created_at_ms=now_ms)
            for i in range(0, len(recipients), L.MAX_RECIPIENTS)]


def ephemeral(core: ClientCore, group_id: bytes, inner: InnerMessage, *, now_ms: int,
              ) -> tuple[bytes, bytes, tuple[tuple[bytes, bytes], ...]] | None:
    """Encrypt a typing signal for the members that hold our chain:
    ``(client_msg_id, blob, recipients)``, or None when nobody can read it yet."""
    me = core.account_id
    view, _head = sendable_group(core, group_id)
    chain = core.store.load_outbound_sender_key(group_id)
    if chain is None:
        return None
    members = view.audience() - {me}
    shared = core.store.sender_key_shared_with(group_id, chain.chain_id)
    if not shared <= members:
        return None  # the chain must rotate first (a real message does it)
    recipients: list[tuple[bytes, bytes]] = []
    for peer in sorted(shared):
        try:
            _, outbound = core.sendable(peer)
        except ClientError:
            continue
        recipients.append((outbound.mailbox_id, outbound.capability))
    if not recipients:
        return None
    next_chain, message = chain.encrypt(pad_message(inner.encode()))
    core.store.store_outbound_sender_key(group_id, next_chain)  # before the bytes leave
    return (core.rng(16), bytes([GROUP_BLOB_PREFIX]) + message,
            tuple(recipients[:L.MAX_EPHEMERAL_RECIPIENTS]))
