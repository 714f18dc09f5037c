"""The sans-I/O core against an in-memory, frame-level fake relay (no sockets, no asyncio).

``FakeRelay`` implements just enough of protocol §9 for two or three cores: accounts
with challenge signatures, prekey bundles, mailboxes with capability hashes,
idempotent sends, at-least-once deliveries and acks. ``Party`` drives one core the way
the AsyncClient does (build frames, hand results back), with a fixed clock and seeded
randomness.
"""

from __future__ import annotations

import dataclasses
import hashlib
import hmac
from typing import Any

import pytest

from client_sdk import _sending
from client_sdk.core import ClientCore
from client_sdk.errors import (
    ContactBlocked,
    ContactNotReady,
    IdentityChangeUnacknowledged,
    IdentityMismatch,
)
from client_sdk.events import (
    ContactAccepted,
    Event,
    IdentityChanged,
    InvitationReceived,
    MailboxRotated,
    MessageDeleted,
    MessageEdited,
    MessageReceived,
    MessageStatusChanged,
    ProfileChanged,
    ReactionChanged,
    ReceiptReceived,
    TypingChanged,
)
from client_sdk.frames import ack_frames, auth_frame, register_frame, send_frame
from client_sdk.history import MessageStatus
from client_sdk.payloads import ContactLink, ContactRequest
from client_sdk.store import ContactState, MemoryStore
from pigeon_crypto.identity import IdentityKeyPair, IdentityPublicKey
from pigeon_crypto.rng import SeededRng
from pigeon_crypto.signing import Purpose
from protocol import ErrorCode
from protocol.frames import (
    Ack,
    Bundle,
    Challenge,
    Delivery,
    Error,
    MailboxCreated,
    Sent,
    UploadPrekeys,
)
from protocol.inner import ReceiptKind
from protocol.payloads import challenge_payload

NOW = 1_790_000_000_000


