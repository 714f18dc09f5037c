"""Session crypto benchmark: PQXDH establishments and Double Ratchet messages.

Run: ``python -m bench.crypto`` (add ``--quick`` for a short run).

Every figure is printed next to a baseline measured in the same run:

* the **primitive floor**: only the raw ``cryptography``/PyNaCl calls that one
  establishment (or message) needs, with no parsing, objects or checks;
* the pure-Python PyPI package ``x3dh`` (classical X3DH, no KEM, no sealed
  identity, no first message: a library-overhead reference), if installed
  (``pip install -e '.[bench]'``);
* the ratchet figures come from ``bench.ratchet`` (own floor, ``doubleratchet``
  and ``vodozemac`` baselines).
"""

from __future__ import annotations

import asyncio
import hmac
import os
import time
from collections.abc import Callable
from typing import Any

import nacl.bindings as sodium
from cryptography.hazmat.primitives import hashes
from cryptography.hazmat.primitives.asymmetric import mlkem
from cryptography.hazmat.primitives.ciphers.aead import AESGCM
from cryptography.hazmat.primitives.kdf.hkdf import HKDF

from bench import _report
from pigeon_crypto.identity import IdentityKeyPair
from pigeon_crypto.pqxdh import MemoryResponderKeys, accept, initiate
from pigeon_crypto.prekeys import (
    KemKind,
    KemPreKeyPair,
    OneTimePreKeyPair,
    PreKeyBundle,
    SignedPreKeyPair,
)
from pigeon_crypto.rng import system_rng

NOW_MS = 1_790_000_000_000
PAYLOAD = b"m" * 100


def _rate(fn: Callable[[int], None], n: int, repeat: int = 3) -> float:
    """Best-of-*repeat* operations per second of ``fn(n)`` (which performs *n* operations)."""
    best = float("inf")
    for _ in range(repeat):
        t0 = time.perf_counter()
        fn(n)
        best = min(best, time.perf_counter() - t0)
    return n / best


# --- Pigeon PQXDH ---------------------------------------------------------------------


def _pigeon_setup(n: int) -> tuple[IdentityKeyPair, IdentityKeyPair, MemoryResponderKeys,
                                   list[bytes]]:
    alice = IdentityKeyPair.generate(system_rng)
    bob = IdentityKeyPair.generate(system_rng)
    keys = MemoryResponderKeys()
    spk = SignedPreKeyPair.generate(bob, key_id=1, now_ms=NOW_MS, rng=system_rng)
    keys.add(spk)
    bundles = []
    for i in range(n):
        kem = KemPreKeyPair.generate(bob, key_id=i + 1, kind=KemKind.ONE_TIME, now_ms=NOW_MS,
                                     rng=system_rng)
        otk = OneTimePreKeyPair.generate(key_id=i + 1, rng=system_rng)
        keys.add(kem, otk)
        bundles.append(PreKeyBundle(identity=bob.public, signed_prekey=spk.public,
                                    kem_prekey=kem.public,
                                    one_time_prekey=otk.public).to_bytes())
    return alice, bob, keys, bundles


def bench_pqxdh(n: int) -> float:
    """Establishments/s: parse+verify bundle, initiate, accept (first message included)."""
    alice, bob, keys, bundles = _pigeon_setup(n)

    def run(count: int) -> None:
        for data in bundles[:count]:
            init = initiate(alice, PreKeyBundle.from_bytes(data), PAYLOAD, rng=system_rng)
            acc = accept(bob, keys, init.message, now_ms=NOW_MS)
            assert acc.payload == PAYLOAD

    return _rate(run, n)


# --- the primitive floor --------------------------------------------------------------


def _hkdf(ikm: bytes, info: bytes, length: int, salt: bytes = bytes(32)) -> bytes:
    return HKDF(algorithm=hashes.SHA256(), length=length, salt=salt, info=info).derive(ikm)


