"""Layer 1 of the SDK: pure frame builders and checkers (no store, no I/O, no clock).

Everything here turns SDK records into ``protocol`` frames or verifies what the relay
handed out: the challenge signatures of ``Auth``/``Register`` (protocol §9.1, §9.12),
``Send`` from an outbox row, ``UploadPrekeys`` batches within the per-frame limits,
``Ack`` frames, capability hashes, and the verification of a ``Bundle`` (identity chain
back to the account id, every prekey signature; protocol §4, §5) and of a
``UsernameFound`` binding. The relay is never trusted: a bundle or binding that does
not verify raises.
"""

from __future__ import annotations

import hashlib
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field

from pigeon_crypto.errors import InvalidBundle, InvalidSignature
from pigeon_crypto.identity import IdentityPublicKey, IdentityRotation, verify_rotation_chain
from pigeon_crypto.prekeys import (
    KemKind,
    KemPreKey,
    OneTimePreKey,
    PreKeyBundle,
    SignedPreKey,
)
from pigeon_crypto.signing import Purpose
from protocol import limits as L
from protocol.frames import (
    Ack,
    Auth,
    Bundle,
    Challenge,
    Register,
    Send,
    UploadPrekeys,
    UsernameFound,
)
from protocol.payloads import challenge_payload, username_binding_payload

from .errors import IdentityMismatch
from .payloads import identity_in_chain
from .store.records import LocalIdentity, OutboxItem, PrekeyUpload

__all__ = [
    "VerifiedBundle",
    "ack_frames",
    "auth_frame",
    "capability_hash",
    "register_frame",
    "send_frame",
    "split_upload",
    "upload_frame",
    "verify_bundle",
    "verify_username",
]


def capability_hash(capability: bytes) -> bytes:
    """What the relay stores for a send capability: SHA-256 (protocol §9.4)."""
    return hashlib.sha256(capability).digest()


def _challenge_signature(identity: LocalIdentity, challenge: Challenge) -> bytes:
    payload = challenge_payload(challenge.relay_id, challenge.nonce, challenge.server_time_ms,
                                identity.account_id)
    return identity.key_pair.sign(Purpose.RELAY_CHALLENGE, payload)


def auth_frame(identity: LocalIdentity, challenge: Challenge, request_id: int) -> Auth:
    """Log in: sign the challenge with the current identity key."""
    return Auth(request_id=request_id, account_id=identity.account_id,
                signature=_challenge_signature(identity, challenge))


def register_frame(identity: LocalIdentity, challenge: Challenge, request_id: int,
                   invite_code: str | None = None) -> Register:
    """Create the account (idempotent on the relay: same key, same account).

    The relay derives the account from the *initial* identity, so a profile that has
    rotated its key registers with its initial identity only before the first rotation
    (``Register`` carries one key; a rotated account logs in with ``Auth``).
    """
    return Register(request_id=request_id, account_id=identity.account_id,
                    identity_key=identity.key_pair.public.to_bytes(),
                    signature=_challenge_signature(identity, challenge),
                    invite_code=invite_code)


def send_frame(item: OutboxItem, request_id: int) -> Send:
    """The ``Send`` of an outbox row: the stored bytes and id, never re-encrypted."""
    return Send(request_id=request_id, client_msg_id=item.client_msg_id, blob=item.entry.blob,
                recipients=tuple((r.mailbox_id, r.capability) for r in item.entry.recipients))


def split_upload(upload: PrekeyUpload) -> list[PrekeyUpload]:
    """Cut an upload into pieces within the per-frame limits (100 one-time keys of each
    kind). The newest signed prekey and the newest last-resort KEM key go in the first
    piece; KEM one-time keys are the ``kem`` entries of kind ONE_TIME."""
    signed = upload.signed[-1:] if upload.signed else ()
    last_resort = [k for k in upload.kem if k.kind is KemKind.LAST_RESORT][-1:]
    kem_one_time = [k for k in upload.kem if k.kind is KemKind.ONE_TIME]
    one_time = list(upload.one_time)
    pieces: list[PrekeyUpload] = []
    first = True
    while first or kem_one_time or one_time:
        pieces.append(PrekeyUpload(
            signed=signed if first else (),
            kem=tuple((last_resort if first else [])
                      + kem_one_time[:L.MAX_KEM_PREKEYS_PER_UPLOAD]),
            one_time=tuple(one_time[:L.MAX_PREKEYS_PER_UPLOAD]),
        ))
        kem_one_time = kem_one_time[L.MAX_KEM_PREKEYS_PER_UPLOAD:]
        one_time = one_time[L.MAX_PREKEYS_PER_UPLOAD:]
        first = False
    return [p for p in pieces if not p.empty]


