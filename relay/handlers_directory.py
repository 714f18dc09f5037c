"""Directory stages: prekey upload and bundle fetch, discoverable usernames.

Theory of operation (protocol §9.4 "Accounts, usernames, prekeys"; §10.7):

* Prekeys are opaque records of pigeon_crypto (§5). The relay parses only their framing,
  to read each one-time key's u32 id (and to refuse a KEM prekey of the wrong kind):
  signatures are the SDK's to verify, against the bundle's identity. An account keeps at
  most ``MAX_ONE_TIME_PREKEYS`` one-time keys of each kind (``QUOTA_EXCEEDED``).
* ``FetchBundle`` (anonymous allowed) consumes one one-time X25519 and one one-time KEM
  prekey atomically (a store write), falling back to the last-resort KEM prekey when
  none is left. It and ``LookupUsername`` cost a **lookup credit** from the connection's
  bucket and from its address's bucket (both ``config.lookup_credit_*``), so one
  connection cannot drain someone's one-time keys or sweep the username space, and
  reconnecting does not reset the limit. When a fetch leaves fewer than
  ``config.prekeys_low_threshold`` one-time keys of a kind, the owner's connections on
  this node get ``PrekeysLow``.
* Usernames: exact match only, no listing or prefix query (the store has none). A claim
  is signed by the account (``Purpose.USERNAME_BINDING`` over
  ``username_binding_payload``), verified here and stored, and handed out with every
  lookup so the looker verifies it against the account's bundle. A few names are
  refused by policy (``USERNAME_REJECTED``).
"""

from __future__ import annotations

from collections.abc import Awaitable, Callable
from typing import Final, TypeVar

from pigeon_crypto.errors import InvalidSignature, PigeonError
from pigeon_crypto.identity import IdentityPublicKey
from pigeon_crypto.prekeys import KemKind, KemPreKey, OneTimePreKey, SignedPreKey
from pigeon_crypto.signing import Purpose
from protocol import (
    Bundle,
    ClaimUsername,
    ErrorCode,
    FetchBundle,
    LookupUsername,
    Ok,
    ReleaseUsername,
    UploadPrekeys,
    UsernameFound,
    username_binding_payload,
)

from .connection import Connection
from .handlers_auth import prekeys_low
from .pipeline import FrameCtx, Refuse
from .ports import NotFound, OneTimePrekey, StoreConflict

__all__ = [
    "MAX_ONE_TIME_PREKEYS",
    "RESERVED_USERNAMES",
    "claim_username",
    "fetch_bundle",
    "lookup_username",
    "release_username",
    "take_lookup_credit",
    "upload_prekeys",
]

T = TypeVar("T")

MAX_ONE_TIME_PREKEYS: Final = 1000
"""One-time prekeys of each kind an account may keep at the relay (10 uploads' worth)."""
RESERVED_USERNAMES: Final = frozenset({
    "abuse", "admin", "administrator", "help", "moderator", "official", "pigeon",
    "postmaster", "relay", "root", "security", "support", "system", "webmaster",
})
"""Names refused by policy: they would look like the relay's own voice."""


def take_lookup_credit(ctx: FrameCtx[object]) -> Awaitable[None] | None:
    """Stage: one lookup credit from the connection and from its address (all or none)."""
    conn = ctx.conn
    node = conn.node
    now = node.monotonic()
    wait = conn.lookups.try_take(now)
    if wait == 0.0:
        wait = node.lookup_credits.try_take(conn.remote, now)
        if wait == 0.0:
            return None
        conn.lookups.give_back()
    node.metrics.credit_refused("lookup")
    raise Refuse(ErrorCode.RATE_LIMITED, retry_after_ms=max(1, int(wait * 1000) + 1))


def _parse(what: str, parse: Callable[[bytes], T], data: bytes) -> T:
    try:
        return parse(data)
    except PigeonError:
        raise Refuse(ErrorCode.INVALID_FIELD, message=f"{what} does not parse") from None


