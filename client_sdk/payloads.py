"""SDK-defined byte formats: the contact request (PQXDH initiation payload) and the
contact link. Pure: no I/O, no clock, no randomness.

Contact request (version 1): the plaintext of the first ratchet message of a PQXDH
initiation (docs/sdk.md, "Addressing"). msgpack, integer keys, optional
fields omitted; padded with ``pigeon_crypto.padding.pad_message`` before ``initiate``::

    [1, {1: account_id bin[16],        the initiator's account
         2: mailbox_id bin[16],        the pairwise mailbox the initiator created for us
         3: capability bin[32],        its send capability
         4: relay_url str[1..512]?,    the relay holding that mailbox
         5: display_name str[0..128]?, the initiator's profile name
         6: rotations array[0..64] of bin[1..512]?}]   the initiator's identity
                                                       rotations, oldest first

The responder checks that ``account_id`` belongs to the identity PQXDH authenticated
(``account_id_for`` of the first identity, then the rotation chain up to it), so nobody
can claim someone else's account id. Unknown keys are ignored; a newer version is
``UnsupportedContactRequest``.

Contact link (version 1), shareable as text or as a QR code::

    pigeon://contact/1/<account id, 32 hex digits>?relay=<URL, percent-encoded>&fp=<64 hex>

``fp`` (optional) is ``identity_fingerprint`` of the account's identity when the link
was made: the adder refuses a bundle whose identity chain does not contain it.
"""

from __future__ import annotations

import hashlib
import hmac
import urllib.parse
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any, Final

import msgpack

from pigeon_crypto.errors import DecodeError
from pigeon_crypto.identity import IdentityPublicKey, IdentityRotation
from protocol import limits as L

from .errors import InvalidContactLink

__all__ = [
    "CONTACT_LINK_PREFIX",
    "CONTACT_REQUEST_VERSION",
    "ContactLink",
    "ContactRequest",
    "identity_fingerprint",
    "identity_in_chain",
]

CONTACT_REQUEST_VERSION: Final = 1
CONTACT_LINK_PREFIX: Final = "pigeon://contact/1/"
_MAX_REQUEST: Final = 40_000
"""Largest encoded request: 64 rotations of 407 bytes plus the fixed fields."""


def identity_fingerprint(identity: IdentityPublicKey) -> bytes:
    """SHA-256 of the 129-byte identity: what a contact link pins."""
    return hashlib.sha256(identity.to_bytes()).digest()


def identity_in_chain(fingerprint: bytes, initial: IdentityPublicKey,
                      rotations: Sequence[IdentityRotation]) -> bool:
    """Whether *fingerprint* names the initial identity or one reached by *rotations*
    (a link made before a rotation stays valid after it)."""
    keys = [initial, *(r.new for r in rotations)]
    found = False
    for key in keys:  # no early exit: every comparison runs
        found |= hmac.compare_digest(identity_fingerprint(key), fingerprint)
    return found


def _bin(body: dict[Any, Any], key: int, size: int, what: str) -> bytes:
    value = body.get(key)
    if type(value) is not bytes or len(value) != size:
        raise DecodeError("ContactRequest", f"{what} must be {size} bytes")
    return value


def _opt_str(body: dict[Any, Any], key: int, lo: int, hi: int, what: str) -> str | None:
    value = body.get(key)
    if value is None:
        return None
    if type(value) is not str or not lo <= len(value.encode()) <= hi:
        raise DecodeError("ContactRequest", f"bad {what}")
    return value


