"""File chunks: a random key per file, fixed-size chunks under AES-256-GCM.

Theory of operation (spec: docs/protocol.md §8.1)
    A file of ``true_size`` bytes is zero-padded to ``padded_file_size(true_size)``
    (powers of 1.05, :mod:`pigeon_crypto.padding`) and cut into ``chunk_count``
    chunks of ``chunk_size`` bytes (the last one shorter). Chunk ``i`` is::

        AES-256-GCM(key, nonce = u96be(i), plaintext_i,
                    AD = 0x01 || file_id || u64be(i) || final)   # final: 0x01 on the last chunk

    The key is drawn for this file only, so counter nonces never repeat under
    it. Through the AD every chunk authenticates its position, its file and
    whether it ends the file: reordering or swapping chunks between files is
    :class:`ChunkAuthenticationError`; a missing tail is :class:`TruncatedFile`;
    anything after the final chunk is :class:`ExtraChunk`; a chunk of the wrong
    length is :class:`ChunkLengthError`.

    The true size travels in the :class:`FileManifest` (inside an E2E message),
    so a decryptor drops padding (checked to be zero, :class:`FilePaddingError`)
    from any chunk and can start at any index (resumed downloads). Memory is
    O(chunk): the encryptor holds back one chunk (only later data or the end
    proves it non-final) and makes padding chunks lazily.

    The chunks of one file are stored as **one relay blob** (chunk ``i`` at
    ``{url_path}/{i}``, protocol §9.4), so the manifest names a single blob id.
    :class:`ChunkCipher` encrypts or decrypts any chunk on its own (parallel and
    resumed transfers); :class:`FileEncryptor`/:class:`FileDecryptor` stream in order.

Why 64 KiB chunks by default: per-chunk costs (a Python call, a 16-byte tag)
shrink to a few percent of AES-GCM's own cost, while buffers stay small. A
transport with a per-chunk round trip (the SDK's HTTP uploads) picks larger
chunks; the manifest carries the size.

Size limits: :data:`~pigeon_crypto.padding.MAX_FILE_SIZE` (2^40) bounds what this
format can describe; a relay blob is further bounded by ``protocol.limits``
(2^32 ciphertext bytes in 65,536 chunks), which :func:`max_true_size` turns into
a file size for a given chunk size.
"""

from __future__ import annotations

import struct
from collections.abc import Iterable, Iterator
from dataclasses import dataclass, field, replace

from cryptography.exceptions import InvalidTag
from cryptography.hazmat.primitives.ciphers.aead import AESGCM

from ._codec import Reader, check_version, u32, u64, var16
from .errors import DecodeError, DecryptionError, InvalidKey
from .padding import MAX_FILE_SIZE, FileTooLarge, padded_file_size
from .rng import Rng

__all__ = [
    "CHUNK_FORMAT_VERSION", "CHUNK_SIZE", "FILE_ID_SIZE", "FILE_KEY_SIZE", "MANIFEST_VERSION",
    "MAX_BLOB_ID_SIZE", "MAX_CHUNK_COUNT", "MAX_CHUNK_SIZE", "MIN_CHUNK_SIZE", "TAG_SIZE",
    "ChunkAuthenticationError", "ChunkCipher", "ChunkLengthError", "ExtraChunk",
    "FileDecryptor", "FileEncryptor", "FileIntegrityError", "FileLayout", "FileManifest",
    "FilePaddingError", "InvalidManifest", "TruncatedFile", "chunk_ad", "decrypt_chunk",
    "encrypt_chunk", "encrypt_stream", "max_true_size",
]

#: Default plaintext bytes per chunk (see the module docstring for why).
CHUNK_SIZE = 64 * 1024
#: Chunk sizes accepted in a manifest (small ones exist for tests).
MIN_CHUNK_SIZE = 16
MAX_CHUNK_SIZE = 16 * 1024 * 1024
#: The manifest stores the count as u32.
MAX_CHUNK_COUNT = 0xFFFFFFFF
CHUNK_FORMAT_VERSION = 1
#: Version 2: one blob id per file (version 1 listed one id per chunk).
MANIFEST_VERSION = 2
FILE_KEY_SIZE = 32
FILE_ID_SIZE = 16
TAG_SIZE = 16
#: Manifest field limits (bytes).
MAX_NAME_SIZE = 1024
MAX_MEDIA_TYPE_SIZE = 255
#: Relay blob ids are opaque to the format (the Pigeon relay's are 16 bytes).
MAX_BLOB_ID_SIZE = 255

