"""Group state rules (client_sdk._groups): who may sign what, and the convergence rule
(the head is a function of the set of valid states, whatever the arrival order)."""

from __future__ import annotations

import itertools
import random

import pytest

from client_sdk._group_state import revoked
from client_sdk._groups import GroupView, authorized
from client_sdk.store.group_records import SignedGroupState, StateStatus
from pigeon_crypto.errors import InvalidSignature
from pigeon_crypto.signing import Purpose, SigningKey, verify
from protocol.errors import InvalidValue, RemoteProtocolError
from protocol.group import GroupState, decode_group_state
from protocol.limits import PROTOCOL_VERSION

A, B, C, D = (bytes([i]) * 16 for i in (1, 2, 3, 4))
KEYS = {who: SigningKey(bytes([i]) * 32) for i, who in enumerate((A, B, C, D), 1)}
GID = bytes(range(16))


def signed(state: GroupState) -> SignedGroupState:
    encoded = state.encode()
    return SignedGroupState.from_wire(encoded, KEYS[state.signer].sign(Purpose.GROUP_CONTROL,
                                                                       encoded))


def child(parent: SignedGroupState, signer: bytes, **changes: object) -> SignedGroupState:
    p = parent.state
    fields: dict[str, object] = {
        "group_id": p.group_id, "version": p.version + 1, "parent": parent.hash,
        "signer": signer, "name": p.name, "members": p.members, "admins": p.admins,
        "avatar": p.avatar, "channel": p.channel, "at_ms": p.at_ms + 1}
    fields.update(changes)
    return signed(GroupState(**fields))  # type: ignore[arg-type]


ROOT = signed(GroupState(group_id=GID, version=1, signer=A, name="g", members=(A, B, C),
                         admins=(A, B), at_ms=0))


def test_admins_change_anything_members_only_leave() -> None:
    assert authorized(ROOT.state, child(ROOT, B, name="renamed").state)
    assert not authorized(ROOT.state, child(ROOT, C, name="renamed").state)
    assert authorized(ROOT.state, child(ROOT, C, members=(A, B)).state)  # C leaves
    assert not authorized(ROOT.state, child(ROOT, C, members=(A, C),
                                            admins=(A,)).state)  # removes B
    assert not authorized(ROOT.state, child(ROOT, C, members=(A, B), name="x").state)
    listed = signed(GroupState(group_id=GID, version=1, signer=A, name="c", members=(A, C),
                               admins=(A,), channel=True, at_ms=0))
    assert authorized(listed.state, child(listed, C, members=(A,)).state)
    # The last reader leaving may not turn the listed channel into one with subscriptions.
    assert not authorized(listed.state, child(listed, C, members=(A,),
                                              subscriptions=True).state)
    assert not authorized(ROOT.state, child(ROOT, D, members=(A, B, C, D)).state)
    skip = child(child(ROOT, A, name="v2"), A, name="v3")
    assert not authorized(ROOT.state, skip.state)  # versions must follow


def test_state_invariants_and_strict_decoding() -> None:
    with pytest.raises(InvalidValue):  # admins must be members
        GroupState(group_id=GID, version=1, signer=A, name="", members=(A,), admins=(B,),
                   at_ms=0)
    with pytest.raises(InvalidValue):  # sorted, unique
        GroupState(group_id=GID, version=1, signer=A, name="", members=(B, A), admins=(A,),
                   at_ms=0)
    with pytest.raises(InvalidValue):  # a parent after version 1
        GroupState(group_id=GID, version=2, signer=A, name="", members=(A,), admins=(A,),
                   at_ms=0)
    assert decode_group_state(ROOT.encoded) == ROOT.state
    import msgpack
    body = msgpack.unpackb(ROOT.encoded, strict_map_key=False)[1]
    body[5] = [B, A, C]
    with pytest.raises(RemoteProtocolError):
        decode_group_state(msgpack.packb([PROTOCOL_VERSION, body]))


