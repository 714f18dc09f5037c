"""Accounts and the directory against the real relay: deletion with everything owned,
identity rotation, usernames (exact match only), prekey bundles (one-time keys consumed,
then the last-resort KEM prekey), the prekeys-low notice, lookup rate limits."""

from __future__ import annotations

import asyncio
import functools
import os
import secrets
from collections.abc import Iterator

import aiohttp
import msgpack
import pytest

from pigeon_crypto.identity import IdentityPublicKey, IdentityRotation, verify_rotation_chain
from pigeon_crypto.prekeys import KemKind, KemPreKey, OneTimePreKey, PreKeyBundle, SignedPreKey
from pigeon_crypto.signing import Purpose
from protocol import (
    Auth,
    Bundle,
    ClaimUsername,
    DeleteAccount,
    Error,
    ErrorCode,
    FetchBundle,
    LookupUsername,
    Ok,
    PrekeysLow,
    Register,
    ReleaseUsername,
    RotateIdentity,
    Sent,
    Subscribe,
    Subscribed,
    UsernameFound,
    decode_frame,
    username_binding_payload,
)
from protocol.limits import MAX_IDENTITY_ROTATIONS

from ._relay_fixtures import db_rows, metric_value
from .conftest import RelayProcess, launch_relay
from .wsclient import Identity, RelayClient, anonymous, connect_user, logged_in, raw_login


@pytest.fixture(scope="module")
def relay(tmp_path_factory: pytest.TempPathFactory) -> Iterator[RelayProcess]:
    rp = launch_relay(tmp_path_factory.mktemp("ws-accounts"),
                      ["--lookup-credit-capacity", "1000", "--lookup-credit-refill", "1000"])
    yield rp
    rp.kill()


def username() -> str:
    return "u" + secrets.token_hex(6)


async def claim(c: RelayClient, name: str, *, signer: Identity | None = None) -> object:
    me = c.identity
    assert me is not None
    sig = (signer or me).keys.sign(Purpose.USERNAME_BINDING,
                                   username_binding_payload(name, me.account_id))
    return await c.request(lambda rid: ClaimUsername(request_id=rid, username=name,
                                                     account_id=me.account_id, signature=sig))


def _lookup(username: str, rid: int) -> LookupUsername:
    return LookupUsername(request_id=rid, username=username)


async def fetch(c: RelayClient, account_id: bytes) -> Bundle | Error:
    answer = await c.request(lambda rid: FetchBundle(request_id=rid, account_id=account_id))
    assert isinstance(answer, Bundle | Error)
    return answer


async def test_deleting_an_account_removes_everything_it_owns(relay: RelayProcess) -> None:
    bob = await connect_user(relay.url)
    me = bob.identity
    assert me is not None
    await bob.upload_prekeys(one_time=2)
    name = username()
    assert isinstance(await claim(bob, name), Ok)
    boxes = [await bob.create_mailbox() for _ in range(2)]
    second = await logged_in(relay.url, me)  # another device session, subscribed
    await second.subscribe(*boxes)
    alice = await anonymous(relay.url)
    for box in boxes:
        assert isinstance(await alice.send([box], b"pending"), Sent)
    await second.deliveries_of(2)
    ids = [b.mailbox_id for b in boxes]
    assert db_rows(relay, "SELECT count(*) FROM deliveries WHERE mailbox_id IN (?, ?)",
                   *ids) == [(2,)]

    assert isinstance(await bob.request(lambda rid: DeleteAccount(request_id=rid)), Ok)
    for c in (bob, second):  # every connection of the account is closed
        await asyncio.wait_for(c.closed.wait(), 5)
    for table, column in (("accounts", "id"), ("usernames", "account_id"),
                          ("one_time_prekeys", "account_id"), ("mailboxes", "account_id")):
        assert db_rows(relay, f"SELECT count(*) FROM {table} WHERE {column} = ?",
                       me.account_id) == [(0,)], table
    for table in ("deliveries", "dedup"):
        assert db_rows(relay, f"SELECT count(*) FROM {table} WHERE mailbox_id IN (?, ?)",
                       *ids) == [(0,)], table
    # To the world, the account and its mailboxes are gone.
    answer = await alice.send(boxes, b"too late")
    assert isinstance(answer, Error) and answer.code == ErrorCode.WRONG_CAPABILITY
    assert (await fetch(alice, me.account_id)).code == ErrorCode.UNKNOWN_ACCOUNT  # type: ignore[union-attr]
    lookup = await alice.request(lambda rid: LookupUsername(request_id=rid, username=name))
    assert isinstance(lookup, Error) and lookup.code == ErrorCode.NOT_FOUND
    again = await anonymous(relay.url)
    sig = again.sign_challenge(me)
    err = await again.error(lambda rid: Auth(request_id=rid, account_id=me.account_id,
                                             signature=sig))
    assert err.code == ErrorCode.UNKNOWN_ACCOUNT
    for c in (bob, second, alice, again):
        await c.close()