class FakeRelay:
    """Accounts, prekeys, mailboxes and queues in dictionaries (protocol §9, §10)."""

    def __init__(self) -> None:
        self.identities: dict[bytes, bytes] = {}
        self.rotations: dict[bytes, list[bytes]] = {}
        self.prekeys: dict[bytes, dict[str, Any]] = {}
        self.contact: dict[bytes, tuple[bytes, bytes]] = {}
        self.mailboxes: dict[bytes, dict[str, Any]] = {}
        self.counter = 0
        self.relay_id = b"R" * 16

    def challenge(self) -> Challenge:
        self.counter += 1
        return Challenge(request_id=1, relay_id=self.relay_id,
                         nonce=hashlib.sha256(b"%d" % self.counter).digest(),
                         server_time_ms=NOW)

    def register(self, core: ClientCore) -> None:
        challenge = self.challenge()
        frame = register_frame(core.create_identity(), challenge, 2)
        identity = IdentityPublicKey.from_bytes(frame.identity_key)
        identity.verify(Purpose.RELAY_CHALLENGE, challenge_payload(
            challenge.relay_id, challenge.nonce, challenge.server_time_ms, frame.account_id),
            frame.signature)
        self.identities[frame.account_id] = frame.identity_key
        self.rotations[frame.account_id] = []
        self.prekeys[frame.account_id] = {"otk": [], "kem": []}

    def login(self, core: ClientCore) -> None:
        challenge = self.challenge()
        frame = auth_frame(core.identity, challenge, 2)
        identity = IdentityPublicKey.from_bytes(self.identities[frame.account_id])
        identity.verify(Purpose.RELAY_CHALLENGE, challenge_payload(
            challenge.relay_id, challenge.nonce, challenge.server_time_ms, frame.account_id),
            frame.signature)

    def upload(self, owner: bytes, frame: UploadPrekeys) -> None:
        keys = self.prekeys[owner]
        if frame.signed_prekey:
            keys["signed"] = frame.signed_prekey
        if frame.kem_prekey:
            keys["last_resort"] = frame.kem_prekey
        keys["otk"] += frame.one_time_prekeys
        keys["kem"] += frame.one_time_kem_prekeys

    def bundle(self, account_id: bytes) -> Bundle:
        keys = self.prekeys[account_id]
        contact = self.contact.get(account_id)
        return Bundle(
            request_id=3, account_id=account_id, identity_key=self.identities[account_id],
            signed_prekey=keys["signed"],
            kem_prekey=keys["kem"].pop(0) if keys["kem"] else keys["last_resort"],
            one_time_prekey=keys["otk"].pop(0) if keys["otk"] else None,
            contact_mailbox_id=contact[0] if contact else None,
            contact_capability=contact[1] if contact else None,
            rotations=tuple(self.rotations[account_id]))

    def create_mailbox(self, owner: bytes, capability_hash: bytes) -> MailboxCreated:
        self.counter += 1
        mailbox_id = hashlib.sha256(b"mailbox%d" % self.counter).digest()[:16]
        self.mailboxes[mailbox_id] = {"owner": owner, "hash": capability_hash, "seq": 0,
                                      "queue": {}, "dedup": set(), "retired": False}
        return MailboxCreated(request_id=4, mailbox_id=mailbox_id)

    def rotate(self, owner: bytes, old: bytes, capability_hash: bytes) -> MailboxCreated:
        assert self.mailboxes[old]["owner"] == owner
        return self.create_mailbox(owner, capability_hash)

    def send(self, frame: Any) -> Sent | Error:
        rejected = []
        for index, (mailbox_id, capability) in enumerate(frame.recipients):
            box = self.mailboxes.get(mailbox_id)
            if box is None or not hmac.compare_digest(
                    box["hash"], hashlib.sha256(capability).digest()):
                rejected.append((index, int(ErrorCode.WRONG_CAPABILITY)))
                continue
            if frame.client_msg_id in box["dedup"]:
                continue
            box["dedup"].add(frame.client_msg_id)
            box["seq"] += 1
            box["queue"][box["seq"]] = frame.blob
        if len(rejected) == len(frame.recipients):
            return Error(request_id=frame.request_id, code=rejected[0][1])
        return Sent(request_id=frame.request_id, rejected=tuple(rejected))

    def deliveries(self, mailbox_ids: list[bytes]) -> list[Delivery]:
        return [Delivery(mailbox_id=m, seq=seq, received_at_ms=NOW, blob=blob)
                for m in mailbox_ids if m in self.mailboxes
                for seq, blob in sorted(self.mailboxes[m]["queue"].items())]

    def ack(self, frame: Ack) -> None:
        queue = self.mailboxes[frame.mailbox_id]["queue"]
        for seq in [s for s in queue if s <= frame.up_to_seq or s in frame.seqs]:
            del queue[seq]


class Party:
    """One core driven like the AsyncClient drives it."""

    def __init__(self, relay: FakeRelay, name: str, display_name: str | None = None) -> None:
        self.relay = relay
        self.store = MemoryStore()
        self.core = ClientCore(self.store, rng=SeededRng(name.encode()))
        self.events: list[Event] = []
        self.now = NOW
        relay.register(self.core)
        if display_name:
            self.store.put_setting("display_name", display_name.encode())
        for piece in self.core.prekeys_to_upload(now_ms=self.now):
            relay.upload(self.id, self.core.upload_frame(piece, 5))
            self.core.prekeys_uploaded(piece, now_ms=self.now)
        capability, digest = self.core.new_capability()
        created = relay.create_mailbox(self.id, digest)
        relay.contact[self.id] = (created.mailbox_id, capability)
        self.core.set_contact_mailbox(created.mailbox_id, capability)

    @property
    def id(self) -> bytes:
        return self.core.account_id

    def add(self, other: Party, **verify: Any) -> None:
        verified = self.core.verify_bundle(self.relay.bundle(other.id), **verify)
        capability, digest = self.core.new_capability()
        created = self.relay.create_mailbox(self.id, digest)
        self.core.start_contact(verified, created, capability, relay_url=None, now_ms=self.now)

    def accept(self, other: Party) -> None:
        capability, digest = self.core.new_capability()
        created = self.relay.create_mailbox(self.id, digest)
        _, events = self.core.accept(other.id, created, capability, now_ms=self.now)
        self.events += events

    def submit(self, *intents: _sending.Intent) -> list[Any]:
        done = self.core.submit(list(intents), now_ms=self.now)
        self.events += done.events
        return done.results

    def flush(self) -> None:
        """Send every due outbox row; absorb the answers."""
        for item in self.core.due_outbox(now_ms=self.now):
            answer = self.relay.send(send_frame(item, 9))
            if isinstance(answer, Sent):
                self.events += self.core.sent([item], now_ms=self.now)
            else:
                self.events += self.core.send_failed(item, reason="wrong-capability",
                                                     now_ms=self.now)

    def sync(self, deliveries: list[Delivery] | None = None) -> list[Event]:
        """Receive (everything subscribed, or *deliveries*), ack, send what that queued."""
        if deliveries is None:
            deliveries = self.relay.deliveries(self.core.subscriptions())
        received = self.core.receive(deliveries, now_ms=self.now)
        for mailbox_id, seqs in received.acks.items():
            for ack in ack_frames(mailbox_id, seqs, iter(range(1, 100))):
                self.relay.ack(ack)
        self.events += received.events
        self.events += self.core.flush_receipts(now_ms=self.now).events
        self.flush()
        return received.events

    def take(self, kind: type[Event] | None = None) -> list[Event]:
        got = [e for e in self.events if kind is None or isinstance(e, kind)]
        self.events = [e for e in self.events if e not in got]
        return got


