"""Frozen relay databases, one per shipped schema version: how they were built and read.

STYLE.md §3: freeze a fixture for every shipped version (python-doubleratchet
``tests/migration_data/``). An upgraded relay must keep every queued message, idempotency
record, account, prekey, username and invite an older relay stored, so for every relay
schema version N the tests open ``data/relay_vN.db.gz`` with today's code
(``test_relay_fixtures.py``), and the file must have been written by version N's *own*
code through the public ``SqliteStore`` API: today's code would write today's schema,
which proves nothing.

Files per version:

``data/relay_vN.db.gz``
    the database as version N's ``SqliteStore`` left it when closed (gzip, mtime 0).
``data/relay_vN.json``
    ``{"schema_version", "commit", "probes", "snapshot"}``: the ids, capability hashes and
    times the build used and what each write returned (``probes``: every append's result,
    the bundle handed out), and what version N's code read back from the file right after
    writing it (``relay_snapshot.snapshot``). The tests read the same with today's code,
    compare, and use the probes as the oracle for what retries, bundles and invites must
    still do.

What a fixture holds (:func:`build`; the store API is the same in versions 1 to 6, only
what it writes differs; version 3 stores what version 2 did, and keeps the pending counts
and blobs per statement instead of by a per-row trigger, which version 5 restores;
version 6 stores version 5's records in insertion order).
Invites: two used (by Alice and Carol), one used by Dave (whose account is gone), one
unused, one unused with a future expiry, one expired, one revoked (gone). Accounts: Alice,
with an identity rotation (the chain has one record), a signed and a last-resort KEM
prekey signed by the new key, one-time X25519 prekeys (one of the old key's consumed by a
bundle fetch, the others kept through the rotation) and one-time ML-KEM prekeys (the old
key's dropped by the rotation), a username claimed twice (the second replaces the first),
a contact mailbox, a push registration inherited by a rotated mailbox, a rotated mailbox
still accepting sends, a rotated mailbox deleted by the expiry sweep; Bob, with a signed
and a last-resort prekey only (bundles fall back to it), a username, a replaced send
capability; Carol, without prekeys (no bundle), a username she released and a deleted
mailbox; Dave, deleted with everything he owned. Messages: single- and multi-recipient
sends (one by ``append_many``, one retried to a larger set of recipients, one with a
refused recipient), some acked (cumulatively and selectively), one expired and swept (an
expiry notice and no idempotency record left), one past its TTL but not yet swept.
Idempotency records: version 1 keeps one ``dedup`` row per copy, versions 2 and 3 one
``send_dedup`` record per multi-recipient send, versions 4 to 6 one per send (and a
``dedup`` row for the copy a retry added). File blobs do not live in the database
(``FolderBlobStore``), so no fixture has any.

Building the fixture of a NEW schema version N (never rebuild a shipped one; the builder
refuses to overwrite), from /work/main::

    git worktree add --detach /tmp/relayfix-vN <commit>
    cd /tmp/relayfix-vN && PYTHONPATH=/tmp/relayfix-vN /work/main/.venv/bin/python \\
        /work/main/tests/unit/relay/relay_fixtures.py N
    cd /work/main && git worktree remove --force /tmp/relayfix-vN

where ``<commit>`` is a commit whose relay ``SCHEMA_VERSION`` is N (for the newest: the
schema bump's commit or a later one; commit the two files and the :data:`BUILT_WITH`
entry right after). The builder checks that the checkout is :data:`BUILT_WITH` [N] at
relay schema version N, and that every ``relay``, ``protocol`` and ``pigeon_crypto``
module it loaded came from the checkout: the venv's editable install maps those packages
to /work/main, so a module missing from the checkout would silently come from today's
code. Add a ``version >= N`` block to :func:`build` and to ``relay_snapshot.snapshot``
for what the new version can store.

It imports nothing from the test suite but ``relay_snapshot``: it runs against old
checkouts.
"""

from __future__ import annotations

import asyncio
import gzip
import hashlib
import json
import os
import subprocess
import sys
import tempfile
from pathlib import Path
from typing import Any

if __package__:
    from .relay_snapshot import snapshot
else:  # run as a script against an old checkout (see above): a sibling module
    from relay_snapshot import snapshot  # type: ignore[import-not-found, no-redef]

DATA = Path(__file__).parent / "data"

