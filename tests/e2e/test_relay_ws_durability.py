"""Durability: ``kill -9`` the relay while clients send; every ``Sent`` survives.

Several sender connections send numbered messages (``synchronous=FULL``, the production
setting) and record each one the relay answered ``Sent``; the receiver is subscribed and
acks as it goes. The relay is killed with SIGKILL in the middle of the stream, restarted
on the same data folder, and the receiver reconnects, subscribes, receives, deduplicates
by the message id carried inside each blob (what an SDK does with the inner message id)
and acks. Every message acknowledged as ``Sent`` must have arrived exactly once after
deduplication, and a retry of one of them after the restart is answered ``Sent`` without
being delivered again.
"""

from __future__ import annotations

import asyncio
import contextlib
import os

from protocol import Sent

from .conftest import RelayFactory
from .wsclient import Identity, Mailbox, RelayClient, anonymous, connect_user

SENDERS = 4
KILL_AFTER = 300  # deliveries seen before the kill
GENEROUS = ["--conn-credit-capacity", "100000", "--conn-credit-refill", "100000",
            "--mailbox-credit-capacity", "100000", "--mailbox-credit-refill", "100000"]


def message_id(sender: int, n: int) -> bytes:
    return sender.to_bytes(2, "big") + n.to_bytes(4, "big") + bytes(10)


async def test_kill_9_loses_no_acknowledged_message(relay_factory: RelayFactory) -> None:
    rp = relay_factory(GENEROUS, synchronous_off=False)
    me = Identity()
    bob = await connect_user(rp.url, identity=me)
    box = await bob.create_mailbox()
    await bob.subscribe(box)
    acknowledged: set[bytes] = set()
    received: dict[bytes, int] = {}  # message id -> times delivered (before dedup)
    killed = asyncio.Event()

    async def sender(index: int) -> None:
        client = await anonymous(rp.url)
        n = 0
        with contextlib.suppress(ConnectionError, TimeoutError, OSError):
            while not killed.is_set():
                # A few in flight at once, like an SDK outbox draining.
                batch = [message_id(index, n + i) for i in range(8)]
                n += 8
                answers = await asyncio.gather(
                    *(client.send([box], mid + os.urandom(100), client_msg_id=mid)
                      for mid in batch), return_exceptions=True)
                for mid, answer in zip(batch, answers, strict=True):
                    if isinstance(answer, Sent):
                        acknowledged.add(mid)
        await client.close()

    async def receive(client: RelayClient, *, until: asyncio.Event | None) -> None:
        while True:
            try:
                delivery = await client.next_delivery(wait_s=1.0)
            except (TimeoutError, ConnectionError):
                if until is None or until.is_set():
                    return
                continue
            mid = delivery.blob[:16]
            received[mid] = received.get(mid, 0) + 1
            await client.ack(box, up_to_seq=delivery.seq)
            if until is not None and sum(received.values()) >= KILL_AFTER:
                rp.kill()  # SIGKILL: no shutdown at all
                killed.set()
                return

    senders = [asyncio.create_task(sender(i)) for i in range(SENDERS)]
    await asyncio.wait_for(receive(bob, until=killed), 60)
    await asyncio.wait_for(asyncio.gather(*senders), 30)
    await bob.close()
    assert len(acknowledged) >= KILL_AFTER // 2

    rp.start()  # same data folder, new port
    bob = await RelayClient.open(rp.url)
    await bob.auth(me)
    await bob.subscribe(box)
    await asyncio.wait_for(receive(bob, until=None), 60)
    missing = acknowledged - received.keys()
    assert not missing, f"{len(missing)} acknowledged messages lost"
    # After deduplication each is exactly one message; the relay itself never stored a
    # second copy (a copy seen twice was delivered again only because its ack was lost).
    unique = set(received)
    assert acknowledged <= unique
    # Idempotency survives the restart: a retry is answered Sent and not queued again.
    retry = await anonymous(rp.url)
    sample = sorted(acknowledged)[:5]
    for mid in sample:
        assert isinstance(await retry.send([box], mid + os.urandom(100), client_msg_id=mid),
                          Sent)
    await bob.no_delivery(0.5)
    await retry.close()
    await bob.close()


async def test_restart_keeps_the_relay_identity_and_queues(relay_factory: RelayFactory) -> None:
    rp = relay_factory(synchronous_off=False)
    bob = await connect_user(rp.url)
    me = bob.identity
    assert me is not None
    box: Mailbox = await bob.create_mailbox()
    relay_id = bob.challenge.relay_id if bob.challenge else b""
    alice = await anonymous(rp.url)
    assert isinstance(await alice.send([box], b"before the crash"), Sent)
    await alice.close()
    await bob.close()
    rp.restart()
    bob = await RelayClient.open(rp.url)
    assert (await bob.hello()).relay_id == relay_id  # old login signatures stay bound to it
    await bob.auth(me)
    await bob.subscribe(box)
    assert (await bob.next_delivery()).blob == b"before the crash"
    await bob.close()
