"""Layer 3 of the SDK: :class:`AsyncClient`, which owns the socket, retries and store.

Theory of operation (docs/sdk.md)
    ``AsyncClient.open(path, passphrase, relay_url=...)`` gives a client to use as
    ``async with``. Entering opens (or creates) the profile and, once the profile is
    registered, starts the **connection loop**: connect (aiohttp WebSocket, certificate
    pinned when a fingerprint is given), ``Connect``/``Challenge``, ``Auth`` (or
    ``Register``), then the *post-login sync* (prekeys due for upload or rotation, the
    contact mailbox, ``Subscribe`` to every mailbox we own), then the outbox pump
    resumes over a **second, anonymous connection** (``Connect``/``Challenge`` and no
    ``Auth``: a send needs only the mailbox's capability, so the relay cannot tie the
    account that receives on one socket to what is sent on the other; DESIGN.md,
    "Addresses"; ``anonymous_sends=False`` sends over the authenticated one). The two
    live and die together. When a connection drops, every pending request fails with
    ``ConnectionLost``, ``Disconnected`` is emitted, and the loop reconnects with
    exponential backoff and jitter (``retry_delay_ms``, capped by
    ``reconnect_cap_ms``); ``Reconnected`` follows, and the relay redelivers whatever
    was not acked.

    All protocol logic is in :class:`~client_sdk.core.ClientCore`, which runs on one
    worker thread (a single-thread executor: the store is synchronous, calls stay in
    FIFO order and never block the event loop). Sends are **group-committed**: intents
    that arrive while the worker is busy are encrypted and stored in one transaction.
    Deliveries are processed in batches (one transaction), acked after the commit,
    then their events are emitted; delivery receipts are sent once a burst is done.

    Events reach ``async for event in client.events()`` iterators and handlers
    registered with ``client.on(EventType, handler)`` (sync functions or coroutines),
    in order. Events emitted before the first ``events()`` call are kept (up to
    ``EVENT_BACKLOG``) for it.
"""

from __future__ import annotations

import asyncio
import contextlib
import dataclasses
import functools
import inspect
import logging
import os
import time
from collections import deque
from collections.abc import AsyncIterator, Awaitable, Callable, Sequence
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from types import TracebackType
from typing import Any, Final, Generic, TypeVar

import aiohttp

from pigeon_crypto.rng import Rng, system_rng
from pigeon_crypto.sealing import DEFAULT_PARAMS, Argon2Params
from protocol import limits as L
from protocol.errors import ErrorCode
from protocol.frames import (
    Challenge,
    Connect,
    CreateMailbox,
    Frame,
    MailboxCreated,
    PrekeysLow,
    SetContactMailbox,
    Subscribe,
    Subscribed,
)

from . import _sending, _tuning
from ._client_api import ClientApiMixin
from ._client_background import BackgroundMixin
from ._client_files import FilesMixin
from ._client_group_messages import GroupMessagesMixin
from ._client_groups import GroupsApiMixin
from ._client_relay import RelayApiMixin
from ._connection import RelayConnection, parse_fingerprint, websocket_url
from ._pump import OutboxPump
from .core import SETTING_RELAY, ClientCore, CoreConfig
from .errors import (
    CertificatePinMismatch,
    ClientError,
    ConnectionLost,
    NotRegistered,
    RelayError,
)
from .events import Disconnected, Event, MessageRef, Reconnected
from .frames import auth_frame, register_frame
from .store.profile import Durability, Profile
from .store.records import retry_delay_ms

__all__ = ["EVENT_BACKLOG", "AsyncClient", "EventWaiter"]

_log = logging.getLogger("pigeon.sdk")
_CLOSE_GRACE_S = 10.0  # for background work to stop once cancelled, on close()

EVENT_BACKLOG: Final = 10_000
"""Events kept for the first ``events()`` iterator; older ones are dropped (logged)."""