BUILT_WITH: dict[int, str] = {
    # relay/ is identical from ac7116f to 90adfe3 (6678b49^, the last schema-v1 commit).
    1: "ac7116fc2296599581740c2c00f18bce34004c42",  # schema v1: dedup rows per copy
    2: "6318265d06366f53033c99e32a56ab9e0813c9dd",  # HEAD then: schema v2, send_dedup
    3: "ea054744e52740e3f0b2e242d79102e42169d11a",  # the bump: counters per ack statement
    4: "a6682cb89d7a9f6d8f764e3979bb3542d3c240b1",  # the bump: a send record for every send
    5: "b2daafa6cf53ef7b5145d84a0ab83c84ac1ea50f",  # the bump: v2's per-row trigger again
    6: "c30a27a4c1a2bdcab8364a951ba6e9339b7e0a7d",  # send records in insertion order
}
"""Relay schema version -> the commit whose own code wrote ``data/relay_vN.db.gz``."""

NOW = 1_790_000_000_000
"""The build's clock starts here; every write is at a fixed offset from it."""
DAY_MS = 86_400_000
TTL_MS = 14 * DAY_MS
DEDUP_TTL_MS = 30 * DAY_MS
"""What the relay passes as ``dedup_ttl_ms``: its maximum TTL."""
READ_AT = NOW + 100_000
"""When the snapshot reads: after one message's TTL that no sweep has removed yet."""


def ident(tag: int, n: int, size: int = 16) -> bytes:
    """A recognizable id: *tag* byte, then *n* big-endian."""
    return bytes([tag]) + n.to_bytes(size - 1, "big")


ALICE, BOB, CAROL, DAVE = (ident(t, 1) for t in (0xA1, 0xB0, 0xC0, 0xD0))
ACCOUNTS = {"alice": ALICE, "bob": BOB, "carol": CAROL, "dave": DAVE}

MAILBOXES = {
    "alice_contact": ident(0x3B, 1),
    "alice_old": ident(0x3B, 2),  # rotated to alice_new, retiring in 20 days
    "alice_new": ident(0x3B, 3),
    "alice_short": ident(0x3B, 4),  # rotated to alice_short2, retired, swept
    "alice_short2": ident(0x3B, 5),
    "bob_1": ident(0x3B, 11),
    "bob_2": ident(0x3B, 12),  # capability replaced
    "carol": ident(0x3B, 21),
    "carol_gone": ident(0x3B, 22),  # deleted by its owner
    "dave": ident(0x3B, 31),  # gone with Dave
}
OWNERS = {"alice": ALICE, "bob": BOB, "carol": CAROL, "dave": DAVE}
RETIRE_OLD_AT = NOW + 20 * DAY_MS
PUSH_URL = "https://push.example/v1/alice"

INVITES = {
    "alice": "invite-alice-0001",
    "carol": "invite-carol-0002",
    "dave": "invite-dave-0003",
    "spare": "invite-spare-0004",
    "expiring": "invite-expiring-0005",
    "expired": "invite-expired-0006",
    "revoked": "invite-revoked-0007",
}
EXPIRING_AT = NOW + 30 * DAY_MS
EXPIRED_AT = NOW + 5_000

USERNAMES = ("alice", "alice.w", "bob", "carol", "dave", "nobody")


def capability(name: str, generation: int = 1) -> bytes:
    """A mailbox's send capability (the relay keeps only its hash; a contact mailbox's
    is public and kept in clear)."""
    return hashlib.sha256(f"capability {name} {generation}".encode()).digest()


def capability_hash(name: str, generation: int = 1) -> bytes:
    return hashlib.sha256(capability(name, generation)).digest()


def identity_key(account: str, generation: int) -> bytes:
    return f"identity key of {account}, #{generation}".encode().ljust(33, b".")


def rotation_record(account: str, generation: int) -> bytes:
    return f"rotation of {account} to #{generation}".encode()


def prekey(account: str, kind: str, key_id: int, generation: int = 1) -> bytes:
    """Opaque prekey bytes: *kind* is ``spk``, ``lrk``, ``x25519`` or ``kem``."""
    return f"{kind} {key_id} of {account} under identity #{generation}".encode()


def binding(name: str, account: str) -> bytes:
    return f"binding of {name!r} to {account}".encode()


