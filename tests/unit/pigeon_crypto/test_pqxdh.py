import pytest

from pigeon_crypto.errors import (
    DecodeError,
    DecryptionError,
    InvalidBundle,
    InvalidKey,
    PigeonError,
    PrekeyNotFound,
    ReplayError,
    UnknownVersion,
)
from pigeon_crypto.identity import IdentityKeyPair
from pigeon_crypto.pqxdh import InitiationHeader, accept, initiate
from pigeon_crypto.prekeys import KemKind, PreKeyBundle
from pigeon_crypto.rng import SeededRng
from tests.helpers import NOW_MS, make_responder

ALICE = IdentityKeyPair.generate(SeededRng(b"alice"))


def test_both_sides_agree_and_exchange_messages() -> None:
    bob = make_responder()
    init = initiate(ALICE, bob.bundle(), b"mailbox+capability", rng=SeededRng(b"i"))
    acc = accept(bob.identity, bob.keys, init.message, now_ms=NOW_MS)
    assert acc.payload == b"mailbox+capability"
    assert acc.peer == ALICE.public
    assert init.peer == bob.identity.public
    assert acc.one_time_prekey_id == 1000
    assert acc.kem_prekey_kind is KemKind.ONE_TIME
    bob.keys.commit(acc)
    rng = SeededRng(b"r")
    reply = acc.session.encrypt(b"hi alice", rng=rng)
    got = init.session.decrypt(reply.message, now_ms=NOW_MS)
    assert got.plaintext == b"hi alice"
    back = got.state.encrypt(b"hi bob", rng=rng)
    assert reply.state.decrypt(back.message, now_ms=NOW_MS).plaintext == b"hi bob"


def test_without_one_time_prekey_falls_back_to_last_resort_kem() -> None:
    bob = make_responder(one_time=0, kem_one_time=0)
    bundle = bob.bundle()
    assert bundle.one_time_prekey is None
    init = initiate(ALICE, bundle, b"p", rng=SeededRng(b"i"))
    acc = accept(bob.identity, bob.keys, init.message, now_ms=NOW_MS)
    assert acc.one_time_prekey_id is None and acc.kem_prekey_kind is KemKind.LAST_RESORT
    bob.keys.commit(acc)
    assert 100 in bob.keys.kem  # last resort is kept


def test_initiation_does_not_reveal_the_initiator_identity() -> None:
    bob = make_responder()
    init = initiate(ALICE, bob.bundle(), b"payload", rng=SeededRng(b"i"))
    for secret in (ALICE.public.signing_key, ALICE.public.dh_key, ALICE.public.to_bytes()[:16]):
        assert secret not in init.message
    assert b"payload" not in init.message


def test_replayed_initiation_is_rejected() -> None:
    bob = make_responder(one_time=0, kem_one_time=0)
    init = initiate(ALICE, bob.bundle(), b"p", rng=SeededRng(b"i"))
    acc = accept(bob.identity, bob.keys, init.message, now_ms=NOW_MS)
    bob.keys.commit(acc)
    with pytest.raises(ReplayError):
        accept(bob.identity, bob.keys, init.message, now_ms=NOW_MS)


def test_reused_one_time_prekey_is_rejected() -> None:
    bob = make_responder()
    bundle = bob.bundle()
    first = initiate(ALICE, bundle, b"p", rng=SeededRng(b"1"))
    bob.keys.commit(accept(bob.identity, bob.keys, first.message, now_ms=NOW_MS))
    # a second initiator fetched the same bundle (a relay that hands out a key twice)
    carol = IdentityKeyPair.generate(SeededRng(b"carol"))
    second = initiate(carol, bundle, b"p", rng=SeededRng(b"2"))
    with pytest.raises(PrekeyNotFound) as info:
        accept(bob.identity, bob.keys, second.message, now_ms=NOW_MS)
    assert info.value.kind in ("one-time", "kem")


def test_replay_after_retirement_of_signed_prekey_cannot_match() -> None:
    bob = make_responder(one_time=0, kem_one_time=0)
    init = initiate(ALICE, bob.bundle(), b"p", rng=SeededRng(b"i"))
    bob.keys.commit(accept(bob.identity, bob.keys, init.message, now_ms=NOW_MS))
    bob.keys.retire_signed_prekey(bob.spk.key_id)
    with pytest.raises(PrekeyNotFound):
        accept(bob.identity, bob.keys, init.message, now_ms=NOW_MS)


def test_accept_is_pure_until_commit() -> None:
    bob = make_responder()
    init = initiate(ALICE, bob.bundle(), b"p", rng=SeededRng(b"i"))
    accept(bob.identity, bob.keys, init.message, now_ms=NOW_MS)
    assert 1000 in bob.keys.one_time and not bob.keys.replays


@pytest.mark.parametrize("region", ["header", "ek", "kem_ct", "sealed", "ratchet"])
def test_any_tamper_is_a_typed_error(region: str) -> None:
    bob = make_responder()
    msg = bytearray(initiate(ALICE, bob.bundle(), b"p", rng=SeededRng(b"i")).message)
    offset = {"header": 2, "ek": 20, "kem_ct": 500, "sealed": 1200, "ratchet": len(msg) - 1}[region]
    msg[offset] ^= 0x01
    with pytest.raises(PigeonError) as info:
        accept(bob.identity, bob.keys, bytes(msg), now_ms=NOW_MS)
    expected = PrekeyNotFound if region == "header" else (DecryptionError, InvalidKey)
    assert isinstance(info.value, expected)


def test_truncated_and_versioned_initiations() -> None:
    bob = make_responder()
    msg = initiate(ALICE, bob.bundle(), b"p", rng=SeededRng(b"i")).message
    with pytest.raises(DecodeError):
        accept(bob.identity, bob.keys, msg[:1279], now_ms=NOW_MS)
    with pytest.raises(DecodeError):
        accept(bob.identity, bob.keys, msg[:100], now_ms=NOW_MS)
    with pytest.raises(UnknownVersion):
        accept(bob.identity, bob.keys, b"\x02" + msg[1:], now_ms=NOW_MS)


def test_message_for_another_responder_fails() -> None:
    bob, eve = make_responder(b"bob"), make_responder(b"eve")
    msg = initiate(ALICE, bob.bundle(one_time=False, kem_one_time=False), b"p",
                   rng=SeededRng(b"i")).message
    # same key ids exist at Eve, but her keys differ: nothing decrypts
    with pytest.raises(DecryptionError):
        accept(eve.identity, eve.keys, msg, now_ms=NOW_MS)


def test_initiate_refuses_unverified_bundle() -> None:
    bob, eve = make_responder(b"bob"), make_responder(b"eve")
    bad = PreKeyBundle(identity=bob.identity.public, signed_prekey=eve.spk.public,
                       kem_prekey=bob.kem_last_resort.public)
    with pytest.raises(InvalidBundle):
        initiate(ALICE, bad, b"p", rng=SeededRng(b"i"))


def test_header_parse_and_reprs() -> None:
    bob = make_responder()
    init = initiate(ALICE, bob.bundle(), b"p", rng=SeededRng(b"i"))
    header, sealed, rest = InitiationHeader.parse(init.message)
    assert header.signed_prekey_id == 1 and header.kem_prekey_id == 200
    assert header.one_time_prekey_id == 1000 and len(sealed) == 145 and rest
    assert repr(init) == (f"Initiation(peer={bob.identity.public.fingerprint}, "
                          f"{len(init.message)} bytes)")
    acc = accept(bob.identity, bob.keys, init.message, now_ms=NOW_MS)
    assert "payload" not in repr(acc) and "session" not in repr(acc)