def _connect(alice: Party, bob: Party) -> None:
    alice.add(bob)
    alice.flush()
    bob.sync()
    bob.accept(alice)
    bob.flush()
    alice.sync()


@pytest.fixture
def relay() -> FakeRelay:
    return FakeRelay()


def test_full_flow(relay: FakeRelay) -> None:
    alice, bob = Party(relay, "alice", "Alice"), Party(relay, "bob", "Bob")
    alice.add(bob)
    assert alice.core.contact(bob.id).state is ContactState.INVITED  # type: ignore[union-attr]
    with pytest.raises(ContactNotReady):
        alice.core.require_sendable(bob.id)
    alice.flush()
    bob.sync()
    [invitation] = bob.take(InvitationReceived)
    assert invitation == InvitationReceived(peer=alice.id, profile_name="Alice")
    assert bob.core.contact(alice.id).state is ContactState.PENDING  # type: ignore[union-attr]
    bob.accept(alice)
    assert bob.take(ContactAccepted) == [ContactAccepted(peer=alice.id, profile_name="Alice",
                                                         by_peer=False)]
    bob.flush()
    alice.sync()
    assert alice.take(ContactAccepted)[0].by_peer  # type: ignore[attr-defined]
    assert alice.take(ProfileChanged)[0].display_name == "Bob"  # type: ignore[attr-defined]
    conv = alice.store.find_conversation(*_direct(bob.id))
    assert conv is not None and conv.title == "Bob"

    [ref] = alice.submit(_sending.SendText(peer=bob.id, text="hello Bob"))
    assert alice.take(MessageStatusChanged)[0].status is MessageStatus.PENDING  # type: ignore[attr-defined]
    alice.flush()
    assert alice.take(MessageStatusChanged)[0].status is MessageStatus.SENT  # type: ignore[attr-defined]
    bob.sync()
    [received] = bob.take(MessageReceived)
    assert received.text == "hello Bob" and received.message_id == ref.message_id  # type: ignore[attr-defined]
    alice.sync()
    statuses = alice.take(MessageStatusChanged)
    assert [s.status for s in statuses] == [MessageStatus.DELIVERED]  # type: ignore[attr-defined]
    assert alice.take(ReceiptReceived)[0].kind is ReceiptKind.DELIVERED  # type: ignore[attr-defined]

    # Replies, edits, reactions, deletes and read receipts.
    bob.submit(_sending.SendText(peer=alice.id, text="hi!", reply_to=ref.message_id),
               _sending.SendReaction(peer=alice.id, target=ref.message_id, emoji="👍"),
               _sending.SendReceipt(peer=alice.id, kind=ReceiptKind.READ,
                                    message_ids=(ref.message_id,)))
    bob.flush()
    alice.sync()
    [reply] = alice.take(MessageReceived)
    assert reply.reply_to == ref.message_id  # type: ignore[attr-defined]
    assert alice.take(ReactionChanged)[0].emoji == "👍"  # type: ignore[attr-defined]
    assert [s.status for s in alice.take(MessageStatusChanged)] == [MessageStatus.READ]  # type: ignore[attr-defined]
    stored = alice.store.get_message(ref.conversation_id, ref.message_id)
    assert stored is not None and stored.status is MessageStatus.READ
    assert [r.emoji for r in stored.reactions] == ["👍"]
    alice.submit(_sending.SendEdit(peer=bob.id, target=ref.message_id, text="hello, Bob"),
                 _sending.SendDelete(peer=bob.id, target=ref.message_id))
    alice.flush()
    bob.sync()
    assert bob.take(MessageEdited)[0].text == "hello, Bob"  # type: ignore[attr-defined]
    assert bob.take(MessageDeleted)[0].message_id == ref.message_id  # type: ignore[attr-defined]
    bob_conv = bob.core.conversation_id(alice.id, now_ms=NOW)
    gone = bob.store.get_message(bob_conv, ref.message_id)
    assert gone is not None and gone.deleted_at_ms is not None and gone.body is None
    # Only our own messages can be edited.
    [refused] = bob.submit(_sending.SendEdit(peer=alice.id, target=ref.message_id, text="x"))
    assert isinstance(refused, Exception)


