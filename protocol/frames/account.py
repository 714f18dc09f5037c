"""Account frames: deletion, identity rotation, usernames, prekeys and bundles.

All frames here except :class:`FetchBundle` and :class:`LookupUsername` need an
authenticated connection (``UNAUTHORIZED`` otherwise). Prekeys and bundles are opaque
to the protocol: pigeon_crypto defines their bytes and the SDK verifies them; the
relay only stores and hands them out.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import ClassVar, Final

from .. import limits as L
from .._kinds import ACCOUNT_ID, CAPABILITY, IDENTITY_KEY, MAILBOX_ID, SIGNATURE, USERNAME
from .._wire import Bytes, Problem, TupleOf, wire
from ..errors import ErrorCode
from ._base import Direction, Request, Response, register

__all__ = [
    "Bundle",
    "ClaimUsername",
    "DeleteAccount",
    "FetchBundle",
    "LookupUsername",
    "ReleaseUsername",
    "RotateIdentity",
    "UploadPrekeys",
    "UsernameFound",
]

_PREKEY: Final = Bytes(1, L.MAX_PREKEY_SIZE)
_SIGNED_PREKEY: Final = Bytes(1, L.MAX_SIGNED_PREKEY_SIZE)
_KEM_PREKEY: Final = Bytes(1, L.MAX_KEM_PREKEY_SIZE)
_PREKEYS: Final = TupleOf(_PREKEY, 0, L.MAX_PREKEYS_PER_UPLOAD)
_ROTATION: Final = Bytes(1, L.MAX_ROTATION_SIZE)
_ROTATIONS: Final = TupleOf(_ROTATION, 0, L.MAX_IDENTITY_ROTATIONS)
_KEM_PREKEYS: Final = TupleOf(_KEM_PREKEY, 0, L.MAX_KEM_PREKEYS_PER_UPLOAD)


@register
@dataclass(frozen=True, slots=True, kw_only=True)
class DeleteAccount(Request):
    """Client → relay: delete the authenticated account, its prekeys, username and
    mailboxes (with their stored envelopes). Answered by ``Ok``; the relay then closes."""

    TYPE: ClassVar[int] = 10
    DIRECTION: ClassVar[Direction] = Direction.TO_RELAY


@register
@dataclass(frozen=True, slots=True, kw_only=True)
class RotateIdentity(Request):
    """Client → relay: replace the account's identity key; the account id stays.

    Answered by ``Ok``; later bundles carry the new key and the rotation chain.

    Attributes:
        rotation: an encoded ``pigeon_crypto.identity.IdentityRotation`` (opaque here;
            407 bytes in v1): old and new identity, both signing with
            ``Purpose.IDENTITY_ROTATION``. Contacts verify the chain too, which is what
            tells a rotation from an "identity changed" event.
        signature: by the *new* identity, ``Purpose.RELAY_CHALLENGE``, over this
            connection's ``challenge_payload`` (binds the rotation to this relay now).
    """

    TYPE: ClassVar[int] = 11
    DIRECTION: ClassVar[Direction] = Direction.TO_RELAY
    rotation: bytes = field(metadata=wire(1, _ROTATION))
    signature: bytes = field(metadata=wire(2, SIGNATURE))


@register
@dataclass(frozen=True, slots=True, kw_only=True)
class ClaimUsername(Request):
    """Client → relay: bind a discoverable username to the authenticated account.

    Answered by ``Ok``, or ``Error(USERNAME_TAKEN | USERNAME_REJECTED)``. An account
    holds at most one username; claiming another replaces it.

    Attributes:
        username: normalized (see :func:`protocol.normalize_username`).
        account_id: the authenticated account.
        signature: ``Purpose.USERNAME_BINDING`` over
            ``username_binding_payload(username, account_id)``.
    """

    TYPE: ClassVar[int] = 12
    DIRECTION: ClassVar[Direction] = Direction.TO_RELAY
    username: str = field(metadata=wire(1, USERNAME))
    account_id: bytes = field(metadata=wire(2, ACCOUNT_ID))
    signature: bytes = field(metadata=wire(3, SIGNATURE))


@register
@dataclass(frozen=True, slots=True, kw_only=True)
class ReleaseUsername(Request):
    """Client → relay: stop being discoverable by ``username``. Answered by ``Ok``."""

    TYPE: ClassVar[int] = 13
    DIRECTION: ClassVar[Direction] = Direction.TO_RELAY
    username: str = field(metadata=wire(1, USERNAME))


@register
@dataclass(frozen=True, slots=True, kw_only=True)
class LookupUsername(Request):
    """Client → relay: exact-match lookup (no prefix or fuzzy search, by design).

    Answered by :class:`UsernameFound` or ``Error(NOT_FOUND)``.
    """

    TYPE: ClassVar[int] = 14
    DIRECTION: ClassVar[Direction] = Direction.TO_RELAY
    username: str = field(metadata=wire(1, USERNAME))


@register
@dataclass(frozen=True, slots=True, kw_only=True)
class UsernameFound(Response):
    """Relay → client: the binding, with its signature so the client verifies it
    against the identity key of the account's bundle (the relay is not trusted)."""

    TYPE: ClassVar[int] = 15
    DIRECTION: ClassVar[Direction] = Direction.TO_CLIENT
    username: str = field(metadata=wire(1, USERNAME))
    account_id: bytes = field(metadata=wire(2, ACCOUNT_ID))
    signature: bytes = field(metadata=wire(3, SIGNATURE))


