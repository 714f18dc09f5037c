"""Child process of test_store_crash: send in a loop until SIGKILLed.

Usage: ``python -m tests.unit.client_sdk.crash_child PROFILE SEED_HEX``. Each iteration
encrypts the next message with the deterministic session of ``support.session_pair`` and
stores the new ratchet state, the outbox row and the history message with one
``enqueue`` (one transaction). Prints ``ready`` once the first send is stored.
"""

from __future__ import annotations

import sys

from client_sdk.history import ConversationKind
from client_sdk.store import Outgoing, Profile, SessionUpdate

from .support import account, entry, session_pair, text

PASSPHRASE = "crash test"
PEER = account(1)


def payload(i: int) -> bytes:
    return f"message number {i}".encode()


def main(path: str, seed: bytes) -> None:
    alice, _, rng = session_pair(seed)
    profile = Profile.open(path, PASSPHRASE)
    store = profile.store
    cid = store.ensure_conversation(ConversationKind.DIRECT, PEER, now_ms=0).id
    i = 0
    while True:
        sent = alice.encrypt(payload(i), rng=rng)
        store.enqueue(Outgoing(entry=entry(i + 1, blob=sent.message),
                               session=SessionUpdate(peer=PEER, state=sent.state),
                               history=text(cid, i + 1, payload(i).decode())))
        alice = sent.state
        if i == 0:
            print("ready", flush=True)
        i += 1


if __name__ == "__main__":
    main(sys.argv[1], bytes.fromhex(sys.argv[2]))