def _direct(peer: bytes) -> tuple[Any, bytes]:
    from client_sdk.history import ConversationKind
    return ConversationKind.DIRECT, peer


def test_redelivery_duplicates_and_out_of_order(relay: FakeRelay) -> None:
    alice, bob = Party(relay, "alice"), Party(relay, "bob")
    _connect(alice, bob)
    bob.take()
    alice.submit(*[_sending.SendText(peer=bob.id, text=f"m{i}") for i in range(5)])
    alice.flush()
    deliveries = relay.deliveries(bob.core.subscriptions())
    assert len(deliveries) == 5
    shuffled = [deliveries[3], deliveries[0], deliveries[3], deliveries[4], deliveries[1]]
    bob.sync(shuffled)
    bob.sync([deliveries[2], deliveries[0]])   # a late one and a redelivery
    texts = sorted(e.text for e in bob.take(MessageReceived))  # type: ignore[attr-defined]
    assert texts == ["m0", "m1", "m2", "m3", "m4"]
    cid = bob.core.conversation_id(alice.id, now_ms=NOW)
    assert bob.store.message_count(cid) == 5
    # The same bytes in a new envelope (a relay replaying a blob): dropped, not shown.
    box = relay.mailboxes[deliveries[0].mailbox_id]
    box["seq"] += 1
    box["queue"][box["seq"]] = deliveries[0].blob
    bob.sync()
    assert bob.take(MessageReceived) == [] and bob.store.message_count(cid) == 5


def test_simultaneous_initiation_keeps_one_session(relay: FakeRelay) -> None:
    alice, bob = Party(relay, "alice", "Alice"), Party(relay, "bob", "Bob")
    alice.add(bob)
    bob.add(alice)
    alice.flush()
    bob.flush()
    for _ in range(3):
        alice.sync()
        bob.sync()
    for me, other in ((alice, bob), (bob, alice)):
        contact = me.core.contact(other.id)
        assert contact is not None and contact.state is ContactState.ACCEPTED
        assert me.take(ContactAccepted)
        assert not me.take(InvitationReceived)
    assert alice.core.contact(bob.id).profile_name == "Bob"  # type: ignore[union-attr]
    assert bob.core.contact(alice.id).profile_name == "Alice"  # type: ignore[union-attr]
    alice.submit(_sending.SendText(peer=bob.id, text="ping"))
    bob.submit(_sending.SendText(peer=alice.id, text="pong"))
    alice.flush()
    bob.flush()
    bob.sync()
    alice.sync()
    assert [e.text for e in bob.take(MessageReceived)] == ["ping"]  # type: ignore[attr-defined]
    assert [e.text for e in alice.take(MessageReceived)] == ["pong"]  # type: ignore[attr-defined]


