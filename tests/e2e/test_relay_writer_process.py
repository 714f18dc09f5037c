"""The relay's SQLite writer process (``--store-writer process``) lives and
dies with the relay: ``kill -9`` of the relay leaves no writer behind (a restart on the
same data folder would otherwise meet a second writer), and a writer that dies stops the
relay loudly (CRITICAL log, exit status 70) instead of leaving it up but unable to store.
"""

from __future__ import annotations

import os
import signal
import time

from protocol import Sent
from tests.helpers import process_alive

from .conftest import RelayFactory
from .wsclient import anonymous, connect_user


def _children(pid: int) -> list[int]:
    try:
        with open(f"/proc/{pid}/task/{pid}/children", encoding="ascii") as f:
            return [int(c) for c in f.read().split()]
    except OSError:
        return []




def _wait_gone(pid: int, timeout_s: float = 10.0) -> bool:
    deadline = time.monotonic() + timeout_s
    while process_alive(pid) and time.monotonic() < deadline:
        time.sleep(0.05)
    return not process_alive(pid)


async def test_kill_9_of_the_relay_takes_the_writer_along(relay_factory: RelayFactory) -> None:
    rp = relay_factory(args=["--store-writer", "process"], synchronous_off=False)
    assert rp.proc is not None
    writers = _children(rp.proc.pid)
    assert len(writers) == 1 and process_alive(writers[0])
    bob = await connect_user(rp.url)
    box = await bob.create_mailbox()
    alice = await anonymous(rp.url)
    assert isinstance(await alice.send([box], b"before the kill"), Sent)
    rp.kill()
    for c in (alice, bob):
        await c.close()
    assert _wait_gone(writers[0]), "the writer process outlived the relay"
    # The same data folder serves again, with the message queued before the kill.
    rp.start()
    bob = await connect_user(rp.url, identity=bob.identity)
    await bob.subscribe(box)
    assert (await bob.next_delivery()).blob == b"before the kill"
    assert rp.proc is not None and len(_children(rp.proc.pid)) == 1
    await bob.close()


async def test_a_dead_writer_stops_the_relay_loudly(relay_factory: RelayFactory) -> None:
    rp = relay_factory(args=["--store-writer", "process"])
    assert rp.proc is not None
    bob = await connect_user(rp.url)
    await bob.create_mailbox()
    (writer,) = _children(rp.proc.pid)
    os.kill(writer, signal.SIGKILL)
    assert rp.proc.wait(timeout=30) == 70  # noticed while idle, graceful stop, non-zero
    assert "CRITICAL" in rp.log() and "writer process" in rp.log()
    await bob.close()
