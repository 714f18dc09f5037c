"""The decisions of an append run, shared by the SQLite and PostgreSQL adapters (no I/O).

An adapter reads what the run needs (``prepare`` says what to look up), hands it to
``plan``, then writes the plan's rows in its own SQL. The capability, retirement, quota
and idempotency decisions and the seqs are made here, call by call, in order, exactly as
running the calls one by one would make them.

Blob references: the plan numbers a run's blobs 1, 2, ... in order (one per call that
stores a copy) and refers to them in the delivery rows as ``base + ordinal``, where
``base`` comes from the ``blob_base`` callback, asked at most once, when the first blob
is needed (SQLite: the highest blob id in use; PostgreSQL: none, it joins on ordinals).
"""

from __future__ import annotations

import hashlib
import hmac
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import Any

from protocol import dedup_input

from .ports import (
    AppendRequest,
    AppendResult,
    Recipient,
    RecipientSeq,
    RejectReason,
    send_dedup_hash,
    unchecked_recipient_seq,
)

_ENTRY_HASH = 16
"""Bytes of a recipient's dedup hash kept in a ``send_dedup`` entry: entries are only
compared with those of the same client_msg_id, so 128 bits are plenty."""
_ENTRY = _ENTRY_HASH + 8

Box = list[Any]
"""A mailbox as the plan sees it, updated in place:
[capability hash, retire_at_ms, pending, last_seq, new copies in this run, serial]."""
SendRecord = tuple[int, int, dict[bytes, int]]
"""A send record: (received_at_ms, expires_at_ms, entry -> seq)."""
Fresh = tuple[bytes, bytes, int, int]
"""A copy stored by a call: (mailbox, dedup key, seq, mailbox serial)."""
DedupRow = tuple[bytes, bytes, int, int, int, int]
"""(mailbox, dedup key, seq, received_at_ms, expires_at_ms, keep_until_ms)."""


def _entry(key: bytes, serial: int) -> bytes:
    """A recipient's name in a ``send_dedup`` record: its dedup hash bound to the
    mailbox's serial (a re-created mailbox does not inherit the old one's entries)."""
    return hashlib.sha256(key + serial.to_bytes(8, "big")).digest()[:_ENTRY_HASH]


def _entries(raw: bytes) -> dict[bytes, int]:
    return {raw[i:i + _ENTRY_HASH]: int.from_bytes(raw[i + _ENTRY_HASH:i + _ENTRY], "big")
            for i in range(0, len(raw), _ENTRY)}


@dataclass(slots=True)
class Lookups:
    """What a run must read before deciding: each call's distinct recipients with
    their dedup keys, every mailbox named (in first-seen order), and each
    client_msg_id's send record key."""

    keys: list[list[tuple[Recipient, bytes]]]
    mailbox_ids: dict[bytes, None]
    cmids: dict[bytes, bytes]


def accepts(row: Any, r: Recipient, now_ms: int) -> bool:
    """Whether *r*'s capability opens a mailbox whose *row* starts with (capability hash,
    retire_at_ms): the capability check of both stores' ``check_capabilities``."""
    return (
        row is not None
        and hmac.compare_digest(bytes(row[0]), r.capability_hash)
        and (row[1] is None or row[1] > now_ms)
    )


def prepare(calls: Sequence[AppendRequest]) -> Lookups:
    sha256 = hashlib.sha256
    keys: list[list[tuple[Recipient, bytes]]] = []
    mailbox_ids: dict[bytes, None] = {}
    cmids: dict[bytes, bytes] = {}  # client_msg_id -> its send_dedup key
    for call in calls:
        seen: set[bytes] = set()
        mine: list[tuple[Recipient, bytes]] = []
        cmid = call.client_msg_id
        if cmid not in cmids:
            cmids[cmid] = send_dedup_hash(cmid)
        for r in call.recipients:
            mailbox_id = r.mailbox_id
            if mailbox_id in seen:
                continue
            seen.add(mailbox_id)
            mine.append((r, sha256(dedup_input(mailbox_id, cmid)).digest()))
            mailbox_ids[mailbox_id] = None
        keys.append(mine)
    return Lookups(keys=keys, mailbox_ids=mailbox_ids, cmids=cmids)


@dataclass(slots=True)
class AppendPlan:
    """The results of a run and the rows that make them so.

    ``blobs``, ``blob_refs``: each blob stored and how many copies refer to it (two
    columns; a blob's ordinal is its index + 1).
    ``deliveries``: (mailbox, seq, blob base + ordinal, received_at_ms, expires_at_ms).
    ``dedup_rows``: copies added under a send record that already existed.
    ``send_rows``: new send records (send key, received, expires, keep_until, entries);
    a later call's copies under the same client_msg_id fold their keep_until in.
    ``extended``: existing send record -> keep_until of the copies added under it.
    ``created``: send key -> its index in ``send_rows``.
    """

    results: list[AppendResult] = field(default_factory=list)
    blobs: list[bytes] = field(default_factory=list)
    blob_refs: list[int] = field(default_factory=list)
    deliveries: list[tuple[bytes, int, int, int, int]] = field(default_factory=list)
    dedup_rows: list[DedupRow] = field(default_factory=list)
    send_rows: list[tuple[bytes, int, int, int, bytes]] = field(default_factory=list)
    extended: dict[bytes, int] = field(default_factory=dict)
    created: dict[bytes, int] = field(default_factory=dict)
    _first_copies: dict[bytes, tuple[list[Fresh], int, int, int]] = field(
        default_factory=dict)

    def fallback_rows(self, skey: bytes) -> list[DedupRow]:
        """The copies of the new send record *skey* as ``dedup`` rows (for when the
        record loses a race to another writer's; built only then)."""
        fresh, now_ms, expires, keep_until = self._first_copies[skey]
        return [(m, k, q, now_ms, expires, keep_until) for m, k, q, _ in fresh]


