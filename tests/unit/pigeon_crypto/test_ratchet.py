"""Double Ratchet with header encryption: behaviour, every typed error, snapshots, reprs."""

from __future__ import annotations

import hmac

import nacl.bindings
import pytest
from cryptography.hazmat.primitives.asymmetric.x25519 import X25519PrivateKey
from cryptography.hazmat.primitives.ciphers.aead import AESGCM

from pigeon_crypto._ratchet_primitives import kdf_init
from pigeon_crypto._ratchet_state import PendingSending, SendingChain
from pigeon_crypto.errors import (
    DecodeError,
    HeaderDecryptionError,
    InvalidKey,
    MessageDecryptionError,
    PigeonError,
    ReplayError,
    TooManySkipped,
    UnknownVersion,
    VersionTooOld,
)
from pigeon_crypto.ratchet import (
    MAX_SKIP,
    MAX_SKIPPED_CHAINS,
    MAX_SKIPPED_KEYS,
    SKIPPED_KEY_TTL_MS,
    Decrypted,
    Encrypted,
    RatchetState,
    SendingUnavailable,
    SkippedKeyExpired,
    init_initiator,
    init_responder,
)
from pigeon_crypto.rng import SeededRng

NOW = 1_790_000_000_000
SECRET = bytes(range(32))
AD = b"alice-identity-key-32-bytes-----" + b"bob-identity-key-32-bytes-------"
HEAD = 81  # version + nonce + encrypted header


class Pair:
    """Alice (initiator) and Bob (responder) with a seeded RNG and a fixed clock."""

    def __init__(
        self, seed: bytes = b"pair", *, bob_ad: bytes = AD, secret: bytes = SECRET
    ) -> None:
        self.rng = SeededRng(seed)
        bob_private = self.rng(32)
        bob_public = X25519PrivateKey.from_private_bytes(bob_private).public_key()
        self.alice = init_initiator(shared_secret=secret,
                                    peer_ratchet_public=bob_public.public_bytes_raw(),
                                    associated_data=AD, rng=self.rng)
        self.bob = init_responder(shared_secret=secret, our_ratchet_private=bob_private,
                                  associated_data=bob_ad)
        self.now = NOW

    def send(self, who: str, plaintext: bytes) -> bytes:
        state: RatchetState = getattr(self, who)
        out = state.encrypt(plaintext, rng=self.rng)
        assert isinstance(out, Encrypted)
        setattr(self, who, out.state)
        return out.message

    def deliver(self, who: str, message: bytes) -> bytes:
        state: RatchetState = getattr(self, who)
        out = state.decrypt(message, now_ms=self.now)
        assert isinstance(out, Decrypted)
        setattr(self, who, out.state)
        return out.plaintext

    def reject(self, who: str, message: bytes, error: type[PigeonError]) -> PigeonError:
        state: RatchetState = getattr(self, who)
        before = state.to_bytes()
        with pytest.raises(error) as info:
            state.decrypt(message, now_ms=self.now)
        assert state.to_bytes() == before  # commit after verification: nothing changed
        return info.value

    def handshake(self) -> None:
        """A→B then B→A: both sides have sending and receiving chains."""
        assert self.deliver("bob", self.send("alice", b"hello")) == b"hello"
        assert self.deliver("alice", self.send("bob", b"hi")) == b"hi"


def flip(message: bytes, index: int, bit: int = 0) -> bytes:
    out = bytearray(message)
    out[index] ^= 1 << bit
    return bytes(out)


# --- happy paths -----------------------------------------------------------------------------


def test_in_order_one_way_stream() -> None:
    p = Pair()
    for i in range(50):
        text = f"message {i}".encode()
        assert p.deliver("bob", p.send("alice", text)) == text
    assert p.alice.sending_index == 50
    assert p.bob.receiving_index == 50
    assert p.bob.skipped_count == 0


def test_ping_pong_changes_ratchet_keys_every_turn() -> None:
    p = Pair()
    seen = set()
    for i in range(10):
        sender, receiver = ("alice", "bob") if i % 2 == 0 else ("bob", "alice")
        text = f"turn {i}".encode()
        assert p.deliver(receiver, p.send(sender, text)) == text
        key = getattr(p, sender).ratchet_public_key
        assert key is not None and key not in seen
        seen.add(key)
        assert getattr(p, receiver).peer_ratchet_public_key == key
    assert len(seen) == 10


