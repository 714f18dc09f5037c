"""Credits: token buckets per connection and per mailbox, and the misbehaviour counter.

Theory of operation (DESIGN.md "Relay pipeline": validate -> capability -> **credits** ->
persist):

* A :class:`TokenBucket` holds up to ``capacity`` credits and gains ``refill_per_s`` per
  second. A send takes one credit per envelope; an empty bucket refuses the send and says
  how long until it would succeed (the wire's ``RATE_LIMITED`` + ``retry_after_ms``).
  A send to more mailboxes than the burst (a large group's or channel's fan-out, up to
  ``MAX_RECIPIENTS``) passes once the bucket is full and leaves it in debt: later sends
  wait until the debt is refilled, so the sustained rate is still ``refill_per_s``, and
  a client never has to know the relay's burst to split its sends.
* Every connection has its own bucket (it bounds what one socket can push), and every
  destination mailbox has one in a bounded :class:`BucketMap` (it bounds what all senders
  together can push into one mailbox, so flooding someone needs many connections *and*
  still cannot exceed the mailbox's rate).
* :func:`take_send` charges a send atomically: the connection and every recipient mailbox
  are charged, or none is (a refused fan-out costs nothing and leaves no partial charge).
* Everything here is pure: the clock is passed in as ``now`` (seconds from any monotonic
  origin, e.g. ``time.monotonic()``), so tests need no sleeping. No asyncio, no locks: the
  relay calls it from its single event loop.

Eviction: a bucket that has not been touched for ``capacity / refill_per_s`` seconds is
full again, and a full bucket is indistinguishable from a fresh one. :class:`BucketMap`
therefore evicts least-recently-used buckets first; dropping one loses state only if
``max_buckets`` mailboxes were charged within that refill window, which the default bound
(100,000) makes the attacker pay for with as many capability-checked sends.
"""

from __future__ import annotations

import math
from collections import OrderedDict
from collections.abc import Hashable, Sequence
from dataclasses import dataclass
from typing import Generic, TypeVar

__all__ = [
    "BucketMap",
    "Misbehaviour",
    "Refusal",
    "TokenBucket",
    "take_send",
]

K = TypeVar("K", bound=Hashable)


class TokenBucket:
    """A token bucket that starts full.

    Args:
        capacity: the most credits it holds (the burst), > 0.
        refill_per_s: credits gained per second, > 0.
        now: the creation time (the bucket is full at that time).
    """

    __slots__ = ("_last", "_tokens", "capacity", "refill_per_s")

    def __init__(self, capacity: float, refill_per_s: float, *, now: float = 0.0) -> None:
        if not (capacity > 0 and refill_per_s > 0):
            raise ValueError("capacity and refill_per_s must be positive")
        if not (math.isfinite(capacity) and math.isfinite(refill_per_s)):
            raise ValueError("capacity and refill_per_s must be finite")
        self.capacity = float(capacity)
        self.refill_per_s = float(refill_per_s)
        self._tokens = float(capacity)
        self._last = now

    def _refill(self, now: float) -> None:
        # A clock that goes backwards (it should not, with a monotonic clock) never
        # removes credits; it only delays the next refill.
        if now > self._last:
            self._tokens = min(self.capacity, self._tokens + (now - self._last) * self.refill_per_s)
            self._last = now

    def tokens(self, now: float) -> float:
        """Credits available at *now*."""
        self._refill(now)
        return self._tokens

    def wait_for(self, now: float, n: float = 1.0) -> float:
        """Seconds until *n* credits are available (0.0 if they are now). Takes nothing.

        Raises:
            ValueError: *n* exceeds the capacity (it would never succeed) or is negative.
        """
        if n < 0 or n > self.capacity:
            raise ValueError("n must be in 0..capacity")
        self._refill(now)
        missing = n - self._tokens
        return 0.0 if missing <= 0 else missing / self.refill_per_s

    def try_take(self, now: float, n: float = 1.0) -> float:
        """Take *n* credits if available. More than the capacity is taken from a full
        bucket, which is left in debt (negative) until it refills.

        Returns:
            0.0 when taken; otherwise the retry-after in seconds (> 0) and nothing is taken.

        Raises:
            ValueError: *n* is negative.
        """
        if n < 0:
            raise ValueError("n must not be negative")
        wait = self.wait_for(now, min(n, self.capacity))
        if wait == 0.0:
            self._tokens -= n
        return wait

    def give_back(self, n: float = 1.0) -> None:
        """Return credits taken by an operation that was then refused elsewhere."""
        self._tokens = min(self.capacity, self._tokens + n)

    def full(self, now: float) -> bool:
        return self.tokens(now) >= self.capacity

    def __repr__(self) -> str:
        return (f"TokenBucket(capacity={self.capacity:g}, refill_per_s={self.refill_per_s:g},"
                f" tokens={self._tokens:.3g})")


