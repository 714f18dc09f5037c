"""Several relay nodes on one PostgreSQL database and one Redis bus.

Each node is a real ``pigeon-relay`` process with ``--store-url`` and ``--bus-url``, the
same ``--relay-id``, ``--secret-file`` and blob folder, exactly as docs/relay.md "Several
nodes" tells an operator. Clients on different nodes talk as if there were one relay:
sends through one node reach live subscribers of another at once (Redis), nothing is lost
when a node is killed with ``kill -9``, and what one node caches about a mailbox is
forgotten when another changes it. Each test has its own schema and channel prefix.

Needs the PostgreSQL and Redis servers of ``tests/services.py`` (skipped without them,
except under CI).
"""

from __future__ import annotations

import asyncio
import json
import os
from collections.abc import AsyncIterator
from dataclasses import dataclass
from pathlib import Path

import pytest

from client_sdk import GroupChanged, MessageReceived
from client_sdk.testing import ClientFactory
from pigeon_crypto.identity import IdentityRotation
from protocol import (
    CreateMailbox,
    DeleteAccount,
    Error,
    ErrorCode,
    MailboxCreated,
    Ok,
    RegisterPush,
    RotateIdentity,
    RotateMailbox,
    SendEphemeral,
    Sent,
    Subscribe,
    UploadPrekeys,
)

from ..services import postgres_dsn, redis_url, unique_name
from ._relay_fixtures import metric_value, push_receiver
from .conftest import RelayProcess, launch_relay, run_cli
from .wsclient import Identity, Mailbox, RelayClient, anonymous, connect_user, now_ms

pytest.importorskip("asyncpg", reason="the postgres extra is not installed")
pytest.importorskip("redis", reason="the redis extra is not installed")


@dataclass
class Cluster:
    """What the nodes of one deployment share, and the nodes started so far."""

    folder: Path
    dsn: str
    schema: str
    redis: str
    prefix: str
    relay_id: str
    nodes: list[RelayProcess]

    def args(self, *extra: str) -> list[str]:
        return ["--store-url", self.dsn, "--store-schema", self.schema,
                "--bus-url", self.redis, "--bus-prefix", self.prefix,
                "--relay-id", self.relay_id, "--secret-file", str(self.folder / "token.secret"),
                "--blob-dir", str(self.folder / "blobs"), *extra]

    def node(self, *extra: str, env: dict[str, str] | None = None) -> RelayProcess:
        folder = self.folder / f"node{len(self.nodes)}"
        folder.mkdir()
        rp = launch_relay(folder, self.args(*extra), env)  # killed by the fixture
        self.nodes.append(rp)
        return rp


async def _drop_schema(dsn: str, schema: str) -> None:
    import asyncpg

    conn = await asyncpg.connect(dsn)
    try:
        await conn.execute(f'DROP SCHEMA IF EXISTS "{schema}" CASCADE')
    finally:
        await conn.close()


@pytest.fixture
async def cluster(tmp_path: Path) -> AsyncIterator[Cluster]:
    dsn, redis = postgres_dsn(), redis_url()
    c = Cluster(folder=tmp_path, dsn=dsn, schema=unique_name("relay"), redis=redis,
                prefix=unique_name("relay"), relay_id=os.urandom(16).hex(), nodes=[])
    try:
        yield c
    finally:
        for rp in c.nodes:
            rp.kill()
        await _drop_schema(dsn, c.schema)


@pytest.fixture
async def factories(cluster: Cluster, tmp_path: Path) -> AsyncIterator[
        tuple[ClientFactory, ClientFactory]]:
    a = ClientFactory(cluster.node(), tmp_path / "clients-a")  # type: ignore[arg-type]
    b = ClientFactory(cluster.node(), tmp_path / "clients-b")  # type: ignore[arg-type]
    (tmp_path / "clients-a").mkdir()
    (tmp_path / "clients-b").mkdir()
    try:
        yield a, b
    finally:
        await a.close()
        await b.close()