def cmid(n: int) -> bytes:
    return ident(0xC1, n)


def blob(n: int) -> bytes:
    return f"ciphertext of message {n}".encode() * (1 + n % 3)


# --- building (runs against version N's checkout) -------------------------------------------


async def build(path: Path, version: int) -> dict[str, Any]:
    """Write version *version*'s fixture database at *path* with the code imported now.

    Returns the probes (see the module docstring).
    """
    from relay.ports import AppendRequest, OneTimePrekey, Recipient, invite_code_hash
    from relay.store_sqlite import SqliteStore

    clock = NOW

    def tick(ms: int = 10) -> int:
        nonlocal clock
        clock += ms
        return clock

    def otks(account: str, kind: str, ids: range | list[int], gen: int) -> list[Any]:
        return [OneTimePrekey(key_id=i, data=prekey(account, kind, i, gen)) for i in ids]

    def rcpt(name: str, generation: int = 1) -> Any:
        return Recipient(mailbox_id=MAILBOXES[name], capability_hash=capability_hash(
            name, generation))

    sends: list[dict[str, Any]] = []

    def record(n: int, names: list[tuple[str, int]], now_ms: int, ttl_ms: int,
               dedup_ttl_ms: int | None, result: Any, note: str) -> None:
        sends.append({
            "n": n, "note": note, "client_msg_id": cmid(n).hex(),
            "recipients": [[MAILBOXES[m], g] for m, g in names],
            "blob": blob(n).hex(), "now_ms": now_ms, "ttl_ms": ttl_ms,
            "dedup_ttl_ms": dedup_ttl_ms,
            "result": {"received_at_ms": result.received_at_ms,
                       "expires_at_ms": result.expires_at_ms,
                       "accepted": [[r.mailbox_id.hex(), r.seq, r.duplicate]
                                    for r in result.accepted],
                       "rejected": [[m.hex(), int(why)] for m, why in result.rejected]},
        })
        for entry in sends[-1]["recipients"]:
            entry[0] = entry[0].hex()

    async def send(n: int, names: list[str | tuple[str, int]], note: str, *,
                   ttl_ms: int = TTL_MS, dedup_ttl_ms: int | None = DEDUP_TTL_MS) -> None:
        pairs = [(m, 1) if isinstance(m, str) else m for m in names]
        now_ms = tick()
        result = await store.append(recipients=[rcpt(m, g) for m, g in pairs],
                                    client_msg_id=cmid(n), blob=blob(n), now_ms=now_ms,
                                    ttl_ms=ttl_ms, dedup_ttl_ms=dedup_ttl_ms)
        record(n, pairs, now_ms, ttl_ms, dedup_ttl_ms, result, note)

    store = await SqliteStore.open(path)
    try:
        # Invites: used by account creation, unused, expiring, expired, revoked.
        for name, code in INVITES.items():
            expires = {"expiring": EXPIRING_AT, "expired": EXPIRED_AT}.get(name)
            await store.create_invite(code_hash=invite_code_hash(code), now_ms=tick(),
                                      expires_at_ms=expires)
        await store.revoke_invite(invite_code_hash(INVITES["revoked"]))
        for name, account_id in ACCOUNTS.items():
            invite = INVITES.get(name)
            await store.create_account(
                account_id=account_id, identity_key=identity_key(name, 1), now_ms=tick(),
                invite_code_hash=None if invite is None else invite_code_hash(invite))

        # Alice's prekeys under her first identity; a bundle fetched (X25519 1, KEM 1
        # consumed); the rotation (drops the signed, last-resort and one-time KEM
        # prekeys, keeps the one-time X25519 ones); new ones under identity 2.
        await store.upload_prekeys(
            account_id=ALICE, signed_prekey=prekey("alice", "spk", 1, 1),
            last_resort_kem=prekey("alice", "lrk", 1, 1),
            one_time_x25519=otks("alice", "x25519", range(1, 5), 1),
            one_time_kem=otks("alice", "kem", range(1, 3), 1))
        bundle = await store.fetch_prekey_bundle(ALICE)
        assert bundle is not None and bundle.one_time_x25519 is not None
        assert bundle.one_time_kem is not None
        built_bundle = {"one_time_x25519": bundle.one_time_x25519.key_id,
                        "one_time_kem": bundle.one_time_kem.key_id}
        await store.rotate_identity(account_id=ALICE, identity_key=identity_key("alice", 2),
                                    rotation=rotation_record("alice", 2), now_ms=tick(),
                                    expect_key=identity_key("alice", 1), expect_rotations=0)
        await store.upload_prekeys(
            account_id=ALICE, signed_prekey=prekey("alice", "spk", 2, 2),
            last_resort_kem=prekey("alice", "lrk", 2, 2),
            one_time_x25519=otks("alice", "x25519", [5, 6], 2),
            one_time_kem=otks("alice", "kem", range(10, 13), 2))
        await store.upload_prekeys(account_id=BOB, signed_prekey=prekey("bob", "spk", 1),
                                   last_resort_kem=prekey("bob", "lrk", 1))
        await store.upload_prekeys(account_id=DAVE, signed_prekey=prekey("dave", "spk", 1),
                                   last_resort_kem=prekey("dave", "lrk", 1),
                                   one_time_x25519=otks("dave", "x25519", range(1, 3), 1),
                                   one_time_kem=otks("dave", "kem", range(1, 3), 1))

        # Usernames: Alice's second claim replaces her first; Carol released hers.
        for account, name in (("alice", "alice"), ("alice", "alice.w"), ("bob", "bob"),
                              ("carol", "carol"), ("dave", "dave")):
            await store.claim_username(account_id=ACCOUNTS[account], username=name,
                                       binding=binding(name, account), now_ms=tick())
        await store.release_username(CAROL)

        # Mailboxes.
        for name, mailbox_id in MAILBOXES.items():
            if name in ("alice_new", "alice_short2"):
                continue  # made by the rotations below
            await store.create_mailbox(account_id=OWNERS[name.split("_")[0]],
                                       mailbox_id=mailbox_id,
                                       capability_hash=capability_hash(name), now_ms=tick())
        await store.set_contact_mailbox(account_id=ALICE, mailbox_id=MAILBOXES["alice_contact"],
                                        capability=capability("alice_contact"))
        await store.set_push_url(account_id=ALICE, mailbox_ids=[MAILBOXES["alice_old"]],
                                 push_url=PUSH_URL)
        await store.rotate_mailbox(account_id=ALICE, mailbox_id=MAILBOXES["alice_old"],
                                   new_mailbox_id=MAILBOXES["alice_new"],
                                   capability_hash=capability_hash("alice_new"),
                                   retire_at_ms=RETIRE_OLD_AT, now_ms=tick())
        await store.rotate_mailbox(account_id=ALICE, mailbox_id=MAILBOXES["alice_short"],
                                   new_mailbox_id=MAILBOXES["alice_short2"],
                                   capability_hash=capability_hash("alice_short2"),
                                   retire_at_ms=tick(), now_ms=clock)
        await store.replace_capability(account_id=BOB, mailbox_id=MAILBOXES["bob_2"],
                                       capability_hash=capability_hash("bob_2", 2))

        # Messages.
        await send(1, ["alice_contact"], "single, acked")
        await send(2, ["alice_contact", "bob_1", "carol"], "multi, acked in bob_1")
        await send(3, ["alice_old"], "single to a rotated mailbox")
        await send(4, ["alice_old", ("bob_2", 2)], "multi, acked in bob_2")
        await send(5, [("bob_2", 2)], "single, queued")
        await send(6, [("bob_2", 2)], "single, selectively acked")
        await send(7, ["carol"], "expired and swept", ttl_ms=1_000, dedup_ttl_ms=None)
        await send(8, ["bob_1"], "past its TTL, not swept", ttl_ms=4_000)
        await send(9, ["alice_new", "bob_1"], "multi, retried with one more recipient")
        await send(9, ["alice_new", "bob_1", "carol"], "the retry: carol's copy is new")
        now_ms = tick()
        batch = [(10, ["alice_new", "carol", "dave"]), (11, ["alice_short2"])]
        many = [AppendRequest(tuple(rcpt(m) for m in names), cmid(n), blob(n), now_ms, TTL_MS,
                              None, DEDUP_TTL_MS) for n, names in batch]
        for (n, names), result in zip(batch, await store.append_many(many), strict=True):
            record(n, [(m, 1) for m in names], now_ms, TTL_MS, DEDUP_TTL_MS, result,
                   "append_many")
        await send(12, ["carol_gone"], "to a mailbox deleted later")
        await send(13, ["bob_1", ("carol", 2), ("bob_2", 1)],
                   "multi, two refused (wrong capability, replaced capability)")
        await send(14, ["bob_1", ("bob_2", 2)], "multi, queued")

        acks = [("alice_contact", 1, []), ("bob_1", None, [1]), ("bob_2", 1, [3])]
        for name, up_to, seqs in acks:
            await store.ack(MAILBOXES[name], up_to_seq=up_to, seqs=seqs)
        await store.delete_mailbox(account_id=CAROL, mailbox_id=MAILBOXES["carol_gone"])
        swept = await store.expire(now_ms=tick(2_000))
        await store.delete_account(DAVE)
        assert clock < READ_AT
        probes: dict[str, Any] = {
            "read_at_ms": READ_AT,
            "accounts": {k: v.hex() for k, v in ACCOUNTS.items()},
            "mailboxes": {k: v.hex() for k, v in MAILBOXES.items()},
            "capabilities": [[MAILBOXES[m].hex(), capability_hash(m, g).hex()]
                             for m in MAILBOXES for g in (1, 2)],
            "usernames": list(USERNAMES),
            "invites": {k: invite_code_hash(v).hex() for k, v in INVITES.items()},
            "sends": sends,
            "acks": [[MAILBOXES[m].hex(), up, seqs] for m, up, seqs in acks],
            "bundle_at_build": built_bundle,
            "swept": {"at_ms": clock, "messages_removed": swept.messages_removed,
                      "dedup_removed": swept.dedup_removed,
                      "retired": [m.hex() for m in swept.retired],
                      "notices": [[n.mailbox_id.hex(), n.count, n.up_to_seq]
                                  for n in swept.notices]},
            "built_until_ms": clock,
        }
    finally:
        await store.close()
    return probes


