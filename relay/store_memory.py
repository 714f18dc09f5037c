"""An in-memory :class:`~relay.ports.Store` for tests and throwaway relays.

Same observable behaviour as the SQLite adapter (the contract suite runs on both), no
durability. Every method runs to completion without awaiting, so each one is atomic with
respect to other coroutines on the loop, which is what the write transactions give the
SQLite adapter. Not thread-safe: use it from one event loop.
"""

from __future__ import annotations

import hashlib
import hmac
from collections.abc import Sequence
from dataclasses import dataclass, field

from protocol import dedup_input

from ._memory_accounts import MemoryAccounts
from .ports import (
    ACCOUNT_ID_LEN,
    CAPABILITY_HASH_LEN,
    CLIENT_MSG_ID_LEN,
    MAILBOX_ID_LEN,
    AccountSummary,
    AppendRequest,
    AppendResult,
    ExpiryNotice,
    ExpiryReport,
    MailboxQueue,
    MailboxRecord,
    NotFound,
    QueueSizes,
    Recipient,
    RecipientSeq,
    RejectReason,
    Store,
    StoreConflict,
    StoredMessage,
    WrongCapability,
    check_id,
)

__all__ = ["MemoryStore"]


@dataclass(slots=True)
class _Mailbox:
    account_id: bytes
    capability_hash: bytes
    created_at_ms: int
    last_seq: int = 0
    expired_count: int = 0
    expired_up_to_seq: int = 0
    retire_at_ms: int | None = None
    push_url: str | None = None
    # seq -> (blob id, received_at_ms, expires_at_ms); seqs only grow, so dict order is seq order
    queue: dict[int, tuple[int, int, int]] = field(default_factory=dict)


def _dedup_hash(mailbox_id: bytes, client_msg_id: bytes) -> bytes:
    return hashlib.sha256(dedup_input(mailbox_id, client_msg_id)).digest()


def _positive(what: str, value: int) -> int:
    if value < 1:
        raise ValueError(f"{what} must be positive")
    return value