async def test_identity_rotation(relay: RelayProcess) -> None:
    bob = await connect_user(relay.url)
    old = bob.identity
    assert old is not None
    await bob.upload_prekeys(one_time=2, one_time_kem=2)
    new = Identity()
    rotation = IdentityRotation.create(account_id=old.account_id, serial=1, old=old.keys,
                                       new=new.keys)
    by_old = bob.sign_challenge(old)
    err = await bob.error(lambda rid: RotateIdentity(request_id=rid,
                                                     rotation=rotation.to_bytes(),
                                                     signature=by_old))
    assert err.code == ErrorCode.AUTH_FAILED  # the new key must sign this session's challenge
    skipped = IdentityRotation.create(account_id=old.account_id, serial=2, old=old.keys,
                                      new=new.keys)
    by_new = bob.sign_challenge(new, account_id=old.account_id)
    err = await bob.error(lambda rid: RotateIdentity(request_id=rid,
                                                     rotation=skipped.to_bytes(),
                                                     signature=by_new))
    assert err.code == ErrorCode.INVALID_FIELD  # serials count from 1
    thief = await logged_in(relay.url, old)  # another session that proved the old key
    assert isinstance(await bob.request(lambda rid: RotateIdentity(
        request_id=rid, rotation=rotation.to_bytes(), signature=by_new)), Ok)
    # Every other session of the account proved a key that is no longer its own: closed.
    await asyncio.wait_for(thief.closed.wait(), 5)
    assert thief.close_code == 1000 and not bob.closed.is_set()
    # What the old key signed is gone: no bundle until prekeys signed by the new key are up.
    stranger = await anonymous(relay.url)
    gone = await fetch(stranger, old.account_id)
    assert isinstance(gone, Error) and gone.code == ErrorCode.NOT_FOUND
    assert db_rows(relay, "SELECT kind, count(*) FROM one_time_prekeys WHERE account_id = ?"
                   " GROUP BY kind", old.account_id) == [(1, 2)]  # unsigned X25519 ones stay
    bob.identity = new
    await bob.upload_prekeys(one_time_kem=1, first_id=10)
    # Bundles now carry the new key and the chain that links it to the account id, and
    # every prekey in them verifies under the new key.
    bundle = await fetch(stranger, old.account_id)
    assert isinstance(bundle, Bundle)
    PreKeyBundle(identity=IdentityPublicKey.from_bytes(bundle.identity_key),
                 signed_prekey=SignedPreKey.from_bytes(bundle.signed_prekey),
                 kem_prekey=KemPreKey.from_bytes(bundle.kem_prekey)).check()
    assert KemPreKey.from_bytes(bundle.kem_prekey).kind is KemKind.ONE_TIME
    assert bundle.identity_key == new.public and bundle.rotations == (rotation.to_bytes(),)
    current = verify_rotation_chain(old.account_id, old.keys.public,
                                    [IdentityRotation.from_bytes(r) for r in bundle.rotations])
    assert current.same_key(IdentityPublicKey.from_bytes(bundle.identity_key))
    # The new key logs in to the same account; the old one no longer does.
    c = await anonymous(relay.url)
    sig = c.sign_challenge(new, account_id=old.account_id)
    assert (await c.request(lambda rid: Auth(request_id=rid, account_id=old.account_id,
                                              signature=sig))).account_id == old.account_id  # type: ignore[attr-defined]
    d = await anonymous(relay.url)
    sig = d.sign_challenge(old)
    err = await d.error(lambda rid: Auth(request_id=rid, account_id=old.account_id,
                                         signature=sig))
    assert err.code == ErrorCode.AUTH_FAILED
    # Registering the first key again is an identity clash, not a new account.
    e = await anonymous(relay.url)

    sig = e.sign_challenge(old)
    err = await e.error(lambda rid: Register(request_id=rid, account_id=old.account_id,
                                             identity_key=old.public, signature=sig))
    assert err.code == ErrorCode.ACCOUNT_EXISTS
    for client in (bob, stranger, c, d, e):
        await client.close()