def test_initiation_never_replaces_a_live_session(relay: FakeRelay) -> None:
    alice, bob = Party(relay, "alice"), Party(relay, "bob")
    _connect(alice, bob)
    bob.take()
    before = bob.core.session(alice.id)
    # Alice invites Bob again (say she lost her state): Bob keeps the live session.
    alice.add(bob)
    alice.flush()
    bob.sync()
    assert bob.take(InvitationReceived) == []
    assert bob.core.session(alice.id) is before
    assert bob.core.contact(alice.id).state is ContactState.ACCEPTED  # type: ignore[union-attr]


def test_contact_link_pins_the_identity(relay: FakeRelay) -> None:
    alice, bob, eve = Party(relay, "alice"), Party(relay, "bob"), Party(relay, "eve")
    link = ContactLink.parse(bob.core.contact_link("wss://relay.example"))
    assert link.account_id == bob.id and link.relay_url == "wss://relay.example"
    alice.add(bob, expected_fingerprint=link.fingerprint)
    eve_link = ContactLink.parse(eve.core.contact_link(None))
    with pytest.raises(IdentityMismatch):
        alice.add(bob, expected_fingerprint=eve_link.fingerprint)


def test_identity_rotation_and_unlinked_change(relay: FakeRelay) -> None:
    alice, bob = Party(relay, "alice"), Party(relay, "bob")
    _connect(alice, bob)
    alice.take()
    safety_before = alice.core.safety_number(bob.id)
    assert safety_before == bob.core.safety_number(alice.id)
    identity, rotation = bob.core.rotate_identity()
    relay.identities[bob.id] = identity.key_pair.public.to_bytes()
    relay.rotations[bob.id].append(rotation.to_bytes())
    relay.prekeys[bob.id]["kem"] = []  # what a relay does on RotateIdentity
    bob.core.commit_identity(identity, now_ms=NOW)
    for piece in bob.core.prekeys_to_upload(now_ms=NOW):
        relay.upload(bob.id, bob.core.upload_frame(piece, 5))
        bob.core.prekeys_uploaded(piece, now_ms=NOW)
    relay.login(bob.core)
    events = alice.core.refresh_identity(alice.core.verify_bundle(relay.bundle(bob.id)),
                                         now_ms=NOW)
    assert events == [IdentityChanged(peer=bob.id, rotated=True, requires_ack=False)]
    assert alice.core.safety_number(bob.id) == bob.core.safety_number(alice.id)
    assert alice.core.safety_number(bob.id) != safety_before
    alice.core.require_sendable(bob.id)
    # An identity that does not chain from the known one: sending stops until acked.
    from client_sdk._receiving import identity_update
    stranger = IdentityKeyPair.generate(SeededRng(b"x")).public
    contact = alice.core.contact(bob.id)
    assert contact is not None
    changed, event = identity_update(contact, stranger, stranger, (), b"")
    assert event == IdentityChanged(peer=bob.id, rotated=False, requires_ack=True)
    alice.core.save_contact(changed)
    with pytest.raises(IdentityChangeUnacknowledged):
        alice.core.require_sendable(bob.id)
    alice.core.acknowledge_identity_change(bob.id, now_ms=NOW)
    alice.core.require_sendable(bob.id)


def _send_inner(party: Party, peer: bytes, inner: Any) -> None:
    """Queue any inner message to *peer* over the session (as the SDK's senders do)."""
    from client_sdk.store.records import Outgoing, SessionUpdate

    batch = _sending._Batch(party.core)
    _, outbound = party.core.sendable(peer)
    blob, state = batch.encrypt(peer, inner)
    assert batch.commit([Outgoing(entry=batch.entry(outbound, blob, NOW),
                                  session=SessionUpdate(peer=peer, state=state))])


def _rotate(party: Party, relay: FakeRelay) -> None:
    """What ``AsyncClient.rotate_identity`` does with the relay's ``Ok`` in between."""
    identity, rotation = party.core.rotate_identity()
    relay.identities[party.id] = identity.key_pair.public.to_bytes()
    relay.rotations[party.id].append(rotation.to_bytes())
    party.core.commit_identity(identity, now_ms=NOW)


