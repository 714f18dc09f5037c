"""The relay's HTTP side against the real ``pigeon-relay`` process on 127.0.0.1.

Blobs are reserved here directly in the relay's blob folder and tokens are minted with the
relay's persisted secret: that is what the frame pipeline does on ``RequestBlobUpload``
(``relay.blob_http.reserve_upload``); these tests reach the HTTP side without a session.
"""

from __future__ import annotations

import asyncio
import datetime as dt
import ipaddress
import json
import os
import re
import signal
import socket
import time
from collections.abc import AsyncIterator, Iterator
from pathlib import Path

import aiohttp
import pytest
from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import NameOID
from prometheus_client.parser import text_string_to_metric_families

from protocol import Challenge, Connect, Ping, Pong, decode_frame
from relay.app import create_app
from relay.blob_http import blob_url_path
from relay.blobs import BlobOp, FolderBlobStore, blob_token
from relay.config import RelayConfig
from relay.openapi import openapi_document

from .conftest import RelayFactory, RelayProcess, launch_relay, run_cli

CHUNK_LIMIT = 64 * 1024
TIMEOUT = aiohttp.ClientTimeout(total=15)


def now_ms() -> int:
    return time.time_ns() // 1_000_000


@pytest.fixture(scope="module")
def shared(tmp_path_factory: pytest.TempPathFactory) -> Iterator[RelayProcess]:
    """One relay for the tests that only read or use their own blobs."""
    rp = launch_relay(tmp_path_factory.mktemp("shared"),
                      ["--blob-max-chunk-size", "64KiB", "--blob-max-size", "1MiB"])
    yield rp
    rp.kill()


@pytest.fixture
async def http() -> AsyncIterator[aiohttp.ClientSession]:
    async with aiohttp.ClientSession(timeout=TIMEOUT) as session:
        yield session


# --------------------------------------------------------------------------- blob helpers


class Blob:
    """A blob reserved in a relay's folder, with URLs and token headers for it."""

    def __init__(self, rp: RelayProcess, blob_id: bytes, secret: bytes) -> None:
        self.rp, self.blob_id, self.secret = rp, blob_id, secret

    @classmethod
    async def reserve(cls, rp: RelayProcess, *, size: int, chunks: int,
                      expires_in_ms: int = 3_600_000) -> Blob:
        blob_id = os.urandom(16)
        store = await FolderBlobStore.create(rp.data_dir / "pigeon-relay-blobs")
        await store.reserve(blob_id, size=size, chunk_count=chunks,
                            expires_at_ms=now_ms() + expires_in_ms)
        secret = bytes.fromhex((rp.data_dir / "pigeon-relay.secret").read_text())
        return cls(rp, blob_id, secret)

    def grant(self, op: BlobOp, *, expires_in_ms: int = 600_000) -> tuple[str, dict[str, str]]:
        """(base URL of the blob, Authorization header) as a BlobToken frame would give."""
        expires = now_ms() + expires_in_ms
        token = blob_token(self.secret, op=op, blob_id=self.blob_id, expires_at_ms=expires)
        url = self.rp.url + blob_url_path(self.blob_id, expires)
        return url, {"Authorization": f"Bearer {token.hex()}"}


# --------------------------------------------------------------------------- basics


async def test_health_reports_store_ready(shared: RelayProcess,
                                          http: aiohttp.ClientSession) -> None:
    async with http.get(shared.url + "/health") as resp:
        assert resp.status == 200
        assert await resp.json() == {"status": "ok", "store": "ok", "blobs": "ok"}


async def test_metrics_exposition(shared: RelayProcess, http: aiohttp.ClientSession) -> None:
    async with http.get(shared.url + "/health"):
        pass  # at least one store call to observe
    async with http.get(shared.url + "/metrics") as resp:
        assert resp.status == 200
        assert resp.headers["Content-Type"].startswith("text/plain")
        text = await resp.text()
    families = {f.name: f for f in text_string_to_metric_families(text)}
    for name in ("pigeon_relay_frames_in", "pigeon_relay_frames_out",
                 "pigeon_relay_ephemeral_dropped", "pigeon_relay_credit_refusals",
                 "pigeon_relay_connections", "pigeon_relay_queue_depth",
                 "pigeon_relay_commit_batch_size", "pigeon_relay_store_seconds",
                 "pigeon_relay_push_wakeups", "pigeon_relay_blob_requests"):
        assert name in families, name
    queues = {s.labels["queue"] for s in families["pigeon_relay_queue_depth"].samples}
    assert {"store_writes", "push_pending"} <= queues
    ops = {s.labels.get("op") for s in families["pigeon_relay_store_seconds"].samples}
    assert "get_account" in ops  # the health probe, timed by the store observer


