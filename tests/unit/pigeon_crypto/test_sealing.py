import pytest

from pigeon_crypto.errors import (
    DecodeError,
    DecryptionError,
    InvalidKey,
    UnknownVersion,
    WrongPassphrase,
)
from pigeon_crypto.rng import SeededRng
from pigeon_crypto.sealing import (
    DEFAULT_PARAMS,
    WRAPPED_KEY_SIZE,
    Argon2Params,
    DataKey,
    InvalidKdfParameters,
    UnsealError,
    WrappedKey,
    create_data_key,
    needs_rewrap,
    rewrap,
    seal,
    unlock,
    unseal,
    wrap_data_key,
)

# Tiny Argon2 costs keep the suite fast; the format does not depend on them.
FAST = Argon2Params(time_cost=1, memory_kib=64, parallelism=1)
FASTER_BUT_HIGHER = Argon2Params(time_cost=2, memory_kib=128, parallelism=2)


def test_default_params_are_rfc9106_second_option() -> None:
    assert (DEFAULT_PARAMS.time_cost, DEFAULT_PARAMS.memory_kib, DEFAULT_PARAMS.parallelism) == (
        3, 65536, 4,
    )


def test_round_trip() -> None:
    rng = SeededRng(b"seal")
    key, wrapped = create_data_key("correct horse", params=FAST, rng=rng)
    assert len(wrapped) == WRAPPED_KEY_SIZE == 101
    assert unlock(wrapped, "correct horse") == key
    sealed = seal(key, b"identity private key", ad=b"identity/1", rng=rng)
    assert unseal(key, sealed, ad=b"identity/1") == b"identity private key"
    assert key.open(key.seal(b"x", rng=rng)) == b"x"
    assert len(sealed) == 1 + 24 + len(b"identity private key") + 16


def test_wrong_passphrase() -> None:
    _, wrapped = create_data_key("right", params=FAST, rng=SeededRng(b"s"))
    with pytest.raises(WrongPassphrase):
        unlock(wrapped, "wrong")
    with pytest.raises(WrongPassphrase):
        unlock(wrapped, b"Right")


def test_passphrase_is_nfc_normalized() -> None:
    _, wrapped = create_data_key("caf\u00e9", params=FAST, rng=SeededRng(b"s"))
    unlock(wrapped, "cafe\u0301")  # decomposed form unlocks too
    unlock(wrapped, "caf\u00e9".encode())


def test_tampered_params_or_salt_rejected() -> None:
    _, wrapped = create_data_key("pw", params=FAST, rng=SeededRng(b"s"))
    w = WrappedKey.from_bytes(wrapped)
    assert w.params == FAST and w.to_bytes() == wrapped
    lowered = bytearray(wrapped)
    lowered[12] = 2  # parallelism 1 -> 2 (still valid parameters)
    with pytest.raises(WrongPassphrase):
        unlock(bytes(lowered), "pw")
    for offset in (4, 20, 40, 80):  # time cost, salt, nonce, wrapped key
        bad = bytearray(wrapped)
        bad[offset] ^= 1
        with pytest.raises((WrongPassphrase, DecodeError)):
            unlock(bytes(bad), "pw")


def test_rewrap_keeps_sealed_data_readable() -> None:
    rng = SeededRng(b"rewrap")
    key, wrapped = create_data_key("old", params=FAST, rng=rng)
    sealed = seal(key, b"secret", rng=rng)
    new = rewrap(wrapped, "old", "new", rng=rng)
    assert WrappedKey.from_bytes(new).params == FAST
    assert unseal(unlock(new, "new"), sealed) == b"secret"
    with pytest.raises(WrongPassphrase):
        unlock(new, "old")
    with pytest.raises(WrongPassphrase):
        rewrap(wrapped, "not old", "new", rng=rng)


def test_raised_params() -> None:
    rng = SeededRng(b"raise")
    key, wrapped = create_data_key("pw", params=FAST, rng=rng)
    sealed = seal(key, b"secret", rng=rng)
    assert needs_rewrap(wrapped, FASTER_BUT_HIGHER)
    assert needs_rewrap(wrapped)  # below the default
    higher = rewrap(wrapped, "pw", "pw", params=FASTER_BUT_HIGHER, rng=rng)
    assert not needs_rewrap(higher, FASTER_BUT_HIGHER)
    assert WrappedKey.from_bytes(higher).params == FASTER_BUT_HIGHER
    assert unseal(unlock(higher, "pw"), sealed) == b"secret"
    # and the old blob still works: nothing else was re-encrypted
    assert unlock(wrapped, "pw") == key


def test_wrap_is_deterministic_given_rng() -> None:
    key = DataKey(bytes(32))
    a = wrap_data_key(key, "pw", params=FAST, rng=SeededRng(b"x"))
    b = wrap_data_key(key, "pw", params=FAST, rng=SeededRng(b"x"))
    assert a == b


def test_unseal_rejects() -> None:
    rng = SeededRng(b"u")
    key = DataKey.generate(rng)
    sealed = seal(key, b"secret", ad=b"row-1", rng=rng)
    with pytest.raises(UnsealError):
        unseal(key, sealed, ad=b"row-2")
    with pytest.raises(UnsealError):
        unseal(DataKey.generate(rng), sealed, ad=b"row-1")
    bad = bytearray(sealed)
    bad[-1] ^= 1
    with pytest.raises(UnsealError):
        unseal(key, bytes(bad), ad=b"row-1")
    with pytest.raises(UnknownVersion):
        unseal(key, b"\x02" + sealed[1:], ad=b"row-1")
    with pytest.raises(DecodeError):
        unseal(key, sealed[:30])
    assert issubclass(UnsealError, DecryptionError)


def test_wrapped_key_rejects_malformed() -> None:
    _, wrapped = create_data_key("pw", params=FAST, rng=SeededRng(b"s"))
    with pytest.raises(DecodeError):
        unlock(wrapped[:-1], "pw")
    with pytest.raises(DecodeError):
        unlock(wrapped + b"\x00", "pw")
    with pytest.raises(UnknownVersion):
        unlock(b"\x02" + wrapped[1:], "pw")
    huge = wrapped[:5] + (2**31).to_bytes(4, "big") + wrapped[9:]  # absurd memory cost
    with pytest.raises(DecodeError):
        unlock(huge, "pw")


def test_param_validation_and_reprs() -> None:
    with pytest.raises(InvalidKdfParameters):
        Argon2Params(time_cost=0, memory_kib=64, parallelism=1)
    with pytest.raises(InvalidKdfParameters):
        Argon2Params(time_cost=1, memory_kib=7, parallelism=1)
    with pytest.raises(InvalidKdfParameters):
        Argon2Params(time_cost=1, memory_kib=1024, parallelism=65)
    with pytest.raises(InvalidKey):
        DataKey(bytes(31))
    key = DataKey(bytes(range(32)))
    assert repr(key) == "DataKey()"
    assert repr(FAST) == "Argon2Params(time_cost=1, memory_kib=64, parallelism=1)"