def test_message_layout_sizes() -> None:
    p = Pair()
    for size in (0, 1, 100, 1000):
        message = p.send("alice", bytes(size))
        assert len(message) == 1 + 24 + 56 + size + 16
        assert message[0] == 1
        assert p.deliver("bob", message) == bytes(size)


def test_header_encryption_hides_ratchet_key_and_counters() -> None:
    p = Pair()
    first, second = p.send("alice", b"a"), p.send("alice", b"b")
    public = p.alice.ratchet_public_key
    assert public is not None
    for message in (first, second):
        assert public not in message
    assert first[1:25] != second[1:25]  # fresh random nonces
    assert first[25:81] != second[25:81]


def test_out_of_order_within_a_chain() -> None:
    p = Pair()
    messages = [p.send("alice", f"m{i}".encode()) for i in range(5)]
    order = [4, 2, 0, 3, 1]
    expected_skipped = [4, 3, 2, 1, 0]
    for index, skipped in zip(order, expected_skipped, strict=True):
        assert p.deliver("bob", messages[index]) == f"m{index}".encode()
        assert p.bob.skipped_count == skipped


def test_out_of_order_across_a_dh_step() -> None:
    p = Pair()
    old = [p.send("alice", f"old{i}".encode()) for i in range(3)]
    assert p.deliver("bob", old[0]) == b"old0"
    assert p.deliver("alice", p.send("bob", b"reply")) == b"reply"
    new = [p.send("alice", f"new{i}".encode()) for i in range(3)]
    # Bob sees the new chain first: PN=3 makes him store old1, old2; N=2 stores new0, new1.
    assert p.deliver("bob", new[2]) == b"new2"
    assert p.bob.skipped_count == 4
    assert p.deliver("bob", old[2]) == b"old2"
    assert p.deliver("bob", new[0]) == b"new0"
    assert p.deliver("bob", old[1]) == b"old1"
    assert p.deliver("bob", new[1]) == b"new1"
    assert p.bob.skipped_count == 0


def test_encrypt_after_dh_step_draws_key_then_nonce() -> None:
    p = Pair()
    p.deliver("bob", p.send("alice", b"x"))
    calls: list[int] = []

    def rng(n: int) -> bytes:
        calls.append(n)
        return p.rng(n)

    state = p.bob.encrypt(b"y", rng=rng).state
    assert calls == [32, 24]  # new ratchet private key, then the header nonce
    calls.clear()
    state.encrypt(b"z", rng=rng)
    assert calls == [24]


def test_responder_cannot_send_first() -> None:
    p = Pair()
    assert not p.bob.can_send
    with pytest.raises(SendingUnavailable) as info:
        p.bob.encrypt(b"too early", rng=p.rng)
    assert info.value.reason == "no-sending-chain"


def test_accepts_bytearray_and_memoryview() -> None:
    p = Pair()
    m1, m2 = p.send("alice", b"one"), p.send("alice", b"two")
    assert p.deliver("bob", bytearray(m1)) == b"one"  # type: ignore[arg-type]
    assert p.deliver("bob", memoryview(m2)) == b"two"  # type: ignore[arg-type]
    with pytest.raises(DecodeError):
        p.bob.decrypt("not bytes", now_ms=NOW)  # type: ignore[arg-type]


def test_input_states_are_never_modified() -> None:
    p = Pair()
    alice0 = p.alice
    snapshot = alice0.to_bytes()
    message = p.send("alice", b"m")
    assert alice0.to_bytes() == snapshot
    bob0 = p.bob
    bob_snapshot = bob0.to_bytes()
    p.deliver("bob", message)
    assert bob0.to_bytes() == bob_snapshot
    # The old Bob state can still decrypt it (a caller that lost its write can retry).
    assert bob0.decrypt(message, now_ms=NOW).plaintext == b"m"


# --- typed errors -------------------------------------------------------------------------


@pytest.mark.parametrize("index", [0 + 1, 12, 24, 25, 40, 64, 65, 80])
@pytest.mark.parametrize("bit", [0, 7])
def test_tampered_header_single_bit(index: int, bit: int) -> None:
    p = Pair()
    p.handshake()
    message = p.send("alice", b"payload")
    error = p.reject("bob", flip(message, index, bit), HeaderDecryptionError)
    assert not isinstance(error, MessageDecryptionError)
    assert p.deliver("bob", message) == b"payload"  # the state is still usable


