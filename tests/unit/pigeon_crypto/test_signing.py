import pytest

from pigeon_crypto.errors import InvalidKey, InvalidSignature
from pigeon_crypto.signing import Purpose, SigningKey, verify


def test_sign_verify_roundtrip() -> None:
    key = SigningKey(b"\x07" * 32)
    sig = key.sign(Purpose.SIGNED_PREKEY, b"payload")
    verify(key.public_key, Purpose.SIGNED_PREKEY, b"payload", sig)


@pytest.mark.parametrize("other", [p for p in Purpose if p is not Purpose.SIGNED_PREKEY])
def test_signature_for_one_purpose_fails_for_every_other(other: Purpose) -> None:
    key = SigningKey(b"\x07" * 32)
    sig = key.sign(Purpose.SIGNED_PREKEY, b"payload")
    with pytest.raises(InvalidSignature) as info:
        verify(key.public_key, other, b"payload", sig)
    assert info.value.purpose == other.label


def test_contexts_are_distinct_and_prefix_free() -> None:
    values = [p.value for p in Purpose]
    assert len(set(values)) == len(values)
    assert all(b"\x00" not in v for v in values)


def test_wrong_payload_key_or_sizes_rejected() -> None:
    key = SigningKey(b"\x07" * 32)
    sig = key.sign(Purpose.GROUP_CONTROL, b"a")
    with pytest.raises(InvalidSignature):
        verify(key.public_key, Purpose.GROUP_CONTROL, b"b", sig)
    with pytest.raises(InvalidSignature):
        verify(SigningKey(b"\x08" * 32).public_key, Purpose.GROUP_CONTROL, b"a", sig)
    with pytest.raises(InvalidSignature):
        verify(key.public_key, Purpose.GROUP_CONTROL, b"a", sig[:63])
    with pytest.raises(InvalidSignature):
        verify(key.public_key[:31], Purpose.GROUP_CONTROL, b"a", sig)
    flipped = bytes([sig[0] ^ 1]) + sig[1:]
    with pytest.raises(InvalidSignature):
        verify(key.public_key, Purpose.GROUP_CONTROL, b"a", flipped)


def test_bad_seed_and_repr_hides_secret() -> None:
    with pytest.raises(InvalidKey):
        SigningKey(b"short")
    key = SigningKey(b"\x07" * 32)
    assert key.seed.hex() not in repr(key)
    assert repr(key) == f"SigningKey(public={key.public_key[:4].hex()}…)"
