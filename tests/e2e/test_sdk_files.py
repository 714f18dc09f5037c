"""End to end: file transfer between SDK clients through a real ``pigeon-relay`` process.

Small files (content, caption, FileInfo, progress, history), size limits refused before
any upload (ours and the relay's), tampering detected, and the 100 MiB case of the issue:
an upload interrupted by closing the sender mid-way and continued when its profile is
opened again, then a download paused, interrupted while paused, reopened (still paused),
resumed and verified.
"""

from __future__ import annotations

import asyncio
import contextlib
import hashlib
import os
import signal
import subprocess
import sys
from collections.abc import AsyncIterator, Callable
from pathlib import Path

import pytest

from client_sdk import (
    AsyncClient,
    FileOptions,
    FileTooLarge,
    GroupChanged,
    MessageKind,
    MessageReceived,
    NotAFileMessage,
    ProfileChanged,
    TransferCompleted,
    TransferDirection,
    TransferFailed,
    TransferFailedEvent,
    TransferStarted,
    TransferState,
    UnknownContact,
    UnknownTransfer,
)
from client_sdk.store import Durability
from client_sdk.testing import (  # noqa: F401 - fixtures
    FAST_PARAMS,
    ClientFactory,
    RelayProcess,
    pigeon_clients,
    pigeon_relay,
    relay_pipeline_available,
    start_relay,
)
from pigeon_crypto.files import FileManifest

MiB = 1024 * 1024
REPO = Path(__file__).resolve().parents[2]


@pytest.fixture
async def clients(pigeon_clients: ClientFactory,  # noqa: F811
                  pigeon_relay: RelayProcess) -> AsyncIterator[ClientFactory]:  # noqa: F811
    if not await relay_pipeline_available(pigeon_relay.url):
        pytest.skip("relay pipeline not available (the relay closed with 4501)")
    yield pigeon_clients


def write_random(path: Path, size: int) -> str:
    """Write *size* random bytes in 1 MiB pieces; return their SHA-256."""
    digest = hashlib.sha256()
    with path.open("wb") as f:
        left = size
        while left:
            piece = os.urandom(min(MiB, left))
            digest.update(piece)
            f.write(piece)
            left -= len(piece)
    return digest.hexdigest()


def sha256_of(path: Path) -> str:
    digest = hashlib.sha256()
    with path.open("rb") as f:
        while piece := f.read(MiB):
            digest.update(piece)
    return digest.hexdigest()


def blob_files(relay: RelayProcess) -> list[Path]:
    root = relay.folder / "pigeon-relay-blobs"
    return [p for p in root.rglob("*") if p.is_file()] if root.exists() else []


async def next_file(client: AsyncClient, timeout_s: float = 20.0) -> MessageReceived:
    """The next FILE message *client* receives."""
    waiter: asyncio.Future[MessageReceived] = asyncio.get_running_loop().create_future()

    def check(event: MessageReceived) -> None:
        if event.kind is MessageKind.FILE and not waiter.done():
            waiter.set_result(event)

    remove = client.on(MessageReceived, check)
    try:
        async with asyncio.timeout(timeout_s):
            return await waiter
    finally:
        remove()


def reopen(factory: ClientFactory, name: str) -> AsyncClient:
    client = AsyncClient.open(factory.folder / f"{name}.pigeon", f"passphrase of {name}",
                              relay_url=factory.relay.url, params=FAST_PARAMS,
                              durability=Durability.OFF, reconnect_cap_ms=1000)
    factory.clients.append(client)
    return client


