"""Every size, count and range of the wire protocol, in one place.

Imported by both the relay and the SDK, so both sides reject the same inputs.
Each constant has a one-line rationale. Sizes are in bytes; string limits are
UTF-8 byte lengths (what the parser sees), not characters.

The decoder enforces these twice: the msgpack parser is given container limits
(``MAX_*_LEN`` below: the largest legitimate string, bytes, array and map of the
whole protocol) so that a length prefix above them is rejected before anything
is allocated, and each field is then checked against its own limit.
"""

from __future__ import annotations

from typing import Final

__all__ = [
    "ACCOUNT_ID_SIZE",
    "BLOB_ID_SIZE",
    "BLOB_TOKEN_SIZE",
    "CAPABILITY_HASH_SIZE",
    "CAPABILITY_SIZE",
    "CLIENT_MSG_ID_SIZE",
    "DEDUP_HASH_SIZE",
    "DEFAULT_TTL_MS",
    "IDENTITY_KEY_SIZE_V1",
    "MAILBOX_ID_SIZE",
    "MAX_ACK_SEQS",
    "MAX_BLOB_SIZE",
    "MAX_DISAPPEARING_TIMER_MS",
    "MAX_DISPLAY_NAME_SIZE",
    "MAX_ENVELOPE_SIZE",
    "MAX_EPHEMERAL_BLOB_SIZE",
    "MAX_EPHEMERAL_RECIPIENTS",
    "MAX_ERROR_MESSAGE_SIZE",
    "MAX_FILE_CHUNKS",
    "MAX_FILE_SIZE",
    "MAX_FRAME_ARRAY_LEN",
    "MAX_FRAME_BIN_LEN",
    "MAX_FRAME_SIZE",
    "MAX_FRAME_STR_LEN",
    "MAX_IDENTITY_KEY_SIZE",
    "MAX_IDENTITY_ROTATIONS",
    "MAX_INNER_ARRAY_LEN",
    "MAX_INNER_BIN_LEN",
    "MAX_INNER_MESSAGE_SIZE",
    "MAX_INNER_STR_LEN",
    "MAX_INVITE_CODE_SIZE",
    "MAX_KEM_PREKEYS_PER_UPLOAD",
    "MAX_KEM_PREKEY_SIZE",
    "MAX_MAILBOXES_PER_SUBSCRIBE",
    "MAX_MANIFEST_SIZE",
    "MAX_MAP_LEN",
    "MAX_PLACEHOLDER_SIZE",
    "MAX_PREKEYS_PER_UPLOAD",
    "MAX_PREKEY_SIZE",
    "MAX_PUSH_URL_SIZE",
    "MAX_REACTION_SIZE",
    "MAX_RECEIPT_IDS",
    "MAX_RECIPIENTS",
    "MAX_RELAY_URL_SIZE",
    "MAX_REQUEST_ID",
    "MAX_RETRY_AFTER_MS",
    "MAX_ROTATION_SIZE",
    "MAX_SEQ",
    "MAX_SIGNED_PREKEY_SIZE",
    "MAX_TEXT_SIZE",
    "MAX_TIME_MS",
    "MAX_TTL_MS",
    "MAX_URL_PATH_SIZE",
    "MESSAGE_ID_SIZE",
    "MIN_PROTOCOL_VERSION",
    "NONCE_SIZE",
    "PROTOCOL_VERSION",
    "RELAY_ID_SIZES",
    "SIGNATURE_SIZE",
    "USERNAME_MAX_LENGTH",
    "USERNAME_MIN_LENGTH",
]

# --- versions ---------------------------------------------------------------------------
PROTOCOL_VERSION: Final = 1
"""The version this code writes in every frame, envelope and inner message."""
MIN_PROTOCOL_VERSION: Final = 1
"""The oldest version still accepted; below it is "too old", above PROTOCOL_VERSION "unknown"."""