@register
@dataclass(frozen=True, slots=True, kw_only=True)
class UploadPrekeys(Request):
    """Client → relay: publish prekeys (all opaque records from pigeon_crypto).

    Answered by ``Ok``. At least one field must be present. One-time keys are added
    to the pool; a signed prekey or last-resort KEM prekey replaces the current one.

    Attributes:
        signed_prekey: the signed X25519 prekey record.
        kem_prekey: the signed last-resort ML-KEM-768 prekey record.
        one_time_prekeys: one-time X25519 prekey records.
        one_time_kem_prekeys: one-time signed ML-KEM-768 prekey records.
    """

    TYPE: ClassVar[int] = 20
    DIRECTION: ClassVar[Direction] = Direction.TO_RELAY
    signed_prekey: bytes | None = field(default=None, metadata=wire(1, _SIGNED_PREKEY))
    kem_prekey: bytes | None = field(default=None, metadata=wire(2, _KEM_PREKEY))
    one_time_prekeys: tuple[bytes, ...] = field(default=(), metadata=wire(3, _PREKEYS))
    one_time_kem_prekeys: tuple[bytes, ...] = field(default=(), metadata=wire(4, _KEM_PREKEYS))

    def _validate(self) -> None:
        if (
            self.signed_prekey is None
            and self.kem_prekey is None
            and not self.one_time_prekeys
            and not self.one_time_kem_prekeys
        ):
            raise Problem(ErrorCode.INVALID_FIELD, "nothing to upload", "one_time_prekeys")


@register
@dataclass(frozen=True, slots=True, kw_only=True)
class FetchBundle(Request):
    """Client → relay (anonymous allowed): get an account's prekey bundle to start a
    session. Answered by :class:`Bundle` or ``Error(UNKNOWN_ACCOUNT)``. Consumes one
    one-time prekey of each kind, if any are left."""

    TYPE: ClassVar[int] = 21
    DIRECTION: ClassVar[Direction] = Direction.TO_RELAY
    account_id: bytes = field(metadata=wire(1, ACCOUNT_ID))


@register
@dataclass(frozen=True, slots=True, kw_only=True)
class Bundle(Response):
    """Relay → client: the prekey bundle of ``account_id`` (verified by the SDK).

    Attributes:
        identity_key: the account's current identity public key.
        rotations: the account's identity rotations, oldest first (encoded
            ``IdentityRotation`` records): with them the SDK checks that
            ``identity_key`` belongs to ``account_id``
            (``pigeon_crypto.identity.verify_rotation_chain``). Empty if never rotated.
        signed_prekey: the current signed X25519 prekey record.
        kem_prekey: a one-time signed ML-KEM prekey if any is left, else the
            last-resort one (PQXDH needs one: a bundle without it is rejected).
        one_time_prekey: a one-time X25519 prekey record, if any is left.
        contact_mailbox_id, contact_capability: the account's public contact
            mailbox, where the first (PQXDH initiation) message goes; both or neither.
    """

    TYPE: ClassVar[int] = 22
    DIRECTION: ClassVar[Direction] = Direction.TO_CLIENT
    account_id: bytes = field(metadata=wire(1, ACCOUNT_ID))
    identity_key: bytes = field(metadata=wire(2, IDENTITY_KEY))
    signed_prekey: bytes = field(metadata=wire(3, _SIGNED_PREKEY))
    kem_prekey: bytes = field(metadata=wire(4, _KEM_PREKEY))
    one_time_prekey: bytes | None = field(default=None, metadata=wire(5, _PREKEY))
    contact_mailbox_id: bytes | None = field(default=None, metadata=wire(6, MAILBOX_ID))
    contact_capability: bytes | None = field(default=None, repr=False, metadata=wire(7, CAPABILITY))
    rotations: tuple[bytes, ...] = field(default=(), metadata=wire(8, _ROTATIONS))

    def _validate(self) -> None:
        if (self.contact_mailbox_id is None) != (self.contact_capability is None):
            raise Problem(
                ErrorCode.INVALID_FIELD,
                "contact_mailbox_id and contact_capability go together",
                "contact_capability",
            )