async def test_small_file_round_trip(clients: ClientFactory, tmp_path: Path) -> None:
    alice, bob = await clients("alice"), await clients("bob")
    await clients.connect(alice, bob)
    source = tmp_path / "notes.txt"
    data = os.urandom(300_000)
    source.write_bytes(data)
    alice.file_options = FileOptions(chunk_size=64 * 1024, parallel=3)
    seen: list[tuple[int, int]] = []
    received = asyncio.ensure_future(next_file(bob))
    ref = await alice.send_file(bob.account_id, source, caption="the notes",
                                progress=lambda d, t: seen.append((d, t)))
    event = await received
    assert event.message_id == ref.message_id and event.text == "the notes"
    info = event.file
    assert info is not None
    assert (info.name, info.size, info.media_type) == ("notes.txt", 300_000, "text/plain")
    assert seen[-1] == (300_000, 300_000) and len(seen) >= 5  # 5 chunks of 64 KiB
    assert [d for d, _ in seen] == sorted(d for d, _ in seen)

    dest = tmp_path / "in" / "copy.txt"
    got: list[tuple[int, int]] = []
    path = await bob.download_file(alice.account_id, event.message_id, dest,
                                   progress=lambda d, t: got.append((d, t)))
    assert path == dest.resolve() and dest.read_bytes() == data
    assert got[-1] == (300_000, 300_000)
    assert not (tmp_path / "in" / "copy.txt.part").exists()
    up = {t.transfer_id: t for t in await alice.transfers()}[info.transfer_id]
    down = {t.transfer_id: t for t in await bob.transfers()}[info.transfer_id]
    assert (up.direction, up.state, up.bytes_done) == (
        TransferDirection.UPLOAD, TransferState.DONE, 300_000)
    assert (down.direction, down.state, down.message_id) == (
        TransferDirection.DOWNLOAD, TransferState.DONE, ref.message_id)
    page = await alice.history(bob.account_id)
    assert page.messages[-1].kind is MessageKind.FILE
    # Misuse is typed.
    text = await alice.send_text(bob.account_id, "not a file")
    with pytest.raises(NotAFileMessage):
        await alice.download_file(bob.account_id, text.message_id, tmp_path / "x")
    with pytest.raises(UnknownTransfer):
        await bob.resume_transfer(b"\x00" * 16)
    with pytest.raises(UnknownTransfer):
        await bob.wait_transfer(b"\x00" * 16)
    assert (await bob.wait_transfer(info.transfer_id)).state is TransferState.DONE
    # The relay stored ciphertext only: the plaintext appears in no blob file.
    for blob in blob_files(clients.relay):
        assert data[:64] not in blob.read_bytes()


async def test_avatar_is_an_encrypted_file_shared_with_contacts(
        clients: ClientFactory, tmp_path: Path) -> None:
    alice, bob = await clients("alice"), await clients("bob")
    await clients.connect(alice, bob)
    assert await bob.download_avatar(alice.account_id, tmp_path / "none.png") is None
    image = tmp_path / "me.png"
    data = os.urandom(150_000)
    image.write_bytes(data)
    changed = asyncio.ensure_future(clients.next_event(bob, ProfileChanged))
    await alice.set_profile("Alice", avatar=image)
    event = await changed
    assert event.display_name == "Alice" and event.avatar_manifest is not None
    info = FileManifest.from_bytes(event.avatar_manifest)
    assert (info.name, info.true_size, info.media_type) == ("me.png", 150_000, "image/png")
    got = await bob.download_avatar(alice.account_id, tmp_path / "alice.png")
    assert got is not None and got.read_bytes() == data
    # No message went with the upload; the transfer is listed with our own id as peer.
    assert [m.kind for m in (await bob.history(alice.account_id)).messages] == []
    [up] = [t for t in await alice.transfers() if t.transfer_id == info.file_id]
    assert (up.peer, up.state) == (alice.account_id, TransferState.DONE)
    for blob in blob_files(clients.relay):  # the relay holds ciphertext only
        assert data[:64] not in blob.read_bytes()

    # upload_file / download_manifest for an app's own use; bad input is typed.
    doc = tmp_path / "doc.bin"
    doc.write_bytes(b"shared by manifest")
    manifest = await alice.upload_file(doc)
    copy = await bob.download_manifest(alice.account_id, manifest, tmp_path / "doc-copy")
    assert copy.read_bytes() == b"shared by manifest"
    with pytest.raises(NotAFileMessage):
        await bob.download_manifest(alice.account_id, b"not a manifest", tmp_path / "x")
    with pytest.raises(ValueError):
        await alice.set_profile("Alice", avatar=image, avatar_manifest=manifest)
    with pytest.raises(UnknownContact):
        await alice.download_avatar(b"\x07" * 16, tmp_path / "y")