@pytest.mark.parametrize("offset", [0, 50, -17, -1])
def test_tampered_body_single_bit(offset: int) -> None:
    p = Pair()
    p.handshake()
    message = p.send("alice", b"p" * 100)
    index = HEAD + offset if offset >= 0 else len(message) + offset
    error = p.reject("bob", flip(message, index), MessageDecryptionError)
    assert "p" * 8 not in str(error)
    assert p.deliver("bob", message) == b"p" * 100


def test_tampered_header_on_first_message_and_dh_step() -> None:
    p = Pair()
    message = p.send("alice", b"first")
    p.reject("bob", flip(message, 30), HeaderDecryptionError)
    p.reject("bob", flip(message, HEAD + 3), MessageDecryptionError)
    assert p.deliver("bob", message) == b"first"


def test_wrong_associated_data_fails_body() -> None:
    p = Pair(bob_ad=AD[::-1])
    message = p.send("alice", b"bound to AD")
    p.reject("bob", message, MessageDecryptionError)


def test_foreign_message_fails_header() -> None:
    p, q = Pair(b"one"), Pair(b"two", secret=bytes(32))
    p.reject("bob", q.send("alice", b"other session"), HeaderDecryptionError)
    p.handshake()
    q.handshake()
    p.reject("bob", q.send("alice", b"other session"), HeaderDecryptionError)
    p.reject("alice", q.send("bob", b"other session"), HeaderDecryptionError)


def test_duplicate_in_current_chain_is_a_replay() -> None:
    p = Pair()
    message = p.send("alice", b"once")
    p.deliver("bob", message)
    p.deliver("bob", p.send("alice", b"next"))
    p.reject("bob", message, ReplayError)


def test_duplicate_of_a_consumed_skipped_key_is_a_replay() -> None:
    p = Pair()
    m0, m1, m2 = (p.send("alice", b"%d" % i) for i in range(3))
    p.deliver("bob", m2)
    p.deliver("bob", m0)
    p.reject("bob", m0, ReplayError)
    # ...also once the chain is an old one (its header key is still stored for m1).
    p.deliver("alice", p.send("bob", b"r"))
    p.deliver("bob", p.send("alice", b"new chain"))
    p.reject("bob", m0, ReplayError)
    assert p.deliver("bob", m1) == b"1"
    # Once no key of that chain is left, its header key is gone too.
    error = p.reject("bob", m1, HeaderDecryptionError)
    assert not isinstance(error, ReplayError)


def test_gap_of_exactly_max_skip_is_accepted() -> None:
    p = Pair()
    messages = [p.send("alice", b"%d" % i) for i in range(MAX_SKIP + 2)]
    assert p.deliver("bob", messages[MAX_SKIP]) == b"%d" % MAX_SKIP  # skips 0..999
    assert p.bob.skipped_count == MAX_SKIP
    assert p.deliver("bob", messages[0]) == b"0"


def test_too_many_skipped_in_current_chain() -> None:
    p = Pair()
    p.handshake()
    messages = [p.send("alice", b"%d" % i) for i in range(MAX_SKIP + 2)]
    error = p.reject("bob", messages[MAX_SKIP + 1], TooManySkipped)
    assert isinstance(error, TooManySkipped)
    assert (error.got, error.maximum) == (MAX_SKIP + 1, MAX_SKIP)
    assert p.deliver("bob", messages[0]) == b"0"


def test_too_many_skipped_on_new_chain_and_via_pn() -> None:
    p = Pair()
    messages = [p.send("alice", b"%d" % i) for i in range(MAX_SKIP + 2)]
    p.reject("bob", messages[-1], TooManySkipped)  # first message: N = 1001 on a new chain
    p.deliver("bob", messages[0])
    p.deliver("alice", p.send("bob", b"r"))
    late = p.send("alice", b"new chain")  # PN = 1002, Bob's Nr = 1: 1001 to skip
    error = p.reject("bob", late, TooManySkipped)
    assert isinstance(error, TooManySkipped) and error.got == MAX_SKIP + 1


@pytest.mark.parametrize("version", [0, 2, 255])
def test_unknown_versions(version: int) -> None:
    p = Pair()
    message = p.send("alice", b"v")
    bad = bytes([version]) + message[1:]
    error = p.reject("bob", bad, UnknownVersion)
    assert not isinstance(error, VersionTooOld)  # 0 is "unknown", not "too old" (_codec)
    assert isinstance(error, UnknownVersion) and error.got == version
    # Short messages report the version first, too.
    p.reject("bob", bad[:10], UnknownVersion)


