"""Content-free push: wake a device whose mailbox received an envelope while it was offline.

Theory of operation (protocol ``RegisterPush``; docs/protocol.md):

* A mailbox owner may register a push URL (Web Push, UnifiedPush, ntfy...). When an
  envelope is committed in such a mailbox and no connection is subscribed to it, the relay
  calls :meth:`PushNotifier.wake` with the URL. The notifier POSTs an **empty body**: no
  mailbox id, no sender, no count, no time, no per-registration token. The URL itself is
  the device's secret address at its push service; the device answers any wake-up by
  connecting and fetching all its mailboxes, so it needs nothing else. Headers are fixed
  (``TTL`` for Web Push services, a generic ``User-Agent``), so every wake-up from every
  relay looks the same.
* Rate: at most one wake-up per URL per ``min_interval_s``; a wake requested inside the
  interval is deferred to its end (one trailing wake-up covers any number of messages), so
  a burst of envelopes costs one POST and the last one is never lost. A wake requested
  while the POST is in flight (sent, not waiting for a concurrency slot: the device may
  have looked already) gets one more POST after it, at the interval's end, unless the
  push service said the URL is gone.
* Bounded: at most ``concurrency`` POSTs in flight and ``max_pending`` scheduled; beyond
  that a wake-up is dropped and counted. Each POST has a total timeout, follows no
  redirects, and never raises into the caller: failures are counted (``failed``) and
  logged without the URL (it is a secret capability at the push service).
* A 404 or 410 answer means the registration is gone at the push service: ``on_gone(url)``
  is called so the relay can clear it.

:func:`validate_push_url` is what ``RegisterPush`` should apply: ``https`` only, no
credentials in the URL, and (unless ``allow_insecure``) no loopback, private or link-local
IP literal, so clients cannot aim the relay at its own network. A DNS name that resolves
to a private address is not caught here; run the relay where outbound POSTs cannot reach
internal services if that matters.
"""

from __future__ import annotations

import asyncio
import contextlib
import ipaddress
import logging
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Final
from urllib.parse import urlsplit

import aiohttp

from .metrics import Metrics, NullMetrics

__all__ = [
    "MAX_PUSH_URL_SIZE",
    "WAKE_BODY",
    "WAKE_HEADERS",
    "PushNotifier",
    "PushStats",
    "validate_push_url",
]

_log = logging.getLogger("pigeon.relay.push")

MAX_PUSH_URL_SIZE: Final = 512
"""Protocol ``MAX_PUSH_URL_SIZE``."""
WAKE_BODY: Final = b""
"""The whole content of a wake-up: nothing."""
WAKE_HEADERS: Final = {
    "TTL": "86400",  # Web Push (RFC 8030): keep it a day; envelopes wait 30 days anyway
    "User-Agent": "pigeon-relay",
    "Content-Type": "application/octet-stream",
}


def validate_push_url(url: str, *, allow_insecure: bool = False) -> str:
    """Return *url* if the relay may POST wake-ups to it.

    Args:
        url: the URL a client registered.
        allow_insecure: also accept ``http://`` and loopback/private IP literals (tests,
            LAN deployments; config ``push_allow_http``).

    Raises:
        ValueError: with a reason that never repeats the URL.
    """
    if len(url.encode("utf-8")) > MAX_PUSH_URL_SIZE:
        raise ValueError("push URL too long")
    try:
        parts = urlsplit(url)
        host = parts.hostname
        parts.port  # noqa: B018 - raises ValueError for a malformed port
    except ValueError:
        raise ValueError("malformed push URL") from None
    schemes = ("https", "http") if allow_insecure else ("https",)
    if parts.scheme not in schemes:
        raise ValueError("push URL must use https")
    if not host:
        raise ValueError("push URL has no host")
    if parts.username is not None or parts.password is not None:
        raise ValueError("push URL must not carry credentials")
    if not allow_insecure:
        try:
            ip = ipaddress.ip_address(host)
        except ValueError:
            ip = None
        if ip is not None and not ip.is_global:
            raise ValueError("push URL must not name a private or loopback address")
        if host.lower() == "localhost" or host.lower().endswith(".localhost"):
            raise ValueError("push URL must not name a private or loopback address")
    return url


@dataclass(slots=True)
class PushStats:
    sent: int = 0
    failed: int = 0
    gone: int = 0
    coalesced: int = 0
    dropped: int = 0


@dataclass(slots=True)
class _UrlState:
    last_sent: float = float("-inf")
    task: asyncio.Task[None] | None = field(default=None, repr=False)
    posting: bool = False
    """The task's POST has started: a wake-up now may come after what it told."""
    again: bool = False
    """A wake-up came while the POST was in flight: send one more after it."""


