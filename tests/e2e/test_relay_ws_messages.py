"""Messages through the real relay: capabilities, offline and live delivery, acks and
redelivery, idempotent resends, ordering, expiry notices, fan-out stored once, a slow
subscriber, ephemeral signals, credits; a mailbox's rotation and deletion."""

from __future__ import annotations

import asyncio
import hashlib
import os
import time
from collections.abc import Iterator

import aiohttp
import pytest

from protocol import (
    CreateMailbox,
    CreditsLow,
    DeleteMailbox,
    Delivery,
    Error,
    ErrorCode,
    MailboxCreated,
    MessagesExpired,
    Ok,
    RotateMailbox,
    SendEphemeral,
    Sent,
    Subscribe,
    Subscribed,
    decode_frame,
)

from ._relay_fixtures import db_rows, metric_value
from .conftest import RelayProcess, launch_relay
from .wsclient import (
    Identity,
    Mailbox,
    RelayClient,
    anonymous,
    connect_user,
    logged_in,
    new_id,
    now_ms,
    raw_login,
)

GENEROUS = ["--conn-credit-capacity", "100000", "--conn-credit-refill", "100000",
            "--mailbox-credit-capacity", "100000", "--mailbox-credit-refill", "100000"]


@pytest.fixture(scope="module")
def relay(tmp_path_factory: pytest.TempPathFactory) -> Iterator[RelayProcess]:
    rp = launch_relay(tmp_path_factory.mktemp("ws-messages"),
                      [*GENEROUS, "--sweep-interval", "200ms"])
    yield rp
    rp.kill()


async def owner_with_mailbox(url: str) -> tuple[RelayClient, Mailbox]:
    client = await connect_user(url)
    return client, await client.create_mailbox()


async def test_offline_then_live_delivery_acks_and_redelivery(relay: RelayProcess) -> None:
    bob, box = await owner_with_mailbox(relay.url)
    me = bob.identity
    assert me is not None
    alice = await anonymous(relay.url)  # senders need no account
    for i in range(3):  # bob is not subscribed yet: queued
        assert isinstance(await alice.send([box], b"offline %d" % i), Sent)
    await bob.subscribe(box)
    got = await bob.deliveries_of(3)
    assert [(d.seq, d.blob) for d in got] == [(1, b"offline 0"), (2, b"offline 1"),
                                             (3, b"offline 2")]
    assert all(d.mailbox_id == box.mailbox_id for d in got)
    for i in range(3, 6):  # now live
        assert isinstance(await alice.send([box], b"live %d" % i), Sent)
    got = await bob.deliveries_of(3)
    assert [d.seq for d in got] == [4, 5, 6]
    await bob.ack(box, up_to_seq=2, seqs=[4, 6])  # cumulative and selective
    await bob.no_delivery(0.2)
    await bob.close()
    # Reconnect: exactly the unacked envelopes come again, in order.
    bob = await logged_in(relay.url, me)
    await bob.subscribe(box)
    got = await bob.deliveries_of(2)
    assert [(d.seq, d.blob) for d in got] == [(3, b"offline 2"), (5, b"live 4")]
    await bob.no_delivery(0.2)
    await bob.ack(box, up_to_seq=5)
    await asyncio.sleep(0.2)
    assert db_rows(relay, "SELECT count(*) FROM deliveries WHERE mailbox_id = ?",
                   box.mailbox_id) == [(0,)]
    await bob.close()
    await alice.close()


async def test_wrong_or_missing_capability_is_one_answer(relay: RelayProcess) -> None:
    bob, box = await owner_with_mailbox(relay.url)
    other_box = await bob.create_mailbox()
    await bob.subscribe(box, other_box)
    alice = await anonymous(relay.url)
    wrong = (other_box.mailbox_id, os.urandom(32))
    missing = (os.urandom(16), os.urandom(32))
    for recipients in ([wrong], [missing]):
        answer = await alice.send(recipients, b"x")
        assert isinstance(answer, Error) and answer.code == ErrorCode.WRONG_CAPABILITY
    # Some good, some not: durable where accepted, the others listed by index.
    answer = await alice.send([wrong, box, missing], b"partly")
    assert isinstance(answer, Sent)
    assert answer.rejected == ((0, ErrorCode.WRONG_CAPABILITY), (2, ErrorCode.WRONG_CAPABILITY))
    assert (await bob.next_delivery()).blob == b"partly"
    # After a cached success the wrong capability is still refused.
    answer = await alice.send([wrong], b"x")
    assert isinstance(answer, Error) and answer.code == ErrorCode.WRONG_CAPABILITY
    await bob.no_delivery(0.2)
    await bob.close()
    await alice.close()