E = TypeVar("E", bound=Event)
Handler = Callable[[Any], object]


class EventWaiter(Generic[E]):
    """One event to come, listened for since :meth:`AsyncClient.expect` made this."""

    def __init__(self, client: AsyncClient, event_type: type[E],
                 check: Callable[[E], bool] | None, match: dict[str, Any]) -> None:
        known = {f.name for f in dataclasses.fields(event_type)}
        unknown = sorted(set(match) - known)
        if unknown:  # a misspelt keyword would otherwise never match
            raise TypeError(f"{event_type.__name__} has no field {', '.join(unknown)}")
        self._client = client
        self._name = event_type.__name__
        self._check = check
        self._match = match
        self._future: asyncio.Future[E] = asyncio.get_running_loop().create_future()
        self._remove: Callable[[], None] | None = client.on(event_type, self._offer)

    def _offer(self, event: E) -> None:
        future = self._future
        if future.done() or any(getattr(event, k) != v for k, v in self._match.items()):
            return
        try:
            if self._check is not None and not self._check(event):
                return
        except Exception as exc:  # the caller's predicate: its error is the answer
            future.set_exception(exc)
        else:
            future.set_result(event)
        self._stop()

    def _stop(self) -> None:
        remove, self._remove = self._remove, None
        if remove is not None:
            remove()

    async def wait(self, timeout_s: float | None = None) -> E:
        """The event (at once if it came already).

        Raises:
            TimeoutError: none within *timeout_s* (None: as long as it takes); the
                waiter goes on listening, so it can be waited for again.
            ConnectionLost: the client closed.
            Exception: what *check* raised.
        """
        future = self._future
        if future.cancelled() or (not future.done() and self._remove is None):
            raise ClientError("this waiter was cancelled")
        if not future.done():
            closed = asyncio.ensure_future(self._client._closing.wait())
            try:
                either: list[asyncio.Future[Any]] = [future, closed]
                await asyncio.wait(either, timeout=timeout_s,
                                   return_when=asyncio.FIRST_COMPLETED)
            finally:
                closed.cancel()
            if not future.done():
                if self._client._closing.is_set():
                    self.cancel()
                    raise ConnectionLost("the client is closed")
                raise TimeoutError(f"no {self._name} within {timeout_s} s")
        return future.result()

    def cancel(self) -> None:
        """Stop listening (a later :meth:`wait` raises, unless the event came)."""
        self._stop()
        future = self._future
        if not future.done():
            future.cancel()
        elif not future.cancelled():
            future.exception()  # a raising check nobody waited for: retrieved, not logged

    async def __aenter__(self) -> EventWaiter[E]:
        return self

    async def __aexit__(self, *exc: object) -> None:
        self.cancel()