# --- fixed sizes (DESIGN.md, "Addresses") -----------------------------------------------
ACCOUNT_ID_SIZE: Final = 16
"""Random, chosen by the client at registration; stable across identity rotation."""
MAILBOX_ID_SIZE: Final = 16
"""Random, chosen by the relay on create: 128 bits cannot be guessed or enumerated."""
CAPABILITY_SIZE: Final = 32
"""A send capability: 256 random bits held by senders, never stored by the relay."""
CAPABILITY_HASH_SIZE: Final = 32
"""SHA-256 of the capability, computed by the SDK; the relay stores only this."""
CLIENT_MSG_ID_SIZE: Final = 16
"""Random per send, chosen by the sender; retries reuse it (idempotency)."""
MESSAGE_ID_SIZE: Final = 16
"""Inner (end-to-end) message id, random; targets of edits, reactions and receipts."""
BLOB_ID_SIZE: Final = 16
"""Relay-chosen id of an uploaded file blob."""
BLOB_TOKEN_SIZE: Final = 32
"""Bearer token for one blob upload or download over HTTP."""
SIGNATURE_SIZE: Final = 64
"""Ed25519."""
NONCE_SIZE: Final = 32
"""Relay challenge nonce: 256 random bits, never repeated."""
RELAY_ID_SIZES: Final = (16, 32)
"""A relay id is 16 random bytes or a 32-byte key hash; nothing else."""
DEDUP_HASH_SIZE: Final = 32
"""SHA-256 of :func:`protocol.dedup_input` stored per envelope."""
IDENTITY_KEY_SIZE_V1: Final = 129
"""Identity public key v1: version byte + Ed25519 32 + X25519 32 + signature 64
(informative: the protocol carries identity keys as opaque bytes)."""

# --- variable sizes -------------------------------------------------------------------
MAX_BLOB_SIZE: Final = 64 * 1024
"""One durable message ciphertext. Files go through blob upload, not frames."""
MAX_EPHEMERAL_BLOB_SIZE: Final = 16 * 1024
"""Typing and call signalling; an encrypted SDP offer is a few KiB."""
MAX_IDENTITY_KEY_SIZE: Final = 256
"""Room for a future identity format; v1 is 129 bytes."""
MAX_ROTATION_SIZE: Final = 512
"""An encoded pigeon_crypto IdentityRotation (407 bytes in v1)."""
MAX_PREKEY_SIZE: Final = 128
"""One-time X25519 prekey record (~40 bytes: id, key)."""
MAX_SIGNED_PREKEY_SIZE: Final = 256
"""Signed X25519 prekey record (~105 bytes: id, key, signature, time)."""
MAX_KEM_PREKEY_SIZE: Final = 1536
"""Signed ML-KEM-768 prekey record: 1184-byte key + signature + id (~1260 bytes)."""
MAX_ERROR_MESSAGE_SIZE: Final = 256
"""Human-readable text in an Error frame; diagnostics only."""
MAX_INVITE_CODE_SIZE: Final = 64
"""Invite codes are short tokens typed or pasted by users."""
USERNAME_MIN_LENGTH: Final = 3
"""Shorter names are too easy to squat."""
USERNAME_MAX_LENGTH: Final = 32
"""Enough for a handle; usernames are ASCII so bytes == characters."""
MAX_PUSH_URL_SIZE: Final = 512
"""A push endpoint URL (Web Push, UnifiedPush)."""
MAX_URL_PATH_SIZE: Final = 256
"""Relay-relative HTTP path for a blob transfer."""
MAX_FILE_SIZE: Final = 4 * 1024**3
"""Largest file blob (ciphertext bytes) a client may announce; relays may refuse less
(TOO_LARGE). The crypto format allows larger files (pigeon_crypto.padding.MAX_FILE_SIZE,
2^40): this bounds one relay blob, not the format (docs/protocol.md §8.1)."""
MAX_FILE_CHUNKS: Final = 65536
"""Chunks per file blob (4 GiB at 64 KiB chunks)."""

# --- counts -----------------------------------------------------------------------------
MAX_RECIPIENTS: Final = 2000
"""Mailboxes reached by one durable send. A group or channel with more members splits
the fan-out into several Send frames with the same client_msg_id and blob (dedup is per
mailbox, so that is still idempotent). 2000 recipients are ~106 KB of frame."""
MAX_EPHEMERAL_RECIPIENTS: Final = 256
"""Typing indicators and call signalling are not worth more fan-out than this."""
MAX_MAILBOXES_PER_SUBSCRIBE: Final = 1000
"""Mailboxes per Subscribe / Unsubscribe / RegisterPush frame; send more frames for more."""
MAX_ACK_SEQS: Final = 1000
"""Selective acks per Ack frame (beyond the cumulative one)."""
MAX_IDENTITY_ROTATIONS: Final = 64
"""Rotations in a bundle's chain: monthly for five years; then re-register."""
MAX_PREKEYS_PER_UPLOAD: Final = 100
"""One-time X25519 prekeys per upload (Signal uploads 100 at a time)."""
MAX_KEM_PREKEYS_PER_UPLOAD: Final = 100
"""One-time ML-KEM prekeys per upload (~154 KB at the maximum size)."""