async def _frame_counts(rp: RelayProcess, http: aiohttp.ClientSession) -> dict[tuple[str, str],
                                                                                float]:
    """``{(direction, type): count}`` of the frames_in/frames_out counters."""
    async with http.get(rp.url + "/metrics") as resp:
        text = await resp.text()
    return {(f.name.rsplit("_", 1)[-1], s.labels["type"]): s.value
            for f in text_string_to_metric_families(text)
            if f.name in ("pigeon_relay_frames_in", "pigeon_relay_frames_out")
            for s in f.samples if s.name.endswith("_total")}


async def test_frames_are_counted_by_type_both_ways(relay_factory: RelayFactory,
                                                    http: aiohttp.ClientSession) -> None:
    rp = relay_factory()
    async with http.ws_connect(rp.url + "/v1/ws") as ws:
        await ws.send_bytes(Connect(request_id=1).encode())
        assert isinstance(decode_frame((await ws.receive(timeout=5)).data), Challenge)
        before = await _frame_counts(rp, http)
        for rid in (2, 3, 4):
            await ws.send_bytes(Ping(request_id=rid).encode())
            assert isinstance(decode_frame((await ws.receive(timeout=5)).data), Pong)
    after = await _frame_counts(rp, http)
    assert before[("in", "Connect")] == 1 and before[("out", "Challenge")] == 1
    assert after[("in", "Ping")] - before.get(("in", "Ping"), 0) == 3
    assert after[("out", "Pong")] - before.get(("out", "Pong"), 0) == 3
    assert after[("out", "Challenge")] == 1


async def test_openapi_document_describes_every_route(shared: RelayProcess,
                                                      http: aiohttp.ClientSession) -> None:
    async with http.get(shared.url + "/openapi.json") as resp:
        assert resp.status == 200
        doc = await resp.json()
    assert doc["openapi"].startswith("3.1")
    assert doc == json.loads(json.dumps(openapi_document(doc["info"]["version"])))
    # Every registered route (method, path template) is documented, and nothing else.
    app = create_app(RelayConfig())
    routes = set()
    for route in app.router.routes():
        info = route.resource.get_info() if route.resource else {}
        path = info.get("path") or info["formatter"]
        routes.add((route.method.lower(), re.sub(r"\{(\w+)(:[^}]*\})?\}?", r"{\1}", path)))
    documented = {(m, p) for p, ops in doc["paths"].items() for m in ops}
    assert routes == documented


async def test_websocket_answers_connect_with_a_challenge(shared: RelayProcess,
                                                          http: aiohttp.ClientSession) -> None:
    # The frame pipeline itself is covered by tests/e2e/test_relay_ws_*.py.
    async with http.ws_connect(shared.url + "/v1/ws") as ws:
        await ws.send_bytes(Connect(request_id=1).encode())
        msg = await ws.receive(timeout=5)
        assert msg.type is aiohttp.WSMsgType.BINARY
        challenge = decode_frame(msg.data)
        assert isinstance(challenge, Challenge) and challenge.request_id == 1


# --------------------------------------------------------------------------- blobs


async def test_blob_upload_download_roundtrip(shared: RelayProcess,
                                              http: aiohttp.ClientSession) -> None:
    chunks = [os.urandom(CHUNK_LIMIT), os.urandom(CHUNK_LIMIT), os.urandom(1234)]
    blob = await Blob.reserve(shared, size=sum(map(len, chunks)), chunks=3)
    up, up_auth = blob.grant(BlobOp.UPLOAD)
    for i, data in enumerate(chunks):
        async with http.put(f"{up}/{i}", data=data, headers=up_auth) as resp:
            assert resp.status == 200, await resp.text()
            status = await resp.json()
    assert status["complete"] and status["chunks_received"] == 3
    assert status["bytes_received"] == sum(map(len, chunks))
    down, down_auth = blob.grant(BlobOp.DOWNLOAD)
    for i, data in enumerate(chunks):
        async with http.get(f"{down}/{i}", headers=down_auth) as resp:
            assert resp.status == 200
            assert resp.headers["Content-Length"] == str(len(data))
            assert await resp.read() == data
    async with http.get(down, headers=down_auth) as resp:
        assert (await resp.json())["complete"] is True


