"""Blindness: after a full session, the relay holds nothing that reveals content or senders.

Three users run real end-to-end sessions through the relay process: PQXDH first contact
through published contact mailboxes (bundles fetched over anonymous connections),
pairwise mailboxes announced inside the sessions, Double Ratchet text messages both
ways, a file (chunked file encryption, uploaded as a blob, its manifest with the file
name inside a message) and a group message sent once to two mailboxes (one sender-key
ciphertext, fanned out). Senders always write over separate anonymous connections.

Then the relay is stopped and everything it kept is scanned: the whole SQLite file (with
its WAL), the blob folder and its log (at DEBUG level). None of it contains a plaintext,
the file's content or name, or a raw ``client_msg_id``. Nothing stored with envelopes
(blobs, deliveries, idempotency records), in the blob folder or in the log contains a
sender's identity key or account id, in raw, hex or base64 form. (The accounts table
legitimately holds identity keys, and the mailboxes table owners' account ids: what the
relay must not have is a link from an envelope to its sender.)
"""

from __future__ import annotations

import asyncio
import base64
import os
import signal
import sqlite3
from dataclasses import dataclass, field

import aiohttp

from pigeon_crypto.files import FileDecryptor, FileEncryptor, FileManifest, encrypt_stream
from pigeon_crypto.identity import IdentityPublicKey
from pigeon_crypto.padding import pad_message, unpad_message
from pigeon_crypto.pqxdh import MemoryResponderKeys, accept, initiate
from pigeon_crypto.prekeys import (
    KemKind,
    KemPreKey,
    KemPreKeyPair,
    OneTimePreKey,
    OneTimePreKeyPair,
    PreKeyBundle,
    SignedPreKey,
    SignedPreKeyPair,
)
from pigeon_crypto.ratchet import RatchetState
from pigeon_crypto.rng import system_rng
from pigeon_crypto.sender_keys import InboundSenderKey, OutboundSenderKey, SenderKeyDistribution
from protocol import (
    BlobToken,
    Bundle,
    FetchBundle,
    File,
    InnerMessage,
    MailboxAnnouncement,
    Ok,
    RequestBlobDownload,
    RequestBlobUpload,
    Sent,
    SetContactMailbox,
    Text,
    UploadPrekeys,
    decode_inner,
)
from protocol import SenderKeyDistribution as SenderKeyDistributionMessage

from ._relay_fixtures import files_under, get_chunk, put_chunk
from .conftest import RelayFactory
from .wsclient import Identity, Mailbox, RelayClient, anonymous, connect_user, new_id, now_ms

FILE_NAME = "quarterly-secret-report.pdf"


@dataclass
class Peer:
    """One user: identity, account connection, prekeys, sessions and mailboxes."""

    name: str
    identity: Identity
    conn: RelayClient
    sender: RelayClient  # anonymous connection used for every send
    responder: MemoryResponderKeys = field(default_factory=MemoryResponderKeys)
    contact: Mailbox | None = None
    sessions: dict[str, RatchetState] = field(default_factory=dict)
    inbox: dict[str, Mailbox] = field(default_factory=dict)  # where each peer writes to me
    outbox: dict[str, tuple[bytes, bytes]] = field(default_factory=dict)  # where I write
    client_msg_ids: list[bytes] = field(default_factory=list)

    async def send(self, recipients: list[tuple[bytes, bytes]], blob: bytes) -> None:
        cmid = new_id()
        self.client_msg_ids.append(cmid)
        answer = await self.sender.send(recipients, blob, client_msg_id=cmid)
        assert isinstance(answer, Sent) and not answer.rejected, answer

    def seal(self, to: str, inner: InnerMessage) -> bytes:
        enc = self.sessions[to].encrypt(pad_message(inner.encode()), rng=system_rng)
        self.sessions[to] = enc.state
        return enc.message

    def open(self, peer: str, message: bytes) -> InnerMessage:
        dec = self.sessions[peer].decrypt(message, now_ms=now_ms())
        self.sessions[peer] = dec.state
        return decode_inner(unpad_message(dec.plaintext))


def meta() -> dict[str, object]:
    return {"message_id": new_id(), "sent_at_ms": now_ms()}


async def make_peer(url: str, name: str) -> Peer:
    ident = Identity()
    conn = await connect_user(url, identity=ident)
    peer = Peer(name, ident, conn, await anonymous(url))
    keys, now = ident.keys, now_ms()
    spk = SignedPreKeyPair.generate(keys, key_id=1, now_ms=now, rng=system_rng)
    last = KemPreKeyPair.generate(keys, key_id=1, kind=KemKind.LAST_RESORT, now_ms=now,
                                  rng=system_rng)
    otks = [OneTimePreKeyPair.generate(key_id=i, rng=system_rng) for i in (1, 2)]
    kem = KemPreKeyPair.generate(keys, key_id=2, kind=KemKind.ONE_TIME, now_ms=now,
                                 rng=system_rng)
    peer.responder.add(spk, last, kem, *otks)
    assert isinstance(await conn.request(lambda rid: UploadPrekeys(
        request_id=rid, signed_prekey=spk.public.to_bytes(), kem_prekey=last.public.to_bytes(),
        one_time_prekeys=tuple(k.public.to_bytes() for k in otks),
        one_time_kem_prekeys=(kem.public.to_bytes(),))), Ok)
    contact = peer.contact = await conn.create_mailbox()
    assert isinstance(await conn.request(lambda rid: SetContactMailbox(
        request_id=rid, mailbox_id=contact.mailbox_id, capability=contact.capability)), Ok)
    await conn.subscribe(contact)
    return peer