def upload_frame(piece: PrekeyUpload, request_id: int) -> UploadPrekeys:
    """One ``UploadPrekeys`` for a piece from :func:`split_upload`."""
    last_resort = [k for k in piece.kem if k.kind is KemKind.LAST_RESORT]
    return UploadPrekeys(
        request_id=request_id,
        signed_prekey=piece.signed[-1].to_bytes() if piece.signed else None,
        kem_prekey=last_resort[-1].to_bytes() if last_resort else None,
        one_time_prekeys=tuple(k.to_bytes() for k in piece.one_time),
        one_time_kem_prekeys=tuple(k.to_bytes() for k in piece.kem
                                   if k.kind is KemKind.ONE_TIME),
    )


def ack_frames(mailbox_id: bytes, seqs: Iterable[int],
               request_ids: Iterable[int]) -> list[Ack]:
    """Selective ``Ack`` frames for *seqs* (any order, duplicates allowed), at most
    ``MAX_ACK_SEQS`` per frame; one request id is taken from *request_ids* per frame."""
    ordered = sorted(set(seqs))
    ids = iter(request_ids)
    return [Ack(request_id=next(ids), mailbox_id=mailbox_id,
                seqs=tuple(ordered[i:i + L.MAX_ACK_SEQS]))
            for i in range(0, len(ordered), L.MAX_ACK_SEQS)]


@dataclass(frozen=True, slots=True, kw_only=True)
class VerifiedBundle:
    """A ``Bundle`` whose identity chain and signatures verified.

    Attributes:
        initial: the account's first identity (hashes to ``account_id``).
        rotations: the verified rotation chain from ``initial`` to ``bundle.identity``.
        rotation_bytes: the same records concatenated, as stored with a contact.
        contact_mailbox: ``(mailbox_id, capability)`` of the account's contact mailbox.
    """

    account_id: bytes
    initial: IdentityPublicKey
    rotations: tuple[IdentityRotation, ...]
    bundle: PreKeyBundle
    contact_mailbox: tuple[bytes, bytes] | None = field(repr=False)

    @property
    def identity(self) -> IdentityPublicKey:
        return self.bundle.identity

    @property
    def rotation_bytes(self) -> bytes:
        return b"".join(r.to_bytes() for r in self.rotations)


def verify_bundle(frame: Bundle, *, expected_fingerprint: bytes | None = None,
                  ) -> VerifiedBundle:
    """Parse and verify a relay's ``Bundle``.

    Args:
        expected_fingerprint: from a contact link: the identity chain must contain it.

    Raises:
        InvalidBundle: a record does not parse, a prekey signature fails, or the
            identity is not the account's (chain from the account id broken).
        IdentityMismatch: *expected_fingerprint* is not in the chain.
    """
    try:
        identity = IdentityPublicKey.from_bytes(frame.identity_key)
        rotations = tuple(IdentityRotation.from_bytes(r) for r in frame.rotations)
        initial = rotations[0].old if rotations else identity
        current = verify_rotation_chain(frame.account_id, initial, rotations)
        if not current.same_key(identity):
            raise InvalidSignature(Purpose.IDENTITY_ROTATION.label)
        bundle = PreKeyBundle(
            identity=identity,
            signed_prekey=SignedPreKey.from_bytes(frame.signed_prekey),
            kem_prekey=KemPreKey.from_bytes(frame.kem_prekey),
            one_time_prekey=(None if frame.one_time_prekey is None
                             else OneTimePreKey.from_bytes(frame.one_time_prekey)),
        )
        bundle.check()
    except InvalidBundle:
        raise
    except Exception as exc:  # every parse or signature failure of relay-supplied bytes
        raise InvalidBundle(f"bundle of {frame.account_id.hex()} does not verify") from exc
    if expected_fingerprint is not None and not identity_in_chain(
            expected_fingerprint, initial, rotations):
        raise IdentityMismatch(frame.account_id, "contact link's fingerprint")
    mailbox = None
    if frame.contact_mailbox_id is not None and frame.contact_capability is not None:
        mailbox = (frame.contact_mailbox_id, frame.contact_capability)
    return VerifiedBundle(account_id=frame.account_id, initial=initial, rotations=rotations,
                          bundle=bundle, contact_mailbox=mailbox)


def verify_username(found: UsernameFound, verified: VerifiedBundle) -> None:
    """Check that the account's identity (current, or an earlier one of its chain)
    signed the username binding the relay returned.

    Raises:
        IdentityMismatch: no identity of the account signed it.
    """
    payload = username_binding_payload(found.username, found.account_id)
    keys: Sequence[IdentityPublicKey] = [verified.initial, *(r.new for r in verified.rotations)]
    for key in reversed(keys):
        try:
            key.verify(Purpose.USERNAME_BINDING, payload, found.signature)
            return
        except InvalidSignature:
            continue
    raise IdentityMismatch(found.account_id, f"username binding of {found.username!r}")