_VERSION_BYTE = bytes([CHUNK_FORMAT_VERSION])
_INDEX_FLAG = struct.Struct(">QB")


class FileIntegrityError(DecryptionError):
    """Base of every chunk-level rejection. ``index`` is the chunk position concerned."""

    def __init__(self, message: str, index: int) -> None:
        super().__init__(message)
        self.index = index


class ChunkAuthenticationError(FileIntegrityError):
    """Not the authentic chunk at this index of this file (tampered, moved, foreign)."""

    def __init__(self, index: int) -> None:
        super().__init__(f"chunk {index} failed authentication", index)


class ChunkLengthError(FileIntegrityError):
    """The chunk ciphertext has the wrong length for its index."""

    def __init__(self, index: int, got: int, expected: int) -> None:
        super().__init__(f"chunk {index} has {got} bytes, expected {expected}", index)
        self.got = got
        self.expected = expected


class TruncatedFile(FileIntegrityError):
    """The stream ended before the final chunk. ``index`` is the first missing chunk."""

    def __init__(self, index: int, chunk_count: int) -> None:
        super().__init__(f"file truncated: chunk {index} of {chunk_count} missing", index)
        self.chunk_count = chunk_count


class ExtraChunk(FileIntegrityError):
    """A chunk at or beyond ``chunk_count`` (after the final chunk)."""

    def __init__(self, index: int, chunk_count: int) -> None:
        super().__init__(f"chunk {index} beyond the final chunk ({chunk_count} chunks)", index)
        self.chunk_count = chunk_count


class FilePaddingError(FileIntegrityError):
    """Bytes after the true end of the file are not zero."""

    def __init__(self, index: int) -> None:
        super().__init__(f"non-zero padding in chunk {index}", index)


class InvalidManifest(DecodeError):
    """A manifest whose fields are inconsistent or out of range."""

    def __init__(self, reason: str) -> None:
        super().__init__("FileManifest", reason)


def _check_key(key: bytes, file_id: bytes) -> None:
    if len(key) != FILE_KEY_SIZE:
        raise InvalidKey(f"file key must be {FILE_KEY_SIZE} bytes")
    if len(file_id) != FILE_ID_SIZE:
        raise InvalidKey(f"file id must be {FILE_ID_SIZE} bytes")


def chunk_ad(file_id: bytes, index: int, final: bool) -> bytes:
    """The AD of chunk *index*: ``0x01 || file_id (16) || u64be(index) || final (u8)``."""
    return _VERSION_BYTE + file_id + _INDEX_FLAG.pack(index, 1 if final else 0)


def _nonce_and_ad(key: bytes, file_id: bytes, index: int, total: int) -> tuple[bytes, bytes]:
    _check_key(key, file_id)
    if not 0 <= index < total:
        raise ExtraChunk(index, total)
    return index.to_bytes(12, "big"), chunk_ad(file_id, index, index == total - 1)


