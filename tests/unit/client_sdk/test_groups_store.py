"""Group storage: the same contract for MemoryStore and the SQLite store (the ``store``
fixture), group writes inside the send and receive transactions, and a decoder that
raises only protocol errors."""

from __future__ import annotations

import contextlib
import hashlib

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from client_sdk.history import ConversationKind, NewMessage
from client_sdk.store import ClientStore
from client_sdk.store.group_records import (
    GroupRecord,
    GroupWrite,
    PendingGroupBlob,
    SignedGroupState,
    StateStatus,
    StoredGroupState,
)
from client_sdk.store.records import (
    EnvelopeRef,
    Incoming,
    OutboundSenderKeyUpdate,
    OutboxEntry,
    Outgoing,
    Recipient,
    SenderKeyRecordUpdate,
)
from pigeon_crypto.errors import PigeonError
from pigeon_crypto.rng import SeededRng
from pigeon_crypto.sender_keys import OutboundSenderKey, SenderKeyRecord
from protocol.group import GroupState, decode_group_state

GID = bytes(range(16))
A, B = b"\x01" * 16, b"\x02" * 16


def _state(version: int = 1, parent: bytes | None = None) -> StoredGroupState:
    state = GroupState(group_id=GID, version=version, parent=parent, signer=A,
                       name=f"v{version}", members=(A, B), admins=(A,), at_ms=version)
    signed = SignedGroupState.from_wire(state.encode(), b"\x07" * 64)
    return StoredGroupState(signed=signed, status=StateStatus.VALID, received_at_ms=version)


def test_group_write_roundtrip(store: ClientStore) -> None:
    assert store.load_group(GID) is None and store.list_groups() == []
    one = _state()
    two = _state(2, one.signed.hash)
    pending = StoredGroupState(signed=two.signed, status=StateStatus.PENDING,
                               received_at_ms=5)
    record = GroupRecord(group_id=GID, head=one.signed.hash, active=True, updated_at_ms=1)
    store.write_group(GroupWrite(group=record, states=(one, pending),
                                 chains=((B, 42, GID),),
                                 pending_add=(PendingGroupBlob(id=0, sender=B, blob=b"x",
                                                               received_at_ms=9),)),
                      now_ms=10)
    assert store.load_group(GID) == record
    assert store.list_groups() == [record]
    held = {s.signed.hash: s for s in store.group_states(GID)}
    assert held[one.signed.hash] == one
    assert held[two.signed.hash].status is StateStatus.PENDING
    assert held[two.signed.hash].signed.state == two.signed.state
    assert store.group_for_chain(B, 42) == GID and store.group_for_chain(B, 43) is None
    [blob] = store.pending_group_blobs()
    assert (blob.sender, blob.blob, blob.received_at_ms) == (B, b"x", 9)
    assert store.pending_group_blob_count() == 1
    assert (store.pending_group_blob_count(sender=B), store.pending_group_blob_count(sender=A)) \
        == (1, 0)
    # A state becomes valid (status updated in place); the pending blob is done.
    store.write_group(GroupWrite(states=(two,), pending_done=(blob.id,)), now_ms=11)
    assert {s.status for s in store.group_states(GID)} == {StateStatus.VALID}
    assert store.pending_group_blobs() == [] and store.pending_group_blob_count() == 0
    assert store.group_states(bytes(16)) == []


def test_sealed_halves_roundtrip_count_and_expire(store: ClientStore) -> None:
    from client_sdk.store.group_records import SealedControlPart

    blob = SealedControlPart(sender=A, hash=b"\x0a" * 32, blob=b"sealed", received_at_ms=5)
    key = SealedControlPart(sender=B, hash=b"\x0b" * 32, key=b"k" * 48, received_at_ms=7)
    with pytest.raises(ValueError, match="the blob or the key"):
        SealedControlPart(sender=A, hash=b"\x0a" * 32, received_at_ms=5)
    assert store.sealed_control_count() == 0
    store.write_group(GroupWrite(sealed_add=(blob, key)), now_ms=8)
    assert store.sealed_control_part(A, blob.hash) == blob
    assert store.sealed_control_part(B, key.hash) == key
    assert store.sealed_control_part(B, blob.hash) is None  # halves are per sender
    assert store.sealed_control_count() == 2
    assert store.sealed_control_count(sender=A) == 1
    assert store.sealed_control_count(blobs=True) == 1
    assert store.sealed_control_count(sender=B, blobs=True) == 0
    # Added again: kept as first held. Added and used in one write: nothing left.
    store.write_group(GroupWrite(sealed_add=(SealedControlPart(
        sender=A, hash=blob.hash, blob=b"other", received_at_ms=6),)), now_ms=9)
    assert store.sealed_control_part(A, blob.hash) == blob
    third = SealedControlPart(sender=A, hash=b"\x0c" * 32, blob=b"x", received_at_ms=9)
    store.write_group(GroupWrite(sealed_add=(third,), sealed_done=((A, third.hash),)),
                      now_ms=9)
    assert store.sealed_control_part(A, third.hash) is None
    store.write_group(GroupWrite(sealed_expire_before=7), now_ms=10)  # before 7: the blob
    assert store.sealed_control_part(A, blob.hash) is None
    assert store.sealed_control_part(B, key.hash) == key
    store.write_group(GroupWrite(sealed_done=((B, key.hash),)), now_ms=11)
    assert store.sealed_control_count() == 0


