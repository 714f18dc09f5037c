import math

import pytest

from pigeon_crypto.errors import DecodeError
from pigeon_crypto.padding import (
    FILE_MIN_PADDED_SIZE,
    MAX_FILE_SIZE,
    MESSAGE_LINEAR_STEP,
    MESSAGE_MIN_BUCKET,
    FileTooLarge,
    InvalidPadding,
    message_bucket,
    pad_message,
    padded_file_size,
    unpad_message,
)


@pytest.mark.parametrize(
    ("length", "bucket"),
    [
        (0, 256), (1, 256), (255, 256), (256, 512), (511, 512), (512, 1024),
        (65535, 65536), (65536, 131072), (131071, 131072), (131072, 196608),
        (10 * 65536, 11 * 65536),
    ],
)
def test_message_buckets(length: int, bucket: int) -> None:
    assert message_bucket(length) == bucket
    padded = pad_message(b"\x00" * length)
    assert len(padded) == bucket
    assert unpad_message(padded) == b"\x00" * length


def test_bucket_constants() -> None:
    assert MESSAGE_MIN_BUCKET == 256
    assert MESSAGE_LINEAR_STEP == 65536
    with pytest.raises(ValueError):
        message_bucket(-1)


@pytest.mark.parametrize("body", [b"", b"\x80", b"\x80\x00", b"hi\x80", b"\x00\x00", b"x" * 255])
def test_round_trip_tricky_bodies(body: bytes) -> None:
    padded = pad_message(body)
    assert padded[len(body)] == 0x80
    assert set(padded[len(body) + 1 :]) <= {0}
    assert unpad_message(padded) == body


@pytest.mark.parametrize("bad", [b"", b"\x00", b"\x00" * 256, b"abc", b"ab\x81\x00", b"\x7f"])
def test_unpad_rejects(bad: bytes) -> None:
    with pytest.raises(InvalidPadding) as info:
        unpad_message(bad)
    assert isinstance(info.value, DecodeError)


def test_unpad_accepts_any_length_with_valid_structure() -> None:
    # The receiver checks structure only, so the bucket table can evolve.
    assert unpad_message(b"abc\x80\x00\x00") == b"abc"
    assert unpad_message(b"\x80") == b""


@pytest.mark.parametrize(
    ("size", "padded"),
    [
        (0, 541), (1, 541), (541, 541), (542, 568), (568, 568), (569, 596),
        (1000, 1020), (65536, 67789), (10**6, 1041743), (2**30, 1116427955),
    ],
)
def test_file_buckets(size: int, padded: int) -> None:
    assert padded_file_size(size) == padded


def test_file_buckets_are_powers_of_1_05_and_tight() -> None:
    buckets = {21**k // 20**k for k in range(0, 700)}
    for size in [541, 542, 5000, 77777, 123456789, 2**35 + 3]:
        p = padded_file_size(size)
        assert p in buckets
        assert size <= p < size * 1.05 + 1
        assert padded_file_size(p) == p
        if p > FILE_MIN_PADDED_SIZE:
            assert padded_file_size(p + 1) > p


def test_file_buckets_match_signals_float_formula() -> None:
    # Signal: max(541, floor(1.05 ** ceil(log(n) / log(1.05)))); exact integers agree.
    for n in [*range(1, 20000, 37), *(2**k + d for k in range(10, 40) for d in (-1, 0, 1))]:
        signal = max(541, math.floor(1.05 ** math.ceil(math.log(n) / math.log(1.05))))
        assert padded_file_size(n) == signal


def test_file_size_limits() -> None:
    assert padded_file_size(MAX_FILE_SIZE) >= MAX_FILE_SIZE
    with pytest.raises(FileTooLarge) as info:
        padded_file_size(MAX_FILE_SIZE + 1)
    assert info.value.size == MAX_FILE_SIZE + 1
    with pytest.raises(FileTooLarge):
        padded_file_size(-1)
