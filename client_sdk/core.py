"""Layer 2 of the SDK: the sans-I/O client core.

Theory of operation (docs/sdk.md)
    :class:`ClientCore` holds the protocol logic of one account: identity, prekeys,
    contacts and their pairwise mailboxes, sessions, the outbox and receiving. It does
    no network I/O and never touches asyncio, sockets or the clock: callers pass
    ``now_ms`` and decoded frames in, and get back frames to send (built by
    :mod:`client_sdk.frames`), :mod:`events <client_sdk.events>` and outbox rows. It
    performs its store calls itself, synchronously, on the :class:`ClientStore` it is
    given (never constructed here); the AsyncClient runs every core call on one worker
    thread, so calls are serialized and the store never blocks the event loop.

    Invariants:

    * **Encrypt, persist, then send.** Every ciphertext is stored with the ratchet state
      that produced it in one transaction (``enqueue``/``enqueue_many``) before any
      frame carries it; retries resend the stored bytes.
    * **Receive, persist, then ack.** A delivery's effects (state, contact, history,
      envelope record, an obliged reply) are one transaction; only then is it acked
      and its events emitted.
    * **Caches follow the store.** Sessions, contacts and conversation ids are cached
      in memory and updated only after the store call that wrote them returned.
      Batches work on an overlay that is merged on commit and dropped on failure.

    The sending side is in :mod:`client_sdk._sending`, the receiving side in
    :mod:`client_sdk._receiving`, prekeys in :mod:`client_sdk._prekeys`.
"""

from __future__ import annotations

import dataclasses
import logging
from collections.abc import Sequence

from pigeon_crypto import safety
from pigeon_crypto.errors import DecodeError, UnsupportedVersion
from pigeon_crypto.identity import IdentityKeyPair, IdentityRotation
from pigeon_crypto.ratchet import RatchetState
from pigeon_crypto.rng import Rng, system_rng
from protocol.frames import Bundle, MailboxCreated, PrekeysLow, UploadPrekeys
from protocol.inner import PresenceState, ReceiptKind

from . import _groups, _groups_receive, _prekeys, _receiving, _sending
from .errors import (
    ContactBlocked,
    ContactNotReady,
    IdentityChangeUnacknowledged,
    NotRegistered,
    UnknownContact,
)
from .events import Event, MessageRef
from .frames import VerifiedBundle, capability_hash, split_upload, upload_frame, verify_bundle
from .history import ACCOUNT_ID_SIZE, ConversationKind
from .payloads import ContactLink, identity_fingerprint
from .store.protocols import ClientStore
from .store.records import (
    Contact,
    ContactState,
    LocalIdentity,
    MailboxDirection,
    OutboxItem,
    PairwiseMailbox,
    PrekeyUpload,
)

__all__ = ["ClientCore", "CoreConfig"]

_log = logging.getLogger("pigeon.sdk")

SETTING_RELAY = "relay_url"
SETTING_REGISTERED = "registered"
SETTING_CONTACT_MAILBOX = "contact_mailbox"
SETTING_DISPLAY_NAME = "display_name"
SETTING_AVATAR = "avatar_manifest"
SETTING_PRESENCE = "presence_enabled"
SETTING_IDENTITY_ANNOUNCED = "identity_announced"
"""How many of our identity rotations contacts were sent (``IdentityRotated``)."""
SETTING_IDENTITY_UNANNOUNCED = "identity_unannounced"
"""Contacts an identity announcement skipped (their account ids, concatenated)."""


@dataclasses.dataclass(frozen=True, slots=True, kw_only=True)
class CoreConfig:
    prekeys: _prekeys.PrekeyPolicy = dataclasses.field(default_factory=_prekeys.PrekeyPolicy)
    auto_delivery_receipts: bool = True
    """Send a DELIVERED receipt for every received text or file (batched per peer)."""


