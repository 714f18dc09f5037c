"""Frozen profiles, one per shipped schema version: how they were built and how they read.

STYLE.md §3: freeze a fixture for every shipped version (python-doubleratchet
``tests/migration_data/``). A migration must never lose or damage what an older SDK
stored, so for every schema version N the tests open ``data/profile_vN.db.gz`` with
today's code (``test_profile_fixtures.py``), and the file must have been written by
version N's *own* code: today's code would write today's schema, which proves nothing.

Files per version (N >= 2; version 1 predates this module, see below):

``data/profile_vN.db.gz``
    the profile as version N left it (gzip, mtime 0), passphrase :data:`PASSPHRASE`.
``data/profile_vN.json``
    ``{"schema_version", "commit", "probes", "snapshot"}``: what version N's code read
    back from the file right after writing it (``profile_snapshot.snapshot``), the keys it
    looked up (``probes``). The tests read the same with today's code and compare.

What a fixture holds (:func:`build`, gated by version so that each version's run uses
only the store API it had): our identity with one rotation; signed (one retired), KEM and
one-time prekeys, some published, and an id counter; a responder session with its
PQXDH bookkeeping (consumed prekeys, replay record, processed envelope); a ratchet
session with a contact (mailboxes both ways, sealed avatar); settings (clear and
sealed); a direct conversation with our and their messages, an edit, reactions, a
reply, a tombstone, a file message, a disappearing message, imported messages and
FTS-searchable words; outbox rows (one attempted, one bare); our sender key, its
shares and a member's sender-key record. v2+: file transfers (an upload in progress,
a failed download). v3+: a group (two valid states and a pending one, the chain
index, a pending blob, a group conversation) and a channel we left. v5+: group
receipts. v6+: a channel with subscriptions (one subscribed, one removed). v7+: that
channel's stored roster. v8+: the two halves of sealed group changes (a blob, a key).

Building the fixture of a NEW schema version N (never rebuild a shipped one; the
builder refuses to overwrite), from /work/main::

    git worktree add --detach /tmp/fixture-vN <commit>
    cd /tmp/fixture-vN && PYTHONPATH=/tmp/fixture-vN /work/main/.venv/bin/python \\
        /work/main/tests/unit/client_sdk/profile_fixtures.py N
    cd /work/main && git worktree remove --force /tmp/fixture-vN

where ``<commit>`` is the last commit whose ``SCHEMA_VERSION`` is N (the parent of the
commit that introduced N + 1, or HEAD for the newest: commit a schema bump, then build
its fixture from that commit and commit the two files and the :data:`BUILT_WITH` entry
right after). The builder checks that the checkout is :data:`BUILT_WITH` [N] at schema
version N, and that every ``client_sdk``, ``pigeon_crypto`` and ``protocol`` module it
loaded came from the checkout: the venv's editable install maps those packages to
/work/main, so one missing from the checkout would silently come from today's code.
Add a ``version >= N`` block to :func:`build` and to ``profile_snapshot.snapshot`` for
what the new version can store.

It imports nothing from the test suite but ``profile_snapshot``: it runs against old
checkouts.
"""

from __future__ import annotations

import dataclasses
import gzip
import json
import os
import subprocess
import sys
import tempfile
from pathlib import Path
from typing import Any

if __package__:
    from .profile_snapshot import snapshot
else:  # run as a script against an old checkout (see above): a sibling module
    from profile_snapshot import snapshot  # type: ignore[import-not-found, no-redef]

DATA = Path(__file__).parent / "data"
PASSPHRASE = "fixture passphrase"
NOW = 1_790_000_000_000

BUILT_WITH: dict[int, str] = {
    # Version 1 was frozen by test_profile.build_fixture when it was current (b744200);
    # it holds an identity, a session and one message, and has no JSON.
    1: "b744200d071dd697b74bc61d3bf482bc135705ea",
    2: "43734c94c571c15db15223ac4b94353e6946aaed",  # 465c11e^: schema v2, file_transfers
    3: "f34125050b59176881abd1afcea690b263973bf5",  # 550a3b8^: schema v3, groups
    4: "e78ef12c4b71ffe307330781e1afe76d6ef65dac",  # 33856fe^: schema v4, no FTS trigger
    5: "ac7116fc2296599581740c2c00f18bce34004c42",  # 2db9b32^: schema v5, group_receipts
    6: "d5c78154162203f5b7e77b13063eb62114278178",  # 72f5a19^: schema v6, subscriptions
    7: "aef29ebef952aaf6979b09d7e2991d62505aaf48",  # HEAD then: schema v7, channel_rosters
    8: "bb57631340756aa69cd15a6bce4f7666cf2cdb58",  # HEAD then: schema v8, group_sealed
}
"""Schema version -> the commit whose own code wrote ``data/profile_vN.db.gz``."""

