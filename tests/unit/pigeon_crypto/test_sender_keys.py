import hmac

import pytest
from cryptography.hazmat.primitives.ciphers.aead import AESGCM

from pigeon_crypto.errors import (
    DecodeError,
    InvalidKey,
    InvalidSignature,
    MessageDecryptionError,
    ReplayError,
    TooManySkipped,
    UnknownVersion,
)
from pigeon_crypto.rng import SeededRng
from pigeon_crypto.sender_keys import (
    MAX_CHAINS_PER_SENDER,
    MAX_ITERATION,
    MAX_SENDER_KEY_GAP,
    MAX_SKIPPED_KEYS,
    DuplicateSenderKeyMessage,
    InboundSenderKey,
    OutboundSenderKey,
    SenderChainConflict,
    SenderChainExhausted,
    SenderKeyDistribution,
    SenderKeyMessage,
    SenderKeyRecord,
    UnknownSenderChain,
)
from pigeon_crypto.signing import Purpose, SigningKey


class GroupPair:
    """Alice sends to the group; Bob holds her record (two-party helper)."""

    def __init__(self, seed: bytes = b"alice") -> None:
        self.alice = OutboundSenderKey.create(SeededRng(seed))
        self.bob = SenderKeyRecord().process_distribution(self.alice.distribution())

    def send(self, text: bytes) -> bytes:
        self.alice, msg = self.alice.encrypt(text)
        return msg

    def receive(self, msg: bytes) -> bytes:
        self.bob, plain = self.bob.decrypt(msg)
        return plain


def test_in_order() -> None:
    g = GroupPair()
    for i in range(5):
        assert g.receive(g.send(b"msg %d" % i)) == b"msg %d" % i
    assert g.alice.iteration == 5 and g.bob.chains[0].iteration == 5
    assert g.bob.chains[0].skipped == {}


def test_message_layout_and_key_schedule() -> None:
    g = GroupPair()
    ck = g.alice.chain_key
    msg = g.send(b"hello")
    parsed = SenderKeyMessage.from_bytes(msg)
    assert (parsed.chain_id, parsed.iteration) == (g.alice.chain_id, 0)
    header = b"\x01" + g.alice.chain_id.to_bytes(4, "big") + bytes(4)
    assert msg[:9] == header
    mk = hmac.digest(ck, b"\x01", "sha256")
    assert msg[9:-64] == AESGCM(mk).encrypt(bytes(12), b"hello", header)
    assert g.alice.chain_key == hmac.digest(ck, b"\x02", "sha256")
    assert len(msg) == 9 + 5 + 16 + 64


def test_out_of_order_within_bound() -> None:
    g = GroupPair()
    msgs = [g.send(b"%d" % i) for i in range(6)]
    assert g.receive(msgs[3]) == b"3"
    assert sorted(g.bob.chains[0].skipped) == [0, 1, 2]
    assert g.receive(msgs[0]) == b"0"
    assert g.receive(msgs[5]) == b"5"
    assert g.receive(msgs[2]) == b"2"
    assert sorted(g.bob.chains[0].skipped) == [1, 4]
    assert g.receive(msgs[4]) == b"4" and g.receive(msgs[1]) == b"1"
    assert g.bob.chains[0].skipped == {}


def test_too_far_ahead() -> None:
    g = GroupPair()
    far = None
    for _ in range(MAX_SENDER_KEY_GAP + 2):
        far = g.send(b"x")
    assert far is not None
    with pytest.raises(TooManySkipped) as info:
        g.receive(far)
    assert (info.value.got, info.value.maximum) == (MAX_SENDER_KEY_GAP + 1, MAX_SENDER_KEY_GAP)


def test_gap_at_the_bound_is_accepted() -> None:
    g = GroupPair()
    msgs = [g.send(b"%d" % i) for i in range(MAX_SENDER_KEY_GAP + 1)]
    assert g.receive(msgs[-1]) == b"%d" % MAX_SENDER_KEY_GAP
    assert len(g.bob.chains[0].skipped) == MAX_SENDER_KEY_GAP
    assert g.receive(msgs[7]) == b"7"


def test_skipped_store_is_bounded_oldest_evicted() -> None:
    g = GroupPair()
    msgs = [g.send(b"%d" % i) for i in range(MAX_SKIPPED_KEYS + 600)]
    g.receive(msgs[1500])
    g.receive(msgs[MAX_SKIPPED_KEYS + 599])
    skipped = g.bob.chains[0].skipped
    assert len(skipped) == MAX_SKIPPED_KEYS
    assert min(skipped) == 598  # 0..597 evicted
    with pytest.raises(DuplicateSenderKeyMessage):
        g.receive(msgs[0])
    assert g.receive(msgs[598]) == b"598"


