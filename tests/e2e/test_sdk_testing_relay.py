"""``client_sdk.testing``'s relay dies with the process that started it: a test run
killed with SIGKILL (a CI timeout, an OOM kill) leaves no relay behind on its port."""

from __future__ import annotations

import contextlib
import os
import select
import signal
import subprocess
import sys
import threading
import time
from pathlib import Path

import pytest

from client_sdk.testing import RelayProcess, start_relay
from tests.helpers import process_alive

pytestmark = pytest.mark.skipif(not sys.platform.startswith("linux"),
                                reason="PR_SET_PDEATHSIG is Linux only")

_PARENT = """\
import sys, time
from pathlib import Path
from client_sdk.testing import start_relay
relay = start_relay(Path(sys.argv[1]))
print(relay.proc.pid, relay.url, flush=True)
time.sleep(60)  # SIGKILLed long before
"""
_START_S = 30.0
_GONE_S = 10.0




def _line(proc: subprocess.Popen[str], timeout_s: float) -> str:
    assert proc.stdout is not None
    ready, _, _ = select.select([proc.stdout], [], [], timeout_s)
    if not ready:
        raise TimeoutError("the parent did not start its relay in time")
    return proc.stdout.readline()


def test_the_relay_dies_with_a_killed_parent(tmp_path: Path) -> None:
    parent = subprocess.Popen([sys.executable, "-c", _PARENT, str(tmp_path / "relay")],
                              stdout=subprocess.PIPE, text=True)
    relay_pid = 0
    try:
        line = _line(parent, _START_S)
        relay_pid = int(line.split()[0])
        assert line.split()[1].startswith("http://127.0.0.1:")
        assert process_alive(relay_pid)
        parent.send_signal(signal.SIGKILL)  # nothing of the parent's runs after this
        parent.wait(timeout=10)
        deadline = time.monotonic() + _GONE_S
        while process_alive(relay_pid) and time.monotonic() < deadline:
            time.sleep(0.05)
        assert not process_alive(relay_pid), "the relay outlived the process that started it"
    finally:
        if parent.poll() is None:
            parent.kill()
            parent.wait(timeout=10)
        if relay_pid and process_alive(relay_pid):
            with contextlib.suppress(ProcessLookupError):
                os.kill(relay_pid, signal.SIGKILL)


def test_a_relay_outlives_the_thread_that_started_it(tmp_path: Path) -> None:
    started: list[RelayProcess] = []
    thread = threading.Thread(target=lambda: started.append(start_relay(tmp_path / "relay")))
    thread.start()
    thread.join(_START_S)
    assert started, "the relay did not start in time"
    relay = started[0]
    try:
        time.sleep(0.5)  # the parent-death signal would have come when the thread ended
        assert relay.proc is not None and relay.proc.poll() is None
    finally:
        relay.kill()
