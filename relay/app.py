"""The relay's aiohttp application: :func:`create_app` for production and tests.

Theory of operation (STYLE.md section 6):

* ``create_app(config)`` only wires: it sets the plain values (config, metrics, clocks,
  registries) and registers one ``cleanup_ctx`` generator per resource, in dependency
  order. aiohttp runs them at startup (so a relay that prints "listening" has its store
  open) and unwinds them in reverse at shutdown:

  1. identity: relay id and blob-token key (created beside the database on first start);
  2. store: :class:`relay.store_sqlite.SqliteStore` (WAL, group commit), or with
     ``--store-url`` :class:`relay.store_postgres.PostgresStore` (several nodes on one
     database), with the metrics facade as its observer (commit batch sizes, latencies);
  3. blobs: :class:`relay.blobs.FolderBlobStore`;
  4. bus: :class:`relay.bus.InProcessBus`, or with ``--bus-url``
     :class:`relay.bus_redis.RedisBus` (notifications between those nodes);
  5. push: :class:`relay.push.PushNotifier` (its pending wake-ups are cancelled and
     awaited on the way out);
  6. background: the expiry sweeper (messages, retired mailboxes, blobs, idle credit
     buckets), cancelled and awaited on the way out;
  7. node: the frame pipeline's shared state (:func:`relay.node.install_pipeline`).

  ``on_shutdown`` closes every open WebSocket (1001) before any of that unwinds, so the
  store is closed only once nothing can use it.
* Routes: ``GET /health``, ``GET /metrics``, ``GET /openapi.json``, the blob endpoints of
  :mod:`relay.blob_http` and the WebSocket at ``GET /v1/ws`` (:mod:`relay.ws`).
"""

from __future__ import annotations

import asyncio
import contextlib
import dataclasses
import logging
import os
import signal
import time
from collections.abc import AsyncIterator, Callable
from importlib import metadata
from typing import Final

from aiohttp import WSCloseCode, web

from pigeon_crypto.errors import StoreError

from .blob_http import add_blob_routes
from .blobs import FolderBlobStore
from .bus import InProcessBus
from .config import RelayConfig, load_or_create_identity
from .credits import BucketMap
from .metrics import create_metrics
from .node import install_pipeline
from .openapi import openapi_document
from .ports import Bus, Notification, NotificationKind, Store, StoreObserver
from .push import PushNotifier
from .store_sqlite import SqliteStore, Synchronous, WriterMode
from .typedefs import (
    BACKGROUND_TASKS,
    BLOB_STORE,
    BUS,
    CLOCK_MS,
    CONFIG,
    FOLDER_BLOB_STORE,
    IDENTITY,
    MAILBOX_CREDITS,
    METRICS,
    MONOTONIC,
    PUSH,
    STORE,
    WEBSOCKETS,
)
from .ws import websocket_handler

__all__ = [
    "HEALTH_TIMEOUT_S", "create_app", "open_bus", "open_store", "relay_version", "sweep_once",
]

_log = logging.getLogger("pigeon.relay")

HEALTH_TIMEOUT_S: Final = 2.0
"""A store that does not answer a primary-key read within this is reported unavailable."""
_EXPIRE_BATCH: Final = 10_000
_CLOSE_TIMEOUT_S: Final = 10.0
"""On shutdown, how long the WebSockets get to close (all at once) before they are dropped."""
_PROBE_ACCOUNT: Final = bytes(16)


def relay_version() -> str:
    try:
        return metadata.version("pigeon-messenger")
    except metadata.PackageNotFoundError:  # pragma: no cover - running from a checkout
        return "0+unknown"


def _wall_ms() -> int:
    return time.time_ns() // 1_000_000


def create_app(
    config: RelayConfig,
    *,
    store: Store | None = None,
    clock_ms: Callable[[], int] | None = None,
    monotonic: Callable[[], float] | None = None,
) -> web.Application:
    """Build the relay application for *config*.

    Args:
        config: everything the relay needs.
        store: use this store instead of opening the SQLite file (tests: ``MemoryStore``);
            the caller keeps ownership and closes it.
        clock_ms: wall clock in Unix milliseconds (default: the system clock).
        monotonic: monotonic seconds for credits (default: :func:`time.monotonic`).
    """
    app = web.Application()
    version = relay_version()
    app[CONFIG] = config
    app[METRICS] = create_metrics(enabled=config.metrics, version=version)
    app[CLOCK_MS] = clock_ms if clock_ms is not None else _wall_ms
    app[MONOTONIC] = monotonic if monotonic is not None else time.monotonic
    app[WEBSOCKETS] = set()
    app[BACKGROUND_TASKS] = {}
    app[MAILBOX_CREDITS] = BucketMap(
        config.mailbox_credit_capacity, config.mailbox_credit_refill_per_s,
        max_buckets=config.mailbox_credit_buckets,
    )
    app.cleanup_ctx.append(_identity_ctx)
    app.cleanup_ctx.append(_store_ctx if store is None else _given_store_ctx(store))
    app.cleanup_ctx.append(_blobs_ctx)
    app.cleanup_ctx.append(_bus_ctx)
    app.cleanup_ctx.append(_push_ctx)
    app.cleanup_ctx.append(_background_ctx)
    install_pipeline(app)
    app.on_shutdown.append(_close_websockets)

    document = openapi_document(version)

    async def openapi(request: web.Request) -> web.Response:
        return web.json_response(document)

    app.router.add_get("/health", health, name="health", allow_head=False)
    app.router.add_get("/metrics", metrics_handler, name="metrics", allow_head=False)
    app.router.add_get("/openapi.json", openapi, name="openapi", allow_head=False)
    app.router.add_get("/v1/ws", websocket_handler, name="ws", allow_head=False)
    add_blob_routes(app)
    return app


