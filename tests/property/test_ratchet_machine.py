"""Alice and Bob over a hostile network: a hypothesis state machine for the Double Ratchet.

The network loses, reorders, duplicates and flips single bits of messages, and
either side may be snapshotted and restored (``to_bytes``/``from_bytes``) at
any point. Properties:

* every message delivered for the first time decrypts to its plaintext, in any
  order, once;
* every repeat of a delivered message and every tampered message is rejected
  with a :class:`~pigeon_crypto.errors.PigeonError` (nothing else escapes), and
  a rejected message leaves the receiver's state as it was;
* snapshots round-trip byte for byte and the bounds of the skipped-key store hold.

Gaps stay far below ``MAX_SKIP`` and the number of chains below
``MAX_SKIPPED_CHAINS`` because runs are short (``stateful_step_count``), so no
legitimate message can be evicted: a failure is always a bug.
"""

from __future__ import annotations

from dataclasses import dataclass

import pytest
from cryptography.hazmat.primitives.asymmetric.x25519 import X25519PrivateKey
from hypothesis import HealthCheck, settings
from hypothesis import strategies as st
from hypothesis.stateful import RuleBasedStateMachine, invariant, precondition, rule

from pigeon_crypto.errors import (
    DecryptionError,
    HeaderDecryptionError,
    PigeonError,
    ReplayError,
    UnsupportedVersion,
)
from pigeon_crypto.ratchet import (
    MAX_SKIPPED_CHAINS,
    MAX_SKIPPED_KEYS,
    RatchetState,
    init_initiator,
    init_responder,
)
from pigeon_crypto.rng import SeededRng

PARTIES = ("alice", "bob")
NOW = 1_790_000_000_000
AD = b"A" * 32 + b"B" * 32


def _peer(who: str) -> str:
    return "bob" if who == "alice" else "alice"


@dataclass
class Sent:
    to: str
    plaintext: bytes
    wire: bytes


class RatchetMachine(RuleBasedStateMachine):
    def __init__(self) -> None:
        super().__init__()
        self.rng = SeededRng(b"ratchet-machine")
        secret = self.rng(32)
        bob_private = self.rng(32)
        bob_public = X25519PrivateKey.from_private_bytes(bob_private).public_key()
        self.states: dict[str, RatchetState] = {
            "alice": init_initiator(shared_secret=secret,
                                    peer_ratchet_public=bob_public.public_bytes_raw(),
                                    associated_data=AD, rng=self.rng),
            "bob": init_responder(shared_secret=secret, our_ratchet_private=bob_private,
                                  associated_data=AD),
        }
        self.in_flight: list[Sent] = []
        self.delivered: list[Sent] = []
        self.now = NOW
        self.counter = 0

    # -- the network ------------------------------------------------------------------------

    @rule(who=st.sampled_from(PARTIES), body=st.binary(max_size=24))
    def send(self, who: str, body: bytes) -> None:
        state = self.states[who]
        if not state.can_send:  # Bob before his first received message
            return
        plaintext = b"%d|" % self.counter + body
        self.counter += 1
        out = state.encrypt(plaintext, rng=self.rng)
        self.states[who] = out.state
        self.in_flight.append(Sent(to=_peer(who), plaintext=plaintext, wire=out.message))

    @precondition(lambda self: bool(self.in_flight))
    @rule(data=st.data())
    def deliver(self, data: st.DataObject) -> None:
        """Deliver any in-flight message: reordering is picking one that is not first."""
        sent = self.in_flight.pop(data.draw(st.integers(0, len(self.in_flight) - 1)))
        out = self.states[sent.to].decrypt(sent.wire, now_ms=self.now)
        assert out.plaintext == sent.plaintext
        self.states[sent.to] = out.state
        self.delivered.append(sent)

    @precondition(lambda self: bool(self.in_flight))
    @rule(data=st.data())
    def drop(self, data: st.DataObject) -> None:
        self.in_flight.pop(data.draw(st.integers(0, len(self.in_flight) - 1)))

    @precondition(lambda self: bool(self.delivered))
    @rule(data=st.data())
    def duplicate(self, data: st.DataObject) -> None:
        sent = self.delivered[data.draw(st.integers(0, len(self.delivered) - 1))]
        error = self._rejected(sent.to, sent.wire)
        # A repeat is a replay while its chain is known, else its header key is gone.
        assert isinstance(error, ReplayError | HeaderDecryptionError), repr(error)

    @precondition(lambda self: bool(self.in_flight or self.delivered))
    @rule(data=st.data())
    def tamper(self, data: st.DataObject) -> None:
        pool = self.in_flight + self.delivered
        sent = pool[data.draw(st.integers(0, len(pool) - 1))]
        index = data.draw(st.integers(0, len(sent.wire) - 1))
        bit = data.draw(st.integers(0, 7))
        wire = bytearray(sent.wire)
        wire[index] ^= 1 << bit
        error = self._rejected(sent.to, bytes(wire))
        assert isinstance(error, DecryptionError | ReplayError | UnsupportedVersion), repr(error)

    @precondition(lambda self: bool(self.in_flight))
    @rule(data=st.data())
    def truncate(self, data: st.DataObject) -> None:
        sent = self.in_flight[data.draw(st.integers(0, len(self.in_flight) - 1))]
        self._rejected(sent.to, sent.wire[: data.draw(st.integers(0, len(sent.wire) - 1))])

    @rule(who=st.sampled_from(PARTIES))
    def snapshot_restore(self, who: str) -> None:
        data = self.states[who].to_bytes()
        restored = RatchetState.from_bytes(data)
        assert restored.to_bytes() == data
        self.states[who] = restored

    @rule(ms=st.integers(0, 3_600_000))
    def time_passes(self, ms: int) -> None:
        self.now += ms  # hours at most per run: far below the 30-day expiry

    # -- helpers and invariants ---------------------------------------------------------------

    def _rejected(self, who: str, wire: bytes) -> PigeonError:
        state = self.states[who]
        before = state.to_bytes()
        with pytest.raises(PigeonError) as info:
            state.decrypt(wire, now_ms=self.now)
        assert state.to_bytes() == before
        return info.value

    @invariant()
    def bounds_hold(self) -> None:
        for state in self.states.values():
            assert 0 <= state.skipped_count <= MAX_SKIPPED_KEYS

    @invariant()
    def chains_stay_below_eviction(self) -> None:
        # Each direction changes chains at most once per delivered reply: short runs
        # cannot reach MAX_SKIPPED_CHAINS, so eviction never hides a legitimate message.
        assert len(self.delivered) < 2 * MAX_SKIPPED_CHAINS


RatchetMachine.TestCase.settings = settings(
    max_examples=200,
    stateful_step_count=50,
    deadline=None,
    suppress_health_check=[HealthCheck.too_slow],
)
TestRatchetMachine = RatchetMachine.TestCase