class AsyncClient(GroupsApiMixin, GroupMessagesMixin, FilesMixin, BackgroundMixin,
                  RelayApiMixin, ClientApiMixin):
    """The networked client of one profile (see the module docstring)."""

    def __init__(self, path: str | os.PathLike[str], passphrase: str | bytes, *,
                 relay_url: str | None = None, tls_fingerprint: str | bytes | None = None,
                 create: bool = True, params: Argon2Params = DEFAULT_PARAMS,
                 durability: Durability = Durability.FULL, config: CoreConfig | None = None,
                 reconnect_cap_ms: int = 30_000, rng: Rng = system_rng,
                 tune_interpreter: bool = False, anonymous_sends: bool = True) -> None:
        """Use :meth:`open`. Arguments as there."""
        self.path = Path(path)
        self._passphrase = passphrase
        self._relay_url = relay_url
        self._pin = None if tls_fingerprint is None else parse_fingerprint(tls_fingerprint)
        self._create = create
        self._params = params
        self._durability = durability
        self._config = config
        self._reconnect_cap_ms = reconnect_cap_ms
        self._tune = tune_interpreter
        self._anonymous_sends = anonymous_sends
        self._tuned = False
        self._rng = rng
        self._profile: Profile | None = None
        self._core: ClientCore | None = None
        self._executor: ThreadPoolExecutor | None = None
        self._session: aiohttp.ClientSession | None = None
        self._conn: RelayConnection | None = None
        self._send_conn: RelayConnection | None = None
        """Where sends go: the anonymous connection (or ``_conn`` without one)."""
        self._connected = asyncio.Event()
        self._closing = asyncio.Event()
        self._close_task: asyncio.Task[None] | None = None
        self._executor_stopped = False
        self._loop_task: asyncio.Task[None] | None = None
        self._tasks: set[asyncio.Task[Any]] = set()
        self._fatal: BaseException | None = None
        self._invite: str | None = None
        self._registering = False
        self._challenge: Challenge | None = None
        self._register_waiter: asyncio.Future[None] | None = None
        self._handlers: list[tuple[type[Event], Handler]] = []
        self._subscribers: list[asyncio.Queue[Event | None]] = []
        self._backlog: deque[Event] | None = deque()
        self._backlog_warned = False
        self._rx: deque[Frame] = deque()
        self._rx_wake = asyncio.Event()
        self._tx: list[tuple[_sending.Intent, asyncio.Future[MessageRef | None]]] = []
        self._tx_wake = asyncio.Event()
        self._pump = OutboxPump(self._run_core, self._emit, self._now_ms)
        self.dropped_envelopes = 0
        self._init_groups()

    @classmethod
    def open(cls, path: str | os.PathLike[str], passphrase: str | bytes, *,
             relay_url: str | None = None, tls_fingerprint: str | bytes | None = None,
             create: bool = True, params: Argon2Params = DEFAULT_PARAMS,
             durability: Durability = Durability.FULL, config: CoreConfig | None = None,
             reconnect_cap_ms: int = 30_000, rng: Rng = system_rng,
             tune_interpreter: bool = False, anonymous_sends: bool = True) -> AsyncClient:
        """A client for the profile at *path*; use ``async with`` (or :meth:`start`
        and :meth:`close`).

        Args:
            relay_url: the relay (``https://host:port`` or ``wss://…``; plain ``http``
                and ``ws`` on loopback only). Remembered in the profile at
                registration; required then.
            tls_fingerprint: pin the relay's certificate (SHA-256 of its DER bytes;
                hex, ``AA:BB:…`` or bytes).
            create: create the profile if there is none at *path*.
            params: Argon2id cost for a new profile (tests pass cheap ones).
            tune_interpreter: opt in to process-wide interpreter settings while
                clients run: a 1 ms thread switch interval and rarer full GC
                collections, where the application left the interpreter's defaults
                (``client_sdk._tuning``: the core's worker thread otherwise waits up
                to 5 ms for the event loop after every SQLite call; about 1.5x the
                message throughput of a busy client). Off by default: a library
                leaves the interpreter to the application.
            anonymous_sends: send messages (and typing signals) over a second,
                unauthenticated connection, so the relay never sees which account
                writes to which mailbox (default). False: one connection for all.

        Raises (on entering):
            WrongPassphrase, ProfileCorrupt, ProfileLocked, ProfileTooNew,
            ProfileNotFound (``create=False``).
        """
        return cls(path, passphrase, relay_url=relay_url, tls_fingerprint=tls_fingerprint,
                   create=create, params=params, durability=durability, config=config,
                   reconnect_cap_ms=reconnect_cap_ms, rng=rng,
                   tune_interpreter=tune_interpreter, anonymous_sends=anonymous_sends)

    def __repr__(self) -> str:
        who = self._core.identity.account_id.hex() if self._core and self._core.has_identity \
            else "-"
        state = "connected" if self._connected.is_set() else "offline"
        return f"AsyncClient({str(self.path)!r}, account={who}, {state})"

    # --- lifecycle ------------------------------------------------------------------------

    async def __aenter__(self) -> AsyncClient:
        await self.start()
        return self

    async def __aexit__(self, exc_type: type[BaseException] | None,
                        exc: BaseException | None, tb: TracebackType | None) -> None:
        await self.close()

    async def start(self) -> None:
        """Open the profile; connect if it is registered."""
        self._executor = ThreadPoolExecutor(max_workers=1, thread_name_prefix="pigeon-core")
        loop = asyncio.get_running_loop()

        def open_profile() -> Profile:
            if self.path.exists() or not self._create:
                return Profile.open(self.path, self._passphrase, durability=self._durability,
                                    rng=self._rng)
            return Profile.create(self.path, self._passphrase, params=self._params,
                                  durability=self._durability, rng=self._rng)

        try:
            self._profile = await loop.run_in_executor(self._executor, open_profile)
            self._core = await loop.run_in_executor(
                self._executor, lambda: ClientCore(self._profile.store,  # type: ignore[union-attr]
                                                   rng=self._rng, config=self._config))
        except BaseException:
            self._executor.shutdown(wait=False)
            raise
        self._passphrase = b""  # not kept longer than needed
        if self._tune and not self._tuned:
            _tuning.acquire()
            self._tuned = True
        if self._relay_url is None:
            stored = await self._run(lambda c: c.store.get_setting(SETTING_RELAY))
            self._relay_url = None if stored is None else stored.decode()
        self._spawn(self._receiver())
        self._spawn(self._sender())
        self._spawn(self._pump.run())
        self._spawn(self._maintenance())
        self._spawn(self._group_checks())
        if self._core is not None and self._core.registered:
            self._start_loop()

    async def close(self) -> None:
        """Stop the connection and background work; close the profile. Idempotent:
        every call returns once the client is closed. The closing runs as a task of
        its own, so a caller cancelled meanwhile leaves it going on (a later call waits
        for it), and a closing that was itself cancelled or failed is started again."""
        self._closing.set()  # before any await: nothing starts a connection after this
        task = self._close_task
        if task is None or (task.done() and (task.cancelled() or task.exception() is not None)):
            task = self._close_task = asyncio.ensure_future(self._shut_down())
        await asyncio.shield(task)

    async def _shut_down(self) -> None:
        """close()'s work; every step may run again (after a cancelled or failed run)."""
        if self._loop_task is not None:
            self._loop_task.cancel()
        for task in list(self._tasks):
            task.cancel()
        running = [*self._tasks, *(t for t in [self._loop_task] if t)]
        if running:
            _, late = await asyncio.wait(running, timeout=_CLOSE_GRACE_S)
            if late:
                # A cancellation swallowed on the way (by a library): closing the
                # sockets ends the readers the loop waits on, and it sees _closing.
                _log.warning("background work ignored its cancellation; closing the "
                             "connection under it")
                await self._close_connections()
                await asyncio.wait(late)
            await asyncio.gather(*running, return_exceptions=True)  # all done: collects
        await self._close_connections()
        if self._session is not None:
            await self._session.close()
        for queue in self._subscribers:
            queue.put_nowait(None)
        if self._executor is not None and not self._executor_stopped:
            profile = self._profile
            if profile is not None:
                await asyncio.get_running_loop().run_in_executor(self._executor, profile.close)
            self._executor.shutdown(wait=True)
            self._executor_stopped = True
        if self._tuned:
            self._tuned = False
            _tuning.release()

    async def _close_connections(self) -> None:
        for conn in {self._conn, self._send_conn}:
            if conn is not None:
                await conn.close()

    def _spawn(self, coro: Awaitable[Any]) -> asyncio.Task[Any]:
        task = asyncio.ensure_future(coro)
        self._tasks.add(task)
        task.add_done_callback(self._task_done)
        return task

    def _task_done(self, task: asyncio.Task[Any]) -> None:
        self._tasks.discard(task)
        if not task.cancelled() and task.exception() is not None:
            _log.error("background task failed", exc_info=task.exception())

    @property
    def core(self) -> ClientCore:
        if self._core is None:
            raise RuntimeError("the client is not started (use `async with`)")
        return self._core

    @property
    def connected(self) -> bool:
        return self._connected.is_set()

    async def wait_connected(self, timeout_s: float | None = None) -> None:
        """Wait until the client is connected and authenticated.

        Raises:
            TimeoutError; ConnectionLost once the client is closed; or the error that
            stopped the connection loop for good.
        """
        async with asyncio.timeout(timeout_s):
            while not self._connected.is_set():
                if self._fatal is not None:
                    raise self._fatal
                if self._closing.is_set():  # never connects again (timeout_s may be None)
                    raise ConnectionLost("the client is closed")
                with contextlib.suppress(TimeoutError):
                    async with asyncio.timeout(0.05):
                        await self._connected.wait()

    # --- the worker ---------------------------------------------------------------------

    T = TypeVar("T")

    async def _run(self, fn: Callable[[ClientCore], T]) -> T:
        """Run *fn(core)* on the core's worker thread."""
        core = self.core
        assert self._executor is not None
        return await asyncio.get_running_loop().run_in_executor(self._executor, fn, core)

    async def _run_core(self, name: str, *args: Any, **kwargs: Any) -> object:
        return await self._run(lambda c: getattr(c, name)(*args, **kwargs))

    @staticmethod
    def _now_ms() -> int:
        return time.time_ns() // 1_000_000

    # --- events ---------------------------------------------------------------------------

    def on(self, event_type: type[E], handler: Callable[[E], object]) -> Callable[[], None]:
        """Call *handler* for every event of *event_type* (subclasses included; ``Event``
        for all), in the order the handlers were added; a coroutine handler runs as a
        task of its own, started then. A handler that raises is logged ("event handler
        failed") and the others go on. Only events emitted after this call reach it.
        Returns an unsubscribe."""
        entry = (event_type, handler)
        self._handlers.append(entry)
        return lambda: self._handlers.remove(entry) if entry in self._handlers else None

    def expect(self, event_type: type[E], *, check: Callable[[E], bool] | None = None,
               **match: Any) -> EventWaiter[E]:
        """Start listening now for the next event of *event_type* whose attributes equal
        *match* (and for which *check*, if given, returns True); wait for it later, so
        that an answer to what you do in between cannot slip past::

            async with client.expect(MessageReceived, peer=bob) as reply:
                await client.send_text(bob, "ping")
                got = await reply.wait(timeout_s=10)

        Leaving the ``async with`` (or :meth:`EventWaiter.cancel`) stops listening.

        Raises:
            TypeError: *match* names something *event_type* does not have.
        """
        return EventWaiter(self, event_type, check, match)

    async def wait_for(self, event_type: type[E], *, timeout_s: float | None = None,
                       check: Callable[[E], bool] | None = None, **match: Any) -> E:
        """The next event of *event_type* from now on whose attributes equal *match*
        (and for which *check*, if given, returns True)::

            got = await client.wait_for(MessageReceived, peer=bob, timeout_s=10)

        A bounded wait for one event: unlike ``asyncio.wait_for`` around the
        :meth:`events` iterator (whose timeout closes the iterator), nothing is left
        closed when it times out. Only events emitted after the call count: to wait for
        the answer to something you do, use :meth:`expect` before doing it.

        Raises:
            TypeError: *match* names something *event_type* does not have.
            TimeoutError: none came within *timeout_s* (None: wait as long as it takes).
            ConnectionLost: the client closed meanwhile.
        """
        async with self.expect(event_type, check=check, **match) as waiter:
            return await waiter.wait(timeout_s)

    async def events(self) -> AsyncIterator[Event]:
        """Every event from now on (the first iterator also gets those emitted since the
        client started). Ends when the client closes."""
        if self._closing.is_set():  # close() already ended the iterators
            return
        queue: asyncio.Queue[Event | None] = asyncio.Queue()
        if self._backlog is not None:
            for old in self._backlog:
                queue.put_nowait(old)
            self._backlog = None
        self._subscribers.append(queue)
        try:
            while True:
                event = await queue.get()
                if event is None:
                    return
                yield event
        finally:
            self._subscribers.remove(queue)

    def _emit(self, events: Sequence[Event]) -> None:
        for event in events:
            for event_type, handler in list(self._handlers):
                if isinstance(event, event_type):
                    try:
                        result = handler(event)
                        if inspect.isawaitable(result):
                            self._spawn(_handled(result))
                    except Exception:
                        _log.exception("event handler failed")
            if self._backlog is not None:
                if len(self._backlog) >= EVENT_BACKLOG:
                    self._backlog.popleft()
                    if not self._backlog_warned:
                        self._backlog_warned = True
                        _log.warning("no events() iterator yet and %d events kept: dropping "
                                     "the oldest ones", EVENT_BACKLOG)
                self._backlog.append(event)
            for queue in self._subscribers:
                queue.put_nowait(event)

    # --- connection loop ------------------------------------------------------------------

    def _start_loop(self) -> None:
        if self._loop_task is None or self._loop_task.done():
            self._fatal = None
            self._loop_task = asyncio.ensure_future(self._connection_loop())

    async def _connection_loop(self) -> None:
        if self._relay_url is None:
            raise ClientError("no relay URL: pass relay_url to AsyncClient.open")
        url = websocket_url(self._relay_url)
        ssl: aiohttp.Fingerprint | bool = True
        if self._pin is not None:
            ssl = aiohttp.Fingerprint(self._pin)
        self._session = aiohttp.ClientSession()
        session = self._session

        async def open_ws(stack: contextlib.AsyncExitStack) -> aiohttp.ClientWebSocketResponse:
            return await stack.enter_async_context(session.ws_connect(
                url, ssl=ssl if url.startswith("wss") else False,
                max_msg_size=L.MAX_FRAME_SIZE, heartbeat=30.0, receive_timeout=None))

        failures = 0
        while not self._closing.is_set():
            try:
                async with contextlib.AsyncExitStack() as stack:
                    conn = RelayConnection(await open_ws(stack), self._on_frame)
                    readers = [asyncio.ensure_future(conn.read_loop())]
                    send_conn = conn
                    try:
                        await self._login(conn)
                        await self._after_login(conn)
                        if self._anonymous_sends:
                            send_conn = RelayConnection(await open_ws(stack), self._on_frame)
                            readers.append(asyncio.ensure_future(send_conn.read_loop()))
                            hello = await send_conn.request(lambda rid: Connect(request_id=rid))
                            assert isinstance(hello, Challenge)  # and no Auth: anonymous
                        self._conn, self._send_conn = conn, send_conn
                        self._connected.set()
                        stored = await self._run(lambda c: c.due_outbox(now_ms=2**62))
                        self._pump.attach(send_conn, stored)
                        self._emit([Reconnected(attempt=failures)])
                        self._resume_transfers()
                        failures = 0
                        await asyncio.wait(readers, return_when=asyncio.FIRST_COMPLETED)
                    finally:
                        for reader in readers:
                            reader.cancel()
                        self._connected.clear()
                        self._conn = self._send_conn = None
                        self._pump.detach()
                    closed = conn if conn.closed else send_conn
                    reason = f"closed with code {closed.close_code}"
            except aiohttp.ServerFingerprintMismatch:
                self._fail(CertificatePinMismatch())
                return
            except RelayError as exc:
                if exc.code in (ErrorCode.AUTH_FAILED, ErrorCode.UNKNOWN_ACCOUNT,
                                ErrorCode.INVITE_REQUIRED, ErrorCode.INVITE_INVALID,
                                ErrorCode.ACCOUNT_EXISTS):
                    self._fail(exc)
                    return
                reason = str(exc)
            except ConnectionLost as exc:
                if exc.close_code == 4501 or self._registration_waits():
                    self._fail(exc)
                    return
                reason = str(exc)
            except (aiohttp.ClientError, OSError, TimeoutError) as exc:
                if self._registration_waits():
                    self._fail(ConnectionLost(f"cannot reach the relay: {exc}"))
                    return
                reason = f"{type(exc).__name__}: {exc}"
            self._emit([Disconnected(reason=reason)])
            failures += 1
            delay = min(retry_delay_ms(failures, self._rng), self._reconnect_cap_ms)
            with contextlib.suppress(TimeoutError):
                async with asyncio.timeout(delay / 1000):
                    await self._closing.wait()

    def _registration_waits(self) -> bool:
        """A ``register()`` call waits for this attempt (its failure is final)."""
        return self._register_waiter is not None and not self._register_waiter.done()

    def _fail(self, exc: BaseException) -> None:
        self._fatal = exc
        if self._register_waiter is not None and not self._register_waiter.done():
            self._register_waiter.set_exception(exc)

    async def _login(self, conn: RelayConnection) -> None:
        challenge = await conn.request(lambda rid: Connect(request_id=rid))
        assert isinstance(challenge, Challenge)
        core = self.core
        if self._registering or not core.registered:
            await conn.request(lambda rid: register_frame(core.identity, challenge, rid,
                                                          self._invite))
            relay_url = self._relay_url or ""
            await self._run(lambda c: c.mark_registered(relay_url))
            self._registering = False
            self._invite = None
        else:
            await conn.request(lambda rid: auth_frame(core.identity, challenge, rid))
        self._challenge = challenge

    async def _after_login(self, conn: RelayConnection, notice: PrekeysLow | None = None,
                           ) -> None:
        now = self._now_ms()
        pieces = await self._run(lambda c: c.prekeys_to_upload(now_ms=now, notice=notice))
        for piece in pieces:
            await conn.request(functools.partial(ClientCore.upload_frame, piece))
            await self._run(functools.partial(_uploaded, piece=piece, now_ms=self._now_ms()))
        if notice is not None:
            return
        if self.core.identity_announcement_due():  # a rotation whose notices a crash lost
            self._pump.add(await self._run(lambda c: c.announce_identity(now_ms=now)))
        # Contacts a rotation skipped (blocked, unacknowledged, no session) that we may
        # write to now.
        self._pump.add(await self._run(lambda c: c.announce_identity_to_waiting(now_ms=now)))
        if self.core.contact_mailbox is None:
            capability, digest = await self._run(lambda c: c.new_capability())
            created = await conn.request(lambda rid: CreateMailbox(request_id=rid,
                                                                   capability_hash=digest))
            assert isinstance(created, MailboxCreated)
            await conn.request(lambda rid: SetContactMailbox(
                request_id=rid, mailbox_id=created.mailbox_id, capability=capability))
            await self._run(lambda c: c.set_contact_mailbox(created.mailbox_id, capability))
        await self._subscribe(conn, self.core.subscriptions())
        if self._register_waiter is not None and not self._register_waiter.done():
            self._register_waiter.set_result(None)

    async def _subscribe(self, conn: RelayConnection, mailbox_ids: Sequence[bytes]) -> None:
        for i in range(0, len(mailbox_ids), L.MAX_MAILBOXES_PER_SUBSCRIBE):
            chunk = tuple(mailbox_ids[i:i + L.MAX_MAILBOXES_PER_SUBSCRIBE])
            answer = await conn.request(functools.partial(_subscribe_frame, chunk))
            assert isinstance(answer, Subscribed)
            if answer.rejected:
                await self._run(functools.partial(_drop, rejected=answer.rejected,
                                                  now_ms=self._now_ms()))

    async def _connection(self, timeout_s: float = 30.0, *,
                          anonymous: bool = False) -> RelayConnection:
        """The live connection, waiting for one (raises the loop's fatal error);
        *anonymous*: the one sends go over (the authenticated one without it)."""
        if self._core is None or not self.core.registered:
            raise NotRegistered()
        await self.wait_connected(timeout_s)
        conn = self._send_conn if anonymous else self._conn
        if conn is None:
            raise ConnectionLost("not connected")
        return conn

    async def _request(self, build: Callable[[int], Any], timeout_s: float = 30.0, *,
                       anonymous: bool = False) -> Frame:
        """A request on the authenticated connection, or with *anonymous* on the
        anonymous one (lookups and downloads, which the relay allows there, so it
        cannot tie whose bundle or file is fetched to the account fetching it)."""
        conn = await self._connection(timeout_s, anonymous=anonymous)
        return await conn.request(build)

    # --- account -----------------------------------------------------------------------------

    async def register(self, *, invite_code: str | None = None, relay_url: str | None = None,
                       timeout_s: float = 60.0) -> bytes:
        """Create the account on the relay (or confirm it: registering again is
        harmless), upload prekeys, create and publish the contact mailbox, subscribe.
        Returns the account id.

        Args:
            relay_url: for a profile with no account yet, the relay to create it on
                (instead of the one given to ``AsyncClient.open``, if any); it is then
                remembered in the profile as the relay given to ``open`` would be.

        Raises:
            ClientError: the profile names no relay (pass ``relay_url`` here or to
                ``AsyncClient.open``), or it has an account on another relay than
                *relay_url*.
            RelayError: e.g. ``INVITE_REQUIRED``/``INVITE_INVALID``.
            ConnectionLost: the relay could not be reached (or closed the connection,
                e.g. with 4501 if it has no frame pipeline).
            TimeoutError: registration did not finish within *timeout_s*.
        """
        if relay_url is not None and relay_url != self._relay_url:
            if self.core.registered:
                raise ClientError("this profile has an account on another relay")
            self._relay_url = relay_url
        if self._relay_url is None:  # said now, not as a timeout after *timeout_s*
            raise ClientError("no relay URL: pass relay_url to register or "
                              "AsyncClient.open")
        await self._run(lambda c: c.create_identity())
        if self.core.registered and self.connected:
            return self.core.account_id
        self._invite = invite_code
        self._registering = True
        self._register_waiter = asyncio.get_running_loop().create_future()
        try:
            old = self._loop_task
            if old is not None and not old.done():
                old.cancel()
                # asyncio.wait, not `await old` under suppress(BaseException): that also
                # swallowed a cancellation of this call, which then ran on (and started
                # a loop behind close()'s back).
                await asyncio.wait([old])
                if not old.cancelled():
                    old.exception()  # retrieved: the loop is replaced below
            if self._closing.is_set():
                raise ConnectionLost("the client is closed")
            self._start_loop()
            async with asyncio.timeout(timeout_s):
                await self._register_waiter
        finally:
            self._register_waiter = None
        return self.core.account_id

async def _handled(awaitable: Awaitable[object]) -> None:
    """An async event handler's run: its failure is logged as a sync handler's is."""
    try:
        await awaitable
    except Exception:
        _log.exception("event handler failed")


# Worker-side helpers (module functions, so that the calls type-check without lambdas).


def _uploaded(core: ClientCore, *, piece: Any, now_ms: int) -> None:
    core.prekeys_uploaded(piece, now_ms=now_ms)


def _subscribe_frame(mailbox_ids: tuple[bytes, ...], request_id: int) -> Subscribe:
    return Subscribe(request_id=request_id, mailbox_ids=mailbox_ids)


def _drop(core: ClientCore, *, rejected: Sequence[bytes], now_ms: int) -> None:
    core.drop_mailboxes(rejected, now_ms=now_ms)


