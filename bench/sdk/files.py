"""Client SDK files: one file sent and received through a local relay.

Run: ``python -m bench.sdk.files [--size-mib 256] [--chunk-kib 1024] [--parallel 4]
[--quick] [--dir PATH]``

Starts ``pigeon-relay`` (``client_sdk.testing.start_relay``: SQLite, ``--synchronous
OFF``; blob chunks are fsynced by the blob store regardless) on 127.0.0.1 and two
registered profiles that are contacts, writes a file of random bytes, then measures, each
side in its **own process** so that memory is measured per side:

* **send**: ``AsyncClient.send_file`` (encrypt in chunks while uploading) until it
  returns (every chunk stored, the file message stored);
* **receive**: ``AsyncClient.download_file`` of that message (download, verify, decrypt,
  write, fsync, rename), then a SHA-256 check against the source;
* **peak memory growth** of each process: the largest RSS sampled every 5 ms during the
  transfer minus the RSS just before it (and ``ru_maxrss`` as a cross-check).

Baselines from the same run, on the same bytes:

* **raw encryption**: ``pigeon_crypto.files`` (``FileEncryptor`` fed 1 MiB pieces read
  from the file) in one thread: the crypto ceiling;
* **plain HTTP**: the same bytes *unencrypted*, with the same chunk size and the same
  number of requests in flight, ``PUT`` to and ``GET`` from the relay's blob HTTP API
  (a blob reserved with ``RequestBlobUpload``), GET bodies discarded: the transport
  ceiling, own process as well.

Prints MB/s (10^6 bytes per second of file bytes), ratios to the baselines, the memory
growth and the targets (>= 100 MB/s each way, <= 64 MiB growth per side).
Figures: docs/benchmarks.md "Client SDK files".
"""

from __future__ import annotations

import argparse
import asyncio
import hashlib
import json
import os
import resource
import shutil
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path
from typing import Any

import aiohttp

# psutil (the "bench" extra, not "dev") ships no type information, and types-psutil is
# not a dependency: as in bench.relay.servers.
import psutil  # type: ignore[import-not-found, import-untyped, unused-ignore]

from bench._report import machine_line
from client_sdk import AsyncClient, FileOptions, MessageKind
from client_sdk._transfers import http_base_url
from client_sdk.store import Durability
from client_sdk.testing import FAST_PARAMS, ClientFactory, start_relay
from pigeon_crypto.files import FileEncryptor, FileLayout, encrypt_stream
from pigeon_crypto.rng import system_rng
from protocol.frames import BlobToken, RequestBlobDownload, RequestBlobUpload

MiB = 1024 * 1024
TARGET_MBPS = 100.0
TARGET_GROWTH_MIB = 64.0
PASS = "bench passphrase"


class PeakRss:
    """Samples this process's RSS every 5 ms between ``start()`` and ``stop()``."""

    def __init__(self) -> None:
        self._proc = psutil.Process()
        self.base = 0
        self.peak = 0
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._sample, daemon=True)

    def _sample(self) -> None:
        while not self._stop.wait(0.005):
            self.peak = max(self.peak, self._proc.memory_info().rss)

    def start(self) -> None:
        self.base = self.peak = self._proc.memory_info().rss
        self._thread.start()

    def stop(self) -> dict[str, float]:
        self._stop.set()
        self._thread.join()
        self.peak = max(self.peak, self._proc.memory_info().rss)
        maxrss = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024
        return {"growth_mib": (self.peak - self.base) / MiB,
                "maxrss_growth_mib": (maxrss - self.base) / MiB}


def _open(profile: str, url: str) -> AsyncClient:
    return AsyncClient.open(profile, PASS, relay_url=url, params=FAST_PARAMS,
                            durability=Durability.NORMAL)


# --- child roles -------------------------------------------------------------------------


async def _send(profile: str, url: str, peer: str, source: str, chunk: int,
                parallel: int) -> dict[str, Any]:
    async with _open(profile, url) as client:
        await client.wait_connected(30)
        client.file_options = FileOptions(chunk_size=chunk, parallel=parallel)
        mem = PeakRss()
        mem.start()
        t0 = time.perf_counter()
        ref = await client.send_file(bytes.fromhex(peer), source)
        elapsed = time.perf_counter() - t0
        out = mem.stop()
    return {"seconds": elapsed, "message_id": ref.message_id.hex(), **out}


async def _receive(profile: str, url: str, peer: str, dest: str, chunk: int,
                   parallel: int) -> dict[str, Any]:
    async with _open(profile, url) as client:
        await client.wait_connected(30)
        client.file_options = FileOptions(chunk_size=chunk, parallel=parallel)
        peer_id = bytes.fromhex(peer)
        deadline = time.monotonic() + 60
        while True:  # the file message arrives after login
            page = await client.history(peer_id)
            files = [m for m in page.messages if m.kind is MessageKind.FILE]
            if files:
                break
            if time.monotonic() > deadline:
                raise RuntimeError("no file message arrived")
            await asyncio.sleep(0.05)
        mem = PeakRss()
        mem.start()
        t0 = time.perf_counter()
        path = await client.download_file(peer_id, files[-1].message_id, dest)
        elapsed = time.perf_counter() - t0
        out = mem.stop()
    return {"seconds": elapsed, "path": str(path), **out}