def test_duplicate_rejected() -> None:
    g = GroupPair()
    m0, m1, m2 = g.send(b"a"), g.send(b"b"), g.send(b"c")
    g.receive(m0)
    g.receive(m2)
    with pytest.raises(DuplicateSenderKeyMessage) as info:
        g.receive(m0)
    assert isinstance(info.value, ReplayError)
    assert (info.value.chain_id, info.value.iteration) == (g.alice.chain_id, 0)
    with pytest.raises(ReplayError):
        g.receive(m2)
    assert g.receive(m1) == b"b"
    with pytest.raises(ReplayError):
        g.receive(m1)


def test_message_before_distribution_point_unavailable() -> None:
    alice = OutboundSenderKey.create(SeededRng(b"a"))
    alice, early = alice.encrypt(b"early")
    bob = SenderKeyRecord().process_distribution(alice.distribution())
    with pytest.raises(DuplicateSenderKeyMessage):
        bob.decrypt(early)


def test_forged_signature_rejected_and_state_unchanged() -> None:
    g = GroupPair()
    msg = bytearray(g.send(b"pay 10"))
    before = g.bob
    msg[10] ^= 1
    with pytest.raises(InvalidSignature):
        g.receive(bytes(msg))
    assert g.bob is before
    # a member who knows the chain key but not the signing key cannot forge
    mallory = OutboundSenderKey(
        chain_id=g.alice.chain_id, iteration=g.alice.iteration, chain_key=g.alice.chain_key,
        signing_key=SigningKey(bytes(32)),
    )
    _, forged = mallory.encrypt(b"pay 1000")
    with pytest.raises(InvalidSignature):
        g.receive(forged)


def test_wrong_purpose_signature_rejected() -> None:
    seed = bytes(range(32))
    alice = OutboundSenderKey(
        chain_id=7, iteration=0, chain_key=bytes(32), signing_key=SigningKey(seed)
    )
    bob = SenderKeyRecord().process_distribution(alice.distribution())
    _, good = alice.encrypt(b"x")
    body = good[:-64]
    for purpose in (Purpose.SENDER_KEY_DISTRIBUTION, Purpose.GROUP_CONTROL):
        with pytest.raises(InvalidSignature):
            bob.decrypt(body + SigningKey(seed).sign(purpose, body))
    assert bob.decrypt(body + SigningKey(seed).sign(Purpose.SENDER_KEY_MESSAGE, body))[1] == b"x"


def test_unknown_chain_rejected() -> None:
    g = GroupPair()
    other = OutboundSenderKey.create(SeededRng(b"carol"))
    _, msg = other.encrypt(b"hi")
    with pytest.raises(UnknownSenderChain) as info:
        g.receive(msg)
    assert info.value.chain_id == other.chain_id
    with pytest.raises(UnknownSenderChain):
        g.bob.chains[0].decrypt(msg)
    with pytest.raises(UnknownSenderChain):
        SenderKeyRecord().decrypt(msg)
    with pytest.raises(UnknownSenderChain):
        g.bob.chain(other.chain_id)


def test_body_not_authentic_under_valid_signature() -> None:
    # A buggy (or hostile) sender signs a body that does not decrypt.
    seed = bytes(range(32))
    alice = OutboundSenderKey(chain_id=1, iteration=0, chain_key=bytes(32),
                              signing_key=SigningKey(seed))
    bob = SenderKeyRecord().process_distribution(alice.distribution())
    body = b"\x01" + (1).to_bytes(4, "big") + bytes(4) + bytes(20)
    with pytest.raises(MessageDecryptionError):
        bob.decrypt(body + SigningKey(seed).sign(Purpose.SENDER_KEY_MESSAGE, body))


def test_malformed_messages() -> None:
    g = GroupPair()
    msg = g.send(b"x")
    with pytest.raises(DecodeError):
        g.receive(msg[:88])
    with pytest.raises(UnknownVersion):
        g.receive(b"\x02" + msg[1:])
    high = msg[:5] + MAX_ITERATION.to_bytes(4, "big") + msg[9:]
    with pytest.raises(DecodeError):
        g.receive(high)


def test_rotation_keeps_old_chains_up_to_limit() -> None:
    rng = SeededRng(b"rot")
    record = SenderKeyRecord()
    chains = [OutboundSenderKey.create(rng) for _ in range(MAX_CHAINS_PER_SENDER + 1)]
    for c in chains:
        record = record.process_distribution(c.distribution())
    assert [c.chain_id for c in record.chains] == [c.chain_id for c in chains[::-1][:5]]
    _, old = chains[0].encrypt(b"old")
    with pytest.raises(UnknownSenderChain):
        record.decrypt(old)
    _, recent = chains[2].encrypt(b"recent")
    assert record.decrypt(recent)[1] == b"recent"


def test_repeated_distribution_never_rewinds() -> None:
    g = GroupPair()
    dist0 = g.alice.distribution()
    m0 = g.send(b"a")
    g.receive(m0)
    assert g.bob.process_distribution(dist0) is g.bob
    with pytest.raises(ReplayError):
        g.receive(m0)
    conflict = SenderKeyDistribution(
        chain_id=dist0.chain_id, iteration=0, chain_key=bytes(32),
        signing_public_key=SigningKey(bytes(32)).public_key,
    )
    with pytest.raises(SenderChainConflict):
        g.bob.process_distribution(conflict)


