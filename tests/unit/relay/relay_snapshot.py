"""Reading a frozen relay database through the ``Store`` API (``relay_fixtures.py``).

:func:`snapshot` runs twice per fixture: against the checkout that built it (its result is
``data/relay_vN.json``) and against today's code in ``test_relay_fixtures.py``; the two
must be equal. It only reads (no call that consumes or writes: no bundle fetch, no
append, no expiry sweep), and only what version N's store API could read, so a newer
version adds a ``version >= N`` section and never changes an older one's. It imports
nothing from the test suite.
"""

from __future__ import annotations

from typing import Any


def _x(data: bytes | None) -> str | None:
    return None if data is None else data.hex()


async def snapshot(store: Any, version: int, probes: dict[str, Any]) -> dict[str, Any]:
    """Everything a version-*version* fixture holds, read at ``probes["read_at_ms"]``, in
    JSON form (bytes as hex; the fixture's keys and blobs are made-up bytes, not secrets).
    """
    from relay.ports import NotFound, Recipient

    s = store
    now = probes["read_at_ms"]
    out: dict[str, Any] = {}
    out["account_list"] = [[a.account_id.hex(), a.created_at_ms, a.mailbox_count]
                           for a in await s.list_accounts(limit=1000)]
    accounts: dict[str, Any] = {}
    for hex_id in probes["accounts"].values():
        account_id = bytes.fromhex(hex_id)
        a = await s.get_account(account_id)
        if a is None:
            accounts[hex_id] = None
            continue
        c = await s.prekey_counts(account_id)
        accounts[hex_id] = {
            "identity_key": a.identity_key.hex(), "created_at_ms": a.created_at_ms,
            "identity_updated_at_ms": a.identity_updated_at_ms,
            "rotation_count": a.rotation_count,
            "contact_mailbox_id": _x(a.contact_mailbox_id),
            "contact_capability": _x(a.contact_capability),
            "prekey_counts": [c.one_time_x25519, c.one_time_kem, c.has_signed_prekey,
                              c.has_last_resort_kem],
            "mailboxes": [m.mailbox_id.hex() for m in await s.list_mailboxes(account_id)],
        }
    out["accounts"] = accounts
    mailboxes: dict[str, Any] = {}
    for hex_id in probes["mailboxes"].values():
        mailbox_id = bytes.fromhex(hex_id)
        m = await s.get_mailbox(mailbox_id)
        notice = await s.get_expiry_notice(mailbox_id)
        mailboxes[hex_id] = None if m is None else {
            "account_id": m.account_id.hex(), "created_at_ms": m.created_at_ms,
            "last_seq": m.last_seq, "pending": m.pending, "retire_at_ms": m.retire_at_ms,
            "push_url": m.push_url,
            "pending_count": await s.pending_count(mailbox_id),
            "expiry_notice": None if notice is None else [notice.count, notice.up_to_seq],
            # Queued, unexpired messages in seq order, with their blobs.
            "messages": [[q.seq, q.received_at_ms, q.expires_at_ms, q.blob.hex()]
                         for q in await s.fetch(mailbox_id, limit=1000, now_ms=now)],
        }
    out["mailboxes"] = mailboxes
    recipients = [Recipient(mailbox_id=bytes.fromhex(m), capability_hash=bytes.fromhex(h))
                  for m, h in probes["capabilities"]]
    out["accepting"] = sorted(m.hex() for m in await s.check_capabilities(recipients,
                                                                         now_ms=now))
    out["usernames"] = {}
    for name in probes["usernames"]:
        u = await s.lookup_username(name)
        out["usernames"][name] = None if u is None else {
            "account_id": u.account_id.hex(), "binding": u.binding.hex(),
            "claimed_at_ms": u.claimed_at_ms}
    out["invites"] = [[i.code_hash.hex(), i.created_at_ms, i.expires_at_ms, i.used_at_ms]
                      for i in await s.list_invites()]
    q = await s.queue_sizes(limit=1000)
    out["queue_sizes"] = {
        "total_messages": q.total_messages, "total_blobs": q.total_blobs,
        "total_blob_bytes": q.total_blob_bytes,
        "mailboxes": [[m.mailbox_id.hex(), m.account_id.hex(), m.pending,
                       m.oldest_received_at_ms] for m in q.mailboxes]}
    missing = []
    for hex_id in probes["accounts"].values():
        try:
            await s.prekey_counts(bytes.fromhex(hex_id))
        except NotFound:
            missing.append(hex_id)
    out["prekeys_not_found"] = missing
    return out
