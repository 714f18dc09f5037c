"""The content-free push hook, against a local HTTPS receiver.

The relay (started with ``SSL_CERT_FILE`` naming the receiver's self-signed certificate,
and ``--push-allow-http`` so that a loopback address is accepted) POSTs to a mailbox's
registered URL when an envelope arrives and nobody receives that mailbox live. The
wake-up carries nothing: an empty body and fixed headers, no mailbox id, sender, count
or time.
"""

from __future__ import annotations

import asyncio
import os
from pathlib import Path

from protocol import ErrorCode, Ok, RegisterPush, Sent

from ._relay_fixtures import push_receiver
from .conftest import RelayFactory
from .wsclient import anonymous, connect_user


async def test_push_wakes_an_offline_owner_with_nothing_in_it(
        relay_factory: RelayFactory, tmp_path: Path) -> None:
    async with push_receiver(tmp_path) as receiver:
        rp = relay_factory(["--push-allow-http"], env={"SSL_CERT_FILE": str(receiver.cert)})
        bob = await connect_user(rp.url)
        box = await bob.create_mailbox()
        url = receiver.url()
        port = receiver.port
        err = await bob.error(lambda rid: RegisterPush(request_id=rid,
                                                       mailbox_ids=(os.urandom(16),), url=url))
        assert err.code in (ErrorCode.NO_SUCH_MAILBOX, ErrorCode.FORBIDDEN)
        assert isinstance(await bob.request(lambda rid: RegisterPush(
            request_id=rid, mailbox_ids=(box.mailbox_id,), url=url)), Ok)
        alice = await anonymous(rp.url)
        blob = os.urandom(300)
        assert isinstance(await alice.send([box], blob), Sent)  # bob is not subscribed
        await asyncio.wait_for(receiver.event.wait(), 10)
        path, headers, body = receiver.hits[0]
        assert body == b"" and path == url.split(str(port), 1)[1]
        everything = " ".join([path, *headers.keys(), *headers.values()]).lower()
        for secret in (box.mailbox_id.hex(), blob.hex()[:16]):
            assert secret not in everything
        assert int(headers.get("Content-Length", "0")) == 0
        # A live subscriber gets the envelope itself: no wake-up.
        receiver.event.clear()
        await bob.subscribe(box)
        await bob.next_delivery()
        assert isinstance(await alice.send([box], b"live"), Sent)
        assert (await bob.next_delivery()).blob == b"live"
        # Cleared registration: no more wake-ups even when offline.
        assert isinstance(await bob.request(lambda rid: RegisterPush(
            request_id=rid, mailbox_ids=(box.mailbox_id,))), Ok)
        await bob.close()
        assert isinstance(await alice.send([box], b"offline again"), Sent)
        await asyncio.sleep(2.5)  # past the notifier's per-URL interval
        assert len(receiver.hits) == 1
        await alice.close()
