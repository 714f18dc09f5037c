"""Sessions against the real relay: registration, login by signed challenge, their failures,
what an anonymous connection may do, invitation-only registration."""

from __future__ import annotations

import asyncio
import os
from collections.abc import Iterator

import pytest

from pigeon_crypto.signing import Purpose
from protocol import (
    Ack,
    Auth,
    Challenge,
    Connect,
    CreateMailbox,
    DeleteAccount,
    ErrorCode,
    FetchBundle,
    LookupUsername,
    Ping,
    Pong,
    Register,
    RequestBlobDownload,
    RequestBlobUpload,
    Subscribe,
    UploadPrekeys,
    Welcome,
)

from ._relay_fixtures import admin_json
from .conftest import RelayProcess, launch_relay
from .wsclient import Identity, RelayClient, anonymous, connect_user

CHALLENGE_WINDOW_S = 1.5


@pytest.fixture(scope="module")
def relay(tmp_path_factory: pytest.TempPathFactory) -> Iterator[RelayProcess]:
    rp = launch_relay(tmp_path_factory.mktemp("ws-auth"),
                      ["--challenge-window", f"{int(CHALLENGE_WINDOW_S * 1000)}ms"])
    yield rp
    rp.kill()


async def test_register_then_auth_on_new_connections(relay: RelayProcess) -> None:
    me = Identity()
    first = await RelayClient.open(relay.url)
    challenge = await first.hello()
    assert len(challenge.nonce) == 32 and len(challenge.relay_id) in (16, 32)
    welcome = await first.register(me)
    assert welcome.account_id == me.account_id and welcome.new_account
    # A lost Welcome can be retried: registering again with the same key succeeds.
    again = await RelayClient.open(relay.url)
    assert not (await again.register(me)).new_account
    third = await RelayClient.open(relay.url)
    third_challenge = await third.hello()
    assert third_challenge.nonce != challenge.nonce  # fresh per connection
    assert third_challenge.relay_id == challenge.relay_id  # stable
    assert (await third.auth(me)).account_id == me.account_id
    for c in (first, again, third):
        await c.close()


async def test_auth_failures(relay: RelayProcess) -> None:
    me, stranger = Identity(), Identity()
    await (await connect_user(relay.url, identity=me)).close()

    async def attempt(sign: Identity, *, account: bytes, purpose: Purpose
                      = Purpose.RELAY_CHALLENGE) -> tuple[RelayClient, int]:
        c = await anonymous(relay.url)
        sig = c.sign_challenge(sign, account_id=account, purpose=purpose)
        err = await c.error(lambda rid: Auth(request_id=rid, account_id=account, signature=sig))
        return c, err.code

    # Wrong key: the stranger signs for my account.
    c, code = await attempt(stranger, account=me.account_id)
    assert code == ErrorCode.AUTH_FAILED
    # The challenge is consumed by the failed attempt: even the right signature is stale now.
    sig = c.sign_challenge(me)
    err = await c.error(lambda rid: Auth(request_id=rid, account_id=me.account_id, signature=sig))
    assert err.code == ErrorCode.STALE_CHALLENGE
    await c.close()
    # My key, but a signature made for another purpose over the same bytes.
    c, code = await attempt(me, account=me.account_id, purpose=Purpose.USERNAME_BINDING)
    assert code == ErrorCode.AUTH_FAILED
    await c.close()
    # An account the relay has never seen.
    c, code = await attempt(stranger, account=stranger.account_id)
    assert code == ErrorCode.UNKNOWN_ACCOUNT
    await c.close()
    # A challenge answered after the relay's window.
    c = await anonymous(relay.url)
    await asyncio.sleep(CHALLENGE_WINDOW_S + 0.3)
    sig = c.sign_challenge(me)
    err = await c.error(lambda rid: Auth(request_id=rid, account_id=me.account_id, signature=sig))
    assert err.code == ErrorCode.STALE_CHALLENGE
    # The connection stays usable (anonymously).
    assert isinstance(await c.request(lambda rid: Ping(request_id=rid)), Pong)
    await c.close()