def plan(
    calls: Sequence[AppendRequest],
    lookups: Lookups,
    boxes: dict[bytes, Box],
    sends: dict[bytes, SendRecord],
    known: dict[tuple[bytes, bytes], tuple[int, int, int]],
    blob_base: Callable[[], int] | None = None,
) -> AppendPlan:
    """Decide *calls* in order (a later call sees the earlier ones). *boxes*, *sends*
    and *known* (existing ``dedup`` rows: (mailbox, key) -> (seq, received, expires))
    are updated in place."""
    compare = hmac.compare_digest
    cmids = lookups.cmids
    out = AppendPlan()
    results = out.results
    blobs = out.blobs
    blob_refs = out.blob_refs
    delivery_rows = out.deliveries
    dedup_rows = out.dedup_rows
    send_rows = out.send_rows
    extended = out.extended
    created = out.created
    first_copies = out._first_copies
    base: int | None = None
    for call, mine in zip(calls, lookups.keys, strict=True):
        now_ms = call.now_ms
        expires = now_ms + call.ttl_ms
        keep_until = now_ms + max(call.ttl_ms, call.dedup_ttl_ms or 0)
        max_pending = call.max_pending
        skey = cmids[call.client_msg_id]
        record = sends.get(skey)
        accepted: list[RecipientSeq] = []
        rejected: list[tuple[bytes, RejectReason]] = []
        fresh: list[Fresh] = []
        original: tuple[int, int] | None = None
        blob_ref = 0
        for r, key in mine:
            mailbox_id = r.mailbox_id
            box = boxes.get(mailbox_id)
            if (box is None or not compare(box[0], r.capability_hash)
                    or (box[1] is not None and box[1] <= now_ms)):
                rejected.append((mailbox_id, RejectReason.WRONG_CAPABILITY))
                continue
            dup = known.get((mailbox_id, key))
            if dup is None and record is not None:
                old_seq = record[2].get(_entry(key, box[5]))
                if old_seq is not None:
                    dup = (old_seq, record[0], record[1])
            if dup is not None:
                accepted.append(unchecked_recipient_seq(mailbox_id, dup[0], True))
                original = original or (dup[1], dup[2])
                continue
            if max_pending is not None and box[2] >= max_pending:
                rejected.append((mailbox_id, RejectReason.QUOTA_EXCEEDED))
                continue
            if not blob_ref:
                if base is None:
                    base = blob_base() if blob_base is not None else 0
                blobs.append(call.blob)
                blob_ref = base + len(blobs)
            seq = box[3] + 1
            box[2] += 1
            box[3] = seq
            box[4] += 1
            delivery_rows.append((mailbox_id, seq, blob_ref, now_ms, expires))
            fresh.append((mailbox_id, key, seq, box[5]))
            accepted.append(unchecked_recipient_seq(mailbox_id, seq, False))
        if fresh:
            blob_refs.append(len(fresh))
            if record is None:
                # One record for the send, however many copies (the table's key is the
                # client_msg_id's, so only the first send under it gets one).
                entries = {_entry(k, serial): q for _, k, q, serial in fresh}
                sends[skey] = (now_ms, expires, entries)
                created[skey] = len(send_rows)
                send_rows.append((skey, now_ms, expires, keep_until,
                                  b"".join(e + q.to_bytes(8, "big")
                                           for e, q in entries.items())))
                first_copies[skey] = (fresh, now_ms, expires, keep_until)
            else:
                # Copies added later under it get dedup rows (their own times), and the
                # record lives at least as long: it is what makes a retry look them up.
                dedup_rows += [(m, k, q, now_ms, expires, keep_until)
                               for m, k, q, _ in fresh]
                # A later call of this run finds these copies here (a new record's
                # copies it finds in the record's entries, above).
                known.update(((m, k), (q, now_ms, expires)) for m, k, q, _ in fresh)
                at = created.get(skey)
                if at is None:
                    extended[skey] = max(keep_until, extended.get(skey, 0))
                else:
                    # A record new in this run goes in with the latest keep_until of
                    # its copies (PostgreSQL inserts it in the same statement as the
                    # extensions, which cannot see it).
                    new = send_rows[at]
                    if keep_until > new[3]:
                        send_rows[at] = (new[0], new[1], new[2], keep_until, new[4])
        received, expires_at = (now_ms, expires) if blob_ref or original is None else original
        results.append(AppendResult(received_at_ms=received, expires_at_ms=expires_at,
                                    accepted=tuple(accepted), rejected=tuple(rejected)))
    return out