@dataclass(frozen=True, slots=True)
class FileLayout:
    """Sizes derived from a file's true size and chunk size.

    Attributes:
        true_size: bytes of file content.
        chunk_size: plaintext bytes per chunk (all but the last chunk).
        padded_size: ``padded_file_size(true_size)``.
        chunk_count: ``ceil(padded_size / chunk_size)`` (at least 1).
    """

    true_size: int
    chunk_size: int = CHUNK_SIZE
    padded_size: int = field(init=False)
    chunk_count: int = field(init=False)

    def __post_init__(self) -> None:
        if not MIN_CHUNK_SIZE <= self.chunk_size <= MAX_CHUNK_SIZE:
            raise InvalidManifest(f"chunk size {self.chunk_size} out of range")
        try:
            padded = padded_file_size(self.true_size)
        except FileTooLarge as exc:
            raise InvalidManifest("true_size out of range") from exc
        count = -(-padded // self.chunk_size)
        if count > MAX_CHUNK_COUNT:
            raise InvalidManifest(f"{count} chunks exceed {MAX_CHUNK_COUNT}")
        object.__setattr__(self, "padded_size", padded)
        object.__setattr__(self, "chunk_count", count)

    def plaintext_length(self, index: int) -> int:
        """Padded plaintext bytes in chunk *index* (``chunk_size`` except the last)."""
        if not 0 <= index < self.chunk_count:
            raise ExtraChunk(index, self.chunk_count)
        return min(self.chunk_size, self.padded_size - index * self.chunk_size)

    def ciphertext_length(self, index: int) -> int:
        """Ciphertext bytes of chunk *index* (plaintext length + 16-byte tag)."""
        return self.plaintext_length(index) + TAG_SIZE

    def data_length(self, index: int) -> int:
        """File-content bytes in chunk *index* (the rest is zero padding)."""
        start = index * self.chunk_size
        return max(0, min(self.plaintext_length(index), self.true_size - start))

    @property
    def ciphertext_size(self) -> int:
        """Total bytes the relay stores: ``padded_size + 16 * chunk_count``."""
        return self.padded_size + TAG_SIZE * self.chunk_count


def encrypt_chunk(
    key: bytes, file_id: bytes, index: int, total_chunks: int, plaintext: bytes
) -> bytes:
    """Encrypt one padded-plaintext chunk (ExtraChunk if ``index >= total_chunks``)."""
    nonce, ad = _nonce_and_ad(key, file_id, index, total_chunks)
    return AESGCM(key).encrypt(nonce, plaintext, ad)


def decrypt_chunk(
    key: bytes, file_id: bytes, index: int, total_chunks: int, ciphertext: bytes
) -> bytes:
    """Decrypt chunk *index* on its own (usable from any index).

    Returns the chunk's padded plaintext; use :meth:`FileLayout.data_length`
    (or :class:`FileDecryptor`) to drop padding.

    Raises:
        ExtraChunk: ``index >= total_chunks``.
        ChunkAuthenticationError: wrong key, file, index, final flag or tampered bytes.
        InvalidKey: wrong key or file id size.
    """
    nonce, ad = _nonce_and_ad(key, file_id, index, total_chunks)
    try:
        return AESGCM(key).decrypt(nonce, ciphertext, ad)
    except InvalidTag as exc:
        raise ChunkAuthenticationError(index) from exc


class FileEncryptor:
    """Streaming encryptor: feed plaintext pieces, collect chunk ciphertexts.

    The total size need not be known in advance. :meth:`update` returns the
    chunks that are complete and known not to be final; :meth:`finalize`
    yields the rest, padding included, the last one flagged final. Memory
    beyond the caller's piece is one chunk.

    Usage: ``enc.update(piece)`` for each piece (upload what it returns), then
    iterate ``enc.finalize()``, then ``enc.manifest(name=..., media_type=...)``.
    """

    __slots__ = (
        "_aead", "_chunk_size", "_file_id", "_finished", "_held", "_index", "_key", "_prefix",
        "_size", "_state",
    )

    def __init__(self, *, key: bytes, file_id: bytes, chunk_size: int = CHUNK_SIZE) -> None:
        _check_key(key, file_id)
        if not MIN_CHUNK_SIZE <= chunk_size <= MAX_CHUNK_SIZE:
            raise InvalidManifest(f"chunk size {chunk_size} out of range")
        self._key = bytes(key)
        self._file_id = bytes(file_id)
        self._chunk_size = chunk_size
        self._aead = AESGCM(self._key)
        self._prefix = _VERSION_BYTE + self._file_id
        self._held: bytes | bytearray | memoryview = b""
        self._index = 0
        self._size = 0
        self._state = "open"  # "open" -> "finalizing" -> "done"
        self._finished: FileLayout | None = None

    @classmethod
    def create(cls, rng: Rng, *, chunk_size: int = CHUNK_SIZE) -> FileEncryptor:
        """A new encryptor with a fresh random key and file id drawn from *rng*."""
        return cls(key=rng(FILE_KEY_SIZE), file_id=rng(FILE_ID_SIZE), chunk_size=chunk_size)

    @property
    def file_id(self) -> bytes:
        return self._file_id

    @property
    def chunk_size(self) -> int:
        return self._chunk_size

    @property
    def bytes_in(self) -> int:
        """File bytes accepted so far."""
        return self._size

    def __repr__(self) -> str:
        return f"FileEncryptor(file_id={self._file_id.hex()}, bytes_in={self._size})"

    def _seal(self, plaintext: bytes | bytearray | memoryview, final: bool) -> bytes:
        i = self._index
        self._index = i + 1
        ad = self._prefix + _INDEX_FLAG.pack(i, final)
        return self._aead.encrypt(i.to_bytes(12, "big"), plaintext, ad)

    def update(self, data: bytes | bytearray | memoryview) -> list[bytes]:
        """Accept more file bytes; return the chunk ciphertexts now complete.

        Raises:
            FileTooLarge: the total would exceed ``MAX_FILE_SIZE``.
            RuntimeError: called after :meth:`finalize`.
        """
        if self._state != "open":
            raise RuntimeError("FileEncryptor already finalized")
        mv = memoryview(data).cast("B")
        n = len(mv)
        if not n:
            return []
        if self._size + n > MAX_FILE_SIZE:
            raise FileTooLarge(self._size + n)
        self._size += n
        cs = self._chunk_size
        held = self._held
        out: list[bytes] = []
        pos = 0
        if len(held) == cs:  # more data arrived: the held chunk is not final
            out.append(self._seal(held, False))
        elif held:
            pos = min(cs - len(held), n)
            filled = held if isinstance(held, bytearray) else bytearray(held)
            filled += mv[:pos]
            if pos == n:  # everything held; a full chunk may still be the final one
                self._held = filled
                return out
            out.append(self._seal(filled, False))
        # Hold back the last (possibly full) chunk: only later data proves it non-final.
        while n - pos > cs:
            out.append(self._seal(mv[pos : pos + cs], False))
            pos += cs
        rest = mv[pos:]
        # Immutable input can be held by reference; anything else is copied, since the
        # caller may reuse its buffer (readinto) after this call.
        self._held = rest if isinstance(rest.obj, bytes) else bytearray(rest)
        return out

    def finalize(self) -> Iterator[bytes]:
        """Yield the remaining chunks: held-back data, then zero padding; the last is final.

        Iterate it to the end before calling :meth:`manifest`.
        """
        if self._state != "open":
            raise RuntimeError("FileEncryptor already finalized")
        layout = FileLayout(self._size, self._chunk_size)
        self._state = "finalizing"
        return self._tail(layout)

    def _tail(self, layout: FileLayout) -> Iterator[bytes]:
        cs, buf = self._chunk_size, bytearray(self._held)
        # held data (<= one chunk) + padding; padded_size >= 541 so at least one chunk
        remaining = len(buf) + layout.padded_size - self._size
        first = min(cs, remaining)
        buf.extend(bytes(first - len(buf)))
        remaining -= first
        yield self._seal(buf, remaining == 0)
        zeros = bytes(cs)
        while remaining:
            take = min(cs, remaining)
            remaining -= take
            yield self._seal(zeros if take == cs else zeros[:take], remaining == 0)
        self._held = b""
        assert self._index == layout.chunk_count
        self._finished = layout
        self._state = "done"

    @property
    def layout(self) -> FileLayout:
        """The file's layout, once :meth:`finalize` has been fully iterated."""
        if self._finished is None:
            raise RuntimeError("FileEncryptor not finalized")
        return self._finished

    def manifest(
        self, *, name: str = "", media_type: str = "application/octet-stream",
        blob_id: bytes = b"",
    ) -> FileManifest:
        """The manifest of the finished file (the blob id may be added later)."""
        layout = self.layout
        return FileManifest(
            key=self._key, file_id=self._file_id, chunk_size=layout.chunk_size,
            true_size=layout.true_size, padded_size=layout.padded_size,
            chunk_count=layout.chunk_count, blob_id=blob_id, name=name,
            media_type=media_type,
        )


def encrypt_stream(
    pieces: Iterable[bytes | bytearray | memoryview], encryptor: FileEncryptor
) -> Iterator[bytes]:
    """Yield every chunk ciphertext of *pieces*, finalizing *encryptor* at the end.

    Large pieces are fed one chunk at a time, so at most about one chunk of
    ciphertext is pending regardless of piece size.
    """
    step = encryptor.chunk_size
    for piece in pieces:
        mv = memoryview(piece).cast("B")
        for off in range(0, len(mv), step):
            yield from encryptor.update(mv[off : off + step])
    yield from encryptor.finalize()


class FileDecryptor:
    """Streaming decryptor: feed chunk ciphertexts in order from ``start_index``.

    :meth:`update` returns the file bytes of each chunk (padding removed);
    :meth:`finalize` checks that the final chunk was reached.
    """

    __slots__ = ("_aead", "_layout", "_next", "_prefix", "_tail_from")

    def __init__(
        self, *, key: bytes, file_id: bytes, layout: FileLayout, start_index: int = 0
    ) -> None:
        _check_key(key, file_id)
        if not 0 <= start_index < layout.chunk_count:
            raise ExtraChunk(start_index, layout.chunk_count)
        self._aead = AESGCM(bytes(key))
        self._prefix = _VERSION_BYTE + bytes(file_id)
        self._layout = layout
        self._next = start_index
        # Chunks before this index are full-size and hold only file bytes: fast path.
        self._tail_from = min(layout.true_size // layout.chunk_size, layout.chunk_count - 1)

    @classmethod
    def from_manifest(cls, manifest: FileManifest, *, start_index: int = 0) -> FileDecryptor:
        return cls(
            key=manifest.key, file_id=manifest.file_id, layout=manifest.layout,
            start_index=start_index,
        )

    @property
    def next_index(self) -> int:
        """The index the next :meth:`update` expects."""
        return self._next

    @property
    def done(self) -> bool:
        return self._next >= self._layout.chunk_count

    def __repr__(self) -> str:
        return f"FileDecryptor(next_index={self._next}, chunks={self._layout.chunk_count})"

    def update(self, ciphertext: bytes | bytearray | memoryview) -> bytes:
        """Decrypt the next chunk; return its file bytes (possibly empty).

        Raises:
            ExtraChunk: the final chunk was already processed.
            ChunkLengthError: wrong ciphertext length for this index.
            ChunkAuthenticationError: tampered, reordered or foreign chunk.
            FilePaddingError: padding bytes are not zero.
        """
        i = self._next
        layout = self._layout
        if i < self._tail_from:
            if len(ciphertext) != layout.chunk_size + TAG_SIZE:
                raise ChunkLengthError(i, len(ciphertext), layout.chunk_size + TAG_SIZE)
            ad = self._prefix + _INDEX_FLAG.pack(i, 0)
            try:
                out = self._aead.decrypt(i.to_bytes(12, "big"), ciphertext, ad)
            except InvalidTag as exc:
                raise ChunkAuthenticationError(i) from exc
            self._next = i + 1
            return out
        count = layout.chunk_count
        if i >= count:
            raise ExtraChunk(i, count)
        expected = layout.ciphertext_length(i)
        if len(ciphertext) != expected:
            raise ChunkLengthError(i, len(ciphertext), expected)
        ad = self._prefix + _INDEX_FLAG.pack(i, i == count - 1)
        try:
            plain = self._aead.decrypt(i.to_bytes(12, "big"), ciphertext, ad)
        except InvalidTag as exc:
            raise ChunkAuthenticationError(i) from exc
        keep = layout.data_length(i)
        if plain.count(0, keep) != len(plain) - keep:
            raise FilePaddingError(i)
        self._next = i + 1
        return plain[:keep] if keep < len(plain) else plain

    def finalize(self) -> None:
        """Raise :class:`TruncatedFile` unless the final chunk was processed."""
        if self._next < self._layout.chunk_count:
            raise TruncatedFile(self._next, self._layout.chunk_count)


@dataclass(frozen=True, slots=True, kw_only=True)
class FileManifest:
    """What a recipient needs to fetch and decrypt a file; sent inside an E2E message.

    Serialized layout (version 2, all integers big-endian)::

        | field        | size          | notes                                     |
        |--------------|---------------|-------------------------------------------|
        | version      | 1             | 0x02                                      |
        | key          | 32            | AES-256-GCM file key                      |
        | file_id      | 16            | random, bound in every chunk's AD         |
        | chunk_size   | u32           | MIN_CHUNK_SIZE..MAX_CHUNK_SIZE            |
        | true_size    | u64           | <= MAX_FILE_SIZE                          |
        | padded_size  | u64           | == padded_file_size(true_size)            |
        | chunk_count  | u32           | == ceil(padded_size / chunk_size)         |
        | blob_id      | var16         | empty (not uploaded yet) or 1..255 bytes  |
        | name         | var16         | UTF-8, <= 1024 bytes                      |
        | media_type   | var16         | UTF-8, <= 255 bytes                       |

    The redundant size fields are checked against each other on decode
    (:class:`InvalidManifest`). The repr shows only the file id and sizes.
    """

    key: bytes = field(repr=False)
    file_id: bytes
    chunk_size: int
    true_size: int
    padded_size: int
    chunk_count: int
    blob_id: bytes = field(default=b"", repr=False)
    name: str = field(default="", repr=False)
    media_type: str = field(default="application/octet-stream", repr=False)

    def __post_init__(self) -> None:
        if len(self.key) != FILE_KEY_SIZE or len(self.file_id) != FILE_ID_SIZE:
            raise InvalidManifest("wrong key or file id size")
        layout = self.layout
        if (self.padded_size, self.chunk_count) != (layout.padded_size, layout.chunk_count):
            raise InvalidManifest("sizes inconsistent with true_size and chunk_size")
        if len(self.blob_id) > MAX_BLOB_ID_SIZE:
            raise InvalidManifest("blob id too long")
        if len(self.name.encode("utf-8")) > MAX_NAME_SIZE:
            raise InvalidManifest("name too long")
        if len(self.media_type.encode("utf-8")) > MAX_MEDIA_TYPE_SIZE:
            raise InvalidManifest("media type too long")

    @property
    def layout(self) -> FileLayout:
        return FileLayout(self.true_size, self.chunk_size)

    def __repr__(self) -> str:
        return (
            f"FileManifest(file_id={self.file_id.hex()}, true_size={self.true_size}, "
            f"padded_size={self.padded_size}, chunk_size={self.chunk_size}, "
            f"chunk_count={self.chunk_count}, uploaded={bool(self.blob_id)})"
        )

    def with_blob_id(self, blob_id: bytes) -> FileManifest:
        """A copy naming the relay blob assigned at upload (chunk i at ``{url_path}/{i}``)."""
        return replace(self, blob_id=bytes(blob_id))

    def to_bytes(self) -> bytes:
        parts = [
            bytes([MANIFEST_VERSION]), self.key, self.file_id, u32(self.chunk_size),
            u64(self.true_size), u64(self.padded_size), u32(self.chunk_count),
            var16(self.blob_id),
        ]
        parts.append(var16(self.name.encode("utf-8")))
        parts.append(var16(self.media_type.encode("utf-8")))
        return b"".join(parts)

    @classmethod
    def from_bytes(cls, data: bytes) -> FileManifest:
        """Decode a manifest.

        Raises:
            DecodeError: truncated, trailing bytes or bad UTF-8.
            InvalidManifest: inconsistent or out-of-range fields.
            UnknownVersion / VersionTooOld: unsupported version byte.
        """
        r = Reader(data, "FileManifest")
        check_version("FileManifest", r.u8(), MANIFEST_VERSION)
        key = r.take(FILE_KEY_SIZE)
        file_id = r.take(FILE_ID_SIZE)
        chunk_size, true_size, padded_size = r.u32(), r.u64(), r.u64()
        chunk_count = r.u32()
        blob_id = r.var16(MAX_BLOB_ID_SIZE)
        try:
            name = r.var16(MAX_NAME_SIZE).decode("utf-8")
            media_type = r.var16(MAX_MEDIA_TYPE_SIZE).decode("utf-8")
        except UnicodeDecodeError as exc:
            raise DecodeError("FileManifest", "invalid UTF-8") from exc
        r.finish()
        return cls(
            key=key, file_id=file_id, chunk_size=chunk_size, true_size=true_size,
            padded_size=padded_size, chunk_count=chunk_count, blob_id=blob_id, name=name,
            media_type=media_type,
        )


class ChunkCipher:
    """Random-access encryption and decryption of one file's chunks.

    For transfers that move chunks in any order or in parallel (and resume):
    :meth:`seal` takes the *file bytes* of chunk ``i`` (``layout.data_length(i)``
    of them) and pads them; :meth:`open` checks the length, the tag (which binds
    the index, the file and the final flag) and the zero padding, and returns the
    file bytes. Same bytes and format as :class:`FileEncryptor`/:class:`FileDecryptor`.
    Missing or extra chunks are the caller's to detect (it knows which indexes it
    has). Thread-safe: it holds no mutable state.
    """

    __slots__ = ("_aead", "_prefix", "layout")

    def __init__(self, *, key: bytes, file_id: bytes, layout: FileLayout) -> None:
        _check_key(key, file_id)
        self._aead = AESGCM(bytes(key))
        self._prefix = _VERSION_BYTE + bytes(file_id)
        self.layout = layout

    @classmethod
    def from_manifest(cls, manifest: FileManifest) -> ChunkCipher:
        return cls(key=manifest.key, file_id=manifest.file_id, layout=manifest.layout)

    def __repr__(self) -> str:
        return f"ChunkCipher(chunks={self.layout.chunk_count})"

    def _nonce_ad(self, index: int) -> tuple[bytes, bytes]:
        count = self.layout.chunk_count
        if not 0 <= index < count:
            raise ExtraChunk(index, count)
        return index.to_bytes(12, "big"), self._prefix + _INDEX_FLAG.pack(index, index == count - 1)

    def seal(self, index: int, data: bytes | bytearray | memoryview) -> bytes:
        """The ciphertext of chunk *index* whose file bytes are *data*.

        Raises:
            ExtraChunk: *index* out of range.
            ValueError: *data* is not ``layout.data_length(index)`` bytes.
        """
        nonce, ad = self._nonce_ad(index)
        layout = self.layout
        want, total = layout.data_length(index), layout.plaintext_length(index)
        if len(data) != want:
            raise ValueError(f"chunk {index} needs {want} file bytes, got {len(data)}")
        if want == total:
            return self._aead.encrypt(nonce, data, ad)
        padded = bytearray(total)
        padded[:want] = data
        return self._aead.encrypt(nonce, padded, ad)

    def open(self, index: int, ciphertext: bytes | bytearray | memoryview) -> bytes:
        """The file bytes of chunk *index* (padding checked and removed).

        Raises:
            ExtraChunk: *index* out of range.
            ChunkLengthError: wrong ciphertext length for this index.
            ChunkAuthenticationError: tampered, moved or foreign chunk.
            FilePaddingError: padding bytes are not zero.
        """
        nonce, ad = self._nonce_ad(index)
        layout = self.layout
        expected = layout.ciphertext_length(index)
        if len(ciphertext) != expected:
            raise ChunkLengthError(index, len(ciphertext), expected)
        try:
            plain = self._aead.decrypt(nonce, ciphertext, ad)
        except InvalidTag as exc:
            raise ChunkAuthenticationError(index) from exc
        keep = layout.data_length(index)
        if keep == len(plain):
            return plain
        if plain.count(0, keep) != len(plain) - keep:
            raise FilePaddingError(index)
        return plain[:keep]


def max_true_size(ciphertext_limit: int, chunk_size: int = CHUNK_SIZE,
                  max_chunks: int = MAX_CHUNK_COUNT) -> int:
    """The largest file whose ciphertext fits *ciphertext_limit* bytes in *max_chunks*.

    Turns a transport's blob limits (e.g. ``protocol.limits.MAX_FILE_SIZE`` and
    ``MAX_FILE_CHUNKS``) into a file size; never above :data:`MAX_FILE_SIZE`.
    Returns -1 if not even an empty file fits.
    """
    def fits(n: int) -> bool:
        try:
            layout = FileLayout(n, chunk_size)
        except InvalidManifest:  # more chunks than the format counts
            return False
        return layout.ciphertext_size <= ciphertext_limit and layout.chunk_count <= max_chunks

    if not fits(0):
        return -1
    lo, hi = 0, MAX_FILE_SIZE  # sizes grow monotonically with n: binary search
    if fits(hi):
        return hi
    while hi - lo > 1:
        mid = (lo + hi) // 2
        if fits(mid):
            lo = mid
        else:
            hi = mid
    return lo
