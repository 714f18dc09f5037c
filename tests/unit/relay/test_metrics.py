"""The metrics facade: absent-safe, one registry per relay, and a store observer."""

from __future__ import annotations

import hashlib
import os
from pathlib import Path

import pytest
from prometheus_client.parser import text_string_to_metric_families

from relay import metrics as m
from relay.ports import Recipient
from relay.store_sqlite import SqliteStore, Synchronous


def test_null_metrics_when_disabled_or_not_installed(monkeypatch: pytest.MonkeyPatch) -> None:
    off = m.create_metrics(enabled=False)
    assert isinstance(off, m.NullMetrics) and not off.enabled
    assert off.render() is None and "disabled" in off.reason
    monkeypatch.setattr(m, "prometheus_available", lambda: False)
    missing = m.create_metrics()
    assert isinstance(missing, m.NullMetrics)
    assert "pip install 'pigeon-messenger[metrics]'" in missing.reason
    # Every call is a no-op, never an error.
    missing.frame_in("Send")
    missing.credit_refused("mailbox")
    missing.on_commit(ops=3, seconds=0.001, ok=True)
    missing.add_probe("q", lambda: 1 / 0)


def test_registries_are_per_instance() -> None:
    a, b = m.PrometheusMetrics(), m.PrometheusMetrics()  # same names, no clash
    a.frame_in("Send")
    a.frame_in("Send")
    a.connection_opened()
    b.frame_out("Delivery")
    text_a, text_b = a.render().decode(), b.render().decode()
    assert 'pigeon_relay_frames_in_total{type="Send"} 2.0' in text_a
    assert "frames_in_total{" not in text_b
    assert "pigeon_relay_connections 1.0" in text_a


def test_probes_are_sampled_at_scrape_and_may_fail() -> None:
    p = m.PrometheusMetrics()
    depth = [3]
    p.add_probe("store_writes", lambda: depth[0])
    p.add_probe("broken", lambda: 1 / 0)
    assert 'pigeon_relay_queue_depth{queue="store_writes"} 3.0' in p.render().decode()
    depth[0] = 7
    assert 'pigeon_relay_queue_depth{queue="store_writes"} 7.0' in p.render().decode()


async def test_observes_a_real_store(tmp_path: Path) -> None:
    p = m.PrometheusMetrics()
    store = await SqliteStore.open(tmp_path / "r.db", synchronous=Synchronous.OFF, observer=p)
    try:
        account, mailbox, cap = os.urandom(16), os.urandom(16), os.urandom(32)
        cap_hash = hashlib.sha256(cap).digest()
        await store.create_account(account_id=account, identity_key=b"k" * 129, now_ms=1)
        await store.create_mailbox(account_id=account, mailbox_id=mailbox,
                                   capability_hash=cap_hash, now_ms=1)
        await store.append(recipients=[Recipient(mailbox_id=mailbox, capability_hash=cap_hash)],
                           client_msg_id=os.urandom(16), blob=b"x", now_ms=1, ttl_ms=1000)
    finally:
        await store.close()
    families = {f.name: f for f in text_string_to_metric_families(p.render().decode())}
    batch = {s.name: s.value for s in families["pigeon_relay_commit_batch_size"].samples}
    assert batch["pigeon_relay_commit_batch_size_count"] >= 3
    ops = {s.labels.get("op") for s in families["pigeon_relay_store_seconds"].samples}
    assert {"create_account", "create_mailbox", "append"} <= ops


async def test_bus_stats_are_sampled_at_scrape() -> None:
    from relay.bus import InProcessBus
    from relay.ports import Notification, NotificationKind

    metrics, bus = m.PrometheusMetrics(), InProcessBus()
    metrics.add_bus_stats(lambda: {"published": bus.stats().published, "channels": 3})
    await bus.publish(b"\x01" * 16, Notification(kind=NotificationKind.RESYNC))
    text = metrics.render().decode()
    assert 'pigeon_relay_bus{stat="published"} 1.0' in text
    assert 'pigeon_relay_bus{stat="channels"} 3.0' in text
    metrics.add_bus_stats(lambda: {"x": 1 // 0})  # a broken sampler never breaks a scrape
    assert b"pigeon_relay_frames_in" in metrics.render()
    m.NullMetrics().add_bus_stats(lambda: {})