async def test_a_rotated_mailbox_takes_over_and_the_old_one_retires(
        relay: RelayProcess) -> None:
    """``RotateMailbox``: the new mailbox inherits the live subscription; the old one
    takes sends until ``retire_at_ms`` (still delivered), then refuses them as any wrong
    capability; only the owner may rotate, and a retired mailbox not again, except as a
    repeat of the same rotation (a retry after a lost answer), answered with the same
    mailbox, on any of the owner's connections."""
    bob, old = await owner_with_mailbox(relay.url)
    await bob.subscribe(old)
    alice = await anonymous(relay.url)
    capability = os.urandom(32)

    def rotation(rid: int) -> RotateMailbox:
        return RotateMailbox(request_id=rid, mailbox_id=old.mailbox_id,
                             capability_hash=hashlib.sha256(capability).digest(),
                             retire_at_ms=now_ms() + 1500)

    created = await bob.expect(MailboxCreated, rotation)
    new = Mailbox(created.mailbox_id, capability)
    assert new.mailbox_id != old.mailbox_id
    assert (await bob.expect(MailboxCreated, rotation)).mailbox_id == new.mailbox_id
    assert bob.identity is not None
    bob_again = await logged_in(relay.url, bob.identity)
    assert (await bob_again.expect(MailboxCreated, rotation)).mailbox_id == new.mailbox_id
    await bob_again.close()
    assert db_rows(relay, "SELECT count(*) FROM mailboxes WHERE account_id ="
                   " (SELECT account_id FROM mailboxes WHERE id = ?)", old.mailbox_id) == [(2,)]
    assert isinstance(await alice.send([new], b"to the new one"), Sent)
    assert isinstance(await alice.send([old], b"grace"), Sent)  # before retire_at_ms
    got = {(d.mailbox_id, d.blob) for d in await bob.deliveries_of(2)}
    assert got == {(new.mailbox_id, b"to the new one"), (old.mailbox_id, b"grace")}
    mallory = await connect_user(relay.url)  # not the owner
    refused = await mallory.error(lambda rid: RotateMailbox(
        request_id=rid, mailbox_id=new.mailbox_id, capability_hash=os.urandom(32)))
    assert refused.code is ErrorCode.FORBIDDEN
    await asyncio.sleep(1.6)
    late = await alice.send([old], b"after retirement")
    assert isinstance(late, Error) and late.code is ErrorCode.WRONG_CAPABILITY
    again = await bob.error(lambda rid: RotateMailbox(
        request_id=rid, mailbox_id=old.mailbox_id, capability_hash=os.urandom(32)))
    assert again.code is ErrorCode.NO_SUCH_MAILBOX
    assert isinstance(await alice.send([new], b"still here"), Sent)
    assert (await bob.next_delivery()).blob == b"still here"
    for c in (bob, alice, mallory):
        await c.close()


async def test_a_mailbox_rotated_on_another_connection_keeps_its_subscriber(
        relay: RelayProcess) -> None:
    bob, old = await owner_with_mailbox(relay.url)
    await bob.subscribe(old)
    assert bob.identity is not None
    other = await logged_in(relay.url, bob.identity)
    capability = os.urandom(32)
    created = await other.expect(MailboxCreated, lambda rid: RotateMailbox(
        request_id=rid, mailbox_id=old.mailbox_id,
        capability_hash=hashlib.sha256(capability).digest()))
    alice = await anonymous(relay.url)
    assert isinstance(await alice.send([Mailbox(created.mailbox_id, capability)], b"new"),
                      Sent)
    got = await bob.next_delivery(wait_s=5)  # live, on the connection that held the old one
    assert (got.mailbox_id, got.blob) == (created.mailbox_id, b"new")
    await other.no_delivery(0.2)
    for c in (bob, other, alice):
        await c.close()


