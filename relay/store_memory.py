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

from .ports import (
    ACCOUNT_ID_LEN,
    CAPABILITY_HASH_LEN,
    CLIENT_MSG_ID_LEN,
    MAILBOX_ID_LEN,
    AccountRecord,
    AccountSummary,
    AppendResult,
    ExpiryNotice,
    ExpiryReport,
    InviteRecord,
    InviteRejected,
    MailboxQueue,
    MailboxRecord,
    NotFound,
    OneTimePrekey,
    PrekeyBundleRecord,
    PrekeyCounts,
    QueueSizes,
    Recipient,
    RecipientSeq,
    RejectReason,
    Store,
    StoreConflict,
    StoredMessage,
    UsernameRecord,
    WrongCapability,
    check_id,
)

__all__ = ["MemoryStore"]


@dataclass(slots=True)
class _Account:
    identity_key: bytes
    created_at_ms: int
    identity_updated_at_ms: int
    signed_prekey: bytes | None = None
    last_resort_kem: bytes | None = None
    one_time_x25519: dict[int, bytes] = field(default_factory=dict)
    one_time_kem: dict[int, bytes] = field(default_factory=dict)
    rotations: list[bytes] = field(default_factory=list)
    contact: tuple[bytes, bytes] | None = None  # (mailbox id, capability)


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