async def test_blob_resume_and_idempotent_reupload(shared: RelayProcess,
                                                   http: aiohttp.ClientSession) -> None:
    chunks = [os.urandom(5000), os.urandom(7000)]
    blob = await Blob.reserve(shared, size=12000, chunks=2)
    up, auth = blob.grant(BlobOp.UPLOAD)
    async with http.put(f"{up}/0", data=chunks[0], headers=auth) as resp:
        assert resp.status == 200
    # Chunk 1 is interrupted half-way: the client vanishes after 3000 of 7000 bytes.
    path = up.removeprefix(shared.url) + "/1"
    _, writer = await asyncio.open_connection("127.0.0.1", shared.port)
    writer.write(f"PUT {path} HTTP/1.1\r\nHost: 127.0.0.1\r\n"
                 f"Authorization: {auth['Authorization']}\r\n"
                 f"Content-Length: 7000\r\n\r\n".encode() + chunks[1][:3000])
    await writer.drain()
    writer.close()
    await writer.wait_closed()
    blob_dir = shared.data_dir / "pigeon-relay-blobs" / blob.blob_id.hex()[:2] / blob.blob_id.hex()
    for _ in range(100):  # the relay notices the disconnect and removes the partial chunk
        if not any(p.name.endswith(".tmp") for p in blob_dir.iterdir()):
            break
        await asyncio.sleep(0.02)
    assert sorted(p.name for p in blob_dir.iterdir()) == ["0", "meta"]
    # Resume: ask what is stored, re-send what is missing.
    async with http.head(f"{up}/0", headers=auth) as resp:
        assert resp.status == 200 and resp.headers["Content-Length"] == "5000"
    async with http.head(f"{up}/1", headers=auth) as resp:
        assert resp.status == 404
    async with http.get(up, headers=auth) as resp:
        assert (await resp.json())["chunks_received"] == 1
    async with http.put(f"{up}/1", data=chunks[1], headers=auth) as resp:
        assert resp.status == 200 and (await resp.json())["complete"] is True
    # Re-sending a stored chunk is idempotent; different bytes are refused.
    async with http.put(f"{up}/0", data=chunks[0], headers=auth) as resp:
        assert resp.status == 200
    async with http.put(f"{up}/0", data=os.urandom(5000), headers=auth) as resp:
        assert resp.status == 409
    # A download resumes inside a chunk with Range.
    down, dauth = blob.grant(BlobOp.DOWNLOAD)
    async with http.get(f"{down}/1", headers={**dauth, "Range": "bytes=3000-"}) as resp:
        assert resp.status == 206
        assert resp.headers["Content-Range"] == "bytes 3000-6999/7000"
        assert await resp.read() == chunks[1][3000:]
    async with http.get(f"{down}/1", headers={**dauth, "Range": "bytes=10-19"}) as resp:
        assert resp.status == 206 and await resp.read() == chunks[1][10:20]
    async with http.get(f"{down}/1", headers={**dauth, "Range": "bytes=-5"}) as resp:
        assert resp.status == 206 and await resp.read() == chunks[1][-5:]
    async with http.get(f"{down}/1", headers={**dauth, "Range": "bytes=7000-"}) as resp:
        assert resp.status == 416
        assert resp.headers["Content-Range"] == "bytes */7000"
    async with http.get(f"{down}/1", headers={**dauth, "Range": "bytes=-0"}) as resp:
        assert resp.status == 416  # the last zero bytes: nothing to send
    async with http.get(f"{down}/1", headers={**dauth, "Range": "items=0-3"}) as resp:
        assert resp.status == 200 and await resp.read() == chunks[1]  # an unknown unit
    async with http.get(f"{down}/1", headers={**dauth, "Range": "bytes=6990-"}) as resp:
        assert resp.status == 206 and await resp.read() == chunks[1][6990:]