async def test_concurrent_rotations_from_one_key_keep_one_chain(relay: RelayProcess) -> None:
    """Two sessions of one account rotate from the same key at once, ten times over:
    each time one rotation commits and the other is refused (or its session closed by
    the winner), so the chain stays a chain."""
    for _ in range(10):
        first = await connect_user(relay.url)
        old = first.identity
        assert old is not None
        second = await logged_in(relay.url, old)
        news = (Identity(), Identity())
        rotations = [IdentityRotation.create(account_id=old.account_id, serial=1, old=old.keys,
                                             new=n.keys) for n in news]
        answers = await asyncio.gather(
            *(c.request(functools.partial(_rotate, r.to_bytes(),
                                          c.sign_challenge(n, account_id=old.account_id)))
              for c, r, n in zip((first, second), rotations, news, strict=True)),
            return_exceptions=True)
        oks = [i for i, a in enumerate(answers) if isinstance(a, Ok)]
        assert len(oks) == 1, answers
        lost = answers[1 - oks[0]]
        assert (isinstance(lost, ConnectionError)
                or (isinstance(lost, Error) and lost.code == ErrorCode.INVALID_FIELD)), lost
        assert db_rows(relay, "SELECT record FROM identity_rotations WHERE account_id = ?",
                       old.account_id) == [(rotations[oks[0]].to_bytes(),)]
        assert db_rows(relay, "SELECT identity_key FROM accounts WHERE id = ?",
                       old.account_id) == [(news[oks[0]].public,)]
        for c in (first, second):
            await c.close()


def _rotate(rotation: bytes, signature: bytes, rid: int) -> RotateIdentity:
    return RotateIdentity(request_id=rid, rotation=rotation, signature=signature)


async def test_a_chain_holds_at_most_the_rotations_a_bundle_carries(
    relay: RelayProcess,
) -> None:
    bob = await connect_user(relay.url)
    first = current = bob.identity
    assert first is not None and current is not None
    for serial in range(1, MAX_IDENTITY_ROTATIONS + 2):
        new = Identity()
        rotation = IdentityRotation.create(account_id=first.account_id, serial=serial,
                                           old=current.keys, new=new.keys)
        answer = await bob.request(functools.partial(
            _rotate, rotation.to_bytes(), bob.sign_challenge(new, account_id=first.account_id)))
        if serial <= MAX_IDENTITY_ROTATIONS:
            assert isinstance(answer, Ok), (serial, answer)
            current = new
        else:
            assert isinstance(answer, Error) and answer.code == ErrorCode.QUOTA_EXCEEDED
    # The account still publishes a bundle (with the whole chain) and hands out its
    # one-time keys: nothing consumed for an answer that could not be sent.
    bob.identity = current
    await bob.upload_prekeys(one_time=1, one_time_kem=1)
    stranger = await anonymous(relay.url)
    bundle = await fetch(stranger, first.account_id)
    assert isinstance(bundle, Bundle) and len(bundle.rotations) == MAX_IDENTITY_ROTATIONS
    assert bundle.identity_key == current.public and bundle.one_time_prekey is not None
    for c in (bob, stranger):
        await c.close()