async def test_cancel_an_upload_and_a_download(clients: ClientFactory, tmp_path: Path) -> None:
    alice, bob = await clients("alice"), await clients("bob")
    await clients.connect(alice, bob)
    source = tmp_path / "big.bin"
    data = os.urandom(4 * MiB)
    source.write_bytes(data)
    for client in (alice, bob):
        client.file_options = FileOptions(chunk_size=64 * 1024, parallel=1)
    failed = asyncio.ensure_future(clients.next_event(alice, TransferFailedEvent))
    started = asyncio.ensure_future(clients.next_event(alice, TransferStarted))

    cancels: list[asyncio.Future[None]] = []

    def cancel_soon(client: AsyncClient, tid: asyncio.Future[bytes]) -> Callable[[int, int], None]:
        def on_progress(done: int, total: int) -> None:
            if 0 < done < total and not tid.done():
                tid.set_result(b"")  # only once
                cancels.append(asyncio.ensure_future(client.cancel_transfer(started_id())))
        return on_progress

    def started_id() -> bytes:
        return started.result().transfer_id

    once: asyncio.Future[bytes] = asyncio.get_running_loop().create_future()
    with pytest.raises(TransferFailed) as info:
        await alice.send_file(bob.account_id, source, progress=cancel_soon(alice, once))
    assert info.value.reason == "cancelled"
    assert (await failed).reason == "cancelled"
    assert await alice.transfers() == []
    with pytest.raises(UnknownTransfer):
        await alice.wait_transfer(started_id())
    await asyncio.sleep(0.3)
    assert (await bob.history(alice.account_id)).messages == ()  # no message went out

    # A download cancelled mid-way leaves no part file and no record; a new one works.
    received = asyncio.ensure_future(next_file(bob))
    await alice.send_file(bob.account_id, source)
    event = await received
    dest = tmp_path / "in" / "big.bin"
    started = asyncio.ensure_future(clients.next_event(bob, TransferStarted))
    once = asyncio.get_running_loop().create_future()
    with pytest.raises(TransferFailed):
        await bob.download_file(alice.account_id, event.message_id, dest,
                                progress=cancel_soon(bob, once))
    assert not dest.exists() and not (dest.parent / "big.bin.part").exists()
    assert [t for t in await bob.transfers() if t.transfer_id == started_id()] == []
    path = await bob.download_file(alice.account_id, event.message_id, dest)
    assert path.read_bytes() == data
    await asyncio.gather(*cancels)
    with pytest.raises(UnknownTransfer):
        await bob.cancel_transfer(b"\x00" * 16)


async def test_empty_file(clients: ClientFactory, tmp_path: Path) -> None:
    alice, bob = await clients("alice"), await clients("bob")
    await clients.connect(alice, bob)
    (tmp_path / "empty").write_bytes(b"")
    received = asyncio.ensure_future(clients.next_event(bob, MessageReceived))
    await alice.send_file(bob.account_id, tmp_path / "empty")
    event = await received
    assert event.file is not None and event.file.size == 0
    out = await bob.download_file(alice.account_id, event.message_id, tmp_path / "e2")
    assert out.read_bytes() == b""


@contextlib.asynccontextmanager
async def contacts_on(relay: RelayProcess, clients: ClientFactory, folder: Path,
                      ) -> AsyncIterator[tuple[AsyncClient, AsyncClient]]:
    """Carol and Dave, registered on *relay* (a relay of the test's own) and contacts."""
    carol = AsyncClient.open(folder / "carol.pigeon", "pw", relay_url=relay.url,
                             params=FAST_PARAMS, durability=Durability.OFF)
    dave = AsyncClient.open(folder / "dave.pigeon", "pw", relay_url=relay.url,
                            params=FAST_PARAMS, durability=Durability.OFF)
    async with carol, dave:
        await carol.register()
        await dave.register()
        await clients.connect(carol, dave)
        yield carol, dave


