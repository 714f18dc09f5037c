"""Shared test helpers: deterministic RNG and clock, and a ready two-party set-up."""

from __future__ import annotations

from dataclasses import dataclass

from pigeon_crypto.identity import IdentityKeyPair
from pigeon_crypto.pqxdh import MemoryResponderKeys
from pigeon_crypto.prekeys import (
    KemKind,
    KemPreKeyPair,
    OneTimePreKeyPair,
    PreKeyBundle,
    SignedPreKeyPair,
)
from pigeon_crypto.rng import SeededRng

NOW_MS = 1_790_000_000_000


@dataclass
class Responder:
    """Bob: an identity, his published keys and the private store behind them."""

    identity: IdentityKeyPair
    keys: MemoryResponderKeys
    spk: SignedPreKeyPair
    kem_last_resort: KemPreKeyPair
    kem_one_time: list[KemPreKeyPair]
    one_time: list[OneTimePreKeyPair]

    def bundle(self, *, one_time: bool = True, kem_one_time: bool = True) -> PreKeyBundle:
        kem = self.kem_one_time[0] if kem_one_time and self.kem_one_time else self.kem_last_resort
        otk = self.one_time[0].public if one_time and self.one_time else None
        return PreKeyBundle(identity=self.identity.public, signed_prekey=self.spk.public,
                            kem_prekey=kem.public, one_time_prekey=otk)


def make_responder(seed: bytes = b"bob", *, one_time: int = 2, kem_one_time: int = 1) -> Responder:
    rng = SeededRng(seed)
    ident = IdentityKeyPair.generate(rng)
    spk = SignedPreKeyPair.generate(ident, key_id=1, now_ms=NOW_MS, rng=rng)
    last = KemPreKeyPair.generate(ident, key_id=100, kind=KemKind.LAST_RESORT, now_ms=NOW_MS,
                                  rng=rng)
    kem_ot = [KemPreKeyPair.generate(ident, key_id=200 + i, kind=KemKind.ONE_TIME, now_ms=NOW_MS,
                                     rng=rng) for i in range(kem_one_time)]
    otks = [OneTimePreKeyPair.generate(key_id=1000 + i, rng=rng) for i in range(one_time)]
    keys = MemoryResponderKeys()
    keys.add(spk, last, *kem_ot, *otks)
    return Responder(identity=ident, keys=keys, spk=spk, kem_last_resort=last,
                     kem_one_time=kem_ot, one_time=otks)


def avatar_manifest(name: str = "avatar.png", true_size: int = 1000) -> bytes:
    """An encoded, well-formed manifest of a file that was never uploaded: what a state
    or a profile names as an avatar where nothing downloads it. A long *name* makes a
    large manifest (a group state that pads to a larger bucket)."""
    from pigeon_crypto.files import FileLayout, FileManifest

    layout = FileLayout(true_size, 64 * 1024)
    return FileManifest(key=bytes(32), file_id=bytes(16), chunk_size=64 * 1024,
                        true_size=true_size, padded_size=layout.padded_size,
                        chunk_count=layout.chunk_count, blob_id=bytes(16),
                        name=name).to_bytes()


def process_alive(pid: int) -> bool:
    """Whether process *pid* is running (Linux; a zombie nobody reaped yet counts as
    gone)."""
    try:
        with open(f"/proc/{pid}/stat", encoding="ascii") as f:
            return f.read().rsplit(")", 1)[1].split()[0] != "Z"
    except OSError:
        return False