async def test_usernames_exact_match_only(relay: RelayProcess) -> None:
    alice = await connect_user(relay.url)
    bob = await connect_user(relay.url)
    me = alice.identity
    assert me is not None
    name = username()
    assert isinstance(await claim(alice, name), Ok)
    anon = await anonymous(relay.url)
    found = await anon.request(lambda rid: LookupUsername(request_id=rid, username=name))
    assert isinstance(found, UsernameFound) and found.account_id == me.account_id
    # The looker verifies the binding itself, with the account's identity.
    me.keys.public.verify(Purpose.USERNAME_BINDING,
                          username_binding_payload(name, me.account_id), found.signature)
    for probe in (name[:-1], name + "x", "x" + name[1:]):  # no prefix or fuzzy search
        err = await anon.error(functools.partial(_lookup, probe))
        assert err.code == ErrorCode.NOT_FOUND
    await anon.send_raw(msgpack.packb([1, 14, 99, {1: name.upper()}], use_bin_type=True))
    err = await anon.next_notice(Error)
    assert (err.request_id, err.code) == (99, ErrorCode.INVALID_FIELD)  # not normalized
    # Taken, reserved, unsigned, or claimed for someone else.
    assert (await claim(bob, name)).code == ErrorCode.USERNAME_TAKEN  # type: ignore[attr-defined]
    assert (await claim(bob, "admin")).code == ErrorCode.USERNAME_REJECTED  # type: ignore[attr-defined]
    assert (await claim(bob, username(), signer=Identity())).code == ErrorCode.AUTH_FAILED  # type: ignore[attr-defined]
    bob_id = bob.identity.account_id if bob.identity else b""
    err = await bob.error(lambda rid: ClaimUsername(
        request_id=rid, username=username(), account_id=me.account_id, signature=bytes(64)))
    assert err.code == ErrorCode.FORBIDDEN
    err = await bob.error(lambda rid: ReleaseUsername(request_id=rid, username=name))
    assert err.code == ErrorCode.FORBIDDEN
    # Claiming another name replaces the first; releasing frees it.
    second = username()
    assert isinstance(await claim(alice, second), Ok)
    err = await anon.error(lambda rid: LookupUsername(request_id=rid, username=name))
    assert err.code == ErrorCode.NOT_FOUND
    assert isinstance(await claim(bob, name), Ok)
    found = await anon.request(lambda rid: LookupUsername(request_id=rid, username=name))
    assert isinstance(found, UsernameFound) and found.account_id == bob_id
    assert isinstance(await alice.request(lambda rid: ReleaseUsername(request_id=rid,
                                                                      username=second)), Ok)
    err = await anon.error(lambda rid: LookupUsername(request_id=rid, username=second))
    assert err.code == ErrorCode.NOT_FOUND
    for c in (alice, bob, anon):
        await c.close()