SEARCH_WORDS = ("marmot", "albatross", "wording", "draft", "deleted", "plans", "imported",
                "disappearing", "outbox", "group")
"""Searched in every fixture: hits, and words that must not hit (an edit's old text, a
tombstone's body)."""

GROUP_ID = bytes.fromhex("6701") + bytes(14)
LEFT_CHANNEL_ID = bytes.fromhex("6702") + bytes(14)
SUB_CHANNEL_ID = bytes.fromhex("6703") + bytes(14)


def fixture_path(version: int) -> Path:
    return DATA / f"profile_v{version}.db.gz"


def expected_path(version: int) -> Path:
    return DATA / f"profile_v{version}.json"


def ident(tag: int, n: int, size: int = 16) -> bytes:
    """A recognizable id: *tag* byte, then *n* big-endian."""
    return bytes([tag]) + n.to_bytes(size - 1, "big")


# --- building (runs against version N's checkout) -------------------------------------------


def build(path: Path, version: int) -> dict[str, Any]:
    """Write version *version*'s fixture profile at *path* with the code imported now.

    Returns the probes: the keys :func:`snapshot` looks up.
    """
    from client_sdk.history import (
        ConversationKind,
        DeleteMessage,
        DeleteScope,
        EditMessage,
        MessageKind,
        MessageStatus,
        NewMessage,
        React,
        UpdateStatus,
    )
    from client_sdk.store import (
        Contact,
        ContactState,
        EnvelopeRef,
        Incoming,
        LocalIdentity,
        MailboxDirection,
        OutboxEntry,
        Outgoing,
        PairwiseMailbox,
        PrekeyKind,
        Profile,
        Recipient,
        SessionUpdate,
    )
    from pigeon_crypto import x25519
    from pigeon_crypto.identity import IdentityKeyPair, IdentityRotation, account_id_for
    from pigeon_crypto.pqxdh import Accepted
    from pigeon_crypto.prekeys import KemKind, KemPreKeyPair, OneTimePreKeyPair, SignedPreKeyPair
    from pigeon_crypto.ratchet import init_initiator, init_responder
    from pigeon_crypto.rng import SeededRng
    from pigeon_crypto.sealing import Argon2Params
    from pigeon_crypto.sender_keys import OutboundSenderKey, SenderKeyRecord

    rng = SeededRng(b"pigeon profile fixture v%d" % version)
    fast = Argon2Params(time_cost=1, memory_kib=8, parallelism=1)
    ad = b"A" * 129 + b"B" * 129
    first, me_key = IdentityKeyPair.generate(rng), IdentityKeyPair.generate(rng)
    ada_key, bo_key, cy_key = (IdentityKeyPair.generate(rng) for _ in range(3))
    ada, bo, cy = (account_id_for(k.public) for k in (ada_key, bo_key, cy_key))

    def cap(n: int) -> bytes:
        return ident(0xCA, n, 32)

    def mid(n: int) -> bytes:
        return ident(0x3D, n)

    def mbox(n: int) -> bytes:
        return ident(0x3B, n)

    with Profile.create(path, PASSPHRASE, params=fast, rng=rng) as profile:
        s = profile.store
        # Identity: the first key, then a rotation to the current one.
        local = LocalIdentity.new(first)
        s.save_local_identity(local)
        rotation = IdentityRotation.create(account_id=local.account_id, serial=1, old=first,
                                           new=me_key)
        s.save_local_identity(LocalIdentity(account_id=local.account_id, initial=first.public,
                                            rotations=(rotation,), key_pair=me_key))
        me = local.account_id

        # Prekeys: signed 1 (retired) and 2, KEM last resort 1 and one-time 2-3,
        # one-time 1-3; some published; the one-time counter moved on.
        spk1 = SignedPreKeyPair.generate(me_key, key_id=1, now_ms=NOW, rng=rng)
        spk2 = SignedPreKeyPair.generate(me_key, key_id=2, now_ms=NOW + 1000, rng=rng)
        kems = [KemPreKeyPair.generate(me_key, key_id=1, kind=KemKind.LAST_RESORT, now_ms=NOW,
                                       rng=rng),
                *(KemPreKeyPair.generate(me_key, key_id=i, kind=KemKind.ONE_TIME, now_ms=NOW,
                                         rng=rng) for i in (2, 3))]
        otks = [OneTimePreKeyPair.generate(key_id=i, rng=rng) for i in (1, 2, 3)]
        s.save_signed_prekey(spk1)
        s.save_signed_prekey(spk2)
        s.save_kem_prekeys(kems)
        s.save_one_time_prekeys(otks)
        s.mark_published(PrekeyKind.SIGNED, [1, 2], now_ms=NOW + 10)
        s.mark_published(PrekeyKind.KEM, [1, 2], now_ms=NOW + 10)
        s.mark_published(PrekeyKind.ONE_TIME, [1, 2], now_ms=NOW + 10)
        s.retire_signed_prekey(1, now_ms=NOW + 2000)
        s.allocate_prekey_ids(PrekeyKind.ONE_TIME, 2)

        # A ratchet session with Ada, advanced by one message.
        secret = rng(32)
        ada_ratchet = x25519.generate_private(rng)
        session = init_initiator(shared_secret=secret,
                                 peer_ratchet_public=x25519.public_from_private(ada_ratchet),
                                 associated_data=ad, rng=rng)
        session = session.encrypt(b"first", rng=rng).state
        s.store_session(ada, session)
        s.save_contact(Contact(
            account_id=ada, state=ContactState.ACCEPTED, identity=ada_key.public,
            rotation_chain=b"\x01rotation-chain", profile_name="Ada",
            avatar_manifest=b"AVATAR-MANIFEST-" + rng(32),
            mailboxes=(
                PairwiseMailbox(mailbox_id=mbox(1), direction=MailboxDirection.OUTBOUND,
                                capability=cap(1), created_at_ms=NOW),
                PairwiseMailbox(mailbox_id=mbox(2), direction=MailboxDirection.INBOUND,
                                capability=cap(2), relay_url="https://relay.example",
                                created_at_ms=NOW + 1),
                PairwiseMailbox(mailbox_id=mbox(3), direction=MailboxDirection.INBOUND,
                                capability=cap(3), created_at_ms=NOW - 5,
                                retired_at_ms=NOW + 1)),
            verified=True, created_at_ms=NOW, updated_at_ms=NOW + 1))
        s.put_setting("relay_url", b"https://relay.example", secret=False)
        s.put_setting("relay_token", rng(32), secret=True)

        # The direct conversation with Ada.
        cid = s.ensure_conversation(ConversationKind.DIRECT, ada, now_ms=NOW, title="Ada").id
        s.apply(NewMessage(conversation_id=cid, message_id=mid(1), sender=None,
                           sent_at_ms=NOW + 10, body=f"frozen in version {version}: a marmot",
                           status=MessageStatus.SENT), now_ms=NOW + 10)
        s.apply(UpdateStatus(conversation_id=cid, message_ids=(mid(1),),
                             status=MessageStatus.READ, by=ada, at_ms=NOW + 20), now_ms=NOW + 20)
        s.commit_receive(Incoming(
            envelope=EnvelopeRef(mailbox_id=mbox(2), seq=7), received_at_ms=NOW + 31,
            session=SessionUpdate(peer=ada, state=session),
            history=NewMessage(conversation_id=cid, message_id=mid(2), sender=ada,
                               sent_at_ms=NOW + 30, received_at_ms=NOW + 31,
                               body="the marmot replies", reply_to=mid(1))))
        s.apply(React(conversation_id=cid, target=mid(1), reactor=ada, emoji="\u2764\ufe0f",
                      at_ms=NOW + 32), now_ms=NOW + 32)
        s.apply(React(conversation_id=cid, target=mid(2), reactor=None, emoji="\U0001f44d",
                      at_ms=NOW + 33), now_ms=NOW + 33)
        s.apply(NewMessage(conversation_id=cid, message_id=mid(3), sender=None,
                           sent_at_ms=NOW + 40, body="draft wording",
                           status=MessageStatus.SENT), now_ms=NOW + 40)
        s.apply(EditMessage(conversation_id=cid, target=mid(3), editor=None,
                            text="edited wording, an albatross", edited_at_ms=NOW + 41),
                now_ms=NOW + 41)
        s.apply(NewMessage(conversation_id=cid, message_id=mid(4), sender=ada,
                           sent_at_ms=NOW + 50, received_at_ms=NOW + 51,
                           body="this will be deleted"), now_ms=NOW + 51)
        s.apply(DeleteMessage(conversation_id=cid, target=mid(4), by=ada,
                              scope=DeleteScope.FOR_EVERYONE, at_ms=NOW + 52), now_ms=NOW + 52)
        s.apply(NewMessage(conversation_id=cid, message_id=mid(5), sender=ada,
                           sent_at_ms=NOW + 60, received_at_ms=NOW + 61, kind=MessageKind.FILE,
                           body="the plans, as promised",
                           attachment=b"FILE-MANIFEST-" + rng(48)), now_ms=NOW + 61)
        s.set_expire_timer(cid, 86_400_000)
        s.apply(NewMessage(conversation_id=cid, message_id=mid(6), sender=ada,
                           sent_at_ms=NOW + 70, received_at_ms=NOW + 71,
                           body="a disappearing note"), now_ms=NOW + 71)
        s.set_expire_timer(cid, None)
        s.import_messages(
            NewMessage(conversation_id=cid, message_id=mid(n), sender=ada if n % 2 else None,
                       sent_at_ms=NOW - 1000 + n, received_at_ms=NOW - 999 + n if n % 2 else None,
                       body=f"imported message {n}",
                       status=None if n % 2 else MessageStatus.DELIVERED)
            for n in (7, 8))

        # Outbox: a message queued with its session and attempted once; a bare row.
        session_next = session.encrypt(b"second", rng=rng)
        s.enqueue(Outgoing(
            entry=OutboxEntry(client_msg_id=ident(0xC1, 1), created_at_ms=NOW + 80,
                              blob=session_next.message,
                              recipients=(Recipient(mailbox_id=mbox(1), capability=cap(1)),)),
            session=SessionUpdate(peer=ada, state=session_next.state),
            history=NewMessage(conversation_id=cid, message_id=mid(9), sender=None,
                               sent_at_ms=NOW + 80, body="queued in the outbox")))
        s.record_attempt(ident(0xC1, 1), retry_at_ms=NOW + 5000, error="relay unreachable")
        s.enqueue(Outgoing(entry=OutboxEntry(
            client_msg_id=ident(0xC1, 2), created_at_ms=NOW + 81, blob=rng(40),
            recipients=(Recipient(mailbox_id=mbox(1), capability=cap(1)),
                        Recipient(mailbox_id=mbox(9), capability=cap(9))))))

        # Bo wrote first (PQXDH): prekeys consumed, replay recorded, a pending contact.
        bo_secret = rng(32)
        bo_session = init_responder(shared_secret=bo_secret,
                                    our_ratchet_private=x25519.generate_private(rng),
                                    associated_data=ad)
        accepted = Accepted(peer=bo_key.public, session=bo_session, payload=b"hi",
                            replay_key=rng(32), signed_prekey_id=2, kem_prekey_id=2,
                            kem_prekey_kind=KemKind.ONE_TIME, one_time_prekey_id=1)
        bo_cid = s.ensure_conversation(ConversationKind.DIRECT, bo, now_ms=NOW + 90).id
        s.commit_receive(Incoming(
            envelope=EnvelopeRef(mailbox_id=ident(0x3B, 100), seq=1), received_at_ms=NOW + 91,
            session=SessionUpdate(peer=bo, state=bo_session), accepted=accepted,
            contact=Contact(account_id=bo, state=ContactState.PENDING, identity=bo_key.public,
                            created_at_ms=NOW + 91, updated_at_ms=NOW + 91),
            history=NewMessage(conversation_id=bo_cid, message_id=mid(10), sender=bo,
                               sent_at_ms=NOW + 90, received_at_ms=NOW + 91,
                               body="hello from bo, about the marmot")))

        # Sender keys: ours for the group (shared with Ada and Cy), and Ada's chain.
        ours = OutboundSenderKey.create(rng)
        ours, _ = ours.encrypt(b"group message")
        s.store_outbound_sender_key(GROUP_ID, ours)
        s.mark_sender_key_shared(GROUP_ID, ours.chain_id, [ada, cy])
        ada_chain = OutboundSenderKey.create(rng)
        s.store_sender_key_record(GROUP_ID, ada,
                                  SenderKeyRecord().process_distribution(ada_chain.distribution()))

        probes: dict[str, Any] = {
            "me": me.hex(), "peers": [ada.hex(), bo.hex(), cy.hex()],
            "replay_keys": [accepted.replay_key.hex(), bytes(32).hex()],
            "envelopes": [[mbox(2).hex(), 7], [ident(0x3B, 100).hex(), 1], [mbox(2).hex(), 8]],
            "mailboxes": [mbox(n).hex() for n in (1, 2, 3)],
            "settings": ["relay_url", "relay_token", "missing"],
            "sender_keys": {"group": GROUP_ID.hex(), "chain_id": ours.chain_id,
                            "members": [ada.hex(), cy.hex()]},
            "search": list(SEARCH_WORDS),
        }
        if version >= 2:
            _build_transfers(s, rng, ada)
        if version >= 3:
            probes["groups"] = _build_groups(s, rng, version=version, me_key=me_key, me=me,
                                              ada_key=ada_key, ada=ada, cy=cy,
                                              our_chain=ours.chain_id,
                                              ada_chain=ada_chain.chain_id)
    return probes