# --------------------------------------------------------------------------- resources


async def _identity_ctx(app: web.Application) -> AsyncIterator[None]:
    app[IDENTITY] = await asyncio.to_thread(load_or_create_identity, app[CONFIG])
    yield


async def open_store(config: RelayConfig, *, observer: StoreObserver | None = None,
                     on_fatal: Callable[[], None] | None = None,
                     create: bool = True) -> Store:
    """The store *config* names: the SQLite file, or the PostgreSQL database of
    ``--store-url`` (imported only then: asyncpg is an extra). With *create* false, a
    PostgreSQL schema without the relay's tables is a ``StoreError`` (the admin CLI checks
    for the SQLite file itself)."""
    if config.store_url is not None:
        from .store_postgres import PostgresStore  # asyncpg: an extra

        return await PostgresStore.open(config.store_url, schema=config.store_schema,
                                        observer=observer, create=create)
    return await SqliteStore.open(
        config.database, synchronous=Synchronous(config.synchronous.value),
        observer=observer, writer=WriterMode(config.store_writer.value), on_fatal=on_fatal,
    )


async def _store_ctx(app: web.Application) -> AsyncIterator[None]:
    store = await open_store(app[CONFIG], observer=app[METRICS], on_fatal=_writer_lost)
    app[STORE] = store
    if isinstance(store, SqliteStore):
        sqlite = store
        app[METRICS].add_probe("store_writes", lambda: sqlite.pending_writes)
    try:
        yield
    finally:
        await store.close()


def _writer_lost() -> None:
    """The store's writer process died (logged CRITICAL by the engine): nothing can be
    persisted any more, so stop the relay (SIGTERM: the usual graceful shutdown; the
    exit status says it failed) instead of answering every send UNAVAILABLE forever."""
    os.kill(os.getpid(), signal.SIGTERM)


def _given_store_ctx(store: Store) -> Callable[[web.Application], AsyncIterator[None]]:
    async def ctx(app: web.Application) -> AsyncIterator[None]:
        app[STORE] = store
        yield

    return ctx


async def _blobs_ctx(app: web.Application) -> AsyncIterator[None]:
    config = app[CONFIG]
    blobs = await FolderBlobStore.create(
        config.blobs, max_blob_size=config.blob_max_size,
        max_chunk_size=config.blob_max_chunk_size,
    )
    app[BLOB_STORE] = blobs
    app[FOLDER_BLOB_STORE] = blobs
    yield


async def open_bus(config: RelayConfig, token_secret: bytes) -> Bus:
    """The bus *config* names: in-process, or Redis pub/sub between the nodes of one
    database (``--bus-url``; redis-py is imported only then), its messages tagged under
    a key derived from the deployment's *token_secret*, which every node shares."""
    if config.bus_url is not None:
        from ._redis_wire import bus_key
        from .bus_redis import RedisBus  # redis-py: an extra

        return await RedisBus.open(config.bus_url, prefix=config.bus_prefix,
                                   key=bus_key(token_secret))
    return InProcessBus()


async def _bus_ctx(app: web.Application) -> AsyncIterator[None]:
    bus = await open_bus(app[CONFIG], app[IDENTITY].token_secret)  # after _identity_ctx
    app[BUS] = bus
    stats = getattr(bus, "stats", None)
    if stats is not None:  # both adapters: a dataclass of counters and levels
        app[METRICS].add_bus_stats(lambda: dataclasses.asdict(stats()))
    try:
        yield
    finally:
        await bus.close()


async def _push_ctx(app: web.Application) -> AsyncIterator[None]:
    config = app[CONFIG]
    push = PushNotifier(
        timeout_s=config.push_timeout_ms / 1000, concurrency=config.push_concurrency,
        allow_insecure=config.push_allow_http, metrics=app[METRICS],
    )
    app[PUSH] = push
    app[METRICS].add_probe("push_pending", lambda: push.pending)
    try:
        yield
    finally:
        await push.close()


