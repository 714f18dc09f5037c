"""The envelope: what the relay stores for one mailbox, and nothing that names a sender.

Wire form (for stores and buses that keep envelopes as bytes)::

    [version, {key: value, ...}]

===  ================  ===========  =================================================
key  field             type         meaning
===  ================  ===========  =================================================
1    mailbox_id        bin[16]      the mailbox it was sent to
2    seq               int 1..2⁶³-1 relay sequence number in that mailbox
3    received_at_ms    int          when the relay made it durable
4    expires_at_ms     int          when it is deleted if not acked (>= received_at_ms)
5    dedup_hash        bin[32]      SHA-256(:func:`protocol.dedup_input`)
6    blob              bin[1..64K]  the sender's ciphertext, opaque
===  ================  ===========  =================================================

No sender account, connection, address or capability is stored: the capability was
checked at send time against the mailbox's ``capability_hash`` and then forgotten.
``dedup_hash`` is scoped by mailbox, so the copies of one multi-recipient send carry
unrelated hashes (their blobs are identical, which the relay saw anyway).

Same decoding rules as frames: version first (too old vs unknown), strict types,
unknown keys ignored, size checked before parsing.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Final, Self

from . import limits as L
from ._kinds import BLOB, DEDUP_HASH, MAILBOX_ID, SEQ, TIME_MS
from ._wire import Buffer, Limits, Problem, Record, finalize, pack, unpack, version_error, wire
from .errors import ErrorCode, MalformedFrame
from .frames import Delivery

__all__ = ["Envelope"]

ENVELOPE_LIMITS: Final = Limits(
    what="envelope",
    max_size=L.MAX_ENVELOPE_SIZE,
    max_bin_len=L.MAX_BLOB_SIZE,
    max_str_len=256,  # no strings in v1; room for unknown fields of later versions
    max_array_len=L.MAX_MAP_LEN,
    max_map_len=L.MAX_MAP_LEN,
)


@finalize
@dataclass(frozen=True, slots=True, kw_only=True)
class Envelope(Record):
    """One stored message in one mailbox (see the module docstring for the layout)."""

    mailbox_id: bytes = field(metadata=wire(1, MAILBOX_ID))
    seq: int = field(metadata=wire(2, SEQ))
    received_at_ms: int = field(metadata=wire(3, TIME_MS))
    expires_at_ms: int = field(metadata=wire(4, TIME_MS))
    dedup_hash: bytes = field(metadata=wire(5, DEDUP_HASH))
    blob: bytes = field(metadata=wire(6, BLOB))

    def _validate(self) -> None:
        if self.expires_at_ms < self.received_at_ms:
            raise Problem(
                ErrorCode.INVALID_FIELD, "expires before it was received", "expires_at_ms"
            )

    def encode(self) -> bytes:
        """Versioned bytes: ``[1, body]``."""
        return pack((L.PROTOCOL_VERSION, self._body()))

    @classmethod
    def decode(cls, data: Buffer) -> Self:
        """Decode strictly.

        Raises:
            RemoteProtocolError: a subclass (FrameTooLarge, MalformedFrame,
                UnsupportedProtocolVersion, MissingField, WrongFieldType,
                InvalidFieldValue, LimitExceeded).
        """
        obj = unpack(data, ENVELOPE_LIMITS)
        if type(obj) is not tuple or not obj:
            raise MalformedFrame("envelope", "an envelope is a non-empty msgpack array")
        version = obj[0]
        if type(version) is not int or not L.MIN_PROTOCOL_VERSION <= version <= L.PROTOCOL_VERSION:
            raise version_error("envelope", version)
        if len(obj) != 2 or type(obj[1]) is not dict:
            raise MalformedFrame("envelope", "expected [version, map]")
        return cls._from_body(obj[1])

    def delivery(self) -> Delivery:
        """The frame that delivers this envelope to the mailbox owner."""
        return Delivery(
            mailbox_id=self.mailbox_id,
            seq=self.seq,
            received_at_ms=self.received_at_ms,
            blob=self.blob,
        )