async def test_clients_on_two_nodes_talk_as_on_one_relay(
        factories: tuple[ClientFactory, ClientFactory], tmp_path: Path) -> None:
    on_a, on_b = factories
    alice, bob = await on_a("alice"), await on_b("bob")
    await on_a.connect(alice, bob)  # the invitation and its answer cross nodes both ways
    got = asyncio.ensure_future(on_b.next_event(bob, MessageReceived))
    await asyncio.sleep(0)
    sent = await alice.send_text(bob.account_id, "through node A, to node B")
    received = await got
    assert (received.message_id, received.text) == (sent.message_id,
                                                     "through node A, to node B")
    back = asyncio.ensure_future(on_a.next_event(alice, MessageReceived))
    await asyncio.sleep(0)
    await bob.send_text(alice.account_id, "and back")
    assert (await back).text == "and back"

    # A file: uploaded through node A, fetched through node B (shared folder and key).
    source = tmp_path / "notes.bin"
    source.write_bytes(os.urandom(300_000))
    arrived = asyncio.ensure_future(on_b.next_event(bob, MessageReceived, timeout_s=60))
    await asyncio.sleep(0)
    await alice.send_file(bob.account_id, source)
    file = await arrived
    saved = await bob.download_file(alice.account_id, file.message_id, tmp_path / "saved.bin")
    assert saved.read_bytes() == source.read_bytes()


async def test_a_group_spread_over_nodes(cluster: Cluster,
                                         factories: tuple[ClientFactory, ClientFactory]) -> None:
    on_a, on_b = factories
    alice, bob, carol = await on_a("alice"), await on_b("bob"), await on_b("carol")
    await on_a.connect(alice, bob)
    await on_a.connect(alice, carol)
    changed = [asyncio.ensure_future(on_b.next_event(member, GroupChanged, timeout_s=30))
               for member in (bob, carol)]
    await asyncio.sleep(0)
    group = await alice.create_group("across", [bob.account_id, carol.account_id])
    for wait in changed:
        assert (await wait).group.group_id == group.group_id
    texts = [asyncio.ensure_future(on_b.next_event(member, MessageReceived, timeout_s=30))
             for member in (bob, carol)]
    await asyncio.sleep(0)
    await alice.send_group_text(group.group_id, "one send, two nodes")
    for wait in texts:
        assert (await wait).text == "one send, two nodes"


async def test_kill_9_a_node_loses_nothing_it_acknowledged(cluster: Cluster) -> None:
    """Sends acked (``Sent``) by node A survive A's kill -9 and reach the recipient on
    node B exactly once and in order, and B notices A's death (its heartbeats stop).
    Whether A's last hints were lost with it is up to timing here; the RESYNC that makes
    lost hints good is tested in tests/unit/relay/test_bus_redis.py."""
    node_a, node_b = cluster.node(), cluster.node()
    bob = await connect_user(node_b.url)
    box = await bob.create_mailbox()
    await bob.subscribe(box)
    sender = await anonymous(node_a.url)
    acked: list[bytes] = []
    for i in range(40):
        blob = b"envelope %03d" % i
        assert isinstance(await sender.send([box], blob), Sent)
        acked.append(blob)
    node_a.kill()
    # The last hints may have died with A (it publishes after answering Sent): B then
    # declares A gone within PEER_TIMEOUT_S (3 s) and Bob's pump reads the store. 20 s
    # per delivery leaves room for that on a loaded machine.
    got = await bob.deliveries_of(40, wait_s=20)
    assert [d.blob for d in got] == acked
    assert [d.seq for d in got] == list(range(1, 41))
    await bob.ack(box, up_to_seq=40)
    await bob.no_delivery(0.5)
    # B noticed A's death (heartbeats): what A might not have passed on, B read again.
    async with asyncio.timeout(20):
        # Another process's metrics: nothing to wait on but the next scrape.
        while await metric_value(node_b.url, "pigeon_relay_bus", {"stat": "peers_lost"}) < 1:  # noqa: ASYNC110
            await asyncio.sleep(0.2)
    # Restarted, node A serves the same database: a sender there reaches Bob again, and
    # Bob, logging in again through node A, gets nothing he acked a second time.
    node_a.restart()
    again = await anonymous(node_a.url)
    assert isinstance(await again.send([box], b"after the crash"), Sent)
    last = await bob.next_delivery(wait_s=10)
    assert (last.blob, last.seq) == (b"after the crash", 41)
    await bob.ack(box, up_to_seq=41)
    await asyncio.sleep(0.3)
    await bob.close()
    assert bob.identity is not None
    bob_again = await RelayClient.open(node_a.url)
    await bob_again.auth(bob.identity)  # a login signed for the relay id every node shares
    await bob_again.subscribe(box)
    await bob_again.no_delivery(0.5)
    for client in (bob_again, again, sender):
        await client.close()


