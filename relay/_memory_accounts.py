"""The account side of :class:`relay.store_memory.MemoryStore`: accounts, prekeys,
usernames, invites. Same rules: every method runs without awaiting, so it is atomic with
respect to other coroutines on the loop.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field

from .ports import (
    ACCOUNT_ID_LEN,
    CAPABILITY_HASH_LEN,
    AccountRecord,
    InviteRecord,
    InviteRejected,
    NotFound,
    OneTimePrekey,
    PrekeyBundleRecord,
    PrekeyCounts,
    StoreConflict,
    UsernameRecord,
    check_id,
)

__all__ = ["MemoryAccounts"]


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


class MemoryAccounts:
    """Base of :class:`relay.store_memory.MemoryStore` holding the per-account state."""

    def __init__(self) -> None:
        self._accounts: dict[bytes, _Account] = {}
        self._usernames: dict[str, tuple[bytes, bytes, int]] = {}
        self._invites: dict[bytes, InviteRecord] = {}

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
        self, *, account_id: bytes, identity_key: bytes, rotation: bytes, now_ms: int,
        expect_key: bytes, expect_rotations: int,
    ) -> AccountRecord:
        check_id("account_id", account_id, ACCOUNT_ID_LEN)
        a = self._accounts.get(account_id)
        if a is None:
            raise NotFound("account")
        if a.identity_key != expect_key or len(a.rotations) != expect_rotations:
            raise StoreConflict("identity rotated meanwhile")
        a.identity_key = bytes(identity_key)
        a.identity_updated_at_ms = now_ms
        # What the old key signed no longer verifies (see _sqlite_accounts.rotate_identity).
        a.signed_prekey = None
        a.last_resort_kem = None
        a.one_time_kem.clear()
        a.rotations.append(bytes(rotation))
        record = await self.get_account(account_id)
        assert record is not None
        return record

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
