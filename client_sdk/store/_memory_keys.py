"""Prekeys for :class:`~client_sdk.store.memory.MemoryStore` (mirrors ``_sqlite_keys``).

Key pairs are kept serialized and rebuilt on every read. Values are immutable, so a
shallow :meth:`PrekeyTables.copy` is a complete snapshot.
"""

from __future__ import annotations

import dataclasses
import hashlib
from collections.abc import Iterable

from pigeon_crypto.errors import PrekeyNotFound, ReplayError
from pigeon_crypto.pqxdh import Accepted
from pigeon_crypto.prekeys import KemKind, KemPreKeyPair, OneTimePreKeyPair, SignedPreKeyPair

from ..errors import RecordNotFound, StoreConflict
from .records import PrekeyKind, PrekeyStatus, PrekeyUpload

MAX_KEY_ID = 0xFFFFFFFF
MAX_ALLOCATION = 10_000


@dataclasses.dataclass(frozen=True, slots=True)
class PrekeyRow:
    private: bytes  # the serialized key pair
    created_ms: int
    published_at_ms: int | None = None
    retired_at_ms: int | None = None
    kem_kind: KemKind | None = None


def _public(kind: PrekeyKind, private: bytes) -> bytes:
    match kind:
        case PrekeyKind.SIGNED:
            return SignedPreKeyPair.from_bytes(private).public.to_bytes()
        case PrekeyKind.KEM:
            return KemPreKeyPair.from_bytes(private).public.to_bytes()
        case PrekeyKind.ONE_TIME:
            return OneTimePreKeyPair.from_bytes(private).public.to_bytes()


@dataclasses.dataclass
class PrekeyTables:
    rows: dict[PrekeyKind, dict[int, PrekeyRow]] = dataclasses.field(
        default_factory=lambda: {k: {} for k in PrekeyKind})
    counters: dict[PrekeyKind, int] = dataclasses.field(default_factory=dict)
    replays: dict[bytes, int] = dataclasses.field(default_factory=dict)  # hash -> spk id

    def copy(self) -> PrekeyTables:
        return PrekeyTables(rows={k: dict(v) for k, v in self.rows.items()},
                            counters=dict(self.counters), replays=dict(self.replays))

    def private(self, kind: PrekeyKind, key_id: int) -> bytes | None:
        row = self.rows[kind].get(key_id)
        return None if row is None else row.private

    def add(self, kind: PrekeyKind, key_id: int, public: bytes, row: PrekeyRow) -> None:
        old = self.rows[kind].get(key_id)
        if old is not None:
            if _public(kind, old.private) == public:
                return  # the same key saved twice: idempotent
            raise StoreConflict(f"{kind.name.lower()} prekey id {key_id} is taken")
        self.rows[kind][key_id] = row

    def allocate(self, kind: PrekeyKind, count: int) -> list[int]:
        if not 0 <= count <= MAX_ALLOCATION:
            raise ValueError(f"count must be 0..{MAX_ALLOCATION}")
        candidate = self.counters.get(kind, 1)
        out: list[int] = []
        while len(out) < count:
            if candidate not in self.rows[kind]:
                out.append(candidate)
            candidate = 1 if candidate >= MAX_KEY_ID else candidate + 1
        self.counters[kind] = candidate
        return out

    def unpublished(self) -> PrekeyUpload:
        def pending(kind: PrekeyKind) -> list[bytes]:
            return [r.private for _, r in sorted(self.rows[kind].items())
                    if r.published_at_ms is None and r.retired_at_ms is None]

        return PrekeyUpload(
            signed=tuple(SignedPreKeyPair.from_bytes(b).public
                         for b in pending(PrekeyKind.SIGNED)),
            kem=tuple(KemPreKeyPair.from_bytes(b).public for b in pending(PrekeyKind.KEM)),
            one_time=tuple(OneTimePreKeyPair.from_bytes(b).public
                           for b in pending(PrekeyKind.ONE_TIME)),
        )

    def mark_published(self, kind: PrekeyKind, key_ids: Iterable[int], now_ms: int) -> None:
        table = self.rows[kind]
        for key_id in key_ids:
            row = table.get(key_id)
            if row is not None and row.published_at_ms is None:
                table[key_id] = dataclasses.replace(row, published_at_ms=now_ms)

    def current_signed(self) -> tuple[int, PrekeyRow] | None:
        live = [(r.created_ms, k) for k, r in self.rows[PrekeyKind.SIGNED].items()
                if r.retired_at_ms is None]
        if not live:
            return None
        key_id = max(live)[1]
        return key_id, self.rows[PrekeyKind.SIGNED][key_id]

    def retire(self, key_id: int, now_ms: int) -> None:
        row = self.rows[PrekeyKind.SIGNED].get(key_id)
        if row is None:
            raise RecordNotFound("signed prekey", key_id)
        if row.retired_at_ms is None:
            self.rows[PrekeyKind.SIGNED][key_id] = dataclasses.replace(row, retired_at_ms=now_ms)

    def delete_retired(self, retired_before_ms: int) -> list[int]:
        table = self.rows[PrekeyKind.SIGNED]
        ids = sorted(k for k, r in table.items()
                     if r.retired_at_ms is not None and r.retired_at_ms < retired_before_ms)
        for k in ids:
            del table[k]
        self.replays = {h: spk for h, spk in self.replays.items() if spk not in ids}
        return ids

    def status(self) -> PrekeyStatus:
        kem, one = self.rows[PrekeyKind.KEM].values(), self.rows[PrekeyKind.ONE_TIME].values()
        current = self.current_signed()
        last_resort = [(r.created_ms, k) for k, r in self.rows[PrekeyKind.KEM].items()
                       if r.kem_kind is KemKind.LAST_RESORT]
        return PrekeyStatus(
            signed_prekey_id=None if current is None else current[0],
            signed_prekey_created_ms=None if current is None else current[1].created_ms,
            retiring_signed_prekey_ids=tuple(sorted(
                k for k, r in self.rows[PrekeyKind.SIGNED].items()
                if r.retired_at_ms is not None)),
            last_resort_kem_id=max(last_resort)[1] if last_resort else None,
            one_time_available=len(one),
            one_time_unpublished=sum(1 for r in one if r.published_at_ms is None),
            kem_one_time_available=sum(1 for r in kem if r.kem_kind is KemKind.ONE_TIME),
            kem_unpublished=sum(1 for r in kem if r.published_at_ms is None),
        )

    def seen(self, replay_key: bytes) -> bool:
        return hashlib.sha256(replay_key).digest() in self.replays

    def consume(self, accepted: Accepted) -> None:
        digest = hashlib.sha256(accepted.replay_key).digest()
        if digest in self.replays:
            raise ReplayError("initiation already accepted")
        if accepted.signed_prekey_id not in self.rows[PrekeyKind.SIGNED]:
            raise PrekeyNotFound("signed", accepted.signed_prekey_id)
        otk = accepted.one_time_prekey_id
        if otk is not None and self.rows[PrekeyKind.ONE_TIME].pop(otk, None) is None:
            raise PrekeyNotFound("one-time", otk)
        if accepted.kem_prekey_kind is KemKind.ONE_TIME:
            row = self.rows[PrekeyKind.KEM].get(accepted.kem_prekey_id)
            if row is None or row.kem_kind is not KemKind.ONE_TIME:
                raise PrekeyNotFound("kem", accepted.kem_prekey_id)
            del self.rows[PrekeyKind.KEM][accepted.kem_prekey_id]
        self.replays[digest] = accepted.signed_prekey_id
