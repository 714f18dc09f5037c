"""TLS for the relay: the server's SSL context and the certificate fingerprint clients pin.

Theory of operation:

* ``--tls-cert`` / ``--tls-key`` (PEM) turn on HTTPS and WSS on the relay's one port. The
  context accepts TLS 1.2 and 1.3 only, with Python's default (secure) cipher choice.
* Self-hosted relays often use self-signed certificates. Clients then **pin** the
  certificate instead of trusting a CA: the pin is the SHA-256 of the leaf certificate's
  DER encoding (what ``aiohttp.Fingerprint`` and ``openssl x509 -fingerprint -sha256``
  compute). The relay logs it at startup, and ``pigeon-relay fingerprint --tls-cert FILE``
  prints it. A renewed certificate has a new fingerprint: pin the new one before rotating.
"""

from __future__ import annotations

import hashlib
import hmac
import ssl
from pathlib import Path

__all__ = [
    "certificate_fingerprint",
    "fingerprint_matches",
    "format_fingerprint",
    "parse_fingerprint",
    "server_ssl_context",
]


def server_ssl_context(cert: Path, key: Path) -> ssl.SSLContext:
    """An SSL server context for *cert* (PEM, may hold the chain) and its *key* (PEM).

    Raises:
        OSError: a file cannot be read.
        ssl.SSLError: the files are not a matching certificate and key.
    """
    ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
    ctx.minimum_version = ssl.TLSVersion.TLSv1_2
    ctx.load_cert_chain(certfile=str(cert), keyfile=str(key))
    return ctx


def _first_pem_certificate(pem: str) -> bytes:
    begin, end = "-----BEGIN CERTIFICATE-----", "-----END CERTIFICATE-----"
    start = pem.find(begin)
    stop = pem.find(end, start)
    if start < 0 or stop < 0:
        raise ValueError("no PEM certificate found")
    return ssl.PEM_cert_to_DER_cert(pem[start : stop + len(end)])


def certificate_fingerprint(cert: Path | bytes) -> bytes:
    """SHA-256 of the leaf certificate's DER bytes (the first certificate of a PEM chain).

    Args:
        cert: a PEM file, or the certificate's DER bytes.

    Raises:
        ValueError: the file holds no PEM certificate.
    """
    der = cert if isinstance(cert, bytes) else _first_pem_certificate(
        cert.read_text(encoding="ascii")
    )
    return hashlib.sha256(der).digest()


def format_fingerprint(fingerprint: bytes) -> str:
    """``AB:CD:...`` (uppercase hex pairs), as ``openssl x509 -fingerprint`` prints."""
    return ":".join(f"{b:02X}" for b in fingerprint)


def parse_fingerprint(text: str) -> bytes:
    """Accept ``AB:CD:...`` or plain hex (any case); return 32 bytes.

    Raises:
        ValueError: not a SHA-256 fingerprint.
    """
    raw = bytes.fromhex(text.replace(":", "").strip())
    if len(raw) != hashlib.sha256().digest_size:
        raise ValueError("a SHA-256 fingerprint has 32 bytes")
    return raw


def fingerprint_matches(der: bytes, pinned: bytes) -> bool:
    """Constant-time check of a presented certificate (DER) against a pin."""
    return hmac.compare_digest(hashlib.sha256(der).digest(), pinned)
