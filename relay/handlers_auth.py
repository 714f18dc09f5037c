"""Session and account stages: Connect, Auth, Register, Ping, RotateIdentity, DeleteAccount.

Theory of operation (protocol §9.1, §9.12):

* ``Connect`` is the first frame of a connection (the reader enforces it) and is answered
  by ``Challenge(relay_id, nonce, server_time_ms)``: 32 fresh random bytes, single use.
* ``Auth`` and ``Register`` carry an Ed25519 signature, ``Purpose.RELAY_CHALLENGE``, over
  ``challenge_payload(relay_id, nonce, server_time_ms, account_id)``. The first of them
  **consumes** the challenge whatever the outcome (a second attempt is
  ``STALE_CHALLENGE``: reconnect for a new one), and a challenge older than
  ``config.challenge_window_ms`` is ``STALE_CHALLENGE`` too. Then: ``Auth`` for an
  unknown account is ``UNKNOWN_ACCOUNT``; a signature that does not verify with the
  account's current identity key (wrong key, or made for another purpose: the purpose
  is part of the signed bytes) is ``AUTH_FAILED``.
* ``Register`` also checks that the identity key parses (its own DH signature verifies)
  and that ``account_id == account_id_for(identity)`` (``INVALID_FIELD``), then the proof
  of possession (the same challenge signature, ``AUTH_FAILED``). Registering an existing
  account with the same key answers ``Welcome(new_account=False)`` (a lost ``Welcome``
  can be retried); with another key, ``ACCOUNT_EXISTS``. On an invitation-only relay a
  new account needs a code (``INVITE_REQUIRED``), consumed in the account's transaction
  (``INVITE_INVALID`` when unknown, used or expired).
* ``RotateIdentity`` carries an ``IdentityRotation`` (both signatures verified on parsing)
  from the account's current key with the next serial, and a signature by the **new**
  key over this connection's challenge payload. The store applies it only if the key
  and the chain length are still those it was checked against, so of two concurrent
  rotations from one key one is refused ``INVALID_FIELD``. A chain holds at most
  ``MAX_IDENTITY_ROTATIONS`` (a ``Bundle`` carries it whole): the next is
  ``QUOTA_EXCEEDED``.
* ``DeleteAccount`` removes the account and everything it owns in one store
  transaction, tells live subscriptions that its mailboxes are gone, answers ``Ok`` and
  closes every connection of the account.
"""

from __future__ import annotations

import hmac
import logging
import secrets
from collections.abc import Awaitable
from typing import Final

from pigeon_crypto.errors import InvalidSignature, PigeonError, StoreError
from pigeon_crypto.identity import IdentityPublicKey, IdentityRotation, account_id_for
from pigeon_crypto.signing import Purpose
from protocol import (
    Auth,
    Challenge,
    Connect,
    DeleteAccount,
    ErrorCode,
    Ok,
    Ping,
    Pong,
    PrekeysLow,
    Register,
    RotateIdentity,
    Welcome,
    challenge_payload,
)
from protocol.limits import MAX_IDENTITY_ROTATIONS, NONCE_SIZE

from .connection import Connection
from .node import IDENTITY_RECHECK_MS
from .pipeline import FrameCtx, Halt, Refuse
from .ports import InviteRejected, NotFound, PrekeyCounts, StoreConflict, invite_code_hash

__all__ = [
    "current_identity",
    "delete_account",
    "handle_auth",
    "handle_connect",
    "handle_ping",
    "handle_register",
    "notify_prekeys_low",
    "prekeys_low",
    "recent_identity",
    "require_auth",
    "rotate_identity",
]

_log = logging.getLogger("pigeon.relay.ws")

_U32_MAX: Final = 0xFFFF_FFFF


def require_auth(ctx: FrameCtx[object]) -> None:
    """Stage: account-bound frames need an authenticated connection."""
    if ctx.conn.account_id is None:
        raise Refuse(ErrorCode.UNAUTHORIZED)


def current_identity(ctx: FrameCtx[object]) -> Awaitable[None]:
    """Stage (after :func:`require_auth`): what changes or deletes the account's things
    needs the key this session proved to be the account's still (one store read)."""
    return ctx.conn.require_current_identity()


def recent_identity(ctx: FrameCtx[object]) -> Awaitable[None] | None:
    """Stage: :func:`current_identity` at most every ``IDENTITY_RECHECK_MS`` (acks)."""
    return ctx.conn.identity_recent(IDENTITY_RECHECK_MS)