def _build_transfers(s: Any, rng: Any, peer: bytes) -> None:
    from client_sdk.store.transfers import (
        TransferDirection,
        TransferRecord,
        TransferState,
        empty_bitmap,
        set_bits,
        transfer_store,
    )
    from pigeon_crypto.files import FileLayout, FileManifest

    def manifest(size: int, name: str) -> FileManifest:
        layout = FileLayout(size, 1024)
        return FileManifest(key=rng(32), file_id=rng(16), chunk_size=1024, true_size=size,
                            padded_size=layout.padded_size, chunk_count=layout.chunk_count,
                            blob_id=rng(16), name=name, media_type="application/pdf")

    ts = transfer_store(s)
    up = manifest(5000, "plans.pdf")
    ts.put_transfer(TransferRecord(
        transfer_id=up.file_id, direction=TransferDirection.UPLOAD, state=TransferState.RUNNING,
        peer=peer, manifest=up.to_bytes(), message_id=ident(0x3D, 50), path="/home/me/plans.pdf",
        chunk_count=up.chunk_count, chunks_done=empty_bitmap(up.chunk_count),
        caption="the plans", token=rng(32), url_path="/v1/blobs/plans", token_expires_at_ms=NOW
        + 3_600_000, source_size=5000, source_mtime_ns=1_700_000_000_123_456_789,
        created_at_ms=NOW + 100, updated_at_ms=NOW + 100))
    ts.update_progress(up.file_id, set_bits(empty_bitmap(up.chunk_count), [0, 2]), 2048,
                       now_ms=NOW + 101)
    down = manifest(70_000, "photo.jpg")
    ts.put_transfer(TransferRecord(
        transfer_id=down.file_id, direction=TransferDirection.DOWNLOAD,
        state=TransferState.RUNNING, peer=peer, manifest=down.to_bytes(),
        message_id=ident(0x3D, 51), path="/home/me/Downloads/photo.jpg",
        chunk_count=down.chunk_count,
        chunks_done=set_bits(empty_bitmap(down.chunk_count), list(range(0, down.chunk_count, 3))),
        bytes_done=3 * 1024, created_at_ms=NOW + 110, updated_at_ms=NOW + 110))
    ts.set_transfer_state(down.file_id, TransferState.FAILED, error="HTTP 404: blob expired",
                          now_ms=NOW + 111)


