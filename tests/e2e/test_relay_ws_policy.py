"""Policy refusals through the real relay: push URLs that must not be registered, and the
per-mailbox quota of queued envelopes (``--max-pending``).

Both are negative paths of stages that are otherwise only exercised on their happy path
(``test_relay_ws_push``, ``test_relay_ws_messages``): a refused push URL must not be
stored (an offline owner gets no wake-up), and a full mailbox refuses new envelopes with
``QUOTA_EXCEEDED`` until acks make room, without closing the sender's connection.
"""

from __future__ import annotations

import asyncio
import functools

import pytest

from protocol import Error, ErrorCode, Ok, RegisterPush, Sent

from ._relay_fixtures import db_rows
from .conftest import launch_relay
from .wsclient import anonymous, connect_user

GENEROUS = ["--conn-credit-capacity", "100000", "--conn-credit-refill", "100000",
            "--mailbox-credit-capacity", "100000", "--mailbox-credit-refill", "100000"]

BAD_PUSH_URLS = [  # (``http://`` does not even decode: the frame requires https)
    "https://127.0.0.1/wake",                  # loopback
    "https://10.1.2.3/wake",                   # private
    "https://[::1]/wake",                      # loopback, IPv6
    "https://localhost/wake",
    "https://user:secret@push.example.com/w",  # credentials
    "https:///no-host",
    "https://push.example.com:99999/bad-port",
]


def _register_push(mailbox_id: bytes, url: str, rid: int) -> RegisterPush:
    return RegisterPush(request_id=rid, mailbox_ids=(mailbox_id,), url=url)


async def test_register_push_refuses_unsafe_urls(
        tmp_path_factory: pytest.TempPathFactory) -> None:
    rp = launch_relay(tmp_path_factory.mktemp("ws-push-policy"), GENEROUS)
    try:
        bob = await connect_user(rp.url)
        box = await bob.create_mailbox()
        for url in BAD_PUSH_URLS:
            err = await bob.error(functools.partial(_register_push, box.mailbox_id, url))
            assert err.code == ErrorCode.INVALID_FIELD, url
            assert "secret" not in (err.message or "")  # the reason never repeats the URL
        # Nothing was stored, and the connection is still in good standing.
        assert db_rows(rp, "SELECT push_url FROM mailboxes") == [(None,)]
        assert isinstance(await bob.request(lambda rid: RegisterPush(
            request_id=rid, mailbox_ids=(box.mailbox_id,),
            url="https://push.example.com/wake/abc")), Ok)
        assert db_rows(rp, "SELECT push_url FROM mailboxes") == [
            ("https://push.example.com/wake/abc",)]
        await bob.close()
    finally:
        rp.kill()


async def test_full_mailbox_refuses_with_quota_exceeded_until_acked(
        tmp_path_factory: pytest.TempPathFactory) -> None:
    rp = launch_relay(tmp_path_factory.mktemp("ws-quota"), [*GENEROUS, "--max-pending", "3"])
    try:
        bob = await connect_user(rp.url)
        full, other = await bob.create_mailbox(), await bob.create_mailbox()
        alice = await anonymous(rp.url)
        answers = [await alice.send([full], b"m%d" % i) for i in range(3)]
        assert all(isinstance(a, Sent) for a in answers)
        refused = await alice.send([full], b"one too many")
        assert isinstance(refused, Error) and refused.code == ErrorCode.QUOTA_EXCEEDED
        # A send to a full and a free mailbox: stored for the free one, the full one named.
        partial = await alice.send([full, other], b"fan-out")
        assert isinstance(partial, Sent)
        assert partial.rejected == ((0, ErrorCode.QUOTA_EXCEEDED),)
        # The owner receives and acks; the quota frees up.
        await bob.subscribe(full)
        got = await bob.deliveries_of(3)
        assert [d.blob for d in got] == [b"m0", b"m1", b"m2"]
        await bob.ack(full, up_to_seq=got[-1].seq)
        retry = None
        for _ in range(50):  # the ack's deletion commits asynchronously
            retry = await alice.send([full], b"after the ack")
            if isinstance(retry, Sent):
                break
            assert isinstance(retry, Error) and retry.code == ErrorCode.QUOTA_EXCEEDED
            await asyncio.sleep(0.05)
        assert isinstance(retry, Sent)
        for c in (bob, alice):
            await c.close()
    finally:
        rp.kill()
