"""Reading a frozen profile through the store API (``profile_fixtures.py``).

:func:`snapshot` runs twice per fixture: against the checkout that built it (its result is
``data/profile_vN.json``) and against today's code in ``test_profile_fixtures.py``; the two
must be equal. It reads only what version N's store API could read, so a newer version
adds a ``version >= N`` section and never changes an older one's. It imports nothing from
the test suite.
"""

from __future__ import annotations

import dataclasses
import hashlib
from typing import Any

FAR_FUTURE = 1_790_000_000_000 + 10**12
"""Every outbox row is due by then."""


def _h(data: bytes | None) -> str | None:
    """Key material and sealed values by digest: compact, and no key bytes in the JSON."""
    return None if data is None else hashlib.sha256(data).hexdigest()


def _x(data: bytes | None) -> str | None:
    return None if data is None else data.hex()


def snapshot(store: Any, version: int, probes: dict[str, Any]) -> dict[str, Any]:
    """Everything a version-*version* fixture holds, as read through the store API, in
    JSON form (bytes as hex, key material and sealed values as SHA-256)."""
    from client_sdk.store import EnvelopeRef

    def ids(values: Any) -> list[str]:
        return sorted(v.hex() for v in values)

    s = store
    out: dict[str, Any] = {}
    ident_ = s.local_identity()
    out["identity"] = None if ident_ is None else {
        "account_id": ident_.account_id.hex(), "initial": _h(ident_.initial.to_bytes()),
        "rotations": [_h(r.to_bytes()) for r in ident_.rotations],
        "key_pair": _h(ident_.key_pair.to_bytes())}

    def opt(key: Any) -> str | None:
        return None if key is None else _h(key.to_bytes())

    status = s.prekey_status()
    upload = s.unpublished_prekeys()
    current = s.current_signed_prekey()
    out["prekeys"] = {
        "signed": [opt(s.signed_prekey(i)) for i in (1, 2, 3)],
        "kem": [opt(s.kem_prekey(i)) for i in (1, 2, 3, 4)],
        "one_time": [opt(s.one_time_prekey(i)) for i in (1, 2, 3, 4)],
        "current_signed": None if current is None else current.key_id,
        "status": {f.name: getattr(status, f.name) for f in dataclasses.fields(status)},
        "unpublished": {"signed": [k.key_id for k in upload.signed],
                        "kem": [k.key_id for k in upload.kem],
                        "one_time": [k.key_id for k in upload.one_time]},
        "replays": [s.seen_initiation(bytes.fromhex(k)) for k in probes["replay_keys"]],
    }
    out["sessions"] = {p.hex(): _h(st.to_bytes()) for p in s.session_peers()
                       if (st := s.load_session(p)) is not None}
    sk = probes["sender_keys"]
    group = bytes.fromhex(sk["group"])
    outbound = s.load_outbound_sender_key(group)
    out["sender_keys"] = {
        "outbound": None if outbound is None else {"chain_id": outbound.chain_id,
                                                   "state": _h(outbound.to_bytes())},
        "shared_with": ids(s.sender_key_shared_with(group, sk["chain_id"])),
        "records": {m: opt(s.load_sender_key_record(group, bytes.fromhex(m)))
                    for m in sk["members"]},
    }
    out["contacts"] = [{
        "account_id": c.account_id.hex(), "state": int(c.state),
        "identity": opt(c.identity), "rotation_chain": c.rotation_chain.hex(),
        "profile_name": c.profile_name, "avatar_manifest": _h(c.avatar_manifest),
        "verified": c.verified, "identity_changed": c.identity_changed,
        "created_at_ms": c.created_at_ms, "updated_at_ms": c.updated_at_ms,
        "mailboxes": [{"mailbox_id": m.mailbox_id.hex(), "direction": int(m.direction),
                       "capability": _h(m.capability), "relay_url": m.relay_url,
                       "created_at_ms": m.created_at_ms, "retired_at_ms": m.retired_at_ms}
                      for m in c.mailboxes],
    } for c in s.list_contacts()]
    out["contact_for_mailbox"] = {
        m: None if (c := s.contact_for_mailbox(bytes.fromhex(m))) is None else c.account_id.hex()
        for m in probes["mailboxes"]}
    out["settings"] = {n: _x(s.get_setting(n)) for n in probes["settings"]}

    def message(m: Any) -> dict[str, Any]:
        return {
            "rowid": m.rowid, "conversation_id": m.conversation_id,
            "message_id": m.message_id.hex(), "sender": _x(m.sender), "kind": int(m.kind),
            "body": m.body, "attachment": _h(m.attachment), "reply_to": _x(m.reply_to),
            "sent_at_ms": m.sent_at_ms, "received_at_ms": m.received_at_ms,
            "status": int(m.status), "failure_reason": m.failure_reason,
            "edited_at_ms": m.edited_at_ms, "deleted_at_ms": m.deleted_at_ms,
            "expires_at_ms": m.expires_at_ms,
            "reactions": sorted([_x(r.reactor) or "", r.emoji, r.at_ms] for r in m.reactions),
        }

    out["conversations"] = [{
        "id": c.id, "kind": int(c.kind), "peer": c.peer.hex(), "title": c.title,
        "expire_timer_ms": c.expire_timer_ms, "created_at_ms": c.created_at_ms,
        "last_message_at_ms": c.last_message_at_ms, "count": s.message_count(c.id),
        "messages": [message(m) for m in s.page(c.id, limit=500).messages],
    } for c in sorted(s.list_conversations(limit=500), key=lambda c: c.id)]
    out["message_count"] = s.message_count()
    out["search"] = {w: [[h.message.conversation_id, h.message.message_id.hex(), h.message.body]
                         for h in s.search(w, limit=500).hits] for w in probes["search"]}
    out["outbox"] = {
        "size": s.outbox_size(), "next_due": s.next_outbox_due_at(),
        "items": [{
            "seq": i.seq, "client_msg_id": i.entry.client_msg_id.hex(),
            "recipients": [[r.mailbox_id.hex(), _h(r.capability)] for r in i.entry.recipients],
            "blob": _h(i.entry.blob), "created_at_ms": i.entry.created_at_ms,
            "attempts": i.attempts, "next_attempt_at_ms": i.next_attempt_at_ms,
            "last_error": i.last_error,
            "message": None if i.message is None else [i.message[0], i.message[1].hex()],
        } for i in s.due_outbox(now_ms=FAR_FUTURE, limit=500)],
    }
    out["envelopes"] = [s.envelope_seen(EnvelopeRef(mailbox_id=bytes.fromhex(m), seq=q))
                        for m, q in probes["envelopes"]]
    if version >= 2:
        from client_sdk.store.transfers import transfer_store

        out["transfers"] = [{
            "transfer_id": t.transfer_id.hex(), "direction": int(t.direction),
            "state": int(t.state), "peer": t.peer.hex(), "manifest": _h(t.manifest),
            "message_id": t.message_id.hex(), "path": t.path, "chunk_count": t.chunk_count,
            "chunks_done": t.chunks_done.hex(), "bytes_done": t.bytes_done,
            "caption": t.caption, "token": _h(t.token), "url_path": t.url_path,
            "token_expires_at_ms": t.token_expires_at_ms, "source_size": t.source_size,
            "source_mtime_ns": t.source_mtime_ns, "error": t.error,
            "created_at_ms": t.created_at_ms, "updated_at_ms": t.updated_at_ms,
        } for t in transfer_store(s).list_transfers()]
    if version >= 3:
        out["groups"] = _snapshot_groups(s, version, probes["groups"])
    return out


