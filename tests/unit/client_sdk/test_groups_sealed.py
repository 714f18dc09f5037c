"""Sealed group changes (docs/protocol.md §9.14): a state stored once with a
multi-recipient send and opened with a pairwise ``GroupControlKey``, whichever half
arrives first; tampered, misattributed and expired halves are dropped. Cores against
the frame-level fake relay of ``test_core``."""

from __future__ import annotations

import hashlib
import struct

import pytest

from client_sdk import _groups, _groups_receive
from client_sdk._sending import _Batch
from client_sdk.groups import GroupChanged
from client_sdk.store.records import Outgoing, SessionUpdate
from pigeon_crypto.padding import pad_message
from protocol.frames import Delivery
from protocol.inner import GroupControlKey, InnerMessage
from tests.helpers import avatar_manifest

from .test_core import NOW, FakeRelay, Party, _connect

LONG = "a group with a long name"
AVATAR = avatar_manifest("a" * 1000)
"""An avatar manifest that makes the state pad to 2,048 bytes: sealing pays from 3 members."""


@pytest.fixture
def relay() -> FakeRelay:
    return FakeRelay()


def _group(relay: FakeRelay, n: int = 4) -> list[Party]:
    """An admin and n - 1 members, each the admin's contact only."""
    people = [Party(relay, f"p{i}") for i in range(n)]
    for other in people[1:]:
        _connect(people[0], other)
    for p in people:
        p.take()
    return people


def _create(admin: Party, members: list[Party], name: str) -> bytes:
    """A group; with the :data:`AVATAR` (a large state) unless *name* is "Club"."""
    gid, _, events = _groups.create(admin.core, name=name, members=[m.id for m in members],
                                    admins=[], avatar=None if name == "Club" else AVATAR,
                                    channel=False, now_ms=admin.now)
    admin.events += events
    return gid


def _pending(relay: FakeRelay, p: Party) -> list[Delivery]:
    return relay.deliveries(p.core.subscriptions())


def _head(p: Party, gid: bytes) -> bytes | None:
    record = p.store.load_group(gid)
    return None if record is None else record.head


def _sealed_change(relay: FakeRelay) -> tuple[Party, list[Party], bytes, Delivery, Delivery]:
    """A large group created and sent: ``(admin, members, gid, blob, key)``, the two
    halves waiting for the first member."""
    admin, *members = _group(relay)
    gid = _create(admin, members, LONG)
    admin.flush()
    blob, key = _pending(relay, members[0])
    return admin, members, gid, blob, key


def test_sealing_pays_when_it_halves_the_bytes() -> None:
    assert not _groups.sealing_pays(256, 1000)  # a small state: a key costs as much
    assert not _groups.sealing_pays(512, 1000)  # saves less than half
    assert not _groups.sealing_pays(32768, 2)   # 65,536 against 33,280: not half
    assert _groups.sealing_pays(32768, 3)
    assert not _groups.sealing_pays(1024, 3) and _groups.sealing_pays(1024, 4)


def test_a_large_change_is_one_blob_and_a_key_per_member(relay: FakeRelay) -> None:
    admin, *members = _group(relay)
    rows_before = len(admin.core.due_outbox(now_ms=NOW))
    gid = _create(admin, members, LONG)
    rows = admin.core.due_outbox(now_ms=NOW)[rows_before:]
    assert len(rows) == 1 + len(members)
    sealed = rows[0].entry
    assert sealed.blob[0] == _groups.SEALED_CONTROL_PREFIX and len(sealed.recipients) == 3
    keys = [r.entry for r in rows[1:]]
    assert all(len(k.recipients) == 1 and k.blob[0] == 1 for k in keys)  # ratchet messages
    assert max(len(k.blob) for k in keys) < 600 and len(sealed.blob) > 2048  # keys, one state
    admin.flush()
    for m in members:
        got = _pending(relay, m)
        assert [d.blob[0] for d in got] == [_groups.SEALED_CONTROL_PREFIX, 1]  # blob first
        m.sync()
        [changed] = m.take(GroupChanged)
        assert changed.group.name == LONG and changed.created
        assert _head(m, gid) == _head(admin, gid)
        assert m.store.sealed_control_count() == 0  # nothing held once opened


