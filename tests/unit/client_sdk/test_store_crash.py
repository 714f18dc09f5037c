"""Crash test: a process storing ratchet state + outbox rows is SIGKILLed mid-loop.

After each kill the profile must open cleanly and hold exactly a prefix of the sends:
k outbox rows whose ciphertexts are the first k the deterministic session produces, the
ratchet state after exactly k encryptions, and k history messages. A torn write (state
without its row or the reverse) would show as a mismatch.
"""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

from client_sdk.history import ConversationKind
from client_sdk.store import Profile

from .crash_child import PASSPHRASE, PEER, payload
from .support import FAST, entry, session_pair

ROOT = Path(__file__).resolve().parents[3]


@pytest.mark.skipif(not hasattr(signal, "SIGKILL"), reason="needs SIGKILL")
@pytest.mark.parametrize("delay", [0.0, 0.15, 0.4])
def test_sigkill_never_tears_state_from_outbox(tmp_path: Path, delay: float) -> None:
    path = tmp_path / "crash.db"
    seed = f"crash {delay}".encode()
    Profile.create(path, PASSPHRASE, params=FAST).close()
    child = subprocess.Popen(
        [sys.executable, "-m", "tests.unit.client_sdk.crash_child", str(path), seed.hex()],
        cwd=ROOT, stdout=subprocess.PIPE, text=True,
    )
    try:
        assert child.stdout is not None
        assert child.stdout.readline().strip() == "ready"
        time.sleep(delay)
    finally:
        os.kill(child.pid, signal.SIGKILL)
        child.wait()
    assert child.returncode == -signal.SIGKILL

    with Profile.open(path, PASSPHRASE) as profile:
        store = profile.store
        k = store.outbox_size()
        assert k >= 1
        alice, bob, rng = session_pair(seed)
        items = store.due_outbox(now_ms=2**62, limit=k)
        for i, item in enumerate(items):
            sent = alice.encrypt(payload(i), rng=rng)
            assert item.entry.client_msg_id == entry(i + 1).client_msg_id
            assert item.entry.blob == sent.message
            alice = sent.state
        assert store.load_session(PEER).to_bytes() == alice.to_bytes()  # type: ignore[union-attr]
        conv = store.find_conversation(ConversationKind.DIRECT, PEER)
        assert conv is not None and store.message_count(conv.id) == k
        # The stored bytes are what the peer can read, in order.
        for i, item in enumerate(items):
            got = bob.decrypt(item.entry.blob, now_ms=0)
            assert got.plaintext == payload(i)
            bob = got.state
        profile.check_integrity()