def _snapshot_groups(s: Any, version: int, probes: dict[str, Any]) -> dict[str, Any]:
    def state(st: Any) -> dict[str, Any]:
        g = st.signed.state
        return {
            "hash": st.signed.hash.hex(), "status": int(st.status),
            "received_at_ms": st.received_at_ms, "encoded": _h(st.signed.encoded),
            "signature": _h(st.signed.signature), "group_id": g.group_id.hex(),
            "version": g.version, "signer": g.signer.hex(), "name": g.name,
            "members": [m.hex() for m in g.members], "admins": [m.hex() for m in g.admins],
            "at_ms": g.at_ms, "parent": _x(g.parent), "avatar": _h(g.avatar),
            "channel": g.channel,
            **({"subscriptions": g.subscriptions} if version >= 6 else {}),
        }

    out: dict[str, Any] = {
        "groups": [{
            "group_id": g.group_id.hex(), "head": g.head.hex(), "active": g.active,
            "updated_at_ms": g.updated_at_ms,
            "states": sorted((state(st) for st in s.group_states(g.group_id)),
                             key=lambda d: d["hash"]),
        } for g in s.list_groups()],
        "chains": [_x(s.group_for_chain(bytes.fromhex(a), c)) for a, c in probes["chains"]],
        "pending": [[p.id, p.sender.hex(), _h(p.blob), p.received_at_ms]
                    for p in s.pending_group_blobs(limit=500)],
    }
    if version >= 5:
        out["receipts"] = {
            f"{g}/{m}": sorted([a.hex(), k] for a, k in s.group_receipts(bytes.fromhex(g),
                                                                         bytes.fromhex(m)))
            for g, m in probes["receipts"]}
    if version >= 6:
        out["subscriptions"] = {c: sorted(({
            "hash": x.hash.hex(), "group_id": x.sub.group_id.hex(), "seq": x.sub.seq,
            "signer": x.sub.signer.hex(), "at_ms": x.sub.at_ms,
            "subscriber": x.sub.subscriber.hex(), "subscribed": x.sub.subscribed,
            "authority": x.sub.authority.hex(), "encoded": _h(x.encoded),
            "signature": _h(x.signature),
        } for x in s.channel_subscriptions(bytes.fromhex(c))), key=lambda d: d["hash"])
            for c in probes["channels"]}
    if version >= 7:
        out["rosters"] = {c: None if (r := s.channel_roster(bytes.fromhex(c))) is None
                          else sorted(a.hex() for a in r) for c in probes["channels"]}
    if version >= 8:
        halves = [s.sealed_control_part(bytes.fromhex(a), bytes.fromhex(h))
                  for a, h in probes["sealed"]]
        out["sealed"] = [None if p is None else [p.sender.hex(), p.hash.hex(), _h(p.blob),
                                                 _h(p.key), p.received_at_ms] for p in halves]
        out["sealed_count"] = s.sealed_control_count()
    return out