async def _background_ctx(app: web.Application) -> AsyncIterator[None]:
    tasks = app[BACKGROUND_TASKS]
    tasks["sweeper"] = asyncio.create_task(_sweeper(app), name="pigeon-relay-sweeper")
    try:
        yield
    finally:
        for task in tasks.values():
            task.cancel()
        for task in tasks.values():
            with contextlib.suppress(asyncio.CancelledError):
                await task
        tasks.clear()


async def _close_websockets(app: web.Application) -> None:
    """Close every WebSocket at once, each within :data:`_CLOSE_TIMEOUT_S`.

    ``ws.close()`` waits for the peer to take the close frame (a drain, with the
    heartbeat already stopped: unbounded) and then for its answer (10 s). One by one,
    a single peer that stopped reading held shutdown forever, and every dead one cost
    10 s; a close cancelled at the deadline drops its connection instead."""
    sockets = app[WEBSOCKETS]
    closes = [asyncio.ensure_future(ws.close(code=WSCloseCode.GOING_AWAY,
                                             message=b"relay shutting down"))
              for ws in list(sockets)]
    if not closes:
        return
    _, late = await asyncio.wait(closes, timeout=_CLOSE_TIMEOUT_S)
    if late:
        _log.warning("%d clients did not take the close frame; dropping them", len(late))
        for task in late:
            task.cancel()
    await asyncio.gather(*closes, return_exceptions=True)


# --------------------------------------------------------------------------- sweeper


async def sweep_once(app: web.Application) -> tuple[int, int]:
    """Delete expired envelopes, retired mailboxes and expired blobs; prune idle credit
    buckets. Returns ``(messages removed, blobs removed)``.

    Retired mailboxes get a CLOSED notification on the bus so live subscriptions drop
    them. Expiry notices stay in the store until the frame pipeline delivered them
    (``MessagesExpired``); a mailbox with a new notice gets RESYNC, so a live subscriber
    reads it now rather than at its next subscription.
    """
    now = app[CLOCK_MS]()
    store, bus, metrics = app[STORE], app[BUS], app[METRICS]
    messages = 0
    while True:
        report = await store.expire(now_ms=now, limit=_EXPIRE_BATCH)
        messages += report.messages_removed
        for mailbox_id in report.retired:
            await bus.publish(mailbox_id, Notification(kind=NotificationKind.CLOSED))
        for notice in report.notices:  # a live subscriber re-reads: MessagesExpired first
            await bus.publish(notice.mailbox_id, Notification(kind=NotificationKind.RESYNC))
        if not report.more:
            break
    blobs = await app[BLOB_STORE].sweep(now_ms=now)
    app[MAILBOX_CREDITS].prune(app[MONOTONIC]())
    metrics.expired("messages", messages)
    metrics.expired("blobs", blobs)
    if messages or blobs:
        _log.info("expiry sweep removed %d envelopes and %d blobs", messages, blobs)
    return messages, blobs


async def _sweeper(app: web.Application) -> None:
    # The first pass waits one interval too: startup stays light, and nothing depends on
    # the sweep for correctness (reads and the blob endpoints ignore expired objects).
    interval = app[CONFIG].sweep_interval_ms / 1000
    while True:
        await asyncio.sleep(interval)
        try:
            await sweep_once(app)
        except StoreError as exc:
            _log.warning("expiry sweep failed: %s", exc)
        except Exception:  # the sweeper must outlive a bug in one pass; it is logged
            _log.exception("expiry sweep crashed")


# --------------------------------------------------------------------------- handlers


async def health(request: web.Request) -> web.Response:
    """``GET /health``: 200 when the store answers a read and the blob folder exists."""
    app = request.app
    try:
        async with asyncio.timeout(HEALTH_TIMEOUT_S):
            await app[STORE].get_account(_PROBE_ACCOUNT)
        store_ok = True
    except (StoreError, TimeoutError) as exc:
        _log.warning("health: store unavailable: %s", type(exc).__name__)
        store_ok = False
    blobs_ok = await asyncio.to_thread(app[CONFIG].blobs.is_dir)
    ok = store_ok and blobs_ok
    body = {
        "status": "ok" if ok else "unavailable",
        "store": "ok" if store_ok else "unavailable",
        "blobs": "ok" if blobs_ok else "unavailable",
    }
    return web.json_response(body, status=200 if ok else 503,
                             headers={"Cache-Control": "no-store"})


async def metrics_handler(request: web.Request) -> web.Response:
    """``GET /metrics``: Prometheus exposition, or 501 when metrics are unavailable."""
    metrics = request.app[METRICS]
    body = metrics.render()
    if body is None:
        reason = getattr(metrics, "reason", "metrics are unavailable")
        return web.Response(status=501, text=f"{reason}\n")
    return web.Response(body=body, headers={"Content-Type": metrics.content_type})