def test_group_write_is_part_of_send_and_receive(store: ClientStore) -> None:
    rng = SeededRng(b"groups-store")
    chain = OutboundSenderKey.create(rng)
    cid = store.ensure_conversation(ConversationKind.GROUP, GID, now_ms=1, title="g").id
    entry = OutboxEntry(client_msg_id=b"\x05" * 16,
                        recipients=(Recipient(mailbox_id=b"\x06" * 16,
                                              capability=b"\x07" * 32),),
                        blob=b"\x81blob", created_at_ms=1)
    state = _state()
    store.enqueue_many([Outgoing(
        entry=entry, sender_key=OutboundSenderKeyUpdate(group_id=GID, key=chain),
        history=NewMessage(conversation_id=cid, message_id=b"\x08" * 16, sender=None,
                           sent_at_ms=1, body="hi"),
        group=GroupWrite(group=GroupRecord(group_id=GID, head=state.signed.hash,
                                           active=True, updated_at_ms=1),
                         states=(state,), shares=((GID, chain.chain_id, B),)))])
    assert store.load_group(GID) is not None
    assert store.sender_key_shared_with(GID, chain.chain_id) == frozenset({B})
    record = SenderKeyRecord().process_distribution(chain.distribution())
    store.commit_receive(Incoming(
        envelope=EnvelopeRef(mailbox_id=b"\x09" * 16, seq=1), received_at_ms=2,
        group=GroupWrite(chains=((B, chain.chain_id, GID),),
                         sender_keys=(SenderKeyRecordUpdate(group_id=GID, sender=B,
                                                            record=record),))))
    assert store.group_for_chain(B, chain.chain_id) == GID
    loaded = store.load_sender_key_record(GID, B)
    assert loaded is not None and loaded.chains[0].chain_id == chain.chain_id
    # Leaving forgets every chain of the group, in the same write.
    store.write_group(GroupWrite(forget_keys=GID), now_ms=3)
    assert store.load_sender_key_record(GID, B) is None
    assert store.load_outbound_sender_key(GID) is None


def test_a_failed_transaction_leaves_no_group_change(store: ClientStore) -> None:
    state = _state()
    entry = OutboxEntry(client_msg_id=b"\x05" * 16,
                        recipients=(Recipient(mailbox_id=b"\x06" * 16,
                                              capability=b"\x07" * 32),),
                        blob=b"x", created_at_ms=1)
    store.enqueue(Outgoing(entry=entry))
    with pytest.raises(PigeonError):  # the same client_msg_id again: StoreConflict
        store.enqueue(Outgoing(entry=entry, group=GroupWrite(states=(state,))))
    assert store.group_states(GID) == []


def test_state_hash_is_sha256_of_the_encoding() -> None:
    s = _state().signed
    assert s.hash == hashlib.sha256(s.encoded).digest()


@settings(max_examples=300, deadline=None)
@given(st.one_of(
    st.binary(max_size=400),
    st.lists(st.tuples(st.integers(0, 10_000), st.integers(0, 255)), min_size=1, max_size=4)
    .map(lambda flips: _mutate(_state(2, b"\x03" * 32).signed.encoded, flips))))
def test_group_state_decoder_raises_only_pigeon_errors(data: bytes) -> None:
    with contextlib.suppress(PigeonError):
        assert isinstance(decode_group_state(data), GroupState)