async def test_a_repeated_rotation_moves_no_subscription(relay: RelayProcess) -> None:
    """A repeat only answers: even one naming the capability of a mailbox another
    connection receives (not what a client drawing fresh capabilities sends) leaves it
    there."""
    bob, old = await owner_with_mailbox(relay.url)
    await bob.subscribe(old)
    assert isinstance(await bob.request(lambda rid: RotateMailbox(
        request_id=rid, mailbox_id=old.mailbox_id, capability_hash=os.urandom(32))),
        MailboxCreated)
    assert bob.identity is not None
    other = await logged_in(relay.url, bob.identity)
    elsewhere = await other.create_mailbox()
    await other.subscribe(elsewhere)
    again = await bob.expect(MailboxCreated, lambda rid: RotateMailbox(
        request_id=rid, mailbox_id=old.mailbox_id,
        capability_hash=hashlib.sha256(elsewhere.capability).digest()))
    assert again.mailbox_id == elsewhere.mailbox_id
    alice = await anonymous(relay.url)
    assert isinstance(await alice.send([elsewhere], b"still there"), Sent)
    assert (await other.next_delivery(wait_s=5)).blob == b"still there"
    await bob.no_delivery(0.2)
    for c in (bob, other, alice):
        await c.close()


async def test_subscribe_sees_mailboxes_made_and_deleted_on_other_connections(
        relay: RelayProcess) -> None:
    first = await connect_user(relay.url)
    assert first.identity is not None
    second = await logged_in(relay.url, first.identity)
    doomed = await first.create_mailbox()
    await first.subscribe(doomed)  # the first connection knows it as its own
    later = await second.create_mailbox()
    assert isinstance(await second.request(
        lambda rid: DeleteMailbox(request_id=rid, mailbox_id=doomed.mailbox_id)), Ok)
    answer = await first.subscribe(doomed, later)
    assert answer.rejected == (doomed.mailbox_id,)
    for c in (first, second):
        await c.close()


async def test_deleting_a_mailbox_drops_its_envelopes_and_refuses_sends(
        relay: RelayProcess) -> None:
    bob, box = await owner_with_mailbox(relay.url)
    keep = await bob.create_mailbox()
    alice = await anonymous(relay.url)
    for blob in (b"one", b"two"):
        assert isinstance(await alice.send([box, keep], blob), Sent)
    mallory = await connect_user(relay.url)
    refused = await mallory.error(lambda rid: DeleteMailbox(request_id=rid,
                                                            mailbox_id=box.mailbox_id))
    assert refused.code is ErrorCode.FORBIDDEN
    assert isinstance(await bob.request(
        lambda rid: DeleteMailbox(request_id=rid, mailbox_id=box.mailbox_id)), Ok)
    assert db_rows(relay, "SELECT count(*) FROM deliveries WHERE mailbox_id = ?",
                   box.mailbox_id) == [(0,)]
    assert db_rows(relay, "SELECT count(*) FROM mailboxes WHERE id = ?",
                   box.mailbox_id) == [(0,)]
    answer = await alice.send([box], b"too late")
    assert isinstance(answer, Error) and answer.code is ErrorCode.WRONG_CAPABILITY
    gone = await bob.error(lambda rid: DeleteMailbox(request_id=rid,
                                                     mailbox_id=box.mailbox_id))
    assert gone.code is ErrorCode.NO_SUCH_MAILBOX
    subscribed = await bob.subscribe(box, keep)
    assert subscribed.rejected == (box.mailbox_id,)
    # The other mailbox of the same sends kept its copies (the shared blob too).
    assert [d.blob for d in await bob.deliveries_of(2)] == [b"one", b"two"]
    for c in (bob, alice, mallory):
        await c.close()


async def test_idempotent_resend(relay: RelayProcess) -> None:
    bob, box = await owner_with_mailbox(relay.url)
    await bob.subscribe(box)
    alice = await anonymous(relay.url)
    cmid = new_id()
    assert isinstance(await alice.send([box], b"once", client_msg_id=cmid), Sent)
    assert isinstance(await alice.send([box], b"once", client_msg_id=cmid), Sent)
    first = await bob.next_delivery()
    await bob.no_delivery(0.3)
    await bob.ack(box, up_to_seq=first.seq)
    await asyncio.sleep(0.1)
    # A late retry after the ack is still answered Sent and not queued again.
    other = await anonymous(relay.url)  # from another connection, too
    assert isinstance(await other.send([box], b"once", client_msg_id=cmid), Sent)
    await bob.no_delivery(0.3)
    # One idempotency record (schema v4: a send record, even for a single copy).
    send_hash = hashlib.sha256(b"pigeon relay send v1\x00" + cmid).digest()
    assert db_rows(relay, "SELECT (SELECT count(*) FROM send_dedup WHERE send_hash = ?),"
                   " (SELECT count(*) FROM dedup WHERE mailbox_id = ?)",
                   send_hash, box.mailbox_id) == [(1, 0)]
    for c in (bob, alice, other):
        await c.close()


