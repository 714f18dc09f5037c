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

from pigeon_crypto.errors import StoreError, WrongPassphrase

__all__ = [
    "ProfileCorrupt",
    "ProfileError",
    "ProfileExists",
    "ProfileLocked",
    "ProfileNotFound",
    "ProfileTooNew",
    "RecordNotFound",
    "StoreClosed",
    "StoreConflict",
    "StoreError",
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