def _mutate(encoded: bytes, flips: list[tuple[int, int]]) -> bytes:
    out = bytearray(encoded)
    for index, value in flips:
        out[index % len(out)] = value
    return bytes(out)


def test_group_receipts_are_kept_once_per_member_and_kind(store: ClientStore) -> None:
    mid = b"\x0a" * 16
    store.write_group(GroupWrite(receipts=((GID, mid, A, 1, 5), (GID, mid, B, 2, 6),
                                           (GID, mid, A, 1, 7))), now_ms=7)
    assert sorted(store.group_receipts(GID, mid)) == [(A, 1), (B, 2)]
    assert store.group_receipts(GID, b"\x0b" * 16) == []


def test_the_largest_state_fits_one_padded_control_message() -> None:
    from pigeon_crypto.padding import pad_message
    from protocol.errors import LocalProtocolError
    from protocol.group import MAX_GROUP_STATE_SIZE
    from protocol.inner import GroupControl

    ids = tuple(sorted(bytes([i >> 8, i & 0xFF]) * 8 for i in range(1000)))

    def state(admins: int) -> GroupState:
        return GroupState(group_id=GID, version=2**40, parent=b"\x01" * 32, signer=ids[0],
                          name="n" * 128, members=ids, admins=ids[:admins], at_ms=2**50)

    largest = max(n for n in range(1, 1001) if _fits(state(n)))
    assert 700 < largest < 1000  # 1,000 members leave room for ~790 admins
    encoded = state(largest).encode()
    assert len(encoded) <= MAX_GROUP_STATE_SIZE
    control = GroupControl(message_id=b"\x02" * 16, sent_at_ms=2**50, state=encoded,
                           signature=b"\x03" * 64).encode()
    assert len(pad_message(control)) <= 32 * 1024  # one relay blob with the ratchet's bytes
    from client_sdk import _groups, _groups_receive
    sealed = _groups.sealed_blob(bytes(32), bytes(16), pad_message(control))  # sealed too
    assert len(pad_message(control)) <= _groups.MAX_SEALED_PADDED
    assert len(sealed) == _groups_receive.MAX_SEALED_BLOB
    with pytest.raises(LocalProtocolError):
        state(largest + 1).encode()


def test_states_earlier_versions_wrote_up_to_32_kib_still_decode() -> None:
    """Before the 32,512-byte encode limit, states of up to 32 KiB were written: profiles
    hold them, so reading (and receiving) takes them; only new ones must be smaller."""
    from protocol._wire import pack
    from protocol.errors import LocalProtocolError, RemoteProtocolError
    from protocol.group import MAX_GROUP_STATE_READ_SIZE, MAX_GROUP_STATE_SIZE

    ids = tuple(sorted(bytes([i >> 8, i & 0xFF]) * 8 for i in range(1000)))

    def raw(admins: int) -> tuple[GroupState, bytes]:
        state = GroupState(group_id=GID, version=2**40, parent=b"\x01" * 32, signer=ids[0],
                           name="n" * 128, members=ids, admins=ids[:admins], at_ms=2**50)
        return state, pack((1, state._body()))

    state, old = next(raw(n) for n in range(700, 1001)
                      if MAX_GROUP_STATE_SIZE < len(raw(n)[1]) <= MAX_GROUP_STATE_READ_SIZE)
    assert decode_group_state(old) == state
    with pytest.raises(LocalProtocolError):
        state.encode()
    _, too_big = next(raw(n) for n in range(700, 1001)
                      if len(raw(n)[1]) > MAX_GROUP_STATE_READ_SIZE)
    with pytest.raises(RemoteProtocolError):
        decode_group_state(too_big)


def _fits(s: GroupState) -> bool:
    from protocol.errors import LocalProtocolError
    try:
        s.encode()
    except LocalProtocolError:
        return False
    return True


def test_unshare_forgets_one_member_in_every_chain_of_the_group(store: ClientStore) -> None:
    other = bytes(range(1, 17))
    store.write_group(GroupWrite(shares=((GID, 7, A), (GID, 7, B), (GID, 8, B),
                                         (other, 7, B))), now_ms=1)
    store.write_group(GroupWrite(unshare=((GID, B),)), now_ms=2)
    assert store.sender_key_shared_with(GID, 7) == frozenset({A})
    assert store.sender_key_shared_with(GID, 8) == frozenset()
    assert store.sender_key_shared_with(other, 7) == frozenset({B})  # another group's