async def test_blob_oversize_is_refused_while_streaming(shared: RelayProcess,
                                                        http: aiohttp.ClientSession) -> None:
    blob = await Blob.reserve(shared, size=3 * CHUNK_LIMIT, chunks=3)
    up, auth = blob.grant(BlobOp.UPLOAD)
    # Declared too large: refused before the body is read.
    async with http.put(f"{up}/0", data=os.urandom(CHUNK_LIMIT + 1), headers=auth) as resp:
        assert resp.status == 413

    async def body() -> AsyncIterator[bytes]:  # chunked encoding: no Content-Length
        for _ in range(CHUNK_LIMIT // 4096 + 1):
            yield os.urandom(4096)

    async with http.put(f"{up}/1", data=body(), headers=auth) as resp:
        assert resp.status == 413
    # The reservation bounds the whole blob too.
    small = await Blob.reserve(shared, size=100, chunks=2)
    up, auth = small.grant(BlobOp.UPLOAD)
    async with http.put(f"{up}/0", data=os.urandom(80), headers=auth) as resp:
        assert resp.status == 200
    async with http.put(f"{up}/1", data=os.urandom(30), headers=auth) as resp:
        assert resp.status == 413
    async with http.put(f"{up}/2", data=b"x", headers=auth) as resp:
        assert resp.status == 404  # beyond chunk_count


async def test_blob_tokens_are_checked(shared: RelayProcess,
                                       http: aiohttp.ClientSession) -> None:
    blob = await Blob.reserve(shared, size=10, chunks=1)
    other = await Blob.reserve(shared, size=10, chunks=1)
    up, auth = blob.grant(BlobOp.UPLOAD)
    bad = {"Authorization": "Bearer " + "00" * 32}
    for headers in ({}, bad, {"Authorization": "Basic abc"}, blob.grant(BlobOp.DOWNLOAD)[1],
                    other.grant(BlobOp.UPLOAD)[1]):
        async with http.put(f"{up}/0", data=b"0123456789", headers=headers) as resp:
            assert resp.status == 401
            assert resp.headers["WWW-Authenticate"].startswith("Bearer")
    # The expiry in the URL is covered by the MAC: extending it breaks the token.
    longer = up.rsplit("/", 1)[0] + f"/{now_ms() + 10 * 3_600_000}"
    async with http.put(f"{longer}/0", data=b"0123456789", headers=auth) as resp:
        assert resp.status == 401
    async with http.put(f"{up}/0", data=b"0123456789", headers=auth) as resp:
        assert resp.status == 200
    # An upload token does not download.
    async with http.get(f"{up}/0", headers=auth) as resp:
        assert resp.status == 401


async def test_blob_expired_token_is_refused(shared: RelayProcess,
                                             http: aiohttp.ClientSession) -> None:
    blob = await Blob.reserve(shared, size=10, chunks=1)
    up, auth = blob.grant(BlobOp.UPLOAD, expires_in_ms=-1000)
    async with http.put(f"{up}/0", data=b"0123456789", headers=auth) as resp:
        assert resp.status == 401
        assert "expired" in (await resp.json())["error"]


async def test_blob_past_its_expiry_is_gone(shared: RelayProcess,
                                            http: aiohttp.ClientSession) -> None:
    blob = await Blob.reserve(shared, size=10, chunks=1, expires_in_ms=-1)
    up, auth = blob.grant(BlobOp.UPLOAD)
    async with http.put(f"{up}/0", data=b"0123456789", headers=auth) as resp:
        assert resp.status == 404


async def test_sweeper_removes_expired_blobs(relay_factory: RelayFactory,
                                            tmp_path: Path) -> None:
    # Reserved before the relay starts: a reservation written by another process while
    # the sweeper runs could be mistaken for debris (the relay owns its folder).
    folder = tmp_path / "data"
    store = await FolderBlobStore.create(folder / "pigeon-relay-blobs")
    blob_id = os.urandom(16)
    await store.reserve(blob_id, size=10, chunk_count=1, expires_at_ms=now_ms() - 1)
    blob_dir = folder / "pigeon-relay-blobs" / blob_id.hex()[:2] / blob_id.hex()
    assert blob_dir.is_dir()
    rp = relay_factory(["--sweep-interval", "100ms"], cwd=folder)
    for _ in range(100):
        if not blob_dir.exists():
            break
        await asyncio.sleep(0.05)
    assert not blob_dir.exists()
    async with aiohttp.ClientSession(timeout=TIMEOUT) as http, \
            http.get(rp.url + "/metrics") as resp:
        text = await resp.text()
    assert re.search(r'pigeon_relay_expired_total\{what="blobs"\} [1-9]', text)


# --------------------------------------------------------------------------- metrics after use


async def test_metrics_count_blob_traffic(shared: RelayProcess,
                                          http: aiohttp.ClientSession) -> None:
    blob = await Blob.reserve(shared, size=3, chunks=1)
    up, auth = blob.grant(BlobOp.UPLOAD)
    async with http.put(f"{up}/0", data=b"abc", headers=auth) as resp:
        assert resp.status == 200
    async with http.get(shared.url + "/metrics") as resp:
        text = await resp.text()
    assert re.search(r'pigeon_relay_blob_requests_total\{op="upload",status="200"\} [1-9]', text)
    assert re.search(r'pigeon_relay_blob_bytes_total\{direction="in"\} [1-9]', text)


# --------------------------------------------------------------------------- TLS


def self_signed(folder: Path) -> tuple[Path, Path, bytes]:
    """A P-256 self-signed certificate for 127.0.0.1: (cert, key, SHA-256 of its DER)."""
    key = ec.generate_private_key(ec.SECP256R1())
    name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "pigeon-relay test")])
    now = dt.datetime.now(dt.UTC)
    cert = (
        x509.CertificateBuilder().subject_name(name).issuer_name(name)
        .public_key(key.public_key()).serial_number(x509.random_serial_number())
        .not_valid_before(now - dt.timedelta(minutes=5))
        .not_valid_after(now + dt.timedelta(days=1))
        .add_extension(x509.SubjectAlternativeName(
            [x509.IPAddress(ipaddress.ip_address("127.0.0.1"))]), critical=False)
        .sign(key, hashes.SHA256())
    )
    cert_path, key_path = folder / "relay.crt", folder / "relay.key"
    cert_path.write_bytes(cert.public_bytes(serialization.Encoding.PEM))
    key_path.write_bytes(key.private_bytes(
        serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8,
        serialization.NoEncryption()))
    return cert_path, key_path, cert.fingerprint(hashes.SHA256())