def test_signature_is_domain_separated() -> None:
    other = KEYS[A].sign(Purpose.SENDER_KEY_MESSAGE, ROOT.encoded)
    with pytest.raises(InvalidSignature):
        verify(KEYS[A].public_key, Purpose.GROUP_CONTROL, ROOT.encoded, other)
    verify(KEYS[A].public_key, Purpose.GROUP_CONTROL, ROOT.encoded, ROOT.signature)


def _history() -> list[SignedGroupState]:
    """Concurrent changes by two admins, chains on both branches, a leave, and states
    that must be rejected (a non-admin's change, a removed admin's late change)."""
    a2 = child(ROOT, A, name="by A")
    b2 = child(ROOT, B, name="by B")
    a3 = child(a2, A, members=(A, B, C, D))          # adds D on A's branch
    b3 = child(b2, B, admins=(A,))                   # B steps down on B's branch
    c4 = child(a3, C, members=(A, B, D))             # C leaves on A's branch
    bad = child(b3, C, name="C is no admin")         # rejected
    late = child(b3, B, name="B is no admin now")    # rejected: B demoted in b3
    a4 = child(b3, A, name="A on B's branch")
    a5 = child(a4, A, members=(A, C))
    return [a2, b2, a3, b3, c4, bad, late, a4, a5]


def _converge(order: list[SignedGroupState], me: bytes) -> tuple[bytes, frozenset[bytes]]:
    view = GroupView(group_id=GID, record=None)
    for s in [ROOT, *order]:
        view.absorb(s, me, now_ms=0)
        view.converge(me, now_ms=0)
    assert view.record is not None
    valid = frozenset(h for h, r in view.states.items() if r.status is StateStatus.VALID)
    return view.record.head, valid


def test_convergence_is_order_independent() -> None:
    states = _history()
    expected_head, expected_valid = _converge(states, C)
    valid = [s for s in states if s.hash in expected_valid]
    best = min([ROOT, *valid], key=SignedGroupState.sort_key)
    assert expected_head == best.hash
    by_hash = {s.hash: s for s in [ROOT, *states]}
    assert by_hash[expected_head].state.version == 5  # the longest branch wins
    names = {by_hash[h].state.name for h in expected_valid}
    assert "C is no admin" not in names and "B is no admin now" not in names
    rng = random.Random(7)
    orders = [list(p) for p in itertools.islice(itertools.permutations(states), 200)]
    orders += [rng.sample(states, len(states)) for _ in range(300)]
    for order in orders:
        assert _converge(order, C) == (expected_head, expected_valid)


def _effective_head(order: list[SignedGroupState], me: bytes = C) -> SignedGroupState:
    head, _ = _converge(order, me)
    return {s.hash: s for s in [ROOT, *order]}[head]


def test_a_removed_admin_cannot_take_the_group_back_with_an_older_branch() -> None:
    """A removes admin B at version 2; B then signs a longer branch from version 1,
    where it was an admin. Its states are valid (each follows its parent) but void:
    every member, A included, in every order of arrival, stays on A's branch."""
    a2 = child(ROOT, A, members=(A, C), admins=(A,))  # B removed
    b2 = child(ROOT, B, name="B is back")
    b3 = child(b2, B, name="B rules")
    c4 = child(b3, C, members=(A, B))                   # C leaves on B's branch: void too
    a3 = child(a2, A, name="after")
    states = [a2, b2, b3, c4, a3]
    for order in itertools.permutations(states):
        for me in (A, C):
            assert _effective_head(list(order), me).hash == a3.hash
    assert _effective_head([b2, b3, c4]).hash == c4.hash  # without the removal: B's branch
    view = GroupView(group_id=GID, record=None)
    for st in [ROOT, *states]:
        view.absorb(st, C, now_ms=0)
        view.converge(C, now_ms=0)
    assert revoked([r.signed for r in view.states.values()]) == {b2.hash, b3.hash, c4.hash}


