"""Run a throwaway ``pigeon-relay`` process for the examples (the scripted demo).

``async with local_relay(folder) as url:`` starts ``pigeon-relay --port 0`` with its data
in *folder*, waits (bounded) for the one line it prints once it accepts connections
(``pigeon-relay listening on URL``) and yields that URL; on the way out it stops the relay
with SIGTERM (a graceful shutdown), then SIGKILL if it does not exit in time. The relay's
log (stderr) goes to ``folder/relay.log``.

Tests use the pytest fixture ``client_sdk.testing.pigeon_relay`` instead; this module
needs no pytest.
"""

from __future__ import annotations

import asyncio
import contextlib
import shutil
import sys
from collections.abc import AsyncIterator, Sequence
from pathlib import Path
from typing import BinaryIO, Final

__all__ = ["LISTENING", "RelayStartError", "local_relay", "relay_command"]

LISTENING: Final = "pigeon-relay listening on "
START_TIMEOUT_S: Final = 30.0
"""A relay starts in about a second; a slow first start (cold caches) gets margin."""
STOP_TIMEOUT_S: Final = 15.0


class RelayStartError(RuntimeError):
    """The relay exited or stayed silent instead of printing its listening line."""


def relay_command() -> list[str]:
    """This environment's ``pigeon-relay`` script, else ``python -m relay``."""
    script = shutil.which("pigeon-relay", path=str(Path(sys.executable).parent))
    return [script] if script else [sys.executable, "-m", "relay"]


@contextlib.asynccontextmanager
async def local_relay(folder: Path, args: Sequence[str] = (), *,
                      timeout_s: float = START_TIMEOUT_S) -> AsyncIterator[str]:
    """Start a relay on 127.0.0.1 (a free port) with its data in *folder*; yield its URL.

    Raises:
        RelayStartError: it exited or printed nothing within *timeout_s* (the message
            ends with the last lines of its log).
    """
    log_path = folder / "relay.log"
    with _open_log(log_path) as log:
        proc = await asyncio.create_subprocess_exec(
            *relay_command(), "--host", "127.0.0.1", "--port", "0",
            "--data-dir", str(folder), *args,
            stdin=asyncio.subprocess.DEVNULL, stdout=asyncio.subprocess.PIPE, stderr=log)
    try:
        url = await _listening_url(proc, timeout_s)
        if url is None:
            raise RelayStartError(f"pigeon-relay did not start:\n{_tail(log_path)}")
        yield url
    finally:
        await _stop(proc)


def _open_log(path: Path) -> BinaryIO:
    path.parent.mkdir(parents=True, exist_ok=True)
    return open(path, "ab")  # the caller closes it (`with`)


def _tail(path: Path, size: int = 1500) -> str:
    return path.read_text(encoding="utf-8", errors="replace")[-size:]


async def _listening_url(proc: asyncio.subprocess.Process, timeout_s: float) -> str | None:
    assert proc.stdout is not None
    with contextlib.suppress(TimeoutError):
        async with asyncio.timeout(timeout_s):
            while line := (await proc.stdout.readline()).decode(errors="replace"):
                if line.startswith(LISTENING):
                    return line[len(LISTENING):].strip()
    return None


async def _stop(proc: asyncio.subprocess.Process) -> None:
    if proc.returncode is None:
        with contextlib.suppress(ProcessLookupError):
            proc.terminate()
        try:
            async with asyncio.timeout(STOP_TIMEOUT_S):
                await proc.wait()
        except TimeoutError:
            with contextlib.suppress(ProcessLookupError):
                proc.kill()
            await proc.wait()
