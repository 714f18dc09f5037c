import pytest
from cryptography.hazmat.primitives.ciphers.aead import AESGCM

from pigeon_crypto.errors import (
    DecodeError,
    DecryptionError,
    InvalidKey,
    UnknownVersion,
    VersionTooOld,
)
from pigeon_crypto.files import (
    CHUNK_SIZE,
    TAG_SIZE,
    ChunkAuthenticationError,
    ChunkCipher,
    ChunkLengthError,
    ExtraChunk,
    FileDecryptor,
    FileEncryptor,
    FileIntegrityError,
    FileLayout,
    FileManifest,
    FilePaddingError,
    InvalidManifest,
    TruncatedFile,
    chunk_ad,
    decrypt_chunk,
    encrypt_chunk,
    encrypt_stream,
    max_true_size,
)
from pigeon_crypto.padding import MAX_FILE_SIZE, FileTooLarge, padded_file_size
from pigeon_crypto.rng import SeededRng

CS = 64  # small chunks keep the tests fast; the format is the same


def make_file(
    size: int, seed: bytes = b"file", chunk_size: int = CS
) -> tuple[bytes, list[bytes], FileManifest]:
    data = bytes((i * 7 + 3) % 251 for i in range(size))
    enc = FileEncryptor.create(SeededRng(seed), chunk_size=chunk_size)
    chunks = list(encrypt_stream([data[: size // 3], data[size // 3 :]], enc))
    return data, chunks, enc.manifest(name="photo.jpg", media_type="image/jpeg")


def decrypt_all(manifest: FileManifest, chunks: list[bytes], start: int = 0) -> bytes:
    dec = FileDecryptor.from_manifest(manifest, start_index=start)
    out = b"".join(dec.update(c) for c in chunks)
    dec.finalize()
    return out


@pytest.mark.parametrize("size", [0, 1, 63, 64, 65, 540, 541, 542, 1000, 5000])
def test_round_trip_and_padded_size(size: int) -> None:
    data, chunks, m = make_file(size)
    assert decrypt_all(m, chunks) == data
    assert m.true_size == size
    assert m.padded_size == padded_file_size(size)
    assert m.chunk_count == len(chunks) == -(-m.padded_size // CS)
    assert sum(len(c) for c in chunks) == m.layout.ciphertext_size
    assert sum(len(c) - TAG_SIZE for c in chunks) == m.padded_size
    assert [len(c) for c in chunks] == [
        m.layout.ciphertext_length(i) for i in range(m.chunk_count)
    ]


def test_piece_boundaries_do_not_change_ciphertext() -> None:
    data, chunks, _ = make_file(3000)
    for step in [1, 7, 63, 64, 65, 1000, 4000]:
        enc = FileEncryptor.create(SeededRng(b"file"), chunk_size=CS)
        out: list[bytes] = []
        for off in range(0, len(data), step):
            out.extend(enc.update(data[off : off + step]))
        out.extend(enc.finalize())
        assert out == chunks


def test_default_chunk_size_is_64k() -> None:
    assert CHUNK_SIZE == 65536
    data, chunks, m = make_file(200_000, chunk_size=CHUNK_SIZE)
    assert m.chunk_count == 4 and len(chunks[0]) == CHUNK_SIZE + TAG_SIZE
    assert decrypt_all(m, chunks) == data


@pytest.mark.parametrize("start", [0, 1, 5, 17])
def test_decryption_can_start_at_any_chunk(start: int) -> None:
    data, chunks, m = make_file(1100)
    assert m.chunk_count == 18
    assert decrypt_all(m, chunks[start:], start) == data[start * CS :]
    # and one chunk on its own
    plain = decrypt_chunk(m.key, m.file_id, start, m.chunk_count, chunks[start])
    assert plain[: m.layout.data_length(start)] == data[start * CS : (start + 1) * CS]


def test_reordered_chunks_are_rejected() -> None:
    _, chunks, m = make_file(1000)
    swapped = [chunks[1], chunks[0], *chunks[2:]]
    with pytest.raises(ChunkAuthenticationError) as info:
        decrypt_all(m, swapped)
    assert info.value.index == 0


def test_dropped_chunk_is_rejected() -> None:
    _, chunks, m = make_file(1000)
    with pytest.raises(ChunkAuthenticationError) as info:
        decrypt_all(m, chunks[:3] + chunks[4:])
    assert info.value.index == 3


def test_truncation_is_rejected() -> None:
    _, chunks, m = make_file(1000)
    with pytest.raises(TruncatedFile) as info:
        decrypt_all(m, chunks[:-1])
    assert info.value.index == m.chunk_count - 1
    assert info.value.chunk_count == m.chunk_count
    # the final flag: a shorter manifest cannot make a middle chunk final
    with pytest.raises(ChunkAuthenticationError):
        decrypt_chunk(m.key, m.file_id, 5, 6, chunks[5])


def test_truncated_chunk_bytes_are_rejected() -> None:
    _, chunks, m = make_file(1000)
    with pytest.raises(ChunkLengthError) as info:
        decrypt_all(m, [*chunks[:-1], chunks[-1][:-1]])
    assert (info.value.got, info.value.expected) == (len(chunks[-1]) - 1, len(chunks[-1]))
    with pytest.raises(ChunkLengthError):
        decrypt_all(m, [chunks[0][:-1]])


def test_extension_is_rejected() -> None:
    _, chunks, m = make_file(1000)
    with pytest.raises(ExtraChunk) as info:
        decrypt_all(m, [*chunks, chunks[-1]])
    assert info.value.index == m.chunk_count
    with pytest.raises(ExtraChunk):
        decrypt_chunk(m.key, m.file_id, m.chunk_count, m.chunk_count, chunks[-1])
    with pytest.raises(ExtraChunk):
        FileDecryptor.from_manifest(m, start_index=m.chunk_count)


def test_chunks_cannot_move_between_files() -> None:
    _, chunks_a, a = make_file(1000, seed=b"a")
    _, chunks_b, b = make_file(1000, seed=b"b")
    with pytest.raises(ChunkAuthenticationError):
        decrypt_all(a, [chunks_a[0], chunks_b[1], *chunks_a[2:]])
    # even under the same key, the file id in the AD separates files
    forged = encrypt_chunk(a.key, b.file_id, 1, a.chunk_count, b"\x00" * CS)
    with pytest.raises(ChunkAuthenticationError):
        decrypt_chunk(a.key, a.file_id, 1, a.chunk_count, forged)


def test_tampered_chunk_is_rejected() -> None:
    _, chunks, m = make_file(300)
    bad = bytearray(chunks[2])
    bad[5] ^= 1
    with pytest.raises(ChunkAuthenticationError):
        decrypt_all(m, [*chunks[:2], bytes(bad), *chunks[3:]])


def test_non_zero_padding_is_rejected() -> None:
    # A sender that puts data after the true end: authentic but inconsistent.
    _, chunks, m = make_file(100)
    last = m.chunk_count - 1
    plain = bytearray(decrypt_chunk(m.key, m.file_id, last, m.chunk_count, chunks[last]))
    plain[-1] = 1
    chunks[last] = encrypt_chunk(m.key, m.file_id, last, m.chunk_count, bytes(plain))
    with pytest.raises(FilePaddingError) as info:
        decrypt_all(m, chunks)
    assert info.value.index == last


def test_error_family() -> None:
    for cls in (ChunkAuthenticationError, ChunkLengthError, TruncatedFile, ExtraChunk,
                FilePaddingError):
        assert issubclass(cls, FileIntegrityError)
        assert issubclass(cls, DecryptionError)
    assert issubclass(InvalidManifest, DecodeError)


def test_chunk_ad_and_nonce_layout() -> None:
    file_id = bytes(range(16))
    assert chunk_ad(file_id, 2, True) == b"\x01" + file_id + (2).to_bytes(8, "big") + b"\x01"
    assert chunk_ad(file_id, 0, False)[-9:] == bytes(9)
    key = bytes(32)
    ct = encrypt_chunk(key, file_id, 3, 4, b"abc")
    assert ct == AESGCM(key).encrypt((3).to_bytes(12, "big"), b"abc", chunk_ad(file_id, 3, True))
    assert decrypt_chunk(key, file_id, 3, 4, ct) == b"abc"


def test_bad_key_sizes() -> None:
    with pytest.raises(InvalidKey):
        encrypt_chunk(bytes(31), bytes(16), 0, 1, b"")
    with pytest.raises(InvalidKey):
        decrypt_chunk(bytes(32), bytes(15), 0, 1, b"")
    with pytest.raises(InvalidKey):
        FileEncryptor(key=bytes(32), file_id=b"")
    with pytest.raises(InvalidManifest):
        FileEncryptor(key=bytes(32), file_id=bytes(16), chunk_size=8)


def test_encryptor_misuse_and_repr() -> None:
    enc = FileEncryptor(key=bytes(32), file_id=bytes(16), chunk_size=CS)
    assert enc.update(b"") == []
    assert len(enc.update(b"x" * 100)) == 1  # 64 bytes out, 36 held back
    with pytest.raises(RuntimeError):
        _ = enc.layout
    list(enc.finalize())
    with pytest.raises(RuntimeError):
        enc.update(b"more")
    with pytest.raises(RuntimeError):
        enc.finalize()
    assert enc.bytes_in == 100 and enc.layout.true_size == 100
    assert repr(enc) == "FileEncryptor(file_id=" + "00" * 16 + ", bytes_in=100)"


def test_layout_helpers() -> None:
    layout = FileLayout(100, 64)
    assert (layout.padded_size, layout.chunk_count) == (541, 9)
    assert [layout.data_length(i) for i in range(3)] == [64, 36, 0]
    assert layout.plaintext_length(8) == 541 - 8 * 64
    with pytest.raises(ExtraChunk):
        layout.plaintext_length(9)
    with pytest.raises(InvalidManifest):
        FileLayout(100, 8)


def test_manifest_round_trip_and_repr() -> None:
    _, _, m = make_file(1000)
    full = m.with_blob_id(b"\xb1" * 16)
    assert FileManifest.from_bytes(full.to_bytes()) == full
    assert FileManifest.from_bytes(m.to_bytes()) == m
    assert full.blob_id == b"\xb1" * 16 and m.blob_id == b""
    # one blob id for the whole file: the encoding does not grow with the chunk count
    assert len(full.to_bytes()) == len(m.to_bytes()) + 16
    text = repr(full)
    assert m.key.hex() not in text and "photo" not in text and "b1b1" not in text
    assert text == (
        f"FileManifest(file_id={m.file_id.hex()}, true_size=1000, padded_size=1020, "
        f"chunk_size=64, chunk_count=16, uploaded=True)"
    )
    unicode = FileManifest(
        key=m.key, file_id=m.file_id, chunk_size=64, true_size=1000, padded_size=1020,
        chunk_count=16, name="café ☕.png", media_type="image/png",
    )
    assert FileManifest.from_bytes(unicode.to_bytes()).name == "café ☕.png"


def test_manifest_rejects() -> None:
    _, _, m = make_file(1000)
    data = m.to_bytes()
    # offsets: version 0, key 1, file_id 33, chunk_size 49, true_size 53, padded_size 61,
    # chunk_count 69, blob_id 73 (empty: 2 bytes), name 75
    assert data[0] == 2 and data[73:75] == b"\x00\x00"
    assert data[75:77] == b"\x00\x09" and data[61:69] == (1020).to_bytes(8, "big")
    with pytest.raises(DecodeError):
        FileManifest.from_bytes(data[:-1])
    with pytest.raises(DecodeError):
        FileManifest.from_bytes(data + b"\x00")
    with pytest.raises(UnknownVersion):
        FileManifest.from_bytes(b"\x03" + data[1:])
    with pytest.raises(VersionTooOld):  # version 1 listed one id per chunk
        FileManifest.from_bytes(b"\x01" + data[1:])
    # padded size not the bucket of the true size
    with pytest.raises(InvalidManifest, match="inconsistent"):
        FileManifest.from_bytes(data[:61] + (1021).to_bytes(8, "big") + data[69:])
    # chunk count inconsistent
    with pytest.raises(InvalidManifest, match="inconsistent"):
        FileManifest.from_bytes(data[:69] + (15).to_bytes(4, "big") + data[73:])
    # blob id longer than the limit
    with pytest.raises(DecodeError):
        FileManifest.from_bytes(data[:73] + b"\x01\x00" + b"a" * 256 + data[75:])
    # invalid UTF-8 name
    bad_name = data[:75] + b"\x00\x02\xff\xfe" + data[75 + 2 + len("photo.jpg") :]
    with pytest.raises(DecodeError, match="UTF-8"):
        FileManifest.from_bytes(bad_name)
    with pytest.raises(InvalidManifest):
        m.with_blob_id(b"x" * 256)
    with pytest.raises(InvalidManifest):
        FileManifest(key=m.key, file_id=m.file_id, chunk_size=64, true_size=2**41,
                     padded_size=0, chunk_count=0)
    with pytest.raises(InvalidManifest):
        FileManifest(key=m.key, file_id=m.file_id, chunk_size=64, true_size=1000,
                     padded_size=1020, chunk_count=16, name="x" * 1025)


def test_encryptor_refuses_files_beyond_the_maximum() -> None:
    enc = FileEncryptor(key=bytes(32), file_id=bytes(16), chunk_size=CS)
    enc.update(b"x" * 10)
    enc._size = MAX_FILE_SIZE - 5  # pretend a terabyte went through
    with pytest.raises(FileTooLarge) as info:
        enc.update(b"y" * 6)
    assert info.value.size == MAX_FILE_SIZE + 1


def test_reused_mutable_buffer_does_not_leak_into_held_chunk() -> None:
    data, chunks, _ = make_file(1000)
    for step in (10, 64, 100):
        enc = FileEncryptor.create(SeededRng(b"file"), chunk_size=CS)
        buf = bytearray(step)
        out: list[bytes] = []
        for off in range(0, len(data), step):
            piece = data[off : off + step]
            buf[: len(piece)] = piece
            out.extend(enc.update(memoryview(buf)[: len(piece)]))
            buf[:] = b"\xee" * step  # the caller reuses its read buffer
        out.extend(enc.finalize())
        assert out == chunks
    # immutable input (bytes, views of bytes) is held by reference: same bytes out
    enc = FileEncryptor.create(SeededRng(b"file"), chunk_size=CS)
    view = memoryview(data)
    out = [c for off in range(0, 1000, 64) for c in enc.update(view[off : off + 64])]
    assert [*out, *enc.finalize()] == chunks


@pytest.mark.parametrize("size", [0, 1, 100, 541, 1000, 64 * 20])
def test_chunk_cipher_matches_the_streaming_format_in_any_order(size: int) -> None:
    data, chunks, m = make_file(size)
    cipher = ChunkCipher.from_manifest(m)
    layout = m.layout
    order = list(range(layout.chunk_count))[::-1]  # any order: last chunk first
    sealed = {}
    for i in order:
        start = i * CS
        sealed[i] = cipher.seal(i, data[start : start + layout.data_length(i)])
    assert [sealed[i] for i in range(layout.chunk_count)] == chunks
    out = {i: cipher.open(i, chunks[i]) for i in order}
    assert b"".join(out[i] for i in range(layout.chunk_count)) == data
    assert repr(cipher) == f"ChunkCipher(chunks={layout.chunk_count})"


def test_chunk_cipher_rejects() -> None:
    data, chunks, m = make_file(1000)
    cipher = ChunkCipher.from_manifest(m)
    last = m.chunk_count - 1
    with pytest.raises(ChunkAuthenticationError):
        cipher.open(1, chunks[2])  # moved
    with pytest.raises(ChunkAuthenticationError):
        cipher.open(0, bytes([chunks[0][0] ^ 1]) + chunks[0][1:])
    with pytest.raises(ChunkLengthError):
        cipher.open(last, chunks[last] + b"\x00")
    with pytest.raises(ExtraChunk):
        cipher.open(m.chunk_count, chunks[last])
    with pytest.raises(ExtraChunk):
        cipher.seal(-1, b"")
    with pytest.raises(ValueError, match="needs 64 file bytes"):
        cipher.seal(0, data[:10])
    # Authentic chunk with non-zero padding (a sender lying about the true size).
    liar = FileManifest(key=m.key, file_id=m.file_id, chunk_size=CS, true_size=999,
                        padded_size=1020, chunk_count=16)
    with pytest.raises(FilePaddingError):
        ChunkCipher.from_manifest(liar).open(15, chunks[15])


def test_max_true_size() -> None:
    limit = 10_000
    n = max_true_size(limit, CS)
    assert FileLayout(n, CS).ciphertext_size <= limit < FileLayout(n + 1, CS).ciphertext_size
    m = max_true_size(10**9, 1024, max_chunks=100)
    assert FileLayout(m, 1024).chunk_count <= 100 < FileLayout(m + 1, 1024).chunk_count
    assert max_true_size(100, CS) == -1
    assert max_true_size(2**60, 2**20) == MAX_FILE_SIZE
    assert 0 < max_true_size(2**60, CS) < MAX_FILE_SIZE  # the u32 chunk count binds
    # the protocol's blob limit (2^32 bytes, 65,536 chunks) with 1 MiB chunks
    big = max_true_size(2**32, 2**20, max_chunks=65536)
    assert 3.8 * 2**30 < big < 2**32
