"""Signed and hashed payload layouts, and the username rules."""

from __future__ import annotations

import pytest

from protocol import (
    InvalidUsername,
    LocalProtocolError,
    challenge_payload,
    dedup_input,
    normalize_username,
    username_binding_payload,
)

RELAY16, RELAY32 = b"r" * 16, b"R" * 32
NONCE, ACCOUNT = b"n" * 32, b"a" * 16


def test_challenge_layout() -> None:
    out = challenge_payload(RELAY16, NONCE, 0x0102030405060708, ACCOUNT)
    assert out == b"\x01\x10" + RELAY16 + NONCE + bytes.fromhex("0102030405060708") + ACCOUNT
    assert len(out) == 1 + 1 + 16 + 32 + 8 + 16
    assert challenge_payload(RELAY32, NONCE, 0, ACCOUNT)[1] == 32


def test_challenge_binds_every_input() -> None:
    base = challenge_payload(RELAY16, NONCE, 1, ACCOUNT)
    assert challenge_payload(b"s" * 16, NONCE, 1, ACCOUNT) != base
    assert challenge_payload(RELAY16, b"m" * 32, 1, ACCOUNT) != base
    assert challenge_payload(RELAY16, NONCE, 2, ACCOUNT) != base
    assert challenge_payload(RELAY16, NONCE, 1, b"b" * 16) != base
    # The relay id length is encoded, so ids of different lengths never collide.
    assert challenge_payload(RELAY32, NONCE, 1, ACCOUNT) != base


@pytest.mark.parametrize(
    "args",
    [
        (b"r" * 20, NONCE, 0, ACCOUNT),
        (RELAY16, b"n" * 31, 0, ACCOUNT),
        (RELAY16, NONCE, -1, ACCOUNT),
        (RELAY16, NONCE, 2**63, ACCOUNT),
        (RELAY16, NONCE, True, ACCOUNT),
        (RELAY16, NONCE, 0, b"a" * 17),
        (bytearray(RELAY16), NONCE, 0, ACCOUNT),
    ],
)
def test_challenge_rejects_bad_inputs(args: tuple[object, ...]) -> None:
    with pytest.raises(LocalProtocolError):
        challenge_payload(*args)  # type: ignore[arg-type]


def test_username_binding_layout() -> None:
    assert username_binding_payload("alice", ACCOUNT) == b"\x01\x05alice" + ACCOUNT
    with pytest.raises(InvalidUsername):
        username_binding_payload("Alice", ACCOUNT)  # not normalized
    with pytest.raises(LocalProtocolError):
        username_binding_payload("alice", b"short")


def test_dedup_input_layout() -> None:
    assert dedup_input(b"m" * 16, b"c" * 16) == b"\x01" + b"m" * 16 + b"c" * 16
    with pytest.raises(LocalProtocolError):
        dedup_input(b"m" * 15, b"c" * 16)


@pytest.mark.parametrize(
    ("raw", "normalized"),
    [
        ("alice", "alice"),
        ("  @Alice_01 ", "alice_01"),
        ("BOB", "bob"),
        ("a" * 32, "a" * 32),
        ("abc", "abc"),
    ],
)
def test_normalize_username(raw: str, normalized: str) -> None:
    assert normalize_username(raw) == normalized


@pytest.mark.parametrize(
    "raw",
    [
        "ab",
        "a" * 33,
        "1alice",
        "_alice",
        "al ice",
        "al-ice",
        "alicé",
        "\u0430lice",  # Cyrillic a
        "",
        "@@alice",
        "alice\n!",
        "\uff21\uff2c\uff29\uff23\uff25",  # fullwidth ALICE
    ],
)
def test_invalid_usernames(raw: str) -> None:
    with pytest.raises(InvalidUsername):
        normalize_username(raw)
