"""examples/echo_bot.py as a user runs it (a process of its own) against a real relay:
it accepts an invitation, marks every text read and echoes it, in order; a restart keeps
its contacts."""

from __future__ import annotations

import asyncio
import os
import signal
import sys
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from pathlib import Path

from client_sdk import (
    AsyncClient,
    ContactAccepted,
    MessageReceived,
    ReceiptKind,
    ReceiptReceived,
)
from client_sdk.testing import (  # noqa: F401
    ClientFactory,
    RelayProcess,
    pigeon_clients,
    pigeon_relay,
)

ROOT = Path(__file__).resolve().parents[2]
TIMEOUT_S = 30.0


@asynccontextmanager
async def echo_bot(profile: Path, relay_url: str) -> AsyncIterator[str]:
    """Run the bot; yield the contact link it prints."""
    env = {**os.environ, "PIGEON_PASSPHRASE": "echo bot passphrase"}
    proc = await asyncio.create_subprocess_exec(
        sys.executable, "-m", "examples.echo_bot", str(profile), relay_url, cwd=ROOT, env=env,
        stdin=asyncio.subprocess.DEVNULL, stdout=asyncio.subprocess.PIPE)
    try:
        assert proc.stdout is not None
        async with asyncio.timeout(TIMEOUT_S):
            line = (await proc.stdout.readline()).decode()
        prefix = "echo bot ready, add it with: "
        assert line.startswith(prefix), line
        yield line[len(prefix):].strip()
    finally:
        if proc.returncode is None:
            proc.kill()
        await proc.wait()


async def _echoed(alice: AsyncClient, bot: bytes, texts: list[str]) -> list[str]:
    got: list[str] = []
    done = asyncio.Event()

    def record(event: MessageReceived) -> None:
        if event.peer == bot and event.text is not None:
            got.append(event.text)
            if len(got) == len(texts):
                done.set()

    read: set[bytes] = set()
    all_read = asyncio.Event()
    sent: set[bytes] = set()

    def on_receipt(event: ReceiptReceived) -> None:
        if event.peer == bot and event.kind is ReceiptKind.READ:
            read.update(event.message_ids)
            if len(sent) == len(texts) and sent <= read:
                all_read.set()

    remove = alice.on(MessageReceived, record)
    remove_receipts = alice.on(ReceiptReceived, on_receipt)
    try:
        for text in texts:
            sent.add((await alice.send_text(bot, text)).message_id)
        async with asyncio.timeout(TIMEOUT_S):
            await done.wait()
            if not sent <= read:
                await all_read.wait()
    finally:
        remove()
        remove_receipts()
    return got


async def test_echo_bot_accepts_and_echoes(pigeon_relay: RelayProcess,  # noqa: F811
                                           pigeon_clients: ClientFactory,  # noqa: F811
                                           tmp_path: Path) -> None:
    alice = await pigeon_clients("alice")
    profile = tmp_path / "bot.pigeon"
    async with echo_bot(profile, pigeon_relay.url) as link:
        accepted = asyncio.ensure_future(pigeon_clients.next_event(alice, ContactAccepted))
        await asyncio.sleep(0)
        bot = await alice.add_contact_by_link(link)
        event = await accepted
        assert event.peer == bot and event.by_peer
        texts = ["ping", "two words", "ünïcödé ✓"]
        assert await _echoed(alice, bot, texts) == texts
        conversation = await alice.conversation(bot)
        assert conversation.title == "Echo bot"

    # Stopped and started again on the same profile, it still knows Alice.
    async with echo_bot(profile, pigeon_relay.url) as again:
        assert again == link
        assert await _echoed(alice, bot, ["still there?"]) == ["still there?"]


async def test_ctrl_c_stops_the_bot_quietly(pigeon_relay: RelayProcess,  # noqa: F811
                                            tmp_path: Path) -> None:
    env = {**os.environ, "PIGEON_PASSPHRASE": "echo bot passphrase"}
    proc = await asyncio.create_subprocess_exec(
        sys.executable, "-m", "examples.echo_bot", str(tmp_path / "bot.pigeon"),
        pigeon_relay.url, cwd=ROOT, env=env, stdin=asyncio.subprocess.DEVNULL,
        stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.PIPE)
    assert proc.stdout is not None and proc.stderr is not None
    stderr = asyncio.ensure_future(proc.stderr.read())  # read all along: a full pipe blocks
    try:
        try:
            async with asyncio.timeout(TIMEOUT_S):
                assert (await proc.stdout.readline()).startswith(b"echo bot ready")
        except TimeoutError:
            proc.kill()
            raise AssertionError("the bot never said it was ready; its stderr:\n"
                                 + (await stderr).decode(errors="replace")) from None
        proc.send_signal(signal.SIGINT)
        async with asyncio.timeout(TIMEOUT_S):
            err = await stderr
            assert await proc.wait() == 0
        assert b"Traceback" not in err, err.decode(errors="replace")
    finally:
        if proc.returncode is None:
            proc.kill()
            await proc.wait()