# --- the builder's command line -------------------------------------------------------------


def fixture_path(version: int) -> Path:
    return DATA / f"relay_v{version}.db.gz"


def expected_path(version: int) -> Path:
    return DATA / f"relay_v{version}.json"


def _checkout() -> tuple[Path, str]:
    root = Path.cwd().resolve()
    head = subprocess.run(["git", "rev-parse", "HEAD"], cwd=root, check=True,
                          capture_output=True, text=True).stdout.strip()
    return root, head


def _check_imports(root: Path) -> None:
    stray = []
    for name, module in sorted(sys.modules.items()):
        file = getattr(module, "__file__", None)
        if (name.split(".")[0] in ("relay", "protocol", "pigeon_crypto") and file
                and not Path(file).resolve().is_relative_to(root)):
            stray.append(f"{name} from {file}")
    if stray:
        raise SystemExit("modules loaded from outside the checkout:\n  " + "\n  ".join(stray))


async def _build_and_read(path: Path, version: int) -> tuple[dict[str, Any], dict[str, Any]]:
    from relay.store_sqlite import SqliteStore

    probes = await build(path, version)
    store = await SqliteStore.open(path)  # read back by the same code
    try:
        snap = await snapshot(store, version, probes)
    finally:
        await store.close()
    return probes, snap


def main(argv: list[str]) -> None:
    if len(argv) != 1 or not argv[0].isdigit():
        raise SystemExit(__doc__)
    version = int(argv[0])
    root, head = _checkout()
    import relay
    from relay._sqlite_schema import SCHEMA_VERSION

    if version not in BUILT_WITH:
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
        probes, snap = asyncio.run(_build_and_read(path, version))
        _check_imports(root)
        leftovers = sorted(p.name for p in Path(tmp).iterdir() if p != path)
        if leftovers:
            raise SystemExit(f"the store left files behind: {leftovers}")
        DATA.mkdir(exist_ok=True)
        target.write_bytes(gzip.compress(path.read_bytes(), mtime=0))
    expected.write_text(json.dumps({"schema_version": version, "commit": head,
                                    "probes": probes, "snapshot": snap},
                                   indent=1, sort_keys=True) + "\n")
    print(f"wrote {target} ({target.stat().st_size} bytes) and {expected.name} with "
          f"{os.path.relpath(root)} at {head[:12]} (relay from {Path(relay.__file__).parent})")


if __name__ == "__main__":
    main(sys.argv[1:])
