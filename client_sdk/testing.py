"""A pytest plugin for applications built on the SDK: a throwaway relay and ready clients.

Enable it with ``pytest_plugins = ["client_sdk.testing"]`` in your top-level
``conftest.py`` (or import the fixtures into a test module). It needs pytest-asyncio.

Fixtures:

* ``pigeon_relay``: a real ``pigeon-relay --port 0`` process in a temporary folder
  (``synchronous=OFF``: tests do not need power-loss durability), killed at the end.
  :class:`RelayProcess` has ``url``, ``restart()`` (SIGKILL, then start again on the same
  data: a crash) and ``stop()``. On Linux the relay also gets SIGTERM when the test
  process dies, even by SIGKILL (``PR_SET_PDEATHSIG``): no relay outlives its tests.
* ``pigeon_clients``: an async factory ``await pigeon_clients("alice")`` returning an
  opened and registered :class:`~client_sdk.AsyncClient` on a fresh profile (cheap
  Argon2 parameters), closed at the end of the test. ``await pigeon_clients.connect(a,
  b)`` makes two of them contacts (a invites, b accepts) and waits until both see it.

Example::

    async def test_hello(pigeon_clients):
        alice, bob = await pigeon_clients("alice"), await pigeon_clients("bob")
        await pigeon_clients.connect(alice, bob)
        await alice.send_text(bob.account_id, "hello")
        event = await pigeon_clients.next_event(bob, MessageReceived)
        assert event.text == "hello"
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import queue
import shutil
import subprocess
import sys
import threading
import time
from collections.abc import AsyncIterator, Iterator, Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, TypeVar

import aiohttp
import pytest
import pytest_asyncio

from pigeon_crypto.sealing import Argon2Params

from .client import AsyncClient
from .events import ContactAccepted, Event, InvitationReceived
from .store.profile import Durability

__all__ = [
    "FAST_PARAMS",
    "ClientFactory",
    "RelayProcess",
    "pigeon_clients",
    "pigeon_relay",
    "popen_tied",
    "relay_pipeline_available",
    "start_relay",
]

FAST_PARAMS = Argon2Params(time_cost=1, memory_kib=8, parallelism=1)
"""Argon2id at its cheapest: tests measure behaviour, not the KDF."""
LISTENING = "pigeon-relay listening on "
START_TIMEOUT_S = 20.0

E = TypeVar("E", bound=Event)


_DIE_WITH_PARENT = """\
import os, signal, sys
if sys.platform.startswith("linux"):
    try:
        import ctypes
        ctypes.CDLL(None, use_errno=True).prctl(1, signal.SIGTERM, 0, 0, 0)  # PR_SET_PDEATHSIG
    except (OSError, AttributeError):
        pass
if os.getppid() != int(sys.argv[1]):
    sys.exit(1)  # the parent died before the signal was asked for
