"""End to end: the SDK pins the relay's TLS certificate (a self-signed one here).

The relay runs with ``--tls-cert/--tls-key``; a client given the certificate's SHA-256
fingerprint registers and messages over ``wss://``; a client given another fingerprint
is refused with ``CertificatePinMismatch`` before anything is sent.
"""

from __future__ import annotations

import datetime as dt
import hashlib
import ipaddress
from pathlib import Path

import pytest
from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import NameOID

from client_sdk import AsyncClient, CertificatePinMismatch, MessageReceived
from client_sdk.testing import FAST_PARAMS, ClientFactory, relay_pipeline_available, start_relay


def _self_signed(folder: Path) -> tuple[Path, Path, bytes]:
    key = ec.generate_private_key(ec.SECP256R1())
    name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "pigeon test relay")])
    now = dt.datetime.now(dt.UTC)
    cert = (x509.CertificateBuilder().subject_name(name).issuer_name(name)
            .public_key(key.public_key()).serial_number(x509.random_serial_number())
            .not_valid_before(now - dt.timedelta(minutes=5))
            .not_valid_after(now + dt.timedelta(days=1))
            .add_extension(x509.SubjectAlternativeName(
                [x509.IPAddress(ipaddress.ip_address("127.0.0.1"))]), critical=False)
            .sign(key, hashes.SHA256()))
    cert_path, key_path = folder / "cert.pem", folder / "key.pem"
    cert_path.write_bytes(cert.public_bytes(serialization.Encoding.PEM))
    key_path.write_bytes(key.private_bytes(serialization.Encoding.PEM,
                                           serialization.PrivateFormat.PKCS8,
                                           serialization.NoEncryption()))
    return cert_path, key_path, hashlib.sha256(
        cert.public_bytes(serialization.Encoding.DER)).digest()


async def test_pinned_certificate(tmp_path: Path) -> None:
    cert, key, fingerprint = _self_signed(tmp_path)
    relay = start_relay(tmp_path / "relay", ["--tls-cert", str(cert), "--tls-key", str(key)])
    try:
        assert relay.url.startswith("https://")
        if not await relay_pipeline_available(relay.url, fingerprint):
            pytest.skip("relay pipeline not available (the relay closed with 4501)")
        pinned = fingerprint.hex(":").upper()
        factory = ClientFactory(relay, tmp_path)
        alice = await factory("alice", tls_fingerprint=pinned)
        bob = await factory("bob", tls_fingerprint=fingerprint)
        await factory.connect(alice, bob)
        await alice.send_text(bob.account_id, "over a pinned wss connection")
        event = await factory.next_event(bob, MessageReceived)
        assert event.text == "over a pinned wss connection"
        await factory.close()

        wrong = hashlib.sha256(b"another certificate").digest()
        async with AsyncClient.open(tmp_path / "mallory.pigeon", "pw", relay_url=relay.url,
                                    tls_fingerprint=wrong, params=FAST_PARAMS) as mallory:
            with pytest.raises(CertificatePinMismatch):
                await mallory.register(timeout_s=20)
    finally:
        relay.kill()