@pytest.mark.parametrize("length", [0, 1, 25, 81, 96])
def test_truncated_below_minimum(length: int) -> None:
    p = Pair()
    message = p.send("alice", b"")
    assert len(message) == 97
    p.reject("bob", message[:length], DecodeError)


def test_truncated_body_fails_authentication() -> None:
    p = Pair()
    message = p.send("alice", b"x" * 100)
    p.reject("bob", message[:-1], MessageDecryptionError)
    p.reject("bob", message + b"\x00", MessageDecryptionError)


def test_skipped_key_expiry() -> None:
    p = Pair()
    m0, m1, m2 = (p.send("alice", b"%d" % i) for i in range(3))
    p.deliver("bob", m2)  # stores m0, m1 at NOW
    p.now = NOW + SKIPPED_KEY_TTL_MS
    assert p.deliver("bob", m0) == b"0"  # exactly at the limit: still accepted
    p.now += 1
    error = p.reject("bob", m1, SkippedKeyExpired)
    assert isinstance(error, SkippedKeyExpired) and isinstance(error, ReplayError)
    assert (error.age_ms, error.ttl_ms) == (SKIPPED_KEY_TTL_MS + 1, SKIPPED_KEY_TTL_MS)
    # The next successful decrypt purges the expired key.
    assert p.bob.skipped_count == 1
    p.deliver("bob", p.send("alice", b"later"))
    assert p.bob.skipped_count == 0
    p.reject("bob", m1, ReplayError)


def test_skipped_store_evicts_oldest_keys_beyond_bound() -> None:
    p = Pair()
    chain1 = [p.send("alice", b"a%d" % i) for i in range(MAX_SKIP + 1)]
    p.deliver("bob", chain1[-1])  # stores chain1[0..999]
    p.deliver("alice", p.send("bob", b"r1"))
    chain2 = [p.send("alice", b"b%d" % i) for i in range(MAX_SKIP + 1)]
    p.deliver("bob", chain2[-1])  # stores chain2[0..999]: 2000 in all
    assert p.bob.skipped_count == MAX_SKIPPED_KEYS
    p.deliver("alice", p.send("bob", b"r2"))
    chain3 = [p.send("alice", b"c%d" % i) for i in range(3)]
    p.deliver("bob", chain3[2])  # 2 more: the 2 oldest (chain1[0], chain1[1]) go
    assert p.bob.skipped_count == MAX_SKIPPED_KEYS
    p.reject("bob", chain1[0], ReplayError)
    p.reject("bob", chain1[1], ReplayError)
    assert p.deliver("bob", chain1[2]) == b"a2"
    assert p.deliver("bob", chain2[0]) == b"b0"
    assert p.deliver("bob", chain3[0]) == b"c0"


def test_skipped_store_bounds_distinct_header_keys() -> None:
    p = Pair()
    late = []
    for i in range(MAX_SKIPPED_CHAINS + 1):
        skipped = p.send("alice", b"late%d" % i)
        p.deliver("bob", p.send("alice", b"now%d" % i))
        late.append(skipped)
        p.deliver("alice", p.send("bob", b"ack"))
    assert p.bob.skipped_count == MAX_SKIPPED_CHAINS
    p.reject("bob", late[0], HeaderDecryptionError)  # its chain was evicted
    for i in range(1, MAX_SKIPPED_CHAINS + 1):
        assert p.deliver("bob", late[i]) == b"late%d" % i
    assert p.bob.skipped_count == 0


def test_low_order_peer_keys_are_rejected() -> None:
    rng = SeededRng(b"low")
    with pytest.raises(InvalidKey):
        init_initiator(shared_secret=SECRET, peer_ratchet_public=bytes(32),
                       associated_data=AD, rng=rng)
    # A (forged, but correctly header-encrypted) DH step carrying a low-order key.
    p = Pair()
    shared_hka = kdf_init(SECRET)[1]  # Bob's NHKr before his first message
    header = bytes(32) + bytes(8)
    nonce = bytes(range(24))
    enc = nacl.bindings.crypto_aead_xchacha20poly1305_ietf_encrypt(header, b"\x01", nonce,
                                                                  shared_hka)
    forged = b"\x01" + nonce + enc + AESGCM(bytes(32)).encrypt(bytes(12), b"", None)
    p.reject("bob", forged, InvalidKey)