async def test_a_rotated_mailbox_is_retired_on_every_node(cluster: Cluster) -> None:
    """Node B caches Bob's capability; Bob rotates the mailbox through node A. B must
    forget its cache (the bus's invalidation): an ephemeral signal, which only the
    capability check stands between, is refused once the old mailbox retired."""
    node_a, node_b = cluster.node(), cluster.node()
    bob = await connect_user(node_a.url)
    box = await bob.create_mailbox()
    sender = await anonymous(node_b.url)
    assert isinstance(await sender.send([box], b"cached on B"), Sent)
    await bob.expect(MailboxCreated, lambda rid: RotateMailbox(
        request_id=rid, mailbox_id=box.mailbox_id, capability_hash=os.urandom(32),
        retire_at_ms=now_ms() + 200))
    await asyncio.sleep(0.5)
    refused = await sender.error(lambda rid: SendEphemeral(
        request_id=rid, client_msg_id=os.urandom(16), blob=b"typing",
        recipients=(box.recipient,)))
    assert refused.code is ErrorCode.WRONG_CAPABILITY
    answer = await sender.send([box], b"too late")
    assert isinstance(answer, Error) and answer.code is ErrorCode.WRONG_CAPABILITY, answer


async def _acked(cluster: Cluster, box: Mailbox) -> None:
    """Wait until the shared store holds nothing for *box* (an ``Ack`` has no answer)."""
    import asyncpg

    conn = await asyncpg.connect(cluster.dsn)
    try:
        async with asyncio.timeout(10):
            while await conn.fetchval(  # noqa: ASYNC110
                    f'SELECT count(*) FROM "{cluster.schema}".deliveries'
                    " WHERE mailbox_id = $1", box.mailbox_id):
                await asyncio.sleep(0.02)
    finally:
        await conn.close()


async def _bob_on_two_nodes(node_a: RelayProcess, node_b: RelayProcess,
                            ) -> tuple[RelayClient, Identity, Mailbox, RelayClient]:
    """Bob registered through node A with a mailbox, and another session of his
    (the same key) logged in on node B."""
    bob = await connect_user(node_a.url)
    assert bob.identity is not None
    box = await bob.create_mailbox()
    elsewhere = await RelayClient.open(node_b.url)
    await elsewhere.auth(bob.identity)
    return bob, bob.identity, box, elsewhere


async def test_deleting_an_account_closes_its_sessions_on_every_node(
        cluster: Cluster) -> None:
    """Bob deletes his account through node A while another of his sessions, subscribed
    to his mailbox, is on node B: B closes it too (the bus's account deletion), as one
    relay closes every session of a deleted account."""
    node_a, node_b = cluster.node(), cluster.node()
    bob, _, box, elsewhere = await _bob_on_two_nodes(node_a, node_b)
    await elsewhere.subscribe(box)
    bystander = await connect_user(node_b.url)  # another account's session stays open
    assert isinstance(await bob.request(lambda rid: DeleteAccount(request_id=rid)), Ok)
    for client in (bob, elsewhere):
        await asyncio.wait_for(client.closed.wait(), 5)
    assert elsewhere.close_code == 1000
    await bystander.create_mailbox()  # still served
    assert not bystander.closed.is_set()
    await bystander.close()