def test_a_small_change_goes_pairwise(relay: FakeRelay) -> None:
    admin, *members = _group(relay)
    gid = _create(admin, members, "Club")
    admin.flush()
    for m in members:
        assert all(d.blob[0] == 1 for d in _pending(relay, m))
        m.sync()
        assert _head(m, gid) == _head(admin, gid)


@pytest.mark.parametrize("batches", ["one", "two"])
def test_the_key_may_come_before_the_blob(relay: FakeRelay, batches: str) -> None:
    admin, members, gid, blob, key = _sealed_change(relay)
    m = members[0]
    if batches == "one":
        m.sync([key, blob])
    else:
        m.sync([key])
        assert m.take(GroupChanged) == [] and _head(m, gid) is None
        assert m.store.sealed_control_count() == 1  # the key, sealed at rest
        m.sync([blob])
    assert [e.group.version for e in m.take(GroupChanged)] == [1]  # type: ignore[attr-defined]
    assert _head(m, gid) == _head(admin, gid)
    assert m.store.sealed_control_count() == 0


def test_blob_then_key_in_separate_batches_and_redelivered(relay: FakeRelay) -> None:
    admin, members, gid, blob, key = _sealed_change(relay)
    m = members[0]
    m.sync([blob])
    m.sync([blob])  # a redelivery before the key: held once
    assert m.store.sealed_control_count() == 1 and _head(m, gid) is None
    m.sync([key])
    assert _head(m, gid) == _head(admin, gid) and m.store.sealed_control_count() == 0


def _redeliver(relay: FakeRelay, d: Delivery, blob: bytes) -> Delivery:
    box = relay.mailboxes[d.mailbox_id]
    box["seq"] += 1
    box["queue"][box["seq"]] = blob
    return Delivery(mailbox_id=d.mailbox_id, seq=box["seq"], received_at_ms=NOW, blob=blob)


def _send_inner(sender: Party, peer: Party, inner: InnerMessage) -> None:
    """One pairwise inner message as it is (forged keys)."""
    batch = _Batch(sender.core)
    _, outbound = sender.core.sendable(peer.id)
    blob, state = batch.encrypt(peer.id, inner)
    batch.commit([Outgoing(entry=batch.entry(outbound, blob, NOW),
                           session=SessionUpdate(peer=peer.id, state=state))])
    sender.flush()


def _key(sender: Party, digest: bytes, key: bytes) -> GroupControlKey:
    return GroupControlKey(message_id=sender.core.rng(16), sent_at_ms=NOW, blob_hash=digest,
                           key=key, seal_id=bytes(16))


def test_a_tampered_blob_is_never_opened(relay: FakeRelay) -> None:
    admin, members, gid, blob, key = _sealed_change(relay)
    m = members[0]
    forged = blob.blob[:-1] + bytes([blob.blob[-1] ^ 1])
    m.sync([_redeliver(relay, blob, forged), key])  # the key names the real blob's hash
    assert _head(m, gid) is None and m.take(GroupChanged) == []
    assert m.store.sealed_control_count() == 2  # each half waits for its own other half
    m.sync([blob])  # the real blob
    assert _head(m, gid) == _head(admin, gid)


def test_a_wrong_key_opens_nothing_and_both_halves_go(relay: FakeRelay) -> None:
    admin, members, gid, blob, _ = _sealed_change(relay)
    m = members[0]
    m.sync([blob])
    digest = hashlib.sha256(blob.blob).digest()
    _send_inner(admin, m, _key(admin, digest, bytes(32)))  # right sender, wrong key
    m.sync(_pending(relay, m)[-1:])
    assert _head(m, gid) is None and m.take(GroupChanged) == []
    assert m.store.sealed_control_count() == 0  # failed tag: dropped, not kept


