"""Length hiding: message plaintexts and file sizes are padded to buckets.

The relay sees ciphertext sizes. Padding rounds them up to a small set of
*buckets* so that the size reveals only the bucket, not the exact length.

Message padding (spec: "Padding", docs/protocol.md)
    A plaintext of ``n`` bytes becomes ``plaintext || 0x80 || 0x00 * k``
    (ISO/IEC 7816-4 padding method 2), where the total ``n + 1 + k`` is the
    smallest bucket ``>= n + 1``:

    * powers of two from :data:`MESSAGE_MIN_BUCKET` (256) up to
      :data:`MESSAGE_LINEAR_STEP` (64 KiB): 256, 512, 1024, ..., 65536;
    * above that, multiples of 64 KiB.

    Nearly every chat message falls in the 256-byte bucket; mid-sized
    payloads leak only ``log2`` of their size (8 buckets); large ones waste at
    most 64 KiB. The padded form always has at least one byte of padding, so
    unpadding is unambiguous: strip trailing zeros, then exactly one ``0x80``.
    The receiver checks only that structure, not the bucket, so the sender's
    bucket table can change without a format version.

File size padding (spec: "File chunks")
    The padded plaintext size of a file of ``n`` bytes is the smallest
    ``floor(1.05 ** k)`` that is ``>= max(n, 541)`` (as Signal's attachment
    padding), computed with exact integers (``21**k // 20**k``) so that every
    implementation agrees to the byte. Overhead is below 5%; the relay learns
    only which of ~14 buckets per doubling the file falls in.
"""

from __future__ import annotations

import math

from .errors import CryptoError, DecodeError

__all__ = [
    "FILE_MIN_PADDED_SIZE",
    "MAX_FILE_SIZE",
    "MESSAGE_LINEAR_STEP",
    "MESSAGE_MIN_BUCKET",
    "FileTooLarge",
    "InvalidPadding",
    "message_bucket",
    "pad_message",
    "padded_file_size",
    "unpad_message",
]

#: Smallest message bucket, in bytes (padding marker included).
MESSAGE_MIN_BUCKET = 256
#: Message buckets grow by powers of two up to this size, then in steps of it.
MESSAGE_LINEAR_STEP = 64 * 1024

#: Smallest padded file size: ``floor(1.05 ** 129)``, Signal's minimum.
FILE_MIN_PADDED_SIZE = 541
#: Largest file accepted (1 TiB): keeps chunk counts and padding arithmetic bounded. This is
#: the format's limit; one relay blob is bounded lower (``protocol.limits.MAX_FILE_SIZE``).
MAX_FILE_SIZE = 1 << 40

_MARKER = 0x80


class InvalidPadding(DecodeError):
    """Padded bytes do not end in ``0x80`` followed only by zero bytes."""

    def __init__(self, reason: str) -> None:
        super().__init__("padded plaintext", reason)


class FileTooLarge(CryptoError):
    """A file size is beyond :data:`MAX_FILE_SIZE` (or negative).

    Attributes:
        size: the offending size.
        maximum: :data:`MAX_FILE_SIZE`.
    """

    def __init__(self, size: int) -> None:
        super().__init__(f"file size {size} outside 0..{MAX_FILE_SIZE}")
        self.size = size
        self.maximum = MAX_FILE_SIZE


def message_bucket(length: int) -> int:
    """The padded size for a message of *length* plaintext bytes.

    Args:
        length: plaintext length (``>= 0``).

    Returns:
        The smallest bucket ``>= length + 1`` (room for the ``0x80`` marker).
    """
    if length < 0:
        raise ValueError("length must be non-negative")
    need = length + 1
    if need <= MESSAGE_MIN_BUCKET:
        return MESSAGE_MIN_BUCKET
    if need <= MESSAGE_LINEAR_STEP:
        return 1 << (need - 1).bit_length()
    return -(-need // MESSAGE_LINEAR_STEP) * MESSAGE_LINEAR_STEP


def pad_message(plaintext: bytes) -> bytes:
    """Pad *plaintext* to its bucket: ``plaintext || 0x80 || 0x00*``."""
    size = message_bucket(len(plaintext))
    return bytes(plaintext) + b"\x80" + bytes(size - len(plaintext) - 1)


def unpad_message(padded: bytes) -> bytes:
    """Remove ISO/IEC 7816-4 padding.

    Raises:
        InvalidPadding: no ``0x80`` marker after the trailing zeros (including
            empty input and all-zero input).
    """
    stripped = bytes(padded).rstrip(b"\x00")
    if not stripped or stripped[-1] != _MARKER:
        raise InvalidPadding("missing 0x80 marker")
    return stripped[:-1]


def _bucket(k: int) -> int:
    # floor(1.05 ** k) with exact integers.
    return int(21**k // 20**k)


def padded_file_size(size: int) -> int:
    """The padded plaintext size of a file of *size* bytes.

    Returns:
        ``min { floor(1.05**k) : k >= 0, floor(1.05**k) >= max(size, 541) }``.

    Raises:
        FileTooLarge: *size* is negative or above :data:`MAX_FILE_SIZE`.
    """
    if size < 0 or size > MAX_FILE_SIZE:
        raise FileTooLarge(size)
    if size <= FILE_MIN_PADDED_SIZE:
        return FILE_MIN_PADDED_SIZE
    # The float only picks a starting exponent ~2 buckets below the answer
    # (a 10% margin dwarfs any rounding error); the exact search decides.
    k = max(0, int(math.log(size) / math.log(1.05)) - 2)
    while _bucket(k) < size:
        k += 1
    return _bucket(k)
