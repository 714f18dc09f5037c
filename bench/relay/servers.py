"""The servers under test as real subprocesses, and what /proc says about processes.

* :func:`relay_command`: ``pigeon-relay --host 127.0.0.1 --port 0 --data-dir <tmp>`` with
  ``--synchronous FULL`` (the default, spelled out) and the per-connection and per-mailbox
  send credits raised out of the way (rate limiting is policy, not pipeline capacity;
  the defaults of 20 and 50 sends/s would measure the limiter).
* :func:`forwarder_command`: ``python -m bench.relay.forwarder --port 0``.

Both print one listening line on stdout; :class:`ServerProcess` waits for it (bounded),
parses the port, sends stderr to a log file (a full pipe would stall the server), and
stops the process with SIGTERM then SIGKILL. Process CPU and RSS come from psutil when
installed, else from ``/proc/<pid>/stat`` (utime + stime, all threads) and
``/proc/<pid>/status`` (VmRSS).
"""

from __future__ import annotations

import contextlib
import os
import re
import selectors
import signal
import subprocess
import sys
import time
from collections.abc import Sequence
from pathlib import Path
from typing import BinaryIO

__all__ = [
    "ServerProcess",
    "forwarder_command",
    "machine_busy",
    "proc_cpu_s",
    "proc_rss_bytes",
    "relay_command",
]

_CLK_TCK = os.sysconf("SC_CLK_TCK")
_URL = re.compile(r"listening on https?://[^\s:]+:(\d+)")
HUGE = "1000000000"

try:  # optional
    import psutil  # type: ignore[import-not-found, import-untyped, unused-ignore]
except ImportError:  # pragma: no cover - the /proc fallback is the common case here
    psutil = None


def proc_cpu_s(pid: int) -> float:
    """User + system CPU seconds of *pid* so far (all its threads), plus those of its
    live child processes (the relay's store writer process: the server's CPU is both)."""
    if psutil is not None:
        proc = psutil.Process(pid)
        t = proc.cpu_times()
        total = float(t.user + t.system)
        for child in proc.children(recursive=True):
            with contextlib.suppress(psutil.Error):
                c = child.cpu_times()
                total += float(c.user + c.system)
        return total
    total = 0.0
    for task in _tree(pid):
        with contextlib.suppress(OSError), open(f"/proc/{task}/stat", encoding="ascii") as f:
            fields = f.read().rsplit(")", 1)[1].split()
            total += (int(fields[11]) + int(fields[12])) / _CLK_TCK
    return total


def _tree(pid: int) -> list[int]:
    """*pid* and its descendants (Linux ``/proc/<pid>/task/<tid>/children``)."""
    out, todo = [], [pid]
    while todo:
        p = todo.pop()
        out.append(p)
        with contextlib.suppress(OSError), open(f"/proc/{p}/task/{p}/children",
                                                encoding="ascii") as f:
            todo += [int(c) for c in f.read().split()]
    return out


def proc_rss_bytes(pid: int) -> int:
    if psutil is not None:
        return int(psutil.Process(pid).memory_info().rss)
    with open(f"/proc/{pid}/status", encoding="ascii") as f:
        for line in f:
            if line.startswith("VmRSS:"):
                return int(line.split()[1]) * 1024
    raise OSError(f"no VmRSS for {pid}")


def machine_busy() -> tuple[float, float]:
    """``(busy jiffies, total jiffies)`` of the whole machine, from /proc/stat."""
    with open("/proc/stat", encoding="ascii") as f:
        vals = [int(x) for x in f.readline().split()[1:]]
    idle = vals[3] + (vals[4] if len(vals) > 4 else 0)
    total = sum(vals[:8])
    return float(total - idle), float(total)


def _script(name: str) -> str | None:
    candidate = Path(sys.executable).parent / name
    return str(candidate) if candidate.exists() else None