@pytest.mark.parametrize("kwargs", [
    {"shared_secret": bytes(31)},
    {"our_ratchet_private": bytes(33)},
])
def test_responder_rejects_bad_key_sizes(kwargs: dict[str, bytes]) -> None:
    args = {"shared_secret": SECRET, "our_ratchet_private": bytes(range(32)),
            "associated_data": AD} | kwargs
    with pytest.raises(InvalidKey):
        init_responder(**args)


def test_initiator_rejects_bad_inputs() -> None:
    rng = SeededRng(b"x")
    with pytest.raises(InvalidKey):
        init_initiator(shared_secret=SECRET, peer_ratchet_public=bytes(31),
                       associated_data=AD, rng=rng)
    with pytest.raises(InvalidKey):
        init_initiator(shared_secret=SECRET, peer_ratchet_public=bytes(range(32)),
                       associated_data=AD, rng=lambda n: b"short")
    with pytest.raises(ValueError, match="associated_data"):
        init_initiator(shared_secret=SECRET, peer_ratchet_public=bytes(range(32)),
                       associated_data=bytes(70_000), rng=rng)


def test_short_rng_for_nonce_is_rejected() -> None:
    p = Pair()
    with pytest.raises(InvalidKey):
        p.alice.encrypt(b"x", rng=lambda n: bytes(n - 1))


def test_exhausted_sending_chain() -> None:
    p = Pair()
    data = bytearray(p.alice.to_bytes())
    ns_offset = 1 + 32 + 1 + 32 + 1 + 32 + 32 + 32 + 1 + 32 + 32
    assert data[ns_offset:ns_offset + 4] == bytes(4)
    data[ns_offset:ns_offset + 4] = (0xFFFF_FFFF).to_bytes(4, "big")
    state = RatchetState.from_bytes(bytes(data))
    assert state.sending_index == 0xFFFF_FFFF
    with pytest.raises(SendingUnavailable) as info:
        state.encrypt(b"x", rng=p.rng)
    assert info.value.reason == "chain-exhausted"


@pytest.mark.parametrize("now_ms", [-1, 1.5, 2**64])
def test_bad_clock_is_rejected_when_keys_would_be_stored(now_ms: int) -> None:
    p = Pair()
    p.send("alice", b"skipped")
    late = p.send("alice", b"late")
    with pytest.raises(ValueError, match="now_ms"):
        p.bob.decrypt(late, now_ms=now_ms)


def test_errors_never_echo_secrets_or_plaintext() -> None:
    p = Pair()
    plaintext = b"SECRET-PLAINTEXT"
    message = p.send("alice", plaintext)
    errors = [
        p.reject("bob", flip(message, 40), HeaderDecryptionError),
        p.reject("bob", flip(message, HEAD), MessageDecryptionError),
        p.reject("bob", message[:50], DecodeError),
    ]
    secrets = [SECRET.hex(), plaintext.decode(), p.bob.to_bytes()[1:33].hex()]
    for error in errors:
        for secret in secrets:
            assert secret not in str(error)


# --- snapshots ---------------------------------------------------------------------------------


def _round_trip(state: RatchetState) -> RatchetState:
    data = state.to_bytes()
    assert data[0] == 1
    restored = RatchetState.from_bytes(data)
    assert restored.to_bytes() == data
    assert repr(restored) == repr(state)
    return restored


def test_snapshot_round_trips_in_every_mode() -> None:
    p = Pair()
    _round_trip(p.bob)  # responder, nothing received
    _round_trip(p.alice)  # initiator, active chain, no receiving chain
    m0, m1, m2 = (p.send("alice", b"%d" % i) for i in range(3))
    p.deliver("bob", m2)
    p.bob = _round_trip(p.bob)  # pending sending, 2 skipped keys
    assert p.deliver("bob", m1) == b"1"
    p.deliver("alice", p.send("bob", b"r"))
    p.alice = _round_trip(p.alice)
    p.bob = _round_trip(p.bob)
    assert p.deliver("bob", p.send("alice", b"after")) == b"after"
    p.bob = _round_trip(p.bob)  # one skipped key on an old chain
    assert p.deliver("bob", m0) == b"0"


def test_restored_state_behaves_identically() -> None:
    p, q = Pair(b"same"), Pair(b"same")
    for i in range(4):
        p.deliver("bob", p.send("alice", b"%d" % i))
        q.deliver("bob", q.send("alice", b"%d" % i))
        q.alice = RatchetState.from_bytes(q.alice.to_bytes())
        q.bob = RatchetState.from_bytes(q.bob.to_bytes())
        assert p.send("bob", b"r%d" % i) == q.send("bob", b"r%d" % i)
        p.deliver("alice", p.send("bob", b"s"))
        q.deliver("alice", q.send("bob", b"s"))
    assert p.alice.to_bytes() == q.alice.to_bytes()
    assert p.bob.to_bytes() == q.bob.to_bytes()


