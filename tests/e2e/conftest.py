"""End-to-end fixtures: the real ``pigeon-relay`` process on 127.0.0.1.

``relay_factory(args=..., env=..., cwd=...)`` starts ``pigeon-relay --port 0`` (the console
script of this virtualenv, else ``python -m relay``) in a temporary folder, waits for its
``pigeon-relay listening on URL`` line and returns a :class:`RelayProcess`. ``relay`` is
one such process with default settings. Every process is killed at the end of the test;
``RelayProcess.restart()`` kills one with SIGKILL and starts it again on the same data.
"""

from __future__ import annotations

import os
import queue
import shutil
import signal
import subprocess
import sys
import threading
import time
from collections.abc import Callable, Iterator, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path

import pytest

from client_sdk.testing import popen_tied

LISTENING = "pigeon-relay listening on "
START_TIMEOUT_S = 20.0
STOP_TIMEOUT_S = 15.0


def relay_command() -> list[str]:
    """The installed console script, or the module as a fallback."""
    script = shutil.which("pigeon-relay", path=str(Path(sys.executable).parent))
    return [script] if script else [sys.executable, "-m", "relay"]


def clean_env(extra: Mapping[str, str] | None = None) -> dict[str, str]:
    """The environment without inherited PIGEON_RELAY_* settings, plus *extra*."""
    env = {k: v for k, v in os.environ.items() if not k.startswith("PIGEON_RELAY_")}
    env.update(extra or {})
    return env


def run_cli(args: Sequence[str], *, cwd: Path | None = None,
            env: Mapping[str, str] | None = None) -> subprocess.CompletedProcess[str]:
    """Run ``pigeon-relay ARGS`` to completion (admin, fingerprint, failing starts)."""
    return subprocess.run([*relay_command(), *args], cwd=cwd, env=clean_env(env),
                          capture_output=True, text=True, timeout=30, check=False)


@dataclass
class RelayProcess:
    """One running relay. ``url`` is its base URL (``http://127.0.0.1:PORT``)."""

    cwd: Path
    args: list[str]
    env: dict[str, str]
    log_path: Path
    proc: subprocess.Popen[str] | None = None
    url: str = ""
    stdout_lines: list[str] = field(default_factory=list)
    _lines: queue.Queue[str | None] = field(default_factory=queue.Queue)

    @property
    def port(self) -> int:
        return int(self.url.rsplit(":", 1)[1])

    @property
    def data_dir(self) -> Path:
        return self.cwd

    def start(self) -> str:
        """Start the process and wait for the listening line; return the base URL."""
        assert self.proc is None or self.proc.poll() is not None, "already running"
        self._lines = queue.Queue()
        log = open(self.log_path, "a", encoding="utf-8")  # noqa: SIM115 - owned by the process
        try:
            self.proc = popen_tied(  # dies with the test process, even a SIGKILLed one
                [*relay_command(), *self.args], cwd=self.cwd, env=self.env,
                stdout=subprocess.PIPE, stderr=log, text=True, bufsize=1,
            )
        finally:
            log.close()
        # The queue goes to the thread as an argument: the previous process's pump may
        # still be draining and must never post its end-of-output into this queue.
        threading.Thread(target=self._pump, args=(self.proc, self._lines), daemon=True).start()
        deadline = time.monotonic() + START_TIMEOUT_S
        while True:
            try:
                line = self._lines.get(timeout=max(0.0, deadline - time.monotonic()))
            except queue.Empty:
                self.kill()
                raise RuntimeError(f"relay did not start in time:\n{self.log()}") from None
            if line is None:
                raise RuntimeError(
                    f"relay exited with {self.proc.wait(timeout=STOP_TIMEOUT_S)}:\n{self.log()}")
            if line.startswith(LISTENING):
                self.url = line[len(LISTENING):].strip()
                return self.url

    def _pump(self, proc: subprocess.Popen[str], lines: queue.Queue[str | None]) -> None:
        assert proc.stdout is not None
        for line in proc.stdout:
            self.stdout_lines.append(line)
            lines.put(line)
        lines.put(None)

    def log(self) -> str:
        """Everything the relay wrote on stderr so far."""
        return self.log_path.read_text(encoding="utf-8", errors="replace")

    def kill(self) -> None:
        """SIGKILL (no shutdown at all: the crash case)."""
        if self.proc is not None and self.proc.poll() is None:
            self.proc.kill()
            self.proc.wait(timeout=STOP_TIMEOUT_S)

    def signal(self, sig: signal.Signals, *, timeout: float = STOP_TIMEOUT_S) -> int:
        """Send *sig* and wait for the exit status."""
        assert self.proc is not None
        self.proc.send_signal(sig)
        return self.proc.wait(timeout=timeout)

    def restart(self) -> str:
        """Kill -9, then start again on the same data folder (new port)."""
        self.kill()
        return self.start()


RelayFactory = Callable[..., RelayProcess]


def launch_relay(
    folder: Path,
    args: Sequence[str] = (),
    env: Mapping[str, str] | None = None,
    *,
    port0: bool = True,
    synchronous_off: bool = True,
) -> RelayProcess:
    """Start a relay with working directory *folder*; the caller must ``kill()`` it."""
    full_args = list(args)
    if port0:
        full_args = ["--port", "0", *full_args]
    if synchronous_off and "--synchronous" not in full_args:
        # Tests do not have to survive power loss; skip the fsync cost.
        full_args += ["--synchronous", "OFF"]
    rp = RelayProcess(cwd=folder, args=full_args, env=clean_env(env),
                      log_path=folder.parent / f"{folder.name}.stderr.log")
    rp.start()
    return rp


@pytest.fixture
def relay_factory(tmp_path_factory: pytest.TempPathFactory) -> Iterator[RelayFactory]:
    """Start relays: ``relay_factory(args=[...], env={...}, cwd=path, port0=True)``; each
    is killed at the end of the test."""
    started: list[RelayProcess] = []

    def start(
        args: Sequence[str] = (),
        env: Mapping[str, str] | None = None,
        cwd: Path | None = None,
        *,
        port0: bool = True,
        synchronous_off: bool = True,
    ) -> RelayProcess:
        folder = cwd if cwd is not None else tmp_path_factory.mktemp("relay")
        # launch_relay kills a relay that does not come up in time.
        rp = launch_relay(folder, args, env, port0=port0, synchronous_off=synchronous_off)
        started.append(rp)
        return rp

    yield start
    for rp in started:
        rp.kill()


@pytest.fixture
def relay(relay_factory: RelayFactory) -> RelayProcess:
    """A relay with default settings in a fresh folder."""
    return relay_factory()