def _build_groups(s: Any, rng: Any, *, version: int, me_key: Any, me: bytes, ada_key: Any,
                  ada: bytes, cy: bytes, our_chain: int, ada_chain: int) -> dict[str, Any]:
    from client_sdk.history import ConversationKind, MessageStatus, NewMessage
    from client_sdk.store.group_records import (
        GroupRecord,
        GroupWrite,
        PendingGroupBlob,
        SignedGroupState,
        StateStatus,
        StoredGroupState,
    )
    from pigeon_crypto.signing import Purpose
    from protocol.group import GroupState

    def signed(state: GroupState, key: Any = me_key) -> SignedGroupState:
        encoded = state.encode()
        return SignedGroupState.from_wire(encoded, key.sign(Purpose.GROUP_CONTROL, encoded))

    def ids(*accounts: bytes) -> tuple[bytes, ...]:
        return tuple(sorted(accounts))

    v1 = signed(GroupState(group_id=GROUP_ID, version=1, signer=me, name="Marmot watchers",
                           members=ids(me, ada), admins=(me,), at_ms=NOW + 200))
    v2 = signed(dataclasses.replace(v1.state, version=2, parent=v1.hash, at_ms=NOW + 201,
                                    members=ids(me, ada, cy), admins=ids(me, ada)))
    pending = signed(dataclasses.replace(v2.state, version=4, parent=rng(32), signer=ada,
                                         at_ms=NOW + 202, name="Renamed by Ada"), ada_key)
    gcid = s.ensure_conversation(ConversationKind.GROUP, GROUP_ID, now_ms=NOW + 200,
                                 title="Marmot watchers").id
    s.write_group(GroupWrite(
        group=GroupRecord(group_id=GROUP_ID, head=v2.hash, active=True, updated_at_ms=NOW + 201),
        states=(StoredGroupState(signed=v1, status=StateStatus.VALID, received_at_ms=NOW + 200),
                StoredGroupState(signed=v2, status=StateStatus.VALID, received_at_ms=NOW + 201),
                StoredGroupState(signed=pending, status=StateStatus.PENDING,
                                 received_at_ms=NOW + 202)),
        chains=((me, our_chain, GROUP_ID), (ada, ada_chain, GROUP_ID)),
        shares=((GROUP_ID, our_chain, ada),),
        pending_add=(PendingGroupBlob(id=0, sender=cy, blob=rng(90), received_at_ms=NOW + 203),),
        history=(NewMessage(conversation_id=gcid, message_id=ident(0x3D, 20), sender=ada,
                            sent_at_ms=NOW + 204, received_at_ms=NOW + 205,
                            body="a group sighting of the marmot"),
                 NewMessage(conversation_id=gcid, message_id=ident(0x3D, 21), sender=None,
                            sent_at_ms=NOW + 206, body="our group reply",
                            status=MessageStatus.SENT)),
    ), now_ms=NOW + 206)
    left = signed(GroupState(group_id=LEFT_CHANNEL_ID, version=1, signer=me, name="Announcements",
                             members=ids(me, ada), admins=(me,), channel=True, at_ms=NOW + 210))
    s.write_group(GroupWrite(
        group=GroupRecord(group_id=LEFT_CHANNEL_ID, head=left.hash, active=False,
                          updated_at_ms=NOW + 211),
        states=(StoredGroupState(signed=left, status=StateStatus.VALID,
                                 received_at_ms=NOW + 210),)), now_ms=NOW + 211)
    probes: dict[str, Any] = {
        "chains": [[me.hex(), our_chain], [ada.hex(), ada_chain], [cy.hex(), 1]],
        "receipts": [],
        "channels": [],
    }
    if version >= 5:
        mid = ident(0x3D, 21)
        s.write_group(GroupWrite(receipts=((GROUP_ID, mid, ada, 1, NOW + 220),
                                           (GROUP_ID, mid, ada, 2, NOW + 221),
                                           (GROUP_ID, mid, cy, 1, NOW + 222))), now_ms=NOW + 222)
        probes["receipts"] = [[GROUP_ID.hex(), mid.hex()]]
    if version >= 6:
        from client_sdk.store.group_records import SignedSubscription
        from protocol.group import Subscription

        channel = signed(GroupState(group_id=SUB_CHANNEL_ID, version=1, signer=me,
                                    name="Marmot news", members=(me,), admins=(me,),
                                    channel=True, subscriptions=True, at_ms=NOW + 230))

        def sub(subscriber: bytes, seq: int, subscribed: bool) -> SignedSubscription:
            encoded = Subscription(group_id=SUB_CHANNEL_ID, seq=seq, signer=me, at_ms=NOW + 231,
                                   subscriber=subscriber, subscribed=subscribed,
                                   authority=channel.hash).encode()
            return SignedSubscription.from_wire(encoded,
                                                me_key.sign(Purpose.GROUP_CONTROL, encoded))

        roster: dict[str, Any] = {}
        if version >= 7:  # stored with every change of subscriptions since v7
            roster["roster"] = (SUB_CHANNEL_ID, (ada,))
        s.write_group(GroupWrite(
            group=GroupRecord(group_id=SUB_CHANNEL_ID, head=channel.hash, active=True,
                              updated_at_ms=NOW + 231),
            states=(StoredGroupState(signed=channel, status=StateStatus.VALID,
                                     received_at_ms=NOW + 230),),
            subscriptions=(sub(ada, 1, True), sub(cy, 2, False)), **roster), now_ms=NOW + 231)
        probes["channels"] = [SUB_CHANNEL_ID.hex()]
    probes["sealed"] = []
    if version >= 8:
        from client_sdk.store.group_records import SealedControlPart

        blob_half = SealedControlPart(sender=ada, hash=ident(0x5E, 1, 32), blob=rng(300),
                                      received_at_ms=NOW + 240)
        key_half = SealedControlPart(sender=cy, hash=ident(0x5E, 2, 32), key=rng(48),
                                     received_at_ms=NOW + 241)
        s.write_group(GroupWrite(sealed_add=(blob_half, key_half)), now_ms=NOW + 241)
        probes["sealed"] = [[ada.hex(), blob_half.hash.hex()], [cy.hex(), key_half.hash.hex()]]
    return probes