def relay_command(data_dir: Path, *, synchronous: str = "FULL",
                  extra: Sequence[str] = (), prelude: str | None = None) -> list[str]:
    """The relay's command line. *prelude* (an experiment, never the default): Python
    statements run in the relay's process before the same ``relay.cli.main``, e.g.
    ``import gc; gc.disable()`` to measure what the cyclic GC costs."""
    exe = _script("pigeon-relay")
    base = [exe] if exe else [sys.executable, "-m", "relay"]
    if prelude:
        base = [sys.executable, "-c",
                f"{prelude}\nimport sys\nfrom relay.cli import main\n"
                "raise SystemExit(main(sys.argv[1:]))"]
    return [*base, "--host", "127.0.0.1", "--port", "0", "--data-dir", str(data_dir),
            "--synchronous", synchronous,
            "--conn-credit-capacity", HUGE, "--conn-credit-refill", HUGE,
            "--mailbox-credit-capacity", HUGE, "--mailbox-credit-refill", HUGE,
            "--max-connections", "20000", "--shutdown-timeout", "2s",
            "--log-level", "WARNING", *extra]


def forwarder_command() -> list[str]:
    return [sys.executable, "-m", "bench.relay.forwarder", "--host", "127.0.0.1",
            "--port", "0"]


class ServerProcess:
    """A server subprocess: ``start()`` waits for its listening line; ``stop()`` ends it."""

    def __init__(self, name: str, cmd: list[str], log_path: Path, *,
                 cwd: Path | None = None, start_timeout_s: float = 60.0) -> None:
        self.name = name
        self.cmd = cmd
        self.log_path = log_path
        self.cwd = cwd
        self.start_timeout_s = start_timeout_s
        self.proc: subprocess.Popen[bytes] | None = None
        self.port = 0
        self._log: BinaryIO | None = None

    @property
    def pid(self) -> int:
        assert self.proc is not None
        return self.proc.pid

    def start(self) -> ServerProcess:
        self._log = open(self.log_path, "ab")  # noqa: SIM115 - closed in stop()
        env = dict(os.environ, PYTHONUNBUFFERED="1")
        self.proc = subprocess.Popen(self.cmd, stdout=subprocess.PIPE, stderr=self._log,
                                     stdin=subprocess.DEVNULL, cwd=self.cwd, env=env)
        assert self.proc.stdout is not None
        sel = selectors.DefaultSelector()
        sel.register(self.proc.stdout, selectors.EVENT_READ)
        deadline = time.monotonic() + self.start_timeout_s
        line = b""
        try:
            while not line.endswith(b"\n"):
                left = deadline - time.monotonic()
                if left <= 0 or not sel.select(left):
                    raise RuntimeError(f"{self.name} did not print its listening line "
                                       f"within {self.start_timeout_s:.0f}s "
                                       f"(log: {self.log_path})")
                chunk = os.read(self.proc.stdout.fileno(), 4096)
                if not chunk:
                    raise RuntimeError(f"{self.name} exited with {self.proc.wait()} before "
                                       f"listening (log: {self.log_path})")
                line += chunk
        except BaseException:
            self.stop()
            raise
        finally:
            sel.close()
        m = _URL.search(line.decode("utf-8", "replace"))
        if not m:
            self.stop()
            raise RuntimeError(f"{self.name}: unexpected first line {line!r}")
        self.port = int(m.group(1))
        return self

    def alive(self) -> bool:
        return self.proc is not None and self.proc.poll() is None

    def stop(self, timeout_s: float = 8.0) -> int | None:
        proc, self.proc = self.proc, None
        code = None
        if proc is not None:
            if proc.poll() is None:
                with contextlib.suppress(ProcessLookupError):
                    proc.send_signal(signal.SIGTERM)
                try:
                    code = proc.wait(timeout_s)
                except subprocess.TimeoutExpired:
                    proc.kill()
                    code = proc.wait(5)
            else:
                code = proc.returncode
            if proc.stdout is not None:
                proc.stdout.close()
        if self._log is not None:
            self._log.close()
            self._log = None
        return code

    def __enter__(self) -> ServerProcess:
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.stop()