async def upload_prekeys(ctx: FrameCtx[UploadPrekeys]) -> None:
    conn, frame = ctx.conn, ctx.frame
    store = conn.node.store
    account_id = conn.account_id
    assert account_id is not None  # require_auth ran
    if frame.signed_prekey is not None:
        _parse("signed_prekey", SignedPreKey.from_bytes, frame.signed_prekey)
    if frame.kem_prekey is not None:
        kem = _parse("kem_prekey", KemPreKey.from_bytes, frame.kem_prekey)
        if kem.kind is not KemKind.LAST_RESORT:
            raise Refuse(ErrorCode.INVALID_FIELD, message="kem_prekey must be last-resort")
    one_time: list[OneTimePrekey] = []
    for data in frame.one_time_prekeys:
        key = _parse("one_time_prekeys", OneTimePreKey.from_bytes, data)
        one_time.append(OneTimePrekey(key_id=key.key_id, data=data))
    one_time_kem: list[OneTimePrekey] = []
    for data in frame.one_time_kem_prekeys:
        kem = _parse("one_time_kem_prekeys", KemPreKey.from_bytes, data)
        if kem.kind is not KemKind.ONE_TIME:
            raise Refuse(ErrorCode.INVALID_FIELD,
                         message="one_time_kem_prekeys must be one-time")
        one_time_kem.append(OneTimePrekey(key_id=kem.key_id, data=data))
    if one_time or one_time_kem:
        try:
            counts = await store.prekey_counts(account_id)
        except NotFound:
            raise Refuse(ErrorCode.UNKNOWN_ACCOUNT) from None
        if (counts.one_time_x25519 + len(one_time) > MAX_ONE_TIME_PREKEYS
                or counts.one_time_kem + len(one_time_kem) > MAX_ONE_TIME_PREKEYS):
            raise Refuse(ErrorCode.QUOTA_EXCEEDED, message="too many one-time prekeys")
    try:
        await store.upload_prekeys(account_id=account_id, signed_prekey=frame.signed_prekey,
                                   last_resort_kem=frame.kem_prekey, one_time_x25519=one_time,
                                   one_time_kem=one_time_kem)
    except NotFound:
        raise Refuse(ErrorCode.UNKNOWN_ACCOUNT) from None
    await conn.send(Ok(request_id=ctx.request_id).encode())


async def fetch_bundle(ctx: FrameCtx[FetchBundle]) -> None:
    conn, frame = ctx.conn, ctx.frame
    node = conn.node
    try:
        record = await node.store.fetch_prekey_bundle(frame.account_id)
    except NotFound:
        raise Refuse(ErrorCode.UNKNOWN_ACCOUNT) from None
    if record is None:
        raise Refuse(ErrorCode.NOT_FOUND, message="no bundle published")
    kem = record.one_time_kem.data if record.one_time_kem is not None else record.last_resort_kem
    assert kem is not None  # the store hands out no bundle without a KEM prekey
    await conn.send(Bundle(
        request_id=ctx.request_id,
        account_id=record.account_id,
        identity_key=record.identity_key,
        signed_prekey=record.signed_prekey,
        kem_prekey=kem,
        one_time_prekey=(record.one_time_x25519.data
                         if record.one_time_x25519 is not None else None),
        contact_mailbox_id=record.contact_mailbox_id,
        contact_capability=record.contact_capability,
        rotations=record.rotations,
    ).encode())
    notice = prekeys_low(record.remaining, node.config.prekeys_low_threshold)
    if notice is not None:
        # Never waits on the owner's sockets: a stalled owner must not stall the fetcher.
        for owner in list(node.sessions.get(frame.account_id, ())):
            owner.send_notice(notice)


async def _current_identity(conn: Connection) -> IdentityPublicKey:
    assert conn.account_id is not None
    record = await conn.node.store.get_account(conn.account_id)
    if record is None:
        raise Refuse(ErrorCode.UNKNOWN_ACCOUNT)
    return IdentityPublicKey.from_bytes(record.identity_key)


async def claim_username(ctx: FrameCtx[ClaimUsername]) -> None:
    conn, frame = ctx.conn, ctx.frame
    node = conn.node
    if frame.account_id != conn.account_id:
        raise Refuse(ErrorCode.FORBIDDEN, message="a claim names the authenticated account")
    if frame.username in RESERVED_USERNAMES:
        raise Refuse(ErrorCode.USERNAME_REJECTED)
    identity = await _current_identity(conn)
    try:
        identity.verify(Purpose.USERNAME_BINDING,
                        username_binding_payload(frame.username, frame.account_id),
                        frame.signature)
    except InvalidSignature:
        raise Refuse(ErrorCode.AUTH_FAILED, message="binding signature") from None
    try:
        await node.store.claim_username(account_id=frame.account_id, username=frame.username,
                                        binding=frame.signature, now_ms=node.clock_ms())
    except StoreConflict:
        raise Refuse(ErrorCode.USERNAME_TAKEN) from None
    except NotFound:
        raise Refuse(ErrorCode.UNKNOWN_ACCOUNT) from None
    await conn.send(Ok(request_id=ctx.request_id).encode())


async def release_username(ctx: FrameCtx[ReleaseUsername]) -> None:
    conn, frame = ctx.conn, ctx.frame
    store = conn.node.store
    record = await store.lookup_username(frame.username)
    if record is None:
        raise Refuse(ErrorCode.NOT_FOUND)
    if conn.account_id is None or record.account_id != conn.account_id:
        raise Refuse(ErrorCode.FORBIDDEN)
    await store.release_username(conn.account_id)
    await conn.send(Ok(request_id=ctx.request_id).encode())


async def lookup_username(ctx: FrameCtx[LookupUsername]) -> None:
    conn, frame = ctx.conn, ctx.frame
    record = await conn.node.store.lookup_username(frame.username)
    if record is None:
        raise Refuse(ErrorCode.NOT_FOUND)
    await conn.send(UsernameFound(request_id=ctx.request_id, username=record.username,
                                  account_id=record.account_id,
                                  signature=record.binding).encode())