async def test_relay_sequence_order(relay: RelayProcess) -> None:
    bob, box = await owner_with_mailbox(relay.url)
    await bob.subscribe(box)
    senders = [await anonymous(relay.url) for _ in range(3)]
    # One connection pipelines 100 sends: they are stored in the order they arrived.
    answers = await asyncio.gather(*(senders[0].send([box], b"%03d" % i) for i in range(100)))
    assert all(isinstance(a, Sent) for a in answers)
    got = await bob.deliveries_of(100)
    assert [d.seq for d in got] == list(range(1, 101))
    assert [d.blob for d in got] == [b"%03d" % i for i in range(100)]
    # Several senders at once: still one dense, increasing sequence.
    await asyncio.gather(*(s.send([box], b"x") for s in senders for _ in range(20)))
    got = await bob.deliveries_of(60)
    assert [d.seq for d in got] == list(range(101, 161))
    for c in (bob, *senders):
        await c.close()


async def test_expired_messages_are_reported(relay: RelayProcess) -> None:
    bob, box = await owner_with_mailbox(relay.url)
    alice = await anonymous(relay.url)
    for i in range(3):
        assert isinstance(await alice.send([box], b"short %d" % i, ttl_ms=200), Sent)
    assert isinstance(await alice.send([box], b"long"), Sent)
    await asyncio.sleep(0.8)  # the sweeper (every 200 ms) deletes the three
    await bob.subscribe(box)
    notice = await bob.next_notice(MessagesExpired)
    assert (notice.mailbox_id, notice.count, notice.up_to_seq) == (box.mailbox_id, 3, 3)
    got = await bob.next_delivery()
    assert (got.seq, got.blob) == (4, b"long")
    await bob.ack(box, up_to_seq=4)
    # Live: delivered, not acked, expired while subscribed: told at once.
    assert isinstance(await alice.send([box], b"soon gone", ttl_ms=200), Sent)
    assert (await bob.next_delivery()).seq == 5
    notice = await bob.next_notice(MessagesExpired, wait_s=5)
    assert (notice.count, notice.up_to_seq) == (1, 5)
    # Reported once: a new subscription hears nothing more.
    await bob.close()
    me = bob.identity
    assert me is not None
    bob = await logged_in(relay.url, me)
    await bob.subscribe(box)
    await bob.no_delivery(0.3)
    seen = [bob.notices.get_nowait() for _ in range(bob.notices.qsize())]
    assert not any(isinstance(n, MessagesExpired) for n in seen)
    await bob.close()
    await alice.close()


async def test_expired_but_unswept_messages_are_reported_before_later_ones(
        tmp_path_factory: pytest.TempPathFactory) -> None:
    """The sweeper has not run (every hour here): a subscription's catch-up finds the
    expired envelopes itself, removes them and reports them before what follows."""
    rp = launch_relay(tmp_path_factory.mktemp("ws-unswept"),
                      [*GENEROUS, "--sweep-interval", "1h"])
    try:
        bob, box = await owner_with_mailbox(rp.url)
        alice = await anonymous(rp.url)
        for blob, ttl in ((b"keep 1", None), (b"gone 2", 200), (b"gone 3", 200),
                          (b"keep 4", None), (b"gone 5", 200)):
            assert isinstance(await alice.send([box], blob, ttl_ms=ttl), Sent)
        await asyncio.sleep(0.4)
        await bob.subscribe(box)
        await bob.deliveries_of(2)
        order = [("expired", f.count, f.up_to_seq) if isinstance(f, MessagesExpired)
                 else ("delivery", f.seq, 0) for f in bob.unsolicited
                 if isinstance(f, MessagesExpired | Delivery)]
        # Swept at the first live envelope after the gap: all three expired ones at once.
        assert order == [("delivery", 1, 0), ("expired", 3, 5), ("delivery", 4, 0)]
        assert await metric_value(rp.url, "pigeon_relay_expired_total",
                                  {"what": "messages"}) == 3
        assert db_rows(rp, "SELECT seq FROM deliveries WHERE mailbox_id = ? ORDER BY seq",
                       box.mailbox_id) == [(1,), (4,)]
        # Reported once: neither the sweeper nor a new subscription repeats it.
        me = bob.identity
        assert me is not None
        await bob.close()
        bob = await logged_in(rp.url, me)
        await bob.subscribe(box)
        assert [d.seq for d in await bob.deliveries_of(2)] == [1, 4]
        await bob.no_delivery(0.3)
        seen = [bob.notices.get_nowait() for _ in range(bob.notices.qsize())]
        assert not any(isinstance(n, MessagesExpired) for n in seen)
        for c in (bob, alice):
            await c.close()
    finally:
        rp.kill()