def test_a_key_opens_only_its_senders_blob(relay: FakeRelay) -> None:
    """Halves are matched under their sender: another contact naming the admin's blob
    opens nothing (and its key waits for a blob of its own that never comes)."""
    admin, *members = _group(relay)
    m, other = members[0], members[1]
    _connect(other, m)
    m.take()
    gid = _create(admin, members, LONG)
    admin.flush()
    blob, key = _pending(relay, m)
    m.sync([blob])
    digest = hashlib.sha256(blob.blob).digest()
    _send_inner(other, m, _key(other, digest, other.core.rng(32)))
    m.sync([d for d in _pending(relay, m) if d.mailbox_id != key.mailbox_id])
    assert _head(m, gid) is None  # still waiting for the admin's key
    assert m.store.sealed_control_part(admin.id, digest) is not None
    assert m.store.sealed_control_part(other.id, digest) is not None
    m.sync()  # the admin's key
    assert _head(m, gid) == _head(admin, gid)


def test_halves_expire(relay: FakeRelay) -> None:
    _admin, members, _gid, _blob, key = _sealed_change(relay)
    m = members[0]
    m.sync([key])
    assert m.store.sealed_control_count() == 1
    m.core.group_upkeep(now_ms=NOW + _groups_receive.PENDING_TTL_MS)  # the periodic check
    assert m.store.sealed_control_count() == 1  # not yet
    m.core.group_upkeep(now_ms=NOW + _groups_receive.PENDING_TTL_MS + 1)
    assert m.store.sealed_control_count() == 0


def test_an_oversized_sealed_blob_is_not_held(relay: FakeRelay) -> None:
    _admin, members, _gid, blob, _ = _sealed_change(relay)
    m = members[0]
    limit = _groups_receive.MAX_SEALED_BLOB
    m.sync([_redeliver(relay, blob, blob.blob[:1] + bytes(limit))])  # one byte too many
    assert m.store.sealed_control_count() == 0
    m.sync([_redeliver(relay, blob, blob.blob[:1] + bytes(limit - 1))])  # the largest kept
    assert m.store.sealed_control_count() == 1


# --- missing states: asked for and answered ----------------------------------------------------


def _club(relay: FakeRelay) -> tuple[Party, list[Party], bytes]:
    """A small group (its changes go pairwise) that every member holds."""
    admin, *members = _group(relay, 3)
    gid = _create(admin, members, "Club")
    admin.flush()
    for m in members:
        m.sync()
    return admin, members, gid


def _rename(admin: Party, gid: bytes, name: str) -> None:
    _groups.change(admin.core, gid, lambda s: {"name": name}, now_ms=admin.now)
    admin.flush()


def _lose(relay: FakeRelay, p: Party) -> None:
    """Everything queued for *p* is lost (dropped from the relay unread)."""
    for d in _pending(relay, p):
        del relay.mailboxes[d.mailbox_id]["queue"][d.seq]


def _requests(relay: FakeRelay, to: Party) -> int:
    """Messages waiting for *to* (all of them requests where this is used)."""
    return len(_pending(relay, to))


def _ask(p: Party, after_ms: int) -> None:
    """The periodic check, *after_ms* later; what it queues is sent."""
    p.now += after_ms
    p.core.group_upkeep(now_ms=p.now)
    p.flush()


def test_a_member_asks_for_a_state_it_missed(relay: FakeRelay) -> None:
    admin, members, gid = _club(relay)
    late = members[0]
    _rename(admin, gid, "two")
    _lose(relay, late)          # late never gets version 2
    members[1].sync()
    _rename(admin, gid, "three")
    late.sync()                 # version 3 waits for its parent
    assert _requests(relay, admin) == 0  # not asked at once: it may still come
    _ask(late, _groups.STATE_REQUEST_GRACE_MS - 1)
    assert _requests(relay, admin) == 0
    _ask(late, 1)               # missing for the grace period: asked for
    assert _requests(relay, admin) == 1
    assert late.store.load_group(gid).head != _head(admin, gid)  # type: ignore[union-attr]
    admin.sync()                # the admin answers with version 2
    late.sync()
    assert _head(late, gid) == _head(admin, gid)
    [changed] = [e for e in late.take(GroupChanged) if e.group.version == 3]
    assert changed.group.name == "three"
    assert late.core.missing_since == {}


