"""Typed keys of everything the relay keeps on its ``web.Application`` (STYLE.md section 6).

Resources are put in place by the ``cleanup_ctx`` generators of :mod:`relay.app`, in the
order of this file; handlers read them with ``request.app[KEY]``.
"""

from __future__ import annotations

import asyncio
from collections.abc import Callable
from typing import TYPE_CHECKING, Final

from aiohttp import web

from .blobs import FolderBlobStore
from .config import RelayConfig, RelayIdentity
from .credits import BucketMap
from .metrics import Metrics
from .ports import BlobStore, Bus, Store
from .push import PushNotifier

if TYPE_CHECKING:
    from .node import Node

__all__ = [
    "BACKGROUND_TASKS",
    "BLOB_STORE",
    "BUS",
    "CLOCK_MS",
    "CONFIG",
    "FOLDER_BLOB_STORE",
    "IDENTITY",
    "MAILBOX_CREDITS",
    "METRICS",
    "MONOTONIC",
    "NODE",
    "PUSH",
    "STORE",
    "WEBSOCKETS",
]

CONFIG: Final = web.AppKey("config", RelayConfig)
IDENTITY: Final = web.AppKey("identity", RelayIdentity)
"""Relay id and blob-token key (loaded or created at startup)."""
METRICS: Final = web.AppKey("metrics", Metrics)
CLOCK_MS: Final[web.AppKey[Callable[[], int]]] = web.AppKey("clock_ms")
"""Wall clock, Unix milliseconds (expiries, tokens). Tests may replace it."""
MONOTONIC: Final[web.AppKey[Callable[[], float]]] = web.AppKey("monotonic")
"""Monotonic seconds (credits, timeouts)."""
STORE: Final = web.AppKey("store", Store)
BUS: Final = web.AppKey("bus", Bus)
BLOB_STORE: Final = web.AppKey("blob_store", BlobStore)
FOLDER_BLOB_STORE: Final = web.AppKey("folder_blob_store", FolderBlobStore)
"""The same object as BLOB_STORE when the folder adapter is used (limits, admin)."""
PUSH: Final = web.AppKey("push", PushNotifier)
MAILBOX_CREDITS: Final = web.AppKey("mailbox_credits", BucketMap[bytes])
"""Per-mailbox send credits, shared by all connections of this node."""
WEBSOCKETS: Final = web.AppKey("websockets", set[web.WebSocketResponse])
"""Open WebSocket connections; closed with GOING_AWAY on shutdown."""
BACKGROUND_TASKS: Final = web.AppKey("background_tasks", dict[str, asyncio.Task[None]])
"""Named long-running tasks (expiry sweeps...), cancelled and awaited on shutdown."""
NODE: Final[web.AppKey[Node]] = web.AppKey("node")
"""The frame pipeline's per-process state (:class:`relay.node.Node`), set at startup."""