# --- the builder's command line -------------------------------------------------------------


def _checkout() -> tuple[Path, str]:
    root = Path.cwd().resolve()
    head = subprocess.run(["git", "rev-parse", "HEAD"], cwd=root, check=True,
                          capture_output=True, text=True).stdout.strip()
    return root, head


def _check_imports(root: Path) -> None:
    stray = []
    for name, module in sorted(sys.modules.items()):
        file = getattr(module, "__file__", None)
        if (name.split(".")[0] in ("client_sdk", "pigeon_crypto", "protocol") and file
                and not Path(file).resolve().is_relative_to(root)):
            stray.append(f"{name} from {file}")
    if stray:
        raise SystemExit("modules loaded from outside the checkout:\n  " + "\n  ".join(stray))


def main(argv: list[str]) -> None:
    if len(argv) != 1 or not argv[0].isdigit():
        raise SystemExit(__doc__)
    version = int(argv[0])
    root, head = _checkout()
    from client_sdk.store import Profile
    from client_sdk.store._sqlite_schema import SCHEMA_VERSION

    if version not in BUILT_WITH or version < 2:
        raise SystemExit(f"add version {version}'s commit to BUILT_WITH first")
    if head != BUILT_WITH[version]:
        raise SystemExit(f"checkout {root} is at {head}, BUILT_WITH[{version}] is "
                         f"{BUILT_WITH[version]}")
    if version != SCHEMA_VERSION:
        raise SystemExit(f"checkout {root} has schema version {SCHEMA_VERSION}, not {version}")
    target, expected = fixture_path(version), expected_path(version)
    if target.exists() or expected.exists():
        raise SystemExit(f"{target.name} is frozen: a shipped fixture is never rebuilt")
    with tempfile.TemporaryDirectory() as tmp:
        path = Path(tmp) / f"v{version}.db"
        probes = build(path, version)
        with Profile.open(path, PASSPHRASE) as profile:  # read back by the same code
            profile.check_integrity()
            snap = snapshot(profile.store, version, probes)
        _check_imports(root)
        leftovers = sorted(p.name for p in Path(tmp).iterdir() if p != path)
        if leftovers:
            raise SystemExit(f"the profile left files behind: {leftovers}")
        DATA.mkdir(exist_ok=True)
        target.write_bytes(gzip.compress(path.read_bytes(), mtime=0))
    expected.write_text(json.dumps({"schema_version": version, "commit": head,
                                    "probes": probes, "snapshot": snap},
                                   indent=1, sort_keys=True, ensure_ascii=False) + "\n")
    print(f"wrote {target} ({target.stat().st_size} bytes) and {expected.name} "
          f"with {os.path.relpath(root)} at {head[:12]}")


if __name__ == "__main__":
    main(sys.argv[1:])
