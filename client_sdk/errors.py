"""Errors of the client SDK, extending the one hierarchy of :mod:`pigeon_crypto.errors`.

Everything here derives from :class:`~pigeon_crypto.errors.StoreError` (the local
store and the profile file), except :class:`WrongPassphrase`, which is re-exported
from the crypto layer: a passphrase that does not unwrap the data key is a
cryptographic failure (with an AEAD, a wrong passphrase and a tampered key header are
indistinguishable).

Hierarchy::

    PigeonError
    ├── CryptoError
    │   └── WrongPassphrase            (pigeon_crypto) the passphrase does not unwrap
    └── StoreError
        ├── ProfileError               the profile file as a whole
        │   ├── ProfileNotFound        no profile at the path
        │   ├── ProfileExists          create() on a path that is taken
        │   ├── ProfileLocked          another process (or Profile) has it open
        │   ├── ProfileCorrupt         unreadable file, not a profile, or a record
        │   │                          that fails authentication
        │   └── ProfileTooNew          schema written by a newer SDK
        ├── StoreClosed                a call after close()
        ├── RecordNotFound             a call names a record that does not exist
        └── StoreConflict              a write would break a uniqueness rule

Messages never contain key, capability or plaintext bytes; paths are shown because
they are what the user needs to act on.
"""

from __future__ import annotations

from pathlib import Path

from pigeon_crypto.errors import PigeonError, StoreError, TransportError, WrongPassphrase
from protocol.errors import ErrorCode

__all__ = [
    "CertificatePinMismatch",
    "ClientError",
    "ConnectionLost",
    "ContactBlocked",
    "ContactNotReady",
    "IdentityChangeUnacknowledged",
    "IdentityMismatch",
    "InvalidContactLink",
    "NotRegistered",
    "PigeonError",
    "ProfileCorrupt",
    "ProfileError",
    "ProfileExists",
    "ProfileLocked",
    "ProfileNotFound",
    "ProfileTooNew",
    "RecordNotFound",
    "RelayError",
    "StoreClosed",
    "StoreConflict",
    "StoreError",
    "TransportError",
    "UnknownContact",
    "WrongPassphrase",
]


class ProfileError(StoreError):
    """A problem with the profile file itself.

    Attributes:
        path: the profile file.
    """

    def __init__(self, path: Path | str, message: str) -> None:
        super().__init__(message)
        self.path = Path(path)


class ProfileNotFound(ProfileError):
    """No profile exists at the path (use ``Profile.create``)."""

    def __init__(self, path: Path | str) -> None:
        super().__init__(path, f"no profile at {path}")


class ProfileExists(ProfileError):
    """``Profile.create`` was given a path where a file already exists."""

    def __init__(self, path: Path | str) -> None:
        super().__init__(path, f"a file already exists at {path}; refusing to overwrite it")


class ProfileLocked(ProfileError):
    """The profile is open in another process or another ``Profile`` object.

    Two writers would each load the same ratchet state and encrypt different messages
    under the same message keys, so a profile is opened by one owner at a time.
    """

    def __init__(self, path: Path | str) -> None:
        super().__init__(path, f"profile {path} is in use by another process or connection")


class ProfileCorrupt(ProfileError):
    """The file cannot be read as a profile: not SQLite, damaged, not a Pigeon
    profile, or a sealed record fails authentication.

    Attributes:
        reason: what was found wrong (safe to log).
    """

    def __init__(self, path: Path | str, reason: str) -> None:
        super().__init__(path, f"profile {path} is corrupted or not a Pigeon profile: {reason}")
        self.reason = reason


class ProfileTooNew(ProfileError):
    """The profile was written by a newer SDK (schema version above this code's).

    Attributes:
        found: the schema version in the file.
        supported: the newest version this code knows.
    """

    def __init__(self, path: Path | str, found: int, supported: int) -> None:
        super().__init__(
            path,
            f"profile {path} has schema version {found}; this SDK supports up to {supported}",
        )
        self.found = found
        self.supported = supported


class StoreClosed(StoreError):
    """The store (or its profile) was closed."""

    def __init__(self) -> None:
        super().__init__("the store is closed")


class RecordNotFound(StoreError):
    """An operation names a record that does not exist.

    Attributes:
        what: the kind of record, e.g. ``"conversation"``.
        key: a printable, non-secret key (an id or a hex prefix).
    """

    def __init__(self, what: str, key: object) -> None:
        super().__init__(f"no {what} {key}")
        self.what = what
        self.key = key


