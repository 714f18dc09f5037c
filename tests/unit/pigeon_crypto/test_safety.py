import pytest

from pigeon_crypto.errors import DecodeError, InvalidKey, UnknownVersion
from pigeon_crypto.safety import (
    FINGERPRINT_ITERATIONS,
    SCANNABLE_SIZE,
    _combine,
    _iterated_hash,
    fingerprint,
    format_safety_number,
    safety_number,
    scannable_safety_number,
    verify_scanned,
)

ALICE = (b"A" * 16, bytes(range(32)))
BOB = (b"B" * 16, bytes(range(100, 132)))
MALLORY = (b"B" * 16, bytes(range(200, 232)))


def test_signal_test_vectors_v1() -> None:
    # libsignal rust/protocol/src/fingerprint.rs, fingerprint_test_v1 (5200 iterations,
    # 33-byte DJB keys, phone numbers as stable ids): the same function must agree.
    alice_key = bytes.fromhex("0506863bc66d02b40d27b8d49ca7c09e9239236f9d7d25d6fcca5ce13c7064d868")
    bob_key = bytes.fromhex("05f781b6fb32fed9ba1cf2de978d4d5da28dc34046ae814402b5c0dbd96fda907b")
    fa = _iterated_hash(alice_key, b"+14152222222", 5200)
    fb = _iterated_hash(bob_key, b"+14153333333", 5200)
    assert _combine(fa, fb) == _combine(fb, fa) == (
        "300354477692869396892869876765458257569162576843440918079131"
    )
    assert fa[:32].hex() == "1e301a0353dce3dbe7684cb8336e85136cdc0ee96219494ada305d62a7bd61df"
    assert fb[:32].hex() == "d62cbf73a11592015b6b9f1682ac306fea3aaf3885b84d12bca631e9d4fb3a4d"


def test_symmetric_and_60_digits() -> None:
    ab = safety_number(*ALICE, *BOB)
    assert ab == safety_number(*BOB, *ALICE)
    assert len(ab) == 60 and ab.isdigit()
    formatted = format_safety_number(ab)
    assert len(formatted.split(" ")) == 12 and formatted.replace(" ", "") == ab


def test_changes_when_either_identity_changes() -> None:
    ab = safety_number(*ALICE, *BOB)
    assert safety_number(*ALICE, *MALLORY) != ab
    assert safety_number(MALLORY[0], ALICE[1], *BOB) != ab  # account id change
    assert safety_number(ALICE[0], MALLORY[1], *BOB) != ab  # key change


def test_fingerprint_is_iterated_sha512() -> None:
    assert FINGERPRINT_ITERATIONS == 5200
    f = fingerprint(*ALICE)
    assert len(f) == 64
    assert f == _iterated_hash(ALICE[1], ALICE[0], 5200)


def test_scannable_round_trip_and_mismatch() -> None:
    from_alice = scannable_safety_number(*ALICE, *BOB)
    from_bob = scannable_safety_number(*BOB, *ALICE)
    assert len(from_alice) == SCANNABLE_SIZE == 65 and from_alice[0] == 1
    assert from_alice[1:33] == fingerprint(*ALICE)[:32]
    assert verify_scanned(*BOB, *ALICE, from_alice)
    assert verify_scanned(*ALICE, *BOB, from_bob)
    # my own code scanned back, or a MITM's view, does not match
    assert not verify_scanned(*ALICE, *BOB, from_alice)
    assert not verify_scanned(*BOB, *ALICE, scannable_safety_number(*MALLORY, *BOB))
    assert not verify_scanned(*ALICE, *MALLORY, from_bob)


def test_scannable_rejects_malformed() -> None:
    good = scannable_safety_number(*ALICE, *BOB)
    with pytest.raises(DecodeError):
        verify_scanned(*BOB, *ALICE, good[:-1])
    with pytest.raises(DecodeError):
        verify_scanned(*BOB, *ALICE, good + b"\x00")
    with pytest.raises(UnknownVersion):
        verify_scanned(*BOB, *ALICE, b"\x02" + good[1:])


def test_rejects_wrong_sizes() -> None:
    with pytest.raises(InvalidKey):
        safety_number(b"short", ALICE[1], *BOB)
    with pytest.raises(InvalidKey):
        safety_number(*ALICE, BOB[0], BOB[1] + b"\x00")