class ClientCore:
    """The no-I/O client of one profile. Not thread-safe: call from one thread."""

    def __init__(self, store: ClientStore, *, rng: Rng = system_rng,
                 config: CoreConfig | None = None) -> None:
        self.store = store
        self.rng = rng
        self.config = config or CoreConfig()
        self._identity = store.local_identity()
        self._contacts: dict[bytes, Contact] = {c.account_id: c for c in store.list_contacts()}
        self._by_mailbox: dict[bytes, bytes] = {}
        for contact in self._contacts.values():
            self._index(contact)
        self._sessions: dict[bytes, RatchetState] = {}
        self._conversations: dict[bytes, int] = {}
        self._conversation_peers: dict[int, bytes] = {}
        self._sendable: dict[bytes, tuple[Contact, PairwiseMailbox]] = {}
        raw = store.get_setting(SETTING_CONTACT_MAILBOX)
        self._contact_mailbox = None if raw is None else (raw[:16], raw[16:])
        self.pending_receipts: dict[bytes, list[bytes]] = {}
        self.state_requests: dict[tuple[bytes, bytes], int] = {}
        """``(group_id, state hash)`` -> when we last asked for that missing state."""
        self.state_answers: dict[tuple[bytes, bytes], int] = {}
        """``(requester, state hash)`` -> when we last answered a request for it."""
        self.missing_since: dict[tuple[bytes, bytes], int] = {}
        """``(group_id, state hash)`` -> since when a pending state waits for it."""
        self.groups_asked: dict[bytes, int] = {}
        """``group_id`` -> when we last asked for one of its states."""
        self.key_requests: dict[tuple[bytes, bytes], int] = {}
        """``(group_id, member)`` -> when we last asked that member for its chain."""

    def __repr__(self) -> str:
        who = self._identity.account_id.hex() if self._identity else "unregistered"
        return f"ClientCore({who}, {len(self._contacts)} contacts)"

    # --- identity and registration --------------------------------------------------------

    @property
    def identity(self) -> LocalIdentity:
        if self._identity is None:
            raise NotRegistered()
        return self._identity

    @property
    def has_identity(self) -> bool:
        return self._identity is not None

    @property
    def account_id(self) -> bytes:
        return self.identity.account_id

    def create_identity(self) -> LocalIdentity:
        """Our identity, generated and stored on first use."""
        if self._identity is None:
            identity = LocalIdentity.new(IdentityKeyPair.generate(self.rng))
            self.store.save_local_identity(identity)
            self._identity = identity
        return self._identity

    @property
    def registered(self) -> bool:
        return self.store.get_setting(SETTING_REGISTERED) is not None

    def mark_registered(self, relay_url: str) -> None:
        self.store.put_setting(SETTING_RELAY, relay_url.encode())
        self.store.put_setting(SETTING_REGISTERED, b"1")

    def forget_registration(self) -> None:
        """After ``DeleteAccount``: the relay forgot us; keep history, drop addressing."""
        for name in (SETTING_REGISTERED, SETTING_CONTACT_MAILBOX):
            self.store.delete_setting(name)
        self._contact_mailbox = None

    def rotate_identity(self) -> tuple[LocalIdentity, IdentityRotation]:
        """A new identity key, signed by the current one (protocol §4). The caller
        sends ``RotateIdentity`` first and calls :meth:`commit_identity` on ``Ok``."""
        current = self.identity
        new = IdentityKeyPair.generate(self.rng)
        rotation = IdentityRotation.create(account_id=current.account_id,
                                           serial=len(current.rotations) + 1,
                                           old=current.key_pair, new=new)
        return (LocalIdentity(account_id=current.account_id, initial=current.initial,
                              rotations=(*current.rotations, rotation), key_pair=new),
                rotation)

    def commit_identity(self, identity: LocalIdentity, *, now_ms: int) -> None:
        """Store a rotated identity and re-sign: a new signed prekey and new ML-KEM
        prekeys (upload them with :meth:`prekeys_to_upload`)."""
        self.store.save_local_identity(identity)
        self._identity = identity
        _prekeys.resign_after_rotation(self.store, identity, now_ms=now_ms, rng=self.rng,
                                       policy=self.config.prekeys)

    def announce_identity(self, *, now_ms: int) -> list[OutboxItem]:
        """After :meth:`commit_identity`: an ``IdentityRotated`` to every accepted contact
        (send the items), then a note that the rotations so far were announced. A crash
        in between leaves :meth:`identity_announcement_due` true, and the client
        announces again at its next login (a contact ignores a key it already has).
        Contacts we may not write to now are noted and told by
        :meth:`announce_identity_to_waiting` once we may."""
        items, waiting = _sending.announce_identity(self, now_ms=now_ms)
        self._set_unannounced(waiting)
        self.store.put_setting(SETTING_IDENTITY_ANNOUNCED,
                               str(len(self.identity.rotations)).encode())
        return items

    def announce_identity_to_waiting(self, *, now_ms: int) -> list[OutboxItem]:
        """The announcement for contacts skipped by :meth:`announce_identity` (blocked,
        an identity change of theirs not acknowledged, no session) that we may write to
        now; the client calls it on unblock, on acknowledgement and at every login."""
        raw = self.store.get_setting(SETTING_IDENTITY_UNANNOUNCED) or b""
        if not raw:
            return []
        waiting = [raw[i:i + ACCOUNT_ID_SIZE] for i in range(0, len(raw), ACCOUNT_ID_SIZE)]
        items, still = _sending.announce_identity(self, now_ms=now_ms, peers=waiting)
        if still != waiting:
            self._set_unannounced(still)
        return items

    def _set_unannounced(self, peers: Sequence[bytes]) -> None:
        if peers:
            self.store.put_setting(SETTING_IDENTITY_UNANNOUNCED, b"".join(peers))
        else:
            self.store.delete_setting(SETTING_IDENTITY_UNANNOUNCED)

    def identity_announcement_due(self) -> bool:
        """Whether a rotation of ours has not been announced to contacts yet."""
        raw = self.store.get_setting(SETTING_IDENTITY_ANNOUNCED)
        return len(self.identity.rotations) > (0 if raw is None else int(raw))

    # --- prekeys ---------------------------------------------------------------------------

    def prekeys_to_upload(self, *, now_ms: int, notice: PrekeysLow | None = None,
                          ) -> list[PrekeyUpload]:
        """Generate what is missing (or due for rotation) and return the upload pieces."""
        upload = _prekeys.plan_prekeys(
            self.store, self.identity, now_ms=now_ms, rng=self.rng,
            policy=self.config.prekeys,
            relay_one_time=None if notice is None else notice.one_time_prekeys,
            relay_kem_one_time=None if notice is None else notice.one_time_kem_prekeys)
        return split_upload(upload)

    @staticmethod
    def upload_frame(piece: PrekeyUpload, request_id: int) -> UploadPrekeys:
        return upload_frame(piece, request_id)

    def prekeys_uploaded(self, piece: PrekeyUpload, *, now_ms: int) -> None:
        _prekeys.mark_uploaded(self.store, piece, now_ms=now_ms)

    # --- mailboxes -------------------------------------------------------------------------

    def new_capability(self) -> tuple[bytes, bytes]:
        """A fresh send capability and the hash the relay gets: ``(capability, hash)``."""
        capability = self.rng(32)
        return capability, capability_hash(capability)

    @property
    def contact_mailbox(self) -> tuple[bytes, bytes] | None:
        """Our public contact mailbox ``(mailbox_id, capability)``, once created."""
        return self._contact_mailbox

    def set_contact_mailbox(self, mailbox_id: bytes, capability: bytes) -> None:
        self.store.put_setting(SETTING_CONTACT_MAILBOX, mailbox_id + capability, secret=True)
        self._contact_mailbox = (mailbox_id, capability)

    def subscriptions(self) -> list[bytes]:
        """Every mailbox we receive on: the contact mailbox and our pairwise mailboxes
        (current and retiring), sorted."""
        ids = set(self._by_mailbox)
        if self._contact_mailbox is not None:
            ids.add(self._contact_mailbox[0])
        return sorted(ids)

    def drop_mailboxes(self, mailbox_ids: Sequence[bytes], *, now_ms: int) -> None:
        """The relay no longer has these (``Subscribed.rejected``): forget retired ones."""
        for mid in mailbox_ids:
            peer = self._by_mailbox.get(mid)
            if peer is None:
                continue
            contact = self._contacts[peer]
            kept = tuple(m for m in contact.mailboxes
                         if m.mailbox_id != mid or m.retired_at_ms is None)
            if kept != contact.mailboxes:
                self.save_contact(dataclasses.replace(contact, mailboxes=kept,
                                                      updated_at_ms=now_ms))

    # --- contacts ---------------------------------------------------------------------------

    def _index(self, contact: Contact) -> None:
        for m in contact.mailboxes:
            if m.direction is MailboxDirection.INBOUND:
                self._by_mailbox[m.mailbox_id] = contact.account_id

    def cache_contact(self, contact: Contact) -> None:
        """Record a contact the store has just saved."""
        self._sendable.pop(contact.account_id, None)
        old = self._contacts.get(contact.account_id)
        if old is not None:
            for m in old.mailboxes:
                self._by_mailbox.pop(m.mailbox_id, None)
        self._contacts[contact.account_id] = contact
        self._index(contact)

    def save_contact(self, contact: Contact) -> None:
        self.store.save_contact(contact)
        self.cache_contact(contact)

    def contact(self, peer: bytes) -> Contact | None:
        """The contact with account id *peer*, or None.

        Raises:
            TypeError: *peer* is a str (a hex id: ``bytes.fromhex`` it first).
        """
        if isinstance(peer, str):
            raise TypeError("peer must be bytes (an account or group id), not str: "
                            "bytes.fromhex() a hex id first")
        return self._contacts.get(peer)

    def contacts(self, state: ContactState | None = None) -> list[Contact]:
        return sorted((c for c in self._contacts.values() if state is None or c.state is state),
                      key=lambda c: c.account_id)

    def contact_for_mailbox(self, mailbox_id: bytes) -> Contact | None:
        peer = self._by_mailbox.get(mailbox_id)
        return None if peer is None else self._contacts.get(peer)

    def sendable(self, peer: bytes) -> tuple[Contact, PairwiseMailbox]:
        """The contact and the mailbox to write to, if we may send to it now (cached:
        this runs once per message).

        Raises:
            UnknownContact, ContactBlocked, ContactNotReady, IdentityChangeUnacknowledged.
        """
        hit = self._sendable.get(peer)
        if hit is not None:
            return hit
        contact = self.require_sendable(peer)
        assert contact.outbound is not None
        self._sendable[peer] = (contact, contact.outbound)
        return self._sendable[peer]

    def require_sendable(self, peer: bytes) -> Contact:
        """The contact, if we may send to it now.

        Raises:
            UnknownContact, ContactBlocked, ContactNotReady, IdentityChangeUnacknowledged.
        """
        contact = self._contacts.get(peer)
        if contact is None:
            raise UnknownContact(peer)
        if contact.state is ContactState.BLOCKED:
            raise ContactBlocked(peer)
        if contact.identity_changed:
            raise IdentityChangeUnacknowledged(peer)
        if contact.state is not ContactState.ACCEPTED or contact.outbound is None:
            raise ContactNotReady(peer, contact.state.name)
        return contact

    def session(self, peer: bytes) -> RatchetState | None:
        state = self._sessions.get(peer)
        if state is None:
            state = self.store.load_session(peer)
            if state is not None:
                self._sessions[peer] = state
        return state

    def cache_session(self, peer: bytes, state: RatchetState) -> None:
        self._sessions[peer] = state

    def conversation_id(self, peer: bytes, *, now_ms: int) -> int:
        """The direct conversation with *peer*, created (titled by its profile name)."""
        cid = self._conversations.get(peer)
        if cid is None:
            contact = self._contacts.get(peer)
            title = contact.profile_name if contact else None
            cid = self.store.ensure_conversation(ConversationKind.DIRECT, peer, now_ms=now_ms,
                                                 title=title).id
            self._conversations[peer] = cid
            self._conversation_peers[cid] = peer
        return cid

    def conversation_peer(self, conversation_id: int) -> bytes | None:
        """The peer of a direct conversation (cached)."""
        peer = self._conversation_peers.get(conversation_id)
        if peer is None:
            conversation = self.store.get_conversation(conversation_id)
            if conversation is None:
                return None
            peer = self._conversation_peers[conversation_id] = conversation.peer
        return peer

    def display_name(self) -> str | None:
        raw = self.store.get_setting(SETTING_DISPLAY_NAME)
        return None if raw is None else raw.decode()

    def avatar_manifest(self) -> bytes | None:
        return self.store.get_setting(SETTING_AVATAR)

    def contact_link(self, relay_url: str | None) -> str:
        """A shareable link (and QR payload) to add us (``payloads.ContactLink``)."""
        return ContactLink(account_id=self.account_id, relay_url=relay_url,
                           fingerprint=identity_fingerprint(self.identity.key_pair.public),
                           ).to_uri()

    def verify_bundle(self, frame: Bundle, *, expected_fingerprint: bytes | None = None,
                      ) -> VerifiedBundle:
        return verify_bundle(frame, expected_fingerprint=expected_fingerprint)

    def refresh_identity(self, verified: VerifiedBundle, *, now_ms: int) -> list[Event]:
        """Compare a contact's freshly fetched bundle with the identity we know: a signed
        rotation is taken silently (event ``rotated``), anything else needs the user's
        acknowledgement (``IdentityChanged(requires_ack=True)``)."""
        contact = self._contacts.get(verified.account_id)
        if contact is None:
            raise UnknownContact(verified.account_id)
        updated, event = _receiving.identity_update(
            contact, verified.identity, verified.initial, verified.rotations,
            verified.rotation_bytes)
        if updated != contact:
            self.save_contact(dataclasses.replace(updated, updated_at_ms=now_ms))
        return [] if event is None else [event]

    def start_contact(self, verified: VerifiedBundle, created: MailboxCreated,
                      capability: bytes, *, relay_url: str | None, now_ms: int,
                      ) -> tuple[list[OutboxItem], list[Event]]:
        """Invite a verified account: PQXDH to its contact mailbox carrying our new
        pairwise mailbox (``created``) and ``capability``; the contact becomes INVITED."""
        return _sending.start_contact(self, verified, created.mailbox_id, capability,
                                      relay_url=relay_url, now_ms=now_ms)

    def accept(self, peer: bytes, created: MailboxCreated, capability: bytes, *,
               now_ms: int) -> tuple[list[OutboxItem], list[Event]]:
        """Accept a PENDING invitation: announce our new pairwise mailbox and profile."""
        return _sending.accept(self, peer, created.mailbox_id, capability, now_ms=now_ms)

    def rotate_mailbox(self, peer: bytes, created: MailboxCreated, capability: bytes, *,
                       now_ms: int) -> list[OutboxItem]:
        """Our inbound mailbox for *peer* was rotated on the relay: retire the old one
        and announce the new one inside the session (``MailboxRotation``)."""
        return _sending.rotate_mailbox(self, peer, created.mailbox_id, capability,
                                       now_ms=now_ms)

    def set_state(self, peer: bytes, *, blocked: bool, now_ms: int) -> Contact:
        """Block, or unblock (back to the state its mailboxes imply)."""
        contact = self._contacts.get(peer)
        if contact is None:
            raise UnknownContact(peer)
        if blocked:
            state = ContactState.BLOCKED
        elif contact.inbound is not None and contact.outbound is not None:
            state = ContactState.ACCEPTED
        elif contact.inbound is not None:
            state = ContactState.INVITED
        else:
            state = ContactState.PENDING
        updated = dataclasses.replace(contact, state=state, updated_at_ms=now_ms)
        self.save_contact(updated)
        return updated

    def acknowledge_identity_change(self, peer: bytes, *, now_ms: int) -> Contact:
        contact = self._contacts.get(peer)
        if contact is None:
            raise UnknownContact(peer)
        updated = dataclasses.replace(contact, identity_changed=False, updated_at_ms=now_ms)
        self.save_contact(updated)
        return updated

    def set_verified(self, peer: bytes, verified: bool, *, now_ms: int) -> Contact:
        contact = self._contacts.get(peer)
        if contact is None:
            raise UnknownContact(peer)
        updated = dataclasses.replace(contact, verified=verified, updated_at_ms=now_ms)
        self.save_contact(updated)
        return updated

    def _identities(self, peer: bytes) -> tuple[bytes, bytes]:
        contact = self._contacts.get(peer)
        if contact is None or contact.identity is None:
            raise UnknownContact(peer)
        return self.identity.key_pair.public.signing_key, contact.identity.signing_key

    def safety_number(self, peer: bytes) -> str:
        """The 60-digit safety number with *peer*, formatted in 12 groups of 5."""
        ours, theirs = self._identities(peer)
        return safety.format_safety_number(
            safety.safety_number(self.account_id, ours, peer, theirs))

    def scannable_safety_number(self, peer: bytes) -> bytes:
        ours, theirs = self._identities(peer)
        return safety.scannable_safety_number(self.account_id, ours, peer, theirs)

    def verify_scanned(self, peer: bytes, scanned: bytes, *, now_ms: int) -> bool:
        """Compare a scanned QR payload; on a match mark the contact verified. False for
        a mismatch and for bytes that are no safety-number code at all (a QR scanner
        hands over whatever it read)."""
        ours, theirs = self._identities(peer)
        try:
            ok = safety.verify_scanned(self.account_id, ours, peer, theirs, scanned)
        except (DecodeError, UnsupportedVersion):  # not a code of ours: not this contact's
            return False
        if ok:
            self.set_verified(peer, True, now_ms=now_ms)
        return ok

    # --- sending and receiving (see _sending / _receiving) ----------------------------------

    def submit(self, intents: Sequence[_sending.Intent], *, now_ms: int,
               ) -> _sending.Submitted:
        """Encrypt and persist a batch of intents in one transaction (group commit)."""
        return _sending.submit(self, intents, now_ms=now_ms)

    def ephemeral(self, peer: bytes, *, typing: bool | None = None,
                  presence: PresenceState | None = None, now_ms: int,
                  ) -> tuple[bytes, bytes, tuple[bytes, bytes]] | None:
        """Encrypt a typing or presence signal: ``(client_msg_id, blob, recipient)``,
        or None when the contact cannot receive it (not accepted, blocked)."""
        return _sending.ephemeral(self, peer, typing=typing, presence=presence, now_ms=now_ms)

    def flush_receipts(self, *, now_ms: int) -> _sending.Submitted:
        """Send the delivery receipts gathered while receiving (one per peer)."""
        intents = [_sending.SendReceipt(peer=peer, kind=ReceiptKind.DELIVERED,
                                        message_ids=tuple(ids))
                   for peer, ids in self.pending_receipts.items()]
        self.pending_receipts = {}
        return _sending.submit(self, intents, now_ms=now_ms, quiet=True)

    def due_outbox(self, *, now_ms: int, limit: int = 1000) -> list[OutboxItem]:
        return self.store.due_outbox(now_ms=now_ms, limit=limit)

    def sent(self, items: Sequence[OutboxItem], *, now_ms: int) -> list[Event]:
        """The relay stored these rows (``Sent``): delete them, messages become SENT."""
        return _sending.sent(self, items, now_ms=now_ms)

    def send_failed(self, item: OutboxItem, *, reason: str, now_ms: int) -> list[Event]:
        """A permanent refusal: the row goes, its message becomes FAILED(reason)."""
        return _sending.failed(self, item, reason=reason, now_ms=now_ms)

    def send_retry(self, client_msg_id: bytes, *, attempts: int, error: str,
                   now_ms: int, not_before_ms: int = 0) -> int:
        return _sending.retry(self, client_msg_id, attempts=attempts, error=error,
                              now_ms=now_ms, not_before_ms=not_before_ms)

    def receive(self, deliveries: Sequence[_receiving.DeliveryLike], *, now_ms: int,
                ) -> _receiving.Received:
        """Process a batch of deliveries (one transaction); see :mod:`._receiving`."""
        received = _receiving.receive(self, deliveries, now_ms=now_ms)
        if received.groups_changed:
            placed, acks, unknown = _groups_receive.retry_pending(self, now_ms=now_ms)
            received.events += placed
            received.group_receipts += acks
            received.chains_unknown |= unknown
            received.items += _groups.forward_winners(self, received.groups_changed,
                                                      now_ms=now_ms)
        if received.group_forwards:
            received.items += _groups.forward_states(self, received.group_forwards,
                                                     now_ms=now_ms)
        if received.groups_back or received.chains_unknown:
            received.items += _groups.request_keys(self, received.groups_back,
                                                   received.chains_unknown, now_ms=now_ms)
        if received.group_answers:
            received.items += _groups.answer_requests(self, received.group_answers,
                                                      now_ms=now_ms)
        waiting = received.groups_waiting | {
            g for g, _ in self.missing_since if g in received.groups_changed}
        if waiting:  # a state waits for a parent, or one we waited for may have come
            received.items += _groups.request_missing(self, sorted(waiting), now_ms=now_ms)
        if received.group_receipts:
            received.items += _groups.send_receipts(self, received.group_receipts,
                                                    ReceiptKind.DELIVERED, now_ms=now_ms)
        name = self.display_name()
        if received.profile_followups and name is not None:
            done = self.submit([_sending.SendProfile(peer=p, display_name=name,
                                                     avatar_manifest=self.avatar_manifest())
                                for p in received.profile_followups], now_ms=now_ms)
            received.items += done.items
        return received

    def group_upkeep(self, *, now_ms: int) -> list[OutboxItem]:
        """Periodic group work: drop halves of sealed changes whose other half is not
        coming, and ask for the group states still missing after the grace period
        (asked for after every batch that changed a group too)."""
        _groups_receive.expire_sealed(self, now_ms=now_ms)
        if not self.missing_since:
            return []
        groups = sorted({group_id for group_id, _ in self.missing_since})
        return _groups.request_missing(self, groups, now_ms=now_ms)

    def receive_ephemeral(self, mailbox_id: bytes, blob: bytes, *, now_ms: int,
                          ) -> list[Event]:
        return _receiving.receive_ephemeral(self, mailbox_id, blob, now_ms=now_ms)

    def messages_expired(self, mailbox_id: bytes, count: int, up_to_seq: int) -> list[Event]:
        return _receiving.messages_expired(self, mailbox_id, count, up_to_seq)

    def message_ref(self, peer: bytes, conversation_id: int, message_id: bytes,
                    client_msg_id: bytes) -> MessageRef:
        return MessageRef(peer=peer, conversation_id=conversation_id, message_id=message_id,
                          client_msg_id=client_msg_id)