async def test_fan_out_stores_the_blob_once(relay: RelayProcess) -> None:
    owners = [await owner_with_mailbox(relay.url) for _ in range(3)]
    for client, box in owners:
        await client.subscribe(box)
    alice = await anonymous(relay.url)
    blob = os.urandom(700)
    answer = await alice.send([box for _, box in owners], blob)
    assert isinstance(answer, Sent) and answer.rejected == ()
    for client, box in owners:
        got = await client.next_delivery()
        assert (got.mailbox_id, got.blob) == (box.mailbox_id, blob)
    rows = db_rows(relay, "SELECT id FROM blobs WHERE data = ?", blob)
    assert len(rows) == 1  # one blob row...
    assert db_rows(relay, "SELECT count(*) FROM deliveries WHERE blob_id = ?",
                   rows[0][0]) == [(3,)]  # ...three deliveries pointing at it
    for client, box in owners:
        await client.ack(box, up_to_seq=1)
    await asyncio.sleep(0.3)
    assert db_rows(relay, "SELECT count(*) FROM blobs WHERE data = ?", blob) == [(0,)]
    for client, _ in owners:
        await client.close()
    await alice.close()


async def raw_subscriber(url: str, session: aiohttp.ClientSession
                         ) -> tuple[aiohttp.ClientWebSocketResponse, Mailbox]:
    """A subscriber driven by hand, so that the test can stop reading its socket."""
    ws = await raw_login(session, url, Identity(), register=True)
    cap = os.urandom(32)
    await ws.send_bytes(CreateMailbox(request_id=3,
                                      capability_hash=hashlib.sha256(cap).digest()).encode())
    created = decode_frame((await ws.receive()).data)
    assert isinstance(created, MailboxCreated)
    await ws.send_bytes(Subscribe(request_id=4, mailbox_ids=(created.mailbox_id,)).encode())
    assert isinstance(decode_frame((await ws.receive()).data), Subscribed)
    return ws, Mailbox(created.mailbox_id, cap)


async def test_slow_subscriber_delays_nobody(relay: RelayProcess) -> None:
    async with aiohttp.ClientSession() as session:
        slow_ws, slow_box = await raw_subscriber(relay.url, session)
        # From now on the slow subscriber reads nothing: its socket fills up.
        flooder = await anonymous(relay.url)
        big = os.urandom(60_000)
        n_slow = 200  # 12 MB for a reader that does not read
        flood = asyncio.gather(*(flooder.send([slow_box], big) for _ in range(n_slow)))
        carol, carol_box = await owner_with_mailbox(relay.url)
        await carol.subscribe(carol_box)
        alice = await anonymous(relay.url)
        worst = 0.0
        for i in range(40):
            start = time.perf_counter()
            assert isinstance(await alice.send([carol_box], b"ping %d" % i), Sent)
            got = await carol.next_delivery(wait_s=5)
            worst = max(worst, time.perf_counter() - start)
            assert got.blob == b"ping %d" % i
        answers = await asyncio.wait_for(flood, 30)
        assert all(isinstance(a, Sent) for a in answers)  # every envelope is durable
        assert worst < 1.0, f"a fast pair waited {worst:.3f}s behind a slow subscriber"
        # When the slow one reads again, it catches up from the store, in order.
        seqs: list[int] = []
        while len(seqs) < n_slow:
            msg = await slow_ws.receive(timeout=15)
            frame = decode_frame(msg.data)
            if hasattr(frame, "seq") and hasattr(frame, "blob"):
                seqs.append(frame.seq)
        assert seqs == list(range(1, n_slow + 1))
        await slow_ws.close()
        for c in (flooder, carol, alice):
            await c.close()


