"""File transfer: the public types, errors and events (docs/sdk.md §15.13).

A file is encrypted in chunks (protocol §8.1, :class:`pigeon_crypto.files.ChunkCipher`)
and stored as one relay blob; its manifest travels in a ``File`` message. The methods
are on :class:`~client_sdk.AsyncClient` (``send_file``, ``download_file``,
``pause_transfer``, ``resume_transfer``, ``wait_transfer``, ``transfers``); the HTTP
engine is :mod:`client_sdk._transfers`, the stored state
:mod:`client_sdk.store.transfers`.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Final

from pigeon_crypto.errors import PigeonError
from pigeon_crypto.files import FileManifest

from .errors import ClientError
from .events import Event
from .store.transfers import TransferDirection, TransferRecord, TransferState

__all__ = [
    "DEFAULT_FILE_CHUNK_SIZE",
    "FileInfo",
    "FileOptions",
    "FileTooLarge",
    "NotAFileMessage",
    "TransferCompleted",
    "TransferDirection",
    "TransferFailed",
    "TransferFailedEvent",
    "TransferInfo",
    "TransferStarted",
    "TransferState",
    "UnknownTransfer",
    "file_info",
]

DEFAULT_FILE_CHUNK_SIZE: Final = 1024 * 1024
"""1 MiB: each chunk is one HTTP request (and one fsync on the relay), so 64 KiB chunks
would cap throughput at the request rate; 1 MiB keeps a few chunks in flight within a few
MiB of memory and loses at most 1 MiB of work on an interruption."""


@dataclass(frozen=True, slots=True, kw_only=True)
class FileOptions:
    """How the client moves files (``client.file_options``).

    Attributes:
        chunk_size: plaintext bytes per chunk of files we send.
        parallel: chunks in flight per transfer (memory: about 2 x chunk_size each).
        max_file_size: refuse larger files up front (None: the protocol's and the
            relay's limits only).
        retries: attempts per chunk on transient errors (connection errors, 5xx, 429).
        progress_interval_s: at most this long between stored progress updates.
    """

    chunk_size: int = DEFAULT_FILE_CHUNK_SIZE
    parallel: int = 4
    max_file_size: int | None = None
    retries: int = 8
    progress_interval_s: float = 0.25

    def __post_init__(self) -> None:
        if not 1 <= self.parallel <= 64:
            raise ValueError("parallel must be 1..64")
        if self.retries < 1:
            raise ValueError("retries must be >= 1")


@dataclass(frozen=True, slots=True, kw_only=True)
class FileInfo:
    """The public part of a file manifest (never the key or the blob id).

    Attributes:
        transfer_id: the manifest's file id (16 bytes): names the transfer on both sides.
        name: the sender's base name of the file (untrusted: sanitize before use).
        size: file bytes.
        media_type: the sender's media type (untrusted).
    """

    transfer_id: bytes
    name: str = field(repr=False)
    size: int
    media_type: str


def file_info(manifest: bytes) -> FileInfo | None:
    """The :class:`FileInfo` of an encoded manifest, or None if it does not decode."""
    try:
        m = FileManifest.from_bytes(manifest)
    except PigeonError:
        return None
    return FileInfo(transfer_id=m.file_id, name=m.name, size=m.true_size,
                    media_type=m.media_type)


@dataclass(frozen=True, slots=True, kw_only=True)
class TransferInfo:
    """A stored transfer, as ``transfers()`` and ``wait_transfer()`` report it."""

    transfer_id: bytes
    direction: TransferDirection
    peer: bytes
    name: str = field(repr=False)
    size: int
    bytes_done: int
    state: TransferState
    message_id: bytes
    path: Path = field(repr=False)
    error: str | None = None

    @classmethod
    def of(cls, record: TransferRecord) -> TransferInfo:
        m = FileManifest.from_bytes(record.manifest)
        return cls(transfer_id=record.transfer_id, direction=record.direction,
                   peer=record.peer, name=m.name, size=m.true_size,
                   bytes_done=record.bytes_done, state=record.state,
                   message_id=record.message_id, path=Path(record.path), error=record.error)


# --- errors --------------------------------------------------------------------------------


class FileTooLarge(ClientError):
    """The file is larger than this client, the protocol or the relay accepts; raised
    before anything is uploaded.

    Attributes:
        size: the file's size.
        limit: the largest size accepted (file bytes), when known (else None: the relay
            refused the blob with ``TOO_LARGE`` without saying its limit).
    """

    def __init__(self, size: int, limit: int | None) -> None:
        what = f"above the limit of {limit} bytes" if limit is not None \
            else "above the relay's limit"
        super().__init__(f"file of {size} bytes is {what}")
        self.size = size
        self.limit = limit


class TransferFailed(ClientError):
    """A transfer failed for good (see ``reason``); its state is FAILED.

    Attributes:
        transfer_id: the transfer.
        reason: what failed (never key or content bytes).
    """

    def __init__(self, transfer_id: bytes, reason: str) -> None:
        super().__init__(f"transfer {transfer_id.hex()} failed: {reason}")
        self.transfer_id = transfer_id
        self.reason = reason


class UnknownTransfer(ClientError):
    def __init__(self, transfer_id: bytes) -> None:
        super().__init__(f"no transfer {transfer_id.hex()}")
        self.transfer_id = transfer_id


class NotAFileMessage(ClientError):
    """``download_file`` was given a message that is not a file (or not in history)."""

    def __init__(self, message_id: bytes) -> None:
        super().__init__(f"message {message_id.hex()} is not a file message")
        self.message_id = message_id


# --- events -------------------------------------------------------------------------------


@dataclass(frozen=True, slots=True, kw_only=True)
class TransferStarted(Event):
    """A transfer began (not emitted again when it resumes)."""

    transfer_id: bytes
    direction: TransferDirection
    peer: bytes
    name: str = field(repr=False)
    size: int


@dataclass(frozen=True, slots=True, kw_only=True)
class TransferCompleted(Event):
    """Every chunk is up (upload: the file message is stored) or the file is written."""

    transfer_id: bytes
    direction: TransferDirection
    peer: bytes
    message_id: bytes
    path: Path = field(repr=False)


@dataclass(frozen=True, slots=True, kw_only=True)
class TransferFailedEvent(Event):
    """A transfer failed for good (the awaiting call raises :class:`TransferFailed`)."""

    transfer_id: bytes
    direction: TransferDirection
    peer: bytes
    reason: str