async def test_a_mailbox_subscribed_on_another_node_moves_there(cluster: Cluster) -> None:
    """One live subscription per mailbox holds across nodes as on one relay: Bob's
    session on node B subscribing his mailbox takes it from his session on node A (the
    later subscription keeps it), and back again."""
    node_a, node_b = cluster.node(), cluster.node()
    bob, _, box, elsewhere = await _bob_on_two_nodes(node_a, node_b)
    await bob.subscribe(box)
    sender = await anonymous(node_a.url)
    assert isinstance(await sender.send([box], b"to A"), Sent)
    first = await bob.next_delivery(wait_s=10)
    assert first.blob == b"to A"
    await bob.ack(box, up_to_seq=first.seq)
    await _acked(cluster, box)  # else B's subscription may deliver it again (at least once)
    await elsewhere.subscribe(box)
    await asyncio.sleep(0.5)  # the bus tells node A (not awaited by Subscribe)
    for i in range(3):
        assert isinstance(await sender.send([box], b"to B %d" % i), Sent)
    got = await elsewhere.deliveries_of(3, wait_s=10)
    assert [d.blob for d in got] == [b"to B %d" % i for i in range(3)]
    await bob.no_delivery(0.5)  # node A stopped delivering it
    await elsewhere.ack(box, up_to_seq=got[-1].seq)
    await _acked(cluster, box)
    await bob.subscribe(box)  # and back
    await asyncio.sleep(0.5)
    assert isinstance(await sender.send([box], b"to A again"), Sent)
    assert (await bob.next_delivery(wait_s=10)).blob == b"to A again"
    await elsewhere.no_delivery(0.5)
    for client in (bob, elsewhere, sender):
        await client.close()


async def test_a_push_url_set_on_one_node_is_used_by_another(
        cluster: Cluster, tmp_path: Path) -> None:
    """Node B caches "no push URL" for Bob's mailbox; Bob registers one through node A;
    B must forget its cache (the bus's invalidation) and wake Bob on the next send."""
    async with push_receiver(tmp_path) as receiver:
        env = {"SSL_CERT_FILE": str(receiver.cert)}
        node_a = cluster.node("--push-allow-http", env=env)
        node_b = cluster.node("--push-allow-http", env=env)
        bob = await connect_user(node_a.url)
        box = await bob.create_mailbox()
        sender = await anonymous(node_b.url)
        assert isinstance(await sender.send([box], b"nobody to wake"), Sent)
        await asyncio.sleep(0.3)
        assert not receiver.hits
        url = receiver.url()
        assert isinstance(await bob.request(lambda rid: RegisterPush(
            request_id=rid, mailbox_ids=(box.mailbox_id,), url=url)), Ok)
        await asyncio.sleep(0.3)  # the invalidation crosses Redis
        assert isinstance(await sender.send([box], b"wake up"), Sent)
        await asyncio.wait_for(receiver.event.wait(), 10)
        assert len(receiver.hits) == 1


def test_admin_commands_on_the_shared_database(cluster: Cluster) -> None:
    node = cluster.node()
    assert node.url
    env = {"PIGEON_RELAY_STORE_URL": cluster.dsn, "PIGEON_RELAY_STORE_SCHEMA": cluster.schema}
    out = run_cli(["admin", "--json", "invite", "create", "--count", "2"], env=env,
                  cwd=cluster.folder)
    assert out.returncode == 0, out.stderr
    listed = run_cli(["admin", "--json", "invite", "list"], env=env, cwd=cluster.folder)
    assert listed.returncode == 0, listed.stderr
    assert len(json.loads(listed.stdout)) == 2
    queues = run_cli(["admin", "--json", "queues"], env=env, cwd=cluster.folder)
    assert queues.returncode == 0, queues.stderr
    assert not (cluster.folder / "pigeon-relay.db").exists()  # no SQLite file made up
    info = run_cli(["admin", "--json", "info"], env=env, cwd=cluster.folder)
    assert info.returncode == 0, info.stderr
    shown = json.loads(info.stdout)
    assert shown["database"] == f"postgresql, schema {cluster.schema}"
    assert shown["relay_id"] is None and shown["secret_file"] is None  # given per node
    # A mistyped schema is an error, not a new empty deployment.
    typo = {**env, "PIGEON_RELAY_STORE_SCHEMA": cluster.schema + "_typo"}
    wrong = run_cli(["admin", "--json", "queues"], env=typo, cwd=cluster.folder)
    assert wrong.returncode == 1 and "no relay tables" in wrong.stderr, wrong.stderr