def test_snapshot_rejects_truncation_and_trailing_bytes() -> None:
    p = Pair()
    p.send("alice", b"a")
    late = p.send("alice", b"b")
    p.deliver("bob", late)
    data = p.bob.to_bytes()
    for length in range(len(data)):
        with pytest.raises(DecodeError):
            RatchetState.from_bytes(data[:length]) if length else RatchetState.from_bytes(b"")
    with pytest.raises(DecodeError):
        RatchetState.from_bytes(data + b"\x00")


@pytest.mark.parametrize("version", [0, 2, 200])
def test_snapshot_unknown_versions(version: int) -> None:
    data = Pair().alice.to_bytes()
    with pytest.raises(UnknownVersion) as info:
        RatchetState.from_bytes(bytes([version]) + data[1:])
    assert not isinstance(info.value, VersionTooOld)


def test_snapshot_rejects_bad_flags_and_inconsistent_states() -> None:
    alice = Pair().alice.to_bytes()
    has_dhs = 33
    bad_flag = alice[:has_dhs] + b"\x02" + alice[has_dhs + 1:]
    with pytest.raises(DecodeError, match="flag"):
        RatchetState.from_bytes(bad_flag)
    kind_offset = 1 + 32 + 1 + 32 + 1 + 32 + 32 + 32
    assert alice[kind_offset] == 2
    bad_kind = alice[:kind_offset] + b"\x07" + alice[kind_offset + 1:]
    with pytest.raises(DecodeError, match="sending kind"):
        RatchetState.from_bytes(bad_kind)
    # Alice's layout with "no sending chain": she knows DHr, which no such state does.
    no_sending = alice[:kind_offset] + b"\x00" + alice[kind_offset + 1 + 32 + 32 + 8:]
    with pytest.raises(DecodeError, match="peer's ratchet key"):
        RatchetState.from_bytes(no_sending)
    with pytest.raises(DecodeError):
        RatchetState.from_bytes("text")  # type: ignore[arg-type]


# --- reprs --------------------------------------------------------------------------------------


def test_repr_is_pinned_and_shows_no_secret() -> None:
    p = Pair(b"repr")
    assert repr(p.bob) == (
        "RatchetState(ours=368852ce…, theirs=None, sending=none, pn=0, receiving=0, skipped=0)"
    )
    m0 = p.send("alice", b"0")
    p.send("alice", b"1")
    p.deliver("bob", p.send("alice", b"2"))
    assert repr(p.alice) == (
        "RatchetState(ours=decd9f79…, theirs=368852ce…, sending=active:3, pn=0, receiving=0, "
        "skipped=0)"
    )
    assert repr(p.bob) == (
        "RatchetState(ours=None, theirs=decd9f79…, sending=pending, pn=0, receiving=3, skipped=2)"
    )
    decrypted = p.bob.decrypt(m0, now_ms=NOW)
    assert repr(decrypted) == f"Decrypted(state={decrypted.state!r})"
    parts = (p.bob._root, p.bob._sending, p.bob._receiving, p.alice._root, p.alice._sending)
    text = " ".join(repr(x) for x in (p.alice, p.bob, decrypted, *parts))
    bob_sending, bob_receiving = p.bob._sending, p.bob._receiving
    alice_sending, alice_dhs = p.alice._sending, p.alice._root.dhs
    assert isinstance(bob_sending, PendingSending) and bob_receiving is not None
    assert isinstance(alice_sending, SendingChain) and alice_dhs is not None
    secrets = [
        p.bob._root.root_key, p.bob._root.next_header_key_send,
        p.bob._root.next_header_key_recv, bob_sending.header_key,
        bob_receiving.chain_key, bob_receiving.header_key,
        p.alice._root.root_key, alice_sending.chain_key, alice_sending.header_key,
        alice_dhs,
    ]
    for secret in secrets:
        assert secret.hex()[:8] not in text


def test_states_compare_by_identity_snapshots_by_value() -> None:
    p, q = Pair(b"eq"), Pair(b"eq")
    assert p.alice != q.alice
    assert hmac.compare_digest(p.alice.to_bytes(), q.alice.to_bytes())