# --- integers ---------------------------------------------------------------------------
MAX_REQUEST_ID: Final = 2**32 - 1
"""Request ids are u32, 1..MAX_REQUEST_ID; 0 means "not a response to a request"."""
MAX_SEQ: Final = 2**63 - 1
"""Relay sequence numbers fit a signed 64-bit SQL integer."""
MAX_TIME_MS: Final = 2**63 - 1
"""Unix milliseconds, same representation as sequence numbers."""
MAX_TTL_MS: Final = 30 * 24 * 3600 * 1000
"""Stored envelopes expire after at most 30 days (DESIGN.md, relay pipeline)."""
DEFAULT_TTL_MS: Final = MAX_TTL_MS
"""A send without ``ttl_ms`` keeps the relay's default, at most this."""
MAX_RETRY_AFTER_MS: Final = 2**32 - 1
"""retry_after_ms is a u32 (up to ~49 days)."""
MAX_DISAPPEARING_TIMER_MS: Final = 365 * 24 * 3600 * 1000
"""A conversation's disappearing-message timer: 1 ms to a year (inner kind 14)."""

# --- frame size and parser limits -----------------------------------------------------
MAX_FRAME_SIZE: Final = 256 * 1024
"""Checked before parsing. The largest valid frames (a Send with MAX_BLOB_SIZE and
MAX_RECIPIENTS, ~172 KB; an UploadPrekeys at every maximum, ~170 KB) fit, which
``tests/unit/protocol/test_limits.py`` checks."""
MAX_FRAME_BIN_LEN: Final = MAX_BLOB_SIZE
"""Largest bytes value in any frame (the blob)."""
MAX_FRAME_STR_LEN: Final = MAX_PUSH_URL_SIZE
"""Largest string value in any frame (a push URL)."""
MAX_FRAME_ARRAY_LEN: Final = MAX_RECIPIENTS
"""Largest array in any frame (the recipients of a Send)."""
MAX_MAP_LEN: Final = 64
"""Fields per map, known and unknown (forward-compatible extensions must stay small)."""

# --- envelope ----------------------------------------------------------------------------
MAX_ENVELOPE_SIZE: Final = MAX_BLOB_SIZE + 1024
"""A stored envelope is the blob plus fixed-size metadata."""

# --- inner (end-to-end encrypted) messages ------------------------------------------------
MAX_INNER_MESSAGE_SIZE: Final = 48 * 1024
"""Plaintext of one inner message: leaves a quarter of MAX_BLOB_SIZE for the ratchet
header, the AEAD tag and padding."""
MAX_TEXT_SIZE: Final = 32 * 1024
"""Text, edit and caption bodies."""
MAX_MANIFEST_SIZE: Final = 32 * 1024
"""An encoded pigeon_crypto FileManifest is at most ~1.6 KB (key, ids, sizes, one blob id,
name <= 1024, media type <= 255); the rest is headroom for later versions."""
MAX_REACTION_SIZE: Final = 64
"""One emoji, including long ZWJ sequences."""
MAX_DISPLAY_NAME_SIZE: Final = 128
"""A profile display name."""
MAX_RELAY_URL_SIZE: Final = 512
"""The relay a mailbox lives on, when not the sender's own."""
MAX_RECEIPT_IDS: Final = 1000
"""Message ids per receipt."""
MAX_PLACEHOLDER_SIZE: Final = 32 * 1024
"""An encoded group state in a ``GroupControl`` (``protocol.group``)."""
MAX_INNER_BIN_LEN: Final = max(MAX_MANIFEST_SIZE, MAX_PLACEHOLDER_SIZE)
"""Largest bytes value in an inner message."""
MAX_INNER_STR_LEN: Final = MAX_TEXT_SIZE
"""Largest string value in an inner message."""
MAX_INNER_ARRAY_LEN: Final = MAX_RECEIPT_IDS
"""Largest array in an inner message."""