def test_a_chain_of_missing_states_is_filled_without_waiting_per_link(
        relay: FakeRelay) -> None:
    admin, members, gid = _club(relay)
    late = members[0]
    _rename(admin, gid, "two")
    _rename(admin, gid, "three")
    _lose(relay, late)          # versions 2 and 3 lost
    _rename(admin, gid, "four")
    late.sync()                 # version 4 waits for version 3
    _ask(late, _groups.STATE_REQUEST_GRACE_MS)
    admin.sync()                # answers version 3, which waits for version 2:
    late.sync()                 # asked for at once
    assert _requests(relay, admin) == 1
    admin.sync()
    late.sync()
    assert _head(late, gid) == _head(admin, gid)


def test_a_parent_that_comes_on_its_own_is_not_asked_for(relay: FakeRelay) -> None:
    admin, members, gid = _club(relay)
    m = members[0]
    _rename(admin, gid, "two")
    _rename(admin, gid, "three")
    two, three = _pending(relay, m)
    m.sync([three])             # out of order: version 3 first
    assert m.core.missing_since != {}
    m.sync([two])
    _ask(m, _groups.STATE_REQUEST_GRACE_MS)
    assert _requests(relay, admin) == 0 and m.core.missing_since == {}
    assert _head(m, gid) == _head(admin, gid)


def test_requests_are_not_repeated_within_the_interval(relay: FakeRelay) -> None:
    admin, members, gid = _club(relay)
    late = members[0]
    _rename(admin, gid, "two")
    _lose(relay, late)
    _rename(admin, gid, "three")
    late.sync()
    _ask(late, _groups.STATE_REQUEST_GRACE_MS)
    assert _requests(relay, admin) == 1
    _ask(late, _groups.STATE_REQUEST_INTERVAL_MS - 1)
    assert _requests(relay, admin) == 1
    _ask(late, 1)
    assert _requests(relay, admin) == 2


def test_only_those_a_state_was_for_get_it(relay: FakeRelay) -> None:
    """A contact that never was in the group, asking for its states, gets nothing."""
    from protocol.inner import GroupStateRequest

    admin, *members = _group(relay, 3)
    outsider = Party(relay, "outsider")
    _connect(admin, outsider)
    gid = _create(admin, members, "Club")
    admin.flush()
    head = _head(admin, gid)
    assert head is not None
    _send_inner(outsider, admin, GroupStateRequest(
        message_id=outsider.core.rng(16), sent_at_ms=NOW, group_id=gid, hashes=(head,)))
    queued = len(admin.core.due_outbox(now_ms=NOW))
    admin.sync()
    assert len(admin.core.due_outbox(now_ms=NOW)) == queued  # no answer queued
    _send_inner(members[0], admin, GroupStateRequest(
        message_id=members[0].core.rng(16), sent_at_ms=NOW, group_id=gid, hashes=(head,)))
    received = admin.core.receive(_pending(relay, admin), now_ms=NOW)
    assert len(received.items) == 1  # a member it was for: answered, once
    _send_inner(members[0], admin, GroupStateRequest(
        message_id=members[0].core.rng(16), sent_at_ms=NOW, group_id=gid, hashes=(head,)))
    assert admin.core.receive(_pending(relay, admin), now_ms=NOW + 1).items == []


# --- limits and rejections ------------------------------------------------------------------


def _mailbox_from(relay: FakeRelay, sender: Party, to: Party) -> Delivery:
    """A delivery on *sender*'s pairwise mailbox at *to* (a template for raw blobs)."""
    from client_sdk._sending import SendText

    sender.submit(SendText(peer=to.id, text="hello"))
    sender.flush()
    [d] = [d for d in _pending(relay, to) if d.blob[0] == 1][-1:]
    to.sync([d])
    return d


