"""A scripted two-party demo of Pigeon's crypto core.

Alice fetches Bob's prekey bundle, establishes a session with PQXDH and both
exchange Double Ratchet messages, including one delivered out of order. Run
with ``pigeon-demo`` or ``python -m examples.demo``.
"""

from __future__ import annotations

import time

from pigeon_crypto.identity import IdentityKeyPair, account_id_for
from pigeon_crypto.pqxdh import MemoryResponderKeys, accept, initiate
from pigeon_crypto.prekeys import (
    KemKind,
    KemPreKeyPair,
    OneTimePreKeyPair,
    PreKeyBundle,
    SignedPreKeyPair,
)
from pigeon_crypto.rng import system_rng


def _say(who: str, text: str) -> None:
    print(f"  {who:<5} {text}")


def main() -> None:
    now = int(time.time() * 1000)
    print("Pigeon demo: PQXDH key agreement + Double Ratchet with header encryption\n")

    alice = IdentityKeyPair.generate(system_rng)
    bob = IdentityKeyPair.generate(system_rng)
    _say("alice", f"account {account_id_for(alice.public).hex()}")
    _say("bob", f"account {account_id_for(bob.public).hex()}")

    # Bob publishes a signed prekey, a last-resort ML-KEM-768 prekey and one-time keys.
    bob_keys = MemoryResponderKeys()
    spk = SignedPreKeyPair.generate(bob, key_id=1, now_ms=now, rng=system_rng)
    kem = KemPreKeyPair.generate(bob, key_id=1, kind=KemKind.LAST_RESORT, now_ms=now,
                                 rng=system_rng)
    otk = OneTimePreKeyPair.generate(key_id=1, rng=system_rng)
    bob_keys.add(spk, kem, otk)
    published = PreKeyBundle(identity=bob.public, signed_prekey=spk.public,
                             kem_prekey=kem.public, one_time_prekey=otk.public).to_bytes()
    _say("bob", f"publishes a prekey bundle of {len(published)} bytes")

    # Alice verifies the bundle and sends the initiation to Bob's contact mailbox.
    bundle = PreKeyBundle.from_bytes(published)
    init = initiate(alice, bundle, b"reply to mailbox 7f3a with capability c0ffee",
                    rng=system_rng)
    _say("alice", f"sends an initiation of {len(init.message)} bytes "
                  "(her identity is sealed inside)")

    accepted = accept(bob, bob_keys, init.message, now_ms=now)
    bob_keys.commit(accepted)
    _say("bob", f"accepts: peer is {accepted.peer.fingerprint}, "
                f"payload {accepted.payload.decode()!r}")
    assert accepted.peer.same_key(alice.public)

    a_state, b_state = init.session, accepted.session
    # Bob answers; Alice replies three times; Bob receives them out of order.
    sent = b_state.encrypt(b"Hello Alice, post-quantum hello!", rng=system_rng)
    b_state = sent.state
    got = a_state.decrypt(sent.message, now_ms=now)
    a_state = got.state
    _say("alice", f"reads {got.plaintext.decode()!r}")

    outgoing = []
    for text in ("one", "two", "three"):
        enc = a_state.encrypt(text.encode(), rng=system_rng)
        a_state = enc.state
        outgoing.append(enc.message)
    for index in (2, 0, 1):
        dec = b_state.decrypt(outgoing[index], now_ms=now)
        b_state = dec.state
        _say("bob", f"reads {dec.plaintext.decode()!r} (message {index + 1}, out of order)")

    try:
        b_state.decrypt(outgoing[0], now_ms=now)
    except Exception as exc:  # a duplicate is refused with a typed error
        _say("bob", f"rejects a replayed message: {type(exc).__name__}")
    print("\nSession established and messages exchanged.")


if __name__ == "__main__":
    main()