async def first_contact(a: Peer, b: Peer) -> None:
    """*a* starts a session with *b* through b's contact mailbox; b answers pairwise."""
    bundle = await a.sender.expect(Bundle, lambda rid: FetchBundle(
        request_id=rid, account_id=b.identity.account_id))
    assert bundle.contact_mailbox_id is not None and bundle.contact_capability is not None
    prekeys = PreKeyBundle(
        identity=IdentityPublicKey.from_bytes(bundle.identity_key),
        signed_prekey=SignedPreKey.from_bytes(bundle.signed_prekey),
        kem_prekey=KemPreKey.from_bytes(bundle.kem_prekey),
        one_time_prekey=(OneTimePreKey.from_bytes(bundle.one_time_prekey)
                         if bundle.one_time_prekey else None))
    a.inbox[b.name] = await a.conn.create_mailbox()
    await a.conn.subscribe(a.inbox[b.name])
    hello = MailboxAnnouncement(**meta(), mailbox_id=a.inbox[b.name].mailbox_id,  # type: ignore[arg-type]
                                capability=a.inbox[b.name].capability)
    init = initiate(a.identity.keys, prekeys, pad_message(hello.encode()), rng=system_rng)
    a.sessions[b.name] = init.session
    await a.send([(bundle.contact_mailbox_id, bundle.contact_capability)], init.message)
    # b finds it in its contact mailbox, by its ephemeral key; the sender is inside.
    delivery = await b.conn.next_delivery()
    accepted = accept(b.identity.keys, b.responder, delivery.blob, now_ms=now_ms())
    b.responder.commit(accepted)
    assert accepted.peer.same_key(a.identity.keys.public)
    announced = decode_inner(unpad_message(accepted.payload))
    assert isinstance(announced, MailboxAnnouncement)
    await b.conn.ack(delivery.mailbox_id, up_to_seq=delivery.seq)
    b.sessions[a.name] = accepted.session
    b.outbox[a.name] = (announced.mailbox_id, announced.capability)
    b.inbox[a.name] = await b.conn.create_mailbox()
    await b.conn.subscribe(b.inbox[a.name])
    reply = MailboxAnnouncement(**meta(), mailbox_id=b.inbox[a.name].mailbox_id,  # type: ignore[arg-type]
                                capability=b.inbox[a.name].capability)
    await b.send([b.outbox[a.name]], b.seal(a.name, reply))
    delivery = await a.conn.next_delivery()
    announced = a.open(b.name, delivery.blob)
    assert isinstance(announced, MailboxAnnouncement)
    a.outbox[b.name] = (announced.mailbox_id, announced.capability)


async def chat(a: Peer, b: Peer, text: str, *, ack: bool) -> None:
    await a.send([a.outbox[b.name]], a.seal(b.name, Text(**meta(), text=text)))  # type: ignore[arg-type]
    delivery = await b.conn.next_delivery()
    got = b.open(a.name, delivery.blob)
    assert isinstance(got, Text) and got.text == text
    if ack:
        await b.conn.ack(delivery.mailbox_id, up_to_seq=delivery.seq)


