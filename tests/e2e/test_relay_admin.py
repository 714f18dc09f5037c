"""``pigeon-relay admin`` as a real process on a relay's store file (no server, then with one).

Accounts, mailboxes and envelopes are created through the Store API here, as the frame
pipeline would on Register / CreateMailbox / Send.
"""

from __future__ import annotations

import asyncio
import hashlib
import json
import os
import subprocess
import time
from pathlib import Path
from typing import Any

import aiohttp

from relay.ports import Recipient, invite_code_hash
from relay.store_sqlite import SqliteStore

from .conftest import RelayFactory, run_cli


def admin(folder: Path, *args: str) -> subprocess.CompletedProcess[str]:
    return run_cli(["admin", "--data-dir", str(folder), *args])


def admin_json(folder: Path, *args: str) -> Any:
    out = admin(folder, "--json", *args)
    assert out.returncode == 0, out.stderr
    return json.loads(out.stdout)


async def populate(db: Path) -> tuple[bytes, bytes]:
    """One account with one mailbox holding two envelopes; returns their ids."""
    now = time.time_ns() // 1_000_000
    account, mailbox, capability = os.urandom(16), os.urandom(16), os.urandom(32)
    cap_hash = hashlib.sha256(capability).digest()
    store = await SqliteStore.open(db)
    try:
        await store.create_account(account_id=account, identity_key=os.urandom(129), now_ms=now)
        await store.create_mailbox(account_id=account, mailbox_id=mailbox,
                                   capability_hash=cap_hash, now_ms=now)
        for _ in range(2):
            await store.append(recipients=[Recipient(mailbox_id=mailbox, capability_hash=cap_hash)],
                               client_msg_id=os.urandom(16), blob=b"\x01" * 100, now_ms=now,
                               ttl_ms=3_600_000)
    finally:
        await store.close()
    return account, mailbox


def test_invites_without_a_server(tmp_path: Path) -> None:
    created = admin_json(tmp_path, "invite", "create", "--count", "2", "--expires", "7d")
    codes = created["codes"]
    assert len(codes) == 2 and len(set(codes)) == 2 and all(len(c) >= 22 for c in codes)
    assert (tmp_path / "pigeon-relay.db").is_file()
    listed = admin_json(tmp_path, "invite", "list")
    assert {i["hash"] for i in listed} == {invite_code_hash(c).hex() for c in codes}
    assert all(i["state"] == "open" for i in listed)
    # Codes are never stored: the listing shows hashes only.
    assert not any(c in json.dumps(listed) for c in codes)
    # Revoke one by code, the other by a hash prefix.
    out = admin(tmp_path, "invite", "revoke", codes[0])
    assert out.returncode == 0 and "revoked" in out.stdout
    out = admin(tmp_path, "invite", "revoke", "--hash", invite_code_hash(codes[1]).hex()[:12])
    assert out.returncode == 0
    assert admin_json(tmp_path, "invite", "list") == []
    out = admin(tmp_path, "invite", "revoke", codes[0])
    assert out.returncode == 1 and "no such invite" in out.stdout
    out = admin(tmp_path, "invite", "revoke", "--hash", invite_code_hash(codes[1]).hex()[:12])
    assert out.returncode == 1 and "no such invite" in out.stdout  # gone, not a usage error
    out = admin(tmp_path, "invite", "revoke", "--hash", "abc")
    assert out.returncode == 1 and "8 or more hex digits" in out.stderr


def test_accounts_and_queues_without_a_server(tmp_path: Path) -> None:
    account, mailbox = asyncio.run(populate(tmp_path / "pigeon-relay.db"))
    rows = admin_json(tmp_path, "accounts", "list")
    assert rows == [{"account_id": account.hex(), "created_at_ms": rows[0]["created_at_ms"],
                     "mailboxes": 1}]
    queues = admin_json(tmp_path, "queues")
    assert queues["total_messages"] == 2
    assert queues["mailboxes"][0]["mailbox_id"] == mailbox.hex()
    assert queues["mailboxes"][0]["pending"] == 2
    text = admin(tmp_path, "queues")
    assert text.returncode == 0 and "queued deliveries: 2" in text.stdout
    out = admin(tmp_path, "accounts", "delete", account.hex())
    assert out.returncode == 0 and "deleted" in out.stdout
    assert admin_json(tmp_path, "accounts", "list") == []
    assert admin_json(tmp_path, "queues")["total_messages"] == 0
    out = admin(tmp_path, "accounts", "delete", account.hex())
    assert out.returncode == 1
    out = admin(tmp_path, "accounts", "delete", "nothex")
    assert out.returncode == 1 and "32 hex digits" in out.stderr


def test_admin_refuses_a_missing_database(tmp_path: Path) -> None:
    out = admin(tmp_path / "nowhere", "accounts", "list")
    assert out.returncode == 1 and "no relay database" in out.stderr
    assert not (tmp_path / "nowhere").exists()


async def test_admin_beside_a_running_relay(relay_factory: RelayFactory) -> None:
    rp = relay_factory()
    created = await asyncio.to_thread(admin_json, rp.data_dir, "invite", "create")
    assert len(created["codes"]) == 1
    info = await asyncio.to_thread(admin_json, rp.data_dir, "info")
    assert info["relay_id"] == (rp.data_dir / "pigeon-relay.id").read_text().strip()
    listed = await asyncio.to_thread(admin_json, rp.data_dir, "invite", "list")
    assert len(listed) == 1
    async with aiohttp.ClientSession() as http, http.get(rp.url + "/health") as resp:
        assert resp.status == 200
