"""Check the Double Ratchet against docs/vectors/ratchet.json byte for byte.

Three independent checks: regeneration reproduces the file; every recorded
intermediate value follows from the previous ones by the raw primitives of the
spec chapter; and the library, restored from each recorded snapshot, replays
each event alone (decrypts the recorded message, re-encrypts from the recorded
RNG bytes) and reaches the recorded next snapshot. The recorded snapshots are
also the frozen fixtures of snapshot version 1.
"""

from __future__ import annotations

import hmac
import json
import struct
from pathlib import Path
from typing import Any

import pytest
from cryptography.hazmat.primitives.ciphers.aead import AESGCM
from nacl.bindings import crypto_aead_xchacha20poly1305_ietf_decrypt

from pigeon_crypto.ratchet import RatchetState, init_initiator, init_responder
from tests.vectors import gen_ratchet
from tests.vectors.gen_ratchet import INIT_INFO, ROOT_INFO, Replay, hkdf, public_of, x25519

VECTORS: dict[str, Any] = json.loads(
    (Path(__file__).resolve().parents[2] / "docs" / "vectors" / gen_ratchet.FILENAME).read_text()
)
INIT = VECTORS["init"]
EVENTS: list[dict[str, Any]] = VECTORS["events"]
SENDS = [e for e in EVENTS if e["action"] == "send"]
DELIVERIES = [e for e in EVENTS if e["action"] == "deliver"]


def h(x: str) -> bytes:
    return bytes.fromhex(x)


def test_regeneration_reproduces_every_byte() -> None:
    assert gen_ratchet.generate() == VECTORS


def test_scenario_covers_the_interesting_paths() -> None:
    paths = [e["path"] for e in DELIVERIES]
    assert paths.count("dh-step") == 4 and "current" in paths and "skipped" in paths
    assert sum("dh_step" in e for e in SENDS) == 3  # b0, a3, b1 start new chains
    labels = [e["label"] for e in DELIVERIES]
    assert labels.index("a2") < labels.index("a1")  # out of order, across a DH step


def test_init_key_schedule_from_primitives() -> None:
    secret = h(INIT["shared_secret"])
    root_key, hka, nhkb = hkdf(secret, bytes(32), INIT_INFO)
    assert (root_key.hex(), hka.hex(), nhkb.hex()) == (
        INIT["root_key"], INIT["shared_hka"], INIT["shared_nhkb"])
    assert public_of(h(INIT["bob_ratchet_private"])).hex() == INIT["bob_ratchet_public"]
    assert public_of(h(INIT["alice_ratchet_private"])).hex() == INIT["alice_ratchet_public"]
    dh = x25519(h(INIT["alice_ratchet_private"]), h(INIT["bob_ratchet_public"]))
    assert dh.hex() == INIT["alice_dh_output"]
    rk, ck, nhk = hkdf(dh, root_key, ROOT_INFO)
    assert (rk.hex(), ck.hex(), nhk.hex()) == (
        INIT["alice_root_key"], INIT["alice_sending_chain_key"], INIT["alice_next_header_key_send"])


def test_init_functions_produce_recorded_snapshots() -> None:
    ad = h(INIT["associated_data"])
    alice = init_initiator(shared_secret=h(INIT["shared_secret"]),
                           peer_ratchet_public=h(INIT["bob_ratchet_public"]),
                           associated_data=ad, rng=Replay(h(INIT["alice_ratchet_private"])))
    bob = init_responder(shared_secret=h(INIT["shared_secret"]),
                         our_ratchet_private=h(INIT["bob_ratchet_private"]), associated_data=ad)
    assert alice.to_bytes().hex() == INIT["alice_state"]
    assert bob.to_bytes().hex() == INIT["bob_state"]
    assert EVENTS[0]["state_before"] == INIT["alice_state"]


