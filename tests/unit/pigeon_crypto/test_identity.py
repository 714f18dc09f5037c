import pytest

from pigeon_crypto.errors import DecodeError, InvalidSignature, UnknownVersion
from pigeon_crypto.identity import (
    IdentityKeyPair,
    IdentityPublicKey,
    IdentityRotation,
    account_id_for,
    verify_rotation_chain,
)
from pigeon_crypto.rng import SeededRng
from pigeon_crypto.signing import Purpose


def make(seed: bytes) -> IdentityKeyPair:
    return IdentityKeyPair.generate(SeededRng(seed))


def test_public_roundtrip_and_self_signature() -> None:
    ident = make(b"a")
    data = ident.public.to_bytes()
    assert len(data) == IdentityPublicKey.SIZE == 129
    assert IdentityPublicKey.from_bytes(data) == ident.public


def test_private_roundtrip_rebuilds_public() -> None:
    ident = make(b"a")
    again = IdentityKeyPair.from_bytes(ident.to_bytes())
    assert again.public == ident.public
    assert again.dh(make(b"b").public.dh_key) == ident.dh(make(b"b").public.dh_key)


def test_parse_rejects_wrong_length_version_and_signature() -> None:
    data = make(b"a").public.to_bytes()
    with pytest.raises(DecodeError):
        IdentityPublicKey.from_bytes(data[:-1])
    with pytest.raises(DecodeError):
        IdentityPublicKey.from_bytes(data + b"\x00")
    with pytest.raises(UnknownVersion):
        IdentityPublicKey.from_bytes(b"\x02" + data[1:])
    with pytest.raises(UnknownVersion):
        IdentityPublicKey.from_bytes(b"\x00" + data[1:])
    # swap in another DH key: the signature no longer covers it
    other = make(b"b").public
    forged = data[:33] + other.dh_key + data[65:]
    with pytest.raises(InvalidSignature):
        IdentityPublicKey.from_bytes(forged)


def test_dh_agrees_both_ways() -> None:
    a, b = make(b"a"), make(b"b")
    assert a.dh(b.public.dh_key) == b.dh(a.public.dh_key)


def test_sign_is_domain_separated() -> None:
    a = make(b"a")
    sig = a.sign(Purpose.USERNAME_BINDING, b"alice")
    a.public.verify(Purpose.USERNAME_BINDING, b"alice", sig)
    with pytest.raises(InvalidSignature):
        a.public.verify(Purpose.RELAY_CHALLENGE, b"alice", sig)


def test_reprs_show_only_public_fingerprint() -> None:
    a = make(b"a")
    assert repr(a) == f"IdentityKeyPair({a.public.signing_key[:6].hex()})"
    assert repr(a.public) == f"IdentityPublicKey({a.public.signing_key[:6].hex()})"
    assert a.signing_seed.hex() not in repr(a) and a.dh_private.hex() not in repr(a)


def test_account_id_is_stable_across_rotation() -> None:
    first, second, third = make(b"1"), make(b"2"), make(b"3")
    account = account_id_for(first.public)
    assert len(account) == 16
    r1 = IdentityRotation.create(account_id=account, serial=1, old=first, new=second)
    r2 = IdentityRotation.create(account_id=account, serial=2, old=second, new=third)
    r1 = IdentityRotation.from_bytes(r1.to_bytes())
    assert verify_rotation_chain(account, first.public, [r1, r2]) == third.public
    assert verify_rotation_chain(account, first.public, []) == first.public


def test_rotation_chain_rejections() -> None:
    first, second, third = make(b"1"), make(b"2"), make(b"3")
    account = account_id_for(first.public)
    r1 = IdentityRotation.create(account_id=account, serial=1, old=first, new=second)
    r2 = IdentityRotation.create(account_id=account, serial=2, old=second, new=third)
    with pytest.raises(InvalidSignature):  # out of order
        verify_rotation_chain(account, first.public, [r2, r1])
    with pytest.raises(InvalidSignature):  # account id of someone else
        verify_rotation_chain(account_id_for(third.public), first.public, [r1])
    skip = IdentityRotation.create(account_id=account, serial=1, old=second, new=third)
    with pytest.raises(InvalidSignature):  # does not start from the current key
        verify_rotation_chain(account, first.public, [skip])
    # a rotation signed only by the new key (attacker claiming the account)
    data = bytearray(r1.to_bytes())
    data[-128] ^= 1  # flip a bit of the old key's signature
    with pytest.raises(InvalidSignature):
        IdentityRotation.from_bytes(bytes(data))
    with pytest.raises(DecodeError):
        IdentityRotation.from_bytes(r1.to_bytes()[:-1])
