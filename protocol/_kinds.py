"""Field kinds shared by frames, envelopes and inner messages (sizes from limits)."""

from __future__ import annotations

from typing import Final

from . import limits as L
from ._wire import Bool, Bytes, Code, Pair, Str, TupleOf, UInt
from .errors import ErrorCode
from .payloads import USERNAME_PATTERN

ACCOUNT_ID: Final = Bytes.exactly(L.ACCOUNT_ID_SIZE)
MAILBOX_ID: Final = Bytes.exactly(L.MAILBOX_ID_SIZE)
CAPABILITY: Final = Bytes.exactly(L.CAPABILITY_SIZE)
CAPABILITY_HASH: Final = Bytes.exactly(L.CAPABILITY_HASH_SIZE)
CLIENT_MSG_ID: Final = Bytes.exactly(L.CLIENT_MSG_ID_SIZE)
MESSAGE_ID: Final = Bytes.exactly(L.MESSAGE_ID_SIZE)
BLOB_ID: Final = Bytes.exactly(L.BLOB_ID_SIZE)
BLOB_TOKEN: Final = Bytes.exactly(L.BLOB_TOKEN_SIZE)
SIGNATURE: Final = Bytes.exactly(L.SIGNATURE_SIZE)
NONCE: Final = Bytes.exactly(L.NONCE_SIZE)
RELAY_ID: Final = Bytes(sizes=L.RELAY_ID_SIZES)
DEDUP_HASH: Final = Bytes.exactly(L.DEDUP_HASH_SIZE)
IDENTITY_KEY: Final = Bytes(1, L.MAX_IDENTITY_KEY_SIZE)

BLOB: Final = Bytes(1, L.MAX_BLOB_SIZE)
EPHEMERAL_BLOB: Final = Bytes(1, L.MAX_EPHEMERAL_BLOB_SIZE)

SEQ: Final = UInt(1, L.MAX_SEQ)
"""Relay sequence numbers start at 1 in every mailbox."""
SEQ_OR_ZERO: Final = UInt(0, L.MAX_SEQ)
"""A cumulative position: 0 means "nothing yet"."""
TIME_MS: Final = UInt(0, L.MAX_TIME_MS)
TTL_MS: Final = UInt(1, L.MAX_TTL_MS, over=ErrorCode.LIMIT_EXCEEDED)
RETRY_AFTER_MS: Final = UInt(0, L.MAX_RETRY_AFTER_MS)
COUNT: Final = UInt(0, 2**32 - 1)
INDEX: Final = UInt(0, L.MAX_RECIPIENTS - 1)
ERROR_CODE: Final = Code()
BOOL: Final = Bool()

USERNAME: Final = Str(L.USERNAME_MIN_LENGTH, L.USERNAME_MAX_LENGTH, pattern=USERNAME_PATTERN)

RECIPIENT: Final = Pair(MAILBOX_ID, CAPABILITY)
"""``[mailbox_id, capability]``."""
RECIPIENTS: Final = TupleOf(RECIPIENT, 1, L.MAX_RECIPIENTS)
EPHEMERAL_RECIPIENTS: Final = TupleOf(RECIPIENT, 1, L.MAX_EPHEMERAL_RECIPIENTS)
MAILBOX_IDS: Final = TupleOf(MAILBOX_ID, 1, L.MAX_MAILBOXES_PER_SUBSCRIBE)