async def test_admin_deleting_an_account_tells_the_nodes(cluster: Cluster) -> None:
    """``pigeon-relay admin accounts delete`` with the bus: the node closes the account's
    live session and forgets its cached capability (an ephemeral signal, which only the
    cache stands between, is refused at once), as after a DeleteAccount frame."""
    node = cluster.node()
    bob = await connect_user(node.url)
    assert bob.identity is not None
    box = await bob.create_mailbox()
    await bob.subscribe(box)
    sender = await anonymous(node.url)
    assert isinstance(await sender.send([box], b"the capability is cached now"), Sent)
    args = ["admin", "--json", "--store-url", cluster.dsn, "--store-schema", cluster.schema,
            "--bus-url", cluster.redis, "--bus-prefix", cluster.prefix,
            "--secret-file", str(cluster.folder / "token.secret")]
    out = await asyncio.to_thread(
        run_cli, [*args, "accounts", "delete", bob.identity.account_id.hex()],
        cwd=cluster.folder)
    assert out.returncode == 0, out.stderr
    assert json.loads(out.stdout) == {"deleted": True, "nodes_told": True}
    await asyncio.wait_for(bob.closed.wait(), 5)
    refused = await sender.error(lambda rid: SendEphemeral(
        request_id=rid, client_msg_id=os.urandom(16), blob=b"typing",
        recipients=(box.recipient,)))
    assert refused.code is ErrorCode.WRONG_CAPABILITY
    again = await asyncio.to_thread(
        run_cli, [*args, "accounts", "delete", bob.identity.account_id.hex()],
        cwd=cluster.folder)
    assert again.returncode == 1
    assert json.loads(again.stdout) == {"deleted": False, "nodes_told": False}


async def test_a_rotated_identity_ends_the_old_keys_sessions_on_every_node(
        cluster: Cluster) -> None:
    """Bob rotates his identity through node A. A session that proved the old key on
    node B is closed (the bus); sessions on a node that never hears of it (another bus
    prefix: a lost notice) may change or delete nothing of the account: each such frame
    is refused AUTH_FAILED and closes that session."""
    node_a, node_b = cluster.node(), cluster.node()
    deaf = cluster.node("--bus-prefix", unique_name("deaf"))
    bob, old, box, on_b = await _bob_on_two_nodes(node_a, node_b)
    frames = [
        lambda rid: DeleteAccount(request_id=rid),
        lambda rid: Subscribe(request_id=rid, mailbox_ids=(box.mailbox_id,)),
        lambda rid: UploadPrekeys(request_id=rid, one_time_prekeys=(bytes(37),)),
        lambda rid: CreateMailbox(request_id=rid, capability_hash=bytes(32)),
        lambda rid: RegisterPush(request_id=rid, mailbox_ids=(box.mailbox_id,),
                                 url="https://push.invalid/x"),
        lambda rid: RotateMailbox(request_id=rid, mailbox_id=box.mailbox_id,
                                  capability_hash=bytes(32), retire_at_ms=now_ms()),
    ]
    stale = []
    for _ in frames:
        session = await RelayClient.open(deaf.url)
        await session.auth(old)
        stale.append(session)
    new = Identity()
    rotation = IdentityRotation.create(account_id=old.account_id, serial=1, old=old.keys,
                                       new=new.keys)
    by_new = bob.sign_challenge(new, account_id=old.account_id)
    assert isinstance(await bob.request(lambda rid: RotateIdentity(
        request_id=rid, rotation=rotation.to_bytes(), signature=by_new)), Ok)
    await asyncio.wait_for(on_b.closed.wait(), 5)
    assert on_b.close_code == 1000
    for session, make in zip(stale, frames, strict=True):
        assert not session.closed.is_set()
        err = await session.error(make)
        assert err.code is ErrorCode.AUTH_FAILED, err
        await asyncio.wait_for(session.closed.wait(), 5)
    # The account is whole: the rotating session still owns and uses its mailbox.
    await bob.subscribe(box)