def test_an_identity_rotation_is_announced_to_every_accepted_contact(
        relay: FakeRelay) -> None:
    """Contacts learn of a rotation at once, over the session (``IdentityRotated``), not
    only on their next ``refresh_contact``; a contact not yet accepted is not written to."""
    alice, bob, carol, dave = (Party(relay, n) for n in ("alice", "bob", "carol", "dave"))
    _connect(alice, bob)
    _connect(carol, bob)
    dave.add(bob)  # dave invited bob, who has not accepted
    dave.flush()
    bob.sync()
    for p in (alice, carol, bob):
        p.take()
    before = alice.core.safety_number(bob.id)
    assert not bob.core.identity_announcement_due()
    _rotate(bob, relay)
    assert bob.core.identity_announcement_due()  # until announced: the next login does it
    items = bob.core.announce_identity(now_ms=NOW)
    assert not bob.core.identity_announcement_due()
    assert sorted(i.entry.recipients[0].mailbox_id for i in items) == sorted(
        c.outbound.mailbox_id for c in bob.core.contacts(ContactState.ACCEPTED)
        if c.outbound is not None)
    assert len(items) == 2
    bob.flush()
    for p in (alice, carol):
        p.sync()
        assert p.take(IdentityChanged) == [IdentityChanged(peer=bob.id, rotated=True,
                                                           requires_ack=False)]
        assert p.core.safety_number(bob.id) == bob.core.safety_number(p.id)
        p.core.require_sendable(bob.id)  # no acknowledgement needed
    assert alice.core.safety_number(bob.id) != before
    # Again, or a second rotation later: the chain grows, each taken once.
    bob.core.announce_identity(now_ms=NOW)
    bob.flush()
    alice.sync()
    assert alice.take(IdentityChanged) == []
    _rotate(bob, relay)
    bob.core.announce_identity(now_ms=NOW)
    bob.flush()
    alice.sync()
    assert alice.take(IdentityChanged) == [IdentityChanged(peer=bob.id, rotated=True,
                                                           requires_ack=False)]
    assert alice.core.safety_number(bob.id) == bob.core.safety_number(alice.id)


def test_contacts_a_rotation_skipped_are_told_once_we_may_write_to_them(
        relay: FakeRelay) -> None:
    """A blocked contact, or one whose identity change is not acknowledged, is not
    written to at the rotation; it is noted, and told on unblock or acknowledgement
    (and at every login: ``announce_identity_to_waiting``)."""
    import dataclasses

    from client_sdk.core import SETTING_IDENTITY_UNANNOUNCED

    alice, bob, carol, erin = (Party(relay, n) for n in ("alice", "bob", "carol", "erin"))
    for p in (alice, carol, erin):
        _connect(p, bob)
        p.take()
    bob.core.set_state(carol.id, blocked=True, now_ms=NOW)
    erin_contact = bob.core.contact(erin.id)
    assert erin_contact is not None
    bob.core.save_contact(dataclasses.replace(erin_contact, identity_changed=True))
    _rotate(bob, relay)
    items = bob.core.announce_identity(now_ms=NOW)
    assert [i.entry.recipients[0].mailbox_id for i in items] == [
        bob.core.sendable(alice.id)[1].mailbox_id]
    assert bob.core.announce_identity_to_waiting(now_ms=NOW) == []  # still not sendable
    bob.flush()
    alice.now = NOW + 5_000
    alice.sync()
    assert len(alice.take(IdentityChanged)) == 1
    told = alice.core.contact(bob.id)
    assert told is not None and told.updated_at_ms == NOW + 5_000
    for p in (carol, erin):
        p.sync()
        assert p.take(IdentityChanged) == []
    bob.core.set_state(carol.id, blocked=False, now_ms=NOW)
    assert len(bob.core.announce_identity_to_waiting(now_ms=NOW)) == 1
    bob.core.acknowledge_identity_change(erin.id, now_ms=NOW)
    assert len(bob.core.announce_identity_to_waiting(now_ms=NOW)) == 1
    assert bob.core.announce_identity_to_waiting(now_ms=NOW) == []
    assert bob.store.get_setting(SETTING_IDENTITY_UNANNOUNCED) is None
    bob.flush()
    for p in (carol, erin):
        p.sync()
        assert p.take(IdentityChanged) == [IdentityChanged(peer=bob.id, rotated=True,
                                                           requires_ack=False)]
        assert p.core.safety_number(bob.id) == bob.core.safety_number(p.id)