os.execvp(sys.argv[2], sys.argv[2:])
"""
"""Run before the relay in its process (then exec'd into it): the kernel sends it
SIGTERM when the thread that started it ends, whatever killed the test process. A
program of its own rather than a ``preexec_fn``, which is unsafe in a process with
threads (the fork's child may deadlock before exec); the same pid runs the relay."""

_spawner = ThreadPoolExecutor(max_workers=1, thread_name_prefix="pigeon-relay-spawner")
"""The one thread that starts relays: the parent-death signal follows the thread that
forked, and this one lives as long as the process (a relay started from a short-lived
thread would otherwise get SIGTERM when that thread ends)."""


def _relay_command() -> list[str]:
    script = shutil.which("pigeon-relay", path=str(Path(sys.executable).parent))
    return [script] if script else [sys.executable, "-m", "relay"]


def _dying_with_us(command: list[str]) -> list[str]:
    """*command*, run on Linux so that it gets SIGTERM when this process dies."""
    if not sys.platform.startswith("linux"):
        return command
    return [sys.executable, "-I", "-S", "-c", _DIE_WITH_PARENT, str(os.getpid()), *command]


def popen_tied(command: list[str], **popen: Any) -> subprocess.Popen[str]:
    """``subprocess.Popen(command, **popen)`` for a process that must not outlive this one
    (on Linux it gets SIGTERM when this process dies, even by SIGKILL); the pid is the
    command's own."""
    def spawn() -> subprocess.Popen[str]:
        return subprocess.Popen(_dying_with_us(command), **popen)  # noqa: S603 - ours

    return _spawner.submit(spawn).result()


@dataclass
class RelayProcess:
    """A running relay. ``url`` is its base URL (``http://127.0.0.1:PORT``)."""

    folder: Path
    args: list[str]
    proc: subprocess.Popen[str] | None = None
    url: str = ""
    _lines: queue.Queue[str | None] = field(default_factory=queue.Queue)

    def start(self) -> str:
        self._lines = queue.Queue()
        env = {k: v for k, v in os.environ.items() if not k.startswith("PIGEON_RELAY_")}
        with open(self.folder / "relay.log", "a", encoding="utf-8") as log:
            self.proc = popen_tied([*_relay_command(), *self.args], cwd=self.folder, env=env,
                                   stdout=subprocess.PIPE, stderr=log, text=True, bufsize=1)
        # The queue is the thread's argument: the previous process's reader may still be
        # draining and must never post its end-of-output into this one's queue.
        threading.Thread(target=self._read, args=(self.proc, self._lines), daemon=True).start()
        deadline = time.monotonic() + START_TIMEOUT_S
        while True:
            try:
                line = self._lines.get(timeout=max(0.0, deadline - time.monotonic()))
            except queue.Empty:
                self.kill()
                raise RuntimeError("pigeon-relay did not start in time") from None
            if line is None:
                self.kill()
                raise RuntimeError(f"pigeon-relay exited: {self.log()[-2000:]}")
            if line.startswith(LISTENING):
                self.url = line[len(LISTENING):].strip()
                return self.url

    @staticmethod
    def _read(proc: subprocess.Popen[str], lines: queue.Queue[str | None]) -> None:
        assert proc.stdout is not None
        for line in proc.stdout:
            lines.put(line)
        lines.put(None)

    def log(self) -> str:
        path = self.folder / "relay.log"
        return path.read_text(encoding="utf-8", errors="replace") if path.exists() else ""

    def kill(self) -> None:
        """SIGKILL: a crash, nothing flushed beyond what the relay committed."""
        if self.proc is not None and self.proc.poll() is None:
            self.proc.kill()
            self.proc.wait(timeout=15)

    def stop(self) -> None:
        """SIGTERM: a graceful shutdown."""
        if self.proc is not None and self.proc.poll() is None:
            self.proc.terminate()
            try:
                self.proc.wait(timeout=15)
            except subprocess.TimeoutExpired:
                self.kill()

    def restart(self, *, port: int | None = None) -> str:
        """Kill and start again on the same data. By default on the same port, so
        clients reconnect to the URL they know."""
        old = self.url
        self.kill()
        if port is None and old:
            port = int(old.rsplit(":", 1)[1])
        if port is not None:
            self.args = _with_port(self.args, port)
        for _ in range(50):
            try:
                return self.start()
            except RuntimeError:
                time.sleep(0.1)  # the port may linger a moment
        return self.start()


def _with_port(args: list[str], port: int) -> list[str]:
    out = list(args)
    i = out.index("--port")
    out[i + 1] = str(port)
    return out


def start_relay(folder: Path, args: Sequence[str] = ()) -> RelayProcess:
    """Start ``pigeon-relay --port 0 --synchronous OFF ARGS`` in *folder*."""
    folder.mkdir(parents=True, exist_ok=True)
    full = ["--port", "0", *args]
    if "--synchronous" not in full:
        full += ["--synchronous", "OFF"]
    relay = RelayProcess(folder=folder, args=full)
    relay.start()
    return relay


async def relay_pipeline_available(url: str, tls_fingerprint: bytes | None = None) -> bool:
    """Whether the relay answers ``Connect`` (False if it closes with 4501: a build
    without the WebSocket frame pipeline)."""
    from protocol.frames import Challenge, Connect, decode_frame

    from ._connection import websocket_url

    ssl: aiohttp.Fingerprint | bool = True
    if tls_fingerprint is not None:
        ssl = aiohttp.Fingerprint(tls_fingerprint)
    async with aiohttp.ClientSession() as session, session.ws_connect(
            websocket_url(url), ssl=ssl) as ws:
        await ws.send_bytes(Connect(request_id=1).encode())
        msg = await ws.receive(timeout=10)
        if msg.type is aiohttp.WSMsgType.BINARY:
            return isinstance(decode_frame(msg.data), Challenge)
        return ws.close_code != 4501


@pytest.fixture
def pigeon_relay(tmp_path_factory: pytest.TempPathFactory) -> Iterator[RelayProcess]:
    """A throwaway relay process (see the module docstring)."""
    relay = start_relay(tmp_path_factory.mktemp("pigeon-relay"))
    try:
        yield relay
    finally:
        relay.kill()


class ClientFactory:
    """``await factory("name")`` → a registered client; see the module docstring."""

    def __init__(self, relay: RelayProcess, folder: Path) -> None:
        self.relay = relay
        self.folder = folder
        self.clients: list[AsyncClient] = []

    async def __call__(self, name: str, *, register: bool = True,
                       display_name: str | None = None, **options: Any) -> AsyncClient:
        options.setdefault("params", FAST_PARAMS)
        options.setdefault("durability", Durability.OFF)
        options.setdefault("reconnect_cap_ms", 1000)
        client = AsyncClient.open(self.folder / f"{name}.pigeon", f"passphrase of {name}",
                                  relay_url=self.relay.url, **options)
        await client.start()
        self.clients.append(client)
        if register:
            await client.register()
            await client.set_profile(display_name or name.capitalize())
        return client

    async def connect(self, inviter: AsyncClient, invitee: AsyncClient,
                      timeout_s: float = 20.0) -> None:
        """Make two clients contacts: *inviter* adds *invitee* by its link, the invitee
        accepts; returns once both have seen the acceptance."""
        accepted = asyncio.ensure_future(self.next_event(inviter, ContactAccepted,
                                                         timeout_s=timeout_s))
        invited = asyncio.ensure_future(self.next_event(invitee, InvitationReceived,
                                                        timeout_s=timeout_s))
        await asyncio.sleep(0)
        await inviter.add_contact_by_link(invitee.contact_link())
        await invited
        await invitee.accept(inviter.account_id)
        await accepted

    @staticmethod
    async def next_event(client: AsyncClient, kind: type[E], *, timeout_s: float = 20.0,
                         **match: Any) -> E:
        """The next event of *kind* (with attributes equal to *match*) from now on
        (:meth:`AsyncClient.wait_for`)."""
        return await client.wait_for(kind, timeout_s=timeout_s, **match)

    async def close(self) -> None:
        for client in self.clients:
            with contextlib.suppress(Exception):
                await client.close()


@pytest_asyncio.fixture
async def pigeon_clients(pigeon_relay: RelayProcess,
                         tmp_path_factory: pytest.TempPathFactory,
                         ) -> AsyncIterator[ClientFactory]:
    """An async factory of registered clients on ``pigeon_relay``."""
    factory = ClientFactory(pigeon_relay, tmp_path_factory.mktemp("pigeon-clients"))
    try:
        yield factory
    finally:
        await factory.close()