@dataclass(frozen=True, slots=True, kw_only=True)
class ContactRequest:
    """The initiator's half of a new contact, inside the PQXDH initiation."""

    account_id: bytes
    mailbox_id: bytes
    capability: bytes = field(repr=False)
    relay_url: str | None = None
    display_name: str | None = field(default=None, repr=False)
    rotations: tuple[bytes, ...] = field(default=(), repr=False)

    def encode(self) -> bytes:
        body: dict[int, Any] = {1: self.account_id, 2: self.mailbox_id, 3: self.capability}
        if self.relay_url is not None:
            body[4] = self.relay_url
        if self.display_name is not None:
            body[5] = self.display_name
        if self.rotations:
            body[6] = list(self.rotations)
        packed: bytes = msgpack.packb([CONTACT_REQUEST_VERSION, body], use_bin_type=True)
        return packed

    @classmethod
    def decode(cls, data: bytes) -> ContactRequest:
        """Strict decode.

        Raises:
            DecodeError: not a version-1 contact request (any malformation), or an
                unknown version.
        """
        if len(data) > _MAX_REQUEST:
            raise DecodeError("ContactRequest", "too large")
        try:
            obj = msgpack.unpackb(
                data, raw=False, strict_map_key=False, use_list=False,
                max_bin_len=L.MAX_ROTATION_SIZE, max_str_len=L.MAX_RELAY_URL_SIZE,
                max_array_len=L.MAX_IDENTITY_ROTATIONS, max_map_len=16, max_ext_len=0)
        except (ValueError, msgpack.UnpackException) as exc:
            raise DecodeError("ContactRequest", "not msgpack") from exc
        if type(obj) is not tuple or len(obj) != 2 or type(obj[1]) is not dict:
            raise DecodeError("ContactRequest", "expected [version, map]")
        if obj[0] != CONTACT_REQUEST_VERSION or type(obj[0]) is not int:
            raise DecodeError("ContactRequest", f"unsupported version {obj[0]!r}")
        body = obj[1]
        rotations = body.get(6, ())
        if type(rotations) is not tuple or any(type(r) is not bytes for r in rotations):
            raise DecodeError("ContactRequest", "bad rotations")
        return cls(
            account_id=_bin(body, 1, L.ACCOUNT_ID_SIZE, "account_id"),
            mailbox_id=_bin(body, 2, L.MAILBOX_ID_SIZE, "mailbox_id"),
            capability=_bin(body, 3, 32, "capability"),
            relay_url=_opt_str(body, 4, 1, L.MAX_RELAY_URL_SIZE, "relay_url"),
            display_name=_opt_str(body, 5, 0, L.MAX_DISPLAY_NAME_SIZE, "display_name"),
            rotations=rotations,
        )


@dataclass(frozen=True, slots=True, kw_only=True)
class ContactLink:
    """What a contact link carries: the account, its relay and optionally a pin."""

    account_id: bytes
    relay_url: str | None = None
    fingerprint: bytes | None = None

    def to_uri(self) -> str:
        query = {}
        if self.relay_url is not None:
            query["relay"] = self.relay_url
        if self.fingerprint is not None:
            query["fp"] = self.fingerprint.hex()
        suffix = "?" + urllib.parse.urlencode(query) if query else ""
        return CONTACT_LINK_PREFIX + self.account_id.hex() + suffix

    @classmethod
    def parse(cls, uri: str) -> ContactLink:
        """Parse a link (surrounding whitespace allowed).

        Raises:
            InvalidContactLink: anything but a version-1 contact link.
        """
        text = uri.strip()
        if not text.startswith(CONTACT_LINK_PREFIX):
            raise InvalidContactLink(f"must start with {CONTACT_LINK_PREFIX}")
        rest = text[len(CONTACT_LINK_PREFIX):]
        hex_id, _, query = rest.partition("?")
        try:
            account_id = bytes.fromhex(hex_id)
        except ValueError:
            raise InvalidContactLink("the account id is not hex") from None
        if len(account_id) != L.ACCOUNT_ID_SIZE:
            raise InvalidContactLink("the account id must be 16 bytes")
        try:
            fields = urllib.parse.parse_qs(query, strict_parsing=bool(query),
                                           max_num_fields=8)
        except ValueError:
            raise InvalidContactLink("malformed query") from None
        if any(len(v) != 1 for v in fields.values()):
            raise InvalidContactLink("a field is repeated")
        relay = fields.get("relay", [None])[0]
        if relay is not None and not relay.startswith(("ws://", "wss://", "http://",
                                                       "https://")):
            raise InvalidContactLink("the relay must be a ws(s):// or http(s):// URL")
        fp_hex = fields.get("fp", [None])[0]
        fingerprint = None
        if fp_hex is not None:
            try:
                fingerprint = bytes.fromhex(fp_hex)
            except ValueError:
                raise InvalidContactLink("the fingerprint is not hex") from None
            if len(fingerprint) != 32:
                raise InvalidContactLink("the fingerprint must be 32 bytes")
        return cls(account_id=account_id, relay_url=relay, fingerprint=fingerprint)
