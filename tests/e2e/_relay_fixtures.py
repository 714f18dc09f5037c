"""Helpers shared by the WebSocket end-to-end tests (``test_relay_ws_*.py``).

The relay processes come from ``conftest.launch_relay`` (``pigeon-relay --port 0`` on
127.0.0.1, killed at the end); ``RelayProcess.restart()`` is the kill -9 and restart on the
same data folder. This module adds what those tests share: a module-scoped relay maker,
the admin CLI in JSON, a metrics reader, a self-signed certificate for 127.0.0.1, and a
read-only look at the relay's SQLite file.
"""

from __future__ import annotations

import asyncio
import datetime as dt
import ipaddress
import json
import os
import sqlite3
import ssl
from collections.abc import AsyncIterator, Iterator
from contextlib import asynccontextmanager
from pathlib import Path
from typing import Any

import aiohttp
from aiohttp import web
from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import NameOID
from prometheus_client.parser import text_string_to_metric_families

from .conftest import RelayProcess, run_cli

__all__ = [
    "PushReceiver",
    "admin_json",
    "bearer",
    "client_ssl_context",
    "db_rows",
    "get_chunk",
    "head_chunk",
    "metric_value",
    "push_receiver",
    "put_chunk",
    "self_signed",
]


def admin_json(rp: RelayProcess, *args: str) -> Any:
    """``pigeon-relay admin --data-dir DIR --json ARGS`` (works next to a running relay)."""
    out = run_cli(["admin", "--data-dir", str(rp.data_dir), "--json", *args])
    assert out.returncode == 0, out.stderr
    return json.loads(out.stdout)


async def metric_value(url: str, name: str, labels: dict[str, str] | None = None,
                       *, ssl_context: ssl.SSLContext | None = None) -> float:
    """The value of one sample of ``GET /metrics`` (0.0 when absent)."""
    async with aiohttp.ClientSession() as http, http.get(
            url + "/metrics", ssl=ssl_context or True) as resp:
        assert resp.status == 200
        text = await resp.text()
    for family in text_string_to_metric_families(text):
        for sample in family.samples:
            if sample.name == name and all(sample.labels.get(k) == v
                                           for k, v in (labels or {}).items()):
                return float(sample.value)
    return 0.0


def db_rows(rp: RelayProcess, sql: str, *params: object) -> list[tuple[Any, ...]]:
    """Run a read-only query on the relay's database (WAL: safe while it runs)."""
    db = rp.data_dir / "pigeon-relay.db"
    conn = sqlite3.connect(f"file:{db}?mode=ro", uri=True, timeout=10)
    try:
        return conn.execute(sql, params).fetchall()
    finally:
        conn.close()


def self_signed(folder: Path) -> tuple[Path, Path]:
    """A certificate and key for ``127.0.0.1`` (IP SAN), PEM files in *folder*."""
    key = ec.generate_private_key(ec.SECP256R1())
    name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "127.0.0.1")])
    now = dt.datetime.now(dt.UTC)
    cert = (
        x509.CertificateBuilder()
        .subject_name(name).issuer_name(name).public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - dt.timedelta(minutes=5))
        .not_valid_after(now + dt.timedelta(days=1))
        .add_extension(x509.SubjectAlternativeName(
            [x509.IPAddress(ipaddress.ip_address("127.0.0.1"))]), critical=False)
        .add_extension(x509.BasicConstraints(ca=True, path_length=None), critical=True)
        .sign(key, hashes.SHA256())
    )
    cert_path, key_path = folder / "cert.pem", folder / "key.pem"
    cert_path.write_bytes(cert.public_bytes(serialization.Encoding.PEM))
    key_path.write_bytes(key.private_bytes(serialization.Encoding.PEM,
                                           serialization.PrivateFormat.PKCS8,
                                           serialization.NoEncryption()))
    return cert_path, key_path


def client_ssl_context(cert: Path) -> ssl.SSLContext:
    """A client context that trusts exactly *cert* (certificate pinning)."""
    return ssl.create_default_context(cafile=str(cert))


def files_under(folder: Path) -> Iterator[Path]:
    """Every regular file below *folder*."""
    yield from (p for p in folder.rglob("*") if p.is_file())


def bearer(token: bytes) -> dict[str, str]:
    return {"Authorization": "Bearer " + token.hex()}


async def put_chunk(http: aiohttp.ClientSession, url: str, grant: Any, index: int,
                    data: bytes, *, ssl_context: ssl.SSLContext | None = None) -> int:
    """``PUT {url_path}/{index}`` with the grant's bearer token; returns the status."""
    async with http.put(f"{url}{grant.url_path}/{index}", data=data,
                        headers=bearer(grant.token), ssl=ssl_context or True) as resp:
        return resp.status


async def get_chunk(http: aiohttp.ClientSession, url: str, grant: Any, index: int, *,
                    ssl_context: ssl.SSLContext | None = None) -> bytes:
    async with http.get(f"{url}{grant.url_path}/{index}", headers=bearer(grant.token),
                        ssl=ssl_context or True) as resp:
        assert resp.status == 200, resp.status
        return await resp.read()


async def head_chunk(http: aiohttp.ClientSession, url: str, grant: Any, index: int) -> int:
    async with http.head(f"{url}{grant.url_path}/{index}", headers=bearer(grant.token)) as r:
        return r.status


class PushReceiver:
    """A local HTTPS push endpoint that records every request (path, headers, body)."""

    def __init__(self, cert: Path) -> None:
        self.cert = cert
        """Its self-signed certificate: give it to relays as ``SSL_CERT_FILE``."""
        self.port = 0
        self.hits: list[tuple[str, dict[str, str], bytes]] = []
        self.event = asyncio.Event()

    def url(self) -> str:
        """A fresh push URL on this receiver."""
        return f"https://127.0.0.1:{self.port}/wake/{os.urandom(8).hex()}"

    async def handle(self, request: web.Request) -> web.Response:
        self.hits.append((request.path, dict(request.headers), await request.read()))
        self.event.set()
        return web.Response(status=201)


@asynccontextmanager
async def push_receiver(folder: Path) -> AsyncIterator[PushReceiver]:
    """Serve a :class:`PushReceiver` on 127.0.0.1 (a free port) with a certificate made
    in *folder*, until the block ends."""
    cert, key = self_signed(folder)
    receiver = PushReceiver(cert)
    app = web.Application()
    app.router.add_post("/wake/{token}", receiver.handle)
    runner = web.AppRunner(app, access_log=None)
    await runner.setup()
    context = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
    context.load_cert_chain(cert, key)
    try:
        await web.TCPSite(runner, "127.0.0.1", 0, ssl_context=context).start()
        receiver.port = runner.addresses[0][1]
        yield receiver
    finally:
        await runner.cleanup()