def _junk(n: int) -> bytes:
    return bytes([_groups.SEALED_CONTROL_PREFIX]) + bytes([n % 256]) * 272  # 1 + 256 + 16


def test_a_contact_flooding_blobs_only_blocks_itself(relay: FakeRelay,
                                                     monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(_groups_receive, "MAX_SEALED_PER_SENDER", 3)
    admin, *members = _group(relay)
    m, other = members[0], members[1]
    _connect(other, m)
    template = _mailbox_from(relay, other, m)
    m.sync([_redeliver(relay, template, _junk(i)) for i in range(5)])
    assert m.store.sealed_control_count(sender=other.id) == 3  # the rest dropped
    gid = _create(admin, members, LONG)
    admin.flush()
    blob, key = _pending(relay, m)
    m.sync([blob])
    m.sync([key])
    assert _head(m, gid) == _head(admin, gid)  # the admin's halves were held


def _unplaceable(n: int) -> bytes:
    """A group blob on a chain nobody distributed: kept pending, never placed."""
    return bytes([_groups.GROUP_BLOB_PREFIX]) + struct.pack(">BII", 1, 1000 + n, 0) + bytes(40)


def test_pending_group_blobs_are_capped_per_sender_and_in_all(
        relay: FakeRelay, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(_groups_receive, "MAX_PENDING_PER_SENDER", 3)
    monkeypatch.setattr(_groups_receive, "MAX_PENDING_BLOBS", 5)
    admin, *members = _group(relay)
    m, other, third = members
    _connect(other, m)
    _connect(third, m)
    from_other = _mailbox_from(relay, other, m)
    m.sync([_redeliver(relay, from_other, _unplaceable(i)) for i in range(5)])  # one batch
    assert m.store.pending_group_blob_count(sender=other.id) == 3  # the rest dropped
    m.sync([_redeliver(relay, from_other, _unplaceable(9))])  # counted from the store
    assert m.store.pending_group_blob_count(sender=other.id) == 3
    from_third = _mailbox_from(relay, third, m)
    m.sync([_redeliver(relay, from_third, _unplaceable(i)) for i in range(2)])
    assert m.store.pending_group_blob_count(sender=third.id) == 2  # another sender is held
    from_admin = _mailbox_from(relay, admin, m)
    m.sync([_redeliver(relay, from_admin, _unplaceable(0))])
    assert m.store.pending_group_blob_count(sender=admin.id) == 0  # 5 in all: full
    assert m.store.pending_group_blob_count() == 5
    assert len(m.store.pending_group_blobs()) == 5


def test_keys_are_held_when_blobs_fill_the_store(relay: FakeRelay,
                                                 monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(_groups_receive, "MAX_SEALED_PARTS", 2)
    admin, *members = _group(relay)
    m, other = members[0], members[1]
    _connect(other, m)
    template = _mailbox_from(relay, other, m)
    m.sync([_redeliver(relay, template, _junk(i)) for i in range(3)])
    assert m.store.sealed_control_count(blobs=True) == 2  # full of blobs
    gid = _create(admin, members, LONG)
    admin.flush()
    blob, key = _pending(relay, m)
    m.sync([key])               # a key is held all the same
    m.sync([blob])              # and its blob opens at once, without being held
    assert _head(m, gid) == _head(admin, gid)


def test_blobs_of_sizes_no_sender_makes_are_not_held(relay: FakeRelay) -> None:
    admin, *members = _group(relay)
    m = members[0]
    template = _mailbox_from(relay, admin, m)
    for size in (1, 17, 272, 274, 1 + 300 + 16, 1 + 65536 - 1):
        blob = bytes([_groups.SEALED_CONTROL_PREFIX]) + bytes(size - 1)
        m.sync([_redeliver(relay, template, blob)])
    assert m.store.sealed_control_count() == 0
    m.sync([_redeliver(relay, template, _junk(0))])  # 1 + 256 + 16: a size a sender makes
    assert m.store.sealed_control_count() == 1


def test_a_relay_time_in_the_future_does_not_keep_a_half(relay: FakeRelay) -> None:
    _admin, members, _gid, _blob, key = _sealed_change(relay)
    m = members[0]
    m.sync([Delivery(mailbox_id=key.mailbox_id, seq=key.seq, received_at_ms=2**62,
                     blob=key.blob)])
    m.core.group_upkeep(now_ms=NOW + _groups_receive.PENDING_TTL_MS + 1)
    assert m.store.sealed_control_count() == 0


def _seal_from(admin: Party, m: Party, relay: FakeRelay, inner: InnerMessage) -> None:
    """*inner*, sealed by *admin* and sent to *m* with its key: what a member that
    breaks the rules could send."""
    padded = pad_message(inner.encode())
    blob, key, seal_id = _groups.seal_control(admin.core, padded)
    template = _pending(relay, m)[-1] if _pending(relay, m) else _mailbox_from(relay, admin, m)
    m.sync([_redeliver(relay, template, blob)])
    _send_inner(admin, m, GroupControlKey(message_id=admin.core.rng(16), sent_at_ms=NOW,
                                          blob_hash=hashlib.sha256(blob).digest(), key=key,
                                          seal_id=seal_id))
    m.sync()


def test_a_sealed_message_that_is_no_control_is_dropped(relay: FakeRelay) -> None:
    from protocol.inner import Text

    admin, *members = _group(relay)
    m = members[0]
    _seal_from(admin, m, relay, Text(message_id=admin.core.rng(16), sent_at_ms=NOW,
                                     text="not a control"))
    assert m.store.sealed_control_count() == 0  # opened, dropped, nothing held
    assert m.take(GroupChanged) == []


def test_a_sealed_state_with_a_bad_signature_is_dropped(relay: FakeRelay) -> None:
    from protocol.group import GroupState
    from protocol.inner import GroupControl

    admin, *members = _group(relay)
    m = members[0]
    state = GroupState(group_id=admin.core.rng(16), version=1, signer=admin.id, name=LONG,
                       members=tuple(sorted([admin.id, m.id])), admins=(admin.id,),
                       at_ms=NOW, avatar=AVATAR)
    forged = GroupControl(message_id=admin.core.rng(16), sent_at_ms=NOW,
                          state=state.encode(), signature=bytes(64))
    _seal_from(admin, m, relay, forged)
    assert m.take(GroupChanged) == [] and m.store.list_groups() == []
    assert m.store.sealed_control_count() == 0


def test_blobs_from_a_blocked_contact_are_not_held(relay: FakeRelay) -> None:
    admin, *members = _group(relay)
    m = members[0]
    template = _mailbox_from(relay, admin, m)
    m.core.set_state(admin.id, blocked=True, now_ms=NOW)
    m.sync([_redeliver(relay, template, _junk(0))])
    assert m.store.sealed_control_count() == 0


def test_the_first_admin_passes_a_state_on_sealed(relay: FakeRelay) -> None:
    """A second admin who can write only to the first admin: the first admin passes its
    (large) state on to the others, sealed, and they take it from the first admin."""
    people = sorted((Party(relay, f"q{i}") for i in range(5)), key=lambda p: p.id)
    first, second, *others = people  # the first admin: the smallest account id
    for p in people[1:]:
        _connect(first, p)
    for p in people:
        p.take()
    gid, _, _ = _groups.create(first.core, name=LONG, members=[p.id for p in people[1:]],
                               admins=[second.id], avatar=AVATAR, channel=False, now_ms=NOW)
    first.flush()
    for p in people[1:]:
        p.sync()
    _groups.change(second.core, gid, lambda s: {"name": "by the second admin"}, now_ms=NOW)
    second.flush()              # reaches the first admin only: not complete
    first.sync()                # takes it and passes it on
    passed = [d for o in others for d in _pending(relay, o)]
    assert sum(d.blob[0] == _groups.SEALED_CONTROL_PREFIX for d in passed) == len(others)
    for o in others:
        o.sync()
        assert _head(o, gid) == _head(second, gid) == _head(first, gid)