def test_a_removal_voids_only_at_its_version_and_later() -> None:
    """B's change at version 2 on another branch predates its removal at version 3:
    it stays valid and could be built on by another admin; B's own version 3 is void."""
    a2 = child(ROOT, A, name="by A")
    a3 = child(a2, A, members=(A, C), admins=(A,))
    b2 = child(ROOT, B, name="by B")
    b3 = child(b2, B, name="B again")
    a3b = child(b2, A, name="A on B's branch")
    gone = revoked([ROOT, a2, a3, b2, b3, a3b])
    assert gone == {b3.hash}
    assert _effective_head([a2, a3, b2, b3]).hash == a3.hash
    # A on B's branch, at version 3 too: the tie goes to the smaller (signer, hash).
    assert _effective_head([a2, a3, b2, b3, a3b]).hash == min(a3.hash, a3b.hash)


def test_two_admins_removing_each_other_at_one_version() -> None:
    """The smaller (signer, hash) removal stands and voids the other, and with it
    whatever was built on the other."""
    a2 = child(ROOT, A, members=(A, C), admins=(A,))  # A removes B
    b2 = child(ROOT, B, members=(B, C), admins=(B,))  # B removes A
    b3 = child(b2, B, name="B's group")
    for order in itertools.permutations([a2, b2, b3]):
        assert _effective_head(list(order)).hash == a2.hash
    assert revoked([ROOT, a2, b2, b3]) == {b2.hash, b3.hash}


def test_an_admin_stepping_down_voids_nothing() -> None:
    b2 = child(ROOT, B, admins=(A,))                  # B steps down itself
    b3 = child(ROOT, B, name="concurrent, by B")
    assert revoked([ROOT, b2, b3]) == set()


def test_ties_go_to_the_smallest_signer_then_hash() -> None:
    a2 = child(ROOT, A, name="by A")
    b2 = child(ROOT, B, name="by B")
    for order in ([a2, b2], [b2, a2]):
        head, _ = _converge(order, C)
        assert head == a2.hash  # A < B bytewise
    a2x = child(ROOT, A, name="also by A")
    head, _ = _converge([a2, a2x], C)
    assert head == min(a2.hash, a2x.hash)


def test_unknown_parent_waits_then_validates() -> None:
    a2 = child(ROOT, A, name="two")
    a3 = child(a2, A, name="three")
    view = GroupView(group_id=GID, record=None)
    view.absorb(ROOT, B, now_ms=0)
    view.converge(B, now_ms=0)
    rows = view.absorb(a3, B, now_ms=0)
    assert [r.status for r in rows] == [StateStatus.PENDING]
    assert view.converge(B, now_ms=0) is None  # head unchanged
    rows = view.absorb(a2, B, now_ms=0)
    assert {r.signed.hash: r.status for r in rows} == {a2.hash: StateStatus.VALID,
                                                        a3.hash: StateStatus.VALID}
    record = view.converge(B, now_ms=0)
    assert record is not None and record.head == a3.hash


def test_removed_member_goes_inactive_and_rejoins_with_a_newer_state() -> None:
    removed = child(ROOT, A, members=(A, B))
    view = GroupView(group_id=GID, record=None)
    for s in (ROOT, removed):
        view.absorb(s, C, now_ms=0)
        view.converge(C, now_ms=0)
    assert view.record is not None and not view.record.active
    back = child(child(removed, A, name="x"), A, members=(A, B, C))  # parent unknown to C
    view.absorb(back, C, now_ms=0)
    record = view.converge(C, now_ms=0)
    assert record is not None and record.active and record.head == back.hash


def test_reprs_show_no_names_members_or_secrets() -> None:
    from client_sdk.groups import GroupChanged, GroupInfo
    info = GroupInfo(group_id=GID, version=3, name="Secret club", members=(A, B),
                     admins=(A,), avatar_manifest=b"manifest", channel=False, active=True,
                     conversation_id=7)
    assert repr(info) == (f"GroupInfo(group_id={GID!r}, version=3, channel=False, "
                          "subscriptions=False, active=True, conversation_id=7)")
    changed = repr(GroupChanged(group=info, by=A))
    assert "Secret club" not in changed and "manifest" not in changed
    text = repr(ROOT)
    assert "name=<redacted>" in text and "members=<redacted>" in text
    assert ROOT.signature.hex() not in text and ROOT.encoded.hex() not in text