async def test_ephemeral_signals(relay: RelayProcess) -> None:
    bob, box = await owner_with_mailbox(relay.url)
    alice = await anonymous(relay.url)
    dropped = await metric_value(relay.url, "pigeon_relay_ephemeral_dropped_total")
    await alice.send_ephemeral([box], b"typing (nobody listens)")
    await asyncio.sleep(0.2)
    assert await metric_value(relay.url, "pigeon_relay_ephemeral_dropped_total") == dropped + 1
    await bob.subscribe(box)
    cmid = new_id()
    await alice.send_ephemeral([box], b"typing", client_msg_id=cmid)
    await alice.send_ephemeral([box], b"typing", client_msg_id=cmid)  # within the window
    got = await asyncio.wait_for(bob.ephemeral.get(), 5)
    assert (got.mailbox_id, got.blob) == (box.mailbox_id, b"typing")
    await asyncio.sleep(0.3)
    assert bob.ephemeral.empty()  # the repeat was dropped
    await bob.no_delivery(0.1)  # never stored, never delivered as an envelope
    assert db_rows(relay, "SELECT count(*) FROM deliveries WHERE mailbox_id = ?",
                   box.mailbox_id) == [(0,)]
    # A wrong capability is refused like a durable send.
    alice_err = await alice.error(lambda rid: SendEphemeral(
        request_id=rid, client_msg_id=new_id(), blob=b"x",
        recipients=((box.mailbox_id, os.urandom(32)),)))
    assert alice_err.code == ErrorCode.WRONG_CAPABILITY
    await bob.close()
    await alice.close()


async def test_a_fan_out_wider_than_the_burst_passes_and_leaves_the_connection_in_debt(
        tmp_path_factory: pytest.TempPathFactory) -> None:
    rp = launch_relay(tmp_path_factory.mktemp("ws-wide"),
                      ["--conn-credit-capacity", "10", "--conn-credit-refill", "1"])
    try:
        bob = await connect_user(rp.url)
        boxes = [await bob.create_mailbox() for _ in range(25)]
        alice = await anonymous(rp.url)
        wide = await alice.send(boxes, b"to a large group")  # 25 recipients, burst of 10
        assert isinstance(wide, Sent) and not wide.rejected
        # 10 - 25 = -15 credits: the next send waits for 16 of them at 1 per second.
        refused = await alice.send(boxes[:1], b"next")
        assert isinstance(refused, Error) and refused.code == ErrorCode.RATE_LIMITED
        assert refused.retry_after_ms is not None and 15_000 <= refused.retry_after_ms <= 16_100
        low = await alice.next_notice(CreditsLow)
        assert low.remaining == 0
        await bob.subscribe(*boxes)
        got = [await bob.next_delivery() for _ in boxes]
        assert {d.mailbox_id for d in got} == {b.mailbox_id for b in boxes}
        for c in (bob, alice):
            await c.close()
    finally:
        rp.kill()


async def test_credits_refuse_with_retry_after_and_notice(
        tmp_path_factory: pytest.TempPathFactory) -> None:
    rp = launch_relay(tmp_path_factory.mktemp("ws-credits"),
                      ["--conn-credit-capacity", "10", "--conn-credit-refill", "1",
                       "--mailbox-credit-capacity", "15", "--mailbox-credit-refill", "1"])
    try:
        bob, box = await owner_with_mailbox(rp.url)
        alice = await anonymous(rp.url)
        answers = [await alice.send([box], b"%d" % i) for i in range(11)]
        assert all(isinstance(a, Sent) for a in answers[:10])
        refused = answers[10]
        assert isinstance(refused, Error) and refused.code == ErrorCode.RATE_LIMITED
        assert refused.retry_after_ms is not None and 0 < refused.retry_after_ms <= 2000
        low = await alice.next_notice(CreditsLow)
        assert low.remaining < 10 and low.refill_in_ms > 0
        # The mailbox's bucket is shared by all senders: a fresh connection hits it too.
        other = await anonymous(rp.url)
        results = [await other.send([box], b"more") for _ in range(8)]
        codes = [r.code if isinstance(r, Error) else 0 for r in results]
        assert ErrorCode.RATE_LIMITED in codes and codes[0] == 0
        assert await metric_value(rp.url, "pigeon_relay_credit_refusals_total",
                                  {"scope": "mailbox"}) >= 1
        assert await metric_value(rp.url, "pigeon_relay_credit_refusals_total",
                                  {"scope": "connection"}) >= 1
        for c in (bob, alice, other):
            await c.close()
    finally:
        rp.kill()
