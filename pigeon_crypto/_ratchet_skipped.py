"""The bounded, expiring store of skipped message keys (internal).

Signal spec sections 2.6 and 3.5 (``MKSKIPPED``), 4.6 (``TrySkippedMessageKeysHE``)
and 6.4 (deletion of skipped message keys: bounded and expiring here):
keys of messages that have not arrived yet are kept so that late, out-of-order
messages still decrypt. With header encryption the store is indexed by the
*header key* of the chain the message was sent on, so a receiver trial-decrypts
the header once per distinct stored header key, never once per stored entry.

Invariants (relied on by eviction and by the snapshot format):

* Chains are kept in insertion order and the keys of a chain in increasing
  message number. Only the current receiving chain ever gains keys, and a chain
  that is emptied and later refilled moves to the end, so iteration order is
  the order in which keys were stored: the first entry is the oldest.
* A :class:`SkippedKeys` value is immutable. Every change returns a new value;
  the dictionaries inside are never mutated after construction, so a state that
  shares them with its successor is never affected by a failed decrypt.
* ``len(store) <= MAX_SKIPPED_KEYS`` and the number of chains is at most
  ``MAX_SKIPPED_CHAINS``: the oldest entries (then the oldest chains) are
  evicted first.
"""

from __future__ import annotations

from collections.abc import Iterable, Iterator, Mapping

__all__ = [
    "EMPTY",
    "MAX_SKIPPED_CHAINS",
    "MAX_SKIPPED_KEYS",
    "SKIPPED_KEY_TTL_MS",
    "SkippedEntry",
    "SkippedKeys",
    "make_skipped",
]

MAX_SKIPPED_KEYS = 2000
"""Total stored keys: two full MAX_SKIP gaps (old + new chain) fit; caps memory and snapshots."""
MAX_SKIPPED_CHAINS = 32
"""Distinct stored header keys: bounds the header trial decryptions a single message can cause."""
SKIPPED_KEY_TTL_MS = 30 * 24 * 3600 * 1000
"""Skipped keys older than 30 days are deleted: the relay keeps envelopes no longer than that."""

SkippedEntry = tuple[bytes, int]
"""(message_key, created_ms)."""

_Chains = dict[bytes, dict[int, SkippedEntry]]


class SkippedKeys:
    """Immutable map ``header_key -> {message number -> (message_key, created_ms)}``."""

    __slots__ = ("_chains", "_count", "_oldest_ms")

    _chains: _Chains
    _count: int
    _oldest_ms: int

    def __init__(self, chains: _Chains | None = None) -> None:
        """Take ownership of *chains* (the caller must not keep or mutate it).

        Empty chains are dropped; the bounds are enforced by :meth:`with_added`,
        which is the only way keys are added at run time (the snapshot decoder
        checks them separately).
        """
        clean: _Chains = {hk: keys for hk, keys in (chains or {}).items() if keys}
        self._chains = clean
        self._count = sum(len(keys) for keys in clean.values())
        self._oldest_ms = min(
            (created for keys in clean.values() for _, created in keys.values()), default=0
        )

    # -- queries -----------------------------------------------------------------------------

    def __len__(self) -> int:
        return self._count

    def __bool__(self) -> bool:
        return self._count != 0

    def __iter__(self) -> Iterator[bytes]:
        """The distinct header keys, oldest chain first."""
        return iter(self._chains)

    def chains(self) -> Mapping[bytes, Mapping[int, SkippedEntry]]:
        """Read-only view for serialization (oldest chain first, keys ascending)."""
        return self._chains

    def get(self, header_key: bytes, n: int) -> SkippedEntry | None:
        keys = self._chains.get(header_key)
        return None if keys is None else keys.get(n)

    def has(self, header_key: bytes) -> bool:
        return header_key in self._chains

    def any_expired(self, now_ms: int, ttl_ms: int = SKIPPED_KEY_TTL_MS) -> bool:
        """O(1): whether at least one entry is older than ``ttl_ms`` at ``now_ms``."""
        return self._count != 0 and now_ms - self._oldest_ms > ttl_ms

    # -- updates (each returns a new store) ---------------------------------------------------

    def without(self, header_key: bytes, n: int) -> SkippedKeys:
        """The store minus one consumed entry (message keys are used once: spec 3.5)."""
        chains = dict(self._chains)
        keys = dict(chains[header_key])
        del keys[n]
        if keys:
            chains[header_key] = keys
        else:
            del chains[header_key]
        return make_skipped(chains)

    def with_added(
        self, header_key: bytes, entries: Iterable[tuple[int, bytes]], now_ms: int
    ) -> SkippedKeys:
        """Append keys for *header_key* (stamped ``now_ms``), then evict down to the bounds."""
        chains = dict(self._chains)
        old = chains.pop(header_key, None)
        keys = dict(old) if old is not None else {}
        for n, message_key in entries:
            keys[n] = (message_key, now_ms)
        if not keys:
            return self
        # Re-inserting moves the chain to the end: it holds the newest keys (module invariant).
        chains[header_key] = keys
        return make_skipped(_evict(chains))

    def purged(self, now_ms: int, ttl_ms: int = SKIPPED_KEY_TTL_MS) -> SkippedKeys:
        """The store without entries older than ``ttl_ms`` (``self`` if none expired)."""
        if not self.any_expired(now_ms, ttl_ms):
            return self
        chains: _Chains = {}
        for hk, keys in self._chains.items():
            kept = {n: e for n, e in keys.items() if now_ms - e[1] <= ttl_ms}
            if kept:
                chains[hk] = kept
        return make_skipped(chains)

    def __repr__(self) -> str:
        return f"SkippedKeys(chains={len(self._chains)}, keys={self._count})"


def _evict(chains: _Chains) -> _Chains:
    """Drop the oldest chains, then the oldest keys, until both bounds hold (mutates *chains*)."""
    while len(chains) > MAX_SKIPPED_CHAINS:
        del chains[next(iter(chains))]
    excess = sum(len(keys) for keys in chains.values()) - MAX_SKIPPED_KEYS
    while excess > 0:
        first = next(iter(chains))
        keys = chains[first]
        if len(keys) <= excess:
            excess -= len(keys)
            del chains[first]
            continue
        trimmed = dict(keys)
        for n in list(trimmed)[:excess]:
            del trimmed[n]
        chains[first] = trimmed
        excess = 0
    return chains


EMPTY = SkippedKeys()
"""The one empty store: ``store is EMPTY`` is the hot path's O(1) "nothing skipped" test."""


def make_skipped(chains: _Chains) -> SkippedKeys:
    """A store owning *chains*; :data:`EMPTY` when nothing is left."""
    store = SkippedKeys(chains)
    return store if store._count else EMPTY
