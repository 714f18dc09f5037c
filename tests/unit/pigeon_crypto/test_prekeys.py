import pytest

from pigeon_crypto.errors import DecodeError, InvalidBundle, UnknownVersion
from pigeon_crypto.prekeys import (
    KemKind,
    KemPreKey,
    KemPreKeyPair,
    OneTimePreKey,
    OneTimePreKeyPair,
    PreKeyBundle,
    SignedPreKey,
    SignedPreKeyPair,
)
from pigeon_crypto.rng import SeededRng
from tests.helpers import NOW_MS, make_responder


def test_private_prekeys_roundtrip() -> None:
    bob = make_responder()
    assert SignedPreKeyPair.from_bytes(bob.spk.to_bytes()) == bob.spk
    kem = bob.kem_last_resort
    assert KemPreKeyPair.from_bytes(kem.to_bytes()).public == kem.public
    assert OneTimePreKeyPair.from_bytes(bob.one_time[0].to_bytes()) == bob.one_time[0]


def test_public_prekeys_roundtrip_and_sizes() -> None:
    bob = make_responder()
    assert len(bob.spk.public.to_bytes()) == SignedPreKey.SIZE == 109
    assert len(bob.kem_last_resort.public.to_bytes()) == KemPreKey.SIZE == 1262
    assert len(bob.one_time[0].public.to_bytes()) == OneTimePreKey.SIZE == 37
    assert SignedPreKey.from_bytes(bob.spk.public.to_bytes()) == bob.spk.public
    assert KemPreKey.from_bytes(bob.kem_last_resort.public.to_bytes()) == bob.kem_last_resort.public


def test_kem_encapsulation_matches_decapsulation() -> None:
    bob = make_responder()
    shared, ct = bob.kem_last_resort.public.encapsulate()
    assert bob.kem_last_resort.decapsulate(ct) == shared
    with pytest.raises(DecodeError):
        bob.kem_last_resort.decapsulate(ct[:-1])


def test_bundle_roundtrip_with_and_without_one_time_key() -> None:
    bob = make_responder()
    for bundle in (bob.bundle(), bob.bundle(one_time=False, kem_one_time=False)):
        again = PreKeyBundle.from_bytes(bundle.to_bytes())
        assert again == bundle


def test_bundle_without_kem_prekey_is_rejected() -> None:
    bob = make_responder()
    data = bob.bundle(one_time=False).to_bytes()
    cut = 1 + 129 + 109
    with pytest.raises(InvalidBundle):
        PreKeyBundle.from_bytes(data[:cut])
    with pytest.raises(InvalidBundle):
        PreKeyBundle.from_bytes(data[:cut] + b"\x00")


def test_bundle_with_foreign_signatures_is_rejected() -> None:
    bob, eve = make_responder(b"bob"), make_responder(b"eve")
    mixed_spk = PreKeyBundle(identity=bob.identity.public, signed_prekey=eve.spk.public,
                             kem_prekey=bob.kem_last_resort.public)
    with pytest.raises(InvalidBundle):
        PreKeyBundle.from_bytes(mixed_spk.to_bytes())
    mixed_kem = PreKeyBundle(identity=bob.identity.public, signed_prekey=bob.spk.public,
                             kem_prekey=eve.kem_last_resort.public)
    with pytest.raises(InvalidBundle):
        mixed_kem.check()
    # a KEM prekey whose kind was altered breaks the signature
    data = bytearray(bob.kem_last_resort.public.to_bytes())
    data[5] = KemKind.ONE_TIME
    forged = PreKeyBundle(identity=bob.identity.public, signed_prekey=bob.spk.public,
                          kem_prekey=KemPreKey.from_bytes(bytes(data)))
    with pytest.raises(InvalidBundle):
        forged.check()


def test_bad_versions_kinds_and_flags() -> None:
    bob = make_responder()
    with pytest.raises(UnknownVersion):
        SignedPreKey.from_bytes(b"\x09" + bob.spk.public.to_bytes()[1:])
    data = bytearray(bob.kem_last_resort.public.to_bytes())
    data[5] = 7
    with pytest.raises(DecodeError):
        KemPreKey.from_bytes(bytes(data))
    bundle = bytearray(bob.bundle(one_time=False).to_bytes())
    bundle[-1] = 2
    with pytest.raises(DecodeError):
        PreKeyBundle.from_bytes(bytes(bundle))


def test_reprs_hide_private_keys() -> None:
    bob = make_responder()
    assert repr(bob.spk) == "SignedPreKeyPair(key_id=1)"
    assert repr(bob.kem_last_resort) == "KemPreKeyPair(key_id=100, kind=LAST_RESORT)"
    assert repr(bob.one_time[0]) == "OneTimePreKeyPair(key_id=1000)"


def test_generation_is_deterministic_under_seeded_rng() -> None:
    a = make_responder(b"x")
    b = make_responder(b"x")
    assert a.bundle().to_bytes() == b.bundle().to_bytes()
    otk = OneTimePreKeyPair.generate(key_id=5, rng=SeededRng(b"s"))
    assert otk == OneTimePreKeyPair.generate(key_id=5, rng=SeededRng(b"s"))
    assert NOW_MS > 0