def test_an_announced_identity_that_does_not_chain_is_dropped(relay: FakeRelay) -> None:
    """Inside the session only a signed rotation from the key we know is taken: a chain
    for another account, one broken by a bad signature, garbage, or a fork that does not
    pass through the key we know changes nothing (``refresh_contact`` decides those)."""
    from pigeon_crypto.identity import IdentityRotation
    from protocol.inner import IdentityRotated

    alice, bob, eve = Party(relay, "alice"), Party(relay, "bob"), Party(relay, "eve")
    _connect(alice, bob)
    alice.take()
    first_key = bob.core.identity.key_pair
    _rotate(bob, relay)  # K0 -> K1, announced and taken
    bob.core.announce_identity(now_ms=NOW)
    bob.flush()
    alice.sync()
    assert len(alice.take(IdentityChanged)) == 1
    known = alice.core.contact(bob.id)
    assert known is not None and known.identity is not None
    new = IdentityKeyPair.generate(SeededRng(b"new"))
    fork = IdentityRotation.create(account_id=bob.id, serial=1, old=first_key, new=new)
    for_eve = IdentityRotation.create(account_id=eve.id, serial=1, old=first_key, new=new)
    tampered = bytearray(fork.to_bytes())
    tampered[-1] ^= 1
    for chain in ([fork.to_bytes()], [for_eve.to_bytes()], [bytes(tampered)],
                  [b"\x00" * 40]):
        _send_inner(bob, alice.id, IdentityRotated(
            message_id=bytes(16), sent_at_ms=NOW, rotations=tuple(chain)))
        bob.flush()
        alice.sync()
        assert alice.take(IdentityChanged) == [], chain
        now = alice.core.contact(bob.id)
        assert now is not None and now.identity is not None
        assert now.identity.same_key(known.identity)
    alice.core.require_sendable(bob.id)


def test_mailbox_rotation(relay: FakeRelay) -> None:
    alice, bob = Party(relay, "alice"), Party(relay, "bob")
    _connect(alice, bob)
    old = alice.core.contact(bob.id).inbound  # type: ignore[union-attr]
    assert old is not None
    # Bob writes to the old mailbox while Alice rotates: it still arrives.
    bob.submit(_sending.SendText(peer=alice.id, text="in flight"))
    bob.flush()
    capability, digest = alice.core.new_capability()
    created = relay.rotate(alice.id, old.mailbox_id, digest)
    alice.core.rotate_mailbox(bob.id, created, capability, now_ms=NOW)
    assert created.mailbox_id in alice.core.subscriptions()
    assert old.mailbox_id in alice.core.subscriptions()
    alice.flush()
    alice.sync()
    bob.sync()
    assert bob.take(MailboxRotated) == [MailboxRotated(peer=alice.id)]
    bob.submit(_sending.SendText(peer=alice.id, text="after"))
    bob.flush()
    assert relay.mailboxes[created.mailbox_id]["queue"]
    alice.sync()
    assert [e.text for e in alice.take(MessageReceived)] == ["in flight", "after"]  # type: ignore[attr-defined]


def test_blocking_drops_messages_and_refuses_sends(relay: FakeRelay) -> None:
    alice, bob = Party(relay, "alice"), Party(relay, "bob")
    _connect(alice, bob)
    bob.core.set_state(alice.id, blocked=True, now_ms=NOW)
    with pytest.raises(ContactBlocked):
        bob.core.require_sendable(alice.id)
    alice.submit(_sending.SendText(peer=bob.id, text="let me in"))
    alice.flush()
    bob.sync()
    assert bob.take(MessageReceived) == []
    bob.core.set_state(alice.id, blocked=False, now_ms=NOW)
    assert bob.core.contact(alice.id).state is ContactState.ACCEPTED  # type: ignore[union-attr]
    alice.submit(_sending.SendText(peer=bob.id, text="thanks"))
    alice.flush()
    bob.sync()
    assert [e.text for e in bob.take(MessageReceived)] == ["thanks"]  # type: ignore[attr-defined]