class StoreConflict(StoreError):
    """A write would break a uniqueness rule (an outbox id reused, a mailbox already
    owned by another contact, a second local identity).

    Attributes:
        what: the rule that was hit.
    """

    def __init__(self, what: str) -> None:
        super().__init__(f"conflict: {what}")
        self.what = what


# --- the networked client -----------------------------------------------------------------
#
#     PigeonError
#     ├── ClientError                  the client refuses an intent (nothing was sent)
#     │   ├── NotRegistered            no account in this profile yet (register first)
#     │   ├── UnknownContact           no such contact
#     │   ├── ContactNotReady          not accepted yet (state says which side)
#     │   ├── ContactBlocked           we blocked this contact
#     │   ├── IdentityChangeUnacknowledged
#     │   │                            their identity changed; acknowledge it first
#     │   ├── InvalidContactLink       a contact link that does not parse
#     │   └── IdentityMismatch         a bundle that is not the identity we were told
#     └── TransportError (pigeon_crypto)
#         ├── RelayError               the relay answered Error(code)
#         ├── ConnectionLost           the connection closed before the answer
#         └── CertificatePinMismatch   the relay's TLS certificate is not the pinned one


class ClientError(PigeonError):
    """The client refused an intent of the application; nothing was sent."""


class NotRegistered(ClientError):
    """The profile has no account yet: call ``AsyncClient.register`` first."""

    def __init__(self) -> None:
        super().__init__("this profile has no account yet: register first")


class UnknownContact(ClientError):
    """No contact with this account id.

    Attributes:
        account_id: the account asked for.
    """

    def __init__(self, account_id: bytes) -> None:
        super().__init__(f"no contact {account_id.hex()}")
        self.account_id = account_id


class ContactNotReady(ClientError):
    """The contact cannot receive messages yet.

    ``state`` INVITED: we invited them and wait for their acceptance (their mailbox is
    announced then); PENDING: they invited us, ``accept`` first.

    Attributes:
        account_id: the contact.
        state: its ``ContactState`` name.
    """

    def __init__(self, account_id: bytes, state: str) -> None:
        super().__init__(f"contact {account_id.hex()} is {state.lower()}, not accepted yet")
        self.account_id = account_id
        self.state = state


class ContactBlocked(ClientError):
    """We blocked this contact: unblock it to write to it again."""

    def __init__(self, account_id: bytes) -> None:
        super().__init__(f"contact {account_id.hex()} is blocked")
        self.account_id = account_id


class IdentityChangeUnacknowledged(ClientError):
    """The contact's identity changed without a signed rotation; the user must
    acknowledge it (``acknowledge_identity_change``) before anything is sent to them."""

    def __init__(self, account_id: bytes) -> None:
        super().__init__(f"the identity of {account_id.hex()} changed; acknowledge it first")
        self.account_id = account_id


class InvalidContactLink(ClientError):
    """A contact link (or QR payload) that does not parse.

    Attributes:
        reason: what is wrong (safe to show).
    """

    def __init__(self, reason: str) -> None:
        super().__init__(f"invalid contact link: {reason}")
        self.reason = reason


class IdentityMismatch(ClientError):
    """The relay handed out an identity that is not the one expected (a contact link's
    fingerprint, or a username binding that the account's identity did not sign)."""

    def __init__(self, account_id: bytes, what: str) -> None:
        super().__init__(f"identity of {account_id.hex()} does not match the {what}")
        self.account_id = account_id
        self.what = what


class RelayError(TransportError):
    """The relay answered a request with ``Error``.

    Attributes:
        code: the wire code (``protocol.ErrorCode`` when known, else the plain int).
        retry_after_ms: when the relay said to retry (rate limits, overload), else None.
    """

    def __init__(self, code: int, message: str | None = None,
                 retry_after_ms: int | None = None) -> None:
        try:
            name = ErrorCode(code).name
        except ValueError:
            name = str(code)
        super().__init__(f"relay error {name}" + (f": {message}" if message else ""))
        self.code = code
        self.retry_after_ms = retry_after_ms


class ConnectionLost(TransportError):
    """The connection to the relay closed (or never opened) before an answer came.

    Attributes:
        close_code: the WebSocket close code, when there was one.
    """

    def __init__(self, reason: str, close_code: int | None = None) -> None:
        super().__init__(reason)
        self.close_code = close_code


class CertificatePinMismatch(TransportError):
    """The relay's TLS certificate does not have the pinned SHA-256 fingerprint."""

    def __init__(self) -> None:
        super().__init__("the relay's TLS certificate does not match the pinned fingerprint")