async def test_size_limits_refuse_before_any_upload(
        clients: ClientFactory, tmp_path: Path,
        tmp_path_factory: pytest.TempPathFactory) -> None:
    alice, bob = await clients("alice"), await clients("bob")
    await clients.connect(alice, bob)
    big = tmp_path / "big.bin"
    write_random(big, 3 * MiB)
    alice.file_options = FileOptions(max_file_size=2 * MiB)
    with pytest.raises(FileTooLarge) as info:
        await alice.send_file(bob.account_id, big)
    assert (info.value.size, info.value.limit) == (3 * MiB, 2 * MiB)
    assert await alice.transfers() == [] and blob_files(clients.relay) == []

    # The relay's own limit: TOO_LARGE to RequestBlobUpload, before any chunk.
    small_relay = start_relay(tmp_path_factory.mktemp("small-relay"),
                              ["--blob-max-size", "1MiB"])
    try:
        async with contacts_on(small_relay, clients, tmp_path) as (carol, dave):
            with pytest.raises(FileTooLarge) as info:
                await carol.send_file(dave.account_id, big)
            assert info.value.limit is None and "relay" in str(info.value)
            assert await carol.transfers() == []
            assert [p for p in (small_relay.folder / "pigeon-relay-blobs").rglob("*")
                    if p.is_file()] == []
    finally:
        small_relay.kill()


async def test_rate_limited_blob_grants_are_waited_out(
        clients: ClientFactory, tmp_path: Path,
        tmp_path_factory: pytest.TempPathFactory) -> None:
    """A relay with small connection buckets: the grants of four concurrent uploads
    and downloads run out of credits and are retried after ``retry_after_ms``, instead
    of failing the transfers."""
    tight = start_relay(tmp_path_factory.mktemp("tight-relay"),
                        ["--conn-credit-capacity", "2", "--conn-credit-refill", "4"])
    try:
        async with contacts_on(tight, clients, tmp_path) as (carol, dave):
            sources = []
            for i in range(4):
                source = tmp_path / f"note-{i}.bin"
                write_random(source, 20_000 + i)
                sources.append(source)
            got: list[MessageReceived] = []
            dave.on(MessageReceived, got.append)
            refs = await asyncio.gather(*(carol.send_file(dave.account_id, s, caption=str(i))
                                          for i, s in enumerate(sources)))
            async with asyncio.timeout(60):
                while len(got) < len(sources):  # noqa: ASYNC110 - events land in the list
                    await asyncio.sleep(0.05)
            paths = await asyncio.gather(*(
                dave.download_file(carol.account_id, ref.message_id,
                                   tmp_path / f"got-{i}.bin")
                for i, ref in enumerate(refs)))
            for source, path in zip(sources, paths, strict=True):
                assert path.read_bytes() == source.read_bytes()
    finally:
        tight.kill()


async def test_relay_restart_mid_upload_is_retried(clients: ClientFactory,
                                                   tmp_path: Path) -> None:
    alice, bob = await clients("alice"), await clients("bob")
    await clients.connect(alice, bob)
    source = tmp_path / "f.bin"
    digest = await asyncio.to_thread(write_random, source, 24 * MiB)
    alice.file_options = FileOptions(chunk_size=256 * 1024, parallel=2)
    reached = asyncio.Event()
    received = asyncio.ensure_future(next_file(bob, timeout_s=60))

    seen: list[int] = []

    def on_progress(done: int, total: int) -> None:
        seen.append(done)
        if done >= total // 5:
            reached.set()

    sending = asyncio.ensure_future(alice.send_file(bob.account_id, source,
                                                    progress=on_progress))
    await asyncio.wait_for(reached.wait(), 30)
    clients.relay.kill()  # SIGKILL mid-upload; then the same port and data again
    assert seen[-1] < 24 * MiB and not sending.done()
    await asyncio.to_thread(clients.relay.restart)
    ref = await asyncio.wait_for(sending, 60)
    event = await received
    assert event.message_id == ref.message_id
    out = await bob.download_file(alice.account_id, event.message_id, tmp_path / "g.bin")
    assert await asyncio.to_thread(sha256_of, out) == digest


