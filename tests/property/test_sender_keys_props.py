"""Property tests for sender keys: interleavings with loss, duplication and restarts.

Two senders (Alice, Carol) write to one group; Bob holds a record for each.
Whatever the delivery order, every delivered message decrypts exactly once to
its plaintext and every repeat is a :class:`ReplayError`.
"""

from __future__ import annotations

import contextlib

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from hypothesis.stateful import RuleBasedStateMachine, invariant, precondition, rule

from pigeon_crypto.errors import PigeonError, ReplayError
from pigeon_crypto.rng import SeededRng
from pigeon_crypto.sender_keys import (
    MAX_SENDER_KEY_GAP,
    InboundSenderKey,
    OutboundSenderKey,
    SenderKeyDistribution,
    SenderKeyMessage,
    SenderKeyRecord,
)

SENDERS = ("alice", "carol")


class GroupMachine(RuleBasedStateMachine):
    def __init__(self) -> None:
        super().__init__()
        self.out = {s: OutboundSenderKey.create(SeededRng(s.encode())) for s in SENDERS}
        self.records = {
            s: SenderKeyRecord().process_distribution(self.out[s].distribution()) for s in SENDERS
        }
        self.sent: list[tuple[str, bytes, bytes]] = []  # (sender, plaintext, wire bytes)
        self.decrypted: set[int] = set()

    @rule(sender=st.sampled_from(SENDERS), body=st.binary(max_size=40))
    def send(self, sender: str, body: bytes) -> None:
        plaintext = b"%d:" % len(self.sent) + body
        self.out[sender], wire = self.out[sender].encrypt(plaintext)
        self.sent.append((sender, plaintext, wire))

    @precondition(lambda self: bool(self.sent))
    @rule(data=st.data())
    def deliver(self, data: st.DataObject) -> None:
        i = data.draw(st.integers(0, len(self.sent) - 1))
        sender, plaintext, wire = self.sent[i]
        record = self.records[sender]
        if i in self.decrypted:
            with pytest.raises(ReplayError):
                record.decrypt(wire)
            return
        self.records[sender], got = record.decrypt(wire)
        assert got == plaintext
        self.decrypted.add(i)

    @precondition(lambda self: bool(self.sent))
    @rule(data=st.data())
    def tamper(self, data: st.DataObject) -> None:
        i = data.draw(st.integers(0, len(self.sent) - 1))
        sender, _, wire = self.sent[i]
        pos = data.draw(st.integers(0, len(wire) - 1))
        bad = bytearray(wire)
        bad[pos] ^= 0x01
        before = self.records[sender]
        with pytest.raises(PigeonError):
            before.decrypt(bytes(bad))
        assert self.records[sender] is before  # nothing committed

    @rule()
    def restart(self) -> None:
        # snapshot/restore every state through its serialized form
        self.out = {s: OutboundSenderKey.from_bytes(o.to_bytes()) for s, o in self.out.items()}
        self.records = {
            s: SenderKeyRecord.from_bytes(r.to_bytes()) for s, r in self.records.items()
        }

    @invariant()
    def chains_stay_bounded(self) -> None:
        for record in self.records.values():
            (chain,) = record.chains
            assert len(chain.skipped) <= MAX_SENDER_KEY_GAP


GroupMachine.TestCase.settings = settings(max_examples=60, stateful_step_count=40, deadline=None)
TestGroupInterleavings = GroupMachine.TestCase


@settings(max_examples=60, deadline=None)
@given(
    st.integers(1, 30),
    st.lists(st.integers(0, 29), max_size=60),
)
def test_lossy_duplicating_delivery(count: int, schedule: list[int]) -> None:
    alice = OutboundSenderKey.create(SeededRng(b"a"))
    bob = SenderKeyRecord().process_distribution(alice.distribution())
    wires = []
    for i in range(count):
        alice, wire = alice.encrypt(b"m%d" % i)
        wires.append(wire)
    seen: set[int] = set()
    for i in (j for j in schedule if j < count):
        if i in seen:
            with pytest.raises(ReplayError):
                bob.decrypt(wires[i])
        else:
            bob, plain = bob.decrypt(wires[i])
            assert plain == b"m%d" % i
            seen.add(i)


@settings(max_examples=200, deadline=None)
@given(st.binary(max_size=200))
def test_decoders_raise_only_pigeon_errors(blob: bytes) -> None:
    record = SenderKeyRecord().process_distribution(
        OutboundSenderKey.create(SeededRng(b"x")).distribution()
    )
    for decode in (
        record.decrypt,
        SenderKeyRecord.from_bytes,
        OutboundSenderKey.from_bytes,
        InboundSenderKey.from_bytes,
        SenderKeyDistribution.from_bytes,
        SenderKeyMessage.from_bytes,
    ):
        with contextlib.suppress(PigeonError):
            decode(blob)