class MemoryStore(MemoryAccounts):
    """Implements :class:`relay.ports.Store` with dicts (accounts side: ``MemoryAccounts``)."""

    def __init__(self) -> None:
        super().__init__()
        self._mailboxes: dict[bytes, _Mailbox] = {}
        self._blobs: dict[int, bytes] = {}
        self._blob_refs: dict[int, int] = {}
        self._next_blob = 1
        # (mailbox_id, dedup hash) -> (seq, received_at_ms, expires_at_ms, keep_until_ms)
        self._dedup: dict[tuple[bytes, bytes], tuple[int, int, int, int]] = {}

    async def close(self) -> None:
        """Nothing to release; the data stays with the object."""

    # ------------------------------------------------------------------ accounts (with mailboxes)

    async def delete_account(self, account_id: bytes) -> bool:
        if self._accounts.pop(account_id, None) is None:
            return False
        for mailbox_id in [m for m, mb in self._mailboxes.items() if mb.account_id == account_id]:
            self._drop_mailbox(mailbox_id)
        for name in [n for n, v in self._usernames.items() if v[0] == account_id]:
            del self._usernames[name]
        return True

    async def list_accounts(
        self, *, after: bytes | None = None, limit: int = 100
    ) -> list[AccountSummary]:
        _positive("limit", limit)
        counts: dict[bytes, int] = {}
        for mb in self._mailboxes.values():
            counts[mb.account_id] = counts.get(mb.account_id, 0) + 1
        ids = sorted(a for a in self._accounts if a > (after or b""))[:limit]
        return [
            AccountSummary(
                account_id=a,
                created_at_ms=self._accounts[a].created_at_ms,
                mailbox_count=counts.get(a, 0),
            )
            for a in ids
        ]

    # ------------------------------------------------------------------ mailboxes

    def _record(self, mailbox_id: bytes, mb: _Mailbox) -> MailboxRecord:
        return MailboxRecord(
            mailbox_id=mailbox_id,
            account_id=mb.account_id,
            created_at_ms=mb.created_at_ms,
            last_seq=mb.last_seq,
            pending=len(mb.queue),
            retire_at_ms=mb.retire_at_ms,
            push_url=mb.push_url,
        )

    def _owned(self, account_id: bytes, mailbox_id: bytes) -> _Mailbox:
        mb = self._mailboxes.get(mailbox_id)
        if mb is None or mb.account_id != account_id:
            raise NotFound("mailbox")
        return mb

    def _drop_mailbox(self, mailbox_id: bytes) -> None:
        mb = self._mailboxes.pop(mailbox_id)
        owner = self._accounts.get(mb.account_id)
        if owner is not None and owner.contact and owner.contact[0] == mailbox_id:
            owner.contact = None
        for seq in list(mb.queue):
            self._remove_delivery(mb, seq)
        for key in [k for k in self._dedup if k[0] == mailbox_id]:
            del self._dedup[key]

    def _remove_delivery(self, mb: _Mailbox, seq: int) -> bool:
        entry = mb.queue.pop(seq, None)
        if entry is None:
            return False
        blob_id = entry[0]
        self._blob_refs[blob_id] -= 1
        if self._blob_refs[blob_id] == 0:
            del self._blob_refs[blob_id]
            del self._blobs[blob_id]
        return True

    async def create_mailbox(
        self, *, account_id: bytes, mailbox_id: bytes, capability_hash: bytes, now_ms: int
    ) -> MailboxRecord:
        check_id("account_id", account_id, ACCOUNT_ID_LEN)
        check_id("mailbox_id", mailbox_id, MAILBOX_ID_LEN)
        check_id("capability_hash", capability_hash, CAPABILITY_HASH_LEN)
        if account_id not in self._accounts:
            raise NotFound("account")
        if mailbox_id in self._mailboxes:
            raise StoreConflict("mailbox")
        mb = _Mailbox(account_id, capability_hash, now_ms)
        self._mailboxes[mailbox_id] = mb
        return self._record(mailbox_id, mb)

    async def get_mailbox(self, mailbox_id: bytes) -> MailboxRecord | None:
        mb = self._mailboxes.get(mailbox_id)
        return None if mb is None else self._record(mailbox_id, mb)

    async def list_mailboxes(self, account_id: bytes) -> list[MailboxRecord]:
        owned = [(mb.created_at_ms, m) for m, mb in self._mailboxes.items()
                 if mb.account_id == account_id]
        return [self._record(m, self._mailboxes[m]) for _, m in sorted(owned)]

    async def count_mailboxes(self, account_id: bytes) -> int:
        return sum(mb.account_id == account_id for mb in self._mailboxes.values())

    async def owned_mailboxes(self, account_id: bytes,
                              mailbox_ids: Sequence[bytes]) -> set[bytes]:
        return {m for m in mailbox_ids
                if (mb := self._mailboxes.get(m)) is not None and mb.account_id == account_id}

    async def rotate_mailbox(
        self,
        *,
        account_id: bytes,
        mailbox_id: bytes,
        new_mailbox_id: bytes,
        capability_hash: bytes,
        retire_at_ms: int,
        now_ms: int,
    ) -> MailboxRecord:
        old = self._owned(account_id, mailbox_id)
        if old.retire_at_ms is not None:  # a repeat: the mailbox it created, if any
            made = [(mb.created_at_ms, m) for m, mb in self._mailboxes.items()
                    if mb.account_id == account_id and mb.capability_hash == capability_hash
                    and m != mailbox_id]
            if not made:
                raise NotFound("mailbox")
            made_id = max(made)[1]
            return self._record(made_id, self._mailboxes[made_id])
        new = await self.create_mailbox(account_id=account_id, mailbox_id=new_mailbox_id,
                                        capability_hash=capability_hash, now_ms=now_ms)
        self._mailboxes[new_mailbox_id].push_url = old.push_url
        old.retire_at_ms = retire_at_ms
        return MailboxRecord(
            mailbox_id=new.mailbox_id, account_id=account_id, created_at_ms=now_ms, last_seq=0,
            pending=0, retire_at_ms=None, push_url=old.push_url,
        )

    async def replace_capability(
        self, *, account_id: bytes, mailbox_id: bytes, capability_hash: bytes
    ) -> None:
        check_id("capability_hash", capability_hash, CAPABILITY_HASH_LEN)
        self._owned(account_id, mailbox_id).capability_hash = capability_hash

    async def set_contact_mailbox(
        self, *, account_id: bytes, mailbox_id: bytes, capability: bytes
    ) -> None:
        mb = self._owned(account_id, mailbox_id)
        if not hmac.compare_digest(mb.capability_hash, hashlib.sha256(capability).digest()):
            raise WrongCapability()
        self._accounts[account_id].contact = (mailbox_id, bytes(capability))

    async def set_push_url(
        self, *, account_id: bytes, mailbox_ids: Sequence[bytes], push_url: str | None
    ) -> None:
        boxes = [self._owned(account_id, m) for m in mailbox_ids]  # all or none
        for mb in boxes:
            mb.push_url = push_url

    async def delete_mailbox(self, *, account_id: bytes, mailbox_id: bytes) -> bool:
        try:
            self._owned(account_id, mailbox_id)
        except NotFound:
            return False
        self._drop_mailbox(mailbox_id)
        return True

    def _accepts(self, r: Recipient, now_ms: int) -> bool:
        mb = self._mailboxes.get(r.mailbox_id)
        return (
            mb is not None
            and hmac.compare_digest(mb.capability_hash, r.capability_hash)
            and (mb.retire_at_ms is None or mb.retire_at_ms > now_ms)
        )

    async def check_capabilities(
        self, recipients: Sequence[Recipient], *, now_ms: int
    ) -> frozenset[bytes]:
        return frozenset(r.mailbox_id for r in recipients if self._accepts(r, now_ms))

    # ------------------------------------------------------------------ messages

    async def append_many(self, requests: Sequence[AppendRequest]) -> list[AppendResult]:
        for request in requests:  # all or nothing: check before changing anything
            check_id("client_msg_id", request.client_msg_id, CLIENT_MSG_ID_LEN)
            _positive("ttl_ms", request.ttl_ms)
        return [await self.append(recipients=r.recipients, client_msg_id=r.client_msg_id,
                                  blob=r.blob, now_ms=r.now_ms, ttl_ms=r.ttl_ms,
                                  max_pending=r.max_pending, dedup_ttl_ms=r.dedup_ttl_ms)
                for r in requests]

    async def append(
        self,
        *,
        recipients: Sequence[Recipient],
        client_msg_id: bytes,
        blob: bytes,
        now_ms: int,
        ttl_ms: int,
        max_pending: int | None = None,
        dedup_ttl_ms: int | None = None,
    ) -> AppendResult:
        check_id("client_msg_id", client_msg_id, CLIENT_MSG_ID_LEN)
        _positive("ttl_ms", ttl_ms)
        expires = now_ms + ttl_ms
        keep_until = now_ms + max(ttl_ms, dedup_ttl_ms or 0)
        accepted: list[RecipientSeq] = []
        rejected: list[tuple[bytes, RejectReason]] = []
        original: tuple[int, int] | None = None
        fresh: list[int] = []
        seen: set[bytes] = set()
        for r in recipients:
            if r.mailbox_id in seen:
                continue
            seen.add(r.mailbox_id)
            if not self._accepts(r, now_ms):
                rejected.append((r.mailbox_id, RejectReason.WRONG_CAPABILITY))
                continue
            prior = self._dedup.get((r.mailbox_id, _dedup_hash(r.mailbox_id, client_msg_id)))
            pending = len(self._mailboxes[r.mailbox_id].queue)
            if prior is not None:
                accepted.append(RecipientSeq(mailbox_id=r.mailbox_id, seq=prior[0], duplicate=True))
                original = original or (prior[1], prior[2])
            elif max_pending is not None and pending >= max_pending:
                rejected.append((r.mailbox_id, RejectReason.QUOTA_EXCEEDED))
            else:
                fresh.append(len(accepted))
                accepted.append(RecipientSeq(mailbox_id=r.mailbox_id, seq=0, duplicate=False))
        if fresh:
            blob_id = self._next_blob
            self._next_blob += 1
            self._blobs[blob_id] = bytes(blob)
            self._blob_refs[blob_id] = len(fresh)
            for i in fresh:
                mailbox_id = accepted[i].mailbox_id
                mb = self._mailboxes[mailbox_id]
                mb.last_seq += 1
                mb.queue[mb.last_seq] = (blob_id, now_ms, expires)
                key = (mailbox_id, _dedup_hash(mailbox_id, client_msg_id))
                self._dedup[key] = (mb.last_seq, now_ms, expires, keep_until)
                accepted[i] = RecipientSeq(mailbox_id=mailbox_id, seq=mb.last_seq, duplicate=False)
        received, expires_at = (now_ms, expires) if fresh or original is None else original
        return AppendResult(
            received_at_ms=received,
            expires_at_ms=expires_at,
            accepted=tuple(accepted),
            rejected=tuple(rejected),
        )

    async def fetch(
        self, mailbox_id: bytes, *, after_seq: int = 0, limit: int = 100, now_ms: int
    ) -> list[StoredMessage]:
        _positive("limit", limit)
        mb = self._mailboxes.get(mailbox_id)
        if mb is None:
            return []
        out: list[StoredMessage] = []
        for seq, (blob_id, received, expires) in mb.queue.items():
            if seq <= after_seq or expires <= now_ms:
                continue
            out.append(
                StoredMessage(
                    mailbox_id=mailbox_id,
                    seq=seq,
                    received_at_ms=received,
                    expires_at_ms=expires,
                    blob=self._blobs[blob_id],
                )
            )
            if len(out) == limit:
                break
        return out

    async def ack(
        self, mailbox_id: bytes, *, up_to_seq: int | None = None, seqs: Sequence[int] = ()
    ) -> int:
        mb = self._mailboxes.get(mailbox_id)
        if mb is None:
            return 0
        doomed = {s for s in mb.queue if up_to_seq is not None and s <= up_to_seq}
        doomed.update(seqs)
        return sum(self._remove_delivery(mb, s) for s in sorted(doomed))

    async def ack_many(
        self, requests: Sequence[tuple[bytes, int | None, Sequence[int]]]
    ) -> list[int]:
        return [await self.ack(m, up_to_seq=up, seqs=seqs) for m, up, seqs in requests]

    async def pending_count(self, mailbox_id: bytes) -> int:
        mb = self._mailboxes.get(mailbox_id)
        return 0 if mb is None else len(mb.queue)

    async def expire(self, *, now_ms: int, limit: int = 10_000) -> ExpiryReport:
        _positive("limit", limit)
        due = sorted(
            (expires, mailbox_id, seq)
            for mailbox_id, mb in self._mailboxes.items()
            for seq, (_, _, expires) in mb.queue.items()
            if expires <= now_ms
        )[:limit]
        per_mailbox: dict[bytes, tuple[int, int]] = {}
        for _, mailbox_id, seq in due:
            mb = self._mailboxes[mailbox_id]
            self._remove_delivery(mb, seq)
            count, top = per_mailbox.get(mailbox_id, (0, 0))
            per_mailbox[mailbox_id] = (count + 1, max(top, seq))
        for mailbox_id, (count, top) in per_mailbox.items():
            mb = self._mailboxes[mailbox_id]
            mb.expired_count += count
            mb.expired_up_to_seq = max(mb.expired_up_to_seq, top)
        stale = [k for k, v in self._dedup.items() if v[3] <= now_ms][:limit]
        for key in stale:
            del self._dedup[key]
        retired = sorted(
            (mb.retire_at_ms, m) for m, mb in self._mailboxes.items()
            if mb.retire_at_ms is not None and mb.retire_at_ms <= now_ms and not mb.queue
        )[:limit]
        for _, mailbox_id in retired:
            self._drop_mailbox(mailbox_id)
        return ExpiryReport(
            notices=tuple(
                ExpiryNotice(mailbox_id=m, count=c, up_to_seq=s)
                for m, (c, s) in sorted(per_mailbox.items())
            ),
            messages_removed=len(due),
            dedup_removed=len(stale),
            retired=tuple(sorted(m for _, m in retired)),
            more=max(len(due), len(stale), len(retired)) >= limit,
        )

    async def expire_mailbox(self, mailbox_id: bytes, *, now_ms: int) -> int:
        mb = self._mailboxes.get(mailbox_id)
        if mb is None:
            return 0
        seqs = [seq for seq, (_, _, expires) in mb.queue.items() if expires <= now_ms]
        for seq in seqs:
            self._remove_delivery(mb, seq)
        if seqs:
            mb.expired_count += len(seqs)
            mb.expired_up_to_seq = max(mb.expired_up_to_seq, max(seqs))
        return len(seqs)

    async def get_expiry_notice(self, mailbox_id: bytes) -> ExpiryNotice | None:
        mb = self._mailboxes.get(mailbox_id)
        if mb is None or mb.expired_count == 0:
            return None
        return ExpiryNotice(
            mailbox_id=mailbox_id, count=mb.expired_count, up_to_seq=mb.expired_up_to_seq
        )

    async def clear_expiry_notice(self, notice: ExpiryNotice) -> None:
        mb = self._mailboxes.get(notice.mailbox_id)
        if mb is None:
            return
        if mb.expired_count <= notice.count:
            mb.expired_up_to_seq = 0
        mb.expired_count = max(mb.expired_count - notice.count, 0)

    # ------------------------------------------------------------------ admin

    async def queue_sizes(self, *, limit: int = 100) -> QueueSizes:
        _positive("limit", limit)
        queues = [
            MailboxQueue(
                mailbox_id=m,
                account_id=mb.account_id,
                pending=len(mb.queue),
                oldest_received_at_ms=min(v[1] for v in mb.queue.values()),
            )
            for m, mb in self._mailboxes.items()
            if mb.queue
        ]
        queues.sort(key=lambda q: (-q.pending, q.mailbox_id))
        return QueueSizes(
            total_messages=sum(len(mb.queue) for mb in self._mailboxes.values()),
            total_blobs=len(self._blobs),
            total_blob_bytes=sum(len(b) for b in self._blobs.values()),
            mailboxes=tuple(queues[:limit]),
        )


def _conforms(store: MemoryStore) -> Store:  # pragma: no cover - checked by mypy
    return store