async def test_bundles_consume_one_time_keys_then_fall_back(relay: RelayProcess) -> None:
    bob = await connect_user(relay.url)
    me = bob.identity
    assert me is not None
    assert isinstance(await bob.upload_prekeys(one_time=3, one_time_kem=2, first_id=10), Ok)
    fetcher = await anonymous(relay.url)
    seen_otk: list[int] = []
    seen_kem: list[tuple[int, KemKind]] = []
    for _ in range(4):
        bundle = await fetch(fetcher, me.account_id)
        assert isinstance(bundle, Bundle)
        otk = (OneTimePreKey.from_bytes(bundle.one_time_prekey)
               if bundle.one_time_prekey is not None else None)
        kem = KemPreKey.from_bytes(bundle.kem_prekey)
        if otk is not None:
            seen_otk.append(otk.key_id)
        seen_kem.append((kem.key_id, kem.kind))
        # The relay hands out keys that verify against the identity (the SDK checks this).
        PreKeyBundle(identity=IdentityPublicKey.from_bytes(bundle.identity_key),
                     signed_prekey=SignedPreKey.from_bytes(bundle.signed_prekey),
                     kem_prekey=kem, one_time_prekey=otk).check()
    assert seen_otk == [10, 11, 12]  # each one-time key once, then none
    assert seen_kem == [(11, KemKind.ONE_TIME), (12, KemKind.ONE_TIME),
                        (10, KemKind.LAST_RESORT), (10, KemKind.LAST_RESORT)]
    # The owner, online, was told its one-time keys run low.
    low = await bob.next_notice(PrekeysLow)
    assert low.one_time_prekeys < 10
    while not bob.notices.empty():
        last = bob.notices.get_nowait()
        if isinstance(last, PrekeysLow):
            low = last
    assert (low.one_time_prekeys, low.one_time_kem_prekeys) == (0, 0)
    # Unknown accounts and accounts without a published bundle.
    assert (await fetch(fetcher, os.urandom(16))).code == ErrorCode.UNKNOWN_ACCOUNT  # type: ignore[union-attr]
    empty = await connect_user(relay.url)
    assert empty.identity is not None
    assert (await fetch(fetcher, empty.identity.account_id)).code == ErrorCode.NOT_FOUND  # type: ignore[union-attr]
    for c in (bob, fetcher, empty):
        await c.close()


async def test_a_stalled_owner_does_not_stall_those_fetching_its_bundle(
        relay: RelayProcess) -> None:
    bob = await connect_user(relay.url)
    me = bob.identity
    assert me is not None
    assert isinstance(await bob.upload_prekeys(one_time=20, one_time_kem=20), Ok)
    async with aiohttp.ClientSession() as session:
        # A second session of Bob's that stops reading, its socket filled by a flood.
        stalled = await raw_login(session, relay.url, me, register=False)
        box = await bob.create_mailbox()
        await stalled.send_bytes(Subscribe(request_id=3, mailbox_ids=(box.mailbox_id,)).encode())
        assert isinstance(decode_frame((await stalled.receive()).data), Subscribed)
        flooder = await anonymous(relay.url)
        big = os.urandom(60_000)
        sent = await asyncio.gather(*(flooder.send([box], big) for _ in range(200)))
        assert all(isinstance(a, Sent) for a in sent)  # 12 MB for a reader that reads nothing
        dropped = await metric_value(relay.url, "pigeon_relay_ephemeral_dropped_total")
        # Each fetch past the low mark notifies both of Bob's sessions; the stalled one
        # must not hold up the fetcher's next request.
        fetcher = await anonymous(relay.url)
        for _ in range(15):
            assert isinstance(await asyncio.wait_for(fetch(fetcher, me.account_id), 5), Bundle)
        low = await bob.next_notice(PrekeysLow)  # the reading session is told
        assert low.one_time_prekeys < 10
        assert await metric_value(relay.url, "pigeon_relay_ephemeral_dropped_total") > dropped
        await stalled.close()
        for c in (bob, flooder, fetcher):
            await c.close()


async def test_lookups_are_rate_limited_per_connection_and_address(
        tmp_path_factory: pytest.TempPathFactory) -> None:
    rp = launch_relay(tmp_path_factory.mktemp("ws-lookups"),
                      ["--lookup-credit-capacity", "4", "--lookup-credit-refill", "0.2"])
    try:
        c = await anonymous(rp.url)
        codes = []
        for _ in range(5):
            answer = await c.request(lambda rid: LookupUsername(request_id=rid,
                                                                username=username()))
            assert isinstance(answer, Error)
            codes.append(answer.code)
        assert codes[:4] == [ErrorCode.NOT_FOUND] * 4 and codes[4] == ErrorCode.RATE_LIMITED
        # A new connection from the same address does not start over.
        d = await anonymous(rp.url)
        err = await d.error(lambda rid: FetchBundle(request_id=rid, account_id=os.urandom(16)))
        assert err.code == ErrorCode.RATE_LIMITED and (err.retry_after_ms or 0) > 0
        await c.close()
        await d.close()
    finally:
        rp.kill()