def bench_pqxdh_floor(n: int) -> float:
    """The raw calls of one establishment plus its first ratchet message, nothing else."""
    sk_a, sk_b = os.urandom(32), os.urandom(32)
    ik_a_sign_pk, ik_a_sign_sk = sodium.crypto_sign_seed_keypair(sk_a)
    ik_b_sign_pk, ik_b_sign_sk = sodium.crypto_sign_seed_keypair(sk_b)
    ik_a, ik_b, spk, opk = (os.urandom(32) for _ in range(4))
    ik_a_pub, ik_b_pub = sodium.crypto_scalarmult_base(ik_a), sodium.crypto_scalarmult_base(ik_b)
    spk_pub, opk_pub = sodium.crypto_scalarmult_base(spk), sodium.crypto_scalarmult_base(opk)
    kem = mlkem.MLKEM768PrivateKey.generate()
    kem_pub = kem.public_key().public_bytes_raw()
    sm_idh_a = sodium.crypto_sign(b"c" + ik_a_pub, ik_a_sign_sk)
    sm_idh_b = sodium.crypto_sign(b"c" + ik_b_pub, ik_b_sign_sk)
    sm_spk = sodium.crypto_sign(b"c" + spk_pub, ik_b_sign_sk)
    sm_kem = sodium.crypto_sign(b"c" + kem_pub, ik_b_sign_sk)
    f = b"\xff" * 32
    zero12 = bytes(12)
    xchacha = sodium.crypto_aead_xchacha20poly1305_ietf_encrypt
    xchacha_open = sodium.crypto_aead_xchacha20poly1305_ietf_decrypt
    smult, smult_base = sodium.crypto_scalarmult, sodium.crypto_scalarmult_base

    def run(count: int) -> None:
        for _ in range(count):
            # Alice: bundle verification (identity DH key, signed prekey, KEM prekey)
            sodium.crypto_sign_open(sm_idh_b, ik_b_sign_pk)
            sodium.crypto_sign_open(sm_spk, ik_b_sign_pk)
            sodium.crypto_sign_open(sm_kem, ik_b_sign_pk)
            ek = os.urandom(32)
            ek_pub = smult_base(ek)
            ss, ct = mlkem.MLKEM768PublicKey.from_public_bytes(kem_pub).encapsulate()
            dh1, dh2 = smult(ik_a, spk_pub), smult(ek, ik_b_pub)
            dh3, dh4 = smult(ek, spk_pub), smult(ek, opk_pub)
            k_seal = _hkdf(f + dh3 + dh4 + ss, b"seal", 32)
            sealed = AESGCM(k_seal).encrypt(zero12, ik_a_pub * 4, ct)
            sk = _hkdf(f + dh1 + dh2 + dh3 + dh4 + ss, b"sk", 32)
            # Alice: ratchet init (new ratchet key, DH with SPK, root KDF) + first message
            rk = _hkdf(sk, b"init", 96)
            dhs = os.urandom(32)
            dhs_pub = smult_base(dhs)
            out = _hkdf(smult(dhs, spk_pub), b"root", 96, salt=rk[:32])
            ck = out[32:64]
            mk = hmac.digest(ck, b"\x01", "sha256")
            nonce = os.urandom(24)
            eh = xchacha(dhs_pub + bytes(8), b"\x01", nonce, rk[32:64])
            body = AESGCM(mk).encrypt(zero12, PAYLOAD, eh)
            hmac.digest(ck, b"\x02", "sha256")
            # Bob: KEM decapsulation, sealed identity, identity self-signature, DHs
            ss_b = kem.decapsulate(ct)
            dh3b, dh4b = smult(spk, ek_pub), smult(opk, ek_pub)
            k_seal_b = _hkdf(f + dh3b + dh4b + ss_b, b"seal", 32)
            AESGCM(k_seal_b).decrypt(zero12, sealed, ct)
            sodium.crypto_sign_open(sm_idh_a, ik_a_sign_pk)
            dh1b, dh2b = smult(spk, ik_a_pub), smult(ik_b, ek_pub)
            sk_b = _hkdf(f + dh1b + dh2b + dh3b + dh4b + ss_b, b"sk", 32)
            # Bob: ratchet init, header decryption, DH ratchet step (two root KDFs), body
            rk_b = _hkdf(sk_b, b"init", 96)
            xchacha_open(eh, b"\x01", nonce, rk_b[32:64])
            out_b = _hkdf(smult(spk, dhs_pub), b"root", 96, salt=rk_b[:32])
            new = os.urandom(32)
            smult_base(new)
            _hkdf(smult(new, dhs_pub), b"root", 96, salt=out_b[:32])
            mk_b = hmac.digest(out_b[32:64], b"\x01", "sha256")
            hmac.digest(out_b[32:64], b"\x02", "sha256")
            AESGCM(mk_b).decrypt(zero12, body, eh)

    return _rate(run, n)


# --- the x3dh PyPI package ------------------------------------------------------------


def bench_x3dh(n: int) -> float | None:
    try:
        import x3dh
    except ImportError:
        return None

    class _State(x3dh.BaseState):
        @staticmethod
        def _encode_public_key(key_format: Any, pub: bytes) -> bytes:
            return b"\x05" + pub

    alice = _State.create(x3dh.IdentityKeyFormat.CURVE_25519, x3dh.HashFunction.SHA_256,
                          b"bench")
    bob = _State.create(x3dh.IdentityKeyFormat.CURVE_25519, x3dh.HashFunction.SHA_256,
                        b"bench")
    bob.generate_pre_keys(n)
    bundle = bob.bundle

    async def go(count: int) -> None:
        for pre_key in list(bundle.pre_keys)[:count]:
            one = x3dh.Bundle(identity_key=bundle.identity_key,
                              signed_pre_key=bundle.signed_pre_key,
                              signed_pre_key_sig=bundle.signed_pre_key_sig,
                              pre_keys=frozenset([pre_key]))
            secret, _, header = await alice.get_shared_secret_active(one)
            other, _, _ = await bob.get_shared_secret_passive(header)
            assert secret == other

    return _rate(lambda count: asyncio.run(go(count)), n)


def run(quick: bool = False) -> list[dict[str, Any]]:
    n = 200 if quick else 1000
    rows: list[dict[str, Any]] = []
    floor = bench_pqxdh_floor(n)
    ours = bench_pqxdh(n)
    rows.append({"name": "PQXDH establishments (both sides, bundle check, first message)",
                 "per_s": ours, "floor_per_s": floor, "ratio_to_floor": ours / floor})
    ref = bench_x3dh(min(n, 200))  # the PyPI package is slow; fewer rounds suffice
    if ref is None:
        rows.append({"name": "x3dh (PyPI) classical X3DH", "note": "not installed"})
    else:
        rows.append({"name": "x3dh (PyPI) classical X3DH both sides", "per_s": ref,
                     "ours_to_it": ours / ref})
    try:
        from bench import ratchet
    except ImportError:
        rows.append({"name": "ratchet", "note": "bench.ratchet missing"})
    else:
        rows.extend(ratchet.run())
    return rows


def main() -> None:
    _report.main(run, __doc__, "fewer iterations")


if __name__ == "__main__":
    main()