async def test_relay_outage_longer_than_the_retries_does_not_fail_the_upload(
        clients: ClientFactory, tmp_path: Path) -> None:
    alice, bob = await clients("alice"), await clients("bob")
    await clients.connect(alice, bob)
    source = tmp_path / "f.bin"
    digest = await asyncio.to_thread(write_random, source, 16 * MiB)
    alice.file_options = FileOptions(chunk_size=256 * 1024, parallel=2, retries=2)
    reached = asyncio.Event()
    received = asyncio.ensure_future(next_file(bob, timeout_s=90))
    sending = asyncio.ensure_future(alice.send_file(
        bob.account_id, source,
        progress=lambda done, total: reached.set() if done >= total // 5 else None))
    await asyncio.wait_for(reached.wait(), 30)
    clients.relay.kill()
    await asyncio.sleep(3.0)  # several rounds of 2 attempts fail meanwhile
    [info] = await alice.transfers()
    assert info.state is TransferState.RUNNING and info.bytes_done < 16 * MiB
    assert not sending.done()
    await asyncio.to_thread(clients.relay.restart)
    ref = await asyncio.wait_for(sending, 90)
    event = await received
    assert event.message_id == ref.message_id
    out = await bob.download_file(alice.account_id, event.message_id, tmp_path / "g.bin")
    assert await asyncio.to_thread(sha256_of, out) == digest


async def test_tampered_chunk_fails_the_download(clients: ClientFactory,
                                                 tmp_path: Path) -> None:
    alice, bob = await clients("alice"), await clients("bob")
    await clients.connect(alice, bob)
    source = tmp_path / "f.bin"
    write_random(source, 200_000)
    alice.file_options = FileOptions(chunk_size=64 * 1024)
    received = asyncio.ensure_future(next_file(bob))
    await alice.send_file(bob.account_id, source)
    event = await received
    assert event.file is not None
    [chunk] = [p for p in blob_files(clients.relay) if p.name == "2"]
    raw = bytearray(chunk.read_bytes())
    raw[100] ^= 1
    chunk.write_bytes(bytes(raw))
    failed = asyncio.ensure_future(clients.next_event(bob, TransferFailedEvent))
    with pytest.raises(TransferFailed, match="ChunkAuthenticationError") as info:
        await bob.download_file(alice.account_id, event.message_id, tmp_path / "g.bin")
    assert info.value.transfer_id == event.file.transfer_id
    assert (await failed).transfer_id == event.file.transfer_id
    assert not (tmp_path / "g.bin").exists()
    [t] = await bob.transfers()
    assert t.state is TransferState.FAILED and "chunk 2" in (t.error or "")
    with pytest.raises(TransferFailed):
        await bob.wait_transfer(t.transfer_id)


def test_example_safe_name(tmp_path: Path) -> None:
    from examples.send_file import safe_name

    assert safe_name("../../etc/passwd", tmp_path) == tmp_path / "passwd"
    assert safe_name("..\\..\\boot.ini", tmp_path) == tmp_path / "boot.ini"
    assert safe_name(".hidden\x00\x1b[31m", tmp_path).name == "hidden_31m"
    (tmp_path / "a.txt").write_bytes(b"")
    assert safe_name("a.txt", tmp_path) == tmp_path / "a (1).txt"
    assert safe_name("..", tmp_path) == tmp_path / "file"


async def test_example_script_sends_and_receives(clients: ClientFactory,
                                                 tmp_path: Path) -> None:
    alice, bob = await clients("alice"), await clients("bob")
    await clients.connect(alice, bob)
    source = tmp_path / "report 2024.pdf"
    digest = await asyncio.to_thread(write_random, source, 5 * MiB + 123)
    url = clients.relay.url
    a_profile, b_profile, a_id, b_id = alice.path, bob.path, alice.account_id, bob.account_id
    await alice.close()
    await bob.close()

    def script(profile: Path, name: str, *args: str) -> list[str]:
        return [sys.executable, "-m", "examples.send_file", "--profile", str(profile),
                "--relay", url, *args]

    def env(name: str) -> dict[str, str]:
        return {**os.environ, "PIGEON_PASSPHRASE": f"passphrase of {name}"}

    out_dir = tmp_path / "inbox"
    receiver = await asyncio.create_subprocess_exec(
        *script(b_profile, "bob", "receive", "--from", a_id.hex(), "--dir", str(out_dir),
                "--timeout", "60"),
        env=env("bob"), cwd=REPO, stdout=subprocess.PIPE, stderr=subprocess.PIPE)
    sender = await asyncio.create_subprocess_exec(
        *script(a_profile, "alice", "send", b_id.hex(), str(source), "--caption", "Q3"),
        env=env("alice"), cwd=REPO, stdout=subprocess.PIPE, stderr=subprocess.PIPE)
    s_out, s_err = await asyncio.wait_for(sender.communicate(), 90)
    assert sender.returncode == 0, s_err.decode()[-2000:]
    assert "sent report 2024.pdf" in s_out.decode()
    r_out, r_err = await asyncio.wait_for(receiver.communicate(), 90)
    assert receiver.returncode == 0, r_err.decode()[-2000:]
    assert f"received report 2024.pdf ({5 * MiB + 123} bytes)" in r_out.decode()
    assert sha256_of(out_dir / "report 2024.pdf") == digest

    # An unknown peer is a clear failure (status 1), not a traceback.
    bad = await asyncio.create_subprocess_exec(
        *script(a_profile, "alice", "send", "00" * 16, str(source)),
        env=env("alice"), cwd=REPO, stdout=subprocess.PIPE, stderr=subprocess.PIPE)
    _, b_err = await asyncio.wait_for(bad.communicate(), 60)
    assert bad.returncode == 1 and "UnknownContact" in b_err.decode()


async def test_example_script_receives_a_group_file(clients: ClientFactory,
                                                    tmp_path: Path) -> None:
    """A file posted in a group reaches ``send_file receive`` as one from its author
    (``--from``), fetched through the group (``download_group_file``)."""
    alice, bob = await clients("alice"), await clients("bob")
    await clients.connect(alice, bob)
    joined = asyncio.ensure_future(bob.wait_for(GroupChanged, timeout_s=30))
    gid = (await alice.create_group("Files", [bob.account_id])).group_id
    assert (await joined).group.group_id == gid
    b_profile, a_id = bob.path, alice.account_id
    await bob.close()
    source = tmp_path / "minutes.txt"
    digest = await asyncio.to_thread(write_random, source, 300_000)
    out_dir = tmp_path / "inbox"
    receiver = await asyncio.create_subprocess_exec(
        sys.executable, "-m", "examples.send_file", "--profile", str(b_profile),
        "--relay", clients.relay.url, "receive", "--from", a_id.hex(), "--dir",
        str(out_dir), "--timeout", "60",
        env={**os.environ, "PIGEON_PASSPHRASE": "passphrase of bob"}, cwd=REPO,
        stdout=subprocess.PIPE, stderr=subprocess.PIPE)
    await alice.send_group_file(gid, source)
    r_out, r_err = await asyncio.wait_for(receiver.communicate(), 90)
    assert receiver.returncode == 0, r_err.decode()[-2000:]
    assert "received minutes.txt (300000 bytes)" in r_out.decode()
    assert sha256_of(out_dir / "minutes.txt") == digest


def _send_and_die(profile: str, url: str, peer_hex: str, source: str, fraction: str) -> None:
    """Child process: send *source* to the peer and SIGKILL ourselves once the profile
    records *fraction* of it as uploaded (a crash in the middle of the upload)."""
    from client_sdk.store.transfers import transfer_store

    size = os.path.getsize(source)

    async def run() -> None:
        client = AsyncClient.open(profile, "passphrase of alice", relay_url=url,
                                  params=FAST_PARAMS, durability=Durability.OFF)
        await client.start()
        await client.wait_connected(20)
        sending = asyncio.ensure_future(client.send_file(bytes.fromhex(peer_hex), source))
        while not sending.done():
            stored = await client._run(lambda c: transfer_store(c.store).list_transfers())
            if stored and stored[0].bytes_done >= float(fraction) * size:
                print(f"killed at {stored[0].bytes_done}", flush=True)
                os.kill(os.getpid(), signal.SIGKILL)
            await asyncio.sleep(0.02)
        print("finished before the kill", flush=True)

    asyncio.run(run())


async def test_100_mib_resumed_upload_and_resumed_download(
        clients: ClientFactory, tmp_path: Path) -> None:
    alice, bob = await clients("alice"), await clients("bob")
    await clients.connect(alice, bob)
    size = 100 * MiB
    source = tmp_path / "big.bin"
    digest = await asyncio.to_thread(write_random, source, size)

    # --- upload: the sending process is SIGKILLed at ~30% -----------------------------
    received = asyncio.ensure_future(next_file(bob, timeout_s=240))
    await alice.close()
    proc = await asyncio.create_subprocess_exec(
        sys.executable, "-m", "tests.e2e.test_sdk_files", str(alice.path), clients.relay.url,
        bob.account_id.hex(), str(source), "0.3", cwd=REPO,
        stdout=subprocess.PIPE, stderr=subprocess.PIPE)
    out, err = await asyncio.wait_for(proc.communicate(), 120)
    assert proc.returncode == -signal.SIGKILL, err.decode()[-2000:]
    killed_at = int(out.decode().split()[-1])
    assert 0.3 * size <= killed_at < size
    assert not received.done()

    alice = reopen(clients, "alice")
    completed: list[TransferCompleted] = []
    alice.on(TransferCompleted, completed.append)
    await alice.start()  # login continues the stored RUNNING upload
    [info] = await alice.transfers()
    tid = info.transfer_id
    assert info.state is TransferState.RUNNING
    assert info.bytes_done >= killed_at  # recorded chunks are not sent again
    event = await received
    assert event.file is not None and event.file.size == size
    assert event.file.transfer_id == tid
    done_up = await alice.wait_transfer(tid)
    assert done_up.state is TransferState.DONE and done_up.bytes_done == size
    assert [e.transfer_id for e in completed] == [tid]
    await asyncio.sleep(0.3)  # one file message, not two
    page = await bob.history(alice.account_id)
    assert [m.kind for m in page.messages].count(MessageKind.FILE) == 1

    # --- download: paused at ~40%, client closed while paused, reopened, resumed -----
    dest = tmp_path / "out" / "big.bin"
    paused_at = asyncio.Event()
    got: list[int] = []

    def on_download(done: int, total: int) -> None:
        got.append(done)
        if done >= 0.4 * size and not paused_at.is_set():
            bob.pause_transfer(tid)
            paused_at.set()

    downloading = asyncio.ensure_future(bob.download_file(
        alice.account_id, event.message_id, dest, progress=on_download))
    await asyncio.wait_for(paused_at.wait(), 120)
    await asyncio.sleep(0.5)  # chunks in flight finish, then nothing moves
    before = len(got)
    await asyncio.sleep(0.5)
    assert len(got) == before and got[-1] < size and not downloading.done()
    await bob.close()
    with pytest.raises(Exception):  # noqa: B017
        await downloading

    bob = reopen(clients, "bob")
    await bob.start()
    await bob.wait_connected(20)
    info = next(t for t in await bob.transfers() if t.transfer_id == tid)
    assert info.state is TransferState.PAUSED and 0.3 * size <= info.bytes_done < size
    await asyncio.sleep(0.3)
    again = next(t for t in await bob.transfers() if t.transfer_id == tid)
    assert again.bytes_done == info.bytes_done  # still paused after the restart
    await bob.resume_transfer(tid)
    done = await bob.wait_transfer(tid)
    assert done.state is TransferState.DONE and done.bytes_done == size
    assert await asyncio.to_thread(sha256_of, dest) == digest
    # Calling download_file again returns the finished file without a transfer.
    assert await bob.download_file(alice.account_id, event.message_id, dest) == dest.resolve()


def _download_and_die(profile: str, url: str, peer_hex: str, message_hex: str, dest: str,
                      fraction: str) -> None:
    """Child process: download the file of a message and SIGKILL ourselves once the
    profile records *fraction* of it (a crash in the middle of the download)."""
    from client_sdk.store.transfers import transfer_store

    async def run() -> None:
        client = AsyncClient.open(profile, "passphrase of bob", relay_url=url,
                                  params=FAST_PARAMS, durability=Durability.OFF)
        await client.start()
        await client.wait_connected(20)
        client.file_options = FileOptions(progress_interval_s=0.0)  # record every chunk
        getting = asyncio.ensure_future(client.download_file(
            bytes.fromhex(peer_hex), bytes.fromhex(message_hex), dest))
        while not getting.done():
            stored = await client._run(lambda c: transfer_store(c.store).list_transfers())
            if stored:
                size = FileManifest.from_bytes(stored[0].manifest).true_size
                if stored[0].bytes_done >= float(fraction) * size:
                    print(f"killed at {stored[0].bytes_done}", flush=True)
                    os.kill(os.getpid(), signal.SIGKILL)
            await asyncio.sleep(0.02)
        print("finished before the kill", flush=True)

    asyncio.run(run())


async def test_download_killed_mid_way_resumes(clients: ClientFactory,
                                               tmp_path: Path) -> None:
    alice, bob = await clients("alice"), await clients("bob")
    await clients.connect(alice, bob)
    size = 48 * MiB
    source = tmp_path / "f.bin"
    digest = await asyncio.to_thread(write_random, source, size)
    received = asyncio.ensure_future(next_file(bob, timeout_s=60))
    await alice.send_file(bob.account_id, source)
    event = await received
    dest = tmp_path / "out.bin"
    await bob.close()
    proc = await asyncio.create_subprocess_exec(
        sys.executable, "-m", "tests.e2e.test_sdk_files", "download", str(bob.path),
        clients.relay.url, alice.account_id.hex(), event.message_id.hex(), str(dest), "0.4",
        cwd=REPO, stdout=subprocess.PIPE, stderr=subprocess.PIPE)
    out, err = await asyncio.wait_for(proc.communicate(), 120)
    assert proc.returncode == -signal.SIGKILL, err.decode()[-2000:]
    killed_at = int(out.decode().split()[-1])
    assert not dest.exists() and dest.with_name("out.bin.part").exists()

    # What the crash left: the chunks recorded as done are on disk in the part file.
    from client_sdk.store import Profile
    from client_sdk.store.transfers import transfer_store

    profile = Profile.open(bob.path, "passphrase of bob")
    try:
        [left] = transfer_store(profile.store).list_transfers()
    finally:
        profile.close()
    assert left.state is TransferState.RUNNING and left.bytes_done >= killed_at
    m = FileManifest.from_bytes(left.manifest)
    with source.open("rb") as src, dest.with_name("out.bin.part").open("rb") as part:
        for i in range(m.chunk_count):
            if left.done(i):
                src.seek(i * m.chunk_size)
                part.seek(i * m.chunk_size)
                n = m.layout.data_length(i)
                assert part.read(n) == src.read(n), f"recorded chunk {i} not on disk"

    bob = reopen(clients, "bob")
    first: list[int] = []
    await bob.start()  # login continues the stored RUNNING download
    path = await bob.download_file(alice.account_id, event.message_id, dest,
                                   progress=lambda done, total: first.append(done))
    assert path == dest.resolve()
    assert await asyncio.to_thread(sha256_of, dest) == digest
    assert not dest.with_name("out.bin.part").exists()
    [t] = await bob.transfers()
    assert t.state is TransferState.DONE and t.bytes_done == size
    assert killed_at >= 0.4 * size
    if first:  # joined the continued download: it did not start from zero
        assert first[0] > 0


if __name__ == "__main__":
    if sys.argv[1] == "download":
        _download_and_die(*sys.argv[2:8])
    else:
        _send_and_die(*sys.argv[1:6])
