"""Helpers shared by the client_sdk tests and the crash child (no pytest here)."""

from __future__ import annotations

from client_sdk.history import NewMessage
from client_sdk.store import OutboxEntry, Recipient
from pigeon_crypto import x25519
from pigeon_crypto.ratchet import RatchetState, init_initiator, init_responder
from pigeon_crypto.rng import SeededRng
from pigeon_crypto.sealing import Argon2Params

FAST = Argon2Params(time_cost=1, memory_kib=8, parallelism=1)
"""Argon2id at its cheapest: tests measure logic, not the KDF."""
NOW = 1_790_000_000_000
AD = b"A" * 129 + b"B" * 129


def ident(tag: int, n: int, size: int = 16) -> bytes:
    """A recognizable id: *tag* byte, then *n* big-endian."""
    return bytes([tag]) + n.to_bytes(size - 1, "big")


def account(n: int) -> bytes:
    return ident(0xAC, n)


def message_id(n: int) -> bytes:
    return ident(0x3D, n)


def mailbox(n: int) -> bytes:
    return ident(0x3B, n)


def capability(n: int) -> bytes:
    return ident(0xCA, n, 32)


def session_pair(seed: bytes) -> tuple[RatchetState, RatchetState, SeededRng]:
    """A deterministic (alice, bob) pair and the rng Alice keeps encrypting with."""
    rng = SeededRng(seed)
    secret = rng(32)
    bob_private = x25519.generate_private(rng)
    alice = init_initiator(shared_secret=secret,
                           peer_ratchet_public=x25519.public_from_private(bob_private),
                           associated_data=AD, rng=rng)
    bob = init_responder(shared_secret=secret, our_ratchet_private=bob_private,
                         associated_data=AD)
    return alice, bob, rng


def entry(n: int, *, blob: bytes = b"ciphertext", recipients: int = 1,
          at: int = NOW) -> OutboxEntry:
    return OutboxEntry(
        client_msg_id=ident(0xC1, n),
        recipients=tuple(Recipient(mailbox_id=mailbox(n * 10 + i), capability=capability(i))
                         for i in range(recipients)),
        blob=blob, created_at_ms=at,
    )


def text(conversation_id: int, n: int, body: str = "hello", *, sender: bytes | None = None,
         sent_at: int | None = None, received_at: int | None = None) -> NewMessage:
    return NewMessage(conversation_id=conversation_id, message_id=message_id(n), sender=sender,
                      sent_at_ms=NOW + n if sent_at is None else sent_at,
                      received_at_ms=received_at, body=body)