@pytest.mark.parametrize("event", SENDS, ids=[e["label"] for e in SENDS])
def test_send_intermediates_from_primitives(event: dict[str, Any]) -> None:
    chain_key = h(event["chain_key"])
    assert hmac.digest(chain_key, b"\x01", "sha256").hex() == event["message_key"]
    assert hmac.digest(chain_key, b"\x02", "sha256").hex() == event["next_chain_key"]
    if "dh_step" in event:
        step = event["dh_step"]
        assert h(event["rng_output"])[:32].hex() == step["ratchet_private"]
        dh = x25519(h(step["ratchet_private"]), h(step["peer_ratchet_public"]))
        assert dh.hex() == step["dh_output"]
        assert public_of(h(step["ratchet_private"])).hex() == step["ratchet_public"]
        assert step["ratchet_public"] == event["header"]["ratchet_public"]
        rk, ck, nhk = hkdf(h(step["dh_output"]), h(step["root_key_before"]), ROOT_INFO)
        assert (rk.hex(), ck.hex(), nhk.hex()) == (
            step["root_key"], step["chain_key"], step["next_header_key"])
        assert step["chain_key"] == event["chain_key"]
    header = h(event["header_plaintext"])
    fields = event["header"]
    assert header == h(fields["ratchet_public"]) + struct.pack(">II", fields["pn"], fields["n"])
    nonce = h(event["header_nonce"])
    assert h(event["rng_output"])[-24:] == nonce
    message = h(event["message"])
    encrypted_header = h(event["encrypted_header"])
    assert message == b"\x01" + nonce + encrypted_header + h(event["body_ciphertext"])
    assert crypto_aead_xchacha20poly1305_ietf_decrypt(
        encrypted_header, b"\x01", nonce, h(event["header_key"])) == header
    body_ad = h(event["body_ad"])
    assert body_ad == h(INIT["associated_data"]) + message[:81]
    plaintext = AESGCM(h(event["message_key"])).decrypt(
        bytes(12), h(event["body_ciphertext"]), body_ad)
    assert plaintext == h(event["plaintext"])


@pytest.mark.parametrize("event", DELIVERIES, ids=[e["label"] for e in DELIVERIES])
def test_delivery_keys_match_the_sender(event: dict[str, Any]) -> None:
    sent = next(e for e in SENDS if e["label"] == event["label"])
    assert event["message_key"] == sent["message_key"]
    assert event["header_key"] == sent["header_key"]
    if event["path"] == "dh-step":
        step = event["dh_step"]
        assert step["peer_ratchet_public"] == sent["header"]["ratchet_public"]
        rk, ck, nhk = hkdf(h(step["dh_output"]), h(step["root_key_before"]), ROOT_INFO)
        assert (rk.hex(), ck.hex(), nhk.hex()) == (
            step["root_key"], step["chain_key"], step["next_header_key"])


def test_dh_outputs_agree_on_both_sides() -> None:
    """The receiver's DH output for a chain equals the sender's (same root key, same chain)."""
    by_label = {e["label"]: e for e in DELIVERIES}
    for send in SENDS:
        if "dh_step" in send and send["label"] in by_label:
            receive = by_label[send["label"]]
            assert receive["dh_step"]["dh_output"] == send["dh_step"]["dh_output"]
            assert receive["dh_step"]["chain_key"] == send["dh_step"]["chain_key"]


@pytest.mark.parametrize("event", EVENTS, ids=[f"{e['action']}-{e['label']}" for e in EVENTS])
def test_library_replays_each_event_from_its_snapshot(event: dict[str, Any]) -> None:
    state = RatchetState.from_bytes(h(event["state_before"]))
    assert state.to_bytes().hex() == event["state_before"]  # frozen v1 fixture round-trips
    if event["action"] == "send":
        out = state.encrypt(h(event["plaintext"]), rng=Replay(h(event["rng_output"])))
        assert out.message.hex() == event["message"]
        after = out.state
    else:
        got = state.decrypt(h(event["message"]), now_ms=event["now_ms"])
        assert got.plaintext.hex() == event["plaintext"]
        after = got.state
    assert after.to_bytes().hex() == event["state_after"]


def test_events_chain_snapshots() -> None:
    last = {"alice": INIT["alice_state"], "bob": INIT["bob_state"]}
    for event in EVENTS:
        assert event["state_before"] == last[event["party"]]
        last[event["party"]] = event["state_after"]