async def _plain_http(profile: str, url: str, source: str, chunk: int,
                      parallel: int) -> dict[str, Any]:
    """Unencrypted chunks of the same file, same chunk size and requests in flight."""
    size = await asyncio.to_thread(os.path.getsize, source)
    count = -(-size // chunk)
    async with _open(profile, url) as client:
        await client.wait_connected(30)
        up = await client._request(lambda rid: RequestBlobUpload(
            request_id=rid, size=size, chunk_count=count))
        assert isinstance(up, BlobToken)
        base = http_base_url(url) + up.url_path
        headers = {"Authorization": f"Bearer {up.token.hex()}"}
        fd = os.open(source, os.O_RDONLY)
        mem = PeakRss()
        mem.start()
        try:
            async with aiohttp.ClientSession(
                    connector=aiohttp.TCPConnector(limit=parallel)) as http:
                queue = list(range(count))[::-1]

                async def put_worker() -> None:
                    while queue:
                        i = queue.pop()
                        body = await asyncio.to_thread(os.pread, fd, chunk, i * chunk)
                        async with http.put(f"{base}/{i}", data=body, headers=headers) as r:
                            assert r.status == 200, r.status
                            await r.read()

                t0 = time.perf_counter()
                await asyncio.gather(*(put_worker() for _ in range(parallel)))
                up_s = time.perf_counter() - t0
                down = await client._request(lambda rid: RequestBlobDownload(
                    request_id=rid, blob_id=up.blob_id))
                assert isinstance(down, BlobToken)
                base = http_base_url(url) + down.url_path
                headers = {"Authorization": f"Bearer {down.token.hex()}"}
                queue = list(range(count))[::-1]
                got = 0

                async def get_worker() -> None:
                    nonlocal got
                    while queue:
                        i = queue.pop()
                        async with http.get(f"{base}/{i}", headers=headers) as r:
                            assert r.status == 200, r.status
                            body = await r.read()
                            got += len(body)

                t0 = time.perf_counter()
                await asyncio.gather(*(get_worker() for _ in range(parallel)))
                down_s = time.perf_counter() - t0
                assert got == size, (got, size)
        finally:
            os.close(fd)
        out = mem.stop()
    return {"upload_seconds": up_s, "download_seconds": down_s, **out}


def _child(argv: list[str]) -> None:
    role, *args = argv
    chunk, parallel = int(args[-2]), int(args[-1])
    rest = args[:-2]
    if role == "send":
        profile, url, peer, source = rest
        result = asyncio.run(_send(profile, url, peer, source, chunk=chunk, parallel=parallel))
    elif role == "receive":
        profile, url, peer, dest = rest
        result = asyncio.run(_receive(profile, url, peer, dest, chunk=chunk, parallel=parallel))
    else:
        profile, url, source = rest
        result = asyncio.run(_plain_http(profile, url, source, chunk=chunk, parallel=parallel))
    print("RESULT " + json.dumps(result), flush=True)


def _run_child(*args: str) -> dict[str, Any]:
    proc = subprocess.run([sys.executable, "-m", "bench.sdk.files", "--child", *args],
                          capture_output=True, text=True, timeout=900, check=False,
                          cwd=Path(__file__).resolve().parents[2])
    lines = [line for line in proc.stdout.splitlines() if line.startswith("RESULT ")]
    if proc.returncode != 0 or not lines:
        raise RuntimeError(f"child {args[0]} failed:\n{proc.stderr[-3000:]}")
    result: dict[str, Any] = json.loads(lines[-1][len("RESULT "):])
    return result


# --- orchestration -----------------------------------------------------------------------


def _write_random(path: Path, size: int) -> str:
    digest = hashlib.sha256()
    with path.open("wb") as f:
        left = size
        while left:
            piece = os.urandom(min(4 * MiB, left))
            digest.update(piece)
            f.write(piece)
            left -= len(piece)
    return digest.hexdigest()


def _sha256(path: Path) -> str:
    digest = hashlib.sha256()
    with path.open("rb") as f:
        while piece := f.read(4 * MiB):
            digest.update(piece)
    return digest.hexdigest()


def _raw_encrypt(source: Path) -> float:
    """Seconds to encrypt the file with pigeon_crypto.files, reading 1 MiB pieces."""
    enc = FileEncryptor.create(system_rng, chunk_size=MiB)

    def pieces() -> Any:
        with source.open("rb") as f:
            while piece := f.read(MiB):
                yield piece

    t0 = time.perf_counter()
    n = sum(len(c) for c in encrypt_stream(pieces(), enc))
    elapsed = time.perf_counter() - t0
    assert n == FileLayout(source.stat().st_size, MiB).ciphertext_size
    return elapsed


async def _setup(folder: Path, url: str) -> tuple[str, str, str, str]:
    class _Relay:
        pass

    relay = _Relay()
    relay.url = url  # type: ignore[attr-defined]
    await asyncio.to_thread(folder.mkdir, parents=True, exist_ok=True)
    factory = ClientFactory(relay, folder)  # type: ignore[arg-type]
    alice = await factory("alice", durability=Durability.NORMAL)
    bob = await factory("bob", durability=Durability.NORMAL)
    await factory.connect(alice, bob)
    out = (str(alice.path), str(bob.path), alice.account_id.hex(), bob.account_id.hex())
    await factory.close()
    return out


def _reset_passphrase(path: str, name: str) -> None:
    from client_sdk.store import Profile

    profile = Profile.open(path, f"passphrase of {name}")
    try:
        profile.change_passphrase(f"passphrase of {name}", PASS)
    finally:
        profile.close()


def run(size_mib: int, chunk_kib: int, parallel: int, folder: Path) -> None:
    size, chunk = size_mib * MiB, chunk_kib * 1024
    relay = start_relay(folder / "relay")
    try:
        alice, bob, alice_id, bob_id = asyncio.run(_setup(folder / "profiles", relay.url))
        _reset_passphrase(alice, "alice")
        _reset_passphrase(bob, "bob")
        source = folder / "source.bin"
        digest = _write_random(source, size)
        raw_s = _raw_encrypt(source)
        http = _run_child("http", alice, relay.url, str(source), str(chunk), str(parallel))
        sent = _run_child("send", alice, relay.url, bob_id, str(source), str(chunk),
                          str(parallel))
        dest = folder / "received.bin"
        got = _run_child("receive", bob, relay.url, alice_id, str(dest), str(chunk),
                         str(parallel))
        assert _sha256(dest) == digest, "received file differs"
    finally:
        relay.kill()

    def mbps(seconds: float) -> float:
        return size / seconds / 1e6

    up, down = mbps(sent["seconds"]), mbps(got["seconds"])
    print(machine_line("relay: pigeon-relay --synchronous OFF on 127.0.0.1 (2 processes "
                       "+ the relay share the CPUs)"))
    print(f"  file: {size_mib} MiB random, chunk {chunk_kib} KiB, {parallel} in flight")
    print(f"  baseline raw encryption (pigeon_crypto.files, 1 thread): {mbps(raw_s):,.0f} MB/s")
    print(f"  baseline plain HTTP (unencrypted chunks): upload "
          f"{mbps(http['upload_seconds']):,.0f} MB/s, download "
          f"{mbps(http['download_seconds']):,.0f} MB/s, peak growth "
          f"{http['growth_mib']:.1f} MiB")
    print(f"  send_file: {up:,.0f} MB/s ({sent['seconds']:.2f} s) = "
          f"{up / mbps(http['upload_seconds']):.2f}x plain HTTP upload, "
          f"{up / mbps(raw_s):.2f}x raw encryption; peak RSS growth "
          f"{sent['growth_mib']:.1f} MiB (ru_maxrss {sent['maxrss_growth_mib']:.1f})")
    print(f"  download_file: {down:,.0f} MB/s ({got['seconds']:.2f} s) = "
          f"{down / mbps(http['download_seconds']):.2f}x plain HTTP download, "
          f"{down / mbps(raw_s):.2f}x raw encryption; peak RSS growth "
          f"{got['growth_mib']:.1f} MiB (ru_maxrss {got['maxrss_growth_mib']:.1f})")
    ok_speed = min(up, down) >= TARGET_MBPS
    ok_mem = max(sent["growth_mib"], got["growth_mib"]) <= TARGET_GROWTH_MIB
    print(f"  targets: >= {TARGET_MBPS:.0f} MB/s each way: {'met' if ok_speed else 'NOT met'};"
          f" <= {TARGET_GROWTH_MIB:.0f} MiB growth per side: "
          f"{'met' if ok_mem else 'NOT met'}")


def main() -> None:
    if len(sys.argv) > 1 and sys.argv[1] == "--child":
        _child(sys.argv[2:])
        return
    parser = argparse.ArgumentParser(description=(__doc__ or "").splitlines()[0])
    parser.add_argument("--size-mib", type=int, default=256)
    parser.add_argument("--chunk-kib", type=int, default=1024)
    parser.add_argument("--parallel", type=int, default=4)
    parser.add_argument("--quick", action="store_true", help="a 32 MiB file")
    parser.add_argument("--dir", type=Path, default=None,
                        help="work folder (default: a temporary one, removed)")
    args = parser.parse_args()
    size = 32 if args.quick else args.size_mib
    folder = args.dir or Path(tempfile.mkdtemp(prefix="bench-sdk-files-"))
    try:
        run(size, args.chunk_kib, args.parallel, folder)
    finally:
        if args.dir is None:
            shutil.rmtree(folder, ignore_errors=True)


if __name__ == "__main__":
    main()