async def handle_connect(ctx: FrameCtx[Connect]) -> None:
    conn = ctx.conn
    if conn.challenge is not None:
        raise Refuse(ErrorCode.UNEXPECTED_FRAME, message="Connect was already received")
    node = conn.node
    nonce, now = secrets.token_bytes(NONCE_SIZE), node.clock_ms()
    conn.challenge = (nonce, now)
    conn.connected = True
    await conn.send(Challenge(request_id=ctx.request_id, relay_id=node.relay_id, nonce=nonce,
                              server_time_ms=now).encode())


def handle_ping(ctx: FrameCtx[Ping]) -> object:
    return ctx.conn.send(Pong(request_id=ctx.request_id).encode())


def _consume_challenge(conn: Connection) -> tuple[bytes, int]:
    """The connection's challenge, consumed now whatever happens next."""
    if conn.account_id is not None:
        raise Refuse(ErrorCode.UNEXPECTED_FRAME, message="already authenticated")
    if conn.challenge is None or conn.challenge_used:
        raise Refuse(ErrorCode.STALE_CHALLENGE, message="challenge already used")
    conn.challenge_used = True
    nonce, issued = conn.challenge
    if conn.node.clock_ms() - issued > conn.node.config.challenge_window_ms:
        raise Refuse(ErrorCode.STALE_CHALLENGE, message="challenge expired")
    return nonce, issued


def _verify_challenge(conn: Connection, identity: IdentityPublicKey, account_id: bytes,
                      signature: bytes, nonce: bytes, issued: int) -> None:
    payload = challenge_payload(conn.node.relay_id, nonce, issued, account_id)
    try:
        identity.verify(Purpose.RELAY_CHALLENGE, payload, signature)
    except InvalidSignature:
        raise Refuse(ErrorCode.AUTH_FAILED) from None


async def _welcome(ctx: FrameCtx[Auth] | FrameCtx[Register], account_id: bytes,
                   identity_key: bytes, *, new_account: bool) -> None:
    conn = ctx.conn
    conn.authenticate(account_id, identity_key)
    await conn.send(Welcome(request_id=ctx.request_id, account_id=account_id,
                            server_time_ms=conn.node.clock_ms(),
                            new_account=new_account).encode())
    if not new_account:
        try:
            await notify_prekeys_low(conn, account_id)
        except StoreError as exc:  # Welcome is out: the request has its one answer
            _log.warning("prekeys-low notice skipped: store failed: %s", type(exc).__name__)


async def handle_auth(ctx: FrameCtx[Auth]) -> None:
    conn, frame = ctx.conn, ctx.frame
    nonce, issued = _consume_challenge(conn)
    record = await conn.node.store.get_account(frame.account_id)
    if record is None:
        raise Refuse(ErrorCode.UNKNOWN_ACCOUNT)
    identity = IdentityPublicKey.from_bytes(record.identity_key)  # verified at registration
    _verify_challenge(conn, identity, frame.account_id, frame.signature, nonce, issued)
    await _welcome(ctx, frame.account_id, record.identity_key, new_account=False)


async def handle_register(ctx: FrameCtx[Register]) -> None:
    conn, frame = ctx.conn, ctx.frame
    node = conn.node
    nonce, issued = _consume_challenge(conn)
    try:
        identity = IdentityPublicKey.from_bytes(frame.identity_key)
    except PigeonError:
        raise Refuse(ErrorCode.INVALID_FIELD, message="identity_key does not parse") from None
    if not hmac.compare_digest(account_id_for(identity), frame.account_id):
        raise Refuse(ErrorCode.INVALID_FIELD, message="account_id is not the identity's")
    _verify_challenge(conn, identity, frame.account_id, frame.signature, nonce, issued)
    for _ in range(2):  # a concurrent registration of the same account: look again
        record = await node.store.get_account(frame.account_id)
        if record is not None:
            if not hmac.compare_digest(record.identity_key, frame.identity_key):
                raise Refuse(ErrorCode.ACCOUNT_EXISTS)
            await _welcome(ctx, frame.account_id, frame.identity_key, new_account=False)
            return
        code_hash = None
        if node.config.invite_only:
            if frame.invite_code is None:
                raise Refuse(ErrorCode.INVITE_REQUIRED)
            code_hash = invite_code_hash(frame.invite_code)
        try:
            await node.store.create_account(account_id=frame.account_id,
                                            identity_key=frame.identity_key,
                                            now_ms=node.clock_ms(), invite_code_hash=code_hash)
        except InviteRejected:
            raise Refuse(ErrorCode.INVITE_INVALID) from None
        except StoreConflict:
            continue
        await _welcome(ctx, frame.account_id, frame.identity_key, new_account=True)
        return
    raise Refuse(ErrorCode.ACCOUNT_EXISTS)  # pragma: no cover - created and gone meanwhile