async def test_tls_with_pinned_fingerprint(relay_factory: RelayFactory,
                                           tmp_path: Path) -> None:
    cert, key, fingerprint = self_signed(tmp_path)
    rp = relay_factory(["--tls-cert", str(cert), "--tls-key", str(key)])
    assert rp.url.startswith("https://127.0.0.1:")
    # The operator reads the pin from the CLI or from the startup log.
    out = await asyncio.to_thread(run_cli, ["fingerprint", "--tls-cert", str(cert)])
    assert out.returncode == 0, out.stderr
    printed = out.stdout.strip()
    assert bytes.fromhex(printed.replace(":", "")) == fingerprint
    assert printed in rp.log()
    async with aiohttp.ClientSession(timeout=TIMEOUT) as http:
        async with http.get(rp.url + "/health", ssl=aiohttp.Fingerprint(fingerprint)) as resp:
            assert resp.status == 200
        wrong = bytes(32)
        with pytest.raises(aiohttp.ServerFingerprintMismatch):
            async with http.get(rp.url + "/health", ssl=aiohttp.Fingerprint(wrong)):
                pass
        # Without the pin a self-signed certificate is (rightly) not trusted.
        with pytest.raises(aiohttp.ClientConnectorCertificateError):
            async with http.get(rp.url + "/health"):
                pass


# --------------------------------------------------------------------------- configuration


def port_free(port: int) -> bool:
    with socket.socket() as s:
        try:
            s.bind(("127.0.0.1", port))
        except OSError:
            return False
    return True


async def test_zero_configuration_start(relay_factory: RelayFactory, tmp_path: Path) -> None:
    work = tmp_path / "work"
    work.mkdir()
    default_port = port_free(8765)
    rp = relay_factory(cwd=work, port0=not default_port, synchronous_off=False)
    if default_port:
        assert rp.url == "http://127.0.0.1:8765"
    assert (work / "pigeon-relay.db").is_file()
    assert (work / "pigeon-relay-blobs").is_dir()
    assert len(bytes.fromhex((work / "pigeon-relay.id").read_text())) == 16
    secret = work / "pigeon-relay.secret"
    assert len(bytes.fromhex(secret.read_text())) == 32
    assert secret.stat().st_mode & 0o077 == 0
    async with aiohttp.ClientSession(timeout=TIMEOUT) as http, \
            http.get(rp.url + "/health") as resp:
        assert resp.status == 200
    # The database is in WAL mode.
    assert (work / "pigeon-relay.db-wal").exists()