def test_chain_exhausted() -> None:
    last = OutboundSenderKey(chain_id=1, iteration=MAX_ITERATION, chain_key=bytes(32),
                             signing_key=SigningKey(bytes(32)))
    with pytest.raises(SenderChainExhausted):
        last.encrypt(b"x")
    near = OutboundSenderKey(chain_id=1, iteration=MAX_ITERATION - 1, chain_key=bytes(32),
                             signing_key=SigningKey(bytes(32)))
    bob = SenderKeyRecord().process_distribution(near.distribution())
    nxt, msg = near.encrypt(b"last one")
    assert nxt.iteration == MAX_ITERATION
    assert bob.decrypt(msg)[1] == b"last one"


def test_distribution_round_trip_and_rejects() -> None:
    dist = OutboundSenderKey.create(SeededRng(b"d")).distribution()
    data = dist.to_bytes()
    assert len(data) == 73
    assert SenderKeyDistribution.from_bytes(data) == dist
    with pytest.raises(DecodeError):
        SenderKeyDistribution.from_bytes(data[:-1])
    with pytest.raises(DecodeError):
        SenderKeyDistribution.from_bytes(data + b"\x00")
    with pytest.raises(UnknownVersion):
        SenderKeyDistribution.from_bytes(b"\x09" + data[1:])
    with pytest.raises(InvalidKey):
        SenderKeyDistribution(chain_id=1, iteration=0, chain_key=bytes(31),
                              signing_public_key=bytes(32))
    with pytest.raises(InvalidKey):
        SenderKeyDistribution(chain_id=2**32, iteration=0, chain_key=bytes(32),
                              signing_public_key=bytes(32))


def test_state_serialization_round_trips() -> None:
    g = GroupPair()
    msgs = [g.send(b"%d" % i) for i in range(10)]
    g.receive(msgs[6])
    g.receive(msgs[2])
    alice_bytes = g.alice.to_bytes()
    assert len(alice_bytes) == 73
    assert OutboundSenderKey.from_bytes(alice_bytes) == g.alice
    restored = SenderKeyRecord.from_bytes(g.bob.to_bytes())
    assert restored == g.bob
    chain = g.bob.chains[0]
    assert InboundSenderKey.from_bytes(chain.to_bytes()) == chain
    # the restored state continues exactly where the old one was
    g.bob = restored
    assert g.receive(msgs[0]) == b"0"
    assert g.receive(msgs[9]) == b"9"
    g.alice = OutboundSenderKey.from_bytes(alice_bytes)
    assert g.receive(g.send(b"after restore")) == b"after restore"


def test_state_decode_rejects() -> None:
    g = GroupPair()
    msgs = [g.send(b"x") for _ in range(3)]
    g.receive(msgs[2])
    data = g.bob.chains[0].to_bytes()
    with pytest.raises(DecodeError):
        InboundSenderKey.from_bytes(data[:-1])
    # skipped iteration at or above the chain iteration
    bad = data[:5] + (1).to_bytes(4, "big") + data[9:]
    with pytest.raises(DecodeError):
        InboundSenderKey.from_bytes(bad)
    with pytest.raises(UnknownVersion):
        OutboundSenderKey.from_bytes(b"\x00" + g.alice.to_bytes()[1:])
    rec = g.bob.to_bytes()
    with pytest.raises(DecodeError):
        SenderKeyRecord.from_bytes(rec[:1] + b"\x06" + rec[2:])
    twice = b"\x01\x02" + rec[2:] + rec[2:]
    with pytest.raises(DecodeError):
        SenderKeyRecord.from_bytes(twice)
    with pytest.raises(InvalidKey):
        SenderKeyRecord(chains=g.bob.chains * 6)


def test_reprs_hide_secrets() -> None:
    alice = OutboundSenderKey(chain_id=5, iteration=2, chain_key=b"K" * 32,
                              signing_key=SigningKey(bytes(32)))
    pub = alice.signing_public_key.hex()
    assert repr(alice) == f"OutboundSenderKey(chain_id=5, iteration=2, signing_public_key={pub})"
    dist = alice.distribution()
    assert repr(dist) == (
        f"SenderKeyDistribution(chain_id=5, iteration=2, signing_public_key={pub})"
    )
    inbound = InboundSenderKey.from_distribution(dist)
    assert repr(inbound) == (
        f"InboundSenderKey(chain_id=5, iteration=2, signing_public_key={pub}, skipped=0)"
    )
    assert repr(SenderKeyRecord(chains=(inbound,))) == "SenderKeyRecord(chain_ids=[5])"
    _, msg = alice.encrypt(b"secret")
    assert repr(SenderKeyMessage.from_bytes(msg)) == "SenderKeyMessage(chain_id=5, iteration=2)"
    for text in (repr(alice), repr(dist), repr(inbound)):
        assert (b"K" * 32).hex() not in text and "KKKK" not in text