def prekeys_low(counts: PrekeyCounts, threshold: int) -> bytes | None:
    """The ``PrekeysLow`` frame for *counts*, or None if neither kind runs under
    *threshold*."""
    if counts.one_time_x25519 >= threshold and counts.one_time_kem >= threshold:
        return None
    return PrekeysLow(one_time_prekeys=min(counts.one_time_x25519, _U32_MAX),
                      one_time_kem_prekeys=min(counts.one_time_kem, _U32_MAX)).encode()


async def notify_prekeys_low(conn: Connection, account_id: bytes) -> None:
    """Send ``PrekeysLow`` to *conn* if the account's one-time prekeys run low."""
    node = conn.node
    try:
        counts = await node.store.prekey_counts(account_id)
    except NotFound:
        return
    frame = prekeys_low(counts, node.config.prekeys_low_threshold)
    if frame is not None:
        await conn.send(frame)


_NOT_NEXT_ROTATION: Final = "rotation must start from the current key with the next serial"


async def rotate_identity(ctx: FrameCtx[RotateIdentity]) -> None:
    conn, frame = ctx.conn, ctx.frame
    node = conn.node
    account_id = conn.account_id
    assert account_id is not None and conn.challenge is not None  # require_auth ran
    try:
        rotation = IdentityRotation.from_bytes(frame.rotation)
    except PigeonError:
        raise Refuse(ErrorCode.INVALID_FIELD, message="rotation does not verify") from None
    if not hmac.compare_digest(rotation.account_id, account_id):
        raise Refuse(ErrorCode.FORBIDDEN, message="rotation of another account")
    record = await node.store.get_account(account_id)
    if record is None:
        raise Refuse(ErrorCode.UNKNOWN_ACCOUNT)
    if (not hmac.compare_digest(rotation.old.to_bytes(), record.identity_key)
            or rotation.serial != record.rotation_count + 1):
        raise Refuse(ErrorCode.INVALID_FIELD, message=_NOT_NEXT_ROTATION)
    if rotation.serial > MAX_IDENTITY_ROTATIONS:
        # A Bundle carries the whole chain, and holds no more than this many.
        raise Refuse(ErrorCode.QUOTA_EXCEEDED, message="identity rotated too often")
    nonce, issued = conn.challenge
    _verify_challenge(conn, rotation.new, account_id, frame.signature, nonce, issued)
    new_key = rotation.new.to_bytes()
    try:
        await node.store.rotate_identity(
            account_id=account_id, identity_key=new_key, rotation=frame.rotation,
            now_ms=node.clock_ms(), expect_key=record.identity_key,
            expect_rotations=record.rotation_count)
    except StoreConflict:  # another rotation committed since the read above
        raise Refuse(ErrorCode.INVALID_FIELD, message=_NOT_NEXT_ROTATION) from None
    except NotFound:
        raise Refuse(ErrorCode.UNKNOWN_ACCOUNT) from None
    conn.set_identity(new_key)
    # Every other session of the account proved the old key: end them, here and on the
    # other nodes (whoever else holds the old key keeps nothing).
    await node.bus.sessions_revoked(account_id)
    await conn.send(Ok(request_id=ctx.request_id).encode())
    node.close_soon([c for c in node.sessions.get(account_id, ()) if c is not conn],
                    reason=b"identity rotated")  # not awaited: this session reads on


async def delete_account(ctx: FrameCtx[DeleteAccount]) -> None:
    conn = ctx.conn
    node = conn.node
    account_id = conn.account_id
    assert account_id is not None  # require_auth ran
    mailboxes = await node.store.list_mailboxes(account_id)
    await node.store.delete_account(account_id)
    for record in mailboxes:
        await node.close_mailbox(record.mailbox_id)
    await node.bus.sessions_revoked(account_id)
    await conn.send(Ok(request_id=ctx.request_id).encode())
    await node.close_sessions(account_id, reason=b"account deleted")
    raise Halt