async def test_register_checks_identity_and_proof(relay: RelayProcess) -> None:
    me, other = Identity(), Identity()
    c = await anonymous(relay.url)
    sig = c.sign_challenge(me, account_id=other.account_id)
    err = await c.error(lambda rid: Register(request_id=rid, account_id=other.account_id,
                                             identity_key=me.public, signature=sig))
    assert err.code == ErrorCode.INVALID_FIELD  # account id is not this identity's
    await c.close()
    c = await anonymous(relay.url)
    sig = c.sign_challenge(other, account_id=me.account_id)  # no proof of possession
    err = await c.error(lambda rid: Register(request_id=rid, account_id=me.account_id,
                                             identity_key=me.public, signature=sig))
    assert err.code == ErrorCode.AUTH_FAILED
    await c.close()
    c = await anonymous(relay.url)
    err = await c.error(lambda rid: Register(request_id=rid, account_id=me.account_id,
                                             identity_key=os.urandom(129),
                                             signature=bytes(64)))
    assert err.code == ErrorCode.INVALID_FIELD  # not an identity key
    await c.close()


async def test_lifecycle_rules(relay: RelayProcess) -> None:
    c = await RelayClient.open(relay.url)
    err = await c.error(lambda rid: Ping(request_id=rid))
    assert err.code == ErrorCode.UNEXPECTED_FRAME  # Connect comes first
    assert isinstance(await c.request(lambda rid: Connect(request_id=rid)), Challenge)
    err = await c.error(lambda rid: Connect(request_id=rid))
    assert err.code == ErrorCode.UNEXPECTED_FRAME
    c.challenge = None
    await c.close()
    me = Identity()
    c = await connect_user(relay.url, identity=me)
    sig = c.sign_challenge(me)
    err = await c.error(lambda rid: Auth(request_id=rid, account_id=me.account_id, signature=sig))
    assert err.code == ErrorCode.UNEXPECTED_FRAME  # authenticates at most once
    await c.close()


async def test_anonymous_connections_may_only_send_fetch_lookup_download_ping(
        relay: RelayProcess) -> None:
    c = await anonymous(relay.url)
    needs_account = [
        lambda rid: CreateMailbox(request_id=rid, capability_hash=bytes(32)),
        lambda rid: Subscribe(request_id=rid, mailbox_ids=(bytes(16),)),
        lambda rid: UploadPrekeys(request_id=rid, one_time_prekeys=(bytes(37),)),
        lambda rid: RequestBlobUpload(request_id=rid, size=10, chunk_count=1),
        lambda rid: DeleteAccount(request_id=rid),
        lambda rid: Ack(request_id=rid, mailbox_id=bytes(16), up_to_seq=1),
    ]
    for make in needs_account:
        assert (await c.error(make)).code == ErrorCode.UNAUTHORIZED
    assert isinstance(await c.request(lambda rid: Ping(request_id=rid)), Pong)
    allowed = [
        (lambda rid: FetchBundle(request_id=rid, account_id=os.urandom(16)),
         ErrorCode.UNKNOWN_ACCOUNT),
        (lambda rid: LookupUsername(request_id=rid, username="nobody_here"),
         ErrorCode.NOT_FOUND),
        (lambda rid: RequestBlobDownload(request_id=rid, blob_id=os.urandom(16)),
         ErrorCode.NOT_FOUND),
    ]
    for make, code in allowed:
        assert (await c.error(make)).code == code  # answered, not UNAUTHORIZED
    await c.close()


async def test_invitation_only_registration(tmp_path_factory: pytest.TempPathFactory) -> None:
    rp = launch_relay(tmp_path_factory.mktemp("ws-invite"), ["--invite-only"])
    try:
        c = await anonymous(rp.url)
        me = Identity()
        sig = c.sign_challenge(me)
        err = await c.error(lambda rid: Register(request_id=rid, account_id=me.account_id,
                                                 identity_key=me.public, signature=sig))
        assert err.code == ErrorCode.INVITE_REQUIRED
        await c.close()
        c = await anonymous(rp.url)
        sig = c.sign_challenge(me)
        err = await c.error(lambda rid: Register(request_id=rid, account_id=me.account_id,
                                                 identity_key=me.public, signature=sig,
                                                 invite_code="not-a-code"))
        assert err.code == ErrorCode.INVITE_INVALID
        await c.close()
        code = admin_json(rp, "invite", "create")["codes"][0]
        c = await RelayClient.open(rp.url)
        assert (await c.register(me, invite=code)).new_account
        await c.close()
        # The code is used up; the account itself may log in and re-register.
        c = await RelayClient.open(rp.url)
        welcome = await c.register(me)  # existing account: no invite needed again
        assert isinstance(welcome, Welcome) and not welcome.new_account
        await c.close()
        c = await anonymous(rp.url)
        other = Identity()
        sig = c.sign_challenge(other)
        err = await c.error(lambda rid: Register(request_id=rid, account_id=other.account_id,
                                                 identity_key=other.public, signature=sig,
                                                 invite_code=code))
        assert err.code == ErrorCode.INVITE_INVALID
        await c.close()
    finally:
        rp.kill()
