"""``pigeon-demo`` (the README's main command, ``./scripts/demo``) runs end to end: it
starts its own relay, both parties register, become contacts, see the same safety
number, exchange messages with statuses pending → sent → delivered → read, and it stops
the relay and exits 0."""

from __future__ import annotations

import re
import shutil
import subprocess
import sys
from pathlib import Path

from client_sdk.testing import RelayProcess, pigeon_relay  # noqa: F401

TIMEOUT_S = 120


def _demo_command() -> list[str]:
    script = shutil.which("pigeon-demo", path=str(Path(sys.executable).parent))
    return [script] if script else [sys.executable, "-m", "examples.demo"]


def _run(*args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run([*_demo_command(), *args], capture_output=True, text=True,
                          timeout=TIMEOUT_S, check=False, stdin=subprocess.DEVNULL)


def _check_transcript(out: str) -> None:
    accounts = re.findall(r"registered as account ([0-9a-f]{32})", out)
    assert len(accounts) == 2 and accounts[0] != accounts[1]
    numbers = re.findall(r"safety number with \w+: +((?:\d{5} ){11}\d{5})", out)
    assert len(numbers) == 2 and numbers[0] == numbers[1], out
    statuses = re.findall(r"status (pending|sent|delivered|read) ", out)
    assert statuses == ["pending", "sent", "delivered", "read"], out
    assert "bob    <- Alice 'Hi Bob! Only you can read this.'" in out
    assert "alice  <- Bob   'Hello Alice, post-quantum hello!'" in out
    assert "searches her history for 'quantum': Bob:" in out


def test_demo_starts_a_relay_and_runs_the_conversation() -> None:
    done = _run()
    assert done.returncode == 0, done.stderr
    out = done.stdout
    started = re.search(r"pigeon-relay listening on (http://127\.0\.0\.1:\d+) "
                        r"\(data in (\S+)\)", out)
    assert started is not None, out
    _check_transcript(out)
    assert "relay  stopped" in out
    assert out.rstrip().endswith("messages both ways with receipts.")
    # The relay's temporary folder (data and log) is gone.
    assert not Path(started.group(2)).exists()


def test_demo_against_a_running_relay(pigeon_relay: RelayProcess) -> None:  # noqa: F811
    done = _run("--relay", pigeon_relay.url)
    assert done.returncode == 0, done.stderr
    assert f"using {pigeon_relay.url}" in done.stdout
    _check_transcript(done.stdout)


def test_demo_reports_an_unreachable_relay() -> None:
    done = subprocess.run([*_demo_command(), "--relay", "http://127.0.0.1:9"],
                          capture_output=True, text=True, timeout=TIMEOUT_S, check=False)
    assert done.returncode == 1
    assert "demo failed:" in done.stderr
    assert "Traceback" not in done.stderr


def test_demo_help() -> None:
    done = _run("--help")
    assert done.returncode == 0
    assert "--relay URL" in done.stdout
