"""Property tests for file chunks: only the exact chunk sequence decrypts."""

from __future__ import annotations

import contextlib

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from pigeon_crypto.errors import PigeonError
from pigeon_crypto.files import (
    FileDecryptor,
    FileEncryptor,
    FileIntegrityError,
    FileLayout,
    FileManifest,
    encrypt_stream,
)
from pigeon_crypto.rng import SeededRng

SETTINGS = settings(max_examples=150, deadline=None)


def encrypt(data: bytes, chunk_size: int, seed: bytes = b"p") -> tuple[list[bytes], FileManifest]:
    enc = FileEncryptor.create(SeededRng(seed), chunk_size=chunk_size)
    chunks = list(encrypt_stream([data], enc))
    return chunks, enc.manifest()


def run(manifest: FileManifest, chunks: list[bytes], start: int = 0) -> bytes:
    dec = FileDecryptor.from_manifest(manifest, start_index=start)
    out = b"".join(dec.update(c) for c in chunks)
    dec.finalize()
    return out


@st.composite
def file_and_order(draw: st.DrawFn) -> tuple[bytes, int, list[int], int]:
    size = draw(st.integers(0, 1500))
    chunk_size = draw(st.sampled_from([16, 32, 100, 256]))
    count = FileLayout(size, chunk_size).chunk_count
    data = draw(st.binary(min_size=size, max_size=size))
    start = draw(st.integers(0, 3))
    order = draw(
        st.one_of(
            st.permutations(list(range(count))),
            st.lists(st.integers(0, count + 1), max_size=count + 3),
            st.just(list(range(count))),
        )
    )
    return data, chunk_size, order, start


@SETTINGS
@given(file_and_order())
def test_only_the_exact_sequence_decrypts(case: tuple[bytes, int, list[int], int]) -> None:
    data, chunk_size, order, start = case
    chunks, manifest = encrypt(data, chunk_size)
    n = len(chunks)
    start = min(start, n - 1)
    order = [i for i in order if i < n + 1]
    pool = [*chunks, chunks[-1]]  # index n: a duplicate of the final chunk (extension)
    delivered = [pool[i] for i in order if i >= start]
    if delivered == chunks[start:]:  # compare bytes: pool[n] equals the final chunk
        assert run(manifest, delivered, start) == data[start * chunk_size :]
    else:
        with pytest.raises(FileIntegrityError):
            run(manifest, delivered, start)


@SETTINGS
@given(
    st.binary(max_size=3000),
    st.lists(st.integers(1, 700), max_size=12),
    st.sampled_from([16, 64, 1000]),
)
def test_piece_boundaries_never_matter(data: bytes, cuts: list[int], chunk_size: int) -> None:
    reference, manifest = encrypt(data, chunk_size)
    pieces, pos = [], 0
    for cut in cuts:
        pieces.append(data[pos : pos + cut])
        pos += cut
    pieces.append(data[pos:])
    enc = FileEncryptor.create(SeededRng(b"p"), chunk_size=chunk_size)
    out: list[bytes] = []
    for piece in pieces:
        out.extend(enc.update(piece))
    out.extend(enc.finalize())
    assert out == reference
    assert run(manifest, out) == data


@SETTINGS
@given(st.binary(max_size=600), st.data())
def test_any_bit_flip_is_rejected(data: bytes, draw: st.DataObject) -> None:
    chunks, manifest = encrypt(data, 64)
    i = draw.draw(st.integers(0, len(chunks) - 1))
    pos = draw.draw(st.integers(0, len(chunks[i]) - 1))
    bit = draw.draw(st.integers(0, 7))
    bad = bytearray(chunks[i])
    bad[pos] ^= 1 << bit
    chunks[i] = bytes(bad)
    with pytest.raises(FileIntegrityError):
        run(manifest, chunks)


@SETTINGS
@given(st.binary(max_size=200), st.lists(st.tuples(st.integers(0, 200), st.integers(0, 255))))
def test_manifest_decoder_raises_only_pigeon_errors(
    blob: bytes, edits: list[tuple[int, int]]
) -> None:
    valid = bytearray(
        FileManifest(key=bytes(32), file_id=bytes(16), chunk_size=64, true_size=100,
                     padded_size=541, chunk_count=9, name="a", media_type="b").to_bytes()
    )
    for pos, value in edits:
        if pos < len(valid):
            valid[pos] = value
    for candidate in (blob, bytes(valid)):
        with contextlib.suppress(PigeonError):
            FileManifest.from_bytes(candidate)


@SETTINGS
@given(st.binary(max_size=400), st.text(max_size=40), st.text(max_size=20))
def test_manifest_round_trip(data: bytes, name: str, media_type: str) -> None:
    enc = FileEncryptor.create(SeededRng(b"m"), chunk_size=32)
    list(encrypt_stream([data], enc))
    manifest = enc.manifest(name=name, media_type=media_type)
    for m in (manifest, manifest.with_blob_id(b"\x07" * 16)):
        assert FileManifest.from_bytes(m.to_bytes()) == m