async def test_the_relay_keeps_no_content_and_no_sender(relay_factory: RelayFactory) -> None:
    rp = relay_factory(["--log-level", "DEBUG"])
    alice, bob, carol = [await make_peer(rp.url, n) for n in ("alice", "bob", "carol")]
    plaintexts = [f"PLAINTEXT-{i}-{os.urandom(6).hex()} meet at the old mill" for i in range(6)]
    await first_contact(alice, bob)
    await first_contact(alice, carol)
    await first_contact(carol, bob)
    await chat(alice, bob, plaintexts[0], ack=True)
    await chat(bob, alice, plaintexts[1], ack=True)
    await chat(carol, bob, plaintexts[2], ack=False)  # left queued at the relay
    await chat(alice, carol, plaintexts[3], ack=False)

    # A file: encrypted chunks as a blob; its manifest (key, name) inside a message.
    file_data = (b"FILE-CONTENT-" + os.urandom(8).hex().encode()) * 5000
    enc = FileEncryptor.create(system_rng)
    chunks = list(encrypt_stream([file_data], enc))
    grant = await alice.conn.expect(BlobToken, lambda rid: RequestBlobUpload(
        request_id=rid, size=sum(map(len, chunks)), chunk_count=len(chunks)))
    async with aiohttp.ClientSession() as http:
        for i, chunk in enumerate(chunks):
            assert await put_chunk(http, rp.url, grant, i, chunk) == 200
        manifest = enc.manifest(name=FILE_NAME, media_type="application/pdf",
                                blob_id=grant.blob_id)
        await alice.send([alice.outbox["bob"]], alice.seal("bob", File(
            **meta(), manifest=manifest.to_bytes())))  # type: ignore[arg-type]
        delivery = await bob.conn.next_delivery()
        got = bob.open("alice", delivery.blob)
        assert isinstance(got, File)
        received = FileManifest.from_bytes(got.manifest)
        assert received.name == FILE_NAME
        down = await bob.sender.expect(BlobToken, lambda rid: RequestBlobDownload(
            request_id=rid, blob_id=received.blob_id))
        dec = FileDecryptor.from_manifest(received)
        out = b"".join([dec.update(await get_chunk(http, rp.url, down, i))
                        for i in range(received.chunk_count)])
        dec.finalize()
        assert out == file_data

    # A group message: one sender-key ciphertext, one Send, two mailboxes.
    group_key = OutboundSenderKey.create(system_rng)
    group_id = os.urandom(16)
    inbound: dict[str, InboundSenderKey] = {}
    for member in (bob, carol):
        dist = SenderKeyDistributionMessage(**meta(), group_id=group_id,  # type: ignore[arg-type]
                                            distribution=group_key.distribution().to_bytes())
        await alice.send([alice.outbox[member.name]], alice.seal(member.name, dist))
        delivery = await member.conn.next_delivery()
        got = member.open("alice", delivery.blob)
        assert isinstance(got, SenderKeyDistributionMessage)
        inbound[member.name] = InboundSenderKey.from_distribution(
            SenderKeyDistribution.from_bytes(got.distribution))
    group_text = f"GROUP-PLAINTEXT-{os.urandom(6).hex()}"
    group_key, ciphertext = group_key.encrypt(pad_message(Text(**meta(), text=group_text).encode()))  # type: ignore[arg-type]
    await alice.send([alice.outbox["bob"], alice.outbox["carol"]], ciphertext)
    for member in (bob, carol):
        delivery = await member.conn.next_delivery()
        _, padded = inbound[member.name].decrypt(delivery.blob)
        got = decode_inner(unpad_message(padded))
        assert isinstance(got, Text) and got.text == group_text
    plaintexts.append(group_text)
    await asyncio.sleep(0.2)  # let the last acks commit

    # Stop the relay (graceful) and look at everything it kept.
    assert rp.signal(signal.SIGTERM) == 0
    data_dir = rp.data_dir
    db_bytes = b"".join(p.read_bytes() for p in data_dir.glob("pigeon-relay.db*"))
    blob_bytes = b"".join(p.read_bytes() for p in files_under(data_dir / "pigeon-relay-blobs"))
    log_bytes = rp.log().encode()
    conn = sqlite3.connect(f"file:{data_dir / 'pigeon-relay.db'}?mode=ro", uri=True)
    try:
        envelopes = [repr(row).encode() + b"".join(v for v in row if isinstance(v, bytes))
                     for table in ("blobs", "deliveries", "dedup", "send_dedup")
                     for row in conn.execute(f"SELECT * FROM {table}")]
        queued = conn.execute("SELECT count(*) FROM deliveries").fetchone()[0]
    finally:
        conn.close()
    assert queued >= 2  # some envelopes are still stored: the scan is not of an empty table
    envelope_bytes = b"".join(envelopes)
    # The scan reads real bytes: the accounts table legitimately holds identity keys.
    assert alice.identity.public in db_bytes
    assert b"PUT /v1/blobs/" in log_bytes and b"DEBUG" in log_bytes

    content = [p.encode() for p in plaintexts] + [FILE_NAME.encode(), file_data[:64]]
    content += [c for peer in (alice, bob, carol) for c in peer.client_msg_ids]
    for needle in content:
        for where, haystack in (("database", db_bytes), ("blobs", blob_bytes),
                                ("log", log_bytes)):
            for form in forms(needle):
                assert form not in haystack, f"{where} holds content {needle[:24]!r}"
    for peer in (alice, bob, carol):
        for needle in (peer.identity.account_id, peer.identity.public,
                       peer.identity.keys.public.signing_key):
            for where, haystack in (("envelopes", envelope_bytes), ("blobs", blob_bytes),
                                    ("log", log_bytes)):
                for form in forms(needle):
                    assert form not in haystack, f"{where} names sender {peer.name}"
    for peer in (alice, bob, carol):
        for c in (peer.conn, peer.sender):
            await c.close()


def forms(needle: bytes) -> list[bytes]:
    """*needle* as raw bytes, hex (both cases) and base64 (standard and URL-safe)."""
    out = [needle, needle.hex().encode(), needle.hex().upper().encode()]
    if len(needle) >= 12:
        out += [base64.b64encode(needle)[:16], base64.urlsafe_b64encode(needle)[:16]]
    return out