class BucketMap(Generic[K]):
    """Token buckets by key (mailbox id), at most *max_buckets*, least recently used evicted.

    A key seen for the first time gets a full bucket.
    """

    def __init__(self, capacity: float, refill_per_s: float, *, max_buckets: int) -> None:
        if max_buckets < 1:
            raise ValueError("max_buckets must be positive")
        TokenBucket(capacity, refill_per_s)  # validates the parameters
        self.capacity = capacity
        self.refill_per_s = refill_per_s
        self.max_buckets = max_buckets
        self._buckets: OrderedDict[K, TokenBucket] = OrderedDict()
        self.evictions = 0

    def __len__(self) -> int:
        return len(self._buckets)

    def __contains__(self, key: object) -> bool:
        return key in self._buckets

    def get(self, key: K, now: float) -> TokenBucket:
        """The bucket of *key*, created full if absent; marks it most recently used."""
        bucket = self._buckets.get(key)
        if bucket is None:
            bucket = TokenBucket(self.capacity, self.refill_per_s, now=now)
            self._buckets[key] = bucket
            while len(self._buckets) > self.max_buckets:
                self._buckets.popitem(last=False)
                self.evictions += 1
        else:
            self._buckets.move_to_end(key)
        return bucket

    def try_take(self, key: K, now: float, n: float = 1.0) -> float:
        """:meth:`TokenBucket.try_take` on *key*'s bucket."""
        return self.get(key, now).try_take(now, n)

    def prune(self, now: float) -> int:
        """Drop buckets that are full again (they carry no state). Returns how many."""
        full = [k for k, b in self._buckets.items() if b.full(now)]
        for k in full:
            del self._buckets[k]
        return len(full)


@dataclass(frozen=True, slots=True, kw_only=True)
class Refusal:
    """A send refused for lack of credits.

    Attributes:
        scope: ``"connection"`` or ``"mailbox"``: which bucket was empty (for metrics; the
            wire error is the same, so a sender learns nothing about other senders).
        retry_after_s: when the whole send would succeed, at the earliest.
    """

    scope: str
    retry_after_s: float

    @property
    def retry_after_ms(self) -> int:
        return max(1, math.ceil(self.retry_after_s * 1000))


def take_send(
    connection: TokenBucket,
    mailboxes: BucketMap[K],
    recipients: Sequence[K],
    now: float,
) -> Refusal | None:
    """Charge one send: one credit per recipient from the connection and one from each
    recipient mailbox, all or nothing. A send to more recipients than the connection's
    burst waits for a full bucket and leaves it in debt (:meth:`TokenBucket.try_take`).

    A mailbox named twice in *recipients* is charged twice (cheap for an honest client,
    which never does that).

    Returns:
        None when charged; otherwise a :class:`Refusal` and nothing is charged.
    """
    n = float(len(recipients))
    wait = connection.try_take(now, n)  # wider than the burst: from a full bucket, into debt
    if wait > 0:
        return Refusal(scope="connection", retry_after_s=wait)
    taken: list[TokenBucket] = []
    for key in recipients:
        bucket = mailboxes.get(key, now)
        wait = bucket.try_take(now)
        if wait > 0:
            for b in taken:
                b.give_back()
            connection.give_back(n)
            return Refusal(scope="mailbox", retry_after_s=wait)
        taken.append(bucket)
    return None


class Misbehaviour:
    """Counts malformed or oversize frames on one connection.

    ``strike()`` returns True once the count reaches *threshold*: the caller closes the
    connection (protocol error code, then close). Well-formed traffic does not reset the
    count: a client that sends garbage every so often is still broken.
    """

    __slots__ = ("strikes", "threshold")

    def __init__(self, threshold: int) -> None:
        if threshold < 1:
            raise ValueError("threshold must be positive")
        self.threshold = threshold
        self.strikes = 0

    def strike(self) -> bool:
        self.strikes += 1
        return self.strikes >= self.threshold

    @property
    def exceeded(self) -> bool:
        return self.strikes >= self.threshold