def test_typing_is_ephemeral_and_end_to_end(relay: FakeRelay) -> None:
    alice, bob = Party(relay, "alice"), Party(relay, "bob")
    _connect(alice, bob)
    signal = alice.core.ephemeral(bob.id, typing=True, now_ms=NOW)
    assert signal is not None
    _, blob, (mailbox_id, _) = signal
    assert bob.core.receive_ephemeral(mailbox_id, blob, now_ms=NOW) == [
        TypingChanged(peer=bob.id if False else alice.id, active=True)]
    # A dropped typing signal leaves a gap the ratchet absorbs.
    alice.core.ephemeral(bob.id, typing=False, now_ms=NOW)
    alice.submit(_sending.SendText(peer=bob.id, text="after a gap"))
    alice.flush()
    bob.sync()
    assert [e.text for e in bob.take(MessageReceived)] == ["after a gap"]  # type: ignore[attr-defined]


def test_failed_send_and_unknown_mailbox(relay: FakeRelay) -> None:
    alice, bob = Party(relay, "alice"), Party(relay, "bob")
    _connect(alice, bob)
    alice.take()
    outbound = alice.core.contact(bob.id).outbound  # type: ignore[union-attr]
    assert outbound is not None
    relay.mailboxes[outbound.mailbox_id]["hash"] = b"\x00" * 32  # capability revoked
    alice.submit(_sending.SendText(peer=bob.id, text="lost"))
    alice.flush()
    [_pending, failed] = alice.take(MessageStatusChanged)
    assert failed.status is MessageStatus.FAILED  # type: ignore[attr-defined]
    assert alice.store.outbox_size() == 0
    unknown = Delivery(mailbox_id=b"\x07" * 16, seq=1, received_at_ms=NOW, blob=b"x" * 100)
    received = alice.core.receive([unknown], now_ms=NOW)
    assert received.acks == {b"\x07" * 16: [1]} and received.dropped == 1


def test_contact_request_roundtrip_and_strictness() -> None:
    request = ContactRequest(account_id=b"a" * 16, mailbox_id=b"m" * 16, capability=b"c" * 32,
                             relay_url="wss://r", display_name="Ann", rotations=(b"r" * 407,))
    assert ContactRequest.decode(request.encode()) == request
    assert "c" * 32 not in repr(request)
    from pigeon_crypto.errors import DecodeError
    with pytest.raises(DecodeError):
        ContactRequest.decode(request.encode()[:-1])
    with pytest.raises(DecodeError):
        ContactRequest.decode(dataclasses.replace(request, account_id=b"a").encode())


def test_messages_lost_and_prekey_replenishment(relay: FakeRelay) -> None:
    from client_sdk.events import MessagesLost
    from protocol.frames import PrekeysLow

    alice, bob = Party(relay, "alice"), Party(relay, "bob")
    _connect(alice, bob)
    inbound = alice.core.contact(bob.id).inbound  # type: ignore[union-attr]
    assert inbound is not None
    assert alice.core.messages_expired(inbound.mailbox_id, 3, 17) == [
        MessagesLost(mailbox_id=inbound.mailbox_id, peer=bob.id, count=3, up_to_seq=17)]
    assert alice.core.messages_expired(b"\x01" * 16, 1, 1)[0].peer is None  # type: ignore[attr-defined]
    # The relay says 10 one-time keys of each kind are left: top up to the target.
    pieces = alice.core.prekeys_to_upload(
        now_ms=NOW, notice=PrekeysLow(one_time_prekeys=10, one_time_kem_prekeys=4))
    assert sum(len(p.one_time) for p in pieces) == 90
    assert sum(len(p.kem) for p in pieces) == 96
    for piece in pieces:
        alice.core.prekeys_uploaded(piece, now_ms=NOW)
    assert alice.core.prekeys_to_upload(now_ms=NOW) == []
    # A week later the signed prekey is rotated (the old one kept for in-flight use).
    [piece] = alice.core.prekeys_to_upload(now_ms=NOW + 8 * 86_400_000)
    assert len(piece.signed) == 1 and not piece.one_time
    status = alice.store.prekey_status()
    assert len(status.retiring_signed_prekey_ids) == 1