async def test_environment_configuration(relay_factory: RelayFactory) -> None:
    rp = relay_factory(env={
        "PIGEON_RELAY_PORT": "1",  # the command line (--port 0) wins over the environment
        "PIGEON_RELAY_DB": "custom.db",
        "PIGEON_RELAY_BLOB_DIR": "files",
        "PIGEON_RELAY_LOG_FORMAT": "json",
        "PIGEON_RELAY_METRICS": "0",
    })
    assert (rp.data_dir / "custom.db").is_file()
    assert (rp.data_dir / "custom.id").is_file() and (rp.data_dir / "custom.secret").is_file()
    assert (rp.data_dir / "files").is_dir()
    assert not (rp.data_dir / "pigeon-relay.db").exists()
    async with aiohttp.ClientSession(timeout=TIMEOUT) as http:
        async with http.get(rp.url + "/metrics") as resp:
            assert resp.status == 501
            assert "disabled" in await resp.text()
        async with http.get(rp.url + "/health") as resp:
            assert resp.status == 200
    lines = [json.loads(line) for line in rp.log().splitlines() if line.strip()]
    assert any("listening on" in obj["msg"] for obj in lines)
    assert all({"ts", "level", "logger", "msg"} <= obj.keys() for obj in lines)
    assert rp.port != 1


def test_bad_configuration_fails_fast(tmp_path: Path) -> None:
    out = run_cli(["--port", "0", "--message-ttl", "45d"], cwd=tmp_path)
    assert out.returncode == 2
    assert "--message-ttl" in out.stderr and "30 days" in out.stderr
    out = run_cli([], cwd=tmp_path, env={"PIGEON_RELAY_PORT": "http"})
    assert out.returncode == 2 and "PIGEON_RELAY_PORT" in out.stderr
    out = run_cli(["--port", "0", "--tls-cert", "missing.pem", "--tls-key", "missing.key"],
                  cwd=tmp_path)
    assert out.returncode == 1 and "TLS" in out.stderr
    assert not out.stdout  # no listening line


# --------------------------------------------------------------------------- lifecycle


@pytest.mark.parametrize("sig", [signal.SIGTERM, signal.SIGINT])
async def test_graceful_shutdown(relay_factory: RelayFactory, sig: signal.Signals) -> None:
    rp = relay_factory()
    async with aiohttp.ClientSession(timeout=TIMEOUT) as http, \
            http.get(rp.url + "/health") as resp:
        assert resp.status == 200
    assert rp.signal(sig) == 0
    assert "shutdown complete" in rp.log()
    # The WAL was checkpointed into the database on close: nothing left to replay.
    wal = rp.data_dir / "pigeon-relay.db-wal"
    assert not wal.exists() or wal.stat().st_size == 0


async def test_kill_and_restart_keeps_identity_and_blobs(relay_factory: RelayFactory) -> None:
    rp = relay_factory()
    relay_id = (rp.data_dir / "pigeon-relay.id").read_text()
    data = os.urandom(2000)
    blob = await Blob.reserve(rp, size=len(data), chunks=1)
    up, auth = blob.grant(BlobOp.UPLOAD)
    down, dauth = blob.grant(BlobOp.DOWNLOAD)
    async with aiohttp.ClientSession(timeout=TIMEOUT) as http, \
            http.put(f"{up}/0", data=data, headers=auth) as resp:
        assert resp.status == 200
    down_path = down.removeprefix(rp.url)
    rp.restart()  # SIGKILL, then the same data folder (on a new ephemeral port)
    assert (rp.data_dir / "pigeon-relay.id").read_text() == relay_id
    down = rp.url + down_path
    async with aiohttp.ClientSession(timeout=TIMEOUT) as http:
        async with http.get(f"{down}/0", headers=dauth) as resp:  # token from before the crash
            assert resp.status == 200 and await resp.read() == data
        async with http.get(rp.url + "/health") as resp:
            assert resp.status == 200
