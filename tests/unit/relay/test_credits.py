"""Token buckets, the per-mailbox bucket map, all-or-nothing send charging, misbehaviour."""

from __future__ import annotations

import pytest

from relay.credits import BucketMap, Misbehaviour, Refusal, TokenBucket, take_send


def test_bucket_starts_full_and_refuses_when_empty() -> None:
    b = TokenBucket(3, 1.0, now=100.0)
    assert [b.try_take(100.0) for _ in range(3)] == [0.0, 0.0, 0.0]
    assert b.try_take(100.0) == pytest.approx(1.0)  # one credit per second
    assert b.try_take(100.0, 2) == pytest.approx(2.0)
    assert b.tokens(100.0) == 0.0  # refusals take nothing


def test_bucket_refills_up_to_capacity() -> None:
    b = TokenBucket(10, 2.0, now=0.0)
    assert b.try_take(0.0, 10) == 0.0
    assert b.tokens(1.5) == pytest.approx(3.0)
    assert b.try_take(1.5, 4) == pytest.approx(0.5)  # one more credit in half a second
    assert b.try_take(2.0, 4) == 0.0
    assert b.tokens(1000.0) == 10.0  # never above capacity


def test_clock_going_backwards_neither_adds_nor_removes() -> None:
    b = TokenBucket(5, 1.0, now=10.0)
    b.try_take(10.0, 5)
    assert b.tokens(5.0) == 0.0
    assert b.tokens(11.0) == pytest.approx(1.0)


def test_bucket_parameters_are_checked() -> None:
    for capacity, refill in ((0, 1), (1, 0), (-1, 1), (float("inf"), 1)):
        with pytest.raises(ValueError):
            TokenBucket(capacity, refill)
    b = TokenBucket(2, 1)
    with pytest.raises(ValueError):
        b.try_take(0.0, -1)


def test_give_back_is_capped() -> None:
    b = TokenBucket(2, 1, now=0.0)
    b.try_take(0.0)
    b.give_back(5)
    assert b.tokens(0.0) == 2.0
    assert "capacity=2" in repr(b)


def test_bucket_map_lru_eviction_and_prune() -> None:
    m: BucketMap[bytes] = BucketMap(2, 1.0, max_buckets=2)
    assert m.try_take(b"a", 0.0) == 0.0
    assert m.try_take(b"b", 0.0) == 0.0
    m.get(b"a", 0.0)  # a is now most recently used
    m.try_take(b"c", 0.0)  # evicts b
    assert b"b" not in m and b"a" in m and b"c" in m
    assert m.evictions == 1 and len(m) == 2
    # An evicted bucket comes back full, which is what an idle bucket would be anyway.
    assert m.get(b"b", 0.0).tokens(0.0) == 2.0
    # Buckets that refilled carry no state: prune drops them, keeps the others.
    m2: BucketMap[bytes] = BucketMap(2, 1.0, max_buckets=10)
    m2.try_take(b"x", 0.0, 2)
    m2.try_take(b"y", 0.0, 1)
    assert m2.prune(1.0) == 1  # y is full again at t=1, x is not
    assert b"x" in m2 and b"y" not in m2
    with pytest.raises(ValueError):
        BucketMap(1, 1, max_buckets=0)


def test_take_send_charges_connection_and_each_mailbox() -> None:
    conn = TokenBucket(10, 1.0, now=0.0)
    boxes: BucketMap[bytes] = BucketMap(2, 0.5, max_buckets=100)
    assert take_send(conn, boxes, [b"m1", b"m2"], 0.0) is None
    assert conn.tokens(0.0) == 8.0
    assert boxes.get(b"m1", 0.0).tokens(0.0) == 1.0


def test_take_send_is_all_or_nothing() -> None:
    conn = TokenBucket(10, 1.0, now=0.0)
    boxes: BucketMap[bytes] = BucketMap(1, 0.5, max_buckets=100)
    boxes.try_take(b"full", 0.0)  # this mailbox is out of credits
    refusal = take_send(conn, boxes, [b"m1", b"full", b"m3"], 0.0)
    assert refusal == Refusal(scope="mailbox", retry_after_s=2.0)
    assert refusal.retry_after_ms == 2000
    # Nothing was charged: not the connection, not the mailbox before the empty one.
    assert conn.tokens(0.0) == 10.0
    assert boxes.get(b"m1", 0.0).tokens(0.0) == 1.0


def test_take_send_connection_refusals() -> None:
    conn = TokenBucket(3, 1.0, now=0.0)
    boxes: BucketMap[bytes] = BucketMap(5, 1.0, max_buckets=100)
    assert take_send(conn, boxes, [b"a", b"b"], 0.0) is None
    refusal = take_send(conn, boxes, [b"a", b"b"], 0.0)
    assert refusal is not None and refusal.scope == "connection"
    assert refusal.retry_after_s == pytest.approx(1.0)
    assert boxes.get(b"a", 0.0).tokens(0.0) == 4.0  # mailboxes untouched by the refusal
    # A fan-out wider than the burst waits for a full bucket, then leaves it in debt.
    small = TokenBucket(3, 1.0, now=0.0)
    small.try_take(0.0, 1)
    wide = take_send(small, boxes, [b"a", b"b", b"c", b"d"], 0.0)
    assert wide == Refusal(scope="connection", retry_after_s=pytest.approx(1.0))
    assert take_send(small, boxes, [b"a", b"b", b"c", b"d"], 1.0) is None
    assert small.tokens(1.0) == -1.0  # in debt: the next send waits for it to refill
    refusal = take_send(small, boxes, [b"a"], 1.5)
    assert refusal is not None and refusal.retry_after_s == pytest.approx(1.5)
    assert take_send(small, boxes, [b"a"], 3.0) is None


def test_retry_after_ms_rounds_up_and_is_positive() -> None:
    assert Refusal(scope="mailbox", retry_after_s=0.0001).retry_after_ms == 1
    assert Refusal(scope="mailbox", retry_after_s=1.0001).retry_after_ms == 1001


def test_misbehaviour_threshold() -> None:
    m = Misbehaviour(3)
    assert [m.strike(), m.strike()] == [False, False]
    assert not m.exceeded
    assert m.strike() is True and m.exceeded
    with pytest.raises(ValueError):
        Misbehaviour(0)