class MemoryStore:
    """Implements :class:`relay.ports.Store` with dicts."""

    def __init__(self) -> None:
        self._accounts: dict[bytes, _Account] = {}
        self._mailboxes: dict[bytes, _Mailbox] = {}
        self._blobs: dict[int, bytes] = {}
        self._blob_refs: dict[int, int] = {}
        self._next_blob = 1
        # (mailbox_id, dedup hash) -> (seq, received_at_ms, expires_at_ms)
        self._dedup: dict[tuple[bytes, bytes], tuple[int, int, int]] = {}
        self._usernames: dict[str, tuple[bytes, bytes, int]] = {}
        self._invites: dict[bytes, InviteRecord] = {}

    async def close(self) -> None:
        """Nothing to release; the data stays with the object."""

    # ------------------------------------------------------------------ accounts

    def _consume_invite(self, code_hash: bytes, now_ms: int) -> bool:
        inv = self._invites.get(code_hash)
        if inv is None or inv.used_at_ms is not None:
            return False
        if inv.expires_at_ms is not None and inv.expires_at_ms <= now_ms:
            return False
        self._invites[code_hash] = InviteRecord(
            code_hash=code_hash,
            created_at_ms=inv.created_at_ms,
            expires_at_ms=inv.expires_at_ms,
            used_at_ms=now_ms,
        )
        return True

    async def create_account(
        self,
        *,
        account_id: bytes,
        identity_key: bytes,
        now_ms: int,
        invite_code_hash: bytes | None = None,
    ) -> AccountRecord:
        check_id("account_id", account_id, ACCOUNT_ID_LEN)
        if invite_code_hash is not None:
            check_id("invite_code_hash", invite_code_hash, CAPABILITY_HASH_LEN)
        if account_id in self._accounts:
            raise StoreConflict("account")
        if invite_code_hash is not None and not self._consume_invite(invite_code_hash, now_ms):
            raise InviteRejected()
        self._accounts[account_id] = _Account(bytes(identity_key), now_ms, now_ms)
        record = await self.get_account(account_id)
        assert record is not None
        return record

    async def get_account(self, account_id: bytes) -> AccountRecord | None:
        a = self._accounts.get(account_id)
        if a is None:
            return None
        return AccountRecord(
            account_id=account_id,
            identity_key=a.identity_key,
            created_at_ms=a.created_at_ms,
            identity_updated_at_ms=a.identity_updated_at_ms,
            rotation_count=len(a.rotations),
            contact_mailbox_id=a.contact[0] if a.contact else None,
            contact_capability=a.contact[1] if a.contact else None,
        )

    async def rotate_identity(
        self, *, account_id: bytes, identity_key: bytes, rotation: bytes, now_ms: int
    ) -> AccountRecord:
        check_id("account_id", account_id, ACCOUNT_ID_LEN)
        a = self._accounts.get(account_id)
        if a is None:
            raise NotFound("account")
        a.identity_key = bytes(identity_key)
        a.identity_updated_at_ms = now_ms
        a.rotations.append(bytes(rotation))
        record = await self.get_account(account_id)
        assert record is not None
        return record

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
        if old.retire_at_ms is not None:
            raise NotFound("mailbox")
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

    async def append(
        self,
        *,
        recipients: Sequence[Recipient],
        client_msg_id: bytes,
        blob: bytes,
        now_ms: int,
        ttl_ms: int,
        max_pending: int | None = None,
    ) -> AppendResult:
        check_id("client_msg_id", client_msg_id, CLIENT_MSG_ID_LEN)
        _positive("ttl_ms", ttl_ms)
        expires = now_ms + ttl_ms
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
                self._dedup[key] = (mb.last_seq, now_ms, expires)
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
        stale = [k for k, v in self._dedup.items() if v[2] <= now_ms][:limit]
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

    # ------------------------------------------------------------------ prekeys

    def _counts(self, a: _Account) -> PrekeyCounts:
        return PrekeyCounts(
            one_time_x25519=len(a.one_time_x25519),
            one_time_kem=len(a.one_time_kem),
            has_signed_prekey=a.signed_prekey is not None,
            has_last_resort_kem=a.last_resort_kem is not None,
        )

    async def upload_prekeys(
        self,
        *,
        account_id: bytes,
        signed_prekey: bytes | None = None,
        last_resort_kem: bytes | None = None,
        one_time_x25519: Sequence[OneTimePrekey] = (),
        one_time_kem: Sequence[OneTimePrekey] = (),
        replace_one_time: bool = False,
    ) -> PrekeyCounts:
        a = self._accounts.get(account_id)
        if a is None:
            raise NotFound("account")
        if signed_prekey is not None:
            a.signed_prekey = bytes(signed_prekey)
        if last_resort_kem is not None:
            a.last_resort_kem = bytes(last_resort_kem)
        if replace_one_time:
            a.one_time_x25519.clear()
            a.one_time_kem.clear()
        a.one_time_x25519.update((k.key_id, k.data) for k in one_time_x25519)
        a.one_time_kem.update((k.key_id, k.data) for k in one_time_kem)
        return self._counts(a)

    async def fetch_prekey_bundle(self, account_id: bytes) -> PrekeyBundleRecord | None:
        a = self._accounts.get(account_id)
        if a is None:
            raise NotFound("account")
        if a.signed_prekey is None:
            return None
        if a.last_resort_kem is None and not a.one_time_kem:
            return None

        def take(pool: dict[int, bytes]) -> OneTimePrekey | None:
            if not pool:
                return None
            key_id = min(pool)
            return OneTimePrekey(key_id=key_id, data=pool.pop(key_id))

        otk = take(a.one_time_x25519)
        kem = take(a.one_time_kem)
        return PrekeyBundleRecord(
            account_id=account_id,
            identity_key=a.identity_key,
            rotations=tuple(a.rotations),
            signed_prekey=a.signed_prekey,
            one_time_x25519=otk,
            one_time_kem=kem,
            last_resort_kem=None if kem is not None else a.last_resort_kem,
            contact_mailbox_id=a.contact[0] if a.contact else None,
            contact_capability=a.contact[1] if a.contact else None,
            remaining=self._counts(a),
        )

    async def prekey_counts(self, account_id: bytes) -> PrekeyCounts:
        a = self._accounts.get(account_id)
        if a is None:
            raise NotFound("account")
        return self._counts(a)

    # ------------------------------------------------------------------ usernames

    async def claim_username(
        self, *, account_id: bytes, username: str, binding: bytes, now_ms: int
    ) -> UsernameRecord:
        if not username:
            raise ValueError("username must not be empty")
        if account_id not in self._accounts:
            raise NotFound("account")
        holder = self._usernames.get(username)
        if holder is not None and holder[0] != account_id:
            raise StoreConflict("username")
        await self.release_username(account_id)
        self._usernames[username] = (account_id, bytes(binding), now_ms)
        return UsernameRecord(
            username=username, account_id=account_id, binding=bytes(binding), claimed_at_ms=now_ms
        )

    async def lookup_username(self, username: str) -> UsernameRecord | None:
        v = self._usernames.get(username)
        if v is None:
            return None
        return UsernameRecord(username=username, account_id=v[0], binding=v[1], claimed_at_ms=v[2])

    async def release_username(self, account_id: bytes) -> bool:
        names = [n for n, v in self._usernames.items() if v[0] == account_id]
        for n in names:
            del self._usernames[n]
        return bool(names)

    # ------------------------------------------------------------------ invites

    async def create_invite(
        self, *, code_hash: bytes, now_ms: int, expires_at_ms: int | None = None
    ) -> InviteRecord:
        check_id("code_hash", code_hash, CAPABILITY_HASH_LEN)
        if code_hash in self._invites:
            raise StoreConflict("invite")
        inv = InviteRecord(
            code_hash=code_hash, created_at_ms=now_ms, expires_at_ms=expires_at_ms, used_at_ms=None
        )
        self._invites[code_hash] = inv
        return inv

    async def consume_invite(self, *, code_hash: bytes, now_ms: int) -> bool:
        return self._consume_invite(code_hash, now_ms)

    async def revoke_invite(self, code_hash: bytes) -> bool:
        return self._invites.pop(code_hash, None) is not None

    async def list_invites(self) -> list[InviteRecord]:
        return sorted(self._invites.values(), key=lambda i: (i.created_at_ms, i.code_hash))

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