class PushNotifier:
    """Sends content-free wake-ups. Create it inside a running loop; :meth:`close` it.

    Args:
        session: an aiohttp session to use (not closed by :meth:`close`); by default the
            notifier makes its own.
        timeout_s: total time for one POST.
        concurrency: POSTs in flight at once.
        min_interval_s: at most one wake-up per URL per interval.
        max_pending: wake-ups scheduled (waiting or in flight) beyond which new ones drop.
        allow_insecure: see :func:`validate_push_url`.
        metrics: receives ``push(result)``.
        on_gone: called with a URL the push service answered 404/410 for.
        clock: monotonic seconds (tests may pass a fake one).
    """

    def __init__(
        self,
        *,
        session: aiohttp.ClientSession | None = None,
        timeout_s: float = 5.0,
        concurrency: int = 16,
        min_interval_s: float = 2.0,
        max_pending: int = 10_000,
        allow_insecure: bool = False,
        metrics: Metrics | None = None,
        on_gone: Callable[[str], None] | None = None,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        if concurrency < 1 or max_pending < 1 or timeout_s <= 0 or min_interval_s < 0:
            raise ValueError("push notifier limits must be positive")
        self._own_session = session is None
        self._session = session
        self._timeout = aiohttp.ClientTimeout(total=timeout_s)
        self._sem = asyncio.Semaphore(concurrency)
        self._interval = min_interval_s
        self._max_pending = max_pending
        self._allow_insecure = allow_insecure
        self._metrics = metrics if metrics is not None else NullMetrics()
        self._on_gone = on_gone
        self._clock = clock
        self._urls: dict[str, _UrlState] = {}
        self._tasks: set[asyncio.Task[None]] = set()
        self._closed = False
        self.stats = PushStats()

    @property
    def pending(self) -> int:
        """Wake-ups scheduled or in flight."""
        return len(self._tasks)

    def _count(self, result: str) -> None:
        setattr(self.stats, result, getattr(self.stats, result) + 1)
        self._metrics.push(result)

    def wake(self, url: str) -> bool:
        """Schedule a wake-up for *url* (synchronous, never raises, never blocks).

        Returns:
            True if a new POST was scheduled; False if one already pending covers it
            (coalesced), or it was dropped (closed, invalid URL, too many pending).
        """
        if self._closed:
            return False
        try:
            validate_push_url(url, allow_insecure=self._allow_insecure)
        except ValueError as exc:
            _log.warning("push wake-up dropped: %s", exc)
            self._count("dropped")
            return False
        state = self._urls.get(url)
        if state is not None and state.task is not None:
            # Waiting to post: that POST covers this. Posting: the device may already
            # have looked and found nothing new; one more follows (after the interval).
            if state.posting:
                state.again = True
            self._count("coalesced")
            return False
        if len(self._tasks) >= self._max_pending:
            self._count("dropped")
            return False
        if state is None:
            state = self._urls[url] = _UrlState()
        delay = max(0.0, state.last_sent + self._interval - self._clock())
        task = asyncio.get_running_loop().create_task(self._run(url, state, delay))
        state.task = task
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)
        return True

    async def _run(self, url: str, state: _UrlState, delay: float) -> None:
        try:
            while True:
                if delay > 0:
                    await asyncio.sleep(delay)
                gone = await self._post(url, state) == "gone"
                if not state.again or gone or self._closed:
                    break
                state.again = False
                delay = max(0.0, state.last_sent + self._interval - self._clock())
        finally:
            state.task = None
            state.again = False
            self._forget_idle()

    def _forget_idle(self) -> None:
        """Drop per-URL state once its interval has passed (bounded memory)."""
        now = self._clock()
        idle = [u for u, s in self._urls.items()
                if s.task is None and s.last_sent + self._interval <= now]
        for u in idle:
            del self._urls[u]

    async def send_now(self, url: str) -> bool:
        """POST one wake-up to *url* now (bounded by the concurrency limit).

        Returns:
            True on a 2xx answer. Never raises (except CancelledError on shutdown).
        """
        return await self._post(url, None) == "sent"

    async def _post(self, url: str, state: _UrlState | None) -> str:
        """:meth:`send_now`; *state* is marked posting from when the POST leaves (not
        while it waits for a concurrency slot). Returns its count: sent, failed, gone."""
        if self._session is None:
            self._session = aiohttp.ClientSession()
        async with self._sem:
            if state is not None:
                state.last_sent = self._clock()
                state.posting = True
            try:
                async with self._session.post(
                    url, data=WAKE_BODY, headers=WAKE_HEADERS, timeout=self._timeout,
                    allow_redirects=False,
                ) as resp:
                    status = resp.status
            except (aiohttp.ClientError, TimeoutError, OSError, ValueError) as exc:
                _log.info("push wake-up failed: %s", type(exc).__name__)
                self._count("failed")
                return "failed"
            finally:
                if state is not None:
                    state.posting = False
        if 200 <= status < 300:
            self._count("sent")
            return "sent"
        if status in (404, 410):
            self._count("gone")
            if self._on_gone is not None:
                try:
                    self._on_gone(url)
                except Exception:
                    _log.exception("push on_gone callback failed")
            return "gone"
        _log.info("push wake-up refused with HTTP %d", status)
        self._count("failed")
        return "failed"

    async def drain(self) -> None:
        """Wait until every scheduled wake-up is done (tests, orderly shutdown)."""
        while self._tasks:
            await asyncio.gather(*list(self._tasks), return_exceptions=True)

    async def close(self) -> None:
        """Cancel pending wake-ups, wait for them, and close the notifier's own session."""
        self._closed = True
        tasks = list(self._tasks)
        for t in tasks:
            t.cancel()
        for t in tasks:
            with contextlib.suppress(asyncio.CancelledError):
                await t
        if self._own_session and self._session is not None:
            await self._session.close()
        self._session = None
